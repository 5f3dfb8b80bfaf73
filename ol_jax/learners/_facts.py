"""Fact detection and fact memory for the chat learner (seed 001).

A user turn is a *fact* when it is not a question and one of the configured regex
patterns matches it with enough confidence. A detected fact is stored in a
:class:`FactMemory` that scores it by repetition and recency, lets unseen facts
decay, evicts by a configured policy when full, and hands the most important facts
back for replay every ``replay_interval`` turns.

Everything here is plain Python (no arrays): the chat learner calls it at the edge,
before the jit-compiled update, to choose the training text, learning-rate context
and token weights of the turn.

References:
    Rolnick et al., `Experience Replay for Continual Learning
    <https://arxiv.org/abs/1811.11682>`_, 2019 (replaying stored items to counter
    forgetting).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from ol_jax.store import BatchSize, Capacity, Chars, ConfigSection, Count

__all__ = [
    "EntityExtractionConfig",
    "FactConfidenceConfig",
    "FactDecayConfig",
    "FactDetectionConfig",
    "FactDetector",
    "FactImportanceConfig",
    "FactInfo",
    "FactMemory",
    "FactMemoryConfig",
    "FactPattern",
    "StatementDetectionConfig",
    "StoredFact",
    "to_second_person",
]


def _compile(pattern: str) -> re.Pattern[str]:
    """Compiles a configured regex (case-insensitive) or names it in the error."""
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"invalid regex {pattern!r}: {exc}") from None


# --------------------------------------------------------------- fact detection

# Words (with and without apostrophes) of at most 40 characters, starting only at
# a word boundary, and subjects of at most six words: bounded so that scanning a
# long non-fact text costs linear, not quadratic, time.
_AT = r"(?<![\w'’-])"
_W = r"[\w'’-]{1,40}"
_N = r"[\w-]{1,40}"
_SUBJ = rf"(?P<subject>{_AT}{_W}(?:\s+{_W}){{0,5}}?)"
_OBJ = r"(?P<object>[^.!?,;\n]+)"

_DEFAULT_PATTERNS: tuple[dict[str, Any], ...] = (
    {
        "name": "favourite",
        "pattern": rf"(?P<subject>{_AT}{_N}(?:\s+{_N}){{0,4}}?)(?:'s|’s|')\s+"
        rf"favou?rite\s+(?P<attribute>{_N}(?:\s+{_N}){{0,2}}?)\s+(?:is|are)\s+" + _OBJ,
        "relation": "favourite",
        "min_confidence": 0.8,
    },
    {
        "name": "my_favourite",
        "pattern": rf"(?P<subject>\b(?:my|our)\s+favou?rite\s+{_N}(?:\s+{_N})"
        r"{0,2}?)\s+(?:is|are)\s+" + _OBJ,
        "relation": "favourite",
        "min_confidence": 0.8,
    },
    {
        "name": "capital_of",
        "pattern": rf"\bcapital\s+(?:city\s+)?of\s+(?P<subject>{_W}(?:\s+{_W})"
        r"{0,3}?)\s+is\s+" + _OBJ,
        "relation": "capital_of",
        "min_confidence": 0.85,
    },
    {
        "name": "is_relation",
        "pattern": _SUBJ + r"\s+is\s+(?:my|our)\s+(?P<object>(?:best\s+|old\s+)?"
        r"(?:friend|brother|sister|mother|father|mom|mum|dad|son|daughter|wife|"
        r"husband|partner|cousin|uncle|aunt|boss|colleague|neighbou?r|teacher|"
        r"doctor|cat|dog|pet))\b",
        "relation": "is_relation",
        "min_confidence": 0.8,
    },
    {
        "name": "name_is",
        "pattern": rf"(?P<subject>\b(?:my|our)(?:\s+{_W}){{0,3}}?\s+name)\s+is\s+"
        + _OBJ,
        "relation": "name",
        "min_confidence": 0.8,
    },
    # "<subject> <verb phrase> <object>": (name, verb phrase, min_confidence).
    *(
        {
            "name": name,
            "pattern": _SUBJ + rf"\s+{verb}\s+" + _OBJ,
            "relation": name,
            "min_confidence": confidence,
        }
        for name, verb, confidence in (
            ("born_in", r"(?:was|were)\s+born\s+(?:in|on|at)", 0.8),
            ("lives_in", r"(?:lives|lived|resides|live)\s+(?:in|at|on)", 0.8),
            ("works_as", r"works?\s+as", 0.8),
            ("works_at", r"works?\s+(?:at|for|in)", 0.8),
            ("owns", r"(?:owns|own|has|have)(?!\s+(?:been|to|had|got)\b)", 0.75),
            ("likes", r"(?:likes|like|loves|love|enjoys|enjoy|adores)", 0.75),
            ("dislikes", r"(?:dislikes|hates|hate|detests)", 0.75),
            ("named", r"(?:is|was)\s+(?:called|named)", 0.8),
        )
    ),
    {
        "name": "is_a",
        "pattern": _SUBJ + r"\s+(?:is|are|was|were)\s+(?!not\b)" + _OBJ,
        "relation": "is",
        "min_confidence": 0.7,
    },
)

_DEFAULT_QUESTION_INDICATORS: tuple[str, ...] = (
    r"\?\s*$",
    r"^\s*(?:who|whom|whose|what|where|when|why|how|which)\b",
    r"^\s*(?:is|are|was|were|do|does|did|can|could|would|will|should|shall|may|"
    r"might|must|have|has|am)\s+\w+",
    r"^\s*(?:tell\s+me|do\s+you\s+(?:know|remember)|remind\s+me)\b",
)

_DEFAULT_STOP_WORDS: tuple[str, ...] = (
    "a", "an", "the", "my", "our", "your", "his", "her", "their", "its", "this",
    "that", "these", "those", "i", "you", "he", "she", "it", "we", "they", "me",
    "him", "us", "them", "there", "here", "what", "which", "who", "some", "all",
)  # fmt: skip


_DEFAULT_PREFACES: tuple[str, ...] = (
    r"(?:oh,?\s+)?(?:and|also|so|well|okay|ok|actually|anyway|lately|btw|fyi)\b",
    r"by\s+the\s+way\b",
    r"just\s+so\s+you\s+know\b",
    r"for\s+(?:context|the\s+record|reference|your\s+information)\b",
    r"(?:just\s+)?(?:a\s+)?heads\s+up\b",
    r"(?:please\s+)?(?:remember|note|keep\s+in\s+mind|don'?t\s+forget)(?:\s+that)?\b",
    r"(?:fun\s+fact|quick\s+note|note\s+to\s+self|update)\s*:",
    r"in\s+(?:their|his|her|my|our)\s+(?:free|spare)\s+time\b",
)

_DEFAULT_REQUESTS: tuple[str, ...] = (
    r"^(?:please|pls|kindly|let'?s|let\s+us|help|write|tell|give|show|explain|"
    r"describe|summari[sz]e|translate|suggest|recommend|make|create|list|find|"
    r"draw|compose|generate|imagine|pretend|calculate|compute|name|define|"
    r"compare|play|sing|teach|check|fix|answer|repeat|continue|go|stop|start|"
    r"send|book|call|add|remove|set|turn|open|close|read|search|look|count|"
    r"convert|rewrite|correct|plan|think|keep|wait|say|hold|try|take|bring|put|"
    r"leave|get|do|don'?t|be|let\s+me|never\s+mind|hang\s+on)\b",
    r"^(?:i\s+(?:want|need|would\s+like|'d\s+like)\s+(?:you|to)|"
    r"i'?d\s+(?:like|love)\s+(?:you|to)|you\s+(?:should|must|need\s+to))\b",
    r"\bplease\b",
)

_DEFAULT_HEDGES: tuple[str, ...] = (
    r"\b(?:i|we)\s+(?:think|guess|suppose|believe|feel|reckon|suspect|doubt|"
    r"wonder|hope|assume|imagine)\b",
    r"\b(?:maybe|perhaps|probably|possibly|apparently|supposedly|presumably|"
    r"might|may\s+be|could\s+be|kind\s+of|sort\s+of|not\s+sure|in\s+my\s+opinion|"
    r"it\s+seems|seems\s+like|i'?m\s+not\s+sure|who\s+knows)\b",
)

_DEFAULT_CHITCHAT: tuple[str, ...] = (
    r"^(?:hi|hello|hey|hiya|yo|greetings|good\s+(?:morning|afternoon|evening|"
    r"night|day)|thanks|thank\s+you|thx|cheers|bye|goodbye|see\s+you|"
    r"nice\s+to|sorry|oops|wow|cool|great|awesome|lol|haha|yes|no|yeah|nope|sure|"
    r"ok|okay|fine|alright|congrats|congratulations|welcome|ha|hah|hmm|right|"
    r"got\s+it|sounds\s+(?:good|great|fine)|fair\s+enough|of\s+course)\b",
    r"\b(?:weather|today|tonight|right\s+now|this\s+(?:morning|afternoon|"
    r"evening|week))\b.*\b(?:nice|great|good|bad|awful|lovely|beautiful|"
    r"terrible|cold|hot|warm|sunny|rainy|boring|fun|long|busy|tired|tiring)\b",
    r"\b(?:is|are|was|were|has\s+been|have\s+been|looks?|sounds?|feels?)\s+"
    r"(?:so\s+|really\s+|very\s+|quite\s+|pretty\s+|a\s+bit\s+)?(?:nice|great|"
    r"good|bad|awful|lovely|beautiful|terrible|boring|fun|funny|amazing|"
    r"awesome|cool|weird|strange|interesting|busy|tired|sad|happy|right|wrong|"
    r"true|correct|fine|okay|ok|hard|easy|tough|crazy)\s*$",
)

_STATEMENT_STARTERS = frozenset(
    "the a an this that these those it he she they we you i there here today "
    "yesterday tomorrow tonight yes no well so but and or oh hey also then now "
    "our my his her their its your one two three some any each every all both "
    "many few more most much none another other such what which who".split()
)
_COPULAS = frozenset(
    "is are was were am has have had will would can could does did 's be been "
    "being lives live works work owns own likes like loves love".split()
)
_NAME_PARTICLES = frozenset("of de da del van von der la le du bin al y".split())


def _verb_index(words: list[str], lowered: list[str]) -> int | None:
    """Index of the first verb-like word of a statement (heuristic, no tagger).

    A statement starting with a name ("Orla Venn wrote ...") has its verb right
    after the run of capitalized words; otherwise the verb is the first word
    after the first that is a copula or a common verb ending ("-s", "-ed"), or
    failing that the second lowercase word ("My sister spent ...").
    """
    if words[0][:1].isupper() and lowered[0] not in _STATEMENT_STARTERS:
        i = 1
        while i < len(words) and (
            words[i][:1].isupper()
            or (
                lowered[i] in _NAME_PARTICLES
                and i + 1 < len(words)
                and words[i + 1][:1].isupper()
            )
            or lowered[i] in ("'s", "’s")
        ):
            i += 1
        return i if i < len(words) else None
    for i in range(1, len(words)):
        w = lowered[i]
        if words[i][:1].isupper() or w in _PREPOSITIONS:
            continue
        if (
            w in _COPULAS
            or w.endswith("n't")
            or (
                len(w) > 3 and w.endswith(("s", "ed")) and "'" not in w and "’" not in w
            )
        ):
            return i
    lower = [i for i in range(1, len(words)) if not words[i][:1].isupper()]
    return lower[1] if len(lower) > 1 else (lower[0] if lower else None)


_PREPOSITIONS = frozenset(
    "in at on for with from to by into near since during after before about as".split()
)


class StatementDetectionConfig(ConfigSection):
    """``fact_detection.statements``: declarative statements of any verb.

    A text no pattern matched is a fact when, after its prefaces ("By the way,",
    "FYI,", "Remember that", ...) are stripped, it has ``min_words`` to
    ``max_words`` words, is not a request, a hedged opinion or chit-chat, and is
    about a named entity (a capitalized word that does not start the sentence,
    or a sentence-initial one that is not a function word), about the user
    (``my`` / ``our``), or a definition ("the alarm code hint is ...").  Its
    relation is ``"statement"``; subject and object are the words before and
    after its first verb-like word. Request, hedge and chit-chat patterns also
    veto pattern matches, so "Maybe John is right." is not a fact.

    Attributes:
      enabled: detect statements no pattern matched.
      min_confidence: the confidence of a detected statement, in [0, 1].
      min_words: fewer words is not a statement (``"Tom Hanks."``), >= 1.
      max_words: more words is not one statement, >= ``min_words``.
      prefaces: regexes of discourse openers stripped from the start.
      requests: regexes (``re.search``) of requests and commands.
      hedges: regexes of hedged opinions.
      chitchat: regexes of greetings, thanks and small talk.
    """

    enabled: bool = True
    min_confidence: float = Field(default=0.7, ge=0, le=1)
    min_words: Annotated[Count, Field(le=1000)] = Field(default=3, ge=1)
    max_words: Annotated[Count, Field(le=1000)] = Field(default=60, ge=1)
    prefaces: list[str] = Field(default_factory=lambda: list(_DEFAULT_PREFACES))
    requests: list[str] = Field(default_factory=lambda: list(_DEFAULT_REQUESTS))
    hedges: list[str] = Field(default_factory=lambda: list(_DEFAULT_HEDGES))
    chitchat: list[str] = Field(default_factory=lambda: list(_DEFAULT_CHITCHAT))

    @field_validator("prefaces", "requests", "hedges", "chitchat")
    @classmethod
    def _valid_regexes(cls, value: list[str]) -> list[str]:
        for pattern in value:
            _compile(pattern)
        return value

    @model_validator(mode="after")
    def _word_range(self) -> StatementDetectionConfig:
        if self.max_words < self.min_words:
            raise ValueError(
                f"max_words must be >= min_words={self.min_words}, got {self.max_words}"
            )
        return self


class FactPattern(ConfigSection):
    """One fact pattern: a regex with a relation type and a confidence threshold.

    The regex is matched case-insensitively with ``re.search``. The captured text
    of the named group ``subject`` (else the first group) is the fact's subject,
    that of ``object`` (else the last group) its object; every group's text is an
    entity candidate.

    Attributes:
      name: the pattern's name, non-empty.
      pattern: the regular expression; an invalid one is an error naming it.
      relation: the relation type a match records, e.g. ``"lives_in"``.
      min_confidence: a match with a lower confidence is not a fact, in [0, 1].
    """

    name: str = Field(min_length=1)
    pattern: str = Field(min_length=1)
    relation: str = Field(min_length=1)
    min_confidence: float = Field(default=0.7, ge=0, le=1)

    @field_validator("pattern")
    @classmethod
    def _valid_regex(cls, value: str) -> str:
        _compile(value)
        return value


class EntityExtractionConfig(ConfigSection):
    """How entities are read off a matched fact.

    Attributes:
      method: ``"regex"`` takes the text of the pattern's capture groups, each with
        leading stop words removed; ``"simple"`` takes the runs of capitalized
        words inside the capture groups (proper nouns), ignoring stop words.
      stop_words: words stripped from the start of a group (``"regex"``) or
        skipped (``"simple"``), compared case-insensitively.
      min_length: entities shorter than this many characters are dropped, >= 1.
    """

    method: Literal["regex", "simple"] = "regex"
    stop_words: list[str] = Field(default_factory=lambda: list(_DEFAULT_STOP_WORDS))
    min_length: Chars = Field(default=2, ge=1)


class FactConfidenceConfig(ConfigSection):
    """The confidence of a pattern match.

    ``confidence = clip(c_min + coverage_boost_factor * (coverage -
    coverage_reference) + entity_boost * (entity_fraction - entity_reference), 0,
    1)``, where ``c_min`` is the pattern's ``min_confidence``, ``coverage`` the
    fraction of the (stripped) text the match spans and ``entity_fraction`` the
    fraction of the pattern's capture groups that yielded an entity. A match is
    a fact when ``confidence >= c_min``: a match that covers less of the text than
    the reference must be made up for by its entities, and the reverse.

    Attributes:
      coverage_boost_factor: weight of the text coverage, >= 0.
      entity_boost: weight of the entity fraction, >= 0.
      coverage_reference: coverage at which the coverage term is zero, in [0, 1].
      entity_reference: entity fraction at which the entity term is zero, in [0, 1].
    """

    coverage_boost_factor: float = Field(default=0.2, ge=0)
    entity_boost: float = Field(default=0.1, ge=0)
    coverage_reference: float = Field(default=0.5, ge=0, le=1)
    entity_reference: float = Field(default=0.5, ge=0, le=1)


class FactDetectionConfig(ConfigSection):
    """The ``fact_detection`` section of a chat network's config (seed 001).

    Attributes:
      enabled: when false, :meth:`FactDetector.detect` never reports a fact.
      patterns: the fact patterns, tried in order; the most confident match
        wins, the earlier pattern on a tie. The defaults cover "X is Y", "X is my
        friend", "X lives in Y", "X owns Y", "X works as Y", "X likes Y", "X was
        born in Y", "X's favourite Y is Z", "the capital of X is Y" and "my name
        is X".
      question_indicators: regexes (case-insensitive, ``re.search``); a text that
        matches any of them is a question and never a fact.
      entity_extraction: how entities are extracted.
      confidence_calculation: how a match's confidence is computed.
      statements: declarative statements no pattern matched (any verb), and
        the request / hedge / chit-chat filters every fact passes.
      max_chars: texts longer than this are not scanned for facts (a fact is one
        statement; the bound also keeps user-supplied patterns from taking
        quadratic time on a huge input), >= 1.
    """

    enabled: bool = True
    patterns: list[FactPattern] = Field(
        default_factory=lambda: [FactPattern(**p) for p in _DEFAULT_PATTERNS]
    )
    question_indicators: list[str] = Field(
        default_factory=lambda: list(_DEFAULT_QUESTION_INDICATORS)
    )
    entity_extraction: EntityExtractionConfig = Field(
        default_factory=EntityExtractionConfig
    )
    confidence_calculation: FactConfidenceConfig = Field(
        default_factory=FactConfidenceConfig
    )
    statements: StatementDetectionConfig = Field(
        default_factory=StatementDetectionConfig
    )
    max_chars: Chars = Field(default=2000, ge=1)

    @field_validator("question_indicators")
    @classmethod
    def _valid_regexes(cls, value: list[str]) -> list[str]:
        for pattern in value:
            _compile(pattern)
        return value


@dataclasses.dataclass(frozen=True)
class FactInfo:
    """A detected fact.

    Attributes:
      text: the input text, stripped.
      relation: the matched pattern's relation type.
      entities: the extracted entities, in order of appearance, without
        case-insensitive duplicates.
      subject: the fact's subject (leading stop words removed), ``""`` if the
        pattern has no groups.
      object: the fact's object (leading stop words removed), ``""`` if none.
      confidence: the match confidence in [0, 1].
      pattern: the name of the matched pattern.
    """

    text: str
    relation: str
    entities: tuple[str, ...]
    subject: str
    object: str
    confidence: float
    pattern: str


_TRAILING = " \t\r\n.!;:,"
_WORD = re.compile(r"[\w'’-]+")


class FactDetector:
    """Tells facts from questions and reads their relation and entities.

    Examples:
      >>> detector = FactDetector(FactDetectionConfig())
      >>> info = detector.detect("Zorblax Quint lives in Varnholm.")
      >>> info.relation, info.subject, info.object
      ('lives_in', 'Zorblax Quint', 'Varnholm')
      >>> detector.detect("Where does Zorblax Quint live?") is None
      True

    Args:
      config: the fact detection settings.

    References:
      Hearst, `Automatic Acquisition of Hyponyms from Large Text Corpora
      <https://aclanthology.org/C92-2082/>`_, COLING 1992 (lexico-syntactic
      patterns for relation extraction).
    """

    def __init__(self, config: FactDetectionConfig):
        self.config = config
        self._questions = [_compile(p) for p in config.question_indicators]
        self._patterns = [(p, _compile(p.pattern)) for p in config.patterns]
        self._stop = {w.casefold() for w in config.entity_extraction.stop_words}
        sc = config.statements
        self._prefaces = [
            re.compile(rf"^\s*(?:{p})\s*[,:;.!-]*\s*", re.IGNORECASE)
            for p in sc.prefaces
        ]
        self._vetoes = [_compile(p) for p in (*sc.requests, *sc.hedges, *sc.chitchat)]

    def is_question(self, text: str) -> bool:
        """Whether ``text`` matches any question indicator."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        return any(q.search(text.strip()) for q in self._questions)

    def detect(self, text: str) -> FactInfo | None:
        """The most confident fact in ``text``, or ``None``.

        ``None`` when detection is disabled, the text is empty, longer than
        ``max_chars`` or a question, no pattern matches, the match's subject holds
        no entity (so "It is raining" is not a fact), or its confidence is below
        the pattern's ``min_confidence``.
        """
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        stripped = text.strip()
        body = stripped.rstrip(_TRAILING)
        if (
            not self.config.enabled
            or not body
            or len(stripped) > self.config.max_chars
            or self.is_question(stripped)
        ):
            return None
        core = self._without_prefaces(body)
        if not core or any(v.search(core) for v in self._vetoes):
            return None
        best: FactInfo | None = None
        for spec, regex in self._patterns:
            match = regex.search(body)
            if match is None:
                continue
            info = self._score(stripped, body, spec, match)
            if info is not None and (best is None or info.confidence > best.confidence):
                best = info
        if best is None and self.config.statements.enabled:
            best = self._statement(stripped, core)
        return best

    def strip_prefaces(self, text: str) -> str:
        """``text`` without its leading discourse openers ("By the way, ...",
        "FYI,", "Remember that") and trailing punctuation."""
        return self._without_prefaces(text.strip().rstrip(_TRAILING))

    def _without_prefaces(self, body: str) -> str:
        changed = True
        while changed:
            changed = False
            for preface in self._prefaces:
                cut = preface.sub("", body, count=1)
                if cut != body and cut:
                    body, changed = cut, True
        return body.strip(_TRAILING)

    def _statement(self, stripped: str, core: str) -> FactInfo | None:
        """``core`` as a declarative statement of any verb, or ``None``."""
        sc = self.config.statements
        words = _WORD.findall(core)
        if not sc.min_words <= len(words) <= sc.max_words:
            return None
        lowered = [w.casefold() for w in words]
        names = [
            w
            for i, w in enumerate(words)
            if w[:1].isupper()
            and w != "I"
            and not (i == 0 and lowered[0] in _STATEMENT_STARTERS)
        ]
        about_user = any(w in ("my", "our") for w in lowered)
        definition = lowered[0] in ("the", "a", "an") and any(
            w in ("is", "are", "was", "were") for w in lowered[2:]
        )
        if not (names or about_user or definition):
            return None
        verb = _verb_index(words, lowered)
        if verb is None:
            return None
        subject = " ".join(words[:verb])
        obj = " ".join(w for w in words[verb + 1 :])
        while obj.split(" ", 1)[0].casefold() in _PREPOSITIONS and " " in obj:
            obj = obj.split(" ", 1)[1]
        entities: list[str] = []
        seen: set[str] = set()
        for e in [*self._group_entities(subject), *self._name_runs(words)]:
            if e.casefold() not in seen:
                seen.add(e.casefold())
                entities.append(e)
        return FactInfo(
            text=stripped,
            relation="statement",
            entities=tuple(entities),
            subject=self._strip_stop(subject) or subject,
            object=self._strip_stop(obj) or obj,
            confidence=sc.min_confidence,
            pattern="statement",
        )

    def proper_names(self, text: str) -> list[str]:
        """The runs of capitalized words of ``text`` that are not stop words, in
        order: ``"FYI, Clidale is where Jador Juholm lives"`` -> ``["Clidale",
        "Jador Juholm"]`` (a leading preface word such as "FYI" is a stop word
        only if configured as one; strip prefaces first). A capitalized first
        word that starts sentences ("At work, ...", "The ...") is no name, and a
        possessive ending is dropped ("Canius Sern's" -> "Canius Sern")."""
        words = _WORD.findall(text)
        if words and words[0].casefold() in _STATEMENT_STARTERS | _PREPOSITIONS:
            words = ["", *words[1:]]
        return [re.sub(r"(?:'s|’s|')$", "", name) for name in self._name_runs(words)]

    def _name_runs(self, words: list[str]) -> list[str]:
        """Runs of capitalized words (proper names), stop words excluded."""
        found, run = [], []
        for word in [*words, ""]:
            if word[:1].isupper() and word.casefold() not in self._stop:
                run.append(word)
            elif run:
                found.append(" ".join(run))
                run = []
        return [e for e in found if len(e) >= self.config.entity_extraction.min_length]

    # -- helpers ------------------------------------------------------------------

    def _strip_stop(self, phrase: str) -> str:
        words = phrase.split()
        while words and words[0].casefold() in self._stop:
            words.pop(0)
        return " ".join(words).strip(_TRAILING)

    def _group_entities(self, phrase: str) -> list[str]:
        cfg = self.config.entity_extraction
        if cfg.method == "regex":
            found = [self._strip_stop(phrase)]
        else:
            found, run = [], []
            for word in [*_WORD.findall(phrase), ""]:
                if word[:1].isupper() and word.casefold() not in self._stop:
                    run.append(word)
                elif run:
                    found.append(" ".join(run))
                    run = []
        return [e for e in found if len(e) >= cfg.min_length]

    def _score(self, stripped, body, spec: FactPattern, match) -> FactInfo | None:
        regex, n = match.re, match.re.groups
        subject_at = regex.groupindex.get("subject", 1 if n else 0)
        object_at = regex.groupindex.get("object", n)
        subject = (match.group(subject_at) or "") if subject_at else ""
        obj = (match.group(object_at) or "") if object_at else ""
        texts = [match.group(i) for i in range(1, n + 1) if match.group(i)]
        per_group = [self._group_entities(g) for g in texts]
        if n and not self._group_entities(subject):
            return None
        entities: list[str] = []
        seen: set[str] = set()
        for found in per_group:
            for entity in found:
                if entity.casefold() not in seen:
                    seen.add(entity.casefold())
                    entities.append(entity)
        cc = self.config.confidence_calculation
        coverage = (match.end() - match.start()) / len(body)
        entity_fraction = (
            sum(1 for f in per_group if f) / len(per_group) if per_group else 0.0
        )
        confidence = (
            spec.min_confidence
            + cc.coverage_boost_factor * (coverage - cc.coverage_reference)
            + cc.entity_boost * (entity_fraction - cc.entity_reference)
        )
        confidence = min(max(confidence, 0.0), 1.0)
        if confidence < spec.min_confidence:
            return None
        return FactInfo(
            text=stripped,
            relation=spec.relation,
            entities=tuple(entities),
            subject=self._strip_stop(subject),
            object=self._strip_stop(obj),
            confidence=confidence,
            pattern=spec.name,
        )


