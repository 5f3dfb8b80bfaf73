"""``ChatLearner``: an LLM chat that learns after every turn (seed 001).

Each turn, :meth:`ChatLearner.chat_and_update` generates a reply with the current
LoRA adapter, then takes one jit-compiled update on the turn:

* a *fact* ("Zorblax lives in Varnholm", found by the configured patterns) trains on
  the user message followed by the assistant's ``"I understand. <fact>"``, with
  entity / position / repetition token weights, the fact learning rate (5x, more
  for a repeated fact) and a KL weight lowered by the fact's confidence, and is
  stored in the fact memory;
* a *question* or *regular* turn trains on the user message and the model's own
  reply (self-supervised), at 2x or 1x the learning rate with the base KL weight.

With ``fact_bank.enabled`` (the shipped config) a fact trains an adapter of its
own instead (:class:`~ol_jax.learners._fact_bank.FactBank`): on the statement
and on question prompts answered by it, answer tokens only; every message is
answered by the adapter of the fact its sentence embedding is closest to, if
close enough, else by the shared adapter, so facts neither overwrite each other
nor change unrelated answers (a WISE / GRACE-style side memory).

Every ``replay_interval`` turns the facts in memory are replayed at 0.5x the
learning rate. The loss is ``task_lambda * CE_w + lambda * KL(base || adapted)``,
clipped and applied by AdamW to the LoRA parameters only; the learning rate and
KL weight are data, and training sequences are padded to a few length buckets,
so the step compiles once per bucket. After every turn one row of metrics
(stability, plasticity, forgetting) is appended to ``metrics.jsonl`` in the run
folder, and every ``checkpoint.save_every`` turns the adapter, optimizer state,
fact memory and counters are saved to the run store, from which a new learner
resumes exactly; turns journaled after the last save are learned again from the
run's feedback journal when it resumes.

References:
    Hu et al., `LoRA: Low-Rank Adaptation of Large Language Models
    <https://arxiv.org/abs/2106.09685>`_, 2021.
    Loshchilov & Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, 2019.
    Lopez-Paz & Ranzato, `Gradient Episodic Memory for Continual Learning
    <https://arxiv.org/abs/1706.08840>`_, 2017 (the accuracy matrix).
    Wang et al., `WISE: Rethinking the Knowledge Memory for Lifelong Model
    Editing of Large Language Models <https://arxiv.org/abs/2405.14768>`_, 2024.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ol_jax.core import (
    context_lr_multiplier,
    init_state,
    make_step,
    online_optimizer,
    set_learning_rate,
)
from ol_jax.learners._chat_config import (
    AdaptiveOptimizerConfig,
    ChatConfig,
    ChatModelConfig,
    ChatTrainingConfig,
)
from ol_jax.learners._chat_metrics import TurnMetrics
from ol_jax.learners._chat_step import (
    chat_turn_loss,
    padded_rows,
    score_sequences,
    turn_batch,
    turn_batches,
)
from ol_jax.learners._fact_bank import BASE, SHARED, FactBank
from ol_jax.learners._facts import (
    FactDetector,
    FactInfo,
    FactMemory,
    to_second_person,
)
from ol_jax.learners._teacher_models import build_encoder
from ol_jax.learners._token_weights import token_importance_weights
from ol_jax.models import (
    Llama,
    LoRAConfig,
    chat_encode,
    chat_token_ids,
    generate,
    generate_stream,
    llama_apply,
    load_llama,
    split_lora,
    text_deltas,
)
from ol_jax.safety import answers_unchanged, edit_success, neighbour_kl
from ol_jax.store import RunStore, load_config

__all__ = [
    "AdaptiveOptimizerConfig",
    "ChatConfig",
    "ChatLearner",
    "ChatModelConfig",
    "ChatTrainingConfig",
    "PreparedTurn",
    "TurnUndo",
    "chat_turn_loss",
    "load_chat_config",
    "lora_config_of",
    "turn_batch",
    "turn_batches",
    "write_accuracy_matrix",
]

ACCURACY_MATRIX_FILE = "accuracy_matrix.json"


def load_chat_config(path: str | os.PathLike[str]) -> ChatConfig:
    """Loads and validates a chat ``config.yaml`` (errors name the bad key)."""
    return load_config(path, ChatConfig)


def lora_config_of(config: ChatConfig) -> LoRAConfig:
    """The model's :class:`~ol_jax.models.LoRAConfig` from ``model.lora``."""
    lora = config.model.lora
    return LoRAConfig(
        rank=lora.rank,
        alpha=lora.alpha,
        dropout=lora.dropout,
        target_modules=tuple(lora.target_modules),
    )


def write_accuracy_matrix(
    run_dir: str | os.PathLike[str],
    facts: Sequence[str],
    matrix: Sequence[Sequence[float | None]] | np.ndarray,
) -> str:
    """Writes ``accuracy_matrix.json``: ``R[j][i]`` = recall of fact ``i`` after
    learning fact ``j`` (``i <= j``; ``null`` above the diagonal).

    Args:
      run_dir: the run folder.
      facts: one name per fact (row and column order).
      matrix: ``[n, n]`` accuracies; entries above the diagonal are written as
        ``null`` whatever they hold.

    Returns:
      The file's path.
    """
    n = len(facts)
    arr = np.asarray(matrix, dtype=np.float64)
    if arr.shape != (n, n):
        raise ValueError(f"matrix must have shape ({n}, {n}), got {arr.shape}")
    rows = [[float(arr[j, i]) if i <= j else None for i in range(n)] for j in range(n)]
    path = os.path.join(os.fspath(run_dir), ACCURACY_MATRIX_FILE)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"facts": list(facts), "matrix": rows}, f, indent=1)
    return path


