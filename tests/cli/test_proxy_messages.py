"""The Messages API as SDK clients use it, against ``ol-jax proxy`` serving local
answers: streaming, token counting, models, stop sequences, sampling parameters.

The policy sends every query to the tiny random generator (no cold start, zero
thresholds, no audits), so nothing is ever learned and the learner's state, and
with it every greedy answer, stays the same across the module.
"""

import http.client
import json

import pytest

from ol_jax.feedback import faq_domain

anthropic = pytest.importorskip("anthropic")

MODEL = "ol-jax-test"
CONFIG = {
    "network_id": "proxy-local",
    "policy": {
        "cold_start": 0,
        "conservative_until": 0,
        "router_threshold": 0.0,
        "validator_threshold": 0.0,
        "sampling_start": 0.0,
        "sampling_end": 0.0,
        "answer_memory": 0,
    },
    "encoder": {"name": "tiny"},
    "generator": {"name": "tiny", "max_new_tokens": 16, "max_length": 48},
    "proxy": {
        "models": [MODEL, "second-model"],
        "simulated_families": 4,
        "simulated_encoder": None,
    },
}
QUERY = faq_domain(4).queries[1]
SYSTEM = "Answer briefly."


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, proxy_process):
    server = proxy_process(tmp_path_factory.mktemp("local"), config=CONFIG)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(proxy):
    return proxy.client()


@pytest.fixture(scope="module")
def greedy(client):
    """The non-streamed local answer to QUERY."""
    response = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": QUERY}]
    )
    assert response.headers["x-ol-jax-route"] == "local"
    message = response.parse()
    assert message.content[0].text  # the tiny model answers something non-empty
    return message


def _ask(client, **fields):
    return client.messages.create(
        model=MODEL,
        max_tokens=fields.pop("max_tokens", 64),
        messages=[{"role": "user", "content": QUERY}],
        **fields,
    )


