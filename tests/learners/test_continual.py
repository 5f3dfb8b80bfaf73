"""Continual-learning metrics: BWT (GEM), forgetting (RWalk), plasticity and
stability measures."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ol_jax.learners import (
    PlasticityMetrics,
    StabilityMetrics,
    backward_transfer,
    forgetting,
    plasticity_metrics,
    stability_metrics,
)

NAN = float("nan")


def _lower(r):
    r = np.array(r, dtype=np.float64)
    r[np.triu_indices(r.shape[0], k=1)] = np.nan
    return r


@st.composite
def accuracy_matrices(draw, max_tasks=6):
    t = draw(st.integers(1, max_tasks))
    r = draw(hnp.arrays(np.float64, (t, t), elements=st.floats(0, 1, allow_nan=False)))
    return _lower(r)


def test_hand_computed_example():
    r = [[0.9, NAN, NAN], [0.6, 0.8, NAN], [0.7, 0.4, 1.0]]
    # BWT = ((0.7 - 0.9) + (0.4 - 0.8)) / 2
    assert backward_transfer(r) == pytest.approx(-0.3)
    # forgetting: task 0 best 0.9 -> 0.7 (0.2); task 1 best 0.8 -> 0.4 (0.4).
    assert forgetting(r) == pytest.approx(0.3)
    r = [[0.2, NAN, NAN], [0.9, 0.5, NAN], [0.7, 0.5, 1.0]]
    # task 0 peaked after task 1 (0.9), so forgetting exceeds -BWT.
    assert backward_transfer(r) == pytest.approx(0.25)
    assert forgetting(r) == pytest.approx(0.1)


def test_single_task_and_values_above_the_diagonal_are_ignored():
    assert backward_transfer([[0.5]]) == 0.0 and forgetting([[0.5]]) == 0.0
    r = np.array([[0.9, 0.1], [0.6, 0.8]])
    assert backward_transfer(r) == backward_transfer(_lower(r))
    assert forgetting(r) == forgetting(_lower(r))


@pytest.mark.parametrize(
    "r,match",
    [(np.zeros((2, 3)), "square"), (np.zeros((0, 0)), "square"),
     (np.zeros(3), "square"), ([[NAN]], r"R\[0, 0\]"),
     ([[1.0, NAN], [float("inf"), 1.0]], r"R\[1, 0\]")],
)  # fmt: skip
def test_bad_matrices(r, match):
    for fn in (backward_transfer, forgetting):
        with pytest.raises(ValueError, match=match):
            fn(r)


@given(accuracy_matrices())
def test_matrix_properties(r):
    before = r.copy()
    bwt, f = backward_transfer(r), forgetting(r)
    np.testing.assert_array_equal(r, before)  # not mutated
    assert isinstance(bwt, float) and isinstance(f, float)
    assert -1 <= bwt <= 1 and -1 <= f <= 1
    # The best earlier accuracy is at least the one right after learning.
    assert f >= -bwt - 1e-12


@given(accuracy_matrices())
def test_no_change_means_no_forgetting(r):
    # Columns constant from the diagonal down: nothing is forgotten or gained.
    t = r.shape[0]
    flat = _lower(np.tile(np.diag(r)[None, :], (t, 1)))
    assert backward_transfer(flat) == 0.0 and forgetting(flat) == 0.0
    # Columns that never fall: no forgetting, non-negative BWT.
    rising = _lower(np.maximum.accumulate(np.nan_to_num(r, nan=-1.0), axis=0))
    assert forgetting(rising) <= 1e-12
    assert backward_transfer(rising) >= -1e-12


def test_plasticity_hand_computed():
    m = plasticity_metrics([4.0, 4.0, 3.0, 2.0, 1.0], window=2)
    assert isinstance(m, PlasticityMetrics)
    assert m.recent_loss == pytest.approx(1.5)
    # old window [4, 3] -> mean 3.5; new 1.5: (3.5 - 1.5) / 3.5.
    assert m.improvement == pytest.approx(2.0 / 3.5)
    assert m.adaptation_speed == pytest.approx(1.0)
    one = plasticity_metrics([2.0], window=3)
    assert one == PlasticityMetrics(2.0, 0.0, 0.0)
    # A short history uses what there is before the window.
    assert plasticity_metrics([3.0, 1.0, 1.0], window=2).improvement == (
        pytest.approx(2.0 / 3.0)
    )


@pytest.mark.parametrize(
    "losses,window,match",
    [([], 2, "non-empty"), ([1.0, NAN], 2, "finite"), ([1.0], 0, "window"),
     ([1.0], 1.5, "window")],
)  # fmt: skip
def test_plasticity_bad_input(losses, window, match):
    with pytest.raises(ValueError, match=match):
        plasticity_metrics(losses, window=window)


@given(
    st.lists(st.floats(0, 1e3, allow_nan=False), min_size=1, max_size=30),
    st.integers(1, 8),
)
def test_plasticity_properties(losses, window):
    before = list(losses)
    m = plasticity_metrics(losses, window=window)
    assert losses == before
    assert all(np.isfinite(v) and isinstance(v, float) for v in m)
    recent = losses[-window:]
    assert min(recent) - 1e-9 <= m.recent_loss <= max(recent) + 1e-9
    # A constant loss neither improves nor adapts.
    c = plasticity_metrics([losses[0]] * len(losses), window=window)
    assert c.improvement == pytest.approx(0.0, abs=1e-12)
    assert c.adaptation_speed == pytest.approx(0.0, abs=1e-9)
    # A linearly falling loss adapts at its slope.
    falling = [100.0 - 2.0 * i for i in range(len(losses) + 1)]
    assert plasticity_metrics(falling, window=window + 1).adaptation_speed == (
        pytest.approx(2.0)
    )


def test_stability_hand_computed():
    s = stability_metrics([10.0, 11.0, 12.0], 10.0, turns=[5, 10, 20])
    assert isinstance(s, StabilityMetrics)
    assert s.anchor_regression == pytest.approx(0.2)
    assert s.forgetting_rate == pytest.approx(0.1 / 10)
    assert s.perplexity_drift == pytest.approx(np.std([10, 11, 12]) / 10)
    one = stability_metrics(9.0, 10.0)
    assert one.anchor_regression == pytest.approx(-0.1)
    assert one.forgetting_rate == pytest.approx(-0.1)
    assert one.perplexity_drift == 0.0


@pytest.mark.parametrize(
    "ppl,base,turns,match",
    [([], 1.0, None, "anchor_ppl"), ([0.0], 1.0, None, "anchor_ppl"),
     ([NAN], 1.0, None, "anchor_ppl"), ([1.0], 0.0, None, "base_anchor_ppl"),
     ([1.0, 2.0], 1.0, [3, 3], "turns"), ([1.0], 1.0, [0], "turns"),
     ([1.0, 2.0], 1.0, [1], "turns")],
)  # fmt: skip
def test_stability_bad_input(ppl, base, turns, match):
    with pytest.raises(ValueError, match=match):
        stability_metrics(ppl, base, turns=turns)


@given(
    st.lists(st.floats(1.0, 1e4, allow_nan=False), min_size=1, max_size=20),
    st.floats(1.0, 1e4),
)
def test_stability_properties(ppl, base):
    s = stability_metrics(ppl, base)
    assert all(np.isfinite(v) and isinstance(v, float) for v in s)
    assert s.anchor_regression == pytest.approx(ppl[-1] / base - 1)
    assert s.perplexity_drift >= 0
    # At the base perplexity nothing regressed.
    same = stability_metrics([base] * len(ppl), base)
    assert same.anchor_regression == 0.0 and same.forgetting_rate == 0.0
