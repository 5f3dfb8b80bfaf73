"""Fact learning measured as knowledge editing: efficacy, generalization, locality.

Runs the shipped chat config (``configs/chat_smollm2.yaml``, SmolLM2-135M) on a
fact set: facts in file order, each stated ``--reps`` times in its own block with
one distractor chat turn after its first statement, an update after every turn.
Then, with greedy answers of up to 32 new tokens:

- ``efficacy`` / ``generalization``: facts whose question / paraphrased question
  gets an answer containing the fact's answer (counts of facts);
- ``locality``: fraction of the neighbour questions (unrelated to every fact)
  answered exactly as the base model answered them before the stream;
- ``neighbour_kl``: mean token KL(base || adapted) along those base answers;
- ``anchor_ppl_drift``: relative change of the anchor prompts' perplexity;
- ``fact_turns_detected`` of ``fact_turns``, ``s_per_turn`` (whole turns,
  replies included) and ``fact_update_s`` (median update of a fact turn).

The fact set is JSON: ``{"facts": [{"statement", "question", "paraphrase",
"answer"}, ...], "neighbours": [{"question", "answer"}, ...],
"distractor_chat": [str, ...]}``. Default: a fixed 10-fact sample of the
development set (``benchmarks/fact_sets/``).

Run: ``PYTHONPATH=. python benchmarks/fact_learning.py [--facts FILE] [--reps N]
[--limit N] [--json]`` (the 100-fact stream: ``--facts
benchmarks/fact_sets/dev.json --limit 100``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

from ol_jax.core import enable_compilation_cache  # noqa: E402
from ol_jax.learners import (  # noqa: E402
    ChatLearner,
    load_chat_config,
    load_fact_set,
    run_fact_stream,
)

CONFIG = os.path.join(HERE, "..", "configs", "chat_smollm2.yaml")
DEFAULT_FACTS = os.path.join(HERE, "fact_sets", "dev_sample10.json")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--facts", default=DEFAULT_FACTS, help="fact-set JSON file")
    p.add_argument("--reps", type=int, default=5, help="statements per fact")
    p.add_argument(
        "--limit", type=int, default=None, help="use the first N facts, None: all"
    )
    p.add_argument("--config", default=CONFIG, help="chat config YAML")
    p.add_argument(
        "--answer-tokens", type=int, default=32, help="greedy evaluation answer length"
    )
    p.add_argument(
        "--reply-tokens",
        type=int,
        default=None,
        help="longest chat reply of a turn, None: the config's "
        "generation.max_new_tokens (distractor turns train on their reply)",
    )
    p.add_argument("--root", default=None, help="run store folder, None: a temp dir")
    p.add_argument("--json", action="store_true", help="print the figures as JSON last")
    args = p.parse_args(argv)
    if args.reps < 1:
        p.error(f"--reps must be >= 1, got {args.reps}")
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit must be >= 1, got {args.limit}")
    try:
        fact_set = load_fact_set(args.facts)
    except ValueError as e:
        p.error(str(e))
    if args.limit is not None:
        fact_set["facts"] = fact_set["facts"][: args.limit]
    enable_compilation_cache()
    console = Console(stderr=True)
    config = load_chat_config(args.config)
    if args.reply_tokens is not None:
        if args.reply_tokens < 1:
            p.error(f"--reply-tokens must be >= 1, got {args.reply_tokens}")
        config = config.model_copy(
            update={
                "generation": config.generation.model_copy(
                    update={"max_new_tokens": args.reply_tokens}
                )
            }
        )
    root = args.root or tempfile.mkdtemp(prefix="fact_learning_")
    with ChatLearner(config, root=root) as learner:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("stating facts", total=None)

            def on_turn(done, total, row):
                progress.update(
                    task,
                    total=total,
                    completed=done,
                    description=f"turn {done}/{total} ({row['context']})",
                )

            result = run_fact_stream(
                learner,
                fact_set,
                reps=args.reps,
                answer_tokens=args.answer_tokens,
                on_turn=on_turn,
            )
        result["run_dir"] = learner.run_dir
    _print_table(result, Console())
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "details"}))
    return result


def _print_table(r: dict, console: Console) -> None:
    t = Table(title=f"fact learning: {r['facts']} facts x {r['reps']} statements")
    t.add_column("figure")
    t.add_column("value", justify="right")
    n = r["facts"]
    rows = [
        ("fact turns detected", f"{r['fact_turns_detected']} / {r['fact_turns']}"),
        ("efficacy (question)", f"{r['efficacy']} / {n}"),
        ("generalization (paraphrase)", f"{r['generalization']} / {n}"),
        ("locality (neighbours unchanged)", f"{r['locality']:.3f}"),
        ("neighbour KL(base || adapted)", f"{r['neighbour_kl']:.4f}"),
        ("anchor perplexity drift", f"{r['anchor_ppl_drift']:+.1%}"),
        ("s per turn", f"{r['s_per_turn']:.2f}"),
        ("fact-turn update s (median)", f"{r['fact_update_s'] or float('nan'):.2f}"),
    ]
    for name, value in rows:
        t.add_row(name, value)
    console.print(t)
    misses = [d for d in r["details"] if not (d["efficacy"] and d["generalization"])]
    for d in misses:
        console.print(
            f"[dim]{d['statement']!r} -> Q: {d['question_reply'][:70]!r} | "
            f"P: {d['paraphrase_reply'][:70]!r}[/dim]"
        )
    for c in r["neighbours_changed"]:
        console.print(
            f"[dim]changed: {c['question']!r}: {c['base'][:50]!r} -> "
            f"{c['now'][:50]!r}[/dim]"
        )


if __name__ == "__main__":
    main()
