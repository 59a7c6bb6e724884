"""The trainer: schedule, bit-exact resume on CPU, a clean stop on request, stop on divergence."""

import json
import math

import pytest
import torch

from muonlib import train as train_module
from muonlib.data import prepare
from muonlib.train import TrainConfig, TrainingDiverged, TrainingStopped, lr_factor, train


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    prepare("sample", root)
    return root


@pytest.fixture
def data_env(sample_root, monkeypatch):
    monkeypatch.setenv("MUONLIB_DATA", str(sample_root))


def tiny(variant="mha", optimizer="muon", **changes):
    settings = dict(model="tiny", variant=variant, model_changes={"vocab_size": 50257, "context": 32}, optimizer=optimizer,
                    corpus="sample", batch_size=4, steps=10, eval_every=5, eval_tokens=256, checkpoint_every=4, lr=3e-3)
    return TrainConfig(**(settings | changes))


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_the_final_ratio():
    steps, warmup = 200, 0.05
    factors = [lr_factor(s, steps, warmup, 0.1) for s in range(steps)]
    assert factors[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert factors[9] == 1.0 and factors[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))
    assert factors[9 + (steps - 10) // 2] == pytest.approx(0.55, abs=0.01)  # the cosine's midpoint


@pytest.mark.parametrize("variant,optimizer", [("mha", "muon"), ("moe-mla", "muon"), ("mla", "adamw")])
def test_a_killed_run_resumes_bit_for_bit(tmp_path, data_env, monkeypatch, variant, optimizer):
    config = tiny(variant, optimizer)
    straight = train(config, tmp_path / "straight", progress=False)

    real_lr_factor = train_module.lr_factor

    def killed_at_step_7(step, *args):
        if step == 6:
            raise KeyboardInterrupt
        return real_lr_factor(step, *args)

    monkeypatch.setattr(train_module, "lr_factor", killed_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "resumed", progress=False)
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 6  # header + steps 1..6 (the checkpoint is at step 4)
    monkeypatch.setattr(train_module, "lr_factor", real_lr_factor)
    resumed = train(config, tmp_path / "resumed", progress=False)

    keys = ("step", "loss", "grad_norm", "lr", "val_loss", "test_loss", "moe_cv")
    assert [{k: r.get(k) for k in keys} for r in resumed] == [{k: r.get(k) for k in keys} for r in straight]
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # a finished run is returned, not repeated
    assert train(config, tmp_path / "resumed", progress=False) == resumed


def test_divergence_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path, data_env, monkeypatch):
    real_forward = train_module.GPT.forward
    calls = {"n": 0}

    def nan_after_six_steps(self, idx, targets=None, cache=None):
        logits, loss = real_forward(self, idx, targets, cache)
        if self.training:
            calls["n"] += 1
        return logits, loss * (math.nan if calls["n"] > 6 else 1.0)

    monkeypatch.setattr(train_module.GPT, "forward", nan_after_six_steps)
    with pytest.raises(TrainingDiverged, match=r"training loss became nan at step 6.*checkpoint.pt \(step 4\)"):
        train(tiny(), tmp_path, progress=False)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 4
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()[1:]]
    assert [r["step"] for r in records[:-1]] == [1, 2, 3, 4, 5, 6]
    assert records[-1] == {"final": True, "diverged": True, "step": 6, "val_loss": None, "test_loss": None}
    assert len(train(tiny(), tmp_path, progress=False)) == 6  # a diverged run is over: it is not retried


def test_a_stop_request_checkpoints_the_current_step(tmp_path, data_env):
    config = tiny(checkpoint_every=100)
    asked = iter([False, False, True])
    with pytest.raises(TrainingStopped, match="step 3 of 10"):
        train(config, tmp_path / "stopped", progress=False, should_stop=lambda: next(asked))
    assert torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=False)["step"] == 3
    resumed = train(config, tmp_path / "stopped", progress=False)
    straight = train(config, tmp_path / "straight", progress=False)
    assert [(r["step"], r["loss"]) for r in resumed] == [(r["step"], r["loss"]) for r in straight]


def test_bad_configurations_are_refused(tmp_path, data_env):
    with pytest.raises(ValueError, match="vocabulary"):
        train(tiny(model_changes={"context": 32}), tmp_path, progress=False)
    with pytest.raises(ValueError, match="precision"):
        tiny(precision="fp8")
    with pytest.raises(ValueError, match="warmup"):
        tiny(warmup=1.5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_asking_for_a_missing_gpu_says_so(tmp_path, data_env):
    with pytest.raises(RuntimeError, match="no GPU is visible"):
        train(tiny(device="cuda"), tmp_path, progress=False)
