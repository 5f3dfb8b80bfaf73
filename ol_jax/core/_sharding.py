"""Placing a step's inputs on a device mesh: FSDP frozen weights, data-parallel rows.

``make_step`` (and the multi-network steps) need no change to run on many devices:
``jax.jit`` compiles them for the shardings of their inputs (GSPMD). These helpers
only say where each array lives on a ``jax.sharding.Mesh`` with a ``data`` axis
(feedback rows split across it) and a ``model`` axis (frozen weights split across
it, FSDP-style, gathered by the compiler where a product needs them), and build
the global arrays. They work unchanged when the mesh spans several processes
started with ``jax.distributed.initialize``: every process then passes its own
rows and the same frozen weights and state.

References:
    Xu et al., `GSPMD: General and Scalable Parallelization for ML Computation
    Graphs <https://arxiv.org/abs/2105.04663>`_, 2021.
    Zhao et al., `PyTorch FSDP: Experiences on Scaling Fully Sharded Data Parallel
    <https://arxiv.org/abs/2304.11277>`_, 2023.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def device_mesh(data: int, model: int = 1, *, devices: Any = None) -> Mesh:
    """A ``data`` x ``model`` mesh whose shardings the compiler propagates itself.

    The axes are ``AxisType.Auto`` (``jax.make_mesh`` makes them ``Explicit`` by
    default, under which an unchanged step's gathers and products need explicit
    output shardings), so ``jax.jit`` of any step derives the placement of every
    intermediate from its inputs'. Devices are taken in ``jax.devices()`` order,
    which groups each process's devices, so with several processes the ``data``
    axis runs across processes first.

    Args:
      data: devices along ``data`` (feedback rows split over them).
      model: devices along ``model`` (frozen weights split over them).
      devices: the devices to use (default: all, ``data * model`` of them).

    Returns:
      The ``jax.sharding.Mesh`` with axes ``("data", "model")``.

    Raises:
      ValueError: ``data * model`` differs from the number of devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    if data < 1 or model < 1 or data * model != len(devices):
        raise ValueError(
            f"data * model must equal the number of devices {len(devices)} (both "
            f">= 1), got data={data}, model={model}"
        )
    auto = jax.sharding.AxisType.Auto
    return Mesh(
        np.asarray(devices, dtype=object).reshape(data, model),
        ("data", "model"),
        axis_types=(auto, auto),
    )


def _axis_size(mesh: Mesh, axis: str) -> int:
    if axis not in mesh.shape:
        raise ValueError(f"axis must be one of {list(mesh.shape)}, got {axis!r}")
    return int(mesh.shape[axis])


def fsdp_shardings(
    tree: Any, mesh: Mesh, *, axis: str = "model", min_size: int = 1024
) -> Any:
    """FSDP placement: each large leaf split along one dimension over ``axis``.

    A leaf of shape ``s`` with at least ``min_size`` elements is split along its
    largest dimension divisible by ``n = mesh.shape[axis]`` (the last one on a
    tie), so each device holds ``1/n`` of it; smaller leaves and leaves with no
    divisible dimension are replicated.

    Args:
      tree: a pytree of arrays (e.g. the frozen base from ``split_lora``).
      mesh: the device mesh.
      axis: the mesh axis to split over.
      min_size: leaves with fewer elements stay replicated (norms, biases).

    Returns:
      A pytree of ``NamedSharding`` with ``tree``'s structure.

    Raises:
      ValueError: ``axis`` not in the mesh.
    """
    n = _axis_size(mesh, axis)

    def place(x):
        shape = jnp.shape(x)
        dims = [d for d in range(len(shape)) if shape[d] % n == 0 and shape[d] >= n]
        if int(np.prod(shape, dtype=np.int64)) < min_size or not dims:
            return NamedSharding(mesh, PartitionSpec())
        best = max(dims, key=lambda d: (shape[d], d))
        spec = [None] * len(shape)
        spec[best] = axis
        return NamedSharding(mesh, PartitionSpec(*spec))

    return jax.tree.map(place, tree)


