"""Buffered learner inside a server: update throughput and inference slowdown.

Models, every one trained by ``BufferedLearner`` on its background thread with
the default Adam (clip 1.0, weight decay 0.01) unless a row says otherwise:

* byte Llama: ``byte_llama_config()`` (width 128, 4 layers, 0.92M parameters),
  cross-entropy, self-supervised texts of 43-47 bytes (45-49 tokens with BOS and
  EOS, padded to 48 or 56).
* MLP regressor: 64 inputs -> 1024 -> 1024 -> 1 (ReLU, 1.12M parameters), MSE
  on a fixed smooth target, examples added as float vectors.

1. ``small_updates_per_s``: updates per second of the byte Llama at the default
   settings (one update per 10 examples on the 10 newest), a feeder adding
   examples as fast as it can while at most ``2 * max_fused`` updates are
   pending, so a backlog exists and the learner fuses up to ``max_fused`` updates
   per compiled call. Also: one example per update, the same without fusion
   (``max_fused=1``), and the MLP regressor (Adam and SGD). Each figure is the
   median of ``--repeats`` windows of ``--seconds`` after warm-up windows that
   last until one compiles nothing new; beside it, updates per CPU-second of
   this process, which a machine shared with other work distorts less.
2. ``inference_slowdown``: one client sends greedy ``generate`` requests (prompt
   of ~20 bytes, 16 new tokens) back to back; the p50 latency with a feeder
   thread adding examples divided by the p50 with no feeder. ``--pairs`` windows
   of ``--latency-seconds`` without and with learning alternate in one process
   with one model, so the load of a shared machine hits both alike. The feeder
   either adds ``--feed-rate`` examples per second (``feed_rate / 10`` updates
   per second) or saturates the learner (always an update running and one
   queued), with the default ``learner_share`` 0.5 and with 1 (no pacing).
   The learners of (1) run one at a time too, their windows alternating.

Prints a table; with ``--json`` the last line is one JSON object.

Run:  PYTHONPATH=. python benchmarks/buffered_server.py [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from ol_jax.core import enable_compilation_cache
from ol_jax.learners import BufferedLearner, LearningConfig, byte_llama_config
from ol_jax.models import Llama

TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "online learning changes weights after feedback",
    "a small model learns while it serves requests",
    "buffered examples update the parameters in bulk",
]
PROMPTS = ["the quick brown fox", "online learning", "a small model learns"]
MLP_IN, MLP_HIDDEN = 64, 1024


def llama_learner(**config) -> BufferedLearner:
    model = Llama(byte_llama_config(), key=jax.random.key(0))
    cfg = LearningConfig(learning_rate=1e-3, checkpoint_frequency=None, **config)
    return BufferedLearner.from_llama(model, config=cfg, key=jax.random.key(1))


def mlp_apply(params, x):
    h = jax.nn.relu(x @ params["w1"] + params["b1"])
    h = jax.nn.relu(h @ params["w2"] + params["b2"])
    return h @ params["w3"] + params["b3"]


def mlp_learner(**config) -> BufferedLearner:
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    params = {
        "w1": jax.random.normal(k1, (MLP_IN, MLP_HIDDEN)) / np.sqrt(MLP_IN),
        "b1": jnp.zeros((MLP_HIDDEN,)),
        "w2": jax.random.normal(k2, (MLP_HIDDEN, MLP_HIDDEN)) / np.sqrt(MLP_HIDDEN),
        "b2": jnp.zeros((MLP_HIDDEN,)),
        "w3": jax.random.normal(k3, (MLP_HIDDEN, 1)) / np.sqrt(MLP_HIDDEN),
        "b3": jnp.zeros((1,)),
    }
    cfg = LearningConfig(
        learning_rate=1e-3, loss="mse", checkpoint_frequency=None, **config
    )
    return BufferedLearner(
        mlp_apply,
        params,
        config=cfg,
        key=jax.random.key(1),
        vector_shapes=((MLP_IN,), (1,)),
    )


def mlp_examples(n: int = 4096) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, MLP_IN)).astype(np.float32)
    y = np.sin(x @ rng.standard_normal((MLP_IN,)).astype(np.float32) / 8.0)
    return [(x[i], y[i : i + 1]) for i in range(n)]


class Feeder:
    """Adds examples to a learner: as fast as it keeps up (at most ``bound``
    updates pending, so a backlog always exists) or ``rate`` examples/s."""

    def __init__(self, learner: BufferedLearner, add, bound: int, rate=None):
        self.learner, self.add, self.bound, self.rate = learner, add, bound, rate
        self.count = 0

    def run(self, until) -> None:
        t0, k = time.perf_counter(), 0
        while not until():
            if self.rate is None and self.learner.pending_updates >= self.bound:
                time.sleep(2e-4)
                continue
            self.add(self.count)
            self.count += 1
            k += 1
            if self.rate is not None:
                delay = t0 + k / self.rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)


def saturate(feeder: Feeder, duration: float) -> tuple[float, float]:
    """Updates per second of wall time and per CPU-second in one window."""
    learner = feeder.learner
    before = learner.stats().total_updates
    t0, cpu = time.perf_counter(), time.process_time()
    feeder.run(lambda: time.perf_counter() - t0 >= duration)
    learner.wait(600)
    updates = learner.stats().total_updates - before
    return updates / (time.perf_counter() - t0), updates / (time.process_time() - cpu)


def warm_up(feeder: Feeder, seconds: float) -> None:
    """Saturating windows until one compiles nothing new (every fused x padded
    shape this traffic produces has been met)."""
    while True:
        variants = feeder.learner.stats().compiled_variants
        saturate(feeder, seconds)
        if feeder.learner.stats().compiled_variants == variants:
            return


def throughput(feeders: dict[str, Feeder], seconds: float, repeats: int):
    """Median updates/s (and per CPU-second) of each learner, the learners'
    windows alternating so that a change in the machine's load hits all."""
    for feeder in feeders.values():
        warm_up(feeder, seconds)
    wall = {name: [] for name in feeders}
    cpu = {name: [] for name in feeders}
    for _ in range(repeats):
        for name, feeder in feeders.items():
            w, c = saturate(feeder, seconds)
            wall[name].append(w)
            cpu[name].append(c)
    out = {}
    for name, feeder in feeders.items():
        learner = feeder.learner
        out[name] = {
            "updates_per_s": float(np.median(wall[name])),
            "updates_per_cpu_s": float(np.median(cpu[name])),
            "windows": wall[name],
            "compiled_variants": learner.stats().compiled_variants,
            "params": sum(int(np.size(x)) for x in jax.tree.leaves(learner.params)),
        }
        learner.close()
    return out


