"""BERT-style sentence encoder (MiniLM) as a Flax NNX module, with mean pooling.

The encoder embeds tokens, positions and segments, normalizes, and runs ``L``
post-norm transformer layers,

    h = LN(word[x] + position[t] + token_type[s]),
    h = LN(h + Attn(h)),    h = LN(h + W_out gelu(W_in h + b_in) + b_out),

where attention ignores padding keys (``attention_mask == 0``). A sentence
embedding is the L2-normalized mean of the last hidden states over real tokens,

    e = m / max(||m||, 1e-12),    m = sum_t mask_t h_t / max(sum_t mask_t, 1e-9),

exactly as sentence-transformers computes it for ``all-MiniLM-L6-v2``
(``Transformer -> Pooling(mean) -> Normalize``).

Every per-layer parameter carries a leading layer axis and the layers run under one
``jax.lax.scan``. The core is a pure function over a nested dict of arrays
(``encoder_apply``); the module only holds the variables, and
``nnx.state(model)`` is a valid ``params`` argument.

References:
    Devlin et al., `BERT: Pre-training of Deep Bidirectional Transformers for
    Language Understanding <https://arxiv.org/abs/1810.04805>`_, 2019.
    Wang et al., `MiniLM: Deep Self-Attention Distillation for Task-Agnostic
    Compression of Pre-Trained Transformers <https://arxiv.org/abs/2002.10957>`_,
    2020.
    Reimers and Gurevych, `Sentence-BERT: Sentence Embeddings using Siamese
    BERT-Networks <https://arxiv.org/abs/1908.10084>`_, 2019.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ol_jax.models._generate import prompt_bucket
from ol_jax.models._load import _read_safetensors, _weight_files, load_local_tokenizer
from ol_jax.models._pretrained import PRETRAINED, resolve_pretrained

__all__ = [
    "ENCODER_ACTIVATIONS",
    "Encoder",
    "EncoderConfig",
    "LoadedEncoder",
    "encoder_apply",
    "encoder_params_from_hf",
    "load_encoder",
    "mean_pool",
    "sentence_embeddings",
]

#: ``hidden_act`` values of a Hugging Face BERT config that the encoder supports.
ENCODER_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# A large finite negative score: a row whose keys are all padding then gets a
# uniform softmax instead of NaN.
_MASK_VALUE = -1e30
# The clamps of sentence-transformers' mean pooling and torch's F.normalize.
_POOL_EPS = 1e-9
_NORM_EPS = 1e-12
# The dense maps of a layer: internal name -> (HF sub-module, in, out) where the
# sizes name EncoderConfig fields.
_DENSE = {
    "query": ("attention.self.query", "hidden_size", "hidden_size"),
    "key": ("attention.self.key", "hidden_size", "hidden_size"),
    "value": ("attention.self.value", "hidden_size", "hidden_size"),
    "attention_output": ("attention.output.dense", "hidden_size", "hidden_size"),
    "intermediate": ("intermediate.dense", "hidden_size", "intermediate_size"),
    "output": ("output.dense", "intermediate_size", "hidden_size"),
}
_NORMS = {
    "attention_norm": "attention.output.LayerNorm",
    "output_norm": "output.LayerNorm",
}


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Architecture of a BERT-style encoder (hashable, so it can be static).

    Attributes:
        vocab_size: number of token ids.
        hidden_size: model width ``D``.
        intermediate_size: MLP hidden width.
        num_hidden_layers: number of layers ``L``.
        num_attention_heads: attention heads ``H`` (``D`` divisible by it).
        max_position_embeddings: longest sequence (rows of the position table).
        type_vocab_size: number of segment (token type) ids.
        layer_norm_eps: epsilon inside LayerNorm.
        hidden_act: MLP activation, one of :data:`ENCODER_ACTIVATIONS` (``"gelu"``
            is the exact erf GELU, ``"gelu_new"`` / ``"gelu_pytorch_tanh"`` the tanh
            approximation).
        pad_token_id: id of the padding token.
        model_type: ``"bert"``.
        dtype: parameter and compute dtype, ``"float32"`` or ``"bfloat16"``.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    model_type: str = "bert"
    dtype: str = "float32"

    def __post_init__(self):
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                "hidden_size must be divisible by num_attention_heads, got "
                f"{self.hidden_size} and {self.num_attention_heads}"
            )
        if self.hidden_act not in ENCODER_ACTIVATIONS:
            raise ValueError(
                f"hidden_act must be one of {list(ENCODER_ACTIVATIONS)}, got "
                f"{self.hidden_act!r}"
            )
        if self.dtype not in _DTYPES:
            raise ValueError(
                f"dtype must be one of {list(_DTYPES)}, got {self.dtype!r}"
            )
        if self.model_type != "bert":
            raise ValueError(f"model_type must be 'bert', got {self.model_type!r}")

    @property
    def head_dim(self) -> int:
        """Per-head width ``D // H``."""
        return self.hidden_size // self.num_attention_heads

    @property
    def jnp_dtype(self) -> jnp.dtype:
        """The parameter dtype as a jnp dtype."""
        return jnp.dtype(_DTYPES[self.dtype])

    @classmethod
    def from_hf_dict(cls, config: Mapping[str, Any], *, dtype: str = "float32"):
        """Builds a config from a Hugging Face ``config.json`` mapping.

        Args:
            config: the parsed ``config.json`` (``model_type`` ``"bert"``).
            dtype: parameter dtype to use, ``"float32"`` or ``"bfloat16"``.

        Returns:
            The ``EncoderConfig``.

        Raises:
            ValueError: for a ``model_type`` other than ``"bert"``, a
                ``position_embedding_type`` other than ``"absolute"``, a decoder
                config or an unsupported ``hidden_act``.
        """
        model_type = config.get("model_type")
        if model_type != "bert":
            raise ValueError(
                f"unsupported model_type {model_type!r}: expected 'bert' (a BERT / "
                "MiniLM encoder)"
            )
        position = config.get("position_embedding_type", "absolute")
        if position != "absolute":
            raise ValueError(
                f"position_embedding_type must be 'absolute', got {position!r}"
            )
        if config.get("is_decoder", False):
            raise ValueError("is_decoder=True is not supported (expected False)")
        return cls(
            vocab_size=int(config["vocab_size"]),
            hidden_size=int(config["hidden_size"]),
            intermediate_size=int(config["intermediate_size"]),
            num_hidden_layers=int(config["num_hidden_layers"]),
            num_attention_heads=int(config["num_attention_heads"]),
            max_position_embeddings=int(config.get("max_position_embeddings", 512)),
            type_vocab_size=int(config.get("type_vocab_size", 2)),
            layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
            hidden_act=str(config.get("hidden_act", "gelu")),
            pad_token_id=int(config.get("pad_token_id") or 0),
            dtype=dtype,
        )


