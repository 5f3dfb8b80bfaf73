"""Every integer setting of every config section is strict and bounded (issue 19).

A typo such as ``image_size: 1e30`` or ``style_z_dim: 2**64`` used to be accepted
and fail later with an opaque XLA error; now every config class refuses it with a
:class:`~ol_jax.store.ConfigError` naming the key.
"""

import copy
import math
import re
from typing import Annotated

import annotated_types
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import Field

import ol_jax.learners  # noqa: F401 (defines the learners' config sections)
from ol_jax.cli._proxy import ProxyNetworkConfig  # the proxy's config is not public
from ol_jax.learners import (
    ChatConfig,
    ControllerConfig,
    LearningConfig,
    TeacherProxyConfig,
)
from ol_jax.store import (
    MAX_DIM,
    ConfigError,
    ConfigSection,
    Dim,
    NetworkConfig,
    check_values,
    load_config,
    validate_config,
)

LEARNER_CONFIGS = {
    "glyph": (NetworkConfig, {"network_id": "glyph"}),
    "chat": (ChatConfig, {}),
    "teacher": (TeacherProxyConfig, {}),
    "proxy": (ProxyNetworkConfig, {}),
    "controller": (ControllerConfig, {}),
}


def _sections() -> list[type]:
    out, todo = [], [ConfigSection]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            # The library's sections, not ones a test file defines.
            if sub.__module__.startswith("ol_jax."):
                out.append(sub)
            todo.append(sub)
    return out


def _int_schemas(schema, path="") -> list[tuple[str, dict]]:
    """Every ``int`` validator in a pydantic core schema, with where it is."""
    found = []
    if isinstance(schema, dict):
        if schema.get("type") == "int":
            found.append((path, schema))
        for key, value in schema.items():
            if key != "metadata":
                found += _int_schemas(value, f"{path}/{key}")
    elif isinstance(schema, list | tuple):
        for i, value in enumerate(schema):
            found += _int_schemas(value, f"{path}[{i}]")
    return found


# ----------------------------------------------------------------- the findings


def _yaml_error(tmp_path, cls, text) -> ConfigError:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, cls)
    return info.value


@pytest.mark.parametrize(
    ("cls", "text", "key", "message"),
    [
        (
            NetworkConfig,
            "model: {image_size: 1e30}",
            "model.image_size",
            "expected an integer, got 1e+30",
        ),
        (
            NetworkConfig,
            "model: {image_size: 1.0e18}",
            "model.image_size",
            "expected an integer, got 1e+18",
        ),
        (
            NetworkConfig,
            f"model: {{style_z_dim: {2**64}}}",
            "model.style_z_dim",
            f"<= {MAX_DIM}",
        ),
        (NetworkConfig, "model: {image_size: 32.0}", "model.image_size", "integer"),
        (NetworkConfig, "model: {hidden: [8, 8, 3.0]}", "model.hidden[2]", "integer"),
        (
            TeacherProxyConfig,
            "generator: {lora_rank: 1e30}",
            "generator.lora_rank",
            "expected an integer, got 1e+30",
        ),
        (
            ChatConfig,
            "model: {lora: {rank: 1e30}}",
            "model.lora.rank",
            "expected an integer, got 1e+30",
        ),
        (ChatConfig, "model: {lora: {rank: 4.0}}", "model.lora.rank", "integer"),
        (
            ChatConfig,
            "generation: {max_new_tokens: 1000000000}",
            "generation.max_new_tokens",
            "<= 8192",
        ),
        (
            ControllerConfig,
            "learning: {replay_capacity: 1e12}",
            "learning.replay_capacity",
            "integer",
        ),
        (ControllerConfig, "soak: {hours: 1e9}", "soak.hours", "<= 168"),
        (NetworkConfig, "seed: 1e30", "seed", "expected an integer, got 1e+30"),
    ],
)
def test_huge_or_float_sizes_are_errors_naming_the_key(
    tmp_path, cls, text, key, message
):
    head = "network_id: n\n" if "network_id" in cls.model_fields else ""
    error = _yaml_error(tmp_path, cls, f"{head}{text}\n")
    assert [k for k, _ in error.problems] == [key]
    assert message in error.problems[0][1]
    assert key in str(error)


