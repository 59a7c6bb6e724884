"""The trainer: schedule, bit-exact resume on CPU, a clean stop on request, stop on divergence,
and nothing lost or silently wrong under faults (damaged checkpoints, non-finite gradients,
torn metrics, a folder reused for another configuration or by two trainers)."""

import json
import math

import pytest
import torch

from muonlib import train as train_module
from muonlib.data import prepare
from muonlib.models import GPT, preset
from muonlib.train import Checkpoint, MetricsLog, TrainConfig, TrainingDiverged, TrainingStopped, lr_factor, train


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


def killed_at(step: int, config: TrainConfig, out_dir, monkeypatch) -> None:
    """Run ``config`` until a KeyboardInterrupt kills it at (0-based) ``step``."""
    real = train_module.lr_factor

    def interrupted(s, *args):
        if s == step:
            raise KeyboardInterrupt
        return real(s, *args)

    monkeypatch.setattr(train_module, "lr_factor", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(config, out_dir, progress=False)
    monkeypatch.setattr(train_module, "lr_factor", real)


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

    killed_at(6, config, tmp_path / "resumed", monkeypatch)
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 + 6  # header + steps 1..6 (the checkpoint is at step 4)
    resumed = train(config, tmp_path / "resumed", progress=False)

    keys = ("step", "loss", "grad_norm", "lr", "val_loss", "test_loss", "moe_cv", "moe_starved")
    assert [{k: r.get(k) for k in keys} for r in resumed] == [{k: r.get(k) for k in keys} for r in straight]
    assert all(isinstance(r.get("moe_starved"), int) for r in straight) == (variant == "moe-mla")
    a = Checkpoint(tmp_path / "straight" / "checkpoint.pt").read()
    b = Checkpoint(tmp_path / "resumed" / "checkpoint.pt").read()
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
    # the loss times NaN: every gradient is NaN, while the weights the step began with are still finite
    with pytest.raises(TrainingDiverged, match=r"training loss became nan at step 7 \(not finite: no weights, "
                                               r"\d+ \(tok_emb.weight, .* more\) gradients\).*checkpoint.pt \(step 4\)"):
        train(tiny(), tmp_path, progress=False)
    assert Checkpoint(tmp_path / "checkpoint.pt").read()["step"] == 4
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()[1:]]
    assert [r["step"] for r in records[:-1]] == [1, 2, 3, 4, 5, 6]
    names = [name for name, p in GPT(preset("tiny")).named_parameters()]
    assert records[-1] == {"final": True, "diverged": True, "step": 6, "val_loss": None, "test_loss": None,
                           "not_finite_weights": [], "not_finite_grads": names}
    assert len(train(tiny(), tmp_path, progress=False)) == 6  # a diverged run is over: it is not retried


def test_a_stop_request_checkpoints_the_current_step(tmp_path, data_env):
    config = tiny(checkpoint_every=100)
    asked = iter([False, False, True])
    with pytest.raises(TrainingStopped, match="step 3 of 10"):
        train(config, tmp_path / "stopped", progress=False, should_stop=lambda: next(asked))
    assert Checkpoint(tmp_path / "stopped" / "checkpoint.pt").read()["step"] == 3
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
    for field, value in (("final_lr_ratio", 1.5), ("final_lr_ratio", -0.1), ("lr", math.nan), ("lr", -1e-3),
                         ("adamw_lr", math.inf), ("weight_decay", -0.1), ("grad_clip", -1.0), ("grad_clip", math.nan)):
        with pytest.raises(ValueError, match=field):
            tiny(**{field: value})


def test_no_clipping_is_zero_or_none_and_keeps_the_gradients(tmp_path, data_env):
    runs = {clip: train(tiny(grad_clip=clip, steps=4, lr=3e-2), tmp_path / str(clip), progress=False) for clip in (0.0, None, 1e9, 0.05)}
    losses = {clip: [r["loss"] for r in records] for clip, records in runs.items()}
    assert losses[0.0] == losses[None] == losses[1e9]  # no clipping at all, not a zeroed gradient
    assert losses[0.05] != losses[0.0]  # a real clip changes the run
    assert [r["grad_norm"] for r in runs[0.0]] == [r["grad_norm"] for r in runs[1e9]]


def test_a_damaged_checkpoint_is_refused_before_it_trains_on_garbage(tmp_path, data_env, monkeypatch):
    config = tiny(steps=8, checkpoint_every=4)
    killed_at(5, config, tmp_path, monkeypatch)
    path = tmp_path / "checkpoint.pt"
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 64] = bytes(b ^ 0xFF for b in raw[middle : middle + 64])  # 64 flipped bytes
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="damaged.*delete it to start the run afresh"):
        train(config, tmp_path, progress=False)
    path.write_bytes(b"garbage" + bytes(raw))
    with pytest.raises(ValueError, match="no integrity header"):
        train(config, tmp_path, progress=False)


