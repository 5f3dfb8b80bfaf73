"""``ol-jax proxy``: a local Anthropic Messages API endpoint that learns.

``POST /v1/messages`` accepts the Anthropic Messages API request (``model``,
``max_tokens``, ``messages``, optional ``system``), so any Anthropic client works
with ``base_url`` pointed here. The query is the text of the last user message. A
:class:`~ol_jax.learners.TeacherProxyLearner` answers it locally or forwards it to
the teacher (an :class:`~ol_jax.feedback.AnthropicTeacher` on the configured
upstream, or the offline :class:`~ol_jax.feedback.SimulatedTeacher` by default),
the reply goes out in the Messages API shape, and only then does the learner learn
from the decision. Usage is counted in whitespace-separated words (the proxy shares
no tokenizer with its clients); an answer longer than ``max_tokens`` words is cut
there with ``stop_reason: "max_tokens"`` (the learner still learns from all of it).

One learner thread owns the models: requests are served in arrival order, each
one's answer is computed and sent, then its update runs before the next request is
answered ("reply first, learn between requests"). A failed teacher answer is sent
to the client as an Anthropic error (``502 api_error``, or ``504 timeout_error``)
and nothing is learned. Bad input (invalid JSON, a body over the size limit,
missing or mistyped fields, an empty query, a model name the config does not
accept) is answered ``400 invalid_request_error`` with a message naming the
problem, before the learner sees it.

The learner's run folder ``<root>/<network_id>/runs/<run_id>/`` (a
:class:`~ol_jax.store.RunStore` run) holds its ``decisions.jsonl`` (one JSON line
per answered query: route, reason, similarity, latencies, cost saved) and
``learner/``, the learner saved every ``save_every`` answered requests and on
shutdown (written beside the previous save, then swapped in); starting again with
the same ``--run-id`` resumes from it. ``GET /stats`` returns the learner's
statistics and the server's counters (requests, answers by route, bad requests,
upstream and internal errors, updates, saves, the last error).

References:
  Anthropic, `Messages API <https://docs.anthropic.com/en/api/messages>`_ and
  `Errors <https://docs.anthropic.com/en/api/errors>`_.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import math
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Annotated, Any

from pydantic import Field

from ol_jax.feedback import DEFAULT_ANTHROPIC_MODEL, TeacherError
from ol_jax.learners import TeacherProxyConfig
from ol_jax.store import (
    Capacity,
    Chars,
    ConfigSection,
    Count,
    Seed,
    load_config,
    validate_config,
)

__all__ = [
    "MAX_BODY_BYTES",
    "BadRequest",
    "MessagesRequest",
    "ProxyNetworkConfig",
    "ProxySection",
    "ProxyServer",
    "parse_messages_request",
    "proxy_main",
]

#: The largest request body accepted, in bytes (1 MB).
MAX_BODY_BYTES = 1_000_000
LEARNER_DIR = "learner"
# Bodies up to this size are read and discarded before a 400, so the client sees
# the error instead of a reset connection; larger ones just close the connection.
_DRAIN_LIMIT = 16 * MAX_BODY_BYTES


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
      max_tokens: the client's answer length limit.
      query: the text of the last user message, stripped.
      input_words: whitespace-separated words in the system prompt and messages.
    """

    model: str
    max_tokens: int
    query: str
    input_words: int


