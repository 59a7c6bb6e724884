"""The three memory passes of a Muon step, each over every matrix of a parameter group in one
launch.

Around the batched Newton-Schulz matmuls a Muon step must read each gradient, read and write
each momentum buffer and each weight, and write and read the float16 iterate: 24 bytes per
float32 weight. Compiled torch spreads this over four or more passes and many launches; here
it takes three:

1. :func:`momentum_pass`: ``M <- lerp(M, G, 1 - beta)`` and the look-ahead
   ``D = lerp(G, M, beta)``, plus each tile's largest ``|D|`` and the sum of ``(D / that)^2``
   over the tile, so that no square underflows (read ``G`` and ``M``, write ``M``);
2. :func:`normalize_pass`: ``D / ||D||_F`` in float16, written straight into its slot of the
   Newton-Schulz batch of its shape, transposed for a tall matrix (``D`` is recomputed from
   ``G`` and ``M``, which costs the same traffic as storing it);
3. :func:`update_pass`: ``W <- (1 - lr wd) W - lr factor O`` from the matrix's slot of the
   Newton-Schulz result ``O``.

Each program handles one tile of one matrix and finds its matrix's addresses in a table
(:class:`PassTables`), the way a grouped GEMM finds its operands. The addresses are data, not
kernel arguments, so a CUDA graph that replays these launches reads gradients wherever the
autograd engine put them this step: only the table is rewritten when they move. The norm is
the tile sums combined in a fixed order, so a step is deterministic.

:func:`muon_passes_reference` is what the three passes compute, in plain torch, matrix by
matrix. Under ``TRITON_INTERPRET=1`` the kernels run on a CPU (slowly): that is how the
tests check them against it without a GPU.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..linalg import NORM_FLOOR, frobenius_norm
from .symmetric import interpreting, on_device, round_bfloat16

# Columns of the matrix table (int64): addresses, then shape.
GRAD, BUFFER, PARAM, SOURCE, RESULT, ROWS, COLS = (tl.constexpr(i) for i in range(7))
COLUMNS = tl.constexpr(7)
# Entries of the float64 scalars tensor, read by the kernels at run time so that a scheduler
# may change them without a new CUDA graph.
LR, BETA, WEIGHT_DECAY = (tl.constexpr(i) for i in range(3))
_TRITON_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
#: float32's smallest normal number: a tile's scale never goes below it, so a zero tile divides safely
FLOAT32_TINY = tl.constexpr(torch.finfo(torch.float32).tiny)


@triton.jit
def _lerp(start, end, weight):
    # torch's formula (ATen's lerp): exact at both ends, and the same roundings as torch.lerp.
    return tl.where(weight < 0.5, start + weight * (end - start), end - (end - start) * (1.0 - weight))


@triton.jit
def _rounded(x, DTYPE: tl.constexpr, ROUND_BF16: tl.constexpr):
    # x (float32) rounded to DTYPE, as float32.
    if ROUND_BF16:
        return round_bfloat16(x)
    return x.to(DTYPE).to(tl.float32)


@triton.jit
def _locate(tiles, matrices, TILE_R: tl.constexpr, TILE_C: tl.constexpr):
    # This program's tile: its matrix, the matrix's shape, the tile's offsets and in-bounds mask.
    tile = tl.program_id(0)
    matrix = tl.load(tiles + 3 * tile)
    rows = tl.load(matrices + matrix * COLUMNS + ROWS)
    cols = tl.load(matrices + matrix * COLUMNS + COLS)
    r = tl.load(tiles + 3 * tile + 1) * TILE_R + tl.arange(0, TILE_R).to(tl.int64)
    c = tl.load(tiles + 3 * tile + 2) * TILE_C + tl.arange(0, TILE_C).to(tl.int64)
    inside = (r[:, None] < rows) & (c[None, :] < cols)
    return tile, matrix, rows, cols, r, c, r[:, None] * cols + c[None, :], inside


@triton.jit
def _address(matrices, matrix, column, dtype: tl.constexpr):
    return tl.load(matrices + matrix * COLUMNS + column).to(tl.pointer_type(dtype))


@triton.jit
def _momentum_kernel(tiles, matrices, scalars, tile_maxima, tile_sums, GRAD_DTYPE: tl.constexpr, NESTEROV: tl.constexpr,
                     TILE_R: tl.constexpr, TILE_C: tl.constexpr):
    tile, matrix, rows, cols, r, c, offsets, inside = _locate(tiles, matrices, TILE_R, TILE_C)
    buffer = _address(matrices, matrix, BUFFER, tl.float32)
    g = tl.load(_address(matrices, matrix, GRAD, GRAD_DTYPE) + offsets, mask=inside, other=0.0).to(tl.float32)
    beta = tl.load(scalars + BETA)
    m = _lerp(tl.load(buffer + offsets, mask=inside, other=0.0), g, (1.0 - beta).to(tl.float32))
    tl.store(buffer + offsets, m, mask=inside)
    d = m
    if NESTEROV:
        d = _lerp(g, m, beta.to(tl.float32))
    # squares of entries below ~1e-19 underflow: the tile's sum is taken of d over its largest |d|
    largest = tl.maximum(tl.max(tl.max(tl.abs(d), axis=1), axis=0), FLOAT32_TINY)
    scaled = d * (1.0 / largest)
    tl.store(tile_maxima + tile, largest)
    tl.store(tile_sums + tile, tl.sum(tl.sum(scaled * scaled, axis=1), axis=0))


@triton.jit
def _normalize_kernel(tiles, matrices, scalars, tile_maxima, tile_sums, first_tiles, safety, norm_floor,
                      GRAD_DTYPE: tl.constexpr, NESTEROV: tl.constexpr, OUT_DTYPE: tl.constexpr,
                      TILE_R: tl.constexpr, TILE_C: tl.constexpr, SUM_BLOCK: tl.constexpr, SUM_BLOCKS: tl.constexpr):
    tile, matrix, rows, cols, r, c, offsets, inside = _locate(tiles, matrices, TILE_R, TILE_C)
    # The first pass updated the momentum: the direction is recomputed from it with the same
    # roundings as there. Loaded before the norm is summed, so the two latencies overlap.
    d = tl.load(_address(matrices, matrix, BUFFER, tl.float32) + offsets, mask=inside, other=0.0)
    if NESTEROV:
        g = tl.load(_address(matrices, matrix, GRAD, GRAD_DTYPE) + offsets, mask=inside, other=0.0).to(tl.float32)
        d = _lerp(g, d, tl.load(scalars + BETA).to(tl.float32))
    # Every program of a matrix combines the tiles in the same order, so all see the same norm:
    # ||D||^2 = largest^2 * sum over tiles of sum_t (largest_t / largest)^2, with largest the
    # running maximum, the sum rescaled whenever it grows (as an online softmax does).
    first = tl.load(first_tiles + matrix)
    last = tl.load(first_tiles + matrix + 1)
    largest = tl.full((), FLOAT32_TINY, dtype=tl.float32)  # tiles store at least this
    total = tl.zeros((), dtype=tl.float32)
    for block in range(SUM_BLOCKS):  # a fixed count: the interpreter cannot loop over loaded bounds
        k = first + block * SUM_BLOCK + tl.arange(0, SUM_BLOCK)
        maxima = tl.load(tile_maxima + k, mask=k < last, other=0.0)
        grown = tl.maximum(largest, tl.max(maxima, axis=0))
        ratio = maxima / grown
        total = total * (largest / grown) * (largest / grown) + tl.sum(tl.load(tile_sums + k, mask=k < last, other=0.0) * ratio * ratio, axis=0)
        largest = grown
    # a NaN momentum gives a NaN norm, as in torch (a GPU's maximum would drop it for the floor)
    norm = tl.maximum(tl.sqrt(total) * largest * safety, norm_floor, propagate_nan=tl.PropagateNan.ALL)
    x = (d / norm).to(OUT_DTYPE)
    source = _address(matrices, matrix, SOURCE, OUT_DTYPE)
    if rows > cols:  # the batch holds tall matrices transposed: element (r, c) goes to [c, r]
        tl.store(source + c[:, None] * rows + r[None, :], tl.trans(x), mask=tl.trans(inside))
    else:
        tl.store(source + offsets, x, mask=inside)


@triton.jit
def _update_kernel(tiles, matrices, scalars, factors, PARAM_DTYPE: tl.constexpr, IN_DTYPE: tl.constexpr,
                   ROUND_BF16: tl.constexpr, TILE_R: tl.constexpr, TILE_C: tl.constexpr):
    tile, matrix, rows, cols, r, c, offsets, inside = _locate(tiles, matrices, TILE_R, TILE_C)
    result = _address(matrices, matrix, RESULT, IN_DTYPE)
    if rows > cols:
        o = tl.trans(tl.load(result + c[:, None] * rows + r[None, :], mask=tl.trans(inside), other=0.0))
    else:
        o = tl.load(result + offsets, mask=inside, other=0.0)
    param = _address(matrices, matrix, PARAM, PARAM_DTYPE)
    w = tl.load(param + offsets, mask=inside, other=0.0).to(tl.float32)
    lr = tl.load(scalars + LR)
    # The reference's two in-place operations, each rounded to the parameter's dtype:
    # W *= 1 - lr wd, then W -= O * (lr factor) with the product rounded first.
    w = _rounded(w * (1.0 - lr * tl.load(scalars + WEIGHT_DECAY)).to(tl.float32), PARAM_DTYPE, ROUND_BF16)
    o = _rounded(o.to(tl.float32), PARAM_DTYPE, ROUND_BF16)
    delta = _rounded(o * (lr * tl.load(factors + matrix)).to(tl.float32), PARAM_DTYPE, ROUND_BF16)
    tl.store(param + offsets, _rounded(w - delta, PARAM_DTYPE, ROUND_BF16).to(PARAM_DTYPE), mask=inside)


def launch_config() -> dict:
    """A program's tile (``TILE_R x TILE_C`` weights) and warps: 32 x 256 and 4 warps on a GPU,
    the fastest of nine shapes from 16 x 512 to 128 x 256 over the three passes at GPT-2-small
    size on an H100 (the momentum pass then runs at the speed of a plain copy, 2.9 TB/s); 8 x 16
    in the interpreter, so the tests' small matrices cross tile edges."""
    if interpreting():
        return dict(TILE_R=8, TILE_C=16, num_warps=1)
    return dict(TILE_R=32, TILE_C=256, num_warps=4)


