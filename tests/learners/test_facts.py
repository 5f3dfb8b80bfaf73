"""Fact detection and fact memory (seed 001): patterns, questions, importance,
eviction, decay, replay and the state round trip."""

import json

import pydantic
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from ol_jax.learners import (
    FactDetectionConfig,
    FactDetector,
    FactInfo,
    FactMemory,
    FactMemoryConfig,
    StoredFact,
)
from ol_jax.store import ConfigError, load_config, validate_config

DETECTOR = FactDetector(FactDetectionConfig())

# (statement, relation, subject, object): invented names the base model cannot know.
INVENTED = [
    ("Zorblax Quint lives in Varnholm.", "lives_in", "Zorblax Quint", "Varnholm"),
    ("My friend Tavi owns a teal canoe", "owns", "friend Tavi", "teal canoe"),
    ("The capital of Elbonia is Quell", "capital_of", "Elbonia", "Quell"),
    ("Tom is my friend", "is_relation", "Tom", "friend"),
    ("Grelda Moss was born in Oskaloo.", "born_in", "Grelda Moss", "Oskaloo"),
    ("Bram Tull works as a lighthouse keeper", "works_as", "Bram Tull",
     "lighthouse keeper"),
    ("Mirelle likes pickled quinces!", "likes", "Mirelle", "pickled quinces"),
    ("Zorblax's favourite colour is ochre", "favourite", "Zorblax", "ochre"),
    ("Kellan Voss works at the Brindle Observatory", "works_at", "Kellan Voss",
     "Brindle Observatory"),
    ("Nimra's dog is called Pebble", "named", "Nimra's dog", "Pebble"),
    ("My name is Orla", "name", "name", "Orla"),
    ("Fennick Drast is a glassblower", "is", "Fennick Drast", "glassblower"),
]  # fmt: skip


@pytest.mark.parametrize("text,relation,subject,obj", INVENTED)
def test_detects_invented_facts(text, relation, subject, obj):
    info = DETECTOR.detect(text)
    assert info is not None, text
    assert (info.relation, info.subject, info.object) == (relation, subject, obj)
    assert info.text == text.strip()
    assert 0 <= info.confidence <= 1
    assert subject in info.entities and obj in info.entities


@pytest.mark.parametrize(
    "text",
    [
        "Where does Zorblax Quint live?",
        "What is the capital of Elbonia",
        "who is my friend",
        "Can you tell me about Varnholm",
        "Does Tavi own a canoe",
        "Tell me a joke",
        "Is Mirelle fond of quinces?",
    ],
)
def test_questions_are_never_facts(text):
    assert DETECTOR.is_question(text)
    assert DETECTOR.detect(text) is None


@pytest.mark.parametrize(
    "text",
    ["", "   ", "It is raining", "That is great", "Thanks, that was helpful.",
     "Hello there", "I had a great day", "Tavi has been busy"],
)  # fmt: skip
def test_ordinary_chat_is_not_a_fact(text):
    assert DETECTOR.detect(text) is None


def test_long_text_is_not_scanned():
    cfg = FactDetectionConfig(max_chars=50)
    detector = FactDetector(cfg)
    assert detector.detect("Zorblax lives in Varnholm") is not None
    assert detector.detect("Zorblax lives in Varnholm " + "x" * 60) is None
    # 100k characters return at once with the default bound; long words and
    # runs of spaces are no trouble below it.
    assert DETECTOR.detect("word " * 20_000) is None
    assert DETECTOR.detect("a" * 1999) is None
    assert DETECTOR.detect("Tavi" + " " * 1900 + "lives in Quell").object == "Quell"


def test_disabled_detection_reports_nothing():
    detector = FactDetector(FactDetectionConfig(enabled=False))
    assert detector.detect("Tom is my friend") is None


def test_non_string_input_is_an_error():
    with pytest.raises(ValueError, match="text must be a str"):
        DETECTOR.detect(b"Tom is my friend")


def test_most_confident_pattern_wins():
    # Both capital_of and the generic "is" pattern match; capital_of is surer.
    info = DETECTOR.detect("The capital of Elbonia is Quell")
    assert info.pattern == "capital_of"


def _one_pattern(pattern, relation="r", **kw):
    """A detector with the single pattern ``pattern`` (min confidence 0.7) and no
    statement fallback, so what it finds is that pattern's match."""
    spec = {"name": relation, "pattern": pattern, "relation": relation}
    return FactDetector(
        FactDetectionConfig(patterns=[spec], statements={"enabled": False}, **kw)
    )


