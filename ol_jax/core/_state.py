"""The state of an online learner: every array that changes between updates."""

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

Params = Any
Extras = Mapping[str, Any]


class OnlineState(NamedTuple):
    """Everything that changes from one update to the next, as one pytree.

    Frozen weights (a base LLM, a frozen decoder) are passed to ``step`` beside the
    state and never copied into it, so the state stays small enough to checkpoint
    after every update and to stack over many networks.

    Attributes:
      step: number of steps taken so far, skipped ones included (``int32``).
      params: the trainable parameters.
      opt_state: the ``optax`` state of the update rule.
      key: the root PRNG key; the key of update ``t`` is ``fold_in(key, t)``.
      extras: named arrays that are neither parameters nor optimizer state, such as a
        reward baseline or an EWC anchor and Fisher. A dict, so it is a pytree.
    """

    step: jax.Array
    params: Params
    opt_state: optax.OptState
    key: jax.Array
    extras: Extras


def _is_prng_key(key: Any) -> bool:
    """A typed key array, or a legacy ``uint32[2]`` key (``jax.random.PRNGKey``)."""
    dtype = getattr(key, "dtype", None)
    if dtype is None:
        return False
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
        return True
    return dtype == jnp.uint32 and getattr(key, "shape", None) == (2,)


def init_state(
    params: Params,
    tx: optax.GradientTransformation,
    *,
    key: jax.Array,
    extras: Extras | None = None,
) -> OnlineState:
    """Builds the initial :class:`OnlineState` for ``params`` under ``tx``.

    Args:
      params: the trainable parameters.
      tx: the update rule, e.g. from :func:`online_optimizer`.
      key: a PRNG key (new-style ``jax.random.key`` or legacy ``uint32[2]``).
      extras: optional named arrays to carry in the state.

    Returns:
      The state at step 0.

    Raises:
      TypeError: ``key`` is not a PRNG key.
    """
    if not _is_prng_key(key):
        raise TypeError(
            "key must be a PRNG key (jax.random.key(seed) or "
            f"jax.random.PRNGKey(seed)), got {type(key).__name__} {key!r:.60}"
        )
    return OnlineState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        key=key,
        extras=dict(extras or {}),
    )
