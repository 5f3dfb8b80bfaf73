"""The run metadata's record file: encoding, torn tails, appends, compaction."""

import errno
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ol_jax.store import (
    CheckpointWriteError,
    CorruptMetadataError,
    MetadataLog,
    RunStore,
    _metadata_log,
)

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_records = st.lists(
    st.dictionaries(st.text(max_size=8), _json_values, max_size=5), max_size=8
)


@settings(max_examples=200, deadline=None)
@given(records=_records)
def test_records_round_trip(records):
    data = b"".join(_metadata_log.encode_record(r) for r in records)
    assert data.count(b"\n") == len(records)  # one line each, whatever the text
    decoded, good_end = _metadata_log.decode_records(data)
    assert decoded == records and good_end == len(data)


@settings(max_examples=200, deadline=None)
@given(records=_records.filter(bool), data=st.data())
def test_a_torn_tail_is_dropped_never_misread(records, data):
    lines = [_metadata_log.encode_record(r) for r in records]
    whole = b"".join(lines)
    cut = data.draw(st.integers(0, len(whole)), label="cut")
    junk = data.draw(st.sampled_from([b"", b"\0" * 7, b"00000000 {", b"zz\n"]))
    decoded, good_end = _metadata_log.decode_records(whole[:cut] + junk)
    # Exactly the records whose whole line (newline included) survived the cut.
    ends = np.cumsum([len(line) for line in lines])
    intact = int(np.searchsorted(ends, cut, side="right"))
    assert decoded == records[:intact]
    assert good_end == (ends[intact - 1] if intact else 0)


@settings(max_examples=100, deadline=None)
@given(records=_records.filter(bool), data=st.data())
def test_a_flipped_byte_in_the_last_record_drops_it(records, data):
    lines = [_metadata_log.encode_record(r) for r in records]
    last = bytearray(lines[-1])
    at = data.draw(st.integers(0, len(last) - 2), label="at")  # not the newline
    last[at] ^= data.draw(st.integers(1, 255), label="flip")
    decoded, _ = _metadata_log.decode_records(b"".join(lines[:-1]) + bytes(last))
    # Either detected (dropped), or the flip produced another valid line: it
    # cannot, since the crc covers every JSON byte and the crc digits.
    assert decoded == records[:-1]


def test_damage_before_the_last_record_is_an_error_naming_the_line():
    lines = [_metadata_log.encode_record({"entry": {"version": v}}) for v in range(3)]
    damaged = lines[0] + lines[1].replace(b"version", b"versiom") + lines[2]
    with pytest.raises(CorruptMetadataError, match=r"f\.records is damaged at line 2"):
        _metadata_log.decode_records(damaged, path="f.records")


def test_encode_rejects_non_json():
    with pytest.raises(ValueError):
        _metadata_log.encode_record({"x": float("nan")})
    with pytest.raises(ValueError, match="must be a mapping"):
        _metadata_log.encode_record([1])


def _state():
    return {"versions": [], "current_version": None, "updated_at": None, "entries": []}


@settings(max_examples=100, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["save", "warn", "state"]), st.integers(0, 3), st.booleans()
        ),
        max_size=30,
    )
)
def test_a_snapshot_rebuilds_the_state(ops):
    """Applying the records, or the snapshot of their result, gives one state;
    versions stay sorted and unique."""
    records, version = [], 0
    for kind, drop, ordered in ops:
        if kind == "save":
            records.append(
                {
                    "entry": {"version": version},
                    "current_version": version,
                    "add": [version],
                    "drop": list(range(max(version - drop, 0))),
                    "updated_at": str(version),
                }
            )
            version += 1
        elif kind == "warn":
            records.append({"warning": {"message": str(version)}})
        else:
            listed = list(range(version))[:: -1 if not ordered else 1]
            records.append({"versions": listed, "current_version": None})
    state = _state()
    _metadata_log.apply_records(state, records)
    assert state["versions"] == sorted(set(state["versions"]))
    rebuilt = _state()
    _metadata_log.apply_records(rebuilt, _metadata_log.snapshot_records(state))
    assert rebuilt == state


def test_open_truncates_a_torn_tail_so_appends_follow_intact_records(tmp_path):
    path = str(tmp_path / "run_metadata.records")
    MetadataLog.create(path, [{"entry": {"version": 0}}]).close()
    with open(path, "ab") as f:
        f.write(b'1234abcd {"entry":')  # a killed append
    log, records = MetadataLog.open(path)
    assert records == [{"entry": {"version": 0}}]
    log.append([{"entry": {"version": 1}}])
    log.close()
    assert [r["entry"]["version"] for r in MetadataLog.read(path)] == [0, 1]


def test_a_failed_append_keeps_nothing_and_the_next_one_works(tmp_path, monkeypatch):
    path = str(tmp_path / "run_metadata.records")
    log = MetadataLog.create(path, [{"entry": {"version": 0}}])
    size = os.path.getsize(path)

    def half_then_full(fd, data):
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_metadata_log, "_write_all", half_then_full)
    with pytest.raises(OSError, match="No space"):
        log.append([{"entry": {"version": 1}}])
    assert os.path.getsize(path) == size
    monkeypatch.undo()
    log.append([{"entry": {"version": 2}}])
    log.close()
    assert [r["entry"]["version"] for r in MetadataLog.read(path)] == [0, 2]


