"""Llama / Qwen2 decoder: parity with transformers, configs, dtypes, pure apply."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from ol_jax.models import (
    Llama,
    LlamaConfig,
    LoRAConfig,
    llama_apply,
    llama_params_from_hf,
    llama_params_to_hf,
    split_lora,
)

VOCAB = 97


def _hf_model(kind: str, *, tied: bool, kv_heads: int = 2, layers: int = 3, **extra):
    """A tiny random transformers model and its state dict as numpy."""
    torch.manual_seed(0)
    kw = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        tie_word_embeddings=tied,
        rope_theta=5000.0,
        rms_norm_eps=1e-5,
        **extra,
    )
    if kind == "llama":
        hf_config = transformers.LlamaConfig(**kw)
        model = transformers.LlamaForCausalLM(hf_config)
    else:
        hf_config = transformers.Qwen2Config(**kw)
        model = transformers.Qwen2ForCausalLM(hf_config)
        # transformers initialises biases to zero; make them matter.
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0.0, 0.1)
    model.eval()
    tensors = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return hf_config, model, tensors


def _torch_logits(model, tokens: np.ndarray, mask: np.ndarray | None = None):
    with torch.no_grad():
        kwargs = {}
        if mask is not None:
            kwargs["attention_mask"] = torch.tensor(mask.astype(np.int64))
            pos = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)
            kwargs["position_ids"] = torch.tensor(pos.astype(np.int64))
        return model(torch.tensor(tokens.astype(np.int64)), **kwargs).logits.numpy()


@pytest.mark.parametrize(
    "kind,tied,kv_heads",
    [
        ("llama", False, 2),
        ("llama", True, 2),
        ("llama", False, 4),
        ("qwen2", False, 2),
        ("qwen2", True, 1),
    ],
)
def test_parity_with_transformers(kind, tied, kv_heads):
    hf_config, torch_model, tensors = _hf_model(kind, tied=tied, kv_heads=kv_heads)
    config = LlamaConfig.from_hf_dict(hf_config.to_dict())
    assert config.attention_bias == (kind == "qwen2")
    assert config.num_key_value_heads == kv_heads
    assert config.tie_word_embeddings == tied
    model = llama_params_from_hf(config, tensors)
    tokens = np.random.RandomState(1).randint(0, VOCAB, (2, 11))
    ours = np.asarray(model(jnp.asarray(tokens)))
    np.testing.assert_allclose(ours, _torch_logits(torch_model, tokens), atol=1e-4)
    # A single unbatched sequence gives the same rows.
    single = np.asarray(model(jnp.asarray(tokens[1])))
    np.testing.assert_allclose(single, ours[1], atol=1e-5)


def test_parity_left_padding_matches_transformers():
    hf_config, torch_model, tensors = _hf_model("llama", tied=False)
    model = llama_params_from_hf(LlamaConfig.from_hf_dict(hf_config.to_dict()), tensors)
    tokens = np.random.RandomState(2).randint(0, VOCAB, (2, 9))
    mask = np.ones((2, 9), bool)
    mask[0, :4] = False
    ours = np.asarray(model(jnp.asarray(tokens), attention_mask=jnp.asarray(mask)))
    ref = _torch_logits(torch_model, tokens, mask)
    np.testing.assert_allclose(ours[mask], ref[mask], atol=1e-4)
    # The padded row equals the same row run without its padding.
    alone = np.asarray(model(jnp.asarray(tokens[0, 4:])))
    np.testing.assert_allclose(ours[0, 4:], alone, atol=1e-5)


def test_parity_llama3_rope_scaling():
    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    }
    hf_config, torch_model, tensors = _hf_model(
        "llama", tied=True, rope_parameters={"rope_theta": 5000.0, **scaling}
    )
    config = LlamaConfig.from_hf_dict(hf_config.to_dict())
    assert config.rope_type == "llama3"
    model = llama_params_from_hf(config, tensors)
    tokens = np.random.RandomState(3).randint(0, VOCAB, (1, 40))
    ours = np.asarray(model(jnp.asarray(tokens)))
    np.testing.assert_allclose(ours, _torch_logits(torch_model, tokens), atol=1e-4)


@pytest.mark.parametrize("kind,tied", [("llama", False), ("qwen2", True)])
def test_hf_round_trip(kind, tied):
    _, _, tensors = _hf_model(kind, tied=tied)
    hf_config = _hf_model(kind, tied=tied)[0]
    config = LlamaConfig.from_hf_dict(hf_config.to_dict())
    back = llama_params_to_hf(llama_params_from_hf(config, tensors))
    expected = {k for k in tensors if not (tied and k == "lm_head.weight")}
    assert set(back) == expected
    for name, value in back.items():
        np.testing.assert_array_equal(value, tensors[name])
    # From a split base state too.
    _, base, _ = split_lora(llama_params_from_hf(config, tensors))
    back2 = llama_params_to_hf(base, config)
    for name, value in back2.items():
        np.testing.assert_array_equal(value, tensors[name])


def test_missing_tensor_is_named():
    hf_config, _, tensors = _hf_model("qwen2", tied=False)
    config = LlamaConfig.from_hf_dict(hf_config.to_dict())
    for name in ("model.layers.2.self_attn.k_proj.bias", "lm_head.weight"):
        partial = {k: v for k, v in tensors.items() if k != name}
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            llama_params_from_hf(config, partial)
    bad = dict(tensors)
    bad["model.norm.weight"] = np.ones(5, np.float32)
    with pytest.raises(ValueError, match="model.norm.weight"):
        llama_params_from_hf(config, bad)


def test_config_from_hf_dict_errors_and_legacy_rope():
    base = dict(
        model_type="llama",
        vocab_size=10,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
    )
    with pytest.raises(ValueError, match="gpt2"):
        LlamaConfig.from_hf_dict({**base, "model_type": "gpt2"})
    with pytest.raises(ValueError, match="yarn"):
        LlamaConfig.from_hf_dict({**base, "rope_scaling": {"rope_type": "yarn"}})
    with pytest.raises(ValueError, match="dtype"):
        LlamaConfig.from_hf_dict(base, dtype="float16")
    legacy = LlamaConfig.from_hf_dict(
        {**base, "rope_theta": 123.0, "rope_scaling": None}
    )
    assert legacy.rope_theta == 123.0 and legacy.rope_scaling is None
    assert legacy.head_dim == 4 and legacy.num_key_value_heads == 2
    qwen = LlamaConfig.from_hf_dict(
        {**base, "model_type": "qwen2", "eos_token_id": [3, 4]}
    )
    assert qwen.attention_bias and qwen.eos_token_ids == (3, 4)
    hash(qwen)
    with pytest.raises(ValueError, match="num_key_value_heads"):
        LlamaConfig(
            vocab_size=10,
            hidden_size=8,
            intermediate_size=8,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=3,
        )
    with pytest.raises(ValueError, match="target module"):
        LoRAConfig(target_modules=("c_attn",))


TINY = LlamaConfig(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rope_theta=5000.0,
    eos_token_id=3,
)


def test_bf16_close_to_f32():
    model32 = Llama(TINY, key=jax.random.key(0))
    tensors = llama_params_to_hf(model32)
    model16 = llama_params_from_hf(dataclasses.replace(TINY, dtype="bfloat16"), tensors)
    assert model16.layers.q_proj.kernel[...].dtype == jnp.bfloat16
    tokens = jnp.arange(12, dtype=jnp.int32) % VOCAB
    l32, l16 = model32(tokens), model16(tokens)
    assert l16.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(l16)))
    np.testing.assert_allclose(np.asarray(l16), np.asarray(l32), atol=3e-2)


def test_split_apply_matches_module_and_jit():
    model = Llama(TINY, lora_config=LoRAConfig(rank=2), key=jax.random.key(1))
    graphdef, base, lora = split_lora(model)
    assert all(isinstance(v, nnx.LoRAParam) for _, v in nnx.to_flat_state(lora)), (
        "the trainable state must hold only LoRAParam leaves"
    )
    names = {path[-1] for path, _ in nnx.to_flat_state(lora)}
    assert names == {"lora_a", "lora_b"}
    tokens = jnp.arange(2 * 6, dtype=jnp.int32).reshape(2, 6) % VOCAB
    eager = llama_apply(graphdef, lora, tokens, frozen=base)
    jitted = jax.jit(llama_apply, static_argnames="use_lora")(
        graphdef, lora, tokens, frozen=base
    )
    np.testing.assert_allclose(np.asarray(eager), np.asarray(model(tokens)), atol=0)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-5)


def test_rejects_bad_inputs():
    model = Llama(TINY, key=jax.random.key(0))
    with pytest.raises(ValueError, match="tokens"):
        model(jnp.zeros((1, 2, 3), jnp.int32))
    with pytest.raises(ValueError, match="integer"):
        model(jnp.zeros((3,), jnp.float32))
    with pytest.raises(ValueError, match="attention_mask"):
        model(jnp.zeros((2, 3), jnp.int32), attention_mask=jnp.ones((2, 4), bool))


@settings(max_examples=5)
@given(
    length=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_forward_properties(length, seed):
    model = Llama(TINY, key=jax.random.key(2))
    graphdef, base, lora = split_lora(model)
    tokens = jax.random.randint(jax.random.key(seed), (length,), 0, VOCAB)
    before = np.asarray(tokens).copy()
    logits = jax.jit(llama_apply)(graphdef, lora, tokens, frozen=base)
    assert logits.shape == (length, VOCAB) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    np.testing.assert_array_equal(np.asarray(tokens), before)
    # Causality: appending a token does not change earlier logits.
    longer = jnp.concatenate([tokens, jnp.zeros((1,), tokens.dtype)])
    np.testing.assert_allclose(
        np.asarray(model(longer)[:length]), np.asarray(logits), atol=1e-5
    )
