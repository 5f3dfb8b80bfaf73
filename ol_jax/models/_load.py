"""Load Llama-family weights from a Hugging Face folder, a GGUF file or an alias.

Every loader returns the same thing, a :class:`LoadedModel`: the model's
``config.json`` as a dict, a flat dict of numpy arrays named and shaped exactly like
transformers' PyTorch ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` ``state_dict``
(``model.layers.N.self_attn.q_proj.weight`` of shape ``[out, in]``, ...), and the
tokenizer. Turning these into a Flax model is the model's own business
(``LlamaConfig.from_hf_dict``, ``llama_params_from_hf``).

Nothing here reaches a model hub: tokenizers are read with
``local_files_only=True``.

References:
    Touvron et al., `LLaMA: Open and Efficient Foundation Language Models
    <https://arxiv.org/abs/2302.13971>`_, 2023.
    Hugging Face, `safetensors <https://github.com/huggingface/safetensors>`_, 2022.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, NamedTuple

import numpy as np

from ol_jax.models import _gguf
from ol_jax.models._pretrained import PRETRAINED, model_cache_dir, resolve_pretrained

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "LoadedModel",
    "expected_tensor_names",
    "load_gguf",
    "load_hf_folder",
    "load_llama",
    "load_pretrained",
]

#: ``config.json`` ``model_type`` values the loaders accept.
SUPPORTED_MODEL_TYPES = ("llama", "qwen2")


class LoadedModel(NamedTuple):
    """Weights, config and tokenizer of a pretrained causal language model.

    Attributes:
        config: the Hugging Face ``config.json`` contents (``model_type`` is
            ``"llama"`` or ``"qwen2"``).
        tensors: Hugging Face tensor name -> numpy array, in PyTorch layout. A model
            with tied embeddings has no ``lm_head.weight``.
        tokenizer: a ``transformers`` tokenizer, or None when not requested.
        source: the folder or ``.gguf`` file read.
    """

    config: dict[str, Any]
    tensors: dict[str, np.ndarray]
    tokenizer: Any
    source: pathlib.Path


def expected_tensor_names(config: dict[str, Any]) -> list[str]:
    """The tensor names a Llama / Qwen2 causal LM with this config must have.

    Args:
        config: a Hugging Face config dict.

    Returns:
        Names in ``state_dict`` order, without ``lm_head.weight`` when
        ``tie_word_embeddings`` is true.
    """
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model_type must be one of {list(SUPPORTED_MODEL_TYPES)}, "
            f"got {model_type!r}"
        )
    qkv_bias = model_type == "qwen2" or bool(config.get("attention_bias", False))
    o_bias = model_type == "llama" and bool(config.get("attention_bias", False))
    mlp_bias = model_type == "llama" and bool(config.get("mlp_bias", False))
    names = ["model.embed_tokens.weight"]
    for i in range(int(config["num_hidden_layers"])):
        p = f"model.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj"):
            names.append(f"{p}self_attn.{proj}.weight")
            if qkv_bias:
                names.append(f"{p}self_attn.{proj}.bias")
        names.append(f"{p}self_attn.o_proj.weight")
        if o_bias:
            names.append(f"{p}self_attn.o_proj.bias")
        for proj in ("gate_proj", "up_proj", "down_proj"):
            names.append(f"{p}mlp.{proj}.weight")
            if mlp_bias:
                names.append(f"{p}mlp.{proj}.bias")
        names += [f"{p}input_layernorm.weight", f"{p}post_attention_layernorm.weight"]
    names.append("model.norm.weight")
    if not config.get("tie_word_embeddings", False):
        names.append("lm_head.weight")
    return names


def _check_tensors(
    tensors: dict[str, np.ndarray], config: dict[str, Any], source: pathlib.Path
) -> None:
    missing = [n for n in expected_tensor_names(config) if n not in tensors]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ValueError(
            f"{source} is missing {len(missing)} tensor(s) of a "
            f"{config['model_type']} model with {config['num_hidden_layers']} "
            f"layers: {shown}"
        )


def _read_safetensors(file: pathlib.Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return load_file(file)
    except Exception as e:  # SafetensorError, OSError, ...: name the file
        raise ValueError(
            f"could not read safetensors file {file} (truncated or corrupt?): {e}"
        ) from e


def _weight_files(folder: pathlib.Path) -> list[pathlib.Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as e:
            raise ValueError(f"could not parse {index}: {e}") from e
        files = [folder / f for f in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise ValueError(f"{index} lists shard(s) missing from {folder}: {absent}")
        return files
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    found = sorted(folder.glob("*.safetensors"))
    if found:
        return found
    raise ValueError(
        f"{folder} has no model.safetensors, model.safetensors.index.json or other "
        "*.safetensors weights"
    )


def load_local_tokenizer(folder: str):
    """The tokenizer of an HF folder, offline (``local_files_only``).

    Raises:
      ValueError: naming the folder, when no tokenizer loads from it.
    """
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as e:
        raise ValueError(
            f"could not load a tokenizer from {folder} (pass tokenizer=False to "
            f"load the weights alone): {e}"
        ) from e


def load_hf_folder(
    path: str | os.PathLike[str], *, tokenizer: bool = True
) -> LoadedModel:
    """Load a Hugging Face Llama or Qwen2 model folder.

    Reads ``config.json``, the weights from ``model.safetensors`` or the shards
    named by ``model.safetensors.index.json``, and (optionally) the tokenizer with
    ``transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)``.
    Tensors keep the dtype stored in the file.

    Args:
        path: the model folder.
        tokenizer: also load the tokenizer.

    Returns:
        A :class:`LoadedModel`.

    Raises:
        ValueError: naming the folder or file when ``config.json`` is missing, the
            ``model_type`` is not supported, a safetensors file is truncated or
            corrupt, or a tensor the config requires is missing.

    References:
        Wolf et al., `Transformers: State-of-the-Art Natural Language Processing
        <https://arxiv.org/abs/1910.03771>`_, 2020.
    """
    folder = pathlib.Path(path)
    if not folder.is_dir():
        raise ValueError(f"path must be a Hugging Face model folder, got {folder}")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(
            f"{folder} has no config.json; expected a Hugging Face model folder"
        )
    try:
        config = json.loads(config_file.read_text())
    except ValueError as e:
        raise ValueError(f"could not parse {config_file}: {e}") from e
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{config_file} has model_type {model_type!r}; supported model types are "
            f"{list(SUPPORTED_MODEL_TYPES)}"
        )
    tensors: dict[str, np.ndarray] = {}
    for file in _weight_files(folder):
        tensors.update(_read_safetensors(file))
    _check_tensors(tensors, config, folder)
    tok = load_local_tokenizer(folder) if tokenizer else None
    return LoadedModel(config, tensors, tok, folder)


def load_gguf(
    path: str | os.PathLike[str],
    *,
    tokenizer: bool = True,
    tokenizer_cache: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """Load a Llama or Qwen2 GGUF file as Hugging Face config, tensors and tokenizer.

    Tensors are dequantized to float32 (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1,
    Q8_0 and the K-quants), renamed to Hugging Face names and, for Llama, have
    llama.cpp's rotary row permutation of Q and K undone; the config comes from
    the file's metadata and the tokenizer (with its chat template) from its
    ``tokenizer.*`` metadata through transformers.

    Args:
        path: a ``.gguf`` file.
        tokenizer: also build the tokenizer.
        tokenizer_cache: folder caching the converted tokenizer between calls;
            defaults to ``<model cache>/tokenizers``.

    Returns:
        A :class:`LoadedModel` with float32 tensors.

    Raises:
        ValueError: naming the file and the unsupported architecture, quantization
            type or missing tensor.

    References:
        Gerganov et al., `GGUF file format
        <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>`_, 2023.
    """
    file = pathlib.Path(path)
    if not file.is_file():
        raise ValueError(f"path must be a .gguf file, got {file}")
    reader = _gguf._reader(file)
    config = _gguf.gguf_config(file, reader)
    tensors = _gguf.gguf_tensors(file, config, reader)
    del reader
    _check_tensors(tensors, config, file)
    tok = None
    if tokenizer:
        cache = (
            model_cache_dir() / "tokenizers"
            if tokenizer_cache is None
            else pathlib.Path(tokenizer_cache)
        )
        cache.mkdir(parents=True, exist_ok=True)
        tok = _gguf.gguf_tokenizer(file, cache)
    return LoadedModel(config, tensors, tok, file)


def load_pretrained(
    name_or_path: str | os.PathLike[str], *, tokenizer: bool = True
) -> LoadedModel:
    """Load a causal LM from a known alias, a ``.gguf`` file or a Hugging Face folder.

    Args:
        name_or_path: an alias of :data:`PRETRAINED` naming a causal LM (e.g.
            ``"smollm2-135m"``, fetched on first use), a ``.gguf`` file, or a model
            folder with ``config.json``.
        tokenizer: also load the tokenizer.

    Returns:
        A :class:`LoadedModel`.

    Examples:
        >>> m = load_pretrained("smollm2-135m")  # doctest: +SKIP
        >>> m.config["num_hidden_layers"], m.tensors["model.norm.weight"].shape
        (30, (576,))

    References:
        Allal et al., `SmolLM2: When Smol Goes Big
        <https://arxiv.org/abs/2502.02737>`_, 2025.
    """
    if isinstance(name_or_path, str) and name_or_path in PRETRAINED:
        path = resolve_pretrained(name_or_path)
    else:
        path = pathlib.Path(name_or_path)
    if path.is_dir():
        return load_hf_folder(path, tokenizer=tokenizer)
    if path.is_file() and path.suffix == ".gguf":
        return load_gguf(path, tokenizer=tokenizer)
    raise ValueError(
        f"name_or_path must be one of {sorted(PRETRAINED)}, a .gguf file or a Hugging "
        f"Face model folder, got {str(name_or_path)!r}"
    )


def load_llama(
    name_or_path: str | os.PathLike[str],
    *,
    dtype: str = "float32",
    lora_config: Any = None,
    key: Any = None,
) -> tuple[Any, Any]:
    """Build an :class:`ol_jax.models.Llama` from an alias, GGUF file or HF folder.

    :func:`load_pretrained` followed by ``LlamaConfig.from_hf_dict`` and
    ``llama_params_from_hf``.

    Args:
        name_or_path: as for :func:`load_pretrained` (e.g. ``"smollm2-135m"``).
        dtype: parameter dtype, ``"float32"`` or ``"bfloat16"``.
        lora_config: a ``LoRAConfig`` to add adapters (``B = 0``), or None.
        key: PRNG key for the adapters' ``A`` init.

    Returns:
        ``(model, tokenizer)``.

    Examples:
        >>> model, tok = load_llama("smollm2-135m")  # doctest: +SKIP
        >>> model(jnp.asarray(tok("Hello").input_ids)).shape  # doctest: +SKIP
        (1, 49152)

    References:
        Touvron et al., `LLaMA: Open and Efficient Foundation Language Models
        <https://arxiv.org/abs/2302.13971>`_, 2023.
    """
    from ol_jax.models._llama import LlamaConfig, llama_params_from_hf

    loaded = load_pretrained(name_or_path)
    config = LlamaConfig.from_hf_dict(loaded.config, dtype=dtype)
    model = llama_params_from_hf(
        config, loaded.tensors, lora_config=lora_config, key=key
    )
    return model, loaded.tokenizer
