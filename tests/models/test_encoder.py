"""BERT-style encoder: parity with transformers, pooling, bucketing, errors."""

import json
import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ol_jax.models import (
    Encoder,
    EncoderConfig,
    encoder_apply,
    encoder_params_from_hf,
    load_encoder,
    mean_pool,
    sentence_embeddings,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

_WORDS = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "dog", "sat", "on",
    "mat", "a", "is", "good", "##s", "hello", "world", ".", ",", "?", "what", "how",
    "time", "it", "open", "store", "do", "i", "reset", "my", "password", "you",
]  # fmt: skip
_TINY = dict(
    vocab_size=len(_WORDS),
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=64,
    type_vocab_size=2,
)


def _save_tiny_bert(folder: pathlib.Path, *, seed: int = 0, **overrides):
    """A random transformers BertModel (LayerNorms perturbed too), saved as
    safetensors with a word-piece tokenizer; returns the torch model."""
    torch.manual_seed(seed)
    config = transformers.BertConfig(**{**_TINY, **overrides})
    model = transformers.BertModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    vocab = {w: i for i, w in enumerate(_WORDS)}
    transformers.BertTokenizer(vocab=vocab).save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_bert")
    torch_model = _save_tiny_bert(folder)
    return folder, torch_model, load_encoder(folder)


def _torch_hidden(model, ids, mask, types=None):
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(np.asarray(ids, np.int64)),
            attention_mask=torch.tensor(np.asarray(mask, np.int64)),
            token_type_ids=None
            if types is None
            else torch.tensor(np.asarray(types, np.int64)),
        )
    return out.last_hidden_state.numpy()


