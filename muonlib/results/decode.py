"""The inference chapter: the decode benchmark's rows against the companion papers' claims."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..data import data_root
from .paper import PAPER_INFERENCE
from .rules import saving_band, speedup_verdict


#: the decode path's targets, this library's and not the papers', each a description and what
#: its ratio or roofline share must reach at every cell it covers; each architecture is judged
#: at its fastest decoder measured in the cell (eager or compiled; ``DecodeResults.fastest``)
DECODE_TARGETS = {
    "mha_vs_graph_anchor": ("MHA's tokens/s over the plain CUDA-graph anchor's, every batch and cache", 1.0),
    "mha_vs_hf_anchor": ("MHA's tokens/s over Hugging Face's static cache, every batch and cache", 1.5),
    "mha_roofline_share": ("MHA's share of its roofline at batch 64 and more", 0.5),
    "mla_roofline_share": ("MLA's share of its roofline at batch 64 and more", 0.5),
    "mla_vs_mha_long_context": ("MLA's tokens/s over MHA's at the long cache, batch 64 and more", 2.0),
    "moe_mla_roofline_share": ("MoE-MLA's share of its roofline at batch 64 and more", 0.4),
}


def architecture(model: str) -> str:
    """The benchmark arm that ``model`` times another decoder of (``mla-compiled``: ``mla``), or
    ``model`` itself: the arms in :data:`muonlib.bench.DECODER_OPTIONS` build their arm's model."""
    from ..bench import DECODE_MODELS, DECODER_OPTIONS

    if model not in DECODER_OPTIONS:
        return model
    return next(m for m, built in DECODE_MODELS.items() if built == DECODE_MODELS[model] and m not in DECODER_OPTIONS)


@dataclass
class DecodeResults:
    """The decode benchmark's rows (``python -m muonlib.bench decode``) and its provenance.

        >>> decode = DecodeResults.load()
        >>> decode.speed_table().loc["mha"].index.tolist()
        [1, 16, 64, 256]
    """

    rows: pd.DataFrame
    provenance: dict
    #: the anchors' rows, timed in the same run (empty for a benchmark saved before they were)
    anchors: pd.DataFrame = field(default_factory=pd.DataFrame)

    @classmethod
    def load(cls, path: Path | None = None) -> "DecodeResults":
        data = json.loads((Path(path) if path is not None else data_root() / "bench" / "decode.json").read_text())
        rows = pd.DataFrame([r for r in data["results"] if "error" not in r])
        anchor = rows["anchor"].eq(True) if "anchor" in rows else pd.Series(False, index=rows.index)
        return cls(rows[~anchor].reset_index(drop=True), data["provenance"], rows[anchor].reset_index(drop=True))

    def fastest(self) -> pd.DataFrame:
        """Per architecture, context and batch, the fastest of its decoders measured there: its
        tokens/s, roofline share and which arm it was."""
        rows = self.rows.reset_index(drop=True).pipe(lambda r: r.assign(architecture=r.model.map(architecture)))
        best = rows.loc[rows.groupby(["architecture", "context", "batch"]).tokens_per_s.idxmax()]
        return best[["architecture", "context", "batch", "model", "tokens_per_s", "roofline_share"]].reset_index(drop=True)

    def anchor_table(self) -> pd.DataFrame:
        """Tokens/s of muonlib's MHA and MLA decoders and of each anchor (columns) per context and
        batch (rows), where the anchors ran."""
        models = self.rows[self.rows.model.map(architecture).isin(["mha", "mla"])
                           & self.rows.context.isin(set(self.anchors.get("context", [])))]
        return pd.concat([models, self.anchors]).pivot_table(index=["context", "batch"], columns="model", values="tokens_per_s")

    def goals(self) -> pd.DataFrame:
        """The decode path's targets (:data:`DECODE_TARGETS`), each with the worst measured value
        over the cells it covers and whether it is met (``None`` where its cells were not measured)."""
        from ..bench import GRAPH_ANCHOR, HF_ANCHOR

        fastest = self.fastest()
        speed = fastest.pivot_table(index=["context", "batch"], columns="architecture", values="tokens_per_s")
        share = fastest.pivot_table(index=["context", "batch"], columns="architecture", values="roofline_share")
        anchors = self.anchors.pivot_table(index=["context", "batch"], columns="model", values="tokens_per_s") \
            if len(self.anchors) else pd.DataFrame(index=speed.index)
        large = speed.index.get_level_values("batch") >= 64
        long = speed.index.get_level_values("context") == speed.index.get_level_values("context").max()
        ratio = lambda a, b: (a / b).dropna() if a is not None and b is not None else pd.Series(dtype=float)  # noqa: E731
        column = lambda frame, name: frame[name] if name in frame else None  # noqa: E731
        measured = {
            "mha_vs_graph_anchor": ratio(column(speed, "mha"), column(anchors, GRAPH_ANCHOR)),
            "mha_vs_hf_anchor": ratio(column(speed, "mha"), column(anchors, HF_ANCHOR)),
            "mha_roofline_share": share["mha"][large].dropna(),
            "mla_roofline_share": share["mla"][large].dropna(),
            "mla_vs_mha_long_context": ratio(speed["mla"][large & long], speed["mha"][large & long]),
            "moe_mla_roofline_share": share["moe-mla"][large].dropna() if "moe-mla" in share else pd.Series(dtype=float),
        }
        return pd.DataFrame([{"goal": DECODE_TARGETS[goal][0], "target": DECODE_TARGETS[goal][1],
                              "worst measured": values.min() if len(values) else None,
                              "met": bool(values.min() >= DECODE_TARGETS[goal][1]) if len(values) else None}
                             for goal, values in measured.items()]).set_index("goal")

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


