"""Prioritized experience replay as a pytree, backed by flashbax's sum tree.

flashbax (the JAX ecosystem's replay library, pinned at 0.1.3) already provides a
fixed-capacity, jit-able prioritized item buffer over a sum tree; this module
wraps it so that it fits the rest of ``ol_jax``:

* strict numerics: flashbax relies on implicit rank and dtype promotion, so its
  calls run under a local ``standard`` / ``allow`` promotion scope while our code
  stays strict;
* importance-sampling weights with exponent ``beta`` (flashbax returns only the
  sampling probabilities);
* priorities are sanitized (non-finite or non-positive -> ``min_priority``) so a
  NaN loss can never poison the sum tree.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import flashbax as fbx
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

Experience = Any
ReplayState = Any  # flashbax's PrioritisedTrajectoryBufferState (a pytree).


class ReplaySample(NamedTuple):
    """A prioritized batch drawn from the buffer.

    Attributes:
      experience: the sampled items, each leaf with a leading ``batch_size`` axis.
      indices: ``int32[batch_size]`` slots of the items (pass them back to
        ``update_priorities``).
      probabilities: ``float32[batch_size]`` sampling probabilities ``P(i)``.
      weights: ``float32[batch_size]`` importance weights
        ``w_i = (N P(i))^-beta / max_j w_j`` (in ``(0, 1]``).
    """

    experience: Experience
    indices: jax.Array
    probabilities: jax.Array
    weights: jax.Array


class PrioritizedReplay(NamedTuple):
    """The pure functions of a prioritized replay buffer (like an optax transform).

    Attributes:
      init: ``init(example) -> state`` from one unbatched example (shapes, dtypes).
      add: ``add(state, batch) -> state``; ``batch`` leaves have a leading axis of
        items. New items get the highest priority seen so far, and the oldest items
        are overwritten once ``capacity`` is reached (a batch larger than the
        capacity keeps its last ``capacity`` items).
      sample: ``sample(state, *, key, beta=None) -> ReplaySample``.
      update_priorities: ``update_priorities(state, indices, priorities) -> state``.
      size: ``size(state) -> int32`` number of items held (``<= capacity``).
      can_sample: ``can_sample(state) -> bool`` at least ``min_size`` items held.
      capacity: the fixed capacity.
      batch_size: items per sample.
    """

    init: Callable[[Experience], ReplayState]
    add: Callable[[ReplayState, Experience], ReplayState]
    sample: Callable[..., ReplaySample]
    update_priorities: Callable[[ReplayState, ArrayLike, ArrayLike], ReplayState]
    size: Callable[[ReplayState], jax.Array]
    can_sample: Callable[[ReplayState], jax.Array]
    capacity: int
    batch_size: int


def _loose(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Runs a flashbax function under the promotion rules it was written for."""

    def wrapped(*args):
        with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
            return fn(*args)

    return wrapped


