"""Run metadata as an append-only, checksummed record file.

A run's metadata (see :meth:`RunStore.metadata`) is a header (network, run id,
creation time, where the run started from) and a state that every save changes
(``entries``, ``versions``, ``current_version``, ``updated_at``, ``warnings``).
The header is ``run_metadata.json``, written once. The state is
``run_metadata.records``: one line per change, ::

    <crc32 of the JSON bytes, 8 hex digits> <JSON object>\\n

so a save writes its own line only (O(1) bytes, not the whole history). A record
may carry any of

* ``entry``: a version's metadata entry, appended to ``entries``;
* ``warning``: appended to ``warnings``;
* ``versions``: replaces the list of versions on disk;
* ``add`` / ``drop``: versions added to / removed from that list;
* ``current_version``, ``updated_at``: replace those fields.

The state is the records applied in file order. A process killed in the middle
of an append leaves a torn last line (no newline, or a checksum that does not
match); reading drops it, and opening the file for writing truncates it. A bad
line followed by a good one is damage, not a crash, and is an error. The file is
rewritten whole (atomically: temporary file, fsync, rename) only to compact it,
when it holds many more records than the state has entries.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# Bound here as module names, so tests can patch this module's writes alone.
from ol_jax.store._journal import _fsync_dir, _write_all

__all__ = [
    "CorruptMetadataError",
    "MetadataLog",
    "apply_records",
    "decode_records",
    "encode_record",
    "snapshot_records",
]

_LOG = logging.getLogger(__name__)
_LINE = re.compile(rb"([0-9a-f]{8}) (\{.*\})")
# The state fields the records hold; everything else in the metadata is header.
STATE_KEYS = ("current_version", "versions", "updated_at", "entries", "warnings")


class CorruptMetadataError(RuntimeError):
    """A run's metadata record file is damaged before its last record.

    Attributes:
      path: the record file.
      line: the 1-based number of the first bad line.
    """

    def __init__(self, message: str, *, path: str, line: int):
        super().__init__(message)
        self.path = path
        self.line = line


def encode_record(record: Mapping[str, Any]) -> bytes:
    """One record as a line: ``<crc32 hex> <json>\\n`` (ASCII, no inner newline).

    Raises:
      ValueError: ``record`` is not a JSON object of finite values.
    """
    if not isinstance(record, Mapping):
        raise ValueError(f"a record must be a mapping, got {type(record).__name__}")
    body = json.dumps(record, separators=(",", ":"), allow_nan=False).encode("ascii")
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _decode_line(line: bytes) -> dict[str, Any] | None:
    match = _LINE.fullmatch(line)
    if match is None or int(match.group(1), 16) != zlib.crc32(match.group(2)):
        return None
    try:
        record = json.loads(match.group(2))
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def decode_records(data: bytes, *, path: str = "<records>") -> tuple[list[dict], int]:
    """The intact records of a record file's bytes.

    Args:
      data: the file's contents.
      path: the file's name, for errors.

    Returns:
      ``(records, good_end)``: every record before the torn tail (an unfinished
      last line, or bad lines with no good line after them) and the byte offset
      where that tail starts (``len(data)`` when there is none).

    Raises:
      CorruptMetadataError: a bad line is followed by a good one.
    """
    records: list[dict] = []
    pos = 0
    bad: tuple[int, int] | None = None  # (line number, offset) of the first bad line
    number = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            break  # an unfinished last line: torn
        number += 1
        record = _decode_line(data[pos:end])
        if record is None:
            if bad is None:
                bad = (number, pos)
        elif bad is not None:
            raise CorruptMetadataError(
                f"metadata record file {path} is damaged at line {bad[0]} (bad "
                f"checksum or format) but has intact records after it; restore "
                f"the file or remove the damaged line",
                path=path,
                line=bad[0],
            )
        else:
            records.append(record)
        pos = end + 1
    good_end = bad[1] if bad is not None else pos
    return records, good_end


def apply_records(state: dict[str, Any], records: Iterable[Mapping[str, Any]]) -> None:
    """Applies ``records`` in order to ``state`` (a metadata dict), in place.

    ``entries`` and ``versions`` must be present in ``state``; ``warnings`` is
    created by the first warning record.
    """
    versions = list(state["versions"])
    version_set = set(versions)
    in_order = True  # `versions` is the sorted `version_set`
    for record in records:
        if "entry" in record:
            state["entries"].append(record["entry"])
        if "warning" in record:
            state.setdefault("warnings", []).append(record["warning"])
        if "versions" in record:
            versions = list(record["versions"])
            version_set = set(versions)
            in_order = versions == sorted(version_set)
        drop = record.get("drop") or ()
        if drop:
            version_set.difference_update(drop)
            in_order = False
        for v in record.get("add") or ():
            if v in version_set:
                continue
            # Saves add versions in increasing order: appending keeps the list
            # sorted without a sort per record.
            if in_order and versions and v < versions[-1]:
                in_order = False
            version_set.add(v)
            if in_order:
                versions.append(v)
        for key in ("current_version", "updated_at"):
            if key in record:
                state[key] = record[key]
    state["versions"] = versions if in_order else sorted(version_set)


def snapshot_records(state: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Records that rebuild ``state`` from an empty one (a compacted file)."""
    records: list[dict[str, Any]] = [
        {
            "versions": list(state["versions"]),
            "current_version": state["current_version"],
            "updated_at": state["updated_at"],
        }
    ]
    records.extend({"entry": entry} for entry in state["entries"])
    records.extend({"warning": warning} for warning in state.get("warnings", ()))
    return records


