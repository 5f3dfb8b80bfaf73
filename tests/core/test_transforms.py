"""Property tests for the core update rules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ol_jax.core import (
    clamp_params,
    context_lr_multiplier,
    freeze_all_but,
    get_learning_rate,
    online_optimizer,
    path_str,
    set_learning_rate,
)

# optax's Adam mixes Python floats and int32 counts; see ol_jax/core/_step.py.
pytestmark = pytest.mark.usefixtures("standard_promotion")

finite32 = st.floats(-1e6, 1e6, allow_nan=False, width=32)
vec = hnp.arrays(np.float32, st.integers(1, 16), elements=finite32)
in_range = hnp.arrays(
    np.float32, 32, elements=st.floats(-5, 5, allow_nan=False, width=32)
)


@given(p=in_range, u=hnp.arrays(np.float32, 32, elements=finite32))
def test_clamp_holds_every_weight_in_range(p, u):
    tx = clamp_params(-5.0, 5.0)
    params = {"w": jnp.asarray(p)}
    updates, _ = jax.jit(tx.update)({"w": jnp.asarray(u)}, tx.init(params), params)
    new = np.asarray(optax.apply_updates(params, updates)["w"])
    assert new.min() >= -5.0 and new.max() <= 5.0
    inside = np.abs(p + u) < 4.9
    np.testing.assert_allclose(new[inside], (p + u)[inside], rtol=1e-5, atol=1e-5)


def test_clamp_exact_at_rounding_worst_cases():
    # Values whose sum rounds one ulp past the bound without the inward nudge.
    rng = np.random.default_rng(0)
    p = rng.uniform(-5, 5, 200_000).astype(np.float32)
    u = rng.uniform(-20, 20, 200_000).astype(np.float32)
    tx = clamp_params(-5.0, 5.0)
    upd, _ = tx.update(jnp.asarray(u), tx.init(jnp.asarray(p)), jnp.asarray(p))
    new = np.asarray(optax.apply_updates(jnp.asarray(p), upd))
    assert new.min() >= -5.0 and new.max() <= 5.0


def test_clamp_rejects_bad_bounds():
    with pytest.raises(ValueError, match="lo < hi"):
        clamp_params(5.0, -5.0)


@given(g=vec, clip=st.floats(0.01, 10.0))
def test_clipping_bounds_the_norm(g, clip):
    tx = online_optimizer(1.0, optimizer="sgd", clip_norm=clip)
    params = jnp.zeros_like(jnp.asarray(g))
    updates, _ = jax.jit(tx.update)(jnp.asarray(g), tx.init(params), params)
    assert float(optax.tree.norm(updates)) <= clip * (1 + 1e-5) + 1e-6


@pytest.mark.parametrize("opt", ["adamw", "adam", "sgd"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_jit_equals_nojit_and_state_is_stable(opt, dtype):
    tx = online_optimizer(
        0.01, optimizer=opt, weight_decay=1e-3, clamp=(-5.0, 5.0), momentum=0.9
    )
    params = {"a": jnp.linspace(-1, 1, 6, dtype=dtype), "b": jnp.ones((2, 3), dtype)}
    state = tx.init(params)
    jstate = jax.jit(tx.init)(params)
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), state)
    for i in range(3):
        g = jax.tree.map(lambda x, c=0.5 * (i + 1): jnp.full_like(x, c), params)
        u, state = tx.update(g, state, params)
        ju, jstate = jax.jit(tx.update)(g, jstate, params)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(
                np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=1e-6
            ),
            u,
            ju,
        )
        assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == shapes
        assert jax.tree.map(lambda x: x.dtype, u) == jax.tree.map(
            lambda x: x.dtype, params
        )
        params = optax.apply_updates(params, u)


def test_sgd_matches_hand_computed_value():
    tx = online_optimizer(0.1, optimizer="sgd", clip_norm=None, weight_decay=0.5)
    p = jnp.array([2.0, -4.0])
    g = jnp.array([1.0, 1.0])
    u, _ = tx.update(g, tx.init(p), p)
    # u = -lr * (g + wd * p)
    np.testing.assert_allclose(u, [-0.1 * (1 + 1.0), -0.1 * (1 - 2.0)], rtol=1e-6)


def test_nonfinite_gradient_is_skipped():
    tx = online_optimizer(0.1)
    p = jnp.ones(3)
    s0 = tx.init(p)
    u, s1 = tx.update(jnp.array([1.0, jnp.nan, 0.0]), s0, p)
    np.testing.assert_array_equal(u, 0.0)
    jax.tree.map(np.testing.assert_array_equal, s1.inner_state, s0.inner_state)
    assert not bool(s1.last_finite)


def test_freeze_all_but_named_layers():
    params = {
        "decoder": {str(i): {"kernel": jnp.ones(2)} for i in range(12)},
        "policy": {"mean": jnp.ones(2)},
    }
    tx = freeze_all_but(optax.sgd(1.0), ["decoder.1", "policy"])
    g = jax.tree.map(jnp.ones_like, params)
    u, _ = jax.jit(tx.update)(g, tx.init(params), params)
    flat = {path_str(k): v for k, v in jax.tree_util.tree_leaves_with_path(u)}
    assert np.all(flat["decoder.1.kernel"] == -1.0)
    assert np.all(flat["policy.mean"] == -1.0)
    assert np.all(flat["decoder.10.kernel"] == 0.0)  # prefix matches whole parts
    assert np.all(flat["decoder.0.kernel"] == 0.0)
    with pytest.raises(ValueError, match="non-empty"):
        freeze_all_but(optax.sgd(1.0), [])
    with pytest.raises(ValueError, match=r"\['decoder\.12'\] match no parameter"):
        freeze_all_but(optax.sgd(1.0), ["decoder.1", "decoder.12"]).init(params)


def test_online_optimizer_rejects_inverted_clamp_at_construction():
    with pytest.raises(ValueError, match="lo < hi, got lo=5"):
        online_optimizer(0.05, clamp=(5.0, -5.0))


def test_learning_rate_set_and_get():
    tx = online_optimizer(0.1, trainable=["w"])
    s = tx.init({"w": jnp.ones(2), "v": jnp.ones(2)})
    assert float(get_learning_rate(s)) == pytest.approx(0.1)
    s = set_learning_rate(s, 0.25)
    assert float(get_learning_rate(s)) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="learning_rate"):
        set_learning_rate(s, -1.0)
    with pytest.raises(ValueError, match="exactly one"):
        get_learning_rate(optax.sgd(0.1).init(jnp.ones(2)))


def test_online_optimizer_validates_arguments():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        online_optimizer(0.1, optimizer="rmsprop")
    with pytest.raises(ValueError, match="learning_rate must be > 0, got -1"):
        online_optimizer(-1)
    with pytest.raises(ValueError, match="clip_norm"):
        online_optimizer(0.1, clip_norm=0.0)


@given(
    context=st.sampled_from(["regular", "question", "fact", "replay"]),
    repetition=st.integers(0, 50),
)
def test_context_multiplier_is_bounded_and_monotone(context, repetition):
    kw = dict(repetition_boost=0.2, min_multiplier=0.25, max_multiplier=8.0)
    m = context_lr_multiplier(context, repetition=repetition, **kw)
    assert 0.25 <= m <= 8.0
    assert context_lr_multiplier(context, repetition=repetition + 1, **kw) >= m


def test_context_multiplier_table():
    assert [
        context_lr_multiplier(c) for c in ("regular", "question", "fact", "replay")
    ] == [1.0, 2.0, 5.0, 0.5]
    with pytest.raises(ValueError, match="context must be one of"):
        context_lr_multiplier("gossip")


def test_partition_and_merge_params_round_trip():
    from ol_jax.core import merge_params, partition_params

    params = {
        "policy": {"mean": jnp.zeros(2), "log_std": jnp.ones(2)},
        "decoder": {str(i): {"kernel": jnp.full(2, float(i))} for i in range(12)},
    }
    picked, rest = partition_params(params, ["policy", "decoder.1"])
    assert set(picked) == {"policy", "decoder"} and set(picked["decoder"]) == {"1"}
    assert "10" in rest["decoder"] and "policy" not in rest
    merged = merge_params(picked, rest)
    assert jax.tree.structure(merged) == jax.tree.structure(params)
    jax.tree.map(np.testing.assert_array_equal, merged, params)
    with pytest.raises(ValueError, match="selects no parameter"):
        partition_params(params, ["decoder.99"])
    with pytest.raises(ValueError, match="in both trees"):
        merge_params({"a": jnp.ones(1)}, {"a": jnp.ones(1)})
