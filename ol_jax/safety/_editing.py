"""Knowledge-editing measures of learned facts: efficacy, generalization, locality.

A learned fact is judged as model-editing work judges an edit (CounterFact,
zsRE, EasyEdit): *efficacy*, the answer to the fact's own question contains its
object; *generalization*, the same for paraphrased questions; *locality*,
questions unrelated to every learned fact get the same greedy answer as from the
unedited model, and the token distributions along those answers move little
(mean ``KL(base || adapted)``). Retention along a stream is the accuracy matrix
(``ol_jax.learners.backward_transfer`` / ``forgetting``).

References:
    Meng et al., `Locating and Editing Factual Associations in GPT
    <https://arxiv.org/abs/2202.05262>`_, 2022 (efficacy, generalization,
    specificity on CounterFact).
    Yao et al., `Editing Large Language Models: Problems, Methods, and
    Opportunities <https://arxiv.org/abs/2305.13172>`_, 2023 (EasyEdit's
    reliability, generalization, locality).
"""

import re
import unicodedata
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ol_jax.objectives import token_kl

__all__ = ["answer_contains", "answers_unchanged", "edit_success", "neighbour_kl"]

_SPACE = re.compile(r"\s+")
_EDGE = " \t\r\n.,;:!?\"'()[]{}"


def _norm(text: str) -> str:
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def answer_contains(reply: str, answer: str) -> bool:
    """Whether ``reply`` contains ``answer``: case-, width- and space-insensitive.

    Both are NFKC-normalised, case-folded and have runs of whitespace collapsed;
    the answer also loses surrounding punctuation (``"Oslo."`` matches
    ``"in Oslo"``).

    Raises:
      ValueError: ``answer`` is empty after normalisation, or either is not a str.
    """
    if not isinstance(reply, str) or not isinstance(answer, str):
        raise ValueError(
            f"reply and answer must be str, got {type(reply).__name__} and "
            f"{type(answer).__name__}"
        )
    target = _norm(answer).strip(_EDGE)
    if not target:
        raise ValueError(f"answer must contain a word, got {answer!r}")
    return target in _norm(reply)


def edit_success(replies: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    """``[N]`` bool: reply ``i`` contains answer ``i`` (:func:`answer_contains`).

    The mean over a fact set's own questions is its efficacy; over paraphrased
    questions, its generalization.
    """
    if len(replies) != len(answers):
        raise ValueError(
            f"replies and answers must have equal length, got {len(replies)} and "
            f"{len(answers)}"
        )
    return np.array(
        [answer_contains(r, a) for r, a in zip(replies, answers, strict=True)], bool
    )


def answers_unchanged(base: Sequence[str], replies: Sequence[str]) -> np.ndarray:
    """``[N]`` bool: reply ``i`` equals the unedited model's reply ``i``.

    Replies are compared after stripping surrounding whitespace; the mean over
    questions unrelated to the learned facts is the locality.
    """
    if len(base) != len(replies):
        raise ValueError(
            f"base and replies must have equal length, got {len(base)} and "
            f"{len(replies)}"
        )
    bad = [type(x).__name__ for x in (*base, *replies) if not isinstance(x, str)]
    if bad:
        raise ValueError(f"replies must be str, got {bad[0]}")
    return np.array(
        [b.strip() == r.strip() for b, r in zip(base, replies, strict=True)], bool
    )


def neighbour_kl(
    base_logits: ArrayLike, logits: ArrayLike, mask: ArrayLike
) -> jax.Array:
    """Mean over rows of the mean token ``KL(p_base || p_adapted)`` on masked tokens.

    ``KL = 1/N sum_n [sum_t m_nt KL_nt / sum_t m_nt]`` with ``KL_nt`` the KL of the
    next-token distributions at position ``t`` of row ``n``
    (:func:`ol_jax.objectives.token_kl`); a row with no masked token counts 0.
    Scored along the unedited model's own greedy answers to unrelated questions,
    it is the soft counterpart of :func:`answers_unchanged`.

    Args:
      base_logits: ``[N, T, V]`` logits of the unedited model.
      logits: ``[N, T, V]`` logits of the edited model on the same tokens.
      mask: ``[N, T]`` 0/1, the answer positions.

    Returns:
      A float32 scalar ``>= 0``, exactly 0 for identical logits.
    """
    base = jnp.asarray(base_logits, jnp.float32)
    new = jnp.asarray(logits, jnp.float32)
    m = jnp.asarray(mask, jnp.float32)
    if base.ndim != 3 or base.shape != new.shape or m.shape != base.shape[:2]:
        raise ValueError(
            "base_logits and logits must be matching [N, T, V] arrays and mask "
            f"[N, T], got shapes {base.shape}, {new.shape} and {m.shape}"
        )
    per_row = jax.vmap(lambda b, a, w: token_kl(b, a, mask=w))(base, new, m)
    return jnp.mean(per_row) if base.shape[0] else jnp.float32(0.0)
