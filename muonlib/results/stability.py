"""Every run the book holds, read for divergence and loss spikes (M17, in the scaling chapter),
under each protocol whose runs it holds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..analysis import SPIKE_WINDOW, grad_norm_excursions, paired_spikes, raw_spikes
from ..data import data_root
from ..experiments import EXPERIMENTS, PAPER_MUON, PROTOCOLS, Ablations, Copies, experiment, load_results
from .paper import QUOTES
from .protocols import PROTOCOL_NAMES
from .rules import ORIGINAL_ONLY, combine_verdicts, judged, label, one_protocol
from .runs import OPTIMIZER_LABELS, common_steps


#: what makes two runs train on identical batches with the same model and schedule
SAME_TRAINING = ["model", "variant", "model_changes", "steps", "batch_size", "grad_accum"]
#: what else a rate sweep holds fixed: a best rate is its warm-up's and momentum's
SAME_SWEEP = [*SAME_TRAINING, "warmup", "optimizer_options"]


#: the columns of :func:`every_run_table`, also when there is no run
EVERY_RUN_COLUMNS = ["protocol", "experiment", "run", "optimizer", "model", "variant", "model_changes", "steps", "seed", "lr",
                     "log2 lr / optimum", "diverged", "ablation", "paired spikes", "first paired spike", "raw spikes",
                     "last loss jump", "grad-norm excursions"]


def protocol_folders(root: Path) -> list[tuple[str, Path]]:
    """Each experiment's folder under ``root`` with the protocol its runs ran under: the
    original protocol's ``root/NAME``, the others' ``root/PROTOCOL/NAME``; not the copies of
    other experiments' runs (:class:`~muonlib.experiments.Copies`), which would count them twice."""
    folders = []
    for protocol in PROTOCOLS:
        parent = root if protocol == "original" else root / protocol
        if parent.is_dir():
            folders += [(protocol, p) for p in sorted(parent.iterdir())
                        if p.is_dir() and p.name in EXPERIMENTS and not isinstance(experiment(p.name).design("h100"), Copies)]
    return folders


def is_ablation(options: str, in_ablations: bool) -> bool:
    """Whether a run changes Muon itself: a run of an ablation experiment, or Muon with options
    beyond the momentum a protocol sets."""
    return in_ablations or bool(set(json.loads(options)) - set(PAPER_MUON))


def last_loss_jump(losses, window: int = SPIKE_WINDOW) -> float:
    """A run's last recorded training loss over the median of the ``window`` before it: how
    far its loss had risen when it ended (about 1 for a run that ends calmly)."""
    losses = np.asarray(losses, float)
    return float(losses[-1] / np.median(losses[-window - 1:-1])) if len(losses) > 1 else np.nan


def every_run_table(root: Path | None = None) -> pd.DataFrame:
    """One row per finished run of every experiment in ``root`` (``data/results/``), under each
    protocol (:func:`protocol_folders`): its optimizer, its peak rate relative to the best rate
    of its optimizer in its sweep (model, budget, batch, warm-up and momentum, under its
    protocol: ``log2 lr / optimum``, 0 at the optimum), whether it diverged, whether it is an
    ablation (:func:`is_ablation`), and its instability: paired spikes against the other
    optimizer's best plain run on the identical batches (same setting and seed, same protocol)
    with the first one's place in the run (a fraction of its steps), raw spikes,
    gradient-norm excursions, and :func:`last_loss_jump` (a diverged run's records end at the
    step before its loss or gradient norm stopped being finite)."""
    root = Path(root) if root is not None else data_root() / "results"
    rows = []
    for protocol, folder in protocol_folders(root):
        runs = load_results(folder).sort_values(["run", "step"])
        finals = runs.groupby("run").agg(**{k: (k, "first") for k in ["optimizer", *SAME_SWEEP, "seed", "lr", "diverged"]},
                                         val_loss=("val_loss", "last"))
        in_ablations = isinstance(experiment(folder.name).design("h100"), Ablations)
        finals["ablation"] = [is_ablation(o, in_ablations) for o in finals.optimizer_options]
        finals["selection"] = finals.val_loss.where(~finals.diverged, np.inf)
        plain = finals[~finals.ablation]
        best_rate = plain.loc[plain.groupby(["optimizer", *SAME_SWEEP]).selection.idxmin()].set_index(["optimizer", *SAME_SWEEP]).lr
        reference = plain.loc[plain.groupby(["optimizer", *SAME_TRAINING, "seed"]).selection.idxmin()].reset_index().set_index(
            ["optimizer", *SAME_TRAINING, "seed"]).run
        by_run = dict(iter(runs.groupby("run")))
        for run, f in finals.iterrows():
            other = "muon" if f.optimizer == "adamw" else "adamw"
            mine = by_run[run]
            setting = tuple(f[k] for k in SAME_TRAINING)
            optimum = best_rate.get((f.optimizer, *(f[k] for k in SAME_SWEEP)), np.nan)
            paired, first = np.nan, np.nan
            if (other, *setting, f.seed) in reference.index:
                a, b = common_steps(mine, by_run[reference[(other, *setting, f.seed)]])
                flags = paired_spikes(a.loss.values, b.loss.values)
                paired = int(flags.sum())
                first = a.step.values[flags][0] / f.steps if paired else np.nan
            rows.append({"protocol": protocol, "experiment": folder.name, "run": run, "optimizer": f.optimizer, "model": f.model,
                         "variant": f.variant, "model_changes": f.model_changes, "steps": f.steps, "seed": f.seed, "lr": f.lr,
                         "log2 lr / optimum": round(math.log2(f.lr / optimum)) if optimum > 0 else np.nan,
                         "diverged": bool(f.diverged), "ablation": bool(f.ablation), "paired spikes": paired, "first paired spike": first,
                         "raw spikes": int(raw_spikes(mine.loss.values).sum()), "last loss jump": last_loss_jump(mine.loss.values),
                         "grad-norm excursions": int(grad_norm_excursions(mine.grad_norm.values).sum())})
    return pd.DataFrame(rows, columns=EVERY_RUN_COLUMNS)


