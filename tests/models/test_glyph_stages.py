"""Tests for the split glyph decoder: ``glyph_stage`` and ``decode_glyph_from``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ol_jax.models import (
    GlyphConfig,
    decode_glyph,
    decode_glyph_from,
    glyph_stage,
    init_glyph,
)

SMALL = GlyphConfig(style_z_dim=8, image_size=12, hidden=(16, 24, 8))
WIDTHS = (8, 16, 24, 8)


@pytest.fixture(scope="module")
def decoder():
    return init_glyph(SMALL, key=jax.random.key(0))["decoder"]


@settings(max_examples=10)
@given(
    stage=st.integers(0, 3),
    n=st.integers(1, 3),
    seed=st.integers(0, 2**16),
    scale=st.floats(0.0, 4.0),
)
def test_stage_then_rest_equals_decode_glyph(decoder, stage, n, seed, scale):
    z = scale * jax.random.normal(jax.random.key(seed), (n, SMALL.style_z_dim))
    z_before = np.asarray(z).copy()
    h = glyph_stage(decoder, z, stage=stage)
    assert h.shape == (n, WIDTHS[stage]) and h.dtype == jnp.float32
    images = decode_glyph_from(decoder, h, SMALL, stage=stage)
    expected = jax.vmap(lambda zi: decode_glyph(decoder, zi, SMALL))(z)
    assert images.shape == (n, 12, 12) and images.dtype == jnp.float32
    np.testing.assert_allclose(images, expected, atol=1e-6)
    assert np.isfinite(np.asarray(images)).all()
    np.testing.assert_array_equal(np.asarray(z), z_before)


@pytest.mark.parametrize("stage", [0, 3])
def test_jit_equals_eager_and_batch_axes(decoder, stage):
    z = jax.random.normal(jax.random.key(1), (2, 3, SMALL.style_z_dim))

    def run(d, z):
        return decode_glyph_from(d, glyph_stage(d, z, stage=stage), SMALL, stage=stage)

    eager = run(decoder, z)
    assert eager.shape == (2, 3, 12, 12)
    np.testing.assert_allclose(jax.jit(run)(decoder, z), eager, atol=1e-5)
    # One unbatched latent works too.
    np.testing.assert_allclose(run(decoder, z[0, 0]), eager[0, 0], atol=1e-5)


def test_stage_values_carry_no_later_layer(decoder):
    # Only layers before the stage are used: changing decoder.3 leaves stage 3.
    z = jnp.ones((SMALL.style_z_dim,))
    other = {**decoder, "3": jax.tree.map(lambda x: x + 1.0, decoder["3"])}
    np.testing.assert_array_equal(
        glyph_stage(decoder, z, stage=3), glyph_stage(other, z, stage=3)
    )


def test_bad_inputs_raise(decoder):
    z = jnp.zeros((SMALL.style_z_dim,))
    for bad in (-1, 4, 1.0, True):
        with pytest.raises(ValueError, match="stage"):
            glyph_stage(decoder, z, stage=bad)
    with pytest.raises(ValueError, match="style_z"):
        glyph_stage(decoder, jnp.zeros((SMALL.style_z_dim + 1,)), stage=1)
    with pytest.raises(ValueError, match="stage 2 values"):
        decode_glyph_from(decoder, jnp.zeros((5,)), SMALL, stage=2)
    with pytest.raises(ValueError, match="hidden"):
        decode_glyph_from(decoder, jnp.zeros((8,)), GlyphConfig(), stage=3)
