"""Update policy: weights change only between prompts, never during a turn."""

from collections import deque
from collections.abc import Iterable
from typing import Any


class BetweenPromptsPolicy:
    """Queues feedback and releases it for an update only between prompts.

    A model must not change while it is answering: feedback that arrives while
    a prompt is being served (between :meth:`begin_prompt` and
    :meth:`end_prompt`) waits in a FIFO queue; :meth:`drain` hands the queue to
    the learner only when no prompt is in flight. This is host-side bookkeeping
    at the edge of the pure core, so it is a small Python object.

    Args:
      max_queue: the most items kept waiting, ``>= 1``; when full, the oldest
        item is dropped and counted in :attr:`dropped`.

    Examples:
      >>> policy = BetweenPromptsPolicy()
      >>> policy.begin_prompt()
      >>> policy.submit("thumbs_up")
      >>> policy.drain()
      []
      >>> policy.end_prompt()
      >>> policy.drain()
      ['thumbs_up']
    """

    def __init__(self, max_queue: int = 100_000):
        if not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"max_queue must be an int >= 1, got {max_queue!r}")
        self._queue: deque[Any] = deque()
        self._max_queue = max_queue
        self._in_prompt = 0
        self.dropped = 0
        self.deferred = 0

    @property
    def in_prompt(self) -> bool:
        """Whether a prompt is being served now (updates must wait)."""
        return self._in_prompt > 0

    @property
    def pending(self) -> int:
        """Number of queued items."""
        return len(self._queue)

    def peek(self) -> list[Any]:
        """The queued items, oldest first, without removing them."""
        return list(self._queue)

    def begin_prompt(self) -> None:
        """Marks the start of serving a prompt (prompts may nest or overlap)."""
        self._in_prompt += 1

    def end_prompt(self) -> None:
        """Marks the end of serving a prompt."""
        if self._in_prompt == 0:
            raise ValueError("end_prompt called with no prompt in flight, got 0")
        self._in_prompt -= 1

    def submit(self, item: Any) -> None:
        """Queues one item (e.g. a training example from a feedback event)."""
        if self.in_prompt:
            self.deferred += 1
        if len(self._queue) >= self._max_queue:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(item)

    def extend(self, items: Iterable[Any]) -> None:
        """Queues several items in order."""
        for item in items:
            self.submit(item)

    def drain(self, max_items: int | None = None) -> list[Any]:
        """Returns (and removes) up to ``max_items`` queued items, oldest first.

        Returns an empty list while a prompt is in flight: no update may run then.
        """
        if self.in_prompt:
            return []
        n = len(self._queue) if max_items is None else min(max_items, len(self._queue))
        return [self._queue.popleft() for _ in range(n)]
