"""nearest_key: the matched key is the most similar valid one above the threshold."""

import hypothesis.strategies as st
import jax
import numpy as np
import pytest
from hypothesis import given, settings

from ol_jax.memory import nearest_key


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@settings(deadline=None, max_examples=60)
@given(
    k=st.integers(1, 12),
    b=st.integers(1, 6),
    d=st.integers(2, 16),
    threshold=st.floats(-1.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_matches_a_brute_force_search(k, b, d, threshold, seed):
    rng = np.random.default_rng(seed)
    keys, queries = _unit(rng, k, d), _unit(rng, b, d)
    valid = rng.random(k) < 0.7
    match = nearest_key(keys, valid, queries, threshold=threshold)
    assert match.index.dtype == np.int32 and match.index.shape == (b,)
    jitted = jax.jit(lambda *a: nearest_key(*a, threshold=threshold))(
        keys, valid, queries
    )
    np.testing.assert_array_equal(jitted.index, match.index)
    for i in range(b):
        sims = [float(keys[j] @ queries[i]) if valid[j] else -np.inf for j in range(k)]
        best = int(np.argmax(sims))
        want = best if valid.any() and sims[best] >= threshold else -1
        # float32 rounding may swap near-ties: accept an equally good key.
        got = int(match.index[i])
        if want == -1 or got == -1:
            assert got == want or abs(sims[best] - threshold) < 1e-5
        else:
            assert abs(sims[got] - sims[best]) < 1e-5
        np.testing.assert_allclose(float(match.score[i]), max(sims), atol=1e-5)


def test_a_query_equal_to_a_key_matches_it_and_no_keys_match_nothing():
    keys = np.eye(3, dtype=np.float32)
    m = nearest_key(keys, np.ones(3, bool), keys[[2, 0]], threshold=0.99)
    assert m.index.tolist() == [2, 0]
    m = nearest_key(keys, np.array([False, True, True]), keys[:1], threshold=0.5)
    assert m.index.tolist() == [-1]
    m = nearest_key(np.zeros((0, 3)), np.zeros((0,), bool), keys, threshold=0.0)
    assert m.index.tolist() == [-1, -1, -1] and np.all(np.isneginf(m.score))


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="keys and queries"):
        nearest_key(np.zeros((2, 3)), np.ones(2, bool), np.zeros((1, 4)), threshold=0)
    with pytest.raises(ValueError, match="valid must have shape"):
        nearest_key(np.zeros((2, 3)), np.ones(3, bool), np.zeros((1, 3)), threshold=0)
