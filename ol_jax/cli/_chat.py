"""``ol-jax chat``: a terminal chat whose model learns after every turn.

Each turn has two parts: the reply, generated with the adapter as it is and
printed as it is generated (piece by piece in a terminal, whole in a script or a
pipe), then the update, which trains the LoRA adapter on the turn while a status
line says what it is doing; the next message is read when the update is done. Ctrl-C during a turn cancels it: the update finishes in the
background (a compiled step cannot be stopped half-way), then everything it
changed is put back and saved, so the model is as it was before the turn; a second
Ctrl-C quits. Lines starting with ``/`` are commands (``/help`` lists them); an
unknown one is reported, never sent to the model.

Interactive by default (rich). ``--script FILE`` runs a conversation
non-interactively, one user message per line (blank lines and lines starting
with ``#`` are skipped), echoing each line before its reply. The adapter, fact
memory and metrics are saved to the run store every ``checkpoint.save_every``
turns and on exit; ``--run-id`` of an existing run resumes it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from ol_jax.cli._help import HelpFormatter

__all__ = ["COMMANDS", "build_parser", "chat_main", "parse_command", "run_chat"]

# The slash commands, in the order /help lists them.
COMMANDS = {
    "/help": "list these commands",
    "/save": "save the adapter and fact memory now",
    "/quit": "save and end the chat",
    "/exit": "save and end the chat",
}

# A command is a first word like "/save"; "/usr/bin is a folder" is a message.
_COMMAND = re.compile(r"/[A-Za-z][A-Za-z0-9_-]*")


def parse_command(text: str) -> str | None:
    """The slash command ``text`` starts with (lower-cased), or ``None``.

    A line is a command when its first word is ``/`` followed by a letter and
    letters, digits, ``_`` or ``-`` (``/save``, ``/Quit now``); anything else,
    ``/usr/bin`` or ``1/2`` included, is a message for the model.

    Args:
      text: one line typed by the user.

    Returns:
      The command word, e.g. ``"/save"``, whether known or not; ``None`` for a
      message.
    """
    words = text.split(maxsplit=1)
    if words and _COMMAND.fullmatch(words[0]):
        return words[0].lower()
    return None


def _command_list() -> str:
    return ", ".join(f"{name} ({what})" for name, what in COMMANDS.items())


def build_parser() -> argparse.ArgumentParser:
    """The arguments of ``ol-jax chat``."""
    p = argparse.ArgumentParser(
        prog="ol-jax chat",
        description="Chat in the terminal with a language model that learns from "
        "every turn: after each reply its LoRA adapter is trained on the turn "
        "(facts you state are remembered and rehearsed), and the run is saved so "
        "that a later chat with the same --run-id continues it. Commands: "
        + _command_list()
        + ". Ctrl-C during a turn undoes that turn; a second Ctrl-C quits.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--config",
        required=True,
        help="chat config YAML (model, LoRA, learning rates), e.g. "
        "configs/chat_smollm2.yaml",
    )
    p.add_argument(
        "--root", default="networks", help="folder of the run store (saved runs)"
    )
    p.add_argument(
        "--run-id",
        default=None,
        help="run to continue, or the id of a new one (default: a new id)",
    )
    p.add_argument(
        "--script",
        default=None,
        help="file of user messages, one per line, to run without a terminal "
        "(each line is echoed before its reply)",
    )
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
    """Rich panels and a status spinner, or plain lines (for scripts and pipes).

    With ``stream`` the reply is printed piece by piece as it is generated
    (:meth:`reply_piece`), a spinner only until its first piece.
    """

    def __init__(self, plain: bool, *, stream: bool = False):
        self.stream = stream
        self.console = None
        if not plain:
            from rich.console import Console

            self.console = Console(highlight=False)

    def user(self, text: str) -> None:
        if self.console is None:
            print(f"you: {text}", flush=True)
        else:
            from rich.markup import escape

            self.console.print(f"[bold green]you:[/bold green] {escape(text)}")

    def reply(self, text: str) -> None:
        if self.console is None:
            print(f"assistant: {text}", flush=True)
            return
        from rich.panel import Panel
        from rich.text import Text

        self.console.print(Panel(Text(text or "(empty reply)"), title="assistant"))

    def reply_start(self) -> None:
        if self.console is None:
            print("assistant: ", end="", flush=True)
        else:
            self.console.print("[bold blue]assistant:[/bold blue] ", end="")

    def reply_piece(self, text: str) -> None:
        if self.console is None:
            print(text, end="", flush=True)
        else:
            self.console.print(text, end="", markup=False, highlight=False)

    def reply_end(self, empty: bool) -> None:
        if self.console is None:
            print("(empty reply)" if empty else "", flush=True)
        else:
            self.console.print("[dim](empty reply)[/dim]" if empty else "")

    def metrics(self, metrics: dict[str, Any]) -> None:
        if self.console is None:
            print(f"  [{_summary(metrics)}]", flush=True)
        else:
            self.console.print(f"[dim]{_summary(metrics)}[/dim]")

    def info(self, text: str) -> None:
        if self.console is None:
            print(text, flush=True)
        else:
            from rich.markup import escape

            self.console.print(f"[cyan]{escape(text)}[/cyan]")

    def error(self, text: str) -> None:
        if self.console is None:
            print(f"error: {text}", file=sys.stderr, flush=True)
        else:
            from rich.markup import escape

            self.console.print(f"[red]error:[/red] {escape(text)}")

    @contextlib.contextmanager
    def status(self, text: str) -> Iterator[Callable[[str], None]]:
        """A spinner with ``text`` while the block runs (plain: nothing)."""
        if self.console is None:
            yield lambda _text: None
            return
        with self.console.status(text) as status:
            yield status.update

    def ask(self) -> str:
        if self.console is None:
            return input("you: ")
        return self.console.input("[bold green]you:[/bold green] ")


class _Interrupts:
    """Counts Ctrl-C presses while a turn runs, instead of raising anywhere.

    A ``KeyboardInterrupt`` can land between any two bytecodes of the main
    thread; counting them in a handler keeps the turn's bookkeeping intact.
    """

    def __init__(self, out: _Output, *, saving: bool = False):
        self.out = out
        self.count = 0
        self.saving = saving
        self._previous: Any = None

    def _handler(self, signum, frame) -> None:
        del signum, frame
        self.count += 1
        if self.saving:
            self.out.info("Ctrl-C: the chat ends as soon as this save is done")
        elif self.count == 1:
            self.out.info(
                "Ctrl-C: this turn is cancelled; its update is undone as soon as "
                "it stops (Ctrl-C again to quit)"
            )
        elif self.count == 2:
            self.out.info("Ctrl-C again: quitting once the update has stopped")

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _wait_for(fn: Callable[[], Any], update: Callable[[str], None], label: str):
    """Runs ``fn`` in a worker thread; the main thread keeps handling signals."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    worker = threading.Thread(target=target, name="ol_jax-chat-turn", daemon=True)
    start = time.monotonic()
    worker.start()
    while worker.is_alive():
        worker.join(0.1)
        update(f"{label} ({time.monotonic() - start:.0f} s)")
    if "error" in box:
        raise box["error"]
    return box["value"]


