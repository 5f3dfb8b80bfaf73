"""``MultiGlyphLearner``: many glyph networks (one per user) in one stacked state.

The networks share a configuration shape and the frozen decoder layers; each has
its own style policy, fine-tuned decoder layers, optimizer state, feedback window
and run folder ``<root>/<network_id>/runs/<run_id>/``. Ratings for any network go
into one queue; one writer thread drains it into one padded batch per network and
runs ONE vmapped step (:func:`ol_jax.core.make_multi_step`) over every network
with feedback, leaving the others bit-identical, then hands each updated
network's version to its own :class:`~ol_jax.store.RunStore`. All stores share
one :class:`~ol_jax.store.CheckpointWriter`, so the disk sees one write stream.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ol_jax.core import (
    OnlineState,
    init_state,
    make_multi_step,
    partition_params,
    stack_states,
)
from ol_jax.learners._glyph_common import (
    MAX_PENDING_GLYPHS,
    RatingWriter,
    feedback_entry,
    glyph_extras,
    glyph_loss_config,
    glyph_model_config,
    glyph_optimizer,
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
from ol_jax.learners.glyph import Glyph
from ol_jax.models import init_glyph
from ol_jax.store import CheckpointWriter, RunStore, load_network_config


def _generate_one(params, frozen, key, index, *, n, cfg, noise_std):
    """:func:`sample_glyphs` for network ``index`` of stacked ``params`` (traced index,
    so one compilation serves every network)."""
    own = jax.tree.map(lambda x: x[index], params)
    return sample_glyphs(own, frozen, key, n=n, cfg=cfg, noise_std=noise_std)


class MultiGlyphLearner:
    """N glyph networks updated together, each with its own versioned runs.

    Every network folder ``<root>/<network_id>/config.yaml`` must have the same
    ``model`` and ``online_learning`` sections (one compiled step serves all);
    ``seed`` and ``store`` may differ. Network ``i``'s trainable weights and key
    come from its own seed exactly as in :class:`GlyphLearner`; the frozen
    decoder layers are shared and come from the first network's seed, so a
    network whose seed equals the first one's learns exactly as a
    :class:`GlyphLearner` with that seed would, given the same ratings per update.

    Each network keeps the :class:`GlyphLearner` rules: a cold start of
    ``min_ratings_before_update`` ratings, per-rating or batched updates, at most
    ``max(batch_size, min_ratings_before_update)`` ratings per update. Ratings that
    arrive while the writer is busy are drained together, one batch per network.

    Args:
      root: the folder holding the network folders.
      network_ids: the networks, at least one, no repeats.
      writer: a :class:`CheckpointWriter` to share with other stores; by default
        one is made (queue size of the first network's ``store.queue_size``) and
        closed by :meth:`close`.
      chunk_size: networks vmapped together inside the one multi step (see
        :func:`ol_jax.core.make_multi_step`); ``None`` vmaps all at once.

    Raises:
      ValueError: no networks, a repeated id, or configs that differ in
        ``model`` or ``online_learning``.

    Examples:
      >>> with MultiGlyphLearner("networks", ["alice", "bob"]) as m:  # doctest: +SKIP
      ...     g = m.generate("alice", 4)
      ...     m.feedback("alice", g[0].id, 8)
    """

    def __init__(
        self,
        root: str,
        network_ids: Sequence[str],
        *,
        writer: CheckpointWriter | None = None,
        chunk_size: int | None = 8,
    ):
        ids = list(network_ids)
        if not ids:
            raise ValueError("network_ids must name at least one network, got []")
        if len(set(ids)) != len(ids):
            raise ValueError(f"network_ids must not repeat, got {ids}")
        self.network_ids = ids
        self._index = {nid: i for i, nid in enumerate(ids)}
        self.stores: dict[str, RunStore] = {}
        self._owns_writer = writer is None
        if writer is None:
            first = load_network_config(os.path.join(root, ids[0], "config.yaml"))
            writer = CheckpointWriter(first.store.queue_size)
        self._writer = writer
        try:
            for nid in ids:
                self.stores[nid] = RunStore(root, nid, writer=writer)
            cfg = self.stores[ids[0]].config
            for nid in ids[1:]:
                other = self.stores[nid].config
                for section in ("model", "online_learning"):
                    if getattr(other, section) != getattr(cfg, section):
                        raise ValueError(
                            f"network {nid!r} has {section} {getattr(other, section)}"
                            f", expected that of {ids[0]!r}: "
                            f"{getattr(cfg, section)}"
                        )
        except BaseException:
            self._close_stores()
            raise
        ol = cfg.online_learning
        self.config = cfg
        self.model_config = glyph_model_config(cfg)
        self._ol = ol
        trainable = ["policy", *ol.finetune_layers]
        self.tx = glyph_optimizer(ol)
        extras = glyph_extras(self.model_config, ol)
        states, frozen = [], None
        for nid in ids:
            key = jax.random.key(self.stores[nid].config.seed)
            full = init_glyph(self.model_config, key=jax.random.fold_in(key, 0))
            params, own_frozen = partition_params(full, trainable)
            frozen = own_frozen if frozen is None else frozen
            states.append(
                init_state(
                    params, self.tx, key=jax.random.fold_in(key, 1), extras=extras
                )
            )
        self._frozen = frozen
        self._loss_cfg = glyph_loss_config(self.model_config, ol)
        # No donation: generate() may still read the previous stacked state.
        self._multi_step = make_multi_step(
            glyph_loss(self._loss_cfg),
            self.tx,
            chunk_size=chunk_size,
            has_aux=True,
            extras_update=glyph_extras_update(self._loss_cfg),
        )
        self._stats = jax.jit(jax.vmap(glyph_params_stats))
        self._gen = jax.jit(_generate_one, static_argnames=("n", "cfg", "noise_std"))
        self._batch_rows = max(ol.batch_size, ol.min_ratings_before_update, 1)
        self._per_rating = ol.update_frequency == "per_rating"

        n = len(ids)
        self._state = stack_states(states)
        self._state_lock = threading.Lock()
        self._ratings_seen = [0] * n
        self._updates = [0] * n
        self._pending: list[list[dict[str, Any]]] = [[] for _ in ids]
        # Per network: the journal position its state reflects once its pending
        # ratings are applied.
        self._consumed_to = [0] * n
        self.run_ids: dict[str, str] = {}
        host = jax.device_get(self._state)
        for i, nid in enumerate(ids):
            self.run_ids[nid] = self.stores[nid].start_run()
            self.stores[nid].save(
                self._snapshot(host, i), metadata_entry={"kind": "initial"}
            )
        self._gen_counters = [itertools.count() for _ in ids]
        self._glyphs: list[OrderedDict[str, tuple[np.ndarray, np.ndarray]]] = [
            OrderedDict() for _ in ids
        ]
        self._glyph_lock = threading.Lock()
        self.history: dict[str, list[dict[str, Any]]] = {nid: [] for nid in ids}
        self.multi_steps = 0
        self._writer = RatingWriter(self._consume, owner="MultiGlyphLearner")
        # Each network's ratings are journaled in its own run folder first; the
        # committed ones reach the one writer queue in commit order.
        for i, nid in enumerate(ids):
            self.stores[nid].journal.set_consumer(functools.partial(self._deliver, i))

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> OnlineState:
        """The stacked state of all networks (leading network axis)."""
        with self._state_lock:
            return self._state

    @property
    def frozen(self) -> Any:
        """The frozen decoder layers shared by all networks."""
        return self._frozen

    def index(self, network_id: str) -> int:
        """The position of ``network_id`` on the network axis."""
        if network_id not in self._index:
            raise ValueError(
                f"unknown network id {network_id!r}; expected one of "
                f"{self.network_ids[:5]}{'...' if len(self._index) > 5 else ''}"
            )
        return self._index[network_id]

    def ratings_seen(self, network_id: str) -> int:
        """Ratings of ``network_id`` consumed by the writer so far."""
        return self._ratings_seen[self.index(network_id)]

    def _snapshot(self, host: OnlineState, i: int) -> dict[str, Any]:
        """Network ``i``'s version in :class:`GlyphLearner`'s checkpoint layout."""
        own = jax.tree.map(lambda x: x[i], host)
        return version_tree(
            own.step,
            own.params,
            own.opt_state,
            own.extras,
            np.asarray(jax.random.key_data(host.key))[i],
            self._frozen,
            # Pending ratings are not in the weights (a resume would replay them).
            self._ratings_seen[i] - len(self._pending[i]),
        )

    # ------------------------------------------------------------------ generation

    def generate(
        self, network_id: str, n: int, *, key: jax.Array | None = None
    ) -> list[Glyph]:
        """Samples ``n`` glyphs from ``network_id``'s current policy, fresh ids.

        Ids are per network (``g<count>-<i>``, as :class:`GlyphLearner` names
        them), so a rating names both the network and the glyph.
        """
        i = self.index(network_id)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        state = self.state
        count = next(self._gen_counters[i])
        if key is None:
            own_key = jax.random.wrap_key_data(
                jax.random.key_data(state.key)[i], impl=jax.random.key_impl(state.key)
            )
            key = jax.random.fold_in(jax.random.fold_in(own_key, 2**30), count)
        z, images, _ = self._gen(
            state.params,
            self._frozen,
            key,
            jnp.asarray(i, jnp.int32),
            n=n,
            cfg=self.model_config,
            noise_std=self._ol.pixel_noise_std,
        )
        z, images = np.asarray(z), np.asarray(images)
        out = []
        with self._glyph_lock:
            glyphs = self._glyphs[i]
            for j in range(n):
                gid = f"g{count:06d}-{j:03d}"
                glyphs[gid] = (z[j], images[j])
                out.append(Glyph(gid, z[j], images[j]))
            while len(glyphs) > MAX_PENDING_GLYPHS:
                glyphs.popitem(last=False)
        return out

    # ------------------------------------------------------------------ feedback

    def feedback(self, network_id: str, glyph_id: str, rating: Any) -> None:
        """Records a 1-10 rating of one of ``network_id``'s glyphs. Thread-safe.

        Validated before anything changes: an unknown network or glyph id or a bad
        rating raises ``ValueError`` and leaves every network untouched. The
        rating is appended to that network's run journal first (with
        ``store.durability: sync`` this returns once it is on disk).

        Raises:
          JournalWriteError: the rating could not be written; it is not kept.
        """
        self._writer.check()
        i = self.index(network_id)
        reward = validated_reward(rating, self._ol.feedback_scale)
        with self._glyph_lock:
            if glyph_id not in self._glyphs[i]:
                raise ValueError(
                    f"unknown glyph id {glyph_id!r} for network {network_id!r}"
                )
            z, image = self._glyphs[i][glyph_id]
        item = rating_item(glyph_id, rating, reward, z, image) | {"network": i}
        self.stores[network_id].journal.append(rating_record(item), item=item)

    def _deliver(self, i: int, committed: list[tuple[int, dict[str, Any]]]) -> None:
        """Network ``i``'s journal consumer: committed ratings into the queue."""
        for seq, item in committed:
            self._writer.put(item | {"seq": seq})

    def wait(self) -> None:
        """Blocks until every rating given so far has been processed."""
        for store in self.stores.values():
            store.journal.flush()  # (async durability: committed, so delivered)
        self._writer.wait()

    def flush(self) -> None:
        """Processes queued ratings and waits until every version is on disk."""
        self.wait()
        for store in self.stores.values():
            store.flush()

    def close(self) -> None:
        """Processes what is queued, records leftover ratings, closes the stores."""
        if self._writer.closed:
            return
        try:
            for store in self.stores.values():
                store.journal.flush()
        finally:
            try:
                self._writer.close()
            finally:
                self._close_stores()

    def _close_stores(self) -> None:
        try:
            for store in self.stores.values():
                store.close()
        finally:
            if self._owns_writer:
                self._writer.close()

    def __enter__(self) -> MultiGlyphLearner:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ------------------------------------------------------------------ writer

    def _ready(self, i: int) -> bool:
        ol = self._ol
        if self._ratings_seen[i] < ol.min_ratings_before_update:
            return False
        return self._per_rating or len(self._pending[i]) >= ol.batch_size

    def _consume(self, items: list[dict[str, Any]], *, final: bool) -> None:
        """The writer's work: all waiting ratings, one multi step per due round."""
        for it in items:
            self._pending[it["network"]].append(it)
            self._ratings_seen[it["network"]] += 1
            self._consumed_to[it["network"]] = it["seq"] + 1
        due = [
            i
            for i, pending in enumerate(self._pending)
            if pending and (final or self._ready(i))
        ]
        while due:
            chunks = {}
            for i in due:
                chunks[i] = self._pending[i][: self._batch_rows]
                del self._pending[i][: self._batch_rows]
            self._update(chunks)
            due = [i for i in due if self._pending[i]]

    def _update(self, chunks: dict[int, list[dict[str, Any]]]) -> None:
        n, cfg = len(self.network_ids), self.model_config
        longest = max(len(c) for c in chunks.values())
        # Powers of two, as in GlyphLearner: few shapes, each compiled once.
        rows = min(1 << (longest - 1).bit_length(), self._batch_rows)
        z = np.zeros((n, rows, cfg.style_z_dim), np.float32)
        img = np.zeros((n, rows, cfg.image_size, cfg.image_size), np.float32)
        reward = np.zeros((n, rows), np.float32)
        valid = np.zeros((n, rows), np.bool_)
        mask = np.zeros((n,), np.bool_)
        warm_min = self._ol.min_ratings_before_update
        for i, items in chunks.items():
            mask[i] = self._ol.enabled and self._ratings_seen[i] >= warm_min
            for r, it in enumerate(items):
                z[i, r], img[i, r] = it["z"], it["image"]
                reward[i, r], valid[i, r] = it["reward"], True
        state = self.state
        metrics: dict[str, Any] = {}
        if mask.any():
            batch = {
                "z": jnp.asarray(z),
                "image": jnp.asarray(img),
                "reward": jnp.asarray(reward),
                "valid": jnp.asarray(valid),
                "time": jnp.asarray(self._updates, jnp.int32),
            }
            state, m = self._multi_step(state, batch, jnp.asarray(mask), self._frozen)
            self.multi_steps += 1
            with self._state_lock:
                self._state = state
            metrics = jax.device_get(
                {k: v for k, v in m.items() if k != "aux"}
                | {k: v for k, v in m["aux"].items() if k != "head"}
            )
            metrics |= jax.device_get(self._stats(state.params))
            for i in np.flatnonzero(mask):
                self._updates[i] += 1
        host = jax.device_get(state)
        for i, items in chunks.items():
            applied = bool(mask[i] and metrics["applied"][i]) if mask[i] else False
            entry = feedback_entry(items, applied=applied, step=int(host.step[i]))
            if mask[i]:
                entry |= {k: float(v[i]) for k, v in metrics.items() if k != "applied"}
            nid = self.network_ids[i]
            self.history[nid].append(entry)
            pending = self._pending[i]
            self.stores[nid].save(
                self._snapshot(host, i),
                metadata_entry=entry,
                journal_position=pending[0]["seq"] if pending else self._consumed_to[i],
            )
