"""Llama-family decoder (Llama, SmolLM2, Qwen2) as a Flax NNX module with LoRA.

The model is a stack of pre-norm transformer blocks,

    h = h + Attn(RMSNorm(h)),    h = h + MLP(RMSNorm(h)),
    MLP(x) = W_down (silu(W_gate x) * W_up x),

with rotary position embeddings (Hugging Face's ``rotate_half`` convention) and
grouped-query attention. Every per-layer parameter carries a leading layer axis and
the blocks run under one ``jax.lax.scan``, so compile time does not grow with depth.

LoRA adapters live beside the base kernels as ``nnx.LoRAParam`` leaves, so
``nnx.split`` separates the small trainable pytree from the frozen base:

    y = x W + b + (alpha / r) * dropout(x) A B,    A: [in, r],  B: [r, out].

The core is a pure function over plain arrays (``_forward``); the module only holds
the variables. Each adapted projection is one ``jax.custom_vjp`` (``_adapted_dot``)
whose backward pass computes input and adapter gradients only, never the frozen
kernel's. ``llama_apply`` is the functional entry point for the online core.

References:
    Touvron et al., `LLaMA: Open and Efficient Foundation Language Models
    <https://arxiv.org/abs/2302.13971>`_, 2023.
    Su et al., `RoFormer: Enhanced Transformer with Rotary Position Embedding
    <https://arxiv.org/abs/2104.09864>`_, 2021.
    Ainslie et al., `GQA: Training Generalized Multi-Query Transformer Models
    <https://arxiv.org/abs/2305.13245>`_, 2023.
    Hu et al., `LoRA: Low-Rank Adaptation of Large Language Models
    <https://arxiv.org/abs/2106.09685>`_, 2021.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = [
    "LLAMA_PROJECTIONS",
    "LlamaConfig",
    "LoRAConfig",
    "Llama",
    "llama_apply",
    "llama_apply_with_reference",
    "split_lora",
    "llama_params_from_hf",
    "llama_params_to_hf",
]

# Every linear map of a block, with the Hugging Face sub-module that holds it.
LLAMA_PROJECTIONS: dict[str, str] = {
    "q_proj": "self_attn",
    "k_proj": "self_attn",
    "v_proj": "self_attn",
    "o_proj": "self_attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
}
_BIASED = ("q_proj", "k_proj", "v_proj")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_ROPE_TYPES = ("default", "linear", "llama3")
# A large finite negative score: a fully masked row (a padding query) then gets a
# uniform softmax instead of NaN, and its output is never read.
_MASK_VALUE = -1e30


def _freeze(value: Any) -> Any:
    """Turns nested dicts / lists into sorted tuples so a config stays hashable."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Architecture of a Llama-family decoder (hashable, so it can be static).

    Attributes:
        vocab_size: number of token ids.
        hidden_size: model width ``D``.
        intermediate_size: SwiGLU hidden width.
        num_hidden_layers: number of blocks ``L``.
        num_attention_heads: query heads ``H``.
        num_key_value_heads: key/value heads (``H`` divisible by it); ``None`` → ``H``.
        head_dim: per-head width; ``None`` → ``D // H``.
        rms_norm_eps: epsilon inside RMSNorm.
        rope_theta: rotary base frequency.
        rope_scaling: ``None`` or the HF ``rope_scaling`` mapping (types ``default``,
            ``linear``, ``llama3``), stored as a sorted tuple of items.
        max_position_embeddings: longest position the model was trained for.
        tie_word_embeddings: the output head reuses the embedding matrix.
        attention_bias: q/k/v projections have biases (Qwen2).
        bos_token_id: beginning-of-sequence id or ``None``.
        eos_token_id: end-of-sequence id, a tuple of ids, or ``None``.
        model_type: ``"llama"`` or ``"qwen2"``.
        dtype: parameter and compute dtype, ``"float32"`` or ``"bfloat16"``.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: Any = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    model_type: str = "llama"
    dtype: str = "float32"

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_key_value_heads is None:
            set_("num_key_value_heads", self.num_attention_heads)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                "num_attention_heads must be a multiple of num_key_value_heads, got "
                f"{self.num_attention_heads} and {self.num_key_value_heads}"
            )
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    "hidden_size must be divisible by num_attention_heads when "
                    f"head_dim is not given, got {self.hidden_size} and "
                    f"{self.num_attention_heads}"
                )
            set_("head_dim", self.hidden_size // self.num_attention_heads)
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.dtype not in _DTYPES:
            raise ValueError(
                f"dtype must be one of {list(_DTYPES)}, got {self.dtype!r}"
            )
        if self.model_type not in ("llama", "qwen2"):
            raise ValueError(
                f"model_type must be 'llama' or 'qwen2', got {self.model_type!r}"
            )
        if isinstance(self.eos_token_id, list):
            set_("eos_token_id", tuple(self.eos_token_id))
        set_("rope_scaling", _freeze(self.rope_scaling))
        rope_type = self.rope_type
        if rope_type not in _ROPE_TYPES:
            raise ValueError(
                f"rope_scaling type must be one of {list(_ROPE_TYPES)} or None, got "
                f"{rope_type!r}"
            )

    @property
    def jnp_dtype(self) -> jnp.dtype:
        """The parameter dtype as a jnp dtype."""
        return jnp.dtype(_DTYPES[self.dtype])

    @property
    def rope_type(self) -> str:
        """The rotary scaling type (``"default"`` when there is none)."""
        if self.rope_scaling is None:
            return "default"
        items = dict(self.rope_scaling)
        return str(items.get("rope_type", items.get("type", "default")))

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """The end-of-sequence ids as a tuple (possibly empty)."""
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, tuple):
            return tuple(int(i) for i in self.eos_token_id)
        return (int(self.eos_token_id),)

    @classmethod
    def from_hf_dict(cls, config: Mapping[str, Any], *, dtype: str = "float32"):
        """Builds a config from a Hugging Face ``config.json`` mapping.

        Args:
            config: the parsed ``config.json`` (``model_type`` ``llama`` or ``qwen2``).
            dtype: parameter dtype to use, ``"float32"`` or ``"bfloat16"``.

        Returns:
            The ``LlamaConfig``.

        Raises:
            ValueError: for an unknown ``model_type``, MLP biases, sliding-window
                attention or an unsupported RoPE scaling type.
        """
        model_type = config.get("model_type")
        if model_type not in ("llama", "qwen2"):
            raise ValueError(
                f"unsupported model_type {model_type!r}: expected 'llama' or 'qwen2'"
            )
        if config.get("mlp_bias", False):
            raise ValueError("mlp_bias=True is not supported (expected False)")
        if model_type == "qwen2" and config.get("use_sliding_window", False):
            raise ValueError(
                "use_sliding_window=True is not supported for qwen2 (expected False)"
            )
        hidden_act = config.get("hidden_act", "silu")
        if hidden_act != "silu":
            raise ValueError(f"hidden_act must be 'silu', got {hidden_act!r}")
        # transformers v5 writes `rope_parameters` (with rope_theta inside); older
        # files write `rope_theta` and `rope_scaling` at the top level.
        rope = dict(config.get("rope_parameters") or {})
        rope_theta = rope.pop("rope_theta", config.get("rope_theta", 10000.0))
        scaling = config.get("rope_scaling") or rope or None
        if scaling is not None:
            scaling = dict(scaling)
            scaling.pop("rope_theta", None)
            kind = scaling.get("rope_type", scaling.get("type", "default"))
            if kind == "default":
                scaling = None
        heads = int(config["num_attention_heads"])
        return cls(
            vocab_size=int(config["vocab_size"]),
            hidden_size=int(config["hidden_size"]),
            intermediate_size=int(config["intermediate_size"]),
            num_hidden_layers=int(config["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=config.get("head_dim"),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope_theta),
            rope_scaling=scaling,
            max_position_embeddings=int(config.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            attention_bias=bool(config.get("attention_bias", model_type == "qwen2")),
            bos_token_id=config.get("bos_token_id"),
            eos_token_id=config.get("eos_token_id"),
            model_type=model_type,
            dtype=dtype,
        )


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """LoRA hyperparameters (PEFT's conventions: scale ``alpha / rank``).

    Attributes:
        rank: adapter rank ``r``.
        alpha: scaling numerator; the update is ``(alpha / r) A B``.
        dropout: dropout rate on the adapter input, applied only when a key is given.
        target_modules: projections that get an adapter, from ``LLAMA_PROJECTIONS``.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")

    def __post_init__(self):
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        # The rank is an array shape: a float would fail later, inside XLA.
        if isinstance(self.rank, bool) or not isinstance(self.rank, int):
            raise ValueError(f"rank must be an int, got {self.rank!r}")
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("target_modules must not be empty")
        for name in self.target_modules:
            if name not in LLAMA_PROJECTIONS:
                raise ValueError(
                    f"unknown LoRA target module {name!r}: expected one of "
                    f"{list(LLAMA_PROJECTIONS)}"
                )

    @property
    def scale(self) -> float:
        """The adapter scale ``alpha / rank``."""
        return float(self.alpha) / float(self.rank)


def _proj_shapes(config: LlamaConfig) -> dict[str, tuple[int, int]]:
    """(in, out) of each projection."""
    d, f, hd = config.hidden_size, config.intermediate_size, config.head_dim
    q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
    return {
        "q_proj": (d, q),
        "k_proj": (d, kv),
        "v_proj": (d, kv),
        "o_proj": (q, d),
        "gate_proj": (d, f),
        "up_proj": (d, f),
        "down_proj": (f, d),
    }


class StackedLinear(nnx.Module):
    """A linear map per layer, stacked on a leading layer axis, with optional LoRA.

    ``kernel`` is ``[L, in, out]`` (the transpose of a PyTorch ``weight``), ``bias``
    ``[L, out]``, and ``lora_a`` / ``lora_b`` are ``[L, in, r]`` / ``[L, r, out]``.
    """

    def __init__(
        self,
        kernel: jax.Array,
        bias: jax.Array | None,
        *,
        lora_rank: int | None = None,
        key: jax.Array | None = None,
    ):
        self.kernel = nnx.Param(kernel)
        self.bias = None if bias is None else nnx.Param(bias)
        if lora_rank is None:
            self.lora_a = None
            self.lora_b = None
        else:
            layers, fan_in, fan_out = kernel.shape
            # PEFT's default: kaiming_uniform_(a=sqrt(5)) gives U(-1/sqrt(in), ..).
            bound = 1.0 / math.sqrt(fan_in)
            a = jax.random.uniform(
                key, (layers, fan_in, lora_rank), jnp.float32, -bound, bound
            )
            self.lora_a = nnx.LoRAParam(a)
            self.lora_b = nnx.LoRAParam(
                jnp.zeros((layers, lora_rank, fan_out), jnp.float32)
            )


class LlamaBlocks(nnx.Module):
    """All transformer blocks of the model, every parameter stacked over layers."""

    def __init__(
        self,
        weights: Mapping[str, Any],
        config: LlamaConfig,
        lora_config: LoRAConfig | None,
        *,
        key: jax.Array,
    ):
        self.input_layernorm = nnx.Param(weights["input_layernorm"])
        self.post_attention_layernorm = nnx.Param(weights["post_attention_layernorm"])
        targets = () if lora_config is None else lora_config.target_modules
        keys = jax.random.split(key, len(LLAMA_PROJECTIONS))
        for k, name in zip(keys, LLAMA_PROJECTIONS, strict=True):
            rank = lora_config.rank if name in targets else None
            layer = StackedLinear(
                weights[name], weights.get(name + "_bias"), lora_rank=rank, key=k
            )
            setattr(self, name, layer)


class Llama(nnx.Module):
    """A Llama-family causal language model with optional LoRA adapters.

    Call it with token ids ``[T]`` or ``[B, T]`` to get float32 logits
    ``[..., T, vocab]``.

    Args:
        config: the architecture.
        lora_config: adapters to add (``None`` for none); ``A`` random, ``B`` zero.
        key: PRNG key for the random base init and the LoRA ``A`` init.
        weights: stacked base weights (internal layout, see
            ``llama_params_from_hf``); ``None`` draws them from N(0, 0.02²) like
            Hugging Face's ``initializer_range``, with unit norms and zero biases.

    Examples:
        >>> cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
        ...                   num_hidden_layers=2, num_attention_heads=4)
        >>> model = Llama(cfg, key=jax.random.key(0))
        >>> model(jnp.arange(5)).shape
        (5, 64)
    """

    def __init__(
        self,
        config: LlamaConfig,
        *,
        lora_config: LoRAConfig | None = None,
        key: jax.Array,
        weights: Mapping[str, Any] | None = None,
    ):
        self.config = config
        self.lora_config = lora_config
        init_key, lora_key = jax.random.split(key)
        if weights is None:
            weights = _random_weights(config, init_key)
        dtype = config.jnp_dtype
        cast = lambda x: None if x is None else jnp.asarray(x, dtype)
        weights = {k: cast(v) for k, v in weights.items()}
        self.embed_tokens = nnx.Param(weights["embed_tokens"])
        blocks = {
            k[len("layers.") :]: v
            for k, v in weights.items()
            if k.startswith("layers.")
        }
        self.layers = LlamaBlocks(blocks, config, lora_config, key=lora_key)
        self.norm = nnx.Param(weights["norm"])
        self.lm_head = (
            None if config.tie_word_embeddings else nnx.Param(weights["lm_head"])
        )

    def __call__(
        self,
        tokens: jax.Array,
        *,
        positions: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        use_lora: bool = True,
        key: jax.Array | None = None,
    ) -> jax.Array:
        """Logits of every position.

        Args:
            tokens: int token ids ``[T]`` or ``[B, T]``.
            positions: rotary positions, same shape as ``tokens``; defaults to
                ``cumsum(attention_mask) - 1`` (``arange(T)`` without a mask), so a
                left-padded row gets the positions it would have unpadded.
            attention_mask: bool/int ``[T]`` or ``[B, T]``, true for real tokens;
                padding keys are not attended to.
            use_lora: add the adapters (``False`` gives the base model's logits
                from the same weights).
            key: PRNG key for LoRA dropout; no dropout without a key.

        Returns:
            float32 logits ``[..., T, vocab]``.
        """
        return _call(
            self.config,
            self.lora_config,
            _base_arrays(self),
            _lora_arrays(self) if use_lora else {},
            tokens,
            positions=positions,
            attention_mask=attention_mask,
            key=key,
        )


def _random_weights(config: LlamaConfig, key: jax.Array) -> dict[str, Any]:
    """Random base weights in the internal flat layout."""
    L, d, v = config.num_hidden_layers, config.hidden_size, config.vocab_size
    keys = iter(jax.random.split(key, 16))
    normal = lambda shape: 0.02 * jax.random.normal(next(keys), shape, jnp.float32)
    w: dict[str, Any] = {
        "embed_tokens": normal((v, d)),
        "norm": jnp.ones((d,), jnp.float32),
        "layers.input_layernorm": jnp.ones((L, d), jnp.float32),
        "layers.post_attention_layernorm": jnp.ones((L, d), jnp.float32),
    }
    for name, (fan_in, fan_out) in _proj_shapes(config).items():
        w["layers." + name] = normal((L, fan_in, fan_out))
        if config.attention_bias and name in _BIASED:
            w["layers." + name + "_bias"] = jnp.zeros((L, fan_out), jnp.float32)
    if not config.tie_word_embeddings:
        w["lm_head"] = normal((d, v))
    return w


def _base_arrays(model: Llama) -> dict[str, Any]:
    blocks = model.layers
    layers: dict[str, Any] = {
        "input_layernorm": blocks.input_layernorm[...],
        "post_attention_layernorm": blocks.post_attention_layernorm[...],
    }
    for name in LLAMA_PROJECTIONS:
        lin = getattr(blocks, name)
        layers[name] = lin.kernel[...]
        if lin.bias is not None:
            layers[name + "_bias"] = lin.bias[...]
    return {
        "embed_tokens": model.embed_tokens[...],
        "layers": layers,
        "norm": model.norm[...],
        "lm_head": None if model.lm_head is None else model.lm_head[...],
    }


def _lora_arrays(model: Llama) -> dict[str, tuple[jax.Array, jax.Array]]:
    out = {}
    for name in LLAMA_PROJECTIONS:
        lin = getattr(model.layers, name)
        if lin.lora_a is not None:
            out[name] = (lin.lora_a[...], lin.lora_b[...])
    return out


# ----------------------------------------------------------------------------- core


def _rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """``w * x / sqrt(mean(x²) + eps)``, the statistics in float32 (as HF)."""
    xf = x.astype(jnp.float32)
    var = jnp.mean(xf * xf, axis=-1, keepdims=True)
    w = weight.reshape((1,) * (x.ndim - 1) + weight.shape)
    return w * (xf * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def _inv_freq(config: LlamaConfig) -> np.ndarray:
    """Rotary inverse frequencies (host constant), with the config's scaling."""
    hd = config.head_dim
    inv = 1.0 / (
        config.rope_theta
        ** (np.arange(0, hd, 2, dtype=np.int64).astype(np.float32) / hd)
    )
    inv = inv.astype(np.float32)
    kind = config.rope_type
    if kind == "default":
        return inv
    params = dict(config.rope_scaling)
    factor = float(params["factor"])
    if kind == "linear":
        return (inv / factor).astype(np.float32)
    # llama3: keep high frequencies, divide low ones by `factor`, blend between.
    low = float(params["low_freq_factor"])
    high = float(params["high_freq_factor"])
    old_len = float(params["original_max_position_embeddings"])
    wavelen = 2.0 * np.pi / inv
    scaled = np.where(wavelen > old_len / low, inv / factor, inv)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1.0 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def _rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """``x cos + rotate_half(x) sin`` on ``[B, T, heads, hd]``."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def _dot(x: jax.Array, w: jax.Array, head: bool) -> jax.Array:
    """``x @ w`` for a projection ``w [in, out]``; with ``head`` the output head,
    ``w`` then ``[V, D]`` (tied embedding) or ``[D, V]``, with float32 logits."""
    if not head:
        return x @ w
    if w.shape[0] == x.shape[-1]:
        return jnp.einsum("...d,dv->...v", x, w, preferred_element_type=jnp.float32)
    return jnp.einsum("...d,vd->...v", x, w, preferred_element_type=jnp.float32)


def _contract_last(x: jax.Array, w: jax.Array, w_axis: int) -> jax.Array:
    """``x [..., k]`` times ``w`` over ``x``'s last axis and ``w``'s axis ``w_axis``
    (``w_axis=1`` is ``x @ w.T`` without materialising the transpose)."""
    return jax.lax.dot_general(x, w, (((x.ndim - 1,), (w_axis,)), ((), ())))


def _contract_rows(x: jax.Array, y: jax.Array) -> jax.Array:
    """``sum_rows x[rows, i] y[rows, o]`` over all leading axes: ``[i, o]``."""
    rows = tuple(range(x.ndim - 1))
    return jax.lax.dot_general(x, y, ((rows, rows), ((), ())))


def _head_chunks(vocab: int) -> int:
    """How many vocabulary chunks the tied head's input gradient is summed over."""
    return next(c for c in (6, 4, 3, 2, 1) if vocab % c == 0)


@jax.custom_vjp
def _tied_head_dot(x: jax.Array, w: jax.Array) -> jax.Array:
    """float32 logits ``x E^T`` of a tied output head ``E [V, D]``.

    The input gradient ``dx = dlogits E`` contracts the long vocabulary axis; as
    one matmul XLA:CPU runs it at about half the forward's rate, as a batch of a
    few vocabulary chunks summed afterwards near it (~30% less time for
    SmolLM2's 49152 x 576 head at 64 tokens). ``dE`` is computed only when ``E``
    is itself differentiated.
    """
    return _dot(x, w, True)


def _tied_head_dot_fwd(x, w):
    # With symbolic zeros each input arrives as (value, perturbed).
    perturbed = (x.perturbed, w.perturbed)
    x, w = x.value, w.value
    return _dot(x, w, True), (x, w, perturbed)


def _tied_head_dot_bwd(res, g):
    x, w, (px, pw) = res
    if isinstance(g, jax.custom_derivatives.SymbolicZero):
        return None, None
    dx = dw = None
    if px:
        V, D = w.shape
        c = _head_chunks(V)
        gc = g.astype(w.dtype).reshape(*g.shape[:-1], c, V // c)
        n = gc.ndim
        parts = jax.lax.dot_general(  # [c, ..., D]
            gc, w.reshape(c, V // c, D), (((n - 1,), (1,)), ((n - 2,), (0,)))
        )
        dx = jnp.sum(parts, axis=0).astype(x.dtype)
    if pw:
        dw = _contract_rows(g.astype(x.dtype), x).astype(w.dtype)
    return dx, dw


_tied_head_dot.defvjp(_tied_head_dot_fwd, _tied_head_dot_bwd, symbolic_zeros=True)


def _head(x: jax.Array, w: jax.Array) -> jax.Array:
    """float32 logits from the output head ``w`` (``[D, V]``, or tied ``[V, D]``)."""
    if w.shape[0] == x.shape[-1]:
        return _dot(x, w, True)
    return _tied_head_dot(x, w)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _adapted_dot(
    x: jax.Array,
    x_lora: jax.Array | None,
    w: jax.Array,
    a: jax.Array,
    b: jax.Array,
    scale: float,
) -> jax.Array:
    """``y = x W + s (x' A) B``: a projection ``W [in, out]`` with its adapter.

    ``x'`` is ``x_lora`` (the dropped-out input) or ``x`` itself when ``None``.
    The backward pass computes only the cotangents that are asked for: with
    ``u = s dy B^T``, ``dx = dy W^T (+ u A^T)``, ``dA = x'^T u`` and
    ``dB = s (x' A)^T dy``, each one ``dot_general`` that contracts its operands
    where they lie (no transposed copies), and ``dW = x^T dy``, the largest matmul
    of the backward pass, only when ``W`` is itself differentiated (the base is
    frozen in LoRA training).
    """
    xl = x if x_lora is None else x_lora
    return x @ w + ((xl @ a) @ b) * scale


def _adapted_dot_fwd(x, x_lora, w, a, b, scale):
    # With symbolic zeros each input arrives as (value, perturbed).
    args = (x, x_lora, w, a, b)
    perturbed = tuple(False if p is None else p.perturbed for p in args)
    x, x_lora, w, a, b = (None if p is None else p.value for p in args)
    xa = (x if x_lora is None else x_lora) @ a
    y = x @ w + (xa @ b) * scale
    return y, (x, x_lora, w, a, b, xa, perturbed)


def _adapted_dot_bwd(scale, res, dy):
    x, x_lora, w, a, b, xa, (px, pxl, pw, pa, pb) = res
    if isinstance(dy, jax.custom_derivatives.SymbolicZero):
        return (None,) * 5
    xl = x if x_lora is None else x_lora
    u = _contract_last(dy, b, 1) * scale  # s dy B^T, [..., r]
    dx = _contract_last(dy, w, 1) if px else None
    dx_lora = _contract_last(u, a, 1) if (pxl or (x_lora is None and px)) else None
    if x_lora is None and dx_lora is not None:
        # The adapter reads x itself: both paths go into dx.
        dx, dx_lora = dx_lora if dx is None else dx + dx_lora, None
    da = _contract_rows(xl, u) if pa else None
    db = _contract_rows(xa, dy) * scale if pb else None
    dw = _contract_rows(x, dy) if pw else None
    cast = lambda g, p: None if g is None else g.astype(p.dtype)
    return cast(dx, x), cast(dx_lora, x_lora), cast(dw, w), cast(da, a), cast(db, b)


_adapted_dot.defvjp(_adapted_dot_fwd, _adapted_dot_bwd, symbolic_zeros=True)


def _linear(
    x: jax.Array,
    layer: Mapping[str, Any],
    lora: Mapping[str, Any],
    name: str,
    scale: float,
    dropout: float,
    key: jax.Array | None,
) -> jax.Array:
    """Projection ``name`` of a block: ``x W + b``, plus ``s dropout(x) A B`` when
    ``lora`` holds an adapter for it (``_adapted_dot``)."""
    w = layer[name]
    if name in lora:
        a, b = lora[name]
        x_lora = None
        if key is not None and dropout > 0.0:
            keep = jax.random.bernoulli(key, 1.0 - dropout, x.shape)
            x_lora = jnp.where(keep, x / (1.0 - dropout), jnp.zeros((), x.dtype))
        y = _adapted_dot(x, x_lora, w, a.astype(x.dtype), b.astype(x.dtype), scale)
    else:
        y = x @ w
    if name + "_bias" in layer:
        bias = layer[name + "_bias"]
        y = y + bias.reshape((1,) * (y.ndim - 1) + bias.shape)
    return y


def _attend(
    config: LlamaConfig,
    q: jax.Array,
    keys_all: jax.Array,
    values_all: jax.Array,
    kv_valid: jax.Array,
    q_slots: jax.Array,
) -> jax.Array:
    """Causal grouped-query attention of ``q [B, T, H, hd]`` over ``[B, S, KV, hd]``
    keys and values; returns ``[B, T, H * hd]``."""
    B, T = q.shape[:2]
    H, KV, hd = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    S = keys_all.shape[1]
    qg = q.reshape(B, T, KV, H // KV, hd)
    scores = jnp.einsum(
        "btkgd,bskd->bkgts", qg, keys_all, preferred_element_type=jnp.float32
    ) * (1.0 / math.sqrt(hd))
    causal = jnp.arange(S, dtype=jnp.int32)[None, :] <= q_slots[:, None]  # [T, S]
    allowed = causal[None, :, :] & kv_valid[:, None, :]  # [B, T, S]
    scores = jnp.where(allowed[:, None, None, :, :], scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(values_all.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", probs, values_all).reshape(B, T, H * hd)


def _block(
    config: LlamaConfig,
    lora_config: LoRAConfig | None,
    h: jax.Array,
    layer: Mapping[str, Any],
    lora: Mapping[str, Any],
    cos: jax.Array,
    sin: jax.Array,
    kv_valid: jax.Array,
    q_slots: jax.Array,
    cache: tuple[jax.Array, jax.Array] | None,
    cache_index: jax.Array | None,
    key: jax.Array | None,
):
    """One pre-norm block on ``h [B, T, D]``; returns the new ``h`` and, with a
    cache, the new KV cache."""
    B, T, _ = h.shape
    H, KV, hd = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    scale = 0.0 if lora_config is None else lora_config.scale
    rate = 0.0 if lora_config is None else lora_config.dropout
    keys = (
        [None] * len(LLAMA_PROJECTIONS)
        if key is None
        else list(jax.random.split(key, len(LLAMA_PROJECTIONS)))
    )

    def lin(x, i, name):
        return _linear(x, layer, lora, name, scale, rate, keys[i])

    eps = config.rms_norm_eps
    x = _rms_norm(h, layer["input_layernorm"], eps)
    q = _rope(lin(x, 0, "q_proj").reshape(B, T, H, hd), cos, sin)
    k = _rope(lin(x, 1, "k_proj").reshape(B, T, KV, hd), cos, sin)
    v = lin(x, 2, "v_proj").reshape(B, T, KV, hd)
    new_cache = None
    if cache is not None:
        k = jax.lax.dynamic_update_slice_in_dim(cache[0], k, cache_index, 1)
        v = jax.lax.dynamic_update_slice_in_dim(cache[1], v, cache_index, 1)
        new_cache = (k, v)
    h = h + lin(_attend(config, q, k, v, kv_valid, q_slots), 3, "o_proj")
    x = _rms_norm(h, layer["post_attention_layernorm"], eps)
    gated = jax.nn.silu(lin(x, 4, "gate_proj")) * lin(x, 5, "up_proj")
    return h + lin(gated, 6, "down_proj"), new_cache


def _forward(
    config: LlamaConfig,
    lora_config: LoRAConfig | None,
    params: Mapping[str, Any],
    lora: Mapping[str, Any],
    tokens: jax.Array,
    positions: jax.Array,
    kv_valid: jax.Array,
    *,
    cache: tuple[jax.Array, jax.Array] | None = None,
    cache_index: jax.Array | None = None,
    key: jax.Array | None = None,
    last_only: bool = False,
):
    """The batched decoder on plain arrays for one adapter set.

    Args:
        lora: the adapters, ``{projection: (A, B)}`` (``{}`` for none).
        tokens: ``[B, T]`` int ids; ``positions`` ``[B, T]`` rotary positions.
        kv_valid: ``[B, S]`` bool, keys that may be attended to (``S = T`` without a
            cache, the cache length with one).
        cache: ``(k, v)``, each ``[L, B, S, KV, hd]``; the new keys/values are
            written at slots ``cache_index .. cache_index + T``.
        last_only: compute logits only for the last position (prefill).

    Returns:
        ``(float32 logits [B, T or 1, V], new cache or None)``.
    """
    L = config.num_hidden_layers
    h = jnp.take(params["embed_tokens"], tokens, axis=0)
    inv = jnp.asarray(_inv_freq(config))
    freqs = positions.astype(jnp.float32)[..., None] * inv[None, None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(emb).astype(h.dtype), jnp.sin(emb).astype(h.dtype)
    T = tokens.shape[1]
    start = jnp.zeros((), jnp.int32) if cache_index is None else cache_index
    q_slots = start + jnp.arange(T, dtype=jnp.int32)
    layer_keys = None if key is None else jax.random.split(key, L)

    def body(h, xs):
        layer, layer_lora, layer_key, layer_cache = xs
        return _block(
            config,
            lora_config,
            h,
            layer,
            layer_lora,
            cos,
            sin,
            kv_valid,
            q_slots,
            layer_cache,
            cache_index,
            layer_key,
        )

    # For the backward pass keep only the matmul outputs of each block and
    # recompute the cheap elementwise parts (norms, RoPE, SiLU, attention): about
    # half the residual memory, and on CPU the saved memory traffic outweighs the
    # recomputation. Without differentiation this is a no-op. (Unrolling the scan
    # compiled 10x slower for no faster step on XLA:CPU.)
    body = jax.checkpoint(
        body,
        policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        prevent_cse=False,
    )
    h, new_cache = jax.lax.scan(
        body, h, (params["layers"], dict(lora), layer_keys, cache)
    )
    if last_only:
        h = h[:, -1:, :]
    h = _rms_norm(h, params["norm"], config.rms_norm_eps)
    head = params["embed_tokens"] if params["lm_head"] is None else params["lm_head"]
    return _head(h, head), new_cache


def _positions_and_mask(tokens, positions, attention_mask):
    """Defaults and validation for 2-D ``tokens``, ``positions`` and mask."""
    if attention_mask is None:
        mask = jnp.ones(tokens.shape, jnp.bool_)
    else:
        mask = jnp.asarray(attention_mask)
        if mask.shape != tokens.shape:
            raise ValueError(
                f"attention_mask shape must equal tokens shape {tokens.shape}, got "
                f"{mask.shape}"
            )
        mask = mask.astype(jnp.bool_)
    if positions is None:
        positions = jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)
    else:
        positions = jnp.asarray(positions)
        if positions.shape != tokens.shape:
            raise ValueError(
                f"positions shape must equal tokens shape {tokens.shape}, got "
                f"{positions.shape}"
            )
        positions = positions.astype(jnp.int32)
    return positions, mask


def _call(config, lora_config, params, lora, tokens, *, positions, attention_mask, key):
    """Validates and batches the inputs; returns the logits."""
    tokens = jnp.asarray(tokens)
    if tokens.ndim not in (1, 2):
        raise ValueError(f"tokens must have shape [T] or [B, T], got {tokens.shape}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}")
    single = tokens.ndim == 1
    if single:
        tokens = tokens[None]
        positions = None if positions is None else jnp.asarray(positions)[None]
        attention_mask = (
            None if attention_mask is None else jnp.asarray(attention_mask)[None]
        )
    positions, mask = _positions_and_mask(tokens, positions, attention_mask)
    logits = _forward_jit(
        config, lora_config, params, lora, tokens, positions, mask, key
    )
    return logits[0] if single else logits


@functools.partial(jax.jit, static_argnums=(0, 1))
def _forward_jit(config, lora_config, params, lora, tokens, positions, mask, key):
    # One compiled program per shape even when the module is called eagerly; under
    # an outer jit this is inlined.
    logits, _ = _forward(
        config, lora_config, params, lora, tokens, positions, mask, key=key
    )
    return logits


# ------------------------------------------------------------------ functional API


def split_lora(model: Llama) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """Splits a model into ``(graphdef, base_state, lora_state)``.

    The LoRA state holds only the ``nnx.LoRAParam`` leaves, so it is the whole
    trainable pytree; the base state is passed beside it as ``frozen``.

    Args:
        model: a ``Llama``.

    Returns:
        ``(graphdef, base_state, lora_state)``; ``nnx.merge(graphdef, base, lora)``
        rebuilds the model.
    """
    graphdef, lora, base = nnx.split(model, nnx.LoRAParam, nnx.Param)
    return graphdef, base, lora


def llama_apply(
    graphdef: nnx.GraphDef,
    lora: Any,
    tokens: jax.Array,
    *,
    frozen: Any,
    positions: jax.Array | None = None,
    attention_mask: jax.Array | None = None,
    use_lora: bool = True,
    key: jax.Array | None = None,
) -> jax.Array:
    """Pure forward pass: logits from LoRA params and frozen base params.

    ``functools.partial(llama_apply, graphdef)`` has the signature
    ``apply(lora, tokens, *, frozen)`` that ``ol_jax.core.make_step`` losses use.
    The reference logits for a KL term come from the same call with
    ``use_lora=False`` (the base) or with a frozen snapshot of the adapter as
    ``lora`` (a reference adapter). ``lora`` may carry a leading adapter axis under
    ``jax.vmap`` (one adapter per row), with ``frozen`` closed over.

    Args:
        graphdef: from ``split_lora``.
        lora: the LoRA state (or its pure dict).
        tokens: int ids ``[T]`` or ``[B, T]``.
        frozen: the base state from ``split_lora``.
        positions: optional rotary positions like ``tokens``.
        attention_mask: optional bool mask like ``tokens`` (true = real token).
        use_lora: ``False`` ignores the adapters.
        key: PRNG key for LoRA dropout (none without a key).

    Returns:
        float32 logits ``[..., T, vocab]``.
    """
    model = nnx.merge(graphdef, frozen, lora)
    return model(
        tokens,
        positions=positions,
        attention_mask=attention_mask,
        use_lora=use_lora,
        key=key,
    )


def llama_apply_with_reference(
    graphdef: nnx.GraphDef,
    lora: Any,
    tokens: jax.Array,
    *,
    frozen: Any,
    reference: Any = None,
    positions: jax.Array | None = None,
    attention_mask: jax.Array | None = None,
    key: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Reference and adapted logits: the pair a ``KL(p_ref || p_theta)`` term needs.

    Equals ``(stop_gradient(llama_apply(.., use_lora=False)), llama_apply(..))``
    (or the reference adapter's logits in place of the base's). The reference
    forward runs on ``stop_gradient`` inputs, so no tangent or backward pass goes
    through it: its logits are data, with no gradient to the LoRA params or to
    ``frozen``. Two single-stream forwards beat one pass over both streams here:
    the taller matmuls of a joint pass did not pay for its concatenations and
    slices on XLA:CPU, and the adapted stream alone runs the lean backward of
    ``_adapted_dot``.

    Args:
        graphdef: from ``split_lora``.
        lora: the LoRA state (or its pure dict) being trained.
        tokens: int ids ``[T]`` or ``[B, T]``.
        frozen: the base state from ``split_lora``.
        reference: ``None`` for the base model (adapters off), or a frozen LoRA
            state with the structure of ``lora`` (e.g. a snapshot taken at the
            start of a run).
        positions: optional rotary positions like ``tokens``.
        attention_mask: optional bool mask like ``tokens`` (true = real token).
        key: PRNG key for LoRA dropout on the adapted stream (none without a key).

    Returns:
        ``(reference_logits, logits)``, each float32 ``[..., T, vocab]``.

    References:
        Hu et al., `LoRA: Low-Rank Adaptation of Large Language Models
        <https://arxiv.org/abs/2106.09685>`_, 2021.
    """
    model = nnx.merge(graphdef, frozen, lora)
    base = _base_arrays(model)
    ref = {}
    if reference is not None:
        ref = _lora_arrays(nnx.merge(graphdef, frozen, reference))
    call = functools.partial(
        _call,
        model.config,
        model.lora_config,
        tokens=tokens,
        positions=positions,
        attention_mask=attention_mask,
    )
    ref_logits = call(*jax.lax.stop_gradient((base, ref)), key=None)
    return jax.lax.stop_gradient(ref_logits), call(base, _lora_arrays(model), key=key)


# ------------------------------------------------------------- Hugging Face names


def _hf_name(i: int, name: str, kind: str = "weight") -> str:
    return f"model.layers.{i}.{LLAMA_PROJECTIONS[name]}.{name}.{kind}"


def llama_params_from_hf(
    config: LlamaConfig,
    tensors: Mapping[str, np.ndarray],
    *,
    lora_config: LoRAConfig | None = None,
    key: jax.Array | None = None,
) -> Llama:
    """Builds a ``Llama`` from Hugging Face tensor names and layouts.

    Linear weights are PyTorch ``[out, in]`` and are transposed to ``[in, out]``;
    per-layer tensors are stacked on a leading layer axis. ``lm_head.weight`` is
    read only when embeddings are untied.

    Args:
        config: the architecture (its ``dtype`` sets the parameter dtype).
        tensors: ``{name: array}`` as transformers' ``state_dict`` has them
            (``model.embed_tokens.weight``, ``model.layers.0.self_attn.q_proj.weight``,
            ...); a leading ``model.`` prefix is required as in transformers.
        lora_config: adapters to add (``B = 0``, so logits are unchanged).
        key: PRNG key for the LoRA ``A`` init (default ``jax.random.key(0)``).

    Returns:
        The model.

    Raises:
        ValueError: naming a missing tensor or a tensor of the wrong shape.
    """
    shapes = _proj_shapes(config)
    L, d, v = config.num_hidden_layers, config.hidden_size, config.vocab_size

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in tensors:
            raise ValueError(f"missing tensor {name!r} (expected shape {shape})")
        arr = np.asarray(tensors[name])
        if arr.shape != shape:
            raise ValueError(
                f"tensor {name!r} must have shape {shape}, got {arr.shape}"
            )
        if arr.dtype not in (np.float32, np.float16, np.float64) and arr.dtype.name != (
            "bfloat16"
        ):
            raise ValueError(f"tensor {name!r} must be floating, got {arr.dtype}")
        return arr.astype(np.float32)

    w: dict[str, Any] = {
        "embed_tokens": get("model.embed_tokens.weight", (v, d)),
        "norm": get("model.norm.weight", (d,)),
    }
    for norm in ("input_layernorm", "post_attention_layernorm"):
        w["layers." + norm] = np.stack(
            [get(f"model.layers.{i}.{norm}.weight", (d,)) for i in range(L)]
        )
    for name, (fan_in, fan_out) in shapes.items():
        w["layers." + name] = np.stack(
            [get(_hf_name(i, name), (fan_out, fan_in)).T for i in range(L)]
        )
        if config.attention_bias and name in _BIASED:
            w["layers." + name + "_bias"] = np.stack(
                [get(_hf_name(i, name, "bias"), (fan_out,)) for i in range(L)]
            )
    if not config.tie_word_embeddings:
        w["lm_head"] = get("lm_head.weight", (v, d)).T
    return Llama(
        config,
        lora_config=lora_config,
        key=jax.random.key(0) if key is None else key,
        weights=w,
    )


def llama_params_to_hf(
    model_or_params: Llama | Mapping[str, Any],
    config: LlamaConfig | None = None,
) -> dict[str, np.ndarray]:
    """The inverse of ``llama_params_from_hf``: base weights under HF names.

    Args:
        model_or_params: a ``Llama``, or the base state from ``split_lora`` (then
            ``config`` is required).
        config: the architecture when a state is given.

    Returns:
        ``{hf_name: float32 numpy array}`` in PyTorch layouts (``[out, in]``); LoRA
        weights are not included (merge them first to bake them in).
    """
    if isinstance(model_or_params, Llama):
        config = model_or_params.config
        state = nnx.to_pure_dict(nnx.state(model_or_params, nnx.Not(nnx.LoRAParam)))
    else:
        if config is None:
            raise ValueError("config is required when a state is given, got None")
        state = model_or_params
        if isinstance(state, nnx.State):
            state = nnx.to_pure_dict(state)
    np32 = lambda x: np.asarray(jnp.asarray(x, jnp.float32))
    layers = state["layers"]
    out = {
        "model.embed_tokens.weight": np32(state["embed_tokens"]),
        "model.norm.weight": np32(state["norm"]),
    }
    for i in range(config.num_hidden_layers):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[f"model.layers.{i}.{norm}.weight"] = np32(layers[norm][i])
        for name in LLAMA_PROJECTIONS:
            out[_hf_name(i, name)] = np32(layers[name]["kernel"][i]).T.copy()
            if config.attention_bias and name in _BIASED:
                out[_hf_name(i, name, "bias")] = np32(layers[name]["bias"][i])
    if not config.tie_word_embeddings:
        out["lm_head.weight"] = np32(state["lm_head"]).T.copy()
    return out
