"""Batch losses of the buffered learner, composed from ``ol_jax.objectives``.

A batch is a dict of padded arrays (``B`` examples, ``T`` tokens):

* ``tokens [B, T]`` int32: ``[BOS] input [target] [EOS]`` then padding;
* ``mask [B, T]`` float32: 1 where the token is a prediction target (every token
  after ``BOS`` for a self-supervised example, only the target and ``EOS`` for a
  supervised one);
* ``weight [B]`` float32: the example weight (0 for padding rows);
* ``valid [B]`` float32: 1 for a real example, 0 for a padding row;
* for the contrastive loss also ``input_tokens`` / ``input_mask`` and
  ``target_tokens`` / ``target_mask`` (``[B, T]``, the mask marks real tokens).

A learner of float vectors (a regressor) has ``inputs [B, *in]`` and
``targets [B, *out]`` float32 instead of the token arrays.

Each loss is ``L = sum_b w_b l_b / max(sum_b valid_b, 1)``: the mean over real
examples of the weighted per-example loss, so weight 2 counts an example twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ol_jax.objectives import info_nce, mean_squared_error, token_cross_entropy

ApplyFn = Callable[[Any, Any, jax.Array], jax.Array]

LOSSES = ("cross_entropy", "mse", "contrastive")


def _batch_mean(per_example: jax.Array, batch: dict[str, jax.Array]) -> jax.Array:
    count = jnp.maximum(jnp.sum(batch["valid"]), 1.0)
    return jnp.sum(batch["weight"] * per_example) / count


def _masked_token_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    total = jnp.sum(mask)
    safe = jnp.where(total > 0, total, 1.0)
    return jnp.where(total > 0, jnp.sum(values * mask) / safe, 0.0)


def _pooled(apply: ApplyFn, params, frozen, tokens, mask) -> jax.Array:
    """Mean of the output log-probabilities over real tokens, a ``[V]`` embedding."""
    logp = jax.nn.log_softmax(apply(params, frozen, tokens), axis=-1)
    weights = mask[:, None] / jnp.maximum(jnp.sum(mask), 1.0)
    return jnp.sum(logp * weights, axis=0)


def example_loss(apply: ApplyFn, kind: str, params, frozen, tokens, mask) -> jax.Array:
    """Next-token loss of one padded sequence.

    ``cross_entropy``: ``mean_t -log p(y_t | y_<t)`` over target tokens.
    ``mse``: ``mean_t sum_v (p(v | y_<t) - [v = y_t])^2`` (the Brier score: ``V``
    times the mean squared error over the vocabulary).
    """
    logits = apply(params, frozen, tokens)[:-1]
    targets, target_mask = tokens[1:], mask[1:]
    if kind == "cross_entropy":
        return token_cross_entropy(logits, targets, mask=target_mask)
    probs = jax.nn.softmax(logits, axis=-1)
    one_hot = jax.nn.one_hot(targets, logits.shape[-1], dtype=probs.dtype)
    # Summed over the vocabulary: a mean would shrink the gradient by 1 / V.
    per_token = jax.vmap(mean_squared_error)(probs, one_hot) * logits.shape[-1]
    return _masked_token_mean(per_token, target_mask)


def make_batch_loss(
    apply: ApplyFn, kind: str, *, temperature: float = 0.1
) -> Callable[..., jax.Array]:
    """``loss_fn(params, batch, *, frozen, extras, key)`` for ``make_step``.

    Args:
      apply: ``apply(params, frozen, tokens[T]) -> logits[T, V]``.
      kind: ``"cross_entropy"``, ``"mse"`` or ``"contrastive"``. The contrastive
        loss is InfoNCE between the pooled output of each input and of every
        target in the batch, its own target the positive.
      temperature: InfoNCE temperature.

    Returns:
      The loss function.

    References:
      Brier, `Verification of forecasts expressed in terms of probability
      <https://doi.org/10.1175/1520-0493(1950)078%3C0001:VOFEIT%3E2.0.CO;2>`_,
      1950; van den Oord et al., `Representation learning with contrastive
      predictive coding <https://arxiv.org/abs/1807.03748>`_, 2018.
    """
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")

    def loss_fn(params, batch, *, frozen, extras, key):
        del extras, key
        if kind == "contrastive":
            pool = jax.vmap(lambda t, m: _pooled(apply, params, frozen, t, m))
            queries = pool(batch["input_tokens"], batch["input_mask"])
            keys = pool(batch["target_tokens"], batch["target_mask"])
            index = jnp.arange(queries.shape[0])
            per_example = jax.vmap(
                lambda q, i: info_nce(q, keys, i, temperature=temperature)
            )(queries, index)
        else:
            per_example = jax.vmap(
                lambda t, m: example_loss(apply, kind, params, frozen, t, m)
            )(batch["tokens"], batch["mask"])
        return _batch_mean(per_example, batch)

    return loss_fn


def make_vector_loss(apply: ApplyFn) -> Callable[..., jax.Array]:
    """The MSE ``loss_fn(params, batch, *, frozen, extras, key)`` of a regressor.

    ``l_b = mean_i (f(x_b)_i - y_b,i)^2`` for the prediction ``f(x_b) =
    apply(params, frozen, x_b)`` of the batch's ``inputs`` and its ``targets``.

    References:
      Gauss, *Theoria motus corporum coelestium*, 1809 (least squares).
    """

    def loss_fn(params, batch, *, frozen, extras, key):
        del extras, key
        per_example = jax.vmap(
            lambda x, y: mean_squared_error(apply(params, frozen, x), y)
        )(batch["inputs"], batch["targets"])
        return _batch_mean(per_example, batch)

    return loss_fn
