"""What a save costs: how long ``save()`` blocks, and its metadata write.

**Blocking** (``--only latency``): RunStore's background writer vs Orbax async.

For each tree size and pacing, the same sequence of versions is saved by

* ``RunStore`` (host snapshot in the caller, one background writer thread, bounded
  queue), and
* a plain ``orbax.checkpoint.CheckpointManager`` with async checkpointing on,
  saving the jax arrays directly (the approach RunStore replaces),

and the wall time each ``save()`` call takes in the caller is reported (median,
90th percentile, max), together with the total time until everything is on disk.
"paced" saves one version every ``--interval-ms`` (an online learner's feedback
cycle); "burst" saves back to back, so the queue fills and back-pressure shows.

**Metadata** (``--only metadata``): the bytes and time one update's metadata
write takes in a run that already holds 1k and 100k entries. The entries are
written straight into the run's record file (100k real saves would take an
hour); then real ``save`` + ``flush`` calls are measured on top, with the bytes
they add to the run's metadata files. Side by side, the same update written the
format-1 way (the whole ``run_metadata.json`` rewritten atomically, as the store
did before the record file) shows the O(n) cost the record file removes. The
last line with ``--json`` is the metadata table as JSON.

Run:  PYTHONPATH=. python benchmarks/bench_store_save.py [--only metadata] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from ol_jax.store import MetadataLog, NetworkConfig, RunStore


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


def make_entry(i: int) -> dict:
    """A version's metadata entry the size of a glyph learner's (~1.7 KB)."""
    rng = np.random.default_rng(i)
    return {
        "version": i,
        "parent_version": i - 1 if i else None,
        "event": "save",
        "timestamp": "2026-12-04T21:00:00.000000+00:00",
        "journal_position": i,
        "rating": int(rng.integers(1, 11)),
        "loss": float(rng.normal()),
        "grad_norm": float(rng.random()),
        "glyph_id": f"g{i:06d}-000",
        "style_z": [float(x) for x in rng.normal(size=80)],
    }


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rewrite_whole_file(path: str, header: dict, entries_json: list[str]) -> int:
    """One update the format-1 way: the whole metadata JSON written to a
    temporary file, fsync'd and renamed over the old one. Returns the bytes."""
    text = (
        json.dumps(header, separators=(",", ":"))[:-1]
        + ',"entries":['
        + ",".join(entries_json)
        + "]}"
    )
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path))
    return len(text)


def _metadata_bytes(run_dir: str) -> int:
    return sum(
        os.path.getsize(os.path.join(run_dir, name))
        for name in ("run_metadata.json", "run_metadata.records")
    )


