"""muonlib: the Muon optimizer, MHA / MLA / MoE-MLA-RoPE models and the tools that test
the claims of "Muon: Training and Trade-offs with Latent Attention and MoE"."""

from .linalg import msign, newton_schulz
from .optim import HybridOptimizer, Muon, Shampoo, build_optimizer

__version__ = "0.1.0"
__all__ = ["HybridOptimizer", "Muon", "Shampoo", "build_optimizer", "msign", "newton_schulz"]
