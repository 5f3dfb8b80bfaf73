"""``BufferedLearner``: a model that keeps learning while it serves (seed 004).

Training examples (an input text with an optional target, and a weight) go into a
bounded buffer. Every ``update_frequency`` examples one update is queued; a single
background thread runs the jit-compiled ``step`` of :func:`ol_jax.core.make_step`
on the newest ``batch_size`` buffered examples and then swaps the new parameters
in with one reference assignment. Inference (:meth:`BufferedLearner.generate`,
:meth:`BufferedLearner.evaluate`) reads that reference once per call, so every
call sees one complete parameter tree and never waits for an update.

The step is not given donated buffers: a generation may still be reading the
previous parameters while the next update runs, so those buffers must stay alive
until the last reader lets go of them.

When updates queue up faster than they run, the thread takes the whole backlog
and runs up to ``max_fused`` of them in one compiled ``lax.scan`` (each its own
step on its own batch), with one host round trip and one swap. Sequences are
padded to a multiple of 8 tokens. While inference requests are being served the
thread keeps to ``learner_share`` of the wall time, so requests keep most of
the CPU; with nobody served it runs flat out. A learner of float vectors
(``vector_shapes``) trains a regressor the same way and serves ``predict``.

References:
    Kingma & Ba, `Adam: A Method for Stochastic Optimization
    <https://arxiv.org/abs/1412.6980>`_, 2015.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import math
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Annotated, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from pydantic import Field

from ol_jax.core import (
    get_learning_rate,
    init_state,
    make_step,
    online_optimizer,
    path_str,
    set_learning_rate,
)
from ol_jax.learners._buffered_loss import (
    LOSSES,
    example_loss,
    make_batch_loss,
    make_vector_loss,
)
from ol_jax.models import (
    Llama,
    LlamaConfig,
    convert_dtype,
    generate,
    llama_params_from_hf,
    load_weights,
    prompt_bucket,
    save_weights,
)
from ol_jax.store import (
    BatchSize,
    Capacity,
    Count,
    RunStore,
    Tokens,
    check_values,
)

__all__ = [
    "BufferedLearner",
    "ByteTokenizer",
    "Generation",
    "LearningConfig",
    "LearningStats",
    "byte_llama_config",
]

_STOP = object()
_LENGTH_STEP = 8  # sequences are padded to a multiple of this many tokens


class ByteTokenizer:
    """UTF-8 bytes as tokens 0-255, plus ``BOS`` 256, ``EOS`` 257 and ``PAD`` 258."""

    vocab_size = 259
    bos_token_id = 256
    eos_token_id = 257
    pad_token_id = 258

    def encode(self, text: str) -> list[int]:
        """The UTF-8 bytes of ``text`` (no special tokens)."""
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of the byte ids (special ids dropped, bad UTF-8 replaced)."""
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode(
            "utf-8", errors="replace"
        )


def byte_llama_config(**overrides: Any) -> LlamaConfig:
    """A Llama of about 0.9M parameters over :class:`ByteTokenizer` ids.

    Width 128, 4 layers of 4 heads, SwiGLU width 384, 259 token ids; keyword
    arguments override any field.
    """
    fields: dict[str, Any] = dict(
        vocab_size=ByteTokenizer.vocab_size,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        bos_token_id=ByteTokenizer.bos_token_id,
        eos_token_id=ByteTokenizer.eos_token_id,
    )
    fields.update(overrides)
    return LlamaConfig(**fields)


_LEARNING_INTS = {
    "buffer_size": Annotated[Capacity, Field(ge=1)],
    "update_frequency": Annotated[BatchSize, Field(ge=1)],
    "batch_size": Annotated[BatchSize, Field(ge=1)] | None,
    "checkpoint_frequency": Annotated[Count, Field(ge=1)] | None,
    "max_length": Annotated[Tokens, Field(ge=4)],
    # Every fused update's batch is stacked in memory for the one compiled call.
    "max_fused": Annotated[BatchSize, Field(ge=1)],
}


