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
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ol_jax import objectives
from ol_jax.core import merge_params
from ol_jax.models import GlyphConfig, decode_glyph


class GlyphLossConfig(NamedTuple):
    """Static settings of the glyph loss (closed over, never traced)."""

    model: GlyphConfig
    pixel_noise_std: float
    recency_half_life: float
    entropy_coef: float
    min_log_std: float
    baseline_decay: float
    min_confidence: float = 0.1


def empty_window(size: int, style_z_dim: int, image_size: int) -> dict[str, Any]:
    """A window of ``size`` feedback slots, all empty."""
    return {
        "z": jnp.zeros((size, style_z_dim), jnp.float32),
        "image": jnp.zeros((size, image_size, image_size), jnp.float32),
        "reward": jnp.zeros((size,), jnp.float32),
        "time": jnp.zeros((size,), jnp.int32),
        "valid": jnp.zeros((size,), jnp.bool_),
        "cursor": jnp.zeros((), jnp.int32),
    }


def initial_extras(window: int, style_z_dim: int, image_size: int) -> dict[str, Any]:
    """Extras of a fresh glyph state: reward baseline, spread and the window."""
    return {
        "baseline": jnp.zeros((), jnp.float32),
        "spread": jnp.ones((), jnp.float32),
        "window": empty_window(window, style_z_dim, image_size),
    }


def insert_feedback(window: dict[str, Any], batch: dict[str, Any], time: jax.Array):
    """Writes the valid rows of ``batch`` into the ring ``window`` at ``time``.

    Rows are written in order from ``cursor``; invalid (padding) rows write
    nothing and do not advance the cursor.
    """
    size = window["valid"].shape[0]
    valid = batch["valid"]
    offsets = jnp.cumsum(valid.astype(jnp.int32)) - 1
    slots = jnp.where(valid, (window["cursor"] + offsets) % size, size)  # size: drop

    def put(buf, rows):
        return buf.at[slots].set(rows.astype(buf.dtype), mode="drop")

    n = valid.shape[0]
    return {
        "z": put(window["z"], batch["z"]),
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


def glyph_loss(cfg: GlyphLossConfig):
    """Builds ``loss_fn(params, batch, *, frozen, extras, key)`` for ``make_step``.

    ``L = sum_i w_i * [-A_i (log pi(z_i) + log p(x_i | z_i))] / max(sum_i w_i, 1)
    - beta H(pi)`` over the window after inserting the batch, where
    ``A_i = r_i - b`` (baseline ``b`` from before this batch),
    ``w_i = 0.5 ** (age_i / h) * c_i`` and ``c_i`` is the confidence weight.

    References:
      Williams, `Simple statistical gradient-following algorithms for connectionist
      reinforcement learning <https://doi.org/10.1007/BF00992696>`_, 1992.
    """
    pixel_log_std = float(jnp.log(cfg.pixel_noise_std))

    def loss_fn(params, batch, *, frozen, extras, key):
        del key
        window = insert_feedback(extras["window"], batch, batch["time"])
        decoder = merge_params(params, frozen)["decoder"]
        policy = params["policy"]
        b, s = extras["baseline"], extras["spread"]

        def item_loss(z, image, reward, time, valid):
            mean_image = decode_glyph(decoder, z, cfg.model)
            log_p = objectives.gaussian_log_prob(
                z, policy["mean"], policy["log_std"], min_log_std=cfg.min_log_std
            ) + objectives.gaussian_log_prob(
                image,
                mean_image,
                jnp.full_like(mean_image, pixel_log_std),
                min_log_std=min(pixel_log_std, cfg.min_log_std),
            )
            weight = objectives.recency_weights(
                batch["time"] - time, cfg.recency_half_life
            ) * objectives.confidence_weight(
                reward, b, s, min_weight=cfg.min_confidence
            )
            weight = jnp.where(valid, weight, 0.0)
            advantage = jax.lax.stop_gradient(reward - b)
            return -jax.lax.stop_gradient(weight) * advantage * log_p, weight

        losses, weights = jax.vmap(item_loss)(
            window["z"],
            window["image"],
            window["reward"],
            window["time"],
            window["valid"],
        )
        entropy = objectives.gaussian_entropy(
            policy["log_std"], min_log_std=cfg.min_log_std
        )
        norm = jnp.maximum(jnp.sum(weights), 1.0)
        loss = jnp.sum(losses) / norm - cfg.entropy_coef * entropy
        return loss, {"baseline": b, "weight_sum": jnp.sum(weights)}

    return loss_fn


def glyph_extras_update(cfg: GlyphLossConfig):
    """Builds ``extras_update(extras, batch, aux)``: window insert, baseline, spread."""

    def update(extras, batch, aux):
        del aux
        b, s = _stream_stats(extras, batch, cfg.baseline_decay)
        return {
            "baseline": b,
            "spread": s,
            "window": insert_feedback(extras["window"], batch, batch["time"]),
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
