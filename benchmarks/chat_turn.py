"""Chat turn benchmark: ChatLearner's update per turn versus PyTorch + PEFT (seed 001).

On SmolLM2-135M (float32) at the document's adapter (LoRA r=4 alpha=16 on q/v,
which the PEFT reference of ``llm_step.py`` also builds; dropout off on both
sides) and otherwise the settings of ``configs/chat_smollm2.yaml``, measured
side by side in one process, alternating ours and theirs each repeat (medians):

- ``turn_update_ms``: the update part of a fact turn after generation:
  ``ChatLearner.learn`` (fact detection, tokenization, token weights, one
  jit-compiled step of ``CE_w + lambda KL(base || adapted)``, clip, AdamW at the
  fact learning rate, fact memory, the metrics row);
- ``peft_turn_update_ms``: the same turn in transformers + PEFT: the same token
  ids and weights (computed by the same Python code), base logits with the
  adapter disabled, weighted CE + lambda KL, plus the rehearsal KL over the
  learner's own ``training.loss.rehearsal_prompts`` rows when
  ``rehearsal_lambda > 0`` (both sides compute the base's logits on those fixed
  rows once), ``clip_grad_norm_``, ``AdamW``.
  It runs on the unpadded sequence; ours pads to the length bucket;
- ``turn_update_speedup_vs_peft`` = theirs / ours (target >= 2), and the same for
  a regular (self-supervised) turn (``*_regular``);
- ``turn_total_ms``: a whole ``chat_and_update`` turn with a 32-token reply
  (generation with the KV cache, then the update).

Run: ``PYTHONPATH=. python benchmarks/chat_turn.py [--json] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llm_step import _median_ms, _print_rows, _torch_models  # noqa: E402

from ol_jax.core import enable_compilation_cache  # noqa: E402
from ol_jax.learners import ChatLearner, load_chat_config  # noqa: E402
from ol_jax.learners.chat import lora_config_of  # noqa: E402
from ol_jax.models import LlamaConfig, llama_params_from_hf, load_pretrained  # noqa: E402

CONFIG = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "configs", "chat_smollm2.yaml"
)
FACT = "Zorblax Quint lives in Varnholm."
USER = "I had a long day at work and I would like some advice on relaxing."
REPLY_TOKENS = 32


def _config(path: str, reply_tokens: int):
    """The YAML's settings, with the document's adapter (LoRA r=4 on q and v, as
    the PEFT reference builds it), a fixed-length reply and no extra work after
    the update (anchor metrics, saves, replay)."""
    config = load_chat_config(path)
    lora = config.model.lora.model_copy(
        update={
            "rank": 4,
            "alpha": 16.0,
            "dropout": 0.0,
            "target_modules": ("q_proj", "v_proj"),
        }
    )
    return config.model_copy(
        update={
            "model": config.model.model_copy(update={"lora": lora}),
            "generation": config.generation.model_copy(
                update={"max_new_tokens": reply_tokens, "stop_at_eos": False}
            ),
            "metrics": config.metrics.model_copy(update={"eval_every": 0}),
            "checkpoint": config.checkpoint.model_copy(update={"save_every": 0}),
            "fact_memory": config.fact_memory.model_copy(
                update={"replay_interval": 10**9}
            ),
        }
    )


def _torch_turn(peft_model, config, rehearsal: dict):
    """The turn update in PyTorch + PEFT: weighted CE + lambda KL, clip, AdamW.

    With ``rehearsal`` (the learner's ``rehearsal_tokens [K, T' + 1]``,
    ``rehearsal_mask [K, T']`` and ``rehearsal_lambda``) the loss adds
    ``rehearsal_lambda`` times the mean over rows of each row's masked mean
    ``KL(base || adapted)``, as ``chat_turn_loss`` does. The rows are right-padded,
    which a causal model ignores at the masked-in positions."""
    import torch
    import torch.nn.functional as F

    tc = config.training

    def base_logp(ids):
        with torch.no_grad(), peft_model.disable_adapter():
            return F.log_softmax(peft_model(input_ids=ids).logits, -1)

    if rehearsal:
        r_tokens = torch.from_numpy(
            np.asarray(rehearsal["rehearsal_tokens"]).astype(np.int64)
        )
        r_mask = torch.from_numpy(
            np.asarray(rehearsal["rehearsal_mask"]).astype(np.float32)
        )
        r_lambda = float(rehearsal["rehearsal_lambda"])
        # As ours: the base's log-probs on the fixed rows are computed once.
        r_base = base_logp(r_tokens[:, :-1])

    def masked_kl(ids, mask, base=None):
        """Mean over rows of each row's masked mean ``KL(base || adapted)``."""
        base = base_logp(ids) if base is None else base
        adapted = F.log_softmax(peft_model(input_ids=ids).logits, -1)
        per_token = (base.exp() * (base - adapted)).sum(-1).clamp_min(0.0)
        return ((per_token * mask).sum(-1) / mask.sum(-1)).mean(), adapted

    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        params,
        lr=tc.learning_rate,
        betas=(tc.adam_b1, tc.adam_b2),
        eps=tc.adam_eps,
        weight_decay=tc.weight_decay,
    )

    def update(batch: dict, lr: float) -> float:
        # One row, or several rows of one update (a fact turn and its
        # question-form pair), right-padded: a causal model ignores the padding
        # at the masked-in positions, and the loss is the mean of per-row losses.
        tokens = np.atleast_2d(batch["tokens"])
        mask = torch.from_numpy(np.atleast_2d(batch["mask"]).astype(np.float32))
        weights = torch.from_numpy(np.atleast_2d(batch["weights"])) * mask
        n = int(mask.sum(-1).max())
        mask, weights = mask[:, :n], weights[:, :n]
        tokens = torch.from_numpy(tokens[:, : n + 1].astype(np.int64))
        ids, targets = tokens[:, :-1], tokens[:, 1:]
        kl, logp = masked_kl(ids, mask)
        ce = -logp.gather(-1, targets[..., None])[..., 0]
        ce = ((weights * ce).sum(-1) / weights.sum(-1)).mean()
        loss = float(batch["task_lambda"]) * ce + float(batch["kl_lambda"]) * kl
        if rehearsal:
            r_kl, _ = masked_kl(r_tokens[:, :-1], r_mask, r_base)
            loss = loss + r_lambda * r_kl
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tc.gradient_clip_norm)
        opt.step()
        return float(loss.detach())

    return update


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--total-repeats", type=int, default=3)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    enable_compilation_cache()
    config = _config(args.config, REPLY_TOKENS)
    figures: dict = {"device": jax.devices()[0].device_kind, "dtype": "float32"}

    loaded = load_pretrained(config.model.base_model_name)
    model = llama_params_from_hf(
        LlamaConfig.from_hf_dict(loaded.config),
        loaded.tensors,
        lora_config=lora_config_of(config),
        key=jax.random.key(0),
    )
    tokenizer = loaded.tokenizer
    peft_model = None
    if not args.no_torch:
        import torch

        torch.manual_seed(0)
        _, peft_model = _torch_models(dict(loaded.config), loaded.tensors)
    del loaded
    root = tempfile.mkdtemp(prefix="chat_turn_bench_")
    learner = ChatLearner(config, root=root, model=model, tokenizer=tokenizer)
    reply = learner.respond(USER)

    def ours(text, answer):
        return lambda: learner.learn(text, answer)

    # Warm up (compiles every bucket used), then time alternately.
    kinds = {"fact": (FACT, "I understand."), "regular": (USER, reply)}
    for text, answer in kinds.values():
        learner.learn(text, answer)
    base_lr = config.training.learning_rate
    for kind, (text, answer) in kinds.items():
        suffix = "" if kind == "fact" else "_regular"
        if peft_model is None:
            (figures[f"turn_update_ms{suffix}"],) = _median_ms(
                ours(text, answer), repeats=args.repeats
            )
            continue
        torch_update = _torch_turn(peft_model, config, learner._rehearsal)
        turn = learner.prepare_turn(text, answer)
        batch = turn.batch
        lr = base_lr * turn.lr_multiplier
        torch_update(batch, lr)  # warm up, allocates AdamW state
        figures[f"turn_update_ms{suffix}"], figures[f"peft_turn_update_ms{suffix}"] = (
            _median_ms(
                ours(text, answer),
                lambda b=batch, lr=lr, up=torch_update: up(b, lr),
                repeats=args.repeats,
            )
        )
        figures[f"turn_update_speedup_vs_peft{suffix}"] = (
            figures[f"peft_turn_update_ms{suffix}"] / figures[f"turn_update_ms{suffix}"]
        )
        figures[f"train_tokens{suffix}"] = int(batch["mask"].sum())

    learner.chat_and_update(USER)  # compiles generation at this prompt bucket
    totals = []
    for _ in range(args.total_repeats):
        t0 = time.perf_counter()
        learner.chat_and_update(USER)
        totals.append((time.perf_counter() - t0) * 1e3)
    figures["turn_total_ms"] = statistics.median(totals)
    figures["reply_tokens"] = REPLY_TOKENS
    figures["compiled_update_steps"] = learner.num_compiled_steps
    learner.close()
    shutil.rmtree(root, ignore_errors=True)

    _print_table(figures)
    if args.json:
        print(json.dumps({k: _round(v) for k, v in figures.items()}))
    return figures


def _round(v):
    return round(v, 4) if isinstance(v, float) else v


def _print_table(f: dict) -> None:
    nan = float("nan")
    rows = []
    for kind, suffix in (("fact", ""), ("regular", "_regular")):
        rows.append(
            (
                f"update part of a {kind} turn ({f.get('train_tokens' + suffix, '?')} "
                "tokens)",
                f"{f[f'turn_update_ms{suffix}']:.0f} ms",
                f"{f.get(f'peft_turn_update_ms{suffix}', nan):.0f} ms",
                f"speedup {f.get(f'turn_update_speedup_vs_peft{suffix}', nan):.2f}"
                + (" (target >= 2)" if kind == "fact" else ""),
            )
        )
    rows.append(
        (
            f"whole turn, {f['reply_tokens']}-token reply + update",
            f"{f['turn_total_ms']:.0f} ms",
            "",
            "",
        )
    )
    _print_rows(
        f"chat_turn ({f['device']}, {f['dtype']})",
        ("figure", "ol_jax", "torch / PEFT", "ratio"),
        rows,
    )


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