def _text_of(content: Any, where: str) -> str:
    """The text of a ``content`` value: a string or a list of text blocks."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest(
            f"{where}: expected a string or a list of content blocks, got "
            f"{type(content).__name__}"
        )
    parts = []
    for i, block in enumerate(content):
        if not isinstance(block, dict):
            raise BadRequest(
                f"{where}[{i}]: expected a content block object, got "
                f"{type(block).__name__}"
            )
        kind = block.get("type")
        if kind != "text":
            raise BadRequest(
                f"{where}[{i}].type: only 'text' content blocks are supported, "
                f"got {kind!r}"
            )
        text = block.get("text")
        if not isinstance(text, str):
            raise BadRequest(
                f"{where}[{i}].text: expected a string, got {type(text).__name__}"
            )
        parts.append(text)
    return "\n".join(parts)


def parse_messages_request(body: bytes, *, models: Sequence[str]) -> MessagesRequest:
    """Validates a ``POST /v1/messages`` body; the query is the last user message.

    Args:
      body: the raw request body (UTF-8 JSON).
      models: the model names the proxy accepts.

    Returns:
      The validated request.

    Raises:
      BadRequest: (status 400) the body is not a JSON object, a required field
        (``model``, ``max_tokens``, ``messages``) is missing or mistyped, the model
        is not accepted, streaming is requested, a message is malformed, the last
        message is not the user's, or the query is empty.
    """
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"the request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise BadRequest(
            f"the request body must be a JSON object, got {type(data).__name__}"
        )
    for name in ("model", "max_tokens", "messages"):
        if name not in data:
            raise BadRequest(f"{name}: field required")
    model = data["model"]
    if not isinstance(model, str):
        raise BadRequest(f"model: expected a string, got {type(model).__name__}")
    if model not in models:
        raise BadRequest(
            f"model: unknown model {model!r}; this proxy serves {sorted(models)}"
        )
    max_tokens = data["max_tokens"]
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise BadRequest(f"max_tokens: expected an integer, got {max_tokens!r}")
    if max_tokens < 1:
        raise BadRequest(f"max_tokens: must be >= 1, got {max_tokens}")
    if data.get("stream"):
        raise BadRequest("stream: streaming is not supported by this proxy")
    words = 0
    if "system" in data:
        words += len(_text_of(data["system"], "system").split())
    messages = data["messages"]
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: expected a non-empty list of messages")
    query = ""
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(
                f"messages[{i}]: expected an object, got {type(message).__name__}"
            )
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise BadRequest(
                f"messages[{i}].role: must be 'user' or 'assistant', got {role!r}"
            )
        if "content" not in message:
            raise BadRequest(f"messages[{i}].content: field required")
        query = _text_of(message["content"], f"messages[{i}].content")
        words += len(query.split())
    if role != "user":
        raise BadRequest(
            f"messages[{len(messages) - 1}].role: the last message must be the "
            f"user's query, got {role!r}"
        )
    query = query.strip()
    if not query:
        raise BadRequest(
            f"messages[{len(messages) - 1}].content: the query is empty; send a "
            "non-empty user message"
        )
    return MessagesRequest(
        model=model, max_tokens=max_tokens, query=query, input_words=words
    )


def _error_body(error_type: str, message: str, request_id: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": request_id,
    }


def _upstream_failure(exc: BaseException) -> tuple[int, str]:
    """(status, error type) for a failed teacher answer: 504 for a timeout."""
    import anthropic  # the SDK's timeout type, to tell a timeout from other errors

    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, TimeoutError | anthropic.APITimeoutError):
            return 504, "timeout_error"
        cause = cause.__cause__
    return 502, "api_error"


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


class ProxyServer:
    """The proxy's HTTP server around one learner, a teacher and a run folder.

    Args:
      learner: a :class:`~ol_jax.learners.TeacherProxyLearner` (anything with
        ``answer(query, teacher)``, ``learn(decision)``, ``stats()``,
        ``save(path)``); it logs its own decisions.
      teacher: the :class:`~ol_jax.feedback.Teacher` forwarded queries go to.
      models: the model names clients may request.
      run_dir: the run folder the learner is saved in (``<run_dir>/learner``).
      save_every: answered requests between saves of the learner, >= 1.
      host: the interface to listen on.
      port: the port (0 picks a free one).
      max_body_bytes: the largest request body accepted.

    Call :meth:`serve_forever`, and :meth:`close` once it has returned.
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
        max_body_bytes: int = MAX_BODY_BYTES,
    ):
        if not models or not all(isinstance(m, str) and m for m in models):
            raise ValueError(f"models must be non-empty model names, got {models!r}")
        if save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {save_every}")
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
        self.learner = learner
        self.teacher = teacher
        self.models = tuple(models)
        self.run_dir = os.path.abspath(os.fspath(run_dir))
        self.save_every = int(save_every)
        self.max_body_bytes = int(max_body_bytes)
        os.makedirs(self.run_dir, exist_ok=True)
        # The one thread that touches the learner.
        self._worker = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="ol-jax-learner"
        )
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._since_save = 0
        self.counters = {
            "requests": 0,
            "answered": 0,
            "local": 0,
            "forwarded": 0,
            "bad_requests": 0,
            "upstream_errors": 0,
            "internal_errors": 0,
            "learned": 0,
            "saves": 0,
            "save_errors": 0,
        }
        self._httpd = ThreadingHTTPServer((host, port), _handler(self))
        self._httpd.daemon_threads = True
        self._closed = False
        self.last_error: str | None = None

    # ------------------------------------------------------------------ running

    @property
    def url(self) -> str:
        """The base URL clients use (``base_url`` of an Anthropic client)."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def learner_path(self) -> str:
        """Where the learner is saved in the run folder."""
        return os.path.join(self.run_dir, LEARNER_DIR)

    def serve_forever(self) -> None:
        """Serves in the calling thread until interrupted (SIGINT, SIGTERM)."""
        self._httpd.serve_forever()

    def close(self) -> None:
        """Closes the socket, finishes queued work and saves the learner."""
        if self._closed:
            return
        self._closed = True
        self._httpd.server_close()
        try:
            self._worker.submit(self._save).result()
        finally:
            self._worker.shutdown(wait=True)

    # ------------------------------------------------------------------ requests

    def count(self, name: str) -> None:
        with self._lock:
            self.counters[name] += 1

    def stats(self) -> dict[str, Any]:
        """The learner's stats (read on the learner thread) and the server counters."""
        learner_stats = self._worker.submit(self.learner.stats).result()
        with self._lock:
            server = dict(self.counters)
            server["last_error"] = self.last_error
        server["uptime_s"] = round(time.monotonic() - self._started, 3)
        server["models"] = list(self.models)
        server["run_dir"] = self.run_dir
        return {"learner": _jsonable(learner_stats), "server": server}

    def submit(self, request: MessagesRequest) -> concurrent.futures.Future:
        """Queues a request on the learner thread; the future holds its decision.

        The future is resolved as soon as the answer is known; the learning step
        for it runs afterwards on the same thread, before the next request.
        """
        reply: concurrent.futures.Future = concurrent.futures.Future()
        self._worker.submit(self._serve, request, reply)
        return reply

    def _serve(self, request: MessagesRequest, reply: concurrent.futures.Future):
        try:
            decision = self.learner.answer(request.query, self.teacher)
        except Exception as e:
            # A failed teacher answer (or a bug) is the client's error reply;
            # nothing is learned, and the learner thread lives on.
            self._failed(
                "upstream_errors" if isinstance(e, TeacherError) else "internal_errors",
                e,
            )
            reply.set_exception(e)
            return
        reply.set_result(decision)
        with self._lock:
            self.counters["answered"] += 1
            self.counters["local" if decision.route == "local" else "forwarded"] += 1
        try:
            self.learner.learn(decision)
        except Exception as e:
            self._failed("internal_errors", e)
        else:
            self.count("learned")
        self._since_save += 1
        if self._since_save >= self.save_every:
            try:
                self._save()
            except Exception as e:  # the next save tries again
                self._failed("save_errors", e)

    def _failed(self, counter: str, error: BaseException) -> None:
        with self._lock:
            self.counters[counter] += 1
            self.last_error = f"{type(error).__name__}: {error}"

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


