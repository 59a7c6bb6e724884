"""What a Muon-against-AdamW comparison's saved runs show: the tables and verdicts a chapter
draws, computed once here so that the book shows them and the tests guard them.

``ComparisonResults.load(name)`` reads ``data/results/NAME/`` and the decisions its plan
made (warm-up, chosen rates); every table below starts from those runs. Rates were chosen
on the validation split; the losses reported here are on the test split.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from .analysis import Budget, SeedSpread, compare, grad_norm_excursions, loss_jumps, paired_spikes, raw_spikes, tokens_to_target
from .data import data_root
from .experiments import Decisions, experiment, load_results, read_finals

OPTIMIZERS = ("adamw", "muon")
TARGET_OFFSETS = (0.02, 0.05, 0.1, 0.2, 0.5)  # nats above AdamW's worst final test loss: the targets of R_L
TABLE1_XS_RATE = 2.5e-3  # the paper's Table 1 LR_max for XS, shared by both optimizers
PAPER = {"M15": (48, 52), "M18": (2, 4)}  # Muon's share of AdamW's FLOPs (%); final-loss gain (%)


def common_steps(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two runs' step records over the steps both reached (a diverged run ends early)."""
    n = min(len(a), len(b))
    return a.sort_values("step").iloc[:n], b.sort_values("step").iloc[:n]


