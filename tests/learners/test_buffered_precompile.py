"""``BufferedLearner.precompile`` and ``example_length`` (used by ``ol-jax mcp``)."""

import jax
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ol_jax.learners import (
    BufferedLearner,
    ByteTokenizer,
    LearningConfig,
    byte_llama_config,
)
from ol_jax.models import Llama


def tiny_learner(max_length=16):
    cfg = byte_llama_config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=64,
    )
    return BufferedLearner.from_llama(
        Llama(cfg, key=jax.random.key(0)),
        config=LearningConfig(max_length=max_length, update_frequency=100),
        key=jax.random.key(1),
    )


@settings(max_examples=4)
@given(lengths=st.lists(st.integers(1, 40), min_size=1, max_size=4))
def test_precompile_applies_nothing_and_spares_the_first_update(lengths):
    learner = tiny_learner()
    try:
        before = jax.tree.map(np.array, learner.params)
        buckets = {min(-(-n // 8) * 8, 16) for n in lengths}
        assert learner.precompile(lengths) == len(buckets)
        assert learner.precompile(lengths) == 0  # already compiled
        jax.tree.map(np.testing.assert_array_equal, learner.params, before)
        stats = learner.stats()
        assert stats.total_updates == 0 and stats.version == 0
        assert stats.compiled_variants == len(buckets)
        # An update of a precompiled length compiles no new program.
        n = min(lengths)
        learner.add_example("x" * max(1, n - 2))
        assert learner.force_update()
        assert learner.stats().compiled_variants == len(buckets)
        assert learner.stats().total_updates == 1
    finally:
        learner.close()


def test_precompile_defaults_to_every_bucket():
    learner = tiny_learner(max_length=20)
    try:
        assert learner.precompile() == 3  # 8, 16 and 20 tokens
    finally:
        learner.close()


@settings(max_examples=50)
@given(
    text=st.text(min_size=1, max_size=30),
    target=st.one_of(st.none(), st.text(min_size=1, max_size=30)),
)
def test_example_length_counts_bos_input_target_eos(text, target):
    learner = BufferedLearner(
        lambda p, t: jax.numpy.zeros((t.shape[0], ByteTokenizer.vocab_size)),
        {"w": jax.numpy.zeros(1)},
        key=jax.random.key(0),
        background=False,
    )
    expected = 2 + len(text.encode()) + (len(target.encode()) if target else 0)
    assert learner.example_length(text, target) == expected
    learner.close()
