"""The pure core: the state pytree, ``make_step`` and our optax transforms."""

from ol_jax.core._addressed import make_addressed_step as make_addressed_step
from ol_jax.core._cache import default_cache_dir as default_cache_dir
from ol_jax.core._cache import enable_compilation_cache as enable_compilation_cache
from ol_jax.core._ewc import EwcState as EwcState
from ol_jax.core._ewc import ewc as ewc
from ol_jax.core._ewc import ewc_set_anchor as ewc_set_anchor
from ol_jax.core._multi import make_multi_step as make_multi_step
from ol_jax.core._multi import num_networks as num_networks
from ol_jax.core._multi import stack_states as stack_states
from ol_jax.core._multi import unstack_state as unstack_state
from ol_jax.core._sharding import data_shardings as data_shardings
from ol_jax.core._sharding import device_mesh as device_mesh
from ol_jax.core._sharding import distribute as distribute
from ol_jax.core._sharding import fsdp_shardings as fsdp_shardings
from ol_jax.core._sharding import keep_state_sharding as keep_state_sharding
from ol_jax.core._sharding import replicated as replicated
from ol_jax.core._sharding import shard_batch as shard_batch
from ol_jax.core._state import OnlineState as OnlineState
from ol_jax.core._state import init_state as init_state
from ol_jax.core._step import make_step as make_step
from ol_jax.core._transforms import (
    DEFAULT_CONTEXT_MULTIPLIERS as DEFAULT_CONTEXT_MULTIPLIERS,
)
from ol_jax.core._transforms import ClampParamsState as ClampParamsState
from ol_jax.core._transforms import clamp_params as clamp_params
from ol_jax.core._transforms import context_lr_multiplier as context_lr_multiplier
from ol_jax.core._transforms import freeze_all_but as freeze_all_but
from ol_jax.core._transforms import get_learning_rate as get_learning_rate
from ol_jax.core._transforms import merge_params as merge_params
from ol_jax.core._transforms import online_optimizer as online_optimizer
from ol_jax.core._transforms import partition_params as partition_params
from ol_jax.core._transforms import path_labels as path_labels
from ol_jax.core._transforms import path_str as path_str
from ol_jax.core._transforms import set_learning_rate as set_learning_rate

__all__ = [
    "DEFAULT_CONTEXT_MULTIPLIERS",
    "ClampParamsState",
    "EwcState",
    "OnlineState",
    "clamp_params",
    "context_lr_multiplier",
    "data_shardings",
    "default_cache_dir",
    "device_mesh",
    "distribute",
    "enable_compilation_cache",
    "ewc",
    "ewc_set_anchor",
    "freeze_all_but",
    "fsdp_shardings",
    "get_learning_rate",
    "init_state",
    "keep_state_sharding",
    "make_addressed_step",
    "make_multi_step",
    "make_step",
    "merge_params",
    "num_networks",
    "online_optimizer",
    "partition_params",
    "path_labels",
    "path_str",
    "replicated",
    "set_learning_rate",
    "shard_batch",
    "stack_states",
    "unstack_state",
]
