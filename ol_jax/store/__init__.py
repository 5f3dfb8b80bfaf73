"""Run persistence: network configs, versioned Orbax checkpoints, run metadata,
and the feedback journal.

All Orbax usage in ol_jax lives in this package.
"""

from ol_jax.store._config import MAX_BATCH as MAX_BATCH
from ol_jax.store._config import MAX_CHARS as MAX_CHARS
from ol_jax.store._config import MAX_COUNT as MAX_COUNT
from ol_jax.store._config import MAX_DIM as MAX_DIM
from ol_jax.store._config import MAX_ITEMS as MAX_ITEMS
from ol_jax.store._config import MAX_TOKENS as MAX_TOKENS
from ol_jax.store._config import BaseNetworkConfig as BaseNetworkConfig
from ol_jax.store._config import BatchSize as BatchSize
from ol_jax.store._config import Capacity as Capacity
from ol_jax.store._config import Chars as Chars
from ol_jax.store._config import ConfigError as ConfigError
from ol_jax.store._config import ConfigSection as ConfigSection
from ol_jax.store._config import Count as Count
from ol_jax.store._config import Dim as Dim
from ol_jax.store._config import ModelConfig as ModelConfig
from ol_jax.store._config import NetworkConfig as NetworkConfig
from ol_jax.store._config import OnlineLearningConfig as OnlineLearningConfig
from ol_jax.store._config import Seed as Seed
from ol_jax.store._config import StoreConfig as StoreConfig
from ol_jax.store._config import Tokens as Tokens
from ol_jax.store._config import check_values as check_values
from ol_jax.store._config import load_config as load_config
from ol_jax.store._config import load_network_config as load_network_config
from ol_jax.store._config import validate_config as validate_config
from ol_jax.store._journal import FeedbackJournal as FeedbackJournal
from ol_jax.store._journal import JournalWriteError as JournalWriteError
from ol_jax.store._metadata_log import CorruptMetadataError as CorruptMetadataError
from ol_jax.store._metadata_log import MetadataLog as MetadataLog
from ol_jax.store._run_store import CheckpointWriteError as CheckpointWriteError
from ol_jax.store._run_store import CorruptVersionError as CorruptVersionError
from ol_jax.store._run_store import MissingMetadataError as MissingMetadataError
from ol_jax.store._run_store import RunStore as RunStore
from ol_jax.store._run_store import new_run_id as new_run_id
from ol_jax.store._run_store import read_run_metadata as read_run_metadata
from ol_jax.store._tree_file import is_pytree_checkpoint as is_pytree_checkpoint
from ol_jax.store._tree_file import load_pytree as load_pytree
from ol_jax.store._tree_file import save_pytree as save_pytree
from ol_jax.store._writer import CheckpointWriter as CheckpointWriter
from ol_jax.store._writer import WriteJob as WriteJob

__all__ = [
    "MAX_BATCH",
    "MAX_CHARS",
    "MAX_COUNT",
    "MAX_DIM",
    "MAX_ITEMS",
    "MAX_TOKENS",
    "BaseNetworkConfig",
    "BatchSize",
    "Capacity",
    "Chars",
    "CheckpointWriteError",
    "CheckpointWriter",
    "ConfigError",
    "ConfigSection",
    "CorruptMetadataError",
    "CorruptVersionError",
    "FeedbackJournal",
    "JournalWriteError",
    "MetadataLog",
    "MissingMetadataError",
    "Count",
    "Dim",
    "ModelConfig",
    "NetworkConfig",
    "OnlineLearningConfig",
    "RunStore",
    "Seed",
    "StoreConfig",
    "Tokens",
    "WriteJob",
    "check_values",
    "is_pytree_checkpoint",
    "load_config",
    "load_network_config",
    "load_pytree",
    "new_run_id",
    "read_run_metadata",
    "save_pytree",
    "validate_config",
]
