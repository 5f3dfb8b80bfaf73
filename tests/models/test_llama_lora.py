"""LoRA on the Llama decoder: zero-B identity, training, merge, save/load, vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from ol_jax.models import (
    Llama,
    LlamaConfig,
    LoRAConfig,
    llama_apply,
    llama_apply_with_reference,
    load_adapter,
    lora_from_hf,
    lora_to_hf,
    merge_lora,
    save_adapter,
    split_lora,
    unmerge_lora,
)

VOCAB = 61
CONFIG = LlamaConfig(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    model_type="qwen2",
    attention_bias=True,
)
ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TOKENS = (jnp.arange(2 * 7, dtype=jnp.int32).reshape(2, 7) * 5) % VOCAB


def _randomize_b(lora, key):
    """Gives every B a non-zero value so the adapter changes the logits."""
    leaves, treedef = jax.tree.flatten(lora)
    keys = jax.random.split(key, len(leaves))
    leaves = [
        0.1 * jax.random.normal(k, x.shape, x.dtype)
        for k, x in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, leaves)


def test_zero_b_equals_base_exactly():
    base_model = Llama(CONFIG, key=jax.random.key(0))
    lora_model = Llama(
        CONFIG,
        lora_config=LoRAConfig(rank=4, target_modules=ALL),
        key=jax.random.key(0),
    )
    for name in ALL:
        lin = getattr(lora_model.layers, name)
        assert lin.lora_a[...].shape == (2, lin.kernel.shape[1], 4)
        assert float(jnp.abs(lin.lora_a[...]).max()) > 0.0
        np.testing.assert_array_equal(np.asarray(lin.lora_b[...]), 0.0)
    ref = np.asarray(base_model(TOKENS))
    np.testing.assert_array_equal(np.asarray(lora_model(TOKENS)), ref)
    np.testing.assert_array_equal(np.asarray(lora_model(TOKENS, use_lora=False)), ref)


def test_use_lora_false_is_the_base_and_reference_adapter():
    model = Llama(CONFIG, lora_config=LoRAConfig(rank=2), key=jax.random.key(1))
    graphdef, base, lora = split_lora(model)
    trained = _randomize_b(lora, jax.random.key(2))
    base_logits = llama_apply(graphdef, lora, TOKENS, frozen=base, use_lora=False)
    adapted = llama_apply(graphdef, trained, TOKENS, frozen=base)
    assert float(jnp.abs(adapted - base_logits).max()) > 1e-3
    off = llama_apply(graphdef, trained, TOKENS, frozen=base, use_lora=False)
    np.testing.assert_array_equal(np.asarray(off), np.asarray(base_logits))
    # A frozen snapshot passed as the adapter is a reference model.
    snapshot = jax.tree.map(jnp.copy, trained)
    np.testing.assert_array_equal(
        np.asarray(llama_apply(graphdef, snapshot, TOKENS, frozen=base)),
        np.asarray(adapted),
    )


def test_one_sgd_step_changes_only_lora():
    model = Llama(
        CONFIG,
        lora_config=LoRAConfig(rank=2, target_modules=ALL),
        key=jax.random.key(3),
    )
    graphdef, base, lora = split_lora(model)
    before = jax.tree.map(np.asarray, (base, lora))
    targets = jnp.roll(TOKENS, -1, axis=1)

    def loss_fn(lora, base):
        logits = llama_apply(graphdef, lora, TOKENS, frozen=base)
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))

    tx = optax.sgd(0.5)
    opt_state = tx.init(lora)
    grads = jax.grad(loss_fn)(lora, base)
    updates, _ = tx.update(grads, opt_state, lora)
    new_lora = optax.apply_updates(lora, updates)
    # Inputs not mutated; base untouched; every B moved away from zero.
    jax.tree.map(
        np.testing.assert_array_equal, jax.tree.map(np.asarray, base), before[0]
    )
    jax.tree.map(
        np.testing.assert_array_equal, jax.tree.map(np.asarray, lora), before[1]
    )
    for path, var in nnx.to_flat_state(new_lora):
        assert isinstance(var, nnx.LoRAParam)
        if path[-1] == "lora_b":
            assert float(jnp.abs(var[...]).max()) > 0.0, path
    assert float(loss_fn(new_lora, base)) < float(loss_fn(lora, base))


def test_merge_unmerge_round_trip():
    lcfg = LoRAConfig(
        rank=3, alpha=6.0, target_modules=("q_proj", "v_proj", "down_proj")
    )
    model = Llama(CONFIG, lora_config=lcfg, key=jax.random.key(4))
    graphdef, base, lora = split_lora(model)
    lora = _randomize_b(lora, jax.random.key(5))
    adapted = llama_apply(graphdef, lora, TOKENS, frozen=base)
    merged = merge_lora(base, lora, lcfg)
    assert jax.tree.structure(merged) == jax.tree.structure(base)
    np.testing.assert_allclose(
        np.asarray(llama_apply(graphdef, lora, TOKENS, frozen=merged, use_lora=False)),
        np.asarray(adapted),
        atol=1e-4,
    )
    restored = unmerge_lora(merged, lora, lcfg)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(base), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)


def test_save_load_adapter(tmp_path):
    lcfg = LoRAConfig(
        rank=2, alpha=8.0, dropout=0.1, target_modules=("k_proj", "up_proj")
    )
    model = Llama(CONFIG, lora_config=lcfg, key=jax.random.key(6))
    graphdef, base, lora = split_lora(model)
    lora = _randomize_b(lora, jax.random.key(7))
    save_adapter(tmp_path / "ad", lora, lcfg)
    loaded, loaded_cfg = load_adapter(tmp_path / "ad", like=lora)
    assert loaded_cfg == lcfg
    assert jax.tree.structure(loaded) == jax.tree.structure(lora)
    np.testing.assert_array_equal(
        np.asarray(llama_apply(graphdef, loaded, TOKENS, frozen=base)),
        np.asarray(llama_apply(graphdef, lora, TOKENS, frozen=base)),
    )
    pure, _ = load_adapter(tmp_path / "ad")
    np.testing.assert_array_equal(
        np.asarray(llama_apply(graphdef, pure, TOKENS, frozen=base)),
        np.asarray(llama_apply(graphdef, lora, TOKENS, frozen=base)),
    )
    with pytest.raises(ValueError, match="does not exist"):
        load_adapter(tmp_path / "missing")
    other = split_lora(
        Llama(CONFIG, lora_config=LoRAConfig(rank=3), key=jax.random.key(0))
    )
    with pytest.raises(ValueError, match="shapes"):
        load_adapter(tmp_path / "ad", like=other[2])


def test_hf_names_round_trip():
    lcfg = LoRAConfig(rank=2, target_modules=("q_proj", "gate_proj"))
    _, _, lora = split_lora(Llama(CONFIG, lora_config=lcfg, key=jax.random.key(8)))
    lora = _randomize_b(lora, jax.random.key(9))
    hf = lora_to_hf(lora)
    assert hf["model.layers.1.self_attn.q_proj.lora_A.weight"].shape == (2, 32)
    assert hf["model.layers.0.mlp.gate_proj.lora_B.weight"].shape == (48, 2)
    back = lora_from_hf(hf, CONFIG, lcfg)
    for got, want in zip(
        jax.tree.leaves(back), jax.tree.leaves(nnx.to_pure_dict(lora)), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    del hf["model.layers.1.mlp.gate_proj.lora_A.weight"]
    with pytest.raises(ValueError, match="gate_proj"):
        lora_from_hf(hf, CONFIG, lcfg)


def test_dropout_only_with_key():
    lcfg = LoRAConfig(rank=2, dropout=0.5)
    model = Llama(CONFIG, lora_config=lcfg, key=jax.random.key(10))
    graphdef, base, lora = split_lora(model)
    lora = _randomize_b(lora, jax.random.key(11))
    plain = llama_apply(graphdef, lora, TOKENS, frozen=base)
    again = llama_apply(graphdef, lora, TOKENS, frozen=base)
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(again))
    k = jax.random.key(12)
    drop1 = llama_apply(graphdef, lora, TOKENS, frozen=base, key=k)
    drop2 = llama_apply(graphdef, lora, TOKENS, frozen=base, key=k)
    np.testing.assert_array_equal(np.asarray(drop1), np.asarray(drop2))
    assert float(jnp.abs(drop1 - plain).max()) > 1e-4


def test_per_row_adapters_vmap():
    model = Llama(CONFIG, lora_config=LoRAConfig(rank=2), key=jax.random.key(13))
    graphdef, base, lora = split_lora(model)
    adapters = [_randomize_b(lora, jax.random.key(s)) for s in (14, 15)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *adapters)
    rows = jax.vmap(lambda ad, toks: llama_apply(graphdef, ad, toks, frozen=base))(
        stacked, TOKENS
    )
    for i in range(2):
        want = llama_apply(graphdef, adapters[i], TOKENS[i], frozen=base)
        np.testing.assert_allclose(np.asarray(rows[i]), np.asarray(want), atol=1e-5)


@settings(max_examples=4)
@given(rank=st.integers(1, 4), alpha=st.floats(0.5, 32.0), seed=st.integers(0, 99))
def test_merge_matches_adapter_property(rank, alpha, seed):
    lcfg = LoRAConfig(rank=rank, alpha=alpha, target_modules=("o_proj", "up_proj"))
    model = Llama(CONFIG, lora_config=lcfg, key=jax.random.key(seed))
    graphdef, base, lora = split_lora(model)
    lora = _randomize_b(lora, jax.random.key(seed + 1))
    merged = jax.jit(merge_lora, static_argnums=2)(base, lora, lcfg)
    adapted = llama_apply(graphdef, lora, TOKENS[0], frozen=base)
    via_merge = llama_apply(graphdef, lora, TOKENS[0], frozen=merged, use_lora=False)
    assert bool(jnp.all(jnp.isfinite(adapted)))
    np.testing.assert_allclose(np.asarray(via_merge), np.asarray(adapted), atol=1e-4)


def _ce_kl(ref_logits, logits, targets):
    """CE of the targets plus KL(ref || adapted), both averaged over positions."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    ref_logp = jax.nn.log_softmax(jax.lax.stop_gradient(ref_logits), axis=-1)
    ce = -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))
    kl = jnp.mean(jnp.sum(jnp.exp(ref_logp) * (ref_logp - logp), axis=-1))
    return ce + kl


