"""The chat learner's update and scoring functions, composed from ``ol_jax.objectives``.

One turn's batch is one right-padded token sequence (no batch axis; the loss is
written for a single example as the objectives are):

* ``tokens [T + 1]`` int32: the training text, then padding;
* ``weights [T]`` float32: importance weight of each target token ``tokens[1:]``;
* ``mask [T]`` float32: 1 on real target tokens, 0 on padding;
* ``kl_lambda``, ``task_lambda`` float32 scalars: the turn's loss weights, data
  rather than constants, so changing them does not recompile.

A fact turn may train on several sequences at once (the statement and its
question form, :func:`turn_batches`): ``tokens [R, T + 1]``, ``weights`` and
``mask [R, T]``, and the loss is the mean of the per-row losses.

The loss is

    L = task_lambda * sum_t w_t m_t CE_t / sum_t w_t m_t
        + kl_lambda * mean_{t: m_t} KL(p_base(. | x_<t) || p_adapted(. | x_<t)),

with the base logits from the same weights with the adapters off. Padding at the
end of a causal sequence never changes the logits before it, so no attention
mask is needed.

References:
    Hu et al., `LoRA: Low-Rank Adaptation of Large Language Models
    <https://arxiv.org/abs/2106.09685>`_, 2021.
    Hinton et al., `Distilling the knowledge in a neural network
    <https://arxiv.org/abs/1503.02531>`_, 2015 (the KL to the base as
    self-distillation).
    Allen-Zhu & Li, `Physics of Language Models: Part 3.1, Knowledge Storage and
    Extraction <https://arxiv.org/abs/2309.14316>`_, 2023 (question-form rows).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ol_jax.models import llama_apply, llama_apply_with_reference
from ol_jax.objectives import token_cross_entropy, token_kl


def bucket_length(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket ``>= length``, or the largest bucket when none fits."""
    for b in buckets:
        if length <= b:
            return int(b)
    return int(buckets[-1])


def turn_batch(
    ids: Sequence[int],
    weights: np.ndarray,
    *,
    buckets: Sequence[int],
    pad_id: int,
    kl_lambda: float,
    task_lambda: float,
) -> dict[str, np.ndarray]:
    """Pads one training sequence to its bucket (see the module docstring).

    ``weights`` has one entry per token of ``ids``; the weight of token ``i`` scales
    the loss of predicting it, so ``weights[0]`` (nothing predicts the first token)
    is dropped. A sequence longer than the largest bucket keeps its last tokens.
    """
    ids = np.asarray(ids, np.int32)
    weights = np.asarray(weights, np.float32)
    if ids.ndim != 1 or ids.shape != weights.shape:
        raise ValueError(
            f"ids and weights must be 1-D of equal length, got {ids.shape} and "
            f"{weights.shape}"
        )
    if len(ids) < 2:
        raise ValueError(f"a training sequence needs >= 2 tokens, got {len(ids)}")
    T = bucket_length(len(ids) - 1, buckets)
    ids, weights = ids[-(T + 1) :], weights[-(T + 1) :]
    n = len(ids) - 1
    tokens = np.full((T + 1,), pad_id, np.int32)
    tokens[: n + 1] = ids
    w = np.zeros((T,), np.float32)
    w[:n] = weights[1:]
    mask = np.zeros((T,), np.float32)
    mask[:n] = 1.0
    return {
        "tokens": tokens,
        "weights": w,
        "mask": mask,
        "kl_lambda": np.float32(kl_lambda),
        "task_lambda": np.float32(task_lambda),
    }


def turn_batches(
    rows: Sequence[tuple[Sequence[int], np.ndarray]],
    *,
    buckets: Sequence[int],
    pad_id: int,
    kl_lambda: float,
    task_lambda: float,
) -> dict[str, np.ndarray]:
    """Several ``(ids, weights)`` sequences of one update as a ``[R, ...]`` batch.

    Every row is padded (as :func:`turn_batch` does) to the bucket of the longest
    one, so ``tokens [R, T + 1]``, ``weights [R, T]``, ``mask [R, T]``; the loss
    weights stay scalars.
    """
    if not rows:
        raise ValueError("rows must hold at least one sequence, got []")
    T = bucket_length(max(len(ids) for ids, _ in rows) - 1, buckets)
    out = [
        turn_batch(
            ids,
            w,
            buckets=(T,),
            pad_id=pad_id,
            kl_lambda=kl_lambda,
            task_lambda=task_lambda,
        )
        for ids, w in rows
    ]
    stacked = {k: np.stack([b[k] for b in out]) for k in ("tokens", "weights", "mask")}
    return {
        **stacked,
        "kl_lambda": np.float32(kl_lambda),
        "task_lambda": np.float32(task_lambda),
    }


