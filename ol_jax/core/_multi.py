"""Many independent networks in one pytree, updated by one vmapped step.

``N`` states of the same structure (per-user glyph policies, per-user adapters)
are stacked leaf by leaf into one :class:`OnlineState` whose every leaf has a
leading network axis. :func:`make_multi_step` vmaps the single-network step of
:func:`make_step` over that axis and keeps the networks without feedback exactly
as they were, so one compiled call serves any subset of networks.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ol_jax.core._state import OnlineState
from ol_jax.core._step import make_step

MultiStepFn = Callable[..., tuple[OnlineState, dict[str, Any]]]


def stack_states(states: Sequence[OnlineState]) -> OnlineState:
    """Stacks ``N`` states of one structure into one state with a network axis.

    Every leaf ``x_i`` of shape ``s`` becomes ``X = [x_0, ..., x_{N-1}]`` of shape
    ``[N, *s]`` (PRNG keys included), so ``unstack_state(X, i) == x_i``.

    Args:
      states: one or more states with identical tree structure, leaf shapes and
        dtypes.

    Returns:
      The stacked :class:`OnlineState`.

    Raises:
      ValueError: no states, or states that differ in structure, shape or dtype.

    Examples:
      >>> import jax, optax
      >>> from ol_jax.core import init_state, stack_states
      >>> tx = optax.sgd(0.1)
      >>> states = [init_state({"w": jax.numpy.zeros(3)}, tx, key=jax.random.key(i))
      ...           for i in range(4)]
      >>> stack_states(states).params["w"].shape
      (4, 3)
    """
    states = list(states)
    if not states:
        raise ValueError("states must hold at least one state, got 0")
    first = jax.tree.structure(states[0])
    shapes = [(jnp.shape(x), jnp.result_type(x)) for x in jax.tree.leaves(states[0])]
    for i, s in enumerate(states[1:], start=1):
        if jax.tree.structure(s) != first:
            raise ValueError(
                f"states[{i}] has tree structure {jax.tree.structure(s)}, "
                f"expected {first} (that of states[0])"
            )
        got = [(jnp.shape(x), jnp.result_type(x)) for x in jax.tree.leaves(s)]
        if got != shapes:
            raise ValueError(
                f"states[{i}] has leaf shapes/dtypes {got}, expected {shapes}"
            )
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def unstack_state(stacked: OnlineState, i: int) -> OnlineState:
    """The state of network ``i`` in a stacked state: every leaf ``X -> X[i]``.

    Args:
      stacked: a state from :func:`stack_states` (or a multi step).
      i: the network index, ``0 <= i < N``.

    Returns:
      Network ``i``'s :class:`OnlineState`.

    Raises:
      ValueError: ``i`` out of range.
    """
    n = num_networks(stacked)
    if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n:
        raise ValueError(f"i must be an int in 0..{n - 1}, got {i!r}")
    return jax.tree.map(lambda x: x[i], stacked)


def num_networks(stacked: OnlineState) -> int:
    """``N``, the size of the leading network axis of a stacked state."""
    return int(jnp.shape(stacked.step)[0]) if jnp.ndim(stacked.step) else 0


def _select(mask: jax.Array, new: Any, old: Any) -> Any:
    """Per network ``n``: ``new[n]`` where ``mask[n]`` else ``old[n]``, leaf by leaf.

    The mask is reshaped to each leaf's rank (``[N, 1, ..., 1]``) rather than
    broadcast implicitly, and PRNG keys are selected through their raw data.
    """

    def pick(a, b):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            impl = jax.random.key_impl(a)
            data = pick(jax.random.key_data(a), jax.random.key_data(b))
            return jax.random.wrap_key_data(data, impl=impl)
        m = jnp.reshape(mask, mask.shape + (1,) * (a.ndim - 1))
        return jnp.where(m, a, b)

    return jax.tree.map(pick, new, old)


def make_multi_step(
    loss_fn: Callable[..., Any],
    tx: optax.GradientTransformation,
    *,
    jit: bool = True,
    donate: bool = False,
    chunk_size: int | None = None,
    **make_step_kwargs: Any,
) -> MultiStepFn:
    """Builds ``multi_step(stacked_state, batch, mask, frozen=None)`` for N networks.

    With ``step`` the single-network update of :func:`make_step` and ``m`` the
    feedback mask, network ``n`` moves to

    ``S'_n = step(S_n, B_n; F)  if m_n  else  S_n``

    for every leaf of its state (parameters, optimizer state, step counter, key,
    extras), where ``F`` are frozen weights shared by all networks. The step is
    vmapped over the network axis and the choice is an elementwise select on the
    whole per-network state, so networks without feedback come out bit-identical
    and a new mask never triggers a recompilation (the mask is an array, not a
    static argument). Each network folds its own key with its own step counter,
    so ``multi_step`` on a stack equals ``step`` on each network separately.

    Args:
      loss_fn: ``loss_fn(params, batch, *, frozen, extras, key)`` for ONE network
        and ONE unbatched feedback batch, as for :func:`make_step`.
      tx: the update rule, the same for every network (per-network learning rates
        can live in an ``inject_hyperparams`` state, which is stacked too).
      jit: compile with ``jax.jit``.
      donate: donate the stacked state's buffers (then the caller must not reuse
        the old stacked state).
      chunk_size: if given, the networks are updated ``chunk_size`` at a time
        (vmapped within a chunk, ``jax.lax.map`` across chunks), so the
        activations of a big network axis stay in cache instead of all ``N``
        networks' at once. Same result, one compiled call.
      **make_step_kwargs: ``has_aux`` and ``extras_update``, passed on to
        :func:`make_step`.

    Returns:
      ``multi_step(stacked_state, batch, mask, frozen=None) -> (state, metrics)``:
      ``batch`` has a leading network axis ``N`` on every leaf, ``mask`` is
      ``bool[N]``; the metrics are per network (leading axis ``N``), those of
      masked-off networks computed but not applied.

    Raises:
      ValueError: a keyword other than ``has_aux`` / ``extras_update``.

    References:
      Bradbury et al., `JAX: composable transformations of Python+NumPy programs
      <http://github.com/jax-ml/jax>`_, 2018 (``vmap``).
    """
    if chunk_size is not None and (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, int)
        or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be an int >= 1 or None, got {chunk_size!r}")
    unknown = set(make_step_kwargs) - {"has_aux", "extras_update"}
    if unknown:
        raise ValueError(
            f"make_multi_step takes has_aux and extras_update, got {sorted(unknown)}"
        )
    step = make_step(loss_fn, tx, jit=False, donate=False, **make_step_kwargs)
    vstep = jax.vmap(step, in_axes=(0, 0, None))

    def multi_step(stacked: OnlineState, batch: Any, mask: Any, frozen: Any = None):
        mask = jnp.asarray(mask)
        n = stacked.step.shape[0]
        if mask.shape != (n,) or mask.dtype != jnp.bool_:
            raise ValueError(
                f"mask must be bool[{n}] (one flag per network), got "
                f"{mask.dtype}{list(mask.shape)}"
            )
        if chunk_size is None or chunk_size >= n:
            new, metrics = vstep(stacked, batch, frozen)
        else:
            new, metrics = jax.lax.map(
                lambda sb: step(sb[0], sb[1], frozen),
                (stacked, batch),
                batch_size=chunk_size,
            )
        return _select(mask, new, stacked), metrics

    if not jit:
        return multi_step
    return jax.jit(multi_step, donate_argnums=(0,) if donate else ())
