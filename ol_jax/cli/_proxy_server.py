"""The proxy's HTTP server: a Starlette app on uvicorn, with limits and client keys.

uvicorn's own settings give the idle (keep-alive) timeout, the header size limit
and a 503 past ``limit_concurrency``; :func:`limited_protocol` adds what uvicorn
lacks: a deadline for a request's headers counted from its first byte (or from
the connection's start), so a client that connects and sends nothing, or
dribbles its headers a byte at a time, is disconnected; and a hard cap on open
connections (a connection past it is closed at once). The body has its own
deadline and size limit in the app. Every connection is a few kilobytes of
asyncio state, not a thread, so hundreds of idle connections cost little and
never hold up other clients.

Routes: ``POST /v1/messages`` (JSON or server-sent events), ``POST
/v1/messages/count_tokens``, ``GET /v1/models``, ``GET /v1/models/{id}`` and
``GET /stats``. With client keys configured every route asks for one in
``x-api-key`` (or ``authorization: Bearer``), else ``401 authentication_error``.

References:
  Anthropic, `Messages API <https://docs.anthropic.com/en/api/messages>`_,
  `Streaming Messages <https://docs.anthropic.com/en/api/messages-streaming>`_,
  `Models <https://docs.anthropic.com/en/api/models-list>`_ and
  `Errors <https://docs.anthropic.com/en/api/errors>`_.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hmac
import math
import os
import re
import secrets
import shutil
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from ol_jax.cli._proxy_api import (
    MAX_BODY_BYTES,
    MAX_JSON_DEPTH,
    AnswerStream,
    BadRequest,
    MessagesRequest,
    cut_answer,
    error_body,
    parse_messages_request,
    sse_event,
)
from ol_jax.feedback import TeacherError

__all__ = ["LEARNER_DIR", "ProxyLimits", "ProxyServer", "limited_protocol"]

LEARNER_DIR = "learner"
# A ping this often while a streamed answer is awaited keeps idle-killing
# intermediaries (and the client's read timeout) from dropping the stream.
_PING_INTERVAL_S = 5.0
_ERROR_TYPE = re.compile(r"^[a-z_]{1,40}$")
# Bodies up to this many times the size limit are read and dropped before a 413.
_DRAIN_FACTOR = 16


@dataclasses.dataclass(frozen=True)
class ProxyLimits:
    """What one client may cost the server.

    Attributes:
      header_timeout_s: seconds from a request's first byte (or a new
        connection) until its headers must be complete.
      body_timeout_s: seconds to receive a request body.
      idle_timeout_s: seconds a kept-alive connection may wait for its next
        request.
      max_connections: open connections at most; more are closed at once, and
        requests are answered 503 from this many on.
      max_body_bytes: the largest request body, else ``413 request_too_large``.
      max_header_bytes: the largest request head (line and headers).
      max_json_depth: the deepest JSON nesting of a body.
      max_tokens: the largest ``max_tokens`` a request may ask for.
      shutdown_timeout_s: seconds open requests get to finish on shutdown.
    """

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    idle_timeout_s: float = 5.0
    max_connections: int = 1000
    max_body_bytes: int = MAX_BODY_BYTES
    max_header_bytes: int = 16 * 1024
    max_json_depth: int = MAX_JSON_DEPTH
    max_tokens: int = 65536
    shutdown_timeout_s: float = 10.0

    def __post_init__(self):
        for name in ("header_timeout_s", "body_timeout_s", "idle_timeout_s"):
            value = getattr(self, name)
            if not (
                isinstance(value, int | float) and math.isfinite(value) and value > 0
            ):
                raise ValueError(
                    f"{name} must be a positive number of s, got {value!r}"
                )
        for name in (
            "max_connections",
            "max_body_bytes",
            "max_header_bytes",
            "max_json_depth",
            "max_tokens",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def limited_protocol(
    limits: ProxyLimits,
    on_timeout: Callable[[], None] = lambda: None,
    on_refused: Callable[[], None] = lambda: None,
) -> type:
    """uvicorn's h11 protocol with a header deadline and a connection cap.

    Args:
      limits: the header deadline and the most open connections.
      on_timeout: called for each connection closed by the header deadline.
      on_refused: called for each connection closed for being past the cap.

    Returns:
      A protocol class for ``uvicorn.Config(http=...)``.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class LimitedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport):  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                on_refused()
                transport.close()
                return
            self._arm_header_timer()

        def connection_lost(self, exc):
            self._cancel_header_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            # A new request starts with this data: its headers are now due.
            if self.cycle is None or self.cycle.response_complete:
                if self._header_timer is None:
                    self._arm_header_timer()
            super().data_received(data)
            if self.cycle is not None and not self.cycle.response_complete:
                self._cancel_header_timer()

        def _arm_header_timer(self) -> None:
            self._header_timer = self.loop.call_later(
                limits.header_timeout_s, self._header_timeout
            )

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                on_timeout()
                self.transport.close()

    return LimitedH11Protocol