# ------------------------------------------------------------------ in the store


def _tree(i):
    return {"w": np.full(4, i, np.float32)}


def _records_path(run_dir):
    return os.path.join(run_dir, "run_metadata.records")


def test_a_save_appends_one_record_of_constant_size(net_root):
    with RunStore(net_root, "net") as store:
        store.start_run("r")
        sizes = []
        for i in range(40):
            before = os.path.getsize(_records_path(store.run_dir))
            store.save(_tree(i), metadata_entry={"rating": 5, "style_z": [0.5] * 8})
            store.flush()
            sizes.append(os.path.getsize(_records_path(store.run_dir)) - before)
        header = os.path.getsize(os.path.join(store.run_dir, "run_metadata.json"))
        created = os.stat(os.path.join(store.run_dir, "run_metadata.json")).st_mtime_ns
        store.save(_tree(99))
        store.flush()
        # The header is not rewritten by saves.
        path = os.path.join(store.run_dir, "run_metadata.json")
        assert os.stat(path).st_mtime_ns == created
        assert os.path.getsize(path) == header
    # Growing numbers add a digit at most; the history is never rewritten.
    assert max(sizes) - min(sizes) <= 8, sizes


def test_a_failed_metadata_append_is_a_write_error_and_the_run_goes_on(
    net_root, monkeypatch
):
    with RunStore(net_root, "net") as store:
        store.start_run("r")
        store.save(_tree(0))
        store.flush()
        before = store.metadata()

        def full(fd, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(_metadata_log, "_write_all", full)
        store.save(_tree(1))
        with pytest.raises(CheckpointWriteError, match="No space left"):
            store.flush()
        # Neither listed nor on disk.
        assert store.metadata() == before
        assert not os.path.exists(os.path.join(store.run_dir, "weights_v1"))
        monkeypatch.undo()
        assert store.save(_tree(2)) == 2
        assert store.versions() == [0, 2]
    with RunStore(net_root, "net") as store:
        store.start_run("r")
        assert store.versions() == [0, 2]


def test_a_format_1_run_folder_is_migrated_when_opened(net_root):
    with RunStore(net_root, "net") as store:
        store.start_run("r")
        for i in range(3):
            store.save(_tree(i), metadata_entry={"rating": i})
        store.rollback(0)
        expected = store.metadata()
        run_dir = store.run_dir
    # What the format-1 store left: the whole metadata in run_metadata.json.
    legacy = dict(expected, format_version=1)
    with open(os.path.join(run_dir, "run_metadata.json"), "w") as f:
        json.dump(legacy, f)
    os.remove(_records_path(run_dir))
    with RunStore(net_root, "net") as store:
        assert store.metadata("r") == expected  # read without migrating
        store.start_run("r")
        assert store.metadata() == expected
        assert store.feedback_quality(3) == pytest.approx(0.0)
        assert store.save(_tree(9)) == 4
    with open(os.path.join(run_dir, "run_metadata.json")) as f:
        header = json.load(f)
    assert header["format_version"] == 2 and "entries" not in header
    assert len(MetadataLog.read(_records_path(run_dir))) == 1 + 5


def test_a_migration_killed_before_the_header_is_redone(net_root):
    with RunStore(net_root, "net") as store:
        store.start_run("r")
        store.save(_tree(0))
        expected = store.metadata()
        run_dir = store.run_dir
    with open(os.path.join(run_dir, "run_metadata.json"), "w") as f:
        json.dump(dict(expected, format_version=1), f)
    # A record file from the killed migration, already holding a stray record.
    with open(_records_path(run_dir), "ab") as f:
        f.write(_metadata_log.encode_record({"entry": {"version": 7}}))
    with RunStore(net_root, "net") as store:
        store.start_run("r")
        assert store.metadata() == expected


def test_a_missing_record_file_is_an_error_naming_the_folder(net_root):
    with RunStore(net_root, "net") as store:
        store.start_run("r")
        store.save(_tree(0))
        run_dir = store.run_dir
    os.remove(_records_path(run_dir))
    with RunStore(net_root, "net") as store:
        with pytest.raises(Exception, match=rf"{run_dir} holds run_metadata\.json"):
            store.start_run("r")


def test_a_sparse_record_file_is_compacted_at_open(net_root):
    with RunStore(net_root, "net") as store:
        store.start_run("r")
        store.save(_tree(0))
        expected = store.metadata()
        run_dir = store.run_dir
    log, _ = MetadataLog.open(_records_path(run_dir))
    # Records that change nothing (as repeated repairs would leave).
    log.append([{"versions": [0]}] * 200)
    log.close()
    with RunStore(net_root, "net") as store:
        store.start_run("r")
        assert store.metadata() == expected
    assert len(MetadataLog.read(_records_path(run_dir))) == 2


def test_a_temporary_record_file_is_removed_at_open(net_root):
    with RunStore(net_root, "net") as store:
        store.start_run("r")
        run_dir = store.run_dir
    open(_records_path(run_dir) + ".tmp-1-2", "w").write("partial")
    with RunStore(net_root, "net") as store:
        store.start_run("r")
        assert not [n for n in os.listdir(run_dir) if ".tmp-" in n]
