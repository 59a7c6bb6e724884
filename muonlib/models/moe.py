"""The dense FFN and the MoE-MLA-RoPE mixture of experts.

MoE layer (arXiv 2508.01261): ``n_shared`` always-active experts plus ``top_k`` of
``n_routed`` routed experts, each a GELU MLP of width ``expert_ratio * d_ff``. Routing is
auxiliary-loss-free: a bias ``b`` decides *which* experts a token goes to, the unbiased
scores decide *how much* each contributes, and ``b_i <- b_i - gamma (f_i - 1/N_r)`` is
applied once per optimizer step from the loads ``f_i`` counted since the last update.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig


class MLP(nn.Module):
    """GELU feed-forward ``d -> d_ff -> d``."""

    def __init__(self, d: int, hidden: int, out_std: float):
        super().__init__()
        self.up = nn.Linear(d, hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)
        nn.init.normal_(self.up.weight, std=0.02)
        nn.init.normal_(self.down.weight, std=out_std)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.gelu(self.up(x)))


class Router(nn.Module):
    """Sigmoid router logits, the balancing bias and the load counters (buffers, not parameters)."""

    muon_role = "router"  # muonlib.optim routes this weight to AdamW by default

    def __init__(self, d: int, n_experts: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_experts, d) * 0.02)
        self.register_buffer("bias", torch.zeros(n_experts))
        self.register_buffer("counts", torch.zeros(n_experts))  # tokens routed since the last bias update
        self.register_buffer("load", torch.zeros(n_experts))  # f_i of the last update

    def _apply(self, fn, recurse=True):
        # model.to(bfloat16) must not cast the balancing state: bf16 counts stop being exact
        # above 256, and bias steps of gamma * (f_i - 1/N) ~ 1e-3 would round away.
        super()._apply(fn, recurse)
        for name in ("bias", "counts", "load"):
            setattr(self, name, getattr(self, name).float())
        return self

    def forward(self, x: Tensor, top_k: int) -> tuple[Tensor, Tensor]:
        """Expert indices ``(N, k)`` and gate weights ``(N, k)`` (fp32, summing to 1) for ``N`` tokens."""
        dtype = torch.promote_types(x.dtype, torch.float32)  # routing decisions in fp32 at least
        scores = torch.sigmoid(F.linear(x.to(dtype), self.weight.to(dtype)))
        experts = torch.topk(scores + self.bias, top_k, dim=-1, sorted=False).indices
        gates = scores.gather(-1, experts)
        gates = gates / gates.sum(-1, keepdim=True)
        if self.training:
            with torch.no_grad():
                self.counts.scatter_add_(0, experts.flatten(), torch.ones_like(experts.flatten(), dtype=self.counts.dtype))
        return experts, gates

    @torch.no_grad()
    def update_bias(self, rate: float) -> None:
        """``b_i <- b_i - rate (f_i - 1/N)`` with ``f_i`` the share of routed slots expert ``i``
        took since the last call; the change sums to zero. Resets the counters."""
        total = self.counts.sum()
        load = self.counts / total.clamp_min(1)
        delta = torch.where(total > 0, load - 1.0 / self.counts.numel(), torch.zeros_like(load))
        self.bias.sub_(rate * delta)
        self.load.copy_(load)
        self.counts.zero_()


def grouped_mm(x: Tensor, w: Tensor, offsets: Tensor) -> Tensor:
    """``x[rows of group e] @ w[e]`` for consecutive row groups ending at ``offsets`` (int32).

    Uses ``torch._grouped_mm`` (one kernel, no host synchronisation) for bf16 on Hopper and
    newer when both operands' rows are 16-byte aligned (widths a multiple of 8), as it
    requires; elsewhere a loop over groups, which reads the offsets on the host.
    """
    aligned = x.size(-1) % 8 == 0 and w.size(-1) % 8 == 0
    if (x.is_cuda and x.dtype == torch.bfloat16 and aligned and hasattr(torch, "_grouped_mm")
            and torch.cuda.get_device_capability(x.device)[0] >= 9):
        return torch._grouped_mm(x, w, offs=offsets)
    ends = offsets.tolist()
    starts = [0] + ends[:-1]
    return torch.cat([x[s:e] @ w[g] for g, (s, e) in enumerate(zip(starts, ends))], dim=0)


class MoE(nn.Module):
    """Shared plus routed experts; expert weights are 3D stacks ``(E, out, in)`` so that Muon
    orthogonalises each expert's matrix separately."""

    def __init__(self, config: ModelConfig, out_std: float):
        super().__init__()
        d, h = config.d_model, config.expert_hidden
        self.top_k, self.rate = config.top_k, config.bias_update_rate
        self.router = Router(d, config.n_routed_experts)
        self.routed_up = nn.Parameter(torch.randn(config.n_routed_experts, h, d) * 0.02)
        self.routed_down = nn.Parameter(torch.randn(config.n_routed_experts, d, h) * out_std)
        self.shared_up = nn.Parameter(torch.randn(config.n_shared_experts, h, d) * 0.02)
        self.shared_down = nn.Parameter(torch.randn(config.n_shared_experts, d, h) * out_std)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        return (self._shared(x) + self._routed(x)).view(shape)

    def _shared(self, x: Tensor) -> Tensor:
        if not self.shared_up.size(0):
            return torch.zeros_like(x)
        hidden = F.gelu(torch.einsum("nd,shd->snh", x, self.shared_up))
        return torch.einsum("snh,sdh->nd", hidden, self.shared_down).to(x.dtype)

    def _routed(self, x: Tensor) -> Tensor:
        experts, gates = self.router(x, self.top_k)
        flat = experts.flatten()
        order = torch.argsort(flat, stable=True)  # slots grouped by expert
        token = order // self.top_k
        counts = torch.zeros(self.routed_up.size(0), dtype=torch.int32, device=x.device)
        counts.scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))
        offsets = torch.cumsum(counts, 0, dtype=torch.int32)
        # grouped_mm is not an autocast op: cast by hand to the dtype autocast would use
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        hidden = F.gelu(grouped_mm(x[token].to(dtype), self.routed_up.to(dtype).mT, offsets))
        y = grouped_mm(hidden, self.routed_down.to(dtype).mT, offsets) * gates.flatten()[order].unsqueeze(-1).to(dtype)
        return torch.zeros_like(x).index_add_(0, token, y.to(x.dtype))

    def update_bias(self) -> None:
        self.router.update_bias(self.rate)

    def load_statistics(self) -> dict[str, Tensor]:
        """Of the last bias update: loads ``f_i``, their coefficient of variation, the max
        violation ``max_i f_i / mean - 1`` (0 is perfect balance), and how many experts no
        token reached (their gradients are zero, and Muon's momentum of them decays)."""
        load = self.router.load
        mean = load.mean()
        return {"load": load, "cv": load.std() / mean.clamp_min(1e-12), "max_violation": load.max() / mean.clamp_min(1e-12) - 1,
                "starved": (load == 0).sum().to(load.dtype)}