def upstream_failure(exc: BaseException) -> tuple[int, str, str]:
    """(status, error type, message) for a failed teacher answer.

    The message names the upstream's HTTP status and error type, or what kind of
    failure it was, never the upstream's own words: an upstream reply body may
    hold anything, including what the operator's key may see.
    """
    import anthropic  # the SDK's error types, to classify the failure

    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, TimeoutError | anthropic.APITimeoutError):
            return 504, "timeout_error", f"the upstream teacher failed: {exc}"
        if isinstance(cause, anthropic.APIStatusError):
            body = cause.body if isinstance(cause.body, dict) else {}
            error = body.get("error")
            kind = error.get("type") if isinstance(error, dict) else None
            kind = kind if isinstance(kind, str) and _ERROR_TYPE.match(kind) else None
            return (
                502,
                "api_error",
                f"the upstream teacher failed with HTTP {cause.status_code}"
                + (f" ({kind})" if kind else ""),
            )
        if isinstance(cause, anthropic.APIConnectionError):
            return 502, "api_error", "the upstream teacher failed: connection error"
        cause = cause.__cause__
    text = str(exc)
    for marker, what in (
        ("no text answer", "it gave no text answer"),
        ("refused", "it refused to answer"),
        ("malformed", "malformed reply"),
        ("non-empty string", "empty answer"),
    ):
        if marker in text:
            return 502, "api_error", f"the upstream teacher failed: {what}"
    return 502, "api_error", "the upstream teacher failed: unusable reply"