def _batch(seed=0, B=3, T=11):
    """Random ids and segments; rows 1 and 2 (when present) right-padded."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, len(_WORDS), (B, T)).astype(np.int32)
    mask = np.ones((B, T), np.int32)
    mask[1:2, 6:] = 0
    mask[2:3, 2:] = 0
    types = rng.integers(0, 2, (B, T)).astype(np.int32)
    return ids, mask, types


# ----------------------------------------------------------------------- parity


def test_hidden_states_match_transformers_with_padding(tiny):
    _, torch_model, enc = tiny
    ids, mask, types = _batch()
    ours = encoder_apply(enc.model, ids, mask, types, config=enc.config)
    ref = _torch_hidden(torch_model, ids, mask, types)
    assert ours.shape == (3, 11, 32) and ours.dtype == jnp.float32
    # Padding positions too: both compute them the same way.
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-5, rtol=0)
    no_types = encoder_apply(enc.model, ids, mask, config=enc.config)
    np.testing.assert_allclose(
        np.asarray(no_types), _torch_hidden(torch_model, ids, mask), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("act", ["gelu_new", "relu"])
def test_activations_match_transformers(tmp_path, act):
    torch_model = _save_tiny_bert(tmp_path, seed=1, hidden_act=act, num_hidden_layers=1)
    enc = load_encoder(tmp_path, tokenizer=False)
    assert enc.config.hidden_act == act
    ids, mask, _ = _batch(seed=1)
    ours = encoder_apply(enc.model, ids, mask, config=enc.config)
    np.testing.assert_allclose(
        np.asarray(ours), _torch_hidden(torch_model, ids, mask), atol=1e-5, rtol=0
    )


def test_sentence_embeddings_match_torch_mean_pooling(tiny):
    _, torch_model, enc = tiny
    ids, mask, _ = _batch(seed=2)
    hidden = torch.tensor(_torch_hidden(torch_model, ids, mask))
    m = torch.tensor(mask, dtype=torch.float32)[:, :, None]
    pooled = (hidden * m).sum(1) / torch.clamp(m.sum(1), min=1e-9)
    ref = torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()
    ours = sentence_embeddings(enc.model, ids, mask, config=enc.config)
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-5, rtol=0)
    plain = sentence_embeddings(
        enc.model, ids, mask, config=enc.config, normalize=False
    )
    np.testing.assert_allclose(np.asarray(plain), pooled.numpy(), atol=1e-5, rtol=0)


def test_bert_prefix_and_pure_dict_params(tiny):
    folder, _, enc = tiny
    from safetensors.numpy import load_file

    tensors = load_file(folder / "model.safetensors")
    prefixed = {"bert." + k: v for k, v in tensors.items()}
    model = encoder_params_from_hf(enc.config, prefixed)
    ids, mask, _ = _batch()
    a = encoder_apply(enc.model, ids, mask, config=enc.config)
    b = encoder_apply(
        jax.tree.map(jnp.asarray, _pure(model)), ids, mask, config=enc.config
    )
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(model(ids, mask)), np.asarray(a))


def _pure(model):
    from flax import nnx

    return nnx.to_pure_dict(nnx.state(model))


# ------------------------------------------------------------------ properties


@settings(max_examples=8)
@given(lengths=st.lists(st.integers(0, 8), min_size=2, max_size=2))
def test_jit_equals_no_jit(tiny, lengths):
    _, _, enc = tiny
    ids, _, types = _batch(seed=3, B=2, T=8)
    mask = (np.arange(8)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    jitted = jax.jit(sentence_embeddings, static_argnames=("config", "normalize"))
    a = jitted(enc.model, ids, mask, types, config=enc.config)
    with jax.disable_jit():
        b = sentence_embeddings(enc.model, ids, mask, types, config=enc.config)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)
    assert np.all(np.isfinite(np.asarray(a)))


@settings(max_examples=10)
@given(
    length=st.integers(1, 8),
    extra=st.sampled_from([0, 3, 8]),
    filler=st.integers(0, len(_WORDS) - 1),
)
def test_padding_does_not_change_embeddings(tiny, length, extra, filler):
    _, _, enc = tiny
    ids, _, types = _batch(seed=4, B=1, T=8)
    mask = (np.arange(8) < length).astype(np.int32)[None]
    base = sentence_embeddings(enc.model, ids, mask, types, config=enc.config)
    # Whatever the ids and types at padding positions, and however many there are.
    ids2 = np.concatenate([ids, np.full((1, extra), filler, np.int32)], axis=1)
    ids2[0, length:] = filler
    types2 = np.concatenate([types, np.ones((1, extra), np.int32)], axis=1)
    mask2 = np.concatenate([mask, np.zeros((1, extra), np.int32)], axis=1)
    padded = sentence_embeddings(enc.model, ids2, mask2, types2, config=enc.config)
    np.testing.assert_allclose(np.asarray(base), np.asarray(padded), atol=1e-6)
    norm = np.linalg.norm(np.asarray(base), axis=-1)
    np.testing.assert_allclose(norm, 1.0, atol=1e-5)


def test_inputs_not_mutated_dtypes_kept_and_all_padding_finite(tiny):
    _, _, enc = tiny
    ids, mask, types = _batch()
    mask[0] = 0  # an all-padding row pools to zeros, not NaN
    copies = [ids.copy(), mask.copy(), types.copy()]
    params = _pure(enc.model)
    before = jax.tree.map(np.array, params)
    out = sentence_embeddings(params, ids, mask.astype(bool), types, config=enc.config)
    for a, b in zip(copies, [ids, mask, types], strict=True):
        np.testing.assert_array_equal(a, b)
    jax.tree.map(np.testing.assert_array_equal, before, params)
    assert out.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(out)))
    np.testing.assert_array_equal(np.asarray(out[0]), 0.0)

    bf16 = EncoderConfig(**{**enc.config.__dict__, "dtype": "bfloat16"})
    model16 = Encoder(bf16, weights=_flat(params))
    h16 = encoder_apply(model16, ids, mask, config=bf16)
    assert h16.dtype == jnp.bfloat16
    h32 = encoder_apply(params, ids, mask, config=enc.config)
    np.testing.assert_allclose(
        np.asarray(h16.astype(jnp.float32)), np.asarray(h32), atol=0.15
    )


def _flat(params):
    """Pure-dict params back to the flat constructor layout."""
    e, lay = params["embeddings"], params["layers"]
    w = {f"embeddings.{k}": e[k] for k in ("word", "position", "token_type")}
    w["embeddings.norm_scale"] = e["norm"]["scale"]
    w["embeddings.norm_bias"] = e["norm"]["bias"]
    for name, sub in lay.items():
        for kind, v in sub.items():
            w[f"layers.{name}_{kind}"] = v
    return w


def test_gradient_is_finite(tiny):
    _, _, enc = tiny
    ids, mask, _ = _batch()
    params = _pure(enc.model)
    loss = lambda p: jnp.sum(sentence_embeddings(p, ids, mask, config=enc.config)[:, 0])
    grads = jax.grad(loss)(params)
    leaves = jax.tree.leaves(grads)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
    assert any(float(jnp.max(jnp.abs(g))) > 0 for g in leaves)


def test_random_init_runs(tiny):
    _, _, enc = tiny  # the same config and shapes: reuses the compiled program
    model = Encoder(enc.config, key=jax.random.key(0))
    ids, mask, _ = _batch()
    out = model(ids, mask)
    assert out.shape == (3, 11, 32) and np.all(np.isfinite(np.asarray(out)))
    with pytest.raises(ValueError, match="key is required"):
        Encoder(enc.config)


@settings(max_examples=10)
@given(
    hidden=st.lists(
        st.floats(-100, 100, width=32), min_size=2 * 3 * 4, max_size=2 * 3 * 4
    ),
    lengths=st.lists(st.integers(0, 3), min_size=2, max_size=2),
)
def test_mean_pool_matches_numpy(hidden, lengths):
    h = np.asarray(hidden, np.float32).reshape(2, 3, 4)
    mask = (np.arange(3)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    want = (h * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1), 1e-9)[:, None]
    got = mean_pool(h, mask)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(
        np.asarray(jax.jit(mean_pool)(h, mask)), np.asarray(got), rtol=1e-6
    )
    assert got.dtype == jnp.float32


# ---------------------------------------------------------------- embed / buckets


_TEXTS = [
    "the cat sat on the mat.",
    "hello world",
    "how do i reset my password?",
    "what time is it",
    "a dog",
    "is the store open?",
    "the cats, the dogs, the mats, hello world, what time is it?",
]


def test_embed_matches_unbucketed_and_is_order_independent(tiny):
    _, torch_model, enc = tiny
    out = enc.embed(_TEXTS)
    assert out.shape == (len(_TEXTS), 32)
    for i, text in enumerate(_TEXTS):
        # The reference sees each text alone, unpadded (transformers, no buckets).
        ids = np.asarray(enc.tokenizer([text])["input_ids"])
        hidden = _torch_hidden(torch_model, ids, np.ones_like(ids))
        want = hidden[0].mean(0) / np.linalg.norm(hidden[0].mean(0))
        np.testing.assert_allclose(np.asarray(out[i]), want, atol=1e-5)
    single = enc.embed(_TEXTS[2])
    assert single.shape == (32,)
    np.testing.assert_allclose(np.asarray(single), np.asarray(out[2]), atol=1e-6)
    small = enc.embed(_TEXTS, batch_size=2, min_length=32)
    np.testing.assert_allclose(np.asarray(small), np.asarray(out), atol=1e-6)
    assert enc.embed([]).shape == (0, 32)


def test_embed_does_not_recompile_within_a_bucket(tiny, caplog):
    _, _, enc = tiny
    enc.embed(["hello world", "a dog", "what time is it"])
    with caplog.at_level(logging.DEBUG), jax.log_compiles():
        enc.embed(["the cat sat on the mat.", "is the store open?", "hello"])
    traced = [r.getMessage() for r in caplog.records if "tracing" in r.getMessage()]
    assert not traced, traced
    # The check sees compiles: a new token bucket (64) is traced once.
    caplog.clear()
    with caplog.at_level(logging.DEBUG), jax.log_compiles():
        enc.embed(["hello"], min_length=64)
    assert any("tracing" in r.getMessage() for r in caplog.records)


def test_embed_truncates_to_max_seq_length(tmp_path):
    _save_tiny_bert(tmp_path, num_hidden_layers=1)
    (tmp_path / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 8, "do_lower_case": False})
    )
    enc = load_encoder(tmp_path)
    assert enc.max_seq_length == 8
    long = " ".join(["hello world"] * 20)
    cut = enc.tokenizer([long], truncation=True, max_length=8)
    want = sentence_embeddings(
        enc.model,
        np.asarray(cut["input_ids"]),
        np.asarray(cut["attention_mask"]),
        config=enc.config,
    )
    np.testing.assert_allclose(
        np.asarray(enc.embed([long])), np.asarray(want), atol=1e-6
    )


# ------------------------------------------------------------------------ errors


def test_input_errors(tiny):
    _, _, enc = tiny
    ids, mask, types = _batch()
    cfg = enc.config
    with pytest.raises(ValueError, match=r"input_ids must have shape \[B, T\]"):
        encoder_apply(enc.model, ids[0], mask[0], config=cfg)
    with pytest.raises(ValueError, match="input_ids must be integer"):
        encoder_apply(enc.model, ids.astype(np.float32), mask, config=cfg)
    with pytest.raises(ValueError, match="attention_mask shape"):
        encoder_apply(enc.model, ids, mask[:, :5], config=cfg)
    with pytest.raises(ValueError, match="token_type_ids shape"):
        encoder_apply(enc.model, ids, mask, types[:2], config=cfg)
    long = np.zeros((1, 65), np.int32)
    with pytest.raises(ValueError, match="max_position_embeddings 64, got 65"):
        encoder_apply(enc.model, long, long, config=cfg)
    with pytest.raises(ValueError, match=r"mask shape must equal hidden's"):
        mean_pool(np.zeros((2, 3, 4), np.float32), np.ones((2, 4)))
    with pytest.raises(ValueError, match="texts must be strings"):
        enc.embed(["ok", 3])
    with pytest.raises(ValueError, match="hidden_act must be one of"):
        EncoderConfig(**{**cfg.__dict__, "hidden_act": "swish"})
    with pytest.raises(ValueError, match="hidden_size must be divisible"):
        EncoderConfig(**{**cfg.__dict__, "num_attention_heads": 5})


@pytest.fixture
def tiny_copy(tiny, tmp_path):
    folder, _, _ = tiny
    for f in folder.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    return tmp_path


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_folder_errors(tiny_copy):
    folder = tiny_copy
    with pytest.raises(ValueError, match="Hugging Face encoder folder, got"):
        load_encoder(folder / "nope")
    _edit_config(folder, model_type="roberta")
    with pytest.raises(ValueError, match="model_type 'roberta'"):
        load_encoder(folder)
    _edit_config(folder, model_type="bert", hidden_act="silu")
    with pytest.raises(ValueError, match="hidden_act must be one of .* got 'silu'"):
        load_encoder(folder)
    _edit_config(folder, hidden_act="gelu")
    (folder / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "x.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "x.Pooling"},
            ]
        )
    )
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    with pytest.raises(ValueError, match="pooling_mode_cls_token"):
        load_encoder(folder)
    (folder / "modules.json").unlink()
    assert load_encoder(folder, tokenizer=False).tokenizer is None
    with pytest.raises(ValueError, match="embed needs a tokenizer"):
        load_encoder(folder, tokenizer=False).embed(["a"])
    (folder / "config.json").unlink()
    with pytest.raises(ValueError, match="has no config.json"):
        load_encoder(folder)


def test_weight_errors(tiny_copy):
    from safetensors.numpy import load_file, save_file

    folder = tiny_copy
    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    name = "encoder.layer.1.attention.self.value.bias"
    save_file({k: v for k, v in tensors.items() if k != name}, weights)
    with pytest.raises(ValueError, match=f"missing tensor '{name}'"):
        load_encoder(folder, tokenizer=False)
    bad = dict(tensors)
    bad["embeddings.word_embeddings.weight"] = np.zeros((3, 32), np.float32)
    save_file(bad, weights)
    with pytest.raises(ValueError, match=r"must have shape \(32, 32\), got \(3, 32\)"):
        load_encoder(folder, tokenizer=False)
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="could not read safetensors file"):
        load_encoder(folder, tokenizer=False)
    weights.unlink()
    with pytest.raises(ValueError, match="has no model.safetensors"):
        load_encoder(folder, tokenizer=False)


# -------------------------------------------------------------------- real model

_SENTENCES = [
    "How do I reset my password?",
    "I forgot my password, how can I change it?",
    "What are your opening hours on Sunday?",
    "When does the store open on weekends?",
    "The cat sat on the mat.",
    "A dog is playing in the park.",
    "Can I get a refund for a damaged item?",
    "How long does shipping to Canada take?",
    "What is the capital of France?",
    "Paris is the capital and largest city of France.",
    "Photosynthesis converts light energy into chemical energy.",
    "Explain the difference between TCP and UDP.",
    "Which payment methods do you accept?",
    "Do you ship internationally?",
    "My order arrived late and the box was crushed.",
    "The quick brown fox jumps over the lazy dog.",
    "Is it going to rain tomorrow in Berlin?",
    "Write a haiku about autumn leaves.",
    "ok",
    "Transformers use self-attention to relate every token to every other token "
    "in a sequence, which lets them model long-range dependencies efficiently.",
]


@pytest.mark.slow
def test_real_minilm_matches_sentence_transformers():
    st_mod = pytest.importorskip("sentence_transformers")
    enc = load_encoder("all-minilm-l6-v2")
    assert enc.config.hidden_size == 384 and enc.normalize and enc.max_seq_length == 256
    ours = np.asarray(enc.embed(_SENTENCES))
    ref_model = st_mod.SentenceTransformer(str(enc.source), device="cpu")
    ref = ref_model.encode(_SENTENCES, convert_to_numpy=True)
    cos = np.sum(ours * ref, axis=-1) / (
        np.linalg.norm(ours, axis=-1) * np.linalg.norm(ref, axis=-1)
    )
    assert ours.shape == ref.shape == (20, 384)
    assert np.min(cos) >= 1 - 1e-4, cos
    np.testing.assert_allclose(ours, ref, atol=1e-4)
