"""Dtype and shape helpers shared by the objectives (private)."""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike


def float_dtype(x: ArrayLike) -> np.dtype:
    """The floating dtype a value is computed in: its own, or float32 for ints."""
    dtype = jnp.result_type(x)
    if jnp.issubdtype(dtype, jnp.inexact):
        return np.dtype(dtype)
    return np.dtype(jnp.float32)


def compute_dtype(dtype: Any) -> np.dtype:
    """Widens half-precision dtypes to float32 so reductions keep their accuracy.

    The result is cast back to the caller's dtype afterwards; float32 and float64
    are kept as they are.
    """
    dtype = np.dtype(dtype)
    if dtype.itemsize < 4:
        return np.dtype(jnp.float32)
    return dtype


def tree_dtype(tree: Any) -> np.dtype:
    """The dtype of a scalar summed over ``tree``: the leaves' common float dtype.

    Trees whose leaves disagree (a mixed-precision model) get float32.
    """
    dtypes = {float_dtype(leaf) for leaf in jax.tree.leaves(tree)}
    if len(dtypes) == 1:
        return dtypes.pop()
    return np.dtype(jnp.float32)


def check_same_shape(**arrays: ArrayLike) -> None:
    """Raises ValueError unless every named array has the same shape."""
    shapes = {name: jnp.shape(a) for name, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name}{shape}" for name, shape in shapes.items())
        raise ValueError(f"expected arrays of one shape, got {listed}")


def check_same_structure(**trees: Any) -> None:
    """Raises ValueError unless every named pytree has the same structure."""
    structs = {name: jax.tree.structure(t) for name, t in trees.items()}
    first_name, first = next(iter(structs.items()))
    for name, struct in structs.items():
        if struct != first:
            raise ValueError(
                f"{name} must have the structure of {first_name}: "
                f"expected {first}, got {struct}"
            )


def check_in_range(name: str, value: Any, lo: float, hi: float) -> None:
    """Checks a Python-number hyperparameter; traced values are left to the caller."""
    if isinstance(value, int | float) and not (lo <= value <= hi):
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")


def check_positive(name: str, value: Any) -> None:
    """Checks that a Python-number hyperparameter is finite and > 0."""
    if isinstance(value, int | float) and not (0 < value < float("inf")):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")


def check_nonnegative(name: str, value: Any) -> None:
    """Checks that a Python-number hyperparameter is finite and >= 0."""
    if isinstance(value, int | float) and not (0 <= value < float("inf")):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
