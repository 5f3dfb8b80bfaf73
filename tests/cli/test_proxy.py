"""``ol-jax proxy`` end to end: the official ``anthropic`` SDK as the client, a
loopback fake Messages API as the upstream teacher, tiny random models."""

import json
import os
import threading
import urllib.error
import urllib.request

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ol_jax.cli import main
from ol_jax.feedback import faq_domain

anthropic = pytest.importorskip("anthropic")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = "ol-jax-test"
# Tiny random encoder and generator: the proxy starts and learns in seconds.
TINY = {
    "network_id": "proxy-test",
    "policy": {"cold_start": 2, "conservative_until": 4},
    "encoder": {"name": "tiny"},
    "generator": {"name": "tiny", "max_new_tokens": 16, "max_length": 48},
    "proxy": {
        "models": [MODEL, "claude-test"],
        "simulated_families": 4,
        # Exact matching: no MiniLM to load for the offline teacher.
        "simulated_encoder": None,
    },
}


def _ask(client, text, model=MODEL):
    response = client.messages.with_raw_response.create(
        model=model, max_tokens=64, messages=[{"role": "user", "content": text}]
    )
    return response.headers, response.parse()


def _decisions(run_dir):
    with open(os.path.join(run_dir, "decisions.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def upstream(module_messages_api):
    module_messages_api.respond = lambda query: f"Teacher says: {query[::-1]}"
    return module_messages_api


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, upstream, proxy_process):
    """A proxy whose teacher is the fake API (1 s timeout, no SDK retries).

    Its cold start outlasts the module, so every query goes upstream; the last
    test stops it and resumes its run.
    """
    tmp = tmp_path_factory.mktemp("proxy")
    server = proxy_process(
        tmp,
        "--upstream",
        upstream.base_url,
        "--run-id",
        "fake-upstream",
        "--save-every",
        "5",
        env={"ANTHROPIC_API_KEY": "upstream-key"},
        config={
            **TINY,
            "policy": {"cold_start": 1000, "conservative_until": 1000},
            "proxy": {
                **TINY["proxy"],
                "upstream_timeout_s": 1.0,
                "upstream_max_retries": 0,
                "teacher_model": "claude-teacher",
            },
        },
    )
    server.tmp = tmp
    yield server
    server.stop()


def _queries(proxy):
    return proxy.stats()["learner"]["queries"]


# ------------------------------------------------------------------ answers


def test_sdk_client_gets_teacher_answers_and_learner_learns(proxy, upstream):
    client = proxy.client()
    before = proxy.stats()
    for text in ("How do I reset my password?", "Where is my invoice?"):
        headers, message = _ask(client, text)
        assert message.type == "message" and message.role == "assistant"
        assert message.model == MODEL and message.stop_reason == "end_turn"
        assert message.content[0].type == "text"
        assert headers["x-ol-jax-route"] == "forward"
        assert headers["x-ol-jax-reason"] == "cold_start"
        assert message.content[0].text == f"Teacher says: {text[::-1]}"
        # Usage in the generator's tokens: UTF-8 bytes for the tiny test model.
        assert message.usage.output_tokens == len(message.content[0].text.encode())
        assert message.usage.input_tokens == len(text.encode())
    after = proxy.stats()
    assert after["learner"]["queries"] == before["learner"]["queries"] + 2
    assert after["server"]["answered"] == before["server"]["answered"] + 2
    # The learner learns between requests: a stats call waits for that update.
    assert after["server"]["learned"] == before["server"]["learned"] + 2
    _, headers, body = upstream.requests[-1]
    assert body["model"] == "claude-teacher"
    sent = headers.get("x-api-key") or headers.get("authorization", "")
    assert sent.endswith("upstream-key")


def test_content_blocks_system_and_history(proxy, upstream):
    response = proxy.client().messages.with_raw_response.create(
        model="claude-test",
        max_tokens=32,
        system=[{"type": "text", "text": "Answer briefly."}],
        messages=[
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "hi"},
            {"role": "user", "content": [{"type": "text", "text": "Cancel my plan"}]},
        ],
    )
    assert response.parse().model == "claude-test"
    # Only the last user message is the query the teacher gets.
    assert upstream.requests[-1][2]["messages"][-1]["content"] == "Cancel my plan"
    assert _decisions(proxy.run_dir)[-1]["query"] == "Cancel my plan"


