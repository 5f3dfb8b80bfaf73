"""The glyph learner's feedback durability: a full disk is ridden out, damage is
reported, and both durability modes record every rating."""

import errno
import os
import subprocess

import pytest
import yaml

from ol_jax.learners import GlyphLearner
from ol_jax.store import (
    CheckpointWriteError,
    JournalWriteError,
    MissingMetadataError,
    RunStore,
)

TINY = {"style_z_dim": 8, "image_size": 8, "hidden": [16, 16, 8]}


def _network(root, name="g", **store):
    os.makedirs(os.path.join(root, name), exist_ok=True)
    config = {
        "network_id": name,
        "model": TINY,
        "online_learning": {"min_ratings_before_update": 1},
        "store": store,
    }
    with open(os.path.join(root, name, "config.yaml"), "w") as f:
        yaml.safe_dump(config, f)
    return lambda **kw: GlyphLearner(RunStore(root, name), **kw)


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (needs the right to mount; skipped otherwise)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(folder) -> str:
    """Writes a file until the disk is full; returns its path."""
    path = os.path.join(folder, "filler")
    # Unbuffered, so closing the file has nothing left to flush onto a full disk.
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return path


def test_full_disk_is_ridden_out_and_nothing_acknowledged_is_lost(small_disk):
    build = _network(small_disk)
    acked = {}
    with build(run_id="r") as learner:
        run_dir = learner.store.run_dir
        for g in learner.generate(3):
            learner.feedback(g.id, 7)
            acked[g.id] = 7
        learner.flush()
        before = learner.store.versions()
        assert len(before) == 4

        filler = _fill(small_disk)
        # Generation needs no disk.
        glyphs = learner.generate(16)
        # A rating that cannot be kept is refused, naming the file (the first
        # few may still fit in the journal file's last page).
        with pytest.raises(JournalWriteError, match=r"feedback\.journal failed"):
            for g in glyphs[:12]:
                learner.feedback(g.id, 9)
                acked[g.id] = 9
        glyphs = glyphs[12:]

        # Room for journal records but not for a checkpoint.
        os.truncate(filler, os.path.getsize(filler) - 8192)
        for g in glyphs[1:3]:
            learner.feedback(g.id, 4)
            acked[g.id] = 4
        learner.wait()
        with pytest.raises(CheckpointWriteError, match=r"weights_v\d+ failed") as info:
            learner.flush()
        assert learner.write_error is not None
        assert "No space left" in repr(info.value.__cause__) + str(info.value)

        os.remove(filler)
        # Space is back: no restart needed.
        learner.feedback(glyphs[3].id, 2)
        acked[glyphs[3].id] = 2
        learner.flush()
        assert learner.write_error is None
        # The failed versions left nothing behind.
        assert not [n for n in os.listdir(run_dir) if "tmp" in n]
        after = learner.store.versions()
        assert set(before) < set(after)
        for v in after:
            learner.store.restore(v)
        step = int(learner.state.step)
    with build(run_id="r") as resumed:
        records = resumed.store.feedback_records()
        assert {r["id"]: r["rating"] for r in records} == acked
        # Everything acknowledged was applied once: nothing is replayed.
        assert int(resumed.state.step) == step
        assert not [n for n in os.listdir(run_dir) if "tmp" in n]


def test_a_run_folder_without_metadata_is_refused(tmp_path):
    build = _network(tmp_path)
    with build(run_id="r") as learner:
        g = learner.generate(1)[0]
        learner.feedback(g.id, 5)
        run_dir = learner.store.run_dir
    os.remove(os.path.join(run_dir, "run_metadata.json"))
    with pytest.raises(MissingMetadataError, match=run_dir):
        build(run_id="r")


@pytest.mark.parametrize("durability", ["sync", "async"])
def test_both_durability_modes_record_and_apply_every_rating(tmp_path, durability):
    build = _network(tmp_path, durability=durability)
    with build(run_id="r") as learner:
        glyphs = learner.generate(6)
        for i, g in enumerate(glyphs):
            learner.feedback(g.id, 1 + i)
        # wait() covers ratings still on their way through the journal.
        learner.wait()
        assert int(learner.state.step) == 6
        learner.flush()
        assert learner.store.journal.durability == durability
        records = learner.store.feedback_records()
        assert [(r["id"], r["rating"]) for r in records] == [
            (g.id, 1 + i) for i, g in enumerate(glyphs)
        ]
        assert int(learner.state.step) == 6
