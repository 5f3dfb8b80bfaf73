"""Text generation for ``Llama``: jit-compiled prefill plus a KV-cache decode loop.

Prompts are left-padded to a power-of-two bucket so that a new prompt length does
not recompile; a padded row gets rotary positions ``cumsum(mask) - 1`` and its
padding keys are masked, so its logits equal the unpadded ones. The prompt is run
once (prefill) to fill the cache ``[L, B, P + N, KV, hd]``; then one token per
step is decoded inside a ``jax.lax.while_loop`` that ends after ``N`` tokens or
when every row has produced an end-of-sequence id. Sampling is greedy, or from
``softmax(logits / temperature)`` restricted to the top-p nucleus. A streamed
generation runs the same prefill and step as a Python loop of compiled steps,
so each token reaches the host as it is made; :func:`text_deltas` turns those
tokens into text pieces that never change once shown.

References:
    Holtzman et al., `The Curious Case of Neural Text Degeneration
    <https://arxiv.org/abs/1904.09751>`_, 2020 (nucleus / top-p sampling).
    Pope et al., `Efficiently Scaling Transformer Inference
    <https://arxiv.org/abs/2211.05102>`_, 2022 (KV caching).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ol_jax.models._llama import Llama, _base_arrays, _forward, _lora_arrays

__all__ = [
    "chat_token_ids",
    "generate",
    "generate_stream",
    "prompt_bucket",
    "sample_logits",
    "text_deltas",
]


def prompt_bucket(length: int, *, min_bucket: int = 16) -> int:
    """The padded prompt length: the next power of two, at least ``min_bucket``.

    Args:
        length: the longest prompt in the batch (>= 1).
        min_bucket: smallest bucket.

    Returns:
        ``max(min_bucket, 2**ceil(log2(length)))``.
    """
    if length < 1:
        raise ValueError(f"prompt length must be >= 1, got {length}")
    return max(int(min_bucket), 1 << (int(length) - 1).bit_length())


def sample_logits(
    logits: jax.Array,
    *,
    key: jax.Array,
    temperature: jax.typing.ArrayLike = 1.0,
    top_p: jax.typing.ArrayLike = 1.0,
    top_k: jax.typing.ArrayLike = 0,
) -> jax.Array:
    """Draws one token per row from temperature-scaled, top-k/top-p-truncated logits.

    The nucleus keeps the most probable tokens whose probabilities, sorted in
    decreasing order, have a cumulative sum before them below ``top_p`` (so the
    most probable token is always kept), and at most the ``top_k`` most probable
    of them; the rest get probability zero.

    Args:
        logits: ``[..., V]`` float logits.
        key: PRNG key.
        temperature: > 0; divides the logits.
        top_p: in (0, 1]; 1 keeps every token.
        top_k: tokens kept at most; 0 keeps every token (a traced value: a new
            ``top_k`` does not recompile).

    Returns:
        int32 token ids ``logits.shape[:-1]``.
    """
    logits = jnp.asarray(logits, jnp.float32)
    temperature = jnp.asarray(temperature, jnp.float32)
    top_p = jnp.asarray(top_p, jnp.float32)
    scaled = logits / jnp.maximum(temperature, jnp.float32(1e-6))
    ordered = -jnp.sort(-scaled, axis=-1)
    probs = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    rank = jnp.broadcast_to(jnp.arange(ordered.shape[-1]), ordered.shape)
    top_k = jnp.asarray(top_k, jnp.int32)
    in_k = (top_k <= 0) | (rank < top_k)
    kept = jnp.where((before < top_p) & in_k, ordered, jnp.float32(jnp.inf))
    threshold = jnp.min(kept, axis=-1, keepdims=True)
    masked = jnp.where(scaled >= threshold, scaled, -jnp.inf)
    return jax.random.categorical(key, masked, axis=-1).astype(jnp.int32)


def _pick(logits, key, temperature, top_p, top_k, greedy: bool):
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return sample_logits(
        logits, key=key, temperature=temperature, top_p=top_p, top_k=top_k
    )


class _Decoding(NamedTuple):
    """The decode loop's carry: the next step ``i`` (tokens ``out[:, :i]`` are
    made), the KV cache, which cache slots hold keys, the tokens, which rows are
    done, the PRNG key and each row's prompt length."""

    i: jax.Array
    cache: tuple[jax.Array, jax.Array]
    kv_valid: jax.Array
    out: jax.Array
    done: jax.Array
    key: jax.Array
    lengths: jax.Array