def test_apply_with_reference_equals_two_calls():
    lcfg = LoRAConfig(rank=2, target_modules=("q_proj", "v_proj", "down_proj"))
    model = Llama(CONFIG, lora_config=lcfg, key=jax.random.key(20))
    graphdef, base, lora = split_lora(model)
    trained = _randomize_b(lora, jax.random.key(21))
    snapshot = _randomize_b(lora, jax.random.key(22))
    mask = jnp.array([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]], jnp.bool_)
    for tokens, kwargs in ((TOKENS, {"attention_mask": mask}), (TOKENS[0], {})):
        want = llama_apply(graphdef, trained, tokens, frozen=base, **kwargs)
        ref, got = llama_apply_with_reference(
            graphdef, trained, tokens, frozen=base, **kwargs
        )
        base_logits = llama_apply(
            graphdef, trained, tokens, frozen=base, use_lora=False, **kwargs
        )
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
        np.testing.assert_allclose(np.asarray(ref), np.asarray(base_logits), atol=1e-5)
        ref, got = llama_apply_with_reference(
            graphdef, trained, tokens, frozen=base, reference=snapshot, **kwargs
        )
        snap_logits = llama_apply(graphdef, snapshot, tokens, frozen=base, **kwargs)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
        np.testing.assert_allclose(np.asarray(ref), np.asarray(snap_logits), atol=1e-5)
        assert ref.dtype == got.dtype == jnp.float32


