"""LLM latency benchmark: SmolLM2-135M in ol_jax versus transformers + PEFT.

Measured side by side in one process, float32, on the same weights:

- ``compile_s``: cold compile of the LoRA + KL update step at the longest length,
  in a child process with the persistent compilation cache off (likewise
  ``compile_tiny30_forward_s``, a tiny model 30 layers deep);
- ``prefill_64_ms``: time to the first token for a 64-token prompt;
- ``decode_tok_per_s``: greedy KV-cache decoding, and the same for transformers'
  ``generate`` (``decode_ratio_vs_torch``: ours / theirs);
- ``update_ms_{T}``: one online update at T tokens (base forward with adapters off,
  adapted forward, backward, clip 0.1, AdamW) on LoRA(q, v, r=4, alpha=16), loss
  ``CE(adapted) + KL(base || adapted)``, and the identical step in PyTorch + PEFT
  (``update_speedup_vs_peft_{T}``: theirs / ours);
- ``lora_state_bytes``: LoRA params + optimizer state;
- peak resident memory of each side's update loop at the longest length, each
  run alone in a child process after loading (``/proc`` VmHWM, reset after the
  heap is trimmed): over the first update (ours includes compiling it) and over
  three later ones (``peak_mem_mib`` / ``peft_peak_mem_mib``).

Run: ``PYTHONPATH=. python benchmarks/llm_step.py [--json] [--random]``.
``--random`` uses a randomly initialised model with SmolLM2-135M's exact config
instead of the real weights (no download).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ol_jax.core import enable_compilation_cache, init_state, make_step
from ol_jax.models import (
    Llama,
    LlamaConfig,
    LoRAConfig,
    generate,
    llama_apply,
    llama_apply_with_reference,
    llama_params_from_hf,
    llama_params_to_hf,
    load_pretrained,
    split_lora,
)
from ol_jax.objectives import token_cross_entropy, token_kl

SMOLLM2_135M = {
    "model_type": "llama",
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
LORA_RANK, LORA_ALPHA, CLIP, LR = 4, 16.0, 0.1, 1e-4


# ----------------------------------------------------------------------- helpers


def _hwm_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _trim_heap() -> None:
    """Returns freed heap pages to the OS so RSS reflects live memory."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _median_ms(*fns, repeats: int) -> list[float]:
    """Median wall time (ms) of each function, the functions run alternately.

    Alternating A, B, A, B, ... exposes both stacks to the same background load
    on a shared machine, which a block of A's followed by a block of B's does not.
    """
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            bucket.append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(t) for t in times]


def _tree_bytes(tree) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


# --------------------------------------------------------------------- JAX side


def _jax_update_step(graphdef):
    def loss_fn(lora, batch, *, frozen, extras, key):
        del extras, key
        inputs, targets = batch["tokens"][:-1], batch["tokens"][1:]
        # Base and adapted logits in one pass over the base weights.
        base, logits = llama_apply_with_reference(graphdef, lora, inputs, frozen=frozen)
        ce = token_cross_entropy(logits, targets)
        kl = token_kl(base, logits)
        return ce + kl

    tx = optax.chain(optax.clip_by_global_norm(CLIP), optax.adamw(LR))
    return make_step(loss_fn, tx), tx


# ------------------------------------------------------------------- torch side


def _torch_models(config: dict, tensors: dict):
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    hf_config = transformers.LlamaConfig(**{**config, "torch_dtype": "float32"})
    model = transformers.LlamaForCausalLM(hf_config)
    state = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in tensors.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed = {"lm_head.weight"} if hf_config.tie_word_embeddings else set()
    if set(missing) - allowed or unexpected:
        raise ValueError(f"torch load: missing {missing}, unexpected {unexpected}")
    if hf_config.tie_word_embeddings:
        model.tie_weights()
    model.eval()
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=LORA_RANK,
            lora_alpha=LORA_ALPHA,
            target_modules=["q_proj", "v_proj"],
            lora_dropout=0.0,
        ),
    )
    return model, peft_model


def _torch_update_fn(peft_model):
    import torch
    import torch.nn.functional as F

    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR)

    def update(tokens: np.ndarray):
        ids = torch.from_numpy(tokens[None, :-1].astype(np.int64))
        targets = torch.from_numpy(tokens[1:].astype(np.int64))
        with torch.no_grad(), peft_model.disable_adapter():
            base = peft_model(input_ids=ids).logits[0]
        logits = peft_model(input_ids=ids).logits[0]
        ce = F.cross_entropy(logits, targets)
        kl = F.kl_div(
            F.log_softmax(logits, -1),
            F.log_softmax(base, -1),
            log_target=True,
            reduction="batchmean",
        )
        loss = ce + kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        return float(loss.detach())

    opt_bytes = lambda: sum(
        t.numel() * t.element_size()
        for s in opt.state.values()
        for t in s.values()
        if torch.is_tensor(t)
    )
    return update, params, opt_bytes


