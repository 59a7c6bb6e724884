"""Decode attention over MLA's latent cache, each sequence's cache read once for all heads.

An absorbed MLA decode step (``muonlib.models.decode.mla_step``) scores each head's latent
query ``W_uk^h^T q_h`` against every cached latent ``c_s`` (plus its rotary part against the
shared rotary key), and returns ``sum_s p_s c_s`` per head. The cache is what a step must
read, and it is the same for every head: plain torch reads it once per head-batched matmul and
writes the scores out between them. Here, as in FlashMLA, one program streams one sequence's
share of the cache block by block, scores all its heads against each block in one matmul (the
heads are the rows), keeps an online softmax and the running ``sum_s p_s c_s``, and writes
that partial result with its running maximum and sum. When the batch alone would leave the
GPU's multiprocessors idle, the cached positions are split over several programs per
sequence, and :func:`combine` weighs the splits' partial results by their maxima.

:func:`latent_attention_reference` is the same attention in plain torch. Under
``TRITON_INTERPRET=1`` the kernel runs on a CPU (slowly), which is how the tests check it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .symmetric import interpreting, on_device

# A masked score: finite, so that a block with no visible position leaves the running maximum
# and sum as they were instead of making them NaN.
_MASKED = tl.constexpr(-1.0e30)
_LOG2E = 1.4426950408889634


@triton.jit
def _latent_attention_kernel(
    q_ptr, q_rope_ptr, latent_ptr, k_rope_ptr, pos_ptr,
    acc_ptr, max_ptr, sum_ptr,
    H, R, P, blocks_per_split, scale_log2,
    stride_qb, stride_qh, stride_qrb, stride_qrh,
    stride_cb, stride_cs, stride_kb, stride_ks,
    stride_ab, stride_as, stride_ah, stride_mb, stride_ms,
    H_PAD: tl.constexpr, R_PAD: tl.constexpr, P_PAD: tl.constexpr, BLOCK_S: tl.constexpr,
    HAS_ROPE: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    pos = tl.load(pos_ptr)
    heads = tl.arange(0, H_PAD)
    rs = tl.arange(0, R_PAD)
    ps = tl.arange(0, P_PAD)
    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + rs[None, :],
                mask=(heads[:, None] < H) & (rs[None, :] < R), other=0.0)
    if UPCAST:  # the interpreter's dot has no bf16
        q = q.to(tl.float32)
    if HAS_ROPE:
        q_rope = tl.load(q_rope_ptr + b * stride_qrb + heads[:, None] * stride_qrh + ps[None, :],
                         mask=(heads[:, None] < H) & (ps[None, :] < P), other=0.0)
        if UPCAST:
            q_rope = q_rope.to(tl.float32)

    running_max = tl.full((H_PAD,), _MASKED, tl.float32)
    running_sum = tl.zeros((H_PAD,), tl.float32)
    acc = tl.zeros((H_PAD, R_PAD), tl.float32)
    first = split * blocks_per_split * BLOCK_S
    for block in range(blocks_per_split):
        s = first + block * BLOCK_S + tl.arange(0, BLOCK_S)
        seen = s <= pos  # positions past this token's are masked, and never read
        c = tl.load(latent_ptr + b * stride_cb + s[:, None].to(tl.int64) * stride_cs + rs[None, :],
                    mask=seen[:, None] & (rs[None, :] < R), other=0.0)
        if UPCAST:
            c = c.to(tl.float32)
        if IEEE:
            scores = tl.dot(q, tl.trans(c), input_precision="ieee")
        else:
            scores = tl.dot(q, tl.trans(c))
        if HAS_ROPE:
            k_rope = tl.load(k_rope_ptr + b * stride_kb + s[:, None].to(tl.int64) * stride_ks + ps[None, :],
                             mask=seen[:, None] & (ps[None, :] < P), other=0.0)
            if UPCAST:
                k_rope = k_rope.to(tl.float32)
            if IEEE:
                scores = tl.dot(q_rope, tl.trans(k_rope), scores, input_precision="ieee")
            else:
                scores = tl.dot(q_rope, tl.trans(k_rope), scores)
        scores = tl.where(seen[None, :], scores * scale_log2, _MASKED)
        new_max = tl.maximum(running_max, tl.max(scores, axis=1))
        weights = tl.where(seen[None, :], tl.exp2(scores - new_max[:, None]), 0.0)
        decay = tl.exp2(running_max - new_max)
        running_sum = running_sum * decay + tl.sum(weights, axis=1)
        if IEEE:
            acc = tl.dot(weights, c, acc * decay[:, None], input_precision="ieee")
        else:
            acc = tl.dot(weights.to(c.dtype), c, acc * decay[:, None])
        running_max = new_max

    inside = heads < H
    tl.store(acc_ptr + b * stride_ab + split * stride_as + heads[:, None] * stride_ah + rs[None, :], acc,
             mask=inside[:, None] & (rs[None, :] < R))
    tl.store(max_ptr + b * stride_mb + split * stride_ms + heads, running_max, mask=inside)
    tl.store(sum_ptr + b * stride_mb + split * stride_ms + heads, running_sum, mask=inside)


def split_count(batch: int, blocks: int, programs: int) -> int:
    """How many programs share one sequence's cache of ``blocks`` blocks: enough that the
    batch fills ``programs`` programs, no more than there are blocks, and no split left empty."""
    wanted = max(1, min(blocks, -(-programs // batch)))
    per_split = -(-blocks // wanted)
    return -(-blocks // per_split)


def combine(acc: Tensor, maxima: Tensor, sums: Tensor) -> Tensor:
    """``(B, H, R)`` attention outputs from each split's partial ``sum_s p_s c_s`` ``(B, splits,
    H, R)``, running maxima (base 2) and sums ``(B, splits, H)``."""
    weights = torch.exp2(maxima - maxima.amax(1, keepdim=True))
    return (acc * weights.unsqueeze(-1)).sum(1) / (sums * weights).sum(1).unsqueeze(-1)


def _shared_memory(device: torch.device) -> int:
    """Shared memory one block may claim on ``device`` (0 off a GPU, where the interpreter runs)."""
    if device.type != "cuda":
        return 0
    # where torch does not say: room for the 32-position blocks of a bf16 rank-512 latent, which every Ampere GPU holds
    return getattr(torch.cuda.get_device_properties(device), "shared_memory_per_block_optin", 96 * 1024)


def _launch_config(rank: int, itemsize: int, shared_memory: int) -> dict:
    """Four warps, two stages, and the largest block of cached positions (64 at most) whose
    two stages of latents take at most three quarters of the GPU's ``shared_memory`` per block:
    the fastest launch of ``python -m muonlib.bench latent`` over L's and XL's cells on an H200
    (64 positions for a bf16 rank-512 latent, within 8% of each cell's best, where 32 lost up to
    35% at batch 256 and a 2,048 cache); 32 on an A100 or an L4, whose shared memory is smaller.
    Small blocks in the interpreter."""
    if interpreting():
        return dict(BLOCK_S=16, num_warps=1, num_stages=1)
    block = 64
    while block > 16 and 2 * block * triton.next_power_of_2(rank) * itemsize > shared_memory * 3 // 4:
        block //= 2
    return dict(BLOCK_S=block, num_warps=4, num_stages=2)


def launch_attention(q_latent: Tensor, q_rope: Tensor | None, latent: Tensor, k_rope: Tensor | None, pos: Tensor,
                     scale: float, splits: int | None = None, config: dict | None = None) -> Tensor:
    """The kernel behind :func:`latent_attention`, its launch ``config`` (``BLOCK_S``,
    ``num_warps``, ``num_stages``; default: the kernel's own) open to a benchmark's sweep."""
    B, H, R = q_latent.shape
    L = latent.size(1)
    if latent.shape != (B, L, R) or (q_rope is None) != (k_rope is None):
        raise ValueError(f"latent attention needs queries (B, H, R), a cache (B, L, R) and both rotary parts or neither; "
                         f"got {tuple(q_latent.shape)}, {tuple(latent.shape)}, rotary parts: "
                         f"{None if q_rope is None else tuple(q_rope.shape)}, {None if k_rope is None else tuple(k_rope.shape)}")
    if not (latent.is_cuda or interpreting()):
        raise RuntimeError("the Triton kernels need a CUDA GPU; on a CPU run them in Triton's interpreter with "
                           "TRITON_INTERPRET=1 set before muonlib.kernels is imported, or use latent_attention_reference")
    config = config or _launch_config(R, latent.element_size(), _shared_memory(latent.device))
    blocks = triton.cdiv(L, config["BLOCK_S"])
    if splits is None:
        programs = 2 * torch.cuda.get_device_properties(latent.device).multi_processor_count if latent.is_cuda else 1
        splits = split_count(B, blocks, programs)
    per_split = triton.cdiv(blocks, splits)
    P = k_rope.size(-1) if k_rope is not None else 0
    # The kernel steps along the last dimension one element at a time (a cache's prefix slice keeps that).
    q_latent, latent = q_latent.contiguous(), latent if latent.stride(-1) == 1 else latent.contiguous()
    rotary = (q_rope.contiguous(), k_rope if k_rope.stride(-1) == 1 else k_rope.contiguous()) if P else (q_latent, latent)  # unread without RoPE
    acc = torch.empty(B, splits, H, R, dtype=torch.float32, device=latent.device)
    maxima = torch.empty(B, splits, H, dtype=torch.float32, device=latent.device)
    sums = torch.empty_like(maxima)
    with on_device(latent):
        _latent_attention_kernel[(B, splits)](
            q_latent, rotary[0], latent, rotary[1], pos, acc, maxima, sums,
            H, R, P, per_split, scale * _LOG2E,
            q_latent.stride(0), q_latent.stride(1), rotary[0].stride(0), rotary[0].stride(1),
            latent.stride(0), latent.stride(1), rotary[1].stride(0), rotary[1].stride(1),
            acc.stride(0), acc.stride(1), acc.stride(2), maxima.stride(0), maxima.stride(1),
            H_PAD=max(16, triton.next_power_of_2(H)), R_PAD=max(16, triton.next_power_of_2(R)),
            P_PAD=max(16, triton.next_power_of_2(max(P, 1))), HAS_ROPE=P > 0,
            UPCAST=interpreting() and latent.dtype != torch.float32, IEEE=latent.dtype == torch.float32, **config,
        )
    return acc[:, 0] / sums[:, 0].unsqueeze(-1) if splits == 1 else combine(acc, maxima, sums)


# An operator of its own, so that torch.compile calls the kernel as it is instead of tracing into
# its launch (Inductor fails on it under dynamic shapes).
@torch.library.custom_op("muonlib::latent_attention", mutates_args=())
def _latent_attention_op(q_latent: Tensor, q_rope: Tensor | None, latent: Tensor, k_rope: Tensor | None, pos: Tensor,
                         scale: float, splits: int | None = None) -> Tensor:
    return launch_attention(q_latent, q_rope, latent, k_rope, pos, scale, splits)


@_latent_attention_op.register_fake
def _(q_latent: Tensor, q_rope: Tensor | None, latent: Tensor, k_rope: Tensor | None, pos: Tensor,
      scale: float, splits: int | None = None) -> Tensor:
    return q_latent.new_empty(q_latent.shape, dtype=torch.float32)


def latent_attention(q_latent: Tensor, q_rope: Tensor | None, latent: Tensor, k_rope: Tensor | None, pos: Tensor,
                     scale: float, splits: int | None = None) -> Tensor:
    """Each head's ``sum_s p_s c_s`` ``(B, H, R)`` (float32) for the token at position ``pos``
    (a ``(1,)`` device tensor): ``p = softmax(scale (q_latent . c_s + q_rope . k_rope_s))`` over
    the cached positions ``s <= pos`` of ``latent`` ``(B, L, R)`` and ``k_rope`` ``(B, L, P)``
    (or ``None`` with ``q_rope``, for MLA without RoPE). ``splits`` overrides how many programs
    share one sequence's cache."""
    return _latent_attention_op(q_latent, q_rope, latent, k_rope, pos, scale, splits)


def latent_attention_reference(q_latent: Tensor, q_rope: Tensor | None, latent: Tensor, k_rope: Tensor | None,
                               pos: Tensor, scale: float) -> Tensor:
    """What :func:`latent_attention` computes, in plain torch (softmax in float32 at least)."""
    scores = q_latent @ latent.transpose(1, 2)  # (B, H, L)
    if q_rope is not None:
        scores = scores + q_rope @ k_rope.transpose(1, 2)
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32)) * scale
    visible = torch.arange(latent.size(1), device=latent.device) <= pos
    weights = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    return weights @ latent.to(weights.dtype)


__all__ = ["combine", "latent_attention", "latent_attention_reference", "split_count"]