@dataclasses.dataclass(frozen=True)
class LearningConfig:
    """Settings of a :class:`BufferedLearner` (the document's ``LearningConfig``).

    Attributes:
      buffer_size: most examples kept; the oldest are dropped first.
      update_frequency: an update is queued after every this many examples.
      batch_size: examples per update (the newest ones); default
        ``update_frequency``.
      learning_rate: initial step size (change it with ``set_learning_rate``).
      optimizer: ``"adam"`` (L2 weight decay), ``"adamw"`` (decoupled) or ``"sgd"``.
      clip_norm: global gradient-norm clip, or ``None``.
      weight_decay: decay coefficient.
      loss: ``"cross_entropy"``, ``"mse"`` or ``"contrastive"``, or a callable
        ``loss_fn(params, batch, *, frozen, extras, key)`` over the padded batch
        described in ``ol_jax.learners._buffered_loss``.
      enabled: learning starts enabled.
      checkpoint_frequency: save to the store every this many updates (``None``:
        never).
      max_length: longest token sequence; longer examples keep their end.
      contrastive_temperature: InfoNCE temperature.
      max_fused: most queued updates run by one compiled call when a backlog
        has built up (a ``lax.scan`` over the updates, each still its own step
        on its own batch); 1 runs every update alone.
      learner_share: most of the wall time the update thread computes while
        inference is being served: after updates that took ``t`` seconds with a
        request in flight, it pauses ``t (1 - s) / s`` seconds, and it waits for
        an in-flight request to finish (at most that long) before starting. 1
        never pauses; with no requests it always runs at full speed.
    """

    buffer_size: int = 1000
    update_frequency: int = 10
    batch_size: int | None = None
    learning_rate: float = 1e-4
    optimizer: str = "adam"
    clip_norm: float | None = 1.0
    weight_decay: float = 0.01
    loss: str | Callable[..., Any] = "cross_entropy"
    enabled: bool = True
    checkpoint_frequency: int | None = 100
    max_length: int = 64
    contrastive_temperature: float = 0.1
    max_fused: int = 8
    learner_share: float = 0.5

    def __post_init__(self):
        # The integer settings follow the config sections' bounded types.
        check_values(
            {name: getattr(self, name) for name in _LEARNING_INTS},
            _LEARNING_INTS,
            source="LearningConfig",
        )
        if not callable(self.loss) and self.loss not in LOSSES:
            raise ValueError(
                f"loss must be one of {LOSSES} or a callable, got {self.loss!r}"
            )
        _check_learning_rate(self.learning_rate)
        share = self.learner_share
        if isinstance(share, bool) or not (
            isinstance(share, (int, float)) and 0 < share <= 1
        ):
            raise ValueError(f"learner_share must be in (0, 1], got {share!r}")
        if not self.contrastive_temperature > 0:
            raise ValueError(
                "contrastive_temperature must be > 0, got "
                f"{self.contrastive_temperature}"
            )

    @property
    def effective_batch_size(self) -> int:
        """Examples per update: ``batch_size``, or ``update_frequency``."""
        return self.batch_size or self.update_frequency


@dataclasses.dataclass(frozen=True)
class LearningStats:
    """A snapshot of a learner's counters (the document's ``get_learning_stats``).

    Attributes:
      total_examples: examples added since the start.
      total_updates: updates finished (automatic and forced).
      forced_updates: of those, the ones asked for with ``force_update``.
      buffer_size: examples in the buffer now.
      average_loss: mean batch loss of the last 100 updates (``None`` before any).
      learning_rate: the current learning rate.
      enabled: whether automatic updates are on.
      version: parameter version served now (one more after every update and
        every :meth:`~BufferedLearner.load_weights`).
      pending_updates: updates queued or running.
      checkpoints: checkpoints written.
      compiled_variants: update programs compiled so far, one per batch shape
        met (updates fused in one call x padded length); stops growing once
        every shape the traffic produces has been seen.
    """

    total_examples: int
    total_updates: int
    forced_updates: int
    buffer_size: int
    average_loss: float | None
    learning_rate: float
    enabled: bool
    version: int
    pending_updates: int
    checkpoints: int
    compiled_variants: int

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)


class Generation(NamedTuple):
    """A generated continuation and the parameter version that produced it."""

    text: str
    token_ids: list[int]
    version: int


class _Example(NamedTuple):
    tokens: np.ndarray  # [BOS] input [target] [EOS], int32
    mask: np.ndarray  # float32, 1 on prediction targets
    weight: float
    input_ids: np.ndarray  # for the contrastive loss
    target_ids: np.ndarray


class _VectorExample(NamedTuple):
    inputs: np.ndarray  # float32, the learner's input shape
    targets: np.ndarray  # float32, its target shape
    weight: float


class _Job(NamedTuple):
    examples: tuple[_Example | _VectorExample, ...]
    forced: bool
    done: threading.Event


