"""The verdicts of the theory chapters (spectral geometry, Shampoo), guarded on small cases."""

import pytest
import torch

from muonlib import Muon, msign
from muonlib.theory import (nearest_orthonormal_by_descent, optimizer_state_floats, random_unit_spectral, relative_error,
                            shampoo_update, spectral_ball_ascent, stiefel_tangent)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def nuclear(G):
    return float(torch.linalg.matrix_norm(G, "nuc"))


def test_theorem3_max_is_the_nuclear_norm_unique_only_for_full_rank(gen):
    G = torch.randn(24, 16, generator=gen, dtype=torch.float64)
    assert float((G * msign(G)).sum()) == pytest.approx(nuclear(G), rel=1e-12)
    random = (random_unit_spectral((24, 16), 500, gen) * G).sum((-2, -1))
    assert float(random.max()) < nuclear(G)
    U, trace = spectral_ball_ascent(G, 300, 1.0, gen)
    assert trace[-1] == pytest.approx(nuclear(G), rel=1e-9) and torch.allclose(U, msign(G), atol=1e-6)
    low = torch.randn(24, 3, generator=gen, dtype=torch.float64) @ torch.randn(3, 16, generator=gen, dtype=torch.float64)
    U, trace = spectral_ball_ascent(low, 300, 1.0, gen)
    assert trace[-1] == pytest.approx(nuclear(low), rel=1e-9)
    assert float(torch.linalg.matrix_norm(U - msign(low))) > 0.5  # another maximiser
    assert torch.linalg.matrix_norm(msign(low)) < torch.linalg.matrix_norm(U)  # msign: the least-norm one


def test_eq6_argmin_is_minus_msign_and_ascends(gen):
    G = torch.randn(16, 16, generator=gen, dtype=torch.float64)
    assert float((G * -msign(G)).sum()) == pytest.approx(-nuclear(G))
    W = torch.randn(16, 16, generator=gen, dtype=torch.float64)
    loss = lambda W: 0.5 * (W**2).sum()  # gradient W
    assert loss(W + 0.01 * msign(W)) > loss(W) > loss(W - 0.01 * msign(W))


def test_proposition4_holds_for_full_rank_and_msign_is_infeasible_otherwise(gen):
    M = torch.randn(30, 10, generator=gen, dtype=torch.float64)
    U, trace = nearest_orthonormal_by_descent(M, 400, 0.05, gen)
    assert float(((msign(M) - M) ** 2).sum()) == pytest.approx(trace[-1], rel=1e-8)
    low = torch.randn(30, 2, generator=gen, dtype=torch.float64) @ torch.randn(2, 10, generator=gen, dtype=torch.float64)
    assert int((torch.linalg.svdvals(msign(low)) > 0.5).sum()) == 2  # not all singular values are 1


def test_muon_bounds_updates_and_weights_not_gradients(gen):
    X = torch.randn(64, 8, generator=gen, dtype=torch.float64)
    W = torch.nn.Parameter(torch.randn(8, 8, generator=gen, dtype=torch.float64))
    lam, lr = 0.1, 0.05
    bound = max(float(torch.linalg.matrix_norm(W.detach(), 2)), 1 / lam)
    opt = Muon([W], lr=lr, weight_decay=lam, adjust_lr=None)
    for t in range(60):
        ((1e6 if t == 30 else 1.0) * ((X @ W) ** 2).mean()).backward()
        before = W.detach().clone()
        opt.step()
        opt.zero_grad()
        assert float(torch.linalg.matrix_norm(W.detach() - before, 2)) <= lr * (1 + lam * bound) + 1e-12
        assert float(torch.linalg.matrix_norm(W.detach(), 2)) <= bound + 1e-12


def test_proposition5_muon_leaves_the_stiefel_manifold(gen):
    W0 = torch.linalg.qr(torch.randn(12, 12, generator=gen, dtype=torch.float64)).Q
    G = torch.randn(12, 12, generator=gen, dtype=torch.float64)
    tangent = stiefel_tangent(W0, G)
    assert torch.allclose(W0.T @ tangent + tangent.T @ W0, torch.zeros(12, 12, dtype=torch.float64), atol=1e-12)
    U = msign(G)
    assert float(torch.linalg.matrix_norm(W0.T @ U + U.T @ W0)) > 0.1 * float(torch.linalg.matrix_norm(U))
    W = W0 - 0.1 * U
    assert float(torch.linalg.matrix_norm(W.T @ W - torch.eye(12, dtype=torch.float64))) > 0.05


