"""How long ``save()`` blocks the caller: RunStore's background writer vs Orbax async.

For each tree size and pacing, the same sequence of versions is saved by

* ``RunStore`` (host snapshot in the caller, one background writer thread, bounded
  queue), and
* a plain ``orbax.checkpoint.CheckpointManager`` with async checkpointing on,
  saving the jax arrays directly (the approach RunStore replaces),

and the wall time each ``save()`` call takes in the caller is reported (median,
90th percentile, max), together with the total time until everything is on disk.
"paced" saves one version every ``--interval-ms`` (an online learner's feedback
cycle); "burst" saves back to back, so the queue fills and back-pressure shows.

Run:  PYTHONPATH=. python benchmarks/bench_store_save.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from ol_jax.store import NetworkConfig, RunStore


def make_tree(megabytes: float) -> dict:
    """A decoder-like float32 tree of about ``megabytes`` MB, on device."""
    n = max(int(megabytes * 2**20 / 4), 16)
    side = int(np.sqrt(n / 2))
    return {
        "decoder": {
            "3": {
                "kernel": jnp.ones((side, side), jnp.float32),
                "bias": jnp.ones(side),
            },
            "4": {
                "kernel": jnp.ones((side, side), jnp.float32),
                "bias": jnp.ones(side),
            },
        },
        "policy": {"mean": jnp.zeros(64), "log_std": jnp.zeros(64)},
    }


def _bump(tree, i):
    # A new version each time, computed on device like an update step would.
    return jax.block_until_ready(jax.tree.map(lambda x: x + jnp.float32(i), tree))


def bench_runstore(root, tree, n, interval_s, queue_size):
    config = NetworkConfig(network_id="bench", store={"queue_size": queue_size})
    blocked = []
    with RunStore(root, config=config) as store:
        store.start_run()
        start = time.perf_counter()
        for i in range(n):
            params = _bump(tree, i)
            t0 = time.perf_counter()
            store.save(params, metadata_entry={"rating": 5, "loss": 0.1})
            blocked.append(time.perf_counter() - t0)
            _pace(t0, interval_s)
        store.flush()
        total = time.perf_counter() - start
        assert store.versions() == list(range(n))
    return blocked, total


def bench_orbax_async(root, tree, n, interval_s):
    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=True, create=True)
    blocked = []
    with ocp.CheckpointManager(os.path.join(root, "orbax"), options=options) as mgr:
        start = time.perf_counter()
        for i in range(n):
            params = _bump(tree, i)
            t0 = time.perf_counter()
            mgr.save(i, args=ocp.args.StandardSave(params), force=True)
            blocked.append(time.perf_counter() - t0)
            _pace(t0, interval_s)
        mgr.wait_until_finished()
        total = time.perf_counter() - start
        assert sorted(mgr.all_steps()) == list(range(n))
    return blocked, total


def _pace(t0, interval_s):
    left = interval_s - (time.perf_counter() - t0)
    if left > 0:
        time.sleep(left)


def _row(name, size, mode, blocked, total):
    ms = np.asarray(blocked) * 1e3
    return (
        f"{name:<22} {size:>7.1f} {mode:<6} {np.median(ms):>9.2f} "
        f"{np.percentile(ms, 90):>9.2f} {ms.max():>9.2f} {total:>8.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[0.5, 4.0, 32.0])
    parser.add_argument("--n", type=int, default=20, help="versions per case")
    parser.add_argument("--interval-ms", type=float, default=100.0)
    parser.add_argument("--queue-size", type=int, default=8)
    args = parser.parse_args()

    print(f"jax {jax.__version__}, backend {jax.default_backend()}, n={args.n}")
    header = (
        f"{'method':<22} {'MB':>7} {'mode':<6} {'med ms':>9} {'p90 ms':>9} "
        f"{'max ms':>9} {'total s':>8}"
    )
    print(header)
    print("-" * len(header))
    for size in args.sizes_mb:
        tree = make_tree(size)
        mb = sum(x.nbytes for x in jax.tree.leaves(tree)) / 2**20
        for mode, interval in (("paced", args.interval_ms / 1e3), ("burst", 0.0)):
            root = tempfile.mkdtemp(prefix="bench_store_")
            try:
                # Warm both paths once (Orbax and jit set-up) outside the timing.
                bench_runstore(os.path.join(root, "w1"), tree, 2, 0.0, args.queue_size)
                bench_orbax_async(os.path.join(root, "w2"), tree, 2, 0.0)
                blocked, total = bench_runstore(
                    os.path.join(root, "a"), tree, args.n, interval, args.queue_size
                )
                print(_row("RunStore (writer)", mb, mode, blocked, total))
                blocked_o, total_o = bench_orbax_async(
                    os.path.join(root, "b"), tree, args.n, interval
                )
                print(_row("orbax async direct", mb, mode, blocked_o, total_o))
                ratio = np.median(blocked_o) / np.median(blocked)
                print(f"{'  median ratio orbax/RunStore':<46} {ratio:>9.1f}x")
            finally:
                shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
