"""Live feedback streams: validate raw events, turn them into training examples.

A live system emits feedback as loosely-typed records (JSON from a web hook, a
tool runner, a rating widget). :class:`StreamProcessor` checks every field and
rejects a malformed event with a reason (counted, never raised), so one bad
record cannot stop the stream; :class:`FeedbackProcessor` maps a valid signal
to a training example for the routing controller.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ol_jax.objectives import normalize_rating

REQUIRED_FIELDS = ("id", "timestamp", "type", "value", "features", "expert")
_BINARY = {
    "thumbs": {"up": 1.0, "down": 0.0},
    "tool_result": {"success": 1.0, "failure": 0.0, True: 1.0, False: 0.0},
}
FEEDBACK_KINDS = ("thumbs", "tool_result", "rating")
# Longest accepted event id: ids are remembered for de-duplication, so one
# huge id must not hold megabytes in the window.
MAX_ID_CHARS = 256
REJECT_REASONS = (
    "not_a_mapping",
    *(f"missing_{name}" for name in REQUIRED_FIELDS),
    "bad_id",
    "duplicate_id",
    "bad_timestamp",
    "non_finite",
    "unknown_type",
    "bad_value",
    "bad_features",
    "bad_expert",
    "unreadable",
)


@dataclasses.dataclass(frozen=True)
class FeedbackSignal:
    """A validated feedback event.

    Attributes:
      event_id: the event's unique id.
      timestamp: seconds (finite).
      kind: ``"thumbs"``, ``"tool_result"`` or ``"rating"``.
      reward: the feedback mapped to ``[0, 1]`` (up / success = 1, ratings
        ``(r - 1) / 9``).
      features: float32 ``[D]`` prompt features the router saw.
      expert: the expert that served the answer.
      poisoned: simulator ground truth, for reports only (never used to decide).
    """

    event_id: str
    timestamp: float
    kind: str
    reward: float
    features: np.ndarray
    expert: int
    poisoned: bool = False


class StreamProcessor:
    """Validates live feedback events; malformed ones are rejected and counted.

    Checks, in order: the event is a mapping; every field of
    :data:`REQUIRED_FIELDS` is present; ``id`` is a non-empty string of at most
    :data:`MAX_ID_CHARS` characters not seen in the last ``dedupe_window``
    events; ``timestamp`` is a finite real number; ``type`` is a known string;
    ``value`` is valid for the type (``up``/``down``, ``success``/``failure``, a
    whole rating in 1..10); ``features`` is a list, tuple or 1-D array of
    ``feature_dim`` finite real numbers; ``expert`` is an int in
    ``0..num_experts-1``. Other keys are ignored (a producer may add its own,
    such as a prompt id).

    :meth:`process` never raises on any event: a field of any type (huge ints
    such as ``10**400``, NaN, numpy arrays, nested containers) is rejected with
    one of :data:`REJECT_REASONS`, and an object whose own methods raise (a
    broken ``Mapping``) is rejected as ``"unreadable"``. A rejected event
    changes nothing but the counters, which always satisfy ``received ==
    accepted + rejected_total``.

    Args:
      feature_dim: expected number of features.
      num_experts: number of experts.
      dedupe_window: how many recent ids are remembered to reject duplicates.

    Attributes:
      received: events seen.
      accepted: events that passed.
      rejected: ``Counter`` of rejection reasons.
    """

    def __init__(self, feature_dim: int, num_experts: int, dedupe_window: int = 4096):
        for name, value in (
            ("feature_dim", feature_dim),
            ("num_experts", num_experts),
            ("dedupe_window", dedupe_window),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.feature_dim = feature_dim
        self.num_experts = num_experts
        self.received = 0
        self.accepted = 0
        self.rejected: collections.Counter[str] = collections.Counter()
        self._recent: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._window = dedupe_window

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def counters(self) -> dict[str, Any]:
        """The counts as a JSON-ready dict."""
        return {
            "received": self.received,
            "accepted": self.accepted,
            "rejected": dict(sorted(self.rejected.items())),
        }

    def load_counters(self, counters: Mapping[str, Any]) -> None:
        """Restores counts saved by :meth:`counters` (when resuming a run).

        Raises:
          ValueError: the counts are negative or do not add up (``received !=
            accepted + sum(rejected)``).
        """
        received = int(counters["received"])
        accepted = int(counters["accepted"])
        rejected = collections.Counter(
            {str(k): int(v) for k, v in counters["rejected"].items()}
        )
        if min([received, accepted, *rejected.values()]) < 0 or received != (
            accepted + sum(rejected.values())
        ):
            raise ValueError(
                "counters must be >= 0 with received == accepted + sum(rejected), "
                f"got {dict(counters)!r}"
            )
        self.received, self.accepted, self.rejected = received, accepted, rejected

    def validate(self, event: Any) -> tuple[FeedbackSignal | None, str | None]:
        """``(signal, None)`` for a valid event, ``(None, reason)`` otherwise.

        Does not count; see :meth:`process`. ``reason`` is one of
        :data:`REJECT_REASONS` except ``"unreadable"`` (an event whose own
        methods raise propagates here and is caught by :meth:`process`).
        """
        if not isinstance(event, Mapping):
            return None, "not_a_mapping"
        for name in REQUIRED_FIELDS:
            if name not in event:
                return None, f"missing_{name}"
        event_id = event["id"]
        if (
            not isinstance(event_id, str)
            or not event_id
            or len(event_id) > MAX_ID_CHARS
        ):
            return None, "bad_id"
        # A str subclass could override hashing and equality; keep a plain copy.
        event_id = str.__str__(event_id)
        if event_id in self._recent:
            return None, "duplicate_id"
        ts, reason = _real(event["timestamp"])
        if reason is not None:
            return None, "bad_timestamp" if reason == "bad" else reason
        kind = event["type"]
        if not isinstance(kind, str) or kind not in FEEDBACK_KINDS:
            return None, "unknown_type"
        kind = str.__str__(kind)
        reward, reason = _reward(kind, event["value"])
        if reason is not None:
            return None, reason
        x, reason = _features(event["features"], self.feature_dim)
        if reason is not None:
            return None, reason
        expert = event["expert"]
        if (
            isinstance(expert, bool)
            or not isinstance(expert, int | np.integer)
            or not 0 <= int(expert) < self.num_experts
        ):
            return None, "bad_expert"
        poisoned = event.get("_poisoned", False)
        signal = FeedbackSignal(
            event_id=event_id,
            timestamp=ts,
            kind=kind,
            reward=reward,
            features=x,
            expert=int(expert),
            # Simulator ground truth: only a real boolean counts.
            poisoned=isinstance(poisoned, bool | np.bool_) and bool(poisoned),
        )
        return signal, None

    def process(self, event: Any) -> FeedbackSignal | None:
        """Validates and counts one event; never raises, whatever ``event`` is.

        Returns:
          The signal of a valid event, else ``None`` (the reason is counted in
          :attr:`rejected`).
        """
        try:
            signal, reason = self.validate(event)
        except Exception:
            # The contract is that one bad record never stops the stream: a
            # Mapping whose own lookups raise is a rejected event too.
            signal, reason = None, "unreadable"
        # Counters change together, after the verdict, so they always add up.
        self.received += 1
        if signal is None:
            self.rejected[reason] += 1
            return None
        self.accepted += 1
        self._recent[signal.event_id] = None
        if len(self._recent) > self._window:
            self._recent.popitem(last=False)
        return signal


def _real(value: Any) -> tuple[float, str | None]:
    """``(float(value), None)`` for a finite real scalar, else ``(nan, reason)``.

    ``reason`` is ``"bad"`` for a non-number (bool, string, array, ...) and
    ``"non_finite"`` for NaN, an infinity or an int too large for a float.
    """
    if isinstance(value, bool | np.bool_) or not isinstance(
        value, int | float | np.integer | np.floating
    ):
        return math.nan, "bad"
    try:
        x = float(value)
    except OverflowError:
        return math.nan, "non_finite"
    if not math.isfinite(x):
        return math.nan, "non_finite"
    return x, None


def _reward(kind: str, value: Any) -> tuple[float, str | None]:
    """The reward in [0, 1] of a ``value`` of feedback kind ``kind``."""
    if kind == "rating":
        x, reason = _real(value)
        if reason is not None:
            return math.nan, "bad_value" if reason == "bad" else reason
        try:
            return (float(normalize_rating(x)) + 1.0) / 2.0, None
        except ValueError:
            return math.nan, "bad_value"
    if isinstance(value, float) and not math.isfinite(value):
        return math.nan, "non_finite"
    # Only a plain str or bool is looked up: anything else could be unhashable
    # or compare equal to a key by its own rules (1 == True).
    if type(value) not in (str, bool) or value not in _BINARY[kind]:
        return math.nan, "bad_value"
    return _BINARY[kind][value], None


def _features(value: Any, dim: int) -> tuple[np.ndarray | None, str | None]:
    """``value`` as float32 ``[dim]`` if it is ``dim`` finite real numbers."""
    if isinstance(value, np.ndarray):
        if value.shape != (dim,) or value.dtype.kind not in "iuf":
            return None, "bad_features"
        items = value
    elif isinstance(value, list | tuple):
        # The length first: a huge list is rejected before it is converted.
        if len(value) != dim:
            return None, "bad_features"
        items = value
        overflow = False
        for item in items:
            _, reason = _real(item)
            if reason == "bad":
                return None, "bad_features"
            overflow = overflow or reason is not None
        if overflow:
            return None, "non_finite"
    else:
        return None, "bad_features"
    with np.errstate(over="ignore", invalid="ignore"):
        x = np.asarray(items, dtype=np.float64).astype(np.float32)
    if not np.all(np.isfinite(x)):
        return None, "non_finite"
    return x, None


class FeedbackProcessor:
    """Turns feedback signals into training examples for the routing controller.

    The example for a signal is ``{x, expert, target, weight}``: the controller's
    logit for the served expert is trained towards the observed reward (a
    Bernoulli success target), weighted per feedback kind.

    Args:
      kind_weights: loss weight per feedback kind (default 1 for each).
    """

    def __init__(self, kind_weights: Mapping[str, float] | None = None):
        weights = {k: 1.0 for k in FEEDBACK_KINDS}
        for k, w in (kind_weights or {}).items():
            if k not in weights:
                raise ValueError(
                    f"kind_weights key must be one of {FEEDBACK_KINDS}, got {k!r}"
                )
            x, reason = _real(w)
            if reason is not None or x < 0:
                raise ValueError(
                    f"kind_weights[{k!r}] must be a finite number >= 0, got {w!r}"
                )
            weights[k] = x
        self.kind_weights = weights

    def to_example(self, signal: FeedbackSignal) -> dict[str, Any]:
        """The training example of one signal (host numpy values)."""
        return {
            "x": signal.features,
            "expert": signal.expert,
            "target": signal.reward,
            "weight": self.kind_weights[signal.kind],
            "poisoned": signal.poisoned,
        }
