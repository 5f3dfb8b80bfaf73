"""One background thread that performs checkpoint writes in submission order.

An Orbax async save still blocks its caller for tens of milliseconds while earlier
saves are in flight, which is a large fraction of an online update's latency budget.
The :class:`CheckpointWriter` takes that work off the caller: the caller hands it a
closure over a host snapshot and returns at once, unless ``queue_size`` writes are
already waiting, in which case it blocks (back-pressure) rather than dropping one.

One writer may serve many :class:`~ol_jax.store.RunStore` objects (many networks),
so the disk sees one sequential stream of writes.
"""

from __future__ import annotations

import atexit

# Imported first so that its exit hook (which stops thread pools) is registered
# before ours and therefore runs after it: see _close_live_writers.
import concurrent.futures.thread  # noqa: F401
import queue
import threading
import weakref
from collections.abc import Callable

__all__ = ["CheckpointWriter", "WriteJob"]


class WriteJob:
    """A unit of work queued on a :class:`CheckpointWriter`.

    Attributes:
      error: the exception the work raised, or ``None``. Only meaningful once
        :meth:`done` is true.
    """

    __slots__ = ("_fn", "_event", "error")

    def __init__(self, fn: Callable[[], None]):
        self._fn = fn
        self._event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        """Runs the work once, recording (never propagating) its exception."""
        try:
            self._fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            self.error = exc
        finally:
            self._fn = None
            self._event.set()

    def done(self) -> bool:
        """Whether the work has finished (successfully or not)."""
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until the work has finished; returns :meth:`done`."""
        return self._event.wait(timeout)


_STOP = object()


_LIVE_WRITERS: weakref.WeakSet[CheckpointWriter] = weakref.WeakSet()


def _close_live_writers() -> None:
    # The threads are daemons so a forgotten writer cannot hang interpreter exit;
    # the writes already queued are still finished here.
    for writer in list(_LIVE_WRITERS):
        writer.close()


# Orbax writes through thread pools, which refuse work once the interpreter has
# begun shutting down; threading's own exit hooks run before that happens (it is
# how concurrent.futures itself drains), plain `atexit` hooks run after.
getattr(threading, "_register_atexit", atexit.register)(_close_live_writers)


class CheckpointWriter:
    """A single background thread running write jobs in FIFO order.

    ``submit`` blocks while ``queue_size`` jobs are waiting, so a producer faster
    than the disk slows down instead of losing checkpoints. Jobs never propagate
    exceptions into the thread: each :class:`WriteJob` keeps its own error for the
    submitter to re-raise.

    Args:
      queue_size: how many jobs may wait before ``submit`` blocks, >= 1.
      name: the thread's name.

    Examples:
      >>> writer = CheckpointWriter(queue_size=4)
      >>> job = writer.submit(lambda: None)
      >>> writer.flush()
      >>> job.done()
      True
      >>> writer.close()
    """

    def __init__(self, queue_size: int = 8, *, name: str = "ol_jax-checkpoint-writer"):
        if isinstance(queue_size, bool) or not isinstance(queue_size, int):
            raise ValueError(f"queue_size must be an int >= 1, got {queue_size!r}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._submit_lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()
        _LIVE_WRITERS.add(self)

    @property
    def queue_size(self) -> int:
        """Jobs that may wait before :meth:`submit` blocks."""
        return self._queue.maxsize

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def pending(self) -> int:
        """Approximate number of jobs queued and not yet started."""
        return self._queue.qsize()

    def submit(self, fn: Callable[[], None]) -> WriteJob:
        """Queues ``fn`` to run on the writer thread, blocking while the queue is full.

        Args:
          fn: the work; it must not call back into this writer (``submit`` /
            ``flush``), which would deadlock.

        Returns:
          The :class:`WriteJob` to wait on and read the error from.

        Raises:
          RuntimeError: the writer is closed.
        """
        if threading.current_thread() is self._thread:
            raise RuntimeError("CheckpointWriter.submit called from its own thread")
        job = WriteJob(fn)
        with self._submit_lock:
            if self._closed:
                raise RuntimeError("CheckpointWriter is closed")
            self._queue.put(job)
        return job

    def flush(self) -> None:
        """Blocks until every job submitted so far has finished."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("CheckpointWriter.flush called from its own thread")
        self._queue.join()

    def close(self) -> None:
        """Finishes all queued jobs and stops the thread. Idempotent."""
        with self._submit_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join()
        _LIVE_WRITERS.discard(self)

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is _STOP:
                    return
                job.run()  # type: ignore[union-attr]
            finally:
                self._queue.task_done()
