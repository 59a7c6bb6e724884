"""What the trained models do: attention entropy per head and continuations of fixed prompts
(the attention_probes experiment, shown in the chapter on latent attention and experts)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..analysis import SeedSpread, compare
from ..data import data_root
from ..experiments import experiment
from .rules import label


def shown_text(text: str) -> str:
    """A continuation as a table shows it: a greedy model that falls into writing whitespace
    would leave a cell that looks empty, so a trailing run of it is said, not shown."""
    kept = text.rstrip()
    return kept + " [then only whitespace]" if len(text) - len(kept) > 2 else text


#: a head whose attention entropy is below this (nats) spreads over about e = 2.7 positions or fewer
SHARP_HEAD = 1.0


@dataclass
class ProbeResults:
    """What the ``attention_probes`` runs measured of their trained models (:mod:`muonlib.probes`):
    one row per run with its architecture (a setting of the experiment it retrains), optimizer,
    attention entropy per layer and head (nats), and continuations of the fixed prompts."""

    rows: pd.DataFrame

    @classmethod
    def load(cls, name: str = "attention_probes", hardware: str = "h100", results: Path | None = None) -> "ProbeResults":
        from ..experiments import RESULT, plan_name, read_run
        from ..train import TrainConfig

        folder = Path(results) if results is not None else data_root() / "results" / name
        source = experiment(experiment(name).design(hardware).source).design(hardware)
        rows = []
        for path in sorted(folder.glob(f"*{RESULT}")):
            if not plan_name(path, hardware).startswith(f"{hardware}-"):
                continue  # another preset's runs (a rerun's beside the saved ones)
            header, _, final = read_run(path)
            if final is None or "attention_entropy" not in final:
                continue
            config = TrainConfig(**header["provenance"]["config"])
            rows.append({"architecture": source.setting_of(config), "optimizer": config.optimizer, "seed": config.seed,
                         "entropy": np.array(final["attention_entropy"]), "continuations": final["continuations"]})
        if not rows:
            raise FileNotFoundError(f"no probed runs in {folder}: run `python -m muonlib.experiments run {name}` on a GPU first")
        return cls(pd.DataFrame(rows))

    def entropy_table(self) -> pd.DataFrame:
        """Per architecture and optimizer (means over seeds): the mean entropy over every
        head, the lowest and highest head's, the heads below ``SHARP_HEAD`` nats, and the
        mean of each layer (first to last)."""
        rows = []
        for r in self.rows.itertuples():
            rows.append({"architecture": r.architecture, "optimizer": r.optimizer, "seeds": 1, "mean": r.entropy.mean(),
                         "lowest head": r.entropy.min(), "highest head": r.entropy.max(), "sharp heads": (r.entropy < SHARP_HEAD).sum(),
                         **{f"layer {i + 1}": layer.mean() for i, layer in enumerate(r.entropy)}})
        table = pd.DataFrame(rows).groupby(["architecture", "optimizer"], sort=False)
        return table.mean().assign(seeds=table.seeds.sum())

    def mean_entropy(self, architecture: str, optimizer: str) -> SeedSpread:
        """Each seed's entropy averaged over every head of the model."""
        runs = self.rows[(self.rows.architecture == architecture) & (self.rows.optimizer == optimizer)].sort_values("seed")
        return SeedSpread(tuple(float(e.mean()) for e in runs.entropy))

    def verdicts(self) -> pd.DataFrame:
        """M28. The paper claims an attention-entropy analysis and shows none (the word
        appears once in it, in the claim): with no result of the paper's to compare ours
        with, the claim cannot be tested here; the evidence gives what the analysis finds
        here: each architecture's mean head entropy under AdamW and Muon, and whether Muon's
        differs beyond the seed spread."""
        parts = []
        for architecture in dict.fromkeys(self.rows.architecture):
            adamw, muon = self.mean_entropy(architecture, "adamw"), self.mean_entropy(architecture, "muon")
            spread = ("" if min(len(adamw.values), len(muon.values)) < 2 else
                      {-1: ", lower beyond the seed spread", 0: ", within the seed spread", 1: ", higher beyond the seed spread"}[
                          compare(muon.values, adamw.values)])
            parts.append(f"{architecture} {adamw.mean:.2f} -> {muon.mean:.2f}{spread}")
        return pd.DataFrame([{
            "claim": "M28", "paper": "the first analysis of attention entropy under joint compression and orthogonalisation",
            "ours": "the paper reports no attention-entropy measurement; ours, mean head entropy in nats, AdamW -> Muon: " + "; ".join(parts),
            "verdict": label(None)}]).set_index("claim")

    def continuation_table(self) -> pd.DataFrame:
        """Every prompt's greedy and sampled continuation, by architecture and optimizer (the
        first seed's model), each as ``shown_text`` shows it."""
        first = self.rows[self.rows.seed == self.rows.seed.min()]
        table = pd.DataFrame([{"architecture": r.architecture, "optimizer": r.optimizer, **c}
                              for r in first.itertuples() for c in r.continuations]).set_index(["prompt", "architecture", "optimizer"])
        return table.map(shown_text)
