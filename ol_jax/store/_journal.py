"""An append-only, checksummed, group-committed journal of feedback items.

Each record is one frame::

    u32 payload length | u32 crc32(seq || payload) | u64 seq | payload

and the payload is a JSON object whose numpy arrays are stored as raw bytes after
it (``u32 json length | json | array bytes``). A process killed in the middle of a
write leaves a torn last frame: its length runs past the end of the file or its
checksum does not match, and opening the journal drops it (the way SQLite's WAL
and LevelDB's log recover).

:meth:`FeedbackJournal.append` returns once its record is on disk
(``durability="sync"``: write + ``fdatasync``). Callers arriving while one
``fdatasync`` is in flight join the next batch, whose leader writes and syncs all
of them at once (group commit), so N concurrent callers cost far fewer than N
syncs. With ``durability="async"`` a background thread does the commits and
``append`` returns at once. Either way at most ``max_pending`` records wait in
memory; further callers block (back-pressure) instead of growing a queue.

Committed records are handed, in sequence order, to the consumer set with
:meth:`FeedbackJournal.set_consumer` (a learner's update queue), so a learner only
ever applies feedback that is already durable (the write-ahead rule).
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

__all__ = [
    "FeedbackJournal",
    "JournalWriteError",
    "decode_payload",
    "encode_payload",
    "read_frames",
]

_LOG = logging.getLogger(__name__)
_HEADER = struct.Struct("<IIQ")
_U32 = struct.Struct("<I")
# A frame longer than this is a corrupt length field, not a record.
_MAX_PAYLOAD = 1 << 30
_ARRAY_KEY = "__ndarray__"

Durability = Literal["sync", "async"]


class JournalWriteError(RuntimeError):
    """A journal write or sync failed (e.g. the disk is full); nothing was kept.

    Attributes:
      path: the journal file.
    """

    def __init__(self, message: str, *, path: str):
        super().__init__(message)
        self.path = path


# ------------------------------------------------------------------ payloads


def encode_payload(record: Mapping[str, Any]) -> bytes:
    """``record`` (JSON-like, numpy arrays allowed at any depth) as payload bytes.

    Raises:
      ValueError: a value is not JSON-like, or a float is not finite.
    """
    blobs: list[bytes] = []
    offset = 0

    def convert(value: Any, where: str) -> Any:
        nonlocal offset
        if (
            hasattr(value, "__array__")
            and hasattr(value, "shape")
            and (not isinstance(value, np.generic))
        ):
            array = np.asarray(value)  # (ascontiguousarray would make 0-d 1-d)
            if array.dtype.kind not in "biuf" and str(array.dtype) != "bfloat16":
                raise ValueError(f"{where} must be a numeric array, got {array.dtype}")
            data = array.tobytes()
            blobs.append(data)
            spec = [str(array.dtype), list(array.shape), offset, len(data)]
            offset += len(data)
            return {_ARRAY_KEY: spec}
        if isinstance(value, Mapping):
            return {str(k): convert(v, f"{where}.{k}") for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [convert(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, bool | np.bool_):
            return bool(value)
        if isinstance(value, int | np.integer):
            return int(value)
        if isinstance(value, float | np.floating):
            return float(value)
        if isinstance(value, np.generic):
            raise ValueError(f"{where} must be a numeric value, got {value.dtype}")
        if value is None or isinstance(value, str):
            return value
        raise ValueError(
            f"{where} must be JSON-like or a numpy array, got {type(value).__name__}"
        )

    head = json.dumps(
        convert(record, "record"), separators=(",", ":"), allow_nan=False
    ).encode()
    return _U32.pack(len(head)) + head + b"".join(blobs)


def decode_payload(payload: bytes) -> dict[str, Any]:
    """The record :func:`encode_payload` wrote (arrays come back as numpy)."""
    (n,) = _U32.unpack_from(payload, 0)
    blob = memoryview(payload)[4 + n :]

    def restore(value: Any) -> Any:
        if isinstance(value, dict):
            if _ARRAY_KEY in value and len(value) == 1:
                dtype, shape, start, size = value[_ARRAY_KEY]
                if dtype == "bfloat16":
                    import ml_dtypes

                    dtype = ml_dtypes.bfloat16
                flat = np.frombuffer(blob[start : start + size], dtype=dtype)
                return flat.reshape(shape).copy()
            return {k: restore(v) for k, v in value.items()}
        if isinstance(value, list):
            return [restore(v) for v in value]
        return value

    return restore(json.loads(bytes(payload[4 : 4 + n])))


def _frame(seq: int, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(struct.pack("<Q", seq)))
    return _HEADER.pack(len(payload), crc, seq) + payload


def read_frames(path: str) -> tuple[list[tuple[int, bytes]], int, int]:
    """The intact frames of a journal file.

    Returns:
      ``(frames, good_end, size)``: ``(seq, payload)`` of every frame up to the
      first torn or corrupt one, the byte offset where that one starts (the end
      of the intact prefix) and the file's size.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return [], 0, 0
    frames: list[tuple[int, bytes]] = []
    pos, last_seq = 0, -1
    view = memoryview(data)
    while pos + _HEADER.size <= len(data):
        length, crc, seq = _HEADER.unpack_from(data, pos)
        end = pos + _HEADER.size + length
        if length > _MAX_PAYLOAD or end > len(data) or seq <= last_seq:
            break
        payload = view[pos + _HEADER.size : end]
        if zlib.crc32(payload, zlib.crc32(struct.pack("<Q", seq))) != crc:
            break
        frames.append((seq, bytes(payload)))
        last_seq, pos = seq, end
    return frames, pos, len(data)


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a module function so tests can
    inject a failing disk)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Batch:
    """Records that are committed together by one write and one sync."""

    __slots__ = ("entries", "done", "error")

    def __init__(self):
        self.entries: list[tuple[int, bytes, Any]] = []
        self.done = False
        self.error: BaseException | None = None


