"""Tests for REINFORCE on a diagonal Gaussian and its baseline / weighting helpers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ol_jax.objectives import (
    DEFAULT_MIN_LOG_STD,
    confidence_weight,
    ema_baseline,
    gaussian_entropy,
    gaussian_log_prob,
    recency_weights,
    reinforce_loss,
)

D = 4


def jgrad(fn, argnums=0, static=()):
    """A jitted gradient: eager differentiation compiles op by op and is slow."""
    return jax.jit(jax.grad(fn, argnums=argnums), static_argnames=static)


def scalar(lo, hi):
    # Bounds rounded to float32 so that hypothesis accepts them at width 32.
    return st.floats(
        float(np.float32(lo)), float(np.float32(hi)), width=32, allow_subnormal=False
    )


def vec(lo, hi, n=D):
    return hnp.arrays(np.float32, (n,), elements=scalar(lo, hi))


def close(a, b, rtol=1e-5, atol=1e-5):
    np.testing.assert_allclose(
        np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=rtol, atol=atol
    )


def test_log_prob_matches_reference_formula():
    z = np.array([0.3, -1.2, 2.0, 0.0], np.float32)
    mean = np.array([0.0, 1.0, -1.0, 0.5], np.float32)
    log_std = np.array([0.0, -0.5, 0.7, 0.2], np.float32)
    std = np.exp(log_std.astype(np.float64))
    want = np.sum(
        -0.5 * ((z - mean) / std) ** 2 - np.log(std) - 0.5 * math.log(2 * math.pi)
    )
    close(gaussian_log_prob(z, mean, log_std), want, rtol=1e-6)
    want_h = np.sum(log_std + 0.5 * math.log(2 * math.pi * math.e))
    close(gaussian_entropy(log_std), want_h, rtol=1e-6)


def test_log_std_is_clamped_so_std_never_collapses():
    z, mean = jnp.ones(D), jnp.zeros(D)
    floor = jnp.full(D, DEFAULT_MIN_LOG_STD)
    tiny = jnp.full(D, -1e4)
    close(gaussian_log_prob(z, mean, tiny), gaussian_log_prob(z, mean, floor))
    assert bool(jnp.isfinite(gaussian_log_prob(z, mean, tiny)))
    huge = jnp.full(D, 1e4)
    close(
        gaussian_log_prob(z, mean, huge, max_log_std=1.0),
        gaussian_log_prob(z, mean, jnp.ones(D)),
    )


@settings(max_examples=15)
@given(vec(-1e4, 1e4), vec(-1e4, 1e4), vec(-1e4, 1e4), scalar(-1e4, 1e4))
def test_finite_jit_equal_and_unmutated(z, mean, log_std, adv):
    args = (mean, log_std, z)
    copies = [a.copy() for a in args]
    loss = reinforce_loss(mean, log_std, z, adv, weight=0.5, entropy_coef=0.01)
    jitted = jax.jit(reinforce_loss)(mean, log_std, z, adv, weight=0.5)
    eager = reinforce_loss(mean, log_std, z, adv, weight=0.5)
    grads = jgrad(reinforce_loss, argnums=(0, 1))(mean, log_std, z, adv)
    for a, c in zip(args, copies, strict=True):
        np.testing.assert_array_equal(a, c)
    assert bool(jnp.isfinite(loss))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)
    lp = gaussian_log_prob(z, mean, log_std)
    np.testing.assert_allclose(jax.jit(gaussian_log_prob)(z, mean, log_std), lp, 1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dtypes_preserved(dtype):
    mean = jnp.zeros(D, dtype)
    log_std = jnp.zeros(D, dtype)
    z = jnp.ones(D, dtype)
    assert gaussian_log_prob(z, mean, log_std).dtype == dtype
    assert gaussian_entropy(log_std).dtype == dtype
    assert reinforce_loss(mean, log_std, z, 1.0).dtype == dtype
    g = jgrad(reinforce_loss, argnums=(0, 1))(mean, log_std, z, 1.0)
    assert g[0].dtype == dtype and g[1].dtype == dtype
    assert ema_baseline(jnp.zeros((), dtype), jnp.ones((), dtype), 0.9).dtype == dtype
    assert recency_weights(jnp.arange(3).astype(dtype), 2.0).dtype == dtype
    r = jnp.ones((), dtype)
    assert confidence_weight(r, r, r).dtype == dtype


def sgd_step(mean, log_std, z, adv, lr):
    grads = jgrad(reinforce_loss, argnums=(0, 1))(mean, log_std, z, adv)
    tx = optax.sgd(lr)
    params = (mean, log_std)
    updates, _ = tx.update(grads, tx.init(params), params)
    return optax.apply_updates(params, updates), grads


@settings(max_examples=20)
@given(vec(-2, 2), vec(-1, 1), vec(-2, 2), scalar(0.1, 1.0), st.booleans())
def test_advantage_sign_moves_log_prob_of_sampled_z(mean, log_std, dz, mag, good):
    """A high rating makes the rated z more likely; a low one, less likely."""
    mean, log_std = jnp.asarray(mean), jnp.asarray(log_std)
    z = mean + jnp.asarray(dz)
    adv = mag if good else -mag
    (new_mean, new_log_std), grads = sgd_step(mean, log_std, z, adv, lr=1e-3)
    g2 = sum(float(jnp.sum(g * g)) for g in grads)
    # The first-order change lr * |A| * |grad|^2 must stand clear of float32
    # rounding of log pi (magnitude up to ~70, one ulp ~ 1e-5).
    assume(mag * g2 >= 1.0)
    before = float(gaussian_log_prob(z, mean, log_std))
    after = float(gaussian_log_prob(z, new_mean, new_log_std))
    if good:
        assert after > before
    else:
        assert after < before


def test_entropy_bonus_widens_the_policy():
    mean, log_std, z = jnp.zeros(D), jnp.zeros(D), jnp.zeros(D)
    g_plain = jgrad(reinforce_loss, argnums=1)(mean, log_std, z, 0.0)
    g_bonus = jgrad(reinforce_loss, argnums=1)(mean, log_std, z, 0.0, entropy_coef=0.5)
    close(g_plain, jnp.zeros(D))
    close(g_bonus, jnp.full(D, -0.5))  # descending raises log_std


def test_advantage_and_weight_are_constants():
    mean, log_std, z = jnp.zeros(D), jnp.zeros(D), jnp.ones(D)
    g_adv = jgrad(reinforce_loss, argnums=3)(mean, log_std, z, 1.0)
    g_w = jgrad(lambda w: reinforce_loss(mean, log_std, z, 1.0, weight=w))(1.0)
    g_z = jgrad(reinforce_loss, argnums=2)(mean, log_std, z, 1.0)
    assert float(g_adv) == 0.0 and float(g_w) == 0.0
    close(g_z, jnp.zeros(D))
    # The weight scales the gradient linearly.
    g1 = jgrad(reinforce_loss)(mean, log_std, z, 1.0)
    g3 = jgrad(reinforce_loss)(mean, log_std, z, 1.0, weight=3.0)
    close(g3, 3.0 * g1)


def test_shape_errors():
    with pytest.raises(ValueError, match="one shape"):
        gaussian_log_prob(jnp.zeros(3), jnp.zeros(4), jnp.zeros(4))
    with pytest.raises(ValueError, match="advantage must be a scalar"):
        reinforce_loss(jnp.zeros(2), jnp.zeros(2), jnp.zeros(2), jnp.zeros(2))
    with pytest.raises(ValueError, match="min_log_std < max_log_std"):
        gaussian_entropy(jnp.zeros(2), min_log_std=1.0, max_log_std=0.0)
    with pytest.raises(ValueError, match="decay must be in"):
        ema_baseline(jnp.zeros(()), jnp.zeros(()), 1.5)
    with pytest.raises(ValueError, match="half_life must be"):
        recency_weights(jnp.arange(3), 0.0)


@settings(max_examples=15)
@given(scalar(-1, 1), scalar(-1, 1), scalar(0, 1))
def test_ema_baseline_formula_and_bounds(b, r, decay):
    out = ema_baseline(np.float32(b), np.float32(r), decay)
    close(out, decay * b + (1 - decay) * r, atol=1e-6)
    assert min(b, r) - 1e-6 <= float(out) <= max(b, r) + 1e-6
    close(jax.jit(ema_baseline)(np.float32(b), np.float32(r), decay), out)


def test_ema_baseline_converges_on_constant_stream():
    b = jnp.zeros(())
    for _ in range(200):
        b = ema_baseline(b, jnp.ones(()), 0.9)
    close(b, 1.0, atol=1e-6)


@settings(max_examples=15)
@given(hnp.arrays(np.int32, (5,), elements=st.integers(-10, 10**6)), scalar(0.5, 1e3))
def test_recency_weights(ages, half_life):
    before = ages.copy()
    w = recency_weights(ages, half_life)
    np.testing.assert_array_equal(ages, before)
    assert w.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(w))) and bool(jnp.all((w >= 0) & (w <= 1)))
    want = 0.5 ** (np.maximum(ages, 0).astype(np.float64) / half_life)
    close(w, want, rtol=1e-5, atol=1e-6)
    close(jax.jit(recency_weights)(ages, half_life), w)
    # Older feedback never weighs more than newer feedback.
    order = np.argsort(ages)
    assert np.all(np.diff(np.asarray(w)[order]) <= 1e-7)


def test_recency_half_life():
    close(recency_weights(jnp.array([0.0, 3.0, 6.0]), 3.0), [1.0, 0.5, 0.25])


@settings(max_examples=25)
@given(scalar(-1, 1), scalar(-1, 1), scalar(0, 2), scalar(0, 1))
def test_confidence_weight_bounded(r, b, s, min_w):
    w = confidence_weight(np.float32(r), np.float32(b), np.float32(s), min_weight=min_w)
    assert min_w - 1e-6 <= float(w) <= 1.0 + 1e-6
    jitted = jax.jit(lambda *a: confidence_weight(*a, min_weight=min_w))
    close(jitted(np.float32(r), np.float32(b), np.float32(s)), w)


def test_confidence_weight_damps_one_sided_streams():
    one = jnp.ones(())
    # Balanced stream: full weight.
    close(confidence_weight(one, 0.0 * one, 0.5 * one), 1.0)
    # All 10s for a long time: baseline ~1, no spread -> close to min_weight.
    w = confidence_weight(one, 0.999 * one, 0.0 * one, min_weight=0.1)
    assert float(w) < 0.11
    # Same for all 1s.
    w = confidence_weight(-one, -0.999 * one, 0.0 * one, min_weight=0.1)
    assert float(w) < 0.11
    # A rating against a one-sided stream is new information: full weight.
    close(confidence_weight(-one, 0.999 * one, 0.0 * one), 1.0)
    # More one-sided -> smaller weight.
    ws = [float(confidence_weight(one, b * one, 0.2 * one)) for b in (0.2, 0.5, 0.9)]
    assert ws[0] > ws[1] > ws[2]
