"""What every comparison measures of its runs: the rows its tables are made of (final losses,
gains, tokens to targets, spikes) and the constants they share."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..analysis import SeedSpread, compare, grad_norm_excursions, loss_jumps, paired_spikes, raw_spikes, tokens_to_target


OPTIMIZERS = ("adamw", "muon")
OPTIMIZER_LABELS = {"adamw": "AdamW", "muon": "Muon"}
TARGET_OFFSETS = (0.02, 0.05, 0.1, 0.2, 0.5)  # nats above AdamW's worst final test loss: the targets of R_L
#: how many seed standard deviations a difference must exceed to count as a change
NOISE_SIGMAS = 2.0


def common_steps(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two runs' step records over the steps both reached (a diverged run ends early)."""
    n = min(len(a), len(b))
    return a.sort_values("step").iloc[:n], b.sort_values("step").iloc[:n]


def final_rows(chosen: dict[str, pd.DataFrame]) -> list[dict]:
    """Per optimizer and seed of one setting's chosen runs: final validation and test loss (NaN
    for a run that diverged), and the lowest validation loss with its step (below the final
    one where a curve turns up)."""
    rows = []
    for opt in OPTIMIZERS:
        for seed, run in chosen[opt].groupby("seed"):
            evals = run.dropna(subset=["val_loss"])
            diverged = bool(run.diverged.iloc[0])
            lowest = evals.loc[evals.val_loss.idxmin()] if len(evals) else None
            last = evals.loc[evals.step.idxmax()] if len(evals) and not diverged else None
            rows.append({"optimizer": opt, "seed": seed, "lr": run.lr.iloc[0], "diverged": diverged,
                         "val_loss": np.nan if last is None else last.val_loss,
                         "test_loss": np.nan if last is None else last.test_loss,
                         "min_val_loss": np.nan if lowest is None else lowest.val_loss,
                         "min_val_step": -1 if lowest is None else int(lowest.step)})
    return rows


def gap_row(final: pd.DataFrame) -> dict:
    """Final test loss of one setting and Muon's gain ``1 - L_Muon / L_AdamW`` (%) per seed
    pair; ``separated`` is -1 where every Muon seed beats every AdamW seed; seeds that
    diverged are counted, not averaged."""
    loss = {opt: final[final.optimizer == opt].set_index("seed").test_loss.dropna() for opt in OPTIMIZERS}
    gain = SeedSpread(tuple(100 * (1 - loss["muon"] / loss["adamw"]).dropna()))
    return {"AdamW": SeedSpread(tuple(loss["adamw"])), "Muon": SeedSpread(tuple(loss["muon"])), "gain %": gain,
            "separated": compare(loss["muon"], loss["adamw"]), "diverged": int(final.diverged.sum())}


def equal_compute_gap_row(chosen: dict[str, pd.DataFrame], newton_schulz: float) -> dict:
    """:func:`gap_row` on AdamW's training FLOPs, Newton-Schulz counted (``newton_schulz``, its
    share of a step's FLOPs): Muon's test loss read off its curve at ``1 / (1 + newton_schulz)``
    of the tokens (linearly between evaluations) against AdamW's final one. Muon's schedule has
    not finished decaying there, so this gain is a lower bound on that of a run planned for
    those FLOPs."""
    final = []
    for opt in OPTIMIZERS:
        for seed, run in chosen[opt].groupby("seed"):
            if run.diverged.iloc[0]:  # counted, not read at its last finite evaluation, as gap_row does
                final.append({"optimizer": opt, "seed": seed, "diverged": True, "test_loss": np.nan})
                continue
            curve = run.dropna(subset=["test_loss"]).sort_values("tokens")
            tokens = curve.tokens.iloc[-1] / (1 + newton_schulz) if opt == "muon" else curve.tokens.iloc[-1]
            final.append({"optimizer": opt, "seed": seed, "diverged": False,
                          "test_loss": float(np.interp(tokens, curve.tokens, curve.test_loss))})
    return gap_row(pd.DataFrame(final))


def ratio_rows(chosen: dict[str, pd.DataFrame], offsets) -> list[dict]:
    """Tokens each optimizer needs to reach a test-loss target, per seed pair (same seed, same
    batches), and ``R_L = T_AdamW / T_Muon``; targets are the highest final test loss of
    AdamW's seeds plus ``offsets``, so that every run reaches every target."""
    curves = {opt: {seed: run.dropna(subset=["test_loss"]).sort_values("step")
                    for seed, run in chosen[opt].groupby("seed") if not run.diverged.iloc[0]}
              for opt in OPTIMIZERS}
    final = max(c.test_loss.iloc[-1] for c in curves["adamw"].values())
    rows = []
    for offset in offsets:
        target = final + offset
        for seed in sorted(set(curves["adamw"]) & set(curves["muon"])):
            t = {opt: tokens_to_target(curves[opt][seed].tokens, curves[opt][seed].test_loss, target) for opt in OPTIMIZERS}
            rows.append({"offset": offset, "target": target, "seed": seed,
                         "AdamW tokens": t["adamw"], "Muon tokens": t["muon"], "R": t["adamw"] / t["muon"]})
    return rows


def spike_rows(chosen: dict[str, pd.DataFrame]) -> list[dict]:
    """Per seed of one setting's chosen runs: raw spikes (a loss 10% above its recent median),
    paired spikes (10% above the other optimizer's loss on the same batch, relative to their
    recent ratio), gradient-norm excursions, and how closely the two runs' loss jumps follow
    each other (the raw detector's share of batch difficulty)."""
    runs = {opt: dict(iter(chosen[opt].sort_values("step").groupby("seed"))) for opt in OPTIMIZERS}
    rows = []
    for seed in sorted(set(runs["adamw"]) & set(runs["muon"])):
        a, m = common_steps(runs["adamw"][seed], runs["muon"][seed])
        ja, jm = loss_jumps(a.loss.values), loss_jumps(m.loss.values)
        known = ~np.isnan(ja)
        for opt, run, other in (("adamw", a, m), ("muon", m, a)):
            rows.append({"seed": seed, "optimizer": opt,
                         "raw spikes": int(raw_spikes(run.loss.values).sum()),
                         "paired spikes": int(paired_spikes(run.loss.values, other.loss.values).sum()),
                         "grad-norm excursions": int(grad_norm_excursions(run.grad_norm.values).sum()),
                         "jump correlation": float(np.corrcoef(ja[known], jm[known])[0, 1])})
    return rows


def newton_schulz_share(header: dict) -> float:
    """Newton-Schulz FLOPs of a Muon step over the model's training FLOPs per step (the
    quintic iteration's dense matmuls, 5 steps, on every hidden matrix), from a result header."""
    import torch

    from ..linalg import newton_schulz_flops
    from ..models import GPT, preset
    from ..optim import classify_parameters

    config = header["provenance"]["config"]
    with torch.device("meta"):
        model = GPT(preset(config["model"], config["variant"], **config["model_changes"]))
    ns = sum(newton_schulz_flops(*p.shape[-2:]) * (p.numel() // (p.shape[-2] * p.shape[-1]))
             for _, p in classify_parameters(model)["hidden"])
    return ns / header["flops_per_step"]


def spread_text(g: SeedSpread) -> str:
    return f"{g.mean:.1f}% (seeds {g.low:.1f}-{g.high:.1f})"