_PERSON = {
    "i": "you", "me": "you", "my": "your", "mine": "yours", "myself": "yourself",
    "we": "you", "us": "you", "our": "your", "ours": "yours",
    "ourselves": "yourselves", "am": "are", "i'm": "you're", "i've": "you've",
    "i'd": "you'd", "i'll": "you'll", "we're": "you're", "we've": "you've",
}  # fmt: skip
_PERSON_RE = re.compile(
    r"(?<![\w'’])(?:"
    + "|".join(sorted(map(re.escape, _PERSON), key=len)[::-1])
    + r")(?![\w'’])",
    re.IGNORECASE,
)


def to_second_person(text: str) -> str:
    """``text`` as the assistant would say it back: first person to second.

    ``"My cat is named Pip"`` -> ``"Your cat is named Pip"``; ``"I am"`` ->
    ``"you are"``. A replaced word keeps a leading capital.
    """

    def swap(match: re.Match[str]) -> str:
        word = match.group(0)
        out = _PERSON[word.casefold().replace("’", "'")]
        keep_capital = word[:1].isupper() and (word != "I" or match.start() == 0)
        return out[:1].upper() + out[1:] if keep_capital else out

    return _PERSON_RE.sub(swap, text)


# ------------------------------------------------------------------ fact memory


