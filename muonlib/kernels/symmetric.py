"""A symmetric Gram product ``alpha X X^T`` in Triton.

Two of the three products of a quintic Newton-Schulz step are of this form: ``A = X X^T``
and ``S S^T`` with ``S`` the shifted ``A`` of :func:`muonlib.linalg.newton_schulz_step`. A
kernel that computes only the tiles on and below the diagonal and mirrors them does half
the FLOPs of a general matmul. cuBLAS does not know the output is symmetric, so this can
beat it, but only where a matmul is compute-bound: at 768 wide, half the tiles mean half
an already idle GPU (see ``muonlib.bench ns``, which measures where the kernel wins and is
the source of :data:`muonlib.linalg.SYMMETRIC_MIN_WIDTH`).

The kernel has a plain torch reference next to it (:func:`gram_reference`) that gives the
same result up to the rounding order of the accumulation. Under ``TRITON_INTERPRET=1`` it
runs on the CPU (slowly): that is how the tests check it without a GPU.
"""

from __future__ import annotations

import contextlib

import os

import torch
import triton
import triton.language as tl
from torch import Tensor


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def on_device(t: Tensor):
    """The context a kernel launch on ``t`` needs: Triton launches on the current CUDA device,
    and a tensor on another GPU is not addressable from there."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


@triton.jit
def round_bfloat16(x):
    """``x`` (float32) rounded to the nearest bfloat16, ties to even, still as float32: by hand,
    because Triton's interpreter truncates float32 -> bfloat16 where a GPU rounds."""
    bits = x.to(tl.uint32, bitcast=True)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)


@triton.jit
def _gram_kernel(
    x_ptr, out_ptr, M, K,
    stride_xb, stride_xm, stride_xk,
    stride_ob, stride_om, stride_on,
    alpha,
    BLOCK: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr, ROUND_BF16: tl.constexpr, IEEE: tl.constexpr,
):
    # Program `tile` owns lower-triangle tile (row, col), row >= col, numbered row by row:
    # row r starts at r (r + 1) / 2. The float sqrt is corrected by one either way.
    tile = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    row = ((tl.sqrt(8.0 * tile.to(tl.float32) + 1.0) - 1.0) * 0.5).to(tl.int32)
    row = tl.where((row + 1) * (row + 2) // 2 <= tile, row + 1, row)
    row = tl.where(row * (row + 1) // 2 > tile, row - 1, row)
    col = tile - row * (row + 1) // 2

    rows = row * BLOCK + tl.arange(0, BLOCK)
    cols = col * BLOCK + tl.arange(0, BLOCK)
    ks = tl.arange(0, BLOCK_K)
    x = x_ptr + batch * stride_xb
    left = x + rows[:, None] * stride_xm + ks[None, :] * stride_xk  # X[rows, k]
    right = x + cols[None, :] * stride_xm + ks[:, None] * stride_xk  # X[cols, k]^T
    acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = ks < K - k * BLOCK_K
        a = tl.load(left, mask=(rows[:, None] < M) & k_left[None, :], other=0.0)
        b = tl.load(right, mask=(cols[None, :] < M) & k_left[:, None], other=0.0)
        if UPCAST:  # the interpreter's dot has no bf16
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        if IEEE:  # float32 in, float32 products (tl.dot would round the inputs to tf32)
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
        left += BLOCK_K * stride_xk
        right += BLOCK_K * stride_xk

    acc = acc * alpha
    inside = (rows[:, None] < M) & (cols[None, :] < M)
    if ROUND_BF16:  # the interpreter truncates fp32 -> bf16
        acc = round_bfloat16(acc)
    result = acc.to(out_ptr.dtype.element_ty)
    out = out_ptr + batch * stride_ob
    tl.store(out + rows[:, None] * stride_om + cols[None, :] * stride_on, result, mask=inside)
    if row != col:
        tl.store(out + cols[:, None] * stride_om + rows[None, :] * stride_on, tl.trans(result), mask=tl.trans(inside))


def _launch_config(m: int) -> dict:
    """Tile sizes: 128 x 128 tiles, 64-deep K steps, 4 warps, 3 pipeline stages on a GPU (the
    fastest of the configurations ``muonlib.bench ns`` sweeps at 4096 and 8192 on an H100, and
    within 15% at 2048), small tiles in the interpreter."""
    if interpreting():
        return dict(BLOCK=16, BLOCK_K=16, num_warps=1, num_stages=1)
    if m < 1024:
        return dict(BLOCK=64, BLOCK_K=64, num_warps=4, num_stages=4)
    return dict(BLOCK=128, BLOCK_K=64, num_warps=4, num_stages=3)


def gram(X: Tensor, alpha: float = 1.0, config: dict | None = None) -> Tensor:
    """``alpha X X^T`` for a batch ``X`` of shape ``(batch, m, k)``.

    Accumulates in float32 and returns ``X``'s dtype. ``config`` overrides the launch
    configuration (``BLOCK``, ``BLOCK_K``, ``num_warps``, ``num_stages``).
    """
    if X.ndim != 3:
        raise ValueError(f"gram expects a batch of matrices (batch, m, k), got shape {tuple(X.shape)}")
    if X.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"gram computes in float16, bfloat16 or float32, got {X.dtype}; use gram_reference for others")
    batch, m, k = X.shape
    if not (X.is_cuda or interpreting()):
        raise RuntimeError(
            "the Triton kernels need a CUDA GPU; on a CPU run them in Triton's interpreter with TRITON_INTERPRET=1 "
            "set before muonlib.kernels is imported, or use gram_reference"
        )
    out = torch.empty(batch, m, m, dtype=X.dtype, device=X.device)
    config = config or _launch_config(m)
    low_precision = X.dtype in (torch.bfloat16, torch.float16)
    tiles = triton.cdiv(m, config["BLOCK"])
    grid = (tiles * (tiles + 1) // 2, batch)
    with on_device(X):
        _gram_kernel[grid](
            X, out, m, k, *X.stride(), *out.stride(), alpha,
            UPCAST=interpreting() and low_precision,
            ROUND_BF16=interpreting() and X.dtype == torch.bfloat16, IEEE=X.dtype == torch.float32, **config,
        )
    return out


def gram_reference(X: Tensor, alpha: float = 1.0) -> Tensor:
    """What :func:`gram` computes, by a general batched matmul."""
    return torch.bmm(X, X.mT) * alpha if alpha != 1.0 else torch.bmm(X, X.mT)


__all__ = ["gram", "gram_reference", "interpreting", "round_bfloat16"]