def test_custom_pattern_with_unnamed_groups_and_simple_entities():
    detector = _one_pattern(
        r"(\w+(?:\s+\w+)?)\s+drives\s+an?\s+(.+)",
        "drives",
        entity_extraction={"method": "simple"},
    )
    info = detector.detect("Quillon Marsh drives a purple Tractor")
    assert info.relation == "drives"
    assert info.subject == "Quillon Marsh" and info.object == "purple Tractor"
    # "simple" keeps only the capitalized words.
    assert info.entities == ("Quillon Marsh", "Tractor")


def test_patterns_without_groups_or_with_an_absent_subject():
    info = _one_pattern(r"the sky is green").detect("The sky is green.")
    assert (info.subject, info.object, info.entities) == ("", "", ())
    detector = _one_pattern(r"(?:(?P<subject>\w+) )?sails to (?P<object>\w+)")
    assert detector.detect("Tavi sails to Quell").subject == "Tavi"
    # A pattern with groups whose subject took no part has no subject entity.
    assert detector.detect("sails to Quell") is None


def test_document_pattern_from_the_configuration_section():
    detector = _one_pattern(
        r"(\w+(?:\s+\w+)*)\s+is\s+(?:my\s+)?(friend|brother)", "is_friend"
    )
    info = detector.detect("Tom is my friend")
    assert info.relation == "is_friend" and info.entities == ("Tom", "friend")
    assert info.confidence == pytest.approx(0.7 + 0.2 * 0.5 + 0.1 * 0.5)


def test_confidence_threshold_rejects_weak_matches():
    # A match that covers a small part of a long text falls below min_confidence.
    text = "Zorblax lives in Varnholm, " + "and that is all I wanted to say " * 3
    info = DETECTOR.detect(text)
    assert info is None or info.relation != "lives_in"
    strict = _one_pattern(
        r"(?P<subject>\w+)\s+lives\s+in\s+(?P<object>\w+)",
        confidence_calculation={"coverage_boost_factor": 0.5},
    )
    assert strict.detect(text) is None
    assert strict.detect("Zorblax lives in Varnholm") is not None


@given(st.text(max_size=200))
def test_detect_never_crashes_and_is_consistent(text):
    info = DETECTOR.detect(text)
    if info is not None:
        assert not DETECTOR.is_question(text)
        assert 0 <= info.confidence <= 1
        assert info.relation and info.pattern


def test_bad_regex_is_named():
    with pytest.raises(ConfigError) as err:
        validate_config(
            {"patterns": [{"name": "x", "pattern": "(oops", "relation": "r"}]},
            FactDetectionConfig,
        )
    assert "patterns[0].pattern" in str(err.value)
    assert "(oops" in str(err.value)
    with pytest.raises(ConfigError, match=r"question_indicators.*\[unclosed"):
        validate_config({"question_indicators": ["[unclosed"]}, FactDetectionConfig)


def test_default_config_round_trips_through_yaml(tmp_path):
    for cfg in (FactDetectionConfig(), FactMemoryConfig()):
        path = tmp_path / "section.yaml"
        path.write_text(yaml.safe_dump(cfg.model_dump(), allow_unicode=True))
        assert load_config(path, type(cfg)) == cfg


def test_unknown_keys_are_named():
    with pytest.raises(ConfigError, match=r"entity_extraction\.methd.*method"):
        validate_config({"entity_extraction": {"methd": "regex"}}, FactDetectionConfig)
    with pytest.raises(ConfigError, match="eviction_policy"):
        validate_config({"eviction_policy": "random"}, FactMemoryConfig)
    with pytest.raises(pydantic.ValidationError):
        FactMemoryConfig(max_facts=0)
    with pytest.raises(ConfigError, match="recency_weight: must be finite, got inf"):
        validate_config(
            {"importance_scoring": {"recency_weight": float("inf")}}, FactMemoryConfig
        )


def test_defaults_match_the_document():
    det = FactDetectionConfig()
    assert det.enabled and det.entity_extraction.method == "regex"
    assert det.confidence_calculation.coverage_boost_factor == 0.2
    assert det.confidence_calculation.entity_boost == 0.1
    mem = FactMemoryConfig()
    assert (mem.max_facts, mem.replay_interval, mem.replay_limit) == (50, 10, 10)
    assert mem.eviction_policy == "hybrid"
    imp = mem.importance_scoring
    assert (imp.method, imp.base_importance) == ("hybrid", 1.0)
    assert (imp.repetition_weight, imp.recency_weight) == (0.5, 0.5)
    assert (mem.decay.enabled, mem.decay.turns, mem.decay.rate) == (True, 100, 0.1)


