"""Tests for the glyph decoder and the Gaussian style policy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from ol_jax.core import freeze_all_but, path_str
from ol_jax.models import (
    GaussianStylePolicy,
    GlyphConfig,
    GlyphDecoder,
    decode_glyph,
    generate_glyphs,
    init_glyph,
    sample_style_z,
    style_z_log_prob,
)
from ol_jax.objectives import gaussian_log_prob

SMALL = GlyphConfig(style_z_dim=8, image_size=12, hidden=(16, 16, 8))


@pytest.fixture(scope="module")
def params():
    return init_glyph(key=jax.random.key(0))


def _paths(tree):
    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def test_param_paths_and_layer_names(params):
    paths = _paths(params)
    assert paths == [
        "decoder.0.bias",
        "decoder.0.kernel",
        "decoder.1.bias",
        "decoder.1.kernel",
        "decoder.2.bias",
        "decoder.2.kernel",
        "decoder.3.bias",
        "decoder.3.kernel",
        "decoder.4.bias",
        "decoder.4.kernel",
        "policy.log_std",
        "policy.mean",
    ]
    n = sum(x.size for x in jax.tree.leaves(params["decoder"]))
    assert 30_000 <= n <= 300_000
    for leaf in jax.tree.leaves(params):
        assert leaf.dtype == jnp.float32
        assert float(jnp.max(jnp.abs(leaf))) < 5.0  # inside the learner's clamp box
    np.testing.assert_array_equal(params["policy"]["mean"], np.zeros(64))
    np.testing.assert_array_equal(params["policy"]["log_std"], np.zeros(64))


def test_nnx_split_paths_match_functional_form():
    dec = GlyphDecoder(rngs=nnx.Rngs(0))
    _, state = nnx.split(dec)
    assert all(p.startswith("decoder.") for p in _paths(state))
    pure = nnx.to_pure_dict(state)
    assert _paths(pure)[-2:] == ["decoder.4.bias", "decoder.4.kernel"]
    z = jax.random.normal(jax.random.key(1), (64,))
    np.testing.assert_allclose(dec(z), decode_glyph(pure["decoder"], z), atol=1e-6)


def test_finetune_prefix_selects_last_layers(params):
    tx = freeze_all_but(optax.sgd(1.0), ["decoder.3", "decoder.4"])
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    for path, u in zip(_paths(params), jax.tree.leaves(updates), strict=True):
        moved = bool(jnp.any(u != 0))
        assert moved == path.startswith(("decoder.3.", "decoder.4.")), path


def test_images_in_range_and_varied(params):
    gen = jax.jit(generate_glyphs, static_argnames=("n",))
    z, images = gen(params, key=jax.random.key(2), n=32)
    assert z.shape == (32, 64) and images.shape == (32, 32, 32)
    assert images.dtype == jnp.float32
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    ink = images.mean(axis=(1, 2))
    # Untrained glyphs already differ: ink mass varies and no canvas is flat grey.
    assert float(ink.std()) > 0.05
    assert float(images.std(axis=(1, 2)).min()) > 0.1
    assert not np.allclose(images[0], images[1])


def test_decode_jit_matches_eager_and_grads_finite(params):
    z = jax.random.normal(jax.random.key(3), (64,))
    np.testing.assert_allclose(
        jax.jit(decode_glyph)(params["decoder"], z),
        decode_glyph(params["decoder"], z),
        atol=1e-5,
    )
    grads = jax.jit(jax.grad(lambda d: decode_glyph(d, z).mean()))(params["decoder"])
    for path, g in zip(_paths(grads), jax.tree.leaves(grads), strict=True):
        assert bool(jnp.all(jnp.isfinite(g))), path
    assert float(jnp.abs(grads["3"]["kernel"]).sum()) > 0
    assert float(jnp.abs(grads["4"]["kernel"]).sum()) > 0


def test_bad_inputs(params):
    with pytest.raises(ValueError, match="style_z must have shape"):
        decode_glyph(params["decoder"], jnp.zeros((2, 64)))
    with pytest.raises(ValueError, match="style_z must have shape"):
        decode_glyph(params["decoder"], jnp.zeros(63))
    with pytest.raises(ValueError, match="missing"):
        decode_glyph({"0": params["decoder"]["0"]}, jnp.zeros(64))
    with pytest.raises(ValueError, match="hidden"):
        GlyphConfig(hidden=(8, 8))
    with pytest.raises(ValueError, match="n must be >= 1"):
        sample_style_z(params["policy"], key=jax.random.key(0), n=0)


def test_small_config_and_nnx_module():
    p = init_glyph(SMALL, key=jax.random.key(4))
    gen = jax.jit(generate_glyphs, static_argnames=("n", "config"))
    z, images = gen(p, key=jax.random.key(5), n=3, config=SMALL)
    assert images.shape == (3, 12, 12)
    dec = GlyphDecoder.from_config(SMALL, rngs=nnx.Rngs(0))
    assert dec(z[0]).shape == (12, 12)


def test_policy_module_and_sampling_statistics():
    policy = GaussianStylePolicy(4)
    p = policy.params()
    p = {"mean": p["mean"] + jnp.arange(4.0), "log_std": p["log_std"] - 1.0}
    z = policy.sample(p, key=jax.random.key(6), n=4000)
    assert z.shape == (4000, 4) and z.dtype == jnp.float32
    np.testing.assert_allclose(z.mean(0), np.arange(4.0), atol=0.05)
    np.testing.assert_allclose(z.std(0), np.full(4, np.exp(-1.0)), rtol=0.06)
    _, state = nnx.split(policy)
    assert sorted(_paths(nnx.to_pure_dict(state))) == ["log_std", "mean"]


@settings(max_examples=10)
@given(
    mean=st.lists(st.floats(-3, 3), min_size=3, max_size=3),
    log_std=st.lists(st.floats(-2, 1), min_size=3, max_size=3),
    z=st.lists(st.floats(-5, 5), min_size=3, max_size=3),
)
def test_log_prob_matches_objective_and_jit(mean, log_std, z):
    p = {
        "mean": jnp.asarray(mean, jnp.float32),
        "log_std": jnp.asarray(log_std, jnp.float32),
    }
    before = jax.tree.map(np.array, p)
    z = jnp.asarray(z, jnp.float32)
    lp = style_z_log_prob(p, z)
    np.testing.assert_allclose(lp, gaussian_log_prob(z, p["mean"], p["log_std"]))
    np.testing.assert_allclose(jax.jit(style_z_log_prob)(p, z), lp, rtol=1e-6)
    assert lp.dtype == jnp.float32 and bool(jnp.isfinite(lp))
    jax.tree.map(np.testing.assert_array_equal, p, before)  # not mutated


@settings(max_examples=8)
@given(
    z=st.lists(st.floats(-30, 30, allow_nan=False, width=32), min_size=8, max_size=8)
)
def test_decode_finite_in_range_and_jit_equal(z):
    p = init_glyph(SMALL, key=jax.random.key(7))
    z = jnp.asarray(z, jnp.float32)
    image = decode_glyph(p["decoder"], z, SMALL)
    assert image.shape == (12, 12) and image.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(image)))
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    jitted = jax.jit(decode_glyph, static_argnums=2)(p["decoder"], z, SMALL)
    np.testing.assert_allclose(jitted, image, atol=1e-5)


def test_reparameterised_sample_is_differentiable(params):
    def loss(policy):
        return jnp.sum(sample_style_z(policy, key=jax.random.key(8), n=4))

    g = jax.grad(loss)(params["policy"])
    np.testing.assert_allclose(g["mean"], np.full(64, 4.0))
    assert bool(jnp.all(jnp.isfinite(g["log_std"])))