# -------------------------------------------------------------------------- module


class _Dense(nnx.Module):
    """A dense map per layer: ``kernel [L, in, out]``, ``bias [L, out]``."""

    def __init__(self, kernel: jax.Array, bias: jax.Array):
        self.kernel = nnx.Param(kernel)
        self.bias = nnx.Param(bias)


class _LayerNorm(nnx.Module):
    """LayerNorm weights, ``scale`` and ``bias`` (optionally with a layer axis)."""

    def __init__(self, scale: jax.Array, bias: jax.Array):
        self.scale = nnx.Param(scale)
        self.bias = nnx.Param(bias)


class EncoderEmbeddings(nnx.Module):
    """Word, position and token-type tables and their LayerNorm."""

    def __init__(self, w: Mapping[str, jax.Array]):
        self.word = nnx.Param(w["word"])
        self.position = nnx.Param(w["position"])
        self.token_type = nnx.Param(w["token_type"])
        self.norm = _LayerNorm(w["norm_scale"], w["norm_bias"])


class EncoderLayers(nnx.Module):
    """All transformer layers, every parameter stacked on a leading layer axis."""

    def __init__(self, w: Mapping[str, jax.Array]):
        for name in _DENSE:
            setattr(self, name, _Dense(w[name + "_kernel"], w[name + "_bias"]))
        for name in _NORMS:
            setattr(self, name, _LayerNorm(w[name + "_scale"], w[name + "_bias"]))