class _ChatFormat:
    """The prompt and training token ids of a turn, with character offsets.

    With a chat template, a turn is rendered as ``[system] user [assistant]``
    messages; without one, as the document's ``"User: ...\\nAssistant: ..."``.
    """

    def __init__(self, tokenizer: Any, system_prompt: str | None):
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.templated = bool(getattr(tokenizer, "chat_template", None))
        eos = getattr(tokenizer, "eos_token_id", None)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad if pad is not None else (eos if eos is not None else 0))

    def _messages(self, user: str, assistant: str | None) -> list[dict[str, str]]:
        msgs = []
        if self.system_prompt is not None:
            msgs.append({"role": "system", "content": self.system_prompt})
        msgs.append({"role": "user", "content": user})
        if assistant is not None:
            msgs.append({"role": "assistant", "content": assistant})
        return msgs

    def prompt_ids(self, user: str) -> list[int]:
        """Token ids that end where the assistant's reply begins."""
        if self.templated:
            return chat_token_ids(self.tokenizer, self._messages(user, None))
        return self.encode(f"User: {user}\nAssistant:")[0]

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and character offsets of plain ``text``: none added, and a special
        token's string (``<|im_start|>``) stays characters, never the token."""
        enc = self.tokenizer(
            text,
            add_special_tokens=False,
            return_offsets_mapping=True,
            split_special_tokens=True,
        )
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    def encode_turn(
        self, user: str, assistant: str
    ) -> tuple[list[int], list[tuple[int, int]], str]:
        """Ids, offsets and text of a whole turn as it is trained on; only the
        chat template's own markers are special tokens."""
        if self.templated:
            return chat_encode(
                self.tokenizer,
                self._messages(user, assistant),
                add_generation_prompt=False,
            )
        text = f"User: {user}\nAssistant: {assistant}"
        return (*self.encode(text), text)

    def answer_start(self, user: str) -> int:
        """Number of leading tokens of a training text that are the prompt."""
        return len(self.prompt_ids(user))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()


class PreparedTurn(NamedTuple):
    """A turn ready for its update (see :meth:`ChatLearner.prepare_turn`).

    Attributes:
      text: the cleaned user message.
      context: ``"fact"``, ``"question"`` or ``"regular"``.
      info: the detected fact, or ``None``.
      is_question: the question filter matched.
      repetition: times this fact was stored before.
      batch: the padded training batch (``tokens``, ``weights``, ``mask``,
        ``kl_lambda``, ``task_lambda``).
      lr_multiplier: the context learning-rate multiplier.
      kl_lambda: the turn's KL weight.
      truncated: the message was cut to ``chat.max_input_chars``.
    """

    text: str
    context: str
    info: FactInfo | None
    is_question: bool
    repetition: int
    batch: dict[str, np.ndarray]
    lr_multiplier: float
    kl_lambda: float
    truncated: bool


class TurnUndo(NamedTuple):
    """What :meth:`ChatLearner.undo_point` keeps: state copy, counters, memory,
    and the fact bank."""

    state: Any
    turn: int
    memory: dict[str, Any]
    tracker: dict[str, Any]
    since_save: int
    bank: Any = None
    journal_next: int = 0


