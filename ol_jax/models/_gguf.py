"""Read a GGUF file into Hugging Face names, layouts and config.

A GGUF file (llama.cpp's format) holds the weights, possibly block-quantized, and the
model's metadata: hyperparameters under ``<arch>.*`` keys and the tokenizer and chat
template under ``tokenizer.*`` keys. This module turns one into what a Hugging Face
folder would hold: a ``config.json``-style dict and a flat dict of float32 numpy
arrays named and laid out exactly like transformers' ``LlamaForCausalLM`` /
``Qwen2ForCausalLM`` ``state_dict``.

Quantized blocks are decoded with the ``gguf`` package's own dequantizers. For a
block of 32 weights, Q8_0 stores ``w = d * q`` (``q`` int8), Q4_0 ``w = d * (q - 8)``
(``q`` 4-bit) and Q4_1 ``w = d * q + m``; the K-quants nest such blocks in 256-wide
super-blocks.

llama.cpp's converter permutes the rows of ``attn_q`` / ``attn_k`` of Llama models
from Hugging Face's half-split rotary layout to the interleaved one; reading them
back applies the inverse permutation.

References:
    Gerganov et al., `GGUF file format
    <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>`_, 2023.
    Su et al., `RoFormer: Enhanced Transformer with Rotary Position Embedding
    <https://arxiv.org/abs/2104.09864>`_, 2021.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import shutil
from typing import Any

import numpy as np

__all__ = [
    "GGUF_ARCHITECTURES",
    "GGUF_QUANT_TYPES",
    "gguf_config",
    "gguf_tensors",
    "gguf_tokenizer",
    "reverse_permute_qk",
]

#: GGUF ``general.architecture`` values read here, with their transformers model type.
GGUF_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2"}

#: GGML tensor types dequantized here (the ones the ``gguf`` package can decode).
GGUF_QUANT_TYPES = (
    "F32",
    "F16",
    "BF16",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q8_0",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
)

# Per-layer GGUF tensor name -> Hugging Face module path under model.layers.N.
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_LAYER_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
_GLOBAL_RE = re.compile(r"^([a-z_]+)\.(weight|bias)$")


def _reader(path: pathlib.Path):
    import gguf

    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # the reader raises bare ValueError/struct errors
        raise ValueError(f"could not read GGUF file {path}: {e}") from e


def _field(reader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def _architecture(reader, path: pathlib.Path) -> str:
    arch = _field(reader, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ValueError(
            f"GGUF file {path} has architecture {arch!r}; supported architectures "
            f"are {sorted(GGUF_ARCHITECTURES)}"
        )
    return arch


def reverse_permute_qk(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's rotary row permutation of a Llama Q or K projection.

    llama.cpp's ``convert_hf_to_gguf.py`` reorders the ``n_head * head_dim`` output
    rows of each head from ``[x_0 .. x_{d/2-1}, y_0 .. y_{d/2-1}]`` (Hugging Face's
    rotate-half layout) to ``[x_0, y_0, x_1, y_1, ...]`` (interleaved pairs); this is
    the inverse, a reshape to ``[n_head, d/2, 2, ...]`` and a swap of the two middle
    axes.

    Args:
        weight: ``[n_head * head_dim, ...]`` rows as stored in the GGUF file (a weight
            matrix or a bias vector).
        n_head: number of heads the rows belong to (``head_count`` for Q,
            ``head_count_kv`` for K).

    Returns:
        The rows in Hugging Face order, same shape and dtype.

    References:
        Gerganov et al., `convert_hf_to_gguf.py, LlamaModel.permute
        <https://github.com/ggml-org/llama.cpp/blob/master/convert_hf_to_gguf.py>`_,
        2023.
    """
    rows = weight.shape[0]
    if n_head <= 0 or rows % (2 * n_head) != 0:
        raise ValueError(
            f"rows must be a multiple of 2 * n_head = {2 * n_head}, got {rows} rows"
        )
    half = rows // n_head // 2
    w = weight.reshape(n_head, half, 2, *weight.shape[1:])
    return np.ascontiguousarray(w.swapaxes(1, 2).reshape(weight.shape))