class Encoder(nnx.Module):
    """A BERT-style encoder (MiniLM): token ids to last hidden states.

    ``nnx.state(model)`` (or its ``nnx.to_pure_dict``) is the ``params`` argument
    of :func:`encoder_apply`, so the module can be split at a jit boundary.

    Args:
        config: the architecture.
        key: PRNG key for a random init (used when ``weights`` is None).
        weights: weights in the internal flat layout (see
            :func:`encoder_params_from_hf`); ``None`` draws matrices from
            N(0, 0.02²) like Hugging Face's ``initializer_range``, with unit
            LayerNorm scales and zero biases.

    Examples:
        >>> cfg = EncoderConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
        ...                     num_hidden_layers=2, num_attention_heads=4)
        >>> model = Encoder(cfg, key=jax.random.key(0))
        >>> ids = jnp.ones((1, 5), jnp.int32)
        >>> model(ids, jnp.ones((1, 5), jnp.int32)).shape
        (1, 5, 32)
    """

    def __init__(
        self,
        config: EncoderConfig,
        *,
        key: jax.Array | None = None,
        weights: Mapping[str, Any] | None = None,
    ):
        self.config = config
        if weights is None:
            if key is None:
                raise ValueError("key is required when weights is None, got None")
            weights = _random_weights(config, key)
        dtype = config.jnp_dtype
        weights = {k: jnp.asarray(v, dtype) for k, v in weights.items()}
        self.embeddings = EncoderEmbeddings(
            {
                k[len("embeddings.") :]: v
                for k, v in weights.items()
                if k.startswith("embeddings.")
            }
        )
        self.layers = EncoderLayers(
            {
                k[len("layers.") :]: v
                for k, v in weights.items()
                if k.startswith("layers.")
            }
        )

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        token_type_ids: jax.Array | None = None,
    ) -> jax.Array:
        """Last hidden states ``[B, T, D]``; see :func:`encoder_apply`."""
        return encoder_apply(
            nnx.state(self),
            input_ids,
            attention_mask,
            token_type_ids,
            config=self.config,
        )


def _random_weights(config: EncoderConfig, key: jax.Array) -> dict[str, jax.Array]:
    """Random weights in the internal flat layout."""
    L, d = config.num_hidden_layers, config.hidden_size
    keys = iter(jax.random.split(key, 3 + len(_DENSE)))
    normal = lambda shape: 0.02 * jax.random.normal(next(keys), shape, jnp.float32)
    w = {
        "embeddings.word": normal((config.vocab_size, d)),
        "embeddings.position": normal((config.max_position_embeddings, d)),
        "embeddings.token_type": normal((config.type_vocab_size, d)),
        "embeddings.norm_scale": jnp.ones((d,), jnp.float32),
        "embeddings.norm_bias": jnp.zeros((d,), jnp.float32),
    }
    for name, (_, fan_in, fan_out) in _DENSE.items():
        fi, fo = getattr(config, fan_in), getattr(config, fan_out)
        w[f"layers.{name}_kernel"] = normal((L, fi, fo))
        w[f"layers.{name}_bias"] = jnp.zeros((L, fo), jnp.float32)
    for name in _NORMS:
        w[f"layers.{name}_scale"] = jnp.ones((L, d), jnp.float32)
        w[f"layers.{name}_bias"] = jnp.zeros((L, d), jnp.float32)
    return w


# ---------------------------------------------------------------------------- core


