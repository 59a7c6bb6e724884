"""The fair-comparison protocol in small functions: how a learning-rate sweep finds an
optimum strictly inside its grid, how seeds decide whether a difference is real, how a
budget is stated, and how a loss spike is told apart from a hard batch.

Each function knows nothing of models or optimizers: they take numbers and return numbers,
so the experiment plans, the book's chapters and the tests that guard verdicts share them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

#: neighbouring rates of a sweep
SWEEP_FACTOR = 2.0
#: rates a sweep may add beyond its first grid, on each side
SWEEP_EXTENSIONS = 3
#: the next warm-up fraction tried beyond the longest, as a multiple of it
WARMUP_FACTOR = 1.5
#: warm-up fractions the check may add beyond its first grid
WARMUP_EXTENSIONS = 2
#: the longest warm-up fraction tried
MAX_WARMUP = 0.5
#: steps of history a loss or a gradient norm is compared with
SPIKE_WINDOW = 50
#: how far (10%) a loss spike rises above what its history, or a paired run, predicts
SPIKE_RATIO = 1.1
#: steps of history a paired log-ratio is compared with
PAIRED_WINDOW = 10
#: how many times the median of its history a gradient-norm excursion exceeds
GRAD_NORM_RATIO = 3.0


# ---------------------------------------------------------------- learning-rate sweeps


def rate_key(lr: float) -> float:
    """A rate rounded to 6 significant digits, so that a grid reached by repeated doubling
    matches the rates written in result files."""
    return float(f"{lr:.6g}")


def loss_or_inf(loss: float | None) -> float:
    """A diverged run (``None`` or non-finite) ranks behind every finished one."""
    return float(loss) if loss is not None and math.isfinite(loss) else math.inf


def sweep_rates(grid: Sequence[float], finals: Mapping[float, float | None]) -> tuple[list[float], float | None]:
    """The rates a sweep needs and, once it is settled, its best rate.

    ``finals`` maps the rates run so far to their selection loss. While the best rate sits
    at an edge of what has been run, the sweep extends by one :data:`SWEEP_FACTOR` beyond
    that edge (at most :data:`SWEEP_EXTENSIONS` times on a side), so the chosen rate ends
    strictly inside the grid; past that limit the edge rate is returned and
    :func:`muonlib.analysis.at_edge` says so.
    """
    rates = sorted({rate_key(r) for r in grid} | {rate_key(r) for r in finals})
    finals = {rate_key(r): loss for r, loss in finals.items()}
    if any(r not in finals for r in rates):
        return rates, None
    best = min(rates, key=lambda r: (loss_or_inf(finals[r]), r))
    low, high = min(grid), max(grid)
    if best == rates[-1] and sum(r > high for r in rates) < SWEEP_EXTENSIONS:
        return rates + [rate_key(best * SWEEP_FACTOR)], None
    if best == rates[0] and sum(r < low for r in rates) < SWEEP_EXTENSIONS:
        return [rate_key(best / SWEEP_FACTOR)] + rates, None
    if loss_or_inf(finals[best]) == math.inf:
        raise ValueError(f"every rate of the sweep diverged ({', '.join(f'{r:g}' for r in rates)}): start its grid lower")
    return rates, best


def at_edge(rates: Sequence[float], best: float) -> bool:
    """Whether a sweep's chosen rate is its lowest or highest (no optimum was bracketed)."""
    return best in (min(rates), max(rates))


def warmup_handicaps(losses: Mapping[str, Mapping[float, float | None]]) -> dict[float, dict[str, float]]:
    """For every warm-up fraction, how much each optimizer loses against its own best
    fraction (``losses``: optimizer -> fraction -> its best loss there)."""
    fractions = sorted(next(iter(losses.values())))
    best = {opt: min(loss_or_inf(by_w[w]) for w in fractions) for opt, by_w in losses.items()}
    for opt, loss in best.items():
        if loss == math.inf:
            raise ValueError(f"{opt} diverged at every warm-up fraction checked: check it at lower rates")
    return {w: {opt: loss_or_inf(by_w[w]) - best[opt] for opt, by_w in losses.items()} for w in fractions}


