"""Network configuration: pydantic schemas and a YAML loader with readable errors.

A network folder ``networks/<network_id>/`` holds a ``config.yaml`` that names the
model architecture, the online-learning hyperparameters and the checkpoint store
settings. Every section is a pydantic v2 model with ``extra="forbid"``, so a typo in
a key is an error rather than a silently ignored setting.

Errors are reported as :class:`ConfigError` (a :class:`ValueError`) with one line per
problem, each naming the dotted key path::

    invalid config networks/glyph-demo/config.yaml:
      online_learning.learning_rate: must be > 0, got -1
      online_learning.lr: unknown key (did you mean 'learning_rate'?)

Other learners reuse :func:`load_config` / :func:`validate_config` with their own
pydantic model to get the same error formatting.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, TypeVar

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "MAX_BATCH",
    "MAX_CHARS",
    "MAX_COUNT",
    "MAX_DIM",
    "MAX_ITEMS",
    "MAX_TOKENS",
    "BaseNetworkConfig",
    "BatchSize",
    "Capacity",
    "Chars",
    "ConfigError",
    "ModelConfig",
    "NetworkConfig",
    "OnlineLearningConfig",
    "StoreConfig",
    "load_config",
    "load_network_config",
    "validate_config",
]

ModelT = TypeVar("ModelT", bound=BaseModel)

_NETWORK_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


# --- bounded integers -------------------------------------------------------------
# Every integer setting of every config section is one of these types. They are
# strict (YAML's `1e30` or `3.0` for an int is an error, not a silently truncated
# int) and bounded above so that a typo such as `image_size: 1e30` or
# `style_z_dim: 2**64` is an error naming the key, not an out-of-memory kill or an
# opaque XLA error later. The bounds are sized for the machine ol_jax targets (24
# GiB of RAM, 2 CPU cores): generous (far above any setting that runs in useful
# time there) but finite. Each type fixes only the upper bound; the lower bound is
# a property of the setting and is written at the field (``Field(ge=1)``).

#: A width, latent dimension, rank or expert count: one float32 weight of
#: ``[MAX_DIM, MAX_DIM]`` is 1 GiB.
MAX_DIM = 16_384
#: A token length (sequence, prompt, reply, length bucket, answer limit): the
#: context of the shipped SmolLM2-135M; one float32 attention map of that length
#: is 256 MiB per head.
MAX_TOKENS = 8_192
#: Rows kept in a buffer, memory or evaluation set: a million rows of a few
#: hundred bytes is a few hundred MiB.
MAX_ITEMS = 1_000_000
#: Examples per update: every one is a row of each activation of the update.
MAX_BATCH = 4_096
#: A count of, or a period in, events, turns, updates or steps: JAX keeps step
#: counts in int32, and a period beyond that never elapses in a run.
MAX_COUNT = 2**31 - 1
#: Characters or bytes of one input: 16 MiB (texts are scanned by regexes and
#: tokenized on the host).
MAX_CHARS = 2**24

#: An integer no larger than :data:`MAX_DIM`.
Dim = Annotated[int, Field(strict=True, le=MAX_DIM)]
#: An integer no larger than :data:`MAX_TOKENS`.
Tokens = Annotated[int, Field(strict=True, le=MAX_TOKENS)]
#: An integer no larger than :data:`MAX_ITEMS`.
Capacity = Annotated[int, Field(strict=True, le=MAX_ITEMS)]
#: An integer no larger than :data:`MAX_BATCH`.
BatchSize = Annotated[int, Field(strict=True, le=MAX_BATCH)]
#: An integer no larger than :data:`MAX_COUNT`.
Count = Annotated[int, Field(strict=True, le=MAX_COUNT)]
#: An integer no larger than :data:`MAX_CHARS`.
Chars = Annotated[int, Field(strict=True, le=MAX_CHARS)]
#: A PRNG seed in ``0..2**32 - 1`` (what ``jax.random.key`` and numpy take, with
#: room for the small offsets learners add to derive their own seeds).
Seed = Annotated[int, Field(strict=True, ge=0, le=2**32 - 1)]


class ConfigError(ValueError):
    """A configuration file or mapping failed validation.

    Attributes:
      problems: ``(dotted_key_path, message)`` pairs, one per problem, in the order
        pydantic reported them. The key path is ``"<root>"`` for problems with the
        document as a whole (not a mapping, unreadable file).
      source: the file path or label the configuration came from, if any.
    """

    def __init__(
        self, problems: Sequence[tuple[str, str]], *, source: str | None = None
    ):
        self.problems = list(problems)
        self.source = source
        header = f"invalid config {source}" if source else "invalid config"
        lines = [f"  {key}: {msg}" for key, msg in self.problems]
        super().__init__(header + ":\n" + "\n".join(lines))


class ConfigSection(BaseModel):
    """Base of every config section in ol_jax.

    Unknown keys are errors (``validate_config`` names them with a did-you-mean
    hint), sections are immutable, defaults are validated like given values, and
    every float must be finite: YAML's ``.inf`` and ``.nan`` are rejected. Every
    integer setting is one of the bounded types (:data:`Dim`, :data:`Tokens`,
    :data:`Capacity`, :data:`BatchSize`, :data:`Count`, :data:`Chars`,
    :data:`Seed`) with its lower bound at the field, e.g. ``rank: Dim =
    Field(default=4, ge=1)``; a tighter upper bound goes in the type,
    ``Annotated[Dim, Field(le=1024)]``, since pydantic keeps the type's own
    ``le`` over one given at the field.
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False
    )