_END = object()  # the end of a streamed reply


def _stream_reply(
    learner: Any, text: str, out: _Output, interrupts: _Interrupts
) -> str | None:
    """Prints the reply piece by piece as it is generated; returns it, or
    ``None`` when a Ctrl-C stopped the generation.

    The generation runs in a worker thread and hands each piece to the main
    thread, which prints it and keeps handling signals; after a Ctrl-C the
    worker stops pulling tokens, which stops the decoding at the next one. A
    spinner shows until the first piece (the prompt's prefill, a first compile).

    Raises:
      ValueError: the message was refused; nothing was printed.
    """
    pieces: queue.Queue = queue.Queue()
    stop = threading.Event()

    def target() -> None:
        try:
            for piece in learner.respond_stream(text):
                pieces.put(piece)
                if stop.is_set():
                    break
        except BaseException as e:  # re-raised in the main thread
            pieces.put(e)
        finally:
            pieces.put(_END)

    def next_piece(update: Callable[[str], None]) -> Any:
        while True:
            if interrupts.count:
                stop.set()
            try:
                return pieces.get(timeout=0.1)
            except queue.Empty:
                update(f"generating the reply ({time.monotonic() - start:.0f} s)")

    worker = threading.Thread(target=target, name="ol_jax-chat-reply", daemon=True)
    start = time.monotonic()
    worker.start()
    with out.status("generating the reply") as update:
        item = next_piece(update)
    shown: list[str] = []
    try:
        while item is not _END:
            if isinstance(item, BaseException):
                raise item
            if not stop.is_set():
                if not shown:
                    out.reply_start()
                out.reply_piece(item)
                shown.append(item)
            item = next_piece(lambda _text: None)
    finally:
        worker.join()
        if shown:
            out.reply_end(empty=False)
    if stop.is_set():
        return None
    if not shown:
        out.reply_start()
        out.reply_end(empty=True)
    return "".join(shown)


