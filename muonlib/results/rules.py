"""The verdict labels as the book defines them (``book/intro.md``), as code: :func:`label` decides
from the evidence's shape, the others are its common shapes."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ..analysis import SeedSpread
from .paper import PAPER

#: the book's verdict labels (``book/intro.md``); code names them only through these
VERIFIED, CONDITIONAL, REFUTED, UNTESTABLE, OPEN = "verified", "holds only under conditions", "refuted", "not testable here", "open"


def band_distance(value: float, band: tuple[float, float]) -> float:
    """How far ``value`` lies outside ``band`` (0 inside)."""
    return max(band[0] - value, 0.0, value - band[1])


def label(holds, fails=None) -> str:
    """The book's verdict labels (``book/intro.md``) as code, from the evidence's shape.

    ``holds`` says, for each condition a claim was measured under (a budget, a size, an
    optimizer, one half of a conjunction), whether the measurement agrees with the claim as
    stated; ``None`` if it was not measured at all. ``fails`` says, per condition, whether the
    measurement goes against the claim in the direction the claim can fail (beyond the seed
    spread where there are seeds); by default, wherever it does not hold. Then: *verified*
    where it holds under every condition; *holds only under conditions* where it holds under
    some; *refuted* where it holds under none and fails under some; *not testable here* where
    nothing was measured, or nothing measured could tell (no condition holds or fails).
    """
    if holds is None:
        return UNTESTABLE
    holds = [bool(h) for h in holds]
    fails = [not h for h in holds] if fails is None else [bool(f) for f in fails]
    if len(fails) != len(holds):
        raise ValueError(f"{len(holds)} conditions hold or not, but {len(fails)} fail or not: one each")
    if not holds:
        return UNTESTABLE
    if all(holds):
        return VERIFIED
    if any(holds):
        return CONDITIONAL
    return REFUTED if any(fails) else UNTESTABLE


def in_band(change, band: tuple[float, float]) -> tuple[bool, bool]:
    """Whether a range claim holds for one measured change (a
    :class:`~muonlib.analysis.SeedSpread`): its mean lies in ``band``; and whether it fails:
    every seed's lies on one side of it."""
    if not change.values:  # no seed pair measured it
        return False, False
    return band[0] <= change.mean <= band[1], change.high < band[0] or change.low > band[1]


def at_most(change, claimed: float) -> tuple[bool, bool]:
    """Whether a claim that a change is at most ``claimed`` holds for one measured change (a
    :class:`~muonlib.analysis.SeedSpread`): its mean is; and whether it fails: every seed's exceeds it."""
    if not change.values:  # no seed pair measured it
        return False, False
    return change.mean <= claimed, change.low > claimed


def band_verdict(changes, band: tuple[float, float]) -> str:
    """A range claim (:func:`in_band`), one condition per measured change; with none measured,
    not testable."""
    readings = [in_band(c, band) for c in changes]
    return label([h for h, _ in readings], fails=[f for _, f in readings])


def every_target_verdict(values: pd.Series, band: tuple[float, float], by: str) -> str:
    """A claim about *any* loss threshold, one condition per level ``by`` (a budget, a size) of
    ``values``, a measurement per target (index level ``offset``) and seed: it holds at a level
    where every target's mean over the seeds lies in ``band`` (:func:`in_band`), and fails where
    some target lies outside it for every seed."""
    per_target = values.groupby(level=[by, "offset"]).agg(lambda seeds: in_band(SeedSpread(tuple(seeds.dropna())), band))
    holds = per_target.map(lambda h: h[0]).groupby(level=by).all()
    fails = per_target.map(lambda h: h[1]).groupby(level=by).any()
    return label(list(holds), fails=list(fails[holds.index]))


def at_most_verdict(changes, claimed: float) -> str:
    """A claim that a change is at most ``claimed`` (%, in the change's sign: a cost such as a
    0.8% higher perplexity, or a benefit stated as one figure such as a 6.9% lower loss, -6.9),
    one condition per measured change (an optimizer, a setting; :func:`at_most`)."""
    changes = list(changes)
    if not any(c.values for c in changes):
        raise ValueError("no seed pair to judge the change by: the compared settings share no seed")
    holds, fails = zip(*(at_most(c, claimed) for c in changes))
    return label(holds, fails=fails)


#: where M18's gain at equal compute lies against the paper's band (:func:`gain_bounds`)
INSIDE, ABOVE, BELOW, UNDETERMINED = "inside", "above", "below", "undetermined"


