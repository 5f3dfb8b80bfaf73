"""A real rater: asks a Claude model through the Anthropic Messages API.

The glyph is rendered to a PNG (dark ink on white, upscaled), sent as a base64
image block with a prompt naming the personality, and the model is asked to
answer ``{"rating": <integer 1-10>}``. The answer is validated; a malformed or
out-of-range answer is retried (the bad answer is shown back to the model with
what was wrong), and after the retries a :class:`RaterError` names what came back.

References:
  Anthropic, `Messages API <https://docs.anthropic.com/en/api/messages>`_ and
  `Vision <https://docs.anthropic.com/en/docs/build-with-claude/vision>`_.
"""

import base64
import io
import json
import re
from typing import Any, Protocol, runtime_checkable

import jax
import numpy as np

from ol_jax.feedback._anthropic_client import (
    DEFAULT_ANTHROPIC_MODEL,
    MessagesClient,
    message_text,
)
from ol_jax.feedback._simulated import (
    MAX_RATING,
    MIN_RATING,
    PERSONALITIES,
    _host_images,
    personality_profile,
)


class RaterError(RuntimeError):
    """A rater could not produce a valid rating (bad answers or a failed request)."""


@runtime_checkable
class Rater(Protocol):
    """Anything that rates one glyph image ``[S, S]`` in ``[0, 1]`` with 1..10."""

    @property
    def personality(self) -> str:
        """The personality the glyph is rated against."""
        ...

    def rate(self, image: jax.typing.ArrayLike) -> int:
        """Returns an integer rating in 1..10."""
        ...


def glyph_png(image: jax.typing.ArrayLike, *, scale: int = 4) -> bytes:
    """Renders one glyph to PNG bytes: dark ink (1) on white paper (0), 8-bit grey.

    Args:
      image: ``[S, S]`` with values in ``[0, 1]``.
      scale: integer upscaling factor (nearest neighbour), so that small glyphs are
        legible to a vision model.

    Returns:
      The PNG file's bytes, ``S * scale`` pixels square.
    """
    from PIL import Image  # Pillow ships with matplotlib; imported at the edge only.

    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}")
    arr = _host_images(image, batched=False)
    grey = np.round(255.0 * (1.0 - arr)).astype(np.uint8)
    size = arr.shape[0] * scale
    img = Image.fromarray(grey, mode="L").resize((size, size), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


_JSON_OBJECT = re.compile(r"\{[^{}]*\}")


def parse_rating(text: str) -> int:
    """Extracts the rating from a model answer such as ``'Sure: {"rating": 7}'``.

    The first JSON object in ``text`` with a ``"rating"`` key is used; its value
    must be an integer (not a bool, float or string) in 1..10.

    Args:
      text: the model's answer.

    Returns:
      The rating.

    Raises:
      ValueError: naming what was found, when there is no such object or the
        rating is not an integer in 1..10.
    """
    for candidate in _JSON_OBJECT.findall(text):
        try:
            obj = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict) or "rating" not in obj:
            continue
        rating = obj["rating"]
        if isinstance(rating, bool) or not isinstance(rating, int):
            raise ValueError(f"rating must be an integer, got {rating!r}")
        if not MIN_RATING <= rating <= MAX_RATING:
            raise ValueError(
                f"rating must be in {MIN_RATING}..{MAX_RATING}, got {rating}"
            )
        return rating
    raise ValueError(f'no JSON object with a "rating" key in the answer {text!r}')


def _prompt(personality: str) -> str:
    if personality in PERSONALITIES:
        described = f"{personality} ({personality_profile(personality).description})"
    else:
        described = personality
    return (
        "The image shows one generated glyph: dark strokes on white. Rate how well "
        f"its visual style matches the personality: {described}. Use a scale from "
        f"{MIN_RATING} (no match) to {MAX_RATING} (perfect match). Answer with only "
        'a JSON object of the form {"rating": <integer 1-10>} and nothing else.'
    )


class AnthropicRater:
    """Rates glyphs with a Claude model through the official ``anthropic`` SDK.

    Args:
      personality: the personality to rate against; one of :data:`PERSONALITIES`
        (its description is added to the prompt) or any free-text description.
      model: the Claude model name.
      api_key: the API key; read from ``ANTHROPIC_API_KEY`` if None.
      base_url: API base URL (a proxy or a local test server); the SDK default if
        None.
      max_retries_on_invalid: extra requests after a malformed or out-of-range
        answer before giving up.
      timeout: request timeout in seconds.
      sdk_max_retries: the SDK's own retries on connection errors, 429 and 5xx.
      max_tokens: answer length limit.
      image_scale: PNG upscaling factor (see :func:`glyph_png`).

    Raises:
      ValueError: no API key (argument or environment), an empty personality or
        a negative retry count.

    References:
      Anthropic, `Messages API <https://docs.anthropic.com/en/api/messages>`_.
    """

    def __init__(
        self,
        personality: str,
        *,
        model: str = DEFAULT_ANTHROPIC_MODEL,
        api_key: str | None = None,
        base_url: str | None = None,
        max_retries_on_invalid: int = 1,
        timeout: float = 60.0,
        sdk_max_retries: int = 2,
        max_tokens: int = 64,
        image_scale: int = 4,
    ):
        if not isinstance(personality, str) or not personality.strip():
            raise ValueError(
                f"personality must be a non-empty string, got {personality!r}"
            )
        if max_retries_on_invalid < 0:
            raise ValueError(
                f"max_retries_on_invalid must be >= 0, got {max_retries_on_invalid}"
            )
        self._client = MessagesClient(
            error=RaterError,
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=sdk_max_retries,
        )
        self._personality = personality
        self.model = model
        self.max_retries_on_invalid = int(max_retries_on_invalid)
        self.max_tokens = int(max_tokens)
        self.image_scale = int(image_scale)

    @property
    def personality(self) -> str:
        """The personality the glyph is rated against."""
        return self._personality

    def _ask(self, messages: list[dict[str, Any]]) -> str:
        return message_text(
            self._client.create(
                model=self.model, max_tokens=self.max_tokens, messages=messages
            )
        )

    def rate(self, image: jax.typing.ArrayLike) -> int:
        """Rates one glyph ``[S, S]`` in ``[0, 1]``; returns an integer 1..10.

        Raises:
          ValueError: a malformed image.
          RaterError: the request failed, or every answer (the first and
            ``max_retries_on_invalid`` more) was malformed or out of range.
        """
        png = glyph_png(image, scale=self.image_scale)
        messages: list[dict[str, Any]] = [
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {
                            "type": "base64",
                            "media_type": "image/png",
                            "data": base64.b64encode(png).decode("ascii"),
                        },
                    },
                    {"type": "text", "text": _prompt(self.personality)},
                ],
            }
        ]
        attempts = 1 + self.max_retries_on_invalid
        for attempt in range(attempts):
            text = self._ask(messages)
            try:
                return parse_rating(text)
            except ValueError as exc:
                problem = str(exc)
            if attempt + 1 < attempts:
                # Show the model its own answer and what was wrong with it.
                messages = [
                    *messages,
                    {"role": "assistant", "content": text or "(empty)"},
                    {
                        "role": "user",
                        "content": f"That answer is invalid: {problem}. Reply with "
                        'only {"rating": <integer 1-10>}.',
                    },
                ]
        raise RaterError(
            f"no valid rating from {self.model} after {attempts} attempt(s); last "
            f"answer {text!r}: {problem}"
        )

    def __repr__(self) -> str:
        return f"AnthropicRater({self.personality!r}, model={self.model!r})"
