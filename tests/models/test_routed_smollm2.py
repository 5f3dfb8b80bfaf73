"""The routed Llama variant on the real SmolLM2-135M (slow: loads the GGUF)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ol_jax.models import (
    LlamaConfig,
    init_routed_llama,
    llama_base_params,
    llama_params_from_hf,
    load_pretrained,
    routed_llama_apply,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.slow


def test_routed_smollm2_routes_on_pooled_hidden_state():
    loaded = load_pretrained("smollm2-135m")
    config = LlamaConfig.from_hf_dict(loaded.config)
    model = llama_params_from_hf(config, loaded.tensors)
    params = init_routed_llama(
        jax.random.key(0),
        config,
        llama_base_params(model),
        num_experts=3,
        rank=4,
        controller_hidden=16,
    )
    ids = jnp.asarray(loaded.tokenizer("The capital of France is").input_ids, jnp.int32)
    apply = jax.jit(lambda p, t: routed_llama_apply(config, p, t))
    # Zero expert deltas: the routed model is the base model.
    zero = {
        **params,
        "experts": {
            **jax.tree.map(jnp.zeros_like, params["experts"]),
            "scale": jnp.asarray(1.0, jnp.float32),
        },
    }
    out = apply(zero, ids)
    np.testing.assert_allclose(
        np.asarray(out.logits), np.asarray(model(ids)), atol=1e-3, rtol=1e-3
    )
    # The controller sees the prompt: different prompts route differently.
    ctrl = jax.tree.map(
        lambda a: jax.random.normal(jax.random.key(1), a.shape, a.dtype),
        params["controller"],
    )
    routed = {**params, "controller": ctrl}
    other = jnp.asarray(loaded.tokenizer("def fibonacci(n):").input_ids, jnp.int32)
    r1 = apply(routed, ids).route_logits
    r2 = apply(routed, other).route_logits
    assert np.all(np.isfinite(np.asarray(r1))) and not np.allclose(r1, r2)
    logits = apply(routed, ids).logits
    assert logits.shape == (ids.shape[0], config.vocab_size)
    assert np.all(np.isfinite(np.asarray(logits)))
