"""Acceptance tests of the seed-003 controller learner on a shortened soak.

One simulated hour (3,600 events) still holds the distribution shift (at 30
minutes), 5% noisy feedback, two poisoned bursts and NaN / malformed events.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from ol_jax.cli._main import main
from ol_jax.learners.controller import (
    ControllerConfig,
    OnlineLearner,
    run_soak,
    scaled_poison_bursts,
    soak_failures,
)
from ol_jax.store import NetworkConfig, RunStore, read_run_metadata

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_SHORT = {
    "soak": {
        "hours": 1.0,
        "poison_bursts": 2,
        "poison_burst_length": 96,
        "nan_rate": 0.005,
        "malformed_rate": 0.005,
        "save_every_events": 450,
        "eval_every_events": 900,
        "eval_per_family": 64,
    },
    "warmup": {"examples": 1024, "steps": 150},
    "safety": {"canary_per_family": 32, "probes": 64},
    "store": {"max_to_keep": 4},
}


def _config():
    return ControllerConfig.model_validate(_SHORT)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("soak_full")
    return out, run_soak(_config(), None, out, plot=True)


def test_soak_acceptance(full_run):
    out, report = full_run
    assert report["events"] == 3600
    assert report["aggregate_improvement_pct"] >= 1.0
    assert report["accepted_canary_regressions"] == 0
    assert report["saved_versions_finite"]
    assert len(report["bursts"]) == 2
    for burst in report["bursts"]:
        # Every update made mostly of poisoned feedback was rejected (or rolled
        # back); none of them is in the final weights.
        assert burst["majority_poisoned_updates"] >= 1
        assert burst["majority_poisoned_kept"] == 0
    assert report["all_bursts_handled"]
    stream = report["stream"]
    assert stream["received"] == 3600
    assert stream["accepted"] + sum(stream["rejected"].values()) == 3600
    assert stream["rejected"].get("non_finite", 0) > 0
    assert report["rejected_updates"] > 0
    # One reason per rejected update.
    assert sum(report["rejected_by"].values()) == report["rejected_updates"]
    assert report["updates_in_report"] == report["updates"]
    # The curves start at the warm-up checkpoint's score.
    assert report["timeline"][0]["events"] == 0
    assert report["timeline"][0]["task_score"] == report["aggregate_start"]
    assert os.path.getsize(out / "report.png") > 0
    with open(out / "report.json") as f:
        assert json.load(f)["events"] == 3600
    # Every valid event was journaled once before it was learned from.
    net = NetworkConfig(network_id="controller-soak")
    with RunStore(out / "networks", "controller-soak", config=net) as store:
        records = store.feedback_records("soak")
    assert len(records) == stream["accepted"]
    assert len({r["id"] for r in records}) == len(records)


def test_ewc_halves_forgetting(tmp_path):
    # Same stream, no canary gate and no replay, EWC on vs off: the pre-shift
    # families' score must drop at least 50% less with EWC.
    drops = {}
    for reg in ("none", "ewc"):
        report = run_soak(
            _config(),
            None,
            tmp_path / reg,
            plot=False,
            regularizer=reg,
            use_replay=False,
            use_canary=False,
        )
        drops[reg] = report["pre_shift_drop"]
    assert drops["none"] > 0.01, drops
    assert drops["ewc"] <= 0.5 * drops["none"], drops


def test_sigkill_resume_counts_each_event_once(full_run, tmp_path):
    _, reference = full_run
    config_path = tmp_path / "controller.yaml"
    config_path.write_text(yaml.safe_dump(_SHORT))
    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=_REPO)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ol_jax.cli._soak",
            "--config",
            str(config_path),
            "--out",
            str(out),
            "--no-plot",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    run_dir = out / "networks" / "controller-soak" / "runs" / "soak"
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        try:
            entries = read_run_metadata(run_dir)["entries"]
        except (OSError, ValueError, KeyError):
            entries = []
        done = [e["events_processed"] for e in entries if "events_processed" in e]
        if done and 900 <= max(done) < 3600:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed_at = max(done)
            break
        time.sleep(0.05)
    if killed_at is None:
        proc.kill()
        pytest.fail(
            f"soak subprocess never reached a mid-run save: {proc.stderr.read()}"
        )
    resumed = run_soak(config_path, None, out, plot=False, resume=True)
    assert resumed["events_this_process"] <= 3600 - killed_at
    for key in (
        "stream",
        "updates",
        "accepted_updates",
        "rejected_updates",
        "rejected_by",
        "accepted_canary_regressions",
        "rollbacks",
        "rollback_events",
        # From the update records kept on disk across the crash:
        "bursts",
        "all_bursts_handled",
        "max_accepted_canary_drop",
    ):
        assert resumed[key] == reference[key], key
    assert sum(resumed["rejected_by"].values()) == resumed["rejected_updates"]
    assert resumed["updates_in_report"] == resumed["updates"]
    assert resumed["final_family_scores"] == reference["final_family_scores"]
    # Events journaled after the last save were applied from the journal, not
    # fed (and journaled) again.
    net = NetworkConfig(network_id="controller-soak")
    with RunStore(out / "networks", "controller-soak", config=net) as store:
        records = store.feedback_records("soak")
    assert len(records) == resumed["stream"]["accepted"]
    assert len({r["id"] for r in records}) == len(records)


def _learner(tmp_path, config=None):
    config = config or _config()
    from ol_jax.learners._controller_env import TaskEnv
    from ol_jax.learners.controller import _env_spec, warmup

    env = TaskEnv(_env_spec(config))
    controller, fisher = warmup(config, env)
    store = RunStore(tmp_path, "drill", config=NetworkConfig(network_id="drill"))
    store.start_run("r")
    return OnlineLearner(config, env, controller, fisher, store=store), store


def test_forced_drift_rolls_back_bit_exactly(tmp_path):
    learner, store = _learner(tmp_path)
    version = learner.save(reason="start")
    saved = jax.tree.map(np.array, learner.controller)
    saved_tree = store.restore(version)
    assert learner.check_drift()["drifted"] is False
    learner.force_params(jax.tree.map(lambda a: a * 3.0 + 1.0, learner.controller))
    drift = learner.check_drift()
    assert drift["drifted"] and drift["norm_ratio"] > 1.5
    new_version = learner.rollback(reason="forced drift")
    assert new_version > version and learner.rollbacks == 1
    jax.tree.map(np.testing.assert_array_equal, learner.controller, saved)
    now = learner._tree_to_save()["leaves"]
    for k, v in saved_tree["leaves"].items():
        np.testing.assert_array_equal(np.asarray(now[k]), np.asarray(v))
    assert learner.check_drift()["drifted"] is False
    store.close()


def test_updates_wait_between_prompts_and_nan_batches_are_skipped(tmp_path):
    learner, store = _learner(tmp_path)
    learner.save()
    b = learner.config.learning.update_every
    example = {"x": np.zeros(16, np.float32), "expert": 0, "target": 1.0, "weight": 1.0}
    learner.begin_prompt()
    learner.policy.extend([example] * b)
    assert learner.maybe_update() == [] and learner.updates == 0
    learner.end_prompt()
    assert len(learner.maybe_update()) == 1 and learner.updates == 1
    before = jax.tree.map(np.array, learner.controller)
    poisoned = [dict(example, target=float("nan"))] * b
    record = learner.update(poisoned)
    assert not record["accepted"]
    jax.tree.map(np.testing.assert_array_equal, learner.controller, before)
    version = learner.save()
    for leaf in store.restore(version)["leaves"].values():
        a = np.asarray(leaf)
        assert a.dtype.kind != "f" or np.all(np.isfinite(a))
    # Base and expert weights never change.
    for part in ("base", "experts"):
        jax.tree.map(
            np.testing.assert_array_equal,
            learner.params[part],
            learner.env.params[part],
        )
    assert jnp.all(jnp.isfinite(learner.controller["w"]))
    store.close()


# A small, fast soak: 180 events (three minutes simulated).
_TINY = {
    "soak": {"hours": 0.05, "eval_per_family": 16, "poison_burst_length": 32},
    "warmup": {"examples": 256, "steps": 30},
    "safety": {"canary_per_family": 16, "probes": 16},
    "store": {"max_to_keep": 2},
}


def test_existing_out_is_refused_without_resume(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(_TINY))
    out = tmp_path / "out"
    argv = ["soak", "--config", str(config), "--out", str(out), "--no-plot"]
    assert main([*argv, "--json"]) in (0, 1)
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = json.loads((out / "report.json").read_text())
    run_dir = out / "networks" / "controller-soak" / "runs" / "soak"
    versions = read_run_metadata(run_dir)["versions"]

    # Again without --resume: refused, the old run and its report untouched.
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "already holds a soak run" in err and "--resume" in err
    assert "another --out" in err
    assert read_run_metadata(run_dir)["versions"] == versions
    assert json.loads((out / "report.json").read_text()) == report
    with pytest.raises(ValueError, match="--resume"):
        run_soak(str(config), None, out, plot=False)

    # With --resume the finished run is reported again, nothing re-processed.
    assert main([*argv, "--resume", "--json"]) in (0, 1)
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("events", "accepted_updates", "rejected_updates", "rejected_by"):
        assert again[key] == first[key], key


def test_quarter_hour_soak_learns_and_explains_its_exit(tmp_path, capsys):
    # The shipped config, a quarter of an hour. Its poisoned bursts, saves and
    # evaluations scale with the run: before, six bursts covered 3/4 of the
    # stream, every update was rejected, a rollback returned to the start, and
    # the run exited 1 with "+0.0%" and no reason.
    out = tmp_path / "q"
    config = os.path.join(_REPO, "configs", "controller.yaml")
    rc = main(["soak", "--config", config, "--hours", "0.25", "--out", str(out)])
    captured = capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    assert report["events"] == 900 and report["poison_bursts"] == 1
    assert report["accepted_updates"] > 0
    assert report["aggregate_improvement_pct"] >= 1.0
    assert sum(report["rejected_by"].values()) == report["rejected_updates"]
    assert len(report["timeline"]) >= 10
    assert os.path.getsize(out / "report.png") > 0
    assert "task score (start -> final)" in captured.out
    failures = soak_failures(report)
    if rc == 0:
        assert not failures and "all acceptance checks passed" in captured.out
    else:
        assert rc == 1 and failures and "failed:" in captured.out
        flat = " ".join(captured.out.split())
        for reason in failures:
            assert " ".join(reason.split()) in flat


@given(
    bursts=st.integers(0, 50),
    config_hours=st.floats(0.01, 100),
    hours=st.one_of(st.none(), st.floats(0.001, 1000)),
)
def test_scaled_poison_bursts(bursts, config_hours, hours):
    config = ControllerConfig.model_validate(
        {"soak": {"poison_bursts": bursts, "hours": config_hours}}
    )
    n = scaled_poison_bursts(config, hours)
    if hours is None or bursts == 0:
        assert n == bursts
    else:
        assert n >= 1
        # The density of bursts per hour is kept to within rounding.
        assert abs(n - bursts * hours / config_hours) <= max(0.5, 1 - 1e-9)


def _report(**changes):
    report = {
        "aggregate_improvement_pct": 5.0,
        "accepted_updates": 3,
        "rejected_updates": 1,
        "updates": 4,
        "rejected_by": {"loss_spike": 1},
        "rollbacks": 0,
        "accepted_canary_regressions": 0,
        "bursts": [{"start_event": 0, "end_event": 9, "majority_poisoned_kept": 0}],
        "saved_versions_finite": True,
        "shift_at_event": 100,
    }
    report.update(changes)
    return report


@given(
    pct=st.floats(-100, 100),
    accepted=st.integers(0, 5),
    regressions=st.integers(0, 3),
    kept=st.integers(0, 3),
    finite=st.booleans(),
    rollbacks=st.integers(0, 2),
)
def test_soak_failures_names_every_failed_check(
    pct, accepted, regressions, kept, finite, rollbacks
):
    report = _report(
        aggregate_improvement_pct=pct,
        accepted_updates=accepted,
        accepted_canary_regressions=regressions,
        bursts=[{"start_event": 5, "end_event": 9, "majority_poisoned_kept": kept}],
        saved_versions_finite=finite,
        rollbacks=rollbacks,
    )
    reasons = soak_failures(report)
    expected = (pct < 1.0) + (regressions > 0) + (kept > 0) + (not finite)
    assert len(reasons) == expected
    text = " ".join(reasons)
    if pct < 1.0 and accepted == 0:
        assert "no update was accepted" in text and "loss_spike 1" in text
    elif pct < 1.0 and rollbacks:
        assert "rollbacks" in text
    if kept:
        assert "events 5-9" in text
        assert "shift" not in text  # the burst came before the shift


@given(start=st.integers(100, 199))
def test_soak_failures_explains_a_burst_right_after_the_shift(start):
    burst = {"start_event": start, "end_event": start + 9, "majority_poisoned_kept": 1}
    (reason,) = soak_failures(_report(bursts=[burst]))
    assert f"{start - 100} events after the distribution shift" in reason


def test_resume_applies_journaled_events_once_and_does_not_feed_them_again(tmp_path):
    """A run stopped between saves resumes to what an unstopped run computes,
    and the journal lists every valid event once."""
    config = ControllerConfig.model_validate({**_TINY, "learning": {"update_every": 8}})
    reference = run_soak(config, None, tmp_path / "ref", plot=False)

    class _Stop(Exception):
        pass

    def stop_between_saves(pos, n, learner):
        # Saves are due every 22 events (turns of 8): the one at 24 is the last
        # before the stop, the events of 32 and 40 are journaled after it.
        if pos == 40:
            learner.store.close()  # (a crash would leave the run locked)
            raise _Stop

    out = tmp_path / "stopped"
    with pytest.raises(_Stop):
        run_soak(config, None, out, plot=False, on_progress=stop_between_saves)
    meta = read_run_metadata(out / "networks" / "controller-soak" / "runs" / "soak")
    (saved,) = [
        e["journal_position"]
        for e in meta["entries"]
        if e["version"] == meta["current_version"]
    ]
    net = NetworkConfig(network_id="controller-soak")
    with RunStore(out / "networks", "controller-soak", config=net) as store:
        journaled = len(store.feedback_records("soak"))
    assert journaled > saved  # some events were acknowledged after the save
    resumed = run_soak(config, None, out, plot=False, resume=True)
    assert resumed["events_this_process"] == reference["events"] - 40
    for key in ("stream", "updates", "rejected_by", "rollbacks", "bursts"):
        assert resumed[key] == reference[key], key
    assert resumed["final_family_scores"] == reference["final_family_scores"]
    with RunStore(out / "networks", "controller-soak", config=net) as store:
        records = store.feedback_records("soak")
    assert len(records) == resumed["stream"]["accepted"]
    assert len({r["id"] for r in records}) == len(records)