# ------------------------------------------------------------------ fact memory


def _info(text):
    return DETECTOR.detect(text)


def _memory(**kw):
    return FactMemory(FactMemoryConfig(**kw))


def test_store_counts_repetitions_up_to_case_and_punctuation():
    memory = _memory()
    first = memory.store("Tom is my friend", _info("Tom is my friend"), turn=1)
    assert isinstance(first, StoredFact)
    assert first.turns_seen == 1 and first.entities == ["Tom", "friend"]
    again = memory.store("  tom is MY friend. ", _info("Tom is my friend"), turn=4)
    assert again.turns_seen == 2 and again.first_seen == 1 and again.last_seen == 4
    assert again.fact_text == "Tom is my friend"
    assert len(memory) == 1 and memory.repetition_count("Tom is my friend") == 2
    assert memory.repetition_count("Zorblax lives in Varnholm") == 0
    assert "tom is my friend" in memory


def test_returned_facts_are_copies():
    memory = _memory()
    fact = memory.store("Tom is my friend", _info("Tom is my friend"), turn=1)
    fact.entities.append("junk")
    fact.turns_seen = 99
    (stored,) = list(memory)
    assert stored.entities == ["Tom", "friend"] and stored.turns_seen == 1


@pytest.mark.parametrize(
    "method,expected",
    [("repetition", 1.0 + 0.5 * 2), ("recency", 1.0 + 0.5), ("hybrid", 2.5)],
)
def test_importance_methods(method, expected):
    memory = _memory(importance_scoring={"method": method})
    for turn in (1, 2, 3):
        fact = memory.store("Tom is my friend", None, turn=turn)
    assert fact.importance == pytest.approx(expected)
    # Recency falls off as 1 / (1 + age).
    later = memory.importance(fact, 4)
    if method == "repetition":
        assert later == pytest.approx(2.0)
    else:
        assert later == pytest.approx(expected - 0.5 + 0.25)


def test_decay_steps_and_removal():
    memory = _memory(
        importance_scoring={"method": "repetition"},
        decay={"turns": 10, "rate": 0.5, "threshold": 0.3},
    )
    memory.store("Tom is my friend", None, turn=0)
    memory.store("Zorblax lives in Varnholm", None, turn=5)
    memory.store("Zorblax lives in Varnholm", None, turn=15)
    assert memory.decay(9) == [] and [f.importance for f in memory] == [1.0, 1.5]
    memory.decay(10)
    assert [f.importance for f in memory] == [0.5, 1.5]
    # Calling decay more often does not decay faster.
    for turn in range(10, 20):
        memory.decay(turn)
    assert [f.importance for f in memory] == [0.5, 1.5]
    removed = memory.decay(20)
    assert [f.fact_text for f in removed] == ["Tom is my friend"]
    assert [f.fact_text for f in memory] == ["Zorblax lives in Varnholm"]


def test_decay_disabled_keeps_facts():
    memory = _memory(decay={"enabled": False, "threshold": 10.0})
    memory.store("Tom is my friend", None, turn=0)
    assert memory.decay(10_000) == [] and len(memory) == 1


def _fill(memory):
    # a: stored first, stated 3 times, last at turn 2; b: once at turn 3 (lowest
    # importance); c: once at turn 4.
    for turn in (0, 1, 2):
        memory.store("fact a", None, turn=turn)
    memory.store("fact b", None, turn=3)
    memory.store("fact c", None, turn=4)
    memory.decay(5)


@pytest.mark.parametrize(
    "policy,evicted",
    [("fifo", "fact a"), ("lru", "fact a"), ("importance", "fact b"),
     ("hybrid", "fact b")],
)  # fmt: skip
def test_eviction_policies(policy, evicted):
    memory = _memory(
        max_facts=3,
        eviction_policy=policy,
        importance_scoring={"method": "repetition"},
    )
    _fill(memory)
    memory.store("fact d", None, turn=6)
    names = [f.fact_text for f in memory]
    assert len(names) == 3 and evicted not in names and "fact d" in names


def test_the_fact_just_stored_is_never_evicted():
    memory = _memory(max_facts=1, eviction_policy="importance")
    memory.store("fact a", None, turn=0)
    memory.store("fact a", None, turn=1)
    memory.store("fact b", None, turn=2)
    assert [f.fact_text for f in memory] == ["fact b"]


