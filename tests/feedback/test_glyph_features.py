"""Tests for the glyph image features."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ol_jax.feedback import FEATURE_NAMES, glyph_features

F = {name: i for i, name in enumerate(FEATURE_NAMES)}
S = 16


def _grid(size=S):
    t = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    y, x = np.meshgrid(t, t, indexing="ij")
    return x, y


def test_hand_computed_shapes():
    x, y = _grid()
    r = np.sqrt(x * x + y * y)
    ring = (np.abs(r - 0.6) < 0.15).astype(np.float32)
    bar = (np.abs(y) < 0.15).astype(np.float32)  # horizontal line through centre
    corner = ((x > 0.5) & (y > 0.5)).astype(np.float32)
    f_ring, f_bar, f_corner = (
        np.asarray(glyph_features(im)) for im in (ring, bar, corner)
    )
    np.testing.assert_allclose(f_ring[F["ink"]], ring.mean(), rtol=1e-5)
    np.testing.assert_allclose(f_ring[F["contrast"]], 2 * ring.std(), rtol=1e-4)
    # A ring is round and symmetric both ways; a bar is symmetric and not round.
    assert f_ring[F["roundness"]] > 0.95
    assert f_ring[F["symmetry_lr"]] > 0.99 and f_ring[F["symmetry_tb"]] > 0.99
    assert f_bar[F["roundness"]] < 0.05
    assert f_bar[F["symmetry_lr"]] > 0.99
    assert f_ring[F["offset"]] < 1e-3 and f_bar[F["offset"]] < 1e-3
    # The corner block sits away from the centre and is not mirror-symmetric.
    assert f_corner[F["offset"]] > 0.5
    assert f_corner[F["symmetry_lr"]] < 0.01
    assert f_corner[F["centre"]] == 0.0
    assert f_bar[F["centre"]] > f_ring[F["centre"]]


def test_blank_and_full_canvas_are_finite():
    for im in (np.zeros((S, S), np.float32), np.ones((S, S), np.float32)):
        f = glyph_features(im)
        assert f.shape == (len(FEATURE_NAMES),) and f.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(f)))
        g = jax.grad(lambda im: glyph_features(im).sum())(jnp.asarray(im))
        assert bool(jnp.all(jnp.isfinite(g)))


def test_bad_shape():
    with pytest.raises(ValueError, match=r"image must be one square glyph"):
        glyph_features(np.zeros((2, S, S), np.float32))
    with pytest.raises(ValueError, match=r"image must be one square glyph"):
        glyph_features(np.zeros((S, S + 1), np.float32))


@settings(max_examples=15)
@given(
    hnp.arrays(
        np.float32,
        (S, S),
        elements=st.floats(0.0, 1.0, width=32),
    )
)
def test_property_in_range_deterministic_jit_equal(image):
    before = image.copy()
    f = glyph_features(image)
    assert f.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(f)))
    assert float(f.min()) >= 0.0 and float(f.max()) <= 1.0
    np.testing.assert_array_equal(glyph_features(image), f)
    np.testing.assert_allclose(jax.jit(glyph_features)(image), f, atol=1e-5)
    g = jax.jit(jax.grad(lambda im: glyph_features(im).sum()))(image)
    assert bool(jnp.all(jnp.isfinite(g)))
    np.testing.assert_array_equal(image, before)
