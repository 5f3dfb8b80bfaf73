"""Tests for the token-level losses: weighted cross-entropy and KL to a reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ol_jax.objectives import token_cross_entropy, token_kl

T, V = 5, 7


def jgrad(fn, argnums=0, static=()):
    """A jitted gradient: eager differentiation compiles op by op and is slow."""
    return jax.jit(jax.grad(fn, argnums=argnums), static_argnames=static)


def floats(lo, hi):
    return st.floats(
        float(np.float32(lo)), float(np.float32(hi)), width=32, allow_subnormal=False
    )


logits_st = hnp.arrays(np.float32, (T, V), elements=floats(-1e4, 1e4))
targets_st = hnp.arrays(np.int32, (T,), elements=st.integers(0, V - 1))
mask_st = hnp.arrays(np.bool_, (T,))
weights_st = hnp.arrays(np.float32, (T,), elements=floats(0, 5))


def reference_ce(logits, targets, weights, mask):
    x = logits.astype(np.float64)
    m = x.max(-1, keepdims=True)
    logp = x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))
    ce = -logp[np.arange(len(targets)), targets]
    w = weights * mask
    return 0.0 if w.sum() == 0 else float((w * ce).sum() / w.sum())


@settings(max_examples=20)
@given(logits_st, targets_st, weights_st, mask_st)
def test_ce_matches_reference_jit_and_is_finite(logits, targets, weights, mask):
    copies = [a.copy() for a in (logits, targets, weights, mask)]
    out = token_cross_entropy(logits, targets, weights=weights, mask=mask)
    jitted = jax.jit(token_cross_entropy)(logits, targets, weights=weights, mask=mask)
    grad = jgrad(token_cross_entropy)(logits, targets, weights=weights, mask=mask)
    for a, c in zip((logits, targets, weights, mask), copies, strict=True):
        np.testing.assert_array_equal(a, c)
    assert out.dtype == jnp.float32 and out.shape == ()
    assert bool(jnp.isfinite(out)) and bool(jnp.all(jnp.isfinite(grad)))
    want = reference_ce(logits, targets, weights, mask)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(jitted, out, rtol=1e-5, atol=1e-5)


def test_ce_defaults_and_weighting():
    logits = jax.random.normal(jax.random.key(1), (T, V))
    targets = jnp.arange(T) % V
    ce = -jax.nn.log_softmax(logits)[jnp.arange(T), targets]
    np.testing.assert_allclose(token_cross_entropy(logits, targets), ce.mean(), 1e-6)
    # Weights are relative: scaling them all changes nothing.
    w = jnp.array([1.0, 3.0, 1.0, 5.0, 1.0])
    a = token_cross_entropy(logits, targets, weights=w)
    b = token_cross_entropy(logits, targets, weights=2.0 * w)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(a, jnp.sum(w * ce) / jnp.sum(w), rtol=1e-6)


def test_ce_empty_mask_is_zero_with_zero_gradient():
    logits = jnp.ones((T, V))
    # Padding ids outside the vocabulary are fine where masked out.
    targets = jnp.full((T,), -100, jnp.int32)
    mask = jnp.zeros((T,), bool)
    assert float(token_cross_entropy(logits, targets, mask=mask)) == 0.0
    g = jgrad(token_cross_entropy)(logits, targets, mask=mask)
    assert bool(jnp.all(g == 0))
    zero_w = jnp.zeros((T,))
    assert float(token_cross_entropy(logits, targets * 0, weights=zero_w)) == 0.0


@settings(max_examples=20)
@given(logits_st, logits_st, mask_st)
def test_kl_nonnegative_finite_jit(ref, logits, mask):
    copies = (ref.copy(), logits.copy(), mask.copy())
    out = token_kl(ref, logits, mask=mask)
    jitted = jax.jit(token_kl)(ref, logits, mask=mask)
    grad = jgrad(token_kl, argnums=1)(ref, logits, mask=mask)
    for a, c in zip((ref, logits, mask), copies, strict=True):
        np.testing.assert_array_equal(a, c)
    assert out.dtype == jnp.float32 and out.shape == ()
    assert bool(jnp.isfinite(out)) and float(out) >= 0.0
    assert bool(jnp.all(jnp.isfinite(grad)))
    np.testing.assert_allclose(jitted, out, rtol=1e-5, atol=1e-5)
    assert float(token_kl(ref, ref, mask=mask)) == 0.0


def test_kl_matches_reference_and_direction():
    k1, k2 = jax.random.split(jax.random.key(2))
    ref = jax.random.normal(k1, (T, V)) * 3.0
    logits = jax.random.normal(k2, (T, V)) * 3.0
    p = jax.nn.softmax(ref.astype(jnp.float32))
    want = jnp.mean(
        jnp.sum(p * (jax.nn.log_softmax(ref) - jax.nn.log_softmax(logits)), -1)
    )
    np.testing.assert_allclose(token_kl(ref, logits), want, rtol=1e-5)
    # KL(ref || adapted) is not symmetric; the argument order matters.
    assert abs(float(token_kl(ref, logits)) - float(token_kl(logits, ref))) > 1e-3
    # No gradient flows into the reference.
    g_ref = jgrad(token_kl)(ref, logits)
    assert bool(jnp.all(g_ref == 0))
    # A shift of every logit by a constant is the same distribution.
    assert float(token_kl(ref, ref + 7.0)) < 1e-5


def test_kl_mask_and_empty_mask():
    ref = jnp.zeros((T, V))
    logits = jnp.zeros((T, V)).at[0].set(jnp.arange(V, dtype=jnp.float32))
    mask = jnp.array([False, True, True, True, True])
    assert float(token_kl(ref, logits, mask=mask)) == 0.0
    assert float(token_kl(ref, logits)) > 0.0
    empty = jnp.zeros((T,), bool)
    assert float(token_kl(ref, logits, mask=empty)) == 0.0
    g = jgrad(token_kl, argnums=1)(ref, logits, mask=empty)
    assert bool(jnp.all(g == 0))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dtypes_preserved_with_huge_logits(dtype):
    logits = (jax.random.normal(jax.random.key(3), (T, V)) * 1e4).astype(dtype)
    targets = jnp.arange(T) % V
    ce = token_cross_entropy(logits, targets)
    kl = token_kl(logits[::-1], logits)
    assert ce.dtype == dtype and kl.dtype == dtype
    assert bool(jnp.isfinite(ce)) and bool(jnp.isfinite(kl)) and float(kl) >= 0.0
    g = jgrad(token_cross_entropy)(logits, targets)
    assert g.dtype == dtype and bool(jnp.all(jnp.isfinite(g)))


def test_shape_errors():
    with pytest.raises(ValueError, match=r"logits must have shape \[T, V\]"):
        token_cross_entropy(jnp.zeros((V,)), jnp.zeros((1,), jnp.int32))
    with pytest.raises(ValueError, match=r"targets must have shape \[5\]"):
        token_cross_entropy(jnp.zeros((T, V)), jnp.zeros((4,), jnp.int32))
    with pytest.raises(ValueError, match="targets must be integer"):
        token_cross_entropy(jnp.zeros((T, V)), jnp.zeros((T,)))
    with pytest.raises(ValueError, match=r"mask must have shape \[5\]"):
        token_kl(jnp.zeros((T, V)), jnp.zeros((T, V)), mask=jnp.ones((3,), bool))
    with pytest.raises(ValueError, match="one shape"):
        token_kl(jnp.zeros((T, V)), jnp.zeros((T, V + 1)))
