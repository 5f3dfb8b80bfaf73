"""The glyph network's update: REINFORCE on the joint policy ``pi(z) p(x | z)``.

A glyph is sampled in two stages: the style latent ``z ~ N(mu, sigma^2)`` from the
style policy, then the image ``x ~ N(decoder(z), tau^2 I)`` (pixel noise ``tau``).
The log-probability of a rated glyph is therefore
``log pi(z) + log p(x | z)``, and one REINFORCE loss trains the policy (through
``log pi(z)``) and the fine-tuned decoder layers (through ``log p(x | z)``) with the
same advantage. This module only wires objectives from ``ol_jax.objectives`` to
the glyph model; the math lives there.

Recent feedback is kept in a fixed-size window in the state. Every update uses the
whole window, each item weighted by its recency (``0.5 ** (age / half_life)``) and
by the stream's confidence weight, so an old contradicting rating fades instead of
making the policy oscillate.

Only the last decoder layers are fine-tuned and ``z`` is a sample (no gradient flows
into it), so the frozen first layers' output for a rated glyph never changes: the
window keeps it (:func:`ol_jax.models.glyph_stage`, a vector per glyph) and each
update decodes the whole window from there in one batched pass
(:func:`ol_jax.models.decode_glyph_from`), the same math as decoding from ``z``.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ol_jax import objectives
from ol_jax.core import merge_params
from ol_jax.models import GlyphConfig, decode_glyph_from, glyph_stage


class GlyphLossConfig(NamedTuple):
    """Static settings of the glyph loss (closed over, never traced)."""

    model: GlyphConfig
    pixel_noise_std: float
    recency_half_life: float
    entropy_coef: float
    min_log_std: float
    baseline_decay: float
    min_confidence: float = 0.1


def decoder_stage(finetune_layers) -> int | None:
    """The :func:`ol_jax.models.glyph_stage` a window keeps for these trained layers.

    The first fine-tuned decoder layer ``k`` (``decoder.<k>``) bounds it: the stage
    is ``min(k, 3)``. ``None`` when no decoder layer is trained (the pixel term of
    the loss then has no parameters and is skipped).
    """
    layers = []
    for name in finetune_layers:
        parts = name.split(".")
        if parts[0] != "decoder":
            continue
        layers.append(int(parts[1]) if len(parts) > 1 else 0)
    return min(min(layers), 3) if layers else None


def _stage_width(model: GlyphConfig, stage: int | None) -> int:
    if stage is None:
        return 0
    return (model.style_z_dim, *model.hidden)[stage]


def empty_window(
    size: int, model: GlyphConfig, stage: int | None = None
) -> dict[str, Any]:
    """A window of ``size`` feedback slots, all empty."""
    return {
        "z": jnp.zeros((size, model.style_z_dim), jnp.float32),
        "head": jnp.zeros((size, _stage_width(model, stage)), jnp.float32),
        "image": jnp.zeros((size, model.image_size, model.image_size), jnp.float32),
        "reward": jnp.zeros((size,), jnp.float32),
        "time": jnp.zeros((size,), jnp.int32),
        "valid": jnp.zeros((size,), jnp.bool_),
        "cursor": jnp.zeros((), jnp.int32),
    }


def initial_extras(
    window: int, model: GlyphConfig, stage: int | None = None
) -> dict[str, Any]:
    """Extras of a fresh glyph state: reward baseline, spread and the window."""
    return {
        "baseline": jnp.zeros((), jnp.float32),
        "spread": jnp.ones((), jnp.float32),
        "window": empty_window(window, model, stage),
    }


def insert_feedback(window: dict[str, Any], batch: dict[str, Any], time: jax.Array):
    """Writes the valid rows of ``batch`` into the ring ``window`` at ``time``.

    Rows are written in order from ``cursor``; invalid (padding) rows write
    nothing and do not advance the cursor. With more valid rows than slots the
    ring wraps and the last row written to a slot is the one kept.
    """
    size = window["valid"].shape[0]
    valid = batch["valid"]
    offsets = jnp.cumsum(valid.astype(jnp.int32)) - 1
    slots = jnp.where(valid, (window["cursor"] + offsets) % size, size)  # size: drop
    n = valid.shape[0]
    later = jnp.arange(n)[None, :] > jnp.arange(n)[:, None]
    overwritten = jnp.any((slots[:, None] == slots[None, :]) & later, axis=1)
    slots = jnp.where(overwritten, size, slots)  # one writer per slot

    def put(buf, rows):
        return buf.at[slots].set(rows.astype(buf.dtype), mode="drop")

    # The stage rows feed the per-pixel layers: written by a one-hot matrix
    # product rather than a scatter, so XLA's CPU backend materialises them once
    # instead of redoing the ring-buffer write inside every per-pixel element.
    onehot = (slots[:, None] == jnp.arange(size)[None, :]).astype(jnp.float32)
    rows = jnp.where((slots < size)[:, None], batch["head"].astype(jnp.float32), 0.0)
    head = window["head"] * (1.0 - jnp.sum(onehot, axis=0))[:, None] + jnp.dot(
        onehot.T, rows
    )
    return {
        "z": put(window["z"], batch["z"]),
        "head": head.astype(window["head"].dtype),
        "image": put(window["image"], batch["image"]),
        "reward": put(window["reward"], batch["reward"]),
        "time": put(window["time"], jnp.broadcast_to(time, (n,))),
        "valid": put(window["valid"], jnp.ones((n,), jnp.bool_)),
        "cursor": (window["cursor"] + jnp.sum(valid.astype(jnp.int32))) % size,
    }


def _stream_stats(extras, batch, decay):
    """Baseline and spread after the batch's rewards, one EMA step per reward."""

    def one(carry, row):
        b, s = carry
        r, v = row
        nb = objectives.ema_baseline(b, r, decay)
        ns = objectives.ema_baseline(s, jnp.abs(r - b), decay)
        return (jnp.where(v, nb, b), jnp.where(v, ns, s)), None

    (b, s), _ = jax.lax.scan(
        one, (extras["baseline"], extras["spread"]), (batch["reward"], batch["valid"])
    )
    return b, s


