"""Decode speed of the one-program decode loop versus the streamed one.

``generate`` runs prefill and the whole decode loop as one compiled program (a
``jax.lax.while_loop``); ``generate_stream`` runs the same prefill and the same
compiled step once per token from Python, reading each token back to the host
(what streaming a reply needs). On SmolLM2-135M-Instruct (float32, LoRA r=4 on
every projection, as ``configs/chat_smollm2.yaml``), one prompt, a fixed number
of new tokens (no EOS), alternating the two each repeat; medians:

- ``prefill_plus_decode_ms``: one whole generation;
- ``decode_tokens_per_s``: new tokens / time, the prefill included;
- ``first_token_ms``: the time until the first token is on the host (the
  streamed loop only; the whole loop shows its first token at the end);
- ``stream_over_whole``: the ratio of the two times (1.0: streaming costs
  nothing).

Run: ``PYTHONPATH=. python benchmarks/decode_stream.py [--tokens N] [--repeats N]
[--random] [--json]``. Against a tree without ``generate_stream`` it measures the
whole loop only (to compare before and after a change).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax

from ol_jax.core import enable_compilation_cache
from ol_jax.models import Llama, LlamaConfig, LoRAConfig, load_llama
from ol_jax.models import generate as generate_whole

try:
    from ol_jax.models import generate_stream
except ImportError:  # a tree from before streaming
    generate_stream = None

PROMPT = "What is a good way to relax after a long day at work?"
PROJECTIONS = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)


def _model(random: bool):
    lora = LoRAConfig(rank=4, alpha=16.0, target_modules=PROJECTIONS)
    model, tok = load_llama("smollm2-135m", lora_config=lora, key=jax.random.key(1))
    if random:
        config: LlamaConfig = model.config
        model = Llama(config, lora_config=lora, key=jax.random.key(0))
    return model, tok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per run")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--random", action="store_true", help="random weights")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    enable_compilation_cache()
    model, tok = _model(args.random)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True
    )
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    kw = dict(max_new_tokens=args.tokens, eos_token_id=[])

    def whole():
        return generate_whole(model, [prompt], **kw)[0]

    def streamed():
        t0 = time.perf_counter()
        first, ids = None, []
        for t in generate_stream(model, prompt, **kw):
            if first is None:
                first = (time.perf_counter() - t0) * 1e3
            ids.append(t)
        return ids, first

    times = {"whole": [], "stream": []}
    firsts = []
    reference = whole()  # compiles
    if generate_stream is not None:
        assert streamed()[0] == reference, "the streamed tokens differ"
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        whole()
        times["whole"].append((time.perf_counter() - t0) * 1e3)
        if generate_stream is not None:
            t0 = time.perf_counter()
            _, first = streamed()
            times["stream"].append((time.perf_counter() - t0) * 1e3)
            firsts.append(first)
    rows = {"prompt_tokens": len(prompt), "new_tokens": args.tokens}
    for name, ms in times.items():
        if ms:
            med = statistics.median(ms)
            rows[f"{name}_prefill_plus_decode_ms"] = round(med, 1)
            rows[f"{name}_decode_tokens_per_s"] = round(args.tokens / med * 1e3, 1)
    if firsts:
        rows["stream_first_token_ms"] = round(statistics.median(firsts), 1)
        rows["stream_over_whole"] = round(
            statistics.median(times["stream"]) / statistics.median(times["whole"]), 3
        )
    if args.json:
        print(json.dumps(rows))
    else:
        for key, value in rows.items():
            print(f"{key:36s} {value}")


if __name__ == "__main__":
    main()