class PassTables:
    """What the three passes read about one parameter group: per matrix its addresses
    (gradient, momentum, weight, Newton-Schulz slots) and shape, per program its tile.

    ``params`` are 2D matrices or 3D stacks (each of whose matrices is an entry of the table);
    ``sources[i]`` and ``results[i]`` are where parameter ``i`` sits in the float16 batches
    Newton-Schulz reads and writes: its wide orientation, ``(experts, p, q)``, contiguous.
    ``lr_factors[i]`` multiplies ``lr`` in its update. Gradients, momenta and weights may move
    between steps: :meth:`point_at` rewrites the table (a small host-to-device copy) only when
    an address has changed.
    """

    def __init__(self, params: list[Tensor], sources: list[Tensor], results: list[Tensor], lr_factors: list[float]):
        self.config = launch_config()
        tile_r, tile_c = self.config["TILE_R"], self.config["TILE_C"]
        self.device = params[0].device
        self._rows: list[list[int]] = []
        self._owner: list[tuple[int, int]] = []  # (parameter, matrix within it) of each table row
        tiles, first_tiles, factors = [], [0], []
        for i, (p, source, result) in enumerate(zip(params, sources, results)):
            rows, cols = p.shape[-2:]
            wide = (min(rows, cols), max(rows, cols))
            experts = p.numel() // (rows * cols)
            if source.shape != (experts, *wide) or result.shape != (experts, *wide):
                raise ValueError(f"parameter {i} of shape {tuple(p.shape)} needs Newton-Schulz slots of shape "
                                 f"{(experts, *wide)}, got {tuple(source.shape)} and {tuple(result.shape)}")
            for e in range(experts):
                matrix = len(self._rows)
                self._owner.append((i, e))
                self._rows.append([0, 0, 0, _address_of(source, e), _address_of(result, e), rows, cols])
                factors.append(lr_factors[i])
                grid_r, grid_c = math.ceil(rows / tile_r), math.ceil(cols / tile_c)
                tiles += [(matrix, tr, tc) for tr in range(grid_r) for tc in range(grid_c)]
                first_tiles.append(len(tiles))
        self.tiles = torch.tensor(tiles, dtype=torch.int32, device=self.device)
        self.first_tiles = torch.tensor(first_tiles, dtype=torch.int32, device=self.device)
        self.factors = torch.tensor(factors, dtype=torch.float64, device=self.device)
        self.tile_maxima = torch.empty(len(tiles), dtype=torch.float32, device=self.device)
        self.tile_sums = torch.empty(len(tiles), dtype=torch.float32, device=self.device)
        self.matrices = torch.empty(len(self._rows), COLUMNS, dtype=torch.int64, device=self.device)
        self._addresses: tuple[int, ...] = ()
        self._shapes = [p.shape for p in params]
        self.largest_matrix_tiles = max(b - a for a, b in zip(first_tiles, first_tiles[1:]))

    @property
    def n_tiles(self) -> int:
        return self.tiles.size(0)

    def point_at(self, grads: list[Tensor], buffers: list[Tensor], params: list[Tensor]) -> None:
        """Make the table hold these tensors' addresses (all contiguous, shaped as the parameters)."""
        addresses = tuple(t.data_ptr() for group in (grads, buffers, params) for t in group)
        if addresses == self._addresses:
            return
        for kind, tensors in (("gradient", grads), ("momentum", buffers), ("parameter", params)):
            for t, shape in zip(tensors, self._shapes):
                if t.shape != shape or not t.is_contiguous() or t.device != self.device:
                    raise ValueError(f"the passes need a contiguous {kind} of shape {tuple(shape)} on {self.device}, got "
                                     f"{tuple(t.shape)} on {t.device} (contiguous: {t.is_contiguous()})")
        if any(b.dtype != torch.float32 for b in buffers):
            raise ValueError("the passes keep momentum in float32; got " + str(sorted({str(b.dtype) for b in buffers})))
        if len({g.dtype for g in grads}) != 1 or len({p.dtype for p in params}) != 1:
            raise ValueError("the passes need one gradient dtype and one parameter dtype per table")
        for row, (i, e) in zip(self._rows, self._owner):
            row[GRAD], row[BUFFER], row[PARAM] = (_address_of(t[i], e) for t in (grads, buffers, params))
        copy_to_device(self.matrices, torch.tensor(self._rows, dtype=torch.int64))
        self._addresses = addresses