def chat_turn_loss(
    graphdef: Any, *, dropout: bool, on_trace: Callable[[], None] | None = None
) -> Callable[..., Any]:
    """The turn loss ``loss_fn(lora, batch, *, frozen, extras, key)`` for ``make_step``.

    Args:
      graphdef: the model's graph (``split_lora``).
      dropout: pass the step's key to the model for LoRA dropout.
      on_trace: called each time the loss is traced (a compile counter).

    With ``rehearsal_tokens [K, T' + 1]``, ``rehearsal_mask [K, T']`` and a
    ``rehearsal_lambda`` scalar in the batch, ``L`` adds ``rehearsal_lambda`` times
    the mean ``KL(base || adapted)`` over the masked rehearsal positions
    (``training.loss.rehearsal_*``), reported as ``rehearsal_kl``. With
    ``rehearsal_base_logits [K, T', V]`` (the frozen base's logits on those rows,
    computed once) only the adapted pass runs; without, both in one pass.

    Returns:
      A loss returning ``(L, {"ce": CE_w, "kl": KL[, "rehearsal_kl"]})``.
    """

    def loss_fn(lora, batch, *, frozen, extras, key):
        del extras
        if on_trace is not None:
            on_trace()
        inputs, targets = batch["tokens"][..., :-1], batch["tokens"][..., 1:]
        # Base and adapted logits in one pass over the base weights; the base
        # logits carry no gradient.
        base, logits = llama_apply_with_reference(
            graphdef, lora, inputs, frozen=frozen, key=key if dropout else None
        )
        if inputs.ndim == 2:
            # Several rows of one update: the mean of the per-row losses.
            ce = jnp.mean(
                jax.vmap(
                    lambda lg, t, w, m: token_cross_entropy(lg, t, weights=w, mask=m)
                )(logits, targets, batch["weights"], batch["mask"])
            )
            kl = jnp.mean(
                jax.vmap(lambda b, a, m: token_kl(b, a, mask=m))(
                    base, logits, batch["mask"]
                )
            )
        else:
            ce = token_cross_entropy(
                logits, targets, weights=batch["weights"], mask=batch["mask"]
            )
            kl = token_kl(base, logits, mask=batch["mask"])
        loss = batch["task_lambda"] * ce + batch["kl_lambda"] * kl
        aux = {"ce": ce, "kl": kl}
        if "rehearsal_tokens" in batch:
            r_inputs = batch["rehearsal_tokens"][:, :-1]
            r_key = jax.random.fold_in(key, 1) if dropout else None
            if "rehearsal_base_logits" in batch:
                r_base = batch["rehearsal_base_logits"]
                r_logits = llama_apply(
                    graphdef, lora, r_inputs, frozen=frozen, key=r_key
                )
            else:
                r_base, r_logits = llama_apply_with_reference(
                    graphdef, lora, r_inputs, frozen=frozen, key=r_key
                )
            aux["rehearsal_kl"] = jnp.mean(
                jax.vmap(lambda b, a, m: token_kl(b, a, mask=m))(
                    r_base, r_logits, batch["rehearsal_mask"]
                )
            )
            loss = loss + batch["rehearsal_lambda"] * aux["rehearsal_kl"]
        return loss, aux

    return loss_fn


def _score(graphdef, lora, frozen, tokens, mask, *, with_kl: bool):
    """Per-row log-likelihood of the masked targets (and KL to the base)."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    if with_kl:
        base, logits = llama_apply_with_reference(graphdef, lora, inputs, frozen=frozen)
    else:
        logits = llama_apply(graphdef, lora, inputs, frozen=frozen)
    logp = jax.nn.log_softmax(logits, axis=-1)
    safe = jnp.where(mask > 0, targets, 0)
    picked = jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    out = {
        "log_prob": jnp.sum(picked * mask, axis=-1),
        "count": jnp.sum(mask, axis=-1),
    }
    if with_kl:
        out["kl"] = jax.vmap(lambda b, a, m: token_kl(b, a, mask=m))(base, logits, mask)
    return out


_score_jit = jax.jit(_score, static_argnames=("with_kl",))


def score_sequences(graphdef, lora, frozen, tokens, mask, *, with_kl: bool = False):
    """Scores right-padded sequences under the adapted model (one compiled program
    per shape).

    ``log_prob[b] = sum_t mask[b, t] log p(tokens[b, t + 1] | tokens[b, :t + 1])``.

    Args:
      graphdef, lora, frozen: the model (``split_lora``).
      tokens: ``[B, T + 1]`` int32 ids.
      mask: ``[B, T]`` float32, 1 where ``tokens[:, 1:]`` is scored.
      with_kl: also the mean ``KL(base || adapted)`` over the masked positions.

    Returns:
      ``{"log_prob": [B], "count": [B]}`` (sum of target log-probabilities and
      number of scored tokens), plus ``"kl": [B]`` with ``with_kl``.
    """
    return _score_jit(
        graphdef, lora, frozen, jnp.asarray(tokens), jnp.asarray(mask), with_kl=with_kl
    )


def padded_rows(
    rows: Sequence[tuple[Sequence[int], int]], *, buckets: Sequence[int], pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pads ``(ids, first_scored)`` rows to one bucket for ``score_sequences``.

    Row ``i`` scores tokens ``ids[first_scored:]`` (``first_scored >= 1``).
    """
    longest = max(len(ids) for ids, _ in rows)
    T = bucket_length(longest - 1, buckets)
    tokens = np.full((len(rows), T + 1), pad_id, np.int32)
    mask = np.zeros((len(rows), T), np.float32)
    for r, (ids, first) in enumerate(rows):
        ids = list(ids)[: T + 1]
        tokens[r, : len(ids)] = ids
        mask[r, max(first, 1) - 1 : len(ids) - 1] = 1.0
    return tokens, mask
