"""The matrix sign (polar factor) and the Newton-Schulz family that approximates it.

Everything here acts on the last two dimensions and is batched over the leading ones, so
a stack of MoE experts ``(E, out, in)`` is treated as ``E`` independent matrices.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

Coefficients = tuple[float, float, float]
CoefficientSpec = Union[str, Coefficients, Sequence[Coefficients]]

#: Named ``(a, b, c)`` of the odd quintic ``p(x) = a x + b x^3 + c x^5`` applied to every
#: singular value at each step: ``"muon"``, ``"taylor"``, ``"cubic"``.
NAMED_COEFFICIENTS: dict[str, Coefficients] = {
    # Keller Jordan's tuple: the largest slope at 0 (a = 3.4445) that still keeps the
    # iterates bounded. It trades convergence for speed: after 5 steps singular values
    # oscillate in a band around 1 instead of converging to it.
    "muon": (3.4445, -4.7750, 2.0315),
    # Taylor expansion of (1 - s)^(-1/2) around s = 0 to second order: p(1) = 1,
    # p'(1) = p''(1) = 0, so it converges (cubically near 1) but starts slowly.
    "taylor": (15 / 8, -10 / 8, 3 / 8),
    # Classical cubic Newton-Schulz p(x) = (3x - x^3) / 2: quadratic convergence near 1.
    "cubic": (3 / 2, -1 / 2, 0.0),
}

#: Algorithm 1's K, the Newton-Schulz steps per update, for which the ``"muon"`` tuple is tuned
NS_STEPS = 5

#: Where the ``"muon"`` map leaves a singular value after 5 steps (exact arithmetic), for
#: every normalised singular value ``s / ||G||_F >= 3.2e-3`` (a fine grid gives
#: [0.6818, 1.2024]). Smaller values stay small: the tuple does not converge to msign.
MUON_BAND = (0.68, 1.21)

# Polar Express (Amsel et al., arXiv 2505.16932, Algorithm 1): per-step minimax-optimal
# odd quintics for an initial spectrum in [1e-3, 1]; the last entry repeats forever.
_POLAR_EXPRESS_RAW: tuple[Coefficients, ...] = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)
# The paper's bf16 safety margin: every polynomial but the last is evaluated at x / 1.01,
# and the input is normalised by 1.01 * ||X||_F, so rounding cannot push a singular
# value past the interval the polynomials were optimised for.
POLAR_EXPRESS_SAFETY = 1.01
#: The Polar Express schedule with the safety factor applied (the last tuple repeats).
POLAR_EXPRESS_COEFFICIENTS: tuple[Coefficients, ...] = tuple(
    (a / POLAR_EXPRESS_SAFETY, b / POLAR_EXPRESS_SAFETY**3, c / POLAR_EXPRESS_SAFETY**5)
    for a, b, c in _POLAR_EXPRESS_RAW[:-1]
) + (_POLAR_EXPRESS_RAW[-1],)

# Guards the division by ||X||_F only against an exact zero. A larger epsilon (1e-7, as
# in torch.optim.Muon) silently under-scales matrices whose norm is near it, so the
# "orthogonalised" update of a tiny gradient would not be orthogonal. The norm itself is
# taken so that it cannot underflow (frobenius_norm), else the floor would be reached by
# matrices far above it.
NORM_FLOOR = 1e-30

#: Aspect ratio (long side / short side) from which :func:`newton_schulz` iterates on the
#: Gram matrix ``R = X X^T`` instead of on ``X`` (see :func:`gram_newton_schulz`). A step on
#: ``X`` costs ``4 p^2 q + 2 p^3`` FLOPs; the Gram form pays ``4 p^2 q`` once per restart and
#: ``8 p^3`` per step, so it saves FLOPs from ``q / p`` of about 1.5 and saves time from the
#: ratio measured by ``python -m muonlib.bench ns``. Set it to ``math.inf`` to turn it off.
GRAM_MIN_ASPECT = 2.0
#: Smallest short side for the Gram form. Below it the products are too small to keep an
#: H100 busy, and trading two large products for four small ones measured 0-8% slower.
GRAM_MIN_WIDTH = 768

#: Smallest side of the (wide) matrices from which a Newton-Schulz step on a GPU runs its two
#: symmetric products through the Triton kernel of :mod:`muonlib.kernels.symmetric` instead of cuBLAS.
#: Below it the general matmul wins (measured by ``python -m muonlib.bench ns`` into
#: ``data/bench/newton_schulz.json``): half the tiles of a small product leave the GPU idle.
SYMMETRIC_MIN_WIDTH = 2048


def msign(G: Tensor, rtol: float | None = None) -> Tensor:
    """Exact matrix sign ``U V^T`` of ``G = U S V^T`` (Definition 1 of the paper), via SVD.

    Singular values ``s <= rtol * s_max`` count as zero and their directions are dropped,
    so a rank-deficient ``G`` maps to ``U_r V_r^T`` over its numerical rank ``r`` (the SVD's
    null-space vectors are arbitrary and would otherwise leak into the result). The default
    ``rtol = max(m, n) * eps(dtype)`` is NumPy's ``matrix_rank`` tolerance. The zero matrix
    maps to zero. Batched over leading dimensions; computes in ``G``'s dtype (use float64
    for reference values).
    """
    _check_matrix(G, "msign")
    if rtol is None:
        rtol = max(G.shape[-2:]) * torch.finfo(G.dtype).eps
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    keep = S > rtol * S.amax(dim=-1, keepdim=True)
    return (U * keep.unsqueeze(-2).to(G.dtype)) @ Vh


def msign_by_gram(G: Tensor, rtol: float | None = None) -> Tensor:
    """:func:`msign` of a float32 (or narrower) ``G`` as ``(G G^T)^{-1/2} G`` (``G`` turned
    wide), from the eigendecomposition of its Gram matrix in float64.

    Why not the SVD: on a GPU, cuSOLVER batches SVDs only up to 32 x 32, so a batch of
    ``256 x 1024`` updates costs one Jacobi SVD per matrix, most of a second per optimizer
    step at XS; a ``256 x 256`` symmetric eigensolver is several times cheaper. Squaring
    the singular values squares the condition number, which float64 absorbs: eigenvalues
    are resolved to about ``1e-16 * s_max^2``, far below the float32 rank cut
    ``(rtol * s_max)^2`` with ``rtol = max(m, n) * eps(float32)``, so the result is
    ``msign`` to float32 accuracy, null directions dropped as there. Returns float32.
    """
    _check_matrix(G, "msign_by_gram")
    if G.dtype == torch.float64:
        raise ValueError("msign_by_gram is exact only to float32 accuracy; use msign for float64 input")
    if rtol is None:
        rtol = max(G.shape[-2:]) * torch.finfo(torch.float32).eps
    tall = G.size(-2) > G.size(-1)
    X = (G.mT if tall else G).double()
    eigenvalues, Q = torch.linalg.eigh(X @ X.mT)
    keep = eigenvalues > (rtol**2) * eigenvalues.amax(dim=-1, keepdim=True)
    inverse_root = torch.where(keep, eigenvalues.clamp_min(torch.finfo(torch.float64).tiny).rsqrt(), 0.0)
    U = ((Q * inverse_root.unsqueeze(-2)) @ Q.mT @ X).float()
    return U.mT if tall else U


def frobenius_norm(X: Tensor) -> Tensor:
    """``||X||_F`` of each matrix of a batch (dimensions kept), taken of ``X`` divided by the
    power of two at its largest entry (an exact division), so that no square underflows or
    overflows.

    Why: squared directly, float32 entries below about 1e-19 square to zero (1e-23 with
    subnormals). A momentum that decays geometrically, as an MoE expert's does while no token
    reaches it, gets there within a few hundred steps; its norm then came out as zero, the
    division by the floor blew the matrix up past float16's range, and Newton-Schulz returned
    NaN. Scaled first, the norm is right down to float32's smallest numbers, as the paper's
    ``M / ||M||_F`` assumes."""
    if not X.numel():
        return X.new_zeros(*X.shape[:-2], 1, 1)
    _, exponent = torch.frexp(X.abs().amax(dim=(-2, -1), keepdim=True))
    scale = torch.ldexp(torch.ones_like(exponent, dtype=X.dtype), exponent)
    return torch.linalg.matrix_norm(X / scale, keepdim=True) * scale


def frobenius_scaled(G: Tensor, eps: float = NORM_FLOOR) -> Tensor:
    """``G`` scaled to ``sqrt(min(m, n))``, the Frobenius norm of a full-rank ``msign(G)``
    (never divided by less than ``eps``): an update of an orthogonalised update's size in
    ``G``'s own direction, for the ablation that keeps Muon's step size and drops the
    orthogonalisation. Batched over leading dimensions, in float32 or wider."""
    _check_matrix(G, "frobenius_scaled")
    X = G.to(torch.promote_types(G.dtype, torch.float32))
    return X * (min(G.shape[-2:]) ** 0.5 / frobenius_norm(X).clamp_min(eps))


def rms_scaled(G: Tensor, rms: float, eps: float = NORM_FLOOR) -> Tensor:
    """Each matrix of ``G`` scaled to root-mean-square ``rms`` (its own RMS never taken below
    ``eps``), batched over leading dimensions, in float32 or wider: the per-layer dynamic RMS
    rule, which measures the update's RMS instead of assuming a full-rank ``msign``'s."""
    _check_matrix(G, "rms_scaled")
    X = G.to(torch.promote_types(G.dtype, torch.float32))
    return X * (rms / (frobenius_norm(X) / math.sqrt(X.size(-2) * X.size(-1))).clamp_min(eps))


def coefficient_schedule(coefficients: CoefficientSpec, steps: int) -> list[Coefficients]:
    """The ``(a, b, c)`` tuple used at each of ``steps`` iterations.

    ``coefficients`` is a name from :data:`NAMED_COEFFICIENTS`, ``"polar_express"``, one
    ``(a, b, c)`` tuple (used at every step), or a list of per-step tuples (its last entry is
    repeated if ``steps`` exceeds its length).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if isinstance(coefficients, str):
        if coefficients == "polar_express":
            schedule: Sequence[Coefficients] = POLAR_EXPRESS_COEFFICIENTS
        elif coefficients in NAMED_COEFFICIENTS:
            schedule = [NAMED_COEFFICIENTS[coefficients]]
        else:
            names = sorted([*NAMED_COEFFICIENTS, "polar_express"])
            raise ValueError(f"unknown coefficient set {coefficients!r}; choose one of {names} or pass (a, b, c)")
    elif len(coefficients) == 3 and all(isinstance(x, (int, float)) for x in coefficients):
        schedule = [tuple(float(x) for x in coefficients)]  # type: ignore[list-item]
    else:
        schedule = [tuple(float(x) for x in abc) for abc in coefficients]  # type: ignore[misc]
        if not schedule or any(len(abc) != 3 for abc in schedule):
            raise ValueError("a coefficient schedule must be a non-empty list of (a, b, c) tuples")
    return [schedule[min(k, len(schedule) - 1)] for k in range(steps)]


