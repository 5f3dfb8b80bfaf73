"""Tests for the simulated personality rater."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ol_jax.feedback import (
    PERSONALITIES,
    SimulatedRater,
    match_score,
    personality_profile,
    rating_from_match,
    simulated_rating,
)
from ol_jax.models import decode_glyph, generate_glyphs, init_glyph


@pytest.fixture(scope="module")
def glyphs():
    params = init_glyph(key=jax.random.key(0))
    gen = jax.jit(generate_glyphs, static_argnames=("n",))
    z, images = gen(params, key=jax.random.key(1), n=200)
    return params, z, np.asarray(images)


def test_personalities_named():
    assert len(PERSONALITIES) >= 6
    for name in ("bold", "playful", "elegant", "calm", "technical", "whimsical"):
        assert name in PERSONALITIES
        p = personality_profile(name)
        assert p.name == name and p.description and p.tolerance > 0
        assert set(p.targets) == set(p.weights)
    with pytest.raises(ValueError, match="personality must be one of"):
        SimulatedRater("grumpy")


@pytest.mark.parametrize("personality", PERSONALITIES)
def test_untrained_decoder_ratings_spread(glyphs, personality):
    _, _, images = glyphs
    ratings, scores = SimulatedRater(personality).rate_batch_with_scores(images)
    assert ratings.dtype == np.int32 and ratings.shape == (200,)
    assert ratings.min() >= 1 and ratings.max() <= 10
    # Learnable but not trivial: a varied spread around a middling mean.
    assert 3.0 <= ratings.mean() <= 6.0, ratings.mean()
    assert ratings.std() > 1.0
    assert len(np.unique(ratings)) >= 6
    assert 0.0 < scores.min() and scores.max() <= 1.0
    np.testing.assert_array_equal(ratings, rating_from_match(scores))


def test_rate_matches_pure_rating(glyphs):
    _, _, images = glyphs
    rater = SimulatedRater("calm")
    r = rater.rate(images[0])
    assert isinstance(r, int) and 1 <= r <= 10
    assert r == int(simulated_rating(images[0], "calm"))
    assert r == int(rater.rating(images[0]))
    assert r == int(rater.rate_batch(images[:3])[0])
    np.testing.assert_allclose(
        rater.match_score(images[0]), match_score(images[0], "calm"), rtol=1e-6
    )


def test_noise_is_seeded_and_per_glyph(glyphs):
    _, _, images = glyphs
    images = images[:64]
    clean = SimulatedRater("bold").rate_batch(images)
    a = SimulatedRater("bold", noise_std=1.5, seed=3).rate_batch(images)
    b = SimulatedRater("bold", noise_std=1.5, seed=3).rate_batch(images)
    c = SimulatedRater("bold", noise_std=1.5, seed=4).rate_batch(images)
    np.testing.assert_array_equal(a, b)
    assert np.any(a != c) and np.any(a != clean)
    assert a.min() >= 1 and a.max() <= 10
    # Same glyph, same rating, whether rated alone or in a batch.
    rater = SimulatedRater("bold", noise_std=1.5, seed=3)
    assert [rater.rate(im) for im in images[:4]] == list(a[:4])


def test_rating_from_match_values():
    got = rating_from_match(jnp.asarray([0.0, 1.0, 0.5, 0.04, jnp.nan, 2.0]))
    np.testing.assert_array_equal(got, [1, 10, 6, 1, 1, 10])
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(rating_from_match(0.5, -2.6), 3)


def test_bad_inputs(glyphs):
    _, _, images = glyphs
    rater = SimulatedRater("elegant")
    bad = images[0].copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"finite and in \[0, 1\]"):
        rater.rate(bad)
    with pytest.raises(ValueError, match=r"finite and in \[0, 1\]"):
        rater.rate(images[0] + 2.0)
    with pytest.raises(ValueError, match=r"image must have shape \[S, S\]"):
        rater.rate(images[:2])
    with pytest.raises(ValueError, match="noise_std must be"):
        SimulatedRater("calm", noise_std=-1.0)
    with pytest.raises(ValueError, match="seed must be an integer"):
        SimulatedRater("calm", seed=-1)
    with pytest.raises(ValueError, match="key is required"):
        simulated_rating(images[0], "calm", noise_std=1.0)


@pytest.mark.parametrize("personality", ["bold", "technical"])
def test_gradient_ascent_on_z_raises_match(glyphs, personality):
    params, z, _ = glyphs

    def score(zi):
        return match_score(decode_glyph(params["decoder"], zi), personality)

    @jax.jit
    def ascend(z0):
        def step(zi, _):
            s, g = jax.value_and_grad(score)(zi)
            return zi + 0.1 * g / (jnp.linalg.norm(g) + 1e-8), s

        zi, history = jax.lax.scan(step, z0, None, length=80)
        return history[0], score(zi)

    start, end = jax.vmap(ascend)(z[:4])
    assert float(end.mean()) > float(start.mean()) + 0.3
    assert float(end.mean()) > 0.75


@settings(max_examples=6)
@given(
    image=hnp.arrays(np.float32, (12, 12), elements=st.floats(0.0, 1.0, width=32)),
    personality=st.sampled_from(PERSONALITIES),
)
def test_property_match_and_rating(image, personality):
    before = image.copy()
    m = match_score(image, personality)
    assert m.dtype == jnp.float32 and bool(jnp.isfinite(m))
    assert 0.0 <= float(m) <= 1.0
    jitted = jax.jit(match_score, static_argnums=1)(image, personality)
    np.testing.assert_allclose(jitted, m, atol=1e-5)
    r = simulated_rating(image, personality)
    assert r.dtype == jnp.int32 and 1 <= int(r) <= 10
    g = jax.grad(match_score)(jnp.asarray(image), personality)
    assert bool(jnp.all(jnp.isfinite(g)))
    np.testing.assert_array_equal(image, before)


@settings(max_examples=15)
@given(
    match=st.floats(-10, 10, width=32),
    noise=st.floats(-100, 100, width=32),
)
def test_property_rating_from_match_in_range(match, noise):
    r = rating_from_match(jnp.float32(match), jnp.float32(noise))
    assert r.dtype == jnp.int32 and 1 <= int(r) <= 10
    np.testing.assert_array_equal(jax.jit(rating_from_match)(match, noise), r)
