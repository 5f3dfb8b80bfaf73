"""Models: the Llama-family decoder with LoRA, generation, weight loaders, and the
glyph decoder with its style policy, and the BERT-style sentence encoder."""

from ol_jax.models._encoder import ENCODER_ACTIVATIONS as ENCODER_ACTIVATIONS
from ol_jax.models._encoder import Encoder as Encoder
from ol_jax.models._encoder import EncoderConfig as EncoderConfig
from ol_jax.models._encoder import LoadedEncoder as LoadedEncoder
from ol_jax.models._encoder import encoder_apply as encoder_apply
from ol_jax.models._encoder import encoder_params_from_hf as encoder_params_from_hf
from ol_jax.models._encoder import load_encoder as load_encoder
from ol_jax.models._encoder import mean_pool as mean_pool
from ol_jax.models._encoder import sentence_embeddings as sentence_embeddings
from ol_jax.models._files import resolve_in_root as resolve_in_root
from ol_jax.models._formats import FLOAT_DTYPES as FLOAT_DTYPES
from ol_jax.models._formats import WeightFileError as WeightFileError
from ol_jax.models._formats import convert_dtype as convert_dtype
from ol_jax.models._formats import load_weights as load_weights
from ol_jax.models._formats import register_weight_format as register_weight_format
from ol_jax.models._formats import save_weights as save_weights
from ol_jax.models._formats import weight_formats as weight_formats
from ol_jax.models._generate import chat_encode as chat_encode
from ol_jax.models._generate import chat_token_ids as chat_token_ids
from ol_jax.models._generate import generate as generate
from ol_jax.models._generate import generate_stream as generate_stream
from ol_jax.models._generate import prompt_bucket as prompt_bucket
from ol_jax.models._generate import sample_logits as sample_logits
from ol_jax.models._generate import text_deltas as text_deltas
from ol_jax.models._gguf import GGUF_ARCHITECTURES as GGUF_ARCHITECTURES
from ol_jax.models._gguf import GGUF_QUANT_TYPES as GGUF_QUANT_TYPES
from ol_jax.models._gguf import reverse_permute_qk as reverse_permute_qk
from ol_jax.models._glyph import GaussianStylePolicy as GaussianStylePolicy
from ol_jax.models._glyph import GlyphConfig as GlyphConfig
from ol_jax.models._glyph import GlyphDecoder as GlyphDecoder
from ol_jax.models._glyph import decode_glyph as decode_glyph
from ol_jax.models._glyph import decode_glyph_from as decode_glyph_from
from ol_jax.models._glyph import generate_glyphs as generate_glyphs
from ol_jax.models._glyph import glyph_stage as glyph_stage
from ol_jax.models._glyph import init_glyph as init_glyph
from ol_jax.models._glyph import sample_style_z as sample_style_z
from ol_jax.models._glyph import style_z_log_prob as style_z_log_prob
from ol_jax.models._llama import LLAMA_PROJECTIONS as LLAMA_PROJECTIONS
from ol_jax.models._llama import Llama as Llama
from ol_jax.models._llama import LlamaConfig as LlamaConfig
from ol_jax.models._llama import LoRAConfig as LoRAConfig
from ol_jax.models._llama import llama_apply as llama_apply
from ol_jax.models._llama import (
    llama_apply_with_reference as llama_apply_with_reference,
)
from ol_jax.models._llama import llama_params_from_hf as llama_params_from_hf
from ol_jax.models._llama import llama_params_to_hf as llama_params_to_hf
from ol_jax.models._llama import split_lora as split_lora
from ol_jax.models._load import SUPPORTED_MODEL_TYPES as SUPPORTED_MODEL_TYPES
from ol_jax.models._load import LoadedModel as LoadedModel
from ol_jax.models._load import expected_tensor_names as expected_tensor_names
from ol_jax.models._load import load_gguf as load_gguf
from ol_jax.models._load import load_hf_folder as load_hf_folder
from ol_jax.models._load import load_llama as load_llama
from ol_jax.models._load import load_pretrained as load_pretrained
from ol_jax.models._lora import load_adapter as load_adapter
from ol_jax.models._lora import lora_from_hf as lora_from_hf
from ol_jax.models._lora import lora_to_hf as lora_to_hf
from ol_jax.models._lora import merge_lora as merge_lora
from ol_jax.models._lora import save_adapter as save_adapter
from ol_jax.models._lora import unmerge_lora as unmerge_lora
from ol_jax.models._multi_lora import generate_multi_lora as generate_multi_lora
from ol_jax.models._peft import PeftAdapter as PeftAdapter
from ol_jax.models._peft import load_peft_adapter as load_peft_adapter
from ol_jax.models._peft import lora_from_peft as lora_from_peft
from ol_jax.models._peft import lora_to_peft as lora_to_peft
from ol_jax.models._peft import save_peft_adapter as save_peft_adapter
from ol_jax.models._pretrained import PRETRAINED as PRETRAINED
from ol_jax.models._pretrained import PretrainedSpec as PretrainedSpec
from ol_jax.models._pretrained import model_cache_dir as model_cache_dir
from ol_jax.models._pretrained import resolve_pretrained as resolve_pretrained
from ol_jax.models._routed import RoutedLlamaOutput as RoutedLlamaOutput
from ol_jax.models._routed import RoutedOutput as RoutedOutput
from ol_jax.models._routed import init_routed_llama as init_routed_llama
from ol_jax.models._routed import init_routed_mlp as init_routed_mlp
from ol_jax.models._routed import llama_base_params as llama_base_params
from ol_jax.models._routed import route_logits as route_logits
from ol_jax.models._routed import routed_llama_apply as routed_llama_apply
from ol_jax.models._routed import routed_mlp_apply as routed_mlp_apply

