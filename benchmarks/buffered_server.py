"""Buffered learner inside a server: update throughput and inference slowdown.

Model: the byte-level Llama of ``byte_llama_config()`` (width 128, 4 layers, about
0.92M parameters), trained by ``BufferedLearner`` with Adam, clip 1.0, weight
decay 0.01 and the cross-entropy loss, examples of 20-40 bytes (token bucket 64).

1. ``small_updates_per_s``: updates per second with the default settings (one
   update per 10 examples, batch of the 10 newest), examples fed as fast as the
   loop can, the update in the caller (no thread hand-off); also with one
   example per update (``small_updates_per_s_batch1``).
2. ``inference_slowdown``: one client sends greedy ``generate`` requests (prompt
   of ~20 bytes, 16 new tokens) back to back for ``--seconds``; the p50 latency
   with a feeder thread adding ``--feed-rate`` examples per second (so the
   background thread updates ``feed_rate / 10`` times per second) divided by the
   p50 with no feeder. The same process, model and compiled programs serve both.
   Also reported ("saturated"): the feeder keeps the update thread busy all the
   time; the slowdown then shows the cost of sharing the CPU cores.

Prints a table; with ``--json`` the last line is one JSON object.

Run:  PYTHONPATH=. python benchmarks/buffered_server.py [--json]
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import jax
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


def make_learner(batch_size: int | None, update_frequency: int, background: bool):
    model = Llama(byte_llama_config(), key=jax.random.key(0))
    config = LearningConfig(
        learning_rate=1e-3,
        update_frequency=update_frequency,
        batch_size=batch_size,
        checkpoint_frequency=None,
    )
    return BufferedLearner.from_llama(
        model, config=config, key=jax.random.key(1), background=background
    )


def updates_per_second(update_frequency: int, seconds: float) -> tuple[float, int]:
    learner = make_learner(None, update_frequency, background=False)
    for i in range(2 * update_frequency):  # compile
        learner.add_example(TEXTS[i % len(TEXTS)])
    jax.block_until_ready(learner.params)
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds:
        for _ in range(update_frequency):
            learner.add_example(TEXTS[i % len(TEXTS)])
            i += 1
        if i % (20 * update_frequency) == 0:
            jax.block_until_ready(learner.params)  # bound the dispatch queue
    jax.block_until_ready(learner.params)
    elapsed = time.perf_counter() - start
    updates = i // update_frequency
    n_params = sum(int(np.size(x)) for x in jax.tree.leaves(learner.params))
    learner.close()
    return updates / elapsed, n_params


def latencies(learner, seconds: float) -> list[float]:
    out, start, k = [], time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        learner.generate(PROMPTS[k % len(PROMPTS)], max_new_tokens=16)
        out.append(time.perf_counter() - t)
        k += 1
    return out


def inference_slowdown(seconds: float, feed_rate: float | None) -> dict[str, float]:
    learner = make_learner(None, 10, background=True)
    for i in range(20):  # compile the update and the decoder
        learner.add_example(TEXTS[i % len(TEXTS)])
    learner.wait()
    for p in PROMPTS:
        learner.generate(p, max_new_tokens=16)
    off = latencies(learner, seconds)
    stop = threading.Event()
    before = learner.stats().total_updates

    def feed():
        k, t0 = 0, time.perf_counter()
        while not stop.is_set():
            if feed_rate is None:
                # Saturate: keep the update thread busy without an endless queue.
                while learner.pending_updates >= 2 and not stop.is_set():
                    time.sleep(0.001)
            learner.add_example(TEXTS[k % len(TEXTS)])
            k += 1
            if feed_rate is not None:  # pace to feed_rate examples per second
                delay = t0 + k / feed_rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    time.sleep(0.2)
    t0 = time.perf_counter()
    on = latencies(learner, seconds)
    elapsed = time.perf_counter() - t0
    stop.set()
    feeder.join()
    learner.wait()
    done = learner.stats().total_updates - before
    learner.close()
    p50_off, p50_on = float(np.median(off)), float(np.median(on))
    return {
        "p50_off_ms": 1e3 * p50_off,
        "p50_on_ms": 1e3 * p50_on,
        "p90_off_ms": 1e3 * float(np.percentile(off, 90)),
        "p90_on_ms": 1e3 * float(np.percentile(on, 90)),
        "background_updates_per_s": done / elapsed,
        "requests_off": len(off),
        "requests_on": len(on),
        "inference_slowdown": p50_on / p50_off,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument(
        "--feed-rate", type=float, default=20.0, help="examples/s while learning"
    )
    parser.add_argument("--json", action="store_true", help="JSON as the last line")
    args = parser.parse_args()
    enable_compilation_cache()

    ups, n_params = updates_per_second(10, args.seconds)
    ups1, _ = updates_per_second(1, args.seconds)
    paced = inference_slowdown(args.seconds, args.feed_rate)
    busy = inference_slowdown(args.seconds, None)
    result = {
        "device": jax.devices()[0].device_kind,
        "model_params": n_params,
        "small_updates_per_s": ups,
        "small_updates_per_s_batch1": ups1,
        "feed_rate": args.feed_rate,
        **paced,
        "saturated": busy,
    }
    rows = [
        ("model parameters", f"{n_params:,}", ""),
        ("updates/s, 10 examples per update", f"{ups:.1f}", ">= 500"),
        ("updates/s, 1 example per update", f"{ups1:.1f}", ""),
        ("generate p50, learning off (ms)", f"{paced['p50_off_ms']:.1f}", ""),
    ]
    for name, r in ((f"{args.feed_rate:g} examples/s", paced), ("saturated", busy)):
        rows += [
            (f"generate p50, learning on, {name} (ms)", f"{r['p50_on_ms']:.1f}", ""),
            (
                "  p90 off / on (ms)",
                f"{r['p90_off_ms']:.1f} / {r['p90_on_ms']:.1f}",
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
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