def _layer_norm(x: jax.Array, norm: Mapping[str, jax.Array], eps: float) -> jax.Array:
    """``scale * (x - mean) / sqrt(var + eps) + bias``, statistics in float32."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    centered = xf - mean
    var = jnp.mean(centered * centered, axis=-1, keepdims=True)
    shape = (1,) * (x.ndim - 1) + (x.shape[-1],)
    scale = norm["scale"].astype(jnp.float32).reshape(shape)
    bias = norm["bias"].astype(jnp.float32).reshape(shape)
    return (centered * jax.lax.rsqrt(var + eps) * scale + bias).astype(x.dtype)


def _dense(x: jax.Array, dense: Mapping[str, jax.Array]) -> jax.Array:
    bias = dense["bias"]
    return x @ dense["kernel"] + bias.reshape((1,) * (x.ndim - 1) + bias.shape)


def _activation(name: str, x: jax.Array) -> jax.Array:
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if name == "relu":
        return jax.nn.relu(x)
    return jax.nn.gelu(x, approximate=True)


def _layer(
    config: EncoderConfig, h: jax.Array, layer: Mapping[str, Any], key_ok: jax.Array
) -> jax.Array:
    """One post-norm layer on ``h [B, T, D]``; ``key_ok [B, T]`` marks real keys."""
    B, T, D = h.shape
    H, hd = config.num_attention_heads, config.head_dim
    q = _dense(h, layer["query"]).reshape(B, T, H, hd)
    k = _dense(h, layer["key"]).reshape(B, T, H, hd)
    v = _dense(h, layer["value"]).reshape(B, T, H, hd)
    scores = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32) * (
        1.0 / math.sqrt(hd)
    )
    scores = jnp.where(key_ok[:, None, None, :], scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    context = jnp.einsum("bhts,bshd->bthd", probs, v).reshape(B, T, D)
    eps = config.layer_norm_eps
    h = _layer_norm(
        h + _dense(context, layer["attention_output"]), layer["attention_norm"], eps
    )
    inner = _activation(config.hidden_act, _dense(h, layer["intermediate"]))
    return _layer_norm(h + _dense(inner, layer["output"]), layer["output_norm"], eps)


def _forward(
    config: EncoderConfig,
    params: Mapping[str, Any],
    input_ids: jax.Array,
    key_ok: jax.Array,
    token_type_ids: jax.Array,
) -> jax.Array:
    """The batched encoder on plain arrays: ``[B, T]`` ids to ``[B, T, D]``."""
    emb = params["embeddings"]
    T = input_ids.shape[1]
    positions = jnp.take(emb["position"], jnp.arange(T, dtype=jnp.int32), axis=0)
    h = (
        jnp.take(emb["word"], input_ids, axis=0)
        + positions[None, :, :]
        + jnp.take(emb["token_type"], token_type_ids, axis=0)
    )
    h = _layer_norm(h, emb["norm"], config.layer_norm_eps)

    def body(h, layer):
        return _layer(config, h, layer, key_ok), None

    h, _ = jax.lax.scan(body, h, params["layers"])
    return h


@functools.partial(jax.jit, static_argnums=(0,))
def _forward_jit(config, params, input_ids, key_ok, token_type_ids):
    # One compiled program per shape even when called eagerly; inlined under an
    # outer jit.
    return _forward(config, params, input_ids, key_ok, token_type_ids)


def _pure(params: Any) -> Any:
    if isinstance(params, Encoder):
        params = nnx.state(params)
    if isinstance(params, nnx.State):
        return nnx.to_pure_dict(params)
    return params


def _as_bool(mask: jax.Array) -> jax.Array:
    """Nonzero entries as true, for bool, int or float masks alike."""
    if mask.dtype == jnp.bool_:
        return mask
    return mask != jnp.zeros((), mask.dtype)


def _check_inputs(
    config: EncoderConfig,
    input_ids: jax.typing.ArrayLike,
    attention_mask: jax.typing.ArrayLike,
    token_type_ids: jax.typing.ArrayLike | None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    ids = jnp.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must have shape [B, T], got {ids.shape}")
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"input_ids must be integer ids, got dtype {ids.dtype}")
    if ids.shape[1] > config.max_position_embeddings:
        raise ValueError(
            f"sequence length must be <= max_position_embeddings "
            f"{config.max_position_embeddings}, got {ids.shape[1]}"
        )
    mask = jnp.asarray(attention_mask)
    if mask.shape != ids.shape:
        raise ValueError(
            f"attention_mask shape must equal input_ids shape {ids.shape}, got "
            f"{mask.shape}"
        )
    if token_type_ids is None:
        types = jnp.zeros(ids.shape, jnp.int32)
    else:
        types = jnp.asarray(token_type_ids)
        if types.shape != ids.shape:
            raise ValueError(
                f"token_type_ids shape must equal input_ids shape {ids.shape}, got "
                f"{types.shape}"
            )
        if not jnp.issubdtype(types.dtype, jnp.integer):
            raise ValueError(
                f"token_type_ids must be integer ids, got dtype {types.dtype}"
            )
    return ids.astype(jnp.int32), _as_bool(mask), types.astype(jnp.int32)


def encoder_apply(
    params: Any,
    input_ids: jax.typing.ArrayLike,
    attention_mask: jax.typing.ArrayLike,
    token_type_ids: jax.typing.ArrayLike | None = None,
    *,
    config: EncoderConfig,
) -> jax.Array:
    """Pure forward pass of the encoder: the last hidden states.

    Positions are ``0 .. T-1`` (right padding, as BERT tokenizers pad); padding
    keys (``attention_mask == 0``) get no attention weight, and the hidden states
    at padding positions are computed like any other (as transformers does) and
    are meant to be ignored. Token ids outside ``[0, vocab_size)`` give NaN.

    Args:
        params: the encoder's parameters: ``nnx.state(model)``, its
            ``nnx.to_pure_dict``, or an :class:`Encoder`.
        input_ids: int token ids ``[B, T]``.
        attention_mask: ``[B, T]`` bool or int, nonzero for real tokens.
        token_type_ids: int segment ids ``[B, T]``; ``None`` means all zeros.
        config: the architecture (static).

    Returns:
        Hidden states ``[B, T, D]`` in the config's dtype.

    Raises:
        ValueError: naming a wrongly shaped or typed input, or a sequence longer
            than ``max_position_embeddings``.

    References:
        Devlin et al., `BERT: Pre-training of Deep Bidirectional Transformers for
        Language Understanding <https://arxiv.org/abs/1810.04805>`_, 2019.
    """
    ids, key_ok, types = _check_inputs(
        config, input_ids, attention_mask, token_type_ids
    )
    return _forward_jit(config, _pure(params), ids, key_ok, types)


def mean_pool(hidden: jax.typing.ArrayLike, mask: jax.typing.ArrayLike) -> jax.Array:
    """Mean of the hidden states over real tokens.

    ``m_b = sum_t mask_bt h_bt / max(sum_t mask_bt, 1e-9)`` (sentence-transformers'
    clamp, so an all-padding row pools to zero), accumulated in float32.

    Args:
        hidden: ``[B, T, D]`` floating hidden states.
        mask: ``[B, T]`` bool or int, nonzero for real tokens.

    Returns:
        ``[B, D]`` in the dtype of ``hidden``.

    References:
        Reimers and Gurevych, `Sentence-BERT: Sentence Embeddings using Siamese
        BERT-Networks <https://arxiv.org/abs/1908.10084>`_, 2019.
    """
    hidden = jnp.asarray(hidden)
    mask = jnp.asarray(mask)
    if hidden.ndim != 3:
        raise ValueError(f"hidden must have shape [B, T, D], got {hidden.shape}")
    if mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"mask shape must equal hidden's [B, T] {hidden.shape[:2]}, got "
            f"{mask.shape}"
        )
    weights = _as_bool(mask).astype(jnp.float32)
    total = jnp.sum(hidden.astype(jnp.float32) * weights[:, :, None], axis=1)
    count = jnp.maximum(jnp.sum(weights, axis=1, keepdims=True), _POOL_EPS)
    return (total / count).astype(hidden.dtype)


def _normalize(x: jax.Array) -> jax.Array:
    """``x / max(||x||, 1e-12)`` along the last axis (torch's ``F.normalize``)."""
    xf = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(xf * xf, axis=-1, keepdims=True))
    return (xf / jnp.maximum(norm, _NORM_EPS)).astype(x.dtype)