def test_long_answer_is_cut_at_max_tokens_tokens(proxy):
    message = proxy.client().messages.create(
        model=MODEL,
        max_tokens=7,
        messages=[{"role": "user", "content": "one two three four"}],
    )
    assert message.content[0].text == "Teacher"
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 7
    # The learner saw the whole teacher answer.
    assert _decisions(proxy.run_dir)[-1]["answer"] == "Teacher says: ruof eerht owt eno"


def test_concurrent_requests_are_all_served(proxy):
    client = proxy.client()
    before = _queries(proxy)
    results = []

    def ask(i):
        results.append(_ask(client, f"Question number {i}?")[1].content[0].text)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(results)
    assert _queries(proxy) == before + 4


def test_forwarded_answers_stream_from_the_teachers_stream(proxy, upstream):
    client = proxy.client()
    text = "Stream this one"
    question = [{"role": "user", "content": text}]
    created = client.messages.create(model=MODEL, max_tokens=64, messages=question)
    with client.messages.stream(model=MODEL, max_tokens=64, messages=question) as s:
        pieces = list(s.text_stream)
        final = s.get_final_message()
    assert upstream.requests[-1][2].get("stream") is True
    assert "".join(pieces) == created.content[0].text == f"Teacher says: {text[::-1]}"
    assert len(pieces) > 1  # passed on piece by piece, as the teacher sent them
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == created.usage.output_tokens
    # The streamed answer was learned from like any other.
    assert _decisions(proxy.run_dir)[-1]["answer"] == created.content[0].text


def test_stop_sequences_cut_forwarded_answers(proxy):
    client = proxy.client()
    question = [{"role": "user", "content": "abc def"}]
    message = client.messages.create(
        model=MODEL, max_tokens=64, messages=question, stop_sequences=[" fed"]
    )
    assert message.content[0].text == "Teacher says:"
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", " fed")
    with client.messages.stream(
        model=MODEL, max_tokens=64, messages=question, stop_sequences=[" fed"]
    ) as s:
        assert "".join(s.text_stream) == "Teacher says:"
    # The learner still learned the whole answer.
    assert _decisions(proxy.run_dir)[-1]["answer"] == "Teacher says: fed cba"


def test_teacher_failure_during_a_stream_is_an_error_event(proxy, upstream):
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "boom"}}
    upstream.replies.append((529, error, 0))
    question = [{"role": "user", "content": "Will this stream?"}]
    with pytest.raises(anthropic.APIStatusError) as info:
        with proxy.client().messages.stream(
            model=MODEL, max_tokens=64, messages=question
        ) as s:
            list(s.text_stream)
    body = info.value.body
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert "HTTP 529 (overloaded_error)" in body["error"]["message"]
    assert "boom" not in json.dumps(body)


def test_what_the_proxy_cannot_answer_goes_upstream_unchanged(proxy, upstream):
    before = proxy.stats()
    tools = [{"name": "lookup", "input_schema": {"type": "object"}}]
    question = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in it?"},
                {"type": "image", "source": {"type": "base64", "data": "AA=="}},
            ],
        }
    ]
    response = proxy.client().messages.with_raw_response.create(
        model=MODEL, max_tokens=32, tools=tools, messages=question
    )
    assert response.headers["x-ol-jax-route"] == "passthrough"
    assert response.parse().model == "claude-fake"  # the upstream's own reply
    _, _, sent = upstream.requests[-1]
    assert sent["tools"] == tools and sent["messages"] == question
    assert sent["model"] == "claude-teacher" and sent["max_tokens"] == 32
    with proxy.client().messages.stream(
        model=MODEL, max_tokens=32, tools=tools, messages=question
    ) as stream:
        assert stream.get_final_message().content[0].text
    assert upstream.requests[-1][2]["stream"] is True
    after = proxy.stats()
    # Nothing is learned from a passed-through request.
    assert after["learner"]["queries"] == before["learner"]["queries"]
    assert after["server"]["passed_through"] == before["server"]["passed_through"] + 2
    error = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}}
    upstream.replies.append((429, error, 0))
    with pytest.raises(anthropic.APIStatusError) as info:
        proxy.client().messages.create(
            model=MODEL, max_tokens=32, tools=tools, messages=question
        )
    assert "HTTP 429 (rate_limit_error)" in info.value.body["error"]["message"]
    assert "slow" not in json.dumps(info.value.body)


