"""LoRA adapter utilities: merge / unmerge, save / load, Hugging Face names.

An adapter on projection ``W [in, out]`` is ``A [in, r]``, ``B [r, out]`` and the
scale ``s = alpha / r``; merging bakes it into the base, ``W' = W + s A B``, and
unmerging subtracts it again. Adapters are stacked over layers like the base
(``A [L, in, r]``), and are saved alone as one safetensors file plus a json config.

References:
    Hu et al., `LoRA: Low-Rank Adaptation of Large Language Models
    <https://arxiv.org/abs/2106.09685>`_, 2021.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file

from ol_jax.models._llama import LLAMA_PROJECTIONS, LlamaConfig, LoRAConfig

__all__ = [
    "merge_lora",
    "unmerge_lora",
    "save_adapter",
    "load_adapter",
    "lora_to_hf",
    "lora_from_hf",
]

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_FORMAT = "ol_jax-lora-v1"


def _pure(tree: Any) -> dict[str, Any]:
    return nnx.to_pure_dict(tree) if isinstance(tree, nnx.State) else dict(tree)


def _adapters(lora: Any) -> dict[str, tuple[Any, Any]]:
    """``{projection: (A, B)}`` from a LoRA state or its pure dict."""
    layers = _pure(lora).get("layers", {})
    out = {}
    for name, entry in layers.items():
        if name not in LLAMA_PROJECTIONS:
            raise ValueError(
                f"unknown LoRA module {name!r}: expected one of "
                f"{list(LLAMA_PROJECTIONS)}"
            )
        out[name] = (entry["lora_a"], entry["lora_b"])
    return out


def _shift(frozen: Any, lora: Any, lora_config: LoRAConfig, sign: float) -> Any:
    pure = _pure(frozen)
    layers = dict(pure["layers"])
    for name, (a, b) in _adapters(lora).items():
        entry = dict(layers[name])
        kernel = entry["kernel"]
        delta = jnp.einsum(
            "lir,lro->lio",
            jnp.asarray(a, jnp.float32),
            jnp.asarray(b, jnp.float32),
            precision=jax.lax.Precision.HIGHEST,
        )
        shifted = jnp.asarray(kernel, jnp.float32) + (sign * lora_config.scale) * delta
        entry["kernel"] = shifted.astype(jnp.asarray(kernel).dtype)
        layers[name] = entry
    out = {**pure, "layers": layers}
    if isinstance(frozen, nnx.State):
        new = jax.tree.map(lambda x: x, frozen)
        nnx.replace_by_pure_dict(new, out)
        return new
    return out


def merge_lora(frozen: Any, lora: Any, lora_config: LoRAConfig) -> Any:
    """Bakes the adapters into the base kernels: ``W' = W + (alpha / r) A B``.

    Use the result with ``use_lora=False`` (or no adapter) to get the adapted
    model at base cost.

    Args:
        frozen: the base state from ``split_lora`` (or its pure dict).
        lora: the LoRA state (or its pure dict).
        lora_config: gives the scale ``alpha / r``.

    Returns:
        A new base state of the same structure; the inputs are unchanged.
    """
    return _shift(frozen, lora, lora_config, 1.0)


def unmerge_lora(frozen: Any, lora: Any, lora_config: LoRAConfig) -> Any:
    """Removes merged adapters again: ``W = W' - (alpha / r) A B``.

    Args:
        frozen: a base state produced by ``merge_lora``.
        lora: the same LoRA state that was merged.
        lora_config: gives the scale ``alpha / r``.

    Returns:
        The base state with the adapter subtracted (exact up to float rounding).
    """
    return _shift(frozen, lora, lora_config, -1.0)


def save_adapter(directory: str | os.PathLike, lora: Any, lora_config: LoRAConfig):
    """Saves an adapter alone: ``adapter.safetensors`` + ``adapter_config.json``.

    Tensors are named ``layers.<projection>.lora_a`` / ``lora_b`` with the stacked
    layouts ``[L, in, r]`` / ``[L, r, out]``, stored as float32.

    Args:
        directory: folder to write (created if needed).
        lora: the LoRA state (or its pure dict).
        lora_config: hyperparameters stored beside the weights.
    """
    os.makedirs(directory, exist_ok=True)
    tensors = {}
    for name, (a, b) in _adapters(lora).items():
        tensors[f"layers.{name}.lora_a"] = np.asarray(jnp.asarray(a, jnp.float32))
        tensors[f"layers.{name}.lora_b"] = np.asarray(jnp.asarray(b, jnp.float32))
    save_file(tensors, os.path.join(directory, ADAPTER_WEIGHTS))
    meta = {
        "format": _FORMAT,
        "rank": lora_config.rank,
        "alpha": lora_config.alpha,
        "dropout": lora_config.dropout,
        "target_modules": list(lora_config.target_modules),
    }
    with open(os.path.join(directory, ADAPTER_CONFIG), "w") as f:
        json.dump(meta, f, indent=2)


def load_adapter(
    directory: str | os.PathLike, *, like: Any = None
) -> tuple[Any, LoRAConfig]:
    """Loads an adapter written by ``save_adapter``.

    Args:
        directory: the adapter folder.
        like: optional LoRA state to match (from ``split_lora``); the result then
            has its structure and dtypes, and shapes are checked against it.

    Returns:
        ``(lora, lora_config)``; ``lora`` is a state like ``like`` or, without it,
        a pure nested dict usable with ``nnx.merge`` / ``llama_apply``.

    Raises:
        ValueError: naming a missing file, an unknown format, or a shape mismatch.
    """
    cfg_path = os.path.join(directory, ADAPTER_CONFIG)
    w_path = os.path.join(directory, ADAPTER_WEIGHTS)
    for path in (cfg_path, w_path):
        if not os.path.exists(path):
            raise ValueError(f"adapter file {path!r} does not exist")
    with open(cfg_path) as f:
        meta = json.load(f)
    if meta.get("format") != _FORMAT:
        raise ValueError(
            f"adapter config {cfg_path!r} has format {meta.get('format')!r}, "
            f"expected {_FORMAT!r}"
        )
    lora_config = LoRAConfig(
        rank=int(meta["rank"]),
        alpha=float(meta["alpha"]),
        dropout=float(meta["dropout"]),
        target_modules=tuple(meta["target_modules"]),
    )
    tensors = load_file(w_path)
    layers = {}
    for name in lora_config.target_modules:
        entry = {}
        for part in ("lora_a", "lora_b"):
            key = f"layers.{name}.{part}"
            if key not in tensors:
                raise ValueError(f"adapter file {w_path!r} is missing tensor {key!r}")
            entry[part] = jnp.asarray(tensors[key])
        layers[name] = entry
    pure = {"layers": layers}
    if like is None:
        return pure, lora_config
    want = _pure(like)
    got_shapes = jax.tree.map(jnp.shape, pure)
    want_shapes = jax.tree.map(jnp.shape, want)
    if got_shapes != want_shapes:
        raise ValueError(
            f"adapter {directory!r} has shapes {got_shapes}, expected {want_shapes}"
        )
    pure = jax.tree.map(lambda x, w: x.astype(jnp.asarray(w).dtype), pure, want)
    new = jax.tree.map(lambda x: x, like)
    nnx.replace_by_pure_dict(new, pure)
    return new, lora_config


def lora_to_hf(lora: Any) -> dict[str, np.ndarray]:
    """Adapter weights under Hugging Face / PEFT module names, PyTorch layouts.

    Names are ``model.layers.{i}.self_attn.q_proj.lora_A.weight`` (``[r, in]``) and
    ``...lora_B.weight`` (``[out, r]``); PEFT files add the prefix
    ``base_model.model.``.

    Args:
        lora: the LoRA state (or its pure dict).

    Returns:
        ``{name: float32 numpy array}``.
    """
    out = {}
    for name, (a, b) in _adapters(lora).items():
        a = np.asarray(jnp.asarray(a, jnp.float32))
        b = np.asarray(jnp.asarray(b, jnp.float32))
        for i in range(a.shape[0]):
            prefix = f"model.layers.{i}.{LLAMA_PROJECTIONS[name]}.{name}"
            out[prefix + ".lora_A.weight"] = a[i].T.copy()
            out[prefix + ".lora_B.weight"] = b[i].T.copy()
    return out


def lora_from_hf(
    tensors: Mapping[str, np.ndarray], config: LlamaConfig, lora_config: LoRAConfig
) -> dict[str, Any]:
    """The inverse of ``lora_to_hf``: a pure LoRA dict from HF-named tensors.

    Args:
        tensors: ``{name: array}`` named as ``lora_to_hf`` writes them.
        config: the model architecture (number of layers).
        lora_config: which projections to read.

    Returns:
        ``{"layers": {proj: {"lora_a": [L, in, r], "lora_b": [L, r, out]}}}``.

    Raises:
        ValueError: naming a missing tensor or a wrong shape.
    """
    layers = {}
    r = lora_config.rank
    for name in lora_config.target_modules:
        a_list, b_list = [], []
        for i in range(config.num_hidden_layers):
            prefix = f"model.layers.{i}.{LLAMA_PROJECTIONS[name]}.{name}"
            for suffix, store in (
                (".lora_A.weight", a_list),
                (".lora_B.weight", b_list),
            ):
                key = prefix + suffix
                if key not in tensors:
                    raise ValueError(f"missing LoRA tensor {key!r}")
                store.append(np.asarray(tensors[key], np.float32).T)
        a, b = np.stack(a_list), np.stack(b_list)
        if a.shape[2] != r or b.shape[1] != r:
            raise ValueError(
                f"LoRA tensors for {name!r} have rank {a.shape[2]}, expected {r}"
            )
        layers[name] = {"lora_a": jnp.asarray(a), "lora_b": jnp.asarray(b)}
    return {"layers": layers}
