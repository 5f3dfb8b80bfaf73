"""REINFORCE for a diagonal Gaussian policy over a latent such as ``style_z``.

The policy samples ``z ~ N(mean, diag(exp(log_std))^2)``; a rater's reward for
what ``z`` produced scales the gradient of ``log pi(z)``. The helpers around the
loss keep that signal usable online: an EMA baseline turns rewards into
advantages, recency weights fade old feedback, and a confidence weight damps a
stream of one-sided (all 1s or all 10s) ratings.
"""

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from ol_jax.objectives._utils import (
    check_in_range,
    check_nonnegative,
    check_positive,
    check_same_shape,
    compute_dtype,
    float_dtype,
)

# Bounds on log(std): below -5 (std ~ 0.007) the log-probability's curvature
# 1/std^2 makes one REINFORCE step overshoot; above 2 (std ~ 7.4) the policy is
# noise.
DEFAULT_MIN_LOG_STD = -5.0
DEFAULT_MAX_LOG_STD = 2.0
_LOG_2PI = math.log(2.0 * math.pi)


def _check_log_std_bounds(min_log_std: float, max_log_std: float) -> None:
    if not (min_log_std < max_log_std):
        raise ValueError(
            "log-std bounds must satisfy min_log_std < max_log_std, got "
            f"min_log_std={min_log_std}, max_log_std={max_log_std}"
        )


def gaussian_log_prob(
    z: ArrayLike,
    mean: ArrayLike,
    log_std: ArrayLike,
    *,
    min_log_std: float = DEFAULT_MIN_LOG_STD,
    max_log_std: float = DEFAULT_MAX_LOG_STD,
) -> jax.Array:
    """Log-density of ``z`` under a diagonal Gaussian, summed over all elements.

    ``log pi(z) = -1/2 sum_i [((z_i - mu_i) / sigma_i)^2 + 2 s_i + log(2 pi)]``
    with ``s = clip(log_std, min_log_std, max_log_std)`` and ``sigma = exp(s)``.
    The clip keeps the standard deviation from collapsing to zero (or exploding)
    however far the parameters are pushed; outside the bounds the gradient with
    respect to ``log_std`` is zero.

    Args:
      z: the sampled latent, any shape.
      mean: the policy mean, shape of ``z``.
      log_std: the policy log standard deviation, shape of ``z``.
      min_log_std: floor on ``log_std``.
      max_log_std: ceiling on ``log_std``.

    Returns:
      A scalar in ``mean``'s floating dtype; ``z`` and ``log_std`` are cast to it.

    References:
      Williams, `Simple statistical gradient-following algorithms for connectionist
      reinforcement learning <https://doi.org/10.1007/BF00992696>`_, 1992.
    """
    check_same_shape(z=z, mean=mean, log_std=log_std)
    _check_log_std_bounds(min_log_std, max_log_std)
    out_dtype = float_dtype(mean)
    dtype = compute_dtype(out_dtype)
    z, mean, log_std = (jnp.asarray(a).astype(dtype) for a in (z, mean, log_std))
    s = jnp.clip(log_std, min_log_std, max_log_std)
    scaled = (z - mean) * jnp.exp(-s)
    log_prob = -0.5 * jnp.sum(scaled * scaled + 2.0 * s + _LOG_2PI)
    return log_prob.astype(out_dtype)


def gaussian_entropy(
    log_std: ArrayLike,
    *,
    min_log_std: float = DEFAULT_MIN_LOG_STD,
    max_log_std: float = DEFAULT_MAX_LOG_STD,
) -> jax.Array:
    """Differential entropy of a diagonal Gaussian.

    ``H = sum_i [s_i + 1/2 log(2 pi e)]`` with ``s = clip(log_std, min, max)``,
    the same clip as :func:`gaussian_log_prob`. It does not depend on the mean.

    Args:
      log_std: the policy log standard deviation, any shape.
      min_log_std: floor on ``log_std``.
      max_log_std: ceiling on ``log_std``.

    Returns:
      A scalar in ``log_std``'s floating dtype.

    References:
      Cover & Thomas, `Elements of Information Theory
      <https://doi.org/10.1002/047174882X>`_, 2006, section 8.4.
    """
    _check_log_std_bounds(min_log_std, max_log_std)
    out_dtype = float_dtype(log_std)
    s = jnp.asarray(log_std).astype(compute_dtype(out_dtype))
    s = jnp.clip(s, min_log_std, max_log_std)
    return jnp.sum(s + 0.5 * (_LOG_2PI + 1.0)).astype(out_dtype)


