"""Benchmark: the seed-003 controller learner's full event path and 24-hour soak.

Measures events per second through the whole path (validate -> queue -> batched
gated update with prioritized replay, EWC, canary gate, spike gate -> drift
check -> periodic Orbax saves) on a simulated stream, and the wall time of the
24-hour soak (86,400 events, one per simulated second). Target: the 24-hour
stream in under 600 s on this CPU. Also times the prioritized replay alone
(flashbax-backed, capacity 10,000: one jitted add + sample + priority update of
32 items).

    PYTHONPATH=. python benchmarks/controller_stream.py [--hours 24] [--json]

With ``--json`` the last line is one JSON object with ``events_per_s`` and
``soak_24h_s`` (measured directly when ``--hours 24``, else extrapolated from
the measured rate, and marked so).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp

from ol_jax.core import enable_compilation_cache
from ol_jax.learners.controller import ControllerConfig, run_soak
from ol_jax.memory import prioritized_replay
from ol_jax.store import load_config


def replay_step_us(capacity: int = 10_000, batch: int = 32, iters: int = 500) -> float:
    """Microseconds per jitted add(32) + sample(32) + update_priorities(32)."""
    replay = prioritized_replay(capacity=capacity, batch_size=batch)
    example = {"x": jnp.zeros((16,), jnp.float32), "target": jnp.zeros((), jnp.float32)}

    @jax.jit
    def step(state, items, key):
        state = replay.add(state, items)
        drawn = replay.sample(state, key=key)
        return replay.update_priorities(state, drawn.indices, drawn.weights + 0.1)

    state = replay.init(example)
    items = {"x": jnp.ones((batch, 16), jnp.float32), "target": jnp.ones((batch,))}
    key = jax.random.key(0)
    state = jax.block_until_ready(step(state, items, key))
    start = time.perf_counter()
    for i in range(iters):
        state = step(state, items, jax.random.fold_in(key, i))
    jax.block_until_ready(state)
    return (time.perf_counter() - start) / iters * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/controller.yaml")
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    enable_compilation_cache()
    config = (
        load_config(args.config, ControllerConfig)
        if os.path.exists(args.config)
        else ControllerConfig()
    )
    replay_us = replay_step_us()
    out = args.out or tempfile.mkdtemp(prefix="controller_soak_")
    t0 = time.perf_counter()
    report = run_soak(config, args.hours, out, plot=True)
    total = time.perf_counter() - t0
    events = report["events"]
    rate = report["events_per_s"]
    measured = abs(args.hours - 24.0) < 1e-9
    soak_24h = total if measured else 86_400 / rate + (total - report["loop_s"])
    rows = [
        ("events", f"{events}"),
        ("replay add+sample+reprioritize (flashbax, 10k, 32)", f"{replay_us:.0f} us"),
        ("events_per_s (full path, loop)", f"{rate:.0f}"),
        ("loop_s", f"{report['loop_s']:.1f}"),
        ("wall_s (incl. warm-up, compile, final checks)", f"{total:.1f}"),
        (
            "soak_24h_s" + ("" if measured else " (extrapolated)"),
            f"{soak_24h:.1f}  (target < 600)",
        ),
        ("aggregate improvement %", f"{report['aggregate_improvement_pct']:.2f}"),
        ("accepted canary regressions", f"{report['accepted_canary_regressions']}"),
        ("all poisoned bursts handled", f"{report['all_bursts_handled']}"),
        ("rollbacks", f"{report['rollbacks']}"),
        (
            "updates accepted / rejected",
            f"{report['accepted_updates']} / {report['rejected_updates']}",
        ),
        ("saved versions finite", f"{report['saved_versions_finite']}"),
        ("report", os.path.join(out, "report.json")),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if args.json:
        print(
            json.dumps(
                {
                    "events": events,
                    "events_per_s": rate,
                    "replay_step_us": replay_us,
                    "soak_24h_s": soak_24h,
                    "soak_24h_measured": measured,
                    "aggregate_improvement_pct": report["aggregate_improvement_pct"],
                    "accepted_canary_regressions": report[
                        "accepted_canary_regressions"
                    ],
                    "all_bursts_handled": report["all_bursts_handled"],
                    "rollbacks": report["rollbacks"],
                    "saved_versions_finite": report["saved_versions_finite"],
                }
            )
        )


if __name__ == "__main__":
    main()