def choose_warmup(grid: Sequence[float], losses: Mapping[str, Mapping[float, float | None]]) -> tuple[list[float], float | None]:
    """The warm-up fractions a check needs and, once settled, the one both optimizers share:
    the fraction whose larger handicap (see :func:`warmup_handicaps`) is smallest, so that
    neither optimizer is held back much by a warm-up chosen for the other. While the longest
    fraction is chosen, a longer one (:data:`WARMUP_FACTOR` times, at most :data:`MAX_WARMUP`)
    is tried, up to :data:`WARMUP_EXTENSIONS` times."""
    fractions = sorted(set(grid).union(*(set(by_w) for by_w in losses.values())))
    if not losses or any(w not in by_w for by_w in losses.values() for w in fractions):
        return fractions, None
    handicaps = warmup_handicaps(losses)
    chosen = min(fractions, key=lambda w: (max(handicaps[w].values()), w))
    if chosen == fractions[-1] and chosen < MAX_WARMUP and sum(w > max(grid) for w in fractions) < WARMUP_EXTENSIONS:
        return fractions + [round(min(MAX_WARMUP, chosen * WARMUP_FACTOR), 4)], None
    return fractions, chosen


#: how far a tuned setting's sweep extends beyond its first grid, by factor-2 steps on each side
TUNE_EXTENSIONS = 2


def tune_setting(grid: Sequence[float], losses: Mapping[float, Sequence[float | None]], paper: float,
                 upper: float = math.inf) -> tuple[list[float], float | None]:
    """The values a tuned setting's sweep needs and, once settled, the one it keeps.

    ``losses`` maps each value run so far to its selection loss at every tuning seed
    (``None``: diverged). Values lie on a factor-2 grid; while the lowest mean loss sits at
    an edge, the sweep extends one factor of 2 beyond it (at most :data:`TUNE_EXTENSIONS`
    times a side, never past ``upper``), so the optimum is bracketed. The value kept is the
    best one's nearest rival to ``paper`` (on a log scale) among those whose seeds overlap
    the best's (see :func:`compare`): a difference within the seed spread is no reason to
    depart from the paper.
    """
    values = sorted(set(grid) | set(losses))
    if any(v not in losses for v in values):
        return values, None
    mean = {v: float(np.mean([loss_or_inf(x) for x in losses[v]])) for v in values}
    best = min(values, key=lambda v: (mean[v], v))
    if best == values[-1] and sum(v > max(grid) for v in values) < TUNE_EXTENSIONS and best * 2 <= upper:
        return values + [best * 2], None
    if best == values[0] and sum(v < min(grid) for v in values) < TUNE_EXTENSIONS:
        return [best / 2] + values, None
    if mean[best] == math.inf:
        raise ValueError(f"every value of the sweep diverged ({', '.join(f'{v:g}' for v in values)})")
    finite = {v: [loss_or_inf(x) for x in losses[v]] for v in values}
    rivals = [v for v in values if v == best or compare(finite[v], finite[best]) == 0]
    return values, min(rivals, key=lambda v: (abs(math.log(v / paper)), v))


# ---------------------------------------------------------------- seeds


@dataclass(frozen=True)
class SeedSpread:
    """A quantity measured once per seed: its mean, sample standard deviation and range. A
    missing seed (NaN) makes each of them NaN, whatever the seeds' order: every comparison
    with it is false, so it neither holds nor fails a claim."""

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else math.nan

    @property
    def low(self) -> float:
        return float(np.min(self.values))

    @property
    def high(self) -> float:
        return float(np.max(self.values))

    def __str__(self) -> str:
        return f"{self.mean:.4g} ± {self.std:.2g} (n={len(self.values)})"


def compare(a: Sequence[float], b: Sequence[float]) -> int:
    """-1 if every seed of ``a`` lies below every seed of ``b``, +1 if above, 0 if their
    ranges overlap: a difference counts only when it exceeds the seed spread. (With three
    seeds each, ranges that do not overlap by chance alone have probability 1/10.)"""
    a, b = SeedSpread(tuple(a)), SeedSpread(tuple(b))
    if a.high < b.low:
        return -1
    if a.low > b.high:
        return 1
    return 0


# ---------------------------------------------------------------- budgets


