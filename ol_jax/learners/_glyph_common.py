"""What the single- and multi-network glyph learners share: the update rule, the
loss settings, rating validation and the layout of a version and its metadata."""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ol_jax.core import merge_params, online_optimizer
from ol_jax.learners._glyph_loss import GlyphLossConfig
from ol_jax.models import GlyphConfig, decode_glyph, sample_style_z
from ol_jax.objectives import normalize_rating
from ol_jax.store import NetworkConfig, OnlineLearningConfig

# Generated glyphs remembered for rating; older ones are forgotten first.
MAX_PENDING_GLYPHS = 10_000


def glyph_model_config(config: NetworkConfig) -> GlyphConfig:
    """The :class:`GlyphConfig` described by a network config."""
    m = config.model
    return GlyphConfig(
        style_z_dim=m.style_z_dim,
        image_size=m.image_size,
        hidden=tuple(m.hidden),
        coord_scale=m.coord_scale,
        stroke_sharpness=m.stroke_sharpness,
    )


def glyph_optimizer(ol: OnlineLearningConfig) -> optax.GradientTransformation:
    """The glyph network's update rule from its ``online_learning`` block."""
    return online_optimizer(
        ol.learning_rate,
        optimizer="adamw",
        clip_norm=ol.gradient_clip_norm,
        weight_decay=ol.weight_decay,
        clamp=tuple(ol.weight_clamp),
        lr_scales={
            "policy.log_std": ol.log_std_lr_scale,
            **{name: ol.finetune_lr_scale for name in ol.finetune_layers},
        },
        warmup_steps=ol.warmup_updates,
    )


def glyph_loss_config(model: GlyphConfig, ol: OnlineLearningConfig) -> GlyphLossConfig:
    """The static loss settings from the model and ``online_learning`` configs."""
    return GlyphLossConfig(
        model=model,
        pixel_noise_std=ol.pixel_noise_std,
        recency_half_life=ol.recency_half_life,
        entropy_coef=ol.entropy_coef,
        min_log_std=ol.min_log_std,
        baseline_decay=ol.baseline_decay,
    )


def validated_reward(rating: Any, scale: str) -> float:
    """The reward of a whole 1-10 rating; ``ValueError`` for anything else."""
    reward = normalize_rating(rating, scale=scale)
    if isinstance(rating, float | np.floating):
        raise ValueError(f"rating must be an integer in 1..10, got {rating!r}")
    return float(reward)


def version_tree(
    step, params, opt_state, extras, key_data, frozen, ratings_seen: int
) -> dict[str, Any]:
    """One network's saved version (the layout both learners write and read)."""
    return {
        "step": step,
        "params": params,
        "opt_state": opt_state,
        "extras": extras,
        "key_data": key_data,
        "frozen": frozen,
        "ratings_seen": np.asarray(ratings_seen, np.int32),
    }


def feedback_entry(items: list[dict[str, Any]], *, applied: bool, step: int):
    """The metadata entry of one update: its ratings and what they were about."""
    return {
        "ratings": [it["rating"] for it in items],
        "glyph_ids": [it["glyph_id"] for it in items],
        "rewards": [it["reward"] for it in items],
        "rated_at": [it["timestamp"] for it in items],
        "style_z": [it["z"].tolist() for it in items],
        "update_applied": applied,
        "step": step,
    }


def sample_glyphs(params, frozen, key, *, n, cfg: GlyphConfig, noise_std: float):
    """Samples ``n`` glyphs: ``z ~ pi``, ``x = clip(decoder(z) + tau eps, 0, 1)``."""
    decoder = merge_params(params, frozen)["decoder"]
    kz, kx = jax.random.split(key)
    z = sample_style_z(params["policy"], key=kz, n=n)
    mean = jax.vmap(lambda zi: decode_glyph(decoder, zi, cfg))(z)
    noise = noise_std * jax.random.normal(kx, mean.shape, mean.dtype)
    return z, jnp.clip(mean + noise, 0.0, 1.0), mean
