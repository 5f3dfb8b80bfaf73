"""TeacherProxyLearner on tiny random models: policy, learning plumbing, round trip.

Learning quality is not the point here (the encoder and generator are random and
tiny); the real-model acceptance test is ``test_teacher_acceptance.py``.
"""

import json
import os

import jax
import numpy as np
import pytest

from ol_jax.feedback import SimulatedTeacher, TeacherError, faq_domain, zipf_stream
from ol_jax.learners import ProxyDecision, TeacherProxyConfig, TeacherProxyLearner
from ol_jax.store import ConfigError, FeedbackJournal, load_config

CONFIG_FILE = os.path.join(
    os.path.dirname(__file__), "..", "..", "configs", "teacher_proxy.yaml"
)


def tiny_config(**policy):
    base = dict(
        cold_start=4,
        conservative_until=6,
        router_threshold=0.0,
        router_threshold_conservative=0.0,
        validator_threshold=0.0,
        validator_threshold_conservative=0.0,
        sampling_start=0.5,
        sampling_end=0.2,
        # Random tiny models never agree with the teacher: the memory check (its
        # own tests below) would forward every query and leave no local answer.
        answer_memory=0,
    )
    base.update(policy)
    return TeacherProxyConfig(
        encoder={"name": "tiny"},
        generator={"name": "tiny", "max_new_tokens": 8, "max_length": 112},
        policy=base,
    )


@pytest.fixture(scope="module")
def domain():
    return faq_domain(4, paraphrases=2)


@pytest.fixture(scope="module")
def stream(domain):
    return zipf_stream(domain, 14, seed=0)


@pytest.fixture(scope="module")
def run(domain, stream, tmp_path_factory):
    """A tiny learner after 10 handled queries, saved after 6, plus its decisions."""
    root = tmp_path_factory.mktemp("networks")
    save_dir = str(tmp_path_factory.mktemp("saved") / "learner")
    learner = TeacherProxyLearner(tiny_config(), root=root)
    teacher = SimulatedTeacher(domain)
    decisions, learned = [], []
    for i, query in enumerate(stream[:10]):
        if i == 6:
            learner.save(save_dir)
        decision = learner.answer(query, teacher)
        decisions.append(decision)
        learned.append(learner.learn(decision))
    return learner, decisions, learned, save_dir


def test_config_file_loads_with_the_documented_policy():
    config = load_config(CONFIG_FILE, TeacherProxyConfig)
    p = config.policy
    assert (p.cold_start, p.conservative_until) == (50, 200)
    assert (p.sampling_start, p.sampling_end) == (0.5, 0.05)
    assert config.generator.name == "smollm2-135m"
    assert config.encoder.name == "all-minilm-l6-v2"
    assert config == TeacherProxyConfig()


@pytest.mark.parametrize(
    "section, message",
    [
        ({"policy": {"cold_start": 10, "conservative_until": 5}}, "conservative_until"),
        ({"policy": {"sampling_start": 1.5}}, "policy.sampling_start"),
        ({"policy": {"cold_strat": 3}}, "cold_strat: unknown key"),
        ({"generator": {"prompt_format": "Q:"}}, "must contain '{query}'"),
        ({"generator": {"lora_targets": ["x_proj"]}}, "lora_targets must be"),
        ({"router": {"replay_batch": 9, "replay_capacity": 4}}, "replay_batch"),
        ({"policy": {"answer_memory": -1}}, "policy.answer_memory"),
    ],
)
def test_config_rejects_bad_values(tmp_path, section, message):
    path = tmp_path / "bad.yaml"
    import yaml

    path.write_text(yaml.safe_dump(section))
    with pytest.raises(ConfigError, match=message):
        load_config(path, TeacherProxyConfig)