class _Tokens:
    """The few things the learner needs from a tokenizer, HF or our own.

    Special tokens are added by the learner, not by ``encode`` (a Hugging Face
    tokenizer is asked for ``add_special_tokens=False``); without a ``BOS`` id no
    ``BOS`` is prepended, and without a ``PAD`` id ``EOS`` pads.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.eos = getattr(tokenizer, "eos_token_id", None)
        if self.eos is None:
            raise ValueError("tokenizer must define eos_token_id, got None")
        self.bos = getattr(tokenizer, "bos_token_id", None)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad = self.eos if pad is None else pad
        self.prefix = [] if self.bos is None else [int(self.bos)]

    def encode(self, text: str) -> list[int]:
        try:
            ids = self.tokenizer.encode(text, add_special_tokens=False)
        except TypeError:
            ids = self.tokenizer.encode(text)
        return [int(i) for i in ids]

    def decode(self, ids: Sequence[int]) -> str:
        try:
            return self.tokenizer.decode(list(ids), skip_special_tokens=True)
        except TypeError:
            return self.tokenizer.decode(list(ids))


def _check_learning_rate(lr: Any) -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise ValueError(f"learning_rate must be a number, got {lr!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"learning_rate must be finite and > 0, got {lr}")
    return float(lr)


def _check_weight(weight: Any) -> None:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ValueError(f"weight must be a number, got {weight!r}")
    if not (math.isfinite(weight) and weight >= 0):
        raise ValueError(f"weight must be finite and >= 0, got {weight}")


def _greedy_loop(apply, params, frozen, tokens, length, eos, *, max_new_tokens):
    """Greedy decoding by re-running a causal model on a right-padded buffer.

    Causality means the logits at position ``i`` ignore the padding after it, so
    one fixed-length buffer serves every prompt length without recompiling.
    """

    def body(i, carry):
        tokens, done = carry
        pos = length + i - 1
        logits = apply(params, frozen, tokens)
        nxt = jnp.argmax(logits[pos], axis=-1).astype(jnp.int32)
        nxt = jnp.where(done, eos, nxt)
        tokens = tokens.at[pos + 1].set(nxt)
        return tokens, done | (nxt == eos)

    tokens, _ = jax.lax.fori_loop(
        0, max_new_tokens, body, (tokens, jnp.zeros((), jnp.bool_))
    )
    return jax.lax.dynamic_slice_in_dim(tokens, length, max_new_tokens)


def _run_updates(step, state, batches):
    """Runs ``step`` once per batch along the leading axis of ``batches``.

    One compiled call for a backlog of ``K`` updates: each is its own gradient
    step on its own batch, in order, as ``K`` calls of ``step`` would be, without
    ``K`` dispatches and host round trips. Only the losses are returned, so the
    other metrics of ``step`` are never computed. The state is not donated:
    readers may still hold the previous parameters.
    """

    def body(state, batch):
        state, metrics = step(state, batch)
        return state, metrics["loss"]

    return jax.lax.scan(body, state, batches)


class BufferedLearner:
    """A causal language model that learns from buffered examples while serving.

    Examples are added from any thread; every ``update_frequency`` of them queue
    one update of ``online_optimizer(...)`` on the newest ``batch_size`` examples,
    run by one background thread. The served parameters change only by an atomic
    swap after a finished update, so ``generate`` always uses one whole tree.

    Args:
      apply_fn: ``apply_fn(params, tokens[T]) -> logits[T, V]`` of a causal model
        (``apply_fn(params, tokens, frozen=frozen)`` when ``frozen`` is given).
      params: the trainable parameters (any pytree).
      tokenizer: with ``encode(text) -> ids``, ``decode(ids) -> text`` and
        ``eos_token_id`` (``bos_token_id`` and ``pad_token_id`` optional), such as
        a Hugging Face tokenizer; default :class:`ByteTokenizer`.
      config: a :class:`LearningConfig`.
      key: PRNG key of the update step.
      frozen: arrays passed to ``apply_fn`` but never trained (a base model).
      store: a :class:`~ol_jax.store.RunStore` for checkpoints every
        ``checkpoint_frequency`` updates (a run is started if none is open).
      generate_fn: ``generate_fn(params, frozen, prompt_ids, max_new_tokens) ->
        ids``; default: greedy decoding with ``apply_fn``.
      background: run updates on the background thread (``False``: in the
        caller of ``add_example`` / ``force_update``).
      import_weights: ``import_weights(tree) -> params tree`` for
        :meth:`load_weights`, turning a foreign layout (Hugging Face tensor
        names) into this model's; ``None`` accepts this model's layout only.
      vector_shapes: ``(input_shape, target_shape)`` for a model of float
        vectors instead of text (a regressor, ``apply_fn(params, x) -> y``):
        examples are arrays, the loss is ``"mse"`` (or a callable over the
        ``inputs`` / ``targets`` batch), and :meth:`predict` serves it.

    Examples:
      >>> learner = BufferedLearner.from_llama(  # doctest: +SKIP
      ...     Llama(byte_llama_config(), key=jax.random.key(0)),
      ...     config=LearningConfig(learning_rate=3e-3), key=jax.random.key(1))
      >>> learner.add_example("2 + 2 =", " 4")  # doctest: +SKIP
      >>> learner.generate("2 + 2 =").text  # doctest: +SKIP
    """

    def __init__(
        self,
        apply_fn: Callable[..., jax.Array],
        params: Any,
        *,
        tokenizer: Any = None,
        config: LearningConfig | None = None,
        key: jax.Array,
        frozen: Any = None,
        store: RunStore | None = None,
        generate_fn: Callable[..., Sequence[int]] | None = None,
        background: bool = True,
        import_weights: Callable[[Any], Any] | None = None,
        vector_shapes: tuple[Sequence[int], Sequence[int]] | None = None,
    ):
        self._config = config = config or LearningConfig()
        self._vector = None
        if vector_shapes is not None:
            self._vector = tuple(tuple(int(d) for d in s) for s in vector_shapes)
            if len(self._vector) != 2:
                raise ValueError(
                    "vector_shapes must be (input_shape, target_shape), got "
                    f"{vector_shapes!r}"
                )
            if not callable(config.loss) and config.loss != "mse":
                raise ValueError(
                    f"a learner of vectors needs loss='mse', got {config.loss!r}"
                )
        self._import_weights = import_weights
        self._tokenizer = tokenizer or ByteTokenizer()
        self._tok = _Tokens(self._tokenizer)
        if frozen is None:
            self._apply = lambda p, f, t: apply_fn(p, t)
        else:
            self._apply = lambda p, f, t: apply_fn(p, t, frozen=f)
        self._frozen = frozen
        self._store = store
        self._generate_fn = generate_fn
        self._background = background
        self._tx = online_optimizer(
            config.learning_rate,
            optimizer=config.optimizer,
            clip_norm=config.clip_norm,
            weight_decay=config.weight_decay,
        )
        loss = config.loss
        if self._vector is not None and not callable(loss):
            loss = make_vector_loss(self._apply)
        elif not callable(loss):
            loss = make_batch_loss(
                self._apply, loss, temperature=config.contrastive_temperature
            )
        self._step = jax.jit(
            functools.partial(_run_updates, make_step(loss, self._tx, jit=False))
        )
        self._state = init_state(params, self._tx, key=key)
        self._serving: tuple[int, Any] = (0, params)
        self._lr = float(config.learning_rate)
        self._applied_lr = self._lr
        self._greedy = jax.jit(
            functools.partial(_greedy_loop, self._apply),
            static_argnames=("max_new_tokens",),
        )
        kind = config.loss if isinstance(config.loss, str) else "cross_entropy"
        kind = "cross_entropy" if kind == "contrastive" else kind
        self._eval = jax.jit(functools.partial(example_loss, self._apply, kind))
        self._predict = jax.jit(self._apply)

        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._buffer: collections.deque[_Example] = collections.deque(
            maxlen=config.buffer_size
        )
        self._enabled = config.enabled
        self._total_examples = 0
        self._since_update = 0
        self._outstanding = 0
        self._total_updates = 0
        self._forced_updates = 0
        self._checkpoints = 0
        # Loss arrays of the last (fused) calls: 100 of them cover 100 updates.
        self._losses: collections.deque[jax.Array] = collections.deque(maxlen=100)
        self._errors: list[BaseException] = []
        self._step_lock = threading.Lock()
        # Inference requests started and in flight, for the learner's CPU share.
        self._serve = threading.Condition(threading.Lock())
        self._requests = 0
        self._in_flight = 0
        self._share = float(config.learner_share) if background else 1.0
        self._pause = 0.0
        self._wake = threading.Event()
        self._compiled: set[Any] = set()
        self._closed = False
        self._queue: queue.Queue[Any] = queue.Queue()
        self._worker = None
        if background:
            self._worker = threading.Thread(
                target=self._loop, name="ol_jax-buffered-learner", daemon=True
            )
            self._worker.start()

    # ------------------------------------------------------------- construction

    @classmethod
    def from_llama(
        cls,
        model: Llama,
        *,
        tokenizer: Any = None,
        config: LearningConfig | None = None,
        key: jax.Array,
        store: RunStore | None = None,
        background: bool = True,
    ) -> BufferedLearner:
        """A learner training every weight of a ``Llama``, decoding with its cache.

        Args:
          model: the ``Llama`` (its LoRA adapters, if any, are trained with the rest).
          tokenizer: default :class:`ByteTokenizer` (the model's vocabulary must
            cover it).
          config, key, store, background: as for the constructor.
        """
        graphdef, params = nnx.split(model)
        llama_config = model.config

        def apply_fn(p, tokens):
            return nnx.merge(graphdef, p)(tokens)

        tok = _Tokens(tokenizer or ByteTokenizer())

        def generate_fn(p, frozen, prompt, max_new_tokens):
            del frozen
            return generate(
                nnx.merge(graphdef, p),
                [list(prompt)],
                max_new_tokens=max_new_tokens,
                eos_token_id=tok.eos,
                pad_token_id=tok.pad,
            )[0]

        def import_weights(tree):
            # Hugging Face names (a safetensors folder's file, a GGUF file).
            if isinstance(tree, dict) and "model.embed_tokens.weight" in tree:
                model = llama_params_from_hf(llama_config, tree)
                return nnx.to_pure_dict(nnx.split(model)[1])
            return tree

        return cls(
            apply_fn,
            params,
            tokenizer=tokenizer,
            config=config,
            key=key,
            store=store,
            generate_fn=generate_fn,
            background=background,
            import_weights=import_weights,
        )

    # ------------------------------------------------------------- properties

    @property
    def config(self) -> LearningConfig:
        """The learning settings."""
        return self._config

    @property
    def tokenizer(self) -> Any:
        """The tokenizer given (or the default :class:`ByteTokenizer`)."""
        return self._tokenizer

    @property
    def params(self) -> Any:
        """The parameters served now (one complete tree)."""
        return self._serving[1]

    @property
    def version(self) -> int:
        """The version of the parameters served now."""
        return self._serving[0]

    @property
    def enabled(self) -> bool:
        """Whether automatic updates are on."""
        return self._enabled

    @property
    def learning_rate(self) -> float:
        """The learning rate of the next update."""
        return self._lr

    @property
    def pending_updates(self) -> int:
        """Updates queued or running (for back-pressure on a fast feeder)."""
        return self._outstanding

    # ------------------------------------------------------------- examples

    def _encode(self, input: str, target: str | None) -> _Example:
        tok = self._tok
        max_len = self._config.max_length
        ids_in = np.asarray(tok.encode(input), np.int32)
        ids_out = np.asarray(tok.encode(target) if target else [], np.int32)
        bos = np.asarray(tok.prefix, np.int32)
        eos = np.asarray([tok.eos], np.int32)
        tokens = np.concatenate([bos, ids_in, ids_out, eos])
        mask = np.ones(tokens.shape, np.float32)
        mask[0] = 0.0  # the first token has no context to be predicted from
        if target is not None:
            mask[: len(bos) + len(ids_in)] = 0.0
        # Too long: keep the end, where a supervised target is.
        tokens, mask = tokens[-max_len:], mask[-max_len:]
        if target is not None and not mask.any():
            raise ValueError(
                f"target is empty after truncation to max_length={max_len} tokens"
            )
        input_ids = np.concatenate([bos, ids_in, eos])[-max_len:]
        target_ids = np.concatenate([bos, ids_out, eos])[-max_len:]
        return _Example(tokens, mask, 0.0, input_ids, target_ids)

    def add_example(
        self, input: Any, target: Any = None, *, weight: float = 1.0
    ) -> int:
        """Adds one example; queues an update after every ``update_frequency``.

        Self-supervised (``target=None``): the model learns to predict every token
        of ``input``. Supervised: it learns ``target`` as the continuation of
        ``input``. While learning is disabled, examples are still buffered and
        counted but do not count towards an automatic update. A learner of
        vectors takes float arrays of its ``vector_shapes`` (self-supervised:
        the input is its own target).

        Args:
          input: the input text (non-empty), or an array for a learner of vectors.
          target: the target text (or array), or ``None`` for self-supervised.
          weight: importance ``>= 0`` (the loss of this example is scaled by it).

        Returns:
          The number of examples added so far, this one included.

        With a ``store``, the example is first appended to the run's feedback
        journal (``store.durability: sync``: this returns once it is on disk;
        listed by ``store.feedback_records()``).

        Raises:
          ValueError: empty input, a bad weight, a missing target with the
            contrastive loss, or a closed learner.
          JournalWriteError: the example could not be journaled; it is not added.
        """
        if self._vector is not None:
            example = self._encode_vectors(input, target, weight)
            self._journal(example.inputs, example.targets, weight)
            return self._add(example)
        if not isinstance(input, str) or not input:
            raise ValueError(f"input must be a non-empty string, got {input!r}")
        if target is not None and not isinstance(target, str):
            raise ValueError(f"target must be a string or None, got {target!r}")
        _check_weight(weight)
        if self._config.loss == "contrastive" and not target:
            raise ValueError("the contrastive loss needs a non-empty target")
        example = self._encode(input, target)._replace(weight=float(weight))
        self._journal(input, target, weight)
        return self._add(example)

    def _journal(self, input: Any, target: Any, weight: float) -> None:
        """Records a validated example durably before it is acknowledged."""
        if self._store is None:
            return
        with self._lock:
            self._check_open()
            if self._store.run_id is None:  # the checkpoints' run, opened once
                self._store.start_run()
        record = {"kind": "example", "id": uuid.uuid4().hex, "input": input}
        self._store.journal.append(record | {"target": target, "weight": float(weight)})

    def example_length(self, input: str, target: str | None = None) -> int:
        """Tokens of the text example ``(input, target)`` before truncation.

        ``BOS`` (when the tokenizer has one) + input + target + ``EOS``; past
        ``config.max_length`` :meth:`add_example` keeps the last ``max_length``.
        """
        self._check_text()
        tok = self._tok
        return (
            len(tok.prefix)
            + len(tok.encode(input))
            + (len(tok.encode(target)) if target else 0)
            + 1
        )

    def _encode_vectors(self, input: Any, target: Any, weight: Any) -> _VectorExample:
        _check_weight(weight)
        in_shape, out_shape = self._vector
        if target is None:  # self-supervised: reproduce the input
            if in_shape != out_shape:
                raise ValueError(
                    "target is needed when the input shape "
                    f"{in_shape} differs from the target shape {out_shape}"
                )
            target = input
        arrays = []
        for name, value, shape in (
            ("input", input, in_shape),
            ("target", target, out_shape),
        ):
            if isinstance(value, str):
                raise ValueError(f"{name} must be an array of floats, got {value!r}")
            array = np.asarray(value, np.float32)
            if array.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {array.shape}")
            if not np.all(np.isfinite(array)):
                raise ValueError(f"{name} must be finite, got {array}")
            arrays.append(array)
        return _VectorExample(*arrays, float(weight))

    def _add(self, example: _Example | _VectorExample) -> int:
        jobs = []
        with self._lock:
            self._check_open()
            self._buffer.append(example)
            self._total_examples += 1
            count = self._total_examples
            if self._enabled:
                self._since_update += 1
                if self._since_update >= self._config.update_frequency:
                    self._since_update -= self._config.update_frequency
                    jobs.append(self._schedule(forced=False))
        for job in jobs:
            self._submit(job)
        return count

    def _schedule(self, *, forced: bool) -> _Job:
        """Snapshots the newest batch (caller holds the lock)."""
        n = self._config.effective_batch_size
        newest = tuple(list(self._buffer)[-n:])
        self._outstanding += 1
        return _Job(newest, forced, threading.Event())

    def _submit(self, job: _Job) -> None:
        if self._background:
            self._queue.put(job)
        else:
            self._run([job])

    # ------------------------------------------------------------- control

    def enable(self) -> None:
        """Turns automatic updates on."""
        self._enabled = True

    def disable(self) -> None:
        """Turns automatic updates off (examples are still buffered)."""
        self._enabled = False

    def set_learning_rate(self, learning_rate: float) -> None:
        """Sets the learning rate of the next updates (no recompilation).

        Raises:
          ValueError: not a finite number ``> 0``.
        """
        self._lr = _check_learning_rate(learning_rate)

    def force_update(self, *, wait: bool = True, timeout: float | None = 60.0) -> bool:
        """Queues an update on the newest buffered examples now.

        Args:
          wait: block until the update has been applied.
          timeout: seconds to wait at most.

        Returns:
          ``False`` when the buffer is empty (nothing to learn from), else ``True``.

        Raises:
          RuntimeError: the update failed.
          TimeoutError: it did not finish within ``timeout``.
        """
        with self._lock:
            self._check_open()
            if not self._buffer:
                return False
            job = self._schedule(forced=True)
        self._submit(job)
        if wait and not job.done.wait(timeout):
            raise TimeoutError(f"forced update did not finish within {timeout} s")
        self._raise_errors()
        return True

    def wait(self, timeout: float | None = 60.0) -> None:
        """Blocks until every queued update has been applied.

        Raises:
          RuntimeError: an update failed.
          TimeoutError: updates are still running after ``timeout`` seconds.
        """
        with self._idle:
            if not self._idle.wait_for(lambda: self._outstanding == 0, timeout):
                raise TimeoutError(
                    f"{self._outstanding} updates still pending after {timeout} s"
                )
        self._raise_errors()

    def stats(self) -> LearningStats:
        """The counters now (reads the recent losses from the device)."""
        with self._lock:
            losses = list(self._losses)
            snapshot = dict(
                total_examples=self._total_examples,
                total_updates=self._total_updates,
                forced_updates=self._forced_updates,
                buffer_size=len(self._buffer),
                learning_rate=self._lr,
                enabled=self._enabled,
                version=self._serving[0],
                pending_updates=self._outstanding,
                checkpoints=self._checkpoints,
                compiled_variants=len(self._compiled),
            )
        recent = np.concatenate(jax.device_get(losses))[-100:] if losses else None
        average = None if recent is None else float(np.mean(recent))
        return LearningStats(average_loss=average, **snapshot)

    # ------------------------------------------------------------- inference

    def generate(self, prompt: str, *, max_new_tokens: int = 32) -> Generation:
        """Greedy continuation of ``prompt`` with the parameters served now.

        Args:
          prompt: the prompt text (``BOS`` is prepended).
          max_new_tokens: tokens to generate at most, ``>= 1``.

        Returns:
          A :class:`Generation` (text without ``EOS``, the ids, the version used).
        """
        self._check_text()
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {prompt!r}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
            raise ValueError(f"max_new_tokens must be an int, got {max_new_tokens!r}")
        if not 1 <= max_new_tokens <= 1024:
            raise ValueError(f"max_new_tokens must be in 1..1024, got {max_new_tokens}")
        tok = self._tok
        prompt_ids = [*tok.prefix, *tok.encode(prompt)]
        if not prompt_ids:
            raise ValueError("prompt must be non-empty when the tokenizer has no BOS")
        with self._request() as (version, params):
            ids = self._decode(params, prompt_ids, max_new_tokens)
        if tok.eos in ids:
            ids = ids[: ids.index(tok.eos) + 1]
        text = tok.decode([i for i in ids if i != tok.eos])
        return Generation(text, ids, version)

    def _decode(self, params, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        tok = self._tok
        if self._generate_fn is not None:
            out = self._generate_fn(params, self._frozen, prompt_ids, max_new_tokens)
            return [int(i) for i in out]
        bucket = prompt_bucket(len(prompt_ids) + max_new_tokens)
        buf = np.full((bucket,), tok.pad, np.int32)
        buf[: len(prompt_ids)] = prompt_ids
        out = self._greedy(
            params,
            self._frozen,
            jnp.asarray(buf),
            jnp.int32(len(prompt_ids)),
            jnp.int32(tok.eos),
            max_new_tokens=max_new_tokens,
        )
        return [int(i) for i in np.asarray(out)]

    def evaluate(self, input: str, target: str | None = None) -> float:
        """The loss of one example under the parameters served now.

        Cross-entropy (or MSE, with that loss) of the target tokens, or of every
        token of ``input`` when ``target`` is ``None``.
        """
        self._check_text()
        example = self._encode(input, target)
        bucket = self._bucket(len(example.tokens))
        tokens, mask = self._pad_one(example.tokens, example.mask, bucket)
        with self._request() as (_, params):
            loss = self._eval(params, self._frozen, tokens, mask)
            return float(loss)

    def predict(self, input: Any) -> np.ndarray:
        """The output of a learner of vectors for one input, served now.

        Raises:
          ValueError: a learner of text, or an input of the wrong shape.
        """
        if self._vector is None:
            raise ValueError("predict is for a learner of vectors; use generate")
        x = self._encode_vectors(input, np.zeros(self._vector[1]), 1.0).inputs
        with self._request() as (_, params):
            return np.asarray(self._predict(params, self._frozen, x))

    def _check_text(self) -> None:
        if self._vector is not None:
            raise ValueError("this learner takes vectors; use predict")

    # ------------------------------------------------------------- weights

    def save_weights(
        self,
        path: str,
        *,
        format: str | None = None,
        dtype: Any = None,
        allow_lossy: bool = False,
        overwrite: bool = False,
        root: str | None = None,
    ) -> str:
        """Writes the served parameters with :func:`ol_jax.models.save_weights`
        (``overwrite`` and ``root`` as there)."""
        params = self._serving[1]
        tree = nnx.to_pure_dict(params) if isinstance(params, nnx.State) else params
        return save_weights(
            tree,
            path,
            format=format,
            dtype=dtype,
            allow_lossy=allow_lossy,
            overwrite=overwrite,
            root=root,
        )

    def load_weights(
        self,
        path: str,
        *,
        format: str | None = None,
        allow_lossy: bool = False,
        root: str | None = None,
    ) -> int:
        """Replaces the parameters with a weight file and resets the optimizer.

        The file must hold this model's tensors (same names and shapes, as
        written by :meth:`save_weights`); for a learner made with
        :meth:`from_llama`, a Hugging Face safetensors or GGUF file of the same
        architecture works too. Floating tensors are converted to the current
        dtypes (``allow_lossy`` permits rounding). Queued updates finish first.
        With ``root``, ``path`` is read inside that folder only, as by
        :func:`ol_jax.models.load_weights`.

        Returns:
          The number of tensors loaded.

        Raises:
          ValueError: missing file, unknown format, or tensors that do not fit.
        """
        self.wait()
        current = self._serving[1]
        like = nnx.to_pure_dict(current) if isinstance(current, nnx.State) else current
        tree = load_weights(path, format=format, root=root)
        if self._import_weights is not None:
            tree = self._import_weights(tree)
        # Matched by dotted path, so a list restored for a saved tuple still fits.
        like_flat, treedef = jax.tree_util.tree_flatten_with_path(like)
        found = {
            path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
        }
        names = [path_str(p) for p, _ in like_flat]
        missing = [n for n in names if n not in found]
        unexpected = sorted(set(found) - set(names))
        if missing or unexpected:
            raise ValueError(
                f"weights in {path} do not fit this model: missing tensors "
                f"{missing[:5]}, unexpected tensors {unexpected[:5]}"
            )
        converted = []
        for name, (_, old) in zip(names, like_flat, strict=True):
            new = np.asarray(found[name])
            if tuple(np.shape(old)) != new.shape:
                raise ValueError(
                    f"weights in {path} do not fit this model: tensor {name!r} has "
                    f"shape {new.shape}, expected {tuple(np.shape(old))}"
                )
            if jnp.issubdtype(old.dtype, jnp.floating):
                tensor = {name: new}
                new = convert_dtype(tensor, old.dtype, allow_lossy=allow_lossy)[name]
            converted.append(jnp.asarray(new))
        pure = jax.tree.unflatten(treedef, converted)
        if isinstance(current, nnx.State):
            params = jax.tree.map(lambda x: x, current)
            nnx.replace_by_pure_dict(params, pure)
        else:
            params = pure
        with self._step_lock:
            self._state = init_state(params, self._tx, key=self._state.key)
            self._applied_lr = float(self._config.learning_rate)
            self._serving = (self._serving[0] + 1, params)
        return len(converted)

    # ------------------------------------------------------------- updates

    def _bucket(self, length: int) -> int:
        # Multiples of 8 rather than powers of two: a 45-token example pads to
        # 48, not 64, and the compute of an update grows with the padded length.
        return min(-(-length // _LENGTH_STEP) * _LENGTH_STEP, self._config.max_length)

    def _pad_one(self, tokens, mask, length):
        out = np.full((length,), self._tok.pad, np.int32)
        out_mask = np.zeros((length,), np.float32)
        out[: len(tokens)] = tokens
        out_mask[: len(mask)] = mask
        return out, out_mask

    def _batches(self, groups: Sequence[Sequence[_Example]]) -> dict[str, np.ndarray]:
        """``K`` padded batches stacked on a leading axis, one per update."""
        k, n = len(groups), self._config.effective_batch_size
        if self._vector is not None:
            batch = {
                name: np.zeros((k, n, *shape), np.float32)
                for name, shape in zip(("inputs", "targets"), self._vector, strict=True)
            }
            batch["weight"] = np.zeros((k, n), np.float32)
            batch["valid"] = np.zeros((k, n), np.float32)
            for g, group in enumerate(groups):
                for row, e in enumerate(group):
                    batch["inputs"][g, row] = e.inputs
                    batch["targets"][g, row] = e.targets
                    batch["weight"][g, row] = e.weight
                    batch["valid"][g, row] = 1.0
            return batch
        contrastive = self._config.loss == "contrastive"
        examples = [e for group in groups for e in group]
        longest = max(len(e.tokens) for e in examples)
        if contrastive:
            longest = max(
                longest, *(max(len(e.input_ids), len(e.target_ids)) for e in examples)
            )
        length = self._bucket(longest)
        batch = {
            "tokens": np.full((k, n, length), self._tok.pad, np.int32),
            "mask": np.zeros((k, n, length), np.float32),
            "weight": np.zeros((k, n), np.float32),
            "valid": np.zeros((k, n), np.float32),
        }
        if contrastive:
            for name in ("input", "target"):
                batch[f"{name}_tokens"] = batch["tokens"].copy()
                batch[f"{name}_mask"] = batch["mask"].copy()
        for g, group in enumerate(groups):
            for row, e in enumerate(group):
                batch["tokens"][g, row, : len(e.tokens)] = e.tokens
                batch["mask"][g, row, : len(e.mask)] = e.mask
                batch["weight"][g, row] = e.weight
                batch["valid"][g, row] = 1.0
                if contrastive:
                    for name, ids in (("input", e.input_ids), ("target", e.target_ids)):
                        batch[f"{name}_tokens"][g, row, : len(ids)] = ids
                        batch[f"{name}_mask"][g, row, : len(ids)] = 1.0
        return batch

    def precompile(self, lengths: Sequence[int] | None = None) -> int:
        """Compiles the one-update program for each padded length, applying nothing.

        Without it the first update of each length waits for its compilation
        (tens of seconds for a 135M-parameter model on a CPU). A backlog fused
        into one call of several updates still compiles on first use.

        Args:
          lengths: token lengths to compile for (each padded to its bucket);
            default every bucket up to ``config.max_length``.

        Returns:
          The number of programs compiled now (buckets already compiled skip).
        """
        self._check_open()
        if self._vector is not None:
            lengths = [0]
        elif lengths is None:
            lengths = range(_LENGTH_STEP, self._config.max_length + 1, _LENGTH_STEP)
            lengths = [*lengths, self._config.max_length]
        compiled = 0
        for length in sorted({self._bucket(max(1, int(n))) for n in lengths}):
            if self._vector is not None:
                in_shape, out_shape = self._vector
                example = _VectorExample(
                    np.zeros(in_shape, np.float32), np.zeros(out_shape, np.float32), 0.0
                )
            else:
                ids = np.full((length,), self._tok.pad, np.int32)
                mask = np.zeros((length,), np.float32)
                example = _Example(ids, mask, 0.0, ids, ids)
            batches = self._batches([[example]])
            shape = tuple((name, a.shape) for name, a in sorted(batches.items()))
            if shape in self._compiled:
                continue
            with self._step_lock:
                # The result is dropped: the step does not donate the state.
                jax.block_until_ready(self._step(self._state, batches))
                self._compiled.add(shape)
            compiled += 1
        return compiled

    def _run(self, jobs: Sequence[_Job]) -> None:
        """Runs queued jobs in order, fusing them into as few calls as allowed."""
        start = 0
        while start < len(jobs):
            k = self._fusable(len(jobs) - start)
            self._run_fused(jobs[start : start + k])
            start += k

    def _fusable(self, backlog: int) -> int:
        """Updates in the next call: a power of two (few compiled variants), and
        never past a checkpoint, so each checkpoint holds exactly its update."""
        k = min(backlog, self._config.max_fused)
        every = self._config.checkpoint_frequency
        if self._store is not None and every:
            k = min(k, every - self._total_updates % every)
        return 1 << (k.bit_length() - 1)

    def _run_fused(self, jobs: Sequence[_Job]) -> None:
        k, pause = len(jobs), 0.0
        try:
            batches = self._batches([job.examples for job in jobs])
            shape = tuple((name, a.shape) for name, a in sorted(batches.items()))
            self._yield_to_inference()
            with self._step_lock:
                state = self._state
                if self._lr != self._applied_lr:
                    lr = self._lr
                    state = set_learning_rate(state, lr)
                    self._applied_lr = lr
                with self._serve:
                    requests, busy = self._requests, self._in_flight > 0
                began = time.perf_counter()
                state, losses = self._step(state, batches)
                # Swap in finished arrays only: a reader handed not-yet-computed
                # parameters would wait for this update (and every queued one).
                jax.block_until_ready(state.params)
                elapsed = time.perf_counter() - began
                self._state = state
                # The swap: one reference assignment, so readers see old or new.
                self._serving = (self._serving[0] + k, state.params)
            with self._lock:
                self._total_updates += k
                self._forced_updates += sum(job.forced for job in jobs)
                self._losses.append(losses)
                updates = self._total_updates
            every = self._config.checkpoint_frequency
            if self._store is not None and every and updates % every == 0:
                self._checkpoint(state.params, losses[-1], updates)
            compiled = shape in self._compiled
            self._compiled.add(shape)
            with self._serve:
                served = busy or self._in_flight > 0 or self._requests != requests
            # A compilation is not the learner's share of the CPU.
            if served and compiled:
                pause = elapsed * (1.0 - self._share) / self._share
            self._pause = pause  # before wait() can return
        except BaseException as e:  # reported by wait() / force_update()
            with self._lock:
                self._errors.append(e)
        finally:
            with self._idle:
                self._outstanding -= k
                self._idle.notify_all()
            for job in jobs:
                job.done.set()
        if pause > 0:
            self._wake.wait(pause)

    def _yield_to_inference(self) -> None:
        """Lets an in-flight request finish first (for at most the last pause)."""
        if self._pause > 0:
            with self._serve:
                self._serve.wait_for(lambda: self._in_flight == 0, self._pause)

    @contextlib.contextmanager
    def _request(self):
        """Counts an inference request; yields the served ``(version, params)``."""
        with self._serve:
            self._requests += 1
            self._in_flight += 1
        try:
            yield self._serving  # one read: one complete tree
        finally:
            with self._serve:
                self._in_flight -= 1
                if not self._in_flight:
                    self._serve.notify_all()

    def _checkpoint(self, params, loss, updates: int) -> None:
        if self._store.run_id is None:
            self._store.start_run()
        tree = nnx.to_pure_dict(params) if isinstance(params, nnx.State) else params
        self._store.save(
            tree,
            metadata_entry={
                "update": updates,
                "loss": float(loss),
                "learning_rate": float(get_learning_rate(self._state.opt_state)),
            },
        )
        with self._lock:
            self._checkpoints += 1

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            # Whatever else is queued now runs with it, fused where possible.
            jobs = [job]
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP:
                    self._run(jobs)
                    return
                jobs.append(job)
            self._run(jobs)

    def _raise_errors(self) -> None:
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            raise RuntimeError(
                f"{len(errors)} background update(s) failed: {errors[0]!r}"
            ) from errors[0]

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("this learner is closed")

    def close(self, timeout: float | None = 60.0) -> None:
        """Finishes queued updates, stops the thread and flushes the store."""
        if self._closed:
            return
        try:
            self.wait(timeout)
        finally:
            with self._lock:
                self._closed = True
            if self._worker is not None:
                self._wake.set()
                self._queue.put(_STOP)
                self._worker.join(timeout)
            if self._store is not None and self._store.run_id is not None:
                self._store.flush()

    def __enter__(self) -> BufferedLearner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