def copy_to_device(target: Tensor, values: Tensor) -> None:
    """``target.copy_(values)`` without making the host wait for the GPU: from pageable memory a
    copy is synchronous, which would drain the queue of work the host had launched ahead (the
    next forward pass, in a training loop). Pinned memory is not reused before its copy ran."""
    if target.is_cuda:
        values = values.pin_memory()
    target.copy_(values, non_blocking=target.is_cuda)


def _address_of(t: Tensor, expert: int) -> int:
    # Address of matrix `expert` of a contiguous stack (or of the matrix itself).
    rows, cols = t.shape[-2:]
    return t.data_ptr() + expert * rows * cols * t.element_size()


def momentum_pass(tables: PassTables, scalars: Tensor, grad_dtype: torch.dtype, nesterov: bool) -> None:
    """Pass 1: momenta updated in place; each tile's largest ``|D|`` into ``tables.tile_maxima`` and
    its sum of ``(D / largest)^2`` into ``tables.tile_sums``."""
    with on_device(tables.tiles):
        _momentum_kernel[(tables.n_tiles,)](
            tables.tiles, tables.matrices, scalars, tables.tile_maxima, tables.tile_sums,
            GRAD_DTYPE=_TRITON_DTYPES[grad_dtype], NESTEROV=nesterov, **tables.config,
        )