@dataclass
class ComparisonResults:
    name: str
    runs: pd.DataFrame  # every finished run, a row per step (muonlib.experiments.load_results)
    decisions: Decisions
    headers: dict  # run -> its result file's header

    @classmethod
    def load(cls, name: str, hardware: str = "h100", results: Path | None = None) -> "ComparisonResults":
        from .experiments import RESULT, read_run

        folder = Path(results) if results is not None else data_root() / "results" / name
        runs = load_results(folder)
        runs = runs[runs.hardware == hardware]
        design = experiment(name).design(hardware)
        decisions = design.plan(hardware, read_finals(folder))[1]
        headers = {p.name.removesuffix(RESULT): read_run(p)[0] for p in sorted(folder.glob(f"{hardware}-*{RESULT}"))}
        return cls(name, runs, decisions, headers)

    # ------------------------------------------------------------ which runs

    @property
    def budgets(self) -> list[int]:
        """The budgets where both optimizers have a chosen rate."""
        return sorted(steps for steps in {s for s, _ in self.decisions.rates}
                      if all((steps, opt) in self.decisions.rates for opt in OPTIMIZERS))

    def at_shared_warmup(self, steps: int, optimizer: str) -> pd.DataFrame:
        """Runs at the shared warm-up for one budget and optimizer (Muon's with its AdamW part
        at AdamW's chosen rate): the sweep and the seeds."""
        r = self.runs
        q = (r.warmup == self.decisions.warmup) & (r.steps == steps) & (r.optimizer == optimizer)
        if optimizer == "muon":
            q &= r.adamw_lr == self.decisions.rates[steps, "adamw"]
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
                         "warm-up steps": round(self.decisions.warmup * steps)})
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
        """Per budget, optimizer and seed at the chosen rate: final validation and test loss (NaN
        for a run that diverged), and the lowest validation loss with its step (below the final
        one where a curve turns up)."""
        rows = []
        for steps in self.budgets:
            for opt in OPTIMIZERS:
                for seed, run in self.chosen(steps, opt).groupby("seed"):
                    evals = run.dropna(subset=["val_loss"])
                    diverged = bool(run.diverged.iloc[0])
                    lowest = evals.loc[evals.val_loss.idxmin()] if len(evals) else None
                    last = evals.loc[evals.step.idxmax()] if len(evals) and not diverged else None
                    rows.append({"steps": steps, "optimizer": opt, "seed": seed, "lr": run.lr.iloc[0], "diverged": diverged,
                                 "val_loss": np.nan if last is None else last.val_loss,
                                 "test_loss": np.nan if last is None else last.test_loss,
                                 "min_val_loss": np.nan if lowest is None else lowest.val_loss,
                                 "min_val_step": -1 if lowest is None else int(lowest.step)})
        return pd.DataFrame(rows)

    def gap_table(self) -> pd.DataFrame:
        """Final test loss per budget, and Muon's gain ``1 - L_Muon / L_AdamW`` (%) per seed
        pair; ``separated`` is -1 where every Muon seed beats every AdamW seed; seeds that
        diverged are counted, not averaged."""
        final = self.final_table()
        rows = []
        for steps, group in final.groupby("steps"):
            loss = {opt: group[group.optimizer == opt].set_index("seed").test_loss.dropna() for opt in OPTIMIZERS}
            gain = SeedSpread(tuple(100 * (1 - loss["muon"] / loss["adamw"]).dropna()))
            rows.append({"steps": steps, "AdamW": SeedSpread(tuple(loss["adamw"])), "Muon": SeedSpread(tuple(loss["muon"])),
                         "gain %": gain, "separated": compare(loss["muon"], loss["adamw"]),
                         "diverged": int(group.diverged.sum())})
        return pd.DataFrame(rows).set_index("steps")

    def ratio_table(self, offsets=TARGET_OFFSETS) -> pd.DataFrame:
        """Tokens each optimizer needs to reach a test-loss target, per seed pair (same seed,
        same batches), and ``R_L = T_AdamW / T_Muon``; targets are the highest final test loss
        of AdamW's seeds plus ``offsets``, so that every run reaches every target."""
        rows = []
        for steps in self.budgets:
            curves = {opt: {seed: run.dropna(subset=["test_loss"]).sort_values("step")
                            for seed, run in self.chosen(steps, opt).groupby("seed") if not run.diverged.iloc[0]}
                      for opt in OPTIMIZERS}
            final = max(c.test_loss.iloc[-1] for c in curves["adamw"].values())
            for offset in offsets:
                target = final + offset
                for seed in sorted(set(curves["adamw"]) & set(curves["muon"])):
                    t = {opt: tokens_to_target(curves[opt][seed].tokens, curves[opt][seed].test_loss, target) for opt in OPTIMIZERS}
                    rows.append({"steps": steps, "offset": offset, "target": target, "seed": seed,
                                 "AdamW tokens": t["adamw"], "Muon tokens": t["muon"], "R": t["adamw"] / t["muon"]})
        table = pd.DataFrame(rows)
        table["Muon's share %"] = 100 / table.R
        return table

    def spike_table(self) -> pd.DataFrame:
        """Per budget and seed at the chosen rates: raw spikes (a loss 10% above its recent
        median), paired spikes (10% above the other optimizer's loss on the same batch, relative
        to their recent ratio), gradient-norm excursions, and how closely the two runs' loss
        jumps follow each other (the raw detector's share of batch difficulty)."""
        rows = []
        for steps in self.budgets:
            runs = {opt: dict(iter(self.chosen(steps, opt).sort_values("step").groupby("seed"))) for opt in OPTIMIZERS}
            for seed in sorted(set(runs["adamw"]) & set(runs["muon"])):
                a, m = common_steps(runs["adamw"][seed], runs["muon"][seed])
                ja, jm = loss_jumps(a.loss.values), loss_jumps(m.loss.values)
                known = ~np.isnan(ja)
                for opt, run, other in (("adamw", a, m), ("muon", m, a)):
                    rows.append({"steps": steps, "seed": seed, "optimizer": opt,
                                 "raw spikes": int(raw_spikes(run.loss.values).sum()),
                                 "paired spikes": int(paired_spikes(run.loss.values, other.loss.values).sum()),
                                 "grad-norm excursions": int(grad_norm_excursions(run.grad_norm.values).sum()),
                                 "jump correlation": float(np.corrcoef(ja[known], jm[known])[0, 1])})
        return pd.DataFrame(rows)

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
        """Newton-Schulz FLOPs of a Muon step over the model's training FLOPs per step (the
        quintic iteration's dense matmuls, 5 steps, on every hidden matrix)."""
        import torch

        from .linalg import newton_schulz_flops
        from .models import GPT, preset
        from .optim import classify_parameters

        header = next(h for h in self.headers.values() if h["provenance"]["config"]["optimizer"] == "muon")
        config = header["provenance"]["config"]
        with torch.device("meta"):
            model = GPT(preset(config["model"], config["variant"], **config["model_changes"]))
        ns = sum(newton_schulz_flops(*p.shape[-2:]) * (p.numel() // (p.shape[-2] * p.shape[-1]))
                 for _, p in classify_parameters(model)["hidden"])
        return ns / header["flops_per_step"]

    # ------------------------------------------------------------ verdicts

    def verdicts(self) -> pd.DataFrame:
        """M14, M15, M17 and M18, each with its evidence and one of the book's verdict labels."""
        rates = self.decisions.rates
        sweep = self.sweep_table().set_index(["steps", "optimizer", "lr"]).val_loss
        final = self.final_table()
        spread = final.groupby(["steps", "optimizer"]).val_loss.std()
        table1_worse = {(s, o): sweep.get((s, o, TABLE1_XS_RATE), np.nan) - sweep[s, o, rates[s, o]] > 2 * spread[s, o]
                        for s, o in rates}
        m14 = ("refuted" if all(r != TABLE1_XS_RATE for r in rates.values()) and all(table1_worse.values())
               else "verified" if all(r == TABLE1_XS_RATE for r in rates.values()) else "holds only under conditions")

        ratios = self.ratio_table()
        share = ratios.groupby(["steps", "offset"])["Muon's share %"].mean()
        low, high = PAPER["M15"]
        m15 = ("verified" if share.between(low, high).all() else
               "refuted" if not share.between(low, high).any() else "holds only under conditions")

        spikes = self.spike_table()
        paired = {opt: spikes[spikes.optimizer == opt]["paired spikes"] for opt in OPTIMIZERS}
        if max(p.mean() for p in paired.values()) < 1:  # less than one per run for both: nothing to compare
            m17 = "not testable here"
        else:
            m17 = {-1: "verified", 1: "refuted", 0: "not testable here"}[compare(paired["muon"], paired["adamw"])]

        gaps = self.gap_table()
        low, high = PAPER["M18"]
        inside = [low <= g.mean <= high for g in gaps["gain %"]]
        m18 = ("verified" if all(inside) and (gaps.separated == -1).all() else
               "refuted" if not any(inside) or (gaps.separated == 1).any() else "holds only under conditions")

        def spread_text(g):
            return f"{g.mean:.1f}% (seeds {g.low:.1f}-{g.high:.1f})"

        return pd.DataFrame([
            {"claim": "M14", "paper": f"XS LR_max {TABLE1_XS_RATE:g} for both optimizers",
             "ours": "; ".join(f"{s} steps: AdamW {rates[s, 'adamw']:g}, Muon {rates[s, 'muon']:g}" for s in self.budgets),
             "verdict": m14},
            {"claim": "M15", "paper": f"Muon needs {PAPER['M15'][0]}-{PAPER['M15'][1]}% of AdamW's FLOPs to any loss",
             "ours": f"{share.min():.0f}-{share.max():.0f}% of AdamW's tokens (model FLOPs; Newton-Schulz adds "
                     f"{100 * self.newton_schulz_share():.1f}%) over {len(share)} targets",
             "verdict": m15},
            {"claim": "M17", "paper": "fewer loss spikes with Muon",
             "ours": f"paired spikes per run: AdamW {paired['adamw'].mean():.2f}, Muon {paired['muon'].mean():.2f} "
                     f"({len(paired['adamw'])} runs each)",
             "verdict": m17},
            {"claim": "M18", "paper": f"final loss {PAPER['M18'][0]}-{PAPER['M18'][1]}% lower with Muon",
             "ours": "; ".join(f"{s} steps: {spread_text(g)}" for s, g in gaps["gain %"].items()),
             "verdict": m18},
        ]).set_index("claim")
