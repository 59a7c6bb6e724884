"""Model configuration, the paper's Table 1 presets, and the analytic KV-cache size."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch

VARIANTS = ("mha", "mla", "mla-norope", "moe-mla")


@dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer (section 4.1 of the paper).

    ``attention="mla"`` compresses keys and values into a latent of rank ``latent_rank``
    (default ``d_model // 2``, the papers' r = d/2); with ``position="rope"`` it adds a
    decoupled rotary key of ``rope_dim`` per head (default ``head_dim // 2``), since a
    position-dependent rotation cannot pass through the absorbed up-projection. ``moe=True``
    replaces every FFN by ``n_shared_experts`` always-active experts plus ``top_k`` of
    ``n_routed_experts`` routed ones, each ``expert_ratio`` of ``d_ff`` wide.
    """

    n_layer: int = 6
    d_model: int = 256
    n_head: int = 8
    d_ff: int = 1024
    vocab_size: int = 50257
    context: int = 512
    attention: Literal["mha", "mla"] = "mha"
    position: Literal["rope", "learned", "none"] = "rope"
    latent_rank: int | None = None
    rope_dim: int | None = None
    rope_base: float = 10000.0
    moe: bool = False
    n_shared_experts: int = 2
    n_routed_experts: int = 62
    top_k: int = 6
    expert_ratio: float = 0.25
    bias_update_rate: float = 0.05  # gamma of b_i <- b_i - gamma (f_i - 1/N_r); f_i - 1/N_r is O(1/N_r)

    def __post_init__(self):
        def fail(msg):
            raise ValueError(f"invalid ModelConfig: {msg}")

        for name in ("n_layer", "d_model", "n_head", "d_ff", "vocab_size", "context"):
            if getattr(self, name) <= 0:
                fail(f"{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            fail(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if self.attention not in ("mha", "mla"):
            fail(f"attention must be 'mha' or 'mla', got {self.attention!r}")
        if self.position not in ("rope", "learned", "none"):
            fail(f"position must be 'rope', 'learned' or 'none', got {self.position!r}")
        if self.position == "rope" and (self.head_dim % 2 or self.rope_head_dim % 2):
            fail(f"rotary embeddings need even dimensions (head_dim={self.head_dim}, rope_dim={self.rope_head_dim})")
        if self.attention == "mla" and not 0 < self.kv_rank <= self.d_model:
            fail(f"latent_rank must be in (0, d_model={self.d_model}], got {self.kv_rank}")
        if self.moe:
            if not 0 < self.top_k <= self.n_routed_experts:
                fail(f"top_k={self.top_k} must be in [1, n_routed_experts={self.n_routed_experts}]")
            if self.expert_hidden <= 0 or self.n_shared_experts < 0:
                fail("experts need a positive width (expert_ratio * d_ff) and n_shared_experts >= 0")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_rank(self) -> int:
        return self.latent_rank or self.d_model // 2

    @property
    def rope_head_dim(self) -> int:
        """Rotary dimensions of MLA's decoupled query/key (0 without RoPE or with MHA)."""
        if self.attention != "mla" or self.position != "rope":
            return 0
        return self.rope_dim or self.head_dim // 2

    @property
    def expert_hidden(self) -> int:
        return int(self.d_ff * self.expert_ratio)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def variant(self, name: str) -> "ModelConfig":
        """The same size as another architecture: ``mha``, ``mla``, ``mla-norope`` (MLA with
        learned absolute positions, the MLA paper's ablation) or ``moe-mla`` (MoE-MLA-RoPE)."""
        if name not in VARIANTS:
            raise ValueError(f"unknown variant {name!r}; choose one of {VARIANTS}")
        return self.replace(
            attention="mha" if name == "mha" else "mla",
            position="learned" if name == "mla-norope" else "rope",
            moe=name == "moe-mla",
        )


# Table 1 of the paper: layers, hidden, heads, FFN; vocabulary 50,257, context 512, tied embeddings.
PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(n_layer=2, d_model=64, n_head=4, d_ff=256, vocab_size=512, context=64,
                        n_routed_experts=8, top_k=2, n_shared_experts=1),
    "XS": ModelConfig(n_layer=6, d_model=256, n_head=8, d_ff=1024),
    "S": ModelConfig(n_layer=6, d_model=512, n_head=8, d_ff=2048),
    "M": ModelConfig(n_layer=9, d_model=512, n_head=8, d_ff=2048),
    "L": ModelConfig(n_layer=12, d_model=768, n_head=12, d_ff=3072),
    "XL": ModelConfig(n_layer=12, d_model=1024, n_head=16, d_ff=4096),
}
# The paper's parameter counts (Table 1, MHA), for comparison.
PAPER_PARAMS = {"XS": 17.5e6, "S": 44.5e6, "M": 54.1e6, "L": 123.3e6, "XL": 202.7e6}


def preset(name: str, variant: str = "mha", **changes) -> ModelConfig:
    """A Table 1 size (``tiny``, ``XS`` ... ``XL``) as one of ``VARIANTS`` (``mha``, ``mla``, ``mla-norope``, ``moe-mla``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {list(PRESETS)}")
    return PRESETS[name].variant(variant).replace(**changes)


def expert_combinations(config: ModelConfig) -> int:
    """How many sets of routed experts a token can be sent to: ``top_k`` of ``n_routed_experts``."""
    return math.comb(config.n_routed_experts, config.top_k)


def kv_cache_elements_per_token(config: ModelConfig) -> int:
    """Cached numbers per token per layer: ``2 d`` for MHA (keys and values of every head),
    ``r + d_R`` for MLA (the normalised latent and the shared rotary key)."""
    if config.attention == "mha":
        return 2 * config.d_model
    return config.kv_rank + config.rope_head_dim


def kv_cache_bytes(config: ModelConfig, batch: int, seq_len: int, dtype: torch.dtype = torch.bfloat16) -> int:
    """Analytic size of the KV cache for ``batch`` sequences of ``seq_len`` tokens."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return config.n_layer * batch * seq_len * kv_cache_elements_per_token(config) * itemsize