class FeedbackJournal:
    """An append-only journal file of feedback records with group commit.

    Opening an existing file drops a torn tail (truncates the file to its intact
    prefix) and continues the sequence numbers after the last intact record.

    Args:
      path: the journal file (created if missing).
      durability: ``"sync"``: :meth:`append` returns once the record is on disk;
        ``"async"``: it returns at once and a background thread commits (a crash
        may lose the last few records; a failed write is raised by the next
        :meth:`append` or :meth:`flush`).
      max_pending: records that may wait for their commit before :meth:`append`
        blocks, >= 1.

    Examples:
      >>> import tempfile, os
      >>> path = os.path.join(tempfile.mkdtemp(), "feedback.journal")
      >>> with FeedbackJournal(path) as journal:
      ...     journal.append({"id": "g0", "rating": 7})
      0
      >>> [r["rating"] for r in FeedbackJournal.read(path)]
      [7]
    """

    def __init__(
        self, path: str, *, durability: Durability = "sync", max_pending: int = 1024
    ):
        if durability not in ("sync", "async"):
            raise ValueError(
                f"durability must be 'sync' or 'async', got {durability!r}"
            )
        if isinstance(max_pending, bool) or not isinstance(max_pending, int):
            raise ValueError(f"max_pending must be an int >= 1, got {max_pending!r}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self._path = os.path.abspath(path)
        self._durability = durability
        self._max_pending = max_pending
        frames, good_end, size = read_frames(self._path)
        existed = os.path.exists(self._path)
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if good_end < size:
            _LOG.warning(
                "feedback journal %s: dropping %d bytes of a torn or corrupt tail "
                "after %d intact records",
                self._path,
                size - good_end,
                len(frames),
            )
            os.ftruncate(self._fd, good_end)
            os.fsync(self._fd)
        if not existed:
            _fsync_dir(os.path.dirname(self._path))
        self._durable_end = good_end
        self._next_seq = frames[-1][0] + 1 if frames else 0
        self._durable_seq = self._next_seq - 1
        self._cond = threading.Condition()
        self._open_batch = _Batch()
        self._pending = 0
        self._committing = False
        self._closed = False
        self._async_error: JournalWriteError | None = None
        self._consumer: Callable[[list[tuple[int, Any]]], None] | None = None
        self._syncs = 0
        self._flusher: threading.Thread | None = None
        if durability == "async":
            self._flusher = threading.Thread(
                target=self._flush_loop, name="ol_jax-journal", daemon=True
            )
            self._flusher.start()

    # ------------------------------------------------------------------ reading

    @staticmethod
    def read(path: str, start: int = 0) -> list[dict[str, Any]]:
        """The intact records of a journal file with ``seq >= start``, in order.

        Each is the appended record with its sequence number under ``"seq"``.
        """
        return [
            decode_payload(payload) | {"seq": seq}
            for seq, payload in read_frames(path)[0]
            if seq >= start
        ]

    def records(self, start: int = 0) -> list[dict[str, Any]]:
        """The durable records with ``seq >= start`` (see :meth:`read`)."""
        with self._cond:
            end = self._durable_end
        frames, _, _ = read_frames(self._path)
        out, pos = [], 0
        for seq, payload in frames:
            pos += _HEADER.size + len(payload)
            if pos > end:
                break
            if seq >= start:
                out.append(decode_payload(payload) | {"seq": seq})
        return out

    # ------------------------------------------------------------------ properties

    @property
    def path(self) -> str:
        return self._path

    @property
    def durability(self) -> Durability:
        return self._durability

    @property
    def next_seq(self) -> int:
        """The sequence number the next record will get."""
        with self._cond:
            return self._next_seq

    @property
    def syncs(self) -> int:
        """How many ``fdatasync`` calls committed records so far (group commit
        makes this smaller than the number of records)."""
        return self._syncs

    def set_consumer(self, consumer: Callable[[list[tuple[int, Any]]], None]) -> None:
        """Registers who receives committed records: ``consumer([(seq, item),
        ...])`` in sequence order, called from the committing thread.

        ``item`` is what :meth:`append` was given as ``item`` (the record itself
        by default). A consumer that blocks (a full queue) blocks the commits
        behind it: back-pressure.
        """
        self._consumer = consumer

    # ------------------------------------------------------------------ writing

    def append(self, record: Mapping[str, Any], *, item: Any = None) -> int:
        """Appends one record; with ``durability="sync"``, returns once it is on disk.

        Args:
          record: JSON-like fields and numpy arrays (see :func:`encode_payload`);
            the key ``"seq"`` is reserved.
          item: what the consumer receives for this record (default: ``record``).

        Returns:
          The record's sequence number.

        Raises:
          JournalWriteError: the write or sync failed (sync mode: this record is
            not in the journal; async mode: an earlier record was lost).
          ValueError: the record is not JSON-like.
          RuntimeError: the journal is closed.
        """
        if "seq" in record:
            raise ValueError("record key 'seq' is reserved for the sequence number")
        payload = encode_payload(record)
        with self._cond:
            self._raise_async_error()
            while self._pending >= self._max_pending and not self._closed:
                self._cond.wait()
            if self._closed:
                raise RuntimeError(f"feedback journal {self._path} is closed")
            seq = self._next_seq
            self._next_seq += 1
            batch = self._open_batch
            batch.entries.append(
                (seq, _frame(seq, payload), record if item is None else item)
            )
            self._pending += 1
            self._cond.notify_all()
        if self._durability == "sync":
            self._commit(batch)
        return seq

    def append_many(self, records: Sequence[Mapping[str, Any]]) -> list[int]:
        """Appends several records as one commit (one write and one sync in sync
        mode); returns their sequence numbers. Each is its own item for the
        consumer. Same errors as :meth:`append`; on a failure none is kept."""
        payloads = []
        for record in records:
            if "seq" in record:
                raise ValueError("record key 'seq' is reserved for the sequence number")
            payloads.append((encode_payload(record), record))
        if not payloads:
            return []
        with self._cond:
            self._raise_async_error()
            while self._pending and self._pending + len(payloads) > self._max_pending:
                if self._closed:
                    break
                self._cond.wait()
            if self._closed:
                raise RuntimeError(f"feedback journal {self._path} is closed")
            batch = self._open_batch
            seqs = []
            for payload, record in payloads:
                seq = self._next_seq
                self._next_seq += 1
                batch.entries.append((seq, _frame(seq, payload), record))
                seqs.append(seq)
            self._pending += len(payloads)
            self._cond.notify_all()
        if self._durability == "sync":
            self._commit(batch)
        return seqs

    def flush(self) -> None:
        """Blocks until every record appended so far is committed (or failed).

        Raises:
          JournalWriteError: an asynchronous commit failed.
        """
        with self._cond:
            batch = self._open_batch
            self._cond.notify_all()
            while not batch.done if batch.entries else self._committing:
                self._cond.wait()
            self._raise_async_error()

    def close(self) -> None:
        """Commits what is waiting, stops the background thread, closes the file."""
        with self._cond:
            if self._closed:
                return
        try:
            self.flush()
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            if self._flusher is not None:
                self._flusher.join()
            os.close(self._fd)

    def __enter__(self) -> FeedbackJournal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _raise_async_error(self) -> None:
        error, self._async_error = self._async_error, None
        if error is not None:
            raise error

    def _commit(self, batch: _Batch) -> None:
        """Waits until ``batch`` is committed, leading the commit when no one is."""
        with self._cond:
            while not batch.done:
                if not self._committing:
                    self._lead()
                else:
                    self._cond.wait()
            if batch.error is not None:
                raise batch.error

    def _lead(self) -> None:
        """Commits the open batch; called with ``_cond`` held, returns with it held."""
        batch = self._open_batch
        self._open_batch = _Batch()
        self._committing = True
        self._cond.release()
        try:
            data = b"".join(frame for _, frame, _ in batch.entries)
            try:
                _write_all(self._fd, data)
                os.fdatasync(self._fd)
                self._syncs += 1
            except OSError as exc:
                batch.error = self._failed(exc, len(batch.entries))
            if batch.error is None:
                self._durable_end += len(data)
                consumer = self._consumer
                if consumer is not None:
                    try:
                        consumer([(seq, item) for seq, _, item in batch.entries])
                    except BaseException as exc:  # noqa: BLE001 - kept for callers
                        _LOG.error("feedback consumer failed", exc_info=exc)
        finally:
            self._cond.acquire()
            self._committing = False
            if batch.error is None and batch.entries:
                self._durable_seq = batch.entries[-1][0]
            batch.done = True
            self._pending -= len(batch.entries)
            self._cond.notify_all()

    def _failed(self, exc: OSError, n: int) -> JournalWriteError:
        # Cut whatever part of the batch reached the file, so a later record is
        # never stored behind a torn one (which a reader would stop at).
        try:
            os.ftruncate(self._fd, self._durable_end)
        except OSError as trunc_exc:
            _LOG.error(
                "could not truncate %s after a failed write",
                self._path,
                exc_info=trunc_exc,
            )
        return JournalWriteError(
            f"writing {n} feedback record(s) to {self._path} failed: {exc}; they "
            f"were not recorded (nothing acknowledged was lost)",
            path=self._path,
        )

    def _flush_loop(self) -> None:
        with self._cond:
            while True:
                while not self._open_batch.entries and not self._closed:
                    self._cond.wait()
                if not self._open_batch.entries:
                    return
                if self._committing:
                    self._cond.wait()
                    continue
                batch = self._open_batch
                self._lead()
                if batch.error is not None:
                    self._async_error = batch.error
                    _LOG.error("%s", batch.error)
