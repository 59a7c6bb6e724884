"""The XS chapter, and the page on protocols: one Muon-against-AdamW comparison at several
budgets (:class:`ComparisonResults`), and its verdicts under each protocol it ran under
(:class:`ProtocolComparison`)."""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from ..analysis import Budget, compare, grad_norm_excursions, loss_or_inf, paired_spikes
from ..experiments import Decisions, experiment, load_results
from ..optim import Muon
from .paper import PAPER, TABLE1_XS_RATE
from .protocols import PROTOCOL_NAMES
from .rules import every_target_verdict, gain_bounds, gain_bounds_text, gain_verdict, label, side_by_side, tested_in_part
from .runs import (OPTIMIZERS, TARGET_OFFSETS, common_steps, equal_compute_gap_row, final_rows, gap_row, newton_schulz_share, ratio_rows,
                   spike_rows, spread_text)

#: how far M14's evidence reaches: the XS comparison sweeps rates at one size of Table 1's five
M14_SCOPE = "XS only (Table 1's other sizes not swept)"


@dataclass
class ComparisonResults:
    name: str
    runs: pd.DataFrame  # every finished run, a row per step (muonlib.experiments.load_results)
    decisions: Decisions
    headers: dict  # run -> its result file's header

    protocol: str = "original"

    @classmethod
    def load(cls, name: str, hardware: str = "h100", results: Path | None = None, protocol: str = "original") -> "ComparisonResults":
        """The runs of one GPU kind (``hardware``) under one protocol (see
        :data:`muonlib.experiments.PROTOCOLS`), wherever the protocol finds them."""
        from ..experiments import finished_runs, original_reader, read_run, result_files, result_folders

        folders = [f for f in result_folders(name, results, protocol) if f.exists()]
        reader = original_reader(hardware, protocol)
        runs = pd.concat([load_results(f, reader) for f in folders], ignore_index=True)
        runs = runs[runs.run.str.startswith(f"{hardware}-")]
        decisions = experiment(name).plan_for(hardware, protocol).plan(hardware, finished_runs(folders, reader))[1]
        headers = {run: read_run(path)[0] for run, path in result_files(folders, reader).items() if run.startswith(f"{hardware}-")}
        return cls(name, runs, decisions, headers, protocol)

    # ------------------------------------------------------------ which runs

    @property
    def budgets(self) -> list[int]:
        """The budgets where both optimizers have a chosen rate."""
        return sorted(steps for steps in {s for s, _ in self.decisions.rates}
                      if all((steps, opt) in self.decisions.rates for opt in OPTIMIZERS))

    def at_shared_warmup(self, steps: int, optimizer: str) -> pd.DataFrame:
        """Runs at the protocol's settings for one budget and optimizer (its warm-up; Muon's
        with its momentum settings and its AdamW part at AdamW's chosen rate): the sweep and
        the seeds."""
        r, d = self.runs, self.decisions
        options = json.dumps(d.muon_options if optimizer == "muon" else {}, sort_keys=True)
        q = (r.warmup == d.warmups[optimizer]) & (r.steps == steps) & (r.optimizer == optimizer) & (r.optimizer_options == options)
        if optimizer == "muon":
            q &= r.adamw_lr == d.rates[steps, "adamw"]
        return r[q]

    def chosen(self, steps: int, optimizer: str) -> pd.DataFrame:
        """The runs at the chosen rate: one per seed."""
        runs = self.at_shared_warmup(steps, optimizer)
        return runs[runs.lr == self.decisions.rates[steps, optimizer]]

    @cached_property
    def provenance(self) -> pd.DataFrame:
        return pd.DataFrame([{"run": run, **{k: h["provenance"][k] for k in ("git_commit", "gpu", "torch", "date", "runs_per_gpu")}}
                             for run, h in self.headers.items()])

    # ------------------------------------------------------------ tables

    def budget_table(self) -> pd.DataFrame:
        """Every budget in steps, tokens, epochs over the training split and tokens per parameter."""
        header = next(iter(self.headers.values()))
        rows = []
        for steps in self.budgets:
            b = Budget.of(steps, header["tokens_per_step"], header["data"]["train_tokens"], header["parameters"])
            rows.append({"steps": steps, "tokens": b.tokens, "epochs": b.epochs, "tokens per parameter": b.tokens_per_parameter,
                         **{f"{opt} warm-up steps": round(self.decisions.warmups[opt] * steps) for opt in OPTIMIZERS}})
        return pd.DataFrame(rows).set_index("steps")

    def warmup_table(self) -> pd.DataFrame:
        """Validation loss at each warm-up fraction: each optimizer's best over its check rates
        at the first budget, and at its chosen rate at the longest."""
        d = self.decisions
        columns = {f"{opt}, {self.budgets[0]} steps": d.warmup_losses[opt] for opt in OPTIMIZERS}
        columns |= {f"{opt}, {self.budgets[-1]} steps": d.warmup_at_longest.get(opt, {}) for opt in OPTIMIZERS}
        table = pd.DataFrame(columns)
        table.index.name = "warm-up fraction"
        return table

    def sweep_table(self) -> pd.DataFrame:
        """Seed-0 final validation loss against the peak rate, per budget and optimizer; a run
        that diverged has loss ``inf``."""
        rows = []
        for steps in self.budgets:
            for opt in OPTIMIZERS:
                runs = self.at_shared_warmup(steps, opt)
                for lr, run in runs[runs.seed == 0].groupby("lr"):
                    last = run.loc[run.step.idxmax()]
                    rows.append({"steps": steps, "optimizer": opt, "lr": lr, "diverged": bool(last.diverged),
                                 "val_loss": np.inf if last.diverged else last.val_loss})
        return pd.DataFrame(rows)

    def final_table(self) -> pd.DataFrame:
        """Per budget, optimizer and seed at the chosen rate (see :func:`~muonlib.results.runs.final_rows`)."""
        return pd.DataFrame([{"steps": steps, **row} for steps in self.budgets
                             for row in final_rows({opt: self.chosen(steps, opt) for opt in OPTIMIZERS})])

    def gap_table(self) -> pd.DataFrame:
        """Final test loss per budget and Muon's gain (see :func:`~muonlib.results.runs.gap_row`)."""
        final = self.final_table()
        return pd.DataFrame([{"steps": steps, **gap_row(group)} for steps, group in final.groupby("steps")]).set_index("steps")

    def equal_compute_gap_table(self) -> pd.DataFrame:
        """Muon's gain per budget on AdamW's training FLOPs, Newton-Schulz counted
        (:func:`~muonlib.results.runs.equal_compute_gap_row`; :meth:`gap_table` compares equal tokens)."""
        share = self.newton_schulz_share()
        return pd.DataFrame([{"steps": steps, **equal_compute_gap_row({opt: self.chosen(steps, opt) for opt in OPTIMIZERS}, share)}
                             for steps in self.budgets]).set_index("steps")

    def ratio_table(self, offsets=TARGET_OFFSETS) -> pd.DataFrame:
        """Tokens to test-loss targets and ``R_L`` per budget and seed pair (see :func:`~muonlib.results.runs.ratio_rows`)."""
        table = pd.DataFrame([{"steps": steps, **row} for steps in self.budgets
                              for row in ratio_rows({opt: self.chosen(steps, opt) for opt in OPTIMIZERS}, offsets)])
        table["Muon's share %"] = 100 / table.R
        return table

    def spike_table(self) -> pd.DataFrame:
        """Spikes of the chosen runs per budget and seed (see :func:`~muonlib.results.runs.spike_rows`)."""
        return pd.DataFrame([{"steps": steps, **row} for steps in self.budgets
                             for row in spike_rows({opt: self.chosen(steps, opt) for opt in OPTIMIZERS})])

    def sweep_spike_table(self) -> pd.DataFrame:
        """Paired spikes and gradient-norm excursions of every seed-0 run of the sweeps, paired
        with the other optimizer's chosen run, by its rate relative to its optimizer's optimum."""
        rows = []
        for steps in self.budgets:
            for opt, other in (("adamw", "muon"), ("muon", "adamw")):
                reference = self.chosen(steps, other)
                reference = reference[reference.seed == 0].sort_values("step")
                runs = self.at_shared_warmup(steps, opt)
                for lr, run in runs[runs.seed == 0].sort_values("step").groupby("lr"):
                    run, ref = common_steps(run, reference)
                    rows.append({"steps": steps, "optimizer": opt, "lr": lr, "lr / optimum": lr / self.decisions.rates[steps, opt],
                                 "diverged": bool(run.diverged.iloc[0]),
                                 "paired spikes": int(paired_spikes(run.loss.values, ref.loss.values).sum()),
                                 "grad-norm excursions": int(grad_norm_excursions(run.grad_norm.values).sum())})
        return pd.DataFrame(rows)

    def newton_schulz_share(self) -> float:
        """Newton-Schulz FLOPs over model FLOPs per step (see :func:`newton_schulz_share`)."""
        return newton_schulz_share(next(h for h in self.headers.values() if h["provenance"]["config"]["optimizer"] == "muon"))

    # ------------------------------------------------------------ verdicts

    def verdicts(self) -> pd.DataFrame:
        """M14, M15, M17 and M18, each with its evidence and one of the book's verdict labels."""
        rates = self.decisions.rates
        sweep = self.sweep_table().set_index(["steps", "optimizer", "lr"]).val_loss
        final = self.final_table()
        spread = final.groupby(["steps", "optimizer"]).val_loss.std()
        table1_worse = {(s, o): sweep.get((s, o, TABLE1_XS_RATE), np.nan) - sweep[s, o, rates[s, o]] > 2 * spread[s, o]
                        for s, o in rates}
        # per budget and optimizer: Table 1's rate is the best, or measurably worse than it; Table 1
        # gives five sizes' rates, and XS's alone is swept here
        m14 = tested_in_part(label([rates[k] == TABLE1_XS_RATE for k in rates], fails=[table1_worse[k] for k in rates]))

        ratios = self.ratio_table()
        share = ratios.groupby(["steps", "offset"])["Muon's share %"].mean()
        newton_schulz = self.newton_schulz_share()
        flops_share = share * (1 + newton_schulz)  # the claim counts FLOPs: Muon's carry its Newton-Schulz iterations
        low, high = PAPER["M15"]
        m15 = every_target_verdict(ratios.set_index(["steps", "offset", "seed"])["Muon's share %"] * (1 + newton_schulz), PAPER["M15"], by="steps")

        spikes = self.spike_table()
        paired = {opt: spikes[spikes.optimizer == opt]["paired spikes"] for opt in OPTIMIZERS}
        if max(p.mean() for p in paired.values()) < 1:  # less than one per run for both: nothing to compare
            m17 = label([])
        else:
            fewer = compare(paired["muon"], paired["adamw"])
            m17 = label([fewer == -1], fails=[fewer == 1])

        gaps, compute_gaps = self.gap_table(), self.equal_compute_gap_table()
        m18 = gain_verdict(gaps, compute_gaps)  # the claim is at equal compute: between the two

        return pd.DataFrame([
            {"claim": "M14", "paper": f"Table 1's LR_max per size, for both optimizers: {TABLE1_XS_RATE:g} at XS",
             "ours": f"{M14_SCOPE}: "
                     + "; ".join(f"{s} steps: AdamW {rates[s, 'adamw']:g}, Muon {rates[s, 'muon']:g}" for s in self.budgets),
             "verdict": m14},
            {"claim": "M15", "paper": f"Muon needs {PAPER['M15'][0]}-{PAPER['M15'][1]}% of AdamW's FLOPs to any loss",
             "ours": f"{flops_share.min():.0f}-{flops_share.max():.0f}% of AdamW's FLOPs with Newton-Schulz counted "
                     f"({share.min():.0f}-{share.max():.0f}% of its tokens; Newton-Schulz adds {100 * newton_schulz:.1f}%) "
                     f"over {len(share)} targets, {int(flops_share.between(low, high).sum())} in the band",
             "verdict": m15},
            {"claim": "M17", "paper": "fewer loss spikes with Muon",
             "ours": f"paired spikes per run: AdamW {paired['adamw'].mean():.2f}, Muon {paired['muon'].mean():.2f} "
                     f"({len(paired['adamw'])} runs each)",
             "verdict": m17},
            {"claim": "M18", "paper": f"final loss {PAPER['M18'][0]}-{PAPER['M18'][1]}% lower with Muon",
             "ours": "on equal FLOPs with Newton-Schulz counted (Muon read before its schedule ends: a lower bound), "
                     + "; ".join(f"{s} steps: {spread_text(g)}" for s, g in compute_gaps["gain %"].items())
                     + "; on equal tokens (an upper bound), " + "; ".join(f"{s} steps: {spread_text(g)}" for s, g in gaps["gain %"].items())
                     + f"; the gain at equal compute, between the two, is {gain_bounds_text(gain_bounds(gaps, compute_gaps), name=lambda s: f'{s} steps')}",
             "verdict": m18},
        ]).set_index("claim")