class OnlineLearningConfig(ConfigSection):
    """The ``online_learning`` block of a glyph network (seed 000).

    The REINFORCE update on ``style_z`` is ``theta <- clip(theta + lr * g)``, with
    ``g = clip_norm((r - b) * grad log pi(z) + entropy_coef * grad H)``, where the
    baseline is ``b <- baseline_decay * b + (1 - baseline_decay) * r`` and older
    ratings are weighted by ``2 ** (-age / recency_half_life)``.

    Attributes:
      enabled: whether feedback updates the weights at all.
      learning_rate: step size, > 0.
      gradient_clip_norm: global L2 norm the gradient is clipped to, > 0.
      finetune_layers: parameter-path prefixes that are trained; all others frozen.
      feedback_scale: ``"linear"`` maps rating 1..10 to [-1, 1] linearly,
        ``"nonlinear"`` emphasizes the extremes.
      update_frequency: ``"per_rating"`` updates after every rating, ``"batched"``
        after ``batch_size`` ratings.
      batch_size: ratings per update when batched, >= 1.
      min_ratings_before_update: cold-start threshold, >= 0.
      weight_clamp: ``[lo, hi]`` box the fine-tuned weights stay in, lo < hi.
      weight_decay: L2 regularization on the fine-tuned weights, >= 0.
      baseline_decay: EMA decay of the reward baseline, in [0, 1).
      recency_half_life: ratings this many updates old count half, > 0.
      entropy_coef: weight of the entropy bonus on the ``style_z`` policy, >= 0.
      min_log_std: lower bound on the policy's log standard deviation.
      pixel_noise_std: std ``tau`` of the pixel noise of a sampled glyph, > 0; the
        fine-tuned decoder layers learn through ``log N(x; decoder(z), tau^2)``.
      feedback_window: recent ratings each update revisits (recency-weighted).
      finetune_lr_scale: learning rate of the fine-tuned decoder layers relative
        to the style policy's, > 0 (a decoder change moves every glyph at once).
      warmup_updates: the step size ramps up linearly over this many updates, so
        the first (sparse) ratings cannot overfit, >= 0.
      log_std_lr_scale: learning rate of the policy's log std relative to its
        mean's, > 0. Adam moves every coordinate by about the learning rate, so
        the spread of latent dimensions the rater ignores would random-walk at
        full speed; a smaller rate keeps the policy's width stable.

    References:
      Williams, `Simple statistical gradient-following algorithms for
      connectionist reinforcement learning
      <https://doi.org/10.1007/BF00992696>`_, 1992.
    """

    enabled: bool = True
    learning_rate: float = Field(default=1e-3, gt=0)
    gradient_clip_norm: float = Field(default=1.0, gt=0)
    finetune_layers: list[str] = Field(
        default_factory=lambda: ["decoder.3", "decoder.4"]
    )
    feedback_scale: Literal["linear", "nonlinear"] = "linear"
    update_frequency: Literal["per_rating", "batched"] = "per_rating"
    batch_size: BatchSize = Field(default=4, ge=1)
    min_ratings_before_update: Count = Field(default=3, ge=0)
    weight_clamp: tuple[float, float] = (-5.0, 5.0)
    weight_decay: float = Field(default=1e-4, ge=0)
    baseline_decay: float = Field(default=0.9, ge=0, lt=1)
    recency_half_life: float = Field(default=20.0, gt=0)
    entropy_coef: float = Field(default=0.0, ge=0)
    min_log_std: float = -5.0
    pixel_noise_std: float = Field(default=0.05, gt=0)
    # Each update revisits every rating of the window (its image included).
    feedback_window: BatchSize = Field(default=16, ge=1)
    finetune_lr_scale: float = Field(default=0.2, gt=0)
    warmup_updates: Count = Field(default=0, ge=0)
    log_std_lr_scale: float = Field(default=0.75, gt=0)

    @field_validator("finetune_layers")
    @classmethod
    def _layers(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name at least one layer, got []")
        for name in value:
            if not name.strip():
                raise ValueError(f"layer names must be non-empty, got {value!r}")
        return value

    @field_validator("weight_clamp")
    @classmethod
    def _clamp_order(cls, value: tuple[float, float]) -> tuple[float, float]:
        lo, hi = value
        # Non-finite bounds never get here (ConfigSection rejects them).
        if not lo < hi:
            raise ValueError(f"must be [lo, hi] with finite lo < hi, got [{lo}, {hi}]")
        return value


_Width = Annotated[Dim, Field(ge=1)]


class ModelConfig(ConfigSection):
    """Architecture of the glyph decoder (see ``ol_jax.models.GlyphConfig``).

    A coordinate network: ``decoder.0`` and ``decoder.1`` map ``style_z`` to a
    modulation vector, ``decoder.2`` mixes it with each pixel's coordinates,
    ``decoder.3`` and ``decoder.4`` map each pixel to a stroke field.

    Attributes:
      style_z_dim: dimension of the style latent, >= 1.
      image_size: side of the square output image in pixels, in 4..1024.
      hidden: widths ``[H0, H1, H2]`` of decoder.0, decoder.1 and the per-pixel
        layers, each >= 1.
      coord_scale: scale of the pixel coordinates, > 0 (larger: curvier strokes).
      stroke_sharpness: stroke profile sharpness, > 0 (larger: thinner strokes).
    """

    style_z_dim: Dim = Field(default=64, ge=1)
    # A glyph's per-pixel layers hold image_size**2 x H2 activations: at 1024 and
    # the default H2 = 32 that is 128 MiB per glyph, for every glyph of a window.
    image_size: Annotated[Dim, Field(le=1024)] = Field(default=32, ge=4)
    hidden: tuple[_Width, _Width, _Width] = (128, 256, 32)
    coord_scale: float = Field(default=6.0, gt=0)
    stroke_sharpness: float = Field(default=10.0, gt=0)


class StoreConfig(ConfigSection):
    """Checkpoint store settings.

    Attributes:
      max_to_keep: number of most recent weight versions kept per run; ``None``
        keeps all.
      async_writes: write checkpoints on a background thread (``save`` returns
        after a host copy) instead of in the caller.
      queue_size: saves that may wait for the background writer before ``save``
        blocks (back-pressure; no version is ever dropped), >= 1.
      durability: when a learner's feedback call returns: ``"sync"`` once the
        item is in the run's feedback journal on disk (fsync, shared by
        concurrent callers), ``"async"`` at once (a crash may lose the last few
        items).
      feedback_queue_size: feedback items that may wait for their journal
        commit before the feedback call blocks (back-pressure), >= 1.
    """

    max_to_keep: Count | None = Field(default=None, ge=1)
    async_writes: bool = True
    # Every waiting save holds a host copy of the weights.
    queue_size: Annotated[Count, Field(le=1024)] = Field(default=8, ge=1)
    durability: Literal["sync", "async"] = "sync"
    # Acknowledged feedback waiting for its update; bounded for back-pressure.
    feedback_queue_size: Annotated[Capacity, Field(le=1_000_000)] = Field(
        default=1024, ge=1
    )


class BaseNetworkConfig(ConfigSection):
    """What every network's ``config.yaml`` has; learners subclass it.

    :class:`~ol_jax.store.RunStore` needs only these fields, so a learner with its
    own sections (a chat network's ``lora``, a controller's ``router``) subclasses
    this and passes its class as ``RunStore(..., config_cls=...)``.

    Attributes:
      network_id: the folder name under ``networks/``; letters, digits, ``.``,
        ``_`` and ``-``.
      store: checkpoint store settings.
      seed: root PRNG seed of the network, in ``0..2**32 - 1``.

    Examples:
      >>> class ChatNetworkConfig(BaseNetworkConfig):
      ...     temperature: float = 0.7
      >>> ChatNetworkConfig(network_id="chat").store.queue_size
      8
    """

    network_id: str = Field(pattern=_NETWORK_ID_PATTERN)
    store: StoreConfig = Field(default_factory=StoreConfig)
    seed: Seed = 0


class NetworkConfig(BaseNetworkConfig):
    """A glyph network's ``config.yaml`` (seed 000).

    Attributes:
      network_id: the folder name under ``networks/``.
      model: decoder architecture.
      online_learning: online-learning hyperparameters.
      store: checkpoint store settings.
      seed: root PRNG seed of the network, >= 0.
    """

    model: ModelConfig = Field(default_factory=ModelConfig)
    online_learning: OnlineLearningConfig = Field(default_factory=OnlineLearningConfig)


# --- error formatting ------------------------------------------------------------

_OPERATORS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}

