"""The chat learner's per-turn metric history (host-side bookkeeping only).

The figures themselves are the pure functions of ``_continual``
(:func:`plasticity_metrics`, :func:`stability_metrics`); this class keeps the
windows they need and can be saved with a checkpoint and restored exactly.
"""

from __future__ import annotations

import math
from typing import Any

from ol_jax.learners._continual import plasticity_metrics, stability_metrics


class TurnMetrics:
    """Loss window and anchor measurements of one chat run.

    Args:
      window: turns in the plasticity window.
    """

    def __init__(self, *, window: int):
        self.window = int(window)
        self.losses: list[float] = []
        self.base: dict[str, float] | None = None
        self.anchor_ppl: list[float] = []
        self.anchor_turns: list[int] = []
        self.last_kl = float("nan")

    def set_baseline(self, scores: dict[str, float] | None) -> None:
        """The base model's anchor NLL (turn 0)."""
        self.base = None if scores is None else dict(scores)

    def add_loss(self, loss: float) -> dict[str, float]:
        """Records a turn's loss; returns recent loss, improvement, adaptation speed."""
        if math.isfinite(loss):
            self.losses.append(float(loss))
            del self.losses[: -2 * self.window]
        if not self.losses:
            return {}
        p = plasticity_metrics(self.losses, window=self.window)
        return {
            "recent_loss": p.recent_loss,
            "improvement": p.improvement,
            "adaptation_speed": p.adaptation_speed,
        }

    def stability(self, scores: dict[str, float] | None, *, turn: int) -> dict:
        """Records an anchor measurement (if any); returns the latest figures.

        ``anchor_perplexity = exp(mean anchor NLL)``, ``kl_to_base`` the mean KL of
        the anchors' next-token distributions, then anchor regression, forgetting
        rate and perplexity drift relative to the base (see ``stability_metrics``).
        """
        if self.base is None:
            return {}
        if scores is not None:
            self.anchor_ppl.append(math.exp(scores["nll"]))
            self.anchor_turns.append(int(turn))
            self.last_kl = float(scores["kl"])
        base_ppl = math.exp(self.base["nll"])
        row = {"base_anchor_perplexity": base_ppl}
        if not self.anchor_ppl:
            return row
        s = stability_metrics(self.anchor_ppl, base_ppl, turns=self.anchor_turns)
        row.update(
            anchor_perplexity=self.anchor_ppl[-1],
            anchor_turn=self.anchor_turns[-1],
            kl_to_base=self.last_kl,
            anchor_regression=s.anchor_regression,
            forgetting_rate=s.forgetting_rate,
            perplexity_drift=s.perplexity_drift,
        )
        return row

    def state_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot (floats kept exactly by ``json``)."""
        return {
            "losses": list(self.losses),
            "base": self.base,
            "anchor_ppl": list(self.anchor_ppl),
            "anchor_turns": list(self.anchor_turns),
            "last_kl": None if math.isnan(self.last_kl) else self.last_kl,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], *, window: int) -> TurnMetrics:
        """The tracker of a :meth:`state_dict`."""
        out = cls(window=window)
        out.losses = [float(x) for x in state["losses"]]
        out.base = state["base"]
        out.anchor_ppl = [float(x) for x in state["anchor_ppl"]]
        out.anchor_turns = [int(x) for x in state["anchor_turns"]]
        kl = state.get("last_kl")
        out.last_kl = float("nan") if kl is None else float(kl)
        return out
