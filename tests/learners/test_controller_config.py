"""Configuration, warm-up checkpoints and regularizer options of the controller."""

import os

import jax
import numpy as np
import pytest

from ol_jax.learners.controller import (
    ControllerConfig,
    OnlineLearner,
    load_controller,
    save_controller,
    warmup,
)
from ol_jax.store import ConfigError, load_config

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_SMALL = {"warmup": {"examples": 256, "steps": 20}, "safety": {"canary_per_family": 8}}


def _env(config):
    from ol_jax.learners._controller_env import TaskEnv
    from ol_jax.learners.controller import _env_spec

    return TaskEnv(_env_spec(config))


def test_shipped_config_is_valid_and_errors_name_the_key(tmp_path):
    config = load_config(
        os.path.join(_REPO, "configs", "controller.yaml"), ControllerConfig
    )
    assert config.learning.replay_capacity == 10_000
    assert config.soak.hours == 24.0
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning:\n  learnin_rate: 0.1\nsafety:\n  max_norm_ratio: 0.5\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad, ControllerConfig)
    assert "learning.learnin_rate" in str(err.value)
    assert "safety.max_norm_ratio" in str(err.value)


def test_warmup_from_checkpoint_computes_fisher_there(tmp_path):
    config = ControllerConfig.model_validate(_SMALL)
    env = _env(config)
    controller, fisher = warmup(config, env)
    path = tmp_path / "ctrl.npz"
    save_controller(path, controller)
    loaded = load_controller(path, env)
    jax.tree.map(np.testing.assert_array_equal, loaded, controller)
    again, fisher2 = warmup(config, env, controller=loaded)
    jax.tree.map(np.testing.assert_array_equal, again, controller)
    jax.tree.map(np.testing.assert_allclose, fisher2, fisher)
    assert all(np.all(np.asarray(f) >= 0) for f in jax.tree.leaves(fisher))
    assert sum(float(np.sum(f)) for f in jax.tree.leaves(fisher)) > 0
    np.savez(tmp_path / "bad.npz", w=np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="'b'|'w'"):
        load_controller(tmp_path / "bad.npz", env)


@pytest.mark.parametrize("regularizer", ["ewc", "prox"])
def test_online_fisher_and_prox_options(regularizer):
    config = ControllerConfig.model_validate(
        {
            **_SMALL,
            "learning": {"online_fisher": True, "update_every": 16, "replay_batch": 8},
        }
    )
    env = _env(config)
    controller, fisher = warmup(config, env)
    learner = OnlineLearner(
        config, env, controller, fisher, regularizer=regularizer, use_canary=False
    )
    rng = np.random.default_rng(0)
    examples = [
        {
            "x": rng.standard_normal(16).astype(np.float32),
            "expert": int(i % 4),
            "target": float(i % 2),
            "weight": 1.0,
        }
        for i in range(16)
    ]
    record = learner.update(examples)
    assert record["accepted"]
    new_fisher = learner.state["online"].extras["fisher"]
    changed = [
        not np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(
            jax.tree.leaves(new_fisher), jax.tree.leaves(fisher), strict=True
        )
    ]
    # Online Fisher is folded in only for EWC.
    assert any(changed) == (regularizer == "ewc")
    assert np.isfinite(record["loss"])
    with pytest.raises(ValueError, match="regularizer"):
        OnlineLearner(config, env, controller, fisher, regularizer="l2")
