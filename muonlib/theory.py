"""Small numerical experiments behind the theory chapters, shared by the notebooks (which
show them) and the tests (which guard their verdicts)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .optim import Muon, Shampoo


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


@dataclass
class Quadratic:
    """``L(W) = 1/2 tr((W - W*)^T H (W - W*))`` over ``m x n`` matrices: ``L``-smooth in the
    Frobenius norm with ``L = lambda_max(H)``, minimum 0. The testbed for Theorem 2."""

    H: Tensor  # (m, m), symmetric positive definite
    W_star: Tensor  # (m, n)

    @classmethod
    def random(cls, m: int, n: int, smoothness: float, condition: float, generator: torch.Generator) -> "Quadratic":
        """Eigenvalues of ``H`` spread log-uniformly over ``[smoothness / condition, smoothness]``."""
        Q, _ = torch.linalg.qr(torch.randn(m, m, generator=generator, dtype=torch.float64))
        eigenvalues = smoothness * torch.logspace(-math.log10(condition), 0, m, dtype=torch.float64)
        return cls((Q * eigenvalues) @ Q.mT, torch.randn(m, n, generator=generator, dtype=torch.float64))

    @property
    def smoothness(self) -> float:
        return float(torch.linalg.eigvalsh(self.H).max())

    def loss(self, W: Tensor) -> float:
        D = W - self.W_star
        return 0.5 * float((D * (self.H @ D)).sum())

    def grad(self, W: Tensor) -> Tensor:
        return self.H @ (W - self.W_star)


def run_muon(problem: Quadratic, W: Tensor, eta0: float, beta: float, sigma: float, steps: int,
             generator: torch.Generator) -> dict[str, Tensor]:
    """Muon as eqs. (3)-(5) state it (exact msign, no weight decay, no RMS scaling) with
    ``eta_t = eta0 / sqrt(t)`` on stochastic gradients ``G_t = grad L(W_t) + xi_t``,
    ``E ||xi_t||_F^2 = sigma^2``. Returns, per step, the true ``||grad L(W_t)||_F^2``, the loss
    and the ratio ``<grad L(W_t), U_t> / ||grad L(W_t)||_F`` that the proof sketch bounds below."""
    # muonlib's Muon with exact msign, plain EMA momentum and the unscaled update is eqs. (3)-(5)
    param = torch.nn.Parameter(W.clone())
    muon = Muon([param], lr=eta0, momentum=beta, nesterov=False, adjust_lr=None, orthogonalize="svd")
    grad_sq, losses, ratios = [], [], []
    noise_scale = sigma / math.sqrt(W.numel())
    for t in range(1, steps + 1):
        W = param.detach().clone()
        grad = problem.grad(W)
        param.grad = grad + noise_scale * torch.randn(W.shape, generator=generator, dtype=W.dtype)
        lr = eta0 / math.sqrt(t)
        muon.param_groups[0]["lr"] = lr
        muon.step()
        U = (W - param.detach()) / lr  # msign(M_t), read back from the step taken
        norm = grad.norm()
        grad_sq.append(float(norm**2))
        losses.append(problem.loss(W))
        ratios.append(float((grad * U).sum() / norm) if norm > 0 else float("nan"))
    return {"grad_sq": torch.tensor(grad_sq), "loss": torch.tensor(losses), "ratio": torch.tensor(ratios)}


def theorem2_bound(T: Tensor, initial_gap: float, eta0: float, smoothness: float, sigma: float) -> Tensor:
    """The right side of eq. (7) without its unspecified ``O(log T / T)`` term:
    ``2 (L(W_1) - L*) / (eta0 sqrt(T)) + eta0 L sigma^2 / sqrt(T)``."""
    return (2 * initial_gap / eta0 + eta0 * smoothness * sigma**2) / T.sqrt()


def deterministic_bound(T: Tensor, initial_gap: float, eta0: float, smoothness: float, rank: int) -> Tensor:
    """What the smoothness inequality (8) does give for exact gradients and ``beta = 0``: the
    mean gradient *norm* ``(1/T) sum ||grad L(W_t)||_F`` is at most
    ``(gap / eta0 + L r eta0 (1 + ln T) / 2) / sqrt(T)``, with ``r = min(m, n)``.

    From (8), ``L_{t+1} <= L_t - eta_t ||grad_t||_* + L eta_t^2 r / 2`` (``msign`` has ``r`` unit
    singular values and ``<G, msign(G)> = ||G||_*``); sum, use ``||.||_F <= ||.||_*``,
    ``eta_t >= eta0 / sqrt(T)`` and ``sum 1/t <= 1 + ln T``."""
    return (initial_gap / eta0 + smoothness * rank * eta0 * (1 + T.log()) / 2) / T.sqrt()


def running_mean(x: Tensor) -> Tensor:
    """``(1/T) sum_{t <= T} x_t`` for every ``T``."""
    return x.cumsum(0) / torch.arange(1, len(x) + 1, dtype=x.dtype)


def rms(X: Tensor) -> float:
    return float(X.pow(2).mean().sqrt())


__all__ = [
    "Quadratic",
    "deterministic_bound",
    "run_muon",
    "running_mean",
    "theorem2_bound",
    "nearest_orthonormal_by_descent", "optimizer_state_floats",
    "project_spectral_ball", "random_unit_spectral", "relative_error", "rms", "shampoo_update",
    "spectral_ball_ascent", "stiefel_tangent",
]