def latencies(learner: BufferedLearner, seconds: float) -> list[float]:
    out, start, k = [], time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        learner.generate(PROMPTS[k % len(PROMPTS)], max_new_tokens=16)
        out.append(time.perf_counter() - t)
        k += 1
    return out


def inference_slowdown(
    seconds: float, pairs: int, feed_rate: float | None, learner_share: float
) -> dict[str, float]:
    """Alternating windows of ``generate`` without and with learning."""
    learner = llama_learner(learner_share=learner_share)
    add = lambda i: learner.add_example(TEXTS[i % len(TEXTS)])  # noqa: E731
    warm_up(Feeder(learner, add, bound=2 * learner.config.max_fused), seconds)
    for p in PROMPTS:  # compile the decoder
        learner.generate(p, max_new_tokens=16)
    # Two pending updates keep the learner busy and drain quickly after a window.
    feeder = Feeder(learner, add, bound=2, rate=feed_rate)
    off, on, ratios, updates, busy_time = [], [], [], 0, 0.0
    for _ in range(pairs):
        quiet = latencies(learner, seconds)
        stop = threading.Event()
        thread = threading.Thread(target=feeder.run, args=(stop.is_set,), daemon=True)
        before = learner.stats().total_updates
        thread.start()
        t0 = time.perf_counter()
        busy = latencies(learner, seconds)
        busy_time += time.perf_counter() - t0
        stop.set()
        thread.join()
        learner.wait(600)
        updates += learner.stats().total_updates - before
        off += quiet
        on += busy
        ratios.append(float(np.median(busy) / np.median(quiet)))
    learner.close()
    p50_off, p50_on = float(np.median(off)), float(np.median(on))
    return {
        "learner_share": learner_share,
        "p50_off_ms": 1e3 * p50_off,
        "p50_on_ms": 1e3 * p50_on,
        "p90_off_ms": 1e3 * float(np.percentile(off, 90)),
        "p90_on_ms": 1e3 * float(np.percentile(on, 90)),
        "background_updates_per_s": updates / busy_time,
        "requests_off": len(off),
        "requests_on": len(on),
        "median_window_ratio": float(np.median(ratios)),
        "inference_slowdown": p50_on / p50_off,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per window")
    parser.add_argument("--repeats", type=int, default=5, help="windows per figure")
    parser.add_argument(
        "--latency-seconds", type=float, default=1.0, help="per latency window"
    )
    parser.add_argument("--pairs", type=int, default=10, help="off/on window pairs")
    parser.add_argument(
        "--feed-rate", type=float, default=20.0, help="examples/s while learning"
    )
    parser.add_argument("--json", action="store_true", help="JSON as the last line")
    args = parser.parse_args()
    enable_compilation_cache()
    sec, rep = args.seconds, args.repeats
    examples = mlp_examples()

    def text_feeder(**config) -> Feeder:
        learner = llama_learner(**config)
        add = lambda i: learner.add_example(TEXTS[i % len(TEXTS)])  # noqa: E731
        return Feeder(learner, add, bound=2 * learner.config.max_fused)

    def vector_feeder(**config) -> Feeder:
        learner = mlp_learner(**config)
        add = lambda i: learner.add_example(*examples[i % len(examples)])  # noqa: E731
        return Feeder(learner, add, bound=2 * learner.config.max_fused)

    runs = throughput(
        {
            "llama": text_feeder(),
            "llama_batch1": text_feeder(update_frequency=1),
            "llama_batch1_unfused": text_feeder(update_frequency=1, max_fused=1),
        },
        sec,
        rep,
    )
    runs |= throughput(
        {
            "mlp_adam": vector_feeder(),
            "mlp_adam_unfused": vector_feeder(max_fused=1),
            "mlp_sgd": vector_feeder(optimizer="sgd"),
        },
        sec,
        rep,
    )
    lat, pairs = args.latency_seconds, args.pairs
    paced = inference_slowdown(lat, pairs, args.feed_rate, 0.5)
    busy = inference_slowdown(lat, pairs, None, 0.5)
    busy_full = inference_slowdown(lat, pairs, None, 1.0)
    result = {
        "device": jax.devices()[0].device_kind,
        "load_average": os.getloadavg()[0],
        "model_params": runs["llama"]["params"],
        "small_updates_per_s": runs["llama"]["updates_per_s"],
        "small_updates_per_s_batch1": runs["llama_batch1"]["updates_per_s"],
        "mlp_params": runs["mlp_adam"]["params"],
        "mlp_updates_per_s": runs["mlp_adam"]["updates_per_s"],
        "mlp_sgd_updates_per_s": runs["mlp_sgd"]["updates_per_s"],
        "throughput": runs,
        "feed_rate": args.feed_rate,
        **paced,
        "saturated": busy,
        "saturated_share_1": busy_full,
    }
    labels = {
        "llama": "byte Llama, 10 examples/update (default)",
        "llama_batch1": "byte Llama, 1 example/update",
        "llama_batch1_unfused": "byte Llama, 1 example/update, max_fused=1",
        "mlp_adam": "MLP regressor, 10 examples/update, Adam",
        "mlp_adam_unfused": "MLP regressor, Adam, max_fused=1",
        "mlp_sgd": "MLP regressor, 10 examples/update, SGD",
    }
    rows = [
        ("byte Llama parameters", f"{runs['llama']['params']:,}", ""),
        ("MLP regressor parameters", f"{runs['mlp_adam']['params']:,}", ""),
    ]
    for name, label in labels.items():
        target = ">= 500" if name == "llama" else ""
        r = runs[name]
        value = f"{r['updates_per_s']:.1f} ({r['updates_per_cpu_s']:.1f})"
        rows.append((f"updates/s (per CPU-s), {label}", value, target))
    for name, r in (
        (f"{args.feed_rate:g} examples/s, share 0.5", paced),
        ("saturated, share 0.5", busy),
        ("saturated, share 1", busy_full),
    ):
        rows += [
            (
                f"generate p50 off / on, {name} (ms)",
                f"{r['p50_off_ms']:.1f} / {r['p50_on_ms']:.1f}",
                "",
            ),
            (
                "  background updates/s while serving",
                f"{r['background_updates_per_s']:.1f}",
                "",
            ),
            (
                "  inference slowdown (p50 on / off)",
                f"{r['inference_slowdown']:.2f}",
                "<= 1.5",
            ),
        ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>14}  target")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>14}  {target}")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