@pytest.mark.parametrize("reference", [False, True])
def test_apply_with_reference_gradients(reference):
    lcfg = LoRAConfig(rank=2, target_modules=ALL)
    model = Llama(CONFIG, lora_config=lcfg, key=jax.random.key(23))
    graphdef, base, lora = split_lora(model)
    trained = _randomize_b(lora, jax.random.key(24))
    snapshot = _randomize_b(lora, jax.random.key(25)) if reference else None
    targets = jnp.roll(TOKENS, -1, axis=1)

    def two_calls(lora, base):
        if snapshot is None:
            ref = llama_apply(graphdef, lora, TOKENS, frozen=base, use_lora=False)
        else:
            ref = llama_apply(graphdef, snapshot, TOKENS, frozen=base)
        logits = llama_apply(graphdef, lora, TOKENS, frozen=base)
        return _ce_kl(ref, logits, targets)

    def one_pass(lora, base):
        ref, logits = llama_apply_with_reference(
            graphdef, lora, TOKENS, frozen=base, reference=snapshot
        )
        return _ce_kl(ref, logits, targets)

    # Gradients to the adapter and, through the paired matmul's rule, to the base.
    want = jax.grad(two_calls, argnums=(0, 1))(trained, base)
    got = jax.jit(jax.grad(one_pass, argnums=(0, 1)))(trained, base)
    flat_want, flat_got = jax.tree.leaves(want), jax.tree.leaves(got)
    assert len(flat_want) == len(flat_got)
    for w, g in zip(flat_want, flat_got, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-5)
    assert max(float(jnp.abs(g).max()) for g in flat_got) > 1e-3