def reinforce_loss(
    mean: ArrayLike,
    log_std: ArrayLike,
    z: ArrayLike,
    advantage: ArrayLike,
    *,
    weight: ArrayLike = 1.0,
    entropy_coef: ArrayLike = 0.0,
    min_log_std: float = DEFAULT_MIN_LOG_STD,
    max_log_std: float = DEFAULT_MAX_LOG_STD,
) -> jax.Array:
    """REINFORCE loss for one sampled latent: descend it to follow the reward.

    ``L = -sg(w * A) * log pi(z | mean, log_std) - beta * H(log_std)``, where
    ``sg`` is ``stop_gradient``. Its gradient is the score-function estimator
    ``-w A grad log pi(z)``: a positive advantage (a good rating above the
    baseline) makes the sampled ``z`` more likely, a negative one less likely.
    The sample ``z`` is a constant of the loss (it is stopped too), so the
    estimator is REINFORCE, not the reparameterisation gradient.

    Args:
      mean: policy mean (a parameter), any shape.
      log_std: policy log standard deviation, shape of ``mean``.
      z: the latent that was sampled and rated, shape of ``mean``.
      advantage: scalar ``reward - baseline``.
      weight: scalar per-feedback weight, e.g. recency times confidence.
      entropy_coef: ``beta >= 0``; rewards a wider policy, against collapse.
      min_log_std: floor on ``log_std`` inside the log-probability.
      max_log_std: ceiling on ``log_std`` inside the log-probability.

    Returns:
      A scalar loss in ``mean``'s floating dtype.

    References:
      Williams, `Simple statistical gradient-following algorithms for connectionist
      reinforcement learning <https://doi.org/10.1007/BF00992696>`_, 1992.

    Examples:
      >>> import jax.numpy as jnp
      >>> mean, log_std = jnp.zeros(2), jnp.zeros(2)
      >>> z = jnp.array([1.0, -1.0])
      >>> g = jax.grad(reinforce_loss)(mean, log_std, z, 1.0)
      >>> bool(jnp.all(-g * z > 0))  # descending moves the mean towards z
      True
    """
    for name, value in (("advantage", advantage), ("weight", weight)):
        if jnp.ndim(value) != 0:
            raise ValueError(f"{name} must be a scalar, got shape {jnp.shape(value)}")
    if jnp.ndim(entropy_coef) != 0:
        raise ValueError(
            f"entropy_coef must be a scalar, got shape {jnp.shape(entropy_coef)}"
        )
    check_nonnegative("entropy_coef", entropy_coef)
    out_dtype = float_dtype(mean)
    dtype = compute_dtype(out_dtype)
    log_prob = gaussian_log_prob(
        jax.lax.stop_gradient(z),
        jnp.asarray(mean).astype(dtype),
        log_std,
        min_log_std=min_log_std,
        max_log_std=max_log_std,
    )
    entropy = gaussian_entropy(
        jnp.asarray(log_std).astype(dtype),
        min_log_std=min_log_std,
        max_log_std=max_log_std,
    )
    signal = jax.lax.stop_gradient(
        jnp.asarray(weight).astype(dtype) * jnp.asarray(advantage).astype(dtype)
    )
    beta = jnp.asarray(entropy_coef).astype(dtype)
    return (-signal * log_prob - beta * entropy).astype(out_dtype)


def ema_baseline(
    baseline: ArrayLike, reward: ArrayLike, decay: ArrayLike = 0.9
) -> jax.Array:
    """One step of the exponential-moving-average reward baseline.

    ``b' = decay * b + (1 - decay) * r``. Subtracting ``b`` from the reward gives
    the advantage that :func:`reinforce_loss` scales by, which lowers the
    estimator's variance without biasing it. Keep ``b`` in the learner's state.
    The same update on ``|r - b|`` tracks the stream's spread for
    :func:`confidence_weight`.

    Args:
      baseline: the current baseline, any shape.
      reward: the new reward, shape of ``baseline``.
      decay: in [0, 1]; larger remembers longer.

    Returns:
      The new baseline in ``baseline``'s floating dtype.

    References:
      Williams, `Simple statistical gradient-following algorithms for connectionist
      reinforcement learning <https://doi.org/10.1007/BF00992696>`_, 1992,
      section 4 (reinforcement baselines).
    """
    check_same_shape(baseline=baseline, reward=reward)
    check_in_range("decay", decay, 0.0, 1.0)
    out_dtype = float_dtype(baseline)
    dtype = compute_dtype(out_dtype)
    b = jnp.asarray(baseline).astype(dtype)
    r = jnp.asarray(reward).astype(dtype)
    d = jnp.asarray(decay).astype(dtype)
    return (d * b + (1.0 - d) * r).astype(out_dtype)


