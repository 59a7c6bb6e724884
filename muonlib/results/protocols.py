"""An experiment's verdicts under each protocol its runs are complete for, side by side: a
verdict stands only where the paper's recipe and the tuned protocol agree. Each chapter whose
experiment runs under several protocols names its results class here once
(:class:`~muonlib.results.architectures.ArchitectureProtocols` and the others)."""

from __future__ import annotations

from dataclasses import dataclass
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

    A subclass names its ``experiment`` and ``results_type``: a class with
    ``load(name, hardware, protocol=...)`` and ``verdicts(capped=..., why=...)``."""

    experiment: ClassVar[str]
    results_type: ClassVar[type]
    results: dict  # protocol -> its results: the complete ones, and the original protocol's always (its chapter shows what has run)
    progress: pd.DataFrame  # per protocol: the GPU kinds its finished runs ran on (its plan's before any), the runs of its plan finished and those it wants now

    @classmethod
    def load(cls, name: str | None = None, hardware: dict[str, str] | None = None) -> "Protocols":
        """``name``: the experiment's results folder, the class's ``experiment`` by default;
        ``hardware``: the GPU kind each protocol's runs are read from, by default those that made
        the saved ones (:func:`~muonlib.experiments.protocol_hardware`)."""
        from ..experiments import experiment, finished_runs, original_reader, protocol_hardware, ran_on, result_files, result_folders, run_id

        name = name or cls.experiment
        hardware = hardware or protocol_hardware(name)
        rows, complete = [], {}
        for protocol, kind in hardware.items():
            folders = [f for f in result_folders(name, None, protocol) if f.exists()]
            finals = finished_runs(folders, original_reader(kind, protocol))
            wanted, _ = experiment(name).plan_for(kind, protocol).plan(kind, finals)
            ids = {run_id(c, kind) for c in wanted}
            missing = len(ids - set(finals))
            files = result_files(folders, original_reader(kind, protocol))
            made_on = sorted({ran_on(files[run]).upper() for run in ids & set(finals)}) or [kind.upper()]
            rows.append({"protocol": protocol, "GPU": ", ".join(made_on), "runs finished": len(ids & set(finals)),
                         "runs wanted now": missing})  # a sweep that ends at its grid's edge, or chosen rates' seeds, want more later
            if not missing or protocol == "original":
                complete[protocol] = cls.results_type.load(name, kind, protocol=protocol)
        return cls(complete, pd.DataFrame(rows).set_index("protocol"))

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

    def verdicts(self) -> pd.DataFrame:
        """Per claim: each complete protocol's evidence and verdict, and the verdict that stands;
        while the original protocol judges alone, its evidence says how far the others are."""
        if self.judged_by == ("original",):
            return self.results["original"].verdicts(why=self.unfinished())
        shown = [p for p in self.results if p in self.judged_by or not self.progress.loc[p, "runs wanted now"]]  # not an unfinished original plan
        tables = {p: self.results[p].verdicts(capped=False) for p in shown}
        verdicts = side_by_side(tables, self.judged_by)
        verdicts["ours"] = ["; ".join(f"{p}: {tables[p].ours[claim]}" for p in self.judged_by) for claim in verdicts.index]
        return verdicts