class FactImportanceConfig(ConfigSection):
    """How a stored fact's importance is scored.

    With ``n`` the times the fact was stated and ``a = turn - last_seen`` the
    turns since it was last stated, the raw importance is

    * ``repetition``: ``base_importance + repetition_weight * (n - 1)``
    * ``recency``: ``base_importance + recency_weight / (1 + a)``
    * ``hybrid``: ``base_importance + repetition_weight * (n - 1) +
      recency_weight / (1 + a)``

    and the importance is the raw importance times the decay factor (see
    :class:`FactDecayConfig`).

    Attributes:
      method: ``"repetition"``, ``"recency"`` or ``"hybrid"``.
      base_importance: importance of a fact stated once, long ago, > 0.
      repetition_weight: importance added per repetition, >= 0.
      recency_weight: importance of having been stated this turn, >= 0.
    """

    method: Literal["repetition", "recency", "hybrid"] = "hybrid"
    base_importance: float = Field(default=1.0, gt=0)
    repetition_weight: float = Field(default=0.5, ge=0)
    recency_weight: float = Field(default=0.5, ge=0)


class FactDecayConfig(ConfigSection):
    """Decay of facts that are not stated again.

    A fact unseen for ``a`` turns has its importance multiplied by ``(1 - rate) **
    floor(a / turns)``: one decay step per ``turns`` unseen turns, so the result
    does not depend on how often :meth:`FactMemory.decay` is called. Stating the
    fact again resets ``a``. :meth:`FactMemory.decay` removes facts whose
    importance falls below ``threshold``.

    Attributes:
      enabled: whether facts decay at all.
      turns: unseen turns per decay step, >= 1.
      rate: fraction of importance lost per step, in [0, 1).
      threshold: facts below this importance are removed, >= 0.
    """

    enabled: bool = True
    turns: Count = Field(default=100, ge=1)
    rate: float = Field(default=0.1, ge=0, lt=1)
    threshold: float = Field(default=0.1, ge=0)


