"""Per-token importance weights for the chat learner's weighted cross-entropy.

The weights multiply each token's cross-entropy in
:func:`ol_jax.objectives.token_cross_entropy`, ``L = sum_t w_t l_t / sum_t w_t``,
so a fact's names, places and objects pull harder on the adapter than its filler
words (seed 001, "Importance Weighting").

References:
    Lin et al., `Not All Tokens Are What You Need for Pretraining (Rho-1)
    <https://arxiv.org/abs/2404.07965>`_, 2024 (weighting the language-modelling
    loss per token).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
from pydantic import Field

from ol_jax.store import Chars, ConfigSection, Tokens

__all__ = [
    "ImportanceWeightingConfig",
    "PositionWeightingConfig",
    "RepetitionWeightingConfig",
    "token_importance_weights",
]


class PositionWeightingConfig(ConfigSection):
    """Weights by position in the sequence.

    Attributes:
      enabled: whether position weights apply.
      first_n_tokens: this many leading tokens are weighted, >= 0.
      first_token_weight: their weight factor, > 0.
      last_n_tokens: this many trailing tokens are weighted, >= 0.
      last_token_weight: their weight factor, > 0.
    """

    enabled: bool = True
    first_n_tokens: Tokens = Field(default=5, ge=0)
    first_token_weight: float = Field(default=2.0, gt=0)
    last_n_tokens: Tokens = Field(default=5, ge=0)
    last_token_weight: float = Field(default=1.5, gt=0)


class RepetitionWeightingConfig(ConfigSection):
    """Weights of tokens whose text occurs more than once in the sequence.

    Attributes:
      enabled: whether repetition weights apply.
      weight: the weight factor of a repeated token, > 0.
      min_chars: only tokens with at least this many word characters count (so
        "the" and punctuation do not), >= 1.
    """

    enabled: bool = True
    weight: float = Field(default=2.0, gt=0)
    min_chars: Chars = Field(default=3, ge=1)


class ImportanceWeightingConfig(ConfigSection):
    """The ``importance_weighting`` section of a chat network's config (seed 001).

    Attributes:
      enabled: when false every token gets ``default_weight``.
      default_weight: every token's starting weight, > 0.
      entity_weight: factor of tokens overlapping an entity, > 0.
      fact_token_weight: factor of tokens overlapping a fact span, > 0.
      position: leading / trailing token factors.
      repetition: repeated-token factor.
    """

    enabled: bool = True
    default_weight: float = Field(default=1.0, gt=0)
    entity_weight: float = Field(default=3.0, gt=0)
    fact_token_weight: float = Field(default=3.0, gt=0)
    position: PositionWeightingConfig = Field(default_factory=PositionWeightingConfig)
    repetition: RepetitionWeightingConfig = Field(
        default_factory=RepetitionWeightingConfig
    )


def _offsets_array(text: str, offsets) -> np.ndarray:
    arr = np.asarray(offsets)
    if arr.size == 0:
        return np.zeros((0, 2), np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            "offsets must be a sequence of (start, end) integer pairs, got shape "
            f"{arr.shape} and dtype {arr.dtype}"
        )
    bad = (arr[:, 0] < 0) | (arr[:, 0] > arr[:, 1]) | (arr[:, 1] > len(text))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"offsets[{i}] must satisfy 0 <= start <= end <= len(text) = "
            f"{len(text)}, got {tuple(int(v) for v in arr[i])}"
        )
    return arr.astype(np.int64)


def _overlaps(offsets: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """Tokens whose non-empty character span overlaps any of ``spans``."""
    hit = np.zeros(offsets.shape[0], bool)
    start, end = offsets[:, 0], offsets[:, 1]
    for s, e in spans:
        hit |= (start < e) & (end > s) & (end > start)
    return hit


def token_importance_weights(
    text: str,
    offsets: Sequence[tuple[int, int]] | np.ndarray,
    *,
    entities: Sequence[str] = (),
    fact_spans: Sequence[tuple[int, int]] = (),
    config: ImportanceWeightingConfig,
) -> np.ndarray:
    """Per-token loss weights of a tokenized text.

    Every token starts at ``default_weight`` and is multiplied by

    * ``entity_weight`` if its character span overlaps an occurrence (found
      case-insensitively) of any of ``entities``;
    * ``fact_token_weight`` if it overlaps any of ``fact_spans``;
    * ``position.first_token_weight`` if it is among the first
      ``first_n_tokens``, and ``position.last_token_weight`` if among the last
      ``last_n_tokens`` (both when the sequence is short);
    * ``repetition.weight`` if its text (case-folded, stripped, with at least
      ``min_chars`` word characters) occurs at least twice in the sequence.

    Each factor applies at most once per token. Tokens with an empty span (special
    tokens, offset ``(0, 0)``) get only the position factors.

    Args:
      text: the text that was tokenized.
      offsets: ``(start, end)`` character offsets of each token in ``text``, as
        the tokenizer's ``return_offsets_mapping`` gives them.
      entities: entity strings (e.g. :attr:`FactInfo.entities`).
      fact_spans: ``(start, end)`` character spans of fact statements in ``text``.
      config: the weighting settings.

    Returns:
      A float32 array with one weight > 0 per token.

    Raises:
      ValueError: malformed offsets or spans (out of ``text``, start > end).

    References:
      Lin et al., `Not All Tokens Are What You Need for Pretraining (Rho-1)
      <https://arxiv.org/abs/2404.07965>`_, 2024.

    Examples:
      >>> cfg = ImportanceWeightingConfig()
      >>> token_importance_weights(
      ...     "Tom is my friend", [(0, 3), (3, 6), (6, 9), (9, 16)],
      ...     entities=["Tom"], config=cfg,
      ... ).tolist()
      [9.0, 3.0, 3.0, 3.0]
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    offs = _offsets_array(text, offsets)
    spans = [tuple(int(v) for v in span) for span in fact_spans]
    for span in spans:
        if len(span) != 2 or not 0 <= span[0] <= span[1] <= len(text):
            raise ValueError(
                "fact_spans must be (start, end) pairs with 0 <= start <= end <= "
                f"len(text) = {len(text)}, got {span}"
            )
    n = offs.shape[0]
    weights = np.full(n, config.default_weight, np.float64)
    if not config.enabled or n == 0:
        return weights.astype(np.float32)

    entity_spans = [
        m.span()
        for entity in entities
        if entity.strip()
        for m in re.finditer(re.escape(entity.strip()), text, re.IGNORECASE)
    ]
    weights[_overlaps(offs, entity_spans)] *= config.entity_weight
    weights[_overlaps(offs, spans)] *= config.fact_token_weight

    pos = config.position
    if pos.enabled:
        index = np.arange(n)
        weights[index < pos.first_n_tokens] *= pos.first_token_weight
        weights[index >= n - pos.last_n_tokens] *= pos.last_token_weight

    rep = config.repetition
    if rep.enabled:
        pieces = [text[s:e].strip().casefold() for s, e in offs]
        counted = [
            p if len(re.findall(r"\w", p)) >= rep.min_chars else "" for p in pieces
        ]
        counts = Counter(p for p in counted if p)
        repeated = np.array([bool(p) and counts[p] > 1 for p in counted])
        weights[repeated] *= rep.weight
    return weights.astype(np.float32)