def sentence_embeddings(
    params: Any,
    input_ids: jax.typing.ArrayLike,
    attention_mask: jax.typing.ArrayLike,
    token_type_ids: jax.typing.ArrayLike | None = None,
    *,
    config: EncoderConfig,
    normalize: bool = True,
) -> jax.Array:
    """Sentence embeddings: mean-pooled, L2-normalized last hidden states.

    ``e_b = m_b / max(||m_b||, 1e-12)`` with ``m`` from :func:`mean_pool` of
    :func:`encoder_apply`, as sentence-transformers' ``Pooling(mean)`` followed by
    ``Normalize`` computes it.

    Args:
        params: as for :func:`encoder_apply`.
        input_ids: int token ids ``[B, T]``.
        attention_mask: ``[B, T]``, nonzero for real tokens.
        token_type_ids: int segment ids ``[B, T]`` or ``None`` (zeros).
        config: the architecture (static).
        normalize: divide by the L2 norm (``False`` gives the plain mean).

    Returns:
        ``[B, D]`` embeddings in the config's dtype (unit norm when
        ``normalize``; an all-padding row gives zeros).

    References:
        Reimers and Gurevych, `Sentence-BERT: Sentence Embeddings using Siamese
        BERT-Networks <https://arxiv.org/abs/1908.10084>`_, 2019.
    """
    hidden = encoder_apply(
        params, input_ids, attention_mask, token_type_ids, config=config
    )
    pooled = mean_pool(hidden, attention_mask)
    return _normalize(pooled) if normalize else pooled


