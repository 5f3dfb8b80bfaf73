"""``OnlineLearner``: a safe lifelong learner for a routing controller (seed 003).

Only the controller (routing head) of a routed model learns; base and expert
weights are frozen by an optax mask. Feedback events (thumbs, tool results,
1-10 ratings) are validated by a :class:`StreamProcessor`, turned into examples,
queued by a :class:`~ol_jax.safety.BetweenPromptsPolicy` and, between prompts,
batched into one jit-compiled *gated update*:

1. mix the new examples with a prioritized replay batch (importance-weighted);
2. one step of BCE on the served expert's logit plus an EWC (or proximal)
   penalty towards the warm-up checkpoint;
3. evaluate the candidate on canary sets (one per task family) and reject it if
   any family regresses past its tolerance (:func:`~ol_jax.safety.canary_gate`),
   or if the new batch's loss under the current model is an outlier (poisoned
   feedback, :func:`~ol_jax.safety.loss_spike_gate`);
4. on acceptance, add the new examples to replay, refresh the replayed items'
   priorities and (optionally) fold the batch into the online Fisher.

After every accepted update the drift monitor compares the router's outputs and
parameter norm with the last good (saved) version and rolls back through the
:class:`~ol_jax.store.RunStore` when a limit is passed. :func:`run_soak` replays a
simulated 24-hour stream with a distribution shift, noisy feedback, poisoned
bursts and malformed events and writes a JSON + PNG report.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax import tree_utils as otu
from pydantic import Field

from ol_jax.core import (
    init_state,
    make_step,
    online_optimizer,
    path_str,
)
from ol_jax.learners._controller_env import (
    EnvSpec,
    StreamSpec,
    TaskEnv,
    make_events,
    make_prompts,
    poison_windows,
    serve,
)
from ol_jax.learners._stream import (
    REJECT_REASONS,
    FeedbackProcessor,
    FeedbackSignal,
    StreamProcessor,
)
from ol_jax.memory import prioritized_replay
from ol_jax.models import routed_mlp_apply
from ol_jax.objectives import (
    binary_cross_entropy,
    ewc_penalty,
    fisher_diagonal,
    online_fisher,
    proximal_penalty,
)
from ol_jax.safety import (
    BetweenPromptsPolicy,
    canary_gate,
    drift_check,
    init_spike_stats,
    loss_spike_gate,
    output_kl,
    param_norm_ratio,
)
from ol_jax.store import (
    BatchSize,
    Capacity,
    ConfigSection,
    Count,
    Dim,
    NetworkConfig,
    RunStore,
    Seed,
    StoreConfig,
    load_config,
)

__all__ = [
    "ControllerConfig",
    "FeedbackProcessor",
    "OnlineLearner",
    "REJECT_REASONS",
    "StreamProcessor",
    "load_controller",
    "save_controller",
    "warmup",
    "run_soak",
    "scaled_poison_bursts",
    "soak_failures",
]


# ----------------------------------------------------------------- configuration


class ModelSection(ConfigSection):
    """The routed model and its simulated task environment."""

    d_in: Dim = Field(default=16, ge=1)
    d_hidden: Dim = Field(default=32, ge=1)
    d_out: Dim = Field(default=8, ge=1)
    num_experts: Dim = Field(default=4, ge=2)
    rank: Dim = Field(default=4, ge=1)
    controller_hidden: Dim = Field(default=0, ge=0)
    quality_sigma: float = Field(default=0.8, gt=0)
    input_noise: float = Field(default=1.0, gt=0)


class LearningSection(ConfigSection):
    """Update rule, replay and regularization."""

    learning_rate: float = Field(default=0.02, gt=0)
    optimizer: Literal["adamw", "adam", "sgd"] = "adam"
    clip_norm: float = Field(default=1.0, gt=0)
    update_every: BatchSize = Field(default=32, ge=1)
    replay_capacity: Capacity = Field(default=10_000, ge=1)
    replay_batch: BatchSize = Field(default=32, ge=1)
    replay_weight: float = Field(default=1.0, ge=0)
    replay_alpha: float = Field(default=0.6, ge=0, le=1)
    replay_beta: float = Field(default=0.4, ge=0, le=1)
    regularizer: Literal["ewc", "prox", "none"] = "ewc"
    ewc_lambda: float = Field(default=50.0, ge=0)
    prox_mu: float = Field(default=1.0, ge=0)
    online_fisher: bool = False
    fisher_decay: float = Field(default=0.99, ge=0, le=1)


class WarmupSection(ConfigSection):
    """The starting checkpoint: trained on the pre-shift mix, or loaded."""

    examples: Capacity = Field(default=2048, ge=1)
    steps: Count = Field(default=200, ge=0)
    learning_rate: float = Field(default=0.05, gt=0)
    # A controller checkpoint (.npz from save_controller) to start from; the
    # Fisher is then computed at it on the warm-up examples.
    warmup_from: str | None = None


class SafetySection(ConfigSection):
    """Canary gate and drift monitor limits."""

    canary_per_family: Capacity = Field(default=64, ge=1)
    canary_tolerance: float = Field(default=0.002, ge=0)
    probes: Capacity = Field(default=128, ge=1)
    max_kl: float = Field(default=0.5, gt=0)
    max_norm_ratio: float = Field(default=1.5, gt=1)
    spike_z: float = Field(default=4.0, gt=0)
    spike_decay: float = Field(default=0.95, gt=0, lt=1)
    spike_min_std: float = Field(default=0.05, ge=0)
    spike_warmup: Count = Field(default=8, ge=1)


class SoakSection(ConfigSection):
    """The simulated stream."""

    # The whole stream (one event a second) is generated up front: a week is
    # 604,800 events.
    hours: float = Field(default=24.0, gt=0, le=168)
    shift_fraction: float = Field(default=0.5, ge=0, le=1)
    noise_rate: float = Field(default=0.05, ge=0, le=1)
    poison_bursts: Count = Field(default=6, ge=0)
    poison_burst_length: Count = Field(default=120, ge=1)
    poison_shift_guard: float = Field(default=0.1, ge=0, le=1)
    nan_rate: float = Field(default=0.002, ge=0, le=1)
    malformed_rate: float = Field(default=0.002, ge=0, le=1)
    explore_epsilon: float = Field(default=0.1, ge=0, le=1)
    save_every_events: Count = Field(default=900, ge=1)
    eval_every_events: Count = Field(default=1800, ge=1)
    eval_per_family: Capacity = Field(default=256, ge=1)


class StoreSection(ConfigSection):
    """Where versions go."""

    root: str = "networks"
    network_id: str = "controller-soak"
    max_to_keep: Count | None = Field(default=8, ge=1)


class ControllerConfig(ConfigSection):
    """``configs/controller.yaml``: the whole seed-003 learner and its soak."""

    seed: Seed = 0
    model: ModelSection = Field(default_factory=ModelSection)
    learning: LearningSection = Field(default_factory=LearningSection)
    warmup: WarmupSection = Field(default_factory=WarmupSection)
    safety: SafetySection = Field(default_factory=SafetySection)
    soak: SoakSection = Field(default_factory=SoakSection)
    store: StoreSection = Field(default_factory=StoreSection)


def _env_spec(config: ControllerConfig) -> EnvSpec:
    m = config.model
    return EnvSpec(
        seed=config.seed,
        d_in=m.d_in,
        d_hidden=m.d_hidden,
        d_out=m.d_out,
        num_experts=m.num_experts,
        rank=m.rank,
        controller_hidden=m.controller_hidden,
        quality_sigma=m.quality_sigma,
        input_noise=m.input_noise,
        pre_shift_mix=_mix(m.num_experts, first_half=True),
        post_shift_mix=_mix(m.num_experts, first_half=False),
    )


def _mix(k: int, *, first_half: bool) -> tuple[float, ...]:
    """90% of prompts from one half of the families, 10% from the other."""
    half = k // 2
    main = range(half) if first_half else range(half, k)
    n_main = len(main)
    return tuple(0.9 / n_main if f in main else 0.1 / (k - n_main) for f in range(k))


def scaled_poison_bursts(config: ControllerConfig, hours: float | None) -> int:
    """Poisoned bursts in a stream of ``hours``: ``soak.poison_bursts`` per
    ``soak.hours``, at least one when the config has any.

    A shorter run keeps the configured density of poisoned feedback: six bursts
    of 120 events in a quarter-hour stream (900 events) would make most of it
    poisoned, and every update would rightly be rejected.

    Args:
      config: the soak's configuration.
      hours: the run's length; ``None`` is ``soak.hours`` (no scaling).

    Returns:
      ``round(poison_bursts * hours / soak.hours)``, at least 1 when
      ``poison_bursts > 0``.
    """
    s = config.soak
    if hours is None or s.poison_bursts == 0:
        return s.poison_bursts
    return max(1, round(s.poison_bursts * hours / s.hours))


def _eval_every(config: ControllerConfig, num_events: int) -> int:
    # At least ~10 points on a short run's curves (never more often than a turn).
    every = config.soak.eval_every_events
    return min(every, max(config.learning.update_every, num_events // 10))


def _save_every(config: ControllerConfig, num_events: int) -> int:
    # The drift monitor compares with the last saved version: on a run shorter
    # than a few save intervals that is the starting checkpoint, the drift of a
    # whole run is measured as one step, and a rollback undoes all of it.
    every = config.soak.save_every_events
    return min(every, max(config.learning.update_every, num_events // 8))


def _stream_spec(config: ControllerConfig, hours: float | None) -> StreamSpec:
    s = config.soak
    return StreamSpec(
        seed=config.seed,
        hours=s.hours if hours is None else hours,
        shift_fraction=s.shift_fraction,
        noise_rate=s.noise_rate,
        poison_bursts=scaled_poison_bursts(config, hours),
        poison_burst_length=s.poison_burst_length,
        poison_shift_guard=s.poison_shift_guard,
        nan_rate=s.nan_rate,
        malformed_rate=s.malformed_rate,
        epsilon=s.explore_epsilon,
    )


# ----------------------------------------------------------------- pure pieces


# Why a gated update was refused, in the order the checks are charged: an
# update that fails several checks counts once, for the first of them.
REJECTION_REASONS = ("non_finite", "loss_spike", "canary", "calibrating")


def _rejection_reason(info: Mapping[str, Any], use_canary: bool) -> str:
    """The first failed check of a rejected update (see ``REJECTION_REASONS``)."""
    if not bool(info["applied"]):
        return "non_finite"
    if use_canary:
        if not bool(info["plausible"]):
            return "loss_spike"
        if not bool(info["canary_ok"]):
            return "canary"
        if not bool(info["calibrated"]):
            return "calibrating"
    raise ValueError(f"the update was accepted, it has no rejection reason: {info}")


def _example_loss(controller, frozen, x, expert, target):
    """BCE of the served expert's success logit for one example."""
    params = {**frozen, "controller": controller}
    logits = routed_mlp_apply(params, x).route_logits
    return binary_cross_entropy(logits[expert], target)


