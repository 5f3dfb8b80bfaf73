"""One place for talking to the Anthropic Messages API through the official SDK.

:class:`MessagesClient` holds what every API-backed rater or teacher shares: the
key (argument or ``ANTHROPIC_API_KEY``), the SDK client with its base URL, timeout
and retries, and the mapping of every SDK failure (HTTP status, connection error,
timeout, unparseable reply) to the caller's own error type, so a learner only ever
sees :class:`~ol_jax.feedback.RaterError` or :class:`~ol_jax.feedback.TeacherError`.

References:
  Anthropic, `Messages API <https://docs.anthropic.com/en/api/messages>`_ and
  `Errors <https://docs.anthropic.com/en/api/errors>`_.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

DEFAULT_ANTHROPIC_MODEL = "claude-sonnet-4-6"
API_KEY_ENV = "ANTHROPIC_API_KEY"


def message_text(response: Any) -> str:
    """The concatenated ``text`` blocks of a Messages API response (may be ``""``)."""
    texts = (
        getattr(block, "text", None)
        for block in response.content
        if getattr(block, "type", None) == "text"
    )
    return "".join(text for text in texts if isinstance(text, str))


class MessagesClient:
    """An ``anthropic.Anthropic`` client whose failures raise ``error``.

    Args:
      error: the exception type raised for any failed request or unusable reply.
      api_key: the API key; read from ``ANTHROPIC_API_KEY`` if None.
      base_url: API base URL (a proxy or a local test server); the SDK default if
        None.
      timeout: request timeout in seconds, > 0.
      max_retries: the SDK's own retries on connection errors, 429 and 5xx, >= 0.

    Raises:
      ValueError: no API key (argument or environment), a timeout that is not a
        positive finite number, or a negative retry count.
    """

    def __init__(
        self,
        *,
        error: type[Exception],
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
    ):
        import anthropic  # an edge dependency: imported only when a client is made

        if not (isinstance(timeout, int | float) and math.isfinite(timeout)) or (
            timeout <= 0
        ):
            raise ValueError(f"timeout must be a positive number of s, got {timeout!r}")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(
                f"max_retries must be an integer >= 0, got {max_retries!r}"
            )
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        if not key:
            raise ValueError(
                f"an Anthropic API key is required: pass api_key=... or set "
                f"{API_KEY_ENV} (got none)"
            )
        self.error = error
        self.timeout = float(timeout)
        self._anthropic = anthropic
        self._client = anthropic.Anthropic(
            api_key=key, base_url=base_url, timeout=timeout, max_retries=max_retries
        )

    @property
    def base_url(self) -> str:
        """The base URL requests go to."""
        return str(self._client.base_url)

    def stream_text(self, **request: Any) -> Iterator[str]:
        """``messages.stream(**request)``: the answer's text pieces as they arrive.

        Every failure (before or during the stream) is raised as ``self.error``;
        so is a stream that ends in a refusal.

        Yields:
          The text of each ``text_delta`` event.
        """
        sdk = self._anthropic
        try:
            with self._client.messages.stream(**request) as stream:
                for event in stream:
                    if getattr(event, "type", None) != "content_block_delta":
                        continue
                    delta = event.delta
                    if getattr(delta, "type", None) == "text_delta":
                        yield delta.text
                stop_reason = stream.get_final_message().stop_reason
        except sdk.APITimeoutError as exc:
            raise self.error(
                f"Anthropic API request timed out after {self.timeout:g} s"
            ) from exc
        except sdk.APIStatusError as exc:
            raise self.error(
                f"Anthropic API request failed with HTTP {exc.status_code}: {exc}"
            ) from exc
        except sdk.APIError as exc:
            raise self.error(f"Anthropic API request failed: {exc}") from exc
        except (AttributeError, TypeError, ValueError, KeyError) as exc:
            raise self.error(f"malformed Anthropic API stream: {exc!r}") from exc
        if stop_reason == "refusal":
            raise self.error("the model refused to answer the query")

    def forward(self, body: dict[str, Any]) -> tuple[int, bytes]:
        """Sends a Messages API request body as it is; (status, reply body).

        Fields this SDK does not name go through ``extra_body`` unchanged. A
        ``stream: true`` body is read to its end (the reply is the event
        stream's bytes); use :meth:`forward_stream` to pass it on as it comes.

        Raises:
          ``self.error``: the request failed, timed out or had an error status.
        """
        with self._forwarded(body) as response:
            return response.status_code, response.read()

    def forward_stream(self, body: dict[str, Any]) -> Iterator[bytes]:
        """:meth:`forward` of a ``stream: true`` body: its bytes as they arrive."""
        with self._forwarded(body) as response:
            yield from response.iter_bytes()

    def _forwarded(self, body: dict[str, Any]):
        import contextlib

        sdk = self._anthropic
        known = ("model", "max_tokens", "messages")
        extra = {k: v for k, v in body.items() if k not in known and k != "stream"}

        @contextlib.contextmanager
        def opened():
            try:
                with self._client.messages.with_streaming_response.create(
                    **{k: body[k] for k in known if k in body},
                    stream=bool(body.get("stream", False)),
                    extra_body=extra,
                ) as response:
                    yield response
            except sdk.APITimeoutError as exc:
                raise self.error(
                    f"Anthropic API request timed out after {self.timeout:g} s"
                ) from exc
            except sdk.APIStatusError as exc:
                raise self.error(
                    f"Anthropic API request failed with HTTP {exc.status_code}"
                ) from exc
            except sdk.APIError as exc:
                raise self.error(f"Anthropic API request failed: {exc}") from exc

        return opened()

    def create(self, **request: Any) -> Any:
        """``messages.create(**request)``; every failure raised as ``self.error``.

        Returns:
          The SDK's ``Message``.
        """
        sdk = self._anthropic
        try:
            response = self._client.messages.create(**request)
            # A reply that is JSON but not a message still parses loosely; touch
            # the content here so a malformed reply fails inside this mapping.
            content = response.content
        except sdk.APITimeoutError as exc:
            raise self.error(
                f"Anthropic API request timed out after {self.timeout:g} s"
            ) from exc
        except sdk.APIStatusError as exc:
            raise self.error(
                f"Anthropic API request failed with HTTP {exc.status_code}: {exc}"
            ) from exc
        except sdk.APIError as exc:
            raise self.error(f"Anthropic API request failed: {exc}") from exc
        except (AttributeError, TypeError, ValueError) as exc:
            raise self.error(f"malformed Anthropic API reply: {exc!r}") from exc
        if not isinstance(content, list):
            raise self.error(
                "malformed Anthropic API reply: content must be a list of blocks, "
                f"got {content!r:.80}"
            )
        return response
