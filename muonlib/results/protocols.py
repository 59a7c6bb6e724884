"""An experiment's verdicts under each protocol its runs are complete for, side by side: a
verdict stands only where the paper's recipe and the tuned protocol agree. Each chapter whose
experiment runs under several protocols names its results class here once
(:class:`~muonlib.results.architectures.ArchitectureProtocols` and the others)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import pandas as pd

from .rules import NOT_RUN, side_by_side

PROTOCOL_NAMES = {"original": "the original protocol", "paper": "the paper's recipe", "tuned": "the tuned protocol"}


@dataclass
class Protocols:
    """The verdicts under each protocol whose runs are complete, and how far each protocol's
    runs are. A verdict stands only where the paper's recipe and the tuned protocol agree
    (:func:`~muonlib.results.rules.combine_verdicts`); until both are complete the original
    protocol's runs judge alone, capped as one protocol's
    (:func:`~muonlib.results.rules.one_protocol`), their evidence saying how far the others are.

    A claim that compares some of a plan's settings, not all (:attr:`claim_settings`), is
    judged by the paper's recipe and the tuned protocol once both have finished the settings it
    compares, whether or not the rest of their plans has: its arms are final then, each at its
    chosen rate with its seeds.

    A subclass names its ``experiment`` and ``results_type``: a class with
    ``load(name, hardware, protocol=...)`` and ``verdicts(capped=..., why=...)``; and where its
    plan is a ladder of settings, the settings each claim compares."""

    experiment: ClassVar[str]
    results_type: ClassVar[type]
    #: claim -> the plan's settings its verdict reads, for the claims judged before the whole plan has finished
    claim_settings: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: claims judged from something other than the runs (a benchmark), alike under every protocol, so their evidence is said once
    not_from_runs: ClassVar[tuple[str, ...]] = ()
    results: dict  # protocol -> its results: the complete ones, and the original protocol's always (its chapter shows what has run)
    progress: pd.DataFrame  # per protocol: the GPU kinds its finished runs ran on (its plan's before any), the runs of its plan finished and those it wants now
    # protocol -> (its results limited to the settings it has finished, the claims those judge), for the new protocols
    ready: dict = field(default_factory=dict)

    @classmethod
    def load(cls, name: str | None = None, hardware: dict[str, str] | None = None) -> "Protocols":
        """``name``: the experiment's results folder, the class's ``experiment`` by default;
        ``hardware``: the GPU kind each protocol's runs are read from, by default those that made
        the saved ones (:func:`~muonlib.experiments.protocol_hardware`)."""
        from ..experiments import experiment, plan_progress, protocol_hardware, run_id

        name = name or cls.experiment
        hardware = hardware or protocol_hardware(name)
        rows, complete, ready = [], {}, {}
        for protocol, kind in hardware.items():
            progress = plan_progress(name, protocol, kind)
            wanted, finals, design = progress.wanted, progress.finals, experiment(name).plan_for(kind, protocol)
            rows.append({"protocol": protocol, "GPU": ", ".join(progress.made_on), "runs finished": progress.finished,
                         "runs wanted now": progress.missing})  # a sweep that ends at its grid's edge, or chosen rates' seeds, want more later
            if not progress.missing or protocol == "original":
                complete[protocol] = cls.results_type.load(name, kind, protocol=protocol)
            if protocol != "original" and cls.claim_settings and finals:  # complete or not, the claims its finished settings judge
                pending = {design.setting_of(c) for c in wanted if run_id(c, kind) not in finals}
                results = complete.get(protocol) or cls.results_type.load(name, kind, protocol=protocol)
                finished = [s for s in results.settings if s not in pending]
                claims = tuple(c for c, needs in cls.claim_settings.items() if set(needs) <= set(finished))
                if claims:
                    ready[protocol] = (dataclasses.replace(results, settings=finished), claims)
        return cls(complete, pd.DataFrame(rows).set_index("protocol"), ready)

    def unfinished(self) -> str:
        """Why the original protocol's runs still judge alone: the other protocols' runs are not
        finished, with how many are and how many more their plans want so far (a sweep that
        settles can want seeds it did not before)."""
        others = self.progress.drop(index="original")
        others = others[others["runs wanted now"] > 0]
        if others.empty:
            return NOT_RUN
        return (f"{' and '.join(PROTOCOL_NAMES.get(p, p) for p in others.index)} {'are' if len(others) > 1 else 'is'} still running "
                f"({' and '.join(str(n) for n in others['runs finished'])} runs finished, "
                f"{' and '.join(str(n) for n in others['runs wanted now'])} more wanted so far)")

    @property
    def judged_by(self) -> tuple[str, ...]:
        """Which protocols' verdicts are combined, the paper's and the tuned one's once both are
        complete, else the original's alone."""
        return ("paper", "tuned") if {"paper", "tuned"} <= set(self.results) else ("original",)

    def complete_alone(self) -> list[str]:
        """The new protocols whose whole plan is complete while the other's is not: each judges
        every claim, and adds its finding to the evidence (:meth:`with_ready`) until both can."""
        return [p for p in ("paper", "tuned") if p in self.results] if self.judged_by == ("original",) else []

    def ready_claims(self) -> list[str]:
        """The claims the paper's recipe and the tuned protocol both judge before their plans are
        complete (:attr:`claim_settings`), in the order the class lists them."""
        both = [set(self.ready[p][1]) if p in self.ready else set() for p in ("paper", "tuned")]
        return [c for c in self.claim_settings if c in both[0] & both[1]]

    def found_by(self, protocol: str) -> pd.DataFrame | None:
        """A protocol's verdicts as its runs found them (uncapped): every claim once its whole plan
        is complete (the original protocol's always), before then the claims its finished
        settings judge (``ready``), else None."""
        if protocol in self.results:
            return self.results[protocol].verdicts(capped=False)
        if protocol in self.ready:
            results, claims = self.ready[protocol]
            return results.verdicts(capped=False).loc[list(claims)]
        return None

    def with_ready(self, alone: pd.DataFrame, finish=lambda table: table) -> pd.DataFrame:
        """``alone`` (the original protocol's verdicts, capped) with each of :meth:`ready_claims`
        judged instead as :meth:`verdicts` judges every claim once both plans are complete,
        ``finish`` applied to those rows (a chapter's parts from elsewhere), each protocol's verdict
        in their evidence rather than in columns of its own, which the other claims would leave
        empty. A claim one new protocol alone has finished (the settings it compares, or that
        protocol's whole plan) keeps the original's verdict; its evidence adds that protocol's
        finding, which cannot stand alone, unless the claim is not judged from the runs
        (:attr:`not_from_runs`)."""
        tables = {p: self.found_by(p) for p in (*self.ready, *self.complete_alone())}
        out = alone.copy()
        for protocol, table in tables.items():
            for claim in set(table.index) - set(self.ready_claims()) - set(self.not_from_runs):
                out.at[claim, "ours"] += (f"; {PROTOCOL_NAMES[protocol]}, whose runs for this claim have finished, alone: "
                                          f"{table.ours[claim]} ({table.verdict[claim]})")
        if not (claims := self.ready_claims()):
            return out
        both = side_by_side({p: tables[p].loc[claims] for p in ("paper", "tuned")}, ("paper", "tuned"))
        both["ours"] = ["; ".join(f"{p}: {tables[p].ours[claim]} ({tables[p].verdict[claim]})" for p in ("paper", "tuned")) for claim in both.index]
        return pd.concat([out.drop(index=claims), finish(both[alone.columns])]).loc[alone.index]  # each protocol's verdict in its evidence

    def findings(self, standing: pd.Series) -> pd.DataFrame:
        """Per claim: each protocol's verdict as its runs found it (uncapped): the original
        protocol's always, a new protocol's where its runs for the claim have finished (its
        whole plan, or the settings the claim compares), else empty; and ``standing``, the
        verdict that stands (:meth:`verdicts`, which a subclass may join with parts from
        elsewhere). Where it differs from the original's, the protocols changed the verdict."""
        found = {p: table.verdict for p in PROTOCOL_NAMES if (table := self.found_by(p)) is not None}
        table = pd.DataFrame(found).reindex(columns=list(PROTOCOL_NAMES))
        return table.assign(verdict=standing.loc[table.index])

    def verdicts(self) -> pd.DataFrame:
        """Per claim: each complete protocol's evidence and verdict, and the verdict that stands
        (the evidence names each judging protocol's verdict, as :meth:`with_ready` does);
        while the original protocol judges alone, its evidence says how far the others are and
        what a new protocol that has finished found (:meth:`with_ready`), except where both new
        protocols have finished the settings a claim compares."""
        if self.judged_by == ("original",):
            return self.with_ready(self.results["original"].verdicts(why=self.unfinished()))
        shown = [p for p in self.results if p in self.judged_by or not self.progress.loc[p, "runs wanted now"]]  # not an unfinished original plan
        tables = {p: self.found_by(p) for p in shown}
        verdicts = side_by_side(tables, self.judged_by)
        verdicts["ours"] = [tables[self.judged_by[0]].ours[claim] if claim in self.not_from_runs
                            else "; ".join(f"{p}: {tables[p].ours[claim]} ({tables[p].verdict[claim]})" for p in self.judged_by)
                            for claim in verdicts.index]  # each protocol's verdict, so that a disagreement names who decides
        return verdicts