def test_replay_schedule_and_order():
    memory = _memory(replay_interval=5, replay_limit=2)
    assert not memory.should_replay(5)  # nothing to replay yet
    memory.store("fact a", None, turn=1)
    memory.store("fact b", None, turn=2)
    memory.store("fact b", None, turn=3)
    memory.store("fact c", None, turn=4)
    assert [memory.should_replay(t) for t in (0, 4, 5, 6, 10)] == [
        False, False, True, False, True,
    ]  # fmt: skip
    memory.decay(5)
    assert [f.fact_text for f in memory.facts_for_replay()] == ["fact b", "fact c"]
    assert len(memory.facts_for_replay(limit=10)) == 3
    assert memory.facts_for_replay(limit=0) == []


def test_disabled_memory_keeps_nothing():
    memory = _memory(enabled=False)
    fact = memory.store("Tom is my friend", None, turn=1)
    assert fact.turns_seen == 1 and len(memory) == 0
    assert not memory.should_replay(10)


@pytest.mark.parametrize(
    "text,turn,match",
    [("", 1, "non-empty"), (" . ", 1, "non-empty"), ("fact", -1, "turn"),
     ("fact", 1.5, "turn"), ("fact", True, "turn")],
)  # fmt: skip
def test_bad_store_input(text, turn, match):
    memory = _memory()
    with pytest.raises(ValueError, match=match):
        memory.store(text, None, turn=turn)
    assert len(memory) == 0


def test_turn_going_backwards_is_an_error():
    memory = _memory()
    memory.store("fact", None, turn=5)
    with pytest.raises(ValueError, match="last_seen 5"):
        memory.store("fact", None, turn=4)
    assert memory.repetition_count("fact") == 1


@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c", "d", "e"]), st.integers(0, 3)),
        max_size=30,
    ),
    st.sampled_from(["fifo", "lru", "importance", "hybrid"]),
)
def test_state_round_trip_is_exact(ops, policy):
    cfg = FactMemoryConfig(max_facts=3, eviction_policy=policy)
    memory = FactMemory(cfg)
    turn = 0
    for name, step in ops:
        turn += step
        memory.store(f"{name} is my friend", _info(f"{name} is my friend"), turn=turn)
        memory.decay(turn)
        assert len(memory) <= 3
    state = json.loads(json.dumps(memory.state_dict()))
    restored = FactMemory.from_state_dict(cfg, state)
    assert list(restored) == list(memory)
    assert restored.state_dict() == memory.state_dict()


def test_from_state_dict_rejects_bad_snapshots():
    cfg = FactMemoryConfig(max_facts=1)
    memory = FactMemory(cfg)
    memory.store("Tom is my friend", None, turn=1)
    good = memory.state_dict()
    with pytest.raises(ValueError, match="version 1"):
        FactMemory.from_state_dict(cfg, {"facts": []})
    with pytest.raises(ValueError, match="more than max_facts"):
        FactMemory.from_state_dict(cfg, {"version": 1, "facts": good["facts"] * 2})
    bad = {"version": 1, "facts": [{**good["facts"][0], "turns_seen": "two"}]}
    with pytest.raises(ValueError, match=r"facts'\]\[0\]\.turns_seen must be int"):
        FactMemory.from_state_dict(cfg, bad)
    missing = {"version": 1, "facts": [{"fact_text": "x"}]}
    with pytest.raises(ValueError, match="exactly the keys"):
        FactMemory.from_state_dict(cfg, missing)


def test_fact_info_is_frozen():
    info = DETECTOR.detect("Tom is my friend")
    assert isinstance(info, FactInfo)
    with pytest.raises(AttributeError):
        info.relation = "x"


@pytest.mark.parametrize(
    "text, names",
    [
        ("Clidale is where Jador Juholm lives", ["Clidale", "Jador Juholm"]),
        ("At work, my deputy is Weth Flund.", ["Weth Flund"]),
        ("Talvaen is Canius Sern's dog.", ["Talvaen", "Canius Sern"]),
        ("The Varn Institute was founded in 1887.", ["Varn Institute"]),
        ("my cat sleeps a lot", []),
    ],
)
def test_proper_names(text, names):
    assert DETECTOR.proper_names(text) == names


@given(st.lists(st.sampled_from(["Ana", "Bo", "the", "lives", "in", "Tel", "my"])))
def test_proper_names_are_capitalized_runs_of_the_text(words):
    text = " ".join(words)
    for name in DETECTOR.proper_names(text):
        assert name in text and name[:1].isupper()
