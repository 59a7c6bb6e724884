"""The scaling and batch-size chapters: Muon against AdamW over a ladder of settings (model
sizes, batch sizes), each optimizer at its own rate in every setting."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from ..analysis import SWEEP_FACTOR, Budget, SeedSpread, compare, rate_key, sweep_rates, tokens_to_target
from ..experiments import ScalingDecisions, experiment, load_results
from .paper import PAPER, PAPER_BATCHES, PAPER_R, QUOTES, TABLE1_RATES
from .protocols import Protocols
from .rules import (NOT_RUN, across_parts, band_distance, band_verdict, every_target_verdict, gain_bounds, gain_bounds_text, gain_verdict, judged, label, one_protocol,
                    one_protocol_table, original_only)
from .runs import (NOISE_SIGMAS, OPTIMIZERS, TARGET_OFFSETS, equal_compute_gap_row, final_rows, gap_row, newton_schulz_share, ratio_rows,
                   spike_rows, spread_text)


@dataclass
class LadderResults:
    """What the runs of a ladder of settings (a :class:`muonlib.experiments.Scaling`: model
    sizes, batch sizes, architectures) show, setting by setting (``setting`` is a column of
    ``runs``). The classes below add each experiment's own tables and verdicts."""

    name: str
    runs: pd.DataFrame
    decisions: "ScalingDecisions"
    headers: dict  # run -> its result file's header
    settings: list[str]  # in the experiment's order; those where both optimizers have run at a chosen rate

    @classmethod
    def load(cls, name: str, hardware: str = "h100", results: Path | None = None, protocol: str = "original"):
        from ..experiments import finished_runs, original_reader, read_run, result_files, result_folders, run_id

        folders = [f for f in result_folders(name, results, protocol) if f.exists()]
        reader = original_reader(hardware, protocol)
        design = experiment(name).plan_for(hardware, protocol)
        wanted, decisions = design.plan(hardware, finished_runs(folders, reader))
        setting_of = {run_id(c, hardware): design.setting_of(c) for c in wanted}
        runs = pd.concat([load_results(f, reader) for f in folders], ignore_index=True)
        runs = runs[runs.run.isin(setting_of)].drop_duplicates(["run", "step"]).copy()
        runs["setting"] = runs.run.map(setting_of)
        headers = {run: read_run(path)[0] for run, path in result_files(folders, reader).items() if run in setting_of}
        def chosen_ran(s, opt):
            return (s, opt) in decisions.rates and ((runs.setting == s) & (runs.optimizer == opt) & (runs.lr == decisions.rates[s, opt])).any()

        settings = [s for s in design.settings if all(chosen_ran(s, opt) for opt in OPTIMIZERS)]
        return cls(name, runs, decisions, headers, settings)

    # ------------------------------------------------------------ which runs

    def header(self, setting: str, optimizer: str = "muon") -> dict:
        run = self.runs[(self.runs["setting"] == setting) & (self.runs.optimizer == optimizer)].run.iloc[0]
        return self.headers[run]

    @cached_property
    def base_decay(self) -> float:
        return float(self.runs.weight_decay.mode().iloc[0])

    def at(self, setting: str, optimizer: str, weight_decay: float | None = None) -> pd.DataFrame:
        """The sweep and seeds of one setting and optimizer (Muon's with its AdamW part at AdamW's
        chosen rate), at the base weight decay unless another is asked for."""
        r = self.runs
        q = (r["setting"] == setting) & (r.optimizer == optimizer) & (r.weight_decay == (weight_decay or self.base_decay))
        if optimizer == "muon":
            q &= r.adamw_lr == self.decisions.rates[setting, "adamw"]
        return r[q]

    def chosen(self, setting: str, optimizer: str, weight_decay: float | None = None) -> pd.DataFrame:
        runs = self.at(setting, optimizer, weight_decay)
        return runs[runs.lr == self.decisions.rates[setting, optimizer]]

    def _both(self, setting: str, weight_decay: float | None = None) -> dict[str, pd.DataFrame]:
        return {opt: self.chosen(setting, opt, weight_decay) for opt in OPTIMIZERS}

    # ------------------------------------------------------------ tables

    def sweep_table(self) -> pd.DataFrame:
        """Seed-0 final validation loss against the peak rate, per setting and optimizer (``inf``
        where a run diverged), with the rate relative to the first setting's optimum."""
        first = self.settings[0]
        rows = []
        for setting in self.settings:
            for opt in OPTIMIZERS:
                runs = self.at(setting, opt)
                for lr, run in runs[runs.seed == 0].groupby("lr"):
                    last = run.loc[run.step.idxmax()]
                    rows.append({"setting": setting, "optimizer": opt, "lr": lr, "lr / first optimum": lr / self.decisions.rates[first, opt],
                                 "diverged": bool(last.diverged), "val_loss": np.inf if last.diverged else last.val_loss})
        return pd.DataFrame(rows)

    def final_table(self, weight_decay: float | None = None) -> pd.DataFrame:
        """Per setting, optimizer and seed at the chosen rate (see :func:`~muonlib.results.runs.final_rows`)."""
        return pd.DataFrame([{"setting": setting, **row} for setting in self.settings for row in final_rows(self._both(setting, weight_decay))])

    def transfer_table(self) -> pd.DataFrame:
        """Per setting and optimizer: the chosen rate against the first setting's, and what taking
        the first setting's rate unchanged (zero-shot transfer) costs in validation loss, beside
        the seed spread of the chosen rate's loss."""
        first = self.settings[0]
        sweep = self.sweep_table().set_index(["setting", "optimizer", "lr"]).val_loss
        spread = self.final_table().groupby(["setting", "optimizer"]).val_loss.std()
        rows = []
        for setting in self.settings:
            for opt in OPTIMIZERS:
                lr, transferred = self.decisions.rates[setting, opt], self.decisions.rates[first, opt]
                rows.append({"setting": setting, "optimizer": opt, "chosen lr": lr, "first setting's lr": transferred,
                             "shift": lr / transferred, "Table 1 lr": TABLE1_RATES.get(setting, np.nan),
                             "transfer penalty": sweep.get((setting, opt, transferred), np.nan) - sweep[setting, opt, lr],
                             "seed std": spread[setting, opt]})
        return pd.DataFrame(rows)

    def narrowed_choice(self, setting: str, optimizer: str) -> float | None:
        """The rate the narrowed search (the first setting's optimum and its two neighbours,
        extended at an edge) would have chosen from this setting's sweep, or ``None`` if it would
        have needed a rate the sweep did not run: at the wide setting, whether narrowing the grid
        changed the answer."""
        center = self.decisions.rates[self.settings[0], optimizer]
        grid = [rate_key(center / SWEEP_FACTOR), rate_key(center), rate_key(center * SWEEP_FACTOR)]
        sweep = self.sweep_table()
        losses = {rate_key(r.lr): r.val_loss for r in sweep[(sweep["setting"] == setting) & (sweep.optimizer == optimizer)].itertuples()}
        known: dict[float, float] = {}
        while True:
            for rate in grid:
                if rate not in losses:
                    return None
                known[rate] = losses[rate]
            grid, chosen = sweep_rates(grid, known)
            if chosen is not None:
                return chosen

    def decay_table(self) -> pd.DataFrame:
        """At the settings with a weight-decay check: final test loss per decay and optimizer
        (seed spreads), and which decay is lower (``separated`` -1: the first listed)."""
        rows = []
        decays = sorted(set(self.runs.weight_decay))
        finals = {wd: self.final_table(wd) for wd in decays}
        for setting in self.settings:
            for opt in OPTIMIZERS:
                losses = {wd: f[(f["setting"] == setting) & (f.optimizer == opt)].test_loss.dropna() for wd, f in finals.items()}
                if any(len(v) == 0 for v in losses.values()):
                    continue
                low, high = decays[0], decays[-1]
                rows.append({"setting": setting, "optimizer": opt, **{f"wd {wd:g}": SeedSpread(tuple(v)) for wd, v in losses.items()},
                             "better": low if losses[low].mean() < losses[high].mean() else high,
                             "separated": compare(losses[low], losses[high])})
        return pd.DataFrame(rows)

    def gap_table(self) -> pd.DataFrame:
        """Final test loss per setting and Muon's gain (see :func:`~muonlib.results.runs.gap_row`)."""
        final = self.final_table()
        rows = [{"setting": setting, "parameters": self.header(setting)["parameters"], **gap_row(final[final["setting"] == setting])}
                for setting in self.settings]
        return pd.DataFrame(rows).set_index("setting")

    def equal_compute_gap_table(self) -> pd.DataFrame:
        """Muon's gain per setting on AdamW's training FLOPs, Newton-Schulz counted
        (:func:`~muonlib.results.runs.equal_compute_gap_row`; :meth:`gap_table` compares equal tokens)."""
        return pd.DataFrame([{"setting": setting, "parameters": self.header(setting)["parameters"],
                              **equal_compute_gap_row(self._both(setting), newton_schulz_share(self.header(setting)))}
                             for setting in self.settings]).set_index("setting")

    def ratio_table(self, offsets=TARGET_OFFSETS) -> pd.DataFrame:
        """Per setting, tokens (and so model FLOPs) to test-loss targets and ``R`` (see
        :func:`~muonlib.results.runs.ratio_rows`); Muon's share of AdamW's FLOPs with and without Newton-Schulz."""
        rows = []
        for setting in self.settings:
            ns = newton_schulz_share(self.header(setting))
            for row in ratio_rows(self._both(setting), offsets):
                rows.append({"setting": setting, **row, "R with Newton-Schulz": row["R"] / (1 + ns)})
        table = pd.DataFrame(rows)
        table["Muon's share %"] = 100 / table["R with Newton-Schulz"]
        return table

    def spike_table(self) -> pd.DataFrame:
        """Spikes of the chosen runs per setting and seed (see :func:`~muonlib.results.runs.spike_rows`)."""
        return pd.DataFrame([{"setting": setting, **row} for setting in self.settings for row in spike_rows(self._both(setting))])

    def curves(self, setting: str, optimizer: str) -> pd.DataFrame:
        """Validation loss against training FLOPs (Newton-Schulz included for Muon) at the chosen
        rate: the mean over seeds, with its lowest and highest."""
        runs = self.chosen(setting, optimizer).dropna(subset=["val_loss"])
        ns = newton_schulz_share(self.header(setting)) if optimizer == "muon" else 0.0
        table = runs.groupby("flops").val_loss.agg(["mean", "min", "max"]).reset_index()
        table["flops"] *= 1 + ns
        return table