def test_cold_start_forwards_and_learns_every_model(run):
    learner, decisions, learned, _ = run
    for d, metrics in zip(decisions[:4], learned[:4], strict=True):
        assert (d.route, d.reason, d.local_answer) == ("forward", "cold_start", None)
        assert d.answer == d.teacher_answer
        assert set(metrics) == {"router", "validator", "generator"}
        assert np.isfinite(metrics["generator"]["loss"])
    updates = learner.stats()["updates"]
    forwarded = sum(d.route == "forward" for d in decisions)
    assert updates == {
        "router": forwarded,
        "validator": forwarded,
        "generator": forwarded,
    }


def test_decisions_after_cold_start_follow_the_policy(run):
    _, decisions, learned, _ = run
    for d, metrics in zip(decisions[4:], learned[4:], strict=True):
        assert isinstance(d, ProxyDecision)
        assert d.reason in ("router", "validator", "memory", "sampling", "validated")
        assert d.router_prob is not None and 0.0 <= d.router_prob <= 1.0
        if d.route == "local":
            assert d.reason == "validated"
            assert d.answer == d.local_answer and d.teacher_answer is None
            assert d.cost_saved == pytest.approx(0.002)
            assert metrics == {}
        else:
            assert d.answer == d.teacher_answer and d.cost_saved == 0.0
        if d.local_answer and d.teacher_answer is not None:
            assert -1.0 <= d.similarity <= 1.0 + 1e-6
        assert d.latency_ms >= d.route_validate_ms >= 0.0


def test_stats_count_every_decision(run):
    learner, decisions, _, _ = run
    stats = learner.stats()
    assert stats["queries"] == 10
    assert stats["forwarded"] + stats["local"] == 10
    assert stats["forward_rate"] == pytest.approx(stats["forwarded"] / 10)
    assert sum(stats["reasons"].values()) == 10
    assert learner.forward_history() == [int(d.route == "forward") for d in decisions]
    json.dumps(stats)


def test_run_folder_logs_decisions_and_plot(run):
    learner, decisions, _, _ = run
    with open(os.path.join(learner.run_dir, "decisions.jsonl")) as f:
        logged = [json.loads(line) for line in f]
    assert [e["reason"] for e in logged] == [d.reason for d in decisions]
    # Each teacher answer learned from was journaled first, in order.
    records = FeedbackJournal.read(os.path.join(learner.run_dir, "feedback.journal"))
    taught = [d for d in decisions if d.teacher_answer is not None]
    assert [r["answer"] for r in records] == [d.teacher_answer for d in taught]
    path = learner.plot()
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_round_trip_continues_identically(run, domain, stream):
    learner, decisions, _, save_dir = run
    teacher = SimulatedTeacher(domain)
    restored = TeacherProxyLearner.load(save_dir)
    assert restored.stats()["queries"] == 6
    replayed = [restored.handle(q, teacher) for q in stream[6:10]]
    for a, b in zip(replayed, decisions[6:10], strict=True):
        assert (a.route, a.reason, a.answer, a.local_answer) == (
            b.route,
            b.reason,
            b.answer,
            b.local_answer,
        )
    for mine, theirs in zip(
        jax.tree.leaves(restored.params), jax.tree.leaves(learner.params), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))


