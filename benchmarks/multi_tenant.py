"""Many networks in one step: one vmapped update vs one call per network.

Prints a table and, with ``--json``, one JSON object as the last line:

* ``glyph_1000_speedup``: ``--networks`` (default 1,000) glyph networks, each with
  one new rating, updated by ONE ``make_multi_step`` call, against the same
  updates as ``--networks`` sequential calls of the jit-compiled single-network
  step (``make_step``), both with donated state. Median wall time of each over
  ``--repeats`` rounds, measured side by side in this process; the ratio is
  ``sequential / multi`` (target >= 20).
* ``glyph_multi_ms`` / ``glyph_sequential_ms`` / ``glyph_per_network_us``: the
  medians behind it.
* ``lora_16_speedup``: 16 users' LoRA updates on SmolLM2 in one batched step vs
  16 sequential steps. Not measured by this script (the multi-adapter LLM step
  is not part of it yet): reported as ``null``.

``--model small`` runs 8x8 glyphs with an 8-dim style latent instead of the
default 32x32 / 64, where a single update is cheaper than a call's dispatch.

Run: ``python benchmarks/multi_tenant.py [--json] [--networks 1000] [--repeats 5]
[--model default|small] [--chunk-size 8]``.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from ol_jax.core import (
    enable_compilation_cache,
    init_state,
    make_multi_step,
    make_step,
    partition_params,
    unstack_state,
)
from ol_jax.learners._glyph_common import (
    glyph_extras,
    glyph_loss_config,
    glyph_model_config,
    glyph_optimizer,
)
from ol_jax.learners._glyph_loss import glyph_extras_update, glyph_loss
from ol_jax.models import init_glyph
from ol_jax.store import NetworkConfig

# ``--model small``: a glyph network small enough that one update costs less than
# the dispatch of a jitted call, to show the per-call overhead the multi step saves.
SMALL_MODEL = {"style_z_dim": 8, "image_size": 8, "hidden": (16, 16, 8)}


def _setup(n: int, model: str):
    """The glyph learner's update rule and loss, and ``n`` stacked fresh networks."""
    config = NetworkConfig(
        network_id="bench",
        model=SMALL_MODEL if model == "small" else {},
        online_learning={"learning_rate": 0.05},
    )
    ol, cfg = config.online_learning, glyph_model_config(config)
    trainable = ["policy", *ol.finetune_layers]
    tx = glyph_optimizer(ol)
    loss_cfg = glyph_loss_config(cfg, ol)
    extras = glyph_extras(cfg, ol)

    def one(key):
        params, _ = partition_params(init_glyph(cfg, key=key), trainable)
        return init_state(params, tx, key=key, extras=extras)

    keys = jax.random.split(jax.random.key(0), n)
    stacked = jax.jit(jax.vmap(one))(keys)
    frozen = partition_params(init_glyph(cfg, key=keys[0]), trainable)[1]
    kw = {"has_aux": True, "extras_update": glyph_extras_update(loss_cfg)}
    return cfg, tx, glyph_loss(loss_cfg), kw, stacked, frozen


def _batches(cfg, n: int, round_: int):
    """One rating per network: ``[n, 1, ...]`` leaves, as the learner pads them."""
    k = jax.random.split(jax.random.key(1000 + round_), 3)
    return {
        "z": jax.random.normal(k[0], (n, 1, cfg.style_z_dim), jnp.float32),
        "image": jax.random.uniform(
            k[1], (n, 1, cfg.image_size, cfg.image_size), jnp.float32
        ),
        "reward": jax.random.uniform(k[2], (n, 1), jnp.float32, -1.0, 1.0),
        "valid": jnp.ones((n, 1), jnp.bool_),
        "time": jnp.full((n,), round_, jnp.int32),
    }


def bench_glyph(n: int, repeats: int, model: str, chunk: int | None):
    cfg, tx, loss_fn, kw, stacked, frozen = _setup(n, model)
    multi = make_multi_step(loss_fn, tx, donate=True, chunk_size=chunk, **kw)
    single = make_step(loss_fn, tx, donate=True, **kw)
    mask = jnp.ones((n,), jnp.bool_)
    singles = [unstack_state(stacked, i) for i in range(n)]
    # Per-network batches are sliced before timing: the sequential side pays only
    # for its step calls, as a per-network learner would.
    rounds = [_batches(cfg, n, r) for r in range(repeats + 1)]
    sliced = [[jax.tree.map(lambda x, i=i: x[i], b) for i in range(n)] for b in rounds]
    jax.block_until_ready(sliced)
    multi_s, seq_s = [], []
    for r in range(repeats + 1):  # round 0 compiles; alternate sides per round
        t0 = time.perf_counter()
        stacked, m = multi(stacked, rounds[r], mask, frozen)
        jax.block_until_ready((stacked, m))
        t1 = time.perf_counter()
        for i in range(n):
            singles[i], _ = single(singles[i], sliced[r][i], frozen)
        jax.block_until_ready(singles)
        t2 = time.perf_counter()
        if r:
            multi_s.append(t1 - t0)
            seq_s.append(t2 - t1)
    # Same work: after the same rounds, both sides hold the same policies.
    np.testing.assert_allclose(
        np.asarray(stacked.params["policy"]["mean"][n - 1]),
        np.asarray(singles[n - 1].params["policy"]["mean"]),
        atol=1e-4,
    )
    multi_ms, seq_ms = 1e3 * np.median(multi_s), 1e3 * np.median(seq_s)
    return {
        "glyph_networks": n,
        "glyph_multi_ms": float(multi_ms),
        "glyph_sequential_ms": float(seq_ms),
        "glyph_per_network_us": float(1e3 * multi_ms / n),
        "glyph_1000_speedup": (
            float(seq_ms / multi_ms) if n == 1000 and model == "default" else None
        ),
        "glyph_speedup": float(seq_ms / multi_ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--networks", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--model",
        choices=("default", "small"),
        default="default",
        help="glyph network size: the config default (32x32, z 64) or 8x8, z 8",
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=8,
        help="networks vmapped together inside the multi step (0: all at once)",
    )
    args = parser.parse_args()
    enable_compilation_cache()
    chunk = args.chunk_size or None
    figures = bench_glyph(args.networks, args.repeats, args.model, chunk)
    figures["glyph_chunk_size"] = chunk
    figures["glyph_model"] = args.model
    figures["lora_16_speedup"] = None
    figures["device"] = jax.devices()[0].device_kind
    n = args.networks
    rows = [
        (f"{n} glyph updates, one multi_step", f"{figures['glyph_multi_ms']:.1f} ms"),
        (
            f"{n} glyph updates, {n} step calls",
            f"{figures['glyph_sequential_ms']:.1f} ms",
        ),
        ("per network (multi_step)", f"{figures['glyph_per_network_us']:.1f} us"),
        ("speedup (target >= 20)", f"{figures['glyph_speedup']:.1f}x"),
        ("lora_16_speedup", "not measured (multi-adapter LLM step not here)"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"multi-tenant benchmark on {figures['device']}, medians of {args.repeats}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
