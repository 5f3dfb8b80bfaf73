"""The Messages API as the proxy speaks it: request validation, answer cuts, events.

Pure functions over bytes, dicts and strings, with no server and no learner:
:func:`parse_messages_request` turns a ``POST /v1/messages`` (or
``/v1/messages/count_tokens``) body into a :class:`MessagesRequest` or raises
:class:`BadRequest` naming the bad field; :func:`cut_answer` applies
``stop_sequences`` and ``max_tokens`` to an answer; :class:`AnswerStream` does the
same to an answer arriving in pieces, emitting only text the final cut keeps, so
a streamed answer assembles to exactly the non-streamed one; :func:`sse_event`
writes one server-sent event.

References:
  Anthropic, `Messages API <https://docs.anthropic.com/en/api/messages>`_,
  `Streaming Messages <https://docs.anthropic.com/en/api/messages-streaming>`_
  and `Errors <https://docs.anthropic.com/en/api/errors>`_.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_JSON_DEPTH",
    "AnswerCut",
    "AnswerStream",
    "BadRequest",
    "MessagesRequest",
    "cut_answer",
    "error_body",
    "json_depth",
    "parse_messages_request",
    "sse_event",
]

#: The largest request body accepted by default, in bytes (1 MB).
MAX_BODY_BYTES = 1_000_000
#: The deepest JSON nesting accepted by default (a Messages request needs ~6).
MAX_JSON_DEPTH = 64
#: The most stop sequences a request may carry, and the longest one in characters.
MAX_STOP_SEQUENCES = 16
MAX_STOP_CHARS = 256

# Fields the proxy honours for a local answer, and fields it accepts and ignores
# because they never change an answer (request metadata, billing tier).
_HONOURED = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "system",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "top_k",
    }
)
_IGNORED = frozenset({"metadata", "service_tier"})
# Keys of a text block that do not change its text.
_TEXT_BLOCK_KEYS = frozenset({"type", "text", "cache_control", "citations"})


class BadRequest(ValueError):
    """A request the proxy refuses; ``status`` and ``error_type`` as in the API."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        error_type: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status = status
        self.error_type = error_type


@dataclasses.dataclass(frozen=True)
class MessagesRequest:
    """The parts of a Messages API request the proxy uses.

    Attributes:
      model: the requested model name (one the config accepts).
      max_tokens: the client's answer length limit in generator tokens (``0`` for
        a ``count_tokens`` body, which has none).
      query: the text of the last user message, stripped.
      texts: every text of the system prompt and the messages, for usage.
      stream: whether server-sent events were asked for.
      stop_sequences: strings that end the answer where they first occur.
      temperature: sampling temperature of a local answer (``None``: greedy).
      top_p: nucleus mass of a local answer (``None``: 1).
      top_k: most probable tokens kept when sampling (``None``: all).
      unsupported: the fields (paths) the proxy cannot honour, e.g. ``tools`` or
        ``messages[0].content[1].type``; a request with any is answered only by
        forwarding it unchanged to a real upstream.
      body: the parsed request, as sent.
    """

    model: str
    max_tokens: int
    query: str
    texts: tuple[str, ...]
    stream: bool = False
    stop_sequences: tuple[str, ...] = ()
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    unsupported: tuple[str, ...] = ()
    body: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def sampled(self) -> bool:
        """Whether a local answer is sampled rather than greedy."""
        return self.temperature is not None and self.temperature > 0


def error_body(error_type: str, message: str, request_id: str) -> dict[str, Any]:
    """An Anthropic error reply: ``{"type": "error", "error": {...}}``."""
    return {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": request_id,
    }


def json_depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0, ``[]`` is 1).

    Iterative, so no value is too deep to measure.
    """
    deepest = 0
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            items = item.values()
        elif isinstance(item, list):
            items = item
        else:
            deepest = max(deepest, depth)
            continue
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in items)
    return deepest


def _check_text(text: str, where: str) -> str:
    """``text`` if it is valid Unicode the tokenizer can take, else a 400."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadRequest(
            f"{where}: the text is not valid Unicode ({e.reason} at character "
            f"{e.start}); send UTF-8 text without lone surrogates"
        ) from None
    return text