def _arrays(graphdef, state, use_lora: bool):
    model = nnx.merge(graphdef, state)
    lora = _lora_arrays(model) if use_lora else {}
    return model.config, model.lora_config, _base_arrays(model), lora


def _prefill(
    graphdef,
    state,
    tokens,
    mask,
    eos_ids,
    pad_id,
    temperature,
    top_p,
    key,
    top_k=0,
    *,
    max_new_tokens: int,
    greedy: bool,
    use_lora: bool,
) -> _Decoding:
    """Runs the prompt, fills the cache and picks the first new token."""
    config, lora_config, params, lora = _arrays(graphdef, state, use_lora)
    B, P = tokens.shape
    N = max_new_tokens
    L, KV, hd = config.num_hidden_layers, config.num_key_value_heads, config.head_dim
    dtype = params["embed_tokens"].dtype
    cache = (
        jnp.zeros((L, B, P + N, KV, hd), dtype),
        jnp.zeros((L, B, P + N, KV, hd), dtype),
    )
    kv_valid = jnp.concatenate([mask, jnp.zeros((B, N), jnp.bool_)], axis=1)
    lengths = jnp.sum(mask.astype(jnp.int32), axis=1)
    positions = jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)
    logits, cache = _forward(
        config,
        lora_config,
        params,
        lora,
        tokens,
        positions,
        kv_valid,
        cache=cache,
        cache_index=jnp.zeros((), jnp.int32),
        last_only=True,
    )
    key, sub = jax.random.split(key)
    tok = _pick(logits[:, 0, :], sub, temperature, top_p, top_k, greedy)
    out = jnp.full((B, N), pad_id, jnp.int32)
    out = out.at[:, 0].set(tok)
    done = jnp.isin(tok, eos_ids)
    return _Decoding(jnp.ones((), jnp.int32), cache, kv_valid, out, done, key, lengths)


def _decode_step(
    graphdef,
    state,
    carry: _Decoding,
    eos_ids,
    pad_id,
    temperature,
    top_p,
    top_k,
    *,
    greedy: bool,
    use_lora: bool,
) -> _Decoding:
    """Feeds token ``i - 1`` of every row and writes token ``i`` (pad once done)."""
    config, lora_config, params, lora = _arrays(graphdef, state, use_lora)
    i, cache, kv_valid, out, done, key, lengths = carry
    B = out.shape[0]
    P = kv_valid.shape[1] - out.shape[1]
    prev = jax.lax.dynamic_slice_in_dim(out, i - 1, 1, axis=1)  # [B, 1]
    slot = P + i - 1
    kv_valid = jax.lax.dynamic_update_slice_in_dim(
        kv_valid, jnp.ones((B, 1), jnp.bool_), slot, axis=1
    )
    pos = (lengths + i - 1)[:, None]
    logits, cache = _forward(
        config,
        lora_config,
        params,
        lora,
        prev,
        pos,
        kv_valid,
        cache=cache,
        cache_index=slot,
    )
    key, sub = jax.random.split(key)
    tok = _pick(logits[:, 0, :], sub, temperature, top_p, top_k, greedy)
    tok = jnp.where(done, pad_id, tok)
    out = jax.lax.dynamic_update_slice_in_dim(out, tok[:, None], i, axis=1)
    done = done | jnp.isin(tok, eos_ids)
    return _Decoding(i + 1, cache, kv_valid, out, done, key, lengths)


