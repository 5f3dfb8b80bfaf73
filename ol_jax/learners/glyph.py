"""``GlyphLearner``: one glyph network that learns from 1-10 ratings (seed 000).

A thin stateful shell around the pure step: a rating is first appended to the
run's feedback journal (:class:`~ol_jax.store.FeedbackJournal`; with the default
``store.durability: sync`` ``feedback()`` returns once it is on disk), then goes
into a bounded queue; one writer thread turns queued ratings into padded batches,
runs the jit-compiled REINFORCE step of :mod:`ol_jax.learners._glyph_loss`, swaps
the new state in atomically and hands the new weight version, with the journal
position it reflects, to the :class:`~ol_jax.store.RunStore` writer. Resuming a
run restores its newest intact version and applies the journaled ratings that
version does not reflect, each once.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ol_jax.core import OnlineState, init_state, make_step, partition_params
from ol_jax.learners._glyph_common import (
    MAX_PENDING_GLYPHS,
    RatingWriter,
    feedback_entry,
    glyph_extras,
    glyph_loss_config,
    glyph_model_config,
    glyph_optimizer,
    item_from_record,
    rating_item,
    rating_record,
    sample_glyphs,
    validated_reward,
    version_tree,
)
from ol_jax.learners._glyph_loss import (
    glyph_extras_update,
    glyph_loss,
    glyph_params_stats,
)
from ol_jax.models import decode_glyph, init_glyph
from ol_jax.objectives import normalize_rating
from ol_jax.store import CheckpointWriteError, RunStore

__all__ = ["Glyph", "GlyphLearner", "glyph_model_config"]

_LOG = logging.getLogger(__name__)


def _with_stats(step):
    """``step`` whose metrics also hold the weight statistics of the new params
    and the loss's aux values (except the window's stage values)."""

    def run(state, batch, frozen):
        state, m = step(state, batch, frozen)
        aux = m.pop("aux")
        m |= {k: v for k, v in aux.items() if k != "head"}
        return state, m | glyph_params_stats(state.params)

    return run


@dataclass(frozen=True)
class Glyph:
    """A generated glyph: its id, style latent and image (values in [0, 1])."""

    id: str
    style_z: np.ndarray
    image: np.ndarray


class GlyphLearner:
    """A glyph network that updates after ratings, with versioned runs.

    Args:
      store: the network's run store (``RunStore(root, network_id)``); its config
        supplies the model and ``online_learning`` settings.
      run_id: a run to resume or a new id; ``None`` starts a fresh run.
      from_version: ``(run_id, version)`` of an earlier run to start from (the
        stale-weights case: the new run's metadata records that version's feedback
        quality).

    Examples:
      >>> store = RunStore("networks", "glyph-demo")  # doctest: +SKIP
      >>> with GlyphLearner(store) as learner:  # doctest: +SKIP
      ...     g = learner.generate(4)
      ...     learner.feedback(g[0].id, 8)
    """

    def __init__(
        self,
        store: RunStore,
        *,
        run_id: str | None = None,
        from_version: tuple[str, int | None] | None = None,
    ):
        self.store = store
        cfg = store.config
        ol = cfg.online_learning
        self.config = cfg
        self.model_config = glyph_model_config(cfg)
        self._ol = ol
        key = jax.random.key(cfg.seed)
        full = init_glyph(self.model_config, key=jax.random.fold_in(key, 0))
        params, frozen = partition_params(full, ["policy", *ol.finetune_layers])
        self.tx = glyph_optimizer(ol)
        extras = glyph_extras(self.model_config, ol)
        state = init_state(
            params, self.tx, key=jax.random.fold_in(key, 1), extras=extras
        )
        self._loss_cfg = glyph_loss_config(self.model_config, ol)
        self.loss_fn = glyph_loss(self._loss_cfg)
        self._fresh_extras = extras
        # No donation: generate() may still be reading the previous state while
        # the writer computes the next one. The step and the weight statistics
        # logged with each version are one compiled call: one dispatch per cycle.
        self._step = jax.jit(
            _with_stats(
                make_step(
                    self.loss_fn,
                    self.tx,
                    has_aux=True,
                    extras_update=glyph_extras_update(self._loss_cfg),
                    jit=False,
                )
            )
        )
        self._gen = jax.jit(
            sample_glyphs,
            static_argnames=("n", "cfg", "noise_std"),
        )
        self._batch_rows = max(ol.batch_size, ol.min_ratings_before_update, 1)
        self._per_rating = ol.update_frequency == "per_rating"

        resumed = run_id is not None and run_id in store.runs()
        self.run_id = store.start_run(run_id, from_version=from_version)
        self._pending: list[dict[str, Any]] = []
        # The journal position the state reflects once `_pending` is applied.
        self._consumed_to = 0
        template = self._snapshot(state, frozen)
        replay: list[dict[str, Any]] = []
        # A resumed run whose first version never reached the disk starts from
        # the initial weights and replays its whole journal.
        has_versions = (resumed or from_version is not None) and store.versions()
        if not has_versions and resumed:
            replay = store.journal.records()
        if has_versions:
            version, saved = store.restore_newest_good(like=template)
            state, frozen = self._unsnapshot(saved)
            self._ratings_seen = int(saved["ratings_seen"])
            self._updates = int(saved["step"])
            self._consumed_to = store.journal_position(version)
            replay = store.journal.records(start=self._consumed_to)
        else:
            self._ratings_seen = 0
            self._updates = 0
            store.save(template, metadata_entry={"kind": "initial"})
        self._frozen = frozen
        self._state = state
        self._state_lock = threading.Lock()
        self._gen_counter = itertools.count()
        # Glyph ids must not repeat within a run: a resumed learner's carry a
        # per-process tag (the journal records ids, and a rater may hold an id
        # from before the restart).
        self._id_suffix = f"-{secrets.token_hex(3)}" if resumed else ""
        self._glyphs: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._glyph_lock = threading.Lock()
        self._last_metrics: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        # Held by the writer's updates and by flush's retried save.
        self._update_lock = threading.Lock()
        self._unsaved: CheckpointWriteError | None = None
        self._writer = RatingWriter(self._consume, owner="GlyphLearner")
        scale = self._ol.feedback_scale
        # Journaled ratings the restored version does not reflect go first, in
        # journal order; then every newly committed rating, in commit order.
        for record in replay:
            self._writer.put(item_from_record(record["seq"], record, scale))
        self._journal = store.journal
        self._journal.set_consumer(self._deliver)

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> OnlineState:
        """The current state (replaced atomically after each update)."""
        with self._state_lock:
            return self._state

    @property
    def frozen(self) -> Any:
        """The frozen decoder layers."""
        return self._frozen

    @property
    def ratings_seen(self) -> int:
        """Ratings consumed by the writer so far (including cold-start ones)."""
        return self._ratings_seen

    def _snapshot(self, state: OnlineState, frozen) -> dict[str, Any]:
        # Ratings still pending are not in the weights: a resumed run replays
        # them from the journal and counts them then.
        seen = getattr(self, "_ratings_seen", 0) - len(self._pending)
        return version_tree(
            state.step,
            state.params,
            state.opt_state,
            state.extras,
            jax.random.key_data(state.key),
            frozen,
            seen,
        )

    def _unsnapshot(self, saved: dict[str, Any]):
        state = OnlineState(
            step=jnp.asarray(saved["step"]),
            params=saved["params"],
            opt_state=saved["opt_state"],
            key=jax.random.wrap_key_data(jnp.asarray(saved["key_data"])),
            extras=saved["extras"],
        )
        return state, saved["frozen"]

    # ------------------------------------------------------------------ generation

    def generate(self, n: int, *, key: jax.Array | None = None) -> list[Glyph]:
        """Samples ``n`` glyphs from the current policy; each gets a fresh id.

        Valid before any feedback (cold start): the initial weights draw glyphs.
        """
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        state = self.state
        count = next(self._gen_counter)
        if key is None:
            key = jax.random.fold_in(jax.random.fold_in(state.key, 2**30), count)
        z, images, _ = self._gen(
            state.params,
            self._frozen,
            key,
            n=n,
            cfg=self.model_config,
            noise_std=self._ol.pixel_noise_std,
        )
        z, images = np.asarray(z), np.asarray(images)
        out = []
        with self._glyph_lock:
            for i in range(n):
                gid = f"g{count:06d}-{i:03d}{self._id_suffix}"
                self._glyphs[gid] = (z[i], images[i])
                out.append(Glyph(gid, z[i], images[i]))
            while len(self._glyphs) > MAX_PENDING_GLYPHS:
                self._glyphs.popitem(last=False)
        return out

    def mean_images(self, z: np.ndarray) -> np.ndarray:
        """Noise-free glyph images ``decoder(z)`` for latents ``z [n, D]``."""
        from ol_jax.core import merge_params

        decoder = merge_params(self.state.params, self._frozen)["decoder"]
        return np.asarray(
            jax.vmap(lambda zi: decode_glyph(decoder, zi, self.model_config))(
                jnp.asarray(z, jnp.float32)
            )
        )

    # ------------------------------------------------------------------ feedback

    def feedback(self, glyph_id: str, rating: Any) -> None:
        """Records a 1-10 rating of a generated glyph and queues it. Thread-safe.

        The rating is validated here, before anything changes: a bad rating or an
        unknown id raises ``ValueError`` and leaves the learner untouched. It is
        then appended to the run's feedback journal; with ``store.durability:
        sync`` (the default) this returns only once the rating is on disk, so an
        acknowledged rating survives a crash (a resumed run applies it).

        Raises:
          ValueError: a bad rating or an unknown glyph id.
          JournalWriteError: the rating could not be written (e.g. a full disk):
            it is not recorded and will not be applied; a later call may succeed.
        """
        self._writer.check()
        reward = validated_reward(rating, self._ol.feedback_scale)
        with self._glyph_lock:
            if glyph_id not in self._glyphs:
                raise ValueError(f"unknown glyph id {glyph_id!r}")
            z, image = self._glyphs[glyph_id]
        item = rating_item(glyph_id, rating, reward, z, image)
        self._journal.append(rating_record(item), item=item)

    def _deliver(self, committed: list[tuple[int, dict[str, Any]]]) -> None:
        """The journal's consumer: committed ratings into the writer's queue."""
        for seq, item in committed:
            self._writer.put(item | {"seq": seq})

    def wait(self) -> None:
        """Blocks until every rating given so far has been processed."""
        self._journal.flush()  # (async durability: committed, so delivered)
        self._writer.wait()

    def flush(self) -> None:
        """Processes queued ratings and waits until every version is on disk.

        If an earlier version could not be written (a full disk), the current
        state is saved again now, so once space is free nothing is left unsaved.

        Raises:
          CheckpointWriteError: the current state still cannot be written; the
            ratings it reflects are in the journal and a resumed run applies them.
        """
        self.wait()
        try:
            self.store.flush()
        except CheckpointWriteError as exc:
            self._unsaved = exc
        if self._unsaved is not None:
            with self._update_lock:
                self._save_version(self.state, {"kind": "resave"})
            try:
                self.store.flush()
            except CheckpointWriteError as exc:
                self._unsaved = exc
            if self._unsaved is not None:
                raise self._unsaved

    @property
    def write_error(self) -> CheckpointWriteError | None:
        """Why the current state is not on disk yet (a failed write), or ``None``."""
        return self._unsaved

    def close(self) -> None:
        """Processes what is queued, records leftover ratings, closes the store."""
        if self._writer.closed:
            return
        try:
            self._journal.flush()
        finally:
            try:
                self._writer.close()
            finally:
                self.store.close()

    def __enter__(self) -> GlyphLearner:
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        if exc_type is None:
            self.close()
            return
        # Do not hide the error that ended the block behind a close error.
        try:
            self.close()
        except Exception as exc:  # noqa: BLE001 - logged; the first error wins
            _LOG.error("closing GlyphLearner after an error failed", exc_info=exc)

    # ------------------------------------------------------------------ writer

    def _ready(self) -> bool:
        ol = self._ol
        if self._ratings_seen < ol.min_ratings_before_update:
            return False
        if self._per_rating:
            return True
        return len(self._pending) >= ol.batch_size

    def _consume(self, items: list[dict[str, Any]], *, final: bool) -> None:
        """The writer's work: each rating in turn, an update whenever one is due."""
        with self._update_lock:
            for item in items:
                self._pending.append(item)
                self._ratings_seen += 1
                self._consumed_to = item["seq"] + 1
                if self._ready():
                    self._drain()
            if final:
                self._drain()

    def _drain(self) -> None:
        warm = self._ratings_seen >= self._ol.min_ratings_before_update
        while self._pending:
            take = self._pending[: self._batch_rows]
            del self._pending[: self._batch_rows]
            self._update(take, apply=self._ol.enabled and warm)

    def _update(self, items: list[dict[str, Any]], *, apply: bool) -> None:
        n = len(items)
        # Batches are padded to a power of two, so one rating and a cold-start
        # burst compile once each and a single rating costs one decoder pass.
        rows = min(1 << (n - 1).bit_length(), self._batch_rows)
        cfg = self.model_config
        z = np.zeros((rows, cfg.style_z_dim), np.float32)
        img = np.zeros((rows, cfg.image_size, cfg.image_size), np.float32)
        reward = np.zeros((rows,), np.float32)
        valid = np.zeros((rows,), np.bool_)
        for i, it in enumerate(items):
            z[i], img[i], reward[i], valid[i] = it["z"], it["image"], it["reward"], True
        state = self.state
        metrics: dict[str, Any] = {}
        if apply:
            batch = jax.device_put(
                {
                    "z": z,
                    "image": img,
                    "reward": reward,
                    "valid": valid,
                    "time": np.asarray(self._updates, np.int32),
                }
            )
            state, m = self._step(state, batch, self._frozen)
            self._updates += 1
            metrics = jax.device_get(m)
            with self._state_lock:
                self._state = state
        entry = feedback_entry(
            items,
            applied=bool(apply and metrics.get("applied", False)),
            step=int(state.step),
        )
        entry |= {k: float(v) for k, v in metrics.items() if k != "applied"}
        self._last_metrics = entry
        self.history.append(entry)
        self._save_version(state, entry)

    def _save_version(self, state: OnlineState, entry: dict[str, Any]) -> None:
        """Saves ``state`` with the journal position it reflects; a failed write
        (e.g. a full disk) is logged and kept in :attr:`write_error`, and the
        learner goes on: the next version carries everything this one had."""
        position = self._pending[0]["seq"] if self._pending else self._consumed_to
        tree = self._snapshot(state, self._frozen)
        for _ in range(2):
            try:
                self.store.save(tree, metadata_entry=entry, journal_position=position)
            except CheckpointWriteError as exc:
                # The first error may be an earlier version's (raised by the next
                # call); the retry then submits this one.
                self._unsaved = exc
                _LOG.warning("%s", exc)
                continue
            self._unsaved = None
            return

    # ------------------------------------------------------------------ evaluation

    def loss_on(self, batch: dict[str, Any], state: OnlineState | None = None) -> float:
        """The REINFORCE loss of ``state``'s parameters on a fixed feedback batch.

        Evaluated with fresh extras (empty window, baseline 0), so it is a function
        of the parameters alone and comparable from one version to the next.
        ``batch`` holds ``z [B, D]``, ``image [B, S, S]``, ``reward [B]``,
        ``valid [B]`` and ``time`` (a scalar), as built by :meth:`make_batch`.
        """
        state = self.state if state is None else state
        loss, _ = self.loss_fn(
            state.params,
            batch,
            frozen=self._frozen,
            extras=self._fresh_extras,
            key=state.key,
        )
        return float(loss)

    def make_batch(self, glyphs: list[Glyph], ratings: list[int]) -> dict[str, Any]:
        """A feedback batch (for :meth:`loss_on`) from glyphs and their ratings."""
        if len(glyphs) != len(ratings) or not glyphs:
            raise ValueError(
                f"need as many ratings as glyphs (>= 1), got {len(glyphs)} glyphs "
                f"and {len(ratings)} ratings"
            )
        rewards = [normalize_rating(r, scale=self._ol.feedback_scale) for r in ratings]
        return {
            "z": jnp.asarray(np.stack([g.style_z for g in glyphs])),
            "image": jnp.asarray(np.stack([g.image for g in glyphs])),
            "reward": jnp.asarray(rewards, jnp.float32),
            "valid": jnp.ones((len(glyphs),), jnp.bool_),
            "time": jnp.zeros((), jnp.int32),
        }
