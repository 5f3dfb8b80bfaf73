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

from ol_jax.learners.controller import ControllerConfig, OnlineLearner, run_soak
from ol_jax.store import NetworkConfig, RunStore

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
            "ol_jax.learners.controller",
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
    meta = out / "networks" / "controller-soak" / "runs" / "soak" / "run_metadata.json"
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        try:
            entries = json.loads(meta.read_text())["entries"]
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
        "rollbacks",
    ):
        assert resumed[key] == reference[key], key
    assert resumed["final_family_scores"] == reference["final_family_scores"]


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