def latent_sweep(path: Path | None = None) -> tuple[pd.DataFrame, dict, dict]:
    """The latent-attention sweep (``python -m muonlib.bench latent``): per size, cache length
    and batch, MLA's decode attention in plain torch and through the kernel at the one launch
    that is fastest over all cells (by the geometric mean of its time over each cell's best,
    among the launches measured in every cell), each as microseconds and a share of the copy
    bandwidth; that launch, with its worst ratio to a cell's best launch; and the file's
    provenance."""
    import ast

    import numpy as np

    data = json.loads((Path(path) if path is not None else data_root() / "bench" / "latent_attention.json").read_text())
    rows = pd.DataFrame([r for r in data["results"] if "ms" in r])
    rows = rows[rows.splits.isna()]  # the default split of the cache (the sweep also doubles it)
    cell = ["size", "context", "batch"]
    kernel = rows[rows.arm != "torch"].copy()
    kernel["over_best"] = kernel.ms / kernel.groupby(cell).ms.transform("min")
    cells = kernel.groupby(cell).ngroups
    everywhere = kernel.groupby("arm").filter(lambda arm: len(arm) == cells)  # a launch that failed somewhere is no choice
    ranking = everywhere.groupby("arm").over_best.agg(lambda r: float(np.exp(np.log(r).mean())))
    best = ranking.idxmin()  # a launch's arm is its configuration written out, or "default"
    chosen = kernel[kernel.arm == best].set_index(cell)
    torch_arm = rows[rows.arm == "torch"].set_index(cell)
    table = pd.DataFrame({"torch (us)": 1e3 * torch_arm.ms, "kernel (us)": 1e3 * chosen.ms,
                          "torch's share of the bandwidth (%)": 100 * torch_arm.bandwidth_share,
                          "kernel's share of the bandwidth (%)": 100 * chosen.bandwidth_share}).sort_index()
    table["kernel's speed-up"] = table["torch (us)"] / table["kernel (us)"]
    launch = ast.literal_eval(best) if best.startswith("{") else None  # None: the kernel's default launch when measured
    return table, {"launch": launch, "worst_over_best": float(chosen.over_best.max())}, data["provenance"]