def saved_learner_path(run_dir: str | os.PathLike[str]) -> str | None:
    """The learner saved in ``run_dir`` (or the one a crashed swap left), if any."""
    base = os.path.join(os.fspath(run_dir), LEARNER_DIR)
    for path in (base, base + ".old"):
        if os.path.exists(path):
            return path
    return None


def _handler(proxy: ProxyServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "ol-jax-proxy"

        def log_message(self, format: str, *args: Any) -> None:
            del format, args  # decisions go to decisions.jsonl instead

        def _send(
            self, status: int, body: dict[str, Any], headers: Mapping[str, str] = {}
        ) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            if self.close_connection:
                self.send_header("connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, error_type: str, message: str) -> None:
            request_id = "req_" + secrets.token_hex(12)
            self._send(
                status,
                _error_body(error_type, message, request_id),
                {"request-id": request_id},
            )

        def _body(self) -> bytes:
            length_header = self.headers.get("content-length")
            if self.headers.get("transfer-encoding"):
                self.close_connection = True
                raise BadRequest("chunked request bodies are not supported")
            if length_header is None:
                self.close_connection = True
                raise BadRequest("the content-length header is required")
            try:
                length = int(length_header)
                if length < 0:
                    raise ValueError
            except ValueError:
                self.close_connection = True
                raise BadRequest(
                    f"content-length must be a non-negative integer, got "
                    f"{length_header!r}"
                ) from None
            if length > proxy.max_body_bytes:
                self.close_connection = True
                if length <= _DRAIN_LIMIT:
                    remaining = length
                    while remaining > 0:
                        chunk = self.rfile.read(min(remaining, 1 << 16))
                        if not chunk:
                            break
                        remaining -= len(chunk)
                raise BadRequest(
                    f"the request body is {length} bytes; the limit is "
                    f"{proxy.max_body_bytes} bytes"
                )
            return self.rfile.read(length)

        def do_GET(self) -> None:
            if self.path.split("?")[0] == "/stats":
                self._send(200, proxy.stats())
            else:
                self._error(404, "not_found_error", f"no such path: GET {self.path}")

        def do_POST(self) -> None:
            proxy.count("requests")
            try:
                body = self._body()
                if self.path.split("?")[0] != "/v1/messages":
                    raise BadRequest(
                        f"no such path: POST {self.path}",
                        status=404,
                        error_type="not_found_error",
                    )
                request = parse_messages_request(body, models=proxy.models)
            except BadRequest as e:
                proxy.count("bad_requests")
                self._error(e.status, e.error_type, str(e))
                return
            try:
                decision = proxy.submit(request).result()
            except Exception as e:
                if isinstance(e, TeacherError):
                    status, kind = _upstream_failure(e)
                    self._error(status, kind, f"the upstream teacher failed: {e}")
                else:
                    self._error(500, "api_error", f"{type(e).__name__}: {e}")
                return
            answer, stop_reason = decision.answer, "end_turn"
            words = answer.split()
            if len(words) > request.max_tokens:
                answer = " ".join(words[: request.max_tokens])
                stop_reason = "max_tokens"
            message_id = "msg_" + secrets.token_hex(12)
            self._send(
                200,
                {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "text", "text": answer}],
                    "model": request.model,
                    "stop_reason": stop_reason,
                    "stop_sequence": None,
                    # Word counts: the proxy has no tokenizer shared with clients.
                    "usage": {
                        "input_tokens": request.input_words,
                        "output_tokens": min(len(words), request.max_tokens),
                    },
                },
                {
                    "request-id": "req_" + message_id[4:],
                    "x-ol-jax-route": decision.route,
                    "x-ol-jax-reason": str(decision.reason),
                },
            )

    return Handler


