"""The inference chapter: the decode benchmark's rows against the companion papers' claims."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..data import data_root
from .paper import PAPER_INFERENCE
from .rules import saving_band, speedup_verdict


@dataclass
class DecodeResults:
    """The decode benchmark's rows (``python -m muonlib.bench decode``) and its provenance.

        >>> decode = DecodeResults.load()
        >>> decode.speed_table().loc["mha"].index.tolist()
        [1, 16, 64, 256]
    """

    rows: pd.DataFrame
    provenance: dict

    @classmethod
    def load(cls, path: Path | None = None) -> "DecodeResults":
        data = json.loads((Path(path) if path is not None else data_root() / "bench" / "decode.json").read_text())
        rows = pd.DataFrame([r for r in data["results"] if "error" not in r])
        return cls(rows, data["provenance"])

    @property
    def base_context(self) -> int:
        return int(self.rows.context.min())

    def speed_table(self, context: int | None = None) -> pd.DataFrame:
        """Tokens/s per model (rows) and batch (columns) at one context (default: the models' own)."""
        rows = self.rows[self.rows.context == (context or self.base_context)]
        return rows.pivot(index="model", columns="batch", values="tokens_per_s")

    def ceiling_table(self, context: int | None = None) -> pd.DataFrame:
        """Each model's bandwidth- or compute-bound ceiling in tokens/s, per batch (see
        :func:`muonlib.bench.decode_roofline`)."""
        rows = self.rows[self.rows.context == (context or self.base_context)]
        return rows.pivot(index="model", columns="batch", values="ceiling_tokens_per_s")

    def roofline_table(self, context: int | None = None) -> pd.DataFrame:
        rows = self.rows[self.rows.context == (context or self.base_context)]
        return rows.pivot(index="model", columns="batch", values="roofline_share")

    def cache_table(self) -> pd.DataFrame:
        """Per model: cache bytes per token and layer, measured over analytic, and the saving against MHA (%)."""
        rows = self.rows[self.rows.context == self.base_context].groupby("model").agg(
            bytes_per_token_layer=("kv_bytes_per_token_layer", "first"),
            measured_over_analytic=("kv_bytes_measured", "sum"), analytic=("kv_bytes_analytic", "sum"))
        rows["measured_over_analytic"] /= rows.pop("analytic")
        rows["saving vs MHA %"] = 100 * (1 - rows.bytes_per_token_layer / rows.bytes_per_token_layer["mha"])
        return rows

    def verdicts(self) -> pd.DataFrame:
        """E1 (KV saving), E2 (MoE-MLA's speed-up over dense MHA) and A3 (r = d/2 over full rank)."""
        cache = self.cache_table()
        saving, deviation = cache["saving vs MHA %"]["moe-mla"], (cache.measured_over_analytic - 1).abs().max()
        paper = PAPER_INFERENCE["E1"]
        e1 = saving_band(saving, paper)
        speed, ceiling, share = self.speed_table(), self.ceiling_table(), self.roofline_table()
        pairs = {"E2": ("moe-mla", "mha"), "A3": ("mla", "mla-full")}
        measured = {c: speed.loc[a] / speed.loc[b] for c, (a, b) in pairs.items()}
        predicted = {c: ceiling.loc[a] / ceiling.loc[b] for c, (a, b) in pairs.items()}
        shares = {c: list(zip(share.loc[a], share.loc[b])) for c, (a, b) in pairs.items()}
        e2, a3 = (speedup_verdict(predicted[c], measured[c], shares[c], PAPER_INFERENCE[c]) for c in ("E2", "A3"))
        moe, low_rank = measured["E2"], measured["A3"]
        batches = ", ".join(str(b) for b in speed.columns)

        def beside(claim: str) -> str:
            a, b = pairs[claim]
            return (f"; the bytes each step reads predict {predicted[claim].min():.2f}-{predicted[claim].max():.2f}x; ours at "
                    f"{share.loc[a].min():.0%}-{share.loc[a].max():.0%} ({a}) and {share.loc[b].min():.0%}-{share.loc[b].max():.0%} "
                    f"({b}) of their rooflines")
        return pd.DataFrame([
            {"claim": "E1", "paper": f"{paper:g}% KV-cache reduction against dense",
             "ours": f"{saving:.1f}% fewer cache bytes per token than MHA (latent r = d/2 plus a rotary key of half a head), "
                     f"measured within {100 * deviation:.1f}% of the analytic count", "verdict": e1},
            {"claim": "E2", "paper": f"{PAPER_INFERENCE['E2']:g}x inference speed-up",
             "ours": f"MoE-MLA decodes at {moe.min():.2f}-{moe.max():.2f}x MHA's tokens/s (batch {batches}, context "
                     f"{self.base_context})" + beside("E2"), "verdict": e2},
            {"claim": "A3", "paper": f"r = d/2 decodes {PAPER_INFERENCE['A3']:g}x faster than full-rank MLA",
             "ours": f"{low_rank.min():.2f}-{low_rank.max():.2f}x (batch {batches}, context {self.base_context})" + beside("A3"),
             "verdict": a3},
        ]).set_index("claim")
