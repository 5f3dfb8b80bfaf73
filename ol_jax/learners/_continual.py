"""Continual-learning metrics: backward transfer, forgetting, plasticity, stability.

Pure NumPy functions of logged numbers; the chat learner calls them once per turn
and ``ol-jax report`` once per run. Tasks are whatever the stream is split into
(for a fact stream, task ``j`` is learning fact ``j``).

The anytime accuracy matrix ``R`` is ``T x T`` with ``R[i, j]`` the accuracy on
task ``j`` measured after learning task ``i``; only the lower triangle ``j <= i``
is used (entries above the diagonal are ignored, conventionally NaN).

References:
    Lopez-Paz and Ranzato, `Gradient Episodic Memory for Continual Learning
    <https://arxiv.org/abs/1706.08840>`_, 2017 (backward transfer).
    Chaudhry et al., `Riemannian Walk for Incremental Learning: Understanding
    Forgetting and Intransigence <https://arxiv.org/abs/1801.10112>`_, 2018
    (forgetting measure).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = [
    "PlasticityMetrics",
    "StabilityMetrics",
    "backward_transfer",
    "forgetting",
    "plasticity_metrics",
    "stability_metrics",
]


def _accuracy_matrix(matrix) -> np.ndarray:
    """``matrix`` as float64 with its lower triangle checked finite."""
    r = np.array(matrix, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] != r.shape[1] or r.shape[0] < 1:
        raise ValueError(
            f"accuracy matrix must be square T x T with T >= 1, got shape {r.shape}"
        )
    bad = np.tril(~np.isfinite(r))
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        raise ValueError(
            "accuracy matrix must be finite on and below the diagonal, got "
            f"R[{i}, {j}] = {r[i, j]}"
        )
    r[np.triu_indices(r.shape[0], k=1)] = np.nan
    return r


def backward_transfer(matrix) -> float:
    """Backward transfer (BWT) of an anytime accuracy matrix.

    ``BWT = 1/(T-1) * sum_{j<T-1} (R[T-1, j] - R[j, j])``: how learning the later
    tasks changed the accuracy on each earlier task, from right after it was
    learned to the end. Negative is forgetting, positive is backward transfer.
    ``0.0`` for ``T = 1`` (no earlier task).

    Args:
      matrix: ``T x T`` array-like, ``R[i, j]`` = accuracy on task ``j`` after
        learning task ``i``; finite on and below the diagonal.

    Returns:
      BWT as a Python float.

    Raises:
      ValueError: not square, empty, or a non-finite entry in the lower triangle.

    Examples:
      >>> nan = float("nan")
      >>> backward_transfer([[0.9, nan], [0.6, 0.8]])  # 0.6 - 0.9
      -0.30000000000000004

    References:
      Lopez-Paz and Ranzato, `Gradient Episodic Memory for Continual Learning
      <https://arxiv.org/abs/1706.08840>`_, 2017, eq. (2).
    """
    r = _accuracy_matrix(matrix)
    t = r.shape[0]
    if t == 1:
        return 0.0
    return float(np.mean(r[t - 1, : t - 1] - np.diag(r)[: t - 1]))


def forgetting(matrix) -> float:
    """Average forgetting after the last task.

    ``F = 1/(T-1) * sum_{j<T-1} f_j`` with ``f_j = max_{j <= l < T-1} R[l, j] -
    R[T-1, j]``: for each earlier task, the drop from its best accuracy before the
    last task to its accuracy at the end. ``F >= -BWT`` always (the best accuracy
    is at least the one right after learning), with equality when every task
    peaks right after it is learned. ``0.0`` for ``T = 1``.

    Args:
      matrix: ``T x T`` array-like as in :func:`backward_transfer`.

    Returns:
      F as a Python float.

    Raises:
      ValueError: as :func:`backward_transfer`.

    Examples:
      >>> nan = float("nan")
      >>> forgetting([[0.5, nan, nan], [0.9, 1.0, nan], [0.6, 0.8, 1.0]])
      0.25

    References:
      Chaudhry et al., `Riemannian Walk for Incremental Learning
      <https://arxiv.org/abs/1801.10112>`_, 2018, eq. (9)-(10).
    """
    r = _accuracy_matrix(matrix)
    t = r.shape[0]
    if t == 1:
        return 0.0
    best = np.nanmax(r[: t - 1, : t - 1], axis=0)
    return float(np.mean(best - r[t - 1, : t - 1]))


class PlasticityMetrics(NamedTuple):
    """How fast the model is adapting; see :func:`plasticity_metrics`."""

    recent_loss: float
    improvement: float
    adaptation_speed: float


def plasticity_metrics(losses: Sequence[float], *, window: int) -> PlasticityMetrics:
    """Plasticity of an online learner from its per-turn loss history.

    With ``new`` the last ``window`` losses and ``old`` the ``window`` before them
    (fewer if the history is short):

    * ``recent_loss = mean(new)``;
    * ``improvement = (mean(old) - mean(new)) / mean(old)``, the relative loss
      decrease (positive = improving); ``0.0`` when ``old`` is empty or its mean
      is not positive;
    * ``adaptation_speed = -slope`` of the least-squares line through ``new``
      against the turn index, i.e. ``-d loss / d turn`` (positive = the loss is
      falling); ``0.0`` with fewer than two losses.

    Args:
      losses: the loss of each turn, oldest first; finite; at least one.
      window: the window length, >= 1.

    Returns:
      A :class:`PlasticityMetrics` of Python floats.

    Raises:
      ValueError: empty or non-finite ``losses``, or ``window < 1``.

    References:
      Dohare et al., `Loss of plasticity in deep continual learning
      <https://doi.org/10.1038/s41586-024-07711-7>`_, Nature, 2024.
    """
    x = np.asarray(losses, dtype=np.float64).reshape(-1)
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError(
            f"losses must be a non-empty sequence of finite numbers, got {x[:8]}"
        )
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")
    new = x[-window:]
    old = x[max(0, x.size - 2 * window) : x.size - new.size]
    recent = float(np.mean(new))
    old_mean = float(np.mean(old)) if old.size else 0.0
    improvement = (old_mean - recent) / old_mean if old_mean > 0 else 0.0
    speed = 0.0
    if new.size >= 2:
        t = np.arange(new.size, dtype=np.float64)
        t -= t.mean()
        speed = -float(np.dot(t, new - new.mean()) / np.dot(t, t))
    return PlasticityMetrics(recent, float(improvement), speed)


class StabilityMetrics(NamedTuple):
    """How far the model moved on its anchors; see :func:`stability_metrics`."""

    anchor_regression: float
    forgetting_rate: float
    perplexity_drift: float


def stability_metrics(
    anchor_ppl,
    base_anchor_ppl: float,
    *,
    turns: Sequence[int] | None = None,
) -> StabilityMetrics:
    """Stability and forgetting on fixed anchor prompts.

    With ``p_k`` the anchor perplexity of measurement ``k`` (taken at turn
    ``t_k``), ``p_base`` that of the base model (taken at turn 0) and
    ``r_k = p_k / p_base - 1`` the relative regression:

    * ``anchor_regression = r_last``: positive = the anchors got worse
      (forgetting), negative = better;
    * ``forgetting_rate = (r_last - r_prev) / (t_last - t_prev)``, the regression
      per turn between the last two measurements (the base counts as ``r = 0``
      at turn 0, so one measurement gives ``r_last / t_last``);
    * ``perplexity_drift = std(p) / p_base`` over all measurements, the seed's
      "perplexity drift" made scale-free.

    Args:
      anchor_ppl: one perplexity or a history of them, oldest first; > 0.
      base_anchor_ppl: the base model's anchor perplexity, > 0.
      turns: the turn of each measurement, increasing and > 0; default
        ``1, 2, ..., len(anchor_ppl)``.

    Returns:
      A :class:`StabilityMetrics` of Python floats.

    Raises:
      ValueError: a perplexity that is not finite and > 0, or bad ``turns``.

    References:
      Kirkpatrick et al., `Overcoming catastrophic forgetting in neural networks
      <https://arxiv.org/abs/1612.00796>`_, PNAS, 2017 (retention of earlier
      performance as the measure of stability).
    """
    p = np.asarray(anchor_ppl, dtype=np.float64).reshape(-1)
    base = float(base_anchor_ppl)
    if p.size == 0 or not np.all(np.isfinite(p) & (p > 0)):
        raise ValueError(f"anchor_ppl must be finite and > 0, got {p[:8]}")
    if not (np.isfinite(base) and base > 0):
        raise ValueError(f"base_anchor_ppl must be finite and > 0, got {base}")
    if turns is None:
        t = np.arange(1, p.size + 1, dtype=np.float64)
    else:
        t = np.asarray(turns, dtype=np.float64).reshape(-1)
        if t.shape != p.shape or t[0] <= 0 or np.any(np.diff(t) <= 0):
            raise ValueError(
                f"turns must be {p.size} increasing turns > 0, got {t[:8].tolist()}"
            )
    r = np.concatenate([np.zeros(1), p / base - 1.0])
    t = np.concatenate([np.zeros(1), t])
    rate = (r[-1] - r[-2]) / (t[-1] - t[-2])
    return StabilityMetrics(float(r[-1]), float(rate), float(np.std(p) / base))
