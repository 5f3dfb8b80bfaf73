"""Tests for RunStore: versions, round trips, rollback, runs, retention, metadata."""

import os
import shutil
import threading

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ol_jax.store import (
    BaseNetworkConfig,
    ConfigError,
    MetadataLog,
    NetworkConfig,
    RunStore,
    new_run_id,
)


def _tree(offset: float = 0.0):
    """A nested tree with f32, bf16, int32 leaves and a scalar."""
    return {
        "decoder": {
            "3": {
                "kernel": jnp.arange(12, dtype=jnp.float32).reshape(3, 4) + offset,
                "bias": jnp.full((4,), offset, jnp.bfloat16),
            },
            "4": {"kernel": np.arange(8, dtype=np.int32).reshape(2, 4) + int(offset)},
        },
        "style_z": jnp.float32(offset),
    }


def _files(run_dir):
    return sorted(n for n in os.listdir(run_dir) if n.startswith("weights_v"))


def _metadata_file(store):
    """The open run's metadata as another process reads it from the run folder."""
    root = os.path.dirname(store.network_dir)
    with RunStore(root, store.network_id, config=store.config) as reader:
        return reader.metadata(store.run_id)


def test_save_restore_round_trip(net_root, assert_tree_bit_equal):
    tree = _tree(1.5)
    with RunStore(net_root, "net") as store:
        store.start_run()
        assert store.save(tree, metadata_entry={"rating": 7}) == 0
        restored = store.restore(like=tree)
        assert_tree_bit_equal(restored, tree)
        # Leaf types follow `like`: jax arrays come back as jax arrays.
        assert isinstance(restored["decoder"]["3"]["bias"], jax.Array)
        assert restored["decoder"]["3"]["bias"].dtype == jnp.bfloat16
        assert isinstance(restored["decoder"]["4"]["kernel"], np.ndarray)
        # Without `like`, numpy arrays with the saved dtypes.
        plain = store.restore()
        assert isinstance(plain["decoder"]["3"]["kernel"], np.ndarray)
        assert_tree_bit_equal(plain, jax.device_get(tree))
        assert _files(store.run_dir) == ["weights_v0"]


_DTYPES = st.sampled_from(
    [np.float32, ml_dtypes.bfloat16, np.int32, np.uint8, np.bool_]
)


@st.composite
def _array_trees(draw):
    def array():
        dtype = np.dtype(draw(_DTYPES))
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, max_side=5))
        # Any bit pattern: NaN payloads, -0.0, infinities, subnormals.
        raw = draw(hnp.arrays(np.uint8, (int(np.prod(shape)) * dtype.itemsize,)))
        if dtype == np.bool_:
            raw = raw % 2
        return raw.view(dtype).reshape(shape)

    return {"a": array(), "nested": {"b": array(), "c": [array(), array()]}}


@settings(max_examples=8)
@given(tree=_array_trees())
def test_round_trip_is_bit_exact_and_input_not_mutated(
    tmp_path_factory, make_network, assert_tree_bit_equal, tree
):
    root = make_network(tmp_path_factory.mktemp("networks"), async_writes=False)
    before = jax.tree.map(np.copy, tree)
    with RunStore(root, "net") as store:
        store.start_run()
        store.save(tree)
        assert_tree_bit_equal(tree, before)
        assert_tree_bit_equal(store.restore(like=tree), before)


def test_snapshot_is_taken_in_caller(net_root, assert_tree_bit_equal):
    host = np.arange(1000, dtype=np.float32)
    dev = jnp.arange(1000, dtype=jnp.float32)
    donate = jax.jit(lambda x: x * 0.0 - 1.0, donate_argnums=0)
    with RunStore(net_root, "net") as store:
        store.start_run()
        store.save({"h": host, "d": dev})
        host[:] = -7.0  # mutated right after save() returns
        dev = donate(dev)  # and the device buffer donated
        assert_tree_bit_equal(
            store.restore(),
            {
                "d": np.arange(1000, dtype=np.float32),
                "h": np.arange(1000, dtype=np.float32),
            },
        )