def test_non_finite_gradients_never_reach_the_weights_or_a_checkpoint(tmp_path, data_env, monkeypatch):
    real_forward = train_module.GPT.forward
    calls = {"n": 0}

    def nan_gradients_after_six_steps(self, idx, targets=None, cache=None):
        logits, loss = real_forward(self, idx, targets, cache)
        if self.training:
            calls["n"] += 1
            if calls["n"] > 6:  # the loss stays finite; d sqrt(x)/dx at 0 is inf, times 0 is nan
                w = self.blocks[0].ffn.up.weight if hasattr(self.blocks[0].ffn, "up") else next(self.parameters())
                loss = loss + 0.0 * torch.sqrt(w - w.detach()).sum()
        return logits, loss

    monkeypatch.setattr(train_module.GPT, "forward", nan_gradients_after_six_steps)
    with pytest.raises(TrainingDiverged, match="gradient norm became nan at step 7"):
        train(tiny(), tmp_path, progress=False)
    state = Checkpoint(tmp_path / "checkpoint.pt").read()
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_a_folder_holds_one_run_and_refuses_another_configuration(tmp_path, data_env):
    config = tiny(steps=6)
    train(config, tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"another configuration \(lr: 0.003 there, 0.002 here\).*delete"):
        train(tiny(steps=6, lr=2e-3), tmp_path, progress=False)
    with pytest.raises(ValueError, match="steps: 6 there, 12 here"):  # a finished run is not silently returned
        train(tiny(steps=12), tmp_path, progress=False)
    assert len(train(tiny(steps=6, device="cpu"), tmp_path, progress=False)) == 6  # the device is not the run


def test_a_second_trainer_on_the_same_folder_is_refused(tmp_path, data_env):
    import fcntl

    with open(tmp_path / "train.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(RuntimeError, match="another process is training"):
            train(tiny(), tmp_path, progress=False)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_torn_last_metrics_line_is_dropped_and_the_run_resumes(tmp_path, data_env, monkeypatch):
    config = tiny()
    straight = train(config, tmp_path / "straight", progress=False)
    killed_at(6, config, tmp_path / "torn", monkeypatch)
    with open(tmp_path / "torn" / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "loss": 4.2')  # killed mid-write
    resumed = train(config, tmp_path / "torn", progress=False)
    assert [(r["step"], r["loss"]) for r in resumed] == [(r["step"], r["loss"]) for r in straight]
    (tmp_path / "bad.jsonl").write_text('{"provenance": {}}\n{"step": 1, "lo\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 2, is damaged"):  # damage before the end is not a torn write
        MetricsLog(tmp_path / "bad.jsonl").read()


def test_asking_for_a_missing_gpu_says_so(tmp_path, data_env, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without a GPU
    with pytest.raises(RuntimeError, match="no GPU is visible"):
        train(tiny(device="cuda"), tmp_path, progress=False)


@pytest.mark.parametrize("name,capability,preset", [("Tesla T4", (7, 5), "t4"), ("NVIDIA A100-SXM4-40GB", (8, 0), "a100"),
                                                     ("NVIDIA H100 80GB HBM3", (9, 0), "h100"), ("NVIDIA H200", (9, 0), "h200")])
def test_each_gpu_kind_gets_its_preset_and_hoppers_share_their_plans(monkeypatch, name, capability, preset):
    from muonlib import experiments
    from muonlib.hardware import detect_hardware

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    assert detect_hardware().preset == preset
    assert (experiments.scaling(preset).settings == experiments.scaling("h100").settings) == (capability[0] >= 9)
    monkeypatch.setenv("MUONLIB_PRESET", "cpu")  # a chapter's smallest rerun: the CPU's plans, on this GPU
    assert (detect_hardware().preset, detect_hardware().device, detect_hardware().name) == ("cpu", "cuda", name)
    monkeypatch.setenv("MUONLIB_PRESET", "h300")
    with pytest.raises(ValueError, match="choose one of"):
        detect_hardware()


@pytest.mark.parametrize("name,terabytes_per_s", [("NVIDIA H100 80GB HBM3", 3.35), ("NVIDIA H100 PCIe", 2.0), ("NVIDIA H100 NVL", 3.9),
                                                   ("NVIDIA H200", 4.8), ("NVIDIA GH200 480GB", 4.0), ("NVIDIA A100-SXM4-40GB", 1.555),
                                                   ("NVIDIA A100-SXM4-80GB", 2.039), ("NVIDIA L40S", 0.864), ("NVIDIA L4", 0.3),
                                                   ("Tesla T4", 0.32), ("NVIDIA B300", None)])
def test_a_gpu_name_gives_its_own_datasheet_bandwidth_not_a_kin_s(name, terabytes_per_s):
    from muonlib.hardware import datasheet_bandwidth

    expected = None if terabytes_per_s is None else pytest.approx(terabytes_per_s * 1e12)
    assert datasheet_bandwidth(name) == expected


def test_a_t4_gets_fp16_with_loss_scaling_not_emulated_bf16(monkeypatch):
    from muonlib.train import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # a T4 says so: by emulation
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    assert resolve_device(tiny(device="auto"))[1] == "fp16"
    with pytest.raises(RuntimeError, match="no bf16 tensor cores"):
        resolve_device(tiny(device="auto", precision="bf16"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    assert resolve_device(tiny(device="auto"))[1] == "bf16"


def test_a_run_with_tuple_settings_resumes_and_a_changed_precision_is_refused(tmp_path, data_env, monkeypatch):
    config = tiny(optimizer="adamw", optimizer_options={"betas": (0.9, 0.95)}, steps=6, checkpoint_every=3)
    killed_at(4, config, tmp_path, monkeypatch)
    real_resolve = train_module.resolve_device
    trained_in = real_resolve(config)[1]  # fp32 on a CPU, bf16 on a recent GPU
    other = "fp32" if trained_in != "fp32" else "bf16"
    monkeypatch.setattr(train_module, "resolve_device", lambda c, run=None: (real_resolve(c)[0], other))  # another machine
    with pytest.raises(ValueError, match=f"trained in {trained_in} and would resume in {other}"):
        train(config, tmp_path, progress=False)
    monkeypatch.setattr(train_module, "resolve_device", real_resolve)
    assert len(train(config, tmp_path, progress=False)) == 6  # the saved (0.9, 0.95) came back as a list: the same run
