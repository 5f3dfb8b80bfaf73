"""Update rules for online learning, built from optax pieces wherever optax has one.

Only two transforms here are our own, because optax has no equivalent:
:func:`clamp_params` (keep every weight inside a box) and the path-based labelling
behind :func:`freeze_all_but`. Everything else is an optax chain assembled by
:func:`online_optimizer`, with the learning rate injected as state so that it can
change between steps without recompiling.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax import tree_utils as otu

# An update step keeps going forever on an online stream, so the non-finite guard
# must never "give up" and apply a poisoned update; optax's counter saturates at
# the int32 maximum, so this bound is never exceeded.
_NEVER_GIVE_UP = jnp.iinfo(jnp.int32).max


def path_str(path: Sequence[Any]) -> str:
    """Joins a pytree key path into a dotted name such as ``"decoder.3.kernel"``."""
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(k.name)
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.FlattenedIndexKey):
            parts.append(str(k.key))
        else:
            parts.append(str(getattr(k, "key", getattr(k, "name", k))))
    return ".".join(parts)


def _has_prefix(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def path_labels(params: Any, prefixes: Sequence[str], *, match: str, rest: str):
    """Labels every leaf ``match`` if its dotted path starts with one of ``prefixes``.

    A prefix matches whole path components only: ``"decoder.1"`` selects
    ``"decoder.1.kernel"`` but not ``"decoder.10.kernel"``.
    """
    return jax.tree_util.tree_map_with_path(
        lambda p, _: (
            match if any(_has_prefix(path_str(p), q) for q in prefixes) else rest
        ),
        params,
    )


def freeze_all_but(
    tx: optax.GradientTransformation, trainable: Sequence[str]
) -> optax.GradientTransformation:
    """Applies ``tx`` to the leaves under ``trainable`` paths and zeroes all others.

    This is ``optax.multi_transform`` with ``optax.set_to_zero`` for the frozen
    leaves, labelled by dotted path prefix (see :func:`path_str`), so the optimizer
    keeps no state for frozen leaves.

    Args:
      tx: the update rule for the trainable leaves.
      trainable: dotted path prefixes, e.g. ``["decoder.3", "decoder.4"]``.

    Returns:
      A gradient transformation over the whole parameter tree.
    """
    if isinstance(trainable, str) or not trainable:
        raise ValueError(
            f"trainable must be a non-empty list of path prefixes, got {trainable!r}"
        )
    prefixes = tuple(trainable)

    def labels(params):
        paths = [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
        unmatched = [q for q in prefixes if not any(_has_prefix(p, q) for p in paths)]
        if unmatched:
            # A prefix that selects nothing would silently train nothing.
            raise ValueError(
                f"trainable prefixes {unmatched} match no parameter; parameter "
                f"paths look like {paths[:6]}"
            )
        return path_labels(params, prefixes, match="trainable", rest="frozen")

    return optax.multi_transform(
        {"trainable": tx, "frozen": optax.set_to_zero()}, labels
    )


class ClampParamsState(NamedTuple):
    """``clamp_params`` is stateless."""


def clamp_params(lo: float, hi: float) -> optax.GradientTransformation:
    """Rewrites updates so that ``params + updates`` lies inside ``[lo, hi]``.

    ``u' = clip(theta + u, lo, hi) - theta``. Floating-point addition can round
    ``theta + u'`` one ulp past a bound, so ``u'`` is nudged one ulp inwards where
    that happens; the clamp therefore holds exactly after ``optax.apply_updates``.
    Place it last in a chain, after the learning rate is applied.

    Args:
      lo: lower bound for every weight.
      hi: upper bound for every weight, ``hi > lo``.

    Returns:
      A stateless gradient transformation that needs ``params``.
    """
    if not (lo < hi):
        raise ValueError(f"clamp bounds must satisfy lo < hi, got lo={lo}, hi={hi}")

    def init(params):
        del params
        return ClampParamsState()

    def _clamp_one(u, p):
        lo_ = jnp.asarray(lo, p.dtype)
        hi_ = jnp.asarray(hi, p.dtype)
        target = jnp.clip(p + u.astype(p.dtype), lo_, hi_)
        d = target - p
        # Two inward nudges cover the worst-case rounding of p + d.
        for _ in range(2):
            new = p + d
            d = jnp.where(
                new > hi_, jnp.nextafter(d, jnp.asarray(-jnp.inf, d.dtype)), d
            )
            d = jnp.where(new < lo_, jnp.nextafter(d, jnp.asarray(jnp.inf, d.dtype)), d)
        return d.astype(u.dtype)

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("clamp_params needs params; pass params to tx.update")
        return jax.tree.map(_clamp_one, updates, params), state

    return optax.GradientTransformation(init, update)


_OPTIMIZERS = ("adamw", "adam", "sgd")


def online_optimizer(
    learning_rate: float,
    *,
    optimizer: str = "adamw",
    clip_norm: float | None = 1.0,
    weight_decay: float = 0.0,
    clamp: tuple[float, float] | None = None,
    momentum: float | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    trainable: Sequence[str] | None = None,
    lr_scales: Mapping[str, float] | None = None,
    warmup_steps: int = 0,
) -> optax.GradientTransformation:
    """The update rule of an online learner, as one optax chain.

    ``clip_by_global_norm -> (adam | sgd[+momentum]) with weight decay ->
    scale by -learning_rate -> clamp_params``, wrapped in ``optax.inject_hyperparams``
    so the learning rate is state (change it with :func:`set_learning_rate`, no
    recompilation) and in ``optax.apply_if_finite`` so a non-finite gradient leaves
    the parameters and the optimizer state unchanged. For ``"adamw"`` the decay is
    decoupled (Loshchilov & Hutter, 2019); for ``"adam"`` and ``"sgd"`` it is an L2
    term added to the gradient.

    Args:
      learning_rate: the base step size, ``> 0``.
      optimizer: ``"adamw"``, ``"adam"`` or ``"sgd"``.
      clip_norm: global-norm clipping threshold, or ``None`` for none.
      weight_decay: decay / L2 coefficient, ``>= 0``.
      clamp: ``(lo, hi)`` bounds for every weight, or ``None``.
      momentum: SGD momentum, or ``None``.
      b1, b2, eps: Adam moments.
      trainable: if given, only leaves under these dotted path prefixes are updated
        (see :func:`freeze_all_but`).
      lr_scales: per-layer learning-rate multipliers, ``{path_prefix: scale}``: the
        leaves under a prefix take steps of ``scale * learning_rate``.
      warmup_steps: the step size ramps linearly from ``learning_rate / n`` to
        ``learning_rate`` over the first ``n`` updates. Adam's first steps move
        every coordinate by the full learning rate whatever the gradient's size,
        so a warm-up keeps the first few (sparse) ratings from overfitting.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    References:
      Kingma & Ba, `Adam: A Method for Stochastic Optimization
      <https://arxiv.org/abs/1412.6980>`_, 2015.
    """
    if optimizer not in _OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {_OPTIMIZERS}, got {optimizer!r}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be > 0 or None, got {clip_norm}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    for prefix, scale in (lr_scales or {}).items():
        if not scale > 0:
            raise ValueError(f"lr_scales[{prefix!r}] must be > 0, got {scale}")
    if clamp is not None:
        clamp_params(*clamp)  # validates the bounds now, not at the first update

    def chain(learning_rate):
        parts = []
        if clip_norm is not None:
            parts.append(optax.clip_by_global_norm(clip_norm))
        if optimizer == "sgd":
            if weight_decay:
                parts.append(optax.add_decayed_weights(weight_decay))
            if momentum:
                parts.append(optax.trace(decay=momentum))
        else:
            if optimizer == "adam" and weight_decay:
                parts.append(optax.add_decayed_weights(weight_decay))
            parts.append(optax.scale_by_adam(b1=b1, b2=b2, eps=eps))
            if optimizer == "adamw" and weight_decay:
                parts.append(optax.add_decayed_weights(weight_decay))
        for prefix, scale in (lr_scales or {}).items():
            parts.append(
                optax.masked(
                    optax.scale(scale),
                    lambda p, prefix=prefix: path_labels(
                        p, (prefix,), match=True, rest=False
                    ),
                )
            )
        if warmup_steps:
            parts.append(
                optax.scale_by_schedule(
                    optax.linear_schedule(1.0 / warmup_steps, 1.0, warmup_steps - 1)
                    if warmup_steps > 1
                    else optax.constant_schedule(1.0)
                )
            )
        parts.append(optax.scale_by_learning_rate(learning_rate))
        if clamp is not None:
            parts.append(clamp_params(*clamp))
        return optax.chain(*parts)

    tx = optax.inject_hyperparams(chain)(learning_rate=learning_rate)
    if trainable is not None:
        tx = freeze_all_but(tx, trainable)
    return optax.apply_if_finite(tx, max_consecutive_errors=int(_NEVER_GIVE_UP))


def get_learning_rate(opt_state: optax.OptState) -> jax.Array:
    """Reads the injected ``learning_rate`` from an optimizer state.

    Raises:
      ValueError: if the state holds no (or more than one) injected learning rate.
    """
    found = otu.tree_get_all_with_path(opt_state, "learning_rate")
    if len(found) != 1:
        raise ValueError(
            "expected exactly one injected learning_rate in the optimizer state "
            "(build tx with online_optimizer or optax.inject_hyperparams), "
            f"found {len(found)}"
        )
    return found[0][1]


def set_learning_rate(state, learning_rate: jax.typing.ArrayLike):
    """Returns ``state`` (an ``OnlineState`` or optax state) with a new learning rate.

    The learning rate is an array in the optimizer state, so a jitted step does not
    recompile when it changes.
    """
    lr = jnp.asarray(learning_rate, jnp.float32)
    if not bool(jnp.all(jnp.isfinite(lr))) or bool(jnp.any(lr < 0)):
        raise ValueError(f"learning_rate must be finite and >= 0, got {learning_rate}")
    if hasattr(state, "opt_state") and hasattr(state, "params"):
        old = get_learning_rate(state.opt_state)
        return state._replace(
            opt_state=otu.tree_set(state.opt_state, learning_rate=lr.astype(old.dtype))
        )
    old = get_learning_rate(state)
    return otu.tree_set(state, learning_rate=lr.astype(old.dtype))


DEFAULT_CONTEXT_MULTIPLIERS: Mapping[str, float] = {
    "regular": 1.0,
    "question": 2.0,
    "fact": 5.0,
    "replay": 0.5,
}


def context_lr_multiplier(
    context: str,
    *,
    multipliers: Mapping[str, float] = DEFAULT_CONTEXT_MULTIPLIERS,
    repetition: int = 0,
    repetition_boost: float = 0.0,
    min_multiplier: float = 0.1,
    max_multiplier: float = 10.0,
) -> float:
    """The learning-rate multiplier for a turn of the given context.

    ``m = clip(multipliers[context] * (1 + repetition_boost * repetition),
    min_multiplier, max_multiplier)``. Apply it with
    ``set_learning_rate(state, base_lr * m)``; the step is not recompiled.

    Args:
      context: a key of ``multipliers`` (by default regular 1x, question 2x, fact 5x,
        replay 0.5x, as in seed 001).
      multipliers: the table of multipliers.
      repetition: how many times this item was seen before (boosts facts).
      repetition_boost: relative boost per repetition.
      min_multiplier, max_multiplier: bounds on the result.

    Returns:
      The multiplier as a Python float.
    """
    if context not in multipliers:
        raise ValueError(
            f"context must be one of {sorted(multipliers)}, got {context!r}"
        )
    if repetition < 0:
        raise ValueError(f"repetition must be >= 0, got {repetition}")
    if not 0 < min_multiplier <= max_multiplier:
        raise ValueError(
            "need 0 < min_multiplier <= max_multiplier, got "
            f"{min_multiplier}, {max_multiplier}"
        )
    m = float(multipliers[context]) * (1.0 + repetition_boost * repetition)
    return min(max(m, min_multiplier), max_multiplier)


LossFn = Callable[..., Any]


def partition_params(params: Mapping[str, Any], prefixes: Sequence[str]):
    """Splits a nested dict of parameters by dotted path prefix.

    ``partition_params({"a": {"0": x, "1": y}}, ["a.1"]) == ({"a": {"1": y}},
    {"a": {"0": x}})``. The first part holds the leaves under ``prefixes`` (the
    trainable ones, say), the second the rest; :func:`merge_params` joins them
    again. Unlike :func:`freeze_all_but` the frozen part is then not a parameter
    at all: no gradient is computed for it and no optimizer state is kept.

    Raises:
      ValueError: a prefix selects nothing.
    """

    def split(tree, path):
        if not isinstance(tree, Mapping):
            name = ".".join(path)
            hit = any(_has_prefix(name, q) for q in prefixes)
            return (tree, None) if hit else (None, tree)
        picked, rest = {}, {}
        for k, v in tree.items():
            a, b = split(v, (*path, str(k)))
            if a is not None:
                picked[k] = a
            if b is not None:
                rest[k] = b
        return (picked or None), (rest or None)

    picked, rest = split(params, ())
    picked, rest = picked or {}, rest or {}
    flat = [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(picked)]
    for q in prefixes:
        if not any(_has_prefix(name, q) for name in flat):
            raise ValueError(f"path prefix {q!r} selects no parameter")
    return picked, rest


def merge_params(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Joins two disjoint nested dicts, the inverse of :func:`partition_params`."""
    out = dict(b)
    for k, v in a.items():
        if k in out:
            if not (isinstance(v, Mapping) and isinstance(out[k], Mapping)):
                raise ValueError(f"parameter {k!r} is in both trees")
            out[k] = merge_params(v, out[k])
        else:
            out[k] = v
    return out
