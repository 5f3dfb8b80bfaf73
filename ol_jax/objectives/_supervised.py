"""Plain supervised losses for one example: binary CE, squared error, InfoNCE."""

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from ol_jax.objectives._utils import (
    check_positive,
    check_same_shape,
    compute_dtype,
    float_dtype,
)


def binary_cross_entropy(
    logit: ArrayLike, label: ArrayLike, *, weight: ArrayLike = 1.0
) -> jax.Array:
    """Weighted binary cross-entropy from logits, averaged over elements.

    ``L = mean_i w_i [-y_i log sigmoid(x_i) - (1 - y_i) log sigmoid(-x_i)]``,
    computed by ``optax.sigmoid_binary_cross_entropy`` through ``log_sigmoid``,
    so logits of any finite magnitude give finite losses and gradients.

    Args:
      logit: a scalar logit, or an array of independent binary outputs.
      label: target probabilities in [0, 1] (hard 0/1 or soft), shape of
        ``logit``.
      weight: a scalar, or per-element weights of ``logit``'s shape.

    Returns:
      A scalar in ``logit``'s floating dtype.

    References:
      Goodfellow et al., `Deep Learning <https://www.deeplearningbook.org/>`_,
      2016, section 6.2.2.2 (sigmoid units for Bernoulli outputs).
    """
    check_same_shape(logit=logit, label=label)
    if jnp.ndim(weight) != 0:
        check_same_shape(logit=logit, weight=weight)
    out_dtype = float_dtype(logit)
    dtype = compute_dtype(out_dtype)
    x = jnp.asarray(logit).astype(dtype)
    y = jnp.asarray(label).astype(dtype)
    w = jnp.broadcast_to(jnp.asarray(weight).astype(dtype), x.shape)
    return jnp.mean(w * optax.sigmoid_binary_cross_entropy(x, y)).astype(out_dtype)


def mean_squared_error(pred: ArrayLike, target: ArrayLike) -> jax.Array:
    """Mean squared error over all elements: ``mean_i (p_i - t_i)^2``.

    Args:
      pred: predictions, any shape.
      target: targets, shape of ``pred``.

    Returns:
      A scalar in ``pred``'s floating dtype.

    References:
      Gauss, *Theoria motus corporum coelestium*, 1809 (least squares); see
      Goodfellow et al., `Deep Learning <https://www.deeplearningbook.org/>`_,
      2016, section 5.5.1.
    """
    check_same_shape(pred=pred, target=target)
    out_dtype = float_dtype(pred)
    dtype = compute_dtype(out_dtype)
    p = jnp.asarray(pred).astype(dtype)
    t = jnp.asarray(target).astype(dtype)
    return jnp.mean(optax.squared_error(p, t)).astype(out_dtype)


def _l2_normalize(x: jax.Array, axis: int) -> jax.Array:
    # max(., eps^2) before the sqrt keeps the gradient finite at x = 0.
    sq = jnp.sum(x * x, axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, 1e-12))


def info_nce(
    query: ArrayLike,
    keys: ArrayLike,
    positive_index: ArrayLike,
    *,
    temperature: ArrayLike = 0.1,
    normalize: bool = True,
) -> jax.Array:
    """InfoNCE contrastive loss: pick the positive key out of ``N`` candidates.

    ``L = -log softmax_n(sim(q, k_n) / tau)[pos]`` with ``sim`` the cosine
    similarity (``normalize=True``) or the dot product. The other ``N - 1``
    keys are the negatives. Minimising it pulls the query's embedding towards
    its positive and away from the rest.

    Args:
      query: ``[D]`` query embedding.
      keys: ``[N, D]`` candidate embeddings, ``N >= 1``.
      positive_index: scalar integer index of the positive key in ``[0, N)``.
      temperature: ``tau > 0``; smaller sharpens the softmax.
      normalize: L2-normalise ``query`` and ``keys`` first (cosine similarity).

    Returns:
      A scalar >= 0 in ``query``'s floating dtype.

    References:
      van den Oord et al., `Representation learning with contrastive predictive
      coding <https://arxiv.org/abs/1807.03748>`_, 2018.
    """
    if jnp.ndim(query) != 1:
        raise ValueError(f"query must have shape [D], got {jnp.shape(query)}")
    if jnp.ndim(keys) != 2 or jnp.shape(keys)[1] != jnp.shape(query)[0]:
        raise ValueError(
            f"keys must have shape [N, {jnp.shape(query)[0]}], got {jnp.shape(keys)}"
        )
    if jnp.shape(keys)[0] < 1:
        raise ValueError("keys must hold at least one candidate, got N = 0")
    if jnp.ndim(positive_index) != 0 or not jnp.issubdtype(
        jnp.result_type(positive_index), jnp.integer
    ):
        raise ValueError(
            f"positive_index must be a scalar integer, got {positive_index!r}"
        )
    check_positive("temperature", temperature)
    out_dtype = float_dtype(query)
    dtype = compute_dtype(out_dtype)
    q = jnp.asarray(query).astype(dtype)
    k = jnp.asarray(keys).astype(dtype)
    if normalize:
        q = _l2_normalize(q, axis=0)
        k = _l2_normalize(k, axis=1)
    # Scale the query, not the logits: XLA on CPU contracts "logits * (1/tau) -
    # max" inside the fused logsumexp into one FMA with an unrounded product, so
    # at logits of 1e9 "x - max(x)" came out near +87 and exp overflowed to inf.
    q = q / jnp.asarray(temperature).astype(dtype)
    logits = k @ q
    loss = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.asarray(positive_index)
    )
    return loss.astype(out_dtype)
