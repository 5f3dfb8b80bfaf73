"""Tests for EWC / proximal penalties and the diagonal Fisher estimates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ol_jax.objectives import (
    ewc_penalty,
    fisher_diagonal,
    online_fisher,
    proximal_penalty,
)


def jgrad(fn, argnums=0, static=()):
    """A jitted gradient: eager differentiation compiles op by op and is slow."""
    return jax.jit(jax.grad(fn, argnums=argnums), static_argnames=static)


def floats(lo, hi):
    return st.floats(
        float(np.float32(lo)), float(np.float32(hi)), width=32, allow_subnormal=False
    )


def tree_st(lo, hi):
    return st.fixed_dictionaries(
        {
            "w": hnp.arrays(np.float32, (3, 2), elements=floats(lo, hi)),
            "b": hnp.arrays(np.float32, (2,), elements=floats(lo, hi)),
        }
    )


def as_np(tree):
    return jax.tree.map(lambda x: np.array(x, copy=True), tree)


def assert_tree_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


@settings(max_examples=20)
@given(tree_st(-1e3, 1e3), tree_st(-1e3, 1e3), tree_st(0, 1e3), floats(0, 1e3))
def test_ewc_penalty_formula_jit_finite(params, anchor, fisher, lam):
    copies = [as_np(t) for t in (params, anchor, fisher)]
    out = ewc_penalty(params, anchor, fisher, lam)
    for t, c in zip((params, anchor, fisher), copies, strict=True):
        assert_tree_equal(t, c)
    want = (
        0.5
        * lam
        * sum(
            np.sum(
                fisher[k].astype(np.float64)
                * (params[k].astype(np.float64) - anchor[k]) ** 2
            )
            for k in params
        )
    )
    assert out.dtype == jnp.float32 and out.shape == ()
    assert bool(jnp.isfinite(out)) and float(out) >= 0.0
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(
        jax.jit(ewc_penalty)(params, anchor, fisher, lam), out, 1e-5
    )


@settings(max_examples=20)
@given(tree_st(-10, 10), tree_st(-10, 10), tree_st(0, 10), floats(0.0, 10))
def test_ewc_zero_at_anchor_and_quadratic(anchor, delta, fisher, lam):
    assert float(ewc_penalty(anchor, anchor, fisher, lam)) == 0.0
    at = jax.tree.map(lambda a, d: a + d, anchor, delta)
    at2 = jax.tree.map(lambda a, d: a + 2.0 * d, anchor, delta)
    # Measured from a zero anchor so that the displacements are exact.
    zero = jax.tree.map(jnp.zeros_like, anchor)
    p1 = ewc_penalty(delta, zero, fisher, lam)
    p2 = ewc_penalty(jax.tree.map(lambda d: 2.0 * d, delta), zero, fisher, lam)
    np.testing.assert_allclose(p2, 4.0 * p1, rtol=1e-5, atol=1e-6)
    q1 = ewc_penalty(at, anchor, fisher, lam)
    q2 = ewc_penalty(at2, anchor, fisher, lam)
    np.testing.assert_allclose(q2, 4.0 * q1, rtol=1e-3, atol=1e-3)
    m1 = proximal_penalty(delta, zero, lam)
    m2 = proximal_penalty(jax.tree.map(lambda d: 2.0 * d, delta), zero, lam)
    np.testing.assert_allclose(m2, 4.0 * m1, rtol=1e-5, atol=1e-6)
    assert float(proximal_penalty(anchor, anchor, lam)) == 0.0


def test_ewc_gradient_and_proximal_is_unit_fisher():
    params = {"w": jnp.array([1.0, 2.0, -1.0])}
    anchor = {"w": jnp.array([0.0, 1.0, 1.0])}
    fisher = {"w": jnp.array([2.0, 0.0, 0.5])}
    g = jgrad(ewc_penalty)(params, anchor, fisher, 3.0)
    np.testing.assert_allclose(g["w"], 3.0 * fisher["w"] * (params["w"] - anchor["w"]))
    ones = jax.tree.map(jnp.ones_like, params)
    np.testing.assert_allclose(
        proximal_penalty(params, anchor, 0.7), ewc_penalty(params, anchor, ones, 0.7)
    )
    np.testing.assert_allclose(proximal_penalty(params, anchor, 2.0), 6.0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_penalty_dtypes(dtype):
    p = {"a": jnp.ones((3,), dtype)}
    z = {"a": jnp.zeros((3,), dtype)}
    assert ewc_penalty(p, z, p, 1.0).dtype == dtype
    assert proximal_penalty(p, z, 1.0).dtype == dtype
    g = jgrad(ewc_penalty)(p, z, p, 1.0)
    assert g["a"].dtype == dtype
    # Mixed-precision trees accumulate and return float32.
    mixed = {"a": jnp.ones((3,), dtype), "b": jnp.ones((2,), jnp.float32)}
    mixed0 = jax.tree.map(jnp.zeros_like, mixed)
    assert proximal_penalty(mixed, mixed0, 1.0).dtype == jnp.float32
    np.testing.assert_allclose(proximal_penalty(mixed, mixed0, 2.0), 5.0)


def test_penalty_structure_errors():
    p = {"a": jnp.ones(3)}
    with pytest.raises(ValueError, match="anchor must have the structure"):
        proximal_penalty(p, {"b": jnp.ones(3)}, 1.0)
    with pytest.raises(ValueError, match="share a shape"):
        ewc_penalty(p, {"a": jnp.ones(4)}, p, 1.0)
    with pytest.raises(ValueError, match="lam must be a scalar"):
        ewc_penalty(p, p, p, jnp.ones(2))


def loss_fn(params, example):
    x, y = example["x"], example["y"]
    pred = jnp.tanh(x @ params["w"] + params["b"])
    return jnp.sum((pred - y) ** 2)


def make_problem(n=6):
    kw, kx, ky = jax.random.split(jax.random.key(4), 3)
    params = {"w": jax.random.normal(kw, (3, 2)), "b": jnp.zeros((2,))}
    examples = {"x": jax.random.normal(kx, (n, 3)), "y": jax.random.normal(ky, (n, 2))}
    return params, examples


def test_fisher_diagonal_matches_hand_loop():
    params, examples = make_problem()
    grad_one = jgrad(loss_fn)
    want = jax.tree.map(jnp.zeros_like, params)
    n = examples["x"].shape[0]
    for i in range(n):
        g = grad_one(params, jax.tree.map(lambda a, i=i: a[i], examples))
        want = jax.tree.map(lambda w, gi: w + gi * gi / n, want, g)
    before = as_np(params)
    eager = fisher_diagonal(loss_fn, params, examples)
    assert_tree_equal(params, before)
    fisher = jax.jit(fisher_diagonal, static_argnums=0, static_argnames="batch_size")
    jitted = fisher(loss_fn, params, examples)
    chunked = fisher(loss_fn, params, examples, batch_size=4)
    for out in (eager, jitted, chunked):
        assert jax.tree.structure(out) == jax.tree.structure(params)
        jax.tree.map(
            lambda o, w: np.testing.assert_allclose(o, w, rtol=1e-5, atol=1e-7),
            out,
            want,
        )
        assert all(bool(jnp.all(leaf >= 0)) for leaf in jax.tree.leaves(out))


def test_fisher_diagonal_dtype_and_errors():
    params, examples = make_problem(3)
    half = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)

    def half_loss(p, e):
        return loss_fn(jax.tree.map(lambda x: x.astype(jnp.float32), p), e)

    out = jax.jit(fisher_diagonal, static_argnums=0)(half_loss, half, examples)
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(out))
    bad = {"x": jnp.zeros((3, 3)), "y": jnp.zeros((2, 2))}
    with pytest.raises(ValueError, match="leading"):
        fisher_diagonal(loss_fn, params, bad)
    with pytest.raises(ValueError, match="batch_size"):
        fisher_diagonal(loss_fn, params, examples, batch_size=0)


@settings(max_examples=15)
@given(tree_st(0, 1e3), tree_st(0, 1e3), floats(0, 1))
def test_online_fisher(fisher, new, decay):
    copies = (as_np(fisher), as_np(new))
    out = online_fisher(fisher, new, decay)
    assert_tree_equal(fisher, copies[0])
    assert_tree_equal(new, copies[1])
    jitted = jax.jit(online_fisher)(fisher, new, decay)
    for k in fisher:
        want = decay * fisher[k].astype(np.float64) + (1 - decay) * new[k]
        np.testing.assert_allclose(out[k], want, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(jitted[k], out[k], rtol=1e-6)
        assert out[k].dtype == jnp.float32
        assert bool(jnp.all(out[k] >= 0))
    # decay 1 keeps the old estimate, decay 0 takes the new one.
    assert_tree_equal(online_fisher(fisher, new, 1.0), fisher)
    assert_tree_equal(online_fisher(fisher, new, 0.0), new)


def test_online_fisher_errors():
    f = {"a": jnp.ones(2)}
    with pytest.raises(ValueError, match="decay must be in"):
        online_fisher(f, f, -0.1)
    with pytest.raises(ValueError, match="new_fisher must have the structure"):
        online_fisher(f, [jnp.ones(2)], 0.5)
