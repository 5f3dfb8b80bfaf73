"""``ol-jax demo``: the glyph learner against a simulated rater, with plots."""

from __future__ import annotations

import json
import os
import time

import numpy as np


def _plot_scores(path: str, cycles, scores, ratings, personality: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(cycles, scores, marker="o", label="held-out match score")
    ax.set_xlabel("feedback cycle")
    ax.set_ylabel(f"match score ({personality})")
    ax2 = ax.twinx()
    ax2.plot(cycles[1:], ratings, color="tab:orange", alpha=0.6, label="mean rating")
    ax2.set_ylabel("mean rating (1-10)")
    ax2.set_ylim(1, 10)
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], loc="lower right")
    ax.set_title("Glyph style learning from ratings")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_grid(path: str, before: np.ndarray, after: np.ndarray, titles) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(len(before), 8)
    fig, axes = plt.subplots(2, n, figsize=(1.2 * n, 2.8), dpi=120)
    for row, images in enumerate((before, after)):
        for i in range(n):
            ax = axes[row, i]
            ax.imshow(1.0 - images[i], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(titles[row], fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_demo(
    *,
    root: str = "networks",
    network_id: str = "glyph-demo",
    personality: str = "bold",
    cycles: int = 20,
    glyphs_per_cycle: int = 8,
    eval_samples: int = 64,
    run_id: str | None = None,
    quiet: bool = False,
) -> dict:
    """Runs ``cycles`` feedback cycles of a new glyph run; returns the summary.

    Each cycle samples ``glyphs_per_cycle`` glyphs from the current policy, has the
    simulated rater score them 1-10, feeds the ratings to the learner and waits for
    its updates; then the mean personality-match score of ``eval_samples`` held-out
    glyphs (fixed noise, noise-free images) is measured.
    """
    import jax
    import jax.numpy as jnp
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from ol_jax.core import enable_compilation_cache
    from ol_jax.feedback import SimulatedRater, match_score
    from ol_jax.learners import GlyphLearner
    from ol_jax.store import RunStore

    for name, value in (("cycles", cycles), ("glyphs_per_cycle", glyphs_per_cycle)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    config_path = os.path.join(root, network_id, "config.yaml")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f"no network config at {config_path}; run from the repository root "
            "or pass --root/--network"
        )
    enable_compilation_cache()
    console = Console(quiet=quiet)
    rater = SimulatedRater(personality)
    score_fn = jax.jit(jax.vmap(lambda im: match_score(im, personality)))
    started = time.perf_counter()

    with GlyphLearner(RunStore(root, network_id), run_id=run_id) as learner:
        cfg = learner.model_config
        eps = jax.random.normal(jax.random.key(12345), (eval_samples, cfg.style_z_dim))

        def held_out():
            policy = learner.state.params["policy"]
            z = policy["mean"][None, :] + jnp.exp(policy["log_std"])[None, :] * eps
            images = learner.mean_images(np.asarray(z))
            return float(jnp.mean(score_fn(jnp.asarray(images)))), images

        score0, before = held_out()
        scores, mean_ratings = [score0], []
        console.print(
            f"[bold]ol-jax demo[/]: network [cyan]{network_id}[/], run "
            f"[cyan]{learner.run_id}[/], personality [magenta]{personality}[/]"
        )
        with Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("score {task.fields[score]:.3f}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as progress:
            task = progress.add_task("feedback cycles", total=cycles, score=score0)
            for _ in range(cycles):
                glyphs = learner.generate(glyphs_per_cycle)
                ratings = rater.rate_batch(np.stack([g.image for g in glyphs]))
                for g, r in zip(glyphs, ratings, strict=True):
                    learner.feedback(g.id, int(r))
                learner.wait()
                score, after = held_out()
                scores.append(score)
                mean_ratings.append(float(np.mean(ratings)))
                progress.update(task, advance=1, score=score)
        learner.flush()
        run_dir = learner.store.run_dir
        versions = learner.store.versions()

    elapsed = time.perf_counter() - started
    cycles_axis = list(range(cycles + 1))
    scores_png = os.path.join(run_dir, "scores.png")
    grid_png = os.path.join(run_dir, "glyphs_before_after.png")
    _plot_scores(scores_png, cycles_axis, scores, mean_ratings, personality)
    _plot_grid(grid_png, before, after, ("before", f"after {cycles}"))

    table = Table(title=f"held-out match score, {personality}")
    table.add_column("cycle", justify="right")
    table.add_column("score", justify="right")
    table.add_column("mean rating", justify="right")
    for c in cycles_axis:
        rating = f"{mean_ratings[c - 1]:.2f}" if c else "-"
        table.add_row(str(c), f"{scores[c]:.4f}", rating)
    console.print(table)
    gain = (scores[-1] - scores[0]) / max(abs(scores[0]), 1e-9)
    summary = {
        "network_id": network_id,
        "run_id": os.path.basename(run_dir),
        "personality": personality,
        "cycles": cycles,
        "glyphs_per_cycle": glyphs_per_cycle,
        "scores": scores,
        "mean_ratings": mean_ratings,
        "relative_gain": gain,
        "versions": len(versions),
        "seconds": elapsed,
        "plots": [scores_png, grid_png],
    }
    with open(os.path.join(run_dir, "demo_summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    console.print(
        f"score {scores[0]:.4f} -> {scores[-1]:.4f} ({gain:+.1%}) in {elapsed:.1f} s; "
        f"{len(versions)} weight versions and plots in [cyan]{run_dir}[/]"
    )
    return summary
