"""MHA, MLA and MoE-MLA-RoPE decoder-only transformers (section 4.1 and Table 1 of the paper)."""

from .config import PAPER_PARAMS, PRESETS, VARIANTS, ModelConfig, expert_combinations, kv_cache_bytes, kv_cache_elements_per_token, preset
from .gpt import GPT, Block, KVCache
from .decode import Decoder
from .attention import MultiHeadAttention, MultiHeadLatentAttention, Rotary
from .moe import MLP, MoE, Router, grouped_mm

__all__ = [
    "GPT", "Block", "Decoder", "KVCache", "MLP", "MoE", "ModelConfig", "MultiHeadAttention", "MultiHeadLatentAttention",
    "PAPER_PARAMS", "PRESETS", "Router", "Rotary", "VARIANTS", "expert_combinations", "grouped_mm", "kv_cache_bytes",
    "kv_cache_elements_per_token", "preset",
]
