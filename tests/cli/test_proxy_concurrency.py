"""The proxy's server in-process: forwarded requests wait for their teachers at
once, learning follows them in arrival order, and a full learning queue drops
learning, never replies."""

import threading

import pytest

from ol_jax.cli._proxy_server import ProxyServer
from ol_jax.learners import TeacherProxyConfig, TeacherProxyLearner

anthropic = pytest.importorskip("anthropic")

MODEL = "ol-jax-test"
CLIENTS = 8


class BarrierTeacher:
    """Answers only once ``parties`` calls are waiting at once: serialized
    calls would break the barrier (its timeout) and fail the request."""

    def __init__(self, parties: int, timeout_s: float = 120.0):
        self.barrier = threading.Barrier(parties, timeout=timeout_s)
        self.lock = threading.Lock()
        self.running = self.peak = 0

    def __call__(self, query: str) -> str:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            self.barrier.wait()
        finally:
            with self.lock:
                self.running -= 1
        return f"Teacher says: {query[::-1]}"


@pytest.fixture
def serve(tmp_path):
    """``serve(teacher, **server_kwargs)``: a ProxyServer on a thread, a
    learner that forwards everything (a long cold start), and the order in
    which it learns (decision indices)."""
    started = []

    def start(teacher, **kwargs):
        config = TeacherProxyConfig(
            network_id="proxy-concurrency",
            encoder={"name": "tiny"},
            generator={"name": "tiny", "max_new_tokens": 8, "max_length": 40},
            policy={"cold_start": 1000, "conservative_until": 1000},
        )
        learner = TeacherProxyLearner(config, root=str(tmp_path / "networks"))
        learned, real_learn = [], learner.learn

        def learn(decision):
            learned.append(decision.index)
            return real_learn(decision)

        learner.learn = learn
        server = ProxyServer(
            learner, teacher, models=(MODEL,), run_dir=learner.run_dir, **kwargs
        )
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        started.append((server, thread, learner))
        return server, learned

    yield start
    for server, thread, learner in started:
        server.shutdown()
        thread.join(timeout=60)
        server.close()
        learner.close()


def _ask_all(server, n):
    """``n`` SDK clients asking at once; returns their answers by client."""
    answers, errors = {}, []

    def ask(i):
        client = anthropic.Anthropic(
            base_url=server.url, api_key="test", max_retries=0, timeout=300
        )
        try:
            message = client.messages.create(
                model=MODEL,
                max_tokens=64,
                messages=[{"role": "user", "content": f"Question {i}?"}],
            )
            answers[i] = message.content[0].text
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return answers


def test_forwarded_requests_wait_for_the_teacher_together(serve):
    teacher = BarrierTeacher(CLIENTS)
    server, learned = serve(teacher)
    answers = _ask_all(server, CLIENTS)
    # All eight teacher calls were in flight at once (else the barrier breaks).
    assert teacher.peak == CLIENTS
    assert answers == {i: f"Teacher says: {f'Question {i}?'[::-1]}" for i in answers}
    stats = server.stats()  # waits for the learning queue
    assert stats["server"]["forwarded"] == CLIENTS
    assert stats["learner"]["queries"] == CLIENTS
    # Learned from every answer, in arrival (routing) order, although the
    # teachers finished in any order.
    assert learned == list(range(CLIENTS))
    assert stats["server"]["learned"] == CLIENTS


def test_a_full_learning_queue_drops_learning_not_replies(serve):
    hold = threading.Event()
    teacher = BarrierTeacher(1)
    server, learned = serve(teacher, max_learning_backlog=2)
    real_learn = server.learner.learn

    def slow_learn(decision):
        hold.wait(120)
        return real_learn(decision)

    server.learner.learn = slow_learn
    # The learning thread is held: the first two answers fill the queue, the
    # other four are answered all the same and counted as not learned.
    for i in range(6):
        _ask_all(server, 1)
    assert server.counters["learn_dropped"] == 4
    assert "not learned" in server.last_error
    hold.set()
    stats = server.stats()
    assert stats["server"]["answered"] == 6 and stats["server"]["learned"] == 2
    assert learned == [0, 1]