def test_learning_config_sizes_checked_by_the_same_types():
    for kwargs, key in [
        ({"buffer_size": 1e30}, "buffer_size"),
        ({"buffer_size": 10**12}, "buffer_size"),
        ({"batch_size": 3.0}, "batch_size"),
        ({"max_length": True}, "max_length"),
        ({"checkpoint_frequency": 0}, "checkpoint_frequency"),
    ]:
        with pytest.raises(ConfigError) as info:
            LearningConfig(**kwargs)
        assert [k for k, _ in info.value.problems] == [key]
    assert LearningConfig(batch_size=None, checkpoint_frequency=None).max_fused == 8


def test_check_values_names_nested_keys():
    with pytest.raises(ConfigError) as info:
        check_values(
            {"widths": [4, 2.5, 2**70]},
            {"widths": list[Annotated[Dim, Field(ge=1)]]},
            source="test",
        )
    assert [k for k, _ in info.value.problems] == ["widths[1]", "widths[2]"]
    assert str(info.value).startswith("invalid config test:")


@pytest.mark.parametrize(
    ("cls", "data", "key"),
    [
        (
            ChatConfig,
            {"chat": {"fact_questions": {"r": ["{subject.x}", "a"]}}},
            "chat.fact_questions",
        ),
        (ChatConfig, {"chat": {"fact_response": "{text} {x.y}"}}, "chat.fact_response"),
        (
            TeacherProxyConfig,
            {"generator": {"prompt_format": "{query} {x}"}},
            "generator",
        ),
    ],
)
def test_bad_format_templates_are_config_errors(cls, data, key):
    # These raised AttributeError out of validate_config, or were accepted and
    # raised KeyError at the first query.
    with pytest.raises(ConfigError) as info:
        validate_config(data, cls)
    assert [k for k, _ in info.value.problems] == [key]


@given(
    value=st.one_of(
        st.integers(-(2**70), 2**70),
        st.floats(),
        st.booleans(),
        st.text(max_size=3),
    )
)
def test_check_values_accepts_exactly_the_ints_in_range(value):
    ok = type(value) is int and 1 <= value <= MAX_DIM
    try:
        check_values({"size": value}, {"size": Annotated[Dim, Field(ge=1)]})
    except ConfigError as error:
        assert not ok and [k for k, _ in error.problems] == ["size"]
    else:
        assert ok


# ----------------------------------------------------------------- every section


@pytest.mark.parametrize("cls", _sections(), ids=lambda c: c.__name__)
def test_every_int_setting_is_strict_and_bounded(cls):
    for where, schema in _int_schemas(cls.__pydantic_core_schema__):
        assert schema.get("strict") is True, f"{cls.__name__}{where}: not strict"
        assert "le" in schema and "ge" in schema, (
            f"{cls.__name__}{where}: needs both bounds, got {schema}"
        )
    # A bound written at the field must not be overridden by its type's bound
    # (pydantic applies the last one): ``x: Dim = Field(le=10)`` would lose le=10.
    for name, field in cls.model_fields.items():
        ge = [m.ge for m in field.metadata if isinstance(m, annotated_types.Ge)]
        le = [m.le for m in field.metadata if isinstance(m, annotated_types.Le)]
        assert not ge or ge[-1] == max(ge), f"{cls.__name__}.{name}: lower bounds {ge}"
        assert not le or le[-1] == min(le), f"{cls.__name__}.{name}: upper bounds {le}"


@pytest.mark.parametrize("name", sorted(LEARNER_CONFIGS))
def test_shipped_defaults_are_valid(name):
    cls, required = LEARNER_CONFIGS[name]
    config = validate_config(required, cls)
    # A valid config survives its own dump (what the run store writes back).
    assert validate_config(config.model_dump(), cls) == config


# ----------------------------------------------------------------- fuzzing


def _paths(tree, prefix=()):
    """Every key path of a dumped config: sections, leaves and list items."""
    yield prefix
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(tree, list | tuple):
        for i, value in enumerate(tree):
            yield from _paths(value, (*prefix, i))


