"""BufferedLearner: learning, concurrency, control, checkpoints and weights."""

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ol_jax.learners import (
    BufferedLearner,
    ByteTokenizer,
    LearningConfig,
    byte_llama_config,
)
from ol_jax.models import Llama, llama_params_to_hf, load_llama, save_weights
from ol_jax.store import NetworkConfig, RunStore

V = ByteTokenizer.vocab_size
TORN = ByteTokenizer.pad_token_id  # what the version model answers for a torn tree


def tiny_llama(seed=0):
    cfg = byte_llama_config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=64,
    )
    return Llama(cfg, key=jax.random.key(seed))


# ------------------------------------------------------------ the version model
# Its parameters are a scalar ``a`` and a vector ``b``; every update adds exactly
# lr to every element, so after k updates (lr = 1) all of them equal k. The model
# answers token ``a`` at every position when ``b == a`` everywhere (a complete
# tree of one version) and the TORN token otherwise.


def version_apply(params, tokens):
    a = params["a"][0]
    whole = jnp.all(params["b"] == a)
    token = jnp.where(whole, a.astype(jnp.int32), TORN)
    row = jax.nn.one_hot(token, V, dtype=jnp.float32) * 10.0
    return jnp.broadcast_to(row[None, :], (tokens.shape[0], V))


def version_loss(params, batch, *, frozen, extras, key):
    del frozen, extras, key
    # d/dtheta = -1 for every element; the batch weights only gate the update.
    gate = (jnp.sum(batch["weight"]) > 0).astype(jnp.float32)
    return -gate * (jnp.sum(params["a"]) + jnp.sum(params["b"]))


def version_learner(*, background=True, store=None, **config):
    params = {"a": jnp.zeros((1,), jnp.float32), "b": jnp.zeros((4096,), jnp.float32)}
    cfg = dict(
        optimizer="sgd",
        learning_rate=1.0,
        clip_norm=None,
        weight_decay=0.0,
        loss=version_loss,
        checkpoint_frequency=None,
    )
    cfg.update(config)
    return BufferedLearner(
        version_apply,
        params,
        config=LearningConfig(**cfg),
        key=jax.random.key(0),
        background=background,
        store=store,
    )


def test_concurrent_generation_sees_whole_trees_and_counts_once():
    learner = version_learner(update_frequency=10)
    per_adder, adders, readers = 1000, 2, 4
    errors, seen = [], [[] for _ in range(readers)]
    stop = threading.Event()

    def add(i):
        try:
            for j in range(per_adder):
                learner.add_example(f"example {i} {j}", weight=1.0)
        except BaseException as e:
            errors.append(e)

    def read(i):
        try:
            while not stop.is_set():
                seen[i].append(learner.generate("q", max_new_tokens=3))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(readers)]
    threads += [threading.Thread(target=add, args=(i,)) for i in range(adders)]
    for t in threads:
        t.start()
    for t in threads[readers:]:
        t.join()
    forced = sum(learner.force_update() for _ in range(3))
    learner.wait()
    stop.set()
    for t in threads[:readers]:
        t.join()
    assert not errors, errors
    stats = learner.stats()
    total = per_adder * adders
    assert stats.total_examples == total
    assert stats.forced_updates == forced == 3
    assert stats.total_updates == total // 10 + forced
    assert stats.version == stats.total_updates
    assert stats.buffer_size == 1000  # bounded by buffer_size
    np.testing.assert_array_equal(learner.params["a"], [stats.total_updates])
    assert sum(len(s) for s in seen) > 0
    for gens in seen:
        versions = [g.version for g in gens]
        assert versions == sorted(versions)  # never goes back
        for g in gens:
            # Every token came from one complete tree of the reported version.
            assert g.token_ids == [g.version] * 3, g
    learner.close()


def test_updates_follow_update_frequency_and_enable_disable():
    learner = version_learner(update_frequency=3, background=False)
    for _ in range(7):
        learner.add_example("x")
    assert learner.stats().total_updates == 2
    learner.disable()
    for _ in range(6):
        learner.add_example("x")
    stats = learner.stats()
    assert (stats.total_updates, stats.total_examples, stats.enabled) == (2, 13, False)
    assert learner.force_update()  # forcing still works while disabled
    learner.enable()
    for _ in range(2):  # one example was left over before disabling
        learner.add_example("x")
    assert learner.stats().total_updates == 4


