"""Hugging Face folder loading: tensors, config and tokenizer, and clear errors."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
import transformers
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers

from ol_jax.models import (
    SUPPORTED_MODEL_TYPES,
    expected_tensor_names,
    load_hf_folder,
    load_pretrained,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = ["the", "capital", "of", "france", "is", "paris", "a", "cat", "sat", "on"]


def save_tiny_tokenizer(folder):
    """A word-level tokenizer built locally (no hub), saved as tokenizer.json."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {w: i + 3 for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(folder)


def tiny_config(model_type, *, tie=False, layers=2, heads=4, kv_heads=2):
    kwargs = dict(
        vocab_size=64,
        hidden_size=8 * heads,
        intermediate_size=48,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
    )
    if model_type == "llama":
        return transformers.LlamaConfig(**kwargs)
    return transformers.Qwen2Config(**kwargs)


def save_tiny_model(folder, model_type, *, seed=0, shard=None, **kw):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(model_type, **kw))
    kwargs = {} if shard is None else {"max_shard_size": shard}
    model.save_pretrained(folder, **kwargs)
    save_tiny_tokenizer(folder)
    return model


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    out = {}
    for name, model_type, kw in [
        ("llama", "llama", {}),
        ("llama_tied", "llama", {"tie": True}),
        ("qwen2", "qwen2", {}),
        ("llama_sharded", "llama", {"shard": "20KB"}),
    ]:
        folder = tmp_path_factory.mktemp(name)
        model = save_tiny_model(folder, model_type, **kw)
        out[name] = (folder, model)
    return out


@pytest.mark.parametrize("name", ["llama", "llama_tied", "qwen2", "llama_sharded"])
def test_tensors_equal_state_dict(folders, name):
    folder, model = folders[name]
    loaded = load_hf_folder(folder)
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        assert "lm_head.weight" not in loaded.tensors
        sd.pop("lm_head.weight")
    assert set(loaded.tensors) == set(sd)
    for k, v in sd.items():
        assert loaded.tensors[k].dtype == v.dtype, k
        np.testing.assert_array_equal(loaded.tensors[k], v, err_msg=k)
    assert set(expected_tensor_names(loaded.config)) == set(sd)
    assert loaded.source == folder


def test_sharded_folder_really_is_sharded(folders):
    folder, _ = folders["llama_sharded"]
    assert (folder / "model.safetensors.index.json").is_file()
    assert len(list(folder.glob("model-*-of-*.safetensors"))) > 1


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_config_and_tokenizer(folders, name):
    folder, model = folders[name]
    loaded = load_hf_folder(folder)
    assert loaded.config["model_type"] == name
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads"):
        assert loaded.config[key] == getattr(model.config, key)
    assert loaded.config["model_type"] in SUPPORTED_MODEL_TYPES
    tok = loaded.tokenizer
    assert tok.convert_tokens_to_ids("paris") == 8
    if name == "llama":
        # transformers swaps in Qwen2Tokenizer's own pre-tokenizer for qwen2 folders.
        assert tok("the capital of france is").input_ids == [3, 4, 5, 6, 7]


def test_load_without_tokenizer(folders):
    folder, _ = folders["qwen2"]
    loaded = load_hf_folder(folder, tokenizer=False)
    assert loaded.tokenizer is None
    assert "model.layers.0.self_attn.q_proj.bias" in loaded.tensors


def test_load_pretrained_dispatches_to_folder(folders):
    folder, _ = folders["llama"]
    loaded = load_pretrained(str(folder), tokenizer=False)
    assert loaded.config["model_type"] == "llama"


def test_bf16_tensors_keep_dtype(tmp_path):
    model = save_tiny_model(tmp_path, "llama")
    model.to(torch.bfloat16).save_pretrained(tmp_path)
    loaded = load_hf_folder(tmp_path, tokenizer=False)
    w = loaded.tensors["model.layers.0.mlp.up_proj.weight"]
    assert w.dtype.name == "bfloat16"
    ref = model.state_dict()["model.layers.0.mlp.up_proj.weight"].float().numpy()
    np.testing.assert_array_equal(w.astype(np.float32), ref)


@given(
    model_type=st.sampled_from(["llama", "qwen2"]),
    layers=st.integers(1, 4),
    tie=st.booleans(),
    bias=st.booleans(),
)
def test_expected_tensor_names_match_transformers(model_type, layers, tie, bias):
    config = tiny_config(model_type, tie=tie, layers=layers)
    if model_type == "llama":
        config.attention_bias = bias
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    want = set(model.state_dict()) - ({"lm_head.weight"} if tie else set())
    d = config.to_dict()
    assert set(expected_tensor_names(d)) == want


# ------------------------------------------------------------------------ errors


def test_error_folder_without_config(folders, tmp_path):
    folder, _ = folders["llama"]
    bad = tmp_path / "no_config"
    shutil.copytree(folder, bad)
    (bad / "config.json").unlink()
    with pytest.raises(ValueError, match="no_config has no config.json"):
        load_hf_folder(bad)


def test_error_unknown_model_type(folders, tmp_path):
    folder, _ = folders["llama"]
    bad = tmp_path / "gpt2ish"
    shutil.copytree(folder, bad)
    config = json.loads((bad / "config.json").read_text())
    config["model_type"] = "gpt_neox"
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"'gpt_neox'.*\['llama', 'qwen2'\]"):
        load_hf_folder(bad)


def test_error_truncated_safetensors(folders, tmp_path):
    folder, _ = folders["llama"]
    bad = tmp_path / "truncated"
    shutil.copytree(folder, bad)
    file = bad / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated/model\.safetensors"):
        load_hf_folder(bad)


def test_error_missing_shard(folders, tmp_path):
    folder, _ = folders["llama_sharded"]
    bad = tmp_path / "shards"
    shutil.copytree(folder, bad)
    victim = sorted(bad.glob("model-*-of-*.safetensors"))[0]
    victim.unlink()
    with pytest.raises(ValueError, match=victim.name):
        load_hf_folder(bad)


def test_error_missing_tensor(tmp_path):
    from safetensors.numpy import load_file, save_file

    save_tiny_model(tmp_path, "llama")
    file = tmp_path / "model.safetensors"
    tensors = load_file(file)
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.down_proj\.weight"):
        load_hf_folder(tmp_path)


def test_error_not_a_model(tmp_path):
    with pytest.raises(ValueError, match="name_or_path must be one of"):
        load_pretrained(str(tmp_path / "nothing-here"))
