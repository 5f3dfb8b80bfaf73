"""Tests for the network config schema and the YAML loader's error messages."""

import math
import pathlib
import re

import pydantic
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from ol_jax.store import (
    ConfigError,
    ConfigSection,
    ModelConfig,
    NetworkConfig,
    OnlineLearningConfig,
    StoreConfig,
    load_config,
    load_network_config,
    validate_config,
)

REPO = pathlib.Path(__file__).resolve().parents[2]


def _write(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(tmp_path, text) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_network_config(_write(tmp_path, text))
    return info.value


def test_defaults_match_seed_000():
    cfg = OnlineLearningConfig()
    assert cfg.enabled is True
    assert cfg.learning_rate == 0.001
    assert cfg.gradient_clip_norm == 1.0
    assert cfg.finetune_layers == ["decoder.3", "decoder.4"]
    assert cfg.feedback_scale == "linear"
    assert cfg.update_frequency == "per_rating"
    assert cfg.batch_size == 4
    assert cfg.min_ratings_before_update == 3
    assert cfg.weight_clamp == (-5.0, 5.0)
    assert cfg.weight_decay == 1e-4
    assert cfg.baseline_decay == 0.9
    assert ModelConfig().style_z_dim == 64 and ModelConfig().image_size == 32
    assert StoreConfig() == StoreConfig(
        max_to_keep=None, async_writes=True, queue_size=8
    )


@pytest.mark.parametrize(
    "rel", ["configs/glyph.yaml", "networks/glyph-demo/config.yaml"]
)
def test_shipped_configs_load(rel):
    cfg = load_network_config(REPO / rel)
    assert isinstance(cfg, NetworkConfig)
    # The documented template states exactly the defaults.
    if rel == "configs/glyph.yaml":
        assert cfg == NetworkConfig(network_id="glyph")
    else:
        assert cfg.network_id == "glyph-demo"


def test_seed_block_parses_and_yaml_exponent_floats(tmp_path):
    text = """
network_id: n
online_learning:
  enabled: true
  learning_rate: 0.001
  gradient_clip_norm: 1.0
  finetune_layers: ["decoder.3", "decoder.4"]
  feedback_scale: "nonlinear"
  update_frequency: "batched"
  weight_decay: 1e-4
"""
    cfg = load_network_config(_write(tmp_path, text))
    assert cfg.online_learning.feedback_scale == "nonlinear"
    assert cfg.online_learning.update_frequency == "batched"
    # YAML 1.1 would read `1e-4` as a string; we read it as a float.
    assert cfg.online_learning.weight_decay == 1e-4


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "network_id: n\nonline_learning:\n  learning_rate: -1\n",
            r"online_learning\.learning_rate: must be > 0, got -1",
        ),
        (
            "network_id: n\nonline_learning:\n  lerning_rate: 0.1\n",
            r"online_learning\.lerning_rate: unknown key \(did you mean "
            r"'learning_rate'\?\)",
        ),
        (
            "network_id: n\nmodle: {}\n",
            r"modle: unknown key \(did you mean 'model'\?\)",
        ),
        (
            "network_id: n\nonline_learning:\n  feedback_scale: cubic\n",
            r"online_learning\.feedback_scale: must be one of 'linear' or "
            r"'nonlinear', got 'cubic'",
        ),
        (
            "network_id: n\nonline_learning:\n  update_frequency: hourly\n",
            r"online_learning\.update_frequency: must be one of",
        ),
        (
            "network_id: n\nonline_learning:\n  weight_clamp: [5, -5]\n",
            r"online_learning\.weight_clamp: must be \[lo, hi\] with finite lo < hi, "
            r"got \[5\.0, -5\.0\]",
        ),
        (
            "network_id: n\nonline_learning:\n  weight_clamp: [1, 1]\n",
            r"online_learning\.weight_clamp: must be \[lo, hi\]",
        ),
        (
            "network_id: n\nonline_learning:\n  baseline_decay: 1.0\n",
            r"online_learning\.baseline_decay: must be < 1, got 1\.0",
        ),
        (
            "network_id: n\nonline_learning:\n  batch_size: 0\n",
            r"online_learning\.batch_size: must be >= 1, got 0",
        ),
        (
            "network_id: n\nonline_learning:\n  batch_size: many\n",
            r"online_learning\.batch_size: expected an integer, got 'many'",
        ),
        (
            "network_id: n\nonline_learning:\n  gradient_clip_norm: .inf\n",
            r"online_learning\.gradient_clip_norm: must be finite",
        ),
        (
            "network_id: n\nonline_learning:\n  finetune_layers: []\n",
            r"online_learning\.finetune_layers: must name at least one layer",
        ),
        (
            "network_id: n\nstore:\n  max_to_keep: 0\n",
            r"store\.max_to_keep: must be >= 1",
        ),
        (
            "network_id: n\nstore:\n  queue_size: 0\n",
            r"store\.queue_size: must be >= 1",
        ),
        (
            "network_id: n\nmodel:\n  hidden: [8, 0, 4]\n",
            r"model\.hidden\[1\]: must be >= 1, got 0",
        ),
        ("network_id: n\nmodel:\n  hidden: [8, 4]\n", r"model\.hidden\[2\]: required"),
        (
            "network_id: n\nonline_learning:\n  pixel_noise_std: 0\n",
            r"online_learning\.pixel_noise_std: must be > 0, got 0",
        ),
        ("network_id: n\nseed: -3\n", r"seed: must be >= 0, got -3"),
        ("seed: 1\n", r"network_id: required key is missing"),
        ("network_id: 'bad id'\n", r"network_id: must match"),
        ("- 1\n- 2\n", r"<root>: expected a mapping, got list"),
        ("network_id: n\nseed: 1\nseed: 2\n", r"duplicate key 'seed'"),
        ("network_id: [unclosed\n", r"<root>: invalid YAML at line"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, expected):
    err = _error(tmp_path, text)
    assert isinstance(err, ValueError)
    assert re.search(expected, str(err)), str(err)
    assert str(tmp_path / "config.yaml") in str(err)