_TYPE_NAMES = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _dotted(loc: Sequence[int | str]) -> str:
    """``("a", 0, "b")`` -> ``"a[0].b"``; empty -> ``"<root>"``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def _fields_at(model_cls: type[BaseModel], loc: Sequence[int | str]) -> list[str]:
    """Field names of the pydantic model found by following ``loc`` from the root."""
    cls: Any = model_cls
    for part in loc:
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return []
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return []
        cls = field.annotation
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return list(cls.model_fields)
    return []


def _number(x: Any) -> Any:
    """``0.0`` -> ``0`` so that bounds read as written in the schema."""
    return int(x) if isinstance(x, float) and x.is_integer() else x


def _describe(error: Mapping[str, Any], model_cls: type[BaseModel] | None) -> str:
    """One human sentence for one pydantic error, with the offending value."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    if kind == "extra_forbidden":
        *parent, name = error["loc"]
        known = _fields_at(model_cls, parent) if model_cls is not None else []
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown key{hint}; allowed keys: {', '.join(known)}"
    if kind == "missing":
        return "required key is missing"
    if kind in _OPERATORS:
        key, symbol = _OPERATORS[kind]
        return f"must be {symbol} {_number(ctx.get(key))}, got {value!r}"
    if kind == "finite_number":
        return f"must be finite, got {value!r}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, got {value!r}"
    if kind in _TYPE_NAMES:
        return f"expected {_TYPE_NAMES[kind]}, got {value!r}"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')}, got {value!r}"
    if kind == "value_error":
        # Our validators already put the value in the message.
        return str(ctx.get("error", error["msg"]))
    return f"{error['msg'][0].lower()}{error['msg'][1:]}, got {value!r}"


