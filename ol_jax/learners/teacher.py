"""``TeacherProxyLearner``: answer locally, or ask a teacher and learn (seed 002).

Three models learn after every teacher answer, each with one jit-compiled
``ol_jax.core.make_step`` update:

* the **generator** (an LLM with LoRA) is distilled from the teacher's answer
  (token CE + KL to the base model), on the new example plus a prioritized
  replay batch;
* the **validator** (binary head over the frozen sentence embeddings of the
  query and an answer) learns that the teacher's answer is good, that a local
  answer is good iff its embedding's cosine similarity to the teacher's is at
  least ``policy.similarity_threshold``, and (optionally) that the previous,
  different teacher answer is a bad answer to this query;
* the **router** (binary head over the query embedding) learns whether answering
  locally would have been good: the similarity test when a local answer was
  made, else whether greedy decoding would have reproduced the teacher's answer
  exactly (read from the generator step's forward pass, before its update).

The sentence encoder stays frozen: route + validate then costs one encoder pass
per text (cached) and two tiny heads, the similarity that labels every example
is measured with a fixed ruler, and no encoder gradient is ever needed.

Policy (every number in :class:`TeacherProxyConfig`): the first ``cold_start``
queries are always forwarded; until ``conservative_until`` the router and
validator thresholds are the stricter ``*_conservative`` ones; a query the
router and validator would answer locally is still forwarded with probability
``s(n) = end + (start - end) * 2^(-(n - cold_start) / half_life)`` (strategic
sampling, 50% decaying to 5% by default), which also audits local accuracy.
Before that, a local answer the validator accepts must also agree (cosine at
least ``similarity_threshold``) with the teacher's answer to the most similar
query among the last ``answer_memory`` teacher answers: a nearest-neighbour
check on the teacher's own words, which catches a fluent answer borrowed from a
neighbouring question family that the embedding-level validator scores as good.

References:
    Hinton et al., `Distilling the knowledge in a neural network
    <https://arxiv.org/abs/1503.02531>`_, 2015.
    Schaul et al., `Prioritized Experience Replay
    <https://arxiv.org/abs/1511.05952>`_, 2016.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from pydantic import Field, model_validator

from ol_jax.core import init_state, make_step, online_optimizer
from ol_jax.feedback import Teacher, TeacherError
from ol_jax.learners._teacher_models import (
    build_encoder,
    build_generator,
    head_loss,
    head_prob,
    init_head,
    make_generator_loss,
    pair_features,
)
from ol_jax.memory import prioritized_replay
from ol_jax.models import (
    LLAMA_PROJECTIONS,
    LoRAConfig,
    generate,
    prompt_bucket,
    split_lora,
)
from ol_jax.store import (
    BaseNetworkConfig,
    BatchSize,
    Capacity,
    ConfigSection,
    Count,
    Dim,
    RunStore,
    Tokens,
    load_config,
    load_pytree,
    save_pytree,
)

__all__ = [
    "ProxyDecision",
    "ProxyRoute",
    "TeacherProxyConfig",
    "TeacherProxyLearner",
]

_STATE_DIR = "state"
# The reason of a route the router would answer locally, before its answer is
# generated and validated.
_CANDIDATE = "local_candidate"
_META_FILE = "learner.json"
_MODELS = ("router", "validator", "generator")


# ----------------------------------------------------------------- configuration


class PolicySection(ConfigSection):
    """When to forward to the teacher, and what counts as a match.

    Attributes:
      cold_start: the first this many queries are always forwarded.
      conservative_until: up to this query the ``*_conservative`` thresholds
        apply.
      router_threshold: answer locally only if ``p_local >=`` this.
      router_threshold_conservative: the same during the conservative phase.
      validator_threshold: serve a local answer only if ``p_good >=`` this.
      validator_threshold_conservative: the same during the conservative phase.
      sampling_start: share of locally answerable queries forwarded anyway right
        after the cold start.
      sampling_end: the share it decays to.
      sampling_half_life: queries over which the excess over ``sampling_end``
        halves.
      similarity_threshold: a local answer matches the teacher's if the cosine
        similarity of their sentence embeddings is at least this.
      answer_memory: how many (query, teacher answer) pairs are remembered for
        the agreement check: a local answer is served only if it matches
        (``similarity_threshold``) the teacher's answer to the most similar
        remembered query; 0 turns the check off.
      teacher_cost_per_query: cost of one teacher call (e.g. USD), reported as
        ``cost_saved`` of each local answer.
    """

    cold_start: Count = Field(default=50, ge=0)
    conservative_until: Count = Field(default=200, ge=0)
    router_threshold: float = Field(default=0.5, ge=0, le=1)
    router_threshold_conservative: float = Field(default=0.7, ge=0, le=1)
    validator_threshold: float = Field(default=0.5, ge=0, le=1)
    validator_threshold_conservative: float = Field(default=0.7, ge=0, le=1)
    sampling_start: float = Field(default=0.5, ge=0, le=1)
    sampling_end: float = Field(default=0.05, ge=0, le=1)
    sampling_half_life: float = Field(default=40.0, gt=0)
    similarity_threshold: float = Field(default=0.9, ge=-1, le=1)
    answer_memory: Capacity = Field(default=512, ge=0)
    teacher_cost_per_query: float = Field(default=0.002, ge=0)

    @model_validator(mode="after")
    def _order(self) -> PolicySection:
        if self.conservative_until < self.cold_start:
            raise ValueError(
                f"conservative_until must be >= cold_start={self.cold_start}, got "
                f"{self.conservative_until}"
            )
        return self


class EncoderSection(ConfigSection):
    """The frozen sentence encoder of the router, validator and similarity.

    Attributes:
      name: an alias (``"all-minilm-l6-v2"``) or encoder folder for
        ``ol_jax.models.load_encoder``, or ``"tiny"`` (random, for tests).
    """

    name: str = "all-minilm-l6-v2"


class _ReplaySection(ConfigSection):
    """A model with a replay buffer: ``replay_batch`` rows drawn per update."""

    replay_capacity: Capacity = Field(default=64, ge=1)
    replay_batch: BatchSize = Field(default=7, ge=1)

    @model_validator(mode="after")
    def _replay(self) -> _ReplaySection:
        if self.replay_batch > self.replay_capacity:
            raise ValueError(
                f"replay_batch must be <= replay_capacity={self.replay_capacity}, "
                f"got {self.replay_batch}"
            )
        return self


class HeadSection(_ReplaySection):
    """A binary head (router or validator) and its update rule.

    Attributes:
      hidden: width of the hidden layer.
      learning_rate: Adam step size.
      clip_norm: global gradient-norm clip.
      replay_capacity: recent examples kept for replay.
      replay_batch: replayed examples per update (besides the new ones).
    """

    hidden: Dim = Field(default=64, ge=1)
    learning_rate: float = Field(default=3e-3, gt=0)
    clip_norm: float = Field(default=1.0, gt=0)


class ValidatorSection(HeadSection):
    """The validator head; see :class:`HeadSection`.

    Attributes:
      mismatched_negatives: also learn that the previous teacher answer, when it
        does not match this one, is a bad answer to this query.
    """

    replay_capacity: Capacity = Field(default=256, ge=1)
    replay_batch: BatchSize = Field(default=13, ge=1)
    mismatched_negatives: bool = True


class GeneratorSection(_ReplaySection):
    """The LLM with LoRA, distilled from the teacher.

    Attributes:
      name: alias (``"smollm2-135m"``), ``.gguf`` file or model folder for
        ``ol_jax.models.load_llama``, or ``"tiny"`` (random byte-level Llama).
      dtype: parameter dtype.
      lora_rank: adapter rank.
      lora_alpha: adapter scale numerator.
      lora_targets: projections with adapters.
      learning_rate: Adam step size of the adapters.
      clip_norm: global gradient-norm clip.
      kl_weight: weight of ``KL(p_base || p_lora)`` on the answer tokens.
      max_new_tokens: longest local answer in tokens (EOS included); longer
        teacher answers are cut to this for training.
      max_length: training sequence length (prompt + answer + EOS, padded).
      prompt_format: the prompt, with ``{query}`` where the query goes.
      replay_capacity: teacher answers kept for replay.
      replay_batch: replayed answers per update (besides the new one).
      replay_alpha: priority exponent (priorities are the replayed rows' CE).
    """

    name: str = "smollm2-135m"
    dtype: Literal["float32", "bfloat16"] = "float32"
    lora_rank: Dim = Field(default=8, ge=1)
    lora_alpha: float = Field(default=16.0, gt=0)
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    learning_rate: float = Field(default=2e-3, gt=0)
    clip_norm: float = Field(default=1.0, gt=0)
    kl_weight: float = Field(default=0.05, ge=0)
    max_new_tokens: Tokens = Field(default=17, ge=1)
    max_length: Tokens = Field(default=40, ge=8)
    prompt_format: str = "Question: {query}\nAnswer:"
    replay_capacity: Capacity = Field(default=256, ge=1)
    replay_batch: BatchSize = Field(default=2, ge=1)
    replay_alpha: float = Field(default=0.6, ge=0, le=1)

    @model_validator(mode="after")
    def _check(self) -> GeneratorSection:
        if "{query}" not in self.prompt_format:
            raise ValueError(
                f"prompt_format must contain '{{query}}', got {self.prompt_format!r}"
            )
        try:
            self.prompt_format.format(query="q")
        except (KeyError, IndexError, ValueError, AttributeError, TypeError) as e:
            raise ValueError(
                f"prompt_format must be a format string with only {{query}}, got "
                f"{self.prompt_format!r} ({e})"
            ) from None
        bad = [t for t in self.lora_targets if t not in LLAMA_PROJECTIONS]
        if bad or not self.lora_targets:
            raise ValueError(
                f"lora_targets must be a non-empty subset of {list(LLAMA_PROJECTIONS)}"
                f", got {list(self.lora_targets)}"
            )
        if self.max_length < self.max_new_tokens + 4:
            raise ValueError(
                f"max_length must be >= max_new_tokens + 4 = {self.max_new_tokens + 4}"
                f", got {self.max_length}"
            )
        return self


class TeacherProxyConfig(BaseNetworkConfig):
    """``configs/teacher_proxy.yaml``: the whole seed-002 learner.

    Load it with ``ol_jax.store.load_config(path, TeacherProxyConfig)``. For
    tests, ``TeacherProxyConfig(encoder={"name": "tiny"}, generator={"name":
    "tiny", "max_new_tokens": 32, "max_length": 96})`` builds tiny random models.

    Attributes:
      network_id: the network folder name under the store root.
      seed: root PRNG seed (model inits, replay sampling, strategic sampling).
      policy: routing policy.
      encoder: the sentence encoder.
      router: the router head.
      validator: the validator head.
      generator: the LLM with LoRA.
    """

    network_id: str = Field(
        default="teacher-proxy", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
    )
    policy: PolicySection = Field(default_factory=PolicySection)
    encoder: EncoderSection = Field(default_factory=EncoderSection)
    router: HeadSection = Field(default_factory=HeadSection)
    validator: ValidatorSection = Field(default_factory=ValidatorSection)
    generator: GeneratorSection = Field(default_factory=GeneratorSection)


# ----------------------------------------------------------------- decisions


@dataclasses.dataclass(frozen=True)
class ProxyDecision:
    """One routing decision and the answer served.

    Attributes:
      query: the query text.
      answer: the answer served (the local one, or the teacher's).
      route: ``"local"`` or ``"forward"``.
      reason: why: ``"cold_start"``, ``"router"`` (router said forward),
        ``"validator"`` (validator rejected the local answer), ``"memory"``
        (the local answer disagrees with the teacher's answer to the most
        similar remembered query), ``"sampling"``
        (strategic sampling forwarded a locally answerable query) or
        ``"validated"`` (served locally).
      teacher_answer: the teacher's answer, or ``None`` when served locally.
      local_answer: the generator's answer, or ``None`` when none was made.
      similarity: cosine similarity of the local and teacher answers' embeddings
        when both exist.
      route_validate_ms: time spent routing and validating (encoder passes and
        heads, not generation or the teacher).
      latency_ms: total time of the decision, generation and teacher included.
      cost_saved: ``policy.teacher_cost_per_query`` when served locally, else 0.
      index: the query's number in the stream (0-based).
      router_prob: the router's ``p_local`` (``None`` during the cold start).
      validator_prob: the validator's ``p_good`` (``None`` without local answer).
      memory_similarity: cosine similarity of the local answer to the teacher's
        answer of the most similar remembered query (``None`` when the check did
        not run).
    """

    query: str
    answer: str
    route: Literal["local", "forward"]
    reason: str
    teacher_answer: str | None
    local_answer: str | None
    similarity: float | None
    route_validate_ms: float
    latency_ms: float
    cost_saved: float
    index: int = -1
    router_prob: float | None = None
    validator_prob: float | None = None
    memory_similarity: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ProxyRoute:
    """A routed query before the teacher's answer (:meth:`TeacherProxyLearner.route`).

    Attributes:
      query: the query text.
      index: the query's number in the stream (0-based).
      reason: as :attr:`ProxyDecision.reason`; ``"validated"`` is served locally,
        ``"local_candidate"`` awaits :meth:`TeacherProxyLearner.validate_local`,
        any other reason is forwarded.
      local_answer: the generator's answer, or ``None`` when none was made.
      router_prob, validator_prob, memory_similarity: as in
        :class:`ProxyDecision`.
      route_validate_ms: time spent routing and validating so far.
      start_ms: when routing began (``time.perf_counter()`` in ms), from which
        the decision's latency is counted.
    """

    query: str
    index: int
    reason: str
    local_answer: str | None
    router_prob: float | None
    validator_prob: float | None
    memory_similarity: float | None
    route_validate_ms: float
    start_ms: float

    @property
    def forward(self) -> bool:
        """Whether the query goes to the teacher (``False`` for a candidate)."""
        return self.reason not in ("validated", _CANDIDATE)


# ----------------------------------------------------------------- the learner


def _unit(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.linalg.norm(x)), 1e-12)


def _now_ms() -> float:
    return time.perf_counter() * 1e3


class TeacherProxyLearner:
    """Routes queries between a local generator and a teacher, and learns.

    ``answer(query, teacher)`` decides and returns a :class:`ProxyDecision`
    (asking the teacher when forwarding); ``learn(decision)`` runs one update of
    each model that has something to learn from it; ``handle`` does both. A
    :class:`~ol_jax.feedback.TeacherError` from the teacher propagates out of
    ``answer`` and nothing is counted or learned.

    ``answer`` and ``learn`` may run on two threads (one each): an answer is
    made with the states published by the last finished ``learn``, while the
    next ``learn`` trains on its own copy and publishes it when done. ``answer``
    is ``route`` (one thread), the teacher call, then ``finish``: forwarded
    queries may wait for their teachers and be finished on threads of their
    own, several at once. ``save`` and ``stats`` need every thread quiet.
    :meth:`warmup` compiles every shape answers and updates use, without
    changing the learner.

    Args:
      config: a :class:`TeacherProxyConfig`, or a path to its YAML.
      root: a store root; with it the learner opens a run of
        ``config.network_id`` (a :class:`~ol_jax.store.RunStore`) and appends
        each decision to ``<run_dir>/decisions.jsonl``.
      run_id: the run to open (new or resumed); default a fresh id.

    Examples:
      >>> cfg = TeacherProxyConfig(  # doctest: +SKIP
      ...     encoder={"name": "tiny"}, generator={"name": "tiny"})
      >>> learner = TeacherProxyLearner(cfg)  # doctest: +SKIP
      >>> decision = learner.handle("How do I reset my password?", teacher)
    """

    def __init__(
        self,
        config: TeacherProxyConfig | str | os.PathLike[str] | None = None,
        *,
        root: str | os.PathLike[str] | None = None,
        run_id: str | None = None,
    ):
        if config is None:
            config = TeacherProxyConfig()
        elif not isinstance(config, TeacherProxyConfig):
            config = load_config(config, TeacherProxyConfig)
        self.config = config
        keys = jax.random.split(jax.random.key(config.seed), 8)
        self._encoder = build_encoder(config.encoder.name, key=keys[0])
        g = config.generator
        lora = LoRAConfig(
            rank=g.lora_rank, alpha=g.lora_alpha, target_modules=g.lora_targets
        )
        model, self._codec = build_generator(g.name, lora, dtype=g.dtype, key=keys[1])
        self._graphdef, self._base, lora_params = split_lora(model)
        del model
        dim = self._encoder.config.hidden_size
        self._tx = {
            "router": online_optimizer(
                config.router.learning_rate,
                optimizer="adam",
                clip_norm=config.router.clip_norm,
            ),
            "validator": online_optimizer(
                config.validator.learning_rate,
                optimizer="adam",
                clip_norm=config.validator.clip_norm,
            ),
            "generator": online_optimizer(
                g.learning_rate, optimizer="adam", clip_norm=g.clip_norm
            ),
        }
        self._states = {
            "router": init_state(
                init_head(dim, config.router.hidden, key=keys[2]),
                self._tx["router"],
                key=keys[3],
            ),
            "validator": init_state(
                init_head(3 * dim, config.validator.hidden, key=keys[4]),
                self._tx["validator"],
                key=keys[5],
            ),
            "generator": init_state(lora_params, self._tx["generator"], key=keys[6]),
        }
        # Not donated: answers may read the published states on another
        # thread while an update runs (the states are small: heads and LoRA).
        self._steps = {
            "router": make_step(head_loss, self._tx["router"], donate=False),
            "validator": make_step(head_loss, self._tx["validator"], donate=False),
            "generator": make_step(
                make_generator_loss(self._graphdef, kl_weight=g.kl_weight),
                self._tx["generator"],
                has_aux=True,
                donate=False,
            ),
        }
        self._replay = {
            "router": prioritized_replay(
                config.router.replay_capacity, config.router.replay_batch, alpha=0.0
            ),
            "validator": prioritized_replay(
                config.validator.replay_capacity,
                config.validator.replay_batch,
                alpha=0.0,
            ),
            "generator": prioritized_replay(
                g.replay_capacity, g.replay_batch, alpha=g.replay_alpha
            ),
        }
        # Jitted once per model: eager flashbax calls cost far more than the step.
        self._sample = {
            name: jax.jit(replay.sample) for name, replay in self._replay.items()
        }
        self._add = {name: jax.jit(replay.add) for name, replay in self._replay.items()}
        self._reprioritize = jax.jit(self._replay["generator"].update_priorities)
        self._buffers = {
            "router": self._replay["router"].init(
                {"x": jnp.zeros((dim,), jnp.float32), "label": jnp.float32(0)}
            ),
            "validator": self._replay["validator"].init(
                {"x": jnp.zeros((3 * dim,), jnp.float32), "label": jnp.float32(0)}
            ),
            "generator": self._replay["generator"].init(
                {
                    "tokens": jnp.zeros((g.max_length,), jnp.int32),
                    "mask": jnp.zeros((g.max_length,), jnp.float32),
                }
            ),
        }
        self._policy_key = keys[7]
        # (query, teacher answer) unit embeddings of the latest teacher answers, a
        # ring of policy.answer_memory rows; "count" is the number ever written.
        cap = config.policy.answer_memory
        self._memory = {
            "query": np.zeros((cap, dim), np.float32),
            "answer": np.zeros((cap, dim), np.float32),
            "count": np.zeros((), np.int32),
        }
        self._embeddings: dict[str, np.ndarray] = {}
        # Greedy local answers under the published adapters (a new dict per
        # publication, so an answer made with older adapters is never cached).
        self._answers: dict[str, str] = {}
        # Guards the embedding cache and the answer memory, which answers and
        # updates share when they run on different threads.
        self._shared = threading.Lock()
        # Guards the query numbers and the decision log: routes are taken on
        # one thread, but forwarded ones are finished on the teachers' threads.
        self._routing = threading.Lock()
        self._next_index = 0
        self._publish()
        self._counters = {
            "queries": 0,
            "forwarded": 0,
            "local": 0,
            "teacher_errors": 0,
            "generated": 0,
            "audited": 0,
            "audit_matches": 0,
            "updates_router": 0,
            "updates_validator": 0,
            "updates_generator": 0,
        }
        # Per-query history: 1 forwarded / 0 local, and audit outcomes.
        self._routes: list[int] = []
        self._audits: list[tuple[int, int]] = []
        self._reasons: dict[str, int] = {}
        self._route_ms: list[float] = []
        # Wall time of each model's updates (not saved: timing is not state).
        self._update_ms: dict[str, list[float]] = {name: [] for name in _MODELS}
        self._last_teacher: tuple[str, np.ndarray] | None = None
        self._store: RunStore | None = None
        if root is not None:
            self._store = RunStore(
                root, config.network_id, config=config, config_cls=TeacherProxyConfig
            )
            self._store.start_run(run_id)

    # ------------------------------------------------------------ properties

    @property
    def run_dir(self) -> str | None:
        """The open run's folder, or ``None`` without a store."""
        return None if self._store is None else self._store.run_dir

    @property
    def encoder(self) -> Any:
        """The frozen sentence encoder (a :class:`~ol_jax.models.LoadedEncoder`)."""
        return self._encoder

    def _publish(self) -> None:
        """Makes the trained states the ones answers are made with."""
        self._published = dict(self._states)
        self._answers = {}

    @property
    def params(self) -> dict[str, Any]:
        """The trainable parameters of the three models (LoRA for the generator)."""
        return {name: self._states[name].params for name in _MODELS}

    # ------------------------------------------------------------ encoding

    def _embed(self, text: str) -> np.ndarray:
        with self._shared:
            cached = self._embeddings.get(text)
        if cached is None:
            cached = np.asarray(self._encoder.embed(text), np.float32)
            with self._shared:
                if len(self._embeddings) >= 4096:
                    self._embeddings.pop(next(iter(self._embeddings)))
                self._embeddings[text] = cached
        return cached

    def similarity(self, a: str, b: str) -> float:
        """Cosine similarity of the sentence embeddings of two texts."""
        ea, eb = self._embed(a), self._embed(b)
        denom = max(float(np.linalg.norm(ea) * np.linalg.norm(eb)), 1e-12)
        return float(np.dot(ea, eb)) / denom

    def _remember(self, e_query: np.ndarray, e_answer: np.ndarray) -> None:
        """Writes a (query, teacher answer) pair into the answer memory's ring."""
        m = self._memory
        cap = m["query"].shape[0]
        if cap == 0:
            return
        with self._shared:
            slot = int(m["count"]) % cap
            m["query"][slot] = _unit(e_query)
            m["answer"][slot] = _unit(e_answer)
            m["count"] = m["count"] + 1

    def memory_agreement(self, query: str, answer: str) -> float | None:
        """Cosine of ``answer`` to the teacher's answer of the nearest remembered query.

        The nearest query is the remembered one whose embedding has the largest
        cosine similarity to ``query``'s (the first on ties). ``None`` when
        nothing is remembered (or ``policy.answer_memory`` is 0).
        """
        e_query, e_answer = _unit(self._embed(query)), _unit(self._embed(answer))
        m = self._memory
        with self._shared:
            n = min(int(m["count"]), m["query"].shape[0])
            if n == 0:
                return None
            nearest = int(np.argmax(m["query"][:n] @ e_query))
            return float(m["answer"][nearest] @ e_answer)

    def _prompt_ids(self, query: str) -> list[int]:
        g = self.config.generator
        ids = self._codec.encode(g.prompt_format.format(query=query))
        # Keep the end of a long prompt: the "Answer:" cue must stay.
        return ids[-(g.max_length - g.max_new_tokens) :] or [self._codec.eos]

    def token_count(self, text: str) -> int:
        """Tokens of ``text`` (as an answer) in the generator's vocabulary."""
        return len(self._codec.encode(" " + text.strip()))

    def token_ends(self, text: str) -> list[int]:
        """The end character offset in ``text`` of each of its generator tokens."""
        return self._codec.token_ends(text)

    def generate_local(
        self,
        query: str,
        *,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        key: jax.Array | None = None,
    ) -> str:
        """The generator's answer to ``query`` (no routing, no learning).

        Greedy by default: a function of the query and the adapters, so answers
        are cached until the next generator update. With ``temperature > 0`` the
        answer is sampled (``top_p``, ``top_k`` truncate the distribution) with
        ``key``, and not cached.
        """
        sampled = temperature is not None and temperature > 0
        # The cache first, then the adapters: a publication in between only
        # costs this answer its cache entry (see _publish).
        answers = self._answers
        if not sampled:
            cached = answers.get(query)
            if cached is not None:
                return cached
        g = self.config.generator
        params = self._published["generator"].params
        model = nnx.merge(self._graphdef, self._base, params)
        (ids,) = generate(
            model,
            [self._prompt_ids(query)],
            max_new_tokens=g.max_new_tokens,
            eos_token_id=self._codec.eos,
            **(
                dict(
                    temperature=float(temperature),
                    top_p=1.0 if top_p is None else float(top_p),
                    top_k=0 if top_k is None else int(top_k),
                    key=jax.random.key(0) if key is None else key,
                )
                if sampled
                else {}
            ),
        )
        self._counters["generated"] += 1
        answer = self._codec.decode(ids).strip()
        if not sampled:
            answers[query] = answer
        return answer

    # ------------------------------------------------------------ policy

    def _sampling_rate(self, n: int) -> float:
        p = self.config.policy
        age = max(n - p.cold_start, 0)
        return p.sampling_end + (p.sampling_start - p.sampling_end) * 2.0 ** (
            -age / p.sampling_half_life
        )

    def _uniform(self, n: int) -> float:
        return float(jax.random.uniform(jax.random.fold_in(self._policy_key, n)))

    def route(
        self,
        query: str,
        *,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
    ) -> ProxyRoute:
        """The first half of :meth:`answer`: local, or forwarded and why.

        :meth:`triage` (the query's number and the router), then, for a query
        the router would answer locally, :meth:`validate_local` (the generator
        and the validator), all with the published weights. A forwarded query
        is then finished with the teacher's answer (:meth:`finish`), or
        :meth:`abandon`-ed when the teacher fails; several may wait for their
        teachers at once.

        Args:
          query: a non-empty query.
          temperature, top_p, top_k: as for :meth:`answer`.

        Returns:
          A :class:`ProxyRoute`.

        Raises:
          ValueError: an empty or non-string query.
        """
        routed = self.triage(query)
        if routed.reason != _CANDIDATE:
            return routed
        return self.validate_local(
            routed, temperature=temperature, top_p=top_p, top_k=top_k
        )

    def triage(self, query: str) -> ProxyRoute:
        """Takes the query's number and asks the router (no generation).

        Returns:
          A :class:`ProxyRoute`: forwarded (``"cold_start"``, ``"router"``), or
          with reason ``"local_candidate"``, to be decided by
          :meth:`validate_local`.

        Raises:
          ValueError: an empty or non-string query.
        """
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"query must be a non-empty string, got {query!r}")
        start = _now_ms()
        p = self.config.policy
        with self._routing:
            n = self._next_index
            self._next_index += 1
        route_ms = 0.0
        router_prob = None
        if n < p.cold_start:
            reason = "cold_start"
        else:
            t0 = _now_ms()
            e_q = self._embed(query)
            router_prob = float(head_prob(self._published["router"].params, e_q))
            route_ms += _now_ms() - t0
            threshold = (
                p.router_threshold_conservative
                if n < p.conservative_until
                else p.router_threshold
            )
            reason = "router" if router_prob < threshold else _CANDIDATE
        return ProxyRoute(
            query=query,
            index=n,
            reason=reason,
            local_answer=None,
            router_prob=router_prob,
            validator_prob=None,
            memory_similarity=None,
            route_validate_ms=route_ms,
            start_ms=start,
        )

    def validate_local(
        self,
        routed: ProxyRoute,
        *,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
    ) -> ProxyRoute:
        """Generates the local answer of a ``"local_candidate"`` and checks it.

        Returns:
          ``routed`` with the local answer and the final reason:
          ``"validated"`` (served locally), or forwarded for ``"validator"``,
          ``"memory"`` or ``"sampling"``.

        Raises:
          ValueError: ``routed`` is not a local candidate.
        """
        if routed.reason != _CANDIDATE:
            raise ValueError(
                f"routed must be a {_CANDIDATE!r} route, got reason {routed.reason!r}"
            )
        p = self.config.policy
        published = self._published  # one version of the heads for this answer
        query, n = routed.query, routed.index
        if temperature is None or temperature <= 0:
            local = self.generate_local(query)
        else:
            local = self.generate_local(
                query,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                # A key of its own per query, apart from the sampling draw's.
                key=jax.random.fold_in(jax.random.fold_in(self._policy_key, n), 1),
            )
        route_ms = routed.route_validate_ms
        validator_prob = memory_similarity = None
        if local == "":
            # An empty answer is never served; the validator learns it is bad.
            reason = "validator"
        else:
            t0 = _now_ms()
            features = pair_features(self._embed(query), self._embed(local))
            validator_prob = float(head_prob(published["validator"].params, features))
            memory_similarity = self.memory_agreement(query, local)
            route_ms += _now_ms() - t0
            threshold = (
                p.validator_threshold_conservative
                if n < p.conservative_until
                else p.validator_threshold
            )
            if validator_prob < threshold:
                reason = "validator"
            elif (
                memory_similarity is not None
                and memory_similarity < p.similarity_threshold
            ):
                reason = "memory"
            elif self._uniform(n) < self._sampling_rate(n):
                reason = "sampling"
            else:
                reason = "validated"
        return dataclasses.replace(
            routed,
            reason=reason,
            local_answer=local,
            validator_prob=validator_prob,
            memory_similarity=memory_similarity,
            route_validate_ms=route_ms,
        )

    def finish(
        self, route: ProxyRoute, teacher_answer: str | None = None
    ) -> ProxyDecision:
        """The second half of :meth:`answer`: the decision, logged.

        Args:
          route: from :meth:`route`.
          teacher_answer: the teacher's answer to a forwarded query; ``None``
            for a local one.

        Returns:
          A :class:`ProxyDecision` (nothing is learned: see :meth:`learn`).

        Raises:
          ValueError: an undecided route, a teacher answer for a local route,
            or none for a forwarded one.
          TeacherError: the teacher's answer is not a non-empty string; the
            route is then abandoned.
        """
        if route.reason == _CANDIDATE:
            raise ValueError(
                "route must be decided: validate_local a 'local_candidate' first"
            )
        if route.forward != (teacher_answer is not None):
            raise ValueError(
                f"teacher_answer must be given exactly when the route is forwarded "
                f"(reason {route.reason!r}), got {teacher_answer!r:.80}"
            )
        if route.forward and (
            not isinstance(teacher_answer, str) or not teacher_answer.strip()
        ):
            self.abandon(route)
            raise TeacherError(
                f"teacher answer must be a non-empty string, got {teacher_answer!r}"
            )
        local = route.local_answer
        similarity = None
        if route.forward and local is not None:
            similarity = self.similarity(local, teacher_answer)
        p = self.config.policy
        decision = ProxyDecision(
            query=route.query,
            answer=teacher_answer if route.forward else local,
            route="forward" if route.forward else "local",
            reason=route.reason,
            teacher_answer=teacher_answer,
            local_answer=local,
            similarity=similarity,
            route_validate_ms=route.route_validate_ms,
            latency_ms=_now_ms() - route.start_ms,
            cost_saved=0.0 if route.forward else p.teacher_cost_per_query,
            index=route.index,
            router_prob=route.router_prob,
            validator_prob=route.validator_prob,
            memory_similarity=route.memory_similarity,
        )
        self._record(decision)
        return decision

    def abandon(self, route: ProxyRoute) -> None:
        """Drops a forwarded route whose teacher failed: counted as a teacher
        error, never as a query. Its number is given to the next query unless
        a later one has been routed meanwhile (then the log skips it)."""
        with self._routing:
            self._counters["teacher_errors"] += 1
            if route.index == self._next_index - 1:
                self._next_index -= 1

    def answer(
        self,
        query: str,
        teacher: Teacher,
        *,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
    ) -> ProxyDecision:
        """Routes ``query`` and returns the decision with the answer to serve.

        :meth:`route`, the teacher's answer when forwarded, then :meth:`finish`.
        Nothing is learned here (see :meth:`learn`).

        Args:
          query: a non-empty query.
          teacher: called when the query is forwarded.
          temperature: a local answer is sampled at this temperature when > 0
            (then validated like a greedy one); ``None`` or 0: greedy.
          top_p: nucleus mass of a sampled local answer.
          top_k: most probable tokens kept when sampling a local answer.

        Returns:
          A :class:`ProxyDecision`.

        Raises:
          ValueError: an empty or non-string query.
          TeacherError: the teacher failed (or answered with an empty string);
            the query is not counted and nothing can be learned from it.
        """
        routed = self.route(query, temperature=temperature, top_p=top_p, top_k=top_k)
        if not routed.forward:
            return self.finish(routed)
        try:
            teacher_answer = teacher(query)
        except Exception:
            self.abandon(routed)
            raise
        return self.finish(routed, teacher_answer)

    def _record(self, d: ProxyDecision) -> None:
        with self._routing:  # finished on several threads at once
            self._record_locked(d)

    def _record_locked(self, d: ProxyDecision) -> None:
        c = self._counters
        c["queries"] += 1
        c["forwarded" if d.route == "forward" else "local"] += 1
        self._routes.append(int(d.route == "forward"))
        self._reasons[d.reason] = self._reasons.get(d.reason, 0) + 1
        if d.router_prob is not None:
            self._route_ms.append(d.route_validate_ms)
        if d.reason == "sampling" and d.similarity is not None:
            c["audited"] += 1
            hit = int(d.similarity >= self.config.policy.similarity_threshold)
            c["audit_matches"] += hit
            self._audits.append((d.index, hit))
        if self._store is not None:
            with open(os.path.join(self.run_dir, "decisions.jsonl"), "a") as f:
                f.write(json.dumps(d.to_dict()) + "\n")

    # ------------------------------------------------------------ learning

    def _generator_example(self, query: str, answer: str):
        g = self.config.generator
        prompt = self._prompt_ids(query)
        target = self._codec.encode(" " + answer.strip())[: g.max_new_tokens - 1]
        target = [*target, self._codec.eos]
        seq = [*prompt, *target][-g.max_length :]
        tokens = np.full((g.max_length,), self._codec.eos, np.int32)
        mask = np.zeros((g.max_length,), np.float32)
        tokens[: len(seq)] = seq
        mask[len(seq) - len(target) : len(seq)] = 1.0
        return tokens, mask

    def _update_head(self, name: str, xs: np.ndarray, labels: np.ndarray, k: int):
        """One update of a head on ``k`` padded new rows plus a replay batch."""
        count = int(len(labels))
        buffer = self._add[name](
            self._buffers[name],
            {"x": jnp.asarray(xs), "label": jnp.asarray(labels, jnp.float32)},
        )
        step_key = jax.random.fold_in(
            self._states[name].key, self._counters[f"updates_{name}"]
        )
        drawn = self._sample[name](buffer, key=jax.random.fold_in(step_key, 1))
        dim = xs.shape[1]
        new_x = np.zeros((k, dim), np.float32)
        new_y = np.zeros((k,), np.float32)
        new_w = np.zeros((k,), np.float32)
        new_x[:count], new_y[:count], new_w[:count] = xs, labels, 1.0
        batch = {
            "x": jnp.concatenate([jnp.asarray(new_x), drawn.experience["x"]]),
            "label": jnp.concatenate(
                [jnp.asarray(new_y), drawn.experience["label"].astype(jnp.float32)]
            ),
            "weight": jnp.concatenate([jnp.asarray(new_w), drawn.weights]),
        }
        self._states[name], metrics = self._steps[name](self._states[name], batch)
        self._buffers[name] = buffer
        self._counters[f"updates_{name}"] += 1
        return metrics

    def _update_generator(self, query: str, answer: str):
        tokens, mask = self._generator_example(query, answer)
        buffer = self._add["generator"](
            self._buffers["generator"],
            {"tokens": jnp.asarray(tokens[None]), "mask": jnp.asarray(mask[None])},
        )
        state = self._states["generator"]
        key = jax.random.fold_in(state.key, self._counters["updates_generator"])
        drawn = self._sample["generator"](buffer, key=jax.random.fold_in(key, 1))
        batch = {
            "tokens": jnp.concatenate(
                [jnp.asarray(tokens[None]), drawn.experience["tokens"]]
            ),
            "mask": jnp.concatenate(
                [jnp.asarray(mask[None]), drawn.experience["mask"]]
            ),
            "weight": jnp.concatenate([jnp.ones((1,), jnp.float32), drawn.weights]),
        }
        self._states["generator"], metrics = self._steps["generator"](
            state, batch, self._base
        )
        # Replayed answers the model still gets wrong are drawn more often.
        self._buffers["generator"] = self._reprioritize(
            buffer, drawn.indices, metrics["aux"]["ce"][1:]
        )
        self._counters["updates_generator"] += 1
        return metrics

    def learn(self, decision: ProxyDecision) -> dict[str, Any]:
        """One update of each model that can learn from ``decision``.

        A decision without a teacher answer (served locally) teaches nothing.
        Otherwise the generator is distilled from the teacher's answer, the
        validator learns from the (query, answer) pairs whose quality is known,
        and the router learns whether a local answer would have been good.

        Returns:
          Per-model metrics: ``loss``, ``ms`` (wall time of the update), the
          router's ``label`` and the generator's ``greedy_match`` (whether it
          already reproduced the answer); empty when nothing was learned.
        """
        if decision.teacher_answer is None:
            return {}
        if self._store is not None:  # durable before it is learned from
            self._store.journal.append(
                {
                    "kind": "teacher_answer",
                    "id": f"query-{decision.index}",
                    "query": decision.query,
                    "answer": decision.teacher_answer,
                    "local_answer": decision.local_answer,
                }
            )
        p = self.config.policy
        query, teacher_answer = decision.query, decision.teacher_answer
        out: dict[str, Any] = {}
        t0 = _now_ms()
        gen = self._update_generator(query, teacher_answer)
        exact = bool(gen["aux"]["greedy_match"][0])
        out["generator"] = {
            "loss": float(gen["loss"]),
            "greedy_match": exact,
            "ms": _now_ms() - t0,
        }

        e_q = self._embed(query)
        e_t = self._embed(teacher_answer)
        self._remember(e_q, e_t)
        if decision.similarity is None:
            good = exact
        else:
            good = decision.similarity >= p.similarity_threshold
        t0 = _now_ms()
        router = self._update_head(
            "router", e_q[None], np.asarray([float(good)], np.float32), 1
        )
        out["router"] = {
            "loss": float(router["loss"]),
            "label": float(good),
            "ms": _now_ms() - t0,
        }

        t0 = _now_ms()
        rows = [np.asarray(pair_features(e_q, e_t))]
        labels = [1.0]
        if decision.local_answer is not None:
            e_l = self._embed(decision.local_answer)
            rows.append(np.asarray(pair_features(e_q, e_l)))
            labels.append(float(good))
        last = self._last_teacher
        if (
            self.config.validator.mismatched_negatives
            and last is not None
            and self.similarity(last[0], teacher_answer) < p.similarity_threshold
        ):
            rows.append(np.asarray(pair_features(e_q, last[1])))
            labels.append(0.0)
        validator = self._update_head(
            "validator", np.stack(rows), np.asarray(labels, np.float32), 3
        )
        out["validator"] = {"loss": float(validator["loss"]), "ms": _now_ms() - t0}
        self._last_teacher = (teacher_answer, e_t)
        for name in _MODELS:
            self._update_ms[name].append(out[name]["ms"])
        self._publish()
        return out

    def warmup(self, *, sampling: bool = True) -> float:
        """Compiles what answering and learning run, leaving the learner as it was.

        Runs greedy (and, with ``sampling``, sampled) generation for every
        prompt bucket, the encoder for the token buckets of short and long
        texts, both heads, and one :meth:`learn` on a made-up decision, then
        restores every state, buffer, cache and counter. Nothing is logged.

        Returns:
          The seconds it took.
        """
        start = time.perf_counter()
        g = self.config.generator
        # Shallow copies: learn() replaces entries of these dicts in place.
        kept = (
            dict(self._states),
            self._published,
            dict(self._buffers),
            self._answers,
            {
                k: v.copy() if isinstance(v, np.ndarray) else v
                for k, v in self._memory.items()
            },
            dict(self._counters),
            self._last_teacher,
            {name: list(ms) for name, ms in self._update_ms.items()},
            dict(self._embeddings),
        )
        self._answers = {}
        model = nnx.merge(
            self._graphdef, self._base, self._published["generator"].params
        )
        # Prompts are cut to max_length - max_new_tokens ids: every bucket up
        # to that length, greedy and sampled.
        longest = g.max_length - g.max_new_tokens
        buckets = sorted({prompt_bucket(n) for n in range(1, longest + 1)})
        for bucket in buckets:
            for temperature in (0.0, 1.0) if sampling else (0.0,):
                generate(
                    model,
                    [[self._codec.eos] * min(bucket, longest)],
                    max_new_tokens=g.max_new_tokens,
                    eos_token_id=self._codec.eos,
                    temperature=temperature,
                    key=jax.random.key(0),
                )
        e = self._embed("warm up")
        for words in (8, 24, 56, 120):
            self._embed(" ".join(["warm"] * words))
        head_prob(self._published["router"].params, e)
        head_prob(self._published["validator"].params, pair_features(e, e))
        self.learn(
            ProxyDecision(
                query="warm up",
                answer="warm up answer",
                route="forward",
                reason="sampling",
                teacher_answer="warm up answer",
                local_answer="warm up local",
                similarity=0.0,
                route_validate_ms=0.0,
                latency_ms=0.0,
                cost_saved=0.0,
            )
        )
        (
            self._states,
            self._published,
            self._buffers,
            self._answers,
            self._memory,
            self._counters,
            self._last_teacher,
            self._update_ms,
            self._embeddings,
        ) = kept
        return time.perf_counter() - start

    def handle(self, query: str, teacher: Teacher) -> ProxyDecision:
        """:meth:`answer` then :meth:`learn`; returns the decision."""
        decision = self.answer(query, teacher)
        self.learn(decision)
        return decision

    # ------------------------------------------------------------ statistics

    def stats(self, *, window: int = 100) -> dict[str, Any]:
        """Counters and rates so far.

        ``local_accuracy`` is estimated from the strategic-sampling audits: the
        queries the learner would have answered locally but forwarded anyway,
        whose local answer was compared with the teacher's. ``update_ms`` is the
        median wall time of each model's update, ``route_validate_ms`` the mean
        time of routing and validating a query after the cold start.

        Args:
          window: length of the recent window of ``forward_rate_window``.

        Returns:
          A JSON-ready dict.
        """
        c = self._counters
        recent = self._routes[-window:]
        return {
            **c,
            "forward_rate": c["forwarded"] / c["queries"] if c["queries"] else None,
            "forward_rate_window": sum(recent) / len(recent) if recent else None,
            "local_accuracy": c["audit_matches"] / c["audited"]
            if c["audited"]
            else None,
            "reasons": dict(self._reasons),
            "route_validate_ms": float(np.mean(self._route_ms))
            if self._route_ms
            else None,
            "updates": {name: c[f"updates_{name}"] for name in _MODELS},
            "update_ms": {
                name: float(np.median(ms)) if ms else None
                for name, ms in self._update_ms.items()
            },
        }

    def forward_history(self) -> list[int]:
        """1 for each forwarded query and 0 for each local one, in order."""
        return list(self._routes)

    def plot(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        window: int = 50,
        local_matches: Sequence[tuple[int, bool]] | None = None,
    ) -> str:
        """Writes a PNG of the forward rate and the local accuracy over queries.

        Args:
          path: the file; default ``<run_dir>/teacher_proxy.png``.
          window: queries per point of the rolling forward rate.
          local_matches: ``(query index, matched)`` pairs of local answers checked
            against the teacher (e.g. by an evaluation harness); default the
            strategic-sampling audits.

        Returns:
          The path written.
        """
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if path is None:
            if self.run_dir is None:
                raise ValueError("path is required when the learner has no run")
            path = os.path.join(self.run_dir, "teacher_proxy.png")
        path = os.fspath(path)
        routes = np.asarray(self._routes, np.float64)
        matches = self._audits if local_matches is None else list(local_matches)
        fig, ax = plt.subplots(figsize=(7, 4))
        if routes.size:
            w = max(1, min(window, routes.size))
            rolling = np.convolve(routes, np.ones(w) / w, mode="valid")
            ax.plot(np.arange(w, routes.size + 1), rolling, label="forward rate")
        if matches:
            idx = np.asarray([i for i, _ in matches])
            acc = np.cumsum([float(m) for _, m in matches]) / np.arange(
                1, len(matches) + 1
            )
            ax.plot(idx + 1, acc, label="local accuracy (cumulative)")
        ax.set_xlabel("query")
        ax.set_ylim(0, 1.05)
        ax.legend()
        ax.set_title("teacher proxy: forward rate and local accuracy")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    # ------------------------------------------------------------ persistence

    def _tree(self) -> dict[str, Any]:
        states = {
            name: s._replace(key=jax.random.key_data(s.key))
            for name, s in self._states.items()
        }
        tree = {
            "states": states,
            "buffers": self._buffers,
            "policy_key": jax.random.key_data(self._policy_key),
        }
        if self.config.policy.answer_memory:
            tree["memory"] = self._memory
        # Numbered leaves: Orbax stores plain dicts of arrays whatever the node
        # types of the optax and replay states are; the live learner is the
        # template for loading.
        return {str(i): x for i, x in enumerate(jax.tree.leaves(tree))}, tree

    def save(self, path: str | os.PathLike[str]) -> str:
        """Writes all three models, optimizer and replay states, counters and RNG.

        ``TeacherProxyLearner.load(path)`` rebuilds a learner whose next
        decisions, answers and updates are identical to this one's.

        Args:
          path: a folder (created; an existing save there is replaced).

        Returns:
          The absolute path.
        """
        path = os.path.abspath(os.fspath(path))
        os.makedirs(path, exist_ok=True)
        leaves, _ = self._tree()
        save_pytree(os.path.join(path, _STATE_DIR), leaves, overwrite=True)
        meta = {
            "config": self.config.model_dump(mode="json"),
            "counters": self._counters,
            # Past queries when a failed teacher left a gap in the numbering.
            "next_index": self._next_index,
            "routes": self._routes,
            "audits": self._audits,
            "reasons": self._reasons,
            "route_ms": self._route_ms,
            "last_teacher": None
            if self._last_teacher is None
            else self._last_teacher[0],
        }
        tmp = os.path.join(path, _META_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(meta, f)
        os.replace(tmp, os.path.join(path, _META_FILE))
        return path

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        root: str | os.PathLike[str] | None = None,
        run_id: str | None = None,
    ) -> TeacherProxyLearner:
        """Rebuilds a learner written by :meth:`save` (base models from config).

        Args:
          path: the folder given to :meth:`save`.
          root: optional store root, as for the constructor.
          run_id: optional run to open.

        Raises:
          ValueError: ``path`` holds no saved learner, or its arrays do not fit
            the configured models.
        """
        path = os.path.abspath(os.fspath(path))
        meta_file = os.path.join(path, _META_FILE)
        if not os.path.isfile(meta_file):
            raise ValueError(f"path must hold a saved learner ({_META_FILE}): {path}")
        with open(meta_file) as f:
            meta = json.load(f)
        config = TeacherProxyConfig.model_validate(meta["config"])
        learner = cls(config, root=root, run_id=run_id)
        like, tree = learner._tree()
        loaded = load_pytree(os.path.join(path, _STATE_DIR))
        leaves = []
        for i in range(len(like)):
            want, got = like[str(i)], loaded.get(str(i))
            if got is None or np.shape(got) != np.shape(want):
                raise ValueError(
                    f"saved learner at {path} does not fit the configured models: "
                    f"leaf {i} has shape {None if got is None else np.shape(got)}, "
                    f"expected {np.shape(want)}"
                )
            leaves.append(jnp.asarray(got, dtype=want.dtype))
        restored = jax.tree.unflatten(jax.tree.structure(tree), leaves)
        learner._states = {
            name: s._replace(key=jax.random.wrap_key_data(s.key))
            for name, s in restored["states"].items()
        }
        learner._publish()
        learner._buffers = restored["buffers"]
        learner._policy_key = jax.random.wrap_key_data(restored["policy_key"])
        if "memory" in restored:
            learner._memory = {k: np.array(v) for k, v in restored["memory"].items()}
        learner._counters = {k: int(v) for k, v in meta["counters"].items()}
        learner._next_index = max(
            int(meta.get("next_index", 0)), learner._counters["queries"]
        )
        learner._routes = [int(x) for x in meta["routes"]]
        learner._audits = [(int(i), int(m)) for i, m in meta["audits"]]
        learner._reasons = {k: int(v) for k, v in meta["reasons"].items()}
        learner._route_ms = [float(x) for x in meta["route_ms"]]
        if meta["last_teacher"] is not None:
            text = meta["last_teacher"]
            learner._last_teacher = (text, learner._embed(text))
        return learner

    def close(self) -> None:
        """Flushes and closes the run store, if any."""
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> TeacherProxyLearner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
