"""Feedback: raters for glyphs (a deterministic simulated one and an API client)."""

from ol_jax.feedback._features import FEATURE_NAMES as FEATURE_NAMES
from ol_jax.feedback._features import glyph_features as glyph_features
from ol_jax.feedback._simulated import MAX_RATING as MAX_RATING
from ol_jax.feedback._simulated import MIN_RATING as MIN_RATING
from ol_jax.feedback._simulated import PERSONALITIES as PERSONALITIES
from ol_jax.feedback._simulated import Personality as Personality
from ol_jax.feedback._simulated import SimulatedRater as SimulatedRater
from ol_jax.feedback._simulated import image_digest as image_digest
from ol_jax.feedback._simulated import match_score as match_score
from ol_jax.feedback._simulated import personality_profile as personality_profile
from ol_jax.feedback._simulated import rating_from_match as rating_from_match
from ol_jax.feedback._simulated import simulated_rating as simulated_rating

__all__ = [
    "FEATURE_NAMES",
    "MAX_RATING",
    "MIN_RATING",
    "PERSONALITIES",
    "Personality",
    "SimulatedRater",
    "glyph_features",
    "image_digest",
    "match_score",
    "personality_profile",
    "rating_from_match",
    "simulated_rating",
]