def _text_of(content: Any, where: str, unsupported: list[str]) -> str:
    """The text of a ``content`` value: a string or a list of content blocks.

    Blocks that are not text (images, documents, tool results, ...) are listed in
    ``unsupported`` and contribute no text.
    """
    if isinstance(content, str):
        return _check_text(content, where)
    if not isinstance(content, list):
        raise BadRequest(
            f"{where}: expected a string or a list of content blocks, got "
            f"{type(content).__name__}"
        )
    parts = []
    for i, block in enumerate(content):
        here = f"{where}[{i}]"
        if not isinstance(block, dict):
            raise BadRequest(
                f"{here}: expected a content block object, got {type(block).__name__}"
            )
        kind = block.get("type")
        if not isinstance(kind, str):
            raise BadRequest(f"{here}.type: expected a string, got {kind!r}")
        if kind != "text":
            unsupported.append(f"{here}.type ({kind!r} blocks)")
            continue
        extra = sorted(set(block) - _TEXT_BLOCK_KEYS)
        if extra:
            unsupported.append(f"{here}.{extra[0]}")
        text = block.get("text")
        if not isinstance(text, str):
            raise BadRequest(
                f"{here}.text: expected a string, got {type(text).__name__}"
            )
        parts.append(_check_text(text, f"{here}.text"))
    return "\n".join(parts)


