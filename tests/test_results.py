"""The saved GPU results behind the ledger's verdicts: complete, with provenance, and still
saying what the ledger says (the notebooks show; these tests guard)."""

from pathlib import Path

import numpy as np

from muonlib.experiments import EXPERIMENTS, load_results, read_run, token_consumption_ratio

RESULTS = Path(__file__).resolve().parents[1] / "data" / "results" / "xs_muon_vs_adamw"


def final_losses():
    runs = load_results(RESULTS)
    last = runs.loc[runs.groupby("run").step.idxmax()]
    return runs, last.set_index(["optimizer", "lr", "seed"]).val_loss


def test_every_run_is_final_and_has_provenance():
    experiment = EXPERIMENTS["xs_muon_vs_adamw"]
    files = sorted(RESULTS.glob("h100-*.jsonl"))
    assert len(files) == sum(len(r) for r in experiment.learning_rates.values()) + 2 * len(experiment.extra_seeds)
    for path in files:
        header, records, final = read_run(path)
        prov = header["provenance"]
        assert final is not None and len(records) == prov["config"]["steps"]
        assert prov["gpu"] and prov["torch"] and prov["date"] and len(prov["git_commit"]) >= 7 and "+dirty" not in prov["git_commit"]


def test_the_verdicts_of_the_training_chapter():
    runs, final = final_losses()
    sweep = final.xs(0, level="seed")
    best = {opt: sweep[opt].idxmin() for opt in ("adamw", "muon")}
    assert all(not np.isclose(lr, 2.5e-3) for lr in best.values())  # M14: Table 1's rate is best for neither
    for opt in best:  # each best rate lies inside its sweep, not at an edge
        assert min(EXPERIMENTS["xs_muon_vs_adamw"].learning_rates[opt]) < best[opt] < max(EXPERIMENTS["xs_muon_vs_adamw"].learning_rates[opt])
    mean = {opt: final[opt][best[opt]].mean() for opt in best}
    assert 1 - mean["muon"] / mean["adamw"] > 0.04  # M18: more than the paper's 2-4%
    curves = {opt: runs[(runs.optimizer == opt) & (runs.lr == best[opt])].dropna(subset=["val_loss"]).groupby("tokens").val_loss.mean()
              for opt in best}
    target = mean["adamw"] + 0.05
    ratio = token_consumption_ratio(*((c.index, c.values) for c in (curves["adamw"], curves["muon"])), target)
    assert ratio > 1 / 0.45  # M15: Muon needs well under half of AdamW's tokens