def _parser() -> argparse.ArgumentParser:
    from ol_jax.cli._help import HelpFormatter

    parser = argparse.ArgumentParser(
        prog="ol-jax proxy",
        description="A local Anthropic Messages API endpoint (POST /v1/messages) "
        "that answers locally or forwards to a teacher, and learns from every "
        "teacher answer. GET /stats returns the learner's statistics.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument(
        "--port", type=int, default=8080, help="port to listen on (0: any free port)"
    )
    parser.add_argument("--root", default="networks", help="networks folder")
    parser.add_argument(
        "--config",
        default=None,
        help="network config YAML (network_id, proxy and learner sections); "
        "default: <root>/<network>/config.yaml if it exists, else built-in defaults",
    )
    parser.add_argument(
        "--network", default="teacher-proxy", help="network id when no --config"
    )
    parser.add_argument(
        "--run-id",
        default=None,
        help="run to resume (its saved learner is loaded) or to create; default: "
        "a new run",
    )
    parser.add_argument(
        "--upstream",
        default=None,
        help="base URL of the Anthropic API the teacher is asked through (key from "
        "ANTHROPIC_API_KEY), e.g. https://api.anthropic.com; 'simulated' for the "
        "offline FAQ teacher; default: the config's proxy.upstream",
    )
    parser.add_argument(
        "--save-every",
        type=int,
        default=None,
        help="answered requests between saves (default: the config's)",
    )
    return parser


class ProxySection(ConfigSection):
    """The ``proxy`` section of the network config: the server and its teacher.

    Attributes:
      models: the model names clients may request; any other is a 400.
      upstream: base URL of the Anthropic API the teacher is asked through (key
        from ``ANTHROPIC_API_KEY``); ``None`` for the offline simulated FAQ
        teacher.
      teacher_model: the Claude model the upstream teacher is asked with.
      teacher_max_tokens: answer length limit of the upstream teacher.
      upstream_timeout_s: seconds before an upstream request is a 504.
      upstream_max_retries: the SDK's retries on connection errors, 429 and 5xx.
      save_every: answered requests between saves of the learner.
      max_body_bytes: the largest request body accepted.
      simulated_families: question families of the simulated FAQ teacher.
      simulated_paraphrases: paraphrases per family.
      simulated_seed: seed of the generated FAQ domain.
    """

    models: tuple[str, ...] = Field(
        default=("ol-jax", DEFAULT_ANTHROPIC_MODEL), min_length=1
    )
    upstream: str | None = None
    teacher_model: str = Field(default=DEFAULT_ANTHROPIC_MODEL, min_length=1)
    # The upstream's answer limit, not a local shape (answers are cut to the
    # generator's max_new_tokens for training).
    teacher_max_tokens: Annotated[Count, Field(le=1 << 20)] = Field(default=512, ge=1)
    upstream_timeout_s: float = Field(default=60.0, gt=0)
    # Each retry waits longer (the SDK backs off exponentially).
    upstream_max_retries: Annotated[Count, Field(le=10)] = Field(default=2, ge=0)
    save_every: Count = Field(default=100, ge=1)
    max_body_bytes: Chars = Field(default=MAX_BODY_BYTES, ge=1)
    simulated_families: Capacity = Field(default=60, ge=1)
    simulated_paraphrases: Capacity = Field(default=4, ge=1)
    simulated_seed: Seed = 0