def gain_bounds(tokens: pd.DataFrame, flops: pd.DataFrame) -> pd.Series:
    """Where Muon's gain at equal compute lies against the paper's 2-4% band, per row (budget or
    size) of two gap tables. It lies between the gain read on equal FLOPs (``flops``: Muon's
    schedule has not finished decaying where its FLOPs reach AdamW's, so a run planned for those
    FLOPs would do better) and the one on equal tokens (``tokens``: there Muon spent more FLOPs),
    as long as a planned run's loss falls with its budget; where a curve turns up, the readings
    can cross, and then place the gain only where both lie beyond the band. ``"inside"`` where both bounds' means lie in the band and
    Muon is lower beyond the seed spread at equal FLOPs; ``"above"`` or ``"below"`` where a bound
    lies beyond the band for every seed; else ``"undetermined"``: only a run planned for AdamW's
    FLOPs could tell."""
    low, high = PAPER["M18"]
    tokens = tokens.loc[flops.index]

    def where(lower, upper, better: bool) -> str:
        if not (lower.values and upper.values):
            return UNDETERMINED
        if upper.high < low:
            return BELOW
        if lower.low > high:
            return ABOVE
        crossed = lower.mean > upper.mean
        return INSIDE if better and not crossed and low <= lower.mean and upper.mean <= high else UNDETERMINED

    return pd.Series([where(f, t, s == -1) for f, t, s in zip(flops["gain %"], tokens["gain %"], flops.separated)], index=flops.index)


def gain_bounds_text(bounds: pd.Series, name=str) -> str:
    """Where the gain at equal compute lies (:func:`gain_bounds`), grouped: "in the band at XS, S;
    undetermined at L", each row's index named by ``name``."""
    words = {INSIDE: "in the band", ABOVE: "above it", BELOW: "below it", UNDETERMINED: "undetermined"}
    return "; ".join(f"{words[w]} at {', '.join(name(i) for i in bounds.index[bounds == w])}" for w in words if (bounds == w).any())


def gain_verdict(tokens: pd.DataFrame, flops: pd.DataFrame) -> str:
    """M18 from its gap tables on equal tokens and on equal FLOPs, one condition per row (budget
    or size): it holds where the gain at equal compute lies in the band, fails where it lies
    outside beyond the seed spread, and tells neither way between (:func:`gain_bounds`)."""
    bounds = gain_bounds(tokens, flops)
    return label(list(bounds == INSIDE), fails=list(bounds.isin([ABOVE, BELOW])))


#: the condition a verdict from the original protocol's runs alone holds under
ORIGINAL_ONLY = "under the original protocol only (a 45% warm-up; Muon's momentum 0.95 with Nesterov)"
#: why the original protocol's runs judge alone, where the experiment has no other protocol
NOT_RUN = "the paper's recipe has not been run for it yet"


#: how the evidence says what one protocol's runs found, where the label alone would not read as a finding
FOUND = {CONDITIONAL: "held in part"}


def original_only(found: str, why: str = NOT_RUN) -> str:
    """The note a capped verdict's evidence carries: what the original protocol's runs found,
    and why they judge alone (``why``, a clause without semicolons)."""
    if ";" in why:
        raise ValueError(f"why {why!r} has a semicolon: the notes of a verdict's evidence are separated by them")
    return f"{FOUND.get(found, found)} {ORIGINAL_ONLY}: {why}"


def one_protocol(verdict: str) -> str:
    """A verdict from one protocol's runs: a claim is verified or refuted only where the paper's
    recipe and a second protocol agree, so one that one protocol verifies or refutes holds only
    under that protocol's conditions."""
    return CONDITIONAL if verdict in (VERIFIED, REFUTED) else verdict


def tested_in_part(verdict: str) -> str:
    """A verdict on part of what a claim covers (one of the sizes a table gives a value for): a
    part that disagrees refutes the claim, but one that agrees verifies only that part, so the
    claim holds only under its conditions."""
    return CONDITIONAL if verdict == VERIFIED else verdict


def judged(found: str) -> bool:
    """Whether runs found something about a claim (not "not testable here", not "open"): what one
    protocol's runs found is then said, with the protocol, whether or not the cap changes the label."""
    return found in (VERIFIED, CONDITIONAL, REFUTED)


def one_protocol_table(verdicts: pd.DataFrame, claims=None, why: str = NOT_RUN) -> pd.DataFrame:
    """:func:`one_protocol` on a verdict table's ``claims`` (all by default) judged from the
    original protocol's runs alone; the evidence says what the runs found, under what, and why
    they judge alone (:func:`original_only`)."""
    out = verdicts.copy()
    for claim in out.index if claims is None else claims:
        if judged(found := out.at[claim, "verdict"]):
            out.at[claim, "ours"] = f"{out.at[claim, 'ours']}; {original_only(found, why)}"
            out.at[claim, "verdict"] = one_protocol(found)
    return out


