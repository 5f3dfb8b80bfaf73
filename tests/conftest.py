"""Test session settings: strict numerics, a hypothesis profile for jitted code."""

import os

import jax
import pytest
from hypothesis import HealthCheck, settings

from ol_jax.core import enable_compilation_cache

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
enable_compilation_cache()

# Compilation times vary on a shared 2-core machine, so no deadline; under CI the
# examples are derandomized so that a failure reproduces.
settings.register_profile(
    "jit",
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=bool(os.environ.get("CI")),
)
settings.load_profile("jit")


def pytest_collection_modifyitems(items):
    """Runs the test files holding slow end-to-end tests first.

    With ``pytest -n 2 --dist loadfile --no-loadscope-reorder`` (the README's
    test command) each file runs on one worker in its own order, and the long
    real-model files start at once instead of one of them starting last and
    running alone. The order inside a file is kept (the sort is stable).
    """
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


@pytest.fixture
def rng_key():
    return jax.random.key(0)


@pytest.fixture
def standard_promotion():
    """For tests that call optax's Adam directly: it is not strict-promotion clean."""
    with jax.numpy_dtype_promotion("standard"):
        yield


class FakeMessagesAPI:
    """A loopback imitation of ``POST /v1/messages`` for API client tests.

    Replies come from ``replies`` in order, ``(status, body)`` or ``(status, body,
    delay_s)`` with a dict body sent as JSON and bytes sent raw (``answer(*texts)``
    queues well-formed messages), then from ``respond(query) -> text`` as a
    well-formed message. Every request is kept in ``requests`` as
    ``(path, headers, body)``.
    """

    def __init__(self):
        import json
        import threading
        import time
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.replies = []
        self.requests = []
        self.respond = lambda query: f"answer to: {query}"
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                headers = {k.lower(): v for k, v in self.headers.items()}
                api.requests.append((self.path, headers, body))
                if api.replies:
                    status, reply, *delay = api.replies.pop(0)
                else:
                    content = body["messages"][-1]["content"]
                    status, reply, delay = 200, api.message(api.respond(content)), []
                time.sleep(sum(delay))
                if body.get("stream") and status == 200 and isinstance(reply, dict):
                    self._stream(reply)
                    return
                data = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (a timeout test)
                    pass

            def _stream(self, reply):
                """A message reply as server-sent events, one word per delta."""
                start = {**reply, "content": [], "stop_reason": None}
                events = [("message_start", {"message": start})]
                for i, block in enumerate(reply.get("content") or []):
                    text = block.get("text", "") if isinstance(block, dict) else ""
                    events.append(
                        (
                            "content_block_start",
                            {"index": i, "content_block": {**block, "text": ""}},
                        )
                    )
                    words = text.split(" ") if isinstance(text, str) else []
                    pieces = [w + " " for w in words[:-1]] + words[-1:]
                    for piece in pieces:
                        events.append(
                            (
                                "content_block_delta",
                                {
                                    "index": i,
                                    "delta": {"type": "text_delta", "text": piece},
                                },
                            )
                        )
                    events.append(("content_block_stop", {"index": i}))
                events.append(
                    (
                        "message_delta",
                        {
                            "delta": {"stop_reason": reply.get("stop_reason")},
                            "usage": {"output_tokens": 1},
                        },
                    )
                )
                events.append(("message_stop", {}))
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("connection", "close")
                self.end_headers()
                for name, data in events:
                    line = json.dumps({"type": name, **data})
                    self.wfile.write(f"event: {name}\ndata: {line}\n\n".encode())
                self.wfile.flush()

            def log_message(self, *args):
                del args

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def message(text, *, content=None, stop_reason="end_turn"):
        """A Messages API reply body with one text block (or ``content``)."""
        return {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": "claude-fake",
            "content": [{"type": "text", "text": text}] if content is None else content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 5},
        }

    def answer(self, *texts):
        """Queues one well-formed reply per text."""
        self.replies.extend((200, self.message(t)) for t in texts)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def messages_api():
    """A :class:`FakeMessagesAPI` on 127.0.0.1, closed after the test."""
    api = FakeMessagesAPI()
    yield api
    api.close()


@pytest.fixture(scope="module")
def module_messages_api():
    """A :class:`FakeMessagesAPI` shared by the tests of one module."""
    api = FakeMessagesAPI()
    yield api
    api.close()