# ---------------------------------------------------------------- one comparison under several protocols

#: Muon's momentum settings where a run's options leave them unset (the optimizer's own defaults)
MUON_DEFAULTS = {k: inspect.signature(Muon).parameters[k].default for k in ("momentum", "nesterov")}


@dataclass
class ProtocolComparison:
    """One comparison's verdicts under the protocols of :data:`muonlib.experiments.PROTOCOLS`,
    side by side. A verdict stands only where the paper's recipe and a second protocol that
    departs from it agree (:func:`~muonlib.results.rules.combine_verdicts`): the tuned protocol once its runs are
    complete, until then the original one."""

    name: str
    results: dict[str, ComparisonResults]  # protocol -> its results, for the complete ones
    tuned: Decisions  # what the tuned protocol has settled so far
    tuned_missing: int  # runs the tuned protocol still wants

    @classmethod
    def load(cls, name: str = "xs_muon_vs_adamw", hardware: dict[str, str] | None = None) -> "ProtocolComparison":
        """``hardware``: the GPU kind each protocol's runs are read from, by default those that
        made the saved ones (:func:`~muonlib.experiments.protocol_hardware`)."""
        from ..experiments import finished_runs, protocol_hardware, result_folders, run_id

        hardware = hardware or protocol_hardware(name)
        folders = result_folders(name, None, "tuned")
        finals = finished_runs([f for f in folders if f.exists()])
        wanted, tuned = experiment(name).plan_for(hardware["tuned"], "tuned").plan(hardware["tuned"], finals)
        missing = sum(run_id(c, hardware["tuned"]) not in finals for c in wanted)
        complete = ("original", "paper") + (("tuned",) if not missing else ())
        return cls(name, {p: ComparisonResults.load(name, hardware[p], protocol=p) for p in complete}, tuned, missing)

    @property
    def second(self) -> str:
        """The protocol the paper's recipe is checked against."""
        return "tuned" if "tuned" in self.results else "original"

    def settings_table(self) -> pd.DataFrame:
        """What each protocol held fixed while it swept rates, and where it ran."""
        rows = []
        for protocol, decisions in {**{p: r.decisions for p, r in self.results.items()}, "tuned": self.tuned}.items():
            options = decisions.muon_options
            muon = {} if options is None else {**MUON_DEFAULTS, **options}
            gpus = sorted({h["provenance"]["gpu"] for h in self.results[protocol].headers.values()}) if protocol in self.results else []
            rows.append({"protocol": protocol, "AdamW warm-up": decisions.warmups.get("adamw"), "Muon warm-up": decisions.warmups.get("muon"),
                         "Muon momentum": muon.get("momentum"), "Nesterov": muon.get("nesterov"), "GPU": ", ".join(gpus) or None,
                         "runs": len(self.results[protocol].headers) if protocol in self.results else None})
        return pd.DataFrame(rows).set_index("protocol")

    def tuning_table(self) -> pd.DataFrame:
        """The tuned protocol's sweeps at the first budget: validation loss per value and seed."""
        rows = [{"sweep": sweep, "value": 1 - value if sweep == "momentum" else value, "seed": seed, "val_loss": loss}
                for sweep, by_value in self.tuned.tuning.items() for value, losses in by_value.items()
                for seed, loss in enumerate(losses)]
        return pd.DataFrame(rows)

    def verdicts(self) -> pd.DataFrame:
        """Per claim: each complete protocol's evidence and verdict, and the verdict that stands."""
        return side_by_side({p: r.verdicts() for p, r in self.results.items()}, ("paper", self.second))

    def findings(self) -> pd.DataFrame:
        """Per claim: each complete protocol's verdict and the one that stands, as
        :meth:`~muonlib.results.protocols.Protocols.findings` sets them for the other experiments."""
        verdicts = self.verdicts()
        found = {p: verdicts[f"{p}: verdict"] for p in PROTOCOL_NAMES if f"{p}: verdict" in verdicts}
        return pd.DataFrame(found).reindex(columns=list(PROTOCOL_NAMES)).assign(verdict=verdicts.verdict)


