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
    :data:`REQUIRED_FIELDS` is present; ``id`` is a non-empty string not seen in
    the last ``dedupe_window`` events; ``timestamp`` is a finite number; ``type``
    is known; ``value`` is valid for the type (``up``/``down``,
    ``success``/``failure``, a whole rating in 1..10); ``features`` are
    ``feature_dim`` finite numbers; ``expert`` is an int in ``0..num_experts-1``.

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
        if feature_dim < 1 or num_experts < 1 or dedupe_window < 1:
            raise ValueError(
                "feature_dim, num_experts and dedupe_window must be >= 1, got "
                f"{feature_dim}, {num_experts}, {dedupe_window}"
            )
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
        """Restores counts saved by :meth:`counters` (when resuming a run)."""
        self.received = int(counters["received"])
        self.accepted = int(counters["accepted"])
        self.rejected = collections.Counter(
            {str(k): int(v) for k, v in counters["rejected"].items()}
        )

    def validate(self, event: Any) -> tuple[FeedbackSignal | None, str | None]:
        """``(signal, None)`` for a valid event, ``(None, reason)`` otherwise.

        Does not count; see :meth:`process`.
        """
        if not isinstance(event, Mapping):
            return None, "not_a_mapping"
        for name in REQUIRED_FIELDS:
            if name not in event:
                return None, f"missing_{name}"
        event_id = event["id"]
        if not isinstance(event_id, str) or not event_id:
            return None, "bad_id"
        if event_id in self._recent:
            return None, "duplicate_id"
        ts = event["timestamp"]
        if isinstance(ts, bool) or not isinstance(ts, int | float):
            return None, "bad_timestamp"
        if not math.isfinite(ts):
            return None, "non_finite"
        kind = event["type"]
        if kind not in FEEDBACK_KINDS:
            return None, "unknown_type"
        value = event["value"]
        if kind == "rating":
            if isinstance(value, float) and not math.isfinite(value):
                return None, "non_finite"
            try:
                reward = (float(normalize_rating(value)) + 1.0) / 2.0
            except (ValueError, TypeError):
                return None, "bad_value"
        else:
            table = _BINARY[kind]
            if isinstance(value, float) and not math.isfinite(value):
                return None, "non_finite"
            if not isinstance(value, str | bool) or value not in table:
                return None, "bad_value"
            reward = table[value]
        features = event["features"]
        try:
            x = np.asarray(features, dtype=np.float32)
        except (TypeError, ValueError):
            return None, "bad_features"
        if x.shape != (self.feature_dim,):
            return None, "bad_features"
        if not np.all(np.isfinite(x)):
            return None, "non_finite"
        expert = event["expert"]
        if (
            isinstance(expert, bool)
            or not isinstance(expert, int | np.integer)
            or not 0 <= int(expert) < self.num_experts
        ):
            return None, "bad_expert"
        signal = FeedbackSignal(
            event_id=event_id,
            timestamp=float(ts),
            kind=kind,
            reward=float(reward),
            features=x,
            expert=int(expert),
            poisoned=bool(event.get("_poisoned", False)),
        )
        return signal, None

    def process(self, event: Any) -> FeedbackSignal | None:
        """Validates and counts one event; never raises on a malformed one."""
        self.received += 1
        signal, reason = self.validate(event)
        if signal is None:
            self.rejected[reason] += 1
            return None
        self.accepted += 1
        self._recent[signal.event_id] = None
        if len(self._recent) > self._window:
            self._recent.popitem(last=False)
        return signal


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
            if not (math.isfinite(w) and w >= 0):
                raise ValueError(
                    f"kind_weights[{k!r}] must be finite and >= 0, got {w}"
                )
            weights[k] = float(w)
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
