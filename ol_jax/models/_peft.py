"""LoRA adapters in Hugging Face PEFT's on-disk format, both ways.

A PEFT LoRA adapter folder holds ``adapter_config.json`` (``peft_type`` ``LORA``,
``r``, ``lora_alpha``, ``target_modules``, ...) and ``adapter_model.safetensors``
with, for every adapted linear map ``W`` (PyTorch ``[out, in]``), the tensors
``base_model.model.model.layers.{i}.{self_attn|mlp}.{name}.lora_A.weight``
(``[r, in]``) and ``...lora_B.weight`` (``[out, r]``). The adapted map is

    y = x W^T + (alpha / r) x A^T B^T.

The interchange value on this side is :class:`PeftAdapter`: a dict from
``(layer_index, module_name)`` to ``(A [r, in], B [out, r])`` numpy arrays plus the
rank, alpha, dropout and target modules. :func:`lora_to_peft` and
:func:`lora_from_peft` convert it to and from the layer-stacked adapters of
:class:`ol_jax.models.Llama` (``A [L, in, r]``, ``B [L, r, out]``, applied as
``x A B``).

References:
    Hu et al., `LoRA: Low-Rank Adaptation of Large Language Models
    <https://arxiv.org/abs/2106.09685>`_, 2021.
    Mangrulkar et al., `PEFT: State-of-the-art Parameter-Efficient Fine-Tuning
    methods <https://github.com/huggingface/peft>`_, 2022.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Any, NamedTuple

import numpy as np

from ol_jax.models._llama import _proj_shapes

__all__ = [
    "PEFT_MODULE_PARENTS",
    "PeftAdapter",
    "load_peft_adapter",
    "lora_from_peft",
    "lora_to_peft",
    "save_peft_adapter",
]

#: Adaptable projections of a Llama / Qwen2 block and the sub-module holding each.
PEFT_MODULE_PARENTS: dict[str, str] = {
    "q_proj": "self_attn",
    "k_proj": "self_attn",
    "v_proj": "self_attn",
    "o_proj": "self_attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
}

_KEY_RE = re.compile(
    r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(self_attn|mlp)\."
    r"([a-z_]+)\.lora_([AB])(?:\.[A-Za-z0-9_]+)?\.weight$"
)
# Options whose non-default values change the adapter's math in ways not expressible
# as a plain (A, B, alpha / r) adapter.
_UNSUPPORTED = {
    "use_rslora": False,
    "use_dora": False,
    "fan_in_fan_out": False,
    "bias": "none",
    "modules_to_save": None,
    "rank_pattern": {},
    "alpha_pattern": {},
}


class PeftAdapter(NamedTuple):
    """A LoRA adapter in PEFT's per-module layout.

    Attributes:
        weights: ``(layer_index, module_name)`` -> ``(A [r, in], B [out, r])``.
        rank: the rank ``r``.
        alpha: ``lora_alpha``; the update is scaled by ``alpha / r``.
        target_modules: the adapted projection names, e.g. ``("q_proj", "v_proj")``.
        dropout: ``lora_dropout`` (used only in training).
    """

    weights: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    dropout: float = 0.0


def _peft_key(layer: int, module: str, which: str) -> str:
    parent = PEFT_MODULE_PARENTS[module]
    return (
        f"base_model.model.model.layers.{layer}.{parent}.{module}.lora_{which}.weight"
    )


def _check_adapter(adapter: PeftAdapter) -> None:
    if adapter.rank < 1:
        raise ValueError(f"rank must be >= 1, got {adapter.rank}")
    for name in adapter.target_modules:
        if name not in PEFT_MODULE_PARENTS:
            raise ValueError(
                f"target module must be one of {list(PEFT_MODULE_PARENTS)}, "
                f"got {name!r}"
            )
    for (layer, module), (a, b) in adapter.weights.items():
        if module not in adapter.target_modules:
            raise ValueError(
                f"adapter weights for layer {layer} module {module!r}, which is not in "
                f"target_modules {list(adapter.target_modules)}"
            )
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != adapter.rank:
            raise ValueError(
                f"layer {layer} {module}: expected A [r={adapter.rank}, in] and "
                f"B [out, r], got A {a.shape} and B {b.shape}"
            )
        if b.shape[1] != adapter.rank:
            raise ValueError(
                f"layer {layer} {module}: expected B [out, r={adapter.rank}], "
                f"got {b.shape}"
            )


def save_peft_adapter(
    path: str | os.PathLike[str],
    adapter: PeftAdapter,
    *,
    base_model_name_or_path: str | None = None,
) -> pathlib.Path:
    """Write an adapter as a PEFT LoRA folder loadable by ``PeftModel.from_pretrained``.

    Writes ``adapter_config.json`` (``peft_type`` ``LORA``, ``task_type``
    ``CAUSAL_LM``, ``r``, ``lora_alpha``, ``lora_dropout``, ``target_modules``) and
    ``adapter_model.safetensors`` with keys
    ``base_model.model.model.layers.{i}.{self_attn|mlp}.{module}.lora_{A|B}.weight``.

    Args:
        path: the folder to write (created if needed).
        adapter: the adapter.
        base_model_name_or_path: recorded in the config for PEFT's reference.

    Returns:
        The folder.

    References:
        Hu et al., `LoRA: Low-Rank Adaptation of Large Language Models
        <https://arxiv.org/abs/2106.09685>`_, 2021.
    """
    from safetensors.numpy import save_file

    _check_adapter(adapter)
    folder = pathlib.Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for (layer, module), (a, b) in sorted(adapter.weights.items()):
        tensors[_peft_key(layer, module, "A")] = np.ascontiguousarray(a)
        tensors[_peft_key(layer, module, "B")] = np.ascontiguousarray(b)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": int(adapter.rank),
        "lora_alpha": float(adapter.alpha),
        "lora_dropout": float(adapter.dropout),
        "target_modules": sorted(adapter.target_modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "layers_to_transform": sorted({layer for layer, _ in adapter.weights}) or None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
    }
    save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def load_peft_adapter(path: str | os.PathLike[str]) -> PeftAdapter:
    """Read a PEFT LoRA adapter folder into a :class:`PeftAdapter`.

    Accepts folders written by PEFT's ``save_pretrained`` for Llama / Qwen2 causal
    LMs, and by :func:`save_peft_adapter`. Options that a plain ``(alpha / r) B A``
    adapter cannot express (rsLoRA, DoRA, per-module rank or alpha patterns, bias
    training, ``modules_to_save``) are refused with a ``ValueError``.

    Args:
        path: the adapter folder.

    Returns:
        The adapter, arrays in the file's dtype.

    References:
        Mangrulkar et al., `PEFT: State-of-the-art Parameter-Efficient Fine-Tuning
        methods <https://github.com/huggingface/peft>`_, 2022.
    """
    from safetensors.numpy import load_file

    folder = pathlib.Path(path)
    config_file = folder / "adapter_config.json"
    weights_file = folder / "adapter_model.safetensors"
    if not config_file.is_file():
        raise ValueError(f"{folder} has no adapter_config.json; expected a PEFT folder")
    if not weights_file.is_file():
        raise ValueError(f"{folder} has no adapter_model.safetensors")
    config = json.loads(config_file.read_text())
    if config.get("peft_type") != "LORA":
        raise ValueError(
            f"{config_file}: peft_type must be 'LORA', got {config.get('peft_type')!r}"
        )
    for key, default in _UNSUPPORTED.items():
        value = config.get(key, default)
        if value != default and not (default == {} and not value):
            raise ValueError(
                f"{config_file}: {key}={value!r} is not supported "
                f"(expected {default!r})"
            )
    targets = config.get("target_modules")
    if isinstance(targets, str):
        raise ValueError(
            f"{config_file}: target_modules must be a list of names, got the "
            f"pattern {targets!r}"
        )
    try:
        raw = load_file(weights_file)
    except Exception as e:
        raise ValueError(f"could not read safetensors file {weights_file}: {e}") from e
    parts: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for key, value in raw.items():
        m = _KEY_RE.match(key)
        if m is None or m.group(3) not in PEFT_MODULE_PARENTS:
            raise ValueError(f"{weights_file}: unexpected tensor {key}")
        layer, _, module, which = m.groups()
        parts.setdefault((int(layer), module), {})[which] = value
    weights = {}
    for (layer, module), ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            raise ValueError(
                f"{weights_file}: layer {layer} {module} lacks lora_A or lora_B"
            )
        weights[(layer, module)] = (ab["A"], ab["B"])
    found = sorted({module for _, module in weights})
    adapter = PeftAdapter(
        weights=weights,
        rank=int(config["r"]),
        alpha=float(config.get("lora_alpha", 8)),
        target_modules=tuple(sorted(targets)) if targets else tuple(found),
        dropout=float(config.get("lora_dropout", 0.0)),
    )
    _check_adapter(adapter)
    return adapter


def _stacked_adapters(lora: Any) -> dict[str, tuple[Any, Any]]:
    from flax import nnx

    if isinstance(lora, nnx.State):
        lora = nnx.to_pure_dict(lora)
    layers = dict(lora).get("layers")
    if layers is None:
        raise ValueError(
            "lora must be a LoRA state or pure dict {'layers': {proj: {'lora_a', "
            f"'lora_b'}}}}}}, got keys {sorted(dict(lora))}"
        )
    return {name: (e["lora_a"], e["lora_b"]) for name, e in layers.items()}


def lora_to_peft(lora: Any, lora_config: Any) -> PeftAdapter:
    """Convert layer-stacked adapters of :class:`ol_jax.models.Llama` to PEFT's layout.

    Ours apply ``x A_l B_l`` with ``A [L, in, r]`` and ``B [L, r, out]``; PEFT's
    per-layer ``lora_A.weight`` is ``A_l^T`` (``[r, in]``) and ``lora_B.weight``
    is ``B_l^T`` (``[out, r]``), so ``x A_l B_l = x lora_A^T lora_B^T`` and the
    scale ``alpha / r`` is the same on both sides.

    Args:
        lora: the LoRA state from ``split_lora`` or its pure dict
            ``{"layers": {proj: {"lora_a": A, "lora_b": B}}}``.
        lora_config: the model's ``LoRAConfig`` (rank, alpha, dropout, targets).

    Returns:
        A :class:`PeftAdapter` with float32 arrays, ready for
        :func:`save_peft_adapter`.

    References:
        Hu et al., `LoRA: Low-Rank Adaptation of Large Language Models
        <https://arxiv.org/abs/2106.09685>`_, 2021.
    """
    weights = {}
    for name, (a, b) in sorted(_stacked_adapters(lora).items()):
        a = np.asarray(a, dtype=np.float32)
        b = np.asarray(b, dtype=np.float32)
        if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0]:
            raise ValueError(
                f"{name}: expected A [L, in, r] and B [L, r, out], got A {a.shape} "
                f"and B {b.shape}"
            )
        for layer in range(a.shape[0]):
            weights[(layer, name)] = (a[layer].T.copy(), b[layer].T.copy())
    adapter = PeftAdapter(
        weights=weights,
        rank=int(lora_config.rank),
        alpha=float(lora_config.alpha),
        target_modules=tuple(lora_config.target_modules),
        dropout=float(lora_config.dropout),
    )
    _check_adapter(adapter)
    return adapter


def lora_from_peft(adapter: PeftAdapter, config: Any) -> tuple[dict[str, Any], Any]:
    """Convert a PEFT-layout adapter to :class:`ol_jax.models.Llama`'s stacked one.

    The inverse of :func:`lora_to_peft`: ``A_l = lora_A^T`` (``[in, r]``) and
    ``B_l = lora_B^T`` (``[r, out]``) stacked over layers. A layer the adapter does
    not cover (PEFT's ``layers_to_transform``) gets ``A = B = 0``, which adds
    nothing, as in PEFT.

    Args:
        adapter: from :func:`load_peft_adapter`.
        config: the ``LlamaConfig`` of the model it goes on.

    Returns:
        ``(lora, lora_config)``: the pure dict ``{"layers": {proj: {"lora_a":
        [L, in, r], "lora_b": [L, r, out]}}}`` (float32 numpy arrays) to pass as
        ``lora`` to ``llama_apply`` or into a LoRA state with
        ``nnx.replace_by_pure_dict``, and the matching ``LoRAConfig``.

    References:
        Hu et al., `LoRA: Low-Rank Adaptation of Large Language Models
        <https://arxiv.org/abs/2106.09685>`_, 2021.
    """
    from ol_jax.models._llama import LoRAConfig

    _check_adapter(adapter)
    shapes = _proj_shapes(config)
    n_layers, r = config.num_hidden_layers, adapter.rank
    for layer, _ in adapter.weights:
        if not 0 <= layer < n_layers:
            raise ValueError(
                f"adapter has layer {layer}, expected 0..{n_layers - 1} for this model"
            )
    layers = {}
    for name in adapter.target_modules:
        fan_in, fan_out = shapes[name]
        a = np.zeros((n_layers, fan_in, r), np.float32)
        b = np.zeros((n_layers, r, fan_out), np.float32)
        for layer in range(n_layers):
            if (layer, name) not in adapter.weights:
                continue
            la, lb = adapter.weights[(layer, name)]
            if la.shape != (r, fan_in) or lb.shape != (fan_out, r):
                raise ValueError(
                    f"layer {layer} {name}: expected lora_A {(r, fan_in)} and "
                    f"lora_B {(fan_out, r)}, got {la.shape} and {lb.shape}"
                )
            a[layer] = np.asarray(la, np.float32).T
            b[layer] = np.asarray(lb, np.float32).T
        layers[name] = {"lora_a": a, "lora_b": b}
    lora_config = LoRAConfig(
        rank=r,
        alpha=adapter.alpha,
        dropout=adapter.dropout,
        target_modules=tuple(adapter.target_modules),
    )
    return {"layers": layers}, lora_config
