"""Every run the book holds, read for divergence and loss spikes (M17, in the scaling chapter)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..analysis import grad_norm_excursions, paired_spikes, raw_spikes
from ..data import data_root
from ..experiments import EXPERIMENTS, Ablations, experiment, load_results
from .rules import label
from .runs import common_steps


#: what makes two runs train on identical batches with the same model and schedule
SAME_TRAINING = ["model", "variant", "model_changes", "steps", "batch_size", "grad_accum"]


def every_run_table(root: Path | None = None) -> pd.DataFrame:
    """One row per finished run of every experiment in ``data/results/``: its optimizer, its
    peak rate relative to the best rate of its optimizer in its training setting (model,
    budget, batch: ``log2 lr / optimum``, 0 at the optimum), whether it diverged, whether it is
    an ablation (a run of an ablation experiment, or Muon with changed options), and its instability: paired spikes against the
    other optimizer's best plain run on the identical batches (same setting and seed) with
    the first one's place in the run (a fraction of its steps), raw spikes and gradient-norm
    excursions."""
    root = Path(root) if root is not None else data_root() / "results"
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name in EXPERIMENTS):  # the original protocol's runs
        runs = load_results(folder).sort_values(["run", "step"])
        finals = runs.groupby("run").agg(**{k: (k, "first") for k in ["optimizer", *SAME_TRAINING, "optimizer_options", "seed", "lr", "diverged"]},
                                         val_loss=("val_loss", "last"))
        ablations = folder.name in EXPERIMENTS and isinstance(experiment(folder.name).design("h100"), Ablations)
        finals["ablation"] = (finals.optimizer_options != "{}") | ablations  # every run of an ablation experiment
        finals["selection"] = finals.val_loss.where(~finals.diverged, np.inf)
        plain = finals[~finals.ablation]
        best_rate = plain.loc[plain.groupby(["optimizer", *SAME_TRAINING]).selection.idxmin()].set_index(["optimizer", *SAME_TRAINING]).lr
        reference = plain.loc[plain.groupby(["optimizer", *SAME_TRAINING, "seed"]).selection.idxmin()].reset_index().set_index(
            ["optimizer", *SAME_TRAINING, "seed"]).run
        by_run = dict(iter(runs.groupby("run")))
        for run, f in finals.iterrows():
            other = "muon" if f.optimizer == "adamw" else "adamw"
            mine = by_run[run]
            setting = tuple(f[k] for k in SAME_TRAINING)
            optimum = best_rate.get((f.optimizer, *setting), np.nan)
            paired, first = np.nan, np.nan
            if (other, *setting, f.seed) in reference.index:
                a, b = common_steps(mine, by_run[reference[(other, *setting, f.seed)]])
                flags = paired_spikes(a.loss.values, b.loss.values)
                paired = int(flags.sum())
                first = a.step.values[flags][0] / f.steps if paired else np.nan
            rows.append({"experiment": folder.name, "run": run, "optimizer": f.optimizer, "model": f.model, "variant": f.variant,
                         "steps": f.steps, "seed": f.seed, "lr": f.lr, "log2 lr / optimum": round(math.log2(f.lr / optimum)) if optimum > 0 else np.nan,
                         "diverged": bool(f.diverged), "ablation": bool(f.ablation), "paired spikes": paired, "first paired spike": first, "raw spikes": int(raw_spikes(mine.loss.values).sum()),
                         "grad-norm excursions": int(grad_norm_excursions(mine.grad_norm.values).sum())})
    return pd.DataFrame(rows)


def stability_table(every_run: pd.DataFrame) -> pd.DataFrame:
    """Per optimizer and rate relative to its optimum: runs, divergences, and spikes per run
    (ablations left out: with their options changed they are not the optimizers compared)."""
    return every_run[~every_run.ablation].groupby(["optimizer", "log2 lr / optimum"]).agg(
        runs=("run", "size"), diverged=("diverged", "sum"), paired_spikes_per_run=("paired spikes", "mean"),
        runs_with_a_paired_spike=("paired spikes", lambda s: int((s > 0).sum())),
        excursions_per_run=("grad-norm excursions", "mean"), raw_spikes_per_run=("raw spikes", "mean"))


def stability_verdict(every_run: pd.DataFrame) -> dict:
    """M17 over every run, two conditions: fewer of Muon's runs have a paired spike (one-sided
    Fisher exact test, p < 0.05) at each optimizer's best rate, and over all rates; it fails where AdamW
    has fewer, and where neither shows instability there is nothing to compare (:func:`~muonlib.results.rules.label`).
    Ablations are left out."""
    from scipy.stats import fisher_exact

    every_run = every_run[~every_run.ablation]

    def test(runs, alternative):
        table = [[int((g["paired spikes"] > 0).sum()), int((g["paired spikes"] == 0).sum())]
                 for g in (runs[runs.optimizer == "muon"], runs[runs.optimizer == "adamw"])]
        return fisher_exact(table, alternative=alternative).pvalue, table

    tuned = every_run[every_run["log2 lr / optimum"] == 0]
    p_tuned, at_optimum = test(tuned, "less")
    p_all, overall = test(every_run, "less")
    p_worse, _ = test(every_run, "greater")
    verdict = label([p_tuned < 0.05, p_all < 0.05], fails=[False, p_worse < 0.05])  # at each optimizer's best rate, and over all rates
    (m_spiky, m_calm), (a_spiky, a_calm) = overall
    (mt_spiky, mt_calm), (at_spiky, at_calm) = at_optimum
    return {"claim": "M17", "paper": "Muon's curves are smoother, with fewer loss spikes",
            "ours": f"runs with a paired spike: Muon {m_spiky} of {m_spiky + m_calm}, AdamW {a_spiky} of {a_spiky + a_calm} "
                    f"(p = {p_all:.2g}); at each optimizer's best rate Muon {mt_spiky} of {mt_spiky + mt_calm}, AdamW {at_spiky} of "
                    f"{at_spiky + at_calm}; divergences: {int(every_run.diverged.sum())} in {len(every_run)} runs",
            "verdict": verdict, "p overall": p_all, "p tuned": p_tuned}


def runs_verdict(every_run: pd.DataFrame) -> dict:
    """M29, the paper's stability analyses "across 100+ training runs": the paper shows none of
    them, so there is nothing to compare ours with (:func:`~muonlib.results.rules.label` of no
    condition); the evidence counts the runs this book read for divergence and spikes."""
    counts = every_run.optimizer.value_counts()
    return {"claim": "M29", "paper": "stability analyses across 100+ training runs",
            "ours": f"the paper shows none of its runs; the original protocol's experiments hold {len(every_run)} "
                    f"({counts.get('muon', 0)} Muon, {counts.get('adamw', 0)} AdamW) from {every_run.experiment.nunique()} "
                    "experiments, every one read for divergence and loss spikes",
            "verdict": label(None)}
