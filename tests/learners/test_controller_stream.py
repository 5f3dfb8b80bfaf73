"""Stream and feedback processing for the controller learner (seed 003)."""

import math

import numpy as np
import pytest

from ol_jax.learners.controller import FeedbackProcessor, StreamProcessor


def _event(i=0, **overrides):
    event = {
        "id": f"evt-{i}",
        "timestamp": float(i),
        "type": "thumbs",
        "value": "up",
        "features": [0.5, -1.0, 2.0],
        "expert": 1,
    }
    event.update(overrides)
    return event


def test_valid_events_map_to_rewards():
    stream = StreamProcessor(feature_dim=3, num_experts=2)
    cases = [
        (_event(0), 1.0),
        (_event(1, value="down"), 0.0),
        (_event(2, type="tool_result", value="success"), 1.0),
        (_event(3, type="tool_result", value="failure"), 0.0),
        (_event(4, type="tool_result", value=True), 1.0),
        (_event(5, type="rating", value=10), 1.0),
        (_event(6, type="rating", value=1), 0.0),
        (_event(7, type="rating", value=7), 6 / 9),
    ]
    for event, reward in cases:
        signal = stream.process(event)
        assert signal is not None, event
        assert signal.reward == pytest.approx(reward)
        assert signal.features.dtype == np.float32
    example = FeedbackProcessor().to_example(signal)
    assert example["expert"] == 1 and example["weight"] == 1.0
    assert stream.accepted == len(cases) and stream.rejected_total == 0


def test_malformed_events_rejected_counted_and_stream_goes_on():
    stream = StreamProcessor(feature_dim=3, num_experts=2)
    missing = _event(10)
    del missing["timestamp"]
    bad = [
        (missing, "missing_timestamp"),
        ({k: v for k, v in _event(11).items() if k != "expert"}, "missing_expert"),
        (_event(12, type="emoji_reaction"), "unknown_type"),
        (_event(13, type="rating", value=42), "bad_value"),
        (_event(14, type="rating", value=7.5), "bad_value"),
        (_event(15, type="rating", value=math.nan), "non_finite"),
        (_event(16, features=[0.0, math.nan, 1.0]), "non_finite"),
        (_event(17, timestamp=math.inf), "non_finite"),
        (_event(18, value="meh"), "bad_value"),
        (_event(19, features=[1.0, 2.0]), "bad_features"),
        (_event(20, features="abc"), "bad_features"),
        (_event(21, expert=5), "bad_expert"),
        (_event(22, expert=True), "bad_expert"),
        (_event(23, id=""), "bad_id"),
        (_event(24, timestamp="noon"), "bad_timestamp"),
        ("not an event", "not_a_mapping"),
        (None, "not_a_mapping"),
    ]
    for event, reason in bad:
        assert stream.process(event) is None
        assert stream.rejected[reason] >= 1, reason
    # A valid event after all of that still goes through; a duplicate id does not.
    assert stream.process(_event(99)) is not None
    assert stream.process(_event(99)) is None
    assert stream.rejected["duplicate_id"] == 1
    assert stream.received == len(bad) + 2
    assert stream.accepted == 1
    assert stream.rejected_total == len(bad) + 1
    counters = stream.counters()
    fresh = StreamProcessor(feature_dim=3, num_experts=2)
    fresh.load_counters(counters)
    assert fresh.counters() == counters


def test_processor_arguments_checked():
    with pytest.raises(ValueError, match="feature_dim"):
        StreamProcessor(feature_dim=0, num_experts=2)
    with pytest.raises(ValueError, match="kind_weights"):
        FeedbackProcessor({"emoji": 1.0})
    with pytest.raises(ValueError, match="kind_weights"):
        FeedbackProcessor({"rating": -1.0})