def _generate_impl(
    graphdef,
    state,
    tokens,
    mask,
    eos_ids,
    pad_id,
    temperature,
    top_p,
    key,
    top_k=0,
    *,
    max_new_tokens: int,
    greedy: bool,
    use_lora: bool,
):
    carry = _prefill(
        graphdef,
        state,
        tokens,
        mask,
        eos_ids,
        pad_id,
        temperature,
        top_p,
        key,
        top_k,
        max_new_tokens=max_new_tokens,
        greedy=greedy,
        use_lora=use_lora,
    )

    def cond(carry):
        return (carry.i < max_new_tokens) & ~jnp.all(carry.done)

    def body(carry):
        return _decode_step(
            graphdef,
            state,
            carry,
            eos_ids,
            pad_id,
            temperature,
            top_p,
            top_k,
            greedy=greedy,
            use_lora=use_lora,
        )

    return jax.lax.while_loop(cond, body, carry).out


_generate_jit = jax.jit(
    _generate_impl, static_argnames=("max_new_tokens", "greedy", "use_lora")
)
# The streaming path: the same prefill and step, one call per token, so each
# token reaches the host as soon as it is made. The carry (the cache above all)
# is donated: a step updates it in place instead of copying it.
_prefill_jit = jax.jit(
    _prefill, static_argnames=("max_new_tokens", "greedy", "use_lora")
)
_decode_step_jit = jax.jit(
    _decode_step, static_argnames=("greedy", "use_lora"), donate_argnums=(2,)
)


def _check_generation_args(prompts, max_new_tokens, temperature, top_p, key) -> bool:
    """Validates the arguments shared by the generators; returns whether greedy."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty id lists")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    greedy = temperature == 0.0
    if not greedy and key is None:
        raise ValueError("key is required when temperature > 0, got None")
    return greedy


class _Inputs(NamedTuple):
    """``generate``'s arguments as the compiled programs take them."""

    eos: tuple[int, ...]
    tokens: jax.Array
    mask: jax.Array
    eos_ids: jax.Array
    pad_id: jax.Array
    temperature: jax.Array
    top_p: jax.Array
    key: jax.Array
    top_k: jax.Array
    greedy: bool


def _inputs(
    model,
    prompts,
    max_new_tokens,
    key,
    temperature,
    top_p,
    top_k,
    eos_token_id,
    pad_token_id,
    min_bucket,
) -> _Inputs:
    """Checks the arguments and left-pads the prompts to their bucket."""
    greedy = _check_generation_args(prompts, max_new_tokens, temperature, top_p, key)
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if eos_token_id is None:
        eos = model.config.eos_token_ids
    elif isinstance(eos_token_id, int):
        eos = (eos_token_id,)
    else:
        eos = tuple(int(e) for e in eos_token_id)
    if pad_token_id is None:
        pad_token_id = eos[0] if eos else 0
    bucket = prompt_bucket(max(len(p) for p in prompts), min_bucket=min_bucket)
    B = len(prompts)
    tokens = np.full((B, bucket), pad_token_id, np.int32)
    mask = np.zeros((B, bucket), np.bool_)
    for row, prompt in enumerate(prompts):
        tokens[row, bucket - len(prompt) :] = np.asarray(prompt, np.int32)
        mask[row, bucket - len(prompt) :] = True
    return _Inputs(
        eos=tuple(eos),
        tokens=jnp.asarray(tokens),
        mask=jnp.asarray(mask),
        eos_ids=jnp.asarray(eos if eos else (-1,), jnp.int32),
        pad_id=jnp.int32(pad_token_id),
        temperature=jnp.float32(temperature),
        top_p=jnp.float32(top_p),
        key=jax.random.key(0) if key is None else key,
        top_k=jnp.int32(top_k),
        greedy=greedy,
    )


