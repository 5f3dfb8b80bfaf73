"""The chat learner's fact bank: one LoRA adapter per learned fact, and the router
that decides which adapter answers a message (``fact_bank`` in the config).

Each fact owns an :class:`~ol_jax.core.OnlineState` (its adapter, AdamW moments
and key) that only its own statements train, so learning a new fact cannot
overwrite an old one, and a unit key: the sentence embedding of its statement. A
message is routed with :func:`ol_jax.memory.nearest_key` to the fact whose key
is most similar, if the similarity reaches ``route_threshold``; otherwise to the
shared adapter (``SHARED``) if it is as similar to one of the last
``conversation_keys`` other turns (those the shared adapter learned from), and
to the base model (``BASE``) otherwise, so unrelated questions are answered as
before any learning.

References:
    Wang et al., `WISE: Rethinking the Knowledge Memory for Lifelong Model Editing
    of Large Language Models <https://arxiv.org/abs/2405.14768>`_, 2024 (side
    memories and a router that decides when the edited weights apply).
    Hartvigsen et al., `Aging with GRACE: Lifelong Model Editing with Discrete
    Key-Value Adaptors <https://arxiv.org/abs/2211.11031>`_, 2023.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ol_jax.core import OnlineState, init_state
from ol_jax.learners._chat_config import FactBankSection
from ol_jax.memory import nearest_key
from ol_jax.models import LoadedEncoder

SHARED = -1
"""The route of a message like a past conversation turn: the shared adapter."""

BASE = -2
"""The route of a message about nothing learned: the base model answers it."""


@dataclasses.dataclass
class _Fact:
    statement: str
    key: np.ndarray
    params: Any
    opt_state: Any
    step: jax.Array
    last_turn: int


class FactBank:
    """Per-fact adapters with their keys (see the module docstring).

    Args:
      config: the ``fact_bank`` section.
      encoder: the sentence encoder of the keys and queries.
      initial: the adapter a new fact starts from (``B = 0``: the base model);
        kept by reference, so the caller must not donate or change it.
      tx: the update rule of every fact adapter.
      key: root PRNG key; fact ``i``'s key is ``fold_in(key, i)``.
    """

    def __init__(
        self,
        config: FactBankSection,
        encoder: LoadedEncoder,
        initial: Any,
        tx: optax.GradientTransformation,
        *,
        key: jax.Array,
    ):
        self.config = config
        self.encoder = encoder
        # Read only (every new fact copies it), so it is shared, not copied.
        self._initial = initial
        self._tx = tx
        self._key = key
        self._facts: list[_Fact] = []
        self._created = 0
        self._turn_keys: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._facts)

    @property
    def statements(self) -> list[str]:
        """The stored facts' statements, by index."""
        return [f.statement for f in self._facts]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``[N, D]`` unit sentence embeddings (float32)."""
        out = np.asarray(self.encoder.embed(list(texts)), np.float32)
        norms = np.linalg.norm(out, axis=-1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    def _match(self, queries: np.ndarray, threshold: float):
        if not self._facts:
            n = queries.shape[0]
            return np.full((n,), SHARED, np.int64), np.full((n,), -np.inf)
        keys = np.stack([f.key for f in self._facts])
        match = nearest_key(
            keys, np.ones((len(keys),), bool), queries, threshold=threshold
        )
        return np.asarray(match.index, np.int64), np.asarray(match.score)

    def route(self, texts: Sequence[str]) -> list[int]:
        """For each message, the fact whose adapter answers it, or ``SHARED`` /
        ``BASE`` (see the module docstring)."""
        if not texts:
            return []
        if not self._facts and not self._turn_keys:
            return [BASE if self.config.conversation_keys else SHARED] * len(texts)
        queries = self.embed(texts)
        threshold = self.config.route_threshold
        index, _ = self._match(queries, threshold)
        if self.config.conversation_keys == 0:
            return [int(i) for i in index]
        like_turn = np.zeros((len(texts),), bool)
        if self._turn_keys:
            like_turn = (
                np.max(queries @ np.stack(self._turn_keys).T, axis=1) >= threshold
            )
        return [
            int(i) if i != SHARED else (SHARED if t else BASE)
            for i, t in zip(index, like_turn, strict=True)
        ]

    def note_turn(self, text: str) -> None:
        """Remembers a turn the shared adapter learned from: messages like it
        are answered by the shared adapter (the last ``conversation_keys``)."""
        n = self.config.conversation_keys
        if n == 0:
            return
        self._turn_keys.append(self.embed([text])[0])
        del self._turn_keys[: max(len(self._turn_keys) - n, 0)]

    def slot(self, statement: str, *, turn: int) -> tuple[int, bool]:
        """The index of the fact ``statement`` states, and whether it is new.

        A statement at least ``same_fact_threshold`` similar to a stored fact
        restates it; otherwise a new fact starts from the initial adapter,
        replacing the least recently stated one when the bank is full.
        """
        query = self.embed([statement])
        index, _ = self._match(query, self.config.same_fact_threshold)
        if index[0] != SHARED:
            fact = self._facts[int(index[0])]
            fact.last_turn = turn
            return int(index[0]), False
        fact = _Fact(
            statement=statement,
            key=query[0],
            params=jax.tree.map(jnp.copy, self._initial),
            opt_state=None,
            step=jnp.zeros((), jnp.int32),
            last_turn=turn,
        )
        self._created += 1
        if len(self._facts) < self.config.max_facts:
            self._facts.append(fact)
            return len(self._facts) - 1, True
        oldest = min(range(len(self._facts)), key=lambda i: self._facts[i].last_turn)
        self._facts[oldest] = fact
        return oldest, True

    def params(self, index: int) -> Any:
        """Fact ``index``'s adapter."""
        return self._facts[index].params

    def state(self, index: int) -> OnlineState:
        """A copy of fact ``index``'s online state (fresh AdamW moments if they
        were dropped). A copy, because the update step donates its input: the
        bank's own arrays are never deleted, so :meth:`snapshot` can hold them."""
        fact = self._facts[index]
        key = jax.random.fold_in(self._key, index)
        params = jax.tree.map(jnp.copy, fact.params)
        if fact.opt_state is None:
            state = init_state(params, self._tx, key=key)
            return state._replace(step=jnp.copy(fact.step))
        opt_state = jax.tree.map(jnp.copy, fact.opt_state)
        return OnlineState(jnp.copy(fact.step), params, opt_state, key, {})

    def snapshot(self) -> Any:
        """The bank as it is now, for :meth:`restore_snapshot` (no array copies:
        the bank's arrays are never modified or donated)."""
        return [dataclasses.replace(f) for f in self._facts], list(self._turn_keys)

    def restore_snapshot(self, snapshot: Any) -> None:
        """Puts back the bank of :meth:`snapshot`."""
        facts, turn_keys = snapshot
        self._facts = [dataclasses.replace(f) for f in facts]
        self._turn_keys = list(turn_keys)

    def update(self, index: int, state: OnlineState) -> None:
        """Stores fact ``index``'s new state; keeps the AdamW moments of only the
        ``optimizer_slots`` most recently stated facts."""
        fact = self._facts[index]
        fact.params, fact.opt_state, fact.step = (
            state.params,
            state.opt_state,
            state.step,
        )
        with_moments = [i for i, f in enumerate(self._facts) if f.opt_state is not None]
        excess = len(with_moments) - self.config.optimizer_slots
        for i in sorted(with_moments, key=lambda i: self._facts[i].last_turn)[
            : max(excess, 0)
        ]:
            self._facts[i].opt_state = None

    # ------------------------------------------------------------------ store

    def tree(self) -> dict[str, Any]:
        """The bank's arrays for the run store: stacked adapters and keys."""
        out: dict[str, Any] = {}
        if self._facts:
            out = {
                "params": jax.tree.map(
                    lambda *x: jnp.stack(x), *[f.params for f in self._facts]
                ),
                "keys": np.stack([f.key for f in self._facts]),
                "steps": jnp.stack([f.step for f in self._facts]),
            }
        if self._turn_keys:
            out["turn_keys"] = np.stack(self._turn_keys)
        return out

    def entry(self) -> dict[str, Any]:
        """The bank's metadata for the run store (statements and turns)."""
        return {
            "statements": self.statements,
            "last_turns": [f.last_turn for f in self._facts],
            "turn_keys": len(self._turn_keys),
        }

    def like(self, entry: dict[str, Any]) -> dict[str, Any]:
        """A tree shaped as :meth:`tree` of a bank saved with ``entry``."""
        n = len(entry["statements"])
        dim = self.encoder.config.hidden_size
        out: dict[str, Any] = {}
        if n:
            out = {
                "params": jax.tree.map(
                    lambda x: jnp.zeros((n, *x.shape), x.dtype), self._initial
                ),
                "keys": np.zeros((n, dim), np.float32),
                "steps": jnp.zeros((n,), jnp.int32),
            }
        if entry.get("turn_keys"):
            out["turn_keys"] = np.zeros((entry["turn_keys"], dim), np.float32)
        return out

    def restore(self, tree: dict[str, Any], entry: dict[str, Any]) -> None:
        """Replaces the bank by a saved one (AdamW moments restart)."""
        self._turn_keys = [np.asarray(k, np.float32) for k in tree.get("turn_keys", ())]
        self._facts = []
        for i, (statement, turn) in enumerate(
            zip(entry["statements"], entry["last_turns"], strict=True)
        ):
            self._facts.append(
                _Fact(
                    statement=statement,
                    key=np.asarray(tree["keys"][i], np.float32),
                    params=jax.tree.map(
                        lambda x, i=i: jnp.asarray(x[i]), tree["params"]
                    ),
                    opt_state=None,
                    step=jnp.asarray(tree["steps"][i], jnp.int32),
                    last_turn=int(turn),
                )
            )