def test_all_problems_reported_at_once(tmp_path):
    err = _error(
        tmp_path,
        "network_id: n\nonline_learning:\n  learning_rate: 0\n  oops: 1\n"
        "store:\n  queue_size: -2\n",
    )
    keys = sorted(key for key, _ in err.problems)
    assert keys == [
        "online_learning.learning_rate",
        "online_learning.oops",
        "store.queue_size",
    ]


def test_missing_file(tmp_path):
    path = tmp_path / "nope" / "config.yaml"
    with pytest.raises(ConfigError, match=r"config file not found") as info:
        load_network_config(path)
    assert str(path) in str(info.value)


def test_empty_file_reports_missing_network_id(tmp_path):
    err = _error(tmp_path, "")
    assert err.problems == [("network_id", "required key is missing")]


class _ChatConfig(pydantic.BaseModel):
    """A learner's own schema, as other subpackages will define them."""

    model_config = pydantic.ConfigDict(extra="forbid")

    class Lora(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        rank: int = pydantic.Field(default=8, ge=1)

    temperature: float = pydantic.Field(default=0.7, ge=0)
    lora: Lora = pydantic.Field(default_factory=Lora)


def test_load_config_generic_schema(tmp_path):
    cfg = load_config(
        _write(tmp_path, "temperature: 0.2\nlora: {rank: 4}\n"), _ChatConfig
    )
    assert cfg.temperature == 0.2 and cfg.lora.rank == 4
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, "lora: {rank: 0, alpha: 2}\n"), _ChatConfig)
    assert info.value.problems == [
        ("lora.rank", "must be >= 1, got 0"),
        ("lora.alpha", "unknown key; allowed keys: rank"),
    ]


def test_validate_config_from_mapping():
    cfg = validate_config(
        {"network_id": "x", "store": {"max_to_keep": 3}}, NetworkConfig
    )
    assert cfg.store.max_to_keep == 3
    with pytest.raises(ConfigError, match=r"invalid config demo:\n  store\.async"):
        validate_config(
            {"network_id": "x", "store": {"async": True}}, NetworkConfig, source="demo"
        )


def test_dump_round_trip(tmp_path):
    cfg = NetworkConfig(
        network_id="rt",
        seed=4,
        online_learning={"learning_rate": 0.5, "weight_clamp": [-1, 2]},
        store={"max_to_keep": 2},
    )
    text = yaml.safe_dump(cfg.model_dump(mode="json"))
    assert load_network_config(_write(tmp_path, text)) == cfg


@given(lr=st.floats(allow_nan=True, allow_infinity=True, width=64))
def test_learning_rate_valid_iff_positive_finite(lr):
    data = {"network_id": "p", "online_learning": {"learning_rate": lr}}
    if lr > 0 and math.isfinite(lr):
        assert validate_config(data, NetworkConfig).online_learning.learning_rate == lr
    else:
        with pytest.raises(ConfigError) as info:
            validate_config(data, NetworkConfig)
        assert [k for k, _ in info.value.problems] == ["online_learning.learning_rate"]


@given(
    lo=st.floats(-10, 10, allow_nan=False),
    hi=st.floats(-10, 10, allow_nan=False),
)
def test_weight_clamp_valid_iff_ordered(lo, hi):
    data = {"network_id": "p", "online_learning": {"weight_clamp": [lo, hi]}}
    if lo < hi:
        assert validate_config(data, NetworkConfig).online_learning.weight_clamp == (
            lo,
            hi,
        )
    else:
        with pytest.raises(ConfigError, match=r"online_learning\.weight_clamp"):
            validate_config(data, NetworkConfig)


def test_config_is_immutable():
    cfg = NetworkConfig(network_id="x")
    with pytest.raises(pydantic.ValidationError):
        cfg.seed = 3


class _Probe(ConfigSection):
    rate: float = 1.0
    count: int = 2


@given(value=st.floats(allow_nan=True, allow_infinity=True, width=64))
def test_config_section_floats_valid_iff_finite(value):
    if math.isfinite(value):
        assert validate_config({"rate": value}, _Probe).rate == value
    else:
        with pytest.raises(ConfigError) as info:
            validate_config({"rate": value}, _Probe)
        assert info.value.problems == [("rate", f"must be finite, got {value!r}")]


def test_config_section_rejects_unknown_keys_and_bad_defaults():
    with pytest.raises(
        ConfigError, match=r"rat: unknown key \(did you mean 'rate'\?\)"
    ):
        validate_config({"rat": 2.0}, _Probe)

    class BadDefault(ConfigSection):
        count: int = "many"  # type: ignore[assignment]

    with pytest.raises(pydantic.ValidationError):
        BadDefault()
    with pytest.raises(pydantic.ValidationError):
        _Probe().rate = 2.0  # frozen
