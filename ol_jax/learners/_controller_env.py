"""A simulated multi-task environment for the routed controller (seed 003).

There are ``K`` task families; family ``f`` draws inputs around its own centre
``c_f`` and its correct answer is what frozen expert ``f`` outputs, so each
expert is good at exactly one family and the routing decides the score. The
quality of an answer ``y`` to input ``x`` of family ``f`` is
``q = exp(-||y - y*_f(x)||^2 / (O * sigma^2))`` in ``(0, 1]``.

A 24-hour stream has one feedback event per simulated second: a prompt is
drawn from the current family mixture (which shifts midway), served by one
expert sampled from the deployed router, and rated by a simulated user
(thumbs, tool result or 1-10 rating, all Bernoulli / Gaussian in ``q``). Some
feedback is noisy (random), some arrives in poisoned bursts (inverted), and
some events are malformed (missing fields, unknown type, rating 42, NaN).
Everything is a deterministic function of the seed and the event index.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ol_jax.models import init_routed_mlp, routed_mlp_apply

FEEDBACK_TYPES = ("thumbs", "tool_result", "rating")


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """Shape and randomness of the simulated environment."""

    seed: int = 0
    d_in: int = 16
    d_hidden: int = 32
    d_out: int = 8
    num_experts: int = 4
    rank: int = 4
    controller_hidden: int = 0
    input_noise: float = 1.0
    centre_scale: float = 1.5
    quality_sigma: float = 0.5
    pre_shift_mix: tuple[float, ...] = (0.45, 0.45, 0.05, 0.05)
    post_shift_mix: tuple[float, ...] = (0.05, 0.05, 0.45, 0.45)


class TaskEnv:
    """The simulated routing task: frozen model, family inputs, answer quality."""

    def __init__(self, spec: EnvSpec):
        if (
            len(spec.pre_shift_mix) != spec.num_experts
            or len(spec.post_shift_mix) != spec.num_experts
        ):
            raise ValueError(
                f"family mixes must have num_experts={spec.num_experts} entries, "
                f"got {len(spec.pre_shift_mix)} and {len(spec.post_shift_mix)}"
            )
        self.spec = spec
        key = jax.random.key(spec.seed)
        k_model, k_centres = jax.random.split(key)
        self.params = init_routed_mlp(
            k_model,
            d_in=spec.d_in,
            d_hidden=spec.d_hidden,
            d_out=spec.d_out,
            num_experts=spec.num_experts,
            rank=spec.rank,
            controller_hidden=spec.controller_hidden,
        )
        self.centres = np.asarray(
            spec.centre_scale
            * jax.random.normal(k_centres, (spec.num_experts, spec.d_in), jnp.float32)
        )
        self._quality_scale = float(spec.d_out * spec.quality_sigma**2)

    # -------------------------------------------------------------- data

    def inputs(self, rng: np.random.Generator, families: np.ndarray) -> np.ndarray:
        """Inputs ``x = c_f + noise`` for the given families, float32 ``[N, D]``."""
        noise = rng.standard_normal((len(families), self.spec.d_in))
        return (self.centres[families] + self.spec.input_noise * noise).astype(
            np.float32
        )

    def labelled_set(self, seed: int, per_family: int) -> dict[str, np.ndarray]:
        """A fixed set with ``per_family`` inputs of every family (canary / eval)."""
        rng = np.random.default_rng(seed)
        families = np.repeat(np.arange(self.spec.num_experts), per_family)
        return {"x": self.inputs(rng, families), "family": families.astype(np.int32)}

    def mix(self, t: float, shift_at: float) -> np.ndarray:
        """The family mixture at time ``t`` (seconds)."""
        mix = self.spec.pre_shift_mix if t < shift_at else self.spec.post_shift_mix
        p = np.asarray(mix, np.float64)
        return p / p.sum()

    # -------------------------------------------------------------- scoring

    @functools.partial(jax.jit, static_argnums=0)
    def expert_quality(self, params: Any, x: jax.Array, family: jax.Array):
        """``(q_mixed [N], q_experts [N, K], route_logits [N, K])`` for a batch."""

        def one(xi, fi):
            out = routed_mlp_apply(params, xi)
            target = out.expert_outputs[fi]
            err_mix = jnp.sum(jnp.square(out.output - target))
            err_k = jnp.sum(jnp.square(out.expert_outputs - target[None, :]), axis=-1)
            scale = jnp.float32(self._quality_scale)
            return jnp.exp(-err_mix / scale), jnp.exp(-err_k / scale), out.route_logits

        return jax.vmap(one)(x, family)

    def family_scores(self, params: Any, labelled: dict[str, np.ndarray]) -> np.ndarray:
        """Mean quality of the routed answer per family, float64 ``[K]``."""
        q, _, _ = self.expert_quality(params, labelled["x"], labelled["family"])
        q = np.asarray(q, np.float64)
        fam = labelled["family"]
        return np.array([q[fam == f].mean() for f in range(self.spec.num_experts)])


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    """The simulated feedback stream: length, shift, noise, poison and bad events."""

    seed: int = 0
    hours: float = 24.0
    events_per_second: float = 1.0
    shift_fraction: float = 0.5
    noise_rate: float = 0.05
    poison_bursts: int = 6
    poison_burst_length: int = 120
    nan_rate: float = 0.002
    malformed_rate: float = 0.002
    poison_shift_guard: float = 0.1
    epsilon: float = 0.1
    rating_noise: float = 0.7

    @property
    def num_events(self) -> int:
        return int(round(self.hours * 3600 * self.events_per_second))

    @property
    def shift_at(self) -> float:
        return self.hours * 3600 * self.shift_fraction


def poison_windows(spec: StreamSpec) -> list[tuple[int, int]]:
    """Event-index windows ``[start, end)`` of the poisoned bursts.

    Bursts are spread over the stream (one per equal slice, at a seeded offset);
    none overlaps the shift or the ``poison_shift_guard`` fraction of the stream
    right after it (such a burst is moved just past that guard).
    """
    n = spec.num_events
    if spec.poison_bursts <= 0 or n == 0:
        return []
    rng = np.random.default_rng([spec.seed, 7])
    shift = int(spec.shift_at * spec.events_per_second)
    guard = int(spec.poison_shift_guard * n)
    slices = np.linspace(0, n, spec.poison_bursts + 1).astype(int)
    windows = []
    for lo, hi in zip(slices[:-1], slices[1:], strict=True):
        room = hi - lo - spec.poison_burst_length
        if room <= 0:
            continue
        start = lo + int(rng.integers(0, room))
        end = start + spec.poison_burst_length
        if start < shift + guard and end > shift:
            # Right after the shift the model has not seen the new families, so
            # inverted feedback there is indistinguishable from the new truth.
            start = shift + guard
            end = start + spec.poison_burst_length
        windows.append((int(start), int(min(end, n))))
    return windows


def make_prompts(
    env: TaskEnv, spec: StreamSpec, start: int, stop: int
) -> dict[str, np.ndarray]:
    """The prompts of events ``start..stop-1`` (inputs, families, times, rng draws).

    Each event's randomness comes from its own ``Generator([seed, index])``, so any
    slice of the stream can be regenerated (after a crash) exactly.
    """
    idx = np.arange(start, stop)
    t = idx / spec.events_per_second
    fam = np.empty(len(idx), np.int32)
    x = np.empty((len(idx), env.spec.d_in), np.float32)
    u = np.empty((len(idx), 6), np.float64)
    for j, i in enumerate(idx):
        rng = np.random.default_rng([spec.seed, 1, int(i)])
        fam[j] = rng.choice(env.spec.num_experts, p=env.mix(t[j], spec.shift_at))
        x[j] = env.inputs(rng, fam[j : j + 1])[0]
        u[j] = rng.random(6)
    return {"index": idx, "time": t, "family": fam, "x": x, "u": u}


def serve(
    env: TaskEnv, params: Any, prompts: dict[str, np.ndarray], spec: StreamSpec
) -> dict[str, np.ndarray]:
    """Routes each prompt with the deployed ``params`` and samples the served expert.

    With probability ``epsilon`` a uniformly random expert is served (exploration),
    else one drawn from the router's distribution.
    """
    _, qk, logits = env.expert_quality(params, prompts["x"], prompts["family"])
    logits = np.asarray(logits, np.float64)
    qk = np.asarray(qk, np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    u = prompts["u"]
    cdf = np.cumsum(p, axis=-1)
    routed = np.minimum((u[:, 0:1] > cdf).sum(-1), env.spec.num_experts - 1)
    uniform = np.minimum(
        (u[:, 1] * env.spec.num_experts).astype(int), env.spec.num_experts - 1
    )
    explore = u[:, 2] < spec.epsilon
    expert = np.where(explore, uniform, routed).astype(np.int32)
    quality = qk[np.arange(len(expert)), expert]
    return {"expert": expert, "quality": quality}


def make_events(
    prompts: dict[str, np.ndarray],
    served: dict[str, np.ndarray],
    spec: StreamSpec,
    windows: list[tuple[int, int]],
) -> list[dict[str, Any]]:
    """Feedback events (plain dicts, as they would arrive from a live system)."""
    events = []
    for j, i in enumerate(prompts["index"]):
        i = int(i)
        rng = np.random.default_rng([spec.seed, 2, i])
        q = float(served["quality"][j])
        poisoned = any(lo <= i < hi for lo, hi in windows)
        noisy = rng.random() < spec.noise_rate
        if poisoned:
            q_seen = 1.0 - q
        elif noisy:
            q_seen = float(rng.random())
        else:
            q_seen = q
        kind = FEEDBACK_TYPES[int(rng.integers(0, 3))]
        if kind == "rating":
            value: Any = int(
                np.clip(round(1 + 9 * q_seen + spec.rating_noise * rng.normal()), 1, 10)
            )
        elif kind == "thumbs":
            value = "up" if rng.random() < q_seen else "down"
        else:
            value = "success" if rng.random() < q_seen else "failure"
        event: dict[str, Any] = {
            "id": f"evt-{i:07d}",
            "timestamp": float(prompts["time"][j]),
            "type": kind,
            "value": value,
            "prompt_id": f"prompt-{i:07d}",
            "features": prompts["x"][j].tolist(),
            "expert": int(served["expert"][j]),
        }
        r = rng.random()
        if r < spec.nan_rate:
            if rng.random() < 0.5:
                event["features"] = list(event["features"])
                event["features"][int(rng.integers(0, len(event["features"])))] = (
                    math.nan
                )
            else:
                event["type"], event["value"] = "rating", math.nan
        elif r < spec.nan_rate + spec.malformed_rate:
            flavour = int(rng.integers(0, 3))
            if flavour == 0:
                del event["timestamp"]
            elif flavour == 1:
                event["type"] = "emoji_reaction"
            else:
                event["type"], event["value"] = "rating", 42
        event["_poisoned"] = poisoned
        events.append(event)
    return events
