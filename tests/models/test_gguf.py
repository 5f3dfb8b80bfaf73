"""GGUF loading: dequantization, name mapping, Q/K un-permutation, config, errors."""

import os

import gguf
import numpy as np
import pytest
import torch
import transformers
from hypothesis import given
from hypothesis import strategies as st

from ol_jax.models import (
    GGUF_QUANT_TYPES,
    LlamaConfig,
    load_gguf,
    load_pretrained,
    reverse_permute_qk,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
Q = gguf.GGMLQuantizationType

# HF name (with {i} for the layer) -> GGUF name, as llama.cpp's converter writes.
GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
LAYER_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def to_gguf_name(hf):
    if hf in GGUF_NAMES:
        return GGUF_NAMES[hf]
    parts = hf.split(".")
    i, module, kind = parts[2], ".".join(parts[3:-1]), parts[-1]
    return f"blk.{i}.{LAYER_NAMES[module]}.{kind}"


def llama_cpp_permute(w, n_head, n_head_kv):
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute, verbatim."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


# ---------------------------------------------------------- reference dequantizers
# Written from ggml's block layouts (ggml-common.h), independent of gguf.quants.


def ref_dequantize(raw, qtype, shape):
    raw = np.asarray(raw)
    if qtype == Q.F32:
        return raw.astype(np.float32).reshape(shape)
    if qtype == Q.F16:
        return raw.astype(np.float32).reshape(shape)
    blocks = raw.reshape(-1).view(np.uint8)
    if qtype == Q.BF16:
        bits = blocks.view(np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    if qtype == Q.Q8_0:  # struct { half d; int8 qs[32]; }
        b = blocks.reshape(-1, 34)
        d = b[:, :2].copy().view(np.float16).astype(np.float32)
        q = b[:, 2:].copy().view(np.int8).astype(np.float32)
        return (d * q).reshape(shape)
    b = blocks.reshape(-1, 18 if qtype == Q.Q4_0 else 20)
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    qs = b[:, -16:]
    # element j < 16 is the low nibble of byte j, element 16 + j its high nibble
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)
    if qtype == Q.Q4_0:  # struct { half d; uint8 qs[16]; }: w = d * (q - 8)
        return (d * (q - 8.0)).reshape(shape)
    m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
    return (d * q + m).reshape(shape)  # Q4_1: { half d; half m; uint8 qs[16]; }


def encode(w, qtype):
    """The bytes/array GGUFWriter stores for `w` quantized as `qtype`."""
    if qtype == Q.F32:
        return w.astype(np.float32)
    if qtype == Q.F16:
        return w.astype(np.float16)
    return gguf.quants.quantize(w.astype(np.float32), qtype)


# -------------------------------------------------------------------- tiny files


def tiny_hf_model(model_type, *, tie=False, seed=0, heads=4, kv_heads=2, layers=2):
    kwargs = dict(
        vocab_size=64,
        hidden_size=16 * heads,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie,
    )
    if model_type == "llama":
        config = transformers.LlamaConfig(rope_theta=50000.0, **kwargs)
    else:
        config = transformers.Qwen2Config(rope_theta=1e6, **kwargs)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    return model, {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def write_gguf(
    path,
    model,
    sd,
    *,
    qtype=Q.Q8_0,
    qtypes=None,
    arch=None,
    drop=(),
    tokenizer=False,
):
    """Write `sd` as llama.cpp would: GGUF names, permuted Q/K, llama metadata.

    Returns {hf_name: (qtype, stored array)} for the tensors written.
    """
    cfg = model.config
    arch = arch or cfg.model_type
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(sd["model.embed_tokens.weight"].shape[0])
    if tokenizer:
        add_tiny_tokenizer(w)
    stored = {}
    for hf, value in sd.items():
        if hf == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        if hf in drop:
            continue
        if cfg.model_type == "llama" and ".q_proj." in hf:
            value = llama_cpp_permute(value, cfg.num_attention_heads, None)
        elif cfg.model_type == "llama" and ".k_proj." in hf:
            value = llama_cpp_permute(
                value, cfg.num_attention_heads, cfg.num_key_value_heads
            )
        if value.ndim == 1:
            t = Q.F32  # llama.cpp keeps norms and biases in F32
        else:
            t = (qtypes or {}).get(hf, qtype)
        data = encode(value, t)
        raw = None if t in (Q.F32, Q.F16) else t
        w.add_tensor(to_gguf_name(hf), data, raw_dtype=raw)
        stored[hf] = (t, data, value.shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


def add_tiny_tokenizer(w):
    """A byte-level BPE vocabulary (GPT-2 style) and a chat template."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    merges = ["t h", "th e", "Ġ c", "Ġc a"]
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + chars
    tokens += ["th", "the", "Ġc", "Ġca"]
    tokens += [f"<extra_{i}>" for i in range(64 - len(tokens) % 64)]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
        "{% endif %}"
    )
    return len(tokens)


MIXED = {
    "model.embed_tokens.weight": Q.Q8_0,
    "model.layers.0.self_attn.q_proj.weight": Q.Q4_0,
    "model.layers.0.self_attn.k_proj.weight": Q.Q4_1,
    "model.layers.0.self_attn.v_proj.weight": Q.F16,
    "model.layers.0.self_attn.o_proj.weight": Q.BF16,
    "model.layers.0.mlp.gate_proj.weight": Q.F32,
    "model.layers.1.self_attn.q_proj.weight": Q.Q4_1,
    "model.layers.1.self_attn.k_proj.weight": Q.Q8_0,
    "lm_head.weight": Q.F16,
}


@pytest.fixture(scope="module")
def llama_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    model, sd = tiny_hf_model("llama")
    stored = write_gguf(path, model, sd, qtype=Q.Q8_0, qtypes=MIXED)
    return path, model, sd, stored


def test_tensors_match_reference_dequantization(llama_gguf):
    path, model, sd, stored = llama_gguf
    loaded = load_gguf(path, tokenizer=False)
    assert set(loaded.tensors) == set(sd)
    cfg = model.config
    for hf, (qtype, data, shape) in stored.items():
        want = ref_dequantize(data, qtype, shape)
        if ".q_proj." in hf:
            want = reverse_permute_qk(want, cfg.num_attention_heads)
        elif ".k_proj." in hf:
            want = reverse_permute_qk(want, cfg.num_key_value_heads)
        got = loaded.tensors[hf]
        assert got.dtype == np.float32 and got.shape == sd[hf].shape, hf
        assert got.flags.writeable and got.flags.c_contiguous, hf
        np.testing.assert_array_equal(got, want, err_msg=f"{hf} {qtype.name}")
        # and close to the original weights, within the quantization error
        tol = {Q.F32: 0, Q.F16: 1e-3, Q.BF16: 1e-2, Q.Q8_0: 2e-2}.get(qtype, 0.1)
        np.testing.assert_allclose(got, sd[hf], atol=tol, err_msg=hf)


def test_matches_transformers_gguf_loader(llama_gguf):
    path, _, _, _ = llama_gguf
    loaded = load_gguf(path, tokenizer=False)
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, local_files_only=True
    )
    for k, v in ref.state_dict().items():
        np.testing.assert_array_equal(loaded.tensors[k], v.numpy(), err_msg=k)


def test_config_from_metadata(llama_gguf):
    path, model, _, _ = llama_gguf
    config = load_gguf(path, tokenizer=False).config
    cfg = model.config
    for key in (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "max_position_embeddings",
        "tie_word_embeddings",
    ):
        assert config[key] == getattr(cfg, key), key
    assert config["model_type"] == "llama"
    assert config["rope_parameters"]["rope_theta"] == 50000.0
    np.testing.assert_allclose(config["rms_norm_eps"], 1e-5, rtol=1e-6)
    ours = LlamaConfig.from_hf_dict(config)
    assert ours.head_dim == cfg.head_dim
    assert ours.rope_theta == 50000.0


@pytest.mark.parametrize("tie", [False, True])
def test_qwen2_biases_not_permuted(tmp_path, tie):
    model, sd = tiny_hf_model("qwen2", tie=tie, seed=1)
    path = tmp_path / "tiny-qwen2.gguf"
    write_gguf(path, model, sd, qtype=Q.F32)
    loaded = load_gguf(path, tokenizer=False)
    if tie:
        sd.pop("lm_head.weight")
    assert set(loaded.tensors) == set(sd)
    for k, v in sd.items():
        np.testing.assert_array_equal(loaded.tensors[k], v, err_msg=k)
    assert loaded.config["model_type"] == "qwen2"
    assert loaded.config["tie_word_embeddings"] is tie
    assert loaded.config["rope_parameters"]["rope_theta"] == 1e6


@given(
    qtype=st.sampled_from([Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.F16, Q.BF16]),
    seed=st.integers(0, 2**16),
    scale=st.floats(1e-3, 10.0),
)
def test_dequantization_property(tmp_path_factory, qtype, seed, scale):
    model, sd = tiny_hf_model("llama", tie=True, heads=2, kv_heads=1, layers=1)
    rng = np.random.default_rng(seed)
    sd = {
        k: (scale * rng.standard_normal(v.shape)).astype(np.float32)
        for k, v in sd.items()
    }
    path = tmp_path_factory.mktemp("prop") / "p.gguf"
    stored = write_gguf(path, model, sd, qtype=qtype)
    before = {k: v.copy() for k, v in sd.items()}
    loaded = load_gguf(path, tokenizer=False)
    for hf, (t, data, shape) in stored.items():
        want = ref_dequantize(data, t, shape)
        if ".q_proj." in hf:
            want = reverse_permute_qk(want, 2)
        elif ".k_proj." in hf:
            want = reverse_permute_qk(want, 1)
        np.testing.assert_array_equal(loaded.tensors[hf], want, err_msg=hf)
        assert np.isfinite(loaded.tensors[hf]).all()
    for k, v in before.items():
        np.testing.assert_array_equal(sd[k], v)


@given(
    n_head=st.integers(1, 6),
    half=st.integers(1, 8),
    cols=st.sampled_from([(), (1,), (5,)]),
    kv=st.booleans(),
)
def test_reverse_permute_inverts_llama_cpp(n_head, half, cols, kv):
    rows = n_head * 2 * half
    w = np.arange(rows * int(np.prod(cols)), dtype=np.float32).reshape(rows, *cols)
    w0 = w.copy()
    permuted = llama_cpp_permute(
        w, 2 * n_head if kv else n_head, n_head if kv else None
    )
    out = reverse_permute_qk(permuted, n_head)
    np.testing.assert_array_equal(out, w)
    np.testing.assert_array_equal(w, w0)
    assert out.dtype == w.dtype and out.shape == w.shape


def test_reverse_permute_rejects_bad_rows():
    with pytest.raises(ValueError, match="rows must be a multiple"):
        reverse_permute_qk(np.zeros((6, 2), np.float32), 2)


def test_tokenizer_and_chat_template_from_metadata(tmp_path):
    n_tokens = 64 * ((3 + 256 + 4) // 64 + 1)
    model, sd = tiny_hf_model("llama", tie=True, layers=1)
    sd["model.embed_tokens.weight"] = np.zeros((n_tokens, 64), np.float32)
    path = tmp_path / "tok.gguf"
    write_gguf(path, model, sd, qtype=Q.F16, tokenizer=True)
    loaded = load_gguf(path, tokenizer_cache=tmp_path / "cache")
    assert loaded.config["vocab_size"] == n_tokens
    tok = loaded.tokenizer
    ids = tok("the cat").input_ids
    assert tok.convert_ids_to_tokens(ids)[:2] == ["the", "Ġca"]
    assert tok.decode(ids) == "the cat"
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    # a second load reads the cached conversion and behaves the same
    again = load_gguf(path, tokenizer_cache=tmp_path / "cache").tokenizer
    assert len(list((tmp_path / "cache").iterdir())) == 1
    assert again("the cat").input_ids == ids
    assert again.chat_template == tok.chat_template


# ------------------------------------------------------------------------ errors


def test_supported_quant_types_listed():
    for name in ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"):
        assert name in GGUF_QUANT_TYPES


def test_error_unsupported_quant_type(tmp_path):
    model, sd = tiny_hf_model("llama", tie=True, layers=1)
    path = tmp_path / "q81.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_embedding_length(64)
    w.add_feed_forward_length(64)
    w.add_head_count(4)
    w.add_layer_norm_rms_eps(1e-5)
    for hf, value in sd.items():
        if hf == "lm_head.weight":
            continue
        name = to_gguf_name(hf)
        if name == "blk.0.ffn_up.weight":
            block, size = gguf.GGML_QUANT_SIZES[Q.Q8_1]
            raw = np.zeros((value.shape[0], value.shape[1] // block * size), np.uint8)
            w.add_tensor(name, raw, raw_dtype=Q.Q8_1)
        else:
            w.add_tensor(name, value.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match=r"q81\.gguf.*blk\.0\.ffn_up\.weight.*Q8_1"):
        load_gguf(path, tokenizer=False)


def test_error_unsupported_architecture(tmp_path):
    model, sd = tiny_hf_model("llama", tie=True, layers=1)
    path = tmp_path / "falcon.gguf"
    write_gguf(path, model, sd, qtype=Q.F32, arch="falcon")
    with pytest.raises(ValueError, match=r"falcon\.gguf.*'falcon'.*llama"):
        load_gguf(path, tokenizer=False)


def test_error_missing_tensor(tmp_path):
    model, sd = tiny_hf_model("llama", layers=2)
    path = tmp_path / "holes.gguf"
    write_gguf(
        path, model, sd, qtype=Q.F32, drop=("model.layers.1.mlp.up_proj.weight",)
    )
    with pytest.raises(
        ValueError, match=r"holes\.gguf.*model\.layers\.1\.mlp\.up_proj"
    ):
        load_gguf(path, tokenizer=False)


def test_error_truncated_gguf(llama_gguf, tmp_path):
    path = tmp_path / "cut.gguf"
    data = llama_gguf[0].read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.gguf"):
        load_gguf(path, tokenizer=False)


def test_load_pretrained_dispatches_to_gguf(llama_gguf):
    loaded = load_pretrained(llama_gguf[0], tokenizer=False)
    assert loaded.source == llama_gguf[0]
    assert loaded.config["model_type"] == "llama"