def _problems(
    exc: pydantic.ValidationError, model_cls: type[BaseModel]
) -> list[tuple[str, str]]:
    return [
        (_dotted(error["loc"]), _describe(error, model_cls))
        for error in exc.errors(include_url=False)
    ]


def validate_config(
    data: Any, model_cls: type[ModelT], *, source: str | None = None
) -> ModelT:
    """Validates a plain mapping against a pydantic model.

    Args:
      data: the parsed document, normally a ``dict``; ``None`` (an empty YAML file)
        is treated as ``{}``.
      model_cls: the pydantic v2 model to validate with. Use ``extra="forbid"`` in
        its ``model_config`` so unknown keys are reported.
      source: label for error messages (usually the file path).

    Returns:
      The validated model instance.

    Raises:
      ConfigError: naming every bad or unknown key by its dotted path.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            [("<root>", f"expected a mapping, got {type(data).__name__}")],
            source=source,
        )
    try:
        return model_cls.model_validate(dict(data))
    except pydantic.ValidationError as exc:
        raise ConfigError(_problems(exc, model_cls), source=source) from None


def check_values(
    values: Mapping[str, Any],
    types: Mapping[str, Any],
    *,
    source: str | None = None,
) -> None:
    """Checks plain values against config types, as a config section would.

    For settings that are not a pydantic section (a dataclass such as
    ``ol_jax.learners.LearningConfig``): the same types (:data:`Dim`,
    :data:`Capacity`, ...), rules and messages as :func:`validate_config`.

    Args:
      values: ``{key: value}``.
      types: ``{key: type}`` for each key of ``values``, e.g.
        ``Annotated[Capacity, Field(ge=1)]``.
      source: label for error messages (the class or file).

    Raises:
      ConfigError: naming every bad key, e.g. ``buffer_size: expected an
        integer, got 1e+30``.

    Examples:
      >>> check_values({"size": 8}, {"size": Annotated[Capacity, Field(ge=1)]})
    """
    problems = []
    for key, value in values.items():
        try:
            pydantic.TypeAdapter(
                types[key], config=ConfigDict(allow_inf_nan=False)
            ).validate_python(value)
        except pydantic.ValidationError as exc:
            problems += [
                (_dotted((key, *error["loc"])), _describe(error, None))
                for error in exc.errors(include_url=False)
            ]
    if problems:
        raise ConfigError(problems, source=source)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last)."""


