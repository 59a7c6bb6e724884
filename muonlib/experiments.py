"""Named experiments run as resumable sweeps, and the helpers that analyse their results.

``python -m muonlib.experiments run NAME --preset cpu|t4|a100|h100`` first sweeps the
learning rate of every optimizer at one seed, picks each optimizer's best rate by final
validation loss, then repeats the chosen rates at more seeds. Each run's metrics go to
``data/results/NAME/RUN.jsonl`` (a provenance header, step records, a ``final`` record);
checkpoints go to ``data/cache/runs/`` and are not committed. A run whose result file is
final is skipped; an interrupted one resumes from its checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .data import data_root
from .hardware import PRESETS, detect_hardware
from .train import MetricsLog, TrainConfig, count_loss_spikes, train


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    base: Callable[[str], TrainConfig]  # hardware preset -> the shared configuration
    learning_rates: dict[str, tuple[float, ...]]  # optimizer -> the swept peak rates
    sweep_seed: int = 0
    extra_seeds: tuple[int, ...] = (1, 2)


def muon_vs_adamw_base(hardware: str) -> TrainConfig:
    """XS with MHA on Gutenberg for about one epoch (3.3M tokens); CPU: a tiny model on the
    committed sample. Same data, tokens, schedule and seeds for both optimizers."""
    paper = dict(weight_decay=0.1, warmup=0.02, grad_clip=1.0, optimizer_options={})
    if hardware == "cpu":
        return TrainConfig(model="tiny", model_changes={"vocab_size": 50257}, corpus="sample", batch_size=8,
                           steps=100, eval_every=20, eval_tokens=2048, checkpoint_every=50, **paper)
    accum = 2 if hardware == "t4" else 1  # 16 GB: two micro-batches of 8
    return TrainConfig(model="XS", corpus="gutenberg", batch_size=16 // accum, grad_accum=accum, steps=400,
                       eval_every=20, eval_tokens=2**17, checkpoint_every=100, compile=hardware != "t4", **paper)


EXPERIMENTS = {
    e.name: e for e in (
        Experiment(
            "xs_muon_vs_adamw",
            "XS MHA: Muon vs AdamW, each at its own best learning rate, then three seeds each",
            muon_vs_adamw_base,
            {opt: (3.125e-4, 6.25e-4, 1.25e-3, 2.5e-3, 5e-3, 1e-2, 2e-2) for opt in ("adamw", "muon")},
        ),
    )
}


def run_id(config: TrainConfig, hardware: str) -> str:
    return f"{hardware}-{config.model}-{config.variant}-{config.optimizer}-lr{config.lr:g}-seed{config.seed}"


def read_run(path: Path) -> tuple[dict, list[dict], dict | None]:
    """Header, step records and the final record (``None`` while unfinished) of a result file."""
    header, records = MetricsLog(path).read()
    if header is None or "provenance" not in header:
        raise ValueError(f"{path} is not a result file (no provenance header): delete it and rerun")
    final = records[-1] if records and "final" in records[-1] else None
    return header, [r for r in records if "final" not in r], final


def run_one(config: TrainConfig, hardware: str, results: Path, checkpoints: Path, progress: bool) -> dict:
    """One run, skipped when its result is final; returns the final record."""
    target = results / f"{run_id(config, hardware)}.jsonl"
    if target.exists() and (final := read_run(target)[2]) is not None:
        return final
    run_dir = checkpoints / run_id(config, hardware)
    train(config, run_dir, progress=progress)
    results.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / "metrics.jsonl", target)
    (run_dir / "checkpoint.pt").unlink(missing_ok=True)  # the result is kept; the weights are not needed
    return read_run(target)[2]


def run(name: str, hardware: str | None = None, results: Path | None = None, progress: bool = True) -> dict[str, float]:
    """Run (or finish) an experiment; returns each optimizer's chosen learning rate."""
    if name not in EXPERIMENTS:
        raise KeyError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    hardware = hardware or detect_hardware().preset
    if hardware not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {hardware!r}")
    experiment = EXPERIMENTS[name]
    base = experiment.base(hardware)
    results = results or data_root() / "results" / name
    checkpoints = data_root() / "cache" / "runs" / name
    chosen = {}
    for optimizer, rates in experiment.learning_rates.items():
        finals = {}
        for lr in rates:
            config = dataclasses.replace(base, optimizer=optimizer, lr=lr, seed=experiment.sweep_seed)
            finals[lr] = run_one(config, hardware, results, checkpoints, progress)["val_loss"]
        chosen[optimizer] = min(finals, key=lambda lr: finals[lr] if np.isfinite(finals[lr]) else np.inf)
    for optimizer, lr in chosen.items():
        for seed in experiment.extra_seeds:
            run_one(dataclasses.replace(base, optimizer=optimizer, lr=lr, seed=seed), hardware, results, checkpoints, progress)
    return chosen


