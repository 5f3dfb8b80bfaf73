"""Tests for the single-checkpoint helpers save_pytree / load_pytree."""

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from ol_jax.store import is_pytree_checkpoint, load_pytree, save_pytree


def test_save_load_round_trip(tmp_path, assert_tree_bit_equal):
    tree = {
        "w": np.array([1.5, -0.0, np.nan, np.inf], np.float32),
        "b": np.arange(3).astype(ml_dtypes.bfloat16),
        "n": {"i": np.arange(4, dtype=np.int32)},
    }
    path = tmp_path / "ckpt"
    assert not is_pytree_checkpoint(path)
    save_pytree(path, tree)
    assert is_pytree_checkpoint(path)
    assert_tree_bit_equal(load_pytree(path), tree)
    like = {"w": jnp.zeros(4), "b": jnp.zeros(3, jnp.bfloat16), "n": {"i": np.zeros(4)}}
    got = load_pytree(path, like={**like, "n": {"i": np.zeros(4, np.int32)}})
    assert_tree_bit_equal(got, tree)
    with pytest.raises(ValueError, match=r"exists; pass overwrite=True"):
        save_pytree(path, tree)
    save_pytree(path, {"w": tree["w"] + 1}, overwrite=True)
    np.testing.assert_array_equal(load_pytree(path)["w"], tree["w"] + 1)
    with pytest.raises(ValueError, match=r"must be an Orbax checkpoint folder"):
        load_pytree(tmp_path / "missing")
