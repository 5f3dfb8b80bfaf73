"""Damage on disk is reported, never loaded: checksums, missing metadata, debris."""

import os
import shutil

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ol_jax.store import CorruptVersionError, MissingMetadataError, RunStore


def _tree(seed: int):
    """Incompressible arrays, so the checkpoint's data files hold real bytes."""
    rng = np.random.default_rng(seed)
    return {
        "params": {
            "kernel": rng.standard_normal((32, 48)).astype(np.float32),
            "bias": rng.standard_normal(48).astype(np.float32),
        },
        "step": np.asarray(seed, np.int32),
        "counts": rng.integers(0, 2**31, size=64).astype(np.int64),
    }


def _data_files(version_dir: str) -> list[str]:
    """The files holding a checkpoint's array bytes (tensorstore's ``d/`` chunks)."""
    found = []
    for folder, _, files in os.walk(version_dir):
        if os.path.basename(folder) == "d":
            found.extend(os.path.join(folder, f) for f in files)
    return sorted(found)


def _bits(tree) -> list[bytes]:
    return [np.asarray(x).tobytes() for x in jax.tree.leaves(tree)]


def test_every_sampled_byte_flip_in_array_data_is_detected(net_root):
    """A flip either fails the restore, naming the version (and the array when
    the bytes decode), or lands in bytes no array is read from (the restore is
    bit-exact); it never loads as different weights. Sampled until 200 flips
    have landed in array data."""
    rng = np.random.default_rng(0)
    with RunStore(net_root, "net") as store:
        store.start_run("r")
        store.save(_tree(0))
        store.flush()
        expected = _bits(store.restore(0))
        files = _data_files(os.path.join(store.run_dir, "weights_v0"))
        sizes = np.array([os.path.getsize(f) for f in files])
        detected, named, tries = 0, 0, 0
        while detected < 200:
            tries += 1
            assert tries < 2000, f"only {detected} of {tries} flips hit array data"
            k = rng.choice(len(files), p=sizes / sizes.sum())
            pos = int(rng.integers(sizes[k]))
            with open(files[k], "r+b") as f:
                f.seek(pos)
                original = f.read(1)
                f.seek(pos)
                f.write(bytes([original[0] ^ int(rng.integers(1, 256))]))
            try:
                restored = store.restore(0)
            except CorruptVersionError as exc:
                assert exc.version == 0 and "version 0 " in str(exc)
                if exc.array is not None:
                    assert repr(exc.array) in str(exc)
                    named += 1
                detected += 1
            else:
                # Bytes outside any array's data (e.g. a superseded index node).
                assert _bits(restored) == expected, f"flip at {files[k]}:{pos} loaded"
            finally:
                with open(files[k], "r+b") as f:
                    f.seek(pos)
                    f.write(original)
        # Most flips in raw chunk bytes decode to wrong numbers: the checksum
        # is what catches them, and it names the array.
        assert named > 0
        assert _bits(store.restore(0)) == expected


def _corrupt_a_value(version_dir: str) -> None:
    """Overwrites a data file's bytes so the array decodes wrongly or not at all."""
    path = max(_data_files(version_dir), key=os.path.getsize)
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        f.write(b"\xff" * 16)


def test_resume_falls_back_to_the_newest_good_version_with_a_warning(net_root):
    with RunStore(net_root, "net") as store:
        store.start_run("r")
        for i in range(3):
            store.save(_tree(i), metadata_entry={"rating": 5})
        run_dir = store.run_dir
    _corrupt_a_value(os.path.join(run_dir, "weights_v2"))
    with RunStore(net_root, "net") as store:
        store.start_run("r")
        version, tree = store.restore_newest_good()
        assert version == 1
        assert tree["params"]["bias"].tobytes() == _tree(1)["params"]["bias"].tobytes()
        (warning,) = store.metadata()["warnings"]
        assert "resumed from version 1" in warning["message"]
        assert "[2]" in warning["message"]
        # Later versions descend from the good one, and take a fresh number.
        v = store.save(_tree(7))
        assert v == 3
        assert store.metadata()["entries"][-1]["parent_version"] == 1


def test_versions_without_metadata_are_an_error_naming_the_folder(net_root):
    with RunStore(net_root, "net") as store:
        store.start_run("r")
        store.save(_tree(0))
        run_dir = store.run_dir
    os.remove(os.path.join(run_dir, "run_metadata.json"))
    with RunStore(net_root, "net") as store:
        with pytest.raises(MissingMetadataError, match=rf"{run_dir} holds weights_v0"):
            store.start_run("r")
        # Nothing was created or changed by the refusal.
        assert not os.path.exists(os.path.join(run_dir, "run_metadata.json"))


def test_journal_without_metadata_is_an_error_too(net_root):
    with RunStore(net_root, "net") as store:
        store.start_run("r")
        store.journal.append({"id": "g0", "rating": 3})
        run_dir = store.run_dir
    os.remove(os.path.join(run_dir, "run_metadata.json"))
    with RunStore(net_root, "net") as store:
        with pytest.raises(MissingMetadataError, match=r"feedback\.journal"):
            store.start_run("r")


def test_temp_files_are_removed_and_numbers_continue_at_open(net_root):
    with RunStore(net_root, "net") as store:
        store.start_run("r")
        store.save(_tree(0))
        store.save(_tree(1))
        run_dir = store.run_dir
    for name in ("run_metadata.json.tmp-12-34", "version_counter.json.tmp-5-6"):
        open(os.path.join(run_dir, name), "w").write("{partial")
    shutil.copytree(
        os.path.join(run_dir, "weights_v1"),
        os.path.join(run_dir, "weights_v2.orbax-checkpoint-tmp-99"),
    )
    with RunStore(net_root, "net") as store:
        store.start_run("r")
        assert not [n for n in os.listdir(run_dir) if "tmp" in n]
        # A clean close gave back the unused reserved numbers: no gap.
        assert store.save(_tree(2)) == 2


@settings(max_examples=10, deadline=None)
@given(steps=st.lists(st.integers(0, 5), min_size=1, max_size=6))
def test_each_version_keeps_the_journal_position_it_was_saved_with(
    tmp_path_factory, make_network, steps
):
    root = make_network(tmp_path_factory.mktemp("networks"))
    positions, position = {}, 0
    with RunStore(root, "net") as store:
        store.start_run("r")
        for step in steps:
            position += step
            positions[store.save(_tree(0), journal_position=position)] = position
        # A rollback reflects everything seen so far, not its source's position.
        first = min(positions)
        positions[store.rollback(first)] = position
        for version, expected in positions.items():
            assert store.journal_position(version) == expected
        assert store.journal_position() == position
    with RunStore(root, "net") as store:
        store.start_run("r")
        assert {v: store.journal_position(v) for v in positions} == positions
        with pytest.raises(ValueError, match="journal_position must be an int >= 0"):
            store.save(_tree(0), journal_position=-1)
