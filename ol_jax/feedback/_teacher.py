"""The teacher contract: a stronger model that answers a query with text.

A teacher is any callable ``teacher(query) -> answer``. A failed answer (network
error, timeout, refusal, malformed reply) raises :class:`TeacherError`, and a
learner must learn nothing from it.
"""

from typing import Protocol, runtime_checkable


class TeacherError(RuntimeError):
    """A teacher could not produce an answer (request failed, timed out, bad reply)."""


@runtime_checkable
class Teacher(Protocol):
    """Anything that answers a text query with a text answer."""

    def __call__(self, query: str) -> str:
        """Returns the teacher's answer; raises :class:`TeacherError` on failure."""
        ...