def test_versions_numbering_and_explicit_version(net_root):
    with RunStore(net_root, "net") as store:
        assert store.runs() == []
        store.start_run()
        assert store.latest_version() is None
        assert [store.save(_tree(i)) for i in range(3)] == [0, 1, 2]
        assert store.save(_tree(10), version=10) == 10
        assert store.save(_tree(11)) == 11
        with pytest.raises(ValueError, match=r"version must be >= 12 .* got 5"):
            store.save(_tree(0), version=5)
        assert store.versions() == [0, 1, 2, 10, 11]
        assert store.latest_version() == 11
        assert _files(store.run_dir) == [f"weights_v{v}" for v in (0, 1, 10, 11, 2)]
        with pytest.raises(ValueError, match=r"no version 7; available: \[0, 1, 2, 10"):
            store.restore(7)


def test_metadata_entries(net_root):
    with RunStore(net_root, "net") as store:
        run_id = store.start_run()
        store.save(
            _tree(),
            metadata_entry={
                "rating": 8,
                "loss": jnp.float32(0.25),
                "grad_norm": np.float32(np.nan),
                "style_z": jnp.arange(3, dtype=jnp.bfloat16),
                "ratings": [1, 2],
            },
        )
        store.flush()
        meta = _metadata_file(store)
        assert meta["run_id"] == run_id and meta["network_id"] == "net"
        assert meta["created_at"].endswith("+00:00")
        assert meta["started_from"] is None
        assert meta["versions"] == [0] and meta["current_version"] == 0
        (entry,) = meta["entries"]
        assert entry["version"] == 0 and entry["parent_version"] is None
        assert entry["event"] == "save" and "timestamp" in entry
        assert entry["loss"] == 0.25 and entry["grad_norm"] == "NaN"
        assert entry["style_z"] == [0.0, 1.0, 2.0]
        assert store.metadata() == meta
        assert store.feedback_quality(0) == pytest.approx((8 + 1 + 2) / 3)
        with pytest.raises(ValueError, match=r"key 'version' is reserved"):
            store.save(_tree(), metadata_entry={"version": 3})
        with pytest.raises(ValueError, match=r"metadata_entry\.obj must be JSON-like"):
            store.save(_tree(), metadata_entry={"obj": object()})
        # Rejected saves used no version number.
        assert store.save(_tree()) == 1


def test_rollback(net_root, assert_tree_bit_equal):
    with RunStore(net_root, "net") as store:
        store.start_run()
        for i, rating in enumerate([6, 8, 2, 1]):
            store.save(_tree(i), metadata_entry={"rating": rating})
        assert store.feedback_quality() == pytest.approx(17 / 4)
        new = store.rollback(1, metadata_entry={"reason": "ratings dropped"})
        assert new == 4
        assert_tree_bit_equal(store.restore(like=_tree()), _tree(1))
        assert store.latest_version() == 4
        # The rollback version inherits the quality of the version it restored.
        assert store.feedback_quality(4) == store.feedback_quality(1) == 7.0
        assert store.save(_tree(9), metadata_entry={"rating": 10}) == 5
        assert store.feedback_quality(5) == pytest.approx((6 + 8 + 10) / 3)
        meta = store.metadata()
        rollback = meta["entries"][4]
        assert rollback["event"] == "rollback" and rollback["rolled_back_to"] == 1
        assert (
            rollback["parent_version"] == 1 and rollback["reason"] == "ratings dropped"
        )
        assert meta["entries"][5]["parent_version"] == 4
        with pytest.raises(ValueError, match=r"cannot roll back .* to version 17"):
            store.rollback(17)