# ---------------------------------------------------------------- peak memory


def _load(args):
    """(hf config dict, HF-named tensors, description) from the loader or random."""
    if args.random:
        config = LlamaConfig.from_hf_dict(SMOLLM2_135M)
        tensors = llama_params_to_hf(Llama(config, key=jax.random.key(0)))
        return dict(SMOLLM2_135M), tensors, "random init, SmolLM2-135M config"
    loaded = load_pretrained(args.model, tokenizer=False)
    return dict(loaded.config), loaded.tensors, f"{args.model} ({loaded.source.name})"


def _tiny30_compile_s() -> float:
    """Compile time of a forward pass of a tiny 30-layer model (depth, not size)."""
    tiny = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=30,
        num_attention_heads=4,
    )
    lora_config = LoRAConfig(rank=LORA_RANK, alpha=LORA_ALPHA)
    tg, tb, tl = split_lora(Llama(tiny, lora_config=lora_config, key=jax.random.key(3)))
    t0 = time.perf_counter()
    jax.jit(llama_apply).lower(tg, tl, jnp.zeros((32,), jnp.int32), frozen=tb).compile()
    return time.perf_counter() - t0


def _memory_worker(args) -> None:
    """Runs one side's update loop alone and prints its peak RSS (MiB).

    ``first``: peak over the first update (ours includes compiling it);
    ``steady``: peak over three later updates. Both are taken after the weights
    are loaded and the loader's copies freed, so they are resident model +
    optimizer + the update's working memory.
    """
    extra = {}
    hf_cfg, tensors, _ = _load(args)
    rng = np.random.default_rng(0)
    T = max(args.lengths)
    tokens = np.asarray(rng.integers(3, hf_cfg["vocab_size"], size=T + 1), np.int32)
    if args.memory_side == "jax":
        config = LlamaConfig.from_hf_dict(hf_cfg)
        lora_config = LoRAConfig(rank=LORA_RANK, alpha=LORA_ALPHA)
        model = llama_params_from_hf(config, tensors, lora_config=lora_config)
        del tensors
        graphdef, base, lora = split_lora(model)
        del model
        step, tx = _jax_update_step(graphdef)
        holder = {"state": init_state(lora, tx, key=jax.random.key(2))}
        batch = {"tokens": jnp.asarray(tokens)}
        # Cold compile: this process started with the persistent cache off.
        t0 = time.perf_counter()
        step.lower(holder["state"], batch, base).compile()
        extra["compile_s"] = time.perf_counter() - t0
        extra["compile_tiny30_forward_s"] = _tiny30_compile_s()

        def update():
            holder["state"], _ = step(holder["state"], batch, base)
            jax.block_until_ready(holder["state"])

    else:
        _, peft_model = _torch_models(hf_cfg, tensors)
        del tensors
        torch_update, _, _ = _torch_update_fn(peft_model)
        update = lambda: torch_update(tokens)
    _trim_heap()
    _reset_hwm()
    update()
    first = _hwm_kb() / 1024.0
    _trim_heap()
    _reset_hwm()
    for _ in range(3):
        update()
    steady = _hwm_kb() / 1024.0
    print(json.dumps({"first": first, "steady": steady, **extra}))