def _jsonable(value: Any) -> Any:
    """Metrics as JSON: arrays and numpy scalars to numbers, NaN/Inf to None."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool | int | str) or value is None:
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else None


def _request_id() -> str:
    return "req_" + secrets.token_hex(12)


class ProxyServer:
    """The proxy's server around one learner, a teacher and a run folder.

    A request's answer has two halves. Its route (local or forwarded, and the
    local answer) is taken on one answer thread, in arrival order, with the
    published weights. A local answer is then served at once; a forwarded
    query asks the teacher on a thread of its own (up to
    ``max_teacher_calls`` at once), so a slow teacher holds up only its own
    request. Learning follows every decision in arrival order: each routed
    request puts a learning job in a FIFO queue that the learning thread
    consumes one at a time, waiting for the job's teacher answer if it is not
    there yet. The queue holds at most ``max_learning_backlog`` jobs; a request
    routed while it is full is still answered, but not learned from (counted in
    ``learn_dropped``, with ``last_error`` saying so): replies never wait for
    learning.

    Args:
      learner: a :class:`~ol_jax.learners.TeacherProxyLearner` (anything with
        ``route(query, ...)``, ``finish(route, teacher_answer)``,
        ``abandon(route)``, ``learn(decision)``, ``stats()``, ``save(path)``
        and ``token_ends(text)``); it logs its own decisions.
      teacher: the :class:`~ol_jax.feedback.Teacher` forwarded queries go to;
        one with a ``stream(query)`` method of text pieces is streamed from.
      models: the model names clients may request.
      run_dir: the run folder the learner is saved in (``<run_dir>/learner``).
      save_every: answered requests between saves of the learner, >= 1.
      host: the interface to listen on.
      port: the port (0 picks a free one).
      limits: timeouts and size limits (:class:`ProxyLimits`).
      api_keys: client keys; when any, every request must carry one.
      max_teacher_calls: forwarded queries waiting for the teacher at once;
        more wait for a free slot.
      max_learning_backlog: learning jobs queued at most (see above).

    The socket is bound here; :meth:`serve_forever` serves, and :meth:`close`
    (after it returns) saves the learner.
    """

    def __init__(
        self,
        learner: Any,
        teacher: Callable[[str], str],
        *,
        models: Sequence[str],
        run_dir: str | os.PathLike[str],
        save_every: int = 100,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: ProxyLimits | None = None,
        api_keys: Sequence[str] = (),
        max_teacher_calls: int = 32,
        max_learning_backlog: int = 1024,
    ):
        import uvicorn

        if not models or not all(isinstance(m, str) and m for m in models):
            raise ValueError(f"models must be non-empty model names, got {models!r}")
        if save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {save_every}")
        if any(not isinstance(k, str) or not k for k in api_keys):
            raise ValueError("api_keys must be non-empty strings")
        for name, value in (
            ("max_teacher_calls", max_teacher_calls),
            ("max_learning_backlog", max_learning_backlog),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.max_learning_backlog = max_learning_backlog
        self.learner = learner
        self.teacher = teacher
        self.models = tuple(models)
        self.run_dir = os.path.abspath(os.fspath(run_dir))
        self.save_every = int(save_every)
        self.limits = limits or ProxyLimits()
        self._keys = tuple(k.encode() for k in api_keys)
        # A real upstream answers what the proxy cannot (tools, images, ...).
        self._forwards = callable(getattr(teacher, "forward", None))
        self._forwards_streams = callable(getattr(teacher, "forward_stream", None))
        os.makedirs(self.run_dir, exist_ok=True)
        # One thread routes (router, generation, validator) with the published
        # weights; forwarded queries wait for the teacher on threads of their
        # own; one thread learns from each decision, in arrival order, and
        # publishes the result; replies never wait for learning.
        self._answerer = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="ol-jax-answer"
        )
        self._teachers = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_teacher_calls, thread_name_prefix="ol-jax-teacher"
        )
        self._trainer = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="ol-jax-learn"
        )
        self._lock = threading.Lock()
        self._backlog = 0  # learning jobs queued and not yet done
        self._calls: set[concurrent.futures.Future] = set()  # teacher calls
        self._started = time.monotonic()
        self._since_save = 0
        self._save_queued = False
        self.counters = {
            "requests": 0,
            "answered": 0,
            "local": 0,
            "forwarded": 0,
            "streamed": 0,
            "bad_requests": 0,
            "unauthorized": 0,
            "timeouts": 0,
            "refused_connections": 0,
            "passed_through": 0,
            "upstream_errors": 0,
            "internal_errors": 0,
            "learned": 0,
            "learn_dropped": 0,
            "saves": 0,
            "save_errors": 0,
        }
        self.last_error: str | None = None
        self._closed = False
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, port))
            self._socket.listen(min(socket.SOMAXCONN, 2048))
        except BaseException:
            self._socket.close()
            raise
        lim = self.limits
        self._uvicorn = uvicorn.Server(
            uvicorn.Config(
                self._app(),
                http=limited_protocol(
                    lim,
                    on_timeout=lambda: self.count("timeouts"),
                    on_refused=lambda: self.count("refused_connections"),
                ),
                lifespan="off",
                log_config=None,
                log_level="warning",
                access_log=False,
                timeout_keep_alive=lim.idle_timeout_s,
                limit_concurrency=lim.max_connections,
                h11_max_incomplete_event_size=lim.max_header_bytes,
                timeout_graceful_shutdown=lim.shutdown_timeout_s,
                server_header=False,
            )
        )

    # ------------------------------------------------------------------ running

    @property
    def url(self) -> str:
        """The base URL clients use (``base_url`` of an Anthropic client)."""
        host, port = self._socket.getsockname()[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def learner_path(self) -> str:
        """Where the learner is saved in the run folder."""
        return os.path.join(self.run_dir, LEARNER_DIR)

    def serve_forever(self) -> None:
        """Serves in the calling thread until SIGINT/SIGTERM or :meth:`shutdown`."""
        asyncio.run(self._uvicorn.serve(sockets=[self._socket]))

    def shutdown(self) -> None:
        """Asks :meth:`serve_forever` (in another thread) to return."""
        self._uvicorn.should_exit = True

    def close(self) -> None:
        """Closes the socket, finishes queued work and saves the learner."""
        if self._closed:
            return
        self._closed = True
        self._socket.close()
        try:
            self._answerer.submit(self._quiet, self._save).result()  # a last save
        finally:
            self._answerer.shutdown(wait=True)
            self._teachers.shutdown(wait=True)
            self._trainer.shutdown(wait=True)

    # ------------------------------------------------------------------ learner

    def count(self, name: str) -> None:
        with self._lock:
            self.counters[name] += 1

    def _quiet(self, fn: Callable[[], Any] = lambda: None) -> Any:
        """``fn()`` once every queued update is done and a due save is made.

        Runs on the answer thread, so no query is routed meanwhile; waits for
        the teacher calls in flight and then for the learning queue: the
        learner is saved, and its stats read, in a consistent state.
        """
        with self._lock:
            calls = list(self._calls)
        concurrent.futures.wait(calls)
        self._trainer.submit(lambda: None).result()
        if self._since_save >= self.save_every:
            try:
                self._save()
            except Exception as e:  # the next save tries again
                self._failed("save_errors", f"{type(e).__name__}: {e}")
        self._save_queued = False
        return fn()

    def stats(self) -> dict[str, Any]:
        """The learner's stats once queued updates are done, and the counters."""
        learner_stats = self._answerer.submit(self._quiet, self.learner.stats).result()
        with self._lock:
            server = dict(self.counters)
            server["last_error"] = self.last_error
        server["uptime_s"] = round(time.monotonic() - self._started, 3)
        server["models"] = list(self.models)
        server["run_dir"] = self.run_dir
        return {"learner": _jsonable(learner_stats), "server": server}

    def submit(
        self,
        request: MessagesRequest,
        on_piece: Callable[[str], None] | None = None,
    ) -> concurrent.futures.Future:
        """Queues a request for routing; the future holds its decision.

        The future is resolved as soon as the answer is known: at once for a
        local answer, when the teacher has answered for a forwarded one. Its
        learning job is queued in arrival order and runs while later requests
        are answered with the weights published before it.

        Args:
          request: the validated request.
          on_piece: called (on the teacher's thread) with each piece of a
            forwarded answer as the teacher's stream delivers it.
        """
        reply: concurrent.futures.Future = concurrent.futures.Future()
        self._answerer.submit(self._serve, request, reply, on_piece)
        return reply

    def _teacher_for(self, on_piece: Callable[[str], None] | None) -> Callable:
        stream = getattr(self.teacher, "stream", None)
        if on_piece is None or stream is None:
            return self.teacher

        def streamed(query: str) -> str:
            parts = []
            for piece in stream(query):
                parts.append(piece)
                on_piece(piece)
            return "".join(parts)

        return streamed

    def _serve(self, request, reply, on_piece) -> None:
        """Routes a request (on the answer thread) and serves or forwards it."""
        if not reply.set_running_or_notify_cancel():
            return
        try:
            routed = self.learner.route(
                request.query,
                temperature=request.temperature,
                top_p=request.top_p,
                top_k=request.top_k,
            )
        except Exception as e:  # a bug: the client's error, the thread lives on
            self._failed("internal_errors", f"{type(e).__name__}: {e}")
            reply.set_exception(e)
            return
        job = self._queue_learning(routed.forward)
        if not routed.forward:
            self._finish(routed, None, reply, job)
            return
        call = self._teachers.submit(
            self._ask_teacher, routed, self._teacher_for(on_piece), reply, job
        )
        with self._lock:
            self._calls.add(call)
        call.add_done_callback(self._call_done)

    def _call_done(self, call: concurrent.futures.Future) -> None:
        with self._lock:
            self._calls.discard(call)

    def _ask_teacher(self, routed, teacher, reply, job) -> None:
        """A forwarded query's teacher call, on a teacher thread."""
        try:
            teacher_answer = teacher(routed.query)
        except Exception as e:
            self.learner.abandon(routed)
            self._fail_reply(e, reply, job)
            return
        self._finish(routed, teacher_answer, reply, job)

    def _finish(self, routed, teacher_answer, reply, job) -> None:
        try:
            decision = self.learner.finish(routed, teacher_answer)
        except Exception as e:  # an unusable teacher answer (abandoned), or a bug
            self._fail_reply(e, reply, job)
            return
        with self._lock:
            self.counters["answered"] += 1
            self.counters["local" if decision.route == "local" else "forwarded"] += 1
        reply.set_result(decision)
        if job is not None:
            job.set_result(decision)

    def _fail_reply(self, error: Exception, reply, job) -> None:
        # A failed teacher answer (or a bug) is the client's error reply;
        # nothing is learned, and the threads live on.
        if isinstance(error, TeacherError):
            self._failed("upstream_errors", upstream_failure(error)[2])
        else:
            self._failed("internal_errors", f"{type(error).__name__}: {error}")
        reply.set_exception(error)
        if job is not None:
            job.set_result(None)

    def _queue_learning(self, forward: bool) -> concurrent.futures.Future | None:
        """A learning job in the FIFO queue, resolved with its decision (or
        ``None``: nothing to learn); ``None`` when the queue is full."""
        with self._lock:
            if self._backlog >= self.max_learning_backlog:
                if forward:  # a local answer teaches nothing: nothing is lost
                    self.counters["learn_dropped"] += 1
                    self.last_error = (
                        f"learning is {self._backlog} answers behind (the most "
                        "queued): a forwarded answer was served but not learned"
                    )
                return None
            self._backlog += 1
        job: concurrent.futures.Future = concurrent.futures.Future()
        self._trainer.submit(self._learn_when_answered, job)
        return job

    def _learn_when_answered(self, job: concurrent.futures.Future) -> None:
        """On the learning thread: waits for the job's decision, learns from it."""
        try:
            decision = job.result()
            if decision is not None:
                self._learn(decision)
        finally:
            with self._lock:
                self._backlog -= 1

    def _learn(self, decision: Any) -> None:
        try:
            self.learner.learn(decision)
        except Exception as e:
            self._failed("internal_errors", f"{type(e).__name__}: {e}")
        else:
            self.count("learned")
        self._since_save += 1
        if self._since_save >= self.save_every and not self._save_queued:
            # Saved on the answer thread once learning is idle: a consistent
            # learner, with no answer half made.
            self._save_queued = True
            self._answerer.submit(self._quiet)

    def _failed(self, counter: str, message: str) -> None:
        with self._lock:
            self.counters[counter] += 1
            self.last_error = message

    def _save(self) -> None:
        """Saves the learner next to the previous save, then swaps it in."""
        if self._since_save == 0 and os.path.exists(self.learner_path):
            return
        tmp = self.learner_path + ".tmp"
        old = self.learner_path + ".old"
        shutil.rmtree(tmp, ignore_errors=True)
        self.learner.save(tmp)
        if os.path.exists(self.learner_path):
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.learner_path, old)
        os.replace(tmp, self.learner_path)
        shutil.rmtree(old, ignore_errors=True)
        self._since_save = 0
        self.count("saves")

    # ------------------------------------------------------------------ HTTP

    def _app(self):
        from starlette.applications import Starlette
        from starlette.routing import Route

        return Starlette(
            routes=[
                Route("/v1/messages", self._messages, methods=["POST"]),
                Route(
                    "/v1/messages/count_tokens", self._count_tokens, methods=["POST"]
                ),
                Route("/v1/models", self._list_models, methods=["GET"]),
                Route("/v1/models/{model_id:path}", self._get_model, methods=["GET"]),
                Route("/stats", self._stats, methods=["GET"]),
            ],
            exception_handlers={404: self._not_found, 405: self._not_found},
        )

    @staticmethod
    def _json(status: int, body: Any, headers: Mapping[str, str] | None = None):
        from starlette.responses import JSONResponse

        return JSONResponse(body, status_code=status, headers=dict(headers or {}))

    def _error(self, status: int, error_type: str, message: str, *, close=False):
        request_id = _request_id()
        headers = {"request-id": request_id}
        if close:
            headers["connection"] = "close"
        return self._json(status, error_body(error_type, message, request_id), headers)

    async def _not_found(self, request, exc):
        del exc
        return self._error(
            404, "not_found_error", f"no such path: {request.method} {request.url.path}"
        )

    def _authorized(self, request) -> bool:
        if not self._keys:
            return True
        sent = request.headers.get("x-api-key")
        if sent is None:
            auth = request.headers.get("authorization", "")
            sent = auth[7:] if auth.lower().startswith("bearer ") else None
        if sent is None:
            return False
        given = sent.encode("utf-8", "surrogateescape")
        # Compare against every key so the time taken does not say which matched.
        return sum(hmac.compare_digest(given, key) for key in self._keys) > 0

    async def _guard(self, request):
        """An error response for an unauthenticated request, else ``None``."""
        if self._authorized(request):
            return None
        self.count("unauthorized")
        return self._error(
            401,
            "authentication_error",
            "invalid x-api-key: send one of this proxy's keys",
        )

    async def _body(self, request) -> bytes:
        """The request body, within the size limit and the body deadline.

        A body over the limit is still read, up to ``_DRAIN_FACTOR`` times the
        limit and within the deadline, and dropped: a client still sending
        then sees the 413 instead of a reset connection.
        """
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and not declared.isdigit():
            raise BadRequest(
                f"content-length must be a non-negative integer, got {declared!r:.40}"
            )
        too_large = None
        if declared is not None and int(declared) > limit:
            too_large = (
                f"the request body is {declared} bytes; the limit is {limit} bytes"
            )
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.limits.body_timeout_s):
                if too_large is None or int(declared) <= _DRAIN_FACTOR * limit:
                    async for chunk in request.stream():
                        size += len(chunk)
                        if size > limit:
                            too_large = too_large or (
                                f"the request body is over the limit of {limit} bytes"
                            )
                            chunks = []
                            if size > _DRAIN_FACTOR * limit:
                                break
                        else:
                            chunks.append(chunk)
        except TimeoutError:
            if too_large is None:
                self.count("timeouts")
                raise BadRequest(
                    "the request body did not arrive within "
                    f"{self.limits.body_timeout_s:g} s",
                    status=408,
                    error_type="timeout_error",
                ) from None
        if too_large is not None:
            raise BadRequest(too_large, status=413, error_type="request_too_large")
        return b"".join(chunks)

    async def _parse(self, request, *, count_only: bool = False):
        """The validated request, or an error response (counted)."""
        refused = await self._guard(request)
        if refused is not None:
            return None, refused
        try:
            body = await self._body(request)
            parsed = parse_messages_request(
                body,
                models=self.models,
                max_tokens_limit=self.limits.max_tokens,
                max_depth=self.limits.max_json_depth,
                count_only=count_only,
            )
            forwardable = not count_only and (
                self._forwards_streams if parsed.stream else self._forwards
            )
            if parsed.unsupported and not forwardable:
                raise BadRequest(
                    f"{parsed.unsupported[0]}: not supported by this proxy, which "
                    "answers text questions only"
                )
            input_tokens = 0 if parsed.unsupported else self._input_tokens(parsed)
        except BadRequest as e:
            self.count("bad_requests")
            return None, self._error(
                e.status, e.error_type, str(e), close=e.status in (408, 413)
            )
        return (parsed, input_tokens), None

    def _input_tokens(self, request: MessagesRequest) -> int:
        total = 0
        for i, text in enumerate(request.texts):
            try:
                total += len(self.learner.token_ends(text))
            except Exception as e:  # what the tokenizer refuses is the client's
                raise BadRequest(
                    f"text {i} of the request: the tokenizer cannot take it "
                    f"({type(e).__name__})"
                ) from None
        return total

    async def _messages(self, request):
        self.count("requests")
        parsed, refused = await self._parse(request)
        if refused is not None:
            return refused
        parsed, input_tokens = parsed
        if parsed.unsupported:
            return await self._forward(parsed)
        message_id = "msg_" + secrets.token_hex(12)
        if parsed.stream:
            return self._stream(parsed, input_tokens, message_id)
        try:
            decision = await asyncio.wrap_future(self.submit(parsed))
        except TeacherError as e:
            status, kind, message = upstream_failure(e)
            return self._error(status, kind, message)
        except Exception as e:
            return self._error(500, "api_error", f"internal error ({type(e).__name__})")
        cut = self._cut(parsed, decision.answer)
        return self._json(
            200,
            self._message(parsed, message_id, cut.text, input_tokens)
            | {
                "stop_reason": cut.stop_reason,
                "stop_sequence": cut.stop_sequence,
                "usage": {
                    "input_tokens": input_tokens,
                    "output_tokens": cut.output_tokens,
                },
            },
            self._decision_headers(message_id, decision),
        )

    async def _forward(self, request: MessagesRequest):
        """A request the proxy cannot answer itself, sent unchanged upstream.

        Nothing is learned from it; the reply is the upstream's, and a failure
        is reported by status and error type only.
        """
        from starlette.responses import Response, StreamingResponse

        self.count("passed_through")
        headers = {"x-ol-jax-route": "passthrough"}
        if request.stream:
            chunks = self.teacher.forward_stream(request.body)
            try:
                # The first chunk: a failure before the stream starts is an
                # error status, not a broken event stream.
                first = await asyncio.to_thread(next, chunks, b"")
            except TeacherError as e:
                self.count("upstream_errors")
                return self._error(*upstream_failure(e))

            def rest():
                yield first
                try:
                    yield from chunks
                except TeacherError as e:
                    _, kind, message = upstream_failure(e)
                    yield sse_event(
                        "error",
                        {"type": "error", "error": {"type": kind, "message": message}},
                    )

            return StreamingResponse(
                rest(), media_type="text/event-stream", headers=headers
            )
        try:
            status, body = await asyncio.to_thread(self.teacher.forward, request.body)
        except TeacherError as e:
            self.count("upstream_errors")
            return self._error(*upstream_failure(e))
        return Response(
            body, status_code=status, media_type="application/json", headers=headers
        )

    def _cut(self, request: MessagesRequest, text: str):
        return cut_answer(
            text,
            max_tokens=request.max_tokens,
            stop_sequences=request.stop_sequences,
            token_ends=self.learner.token_ends,
        )

    @staticmethod
    def _decision_headers(message_id: str, decision: Any) -> dict[str, str]:
        return {
            "request-id": "req_" + message_id[4:],
            "x-ol-jax-route": decision.route,
            "x-ol-jax-reason": str(decision.reason),
        }

    @staticmethod
    def _message(request, message_id: str, text: str, input_tokens: int) -> dict:
        return {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "content": [{"type": "text", "text": text}],
            "model": request.model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 0},
        }

    def _stream(self, request: MessagesRequest, input_tokens: int, message_id: str):
        """Server-sent events, in the Messages API's order, as the answer comes."""
        from starlette.responses import StreamingResponse

        self.count("streamed")
        return StreamingResponse(
            self._events(request, input_tokens, message_id),
            media_type="text/event-stream",
            headers={
                "request-id": "req_" + message_id[4:],
                "cache-control": "no-cache",
            },
        )

    async def _events(
        self, request: MessagesRequest, input_tokens: int, message_id: str
    ) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()

        def put(item) -> None:
            loop.call_soon_threadsafe(pieces.put_nowait, item)

        future = self.submit(request, on_piece=lambda piece: put(("piece", piece)))
        future.add_done_callback(lambda f: put(("done", f)))
        start = self._message(request, message_id, "", input_tokens)
        start["content"] = []
        yield sse_event("message_start", {"type": "message_start", "message": start})
        yield sse_event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        yield sse_event("ping", {"type": "ping"})
        answer = AnswerStream(
            max_tokens=request.max_tokens,
            stop_sequences=request.stop_sequences,
            token_ends=self.learner.token_ends,
        )
        streamed = False
        while not answer.done:
            try:
                kind, value = await asyncio.wait_for(pieces.get(), _PING_INTERVAL_S)
            except TimeoutError:
                yield sse_event("ping", {"type": "ping"})
                continue
            if kind == "done":
                break
            streamed = True
            text = answer.feed(value)
            if text:
                yield self._delta(text)
        if not answer.done:
            try:
                decision = future.result()
            except Exception as e:
                if isinstance(e, TeacherError):
                    _, kind, message = upstream_failure(e)
                else:
                    kind, message = "api_error", f"internal error ({type(e).__name__})"
                yield sse_event(
                    "error",
                    {"type": "error", "error": {"type": kind, "message": message}},
                )
                return
            if not streamed:
                # A local answer (validated whole before any of it is served) or
                # a teacher without a stream: served one generator token at a time.
                ends, begin = self.learner.token_ends(decision.answer), 0
                for end in ends:
                    text = answer.feed(decision.answer[begin:end])
                    begin = end
                    if text:
                        yield self._delta(text)
                    if answer.done:
                        break
        rest, cut = answer.finish()
        if rest:
            yield self._delta(rest)
        yield sse_event(
            "content_block_stop", {"type": "content_block_stop", "index": 0}
        )
        yield sse_event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": cut.stop_reason,
                    "stop_sequence": cut.stop_sequence,
                },
                "usage": {"output_tokens": cut.output_tokens},
            },
        )
        yield sse_event("message_stop", {"type": "message_stop"})

    @staticmethod
    def _delta(text: str) -> bytes:
        return sse_event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": text},
            },
        )

    async def _count_tokens(self, request):
        self.count("requests")
        parsed, refused = await self._parse(request, count_only=True)
        if refused is not None:
            return refused
        return self._json(200, {"input_tokens": parsed[1]})

    def _model_info(self, name: str) -> dict[str, Any]:
        return {
            "type": "model",
            "id": name,
            "display_name": name,
            "created_at": "1970-01-01T00:00:00Z",
            "lifecycle": "active",
            "max_tokens": self.limits.max_tokens,
        }

    async def _list_models(self, request):
        refused = await self._guard(request)
        if refused is not None:
            return refused
        data = [self._model_info(m) for m in self.models]
        return self._json(
            200,
            {
                "data": data,
                "has_more": False,
                "first_id": data[0]["id"],
                "last_id": data[-1]["id"],
            },
        )

    async def _get_model(self, request):
        refused = await self._guard(request)
        if refused is not None:
            return refused
        name = request.path_params["model_id"]
        if name not in self.models:
            return self._error(
                404, "not_found_error", f"model: unknown model {name!r:.80}"
            )
        return self._json(200, self._model_info(name))

    async def _stats(self, request):
        refused = await self._guard(request)
        if refused is not None:
            return refused
        # stats() waits on the learner thread: not on the event loop.
        return self._json(200, await asyncio.to_thread(self.stats))
