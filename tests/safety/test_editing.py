"""Knowledge-editing measures: containment, unchanged answers, neighbour KL."""

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from ol_jax.objectives import token_kl
from ol_jax.safety import answer_contains, answers_unchanged, edit_success, neighbour_kl

words = st.text(alphabet="abcdefgh XYZ", min_size=1, max_size=12)


@given(prefix=words, answer=words.filter(lambda a: a.strip(" ")), suffix=words)
def test_a_reply_containing_the_answer_in_any_case_succeeds(prefix, answer, suffix):
    reply = f"{prefix}{answer.upper()}{suffix}"
    assert answer_contains(reply, answer)
    assert answer_contains(reply.lower(), answer.upper())


def test_containment_ignores_edge_punctuation_and_spacing_but_not_words():
    assert answer_contains("She lives in  Oslo now.", "Oslo.")
    assert answer_contains("ｏｓｌｏ", "Oslo")  # full-width, NFKC
    assert answer_contains("East   Cicombe", "east cicombe")
    assert not answer_contains("She lives in Bergen.", "Oslo")
    assert edit_success(["in Oslo", "no"], ["oslo", "yes"]).tolist() == [True, False]
    with pytest.raises(ValueError, match="answer must contain a word"):
        answer_contains("x", " .. ")
    with pytest.raises(ValueError, match="equal length"):
        edit_success(["a"], [])


@given(st.lists(st.text(max_size=8), max_size=6))
def test_identical_answers_are_unchanged(replies):
    assert answers_unchanged(replies, [f" {r} " for r in replies]).all()
    changed = answers_unchanged(replies, [r + "!" for r in replies])
    assert not changed.any()


@settings(deadline=None, max_examples=40)
@given(
    n=st.integers(1, 4),
    t=st.integers(1, 5),
    v=st.integers(2, 7),
    seed=st.integers(0, 2**16),
    scale=st.floats(0.0, 30.0),
)
def test_neighbour_kl_is_the_mean_of_row_token_kls(n, t, v, seed, scale):
    rng = np.random.default_rng(seed)
    base = (rng.normal(size=(n, t, v)) * scale).astype(np.float32)
    new = (rng.normal(size=(n, t, v)) * scale).astype(np.float32)
    mask = (rng.random((n, t)) < 0.7).astype(np.float32)
    got = neighbour_kl(base, new, mask)
    want = np.mean([float(token_kl(base[i], new[i], mask=mask[i])) for i in range(n)])
    assert np.isfinite(float(got)) and float(got) >= 0.0
    np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(jax.jit(neighbour_kl)(base, new, mask)), want,
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    assert float(neighbour_kl(base, base, mask)) == 0.0


def test_neighbour_kl_checks_shapes():
    with pytest.raises(ValueError, match=r"\[N, T, V\]"):
        neighbour_kl(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3, 5)), jnp.ones((2, 3)))
