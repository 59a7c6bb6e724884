"""The matrix sign (polar factor) and the Newton-Schulz family that approximates it.

Everything here acts on the last two dimensions and is batched over the leading ones, so
a stack of MoE experts ``(E, out, in)`` is treated as ``E`` independent matrices.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor

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
# "orthogonalised" update of a tiny gradient would not be orthogonal.
NORM_FLOOR = 1e-30

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
    steps: int = 5,
    coefficients: CoefficientSpec = "muon",
    dtype: torch.dtype = torch.bfloat16,
) -> Tensor:
    """Approximate ``msign(G)`` with ``steps`` odd-polynomial iterations (Algorithm 1).

    Each matrix is first divided by its own Frobenius norm (computed in float32, or in
    float64 for a float64 ``dtype``), so every singular value lies in [0, 1]; then
    ``X <- a X + b (X X^T) X + c (X X^T)^2 X`` is applied
    ``steps`` times in ``dtype``. The iteration runs on the wide orientation (``X X^T`` is the
    smaller Gram matrix) and tall inputs are transposed back. Returns ``dtype``; a zero
    matrix gives zero.
    """
    _check_matrix(G, "newton_schulz")
    schedule = coefficient_schedule(coefficients, steps)
    transpose = G.size(-2) > G.size(-1)
    X = G.mT if transpose else G
    batch_shape = X.shape[:-2]
    X = X.reshape(-1, *X.shape[-2:]).to(torch.promote_types(dtype, torch.float32))
    norm = torch.linalg.matrix_norm(X, keepdim=True) * normalization_safety(coefficients)
    X = (X / norm.clamp_min(NORM_FLOOR)).to(dtype)
    for a, b, c in schedule:
        X = newton_schulz_step(X, a, b, c)
    X = X.reshape(*batch_shape, *X.shape[-2:])
    return X.mT if transpose else X


def newton_schulz_step(X: Tensor, a: float, b: float, c: float) -> Tensor:
    """One quintic step ``a X + (b A + c A A) X`` with ``A = X X^T`` on a batch ``X`` of wide matrices.

    On a GPU, matrices at least :data:`SYMMETRIC_MIN_WIDTH` wide take the Triton kernels,
    which compute the symmetric ``A`` and ``b A + c A A`` on half the tiles.
    """
    if _symmetric_kernels_win(X):
        return _symmetric_step(X, a, b, c)
    A = torch.bmm(X, X.mT)
    B = torch.baddbmm(A, A, A, beta=b, alpha=c)
    return torch.baddbmm(X, B, X, beta=a)


def _symmetric_kernels_win(X: Tensor) -> bool:
    return X.is_cuda and X.size(-2) >= SYMMETRIC_MIN_WIDTH


@torch.compiler.disable  # a hand-written kernel: nothing for the compiler to fuse
def _symmetric_step(X: Tensor, a: float, b: float, c: float) -> Tensor:
    from .kernels import newton_schulz_step

    return newton_schulz_step(X, a, b, c)


def scalar_map(x: Tensor, steps: int, coefficients: CoefficientSpec = "muon") -> Tensor:
    """What ``steps`` iterations do to one singular value ``x`` (already normalised).

    Newton-Schulz commutes with the SVD, so ``newton_schulz(G)`` equals
    ``U diag(scalar_map(s / (safety * ||G||_F))) V^T`` up to rounding.
    """
    for a, b, c in coefficient_schedule(coefficients, steps):
        x2 = x * x
        x = x * (a + x2 * (b + c * x2))
    return x


def newton_schulz_flops(m: int, n: int, steps: int = 5) -> int:
    """Dense matmul FLOPs of ``steps`` quintic iterations on an ``m x n`` matrix.

    With ``p = min(m, n)``, ``q = max(m, n)``: ``X X^T`` costs ``2 p^2 q``, ``A A`` ``2 p^3``
    and ``B X`` ``2 p^2 q`` per step.
    """
    p, q = min(m, n), max(m, n)
    return steps * (4 * p * p * q + 2 * p**3)


def _check_matrix(G: Tensor, name: str) -> None:
    if not isinstance(G, Tensor):
        raise TypeError(f"{name} expects a torch.Tensor, got {type(G).__name__}")
    if G.ndim < 2:
        raise ValueError(f"{name} expects a matrix or a batch of matrices (ndim >= 2), got shape {tuple(G.shape)}")
    if not G.is_floating_point():
        raise TypeError(f"{name} expects a floating-point tensor, got {G.dtype}")


__all__ = [
    "MUON_BAND",
    "NAMED_COEFFICIENTS",
    "POLAR_EXPRESS_COEFFICIENTS",
    "POLAR_EXPRESS_SAFETY",
    "SYMMETRIC_MIN_WIDTH",
    "coefficient_schedule",
    "msign",
    "newton_schulz",
    "newton_schulz_flops",
    "newton_schulz_step",
    "normalization_safety",
    "scalar_map",
]
