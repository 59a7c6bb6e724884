"""The ablations chapter: Table 2 at XS, one change to Muon at a time."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from ..analysis import SeedSpread, compare, paired_spikes, tokens_to_target
from ..experiments import experiment, load_results
from .paper import ADAMW_ARM, BASELINE, PAPER_TABLE2
from .protocols import Protocols
from .rules import NOT_RUN, label, one_protocol_table
from .runs import NOISE_SIGMAS, common_steps


def optimizer_state_bytes(config: dict) -> int:
    """Bytes of optimizer state a run's configuration keeps (what its optimizer allocates on
    its first step, counted on a CPU): AdamW's two moments per parameter, or Muon's momentum
    per hidden matrix beside AdamW's moments for the rest. Muon's options change none of it."""
    return _state_bytes(config["model"], config["variant"], json.dumps(config["model_changes"], sort_keys=True), config["optimizer"])


@lru_cache(maxsize=None)
def _state_bytes(model_name: str, variant: str, changes: str, optimizer_name: str) -> int:
    import torch

    from ..models import GPT, preset
    from ..optim import build_optimizer

    model = GPT(preset(model_name, variant, **json.loads(changes)))
    cheap = {"fused": False, "orthogonalize": "frobenius"} if optimizer_name == "muon" else {}  # the same state, no Newton-Schulz on a CPU
    optimizer = build_optimizer(model, optimizer_name, lr=1e-3, weight_decay=0.1, **cheap)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    return sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t))


@dataclass
class AblationResults:
    """Table 2 measured: Muon as specified against one change at a time, and AdamW, each
    over three seeds at the budget and rates the XS comparison chose (``arm`` is a column of
    ``runs``).

        >>> results = AblationResults.load()
        >>> results.arms[0], results.arms[-1]
        ('Muon (as specified)', 'AdamW')
    """

    runs: pd.DataFrame
    headers: dict  # run -> its result file's header
    arms: list[str]  # the baseline, the ablations, AdamW

    @classmethod
    def load(cls, name: str = "ablations", hardware: str = "h100", results: Path | None = None, protocol: str = "original") -> "AblationResults":
        from ..experiments import finished_runs, original_reader, read_run, result_files, result_folders, run_id

        folders = [f for f in result_folders(name, results, protocol) if f.exists()]
        reader = original_reader(hardware, protocol)
        design = experiment(name).plan_for(hardware, protocol)
        wanted, decisions = design.plan(hardware, finished_runs(folders, reader))
        baseline = design.baseline(decisions)
        adamw = design.adamw(decisions)
        arm_of = {run_id(dataclasses.replace(c, seed=s), hardware): arm
                  for c, arm in ((baseline, BASELINE), (adamw, ADAMW_ARM)) for s in design.seeds}
        arm_of |= {run_id(c, hardware): design.arm_of(c, baseline) for c in wanted if design.arm_of(c, baseline)}
        runs = pd.concat([load_results(f, reader) for f in folders], ignore_index=True)
        runs = runs[runs.run.isin(arm_of)].drop_duplicates(["run", "step"]).copy()
        runs["arm"] = runs.run.map(arm_of)
        headers = {run: read_run(path)[0] for run, path in result_files(folders, reader).items() if run in arm_of}
        finished = set(runs.arm)
        arms = [a for a in (BASELINE, *design.arms, ADAMW_ARM) if a in finished]
        return cls(runs, headers, arms)

    def arm(self, arm: str) -> pd.DataFrame:
        return self.runs[self.runs.arm == arm]

    def final_table(self) -> pd.DataFrame:
        """Per arm and seed: final validation and test loss (NaN if diverged), peak memory."""
        rows = []
        for arm in self.arms:
            for seed, run in self.arm(arm).groupby("seed"):
                evals = run.dropna(subset=["val_loss"]).sort_values("step")
                diverged = bool(run.diverged.iloc[0])
                rows.append({"arm": arm, "seed": seed, "diverged": diverged,
                             "val_loss": np.nan if diverged else evals.val_loss.iloc[-1],
                             "test_loss": np.nan if diverged else evals.test_loss.iloc[-1],
                             "peak memory GB": run.peak_memory_gb.max()})
        return pd.DataFrame(rows)

    def target(self) -> float:
        """The test loss "steps to target" counts to: the highest final one of AdamW's seeds."""
        return float(self.final_table().query("arm == @ADAMW_ARM").test_loss.max())

    def arm_table(self) -> pd.DataFrame:
        """Table 2's columns per arm, on the test split (the rates were chosen on validation):
        perplexity, the change in loss against Muon as specified and whether it exceeds the
        seed spread (``separated``: -1 lower, +1 higher), steps to :meth:`target`, paired loss spikes against AdamW's run on
        the same batches, peak memory and optimizer-state bytes; every column over seeds."""
        final = self.final_table()
        base = final[final.arm == BASELINE].set_index("seed").test_loss
        target = self.target()
        adamw = dict(iter(self.arm(ADAMW_ARM).sort_values("step").groupby("seed")))
        rows = []
        for arm in self.arms:
            f = final[final.arm == arm].set_index("seed")
            loss = f.test_loss.dropna()
            steps, spikes = [], []
            for seed, run in self.arm(arm).sort_values("step").groupby("seed"):
                evals = run.dropna(subset=["test_loss"])
                steps.append(tokens_to_target(evals.step, evals.test_loss, target))
                if arm != ADAMW_ARM and seed in adamw:
                    a, b = common_steps(run, adamw[seed])
                    spikes.append(int(paired_spikes(a.loss.values, b.loss.values).sum()))
            header = self.headers[self.arm(arm).run.iloc[0]]
            rows.append({"arm": arm, "test loss": SeedSpread(tuple(loss)), "test perplexity": float(np.exp(loss.mean())) if len(loss) else np.nan,
                         "change": loss.mean() - base.mean(), "separated": compare(loss, base) if len(loss) else 1,
                         "diverged": int(f.diverged.sum()), "steps to target": SeedSpread(tuple(steps)),
                         "paired spikes": SeedSpread(tuple(spikes)) if spikes else None,
                         "peak memory GB": f["peak memory GB"].mean(), "optimizer state MB": optimizer_state_bytes(header["provenance"]["config"]) / 1e6})
        return pd.DataFrame(rows).set_index("arm")

    def resolvable(self) -> pd.DataFrame:
        """Per paper row: its change in validation loss against full Muon (from perplexities)
        and whether a change that size would exceed our seed spread (``NOISE_SIGMAS`` standard
        deviations of the baseline's final test loss)."""
        std = self.final_table().query("arm == @BASELINE").test_loss.std()
        full = PAPER_TABLE2[BASELINE][0]
        return pd.DataFrame([{"arm": arm, "paper's change": math.log(row[0] / full), "our seed std": std,
                              "resolvable": abs(math.log(row[0] / full)) > NOISE_SIGMAS * std}
                             for arm, row in PAPER_TABLE2.items() if arm != BASELINE]).set_index("arm")

    def verdicts(self, capped: bool = True, why: str = NOT_RUN) -> pd.DataFrame:
        """M22: every change the paper's Table 2 lists makes Muon worse, and AdamW is worse still
        than Muon (as the paper's rows all say), judged over those arms (ours that stand for its
        rows; the extra arms are shown, not judged) and AdamW: each worse beyond the seed
        spread, or at least most of them (see :func:`~muonlib.results.rules.label`).
        ``capped``: as these runs alone judge it, one protocol's, ``why`` they judge alone
        (:func:`~muonlib.results.rules.one_protocol_table`); else as they found, for
        :class:`AblationProtocols` to set beside another protocol's."""
        table = self.arm_table()
        arms = [a for a in self.arms if a in PAPER_TABLE2 and a != BASELINE]
        worse = [a for a in arms if table.separated[a] == 1]
        better = [a for a in arms if table.separated[a] == -1]
        level = [a for a in arms if table.separated[a] == 0]
        resolvable = self.resolvable()
        # two conditions: every row worse, and most rows worse (a table of rows at three seeds each
        # shows a spurious separation now and then, so one row does not decide it)
        verdict = label([len(worse) == len(arms), len(worse) >= len(better)], fails=[False, len(better) > len(worse)])
        verdicts = pd.DataFrame([{
            "claim": "M22", "paper": "every ablated component costs validation perplexity; AdamW is worse than Muon",
            "ours": f"of the paper's rows at XS, test loss higher beyond the seed spread: {', '.join(worse) or 'none'}; within it: {', '.join(level) or 'none'}; "
                    f"better: {', '.join(better) or 'none'}; the paper's changes our seed spread can resolve: "
                    f"{int(resolvable.resolvable.sum())} of {len(resolvable)}",
            "verdict": verdict}]).set_index("claim")
        return one_protocol_table(verdicts, why=why) if capped else verdicts


