"""Many LoRA adapters over one frozen Llama base: generation with one adapter per row.

``K`` adapters of one shape are stacked on a leading adapter axis (as
``ol_jax.core.stack_states`` stacks the states that hold them); a batch of
prompts from different users is decoded in one compiled call, row ``b`` with
adapter ``id_b``:

    y_b = x_b W + (alpha / r) x_b A_{id_b} B_{id_b}.

The KV-cache decoder of ``generate`` is vmapped over the rows with the base
weights shared (not copied per row), so the base products of all rows batch into
one matrix multiply, and each row samples with its own key ``fold_in(key, b)``.
Row ``b`` therefore produces exactly what ``generate`` gives for that adapter and
prompt alone with that key.

References:
    Hu et al., `LoRA: Low-Rank Adaptation of Large Language Models
    <https://arxiv.org/abs/2106.09685>`_, 2021.
    Sheng et al., `S-LoRA: Serving Thousands of Concurrent LoRA Adapters
    <https://arxiv.org/abs/2311.03285>`_, 2023 (one base, per-row adapters).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ol_jax.models._generate import (
    _check_generation_args,
    _generate_impl,
    prompt_bucket,
)
from ol_jax.models._llama import Llama, split_lora

__all__ = ["generate_multi_lora"]


def _rows_impl(
    graphdef,
    base,
    adapters,
    adapter_ids,
    tokens,
    mask,
    eos_ids,
    pad_id,
    temperature,
    top_p,
    key,
    *,
    max_new_tokens: int,
    greedy: bool,
):
    rows = jax.tree.map(lambda x: x[adapter_ids], adapters)
    keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(
        jnp.arange(tokens.shape[0], dtype=jnp.int32)
    )

    def one(lora, row_tokens, row_mask, row_key):
        out = _generate_impl(
            graphdef,
            nnx.merge_state(base, lora),
            row_tokens[None],
            row_mask[None],
            eos_ids,
            pad_id,
            temperature,
            top_p,
            row_key,
            max_new_tokens=max_new_tokens,
            greedy=greedy,
            use_lora=True,
        )
        return out[0]

    return jax.vmap(one)(rows, tokens, mask, keys)


_rows_jit = jax.jit(_rows_impl, static_argnames=("max_new_tokens", "greedy"))


def _check_adapters(lora: nnx.State, adapters: Any) -> tuple[nnx.State, int]:
    """``adapters`` as a state like ``lora`` with a leading axis ``K``; and ``K``."""
    want = nnx.to_pure_dict(lora)
    pure = nnx.to_pure_dict(adapters) if isinstance(adapters, nnx.State) else adapters
    if jax.tree.structure(pure) != jax.tree.structure(want):
        raise ValueError(
            f"adapters must have the model's LoRA structure {jax.tree.structure(want)}"
            f", got {jax.tree.structure(pure)}"
        )
    leaves, wants = jax.tree.leaves(pure), jax.tree.leaves(want)
    k = int(jnp.shape(leaves[0])[0]) if jnp.ndim(leaves[0]) else 0
    for got, w in zip(leaves, wants, strict=True):
        if tuple(jnp.shape(got)) != (k, *jnp.shape(w)):
            raise ValueError(
                f"every adapter leaf must have shape [K, *lora_shape] with one K, got "
                f"{list(jnp.shape(got))} for a LoRA leaf of shape {list(jnp.shape(w))}"
            )
    state = jax.tree.map(lambda x: x, lora)
    nnx.replace_by_pure_dict(
        state,
        jax.tree.map(lambda x, w: jnp.asarray(x, jnp.asarray(w).dtype), pure, want),
    )
    return state, k


def generate_multi_lora(
    model: Llama,
    adapters: Any,
    adapter_ids: Sequence[int],
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    key: jax.Array | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    min_bucket: int = 16,
) -> list[list[int]]:
    """Continues a batch of prompts, row ``b`` with adapter ``adapter_ids[b]``.

    The model's own base weights are shared by every row and its own adapter is
    ignored; ``adapters`` holds ``K`` adapters of the model's LoRA shape on a
    leading axis (``stacked.params`` of states stacked by
    ``ol_jax.core.stack_states``, or ``jax.tree.map(jnp.stack, ...)`` of
    ``split_lora`` states). Decoding is greedy or sampled as in ``generate``,
    row ``b`` with key ``fold_in(key, b)``: its tokens equal
    ``generate(model_b, [prompts[b]], key=fold_in(key, b), ...)`` for the model
    carrying adapter ``adapter_ids[b]`` (up to float rounding of the padded
    prompt length). One compiled program per (rows, prompt bucket,
    ``max_new_tokens``, greedy or sampling); the adapters and ids are data.

    Args:
        model: a ``Llama`` built with a ``lora_config``.
        adapters: ``K`` stacked adapters (an ``nnx.State`` or its pure dict) with
            leaves ``[K, *lora_leaf_shape]``.
        adapter_ids: one adapter index in ``0 .. K-1`` per prompt.
        prompts: token-id lists, each non-empty.
        max_new_tokens: tokens to generate per row at most (>= 1).
        key: PRNG key, required when ``temperature > 0``.
        temperature: 0 for greedy decoding, > 0 to sample.
        top_p: nucleus mass in (0, 1] when sampling.
        eos_token_id: id or ids that end a row; defaults to the config's.
        pad_token_id: id used for left padding (default: the first EOS id or 0).
        min_bucket: smallest padded prompt length.

    Returns:
        The new tokens of each row, up to and including its first EOS id.

    Raises:
        ValueError: a model without adapters, adapters of the wrong shape, ids
            outside ``0 .. K-1`` or not one per prompt, or the arguments
            ``generate`` rejects.

    References:
        Sheng et al., `S-LoRA: Serving Thousands of Concurrent LoRA Adapters
        <https://arxiv.org/abs/2311.03285>`_, 2023.
    """
    if model.lora_config is None:
        raise ValueError("model must have LoRA adapters (a lora_config), got None")
    greedy = _check_generation_args(prompts, max_new_tokens, temperature, top_p, key)
    graphdef, base, lora = split_lora(model)
    stacked, k = _check_adapters(lora, adapters)
    ids = np.asarray(adapter_ids)
    if ids.shape != (len(prompts),) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(
            f"adapter_ids must be {len(prompts)} ints (one per prompt), got "
            f"{list(adapter_ids)}"
        )
    if ids.min() < 0 or ids.max() >= k:
        raise ValueError(f"adapter_ids must lie in 0..{k - 1}, got {ids.tolist()}")
    if eos_token_id is None:
        eos = model.config.eos_token_ids
    elif isinstance(eos_token_id, int):
        eos = (eos_token_id,)
    else:
        eos = tuple(int(e) for e in eos_token_id)
    pad = (eos[0] if eos else 0) if pad_token_id is None else int(pad_token_id)
    bucket = prompt_bucket(max(len(p) for p in prompts), min_bucket=min_bucket)
    tokens = np.full((len(prompts), bucket), pad, np.int32)
    for row, prompt in enumerate(prompts):
        tokens[row, bucket - len(prompt) :] = np.asarray(prompt, np.int32)
    lengths = np.asarray([len(p) for p in prompts])
    mask = np.arange(bucket)[None, :] >= (bucket - lengths)[:, None]
    out = _rows_jit(
        graphdef,
        base,
        stacked,
        jnp.asarray(ids, jnp.int32),
        jnp.asarray(tokens),
        jnp.asarray(mask),
        jnp.asarray(eos if eos else (-1,), jnp.int32),
        jnp.int32(pad),
        jnp.float32(temperature),
        jnp.float32(top_p),
        jax.random.key(0) if key is None else key,
        max_new_tokens=int(max_new_tokens),
        greedy=greedy,
    )
    results = []
    for row in np.asarray(out).tolist():
        ends = [j for j, t in enumerate(row) if t in eos]
        results.append(row[: ends[0] + 1] if ends else row)
    return results
