"""Loss-spike gate: reject a feedback batch that the current model finds absurd."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike


class SpikeStats(NamedTuple):
    """Running statistics of the pre-update batch loss.

    Attributes:
      mean: EMA of the (clipped) batch loss.
      var: EMA of its squared deviation.
      count: batches seen (int32, saturating).
    """

    mean: jax.Array
    var: jax.Array
    count: jax.Array


def init_spike_stats() -> SpikeStats:
    """Empty statistics (the gate passes everything until ``warmup`` batches)."""
    return SpikeStats(
        mean=jnp.zeros((), jnp.float32),
        var=jnp.zeros((), jnp.float32),
        count=jnp.zeros((), jnp.int32),
    )


def loss_spike_gate(
    loss: ArrayLike,
    stats: SpikeStats,
    *,
    z: float = 4.0,
    decay: float = 0.95,
    min_std: float = 0.05,
    warmup: int = 8,
) -> tuple[jax.Array, SpikeStats]:
    """Flags a batch whose loss under the current model is a statistical outlier.

    With running mean ``m`` and variance ``v`` of past batch losses, the batch
    passes iff ``count < warmup`` or ``loss <= m + z * max(sqrt(v), min_std)``
    (and the loss is finite). Poisoned feedback (inverted labels) contradicts a
    model that has learned, so its loss jumps far above the running level.

    The mean is then updated with the loss *clipped* to that threshold,
    ``m <- decay m + (1 - decay) l_c``, and the variance
    ``v <- decay v + (1 - decay)(l_c - m)^2`` only for batches that pass, so a
    burst of outliers barely moves the statistics while a lasting shift in the
    loss level (a real distribution shift) raises the threshold by
    ``(1 - decay) z std`` per batch until it is accepted.
    The first ``warmup`` batches use an exact running mean. Pure and jit-able.

    Args:
      loss: the scalar pre-update loss of the new batch.
      stats: from :func:`init_spike_stats` or a previous call.
      z: threshold in standard deviations, ``> 0``.
      decay: EMA decay in ``(0, 1)``.
      min_std: floor on the standard deviation, ``>= 0``.
      warmup: batches observed before the gate can reject, ``>= 1``.

    Returns:
      ``(ok, new_stats)``: ``ok`` a scalar bool.

    References:
      Rousseeuw & Leroy, `Robust Regression and Outlier Detection
      <https://doi.org/10.1002/0471725382>`_, Wiley 1987 (clipped, robust
      location estimates); Tolpegin et al., `Data Poisoning Attacks Against
      Federated Learning Systems <https://arxiv.org/abs/2007.08432>`_, 2020.
    """
    if not z > 0:
        raise ValueError(f"z must be > 0, got {z}")
    if not 0 < decay < 1:
        raise ValueError(f"decay must be in (0, 1), got {decay}")
    if not min_std >= 0:
        raise ValueError(f"min_std must be >= 0, got {min_std}")
    if not (isinstance(warmup, int) and warmup >= 1):
        raise ValueError(f"warmup must be an int >= 1, got {warmup!r}")
    loss = jnp.asarray(loss, jnp.float32)
    std = jnp.maximum(jnp.sqrt(stats.var), jnp.float32(min_std))
    threshold = stats.mean + jnp.float32(z) * std
    warm = stats.count >= warmup
    finite = jnp.isfinite(loss)
    ok = finite & (jnp.logical_not(warm) | (loss <= threshold))
    clipped = jnp.where(warm, jnp.minimum(loss, threshold), loss)
    # Exact running mean during warm-up, EMA after it.
    n = (stats.count + 1).astype(jnp.float32)
    rate = jnp.where(warm, jnp.float32(1.0 - decay), 1.0 / n)
    delta = clipped - stats.mean
    mean = stats.mean + rate * delta
    var = (1.0 - rate) * (stats.var + rate * delta * delta)
    new = SpikeStats(
        mean=jnp.where(finite, mean, stats.mean),
        # An outlier moves only the mean: letting it widen the spread would let
        # a long burst talk the gate into accepting it.
        var=jnp.where(ok, var, stats.var),
        count=jnp.where(finite, optax.safe_increment(stats.count), stats.count),
    )
    return ok, new