def _measure_memory(args, side: str) -> dict:
    import subprocess

    cmd = [sys.executable, os.path.abspath(__file__), "--memory-side", side]
    cmd += ["--model", args.model, "--lengths", *map(str, args.lengths)]
    cmd += ["--random"] if args.random else []
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# ---------------------------------------------------------------------- driver


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--random", action="store_true", help="random init")
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-memory", action="store_true", help="skip peak RSS")
    parser.add_argument(
        "--memory-side", choices=["jax", "torch"], help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.memory_side:
        # JAX decides once per process whether to use the persistent cache.
        jax.config.update("jax_enable_compilation_cache", False)
        _memory_worker(args)
        return {}
    enable_compilation_cache()
    rng = np.random.default_rng(0)
    figures: dict = {"device": jax.devices()[0].device_kind, "dtype": "float32"}

    # Weights: through the loader (real SmolLM2) or random with its config.
    t0 = time.perf_counter()
    hf_cfg, tensors, figures["weights"] = _load(args)
    config = LlamaConfig.from_hf_dict(hf_cfg)
    lora_config = LoRAConfig(rank=LORA_RANK, alpha=LORA_ALPHA)
    model = llama_params_from_hf(
        config, tensors, lora_config=lora_config, key=jax.random.key(1)
    )
    figures["load_s"] = time.perf_counter() - t0
    graphdef, base, lora = split_lora(model)
    torch_model = peft_model = None
    if not args.no_torch:
        import torch

        torch.manual_seed(0)
        torch_model, peft_model = _torch_models(hf_cfg, tensors)
    del tensors
    gc.collect()
    vocab = config.vocab_size

    # Parity on a 64-token prompt (sanity for the timings below).
    prompt = rng.integers(3, vocab, size=64).astype(np.int32)
    if torch_model is not None:
        import torch

        with torch.no_grad():
            ref = torch_model(torch.from_numpy(prompt[None].astype(np.int64))).logits
        ours = llama_apply(graphdef, lora, jnp.asarray(prompt), frozen=base)
        figures["max_logit_diff_vs_torch"] = float(
            np.abs(np.asarray(ours) - ref[0].numpy()).max()
        )

    # Compile times in this process (the persistent cache may serve them; the cold
    # figure `compile_s` comes from a child process with the cache off).
    step, tx = _jax_update_step(graphdef)
    state = init_state(lora, tx, key=jax.random.key(2))
    figures["lora_state_bytes"] = _tree_bytes(state.params) + _tree_bytes(
        state.opt_state
    )
    compiled = {}
    for T in args.lengths:
        batch = {"tokens": jnp.asarray(rng.integers(3, vocab, size=T + 1), jnp.int32)}
        t0 = time.perf_counter()
        compiled[T] = step.lower(state, batch, base).compile()
        figures[f"compile_update_{T}_s"] = time.perf_counter() - t0
    figures["compile_s"] = figures.get(
        "compile_update_64_s",
        max(figures[f"compile_update_{T}_s"] for T in args.lengths),
    )

    # Update step latency, ours and PEFT's, interleaved per length.
    batches = {
        T: np.asarray(rng.integers(3, vocab, size=T + 1), np.int32)
        for T in args.lengths
    }
    torch_update = None
    if peft_model is not None:
        torch_update, torch_params, torch_opt_bytes = _torch_update_fn(peft_model)
        torch_update(batches[args.lengths[0]])  # warm up, allocates AdamW state
        figures["peft_lora_state_bytes"] = (
            sum(p.numel() * p.element_size() for p in torch_params) + torch_opt_bytes()
        )
    holder = {"state": state}

    def ours(T):
        batch = {"tokens": jnp.asarray(batches[T])}
        new_state, metrics = compiled[T](holder["state"], batch, base)
        jax.block_until_ready(new_state)
        holder["state"] = new_state
        return metrics

    for T in args.lengths:
        ours(T)  # warm up
        if torch_update is None:
            (figures[f"update_ms_{T}"],) = _median_ms(
                lambda T=T: ours(T), repeats=args.repeats
            )
            continue
        torch_update(batches[T])
        figures[f"update_ms_{T}"], figures[f"peft_update_ms_{T}"] = _median_ms(
            lambda T=T: ours(T),
            lambda T=T: torch_update(batches[T]),
            repeats=args.repeats,
        )
        figures[f"update_speedup_vs_peft_{T}"] = (
            figures[f"peft_update_ms_{T}"] / figures[f"update_ms_{T}"]
        )

    # Prefill (time to first token) and decode throughput.
    n_new = args.decode_tokens
    prompt_list = [int(t) for t in prompt]
    # The update loop donated the original LoRA buffers: decode with the current ones.
    model = nnx.merge(graphdef, base, holder["state"].params)
    gen = lambda n: generate(model, [prompt_list], max_new_tokens=n, eos_token_id=[])
    gen(1), gen(n_new)  # compile
    decode_repeats = max(2, args.repeats // 2)
    if torch_model is None:
        (figures["prefill_64_ms"],) = _median_ms(lambda: gen(1), repeats=args.repeats)
        (full_ms,) = _median_ms(lambda: gen(n_new), repeats=decode_repeats)
    else:
        import torch

        ids = torch.from_numpy(prompt[None].astype(np.int64))

        def tgen(n):
            with torch.no_grad():
                return torch_model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    pad_token_id=0,
                )

        tgen(2)
        figures["prefill_64_ms"], figures["torch_prefill_64_ms"] = _median_ms(
            lambda: gen(1), lambda: tgen(1), repeats=args.repeats
        )
        full_ms, tfull = _median_ms(
            lambda: gen(n_new), lambda: tgen(n_new), repeats=decode_repeats
        )
        figures["torch_decode_tok_per_s"] = (n_new - 1) / max(
            1e-9, (tfull - figures["torch_prefill_64_ms"]) / 1e3
        )
    figures["decode_tok_per_s"] = (n_new - 1) / max(
        1e-9, (full_ms - figures["prefill_64_ms"]) / 1e3
    )
    if torch_model is not None:
        figures["decode_ratio_vs_torch"] = (
            figures["decode_tok_per_s"] / figures["torch_decode_tok_per_s"]
        )
        # Same tokens as transformers with the adapters off on both sides.
        ours_tokens = generate(
            model, [prompt_list], max_new_tokens=n_new, eos_token_id=[], use_lora=False
        )[0]
        with peft_model.disable_adapter():
            theirs = tgen(n_new)[0, len(prompt_list) :].tolist()
        figures["greedy_tokens_match_torch"] = ours_tokens == theirs

    if not args.no_memory:
        mem = _measure_memory(args, "jax")
        figures["peak_mem_mib"] = mem["steady"]
        figures["peak_mem_first_step_mib"] = mem["first"]
        figures["compile_s"] = mem["compile_s"]
        figures["compile_tiny30_forward_s"] = mem["compile_tiny30_forward_s"]
        figures["compile_s_cold"] = True
        if not args.no_torch:
            mem = _measure_memory(args, "torch")
            figures["peft_peak_mem_mib"] = mem["steady"]
            figures["peft_peak_mem_first_step_mib"] = mem["first"]

    _print_table(figures, args.lengths)
    if args.json:
        print(json.dumps({k: _round(v) for k, v in figures.items()}))
    return figures


def _round(v):
    return round(v, 4) if isinstance(v, float) else v


def _print_table(f: dict, lengths) -> None:
    rows = [
        ("weights", f["weights"], "", ""),
        (
            "compile update step @"
            + str(max(lengths))
            + (" (cold)" if f.get("compile_s_cold") else " (cache may hit)"),
            f"{f['compile_s']:.1f} s",
            "",
            "< 60 s",
        ),
        (
            "compile 30-layer tiny forward",
            f"{f.get('compile_tiny30_forward_s', float('nan')):.2f} s",
            "",
            "",
        ),
        (
            "prefill 64 tokens",
            f"{f['prefill_64_ms']:.0f} ms",
            f"{f.get('torch_prefill_64_ms', float('nan')):.0f} ms",
            "",
        ),
        (
            "decode tokens/s",
            f"{f['decode_tok_per_s']:.1f}",
            f"{f.get('torch_decode_tok_per_s', float('nan')):.1f}",
            f"ratio {f.get('decode_ratio_vs_torch', float('nan')):.2f} (>= 1)",
        ),
    ]
    for T in lengths:
        rows.append(
            (
                f"update step @{T} tokens",
                f"{f[f'update_ms_{T}']:.0f} ms",
                f"{f.get(f'peft_update_ms_{T}', float('nan')):.0f} ms",
                f"speedup {f.get(f'update_speedup_vs_peft_{T}', float('nan')):.2f}"
                + (" (>= 2)" if T == 64 else ""),
            )
        )
    rows += [
        (
            "LoRA + optimizer state",
            f"{f['lora_state_bytes'] / 1e6:.2f} MB",
            f"{f.get('peft_lora_state_bytes', float('nan')) / 1e6:.2f} MB",
            "< 10 MB",
        ),
        (
            f"peak RSS, first update @{max(lengths)} alone",
            f"{f.get('peak_mem_first_step_mib', float('nan')):.0f} MiB",
            f"{f.get('peft_peak_mem_first_step_mib', float('nan')):.0f} MiB",
            "ours incl. compile",
        ),
        (
            f"peak RSS, later updates @{max(lengths)} alone",
            f"{f.get('peak_mem_mib', float('nan')):.0f} MiB",
            f"{f.get('peft_peak_mem_mib', float('nan')):.0f} MiB",
            "ours <= theirs",
        ),
        (
            "max |logit diff| vs torch",
            f"{f.get('max_logit_diff_vs_torch', float('nan')):.2e}",
            "",
            "",
        ),
    ]
    _print_rows(
        f"llm_step ({f['device']}, {f['dtype']})",
        ("figure", "ol_jax", "torch / PEFT", "target / ratio"),
        rows,
    )


def _print_rows(title, columns, rows) -> None:
    """Prints rows as a rich table (plain text when rich is missing)."""
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for col in columns:
            table.add_column(col)
        for row in rows:
            table.add_row(*row)
        Console(file=sys.stdout, width=120).print(table)
    except ImportError:
        for row in rows:
            print(" | ".join(row))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
