"""What the single- and multi-network glyph learners share: the update rule, the
loss settings, rating validation and the layout of a version and its metadata."""

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ol_jax.core import clamp_params, merge_params, path_str
from ol_jax.learners._glyph_loss import GlyphLossConfig, decoder_stage, initial_extras
from ol_jax.models import GlyphConfig, decode_glyph_from, sample_style_z
from ol_jax.objectives import normalize_rating
from ol_jax.store import NetworkConfig, OnlineLearningConfig

# Generated glyphs remembered for rating; older ones are forgotten first.
MAX_PENDING_GLYPHS = 10_000
# Ratings that may wait for the writer thread before the journal's commit (and so
# the feedback call) blocks: back-pressure instead of an unbounded queue.
MAX_QUEUED_RATINGS = 4096


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


# The most one update moves a latent dimension's log std (see glyph_optimizer).
MAX_LOG_STD_STEP = 0.02

# An online stream never ends: the non-finite guard must never give up and apply a
# poisoned update (optax's error counter saturates at the int32 maximum).
_NEVER_GIVE_UP = int(np.iinfo(np.int32).max)


def _group(path, _) -> str:
    name = path_str(path)
    return name.split(".")[1] if name.startswith("policy.") else "decoder"


def glyph_optimizer(ol: OnlineLearningConfig) -> optax.GradientTransformation:
    """The glyph network's update rule from its ``online_learning`` block.

    Three parameter groups, one injected ``learning_rate`` ``eta``:

    * ``policy.mean``: Adam, step ``eta`` (Adam sets each coordinate's step size
      itself, so the mean needs no clip). Adam's momentum cancels feedback that
      keeps flipping, so contradictory ratings of one glyph settle instead of
      swinging the mean forever.
    * ``policy.log_std``: natural-gradient steps ``log_std_lr_scale * eta * g / 2``
      (the Fisher information of a Gaussian's log std is the constant 2), at most
      ``MAX_LOG_STD_STEP`` per coordinate. Steps are proportional to the
      evidence, so the width of latent dimensions the rater ignores barely
      moves, where Adam would move every coordinate by the full step whatever
      its gradient; the cap stops a replayed window of old samples, far out in
      the tails of a narrowed policy, from collapsing the width in one step.
    * the fine-tuned decoder layers: clipped on their own (their pixel-likelihood
      gradient is orders of magnitude larger than the policy's and would otherwise
      swamp it in one global clip), Adam with decoupled weight decay, step
      ``finetune_lr_scale * eta``.

    Then an optional linear warm-up, the ``weight_clamp`` box, and
    ``optax.apply_if_finite`` (a non-finite gradient changes nothing).

    References:
      Kingma & Ba, `Adam: A Method for Stochastic Optimization
      <https://arxiv.org/abs/1412.6980>`_, 2015; Amari, `Natural gradient works
      efficiently in learning <https://doi.org/10.1162/089976698300017746>`_, 1998.
    """

    def chain(learning_rate):
        def group(*parts, scale=1.0, tail=()):
            if ol.warmup_updates:
                n = ol.warmup_updates
                parts += (
                    optax.scale_by_schedule(
                        optax.linear_schedule(1.0 / n, 1.0, n - 1)
                        if n > 1
                        else optax.constant_schedule(1.0)
                    ),
                )
            lr = optax.scale_by_learning_rate(learning_rate * scale)
            return optax.chain(*parts, lr, *tail)

        clip = optax.clip_by_global_norm(ol.gradient_clip_norm)
        return optax.chain(
            optax.multi_transform(
                {
                    "mean": group(optax.scale_by_adam()),
                    "log_std": group(
                        optax.scale(0.5),
                        scale=ol.log_std_lr_scale,
                        tail=(optax.clip(MAX_LOG_STD_STEP),),
                    ),
                    "decoder": group(
                        clip,
                        optax.scale_by_adam(),
                        optax.add_decayed_weights(ol.weight_decay),
                        scale=ol.finetune_lr_scale,
                    ),
                },
                lambda params: jax.tree_util.tree_map_with_path(_group, params),
            ),
            clamp_params(*ol.weight_clamp),
        )

    tx = optax.inject_hyperparams(chain)(learning_rate=ol.learning_rate)
    return optax.apply_if_finite(tx, max_consecutive_errors=_NEVER_GIVE_UP)