def _turn(learner: Any, text: str, out: _Output) -> tuple[str, bool]:
    """One turn; returns ``(outcome, quit)``, outcome ``done``/``cancelled``/``error``.

    Raises:
      ValueError: the message was refused (empty, too long, ...); nothing changed.
    """
    undo = learner.undo_point()
    with _Interrupts(out) as interrupts:
        t0 = time.perf_counter()
        if out.stream:
            reply = _stream_reply(learner, text, out, interrupts)
        else:
            with out.status("generating the reply") as update:
                reply = _wait_for(
                    lambda: learner.respond(text), update, "generating the reply"
                )
        generate_ms = (time.perf_counter() - t0) * 1e3
        if interrupts.count:
            out.info("turn cancelled before its update; nothing was learned")
            return "cancelled", interrupts.count > 1
        if not out.stream:
            out.reply(reply)
        label = f"learning from turn {learner.turn + 1}: updating the adapter"
        with out.status(label) as update:
            metrics = _wait_for(
                # The reply is already printed: only the update remains. The
                # generation time goes into the turn's metrics row as it does in
                # chat_and_update.
                lambda: learner.learn(text, reply, _gen_ms=generate_ms),
                update,
                label,
            )
        if interrupts.count:
            with out.status("undoing the turn's update and saving"):
                learner.undo_to(undo)
                version = learner.save()
            out.info(
                f"turn cancelled: its update was undone and saved as version "
                f"{version} (back at turn {learner.turn})"
            )
            return "cancelled", interrupts.count > 1
        out.metrics(metrics)
    return "done", False


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
    stream: bool | None = None,
) -> dict[str, Any]:
    """Runs a chat (scripted when ``lines`` is given) and saves on exit.

    Args:
      config: the chat config YAML path.
      root: networks folder of the run store.
      run_id: run to resume or create (``None``: a new run).
      lines: user messages, each echoed before its reply; ``None`` reads them
        from the terminal.
      plain: plain text output.
      learner: an already built ``ChatLearner`` to use instead (tests).
      stream: print each reply as it is generated; ``None``: when reading from
        the terminal and writing to one.

    Returns:
      ``{"run_id", "run_dir", "turns", "errors", "cancelled", "unknown_commands"}``.
    """
    from ol_jax.core import enable_compilation_cache
    from ol_jax.learners.chat import ChatLearner

    if stream is None:
        stream = lines is None and sys.stdout.isatty()
    out = _Output(plain, stream=stream)
    if learner is None:
        enable_compilation_cache()
        learner = ChatLearner(config, root=root, run_id=run_id)
    out.info(
        f"run {learner.run_id} (turn {learner.turn}, {len(learner.memory)} facts "
        f"remembered); /help lists the commands, /quit ends the chat"
    )
    counts = {"errors": 0, "cancelled": 0, "unknown_commands": 0}
    try:
        for text in _interactive(out) if lines is None else lines:
            if lines is not None:
                out.user(text)
            command = parse_command(text)
            if command in ("/quit", "/exit"):
                break
            if command == "/save":
                out.info(f"saved version {learner.save()}")
                continue
            if command == "/help":
                out.info("commands: " + _command_list())
                continue
            if command is not None:
                counts["unknown_commands"] += 1
                out.error(
                    f"unknown command {command}; the commands are "
                    f"{', '.join(COMMANDS)} (nothing was sent to the model)"
                )
                continue
            try:
                outcome, quit_now = _turn(learner, text, out)
            except ValueError as e:
                counts["errors"] += 1
                out.error(str(e))
                continue
            if outcome == "cancelled":
                counts["cancelled"] += 1
            if quit_now:
                break
    except KeyboardInterrupt:
        # Between turns (a turn counts its own Ctrl-C): nothing half-done.
        out.info("Ctrl-C: ending the chat")
    finally:
        # A save cut short would lose the turns since the last one.
        with _Interrupts(out, saving=True), out.status("saving"):
            learner.close()
    out.info(f"saved; metrics in {learner.metrics_path}")
    return {
        "run_id": learner.run_id,
        "run_dir": learner.run_dir,
        "turns": learner.turn,
        **counts,
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
