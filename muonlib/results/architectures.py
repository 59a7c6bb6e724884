"""The chapter on latent attention and experts: Table 3's architectures trained with both
optimizers, and the companion papers' quality claims."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..analysis import SeedSpread, compare, tokens_to_target
from ..data import data_root
from ..experiments import NO_POSITIONS
from .ladders import LadderResults
from .paper import PAPER_QUALITY, QUOTES
from .protocols import Protocols
from .rules import (NOT_RUN, OPEN, at_most, at_most_verdict, band_verdict, conjunction, in_band, judged, label, one_protocol, one_protocol_table,
                    original_only, overhead_verdict, saving_band)
from .runs import OPTIMIZER_LABELS, OPTIMIZERS, final_rows, newton_schulz_share


TABLE3_ARCHITECTURES = ("mha", "mla", "moe-mla")
#: the setting a claim's runs need beyond MHA and MLA (a T4's or an A100's plan trains those two)
CLAIM_NEEDS = {"M23": "moe-mla", "M24": "moe-mla", "E3": "moe-mla", "E4": "moe-mla", "E5": "moe-mla", "A2": "mla-norope"}
E7_UNTRAINED = {"claim": "E7", "paper": "bias balancing keeps the experts balanced without an auxiliary loss",
                "ours": "MoE-MLA without balancing is not trained yet", "verdict": OPEN}


def expert_combinations_row() -> dict:
    """E6, counted rather than trained: the routed-expert sets a token can take in the
    MoE-MLA preset built to the companion paper's specification, against the abstract's
    figure, which it rounds to two significant digits (so within 5%)."""
    from ..models import expert_combinations, preset

    spec = preset("XS", "moe-mla")
    combinations = expert_combinations(spec)
    return {"claim": "E6", "paper": f"{QUOTES['E6'].value:.1e} {QUOTES['E6'].what}",
            "ours": f"{spec.top_k} of {spec.n_routed_experts} routed experts: C({spec.n_routed_experts}, {spec.top_k}) = {combinations:,}",
            "verdict": label([abs(combinations / QUOTES["E6"].value - 1) < 0.05])}


#: claims judged by the training benchmark (E8's overhead), not by the runs, so alike under every protocol
FROM_BENCHMARK = ("E8",)
#: claims of the runs that also claim the decode benchmark's: claim -> {decode claim: what it adds}
DECODE_PARTS = {"M24": {"E1": "KV memory", "E2": "speed"}, "E5": {"E2": "speed"}}


def with_decode_parts(verdicts: pd.DataFrame, decode: pd.DataFrame | None) -> pd.DataFrame:
    """The verdicts of claims that also claim decode memory or speed (:data:`DECODE_PARTS`)
    joined with the decode chapter's (:func:`~muonlib.results.rules.conjunction`): a part the
    benchmark refutes refutes the claim whichever protocol trained the runs. A claim the runs
    left open stays open."""
    if decode is None:
        return verdicts
    out = verdicts.copy()
    for claim, parts in DECODE_PARTS.items():
        if claim in out.index and out.at[claim, "verdict"] != OPEN:
            out.at[claim, "verdict"] = conjunction([out.at[claim, "verdict"]] + [decode.verdict[p] for p in parts])
            out.at[claim, "ours"] += "".join(f"; {what} ({p}, {decode.verdict[p]}): {decode.ours[p]}" for p, what in parts.items())
    return out


def training_throughput(size: str, batch: int) -> pd.DataFrame:
    """Compiled training steps at ``size`` and ``batch`` sequences, per architecture and
    optimizer (``python -m muonlib.bench models --parts train``): tokens/s and model FLOPs
    utilisation, Muon's step and its Newton-Schulz FLOPs included. Each is the median over the
    saved repeats from the newest measurement's GPU and commit, with how many there were, their
    spread (the fastest repeat's tokens/s over the slowest's) and where they ran: a repeat of
    the same benchmark on the same GPU varies by more than its timed steps do."""
    rows = []
    for path in sorted((data_root() / "bench").glob("train_step*.json")):
        saved = json.loads(path.read_text())
        for r in saved["results"]["train_step"]:
            if r["size"] == size and r.get("batch") == batch and r.get("compiled"):
                rows.append({**r, "gpu": saved["provenance"]["gpu"], "commit": saved["provenance"]["git_commit"][:7],
                             "date": saved["provenance"]["date"][:10], "file": path.name})
    if not rows:
        raise FileNotFoundError(f"no compiled training step at {size}, batch {batch}, in data/bench/: run `python -m muonlib.bench models "
                                f"--parts train --sizes {size} --compile-sizes {size} --batch {batch} --name train_step_architectures`")
    frame = pd.DataFrame(rows).sort_values("date")
    newest = frame.iloc[-1]
    frame = frame[(frame.gpu == newest.gpu) & (frame.commit == newest.commit)]
    return frame.groupby(["variant", "optimizer"]).agg(tokens_per_s=("tokens_per_s", "median"), mfu=("mfu", "median"),
                                                       repeats=("file", "nunique"), spread=("tokens_per_s", lambda r: r.max() / r.min()),
                                                       gpu=("gpu", "first"), commit=("commit", "first"), date=("date", "last"))


@dataclass
class ArchitectureResults(LadderResults):
    """What the architectures experiment's runs show (the settings are MHA, MLA, MLA-noRoPE,
    MoE-MLA and two MoE-MLA variants): Table 3 measured and the companion papers' quality claims.

        >>> results = ArchitectureResults.load("architectures")
        >>> results.settings[:4]
        ['mha', 'mla', 'mla-norope', 'moe-mla']
    """

    def size(self) -> str:
        return self.header(self.settings[0])["provenance"]["config"]["model"]

    def batch(self) -> int:
        """Sequences per micro-batch: what the training-step benchmark's ``--batch`` times."""
        return self.header(self.settings[0])["provenance"]["config"]["batch_size"]

    def test_losses(self, setting: str, optimizer: str) -> pd.Series:
        final = pd.DataFrame(final_rows(self._both(setting)))
        return final[final.optimizer == optimizer].set_index("seed").test_loss.dropna()

    def change(self, setting: str, reference: str, optimizer: str, reference_optimizer: str | None = None) -> SeedSpread:
        """Final test perplexity of ``setting`` against ``reference``, in % per seed pair (same
        batches): ``100 (PPL / PPL_ref - 1)``, positive where ``setting`` is worse."""
        a = self.test_losses(setting, optimizer)
        b = self.test_losses(reference, reference_optimizer or optimizer)
        return SeedSpread(tuple(100 * (np.exp(a - b) - 1).dropna()))

    def table3(self) -> pd.DataFrame:
        """Table 3's columns per architecture and optimizer: final test perplexity, tokens and
        FLOPs (Newton-Schulz counted for Muon) to the target (MHA + AdamW's worst final test
        loss), training tokens/s and model FLOPs utilisation from the compiled training-step
        benchmark at the runs' size and batch (:func:`training_throughput`, each optimizer's
        own step) and the time to target they give, and peak training memory; FLOPs and time to
        target also relative to MHA + AdamW's, so that the time a FLOP count predicts sits
        beside the time measured. ``NaN`` where a run does not reach the target or the
        benchmark did not time the architecture."""
        target = self.test_losses("mha", "adamw").max()
        throughput = training_throughput(self.size(), self.batch())
        rows = []
        for setting in self.settings:
            for opt in OPTIMIZERS:
                header = self.header(setting, opt)
                runs = self.chosen(setting, opt)
                tokens = [tokens_to_target(r.dropna(subset=["test_loss"]).tokens, r.dropna(subset=["test_loss"]).test_loss, target)
                          for _, r in runs.sort_values("step").groupby("seed")]
                ns = newton_schulz_share(header) if opt == "muon" else 0.0
                flops = np.mean(tokens) * header["flops_per_step"] / header["tokens_per_step"] * (1 + ns)
                config = header["provenance"]["config"]
                variant = config["variant"] if not config["model_changes"] and config["steps"] == self.header("mha")["provenance"]["config"]["steps"] else None
                rate = throughput.tokens_per_s.get((variant, opt), np.nan)
                rows.append({"architecture": setting, "optimizer": opt, "parameters": header["parameters"],
                             "active parameters": header["active_parameters"],
                             "perplexity": float(np.exp(self.test_losses(setting, opt)).mean()),
                             "tokens to target": float(np.mean(tokens)), "FLOPs to target": flops,
                             "training tokens/s": rate, "training MFU (%)": 100 * throughput.mfu.astype(float).get((variant, opt), np.nan),
                             "time to target (s)": float(np.mean(tokens)) / rate, "peak memory GB": runs.peak_memory_gb.max()})
        table = pd.DataFrame(rows).set_index(["architecture", "optimizer"])
        for column in ("FLOPs to target", "time to target (s)"):
            table[f"{column.removesuffix(' (s)')} (rel.)"] = table[column] / table.loc[("mha", "adamw"), column]
        return table

    def balance_table(self) -> pd.DataFrame:
        """Per MoE setting and optimizer: the expert-load coefficient of variation and the
        largest violation (``max_i f_i N - 1``) at the end of training, and their means over
        its last tenth, each over seeds."""
        rows = []
        for setting in self.settings:
            for opt in OPTIMIZERS:
                runs = self.chosen(setting, opt)
                if "moe_cv" not in runs or runs.moe_cv.isna().all():
                    continue
                last = runs[runs.step > 0.9 * runs.step.max()]
                rows.append({"setting": setting, "optimizer": opt,
                             "final CV": SeedSpread(tuple(runs.sort_values("step").groupby("seed").moe_cv.last())),
                             "CV, last tenth": SeedSpread(tuple(last.groupby("seed").moe_cv.mean())),
                             "max violation, last tenth": SeedSpread(tuple(last.groupby("seed").moe_max_violation.mean()))})
        return pd.DataFrame(rows, columns=["setting", "optimizer", "final CV", "CV, last tenth", "max violation, last tenth"]
                            ).set_index(["setting", "optimizer"])

    def random_router_cv(self, setting: str = "moe-mla") -> float:
        """The expert-load CV a router choosing its experts uniformly at random would show, from
        sampling alone: each of a step's ``T`` tokens takes ``k`` distinct of ``E`` experts, so an
        expert's load is binomial, ``T`` draws at ``k / E``, and its CV ``sqrt((E - k) / (T k))``.
        The yardstick for how balanced the trained routers are."""
        from ..models import preset

        header = self.header(setting)
        config = header["provenance"]["config"]
        model_config = preset(config["model"], config["variant"], **config["model_changes"])
        experts, k = model_config.n_routed_experts, model_config.top_k
        return float(np.sqrt((experts - k) / (header["tokens_per_step"] * k)))

    def balance_curves(self, setting: str, optimizer: str) -> pd.DataFrame:
        """The expert-load CV against the step (mean over seeds, smoothed over 25 steps)."""
        runs = self.chosen(setting, optimizer)
        return runs.groupby("step").moe_cv.mean().rolling(25, min_periods=1).mean().reset_index()

    def loss_change(self, setting: str, reference: str, optimizer: str) -> SeedSpread:
        """Final test loss of ``setting`` against ``reference``, in % per seed pair (negative:
        lower), e.g. the FLOP-matched MoE (trained on the dense run's FLOPs over its own
        complete schedule) against dense MHA."""
        a, b = self.test_losses(setting, optimizer), self.test_losses(reference, optimizer)
        return SeedSpread(tuple(100 * (a / b - 1).dropna()))

    def a1_row(self, capped: bool = True, why: str = NOT_RUN) -> dict:
        """A1, MLA with RoPE at r = d/2 against MHA, both halves: the cache saving (analytic; the
        decode chapter measures it within a fraction of a percent) by ``saving_band``, and the
        test-loss cost by :func:`~muonlib.results.rules.at_most_verdict` (``capped``: as one protocol's runs alone judge it,
        for the reason ``why``)."""
        from ..models import kv_cache_elements_per_token, preset

        saving = 100 * (1 - kv_cache_elements_per_token(preset(self.size(), "mla")) / kv_cache_elements_per_token(preset(self.size(), "mha")))
        paper_saving, paper_cost = PAPER_QUALITY["A1 cache"], PAPER_QUALITY["A1"]
        cache = saving_band(saving, paper_saving)
        cost = {o: self.loss_change("mla", "mha", o) for o in OPTIMIZERS}
        loss = at_most_verdict(cost.values(), paper_cost)
        runs_half = one_protocol(loss) if capped else loss  # capped: one protocol's runs alone judge it
        return {"claim": "A1", "paper": f"MLA + RoPE at r = d/2: {paper_saving:.0f}% smaller KV cache for {paper_cost}% higher validation loss",
                "ours": f"cache at {self.size()}: {saving:.1f}% fewer bytes per token than MHA (latent plus rotary key); test loss against MHA: "
                        + "; ".join(f"{OPTIMIZER_LABELS[o]} {c.mean:+.2f}% (seeds {c.low:+.2f} to {c.high:+.2f})" for o, c in cost.items())
                        + (f"; {original_only(loss, why)}" if capped and judged(loss) else ""),
                "verdict": conjunction([cache, runs_half])}

    def a2_row(self) -> dict:
        """A2, a conjunction per optimizer: MLA without RoPE is 3-5% worse than MHA (a range:
        :func:`~muonlib.results.rules.in_band`), and with RoPE 2% better (a floor:
        :func:`~muonlib.results.rules.at_most`). "Without RoPE" is read two ways where the control was run:
        RoPE replaced by learned positions (MLA-noRoPE, the MLA paper's arm as we read it) and no
        positions at all (:data:`~muonlib.experiments.NO_POSITIONS`), which changes RoPE alone;
        each reading is a condition, so the claim holds only under conditions where one agrees."""
        low, high = PAPER_QUALITY["A2 no RoPE"]
        readings = {"learned positions": "mla-norope"} | ({"no positions": NO_POSITIONS} if NO_POSITIONS in self.settings else {})
        nope = {(r, o): self.change(s, "mha", o) for r, s in readings.items() for o in OPTIMIZERS}
        rope = {o: self.change("mla", "mha", o) for o in OPTIMIZERS}
        nope_half = {key: in_band(c, (low, high)) for key, c in nope.items()}  # (holds, fails) per reading and optimizer
        rope_half = {o: at_most(c, PAPER_QUALITY["A2 RoPE"]) for o, c in rope.items()}
        ours = "; ".join(f"no RoPE ({r}) against MHA: " + ", ".join(f"{OPTIMIZER_LABELS[o]} {nope[r, o].mean:+.1f}%" for o in OPTIMIZERS)
                         for r in readings)
        ours += "; with RoPE: " + ", ".join(f"{OPTIMIZER_LABELS[o]} {c.mean:+.1f}%" for o, c in rope.items())
        if NO_POSITIONS in self.settings:  # RoPE's own effect, the rest of MLA unchanged
            ours += "; RoPE against no positions, MLA alone: " + ", ".join(
                f"{OPTIMIZER_LABELS[o]} {self.change('mla', NO_POSITIONS, o).mean:+.1f}%" for o in OPTIMIZERS)
        return {"claim": "A2", "paper": f"without RoPE MLA is {low}-{high}% worse than MHA; with RoPE {-PAPER_QUALITY['A2 RoPE']:.0f}% better",
                "ours": ours,
                "verdict": label([nope_half[r, o][0] and rope_half[o][0] for r, o in nope],
                                 fails=[nope_half[r, o][1] or rope_half[o][1] for r, o in nope])}

    def e8_row(self) -> dict:
        """E8, a training-time overhead, judged apart from our kernels: the FLOPs per token
        predict the overhead an implementation running MoE-MLA at dense MHA's model-FLOPs
        utilisation would have. The claim fails where even that prediction exceeds it (no
        implementation reaches it), or where ours misses it with both sides at comparable
        utilisation; where ours misses it with MoE-MLA running at a lower utilisation, it holds
        only for a better implementation, which the evidence names (:func:`~muonlib.results.rules.overhead_verdict`).
        Measured on compiled training steps with AdamW, the optimizer the companion paper trains with."""
        import torch

        from ..models import GPT, preset
        from ..train import flops_per_token

        throughput = training_throughput(self.size(), self.batch())
        with torch.device("meta"):
            flops = {v: flops_per_token(GPT(preset(self.size(), v))) for v in ("mha", "moe-mla")}
        predicted = flops["moe-mla"] / flops["mha"]
        mha, moe = throughput.loc["mha", "adamw"], throughput.loc["moe-mla", "adamw"]
        measured = mha.tokens_per_s / moe.tokens_per_s
        claimed = 1 + PAPER_QUALITY["E8"] / 100
        relative_mfu, needed = predicted / measured, predicted / claimed  # MoE-MLA's utilisation over MHA's: ours, the claim's
        return {"claim": "E8", "paper": f"MoE-MLA-RoPE trains with {PAPER_QUALITY['E8']:.0f}% time overhead",
                "ours": f"FLOPs per token predict {100 * (predicted - 1):.0f}% at {self.size()}; measured {100 * (measured - 1):.0f}% more time "
                        f"per token than dense MHA (compiled training steps with AdamW, median of {min(mha.repeats, moe.repeats)} on one {mha.gpu}, "
                        f"this library's kernels), MoE-MLA at "
                        f"{relative_mfu:.0%} of MHA's utilisation; the claim holds for an implementation at {needed:.0%} or more",
                "verdict": overhead_verdict(predicted, measured, claimed)}

    def active_parameter_change(self, setting: str, dense: str = "mha") -> float:
        """Active non-embedding parameters of ``setting`` against ``dense``, in %."""
        import torch

        from ..models import GPT, preset

        def active(s):
            config = self.header(s)["provenance"]["config"]
            model_config = preset(config["model"], config["variant"], **config["model_changes"])
            with torch.device("meta"):
                model = GPT(model_config)
            return model.num_parameters(active=True) - model_config.vocab_size * model_config.d_model

        return 100 * (active(setting) / active(dense) - 1)

    def verdicts(self, decode: pd.DataFrame | None = None, capped: bool = True, why: str = NOT_RUN) -> pd.DataFrame:
        """M23 (MoE-MLA + Muon best in every measured column of Table 3), M24's perplexity half,
        E3, E4, E5, E7, E8, A1 and A2, each from the runs (E8 from the benchmark). E3 and A1's
        second half claim small costs, which fail only by costing more (:func:`~muonlib.results.rules.at_most_verdict`).
        A claim whose settings the plan did not train (:data:`CLAIM_NEEDS`) is open.
        ``capped``: as these runs alone judge them, one protocol's (:func:`~muonlib.results.rules.one_protocol`);
        else as they found, for :class:`ArchitectureProtocols` to set beside another protocol's;
        ``why`` the capped ones judge alone (:func:`~muonlib.results.rules.original_only`)."""
        untrained = {c: s for c, s in CLAIM_NEEDS.items() if s not in self.settings}
        rows = [{"claim": claim, "paper": f"{QUOTES[claim].what} ({QUOTES[claim].where})",
                 "ours": f"not measured: this plan trains {', '.join(self.settings)}, not {setting}", "verdict": OPEN}
                for claim, setting in untrained.items()]
        rows += self.moe_rows() if "moe-mla" in self.settings else [E7_UNTRAINED]
        rows += [self.e8_row(), self.a1_row(capped, why)] + ([] if "A2" in untrained else [self.a2_row()])
        verdicts = pd.DataFrame(rows).set_index("claim")
        if capped:
            verdicts = one_protocol_table(verdicts, claims=verdicts.index.drop([*FROM_BENCHMARK, "A1"]), why=why)  # A1 capped above
        return with_decode_parts(verdicts, decode)

    def moe_rows(self) -> list[dict]:
        """M23, M24, E3, E4, E5 and E7: the claims about MoE-MLA, from a plan that trained it."""
        table = self.table3()
        rows = []
        three = table.loc[[(a, o) for a in TABLE3_ARCHITECTURES for o in OPTIMIZERS if a in self.settings]]
        lower_better = ["perplexity", "FLOPs to target (rel.)", "time to target (s)", "peak memory GB"]
        best = {col: three[col].idxmin() for col in lower_better}
        wins = [col for col, who in best.items() if who == ("moe-mla", "muon")]
        improves = {a: compare(self.test_losses(a, "muon"), self.test_losses(a, "adamw")) for a in TABLE3_ARCHITECTURES if a in self.settings}
        m23 = label([col in wins for col in best] + [v == -1 for v in improves.values()],
                    fails=[col not in wins for col in best] + [v == 1 for v in improves.values()])
        rows.append({"claim": "M23", "paper": "MoE-MLA + Muon gives the best result in every column of Table 3; Muon improves every architecture",
                     "ours": f"at {self.size()}, best per column: " + "; ".join(f"{col} {a} + {OPTIMIZER_LABELS[o]}" for col, (a, o) in best.items())
                             + "; Muon's perplexity lower beyond the seed spread for "
                             + ", ".join(a for a, v in improves.items() if v == -1),
                     "verdict": m23})

        m24 = self.change("moe-mla", "mha", "muon", "adamw")
        low, high = PAPER_QUALITY["M24"]
        rows.append({"claim": "M24", "paper": f"MoE-MLA + Muon improves perplexity by {low}-{high}% (over MHA + AdamW)",
                     "ours": f"{-m24.mean:.1f}% lower perplexity (seeds {-m24.high:.1f} to {-m24.low:.1f})",
                     "verdict": band_verdict([m24], (-high, -low))})

        e3 = {o: self.change("moe-mla", "mha", o) for o in OPTIMIZERS}
        rows.append({"claim": "E3", "paper": f"MoE-MLA-RoPE's perplexity {PAPER_QUALITY['E3']}% above dense",
                     "ours": "; ".join(f"{OPTIMIZER_LABELS[o]}: {c.mean:+.1f}% (seeds {c.low:+.1f} to {c.high:+.1f})" for o, c in e3.items()),
                     "verdict": at_most_verdict(e3.values(), PAPER_QUALITY["E3"])})

        spec_active = self.active_parameter_change("moe-mla")
        stated = QUOTES["E4"].value
        e4_text = f"the stated experts give {spec_active:+.0f}% active non-embedding parameters against dense MHA, not {stated['active']:+.0f}%"
        if "moe-mla small" in self.settings:
            e4 = {o: self.loss_change("moe-mla small", "mha", o) for o in OPTIMIZERS}
            e4_text += (f"; sized to {self.active_parameter_change('moe-mla small'):+.0f}%, test loss against dense: "
                        + "; ".join(f"{OPTIMIZER_LABELS[o]} {c.mean:+.1f}%" for o, c in e4.items()))
            e4_verdict = at_most_verdict(e4.values(), PAPER_QUALITY["E4"])
        else:
            e4_text += f"; the MoE sized to {stated['active']:+.0f}% is not trained yet"
            e4_verdict = label([False]) if spec_active > 0 else OPEN  # more active parameters, not fewer
        rows.append({"claim": "E4", "paper": f"{-stated['loss']}% lower validation loss than a dense {stated['dense']}M model "
                                             f"with {-stated['active']:.0f}% fewer active parameters",
                     "ours": e4_text, "verdict": e4_verdict})

        if "moe-mla flop-matched" in self.settings:
            e5 = {o: self.loss_change("moe-mla flop-matched", "mha", o) for o in OPTIMIZERS}
            rows.append({"claim": "E5", "paper": f"FLOP-matched: {-PAPER_QUALITY['E5']}% better than dense",
                         "ours": "test loss of MoE-MLA trained on dense MHA's FLOPs (its own full schedule) against MHA's: "
                                 + "; ".join(f"{OPTIMIZER_LABELS[o]} {c.mean:+.1f}%" for o, c in e5.items()),
                         "verdict": at_most_verdict(e5.values(), PAPER_QUALITY["E5"])})
        else:
            rows.append({"claim": "E5", "paper": f"FLOP-matched: {-PAPER_QUALITY['E5']}% better than dense",
                         "ours": "MoE-MLA trained on dense MHA's FLOPs is not trained yet", "verdict": OPEN})

        balance = self.balance_table()
        if "moe-mla unbalanced" in self.settings:
            pairs = [(balance.loc[("moe-mla", o), "CV, last tenth"], balance.loc[("moe-mla unbalanced", o), "CV, last tenth"]) for o in OPTIMIZERS]
            rows.append({"claim": "E7", "paper": "bias balancing keeps the experts balanced without an auxiliary loss",
                         "ours": "expert-load CV over the last tenth, balanced against unbalanced: "
                                 + "; ".join(f"{OPTIMIZER_LABELS[o]} {b.mean:.2f} vs {u.mean:.2f}" for o, (b, u) in zip(OPTIMIZERS, pairs))
                                 + f"; a router choosing at random would show {self.random_router_cv():.3f} from sampling alone, "
                                   f"the balanced routers' CV {min(b.mean for b, _ in pairs) / self.random_router_cv():.1f} to "
                                   f"{max(b.mean for b, _ in pairs) / self.random_router_cv():.1f} times that",
                         "verdict": label([compare(b.values, u.values) == -1 for b, u in pairs],
                                          fails=[compare(b.values, u.values) == 1 for b, u in pairs])})
        else:
            rows.append(E7_UNTRAINED)
        return rows


class ArchitectureProtocols(Protocols):
    """The architectures' verdicts under each protocol (:class:`~muonlib.results.protocols.Protocols`),
    with the decoding benchmark's parts of the claims that have them."""

    experiment, results_type = "architectures", ArchitectureResults
    not_from_runs = FROM_BENCHMARK
    claim_settings = {"M23": ("mha", "mla", "moe-mla"), "M24": ("mha", "moe-mla"), "E3": ("mha", "moe-mla"),
                      "E4": ("mha", "moe-mla", "moe-mla small"), "E5": ("mha", "moe-mla", "moe-mla flop-matched"),
                      "E7": ("mha", "moe-mla", "moe-mla unbalanced"), "A1": ("mha", "mla"),
                      "A2": ("mha", "mla", "mla-norope", NO_POSITIONS)}

    def verdicts(self, decode: pd.DataFrame | None = None) -> pd.DataFrame:
        if self.judged_by == ("original",):
            return self.with_ready(self.results["original"].verdicts(decode, why=self.unfinished()),
                                   lambda table: with_decode_parts(table, decode))
        return with_decode_parts(super().verdicts(), decode)
