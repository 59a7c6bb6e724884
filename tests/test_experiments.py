"""The experiment runner (skip, resume) and the analysis helpers on synthetic curves."""

import dataclasses
import math

import numpy as np
import pytest

from muonlib import experiments
from muonlib.data import prepare
from muonlib.experiments import Experiment, load_results, token_consumption_ratio, tokens_to_target
from muonlib.train import TrainConfig


def test_tokens_to_target_interpolates_the_first_crossing():
    tokens = [0, 100, 200, 300]
    losses = [10.0, 6.0, 4.0, 5.0]
    assert tokens_to_target(tokens, losses, 5.0) == pytest.approx(150.0)
    assert tokens_to_target(tokens, losses, 6.0) == pytest.approx(100.0)
    assert tokens_to_target(tokens, losses, 12.0) == 0.0
    assert math.isnan(tokens_to_target(tokens, losses, 3.0))


def test_token_consumption_ratio_of_a_curve_twice_as_fast_is_two():
    tokens = np.linspace(0, 1000, 51)
    adamw = (tokens, 10 - tokens / 200)  # linear: reaches loss L at 200 (10 - L)
    muon = (tokens, 10 - tokens / 100)
    for target in (9.0, 7.5, 6.0):
        assert token_consumption_ratio(adamw, muon, target) == pytest.approx(2.0)
    assert math.isnan(token_consumption_ratio(adamw, muon, 2.0))  # AdamW never gets there


@pytest.fixture
def toy_experiment(tmp_path, monkeypatch):
    monkeypatch.setenv("MUONLIB_DATA", str(tmp_path))
    prepare("sample", tmp_path)
    base = TrainConfig(model="tiny", model_changes={"vocab_size": 50257, "context": 32}, corpus="sample",
                       batch_size=2, steps=4, eval_every=2, eval_tokens=128, checkpoint_every=2)
    toy = Experiment("toy", "test", lambda hardware: base, {"adamw": (1e-3, 1e-2), "muon": (1e-3, 1e-2)}, extra_seeds=(1,))
    monkeypatch.setitem(experiments.EXPERIMENTS, "toy", toy)
    return tmp_path / "results" / "toy"


def test_runner_sweeps_picks_the_best_rate_and_skips_finished_runs(toy_experiment, monkeypatch):
    calls = []
    real_train = experiments.train
    monkeypatch.setattr(experiments, "train", lambda config, *a, **k: calls.append(config) or real_train(config, *a, **k))
    chosen = experiments.run("toy", "cpu", progress=False)
    assert len(calls) == 4 + 2 and len(list(toy_experiment.glob("*.jsonl"))) == 6
    frame = load_results(toy_experiment)
    finals = frame[(frame.seed == 0) & (frame.step == 4)].set_index(["optimizer", "lr"]).val_loss
    assert chosen == {opt: finals[opt].idxmin() for opt in ("adamw", "muon")}
    assert set(frame[frame.seed == 1].lr) == set(chosen.values())
    assert {"run", "optimizer", "lr", "seed", "tokens", "loss", "val_loss", "gpu"} <= set(frame.columns)
    calls.clear()
    experiments.run("toy", "cpu", progress=False)
    assert calls == []


def test_runner_resumes_an_interrupted_sweep(toy_experiment, monkeypatch):
    real_train = experiments.train
    started = []

    def interrupted_third_run(config, run_dir, **kwargs):
        started.append(config)
        if len(started) == 3:
            raise KeyboardInterrupt
        return real_train(config, run_dir, **kwargs)

    monkeypatch.setattr(experiments, "train", interrupted_third_run)
    with pytest.raises(KeyboardInterrupt):
        experiments.run("toy", "cpu", progress=False)
    assert len(list(toy_experiment.glob("*.jsonl"))) == 2
    started.clear()
    monkeypatch.setattr(experiments, "train", lambda config, *a, **k: started.append(config) or real_train(config, *a, **k))
    experiments.run("toy", "cpu", progress=False)
    assert len(started) == 4 and len(list(toy_experiment.glob("*.jsonl"))) == 6


def test_unknown_names_are_refused():
    with pytest.raises(KeyError, match="unknown experiment"):
        experiments.run("nope", "cpu")
    with pytest.raises(ValueError, match="preset"):
        experiments.run("xs_muon_vs_adamw", "tpu")
