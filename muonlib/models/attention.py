"""Multi-head attention and multi-head latent attention, both with a KV cache.

Shapes: ``B`` batch, ``T`` new tokens, ``S`` cached + new tokens, ``H`` heads, ``D`` head
dimension, ``R`` latent rank, ``P`` rotary dimension of MLA's decoupled key.

A layer's cache is a dict of preallocated tensors indexed by absolute position; the
caller passes ``pos``, the position of the first new token.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig

Cache = dict[str, Tensor]


class Rotary(nn.Module):
    """Rotary position embedding (RoFormer), rotating the two halves of each vector."""

    def __init__(self, dim: int, context: int, base: float):
        super().__init__()
        inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        angles = torch.outer(torch.arange(context, dtype=torch.float64), inv_freq)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: Tensor, pos: int) -> Tensor:
        """Rotate ``x`` of shape ``(B, T, ..., dim)`` for positions ``pos .. pos + T - 1``."""
        return rotate(x, self.cos[pos : pos + x.size(1)], self.sin[pos : pos + x.size(1)])


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the two halves of each vector of ``x`` ``(B, T, ..., dim)`` by the angles whose
    cosines and sines (``(T, dim / 2)``, one row per position) are given."""
    shape = (1, x.size(1)) + (1,) * (x.ndim - 3) + (-1,)
    cos, sin = cos.view(shape), sin.view(shape)
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


def causal_mask(T: int, pos: int, device: torch.device) -> Tensor | None:
    """Boolean mask letting new token ``i`` (absolute ``pos + i``) see positions ``<= pos + i``;
    ``None`` when a plain causal mask or no mask does the job."""
    if T == 1:
        return None
    q = torch.arange(pos, pos + T, device=device).unsqueeze(1)
    return torch.arange(pos + T, device=device).unsqueeze(0) <= q


def attention_entropy(q: Tensor, k: Tensor, pos: int, scale: float | None = None) -> Tensor:
    """Mean entropy (nats) of each head's causal attention distribution, ``(H,)``, for
    ``(B, H, T, .)`` queries at absolute positions ``pos ...`` over ``(B, H, S, .)`` keys: the
    weights :func:`attend` uses, computed explicitly in float32."""
    T, S = q.size(2), k.size(2)
    scores = (q.float() @ k.float().mT) * (scale if scale is not None else q.size(-1) ** -0.5)
    visible = torch.arange(S, device=q.device) <= torch.arange(pos, pos + T, device=q.device).unsqueeze(1)
    logp = torch.log_softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    return -(logp.exp() * logp.masked_fill(~visible, 0.0)).sum(-1).mean(dim=(0, 2))


_recorded: list[Tensor] | None = None  # a plain global, which torch.compile guards on without a graph break


@contextmanager
def recording_attention_entropy() -> Iterator[list[Tensor]]:
    """While active, every attention call (one per layer and forward pass, in order) appends
    its heads' :func:`attention_entropy`; for analysis, not training (it materialises every
    attention matrix)."""
    global _recorded
    outer, _recorded = _recorded, []
    try:
        yield _recorded
    finally:
        _recorded = outer


def attend(q: Tensor, k: Tensor, v: Tensor, pos: int, scale: float | None = None) -> Tensor:
    """SDPA over ``(B, H, T, .)`` queries and ``(B, H, S, .)`` keys/values, causal in absolute positions."""
    if _recorded is not None:
        _recorded.append(attention_entropy(q, k, pos, scale))
    T = q.size(2)
    if pos == 0 and k.size(2) == T:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, pos, q.device), scale=scale)


def fused_linear(x: Tensor, layers: Sequence[nn.Linear]) -> tuple[Tensor, ...]:
    """Several bias-free projections of one input in one matmul. The weights are concatenated
    for the call only: each stays its own parameter, so Muon still orthogonalises each alone."""
    weights = [layer.weight for layer in layers]
    return F.linear(x, torch.cat(weights)).split([w.shape[0] for w in weights], dim=-1)


def _init_linear(module: nn.Linear, std: float) -> nn.Linear:
    nn.init.normal_(module.weight, std=std)
    return module


class MultiHeadAttention(nn.Module):
    """Standard attention. ``qkv`` is one ``(3, d, d)`` parameter: one fused matmul, while
    Muon orthogonalises W_q, W_k and W_v separately (as three matrices of a stack)."""

    def __init__(self, config: ModelConfig, out_std: float):
        super().__init__()
        self.n_head, self.head_dim = config.n_head, config.head_dim
        d = config.d_model
        self.qkv = nn.Parameter(torch.randn(3, d, d) * 0.02)
        self.out = _init_linear(nn.Linear(d, d, bias=False), out_std)
        self.rotary = Rotary(self.head_dim, config.context, config.rope_base) if config.position == "rope" else None

    def cache_shapes(self, batch: int, max_len: int) -> dict[str, tuple[int, ...]]:
        return {"k": (batch, self.n_head, max_len, self.head_dim), "v": (batch, self.n_head, max_len, self.head_dim)}

    def forward(self, x: Tensor, cache: Cache | None = None, pos: int = 0) -> Tensor:
        B, T, d = x.shape
        q, k, v = F.linear(x, self.qkv.view(3 * d, d)).view(B, T, 3, self.n_head, self.head_dim).unbind(2)
        if self.rotary is not None:
            q, k = self.rotary(q, pos), self.rotary(k, pos)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            cache["k"][:, :, pos : pos + T] = k
            cache["v"][:, :, pos : pos + T] = v
            k, v = cache["k"][:, :, : pos + T], cache["v"][:, :, : pos + T]
        y = attend(q, k, v, pos)
        return self.out(y.transpose(1, 2).reshape(B, T, d))