def test_set_learning_rate_takes_effect_without_recompiling():
    learner = version_learner(update_frequency=1, background=False)
    learner.add_example("x")
    compiled = learner._step._cache_size()
    learner.set_learning_rate(2.0)
    learner.add_example("x")
    assert learner._step._cache_size() == compiled
    np.testing.assert_array_equal(learner.params["a"], [3.0])
    assert learner.stats().learning_rate == 2.0
    for bad in (-1e-3, 0.0, float("nan"), "fast"):
        with pytest.raises(ValueError, match="learning_rate"):
            learner.set_learning_rate(bad)


def test_force_update_on_empty_buffer_and_stats():
    learner = version_learner(update_frequency=5)
    assert learner.force_update() is False
    stats = learner.stats()
    assert stats.average_loss is None and stats.total_updates == 0
    learner.add_example("x", weight=2.0)
    assert learner.force_update()
    stats = learner.stats().to_dict()
    assert stats["total_updates"] == 1 and stats["forced_updates"] == 1
    assert np.isfinite(stats["average_loss"])
    learner.close()
    with pytest.raises(ValueError, match="closed"):
        learner.add_example("x")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(input=""), "input must be a non-empty string"),
        (dict(input="x", weight=-1.0), "weight must be finite and >= 0"),
        (dict(input="x", weight=float("inf")), "weight must be finite"),
        (dict(input="x", target=3), "target must be a string"),
    ],
)
def test_add_example_errors(kwargs, match):
    learner = version_learner(background=False)
    with pytest.raises(ValueError, match=match):
        learner.add_example(**kwargs)


def test_config_errors():
    with pytest.raises(ValueError, match="update_frequency"):
        LearningConfig(update_frequency=0)
    with pytest.raises(ValueError, match="loss must be one of"):
        LearningConfig(loss="hinge")
    with pytest.raises(ValueError, match="learning_rate"):
        LearningConfig(learning_rate=-1.0)


# ------------------------------------------------------------ learning


@pytest.fixture(scope="module")
def llama_learner():
    learner = BufferedLearner.from_llama(
        tiny_llama(),
        config=LearningConfig(learning_rate=1e-2, max_length=32),
        key=jax.random.key(1),
        background=False,
    )
    yield learner
    learner.close()


def test_self_supervised_loss_halves_within_20_updates(llama_learner):
    text = "the cat sat on the mat"
    learner = llama_learner
    start = learner.evaluate(text)
    for _ in range(20):
        for _ in range(10):
            learner.add_example(text)
        if learner.evaluate(text) <= 0.5 * start:
            break
    assert learner.stats().total_updates <= 20
    assert learner.evaluate(text) <= 0.5 * start


def test_supervised_pairs_learned_within_30_updates():
    pairs = [("hi", "yo"), ("one", "two"), ("red", "blue")]
    learner = BufferedLearner.from_llama(
        tiny_llama(seed=3),
        config=LearningConfig(learning_rate=1e-2, max_length=16, update_frequency=9),
        key=jax.random.key(2),
        background=False,
    )
    learned = False
    for update in range(30):
        for i in range(9):
            learner.add_example(*pairs[i % 3])
        if update % 5 == 4 or update == 29:
            outs = [learner.generate(p, max_new_tokens=6).text for p, _ in pairs]
            if outs == [t for _, t in pairs]:
                learned = True
                break
    assert learned, outs
    assert learner.stats().total_updates <= 30


@pytest.mark.parametrize("loss", ["mse", "contrastive"])
def test_other_losses_reduce_their_loss(loss):
    apply_fn, params = _bigram_model()
    learner = BufferedLearner(
        apply_fn,
        params,
        config=LearningConfig(
            loss=loss, learning_rate=5e-2, update_frequency=4, max_length=16
        ),
        key=jax.random.key(0),
        background=False,
    )
    pairs = [("ab", "cd"), ("ef", "gh"), ("ij", "kl"), ("mn", "op")]
    for _ in range(3):
        for p in pairs:
            learner.add_example(*p)
    first = learner.stats().average_loss
    for _ in range(15):
        for p in pairs:
            learner.add_example(*p)
    losses = list(jax.device_get(learner._losses))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < first
    if loss == "contrastive":
        with pytest.raises(ValueError, match="contrastive loss needs"):
            learner.add_example("no target")


def _bigram_model(seed=0):
    """``logits_t = W[token_t]``: the smallest causal language model."""
    params = {"w": jax.random.normal(jax.random.key(seed), (V, V), jnp.float32)}
    return (lambda p, tokens: p["w"][tokens]), params


