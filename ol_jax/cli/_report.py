"""``ol-jax report RUN_DIR``: PNG plots of a chat run's per-turn metrics.

Reads ``RUN_DIR/metrics.jsonl`` (one JSON object per turn, with at least
``"turn"``) and plots every numeric key over the turns, one PNG per group:
``stability.png`` (anchor perplexity, KL to base, ...), ``plasticity.png`` (loss,
learning rate, recent loss, improvement, adaptation speed, ...),
``forgetting.png`` (anchor regression, forgetting rate, ...), ``editing.png``
(efficacy, generalization, locality and neighbour KL of the learned facts,
from ``kind: "edit_eval"`` rows, and the facts in the bank) and ``other.png``
for any key not in those groups. Turns where ``is_fact`` is true are marked in
every panel. If ``RUN_DIR/accuracy_matrix.json`` exists (``{"facts": [names],
"matrix": [[...]]}`` with ``null`` above the diagonal) it also writes
``accuracy_matrix.png``, a heatmap with backward transfer and forgetting in the
title.

References:
    Lopez-Paz and Ranzato, `Gradient Episodic Memory for Continual Learning
    <https://arxiv.org/abs/1706.08840>`_, 2017.
    Chaudhry et al., `Riemannian Walk for Incremental Learning
    <https://arxiv.org/abs/1801.10112>`_, 2018.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

from ol_jax.learners import backward_transfer, forgetting

__all__ = ["METRIC_GROUPS", "read_metrics", "report_main", "write_report"]

# Which panel each known key goes to; unknown numeric keys go to "other".
METRIC_GROUPS: Mapping[str, tuple[str, ...]] = {
    "stability": (
        "anchor_perplexity",
        "base_anchor_perplexity",
        "kl_to_base",
        "kl",
        "perplexity_drift",
        "param_norm",
        "lora_norm",
    ),
    "plasticity": (
        "loss",
        "ce",
        "task_loss",
        "kl_loss",
        "learning_rate",
        "lr_multiplier",
        "kl_lambda",
        "recent_loss",
        "improvement",
        "adaptation_speed",
        "grad_norm",
    ),
    "forgetting": (
        "anchor_regression",
        "forgetting_rate",
        "recall",
        "fact_recall",
        "backward_transfer",
        "forgetting",
    ),
    # Knowledge-editing evaluations (``ChatLearner.evaluate_edits`` rows).
    "editing": (
        "efficacy_rate",
        "generalization_rate",
        "locality",
        "neighbour_kl",
        "probe_locality",
        "probe_kl",
        "facts_in_bank",
    ),
}
_FACT_KEY = "is_fact"
# Turn indices and the fact flag (drawn as markers) are not curves of their own.
_NOT_PLOTTED = (
    "turn", "anchor_turn", _FACT_KEY, "fact_index", "facts", "efficacy",
    "generalization",
)  # fmt: skip


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def read_metrics(path: str | os.PathLike[str]) -> list[dict]:
    """The records of a ``metrics.jsonl`` file, in order.

    Blank lines are skipped. Every other line must be a JSON object with an
    integer ``"turn"``.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: a malformed line, named by its line number.
    """
    path = os.fspath(path)
    records = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(
                    f"{path}:{lineno}: not UTF-8 (byte {exc.start + 1} of the line)"
                ) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})"
                ) from None
            if not isinstance(record, dict):
                raise ValueError(
                    f"{path}:{lineno}: expected a JSON object, got "
                    f"{type(record).__name__}"
                )
            turn = record.get("turn")
            if isinstance(turn, bool) or not isinstance(turn, int):
                raise ValueError(
                    f"{path}:{lineno}: expected an integer 'turn', got {turn!r}"
                )
            records.append(record)
    return records


def _series(records: Sequence[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """key -> (turns, values) for every numeric key, in first-seen key order."""
    keys: dict[str, None] = {}
    for record in records:
        for key, value in record.items():
            if key not in _NOT_PLOTTED and _is_number(value):
                keys[key] = None
    out = {}
    for key in keys:
        pairs = [(r["turn"], float(r[key])) for r in records if _is_number(r.get(key))]
        # A resumed run may repeat turns; sort so the curve runs left to right.
        pairs.sort(key=lambda pair: pair[0])
        turns, values = zip(*pairs, strict=True)
        out[key] = (np.asarray(turns, np.float64), np.asarray(values, np.float64))
    return out


def _group_of(key: str) -> str:
    for group, keys in METRIC_GROUPS.items():
        if key in keys:
            return group
    return "other"


def _plot_group(path: str, title: str, series, fact_turns) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(series), 1, figsize=(8, 1.9 * len(series) + 0.8), sharex=True, dpi=110
    )
    axes = np.atleast_1d(axes)
    for ax, (key, (turns, values)) in zip(axes, series.items(), strict=True):
        if fact_turns:
            ax.vlines(fact_turns, 0, 1, transform=ax.get_xaxis_transform(),
                      color="tab:orange", alpha=0.25, linewidth=1)  # fmt: skip
        # Non-finite values (a diverged loss) are gaps, not axis-breaking points.
        values = np.where(np.isfinite(values), values, np.nan)
        ax.plot(turns, values, marker="." if len(turns) < 60 else None)
        finite = values[np.isfinite(values)]
        if key == "learning_rate" and finite.size and np.all(finite > 0):
            ax.set_yscale("log")
        ax.set_ylabel(key, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("turn")
    note = " (orange: fact turns)" if len(fact_turns) else ""
    axes[0].set_title(f"{title}{note}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _read_accuracy_matrix(path: str) -> tuple[list[str], np.ndarray, float, float]:
    """Fact names, the matrix (NaN above the diagonal), BWT and forgetting."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("matrix"), list):
        raise ValueError(f"{path}: expected an object with a 'matrix' list")
    rows = data["matrix"]
    n = len(rows)
    facts = data.get("facts", [f"task {j}" for j in range(n)])
    if not isinstance(facts, list) or len(facts) != n:
        raise ValueError(
            f"{path}: 'facts' must list one name per matrix row ({n}), "
            f"got {facts!r:.80}"
        )
    matrix = np.full((n, n), np.nan)
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != n:
            raise ValueError(f"{path}: matrix row {i} must have {n} entries")
        for j, value in enumerate(row):
            if value is None:
                continue
            if not _is_number(value):
                raise ValueError(
                    f"{path}: matrix[{i}][{j}] must be a number or null, got {value!r}"
                )
            matrix[i, j] = value
    if n == 0:
        return [], matrix, 0.0, 0.0
    try:
        bwt, forget = backward_transfer(matrix), forgetting(matrix)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return [str(f) for f in facts], matrix, bwt, forget


