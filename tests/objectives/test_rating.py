"""Tests for rating normalization: the validating host map and its traced twin."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ol_jax.objectives import normalize_rating, rating_to_reward

SCALES = ("linear", "nonlinear")
ratings = st.integers(1, 10)


@pytest.mark.parametrize("scale", SCALES)
def test_endpoints_and_midpoint(scale):
    assert normalize_rating(1, scale=scale) == -1.0
    assert normalize_rating(10, scale=scale) == 1.0
    # 5 and 6 sit symmetrically around the 5.5 midpoint.
    assert normalize_rating(5, scale=scale) == -normalize_rating(6, scale=scale)


@pytest.mark.parametrize("scale", SCALES)
def test_strictly_increasing_and_bounded(scale):
    values = [normalize_rating(r, scale=scale) for r in range(1, 11)]
    assert all(a < b for a, b in zip(values, values[1:], strict=False))
    assert all(-1.0 <= v <= 1.0 for v in values)


def test_linear_matches_formula():
    for r in range(1, 11):
        np.testing.assert_allclose(normalize_rating(r), (r - 5.5) / 4.5, rtol=1e-6)


def test_nonlinear_emphasises_extremes():
    # Middle ratings shrink towards 0, extreme ones keep their magnitude.
    for r in (4, 5, 6, 7):
        assert abs(normalize_rating(r, scale="nonlinear")) < abs(normalize_rating(r))
    for r in (1, 10):
        assert abs(normalize_rating(r, scale="nonlinear")) == 1.0


@pytest.mark.parametrize(
    "bad, text",
    [
        (0, "rating must be in 1..10, got 0"),
        (11, "rating must be in 1..10, got 11"),
        (7.5, "got 7.5"),
        (float("nan"), "got nan"),
        (float("inf"), "got inf"),
        (-float("inf"), "got -inf"),
        (np.int64(11), "got 11"),
        (True, "got True"),
        ("7", "got '7'"),
        ([3, 12], "got 12"),
    ],
)
def test_rejects_bad_ratings(bad, text):
    with pytest.raises(ValueError, match="1..10") as info:
        normalize_rating(bad)
    assert text in str(info.value)


def test_rejects_bad_options():
    with pytest.raises(ValueError, match="scale must be"):
        normalize_rating(5, scale="cubic")
    with pytest.raises(ValueError, match="power must be"):
        normalize_rating(5, scale="nonlinear", power=0.0)
    with pytest.raises(ValueError, match="scale must be"):
        rating_to_reward(jnp.asarray(5), scale="cubic")


def test_rejects_traced_values():
    with pytest.raises(ValueError, match="rating_to_reward"):
        jax.jit(normalize_rating)(5)


def test_accepts_whole_floats_and_arrays():
    assert normalize_rating(7.0) == normalize_rating(7)
    arr = np.array([[1, 10], [5, 6]])
    before = arr.copy()
    out = normalize_rating(arr)
    np.testing.assert_array_equal(arr, before)  # input not mutated
    assert out.shape == (2, 2) and out.dtype == np.float32


@settings(max_examples=15)
@given(st.lists(ratings, min_size=4, max_size=4), st.sampled_from(SCALES))
def test_traced_matches_host_and_jit(rs, scale):
    host = np.array([normalize_rating(r, scale=scale) for r in rs])
    x = np.array(rs, np.int32)
    before = x.copy()
    eager = rating_to_reward(x, scale=scale)
    jitted = jax.jit(lambda r: rating_to_reward(r, scale=scale))(x)
    np.testing.assert_array_equal(x, before)
    assert eager.dtype == jnp.float32 and eager.shape == (4,)
    np.testing.assert_allclose(eager, host, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("scale", SCALES)
def test_traced_keeps_float_dtype_and_clips(dtype, scale):
    x = jnp.asarray([-1e4, 0.0, 1.0, 5.5, 10.0, 1e4], dtype)
    out = rating_to_reward(x, scale=scale)
    assert out.dtype == dtype
    assert bool(jnp.all(jnp.isfinite(out)))
    np.testing.assert_allclose(
        np.asarray(out, np.float32), [-1, -1, -1, 0, 1, 1], atol=1e-7
    )
