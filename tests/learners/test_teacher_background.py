"""TeacherProxyLearner with answers and updates on two threads, and its warm-up."""

import threading

import jax
import numpy as np
import pytest

from ol_jax.feedback import SimulatedTeacher, faq_domain, zipf_stream
from ol_jax.learners import TeacherProxyConfig, TeacherProxyLearner


def tiny_config():
    return TeacherProxyConfig(
        encoder={"name": "tiny"},
        generator={"name": "tiny", "max_new_tokens": 8, "max_length": 40},
        policy=dict(
            cold_start=2,
            conservative_until=2,
            router_threshold=0.0,
            validator_threshold=0.0,
            sampling_start=0.5,
            sampling_end=0.5,
            answer_memory=8,
        ),
    )


def _leaves(learner):
    return [np.array(x) for x in jax.tree.leaves(learner._tree()[0])]  # copies


def test_warmup_changes_nothing_a_learner_does():
    domain = faq_domain(4, paraphrases=2)
    teacher = SimulatedTeacher(domain)
    stream = zipf_stream(domain, 8, seed=1)
    warmed, plain = (
        TeacherProxyLearner(tiny_config()),
        TeacherProxyLearner(tiny_config()),
    )
    for query in stream[:4]:
        warmed.handle(query, teacher)
        plain.handle(query, teacher)
    before, stats = _leaves(warmed), warmed.stats()
    assert warmed.warmup() > 0
    for a, b in zip(before, _leaves(warmed), strict=True):
        np.testing.assert_array_equal(a, b)
    after = warmed.stats()
    assert {k: v for k, v in after.items() if k != "update_ms"} == {
        k: v for k, v in stats.items() if k != "update_ms"
    }
    for query in stream[4:]:
        a, b = warmed.handle(query, teacher), plain.handle(query, teacher)
        assert (a.answer, a.route, a.reason) == (b.answer, b.route, b.reason)
    for a, b in zip(_leaves(warmed), _leaves(plain), strict=True):
        np.testing.assert_array_equal(a, b)


def test_answers_and_updates_on_two_threads():
    domain = faq_domain(4, paraphrases=2)
    teacher = SimulatedTeacher(domain)
    learner = TeacherProxyLearner(tiny_config())
    learner.warmup()
    decisions, errors = [], []
    queue = []
    done = threading.Event()

    def learn_all():
        try:
            while not (done.is_set() and not queue):
                if queue:
                    learner.learn(queue.pop(0))
        except Exception as e:  # reported below
            errors.append(e)

    trainer = threading.Thread(target=learn_all)
    trainer.start()
    try:
        for query in zipf_stream(domain, 16, seed=2):
            decision = learner.answer(query, teacher)
            decisions.append(decision)
            queue.append(decision)
    finally:
        done.set()
        trainer.join(timeout=300)
    assert not errors and not trainer.is_alive()
    stats = learner.stats()
    forwarded = sum(d.route == "forward" for d in decisions)
    assert stats["queries"] == 16 and stats["forwarded"] == forwarded
    # Every forwarded answer was learned from, once.
    assert stats["updates"]["generator"] == forwarded
    # What answers use is what learning last published.
    for name, params in learner.params.items():
        for a, b in zip(
            jax.tree.leaves(params),
            jax.tree.leaves(learner._published[name].params),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b)


def test_answer_in_halves_equals_answer():
    """triage, validate_local, the teacher, finish: the decisions of answer()."""
    domain = faq_domain(4, paraphrases=2)
    teacher = SimulatedTeacher(domain)
    whole, halves = (
        TeacherProxyLearner(tiny_config()),
        TeacherProxyLearner(tiny_config()),
    )
    reasons = set()
    for query in zipf_stream(domain, 12, seed=3):
        a = whole.handle(query, teacher)
        routed = halves.triage(query)
        if routed.reason == "local_candidate":
            assert not routed.forward
            with pytest.raises(ValueError, match="decided"):
                halves.finish(routed)
            routed = halves.validate_local(routed)
        b = halves.finish(routed, teacher(query) if routed.forward else None)
        halves.learn(b)
        reasons.add(b.reason)
        assert (a.answer, a.route, a.reason, a.index) == (
            b.answer,
            b.route,
            b.reason,
            b.index,
        )
    assert "cold_start" in reasons and len(reasons) > 1, reasons
    assert whole.stats()["queries"] == halves.stats()["queries"] == 12


def test_an_abandoned_route_is_not_counted():
    learner = TeacherProxyLearner(tiny_config())
    first = learner.triage("What is the first question?")
    second = learner.triage("What is the second question?")
    assert (first.index, second.index) == (0, 1)
    # The latest route's number is given again; an earlier one's stays a gap.
    learner.abandon(second)
    assert learner.triage("What is the third question?").index == 1
    learner.abandon(first)
    assert learner.triage("What is the fourth question?").index == 2
    stats = learner.stats()
    assert stats["queries"] == 0 and stats["teacher_errors"] == 2
    with pytest.raises(ValueError, match="exactly when"):
        learner.finish(first)  # a forwarded route needs its teacher answer