def glyph_extras(model: GlyphConfig, ol: OnlineLearningConfig) -> dict[str, Any]:
    """A fresh network's extras: baseline, spread and an empty feedback window."""
    return initial_extras(ol.feedback_window, model, decoder_stage(ol.finetune_layers))


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


def rating_item(
    glyph_id: str, rating: Any, reward: float, z: np.ndarray, image: np.ndarray
) -> dict[str, Any]:
    """One validated rating as the writer consumes it and the metadata records it."""
    return {
        "glyph_id": glyph_id,
        "rating": int(rating),
        "reward": reward,
        "z": z,
        "image": image,
        "timestamp": time.time(),
    }


def rating_record(item: dict[str, Any]) -> dict[str, Any]:
    """The feedback-journal record of a rating item: everything an update needs,
    so a resumed learner can apply it without the glyph table it came from."""
    return {
        "kind": "rating",
        "id": item["glyph_id"],
        "rating": item["rating"],
        "time": item["timestamp"],
        "z": np.asarray(item["z"], np.float32),
        "image": np.asarray(item["image"], np.float32),
    }


def item_from_record(seq: int, record: dict[str, Any], scale: str) -> dict[str, Any]:
    """The rating item of journal record ``seq`` (as :func:`rating_record` wrote)."""
    rating = record["rating"]
    return {
        "glyph_id": record["id"],
        "rating": rating,
        "reward": validated_reward(rating, scale),
        "z": record["z"],
        "image": record["image"],
        "timestamp": record["time"],
        "seq": seq,
    }


# The marker ``RatingWriter.close`` queues for the final partial batch.
_FINAL = object()


class RatingWriter:
    """The feedback path of a glyph learner: a queue and one writer thread.

    ``put`` is called from any thread (it blocks while ``max_queued`` items
    wait); the writer drains what is waiting and
    hands it, in arrival order, to ``consume(items, final=False)``, which alone
    changes the learner (so updates never race and the learner swaps its state in
    one assignment). After a failure the writer consumes nothing more and the
    next ``check``, ``put`` or ``wait`` raises it. ``close`` consumes what is
    queued, then calls ``consume([], final=True)`` so leftover ratings of a
    partial batch are recorded, and stops the thread.
    """

    def __init__(
        self,
        consume: Callable[..., None],
        *,
        owner: str,
        max_queued: int = MAX_QUEUED_RATINGS,
    ):
        self._consume = consume
        self._owner = owner
        # Bounded: a producer faster than the updates blocks in `put`.
        self._queue: queue.Queue = queue.Queue(maxsize=max_queued)
        self._error: BaseException | None = None
        self.closed = False
        self._thread = threading.Thread(target=self._run, name=owner, daemon=True)
        self._thread.start()

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"the {self._owner} writer failed") from self._error

    def check(self) -> None:
        """Raises the writer's failure, or ``RuntimeError`` once closed."""
        self._raise_failure()
        if self.closed:
            raise RuntimeError(f"{self._owner} is closed")

    def put(self, item: dict[str, Any]) -> None:
        """Queues one validated rating item."""
        self.check()
        self._queue.put(item)

    def wait(self) -> None:
        """Blocks until everything queued is consumed; raises a writer failure."""
        self._queue.join()
        self._raise_failure()

    def close(self) -> None:
        """Consumes what is queued and the final partial batch, then stops."""
        if self.closed:
            return
        try:
            self.wait()
            self._queue.put(_FINAL)
            self.wait()
        finally:
            self.closed = True
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        while True:
            items = [self._queue.get()]
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                if self._error is None:
                    ratings = [it for it in items if isinstance(it, dict)]
                    if ratings:
                        self._consume(ratings, final=False)
                    if any(it is _FINAL for it in items):
                        self._consume([], final=True)
            except BaseException as e:  # surfaced to the caller on its next call
                self._error = e
            finally:
                for _ in items:
                    self._queue.task_done()
            if any(it is None for it in items):
                return


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
    mean = decode_glyph_from(decoder, z, cfg, stage=0)
    noise = noise_std * jax.random.normal(kx, mean.shape, mean.dtype)
    return z, jnp.clip(mean + noise, 0.0, 1.0), mean
