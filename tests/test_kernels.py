"""The Triton kernels against float64 truth and against their torch references.

Without a GPU they run in Triton's interpreter (``tests/conftest.py`` sets
``TRITON_INTERPRET=1``), with tiles small enough that odd sizes cross tile edges."""

import pytest
import torch
import triton

from muonlib import linalg
from muonlib.kernels import gram, gram_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
F64 = torch.float64
# bf16 keeps 8 significant bits, fp16 11: one rounding of the output is a relative error of
# at most 2^-9 (2^-12) per entry, so Frobenius-relative errors of 3e-3 (4e-4) bound it with margin.
TOL = {torch.bfloat16: 3e-3, torch.float16: 4e-4, torch.float32: 1e-5}
SHAPES = [(1, 1, 5), (2, 37, 53), (3, 50, 7), (1, 16, 16), (2, 33, 96)]


def rel(a, b):
    return ((a.to(F64) - b.to(F64)).norm() / b.to(F64).norm()).item()


def batch(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype).to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", SHAPES)
def test_gram_is_x_xt(shape, dtype):
    X = batch(shape, dtype)
    G = gram(X)
    truth = X.to(F64) @ X.to(F64).mT
    assert G.dtype == dtype and G.shape == truth.shape
    assert rel(G, truth) < TOL[dtype]
    assert rel(G, G.mT) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gram_scales_by_alpha(dtype):
    X = batch((2, 45, 30), dtype, 1)
    truth = -1.4253 * (X.to(F64) @ X.to(F64).mT)
    assert rel(gram(X, -1.4253), truth) < TOL[dtype]
    assert rel(gram_reference(X, -1.4253), truth) < TOL[dtype]


def test_gram_reads_strided_input():
    X = batch((2, 40, 24), torch.float32, 3).mT  # (2, 24, 40), not contiguous
    assert not X.is_contiguous()
    assert rel(gram(X), X.to(F64) @ X.to(F64).mT) < TOL[torch.float32]


def test_gram_rejects_bad_input():
    with pytest.raises(ValueError, match="batch of matrices"):
        gram(batch((8, 8), torch.float32))
    with pytest.raises(TypeError, match="gram_reference"):
        gram(batch((1, 8, 4), F64))


def test_newton_schulz_through_the_kernels_stays_in_the_muon_band(monkeypatch):
    """Five steps with both symmetric products of each step sent to the kernel: the same
    orthogonalisation as the torch path."""
    G = batch((2, 48, 100), torch.float32, 5)
    reference = linalg.newton_schulz(G, gram=False)
    calls = []
    kernel = linalg._symmetric_kernel
    monkeypatch.setattr(linalg, "_symmetric_kernels_win", lambda X: True)
    monkeypatch.setattr(linalg, "_symmetric_kernel", lambda *args: calls.append(1) or kernel(*args))
    through_kernels = linalg.newton_schulz(G, gram=False)
    assert len(calls) == 10
    assert rel(through_kernels, reference) < 1e-2
    s = torch.linalg.svdvals(through_kernels.float())
    lo, hi = linalg.MUON_BAND
    assert lo - 0.02 < s.min() and s.max() < hi + 0.02


@pytest.mark.skipif(not torch.cuda.is_available(), reason="dispatch by width happens on a GPU only")
def test_dispatch_sends_only_wide_matrices_to_the_kernels():
    narrow = torch.zeros(1, 8, 8, device="cuda")
    wide = torch.zeros(1, linalg.SYMMETRIC_MIN_WIDTH, 8, device="cuda")
    assert not linalg._symmetric_kernels_win(narrow)
    assert linalg._symmetric_kernels_win(wide)
    assert not linalg._symmetric_kernels_win(wide.cpu())
    assert not linalg._symmetric_kernels_win(wide.double())  # the kernel has no float64


# --------------------------------------------------------------------------- Muon's memory passes

PASS_SHAPES = [(16, 24), (24, 16), (3, 16, 24), (8, 8), (2, 20, 13), (9, 40), (1, 5),
               (300, 240)]  # in the interpreter more tiles than one block of tile sums holds


