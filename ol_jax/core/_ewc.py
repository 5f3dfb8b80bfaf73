"""Elastic weight consolidation as an optax transform, with a streaming Fisher.

``ewc`` keeps the anchor weights and a running diagonal Fisher in its state and
adds the EWC pull ``lam * F * (theta - theta*)`` to every gradient, so any optax
chain gains EWC by prepending it. The core may not import ``ol_jax.objectives``,
so the penalty's gradient is written out here; ``ol_jax.objectives.ewc_penalty``
is the matching loss term.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

Params = Any


class EwcState(NamedTuple):
    """State of :func:`ewc`.

    Attributes:
      anchor: the consolidated weights ``theta*`` the penalty pulls towards.
      fisher: the running diagonal Fisher ``F``, one entry per weight.
      count: number of Fisher updates so far (int32, saturating).
    """

    anchor: Params
    fisher: Params
    count: jax.Array


def _check_unit(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def _copy(x: jax.Array) -> jax.Array:
    # A separate buffer: the anchor must survive when a step donates params.
    return jnp.array(x, copy=True)


def ewc(
    lam: float, fisher_decay: float, *, fisher_init: Params | None = None
) -> optax.GradientTransformation:
    """Adds the online-EWC gradient to the updates, tracking the Fisher as it goes.

    On each update with gradient ``g``:

    ``F <- decay * F + (1 - decay) * g^2`` (a streaming estimate of the
    diagonal empirical Fisher), then ``u = g + lam * F * (theta - theta*)``,
    the gradient of ``loss + lam/2 * sum F (theta - theta*)^2`` with the new
    ``F``. ``init`` stores the params as the anchor ``theta*``; move it with
    :func:`ewc_set_anchor` when the weights are consolidated (e.g. after a
    canary check passes). Place this transform first in a chain, where it sees
    the raw task gradient, before clipping and the learning rate.

    Args:
      lam: EWC strength ``lambda >= 0``.
      fisher_decay: in [0, 1]; the Fisher's EMA decay (``gamma`` in online EWC).
      fisher_init: optional starting Fisher with the params' structure, e.g. from
        ``ol_jax.objectives.fisher_diagonal`` on warm-up data; zeros otherwise.

    Returns:
      An ``optax.GradientTransformation`` whose ``update`` needs ``params``.

    References:
      Kirkpatrick et al., `Overcoming catastrophic forgetting in neural networks
      <https://arxiv.org/abs/1612.00796>`_, PNAS 2017; Schwarz et al., `Progress &
      compress: a scalable framework for continual learning
      <https://arxiv.org/abs/1805.06370>`_, ICML 2018.

    Examples:
      >>> import jax.numpy as jnp, optax
      >>> tx = optax.chain(ewc(lam=10.0, fisher_decay=0.99), optax.sgd(1e-2))
      >>> params = {"w": jnp.zeros(3)}
      >>> opt_state = tx.init(params)
      >>> grads = {"w": jnp.ones(3)}
      >>> updates, opt_state = tx.update(grads, opt_state, params)
    """
    if not (isinstance(lam, int | float) and 0.0 <= lam < float("inf")):
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    _check_unit("fisher_decay", fisher_decay)

    def init(params):
        anchor = jax.tree.map(_copy, params)
        if fisher_init is None:
            fisher = jax.tree.map(jnp.zeros_like, params)
        else:
            if jax.tree.structure(fisher_init) != jax.tree.structure(params):
                raise ValueError(
                    "fisher_init must have the structure of params: expected "
                    f"{jax.tree.structure(params)}, "
                    f"got {jax.tree.structure(fisher_init)}"
                )

            def cast(f, p):
                if jnp.shape(f) != jnp.shape(p):
                    raise ValueError(
                        f"fisher_init leaf must have shape {jnp.shape(p)}, "
                        f"got {jnp.shape(f)}"
                    )
                return _copy(jnp.asarray(f).astype(jnp.result_type(p)))

            fisher = jax.tree.map(cast, fisher_init, params)
        return EwcState(anchor=anchor, fisher=fisher, count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("ewc needs params; pass params to tx.update")

        def new_fisher(f, g):
            g = g.astype(f.dtype)
            return fisher_decay * f + (1.0 - fisher_decay) * g * g

        fisher = jax.tree.map(new_fisher, state.fisher, updates)

        def pull(g, f, p, a):
            u = g.astype(f.dtype) + lam * f * (p.astype(f.dtype) - a.astype(f.dtype))
            return u.astype(g.dtype)

        updates = jax.tree.map(pull, updates, fisher, params, state.anchor)
        count = optax.safe_increment(state.count)
        return updates, EwcState(anchor=state.anchor, fisher=fisher, count=count)

    return optax.GradientTransformation(init, update)


def _is_ewc_state(x: Any) -> bool:
    return isinstance(x, EwcState)


def ewc_set_anchor(opt_state: Any, params: Params) -> Any:
    """Returns ``opt_state`` with every :class:`EwcState` anchored at ``params``.

    ``theta* <- params``; the Fisher and count are kept. ``opt_state`` may be a
    bare ``EwcState`` or a whole optax state (a chain, ``masked``,
    ``multi_transform``); leaves that a mask hid from ``ewc``
    (``optax.MaskedNode``) stay hidden. Pure: nothing is modified in place.

    Args:
      opt_state: an optimizer state containing at least one ``EwcState``.
      params: the new anchor, with the params' structure.

    Returns:
      The new optimizer state.

    Raises:
      ValueError: if ``opt_state`` holds no ``EwcState``.

    References:
      Kirkpatrick et al., `Overcoming catastrophic forgetting in neural networks
      <https://arxiv.org/abs/1612.00796>`_, PNAS 2017.
    """
    found = [x for x in jax.tree.leaves(opt_state, is_leaf=_is_ewc_state)]
    if not any(_is_ewc_state(x) for x in found):
        raise ValueError(
            f"opt_state holds no EwcState to re-anchor, got {type(opt_state).__name__}"
        )

    def is_anchor_leaf(x):
        return isinstance(x, optax.MaskedNode) or x is None

    def reanchor(node):
        if not _is_ewc_state(node):
            return node
        anchor = jax.tree.map(
            lambda a, p: (
                a
                if is_anchor_leaf(a)
                else _copy(jnp.asarray(p).astype(jnp.result_type(a)))
            ),
            node.anchor,
            params,
            is_leaf=is_anchor_leaf,
        )
        return node._replace(anchor=anchor)

    return jax.tree.map(reanchor, opt_state, is_leaf=_is_ewc_state)