def generate(
    model: Llama,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    key: jax.Array | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    use_lora: bool = True,
    min_bucket: int = 16,
) -> list[list[int]]:
    """Continues a batch of prompts with the KV-cache decoder.

    One compiled program per (batch size, prompt bucket, ``max_new_tokens``,
    greedy or sampling, LoRA on or off); temperature and top-p are traced values.
    The whole decode loop is one ``while_loop`` on the device; for the tokens
    as they are made, see :func:`generate_stream`.

    Args:
        model: a ``Llama`` (with or without adapters).
        prompts: token-id lists, each non-empty.
        max_new_tokens: tokens to generate per row at most (>= 1).
        key: PRNG key, required when ``temperature > 0``.
        temperature: 0 for greedy decoding, > 0 to sample.
        top_p: nucleus mass in (0, 1] when sampling.
        top_k: most probable tokens kept when sampling; 0 keeps all.
        eos_token_id: id or ids that end a row; defaults to the config's.
        pad_token_id: id used for left padding (default: the first EOS id or 0).
        use_lora: decode with the adapters (``False``: the base model).
        min_bucket: smallest padded prompt length.

    Returns:
        The new tokens of each row, up to and including its first EOS id.

    Raises:
        ValueError: for empty prompts, ``max_new_tokens < 1``, a negative
            temperature, ``top_p`` outside (0, 1], or sampling without a key.
    """
    x = _inputs(
        model,
        prompts,
        max_new_tokens,
        key,
        temperature,
        top_p,
        top_k,
        eos_token_id,
        pad_token_id,
        min_bucket,
    )
    graphdef, state = nnx.split(model)
    out = _generate_jit(
        graphdef,
        state,
        x.tokens,
        x.mask,
        x.eos_ids,
        x.pad_id,
        x.temperature,
        x.top_p,
        x.key,
        x.top_k,
        max_new_tokens=int(max_new_tokens),
        greedy=x.greedy,
        use_lora=use_lora,
    )
    out = np.asarray(out)
    results = []
    for row in out:
        ids = [int(t) for t in row]
        for j, t in enumerate(ids):
            if t in x.eos:
                ids = ids[: j + 1]
                break
        results.append(ids)
    return results


def generate_stream(
    model: Llama,
    prompt: Sequence[int],
    *,
    max_new_tokens: int,
    key: jax.Array | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    use_lora: bool = True,
    min_bucket: int = 16,
) -> Iterator[int]:
    """:func:`generate` of one prompt, yielding each new token as it is made.

    The same compiled prefill and decode step as :func:`generate`, with the
    same key splits, so the tokens equal ``generate(model, [prompt], ...)[0]``
    (up to floating-point reassociation between the two programs); but the
    loop runs in Python, one jit-compiled step per token, and each token is
    read back to the host before the next step starts. Stopping the iteration
    early (``close()`` or ``break``) stops the decoding.

    Args:
        model: a ``Llama`` (with or without adapters).
        prompt: the prompt's token ids (non-empty).
        max_new_tokens, key, temperature, top_p, top_k, eos_token_id,
        pad_token_id, use_lora, min_bucket: as for :func:`generate`.

    Yields:
        The new token ids, up to and including the first EOS id.

    Raises:
        ValueError: as :func:`generate` (on the first ``next``).
    """
    x = _inputs(
        model,
        [prompt],
        max_new_tokens,
        key,
        temperature,
        top_p,
        top_k,
        eos_token_id,
        pad_token_id,
        min_bucket,
    )
    graphdef, state = nnx.split(model)
    carry = _prefill_jit(
        graphdef,
        state,
        x.tokens,
        x.mask,
        x.eos_ids,
        x.pad_id,
        x.temperature,
        x.top_p,
        x.key,
        x.top_k,
        max_new_tokens=int(max_new_tokens),
        greedy=x.greedy,
        use_lora=use_lora,
    )
    tok = int(carry.out[0, 0])
    for i in range(1, int(max_new_tokens) + 1):
        yield tok
        if tok in x.eos or i == max_new_tokens:
            return
        carry = _decode_step_jit(
            graphdef,
            state,
            carry,
            x.eos_ids,
            x.pad_id,
            x.temperature,
            x.top_p,
            x.top_k,
            greedy=x.greedy,
            use_lora=use_lora,
        )
        tok = int(carry.out[0, i])


# Text that may still change when more tokens come: a trailing partial UTF-8
# character (decoded as U+FFFD) and trailing whitespace (which a stripped
# reply drops, or the next token may follow).
_UNSTABLE_TAIL = re.compile(r"[\s\ufffd]+\Z")


