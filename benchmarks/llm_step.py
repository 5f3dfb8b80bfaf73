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
- ``phase_{base_forward,adapted_forward,backward,optimizer}_ms_{T}``: each phase
  of the update jitted (or, for PEFT, run) alone, the backward as forward +
  backward minus the adapted forward (``peft_phase_*`` for PEFT;
  ``backward_over_forward_{T}``: backward / adapted forward);
- ``update_gflop_{T}``: the update's FLOPs by XLA's cost analysis of the lowered
  step (layer scan unrolled for the count, since XLA counts a loop body once;
  PEFT's by ``torch.utils.flop_counter``), ``matmul_gflop_per_s_{T}``: float32
  ``jnp.matmul`` at the model's projection shapes for T rows, measured in the same
  run, and ``update_mfu_{T}`` (``update_mfu`` at 64 tokens): the update's achieved
  GFLOP/s over that rate;
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


# ---------------------------------------------------------- phases, FLOPs, MFU


def _kl_ce(logits, base_logits, targets):
    return token_cross_entropy(logits, targets) + token_kl(base_logits, logits)


def _jax_phases(graphdef, base, lora, tx):
    """Jitted phases of our update: base forward, adapted forward, forward +
    backward (the backward is its excess over the adapted forward), optimizer."""

    @jax.jit
    def base_forward(lora, tokens):
        return llama_apply(graphdef, lora, tokens[:-1], frozen=base, use_lora=False)

    @jax.jit
    def adapted_forward(lora, tokens):
        return llama_apply(graphdef, lora, tokens[:-1], frozen=base)

    @jax.jit
    def forward_backward(lora, tokens, base_logits):
        return jax.grad(
            lambda lo: _kl_ce(
                llama_apply(graphdef, lo, tokens[:-1], frozen=base),
                base_logits,
                tokens[1:],
            )
        )(lora)

    @jax.jit
    def optimizer(grads, opt_state, params):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return base_forward, adapted_forward, forward_backward, optimizer


def _torch_phases(peft_model):
    """The same four phases of the PEFT update (see ``_torch_update_fn``)."""
    import torch

    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR)

    def base_forward(ids):
        with torch.no_grad(), peft_model.disable_adapter():
            return peft_model(input_ids=ids).logits[0]

    def adapted_forward(ids):
        with torch.no_grad():
            return peft_model(input_ids=ids).logits[0]

    def forward_backward(ids, targets, base):
        import torch.nn.functional as F

        logits = peft_model(input_ids=ids).logits[0]
        kl = F.kl_div(
            F.log_softmax(logits, -1),
            F.log_softmax(base, -1),
            log_target=True,
            reduction="batchmean",
        )
        loss = F.cross_entropy(logits, targets) + kl
        opt.zero_grad(set_to_none=True)
        loss.backward()

    def optimizer():
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()

    return base_forward, adapted_forward, forward_backward, optimizer


def _phase_figures(figures, T, tokens, jax_side, torch_side, repeats):
    """``phase_*_ms_{T}`` for ours and (``peft_phase_*``) PEFT's, interleaved."""
    base_forward, adapted_forward, forward_backward, optimizer = jax_side["fns"]
    lora, opt_state = jax_side["lora"], jax_side["opt_state"]
    tok = jnp.asarray(tokens)
    base_logits = base_forward(lora, tok)
    grads = forward_backward(lora, tok, base_logits)
    optimizer(grads, opt_state, lora)
    ours = [
        lambda: jax.block_until_ready(base_forward(lora, tok)),
        lambda: jax.block_until_ready(adapted_forward(lora, tok)),
        lambda: jax.block_until_ready(forward_backward(lora, tok, base_logits)),
        lambda: jax.block_until_ready(optimizer(grads, opt_state, lora)),
    ]
    theirs = []
    if torch_side is not None:
        import torch

        t_base, t_fwd, t_fwd_bwd, t_opt = torch_side
        ids = torch.from_numpy(tokens[None, :-1].astype(np.int64))
        targets = torch.from_numpy(tokens[1:].astype(np.int64))
        t_base_logits = t_base(ids)
        t_fwd_bwd(ids, targets, t_base_logits)
        t_opt()
        theirs = [
            lambda: t_base(ids),
            lambda: t_fwd(ids),
            lambda: t_fwd_bwd(ids, targets, t_base_logits),
            t_opt,
        ]
    times = _median_ms(*ours, *theirs, repeats=repeats)
    for prefix, ts in (("", times[:4]), ("peft_", times[4:])):
        if not ts:
            continue
        base_ms, fwd_ms, fwd_bwd_ms, opt_ms = ts
        figures[f"{prefix}phase_base_forward_ms_{T}"] = base_ms
        figures[f"{prefix}phase_adapted_forward_ms_{T}"] = fwd_ms
        figures[f"{prefix}phase_backward_ms_{T}"] = max(0.0, fwd_bwd_ms - fwd_ms)
        figures[f"{prefix}phase_optimizer_ms_{T}"] = opt_ms
        figures[f"{prefix}backward_over_forward_{T}"] = (
            figures[f"{prefix}phase_backward_ms_{T}"] / fwd_ms
        )


class _unrolled_scan:
    """Within it ``jax.lax.scan`` unrolls fully: XLA's cost analysis counts a while
    loop's body once, so the layer scan must be unrolled for its FLOPs to count
    once per layer (used only to count, never to run)."""

    def __enter__(self):
        self._scan = jax.lax.scan
        scan = self._scan
        jax.lax.scan = lambda *a, **k: scan(*a, **{**k, "unroll": True})

    def __exit__(self, *exc):
        jax.lax.scan = self._scan


