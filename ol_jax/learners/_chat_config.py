"""The chat learner's configuration (seed 001's ``default_config.yaml``), validated.

Every knob of the document's configuration section is a field here, under the
same section and key names (``model.lora.rank``, ``training.loss.kl_regularization
.fact_lambda``, ``adaptive_optimizer.fact_lr_multiplier``, ...); the fact detection,
fact memory and importance weighting sections are the schemas of their own modules.
A few sections the document leaves in code are knobs here too: generation,
input limits, the training-sequence length buckets, metrics and checkpointing.
Unknown keys and bad values are :class:`~ol_jax.store.ConfigError` naming the key.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from ol_jax.learners._facts import (
    FactDetectionConfig,
    FactMemoryConfig,
)
from ol_jax.learners._token_weights import ImportanceWeightingConfig
from ol_jax.models import LLAMA_PROJECTIONS
from ol_jax.store import (
    BaseNetworkConfig,
    BatchSize,
    Capacity,
    Chars,
    ConfigSection,
    Count,
    Dim,
    Tokens,
)

__all__ = [
    "AdaptiveOptimizerConfig",
    "ChatConfig",
    "ChatModelConfig",
    "ChatTrainingConfig",
    "FactBankSection",
]


def _check_template(template: str, fields: tuple[str, ...], where: str) -> None:
    """Raises ValueError unless ``template`` is a non-empty format string over
    (some of) ``fields``."""
    try:
        template.format(**{f: f[0] for f in fields})
    except _FORMAT_ERRORS as e:
        names = ", ".join(f"{{{f}}}" for f in fields)
        raise ValueError(
            f"{where}: templates may use only {names}, got {template!r} ({e})"
        ) from None
    if not template.strip():
        raise ValueError(f"{where}: templates must be non-empty")


class LoraSection(ConfigSection):
    """``model.lora``: the adapter (PEFT conventions, update ``(alpha / r) A B``).

    Attributes:
      rank: adapter rank ``r`` (the document recommends 2-4).
      alpha: scale numerator.
      target_modules: projections that get an adapter.
      dropout: dropout on the adapter input during updates, in [0, 1).
      bias: only ``"none"`` (biases are never trained).
    """

    rank: Dim = Field(default=4, ge=1)
    alpha: float = Field(default=16.0, gt=0)
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    dropout: float = Field(default=0.05, ge=0, lt=1)
    bias: Literal["none"] = "none"

    @field_validator("target_modules")
    @classmethod
    def _modules(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("must name at least one projection, got []")
        for name in value:
            if name not in LLAMA_PROJECTIONS:
                raise ValueError(
                    f"must be projections from {list(LLAMA_PROJECTIONS)}, got {name!r}"
                )
        return value


class ChatModelConfig(ConfigSection):
    """``model``: the frozen base LLM and its adapter.

    Attributes:
      base_model_name: an alias of ``ol_jax.models.PRETRAINED`` (``smollm2-135m``),
        a ``.gguf`` file or a Hugging Face folder (Llama or Qwen2).
      dtype: parameter dtype of the base, ``float32`` (the fast path on CPU) or
        ``bfloat16``.
      lora: the adapter.
    """

    base_model_name: str = "smollm2-135m"
    dtype: Literal["float32", "bfloat16"] = "float32"
    lora: LoraSection = Field(default_factory=LoraSection)


class KlRegularizationSection(ConfigSection):
    """``training.loss.kl_regularization``: the KL weight of each kind of turn.

    Attributes:
      base_lambda: KL weight of regular and question turns.
      fact_lambda: KL weight of fact turns (lower: more adaptation).
      min_kl, max_kl: every KL weight is clipped into ``[min_kl, max_kl]``.
    """

    base_lambda: float = Field(default=0.1, ge=0)
    fact_lambda: float = Field(default=0.01, ge=0)
    min_kl: float = Field(default=0.001, ge=0)
    max_kl: float = Field(default=1.0, ge=0)

    @model_validator(mode="after")
    def _order(self):
        if self.min_kl > self.max_kl:
            raise ValueError(
                f"min_kl must be <= max_kl, got {self.min_kl} and {self.max_kl}"
            )
        return self


class DynamicKlSection(ConfigSection):
    """``training.loss.dynamic_kl``: lower the KL weight for confident facts.

    With ``enabled``, a fact turn uses
    ``fact_lambda * (1 - confidence * fact_importance_factor)``.
    """

    enabled: bool = True
    fact_importance_factor: float = Field(default=0.5, ge=0, le=1)


class LossSection(ConfigSection):
    """``training.loss``: ``L = task_lambda * CE_w + lambda_KL * KL(base || adapted)
    + rehearsal_lambda * KL_rehearsal``.

    ``KL_rehearsal`` is the mean ``KL(base || adapted)`` over the tokens of the
    fixed ``rehearsal_prompts``, added to every update: a data-free
    distillation term that holds the adapted model to the base on general text
    while it learns the turn (Li & Hoiem, `Learning without Forgetting
    <https://arxiv.org/abs/1606.09282>`_, 2016). Keep these prompts apart from
    ``metrics.anchor_prompts``, which measure stability and must stay held out.

    Attributes:
      kl_lambda: the KL weight of every turn when ``dynamic_kl`` is off.
      task_lambda: weight of the token-weighted cross-entropy.
      kl_regularization: per-context KL weights (used when ``dynamic_kl`` is on).
      dynamic_kl: the fact-confidence scaling.
      rehearsal_lambda: weight of ``KL_rehearsal`` (0: off).
      rehearsal_prompts: the general texts of ``KL_rehearsal``.
    """

    kl_lambda: float = Field(default=0.1, ge=0)
    task_lambda: float = Field(default=1.0, ge=0)
    kl_regularization: KlRegularizationSection = Field(
        default_factory=KlRegularizationSection
    )
    dynamic_kl: DynamicKlSection = Field(default_factory=DynamicKlSection)
    rehearsal_lambda: float = Field(default=0.0, ge=0)
    rehearsal_prompts: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _rehearsal(self) -> LossSection:
        if any(not p.strip() for p in self.rehearsal_prompts):
            raise ValueError(
                "rehearsal_prompts must be non-empty texts, got "
                f"{list(self.rehearsal_prompts)}"
            )
        if self.rehearsal_lambda > 0 and not self.rehearsal_prompts:
            raise ValueError(
                f"rehearsal_lambda={self.rehearsal_lambda} needs rehearsal_prompts, "
                "got none"
            )
        return self


class ChatTrainingConfig(ConfigSection):
    """``training``: the update of every turn.

    Attributes:
      learning_rate: base AdamW step size (multiplied per turn by the adaptive
        optimizer's context multiplier).
      gradient_clip_norm: global-norm clip of the LoRA gradient.
      weight_decay: decoupled AdamW weight decay.
      adam_b1, adam_b2, adam_eps: Adam moments.
      iterations_per_fact: updates on a fact turn's training text (>= 1).
      sequence_buckets: training sequences are right-padded to the smallest of
        these lengths that fits, so turns of different lengths reuse a few
        compiled steps; longer sequences keep their last ``max`` tokens.
      loss: the loss weights.
    """

    learning_rate: float = Field(default=1e-6, gt=0)
    gradient_clip_norm: float = Field(default=0.1, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    adam_b1: float = Field(default=0.9, ge=0, lt=1)
    adam_b2: float = Field(default=0.999, ge=0, lt=1)
    adam_eps: float = Field(default=1e-8, gt=0)
    # Each iteration is one more update of the model in the turn.
    iterations_per_fact: BatchSize = Field(default=1, ge=1)
    sequence_buckets: tuple[Annotated[Tokens, Field(ge=4)], ...] = (32, 64, 128, 256)
    loss: LossSection = Field(default_factory=LossSection)

    @field_validator("sequence_buckets")
    @classmethod
    def _buckets(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(b < 4 for b in value) or list(value) != sorted(set(value)):
            raise ValueError(f"must be increasing lengths >= 4, got {list(value)}")
        return value


class AdaptiveOptimizerConfig(ConfigSection):
    """``adaptive_optimizer``: the learning-rate multiplier of each kind of turn.

    ``m = clip(context * (1 + (n - 1) * repetition_boost_factor *
    repetition_lr_multiplier), min_lr_multiplier, max_lr_multiplier)`` for the
    ``n``-th mention of a fact (``n = 1`` for other turns); the step size is
    ``learning_rate * m``, set as data, so no recompilation. Disabled: ``m = 1``.
    """

    enabled: bool = True
    fact_lr_multiplier: float = Field(default=5.0, gt=0)
    question_lr_multiplier: float = Field(default=2.0, gt=0)
    regular_lr_multiplier: float = Field(default=1.0, gt=0)
    repetition_lr_multiplier: float = Field(default=1.2, ge=0)
    repetition_boost_factor: float = Field(default=0.1, ge=0)
    replay_lr_multiplier: float = Field(default=0.5, gt=0)
    max_lr_multiplier: float = Field(default=10.0, gt=0)
    min_lr_multiplier: float = Field(default=0.1, gt=0)

    @model_validator(mode="after")
    def _order(self):
        if self.min_lr_multiplier > self.max_lr_multiplier:
            raise ValueError(
                "min_lr_multiplier must be <= max_lr_multiplier, got "
                f"{self.min_lr_multiplier} and {self.max_lr_multiplier}"
            )
        return self


class GenerationSection(ConfigSection):
    """``generation``: how the reply of each turn is decoded.

    Attributes:
      max_new_tokens: reply length limit.
      temperature: 0 for greedy decoding.
      top_p: nucleus mass when sampling.
      system_prompt: the system message of every prompt; ``null`` keeps the chat
        template's default (SmolLM2's is about 15 tokens long).
      stop_at_eos: end the reply at the end-of-sequence token.
      max_prompt_tokens: longer prompts keep their last tokens.
    """

    max_new_tokens: Tokens = Field(default=64, ge=1)
    temperature: float = Field(default=0.7, ge=0)
    top_p: float = Field(default=0.9, gt=0, le=1)
    system_prompt: str | None = ""
    stop_at_eos: bool = True
    max_prompt_tokens: Tokens = Field(default=256, ge=8)


# What str.format raises for a bad template ("{x}", "{0}", "{text.x}", "{text[0][0]}").
_FORMAT_ERRORS = (KeyError, IndexError, ValueError, AttributeError, TypeError)


class ChatInputSection(ConfigSection):
    """``chat``: what one turn accepts and trains on.

    Attributes:
      max_input_chars: longest user message.
      on_too_long: ``truncate`` (keep the first ``max_input_chars`` characters) or
        ``error``.
      invalid_utf8: for ``bytes`` input that is not UTF-8: ``error`` or
        ``replace`` (undecodable bytes become U+FFFD).
      fact_response: the assistant text a fact turn trains on, ``{text}`` being
        the user's message (the document's ``"I understand. {text}"``).
      fact_questions: per fact relation, a ``[question, answer]`` pair of
        templates over ``{subject}``, ``{object}`` and ``{text}`` (the
        statement). A fact whose relation is listed trains, in the same update,
        on the statement and on this question-form pair (Allen-Zhu & Li, 2023:
        knowledge seen only as statements is poorly extracted by questions).
        Empty: statements only.
    """

    max_input_chars: Chars = Field(default=4000, ge=1)
    on_too_long: Literal["truncate", "error"] = "truncate"
    invalid_utf8: Literal["error", "replace"] = "error"
    fact_response: str = "I understand. {text}"
    fact_questions: dict[str, tuple[str, str]] = Field(default_factory=dict)

    @field_validator("fact_questions")
    @classmethod
    def _questions(cls, value: dict[str, tuple[str, str]]):
        for relation, templates in value.items():
            for template in templates:
                _check_template(template, ("subject", "object", "text"), relation)
        return value

    @field_validator("fact_response")
    @classmethod
    def _template(cls, value: str) -> str:
        if "{text}" not in value:
            raise ValueError(f"must contain '{{text}}', got {value!r}")
        try:
            value.format(text="x")
        except _FORMAT_ERRORS as e:
            raise ValueError(
                f"must be a format string with only {{text}}: {e}"
            ) from None
        return value


_DEFAULT_ANCHORS = (
    "The capital of France is Paris.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The sun rises in the east and sets in the west.",
    "A week has seven days.",
)


class MetricsSection(ConfigSection):
    """``metrics``: stability, plasticity and forgetting, one row per turn.

    Attributes:
      anchor_prompts: fixed texts whose perplexity and KL to the base are the
        stability and forgetting measures.
      eval_every: measure the anchors every this many turns (0: never; rows in
        between repeat the last measurement and its ``anchor_turn``).
      window_size: turns in the plasticity window (recent loss, improvement,
        adaptation speed).
      metrics_file: the JSON-lines file in the run folder.
    """

    anchor_prompts: tuple[str, ...] = _DEFAULT_ANCHORS
    eval_every: Count = Field(default=1, ge=0)
    probe_questions: tuple[str, ...] = ()
    probe_every: Count = Field(default=10, ge=0)
    probe_tokens: Tokens = Field(default=32, ge=1)
    window_size: Capacity = Field(default=10, ge=2)
    metrics_file: str = "metrics.jsonl"

    @field_validator("anchor_prompts", "probe_questions")
    @classmethod
    def _anchors(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not p.strip() for p in value):
            raise ValueError(f"anchor prompts must be non-empty, got {list(value)}")
        return value


class CheckpointSection(ConfigSection):
    """``checkpoint``: LoRA, optimizer state, fact memory and counters are saved
    to the run store every ``save_every`` turns (0: only on close)."""

    save_every: Count = Field(default=10, ge=0)


_DEFAULT_FACT_PROMPTS = (
    "What do you know about {subject}?",
    "Tell me about {subject}.",
)


class FactBankSection(ConfigSection):
    """``fact_bank``: every learned fact in an adapter of its own, applied only to
    the messages about it (a keyed side memory, as WISE and GRACE edit models).

    A fact turn trains the fact's own LoRA adapter (a fresh one, ``B = 0``, for a
    new fact; the same one when the statement restates a stored fact) on the
    statement and on question prompts answered with the statement in the second
    person, the answer tokens only. A message is routed to the fact whose
    statement embedding (``encoder``) is most similar, if the cosine similarity is
    at least ``route_threshold``; other turns train the shared adapter, which
    answers the messages like them; any other message is answered by the base
    model. Facts therefore do not overwrite each other, and unrelated questions
    keep the base model's answers.

    Attributes:
      enabled: learn facts into the bank (false, the default: facts train the
        shared adapter, as seed 001 describes).
      encoder: sentence encoder alias or folder (``ol_jax.models.load_encoder``),
        or ``"tiny"`` (random, for tests).
      route_threshold: least cosine similarity of a message to a fact's
        statement for that fact's adapter to answer it, in (-1, 1].
      same_fact_threshold: a statement at least this similar to a stored fact
        restates it (trains the same adapter), in [``route_threshold``, 1].
      learning_rate: base AdamW rate of fact-adapter updates, times the turn's
        context multiplier (``adaptive_optimizer``).
      question_prompts: user prompts over ``{subject}`` (a topic of the fact in
        the second person: prompt ``i`` takes topic ``i mod m`` of its subject
        and the proper names outside it) trained to answer with the statement.
      max_facts: most facts kept; a new fact past it replaces the least
        recently stated one.
      conversation_keys: the last this many other turns (which train the shared
        adapter) route messages like them, at ``route_threshold``, to the shared
        adapter; a message like no fact and no such turn is answered by the
        base model. 0: the shared adapter answers every message not about a
        fact.
      optimizer_slots: facts whose AdamW moments are kept between their
        statements (the most recently stated); another fact restarts its
        moments when stated again.
    """

    enabled: bool = False
    encoder: str = "all-minilm-l6-v2"
    route_threshold: float = Field(default=0.45, gt=-1, le=1)
    same_fact_threshold: float = Field(default=0.9, ge=-1, le=1)
    learning_rate: float = Field(default=6e-4, gt=0, le=1)
    question_prompts: tuple[str, ...] = _DEFAULT_FACT_PROMPTS
    max_facts: Capacity = Field(default=256, ge=1)
    conversation_keys: Capacity = Field(default=256, ge=0)
    optimizer_slots: Capacity = Field(default=8, ge=1)

    @field_validator("question_prompts")
    @classmethod
    def _prompts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for template in value:
            _check_template(template, ("subject",), "question_prompts")
        return value

    @model_validator(mode="after")
    def _thresholds(self) -> FactBankSection:
        if self.same_fact_threshold < self.route_threshold:
            raise ValueError(
                f"same_fact_threshold must be >= route_threshold="
                f"{self.route_threshold}, got {self.same_fact_threshold}"
            )
        return self


class ChatConfig(BaseNetworkConfig):
    """A chat network's ``config.yaml`` (seed 001), every section validated.

    Attributes:
      model: base LLM and LoRA.
      training: learning rate, clipping, decay, loss weights, length buckets.
      fact_detection: question filter, fact patterns, entities, confidence.
      fact_memory: capacity, importance, eviction, decay, replay.
      fact_bank: per-fact adapters and the router that applies them.
      adaptive_optimizer: per-context learning-rate multipliers.
      importance_weighting: token weights of the cross-entropy.
      generation: reply decoding.
      chat: input limits and the fact training template.
      metrics: anchor prompts and windows.
      checkpoint: how often the run store is written.
    """

    network_id: str = Field(default="chat", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    model: ChatModelConfig = Field(default_factory=ChatModelConfig)
    training: ChatTrainingConfig = Field(default_factory=ChatTrainingConfig)
    fact_detection: FactDetectionConfig = Field(default_factory=FactDetectionConfig)
    fact_memory: FactMemoryConfig = Field(default_factory=FactMemoryConfig)
    fact_bank: FactBankSection = Field(default_factory=FactBankSection)
    adaptive_optimizer: AdaptiveOptimizerConfig = Field(
        default_factory=AdaptiveOptimizerConfig
    )
    importance_weighting: ImportanceWeightingConfig = Field(
        default_factory=ImportanceWeightingConfig
    )
    generation: GenerationSection = Field(default_factory=GenerationSection)
    chat: ChatInputSection = Field(default_factory=ChatInputSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