# ---------------------------------------------------------------- analysis


def load_results(folder: str | Path):
    """Every finished run in ``folder`` as one tidy ``pandas.DataFrame``: a row per step record,
    with the run's ``run``, ``hardware``, ``optimizer``, ``lr``, ``seed`` and ``gpu``."""
    import pandas as pd

    frames = []
    for path in sorted(Path(folder).glob("*.jsonl")):
        header, records, final = read_run(path)
        if final is None:
            continue
        config = header["provenance"]["config"]
        frame = pd.DataFrame(records)
        frame.insert(0, "run", path.stem)
        for key in ("optimizer", "lr", "seed", "model", "variant"):
            frame[key] = config[key]
        frame["hardware"] = path.stem.split("-")[0]
        frame["gpu"] = header["provenance"]["gpu"] or "CPU"
        frames.append(frame)
    if not frames:
        raise FileNotFoundError(f"no finished runs in {folder}: run `python -m muonlib.experiments run ...` first")
    return pd.concat(frames, ignore_index=True)


def tokens_to_target(tokens, losses, target: float) -> float:
    """Tokens at which a loss curve first reaches ``target``, interpolated linearly between the
    two measurements around the crossing; ``nan`` if it never does."""
    tokens, losses = np.asarray(tokens, float), np.asarray(losses, float)
    below = np.flatnonzero(losses <= target)
    if below.size == 0:
        return float("nan")
    i = below[0]
    if i == 0:
        return float(tokens[0])
    t0, t1, l0, l1 = tokens[i - 1], tokens[i], losses[i - 1], losses[i]
    return float(t0 + (t1 - t0) * (l0 - target) / (l0 - l1))


def token_consumption_ratio(adamw: tuple, muon: tuple, target: float) -> float:
    """``R_L(B) = T_AdamW / T_Muon`` (eq. 12) for curves given as ``(tokens, losses)``; above 1
    when Muon needs fewer tokens to reach the target loss ``L``."""
    return tokens_to_target(*adamw, target) / tokens_to_target(*muon, target)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m muonlib.experiments", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    go = sub.add_parser("run", help="run an experiment (skips finished runs, resumes interrupted ones)")
    go.add_argument("name", choices=sorted(EXPERIMENTS))
    go.add_argument("--preset", choices=PRESETS, help="hardware preset (default: detected)")
    go.add_argument("--results", type=Path, help="result folder (default: data/results/NAME)")
    sub.add_parser("list", help="the named experiments")
    args = parser.parse_args(argv)
    if args.command == "run":
        chosen = run(args.name, args.preset, args.results)
        print("chosen learning rates:", json.dumps(chosen))
    else:
        for name, experiment in EXPERIMENTS.items():
            print(f"{name}: {experiment.description}")


__all__ = ["EXPERIMENTS", "Experiment", "count_loss_spikes", "load_results", "run", "token_consumption_ratio", "tokens_to_target"]


if __name__ == "__main__":
    main()
