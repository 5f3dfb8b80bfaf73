"""``make_addressed_step``: each network is updated by the rows addressed to it."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ol_jax.core import (
    init_state,
    make_addressed_step,
    make_step,
    online_optimizer,
    stack_states,
    unstack_state,
)

N, D = 5, 3


def row_loss(params, row, *, frozen, extras, key):
    del extras, key
    pred = jnp.tanh(row["x"] @ frozen["proj"]) @ params["w"] + params["b"]
    return (pred - row["y"]) ** 2


def mean_loss(params, rows, *, frozen, extras, key):
    """The loss a network's addressed update descends: the mean over its rows."""
    per_row = jax.vmap(
        lambda r: row_loss(params, r, frozen=frozen, extras=extras, key=key)
    )(rows)
    return jnp.mean(per_row)


FROZEN = {"proj": jax.random.normal(jax.random.key(1), (D, 4), jnp.float32)}


def _states(tx, n=N):
    return [
        init_state(
            {
                "w": jax.random.normal(jax.random.key(10 + i), (4,), jnp.float32),
                "b": jnp.zeros((), jnp.float32),
            },
            tx,
            key=jax.random.key(i),
        )
        for i in range(n)
    ]


def _rows(seed, b):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {
        "x": jax.random.normal(k1, (b, D), jnp.float32),
        "y": jax.random.normal(k2, (b,), jnp.float32),
    }


def _same(a, b, atol):
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(
            np.asarray(x), np.asarray(y), atol=atol, rtol=atol
        ),
        a,
        b,
    )


@settings(max_examples=8)
@given(
    ids=st.lists(st.integers(-1, N - 1), min_size=1, max_size=7),
    seed=st.integers(0, 1000),
)
def test_each_network_moves_by_its_own_rows(ids, seed):
    tx = online_optimizer(0.1, clip_norm=1.0)
    states = _states(tx)
    stacked = stack_states(states)
    rows = _rows(seed, len(ids))
    step = make_addressed_step(row_loss, tx)
    new, metrics = step(stacked, rows, jnp.asarray(ids, jnp.int32), FROZEN)
    single = make_step(mean_loss, tx, donate=False)
    ids_np = np.asarray(ids)
    for n in range(N):
        got = unstack_state(new, n)
        mine = ids_np == n
        assert int(metrics["rows"][n]) == int(mine.sum())
        if not mine.any():
            # Bit-identical, every leaf (step counter, optimizer state, key data).
            before = unstack_state(stacked, n)
            for a, b in zip(
                jax.tree.leaves(jax.tree.map(_raw, got)),
                jax.tree.leaves(jax.tree.map(_raw, before)),
                strict=True,
            ):
                assert np.array_equal(np.asarray(a), np.asarray(b))
            continue
        mine_rows = jax.tree.map(lambda x, m=mine: x[m], rows)
        want, want_metrics = single(states[n], mine_rows, FROZEN)
        _same(got.params, want.params, 1e-6)
        _same(got.opt_state, want.opt_state, 1e-6)
        assert int(got.step) == int(want.step) == 1
        np.testing.assert_allclose(
            float(metrics["loss"][n]), float(want_metrics["loss"]), rtol=1e-6
        )


def _raw(x):
    return jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x


def test_jit_equals_no_jit_and_inputs_kept():
    tx = optax.sgd(0.1, momentum=0.9)
    stacked = stack_states(_states(tx))
    rows = _rows(3, 4)
    ids = jnp.asarray([2, 0, 2, -1], jnp.int32)
    snapshot = jax.tree.map(lambda x: np.asarray(_raw(x)).copy(), stacked)
    fast = make_addressed_step(row_loss, tx)(stacked, rows, ids, FROZEN)
    slow = make_addressed_step(row_loss, tx, jit=False)(stacked, rows, ids, FROZEN)
    _same(fast[0].params, slow[0].params, 1e-6)
    for a, b in zip(
        jax.tree.leaves(jax.tree.map(_raw, stacked)),
        jax.tree.leaves(snapshot),
        strict=True,
    ):
        assert np.array_equal(np.asarray(a), b)
    assert fast[0].params["w"].dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(fast[0].params["w"])))


def test_chunked_rows_equal_unchunked():
    tx = online_optimizer(0.1)
    stacked = stack_states(_states(tx))
    rows = _rows(7, 5)
    ids = jnp.asarray([1, 3, 1, -1, 4], jnp.int32)
    whole, _ = make_addressed_step(row_loss, tx)(stacked, rows, ids, FROZEN)
    chunked, _ = make_addressed_step(row_loss, tx, chunk_size=2)(
        stacked, rows, ids, FROZEN
    )
    _same(chunked.params, whole.params, 1e-6)
    with pytest.raises(ValueError, match="chunk_size"):
        make_addressed_step(row_loss, tx, chunk_size=0)


def test_new_addressing_does_not_recompile():
    tx = optax.sgd(0.1)
    traces = []

    def counted(params, row, **kw):
        traces.append(1)
        return row_loss(params, row, **kw)

    step = make_addressed_step(counted, tx)
    stacked = stack_states(_states(tx))
    for ids in ([0, 1, 2], [4, 4, -1], [3, -1, 0]):
        stacked, _ = step(stacked, _rows(0, 3), jnp.asarray(ids, jnp.int32), FROZEN)
    assert len(traces) == 1


def test_aux_per_row_and_nonfinite_row_skips_only_its_network():
    tx = online_optimizer(0.1)

    def loss(params, row, **kw):
        value = row_loss(params, row, **kw) * row["scale"]
        return value, {"value": value}

    stacked = stack_states(_states(tx))
    rows = {**_rows(5, 3), "scale": jnp.asarray([1.0, jnp.inf, 1.0], jnp.float32)}
    step = make_addressed_step(loss, tx, has_aux=True)
    new, metrics = step(stacked, rows, jnp.asarray([0, 1, 2], jnp.int32), FROZEN)
    assert metrics["aux"]["value"].shape == (3,)
    assert [bool(a) for a in metrics["applied"][:3]] == [True, False, True]
    np.testing.assert_array_equal(new.params["w"][1], stacked.params["w"][1])
    assert not np.array_equal(new.params["w"][0], stacked.params["w"][0])


@pytest.mark.parametrize("ids", [[0, 5], [-2], [[0, 1]]])
def test_bad_network_ids_rejected(ids):
    tx = optax.sgd(0.1)
    step = make_addressed_step(row_loss, tx)
    stacked = stack_states(_states(tx))
    rows = _rows(0, np.asarray(ids).size)
    with pytest.raises(ValueError, match="network_ids"):
        step(stacked, rows, jnp.asarray(ids, jnp.int32), FROZEN)
