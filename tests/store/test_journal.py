"""The feedback journal: framing, torn tails, group commit, back-pressure, failures."""

import errno
import os
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ol_jax.store import FeedbackJournal, JournalWriteError, _journal

_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
_arrays = hnp.arrays(
    st.sampled_from([np.float32, np.int32, np.uint8, np.float64]),
    hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
)
_records = st.dictionaries(
    st.text(min_size=1, max_size=6).filter(lambda k: k != "seq"),
    st.one_of(_json_scalars, _arrays, st.lists(_json_scalars, max_size=3)),
    max_size=5,
)


def _same(a, b):
    if isinstance(a, np.ndarray):
        return (
            isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.tobytes() == b.tobytes()
        )
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b and type(a) is type(b)


@settings(max_examples=60, deadline=None)
@given(record=_records)
def test_payload_round_trip_is_exact(record):
    assert _same(_journal.decode_payload(_journal.encode_payload(record)), record)


@settings(max_examples=40, deadline=None)
@given(
    records=st.lists(_records, min_size=1, max_size=5),
    cut=st.floats(0, 1, exclude_max=True),
)
def test_a_torn_tail_drops_only_the_torn_record(tmp_path_factory, records, cut):
    path = str(tmp_path_factory.mktemp("j") / "feedback.journal")
    with FeedbackJournal(path) as journal:
        for r in records:
            journal.append(r)
    data = open(path, "rb").read()
    # Where each record ends; cut the file anywhere inside the last record.
    ends = []
    pos = 0
    for _ in records:
        (length,) = np.frombuffer(data[pos : pos + 4], np.uint32)
        pos += 16 + int(length)
        ends.append(pos)
    start = ends[-2] if len(ends) > 1 else 0
    size = start + int(cut * (ends[-1] - start))
    with open(path, "r+b") as f:
        f.truncate(size)
    assert len(FeedbackJournal.read(path)) == len(records) - 1
    with FeedbackJournal(path) as journal:
        # Opening cut the torn bytes; numbering continues after the intact ones.
        assert os.path.getsize(path) == start
        assert journal.append({"after": 1}) == len(records) - 1
    got = FeedbackJournal.read(path)
    assert [r["seq"] for r in got] == list(range(len(records)))
    assert all(
        _same({k: v for k, v in g.items() if k != "seq"}, r)
        for g, r in zip(got[:-1], records[:-1], strict=True)
    )


def test_a_flipped_byte_in_a_record_is_detected(tmp_path):
    path = str(tmp_path / "feedback.journal")
    with FeedbackJournal(path) as journal:
        for i in range(3):
            journal.append({"id": f"g{i}", "rating": i + 1})
    data = bytearray(open(path, "rb").read())
    data[-3] ^= 0x01  # inside the last record's payload
    open(path, "wb").write(bytes(data))
    assert [r["id"] for r in FeedbackJournal.read(path)] == ["g0", "g1"]


def test_concurrent_appends_share_syncs_and_arrive_in_order(tmp_path):
    path = str(tmp_path / "feedback.journal")
    delivered = []
    with FeedbackJournal(path) as journal:
        journal.set_consumer(lambda batch: delivered.extend(batch))

        def rate(t):
            for i in range(40):
                journal.append({"id": f"t{t}-{i}", "rating": 1 + i % 10})

        threads = [threading.Thread(target=rate, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        syncs = journal.syncs
    records = FeedbackJournal.read(path)
    assert [r["seq"] for r in records] == list(range(320))
    # Group commit: callers waiting on one fdatasync are committed by the next.
    assert syncs < 320
    # The consumer sees exactly the journal, in journal order.
    assert [seq for seq, _ in delivered] == list(range(320))
    assert [item["id"] for _, item in delivered] == [r["id"] for r in records]


def test_async_mode_bounds_what_waits_and_flushes(tmp_path):
    path = str(tmp_path / "feedback.journal")
    gate = threading.Event()
    with FeedbackJournal(path, durability="async", max_pending=4) as journal:
        # A consumer that blocks holds the commit, so the queue fills up.
        journal.set_consumer(lambda batch: gate.wait())
        done = []

        def produce():
            for i in range(12):
                journal.append({"i": i})
                done.append(i)

        t = threading.Thread(target=produce)
        t.start()
        t.join(0.5)
        # One batch is being committed; at most max_pending more wait.
        assert t.is_alive() and len(done) <= 4 + 4
        gate.set()
        t.join()
        journal.flush()
    assert [r["i"] for r in FeedbackJournal.read(path)] == list(range(12))


def test_a_failed_write_raises_naming_the_path_and_keeps_nothing(tmp_path, monkeypatch):
    path = str(tmp_path / "feedback.journal")
    real_write = _journal._write_all
    with FeedbackJournal(path) as journal:
        journal.append({"id": "kept", "rating": 3})

        def full_disk(fd, data):
            # Half the batch reaches the file, then the disk is full.
            real_write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(_journal, "_write_all", full_disk)
        with pytest.raises(
            JournalWriteError, match=r"feedback\.journal failed.*space"
        ) as info:
            journal.append({"id": "lost", "rating": 4})
        assert info.value.path == path
        monkeypatch.setattr(_journal, "_write_all", real_write)
        # Space is back: the next record is kept, right after the intact ones.
        journal.append({"id": "later", "rating": 5})
        assert [r["id"] for r in journal.records()] == ["kept", "later"]
    assert [r["id"] for r in FeedbackJournal.read(path)] == ["kept", "later"]


def test_bad_arguments_are_named(tmp_path):
    path = str(tmp_path / "feedback.journal")
    with pytest.raises(
        ValueError, match=r"durability must be 'sync' or 'async', got 'x'"
    ):
        FeedbackJournal(path, durability="x")
    with pytest.raises(ValueError, match=r"max_pending must be >= 1, got 0"):
        FeedbackJournal(path, max_pending=0)
    with FeedbackJournal(path) as journal:
        with pytest.raises(ValueError, match=r"'seq' is reserved"):
            journal.append({"seq": 1})
        with pytest.raises(ValueError, match=r"record\.x must be JSON-like"):
            journal.append({"x": object()})
    with pytest.raises(RuntimeError, match=r"is closed"):
        journal.append({"a": 1})


@settings(max_examples=20, deadline=None)
@given(groups=st.lists(st.integers(0, 6), min_size=1, max_size=5))
def test_append_many_commits_each_group_once_in_order(tmp_path_factory, groups):
    path = str(tmp_path_factory.mktemp("j") / "feedback.journal")
    delivered = []
    with FeedbackJournal(path, max_pending=4) as journal:
        journal.set_consumer(lambda batch: delivered.extend(s for s, _ in batch))
        expected = 0
        for n in groups:
            seqs = journal.append_many([{"n": expected + i} for i in range(n)])
            assert seqs == list(range(expected, expected + n))
            expected += n
        assert journal.syncs == sum(1 for n in groups if n)
    assert [r["n"] for r in FeedbackJournal.read(path)] == list(range(expected))
    assert delivered == list(range(expected))