class FactMemoryConfig(ConfigSection):
    """The ``fact_memory`` section of a chat network's config (seed 001).

    Attributes:
      enabled: when false, :meth:`FactMemory.store` keeps nothing and
        :meth:`FactMemory.should_replay` is always false.
      max_facts: capacity; storing one fact more evicts one, >= 1.
      replay_interval: replay every this many turns, >= 1.
      replay_limit: facts per replay, >= 1.
      eviction_policy: which fact a full memory drops: ``"fifo"`` the first
        stored, ``"lru"`` the least recently stated, ``"importance"`` the least
        important, ``"hybrid"`` the one with the lowest sum of its importance rank
        and its recency rank (ties: the first stored).
      importance_scoring: see :class:`FactImportanceConfig`.
      decay: see :class:`FactDecayConfig`.
    """

    enabled: bool = True
    max_facts: Capacity = Field(default=50, ge=1)
    replay_interval: Count = Field(default=10, ge=1)
    # Every replayed fact is one more update of the model on its text.
    replay_limit: BatchSize = Field(default=10, ge=1)
    eviction_policy: Literal["fifo", "lru", "importance", "hybrid"] = "hybrid"
    importance_scoring: FactImportanceConfig = Field(
        default_factory=FactImportanceConfig
    )
    decay: FactDecayConfig = Field(default_factory=FactDecayConfig)