def pass_inputs(param_dtype, seed=0):
    from muonlib.kernels.muon_passes import PassTables

    g = torch.Generator().manual_seed(seed)
    make = lambda s: torch.randn(*s, generator=g).to(DEVICE)  # noqa: E731
    params = [make(s).to(param_dtype) for s in PASS_SHAPES]
    grads = [make(s).to(param_dtype) for s in PASS_SHAPES]
    buffers = [make(s) for s in PASS_SHAPES]
    wide = [(p.numel() // (p.shape[-2] * p.shape[-1]), *sorted(p.shape[-2:])) for p in params]
    sources = [torch.full(w, float("nan"), dtype=torch.float16, device=DEVICE) for w in wide]
    results = [torch.randn(*w, generator=g).to(torch.float16).to(DEVICE) for w in wide]
    factors = [0.5 + k for k in range(len(params))]
    tables = PassTables(params, sources, results, factors)
    tables.point_at(grads, buffers, params)
    return params, grads, buffers, sources, results, factors, tables


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("grad_dtype", [torch.float32, torch.bfloat16])
def test_momentum_and_normalize_passes_match_the_reference(nesterov, grad_dtype):
    from muonlib.kernels.muon_passes import momentum_pass, muon_passes_reference, normalize_pass

    params, grads, buffers, sources, _, _, tables = pass_inputs(grad_dtype)
    expected_buffers = [b.clone() for b in buffers]
    expected = muon_passes_reference(grads, expected_buffers, 0.9, nesterov, safety=1.01)
    scalars = torch.tensor([0.0, 0.9, 0.0], dtype=F64, device=DEVICE)
    momentum_pass(tables, scalars, grad_dtype, nesterov)
    normalize_pass(tables, scalars, grad_dtype, nesterov, safety=1.01)
    for b, e in zip(buffers, expected_buffers):
        assert rel(b, e) < 1e-6  # float32 lerps in the same formula; FMA contraction may differ
    for s, e in zip(sources, expected):
        assert s.shape == e.shape
        # Each matrix's norm sums tiles in another order than torch's: a last-bit difference
        # in the norm flips a few float16 roundings, no more than one rounding of the output.
        assert rel(s, e) < TOL[torch.float16]


@pytest.mark.parametrize("scale", [1e-25, 1e25, pytest.param(1e-40, marks=pytest.mark.skipif(
    DEVICE == "cuda", reason="a GPU flushes float32 subnormals to zero"))])
def test_the_normalize_pass_is_scale_free_where_squares_underflow_or_overflow(scale):
    """A momentum of entries near 1e-25 (an expert no token reached for a few hundred steps)
    squares to float32 zero: summed plainly its norm is zero, the floor blows it up past float16
    and Newton-Schulz returns NaN. The passes normalise it as they do the same momentum at scale 1
    (subnormal entries too, with no floor), and a zero momentum to zero."""
    from muonlib.kernels.muon_passes import momentum_pass, normalize_pass

    sources = {}
    for s in (1.0, scale, 0.0):
        _, grads, buffers, out, _, _, tables = pass_inputs(torch.float32)
        for g, b in zip(grads, buffers):
            g.zero_()
            b.mul_(s)
        scalars = torch.tensor([0.0, 0.9, 0.0], dtype=F64, device=DEVICE)
        momentum_pass(tables, scalars, torch.float32, False)
        normalize_pass(tables, scalars, torch.float32, False, safety=1.0, eps=0.0 if s else linalg.NORM_FLOOR)
        sources[s] = out
    for unit, scaled, zero in zip(sources[1.0], sources[scale], sources[0.0]):
        assert torch.isfinite(scaled).all() and rel(scaled, unit) < TOL[torch.float16]
        assert not zero.any()


@pytest.mark.parametrize("param_dtype", [torch.float32, torch.bfloat16])
def test_update_pass_is_apply_updates(param_dtype):
    from muonlib.kernels.muon_passes import update_pass
    from muonlib.optim import apply_updates

    params, _, _, _, results, factors, tables = pass_inputs(param_dtype, seed=1)
    expected = [p.clone() for p in params]
    directions = [r.mT if p.shape[-2] > p.shape[-1] else r for p, r in zip(params, results)]
    apply_updates(expected, [d.reshape(p.shape) for d, p in zip(directions, params)], 0.03, 0.1, factors)
    update_pass(tables, torch.tensor([0.03, 0.0, 0.1], dtype=F64, device=DEVICE), param_dtype)
    for p, e, r, factor in zip(params, expected, results, factors):
        if param_dtype == torch.bfloat16:  # every operation rounds to bfloat16 as the reference's do
            assert torch.equal(p, e)
        else:
            # A GPU may contract a product and the subtraction into one FMA, skipping the rounding of
            # W (1 - lr wd) or of lr factor O: at most one float32 rounding (2^-24 relative) of each.
            skipped = 2**-24 * (e.abs().max().item() + 0.03 * factor * r.float().abs().max().item())
            assert torch.allclose(p, e, rtol=0, atol=2 * skipped)


def test_tables_follow_tensors_that_moved():
    from muonlib.kernels.muon_passes import momentum_pass

    params, grads, buffers, _, _, _, tables = pass_inputs(torch.float32, seed=2)
    moved = [torch.zeros_like(b) for b in buffers]
    tables.point_at(grads, moved, params)
    momentum_pass(tables, torch.tensor([0.0, 0.5, 0.0], dtype=F64, device=DEVICE), torch.float32, False)
    for m, g in zip(moved, grads):
        assert torch.allclose(m, 0.5 * g)  # lerp from zero: the new buffers were written, not the old


def test_tables_refuse_tensors_the_kernels_would_misread():
    params, grads, buffers, _, _, _, tables = pass_inputs(torch.float32, seed=3)
    with pytest.raises(ValueError, match="float32"):
        tables.point_at(grads, [b.bfloat16() for b in buffers], params)
    with pytest.raises(ValueError, match="contiguous gradient"):
        tables.point_at([g.mT.contiguous().mT for g in grads], buffers, params)
    with pytest.raises(ValueError, match="shape"):
        tables.point_at(grads[::-1], buffers, params)


# Latent attention: (batch, heads, rank, rotary dim, cached length, position, splits). Heads and
# ranks off powers of two (L's 12 heads and rank 384), no RoPE, the first position, a position
# inside a block, and more splits than the visible positions fill.
LATENT_SHAPES = [(2, 4, 32, 8, 64, 37, None), (3, 12, 48, 0, 80, 79, 3), (1, 12, 384, 32, 128, 5, 4),
                 (2, 16, 128, 16, 40, 0, 2), (1, 3, 20, 6, 33, 32, 1)]


def latent_inputs(B, H, R, P, L, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=g).to(dtype).to(DEVICE)  # noqa: E731
    return make(B, H, R), make(B, H, P) if P else None, make(B, L, R), make(B, L, P) if P else None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", LATENT_SHAPES)
def test_latent_attention_is_softmax_attention_over_the_visible_cache(shape, dtype):
    from muonlib.kernels.latent_attention import latent_attention, latent_attention_reference
    B, H, R, P, L, position, splits = shape
    q, q_rope, latent, k_rope = latent_inputs(B, H, R, P, L, dtype)
    pos = torch.tensor([position], device=DEVICE)
    y = latent_attention(q, q_rope, latent, k_rope, pos, 0.1, splits=splits)
    as64 = lambda t: None if t is None else t.to(F64)  # noqa: E731
    truth = latent_attention_reference(as64(q), as64(q_rope), as64(latent), as64(k_rope), pos, 0.1)
    assert y.dtype == torch.float32 and y.shape == (B, H, R)
    assert rel(y, truth) < TOL[dtype]  # bf16: the probabilities are rounded once before the value matmul
    assert rel(latent_attention_reference(q, q_rope, latent, k_rope, pos, 0.1), truth) < TOL[dtype]  # bf16 scores
    # A cache with its last dimension strided is read as it is meant.
    strided = torch.empty(B, L, 2 * R, dtype=dtype, device=DEVICE)[..., ::2].copy_(latent)
    assert rel(latent_attention(q, q_rope, strided, k_rope, pos, 0.1, splits=splits), truth) < TOL[dtype]
    # Positions past `position` are never read: a cache full of NaN there changes nothing.
    latent[:, position + 1 :] = float("nan")
    assert rel(latent_attention(q, q_rope, latent, k_rope, pos, 0.1, splits=splits), truth) < TOL[dtype]


def test_latent_attention_splits_fill_the_gpu_without_empty_splits():
    from muonlib.kernels.latent_attention import split_count
    assert split_count(batch=1, blocks=64, programs=264) == 64  # one sequence: a split per block
    assert split_count(batch=256, blocks=64, programs=264) == 2
    assert split_count(batch=512, blocks=64, programs=264) == 1
    for batch in range(1, 40):
        for blocks in range(1, 40):
            splits = split_count(batch, blocks, 132)
            per_split = -(-blocks // splits)
            assert 1 <= splits <= blocks and (splits - 1) * per_split < blocks  # the last split has a block


def test_latent_attention_launch_fits_each_gpus_shared_memory(monkeypatch):
    from muonlib.kernels import latent_attention as kernel
    monkeypatch.setattr(kernel, "interpreting", lambda: False)  # the GPU's launch, decided on any machine
    h200, a100, l4 = 232448, 166912, 101376  # shared memory a block may claim
    assert kernel._launch_config(512, 2, h200)["BLOCK_S"] == 64  # the sweep's fastest on an H200
    assert kernel._launch_config(512, 2, a100)["BLOCK_S"] == 32
    assert kernel._launch_config(512, 4, h200)["BLOCK_S"] == 32  # float32 latents: twice the bytes
    for memory in (h200, a100, l4, 49152):
        for rank, itemsize in ((384, 2), (512, 2), (512, 4)):
            block = kernel._launch_config(rank, itemsize, memory)["BLOCK_S"]
            fits = lambda b: 2 * b * triton.next_power_of_2(rank) * itemsize <= memory * 3 // 4  # noqa: E731 - two stages
            assert 16 <= block <= 64 and (block == 16 or fits(block)) and (block == 64 or not fits(2 * block))  # the largest that fits


def test_latent_attention_rejects_mismatched_input():
    from muonlib.kernels.latent_attention import latent_attention
    q, q_rope, latent, k_rope = latent_inputs(1, 4, 32, 8, 16, torch.float32)
    with pytest.raises(ValueError, match="both rotary parts or neither"):
        latent_attention(q, q_rope, latent, None, torch.tensor([3], device=DEVICE), 0.1)
    with pytest.raises(ValueError, match="a cache"):
        latent_attention(q, None, latent[..., :16], None, torch.tensor([3], device=DEVICE), 0.1)
