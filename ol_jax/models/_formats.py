"""Weight files: safetensors, raw float32 + JSON manifest, GGUF, and Orbax.

:func:`save_weights` / :func:`load_weights` write and read a parameter tree (nested
dicts, lists and tuples of arrays, or a flat ``{name: array}`` dict) in one of:

``"safetensors"`` (read / write, ``.safetensors``)
    Tensors named by their dotted tree path (``"decoder.0.kernel"``); the tree's
    shape is kept in the file's ``__metadata__``, so a nested tree comes back
    nested. A file written elsewhere (a Hugging Face ``model.safetensors``) loads
    as a flat ``{tensor name: array}`` dict.
``"binary"`` (read / write, ``.bin``)
    Raw little-endian float32, every tensor in C order one after another, with a
    JSON manifest beside it (``<path>.json``) giving names, shapes, offsets and
    original dtypes. float16 / bfloat16 tensors are widened to float32 (exact) and
    narrowed back on load, so they round-trip bit-exactly.
``"gguf"`` (read, ``.gguf``)
    A llama.cpp file, dequantized to float32 and renamed to Hugging Face tensor
    names by the GGUF loader.
``"ol_jax"`` (read / write, an Orbax checkpoint folder)
    Registered by ``ol_jax.store`` (which holds every Orbax call) when it is
    imported; ``"custom"`` is an alias, after the format of the same name in the
    document this library follows.

Every writable format round-trips bit-exactly in float32, float16 and bfloat16
(special values included).
:func:`convert_dtype` changes the floating dtype of a tree and refuses a
conversion that changes any value (``f32 -> bf16`` rounds) unless
``allow_lossy=True``.

References:
    Hugging Face, `safetensors <https://github.com/huggingface/safetensors>`_, 2022.
    Gerganov et al., `GGUF file format
    <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>`_, 2023.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import ml_dtypes
import numpy as np

from ol_jax.core import path_str

__all__ = [
    "FLOAT_DTYPES",
    "convert_dtype",
    "load_weights",
    "register_weight_format",
    "save_weights",
    "weight_formats",
]

#: Floating dtypes that :func:`convert_dtype` converts between, by name.
FLOAT_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}
_DTYPE_ALIASES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}
_FORMAT_ALIASES = {"custom": "ol_jax", "raw": "binary"}
_TREE_KEY = "ol_jax.tree"
_RAW_FORMAT = "ol_jax-raw-float32"
_RAW_VERSION = 1

Tree = Any


# ---------------------------------------------------------------- dtypes


def _dtype(dtype: Any) -> np.dtype:
    name = _DTYPE_ALIASES.get(dtype, dtype) if isinstance(dtype, str) else None
    if name in FLOAT_DTYPES:
        return FLOAT_DTYPES[name]
    if name is None:
        try:
            found = np.dtype(dtype)
        except TypeError:
            found = None
        if found is not None and found in FLOAT_DTYPES.values():
            return found
    raise ValueError(
        f"dtype must be one of {sorted(FLOAT_DTYPES)} (or f32/f16/bf16), got {dtype!r}"
    )


def _is_float(array: np.ndarray) -> bool:
    return array.dtype in FLOAT_DTYPES.values() or array.dtype == np.float64


def _convert_leaf(name: str, array: np.ndarray, dtype: np.dtype, allow_lossy: bool):
    if not _is_float(array) or array.dtype == dtype:
        return array
    # Overflow to inf is reported below as a lossy conversion, not as a warning.
    with np.errstate(over="ignore"):
        out = array.astype(dtype)
    if not allow_lossy:
        back = out.astype(array.dtype)
        same = (back == array) | (np.isnan(back) & np.isnan(array))
        if not np.all(same):
            changed = int(np.size(same) - np.count_nonzero(same))
            raise ValueError(
                f"converting {name} from {array.dtype} to {dtype} is lossy: "
                f"{changed} of {array.size} values change (rounding or overflow); "
                "pass allow_lossy=True to convert anyway"
            )
    return out


def convert_dtype(tree: Tree, dtype: Any, *, allow_lossy: bool = False) -> Tree:
    """Casts every floating leaf of ``tree`` to ``dtype``; other leaves are kept.

    A conversion is lossless when ``cast_back(cast(x)) == x`` for every value
    (widening ``f16 -> f32`` and ``bf16 -> f32`` always is; ``f32 -> bf16`` keeps
    8 of 24 mantissa bits, ``f32 -> f16`` also overflows past 65504). A lossy
    conversion raises unless ``allow_lossy=True``, so weights are never rounded
    by accident.

    Args:
      tree: a pytree of arrays (jax or numpy).
      dtype: ``"float32"``, ``"float16"``, ``"bfloat16"`` (or ``"f32"``, ``"f16"``,
        ``"bf16"``, or the numpy dtype).
      allow_lossy: convert even if values change.

    Returns:
      The tree with numpy leaves, floating ones in ``dtype``.

    Raises:
      ValueError: unknown ``dtype``, or a lossy conversion without
        ``allow_lossy``, naming the leaf and how many values change.

    References:
      IEEE 754-2019, `Standard for Floating-Point Arithmetic
      <https://doi.org/10.1109/IEEESTD.2019.8766229>`_; Kalamkar et al., `A Study
      of BFLOAT16 for Deep Learning Training <https://arxiv.org/abs/1905.12322>`_,
      2019.

    Examples:
      >>> import numpy as np
      >>> convert_dtype({"w": np.float32([0.5, 2.0])}, "bf16")["w"].dtype
      dtype(bfloat16)
    """
    target = _dtype(dtype)
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    out = [
        _convert_leaf(path_str(p) or "the leaf", np.asarray(x), target, allow_lossy)
        for p, x in flat
    ]
    return jax.tree.unflatten(treedef, out)


# ---------------------------------------------------------------- tree <-> names


def _skeleton(tree: Tree, prefix: tuple = ()) -> Any:
    """A JSON description of the containers of ``tree``; leaves become their names.

    ``["dict", [[key, "str" | "int", child], ...]]``, ``["list", [child, ...]]``,
    ``["tuple", [...]]``; a leaf is its dotted name (a string).
    """
    if isinstance(tree, Mapping):
        items = []
        for k, v in tree.items():
            if isinstance(k, bool) or not isinstance(k, (str, int)):
                raise ValueError(
                    f"tree keys must be str or int, got {k!r} under "
                    f"{'.'.join(map(str, prefix)) or 'the root'}"
                )
            kind = "str" if isinstance(k, str) else "int"
            items.append([k, kind, _skeleton(v, (*prefix, k))])
        return ["dict", items]
    if isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
        kind = "list" if isinstance(tree, list) else "tuple"
        return [kind, [_skeleton(v, (*prefix, i)) for i, v in enumerate(tree)]]
    if hasattr(tree, "shape") and hasattr(tree, "dtype"):
        return ".".join(map(str, prefix))
    raise ValueError(
        f"weights must be nested dicts, lists or tuples of arrays, got "
        f"{type(tree).__name__} at {'.'.join(map(str, prefix)) or 'the root'} "
        "(for an nnx.State, pass state.to_pure_dict())"
    )


def _rebuild(skeleton: Any, tensors: Mapping[str, np.ndarray]) -> Tree:
    if isinstance(skeleton, str):
        return tensors[skeleton]
    kind, children = skeleton
    if kind == "dict":
        return {
            (int(k) if key_kind == "int" else k): _rebuild(child, tensors)
            for k, key_kind, child in children
        }
    built = [_rebuild(child, tensors) for child in children]
    return built if kind == "list" else tuple(built)


def _named_leaves(tree: Tree) -> tuple[dict[str, np.ndarray], Any]:
    """``({dotted name: numpy array}, skeleton)`` of a tree, names unique."""
    skeleton = _skeleton(tree)
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    if not flat:
        raise ValueError("weights must have at least one array leaf, got none")
    named: dict[str, np.ndarray] = {}
    for p, x in flat:
        name = path_str(p)
        if name in named:
            raise ValueError(f"two leaves share the name {name!r}; rename one")
        named[name] = np.asarray(x, order="C")  # ascontiguousarray makes 0-d 1-d
    return named, skeleton


def _like(tensors: Mapping[str, np.ndarray], like: Tree, source: str) -> Tree:
    """Arranges ``tensors`` (by dotted name) into the structure of ``like``."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    leaves = []
    for p, x in flat:
        name = path_str(p)
        if name not in tensors:
            raise ValueError(f"{source} has no tensor {name!r} required by like")
        if tuple(np.shape(x)) != tuple(tensors[name].shape):
            raise ValueError(
                f"{source}: tensor {name!r} has shape {tensors[name].shape}, "
                f"like expects {tuple(np.shape(x))}"
            )
        leaves.append(tensors[name])
    return jax.tree.unflatten(treedef, leaves)


