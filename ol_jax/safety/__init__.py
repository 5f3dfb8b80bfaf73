"""Safety for online updates: canary gate, drift measures, between-prompts policy.

A candidate update is evaluated on canary sets and rejected if any canary
regresses (:func:`canary_gate`); accepted updates are watched for drift from the
last good version (:func:`output_kl`, :func:`param_norm_ratio`,
:func:`drift_check`), which triggers a rollback in the learner; updates are
applied only between prompts (:class:`BetweenPromptsPolicy`), and a feedback batch
whose loss is an outlier for the current model is refused
(:func:`loss_spike_gate`). Learned facts are measured as knowledge editing
measures an edit (:func:`edit_success`, :func:`answers_unchanged`,
:func:`neighbour_kl`).
"""

from ol_jax.safety._canary import CanaryDecision as CanaryDecision
from ol_jax.safety._canary import canary_gate as canary_gate
from ol_jax.safety._drift import DriftReport as DriftReport
from ol_jax.safety._drift import drift_check as drift_check
from ol_jax.safety._drift import output_kl as output_kl
from ol_jax.safety._drift import param_norm_ratio as param_norm_ratio
from ol_jax.safety._editing import answer_contains as answer_contains
from ol_jax.safety._editing import answers_unchanged as answers_unchanged
from ol_jax.safety._editing import edit_success as edit_success
from ol_jax.safety._editing import neighbour_kl as neighbour_kl
from ol_jax.safety._policy import BetweenPromptsPolicy as BetweenPromptsPolicy
from ol_jax.safety._spike import SpikeStats as SpikeStats
from ol_jax.safety._spike import init_spike_stats as init_spike_stats
from ol_jax.safety._spike import loss_spike_gate as loss_spike_gate

__all__ = [
    "BetweenPromptsPolicy",
    "CanaryDecision",
    "DriftReport",
    "SpikeStats",
    "answer_contains",
    "answers_unchanged",
    "canary_gate",
    "drift_check",
    "edit_success",
    "init_spike_stats",
    "loss_spike_gate",
    "neighbour_kl",
    "output_kl",
    "param_norm_ratio",
]
