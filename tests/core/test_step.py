"""Tests of ``make_step``: metrics, skipping, recompilation, vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ol_jax.core import (
    OnlineState,
    init_state,
    make_step,
    online_optimizer,
    set_learning_rate,
)


def quadratic(params, batch, *, frozen, extras, key):
    del extras, key
    scale = 1.0 if frozen is None else frozen
    return jnp.sum((params["w"] - batch["target"]) ** 2) * scale + jnp.sum(
        params["b"] ** 2
    )


def fresh(lr=0.1, **kw):
    tx = online_optimizer(lr, clip_norm=1.0, **kw)
    params = {"w": jnp.zeros(4), "b": jnp.ones(2)}
    return tx, init_state(params, tx, key=jax.random.key(0))


def test_metrics_and_state_structure():
    tx, state = fresh()
    step = make_step(quadratic, tx)
    structure = jax.tree.map(lambda x: (x.shape, x.dtype), state)
    for _ in range(3):
        state, m = step(state, {"target": jnp.full(4, 3.0)})
        assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == structure
    assert set(m) == {
        "loss",
        "grad_norm",
        "update_norm",
        "param_norm",
        "applied",
        "learning_rate",
    }
    assert int(state.step) == 3 and bool(m["applied"])
    assert float(m["grad_norm"]) > 1.0  # reported before clipping
    assert float(m["learning_rate"]) == np.float32(0.1)


_TX, _ = fresh()
_RAW = make_step(quadratic, _TX, jit=False)
_JIT = make_step(quadratic, _TX, donate=False)


@given(target=hnp.arrays(np.float32, 4, elements=st.floats(-100, 100, width=32)))
def test_jit_equals_nojit_and_batch_not_mutated(target):
    _, s1 = fresh()
    _, s2 = fresh()
    batch = {"target": jnp.asarray(target)}
    before = np.array(batch["target"])
    a, ma = _RAW(s1, batch)
    b, mb = _JIT(s2, batch)
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5), a.params, b.params
    )
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-5)
    np.testing.assert_array_equal(batch["target"], before)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(a.params))


def assert_skipped(after, before, metrics):
    """The update was not applied: parameters and optimizer state unchanged."""
    assert not bool(metrics["applied"])
    jax.tree.map(np.testing.assert_array_equal, after.params, before.params)
    jax.tree.map(
        np.testing.assert_array_equal,
        after.opt_state.inner_state,
        before.opt_state.inner_state,
    )


def test_nonfinite_loss_leaves_params_unchanged():
    tx, state = fresh()
    step = make_step(quadratic, tx, donate=False)
    good, _ = step(state, {"target": jnp.ones(4)})
    bad, m = step(good, {"target": jnp.full(4, jnp.nan)})
    assert_skipped(bad, good, m)


@given(
    bad=st.sampled_from([np.nan, np.inf, -np.inf]),
    leaf=st.sampled_from(["w", "b"]),
    index=st.integers(0, 1),
    in_loss_only=st.booleans(),
)
def test_one_nonfinite_value_skips_the_update(bad, leaf, index, in_loss_only):
    """A single non-finite gradient element, or a non-finite loss whose gradient
    is finite (the bad term carries no gradient), skips the whole update."""

    def loss(params, batch, *, frozen, extras, key):
        value = quadratic(params, batch, frozen=frozen, extras=extras, key=key)
        if in_loss_only:
            return value + jax.lax.stop_gradient(batch["bad"])
        # d/dx (bad * x) at the chosen element is `bad`; elsewhere 0.
        return value + batch["bad"] * params[leaf][index]

    tx, state = fresh()
    step = make_step(loss, tx, donate=False)
    good, _ = step(state, {"target": jnp.ones(4), "bad": jnp.float32(0.0)})
    skipped, m = step(good, {"target": jnp.ones(4), "bad": jnp.float32(bad)})
    assert_skipped(skipped, good, m)


def test_learning_rate_change_does_not_recompile():
    tx, state = fresh()
    step = make_step(quadratic, tx)
    batch = {"target": jnp.ones(4)}
    state, _ = step(state, batch)
    for lr in (0.5, 0.01, 2.0):
        state = set_learning_rate(state, lr)
        state, m = step(state, batch)
        assert float(m["learning_rate"]) == np.float32(lr)
    assert step._cache_size() == 1


def test_extras_update_and_aux():
    def loss(params, batch, *, frozen, extras, key):
        del frozen, key
        reward = batch["reward"]
        return -(reward - extras["baseline"]) * jnp.sum(params["w"]), {"r": reward}

    def move_baseline(extras, batch, aux):
        del batch
        return {"baseline": 0.5 * extras["baseline"] + 0.5 * aux["r"]}

    tx = optax.sgd(0.1)
    state = init_state(
        {"w": jnp.zeros(2)},
        tx,
        key=jax.random.key(1),
        extras={"baseline": jnp.zeros(())},
    )
    step = make_step(loss, tx, has_aux=True, extras_update=move_baseline)
    state, m = step(state, {"reward": jnp.float32(1.0)})
    assert float(state.extras["baseline"]) == 0.5
    assert float(m["aux"]["r"]) == 1.0
    np.testing.assert_allclose(state.params["w"], [0.1, 0.1])  # advantage 1 - 0
    assert np.isnan(float(m["learning_rate"]))


def test_step_key_is_folded_from_step_count():
    seen = []

    def loss(params, batch, *, frozen, extras, key):
        seen.append(key)
        return jnp.sum(params) * jax.random.uniform(key)

    tx = optax.sgd(0.1)
    state = init_state(jnp.ones(2), tx, key=jax.random.key(3))
    step = make_step(loss, tx, jit=False)
    state, _ = step(state, None)
    state, _ = step(state, None)
    k0, k1 = (jax.random.key_data(k) for k in seen)
    assert not np.array_equal(k0, k1)
    np.testing.assert_array_equal(
        k1, jax.random.key_data(jax.random.fold_in(jax.random.key(3), 1))
    )


def test_vmap_over_networks_equals_separate_steps():
    n = 5
    tx = online_optimizer(0.1, clip_norm=1.0)
    targets = jnp.arange(n * 4, dtype=jnp.float32).reshape(n, 4)
    states = [
        init_state(
            {"w": jnp.full(4, float(i)), "b": jnp.ones(2)}, tx, key=jax.random.key(i)
        )
        for i in range(n)
    ]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    raw = make_step(quadratic, tx, jit=False)
    vstep = jax.jit(jax.vmap(raw, in_axes=(0, 0, None)))
    out, metrics = vstep(stacked, {"target": targets}, jnp.float32(2.0))
    assert isinstance(out, OnlineState) and metrics["loss"].shape == (n,)
    one = make_step(quadratic, tx, donate=False)
    for i, s in enumerate(states):
        ref, _ = one(s, {"target": targets[i]}, jnp.float32(2.0))
        got = jax.tree.map(lambda x, i=i: x[i], out.params)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, ref.params
        )


@pytest.mark.parametrize("key", [0, np.uint32(7), np.zeros((3,), np.uint32), "seed"])
def test_init_state_refuses_a_key_that_is_not_a_prng_key(key):
    with pytest.raises(TypeError, match="key must be a PRNG key"):
        init_state({"w": jnp.ones(2)}, optax.sgd(0.1), key=key)


@pytest.mark.parametrize("key", [jax.random.key(0), jax.random.PRNGKey(0)])
def test_init_state_takes_typed_and_legacy_keys(key):
    state = init_state({"w": jnp.ones(2)}, optax.sgd(0.1), key=key)
    assert state.key is key
