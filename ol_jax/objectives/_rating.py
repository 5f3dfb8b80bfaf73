"""From a 1-10 rating to a reward in [-1, 1].

Two forms of the same map: :func:`normalize_rating` validates Python and numpy
input on the host (where a rater's answer enters the library), and
:func:`rating_to_reward` is its jit-able, unvalidated twin for traced arrays.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ol_jax.objectives._utils import compute_dtype, float_dtype

MIN_RATING = 1
MAX_RATING = 10
_MID = (MIN_RATING + MAX_RATING) / 2  # 5.5
_HALF_RANGE = (MAX_RATING - MIN_RATING) / 2  # 4.5
_SCALES = ("linear", "nonlinear")


def _check_options(scale: str, power: float) -> None:
    if scale not in _SCALES:
        raise ValueError(f"scale must be 'linear' or 'nonlinear', got {scale!r}")
    if not (isinstance(power, int | float) and 0 < power < math.inf):
        raise ValueError(f"power must be a finite number > 0, got {power!r}")


def _shape(x, scale: str, power: float, xp):
    """The map itself, for ``xp`` = numpy (host) or jax.numpy (traced)."""
    centred = (x - _MID) / _HALF_RANGE
    if scale == "linear":
        return centred
    return xp.sign(centred) * xp.abs(centred) ** power


def normalize_rating(
    rating: Any, *, scale: str = "linear", power: float = 2.0
) -> float | np.ndarray:
    """Validates a 1-10 rating on the host and maps it to a reward in [-1, 1].

    ``linear``: ``r = (rating - 5.5) / 4.5``, so 1 -> -1, 5.5 -> 0, 10 -> 1.
    ``nonlinear``: the signed power ``r = sign(x) |x|^power`` of that linear value
    ``x``. With ``power > 1`` the lukewarm middle ratings shrink towards 0 while 1
    and 10 still map to -1 and 1, so extreme ratings dominate the update. Both maps
    are strictly increasing.

    Args:
      rating: a Python or numpy number, or an array of them. Each must be a whole
        number in 1..10 (``7.0`` is accepted, ``7.5`` is not); booleans, strings,
        NaN and infinities are rejected.
      scale: ``"linear"`` or ``"nonlinear"``.
      power: exponent of the nonlinear map, > 0; ignored by the linear one.

    Returns:
      A Python float for a scalar rating, else a float32 numpy array of the
      rating's shape.

    Raises:
      ValueError: naming the bad rating or option, e.g.
        ``rating must be in 1..10, got 11``.

    References:
      Williams, `Simple statistical gradient-following algorithms for connectionist
      reinforcement learning <https://doi.org/10.1007/BF00992696>`_, 1992 (the
      reward that REINFORCE scales its gradient by).

    Examples:
      >>> normalize_rating(10)
      1.0
      >>> normalize_rating(1, scale="nonlinear")
      -1.0
    """
    _check_options(scale, power)
    if isinstance(rating, jax.core.Tracer):
        raise ValueError(
            "normalize_rating validates on the host and got a traced value; "
            "use rating_to_reward inside jit"
        )
    arr = np.asarray(rating)
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iuf":
        raise ValueError(f"rating must be a number in 1..10, got {rating!r}")
    flat = arr.reshape(-1)
    if arr.dtype.kind == "f":
        finite = np.isfinite(flat)
        if not finite.all():
            bad = flat[~finite][0]
            raise ValueError(f"rating must be a finite number in 1..10, got {bad}")
        whole = flat == np.round(flat)
        if not whole.all():
            bad = flat[~whole][0]
            raise ValueError(f"rating must be a whole number in 1..10, got {bad}")
    inside = (flat >= MIN_RATING) & (flat <= MAX_RATING)
    if not inside.all():
        bad = flat[~inside][0]
        shown = int(bad) if arr.dtype.kind in "iu" else bad
        raise ValueError(f"rating must be in 1..10, got {shown}")
    reward = _shape(arr.astype(np.float64), scale, power, np).astype(np.float32)
    if reward.ndim == 0:
        return float(reward)
    return reward


def rating_to_reward(
    rating: ArrayLike, *, scale: str = "linear", power: float = 2.0
) -> jax.Array:
    """The jit-able form of :func:`normalize_rating`, without validation.

    Same map: ``x = (clip(rating, 1, 10) - 5.5) / 4.5``, then ``x`` (linear) or
    ``sign(x) |x|^power`` (nonlinear). Traced values cannot raise, so ratings
    outside 1..10 are clipped to the nearest end instead; validate at the host
    boundary with :func:`normalize_rating`.

    Args:
      rating: ratings of any shape; integer or floating dtype.
      scale: ``"linear"`` or ``"nonlinear"`` (static).
      power: exponent of the nonlinear map, > 0 (static).

    Returns:
      Rewards in [-1, 1] of the rating's shape, in the rating's floating dtype
      (float32 for integer ratings).

    References:
      Williams, `Simple statistical gradient-following algorithms for connectionist
      reinforcement learning <https://doi.org/10.1007/BF00992696>`_, 1992.
    """
    _check_options(scale, power)
    out_dtype = float_dtype(rating)
    x = jnp.asarray(rating).astype(compute_dtype(out_dtype))
    x = jnp.clip(x, MIN_RATING, MAX_RATING)
    return _shape(x, scale, power, jnp).astype(out_dtype)
