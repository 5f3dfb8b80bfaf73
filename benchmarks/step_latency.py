"""Latency of a small REINFORCE step: jit-compiled ``make_step`` vs the same step
run eagerly (op by op), side by side in one process.

The step: a diagonal Gaussian policy over a 64-dimensional ``style_z`` and a
two-layer head, a batch of 8 rated samples, ``reinforce_loss`` with an EMA baseline
in the state, ``online_optimizer`` (clip, AdamW, clamp, injected learning rate).

Prints a table and, with ``--json``, one JSON object as the last line with
``jit_p50_ms``, ``jit_p90_ms``, ``eager_p50_ms``, ``eager_p90_ms`` and
``speedup_jit_vs_eager`` (eager p50 / jit p50).

Run: ``python benchmarks/step_latency.py [--json] [--repeats 200]``.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from ol_jax import objectives
from ol_jax.core import (
    enable_compilation_cache,
    init_state,
    make_step,
    online_optimizer,
)

D, H, B = 64, 128, 8


def loss_fn(params, batch, *, frozen, extras, key):
    del frozen, key
    features = jnp.tanh(batch["z"] @ params["head"]["w1"]) @ params["head"]["w2"]
    advantage = batch["reward"] - extras["baseline"]

    def one(z, a, f):
        return objectives.reinforce_loss(
            params["policy"]["mean"], params["policy"]["log_std"], z, a
        ) + 1e-3 * jnp.sum(f * f)

    return jnp.mean(jax.vmap(one)(batch["z"], advantage, features))


def extras_update(extras, batch, aux):
    del aux
    return {
        "baseline": objectives.ema_baseline(
            extras["baseline"], jnp.mean(batch["reward"]), 0.9
        )
    }


def fresh_state(tx):
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {
        "policy": {"mean": jnp.zeros(D), "log_std": jnp.zeros(D)},
        "head": {
            "w1": 0.1 * jax.random.normal(k1, (D, H)),
            "w2": 0.1 * jax.random.normal(k2, (H, 1)),
        },
    }
    return init_state(
        params, tx, key=jax.random.key(1), extras={"baseline": jnp.zeros(())}
    )


def time_step(step, state, batches, warmup=10):
    times = []
    for i, batch in enumerate(batches):
        t0 = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready((state, metrics))
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return np.asarray(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    enable_compilation_cache()
    tx = online_optimizer(1e-2, clip_norm=1.0, weight_decay=1e-4, clamp=(-5.0, 5.0))
    rng = np.random.default_rng(0)
    batches = [
        {
            "z": jnp.asarray(rng.normal(size=(B, D)), jnp.float32),
            "reward": jnp.asarray(rng.uniform(-1, 1, B), jnp.float32),
        }
        for _ in range(args.repeats + 10)
    ]
    jitted = make_step(loss_fn, tx, extras_update=extras_update)
    eager = make_step(loss_fn, tx, extras_update=extras_update, jit=False)
    jit_ms = time_step(jitted, fresh_state(tx), batches)
    with jax.disable_jit():
        eager_ms = time_step(eager, fresh_state(tx), batches[: 40 + 10])
    figures = {
        "jit_p50_ms": float(np.percentile(jit_ms, 50)),
        "jit_p90_ms": float(np.percentile(jit_ms, 90)),
        "eager_p50_ms": float(np.percentile(eager_ms, 50)),
        "eager_p90_ms": float(np.percentile(eager_ms, 90)),
    }
    figures["speedup_jit_vs_eager"] = figures["eager_p50_ms"] / figures["jit_p50_ms"]
    print(f"{'step':<8}{'p50 ms':>10}{'p90 ms':>10}")
    print(f"{'jit':<8}{figures['jit_p50_ms']:>10.3f}{figures['jit_p90_ms']:>10.3f}")
    print(
        f"{'eager':<8}{figures['eager_p50_ms']:>10.3f}{figures['eager_p90_ms']:>10.3f}"
    )
    print(f"speedup (eager p50 / jit p50): {figures['speedup_jit_vs_eager']:.1f}x")
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
