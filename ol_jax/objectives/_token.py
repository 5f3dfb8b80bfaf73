"""Token-level losses for one sequence: weighted cross-entropy and KL to a reference.

Both take ``[T, V]`` logits for one sequence (the caller vmaps over a batch) and
average over the tokens a mask selects. An all-false mask yields 0 and a zero
gradient, never NaN.
"""

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from ol_jax.objectives._utils import check_same_shape, compute_dtype, float_dtype


def _check_logits(name: str, logits: ArrayLike) -> tuple[int, int]:
    if jnp.ndim(logits) != 2:
        raise ValueError(f"{name} must have shape [T, V], got {jnp.shape(logits)}")
    if not jnp.issubdtype(jnp.result_type(logits), jnp.floating):
        raise ValueError(
            f"{name} must be floating point, got {jnp.result_type(logits)}"
        )
    return jnp.shape(logits)


def _check_per_token(name: str, value: ArrayLike | None, length: int) -> None:
    if value is not None and jnp.shape(value) != (length,):
        raise ValueError(f"{name} must have shape [{length}], got {jnp.shape(value)}")


def _masked_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    """``sum(w v) / sum(w)``, 0 when ``sum(w) == 0`` (double-where guard)."""
    total = jnp.sum(weights)
    nonempty = total > 0
    safe_total = jnp.where(nonempty, total, 1.0)
    return jnp.where(nonempty, jnp.sum(weights * values) / safe_total, 0.0)


def token_cross_entropy(
    logits: ArrayLike,
    targets: ArrayLike,
    *,
    weights: ArrayLike | None = None,
    mask: ArrayLike | None = None,
) -> jax.Array:
    """Weighted, masked mean next-token cross-entropy of one sequence.

    ``L = sum_t w_t m_t CE_t / sum_t w_t m_t`` with
    ``CE_t = logsumexp(logits_t) - logits_t[y_t]``, computed by
    ``optax.softmax_cross_entropy_with_integer_labels`` (stable for logits of
    any finite magnitude). Token weights act as relative importance, as in
    ``sum(w_i loss_i) / sum(w_i)``; scale the returned loss to weight a whole
    example. Masked-out tokens may hold any target id (padding such as -100).

    Args:
      logits: ``[T, V]`` floating logits.
      targets: ``[T]`` integer token ids, in ``[0, V)`` where the mask is true.
      weights: optional ``[T]`` non-negative token weights (default all 1).
      mask: optional ``[T]`` boolean (or 0/1) mask of tokens to score.

    Returns:
      A scalar loss in ``logits``' dtype; 0 if no token is selected.

    References:
      Shannon, `A mathematical theory of communication
      <https://doi.org/10.1002/j.1538-7305.1948.tb01338.x>`_, 1948; Goodfellow et
      al., `Deep Learning <https://www.deeplearningbook.org/>`_, 2016, section 6.2.
    """
    length, _ = _check_logits("logits", logits)
    if jnp.shape(targets) != (length,):
        raise ValueError(
            f"targets must have shape [{length}], got {jnp.shape(targets)}"
        )
    if not jnp.issubdtype(jnp.result_type(targets), jnp.integer):
        raise ValueError(f"targets must be integer ids, got {jnp.result_type(targets)}")
    _check_per_token("weights", weights, length)
    _check_per_token("mask", mask, length)
    out_dtype = float_dtype(logits)
    dtype = compute_dtype(out_dtype)
    logits = jnp.asarray(logits).astype(dtype)
    keep = jnp.ones((length,), bool) if mask is None else jnp.asarray(mask).astype(bool)
    # Padding ids of masked-out tokens would index out of range; swap in 0 there.
    safe_targets = jnp.where(keep, jnp.asarray(targets), 0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, safe_targets)
    w = keep.astype(dtype)
    if weights is not None:
        w = w * jnp.asarray(weights).astype(dtype)
    return _masked_mean(jnp.where(keep, ce, 0.0), w).astype(out_dtype)


def token_kl(
    ref_logits: ArrayLike,
    logits: ArrayLike,
    *,
    mask: ArrayLike | None = None,
) -> jax.Array:
    """Mean over selected tokens of ``KL(p_ref || p)``, the drift from a reference.

    ``KL_t = sum_v p_ref(v) [log p_ref(v) - log p(v)]`` with both
    log-probabilities from ``jax.nn.log_softmax`` (stable for logits of any
    finite magnitude); each ``KL_t`` is clipped at 0 against rounding, so the
    result is exactly 0 for identical logits and >= 0 otherwise. With the frozen
    base model as reference this is the self-distillation term that keeps an
    adapter from drifting.

    Args:
      ref_logits: ``[T, V]`` reference (teacher / base model) logits; treated
        as data, with no gradient taken through them.
      logits: ``[T, V]`` logits of the model being adapted.
      mask: optional ``[T]`` boolean (or 0/1) mask of tokens to average over.

    Returns:
      A scalar in ``logits``' dtype; 0 if no token is selected.

    References:
      Kullback & Leibler, `On information and sufficiency
      <https://doi.org/10.1214/aoms/1177729694>`_, 1951; Hinton et al.,
      `Distilling the knowledge in a neural network
      <https://arxiv.org/abs/1503.02531>`_, 2015.
    """
    check_same_shape(ref_logits=ref_logits, logits=logits)
    length, _ = _check_logits("logits", logits)
    _check_logits("ref_logits", ref_logits)
    _check_per_token("mask", mask, length)
    out_dtype = float_dtype(logits)
    dtype = compute_dtype(out_dtype)
    ref_logp = jax.nn.log_softmax(
        jax.lax.stop_gradient(jnp.asarray(ref_logits).astype(dtype)), axis=-1
    )
    logp = jax.nn.log_softmax(jnp.asarray(logits).astype(dtype), axis=-1)
    ref_p = jnp.exp(ref_logp)
    # 0 * log 0 is 0: zero-probability reference tokens contribute nothing.
    terms = jnp.where(ref_p > 0, ref_p * (ref_logp - logp), 0.0)
    kl = jnp.maximum(jnp.sum(terms, axis=-1), 0.0)
    keep = jnp.ones((length,), bool) if mask is None else jnp.asarray(mask).astype(bool)
    return _masked_mean(jnp.where(keep, kl, 0.0), keep.astype(dtype)).astype(out_dtype)
