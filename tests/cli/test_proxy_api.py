"""The proxy's pure Messages API helpers: parsing, answer cuts, streamed cuts."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ol_jax.cli._proxy_api import (
    AnswerStream,
    BadRequest,
    cut_answer,
    json_depth,
    parse_messages_request,
    sse_event,
)

MODELS = ("m",)


def byte_ends(text):
    """Token ends of a UTF-8 byte tokenizer (the tiny test generator's)."""
    return [i + 1 for i, ch in enumerate(text) for _ in ch.encode("utf-8")]


def word_ends(text):
    """Token ends of a tokenizer with one token per word and its leading spaces."""
    ends, i = [], 0
    while i < len(text):
        while i < len(text) and text[i] == " ":
            i += 1
        while i < len(text) and text[i] != " ":
            i += 1
        ends.append(i)
    return ends


def _recursive_depth(value):
    if isinstance(value, dict):
        return 1 + max((_recursive_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_recursive_depth(v) for v in value), default=0)
    return 0


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=2), inner, max_size=3)
    ),
    max_leaves=20,
)


@given(_json)
def test_json_depth_matches_the_recursive_definition(value):
    assert json_depth(value) == _recursive_depth(value)


def test_json_depth_of_very_deep_values_does_not_recurse():
    value = []
    for _ in range(50_000):
        value = [value]
    assert json_depth(value) == 50_001


_text = st.text(alphabet="ab cé>", max_size=30)
_stops = st.lists(st.text(alphabet="ab c>", min_size=1, max_size=3), max_size=3)


@settings(max_examples=300)
@given(text=_text, stops=_stops, max_tokens=st.integers(1, 40))
def test_cut_answer_is_a_prefix_within_budget_without_stops(text, stops, max_tokens):
    for ends in (byte_ends, word_ends):
        cut = cut_answer(
            text, max_tokens=max_tokens, stop_sequences=stops, token_ends=ends
        )
        assert text.startswith(cut.text)
        assert cut.output_tokens == len(ends(cut.text)) <= max_tokens
        if cut.stop_reason == "stop_sequence":
            assert cut.stop_sequence in stops
            assert text[len(cut.text) :].startswith(cut.stop_sequence)
        else:
            assert cut.stop_sequence is None
        # No stop sequence ends inside what is served.
        assert not any(s in cut.text for s in stops)
        if cut.stop_reason == "end_turn":
            assert cut.text == text


def test_answer_stream_waits_for_a_stop_that_may_start_earlier():
    stream = AnswerStream(max_tokens=1, stop_sequences=[">>>"], token_ends=byte_ends)
    assert stream.feed(">>") == ""  # the budget cut at ">" may yet be a stop
    assert stream.feed(">") == ""
    assert stream.finish()[1].stop_reason == "stop_sequence"
    stream = AnswerStream(
        max_tokens=50, stop_sequences=["abcd", "c"], token_ends=byte_ends
    )
    assert stream.feed("abc") == ""  # "c" found, but "abcd" may start earlier
    assert stream.feed("d") == ""
    assert stream.finish()[1].text == ""


def test_cut_answer_examples():
    cut = cut_answer(
        "Go to Settings > Security.",
        max_tokens=100,
        stop_sequences=[">", "Sec"],
        token_ends=byte_ends,
    )
    assert (cut.text, cut.stop_reason, cut.stop_sequence) == (
        "Go to Settings ",
        "stop_sequence",
        ">",
    )
    cut = cut_answer("one two three", max_tokens=2, token_ends=word_ends)
    assert (cut.text, cut.stop_reason, cut.output_tokens) == (
        "one two",
        "max_tokens",
        2,
    )


@settings(max_examples=1000)
@given(
    text=_text,
    stops=_stops,
    max_tokens=st.integers(1, 40),
    cuts=st.lists(st.integers(0, 30), max_size=6),
)
def test_answer_stream_assembles_to_the_whole_cut(text, stops, max_tokens, cuts):
    """Any split of the answer streams exactly the non-streamed answer."""
    for ends in (byte_ends, word_ends):
        whole = cut_answer(
            text, max_tokens=max_tokens, stop_sequences=stops, token_ends=ends
        )
        stream = AnswerStream(
            max_tokens=max_tokens, stop_sequences=stops, token_ends=ends
        )
        bounds = sorted({0, len(text), *(min(c, len(text)) for c in cuts)})
        served = ""
        for lo, hi in zip(bounds, bounds[1:], strict=False):
            served += stream.feed(text[lo:hi])
            # Nothing served is ever taken back.
            assert whole.text.startswith(served)
        rest, cut = stream.finish()
        assert served + rest == whole.text == cut.text
        assert cut == whole


def _body(**fields):
    body = {
        "model": "m",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "q"}],
    }
    body.update(fields)
    return json.dumps(body).encode()


def test_parse_collects_unsupported_fields_instead_of_dropping_them():
    request = parse_messages_request(
        _body(
            tools=[{"name": "t"}],
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look", "cache_control": {}},
                        {"type": "image", "source": {}},
                    ],
                }
            ],
        ),
        models=MODELS,
    )
    assert request.unsupported == (
        "tools",
        "messages[0].content[1].type ('image' blocks)",
    )
    assert request.query == "look"


def test_parse_reads_sampling_and_stops():
    request = parse_messages_request(
        _body(temperature=0.5, top_p=0.9, top_k=3, stop_sequences=["x"], stream=True),
        models=MODELS,
    )
    assert (request.temperature, request.top_p, request.top_k) == (0.5, 0.9, 3)
    assert request.stop_sequences == ("x",) and request.stream and request.sampled
    assert not parse_messages_request(_body(temperature=0), models=MODELS).sampled


def test_count_only_needs_no_max_tokens():
    body = json.dumps(
        {
            "model": "m",
            "system": "s",
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
            ],
        }
    )
    request = parse_messages_request(body.encode(), models=MODELS, count_only=True)
    assert request.texts == ("s", "a", "b")
    with pytest.raises(BadRequest, match="max_tokens: field required"):
        parse_messages_request(body.encode(), models=MODELS)


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_raise_bad_request(body):
    try:
        parse_messages_request(body, models=MODELS)
    except BadRequest as e:
        assert e.status == 400 and str(e)


def test_sse_event_format():
    assert (
        sse_event("ping", {"type": "ping"})
        == b'event: ping\ndata: {"type": "ping"}\n\n'
    )
