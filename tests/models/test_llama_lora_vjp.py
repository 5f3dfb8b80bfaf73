"""The LoRA update's custom backward pass equals plain autodiff of the forward.

Every adapted projection runs through one ``jax.custom_vjp`` (no gradient for the
frozen kernel) and the tied output head through another; their gradients must be
those of the same forward differentiated by ``jax.grad`` with the custom rules
replaced by their plain primal functions.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ol_jax.models import (
    LLAMA_PROJECTIONS,
    Llama,
    LlamaConfig,
    LoRAConfig,
    _llama,
    llama_apply,
    llama_apply_with_reference,
    split_lora,
)
from ol_jax.objectives import token_cross_entropy, token_kl

VOCAB, T = 60, 9
ALL = tuple(LLAMA_PROJECTIONS)


def _config(tied: bool) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
        attention_bias=True,
        model_type="qwen2",
    )


def _grads(targets, b_values, tokens, weights, *, tied=True, dropout=0.0, plain):
    """LoRA gradients of ``CE + KL(base || adapted)`` on a tiny model."""
    lora_config = LoRAConfig(rank=3, alpha=6.0, dropout=dropout, target_modules=targets)
    model = Llama(_config(tied), lora_config=lora_config, key=jax.random.key(0))
    graphdef, base, lora = split_lora(model)
    leaves, treedef = jax.tree.flatten(lora)
    # Non-zero B (and A) so every adapter term carries a gradient.
    lora = jax.tree.unflatten(
        treedef,
        [x + 0.1 * b_values[: x.size].reshape(x.shape) for x in leaves],
    )
    key = jax.random.key(7) if dropout else None
    inputs, labels = tokens[:-1], tokens[1:]

    def loss(lora):
        ref, logits = llama_apply_with_reference(
            graphdef, lora, inputs, frozen=base, key=key
        )
        ce = token_cross_entropy(logits, labels, weights=weights)
        again = llama_apply(graphdef, lora, inputs, frozen=base, key=key)
        return ce + token_kl(ref, logits) + 0.5 * jnp.mean(again**2)

    if not plain:
        return jax.jit(jax.grad(loss))(lora)
    # The reference: the custom rules swapped for their primal functions, traced
    # afresh (jit off, so no program compiled with the custom rules is reused).
    with pytest.MonkeyPatch.context() as mp, jax.disable_jit():
        mp.setattr(_llama, "_adapted_dot", _llama._adapted_dot.fun)
        mp.setattr(_llama, "_tied_head_dot", _llama._tied_head_dot.fun)
        return jax.grad(loss)(lora)


def _check(targets, b_values, tokens, weights, atol=1e-5, **kw):
    got = _grads(targets, b_values, tokens, weights, plain=False, **kw)
    want = _grads(targets, b_values, tokens, weights, plain=True, **kw)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=atol)
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(got))


_TOKENS = (jnp.arange(T + 1, dtype=jnp.int32) * 7) % VOCAB
_WEIGHTS = jnp.linspace(0.5, 1.5, T, dtype=jnp.float32)
_B = jnp.sin(jnp.arange(2 * 48 * 3 * 2, dtype=jnp.float32))


@pytest.mark.parametrize(
    "targets",
    [(name,) for name in ALL] + [ALL],
    ids=lambda t: "+".join(t),
)
def test_custom_vjp_lora_grads_equal_plain_autodiff(targets):
    _check(targets, _B, _TOKENS, _WEIGHTS)


@pytest.mark.parametrize("tied", [True, False])
def test_custom_vjp_with_dropout_and_untied_head(tied):
    _check(("q_proj", "down_proj"), _B, _TOKENS, _WEIGHTS, tied=tied, dropout=0.25)


# Every subset the config allows, sampled: each draw compiles two programs.
_SUBSETS = [c for n in range(1, len(ALL) + 1) for c in itertools.combinations(ALL, n)]


@settings(max_examples=8)
@given(
    targets=st.sampled_from(_SUBSETS),
    b_values=hnp.arrays(
        np.float32,
        2 * 48 * 3 * 2,
        elements=st.floats(-1.0, 1.0, width=32, allow_nan=False),
    ),
    tokens=hnp.arrays(np.int32, T + 1, elements=st.integers(0, VOCAB - 1)),
    weights=hnp.arrays(np.float32, T, elements=st.floats(0.0, 2.0, width=32)),
)
def test_custom_vjp_property_any_target_set(targets, b_values, tokens, weights):
    _check(
        targets,
        jnp.asarray(b_values),
        jnp.asarray(tokens),
        jnp.asarray(weights),
        # Random draws reach ~1.1e-5 on single elements: float32 summation order
        # (the reference runs eagerly, the custom path jitted).
        atol=3e-5,
    )
