"""Memory for online learners: a fixed-capacity prioritized replay buffer, and the
key lookup of keyed memories (which stored item a query is about)."""

from ol_jax.memory._keys import KeyMatch as KeyMatch
from ol_jax.memory._keys import nearest_key as nearest_key
from ol_jax.memory._replay import PrioritizedReplay as PrioritizedReplay
from ol_jax.memory._replay import ReplaySample as ReplaySample
from ol_jax.memory._replay import prioritized_replay as prioritized_replay

__all__ = [
    "KeyMatch",
    "PrioritizedReplay",
    "ReplaySample",
    "nearest_key",
    "prioritized_replay",
]
