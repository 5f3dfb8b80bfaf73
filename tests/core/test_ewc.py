"""Tests for the EWC optax transform with a streaming diagonal Fisher."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ol_jax.core import EwcState, ewc, ewc_set_anchor


def floats(lo, hi):
    return st.floats(
        float(np.float32(lo)), float(np.float32(hi)), width=32, allow_subnormal=False
    )


def make_params(dtype=jnp.float32):
    return {
        "w": jnp.arange(6, dtype=jnp.float32).reshape(3, 2).astype(dtype),
        "b": jnp.array([0.5, -0.5], dtype),
    }


def tree_arrays(lo, hi):
    return st.fixed_dictionaries(
        {
            "w": hnp.arrays(np.float32, (3, 2), elements=floats(lo, hi)),
            "b": hnp.arrays(np.float32, (2,), elements=floats(lo, hi)),
        }
    )


def shapes_dtypes(tree):
    return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)


def test_init_and_update_jit():
    tx = ewc(lam=2.0, fisher_decay=0.9)
    params = make_params()
    state = jax.jit(tx.init)(params)
    assert isinstance(state, EwcState)
    jax.tree.map(np.testing.assert_array_equal, state.anchor, params)
    assert all(bool(jnp.all(f == 0)) for f in jax.tree.leaves(state.fisher))
    assert state.count.dtype == jnp.int32 and int(state.count) == 0
    grads = jax.tree.map(jnp.ones_like, params)
    updates, new_state = jax.jit(tx.update)(grads, state, params)
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    assert int(new_state.count) == 1


@settings(max_examples=15)
@given(tree_arrays(-10, 10), tree_arrays(-10, 10), tree_arrays(-10, 10))
def test_matches_hand_computed_values(anchor, grads, delta):
    lam, decay = 3.0, 0.8
    fisher0 = jax.tree.map(lambda a: np.abs(a) / 10.0, delta)
    tx = ewc(lam, decay, fisher_init=fisher0)
    state = tx.init(anchor)
    params = jax.tree.map(lambda a, d: a + d, anchor, delta)
    copies = [jax.tree.map(np.copy, t) for t in (anchor, grads, params)]
    updates, new_state = jax.jit(tx.update)(grads, state, params)
    eager_updates, eager_state = tx.update(grads, state, params)
    for t, c in zip((anchor, grads, params), copies, strict=True):
        jax.tree.map(np.testing.assert_array_equal, t, c)
    for k in anchor:
        f = decay * fisher0[k].astype(np.float64) + (1 - decay) * grads[k] ** 2
        want = grads[k] + lam * f * (params[k].astype(np.float64) - anchor[k])
        np.testing.assert_allclose(new_state.fisher[k], f, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(updates[k], want, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(eager_updates[k], updates[k], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(eager_state.fisher[k], new_state.fisher[k], 1e-6)
        assert bool(jnp.all(jnp.isfinite(updates[k])))
    jax.tree.map(np.testing.assert_array_equal, new_state.anchor, anchor)


def test_zero_pull_at_anchor_and_no_fisher():
    tx = ewc(lam=100.0, fisher_decay=0.5)
    params = make_params()
    state = tx.init(params)
    grads = jax.tree.map(lambda p: 0.1 * p + 1.0, params)
    # At the anchor the update is exactly the gradient, whatever the Fisher.
    updates, _ = tx.update(grads, state, params)
    jax.tree.map(np.testing.assert_array_equal, updates, grads)
    # Away from it, the pull is lam * F * (theta - theta*).
    moved = jax.tree.map(lambda p: p + 2.0, params)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, new_state = tx.update(zero, state, moved)
    jax.tree.map(np.testing.assert_array_equal, updates, zero)  # F is still 0
    updates, _ = tx.update(grads, new_state, moved)
    for k in params:
        f = 0.5 * grads[k] ** 2
        np.testing.assert_allclose(updates[k], grads[k] + 100.0 * f * 2.0, rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_state_shape_dtype_stability(dtype):
    tx = ewc(lam=1.0, fisher_decay=0.99)
    params = make_params(dtype)
    init = jax.jit(tx.init)
    update = jax.jit(tx.update)
    state = init(params)
    spec = shapes_dtypes(state)
    structure = jax.tree.structure(state)
    for i in range(5):
        grads = jax.tree.map(lambda p, i=i: jnp.full_like(p, 0.1 * (i + 1)), params)
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, jax.tree.map(lambda u: -0.1 * u, updates))
        assert jax.tree.structure(state) == structure
        assert shapes_dtypes(state) == spec
        assert shapes_dtypes(updates) == shapes_dtypes(grads)
        assert shapes_dtypes(params) == shapes_dtypes(make_params(dtype))
    assert int(state.count) == 5


def test_in_a_chain_pulls_back_towards_anchor():
    # With no task gradient beyond a fixed push, EWC resists leaving the anchor.
    params = {"w": jnp.zeros((2,))}
    push = {"w": jnp.array([1.0, 1.0])}

    def run(lam):
        tx = optax.chain(ewc(lam, 0.0), optax.sgd(0.1))
        state = tx.init(params)
        p = params
        for _ in range(20):
            u, state = tx.update(push, state, p)
            p = optax.apply_updates(p, u)
        return p

    free = run(0.0)
    held = run(10.0)
    assert float(jnp.linalg.norm(held["w"])) < 0.5 * float(jnp.linalg.norm(free["w"]))


def test_set_anchor_bare_chained_and_masked():
    tx = ewc(lam=1.0, fisher_decay=0.9)
    params = make_params()
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, state = tx.update(grads, state, params)
    new_params = jax.tree.map(lambda p: p + 1.0, params)
    before = jax.tree.map(np.copy, state.anchor)
    moved = ewc_set_anchor(state, new_params)
    jax.tree.map(np.testing.assert_array_equal, state.anchor, before)  # pure
    jax.tree.map(np.testing.assert_array_equal, moved.anchor, new_params)
    jax.tree.map(np.testing.assert_array_equal, moved.fisher, state.fisher)
    assert int(moved.count) == int(state.count)
    # At the new anchor the update is the plain gradient again.
    updates, _ = tx.update(grads, moved, new_params)
    jax.tree.map(np.testing.assert_array_equal, updates, grads)

    chain = optax.chain(optax.clip_by_global_norm(1.0), ewc(1.0, 0.9), optax.sgd(0.1))
    cstate = jax.jit(ewc_set_anchor)(chain.init(params), new_params)
    jax.tree.map(np.testing.assert_array_equal, cstate[1].anchor, new_params)

    masked = optax.masked(ewc(1.0, 0.9), {"w": True, "b": False})
    mstate = ewc_set_anchor(masked.init(params), new_params)
    np.testing.assert_array_equal(mstate.inner_state.anchor["w"], new_params["w"])
    assert isinstance(mstate.inner_state.anchor["b"], optax.MaskedNode)
    u, _ = masked.update(grads, mstate, new_params)
    jax.tree.map(np.testing.assert_array_equal, u, grads)


def test_errors():
    tx = ewc(1.0, 0.5)
    params = make_params()
    state = tx.init(params)
    with pytest.raises(ValueError, match="ewc needs params"):
        tx.update(params, state)
    with pytest.raises(ValueError, match="lam must be"):
        ewc(-1.0, 0.5)
    with pytest.raises(ValueError, match="fisher_decay must be"):
        ewc(1.0, 1.5)
    with pytest.raises(ValueError, match="fisher_init must have the structure"):
        ewc(1.0, 0.5, fisher_init={"w": jnp.ones((3, 2))}).init(params)
    with pytest.raises(ValueError, match="fisher_init leaf must have shape"):
        bad = {"w": jnp.ones((3, 2)), "b": jnp.ones((3,))}
        ewc(1.0, 0.5, fisher_init=bad).init(params)
    with pytest.raises(ValueError, match="holds no EwcState"):
        ewc_set_anchor(optax.sgd(0.1).init(params), params)