def _construct_unique_mapping(
    loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            line = key_node.start_mark.line + 1
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {line})", key_node.start_mark
            )
        seen[key] = True
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)

# YAML 1.1 reads `1e-4` (no dot) as a string; accept it as a float like YAML 1.2.
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_config(path: str | os.PathLike[str], model_cls: type[ModelT]) -> ModelT:
    """Loads a YAML file and validates it against ``model_cls``.

    Args:
      path: the YAML file.
      model_cls: the pydantic v2 model (with ``extra="forbid"``) to validate with.

    Returns:
      The validated model instance.

    Raises:
      ConfigError: the file is missing or unreadable, is not valid YAML, is not a
        mapping, or any key is unknown or has a bad value. The message names each
        key by its dotted path, e.g. ``online_learning.learning_rate: must be > 0,
        got -1``.

    Examples:
      >>> from ol_jax.store import NetworkConfig, load_config
      >>> cfg = load_config("networks/glyph-demo/config.yaml", NetworkConfig)
    """
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(
            [("<root>", "config file not found")], source=source
        ) from None
    except OSError as exc:
        raise ConfigError(
            [("<root>", f"cannot read file: {exc.strerror}")], source=source
        ) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (safe loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            [("<root>", f"invalid YAML{where}: {problem}")], source=source
        ) from None
    return validate_config(data, model_cls, source=source)


def load_network_config(path: str | os.PathLike[str]) -> NetworkConfig:
    """Loads and validates a network's ``config.yaml``.

    Args:
      path: path to ``networks/<network_id>/config.yaml``.

    Returns:
      The validated :class:`NetworkConfig`.

    Raises:
      ConfigError: see :func:`load_config`.
    """
    return load_config(path, NetworkConfig)
