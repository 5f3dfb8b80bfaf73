"""``top_k`` of ``sample_logits`` and ``generate``: only the k most probable ids."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from ol_jax.models import sample_logits


@given(
    seed=st.integers(0, 2**16),
    k=st.integers(1, 12),
    temperature=st.floats(0.1, 3.0),
)
def test_top_k_draws_only_the_k_most_probable(seed, k, temperature):
    logits = jax.random.normal(jax.random.key(seed), (4, 12), jnp.float32)
    keys = jax.random.split(jax.random.key(seed + 1), 16)
    draws = jax.vmap(
        lambda key: sample_logits(logits, key=key, temperature=temperature, top_k=k)
    )(keys)
    top = np.argsort(-np.asarray(logits), axis=-1)[:, :k]
    for row in range(4):
        assert set(np.asarray(draws[:, row]).tolist()) <= set(top[row].tolist())
    if k == 1:
        np.testing.assert_array_equal(
            draws, np.broadcast_to(np.argmax(np.asarray(logits), -1), draws.shape)
        )


def test_top_k_zero_keeps_every_token_and_jit_matches():
    logits = jnp.zeros((2, 5), jnp.float32)
    key = jax.random.key(3)
    eager = sample_logits(logits, key=key, top_k=0)
    jitted = jax.jit(sample_logits)(logits, key=key, top_k=jnp.int32(0))
    np.testing.assert_array_equal(eager, jitted)
    draws = jax.vmap(lambda k: sample_logits(logits, key=k))(jax.random.split(key, 200))
    assert set(np.asarray(draws).ravel().tolist()) == set(range(5))
