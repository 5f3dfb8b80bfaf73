"""Feedback: raters for glyphs (a deterministic simulated one and an API client)
and the teacher contract for teacher-taught learners."""

from ol_jax.feedback._anthropic import (
    DEFAULT_ANTHROPIC_MODEL as DEFAULT_ANTHROPIC_MODEL,
)
from ol_jax.feedback._anthropic import AnthropicRater as AnthropicRater
from ol_jax.feedback._anthropic import Rater as Rater
from ol_jax.feedback._anthropic import RaterError as RaterError
from ol_jax.feedback._anthropic import glyph_png as glyph_png
from ol_jax.feedback._anthropic import parse_rating as parse_rating
from ol_jax.feedback._anthropic_teacher import AnthropicTeacher as AnthropicTeacher
from ol_jax.feedback._faq import FALLBACK_ANSWER as FALLBACK_ANSWER
from ol_jax.feedback._faq import FaqDomain as FaqDomain
from ol_jax.feedback._faq import FaqFamily as FaqFamily
from ol_jax.feedback._faq import SimulatedTeacher as SimulatedTeacher
from ol_jax.feedback._faq import describe_domain as describe_domain
from ol_jax.feedback._faq import faq_domain as faq_domain
from ol_jax.feedback._faq import normalize_query as normalize_query
from ol_jax.feedback._faq import zipf_stream as zipf_stream
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
from ol_jax.feedback._teacher import Teacher as Teacher
from ol_jax.feedback._teacher import TeacherError as TeacherError

__all__ = [
    "DEFAULT_ANTHROPIC_MODEL",
    "FALLBACK_ANSWER",
    "FEATURE_NAMES",
    "MAX_RATING",
    "MIN_RATING",
    "PERSONALITIES",
    "AnthropicRater",
    "FaqDomain",
    "FaqFamily",
    "AnthropicTeacher",
    "Personality",
    "Rater",
    "RaterError",
    "SimulatedRater",
    "SimulatedTeacher",
    "Teacher",
    "TeacherError",
    "describe_domain",
    "faq_domain",
    "glyph_features",
    "glyph_png",
    "image_digest",
    "match_score",
    "normalize_query",
    "parse_rating",
    "personality_profile",
    "rating_from_match",
    "simulated_rating",
    "zipf_stream",
]