def _atomic_replace(path: str, write: Callable[[str], None]) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ---------------------------------------------------------------- safetensors


def _save_safetensors(tree: Tree, path: str) -> None:
    from safetensors.numpy import save_file

    named, skeleton = _named_leaves(tree)
    for name, x in named.items():
        if x.dtype.kind not in "biuf" and x.dtype != FLOAT_DTYPES["bfloat16"]:
            raise ValueError(f"tensor {name!r} has unsupported dtype {x.dtype}")
    metadata = {_TREE_KEY: json.dumps(skeleton)}
    _atomic_replace(path, lambda tmp: save_file(named, tmp, metadata=metadata))


def _load_safetensors(path: str) -> tuple[dict[str, np.ndarray], Any]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as e:  # SafetensorError, OSError: name the file
        raise ValueError(
            f"could not read safetensors file {path} (truncated or corrupt?): {e}"
        ) from e
    skeleton = json.loads(metadata[_TREE_KEY]) if _TREE_KEY in metadata else None
    return tensors, skeleton


# ---------------------------------------------------------------- raw float32


def _manifest_path(path: str) -> str:
    return path + ".json"


def _save_binary(tree: Tree, path: str) -> None:
    named, skeleton = _named_leaves(tree)
    entries, offset = [], 0
    for name, x in named.items():
        if x.dtype not in FLOAT_DTYPES.values():
            raise ValueError(
                f"the binary format stores float32, float16 or bfloat16 tensors; "
                f"{name!r} is {x.dtype} (convert it with convert_dtype first)"
            )
        entries.append(
            {
                "name": name,
                "shape": list(x.shape),
                "dtype": str(x.dtype),
                "offset": offset,
            }
        )
        offset += 4 * x.size
    manifest = {
        "format": _RAW_FORMAT,
        "format_version": _RAW_VERSION,
        "byte_order": "little",
        "element": "float32",
        "total_bytes": offset,
        "tensors": entries,
        "tree": skeleton,
    }

    def write_data(tmp: str) -> None:
        with open(tmp, "wb") as f:
            for x in named.values():
                f.write(x.astype("<f4").tobytes(order="C"))

    def write_manifest(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)

    _atomic_replace(path, write_data)
    _atomic_replace(_manifest_path(path), write_manifest)


