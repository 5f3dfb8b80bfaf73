"""``ol-jax soak``: the controller learner's simulated feedback stream, reported.

A rich progress bar while the stream runs (on stderr), then a summary table and
the reasons of any failed acceptance check (:func:`~ol_jax.learners.soak_failures`);
``--json`` prints the summary as one JSON object instead. An ``--out`` folder that
already holds a run is refused unless ``--resume`` continues it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Sequence
from typing import Any

from ol_jax.cli._help import HelpFormatter

__all__ = ["soak_main"]


def _soak_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ol-jax soak",
        description="Runs a routing controller that learns from a simulated stream "
        "of user feedback (one event per simulated second: a distribution shift "
        "half-way, noisy feedback, poisoned bursts, malformed events), with its "
        "safety gates, drift rollbacks and periodic saves; then prints a summary "
        "and writes report.json, timeline.json and report.png into --out. Exits "
        "1 when an acceptance check fails, saying which.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--config",
        required=True,
        help="controller config YAML, e.g. configs/controller.yaml",
    )
    parser.add_argument(
        "--hours",
        type=float,
        default=None,
        help="simulated hours of stream (3,600 events each); default: the "
        "config's soak.hours",
    )
    parser.add_argument(
        "--out", default="soak", help="folder for the run store and the reports"
    )
    parser.add_argument("--run-id", default="soak", help="the run's id in the store")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its latest saved version",
    )
    parser.add_argument("--no-plot", action="store_true", help="skip report.png")
    parser.add_argument(
        "--progress",
        action="store_true",
        help="print each evaluation as a JSON line as it is made",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the summary as one JSON object instead of a table (no bar)",
    )
    return parser


_SUMMARY_KEYS = (
    "events",
    "aggregate_improvement_pct",
    "accepted_updates",
    "rejected_updates",
    "rejected_by",
    "accepted_canary_regressions",
    "all_bursts_handled",
    "rollbacks",
    "saved_versions_finite",
    "loop_s",
)


def _print_summary(console, report, failures, out_dir) -> None:
    from rich.table import Table

    table = Table(title=f"soak: {report['hours']:g} simulated hours", show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("events", f"{report['events']:,}")
    table.add_row(
        "task score (start -> final)",
        f"{report['aggregate_start']:.3f} -> {report['aggregate_final']:.3f} "
        f"({report['aggregate_improvement_pct']:+.1f}%)",
    )
    table.add_row(
        "pre-shift families",
        f"{report['pre_shift_start']:.3f} -> {report['pre_shift_final']:.3f}",
    )
    table.add_row(
        "updates accepted / rejected",
        f"{report['accepted_updates']} / {report['rejected_updates']}",
    )
    by = report["rejected_by"]
    table.add_row(
        "rejected by (first failed check)",
        ", ".join(f"{k} {v}" for k, v in by.items() if v) or "-",
    )
    table.add_row(
        "accepted canary regressions", str(report["accepted_canary_regressions"])
    )
    handled = sum(b["majority_poisoned_kept"] == 0 for b in report["bursts"])
    table.add_row("poisoned bursts handled", f"{handled} of {len(report['bursts'])}")
    table.add_row("rollbacks", str(report["rollbacks"]))
    stream = report["stream"]
    table.add_row(
        "events rejected by validation",
        str(sum(stream.get("rejected", {}).values())),
    )
    table.add_row(
        "saved versions finite", "yes" if report["saved_versions_finite"] else "NO"
    )
    table.add_row("time in the stream loop", f"{report['loop_s']:.1f} s")
    console.print(table)
    console.print(f"reports in {out_dir}")
    if failures:
        console.print("[red]failed:[/red]")
        for reason in failures:
            console.print(f"  - {reason}")
    else:
        console.print("[green]all acceptance checks passed[/green]")


def soak_main(argv: Sequence[str] | None = None) -> int:
    """``ol-jax soak --config configs/controller.yaml --hours 24 [--out DIR]``.

    Returns:
      0 when every check of :func:`soak_failures` passes, 1 (after printing the
      reasons) otherwise.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from ol_jax.core import enable_compilation_cache
    from ol_jax.learners.controller import run_soak

    args = _soak_parser().parse_args(argv)
    enable_compilation_cache()
    err = Console(stderr=True, highlight=False)
    bar = None
    task = None

    def on_progress(done: int, total: int, learner: Any) -> None:
        nonlocal task
        if bar is None:
            return
        if task is None:
            task = bar.add_task("events", total=total, completed=done)
        bar.update(
            task,
            completed=done,
            description=f"accepted {learner.accepted}, rejected {learner.rejected}, "
            f"rollbacks {learner.rollbacks}",
        )

    if not args.json:
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err,
        )
        err.print("warming up the controller and compiling the gated update...")
    with bar if bar is not None else contextlib.nullcontext():
        report = run_soak(
            args.config,
            args.hours,
            args.out,
            run_id=args.run_id,
            resume=args.resume,
            plot=not args.no_plot,
            progress=args.progress,
            on_progress=on_progress,
        )
    from ol_jax.learners.controller import soak_failures

    failures = soak_failures(report)
    if args.json:
        summary = {k: report[k] for k in _SUMMARY_KEYS}
        summary["failures"] = failures
        print(json.dumps(summary))
    else:
        _print_summary(Console(highlight=False), report, failures, args.out)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(soak_main())