def repeated_runs(results: Path | None = None) -> dict[Path, list[Path]]:
    """Each kept run of the paper's or the tuned protocol (``results/PROTOCOL/EXPERIMENT/RUN``)
    that has copies, with its copies (``results/repeats/N/`` and the same path); the original
    protocol's runs, saved before copies were kept, have none."""
    from ..experiments import data_root

    results = results or data_root() / "results"
    copies: dict[Path, list[Path]] = {}
    for copy in sorted((results / "repeats").glob("*/*/*/*.jsonl.gz")):
        copies.setdefault(results / copy.parent.parent.name / copy.parent.name / copy.name, []).append(copy)
    for kept, others in copies.items():
        if not kept.exists():
            raise FileNotFoundError(f"{others[0]} repeats {kept}, which is not saved: restore it or delete the repeat")
    return copies


def seed_range(path: Path) -> float:
    """How far the finished, undiverged seeds of a result file's run lie apart in final
    validation loss (NaN with fewer than two)."""
    stem = path.name.removesuffix(".jsonl.gz").rsplit("-seed", 1)[0]
    losses = [loss for loss in final_losses(sorted(path.parent.glob(f"{stem}-seed*.jsonl.gz"))) if math.isfinite(loss)]
    return max(losses) - min(losses) if len(losses) > 1 else np.nan


