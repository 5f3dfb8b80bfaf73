"""Acknowledged ratings survive SIGKILL: a child rates glyphs and is killed at
random moments, paced and in bursts; the run is resumed every time."""

import collections
import os
import pathlib
import subprocess
import sys
import threading
import time

import numpy as np
import yaml

from ol_jax.learners import GlyphLearner
from ol_jax.store import RunStore

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
from glyph_crash_child import tree_digest  # noqa: E402

NETWORK = "crashy"
RUN = "crash-run"
KILLS = 10


def _network(root: pathlib.Path) -> pathlib.Path:
    folder = root / NETWORK
    folder.mkdir(parents=True)
    config = {
        "network_id": NETWORK,
        # A small decoder: the test is about the store, not the learning.
        "model": {"style_z_dim": 8, "image_size": 8, "hidden": [16, 16, 8]},
        # A version per 8 ratings: fewer versions to restore at the end.
        "online_learning": {
            "min_ratings_before_update": 3,
            "update_frequency": "batched",
            "batch_size": 8,
        },
        "store": {"queue_size": 4},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def _run_and_kill(root, seed, rng) -> list[list[str]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "glyph_crash_child.py"),
            str(root),
            NETWORK,
            RUN,
            str(seed),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[list[str]] = []
    ready = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line.split())
            if line.startswith("ready"):
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(120), proc.stderr.read()[-3000:] if proc.poll() else "slow"
        # Some kills land before the first update is compiled (only the journal
        # is being written), most while the writer is saving versions.
        time.sleep(rng.uniform(0.2, 7.0))
        assert proc.poll() is None, proc.stderr.read()[-3000:]
    finally:
        proc.kill()  # SIGKILL
        proc.wait()
        reader.join()
        proc.stderr.close()
    assert proc.returncode == -9
    return lines


def _lineage_ids(meta) -> list[str]:
    """Glyph ids in the entries of the current version and its ancestors."""
    by_version = {e["version"]: e for e in meta["entries"]}
    ids, current = [], meta["current_version"]
    while current is not None:
        entry = by_version[current]
        ids.extend(entry.get("glyph_ids", []))
        current = entry.get("parent_version")
    return ids


def test_sigkill_loses_no_acknowledged_rating(tmp_path):
    root = _network(tmp_path)
    rng = np.random.default_rng(20)
    acked: dict[str, int] = {}
    handed_out: dict[int, str] = {}  # version -> digest, over every process
    for seed in range(KILLS):
        for kind, *rest in _run_and_kill(root, seed, rng):
            if kind == "ack":
                glyph_id, rating = rest
                assert glyph_id not in acked, f"glyph id {glyph_id} reused"
                acked[glyph_id] = int(rating)
            elif kind == "version":
                version, digest = int(rest[0]), rest[1]
                assert version not in handed_out, f"version {version} reused"
                handed_out[version] = digest
    assert len(acked) > 10 * KILLS
    print(f"{len(acked)} acknowledged, {len(handed_out)} versions handed out")

    # Resume once more and close: the last partial batch is applied and saved.
    t0 = time.monotonic()
    GlyphLearner(RunStore(root, NETWORK), run_id=RUN).close()
    print(f"final resume {time.monotonic() - t0:.1f} s")
    with RunStore(root, NETWORK) as store:
        records = store.feedback_records(RUN)
        ids = [r["id"] for r in records]
        # Nothing acknowledged is missing, nothing is recorded twice.
        assert len(ids) == len(set(ids))
        recorded = {r["id"]: r["rating"] for r in records}
        missing = {g: r for g, r in acked.items() if recorded.get(g) != r}
        assert not missing, f"{len(missing)} acknowledged ratings missing"
        # Every recorded rating is in the current weights' lineage exactly once.
        meta = store.metadata(RUN)
        counts = collections.Counter(_lineage_ids(meta))
        assert counts == collections.Counter(ids)
        # Every listed version restores intact, bit-exactly what was handed to
        # save() under its number.
        versions = meta["versions"]
        assert versions == sorted(set(versions))
        t0 = time.monotonic()
        store.start_run(RUN)  # one Orbax manager for all the restores
        assert store.versions() == versions
        for v in versions:
            tree = store.restore(v)
            if v in handed_out:
                assert tree_digest(tree) == handed_out[v], f"version {v} differs"
        print(f"restored {len(versions)} versions in {time.monotonic() - t0:.1f} s")
