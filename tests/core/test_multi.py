"""Stacked states and the vmapped multi-network step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ol_jax import objectives
from ol_jax.core import (
    init_state,
    make_multi_step,
    make_step,
    merge_params,
    num_networks,
    online_optimizer,
    partition_params,
    stack_states,
    unstack_state,
)
from ol_jax.models import GlyphConfig, decode_glyph, init_glyph

CFG = GlyphConfig(style_z_dim=4, image_size=4, hidden=(8, 8, 4))
N = 64
ROWS = 2


def glyph_like_loss(params, batch, *, frozen, extras, key):
    """REINFORCE on log pi(z) + log p(x | z) with a baseline, over valid rows."""
    decoder = merge_params(params, frozen)["decoder"]
    policy = params["policy"]
    noise = jax.random.normal(key, (), jnp.float32) * 1e-3

    def one(z, image, reward, valid):
        mean = decode_glyph(decoder, z, CFG)
        log_p = objectives.gaussian_log_prob(
            z, policy["mean"], policy["log_std"]
        ) + objectives.gaussian_log_prob(
            image, mean, jnp.full_like(mean, jnp.log(jnp.float32(0.1)))
        )
        adv = jnp.where(valid, reward - extras["baseline"], 0.0)
        return -adv * log_p

    losses = jax.vmap(one)(batch["z"], batch["image"], batch["reward"], batch["valid"])
    return jnp.mean(losses) + noise, {"n": jnp.sum(batch["valid"].astype(jnp.int32))}


def baseline_update(extras, batch, aux):
    del aux
    r = jnp.sum(jnp.where(batch["valid"], batch["reward"], 0.0))
    return {"baseline": objectives.ema_baseline(extras["baseline"], r, 0.9)}


# SGD with momentum: Adam divides by sqrt(v), so where a gradient nearly cancels
# (a bias summed over pixels) its update is lr * sign(rounding noise), and vmap's
# batched matmuls round differently from single ones. That is Adam's sensitivity,
# not the vmap's; the comparison checks the vmap.
TX = online_optimizer(
    0.05, optimizer="sgd", momentum=0.9, clip_norm=1.0, clamp=(-5.0, 5.0)
)
KW = {"has_aux": True, "extras_update": baseline_update}


def network(i):
    full = init_glyph(CFG, key=jax.random.key(1000 + i))
    params, _ = partition_params(full, ["policy", "decoder.3", "decoder.4"])
    extras = {"baseline": jnp.zeros((), jnp.float32)}
    return init_state(params, TX, key=jax.random.key(i), extras=extras)


FROZEN = partition_params(
    init_glyph(CFG, key=jax.random.key(7)), ["policy", "decoder.3", "decoder.4"]
)[1]


def batches(n, seed):
    k = jax.random.split(jax.random.key(seed), 3)
    return {
        "z": jax.random.normal(k[0], (n, ROWS, CFG.style_z_dim), jnp.float32),
        "image": jax.random.uniform(
            k[1], (n, ROWS, CFG.image_size, CFG.image_size), jnp.float32
        ),
        "reward": jax.random.uniform(k[2], (n, ROWS), jnp.float32, -1.0, 1.0),
        "valid": jnp.ones((n, ROWS), jnp.bool_).at[:, 1].set(jnp.arange(n) % 2 == 0),
    }


def slice_tree(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def assert_tree_equal(a, b):
    a, b = jax.device_get((a, b))
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if jnp.issubdtype(jnp.result_type(x), jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def stacked():
    return stack_states([network(i) for i in range(N)])


@pytest.fixture(scope="module")
def multi_step():
    return make_multi_step(glyph_like_loss, TX, **KW)


def test_stack_and_unstack_round_trip(stacked):
    assert num_networks(stacked) == N
    assert stacked.params["policy"]["mean"].shape == (N, CFG.style_z_dim)
    assert stacked.step.shape == (N,) and stacked.key.shape == (N,)
    for i in (0, 17, N - 1):
        assert_tree_equal(unstack_state(stacked, i), network(i))


def test_stack_rejects_empty_and_mismatched():
    with pytest.raises(ValueError, match="at least one"):
        stack_states([])
    a = network(0)
    b = a._replace(params={**a.params, "policy": {"mean": jnp.zeros(3)}})
    with pytest.raises(ValueError, match=r"states\[1\]"):
        stack_states([a, b])
    with pytest.raises(ValueError, match="i must be"):
        unstack_state(stack_states([a, a]), 2)


def test_vmapped_step_equals_separate_steps(stacked, multi_step):
    single = make_step(glyph_like_loss, TX, donate=False, **KW)
    mask = jnp.ones((N,), jnp.bool_)
    state, separate = stacked, [network(i) for i in range(N)]
    for t in range(2):
        batch = batches(N, t)
        state, metrics = multi_step(state, batch, mask, FROZEN)
        for i in range(N):
            separate[i], m = single(separate[i], slice_tree(batch, i), FROZEN)
            np.testing.assert_allclose(
                metrics["loss"][i], m["loss"], rtol=1e-6, atol=1e-6
            )
    expect = stack_states(separate)
    assert_tree_equal(state.step, expect.step)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6),
        (state.params, state.opt_state, state.extras),
        (expect.params, expect.opt_state, expect.extras),
    )


@settings(max_examples=6)
@given(bits=st.lists(st.booleans(), min_size=N, max_size=N), seed=st.integers(0, 99))
def test_masked_off_networks_are_bit_identical(stacked, multi_step, bits, seed):
    mask = jnp.asarray(bits, jnp.bool_)
    before = jax.device_get(stacked)
    new, _ = multi_step(stacked, batches(N, seed), mask, FROZEN)
    assert_tree_equal(stacked, before)  # the input is not mutated
    for i in range(N):
        if bits[i]:
            assert int(new.step[i]) == 1
            assert not np.array_equal(
                new.params["policy"]["mean"][i], stacked.params["policy"]["mean"][i]
            )
        else:
            assert_tree_equal(slice_tree(new, i), slice_tree(stacked, i))


def test_state_structure_dtypes_and_finiteness_kept(stacked, multi_step):
    new, metrics = multi_step(stacked, batches(N, 3), jnp.ones((N,), jnp.bool_), FROZEN)
    spec = lambda t: jax.tree.map(lambda x: (x.shape, x.dtype), t)  # noqa: E731
    assert spec(new) == spec(stacked)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(new.params))
    assert metrics["loss"].shape == (N,) and metrics["applied"].all()


def test_jit_equals_no_jit():
    n = 3
    state = stack_states([network(i) for i in range(n)])
    mask = jnp.arange(n) % 3 != 0
    batch = batches(n, 5)
    a, ma = make_multi_step(glyph_like_loss, TX, **KW)(state, batch, mask, FROZEN)
    b, mb = make_multi_step(glyph_like_loss, TX, jit=False, **KW)(
        state, batch, mask, FROZEN
    )
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6, rtol=1e-6),
        (a.params, a.opt_state, a.extras, ma["loss"]),
        (b.params, b.opt_state, b.extras, mb["loss"]),
    )
    assert_tree_equal(a.step, b.step)


def test_no_recompilation_when_the_mask_changes():
    n = 8
    multi_step = make_multi_step(glyph_like_loss, TX, **KW)
    state = stack_states([network(i) for i in range(n)])
    masks = [np.arange(n) < k for k in range(n + 1)] + [np.arange(n) % 2 == 1]
    for t, m in enumerate(masks):
        state, _ = multi_step(state, batches(n, t), jnp.asarray(m), FROZEN)
    assert multi_step._cache_size() == 1


def test_donated_multi_step_and_bad_mask():
    n = 4
    multi_step = make_multi_step(glyph_like_loss, TX, donate=True, **KW)
    state = stack_states([network(i) for i in range(n)])
    new, _ = multi_step(state, batches(n, 0), jnp.ones((n,), jnp.bool_), FROZEN)
    assert new.step.tolist() == [1] * n
    with pytest.raises(ValueError, match=r"mask must be bool\[4\]"):
        multi_step(new, batches(n, 0), jnp.ones((n,), jnp.int32), FROZEN)
    with pytest.raises(ValueError, match="has_aux and extras_update"):
        make_multi_step(glyph_like_loss, TX, donate_argnums=0)


def test_chunked_equals_unchunked_and_keeps_masked_off():
    n = 10  # not a multiple of the chunk: the remainder takes its own path
    state = stack_states([network(i) for i in range(n)])
    mask = jnp.arange(n) % 4 != 1
    batch = batches(n, 9)
    a, ma = make_multi_step(glyph_like_loss, TX, **KW)(state, batch, mask, FROZEN)
    b, mb = make_multi_step(glyph_like_loss, TX, chunk_size=4, **KW)(
        state, batch, mask, FROZEN
    )
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6, rtol=1e-6),
        (a.params, a.opt_state, a.extras, ma["loss"]),
        (b.params, b.opt_state, b.extras, mb["loss"]),
    )
    for i in range(1, n, 4):
        assert_tree_equal(slice_tree(b, i), slice_tree(state, i))
    with pytest.raises(ValueError, match="chunk_size"):
        make_multi_step(glyph_like_loss, TX, chunk_size=0)
