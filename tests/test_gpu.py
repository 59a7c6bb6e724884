"""GPU-only checks, the tier `make test-gpu` adds to the suite on a GPU machine: the paths a
Colab reader's GPU takes and CI's CPU never does. (The suite's other GPU checks live beside
their CPU twins: the fused Muon step against the reference on the GPU in test_optim, the
CUDA-graph decoder in test_decode, the Triton kernels on the GPU in test_kernels.)"""

import json

import pytest
import torch

from muonlib.kernels import interpreting
from muonlib.models import GPT, VARIANTS, preset
from muonlib.optim import Muon, build_optimizer
from muonlib.train import TrainConfig, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU-only checks (make test-gpu)")


def test_the_kernels_run_natively_not_in_the_interpreter():
    assert not interpreting()  # else every Triton check of the suite ran on the CPU


def test_muon_takes_the_fused_step_on_gpu_parameters_by_default():
    W = torch.nn.Parameter(torch.randn(64, 96, device="cuda"))
    W.grad = torch.randn_like(W)
    opt = Muon([W], lr=0.02)
    opt.step()
    assert opt._fused_steps  # the Triton passes and the CUDA graph, not the reference step


@pytest.mark.parametrize("variant", VARIANTS)
def test_compiled_models_give_the_eager_loss_and_gradients(variant):
    # Gradients compared in float32: in bf16 a fusion's other rounding can flip a router's
    # top-k choice, which moves whole experts' gradients (6% of one MoE-MLA weight's norm on
    # an H200); the bf16 path is checked on the loss, which such a flip barely moves.
    torch.manual_seed(0)
    model = GPT(preset("tiny", variant)).cuda()
    idx = torch.randint(0, model.config.vocab_size, (4, model.config.context), device="cuda")
    compiled = torch.compile(model)

    def loss_and_grads(forward, dtype):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            _, loss = forward(idx, idx)
        loss.backward()
        return loss.detach().float(), [p.grad.float().clone() for p in model.parameters() if p.grad is not None]

    (eager_loss, eager_grads), (compiled_loss, compiled_grads) = (loss_and_grads(f, torch.float32) for f in (model, compiled))
    assert abs(compiled_loss - eager_loss) <= 1e-4 * abs(eager_loss)
    for a, b in zip(compiled_grads, eager_grads):
        assert (a - b).norm() <= 1e-3 * b.norm() + 1e-7
    (eager_loss, _), (compiled_loss, _) = (loss_and_grads(f, torch.bfloat16) for f in (model, compiled))
    assert abs(compiled_loss - eager_loss) <= 1e-2 * abs(eager_loss)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_compiled_bf16_run_trains_on_the_gpu(tmp_path, optimizer, monkeypatch):
    from muonlib.data import prepare

    monkeypatch.setenv("MUONLIB_DATA", str(tmp_path / "data"))
    prepare("sample")
    config = TrainConfig(model="tiny", model_changes={"vocab_size": 50257}, corpus="sample", optimizer=optimizer,
                         batch_size=8, steps=30, eval_every=15, eval_tokens=2048, lr=3e-3, compile=True)
    records = train(config, tmp_path / "run", progress=False)
    header = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert header["provenance"]["precision"] == "bf16" and header["provenance"]["gpu"]
    assert records[-1]["loss"] < records[0]["loss"] - 0.5  # it learns, through the compiled model and the fused step


def test_build_optimizer_on_a_gpu_model_fuses_its_muon_part():
    model = GPT(preset("tiny", "mha")).cuda()
    opt = build_optimizer(model, "muon", lr=1e-3)
    model(torch.randint(0, 100, (2, 16), device="cuda"), torch.randint(0, 100, (2, 16), device="cuda"))[1].backward()
    opt.step()
    muon = next(child for child in opt.optimizers.values() if isinstance(child, Muon))
    assert muon._fused_steps


def test_muon_steps_an_expert_no_token_reaches_without_nan():
    """The fused passes once summed each norm from float32 squares: an expert that stops
    getting tokens has zero gradients, its momentum decays by beta a step (here 0.5, through
    float32's underflow within 120 steps), its norm came out as zero and its update as NaN."""
    torch.manual_seed(0)
    model = GPT(preset("tiny", "moe-mla", bias_update_rate=0.0)).cuda()
    opt = build_optimizer(model, "muon", lr=1e-3, momentum=0.5, nesterov=False)
    muon = next(child for child in opt.optimizers.values() if isinstance(child, Muon))
    experts = model.blocks[0].ffn.routed_up
    idx = torch.randint(0, model.config.vocab_size, (4, model.config.context), device="cuda")
    for step in range(125):
        if step == 5:  # from now on experts 0 and 1 are never among a token's top k
            assert muon.state[experts]["momentum_buffer"][:2].abs().max() > 0
            with torch.no_grad():
                for block in model.blocks:
                    block.ffn.router.bias[:2] = -1e4
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = model(idx, idx)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert muon._fused_steps  # the Triton passes took these steps
    assert muon.state[experts]["momentum_buffer"][:2].abs().max() < 1e-30  # its momentum went through the underflow
    assert torch.isfinite(loss) and all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("size", ["L", "XL"])
@pytest.mark.parametrize("batch", [1, 64])
def test_latent_attention_at_the_papers_shapes_in_bf16(size, batch):
    # The decode kernel compiled for the model sizes' heads and ranks (L's 12 heads and rank 384
    # are off powers of two), a long cache split over programs (batch 1) or not (batch 64).
    from muonlib.kernels.latent_attention import latent_attention, latent_attention_reference
    config = preset(size, "mla")
    H, R, P, L = config.n_head, config.kv_rank, config.rope_head_dim, 2048
    g = torch.Generator(device="cuda").manual_seed(0)
    make = lambda *shape: torch.randn(*shape, device="cuda", generator=g).bfloat16()  # noqa: E731
    q, q_rope, latent, k_rope = make(batch, H, R), make(batch, H, P), make(batch, L, R), make(batch, L, P)
    pos = torch.tensor([1500], device="cuda")
    y = latent_attention(q, q_rope, latent, k_rope, pos, config.head_dim ** -0.5)
    truth = latent_attention_reference(q.double(), q_rope.double(), latent.double(), k_rope.double(), pos, config.head_dim ** -0.5)
    assert ((y.double() - truth).norm() / truth.norm()).item() < 1e-2  # probabilities rounded to bf16 once
