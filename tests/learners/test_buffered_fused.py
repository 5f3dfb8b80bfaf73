"""BufferedLearner: fused backlogs, length buckets, CPU share, learners of vectors."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ol_jax.learners import BufferedLearner, ByteTokenizer, LearningConfig
from ol_jax.store import NetworkConfig, RunStore

V = ByteTokenizer.vocab_size


def bigram_learner(*, background=True, store=None, **config):
    """``logits_t = W[token_t]``, the smallest causal language model."""
    params = {"w": jax.random.normal(jax.random.key(0), (V, V), jnp.float32)}
    cfg = dict(learning_rate=5e-2, update_frequency=3, checkpoint_frequency=None)
    cfg.update(config)
    return BufferedLearner(
        lambda p, tokens: p["w"][tokens],
        params,
        config=LearningConfig(**cfg),
        key=jax.random.key(1),
        background=background,
        store=store,
    )


def _with_backlog(learner, add, jobs):
    """Queues ``jobs`` updates (``add(j)`` queues job ``j``) as one backlog.

    The worker takes job 0 and waits for the step lock, held here, while the
    others queue up behind it; released, they run as one backlog.
    """
    with learner._step_lock:
        add(0)
        while learner._queue.qsize():  # the worker has taken job 0
            time.sleep(1e-3)
        for j in range(1, jobs):
            add(j)
    learner.wait()


TEXTS = ["ab", "cde", "fghij", "klmnopq", "rs", "tuvwxyz"]


def test_fused_backlog_equals_one_update_at_a_time():
    n = 3
    fused = bigram_learner(update_frequency=n)
    alone = bigram_learner(update_frequency=n, background=False, max_fused=1)

    def add(learner):
        def one_job(j):
            for i in range(n):
                learner.add_example(TEXTS[(j * n + i) % len(TEXTS)], weight=1.0 + i)

        return one_job

    _with_backlog(fused, add(fused), 9)  # 1 alone, then 8 in one call
    for j in range(9):
        add(alone)(j)
    assert any(dict(shape)["tokens"][0] == 8 for shape in fused._compiled)
    a, b = fused.stats(), alone.stats()
    assert a.total_updates == b.total_updates == a.version == 9
    np.testing.assert_allclose(a.average_loss, b.average_loss, rtol=1e-5)
    np.testing.assert_allclose(fused.params["w"], alone.params["w"], atol=1e-5)
    fused.close()


def test_fusion_never_crosses_a_checkpoint(tmp_path):
    store = RunStore(tmp_path, config=NetworkConfig(network_id="fused"))
    learner = bigram_learner(update_frequency=1, checkpoint_frequency=3, store=store)
    reference = bigram_learner(update_frequency=1, background=False)
    _with_backlog(learner, lambda j: learner.add_example(TEXTS[j % 6]), 8)
    for j in range(8):
        reference.add_example(TEXTS[j % 6])
        if j == 5:
            at_six = np.asarray(reference.params["w"])
    learner.close()
    assert learner.stats().checkpoints == 2
    entries = store.metadata()["entries"]
    assert [e["update"] for e in entries if "update" in e] == [3, 6]
    np.testing.assert_allclose(store.restore(1)["w"], at_six, atol=1e-5)
    store.close()


@pytest.mark.parametrize(
    "text, padded", [("a", 8), ("abcdefg", 16), ("x" * 43, 48), ("y" * 47, 56)]
)
def test_updates_pad_to_a_multiple_of_8_tokens(text, padded):
    learner = bigram_learner(update_frequency=1, background=False, max_length=64)
    learner.add_example(text)  # BOS + bytes + EOS
    assert [dict(s)["tokens"][-1] for s in learner._compiled] == [padded]


def test_learner_pauses_only_after_updates_that_overlapped_a_request():
    learner = bigram_learner(update_frequency=1, learner_share=0.5)
    learner.add_example("ab")  # compiles: never counted as the learner's share
    learner.wait()
    with learner._request():  # a request in flight during the next update
        learner.add_example("ab")
        learner.wait()
    assert learner._pause > 0
    learner.add_example("ab")  # nobody served: full speed
    learner.wait()
    assert learner._pause == 0
    learner.close()


@pytest.mark.parametrize(
    "field, value",
    [("learner_share", 0.0), ("learner_share", 1.5), ("learner_share", True)]
    + [("max_fused", 0), ("max_fused", 2.0)],
)
def test_config_errors(field, value):
    with pytest.raises(ValueError, match=field):
        LearningConfig(**{field: value})


# ------------------------------------------------------------ learners of vectors


def linear_learner(*, shapes=((3,), (2,)), **config):
    d_in, d_out = shapes[0][0], shapes[1][0]
    params = {"w": jnp.zeros((d_in, d_out), jnp.float32)}
    cfg = dict(
        optimizer="sgd",
        clip_norm=None,
        weight_decay=0.0,
        learning_rate=0.1,
        loss="mse",
        update_frequency=2,
        checkpoint_frequency=None,
    )
    cfg.update(config)
    return BufferedLearner(
        lambda p, x: x @ p["w"],
        params,
        config=LearningConfig(**cfg),
        key=jax.random.key(0),
        background=False,
        vector_shapes=shapes,
    )


@settings(max_examples=10)
@given(
    xs=st.lists(
        st.lists(st.floats(-2, 2, width=32), min_size=3, max_size=3),
        min_size=2,
        max_size=2,
    ),
    ys=st.lists(
        st.lists(st.floats(-2, 2, width=32), min_size=2, max_size=2),
        min_size=2,
        max_size=2,
    ),
    weights=st.lists(st.floats(0, 3, width=32), min_size=2, max_size=2),
)
def test_vector_update_is_an_sgd_step_on_the_weighted_mse(xs, ys, weights):
    learner = linear_learner(batch_size=3)  # one padding row
    w0 = np.asarray(jax.random.normal(jax.random.key(3), (3, 2)), np.float64)
    learner._state = learner._state._replace(params={"w": jnp.asarray(w0, "float32")})
    for x, y, c in zip(xs, ys, weights, strict=True):
        learner.add_example(np.asarray(x), np.asarray(y), weight=c)
    x, y, c = (np.asarray(a, np.float64) for a in (xs, ys, weights))
    # L = sum_b c_b mean_i (x_b W - y_b)_i^2 / 2 (two real rows)
    residual = x @ w0 - y
    grad = x.T @ (c[:, None] * 2.0 * residual / 2.0) / 2.0
    np.testing.assert_allclose(learner.params["w"], w0 - 0.1 * grad, atol=1e-4)
    expected = np.sum(c * np.mean(residual**2, axis=1)) / 2.0
    np.testing.assert_allclose(learner.stats().average_loss, expected, rtol=1e-4)


def test_mlp_regressor_learns_and_predicts():
    rng = np.random.default_rng(0)
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {
        "w1": jax.random.normal(k1, (4, 32)) / 2.0,
        "w2": jax.random.normal(k2, (32, 1)) / 6.0,
    }
    learner = BufferedLearner(
        lambda p, x: jax.nn.relu(x @ p["w1"]) @ p["w2"],
        params,
        config=LearningConfig(learning_rate=1e-2, loss="mse", update_frequency=8),
        key=jax.random.key(1),
        vector_shapes=((4,), (1,)),
    )
    x = rng.standard_normal((64, 4)).astype(np.float32)
    y = np.sin(x.sum(axis=1, keepdims=True))

    def error():
        return np.mean(
            [(learner.predict(a) - b) ** 2 for a, b in zip(x, y, strict=True)]
        )

    before = error()
    for _ in range(10):
        for a, b in zip(x, y, strict=True):
            learner.add_example(a, b)
    learner.wait()
    assert learner.stats().total_updates == 80
    assert error() < 0.5 * before
    assert learner.predict(x[0]).shape == (1,)
    learner.close()


def test_self_supervised_vectors_reproduce_the_input():
    learner = linear_learner(shapes=((2,), (2,)), update_frequency=1)
    x = np.asarray([1.0, -1.0], np.float32)
    for _ in range(60):
        learner.add_example(x)
    np.testing.assert_allclose(learner.predict(x), x, atol=1e-2)


@pytest.mark.parametrize(
    "args, match",
    [
        (([1.0, 2.0], [0.0, 0.0]), r"input must have shape \(3,\)"),
        (([1.0, 2.0, 3.0], [0.0]), r"target must have shape \(2,\)"),
        (([1.0, np.nan, 3.0], [0.0, 0.0]), "input must be finite"),
        (("text", [0.0, 0.0]), "input must be an array"),
        (([1.0, 2.0, 3.0],), "target is needed"),
    ],
)
def test_vector_example_errors(args, match):
    learner = linear_learner()
    with pytest.raises(ValueError, match=match):
        learner.add_example(*args)


def test_vector_and_text_learners_refuse_each_others_calls():
    vectors = linear_learner()
    with pytest.raises(ValueError, match="use predict"):
        vectors.generate("hi")
    with pytest.raises(ValueError, match="use predict"):
        vectors.evaluate("hi")
    with pytest.raises(ValueError, match="use generate"):
        bigram_learner(background=False).predict([1.0])
    with pytest.raises(ValueError, match="needs loss='mse'"):
        linear_learner(loss="cross_entropy")