def test_apply_with_reference_dropout_on_adapted_stream_only():
    lcfg = LoRAConfig(rank=2, dropout=0.5)
    model = Llama(CONFIG, lora_config=lcfg, key=jax.random.key(26))
    graphdef, base, lora = split_lora(model)
    lora = _randomize_b(lora, jax.random.key(27))
    k = jax.random.key(28)
    ref, got = llama_apply_with_reference(graphdef, lora, TOKENS, frozen=base, key=k)
    want = llama_apply(graphdef, lora, TOKENS, frozen=base, key=k)
    base_logits = llama_apply(graphdef, lora, TOKENS, frozen=base, use_lora=False)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
    np.testing.assert_allclose(np.asarray(ref), np.asarray(base_logits), atol=1e-5)


@settings(max_examples=4)
@given(length=st.integers(1, 9), seed=st.integers(0, 99))
def test_apply_with_reference_properties(length, seed):
    model = Llama(CONFIG, lora_config=LoRAConfig(rank=3), key=jax.random.key(seed))
    graphdef, base, lora = split_lora(model)
    lora = _randomize_b(lora, jax.random.key(seed + 1))
    tokens = jax.random.randint(jax.random.key(seed + 2), (length,), 0, VOCAB)
    before = jax.tree.map(np.asarray, (lora, tokens))
    eager = llama_apply_with_reference(graphdef, lora, tokens, frozen=base)
    jitted = jax.jit(
        lambda lo, t: llama_apply_with_reference(graphdef, lo, t, frozen=base)
    )(lora, tokens)
    for e, j in zip(eager, jitted, strict=True):
        assert e.shape == (length, VOCAB) and e.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(e)))
        np.testing.assert_allclose(np.asarray(j), np.asarray(e), atol=1e-5)
    jax.tree.map(
        np.testing.assert_array_equal, jax.tree.map(np.asarray, lora), before[0]
    )
    np.testing.assert_array_equal(np.asarray(tokens), before[1])