def _flops(lowered) -> float:
    cost = lowered.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0]
    return float(cost["flops"])


def _jax_update_flops(step, state, batch, base) -> float:
    """XLA's FLOP count of our whole update (every layer, recomputation included)."""
    jax.clear_caches()  # so the inner forward is traced again, unrolled
    with _unrolled_scan():
        flops = _flops(step.lower(state, batch, base))
    jax.clear_caches()
    return flops


def _torch_update_flops(torch_update, tokens) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        torch_update(tokens)
    return float(counter.get_total_flops())


def _matmul_rate(config: LlamaConfig, T: int, repeats: int) -> float:
    """float32 GFLOP/s of ``jnp.matmul`` at this model's projection shapes for T
    rows: one layer's seven projections and the output head, weighted as in one
    forward (``L`` layers, one head)."""
    shapes = _proj_shapes_of(config)
    keys = iter(jax.random.split(jax.random.key(5), 2 * len(shapes) + 2))
    ws = [jax.random.normal(next(keys), s, jnp.float32) for s in shapes]
    xs = [jax.random.normal(next(keys), (T, s[0]), jnp.float32) for s in shapes]
    head = jax.random.normal(next(keys), (config.hidden_size, config.vocab_size))
    xh = jax.random.normal(next(keys), (T, config.hidden_size))
    layer = jax.jit(lambda xs, ws: [x @ w for x, w in zip(xs, ws, strict=True)])
    out_head = jax.jit(lambda x, w: x @ w)
    jax.block_until_ready(layer(xs, ws)), jax.block_until_ready(out_head(xh, head))
    t_layer, t_head = _median_ms(
        lambda: jax.block_until_ready(layer(xs, ws)),
        lambda: jax.block_until_ready(out_head(xh, head)),
        repeats=max(repeats, 7),
    )
    L = config.num_hidden_layers
    flops = 2 * T * (L * sum(a * b for a, b in shapes) + head.size)
    return flops / ((L * t_layer + t_head) / 1e3) / 1e9


def _proj_shapes_of(config: LlamaConfig) -> list[tuple[int, int]]:
    d, f, hd = config.hidden_size, config.intermediate_size, config.head_dim
    q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
    return [(d, q), (d, kv), (d, kv), (q, d), (d, f), (d, f), (f, d)]


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

    # Where the update's time goes, its FLOPs and the rate it reaches.
    jax_side = {
        "fns": _jax_phases(graphdef, base, holder["state"].params, tx),
        "lora": holder["state"].params,
        "opt_state": holder["state"].opt_state,
    }
    torch_side = None if peft_model is None else _torch_phases(peft_model)
    for T in args.lengths:
        _phase_figures(figures, T, batches[T], jax_side, torch_side, args.repeats)
        figures[f"matmul_gflop_per_s_{T}"] = _matmul_rate(config, T, args.repeats)
        batch = {"tokens": jnp.asarray(batches[T])}
        flops = _jax_update_flops(step, holder["state"], batch, base)
        figures[f"update_gflop_{T}"] = flops / 1e9
        achieved = flops / (figures[f"update_ms_{T}"] / 1e3) / 1e9
        figures[f"update_gflop_per_s_{T}"] = achieved
        figures[f"update_mfu_{T}"] = achieved / figures[f"matmul_gflop_per_s_{T}"]
        if torch_update is not None:
            t_flops = _torch_update_flops(torch_update, batches[T])
            figures[f"peft_update_gflop_{T}"] = t_flops / 1e9
            t_achieved = t_flops / (figures[f"peft_update_ms_{T}"] / 1e3) / 1e9
            figures[f"peft_update_gflop_per_s_{T}"] = t_achieved
            figures[f"peft_update_mfu_{T}"] = (
                t_achieved / figures[f"matmul_gflop_per_s_{T}"]
            )
    mfu_T = 64 if 64 in args.lengths else max(args.lengths)
    figures["update_mfu"] = figures[f"update_mfu_{mfu_T}"]
    if torch_update is not None:
        figures["peft_update_mfu"] = figures[f"peft_update_mfu_{mfu_T}"]

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
    nan = float("nan")
    for T in lengths:
        for phase in ("base_forward", "adapted_forward", "backward", "optimizer"):
            rows.append(
                (
                    f"  {phase.replace('_', ' ')} @{T}",
                    f"{f.get(f'phase_{phase}_ms_{T}', nan):.0f} ms",
                    f"{f.get(f'peft_phase_{phase}_ms_{T}', nan):.0f} ms",
                    "",
                )
            )
        rows.append(
            (
                f"  backward / adapted forward @{T}",
                f"{f.get(f'backward_over_forward_{T}', nan):.2f}",
                f"{f.get(f'peft_backward_over_forward_{T}', nan):.2f}",
                "ours <= 1.5",
            )
        )
        rows.append(
            (
                f"  update GFLOP, GFLOP/s, MFU @{T}",
                f"{f.get(f'update_gflop_{T}', nan):.1f}, "
                f"{f.get(f'update_gflop_per_s_{T}', nan):.0f}, "
                f"{f.get(f'update_mfu_{T}', nan):.2f}",
                f"{f.get(f'peft_update_gflop_{T}', nan):.1f}, "
                f"{f.get(f'peft_update_gflop_per_s_{T}', nan):.0f}, "
                f"{f.get(f'peft_update_mfu_{T}', nan):.2f}",
                f"matmul {f.get(f'matmul_gflop_per_s_{T}', nan):.0f} GFLOP/s",
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