def test_eq11_holds_at_beta0_for_any_rank_and_not_with_accumulation(gen):
    for G in (torch.randn(20, 12, generator=gen, dtype=torch.float64),
              torch.randn(20, 3, generator=gen, dtype=torch.float64) @ torch.randn(3, 12, generator=gen, dtype=torch.float64)):
        assert relative_error(shampoo_update([G], 0.0, 1e-14), msign(G)) < 1e-8
        smallest = torch.linalg.svdvals(G)[torch.linalg.matrix_rank(G) - 1]
        assert relative_error(shampoo_update([G], 0.0, float(smallest) ** 2), msign(G)) > 0.05  # eps = sigma_min^2 breaks it
    base = torch.randn(20, 12, generator=gen, dtype=torch.float64)
    grads = [base + torch.randn(20, 12, generator=gen, dtype=torch.float64) for _ in range(20)]
    direction = shampoo_update(grads, 0.9, 1e-12)
    direction = direction * torch.linalg.matrix_norm(msign(grads[-1])) / torch.linalg.matrix_norm(direction)
    assert relative_error(direction, msign(grads[-1])) > 0.05
    assert relative_error(shampoo_update(grads, 0.0, 1e-14), msign(grads[-1])) < 1e-8


def test_state_counts():
    assert optimizer_state_floats((768, 3072), "adamw") == 2 * optimizer_state_floats((768, 3072), "muon")
    assert optimizer_state_floats((768, 3072), "shampoo") == 2 * (768**2 + 3072**2)


def test_rms_matching_needs_the_larger_dimension(gen):
    from muonlib.optim import adjusted_lr
    from muonlib.theory import rms

    for m, n in ((64, 64), (256, 64), (64, 256)):
        U = msign(torch.randn(m, n, generator=gen, dtype=torch.float64))
        assert adjusted_lr(1.0, (m, n), "match_rms_adamw") * rms(U) == pytest.approx(0.2, rel=1e-9)
    tall = msign(torch.randn(256, 64, generator=gen, dtype=torch.float64))
    assert 0.2 * 64**0.5 * rms(tall) == pytest.approx(0.1, rel=1e-9)  # the paper's sqrt(n), n = columns


# --------------------------------------------------------------------------- Theorem 2

from muonlib.theory import Quadratic, deterministic_bound, run_muon, running_mean, theorem2_bound  # noqa: E402

T = 600
STEPS = torch.arange(1, T + 1, dtype=torch.float64)


def quadratic(n, seed):
    g = torch.Generator().manual_seed(seed)
    quad = Quadratic.random(n, n, smoothness=1.0, condition=10.0, generator=g)
    W = quad.W_star + torch.randn(n, n, generator=g, dtype=torch.float64)
    return quad, quad.W_star + (W - quad.W_star) / quad.loss(W) ** 0.5, g


def test_quadratic_smoothness_and_gradient():
    quad, W, _ = quadratic(6, 0)
    assert quad.smoothness == pytest.approx(1.0)
    D = 1e-6 * torch.randn(6, 6, dtype=torch.float64)
    assert quad.loss(W + D) - quad.loss(W) == pytest.approx(float((quad.grad(W) * D).sum()), rel=1e-4)


@pytest.mark.parametrize("n", [4, 16, 64])
def test_derived_bound_on_the_mean_gradient_norm_holds(n):
    quad, W, g = quadratic(n, 0)
    run = run_muon(quad, W, 1.0, beta=0.0, sigma=0.0, steps=T, generator=g)
    assert torch.all(running_mean(run["grad_sq"].sqrt()) <= deterministic_bound(STEPS, 1.0, 1.0, 1.0, n))
    assert run["ratio"].min() >= 1 - 1e-9  # <grad, msign(grad)> = nuclear norm >= Frobenius norm


def test_eq7_without_a_dimension_factor_fails_on_large_matrices():
    bound = theorem2_bound(STEPS, 1.0, 1.0, 1.0, 0.0)
    small = run_muon(*quadratic(4, 0)[:2], 1.0, 0.0, 0.0, T, torch.Generator().manual_seed(0))
    large = run_muon(*quadratic(64, 0)[:2], 1.0, 0.0, 0.0, T, torch.Generator().manual_seed(0))
    assert torch.all(running_mean(small["grad_sq"]) <= bound)
    assert (running_mean(large["grad_sq"]) > bound).sum() > 100


@pytest.mark.parametrize("beta", [0.0, 0.9])
def test_proof_step_fails_under_noise(beta):
    quad, W, g = quadratic(16, 1)
    ratio = run_muon(quad, W, 0.1, beta=beta, sigma=1.0, steps=T, generator=g)["ratio"]
    assert (ratio[T // 2:] < 0).double().mean() > 0.05