def test_decision_log_has_one_line_per_answer(proxy):
    _ask(proxy.client(), "Log this decision, please")
    lines = _decisions(proxy.run_dir)
    stats = proxy.stats()
    assert len(lines) == stats["learner"]["queries"] == stats["server"]["answered"]
    for line in lines:
        assert line["route"] in ("local", "forward")
        for key in ("reason", "similarity", "latency_ms", "cost_saved"):
            assert key in line
        assert line["latency_ms"] >= 0 and line["cost_saved"] >= 0
    assert lines[-1]["query"] == "Log this decision, please"
    # Concurrent forwarded answers are logged as they finish: every number once.
    assert sorted(line["index"] for line in lines) == list(range(len(lines)))


# ------------------------------------------------------------------ upstream failures


def _fails_cleanly(proxy, expected_status, expected_type):
    before = proxy.stats()
    with pytest.raises(anthropic.APIStatusError) as info:
        _ask(proxy.client(), "What happens when the teacher fails?")
    assert info.value.status_code == expected_status
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == expected_type
    assert "upstream teacher failed" in info.value.body["error"]["message"]
    after = proxy.stats()
    # Nothing was learned or counted as a decision.
    assert after["learner"]["queries"] == before["learner"]["queries"]
    assert after["server"]["learned"] == before["server"]["learned"]
    assert after["server"]["upstream_errors"] == before["server"]["upstream_errors"] + 1
    return info.value


def test_upstream_failures_become_anthropic_errors(proxy, upstream):
    before = proxy.stats()
    error = {"type": "error", "error": {"type": "api_error", "message": "boom"}}
    upstream.replies.append((500, error, 0))
    e = _fails_cleanly(proxy, 502, "api_error")
    # The upstream's status and error type, never its body (nor in /stats).
    assert "HTTP 500 (api_error)" in e.body["error"]["message"]
    assert "boom" not in json.dumps(e.body)
    assert "boom" not in json.dumps(proxy.stats())
    secret = {"type": "error", "error": {"type": "x" * 41, "message": "sk-secret"}}
    upstream.replies.append((403, secret, 0))
    e = _fails_cleanly(proxy, 502, "api_error")
    assert e.body["error"]["message"].endswith("failed with HTTP 403")
    assert "sk-secret" not in json.dumps(e.body) + json.dumps(proxy.stats())
    upstream.replies.append((200, b"{this is not json", 0))
    e = _fails_cleanly(proxy, 502, "api_error")
    assert "malformed" in e.body["error"]["message"]
    upstream.replies.append((200, {"type": "message", "content": "nope"}, 0))
    _fails_cleanly(proxy, 502, "api_error")
    upstream.replies.append((200, upstream.message("", content=[]), 0))
    e = _fails_cleanly(proxy, 502, "api_error")
    assert "no text answer" in e.body["error"]["message"]
    upstream.replies.append((200, upstream.message("late"), 3.0))
    e = _fails_cleanly(proxy, 504, "timeout_error")
    assert "timed out after 1 s" in e.body["error"]["message"]
    # The proxy keeps serving and learning after failures.
    _, message = _ask(proxy.client(), "And now?")
    assert message.content[0].text == "Teacher says: ?won dnA"
    after = proxy.stats()
    assert after["learner"]["queries"] == before["learner"]["queries"] + 1
    assert after["server"]["learned"] == before["server"]["learned"] + 1
    errors = after["learner"]["teacher_errors"] - before["learner"]["teacher_errors"]
    assert errors == 6
    assert len(_decisions(proxy.run_dir)) == after["learner"]["queries"]