@functools.partial(jax.jit, static_argnums=(0, 1))
def _sentence_jit(config, normalize, params, input_ids, attention_mask, types):
    return sentence_embeddings(
        params, input_ids, attention_mask, types, config=config, normalize=normalize
    )


# ------------------------------------------------------------- Hugging Face names


def encoder_params_from_hf(
    config: EncoderConfig, tensors: Mapping[str, np.ndarray]
) -> Encoder:
    """Builds an :class:`Encoder` from transformers' ``BertModel`` tensors.

    Linear weights are PyTorch ``[out, in]`` and are transposed to ``[in, out]``;
    per-layer tensors are stacked on a leading layer axis. A ``bert.`` prefix (as
    ``BertFor...`` heads save) is accepted; the pooler and the ``position_ids``
    buffer are not used.

    Args:
        config: the architecture (its ``dtype`` sets the parameter dtype).
        tensors: ``{name: array}`` as ``BertModel.state_dict()`` names them
            (``embeddings.word_embeddings.weight``,
            ``encoder.layer.0.attention.self.query.weight``, ...).

    Returns:
        The encoder.

    Raises:
        ValueError: naming a missing tensor or one of the wrong shape or dtype.

    References:
        Devlin et al., `BERT: Pre-training of Deep Bidirectional Transformers for
        Language Understanding <https://arxiv.org/abs/1810.04805>`_, 2019.
    """
    prefix = ""
    if "embeddings.word_embeddings.weight" not in tensors and (
        "bert.embeddings.word_embeddings.weight" in tensors
    ):
        prefix = "bert."
    L, d = config.num_hidden_layers, config.hidden_size

    def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
        full = prefix + name
        if full not in tensors:
            raise ValueError(f"missing tensor {full!r} (expected shape {shape})")
        arr = np.asarray(tensors[full])
        if arr.shape != shape:
            raise ValueError(
                f"tensor {full!r} must have shape {shape}, got {arr.shape}"
            )
        if arr.dtype.kind != "f" and arr.dtype.name != "bfloat16":
            raise ValueError(f"tensor {full!r} must be floating, got {arr.dtype}")
        return arr.astype(np.float32)

    e = "embeddings."
    w: dict[str, np.ndarray] = {
        "embeddings.word": get(e + "word_embeddings.weight", (config.vocab_size, d)),
        "embeddings.position": get(
            e + "position_embeddings.weight", (config.max_position_embeddings, d)
        ),
        "embeddings.token_type": get(
            e + "token_type_embeddings.weight", (config.type_vocab_size, d)
        ),
        "embeddings.norm_scale": get(e + "LayerNorm.weight", (d,)),
        "embeddings.norm_bias": get(e + "LayerNorm.bias", (d,)),
    }
    layer = lambda i, sub, kind: f"encoder.layer.{i}.{sub}.{kind}"
    for name, (sub, fan_in, fan_out) in _DENSE.items():
        fi, fo = getattr(config, fan_in), getattr(config, fan_out)
        w[f"layers.{name}_kernel"] = np.stack(
            [get(layer(i, sub, "weight"), (fo, fi)).T for i in range(L)]
        )
        w[f"layers.{name}_bias"] = np.stack(
            [get(layer(i, sub, "bias"), (fo,)) for i in range(L)]
        )
    for name, sub in _NORMS.items():
        w[f"layers.{name}_scale"] = np.stack(
            [get(layer(i, sub, "weight"), (d,)) for i in range(L)]
        )
        w[f"layers.{name}_bias"] = np.stack(
            [get(layer(i, sub, "bias"), (d,)) for i in range(L)]
        )
    return Encoder(config, weights=w)


# -------------------------------------------------------------------------- loading


def _read_json(file: pathlib.Path) -> Any:
    try:
        return json.loads(file.read_text())
    except ValueError as e:
        raise ValueError(f"could not parse {file}: {e}") from e