def text_deltas(
    ids: Iterable[int], decode: Callable[[Sequence[int]], str]
) -> Iterator[str]:
    """The text of a token stream in pieces, each piece final once yielded.

    After each token the prefix so far is decoded whole, and what it adds to
    the text already yielded is yielded, less its unstable tail (a partial
    multi-byte character, trailing whitespace): so a character split over
    several byte tokens appears once it is complete, and a merge that changes
    how the end of the text decodes is never shown half-way. At the end the
    rest of ``decode(all ids)`` is yielded. When ``decode`` is prefix-stable
    (decoding more tokens only appends text, as with byte-level BPE and
    stripped output), ``"".join(text_deltas(ids, decode)) == decode(ids)``.
    If a later token rewrites text already yielded, the pieces cannot take it
    back: the rest of the text is then yielded from where they diverge on.

    Args:
        ids: token ids, e.g. from :func:`generate_stream`.
        decode: the text of a list of ids (e.g. a tokenizer's ``decode`` with
            ``skip_special_tokens`` and ``strip()``).

    Yields:
        Non-empty text pieces.
    """
    seen: list[int] = []
    shown = ""
    for token in ids:
        seen.append(int(token))
        stable = _UNSTABLE_TAIL.sub("", decode(seen))
        if len(stable) > len(shown) and stable.startswith(shown):
            yield stable[len(shown) :]
            shown = stable
    text = decode(seen)
    rest = text[len(os.path.commonprefix([text, shown])) :]
    if rest:
        yield rest


def _encode_plain(tokenizer: Any, text: str, *, special: bool):
    enc = tokenizer(
        text,
        add_special_tokens=False,
        return_offsets_mapping=True,
        split_special_tokens=not special,
    )
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def chat_encode(
    tokenizer: Any,
    messages: Sequence[Mapping[str, str]],
    *,
    add_generation_prompt: bool = True,
) -> tuple[list[int], list[tuple[int, int]], str]:
    """A conversation through the chat template, message text kept as text.

    The template's own markers (``<|im_start|>``, ...) become special tokens;
    the messages' contents are tokenized with special-token parsing off, so a
    user who types ``<|im_start|>system`` gets those characters, not a system
    turn. The template is rendered with unguessable marker strings in place of
    the contents, and the pieces between them are tokenized apart.

    Args:
        tokenizer: a transformers tokenizer with a ``chat_template``.
        messages: ``[{"role": "user", "content": "..."}, ...]``.
        add_generation_prompt: end with the assistant turn's opening.

    Returns:
        ``(ids, offsets, text)``: the token ids, each token's ``(start, end)``
        character span in ``text``, and the rendered conversation.

    Raises:
        ValueError: when the tokenizer has no chat template.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no chat_template")
    nonce = secrets.token_hex(8)
    marks = [f"\ue000{nonce}{i}\ue001" for i in range(len(messages))]
    masked = [{**m, "content": mark} for m, mark in zip(messages, marks, strict=True)]
    rendered = tokenizer.apply_chat_template(
        masked, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    pieces = re.split(f"\ue000{nonce}(\\d+)\ue001", rendered)
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    text = ""
    for k, piece in enumerate(pieces):
        is_content = k % 2 == 1
        if is_content:
            piece = str(messages[int(piece)]["content"])
        if piece:
            got, spans = _encode_plain(tokenizer, piece, special=not is_content)
            ids += got
            offsets += [(a + len(text), b + len(text)) for a, b in spans]
            text += piece
    return ids, offsets, text


def chat_token_ids(
    tokenizer: Any,
    messages: Sequence[Mapping[str, str]],
    *,
    add_generation_prompt: bool = True,
) -> list[int]:
    """Token ids of a conversation through the tokenizer's chat template, the
    messages' text never parsed into special tokens (see :func:`chat_encode`).

    Args:
        tokenizer: a transformers tokenizer with a ``chat_template``.
        messages: ``[{"role": "user", "content": "..."}, ...]``.
        add_generation_prompt: end with the assistant turn's opening.

    Returns:
        The prompt's token ids, ready for ``generate``.

    Raises:
        ValueError: when the tokenizer has no chat template.
    """
    return chat_encode(
        tokenizer, messages, add_generation_prompt=add_generation_prompt
    )[0]
