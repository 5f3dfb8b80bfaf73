"""One step for a batch of feedback rows, each addressed to one of N networks.

A batch of turns from different users (row ``b`` for network ``id_b``) updates
each user's network from its own rows only. The forward and backward passes run
on the ``B`` rows alone, each row with its own network's parameters gathered
from the stack, so a batch of 16 turns over 1,000 adapters costs 16 rows of
compute, not 1,000. Frozen weights (a shared base LLM) are passed beside the
stack once; under ``vmap`` the rows' products with them batch into one matrix
multiply. The per-network update rule is then applied by :func:`make_multi_step`,
so networks without rows come out bit-identical.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ol_jax.core._multi import make_multi_step, num_networks
from ol_jax.core._state import OnlineState

AddressedStepFn = Callable[..., tuple[OnlineState, dict[str, Any]]]


@jax.custom_vjp
def _given_gradient(params: Any, grads: Any, loss: jax.Array) -> jax.Array:
    """``loss``, with ``d loss / d params = grads`` exactly (a linear surrogate)."""
    del params, grads
    return loss


def _given_gradient_fwd(params, grads, loss):
    del params
    return loss, grads


def _given_gradient_bwd(grads, cotangent):
    d_params = jax.tree.map(lambda g: (cotangent * g).astype(g.dtype), grads)
    return d_params, jax.tree.map(jnp.zeros_like, grads), cotangent


_given_gradient.defvjp(_given_gradient_fwd, _given_gradient_bwd)


def _apply_given_gradient(params, batch, *, frozen, extras, key):
    del frozen, extras, key
    return _given_gradient(params, batch["grads"], batch["loss"])


def _rank_within_network(ids: jax.Array) -> jax.Array:
    """``r_b = #{b' < b : id_b' = id_b}``, the row's place among its network's rows."""
    same = ids[:, None] == ids[None, :]
    before = jnp.arange(ids.shape[0])[None, :] < jnp.arange(ids.shape[0])[:, None]
    return jnp.sum((same & before).astype(jnp.int32), axis=1)


