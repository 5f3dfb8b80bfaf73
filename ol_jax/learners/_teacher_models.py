"""The three models of the teacher proxy: builders and per-example losses.

* router: a binary MLP head on the (frozen) sentence embedding of the query,
  ``p_local = sigmoid(head(e_q))``;
* validator: a binary MLP head on the pair features
  ``[e_q, e_a, e_q * e_a]`` of the query and a local answer (a bi-encoder over the
  frozen sentence encoder), ``p_good = sigmoid(head(...))``;
* generator: a Llama-family LLM with LoRA adapters, distilled from the teacher's
  answer with token cross-entropy plus a KL term to the frozen base model,

      L = CE(teacher answer | prompt) + beta * KL(p_base || p_lora),

  both averaged over the answer tokens (``ol_jax.objectives``).

Every loss here is written for one example and vmapped over a padded batch whose
``weight`` row zeroes padding rows, so one compiled step serves every batch.

References:
    Hinton et al., `Distilling the knowledge in a neural network
    <https://arxiv.org/abs/1503.02531>`_, 2015.
    Hu et al., `LoRA: Low-Rank Adaptation of Large Language Models
    <https://arxiv.org/abs/2106.09685>`_, 2021.
    Reimers and Gurevych, `Sentence-BERT: Sentence Embeddings using Siamese
    BERT-Networks <https://arxiv.org/abs/1908.10084>`_, 2019.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ol_jax.learners.buffered import ByteTokenizer, byte_llama_config
from ol_jax.models import (
    Encoder,
    EncoderConfig,
    Llama,
    LoadedEncoder,
    LoRAConfig,
    llama_apply,
    load_encoder,
    load_llama,
)
from ol_jax.objectives import binary_cross_entropy, token_cross_entropy, token_kl

TINY = "tiny"


# ------------------------------------------------------------------ text codecs


class TextCodec:
    """``encode`` / ``decode`` without special tokens, and the EOS id.

    Wraps a Hugging Face tokenizer or :class:`~ol_jax.learners.ByteTokenizer`.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        eos = getattr(tokenizer, "eos_token_id", None)
        if eos is None:
            raise ValueError("tokenizer must define eos_token_id, got None")
        self.eos = int(eos)

    def encode(self, text: str) -> list[int]:
        if isinstance(self.tokenizer, ByteTokenizer):
            return self.tokenizer.encode(text)
        return [int(i) for i in self.tokenizer.encode(text, add_special_tokens=False)]

    def token_ends(self, text: str) -> list[int]:
        """The end character offset of each token of ``encode(text)``, in order."""
        if isinstance(self.tokenizer, ByteTokenizer):
            # One token per UTF-8 byte: a character's bytes all end after it.
            return [i + 1 for i, ch in enumerate(text) for _ in ch.encode("utf-8")]
        offsets = self.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True
        )["offset_mapping"]
        ends, last = [], 0
        for _, end in offsets:
            last = max(last, int(end))  # byte-level BPE can repeat an offset
            ends.append(last)
        return ends

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids if int(i) != self.eos]
        if isinstance(self.tokenizer, ByteTokenizer):
            return self.tokenizer.decode(ids)
        return self.tokenizer.decode(ids, skip_special_tokens=True)


class _ByteEncoderTokenizer:
    """UTF-8 bytes as ids for the tiny test encoder, called like an HF tokenizer."""

    pad_token_id = ByteTokenizer.pad_token_id

    def __call__(self, texts, *, truncation=True, max_length=None, **_):
        del truncation
        ids = [list(t.encode("utf-8"))[:max_length] or [0] for t in texts]
        return {"input_ids": ids}


def build_encoder(name: str, *, key: jax.Array) -> LoadedEncoder:
    """A sentence encoder: an alias or folder for ``load_encoder``, or ``"tiny"``.

    ``"tiny"`` is a random one-layer BERT of width 32 over UTF-8 bytes, for tests
    where embedding quality is not the point.
    """
    if name != TINY:
        return load_encoder(name)
    config = EncoderConfig(
        vocab_size=ByteTokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=256,
        pad_token_id=ByteTokenizer.pad_token_id,
    )
    return LoadedEncoder(Encoder(config, key=key), config, _ByteEncoderTokenizer(), 256)


def build_generator(
    name: str, lora_config: LoRAConfig, *, dtype: str, key: jax.Array
) -> tuple[Llama, TextCodec]:
    """The generator LLM with fresh adapters (``B = 0``) and its codec.

    ``name`` is an alias, ``.gguf`` file or folder for ``load_llama``, or
    ``"tiny"``: a random two-layer byte-level Llama of width 64 for tests.
    """
    if name == TINY:
        config = byte_llama_config(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            dtype=dtype,
        )
        model = Llama(config, lora_config=lora_config, key=key)
        return model, TextCodec(ByteTokenizer())
    model, tokenizer = load_llama(name, dtype=dtype, lora_config=lora_config, key=key)
    return model, TextCodec(tokenizer)