def test_generic_greedy_matches_bigram_table():
    apply_fn, params = _bigram_model()
    tok = ByteTokenizer()
    w = np.zeros((V, V), np.float32)
    for a, b in zip("help", "elp!", strict=True):
        w[ord(a), ord(b)] = 1.0
    w[ord("!"), tok.eos_token_id] = 1.0
    learner = BufferedLearner(
        apply_fn, {"w": jnp.asarray(w)}, key=jax.random.key(0), background=False
    )
    g = learner.generate("he", max_new_tokens=10)
    assert g.text == "lp!" and g.token_ids[-1] == tok.eos_token_id


# ------------------------------------------------------------ weights, store


def test_save_load_weights_round_trip(tmp_path):
    learner = BufferedLearner.from_llama(
        tiny_llama(), key=jax.random.key(0), background=False
    )
    before = learner.generate("abc", max_new_tokens=4)
    for fmt, name in (("safetensors", "w.safetensors"), ("binary", "w.bin")):
        learner.save_weights(str(tmp_path / name), format=fmt)
    other = BufferedLearner.from_llama(
        tiny_llama(seed=9), key=jax.random.key(0), background=False
    )
    assert other.load_weights(str(tmp_path / "w.bin")) > 0
    assert other.generate("abc", max_new_tokens=4).token_ids == before.token_ids
    leaves = zip(
        jax.tree.leaves(learner.params), jax.tree.leaves(other.params), strict=True
    )
    for a, b in leaves:
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    with pytest.raises(ValueError, match="does not exist"):
        other.load_weights(str(tmp_path / "missing.bin"))
    wrong = version_learner(background=False)
    wrong.save_weights(str(tmp_path / "v.safetensors"))
    with pytest.raises(ValueError, match="do not fit this model: missing"):
        other.load_weights(str(tmp_path / "v.safetensors"))


def test_checkpoints_every_n_updates(tmp_path):
    store = RunStore(tmp_path, config=NetworkConfig(network_id="buffered"))
    learner = version_learner(
        update_frequency=1, checkpoint_frequency=2, background=False, store=store
    )
    for _ in range(5):
        learner.add_example("x")
    learner.close()
    assert learner.stats().checkpoints == 2
    assert store.versions() == [0, 1]
    restored = store.restore(1)
    np.testing.assert_array_equal(restored["a"], [4.0])
    # Every acknowledged example is in the run's feedback journal, in order.
    records = store.feedback_records()
    assert [r["input"] for r in records] == ["x"] * 5
    assert len({r["id"] for r in records}) == 5
    store.close()


def test_load_hugging_face_names_into_llama_learner(tmp_path):
    source = tiny_llama(seed=5)
    save_weights(llama_params_to_hf(source), tmp_path / "model.safetensors")
    learner = BufferedLearner.from_llama(
        tiny_llama(seed=6), key=jax.random.key(0), background=False
    )
    learner.load_weights(str(tmp_path / "model.safetensors"))
    reference = BufferedLearner.from_llama(
        source, key=jax.random.key(0), background=False
    )
    prompt = "weights"
    assert (
        learner.generate(prompt, max_new_tokens=5).token_ids
        == reference.generate(prompt, max_new_tokens=5).token_ids
    )
    assert learner.version == 1  # a load is a new version too


# ------------------------------------------------------------ example weights


def _sgd_bigram(**config):
    apply_fn, params = _bigram_model()
    cfg = dict(
        optimizer="sgd",
        learning_rate=0.1,
        clip_norm=None,
        weight_decay=0.0,
        update_frequency=1,
        checkpoint_frequency=None,
    )
    cfg.update(config)
    return BufferedLearner(
        apply_fn,
        params,
        config=LearningConfig(**cfg),
        key=jax.random.key(0),
        background=False,
    )


@settings(max_examples=5)
@given(weight=st.floats(0.0, 4.0), text=st.text("abcxyz", min_size=1, max_size=6))
def test_example_weight_scales_the_step(weight, text):
    one, scaled = _sgd_bigram(), _sgd_bigram()
    start = np.asarray(one.params["w"])
    one.add_example(text, weight=1.0)
    scaled.add_example(text, weight=weight)
    step_one = np.asarray(one.params["w"]) - start
    step_scaled = np.asarray(scaled.params["w"]) - start
    assert np.all(np.isfinite(step_scaled))
    # SGD: the update is linear in the loss, and the loss in the weight.
    np.testing.assert_allclose(step_scaled, weight * step_one, rtol=1e-5, atol=1e-6)


