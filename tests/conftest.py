"""Test session settings: strict numerics, a hypothesis profile for jitted code."""

import os

import jax
import pytest
from hypothesis import HealthCheck, settings

from ol_jax.core import enable_compilation_cache

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
enable_compilation_cache()

# Compilation times vary on a shared 2-core machine, so no deadline; under CI the
# examples are derandomized so that a failure reproduces.
settings.register_profile(
    "jit",
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=bool(os.environ.get("CI")),
)
settings.load_profile("jit")


@pytest.fixture
def rng_key():
    return jax.random.key(0)


@pytest.fixture
def standard_promotion():
    """For tests that call optax's Adam directly: it is not strict-promotion clean."""
    with jax.numpy_dtype_promotion("standard"):
        yield