@dataclass(frozen=True)
class Budget:
    """A training budget stated three ways."""

    tokens: int
    epochs: float  # passes over the training split
    tokens_per_parameter: float

    @classmethod
    def of(cls, steps: int, tokens_per_step: int, train_tokens: int, parameters: int) -> "Budget":
        tokens = steps * tokens_per_step
        return cls(tokens, tokens / train_tokens, tokens / parameters)

    def __str__(self) -> str:
        return f"{self.tokens / 1e6:.1f}M tokens, {self.epochs:.2g} epochs, {self.tokens_per_parameter:.2g} tokens per parameter"


# ---------------------------------------------------------------- loss spikes


def trailing_medians(x: Sequence[float], window: int, start: int) -> np.ndarray:
    """``median(x[max(0, t - window) : t])`` for every step ``t`` from ``start`` (``nan`` before
    it): the recent history each spike detector compares a step with, all windows at once."""
    x = np.asarray(x, float)
    medians = np.full(len(x), np.nan)
    for t in range(start, min(window, len(x))):  # the first steps' shorter histories
        medians[t] = np.median(x[:t])
    if len(x) > max(window, start):
        medians[max(window, start):] = np.median(sliding_window_view(x[:-1], window), axis=1)[max(window, start) - window:]
    return medians


def loss_jumps(losses: Sequence[float], window: int = SPIKE_WINDOW) -> np.ndarray:
    """``log(loss_t / median of the previous `window` losses)`` for every step (``nan`` for
    the first ten, which have too little history). A median ignores earlier spikes; while
    the loss falls it lies above the loss and the jump is negative."""
    losses = np.asarray(losses, float)
    return np.log(losses / trailing_medians(losses, window, 10))


def raw_spikes(losses: Sequence[float]) -> np.ndarray:
    """Steps whose loss exceeds :data:`SPIKE_RATIO` times its recent median. Alone this flags
    hard batches as much as instability: two runs fed the same batches flag the same steps."""
    return np.nan_to_num(loss_jumps(losses), nan=-np.inf) > math.log(SPIKE_RATIO)


def paired_spikes(losses: Sequence[float], reference: Sequence[float], window: int = PAIRED_WINDOW) -> np.ndarray:
    """Steps where a run's own loss jumps: :data:`SPIKE_RATIO` above the median of its own
    previous ``window`` losses, and as far above a reference run's loss on the identical
    batch, relative to how the two compared over those steps. The second condition keeps
    hard batches out (batch difficulty moves both losses by about the same factor and
    cancels in their log ratio, which otherwise changes slowly as one run learns faster);
    the first keeps the reference's own drops out, which move the ratio as much as a rise
    of the run does."""
    own = np.log(np.asarray(losses, float))
    ratio = own - np.log(np.asarray(reference, float))
    rise = np.minimum(own - trailing_medians(own, window, window), ratio - trailing_medians(ratio, window, window))
    return np.nan_to_num(rise, nan=-np.inf) > math.log(SPIKE_RATIO)


def grad_norm_excursions(grad_norms: Sequence[float], window: int = SPIKE_WINDOW) -> np.ndarray:
    """Steps whose gradient norm (before clipping) exceeds :data:`GRAD_NORM_RATIO` times the
    median of the previous ``window`` steps."""
    norms = np.asarray(grad_norms, float)
    return np.nan_to_num(norms - GRAD_NORM_RATIO * trailing_medians(norms, window, 10), nan=-np.inf) > 0


# ---------------------------------------------------------------- tokens to a target


def tokens_to_target(tokens, losses, target: float) -> float:
    """Tokens at which a loss curve first reaches ``target``, interpolated linearly between the
    two measurements around the crossing; ``nan`` if it never does."""
    tokens, losses = np.asarray(tokens, float), np.asarray(losses, float)
    below = np.flatnonzero(losses <= target)
    if below.size == 0:
        return float("nan")
    i = below[0]
    if i == 0:
        return float(tokens[0])
    t0, t1, l0, l1 = tokens[i - 1], tokens[i], losses[i - 1], losses[i]
    return float(t0 + (t1 - t0) * (l0 - target) / (l0 - l1))


def token_consumption_ratio(adamw: tuple, muon: tuple, target: float) -> float:
    """``R_L(B) = T_AdamW / T_Muon`` (eq. 12) for curves given as ``(tokens, losses)``; above 1
    when Muon needs fewer tokens to reach the target loss ``L``."""
    return tokens_to_target(*adamw, target) / tokens_to_target(*muon, target)
