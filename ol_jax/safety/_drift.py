"""Drift measures between a model's last good version and its current weights."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

Params = Any


def output_kl(old_logits: ArrayLike, new_logits: ArrayLike) -> jax.Array:
    """Mean KL of the new output distributions from the old, over probe inputs.

    ``KL = 1/N sum_n sum_c p_old(c|x_n) (log p_old(c|x_n) - log p_new(c|x_n))``
    with ``p = softmax(logits)`` over the last axis.

    Args:
      old_logits: ``[N, C]`` logits of the last good version on ``N`` probes.
      new_logits: ``[N, C]`` logits of the current weights on the same probes.

    Returns:
      A float32 scalar ``>= 0`` (0 when the outputs agree).

    References:
      Kullback & Leibler, `On information and sufficiency
      <https://doi.org/10.1214/aoms/1177729694>`_, 1951.
    """
    old = jnp.asarray(old_logits)
    new = jnp.asarray(new_logits)
    if old.ndim != 2 or old.shape != new.shape:
        raise ValueError(
            "old_logits and new_logits must be matching [N, C] arrays, got shapes "
            f"{old.shape} and {new.shape}"
        )
    log_p = jax.nn.log_softmax(old.astype(jnp.float32), axis=-1)
    log_q = jax.nn.log_softmax(new.astype(jnp.float32), axis=-1)
    kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
    # Rounding can leave tiny negative values where the outputs agree.
    return jnp.maximum(jnp.mean(kl), 0.0)


def param_norm_ratio(params: Params, reference: Params) -> jax.Array:
    """``||theta|| / ||theta_ref||`` over whole pytrees (1 when unchanged).

    Args:
      params: the current weights.
      reference: the last good weights, same structure.

    Returns:
      A float32 scalar; ``+inf`` if the reference norm is 0 and params are not.
    """
    if jax.tree.structure(params) != jax.tree.structure(reference):
        raise ValueError(
            "params must have the reference's structure: expected "
            f"{jax.tree.structure(reference)}, got {jax.tree.structure(params)}"
        )
    num = optax.tree.norm(params).astype(jnp.float32)
    den = optax.tree.norm(reference).astype(jnp.float32)
    safe_den = jnp.where(den > 0, den, jnp.ones_like(den))
    ratio = jnp.where(
        den > 0, num / safe_den, jnp.where(num > 0, jnp.inf, jnp.ones_like(num))
    )
    return ratio.astype(jnp.float32)


class DriftReport(NamedTuple):
    """The outcome of :func:`drift_check`.

    Attributes:
      drifted: scalar bool, a drift limit is exceeded (or a measure is NaN).
      kl: the output KL on the probes.
      norm_ratio: the parameter-norm ratio.
    """

    drifted: jax.Array
    kl: jax.Array
    norm_ratio: jax.Array


def drift_check(
    kl: ArrayLike,
    norm_ratio: ArrayLike,
    *,
    max_kl: float,
    max_norm_ratio: float,
) -> DriftReport:
    """Decides whether the weights drifted too far from the last good version.

    ``drifted = not (kl <= max_kl and 1/max_norm_ratio <= ratio <= max_norm_ratio)``,
    so a NaN measure counts as drift. A drifted learner rolls back to its last
    good version.

    Args:
      kl: output KL on probe inputs (:func:`output_kl`).
      norm_ratio: parameter-norm ratio (:func:`param_norm_ratio`).
      max_kl: the KL limit, ``> 0``.
      max_norm_ratio: the ratio limit, ``> 1`` (shrinking by the same factor
        counts too).

    Returns:
      A :class:`DriftReport`.

    References:
      Lu et al., `Learning under Concept Drift: A Review
      <https://arxiv.org/abs/2004.05785>`_, IEEE TKDE 2018.
    """
    if not max_kl > 0:
        raise ValueError(f"max_kl must be > 0, got {max_kl}")
    if not max_norm_ratio > 1:
        raise ValueError(f"max_norm_ratio must be > 1, got {max_norm_ratio}")
    kl = jnp.asarray(kl, jnp.float32)
    ratio = jnp.asarray(norm_ratio, jnp.float32)
    ok = (
        (kl <= max_kl)
        & (ratio <= max_norm_ratio)
        & (ratio >= jnp.asarray(1.0 / max_norm_ratio, jnp.float32))
    )
    return DriftReport(drifted=jnp.logical_not(ok), kl=kl, norm_ratio=ratio)