@dataclasses.dataclass
class StoredFact:
    """A fact in :class:`FactMemory`.

    Attributes:
      fact_text: the fact as first stated.
      entities: its entities.
      relation: its relation type.
      subject: its subject.
      object: its object.
      turns_seen: how many times it was stated, >= 1.
      first_seen: the turn it was first stated.
      last_seen: the turn it was last stated.
      importance: its importance as of the last store or decay.
    """

    fact_text: str
    entities: list[str]
    relation: str
    subject: str
    object: str
    turns_seen: int
    first_seen: int
    last_seen: int
    importance: float


_FACT_FIELDS = tuple(f.name for f in dataclasses.fields(StoredFact))
_FACT_TYPES = {
    "fact_text": str,
    "relation": str,
    "subject": str,
    "object": str,
    "turns_seen": int,
    "first_seen": int,
    "last_seen": int,
    "importance": float,
}


def _copy(fact: StoredFact) -> StoredFact:
    """A copy that shares no mutable field with ``fact``."""
    return dataclasses.replace(fact, entities=list(fact.entities))


def _fact_from_dict(item: Mapping[str, Any], *, where: str) -> StoredFact:
    """A :class:`StoredFact` from its ``dataclasses.asdict`` form, type-checked."""
    for name, kind in _FACT_TYPES.items():
        value = item[name]
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if kind is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok:
            raise ValueError(
                f"{where}.{name} must be {kind.__name__}, got {value!r:.80}"
            )
    entities = item["entities"]
    if not isinstance(entities, list) or not all(isinstance(e, str) for e in entities):
        raise ValueError(
            f"{where}.entities must be a list of str, got {entities!r:.80}"
        )
    if item["turns_seen"] < 1 or item["first_seen"] > item["last_seen"]:
        raise ValueError(
            f"{where} needs turns_seen >= 1 and first_seen <= last_seen, got "
            f"{item['turns_seen']}, {item['first_seen']}, {item['last_seen']}"
        )
    return StoredFact(
        **{**item, "entities": list(entities), "importance": float(item["importance"])}
    )