# ------------------------------------------------------------------ binary heads


def init_head(in_dim: int, hidden: int, *, key: jax.Array) -> dict[str, jax.Array]:
    """A one-hidden-layer MLP with a scalar logit, LeCun-normal weights.

    ``logit(x) = w2 . tanh(W1 x + b1) + b2``, with ``W1 ~ N(0, 1/in_dim)`` and
    ``w2 ~ N(0, 1/hidden)`` scaled by 0.1 so the first probabilities sit near 1/2.
    """
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (in_dim, hidden), jnp.float32)
        * jnp.float32(in_dim**-0.5),
        "b1": jnp.zeros((hidden,), jnp.float32),
        "w2": jax.random.normal(k2, (hidden,), jnp.float32)
        * jnp.float32(0.1 * hidden**-0.5),
        "b2": jnp.zeros((), jnp.float32),
    }


def head_logit(params: Any, x: jax.Array) -> jax.Array:
    """The scalar logit of one feature vector ``x [D]``."""
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


@jax.jit
def head_prob(params: Any, x: jax.Array) -> jax.Array:
    """``sigmoid(head_logit(params, x))``."""
    return jax.nn.sigmoid(head_logit(params, x))


def pair_features(e_query: jax.Array, e_answer: jax.Array) -> jax.Array:
    """Validator input ``[e_q, e_a, e_q * e_a]`` of two sentence embeddings."""
    return jnp.concatenate([e_query, e_answer, e_query * e_answer], axis=-1)


def _weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    total = jnp.sum(weights)
    safe = jnp.where(total > 0, total, jnp.float32(1.0))
    return jnp.where(total > 0, jnp.sum(weights * values) / safe, jnp.float32(0.0))


def head_loss(params, batch, *, frozen, extras, key):
    """Weighted mean binary CE of a padded batch ``{x [B, D], label, weight [B]}``.

    ``L = sum_b w_b BCE(head(x_b), y_b) / sum_b w_b`` (0 for an all-zero weight).
    """
    del frozen, extras, key

    def one(x, label):
        return binary_cross_entropy(head_logit(params, x), label)

    losses = jax.vmap(one)(batch["x"], batch["label"])
    return _weighted_mean(losses, batch["weight"])


# ------------------------------------------------------------------ generator


def generator_example_loss(
    graphdef: nnx.GraphDef,
    lora: Any,
    base: Any,
    tokens: jax.Array,
    mask: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Token CE of one right-padded sequence ``prompt + answer + EOS``.

    ``mask[t] = 1`` where ``tokens[t]`` is an answer token (or the EOS) to
    predict from the tokens before it.

    Returns:
      ``(ce, greedy_match, logits)``: the mean CE over the answer tokens,
      whether greedy decoding from the prompt reproduces the answer exactly
      (every masked token is the argmax of the logits before it), and the
      ``[T - 1, V]`` next-token logits.
    """
    logits = llama_apply(graphdef, lora, tokens, frozen=base)[:-1]
    targets, keep = tokens[1:], mask[1:]
    ce = token_cross_entropy(logits, targets, mask=keep)
    hit = (jnp.argmax(logits, axis=-1).astype(targets.dtype) == targets) | (keep == 0)
    return ce, jnp.all(hit), logits


def make_generator_loss(graphdef: nnx.GraphDef, *, kl_weight: float):
    """``loss_fn(lora, batch, *, frozen, ...)`` over ``{tokens, mask, weight}``.

    ``L = sum_b w_b CE_b / sum_b w_b + kl_weight * KL(p_base || p_lora)``, the KL
    averaged over the answer tokens of row 0 (the new teacher answer; the other
    rows are replayed ones, which had their KL term when they were new, and
    skipping theirs saves a base-model pass per row). The aux holds each row's
    ``ce`` and ``greedy_match``, both before the update.
    """
    one = functools.partial(generator_example_loss, graphdef)

    def loss_fn(lora, batch, *, frozen, extras, key):
        del extras, key
        tokens, mask = batch["tokens"], batch["mask"]
        ce, match, logits = jax.vmap(one, in_axes=(None, None, 0, 0))(
            lora, frozen, tokens, mask
        )
        loss = _weighted_mean(ce, batch["weight"])
        if kl_weight > 0:
            ref = llama_apply(graphdef, lora, tokens[0], frozen=frozen, use_lora=False)
            kl = token_kl(ref[:-1], logits[0], mask=mask[0, 1:])
            loss = loss + jnp.float32(kl_weight) * kl
        return loss, {"ce": ce, "greedy_match": match}

    return loss_fn