@dataclass
class ScalingResults(LadderResults):
    """What the scaling experiment's runs show, size by size (the settings are model sizes).

        >>> results = ScalingResults.load("scaling")
        >>> results.settings
        ['XS', 'S', 'M', 'L', 'XL']
        >>> from muonlib.results import UNTESTABLE
        >>> results.verdicts().verdict["M16"] == UNTESTABLE
        True
    """

    def size_table(self) -> pd.DataFrame:
        """Every size: shape, parameters (ours and the paper's), the budget three ways, and
        the Newton-Schulz FLOPs a Muon step adds (% of the model's training FLOPs)."""
        from ..models import PAPER_PARAMS, preset

        rows = []
        for setting in self.settings:
            header = self.header(setting)
            config = header["provenance"]["config"]
            model = preset(config["model"], config["variant"], **config["model_changes"])
            b = Budget.of(config["steps"], header["tokens_per_step"], header["data"]["train_tokens"], header["parameters"])
            rows.append({"setting": setting, "layers": model.n_layer, "width": model.d_model, "parameters": header["parameters"],
                         "paper's parameters": PAPER_PARAMS.get(setting, np.nan), "tokens": b.tokens, "epochs": b.epochs,
                         "tokens per parameter": b.tokens_per_parameter, "Newton-Schulz FLOPs %": 100 * newton_schulz_share(header)})
        return pd.DataFrame(rows).set_index("setting")

    # ------------------------------------------------------------ verdicts

    def verdicts(self, xs: pd.Series | None = None, capped: bool = True, why: str = NOT_RUN) -> pd.DataFrame:
        """M15, M16, M18, M21, M30 and M31 over the sizes, each with its evidence and a verdict label.
        M15 and M18 are also judged at XS over three budgets (``xs``: those claims' verdicts
        there, :meth:`~muonlib.results.comparison.ProtocolComparison.verdicts`); given them, the verdict is both chapters'
        (:func:`~muonlib.results.rules.across_parts`), the one the ledger gives. ``capped``: as
        these runs alone judge them, one protocol's, ``why`` they judge alone
        (:func:`~muonlib.results.rules.original_only`); else as they found, for
        :class:`ScalingProtocols` to set beside another protocol's."""
        ratios = self.ratio_table()
        share = ratios.groupby(["setting", "offset"])["Muon's share %"].mean()
        low, high = PAPER["M15"]
        m15 = every_target_verdict(ratios.set_index(["setting", "offset", "seed"])["Muon's share %"], PAPER["M15"], by="setting")

        # M16's "efficiency gain" is M15's: Muon's share of AdamW's FLOPs to the targets, falling
        # as the gain rises; per setting, each seed's mean over the targets
        seed_share = ratios.groupby(["setting", "seed"])["Muon's share %"].mean()
        first, last = (seed_share[s].values for s in (self.settings[0], self.settings[-1]))
        mean_share = seed_share.groupby(level="setting").mean().reindex(self.settings)
        parameters = [self.header(s)["parameters"] for s in self.settings]
        consistent = all(seed_share[s].max() < 100 for s in self.settings)  # fewer FLOPs at every size and seed
        rising = compare(last, first) == -1 and mean_share.corr(pd.Series(np.log(parameters), index=self.settings), method="spearman") < 0
        falling = compare(last, first) == 1
        # the claim compares sizes trained alike; on equal tokens the larger sizes see fewer tokens
        # per parameter, so a gain that moves with size may move with under-training instead:
        # where the sizes are not trained alike, neither a rising nor a falling gain can tell
        per_parameter = self.size_table()["tokens per parameter"]
        alike = per_parameter.max() <= 2 * per_parameter.min()
        m16 = label([consistent, rising], fails=[any(seed_share[s].min() > 100 for s in self.settings), falling]) if alike else label(None)

        gaps, compute_gaps = self.gap_table(), self.equal_compute_gap_table()
        m18 = gain_verdict(gaps, compute_gaps)  # the claim is at equal compute: between the two
        found = {"M15": m15, "M16": m16, "M18": m18}  # the sizes' runs alone, before XS's protocols join them
        cap = one_protocol if capped else (lambda verdict: verdict)
        m15, m16, m18 = (cap(v) for v in (m15, m16, m18))
        if xs is not None:
            m15, m18 = (across_parts([found[claim], xs[claim]], [standing, xs[claim]]) for claim, standing in (("M15", m15), ("M18", m18)))

        transfer = self.transfer_table().set_index(["setting", "optimizer"])
        muon = transfer.xs("muon", level="optimizer").iloc[1:]
        kept = muon["transfer penalty"] <= NOISE_SIGMAS * muon["seed std"]
        decay = self.decay_table()
        decay_flips = decay.groupby("optimizer").separated.agg(lambda s: {-1, 1} <= set(s)).any()  # better at one size, worse at another
        # the claim is muP's (section 5.4); muonlib trains in standard parametrisation, with the
        # update scale alone, so what follows measures that, not the claim
        m21 = label(None)

        def fraction(x):
            return f"1/{1 / x:g}" if x < 1 else f"{x:g}x"

        def span(shifts):  # the best rates' shifts from XS's, as one fraction where every size agrees
            low, high = fraction(shifts.min()), fraction(shifts.max())
            return low if low == high else f"{low} to {high}"

        adamw = transfer.xs("adamw", level="optimizer")
        rates = self.decisions.rates
        rate_ratio = {size: rates[size, "muon"] / rates[size, "adamw"] for size in self.settings}
        found["M30"] = label([r == 1 for r in rate_ratio.values()])
        # two conditions: Muon's best rate never below AdamW's, and above it somewhere
        found["M31"] = label([min(rate_ratio.values()) >= 1, max(rate_ratio.values()) > 1],
                             fails=[min(rate_ratio.values()) < 1, max(rate_ratio.values()) <= 1])
        ratios_text = ", ".join(f"{s} {r:g}x" for s, r in rate_ratio.items())
        verdicts = pd.DataFrame([
            {"claim": "M15", "paper": f"Muon needs {PAPER['M15'][0]}-{PAPER['M15'][1]}% of AdamW's FLOPs to any loss",
             "ours": f"{share.min():.0f}-{share.max():.0f}% of AdamW's FLOPs (Newton-Schulz included) over "
                     f"{len(self.settings)} sizes and {ratios.offset.nunique()} targets each, "
                     f"{int(share.between(low, high).sum())} of {len(share)} in the band",
             "verdict": m15},
            {"claim": "M16", "paper": "the gain is consistent across scales and slightly improves with size",
             "ours": "Muon's share of AdamW's FLOPs to the targets (Newton-Schulz included), mean over the targets: "
                     + "; ".join(f"{s} {mean_share[s]:.0f}% (seeds {seed_share[s].min():.0f}-{seed_share[s].max():.0f})" for s in self.settings)
                     + f"; every size on the same tokens, {per_parameter.max():.2g} down to {per_parameter.min():.2g} tokens per "
                       "parameter, so size and under-training move together"
                     + ("" if alike else ", and the runs cannot tell whether the gain moves with either"),
             "verdict": m16},
            {"claim": "M18", "paper": f"final loss {PAPER['M18'][0]}-{PAPER['M18'][1]}% lower with Muon",
             "ours": "on equal FLOPs with Newton-Schulz counted (Muon's loss read where its FLOPs reach AdamW's, before its "
                     "schedule ends: a lower bound), " + "; ".join(f"{s} {spread_text(g)}" for s, g in compute_gaps["gain %"].items())
                     + "; on equal tokens (an upper bound), " + "; ".join(f"{s} {spread_text(g)}" for s, g in gaps["gain %"].items())
                     + f"; the gain at equal compute, between the two, is {gain_bounds_text(gain_bounds(gaps, compute_gaps))}",
             "verdict": m18},
            {"claim": "M21", "paper": f"learning rate and weight decay transfer across widths with s = {QUOTES['M4'].value} sqrt(n)",
             "ours": "not muP, which muonlib lacks: in standard parametrisation with the update scale alone, "
                     + ("the rates transfer" if kept.all() and not decay_flips else "the rates do not all transfer")
                     + f"; Muon's best rate beyond {self.settings[0]} is {span(muon['shift'])} of {self.settings[0]}'s, whose rate costs {muon['transfer penalty'].min():.3f}-{muon['transfer penalty'].max():.3f} "
                     f"nats (seed std at most {muon['seed std'].max():.3f}); AdamW's is {span(adamw['shift'].iloc[1:])}; weight decay 0.05 against 0.1: "
                     + ("no difference beyond the seed spread" if (decay.separated == 0).all() else "a difference at some size"),
             "verdict": m21},
            {"claim": "M30", "paper": f"s = {QUOTES['M4'].value} sqrt(n) matches AdamW's update magnitude, enabling direct hyperparameter transfer from AdamW",
             "ours": f"Muon's best peak rate, swept per size on equal tokens, against AdamW's: {ratios_text}",
             "verdict": cap(found["M30"])},
            {"claim": "M31", "paper": "spectral normalisation of the updates enables larger learning rates",
             "ours": f"Muon's best rate against AdamW's, size by size: {ratios_text}",
             "verdict": cap(found["M31"])},
        ]).set_index("claim")
        for claim, verdict in found.items():
            if capped and judged(verdict):
                verdicts.at[claim, "ours"] += f"; over the sizes {original_only(verdict, why)}"
        return verdicts