def _number(data: dict[str, Any], name: str, lo: float, hi: float) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{name}: expected a number, got {value!r}")
    if not (math.isfinite(value) and lo <= value <= hi):
        raise BadRequest(f"{name}: must be in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def _load(body: bytes, max_depth: int) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except RecursionError:
        # The C decoder recurses once per level; Python's limit stops it cleanly.
        raise BadRequest(
            f"the request body is nested deeper than the limit of {max_depth} levels"
        ) from None
    except (UnicodeDecodeError, ValueError) as e:
        # JSONDecodeError, and ints past Python's digit limit (a ValueError).
        raise BadRequest(f"the request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise BadRequest(
            f"the request body must be a JSON object, got {type(data).__name__}"
        )
    depth = json_depth(data)
    if depth > max_depth:
        raise BadRequest(
            f"the request body is nested {depth} levels deep; the limit is "
            f"{max_depth} levels"
        )
    return data


def parse_messages_request(
    body: bytes,
    *,
    models: Sequence[str],
    max_tokens_limit: int = 1 << 20,
    max_depth: int = MAX_JSON_DEPTH,
    count_only: bool = False,
) -> MessagesRequest:
    """Validates a ``POST /v1/messages`` body; the query is the last user message.

    Fields the proxy cannot honour (``tools``, image blocks, unknown fields, ...)
    do not raise here: they are listed in ``unsupported`` so that the caller can
    refuse them or forward the request unchanged to a real upstream.

    Args:
      body: the raw request body (UTF-8 JSON).
      models: the model names the proxy accepts.
      max_tokens_limit: the largest ``max_tokens`` accepted.
      max_depth: the deepest JSON nesting accepted.
      count_only: a ``count_tokens`` body: no ``max_tokens``, and the last
        message need not be a non-empty user query.

    Returns:
      The validated request.

    Raises:
      BadRequest: (status 400) the body is not a JSON object or is nested deeper
        than ``max_depth``, a required field (``model``, ``max_tokens``,
        ``messages``) is missing or mistyped, the model is not accepted,
        ``max_tokens`` is outside ``1..max_tokens_limit``, a sampling parameter
        or stop sequence is out of range, a text is not valid Unicode, a message
        is malformed, the last message is not the user's, or the query is empty.
    """
    data = _load(body, max_depth)
    required = (
        ("model", "messages") if count_only else ("model", "max_tokens", "messages")
    )
    for name in required:
        if name not in data:
            raise BadRequest(f"{name}: field required")
    model = data["model"]
    if not isinstance(model, str):
        raise BadRequest(f"model: expected a string, got {type(model).__name__}")
    if model not in models:
        raise BadRequest(
            f"model: unknown model {model!r:.80}; this proxy serves {sorted(models)}"
        )
    max_tokens = 0
    if not count_only:
        max_tokens = data["max_tokens"]
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            raise BadRequest(f"max_tokens: expected an integer, got {max_tokens!r:.80}")
        if not 1 <= max_tokens <= max_tokens_limit:
            raise BadRequest(
                f"max_tokens: must be in 1..{max_tokens_limit}, got {max_tokens:.3g}"
                if max_tokens > max_tokens_limit
                else f"max_tokens: must be >= 1, got {max_tokens}"
            )
    unsupported = [name for name in sorted(data) if name not in _HONOURED | _IGNORED]
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest(f"stream: expected a boolean, got {stream!r:.80}")
    stops = data.get("stop_sequences", [])
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise BadRequest(
            f"stop_sequences: expected a list of strings, got {stops!r:.80}"
        )
    if len(stops) > MAX_STOP_SEQUENCES:
        raise BadRequest(
            f"stop_sequences: at most {MAX_STOP_SEQUENCES} are accepted, got "
            f"{len(stops)}"
        )
    for i, stop in enumerate(stops):
        _check_text(stop, f"stop_sequences[{i}]")
        if not stop or len(stop) > MAX_STOP_CHARS:
            raise BadRequest(
                f"stop_sequences[{i}]: must be 1..{MAX_STOP_CHARS} characters, got "
                f"{len(stop)}"
            )
    temperature = _number(data, "temperature", 0.0, 1.0)
    top_p = _number(data, "top_p", 0.0, 1.0)
    if top_p == 0.0:
        raise BadRequest("top_p: must be in (0, 1], got 0")
    top_k = data.get("top_k")
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1
    ):
        raise BadRequest(f"top_k: expected an integer >= 1, got {top_k!r:.80}")
    texts = []
    if "system" in data:
        texts.append(_text_of(data["system"], "system", unsupported))
    messages = data["messages"]
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: expected a non-empty list of messages")
    query, role = "", None
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(
                f"messages[{i}]: expected an object, got {type(message).__name__}"
            )
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise BadRequest(
                f"messages[{i}].role: must be 'user' or 'assistant', got {role!r:.80}"
            )
        if "content" not in message:
            raise BadRequest(f"messages[{i}].content: field required")
        query = _text_of(message["content"], f"messages[{i}].content", unsupported)
        texts.append(query)
    query = query.strip()
    if not count_only:
        last = len(messages) - 1
        if role != "user":
            raise BadRequest(
                f"messages[{last}].role: the last message must be the user's query, "
                f"got {role!r}"
            )
        if not query and not unsupported:
            raise BadRequest(
                f"messages[{last}].content: the query is empty; send a non-empty "
                "user message"
            )
    return MessagesRequest(
        model=model,
        max_tokens=max_tokens,
        query=query,
        texts=tuple(texts),
        stream=stream,
        stop_sequences=tuple(stops),
        temperature=temperature,
        top_p=top_p,
        top_k=None if top_k is None else int(top_k),
        unsupported=tuple(unsupported),
        body=data,
    )


# ------------------------------------------------------------------ answer cuts


@dataclasses.dataclass(frozen=True)
class AnswerCut:
    """An answer as served: cut at a stop sequence or at ``max_tokens``.

    Attributes:
      text: the text served.
      stop_reason: ``"end_turn"``, ``"stop_sequence"`` or ``"max_tokens"``.
      stop_sequence: the stop sequence that ended it, else ``None``.
      output_tokens: tokens of ``text`` in the generator's vocabulary.
    """

    text: str
    stop_reason: str
    stop_sequence: str | None
    output_tokens: int


#: ``offsets(text)``: the end character offset of each token of ``text``.
TokenEnds = Callable[[str], Sequence[int]]