class AblationProtocols(Protocols):
    """Table 2's verdict under each protocol (:class:`~muonlib.results.protocols.Protocols`)."""

    experiment, results_type = "ablations", AblationResults


def arms_by_kind(name: str = "ablations", protocol: str = "paper") -> pd.DataFrame:
    """Each arm's change in test loss against Muon as specified, and whether it is beyond the
    seed spread (-1 lower, +1 higher), on every GPU kind that ran a protocol's arms, each
    against runs of its own kind (:meth:`AblationResults.arm_table`): whether the GPU kind
    moves an arm's finding. An arm a kind has not run every seed of is NaN there."""
    from ..experiments import ran_on, results_folder

    kinds = sorted({ran_on(path) for path in results_folder(name, protocol).glob("*.jsonl.gz")})
    columns, ran = {}, set()
    for kind in kinds:
        table = AblationResults.load(name, kind, protocol=protocol).arm_table()
        complete = [len(spread.values) == len(experiment(name).plan_for(kind, protocol).seeds) for spread in table["test loss"]]
        columns |= {(kind.upper(), "change"): table.change.where(complete), (kind.upper(), "separated"): table.separated.where(complete)}
        ran |= set(table.index)
    order = [a for a in (*experiment(name).plan_for(kinds[0], protocol).arms, ADAMW_ARM) if a in ran] if kinds else []
    return pd.DataFrame(columns).reindex(order)  # the chapter's order, not the alphabet's