def final_losses(paths) -> list[float]:
    """The final validation loss of each finished run of ``paths`` (infinite where it diverged);
    an unfinished one is left out."""
    from ..experiments import read_run

    finals = (read_run(path)[2] for path in paths)
    return [loss_or_inf(final.get("val_loss")) for final in finals if final is not None]


class SettingNames:
    """What a run's plan calls its setting (``moe-mla flop-matched``, not only ``moe-mla``),
    else its variant and the model changes it runs with."""

    def __init__(self):
        self.plans: dict[tuple[str, str, str], object] = {}

    def __call__(self, run: Path, config: dict) -> str:
        from ..experiments import experiment
        from ..train import TrainConfig

        name, protocol, hardware = run.parent.name, run.parent.parent.name, run.name.split("-")[0]
        try:
            if (name, protocol, hardware) not in self.plans:
                self.plans[name, protocol, hardware] = experiment(name).plan_for(hardware, protocol)
            return self.plans[name, protocol, hardware].setting_of(TrainConfig(**config))
        except (AttributeError, KeyError, TypeError, ValueError):  # no such plan, or it names no settings
            pass
        changes = ", ".join(f"{k} {v}" for k, v in config.get("model_changes", {}).items())
        return config["variant"] + (f" ({changes})" if changes else "")