class MultiHeadLatentAttention(nn.Module):
    """Keys and values through a shared rank-``R`` latent (DeepSeek-V2 style, no query compression).

    ``c = RMSNorm(W_dkv x)`` is the only per-token state besides the shared rotary key
    ``k_R = RoPE(W_kR x)``. Per head, ``k_h = W_uk^h c`` and ``v_h = W_uv^h c``, and the score
    is ``(q_h . k_h + q_R^h . k_R) / sqrt(D + P)``.

    * Training and prefill decompress ``k_h, v_h`` (the matmul-efficient "naive" path). The
      projections of one input run as one matmul (:func:`fused_linear`), which measured faster
      than one matmul each (``data/bench/projections_*.json``, read by the architectures chapter).
    * Decoding absorbs the up-projections: ``q_h . W_uk^h c = (W_uk^h^T q_h) . c``, and
      ``sum_s p_s W_uv^h c_s = W_uv^h (sum_s p_s c_s)``: attention runs in latent space over
      the cache ``(c, k_R)``, which is never decompressed.
    """

    def __init__(self, config: ModelConfig, out_std: float):
        super().__init__()
        d, H, D, R, P = config.d_model, config.n_head, config.head_dim, config.kv_rank, config.rope_head_dim
        self.n_head, self.head_dim, self.rank, self.rope_dim = H, D, R, P
        self.q = _init_linear(nn.Linear(d, H * D, bias=False), 0.02)
        self.kv_down = _init_linear(nn.Linear(d, R, bias=False), 0.02)
        self.kv_norm = nn.RMSNorm(R)
        self.k_up = _init_linear(nn.Linear(R, H * D, bias=False), 0.02)
        self.v_up = _init_linear(nn.Linear(R, H * D, bias=False), 0.02)
        self.out = _init_linear(nn.Linear(H * D, d, bias=False), out_std)
        if P:
            self.q_rope = _init_linear(nn.Linear(d, H * P, bias=False), 0.02)
            self.k_rope = _init_linear(nn.Linear(d, P, bias=False), 0.02)
            self.rotary = Rotary(P, config.context, config.rope_base)
        self.scale = 1.0 / math.sqrt(D + P)

    def cache_shapes(self, batch: int, max_len: int) -> dict[str, tuple[int, ...]]:
        shapes = {"latent": (batch, max_len, self.rank)}
        if self.rope_dim:
            shapes["k_rope"] = (batch, max_len, self.rope_dim)
        return shapes

    def _project(self, x: Tensor, pos: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Per-head queries ``(B, T, H, D)``, latent ``(B, T, R)`` and the rotary parts."""
        B, T, _ = x.shape
        if not self.rope_dim:
            q, down = fused_linear(x, (self.q, self.kv_down))
            return q.view(B, T, self.n_head, self.head_dim), self.kv_norm(down), None, None
        q, down, q_rope, k_rope = fused_linear(x, (self.q, self.kv_down, self.q_rope, self.k_rope))
        q_rope = self.rotary(q_rope.view(B, T, self.n_head, self.rope_dim), pos)
        return q.view(B, T, self.n_head, self.head_dim), self.kv_norm(down), q_rope, self.rotary(k_rope, pos)

    def forward(self, x: Tensor, cache: Cache | None = None, pos: int = 0, absorbed: bool | None = None) -> Tensor:
        """``absorbed`` defaults to True when decoding from a non-empty cache."""
        B, T, _ = x.shape
        q, latent, q_rope, k_rope = self._project(x, pos)
        if cache is not None:
            cache["latent"][:, pos : pos + T] = latent
            latent = cache["latent"][:, : pos + T]
            if self.rope_dim:
                cache["k_rope"][:, pos : pos + T] = k_rope
                k_rope = cache["k_rope"][:, : pos + T]
        if absorbed is None:
            absorbed = cache is not None and pos > 0
        attention = self._absorbed if absorbed else self._naive
        y = attention(q, latent, q_rope, k_rope, pos)
        return self.out(y.reshape(B, T, self.n_head * self.head_dim))

    def _naive(self, q, latent, q_rope, k_rope, pos) -> Tensor:
        B, S, _ = latent.shape
        k, v = (t.view(B, S, self.n_head, self.head_dim) for t in fused_linear(latent, (self.k_up, self.v_up)))
        if self.rope_dim:
            q = torch.cat((q, q_rope), dim=-1)
            k = torch.cat((k, k_rope.unsqueeze(2).expand(B, S, self.n_head, self.rope_dim)), dim=-1)
        y = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), pos, self.scale)
        return y.transpose(1, 2)

    def _absorbed(self, q, latent, q_rope, k_rope, pos) -> Tensor:
        H, D, R = self.n_head, self.head_dim, self.rank
        w_uk = self.k_up.weight.view(H, D, R)
        w_uv = self.v_up.weight.view(H, D, R)
        q_latent = torch.einsum("bthd,hdr->bhtr", q, w_uk)
        keys = latent.unsqueeze(1)  # (B, 1, S, R): one latent shared by all heads
        if self.rope_dim:
            q_latent = torch.cat((q_latent, q_rope.transpose(1, 2)), dim=-1)
            keys = torch.cat((keys, k_rope.unsqueeze(1)), dim=-1)
        B, _, S, _ = keys.shape
        y_latent = attend(q_latent, keys.expand(B, H, S, -1), latent.unsqueeze(1).expand(B, H, S, R), pos, self.scale)
        return torch.einsum("bhtr,hdr->bthd", y_latent, w_uv)