def _load_binary(path: str) -> tuple[dict[str, np.ndarray], Any]:
    manifest_file = _manifest_path(path)
    if not os.path.isfile(manifest_file):
        raise ValueError(
            f"raw float32 weights {path} need their JSON manifest {manifest_file}"
        )
    with open(manifest_file, encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format") != _RAW_FORMAT:
        raise ValueError(
            f"manifest {manifest_file} has format {manifest.get('format')!r}, "
            f"expected {_RAW_FORMAT!r}"
        )
    size = os.path.getsize(path)
    if size != manifest["total_bytes"]:
        raise ValueError(
            f"raw weights {path} hold {size} bytes, the manifest says "
            f"{manifest['total_bytes']} (truncated or mismatched file?)"
        )
    data = np.fromfile(path, dtype="<f4")
    tensors = {}
    for entry in manifest["tensors"]:
        start = entry["offset"] // 4
        count = int(np.prod(entry["shape"], dtype=np.int64))
        x = (
            data[start : start + count]
            .astype(np.float32)
            .reshape(tuple(entry["shape"]))
        )
        # Widened from float16 / bfloat16 on save, so narrowing back is exact.
        tensors[entry["name"]] = x.astype(_dtype(entry["dtype"]))
    return tensors, manifest.get("tree")


# ---------------------------------------------------------------- gguf


def _load_gguf_tensors(path: str) -> tuple[dict[str, np.ndarray], Any]:
    from ol_jax.models._load import load_gguf

    return dict(load_gguf(path, tokenizer=False).tensors), None


# ---------------------------------------------------------------- registry


class _Format(NamedTuple):
    save: Callable[[Tree, str], None] | None
    load: Callable[[str], Any]
    suffixes: tuple[str, ...]
    detect: Callable[[str], bool] | None
    # A loader that returns the finished tree rather than (tensors, skeleton).
    returns_tree: bool


_FORMATS: dict[str, _Format] = {
    "safetensors": _Format(
        _save_safetensors, _load_safetensors, (".safetensors",), None, False
    ),
    "binary": _Format(_save_binary, _load_binary, (".bin",), None, False),
    "gguf": _Format(None, _load_gguf_tensors, (".gguf",), None, False),
}


def register_weight_format(
    name: str,
    *,
    load: Callable[..., Tree],
    save: Callable[[Tree, str], None] | None = None,
    suffixes: Sequence[str] = (),
    detect: Callable[[str], bool] | None = None,
) -> None:
    """Adds a format to :func:`save_weights` / :func:`load_weights`.

    This is how a lower layer (``ol_jax.store``, which owns Orbax) adds the
    ``"ol_jax"`` format without ``ol_jax.models`` importing it.

    Args:
      name: the format's name.
      load: ``load(path, like=None) -> tree``.
      save: ``save(tree, path)``, or ``None`` for a read-only format.
      suffixes: file suffixes that select this format when none is given.
      detect: ``detect(path) -> bool`` for paths without a known suffix (folders).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    _FORMATS[name] = _Format(save, load, tuple(suffixes), detect, True)


def weight_formats() -> dict[str, dict[str, bool]]:
    """The known formats: ``{name: {"read": True, "write": bool}}``."""
    return {k: {"read": True, "write": v.save is not None} for k, v in _FORMATS.items()}


def _resolve_format(path: str, format: str | None, *, writing: bool) -> str:
    if format is not None:
        if not isinstance(format, str):
            raise ValueError(f"format must be a string, got {format!r}")
        name = _FORMAT_ALIASES.get(format.lower(), format.lower())
        if name == "ol_jax" and name not in _FORMATS:
            raise ValueError(
                "the 'ol_jax' (Orbax) format is provided by ol_jax.store; "
                "import ol_jax.store first"
            )
        if name not in _FORMATS:
            known = sorted([*_FORMATS, *_FORMAT_ALIASES])
            raise ValueError(f"format must be one of {known}, got {format!r}")
        return name
    for name, spec in _FORMATS.items():
        if any(path.lower().endswith(s) for s in spec.suffixes):
            return name
    if not writing:
        for name, spec in _FORMATS.items():
            if spec.detect is not None and spec.detect(path):
                return name
    raise ValueError(
        f"cannot tell the weight format of {path!r} from its name; pass format= "
        f"one of {sorted(_FORMATS)}"
    )


# ---------------------------------------------------------------- public API


def save_weights(
    tree: Tree,
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    dtype: Any = None,
    allow_lossy: bool = False,
) -> str:
    """Writes a parameter tree to ``path`` in a weight format.

    Files are written to a temporary name and renamed into place, so a reader
    sees the old file or the new one, never half of one (an existing file is
    replaced).

    Args:
      tree: nested dicts / lists / tuples of jax or numpy arrays, or a flat
        ``{name: array}`` dict (an ``nnx.State``: pass ``state.to_pure_dict()``).
      path: the file (or, for ``"ol_jax"``, folder) to write.
      format: ``"safetensors"``, ``"binary"``, ``"ol_jax"`` (alias ``"custom"``);
        ``None`` picks it from the suffix (``.safetensors``, ``.bin``).
      dtype: convert floating leaves to this dtype first (see
        :func:`convert_dtype`); ``None`` keeps each leaf's dtype.
      allow_lossy: allow a ``dtype`` conversion that changes values.

    Returns:
      The path written.

    Raises:
      ValueError: unknown or read-only format, unsupported tree or dtype, or a
        lossy conversion without ``allow_lossy``.

    Examples:
      >>> import numpy as np, tempfile, os
      >>> f = os.path.join(tempfile.mkdtemp(), "w.safetensors")
      >>> _ = save_weights({"layer": {"w": np.ones((2, 3), np.float32)}}, f)
      >>> load_weights(f)["layer"]["w"].shape
      (2, 3)
    """
    path = os.fspath(path)
    name = _resolve_format(path, format, writing=True)
    spec = _FORMATS[name]
    if spec.save is None:
        writable = sorted(k for k, v in _FORMATS.items() if v.save is not None)
        raise ValueError(
            f"format {name!r} is read-only; save as one of {writable} instead"
        )
    if dtype is not None:
        tree = convert_dtype(tree, dtype, allow_lossy=allow_lossy)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"the folder of {path} does not exist")
    spec.save(tree, path)
    return path


def load_weights(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    like: Tree = None,
    dtype: Any = None,
    allow_lossy: bool = False,
) -> Tree:
    """Reads a parameter tree from a weight file, as numpy arrays.

    Args:
      path: the file or ``"ol_jax"`` checkpoint folder.
      format: ``"safetensors"``, ``"binary"``, ``"gguf"``, ``"ol_jax"`` (alias
        ``"custom"``), or ``None`` to pick it from the suffix (or detect an
        Orbax folder).
      like: optional tree giving the structure to return (leaves matched by
        dotted path name, shapes checked). Without it, a tree written by
        :func:`save_weights` comes back with its saved structure and a foreign
        file as a flat ``{tensor name: array}`` dict.
      dtype: convert floating leaves to this dtype after reading.
      allow_lossy: allow a ``dtype`` conversion that changes values.

    Returns:
      The tree of numpy arrays, bit-exact to what was saved.

    Raises:
      ValueError: missing file, unknown format, corrupt or truncated file, a
        tensor ``like`` needs but the file lacks, or a lossy conversion.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"path {path} does not exist")
    name = _resolve_format(path, format, writing=False)
    spec = _FORMATS[name]
    if spec.returns_tree:
        tree = spec.load(path, like=like)
    else:
        if not os.path.isfile(path):
            raise ValueError(f"{name} weights must be a file, got folder {path}")
        tensors, skeleton = spec.load(path)
        if like is not None:
            tree = _like(tensors, like, path)
        elif skeleton is not None:
            tree = _rebuild(skeleton, tensors)
        else:
            tree = tensors
    if dtype is not None:
        tree = convert_dtype(tree, dtype, allow_lossy=allow_lossy)
    return tree