class ProxyNetworkConfig(TeacherProxyConfig):
    """A :class:`~ol_jax.learners.TeacherProxyConfig` with a ``proxy`` section.

    Attributes:
      proxy: the server and teacher settings (see :class:`ProxySection`).
    """

    proxy: ProxySection = Field(default_factory=ProxySection)

    def learner_config(self) -> TeacherProxyConfig:
        """The learner's part of the config (everything but ``proxy``)."""
        return TeacherProxyConfig.model_validate(self.model_dump(exclude={"proxy"}))


def _load_proxy_config(args: argparse.Namespace) -> Any:
    """The validated config: ``--config``, else the network's, else defaults."""
    path = args.config
    if path is None:
        candidate = os.path.join(args.root, args.network, "config.yaml")
        path = candidate if os.path.isfile(candidate) else None
    if path is not None:
        data = load_config(path, ProxyNetworkConfig).model_dump()
    else:
        data = {"network_id": args.network}
    overrides = {}
    if args.upstream is not None:
        overrides["upstream"] = None if args.upstream == "simulated" else args.upstream
    if args.save_every is not None:
        overrides["save_every"] = args.save_every
    data["proxy"] = {**data.get("proxy", {}), **overrides}
    return validate_config(data, ProxyNetworkConfig, source=path or "command line")


def build_proxy(args: argparse.Namespace) -> ProxyServer:
    """The server ``ol-jax proxy`` runs: config, teacher, learner (resumed or new).

    The learner of run ``--run-id`` is loaded from ``<run_dir>/learner`` when one
    was saved there; otherwise a new learner is built from the config.

    Args:
      args: parsed ``ol-jax proxy`` arguments.

    Returns:
      The :class:`ProxyServer` (not yet serving); its ``learner`` must be closed
      after the server.
    """
    from ol_jax.feedback import AnthropicTeacher, SimulatedTeacher, faq_domain
    from ol_jax.learners import TeacherProxyLearner
    from ol_jax.store import RunStore, new_run_id

    config = _load_proxy_config(args)
    proxy = config.proxy
    learner_config = config.learner_config()
    if proxy.upstream is None:
        teacher = SimulatedTeacher(
            faq_domain(
                proxy.simulated_families,
                paraphrases=proxy.simulated_paraphrases,
                seed=proxy.simulated_seed,
            )
        )
    else:
        teacher = AnthropicTeacher(
            proxy.teacher_model,
            base_url=proxy.upstream,
            timeout=proxy.upstream_timeout_s,
            max_retries=proxy.upstream_max_retries,
            max_tokens=proxy.teacher_max_tokens,
        )
    run_id = args.run_id or new_run_id()
    with RunStore(args.root, config=learner_config) as store:
        runs_dir = store.runs_dir
    saved = saved_learner_path(os.path.join(runs_dir, run_id))
    if saved is not None:
        learner = TeacherProxyLearner.load(saved, root=args.root, run_id=run_id)
    else:
        learner = TeacherProxyLearner(learner_config, root=args.root, run_id=run_id)
    try:
        return ProxyServer(
            learner,
            teacher,
            models=proxy.models,
            run_dir=learner.run_dir,
            save_every=proxy.save_every,
            host=args.host,
            port=args.port,
            max_body_bytes=proxy.max_body_bytes,
        )
    except BaseException:
        learner.close()
        raise


def proxy_main(argv: Sequence[str] | None = None) -> int:
    """Runs ``ol-jax proxy`` until SIGINT or SIGTERM; saves the learner on the way out.

    Args:
      argv: command-line arguments after ``proxy`` (see ``--help``).

    Returns:
      The exit status.
    """
    import signal

    args = _parser().parse_args(argv)
    from ol_jax.core import enable_compilation_cache

    enable_compilation_cache()
    server = build_proxy(args)

    def stop(signum: int, frame: Any) -> None:
        del signum, frame
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        print(
            f"ol-jax proxy: serving {server.url} (POST /v1/messages, GET /stats); "
            f"run folder {server.run_dir}",
            flush=True,
        )
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        try:
            server.close()
        finally:
            server.learner.close()
        print("ol-jax proxy: stopped; learner saved", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(proxy_main())