# ------------------------------------------------------------------ bad input


def _request(**fields):
    body = {
        "model": MODEL,
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "How do I reset my password?"}],
    }
    body.update(fields)
    return {k: v for k, v in body.items() if v is not None}


def _missing(name):
    body = _request()
    del body[name]
    return body


BAD_REQUESTS = [
    ("empty query", _request(messages=[{"role": "user", "content": "  \n "}]), "empty"),
    (
        "empty text blocks",
        _request(
            messages=[{"role": "user", "content": [{"type": "text", "text": " "}] * 2}]
        ),
        "empty",
    ),
    ("invalid JSON", b'{"model": "ol-jax-test", ', "not valid JSON"),
    ("not UTF-8", b"\xff\xfe{}", "not valid JSON"),
    ("not an object", [1, 2], "must be a JSON object"),
    ("unknown model", _request(model="gpt-4"), "unknown model 'gpt-4'"),
    ("missing model", _missing("model"), "model: field required"),
    ("missing max_tokens", _missing("max_tokens"), "max_tokens: field required"),
    ("missing messages", _missing("messages"), "messages: field required"),
    ("model not a string", _request(model=3), "model: expected a string"),
    ("max_tokens zero", _request(max_tokens=0), "max_tokens: must be >= 1"),
    ("max_tokens float", _request(max_tokens=1.5), "max_tokens: expected an integer"),
    ("no messages", _request(messages=[]), "non-empty list"),
    ("bad role", _request(messages=[{"role": "bot", "content": "x"}]), "role"),
    ("no content", _request(messages=[{"role": "user"}]), "content: field required"),
    (
        "last is assistant",
        _request(
            messages=[
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
            ]
        ),
        "last message must be the user's",
    ),
    ("stream not a bool", _request(stream="yes"), "stream: expected a boolean"),
    ("temperature too high", _request(temperature=1.5), "temperature: must be in"),
    ("top_p zero", _request(top_p=0), "top_p: must be in (0, 1]"),
    ("top_k zero", _request(top_k=0), "top_k: expected an integer >= 1"),
    ("stop not a list", _request(stop_sequences="x"), "stop_sequences: expected"),
    ("empty stop", _request(stop_sequences=[""]), "stop_sequences[0]: must be"),
    ("bad system", _request(system=5), "system: expected a string"),
]


@pytest.mark.parametrize(
    ("body", "message"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_input_is_400_and_learns_nothing(proxy, body, message):
    before = proxy.stats()
    status, reply = proxy.post(body)
    assert status == 400
    assert reply["type"] == "error"
    assert reply["error"]["type"] == "invalid_request_error"
    assert message in reply["error"]["message"]
    after = proxy.stats()
    assert after["learner"] == before["learner"]
    assert after["server"]["bad_requests"] == before["server"]["bad_requests"] + 1


def test_body_over_1_mb_is_413(proxy):
    before = proxy.stats()["learner"]
    big = _request(messages=[{"role": "user", "content": "x" * 1_000_001}])
    status, reply = proxy.post(big)
    assert status == 413 and reply["error"]["type"] == "request_too_large"
    assert "the limit is 1000000 bytes" in reply["error"]["message"]
    assert proxy.stats()["learner"] == before


def test_sdk_sees_bad_request_error(proxy):
    with pytest.raises(anthropic.BadRequestError, match="unknown model 'nope'"):
        _ask(proxy.client(), "hello", model="nope")
    with pytest.raises(anthropic.BadRequestError, match="query is empty"):
        _ask(proxy.client(), " ")


def test_unknown_paths_are_404(proxy):
    status, reply = proxy.post(_request(), path="/v1/complete")
    assert status == 404 and reply["error"]["type"] == "not_found_error"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(proxy.url + "/nothing", timeout=30)
    assert info.value.code == 404


_text = st.one_of(st.just(""), st.just("How do I reset my password?"), st.text())
_content = st.one_of(
    _text,
    st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": _text})),
    st.integers(),
)
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system"]), "content": _content}
)
_field = st.one_of(st.none(), st.integers(-2, 3), st.text(max_size=5))


@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    model=st.one_of(st.just(MODEL), _field),
    max_tokens=st.one_of(st.just(16), _field),
    messages=st.one_of(st.lists(_message, max_size=3), _field),
)
def test_any_request_is_answered_or_refused(proxy, model, max_tokens, messages):
    before = _queries(proxy)
    body = {"model": model, "max_tokens": max_tokens, "messages": messages}
    status, reply = proxy.post({k: v for k, v in body.items() if v is not None})
    if status == 200:
        assert reply["content"][0]["type"] == "text"
        assert _queries(proxy) == before + 1
    else:
        assert status == 400, reply
        assert reply["error"]["type"] == "invalid_request_error"
        assert reply["error"]["message"]
        assert _queries(proxy) == before