def _sse(proxy, body):
    """(status, [(event, data)]) of a raw streamed request."""
    conn = http.client.HTTPConnection(*proxy.address, timeout=60)
    conn.request(
        "POST",
        "/v1/messages",
        body=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    reply = conn.getresponse()
    text = reply.read().decode()
    conn.close()
    events = []
    for chunk in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in chunk.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    return reply.status, reply.getheader("content-type"), events


# ------------------------------------------------------------------ streaming


def test_stream_assembles_to_the_non_streamed_answer(client, greedy):
    with client.messages.stream(
        model=MODEL, max_tokens=64, messages=[{"role": "user", "content": QUERY}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == final.content[0].text == greedy.content[0].text
    assert final.stop_reason == greedy.stop_reason
    assert final.usage.output_tokens == greedy.usage.output_tokens
    assert final.usage.input_tokens == greedy.usage.input_tokens == len(QUERY.encode())


def test_stream_events_come_in_the_documented_order(proxy, greedy):
    body = {
        "model": MODEL,
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": QUERY}],
    }
    status, content_type, events = _sse(proxy, body)
    assert status == 200 and content_type.startswith("text/event-stream")
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    deltas = [data for name, data in events if name == "content_block_delta"]
    assert set(names[3:-3]) <= {"content_block_delta", "ping"}
    # One generator token per delta (one UTF-8 byte per token here).
    assert len(deltas) >= 2
    assert all(d["delta"]["type"] == "text_delta" and d["index"] == 0 for d in deltas)
    assert "".join(d["delta"]["text"] for d in deltas) == greedy.content[0].text
    for name, data in events:
        assert data["type"] == name
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["input_tokens"] == len(QUERY.encode())
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == greedy.stop_reason
    assert delta["usage"]["output_tokens"] == greedy.usage.output_tokens


def test_create_with_stream_true_gives_raw_events(client, greedy):
    stream = client.messages.create(
        model=MODEL,
        max_tokens=64,
        stream=True,
        messages=[{"role": "user", "content": QUERY}],
    )
    events = list(stream)
    assert events[0].type == "message_start" and events[-1].type == "message_stop"
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == greedy.content[0].text


def test_bad_streamed_request_is_a_plain_400(client):
    with pytest.raises(anthropic.BadRequestError, match="unknown model"):
        with client.messages.stream(
            model="nope", max_tokens=8, messages=[{"role": "user", "content": "q"}]
        ) as stream:
            list(stream.text_stream)


# ------------------------------------------------------------------ stop, sampling


def test_stop_sequences_end_local_answers(client, greedy):
    text = greedy.content[0].text
    stop = text[len(text) // 2 :][:2]
    expected = text[: text.find(stop)]
    message = _ask(client, stop_sequences=["never there \u2603", stop])
    assert message.content[0].text == expected
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == stop
    assert message.usage.output_tokens == len(expected.encode())
    with client.messages.stream(
        model=MODEL,
        max_tokens=64,
        stop_sequences=[stop],
        messages=[{"role": "user", "content": QUERY}],
    ) as stream:
        assert "".join(stream.text_stream) == expected
        assert stream.get_final_message().stop_sequence == stop


def test_max_tokens_cuts_local_answers_in_tokens(client, greedy):
    message = _ask(client, max_tokens=1)
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens <= 1
    assert greedy.content[0].text.startswith(message.content[0].text)


# This SDK's create() no longer names the sampling parameters (recent models
# take none); clients still send them, so they go in extra_body.


def test_top_k_1_and_a_tiny_top_p_sample_the_greedy_answer(client, greedy):
    for fields in (
        {"temperature": 1.0, "top_k": 1},
        {"temperature": 1.0, "top_p": 1e-9},
    ):
        message = _ask(client, extra_body=fields)
        assert message.content[0].text == greedy.content[0].text


def test_temperature_samples_local_answers(client, greedy):
    # The tiny random model is close to uniform over 259 ids: five samples of
    # up to 16 tokens all equal to the greedy answer would be a broken sampler.
    sampled = {"temperature": 1.0}
    texts = {_ask(client, extra_body=sampled).content[0].text for _ in range(5)}
    assert texts - {greedy.content[0].text}
    again = _ask(client, extra_body={"temperature": 0.0})
    assert again.content[0].text == greedy.content[0].text


# ------------------------------------------------------------------ counting, models


def test_count_tokens_uses_the_generator_tokenizer(client, greedy):
    messages = [
        {"role": "user", "content": "hé"},
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
        {"role": "user", "content": QUERY},
    ]
    count = client.messages.count_tokens(model=MODEL, system=SYSTEM, messages=messages)
    expected = sum(len(t.encode()) for t in (SYSTEM, "hé", "ok", QUERY))
    assert count.input_tokens == expected
    message = client.messages.create(
        model=MODEL, max_tokens=64, system=SYSTEM, messages=messages
    )
    assert message.usage.input_tokens == expected
    with pytest.raises(anthropic.BadRequestError, match="unknown model"):
        client.messages.count_tokens(model="nope", messages=messages)
    with pytest.raises(anthropic.BadRequestError, match="tools: not supported"):
        client.messages.count_tokens(
            model=MODEL,
            messages=messages,
            tools=[{"name": "t", "input_schema": {"type": "object"}}],
        )


def test_models_lists_the_accepted_names(client):
    models = list(client.models.list())
    assert [m.id for m in models] == [MODEL, "second-model"]
    assert all(m.type == "model" and m.max_tokens == 65536 for m in models)
    assert client.models.retrieve("second-model").id == "second-model"
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("claude-unknown")


# ------------------------------------------------------------------ errors


def test_each_error_type_reaches_the_sdk(proxy, client):
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(
            model=MODEL,
            max_tokens=8,
            tools=[{"name": "t", "input_schema": {"type": "object"}}],
            messages=[{"role": "user", "content": "q"}],
        )
    assert info.value.body["error"]["type"] == "invalid_request_error"
    assert "tools: not supported by this proxy" in info.value.body["error"]["message"]
    image = {"type": "image", "source": {"type": "base64", "data": "AA=="}}
    with pytest.raises(anthropic.BadRequestError, match=r"content\[1\].type \('image'"):
        client.messages.create(
            model=MODEL,
            max_tokens=8,
            messages=[
                {"role": "user", "content": [{"type": "text", "text": "q"}, image]}
            ],
        )
    with pytest.raises(anthropic.NotFoundError) as info:
        client.post("/v1/nothing", cast_to=object, body={})
    assert info.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(
            model=MODEL,
            max_tokens=8,
            messages=[{"role": "user", "content": "x" * 1_000_001}],
        )
    assert info.value.status_code == 413
    assert info.value.body["error"]["type"] == "request_too_large"
