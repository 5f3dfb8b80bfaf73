"""Canary gate: accept a candidate update only if no canary metric regresses."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

Metrics = Any  # a pytree of scalar metrics (e.g. a dict name -> score)


class CanaryDecision(NamedTuple):
    """The outcome of :func:`canary_gate`.

    Attributes:
      accept: scalar bool, every metric is finite and within its tolerance.
      regressions: per-metric regression (positive = worse), the metrics' tree.
      worst: scalar, the largest ``regression - tolerance`` (``<= 0`` accepts;
        ``+inf`` when a candidate metric is not finite).
    """

    accept: jax.Array
    regressions: Metrics
    worst: jax.Array


def canary_gate(
    baseline: Metrics,
    candidate: Metrics,
    tolerance: ArrayLike | Metrics = 0.0,
    *,
    higher_is_better: bool = True,
) -> CanaryDecision:
    """Rejects a candidate whose canary metrics regress past their tolerance.

    For each canary metric ``m`` the regression is ``d_m = b_m - c_m`` when
    higher is better (``c_m - b_m`` otherwise); the candidate is accepted iff
    ``d_m <= tol_m`` for every ``m`` and every candidate metric is finite. With
    ``tol = 0`` no canary may get worse at all. Pure and jit-able.

    Args:
      baseline: metrics of the current (last accepted) parameters, a pytree of
        scalars, e.g. ``{"family_0": 0.91, ...}``.
      candidate: the same metrics for the candidate parameters.
      tolerance: a scalar ``>= 0`` for all metrics, or a pytree like ``baseline``.
      higher_is_better: the direction of every metric.

    Returns:
      A :class:`CanaryDecision`.

    References:
      Sculley et al., `Hidden technical debt in machine learning systems
      <https://papers.nips.cc/paper/5656-hidden-technical-debt-in-machine-learning-systems>`_,
      NeurIPS 2015 (canarying model updates before serving them).
    """
    if jax.tree.structure(baseline) != jax.tree.structure(candidate):
        raise ValueError(
            "candidate must have the baseline's structure: expected "
            f"{jax.tree.structure(baseline)}, got {jax.tree.structure(candidate)}"
        )
    if not jax.tree.leaves(baseline):
        raise ValueError("baseline must hold at least one canary metric, got none")
    if jax.tree.structure(tolerance) == jax.tree.structure(0.0):
        tolerance = jax.tree.map(lambda _: tolerance, baseline)
    elif jax.tree.structure(tolerance) != jax.tree.structure(baseline):
        raise ValueError(
            "tolerance must be a scalar or have the baseline's structure, got "
            f"{jax.tree.structure(tolerance)}"
        )
    sign = 1.0 if higher_is_better else -1.0

    def regression(b, c):
        b = jnp.asarray(b, jnp.float32)
        c = jnp.asarray(c, jnp.float32)
        if b.ndim or c.ndim:
            raise ValueError(
                f"canary metrics must be scalars, got shapes {b.shape}, {c.shape}"
            )
        return sign * (b - c)

    def excess(d, c, tol):
        tol = jnp.asarray(tol, jnp.float32)
        # A non-finite candidate metric is the worst possible regression.
        return jnp.where(jnp.isfinite(c), d - tol, jnp.asarray(jnp.inf, jnp.float32))

    regressions = jax.tree.map(regression, baseline, candidate)
    excesses = jax.tree.map(excess, regressions, candidate, tolerance)
    worst = jnp.max(jnp.stack(jax.tree.leaves(excesses)))
    # NaN regressions (NaN baseline) compare False against 0 and so reject.
    accept = worst <= 0.0
    return CanaryDecision(accept=accept, regressions=regressions, worst=worst)
