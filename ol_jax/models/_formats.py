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
(special values included). Saving never deletes or replaces what it did not
write (an existing path needs ``overwrite=True`` and weights of the same format;
a folder is never replaced), and with ``root=`` neither saving nor loading
leaves that folder or follows a symlink (``ol_jax.models._files``). Every
problem with a file being read is a :class:`WeightFileError` naming the file.
:func:`convert_dtype` changes the floating dtype of a tree and refuses a
conversion that changes any value (``f32 -> bf16`` rounds) unless
``allow_lossy=True``.

References:
    Hugging Face, `safetensors <https://github.com/huggingface/safetensors>`_, 2022.
    Gerganov et al., `GGUF file format
    <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>`_, 2023.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO, NamedTuple

import jax
import ml_dtypes
import numpy as np

from ol_jax.core import path_str
from ol_jax.models import _files
from ol_jax.models._files import WeightFileError

__all__ = [
    "FLOAT_DTYPES",
    "WeightFileError",
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
_MANIFEST_SUFFIX = ".json"
# Bounds on what a hostile file may ask for: a JSON header or manifest (the
# safetensors library's own limit), the nesting of a saved tree, a tensor's rank.
_MAX_HEADER = 100_000_000
_MAX_TREE_DEPTH = 64
_MAX_RANK = 32

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


def _like(tensors: Mapping[str, np.ndarray], like: Tree, shown: str) -> Tree:
    """Arranges ``tensors`` (by dotted name) into the structure of ``like``."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    leaves = []
    for p, x in flat:
        name = path_str(p)
        if name not in tensors:
            raise WeightFileError(shown, f"has no tensor {name!r} required by like")
        if tuple(np.shape(x)) != tuple(tensors[name].shape):
            raise WeightFileError(
                shown,
                f"tensor {name!r} has shape {tensors[name].shape}, like expects "
                f"{tuple(np.shape(x))}",
            )
        leaves.append(tensors[name])
    return jax.tree.unflatten(treedef, leaves)


# ---------------------------------------------------------------- checking files


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (a field of a hostile file)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_json(data: bytes | str, what: str, shown: str) -> Any:
    try:
        return json.loads(data)
    except RecursionError:
        raise WeightFileError(shown, f"{what} is nested too deeply to parse") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, huge integers
        raise WeightFileError(shown, f"{what} is not valid JSON: {e}") from None


def _check_skeleton(skeleton: Any, names: set[str], shown: str) -> None:
    """Checks a saved tree description (see :func:`_skeleton`) against the tensors.

    Every node must be well formed, at most ``_MAX_TREE_DEPTH`` deep, and the
    leaves must name each tensor of the file exactly once. Iterative, so a
    hostile file cannot exhaust the stack.
    """
    seen: set[str] = set()
    stack = [(skeleton, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > _MAX_TREE_DEPTH:
            raise WeightFileError(
                shown, f"its tree is nested deeper than {_MAX_TREE_DEPTH} levels"
            )
        if isinstance(node, str):
            if node not in names:
                raise WeightFileError(
                    shown,
                    f"its tree names tensor {_short(node)}, which it does not hold",
                )
            if node in seen:
                raise WeightFileError(shown, f"its tree names tensor {node!r} twice")
            seen.add(node)
            continue
        ok = (
            isinstance(node, list)
            and len(node) == 2
            and node[0] in ("dict", "list", "tuple")
            and isinstance(node[1], list)
        )
        if not ok:
            raise WeightFileError(
                shown, f"its tree has a malformed node {_short(node)}"
            )
        if node[0] != "dict":
            stack.extend((child, depth + 1) for child in node[1])
            continue
        keys = set()
        for item in node[1]:
            ok = (
                isinstance(item, list)
                and len(item) == 3
                and (
                    (item[1] == "str" and isinstance(item[0], str))
                    or (item[1] == "int" and _is_int(item[0]))
                )
                and item[0] not in keys
            )
            if not ok:
                raise WeightFileError(
                    shown, f"its tree has a malformed dict entry {_short(item)}"
                )
            keys.add(item[0])
            stack.append((item[2], depth + 1))
    if seen != names:
        raise WeightFileError(
            shown, f"its tree leaves out tensors {sorted(names - seen)[:5]}"
        )


class _Source(NamedTuple):
    """An opened weight file, for the built-in loaders.

    ``path`` reopens exactly the opened file (``/proc/self/fd/N``, or a private
    copy); sidecar files are opened through ``dir_fd``, the folder it was found in.
    """

    where: _files.Located
    dir_fd: int
    path: str
    size: int

    @property
    def shown(self) -> str:
        return self.where.shown

    def sidecar(self, suffix: str, *, limit: int) -> tuple[str, bytes]:
        name = self.where.name + suffix
        return name, _files.read_in(self.dir_fd, name, self.where, limit=limit)


# ---------------------------------------------------------------- safetensors


def _safetensors_writers(tree: Tree) -> dict[str, Callable[[BinaryIO], None]]:
    from safetensors.numpy import save

    named, skeleton = _named_leaves(tree)
    for name, x in named.items():
        if x.dtype.kind not in "biuf" and x.dtype != FLOAT_DTYPES["bfloat16"]:
            raise ValueError(f"tensor {name!r} has unsupported dtype {x.dtype}")
    metadata = {_TREE_KEY: json.dumps(skeleton)}
    return {"": lambda f: f.write(save(named, metadata=metadata))}


def _holds_safetensors(dir_fd: int, where: _files.Located) -> bool:
    """Whether ``where`` starts like a safetensors file (a JSON header)."""
    fd, is_dir = _files.open_in(dir_fd, where.name, where, follow=False)
    with os.fdopen(fd, "rb") as f:
        if is_dir:
            return False
        size = int.from_bytes(f.read(8), "little")
        if size > _MAX_HEADER:
            return False
        try:
            return isinstance(json.loads(f.read(size)), dict)
        except (ValueError, RecursionError):
            return False


def _load_safetensors(src: _Source) -> tuple[dict[str, np.ndarray], Any]:
    from safetensors import safe_open

    try:
        with safe_open(src.path, framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as e:  # SafetensorError, OSError: name the file
        message = str(e).replace(src.path, src.shown)
        raise WeightFileError(
            src.shown,
            f"could not read safetensors data (truncated or corrupt?): {message}",
        ) from None
    if _TREE_KEY not in metadata:
        return tensors, None
    skeleton = _parse_json(metadata[_TREE_KEY], f"its {_TREE_KEY} metadata", src.shown)
    _check_skeleton(skeleton, set(tensors), src.shown)
    return tensors, skeleton


# ---------------------------------------------------------------- raw float32


def _binary_writers(tree: Tree) -> dict[str, Callable[[BinaryIO], None]]:
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

    def write_data(f: BinaryIO) -> None:
        for x in named.values():
            f.write(x.astype("<f4").tobytes(order="C"))

    def write_manifest(f: BinaryIO) -> None:
        f.write(json.dumps(manifest, indent=1).encode("utf-8"))

    # The data first: a reader that sees the new manifest finds its data in place.
    return {"": write_data, _MANIFEST_SUFFIX: write_manifest}


def _holds_binary(dir_fd: int, where: _files.Located) -> bool:
    """Whether ``where`` is a raw float32 file with an ``ol_jax`` manifest beside it."""
    data = _files.lstat_in(dir_fd, where.name)
    if data is None or not stat.S_ISREG(data.st_mode):
        return False
    try:
        text = _files.read_in(
            dir_fd, where.name + _MANIFEST_SUFFIX, where, limit=_MAX_HEADER
        )
        manifest = json.loads(text)
    except (ValueError, RecursionError):  # WeightFileError included
        return False
    return isinstance(manifest, dict) and manifest.get("format") == _RAW_FORMAT


def _check_manifest(manifest: Any, size: int, name: str, shown: str) -> list[dict]:
    """The manifest's tensor entries, once every field agrees with the data.

    Shapes must be lists of non-negative integers, dtypes known, and the tensors
    must tile the data exactly: each starts where the one before ends, and their
    sizes add up to ``total_bytes``, which is the data file's size.
    """

    def bad(problem: str) -> WeightFileError:
        return WeightFileError(shown, f"manifest {name!r} {problem}")

    if not isinstance(manifest, dict):
        raise bad(f"must be a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != _RAW_FORMAT:
        raise bad(
            f"has format {_short(manifest.get('format'))}, expected {_RAW_FORMAT!r}"
        )
    version = manifest.get("format_version")
    if not _is_int(version) or not 1 <= version <= _RAW_VERSION:
        raise bad(f"has format_version {_short(version)}, expected 1..{_RAW_VERSION}")
    for key, want in (("byte_order", "little"), ("element", "float32")):
        if manifest.get(key) != want:
            raise bad(f"has {key} {_short(manifest.get(key))}, expected {want!r}")
    total = manifest.get("total_bytes")
    if not _is_int(total) or total < 0:
        raise bad(f"has total_bytes {_short(total)}, expected a byte count")
    if size != total:
        raise WeightFileError(
            shown,
            f"holds {size} bytes, its manifest says {total} (truncated or "
            "mismatched file?)",
        )
    entries = manifest.get("tensors")
    if not isinstance(entries, list):
        raise bad(f"has tensors {_short(entries)}, expected a list")
    offset, names = 0, set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise bad(f"tensor {i} is {_short(entry)}, expected an object")
        tensor = entry.get("name")
        if not isinstance(tensor, str) or tensor in names:
            raise bad(f"tensor {i} has name {_short(tensor)}, expected a new string")
        names.add(tensor)
        shape = entry.get("shape")
        if (
            not isinstance(shape, list)
            or len(shape) > _MAX_RANK
            or not all(_is_int(d) and d >= 0 for d in shape)
        ):
            raise bad(
                f"gives tensor {tensor!r} shape {_short(shape)}; a shape is a list "
                f"of at most {_MAX_RANK} non-negative integers"
            )
        if entry.get("dtype") not in FLOAT_DTYPES:
            raise bad(
                f"gives tensor {tensor!r} dtype {_short(entry.get('dtype'))}, "
                f"expected one of {sorted(FLOAT_DTYPES)}"
            )
        if not _is_int(entry.get("offset")) or entry["offset"] != offset:
            raise bad(
                f"gives tensor {tensor!r} offset {_short(entry.get('offset'))}; the "
                f"tensors before it end at byte {offset}"
            )
        offset += 4 * math.prod(shape)  # Python ints: a product cannot overflow
        if offset > total:
            raise bad(
                f"gives tensor {tensor!r} shape {shape}, which ends at byte "
                f"{offset}, past the data's {total} bytes"
            )
    if offset != total:
        raise bad(f"accounts for {offset} bytes of the data's {total}")
    return entries


def _load_binary(src: _Source) -> tuple[dict[str, np.ndarray], Any]:
    try:
        name, text = src.sidecar(_MANIFEST_SUFFIX, limit=_MAX_HEADER)
    except WeightFileError as e:
        raise WeightFileError(
            src.shown, f"raw float32 weights need their JSON manifest: {e.problem}"
        ) from None
    manifest = _parse_json(text, f"manifest {name!r}", src.shown)
    entries = _check_manifest(manifest, src.size, name, src.shown)
    data = np.fromfile(src.path, dtype="<f4")
    if 4 * data.size != src.size:
        raise WeightFileError(src.shown, "changed size while it was read")
    tree = manifest.get("tree")
    if tree is not None:
        _check_skeleton(tree, {e["name"] for e in entries}, src.shown)
    tensors = {}
    for entry in entries:
        start, count = entry["offset"] // 4, math.prod(entry["shape"])
        x = data[start : start + count].astype(np.float32).reshape(entry["shape"])
        # Widened from float16 / bfloat16 on save, so narrowing back is exact.
        tensors[entry["name"]] = x.astype(FLOAT_DTYPES[entry["dtype"]])
    return tensors, tree


# ---------------------------------------------------------------- gguf


def _load_gguf_tensors(src: _Source) -> tuple[dict[str, np.ndarray], Any]:
    from ol_jax.models._load import load_gguf

    return dict(load_gguf(src.path, tokenizer=False).tensors), None


# ---------------------------------------------------------------- registry


class _Format(NamedTuple):
    # A registered format's ``save(tree, path)``, writing a new file or folder.
    save: Callable[[Tree, str], None] | None
    load: Callable[..., Any]
    suffixes: tuple[str, ...]
    detect: Callable[[str], bool] | None
    # A registered loader, ``load(path, like=None)`` returning the finished tree;
    # a built-in one takes a _Source and returns (tensors, skeleton).
    returns_tree: bool
    # A built-in writer: ``writers(tree) -> {suffix: write(file)}``.
    writers: Callable[[Tree], dict[str, Callable[[BinaryIO], None]]] | None = None
    # ``holds(dir_fd, where)``: the path already holds weights of this format.
    holds: Callable[[int, _files.Located], bool] | None = None


_FORMATS: dict[str, _Format] = {
    "safetensors": _Format(
        None,
        _load_safetensors,
        (".safetensors",),
        None,
        False,
        _safetensors_writers,
        _holds_safetensors,
    ),
    "binary": _Format(
        None, _load_binary, (".bin",), None, False, _binary_writers, _holds_binary
    ),
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
      load: ``load(path, like=None) -> tree``. Given ``root=``,
        :func:`load_weights` hands it a private copy of the file or folder.
      save: ``save(tree, path)``, creating a new file or folder at ``path`` (a
        private staging folder; :func:`save_weights` moves it into place and
        never replaces an existing path with it), or ``None`` for a read-only
        format.
      suffixes: file suffixes that select this format when none is given.
      detect: ``detect(path) -> bool`` for paths without a known suffix (folders).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    _FORMATS[name] = _Format(save, load, tuple(suffixes), detect, True)


def weight_formats() -> dict[str, dict[str, bool]]:
    """The known formats: ``{name: {"read": True, "write": bool}}``."""
    return {
        k: {"read": True, "write": v.save is not None or v.writers is not None}
        for k, v in _FORMATS.items()
    }


def _resolve_format(
    path: str, format: str | None, *, detect_path: str | None = None
) -> str:
    """The format's name: ``format``, else from the suffix of ``path``, else (a
    folder being read) detected on ``detect_path``."""
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
    if detect_path is not None:
        for name, spec in _FORMATS.items():
            if spec.detect is not None and spec.detect(detect_path):
                return name
    raise ValueError(
        f"cannot tell the weight format of {path!r} from its name; pass format= "
        f"one of {sorted(_FORMATS)}"
    )


# ---------------------------------------------------------------- public API


def _writable_targets(
    dir_fd: int,
    where: _files.Located,
    names: Sequence[str],
    fmt: str,
    spec: _Format,
    overwrite: bool,
) -> frozenset[str]:
    """The names among ``names`` to replace; refuses any other existing path."""
    existing = []
    for name in names:
        st = _files.lstat_in(dir_fd, name)
        if st is None:
            continue
        if stat.S_ISDIR(st.st_mode):
            raise WeightFileError(
                where.shown,
                f"{name!r} is a folder; save_weights never replaces a folder (save "
                "to a new name)",
            )
        if not stat.S_ISREG(st.st_mode):
            raise WeightFileError(
                where.shown, f"{name!r} exists and is not a regular file; not replaced"
            )
        if not overwrite:
            raise WeightFileError(
                where.shown,
                f"{name!r} exists; pass overwrite=True to replace {fmt} weights "
                "saved there before",
            )
        if spec.holds is None:
            raise WeightFileError(
                where.shown, f"{name!r} exists; {fmt} weights never replace a path"
            )
        existing.append(name)
    if existing and not spec.holds(dir_fd, where):
        raise WeightFileError(
            where.shown,
            f"{existing[0]!r} does not hold {fmt} weights; overwrite replaces only "
            "weights of the same format",
        )
    return frozenset(existing)


def save_weights(
    tree: Tree,
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    dtype: Any = None,
    allow_lossy: bool = False,
    overwrite: bool = False,
    root: str | os.PathLike[str] | None = None,
) -> str:
    """Writes a parameter tree to ``path`` in a weight format.

    Nothing that was there is deleted or changed unless asked: an existing path
    is refused, unless ``overwrite=True`` and it already holds weights of the
    same format (for ``"binary"``, both the data and its manifest); a folder is
    never replaced (so an ``"ol_jax"`` checkpoint is saved to a new name). Each
    file is written to an unpredictable temporary name created exclusively
    beside the target, then renamed into place, so a reader sees the old file or
    the new one, never half of one.

    With ``root``, ``path`` is relative to that folder (or absolute inside it)
    and may not leave it: each folder on the way is opened without following
    symlinks and written through its descriptor, so a folder swapped for a
    symlink mid-save cannot redirect the write (see ``ol_jax.models._files``).

    Args:
      tree: nested dicts / lists / tuples of jax or numpy arrays, or a flat
        ``{name: array}`` dict (an ``nnx.State``: pass ``state.to_pure_dict()``).
      path: the file (or, for ``"ol_jax"``, folder) to write.
      format: ``"safetensors"``, ``"binary"``, ``"ol_jax"`` (alias ``"custom"``);
        ``None`` picks it from the suffix (``.safetensors``, ``.bin``).
      dtype: convert floating leaves to this dtype first (see
        :func:`convert_dtype`); ``None`` keeps each leaf's dtype.
      allow_lossy: allow a ``dtype`` conversion that changes values.
      overwrite: replace weights of the same format already at ``path``.
      root: the only folder the write may touch; ``None`` writes ``path`` as
        given (its folder may be reached through symlinks, the file itself not).

    Returns:
      The path written, as given.

    Raises:
      WeightFileError: the path exists (and may not be replaced), is outside
        ``root`` or ``root`` itself, goes through a symlink, its folder is
        missing, or the write failed (naming the OS error).
      ValueError: unknown or read-only format, unsupported tree or dtype, or a
        lossy conversion without ``allow_lossy``.

    Examples:
      >>> import numpy as np, tempfile, os
      >>> f = os.path.join(tempfile.mkdtemp(), "w.safetensors")
      >>> _ = save_weights({"layer": {"w": np.ones((2, 3), np.float32)}}, f)
      >>> load_weights(f)["layer"]["w"].shape
      (2, 3)
    """
    where = _files.locate(path, root)
    name = _resolve_format(where.shown, format)
    spec = _FORMATS[name]
    if spec.save is None and spec.writers is None:
        writable = sorted(k for k, v in weight_formats().items() if v["write"])
        raise ValueError(
            f"format {name!r} is read-only; save as one of {writable} instead"
        )
    if dtype is not None:
        tree = convert_dtype(tree, dtype, allow_lossy=allow_lossy)
    # The tree is checked (and serialized lazily) before anything is touched.
    writers = spec.writers(tree) if spec.writers is not None else None
    with _files.open_parent(where) as dir_fd:
        names = [where.name + s for s in writers] if writers else [where.name]
        replace = _writable_targets(dir_fd, where, names, name, spec, overwrite)
        try:
            if writers is not None:
                named = {where.name + s: w for s, w in writers.items()}
                _files.write_files(dir_fd, named, replace=replace)
            else:
                with tempfile.TemporaryDirectory(prefix="ol_jax-save-") as stage:
                    staged = os.path.join(stage, where.name)
                    spec.save(tree, staged)
                    _files.install_staged(staged, dir_fd, where.name)
        except FileExistsError:
            raise WeightFileError(
                where.shown, "appeared while it was being saved; nothing was replaced"
            ) from None
        except OSError as e:
            raise WeightFileError(where.shown, f"could not be written: {e}") from e
    return where.shown


@contextlib.contextmanager
def _reopenable(fd: int, is_dir: bool, where: _files.Located) -> Iterator[str]:
    """A path that reads exactly the opened ``fd``, for loaders that take paths.

    A file: ``/proc/self/fd/N`` where the OS has it, else a private copy. A
    folder under a root: a private copy made without following links (its
    entries could be symlinks). A folder named by a library caller: its path.
    """
    if is_dir and where.follow:
        yield os.path.join(where.root, where.name)
        return
    stable = None if is_dir else _files.fd_path(fd)
    if stable is not None:
        yield stable
        return
    with tempfile.TemporaryDirectory(prefix="ol_jax-load-") as private:
        copy = os.path.join(private, where.name)
        if is_dir:
            _files.copy_tree_out(fd, copy, where)
        else:
            _files.copy_file_out(fd, copy)
        yield copy


def load_weights(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    like: Tree = None,
    dtype: Any = None,
    allow_lossy: bool = False,
    root: str | os.PathLike[str] | None = None,
) -> Tree:
    """Reads a parameter tree from a weight file, as numpy arrays.

    Every problem with the file raises :class:`WeightFileError` naming it and
    what is wrong: missing, truncated, corrupt, or a manifest whose names,
    shapes, dtypes or offsets disagree with the data. Nothing is written.

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
      root: the only folder the read may touch: ``path`` is relative to it (or
        absolute inside it), and neither it, the folders on the way nor a
        sidecar file (the ``.json`` manifest of ``"binary"``) may be a symlink.
        ``None`` reads ``path`` as given, symlinks included.

    Returns:
      The tree of numpy arrays, bit-exact to what was saved.

    Raises:
      WeightFileError: anything wrong with the file, a tensor ``like`` needs but
        the file lacks, or a lossy conversion.
      ValueError: an unknown ``format`` or ``dtype``.
    """
    where = _files.locate(path, root)
    if format is not None:
        _resolve_format(where.shown, format)  # an unknown format: before any I/O
    if dtype is not None:
        _dtype(dtype)
    with _files.open_parent(where) as dir_fd:
        fd, is_dir = _files.open_in(dir_fd, where.name, where, follow=where.follow)
        try:
            detect = None
            if is_dir:
                detect = _files.fd_path(fd) or os.path.join(where.root, *where.parts)
            name = _resolve_format(where.shown, format, detect_path=detect)
            spec = _FORMATS[name]
            if is_dir and not spec.returns_tree:
                raise WeightFileError(
                    where.shown, f"is a folder; {name} weights are a single file"
                )
            if is_dir and spec.detect is not None and not spec.detect(detect):
                # Checked before a folder under a root is copied to be read.
                raise WeightFileError(
                    where.shown, f"is a folder that does not hold {name} weights"
                )
            try:
                with _reopenable(fd, is_dir, where) as stable:
                    try:
                        tree = _read(spec, stable, dir_fd, fd, where, like)
                    except WeightFileError:
                        raise
                    except Exception as e:  # numpy, gguf, Orbax...: name the file
                        message = str(e).replace(stable, where.shown)
                        raise WeightFileError(
                            where.shown,
                            f"could not read it as {name} weights (truncated or "
                            f"corrupt?): {type(e).__name__}: {_short(message, 300)}",
                        ) from e
            except OSError as e:  # making the private copy it is read from
                raise WeightFileError(where.shown, f"could not be read: {e}") from e
        finally:
            os.close(fd)
    if dtype is not None:
        try:
            tree = convert_dtype(tree, dtype, allow_lossy=allow_lossy)
        except ValueError as e:
            raise WeightFileError(where.shown, str(e)) from None
    return tree


def _read(spec: _Format, stable: str, dir_fd: int, fd: int, where, like) -> Tree:
    if spec.returns_tree:
        return spec.load(stable, like=like)
    src = _Source(where, dir_fd, stable, os.fstat(fd).st_size)
    tensors, skeleton = spec.load(src)
    if like is not None:
        return _like(tensors, like, where.shown)
    if skeleton is not None:
        return _rebuild(skeleton, tensors)
    return tensors