def _sentence_settings(folder: pathlib.Path) -> tuple[bool, bool, int | None]:
    """``(normalize, lowercase, max_seq_length)`` from sentence-transformers files.

    A folder without ``modules.json`` is a plain transformers encoder: mean
    pooling and normalization, as for all-MiniLM-L6-v2.
    """
    normalize, lowercase, max_len = True, False, None
    modules_file = folder / "modules.json"
    if modules_file.is_file():
        modules = _read_json(modules_file)
        types = [str(m.get("type", "")) for m in modules]
        normalize = any(t.endswith(".Normalize") for t in types)
        for m, t in zip(modules, types, strict=True):
            if t.endswith(".Pooling"):
                pool_file = folder / str(m.get("path", "")) / "config.json"
                if pool_file.is_file():
                    _check_pooling(pool_file, _read_json(pool_file))
            elif not t.endswith((".Transformer", ".Normalize")):
                raise ValueError(
                    f"{modules_file} has module type {t!r}; supported modules are "
                    "Transformer, Pooling (mean) and Normalize"
                )
    st_file = folder / "sentence_bert_config.json"
    if st_file.is_file():
        st = _read_json(st_file)
        lowercase = bool(st.get("do_lower_case", False))
        if st.get("max_seq_length") is not None:
            max_len = int(st["max_seq_length"])
    return normalize, lowercase, max_len


def _check_pooling(file: pathlib.Path, pool: Mapping[str, Any]) -> None:
    modes = sorted(
        k
        for k, v in pool.items()
        if k.startswith("pooling_mode_") and k != "pooling_mode_mean_tokens" and v
    )
    if modes or not pool.get("pooling_mode_mean_tokens", True):
        raise ValueError(
            f"{file} asks for pooling {modes or 'without mean tokens'}; only "
            "pooling_mode_mean_tokens is supported"
        )


class LoadedEncoder(NamedTuple):
    """A sentence encoder with its tokenizer, ready to :meth:`embed` texts.

    Attributes:
        model: the :class:`Encoder`.
        config: its :class:`EncoderConfig`.
        tokenizer: a ``transformers`` tokenizer, or None when not loaded.
        max_seq_length: texts are truncated to this many tokens.
        normalize: embeddings are L2-normalized.
        lowercase: texts are lowercased before tokenizing.
        source: the folder read.
    """

    model: Encoder
    config: EncoderConfig
    tokenizer: Any
    max_seq_length: int
    normalize: bool = True
    lowercase: bool = False
    source: pathlib.Path | None = None

    def embed(
        self,
        texts: str | Sequence[str],
        *,
        batch_size: int = 64,
        min_length: int = 16,
    ) -> jax.Array:
        """Sentence embeddings of texts, compiled once per bucket.

        Texts are tokenized (truncated to ``max_seq_length``), sorted by length,
        cut into chunks of at most ``batch_size``, and each chunk is padded to a
        bucketed shape: rows to the next power of two, tokens to the next power of
        two at least ``min_length`` (capped at ``max_seq_length``). A new input
        therefore reuses an already compiled program; padding never changes an
        embedding.

        Args:
            texts: a string or a sequence of strings.
            batch_size: most texts per forward pass (a power of two keeps the row
                buckets full).
            min_length: smallest token bucket.

        Returns:
            ``[N, D]`` embeddings (``[D]`` for a single string), in the config's
            dtype, in the order of ``texts``.

        Raises:
            ValueError: when the tokenizer was not loaded, ``texts`` holds a
                non-string, or ``batch_size`` / ``min_length`` is below 1.
        """
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        if self.tokenizer is None:
            raise ValueError("embed needs a tokenizer; load with tokenizer=True")
        if batch_size < 1 or min_length < 1:
            raise ValueError(
                f"batch_size and min_length must be >= 1, got {batch_size} and "
                f"{min_length}"
            )
        bad = [t for t in items if not isinstance(t, str)]
        if bad:
            raise ValueError(f"texts must be strings, got {type(bad[0]).__name__}")
        if not items:
            return jnp.zeros((0, self.config.hidden_size), self.config.jnp_dtype)
        if self.lowercase:
            items = [t.lower() for t in items]
        enc = self.tokenizer(items, truncation=True, max_length=self.max_seq_length)
        ids = enc["input_ids"]
        types = enc.get("token_type_ids") or [[0] * len(r) for r in ids]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        params = nnx.to_pure_dict(nnx.state(self.model))
        chunks = []
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            longest = max(len(ids[i]) for i in rows)
            T = min(prompt_bucket(longest, min_bucket=min_length), self.max_seq_length)
            B = 1 << (len(rows) - 1).bit_length()
            tok = np.full((B, T), self.config.pad_token_id, np.int32)
            seg = np.zeros((B, T), np.int32)
            mask = np.zeros((B, T), np.int32)
            for r, i in enumerate(rows):
                n = len(ids[i])
                tok[r, :n], seg[r, :n], mask[r, :n] = ids[i], types[i], 1
            out = _sentence_jit(self.config, self.normalize, params, tok, mask, seg)
            chunks.append(out[: len(rows)])
        stacked = jnp.concatenate(chunks, axis=0)
        result = jnp.take(stacked, jnp.asarray(np.argsort(order), jnp.int32), axis=0)
        return result[0] if single else result


