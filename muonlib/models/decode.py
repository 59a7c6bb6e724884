"""Decoding on a static KV cache: one fixed-shape step per token, replayed as CUDA graphs.

A step takes one token per sequence at a position held on the device, writes its keys and
values (MHA) or its latent and rotary key (MLA) into the preallocated cache, and attends
over the first ``length`` cached positions, masking those past the position. ``length`` is
the position rounded up to a multiple of :data:`LENGTH_BUCKET`, so a step reads about the
filled part of the cache, not all of it; on a GPU each length is one CUDA graph, captured
on first use. MLA attends in latent space (its up-projections absorbed into the query and
the output), sharing each sequence's latent cache across heads (on a GPU in one Triton kernel,
``muonlib.kernels.latent_attention``, that reads it once for all of them); MoE routing needs no host
synchronisation where ``grouped_mm`` runs as one kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .attention import MultiHeadAttention, MultiHeadLatentAttention, Rotary, rotate

#: cache positions a step's attention reads are rounded up to a multiple of this; one CUDA graph per multiple
LENGTH_BUCKET = 64


def angles(rotary: Rotary, pos: Tensor) -> tuple[Tensor, Tensor]:
    """The cosines and sines of one position (a ``(1,)`` device tensor), looked up once per step for every layer."""
    return rotary.cos.index_select(0, pos), rotary.sin.index_select(0, pos)


def visible(pos: Tensor, length: int) -> Tensor:
    """``(1, length)`` booleans: the cached positions a token at ``pos`` attends to."""
    return (torch.arange(length, device=pos.device) <= pos).view(1, length)


def mha_step(attn: MultiHeadAttention, x: Tensor, cache: dict[str, Tensor], pos: Tensor, length: int,
             rotation: tuple[Tensor, Tensor] | None, mask: Tensor) -> Tensor:
    """Keys and values written at ``pos``, attention over the first ``length`` cached positions
    under ``mask`` (``visible(pos, length)``, made once a step for every layer)."""
    B, _, d = x.shape
    qkv = F.linear(x, attn.qkv.view(3 * d, d)).view(B, 1, 3, attn.n_head, attn.head_dim)
    if rotation is not None:  # queries and keys in one rotation: a decode step is a chain of small kernels
        q, k = rotate(qkv[:, :, :2], *rotation).unbind(2)
        v = qkv[:, :, 2]
    else:
        q, k, v = qkv.unbind(2)
    cache["k"].index_copy_(2, pos, k.transpose(1, 2))
    cache["v"].index_copy_(2, pos, v.transpose(1, 2))
    y = F.scaled_dot_product_attention(q.transpose(1, 2), cache["k"][:, :, :length], cache["v"][:, :, :length],
                                       attn_mask=mask)
    return attn.out(y.transpose(1, 2).reshape(B, 1, d))


def latent_kernel_fits(model) -> bool:
    """Whether MLA's decode attention takes the Triton kernel by default: on an Ampere or newer GPU
    (older ones have too little shared memory for a block of a wide latent) in a float dtype it
    computes in."""
    p = model.tok_emb.weight
    return (p.is_cuda and p.dtype in (torch.bfloat16, torch.float16, torch.float32)
            and torch.cuda.get_device_capability(p.device)[0] >= 8)


def mla_step(attn: MultiHeadLatentAttention, x: Tensor, cache: dict[str, Tensor], pos: Tensor, length: int,
             rotation: tuple[Tensor, Tensor] | None, kernel: bool = False) -> Tensor:
    """Absorbed MLA: scores ``(W_uk^h^T q_h) . c_s + q_R^h . k_R,s``, output ``W_uv^h sum_s p_s c_s``;
    the attention in latent space through the Triton kernel with ``kernel``, else plain torch."""
    from ..kernels import latent_attention  # imports Triton: only where a step runs

    B = x.size(0)
    H, D, R, P = attn.n_head, attn.head_dim, attn.rank, attn.rope_dim
    cache["latent"].index_copy_(1, pos, attn.kv_norm(attn.kv_down(x)))
    latent = cache["latent"][:, :length]  # (B, L, R), shared by every head
    q_latent = torch.einsum("bhd,hdr->bhr", attn.q(x).view(B, H, D), attn.k_up.weight.view(H, D, R))
    q_rope = k_rope = None
    if P:
        cache["k_rope"].index_copy_(1, pos, rotate(attn.k_rope(x), *rotation))
        q_rope = rotate(attn.q_rope(x).view(B, 1, H, P), *rotation).view(B, H, P)
        k_rope = cache["k_rope"][:, :length]
    attend = latent_attention.latent_attention if kernel else latent_attention.latent_attention_reference
    y_latent = attend(q_latent, q_rope, latent, k_rope, pos, attn.scale).to(latent.dtype)  # (B, H, R)
    y = torch.einsum("bhr,hdr->bhd", y_latent, attn.v_up.weight.view(H, D, R))
    return attn.out(y.reshape(B, 1, H * D))


def decode_step(model, tokens: Tensor, layers: list[dict[str, Tensor]], pos: Tensor, length: int,
                latent_kernel: bool = False) -> Tensor:
    """Logits ``(B, vocab)`` of the next token after ``tokens`` ``(B, 1)`` at position ``pos``,
    writing their cache entries; attention reads the first ``length`` positions (MLA's through
    the Triton kernel with ``latent_kernel``)."""
    x = model.tok_emb(tokens)
    if model.pos_emb is not None:
        x = x + model.pos_emb(pos)
    rotary = getattr(model.blocks[0].attn, "rotary", None)  # every layer's table is the same
    rotation = angles(rotary, pos) if rotary is not None else None
    mask = visible(pos, length)
    for block, cache in zip(model.blocks, layers):
        h = block.attn_norm(x)
        if isinstance(block.attn, MultiHeadLatentAttention):
            x = x + mla_step(block.attn, h, cache, pos, length, rotation, latent_kernel)
        else:
            x = x + mha_step(block.attn, h, cache, pos, length, rotation, mask)
        x = x + block.ffn(block.ffn_norm(x))
    return model.lm_head(model.norm(x))[:, -1]


def graph_safe(model) -> bool:
    """Whether a decode step runs without host synchronisation, so that it can be captured:
    MoE routing needs ``torch._grouped_mm`` (bf16 on Hopper or newer)."""
    p = model.tok_emb.weight
    if not p.is_cuda:
        return False
    return not model.moe_layers() or (p.dtype == torch.bfloat16 and hasattr(torch, "_grouped_mm")
                                      and torch.cuda.get_device_capability(p.device)[0] >= 9)


class Decoder:
    """A prompt's prefill, then one token per sequence per :meth:`step`, on a static cache of
    ``batch`` sequences of up to ``max_len`` tokens, with the model in evaluation mode. Both
    run without autograd: decoding needs no gradients, and the latent-attention kernel has none::

        >>> import torch
        >>> from muonlib.models import GPT, preset
        >>> model = GPT(preset("tiny", "mla")).eval()
        >>> decoder = Decoder(model, batch=2, max_len=16)
        >>> logits = decoder.prefill(torch.zeros(2, 4, dtype=torch.long))
        >>> logits = decoder.step(logits.argmax(-1, keepdim=True))
        >>> logits.shape, decoder.position
        (torch.Size([2, 512]), 5)
    """

    def __init__(self, model, batch: int, max_len: int | None = None, cuda_graphs: bool | None = None,
                 latent_kernel: bool | None = None, compile: bool = False):
        self.model = model
        # Compiled, a step's chain of small kernels is fused (the cache length a symbol: one
        # compilation for every length bucket); captured in CUDA graphs as the eager step is.
        self._decode_step = torch.compile(decode_step, dynamic=True) if compile else decode_step
        #: whether MLA's attention runs through the Triton kernel, by default where :func:`latent_kernel_fits` says it does
        self.latent_kernel = latent_kernel_fits(model) if latent_kernel is None else latent_kernel
        self.cache = model.new_cache(batch, max_len)
        device = model.tok_emb.weight.device
        self.tokens = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.cuda_graphs = graph_safe(model) if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and not graph_safe(model):
            raise ValueError("this model's decode step synchronises with the host (MoE routing outside bf16 on Hopper): "
                             "it cannot be captured; use cuda_graphs=False")
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, Tensor]] = {}

    @property
    def position(self) -> int:
        """Tokens cached so far."""
        return self.cache.pos

    @torch.no_grad()
    def prefill(self, idx: Tensor) -> Tensor:
        """Cache a ``(batch, T)`` prompt from position 0; returns the next token's logits ``(batch, vocab)``."""
        if idx.size(0) != self.tokens.size(0):
            raise ValueError(f"the decoder holds {self.tokens.size(0)} sequences, the prompt has {idx.size(0)}")
        self.cache.pos = 0
        return self.model.lm_head(self.model.hidden(idx, self.cache)[:, -1])

    @torch.no_grad()
    def step(self, tokens: Tensor) -> Tensor:
        """Cache one token per sequence (``(batch, 1)``); returns the next token's logits."""
        position = self.cache.pos
        if position >= self.cache.max_len:
            raise ValueError(f"the cache is full ({self.cache.max_len} tokens): make the decoder with a larger max_len")
        length = min(self.cache.max_len, -(-(position + 1) // LENGTH_BUCKET) * LENGTH_BUCKET)
        self.tokens.copy_(tokens)
        self.pos.fill_(position)
        if self.cuda_graphs:
            graph, logits = self._graphs.get(length) or self._capture(length)
            graph.replay()
            logits = logits.clone()  # the graph's output buffer is overwritten by the next replay
        else:
            logits = self._decode_step(self.model, self.tokens, self.cache.layers, self.pos, length, self.latent_kernel)
        self.cache.pos += 1
        return logits

    def _capture(self, length: int) -> tuple[torch.cuda.CUDAGraph, Tensor]:
        # One eager run on a side stream first (lazy initialisation must not happen during
        # capture); it writes the same cache entries the replay will.
        stream = torch.cuda.Stream(self.pos.device)
        stream.wait_stream(torch.cuda.current_stream(self.pos.device))
        with torch.cuda.stream(stream):
            self._decode_step(self.model, self.tokens, self.cache.layers, self.pos, length, self.latent_kernel)
        torch.cuda.current_stream(self.pos.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            logits = self._decode_step(self.model, self.tokens, self.cache.layers, self.pos, length, self.latent_kernel)
        self._graphs[length] = (graph, logits)
        return graph, logits


__all__ = ["Decoder", "LENGTH_BUCKET", "decode_step", "graph_safe", "latent_kernel_fits", "mha_step", "mla_step"]
