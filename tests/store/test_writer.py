"""Tests for the background CheckpointWriter: back-pressure, errors, sharing."""

import threading

import numpy as np
import orbax.checkpoint as ocp
import pytest

from ol_jax.store import CheckpointWriteError, CheckpointWriter, RunStore


def _tree(i: int):
    return {"w": np.full((64, 64), i, np.float32), "step": np.int32(i)}


def _block(writer: CheckpointWriter) -> threading.Event:
    """Occupies the writer thread until the returned event is set."""
    started, release = threading.Event(), threading.Event()

    def hold():
        started.set()
        release.wait()

    writer.submit(hold)
    assert started.wait(10)
    return release


def test_writer_runs_jobs_in_order_and_keeps_errors():
    seen = []
    with CheckpointWriter(queue_size=2) as writer:
        jobs = [writer.submit(lambda i=i: seen.append(i)) for i in range(5)]
        bad = writer.submit(lambda: 1 / 0)
        after = writer.submit(lambda: seen.append("after"))
        writer.flush()
        assert seen == [0, 1, 2, 3, 4, "after"]
        assert all(j.done() and j.error is None for j in jobs)
        assert isinstance(bad.error, ZeroDivisionError) and after.error is None
    assert writer.closed
    with pytest.raises(RuntimeError, match=r"closed"):
        writer.submit(lambda: None)
    with pytest.raises(ValueError, match=r"queue_size must be >= 1, got 0"):
        CheckpointWriter(queue_size=0)


def test_full_queue_blocks_submitter():
    with CheckpointWriter(queue_size=1) as writer:
        release = _block(writer)
        writer.submit(lambda: None)  # fills the queue
        submitted = threading.Event()

        def producer():
            writer.submit(lambda: None)
            submitted.set()

        thread = threading.Thread(target=producer)
        thread.start()
        # The producer cannot finish while the queue is full.
        assert not submitted.wait(0.3)
        release.set()
        thread.join(10)
        assert submitted.is_set()


def test_save_blocks_when_queue_full_and_never_drops(tmp_path, make_network):
    root = make_network(tmp_path)
    writer = CheckpointWriter(queue_size=2)
    with RunStore(root, "net", writer=writer) as store:
        store.start_run()
        release = _block(writer)
        store.save(_tree(0))
        store.save(_tree(1))  # queue now full
        returned = threading.Event()
        thread = threading.Thread(target=lambda: (store.save(_tree(2)), returned.set()))
        thread.start()
        assert not returned.wait(0.3)  # back-pressure: save() waits for room
        release.set()
        thread.join(10)
        assert returned.is_set()
        # A fast burst: every version lands.
        for i in range(3, 30):
            store.save(_tree(i), metadata_entry={"rating": 5})
        assert store.versions() == list(range(30))
        assert len(store.metadata()["entries"]) == 30
        for v in (0, 2, 17, 29):
            np.testing.assert_array_equal(store.restore(v)["w"], _tree(v)["w"])
    assert not writer.closed  # a shared writer outlives the store
    writer.close()


@pytest.mark.parametrize("async_writes", [True, False])
def test_write_error_surfaces_in_caller(
    tmp_path, make_network, monkeypatch, async_writes
):
    root = make_network(tmp_path, async_writes=async_writes)
    real_save = ocp.CheckpointManager.save

    def failing_save(self, step, *args, **kwargs):
        if step == 1:
            raise OSError("disk full")
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", failing_save)
    with RunStore(root, "net") as store:
        store.start_run()
        store.save(_tree(0), metadata_entry={"rating": 4})
        with pytest.raises(CheckpointWriteError, match=r"\[1\].*disk full") as info:
            store.save(_tree(1))
            store.flush()
        assert isinstance(info.value.__cause__, OSError)
        # The error is raised once; the run continues from the last good version.
        assert store.save(_tree(2), metadata_entry={"rating": 6}) == 2
        assert store.versions() == [0, 2]
        entries = store.metadata()["entries"]
        assert [e["version"] for e in entries] == [0, 2]
        assert entries[1]["parent_version"] == 0
        assert store.feedback_quality() == 5.0


def test_error_stays_with_its_store(tmp_path, make_network, monkeypatch):
    root = make_network(tmp_path, "good")
    make_network(tmp_path, "bad")
    real_save = ocp.CheckpointManager.save

    def failing_save(self, step, *args, **kwargs):
        if "bad" in str(self.directory):
            raise OSError("broken disk")
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", failing_save)
    with CheckpointWriter(queue_size=4) as writer:
        good = RunStore(root, "good", writer=writer)
        bad = RunStore(root, "bad", writer=writer)
        good.start_run()
        bad.start_run()
        for i in range(3):
            good.save(_tree(i))
            bad.save(_tree(i))
        good.flush()
        assert good.versions() == [0, 1, 2]
        with pytest.raises(CheckpointWriteError, match=r"\[0, 1, 2\].*'bad'"):
            bad.flush()
        good.close()
        bad.close()


def test_many_networks_share_one_writer(tmp_path, make_network):
    ids = [f"net{k}" for k in range(4)]
    for network_id in ids:
        make_network(tmp_path, network_id, queue_size=1)
    with CheckpointWriter(queue_size=3) as writer:
        stores = [RunStore(tmp_path, n, writer=writer) for n in ids]
        for store in stores:
            store.start_run()
        for i in range(5):
            for k, store in enumerate(stores):
                store.save(_tree(100 * k + i))
        for k, store in enumerate(stores):
            assert store.versions() == list(range(5))
            assert store.restore()["step"] == 100 * k + 4
            store.close()
