"""Token importance weights (seed 001): entity, fact-span, position and repetition
factors from character offsets."""

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ol_jax.learners import ImportanceWeightingConfig, token_importance_weights
from ol_jax.store import ConfigError, validate_config


def _word_offsets(text):
    """Offsets like a word-level tokenizer's: each word with its leading space."""
    return [m.span() for m in re.finditer(r"\s*\S+", text)]


def _plain(**kw):
    """Only the factors named in ``kw``; position and repetition off by default."""
    base = {"position": {"enabled": False}, "repetition": {"enabled": False}}
    return ImportanceWeightingConfig(**{**base, **kw})


def test_document_example():
    text = "Tom is my friend"
    w = token_importance_weights(
        text, _word_offsets(text), entities=["Tom"], config=ImportanceWeightingConfig()
    )
    # Tom: entity 3x; all four are among the first 5 (2x) and last 5 (1.5x).
    np.testing.assert_allclose(w, [9.0, 3.0, 3.0, 3.0])
    assert w.dtype == np.float32


def test_entity_tokens_match_case_insensitively_and_partially():
    text = "User: tom owns a canoe\nAssistant: I understand. Tom owns a canoe"
    offsets = _word_offsets(text)
    w = token_importance_weights(
        text, offsets, entities=["TOM", "teal canoe", "canoe"], config=_plain()
    )
    words = [text[s:e].strip() for s, e in offsets]
    expected = [3.0 if word.lower() in ("tom", "canoe") else 1.0 for word in words]
    np.testing.assert_allclose(w, expected)


def test_subword_tokens_overlapping_an_entity_are_weighted():
    text = "Zorblax lives"
    offsets = [(0, 3), (3, 7), (7, 13)]  # "Zor", "blax", " lives"
    w = token_importance_weights(text, offsets, entities=["Zorblax"], config=_plain())
    np.testing.assert_allclose(w, [3.0, 3.0, 1.0])


def test_fact_spans_position_and_repetition():
    text = "a b c d e f g h"
    offsets = _word_offsets(text)
    cfg = _plain(
        fact_token_weight=4.0,
        position={"first_n_tokens": 2, "first_token_weight": 2.0,
                  "last_n_tokens": 3, "last_token_weight": 5.0},
    )  # fmt: skip
    w = token_importance_weights(text, offsets, fact_spans=[(4, 7)], config=cfg)
    # tokens: a b c d e f g h; fact span covers " c" and " d".
    np.testing.assert_allclose(w, [2, 2, 4, 4, 1, 5, 5, 5])

    text = "Varnholm is where Zorblax lives, in Varnholm"
    cfg = _plain(repetition={"weight": 2.5})
    w = token_importance_weights(text, _word_offsets(text), config=cfg)
    words = [text[s:e].strip() for s, e in _word_offsets(text)]
    assert words[0] == "Varnholm" and words[-1] == "Varnholm"
    np.testing.assert_allclose(w, [2.5, 1, 1, 1, 1, 1, 2.5])


def test_repetition_ignores_short_tokens():
    text = "the cat and the dog and the cat"
    cfg = _plain(repetition={"weight": 2.0, "min_chars": 3})
    w = token_importance_weights(text, _word_offsets(text), config=cfg)
    # "the" and "and" repeat and have 3 characters; "cat" repeats; "dog" does not.
    np.testing.assert_allclose(w, [2, 2, 2, 2, 1, 2, 2, 2])
    cfg = _plain(repetition={"weight": 2.0, "min_chars": 4})
    w = token_importance_weights(text, _word_offsets(text), config=cfg)
    np.testing.assert_allclose(w, np.ones(8))


def test_special_tokens_with_empty_spans_get_only_position_weights():
    text = "Tom"
    w = token_importance_weights(
        text,
        [(0, 0), (0, 3), (0, 0)],
        entities=["Tom"],
        config=_plain(position={"first_n_tokens": 1, "last_n_tokens": 0}),
    )
    np.testing.assert_allclose(w, [2.0, 3.0, 1.0])


def test_disabled_is_uniform_and_empty_is_empty():
    cfg = ImportanceWeightingConfig(enabled=False, default_weight=0.5)
    text = "Tom is my friend"
    w = token_importance_weights(
        text, _word_offsets(text), entities=["Tom"], config=cfg
    )
    np.testing.assert_allclose(w, np.full(4, 0.5))
    empty = token_importance_weights("", [], config=ImportanceWeightingConfig())
    assert empty.shape == (0,) and empty.dtype == np.float32


@pytest.mark.parametrize(
    "offsets,match",
    [([(0, 99)], r"offsets\[0\] must satisfy"), ([(3, 1)], r"offsets\[0\]"),
     ([(-1, 2)], r"offsets\[0\]"), ([(0.0, 1.0)], "integer pairs"),
     ([(0, 1, 2)], "integer pairs")],
)  # fmt: skip
def test_bad_offsets(offsets, match):
    with pytest.raises(ValueError, match=match):
        token_importance_weights("Tom", offsets, config=ImportanceWeightingConfig())


def test_bad_fact_span_and_config():
    with pytest.raises(ValueError, match="fact_spans"):
        token_importance_weights(
            "Tom", [(0, 3)], fact_spans=[(0, 9)], config=ImportanceWeightingConfig()
        )
    with pytest.raises(ConfigError, match=r"position\.first_n_token:"):
        validate_config({"position": {"first_n_token": 3}}, ImportanceWeightingConfig)
    with pytest.raises(ConfigError, match="entity_weight: must be > 0"):
        validate_config({"entity_weight": 0}, ImportanceWeightingConfig)
    with pytest.raises(ConfigError, match="last_token_weight: must be finite"):
        validate_config(
            {"position": {"last_token_weight": float("inf")}},
            ImportanceWeightingConfig,
        )


_words = st.lists(
    st.sampled_from(["Tom", "tom", "is", "my", "friend", "Varnholm", ".", "a"]),
    max_size=20,
)


@given(_words, st.lists(st.sampled_from(["Tom", "Varnholm", "friend", "zz"])))
def test_properties(words, entities):
    text = " ".join(words)
    offsets = _word_offsets(text)
    before = list(offsets)
    cfg = ImportanceWeightingConfig()
    w = token_importance_weights(text, offsets, entities=entities, config=cfg)
    assert offsets == before  # inputs not mutated
    assert w.shape == (len(offsets),) and w.dtype == np.float32
    assert np.all(np.isfinite(w)) and np.all(w > 0)
    # Every weight is default times a product of the configured factors, each
    # applied at most once, so it lies between the smallest and largest product.
    hi = (
        cfg.default_weight
        * cfg.entity_weight
        * cfg.position.first_token_weight
        * cfg.position.last_token_weight
        * cfg.repetition.weight
    )
    assert np.all(w >= cfg.default_weight) and np.all(w <= hi)
    # Adding an entity never lowers a weight.
    more = token_importance_weights(
        text, offsets, entities=[*entities, "my"], config=cfg
    )
    assert np.all(more >= w)
