"""Benchmark: the seed-002 teacher proxy on a simulated FAQ stream.

A :class:`~ol_jax.learners.TeacherProxyLearner` handles a Zipf stream of queries
(2,000 over 100 question families by default) answered by the deterministic
:class:`~ol_jax.feedback.SimulatedTeacher`, learning after every teacher answer.
Every local answer is checked against the teacher's answer (by the domain, not a
teacher call, so the check teaches nothing): it matches when the cosine
similarity of their sentence embeddings is at least
``policy.similarity_threshold``.

Prints a table of windows (forward rate, local answers, local accuracy) and
the figures; with ``--json`` the last line is one JSON object with
``forward_rate_last_window``, ``local_accuracy`` (over the local answers of the
last window), ``local_accuracy_all``, ``route_validate_ms`` (mean added latency
of the local path: encoder passes + router + validator, generation excluded),
``generate_ms`` (median time of a local answer), and ``updates_per_s`` of each
model (1000 / median update ms). Targets: ``forward_rate_last_window <= 0.3``,
``local_accuracy >= 0.95``, ``route_validate_ms <= 20``.

    PYTHONPATH=. python benchmarks/teacher_proxy.py [--queries 2000]
        [--families 100] [--window 200] [--config configs/teacher_proxy.yaml]
        [--root networks] [--json]

The run folder (``<root>/teacher-proxy/runs/<id>/``) gets
``decisions.jsonl`` and ``teacher_proxy.png`` (forward rate and local accuracy).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from ol_jax.core import enable_compilation_cache
from ol_jax.feedback import SimulatedTeacher, faq_domain, zipf_stream
from ol_jax.learners import TeacherProxyConfig, TeacherProxyLearner
from ol_jax.store import load_config


def run(args: argparse.Namespace) -> dict:
    config = load_config(args.config, TeacherProxyConfig)
    if args.tiny:
        config = config.model_copy(
            update={
                "encoder": config.encoder.model_copy(update={"name": "tiny"}),
                "generator": config.generator.model_copy(
                    update={"name": "tiny", "max_new_tokens": 64, "max_length": 160}
                ),
            }
        )
    domain = faq_domain(args.families, paraphrases=args.paraphrases, seed=args.seed)
    teacher = SimulatedTeacher(domain)
    stream = zipf_stream(domain, args.queries, seed=args.seed, exponent=args.exponent)
    threshold = config.policy.similarity_threshold
    start = time.perf_counter()
    learner = TeacherProxyLearner(config, root=args.root)
    build_s = time.perf_counter() - start
    matches: list[tuple[int, bool]] = []
    generate_ms: list[float] = []
    rows = []
    start = time.perf_counter()
    for i, query in enumerate(stream):
        t0 = time.perf_counter()
        decision = learner.answer(query, teacher)
        if decision.local_answer is not None:
            generate_ms.append(
                (time.perf_counter() - t0) * 1e3 - decision.route_validate_ms
            )
        learner.learn(decision)
        if decision.route == "local":
            truth = domain.answer(query) or teacher(query)
            matches.append((i, learner.similarity(decision.answer, truth) >= threshold))
        if (i + 1) % args.window == 0 or i + 1 == len(stream):
            lo = i + 1 - ((i % args.window) + 1)
            window = learner.forward_history()[lo:]
            local = [m for j, m in matches if j >= lo]
            rows.append(
                (
                    lo,
                    i + 1,
                    float(np.mean(window)),
                    len(local),
                    float(np.mean(local)) if local else None,
                    time.perf_counter() - start,
                )
            )
            print(_row(rows[-1]), flush=True)
    stats = learner.stats()
    plot = learner.plot(local_matches=matches)
    last = rows[-1]
    return {
        "queries": args.queries,
        "families": args.families,
        "window": args.window,
        "encoder": config.encoder.name,
        "generator": config.generator.name,
        "forward_rate_last_window": last[2],
        "local_accuracy": last[4],
        "local_accuracy_all": float(np.mean([m for _, m in matches]))
        if matches
        else None,
        "local_answers": len(matches),
        "route_validate_ms": stats["route_validate_ms"],
        "generate_ms": float(np.median(generate_ms)) if generate_ms else None,
        "update_ms": stats["update_ms"],
        "updates_per_s": {
            name: (1e3 / ms if ms else None) for name, ms in stats["update_ms"].items()
        },
        "updates": stats["updates"],
        "forward_rate_windows": [r[2] for r in rows],
        "build_s": build_s,
        "stream_s": time.perf_counter() - start,
        "plot": plot,
    }


def _row(r) -> str:
    lo, hi, rate, n_local, acc, elapsed = r
    acc_s = "   -  " if acc is None else f"{acc:6.3f}"
    return f"{lo:6d}-{hi:<6d} {rate:8.3f} {n_local:7d} {acc_s} {elapsed:9.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/teacher_proxy.yaml")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--families", type=int, default=100)
    parser.add_argument("--paraphrases", type=int, default=4)
    parser.add_argument("--exponent", type=float, default=1.1)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default="networks")
    parser.add_argument(
        "--tiny", action="store_true", help="tiny random models (plumbing only)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.queries < 1 or args.window < 1:
        parser.error(
            f"--queries and --window must be >= 1, got {args.queries}, {args.window}"
        )
    enable_compilation_cache()
    header = ("queries", "forward", "local", "acc", "time s")
    print("{:13s} {:>8s} {:>7s} {:>6s} {:>9s}".format(*header))
    figures = run(args)
    for key in (
        "forward_rate_last_window",
        "local_accuracy",
        "local_accuracy_all",
        "route_validate_ms",
        "generate_ms",
        "updates_per_s",
        "build_s",
        "stream_s",
        "plot",
    ):
        print(f"{key:26s} {figures[key]}")
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