def test_resume_run(net_root, assert_tree_bit_equal):
    with RunStore(net_root, "net") as store:
        run_id = store.start_run()
        store.save(_tree(0), metadata_entry={"rating": 3})
        store.save(_tree(1), metadata_entry={"rating": 5})
    with RunStore(net_root, "net") as store:
        assert store.runs() == [run_id]
        assert store.start_run(run_id) == run_id
        assert store.versions() == [0, 1]
        assert_tree_bit_equal(store.restore(like=_tree()), _tree(1))
        assert store.save(_tree(2), metadata_entry={"rating": 7}) == 2
        meta = store.metadata()
        assert [e["version"] for e in meta["entries"]] == [0, 1, 2]
        assert meta["entries"][2]["parent_version"] == 1
        assert store.feedback_quality() == 5.0


def test_new_run_from_earlier_version(net_root, assert_tree_bit_equal):
    with RunStore(net_root, "net") as store:
        first = store.start_run()
        store.save(_tree(0), metadata_entry={"rating": 8})
        store.save(_tree(1), metadata_entry={"rating": 6})
        store.save(_tree(2), metadata_entry={"rating": 1})  # a poor version
        second = store.start_run(from_version=(first, 1))
        assert second != first and store.runs() == sorted([first, second])
        meta = store.metadata()
        assert meta["started_from"] == {
            "run_id": first,
            "version": 1,
            "feedback_quality": 7.0,
        }
        assert store.versions() == [0]
        assert_tree_bit_equal(store.restore(like=_tree()), _tree(1))
        assert meta["entries"][0]["event"] == "start_from"
        assert meta["entries"][0]["source_version"] == 1
        # Reading another run, and starting from its latest version.
        assert_tree_bit_equal(store.restore(2, like=_tree(), run_id=first), _tree(2))
        third = store.start_run(from_version=(first, None))
        assert store.metadata()["started_from"]["version"] == 2
        assert store.metadata()["started_from"]["feedback_quality"] == 5.0
        assert_tree_bit_equal(store.restore(like=_tree()), _tree(2))
        with pytest.raises(ValueError, match=r"has no version 9"):
            store.start_run(from_version=(first, 9))
        with pytest.raises(ValueError, match=r"only for new runs"):
            store.start_run(third, from_version=(first, 0))
        with pytest.raises(ValueError, match=r"has no run_metadata\.json"):
            store.start_run(from_version=("no-such-run", 0))


def test_retention(make_network, tmp_path, assert_tree_bit_equal):
    root = make_network(tmp_path, max_to_keep=2)
    with RunStore(root, "net") as store:
        store.start_run()
        for i in range(5):
            store.save(_tree(i), metadata_entry={"rating": i + 1})
        assert store.versions() == [3, 4]
        assert _files(store.run_dir) == ["weights_v3", "weights_v4"]
        meta = store.metadata()
        assert meta["versions"] == [3, 4]
        # History outlives the weights.
        assert [e["version"] for e in meta["entries"]] == [0, 1, 2, 3, 4]
        assert store.feedback_quality(1) == 1.5
        assert_tree_bit_equal(store.restore(3, like=_tree()), _tree(3))


def test_concurrent_saves_from_threads(make_network, tmp_path):
    root = make_network(tmp_path, queue_size=2)
    with RunStore(root, "net") as store:
        store.start_run()
        got = []
        lock = threading.Lock()

        def worker(k):
            for j in range(4):
                v = store.save(_tree(k * 10 + j), metadata_entry={"rating": k + 1})
                with lock:
                    got.append(v)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(got) == list(range(16))
        assert store.versions() == list(range(16))
        entries = store.metadata()["entries"]
        assert [e["version"] for e in entries] == list(range(16))
        # Each update descends from the one before: no two saves raced.
        assert [e["parent_version"] for e in entries] == [None, *range(15)]