def _fact_key(text: str) -> str:
    """Facts are the same when equal up to case, spacing and end punctuation."""
    return " ".join(text.strip().rstrip(_TRAILING).casefold().split())


class FactMemory:
    """Stored facts with importance, decay, eviction and replay selection.

    Examples:
      >>> memory = FactMemory(FactMemoryConfig(replay_interval=10))
      >>> info = FactDetector(FactDetectionConfig()).detect("Tom is my friend")
      >>> memory.store("Tom is my friend", info, turn=3).turns_seen
      1
      >>> memory.store("tom is my friend.", info, turn=5).turns_seen
      2
      >>> memory.should_replay(10), [f.fact_text for f in memory.facts_for_replay()]
      (True, ['Tom is my friend'])

    Args:
      config: the fact memory settings.

    References:
      Rolnick et al., `Experience Replay for Continual Learning
      <https://arxiv.org/abs/1811.11682>`_, 2019.
    """

    def __init__(self, config: FactMemoryConfig):
        self.config = config
        self._facts: dict[str, StoredFact] = {}

    def __len__(self) -> int:
        return len(self._facts)

    def __iter__(self) -> Iterator[StoredFact]:
        """Copies of the stored facts, in the order they were first stored."""
        return (_copy(f) for f in self._facts.values())

    def __contains__(self, text: object) -> bool:
        return isinstance(text, str) and _fact_key(text) in self._facts

    def importance(self, fact: StoredFact, turn: int) -> float:
        """The importance of ``fact`` at ``turn`` (see :class:`FactImportanceConfig`).

        Raises:
          ValueError: ``turn`` is before the fact was last seen.
        """
        if turn < fact.last_seen:
            raise ValueError(
                f"turn must be >= the fact's last_seen {fact.last_seen}, got {turn}"
            )
        cfg = self.config.importance_scoring
        age = turn - fact.last_seen
        raw = cfg.base_importance
        if cfg.method in ("repetition", "hybrid"):
            raw += cfg.repetition_weight * (fact.turns_seen - 1)
        if cfg.method in ("recency", "hybrid"):
            raw += cfg.recency_weight / (1.0 + age)
        decay = self.config.decay
        if decay.enabled:
            raw *= (1.0 - decay.rate) ** (age // decay.turns)
        return float(raw)

    def store(self, text: str, info: FactInfo | None, *, turn: int) -> StoredFact:
        """Stores a fact stated at ``turn``, or counts one more statement of it.

        A full memory then evicts one other fact by ``eviction_policy`` (never the
        one just stored).

        Args:
          text: the fact as stated; non-empty.
          info: the detection result (entities, relation, subject, object), or
            ``None`` for a fact with none of them.
          turn: the current turn, >= 0 and not before the fact was last seen.

        Returns:
          A copy of the stored fact.

        Raises:
          ValueError: empty ``text`` or a bad ``turn``.
        """
        if not isinstance(text, str) or not _fact_key(text):
            raise ValueError(f"text must be a non-empty str, got {text!r}")
        _check_turn(turn)
        key = _fact_key(text)
        fact = self._facts.get(key)
        if fact is None:
            fact = StoredFact(
                fact_text=text.strip(),
                entities=list(info.entities) if info else [],
                relation=info.relation if info else "",
                subject=info.subject if info else "",
                object=info.object if info else "",
                turns_seen=1,
                first_seen=turn,
                last_seen=turn,
                importance=0.0,
            )
        else:
            if turn < fact.last_seen:
                raise ValueError(
                    f"turn must be >= the fact's last_seen {fact.last_seen}, got {turn}"
                )
            fact = dataclasses.replace(
                fact, turns_seen=fact.turns_seen + 1, last_seen=turn
            )
        fact.importance = self.importance(fact, turn)
        if not self.config.enabled:
            return _copy(fact)
        self._facts[key] = fact
        while len(self._facts) > self.config.max_facts:
            del self._facts[self._eviction_key(exclude=key)]
        return _copy(fact)

    def repetition_count(self, text: str) -> int:
        """How many times ``text`` was stored (0 if it is not in memory)."""
        fact = self._facts.get(_fact_key(text)) if isinstance(text, str) else None
        return 0 if fact is None else fact.turns_seen

    def decay(self, turn: int) -> list[StoredFact]:
        """Rescores every fact at ``turn`` and removes those below the threshold.

        Returns:
          Copies of the removed facts (none when decay is disabled, though the
          importances are still rescored).
        """
        _check_turn(turn)
        removed = []
        for key, fact in list(self._facts.items()):
            fact.importance = self.importance(fact, max(turn, fact.last_seen))
            decay = self.config.decay
            if decay.enabled and fact.importance < decay.threshold:
                removed.append(_copy(self._facts.pop(key)))
        return removed

    def should_replay(self, turn: int) -> bool:
        """Whether ``turn`` is a replay turn: a positive multiple of
        ``replay_interval``, with memory enabled and not empty."""
        _check_turn(turn)
        return (
            self.config.enabled
            and bool(self._facts)
            and turn > 0
            and turn % self.config.replay_interval == 0
        )

    def facts_for_replay(self, limit: int | None = None) -> list[StoredFact]:
        """Copies of the most important facts, most important first.

        Ties go to the more recently seen, then the earlier stored fact.

        Args:
          limit: how many at most; ``None`` uses ``replay_limit``.
        """
        limit = self.config.replay_limit if limit is None else limit
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        order = sorted(
            enumerate(self._facts.values()),
            key=lambda item: (-item[1].importance, -item[1].last_seen, item[0]),
        )
        return [_copy(f) for _, f in order[:limit]]

    def state_dict(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot; :meth:`from_state_dict` restores it."""
        return {
            "version": 1,
            "facts": [dataclasses.asdict(f) for f in self._facts.values()],
        }

    @classmethod
    def from_state_dict(
        cls, config: FactMemoryConfig, state: Mapping[str, Any]
    ) -> FactMemory:
        """A memory holding exactly the facts of a :meth:`state_dict`.

        Raises:
          ValueError: the snapshot is malformed or holds more than ``max_facts``.
        """
        if not isinstance(state, Mapping) or state.get("version") != 1:
            raise ValueError(
                "state must be a FactMemory.state_dict() mapping with version 1, "
                f"got {state!r:.80}"
            )
        facts = state.get("facts")
        if not isinstance(facts, list):
            raise ValueError(f"state['facts'] must be a list, got {facts!r:.80}")
        if len(facts) > config.max_facts:
            raise ValueError(
                f"state holds {len(facts)} facts, more than max_facts "
                f"{config.max_facts}"
            )
        memory = cls(config)
        for i, item in enumerate(facts):
            if not isinstance(item, Mapping) or set(item) != set(_FACT_FIELDS):
                raise ValueError(
                    f"state['facts'][{i}] must have exactly the keys "
                    f"{list(_FACT_FIELDS)}, got {item!r:.120}"
                )
            fact = _fact_from_dict(item, where=f"state['facts'][{i}]")
            key = _fact_key(fact.fact_text)
            if not key or key in memory._facts:
                raise ValueError(
                    f"state['facts'][{i}] is empty or repeats a fact: "
                    f"{fact.fact_text!r}"
                )
            memory._facts[key] = fact
        return memory

    # -- eviction -------------------------------------------------------------

    def _eviction_key(self, *, exclude: str) -> str:
        keys = [k for k in self._facts if k != exclude]
        facts = [self._facts[k] for k in keys]
        policy = self.config.eviction_policy
        if policy == "fifo":
            scores = [(f.first_seen, i) for i, f in enumerate(facts)]
        elif policy == "lru":
            scores = [(f.last_seen, i) for i, f in enumerate(facts)]
        elif policy == "importance":
            scores = [(f.importance, i) for i, f in enumerate(facts)]
        else:
            by_imp = _ranks([f.importance for f in facts])
            by_age = _ranks([f.last_seen for f in facts])
            scores = [(by_imp[i] + by_age[i], i) for i in range(len(facts))]
        return keys[min(scores)[1]]


def _ranks(values: list[float]) -> list[float]:
    """Average ranks (0 = smallest), so equal values get equal ranks."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def _check_turn(turn: int) -> None:
    if isinstance(turn, bool) or not isinstance(turn, int) or turn < 0:
        raise ValueError(f"turn must be an int >= 0, got {turn!r}")
