"""Sharded steps: placement helpers, the LoRA step on an 8-device mesh, and the
data-parallel step across 2 processes joined by ``jax.distributed``."""

import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import PartitionSpec

from ol_jax.core import (
    data_shardings,
    device_mesh,
    distribute,
    fsdp_shardings,
    replicated,
    shard_batch,
)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CHILD = os.path.join(HERE, "sharded_llm_child.py")


def _env(**extra):
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def mesh():
    return device_mesh(jax.device_count(), 1)


@settings(max_examples=15)
@given(shape=st.lists(st.integers(1, 40), min_size=0, max_size=4))
def test_fsdp_splits_the_largest_dimension(shape, mesh):
    x = jnp.zeros(shape, jnp.float32)
    spec = fsdp_shardings({"x": x}, mesh, axis="data", min_size=1)["x"].spec
    if not shape:
        assert spec == PartitionSpec()
        return
    split = [d for d, name in enumerate(spec) if name == "data"]
    assert len(split) == 1
    d = split[0]
    assert shape[d] == max(shape)
    assert all(shape[e] < shape[d] for e in range(d + 1, len(shape)))


def test_fsdp_keeps_small_leaves_whole_and_skips_none(mesh):
    tree = {"norm": jnp.ones(8), "kernel": jnp.ones((2, 64, 32)), "head": None}
    got = fsdp_shardings(tree, mesh, axis="model", min_size=100)
    assert got["norm"].spec == PartitionSpec()
    assert got["kernel"].spec == PartitionSpec(None, "model", None)
    assert got["head"] is None


def test_data_shardings_and_errors(mesh):
    got = data_shardings({"t": jnp.zeros((4, 3), jnp.int32)}, mesh)
    assert got["t"].spec == PartitionSpec("data")
    with pytest.raises(ValueError, match="row axis"):
        data_shardings({"s": jnp.zeros(())}, mesh)
    with pytest.raises(ValueError, match="axis must be one of"):
        fsdp_shardings({"x": jnp.zeros(4)}, mesh, axis="tensor")
    with pytest.raises(ValueError, match="data \\* model"):
        device_mesh(jax.device_count() + 1, 1)


def test_distribute_and_shard_batch_keep_values_and_dtypes(mesh):
    tree = {
        "w": jnp.arange(6, dtype=jnp.float32).reshape(2, 3),
        "n": jnp.asarray(7, jnp.int32),
        "key": jax.random.key(3),
    }
    placed = distribute(tree, replicated(tree, mesh))
    np.testing.assert_array_equal(np.asarray(placed["w"]), np.asarray(tree["w"]))
    assert placed["n"].dtype == jnp.int32
    np.testing.assert_array_equal(
        jax.random.key_data(placed["key"]), jax.random.key_data(tree["key"])
    )
    rows = {"tokens": np.arange(8, dtype=np.int32).reshape(4, 2)}
    batch = shard_batch(rows, mesh)
    np.testing.assert_array_equal(np.asarray(batch["tokens"]), rows["tokens"])
    assert batch["tokens"].sharding.spec == PartitionSpec("data")


def test_llm_step_on_8_device_mesh_equals_single_device(tmp_path):
    out = tmp_path / "mesh8.txt"
    proc = subprocess.run(
        [sys.executable, CHILD, "mesh8", str(out)],
        env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    single_step, addressed_step = (float(v) for v in out.read_text().split())
    assert single_step < 1e-5
    assert addressed_step < 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_with_jax_distributed_equal_one(tmp_path):
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, CHILD, "run", str(tmp_path / f"p{i}.npz"), str(i), "2"]
            + [str(port)],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    ref = subprocess.run(
        [sys.executable, CHILD, "run", str(tmp_path / "ref.npz"), "0", "1", "0"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ref.returncode == 0, ref.stderr[-3000:]
    for i, proc in enumerate(procs):
        try:
            stdout, stderr = proc.communicate(timeout=600)
        finally:
            proc.kill()
        assert proc.returncode == 0, stderr[-3000:]
        assert f"process {i}/2 done after 3 steps" in stdout
    want = np.load(tmp_path / "ref.npz")
    for i in range(2):
        got = np.load(tmp_path / f"p{i}.npz")
        assert sorted(got) == sorted(want)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], atol=1e-6, rtol=1e-5)
