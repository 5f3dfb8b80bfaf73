"""Tests for the Anthropic Messages API rater, against a local imitation server."""

import base64
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ol_jax.feedback import (
    AnthropicRater,
    Rater,
    RaterError,
    SimulatedRater,
    glyph_png,
    parse_rating,
)

anthropic = pytest.importorskip("anthropic")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def api(messages_api):
    """The loopback fake Messages API of ``tests/conftest.py``."""
    return messages_api


@pytest.fixture
def image():
    t = np.linspace(-1, 1, 16, dtype=np.float32)
    y, x = np.meshgrid(t, t, indexing="ij")
    return np.exp(-np.square(8 * (np.sqrt(x * x + y * y) - 0.5))).astype(np.float32)


def _rater(api, **kwargs):
    return AnthropicRater(
        "calm",
        api_key="test-key",
        base_url=api.base_url,
        sdk_max_retries=0,
        timeout=10.0,
        **kwargs,
    )


def test_valid_answer_and_request_shape(api, image):
    api.answer('{"rating": 7}')
    rater = _rater(api)
    assert isinstance(rater, Rater) and rater.personality == "calm"
    assert rater.rate(image) == 7
    assert len(api.requests) == 1
    path, headers, body = api.requests[0]
    assert path == "/v1/messages"
    # The key travels as x-api-key or as a bearer token, depending on SDK version.
    assert (
        headers.get("x-api-key") == "test-key"
        or headers.get("authorization") == "Bearer test-key"
    )
    assert body["model"] and body["max_tokens"] > 0
    content = body["messages"][0]["content"]
    block = next(b for b in content if b["type"] == "image")
    assert block["source"]["type"] == "base64"
    assert block["source"]["media_type"] == "image/png"
    png = base64.b64decode(block["source"]["data"])
    assert png.startswith(PNG_MAGIC)
    text = next(b for b in content if b["type"] == "text")["text"]
    assert "calm" in text and '"rating"' in text


def test_rating_with_words_around_json(api, image):
    api.answer('Looking at the glyph, I would say {"rating": 4} overall.')
    assert _rater(api).rate(image) == 4


def test_malformed_then_valid_retries(api, image):
    api.answer("I think it is quite calm.", '{"rating": 9}')
    assert _rater(api).rate(image) == 9
    assert len(api.requests) == 2
    retry = api.requests[1][2]["messages"]
    assert [m["role"] for m in retry] == ["user", "assistant", "user"]
    assert "invalid" in retry[2]["content"]


def test_malformed_twice_is_a_clear_error(api, image):
    api.answer("no idea", "still no idea")
    with pytest.raises(RaterError, match=r"after 2 attempt\(s\).*still no idea"):
        _rater(api).rate(image)
    assert len(api.requests) == 2


def test_out_of_range_twice_is_a_clear_error(api, image):
    api.answer('{"rating": 11}', '{"rating": 11}')
    with pytest.raises(RaterError, match=r"rating must be in 1..10, got 11"):
        _rater(api).rate(image)


def test_no_retry_when_disabled(api, image):
    api.answer('{"rating": 0}')
    with pytest.raises(RaterError, match=r"after 1 attempt\(s\)"):
        _rater(api, max_retries_on_invalid=0).rate(image)
    assert len(api.requests) == 1


def test_http_500_surfaces(api, image):
    api.replies.append(
        (500, {"type": "error", "error": {"type": "api_error", "message": "boom"}})
    )
    with pytest.raises(RaterError, match=r"HTTP 500.*boom") as info:
        _rater(api).rate(image)
    assert isinstance(info.value.__cause__, anthropic.APIStatusError)


def test_missing_key(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ValueError, match="ANTHROPIC_API_KEY"):
        AnthropicRater("calm")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "from-env")
    assert AnthropicRater("calm").personality == "calm"


def test_bad_image_rejected_before_request(api):
    with pytest.raises(ValueError, match="image"):
        _rater(api).rate(np.full((8, 8), 2.0, np.float32))
    assert api.requests == []


def test_glyph_png_renders_ink_dark(image):
    from PIL import Image

    png = glyph_png(image, scale=2)
    img = np.asarray(Image.open(io.BytesIO(png)))
    assert img.shape == (32, 32) and img.dtype == np.uint8
    # Full ink (1.0) is black, no ink is white.
    assert img[0, 0] == 255 and img.min() < 10
    assert isinstance(SimulatedRater("calm"), Rater)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"rating": 1}', 1),
        ('{"rating": 10}', 10),
        ('Rating: {"reason": "x"} then {"rating": 3}', 3),
        ('```json\n{"rating": 8}\n```', 8),
    ],
)
def test_parse_rating_valid(text, expected):
    assert parse_rating(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"rating": 7.5}', "must be an integer, got 7.5"),
        ('{"rating": "7"}', "must be an integer"),
        ('{"rating": true}', "must be an integer"),
        ('{"rating": 0}', "got 0"),
        ("seven", "no JSON object"),
        ("", "no JSON object"),
    ],
)
def test_parse_rating_invalid(text, message):
    with pytest.raises(ValueError, match=message):
        parse_rating(text)


@settings(max_examples=25)
@given(st.text(max_size=80))
def test_parse_rating_property(text):
    try:
        rating = parse_rating(text)
    except ValueError:
        return
    assert isinstance(rating, int) and 1 <= rating <= 10