class ChatLearner:
    """A chat model whose LoRA adapter is updated after every turn (seed 001).

    Args:
      config: a :class:`ChatConfig` or the path of its YAML file.
      root: the networks folder of the run store (``<root>/<network_id>/runs``).
      run_id: the run to open; an existing run with saved versions is resumed
        (adapter, optimizer state, fact memory, turn count and metric windows).
        ``None`` starts a new run with a fresh id.
      model: a ``Llama`` with adapters as ``config.model.lora`` describes (its
        adapter values are copied, never modified); default: loaded from
        ``config.model.base_model_name``.
      tokenizer: the model's tokenizer (required with ``model``).
      key: root PRNG key; default ``jax.random.key(config.seed)``.

    Examples:
      >>> learner = ChatLearner("configs/chat_smollm2.yaml")  # doctest: +SKIP
      >>> reply, metrics = learner.chat_and_update("Zorblax lives in Varnholm.")
      >>> metrics["is_fact"], metrics["learning_rate"]  # doctest: +SKIP
      (1.0, 0.0005)
      >>> learner.close()  # doctest: +SKIP
    """

    def __init__(
        self,
        config: ChatConfig | str | os.PathLike[str] | None = None,
        *,
        root: str | os.PathLike[str] = "networks",
        run_id: str | None = None,
        model: Llama | None = None,
        tokenizer: Any = None,
        key: jax.Array | None = None,
    ):
        if config is None:
            config = ChatConfig()
        elif not isinstance(config, ChatConfig):
            config = load_chat_config(config)
        self.config = config
        key = jax.random.key(config.seed) if key is None else key
        if model is None:
            model, tokenizer = load_llama(
                config.model.base_model_name,
                dtype=config.model.dtype,
                lora_config=lora_config_of(config),
                key=jax.random.fold_in(key, 0),
            )
        elif tokenizer is None:
            raise ValueError("tokenizer is required when a model is given, got None")
        self._check_model(model)
        self.tokenizer = tokenizer
        self._format = _ChatFormat(tokenizer, config.generation.system_prompt)
        self._graphdef, self._frozen, lora = split_lora(model)
        # The caller keeps its model: the step donates (deletes) our copies.
        lora = jax.tree.map(jnp.copy, lora)
        self._eos = self._eos_ids(model, tokenizer)

        tc = config.training
        self._tx = online_optimizer(
            tc.learning_rate,
            optimizer="adamw",
            clip_norm=tc.gradient_clip_norm,
            weight_decay=tc.weight_decay,
            b1=tc.adam_b1,
            b2=tc.adam_b2,
            eps=tc.adam_eps,
        )
        self._traces = 0
        loss_fn = chat_turn_loss(
            self._graphdef,
            dropout=config.model.lora.dropout > 0,
            on_trace=self._count_trace,
        )
        self._step = make_step(loss_fn, self._tx, has_aux=True)
        self._rehearsal = self._rehearsal_batch(lora)
        # The adapter before any learning (B = 0: the base model), never donated.
        self._initial_lora = jax.tree.map(jnp.copy, lora)
        self.bank: FactBank | None = None
        if config.fact_bank.enabled:
            self.bank = FactBank(
                config.fact_bank,
                build_encoder(config.fact_bank.encoder, key=jax.random.fold_in(key, 3)),
                self._initial_lora,
                self._tx,
                key=jax.random.fold_in(key, 4),
            )
        self._state = init_state(lora, self._tx, key=jax.random.fold_in(key, 1))
        self._gen_key = jax.random.fold_in(key, 2)
        self.detector = FactDetector(config.fact_detection)
        self.memory = FactMemory(config.fact_memory)
        self.turn = 0
        self._tracker = TurnMetrics(window=config.metrics.window_size)
        self._since_save = 0

        self.store = RunStore(root, config.network_id, config=config)
        resumed = run_id is not None and run_id in self.store.runs()
        self.run_id = self.store.start_run(run_id)
        # The journal position after the last turn learned from: a version
        # saved now reflects every journal record before it.
        self._journal_next = 0
        self.run_dir = self.store.run_dir
        self.metrics_path = os.path.join(self.run_dir, config.metrics.metrics_file)
        if resumed and self.store.latest_version() is not None:
            self._resume()
        else:
            self._tracker.set_baseline(self._anchor_scores())
        self._probe_base = self._base_answers(config.metrics.probe_questions)
        if resumed:
            self._replay_journal()

    # ------------------------------------------------------------------ setup

    def _check_model(self, model: Llama) -> None:
        want = lora_config_of(self.config)
        got = model.lora_config
        if got is None or (
            got.rank,
            got.target_modules,
        ) != (want.rank, want.target_modules):
            raise ValueError(
                "model must carry LoRA adapters matching model.lora "
                f"(rank {want.rank}, {list(want.target_modules)}), got {got}"
            )

    def _eos_ids(self, model: Llama, tokenizer: Any) -> tuple[int, ...]:
        eos = list(model.config.eos_token_ids)
        tok_eos = getattr(tokenizer, "eos_token_id", None)
        if tok_eos is not None and int(tok_eos) not in eos:
            eos.append(int(tok_eos))
        return tuple(eos)

    def _count_trace(self) -> None:
        self._traces += 1

    # ------------------------------------------------------------------ properties

    @property
    def lora(self) -> Any:
        """The current adapter (a pytree of arrays)."""
        return self._state.params

    @property
    def state(self):
        """The whole :class:`~ol_jax.core.OnlineState` (adapter, AdamW, key)."""
        return self._state

    @property
    def num_compiled_steps(self) -> int:
        """How many times the update step was traced (once per length bucket)."""
        return self._traces

    @property
    def model(self) -> Llama:
        """The adapted model (base and current adapter) as a ``Llama``."""
        return nnx.merge(self._graphdef, self._frozen, self._state.params)

    # ------------------------------------------------------------------ input

    def _clean(self, text: Any) -> tuple[str, bool]:
        """The validated message and whether it was truncated; raises ValueError."""
        cc = self.config.chat
        if isinstance(text, bytes | bytearray):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError as e:
                if cc.invalid_utf8 == "error":
                    raise ValueError(
                        f"text must be valid UTF-8, got undecodable bytes at "
                        f"position {e.start}"
                    ) from None
                text = bytes(text).decode("utf-8", errors="replace")
        if not isinstance(text, str):
            raise ValueError(f"text must be a str or bytes, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(
                f"text must be valid Unicode, got a lone surrogate at position "
                f"{e.start}"
            ) from None
        text = text.replace("\x00", "").strip()
        if not text:
            raise ValueError("text must contain non-whitespace characters, got ''")
        truncated = len(text) > cc.max_input_chars
        if truncated:
            if cc.on_too_long == "error":
                raise ValueError(
                    f"text must be at most chat.max_input_chars={cc.max_input_chars} "
                    f"characters, got {len(text)}"
                )
            text = text[: cc.max_input_chars]
        return text, truncated

    # ------------------------------------------------------------------ generation

    def _prompt(self, text: str) -> list[int]:
        ids = self._format.prompt_ids(text)
        return ids[-self.config.generation.max_prompt_tokens :]

    def respond(self, text: str, *, greedy: bool = False) -> str:
        """The reply to ``text`` under the current adapter (no update).

        Args:
          text: the user message.
          greedy: decode greedily whatever ``generation.temperature`` says.
        """
        text, _ = self._clean(text)
        return self._generate([text], greedy=greedy)[0]

    def respond_stream(self, text: str, *, greedy: bool = False) -> Iterator[str]:
        """:meth:`respond` in pieces, each yielded as soon as its tokens are made.

        The same adapter, key and decoding arguments as :meth:`respond`, one
        compiled decode step per token (:func:`~ol_jax.models.generate_stream`);
        the pieces are :func:`~ol_jax.models.text_deltas` of the tokens, so
        their concatenation is the reply :meth:`respond` gives in the same
        state (up to floating-point differences between the two compiled
        loops). Closing the iterator stops the generation.

        Args:
          text: the user message.
          greedy: decode greedily whatever ``generation.temperature`` says.

        Raises:
          ValueError: for bad ``text`` (see :meth:`chat_and_update`), before
            anything is yielded.
        """
        text, _ = self._clean(text)
        model, kwargs = self._decoder(self.route([text])[0], greedy=greedy)
        ids = generate_stream(model, self._prompt(text), **kwargs)
        return text_deltas(ids, self._format.decode)

    def route(self, texts: Sequence[str]) -> list[int]:
        """Which adapter answers each message: a fact's index in :attr:`bank`,
        ``-1`` for the shared adapter (always, without a fact bank) or ``-2`` for
        the base model (see ``fact_bank.conversation_keys``)."""
        if self.bank is None:
            return [SHARED] * len(texts)
        return self.bank.route(texts)

    def _base_answers(self, questions: Sequence[str]) -> list[str]:
        """The base model's greedy answers (the initial adapter, ``B = 0``)."""
        if not questions:
            return []
        out = generate(
            nnx.merge(self._graphdef, self._frozen, self._initial_lora),
            [self._prompt(self._clean(q)[0]) for q in questions],
            max_new_tokens=self.config.metrics.probe_tokens,
            temperature=0.0,
            eos_token_id=list(self._eos),
            pad_token_id=self._format.pad_id,
        )
        return [self._format.decode(ids) for ids in out]

    def _probe(self) -> dict[str, float]:
        """``probe_locality`` and ``probe_kl`` of ``metrics.probe_questions``."""
        questions = list(self.config.metrics.probe_questions)
        now = self.answers(questions, max_new_tokens=self.config.metrics.probe_tokens)
        return {
            "probe_locality": float(answers_unchanged(self._probe_base, now).mean()),
            "probe_kl": self.neighbour_kl(questions, self._probe_base),
        }

    def _adapter(self, route: int) -> Any:
        if route == SHARED:
            return self._state.params
        if route == BASE:
            return self._initial_lora
        return self.bank.params(route)

    def _decoder(
        self, route: int, *, greedy: bool, max_new_tokens: int | None = None
    ) -> tuple[Llama, dict[str, Any]]:
        """The model with ``route``'s adapter and the decoding arguments of a turn."""
        gc = self.config.generation
        model = nnx.merge(self._graphdef, self._frozen, self._adapter(route))
        return model, dict(
            max_new_tokens=max_new_tokens or gc.max_new_tokens,
            key=jax.random.fold_in(self._gen_key, self.turn),
            temperature=0.0 if greedy else gc.temperature,
            top_p=gc.top_p,
            eos_token_id=list(self._eos) if gc.stop_at_eos else [],
            pad_token_id=self._format.pad_id,
        )

    def _generate(
        self,
        texts: list[str],
        *,
        greedy: bool,
        max_new_tokens: int | None = None,
    ) -> list[str]:
        """Replies to cleaned messages, each from the adapter it is routed to
        (one batched ``generate`` per adapter)."""
        routes = self.route(texts)
        replies: list[str] = [""] * len(texts)
        for route in dict.fromkeys(routes):
            rows = [i for i, r in enumerate(routes) if r == route]
            model, kwargs = self._decoder(
                route, greedy=greedy, max_new_tokens=max_new_tokens
            )
            out = generate(model, [self._prompt(texts[i]) for i in rows], **kwargs)
            for i, ids in zip(rows, out, strict=True):
                replies[i] = self._format.decode(ids)
        return replies

    def answers(
        self, questions: Sequence[str], *, max_new_tokens: int | None = None
    ) -> list[str]:
        """Greedy replies to several questions in one batch (no update)."""
        texts = [self._clean(q)[0] for q in questions]
        return self._generate(texts, greedy=True, max_new_tokens=max_new_tokens)

    def recall(
        self,
        questions: Sequence[str],
        objects: Sequence[str],
        *,
        max_new_tokens: int | None = None,
    ) -> list[bool]:
        """Whether each greedy answer contains its object (case-insensitive)."""
        if len(questions) != len(objects):
            raise ValueError(
                f"questions and objects must have equal length, got "
                f"{len(questions)} and {len(objects)}"
            )
        replies = self.answers(questions, max_new_tokens=max_new_tokens)
        return [o.lower() in r.lower() for r, o in zip(replies, objects, strict=True)]

    def neighbour_kl(
        self, questions: Sequence[str], base_answers: Sequence[str]
    ) -> float:
        """Mean token ``KL(base || adapted)`` along the base model's answers.

        Row ``i`` is ``prompt(questions[i]) + base_answers[i]``; the base model
        and the adapter each question is routed to score its answer tokens
        (:func:`ol_jax.safety.neighbour_kl`), in chunks of 8 rows.
        """
        if len(questions) != len(base_answers):
            raise ValueError(
                f"questions and base_answers must have equal length, got "
                f"{len(questions)} and {len(base_answers)}"
            )
        texts = [self._clean(q)[0] for q in questions]
        rows = []
        for text, answer in zip(texts, base_answers, strict=True):
            prompt = self._prompt(text)
            ids, _ = self._format.encode(answer) if answer.strip() else ([], [])
            rows.append((prompt + ids + [self._eos[0]], len(prompt)))
        routes = self.route(texts)
        total, n = 0.0, 0
        for start in range(0, len(rows), 8):
            chunk, chunk_routes = rows[start : start + 8], routes[start : start + 8]
            tokens, mask = padded_rows(
                chunk, buckets=self._score_buckets(chunk), pad_id=self._format.pad_id
            )
            inputs = jnp.asarray(tokens[:, :-1])
            base = llama_apply(
                self._graphdef,
                self._state.params,
                inputs,
                frozen=self._frozen,
                use_lora=False,
            )
            for route in dict.fromkeys(chunk_routes):
                sel = np.array([r == route for r in chunk_routes])
                logits = llama_apply(
                    self._graphdef, self._adapter(route), inputs, frozen=self._frozen
                )
                kl = neighbour_kl(base[sel], logits[sel], jnp.asarray(mask[sel]))
                total += float(kl) * int(sel.sum())
            n += len(chunk)
        return total / n if n else 0.0

    def evaluate_edits(
        self,
        facts: Sequence[Mapping[str, str]],
        neighbours: Sequence[str],
        base_answers: Sequence[str],
        *,
        max_new_tokens: int = 32,
        log: bool = True,
    ) -> dict[str, Any]:
        """Knowledge-editing figures of the learned facts, as EasyEdit measures.

        Args:
          facts: dicts with ``question``, ``paraphrase`` and ``answer``.
          neighbours: questions unrelated to every learned fact.
          base_answers: the base model's greedy answers to ``neighbours``
            (taken before any learning, with the same ``max_new_tokens``).
          max_new_tokens: length of the greedy answers.
          log: append the figures to the run's metrics file (``kind:
            "edit_eval"``), where ``ol-jax report`` plots them.

        Returns:
          ``efficacy`` / ``generalization`` (facts whose question / paraphrase
          answer contains the answer), their per-fact lists ``efficacy_hits`` /
          ``generalization_hits``, ``locality`` (fraction of neighbours answered
          exactly as the base model), ``neighbour_kl`` and ``facts``.
        """
        if len(neighbours) != len(base_answers):
            raise ValueError(
                f"neighbours and base_answers must have equal length, got "
                f"{len(neighbours)} and {len(base_answers)}"
            )
        questions = [f["question"] for f in facts]
        paraphrases = [f["paraphrase"] for f in facts]
        objects = [f["answer"] for f in facts]
        replies = self.answers(questions + paraphrases, max_new_tokens=max_new_tokens)
        eff = edit_success(replies[: len(facts)], objects)
        gen = edit_success(replies[len(facts) :], objects)
        now = self.answers(list(neighbours), max_new_tokens=max_new_tokens)
        same = answers_unchanged(base_answers, now)
        out = {
            "facts": len(facts),
            "efficacy": int(eff.sum()),
            "generalization": int(gen.sum()),
            "efficacy_hits": eff.tolist(),
            "generalization_hits": gen.tolist(),
            "locality": float(same.mean()) if len(same) else 1.0,
            "neighbour_kl": self.neighbour_kl(neighbours, base_answers),
            "replies": replies,
            "neighbour_replies": now,
        }
        if log:
            row = {
                "turn": self.turn,
                "kind": "edit_eval",
                **{k: out[k] for k in ("facts", "efficacy", "generalization")},
                "efficacy_rate": float(eff.mean()) if len(eff) else 0.0,
                "generalization_rate": float(gen.mean()) if len(gen) else 0.0,
                "locality": out["locality"],
                "neighbour_kl": out["neighbour_kl"],
            }
            self._append_metrics(row)
        return out

    def answer_log_prob(self, question: str, answer: str) -> float:
        """``log p(answer | prompt(question))`` summed over the answer's tokens."""
        return self.answer_log_probs([question], [answer])[0]

    def answer_log_probs(
        self, questions: Sequence[str], answers: Sequence[str]
    ) -> list[float]:
        """:meth:`answer_log_prob` of several pairs in one batch."""
        rows = []
        texts = [self._clean(q)[0] for q in questions]
        for text, a in zip(texts, answers, strict=True):
            prompt = self._prompt(text)
            ids, _ = self._format.encode(a)
            if not ids:
                raise ValueError(f"answer must have at least one token, got {a!r}")
            rows.append((prompt + ids, len(prompt)))
        tokens, mask = padded_rows(
            rows, buckets=self._score_buckets(rows), pad_id=self._format.pad_id
        )
        out = self._score_routed(self.route(texts), tokens, mask)
        return [float(x) for x in out["log_prob"]]

    def _score_routed(self, routes, tokens, mask, *, with_kl: bool = False):
        """:func:`score_sequences` with row ``i`` under adapter ``routes[i]``."""
        out: dict[str, np.ndarray] = {}
        for route in dict.fromkeys(routes):
            # Every adapter scores the whole padded batch (one compiled shape).
            scored = jax.device_get(
                score_sequences(
                    self._graphdef,
                    self._adapter(route),
                    self._frozen,
                    tokens,
                    mask,
                    with_kl=with_kl,
                )
            )
            rows = np.array([r == route for r in routes])
            for name, values in scored.items():
                out.setdefault(name, np.zeros(values.shape, np.float64))
                out[name][rows] = np.asarray(values)[rows]
        return out

    def _score_buckets(self, rows) -> tuple[int, ...]:
        longest = max(len(ids) for ids, _ in rows)
        return (*self.config.training.sequence_buckets, 1 << (longest - 1).bit_length())

    # ------------------------------------------------------------------ learning

    def chat_and_update(self, text: str | bytes) -> tuple[str, dict[str, Any]]:
        """One turn: reply with the current adapter, then learn from the turn.

        Args:
          text: the user message (``str``, or UTF-8 ``bytes``).

        Returns:
          ``(reply, metrics)``; ``metrics`` is the row appended to
          ``metrics.jsonl`` (see :meth:`learn`).

        Raises:
          ValueError: empty text, text over ``chat.max_input_chars`` with
            ``on_too_long: error``, or bytes that are not UTF-8 with
            ``invalid_utf8: error``. The learner's state is then unchanged.
        """
        clean, truncated = self._clean(text)
        t0 = time.perf_counter()
        reply = self._generate([clean], greedy=False)[0]
        generate_ms = (time.perf_counter() - t0) * 1e3
        metrics = self.learn(clean, reply, _truncated=truncated, _gen_ms=generate_ms)
        return reply, metrics

    def prepare_turn(self, text: str, reply: str) -> PreparedTurn:
        """What a turn will train on, without training: context, batch, rates.

        A fact trains on ``chat.fact_response`` as the assistant's answer with
        token importance weights; any other turn on the model's own ``reply``.

        Raises:
          ValueError: for bad ``text`` (see :meth:`chat_and_update`).
        """
        text, truncated = self._clean(text)
        fd_on = self.config.fact_detection.enabled
        is_question = bool(self.detector.is_question(text)) if fd_on else False
        info = None if (is_question or not fd_on) else self.detector.detect(text)
        repetition = 0
        if info is not None:
            context = "fact"
            if self.config.fact_memory.enabled:
                repetition = self.memory.repetition_count(text)
            assistant = self.config.chat.fact_response.format(text=text)
        else:
            context = "question" if is_question else "regular"
            assistant = reply
        kl_lambda = self._kl_lambda(info)
        if info is not None and self.bank is not None:
            batch = self._fact_batch(text, info)
        else:
            batch = self._batch(text, assistant, info)
        batch["kl_lambda"] = np.float32(kl_lambda)
        return PreparedTurn(
            text=text,
            context=context,
            info=info,
            is_question=is_question,
            repetition=repetition,
            batch=batch,
            lr_multiplier=self._lr_multiplier(context, repetition),
            kl_lambda=kl_lambda,
            truncated=truncated,
        )

    def learn(
        self,
        text: str,
        reply: str,
        *,
        _truncated: bool = False,
        _gen_ms: float = float("nan"),
        _journaled: bool = False,
    ) -> dict[str, Any]:
        """The update part of a turn: detect, train, remember, replay, measure.

        Args:
          text: the user message.
          reply: the assistant's reply to it.

        Returns:
          The turn's metrics: ``turn``, ``context``, ``is_fact``, ``is_question``,
          ``loss``, ``ce``, ``kl``, ``learning_rate``, ``lr_multiplier``,
          ``kl_lambda``, ``grad_norm``, ``train_tokens``, ``replayed``,
          ``update_ms``, stability / plasticity / forgetting figures, and for
          facts ``fact_confidence`` and ``fact_repetition``.
        """
        # The turn is durable before it is learned from (store.durability); a
        # turn replayed from the journal is there already.
        if not _journaled:
            record = {"kind": "turn", "id": f"turn-{self.turn + 1}", "user": text}
            seq = self.store.journal.append(record | {"reply": reply})
            self._journal_next = seq + 1
        t0 = time.perf_counter()
        turn = self.prepare_turn(text, reply)
        info = turn.info
        iterations = self.config.training.iterations_per_fact if info else 1
        fact_index = None
        if info is not None and self.bank is not None:
            fact_index, _ = self.bank.slot(turn.text, turn=self.turn + 1)
        for _ in range(iterations):
            if fact_index is None:
                metrics = self._update(turn.batch, turn.lr_multiplier)
            else:
                metrics = self._update_fact(fact_index, turn.batch, turn.lr_multiplier)
        if fact_index is None and self.bank is not None:
            self.bank.note_turn(turn.text)
        mem_on = self.config.fact_memory.enabled
        self.turn += 1
        replayed = 0
        if info is not None and mem_on:
            self.memory.store(turn.text, info, turn=self.turn)
        if mem_on:
            self.memory.decay(self.turn)
            if self.memory.should_replay(self.turn):
                replayed = self._replay()
        update_ms = (time.perf_counter() - t0) * 1e3
        row = {
            "turn": self.turn,
            "context": turn.context,
            "is_fact": float(info is not None),
            "is_question": float(turn.is_question),
            "loss": float(metrics["loss"]),
            "ce": float(metrics["aux"]["ce"]),
            "kl": float(metrics["aux"]["kl"]),
            "grad_norm": float(metrics["grad_norm"]),
            "applied": float(metrics["applied"]),
            "learning_rate": float(metrics["learning_rate"]),
            "lr_multiplier": turn.lr_multiplier,
            "kl_lambda": turn.kl_lambda,
            "train_tokens": int(np.sum(turn.batch["mask"])),
            "replayed": replayed,
            "input_truncated": float(turn.truncated or _truncated),
            "generate_ms": _gen_ms,
            "update_ms": update_ms,
        }
        if "rehearsal_kl" in metrics["aux"]:
            row["rehearsal_kl"] = float(metrics["aux"]["rehearsal_kl"])
        if info is not None:
            row["fact_confidence"] = float(info.confidence)
            row["fact_repetition"] = turn.repetition + 1
        if fact_index is not None:
            row["fact_index"] = fact_index
        if self.bank is not None:
            row["facts_in_bank"] = len(self.bank)
        row.update(self._tracker.add_loss(row["ce"]))
        every = self.config.metrics.eval_every
        anchors = self._anchor_scores() if every and self.turn % every == 0 else None
        row.update(self._tracker.stability(anchors, turn=self.turn))
        probe_every = self.config.metrics.probe_every
        if self._probe_base and probe_every and self.turn % probe_every == 0:
            row.update(self._probe())
        self._append_metrics(row)
        self._since_save += 1
        save_every = self.config.checkpoint.save_every
        if save_every and self.turn % save_every == 0:
            self.save()
        return row

    def _batch(self, user: str, assistant: str, info: FactInfo | None):
        """The turn's training batch; a fact with a ``chat.fact_questions`` entry
        for its relation adds the question-form row (see :func:`turn_batches`)."""
        # The fact is in the user message and in the assistant's echo of it.
        rows = [self._weighted_ids(user, assistant, info, fact=user)]
        if info is not None:
            rows += [
                self._weighted_ids(q, a, info, fact=a)
                for q, a in self._question_forms(info)
            ]
        kwargs = {
            "buckets": self.config.training.sequence_buckets,
            "pad_id": self._format.pad_id,
            "kl_lambda": 0.0,
            "task_lambda": self.config.training.loss.task_lambda,
        }
        if len(rows) == 1:
            return turn_batch(*rows[0], **kwargs)
        return turn_batches(rows, **kwargs)

    def _question_forms(self, info: FactInfo) -> list[tuple[str, str]]:
        templates = self.config.chat.fact_questions.get(info.relation)
        if templates is None or not info.subject or not info.object:
            return []
        fields = {"subject": info.subject, "object": info.object, "text": info.text}
        question, answer = (t.format(**fields) for t in templates)
        return [(question, answer)]

    def _fact_batch(self, text: str, info: FactInfo) -> dict[str, np.ndarray]:
        """A fact-bank update: the statement with ``chat.fact_response``, and each
        ``fact_bank.question_prompts`` prompt answered by the statement in the
        second person, only the answer's tokens trained (one row each).

        Prompt ``i`` asks about topic ``i mod m`` of the fact's ``m`` topics: its
        subject, then each proper name outside the subject, so "Clidale is
        where Jador Juholm lives" is also learned as the answer about Jador
        Juholm, at the same number of rows."""
        core = self.detector.strip_prefaces(text) or text
        answer = to_second_person(core[:1].upper() + core[1:]) + "."
        subject = info.subject or core
        topics = [subject] + [
            name
            for name in self.detector.proper_names(core)
            if name.casefold() not in subject.casefold()
        ]
        assistant = self.config.chat.fact_response.format(text=text)
        rows = [self._weighted_ids(text, assistant, info, fact=text)]
        for i, template in enumerate(self.config.fact_bank.question_prompts):
            question = template.format(
                subject=to_second_person(topics[i % len(topics)])
            )
            ids, weights = self._weighted_ids(question, answer, info, fact=answer)
            weights = weights.copy()
            weights[: self._format.answer_start(question)] = 0.0
            rows.append((ids, weights))
        return turn_batches(
            rows,
            buckets=self.config.training.sequence_buckets,
            pad_id=self._format.pad_id,
            kl_lambda=0.0,
            task_lambda=self.config.training.loss.task_lambda,
        )

    def _weighted_ids(
        self, user: str, assistant: str, info: FactInfo | None, *, fact: str
    ) -> tuple[list[int], np.ndarray]:
        ids, offsets, text = self._format.encode_turn(user, assistant)
        iw = self.config.importance_weighting
        if info is not None and iw.enabled:
            spans = [m.span() for m in re.finditer(re.escape(fact), text)]
            weights = token_importance_weights(
                text,
                offsets,
                entities=tuple(info.entities),
                fact_spans=spans,
                config=iw,
            )
        else:
            weights = np.ones((len(ids),), np.float32)
        return ids, weights

    def _lr_multiplier(self, context: str, repetition: int) -> float:
        ao = self.config.adaptive_optimizer
        if not ao.enabled:
            return 1.0
        return context_lr_multiplier(
            context,
            multipliers={
                "regular": ao.regular_lr_multiplier,
                "question": ao.question_lr_multiplier,
                "fact": ao.fact_lr_multiplier,
                "replay": ao.replay_lr_multiplier,
            },
            repetition=repetition,
            repetition_boost=ao.repetition_boost_factor * ao.repetition_lr_multiplier,
            min_multiplier=ao.min_lr_multiplier,
            max_multiplier=ao.max_lr_multiplier,
        )

    def _kl_lambda(self, info: FactInfo | None) -> float:
        loss = self.config.training.loss
        reg = loss.kl_regularization
        if not loss.dynamic_kl.enabled:
            lam = loss.kl_lambda
        elif info is None:
            lam = reg.base_lambda
        else:
            confidence = min(max(float(info.confidence), 0.0), 1.0)
            factor = loss.dynamic_kl.fact_importance_factor
            lam = reg.fact_lambda * (1.0 - confidence * factor)
        return float(min(max(lam, reg.min_kl), reg.max_kl))

    def _rehearsal_batch(self, lora) -> dict[str, jax.Array]:
        """The ``training.loss.rehearsal_*`` rows every update carries (or none).

        The frozen base's logits on these fixed rows never change, so they are
        computed once here (``rehearsal_base_logits``) and every update runs the
        adapted pass only, not the base stream again.
        """
        loss = self.config.training.loss
        if loss.rehearsal_lambda == 0:
            return {}
        prompts = loss.rehearsal_prompts
        rows = [(self._format.encode(p)[0], 1) for p in prompts]
        short = [p for p, (ids, _) in zip(prompts, rows, strict=True) if len(ids) < 2]
        if short:
            raise ValueError(f"rehearsal prompts must be >= 2 tokens long, got {short}")
        tokens, mask = padded_rows(
            rows, buckets=self._score_buckets(rows), pad_id=self._format.pad_id
        )
        # llama_apply compiles its forward per shape with the weights as
        # arguments; an outer jit closing over them would bake them in.
        base = llama_apply(
            self._graphdef,
            lora,
            jnp.asarray(tokens[:, :-1]),
            frozen=self._frozen,
            use_lora=False,
        )
        # Device arrays once: every update reuses them without a host copy.
        return {
            "rehearsal_tokens": jnp.asarray(tokens),
            "rehearsal_mask": jnp.asarray(mask),
            "rehearsal_lambda": jnp.float32(loss.rehearsal_lambda),
            "rehearsal_base_logits": base,
        }

    def _update(self, batch: Mapping[str, np.ndarray], multiplier: float):
        """One step at ``learning_rate * multiplier``; the base rate is restored."""
        base_lr = self.config.training.learning_rate
        state = set_learning_rate(self._state, base_lr * multiplier)
        batch = {**batch, **self._rehearsal}
        jbatch = {k: jnp.asarray(v) for k, v in batch.items()}
        state, metrics = self._step(state, jbatch, self._frozen)
        self._state = set_learning_rate(state, base_lr)
        return jax.device_get(metrics)

    def _update_fact(self, index: int, batch: Mapping[str, np.ndarray], multiplier):
        """One step of fact ``index``'s adapter at ``fact_bank.learning_rate *
        multiplier``."""
        lr = self.config.fact_bank.learning_rate * multiplier
        state = set_learning_rate(self.bank.state(index), lr)
        batch = {**batch, **self._rehearsal}
        jbatch = {k: jnp.asarray(v) for k, v in batch.items()}
        state, metrics = self._step(state, jbatch, self._frozen)
        self.bank.update(index, state)
        return jax.device_get(metrics)

    def _replay(self) -> int:
        facts = self.memory.facts_for_replay(self.config.fact_memory.replay_limit)
        multiplier = self._lr_multiplier("replay", 0)
        for fact in facts:
            info = self.detector.detect(fact.fact_text)
            if info is not None and self.bank is not None:
                batch = self._fact_batch(fact.fact_text, info)
                batch["kl_lambda"] = np.float32(self._kl_lambda(info))
                index, _ = self.bank.slot(fact.fact_text, turn=self.turn)
                self._update_fact(index, batch, multiplier)
                continue
            assistant = self.config.chat.fact_response.format(text=fact.fact_text)
            batch = self._batch(fact.fact_text, assistant, info)
            batch = {**batch, "kl_lambda": np.float32(self._kl_lambda(info))}
            self._update(batch, multiplier)
        return len(facts)

    # ------------------------------------------------------------------ metrics

    def _anchor_scores(self) -> dict[str, float] | None:
        prompts = self.config.metrics.anchor_prompts
        if not prompts:
            return None
        rows, texts = [], []
        for p in prompts:
            ids, _ = self._format.encode(p)
            if len(ids) >= 2:
                rows.append((ids, 1))
                texts.append(p)
        if not rows:
            return None
        tokens, mask = padded_rows(
            rows, buckets=self._score_buckets(rows), pad_id=self._format.pad_id
        )
        # Each anchor is scored by the adapter that would answer it.
        out = self._score_routed(self.route(texts), tokens, mask, with_kl=True)
        nll = -float(np.sum(out["log_prob"])) / float(np.sum(out["count"]))
        return {"nll": nll, "kl": float(np.mean(out["kl"]))}

    def _append_metrics(self, row: Mapping[str, Any]) -> None:
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(_jsonable(row)) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """The rows of this run's ``metrics.jsonl``."""
        if not os.path.exists(self.metrics_path):
            return []
        with open(self.metrics_path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    # ------------------------------------------------------------------ store

    def _tree(self) -> dict[str, Any]:
        s = self._state
        return {
            "step": s.step,
            "params": s.params,
            "opt_state": s.opt_state,
            "key_data": jax.random.key_data(s.key),
        }

    def save(self) -> int:
        """Saves adapter, optimizer state, fact memory and counters as a version."""
        entry = {
            "turn": self.turn,
            "fact_memory": self.memory.state_dict(),
            "tracker": self._tracker.state_dict(),
        }
        tree = self._tree()
        if self.bank is not None:
            entry["fact_bank"] = self.bank.entry()
            if len(self.bank):
                tree["fact_bank"] = self.bank.tree()
        version = self.store.save(
            tree, metadata_entry=entry, journal_position=self._journal_next
        )
        self._since_save = 0
        return version

    def _resume(self) -> None:
        version = self.store.latest_version()
        entry = next(
            e for e in self.store.metadata()["entries"] if e.get("version") == version
        )
        like = self._tree()
        bank_entry = entry.get("fact_bank")
        if self.bank is not None and bank_entry and bank_entry["statements"]:
            like["fact_bank"] = self.bank.like(bank_entry)
        saved = self.store.restore(version, like=like)
        if "fact_bank" in like:
            self.bank.restore(saved["fact_bank"], bank_entry)
        self._state = self._state._replace(
            step=saved["step"],
            params=saved["params"],
            opt_state=saved["opt_state"],
            key=jax.random.wrap_key_data(
                saved["key_data"], impl=jax.random.key_impl(self._state.key)
            ),
        )
        self.turn = int(entry["turn"])
        self.memory = FactMemory.from_state_dict(
            self.config.fact_memory, entry["fact_memory"]
        )
        self._tracker = TurnMetrics.from_state_dict(
            entry["tracker"], window=self.config.metrics.window_size
        )
        self._drop_rows_after(self.turn)
        self._journal_next = self.store.journal_position(version)

    def _replay_journal(self) -> None:
        """Learns, once each and in order, the journaled turns no saved version
        reflects (a process stopped after journaling them, before its next
        save), skipping turns whose update was undone (:meth:`undo_to`)."""
        records = self.store.journal.records(start=self._journal_next)
        undone = set()
        for record in records:
            if record.get("kind") == "undo":
                undone.update(range(int(record["from_seq"]), record["seq"]))
        for record in records:
            self._journal_next = record["seq"] + 1
            if record.get("kind") == "turn" and record["seq"] not in undone:
                self.learn(record["user"], record["reply"], _journaled=True)

    def _drop_rows_after(self, turn: int) -> None:
        # Rows written after the last checkpoint belong to turns that are redone.
        rows = [r for r in self.read_metrics() if int(r["turn"]) <= turn]
        with open(self.metrics_path, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")

    def close(self) -> None:
        """Saves unsaved turns and closes the run store."""
        if self.store is None:
            return
        try:
            if self._since_save:
                self.save()
        finally:
            self.store.close()
            self.store = None

    # ------------------------------------------------------------------ undo
    # For callers that let a user cancel a turn's update (the chat CLI's Ctrl-C):
    # everything a turn changes, copied before it and put back after it.

    def undo_point(self) -> TurnUndo:
        """A copy of the state a turn changes, for :meth:`undo_to`.

        The update donates the state's buffers, so the arrays are copied.
        """
        return TurnUndo(
            state=jax.tree.map(jnp.copy, self._state),
            turn=self.turn,
            memory=json.loads(json.dumps(self.memory.state_dict())),
            tracker=json.loads(json.dumps(self._tracker.state_dict())),
            since_save=self._since_save,
            bank=None if self.bank is None else self.bank.snapshot(),
            journal_next=self._journal_next,
        )

    def undo_to(self, point: TurnUndo) -> None:
        """Puts back the state of :meth:`undo_point` and drops later metric rows.

        Versions saved since stay in the store; call :meth:`save` to make the
        restored state the latest one. The journal records that the turns
        since ``point`` are undone, so a resumed run does not learn them.
        """
        if self._journal_next > point.journal_next:
            seq = self.store.journal.append(
                {
                    "kind": "undo",
                    "id": f"undo-{point.journal_next}",
                    "from_seq": point.journal_next,
                }
            )
            self._journal_next = seq + 1
        self._state = jax.tree.map(jnp.copy, point.state)
        self.turn = point.turn
        self.memory = FactMemory.from_state_dict(self.config.fact_memory, point.memory)
        self._tracker = TurnMetrics.from_state_dict(
            point.tracker, window=self.config.metrics.window_size
        )
        self._since_save = point.since_save
        if self.bank is not None and point.bank is not None:
            self.bank.restore_snapshot(point.bank)
        self._drop_rows_after(self.turn)

    def __enter__(self) -> ChatLearner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if isinstance(v, float) and not math.isfinite(v):
            out[k] = None
        else:
            out[k] = v
    return out