def combine_verdicts(labels: list[str]) -> str:
    """One verdict from several: theirs if they agree, else the claim holds under some
    conditions (those of the verdicts that found it holding) only."""
    return labels[0] if len(set(labels)) == 1 else CONDITIONAL


def across_parts(found: list[str], verdicts: list[str]) -> str:
    """One verdict for a claim judged in parts (the sizes' runs, XS's budgets): ``found`` what
    each part's runs found, ``verdicts`` each part's verdict as it stands (capped where one
    protocol's runs judge alone). A claim no part found holding is refuted by one part whose
    refutation both protocols agree on; else :func:`combine_verdicts` of the standing verdicts.
    A part whose runs could not tell (not testable) is left out, unless every part is."""
    kept = [(f, v) for f, v in zip(found, verdicts) if f != UNTESTABLE] or list(zip(found, verdicts))
    found, verdicts = [f for f, _ in kept], [v for _, v in kept]
    if all(f == REFUTED for f in found) and REFUTED in verdicts:
        return REFUTED
    return combine_verdicts(verdicts)


def side_by_side(tables: dict[str, pd.DataFrame], judged_by: Sequence[str]) -> pd.DataFrame:
    """Per claim of the paper protocol's verdict table: each protocol's evidence and verdict
    (``tables``: protocol -> its table), and the verdict that stands, :func:`combine_verdicts`
    of the ``judged_by`` protocols'."""
    first = tables["paper"]
    rows = []
    for claim in first.index:
        row = {"claim": claim, "paper": first.paper[claim]}
        for protocol, table in tables.items():
            row[f"{protocol}: ours"], row[f"{protocol}: verdict"] = table.ours[claim], table.verdict[claim]
        row["verdict"] = combine_verdicts([tables[p].verdict[claim] for p in judged_by])
        rows.append(row)
    return pd.DataFrame(rows).set_index("claim")


def conjunction(parts: list[str]) -> str:
    """A claim of several parts: refuted if one part is, else :func:`combine_verdicts`."""
    return REFUTED if REFUTED in parts else combine_verdicts(parts)


def saving_band(saving: float, paper: float) -> str:
    """A claimed saving (%) against the one computed, two conditions: at least the claim (within
    two points) and as claimed. Both: verified; a larger saving holds only under conditions
    (the claim's number then holds for some other layout, not for the one stated); a smaller
    one is refuted."""
    return label([saving >= paper - 2, abs(saving - paper) <= 2])


#: two implementations run at comparable model-FLOPs utilisation when the lower is within 10% of the higher
COMPARABLE_MFU = 0.9


def overhead_verdict(predicted: float, measured: float, claimed: float, tolerance: float = 0.1) -> str:
    """A claimed time ratio against one architecture's baseline, apart from the code that
    measured it: ``predicted`` is the ratio of FLOPs per token (what an implementation running
    both at the same utilisation would measure), ``measured`` ours. The claim must be reachable
    (the prediction within ``tolerance`` of it, or below) and reached (ours within
    ``tolerance``); a miss of ours counts against the claim only where both sides ran at
    comparable utilisation (:data:`COMPARABLE_MFU`), else it speaks of our kernels and the
    claim holds only under the condition of a better implementation. An overhead is a cost,
    so a smaller one than claimed also reaches it."""
    reachable = label([predicted <= claimed + tolerance])
    within = measured <= claimed + tolerance
    reached = label([within], fails=[not within and predicted / measured >= COMPARABLE_MFU])
    return conjunction([reachable, reached])


#: an implementation that reaches this share of its roofline runs near the hardware's limit
NEAR_ROOFLINE = 0.5


def speedup_verdict(predicted, measured, shares, claimed: float, tolerance: float = 0.9) -> str:
    """A claimed speed-up of one decoder over another, apart from the code that measured it, one
    condition per batch: ``predicted`` is the bandwidth-bound ratio (the bytes each step must
    read, the baseline's over ours), ``measured`` ours, ``shares`` each side's share of its
    roofline. The claim must be reachable (a prediction within ``tolerance`` of it somewhere)
    and reached; a miss of ours counts against it only where both sides run near their
    rooflines (:data:`NEAR_ROOFLINE`), else it speaks of our kernels and the claim holds only
    under the condition of faster ones."""
    reachable = label([p >= tolerance * claimed for p in predicted])
    reached = [m >= tolerance * claimed for m in measured]
    return conjunction([reachable, label(reached, fails=[not r and min(s) >= NEAR_ROOFLINE for r, s in zip(reached, shares)])])
