"""A real teacher: a Claude model answering through the Anthropic Messages API.

``AnthropicTeacher(model)(query)`` sends ``query`` as one user message and returns
the text of the reply. Everything that is not a usable answer raises
:class:`~ol_jax.feedback.TeacherError`, so a learner learns nothing from it: an
HTTP error status, a connection failure, a timeout, a reply that is not a
message, a refusal, and a reply without text (empty, whitespace only, or only
non-text blocks such as ``tool_use``).

References:
  Anthropic, `Messages API <https://docs.anthropic.com/en/api/messages>`_.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ol_jax.feedback._anthropic_client import (
    DEFAULT_ANTHROPIC_MODEL,
    MessagesClient,
    message_text,
)
from ol_jax.feedback._teacher import TeacherError


class AnthropicTeacher:
    """A :class:`~ol_jax.feedback.Teacher` backed by the official ``anthropic`` SDK.

    Args:
      model: the Claude model name sent with every request.
      api_key: the API key; read from ``ANTHROPIC_API_KEY`` if None.
      base_url: API base URL (another proxy, or a local test server); the SDK
        default if None.
      timeout: request timeout in seconds, > 0.
      max_retries: the SDK's own retries on connection errors, 429 and 5xx, >= 0.
      max_tokens: answer length limit, >= 1.
      system: an optional system prompt sent with every query.

    Raises:
      ValueError: no API key (argument or environment), an empty model name, or
        a bad timeout, retry count or ``max_tokens``.

    Examples:
      >>> teacher = AnthropicTeacher("claude-sonnet-4-6")  # doctest: +SKIP
      >>> teacher("What is the capital of France?")  # doctest: +SKIP
      'Paris.'

    References:
      Anthropic, `Messages API <https://docs.anthropic.com/en/api/messages>`_.
    """

    def __init__(
        self,
        model: str = DEFAULT_ANTHROPIC_MODEL,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        max_tokens: int = 512,
        system: str | None = None,
    ):
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"model must be a non-empty string, got {model!r}")
        if (
            isinstance(max_tokens, bool)
            or not isinstance(max_tokens, int)
            or (max_tokens < 1)
        ):
            raise ValueError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
        self._client = MessagesClient(
            error=TeacherError,
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
        )
        self.model = model
        self.max_tokens = max_tokens
        self.system = system

    @property
    def base_url(self) -> str:
        """The base URL requests go to."""
        return self._client.base_url

    def _request(self, query: str) -> dict[str, Any]:
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"query must be a non-empty string, got {query!r}")
        request: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "messages": [{"role": "user", "content": query}],
        }
        if self.system:
            request["system"] = self.system
        return request

    def stream(self, query: str) -> Iterator[str]:
        """The teacher's answer to ``query`` in pieces, as the API streams it.

        Raises:
          ValueError: ``query`` is not a non-empty string (nothing is sent).
          TeacherError: the request failed or timed out, the stream broke, or
            the answer is a refusal.
        """
        yield from self._client.stream_text(**self._request(query))

    def forward(self, body: dict[str, Any]) -> tuple[int, bytes]:
        """Sends a whole Messages API request (tools, images, ...) as it is, with
        this teacher's model; returns (status, reply body).

        Raises:
          TeacherError: the request failed, timed out or had an error status.
        """
        return self._client.forward({**body, "model": self.model})

    def forward_stream(self, body: dict[str, Any]) -> Iterator[bytes]:
        """:meth:`forward` of a ``stream: true`` request: the event stream's bytes."""
        yield from self._client.forward_stream({**body, "model": self.model})

    def __call__(self, query: str) -> str:
        """The teacher's answer to ``query``.

        Raises:
          ValueError: ``query`` is not a non-empty string (nothing is sent).
          TeacherError: the request failed or timed out, or the reply is
            malformed, a refusal, or has no text.
        """
        response = self._client.create(**self._request(query))
        stop_reason = getattr(response, "stop_reason", None)
        if stop_reason == "refusal":
            raise TeacherError(f"{self.model} refused to answer the query")
        text = message_text(response)
        if not text.strip():
            kinds = [getattr(block, "type", None) for block in response.content]
            raise TeacherError(
                f"{self.model} gave no text answer (content block types {kinds}, "
                f"stop_reason {stop_reason!r})"
            )
        return text

    def __repr__(self) -> str:
        return f"AnthropicTeacher({self.model!r}, base_url={self.base_url!r})"
