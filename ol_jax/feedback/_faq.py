"""A generated FAQ domain and a deterministic simulated teacher over it.

The domain is a product help desk: a *question family* is one task (an action on
an account object, e.g. "reset" + "password"), asked in several paraphrases that
all share one short canonical answer. Families, paraphrases and answers are built
from fixed word lists with choices drawn from a SHA-256 hash of ``(seed, names)``,
so a domain is a pure function of its arguments (no RNG state, identical on every
machine). :func:`zipf_stream` draws a query stream where the family of rank ``r``
has probability ``r^-s / sum_k k^-s`` (Zipf, 1949), and :class:`SimulatedTeacher`
answers a query by looking its normalized text up in the domain.

References:
    Zipf, *Human Behavior and the Principle of Least Effort*, 1949.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterator
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from ol_jax.feedback._teacher import TeacherError

__all__ = [
    "FALLBACK_ANSWER",
    "FaqDomain",
    "FaqFamily",
    "SimulatedTeacher",
    "describe_domain",
    "faq_domain",
    "normalize_query",
    "zipf_stream",
]

#: The simulated teacher's answer to a query outside its domain (``unknown=
#: "fallback"``).
FALLBACK_ANSWER = "Sorry, I can only help with account and billing questions."

# (verb as asked, verb in the answer's button label)
_ACTIONS = (
    ("reset", "Reset"),
    ("change", "Edit"),
    ("cancel", "Cancel"),
    ("update", "Update"),
    ("delete", "Delete"),
    ("export", "Download"),
    ("enable", "Turn on"),
    ("disable", "Turn off"),
    ("recover", "Restore"),
    ("share", "Share"),
    ("renew", "Renew"),
    ("verify", "Verify"),
)
# (object as asked, menu in the answer, short label)
_OBJECTS = (
    ("my password", "Security", "password"),
    ("the billing address", "Billing", "billing address"),
    ("my subscription", "Plans", "plan"),
    ("my email address", "Profile", "email"),
    ("two-factor login", "Security", "2FA"),
    ("an invoice", "Invoices", "invoice"),
    ("my profile photo", "Profile", "photo"),
    ("the API key", "Developers", "key"),
    ("the shipping address", "Orders", "shipping address"),
    ("my payment card", "Wallet", "card"),
    ("my account", "Account", "account"),
    ("notification settings", "Alerts", "alerts"),
)
_PARAPHRASES = (
    "How do I {a} {o}?",
    "How can I {a} {o}?",
    "What are the steps to {a} {o}?",
    "I want to {a} {o}. What should I do?",
    "Where do I go to {a} {o}?",
    "Can you tell me how to {a} {o}?",
    "Is there a way to {a} {o}?",
    "Help me {a} {o}, please.",
)
_OPENERS = ("Open", "Go to", "Visit", "Tap")
_PLACES = ("Settings", "the dashboard", "the app menu", "your account page")
_ENDINGS = (
    "It takes effect at once.",
    "You get a confirmation email.",
    "Changes sync within an hour.",
    "An admin must approve it.",
    "It cannot be undone.",
    "You will be asked to sign in.",
)
# Longest answer without its closing sentence ("Go to your account page >
# Orders, click Turn off shipping address.").
_CORE_WORDS = 12
_MAX_FAMILIES = len(_ACTIONS) * len(_OBJECTS)
_SPACE = re.compile(r"\s+")


def _pick(seed: int, *names: object) -> int:
    """A deterministic non-negative integer from ``seed`` and ``names``."""
    text = ":".join(str(x) for x in (seed, *names))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def normalize_query(query: str) -> str:
    """Lowercase, whitespace collapsed, trailing punctuation removed.

    Two queries with the same normalized text get the same answer from a
    :class:`SimulatedTeacher`.
    """
    return _SPACE.sub(" ", query).strip().lower().rstrip("?.!").strip()


@dataclasses.dataclass(frozen=True)
class FaqFamily:
    """One question family: paraphrases of a task and its canonical answer.

    Attributes:
      name: a short id, e.g. ``"reset-password"``.
      paraphrases: the ways the question is asked.
      answer: the one answer shared by every paraphrase.
    """

    name: str
    paraphrases: tuple[str, ...]
    answer: str


@dataclasses.dataclass(frozen=True)
class FaqDomain:
    """A generated FAQ domain: families in rank order (rank 1 first).

    Attributes:
      families: the question families.
      seed: the seed the domain was generated from.
    """

    families: tuple[FaqFamily, ...]
    seed: int

    def __post_init__(self):
        index: dict[str, int] = {}
        for i, family in enumerate(self.families):
            for text in family.paraphrases:
                index.setdefault(normalize_query(text), i)
        object.__setattr__(self, "_index", index)

    def __len__(self) -> int:
        return len(self.families)

    def family_of(self, query: str) -> int | None:
        """The index of the family asking ``query``, or ``None`` outside it."""
        return self._index.get(normalize_query(query))  # type: ignore[attr-defined]

    def answer(self, query: str) -> str | None:
        """The canonical answer to ``query``, or ``None`` outside the domain."""
        i = self.family_of(query)
        return None if i is None else self.families[i].answer

    @property
    def queries(self) -> list[str]:
        """Every paraphrase of every family, family by family."""
        return [q for f in self.families for q in f.paraphrases]


def faq_domain(
    num_families: int = 60,
    *,
    paraphrases: int = 4,
    seed: int = 0,
    max_answer_words: int = 12,
) -> FaqDomain:
    """Generates a deterministic FAQ domain.

    Family ``i`` is the ``i``-th (action, object) pair of a seeded permutation of
    the 12 x 12 grid, so the first families spread over many actions and
    objects. Its answer names a place, a menu and a button (``"Go to Settings >
    Security, click Reset password."``), followed by a closing sentence (``"It
    cannot be undone."``) when the whole fits in ``max_answer_words`` words;
    its paraphrases are ``paraphrases`` of 8 question templates.

    Args:
      num_families: number of families, in ``1..144``.
      paraphrases: paraphrases per family, in ``1..8``.
      seed: changes which pairs, templates and wording are chosen.
      max_answer_words: most words of an answer, ``>= 12``.

    Returns:
      A :class:`FaqDomain`.

    Raises:
      ValueError: an argument outside its range.
    """
    if not 1 <= num_families <= _MAX_FAMILIES:
        raise ValueError(
            f"num_families must be in 1..{_MAX_FAMILIES}, got {num_families}"
        )
    if not 1 <= paraphrases <= len(_PARAPHRASES):
        raise ValueError(
            f"paraphrases must be in 1..{len(_PARAPHRASES)}, got {paraphrases}"
        )
    if max_answer_words < _CORE_WORDS:
        raise ValueError(
            f"max_answer_words must be >= {_CORE_WORDS}, got {max_answer_words}"
        )
    pairs = sorted(
        ((a, o) for a in range(len(_ACTIONS)) for o in range(len(_OBJECTS))),
        key=lambda p: _pick(seed, "pair", *p),
    )
    families = []
    for a, o in pairs[:num_families]:
        verb, button = _ACTIONS[a]
        thing, menu, label = _OBJECTS[o]
        templates = sorted(
            range(len(_PARAPHRASES)), key=lambda t: _pick(seed, "para", a, o, t)
        )[:paraphrases]
        opener = _OPENERS[_pick(seed, "open", a, o) % len(_OPENERS)]
        place = _PLACES[_pick(seed, "place", a, o) % len(_PLACES)]
        ending = _ENDINGS[_pick(seed, "end", a, o) % len(_ENDINGS)]
        answer = f"{opener} {place} > {menu}, click {button} {label}."
        # The closing sentence is added only where it fits the word budget.
        if len(f"{answer} {ending}".split()) <= max_answer_words:
            answer = f"{answer} {ending}"
        families.append(
            FaqFamily(
                name=f"{verb}-{label}".replace(" ", "-").lower(),
                paraphrases=tuple(
                    _PARAPHRASES[t].format(a=verb, o=thing) for t in templates
                ),
                answer=answer,
            )
        )
    return FaqDomain(tuple(families), seed)


def zipf_stream(
    domain: FaqDomain,
    n: int,
    *,
    seed: int = 0,
    exponent: float = 1.1,
) -> list[str]:
    """A stream of ``n`` queries: Zipf-distributed families, uniform paraphrases.

    ``P(family r) = r^-s / sum_{k=1..F} k^-s`` with ``s = exponent`` and ranks in
    the domain's order; the paraphrase is uniform within the family. Draws use
    ``jax.random`` keyed by ``seed``, so a stream is reproducible.

    Args:
      domain: the FAQ domain.
      n: number of queries, ``>= 0``.
      seed: PRNG seed.
      exponent: Zipf exponent ``s >= 0`` (0 is uniform).

    Returns:
      The queries, as strings.

    References:
      Zipf, *Human Behavior and the Principle of Least Effort*, 1949.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not exponent >= 0:
        raise ValueError(f"exponent must be >= 0, got {exponent}")
    ranks = np.arange(1, len(domain) + 1, dtype=np.float64)
    logits = jnp.asarray(-exponent * np.log(ranks), jnp.float32)
    family_key, para_key = jax.random.split(jax.random.key(seed))
    families = np.asarray(jax.random.categorical(family_key, logits, shape=(n,)))
    u = np.asarray(jax.random.uniform(para_key, (n,)))
    out = []
    for f, x in zip(families, u, strict=True):
        texts = domain.families[int(f)].paraphrases
        out.append(texts[min(int(x * len(texts)), len(texts) - 1)])
    return out


class SimulatedTeacher:
    """A deterministic :class:`~ol_jax.feedback.Teacher` over an FAQ domain.

    ``teacher(query)`` returns the canonical answer of the query's family. The
    family is the one whose paraphrase equals the query after
    :func:`normalize_query`; failing that, with an ``encoder``, the family of the
    paraphrase nearest in meaning: the largest cosine similarity
    ``cos(e(query), e(paraphrase))`` of sentence embeddings, if it is at least
    ``threshold`` (so "How do I reset my password?" finds "How can I change my
    password?", and "Tell me a joke" finds nothing). A query outside the domain
    gets :data:`FALLBACK_ANSWER` (``unknown="fallback"``, the default) or raises
    :class:`~ol_jax.feedback.TeacherError` (``unknown="error"``). An empty or
    non-string query always raises :class:`~ol_jax.feedback.TeacherError`.

    Args:
      domain: the FAQ domain.
      unknown: ``"fallback"`` or ``"error"``.
      encoder: anything with ``embed(texts) -> [N, D]`` (an
        :class:`~ol_jax.models.LoadedEncoder` such as all-MiniLM-L6-v2); ``None``
        matches normalized text only.
      threshold: the least cosine similarity of a match by meaning, in [-1, 1].

    Attributes:
      calls: answers given so far (failed calls not counted).

    Examples:
      >>> teacher = SimulatedTeacher(faq_domain(12))
      >>> teacher(teacher.domain.families[0].paraphrases[0]) == (
      ...     teacher.domain.families[0].answer)
      True

    References:
      Reimers and Gurevych, `Sentence-BERT: Sentence Embeddings using Siamese
      BERT-Networks <https://arxiv.org/abs/1908.10084>`_, 2019.
    """

    def __init__(
        self,
        domain: FaqDomain,
        *,
        unknown: Literal["fallback", "error"] = "fallback",
        encoder: Any = None,
        threshold: float = 0.6,
    ):
        if unknown not in ("fallback", "error"):
            raise ValueError(f"unknown must be 'fallback' or 'error', got {unknown!r}")
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [-1, 1], got {threshold!r}")
        self.domain = domain
        self.unknown = unknown
        self.encoder = encoder
        self.threshold = float(threshold)
        self.calls = 0
        self._paraphrase_family = [
            i for i, f in enumerate(domain.families) for _ in f.paraphrases
        ]
        self._paraphrases = None
        if encoder is not None:
            self._paraphrases = _unit_rows(encoder.embed(domain.queries))

    def match(self, query: str) -> tuple[int | None, float | None]:
        """(family index or ``None``, cosine similarity of a match by meaning).

        The similarity is ``None`` for an exact (normalized) match or when no
        encoder is set.
        """
        family = self.domain.family_of(query)
        if family is not None or self._paraphrases is None:
            return family, None
        (e,) = _unit_rows(self.encoder.embed([query]))
        sims = self._paraphrases @ e
        best = int(np.argmax(sims))
        similarity = float(sims[best])
        if similarity < self.threshold:
            return None, similarity
        return self._paraphrase_family[best], similarity

    def __call__(self, query: str) -> str:
        if not isinstance(query, str) or not query.strip():
            raise TeacherError(f"query must be a non-empty string, got {query!r}")
        family, _ = self.match(query)
        if family is None:
            if self.unknown == "error":
                raise TeacherError(f"query is outside the FAQ domain: {query!r}")
            answer = FALLBACK_ANSWER
        else:
            answer = self.domain.families[family].answer
        self.calls += 1
        return answer

    def stream(self, query: str) -> Iterator[str]:
        """The answer in pieces (a word and the space after it), like an API stream.

        Raises:
          TeacherError: as :meth:`__call__`.
        """
        answer = self(query)
        yield from re.findall(r"\S+\s*|\s+", answer)


def _unit_rows(x: Any) -> np.ndarray:
    rows = np.array(x, np.float32).reshape(-1, np.shape(x)[-1])
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


def describe_domain(domain: FaqDomain) -> str:
    """One line per family: its name and one of its questions (for ``--help``)."""
    return "\n".join(f"  {f.name}: {f.paraphrases[0]}" for f in domain.families)
