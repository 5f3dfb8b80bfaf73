"""Tests for the prioritized replay buffer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ol_jax.memory import prioritized_replay


def _example():
    return {"x": jnp.zeros((3,), jnp.float32), "y": jnp.zeros((), jnp.int32)}


def _items(start, n):
    ids = jnp.arange(start, start + n, dtype=jnp.int32)
    return {
        "x": jnp.ones((n, 3), jnp.float32) * ids[:, None].astype(jnp.float32),
        "y": ids,
    }


def _jitted(replay):
    sample = jax.jit(lambda s, k, b=None: replay.sample(s, key=k, beta=b))
    return jax.jit(replay.add), jax.jit(replay.update_priorities), sample


def test_sampling_frequency_follows_priorities():
    # Four items with priorities 1, 2, 3, 4 and alpha = 1: P = p / 10.
    replay = prioritized_replay(capacity=64, batch_size=64, alpha=1.0)
    add, update, sample = _jitted(replay)
    state = replay.init(_example())
    state = add(state, _items(0, 4))
    state = update(
        state, jnp.arange(4, dtype=jnp.int32), jnp.array([1.0, 2.0, 3.0, 4.0])
    )
    counts = np.zeros(4)
    for i in range(200):
        batch = sample(state, jax.random.key(i))
        np.testing.assert_array_equal(
            np.asarray(batch.experience["y"]), np.asarray(batch.indices)
        )
        counts += np.bincount(np.asarray(batch.indices), minlength=4)
    expected = np.array([0.1, 0.2, 0.3, 0.4]) * counts.sum()
    chi2 = float(np.sum((counts - expected) ** 2 / expected))
    # 3 degrees of freedom: P(chi2 > 16.27) = 0.001.
    assert chi2 < 16.27, (counts, expected)
    np.testing.assert_allclose(
        np.asarray(batch.probabilities),
        np.array([0.1, 0.2, 0.3, 0.4])[np.asarray(batch.indices)],
        rtol=1e-5,
    )


def test_alpha_zero_is_uniform_and_weights_are_one():
    replay = prioritized_replay(capacity=16, batch_size=16, alpha=0.0, beta=1.0)
    add, update, sample = _jitted(replay)
    state = add(replay.init(_example()), _items(0, 4))
    state = update(
        state, jnp.arange(4, dtype=jnp.int32), jnp.array([1.0, 10.0, 100.0, 5.0])
    )
    batch = sample(state, jax.random.key(1))
    np.testing.assert_allclose(np.asarray(batch.probabilities), 0.25, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(batch.weights), 1.0, rtol=1e-6)


def test_importance_weights_match_formula():
    replay = prioritized_replay(capacity=32, batch_size=32, alpha=1.0, beta=0.5)
    add, update, sample = _jitted(replay)
    state = add(replay.init(_example()), _items(0, 4))
    state = update(
        state, jnp.arange(4, dtype=jnp.int32), jnp.array([1.0, 2.0, 3.0, 4.0])
    )
    batch = sample(state, jax.random.key(2))
    p = np.asarray(batch.probabilities, np.float64)
    w = (4 * p) ** -0.5
    np.testing.assert_allclose(np.asarray(batch.weights), w / w.max(), rtol=1e-5)
    batch = sample(state, jax.random.key(2), jnp.float32(0.0))
    np.testing.assert_allclose(np.asarray(batch.weights), 1.0, rtol=1e-6)


def test_capacity_never_exceeded():
    capacity = 8
    replay = prioritized_replay(capacity=capacity, batch_size=4)
    add, _, sample = _jitted(replay)
    state = replay.init(_example())
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), state)
    total = 0
    for n in (3, 3, 3, 3, 10):
        state = add(state, _items(total, n))
        total += n
        assert int(replay.size(state)) == min(total, capacity)
        assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == shapes
        batch = sample(state, jax.random.key(total))
        assert int(jnp.max(batch.indices)) < capacity
        # Only the newest `capacity` items survive.
        assert int(jnp.min(batch.experience["y"])) >= max(total - capacity, 0)


_REPLAY = prioritized_replay(capacity=8, batch_size=8, alpha=0.5, beta=0.7)
_ADD = jax.jit(_REPLAY.add)
_UPDATE = jax.jit(_REPLAY.update_priorities)
_SAMPLE = jax.jit(lambda s, k: _REPLAY.sample(s, key=k))


@settings(max_examples=15)
@given(
    priorities=st.lists(st.floats(2.0**-10, 2.0**10, width=32), min_size=8, max_size=8)
)
def test_probabilities_and_weights_valid_for_any_priorities(priorities):
    state = _ADD(_REPLAY.init(_example()), _items(0, 8))
    p = jnp.asarray(priorities, jnp.float32)
    state = _UPDATE(state, jnp.arange(8, dtype=jnp.int32), p)
    batch = _SAMPLE(state, jax.random.key(0))
    expected = np.asarray(p, np.float64) ** 0.5
    expected /= expected.sum()
    np.testing.assert_allclose(
        np.asarray(batch.probabilities),
        expected[np.asarray(batch.indices)],
        rtol=1e-3,
    )
    w = np.asarray(batch.weights)
    assert np.all(np.isfinite(w)) and np.all(w > 0) and np.all(w <= 1.0 + 1e-6)


def test_jit_equals_no_jit_and_inputs_not_mutated():
    replay = prioritized_replay(capacity=16, batch_size=8, alpha=0.7, beta=0.3)
    state = replay.init(_example())
    batch_in = _items(0, 5)
    before = jax.tree.map(np.array, batch_in)
    eager = replay.add(state, batch_in)
    jitted = jax.jit(replay.add)(state, batch_in)
    jax.tree.map(np.testing.assert_array_equal, eager, jitted)
    jax.tree.map(np.testing.assert_array_equal, batch_in, before)
    idx, pr = jnp.array([0, 3], jnp.int32), jnp.array([5.0, 0.5], jnp.float32)
    eager = replay.update_priorities(eager, idx, pr)
    jitted = jax.jit(replay.update_priorities)(jitted, idx, pr)
    jax.tree.map(np.testing.assert_array_equal, eager, jitted)
    key = jax.random.key(3)
    s1 = replay.sample(eager, key=key)
    s2 = jax.jit(lambda s, k: replay.sample(s, key=k))(jitted, key)
    jax.tree.map(np.testing.assert_allclose, s1, s2)
    assert s1.weights.dtype == jnp.float32
    assert s1.experience["y"].dtype == jnp.int32


def test_bad_priorities_are_floored_not_poisoning():
    add, update, sample = _jitted(_REPLAY)
    state = add(_REPLAY.init(_example()), _items(0, 3))
    state = update(
        state, jnp.array([0, 1, 2], jnp.int32), jnp.array([jnp.nan, -1.0, jnp.inf])
    )
    batch = sample(state, jax.random.key(0))
    assert np.all(np.isfinite(np.asarray(batch.probabilities)))
    assert np.all(np.isfinite(np.asarray(batch.weights)))


def test_can_sample_and_size():
    replay = prioritized_replay(capacity=8, batch_size=2, min_size=3)
    state = replay.init(_example())
    assert not bool(replay.can_sample(state))
    state = jax.jit(replay.add)(state, _items(0, 3))
    assert bool(replay.can_sample(state))
    assert int(replay.size(state)) == 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"capacity": 0}, "capacity"),
        ({"batch_size": 0}, "batch_size"),
        ({"alpha": 1.5}, "alpha"),
        ({"beta": -0.1}, "beta"),
        ({"capacity": 4, "batch_size": 2, "min_size": 5}, "min_size"),
        ({"capacity": 4, "batch_size": 5}, "batch_size"),
        ({"min_priority": 0.0}, "min_priority"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        prioritized_replay(**kwargs)


def test_update_priorities_shape_check():
    replay = prioritized_replay(capacity=8, batch_size=2)
    state = replay.add(replay.init(_example()), _items(0, 2))
    with pytest.raises(ValueError, match="matching 1-D"):
        replay.update_priorities(state, jnp.array([0, 1]), jnp.array([1.0]))
