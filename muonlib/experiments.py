"""Named experiments: the runs they want, run over every GPU of a machine, and their results.

``python -m muonlib.experiments run NAME`` runs an experiment's plan on every visible GPU
(``--gpus N``, ``--per-gpu K`` runs sharing each GPU; on a CPU ``--workers N``). Each run's
metrics go to ``data/results/NAME/RUN.jsonl.gz`` (a provenance header, step records, a
``final`` record; compacted and gzipped, since experiments hold hundreds of runs);
checkpoints and logs go to ``data/cache/runs/NAME/`` and are not committed. A run whose result file exists is skipped; an interrupted one resumes from its
checkpoint. ``pack NAME`` puts an experiment's results into one archive and ``unpack FILE``
puts them back, for machines that return a few files, not hundreds.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import json
import math
import re
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from .analysis import SWEEP_FACTOR, choose_warmup, compare, loss_or_inf, sweep_rates, tune_setting
from .data import data_root, ensure_prepared, gpt2_tokenizer
from .hardware import HOPPER, PRESETS, detect_hardware
from .runner import Job, Report, run_queue, slots, terminate_as_interrupt, worker_signals
from .train import TrainConfig, TrainingDiverged, TrainingStopped, train

Finals = Mapping[str, dict]  # run id -> the final record of a finished run


# ---------------------------------------------------------------- runs and their files


def config_hash(config: TrainConfig) -> str:
    """Eight hex digits of everything in a configuration but its seed: the seeds of one
    setting share it, any other change gives a new one."""
    settings = {k: v for k, v in config.to_dict().items() if k != "seed"}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def run_id(config: TrainConfig, hardware: str) -> str:
    return (f"{hardware}-{config.model}-{config.variant}-{config.optimizer}-{config.steps}steps-lr{config.lr:g}"
            f"-{config_hash(config)}-seed{config.seed}")


RESULT = ".jsonl.gz"
DERIVED = ("tokens", "flops", "tokens_per_s")  # step * tokens_per_step, step * flops_per_step, from seconds


def result_path(results: Path, run: str) -> Path:
    return results / f"{run}{RESULT}"


def read_lines(path: Path) -> list[dict]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_run(path: Path) -> tuple[dict, list[dict], dict | None]:
    """Header, step records and the final record (``None`` while unfinished) of a result file."""
    lines = read_lines(path)
    if not lines or "provenance" not in lines[0]:
        raise ValueError(f"{path} is not a result file (no provenance header): delete it and rerun")
    header, records = lines[0], lines[1:]
    final = records[-1] if records and "final" in records[-1] else None
    return header, [r for r in records if "final" not in r], final


def compact(lines: list[dict]) -> bytes:
    """A run's metrics as a result file: numbers to 7 significant digits (losses are float32,
    so nothing real is lost), the per-step fields that other fields give dropped, gzipped.
    A run's header gains ``tokens_per_step`` and ``flops_per_step`` if it lacks them."""
    def rounded(value):
        return float(f"{value:.7g}") if isinstance(value, float) else value

    header, records = dict(lines[0]), lines[1:]
    first = next((r for r in records if "tokens" in r), None)
    if first is not None:
        header.setdefault("tokens_per_step", first["tokens"] // first["step"])
        header.setdefault("flops_per_step", first["flops"] // first["step"])
    records = [{k: rounded(v) for k, v in r.items() if k not in DERIVED} for r in records]
    text = "".join(json.dumps(line) + "\n" for line in [header, *records])
    return gzip.compress(text.encode(), mtime=0)


def ran_on(path: Path) -> str:
    """The hardware preset a result file's run ran on: the first part of its name."""
    return path.name.split("-", 1)[0]


def plan_name(path: Path, as_hardware: str | None = None) -> str:
    """The run id a result file answers to. A file is named by the GPU its run ran on; the
    original protocol's runs ran on H100s and H200s, and its plans (the same on both Hopper
    kinds) read either: with ``as_hardware`` a Hopper preset, a Hopper file answers to that
    preset's id (the runs keep their GPU in ``hardware``/``gpu``, and the chapters show it)."""
    run = path.name.removesuffix(RESULT)
    return f"{as_hardware}-{run.split('-', 1)[1]}" if as_hardware in HOPPER and ran_on(path) in HOPPER else run


def result_files(folders: list[Path], as_hardware: str | None = None) -> dict[str, Path]:
    """Every result file in ``folders`` by the run id it answers to (:func:`plan_name`), the
    first folder's where several hold one."""
    return {plan_name(path, as_hardware): path for folder in reversed(folders) if folder.exists()
            for path in sorted(folder.glob(f"*{RESULT}"))}


def read_finals(results: Path, as_hardware: str | None = None) -> dict[str, dict]:
    """The final record of every finished run in a result folder, by run id (:func:`plan_name`)."""
    finals = {}
    for path in sorted(results.glob(f"*{RESULT}")):
        final = read_run(path)[2]
        if final is not None:
            finals[plan_name(path, as_hardware)] = final
    return finals


def run_one(config: TrainConfig, hardware: str, results: Path, checkpoints: Path, progress: bool = False,
            should_stop: Callable[[], bool] | None = None, probes: bool = False) -> dict:
    """One run, skipped when its result exists; returns its final record. A diverged run is a
    result too (its final record says ``diverged``): a sweep's highest rates may diverge.
    With ``probes`` the trained model's :func:`muonlib.probes.probe` joins the final record."""
    target = result_path(results, run_id(config, hardware))
    if target.exists() and (final := read_run(target)[2]) is not None:
        return final
    run_dir = checkpoints / run_id(config, hardware)
    try:
        train(config, run_dir, progress=progress, should_stop=should_stop)
    except TrainingDiverged as err:
        print(err, file=sys.stderr)
    lines = read_lines(run_dir / "metrics.jsonl")
    if probes and not lines[-1].get("diverged"):
        lines[-1] = {**lines[-1], **probe_checkpoint(config, run_dir / "checkpoint.pt")}
    results.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(compact(lines))
    tmp.replace(target)
    (run_dir / "checkpoint.pt").unlink(missing_ok=True)  # the result is kept; the weights are not needed
    return read_run(target)[2]


def probe_checkpoint(config: TrainConfig, checkpoint: Path) -> dict:
    """:func:`muonlib.probes.probe` of the model a run saved last, on its corpus's validation split."""
    import torch

    from .data import load_tokens
    from .models import GPT
    from .probes import probe
    from .train import Checkpoint

    model = GPT(config.model_config())
    model.load_state_dict(Checkpoint(checkpoint).read()["model"])
    if torch.cuda.is_available():
        model = model.cuda()
    return probe(model, load_tokens(config.corpus, "val"))


# ---------------------------------------------------------------- the protocol

#: the paper's warm-up as a fraction of the steps, the top of the range section 4.2 gives (QUOTES["recipe"])
PAPER_WARMUP = 0.02
#: the paper's Muon momentum, an EMA with section 4.2's beta and no Nesterov (Algorithm 1)
PAPER_MUON = {"momentum": 0.9, "nesterov": False}

#: how a comparison sets what its rate sweeps hold fixed, the warm-up and Muon's momentum
PROTOCOLS = {
    "original": "the book's first runs: one warm-up for both optimizers, searched at the first budget "
                "(it chose 45% of the steps, the longest it allowed); Muon's momentum 0.95 with Nesterov",
    "paper": f"the paper's recipe (section 4): a {PAPER_WARMUP:.0%} linear warm-up; Muon's momentum an EMA with beta "
             f"{PAPER_MUON['momentum']}, no Nesterov",
    "tuned": "each optimizer's warm-up, and Muon's momentum and Nesterov, chosen by sweeps at the first budget "
             "(two seeds, optimum inside the grid; a value within the seed spread of the best gives way to the paper's)",
}
#: the tuned protocol's first grids: warm-up fractions; Muon's 1 - beta (0.8, 0.9, 0.95, 0.98)
TUNE_WARMUPS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
TUNE_MOMENTUM_GAPS = (0.02, 0.05, 0.1, 0.2)
TUNE_SEEDS = (0, 1)


def check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")


#: the GPU kind each protocol's runs are made on and read from, one kind per comparison so that
#: compared arms never differ by the machine (the original protocol's plans read both Hopper
#: kinds); the paper's and the tuned protocol's first runs were an H200's
PROTOCOL_HARDWARE = {"original": "h100", "paper": "h200", "tuned": "h200"}
#: experiments whose paper and tuned runs are an H100's instead, since H200s are seldom lent and
#: they share no run with another experiment: the batch sizes read no other's results, and none
#: reads theirs; the ablations take only the settings and rates the XS comparison chose on an
#: H200, and train its chosen runs again beside their arms (:class:`Ablations` ``chosen_on``)
ON_H100 = ("batch_sizes", "ablations")


def protocol_hardware(name: str) -> dict[str, str]:
    """The GPU kind an experiment's runs are made on, and read from, under each protocol."""
    experiment(name)
    return {p: "h100" if name in ON_H100 and p != "original" else kind for p, kind in PROTOCOL_HARDWARE.items()}


@dataclass(frozen=True)
class Decisions:
    """What a comparison has settled so far (``None`` or absent while the runs that decide it are missing)."""

    warmup: float | None = None  # the fraction both optimizers share (protocols "original" and "paper")
    warmups: dict[str, float] = dataclasses.field(default_factory=dict)  # optimizer -> its warm-up fraction
    muon_options: dict | None = None  # Muon's momentum settings (optimizer_options)
    warmup_losses: dict[str, dict[float, float | None]] = dataclasses.field(default_factory=dict)  # optimizer -> warm-up -> its best loss
    rates: dict[tuple[int, str], float] = dataclasses.field(default_factory=dict)  # (steps, optimizer) -> chosen peak rate
    swept: dict[tuple[int, str], list[float]] = dataclasses.field(default_factory=dict)  # (steps, optimizer) -> rates run
    warmup_at_longest: dict[str, dict[float, float | None]] = dataclasses.field(default_factory=dict)  # optimizer -> fraction -> loss
    pilot_rates: dict[str, float] = dataclasses.field(default_factory=dict)  # "tuned": the rates its tuning ran at
    tuning: dict[str, dict[float, list[float | None]]] = dataclasses.field(default_factory=dict)  # "tuned": sweep -> value -> loss per seed


@dataclass(frozen=True)
class Comparison:
    """Muon against AdamW, fairly, at several budgets of one setting.

    1. *The settings the sweeps hold fixed*, by ``protocol`` (:data:`PROTOCOLS`):
       ``"paper"`` takes the paper's; ``"tuned"`` first sweeps each optimizer's rate at the
       first budget under the paper's settings (the paper protocol's runs), then at that rate
       each optimizer's warm-up fraction, then Muon's momentum and whether Nesterov helps
       (:func:`muonlib.analysis.tune_setting`, two seeds); ``"original"`` checks both
       optimizers at a few rates and warm-up fractions at the first budget (Muon's AdamW part
       at ``warmup_adamw_lr``) and shares the fraction that holds back neither optimizer much
       (:func:`muonlib.analysis.choose_warmup`).
    2. *Rates*: for every budget, AdamW sweeps its peak rate on a factor-2 grid, extended
       until the optimum (lowest validation loss at seed 0) lies strictly inside; then Muon
       does the same, its AdamW part (embeddings, head, norms) at AdamW's chosen rate.
    3. *Seeds*: each optimizer repeats its chosen rate at the other seeds.
    4. *Warm-up, confirmed* (not under ``"paper"``, which fixes it): at the longest budget each
       optimizer's chosen rate also runs at the warm-up fractions beside its own, to show
       whether the choice made at the first budget still suits it.

    Rates are chosen on the validation split; the chapters report the test split.
    """

    base: TrainConfig
    budgets: tuple[int, ...]  # steps; the schedule is the same shape at every budget
    warmups: tuple[float, ...]  # fractions of the steps ("original")
    warmup_rates: dict[str, tuple[float, ...]]  # optimizer -> the rates the warm-up is checked at ("original")
    warmup_adamw_lr: float  # the AdamW part of Muon's warm-up checks ("original")
    grids: dict[str, tuple[float, ...]]  # optimizer -> the first grid of its sweeps
    seeds: tuple[int, ...] = (0, 1, 2)
    evaluations: int = 25  # per run, evenly spaced
    protocol: str = "original"

    def config(self, optimizer: str, steps: int, warmup: float, lr: float, seed: int = 0, adamw_lr: float | None = None,
               muon_options: dict | None = None) -> TrainConfig:
        base = self.base
        if optimizer == "muon" and muon_options:
            base = dataclasses.replace(base, optimizer_options={**base.optimizer_options, **muon_options})
        return run_config(base, optimizer, steps, warmup, lr, seed, adamw_lr, self.evaluations)

    def plan(self, hardware: str, finals: Finals) -> tuple[list[TrainConfig], Decisions]:
        """Every run wanted given the finished ones, and what they decide."""
        def result(config):  # the selection loss; absent while unfinished, None if diverged
            final = finals.get(run_id(config, hardware))
            return ("missing",) if final is None else (final.get("val_loss"),)

        wanted: list[TrainConfig] = []
        settle = {"original": self.settle_original, "paper": self.settle_paper, "tuned": self.settle_tuned}[self.protocol]
        decisions = settle(result, wanted)
        if decisions.muon_options is None:
            return self.unique(wanted, hardware), decisions

        for steps in self.budgets:
            adamw_lr = None
            for opt in ("adamw", "muon"):
                warmup = decisions.warmups[opt]
                make = lambda lr, opt=opt, adamw_lr=adamw_lr, warmup=warmup: self.config(
                    opt, steps, warmup, lr, adamw_lr=adamw_lr, muon_options=decisions.muon_options)
                rates, chosen = self.sweep(make, self.grids[opt], result)
                decisions.swept[steps, opt] = rates
                wanted += [make(lr) for lr in rates]
                if chosen is None:
                    break  # Muon's sweep needs AdamW's rate; the seeds need the chosen rate
                decisions.rates[steps, opt] = chosen
                wanted += [dataclasses.replace(make(chosen), seed=s) for s in self.seeds]
                if steps == self.budgets[-1] and self.protocol != "paper":  # does the warm-up still suit the longest budget?
                    confirm = {w: dataclasses.replace(make(chosen), warmup=w) for w in self.confirmed_warmups(decisions, opt)}
                    wanted += confirm.values()
                    decisions.warmup_at_longest[opt] = {w: r[0] for w, c in confirm.items() if (r := result(c)) != ("missing",)}
                adamw_lr = chosen
        return self.unique(wanted, hardware), decisions

    def confirmed_warmups(self, decisions: Decisions, optimizer: str) -> list[float]:
        if self.protocol == "original":
            return list(decisions.warmup_losses[optimizer])
        grid = sorted(decisions.tuning[f"warmup {optimizer}"])
        i = grid.index(decisions.warmups[optimizer])
        return grid[max(0, i - 1):i + 2]

    def settle_original(self, result, wanted: list[TrainConfig]) -> Decisions:
        first, fractions = self.budgets[0], list(self.warmups)
        while True:  # the warm-up check, extended while its longest fraction is chosen
            checks = {(opt, w, lr): self.config(opt, first, w, lr, adamw_lr=self.warmup_adamw_lr if opt == "muon" else None)
                      for opt, rates in self.warmup_rates.items() for w in fractions for lr in rates}
            wanted += checks.values()
            if any(result(c) == ("missing",) for c in checks.values()):
                return Decisions()
            losses = {opt: {w: min((result(checks[opt, w, lr])[0] for lr in rates), key=loss_or_inf) for w in fractions}
                      for opt, rates in self.warmup_rates.items()}
            fractions, warmup = choose_warmup(self.warmups, losses)
            if warmup is not None:
                return Decisions(warmup=warmup, warmups={"adamw": warmup, "muon": warmup}, muon_options={}, warmup_losses=losses)

    @staticmethod
    def settle_paper(result, wanted: list[TrainConfig]) -> Decisions:
        return Decisions(warmup=PAPER_WARMUP, warmups={"adamw": PAPER_WARMUP, "muon": PAPER_WARMUP}, muon_options=dict(PAPER_MUON))

    def settle_tuned(self, result, wanted: list[TrainConfig]) -> Decisions:
        first, decisions = self.budgets[0], Decisions()

        def tune(name: str, grid, make, paper: float, upper: float = math.inf) -> float | None:
            values = list(grid)
            while True:
                runs = {v: [make(v, s) for s in TUNE_SEEDS] for v in values}
                wanted.extend(c for cs in runs.values() for c in cs)
                losses = {v: [r[0] for r in map(result, cs)] for v, cs in runs.items()
                          if all(result(c) != ("missing",) for c in cs)}
                decisions.tuning[name] = losses
                values, chosen = tune_setting(grid, losses, paper, upper)
                if chosen is not None or any(v not in losses for v in runs):
                    return chosen

        adamw_lr = None
        for opt in ("adamw", "muon"):  # the pilot: the paper protocol's first sweep
            make = lambda lr, opt=opt, adamw_lr=adamw_lr: self.config(opt, first, PAPER_WARMUP, lr, adamw_lr=adamw_lr,
                                                                      muon_options=PAPER_MUON)
            rates, pilot = self.sweep(make, self.grids[opt], result)
            wanted += [make(lr) for lr in rates]
            if pilot is None:
                return decisions
            decisions.pilot_rates[opt] = adamw_lr = pilot
        pilot_config = lambda opt, **changes: dataclasses.replace(self.config(
            opt, first, PAPER_WARMUP, decisions.pilot_rates[opt], adamw_lr=decisions.pilot_rates["adamw"] if opt == "muon" else None,
            muon_options=PAPER_MUON), **changes)
        for opt in ("adamw", "muon"):
            warmup = tune(f"warmup {opt}", TUNE_WARMUPS, lambda w, s, opt=opt: pilot_config(opt, warmup=w, seed=s),
                          PAPER_WARMUP, upper=0.5)
            if warmup is None:
                return decisions
            decisions.warmups[opt] = warmup

        def with_momentum(gap: float, seed: int, nesterov: bool = False) -> TrainConfig:
            options = {**self.base.optimizer_options, "momentum": round(1 - gap, 6), "nesterov": nesterov}
            return pilot_config("muon", warmup=decisions.warmups["muon"], seed=seed, optimizer_options=options)

        gap = tune("momentum", TUNE_MOMENTUM_GAPS, with_momentum, 1 - PAPER_MUON["momentum"], upper=0.8)
        if gap is None:
            return decisions
        nesterov = {flag: [with_momentum(gap, s, flag) for s in TUNE_SEEDS] for flag in (False, True)}
        wanted += nesterov[True]
        losses = {flag: [result(c) for c in cs] for flag, cs in nesterov.items()}
        if any(r == ("missing",) for rs in losses.values() for r in rs):
            return decisions
        decisions.tuning["nesterov"] = {float(flag): [r[0] for r in rs] for flag, rs in losses.items()}
        better = compare(*([loss_or_inf(r[0]) for r in losses[flag]] for flag in (True, False))) < 0  # beyond the seed spread
        return dataclasses.replace(decisions, muon_options={"momentum": round(1 - gap, 6), "nesterov": better})

    @staticmethod
    def unique(configs: list[TrainConfig], hardware: str) -> list[TrainConfig]:
        return list({run_id(c, hardware): c for c in configs}.values())

    @staticmethod
    def sweep(make: Callable[[float], TrainConfig], grid: tuple[float, ...], result) -> tuple[list[float], float | None]:
        rates = set(grid)
        while True:
            known = {lr: r[0] for lr in rates if (r := result(make(lr))) != ("missing",)}
            if len(known) < len(rates):
                return sorted(rates), None
            needed, chosen = sweep_rates(grid, known)
            if chosen is not None:
                return needed, chosen
            rates = set(needed)


@dataclass(frozen=True)
class ScalingDecisions:
    """What a scaling experiment has settled so far, by ``(setting, optimizer)``."""

    rates: dict[tuple[str, str], float] = dataclasses.field(default_factory=dict)  # the chosen peak rate
    swept: dict[tuple[str, str], list[float]] = dataclasses.field(default_factory=dict)  # the rates run


@dataclass(frozen=True)
class Scaling:
    """Muon against AdamW over a ladder of settings (model sizes, batch sizes) on the same data
    and schedule, each optimizer at its own rate in every setting.

    1. *The first setting* sweeps each optimizer's peak rate on the whole of ``grids`` (as
       :class:`Comparison` does, Muon's AdamW part at AdamW's chosen rate).
    2. *Every other setting* starts from a narrow grid, the first setting's optimum and its two
       factor-2 neighbours, extended while the optimum sits at an edge: the paper's
       telescoping search (section 5.4) narrowed around the rate it would transfer. The
       settings do not wait for each other, so they run side by side.
    3. *The wide setting* also sweeps the whole of ``grids``: if rates transfer, its optimum stays.
    4. *Seeds* at every chosen rate, and in the ``decay_settings`` the chosen rate again at
       each of ``decays`` (weight decay beside ``base``'s), every seed.
    5. *Borrowed* settings sweep nothing: they run every seed at the rates another setting
       chose (variants of one model that change something the rate should not care about).

    The warm-up is a fixed fraction of each run's steps, per optimizer, and Muon's momentum
    is fixed too: what a :class:`Comparison` chose at the first size under the same protocol.
    """

    base: TrainConfig  # the first setting
    settings: dict[str, dict]  # setting -> the changes to ``base`` that make it (the first: none)
    warmups: dict[str, float]  # optimizer -> its warm-up fraction
    grids: dict[str, tuple[float, ...]]  # optimizer -> the first setting's grid
    wide: str
    decays: tuple[float, ...] = ()
    decay_settings: tuple[str, ...] = ()
    borrowed: dict[str, str] = dataclasses.field(default_factory=dict)  # setting -> the setting whose rates it runs at
    narrowed_from: dict[str, str] = dataclasses.field(default_factory=dict)  # setting -> the one its narrow grid centres on (else the first)
    muon_options: dict = dataclasses.field(default_factory=dict)  # Muon's momentum settings (optimizer_options)
    seeds: tuple[int, ...] = (0, 1, 2)
    evaluations: int = 25

    def config(self, setting: str, optimizer: str, lr: float, seed: int = 0, adamw_lr: float | None = None,
               weight_decay: float | None = None) -> TrainConfig:
        base = dataclasses.replace(self.base, **self.settings[setting])
        if weight_decay is not None:
            base = dataclasses.replace(base, weight_decay=weight_decay)
        if optimizer == "muon" and self.muon_options:
            base = dataclasses.replace(base, optimizer_options={**base.optimizer_options, **self.muon_options})
        return run_config(base, optimizer, base.steps, self.warmups[optimizer], lr, seed, adamw_lr, self.evaluations)

    def setting_of(self, config: TrainConfig) -> str:
        """Which of ``settings`` a run belongs to."""
        def key(c):
            return c.model, c.variant, c.model_changes, c.batch_size, c.grad_accum, c.steps
        for setting, changes in self.settings.items():
            if key(dataclasses.replace(self.base, **changes)) == key(config):
                return setting
        raise KeyError(f"{key(config)} is none of the settings {list(self.settings)}")

    def plan(self, hardware: str, finals: Finals) -> tuple[list[TrainConfig], ScalingDecisions]:
        """Every run wanted given the finished ones, and what they decide."""
        def result(config):
            final = finals.get(run_id(config, hardware))
            return ("missing",) if final is None else (final.get("val_loss"),)

        wanted, decisions = [], ScalingDecisions()
        first = next(iter(self.settings))
        followers = {**self.borrowed, **self.narrowed_from}
        for setting in sorted(self.settings, key=lambda s: s in followers):  # after the settings they follow
            adamw_lr = None
            for opt in ("adamw", "muon"):
                if setting in self.borrowed:
                    if (lender := (self.borrowed[setting], opt)) not in decisions.rates:
                        break
                    chosen = decisions.rates[setting, opt] = decisions.rates[lender]
                    decisions.swept[setting, opt] = [chosen]
                    wanted += [self.config(setting, opt, chosen, s, adamw_lr) for s in self.seeds]
                    adamw_lr = chosen
                    continue
                if setting == first or setting == self.wide:
                    grid = self.grids[opt]
                elif ((centre := self.narrowed_from.get(setting, first)), opt) in decisions.rates:
                    center = decisions.rates[centre, opt]
                    grid = (center / SWEEP_FACTOR, center, center * SWEEP_FACTOR)
                else:
                    break  # waits for the first setting's optimum
                make = lambda lr, setting=setting, opt=opt, adamw_lr=adamw_lr: self.config(setting, opt, lr, adamw_lr=adamw_lr)
                rates, chosen = Comparison.sweep(make, grid, result)
                decisions.swept[setting, opt] = rates
                wanted += [make(lr) for lr in rates]
                if chosen is None:
                    break
                decisions.rates[setting, opt] = chosen
                wanted += [dataclasses.replace(make(chosen), seed=s) for s in self.seeds]
                if setting in self.decay_settings:
                    wanted += [self.config(setting, opt, chosen, s, adamw_lr, weight_decay=wd) for wd in self.decays for s in self.seeds]
                adamw_lr = chosen
        return Comparison.unique(wanted, hardware), decisions


@dataclass(frozen=True)
class Ablations:
    """Table 2: Muon at one budget of a :class:`Comparison`, at the rates it chose, against
    arms that each change one thing (an optimizer option, the weight decay), every seed.

    The comparison's own runs are the baseline (and AdamW's row); an arm keeps Muon's
    chosen rate, so an arm that changes what the rate means (the RMS rules) is judged at a
    rate tuned for another rule, as the paper's one-column table implies. With ``chosen_on``
    another GPU kind, the comparison there (experiment ``source``, finished) chose the
    settings and rates, and its chosen runs are trained again on this one beside the arms,
    so that the arms and what they are compared with come from one kind.
    """

    comparison: Comparison
    steps: int  # the comparison's budget the ablation runs at
    arms: dict[str, dict]  # arm -> changes to Muon's run: optimizer_options (added to the run's), weight_decay
    seeds: tuple[int, ...] = (0, 1, 2)
    chosen_on: str | None = None  # the GPU kind whose comparison chose the rates, where not the one the arms run on
    source: str = "xs_muon_vs_adamw"  # the comparison's experiment, read on chosen_on

    def plan(self, hardware: str, finals: Finals) -> tuple[list[TrainConfig], Decisions]:
        """The comparison's wanted runs until it has chosen Muon's rate at ``steps``, then every
        arm; with the rates chosen on another kind, its chosen runs trained again too."""
        elsewhere = self.chosen_on not in (None, hardware)
        if elsewhere:
            wanted, chosen = [], decisions(self.source, self.chosen_on, protocol=self.comparison.protocol)
            if (self.steps, "muon") not in chosen.rates:
                raise ValueError(f"the ablations take their rates from {self.source} on {self.chosen_on!r}, which has not chosen "
                                 f"Muon's rate at {self.steps} steps: run `python -m muonlib.experiments run {self.source} "
                                 f"--protocol {self.comparison.protocol}` on that kind first")
        else:
            wanted, chosen = self.comparison.plan(hardware, finals)
            if (self.steps, "muon") not in chosen.rates:
                return wanted, chosen
        baseline = self.baseline(chosen)
        if elsewhere:
            wanted += [dataclasses.replace(c, seed=s) for c in (baseline, self.adamw(chosen)) for s in self.seeds]
        wanted += [dataclasses.replace(self.arm_config(baseline, arm), seed=s) for arm in self.arms for s in self.seeds]
        return Comparison.unique(wanted, hardware), chosen

    def baseline(self, decisions: Decisions) -> TrainConfig:
        """Muon's run at the chosen rates, seed 0."""
        return self.comparison.config("muon", self.steps, decisions.warmups["muon"], decisions.rates[self.steps, "muon"],
                                      adamw_lr=decisions.rates[self.steps, "adamw"], muon_options=decisions.muon_options)

    def adamw(self, decisions: Decisions) -> TrainConfig:
        """AdamW's run at its chosen rate, seed 0: Table 2's AdamW row."""
        return self.comparison.config("adamw", self.steps, decisions.warmups["adamw"], decisions.rates[self.steps, "adamw"])

    def arm_config(self, baseline: TrainConfig, arm: str) -> TrainConfig:
        changes = dict(self.arms[arm])
        options = {**baseline.optimizer_options, **changes.pop("optimizer_options", {})}
        return dataclasses.replace(baseline, optimizer_options=options, **changes)

    def arm_of(self, config: TrainConfig, baseline: TrainConfig) -> str | None:
        """Which arm a run is (``None``: the baseline itself, or no arm)."""
        for arm in self.arms:
            if dataclasses.replace(self.arm_config(baseline, arm), seed=config.seed) == config:
                return arm
        return None


@dataclass(frozen=True)
class Retrain:
    """Seeds of another experiment's chosen runs trained again, for what its results do not
    keep (an :class:`Experiment` with ``probes`` measures each from its last checkpoint): at
    each of ``settings`` that experiment has decided, AdamW and Muon at their chosen rates,
    the first seed only except for the settings in ``every_seed``."""

    source: str
    settings: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    every_seed: tuple[str, ...] = ()

    def plan(self, hardware: str, finals: Finals) -> tuple[list[TrainConfig], ScalingDecisions]:
        design = experiment(self.source).design(hardware)
        _, decided = design.plan(hardware, finished_runs(result_folders(self.source), hardware))
        wanted = []
        for setting in (s for s in self.settings if s in design.settings):
            adamw, muon = decided.rates.get((setting, "adamw")), decided.rates.get((setting, "muon"))
            seeds = self.seeds if setting in self.every_seed else self.seeds[:1]
            wanted += [design.config(setting, "adamw", adamw, s) for s in seeds] if adamw else []
            wanted += [design.config(setting, "muon", muon, s, adamw) for s in seeds] if adamw and muon else []
        return wanted, decided


@dataclass(frozen=True)
class Copies:
    """Another experiment's chosen runs under one protocol (each configuration it ran at more
    than one seed: a chosen rate), made on one GPU kind, trained again exactly as they were on
    whatever GPU runs this plan. Beside the runs they copy
    (:func:`~muonlib.results.comparison.kind_table`) they show how far the GPU kind moves a
    run's loss, against how far copies on one kind differ."""

    source: str
    protocol: str
    made_on: str  # the GPU kind whose saved runs are copied

    def plan(self, hardware: str, finals: Finals) -> tuple[list[TrainConfig], None]:
        seeds: dict[str, list[TrainConfig]] = {}
        for path in sorted(results_folder(self.source, self.protocol).glob(f"{self.made_on}-*{RESULT}")):
            header, _, final = read_run(path)
            if final is not None:
                config = TrainConfig(**header["provenance"]["config"])
                seeds.setdefault(config_hash(config), []).append(config)
        return [c for configs in seeds.values() if len(configs) > 1 for c in configs], None


def run_config(base: TrainConfig, optimizer: str, steps: int, warmup: float, lr: float, seed: int, adamw_lr: float | None,
               evaluations: int) -> TrainConfig:
    """One run of a plan: ``evaluations`` evenly spaced evaluations, four checkpoints."""
    return dataclasses.replace(base, optimizer=optimizer, steps=steps, warmup=warmup, lr=lr, seed=seed, adamw_lr=adamw_lr,
                               eval_every=max(1, steps // evaluations), checkpoint_every=max(1, steps // 4))


def xs_comparison(hardware: str, protocol: str = "original") -> Comparison:
    """XS with MHA on the offline mixture (Gutenberg, State of the Union, Brown; a T4 or an
    A100, Colab's GPUs, on TinyStories, downloaded) at 400, 1200 and 2400 steps of 16 x 512
    tokens; the warm-up is checked at Table 1's rate for XS (2.5e-3) and beside each
    optimizer's earlier optimum. On a CPU, the tiny model on the
    committed sample at 40 and 80 steps shows the protocol end to end in a few minutes."""
    paper = dict(weight_decay=0.1, grad_clip=1.0, optimizer_options={})
    if hardware == "cpu":
        base = TrainConfig(model="tiny", model_changes={"vocab_size": 50257}, corpus="sample", batch_size=8, eval_tokens=2048, **paper)
        return Comparison(base, budgets=(40, 80), warmups=(0.05, 0.2), warmup_rates={"adamw": (2e-3,), "muon": (8e-3,)},
                          warmup_adamw_lr=2e-3, grids={"adamw": (2e-3, 4e-3, 8e-3), "muon": (4e-3, 8e-3, 1.6e-2)}, evaluations=10,
                          protocol=protocol)
    accum = 2 if hardware == "t4" else 1  # 16 GB: two micro-batches of 8
    corpus = "tinystories" if hardware in ("t4", "a100") else "mix"  # Colab's GPUs, where there is internet; the saved runs' data
    base = TrainConfig(model="XS", corpus=corpus, batch_size=16 // accum, grad_accum=accum, eval_tokens=2**17,
                       compile=hardware != "t4", **paper)
    return Comparison(base, budgets=(400, 1200, 2400), warmups=(0.02, 0.05, 0.1, 0.2),
                      warmup_rates={"adamw": (1.25e-3, 2.5e-3), "muon": (5e-3, 1e-2)}, warmup_adamw_lr=2.5e-3,
                      grids={"adamw": (3.125e-4, 6.25e-4, 1.25e-3, 2.5e-3, 5e-3, 1e-2),
                             "muon": (1.25e-3, 2.5e-3, 5e-3, 1e-2, 2e-2, 4e-2)}, protocol=protocol)


def both(warmup: float) -> dict[str, float]:
    """One warm-up fraction for both optimizers."""
    return {"adamw": warmup, "muon": warmup}


#: the warm-up fraction the XS comparison chose on each preset it has run on (its results
#: decide it; a test checks that these agree), which the scaling experiment keeps at every size
XS_WARMUP = {"h100": 0.45}


#: the sizes the scaling ladder climbs under the paper's and the tuned protocol on a Hopper GPU:
#: L and XL's sweeps under two more protocols exceed what one GPU's sessions allow
PROTOCOL_SIZES = ("XS", "S", "M")


def scaling(hardware: str, protocol: str = "original") -> Scaling:
    """XS to XL with MHA, each at the XS comparison's middle budget (1200 steps of 16 x 512
    tokens on the offline mixture, 1.7 epochs), so that XS is that comparison's runs; L is
    the wide size (Table 1's width grows 256, 512, 512, 768, 1024; L is three times XS's),
    weight decay 0.05 beside 0.1 at XS and L. Under the paper's and the tuned protocol
    (:func:`under_protocol`) the ladder stops at M (:data:`PROTOCOL_SIZES`), the wide size
    there. A T4 or an A100 reruns XS and S; a CPU the tiny model at two widths in a few minutes."""
    xs = xs_comparison(hardware)
    if hardware == "cpu":
        wider = {"model_changes": {"vocab_size": 50257, "d_model": 128, "n_head": 4, "d_ff": 512}}
        plan = Scaling(dataclasses.replace(xs.base, steps=xs.budgets[0]), settings={"tiny": {}, "tiny-wide": wider}, warmups=both(0.2),
                       grids=xs.grids, wide="tiny-wide", decays=(0.05,), decay_settings=("tiny",), evaluations=xs.evaluations)
        return under_protocol(plan, hardware, protocol)
    sizes = ("XS", "S", "M", "L", "XL") if hardware in HOPPER else ("XS", "S")
    if protocol != "original":
        sizes = tuple(s for s in sizes if s in PROTOCOL_SIZES)
    wide = next(s for s in ("L", "M", "S") if s in sizes)
    plan = Scaling(dataclasses.replace(xs.base, steps=1200), settings={size: {} if size == "XS" else {"model": size} for size in sizes},
                   warmups=both(XS_WARMUP.get(hardware, XS_WARMUP["h100"])), grids=xs.grids, wide=wide, decays=(0.05,),
                   decay_settings=("XS", wide), evaluations=xs.evaluations)
    return under_protocol(plan, hardware, protocol)


#: the batch-size experiment's ladder: sequences per step, from 16 (8K tokens) doubling to 512 (256K)
BATCH_SEQUENCES = (16, 32, 64, 128, 256, 512)
#: the most sequences one micro-batch holds on an 80 GB GPU at XS (the logits dominate)
MAX_MICRO_BATCH = 64


def batch_sizes(hardware: str, protocol: str = "original") -> Scaling:
    """XS with MHA at batches of 8K to 256K tokens (16 to 512 sequences of 512), every batch
    on the same 2^24 tokens (2.85 epochs of the offline mixture: 2048 steps at the smallest
    batch, 64 at the largest), each optimizer's rate swept at every batch (narrowed around the
    smallest batch's optimum, the whole grid again at the largest). Under the original protocol
    the warm-up is the XS comparison's fraction of the steps; under the others it and Muon's
    momentum are the protocol's (:func:`under_protocol`). A T4 or an A100 runs the three
    smallest batches; a CPU the tiny model at two."""
    xs = xs_comparison(hardware)
    if hardware == "cpu":
        base = dataclasses.replace(xs.base, steps=40)
        return under_protocol(Scaling(base, settings={"8": {}, "16": {"batch_size": 16, "steps": 20}}, warmups=both(0.2),
                                      grids=xs.grids, wide="16", evaluations=xs.evaluations), hardware, protocol)
    tokens = 2**24
    ladder = BATCH_SEQUENCES if hardware in HOPPER else BATCH_SEQUENCES[:3]
    context = xs.base.model_config().context
    settings = {}
    for sequences in ladder:
        micro = min(sequences, MAX_MICRO_BATCH)
        settings[f"{sequences * context // 1024}K"] = {"batch_size": micro, "grad_accum": sequences // micro,
                                                        "steps": tokens // (sequences * context)}
    base = dataclasses.replace(xs.base, **next(iter(settings.values())))
    return under_protocol(Scaling(base, settings={label: {} if i == 0 else changes for i, (label, changes) in enumerate(settings.items())},
                                  warmups=both(XS_WARMUP.get(hardware, XS_WARMUP["h100"])), grids=xs.grids, wide=list(settings)[-1],
                                  evaluations=xs.evaluations), hardware, protocol)


#: Table 2's rows that change Muon itself, and the variants the issue adds beside them
ABLATION_ARMS = {
    "no orthogonalisation": {"optimizer_options": {"orthogonalize": "frobenius"}},
    "K = 3": {"optimizer_options": {"ns_steps": 3}},
    "K = 10": {"optimizer_options": {"ns_steps": 10}},
    "Taylor coefficients": {"optimizer_options": {"ns_coefficients": "taylor"}},
    "cubic coefficients": {"optimizer_options": {"ns_coefficients": "cubic"}},
    "Polar Express": {"optimizer_options": {"ns_coefficients": "polar_express"}},
    "exact msign (SVD)": {"optimizer_options": {"orthogonalize": "svd"}},
    "no weight decay": {"weight_decay": 0.0},
    "no RMS matching (lr unscaled)": {"optimizer_options": {"adjust_lr": None}},
    "no RMS matching (Keller Jordan's scale)": {"optimizer_options": {"adjust_lr": "original"}},
    "dynamic RMS (per layer)": {"optimizer_options": {"adjust_lr": "dynamic_rms"}},
}


def ablations(hardware: str, protocol: str = "original") -> Ablations:
    """Table 2's rows at XS (the paper uses M; XS is where three seeds of every row fit this
    machine's budget, and where the XS comparison measured the seed spread the rows are
    judged against) at that comparison's 1200-step budget and chosen rates, whose runs are
    the baseline and AdamW's row, under the same protocol (its warm-ups and Muon's momentum).
    The batch-size rows are the batch-size experiment's. A CPU runs the tiny model's arms at 40
    steps. Under the paper's and the tuned protocol on a Hopper GPU, the rates are those the
    comparison chose on the kind that made its runs (:func:`protocol_hardware`), and on the
    other kind its chosen runs are trained again beside the arms."""
    xs = xs_comparison(hardware, protocol)
    chosen_on = protocol_hardware("xs_muon_vs_adamw")[protocol] if hardware in HOPPER and protocol != "original" else None
    return Ablations(xs, steps=xs.budgets[0] if hardware == "cpu" else 1200, arms=ABLATION_ARMS, chosen_on=chosen_on)


#: MoE-MLA experts that give S 42% fewer active non-embedding parameters than dense MHA-S, the
#: companion paper's E4, with one shared and two of 62 routed experts, each 232 = 2048 * 0.11328125
#: wide (a multiple of 8, as the grouped GEMM needs)
SMALL_MOE = {"n_shared_experts": 1, "top_k": 2, "expert_ratio": 0.11328125}
#: the control that isolates RoPE in A2 (MLA-noRoPE swaps RoPE for learned positions; this arm has no positions at all)
NO_POSITIONS = "mla no positions"


def flop_matched_steps(dense: TrainConfig, variant: str) -> int:
    """Steps at which ``variant`` of the dense run's model spends the dense run's training FLOPs."""
    import torch

    from .models import GPT
    from .train import flops_per_token

    with torch.device("meta"):
        flops = {v: flops_per_token(GPT(dataclasses.replace(dense, variant=v).model_config())) for v in (dense.variant, variant)}
    return round(dense.steps * flops[dense.variant] / flops[variant])


def architectures(hardware: str, protocol: str = "original") -> Scaling:
    """Table 3's four architectures at S (the largest size whose sweeps this machine's budget
    allows for every architecture; the paper uses XL) on the scaling experiment's tokens and
    schedule: MHA, MLA and MLA-noRoPE with r = d/2, and MoE-MLA-RoPE as specified; each
    optimizer's rate swept per architecture around MHA's optimum, over the whole grid for
    MoE-MLA, whose expert matrices are unlike any dense one. Three MoE-MLA variants: without
    bias balancing (the companion paper's E7), sized to 42% fewer active non-embedding
    parameters than dense MHA (E4; the specified experts give MoE-MLA more active parameters
    than the dense model, not fewer), and trained on dense MHA's FLOPs, with fewer steps of its
    own schedule (E5).

    Under the original protocol MHA's runs are the scaling experiment's and the variants run at
    MoE-MLA's rates; under the paper's and the tuned protocol (:data:`PROTOCOLS`; the tuned one
    takes the warm-ups and Muon's momentum the XS comparison tuned) every arm is run here, on
    one GPU kind, MHA's rates swept over the whole grid and each variant's around MoE-MLA's,
    and a control joins them: MLA with no positions at all (:data:`NO_POSITIONS`), since
    MLA-noRoPE replaces RoPE by learned positions and so changes two things at once.
    A T4 or an A100 runs MHA and MLA; a CPU the tiny model."""
    sizes = scaling(hardware)
    if hardware == "cpu":
        sizes = dataclasses.replace(sizes, settings={"mha": {}, "mla": {"variant": "mla"}}, wide="mla", decays=(), decay_settings=())
    else:
        base = dataclasses.replace(sizes.base, **sizes.settings["S"])
        variants = ("mha", "mla", "mla-norope", "moe-mla") if hardware in HOPPER else ("mha", "mla")
        settings = {v: {} if v == "mha" else {"variant": v} for v in variants}
        if "moe-mla" in settings:
            settings |= {"moe-mla unbalanced": {"variant": "moe-mla", "model_changes": {"bias_update_rate": 0.0}},
                         "moe-mla small": {"variant": "moe-mla", "model_changes": SMALL_MOE},
                         "moe-mla flop-matched": {"variant": "moe-mla", "steps": flop_matched_steps(base, "moe-mla")}}
        followers = {v: "moe-mla" for v in settings if v.startswith("moe-mla ")}
        sizes = dataclasses.replace(sizes, base=base, settings=settings, wide=variants[-1], decays=(), decay_settings=(),
                                    **{"borrowed" if protocol == "original" else "narrowed_from": followers})
    if protocol == "original":
        return sizes
    if "mla-norope" in sizes.settings:
        sizes = dataclasses.replace(sizes, settings=sizes.settings | {NO_POSITIONS: {"variant": "mla-norope", "model_changes": {"position": "none"}}},
                                    narrowed_from=sizes.narrowed_from | {NO_POSITIONS: "mla-norope"})
    return under_protocol(sizes, hardware, protocol)


def under_protocol(plan: Scaling, hardware: str, protocol: str) -> Scaling:
    """``plan`` with the settings a protocol (:data:`PROTOCOLS`) holds fixed while the rates are
    swept: as the plan has them under the original protocol; the paper's warm-up and Muon's
    momentum under the paper's; under the tuned protocol, each optimizer's warm-up and Muon's
    momentum as the XS comparison tuned them (which must have finished): on a Hopper GPU, the
    tuning the kind that made it saved (:func:`protocol_hardware`), since they are settings every
    Hopper plan shares, not arms it compares; elsewhere this hardware's own, whose plans differ."""
    check_protocol(protocol)
    if protocol == "original":
        return plan
    if protocol == "paper":
        return dataclasses.replace(plan, warmups=both(PAPER_WARMUP), muon_options=dict(PAPER_MUON))
    tuned_on = protocol_hardware("xs_muon_vs_adamw")["tuned"] if hardware in HOPPER else hardware
    tuned = decisions("xs_muon_vs_adamw", tuned_on, protocol="tuned")
    if tuned.muon_options is None or len(tuned.warmups) < 2:
        raise ValueError(f"the tuned protocol takes its warm-ups and Muon's momentum from the XS comparison's tuning on "
                         f"{tuned_on!r}, which is not finished: run `python -m muonlib.experiments run xs_muon_vs_adamw "
                         f"--protocol tuned` first")
    return dataclasses.replace(plan, warmups=dict(tuned.warmups), muon_options=dict(tuned.muon_options))


def attention_probes(hardware: str) -> Retrain:
    """The architectures experiment's MHA, MLA, MLA-noRoPE and MoE-MLA at their chosen rates,
    trained again so that each run measures its model (attention entropy per head,
    continuations of fixed prompts) before its checkpoint is deleted: MHA and MLA, the
    comparison the entropy claim is about, at three seeds; the others at seed 0."""
    return Retrain("architectures", ("mha", "mla", "mla-norope", "moe-mla"), seeds=(0, 1, 2), every_seed=("mha", "mla"))


def hopper_kinds(hardware: str) -> Copies:
    """The XS comparison's chosen runs under the paper's recipe (each budget, both optimizers,
    three seeds), made on the kind that made that protocol's runs (:data:`PROTOCOL_HARDWARE`),
    trained again on this GPU: on the other Hopper kind, whether the kind moves a loss more
    than a copy on one kind does; elsewhere this hardware's own runs, copied."""
    return Copies("xs_muon_vs_adamw", "paper", PROTOCOL_HARDWARE["paper"] if hardware in HOPPER else hardware)


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    design: Callable[..., Comparison | Scaling | Ablations | Retrain | Copies]  # hardware preset[, protocol] -> the plan it runs
    reads: tuple[str, ...] = ()  # experiments whose results count as this one's runs (the same configurations)
    probes: bool = False  # each run measures its trained model (muonlib.probes) into its final record
    protocols: tuple[str, ...] = ("original",)  # the PROTOCOLS it can run under

    def plan_for(self, hardware: str, protocol: str = "original") -> Comparison | Scaling | Ablations | Retrain | Copies:
        check_protocol(protocol)
        if protocol not in self.protocols:
            moved = [e.name for e in EXPERIMENTS.values() if len(e.protocols) > 1]
            raise ValueError(f"{self.name} runs under the protocols {list(self.protocols)}, not {protocol!r}: "
                             f"so far {', '.join(moved)} run under the paper's and the tuned protocol too")
        return self.design(hardware) if protocol == "original" else self.design(hardware, protocol)


EXPERIMENTS = {
    e.name: e for e in (
        Experiment("xs_muon_vs_adamw",
                   "XS MHA: Muon vs AdamW at three budgets, warm-up checked, each optimizer's rate swept per budget, three seeds",
                   xs_comparison, protocols=tuple(PROTOCOLS)),
        Experiment("batch_sizes",
                   "XS MHA at 8K to 256K tokens per step on the same 2^24 tokens: Muon vs AdamW, each rate swept per batch, three seeds",
                   batch_sizes, protocols=tuple(PROTOCOLS)),
        Experiment("ablations",
                   "Table 2 at XS: Muon's Newton-Schulz steps, coefficients, orthogonalisation, weight decay and RMS rules, one at a time, three seeds",
                   ablations, reads=("xs_muon_vs_adamw",), protocols=tuple(PROTOCOLS)),
        Experiment("architectures",
                   "Table 3's MHA, MLA, MLA-noRoPE and MoE-MLA at S: Muon vs AdamW on the scaling experiment's tokens, rates swept per architecture, three seeds",
                   architectures, reads=("scaling",), protocols=tuple(PROTOCOLS)),
        Experiment("attention_probes",
                   "Table 3's architectures at S trained again at their chosen rates (MHA and MLA at three seeds, the others at one), each measured: attention entropy per head, continuations of fixed prompts",
                   attention_probes, probes=True),
        Experiment("scaling",
                   "XS to XL MHA (to M under the paper's and the tuned protocol): Muon vs AdamW on the same tokens, rates swept at XS and transferred (checked by a wide sweep at L, or M), three seeds",
                   scaling, reads=("xs_muon_vs_adamw", "architectures"), protocols=tuple(PROTOCOLS)),
        Experiment("hopper_kinds",
                   f"the XS comparison's chosen runs under the paper's recipe (made on an {PROTOCOL_HARDWARE['paper'].upper()}) trained again "
                   f"as they were on this GPU: how far the GPU kind moves a run's loss",
                   hopper_kinds),
    )
}


def experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise KeyError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def check_preset(hardware: str) -> None:
    import torch

    if hardware not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {hardware!r}")
    if hardware != "cpu" and not torch.cuda.is_available():
        raise RuntimeError(f"preset {hardware!r} sizes runs for a GPU, but no GPU is visible: "
                           f"use --preset cpu, or run where the GPU is")


#: how many times longer, at least, an XS Muon step takes with the exact msign (float64
#: eigendecompositions) than with Newton-Schulz, 0.097 s alone on an H100 against 0.017 s with
#: three runs sharing one, in the saved ablation and XS runs
EXACT_MSIGN_COST = 6


def exact_msign(config: TrainConfig) -> bool:
    """Whether a run orthogonalises exactly. Its eigendecompositions queue on the GPU: six such
    runs sharing an H100 took 0.55 s a step each, no more steps in all than one run alone, so the
    runner starts one per GPU at a time (``Job.serial``) and lets Newton-Schulz runs fill the rest."""
    return config.optimizer == "muon" and config.optimizer_options.get("orthogonalize") == "svd"


def run_work(config: TrainConfig) -> float:
    """A run's cost for ordering the queue: tokens times the hidden matrices' size, more for the
    exact msign's, so that the longest runs start first and none ends a call in flight alone."""
    model = config.model_config()
    return config.steps * config.tokens_per_step() * model.n_layer * model.d_model**2 * (EXACT_MSIGN_COST if exact_msign(config) else 1)


def run_kind(config: TrainConfig) -> str:
    """What decides how long a run takes: the model, the optimizer (and whether it orthogonalises
    exactly), the steps and the batch (not the rate, the seed or the schedule's shape)."""
    return (f"{config.model} {config.variant} {json.dumps(config.model_changes, sort_keys=True)} {config.optimizer}"
            f"{' exact msign' if exact_msign(config) else ''} {config.steps} steps of {config.tokens_per_step()} tokens")


def results_folder(name: str, protocol: str = "original") -> Path:
    """Where an experiment keeps its runs: ``data/results/NAME``, under the other protocols
    ``data/results/PROTOCOL/NAME``."""
    check_protocol(protocol)
    root = data_root() / "results"
    return root / name if protocol == "original" else root / protocol / name


def result_folders(name: str, results: Path | None = None, protocol: str = "original") -> list[Path]:
    """Where an experiment's finished runs are: its own folder (``results``, by default
    :func:`results_folder`), then those of the experiments it reads, beside it; under the
    tuned protocol also the paper protocol's folders of both, whose first sweeps it starts from."""
    own = Path(results) if results is not None else results_folder(name, protocol)
    names = (name, *experiment(name).reads)
    return [own, *(own.parent / other for other in names[1:]),
            *(own.parent.parent / "paper" / other for other in names if protocol == "tuned")]


def finished_runs(folders: list[Path], as_hardware: str | None = None) -> dict[str, dict]:
    """The final record of every finished run in any of ``folders``, by run id (:func:`plan_name`)."""
    return {run: final for folder in reversed(folders) if folder.exists() for run, final in read_finals(folder, as_hardware).items()}


def original_reader(hardware: str, protocol: str) -> str | None:
    """The ``as_hardware`` that reads a protocol's runs: the original protocol's plans read both
    Hopper kinds' runs; the paper's and the tuned protocol's, their own GPU kind's only."""
    return hardware if protocol == "original" else None


@dataclass(frozen=True)
class PlanProgress:
    """How far an experiment's plan under one protocol is on one GPU kind: the runs it wants
    now (a sweep that settles wants more later), the finished runs it reads, and the GPU kinds
    that made those of them it wants."""

    name: str
    protocol: str
    hardware: str
    wanted: list[TrainConfig]
    finals: dict[str, dict]  # every finished run the plan reads, by run id
    made_on: list[str]  # the GPU kinds of its wanted runs that have finished (its own kind before any)

    @property
    def finished(self) -> int:
        return len({run_id(c, self.hardware) for c in self.wanted} & set(self.finals))

    @property
    def missing(self) -> int:
        return len({run_id(c, self.hardware) for c in self.wanted} - set(self.finals))


def plan_progress(name: str, protocol: str = "original", hardware: str | None = None) -> PlanProgress:
    """:class:`PlanProgress` of an experiment's saved runs, read as its chapter reads them: on
    ``hardware``, by default the kind the protocol's runs are made on (:func:`protocol_hardware`)."""
    hardware = hardware or protocol_hardware(name)[protocol]
    folders = [f for f in result_folders(name, None, protocol) if f.exists()]
    finals = finished_runs(folders, original_reader(hardware, protocol))
    wanted, _ = experiment(name).plan_for(hardware, protocol).plan(hardware, finals)
    files = result_files(folders, original_reader(hardware, protocol))
    done = {run_id(c, hardware) for c in wanted} & set(finals)
    made_on = sorted({ran_on(files[run]).upper() for run in done}) or [hardware.upper()]
    return PlanProgress(name, protocol, hardware, wanted, finals, made_on)


#: runs sharing a GPU by default when it trains the CPU preset's tiny plans, as a chapter's
#: smallest rerun on a GPU does, since one tiny run leaves a GPU nearly idle
TINY_RUNS_PER_GPU = 8


def run(names: str | Sequence[str], hardware: str | None = None, results: Path | None = None, gpus: int | None = None,
        per_gpu: int | None = None, workers: int = 1, progress: bool = True, deadline: float | None = None,
        prepare_data: bool = True, protocols: Sequence[str] = ("original",)) -> Report:
    """Run (or finish) one or more experiments under one or more protocols (:data:`PROTOCOLS`)
    in one queue over every visible GPU (``gpus`` of them, ``per_gpu`` runs sharing each: by
    default one, or :data:`TINY_RUNS_PER_GPU` for the CPU preset's plans) or ``workers`` CPU
    processes; returns what happened. One queue keeps every slot busy while one experiment's
    sweep waits for its optimum. New results go to each experiment's own folder; a run that
    several plans want, to the first of their own folders that all of them read (plans that
    would share a run none of the others reads are refused). A run counts as finished for a
    plan only in the folders it reads (its own, and the experiments' it reads). With
    ``prepare_data`` the corpora its runs need are prepared first where they are not."""
    names = [names] if isinstance(names, str) else list(names)
    if results is not None and (len(protocols) != 1 or len(names) != 1):
        raise ValueError("a result folder holds one experiment's runs under one protocol: pass one of each with it")
    if len(names) > 1 and (probing := [name for name in names if experiment(name).probes]):
        raise ValueError(f"{', '.join(probing)} trains again runs the others have finished: run it alone")
    hardware = hardware or detect_hardware().preset
    check_preset(hardware)
    keys = [(name, p) for name in names for p in protocols]
    designs = {key: experiment(key[0]).plan_for(hardware, key[1]) for key in keys}
    folders = {key: result_folders(key[0], results, key[1]) for key in keys}
    # a run counts as finished for a plan only in the folders that plan reads, as its chapter reads them
    finals = {key: finished_runs(folders[key], original_reader(hardware, key[1])) for key in keys}
    if any(experiment(name).probes for name in names):
        gpt2_tokenizer()  # the probes decode text after training: fail now, not after every run has trained
    for corpus in sorted({c.corpus for key, d in designs.items() for c in d.plan(hardware, finals[key])[0]} if prepare_data else ()):
        ensure_prepared(corpus)

    def is_finished(run: str) -> bool:
        for own in {folders[key][0] for key in keys}:  # new results go to own folders only
            readers = [key for key in keys if own in folders[key] and run not in finals[key]]
            if readers and (path := result_path(own, run)).exists() and (final := read_run(path)[2]) is not None:
                for key in readers:
                    finals[key][run] = final
        return any(run in f for f in finals.values())

    def plan() -> list[Job]:
        wanting: dict[str, list[tuple[str, str]]] = {}
        configs: dict[str, TrainConfig] = {}
        for key, design in designs.items():
            for c in design.plan(hardware, finals[key])[0]:
                configs.setdefault(run := run_id(c, hardware), c)
                wanting.setdefault(run, []).append(key)
        jobs = []
        for run, c in configs.items():
            # into the first own folder that every plan wanting the run reads, so that each finds it there
            common = [k for k in wanting[run] if all(folders[k][0] in folders[other] for other in wanting[run])]
            if not common and any(run in finals[k] for k in wanting[run]):
                common = wanting[run]  # finished where some plan reads it: never written again
            elif not common:
                raise ValueError(f"{' and '.join(f'{n} ({p})' for n, p in wanting[run])} all want {run}, but none reads the "
                                 f"others' results: run them one after the other")
            name, _ = common[0]
            root = data_root() / "cache" / "runs"
            checkpoints = next((root / n for n, _ in wanting[run] if (root / n / run).exists()), root / name)  # resume where it began
            jobs.append(Job(run, c.steps, ("muonlib.experiments", "worker", "--hardware", hardware, "--results", str(folders[common[0]][0]),
                                           "--checkpoints", str(checkpoints), "--config", json.dumps(c.to_dict()),
                                           *(("--probes",) if experiment(name).probes else ())),
                            checkpoints / run / "log.txt", checkpoints / run / "metrics.jsonl", work=run_work(c), kind=run_kind(c), serial=exact_msign(c)))
        return jobs

    environments = slots(gpus, per_gpu or (TINY_RUNS_PER_GPU if hardware == "cpu" else 1), workers)
    return run_queue(plan, is_finished, environments, progress=progress, deadline=deadline, description="+".join(names))


def decisions(name: str, hardware: str, results: Path | None = None, protocol: str = "original") -> Decisions | ScalingDecisions:
    """What an experiment's saved results have decided (warm-up, chosen rates)."""
    finals = finished_runs(result_folders(name, results, protocol), original_reader(hardware, protocol))
    return experiment(name).plan_for(hardware, protocol).plan(hardware, finals)[1]


# ---------------------------------------------------------------- moving results between machines

RESULT_NAME = re.compile(r"(\w+/)?\w[\w.-]*/\w[\w.+-]*\.jsonl\.gz", re.ASCII)  # [PROTOCOL/]NAME/RUN.jsonl.gz, no dot-led parts


def pack(name: str, archive: Path, results: Path | None = None, protocol: str = "original") -> int:
    """Every finished result of an experiment in one tar archive; returns how many."""
    results = Path(results) if results is not None else results_folder(name, protocol)
    prefix = name if protocol == "original" else f"{protocol}/{name}"
    finished = sorted(results.glob(f"*{RESULT}")) if results.exists() else []
    if not finished:
        raise FileNotFoundError(f"no results in {results} to pack: run the experiment first")
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w") as tar:  # the files are gzipped already
        for path in finished:
            tar.add(path, arcname=f"{prefix}/{path.name}")
    return len(finished)


def unpack(archive: Path, root: Path | None = None, overwrite: bool = False) -> dict[str, list[str]]:
    """Put packed results into ``<data>/results/``. Only finished result files are taken; a
    file that differs from one already there is left alone unless ``overwrite``."""
    root = Path(root) if root is not None else data_root() / "results"
    outcome: dict[str, list[str]] = {"added": [], "unchanged": [], "conflicting": [], "replaced": []}
    contents: dict[str, bytes] = {}
    with tarfile.open(archive) as tar:  # every member is checked before any is written
        for member in tar.getmembers():
            if not (member.isfile() and RESULT_NAME.fullmatch(member.name)):
                raise ValueError(f"{archive} holds {member.name!r}, which is not an experiment's result file: "
                                 f"only archives made by `python -m muonlib.experiments pack` can be unpacked")
            content = tar.extractfile(member).read()
            lines = [json.loads(line) for line in gzip.decompress(content).decode().splitlines() if line.strip()]
            if not lines or "provenance" not in lines[0] or "final" not in lines[-1]:
                raise ValueError(f"{member.name} in {archive} is not a finished result (no provenance header or final record)")
            contents[member.name] = content
    for name, content in contents.items():
        target = root / name
        if target.exists():
            if target.read_bytes() == content:
                outcome["unchanged"].append(name)
                continue
            if not overwrite:
                outcome["conflicting"].append(name)
                continue
        outcome["replaced" if target.exists() else "added"].append(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(content)
        tmp.replace(target)
    return outcome


# ---------------------------------------------------------------- reading results


def load_results(folder: str | Path, as_hardware: str | None = None):
    """Every finished run in ``folder`` as one tidy ``pandas.DataFrame``: a row per step record
    (the step's learning rate as ``scheduled_lr``), with the run's ``run`` (the id it answers
    to, :func:`plan_name`), ``hardware`` (the preset of the GPU it ran on, from its file's
    name), ``gpu``, ``diverged`` and its configuration's settings (``optimizer``, ``lr``,
    ``seed``, ``steps``, ``warmup``, ...; ``optimizer_options`` and ``model_changes`` as JSON
    text)."""
    import pandas as pd

    frames = []
    for path in sorted(Path(folder).glob(f"*{RESULT}")):
        header, records, final = read_run(path)
        if final is None:
            continue
        config = header["provenance"]["config"]
        frame = pd.DataFrame(records).rename(columns={"lr": "scheduled_lr"})  # "lr" is the run's peak rate
        frame["tokens"] = frame.step * header["tokens_per_step"]
        frame["flops"] = frame.step * header["flops_per_step"]
        frame.insert(0, "run", plan_name(path, as_hardware))
        for key, value in config.items():
            if key not in frame:
                frame[key] = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
        frame["hardware"] = ran_on(path)
        frame["gpu"] = header["provenance"]["gpu"] or "CPU"
        frame["diverged"] = bool(final.get("diverged"))
        frames.append(frame)
    if not frames:
        raise FileNotFoundError(f"no finished runs in {folder}: run `python -m muonlib.experiments run ...` first")
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m muonlib.experiments", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    go = sub.add_parser("run", help="run experiments in one queue (skips finished runs, resumes interrupted ones)")
    go.add_argument("name", choices=sorted(EXPERIMENTS), nargs="+")
    go.add_argument("--preset", choices=PRESETS, help="hardware preset (default: detected)")
    go.add_argument("--results", type=Path, help="result folder of one experiment under one protocol (default: data/results/[PROTOCOL/]NAME)")
    go.add_argument("--gpus", default="all", help="'all' (default) or how many GPUs to use")
    go.add_argument("--per-gpu", type=int, help=f"runs sharing each GPU (small models leave a GPU idle; default 1, {TINY_RUNS_PER_GPU} for the cpu preset's plans)")
    go.add_argument("--workers", type=int, default=1, help="CPU processes where there is no GPU")
    go.add_argument("--deadline", type=float, help="start no run after this many seconds, nor one that the pace of the runs "
                                                   "so far says would not end by then (runs in flight finish)")
    packer = sub.add_parser("pack", help="an experiment's results in one .tar")
    packer.add_argument("name", choices=sorted(EXPERIMENTS))
    protocols = "how the settings the rate sweeps hold fixed are chosen: " + "; ".join(f"{k}: {v}" for k, v in PROTOCOLS.items())
    protocols = protocols.replace("%", "%%")  # argparse formats help text with %
    go.add_argument("--protocol", choices=list(PROTOCOLS), nargs="+", default=["original"], help=protocols + " (several run side by side)")
    packer.add_argument("--protocol", choices=list(PROTOCOLS), default="original", help=protocols)
    packer.add_argument("-o", "--output", type=Path, help="archive path (default: NAME.tar)")
    unpacker = sub.add_parser("unpack", help="put packed results into data/results/")
    unpacker.add_argument("archive", type=Path)
    unpacker.add_argument("--overwrite", action="store_true", help="replace results that differ from the packed ones")
    lister = sub.add_parser("list", help="the named experiments")
    lister.add_argument("--progress", action="store_true", help="and, under each protocol it runs under, how many runs of its plan "
                                                                "have finished on the protocol's GPU kind and how many more it wants now")
    worker = sub.add_parser("worker", help=argparse.SUPPRESS)  # one run, started by `run`
    for flag in ("--hardware", "--results", "--checkpoints", "--config"):
        worker.add_argument(flag, required=True)
    worker.add_argument("--probes", action="store_true")
    args = parser.parse_args(argv)

    if args.command == "run":
        terminate_as_interrupt()
        gpus = None if args.gpus == "all" else int(args.gpus)
        report = run(args.name, args.preset, args.results, gpus, args.per_gpu, args.workers, deadline=args.deadline,
                     protocols=args.protocol)
        print(report)
        for run_name, tail in report.failed.items():
            print(f"\n--- {run_name} ---\n{tail}")
        if report.failed or report.interrupted:
            sys.exit(1)
    elif args.command == "pack":
        output = args.output or Path(f"{args.name}.tar")
        print(f"packed {pack(args.name, output, protocol=args.protocol)} results into {output}")
    elif args.command == "unpack":
        outcome = unpack(args.archive, overwrite=args.overwrite)
        print(", ".join(f"{len(v)} {k}" for k, v in outcome.items()))
        if outcome["conflicting"]:
            print("these differ from the results already here and were left alone (--overwrite replaces them):\n  "
                  + "\n  ".join(outcome["conflicting"]))
            sys.exit(1)
    elif args.command == "worker":
        import os
        import torch

        if threads := os.environ.get("OMP_NUM_THREADS"):
            torch.set_num_threads(int(threads))
        config = TrainConfig(**json.loads(args.config))
        try:
            run_one(config, args.hardware, Path(args.results), Path(args.checkpoints), should_stop=worker_signals(), probes=args.probes)
        except TrainingStopped as stop:
            print(stop, file=sys.stderr)
            sys.exit(3)
    else:
        for name, exp in EXPERIMENTS.items():
            print(f"{name}: {exp.description}")
            for protocol in exp.protocols if args.progress else ():
                p = plan_progress(name, protocol)
                print(f"  {protocol}: {p.finished} runs finished on {', '.join(p.made_on)}, {p.missing} more wanted now"
                      + ("" if p.missing else " (complete)"))


__all__ = ["EXPERIMENTS", "PROTOCOLS", "Ablations", "Comparison", "Copies", "Decisions", "Experiment", "PlanProgress", "Retrain", "Scaling",
           "ScalingDecisions", "decisions", "load_results", "pack", "plan_progress", "read_run", "results_folder", "run", "run_id", "unpack"]


if __name__ == "__main__":
    main()