def normalization_safety(coefficients: CoefficientSpec) -> float:
    """Factor by which ``||X||_F`` is enlarged before iterating: 1.01 for Polar Express, else 1."""
    return POLAR_EXPRESS_SAFETY if coefficients == "polar_express" else 1.0


def newton_schulz(
    G: Tensor,
    steps: int = NS_STEPS,
    coefficients: CoefficientSpec = "muon",
    dtype: torch.dtype = torch.float16,
    gram: bool | None = None,
    eps: float = NORM_FLOOR,
) -> Tensor:
    """Approximate ``msign(G)`` with ``steps`` odd-polynomial iterations (Algorithm 1).

    Each matrix is first divided by its own Frobenius norm (:func:`frobenius_norm`, in
    float32, or in float64 for a float64 ``dtype``; never by less than ``eps``), so every singular value
    lies in [0, 1]; then
    ``X <- a X + b (X X^T) X + c (X X^T)^2 X`` is applied
    ``steps`` times in ``dtype``. The iteration runs on the wide orientation (``X X^T`` is the
    smaller Gram matrix) and tall inputs are transposed back. Returns ``dtype``; a zero
    matrix gives zero.

    The default is float16, not the paper's bfloat16: after the normalisation every iterate
    is bounded by the coefficients, so bfloat16's wider range buys nothing, while its 8-bit
    mantissa rounds about 8 times more coarsely (the Performance chapter measures both).
    Both run at the same tensor-core rate on an H100, and a T4 has no bfloat16 tensor cores.

    ``gram`` evaluates the same polynomials on the Gram matrix (:func:`gram_newton_schulz`);
    by default it does so for matrices at least :data:`GRAM_MIN_ASPECT` times wider than tall
    and at least :data:`GRAM_MIN_WIDTH` tall (in the wide orientation).
    """
    _check_matrix(G, "newton_schulz")
    schedule = coefficient_schedule(coefficients, steps)
    transpose = G.size(-2) > G.size(-1)
    X = G.mT if transpose else G
    batch_shape = X.shape[:-2]
    X = X.reshape(-1, *X.shape[-2:]).to(torch.promote_types(dtype, torch.float32))
    norm = frobenius_norm(X) * normalization_safety(coefficients)
    X = X / norm.clamp_min(eps)
    if gram is None:
        gram = prefers_gram(*X.shape[-2:])
    X = newton_schulz_iterations(X.to(gram_dtype(dtype) if gram else dtype), schedule, gram).to(dtype)
    X = X.reshape(*batch_shape, *X.shape[-2:])
    return X.mT if transpose else X


