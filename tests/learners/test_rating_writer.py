"""The glyph learners' feedback path: one writer thread over a queue."""

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ol_jax.learners._glyph_common import RatingWriter


class _Recorder:
    def __init__(self, fail_on=None):
        self.seen, self.finals, self.fail_on = [], 0, fail_on
        self.threads = set()

    def __call__(self, items, *, final):
        self.threads.add(threading.current_thread().name)
        for it in items:
            if it["n"] == self.fail_on:
                raise ValueError(f"bad item {it['n']}")
            self.seen.append(it["n"])
        self.finals += final


@settings(max_examples=20, deadline=None)
@given(n_threads=st.integers(1, 4), per_thread=st.integers(0, 30))
def test_every_item_consumed_once_in_one_thread_then_final(n_threads, per_thread):
    rec = _Recorder()
    writer = RatingWriter(rec, owner="Probe")

    def produce(t):
        for j in range(per_thread):
            writer.put({"n": t * 1000 + j})

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.wait()
    assert sorted(rec.seen) == sorted(
        t * 1000 + j for t in range(n_threads) for j in range(per_thread)
    )
    # Each producer's items arrive in the order it put them.
    for t in range(n_threads):
        mine = [n for n in rec.seen if n // 1000 == t]
        assert mine == sorted(mine)
    assert rec.finals == 0
    writer.close()
    assert rec.finals == 1 and rec.threads <= {"Probe"}
    writer.close()  # idempotent
    assert rec.finals == 1
    with pytest.raises(RuntimeError, match="Probe is closed"):
        writer.put({"n": -1})


def test_failure_stops_consuming_and_is_raised():
    rec = _Recorder(fail_on=2)
    writer = RatingWriter(rec, owner="Probe")
    for n in range(2):
        writer.put({"n": n})
    writer.wait()
    writer.put({"n": 2})
    with pytest.raises(RuntimeError, match="the Probe writer failed") as info:
        writer.wait()
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(RuntimeError, match="writer failed"):
        writer.put({"n": 3})
    assert rec.seen == [0, 1]
    with pytest.raises(RuntimeError, match="writer failed"):
        writer.close()
    assert writer.closed