def _set(tree, path, value):
    """``tree`` (plain dicts and lists) with the value at ``path`` replaced."""
    if not path:
        return value
    head, *rest = path
    if isinstance(tree, dict):
        return {**tree, head: _set(tree.get(head), rest, value)}
    items = list(tree)
    items[head] = _set(items[head], rest, value)
    return items


def _get(tree, path):
    for part in path:
        tree = tree[part]
    return tree


def _dotted(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


_DUMPS = {
    name: cls.model_validate(required).model_dump()
    for name, (cls, required) in LEARNER_CONFIGS.items()
}

_templates = st.sampled_from(
    ["{text}", "{subject.x}", "{text[0][0]}", "{0}", "{text!z}", "{query} {x}", "{"]
)
_junk = st.recursive(
    st.one_of(
        _templates,
        st.dictionaries(st.text(max_size=3), st.tuples(_templates, _templates)),
        st.none(),
        st.booleans(),
        st.integers(),
        st.sampled_from([10**400, 2**64, 2**63, 2**31, -1, 0, 1, 2, 4, 8, 64]),
        st.sampled_from([1e30, 3.0, 0.5, -0.0, 1e-300, math.nan, math.inf]),
        st.floats(),
        st.text(max_size=6),
        st.sampled_from(["(", "[a-", "", "up"]),
        st.builds(np.float64, st.floats()),
        st.builds(np.int64, st.integers(-(2**63), 2**63 - 1)),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=4), inner, max_size=3),
    ),
    max_leaves=6,
)


@st.composite
def _mutation(draw):
    name = draw(st.sampled_from(sorted(LEARNER_CONFIGS)))
    paths = list(_paths(_DUMPS[name]))
    path = draw(st.sampled_from(paths[1:]))
    if draw(st.integers(0, 9)) == 0:
        path = (*path, "unknown_key")  # an unknown key under a section
    return name, path, draw(_junk)


@settings(max_examples=600, deadline=None)
@given(_mutation())
def test_fuzzed_configs_are_valid_or_name_the_key(mutation):
    name, path, value = mutation
    cls, _ = LEARNER_CONFIGS[name]
    original = copy.deepcopy(_DUMPS[name])
    try:
        data = _set(_DUMPS[name], path, value)
    except (TypeError, IndexError):  # "unknown_key" under a leaf or list
        return
    dotted = _dotted(path)
    try:
        config = validate_config(data, cls)
    except ConfigError as error:
        assert error.problems
        # The named key: the changed one, or the list it is an item of.
        last = max(i for i, part in enumerate(path) if not isinstance(part, int))
        leaf = str(path[last])
        for key, message in error.problems:
            # The problem is at the changed key or below it, or it is a check of
            # a whole list, or of a section that names the key in its message.
            below = key == dotted or re.match(re.escape(dotted) + r"[.\[]", key)
            whole_list = key == _dotted(path[: last + 1])
            above = dotted.startswith(key) and leaf in message
            assert below or whole_list or above, (dotted, key, message)
    else:
        # Accepted: no integer in it is beyond the largest bound (a seed), and
        # it round-trips.
        dump = config.model_dump()
        ints = [
            leaf
            for p in _paths(dump)
            if isinstance(leaf := _get(dump, p), int) and not isinstance(leaf, bool)
        ]
        assert all(abs(v) < 2**32 for v in ints), ints
        assert validate_config(dump, cls) == config
    # Validation never changes its input.
    assert _DUMPS[name] == original


def test_model_dataclasses_refuse_non_int_sizes():
    from ol_jax.models import GlyphConfig, LoRAConfig

    for kwargs, name in [
        ({"image_size": 1e30}, "image_size"),
        ({"style_z_dim": 64.0}, "style_z_dim"),
        ({"hidden": (8, 8, 4.0)}, r"hidden\[2\]"),
        ({"hidden": 8}, "hidden"),
    ]:
        with pytest.raises(ValueError, match=f"^{name} must be"):
            GlyphConfig(**kwargs)
    for rank in (4.0, True, 1e30):
        with pytest.raises(ValueError, match="rank must be an int"):
            LoRAConfig(rank=rank)
