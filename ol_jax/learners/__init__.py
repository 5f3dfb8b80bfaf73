"""Learners: one module per seed system, thin stateful shells around ``step``."""

from ol_jax.learners._continual import PlasticityMetrics as PlasticityMetrics
from ol_jax.learners._continual import StabilityMetrics as StabilityMetrics
from ol_jax.learners._continual import backward_transfer as backward_transfer
from ol_jax.learners._continual import forgetting as forgetting
from ol_jax.learners._continual import plasticity_metrics as plasticity_metrics
from ol_jax.learners._continual import stability_metrics as stability_metrics
from ol_jax.learners._fact_stream import load_fact_set as load_fact_set
from ol_jax.learners._fact_stream import run_fact_stream as run_fact_stream
from ol_jax.learners._facts import EntityExtractionConfig as EntityExtractionConfig
from ol_jax.learners._facts import FactConfidenceConfig as FactConfidenceConfig
from ol_jax.learners._facts import FactDecayConfig as FactDecayConfig
from ol_jax.learners._facts import FactDetectionConfig as FactDetectionConfig
from ol_jax.learners._facts import FactDetector as FactDetector
from ol_jax.learners._facts import FactImportanceConfig as FactImportanceConfig
from ol_jax.learners._facts import FactInfo as FactInfo
from ol_jax.learners._facts import FactMemory as FactMemory
from ol_jax.learners._facts import FactMemoryConfig as FactMemoryConfig
from ol_jax.learners._facts import FactPattern as FactPattern
from ol_jax.learners._facts import StatementDetectionConfig as StatementDetectionConfig
from ol_jax.learners._facts import StoredFact as StoredFact
from ol_jax.learners._facts import to_second_person as to_second_person
from ol_jax.learners._token_weights import (
    ImportanceWeightingConfig as ImportanceWeightingConfig,
)
from ol_jax.learners._token_weights import (
    PositionWeightingConfig as PositionWeightingConfig,
)
from ol_jax.learners._token_weights import (
    RepetitionWeightingConfig as RepetitionWeightingConfig,
)
from ol_jax.learners._token_weights import (
    token_importance_weights as token_importance_weights,
)
from ol_jax.learners.buffered import BufferedLearner as BufferedLearner
from ol_jax.learners.buffered import ByteTokenizer as ByteTokenizer
from ol_jax.learners.buffered import Generation as Generation
from ol_jax.learners.buffered import LearningConfig as LearningConfig
from ol_jax.learners.buffered import LearningStats as LearningStats
from ol_jax.learners.buffered import byte_llama_config as byte_llama_config
from ol_jax.learners.chat import ChatConfig as ChatConfig
from ol_jax.learners.chat import ChatLearner as ChatLearner
from ol_jax.learners.chat import load_chat_config as load_chat_config
from ol_jax.learners.chat import write_accuracy_matrix as write_accuracy_matrix
from ol_jax.learners.controller import ControllerConfig as ControllerConfig
from ol_jax.learners.controller import OnlineLearner as OnlineLearner
from ol_jax.learners.controller import run_soak as run_soak
from ol_jax.learners.controller import soak_failures as soak_failures
from ol_jax.learners.glyph import Glyph as Glyph
from ol_jax.learners.glyph import GlyphLearner as GlyphLearner
from ol_jax.learners.multi_glyph import MultiGlyphLearner as MultiGlyphLearner
from ol_jax.learners.teacher import ProxyDecision as ProxyDecision
from ol_jax.learners.teacher import ProxyRoute as ProxyRoute
from ol_jax.learners.teacher import TeacherProxyConfig as TeacherProxyConfig
from ol_jax.learners.teacher import TeacherProxyLearner as TeacherProxyLearner

__all__ = [
    "EntityExtractionConfig",
    "FactConfidenceConfig",
    "FactDecayConfig",
    "FactDetectionConfig",
    "FactDetector",
    "FactImportanceConfig",
    "FactInfo",
    "FactMemory",
    "FactMemoryConfig",
    "FactPattern",
    "StatementDetectionConfig",
    "StoredFact",
    "ImportanceWeightingConfig",
    "PositionWeightingConfig",
    "RepetitionWeightingConfig",
    "token_importance_weights",
    "PlasticityMetrics",
    "StabilityMetrics",
    "backward_transfer",
    "forgetting",
    "plasticity_metrics",
    "stability_metrics",
    "to_second_person",
    "load_fact_set",
    "run_fact_stream",
    "BufferedLearner",
    "ByteTokenizer",
    "ChatConfig",
    "ChatLearner",
    "ControllerConfig",
    "Generation",
    "LearningConfig",
    "LearningStats",
    "OnlineLearner",
    "ProxyDecision",
    "ProxyRoute",
    "TeacherProxyConfig",
    "TeacherProxyLearner",
    "Glyph",
    "GlyphLearner",
    "MultiGlyphLearner",
    "byte_llama_config",
    "load_chat_config",
    "write_accuracy_matrix",
    "run_soak",
    "soak_failures",
]