def normalize_pass(tables: PassTables, scalars: Tensor, grad_dtype: torch.dtype, nesterov: bool,
                   safety: float, out_dtype: torch.dtype = torch.float16, eps: float = NORM_FLOOR) -> None:
    """Pass 2: each direction divided by ``safety * ||D||_F`` (at least ``eps``), cast to
    ``out_dtype``, into its slot."""
    sum_block = min(512, triton.next_power_of_2(tables.largest_matrix_tiles))
    with on_device(tables.tiles):
        _normalize_kernel[(tables.n_tiles,)](
            tables.tiles, tables.matrices, scalars, tables.tile_maxima, tables.tile_sums, tables.first_tiles, safety, eps,
            GRAD_DTYPE=_TRITON_DTYPES[grad_dtype], NESTEROV=nesterov, OUT_DTYPE=_TRITON_DTYPES[out_dtype],
            SUM_BLOCK=sum_block, SUM_BLOCKS=triton.cdiv(tables.largest_matrix_tiles, sum_block), **tables.config,
        )


def update_pass(tables: PassTables, scalars: Tensor, param_dtype: torch.dtype, in_dtype: torch.dtype = torch.float16) -> None:
    """Pass 3: ``W <- (1 - lr wd) W - lr factor O`` for each weight, from its result slot."""
    with on_device(tables.tiles):
        _update_kernel[(tables.n_tiles,)](
            tables.tiles, tables.matrices, scalars, tables.factors,
            PARAM_DTYPE=_TRITON_DTYPES[param_dtype], IN_DTYPE=_TRITON_DTYPES[in_dtype],
            ROUND_BF16=interpreting() and param_dtype == torch.bfloat16, **tables.config,
        )


def muon_passes_reference(
    grads: list[Tensor], buffers: list[Tensor], beta: float, nesterov: bool, safety: float,
    out_dtype: torch.dtype = torch.float16, eps: float = NORM_FLOOR,
) -> list[Tensor]:
    """What passes 1 and 2 compute, matrix by matrix: momenta updated in place, and each
    direction normalised per matrix, in ``out_dtype`` and wide orientation ``(experts, p, q)``.
    Pass 3 is :func:`muonlib.optim.apply_updates`."""
    sources = []
    for g, m in zip(grads, buffers):
        g = g.to(m.dtype)
        m.lerp_(g, 1 - beta)
        d = torch.lerp(g, m, beta) if nesterov else m
        d = d.reshape(-1, *d.shape[-2:])
        norm = frobenius_norm(d) * safety
        d = (d / norm.clamp_min(eps)).to(out_dtype)
        sources.append(d.mT if d.size(-2) > d.size(-1) else d)
    return sources


__all__ = ["PassTables", "momentum_pass", "muon_passes_reference", "normalize_pass", "launch_config", "update_pass"]