def load_encoder(
    name_or_path: str | os.PathLike[str],
    *,
    dtype: str = "float32",
    tokenizer: bool = True,
) -> LoadedEncoder:
    """Load a BERT-style sentence encoder from an alias or a Hugging Face folder.

    Reads ``config.json`` (``model_type`` ``"bert"``), the weights from
    ``model.safetensors`` (or its shards), the sentence-transformers settings when
    present (``modules.json`` with a mean ``Pooling`` and ``Normalize``,
    ``sentence_bert_config.json`` for ``max_seq_length`` and ``do_lower_case``),
    and the tokenizer with ``AutoTokenizer.from_pretrained(path,
    local_files_only=True)``.

    Args:
        name_or_path: ``"all-minilm-l6-v2"`` (fetched on first use, see
            ``resolve_pretrained``) or an encoder folder.
        dtype: parameter dtype, ``"float32"`` or ``"bfloat16"``.
        tokenizer: also load the tokenizer (needed by ``embed``).

    Returns:
        A :class:`LoadedEncoder`; ``model, config, tokenizer = enc[:3]``.

    Raises:
        ValueError: naming the folder or file when it is not a folder, has no
            ``config.json`` or weights, has another ``model_type``, a corrupt
            safetensors file, a missing tensor, or an unsupported pooling.

    Examples:
        >>> enc = load_encoder("all-minilm-l6-v2")  # doctest: +SKIP
        >>> enc.embed(["a cat", "a dog"]).shape  # doctest: +SKIP
        (2, 384)

    References:
        Reimers and Gurevych, `Sentence-BERT: Sentence Embeddings using Siamese
        BERT-Networks <https://arxiv.org/abs/1908.10084>`_, 2019.
    """
    if isinstance(name_or_path, str) and name_or_path in PRETRAINED:
        folder = resolve_pretrained(name_or_path)
    else:
        folder = pathlib.Path(name_or_path)
    if not folder.is_dir():
        raise ValueError(
            f"name_or_path must be 'all-minilm-l6-v2' or a Hugging Face encoder "
            f"folder, got {str(name_or_path)!r}"
        )
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(
            f"{folder} has no config.json; expected a Hugging Face model folder"
        )
    hf = _read_json(config_file)
    if hf.get("model_type") != "bert":
        raise ValueError(
            f"{config_file} has model_type {hf.get('model_type')!r}; the encoder "
            "supports model_type 'bert'"
        )
    config = EncoderConfig.from_hf_dict(hf, dtype=dtype)
    normalize, lowercase, max_len = _sentence_settings(folder)
    tensors: dict[str, np.ndarray] = {}
    for file in _weight_files(folder):
        tensors.update(_read_safetensors(file))
    try:
        model = encoder_params_from_hf(config, tensors)
    except ValueError as e:
        raise ValueError(f"{folder}: {e}") from e
    tok = None
    if tokenizer:
        tok = load_local_tokenizer(folder)
        if max_len is None and tok.model_max_length < 10**9:
            max_len = int(tok.model_max_length)
    if max_len is None:
        max_len = config.max_position_embeddings
    max_len = min(max_len, config.max_position_embeddings)
    return LoadedEncoder(model, config, tok, max_len, normalize, lowercase, folder)
