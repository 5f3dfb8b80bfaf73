"""One pytree in one Orbax checkpoint folder: the ``"ol_jax"`` weight file format.

:class:`~ol_jax.store.RunStore` keeps many versions of a network inside a run; this
is the single-file counterpart that ``ol_jax.models.save_weights(..., format=
"ol_jax")`` writes, so that all Orbax calls stay in ``ol_jax.store``. Orbax writes
into a temporary folder and renames it when complete, so a reader never sees a
half-written checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from ol_jax.models import register_weight_format

__all__ = ["is_pytree_checkpoint", "load_pytree", "save_pytree"]


def is_pytree_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a finalized Orbax checkpoint folder."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        return False
    return os.path.isfile(os.path.join(path, "_CHECKPOINT_METADATA"))


def save_pytree(
    path: str | os.PathLike[str], tree: Any, *, overwrite: bool = False
) -> str:
    """Writes ``tree`` (numeric arrays, any dtype incl. bfloat16) to an Orbax folder.

    Args:
      path: the checkpoint folder to create.
      tree: nested dicts / lists of jax or numpy arrays.
      overwrite: replace an existing folder at ``path``.

    Returns:
      The absolute path written.

    Raises:
      ValueError: ``path`` exists and ``overwrite`` is false, or the tree has no
        array leaves.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not overwrite:
        raise ValueError(f"path {path} exists; pass overwrite=True to replace it")
    if not jax.tree.leaves(tree):
        raise ValueError("tree must have at least one array leaf, got none")
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, tree, force=overwrite)
        checkpointer.wait_until_finished()
    return path


def load_pytree(path: str | os.PathLike[str], *, like: Any = None) -> Any:
    """Reads a tree written by :func:`save_pytree`, bit-exact, as numpy arrays.

    Args:
      path: the checkpoint folder.
      like: optional tree with the target structure (arrays or
        ``jax.ShapeDtypeStruct``); without it the saved structure is returned.

    Returns:
      The tree, every leaf a numpy array of its saved dtype.

    Raises:
      ValueError: ``path`` is not a finalized Orbax checkpoint.
    """
    path = os.path.abspath(os.fspath(path))
    if not is_pytree_checkpoint(path):
        raise ValueError(f"path must be an Orbax checkpoint folder, got {path}")
    with ocp.StandardCheckpointer() as checkpointer:
        if like is None:
            tree = checkpointer.restore(path)
        else:
            target = jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), like
            )
            tree = checkpointer.restore(path, target)
    return jax.tree.map(np.asarray, tree)


def _save_weights_file(tree: Any, path: str) -> None:
    # save_weights hands over a new path in a private staging folder and moves
    # the result into place itself; it never asks Orbax to replace a folder.
    save_pytree(path, tree)


# ``ol_jax.models`` sits above this layer and cannot import Orbax code, so the
# ``"ol_jax"`` weight format is registered from here.
register_weight_format(
    "ol_jax",
    load=load_pytree,
    save=_save_weights_file,
    suffixes=(".orbax",),
    detect=is_pytree_checkpoint,
)
