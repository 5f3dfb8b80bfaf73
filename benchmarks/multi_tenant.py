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
* ``lora_16_speedup``: ``--lora-users`` (default 16) users' LoRA updates on the
  real SmolLM2-135M (float32, LoRA q/v rank 4, loss CE + KL to the base, clip 0.1,
  AdamW, as ``benchmarks/llm_step.py``), one ``--lora-tokens`` (default 64) turn
  per user, all in ONE ``make_addressed_step`` call over the 16 stacked adapters,
  against 16 sequential calls of the single-adapter ``make_step``, both jitted
  with donated state, alternating per round; ratio ``sequential / batched``
  (target >= 3). ``lora_batched_ms`` / ``lora_sequential_ms`` are the medians.

``--model small`` runs 8x8 glyphs with an 8-dim style latent instead of the
default 32x32 / 64, where a single update is cheaper than a call's dispatch.

Run: ``python benchmarks/multi_tenant.py [--json] [--networks 1000] [--repeats 5]
[--model default|small] [--chunk-size 8] [--lora-users 16] [--lora-tokens 64]
[--lora-repeats 3] [--skip-glyph] [--skip-lora]``.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ol_jax.core import (
    enable_compilation_cache,
    init_state,
    make_addressed_step,
    make_multi_step,
    make_step,
    partition_params,
    stack_states,
    unstack_state,
)
from ol_jax.learners._glyph_common import (
    glyph_extras,
    glyph_loss_config,
    glyph_model_config,
    glyph_optimizer,
)
from ol_jax.learners._glyph_loss import glyph_extras_update, glyph_loss
from ol_jax.models import LoRAConfig, init_glyph, llama_apply, load_llama, split_lora
from ol_jax.objectives import token_cross_entropy, token_kl
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


def _lora_turn_loss(graphdef):
    """CE on one turn plus KL(base || adapted), the update of ``llm_step.py``."""

    def loss_fn(lora, turn, *, frozen, extras, key):
        del extras, key
        inputs, targets = turn["tokens"][:-1], turn["tokens"][1:]
        base = llama_apply(graphdef, lora, inputs, frozen=frozen, use_lora=False)
        logits = llama_apply(graphdef, lora, inputs, frozen=frozen)
        return token_cross_entropy(logits, targets) + token_kl(
            jax.lax.stop_gradient(base), logits
        )

    return loss_fn


def bench_lora(users: int, tokens: int, repeats: int):
    model, _ = load_llama(
        "smollm2-135m",
        lora_config=LoRAConfig(rank=4, alpha=16.0),
        key=jax.random.key(0),
    )
    graphdef, base, lora = split_lora(model)
    vocab = model.config.vocab_size
    del model
    tx = optax.chain(optax.clip_by_global_norm(0.1), optax.adamw(1e-4))
    loss_fn = _lora_turn_loss(graphdef)
    batched = make_addressed_step(loss_fn, tx, donate=True)
    single = make_step(loss_fn, tx, donate=True)
    # Copies: a donated state must not share buffers with another user's state.
    fresh = lambda: [
        init_state(jax.tree.map(jnp.copy, lora), tx, key=jax.random.key(u))
        for u in range(users)
    ]
    stacked, singles = stack_states(fresh()), fresh()
    ids = jnp.arange(users, dtype=jnp.int32)
    rounds = [
        {"tokens": jax.random.randint(jax.random.key(r), (users, tokens + 1), 0, vocab)}
        for r in range(repeats + 1)
    ]
    sliced = [[{"tokens": b["tokens"][u]} for u in range(users)] for b in rounds]
    jax.block_until_ready(sliced)
    batched_s, seq_s = [], []
    for r in range(repeats + 1):  # round 0 compiles; alternate sides per round
        t0 = time.perf_counter()
        stacked, m = batched(stacked, rounds[r], ids, base)
        jax.block_until_ready((stacked, m))
        t1 = time.perf_counter()
        for u in range(users):
            singles[u], _ = single(singles[u], sliced[r][u], base)
        jax.block_until_ready(singles)
        t2 = time.perf_counter()
        if r:
            batched_s.append(t1 - t0)
            seq_s.append(t2 - t1)
    # Same work: both sides end with the same adapters (Adam amplifies rounding in
    # near-zero coordinates, hence the loose bound; the tests check 1e-5 with SGD).
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(
            np.asarray(a), np.asarray(b), atol=5e-4
        ),
        unstack_state(stacked, users - 1).params,
        singles[users - 1].params,
    )
    batched_ms, seq_ms = 1e3 * np.median(batched_s), 1e3 * np.median(seq_s)
    return {
        "lora_users": users,
        "lora_tokens": tokens,
        "lora_batched_ms": float(batched_ms),
        "lora_sequential_ms": float(seq_ms),
        "lora_16_speedup": (
            float(seq_ms / batched_ms) if users == 16 and tokens == 64 else None
        ),
        "lora_speedup": float(seq_ms / batched_ms),
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
    parser.add_argument("--lora-users", type=int, default=16)
    parser.add_argument("--lora-tokens", type=int, default=64)
    parser.add_argument("--lora-repeats", type=int, default=3)
    parser.add_argument("--skip-glyph", action="store_true")
    parser.add_argument("--skip-lora", action="store_true")
    args = parser.parse_args()
    enable_compilation_cache()
    figures, rows = {"glyph_1000_speedup": None, "lora_16_speedup": None}, []
    if not args.skip_glyph:
        chunk = args.chunk_size or None
        figures.update(bench_glyph(args.networks, args.repeats, args.model, chunk))
        figures["glyph_chunk_size"] = chunk
        figures["glyph_model"] = args.model
        n = args.networks
        rows += [
            (
                f"{n} glyph updates, one multi_step",
                f"{figures['glyph_multi_ms']:.1f} ms",
            ),
            (
                f"{n} glyph updates, {n} step calls",
                f"{figures['glyph_sequential_ms']:.1f} ms",
            ),
            ("per network (multi_step)", f"{figures['glyph_per_network_us']:.1f} us"),
            ("glyph speedup (target >= 20)", f"{figures['glyph_speedup']:.1f}x"),
        ]
    if not args.skip_lora:
        figures.update(bench_lora(args.lora_users, args.lora_tokens, args.lora_repeats))
        u, t = args.lora_users, args.lora_tokens
        rows += [
            (
                f"{u} LoRA updates x {t} tokens, one step",
                f"{figures['lora_batched_ms']:.0f} ms",
            ),
            (
                f"{u} LoRA updates x {t} tokens, {u} step calls",
                f"{figures['lora_sequential_ms']:.0f} ms",
            ),
            ("LoRA speedup (target >= 3)", f"{figures['lora_speedup']:.2f}x"),
        ]
    figures["device"] = jax.devices()[0].device_kind
    width = max(len(r[0]) for r in rows)
    print(
        f"multi-tenant benchmark on {figures['device']}, medians of {args.repeats} "
        f"(glyph) / {args.lora_repeats} (LoRA) rounds"
    )
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