def test_padding_rows_do_not_change_the_update():
    # A forced update of one example in a batch of 4 (3 padding rows) moves the
    # weights exactly like an update of that example alone.
    alone, padded = _sgd_bigram(), _sgd_bigram(batch_size=4, update_frequency=10)
    alone.add_example("hello")
    padded.add_example("hello")
    assert padded.force_update()
    np.testing.assert_allclose(
        np.asarray(padded.params["w"]), np.asarray(alone.params["w"]), rtol=1e-6
    )


def test_supervised_loss_masks_the_input():
    learner = _sgd_bigram()
    start = np.asarray(learner.params["w"])
    learner.add_example("ab", "c")
    step = np.asarray(learner.params["w"]) - start
    # Only the rows of tokens that predict a target token change: "b" -> "c"
    # and "c" -> EOS; "BOS" -> "a" and "a" -> "b" are input, not learned.
    changed = set(np.flatnonzero(np.abs(step).sum(axis=1)))
    assert changed == {ord("b"), ord("c")}


def test_hugging_face_folder_and_tokenizer(tmp_path):
    # A tiny Llama folder with a word-level tokenizer, built offline.
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    torch = pytest.importorskip("torch")
    words = ["the", "capital", "of", "france", "is", "paris", "rome", "italy"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {w: i + 3 for i, w in enumerate(words)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    ).save_pretrained(tmp_path)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=16,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    model, tokenizer = load_llama(tmp_path)
    learner = BufferedLearner.from_llama(
        model,
        tokenizer=tokenizer,
        config=LearningConfig(learning_rate=2e-2, update_frequency=4, max_length=16),
        key=jax.random.key(0),
        background=False,
    )
    pairs = [("the capital of france is", "paris"), ("the capital of italy is", "rome")]
    for _ in range(15):
        for i in range(4):
            learner.add_example(*pairs[i % 2])
    outs = [learner.generate(p, max_new_tokens=3).text for p, _ in pairs]
    assert outs == ["paris", "rome"]


@pytest.fixture(scope="module")
def bigram_learners():
    w = jax.random.normal(jax.random.key(7), (V, V), jnp.float32)
    apply_fn = lambda p, tokens: p["w"][tokens]
    make = lambda loss: BufferedLearner(
        apply_fn,
        {"w": w},
        config=LearningConfig(loss=loss, max_length=16),
        key=jax.random.key(0),
        background=False,
    )
    return np.asarray(w), make("cross_entropy"), make("mse")


def _reference(w, ids, targets_from, kind):
    """Mean next-token CE / Brier score of ``ids`` (numpy, float64)."""
    w = w.astype(np.float64)
    terms = []
    for t in range(targets_from, len(ids)):
        logits = w[ids[t - 1]]
        p = np.exp(logits - logits.max())
        p /= p.sum()
        if kind == "cross_entropy":
            terms.append(-np.log(p[ids[t]]))
        else:
            terms.append(np.sum((p - np.eye(V)[ids[t]]) ** 2))
    return float(np.mean(terms))


@settings(max_examples=10)
@given(
    text=st.text("abcxyz ", min_size=1, max_size=8),
    target=st.one_of(st.none(), st.text("xyz!", min_size=1, max_size=4)),
)
def test_evaluate_matches_numpy_reference(bigram_learners, text, target):
    w, ce, mse = bigram_learners
    tok = ByteTokenizer()
    ids = [tok.bos_token_id, *tok.encode(text), *tok.encode(target or "")]
    ids.append(tok.eos_token_id)
    # Self-supervised: every token after BOS; supervised: target tokens and EOS.
    start = 1 if target is None else 1 + len(tok.encode(text))
    for learner, kind in ((ce, "cross_entropy"), (mse, "mse")):
        got = learner.evaluate(text, target)
        np.testing.assert_allclose(
            got, _reference(w, ids, start, kind), rtol=2e-5, atol=1e-6
        )


def test_average_loss_is_over_the_last_100_updates():
    learner = version_learner(update_frequency=1, background=False)
    for _ in range(150):
        learner.add_example("x")
    # Update j (1-based) sees every parameter at j - 1: loss -(j - 1) * 4097.
    expected = -4097.0 * np.mean(np.arange(50, 150))
    np.testing.assert_allclose(learner.stats().average_loss, expected, rtol=1e-6)