def recency_weights(ages: ArrayLike, half_life: ArrayLike) -> jax.Array:
    """Weights that halve every ``half_life`` steps of age: ``0.5 ** (age / h)``.

    Older feedback counts less, so a contradiction (the same ``z`` rated 2, then
    9) resolves towards the newer rating instead of oscillating. Negative ages
    (clock skew) are treated as 0, giving weight 1; very old feedback underflows
    to 0, never NaN.

    Args:
      ages: age of each piece of feedback in steps (or seconds), any shape.
      half_life: the age at which the weight is 1/2, > 0.

    Returns:
      Weights in (0, 1] of ``ages``' shape, in its floating dtype (float32 for
      integer ages).

    References:
      Sutton & Barto, `Reinforcement Learning: An Introduction
      <http://incompleteideas.net/book/the-book-2nd.html>`_, 2018, section 2.5
      (exponential recency-weighted averages for nonstationary rewards).
    """
    check_positive("half_life", half_life)
    if jnp.ndim(half_life) != 0:
        raise ValueError(
            f"half_life must be a scalar, got shape {jnp.shape(half_life)}"
        )
    out_dtype = float_dtype(ages)
    dtype = compute_dtype(out_dtype)
    a = jnp.maximum(jnp.asarray(ages).astype(dtype), 0.0)
    h = jnp.asarray(half_life).astype(dtype)
    return jnp.exp2(-a / h).astype(out_dtype)


def confidence_weight(
    reward: ArrayLike,
    baseline: ArrayLike,
    spread: ArrayLike,
    *,
    min_weight: float = 0.1,
    eps: float = 1e-3,
) -> jax.Array:
    """Damps updates that push further along a one-sided reward stream.

    The stream's running mean ``b`` (the baseline) and running spread ``s`` (e.g.
    the EMA of ``|r - b|``) say how one-sided it is:
    ``o = |b| / (|b| + s + eps)`` is 0 for a balanced stream and tends to 1 when
    every rating is a 1 (or every one a 10). The weight is
    ``w = 1 - (1 - min_weight) * o``, except that a reward pulling *against* the
    stream's direction, ``(r - b) * b < 0``, keeps ``w = 1``: it carries new
    information and cannot cause one-directional drift. So ``w`` lies in
    ``[min_weight, 1]``.

    A plain z-score ``|r - b| / s`` cannot serve here: in an all-10s stream both
    ``|r - b|`` and ``s`` go to 0 and their ratio says nothing.

    Args:
      reward: the new scalar reward in [-1, 1].
      baseline: the stream's running mean reward (see :func:`ema_baseline`).
      spread: the stream's running spread, >= 0.
      min_weight: the weight of a completely one-sided stream, in [0, 1].
      eps: keeps ``o`` defined for ``b = s = 0``, > 0.

    Returns:
      A scalar weight in ``[min_weight, 1]`` in ``reward``'s floating dtype.

    References:
      Williams, `Simple statistical gradient-following algorithms for connectionist
      reinforcement learning <https://doi.org/10.1007/BF00992696>`_, 1992 (the
      baseline this weighting is built on). The one-sidedness damping itself is
      this library's rule for the "extreme ratings" case of the glyph learner.
    """
    check_same_shape(reward=reward, baseline=baseline, spread=spread)
    check_in_range("min_weight", min_weight, 0.0, 1.0)
    check_positive("eps", eps)
    out_dtype = float_dtype(reward)
    dtype = compute_dtype(out_dtype)
    r, b, s = (jnp.asarray(a).astype(dtype) for a in (reward, baseline, spread))
    s = jnp.maximum(s, 0.0)
    one_sided = jnp.abs(b) / (jnp.abs(b) + s + eps)
    w = 1.0 - (1.0 - min_weight) * one_sided
    against = (r - b) * b < 0.0
    w = jnp.where(against, 1.0, w)
    return jnp.clip(w, min_weight, 1.0).astype(out_dtype)
