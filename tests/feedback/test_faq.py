"""The generated FAQ domain, the Zipf query stream and the simulated teacher."""

import collections

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ol_jax.feedback import (
    FALLBACK_ANSWER,
    SimulatedTeacher,
    Teacher,
    TeacherError,
    describe_domain,
    faq_domain,
    normalize_query,
    zipf_stream,
)


def test_domain_has_enough_distinct_families():
    domain = faq_domain(100, paraphrases=4, seed=0)
    assert len(domain) == 100
    names = [f.name for f in domain.families]
    answers = [f.answer for f in domain.families]
    assert len(set(names)) == 100
    assert len(set(answers)) == 100
    for family in domain.families:
        assert len(family.paraphrases) == 4
        assert len(set(family.paraphrases)) == 4


@given(
    num_families=st.integers(1, 144),
    paraphrases=st.integers(1, 8),
    seed=st.integers(0, 2**31 - 1),
    max_words=st.integers(12, 20),
)
def test_every_paraphrase_maps_to_its_family(
    num_families, paraphrases, seed, max_words
):
    domain = faq_domain(
        num_families, paraphrases=paraphrases, seed=seed, max_answer_words=max_words
    )
    for i, family in enumerate(domain.families):
        assert len(family.answer.split()) <= max_words
        for text in family.paraphrases:
            assert domain.family_of(text) == i
            assert domain.answer(text.upper() + "  ") == family.answer


def test_domain_is_a_pure_function_of_its_arguments():
    assert faq_domain(20, seed=3) == faq_domain(20, seed=3)
    assert faq_domain(20, seed=3) != faq_domain(20, seed=4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_families=0), "num_families must be in 1..144, got 0"),
        (dict(num_families=145), "num_families must be in 1..144, got 145"),
        (dict(paraphrases=9), "paraphrases must be in 1..8, got 9"),
        (dict(max_answer_words=5), "max_answer_words must be >= 12, got 5"),
    ],
)
def test_domain_rejects_bad_arguments(kwargs, message):
    args = dict(num_families=12) | kwargs
    with pytest.raises(ValueError, match=message):
        faq_domain(**args)


@given(st.text(max_size=40))
def test_normalize_query_is_idempotent(text):
    once = normalize_query(text)
    assert normalize_query(once) == once


def test_zipf_stream_is_reproducible_and_rank_ordered():
    domain = faq_domain(12)
    stream = zipf_stream(domain, 3000, seed=1, exponent=1.1)
    assert stream == zipf_stream(domain, 3000, seed=1, exponent=1.1)
    assert stream != zipf_stream(domain, 3000, seed=2, exponent=1.1)
    counts = collections.Counter(domain.family_of(q) for q in stream)
    assert None not in counts
    # Rank 1 about twice rank 2 (2^1.1 = 2.14), and the head beats the tail.
    assert 1.6 < counts[0] / counts[1] < 2.8
    assert counts[0] > counts[5] > counts[11] > 0
    uniform = collections.Counter(
        domain.family_of(q) for q in zipf_stream(domain, 3000, exponent=0.0)
    )
    assert max(uniform.values()) < 1.3 * min(uniform.values())


def test_zipf_stream_rejects_bad_arguments():
    domain = faq_domain(3)
    assert zipf_stream(domain, 0) == []
    with pytest.raises(ValueError, match="n must be >= 0, got -1"):
        zipf_stream(domain, -1)
    with pytest.raises(ValueError, match="exponent must be >= 0, got -0.5"):
        zipf_stream(domain, 5, exponent=-0.5)


def test_simulated_teacher_answers_deterministically():
    domain = faq_domain(50, paraphrases=5)
    teacher = SimulatedTeacher(domain)
    assert isinstance(teacher, Teacher)
    for family in domain.families:
        assert {teacher(q) for q in family.paraphrases} == {family.answer}
    assert teacher.calls == 250
    assert teacher("What is the weather on Mars?") == FALLBACK_ANSWER


def test_simulated_teacher_errors():
    teacher = SimulatedTeacher(faq_domain(5), unknown="error")
    with pytest.raises(TeacherError, match="outside the FAQ domain"):
        teacher("What is the weather on Mars?")
    with pytest.raises(TeacherError, match="non-empty string"):
        teacher("   ")
    assert teacher.calls == 0
    with pytest.raises(ValueError, match="unknown must be 'fallback' or 'error'"):
        SimulatedTeacher(faq_domain(5), unknown="raise")


class BagOfWords:
    """A stand-in sentence encoder: word counts over a fixed vocabulary."""

    def __init__(self, texts):
        words = sorted({w for t in texts for w in normalize_query(t).split()})
        self.index = {w: i for i, w in enumerate(words)}

    def embed(self, texts):
        import numpy as np

        out = np.zeros((len(texts), len(self.index) + 1), np.float32)
        for row, text in enumerate(texts):
            out[row, -1] = 1e-3  # no all-zero rows
            for word in normalize_query(text).split():
                if word in self.index:
                    out[row, self.index[word]] += 1.0
        return out


def test_simulated_teacher_matches_by_meaning_above_the_threshold():
    domain = faq_domain(12)
    encoder = BagOfWords(domain.queries)
    teacher = SimulatedTeacher(domain, encoder=encoder, threshold=0.6)
    family = domain.families[0]
    # Not a paraphrase of the domain, but close in meaning (and in words here).
    query = family.paraphrases[0].replace("?", "").replace(".", "") + " today please"
    assert domain.answer(query) is None
    index, similarity = teacher.match(query)
    assert index == 0 and similarity >= 0.6
    assert teacher(query) == family.answer
    # Exact paraphrases skip the encoder; unrelated text stays outside.
    assert teacher.match(family.paraphrases[1]) == (0, None)
    assert teacher("zebra xylophone quantum") == FALLBACK_ANSWER
    strict = SimulatedTeacher(domain, encoder=encoder, threshold=1.0)
    assert strict(query) == FALLBACK_ANSWER
    assert SimulatedTeacher(domain)(query) == FALLBACK_ANSWER
    with pytest.raises(ValueError, match="threshold must be in"):
        SimulatedTeacher(domain, encoder=encoder, threshold=1.5)


@given(st.integers(0, 11), st.integers(0, 3))
def test_simulated_teacher_stream_joins_to_its_answer(family, paraphrase):
    domain = faq_domain(12)
    teacher = SimulatedTeacher(domain)
    query = domain.families[family].paraphrases[paraphrase]
    pieces = list(teacher.stream(query))
    assert len(pieces) > 1 and "".join(pieces) == teacher(query)


def test_describe_domain_lists_every_family():
    domain = faq_domain(7)
    lines = describe_domain(domain).splitlines()
    assert [line.split(":")[0].strip() for line in lines] == [
        f.name for f in domain.families
    ]


@pytest.mark.slow
def test_minilm_teacher_answers_natural_phrasings():
    """The README's example and other phrasings no paraphrase spells out."""
    from ol_jax.models import load_encoder

    domain = faq_domain(60)
    teacher = SimulatedTeacher(domain, encoder=load_encoder("all-minilm-l6-v2"))
    by_name = {f.name: f.answer for f in domain.families}
    assert teacher("How do I reset my password?") == by_name["change-password"]
    assert teacher("cancel subscription") == by_name["cancel-plan"]
    assert teacher("I'd like to delete my account") == by_name["delete-account"]
    assert teacher("What is the capital of France?") == FALLBACK_ANSWER
