"""Tests for the canary gate, drift measures and the between-prompts policy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ol_jax.safety import (
    BetweenPromptsPolicy,
    canary_gate,
    drift_check,
    init_spike_stats,
    loss_spike_gate,
    output_kl,
    param_norm_ratio,
)

_finite = st.floats(-10.0, 10.0, width=32)


def test_canary_accepts_improvement_rejects_regression():
    base = {"a": jnp.float32(0.8), "b": jnp.float32(0.5)}
    better = {"a": jnp.float32(0.81), "b": jnp.float32(0.5)}
    worse = {"a": jnp.float32(0.9), "b": jnp.float32(0.49)}
    assert bool(canary_gate(base, better).accept)
    decision = canary_gate(base, worse, 0.005)
    assert not bool(decision.accept)
    np.testing.assert_allclose(float(decision.regressions["b"]), 0.01, rtol=1e-4)
    np.testing.assert_allclose(float(decision.worst), 0.005, rtol=1e-3)
    assert bool(canary_gate(base, worse, 0.02).accept)
    # Per-metric tolerances.
    assert bool(canary_gate(base, worse, {"a": 0.0, "b": 0.02}).accept)
    # Lower is better (losses).
    assert not bool(canary_gate(base, better, higher_is_better=False).accept)


def test_canary_rejects_non_finite_candidate():
    base = {"a": jnp.float32(0.8)}
    for bad in (jnp.nan, jnp.inf, -jnp.inf):
        assert not bool(canary_gate(base, {"a": jnp.float32(bad)}, 1.0).accept)


@settings(max_examples=20)
@given(
    b=st.lists(_finite, min_size=3, max_size=3),
    c=st.lists(_finite, min_size=3, max_size=3),
    tol=st.floats(0.0, 1.0, width=32),
)
def test_canary_property_jit_equals_eager(b, c, tol):
    base = {f"m{i}": jnp.float32(v) for i, v in enumerate(b)}
    cand = {f"m{i}": jnp.float32(v) for i, v in enumerate(c)}
    eager = canary_gate(base, cand, tol)
    jitted = jax.jit(canary_gate)(base, cand, tol)
    jax.tree.map(np.testing.assert_array_equal, eager, jitted)
    expected = all(
        bv - cv <= np.float32(tol)
        for bv, cv in zip(np.float32(b), np.float32(c), strict=True)
    )
    assert bool(eager.accept) == expected
    assert eager.worst.dtype == jnp.float32


def test_canary_bad_inputs():
    with pytest.raises(ValueError, match="structure"):
        canary_gate({"a": 1.0}, {"b": 1.0})
    with pytest.raises(ValueError, match="scalars"):
        canary_gate({"a": jnp.zeros(2)}, {"a": jnp.zeros(2)})
    with pytest.raises(ValueError, match="at least one"):
        canary_gate({}, {})


@settings(max_examples=20)
@given(
    x=st.lists(_finite, min_size=12, max_size=12),
    y=st.lists(_finite, min_size=12, max_size=12),
)
def test_output_kl_properties(x, y):
    old = jnp.asarray(x, jnp.float32).reshape(4, 3)
    new = jnp.asarray(y, jnp.float32).reshape(4, 3)
    before = np.array(old)
    kl = output_kl(old, new)
    assert kl.dtype == jnp.float32 and np.isfinite(float(kl)) and float(kl) >= 0.0
    np.testing.assert_allclose(
        float(jax.jit(output_kl)(old, new)), float(kl), rtol=1e-5, atol=1e-6
    )
    assert float(output_kl(old, old)) <= 1e-6
    # Shifting logits by a constant leaves the distribution unchanged.
    assert float(output_kl(old, old + 3.0)) <= 1e-5
    np.testing.assert_array_equal(np.asarray(old), before)
    p = jax.nn.softmax(old, axis=-1)
    ref = np.mean(
        np.sum(
            np.asarray(p)
            * (np.log(np.asarray(p)) - np.asarray(jax.nn.log_softmax(new, axis=-1))),
            axis=-1,
        )
    )
    np.testing.assert_allclose(float(kl), max(ref, 0.0), rtol=1e-3, atol=1e-5)


def test_param_norm_ratio_and_drift_check():
    ref = {"w": jnp.ones((3,), jnp.float32), "b": jnp.zeros((), jnp.float32)}
    assert float(param_norm_ratio(ref, ref)) == 1.0
    doubled = jax.tree.map(lambda x: 2 * x, ref)
    np.testing.assert_allclose(float(param_norm_ratio(doubled, ref)), 2.0, rtol=1e-6)
    zero = jax.tree.map(jnp.zeros_like, ref)
    assert float(param_norm_ratio(zero, zero)) == 1.0
    assert np.isinf(float(param_norm_ratio(ref, zero)))
    assert not bool(drift_check(0.01, 1.1, max_kl=0.1, max_norm_ratio=1.5).drifted)
    assert bool(drift_check(0.2, 1.0, max_kl=0.1, max_norm_ratio=1.5).drifted)
    assert bool(drift_check(0.0, 1.6, max_kl=0.1, max_norm_ratio=1.5).drifted)
    assert bool(drift_check(0.0, 0.6, max_kl=0.1, max_norm_ratio=1.5).drifted)
    assert bool(drift_check(jnp.nan, 1.0, max_kl=0.1, max_norm_ratio=1.5).drifted)
    with pytest.raises(ValueError, match="max_kl"):
        drift_check(0.0, 1.0, max_kl=0.0, max_norm_ratio=1.5)
    with pytest.raises(ValueError, match="max_norm_ratio"):
        drift_check(0.0, 1.0, max_kl=0.1, max_norm_ratio=1.0)
    with pytest.raises(ValueError, match="matching"):
        output_kl(jnp.zeros((2, 3)), jnp.zeros((3, 3)))


def test_between_prompts_policy_queues_mid_turn():
    policy = BetweenPromptsPolicy(max_queue=3)
    policy.submit(1)
    policy.begin_prompt()
    policy.submit(2)
    assert policy.in_prompt and policy.drain() == [] and policy.pending == 2
    policy.end_prompt()
    assert policy.deferred == 1
    assert policy.drain(max_items=1) == [1]
    policy.extend([3, 4, 5])
    assert policy.dropped == 1 and policy.drain() == [3, 4, 5]
    with pytest.raises(ValueError, match="no prompt"):
        policy.end_prompt()
    with pytest.raises(ValueError, match="max_queue"):
        BetweenPromptsPolicy(max_queue=0)


def test_loss_spike_gate_flags_outliers_and_adapts():
    gate = jax.jit(lambda loss, stats: loss_spike_gate(loss, stats, z=4.0, warmup=4))
    stats = init_spike_stats()
    rng = np.random.default_rng(0)
    for v in 0.3 + 0.02 * rng.standard_normal(20):
        ok, stats = gate(jnp.float32(v), stats)
        assert bool(ok)
    np.testing.assert_allclose(float(stats.mean), 0.3, atol=0.03)
    # A poisoned batch: far above the running level.
    ok, after = gate(jnp.float32(3.0), stats)
    assert not bool(ok)
    # Clipped update: one outlier barely moves the mean, and a burst of them
    # never widens the spread (so it cannot talk the gate into accepting it).
    assert float(after.mean) < 0.35
    burst = stats
    for _ in range(6):
        ok, burst = gate(jnp.float32(3.0), burst)
        assert not bool(ok)
    assert float(burst.var) == float(stats.var)
    # NaN never passes and leaves the statistics alone.
    ok, same = gate(jnp.float32(jnp.nan), stats)
    assert not bool(ok)
    jax.tree.map(np.testing.assert_array_equal, same, stats)
    # A lasting shift to a higher loss level is accepted again after a while.
    accepted = []
    for _ in range(80):
        ok, stats = gate(jnp.float32(0.6), stats)
        accepted.append(bool(ok))
    assert not accepted[0] or accepted[-1]
    assert all(accepted[-10:])
    # Eager equals jit.
    eager = loss_spike_gate(jnp.float32(0.5), stats, z=4.0, warmup=4)
    jitted = gate(jnp.float32(0.5), stats)
    jax.tree.map(np.testing.assert_allclose, eager, jitted)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"z": 0.0}, "z"),
        ({"decay": 1.0}, "decay"),
        ({"min_std": -1.0}, "min_std"),
        ({"warmup": 0}, "warmup"),
    ],
)
def test_loss_spike_gate_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        loss_spike_gate(0.1, init_spike_stats(), **kwargs)