def repeat_table(results: Path | None = None) -> pd.DataFrame:
    """Runs made more than once from one configuration and seed, each copy on a fresh machine
    of the same GPU kind, beside the copy the book keeps (:func:`repeated_runs`): the kind, every
    finished copy's final validation loss, the largest difference between those that did not
    diverge (and how many did), and the range over the kept run's seeds where they exist.
    Nothing but the GPU's nondeterministic kernels (atomic reductions in the backward pass,
    autotuned kernel choices) separates the copies, so two points of a rate sweep closer than
    this are a tie whichever the sweep picks."""
    from ..experiments import ran_on, read_run

    setting = SettingNames()
    rows = []
    for kept, others in repeated_runs(results).items():
        header, _, final = read_run(kept)
        if final is None:  # still running: nothing to compare yet
            continue
        losses = final_losses([kept, *others])
        finite = [loss for loss in losses if math.isfinite(loss)]
        config = header["provenance"]["config"]
        rows.append({"protocol": kept.parent.parent.name, "experiment": kept.parent.name, "GPU": ran_on(kept).upper(), "setting": setting(kept, config),
                     "optimizer": config["optimizer"], "lr": config["lr"], "steps": config["steps"], "seed": config["seed"],
                     "copies": len(losses), "diverged copies": len(losses) - len(finite), "val loss, kept": losses[0],
                     "largest difference": max(finite) - min(finite) if len(finite) > 1 else np.nan,
                     "seed range": seed_range(kept)})
    return pd.DataFrame(rows)