# ------------------------------------------------------------------ save and resume


def test_saves_every_n_and_on_shutdown_then_resumes(proxy, proxy_process):
    # Runs last in this module: it stops the shared proxy.
    stats = proxy.stats()
    answered = stats["server"]["answered"]
    assert answered >= 5 and stats["server"]["saves"] == answered // 5
    assert os.path.isdir(os.path.join(proxy.run_dir, "learner"))
    before = stats["learner"]
    assert proxy.stop() == 0
    assert "learner saved" in "".join(proxy.output)

    # Resumed without --upstream: the default teacher is the offline FAQ one.
    resumed = proxy_process(proxy.tmp, "--run-id", "fake-upstream", config=TINY)
    try:
        assert resumed.run_dir == proxy.run_dir
        stats = resumed.stats()["learner"]
        assert stats["queries"] == before["queries"]
        assert stats["updates"] == before["updates"]
        assert stats["reasons"] == before["reasons"]
        assert stats["teacher_errors"] == before["teacher_errors"]
        query = faq_domain(4).queries[0]
        _, message = _ask(resumed.client(), query)
        assert message.content[0].text == faq_domain(4).answer(query)
        lines = _decisions(resumed.run_dir)
        assert sorted(line["index"] for line in lines) == list(range(len(lines)))
        assert len(lines) == before["queries"] + 1
    finally:
        assert resumed.stop() == 0


# ------------------------------------------------------------------ command line


def test_help_documents_the_options(capsys):
    with pytest.raises(SystemExit) as info:
        main(["proxy", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--host", "--port", "--config", "--upstream", "--run-id"):
        assert option in out
    assert "/v1/messages" in out and "/stats" in out
    # The simulated teacher's domain, one line per family.
    assert "matched by meaning" in out
    for family in faq_domain(60).families:
        assert f"  {family.name}: {family.paraphrases[0]}" in out


def test_bad_config_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**TINY, "proxy": {"save_evry": 3}}))
    assert main(["proxy", "--config", str(path), "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "proxy.save_evry: unknown key (did you mean 'save_every'?)" in err


@pytest.mark.slow
def test_real_models_behind_the_proxy(tmp_path, proxy_process):
    """SmolLM2-135M generator and all-MiniLM-L6-v2 encoder (the shipped config)."""
    with open(os.path.join(REPO, "configs", "teacher_proxy.yaml")) as f:
        config = yaml.safe_load(f)
    config["policy"] = {**config["policy"], "cold_start": 2, "conservative_until": 2}
    config["proxy"] = {"models": [MODEL], "simulated_families": 4}
    server = proxy_process(tmp_path, "--run-id", "real", config=config)
    try:
        queries = faq_domain(4).queries
        for text in queries[:4]:
            _, message = _ask(server.client(), text)
            assert message.content[0].text
        stats = server.stats()
        assert stats["learner"]["queries"] == 4 and stats["server"]["learned"] == 4
        assert stats["learner"]["updates"]["generator"] >= 2
        lines = _decisions(server.run_dir)
        assert [line["route"] for line in lines[:2]] == ["forward", "forward"]
    finally:
        assert server.stop() == 0
    assert os.path.isdir(os.path.join(server.run_dir, "learner"))
