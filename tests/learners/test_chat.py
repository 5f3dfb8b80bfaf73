"""ChatLearner (seed 001) on a tiny random Llama with a byte-level tokenizer.

The real-model fact acquisition test is in ``test_chat_facts.py`` (slow).
"""

import json
import os

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from ol_jax.core import get_learning_rate
from ol_jax.learners import (
    ChatConfig,
    ChatLearner,
    backward_transfer,
    load_chat_config,
    write_accuracy_matrix,
)
from ol_jax.learners.chat import lora_config_of
from ol_jax.models import Llama, LlamaConfig
from ol_jax.store import ConfigError

CONFIG_PATH = os.path.join(
    os.path.dirname(__file__), "..", "..", "configs", "chat_smollm2.yaml"
)
TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
FACT = "Zorblax Quint lives in Varnholm."
QUESTION = "Where does Zorblax Quint live?"


def byte_tokenizer():
    """A byte-level BPE without merges (vocab 259) and a ChatML template."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    from tokenizers import decoders, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = TEMPLATE
    return fast


def tiny_config(**sections) -> ChatConfig:
    data = {
        "network_id": "chat-test",
        "model": {"lora": {"rank": 2, "dropout": 0.0}},
        "training": {"learning_rate": 1e-3, "sequence_buckets": [96, 192]},
        "generation": {"max_new_tokens": 4},
        "metrics": {"anchor_prompts": ["A week has seven days."], "eval_every": 1},
        "checkpoint": {"save_every": 5},
        "fact_memory": {"replay_interval": 4, "replay_limit": 2},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return ChatConfig.model_validate(data)


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=1,
        eos_token_id=2,
    )
    return Llama(cfg, lora_config=lora_config_of(tiny_config()), key=jax.random.key(0))


def make(tmp_path, model, tokenizer, config=None, **kwargs):
    return ChatLearner(
        config or tiny_config(),
        root=str(tmp_path / "networks"),
        model=model,
        tokenizer=tokenizer,
        **kwargs,
    )


def snapshot(learner):
    """Everything a failed turn must leave unchanged."""
    return (
        jax.tree.map(np.asarray, learner.state._replace(key=None)),
        learner.turn,
        json.dumps(learner.memory.state_dict()),
        len(learner.read_metrics()),
    )


def assert_same(a, b):
    (sa, ta, ma, na), (sb, tb, mb, nb) = a, b
    for x, y in zip(jax.tree.leaves(sa), jax.tree.leaves(sb), strict=True):
        np.testing.assert_array_equal(x, y)
    assert (ta, ma, na) == (tb, mb, nb)


# ------------------------------------------------------------------ config


DOCUMENT_KEYS = [
    "model.base_model_name",
    "model.lora.rank",
    "model.lora.alpha",
    "model.lora.target_modules",
    "model.lora.dropout",
    "model.lora.bias",
    "training.learning_rate",
    "training.gradient_clip_norm",
    "training.loss.kl_lambda",
    "training.loss.task_lambda",
    "training.loss.kl_regularization.base_lambda",
    "training.loss.kl_regularization.fact_lambda",
    "training.loss.kl_regularization.min_kl",
    "training.loss.kl_regularization.max_kl",
    "training.loss.dynamic_kl.enabled",
    "training.loss.dynamic_kl.fact_importance_factor",
    "fact_detection.enabled",
    "fact_detection.patterns",
    "fact_detection.question_indicators",
    "fact_detection.entity_extraction.method",
    "fact_detection.confidence_calculation.coverage_boost_factor",
    "fact_detection.confidence_calculation.entity_boost",
    "fact_memory.enabled",
    "fact_memory.max_facts",
    "fact_memory.replay_interval",
    "fact_memory.replay_limit",
    "fact_memory.eviction_policy",
    "fact_memory.importance_scoring.method",
    "fact_memory.importance_scoring.base_importance",
    "fact_memory.importance_scoring.repetition_weight",
    "fact_memory.importance_scoring.recency_weight",
    "fact_memory.decay.enabled",
    "fact_memory.decay.turns",
    "fact_memory.decay.rate",
    "adaptive_optimizer.enabled",
    "adaptive_optimizer.fact_lr_multiplier",
    "adaptive_optimizer.question_lr_multiplier",
    "adaptive_optimizer.regular_lr_multiplier",
    "adaptive_optimizer.repetition_lr_multiplier",
    "adaptive_optimizer.repetition_boost_factor",
    "adaptive_optimizer.replay_lr_multiplier",
    "adaptive_optimizer.max_lr_multiplier",
    "adaptive_optimizer.min_lr_multiplier",
    "importance_weighting.enabled",
    "importance_weighting.default_weight",
    "importance_weighting.entity_weight",
    "importance_weighting.fact_token_weight",
    "importance_weighting.position.first_n_tokens",
    "importance_weighting.position.first_token_weight",
]


def test_yaml_has_every_knob_of_the_document():
    import yaml

    with open(CONFIG_PATH, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    for dotted in DOCUMENT_KEYS:
        node = raw
        for part in dotted.split("."):
            assert isinstance(node, dict) and part in node, dotted
            node = node[part]
    config = load_chat_config(CONFIG_PATH)
    assert {"q_proj", "v_proj"} <= set(config.model.lora.target_modules)
    assert config.adaptive_optimizer.fact_lr_multiplier == 5.0


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        ({"training": {"learning_rate": -1}}, "training.learning_rate"),
        ({"training": {"lr": 1}}, "training.lr"),
        (
            {"training": {"loss": {"kl_regularization": {"min_kl": 2.0}}}},
            "training.loss.kl_regularization",
        ),
        ({"model": {"lora": {"target_modules": ["nope"]}}}, "model.lora"),
        ({"adaptive_optimizer": {"min_lr_multiplier": 20}}, "adaptive_optimizer"),
        ({"chat": {"fact_response": "no placeholder"}}, "chat.fact_response"),
        ({"training": {"sequence_buckets": [64, 32]}}, "training.sequence_buckets"),
        ({"training": {"loss": {"rehearsal_lambda": 0.5}}}, "needs rehearsal_prompts"),
        (
            {"training": {"loss": {"rehearsal_prompts": ["ok", " "]}}},
            "must be non-empty texts",
        ),
    ],
)
def test_bad_config_names_the_key(tmp_path, edit, key):
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"network_id": "x", **edit}))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_chat_config(path)


# ------------------------------------------------------------------ the turn


def test_turn_metrics_and_metrics_file(tmp_path, model, tokenizer):
    learner = make(tmp_path, model, tokenizer)
    reply, m = learner.chat_and_update(FACT)
    assert isinstance(reply, str)
    assert m["turn"] == 1 and m["context"] == "fact" and m["is_fact"] == 1.0
    for k in ("loss", "ce", "kl", "learning_rate", "kl_to_base", "anchor_perplexity"):
        assert np.isfinite(m[k]), k
    _, m2 = learner.chat_and_update(QUESTION)
    assert m2["context"] == "question"
    rows = learner.read_metrics()
    assert [r["turn"] for r in rows] == [1, 2]
    for key in ("recent_loss", "improvement", "adaptation_speed", "anchor_regression"):
        assert key in rows[-1]
    # Both turns were journaled before they were learned from.
    records = learner.store.feedback_records()
    assert [(r["id"], r["user"]) for r in records] == [
        ("turn-1", FACT),
        ("turn-2", QUESTION),
    ]
    learner.close()


def test_learning_rate_and_kl_per_context_apply_and_reset(tmp_path, model, tokenizer):
    cfg = tiny_config()
    learner = make(tmp_path, model, tokenizer, cfg)
    base = cfg.training.learning_rate
    ao = cfg.adaptive_optimizer
    boost = ao.repetition_boost_factor * ao.repetition_lr_multiplier
    expected = [
        (FACT, ao.fact_lr_multiplier),
        (QUESTION, ao.question_lr_multiplier),
        ("I had a long day at work.", ao.regular_lr_multiplier),
        (FACT, ao.fact_lr_multiplier * (1 + boost)),
    ]
    for text, mult in expected:
        _, m = learner.chat_and_update(text)
        np.testing.assert_allclose(m["learning_rate"], base * mult, rtol=1e-6)
        # Reset to the base rate after the turn.
        np.testing.assert_allclose(
            get_learning_rate(learner.state.opt_state), base, rtol=1e-6
        )
        reg = cfg.training.loss.kl_regularization
        if m["is_fact"]:
            factor = cfg.training.loss.dynamic_kl.fact_importance_factor
            want = reg.fact_lambda * (1 - m["fact_confidence"] * factor)
        else:
            want = reg.base_lambda
        np.testing.assert_allclose(m["kl_lambda"], max(want, reg.min_kl))
    learner.close()


def test_no_recompilation_across_turns_in_a_bucket(tmp_path, model, tokenizer):
    learner = make(tmp_path, model, tokenizer)
    texts = ["Hi.", QUESTION, "Thanks!", FACT, "The capital of Elbonia is Quell."]
    buckets, lengths = [], []
    for text in texts:
        _, m = learner.chat_and_update(text)
        buckets.append(96 if m["train_tokens"] <= 96 else 192)
        lengths.append(m["train_tokens"])
    # Five lengths, three learning rates and two KL weights, but one trace per
    # length bucket used.
    assert len(set(lengths)) >= 4
    assert learner.num_compiled_steps == len(set(buckets))
    learner.close()


def test_replay_every_interval(tmp_path, model, tokenizer):
    learner = make(tmp_path, model, tokenizer)
    replayed = [learner.chat_and_update(t)[1]["replayed"] for t in [FACT, "Hi."] * 4]
    # replay_interval 4, replay_limit 2, one fact in memory.
    assert replayed == [0, 0, 0, 1, 0, 0, 0, 1]
    assert len(learner.memory) == 1
    learner.close()


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "text",
    ["", "   \n\t ", b"\xff\xfe not utf-8", "x" * 100_000, "\udcff surrogate", 42],
)
def test_bad_input_is_an_error_and_changes_nothing(tmp_path, model, tokenizer, text):
    cfg = tiny_config(chat={"max_input_chars": 2000, "on_too_long": "error"})
    learner = make(tmp_path, model, tokenizer, cfg)
    learner.chat_and_update("Hello.")
    before = snapshot(learner)
    with pytest.raises(ValueError, match="text must"):
        learner.chat_and_update(text)
    assert_same(before, snapshot(learner))
    learner.close()


def test_long_input_is_truncated_and_bad_bytes_replaced(tmp_path, model, tokenizer):
    cfg = tiny_config(
        chat={
            "max_input_chars": 300,
            "on_too_long": "truncate",
            "invalid_utf8": "replace",
        }
    )
    learner = make(tmp_path, model, tokenizer, cfg)
    _, m = learner.chat_and_update("word " * 20_000)
    assert m["input_truncated"] == 1.0 and m["train_tokens"] <= 192
    _, m = learner.chat_and_update(b"caf\xe9 time")
    assert m["turn"] == 2 and m["input_truncated"] == 0.0
    learner.close()


# ------------------------------------------------------------------ resume


def test_resume_after_20_turns_is_exact(tmp_path, model, tokenizer):
    texts = [FACT, "Hi.", QUESTION, "Tavi Morrow owns a teal canoe.", "Thanks."]
    learner = make(tmp_path, model, tokenizer, run_id="r1")
    for i in range(20):
        learner.chat_and_update(texts[i % len(texts)])
    lora = jax.tree.map(np.asarray, learner.lora)
    opt = jax.tree.map(np.asarray, learner.state.opt_state)
    memory = learner.memory.state_dict()
    learner.close()

    again = make(tmp_path, model, tokenizer, run_id="r1")
    assert again.turn == 20
    assert again.memory.state_dict() == memory
    for a, b in zip(jax.tree.leaves(lora), jax.tree.leaves(again.lora), strict=True):
        assert np.asarray(b).tobytes() == a.tobytes()
    for a, b in zip(
        jax.tree.leaves(opt), jax.tree.leaves(again.state.opt_state), strict=True
    ):
        np.testing.assert_array_equal(a, np.asarray(b))
    _, m = again.chat_and_update("One more.")
    assert m["turn"] == 21
    assert [r["turn"] for r in again.read_metrics()] == list(range(1, 22))
    again.close()


def test_resume_learns_journaled_unsaved_turns_once(tmp_path, model, tokenizer):
    texts = [
        "Hi.",
        FACT,
        "Thanks.",
        QUESTION,
        "Hi.",
        FACT,
        "Tavi Morrow owns a teal canoe.",
    ]
    reference = make(tmp_path / "ref", model, tokenizer, run_id="r")
    for text in texts:
        reference.chat_and_update(text)
    expected = snapshot(reference)
    reference.close()

    learner = make(tmp_path, model, tokenizer, run_id="r2")
    for text in texts:  # saved at turn 5 only
        learner.chat_and_update(text)
    learner.store.close()  # a crash: turns 6-7 were journaled, never saved
    learner.store = None
    again = make(tmp_path, model, tokenizer, run_id="r2")
    # Turns 6-7 were learned again from the journal (replies included), once.
    assert again.turn == 7
    assert [r["turn"] for r in again.read_metrics()] == [1, 2, 3, 4, 5, 6, 7]
    got = snapshot(again)
    for x, y in zip(jax.tree.leaves(got[0]), jax.tree.leaves(expected[0]), strict=True):
        np.testing.assert_array_equal(x, y)
    assert got[1:3] == expected[1:3]
    again.chat_and_update("One more.")
    turns = [r["id"] for r in again.store.feedback_records() if r["kind"] == "turn"]
    assert turns == [f"turn-{i}" for i in range(1, 9)]
    again.close()


def test_an_undone_turn_is_not_learned_at_resume(tmp_path, model, tokenizer):
    learner = make(tmp_path, model, tokenizer, run_id="r3")
    for _ in range(5):  # saved at turn 5
        learner.chat_and_update("Hi.")
    before = snapshot(learner)
    point = learner.undo_point()
    learner.chat_and_update(FACT)
    learner.undo_to(point)
    learner.store.close()  # a crash before the next save
    learner.store = None
    again = make(tmp_path, model, tokenizer, run_id="r3")
    assert_same(snapshot(again), before)
    again.close()


# ------------------------------------------------------------------ evaluation


def test_answers_log_probs_and_accuracy_matrix(tmp_path, model, tokenizer):
    learner = make(tmp_path, model, tokenizer)
    lp = learner.answer_log_probs([QUESTION, QUESTION], ["Varnholm", "V"])
    assert all(np.isfinite(lp)) and lp[1] > lp[0]
    assert learner.answer_log_prob(QUESTION, "V") == pytest.approx(lp[1], rel=1e-5)
    recalled = learner.recall([QUESTION], [""])
    assert recalled == [True]  # the empty object is in every answer
    path = write_accuracy_matrix(learner.run_dir, ["a", "b"], [[1.0, 9.0], [0.0, 1.0]])
    with open(path) as f:
        data = json.load(f)
    assert data == {"facts": ["a", "b"], "matrix": [[1.0, None], [0.0, 1.0]]}
    assert backward_transfer(np.array(data["matrix"], dtype=float)) == -1.0
    learner.close()


def test_model_without_matching_adapters_is_rejected(tmp_path, model, tokenizer):
    cfg = tiny_config(model={"lora": {"rank": 3}})
    with pytest.raises(ValueError, match="model.lora"):
        make(tmp_path, model, tokenizer, cfg)


# ------------------------------------------------------------------ pure parts


@given(
    n=st.integers(2, 300),
    kl=st.floats(0, 1),
    seed=st.integers(0, 2**16),
)
def test_turn_batch_pads_to_a_bucket(n, kl, seed):
    from ol_jax.learners.chat import turn_batch

    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 100, n).astype(np.int32)
    weights = rng.uniform(0.5, 3, n).astype(np.float32)
    before = (ids.copy(), weights.copy())
    b = turn_batch(
        ids, weights, buckets=(32, 64, 128), pad_id=0, kl_lambda=kl, task_lambda=1.0
    )
    T = next((x for x in (32, 64, 128) if n - 1 <= x), 128)
    assert b["tokens"].shape == (T + 1,) and b["weights"].shape == (T,)
    kept = min(n - 1, T)
    assert b["mask"].sum() == kept
    np.testing.assert_array_equal(b["tokens"][: kept + 1], ids[-(kept + 1) :])
    np.testing.assert_array_equal(b["weights"][:kept], weights[-kept:])
    assert np.all(b["weights"][kept:] == 0)
    assert b["kl_lambda"].dtype == np.float32
    np.testing.assert_array_equal(before[0], ids)
    np.testing.assert_array_equal(before[1], weights)


def test_turn_loss_is_task_ce_when_the_adapter_is_zero(model):
    from ol_jax.learners.chat import chat_turn_loss, turn_batch
    from ol_jax.models import split_lora
    from ol_jax.objectives import token_cross_entropy

    graphdef, base, lora = split_lora(model)
    ids = np.arange(3, 40, dtype=np.int32)
    batch = turn_batch(
        ids,
        np.linspace(1, 3, len(ids)).astype(np.float32),
        buckets=(48,),
        pad_id=0,
        kl_lambda=0.7,
        task_lambda=2.0,
    )
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    loss_fn = chat_turn_loss(graphdef, dropout=False)
    loss, aux = loss_fn(lora, batch, frozen=base, extras={}, key=None)
    jitted = jax.jit(lambda lo, b: loss_fn(lo, b, frozen=base, extras={}, key=None))
    loss_j, _ = jitted(lora, batch)
    logits = model(batch["tokens"][:-1], use_lora=False)
    ce = token_cross_entropy(
        logits, batch["tokens"][1:], weights=batch["weights"], mask=batch["mask"]
    )
    assert float(aux["kl"]) == pytest.approx(0.0, abs=1e-6)  # B = 0: no drift
    np.testing.assert_allclose(float(loss), 2.0 * float(ce), rtol=1e-5)
    np.testing.assert_allclose(float(loss_j), float(loss), rtol=1e-5)


@given(
    lengths=st.lists(st.integers(2, 150), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_turn_batches_stack_rows_in_one_bucket(lengths, seed):
    from ol_jax.learners.chat import turn_batch, turn_batches

    rng = np.random.default_rng(seed)
    rows = [
        (
            rng.integers(0, 100, n).astype(np.int32),
            rng.uniform(0.5, 3, n).astype(np.float32),
        )
        for n in lengths
    ]
    before = [(i.copy(), w.copy()) for i, w in rows]
    kw = {"buckets": (32, 64, 128), "pad_id": 0, "kl_lambda": 0.5, "task_lambda": 1.0}
    b = turn_batches(rows, **kw)
    T = max(turn_batch(i, w, **kw)["mask"].shape[0] for i, w in rows)
    assert b["tokens"].shape == (len(rows), T + 1)
    assert b["weights"].shape == b["mask"].shape == (len(rows), T)
    assert b["kl_lambda"].shape == () and b["kl_lambda"].dtype == np.float32
    for r, (i, _) in enumerate(rows):
        kept = min(len(i) - 1, T)
        assert b["mask"][r].sum() == kept
        np.testing.assert_array_equal(b["tokens"][r, : kept + 1], i[-(kept + 1) :])
    for (i, w), (i0, w0) in zip(rows, before, strict=True):
        np.testing.assert_array_equal(i, i0)
        np.testing.assert_array_equal(w, w0)
    with pytest.raises(ValueError, match="at least one"):
        turn_batches([], **kw)


def test_turn_loss_of_several_rows_is_the_mean_of_row_losses(model):
    from ol_jax.learners.chat import chat_turn_loss, turn_batch, turn_batches
    from ol_jax.models import split_lora

    graphdef, base, lora = split_lora(model)
    lora = jax.tree.map(lambda x: x + 0.05, lora)  # B != 0: KL > 0
    rows = [
        (np.arange(3, 40, dtype=np.int32), np.linspace(1, 3, 37).astype(np.float32)),
        (np.arange(50, 70, dtype=np.int32), np.ones((20,), np.float32)),
    ]
    kw = {"buckets": (48,), "pad_id": 0, "kl_lambda": 0.7, "task_lambda": 2.0}
    loss_fn = chat_turn_loss(graphdef, dropout=False)

    def run(batch):
        batch = {k: jnp.asarray(v) for k, v in batch.items()}
        return loss_fn(lora, batch, frozen=base, extras={}, key=None)

    loss, aux = run(turn_batches(rows, **kw))
    singles = [run(turn_batch(i, w, **kw)) for i, w in rows]
    np.testing.assert_allclose(
        float(loss), np.mean([float(s[0]) for s in singles]), rtol=1e-5
    )
    assert float(aux["kl"]) > 0 and np.isfinite(float(loss))


def test_fact_trains_on_its_question_form_in_the_same_update(
    tmp_path, model, tokenizer
):
    chat = {"fact_questions": {"lives_in": ["Where does {subject} live?", "{text}"]}}
    learner = make(tmp_path, model, tokenizer, tiny_config(chat=chat))
    turn = learner.prepare_turn(FACT, "ok")
    assert turn.batch["tokens"].shape[0] == 2
    n = int(turn.batch["mask"][1].sum())
    second = tokenizer.decode(turn.batch["tokens"][1][: n + 1])
    assert QUESTION in second and FACT in second
    # The object is weighted above the question's own tokens.
    assert turn.batch["weights"][1].max() > 1.0
    # Relations without a template, and other turns, train on one row.
    assert learner.prepare_turn("Tavi owns a canoe.", "ok").batch["tokens"].ndim == 1
    assert learner.prepare_turn("Hello there.", "hi").batch["tokens"].ndim == 1
    _, m = learner.chat_and_update(FACT)
    assert m["is_fact"] == 1.0 and np.isfinite(m["loss"]) and m["applied"] == 1.0
    learner.close()


def test_bad_fact_question_template_is_a_config_error(tmp_path):
    import yaml

    path = tmp_path / "c.yaml"
    bad = {"chat": {"fact_questions": {"lives_in": ["Where is {place}?", "{text}"]}}}
    path.write_text(yaml.safe_dump({"network_id": "x", **bad}))
    with pytest.raises(ConfigError, match="fact_questions"):
        load_chat_config(path)


@settings(max_examples=5, deadline=None)
@given(lam=st.floats(0.0, 4.0), shift=st.floats(-0.1, 0.1), cached=st.booleans())
def test_rehearsal_term_adds_lambda_times_the_kl_on_its_rows(model, lam, shift, cached):
    """The same term whether the base's logits on the rows ride in the batch
    (``rehearsal_base_logits``, as ChatLearner sends them) or are recomputed."""
    from ol_jax.learners._chat_step import padded_rows
    from ol_jax.learners.chat import chat_turn_loss, turn_batch
    from ol_jax.models import llama_apply, split_lora
    from ol_jax.objectives import token_kl

    graphdef, base, lora = split_lora(model)
    lora = jax.tree.map(lambda x: x + shift, lora)
    turn = turn_batch(
        np.arange(3, 30, dtype=np.int32),
        np.ones((27,), np.float32),
        buckets=(32,),
        pad_id=0,
        kl_lambda=0.3,
        task_lambda=1.0,
    )
    tokens, mask = padded_rows(
        [(np.arange(40, 52), 1), (np.arange(60, 66), 1)], buckets=(16,), pad_id=0
    )
    rehearsal = {
        "rehearsal_tokens": tokens,
        "rehearsal_mask": mask,
        "rehearsal_lambda": np.float32(lam),
    }
    if cached:
        rehearsal["rehearsal_base_logits"] = llama_apply(
            graphdef, lora, jnp.asarray(tokens[:, :-1]), frozen=base, use_lora=False
        )
    loss_fn = chat_turn_loss(graphdef, dropout=False)

    def run(batch):
        batch = {k: jnp.asarray(v) for k, v in batch.items()}
        return loss_fn(lora, batch, frozen=base, extras={}, key=None)

    plain, _ = run(turn)
    loss, aux = run({**turn, **rehearsal})
    inputs = jnp.asarray(tokens[:, :-1])
    kls = [
        token_kl(
            llama_apply(graphdef, lora, inputs[r], frozen=base, use_lora=False),
            llama_apply(graphdef, lora, inputs[r], frozen=base),
            mask=jnp.asarray(mask[r]),
        )
        for r in range(2)
    ]
    kl = float(aux["rehearsal_kl"])
    # One combined base+adapted pass vs two: float32 rounding near KL ~ 1e-4.
    np.testing.assert_allclose(kl, np.mean(kls), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        float(loss), float(plain) + lam * kl, rtol=1e-5, atol=1e-6
    )
    assert kl >= -1e-6


def test_rehearsal_prompts_ride_along_every_update(tmp_path, model, tokenizer):
    loss = {"rehearsal_lambda": 1.0, "rehearsal_prompts": ["Cats sleep a lot.", "Hi."]}
    learner = make(tmp_path, model, tokenizer, tiny_config(training={"loss": loss}))
    # The base's logits on the rows, computed once, are the base model's.
    from ol_jax.models import llama_apply, split_lora

    graphdef, base, lora = split_lora(model)
    rows = learner._rehearsal
    np.testing.assert_allclose(
        rows["rehearsal_base_logits"],
        llama_apply(
            graphdef,
            lora,
            rows["rehearsal_tokens"][:, :-1],
            frozen=base,
            use_lora=False,
        ),
        rtol=1e-5,
        atol=1e-5,
    )
    _, m = learner.chat_and_update(FACT)
    assert m["rehearsal_kl"] >= 0 and np.isfinite(m["loss"])
    _, m = learner.chat_and_update("Hello there.")
    # The adapter moved on the first turn, so it now differs from the base on
    # the rehearsal rows too.
    assert m["rehearsal_kl"] > 0
    plain = make(tmp_path / "b", model, tokenizer)
    _, m = plain.chat_and_update(FACT)
    assert "rehearsal_kl" not in m
    learner.close()
    plain.close()


# ------------------------------------------------------------------ streaming


def test_streamed_reply_joins_to_the_reply(tmp_path, model, tokenizer):
    cfg = tiny_config(generation={"max_new_tokens": 12, "temperature": 0.8})
    learner = make(tmp_path, model, tokenizer, cfg)
    messages = ["Hello there.", FACT, QUESTION, "caf\u00e9 \u2615 and \U0001f600?"]
    most = 0
    for text in messages:
        for greedy in (True, False):
            pieces = list(learner.respond_stream(text, greedy=greedy))
            assert "".join(pieces) == learner.respond(text, greedy=greedy)
            assert all(pieces)
            most = max(most, len(pieces))
        learner.chat_and_update(text)  # the next message meets a new state
    assert most > 1  # some reply really came in several pieces
    # A bad message is refused before anything is generated, and nothing changes.
    before = snapshot(learner)
    with pytest.raises(ValueError, match="text must"):
        learner.respond_stream("   ")
    assert_same(before, snapshot(learner))
    learner.close()