def prioritized_replay(
    capacity: int = 10_000,
    batch_size: int = 32,
    *,
    alpha: float = 0.6,
    beta: float = 0.4,
    min_size: int = 1,
    min_priority: float = 1e-6,
) -> PrioritizedReplay:
    """Builds a prioritized replay buffer of fixed capacity.

    Item ``i`` with priority ``p_i`` is drawn with probability
    ``P(i) = p_i^alpha / sum_k p_k^alpha`` (stratified over the sum tree: the
    batch takes one draw from each of ``batch_size`` equal slices of the total
    mass, which has the same marginal frequencies with less variance). Its
    importance weight ``w_i = (N P(i))^-beta``, divided by the batch maximum,
    corrects the bias of non-uniform sampling; anneal ``beta`` towards 1 by
    passing it to ``sample``.

    Every function is pure and jit-able; ``add`` and ``update_priorities`` may be
    jitted with the state donated.

    Args:
      capacity: maximum number of items, ``>= 1`` (default 10,000).
      batch_size: items per ``sample``, ``>= 1``.
      alpha: priority exponent in ``[0, 1]`` (0 is uniform sampling).
      beta: default importance-weight exponent in ``[0, 1]``.
      min_size: items needed before ``can_sample`` is true, in ``1..capacity``.
      min_priority: floor for priorities; non-finite or smaller priorities are
        replaced by it, so every stored item stays sampleable.

    Returns:
      A :class:`PrioritizedReplay`.

    References:
      Schaul et al., `Prioritized Experience Replay
      <https://arxiv.org/abs/1511.05952>`_, ICLR 2016; Toledo et al., `Flashbax:
      Streamlining Experience Replay Buffers for Reinforcement Learning with JAX
      <https://arxiv.org/abs/2310.20047>`_, 2023.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> replay = prioritized_replay(capacity=100, batch_size=4)
      >>> state = replay.init({"x": jnp.zeros(3)})
      >>> state = replay.add(state, {"x": jnp.ones((5, 3))})
      >>> batch = replay.sample(state, key=jax.random.key(0))
      >>> batch.experience["x"].shape
      (4, 3)
    """
    for name, value, lo in (
        ("capacity", capacity, 1),
        ("batch_size", batch_size, 1),
        ("min_size", min_size, 1),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    if batch_size > capacity:
        raise ValueError(f"batch_size must be <= capacity={capacity}, got {batch_size}")
    if min_size > capacity:
        raise ValueError(f"min_size must be <= capacity={capacity}, got {min_size}")
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if not (isinstance(min_priority, int | float) and min_priority > 0.0):
        raise ValueError(f"min_priority must be a number > 0, got {min_priority!r}")

    buffer = fbx.make_prioritised_item_buffer(
        max_length=capacity,
        min_length=min_size,
        sample_batch_size=batch_size,
        add_batches=True,
        priority_exponent=float(alpha),
        device="cpu",
    )
    default_beta = float(beta)

    def init(example: Experience) -> ReplayState:
        example = jax.tree.map(jnp.asarray, example)
        return _loose(buffer.init)(example)

    def add(state: ReplayState, batch: Experience) -> ReplayState:
        leaves = jax.tree.leaves(batch)
        sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
        if len(sizes) != 1 or None in sizes:
            raise ValueError(
                "batch leaves must share a leading axis of items, got leading "
                f"sizes {sorted(map(str, sizes))}"
            )
        (n,) = sizes
        if n > capacity:
            # Only the newest `capacity` items would survive the add anyway.
            batch = jax.tree.map(lambda x: x[n - capacity :], batch)
        return _loose(buffer.add)(state, batch)

    def size(state: ReplayState) -> jax.Array:
        return jnp.where(
            state.is_full,
            jnp.asarray(capacity, jnp.int32),
            state.current_index.astype(jnp.int32),
        )

    def can_sample(state: ReplayState) -> jax.Array:
        return _loose(buffer.can_sample)(state)

    def sample(
        state: ReplayState, *, key: jax.Array, beta: ArrayLike | None = None
    ) -> ReplaySample:
        drawn = _loose(buffer.sample)(state, key)
        b = jnp.asarray(default_beta if beta is None else beta, jnp.float32)
        probs = drawn.probabilities.astype(jnp.float32)
        n = jnp.maximum(size(state), 1).astype(jnp.float32)
        # Double-where guard: a zero probability (empty buffer) must not make log
        # produce -inf and then NaN weights.
        safe = jnp.where(probs > 0, probs, jnp.ones_like(probs))
        log_w = -b * (jnp.log(n) + jnp.log(safe))
        log_w = jnp.where(probs > 0, log_w, jnp.full_like(log_w, -jnp.inf))
        weights = jnp.exp(log_w - jnp.max(log_w))
        weights = jnp.where(probs > 0, weights, jnp.zeros_like(weights))
        return ReplaySample(
            experience=drawn.experience,
            indices=drawn.indices.astype(jnp.int32),
            probabilities=probs,
            weights=weights,
        )

    def update_priorities(
        state: ReplayState, indices: ArrayLike, priorities: ArrayLike
    ) -> ReplayState:
        indices = jnp.asarray(indices, jnp.int32)
        p = jnp.asarray(priorities, jnp.float32)
        if indices.ndim != 1 or p.shape != indices.shape:
            raise ValueError(
                "indices and priorities must be matching 1-D arrays, got shapes "
                f"{indices.shape} and {p.shape}"
            )
        floor = jnp.asarray(min_priority, jnp.float32)
        p = jnp.where(jnp.isfinite(p) & (p > floor), p, floor)
        return _loose(buffer.set_priorities)(state, indices, p)

    return PrioritizedReplay(
        init=init,
        add=add,
        sample=sample,
        update_priorities=update_priorities,
        size=size,
        can_sample=can_sample,
        capacity=capacity,
        batch_size=batch_size,
    )
