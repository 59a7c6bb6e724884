"""Every number the book quotes from the three papers, in one registry: claim id (or
"recipe", section 4.2's training settings) -> the value and where the paper states it (the
texts in ``shared/paper`` carry no page numbers, so a quote names its table, section or the
abstract). Chapters, verdicts and the ledger read the values from here; the names below
:data:`QUOTES` are views of it, by the chapter that uses them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MUON, MOE_MLA, MLA = "Muon (arXiv 2509.24406)", "MoE-MLA-RoPE (arXiv 2508.01261)", "MLA (arXiv 2506.09342)"

#: Table 2's rows by our ablation arms' names (both of our "no RMS matching" arms stand for its one row)
BASELINE, ADAMW_ARM = "Muon (as specified)", "AdamW"


@dataclass(frozen=True)
class Quote:
    """A number as one of the papers states it."""

    value: Any
    where: str  # the paper, and the table or section that states it
    what: str  # what the number measures, in its units


#: claim id -> what the papers state
QUOTES: dict[str, Quote] = {
    "recipe": Quote({"warmup": (0.5, 2.0), "momentum": 0.9, "clip": 1.0, "weight decay": (0.05, 0.1)}, f"{MUON}, section 4.2",
                    "the recipe every experiment uses: linear warm-up in % of training before cosine decay, Muon's momentum "
                    "beta, the gradient-clipping norm, the weight decays"),
    "M4": Quote(0.2, f"{MUON}, Algorithm 1 line 7 (and sections 4.2 and 5.4)",
                "the constant c of the update scale s = c sqrt(n) that matches AdamW's update RMS and transfers rates across widths"),
    "M5": Quote((0.7, 1.3), f"{MUON}, section 2.2", "the band the K = 5 coefficients leave every singular value in"),
    "M5 coefficients": Quote((3.4445, -4.7750, 2.0315), f"{MUON}, section 2.2", "the quintic's coefficients (a, b, c), optimised for K = 5"),
    "M12": Quote(50.0, f"{MUON}, section 2.5", "optimizer-state memory saved against AdamW, %"),
    "M14": Quote({"XS": 2.5e-3, "S": 2.0e-3, "M": 1.8e-3, "L": 1.6e-3, "XL": 1.2e-3}, f"{MUON}, Table 1",
                 "recommended peak learning rate LR_max per size, one rate for both optimizers"),
    "M15": Quote((48, 52), f"{MUON}, abstract and section 5.1", "Muon's share of AdamW's FLOPs to any loss threshold, %"),
    "M18": Quote((2, 4), f"{MUON}, section 5.1", "final loss lower with Muon at equal compute, %"),
    "M19": Quote((2**17, 2**23), f"{MUON}, section 3.1", "the batch sizes Figure 2's token ratio is measured at, tokens per step"),
    "M22": Quote({BASELINE: (8.462, 17, 0, 2.1), "no orthogonalisation": (8.521, 22, 3, 2.1), "K = 3": (8.471, 18, 0, 2.1),
                  "K = 10": (8.465, 17, 0, 2.2), "Taylor coefficients": (8.478, 18, 1, 2.1), "no weight decay": (8.612, 25, 5, 2.1),
                  "no RMS matching (lr unscaled)": (8.543, 23, 7, 2.1), "no RMS matching (Keller Jordan's scale)": (8.543, 23, 7, 2.1),
                  "dynamic RMS (per layer)": (8.468, 17, 0, 2.1), ADAMW_ARM: (8.579, 33, 2, 3.2)},
                 f"{MUON}, Table 2 (on M)", "per row: validation perplexity, steps to target in thousands, loss spikes, memory in GB"),
    "M23": Quote({("mha", "adamw"): (24.3, 1000, 4.72, 8.54, 1.00), ("mha", "muon"): (14.1, 1050, 4.09, 8.43, 0.52),
                  ("mla", "adamw"): (23.8, 1200, 4.31, 8.58, 0.98), ("mla", "muon"): (13.7, 1250, 3.68, 8.46, 0.51),
                  ("moe-mla", "adamw"): (21.5, 3200, 7.82, 7.39, 0.90), ("moe-mla", "muon"): (12.3, 3350, 5.41, 7.25, 0.48)},
                 f"{MUON}, Table 3 (on XL, batch 32)",
                 "per row: train time to target in hours, inference tokens/s, peak memory in GB, final perplexity, FLOPs to "
                 "target relative to MHA + AdamW"),
    "M24": Quote((8, 12), f"{MUON}, abstract", "perplexity improvement of MLA + MoE + Muon, %"),
    "M24 memory": Quote(68.0, f"{MUON}, abstract", "memory reduction of MLA + MoE + Muon, % (the abstract does not say against what)"),
    "M26": Quote((10, 15), f"{MUON}, section 3.1", "Muon's tokens to a target against AdamW's, % fewer (set against section 5.1's "
                 "share of the FLOPs, M15's)"),
    "M29": Quote(100, f"{MUON}, abstract", "training runs the stability analyses span, at least"),
    "E1": Quote(68.0, f"{MOE_MLA}, abstract", "KV-cache memory reduction against dense, %"),
    "E2": Quote(3.2, f"{MOE_MLA}, abstract", "inference speed-up over dense, x"),
    "E3": Quote(0.8, f"{MOE_MLA}, abstract", "perplexity degradation against dense baselines, %"),
    "E4": Quote({"loss": -6.9, "active": -42.0, "dense": 53.9}, f"{MOE_MLA}, abstract",
                "validation loss and active parameters per forward pass against a dense model, %, and that model's size in millions"),
    "E5": Quote(-11.1, f"{MOE_MLA}, abstract", "FLOP-matched improvement over dense, %"),
    "E6": Quote(3.6e7, f"{MOE_MLA}, abstract", "possible combinations of the routed experts a token takes (6 of 62)"),
    "E8": Quote(40.0, f"{MOE_MLA}, limitations (as summarised)", "training-time overhead, %"),
    "A1": Quote({"loss": 0.3, "cache": 45.0}, f"{MLA}, abstract", "MLA + RoPE at r = d/2: validation loss increase and KV-cache reduction, %"),
    "A2": Quote({"no RoPE": (3, 5), "RoPE": -2.0}, f"{MLA}, abstract", "perplexity against MHA without and with RoPE, %"),
    "A3": Quote(1.4, f"{MLA}, experiments (A100)", "decode speed-up of r = d/2 over full rank, x"),
}

# views by chapter
TABLE1_RATES = QUOTES["M14"].value
TABLE1_XS_RATE = TABLE1_RATES["XS"]
PAPER = {"M15": QUOTES["M15"].value, "M18": QUOTES["M18"].value}
#: M26's two statements as bands of R = T_AdamW / T_Muon: section 3.1's fewer tokens, section 5.1's share of the FLOPs
PAPER_R = {"section 3.1": tuple(1 / (1 - saving / 100) for saving in QUOTES["M26"].value),
           "section 5.1": tuple(100 / share for share in reversed(QUOTES["M15"].value))}
PAPER_BATCHES = QUOTES["M19"].value
PAPER_TABLE2 = QUOTES["M22"].value
PAPER_TABLE3 = QUOTES["M23"].value
#: the companion papers' quality claims, in % (a positive change is a higher loss or perplexity)
PAPER_QUALITY = {"M24": QUOTES["M24"].value, **{c: QUOTES[c].value for c in ("E3", "E5", "E8")}, "E4": QUOTES["E4"].value["loss"],
                 "A2 no RoPE": QUOTES["A2"].value["no RoPE"], "A2 RoPE": QUOTES["A2"].value["RoPE"],
                 "A1": QUOTES["A1"].value["loss"], "A1 cache": QUOTES["A1"].value["cache"]}
PAPER_INFERENCE = {c: QUOTES[c].value for c in ("E1", "E2", "A3")}
