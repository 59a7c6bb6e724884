"""Small numerical experiments behind the theory chapters, shared by the notebooks (which
show them) and the tests (which guard their verdicts)."""

from __future__ import annotations

import torch
from torch import Tensor

from .linalg import msign
from .optim import Shampoo


def project_spectral_ball(U: Tensor, radius: float = 1.0) -> Tensor:
    """The Frobenius-nearest matrix of spectral norm at most ``radius``: clip singular values."""
    P, s, Qh = torch.linalg.svd(U, full_matrices=False)
    return (P * s.clamp(max=radius).unsqueeze(-2)) @ Qh


def random_unit_spectral(shape: tuple[int, int], count: int, generator: torch.Generator, dtype=torch.float64) -> Tensor:
    """``count`` Gaussian matrices scaled to spectral norm exactly 1: random feasible points of
    the constraint set of Theorem 3."""
    U = torch.randn(count, *shape, generator=generator, dtype=dtype)
    return U / torch.linalg.matrix_norm(U, ord=2).view(-1, 1, 1)


def spectral_ball_ascent(G: Tensor, steps: int, lr: float, generator: torch.Generator) -> tuple[Tensor, list[float]]:
    """Maximise ``tr(G^T U)`` over ``||U||_2 <= 1`` by projected gradient ascent from a random
    feasible start, without using ``msign``. Returns the last iterate and the objective."""
    U = project_spectral_ball(torch.randn(G.shape, generator=generator, dtype=G.dtype))
    trace = []
    for _ in range(steps):
        U = project_spectral_ball(U + lr * G)  # the gradient of tr(G^T U) in U is G
        trace.append(float((G * U).sum()))
    return U, trace


def nearest_orthonormal_by_descent(M: Tensor, steps: int, lr: float, generator: torch.Generator) -> tuple[Tensor, list[float]]:
    """Minimise ``||U - M||_F^2`` over ``U^T U = I`` (``M`` tall) by Riemannian gradient descent
    with a QR retraction, without using ``msign``. Returns the last iterate and the objective."""
    U, _ = torch.linalg.qr(torch.randn(M.shape, generator=generator, dtype=M.dtype))
    trace = []
    for _ in range(steps):
        euclidean = 2 * (U - M)
        U, R = torch.linalg.qr(U - lr * stiefel_tangent(U, euclidean))
        U = U * torch.sign(torch.diagonal(R)).unsqueeze(0)  # a continuous retraction
        trace.append(float(((U - M) ** 2).sum()))
    return U, trace


def stiefel_tangent(W: Tensor, G: Tensor) -> Tensor:
    """Projection of ``G`` onto the tangent space of ``{W : W^T W = I}`` at ``W`` (embedded
    metric): ``G - W sym(W^T G)``. This is the Riemannian gradient of a loss with Euclidean
    gradient ``G``; natural-gradient descent on the manifold moves along minus it."""
    WtG = W.mT @ G
    return G - W @ (WtG + WtG.mT) / 2


def shampoo_update(grads: list[Tensor], beta: float, eps: float) -> Tensor:
    """The update :class:`muonlib.optim.Shampoo` (lr 1) makes for the last of ``grads`` after
    stepping through all of them: with ``beta = 0`` and one gradient, eq. (11)'s
    ``(G G^T + eps I)^(-1/4) G (G^T G + eps I)^(-1/4)``; with ``beta > 0``, the current
    gradient whitened by the accumulated statistics."""
    W = torch.nn.Parameter(torch.zeros_like(grads[0]))
    optimizer = Shampoo([W], lr=1.0, beta=beta, eps=eps, precision=grads[0].dtype)
    for G in grads:
        before = W.detach().clone()
        W.grad = G
        optimizer.step()
    return before - W.detach()


def relative_error(A: Tensor, B: Tensor) -> float:
    return float(torch.linalg.matrix_norm(A - B) / torch.linalg.matrix_norm(B))


def optimizer_state_floats(shape: tuple[int, int], optimizer: str) -> int:
    """Numbers an optimizer keeps per ``m x n`` matrix: Muon one momentum buffer, AdamW two
    moments, Shampoo (as in eq. 11, no momentum) the statistics ``L``, ``R`` and their inverse
    roots."""
    m, n = shape
    return {"muon": m * n, "adamw": 2 * m * n, "shampoo": 2 * (m * m + n * n)}[optimizer]


def rms(X: Tensor) -> float:
    return float(X.pow(2).mean().sqrt())


__all__ = [
    "nearest_orthonormal_by_descent", "optimizer_state_floats",
    "project_spectral_ball", "random_unit_spectral", "relative_error", "rms", "shampoo_update",
    "spectral_ball_ascent", "stiefel_tangent",
]