def make_addressed_step(
    loss_fn: Callable[..., Any],
    tx: optax.GradientTransformation,
    *,
    has_aux: bool = False,
    jit: bool = True,
    donate: bool = False,
    chunk_size: int | None = None,
) -> AddressedStepFn:
    """Builds ``step(stacked, rows, network_ids, frozen=None)`` for addressed rows.

    Row ``b`` of the batch belongs to network ``id_b`` (``-1``: a padding row that
    belongs to none). Network ``n`` with rows ``R_n = {b : id_b = n}`` moves by

    ``g_n = (1 / |R_n|) sum_{b in R_n} grad_theta loss_fn(theta_n, row_b)``,
    ``S'_n = step(S_n, g_n)  if |R_n| > 0  else  S_n``,

    where ``step`` applies ``tx`` exactly as :func:`make_step` does (finite check,
    metrics, step counter), so a network's update equals :func:`make_step` on the
    loss ``mean_{b in R_n} loss_fn(theta_n, row_b)``; with one row per network it
    is the single-network step on that row. Networks without rows are left
    bit-identical, and since ``network_ids`` is an array, a new addressing does
    not recompile. The key of row ``b`` is ``fold_in(fold_in(k_n, t_n), r_b)``
    with ``k_n``, ``t_n`` its network's root key and step and ``r_b`` the row's
    rank among that network's rows in the batch.

    Args:
      loss_fn: ``loss_fn(params, row, *, frozen, extras, key)`` for ONE network
        and ONE unbatched row (one turn), as for :func:`make_step`; it sees its
        network's ``extras``.
      tx: the update rule of every network.
      has_aux: ``loss_fn`` returns ``(loss, aux)``; ``aux`` comes back per row
        under ``metrics["aux"]`` (leading axis ``B``).
      jit: compile with ``jax.jit``.
      donate: donate the stacked state's buffers.
      chunk_size: if given, the rows' gradients are computed ``chunk_size`` rows
        at a time (vmapped within a chunk, ``jax.lax.map`` across chunks), so a
        big batch's activations need not all be live at once. Same result.

    Returns:
      ``step(stacked, rows, network_ids, frozen=None) -> (stacked, metrics)``:
      ``stacked`` from :func:`stack_states` (``N`` networks), ``rows`` a pytree
      whose leaves have a leading row axis ``B``, ``network_ids`` ``int[B]`` in
      ``-1 .. N-1``. Metrics are per network (leading axis ``N``) as in
      :func:`make_multi_step`, with ``loss`` the mean loss of the network's rows
      (0 without rows) and ``rows`` the number of rows, plus ``aux`` per row.

    Raises:
      ValueError: (when called) ``network_ids`` that is not ``int[B]`` or, when
        it is concrete, holds an id outside ``-1 .. N-1``.

    References:
      Hu et al., `LoRA: Low-Rank Adaptation of Large Language Models
      <https://arxiv.org/abs/2106.09685>`_, 2021 (many small adapters over one
      frozen base); Bradbury et al., `JAX: composable transformations of
      Python+NumPy programs <http://github.com/jax-ml/jax>`_, 2018 (``vmap``).
    """
    if chunk_size is not None and (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, int)
        or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be an int >= 1 or None, got {chunk_size!r}")
    apply_update = make_multi_step(_apply_given_gradient, tx, jit=False)

    def row_grad(params, row, extras, key, frozen):
        def objective(p):
            return loss_fn(p, row, frozen=frozen, extras=extras, key=key)

        if has_aux:
            (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(params)
        else:
            (loss, grads), aux = jax.value_and_grad(objective)(params), {}
        return loss, grads, aux

    def step(stacked: OnlineState, rows: Any, network_ids: Any, frozen: Any = None):
        n = stacked.step.shape[0]
        ids = jnp.asarray(network_ids)
        if ids.ndim != 1 or not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(
                f"network_ids must be int[B], got {ids.dtype}{list(ids.shape)}"
            )
        ids = ids.astype(jnp.int32)
        present = ids >= 0
        safe = jnp.where(present, ids, 0)
        take = lambda tree: jax.tree.map(lambda x: x[safe], tree)
        step_keys = jax.vmap(jax.random.fold_in)(stacked.key, stacked.step)
        keys = jax.vmap(jax.random.fold_in)(step_keys[safe], _rank_within_network(ids))
        per_row = (take(stacked.params), rows, take(stacked.extras), keys)
        if chunk_size is None or chunk_size >= ids.shape[0]:
            losses, grads, aux = jax.vmap(row_grad, in_axes=(0, 0, 0, 0, None))(
                *per_row, frozen
            )
        else:
            losses, grads, aux = jax.lax.map(
                lambda r: row_grad(*r, frozen), per_row, batch_size=chunk_size
            )
        # Padding rows go to segment -1, which segment_sum drops.
        seg = jnp.where(present, ids, -1)
        count = jax.ops.segment_sum(present.astype(jnp.float32), seg, n)
        denom = jnp.maximum(count, jnp.float32(1.0))

        def mean(x):
            total = jax.ops.segment_sum(x, seg, n)
            return total / denom.reshape((n,) + (1,) * (x.ndim - 1)).astype(x.dtype)

        batch = {
            "grads": jax.tree.map(mean, grads),
            "loss": mean(losses.astype(jnp.float32)),
        }
        new, metrics = apply_update(stacked, batch, count > 0)
        metrics["rows"] = count.astype(jnp.int32)
        if has_aux:
            metrics["aux"] = aux
        return new, metrics

    compiled = jax.jit(step, donate_argnums=(0,) if donate else ()) if jit else step

    def addressed_step(
        stacked: OnlineState, rows: Any, network_ids: Any, frozen: Any = None
    ):
        # Values are checked where they are on this host: not under an outer jit,
        # nor for a global array spread over other processes.
        ids = network_ids
        if isinstance(ids, jax.core.Tracer) or (
            isinstance(ids, jax.Array) and not ids.is_fully_addressable
        ):
            ids = None
        else:
            ids = np.asarray(ids)
        n = num_networks(stacked)
        if ids is not None and ids.size and (ids.min() < -1 or ids.max() >= n):
            raise ValueError(f"network_ids must lie in -1..{n - 1}, got {ids.tolist()}")
        return compiled(stacked, rows, network_ids, frozen)

    return addressed_step
