"""``make_step``: one pure, jit-compiled update from a loss and an update rule."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from optax import tree_utils as otu

from ol_jax.core._state import OnlineState

Metrics = dict[str, jax.Array]
StepFn = Callable[..., tuple[OnlineState, Metrics]]


def _injected_learning_rate(opt_state) -> jax.Array:
    found = otu.tree_get_all_with_path(opt_state, "learning_rate")
    if len(found) == 1:
        return jnp.asarray(found[0][1], jnp.float32)
    return jnp.full((), jnp.nan, jnp.float32)


def _poison_if_nonfinite(grads, loss):
    """``grads`` with a NaN added to its smallest leaf if ``loss`` is not finite.

    One NaN is enough for ``optax.apply_if_finite`` (and for :func:`_all_finite`)
    to see a non-finite gradient, and poisoning the smallest leaf costs a pass
    over a few elements instead of over every gradient.
    """
    leaves, treedef = jax.tree.flatten(grads)
    floats = [i for i, g in enumerate(leaves) if jnp.issubdtype(g.dtype, jnp.inexact)]
    if not floats:
        return grads
    i = min(floats, key=lambda j: leaves[j].size)
    g = leaves[i]
    leaves[i] = g + jnp.where(jnp.isfinite(loss), 0, jnp.nan).astype(g.dtype)
    return jax.tree.unflatten(treedef, leaves)


def _all_finite(tree) -> jax.Array:
    """Whether every element of every inexact leaf of ``tree`` is finite.

    ``sum(x * 0)`` is 0 for finite ``x`` and NaN as soon as one element is NaN or
    infinite, with no overflow; one summing pass is cheaper than ``isfinite`` and
    an ``all`` over booleans.
    """
    finite = [
        jnp.isfinite(jnp.sum(x * jnp.zeros((), x.dtype)))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    if not finite:
        return jnp.array(True)
    return jnp.all(jnp.stack(finite))


def make_step(
    loss_fn: Callable[..., Any],
    tx: optax.GradientTransformation,
    *,
    has_aux: bool = False,
    extras_update: Callable[[Any, Any, Any], Any] | None = None,
    jit: bool = True,
    donate: bool = True,
) -> StepFn:
    """Builds ``step(state, batch, frozen=None) -> (state, metrics)``.

    One call computes ``g = grad_theta loss_fn(theta, batch)``, turns it into updates
    with ``tx`` and applies them: ``theta' = theta + tx(g)``. The key of update ``t``
    is ``fold_in(state.key, t)``, so a run is reproducible from its root key.

    A non-finite loss poisons the gradients with a NaN (in their smallest leaf), so
    an update rule wrapped in ``optax.apply_if_finite`` (as :func:`online_optimizer`
    is) skips the update and leaves parameters and optimizer state unchanged;
    ``metrics["applied"]`` says so. A rule without that wrapper gets the NaN.

    The returned function is pure. With ``jit=False`` it can be wrapped by the
    caller, e.g. ``jax.jit(jax.vmap(step, in_axes=(0, 0, None)))`` to update many
    independent networks at once, or run under a ``jax.sharding.Mesh``.

    Args:
      loss_fn: ``loss_fn(params, batch, *, frozen, extras, key)`` returning a scalar
        loss, or ``(loss, aux)`` with ``has_aux=True`` (``aux`` a dict of arrays,
        reported under ``metrics["aux"]``).
      tx: the update rule.
      has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
      extras_update: optional ``extras_update(extras, batch, aux) -> extras``, run
        after the gradient, e.g. to move a reward baseline. It sees the extras of
        the step's start, so the loss uses the baseline from before this batch.
      jit: compile with ``jax.jit``.
      donate: donate the state buffers to the compiled step (the caller must not
        reuse the old state after the call).

    Returns:
      ``step(state, batch, frozen=None) -> (new_state, metrics)`` where metrics hold
      ``loss``, ``grad_norm`` (before clipping), ``update_norm``, ``param_norm``,
      ``applied`` (bool: the update was finite and applied) and ``learning_rate``
      (NaN when the rule has no injected learning rate).
    """

    def step(state: OnlineState, batch: Any, frozen: Any = None):
        key = jax.random.fold_in(state.key, state.step)

        def objective(params):
            return loss_fn(params, batch, frozen=frozen, extras=state.extras, key=key)

        if has_aux:
            (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(
                state.params
            )
        else:
            loss, grads = jax.value_and_grad(objective)(state.params)
            aux = {}
        grads = _poison_if_nonfinite(grads, loss)
        # optax's Adam bias correction mixes Python floats with an int32 count, which
        # strict dtype promotion rejects; our own code stays strict.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # Poisoned (non-finite) gradients mean the update was skipped or corrupt.
        applied = jnp.logical_and(_all_finite(grads), _all_finite(updates))
        extras = state.extras
        if extras_update is not None:
            # A skipped update leaves every part of the state but the step counter.
            extras = otu.tree_where(
                applied, extras_update(state.extras, batch, aux), state.extras
            )
        new_state = OnlineState(
            step=optax.safe_increment(state.step),
            params=params,
            opt_state=opt_state,
            key=state.key,
            extras=extras,
        )
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "update_norm": optax.tree.norm(updates),
            "param_norm": optax.tree.norm(params),
            "applied": applied,
            "learning_rate": _injected_learning_rate(opt_state),
        }
        if has_aux:
            metrics["aux"] = aux
        return new_state, metrics

    if not jit:
        return step
    return jax.jit(step, donate_argnums=(0,) if donate else ())