def bench_metadata(root: str, entries: int, saves: int, rewrites: int) -> dict:
    """Per-update metadata cost in a run that already holds ``entries`` entries."""
    config = NetworkConfig(network_id="meta", store={"max_to_keep": 3})
    with RunStore(root, config=config) as store:
        store.start_run("r")
        run_dir = store.run_dir
    records = os.path.join(run_dir, "run_metadata.records")
    history = [make_entry(i) for i in range(entries)]
    log, _ = MetadataLog.open(records)
    for start in range(0, entries, 10_000):
        log.append([{"entry": e} for e in history[start : start + 10_000]])
    log.close()

    # The record file alone: one entry-sized append to a file of `entries`.
    copy_path = os.path.join(root, "copy.records")
    shutil.copyfile(records, copy_path)
    log, _ = MetadataLog.open(copy_path)
    append_ms, append_bytes = [], []
    for i in range(saves):
        t0 = time.perf_counter()
        append_bytes.append(log.append([{"entry": make_entry(entries + i)}]))
        append_ms.append((time.perf_counter() - t0) * 1e3)
    log.close()
    os.remove(copy_path)

    # Real saves on top of the run (open first: reading the history is O(n)).
    tree = {"w": np.zeros(256, np.float32)}
    save_ms, save_bytes = [], []
    with RunStore(root, config=config) as store:
        t0 = time.perf_counter()
        store.start_run("r")
        open_s = time.perf_counter() - t0
        assert len(store.metadata()["entries"]) == entries
        for i in range(saves):
            before = _metadata_bytes(run_dir)
            entry = make_entry(entries + i)
            for key in ("version", "parent_version", "event", "journal_position"):
                del entry[key]
            t0 = time.perf_counter()
            store.save(tree, metadata_entry=entry)
            store.flush()
            save_ms.append((time.perf_counter() - t0) * 1e3)
            save_bytes.append(_metadata_bytes(run_dir) - before)

    # The same update written the format-1 way, for comparison.
    header = {"format_version": 1, "network_id": "meta", "run_id": "r"}
    entries_json = [json.dumps(e, separators=(",", ":")) for e in history]
    legacy = os.path.join(root, "legacy_metadata.json")
    rewrite_ms, rewrite_bytes = [], []
    for _ in range(rewrites):
        t0 = time.perf_counter()
        rewrite_bytes.append(rewrite_whole_file(legacy, header, entries_json))
        rewrite_ms.append((time.perf_counter() - t0) * 1e3)
    return {
        "entries": entries,
        "append_bytes": float(np.median(append_bytes)),
        "append_ms": float(np.median(append_ms)),
        "save_metadata_bytes": float(np.median(save_bytes)),
        "save_ms": float(np.median(save_ms)),
        "open_s": open_s,
        "rewrite_bytes": float(np.median(rewrite_bytes)),
        "rewrite_ms": float(np.median(rewrite_ms)),
    }


def run_metadata_table(entry_counts: list[int], saves: int, as_json: bool) -> None:
    header = (
        f"{'entries':>8} {'record B':>9} {'record ms':>9} {'save B':>7} "
        f"{'save ms':>8} {'open s':>7} {'rewrite B':>11} {'rewrite ms':>10}"
    )
    print("per-update metadata cost (medians; 'rewrite' = format 1, whole file)")
    print(header)
    print("-" * len(header))
    rows = []
    for n in entry_counts:
        root = tempfile.mkdtemp(prefix="bench_meta_")
        try:
            row = bench_metadata(root, n, saves, rewrites=3 if n > 10_000 else 10)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        rows.append(row)
        print(
            f"{n:>8} {row['append_bytes']:>9.0f} {row['append_ms']:>9.2f} "
            f"{row['save_metadata_bytes']:>7.0f} {row['save_ms']:>8.2f} "
            f"{row['open_s']:>7.2f} {row['rewrite_bytes']:>11.0f} "
            f"{row['rewrite_ms']:>10.2f}"
        )
    first, last = rows[0], rows[-1]
    print(
        f"{last['entries']} vs {first['entries']} entries: record bytes "
        f"{last['append_bytes'] / first['append_bytes']:.2f}x, record ms "
        f"{last['append_ms'] / first['append_ms']:.2f}x, save ms "
        f"{last['save_ms'] / first['save_ms']:.2f}x; format 1 would write "
        f"{last['rewrite_bytes'] / first['rewrite_bytes']:.0f}x the bytes"
    )
    if as_json:
        print(json.dumps({"metadata": rows}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["latency", "metadata"], default=None)
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[0.5, 4.0, 32.0])
    parser.add_argument("--n", type=int, default=20, help="versions per case")
    parser.add_argument("--interval-ms", type=float, default=100.0)
    parser.add_argument("--queue-size", type=int, default=8)
    parser.add_argument(
        "--entries",
        type=int,
        nargs="+",
        default=[1_000, 100_000],
        help="entries already in the run, for the metadata table",
    )
    parser.add_argument("--saves", type=int, default=30, help="saves per metadata row")
    parser.add_argument("--json", action="store_true", help="metadata table as JSON")
    args = parser.parse_args()

    print(f"jax {jax.__version__}, backend {jax.default_backend()}, n={args.n}")
    if args.only != "metadata":
        run_latency_table(args)
    if args.only != "latency":
        run_metadata_table(args.entries, args.saves, args.json)


def run_latency_table(args: argparse.Namespace) -> None:
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
