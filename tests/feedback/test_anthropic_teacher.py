"""Tests for the Anthropic Messages API teacher, against a loopback fake API."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ol_jax.feedback import AnthropicTeacher, Teacher, TeacherError

anthropic = pytest.importorskip("anthropic")


def _teacher(api, **kwargs):
    kwargs = {"api_key": "test-key", "max_retries": 0, "timeout": 10.0, **kwargs}
    return AnthropicTeacher("claude-teacher", base_url=api.base_url, **kwargs)


def test_answer_and_request_shape(messages_api):
    messages_api.respond = lambda q: f"The answer to {q!r} is 42."
    teacher = _teacher(messages_api, max_tokens=100, system="Be brief.")
    assert isinstance(teacher, Teacher)
    assert teacher("What is six times seven?") == (
        "The answer to 'What is six times seven?' is 42."
    )
    path, headers, body = messages_api.requests[0]
    assert path == "/v1/messages"
    assert (
        headers.get("x-api-key") == "test-key"
        or headers.get("authorization") == "Bearer test-key"
    )
    assert body["model"] == "claude-teacher" and body["max_tokens"] == 100
    assert body["system"] == "Be brief."
    assert body["messages"] == [{"role": "user", "content": "What is six times seven?"}]
    assert "claude-teacher" in repr(teacher)


def test_text_blocks_are_joined_and_others_skipped(messages_api):
    content = [
        {"type": "text", "text": "Par"},
        {"type": "tool_use", "id": "t1", "name": "lookup", "input": {}},
        {"type": "text", "text": "is."},
    ]
    messages_api.replies.append((200, messages_api.message("", content=content), 0))
    assert _teacher(messages_api)("capital of France?") == "Paris."


def test_key_from_environment(monkeypatch, messages_api):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ValueError, match="ANTHROPIC_API_KEY"):
        AnthropicTeacher("claude-teacher")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "from-env")
    teacher = AnthropicTeacher(base_url=messages_api.base_url, max_retries=0)
    assert teacher("hi") == "answer to: hi"
    headers = messages_api.requests[0][1]
    assert "from-env" in (
        headers.get("x-api-key"),
        headers.get("authorization", "")[7:],
    )


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (
            (500, {"type": "error", "error": {"type": "api_error", "message": "boom"}}),
            r"HTTP 500.*boom",
        ),
        (
            (
                529,
                {
                    "type": "error",
                    "error": {"type": "overloaded_error", "message": "x"},
                },
            ),
            r"HTTP 529",
        ),
        ((200, b"{not json"), r"malformed .*JSONDecodeError"),
        ((200, b""), r"malformed .*JSONDecodeError"),
        ((200, {"hello": "world"}), r"malformed .*content must be a list"),
        ((200, {"type": "message", "content": "a string"}), r"must be a list"),
        ((200, {"content": [{"type": "text", "text": 5}]}), "no text answer"),
    ],
)
def test_failures_raise_teacher_error(messages_api, reply, message):
    messages_api.replies.append((*reply, 0))
    with pytest.raises(TeacherError, match=message):
        _teacher(messages_api)("a question")


@pytest.mark.parametrize(
    ("content", "stop_reason", "message"),
    [
        ([], "end_turn", r"no text answer.*\[\]"),
        ([{"type": "text", "text": "  \n"}], "end_turn", "no text answer"),
        (
            [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
            "tool_use",
            r"no text answer.*tool_use",
        ),
        ([{"type": "text", "text": "I can't."}], "refusal", "refused"),
    ],
)
def test_unusable_replies_raise_teacher_error(
    messages_api, content, stop_reason, message
):
    reply = messages_api.message("", content=content, stop_reason=stop_reason)
    messages_api.replies.append((200, reply, 0))
    with pytest.raises(TeacherError, match=message):
        _teacher(messages_api)("a question")


def test_timeout_raises_teacher_error(messages_api):
    messages_api.replies.append((200, messages_api.message("late"), 1.0))
    with pytest.raises(TeacherError, match=r"timed out after 0.2 s") as info:
        _teacher(messages_api, timeout=0.2)("a question")
    assert isinstance(info.value.__cause__, anthropic.APITimeoutError)


def test_connection_refused_raises_teacher_error(messages_api):
    url = messages_api.base_url
    messages_api.close()
    teacher = AnthropicTeacher(api_key="k", base_url=url, max_retries=0, timeout=2.0)
    with pytest.raises(TeacherError, match="request failed"):
        teacher("a question")


def test_sdk_retries_then_succeeds(messages_api):
    error = {"type": "error", "error": {"type": "api_error", "message": "boom"}}
    messages_api.replies.append((500, error, 0))
    teacher = _teacher(messages_api, max_retries=1)
    # The SDK's retry backoff is short for a single retry.
    assert teacher("q") == "answer to: q"
    assert len(messages_api.requests) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": ""}, "model must be"),
        ({"max_tokens": 0}, "max_tokens must be"),
        ({"max_tokens": True}, "max_tokens must be"),
        ({"timeout": 0.0}, "timeout must be"),
        ({"timeout": float("nan")}, "timeout must be"),
        ({"max_retries": -1}, "max_retries must be"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AnthropicTeacher(api_key="k", **kwargs)


@settings(max_examples=10)
@given(st.text(max_size=5).filter(lambda s: not s.strip()))
def test_blank_query_is_rejected_before_a_request(query):
    teacher = AnthropicTeacher(
        api_key="k", base_url="http://127.0.0.1:9", max_retries=0
    )
    with pytest.raises(ValueError, match="query must be a non-empty string"):
        teacher(query)


@settings(max_examples=10, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(min_size=1, max_size=40).filter(str.strip))
def test_any_text_answer_comes_back_unchanged(messages_api, text):
    messages_api.respond = lambda query: text
    assert _teacher(messages_api)("q") == text
