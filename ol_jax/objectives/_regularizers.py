"""Penalties that keep online updates close to consolidated weights.

EWC weighs each parameter's distance from its anchor by the diagonal Fisher
information (how much the old data cares about it); the proximal term of FedProx
weighs every parameter alike. ``fisher_diagonal`` estimates the Fisher from
examples, ``online_fisher`` folds a new estimate into a running one.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ol_jax.objectives._utils import (
    check_in_range,
    check_same_structure,
    compute_dtype,
    float_dtype,
    tree_dtype,
)

Params = Any


def _tree_sum(
    fn: Callable[..., jax.Array], *trees: Params
) -> tuple[jax.Array, np.dtype]:
    """Sums ``fn`` over matching leaves, accumulating in at least float32.

    Returns the sum and the dtype the caller should cast its result to.
    """
    out_dtype = tree_dtype(trees[0])
    acc_dtype = compute_dtype(out_dtype)

    def leaf(*xs):
        if len({jnp.shape(x) for x in xs}) != 1:
            raise ValueError(
                f"matching leaves must share a shape, got {[jnp.shape(x) for x in xs]}"
            )
        return jnp.sum(fn(*xs, acc_dtype)).astype(acc_dtype)

    parts = jax.tree.leaves(jax.tree.map(leaf, *trees))
    total = jnp.zeros((), acc_dtype)
    for part in parts:
        total = total + part
    return total, out_dtype


def ewc_penalty(
    params: Params, anchor: Params, fisher: Params, lam: ArrayLike
) -> jax.Array:
    """Elastic weight consolidation: ``lam/2 * sum_i F_i (theta_i - theta*_i)^2``.

    Each weight is tied to its anchor value ``theta*`` (the consolidated
    weights) by a spring whose stiffness is its diagonal Fisher information
    ``F_i``: weights that mattered to past data move little, the rest stay free.

    Args:
      params: current parameters ``theta`` (any pytree).
      anchor: anchor parameters ``theta*``, same structure and shapes.
      fisher: diagonal Fisher ``F >= 0``, same structure and shapes.
      lam: scalar strength ``lambda >= 0``.

    Returns:
      A scalar, accumulated in float32 (or wider) and returned in the params'
      common float dtype (float32 if the leaves' dtypes differ). 0 at the anchor,
      quadratic in the distance from it.

    References:
      Kirkpatrick et al., `Overcoming catastrophic forgetting in neural networks
      <https://arxiv.org/abs/1612.00796>`_, PNAS 2017.
    """
    check_same_structure(params=params, anchor=anchor, fisher=fisher)
    if jnp.ndim(lam) != 0:
        raise ValueError(f"lam must be a scalar, got shape {jnp.shape(lam)}")

    def leaf(p, a, f, dtype):
        d = jnp.asarray(p).astype(dtype) - jnp.asarray(a).astype(dtype)
        return jnp.asarray(f).astype(dtype) * d * d

    total, out_dtype = _tree_sum(leaf, params, anchor, fisher)
    lam = jnp.asarray(lam).astype(total.dtype)
    return (0.5 * lam * total).astype(out_dtype)


def proximal_penalty(params: Params, anchor: Params, mu: ArrayLike) -> jax.Array:
    """FedProx proximal term: ``mu/2 * ||theta - theta*||^2``.

    EWC with every Fisher entry equal to 1: a plain pull towards the anchor.

    Args:
      params: current parameters ``theta`` (any pytree).
      anchor: anchor parameters ``theta*``, same structure and shapes.
      mu: scalar strength ``mu >= 0``.

    Returns:
      A scalar in the params' common float dtype (float32 if they differ).

    References:
      Li et al., `Federated optimization in heterogeneous networks
      <https://arxiv.org/abs/1812.06127>`_, MLSys 2020.
    """
    check_same_structure(params=params, anchor=anchor)
    if jnp.ndim(mu) != 0:
        raise ValueError(f"mu must be a scalar, got shape {jnp.shape(mu)}")

    def leaf(p, a, dtype):
        d = jnp.asarray(p).astype(dtype) - jnp.asarray(a).astype(dtype)
        return d * d

    total, out_dtype = _tree_sum(leaf, params, anchor)
    mu = jnp.asarray(mu).astype(total.dtype)
    return (0.5 * mu * total).astype(out_dtype)


def fisher_diagonal(
    loss_fn: Callable[[Params, Any], ArrayLike],
    params: Params,
    examples: Any,
    *,
    batch_size: int | None = None,
) -> Params:
    """Empirical diagonal Fisher: ``F = 1/N sum_n (grad_theta loss(theta, x_n))^2``.

    The per-example gradients come from ``jax.vmap(jax.grad(loss_fn))``. With
    ``loss_fn`` the negative log-likelihood of each example's observed label this
    is the empirical Fisher used by EWC. ``batch_size`` bounds memory for large
    models: examples are then processed ``batch_size`` at a time
    (``jax.lax.map``), which gives the same result.

    Args:
      loss_fn: ``loss_fn(params, example) -> scalar`` for one unbatched example.
      params: the parameters to differentiate (any pytree of float arrays).
      examples: a pytree whose leaves share a leading axis of ``N >= 1`` examples.
      batch_size: optional number of examples per vectorised chunk.

    Returns:
      A pytree like ``params`` (same shapes and dtypes) of non-negative entries.

    References:
      Kirkpatrick et al., `Overcoming catastrophic forgetting in neural networks
      <https://arxiv.org/abs/1612.00796>`_, PNAS 2017; Martens, `New insights and
      perspectives on the natural gradient method
      <https://arxiv.org/abs/1412.1193>`_, JMLR 2020 (empirical Fisher).
    """
    sizes = {
        jnp.shape(x)[0] if jnp.ndim(x) else None for x in jax.tree.leaves(examples)
    }
    if len(sizes) != 1 or None in sizes or 0 in sizes:
        raise ValueError(
            "examples must be a non-empty pytree whose leaves share a leading "
            f"axis of N >= 1 examples, got leading sizes {sorted(map(str, sizes))}"
        )
    if batch_size is not None and not (isinstance(batch_size, int) and batch_size > 0):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    (n,) = sizes

    def squared_grad(example):
        g = jax.grad(loss_fn)(params, example)
        return jax.tree.map(lambda x: jnp.square(x.astype(compute_dtype(x.dtype))), g)

    if batch_size is None:
        sq = jax.vmap(squared_grad)(examples)
    else:
        sq = jax.lax.map(squared_grad, examples, batch_size=batch_size)
    return jax.tree.map(
        lambda s, p: (jnp.sum(s, axis=0) / n).astype(float_dtype(p)), sq, params
    )


def online_fisher(fisher: Params, new_fisher: Params, decay: ArrayLike) -> Params:
    """Running Fisher: ``F <- decay * F + (1 - decay) * F_new``, leaf by leaf.

    Online EWC keeps one Fisher for all the data seen so far instead of one per
    task; ``decay`` (``gamma`` in the paper) sets how fast old importance fades.

    Args:
      fisher: the running diagonal Fisher (any pytree).
      new_fisher: a fresh estimate, same structure and shapes.
      decay: in [0, 1].

    Returns:
      A pytree like ``fisher``, in its dtypes.

    References:
      Schwarz et al., `Progress & compress: a scalable framework for continual
      learning <https://arxiv.org/abs/1805.06370>`_, ICML 2018.
    """
    check_same_structure(fisher=fisher, new_fisher=new_fisher)
    check_in_range("decay", decay, 0.0, 1.0)

    def leaf(f, g):
        dtype = compute_dtype(float_dtype(f))
        d = jnp.asarray(decay).astype(dtype)
        mixed = d * jnp.asarray(f).astype(dtype) + (1.0 - d) * jnp.asarray(g).astype(
            dtype
        )
        return mixed.astype(float_dtype(f))

    return jax.tree.map(leaf, fisher, new_fisher)
