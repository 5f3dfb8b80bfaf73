"""How long a durable ``feedback()`` blocks its caller, alone and with 8 threads.

With ``store.durability: sync`` (the default) ``GlyphLearner.feedback`` returns
once the rating is in the run's feedback journal on disk (write + fdatasync).
Callers that arrive while a sync is in flight are committed together by the next
one (group commit), so 8 concurrent raters should see far fewer syncs than
ratings. Reported for the glyph learner (its update and checkpoint writer running
beside it, one version per update) and for the bare journal, in one process:
p50 / p99 of the blocked time and ratings per fdatasync.

Run:  PYTHONPATH=. python benchmarks/feedback_latency.py [--n 400] [--durability sync]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time

import numpy as np
import yaml

from ol_jax.core import enable_compilation_cache
from ol_jax.learners import GlyphLearner
from ol_jax.store import FeedbackJournal, RunStore


def _timed(calls, threads: int) -> list[float]:
    """Runs ``calls`` (zero-argument functions) split over ``threads`` threads;
    returns each call's wall time."""
    times: list[float] = []
    lock = threading.Lock()

    def run(chunk):
        mine = []
        for call in chunk:
            t0 = time.perf_counter()
            call()
            mine.append(time.perf_counter() - t0)
        with lock:
            times.extend(mine)

    workers = [
        threading.Thread(target=run, args=(calls[i::threads],)) for i in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return times


def bench_learner(root: str, n: int, threads: int, durability: str):
    name = f"bench{threads}"
    os.makedirs(os.path.join(root, name))
    with open(os.path.join(root, name, "config.yaml"), "w") as f:
        yaml.safe_dump({"network_id": name, "store": {"durability": durability}}, f)
    with GlyphLearner(RunStore(root, name)) as learner:
        glyphs = learner.generate(n + 8)
        for g in glyphs[:8]:  # cold start and compilation outside the clock
            learner.feedback(g.id, 5)
        learner.flush()
        journal = learner.store.journal
        syncs = journal.syncs
        calls = [
            (lambda g=g, r=1 + i % 10: learner.feedback(g.id, r))
            for i, g in enumerate(glyphs[8:])
        ]
        times = _timed(calls, threads)
        per_sync = n / max(journal.syncs - syncs, 1)
        learner.flush()
    return times, per_sync


def bench_journal(root: str, n: int, threads: int, durability: str):
    path = os.path.join(root, f"bare{threads}.journal")
    z, image = np.zeros(64, np.float32), np.zeros((32, 32), np.float32)
    with FeedbackJournal(path, durability=durability) as journal:
        calls = [
            (
                lambda i=i: journal.append(
                    {"id": f"g{i}", "rating": 5, "z": z, "image": image}
                )
            )
            for i in range(n)
        ]
        times = _timed(calls, threads)
        journal.flush()
        per_sync = n / max(journal.syncs, 1)
    return times, per_sync


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=400, help="ratings per case")
    parser.add_argument("--durability", choices=("sync", "async"), default="sync")
    args = parser.parse_args()
    enable_compilation_cache()
    root = tempfile.mkdtemp(prefix="ol_jax_feedback_bench_", dir=os.getcwd())
    print(f"durability={args.durability}, {args.n} ratings per case, in {root}")
    print(f"{'case':<28}{'p50 ms':>10}{'p99 ms':>10}{'ratings/sync':>14}")
    try:
        for label, bench in (
            ("GlyphLearner.feedback", bench_learner),
            ("FeedbackJournal.append", bench_journal),
        ):
            for threads in (1, 8):
                times, per_sync = bench(root, args.n, threads, args.durability)
                p50, p99 = np.percentile(np.asarray(times) * 1e3, [50, 99])
                case = f"{label} x{threads}"
                print(f"{case:<28}{p50:>10.2f}{p99:>10.2f}{per_sync:>14.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