def data_shardings(tree: Any, mesh: Mesh, *, axis: str = "data") -> Any:
    """Data-parallel placement: every leaf's leading (row) axis split over ``axis``.

    Args:
      tree: a pytree of arrays with a leading row axis (a feedback batch).
      mesh: the device mesh.
      axis: the mesh axis to split the rows over.

    Returns:
      A pytree of ``NamedSharding`` (``PartitionSpec(axis)``).

    Raises:
      ValueError: ``axis`` not in the mesh, or a scalar leaf.
    """
    _axis_size(mesh, axis)

    def place(x):
        if jnp.ndim(x) == 0:
            raise ValueError(f"batch leaves must have a row axis, got shape {()}")
        return NamedSharding(mesh, PartitionSpec(axis))

    return jax.tree.map(place, tree)


def replicated(tree: Any, mesh: Mesh) -> Any:
    """Every leaf whole on every device of ``mesh`` (a state of small adapters)."""
    return jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), tree)


def _is_key(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jax.dtypes.prng_key)


def distribute(tree: Any, shardings: Any) -> Any:
    """Global arrays of ``tree`` placed by ``shardings``, from a full copy per process.

    Every process passes the same full values (frozen weights read from the
    same file, a state built from the same key); each device receives its own
    slice ``x[index]``. PRNG key leaves are placed through their raw key data.

    Args:
      tree: a pytree of arrays, identical on every process.
      shardings: a pytree of ``jax.sharding.Sharding`` with ``tree``'s structure.

    Returns:
      ``tree`` as global ``jax.Array`` s with those shardings.
    """

    def put(x, sharding):
        if _is_key(x):
            impl = jax.random.key_impl(x)
            data = jax.random.key_data(x)
            spec = sharding.spec
            data_sharding = NamedSharding(
                sharding.mesh, PartitionSpec(*spec, *([None] * (data.ndim - len(spec))))
            )
            return jax.random.wrap_key_data(put(data, data_sharding), impl=impl)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda i: host[i])

    return jax.tree.map(put, tree, shardings)


def shard_batch(local_batch: Any, mesh: Mesh, *, axis: str = "data") -> Any:
    """The global feedback batch from each process's own rows, split over ``axis``.

    With one process this is the whole batch, placed; with ``P`` processes the
    global batch is the processes' rows concatenated in process order, so a step
    on it equals the single-process step on the concatenation.

    Args:
      local_batch: a pytree of this process's rows (leading axis), the same
        number of rows on every process.
      mesh: the device mesh.
      axis: the mesh axis to split the rows over.

    Returns:
      The global batch as ``jax.Array`` s sharded by :func:`data_shardings`.

    Raises:
      ValueError: ``axis`` not in the mesh, or a scalar leaf.
    """
    shardings = data_shardings(local_batch, mesh, axis=axis)
    return jax.tree.map(
        lambda x, s: jax.make_array_from_process_local_data(s, np.asarray(x)),
        local_batch,
        shardings,
    )


def keep_state_sharding(
    step: Callable[..., tuple[Any, Any]], shardings: Any, *, donate: bool = False
) -> Callable[..., tuple[Any, Any]]:
    """Compiles ``step`` so the state it returns keeps the placement ``shardings``.

    Left to itself the compiler may return the new state split like the frozen
    weights it met (a LoRA ``A`` sharded over ``model``); the next call would then
    see a new input layout and compile again. Constraining the output to
    ``shardings`` (usually :func:`replicated`) keeps one compiled program for the
    whole stream, and the state readable in full on every process.

    Args:
      step: an uncompiled step ``step(state, *args) -> (state, metrics)``, from
        ``make_step(..., jit=False)`` or ``make_addressed_step(..., jit=False)``.
      shardings: a pytree of shardings with the state's structure.
      donate: donate the state's buffers.

    Returns:
      The jit-compiled step with the same signature.
    """

    def pinned(state, *args):
        new, metrics = step(state, *args)
        return jax.lax.with_sharding_constraint(new, shardings), metrics

    return jax.jit(pinned, donate_argnums=(0,) if donate else ())