class MetadataLog:
    """A run's record file, open for appending (one writer: the run is locked).

    Use :meth:`open` (an existing file) or :meth:`create` (a new or compacted
    one); both leave the file ending in a complete record.

    Attributes:
      path: the record file.
      records: how many records the file holds.
      size: its size in bytes (every byte is part of an intact record).
    """

    def __init__(self, path: str, fd: int, records: int, size: int):
        self.path = path
        self._fd = fd
        self.records = records
        self.size = size

    @staticmethod
    def read(path: str) -> list[dict[str, Any]]:
        """The intact records of ``path`` (see :func:`decode_records`).

        Raises:
          FileNotFoundError: no such file.
          CorruptMetadataError: damage before the last record.
        """
        with open(path, "rb") as f:
            data = f.read()
        return decode_records(data, path=path)[0]

    @classmethod
    def open(cls, path: str) -> tuple[MetadataLog, list[dict[str, Any]]]:
        """Opens an existing record file, dropping a torn tail.

        Returns:
          The log and the file's records.

        Raises:
          FileNotFoundError: no such file.
          CorruptMetadataError: damage before the last record.
        """
        with open(path, "rb") as f:
            data = f.read()
        records, good_end = decode_records(data, path=path)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        if good_end < len(data):
            _LOG.warning(
                "metadata records %s: dropping %d bytes of a torn last record "
                "after %d intact ones",
                path,
                len(data) - good_end,
                len(records),
            )
            try:
                os.ftruncate(fd, good_end)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                raise
        return cls(path, fd, len(records), good_end), records

    @classmethod
    def create(cls, path: str, records: Sequence[Mapping[str, Any]]) -> MetadataLog:
        """Writes ``records`` as the whole file, atomically (temporary file, fsync,
        rename, directory fsync): readers see the old file or the new one.

        Raises:
          OSError: the write failed (the temporary file is removed).
        """
        data = b"".join(encode_record(r) for r in records)
        directory = os.path.dirname(path)
        tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        _fsync_dir(directory)
        return cls(
            path, os.open(path, os.O_WRONLY | os.O_APPEND), len(records), len(data)
        )

    def append(self, records: Sequence[Mapping[str, Any]]) -> int:
        """Appends ``records`` and returns once they are on disk (write + fdatasync).

        On a failure the file is cut back to its previous end, so a later
        append never lands behind a torn record.

        Returns:
          The number of bytes written.

        Raises:
          OSError: the write or sync failed; none of ``records`` is kept.
        """
        data = b"".join(encode_record(r) for r in records)
        try:
            if os.fstat(self._fd).st_size != self.size:
                # An earlier failed append could not be cut back: cut it now.
                os.ftruncate(self._fd, self.size)
            _write_all(self._fd, data)
            os.fdatasync(self._fd)
        except BaseException:
            try:
                os.ftruncate(self._fd, self.size)
            except OSError as exc:
                _LOG.error(
                    "could not cut %s back after a failed write: %s", self.path, exc
                )
            raise
        self.size += len(data)
        self.records += len(records)
        return len(data)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
