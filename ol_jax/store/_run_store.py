"""Versioned, crash-safe weight storage for online-learning runs (Orbax-backed).

Layout on disk::

    networks/<network_id>/config.yaml
    networks/<network_id>/runs/<run_id>/run_metadata.json      (header)
    networks/<network_id>/runs/<run_id>/run_metadata.records   (one line per change)
    networks/<network_id>/runs/<run_id>/weights_v0/    (an Orbax checkpoint)
    networks/<network_id>/runs/<run_id>/weights_v1/
    ...

Guarantees:

* A weight version is written by Orbax into a temporary folder and renamed into
  place when complete, so a process killed mid-save leaves the previous versions
  intact (the temporary folder is removed when the run is next opened).
* The metadata is a header written once (``run_metadata.json``) and an
  append-only record file (``run_metadata.records``, see
  :class:`~ol_jax.store.MetadataLog`): a save appends one checksummed line, so
  it costs O(1) bytes however long the run; the file is compacted (rewritten
  atomically) when it holds more than twice the records the state needs. A
  version's record is appended and fsync'd only after the version is finalized;
  retention deletes a version only after a record has stopped listing it. Every
  version the metadata lists can be restored. A run folder with only a
  ``run_metadata.json`` holding ``entries`` (format 1) is migrated when opened.
* ``save`` copies the arrays to host memory in the caller (so buffers donated to
  the next step cannot change what is written) and hands the copy to a single
  background :class:`~ol_jax.store.CheckpointWriter`. When ``queue_size`` saves are
  waiting, ``save`` blocks; no version is ever dropped. A failed write is raised by
  the next call on the store.
* One process at a time writes a run: the run folder is locked with ``flock``.
* Version numbers are never reused: they are handed out from a block reserved in
  ``version_counter.json`` (written durably before the first number of the block
  is returned), so a version queued and lost in a crash keeps its number.
* Each version records a CRC-32 of every array's bytes in its Orbax checkpoint
  metadata; :meth:`RunStore.restore` recomputes them and raises
  :class:`CorruptVersionError` naming the version and the array on a mismatch.
* Each version records the feedback-journal position it reflects
  (``journal_position``): the journal records with a lower sequence number are
  in its weights, later ones are not (see :class:`FeedbackJournal`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import fcntl
import functools
import json
import logging
import math
import os
import re
import secrets
import shutil
import threading
import zlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from ol_jax.store._config import (
    BaseNetworkConfig,
    ConfigError,
    NetworkConfig,
    load_config,
)
from ol_jax.store._journal import FeedbackJournal
from ol_jax.store._metadata_log import (
    STATE_KEYS,
    MetadataLog,
    apply_records,
    snapshot_records,
)
from ol_jax.store._writer import CheckpointWriter, WriteJob

__all__ = [
    "CheckpointWriteError",
    "CorruptVersionError",
    "MissingMetadataError",
    "RunStore",
    "new_run_id",
    "read_run_metadata",
]

METADATA_FILE = "run_metadata.json"
RECORDS_FILE = "run_metadata.records"
JOURNAL_FILE = "feedback.journal"
COUNTER_FILE = "version_counter.json"
WEIGHTS_PREFIX = "weights_v"
# 1: the whole metadata in run_metadata.json; 2: header + record file.
_FORMAT_VERSION = 2
# Compaction when the record file holds more than this many times the records
# a snapshot of the state needs (plus a little slack for small runs).
_COMPACT_RATIO = 2
_COMPACT_SLACK = 64
_RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_RESERVED_ENTRY_KEYS = ("version", "parent_version", "event", "journal_position")
# Version numbers reserved per durable counter write: one fsync'd file write per
# this many saves, and at most this many numbers skipped after a crash.
_RESERVE_BLOCK = 32
_CHECKSUM_KEY = "ol_jax"
_LOG = logging.getLogger(__name__)


class CheckpointWriteError(RuntimeError):
    """A background checkpoint write failed; raised by the next call on the store."""


class CorruptVersionError(RuntimeError):
    """A saved version's bytes are not what was written (or cannot be read).

    Attributes:
      version: the version number.
      array: the array's path in the tree (``params/decoder/3/kernel``), or
        ``None`` when Orbax could not read the checkpoint at all.
    """

    def __init__(self, message: str, *, version: int, array: str | None):
        super().__init__(message)
        self.version = version
        self.array = array


class MissingMetadataError(RuntimeError):
    """A run folder holds weight versions or feedback but no run metadata."""


def new_run_id() -> str:
    """A fresh run id that sorts by creation time: ``YYYYmmdd-HHMMSS-ffffff-<hex>``."""
    now = datetime.datetime.now(datetime.UTC)
    return now.strftime("%Y%m%d-%H%M%S-%f") + "-" + secrets.token_hex(3)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")


@dataclasses.dataclass(frozen=True)
class _VersionNameFormat:
    """Orbax step naming ``weights_v<N>`` (Orbax's ``step_prefix`` adds a ``_``).

    Implements ``orbax.checkpoint.path.step.NameFormat``: only finalized folders
    whose name is exactly ``weights_v<N>`` count as steps, so Orbax's temporary
    folders (``weights_v3.orbax-checkpoint-tmp-...``) are never restored.
    """

    prefix: str = WEIGHTS_PREFIX

    def build_name(self, step: int) -> str:
        return f"{self.prefix}{step}"

    def _metadata(self, path: epath.Path) -> ocp.path.step.Metadata | None:
        match = re.fullmatch(rf"{re.escape(self.prefix)}(0|[1-9][0-9]*)", path.name)
        if match is None or not path.is_dir():
            return None
        if not ocp.path.step.is_path_finalized(path):
            return None
        return ocp.path.step.Metadata(step=int(match.group(1)), path=path)

    def find_all(self, base_path: epath.PathLike) -> Any:
        base = epath.Path(base_path)
        if not base.is_dir():
            return iter([])
        return ocp.path.step.build_step_metadatas(list(base.iterdir()), self._metadata)

    def find_step(self, base_path: epath.PathLike, step: int) -> Any:
        path = epath.Path(base_path) / self.build_name(step)
        found = self._metadata(path) if path.exists() else None
        if found is None:
            raise ValueError(f"no finalized checkpoint {path}")
        return found


def _manager(run_dir: str, *, read_only: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        step_name_format=_VersionNameFormat(),
        # Writes already run on our own background thread; doing them synchronously
        # there means "save returned" == "version finalized".
        enable_async_checkpointing=False,
        # Retention is applied by RunStore after the metadata stops listing a
        # version, so the metadata never names a deleted one.
        max_to_keep=None,
        create=not read_only,
        cleanup_tmp_directories=not read_only,
        read_only=read_only,
    )
    return ocp.CheckpointManager(run_dir, options=options)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _atomic_write_text(path: str, data: str) -> None:
    """Writes ``path`` so readers see the old or the new file, never a mix."""
    directory = os.path.dirname(path)
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_temp_files(run_dir: str) -> None:
    """Deletes what an interrupted write left: ``<file>.tmp-<pid>-<tid>`` of an
    atomic file write and Orbax's unfinished ``weights_v<N>.orbax-checkpoint-tmp*``
    folders (Orbax's own cleanup may still be running when the run is used).
    Called with the run locked, so no writer of this run is alive."""
    for name in os.listdir(run_dir):
        path = os.path.join(run_dir, name)
        if ".tmp-" in name and name.split(".tmp-")[0] in (
            METADATA_FILE,
            RECORDS_FILE,
            COUNTER_FILE,
        ):
            _LOG.info("removing %s left by an interrupted write", path)
            os.remove(path)
    _remove_failed_saves(run_dir)


def _remove_failed_saves(run_dir: str) -> None:
    """Deletes every ``weights_v<N>.orbax-checkpoint-tmp*`` folder of ``run_dir``.

    Called when no save of the run is in progress (on opening it, and on the
    writer thread after a version is finalized), so any temporary folder belongs
    to a failed or interrupted save. One may reappear after a failed save was
    discarded, because Orbax's serialization threads can still be writing into
    it when the save raises.
    """
    for name in os.listdir(run_dir):
        if name.startswith(WEIGHTS_PREFIX) and ".orbax-checkpoint-tmp" in name:
            _LOG.info("removing %s left by a failed save", os.path.join(run_dir, name))
            shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)


def _read_counter(path: str) -> int:
    """The first version number not yet reserved (0 without a counter file)."""
    try:
        with open(path, encoding="utf-8") as f:
            return int(json.load(f)["next_version"])
    except FileNotFoundError:
        return 0


def _write_counter(path: str, next_version: int) -> None:
    try:
        _atomic_write_text(path, _dumps({"next_version": next_version}))
    except OSError as exc:
        for name in os.listdir(os.path.dirname(path)):
            if name.startswith(COUNTER_FILE + ".tmp-"):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(os.path.dirname(path), name))
        raise CheckpointWriteError(
            f"reserving version numbers in {path} failed: {exc}"
        ) from exc


def _jsonable(value: Any, path: str = "metadata_entry") -> Any:
    """Converts arrays and numpy scalars to JSON values; non-finite floats to text."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        array = np.asarray(jax.device_get(value))
        if array.dtype.kind == "f" or str(array.dtype) == "bfloat16":
            array = array.astype(np.float64)
        elif array.dtype.kind not in "biu":
            raise ValueError(
                f"{path} must hold numeric arrays, got dtype {array.dtype}"
            )
        return _jsonable(array.tolist(), path)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return (
            "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        )
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    raise ValueError(
        f"{path} must be JSON-like (dict, list, str, number, bool, None, array), "
        f"got {type(value).__name__}"
    )


def _host_snapshot(tree: Any) -> Any:
    """A host copy of ``tree`` that nothing else references.

    ``jax.device_get`` may return a zero-copy view of a CPU buffer (or the very
    numpy array passed in); such leaves are copied so that donating or mutating
    the caller's arrays afterwards cannot change what is written.
    """
    leaves, treedef = jax.tree.flatten(tree)
    if not leaves:
        raise ValueError("params tree must have at least one array leaf, got none")
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree.flatten_with_path(tree)[0]]
    for name, leaf in zip(paths, leaves, strict=True):
        dtype = getattr(leaf, "dtype", None)
        if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            raise ValueError(
                f"leaf {name} is a PRNG key array; save jax.random.key_data(key)"
            )
    for leaf in leaves:
        if isinstance(leaf, jax.Array):
            leaf.copy_to_host_async()
    host = jax.device_get(leaves)
    out = []
    for name, original, leaf in zip(paths, leaves, host, strict=True):
        array = np.asarray(leaf)
        if array is original or array.base is not None or not array.flags.owndata:
            array = np.array(array, copy=True)
        if array.dtype.kind in "OUSMm" or array.dtype.fields is not None:
            raise ValueError(
                f"leaf {name} must be a numeric array, got dtype {array.dtype}"
            )
        out.append(array)
    return jax.tree.unflatten(treedef, out)


def _leaf_name(path: tuple[Any, ...]) -> str:
    """A tree path as ``a/b/0``, the same for a dict, a namedtuple or a list (Orbax
    may restore one as another)."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _crc(array: np.ndarray) -> int:
    """CRC-32 of an array's bytes (C order), without copying them."""
    if not array.size:
        return 0
    return zlib.crc32(np.ascontiguousarray(array).reshape(-1).view(np.uint8))


def _checksums(tree: Any) -> dict[str, list[Any]]:
    """``{array path: [crc32 of its bytes, dtype, shape]}`` of a host tree."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        array = np.asarray(leaf)
        out[_leaf_name(path)] = [
            _crc(array),
            str(array.dtype),
            list(array.shape),
        ]
    return out


def _verify(tree: Any, expected: Mapping[str, Any], run_id: str, version: int) -> None:
    """Raises :class:`CorruptVersionError` if a restored array differs from the
    bytes that were saved."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = _leaf_name(path)
        if name not in expected:
            continue
        crc, dtype, shape = expected[name]
        array = np.asarray(jax.device_get(leaf))
        if str(array.dtype) != dtype or list(array.shape) != shape:
            # Restored as another dtype or shape on request (``like``): the bytes
            # differ by design; the caller verified nothing here.
            continue
        actual = _crc(array)
        if actual != crc:
            raise CorruptVersionError(
                f"version {version} of run {run_id!r} is corrupt: array {name!r} "
                f"has checksum {actual:08x}, {crc:08x} was saved",
                version=version,
                array=name,
            )


def _user_entry(metadata_entry: Mapping[str, Any] | None) -> dict[str, Any]:
    entry = dict(metadata_entry or {})
    for key in _RESERVED_ENTRY_KEYS:
        if key in entry:
            raise ValueError(f"metadata_entry key {key!r} is reserved")
    return entry


def _check_run_id(run_id: Any) -> str:
    if not isinstance(run_id, str) or not _RUN_ID_PATTERN.match(run_id):
        raise ValueError(
            f"run_id must be letters, digits, '.', '_', '-', got {run_id!r}"
        )
    return run_id


def _check_position(journal_position: Any) -> None:
    if journal_position is not None and (
        isinstance(journal_position, bool)
        or not isinstance(journal_position, int)
        or journal_position < 0
    ):
        raise ValueError(
            f"journal_position must be an int >= 0, got {journal_position!r}"
        )


def _entry_ratings(entry: Mapping[str, Any]) -> list[float]:
    """Ratings recorded in a metadata entry under ``rating`` or ``ratings``."""
    found: list[float] = []
    for key in ("rating", "ratings"):
        value = entry.get(key)
        values = value if isinstance(value, list) else [value]
        found.extend(
            float(v)
            for v in values
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        )
    return [v for v in found if math.isfinite(v)]


def _quality(entries: list[Mapping[str, Any]], version: int) -> float | None:
    """Mean rating over the entries on ``version``'s lineage (parent links)."""
    by_version = {e["version"]: e for e in entries if "version" in e}
    if version not in by_version:
        raise ValueError(f"version {version} has no metadata entry in this run")
    ratings: list[float] = []
    seen = set()
    current: int | None = version
    while current is not None and current in by_version and current not in seen:
        seen.add(current)
        entry = by_version[current]
        ratings.extend(_entry_ratings(entry))
        current = entry.get("parent_version")
    return sum(ratings) / len(ratings) if ratings else None


class _Run:
    """Everything RunStore keeps for one open run."""

    def __init__(self, run_id: str, run_dir: str, lock_fd: int):
        self.run_id = run_id
        self.run_dir = run_dir
        self.metadata_path = os.path.join(run_dir, METADATA_FILE)
        self.lock_fd = lock_fd
        self.manager: ocp.CheckpointManager | None = None
        self.meta: dict[str, Any] = {}
        # alloc_lock orders version numbers and submissions; io_lock serializes
        # Orbax calls on this run's manager; meta_lock guards `meta`.
        self.alloc_lock = threading.Lock()
        self.io_lock = threading.Lock()
        self.meta_lock = threading.Lock()
        self.next_version = 0
        # Numbers below this are durably reserved (may be handed out without a
        # write); see RunStore._allocate.
        self.reserved_end = 0
        self.counter_path = os.path.join(run_dir, COUNTER_FILE)
        self.journal: FeedbackJournal | None = None
        # The highest journal position a saved version reflects.
        self.position_high = 0
        self.head: int | None = None
        self.pending: list[WriteJob] = []
        self.error: BaseException | None = None
        self.failed_versions: list[int] = []
        # Versions whose failed write may have left files behind (removed again
        # before each later write, and by Orbax at the next open).
        self.debris: set[int] = set()
        # The open record file; `meta` is always its records applied in order.
        self.records: MetadataLog | None = None

    @property
    def records_path(self) -> str:
        return os.path.join(self.run_dir, RECORDS_FILE)

    def commit(self, records: list[dict[str, Any]]) -> int:
        """Appends ``records`` durably, then applies them to ``meta`` (called with
        ``meta_lock`` held). On a failure ``meta`` is unchanged.

        Returns:
          The bytes written (a compaction's included).
        """
        written = self.records.append(records)
        apply_records(self.meta, records)
        return written + self.compact_if_sparse()

    def compact_if_sparse(self) -> int:
        """Compacts the record file when it holds more than ``_COMPACT_RATIO``
        times the records a snapshot needs; returns the bytes written (0 when
        not). Each save adds one record and one entry, so this happens only
        after many records that add no entry (reopenings that repair the
        metadata, warnings), and costs O(1) amortized per record."""
        live = len(self.meta["entries"]) + len(self.meta.get("warnings", ())) + 1
        if self.records.records > _COMPACT_RATIO * live + _COMPACT_SLACK:
            return self.compact()
        return 0

    def compact(self) -> int:
        """Rewrites the record file as a snapshot of ``meta``, atomically.

        Returns:
          The bytes written.
        """
        old = self.records
        self.records = MetadataLog.create(
            self.records_path, snapshot_records(self.meta)
        )
        if old is not None:
            old.close()
        return self.records.size

    def write_header(self) -> None:
        """Atomically writes ``run_metadata.json``: the metadata less its state."""
        header = {k: v for k, v in self.meta.items() if k not in STATE_KEYS}
        _atomic_write_text(self.metadata_path, _dumps(header))


def _read_metadata(
    run_dir: str, *, for_writing: bool = False
) -> tuple[dict[str, Any], MetadataLog | None]:
    """A run's metadata from its folder.

    Args:
      run_dir: the run folder.
      for_writing: also open the record file for appending (which drops a torn
        last record); without it nothing in the folder changes.

    Returns:
      ``(metadata, log)``: ``log`` is the open record file when ``for_writing``,
      and ``None`` for a format-1 folder (the whole metadata in
      ``run_metadata.json``), which opening the run migrates.

    Raises:
      MissingMetadataError: the header is there but the record file is not.
      CorruptMetadataError: the record file is damaged before its last record.
    """
    with open(os.path.join(run_dir, METADATA_FILE), encoding="utf-8") as f:
        meta = json.load(f)
    if "entries" in meta:
        meta["format_version"] = _FORMAT_VERSION
        return meta, None
    path = os.path.join(run_dir, RECORDS_FILE)
    log = None
    try:
        if for_writing:
            log, records = MetadataLog.open(path)
        else:
            records = MetadataLog.read(path)
    except FileNotFoundError:
        raise MissingMetadataError(
            f"run folder {run_dir} holds {METADATA_FILE} but no {RECORDS_FILE}; "
            f"restore the record file or move the folder away"
        ) from None
    meta.update(current_version=None, versions=[], updated_at=None, entries=[])
    apply_records(meta, records)
    return meta, log


def read_run_metadata(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of the run in ``run_dir``, read without opening the run.

    The same dict as :meth:`RunStore.metadata`; a format-1 folder is read as it
    is (not migrated), and a torn last record (a writer killed, or still
    writing) is left out. Nothing in the folder changes.

    Raises:
      FileNotFoundError: the folder has no ``run_metadata.json``.
      MissingMetadataError: it has no ``run_metadata.records`` (format 2).
      CorruptMetadataError: the record file is damaged before its last record.
    """
    return _read_metadata(os.fspath(run_dir))[0]


class RunStore:
    """Versioned weights and feedback metadata for the runs of one network.

    ``RunStore(root, network_id)`` reads and validates
    ``<root>/<network_id>/config.yaml``; :meth:`start_run` then opens a run (new,
    resumed, or started from another run's version) and :meth:`save` writes weight
    versions ``weights_v0, weights_v1, ...`` with one metadata entry each.

    Every version has a metadata entry with ``version``, ``parent_version``,
    ``event`` (``"save"``, ``"rollback"``, ``"start_from"`` or ``"recovered"``) and
    ``timestamp``, plus the caller's ``metadata_entry`` fields (ratings, losses,
    gradient norms, ``style_z`` values...). A version's *feedback quality* is the
    mean of the ``rating`` / ``ratings`` values on its lineage: the entries that
    produced it, following ``parent_version`` links (so a rollback's quality is
    that of the version it restored).

    Args:
      root: the folder holding network folders.
      network_id: the network's folder name.
      config: a validated config to use instead of reading ``config.yaml``.
      config_cls: the schema ``config.yaml`` is validated with: the glyph
        :class:`NetworkConfig` by default, or a learner's own
        :class:`BaseNetworkConfig` subclass.
      writer: a :class:`CheckpointWriter` shared with other stores. Without one, a
        private writer is made when ``config.store.async_writes`` is true; when it
        is false, saves are written in the caller.

    Raises:
      ConfigError: ``config.yaml`` is missing or invalid, or its ``network_id``
        does not match the folder.

    Examples:
      >>> with RunStore("networks", "glyph-demo") as store:  # doctest: +SKIP
      ...     run_id = store.start_run()
      ...     v = store.save(params, metadata_entry={"rating": 7, "loss": 0.3})
      ...     params = store.restore(like=params)
    """

    def __init__(
        self,
        root: str | os.PathLike[str] = "networks",
        network_id: str | None = None,
        *,
        config: BaseNetworkConfig | None = None,
        config_cls: type[BaseNetworkConfig] = NetworkConfig,
        writer: CheckpointWriter | None = None,
    ):
        if network_id is None:
            if config is None:
                raise ValueError("network_id is required when no config is given")
            network_id = config.network_id
        if not _RUN_ID_PATTERN.match(network_id):
            raise ValueError(
                f"network_id must be letters, digits, '.', '_', '-', got {network_id!r}"
            )
        self._network_dir = os.path.abspath(os.path.join(os.fspath(root), network_id))
        if config is None:
            config = load_config(
                os.path.join(self._network_dir, "config.yaml"), config_cls
            )
        elif not isinstance(config, BaseNetworkConfig):
            raise ValueError(
                f"config must be a BaseNetworkConfig, got {type(config).__name__}"
            )
        if config.network_id != network_id:
            raise ConfigError(
                [
                    (
                        "network_id",
                        f"must match the folder name {network_id!r}, "
                        f"got {config.network_id!r}",
                    )
                ],
                source=os.path.join(self._network_dir, "config.yaml"),
            )
        self._config = config
        self._owns_writer = False
        if writer is None and config.store.async_writes:
            writer = CheckpointWriter(queue_size=config.store.queue_size)
            self._owns_writer = True
        self._writer = writer
        self._run: _Run | None = None
        self._closed = False

    # ------------------------------------------------------------------ properties

    @property
    def config(self) -> BaseNetworkConfig:
        """The network's validated configuration."""
        return self._config

    @property
    def network_id(self) -> str:
        return self._config.network_id

    @property
    def network_dir(self) -> str:
        return self._network_dir

    @property
    def runs_dir(self) -> str:
        return os.path.join(self._network_dir, "runs")

    @property
    def run_id(self) -> str | None:
        """The open run's id, or ``None`` before :meth:`start_run`."""
        return self._run.run_id if self._run else None

    @property
    def run_dir(self) -> str | None:
        return self._run.run_dir if self._run else None

    def runs(self) -> list[str]:
        """Ids of this network's runs that have metadata, oldest first."""
        if not os.path.isdir(self.runs_dir):
            return []
        return sorted(
            name
            for name in os.listdir(self.runs_dir)
            if os.path.isfile(os.path.join(self.runs_dir, name, METADATA_FILE))
        )

    # ------------------------------------------------------------------ run life

    def start_run(
        self,
        run_id: str | None = None,
        *,
        from_version: tuple[str, int | None] | None = None,
    ) -> str:
        """Opens a run: a new one, an existing one (resume), or a copy of a version.

        Any run already open on this store is flushed and closed first.

        Args:
          run_id: the run to resume, or a new id; ``None`` makes a fresh
            time-sortable id (see :func:`new_run_id`).
          from_version: ``(source_run_id, version)`` of this network to start from
            (``version=None`` means that run's latest). The source weights are
            copied into this run as ``weights_v0`` and ``started_from`` records the
            source run, version and its feedback quality. Only for new runs.

        Returns:
          The run id.

        Raises:
          ValueError: bad run id, ``from_version`` with an existing run, or an
            unknown source run or version.
          RuntimeError: another process (or store) has the run open.
        """
        self._check_open()
        run_id = _check_run_id(new_run_id() if run_id is None else run_id)
        run_dir = os.path.join(self.runs_dir, run_id)
        exists = os.path.isfile(os.path.join(run_dir, METADATA_FILE))
        source = None
        if from_version is not None:
            if exists:
                raise ValueError(
                    f"from_version is only for new runs; run {run_id!r} exists"
                )
            # Read the source before closing the open run: it may be the source.
            source = self._read_source(from_version)
        if self._run is not None:
            self._close_run()
        os.makedirs(run_dir, exist_ok=True)
        run = _Run(run_id, run_dir, self._lock_run(run_dir))
        try:
            if not exists:
                self._refuse_orphans(run_dir)
            _remove_temp_files(run_dir)
            run.manager = _manager(run_dir)
            if exists:
                run.meta, run.records = _read_metadata(run_dir, for_writing=True)
                if run.meta.get("network_id") != self.network_id:
                    raise ValueError(
                        f"run {run_id!r} belongs to network "
                        f"{run.meta.get('network_id')!r}, not {self.network_id!r}"
                    )
            else:
                run.meta = {
                    "format_version": _FORMAT_VERSION,
                    "network_id": self.network_id,
                    "run_id": run_id,
                    "created_at": _now(),
                    "started_from": None if source is None else source["started_from"],
                    "updated_at": _now(),
                    "current_version": None,
                    "versions": [],
                    "entries": [],
                }
            fixes = self._reconcile(run)
            reserved = _read_counter(run.counter_path)
            run.next_version = max(run.next_version, reserved)
            run.reserved_end = run.next_version
            if run.records is not None:
                if fixes:
                    run.commit(fixes)
                else:
                    run.compact_if_sparse()
            else:
                # A new run, or a format-1 one: the record file first, then the
                # header, whose format 2 is what says the migration is done.
                apply_records(run.meta, fixes)
                run.compact()
                run.write_header()
            store_cfg = self._config.store
            run.journal = FeedbackJournal(
                os.path.join(run_dir, JOURNAL_FILE),
                durability=store_cfg.durability,
                max_pending=store_cfg.feedback_queue_size,
            )
        except BaseException:
            self._release(run)
            raise
        self._run = run
        if source is not None:
            started = source["started_from"]
            self._enqueue(
                source["tree"],
                version=None,
                entry={
                    "event": "start_from",
                    "source_run_id": started["run_id"],
                    "source_version": started["version"],
                },
                parent=None,
            )
        return run_id

    def flush(self) -> None:
        """Waits until every save submitted to this store is on disk.

        Raises:
          CheckpointWriteError: a background write failed.
        """
        self._check_open()
        run = self._run
        if run is None:
            return
        for job in list(run.pending):
            job.wait()
        with run.alloc_lock:
            run.pending = [job for job in run.pending if not job.done()]
        self._raise_write_error(run)

    def close(self) -> None:
        """Flushes, then releases the run lock and the writer (if private).

        Raises:
          CheckpointWriteError: a background write failed (resources are still
            released).
        """
        if self._closed:
            return
        try:
            if self._run is not None:
                self._close_run()
        finally:
            self._closed = True
            if self._owns_writer and self._writer is not None:
                self._writer.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ weights

    def save(
        self,
        params: Any,
        *,
        version: int | None = None,
        metadata_entry: Mapping[str, Any] | None = None,
        journal_position: int | None = None,
    ) -> int:
        """Saves a new weight version (asynchronously) with its metadata entry.

        The arrays are copied to host memory before this returns, so the caller
        may donate or overwrite them at once. The version's directory and its
        metadata entry appear when the background writer has finished it.

        Args:
          params: a pytree of numeric arrays (jax or numpy; any dtype including
            bfloat16).
          version: the version number; ``None`` takes the next one. Must be greater
            than every version already saved in this run.
          metadata_entry: JSON-like fields for this version's entry (``rating`` or
            ``ratings``, ``loss``, ``grad_norm``, ``style_z``...). Arrays are
            converted to lists. Keys ``version``, ``parent_version`` and ``event``
            are reserved; ``timestamp`` defaults to now.
          journal_position: the feedback-journal position these weights reflect:
            every journal record with a lower sequence number is applied, none
            after it. ``None`` keeps the highest position saved so far.

        Returns:
          The version number (never one handed out before in this run, even by a
          process that crashed before writing it).

        Raises:
          CheckpointWriteError: an earlier background write failed, or the
            version number could not be reserved on disk.
          ValueError: bad version, tree or metadata.
        """
        run = self._require_run()
        self._raise_write_error(run)
        _check_position(journal_position)
        entry = _user_entry(metadata_entry)
        entry["event"] = "save"
        tree = _host_snapshot(params)
        return self._enqueue(
            tree,
            version=version,
            entry=entry,
            parent="head",
            journal_position=journal_position,
        )

    def restore(
        self, version: int | None = None, *, like: Any = None, run_id: str | None = None
    ) -> Any:
        """Loads a weight version, bit-exact.

        Waits for pending saves first, so the latest version is the last saved.

        Args:
          version: the version; ``None`` means the latest.
          like: a pytree with the target structure; leaves that are ``jax.Array``
            (or ``jax.ShapeDtypeStruct`` with a sharding) restore as jax arrays on
            that sharding, numpy leaves as numpy. ``None`` restores numpy arrays.
          run_id: another run of this network to read from (read-only); ``None``
            is the open run.

        Returns:
          The restored pytree.

        Raises:
          ValueError: no such version.
        """
        if run_id is not None and (self._run is None or run_id != self._run.run_id):
            self._check_open()
            return self._restore_other(run_id, version, like)
        run = self._require_run()
        self.flush()
        with run.io_lock:
            return self._restore_with(run.manager, run.run_id, version, like)

    def restore_newest_good(self, *, like: Any = None) -> tuple[int, Any]:
        """The newest version of the open run that restores intact: for resuming.

        A newer version that fails its checksums (or cannot be read) is skipped
        with a warning logged and written into the run's metadata
        (``warnings``); the run then continues from the good version (later saves
        descend from it).

        Args:
          like: as for :meth:`restore`.

        Returns:
          ``(version, tree)``.

        Raises:
          ValueError: the run has no versions.
          CorruptVersionError: no version restores intact (the newest one's
            error).
        """
        run = self._require_run()
        candidates = self.versions()[::-1]
        if not candidates:
            raise ValueError(f"run {run.run_id!r} has no saved versions")
        failures: list[CorruptVersionError] = []
        for version in candidates:
            try:
                tree = self.restore(version, like=like)
            except CorruptVersionError as exc:
                failures.append(exc)
                continue
            if failures:
                self._warn(
                    run,
                    f"resumed from version {version}: newer version(s) "
                    f"{[e.version for e in failures]} are corrupt ("
                    + "; ".join(str(e) for e in failures)
                    + ")",
                    head=version,
                )
            return version, tree
        raise failures[0]

    def _warn(self, run: _Run, message: str, *, head: int | None = None) -> None:
        _LOG.warning("%s", message)
        record: dict[str, Any] = {
            "warning": {"timestamp": _now(), "message": message},
            "updated_at": _now(),
        }
        if head is not None:
            record["current_version"] = head
        with run.alloc_lock, run.meta_lock:
            run.commit([record])
            if head is not None:
                run.head = head

    def versions(self) -> list[int]:
        """Versions of the open run present on disk, ascending (after a flush)."""
        run = self._require_run()
        self.flush()
        with run.meta_lock:
            return list(run.meta["versions"])

    def latest_version(self) -> int | None:
        """The highest version on disk of the open run, or ``None`` (after a flush)."""
        versions = self.versions()
        return versions[-1] if versions else None

    def rollback(
        self,
        version: int,
        *,
        metadata_entry: Mapping[str, Any] | None = None,
        journal_position: int | None = None,
    ) -> int:
        """Makes ``version`` current again by saving a copy of it as a new version.

        Numbering continues after the latest version; the new entry has
        ``event="rollback"``, ``rolled_back_to=version`` and
        ``parent_version=version``, so its feedback quality is that of
        ``version``. Later saves descend from it.

        Args:
          version: a version present on disk.
          metadata_entry: extra fields for the rollback entry (e.g. a reason).
          journal_position: as for :meth:`save`: the journal records the caller
            has consumed by now (rolled back or not); ``None`` keeps the highest
            position saved so far.

        Returns:
          The new version number (whose weights equal ``version``'s).

        Raises:
          ValueError: ``version`` is not on disk.
        """
        run = self._require_run()
        available = self.versions()
        if version not in available:
            raise ValueError(
                f"cannot roll back run {run.run_id!r} to version {version}: "
                f"available versions are {available}"
            )
        entry = _user_entry(metadata_entry)
        entry.update(event="rollback", rolled_back_to=version)
        _check_position(journal_position)
        with run.io_lock:
            tree = self._restore_with(run.manager, run.run_id, version, None)
        return self._enqueue(
            tree,
            version=None,
            entry=entry,
            parent=version,
            journal_position=journal_position,
        )

    # ------------------------------------------------------------------ feedback

    @property
    def journal(self) -> FeedbackJournal:
        """The open run's feedback journal (``feedback.journal`` in the run
        folder), with the network's ``store.durability``."""
        return self._require_run().journal

    def journal_position(self, version: int | None = None) -> int:
        """The journal position ``version`` (``None``: the current one) reflects:
        records with a lower sequence number are in its weights, none after.

        Raises:
          ValueError: no such version in the open run's metadata.
        """
        run = self._require_run()
        self.flush()
        with run.meta_lock:
            if version is None:
                version = run.meta["current_version"]
                if version is None:
                    return 0
            for entry in reversed(run.meta["entries"]):
                if entry.get("version") == version:
                    return int(entry.get("journal_position") or 0)
        raise ValueError(f"version {version} has no metadata entry in this run")

    def feedback_records(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Every feedback item recorded in a run's journal, in order.

        Each is the dict the learner journaled (the glyph learner's carry ``id``,
        the glyph id, and ``rating``) plus ``seq``, its sequence number. Only
        records that are durable are listed: an acknowledged synchronous
        ``feedback()`` call is always among them.

        Args:
          run_id: a run of this network; ``None`` is the open run.
        """
        if run_id is None or (self._run is not None and run_id == self._run.run_id):
            return self._require_run().journal.records()
        self._check_open()
        run_dir = os.path.join(self.runs_dir, _check_run_id(run_id))
        if not os.path.isdir(run_dir):
            raise ValueError(f"network {self.network_id!r} has no run {run_id!r}")
        return FeedbackJournal.read(os.path.join(run_dir, JOURNAL_FILE))

    # ------------------------------------------------------------------ metadata

    def feedback_quality(self, version: int | None = None) -> float | None:
        """Mean rating on the lineage of ``version`` (``None``: latest).

        Returns ``None`` when no entry on the lineage carries a rating.

        Raises:
          ValueError: the version has no metadata entry in the open run.
        """
        run = self._require_run()
        self.flush()
        with run.meta_lock:
            if version is None:
                version = run.meta["current_version"]
                if version is None:
                    return None
            return _quality(run.meta["entries"], version)

    def metadata(self, run_id: str | None = None) -> dict[str, Any]:
        """A copy of a run's metadata (the open run after a flush).

        The dict holds ``format_version``, ``network_id``, ``run_id``,
        ``created_at``, ``started_from`` (from ``run_metadata.json``) and
        ``updated_at``, ``current_version``, ``versions``, ``entries`` and, once
        there is one, ``warnings`` (the records of ``run_metadata.records``
        applied in order).

        Raises:
          ValueError: no such run.
          MissingMetadataError: the run's record file is missing.
          CorruptMetadataError: the record file is damaged before its last record.
        """
        if run_id is None or (self._run is not None and run_id == self._run.run_id):
            run = self._require_run()
            self.flush()
            with run.meta_lock:
                return copy.deepcopy(run.meta)
        run_dir = os.path.join(self.runs_dir, _check_run_id(run_id))
        if not os.path.isfile(os.path.join(run_dir, METADATA_FILE)):
            raise ValueError(
                f"run {run_id!r} of network {self.network_id!r} has no {METADATA_FILE}"
            )
        return read_run_metadata(run_dir)

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"RunStore for {self.network_id!r} is closed")

    def _require_run(self) -> _Run:
        self._check_open()
        if self._run is None:
            raise RuntimeError("no open run: call start_run() first")
        return self._run

    def _lock_run(self, run_dir: str) -> int:
        fd = os.open(os.path.join(run_dir, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(
                f"run folder {run_dir} is open for writing by another RunStore"
            ) from None
        return fd

    def _release(self, run: _Run) -> None:
        try:
            try:
                if run.journal is not None:
                    run.journal.close()
            finally:
                if run.manager is not None:
                    run.manager.close()
        finally:
            if run.records is not None:
                run.records.close()
            fcntl.flock(run.lock_fd, fcntl.LOCK_UN)
            os.close(run.lock_fd)

    def _close_run(self) -> None:
        run = self._run
        try:
            self.flush()
            # A clean close gives back the unused reserved numbers, so the next
            # process continues the numbering without a gap.
            if run.reserved_end > run.next_version:
                _write_counter(run.counter_path, run.next_version)
        finally:
            for job in list(run.pending):
                job.wait()
            self._run = None
            self._release(run)

    def _refuse_orphans(self, run_dir: str) -> None:
        """A run folder with versions or feedback but no metadata is damage to
        report, never a place to start fresh weights."""
        names = sorted(os.listdir(run_dir))
        weights = [n for n in names if n.startswith(WEIGHTS_PREFIX)]
        journal = os.path.join(run_dir, JOURNAL_FILE)
        has_feedback = os.path.isfile(journal) and os.path.getsize(journal) > 0
        if weights or has_feedback:
            found = ", ".join(weights[:5]) + ("..." if len(weights) > 5 else "")
            if has_feedback:
                found = (found + ", " if found else "") + JOURNAL_FILE
            raise MissingMetadataError(
                f"run folder {run_dir} holds {found} but no {METADATA_FILE}; "
                f"refusing to start a fresh run over it (restore the metadata file "
                f"or move the folder away)"
            )

    def _reconcile(self, run: _Run) -> list[dict[str, Any]]:
        """Brings metadata and disk into agreement after an interrupted process.

        A finalized version newer than any the metadata knows was saved but its
        entry was lost (killed between the two writes): it is kept with a
        ``"recovered"`` entry. An older unlisted one was awaiting retention's
        delete: it is deleted. Sets the run's head, next version and journal
        position; ``run.meta`` is not changed.

        Returns:
          The metadata records that make the change (none when nothing changed).
        """
        meta = run.meta
        on_disk = sorted(run.manager.all_steps())
        run.position_high = max(
            [int(e.get("journal_position") or 0) for e in meta["entries"]],
            default=0,
        )
        listed = set(meta["versions"])
        known = [e["version"] for e in meta["entries"] if "version" in e]
        newest_known = max(known + list(listed), default=-1)
        records: list[dict[str, Any]] = []
        head = meta["current_version"]
        for v in on_disk:
            if v in listed:
                continue
            if v > newest_known:
                entry = {
                    "version": v,
                    "parent_version": head,
                    "event": "recovered",
                    "timestamp": _now(),
                    "note": "checkpoint was finalized but its metadata entry "
                    "was lost (process stopped before the metadata write)",
                }
                # The checkpoint carries its own entry (journal position
                # included): recover it when it is this version's.
                with contextlib.suppress(Exception):
                    custom = run.manager.metadata(v).custom_metadata or {}
                    saved = custom.get(_CHECKSUM_KEY, {}).get("entry") or {}
                    if saved.get("version") == v:
                        entry = {
                            **saved,
                            "event": "recovered",
                            "note": entry["note"],
                            "saved_event": saved.get("event"),
                        }
                records.append({"entry": entry})
                run.position_high = max(
                    run.position_high, int(entry.get("journal_position") or 0)
                )
                head = v
                listed.add(v)
            else:
                run.manager.delete(v)
        present = set(on_disk)
        versions = sorted(v for v in listed if v in present)
        if records or versions != meta["versions"] or head != meta["current_version"]:
            records.append(
                {"versions": versions, "current_version": head, "updated_at": _now()}
            )
        run.head = head
        run.next_version = max([newest_known, *on_disk], default=-1) + 1
        return records

    def _read_source(self, from_version: tuple[str, int | None]) -> dict[str, Any]:
        try:
            source_run, source_version = from_version
        except (TypeError, ValueError):
            raise ValueError(
                f"from_version must be (run_id, version), got {from_version!r}"
            ) from None
        meta = self.metadata(source_run)
        if source_version is None:
            source_version = meta.get("current_version")
        if source_version not in meta.get("versions", []):
            raise ValueError(
                f"run {source_run!r} has no version {source_version}; "
                f"available: {meta.get('versions', [])}"
            )
        tree = self._restore_other(source_run, source_version, None)
        quality = _quality(meta["entries"], source_version)
        return {
            "tree": tree,
            "started_from": {
                "run_id": source_run,
                "version": source_version,
                "feedback_quality": quality,
            },
        }

    def _restore_other(self, run_id: str, version: int | None, like: Any) -> Any:
        run_dir = os.path.join(self.runs_dir, _check_run_id(run_id))
        if not os.path.isdir(run_dir):
            raise ValueError(f"network {self.network_id!r} has no run {run_id!r}")
        manager = _manager(run_dir, read_only=True)
        try:
            return self._restore_with(manager, run_id, version, like)
        finally:
            manager.close()

    @staticmethod
    def _restore_with(
        manager: ocp.CheckpointManager, run_id: str, version: int | None, like: Any
    ) -> Any:
        available = sorted(manager.all_steps())
        if version is None:
            if not available:
                raise ValueError(f"run {run_id!r} has no saved versions")
            version = available[-1]
        if version not in available:
            raise ValueError(
                f"run {run_id!r} has no version {version}; available: {available}"
            )
        args = ocp.args.StandardRestore(like) if like is not None else None
        try:
            custom = manager.metadata(version).custom_metadata or {}
            tree = manager.restore(version, args=args or ocp.args.StandardRestore())
        except Exception as exc:
            if like is not None:
                # A `like` that does not fit the saved tree is the caller's
                # error, not damage: tell them apart by reading without it.
                try:
                    manager.restore(version, args=ocp.args.StandardRestore())
                except Exception:  # noqa: BLE001 - unreadable: reported below
                    pass
                else:
                    raise
            raise CorruptVersionError(
                f"version {version} of run {run_id!r} cannot be read "
                f"({type(exc).__name__}: {exc})",
                version=version,
                array=None,
            ) from exc
        checksums = custom.get(_CHECKSUM_KEY, {}).get("checksums")
        if checksums is not None:
            _verify(tree, checksums, run_id, version)
        return tree

    def _enqueue(
        self,
        tree: Any,
        *,
        version: int | None,
        entry: dict[str, Any],
        parent: int | str | None,
        journal_position: int | None = None,
    ) -> int:
        run = self._require_run()
        entry.setdefault("timestamp", _now())
        with run.alloc_lock:
            if journal_position is None:
                journal_position = run.position_high
            if version is None:
                version = run.next_version
            elif isinstance(version, bool) or not isinstance(version, int):
                raise ValueError(f"version must be an int, got {version!r}")
            elif version < run.next_version:
                raise ValueError(
                    f"version must be >= {run.next_version} (numbers only grow "
                    f"within a run), got {version}"
                )
            if version >= run.reserved_end:
                # Durable before the number is handed out: a crash after this
                # never lets a later process reuse it for other weights.
                _write_counter(run.counter_path, version + _RESERVE_BLOCK)
                run.reserved_end = version + _RESERVE_BLOCK
            head = {
                "version": version,
                "parent_version": run.head if parent == "head" else parent,
                "event": entry.pop("event"),
                "timestamp": entry.pop("timestamp"),
                "journal_position": journal_position,
            }
            document = _jsonable({**head, **entry})
            run.position_high = max(run.position_high, journal_position)
            run.next_version = version + 1
            run.head = version
            work = functools.partial(self._write_version, run, version, tree, document)
            if self._writer is None:
                job = WriteJob(work)
                job.run()
            else:
                job = self._writer.submit(work)
                run.pending = [j for j in run.pending if not j.done()]
                run.pending.append(job)
        if self._writer is None:
            self._raise_write_error(run)
        return version

    @staticmethod
    def _discard_version(run: _Run, version: int) -> None:
        name = f"{WEIGHTS_PREFIX}{version}"
        run.debris.add(version)
        with run.io_lock:
            left = False
            for entry in os.listdir(run.run_dir):
                if entry == name or entry.startswith(name + "."):
                    try:
                        shutil.rmtree(os.path.join(run.run_dir, entry))
                    except OSError:
                        left = True
            if not left:
                run.debris.discard(version)
            with contextlib.suppress(Exception):
                run.manager.reload()

    def _raise_write_error(self, run: _Run) -> None:
        if run.error is None:
            return
        # Let the remaining queued writes of this run drain (they are skipped), so
        # the run's state is settled before the caller continues.
        for job in list(run.pending):
            job.wait()
        with run.alloc_lock:
            error, failed = run.error, list(run.failed_versions)
            run.error = None
            run.failed_versions = []
            run.pending = []
            with run.meta_lock:
                run.head = run.meta["current_version"]
        paths = ", ".join(
            os.path.join(run.run_dir, f"{WEIGHTS_PREFIX}{v}") for v in failed
        )
        raise CheckpointWriteError(
            f"writing checkpoint(s) {failed} of run {run.run_id!r} "
            f"(network {self.network_id!r}) to {paths} failed: {error!r}; the "
            f"run continues from version {run.head} (later saves still work)"
        ) from error

    def _write_version(
        self, run: _Run, version: int, tree: Any, entry: dict[str, Any]
    ) -> None:
        """Runs on the writer thread: checkpoint, then metadata, then retention."""
        if run.error is not None:
            run.failed_versions.append(version)
            return
        path = os.path.join(run.run_dir, f"{WEIGHTS_PREFIX}{version}")
        for old in sorted(run.debris):
            self._discard_version(run, old)
        try:
            custom = {_CHECKSUM_KEY: {"checksums": _checksums(tree), "entry": entry}}
            with run.io_lock:
                saved = run.manager.save(
                    version,
                    args=ocp.args.StandardSave(tree),
                    force=True,
                    custom_metadata=custom,
                )
                run.manager.wait_until_finished()
                if not saved:
                    raise RuntimeError(f"Orbax declined to save version {version}")
                on_disk = sorted(run.manager.all_steps())
            keep = self._config.store.max_to_keep
            kept = on_disk if keep is None else on_disk[-keep:]
            with run.meta_lock:
                listed = set(run.meta["versions"])
                kept_set = set(kept)
                record = {
                    "entry": entry,
                    "current_version": version,
                    "add": [v for v in kept if v not in listed],
                    "drop": [v for v in run.meta["versions"] if v not in kept_set],
                    "updated_at": _now(),
                }
                run.commit([record])
            with run.io_lock:
                for old in on_disk:
                    if old not in kept:
                        run.manager.delete(old)
                _remove_failed_saves(run.run_dir)
        except BaseException as exc:
            # Leave nothing of the failed version behind: the space goes back to
            # the disk at once, and the metadata and the folders keep agreeing.
            self._discard_version(run, version)
            exc.add_note(f"while writing {path}")
            run.error = exc
            run.failed_versions.append(version)
            # Also logged, in case the process ends before the caller calls again.
            _LOG.error(
                "writing version %d of run %s failed", version, run.run_id, exc_info=exc
            )
            raise
