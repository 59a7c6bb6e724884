"""The Triton kernels against float64 truth and against their torch references.

Without a GPU they run in Triton's interpreter (``tests/conftest.py`` sets
``TRITON_INTERPRET=1``), with tiles small enough that odd sizes cross tile edges."""

import pytest
import torch

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