#: runs withdrawn from the evidence because the code that made them was wrong (``data/README.md`` says which and why)
WITHDRAWN = "withdrawn"


def withdrawn_run_table(root: Path | None = None) -> pd.DataFrame:
    """The withdrawn runs (``root/withdrawn/PROTOCOL/EXPERIMENT/``, ``root`` being
    ``data/results/``) as :func:`every_run_table` reads the others; no plan reads them, so their
    plans want them again."""
    root = Path(root) if root is not None else data_root() / "results"
    return every_run_table(root / WITHDRAWN)


def reruns(every_run: pd.DataFrame, withdrawn: pd.DataFrame) -> pd.DataFrame:
    """The runs of ``every_run`` that rerun a withdrawn one: the same configuration under the
    same protocol, made with the fixed code."""
    keys = pd.MultiIndex.from_frame(withdrawn[["protocol", "run"]])
    return every_run[pd.MultiIndex.from_frame(every_run[["protocol", "run"]]).isin(keys)]


def stability_table(every_run: pd.DataFrame) -> pd.DataFrame:
    """Per protocol, optimizer and rate relative to its optimum: runs, divergences, and spikes
    per run (ablations left out: with their options changed they are not the optimizers
    compared)."""
    return every_run[~every_run.ablation].groupby(["protocol", "optimizer", "log2 lr / optimum"]).agg(
        runs=("run", "size"), diverged=("diverged", "sum"), paired_spikes_per_run=("paired spikes", "mean"),
        runs_with_a_paired_spike=("paired spikes", lambda s: int((s > 0).sum())),
        excursions_per_run=("grad-norm excursions", "mean"), raw_spikes_per_run=("raw spikes", "mean"))


def spike_test(runs: pd.DataFrame) -> dict:
    """M17 on one protocol's plain runs, two conditions: fewer of Muon's runs have a paired
    spike (one-sided Fisher exact test, p < 0.05) at each optimizer's best rate, and over all
    rates; it fails where AdamW has fewer, and where neither shows instability there is nothing
    to compare (:func:`~muonlib.results.rules.label`)."""
    from scipy.stats import fisher_exact

    def test(runs, alternative):
        table = [[int((g["paired spikes"] > 0).sum()), int((g["paired spikes"] == 0).sum())]
                 for g in (runs[runs.optimizer == "muon"], runs[runs.optimizer == "adamw"])]
        return fisher_exact(table, alternative=alternative).pvalue, table

    p_tuned, at_optimum = test(runs[runs["log2 lr / optimum"] == 0], "less")
    p_all, overall = test(runs, "less")
    p_worse, _ = test(runs, "greater")
    (m_spiky, m_calm), (a_spiky, a_calm) = overall
    (mt_spiky, mt_calm), (at_spiky, at_calm) = at_optimum
    diverged = runs.groupby("optimizer").diverged.sum().reindex(["muon", "adamw"], fill_value=0)
    return {"ours": f"runs with a paired spike: Muon {m_spiky} of {m_spiky + m_calm}, AdamW {a_spiky} of {a_spiky + a_calm} "
                    f"(p = {p_all:.2g}), at each optimizer's best rate Muon {mt_spiky} of {mt_spiky + mt_calm}, AdamW {at_spiky} of "
                    f"{at_spiky + at_calm}, runs that diverged: Muon {diverged.muon}, AdamW {diverged.adamw}",
            "verdict": label([p_tuned < 0.05, p_all < 0.05], fails=[False, p_worse < 0.05]),  # at the best rates, and over all
            "p overall": p_all, "p tuned": p_tuned}


