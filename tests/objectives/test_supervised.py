"""Tests for binary cross-entropy, mean squared error and InfoNCE."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ol_jax.objectives import binary_cross_entropy, info_nce, mean_squared_error

N, D = 4, 3


def jgrad(fn, argnums=0, static=()):
    """A jitted gradient: eager differentiation compiles op by op and is slow."""
    return jax.jit(jax.grad(fn, argnums=argnums), static_argnames=static)


def floats(lo, hi):
    return st.floats(
        float(np.float32(lo)), float(np.float32(hi)), width=32, allow_subnormal=False
    )


def arr(shape, lo, hi):
    return hnp.arrays(np.float32, shape, elements=floats(lo, hi))


@settings(max_examples=20)
@given(arr((D,), -1e4, 1e4), arr((D,), 0, 1), arr((D,), 0, 10))
def test_bce_matches_reference_jit_finite(logit, label, weight):
    copies = (logit.copy(), label.copy(), weight.copy())
    out = binary_cross_entropy(logit, label, weight=weight)
    jitted = jax.jit(binary_cross_entropy)(logit, label, weight=weight)
    grad = jgrad(binary_cross_entropy)(logit, label, weight=weight)
    for a, c in zip((logit, label, weight), copies, strict=True):
        np.testing.assert_array_equal(a, c)
    x = logit.astype(np.float64)
    # Stable reference: max(x, 0) - x y + log(1 + exp(-|x|)).
    ref = np.maximum(x, 0) - x * label + np.log1p(np.exp(-np.abs(x)))
    assert out.dtype == jnp.float32 and out.shape == ()
    assert bool(jnp.isfinite(out)) and bool(jnp.all(jnp.isfinite(grad)))
    np.testing.assert_allclose(out, np.mean(weight * ref), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(jitted, out, rtol=1e-5, atol=1e-5)


def test_bce_scalar_and_direction():
    assert float(binary_cross_entropy(jnp.array(0.0), jnp.array(1.0))) == pytest.approx(
        np.log(2.0), rel=1e-6
    )
    # A positive example's loss falls as its logit rises.
    g = jgrad(binary_cross_entropy)(jnp.array(0.3), jnp.array(1.0))
    assert float(g) < 0.0
    half = binary_cross_entropy(jnp.array(0.3), jnp.array(1.0), weight=0.5)
    full = binary_cross_entropy(jnp.array(0.3), jnp.array(1.0))
    np.testing.assert_allclose(half, 0.5 * full, rtol=1e-6)
    assert float(binary_cross_entropy(jnp.array(1e4), jnp.array(1.0))) == 0.0


@settings(max_examples=20)
@given(arr((N, D), -1e4, 1e4), arr((N, D), -1e4, 1e4))
def test_mse(pred, target):
    copies = (pred.copy(), target.copy())
    out = mean_squared_error(pred, target)
    np.testing.assert_array_equal(pred, copies[0])
    np.testing.assert_array_equal(target, copies[1])
    want = np.mean((pred.astype(np.float64) - target) ** 2)
    np.testing.assert_allclose(out, want, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(mean_squared_error)(pred, target), out, 1e-6)
    assert bool(jnp.isfinite(out)) and float(out) >= 0.0
    assert float(mean_squared_error(pred, pred)) == 0.0


@settings(max_examples=20)
@given(
    arr((D,), -1e4, 1e4),
    arr((N, D), -1e4, 1e4),
    st.integers(0, N - 1),
    floats(0.01, 10),
    st.booleans(),
)
def test_info_nce_finite_jit_reference(query, keys, pos, tau, normalize):
    copies = (query.copy(), keys.copy())
    out = info_nce(query, keys, pos, temperature=tau, normalize=normalize)
    jitted = jax.jit(info_nce, static_argnames="normalize")
    grads = jgrad(info_nce, argnums=(0, 1), static="normalize")(
        query, keys, pos, temperature=tau, normalize=normalize
    )
    np.testing.assert_array_equal(query, copies[0])
    np.testing.assert_array_equal(keys, copies[1])
    assert out.dtype == jnp.float32 and out.shape == ()
    assert bool(jnp.isfinite(out)) and float(out) >= 0.0
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
    jit_out = jitted(query, keys, pos, temperature=tau, normalize=normalize)
    # Float32 logits of magnitude m carry an absolute rounding error ~ m * 2^-24.
    m = float(np.max(np.abs(keys.astype(np.float64) @ query))) / tau
    tol = 1e-4 + (0.0 if normalize else 8 * m * 2.0**-24)
    np.testing.assert_allclose(jit_out, out, rtol=1e-4, atol=tol)
    if normalize:
        q = query.astype(np.float64)
        k = keys.astype(np.float64)
        q = q / max(np.linalg.norm(q), 1e-6)
        k = k / np.maximum(np.linalg.norm(k, axis=1, keepdims=True), 1e-6)
        s = k @ q / tau
        ref = np.log(np.sum(np.exp(s - s.max()))) + s.max() - s[pos]
        np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-3)


def test_info_nce_prefers_matching_key():
    keys = jnp.eye(N, D)
    query = keys[2]
    right = info_nce(query, keys, 2)
    wrong = info_nce(query, keys, 1)
    assert float(right) < float(wrong)
    # Descending the loss moves the query towards its positive.
    g = jgrad(info_nce)(jnp.array([0.5, 0.5, 0.5]), keys, 2)
    assert float(g[2]) < 0.0
    # Zero vectors are safe with normalisation.
    zq = info_nce(jnp.zeros(D), jnp.zeros((N, D)), 0)
    np.testing.assert_allclose(zq, np.log(N), rtol=1e-6)
    assert bool(jnp.all(jnp.isfinite(jgrad(info_nce)(jnp.zeros(D), keys, 0))))


def test_info_nce_huge_unnormalized_logits_stay_finite():
    # Logits near 3e9 once overflowed under jit through an FMA-contracted
    # "x / tau - max"; the loss of four identical keys is exactly 0 or log 4.
    q = np.full((D,), 2392.0, np.float32)
    k = np.full((N, D), 4786.0, np.float32)
    f = jax.jit(info_nce, static_argnames="normalize")
    out = f(q, k, 0, temperature=0.01171875, normalize=False)
    assert bool(jnp.isfinite(out)) and float(out) <= np.log(N) + 1e-3
    g = jgrad(info_nce, argnums=(0, 1), static="normalize")(
        q, k, 0, temperature=0.01171875, normalize=False
    )
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in g)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dtypes_preserved(dtype):
    x = jnp.ones((D,), dtype)
    assert binary_cross_entropy(x, x).dtype == dtype
    assert mean_squared_error(x, x).dtype == dtype
    assert info_nce(x, jnp.ones((N, D), dtype), 0).dtype == dtype
    assert jgrad(mean_squared_error)(x, 2 * x).dtype == dtype


def test_shape_errors():
    with pytest.raises(ValueError, match="one shape"):
        mean_squared_error(jnp.zeros(3), jnp.zeros(4))
    with pytest.raises(ValueError, match="one shape"):
        binary_cross_entropy(jnp.zeros(3), jnp.zeros(3), weight=jnp.ones(2))
    with pytest.raises(ValueError, match=r"keys must have shape \[N, 3\]"):
        info_nce(jnp.zeros(3), jnp.zeros((4, 2)), 0)
    with pytest.raises(ValueError, match="positive_index must be a scalar integer"):
        info_nce(jnp.zeros(3), jnp.zeros((4, 3)), 1.0)
    with pytest.raises(ValueError, match="temperature must be"):
        info_nce(jnp.zeros(3), jnp.zeros((4, 3)), 0, temperature=0.0)
