"""Latency of one glyph feedback cycle (seed 000), ours and PyTorch eager.

Prints a table and, with ``--json``, one JSON object as the last line:

* ``cycle_p50_ms`` / ``cycle_p90_ms``: rating in -> update done -> new state ready
  (the jitted REINFORCE step on the recency window, without a checkpoint);
* ``cycle_ckpt_p50_ms``: the same through ``GlyphLearner.feedback`` + ``wait`` with
  a weight version handed to the store after every update (the time the caller
  is blocked) at ``--rate`` ratings per second, and ``ckpt_versions_per_s``:
  versions on disk per second over a back-to-back burst, none skipped;
* ``state_bytes``: update state per network (policy, fine-tuned layers, optimizer
  state, baseline and feedback window);
* ``torch_cycle_p50_ms`` and ``speedup_vs_torch``: the same update written in
  PyTorch eager, timed in the same run.

Run: ``python benchmarks/glyph_feedback.py [--json] [--repeats 200]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import jax
import numpy as np
import yaml

from ol_jax.core import enable_compilation_cache
from ol_jax.learners import GlyphLearner
from ol_jax.learners._glyph_common import MAX_LOG_STD_STEP
from ol_jax.store import RunStore


def _pcts(xs):
    xs = np.asarray(xs) * 1e3
    return float(np.percentile(xs, 50)), float(np.percentile(xs, 90))


def _tree_bytes(tree) -> int:
    return int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree)))


def _learner(root: str, durability: str = "sync") -> GlyphLearner:
    os.makedirs(os.path.join(root, "bench"), exist_ok=True)
    with open(os.path.join(root, "bench", "config.yaml"), "w") as f:
        # The demo network's update settings (networks/glyph-demo/config.yaml).
        demo = os.path.join(
            os.path.dirname(__file__), "..", "networks", "glyph-demo", "config.yaml"
        )
        with open(demo) as g:
            online = yaml.safe_load(g)["online_learning"]
        yaml.safe_dump(
            {
                "network_id": "bench",
                "online_learning": online,
                "store": {"durability": durability},
            },
            f,
        )
    return GlyphLearner(RunStore(root, "bench"))


def bench_jax(learner: GlyphLearner, repeats: int):
    glyphs = learner.generate(repeats + 20)
    cfg = learner.model_config
    rows = 1  # one rating per update, as in per_rating mode after the cold start
    state, frozen = learner.state, learner.frozen
    times = []
    for i, g in enumerate(glyphs):
        t0 = time.perf_counter()
        z = np.zeros((rows, cfg.style_z_dim), np.float32)
        img = np.zeros((rows, cfg.image_size, cfg.image_size), np.float32)
        z[0], img[0] = g.style_z, g.image
        valid = np.zeros((rows,), np.bool_)
        valid[0] = True
        reward = np.full((rows,), (1 + i % 10 - 5.5) / 4.5, np.float32)
        batch = jax.device_put(
            {
                "z": z,
                "image": img,
                "reward": reward,
                "valid": valid,
                "time": np.asarray(i, np.int32),
            }
        )
        # The learner's own compiled call (step and logged statistics).
        state, metrics = learner._step(state, batch, frozen)  # noqa: SLF001
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    return times[20:], state


def bench_learner(learner: GlyphLearner, repeats: int, rate: float):
    """Caller-blocked time per rating at ``rate`` ratings/s, then the sustained
    version throughput of a back-to-back burst (every version written)."""
    glyphs = learner.generate(2 * repeats + 10)
    for g in glyphs[:10]:
        learner.feedback(g.id, 5)
    learner.flush()
    times, acked = [], []
    for i, g in enumerate(glyphs[10 : 10 + repeats]):
        t0 = time.perf_counter()
        learner.feedback(g.id, 1 + i % 10)
        acked.append(time.perf_counter() - t0)
        learner.wait()
        times.append(time.perf_counter() - t0)
        time.sleep(max(0.0, 1.0 / rate - (time.perf_counter() - t0)))
    learner.flush()
    before = len(learner.store.versions())
    start = time.perf_counter()
    for i, g in enumerate(glyphs[10 + repeats :]):
        learner.feedback(g.id, 1 + i % 10)
    learner.flush()
    elapsed = time.perf_counter() - start
    written = len(learner.store.versions()) - before
    if written != repeats:
        raise RuntimeError(f"expected {repeats} new versions, found {written}")
    return times, written / elapsed, written, acked


def bench_torch(learner: GlyphLearner, repeats: int, threads: int):
    """The same update in PyTorch eager, with the same caching: per rating, the
    frozen layers' stage-3 values of the new glyph go into a 16-slot window; the
    window is decoded from them in one batched pass; window REINFORCE; Adam on the
    policy mean, capped natural-gradient steps on its log std, clipped AdamW on
    decoder.3/decoder.4; weight clamp."""
    import torch

    torch.set_num_threads(threads)
    cfg, ol = learner.model_config, learner.config.online_learning
    frozen = jax.device_get(learner.frozen)["decoder"]
    params = jax.device_get(learner.state.params)
    t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    k = {i: (t(frozen[i]["kernel"]), t(frozen[i]["bias"])) for i in ("0", "1", "2")}
    mean = t(params["policy"]["mean"]).requires_grad_()
    log_std = t(params["policy"]["log_std"]).requires_grad_()
    dec = {
        f"{i}.{n}": t(params["decoder"][i][n]).requires_grad_()
        for i in ("3", "4")
        for n in ("kernel", "bias")
    }
    lin = torch.linspace(-1, 1, cfg.image_size)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    coords = cfg.coord_scale * torch.stack([xx, yy, (xx**2 + yy**2).sqrt()], -1)
    h1 = cfg.hidden[1]
    pixel = coords.reshape(-1, 3) @ k["2"][0][h1:]  # [P, H2], constant

    def stage3(z):  # [D] -> [H2], frozen layers only
        m = torch.tanh(torch.tanh(z @ k["0"][0] + k["0"][1]) @ k["1"][0] + k["1"][1])
        return m @ k["2"][0][:h1] + k["2"][1]

    def decode(heads):  # [W, H2] -> [W, P]
        h = torch.tanh(heads[:, None, :] + pixel[None])
        h = torch.tanh(h @ dec["3.kernel"] + dec["3.bias"])
        f = (h @ dec["4.kernel"] + dec["4.bias"])[..., 0]
        f = f - f.mean(-1, keepdim=True)
        return torch.exp(-((cfg.stroke_sharpness * f) ** 2))

    lr = ol.learning_rate
    adam_mean = torch.optim.Adam([mean], lr=lr)
    adam_dec = torch.optim.AdamW(
        list(dec.values()), lr=lr * ol.finetune_lr_scale, weight_decay=ol.weight_decay
    )
    w = ol.feedback_window
    rng = np.random.default_rng(0)
    zs = torch.zeros(w, cfg.style_z_dim)
    heads = torch.zeros(w, cfg.hidden[2])
    imgs = torch.zeros(w, cfg.image_size * cfg.image_size)
    rewards = torch.zeros(w)
    times = torch.zeros(w)
    valid = torch.zeros(w)
    new_z = torch.tensor(rng.normal(size=(repeats + 20, cfg.style_z_dim)))
    new_z = new_z.to(torch.float32)
    new_img = torch.rand(repeats + 20, cfg.image_size * cfg.image_size)
    new_r = torch.tensor(rng.uniform(-1, 1, repeats + 20), dtype=torch.float32)
    tau = ol.pixel_noise_std
    times_s = []
    for step in range(repeats + 20):
        t0 = time.perf_counter()
        slot = step % w
        with torch.no_grad():
            zs[slot], imgs[slot], rewards[slot] = (
                new_z[step],
                new_img[step],
                new_r[step],
            )
            heads[slot] = stage3(new_z[step])
            times[slot], valid[slot] = step, 1.0
        weights = valid * 0.5 ** ((step - times) / ol.recency_half_life)
        s = log_std.clamp(ol.min_log_std, 2.0)
        logp_z = (-0.5 * ((zs - mean) / s.exp()) ** 2 - s).sum(-1)
        logp_x = (-0.5 * ((imgs - decode(heads)) / tau) ** 2).sum(-1)
        loss = -(weights * rewards * (logp_z + logp_x)).sum() / weights.sum()
        adam_mean.zero_grad()
        adam_dec.zero_grad()
        log_std.grad = None
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(dec.values()), ol.gradient_clip_norm)
        adam_mean.step()
        adam_dec.step()
        with torch.no_grad():
            step_ls = lr * ol.log_std_lr_scale * 0.5 * log_std.grad
            log_std -= step_ls.clamp(-MAX_LOG_STD_STEP, MAX_LOG_STD_STEP)
            for v in (mean, log_std, *dec.values()):
                v.clamp_(*ol.weight_clamp)
        times_s.append(time.perf_counter() - t0)
    return times_s[20:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument(
        "--rate", type=float, default=10.0, help="ratings/s for the blocked-time run"
    )
    parser.add_argument(
        "--durability",
        choices=("sync", "async"),
        default="sync",
        help="store.durability: feedback() returns after the journal fsync or at once",
    )
    args = parser.parse_args()
    enable_compilation_cache()
    root = tempfile.mkdtemp(prefix="ol_jax_glyph_bench_")
    try:
        learner = _learner(root, args.durability)
        jax_times, state = bench_jax(learner, args.repeats)
        state_bytes = _tree_bytes((state.params, state.opt_state, state.extras))
        ckpt_times, versions_per_s, versions, acked = bench_learner(
            learner, args.repeats, args.rate
        )
        # PyTorch at its best intra-op thread count: on a busy 2-core machine its
        # OpenMP threads spin against other jobs and 2 threads can be far slower.
        torch_runs = {
            n: bench_torch(learner, args.repeats, n)
            for n in sorted({1, os.cpu_count() or 1})
        }
        torch_threads = min(torch_runs, key=lambda n: np.median(torch_runs[n]))
        torch_times = torch_runs[torch_threads]
        learner.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    p50, p90 = _pcts(jax_times)
    c50, c90 = _pcts(ckpt_times)
    t50, t90 = _pcts(torch_times)
    figures = {
        "cycle_p50_ms": p50,
        "cycle_p90_ms": p90,
        "cycle_ckpt_p50_ms": c50,
        "durability": args.durability,
        "feedback_p50_ms": float(np.percentile(acked, 50) * 1e3),
        "feedback_p99_ms": float(np.percentile(acked, 99) * 1e3),
        "cycle_ckpt_p90_ms": c90,
        "ckpt_versions_per_s": versions_per_s,
        "versions_written": versions,
        "state_bytes": state_bytes,
        "torch_cycle_p50_ms": t50,
        "torch_cycle_p90_ms": t90,
        "torch_threads": torch_threads,
        "speedup_vs_torch": t50 / p50,
    }
    print(f"{'figure':<22}{'value':>14}")
    for name, value in figures.items():
        print(
            f"{name:<22}{value:>14.3f}"
            if isinstance(value, float)
            else f"{name:<22}{value!s:>14}"
        )
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
