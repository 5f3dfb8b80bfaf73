"""Tests for the routed model (frozen base + experts, trainable controller)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ol_jax.core import init_state, make_step, online_optimizer
from ol_jax.models import init_routed_mlp, routed_mlp_apply

_KW = dict(d_in=5, d_hidden=6, d_out=3, num_experts=4, rank=2)


def _params(controller_hidden=0):
    return init_routed_mlp(
        jax.random.key(0), controller_hidden=controller_hidden, **_KW
    )


@pytest.mark.parametrize("controller_hidden", [0, 7])
def test_shapes_and_uniform_initial_routing(controller_hidden):
    params = _params(controller_hidden)
    out = routed_mlp_apply(params, jnp.ones((5,), jnp.float32))
    assert out.output.shape == (3,) and out.route_logits.shape == (4,)
    assert out.expert_outputs.shape == (4, 3)
    # Zero-initialised controller: uniform routing, output = mean of experts.
    np.testing.assert_allclose(
        np.asarray(out.output),
        np.asarray(out.expert_outputs).mean(0),
        rtol=1e-5,
        atol=1e-6,
    )


def test_one_hot_routing_selects_expert():
    params = _params()
    x = jnp.linspace(-1.0, 1.0, 5, dtype=jnp.float32)
    for k in range(4):
        ctrl = {
            "w": jnp.zeros((6, 4), jnp.float32),
            "b": jnp.zeros((4,), jnp.float32).at[k].set(50.0),
        }
        out = routed_mlp_apply({**params, "controller": ctrl}, x)
        np.testing.assert_allclose(
            np.asarray(out.output), np.asarray(out.expert_outputs[k]), atol=1e-5
        )


@settings(max_examples=10)
@given(
    x=st.lists(st.floats(-5, 5, width=32), min_size=5, max_size=5),
    t=st.floats(0.1, 5.0),
)
def test_jit_equals_eager_finite_and_vmap(x, t):
    params = _params(3)
    x = jnp.asarray(x, jnp.float32)
    eager = routed_mlp_apply(params, x, temperature=t)
    jitted = jax.jit(lambda p, v: routed_mlp_apply(p, v, temperature=t))(params, x)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        eager,
        jitted,
    )
    assert all(np.all(np.isfinite(np.asarray(v))) for v in eager)
    assert eager.output.dtype == jnp.float32
    batched = jax.vmap(lambda v: routed_mlp_apply(params, v, temperature=t))(
        jnp.stack([x, x])
    )
    np.testing.assert_allclose(
        np.asarray(batched.output[1]), np.asarray(eager.output), rtol=1e-5, atol=1e-6
    )


def test_only_controller_changes_under_the_optax_mask():
    params = _params(3)
    before = jax.tree.map(np.array, params)
    tx = online_optimizer(1e-1, trainable=["controller"])

    def loss_fn(p, batch, *, frozen, extras, key):
        del frozen, extras, key
        out = jax.vmap(lambda v: routed_mlp_apply(p, v))(batch["x"])
        return jnp.mean(jnp.square(out.output - batch["y"]))

    step = make_step(loss_fn, tx)
    state = init_state(params, tx, key=jax.random.key(1))
    batch = {
        "x": jax.random.normal(jax.random.key(2), (8, 5)),
        "y": jax.random.normal(jax.random.key(3), (8, 3)),
    }
    for _ in range(5):
        state, metrics = step(state, batch)
    assert bool(metrics["applied"])
    for part in ("base", "experts"):
        jax.tree.map(np.testing.assert_array_equal, state.params[part], before[part])
    changed = jax.tree.map(
        lambda a, b: not np.array_equal(a, b),
        state.params["controller"],
        before["controller"],
    )
    assert any(jax.tree.leaves(changed))
    # The optimizer keeps no moments for frozen leaves.
    assert optax.tree.size(state.opt_state) < optax.tree.size(params) * 3


def test_bad_arguments():
    with pytest.raises(ValueError, match="rank"):
        init_routed_mlp(
            jax.random.key(0), d_in=2, d_hidden=2, d_out=2, num_experts=2, rank=3
        )
    with pytest.raises(ValueError, match="num_experts"):
        init_routed_mlp(jax.random.key(0), d_in=2, d_hidden=2, d_out=2, num_experts=0)
    with pytest.raises(ValueError, match="shape"):
        routed_mlp_apply(_params(), jnp.ones((2, 5), jnp.float32))
    with pytest.raises(ValueError, match="temperature"):
        routed_mlp_apply(_params(), jnp.ones((5,), jnp.float32), temperature=0.0)


# ----------------------------------------------------------------- Llama family

from ol_jax.models import (  # noqa: E402
    Llama,
    LlamaConfig,
    init_routed_llama,
    llama_base_params,
    routed_llama_apply,
)

_CFG = LlamaConfig(
    vocab_size=48,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def _llama_routed():
    model = Llama(_CFG, key=jax.random.key(0))
    params = init_routed_llama(
        jax.random.key(1),
        _CFG,
        llama_base_params(model),
        num_experts=3,
        rank=2,
        alpha=4.0,
        expert_std=0.3,
    )
    return model, params


def _merged_model(model, params, k):
    base = llama_base_params(model)
    weights = {
        "embed_tokens": base["embed_tokens"],
        "norm": base["norm"],
        **{"layers." + n: v for n, v in base["layers"].items()},
    }
    if base["lm_head"] is not None:
        weights["lm_head"] = base["lm_head"]
    s = params["experts"]["scale"]
    for name in ("q_proj", "v_proj"):
        a = params["experts"][name]["a"][k]
        b = params["experts"][name]["b"][k]
        weights["layers." + name] = weights["layers." + name] + s * jnp.einsum(
            "lir,lro->lio", a, b
        )
    return Llama(_CFG, key=jax.random.key(0), weights=weights)


def test_routed_llama_one_hot_equals_merged_expert():
    model, params = _llama_routed()
    tokens = jnp.array([3, 7, 1, 20, 5], jnp.int32)
    for k in range(3):
        ctrl = {
            "w": jnp.zeros((16, 3), jnp.float32),
            "b": jnp.zeros((3,), jnp.float32).at[k].set(60.0),
        }
        out = routed_llama_apply(_CFG, {**params, "controller": ctrl}, tokens)
        want = _merged_model(model, params, k)(tokens)
        np.testing.assert_allclose(
            np.asarray(out.logits), np.asarray(want), rtol=2e-4, atol=2e-4
        )
    # Experts with B = 0 leave the base model's logits.
    zero = jax.tree.map(jnp.zeros_like, params["experts"])
    out = routed_llama_apply(
        _CFG, {**params, "experts": {**zero, "scale": 1.0}}, tokens
    )
    np.testing.assert_allclose(
        np.asarray(out.logits), np.asarray(model(tokens)), rtol=1e-5, atol=1e-5
    )


def test_routed_llama_controller_trains_alone_and_jit_matches():
    _, params = _llama_routed()
    params = {
        **params,
        "experts": {**params["experts"], "scale": jnp.asarray(2.0, jnp.float32)},
    }
    tokens = jnp.array([[3, 7, 1, 20], [5, 5, 9, 2]], jnp.int32)
    mask = jnp.array([[True] * 4, [False, True, True, True]])
    apply = lambda p, t, m: routed_llama_apply(_CFG, p, t, attention_mask=m)
    eager = apply(params, tokens[1], mask[1])
    jitted = jax.jit(apply)(params, tokens[1], mask[1])
    np.testing.assert_allclose(
        np.asarray(eager.logits), np.asarray(jitted.logits), rtol=1e-5, atol=1e-5
    )
    assert eager.logits.shape == (4, 48) and eager.route_logits.shape == (3,)
    before = jax.tree.map(np.array, params)
    tx = online_optimizer(0.05, trainable=["controller"])

    def loss_fn(p, batch, *, frozen, extras, key):
        del frozen, extras, key
        out = jax.vmap(lambda t, m: apply(p, t, m))(batch["tokens"], batch["mask"])
        logp = jax.nn.log_softmax(out.logits, axis=-1)
        return -jnp.mean(logp[..., 0])

    step = make_step(loss_fn, tx)
    state = init_state(params, tx, key=jax.random.key(2))
    state, metrics = step(state, {"tokens": tokens, "mask": mask})
    assert bool(metrics["applied"]) and float(metrics["grad_norm"]) > 0
    for part in ("base", "experts"):
        jax.tree.map(np.testing.assert_array_equal, state.params[part], before[part])
    assert not np.array_equal(
        np.asarray(state.params["controller"]["w"]), before["controller"]["w"]
    )
