"""Fixtures for the store tests: throwaway network folders, bit-exact comparison."""

import pathlib

import jax
import numpy as np
import pytest
import yaml


def _make_network(root: pathlib.Path, network_id: str = "net", **store) -> pathlib.Path:
    folder = root / network_id
    folder.mkdir(parents=True, exist_ok=True)
    config = {"network_id": network_id, "store": store}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def _assert_tree_bit_equal(actual, expected):
    a_leaves, a_def = jax.tree.flatten(actual)
    e_leaves, e_def = jax.tree.flatten(expected)
    assert a_def == e_def
    for a, e in zip(a_leaves, e_leaves, strict=True):
        a, e = np.asarray(a), np.asarray(e)
        assert a.dtype == e.dtype and a.shape == e.shape
        assert a.tobytes() == e.tobytes()


@pytest.fixture(scope="session")
def make_network():
    """``make_network(root, network_id="net", **store)`` writes a config.yaml."""
    return _make_network


@pytest.fixture(scope="session")
def assert_tree_bit_equal():
    """Same structure, dtypes, shapes and bytes (NaN payloads and -0.0 included)."""
    return _assert_tree_bit_equal


@pytest.fixture
def net_root(tmp_path):
    """A ``networks/`` folder holding network ``net`` with default store settings."""
    return _make_network(tmp_path / "networks")
