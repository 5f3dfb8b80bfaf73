"""PEFT adapter export / import, checked against PEFT + transformers in PyTorch."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
import transformers
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

from ol_jax.models import (
    LlamaConfig,
    LoRAConfig,
    PeftAdapter,
    llama_apply,
    llama_params_from_hf,
    load_hf_folder,
    load_peft_adapter,
    lora_from_peft,
    lora_to_peft,
    save_peft_adapter,
    split_lora,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TOKENS = np.array([[3, 17, 42, 5, 9, 60, 1], [8, 8, 30, 2, 55, 11, 4]], np.int32)
TARGETS = ("q_proj", "v_proj", "down_proj")


def tiny_torch_model(model_type, seed=0):
    kwargs = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    cls = (
        transformers.LlamaConfig if model_type == "llama" else transformers.Qwen2Config
    )
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(cls(**kwargs)).eval()


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def pair(request, tmp_path_factory):
    """A transformers model and ours built from its saved folder."""
    folder = tmp_path_factory.mktemp(request.param)
    torch_model = tiny_torch_model(request.param)
    torch_model.save_pretrained(folder)
    loaded = load_hf_folder(folder, tokenizer=False)
    config = LlamaConfig.from_hf_dict(loaded.config)
    lora_config = LoRAConfig(rank=4, alpha=8.0, target_modules=TARGETS)
    ours = llama_params_from_hf(config, loaded.tensors, lora_config=lora_config)
    return folder, config, lora_config, ours


def torch_logits(model):
    with torch.no_grad():
        return model(torch.as_tensor(TOKENS, dtype=torch.long)).logits.numpy()


def random_lora(lora, seed):
    leaves, treedef = jax.tree.flatten(nnx.to_pure_dict(lora))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [
        0.2 * jax.random.normal(k, x.shape, jnp.float32)
        for k, x in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, leaves)


def test_exported_adapter_loads_in_peft(pair, tmp_path):
    folder, config, lora_config, ours = pair
    graphdef, base, lora = split_lora(ours)
    trained = random_lora(lora, seed=1)
    logits = np.asarray(
        llama_apply(graphdef, trained, jnp.asarray(TOKENS), frozen=base)
    )
    base_logits = np.asarray(
        llama_apply(graphdef, trained, jnp.asarray(TOKENS), frozen=base, use_lora=False)
    )
    out = save_peft_adapter(tmp_path / "adapter", lora_to_peft(trained, lora_config))
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"

    torch_model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, local_files_only=True, attn_implementation="eager"
    ).eval()
    np.testing.assert_allclose(torch_logits(torch_model), base_logits, atol=1e-4)
    peft_model = peft.PeftModel.from_pretrained(torch_model, out).eval()
    assert peft_model.peft_config["default"].r == 4
    theirs = torch_logits(peft_model)
    assert np.abs(theirs - base_logits).max() > 1e-2  # the adapter matters
    np.testing.assert_allclose(theirs, logits, atol=1e-4)


def test_peft_made_adapter_imports(pair, tmp_path):
    folder, config, _, ours = pair
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, local_files_only=True, attn_implementation="eager"
    )
    peft_config = peft.LoraConfig(
        r=2,
        lora_alpha=6,
        lora_dropout=0.0,
        target_modules=["k_proj", "o_proj", "up_proj"],
        task_type="CAUSAL_LM",
    )
    peft_model = peft.get_peft_model(torch_model, peft_config).eval()
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)
    theirs = torch_logits(peft_model)
    peft_model.save_pretrained(tmp_path / "peft")

    adapter = load_peft_adapter(tmp_path / "peft")
    assert adapter.rank == 2 and adapter.alpha == 6.0
    assert adapter.target_modules == ("k_proj", "o_proj", "up_proj")
    lora, lora_config = lora_from_peft(adapter, config)
    assert lora_config.scale == 3.0
    # a model built with the imported LoRA config takes the weights as its state
    model = llama_params_from_hf(
        config, load_hf_folder(folder, tokenizer=False).tensors, lora_config=lora_config
    )
    graphdef, base, state = split_lora(model)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, lora))
    ours_logits = llama_apply(graphdef, state, jnp.asarray(TOKENS), frozen=base)
    np.testing.assert_allclose(np.asarray(ours_logits), theirs, atol=1e-4)


def test_peft_layers_to_transform_subset(pair, tmp_path):
    folder, config, _, _ = pair
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, local_files_only=True, attn_implementation="eager"
    )
    peft_config = peft.LoraConfig(
        r=3, lora_alpha=3, target_modules=["q_proj"], layers_to_transform=[1]
    )
    peft_model = peft.get_peft_model(torch_model, peft_config).eval()
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)
    theirs = torch_logits(peft_model)
    peft_model.save_pretrained(tmp_path / "peft")
    adapter = load_peft_adapter(tmp_path / "peft")
    assert set(adapter.weights) == {(1, "q_proj")}
    lora, lora_config = lora_from_peft(adapter, config)
    np.testing.assert_array_equal(lora["layers"]["q_proj"]["lora_b"][0], 0.0)
    model = llama_params_from_hf(
        config, load_hf_folder(folder, tokenizer=False).tensors, lora_config=lora_config
    )
    graphdef, base, _ = split_lora(model)
    ours = llama_apply(graphdef, lora, jnp.asarray(TOKENS), frozen=base)
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4)


@given(
    rank=st.integers(1, 4),
    alpha=st.floats(0.5, 64.0),
    targets=st.sets(st.sampled_from(["q_proj", "k_proj", "gate_proj"]), min_size=1),
    layers=st.sets(st.integers(0, 3), min_size=1),
    seed=st.integers(0, 1000),
)
def test_save_load_round_trip(tmp_path_factory, rank, alpha, targets, layers, seed):
    rng = np.random.default_rng(seed)
    weights = {
        (i, m): (
            rng.standard_normal((rank, 8)).astype(np.float32),
            rng.standard_normal((12, rank)).astype(np.float32),
        )
        for i in layers
        for m in targets
    }
    adapter = PeftAdapter(weights, rank, alpha, tuple(sorted(targets)), 0.05)
    before = {k: (a.copy(), b.copy()) for k, (a, b) in weights.items()}
    path = save_peft_adapter(tmp_path_factory.mktemp("rt"), adapter)
    back = load_peft_adapter(path)
    assert back.rank == rank and back.alpha == alpha and back.dropout == 0.05
    assert back.target_modules == adapter.target_modules
    assert set(back.weights) == set(weights)
    for k, (a, b) in weights.items():
        np.testing.assert_array_equal(back.weights[k][0], a)
        np.testing.assert_array_equal(back.weights[k][1], b)
        assert back.weights[k][0].dtype == np.float32
        np.testing.assert_array_equal(a, before[k][0])
    config = peft.LoraConfig.from_pretrained(path)
    assert config.r == rank and set(config.target_modules) == targets


def test_stacked_round_trip(pair):
    _, config, lora_config, ours = pair
    _, _, lora = split_lora(ours)
    trained = random_lora(lora, seed=5)
    back, back_config = lora_from_peft(lora_to_peft(trained, lora_config), config)
    assert back_config == lora_config
    for name in TARGETS:
        for part in ("lora_a", "lora_b"):
            np.testing.assert_array_equal(
                back["layers"][name][part], np.asarray(trained["layers"][name][part])
            )


# ------------------------------------------------------------------------ errors


def test_error_unsupported_options(tmp_path):
    adapter = PeftAdapter(
        {(0, "q_proj"): (np.ones((2, 4)), np.ones((4, 2)))}, 2, 4.0, ("q_proj",)
    )
    path = save_peft_adapter(tmp_path, adapter)
    cfg = json.loads((path / "adapter_config.json").read_text())
    cfg["use_dora"] = True
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="use_dora=True is not supported"):
        load_peft_adapter(path)


def test_error_not_a_peft_folder(tmp_path):
    with pytest.raises(ValueError, match="no adapter_config.json"):
        load_peft_adapter(tmp_path)


def test_error_bad_shapes(pair):
    _, config, _, _ = pair
    adapter = PeftAdapter(
        {(0, "q_proj"): (np.ones((2, 5)), np.ones((32, 2)))}, 2, 4.0, ("q_proj",)
    )
    with pytest.raises(ValueError, match="layer 0 q_proj: expected lora_A"):
        lora_from_peft(adapter, config)
    bad_rank = PeftAdapter(
        {(0, "q_proj"): (np.ones((3, 32)), np.ones((32, 2)))}, 2, 4.0, ("q_proj",)
    )
    with pytest.raises(ValueError, match="expected A"):
        save_peft_adapter("unused", bad_rank)
    bad_layer = PeftAdapter(
        {(7, "q_proj"): (np.ones((2, 32)), np.ones((32, 2)))}, 2, 4.0, ("q_proj",)
    )
    with pytest.raises(ValueError, match="layer 7"):
        lora_from_peft(bad_layer, config)
