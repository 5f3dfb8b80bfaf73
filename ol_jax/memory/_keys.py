"""Key lookup for keyed memories: which stored item a query is about.

A keyed memory (a bank of per-item weights, as in WISE or GRACE) stores one unit
key vector per item and serves a query with the item whose key is most similar,
if that similarity clears a threshold; otherwise the query is "about nothing
stored" and is served by the unedited weights.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

__all__ = ["KeyMatch", "nearest_key"]


class KeyMatch(NamedTuple):
    """What :func:`nearest_key` returns.

    Attributes:
      index: ``[B]`` int32, the matched key per query, ``-1`` where none clears
        the threshold.
      score: ``[B]`` float32, the best similarity per query (``-inf`` with no
        valid key).
    """

    index: jax.Array
    score: jax.Array


def nearest_key(
    keys: ArrayLike,
    valid: ArrayLike,
    queries: ArrayLike,
    *,
    threshold: float,
) -> KeyMatch:
    """The most similar valid key of each query, if it clears ``threshold``.

    ``s_bk = <q_b, k_k>`` (cosine similarity for unit vectors); the match of query
    ``b`` is ``argmax_k s_bk`` over valid keys when ``max_k s_bk >= threshold``,
    else ``-1``. Ties go to the lower index.

    Args:
      keys: ``[K, D]`` stored keys (unit vectors for cosine similarity).
      valid: ``[K]`` bool, which rows of ``keys`` hold an item.
      queries: ``[B, D]`` query vectors.
      threshold: the least similarity that counts as a match.

    Returns:
      A :class:`KeyMatch`.

    References:
      Hartvigsen et al., `Aging with GRACE: Lifelong Model Editing with Discrete
      Key-Value Adaptors <https://arxiv.org/abs/2211.11031>`_, 2023;
      Wang et al., `WISE: Rethinking the Knowledge Memory for Lifelong Model
      Editing of Large Language Models <https://arxiv.org/abs/2405.14768>`_, 2024.
    """
    keys = jnp.asarray(keys, jnp.float32)
    valid = jnp.asarray(valid, bool)
    queries = jnp.asarray(queries, jnp.float32)
    if keys.ndim != 2 or queries.ndim != 2 or keys.shape[1] != queries.shape[1]:
        raise ValueError(
            "keys and queries must be [K, D] and [B, D] with one D, got shapes "
            f"{keys.shape} and {queries.shape}"
        )
    if valid.shape != keys.shape[:1]:
        raise ValueError(f"valid must have shape [{keys.shape[0]}], got {valid.shape}")
    scores = jnp.where(valid[None, :], queries @ keys.T, -jnp.inf)
    if keys.shape[0] == 0:
        b = queries.shape[0]
        return KeyMatch(jnp.full((b,), -1, jnp.int32), jnp.full((b,), -jnp.inf))
    best = jnp.argmax(scores, axis=1).astype(jnp.int32)
    score = jnp.max(scores, axis=1)
    index = jnp.where(score >= threshold, best, -1).astype(jnp.int32)
    return KeyMatch(index, score)