def test_failed_teacher_answer_teaches_nothing(domain):
    learner = TeacherProxyLearner(tiny_config())

    def broken(query):
        raise TeacherError("upstream timed out")

    before = jax.tree.map(np.asarray, learner.params)
    with pytest.raises(TeacherError, match="timed out"):
        learner.handle(domain.families[0].paraphrases[0], broken)
    stats = learner.stats()
    assert (stats["queries"], stats["teacher_errors"]) == (0, 1)
    assert stats["updates"] == {"router": 0, "validator": 0, "generator": 0}
    after = jax.tree.leaves(learner.params)
    for a, b in zip(jax.tree.leaves(before), after, strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    with pytest.raises(TeacherError, match="teacher answer must be a non-empty"):
        learner.answer("How do I reset my password?", lambda query: "  ")
    assert learner.stats()["teacher_errors"] == 2
    with pytest.raises(ValueError, match="query must be a non-empty string"):
        learner.answer("  ", SimulatedTeacher(domain))
    local = ProxyDecision(
        query="q",
        answer="a",
        route="local",
        reason="validated",
        teacher_answer=None,
        local_answer="a",
        similarity=None,
        route_validate_ms=0.0,
        latency_ms=0.0,
        cost_saved=0.0,
    )
    assert learner.learn(local) == {}


def test_load_rejects_a_folder_without_a_save(tmp_path):
    with pytest.raises(ValueError, match="must hold a saved learner"):
        TeacherProxyLearner.load(tmp_path)


def _remembering_learner(domain, capacity):
    """A tiny learner that forwarded one paraphrase of each family (cold start)."""
    config = tiny_config(
        cold_start=len(domain.families),
        conservative_until=len(domain.families),
        sampling_start=0.0,
        sampling_end=0.0,
        # Only the same text counts as a match, whatever the random encoder does.
        similarity_threshold=0.999,
        answer_memory=capacity,
    )
    learner = TeacherProxyLearner(config)
    teacher = SimulatedTeacher(domain)
    queries = [f.paraphrases[0] for f in domain.families]
    for query in queries:
        assert learner.handle(query, teacher).reason == "cold_start"
    return learner, teacher, queries


def _answering(learner, answer):
    """Replaces the learner's generator by a fixed answer (no LLM decoding)."""
    learner.generate_local = lambda query: answer
    return learner


@pytest.mark.parametrize("capacity", [4, 16])
def test_answer_memory_serves_agreeing_and_forwards_borrowed_answers(domain, capacity):
    learner, teacher, queries = _remembering_learner(domain, capacity)
    right, borrowed = teacher(queries[0]), teacher(queries[1])
    assert learner.memory_agreement(queries[0], right) == pytest.approx(1.0)
    d = _answering(learner, right).answer(queries[0], teacher)
    assert (d.route, d.reason) == ("local", "validated")
    assert d.memory_similarity == pytest.approx(1.0)
    d = _answering(learner, borrowed).answer(queries[0], teacher)
    assert (d.route, d.reason, d.answer) == ("forward", "memory", right)
    assert d.memory_similarity < 0.999
    assert learner.stats()["reasons"]["memory"] == 1


def test_answer_memory_keeps_the_latest_pairs_only(domain):
    # Capacity 2 after 4 forwarded families: the first two were overwritten, so
    # the first query's nearest remembered query belongs to another family.
    learner, teacher, queries = _remembering_learner(domain, 2)
    assert learner.memory_agreement(queries[0], teacher(queries[0])) < 0.999
    for query in queries[2:]:
        assert learner.memory_agreement(query, teacher(query)) == pytest.approx(1.0)


def test_answer_memory_off_and_empty_run_no_check(domain):
    learner, teacher, queries = _remembering_learner(domain, 0)
    assert learner.memory_agreement(queries[0], "anything") is None
    d = _answering(learner, teacher(queries[1])).answer(queries[0], teacher)
    assert (d.reason, d.memory_similarity) == ("validated", None)
    fresh = TeacherProxyLearner(tiny_config(answer_memory=8))
    assert fresh.memory_agreement(queries[0], "anything") is None


def test_answer_memory_round_trips(domain, tmp_path):
    learner, teacher, queries = _remembering_learner(domain, 3)
    restored = TeacherProxyLearner.load(learner.save(tmp_path / "saved"))
    for query in queries:
        for answer in (teacher(query), teacher(queries[0])):
            assert restored.memory_agreement(query, answer) == (
                learner.memory_agreement(query, answer)
            )
    borrowed = teacher(queries[2])
    a = _answering(learner, borrowed).answer(queries[3], teacher)
    b = _answering(restored, borrowed).answer(queries[3], teacher)
    assert (a.reason, a.memory_similarity) == (b.reason, b.memory_similarity)
    assert a.reason == "memory"