def test_run_lock_and_misuse(net_root):
    with RunStore(net_root, "net") as store:
        with pytest.raises(RuntimeError, match=r"call start_run\(\) first"):
            store.save(_tree())
        run_id = store.start_run("my-run")
        with RunStore(net_root, "net") as other:
            with pytest.raises(RuntimeError, match=r"open for writing by another"):
                other.start_run(run_id)
        with pytest.raises(ValueError, match=r"run_id must be"):
            store.start_run("../escape")
        with pytest.raises(ValueError, match=r"run_id must be"):
            store.metadata("../net")
        with pytest.raises(ValueError, match=r"run_id must be"):
            store.restore(0, run_id="/tmp")
        store.save(_tree())
        with pytest.raises(ValueError, match=r"key 'event' is reserved"):
            store.rollback(0, metadata_entry={"event": "x"})
        with pytest.raises(ValueError, match=r"PRNG key"):
            store.save({"key": jax.random.key(0)})
        with pytest.raises(ValueError, match=r"numeric array"):
            store.save({"s": np.array(["a"])})
    with pytest.raises(RuntimeError, match=r"is closed"):
        store.start_run()


def test_config_errors(tmp_path, make_network):
    with pytest.raises(ConfigError, match=r"config file not found"):
        RunStore(tmp_path, "absent")
    root = make_network(tmp_path, "other")
    os.rename(root / "other", root / "renamed")
    with pytest.raises(ConfigError, match=r"network_id: must match the folder name"):
        RunStore(root, "renamed")
    # An explicit config needs no file.
    store = RunStore(tmp_path / "fresh", config=NetworkConfig(network_id="x"))
    assert store.network_id == "x" and store.config.store.queue_size == 8
    store.close()


def test_run_ids_sort_by_time():
    ids = [new_run_id() for _ in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5


def test_recovery_after_interrupted_writes(net_root, assert_tree_bit_equal):
    with RunStore(net_root, "net") as store:
        run_id = store.start_run()
        for i in range(3):
            store.save(_tree(i), metadata_entry={"rating": 5})
        run_dir = store.run_dir
    # Simulate three kinds of debris a killed process can leave:
    # a finalized version whose metadata entry was never written,
    shutil.copytree(
        os.path.join(run_dir, "weights_v2"), os.path.join(run_dir, "weights_v3")
    )
    # an Orbax temporary folder of an unfinished save,
    os.makedirs(os.path.join(run_dir, "weights_v4.orbax-checkpoint-tmp-1"))
    # and an old version the metadata no longer lists (retention was about to
    # delete it).
    log, _ = MetadataLog.open(os.path.join(run_dir, "run_metadata.records"))
    log.append([{"versions": [1, 2]}])
    log.close()
    with RunStore(net_root, "net") as store:
        store.start_run(run_id)
        assert store.versions() == [1, 2, 3]
        assert _files(run_dir) == ["weights_v1", "weights_v2", "weights_v3"]
        assert store.metadata()["entries"][-1]["event"] == "recovered"
        assert_tree_bit_equal(store.restore(like=_tree()), _tree(2))
        assert store.save(_tree(4)) == 4


class _ChatNetworkConfig(BaseNetworkConfig):
    """Another learner's network schema."""

    temperature: float = 0.7


def test_other_learners_config_schema(tmp_path):
    folder = tmp_path / "chat-1"
    folder.mkdir()
    (folder / "config.yaml").write_text(
        "network_id: chat-1\ntemperature: 0.2\nstore: {max_to_keep: 1}\n"
    )
    with RunStore(tmp_path, "chat-1", config_cls=_ChatNetworkConfig) as store:
        assert store.config.temperature == 0.2
        store.start_run()
        store.save({"lora": np.ones(3, np.float32)})
        store.save({"lora": np.zeros(3, np.float32)})
        assert store.versions() == [1]
    # The glyph schema rejects the chat network's key, naming it.
    with pytest.raises(ConfigError, match=r"temperature: unknown key"):
        RunStore(tmp_path, "chat-1")
    with pytest.raises(ValueError, match=r"config must be a BaseNetworkConfig"):
        RunStore(tmp_path, "chat-1", config={"network_id": "chat-1"})