def prefers_gram(p: int, q: int) -> bool:
    """Whether a wide ``p x q`` matrix iterates on its Gram matrix by default: from
    :data:`GRAM_MIN_WIDTH` rows and :data:`GRAM_MIN_ASPECT` times wider than tall."""
    return p >= GRAM_MIN_WIDTH and q >= GRAM_MIN_ASPECT * p


def newton_schulz_iterations(
    X: Tensor, schedule: Sequence[Coefficients], gram: bool | None = None, out: Tensor | None = None
) -> Tensor:
    """The iterations of :func:`newton_schulz` alone, on a batch ``(batch, p, q)`` of wide
    matrices that are already normalised, in ``X``'s dtype: directly, or by
    :func:`gram_newton_schulz` (default: :func:`prefers_gram`). ``out``, if given, receives
    the result from the last product, which is how a CUDA graph finds it at a fixed address."""
    if gram is None:
        gram = prefers_gram(*X.shape[-2:])
    if gram:
        return gram_newton_schulz(X, schedule, out)
    for step, (a, b, c) in enumerate(schedule):
        X = newton_schulz_step(X, a, b, c, out if step + 1 == len(schedule) else None)
    return out.copy_(X) if out is not None and not schedule else X


def gram_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype :func:`gram_newton_schulz` runs in when asked for ``dtype``: float16 for both
    16-bit types. ``R = X X^T`` squares the condition number, and bfloat16's 8-bit mantissa
    rounds it into spurious negative eigenvalues that each step then multiplies by ``a^2``;
    float16 (11 bits) is as fast, and the normalised iterates never approach its range limit.
    """
    return torch.float16 if dtype in (torch.float16, torch.bfloat16) else dtype


def gram_restarts(steps: int) -> range:
    """Steps before which :func:`gram_newton_schulz` folds ``Q`` into ``X`` and recomputes
    ``R = X X^T``: after the second step, then every third (Dao-AILab's gram-newton-schulz
    restarts once, after step 2 of 5). Between restarts a rounding error in a near-zero
    eigenvalue of ``R`` grows by about ``a^2`` per step; a restart resets it to one rounding."""
    return range(2, steps, 3)


def step_polynomial(A: Tensor, a: float, b: float, c: float) -> Tensor:
    """``P = a I + b A + c A^2`` of a batch of symmetric ``A``, by the completed square of
    :func:`newton_schulz_step` (one elementwise pass over ``A``, one symmetric product)."""
    return _polynomial_of_scaled(A * _polynomial_scale(b, c), a, b, c)


def _polynomial_scale(b: float, c: float) -> float:
    return b if c == 0 else math.sqrt(abs(c))


def _polynomial_of_scaled(S: Tensor, a: float, b: float, c: float) -> Tensor:
    # S = _polynomial_scale(b, c) * A, a fresh tensor: shifted in place.
    if c != 0:
        S.diagonal(dim1=-2, dim2=-1).add_(_polynomial_scale(b, c) * b / (2 * c))
        S = symmetric_product(S, math.copysign(1.0, c))
        a = a - b * b / (4 * c)
    S.diagonal(dim1=-2, dim2=-1).add_(a)
    return S


def gram_newton_schulz(X: Tensor, schedule: Sequence[Coefficients], out: Tensor | None = None) -> Tensor:
    """The quintic iteration on a normalised batch ``X`` of wide ``p x q`` matrices, evaluated
    on their ``p x p`` Gram matrices.

    Each step maps ``X`` to ``P X`` with ``P = a I + b R + c R^2`` and ``R = X X^T``, so the
    iterate is ``Q X`` with ``Q`` the product of the ``P``'s, and the next Gram matrix is
    ``P R P``. Tracking ``R`` and ``Q`` costs four ``p x p`` products per step instead of
    two ``p x q`` ones and one ``p x p``; ``X`` is touched only at the start, at each of
    :func:`gram_restarts` and at the end. In exact arithmetic the result equals
    :func:`newton_schulz_step` applied ``len(schedule)`` times. Computes in ``X``'s dtype
    (use :func:`gram_dtype`); the last product writes into ``out`` if given.
    """
    R = symmetric_product(X)
    Q = None
    restarts = gram_restarts(len(schedule))
    for step, (a, b, c) in enumerate(schedule):
        if step in restarts:
            X = torch.bmm(Q, X)
            R = symmetric_product(X)
            Q = None
        P = step_polynomial(R, a, b, c)
        Q = P if Q is None else torch.bmm(Q, P)
        if step + 1 < len(schedule) and step + 1 not in restarts:
            R = torch.bmm(P, torch.bmm(R, P))
    if Q is None:
        return X if out is None else out.copy_(X)
    return torch.bmm(Q, X, out=out)


def newton_schulz_step(X: Tensor, a: float, b: float, c: float, out: Tensor | None = None) -> Tensor:
    """One quintic step ``X <- P X`` with ``P = a I + b A + c A^2`` and ``A = X X^T``, on a batch
    ``X`` of wide matrices.

    ``P`` is built by completing the square, ``c A^2 + b A = sign(c) S^2 - b^2 / (4c) I`` with
    ``S = sqrt|c| (A + b / (2c) I)``, so the step is three plain matmuls, ``S`` (scaled in the
    matmul), ``S S^T`` and ``P X``, plus two shifts of a diagonal. ``baddbmm(C, ...)`` with a
    nonzero ``beta`` would first copy ``C`` into its output and read it again: on an H100 that
    made ``b A + c A A`` and ``a X + B X`` take twice as long as a plain matmul of the same
    shape (``python -m muonlib.bench ns``). Both symmetric products go to :func:`symmetric_product`.
    The last product writes into ``out`` if given.
    """
    S = symmetric_product(X, _polynomial_scale(b, c))
    return torch.bmm(_polynomial_of_scaled(S, a, b, c), X, out=out)


def symmetric_product(X: Tensor, alpha: float = 1.0) -> Tensor:
    """``alpha X X^T`` for a batch ``X``. On a GPU, from :data:`SYMMETRIC_MIN_WIDTH` rows, by the
    Triton kernel of :mod:`muonlib.kernels.symmetric` (half the tiles); otherwise by one matmul
    that applies ``alpha`` in its epilogue (``beta = 0`` never reads the input).

    It is a custom operator (``torch.ops.muonlib.symmetric_product``), opaque to
    ``torch.compile``: the compiler would otherwise split the scaled matmul into a matmul and
    a separate pass that multiplies by ``alpha``, and the Triton kernel would break the
    compiled graph (and its CUDA graph) in two."""
    return torch.ops.muonlib.symmetric_product(X, alpha)


@torch.library.custom_op("muonlib::symmetric_product", mutates_args=())
def _symmetric_product(X: Tensor, alpha: float) -> Tensor:
    if _symmetric_kernels_win(X):
        return _symmetric_kernel(X, alpha)
    if alpha == 1.0:
        return torch.bmm(X, X.mT)
    return torch.baddbmm(X.new_empty(1, 1, 1), X, X.mT, beta=0.0, alpha=alpha)


@_symmetric_product.register_fake
def _(X: Tensor, alpha: float) -> Tensor:
    return X.new_empty(X.size(0), X.size(1), X.size(1))


@register_flop_formula(torch.ops.muonlib.symmetric_product)
def _(X_shape: torch.Size, alpha: float, *args, **kwargs) -> int:
    batch, m, k = X_shape
    return 2 * batch * m * m * k  # what a general matmul does: FLOP counts ignore the symmetry


def _symmetric_kernels_win(X: Tensor) -> bool:
    return X.is_cuda and X.dtype != torch.float64 and X.size(-2) >= SYMMETRIC_MIN_WIDTH


def _symmetric_kernel(X: Tensor, alpha: float) -> Tensor:
    from .kernels import gram

    return gram(X, alpha)


def scalar_map(x: Tensor, steps: int, coefficients: CoefficientSpec = "muon") -> Tensor:
    """What ``steps`` iterations do to one singular value ``x`` (already normalised).

    Newton-Schulz commutes with the SVD, so ``newton_schulz(G)`` equals
    ``U diag(scalar_map(s / (safety * ||G||_F))) V^T`` up to rounding.
    """
    for a, b, c in coefficient_schedule(coefficients, steps):
        x2 = x * x
        x = x * (a + x2 * (b + c * x2))
    return x


def newton_schulz_flops(m: int, n: int, steps: int = NS_STEPS) -> int:
    """Dense matmul FLOPs of ``steps`` quintic iterations on an ``m x n`` matrix.

    With ``p = min(m, n)``, ``q = max(m, n)``: ``X X^T`` costs ``2 p^2 q``, ``A A`` ``2 p^3``
    and ``B X`` ``2 p^2 q`` per step.
    """
    p, q = min(m, n), max(m, n)
    return steps * (4 * p * p * q + 2 * p**3)


def gram_newton_schulz_flops(m: int, n: int, steps: int = NS_STEPS) -> int:
    """Dense matmul FLOPs of :func:`gram_newton_schulz` on an ``m x n`` matrix: ``2 p^2 q`` for
    each product with ``X`` (the first ``R``, two per restart, the final ``Q X``) and ``2 p^3``
    for each ``p x p`` product."""
    p, q = min(m, n), max(m, n)
    restarts = gram_restarts(steps)
    with_x = 2 + 2 * len(restarts) if steps else 0
    square = 0
    for step in range(steps):
        square += 1 + (step not in restarts and step > 0)  # R R, and Q P unless Q starts here
        square += 2 * (step + 1 < steps and step + 1 not in restarts)  # P (R P)
    return with_x * 2 * p * p * q + square * 2 * p**3


def _check_matrix(G: Tensor, name: str) -> None:
    if not isinstance(G, Tensor):
        raise TypeError(f"{name} expects a torch.Tensor, got {type(G).__name__}")
    if G.ndim < 2:
        raise ValueError(f"{name} expects a matrix or a batch of matrices (ndim >= 2), got shape {tuple(G.shape)}")
    if not G.is_floating_point():
        raise TypeError(f"{name} expects a floating-point tensor, got {G.dtype}")


__all__ = [
    "GRAM_MIN_ASPECT",
    "GRAM_MIN_WIDTH",
    "MUON_BAND",
    "NAMED_COEFFICIENTS",
    "POLAR_EXPRESS_COEFFICIENTS",
    "POLAR_EXPRESS_SAFETY",
    "SYMMETRIC_MIN_WIDTH",
    "coefficient_schedule",
    "frobenius_norm",
    "frobenius_scaled",
    "gram_dtype",
    "gram_newton_schulz",
    "gram_newton_schulz_flops",
    "gram_restarts",
    "msign",
    "newton_schulz",
    "newton_schulz_flops",
    "newton_schulz_iterations",
    "newton_schulz_step",
    "normalization_safety",
    "prefers_gram",
    "rms_scaled",
    "scalar_map",
    "step_polynomial",
    "symmetric_product",
]