def _quality(output, reference, scale):
    return jnp.exp(-jnp.sum(jnp.square(output - reference)) / scale)


def _stack(examples: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    return {
        "x": np.stack([e["x"] for e in examples]).astype(np.float32),
        "expert": np.asarray([e["expert"] for e in examples], np.int32),
        "target": np.asarray([e["target"] for e in examples], np.float32),
        "weight": np.asarray([e["weight"] for e in examples], np.float32),
    }


def _frozen(params):
    return {k: v for k, v in params.items() if k != "controller"}


class OnlineLearner:
    """A routing controller that learns from live feedback, safely.

    Args:
      config: the learner configuration.
      env: the task environment (its frozen routed model and canary sets).
      controller: the starting controller weights (the warm-up checkpoint).
      fisher: the diagonal Fisher of the starting checkpoint, like ``controller``.
      store: an open :class:`~ol_jax.store.RunStore` (a run started), or ``None``
        to keep no versions (no rollback possible).
      regularizer: override of ``config.learning.regularizer``.
      use_replay: whether replayed examples join each update.
      use_canary: whether the canary gate may reject updates.
    """

    def __init__(
        self,
        config: ControllerConfig,
        env: TaskEnv,
        controller: Any,
        fisher: Any,
        *,
        store: RunStore | None = None,
        regularizer: str | None = None,
        use_replay: bool = True,
        use_canary: bool = True,
    ):
        self.config = config
        self.env = env
        self.store = store
        lc = config.learning
        self.regularizer = lc.regularizer if regularizer is None else regularizer
        if self.regularizer not in ("ewc", "prox", "none"):
            raise ValueError(
                f"regularizer must be 'ewc', 'prox' or 'none', got {self.regularizer!r}"
            )
        self.use_replay = use_replay
        self.use_canary = use_canary
        self.stream = StreamProcessor(config.model.d_in, config.model.num_experts)
        self.feedback = FeedbackProcessor()
        self.policy = BetweenPromptsPolicy()
        self.replay = prioritized_replay(
            capacity=lc.replay_capacity,
            batch_size=min(lc.replay_batch, lc.replay_capacity),
            alpha=lc.replay_alpha,
            beta=lc.replay_beta,
        )
        # Own copies: the state's buffers are donated to every update.
        params = jax.tree.map(
            lambda a: jnp.array(a, copy=True), {**env.params, "controller": controller}
        )
        self.tx = online_optimizer(
            lc.learning_rate,
            optimizer=lc.optimizer,
            clip_norm=lc.clip_norm,
            trainable=["controller"],
        )
        extras = {
            "anchor": jax.tree.map(lambda a: jnp.array(a, copy=True), controller),
            "fisher": jax.tree.map(lambda f: jnp.array(f, copy=True), fisher),
        }
        online = init_state(
            params, self.tx, key=jax.random.key(config.seed + 1), extras=extras
        )
        example = {
            "x": jnp.zeros((config.model.d_in,), jnp.float32),
            "expert": jnp.zeros((), jnp.int32),
            "target": jnp.zeros((), jnp.float32),
            "weight": jnp.zeros((), jnp.float32),
        }
        self.state = {
            "online": online,
            "replay": self.replay.init(example),
            "spike": init_spike_stats(),
        }
        self.good_controller = jax.tree.map(jnp.asarray, controller)
        self.good_version: int | None = None
        # Canary sets (reference answers per family) and drift probes.
        canary = env.labelled_set(config.seed + 101, config.safety.canary_per_family)
        self._canary = self._with_references(canary)
        probes = env.labelled_set(
            config.seed + 202,
            max(1, config.safety.probes // config.model.num_experts),
        )
        self._probe_x = jnp.asarray(probes["x"])
        self._update = jax.jit(self._gated_update, donate_argnums=(0,))
        self._drift = jax.jit(self._drift_measures)
        self.updates = 0
        self.accepted = 0
        self.rejected = 0
        self.rollbacks = 0
        # One reason per rejected update (the first failed check, in the order
        # of REJECTION_REASONS), so the counts add up to `rejected`.
        self.rejected_by = dict.fromkeys(REJECTION_REASONS, 0)
        self.accepted_canary_regressions = 0
        self.rollback_events: list[int] = []
        self.events_processed = 0
        self.history: list[dict[str, Any]] = []
        self._since_save: list[dict[str, Any]] = []
        # The journal position after the last record this learner has observed:
        # a version saved now reflects every record before it (applied, queued
        # in its entry's `pending`, or rolled back).
        self._journal_next = (
            store.journal.next_seq if store is not None and store.run_id else 0
        )

    # ------------------------------------------------------------ pure pieces

    def _with_references(self, labelled):
        refs = []
        for f in range(self.config.model.num_experts):
            xs = labelled["x"][labelled["family"] == f]
            out = jax.vmap(lambda v: routed_mlp_apply(self.env.params, v))(xs)
            refs.append(np.asarray(out.expert_outputs[:, f]))
        return {
            "x": jnp.asarray(labelled["x"]),
            "family": jnp.asarray(labelled["family"]),
            "reference": jnp.asarray(np.concatenate(refs)),
        }

    def _canary_scores(self, params) -> dict[str, jax.Array]:
        scale = jnp.float32(
            self.config.model.d_out * self.config.model.quality_sigma**2
        )
        c = self._canary
        out = jax.vmap(lambda v: routed_mlp_apply(params, v).output)(c["x"])
        q = jax.vmap(lambda o, r: _quality(o, r, scale))(out, c["reference"])
        scores = {}
        for f in range(self.config.model.num_experts):
            mask = (c["family"] == f).astype(jnp.float32)
            scores[f"family_{f}"] = jnp.sum(q * mask) / jnp.sum(mask)
        return scores

    def _loss(self, params, batch, *, frozen, extras, key):
        del frozen, key
        fz = jax.lax.stop_gradient(_frozen(params))
        ctrl = params["controller"]
        per = jax.vmap(lambda x, e, t: _example_loss(ctrl, fz, x, e, t))(
            batch["x"], batch["expert"], batch["target"]
        )
        w = batch["weight"]
        data = jnp.sum(per * w) / jnp.maximum(jnp.sum(w), 1.0)
        lc = self.config.learning
        if self.regularizer == "ewc":
            reg = ewc_penalty(ctrl, extras["anchor"], extras["fisher"], lc.ewc_lambda)
        elif self.regularizer == "prox":
            reg = proximal_penalty(ctrl, extras["anchor"], lc.prox_mu)
        else:
            reg = jnp.zeros((), jnp.float32)
        return data + reg, {"per_example": per, "data_loss": data, "penalty": reg}

    def _gated_update(self, state, new, key):
        lc = self.config.learning
        online, replay_state = state["online"], state["replay"]
        step = make_step(self._loss, self.tx, has_aux=True, jit=False)
        n_new = new["x"].shape[0]
        if self.use_replay:
            drawn = self.replay.sample(replay_state, key=key)
            ready = self.replay.can_sample(replay_state).astype(jnp.float32)
            rep = dict(drawn.experience)
            rep["weight"] = rep["weight"] * drawn.weights * lc.replay_weight * ready
            batch = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), new, rep)
        else:
            batch = new
        candidate, metrics = step(online, batch)
        sc = self.config.safety
        new_loss = jnp.mean(metrics["aux"]["per_example"][:n_new])
        plausible, spike = loss_spike_gate(
            new_loss,
            state["spike"],
            z=sc.spike_z,
            decay=sc.spike_decay,
            min_std=sc.spike_min_std,
            warmup=sc.spike_warmup,
        )
        before = self._canary_scores(online.params)
        after = self._canary_scores(candidate.params)
        gate = canary_gate(before, after, self.config.safety.canary_tolerance)
        accept = metrics["applied"]
        # Shadow mode: no update is applied until the spike gate has seen
        # `spike_warmup` batches and so knows the normal loss level.
        calibrated = state["spike"].count >= sc.spike_warmup
        if self.use_canary:
            accept = accept & gate.accept & plausible & calibrated
        new_online = otu.tree_where(accept, candidate, online)
        # The step counter always moves, so the next key differs.
        new_online = new_online._replace(step=candidate.step)
        if lc.online_fisher and self.regularizer == "ewc":
            fz = _frozen(online.params)
            fresh = fisher_diagonal(
                lambda c, ex: _example_loss(c, fz, ex["x"], ex["expert"], ex["target"]),
                new_online.params["controller"],
                {k: new[k] for k in ("x", "expert", "target")},
            )
            fisher = online_fisher(new_online.extras["fisher"], fresh, lc.fisher_decay)
            extras = dict(new_online.extras)
            extras["fisher"] = otu.tree_where(accept, fisher, extras["fisher"])
            new_online = new_online._replace(extras=extras)
        new_replay = replay_state
        if self.use_replay:
            per = metrics["aux"]["per_example"]
            updated = self.replay.update_priorities(
                self.replay.add(replay_state, new),
                drawn.indices,
                per[n_new:] + 1e-3,
            )
            new_replay = otu.tree_where(accept, updated, replay_state)
        info = {
            "accepted": accept,
            "applied": metrics["applied"],
            "loss": metrics["loss"],
            "data_loss": metrics["aux"]["data_loss"],
            "canary_before": before,
            "canary_after": after,
            "canary_worst": gate.worst,
            "new_loss": new_loss,
            "plausible": plausible,
            "canary_ok": gate.accept,
            "calibrated": calibrated,
        }
        new_state = {"online": new_online, "replay": new_replay, "spike": spike}
        return new_state, info

    def _drift_measures(self, controller, good):
        frozen = _frozen(self.env.params)

        def logits(c):
            p = {**frozen, "controller": c}
            return jax.vmap(lambda v: routed_mlp_apply(p, v).route_logits)(
                self._probe_x
            )

        kl = output_kl(logits(good), logits(controller))
        ratio = param_norm_ratio(controller, good)
        return drift_check(
            kl,
            ratio,
            max_kl=self.config.safety.max_kl,
            max_norm_ratio=self.config.safety.max_norm_ratio,
        )

    # ------------------------------------------------------------ the shell

    @property
    def params(self) -> Any:
        """The deployed routed-model parameters."""
        return self.state["online"].params

    @property
    def controller(self) -> Any:
        return self.state["online"].params["controller"]

    def begin_prompt(self) -> None:
        """A prompt is being served: feedback now waits (updates between prompts)."""
        self.policy.begin_prompt()

    def end_prompt(self) -> None:
        self.policy.end_prompt()

    def observe(self, events: Sequence[Any]) -> int:
        """Validates events and queues their examples; returns how many passed.

        With a store, the valid events are first appended to the run's feedback
        journal as one commit (``store.durability: sync``: on disk when this
        returns; listed by ``store.feedback_records()``). The commit's last
        record also carries the event count and stream counters after this call
        (``observed``), so :meth:`replay_journal` can redo the call exactly.
        """
        signals = []
        for event in events:
            self.events_processed += 1
            signal = self.stream.process(event)
            if signal is not None:
                signals.append(signal)
        if self.store is not None and signals:
            records = [_signal_record(s) for s in signals]
            records[-1]["observed"] = {
                "events": self.events_processed,
                "stream": self.stream.counters(),
            }
            seqs = self.store.journal.append_many(records)
            self._journal_next = seqs[-1] + 1
        for signal in signals:
            self.policy.submit(self.feedback.to_example(signal))
        return len(signals)

    def maybe_update(self) -> list[dict[str, Any]]:
        """Runs gated updates on full batches of queued examples (between prompts)."""
        b = self.config.learning.update_every
        results = []
        while self.policy.pending >= b and not self.policy.in_prompt:
            examples = self.policy.drain(b)
            results.append(self.update(examples))
        return results

    def update(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """One gated update on ``examples``, then the drift check."""
        batch = _stack(examples)
        key = jax.random.fold_in(jax.random.key(self.config.seed + 2), self.updates)
        self.state, info = self._update(self.state, batch, key)
        self.updates += 1
        info = jax.device_get(info)
        accepted = bool(info["accepted"])
        n_poisoned = int(sum(bool(e.get("poisoned", False)) for e in examples))
        record = {
            "update": self.updates,
            "events": self.events_processed,
            "accepted": accepted,
            "poisoned": n_poisoned,
            "size": len(examples),
            "canary_worst": float(info["canary_worst"]),
            "canary_regressed": bool(
                float(info["canary_worst"]) > 0.0 or not bool(info["applied"])
            ),
            "rolled_back": False,
            "loss": float(info["loss"]),
            "new_loss": float(info["new_loss"]),
            "spike": not bool(info["plausible"]),
            "applied": bool(info["applied"]),
        }
        reason = None if accepted else _rejection_reason(info, self.use_canary)
        record["rejected_by"] = reason
        if accepted:
            self.accepted += 1
            self.accepted_canary_regressions += record["canary_regressed"]
            drift = self.check_drift()
            record.update(kl=drift["kl"], norm_ratio=drift["norm_ratio"])
            self._since_save.append(record)
            if drift["drifted"]:
                self.rollback(reason="drift")
        else:
            self.rejected += 1
            self.rejected_by[reason] += 1
        self.history.append(record)
        return record

    def check_drift(self) -> dict[str, Any]:
        """Drift of the current controller from the last good version."""
        report = jax.device_get(self._drift(self.controller, self.good_controller))
        return {
            "drifted": bool(report.drifted),
            "kl": float(report.kl),
            "norm_ratio": float(report.norm_ratio),
        }

    # ------------------------------------------------------------ versions

    def _flat_state(self):
        online = self.state["online"]
        return {
            **self.state,
            "online": online._replace(key=jax.random.key_data(online.key)),
        }

    def _tree_to_save(self):
        # Numbered leaves: Orbax stores plain dicts of arrays, whatever the optax
        # state's node types are; the live state is the template for loading.
        leaves = jax.tree.leaves(self._flat_state())
        return {"leaves": {str(i): x for i, x in enumerate(leaves)}}

    def _load_tree(self, tree):
        leaves, treedef = jax.tree.flatten(self._flat_state())
        loaded = [
            jnp.asarray(tree["leaves"][str(i)]).astype(leaf.dtype)
            for i, leaf in enumerate(leaves)
        ]
        restored = jax.tree.unflatten(treedef, loaded)
        online = restored["online"]
        restored["online"] = online._replace(key=jax.random.wrap_key_data(online.key))
        self.state = restored
        self.good_controller = jax.tree.map(jnp.array, self.controller)

    def _metadata(self, **extra) -> dict[str, Any]:
        return {
            "events_processed": self.events_processed,
            "updates": self.updates,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "rollbacks": self.rollbacks,
            "rejected_by": dict(self.rejected_by),
            "accepted_canary_regressions": self.accepted_canary_regressions,
            "rollback_events": list(self.rollback_events),
            "stream": self.stream.counters(),
            "pending": [
                {
                    "x": np.asarray(e["x"]).tolist(),
                    "expert": int(e["expert"]),
                    "target": float(e["target"]),
                    "weight": float(e["weight"]),
                    "poisoned": bool(e.get("poisoned", False)),
                }
                for e in self.policy.peek()
            ],
            **extra,
        }

    def save(self, **extra) -> int | None:
        """Saves the current state as a new (good) version; returns its number."""
        if self.store is None:
            return None
        tree = self._tree_to_save()
        version = self.store.save(
            tree,
            metadata_entry=self._metadata(**extra),
            journal_position=self._journal_next,
        )
        self.good_version = version
        self.good_controller = jax.tree.map(jnp.array, self.controller)
        self._since_save = []
        return version

    def rollback(self, reason: str = "drift") -> int | None:
        """Restores the last good version from the store, bit-exactly."""
        if self.store is None or self.good_version is None:
            raise ValueError(
                "rollback needs a store with a saved good version, got "
                f"store={self.store!r}, good_version={self.good_version!r}"
            )
        self.rollbacks += 1
        self.rollback_events.append(self.events_processed)
        for record in self._since_save:
            record["rolled_back"] = True
        self._since_save = []
        version = self.store.rollback(
            self.good_version,
            metadata_entry=self._metadata(reason=reason),
            journal_position=self._journal_next,
        )
        tree = self.store.restore(version)
        self._load_tree(tree)
        self.good_version = version
        return version

    def resume(self, *, replay: bool = True) -> dict[str, Any]:
        """Loads the store's latest version and its counters (after a crash).

        Args:
          replay: then apply the journaled events that version does not
            reflect (:meth:`replay_journal`); ``False`` leaves that to the
            caller (who may first restore what it keeps beside the store).

        Returns:
          The version's metadata entry.
        """
        if self.store is None:
            raise ValueError("resume needs a store, got None")
        version = self.store.latest_version()
        if version is None:
            raise ValueError("the run has no saved version to resume from, got None")
        self._load_tree(self.store.restore(version))
        entry = next(
            e for e in self.store.metadata()["entries"] if e.get("version") == version
        )
        self.good_version = version
        self.events_processed = int(entry["events_processed"])
        self.updates = int(entry["updates"])
        self.accepted = int(entry["accepted"])
        self.rejected = int(entry["rejected"])
        self.rollbacks = int(entry["rollbacks"])
        # Runs saved before these counters existed resume with what is known.
        self.rejected_by = dict.fromkeys(REJECTION_REASONS, 0)
        self.rejected_by.update(entry.get("rejected_by", {}))
        if "rejected_by" not in entry:
            self.rejected_by["unrecorded"] = self.rejected
        self.accepted_canary_regressions = int(
            entry.get("accepted_canary_regressions", 0)
        )
        self.rollback_events = [int(e) for e in entry.get("rollback_events", [])]
        self.stream.load_counters(entry["stream"])
        self.policy = BetweenPromptsPolicy()
        for e in entry["pending"]:
            self.policy.submit({**e, "x": np.asarray(e["x"], np.float32)})
        self._journal_next = self.store.journal_position(version)
        if replay:
            self.replay_journal()
        return entry

    def replay_journal(self, *, until_events: int | None = None) -> int:
        """Applies the journaled events no saved version reflects, each once.

        The records after the restored version's journal position were
        acknowledged by :meth:`observe` in a process that stopped before its
        next save. Each commit (one :meth:`observe` call) is redone in order:
        its examples are queued, the event count and stream counters set to
        what they were after that call, and :meth:`maybe_update` run, as the
        feeding loop did then. The records are not journaled again. Records
        after the last commit's ``observed`` marker belong to no finished call
        and are left alone.

        Args:
          until_events: stop after the call that brought the event count to
            this number or past it (a later call continues); ``None``: all.

        Returns:
          How many records were applied.
        """
        if self.store is None:
            raise ValueError("replay_journal needs a store, got None")
        records = self.store.journal.records(start=self._journal_next)
        group: list[dict[str, Any]] = []
        applied = 0
        for record in records:
            group.append(record)
            observed = record.get("observed")
            if observed is None:
                continue
            for item in group:
                self.policy.submit(self.feedback.to_example(_record_signal(item)))
            self.events_processed = int(observed["events"])
            self.stream.load_counters(observed["stream"])
            self._journal_next = record["seq"] + 1
            applied += len(group)
            group = []
            self.maybe_update()
            if until_events is not None and self.events_processed >= until_events:
                return applied
        # Records after the last `observed` are no finished commit that
        # observe() returned from (or predate the marker): not acknowledged,
        # not applied; the feeding loop sends those events again.
        return applied

    def calibrate_spike(self, losses: Sequence[float]) -> None:
        """Seeds the loss-spike gate with trusted batch losses (e.g. warm-up)."""
        sc = self.config.safety
        stats = init_spike_stats()
        for value in losses:
            _, stats = loss_spike_gate(
                jnp.float32(value),
                stats,
                z=sc.spike_z,
                decay=sc.spike_decay,
                min_std=sc.spike_min_std,
                warmup=sc.spike_warmup,
            )
        self.state = {**self.state, "spike": stats}

    def force_params(self, controller: Any) -> None:
        """Replaces the controller (for drills: inject drift, then check it)."""
        online = self.state["online"]
        params = {**online.params, "controller": jax.tree.map(jnp.asarray, controller)}
        self.state = {**self.state, "online": online._replace(params=params)}


# ----------------------------------------------------------------- warm-up


def _warmup_data(config: ControllerConfig, env: TaskEnv) -> dict[str, jax.Array]:
    """Trusted warm-up examples: pre-shift prompts, random experts, true quality."""
    n = config.warmup.examples
    rng = np.random.default_rng([config.seed, 99])
    k = config.model.num_experts
    # Only the pre-shift families: the post-shift ones are new to the checkpoint.
    families = rng.integers(0, max(1, k // 2), size=n)
    x = env.inputs(rng, families)
    expert = rng.integers(0, k, size=n).astype(np.int32)
    _, qk, _ = env.expert_quality(env.params, x, families.astype(np.int32))
    target = np.asarray(qk)[np.arange(n), expert].astype(np.float32)
    return {
        "x": jnp.asarray(x),
        "expert": jnp.asarray(expert),
        "target": jnp.asarray(target),
    }


def warmup_batch_losses(
    config: ControllerConfig, env: TaskEnv, controller: Any
) -> np.ndarray:
    """Mean BCE of ``controller`` on trusted warm-up batches of ``update_every``.

    These calibrate the loss-spike gate before the first live update, so that a
    poisoned burst early in the stream cannot set the gate's notion of normal.
    """
    data = _warmup_data(config, env)
    frozen = _frozen(env.params)
    per = jax.vmap(lambda a, e, t: _example_loss(controller, frozen, a, e, t))(
        data["x"], data["expert"], data["target"]
    )
    b = config.learning.update_every
    n = (per.shape[0] // b) * b
    if n == 0:
        return np.asarray([float(jnp.mean(per))])
    return np.asarray(per[:n].reshape(-1, b).mean(axis=1))


def warmup(config: ControllerConfig, env: TaskEnv, *, controller: Any = None):
    """The starting checkpoint and its diagonal Fisher (the EWC importances).

    Warm-up examples serve a uniformly random expert to pre-shift prompts and
    observe its true quality. Without ``controller`` (no ``warmup_from``), a
    controller is first trained on them with full-batch Adam; the diagonal Fisher
    ``F = 1/N sum_n (grad BCE_n)^2`` is then computed at the checkpoint on the same
    examples.

    Args:
      config: the learner configuration (``warmup`` section).
      env: the task environment.
      controller: a checkpoint to start from (e.g. :func:`load_controller` of
        ``warmup.warmup_from``); ``None`` trains one.

    Returns:
      ``(controller, fisher)``.

    References:
      Kirkpatrick et al., `Overcoming catastrophic forgetting in neural networks
      <https://arxiv.org/abs/1612.00796>`_, PNAS 2017.
    """
    wc = config.warmup
    data = _warmup_data(config, env)
    frozen = _frozen(env.params)

    def loss(c):
        per = jax.vmap(lambda a, e, t: _example_loss(c, frozen, a, e, t))(
            data["x"], data["expert"], data["target"]
        )
        return jnp.mean(per)

    if controller is None:
        tx = optax.adam(wc.learning_rate)

        @jax.jit
        def train(c):
            def body(carry, _):
                c, o = carry
                g = jax.grad(loss)(c)
                with jax.numpy_dtype_promotion("standard"):
                    u, o = tx.update(g, o, c)
                return (optax.apply_updates(c, u), o), None

            (c, _), _ = jax.lax.scan(body, (c, tx.init(c)), None, length=wc.steps)
            return c

        controller = train(env.params["controller"])
    fisher = fisher_diagonal(
        lambda c, ex: _example_loss(c, frozen, ex["x"], ex["expert"], ex["target"]),
        controller,
        data,
    )
    return controller, fisher


def save_controller(path: str | os.PathLike[str], controller: Any) -> None:
    """Saves controller weights as ``.npz`` (one array per dotted path)."""
    flat = jax.tree_util.tree_flatten_with_path(controller)[0]
    np.savez(path, **{path_str(p): np.asarray(a) for p, a in flat})


def load_controller(path: str | os.PathLike[str], env: TaskEnv) -> Any:
    """Loads controller weights saved by :func:`save_controller` (``warmup_from``).

    Raises:
      ValueError: a weight is missing or has the wrong shape, naming it.
    """
    template = env.params["controller"]
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    with np.load(path) as data:
        for p, like in flat:
            name = path_str(p)
            if name not in data:
                raise ValueError(
                    f"warmup_from {path}: missing controller weight {name!r}, "
                    f"found {sorted(data.files)}"
                )
            a = data[name]
            if a.shape != like.shape:
                raise ValueError(
                    f"warmup_from {path}: controller weight {name!r} must have "
                    f"shape {like.shape}, got {a.shape}"
                )
            leaves.append(jnp.asarray(a, like.dtype))
    return jax.tree.unflatten(treedef, leaves)


# ----------------------------------------------------------------- the soak


def _signal_record(signal: Any) -> dict[str, Any]:
    """A validated feedback event as its journal record."""
    record = {
        "kind": signal.kind,
        "id": signal.event_id,
        "time": signal.timestamp,
        "reward": signal.reward,
        "expert": int(signal.expert),
        "features": np.asarray(signal.features, np.float32),
    }
    if signal.kind == "rating":  # reward = (rating - 1) / 9
        record["rating"] = int(round(signal.reward * 9 + 1))
    if signal.poisoned:  # simulator ground truth, for the reports
        record["poisoned"] = True
    return record


def _record_signal(record: Mapping[str, Any]) -> FeedbackSignal:
    """The signal a journal record of :func:`_signal_record` was made from."""
    return FeedbackSignal(
        event_id=record["id"],
        timestamp=record["time"],
        kind=record["kind"],
        reward=record["reward"],
        features=np.asarray(record["features"], np.float32),
        expert=record["expert"],
        poisoned=bool(record.get("poisoned", False)),
    )


def _open_store(config: ControllerConfig, out_dir: str, run_id: str) -> RunStore:
    net = NetworkConfig(
        network_id=config.store.network_id,
        store=StoreConfig(max_to_keep=config.store.max_to_keep),
        seed=config.seed,
    )
    root = os.path.join(out_dir, config.store.root)
    store = RunStore(root, config.store.network_id, config=net)
    store.start_run(run_id)
    return store


def run_soak(
    config: ControllerConfig | str | os.PathLike[str],
    hours: float | None = None,
    out_dir: str | os.PathLike[str] = "soak",
    *,
    run_id: str = "soak",
    resume: bool = False,
    plot: bool = True,
    regularizer: str | None = None,
    use_replay: bool = True,
    use_canary: bool = True,
    progress: bool = False,
    on_progress: Callable[[int, int, OnlineLearner], None] | None = None,
) -> dict[str, Any]:
    """Replays a simulated feedback stream through an :class:`OnlineLearner`.

    One event per simulated second (``hours * 3600`` events), the family mix
    shifting at ``soak.shift_fraction``, with noisy, poisoned and malformed
    events. Prompts are served in turns of ``update_every`` prompts; feedback
    arriving during a turn is queued and applied between turns. A version is
    saved every ``save_every_events`` events. With ``resume=True`` the run
    continues from its latest saved version (after a crash), and no event is
    processed twice.

    A run of other length than ``soak.hours`` keeps the configured density of
    poisoned bursts (:func:`scaled_poison_bursts`); a short one also saves (the
    drift monitor's reference) at least 8 times and evaluates at least 10 times.

    Args:
      config: a :class:`ControllerConfig` or a YAML path.
      hours: stream length; ``None`` uses ``soak.hours``.
      out_dir: folder for the run store, ``report.json`` and ``report.png``.
      run_id: the run's id in the store.
      resume: continue an existing run from its latest version. Without it, an
        ``out_dir`` that already holds a soak run is refused.
      plot: write the PNG plot.
      regularizer, use_replay, use_canary: ablations (see :class:`OnlineLearner`).
      progress: print a JSON line per evaluation.
      on_progress: called after every turn of prompts as
        ``on_progress(events_done, events_total, learner)``.

    Returns:
      The report (also written to ``out_dir/report.json``).

    Raises:
      ValueError: ``out_dir`` holds a run and ``resume`` is false.
    """
    if not isinstance(config, ControllerConfig):
        config = load_config(config, ControllerConfig)
    out_dir = os.fspath(out_dir)
    if not resume:
        _refuse_existing_run(config, out_dir, run_id)
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.perf_counter()
    env = TaskEnv(_env_spec(config))
    spec = _stream_spec(config, hours)
    windows = poison_windows(spec)
    start_from = None
    if config.warmup.warmup_from:
        start_from = load_controller(config.warmup.warmup_from, env)
    controller, fisher = warmup(config, env, controller=start_from)
    store = _open_store(config, out_dir, run_id)
    learner = OnlineLearner(
        config,
        env,
        controller,
        fisher,
        store=store,
        regularizer=regularizer,
        use_replay=use_replay,
        use_canary=use_canary,
    )
    learner.calibrate_spike(warmup_batch_losses(config, env, controller))
    eval_set = env.labelled_set(config.seed + 303, config.soak.eval_per_family)
    pre = np.arange(config.model.num_experts) < config.model.num_experts // 2
    start_scores = env.family_scores({**env.params, "controller": controller}, eval_set)
    timeline: list[dict[str, Any]] = []
    resumed = resume and store.latest_version() is not None
    if resumed:
        learner.resume(replay=False)
        # Updates written after the last saved version are redone by the
        # journal's replay; the earlier updates' records let the report cover
        # the run.
        learner.history = [
            r for r in _load_history(out_dir) if r["events"] <= learner.events_processed
        ]
        _write_history(out_dir, learner.history, mode="w")
    else:
        learner.save(reason="start")
        _write_history(out_dir, [], mode="w")
        # The starting point of the curves: the warm-up checkpoint's scores.
        timeline.append(_timeline_point(env, learner, eval_set, 0, scores=start_scores))
        _write_timeline(out_dir, timeline)
    turn = config.learning.update_every
    n = spec.num_events
    save_every = _save_every(config, n)
    written = len(learner.history)
    if resumed:
        # Events acknowledged after that version are applied from the journal,
        # not fed again: the loop continues after the last of them. A save the
        # stopped process did not finish is made where it was due.
        while True:
            due = min((learner.events_processed // save_every + 1) * save_every, n)
            learner.replay_journal(until_events=due)
            if learner.events_processed < due:
                break
            learner.save(reason="periodic")
            _write_history(out_dir, learner.history[written:], mode="a")
            written = len(learner.history)
            if due >= n:
                break
        timeline = [
            t
            for t in _load_timeline(out_dir)
            if t["events"] <= learner.events_processed
        ]
    next_save = (learner.events_processed // save_every + 1) * save_every
    eval_every = _eval_every(config, n)
    next_eval = (learner.events_processed // eval_every + 1) * eval_every
    pos = start_pos = learner.events_processed
    t_loop = time.perf_counter()
    while pos < n:
        stop = min(pos + turn, n)
        prompts = make_prompts(env, spec, pos, stop)
        learner.begin_prompt()
        served = serve(env, learner.params, prompts, spec)
        events = make_events(prompts, served, spec, windows)
        learner.observe(events)
        learner.end_prompt()
        learner.maybe_update()
        pos = stop
        if pos >= next_eval or pos >= n:
            next_eval += eval_every
            timeline.append(_timeline_point(env, learner, eval_set, pos))
            _write_timeline(out_dir, timeline)
            if progress:
                print(json.dumps(timeline[-1]), flush=True)
        if pos >= next_save or pos >= n:
            next_save += save_every
            learner.save(reason="periodic")
            # Records up to a save are final (a rollback marks only later ones).
            _write_history(out_dir, learner.history[written:], mode="a")
            written = len(learner.history)
        if on_progress is not None:
            on_progress(pos, n, learner)
    store.flush()
    loop_s = time.perf_counter() - t_loop
    final_scores = env.family_scores(learner.params, eval_set)
    report = _report(
        config, spec, windows, learner, start_scores, final_scores, pre, timeline
    )
    report["wall_s"] = time.perf_counter() - t0
    report["loop_s"] = loop_s
    report["events_this_process"] = n - start_pos
    report["events_per_s"] = (n - start_pos) / max(loop_s, 1e-9)
    report["saved_versions_finite"] = _all_versions_finite(store)
    store.close()
    with open(os.path.join(out_dir, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    if plot:
        _plot(os.path.join(out_dir, "report.png"), report, learner.history)
    return report


def _refuse_existing_run(config: ControllerConfig, out_dir: str, run_id: str) -> None:
    run_dir = os.path.join(
        out_dir, config.store.root, config.store.network_id, "runs", run_id
    )
    found = [
        p
        for p in (run_dir, *(os.path.join(out_dir, f) for f in _SOAK_FILES))
        if os.path.exists(p)
    ]
    if found:
        raise ValueError(
            f"--out {out_dir} already holds a soak run ({found[0]}): continue it "
            f"with --resume (same --out and --run-id {run_id}), or choose another "
            f"--out folder"
        )


_SOAK_FILES = ("report.json", "timeline.json", "history.jsonl", "report.png")


def _timeline_point(env, learner, eval_set, events: int, *, scores=None):
    """One evaluation of the deployed parameters, at ``events`` events."""
    if scores is None:
        scores = env.family_scores(learner.params, eval_set)
    canary = jax.device_get(learner._canary_scores(learner.params))
    recent = learner.history[-50:]
    return {
        "events": events,
        "hours": events / 3600.0,
        "task_score": float(scores.mean()),
        "family_scores": scores.tolist(),
        "canary_score": float(np.mean(list(canary.values()))),
        "rollbacks": learner.rollbacks,
        "kl": float(np.mean([r.get("kl", 0.0) for r in recent] or [0.0])),
        "accepted": learner.accepted,
        "rejected": learner.rejected,
    }


def _write_timeline(out_dir: str, timeline) -> None:
    tmp = os.path.join(out_dir, "timeline.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(timeline, f)
    os.replace(tmp, os.path.join(out_dir, "timeline.json"))


def _write_history(out_dir: str, records, *, mode: str) -> None:
    path = os.path.join(out_dir, "history.jsonl")
    with open(path, mode, encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _load_history(out_dir: str) -> list[dict[str, Any]]:
    path = os.path.join(out_dir, "history.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:  # a line torn by a crash mid-write, or the last ""
            continue
    return out


def _load_timeline(out_dir: str):
    path = os.path.join(out_dir, "timeline.json")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _all_versions_finite(store: RunStore) -> bool:
    for v in store.versions():
        tree = store.restore(v)
        for leaf in jax.tree.leaves(tree):
            a = np.asarray(leaf)
            if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
                return False
    return True


def _report(config, spec, windows, learner, start, final, pre, timeline):
    hist = learner.history
    bursts = []
    for lo, hi in windows:
        touched = [
            r
            for r in hist
            if r["poisoned"] > 0
            and lo <= r["events"]
            and r["events"] - r["size"] < hi + 2 * config.learning.update_every
        ]
        kept = [r for r in touched if r["accepted"] and not r["rolled_back"]]
        majority = [r for r in touched if 2 * r["poisoned"] >= r["size"]]
        bursts.append(
            {
                "start_event": lo,
                "end_event": hi,
                "updates_with_poison": len(touched),
                "majority_poisoned_updates": len(majority),
                "rejected": sum(not r["accepted"] for r in touched),
                "rolled_back": sum(r["accepted"] and r["rolled_back"] for r in touched),
                "kept": len(kept),
                "majority_poisoned_kept": sum(
                    r["accepted"] and not r["rolled_back"] for r in majority
                ),
                "poisoned_examples_kept": sum(r["poisoned"] for r in kept),
            }
        )
    agg_start, agg_final = float(start.mean()), float(final.mean())
    pre_start, pre_final = float(start[pre].mean()), float(final[pre].mean())
    return {
        "events": spec.num_events,
        "hours": spec.hours,
        "shift_at_event": int(spec.shift_at),
        "poison_windows": windows,
        # soak.poison_bursts per soak.hours, scaled to this run's length.
        "poison_bursts": spec.poison_bursts,
        "stream": learner.stream.counters(),
        "updates": learner.updates,
        # Updates the bursts and canary figures below are computed from: all of
        # them, also in a run resumed after a crash.
        "updates_in_report": len(hist),
        "accepted_updates": learner.accepted,
        "rejected_updates": learner.rejected,
        "rollbacks": learner.rollbacks,
        "accepted_canary_regressions": learner.accepted_canary_regressions,
        "canary_tolerance": config.safety.canary_tolerance,
        # Why updates were refused: the first failed check of each, so the
        # counts add up to rejected_updates (see REJECTION_REASONS).
        "rejected_by": dict(learner.rejected_by),
        "rollback_events": list(learner.rollback_events),
        # Largest drop of any family's canary score among accepted updates.
        "max_accepted_canary_drop": max(
            [
                r["canary_worst"] + config.safety.canary_tolerance
                for r in hist
                if r["accepted"]
            ]
            or [0.0]
        ),
        "bursts": bursts,
        "all_bursts_handled": all(b["majority_poisoned_kept"] == 0 for b in bursts),
        "start_family_scores": start.tolist(),
        "final_family_scores": final.tolist(),
        "aggregate_start": agg_start,
        "aggregate_final": agg_final,
        "aggregate_improvement_pct": 100.0 * (agg_final - agg_start) / agg_start,
        "pre_shift_start": pre_start,
        "pre_shift_final": pre_final,
        "pre_shift_drop": pre_start - pre_final,
        "regularizer": learner.regularizer,
        "timeline": timeline,
    }


def _plot(path: str, report: Mapping[str, Any], history) -> None:
    """Scores, rejections and drift over simulated time, with the stream's events.

    The distribution shift is a dashed line, each poisoned burst a red band, each
    rollback a marker; the curves start at the warm-up checkpoint's score.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = report["timeline"]
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    fig.suptitle(
        f"ol-jax soak: {report['hours']:g} simulated hours, {report['events']:,} "
        f"events; task score {report['aggregate_start']:.3f} -> "
        f"{report['aggregate_final']:.3f} "
        f"({report['aggregate_improvement_pct']:+.1f}%)"
    )
    h = [t["hours"] for t in timeline]
    axes[0].plot(h, [t["task_score"] for t in timeline], marker=".", label="task score")
    axes[0].plot(
        h, [t["canary_score"] for t in timeline], marker=".", label="canary score"
    )
    axes[0].axhline(
        report["aggregate_start"], color="grey", lw=0.8, ls=":", label="start score"
    )
    axes[0].set_ylabel("score")
    axes[1].step(h, [t["rejected"] for t in timeline], where="post", label="rejected")
    axes[1].step(h, [t["accepted"] for t in timeline], where="post", label="accepted")
    axes[1].set_ylabel("updates (cumulative)")
    rollbacks = [e / 3600.0 for e in report.get("rollback_events", [])]
    if rollbacks:
        axes[1].plot(
            rollbacks,
            [0] * len(rollbacks),
            "v",
            color="black",
            label=f"rollback ({len(rollbacks)})",
        )
    hk = [r["events"] / 3600.0 for r in history if "kl" in r]
    axes[2].plot(hk, [r["kl"] for r in history if "kl" in r], lw=0.5)
    axes[2].set_ylabel("drift KL")
    axes[2].set_xlabel("simulated hours")
    for ax in axes:
        shift = report["shift_at_event"] / 3600.0
        ax.axvline(shift, color="tab:purple", ls="--", lw=1, label="shift")
        for i, (lo, hi) in enumerate(report["poison_windows"]):
            ax.axvspan(
                lo / 3600.0,
                hi / 3600.0,
                color="tab:red",
                alpha=0.2,
                label="poisoned burst" if i == 0 else None,
            )
        for e in rollbacks:
            ax.axvline(e, color="black", lw=0.5, alpha=0.5)
    axes[0].legend(loc="lower right", fontsize="small")
    axes[1].legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def soak_failures(report: Mapping[str, Any]) -> list[str]:
    """Why a soak report fails its acceptance checks; empty when it passes.

    The checks: aggregate task score up at least 1%, no accepted update that
    regressed a canary family, no mostly-poisoned update kept, every saved
    version finite.

    Args:
      report: the report of :func:`run_soak`.

    Returns:
      One sentence per failed check.
    """
    reasons = []
    pct = report["aggregate_improvement_pct"]
    if not pct >= 1.0:
        why = ""
        if report["accepted_updates"] == 0:
            by = (
                ", ".join(f"{k} {v}" for k, v in report["rejected_by"].items() if v)
                or "none"
            )
            why = (
                f": no update was accepted ({report['rejected_updates']} of "
                f"{report['updates']} rejected; first failed check: {by})"
            )
        elif report["rollbacks"]:
            why = (
                f" ({report['rollbacks']} drift rollbacks returned to earlier saved "
                "versions)"
            )
        reasons.append(
            f"aggregate task score changed by {pct:+.1f}%, less than the +1% "
            f"expected{why}"
        )
    if report["accepted_canary_regressions"]:
        reasons.append(
            f"{report['accepted_canary_regressions']} accepted updates regressed a "
            "canary family"
        )
    shift = report["shift_at_event"]
    for b in report["bursts"]:
        if b["majority_poisoned_kept"]:
            after = b["start_event"] - shift
            why = ""
            if 0 <= after < shift:
                # Seen in quarter-hour runs: the guard after the shift is a
                # fraction of the stream, a few updates in a short one.
                why = (
                    f"; it began {after} events after the distribution shift at "
                    f"event {shift}, while the loss on the new families is still "
                    "high, so the loss-spike gate cannot tell inverted feedback "
                    "from them (soak.poison_shift_guard is a fraction of the run: "
                    "a longer run leaves more room after the shift)"
                )
            reasons.append(
                f"poisoned burst at events {b['start_event']}-{b['end_event']}: "
                f"{b['majority_poisoned_kept']} mostly-poisoned updates were kept" + why
            )
    if not report["saved_versions_finite"]:
        reasons.append("a saved version holds non-finite weights")
    return reasons
