"""Stream and feedback processing for the controller learner (seed 003)."""

import math

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

from ol_jax.learners.controller import (
    REJECT_REASONS,
    FeedbackProcessor,
    StreamProcessor,
)

FEEDBACK_KINDS = ("thumbs", "tool_result", "rating")
REQUIRED_FIELDS = ("id", "timestamp", "type", "value", "features", "expert")


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


# ----------------------------------------------------------------- hostile input
# Found by fuzzing (issue 19): these raised OverflowError / ValueError out of
# ``process`` and left ``received`` counted with no reason.


class _BrokenMapping(dict):
    """A mapping whose lookups raise, as a buggy producer's object might."""

    def __getitem__(self, key):
        raise RuntimeError("lookup failed")


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (_event(30, timestamp=10**400), "non_finite"),
        (_event(31, features=[10**400, 0.0, 1.0]), "non_finite"),
        (_event(32, type=np.array(["thumbs", "rating"])), "unknown_type"),
        (_event(33, type=np.array("thumbs")), "unknown_type"),
        (_event(34, type="rating", value=10**400), "non_finite"),
        (_event(35, type="rating", value=[5]), "bad_value"),
        (_event(36, features=["1", "2", "3"]), "bad_features"),
        (_event(37, features=[[1.0], [2.0], [3.0]]), "bad_features"),
        (_event(38, features={"a": 1.0}), "bad_features"),
        (_event(39, features=np.array([1.0, 2.0, 1e39])), "non_finite"),
        (_event(40, value=np.array(["up"])), "bad_value"),
        (_event(41, expert=10**400), "bad_expert"),
        (_event(42, id="x" * 100_000), "bad_id"),
        (_BrokenMapping(_event(43)), "unreadable"),
    ],
)
def test_hostile_fields_rejected_with_a_reason(event, reason):
    stream = StreamProcessor(feature_dim=3, num_experts=2)
    assert stream.process(event) is None
    assert stream.counters() == {"received": 1, "accepted": 0, "rejected": {reason: 1}}


def test_poisoned_flag_of_any_type_never_raises():
    stream = StreamProcessor(feature_dim=3, num_experts=2)
    signal = stream.process(_event(50, _poisoned=np.array([1, 2])))
    assert signal is not None and signal.poisoned is False
    assert stream.process(_event(51, _poisoned=True)).poisoned is True


def test_load_counters_refuses_counts_that_do_not_add_up():
    stream = StreamProcessor(feature_dim=3, num_experts=2)
    with pytest.raises(ValueError, match="received == accepted"):
        stream.load_counters({"received": 5, "accepted": 1, "rejected": {"x": 1}})
    assert stream.counters() == {"received": 0, "accepted": 0, "rejected": {}}


def test_feedback_processor_weights_of_any_type_are_value_errors():
    for weight in ("heavy", 10**400, math.nan, None, [1.0]):
        with pytest.raises(ValueError, match=r"kind_weights\['rating'\]"):
            FeedbackProcessor({"rating": weight})


_junk = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.sampled_from([10**400, -(10**400), 2**63, 2**64, -1, 0, 1, 2, 10]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=8),
        st.sampled_from(["up", "down", "success", "failure", "thumbs", "rating"]),
        st.binary(max_size=8),
        st.builds(np.array, st.lists(st.floats(), max_size=4)),
        st.builds(np.array, st.sampled_from(["thumbs", 3, 3.0, True])),
        st.builds(np.float32, st.floats(width=32)),
        st.builds(np.int64, st.integers(-(2**63), 2**63 - 1)),
        st.complex_numbers(),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner, inner),
        st.dictionaries(st.text(max_size=4), inner, max_size=3),
    ),
    max_leaves=8,
)

_fields = [*REQUIRED_FIELDS, "_poisoned", "prompt_id", "extra"]


@st.composite
def _fuzzed_event(draw):
    """A valid event with random fields replaced, deleted or added, or junk."""
    if draw(st.integers(0, 9)) == 0:
        return draw(_junk)
    event = _event(draw(st.integers(0, 10**6)))
    if draw(st.booleans()):
        event.update(type="rating", value=draw(st.integers(0, 11)))
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(_fields))
        if draw(st.integers(0, 4)) == 0:
            event.pop(key, None)
        else:
            event[key] = draw(_junk)
    return event


@settings(max_examples=1000, deadline=None)
@given(events=st.lists(_fuzzed_event(), min_size=1, max_size=3))
def test_fuzzed_events_never_raise_and_counters_add_up(events):
    stream = StreamProcessor(feature_dim=3, num_experts=2)
    assert stream.process(_event(-1)) is not None
    for event in events:
        before = stream.counters()
        ids = {
            i: stream.validate(_event(0, id=i))[1]
            for i in ("evt--1", event.get("id") if isinstance(event, dict) else None)
            if isinstance(i, str) and i
        }
        signal = stream.process(event)
        after = stream.counters()
        assert after["received"] == before["received"] + 1
        assert after["received"] == after["accepted"] + stream.rejected_total
        if signal is None:
            # Only the counters moved: one reason, and no id was remembered.
            assert after["accepted"] == before["accepted"]
            assert stream.rejected_total == sum(before["rejected"].values()) + 1
            assert set(after["rejected"]) <= set(REJECT_REASONS)
            assert {i: stream.validate(_event(0, id=i))[1] for i in ids} == ids
        else:
            assert after["accepted"] == before["accepted"] + 1
            assert after["rejected"] == before["rejected"]
            assert signal.features.dtype == np.float32
            assert signal.features.shape == (3,)
            assert np.all(np.isfinite(signal.features))
            assert math.isfinite(signal.timestamp) and 0.0 <= signal.reward <= 1.0
            assert signal.kind in FEEDBACK_KINDS and 0 <= signal.expert < 2
            assert stream.validate(_event(0, id=signal.event_id))[1] == "duplicate_id"