def _plot_accuracy(
    path: str, facts: list[str], matrix: np.ndarray, bwt: float, forget: float
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(facts)
    shown = np.where(np.tril(np.ones((n, n), bool)), matrix, np.nan)
    size = 2.5 + 0.45 * n
    fig, ax = plt.subplots(figsize=(size + 1.5, size), dpi=110)
    image = ax.imshow(shown, vmin=0, vmax=1, cmap="viridis")
    fig.colorbar(image, ax=ax, label="accuracy")
    labels = [f if len(f) <= 24 else f[:23] + "…" for f in facts]
    ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), [f"after {j}" for j in range(n)], fontsize=7)
    ax.set_xlabel("accuracy on fact j")
    ax.set_ylabel("after learning fact i")
    if n <= 16:
        for i in range(n):
            for j in range(i + 1):
                if math.isfinite(shown[i, j]):
                    color = "black" if shown[i, j] > 0.6 else "white"
                    ax.text(j, i, f"{shown[i, j]:.2f}", ha="center", va="center",
                            fontsize=6, color=color)  # fmt: skip
    ax.set_title(f"Anytime accuracy: BWT = {bwt:+.3f}, forgetting = {forget:.3f}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(
    run_dir: str | os.PathLike[str], *, out: str | os.PathLike[str] | None = None
) -> list[str]:
    """Writes the report PNGs of a run folder; returns their paths.

    Args:
      run_dir: the run folder holding ``metrics.jsonl`` (and optionally
        ``accuracy_matrix.json``).
      out: the folder the PNGs go to (created if missing); default ``run_dir``.

    Returns:
      The written PNG paths, metric groups first, in the order stability,
      plasticity, forgetting, editing, other, then ``accuracy_matrix.png``.

    Raises:
      FileNotFoundError: ``run_dir`` or its ``metrics.jsonl`` is missing.
      ValueError: ``run_dir`` is not a folder, or a malformed file (named with
        its line number), or no numeric metric to plot.
    """
    run_dir = os.fspath(run_dir)
    if not os.path.exists(run_dir):
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    if not os.path.isdir(run_dir):
        raise ValueError(f"RUN_DIR must be a folder, got the file {run_dir}")
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(metrics_path):
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}")
    records = read_metrics(metrics_path)
    series = _series(records)
    if not series:
        raise ValueError(f"{metrics_path}: no numeric metric to plot")
    # Every input is checked before anything is written.
    matrix_path = os.path.join(run_dir, "accuracy_matrix.json")
    accuracy = None
    if os.path.isfile(matrix_path):
        accuracy = _read_accuracy_matrix(matrix_path)
        if not accuracy[0]:
            accuracy = None
    out_dir = os.fspath(out) if out is not None else run_dir
    os.makedirs(out_dir, exist_ok=True)

    fact_turns = sorted({r["turn"] for r in records if r.get(_FACT_KEY) in (True, 1)})
    written = []
    for group in (*METRIC_GROUPS, "other"):
        chosen = {k: v for k, v in series.items() if _group_of(k) == group}
        if chosen:
            path = os.path.join(out_dir, f"{group}.png")
            _plot_group(path, f"{group.capitalize()} metrics", chosen, fact_turns)
            written.append(path)

    if accuracy is not None:
        path = os.path.join(out_dir, "accuracy_matrix.png")
        _plot_accuracy(path, *accuracy)
        written.append(path)
    return written


def report_main(argv: Sequence[str]) -> int:
    """Entry point of ``ol-jax report``; prints the written paths, and BWT and
    forgetting when the run has an accuracy matrix."""
    from rich.console import Console
    from rich.markup import escape

    from ol_jax.cli._help import HelpFormatter

    parser = argparse.ArgumentParser(
        prog="ol-jax report",
        description="Writes PNG plots of a run's metrics.jsonl (stability, "
        "plasticity, forgetting) and, if present, of its accuracy_matrix.json.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run folder")
    parser.add_argument(
        "--out", default=None, help="folder for the PNGs (default: RUN_DIR)"
    )
    args = parser.parse_args(list(argv))
    paths = write_report(args.run_dir, out=args.out)
    console = Console()
    console.print(f"[bold]report[/bold] of {escape(args.run_dir)}:", soft_wrap=True)
    for path in paths:
        console.print(f"  wrote [green]{escape(path)}[/green]", soft_wrap=True)
    matrix_path = os.path.join(args.run_dir, "accuracy_matrix.json")
    if os.path.isfile(matrix_path):
        facts, _, bwt, forget = _read_accuracy_matrix(matrix_path)
        console.print(
            f"  {len(facts)} facts: backward transfer [bold]{bwt:+.3f}[/bold], "
            f"forgetting [bold]{forget:.3f}[/bold]"
        )
    return 0