#: :func:`kind_table`'s columns
KIND_COLUMNS = ["optimizer", "steps", "lr", "seed", "GPU, original", "GPU, copy", "commit, original", "commit, copy", "val loss, original", "val loss, copy", "difference",
                "seed range"]


def kind_table(name: str = "hopper_kinds") -> pd.DataFrame:
    """Each finished run of a :class:`~muonlib.experiments.Copies` experiment beside the run it
    copies, made from the same configuration and seed on another GPU (and the commits each ran
    at): both final validation losses, the copy's difference from the original and the range
    over the original's seeds, so that a difference larger than copies on one kind show
    (:func:`repeat_table`) is the GPU kind's or the code's since."""
    from ..experiments import ran_on, read_run, result_path, results_folder, run_id
    from ..train import TrainConfig

    rows = []
    for path in sorted(results_folder(name).glob("*.jsonl.gz")):
        header, _, final = read_run(path)
        if final is None:
            continue
        plan = experiment(name).design(ran_on(path))
        config = TrainConfig(**header["provenance"]["config"])
        source, original = results_folder(plan.source, plan.protocol), run_id(config, plan.made_on)
        if not result_path(source, original).exists():
            raise FileNotFoundError(f"{path} copies {result_path(source, original)}, which is not saved: restore it or delete the copy")
        original_header, _, original_final = read_run(result_path(source, original))
        losses = loss_or_inf(original_final.get("val_loss")), loss_or_inf(final.get("val_loss"))
        rows.append({"optimizer": config.optimizer, "steps": config.steps, "lr": config.lr, "seed": config.seed,
                     "GPU, original": original_header["provenance"]["gpu"], "GPU, copy": header["provenance"]["gpu"],
                     "commit, original": original_header["provenance"].get("git_commit"), "commit, copy": header["provenance"].get("git_commit"),
                     "val loss, original": losses[0], "val loss, copy": losses[1], "difference": losses[1] - losses[0],
                     "seed range": seed_range(result_path(source, original))})
    return pd.DataFrame(rows, columns=KIND_COLUMNS)


def repeat_sweeps(results: Path | None = None) -> pd.DataFrame:
    """The rate sweeps (seed 0 of runs alike in all but their rate) with a repeated point: the
    rate the kept copies choose, and every rate that some choice of copies would choose (a
    diverged copy never wins). A sweep with more than one is a tie between those rates: the
    runs cannot tell them apart."""
    import itertools

    from ..experiments import read_run

    copies = repeated_runs(results)
    setting = SettingNames()
    rows = []
    for folder in sorted({kept.parent for kept in copies}):
        sweeps: dict[str, dict[float, list[float]]] = {}
        names: dict[str, str] = {}
        for kept in sorted(folder.glob("*-seed0.jsonl.gz")):
            header, _, final = read_run(kept)
            if final is None:
                continue
            losses = final_losses([kept, *copies.get(kept, [])])
            config = header["provenance"]["config"]
            key = json.dumps({k: v for k, v in config.items() if k not in ("lr", "seed")}, sort_keys=True)
            names[key] = setting(kept, config)
            sweeps.setdefault(key, {})[config["lr"]] = losses
        for key, points in sweeps.items():
            if len(points) < 2 or all(len(losses) == 1 for losses in points.values()):
                continue
            rates = sorted(points)
            config = json.loads(key)
            choices = {rates[int(np.argmin(pick))] for pick in itertools.product(*(points[lr] for lr in rates))}
            rows.append({"protocol": folder.parent.name, "experiment": folder.name, "setting": names[key], "optimizer": config["optimizer"],
                         "steps": config["steps"], "rates swept": len(rates), "repeated points": sum(len(points[lr]) > 1 for lr in rates),
                         "chosen": min(rates, key=lambda lr: points[lr][0]), "chosen by some copies": sorted(choices)})
    return pd.DataFrame(rows)
