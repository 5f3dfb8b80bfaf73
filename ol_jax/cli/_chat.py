"""``ol-jax chat``: a terminal chat whose model learns after every turn (seed 001).

Interactive by default (rich): each reply is shown with the turn's loss, learning
rate, KL to the base and whether a fact was detected. ``--script FILE`` runs a
conversation non-interactively, one user message per line (blank lines and lines
starting with ``#`` are skipped). The adapter, fact memory and metrics are saved
to the run store every ``checkpoint.save_every`` turns and on exit; ``--run-id``
of an existing run resumes it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

_COMMANDS = "/quit or /exit ends the chat (saving), /save saves now"


def build_parser() -> argparse.ArgumentParser:
    """The arguments of ``ol-jax chat``."""
    p = argparse.ArgumentParser(
        prog="ol-jax chat",
        description="Chat with an LLM that updates its LoRA adapter after every "
        "turn (seed 001).",
    )
    p.add_argument("--config", required=True, help="chat config YAML")
    p.add_argument("--root", default="networks", help="networks folder of the store")
    p.add_argument("--run-id", default=None, help="run to resume or create")
    p.add_argument("--script", default=None, help="file of user messages, one per line")
    p.add_argument(
        "--plain", action="store_true", help="plain text output instead of rich"
    )
    return p


def _script_lines(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--script file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    return [x for x in lines if x.strip() and not x.lstrip().startswith("#")]


def _summary(metrics: dict[str, Any]) -> str:
    fact = "yes" if metrics["is_fact"] else "no"
    return (
        f"turn {metrics['turn']} | {metrics['context']} | loss {metrics['loss']:.3f}"
        f" | lr {metrics['learning_rate']:.2e} | KL {metrics['kl']:.4f}"
        f" | fact: {fact}"
        + (f" | replayed {metrics['replayed']}" if metrics["replayed"] else "")
    )


class _Output:
    """Rich panels, or plain lines (for scripts and pipes)."""

    def __init__(self, plain: bool):
        self.console = None
        if not plain:
            from rich.console import Console

            self.console = Console()

    def reply(self, text: str, metrics: dict[str, Any]) -> None:
        if self.console is None:
            print(f"assistant: {text}")
            print(f"  [{_summary(metrics)}]", flush=True)
            return
        from rich.panel import Panel

        self.console.print(Panel(text or "(empty reply)", title="assistant"))
        self.console.print(f"[dim]{_summary(metrics)}[/dim]")

    def info(self, text: str) -> None:
        if self.console is None:
            print(text, flush=True)
        else:
            self.console.print(f"[cyan]{text}[/cyan]")

    def error(self, text: str) -> None:
        if self.console is None:
            print(f"error: {text}", file=sys.stderr, flush=True)
        else:
            self.console.print(f"[red]error:[/red] {text}")

    def ask(self) -> str:
        if self.console is None:
            return input("you: ")
        return self.console.input("[bold green]you:[/bold green] ")


def _interactive(out: _Output) -> Iterable[str]:
    while True:
        try:
            yield out.ask()
        except (EOFError, KeyboardInterrupt):
            return


def run_chat(
    config: str,
    *,
    root: str = "networks",
    run_id: str | None = None,
    lines: Iterable[str] | None = None,
    plain: bool = False,
    learner: Any = None,
) -> dict[str, Any]:
    """Runs a chat (scripted when ``lines`` is given) and saves on exit.

    Args:
      config: the chat config YAML path.
      root: networks folder of the run store.
      run_id: run to resume or create (``None``: a new run).
      lines: user messages; ``None`` reads them from the terminal.
      plain: plain text output.
      learner: an already built ``ChatLearner`` to use instead (tests).

    Returns:
      ``{"run_id", "run_dir", "turns", "errors"}``.
    """
    from ol_jax.core import enable_compilation_cache
    from ol_jax.learners.chat import ChatLearner

    out = _Output(plain)
    if learner is None:
        enable_compilation_cache()
        learner = ChatLearner(config, root=root, run_id=run_id)
    out.info(
        f"run {learner.run_id} (turn {learner.turn}, {len(learner.memory)} facts "
        f"remembered); {_COMMANDS}"
    )
    errors = 0
    try:
        for text in _interactive(out) if lines is None else lines:
            command = text.strip().lower()
            if command in ("/quit", "/exit"):
                break
            if command == "/save":
                out.info(f"saved version {learner.save()}")
                continue
            try:
                reply, metrics = learner.chat_and_update(text)
            except ValueError as e:
                errors += 1
                out.error(str(e))
                continue
            out.reply(reply, metrics)
    finally:
        learner.close()
    out.info(f"saved; metrics in {learner.metrics_path}")
    return {
        "run_id": learner.run_id,
        "run_dir": learner.run_dir,
        "turns": learner.turn,
        "errors": errors,
    }


def chat_main(argv: Sequence[str]) -> int:
    """``ol-jax chat`` with its own arguments."""
    args = build_parser().parse_args(list(argv))
    lines = None if args.script is None else _script_lines(args.script)
    run_chat(
        args.config,
        root=args.root,
        run_id=args.run_id,
        lines=lines,
        plain=args.plain or args.script is not None,
    )
    return 0
