"""Generation: KV cache equals recomputation, EOS, sampling, LoRA, chat template."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from ol_jax.models import (
    Llama,
    LlamaConfig,
    LoRAConfig,
    chat_token_ids,
    generate,
    generate_stream,
    merge_lora,
    prompt_bucket,
    sample_logits,
    split_lora,
    text_deltas,
)

VOCAB = 53
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
PROMPTS = [[5, 9, 2, 17, 30], [40, 1, 8, 22, 13, 7, 7, 11, 3, 29, 2, 44, 19]]


def _model(**kw):
    model = Llama(CONFIG, key=jax.random.key(0), **kw)
    # Sharper logits than the 0.02 init so greedy choices are well separated.
    model.embed_tokens[...] = model.embed_tokens[...] * 40.0
    return model


def _recompute_greedy(model, prompt, n, **kw):
    """Greedy decoding by running the whole sequence again for every token."""
    seq = list(prompt)
    size = 32  # one buffer size for every call: one compiled forward
    for _ in range(n):
        buf = np.zeros((size,), np.int32)
        buf[: len(seq)] = seq
        logits = model(jnp.asarray(buf), **kw)  # causal: later slots do not matter
        seq.append(int(jnp.argmax(logits[len(seq) - 1])))
    return seq[len(prompt) :]


def test_kv_cache_equals_recompute():
    model = _model()
    got = generate(model, PROMPTS, max_new_tokens=10, eos_token_id=[])
    for prompt, row in zip(PROMPTS, got, strict=True):
        assert row == _recompute_greedy(model, prompt, 10)
    assert got[0] != got[1]


def test_stops_at_eos_per_row():
    model = _model()
    free = generate(model, PROMPTS, max_new_tokens=10, eos_token_id=[])
    eos = free[0][3]
    got = generate(model, PROMPTS, max_new_tokens=10, eos_token_id=eos)
    for row_free, row in zip(free, got, strict=True):
        cut = row_free.index(eos) + 1 if eos in row_free else len(row_free)
        assert row == row_free[:cut]
    assert got[0][-1] == eos and len(got[0]) <= 4


def test_generation_with_lora_matches_merged_base():
    lcfg = LoRAConfig(rank=2, alpha=4.0)
    model = _model(lora_config=lcfg)
    graphdef, base, lora = split_lora(model)
    lora = jax.tree.map(lambda x: jnp.full(x.shape, 0.3, x.dtype), lora)
    adapted = nnx.merge(graphdef, base, lora)
    merged = nnx.merge(graphdef, merge_lora(base, lora, lcfg), lora)
    on = generate(adapted, PROMPTS, max_new_tokens=6, eos_token_id=[])
    via_merge = generate(
        merged, PROMPTS, max_new_tokens=6, eos_token_id=[], use_lora=False
    )
    off = generate(adapted, PROMPTS, max_new_tokens=6, eos_token_id=[], use_lora=False)
    assert on == via_merge
    assert on == [_recompute_greedy(adapted, p, 6) for p in PROMPTS]
    assert off == [_recompute_greedy(adapted, p, 6, use_lora=False) for p in PROMPTS]


def test_sampling_reproducible_and_top_p_tiny_is_greedy():
    model = _model()
    key = jax.random.key(3)
    a = generate(
        model, PROMPTS, max_new_tokens=5, temperature=1.0, key=key, eos_token_id=[]
    )
    b = generate(
        model, PROMPTS, max_new_tokens=5, temperature=1.0, key=key, eos_token_id=[]
    )
    assert a == b
    greedy = generate(model, PROMPTS, max_new_tokens=5, eos_token_id=[])
    nucleus = generate(
        model,
        PROMPTS,
        max_new_tokens=5,
        temperature=0.7,
        top_p=1e-6,
        key=key,
        eos_token_id=[],
    )
    assert nucleus == greedy
    with pytest.raises(ValueError, match="key"):
        generate(model, PROMPTS, max_new_tokens=2, temperature=1.0)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, PROMPTS, max_new_tokens=2, top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, PROMPTS, max_new_tokens=0)


def test_prompt_bucket():
    assert [prompt_bucket(n) for n in (1, 16, 17, 64, 65)] == [16, 16, 32, 64, 128]
    assert prompt_bucket(3, min_bucket=2) == 4
    with pytest.raises(ValueError, match="length"):
        prompt_bucket(0)


@settings(max_examples=10)
@given(
    seed=st.integers(0, 2**16),
    top_p=st.floats(0.05, 1.0),
    temperature=st.floats(0.1, 3.0),
)
def test_sample_logits_properties(seed, top_p, temperature):
    logits = jax.random.normal(jax.random.key(seed), (3, 11), jnp.float32) * 3.0
    before = np.asarray(logits).copy()
    key = jax.random.key(seed + 1)
    tok = sample_logits(logits, key=key, temperature=temperature, top_p=top_p)
    jitted = jax.jit(sample_logits)(
        logits, key=key, temperature=temperature, top_p=top_p
    )
    np.testing.assert_array_equal(np.asarray(tok), np.asarray(jitted))
    np.testing.assert_array_equal(np.asarray(logits), before)
    assert tok.shape == (3,) and tok.dtype == jnp.int32
    # The sampled token lies in the nucleus: the mass strictly before it < top_p.
    probs = np.asarray(jax.nn.softmax(logits / temperature, axis=-1), np.float64)
    for row in range(3):
        p = probs[row]
        mass_before = p[p > p[int(tok[row])]].sum()
        assert mass_before < top_p + 1e-5


def test_chat_token_ids():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<user>", "<assistant>", "hello", "there", "</s>"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, "<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    with pytest.raises(ValueError, match="chat_template"):
        chat_token_ids(tokenizer, [{"role": "user", "content": "hello"}])
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    ids = chat_token_ids(tokenizer, [{"role": "user", "content": "hello there"}])
    assert ids == [1, 3, 4, 2]
    ids = chat_token_ids(
        tokenizer, [{"role": "user", "content": "hello"}], add_generation_prompt=False
    )
    assert ids == [1, 3]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_generate_stream_yields_the_generated_tokens(temperature):
    model = _model()
    key = jax.random.key(5)
    for prompt in PROMPTS:
        whole = generate(
            model,
            [prompt],
            max_new_tokens=9,
            temperature=temperature,
            key=key,
            eos_token_id=[],
        )[0]
        streamed = list(
            generate_stream(
                model,
                prompt,
                max_new_tokens=9,
                temperature=temperature,
                key=key,
                eos_token_id=[],
            )
        )
        assert streamed == whole
        # With an EOS id: the stream ends with it, as generate's row does.
        eos = whole[2]
        cut = generate(
            model,
            [prompt],
            max_new_tokens=9,
            temperature=temperature,
            key=key,
            eos_token_id=eos,
        )[0]
        assert (
            list(
                generate_stream(
                    model,
                    prompt,
                    max_new_tokens=9,
                    temperature=temperature,
                    key=key,
                    eos_token_id=eos,
                )
            )
            == cut
        )
        assert cut[-1] == eos


def test_generate_stream_stops_when_closed_and_checks_its_arguments():
    model = _model()
    stream = generate_stream(model, PROMPTS[0], max_new_tokens=50, eos_token_id=[])
    first = [next(stream) for _ in range(3)]
    stream.close()
    assert first == generate(model, [PROMPTS[0]], max_new_tokens=3, eos_token_id=[])[0]
    with pytest.raises(ValueError, match="max_new_tokens"):
        next(generate_stream(model, PROMPTS[0], max_new_tokens=0))
    with pytest.raises(ValueError, match="prompts"):
        next(generate_stream(model, [], max_new_tokens=2))


def _utf8_decode(ids):
    """Byte tokens (id = byte value) decoded like a byte-level tokenizer: a
    partial character is U+FFFD; then stripped, like a chat reply."""
    return bytes(ids).decode("utf-8", errors="replace").strip()


@given(st.text(max_size=30))
def test_text_deltas_join_to_the_decoded_text(text):
    ids = list((" " + text + " ").encode("utf-8"))
    pieces = list(text_deltas(ids, _utf8_decode))
    assert "".join(pieces) == _utf8_decode(ids)
    assert all(pieces)
    # A piece never ends inside a multi-byte character.
    assert all("\ufffd" not in p for p in pieces) or "\ufffd" in text


def test_text_deltas_wait_for_a_whole_character():
    ids = list("é!".encode())  # two bytes for é
    assert list(text_deltas(ids, _utf8_decode)) == ["é", "!"]
    # A later token that rewrites the shown text: the pieces go on from where
    # the texts diverge (the stream cannot take a shown piece back).
    texts = {1: "ab", 2: "ax", 3: "axy"}
    got = list(text_deltas([7, 7, 7], lambda seen: texts[len(seen)]))
    assert got == ["ab", "xy"]
