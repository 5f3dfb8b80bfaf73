"""Learners: one module per seed system, thin stateful shells around ``step``."""

from ol_jax.learners.buffered import BufferedLearner as BufferedLearner
from ol_jax.learners.buffered import ByteTokenizer as ByteTokenizer
from ol_jax.learners.buffered import Generation as Generation
from ol_jax.learners.buffered import LearningConfig as LearningConfig
from ol_jax.learners.buffered import LearningStats as LearningStats
from ol_jax.learners.buffered import byte_llama_config as byte_llama_config
from ol_jax.learners.controller import ControllerConfig as ControllerConfig
from ol_jax.learners.controller import OnlineLearner as OnlineLearner
from ol_jax.learners.controller import run_soak as run_soak
from ol_jax.learners.glyph import Glyph as Glyph
from ol_jax.learners.glyph import GlyphLearner as GlyphLearner
from ol_jax.learners.multi_glyph import MultiGlyphLearner as MultiGlyphLearner

__all__ = [
    "BufferedLearner",
    "ByteTokenizer",
    "ControllerConfig",
    "Generation",
    "LearningConfig",
    "LearningStats",
    "OnlineLearner",
    "Glyph",
    "GlyphLearner",
    "MultiGlyphLearner",
    "byte_llama_config",
    "run_soak",
]