__all__ = [
    "ENCODER_ACTIVATIONS",
    "Encoder",
    "EncoderConfig",
    "LoadedEncoder",
    "encoder_apply",
    "encoder_params_from_hf",
    "load_encoder",
    "mean_pool",
    "sentence_embeddings",
    "RoutedLlamaOutput",
    "RoutedOutput",
    "init_routed_llama",
    "init_routed_mlp",
    "llama_base_params",
    "route_logits",
    "routed_llama_apply",
    "routed_mlp_apply",
    "FLOAT_DTYPES",
    "GGUF_ARCHITECTURES",
    "GGUF_QUANT_TYPES",
    "LLAMA_PROJECTIONS",
    "PRETRAINED",
    "SUPPORTED_MODEL_TYPES",
    "GaussianStylePolicy",
    "GlyphConfig",
    "GlyphDecoder",
    "Llama",
    "LlamaConfig",
    "LoRAConfig",
    "LoadedModel",
    "PeftAdapter",
    "PretrainedSpec",
    "WeightFileError",
    "chat_encode",
    "chat_token_ids",
    "convert_dtype",
    "decode_glyph",
    "decode_glyph_from",
    "expected_tensor_names",
    "generate",
    "generate_stream",
    "generate_glyphs",
    "generate_multi_lora",
    "glyph_stage",
    "init_glyph",
    "llama_apply",
    "llama_apply_with_reference",
    "llama_params_from_hf",
    "llama_params_to_hf",
    "load_adapter",
    "load_gguf",
    "load_hf_folder",
    "load_llama",
    "load_peft_adapter",
    "load_pretrained",
    "load_weights",
    "lora_from_hf",
    "lora_from_peft",
    "lora_to_hf",
    "lora_to_peft",
    "merge_lora",
    "model_cache_dir",
    "prompt_bucket",
    "register_weight_format",
    "resolve_pretrained",
    "resolve_in_root",
    "reverse_permute_qk",
    "sample_logits",
    "text_deltas",
    "sample_style_z",
    "save_adapter",
    "save_peft_adapter",
    "save_weights",
    "split_lora",
    "style_z_log_prob",
    "unmerge_lora",
    "weight_formats",
]