def gguf_config(path: str | os.PathLike[str], reader=None) -> dict[str, Any]:
    """Build a Hugging Face ``config.json`` dict from a GGUF file's metadata.

    Reads ``<arch>.embedding_length``, ``block_count``, ``attention.head_count``,
    ``attention.head_count_kv``, ``feed_forward_length``, ``context_length``,
    ``rope.freq_base`` and ``attention.layer_norm_rms_epsilon``; the vocabulary size
    is the row count of ``token_embd`` (the length of the token list in every
    ordinary file), and embeddings are tied when the file has no ``output.weight``.

    Args:
        path: a ``.gguf`` file.
        reader: an already open ``gguf.GGUFReader`` of ``path`` (optional).

    Returns:
        A dict usable as ``transformers.AutoConfig.for_model(**d)`` input, with
        ``model_type`` ``"llama"`` or ``"qwen2"``.

    References:
        Gerganov et al., `GGUF file format
        <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>`_, 2023.
    """
    path = pathlib.Path(path)
    reader = _reader(path) if reader is None else reader
    arch = _architecture(reader, path)

    def req(key: str) -> Any:
        value = _field(reader, f"{arch}.{key}")
        if value is None:
            raise ValueError(f"GGUF file {path} lacks metadata key {arch}.{key}")
        return value

    scaling = _field(reader, f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        raise ValueError(
            f"GGUF file {path} uses rope scaling {scaling!r}; only unscaled rotary "
            "embeddings are supported"
        )
    if any(t.name == "rope_freqs.weight" for t in reader.tensors):
        raise ValueError(
            f"GGUF file {path} has a rope_freqs tensor (Llama 3 rope scaling); only "
            "unscaled rotary embeddings are supported"
        )
    names = {t.name: t for t in reader.tensors}
    if "token_embd.weight" not in names:
        raise ValueError(f"GGUF file {path} is missing tensor token_embd.weight")
    hidden = int(req("embedding_length"))
    heads = int(req("attention.head_count"))
    kv_heads = int(_field(reader, f"{arch}.attention.head_count_kv", heads))
    head_dim = int(_field(reader, f"{arch}.attention.key_length", hidden // heads))
    default_theta = 1_000_000.0 if arch == "qwen2" else 10_000.0
    theta = float(_field(reader, f"{arch}.rope.freq_base", default_theta))
    vocab = int(names["token_embd.weight"].shape[-1])
    model_type = GGUF_ARCHITECTURES[arch]
    config: dict[str, Any] = {
        "model_type": model_type,
        "architectures": [
            "LlamaForCausalLM" if model_type == "llama" else "Qwen2ForCausalLM"
        ],
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": int(req("feed_forward_length")),
        "num_hidden_layers": int(req("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": int(_field(reader, f"{arch}.context_length", 2048)),
        "rms_norm_eps": float(req("attention.layer_norm_rms_epsilon")),
        # transformers v5 reads rope_parameters; older readers read rope_theta.
        "rope_theta": theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": theta},
        "tie_word_embeddings": "output.weight" not in names,
    }
    if model_type == "llama":
        config["attention_bias"] = "blk.0.attn_q.bias" in names
        config["mlp_bias"] = False
    else:
        config["use_sliding_window"] = False
    for key in ("bos", "eos", "padding"):
        token_id = _field(reader, f"tokenizer.ggml.{key}_token_id")
        if token_id is not None:
            name = "pad" if key == "padding" else key
            config[f"{name}_token_id"] = int(token_id)
    return config


def _hf_name(name: str) -> str | None:
    if m := _LAYER_RE.match(name):
        layer, part, kind = m.groups()
        if part in _LAYER_NAMES:
            return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{kind}"
        return None
    if m := _GLOBAL_RE.match(name):
        part, kind = m.groups()
        if part in _GLOBAL_NAMES:
            return f"{_GLOBAL_NAMES[part]}.{kind}"
    return None


def _dequantize(tensor, path: pathlib.Path) -> np.ndarray:
    from gguf import quants

    qtype = tensor.tensor_type
    if qtype.name not in GGUF_QUANT_TYPES:
        raise ValueError(
            f"GGUF file {path}: tensor {tensor.name} has quantization type "
            f"{qtype.name}, which is not supported; supported types are "
            f"{list(GGUF_QUANT_TYPES)}"
        )
    shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
    out = quants.dequantize(tensor.data, qtype)
    # F32 data comes back as a read-only view of the memory-mapped file; copy it so
    # callers get ordinary arrays and the file can be closed.
    return np.array(out, dtype=np.float32, copy=True).reshape(shape)


def gguf_tensors(
    path: str | os.PathLike[str], config: dict[str, Any] | None = None, reader=None
) -> dict[str, np.ndarray]:
    """Read, dequantize and rename a GGUF file's tensors to Hugging Face's.

    GGUF ``token_embd``, ``blk.N.{attn_q, attn_k, attn_v, attn_output, ffn_gate,
    ffn_up, ffn_down, attn_norm, ffn_norm}``, ``output_norm`` and ``output`` become
    ``model.embed_tokens``, ``model.layers.N.{self_attn.{q,k,v,o}_proj,
    mlp.{gate,up,down}_proj, input_layernorm, post_attention_layernorm}``,
    ``model.norm`` and ``lm_head``. Shapes are the PyTorch ones (``[out, in]``
    for linear weights); Llama Q/K rows are un-permuted with
    :func:`reverse_permute_qk`. A tied model has no ``lm_head.weight``, as in
    a ``save_pretrained`` folder.

    Args:
        path: a ``.gguf`` file.
        config: its config from :func:`gguf_config` (computed when omitted).
        reader: an already open ``gguf.GGUFReader`` of ``path`` (optional).

    Returns:
        Hugging Face tensor name -> float32 numpy array.

    References:
        Gerganov et al., `GGUF file format
        <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>`_, 2023.
    """
    path = pathlib.Path(path)
    reader = _reader(path) if reader is None else reader
    config = gguf_config(path, reader) if config is None else config
    permute = config["model_type"] == "llama"
    tensors: dict[str, np.ndarray] = {}
    for tensor in reader.tensors:
        hf = _hf_name(tensor.name)
        if hf is None:
            raise ValueError(
                f"GGUF file {path}: tensor {tensor.name} has no Hugging Face "
                f"counterpart in a {config['model_type']} model"
            )
        weight = _dequantize(tensor, path)
        if permute and ".attn_q." in tensor.name:
            weight = reverse_permute_qk(weight, config["num_attention_heads"])
        elif permute and ".attn_k." in tensor.name:
            weight = reverse_permute_qk(weight, config["num_key_value_heads"])
        tensors[hf] = weight
    return tensors


def _file_key(path: pathlib.Path) -> str:
    stat = path.stat()
    ident = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def gguf_tokenizer(path: str | os.PathLike[str], cache: pathlib.Path | None = None):
    """The tokenizer and chat template stored in a GGUF file, via transformers.

    transformers rebuilds a fast tokenizer from ``tokenizer.ggml.*`` metadata (a
    conversion taking seconds for a 50k vocabulary), so with ``cache`` set the
    result is saved there once, keyed by the file's path, size and modification
    time, and read back from it afterwards. Nothing is fetched from a hub.

    Args:
        path: a ``.gguf`` file.
        cache: folder for converted tokenizers, or None for no caching.

    Returns:
        A ``transformers`` tokenizer with the file's chat template.

    References:
        Wolf et al., `Transformers: State-of-the-Art Natural Language Processing
        <https://arxiv.org/abs/1910.03771>`_, 2020.
    """
    from transformers import AutoTokenizer

    path = pathlib.Path(path)
    target = None if cache is None else cache / f"{path.stem}-{_file_key(path)}"
    if target is not None and (target / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(target, local_files_only=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path.parent, gguf_file=path.name, local_files_only=True
        )
    except Exception as e:
        raise ValueError(
            f"could not build a tokenizer from GGUF file {path}: {e}"
        ) from e
    if target is not None:
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:
            # Another process cached it first; theirs is equivalent.
            shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer
