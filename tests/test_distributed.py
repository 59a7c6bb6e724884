"""Several processes on a CPU with the gloo backend: distributed Muon gives the single-process
step while each rank iterates on its share only, a two-process data-parallel run gives the
one-process run of the same global batch, and it resumes."""

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from muonlib import optim as optim_module
from muonlib.data import prepare
from muonlib.distributed import launch
from muonlib.optim import Muon
from muonlib.train import TrainConfig, TrainingStopped, train

WORLD = 2
SHAPES = [(16, 24), (24, 16), (3, 16, 24), (8, 8), (2, 20, 13), (6, 4, 3, 3)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_rank(rank: int, world: int, port: int) -> None:
    """The environment torchrun gives a process."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)


def muon_steps(fused: bool, distributed: bool = False):
    """Three Muon steps on fixed matrices and gradients; returns the weights and momenta."""
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(s)) for s in SHAPES]
    grads = [[torch.randn(s) for s in SHAPES] for _ in range(3)]
    opt = Muon(params, lr=0.02, weight_decay=0.1, fused=fused, distributed=distributed)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
    return [p.detach().clone() for p in params], [opt.state[p]["momentum_buffer"].clone() for p in params]


def distributed_muon(rank: int, port: int, fused: bool, out: str) -> None:
    as_rank(rank, WORLD, port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    iterated = []  # how many matrices this rank orthogonalised
    if fused:
        from muonlib import fused as fused_module
        real = fused_module.newton_schulz_iterations
        fused_module.newton_schulz_iterations = lambda x, *a, **k: iterated.append(x.size(0)) or real(x, *a, **k)
    else:
        real = optim_module.newton_schulz
        optim_module.newton_schulz = lambda x, *a, **k: iterated.append(x.size(0)) or real(x, *a, **k)
    weights, momenta = muon_steps(fused, distributed=True)
    torch.save({"weights": weights, "momenta": momenta, "iterated": iterated}, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def single_process_muon(_: int, fused: bool, out: str) -> None:
    weights, momenta = muon_steps(fused)
    torch.save({"weights": weights, "momenta": momenta}, Path(out) / "single.pt")


@pytest.mark.parametrize("fused", [False, True])
def test_distributed_muon_takes_the_single_process_step_with_half_the_work(tmp_path, fused, monkeypatch):
    # gloo holds CPU tensors, whose fused passes run in Triton's interpreter: the spawned
    # processes import muonlib afresh, so they interpret on a GPU machine too
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    mp.spawn(distributed_muon, args=(free_port(), fused, str(tmp_path)), nprocs=WORLD)
    mp.spawn(single_process_muon, args=(fused, str(tmp_path)), nprocs=1)
    single = torch.load(tmp_path / "single.pt")
    weights, momenta = single["weights"], single["momenta"]
    # matrices per rank and step: each shape batch padded to equal slices
    batches = {}
    for s in SHAPES:
        m = (s[0], s[1] * s[2] * s[3]) if len(s) == 4 else s
        key = tuple(sorted(m[-2:]))
        batches[key] = batches.get(key, 0) + (m[0] if len(m) == 3 else 1)
    share = 3 * sum(-(-n // WORLD) for n in batches.values())
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for a, b in zip(got["weights"] + got["momenta"], weights + momenta):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)  # the same step on every rank
        assert sum(got["iterated"]) == share  # and each rank orthogonalised only its share


def data_parallel_run(rank: int, world: int, port: int, root: str, out: str, config: dict, stop_at: int | None) -> None:
    as_rank(rank, world, port)
    os.environ["MUONLIB_DATA"] = root
    steps = iter(range(10**6))
    try:
        train(TrainConfig(**config), Path(out), progress=False,
              should_stop=(lambda: next(steps) + 1 >= stop_at and rank == 1) if stop_at else None)
    except TrainingStopped:
        pass
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def losses(folder: Path) -> list[tuple]:
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()[1:]]
    return [(r["step"], r["loss"], r["grad_norm"], r.get("val_loss")) for r in lines if "final" not in r]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    prepare("sample", root)
    return root


@pytest.mark.parametrize("variant,optimizer", [("mha", "muon"), ("moe-mla", "adamw")])
def test_two_processes_train_the_one_process_run_and_resume(tmp_path, sample, monkeypatch, variant, optimizer):
    config = dict(model="tiny", variant=variant, model_changes={"vocab_size": 50257, "context": 32}, corpus="sample", device="cpu",
                  optimizer=optimizer, batch_size=4, grad_accum=2, steps=8, eval_every=4, eval_tokens=256,
                  checkpoint_every=3, lr=3e-3)
    monkeypatch.setenv("MUONLIB_DATA", str(sample))
    single = train(TrainConfig(**config), tmp_path / "single", progress=False)
    mp.spawn(data_parallel_run, args=(WORLD, free_port(), str(sample), str(tmp_path / "two"), config, None), nprocs=WORLD)
    one, two = losses(tmp_path / "single"), losses(tmp_path / "two")
    assert [r[0] for r in two] == list(range(1, 9)) and len(one) == len(two)
    for a, b in zip(one, two):  # the same batches, split in two: equal up to float32 summation order
        assert a[0] == b[0] and all(x == y == None or abs(x - y) <= 1e-4 * abs(x) for x, y in zip(a[1:], b[1:]))
    assert [r["step"] for r in single] == [r[0] for r in one]

    # stopped by one rank at step 5 (both checkpoint there), then resumed by two processes
    mp.spawn(data_parallel_run, args=(WORLD, free_port(), str(sample), str(tmp_path / "resumed"), config, 5), nprocs=WORLD)
    assert [r[0] for r in losses(tmp_path / "resumed")] == [1, 2, 3, 4, 5]
    mp.spawn(data_parallel_run, args=(WORLD, free_port(), str(sample), str(tmp_path / "resumed"), config, None), nprocs=WORLD)
    assert losses(tmp_path / "resumed") == two


def test_more_processes_than_gpus_are_refused_with_what_to_do(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for name, value in dict(WORLD_SIZE="2", RANK="1", LOCAL_RANK="1").items():
        monkeypatch.setenv(name, value)
    with pytest.raises(RuntimeError, match=r"local rank 1, but the machine has 1 GPU.*nproc_per_node 1.*device='cpu'"):
        launch()


def test_sharing_needs_a_process_group():
    with pytest.raises(ValueError, match="torchrun"):
        muon_steps(fused=False, distributed=True)


def test_a_batch_that_does_not_split_over_the_processes_is_refused_by_every_rank(tmp_path, sample):
    config = dict(model="tiny", model_changes={"vocab_size": 50257, "context": 32}, corpus="sample", device="cpu", batch_size=3, steps=2)
    with pytest.raises(Exception):  # every rank raises: spawn reports the first
        mp.spawn(data_parallel_run, args=(WORLD, free_port(), str(sample), str(tmp_path), config, None), nprocs=WORLD)
    assert not (tmp_path / "metrics.jsonl").exists()


# ---------------------------------------------------------------- FSDP2: parameters sharded over the ranks


class Experts(nn.Module):
    """Two bias-free layers around a stack of two experts, every weight a Muon matrix; the
    output layer's 9 rows split unevenly over two ranks."""

    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(16, 24, bias=False), nn.Linear(24, 9, bias=False)
        self.experts = nn.Parameter(torch.randn(2, 24, 24) / 24**0.5)

    def forward(self, x):
        h = self.up(x)
        return self.down(h @ self.experts[0] + torch.tanh(h) @ self.experts[1])


def muon_on_experts(model: nn.Module, method: str, steps: int = 3) -> Muon:
    opt = Muon(model.parameters(), lr=0.02, weight_decay=0.1, orthogonalize=method)
    for x in torch.randn(steps, 8, 16, generator=torch.Generator().manual_seed(1)):  # the same batches on every rank
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
    return opt


def fsdp_muon(rank: int, port: int, method: str, out: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    as_rank(rank, WORLD, port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    orthogonalised = []
    real = optim_module.orthogonalize
    optim_module.orthogonalize = lambda updates, *a, **k: orthogonalised.extend(tuple(u.shape) for u in updates) or real(updates, *a, **k)
    torch.manual_seed(0)
    model = Experts()
    mesh = init_device_mesh("cpu", (WORLD,))
    fully_shard(model.up, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = muon_on_experts(model, method)
    momenta = [opt.state[p]["momentum_buffer"] for p in model.parameters()]
    saved = opt.state_dict()  # as a full (gathered) state dict holds it: whole buffers
    saved["state"] = {i: {"momentum_buffer": state["momentum_buffer"].full_tensor()} for i, state in saved["state"].items()}
    reloaded = Muon(model.parameters(), lr=0.02, weight_decay=0.1, orthogonalize=method)
    reloaded.load_state_dict(saved)
    resharded = [reloaded._momentum_buffer(p) for p in model.parameters()]
    torch.save({"weights": [p.full_tensor() for p in model.parameters()], "momenta": [m.full_tensor() for m in momenta],
                "in_pieces": [m.to_local().shape[0] < m.shape[0] for m in momenta], "orthogonalised": orthogonalised,
                "reloaded": all(torch.equal(r.to_local(), m.to_local()) for r, m in zip(resharded, momenta))},
               Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("method", ["newton_schulz", "svd"])
def test_muon_steps_fsdp2_sharded_parameters_as_one_process_each_matrix_on_one_rank(tmp_path, method):
    mp.spawn(fsdp_muon, args=(free_port(), method, str(tmp_path)), nprocs=WORLD)
    torch.manual_seed(0)
    model = Experts()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank: LAPACK's SVD rounds differently with another thread count
    try:
        opt = muon_on_experts(model, method)
    finally:
        torch.set_num_threads(threads)
    expected = [p.detach() for p in model.parameters()] + [opt.state[p]["momentum_buffer"] for p in model.parameters()]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for got in ranks:
        assert all(got["in_pieces"])  # momentum is sharded like the parameters
        assert got["reloaded"]  # and a full state dict's whole buffers are sharded again on loading
        for a, b in zip(got["weights"] + got["momenta"], expected):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)  # the single-process step
    # each matrix of each step orthogonalised once, whole, by one rank; both ranks take a share
    done = [got["orthogonalised"] for got in ranks]
    assert sorted(done[0] + done[1]) == sorted(tuple(p.shape) for p in model.parameters() for _ in range(3))
    assert all(done)


def test_matrix_owners_balance_newton_schulz_work():
    from muonlib.distributed import owners

    params = [torch.empty(s) for s in [(2, 24, 24), (24, 16), (10, 24), (24, 24), (24, 24)]]
    work = [p.shape[:-2].numel() * p.shape[-2] * p.shape[-1] * min(p.shape[-2:]) for p in params]
    owner = owners(params, [0, 1])
    load = [sum(w for w, o in zip(work, owner) if o == r) for r in (0, 1)]
    assert abs(load[0] - load[1]) <= max(work) and set(owner) == {0, 1}
    assert owner == [0, 0, 1, 1, 1]  # largest first, each to the least loaded rank
    assert owners(params, [3]) == [3] * len(params)
