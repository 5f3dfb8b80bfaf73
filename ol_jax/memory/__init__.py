"""Memory for online learners: a fixed-capacity prioritized replay buffer."""

from ol_jax.memory._replay import PrioritizedReplay as PrioritizedReplay
from ol_jax.memory._replay import ReplaySample as ReplaySample
from ol_jax.memory._replay import prioritized_replay as prioritized_replay

__all__ = ["PrioritizedReplay", "ReplaySample", "prioritized_replay"]
