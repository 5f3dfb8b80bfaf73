"""Pure losses for online learning, each for one unbatched example.

REINFORCE on a Gaussian latent (``style_z``) from 1-10 ratings, weighted token
cross-entropy and KL to a reference model, EWC and proximal penalties with the
diagonal Fisher, and plain binary CE / squared error / InfoNCE. Batch them with
``jax.vmap``; they hold no state (baselines and Fisher estimates live in the
caller's state and are updated by the functions here).
"""

from ol_jax.objectives._rating import MAX_RATING as MAX_RATING
from ol_jax.objectives._rating import MIN_RATING as MIN_RATING
from ol_jax.objectives._rating import normalize_rating as normalize_rating
from ol_jax.objectives._rating import rating_to_reward as rating_to_reward
from ol_jax.objectives._regularizers import ewc_penalty as ewc_penalty
from ol_jax.objectives._regularizers import fisher_diagonal as fisher_diagonal
from ol_jax.objectives._regularizers import online_fisher as online_fisher
from ol_jax.objectives._regularizers import proximal_penalty as proximal_penalty
from ol_jax.objectives._reinforce import DEFAULT_MAX_LOG_STD as DEFAULT_MAX_LOG_STD
from ol_jax.objectives._reinforce import DEFAULT_MIN_LOG_STD as DEFAULT_MIN_LOG_STD
from ol_jax.objectives._reinforce import confidence_weight as confidence_weight
from ol_jax.objectives._reinforce import ema_baseline as ema_baseline
from ol_jax.objectives._reinforce import gaussian_entropy as gaussian_entropy
from ol_jax.objectives._reinforce import gaussian_log_prob as gaussian_log_prob
from ol_jax.objectives._reinforce import recency_weights as recency_weights
from ol_jax.objectives._reinforce import reinforce_loss as reinforce_loss
from ol_jax.objectives._supervised import (
    binary_cross_entropy as binary_cross_entropy,
)
from ol_jax.objectives._supervised import info_nce as info_nce
from ol_jax.objectives._supervised import mean_squared_error as mean_squared_error
from ol_jax.objectives._token import token_cross_entropy as token_cross_entropy
from ol_jax.objectives._token import token_kl as token_kl

__all__ = [
    "DEFAULT_MAX_LOG_STD",
    "DEFAULT_MIN_LOG_STD",
    "MAX_RATING",
    "MIN_RATING",
    "binary_cross_entropy",
    "confidence_weight",
    "ema_baseline",
    "ewc_penalty",
    "fisher_diagonal",
    "gaussian_entropy",
    "gaussian_log_prob",
    "info_nce",
    "mean_squared_error",
    "normalize_rating",
    "online_fisher",
    "proximal_penalty",
    "rating_to_reward",
    "recency_weights",
    "reinforce_loss",
    "token_cross_entropy",
    "token_kl",
]