class ScalingProtocols(Protocols):
    """The scaling claims' verdicts under each protocol (:class:`~muonlib.results.protocols.Protocols`);
    M15 and M18 joined by their verdicts at XS, as :meth:`ScalingResults.verdicts` joins them."""

    experiment, results_type = "scaling", ScalingResults

    def verdicts(self, xs: pd.Series | None = None) -> pd.DataFrame:
        if self.judged_by == ("original",):
            return self.results["original"].verdicts(xs, why=self.unfinished())
        verdicts = super().verdicts()
        for claim in ("M15", "M18") if xs is not None else ():  # both parts judged by both protocols: found is standing
            verdicts.at[claim, "verdict"] = across_parts([verdicts.verdict[claim], xs[claim]], [verdicts.verdict[claim], xs[claim]])
        return verdicts


@dataclass
class BatchSizeResults(LadderResults):
    """What the batch-size experiment's runs show (the settings are batch sizes): the tokens
    and steps each optimizer needs to common loss targets at every batch, ``R_L(B)``
    (Figure 2) and the steps-against-batch frontier (section 3.2).

        >>> results = BatchSizeResults.load("batch_sizes")
        >>> results.settings[0], results.settings[-1]
        ('8K', '256K')
    """

    def batch_table(self) -> pd.DataFrame:
        """Every batch: tokens and sequences per step, micro-batches, steps, each optimizer's
        chosen rate, and the budget (the same at every batch) three ways."""
        rows = []
        for setting in self.settings:
            header = self.header(setting)
            config = header["provenance"]["config"]
            b = Budget.of(config["steps"], header["tokens_per_step"], header["data"]["train_tokens"], header["parameters"])
            rows.append({"batch": setting, "tokens per step": header["tokens_per_step"],
                         "sequences": config["batch_size"] * config["grad_accum"], "accumulation": config["grad_accum"],
                         "steps": config["steps"], "AdamW lr": self.decisions.rates[setting, "adamw"],
                         "Muon lr": self.decisions.rates[setting, "muon"], "tokens": b.tokens, "epochs": b.epochs,
                         "tokens per parameter": b.tokens_per_parameter})
        return pd.DataFrame(rows).set_index("batch")

    def targets(self, count: int = 4) -> list[float]:
        """Test-loss targets shared by every batch, evenly spaced from the highest loss any
        chosen run ends at (so every run reaches it) down to the lowest that AdamW's worst seed
        reaches at some batch (so the lower targets are reached at some batches only)."""
        worst = self.final_table().groupby(["setting", "optimizer"]).test_loss.max()
        spaced = np.round(np.linspace(worst.max(), worst.xs("adamw", level="optimizer").min(), count), 3)
        spaced[0] = math.ceil(worst.max() * 1000) / 1000  # rounded up, so that every run still reaches it
        return sorted({float(t) for t in spaced}, reverse=True)

    def reach_table(self, targets: list[float] | None = None) -> pd.DataFrame:
        """Per target, batch and seed: the tokens and steps each optimizer needs to reach it
        (NaN where a run does not within the budget), ``R = T_AdamW / T_Muon`` and the
        difference ``T_AdamW - T_Muon`` in tokens."""
        rows = []
        for target in targets or self.targets():
            for setting in self.settings:
                per_step = self.header(setting)["tokens_per_step"]
                curves = {opt: {seed: run.dropna(subset=["test_loss"]).sort_values("step")
                                for seed, run in self.chosen(setting, opt).groupby("seed") if not run.diverged.iloc[0]}
                          for opt in OPTIMIZERS}
                for seed in sorted(set(curves["adamw"]) & set(curves["muon"])):
                    t = {opt: tokens_to_target(curves[opt][seed].tokens, curves[opt][seed].test_loss, target) for opt in OPTIMIZERS}
                    rows.append({"target": target, "batch": setting, "tokens per step": per_step, "seed": seed,
                                 "AdamW tokens": t["adamw"], "Muon tokens": t["muon"],
                                 "AdamW steps": t["adamw"] / per_step, "Muon steps": t["muon"] / per_step,
                                 "R": t["adamw"] / t["muon"], "difference": t["adamw"] - t["muon"]})
        return pd.DataFrame(rows)

    @cached_property
    def reach(self) -> pd.DataFrame:
        """:meth:`reach_table` at the default :meth:`targets`, computed once for every table
        and verdict that reads it."""
        return self.reach_table()

    def ratio_summary(self, targets: list[float] | None = None, after_warmup: bool = False) -> pd.DataFrame:
        """Per target and batch where both optimizers reach it at every seed: ``R`` over the
        seeds (:class:`~muonlib.analysis.SeedSpread`), the mean token difference and each
        optimizer's mean steps. With ``after_warmup``, at the :meth:`after_warmup_targets` and
        only in the cells that lie in their batch's :meth:`after_warmup_ranges`."""
        if after_warmup:
            targets = self.after_warmup_targets()
        reach = (self.reach if targets is None else self.reach_table(targets)).dropna(subset=["R"])
        ranges = self.after_warmup_ranges()
        rows = []
        for (target, batch), g in reach.groupby(["target", "batch"], sort=False):
            if len(g) < len(self.chosen(batch, "muon").seed.unique()):
                continue
            if after_warmup and not ranges.lowest[batch] <= target < ranges.highest[batch]:
                continue
            rows.append({"target": target, "batch": batch, "tokens per step": g["tokens per step"].iloc[0],
                         "R": SeedSpread(tuple(g.R)), "difference": g.difference.mean(),
                         "AdamW steps": g["AdamW steps"].mean(), "Muon steps": g["Muon steps"].mean()})
        return pd.DataFrame(rows, columns=["target", "batch", "tokens per step", "R", "difference", "AdamW steps", "Muon steps"])

    def after_warmup_ranges(self) -> pd.DataFrame:
        """Per batch, the test losses every chosen run of both optimizers reaches after its
        warm-up ends: below ``highest`` (the lowest loss any run has at the first evaluation
        after its warm-up) and at or above ``lowest`` (the highest loss any run ends its
        training at). ``exists`` is false where the range is empty: there every loss one
        optimizer reaches after its warm-up, the other reaches during its own, or never."""
        rows = []
        for setting in self.settings:
            ends, finals = [], []
            for opt in OPTIMIZERS:
                for _, run in self.chosen(setting, opt).groupby("seed"):
                    run = run.dropna(subset=["test_loss"]).sort_values("step")
                    config = self.header(setting, opt)["provenance"]["config"]
                    after = run[run.step >= config["warmup"] * config["steps"]]
                    ends.append(after.test_loss.iloc[0])
                    finals.append(run.test_loss.min())
            lowest = math.ceil(max(finals) * 1000) / 1000  # rounded up, so that every run still reaches it
            rows.append({"batch": setting, "lowest": lowest, "highest": min(ends), "exists": lowest < min(ends)})
        return pd.DataFrame(rows).set_index("batch")

    def after_warmup_targets(self, per_batch: int = 2) -> list[float]:
        """``per_batch`` targets evenly spaced in each batch's :meth:`after_warmup_ranges`,
        from its lowest loss up; a target one batch contributes is judged at every batch whose
        range holds it, which is how ``R`` is compared across batches."""
        targets = set()
        for r in self.after_warmup_ranges().itertuples():
            if r.exists:
                targets |= {float(round(t, 3)) for t in np.linspace(r.lowest, r.highest, per_batch + 1)[:-1]}
        return sorted(targets, reverse=True)

    def one_sided_cells(self) -> dict[str, int]:
        """Target-and-batch cells that every seed of one optimizer reaches and no seed of the
        other does (``R`` infinite or zero, so not in :meth:`ratio_summary`), by who reaches them."""
        cells = self.reach.groupby(["target", "batch"]).agg(adamw=("AdamW tokens", lambda t: t.notna().all()),
                                                       muon=("Muon tokens", lambda t: t.notna().all()),
                                                       adamw_none=("AdamW tokens", lambda t: t.isna().all()),
                                                       muon_none=("Muon tokens", lambda t: t.isna().all()))
        return {"Muon only": int((cells.muon & cells.adamw_none).sum()), "AdamW only": int((cells.adamw & cells.muon_none).sum())}

    def within_warmup(self, summary: pd.DataFrame) -> pd.Series:
        """For each cell of a :meth:`ratio_summary`, whether either optimizer reaches the target
        (on average over the seeds) before its warm-up ends: there ``R`` measures the ramp."""
        warmup_steps = {b: (c := self.header(b)["provenance"]["config"])["warmup"] * c["steps"] for b in self.settings}
        ends = summary.batch.map(warmup_steps)
        return (summary["AdamW steps"] < ends) | (summary["Muon steps"] < ends)

    def ratio_per_batch(self, summary: pd.DataFrame) -> pd.Series:
        """Per batch, in batch order, ``R`` averaged over the targets of a :meth:`ratio_summary`
        that batch reaches, seed by seed (:class:`~muonlib.analysis.SeedSpread`): how M26's
        "consistently" is judged, a batch at a time against the seed spread. Every cell of the
        summary holds every seed, in seed order, so the seeds line up across its targets."""
        per_batch = {batch: SeedSpread(tuple(np.mean([r.values for r in g.R], axis=0)))
                     for batch, g in summary.groupby("batch", sort=False)}
        return pd.Series({b: per_batch[b] for b in self.settings if b in per_batch}, dtype=object)

    @staticmethod
    def ratio_changes(summary: pd.DataFrame) -> tuple[int, int]:
        """How often ``R`` falls and rises beyond the seed spread from one batch to the next
        (at the same target), in a :meth:`ratio_summary`."""
        steps = [compare(later.values, earlier.values) for _, g in summary.groupby("target")
                 for earlier, later in zip(g.R.iloc[:-1], g.R.iloc[1:])]
        return steps.count(-1), steps.count(1)

    def verdicts(self, capped: bool = True, why: str = NOT_RUN) -> pd.DataFrame:
        """M19 (R > 1 and non-decreasing in B), M20 (Muon's steps-against-batch frontier
        dominates), M26 (which of the paper's two statements of R ours resembles) and M27
        (the token difference grows superlinearly in B), each judged at targets both optimizers
        reach after their warm-ups (:meth:`after_warmup_targets`): a target reached during a
        warm-up measures the ramp, not the optimizer. ``capped``: as these runs alone judge
        them, one protocol's, ``why`` they judge alone
        (:func:`~muonlib.results.rules.one_protocol_table`); else as they found, for
        :class:`BatchSizeProtocols` to set beside another protocol's."""
        summary = self.ratio_summary(after_warmup=True)
        ranges = self.after_warmup_ranges()
        every_target = self.ratio_summary()
        only = self.one_sided_cells()
        above = all(r.low > 1 for r in summary.R) and only["AdamW only"] == 0
        below = any(r.high < 1 for r in summary.R) or only["AdamW only"] > 0
        drops, rises = self.ratio_changes(summary)
        in_warmup = int(self.within_warmup(every_target).sum())
        none_after = [b for b in self.settings if not ranges.exists[b]]
        judged_at = (f"judged at {summary.target.nunique()} targets reached after both warm-ups, in {len(summary)} "
                     f"target-batch cells over {summary.batch.nunique()} batches"
                     + (f" (at {', '.join(none_after)} no loss is reached by both after their warm-ups)" if none_after else "")
                     + f"; of the {len(every_target)} cells at targets spread over the whole run, {in_warmup} are reached "
                       f"while an optimizer is still warming up")
        # two conditions: R above 1 everywhere, and R non-decreasing (mostly: rises outnumber drops)
        m19 = label([above, not drops], fails=[below, drops > rises])
        means = np.array([r.mean for r in summary.R]) if len(summary) else np.array([np.nan])

        m20 = label([r.low > 1 for r in summary.R] + [only["AdamW only"] == 0], fails=[r.high < 1 for r in summary.R] + [only["AdamW only"] > 0])
        best = {opt: summary.groupby("target")[f"{name} steps"].min() for opt, name in (("adamw", "AdamW"), ("muon", "Muon"))}

        spreads = self.ratio_per_batch(summary)
        per_batch = spreads.map(lambda r: r.mean)
        low, high = PAPER_R["section 3.1"]
        # "consistently": at every batch, R over the targets reached after both warm-ups lies in
        # the band (a range: held on the seeds' mean, failed where every seed lies beyond it); the
        # near-final target (the lowest) is shown beside it
        m26 = band_verdict(spreads, (low, high))
        final_target = summary[summary.target == summary.target.min()]
        final_text = (f"at the lowest target {final_target.target.iloc[0]:.2f}, reached at "
                      + ", ".join(f"{row.batch} by R = {row.R.mean:.2f} (seeds {row.R.low:.2f}-{row.R.high:.2f})" for row in final_target.itertuples())
                      if len(final_target) else "no target is reached after both warm-ups")
        nearer = [min(PAPER_R, key=lambda name: band_distance(r, PAPER_R[name])) for r in per_batch]

        slopes = {}
        for target, g in summary.groupby("target"):
            g = g[g.difference > 0]
            if len(g) >= 3:
                slopes[target] = float(np.polyfit(np.log(g["tokens per step"]), np.log(g.difference), 1)[0])
        m27 = label([s > 1 for s in slopes.values()])  # no target reached at enough batches: nothing measured
        verdicts = pd.DataFrame([
            {"claim": "M19", "paper": "R_L(B) > 1 and non-decreasing in the batch size",
             "ours": f"R from {means.min():.2f} to {means.max():.2f} over {summary.batch.nunique()} batches "
                     f"({', '.join(b for b in self.settings if b in set(summary.batch))} tokens) and {summary.target.nunique()} targets; "
                     + ("above 1 at every seed" if above else "not above 1 at every seed")
                     + f"; {only['Muon only']} target-batch cells reached by Muon alone, {only['AdamW only']} by AdamW alone"
                     + f"; {drops} drop(s) and {rises} rise(s) beyond the seed spread from one batch to the next; " + judged_at
                     + f"; the paper's Figure 2 spans {PAPER_BATCHES[0] // 1024}K to {PAPER_BATCHES[1] // 2**20}M tokens per step, "
                       "so ours test the claim at and below its smallest batch",
             "verdict": m19},
            {"claim": "M20", "paper": "Muon's devices-against-time frontier strictly dominates AdamW's",
             "ours": ("Muon needs fewer steps at every batch and target, every seed, and reaches every target AdamW reaches" if above else
                      "Muon does not need fewer steps at every batch and target")
                     + "; fewest steps to each target over the batches, AdamW against Muon: "
                     + ", ".join(f"{t:.3f}: {best['adamw'][t]:.0f} vs {best['muon'][t]:.0f}" for t in best["adamw"].index),
             "verdict": m20},
            {"claim": "M26", "paper": "{}-{}% fewer tokens (section 3.1) against {}-{}% of the FLOPs (section 5.1)".format(*QUOTES["M26"].value, *PAPER["M15"]),
             "ours": final_text + f" (section 3.1's band is {low:.2f}-{high:.2f}, section 5.1's {PAPER_R['section 5.1'][0]:.2f}-{PAPER_R['section 5.1'][1]:.2f}); "
                     "over the targets reached after both warm-ups, mean R per batch "
                     + ", ".join(f"{b} {r:.2f}" for b, r in per_batch.items())
                     + f", nearer section 3.1's at {nearer.count('section 3.1')} of {len(per_batch)} batches",
             "verdict": m26},
            {"claim": "M27", "paper": "T_AdamW - T_Muon grows superlinearly with the batch size",
             "ours": "log-log slope of the token difference against the batch: "
                     + (", ".join(f"{s:.2f} at target {t:.2f}" for t, s in slopes.items()) or "too few batches reach a target"),
             "verdict": m27},
        ]).set_index("claim")
        return one_protocol_table(verdicts, why=why) if capped else verdicts


class BatchSizeProtocols(Protocols):
    """The batch-size claims' verdicts under each protocol (:class:`~muonlib.results.protocols.Protocols`)."""

    experiment, results_type = "batch_sizes", BatchSizeResults