def cut_answer(
    text: str,
    *,
    max_tokens: int,
    stop_sequences: Sequence[str] = (),
    token_ends: TokenEnds,
) -> AnswerCut:
    """The served part of ``text``: up to the first stop sequence, at most
    ``max_tokens`` tokens.

    The stop sequence itself is not served (as in the Messages API); the answer
    is then cut after its ``max_tokens``-th token.

    Args:
      text: the whole answer.
      max_tokens: the client's limit, >= 1.
      stop_sequences: strings that end the answer where the first of them occurs.
      token_ends: the end offset of each token of a text (the tokenizer's).

    Returns:
      The :class:`AnswerCut`.
    """
    reason, matched = "end_turn", None
    first = len(text) + 1
    for stop in stop_sequences:
        at = text.find(stop)
        if 0 <= at < first:
            first, matched = at, stop
    if matched is not None:
        text, reason = text[:first], "stop_sequence"
    ends = token_ends(text)
    if len(ends) > max_tokens:
        # Cut after the last whole character within the budget: the tokens of
        # one character (a byte-level tokenizer's) share its end offset.
        end = ends[max_tokens - 1]
        if ends[max_tokens] == end:
            end = _end_before(ends, end)
        text = text[:end]
        return AnswerCut(text, "max_tokens", None, len(token_ends(text)))
    return AnswerCut(text, reason, matched, len(ends))


def _end_before(ends: Sequence[int], end: int) -> int:
    """The largest token end below ``end`` (0 if none)."""
    return max((e for e in ends if e < end), default=0)


class AnswerStream:
    """:func:`cut_answer` for an answer that arrives in pieces.

    :meth:`feed` takes the next piece and returns the text that can be served
    now: text that the cut of the whole answer is sure to keep (nothing that may
    start a stop sequence or change the last token). :meth:`finish` returns the
    rest and the final :class:`AnswerCut`, whose ``text`` equals everything
    emitted, so that a streamed answer assembles to the non-streamed one.
    """

    def __init__(
        self,
        *,
        max_tokens: int,
        stop_sequences: Sequence[str] = (),
        token_ends: TokenEnds,
    ):
        self._max_tokens = max_tokens
        self._stops = tuple(stop_sequences)
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self._ends = token_ends
        self._text = ""
        self._emitted = 0
        self.done = False

    def feed(self, piece: str) -> str:
        """Adds ``piece``; returns the newly servable text ("" once done)."""
        if self.done:
            return ""
        self._text += piece
        cut = cut_answer(
            self._text,
            max_tokens=self._max_tokens,
            stop_sequences=self._stops,
            token_ends=self._ends,
        )
        # Any stop sequence starting before `limit` lies wholly in the text so
        # far, so a cut that ends by then cannot move with later text.
        limit = len(self._text) - self._hold
        if cut.stop_reason != "end_turn" and len(cut.text) <= limit:
            self.done = True
            return self._emit(len(cut.text))
        if cut.stop_reason == "end_turn":
            # The last token may still grow with the next piece.
            ends = self._ends(cut.text)
            safe = _end_before(ends, ends[-1]) if ends else 0
        else:
            safe = len(cut.text)
        return self._emit(min(safe, limit))

    def finish(self) -> tuple[str, AnswerCut]:
        """The rest of the served text and the final cut of the whole answer."""
        cut = cut_answer(
            self._text,
            max_tokens=self._max_tokens,
            stop_sequences=self._stops,
            token_ends=self._ends,
        )
        self.done = True
        if len(cut.text) < self._emitted:
            # The tokenizer split a prefix differently from the whole (rare for
            # BPE); what was served stays the answer.
            text = self._text[: self._emitted]
            return "", dataclasses.replace(
                cut, text=text, output_tokens=len(self._ends(text))
            )
        rest = cut.text[self._emitted :]
        self._emitted = len(cut.text)
        return rest, cut

    def _emit(self, upto: int) -> str:
        if upto <= self._emitted:
            return ""
        out = self._text[self._emitted : upto]
        self._emitted = upto
        return out


def sse_event(event: str, data: dict[str, Any]) -> bytes:
    """One server-sent event: ``event: <name>`` and its JSON ``data`` line."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()