def _trained_stage(params) -> int | None:
    """:func:`decoder_stage` of the decoder layers present in ``params``."""
    return decoder_stage([f"decoder.{k}" for k in params.get("decoder", {})])


def glyph_loss(cfg: GlyphLossConfig):
    """Builds ``loss_fn(params, batch, *, frozen, extras, key)`` for ``make_step``.

    ``L = sum_i w_i * [-A_i (log pi(z_i) + log p(x_i | z_i))] / max(sum_i w_i, 1)
    - beta H(pi)`` over the window after inserting the batch, where
    ``A_i = r_i - b`` (baseline ``b`` from before this batch),
    ``w_i = 0.5 ** (age_i / h) * c_i`` and ``c_i`` is the confidence weight.
    ``log p(x | z) = log N(x; decoder(z), tau^2 I)`` is decoded for the whole
    window at once from the stage values it keeps; the batch's own stage values
    are returned in ``aux["head"]`` for :func:`glyph_extras_update`.

    References:
      Williams, `Simple statistical gradient-following algorithms for connectionist
      reinforcement learning <https://doi.org/10.1007/BF00992696>`_, 1992.
    """
    pixel_log_std = float(jnp.log(cfg.pixel_noise_std))

    def loss_fn(params, batch, *, frozen, extras, key):
        del key
        merged = merge_params(params, frozen)
        stage = _trained_stage(params)
        if stage is None:
            head = jnp.zeros(batch["z"].shape[:1] + (0,), jnp.float32)
        else:
            # Frozen layers only: the stage values carry no gradient.
            head = glyph_stage(merged["decoder"], batch["z"], stage=stage)
            head = jax.lax.stop_gradient(head)
        window = insert_feedback(
            extras["window"], {**batch, "head": head}, batch["time"]
        )
        policy = params["policy"]
        b, s = extras["baseline"], extras["spread"]

        def item(z, reward, time, valid):
            log_pi = objectives.gaussian_log_prob(
                z, policy["mean"], policy["log_std"], min_log_std=cfg.min_log_std
            )
            weight = objectives.recency_weights(
                batch["time"] - time, cfg.recency_half_life
            ) * objectives.confidence_weight(
                reward, b, s, min_weight=cfg.min_confidence
            )
            return log_pi, jnp.where(valid, weight, 0.0)

        log_p, weights = jax.vmap(item)(
            window["z"], window["reward"], window["time"], window["valid"]
        )
        if stage is not None:
            mean_images = decode_glyph_from(
                merged["decoder"], window["head"], cfg.model, stage=stage
            )
            log_p = log_p + jax.vmap(
                lambda x, mu: objectives.gaussian_log_prob(
                    x,
                    mu,
                    jnp.full_like(mu, pixel_log_std),
                    min_log_std=min(pixel_log_std, cfg.min_log_std),
                )
            )(window["image"], mean_images)
        advantage = jax.lax.stop_gradient(window["reward"] - b)
        losses = -jax.lax.stop_gradient(weights) * advantage * log_p
        entropy = objectives.gaussian_entropy(
            policy["log_std"], min_log_std=cfg.min_log_std
        )
        norm = jnp.maximum(jnp.sum(weights), 1.0)
        loss = jnp.sum(losses) / norm - cfg.entropy_coef * entropy
        return loss, {"baseline": b, "weight_sum": jnp.sum(weights), "head": head}

    return loss_fn


def glyph_extras_update(cfg: GlyphLossConfig):
    """Builds ``extras_update(extras, batch, aux)``: window insert, baseline, spread.

    The batch's stage values come from the loss (``aux["head"]``).
    """

    def update(extras, batch, aux):
        b, s = _stream_stats(extras, batch, cfg.baseline_decay)
        return {
            "baseline": b,
            "spread": s,
            "window": insert_feedback(
                extras["window"], {**batch, "head": aux["head"]}, batch["time"]
            ),
        }

    return update


def glyph_params_stats(params) -> dict[str, jax.Array]:
    """Weight statistics logged with every version (min, max, mean, std)."""
    flat = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(params)])
    return {
        "weight_min": jnp.min(flat),
        "weight_max": jnp.max(flat),
        "weight_mean": jnp.mean(flat),
        "weight_std": jnp.std(flat),
    }