def stability_by_protocol(every_run: pd.DataFrame) -> pd.DataFrame:
    """:func:`spike_test` under each protocol whose runs the book holds, ablations left out."""
    plain = every_run[~every_run.ablation]
    return pd.DataFrame({p: spike_test(plain[plain.protocol == p]) for p in PROTOCOLS if (plain.protocol == p).any()}).T.rename_axis("protocol")


def stability_verdict(every_run: pd.DataFrame, withdrawn: pd.DataFrame | None = None) -> dict:
    """M17, judged as the experiments are (:class:`~muonlib.results.protocols.Protocols`): by the
    paper's recipe and the tuned protocol where the book holds both optimizers' runs under
    both, the verdict standing only where they agree; else by the original protocol's runs
    alone, capped as one protocol's (:func:`~muonlib.results.rules.one_protocol`). The evidence
    gives each protocol's counts (:func:`stability_by_protocol`), and the runs withdrawn after
    diverging (``withdrawn``, :func:`withdrawn_run_table` by default), which no count holds
    (their reruns, :func:`reruns`, are counted as any run is)."""
    by_protocol = stability_by_protocol(every_run)
    withdrawn = withdrawn_run_table() if withdrawn is None else withdrawn
    withdrawn_counts = withdrawn[withdrawn.diverged & ~withdrawn.ablation].groupby(["protocol", "optimizer"]).size() if len(withdrawn) else pd.Series(dtype=int)
    plain = every_run[~every_run.ablation]
    both = all({"adamw", "muon"} <= set(plain[plain.protocol == p].optimizer) for p in ("paper", "tuned"))
    judged_by = ("paper", "tuned") if both else ("original",)
    verdict = combine_verdicts(list(by_protocol.verdict[list(judged_by)]))
    rerun = reruns(every_run, withdrawn)
    def withdrawn_text(protocol: str) -> str:
        counts = {OPTIMIZER_LABELS[o]: n for (p, o), n in withdrawn_counts.items() if p == protocol}
        mine = rerun[rerun.protocol == protocol]
        return (f", and withdrawn after diverging under a fault of Muon's norm, since fixed, so no count above holds them: "
                f"{', '.join(f'{o} {n}' for o, n in counts.items())} (rerun with the fix, and counted above: {len(mine)}, "
                f"of which diverged: {int(mine.diverged.sum())})") if counts else ""

    ours = "; ".join(f"under {PROTOCOL_NAMES[p]}, {row.ours}{withdrawn_text(p)}" for p, row in by_protocol.iterrows())
    if not both and judged(verdict):
        verdict, ours = one_protocol(verdict), f"{ours}; judged {ORIGINAL_ONLY}"
    return {"claim": "M17", "paper": "Muon's curves are smoother, with fewer loss spikes", "ours": ours, "verdict": verdict,
            "judged by": judged_by}


def runs_verdict(every_run: pd.DataFrame) -> dict:
    """M29, the paper's stability analyses "across 100+ training runs": the paper shows none of
    them, so there is nothing to compare ours with (:func:`~muonlib.results.rules.label` of no
    condition); the evidence counts the runs this book read for divergence and spikes, under
    each protocol."""
    counts = [f"{len(runs)} under {PROTOCOL_NAMES[p]} ({(runs.optimizer == 'muon').sum()} Muon, "
              f"{(runs.optimizer == 'adamw').sum()} AdamW, from {runs.experiment.nunique()} experiments)"
              for p in PROTOCOLS if len(runs := every_run[every_run.protocol == p])]
    return {"claim": "M29", "paper": f"stability analyses across {QUOTES['M29'].value}+ training runs",
            "ours": f"the paper shows none of its runs; the book holds {', '.join(counts)}, every one read for divergence and loss spikes",
            "verdict": label(None)}
