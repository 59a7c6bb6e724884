"""The protocol's helpers on synthetic numbers: sweeps that end inside their grid, seed
comparisons, budgets, spikes told apart from hard batches, tokens to a target."""

import math

import numpy as np
import pytest

from muonlib.analysis import (
    SWEEP_EXTENSIONS, Budget, SeedSpread, at_edge, choose_warmup, compare, grad_norm_excursions, loss_jumps, paired_spikes,
    raw_spikes, sweep_rates, token_consumption_ratio, tokens_to_target, trailing_medians, warmup_handicaps,
)

GRID = (1e-3, 2e-3, 4e-3)


def bowl(optimum):
    return lambda lr: (math.log2(lr / optimum)) ** 2 + 3.0


def settle(grid, loss):
    """Run a sweep to its end: returns the rates run and the chosen one."""
    finals = {}
    while True:
        rates, chosen = sweep_rates(grid, finals)
        if chosen is not None:
            return rates, chosen
        for lr in rates:
            finals.setdefault(lr, loss(lr))


def test_a_sweep_waits_for_its_grid_then_picks_an_inside_optimum():
    assert sweep_rates(GRID, {1e-3: 3.5}) == ([1e-3, 2e-3, 4e-3], None)
    rates, chosen = settle(GRID, bowl(2e-3))
    assert rates == [1e-3, 2e-3, 4e-3] and chosen == 2e-3 and not at_edge(rates, chosen)


@pytest.mark.parametrize("optimum,expected", [(1.6e-2, [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2]), (2.5e-4, [1.25e-4, 2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3])])
def test_a_sweep_extends_past_the_edge_until_the_optimum_is_inside(optimum, expected):
    rates, chosen = settle(GRID, bowl(optimum))
    assert rates == expected and chosen == pytest.approx(optimum) and not at_edge(rates, chosen)


def test_a_sweep_stops_extending_after_its_limit_and_says_it_is_at_the_edge():
    rates, chosen = settle(GRID, lambda lr: -lr)  # better and better: no optimum anywhere
    assert len(rates) == len(GRID) + SWEEP_EXTENSIONS and chosen == max(rates) and at_edge(rates, chosen)


def test_diverged_runs_rank_behind_every_finished_one():
    rates, chosen = sweep_rates(GRID, {1e-3: 3.4, 2e-3: 3.2, 4e-3: None})
    assert chosen == 2e-3
    rates, chosen = sweep_rates(GRID, {1e-3: None, 2e-3: math.nan, 4e-3: None})
    assert chosen is None and rates[0] == 5e-4  # nothing finished: look lower
    with pytest.raises(ValueError, match="every rate of the sweep diverged"):
        settle(GRID, lambda lr: None)  # ... but not for ever, and never choosing a diverged rate
    with pytest.raises(ValueError, match="adamw diverged at every warm-up"):
        choose_warmup((0.1, 0.2), {"adamw": {0.1: None, 0.2: math.inf}, "muon": {0.1: 4.0, 0.2: 4.1}})


def test_a_difference_counts_only_beyond_the_seed_spread():
    assert compare([3.0, 3.1, 3.05], [3.2, 3.3, 3.25]) == -1
    assert compare([3.2, 3.3, 3.25], [3.0, 3.1, 3.05]) == 1
    assert compare([3.0, 3.25, 3.1], [3.2, 3.3, 3.24]) == 0  # 3.25 > 3.2: the ranges overlap
    spread = SeedSpread((1.0, 2.0, 3.0))
    assert (spread.mean, spread.std, spread.low, spread.high) == (2.0, 1.0, 1.0, 3.0)
    # a missing seed makes the range unknown, not the range of the others in some orders only
    for values in ((math.nan, 1.0, 3.0), (1.0, math.nan, 3.0), (1.0, 3.0, math.nan)):
        assert math.isnan(SeedSpread(values).low) and math.isnan(SeedSpread(values).high)


def test_a_budget_in_tokens_epochs_and_tokens_per_parameter():
    b = Budget.of(steps=400, tokens_per_step=16 * 512, train_tokens=3_000_000, parameters=17_600_000)
    assert b.tokens == 3_276_800 and b.epochs == pytest.approx(1.092, abs=1e-3)
    assert b.tokens_per_parameter == pytest.approx(0.186, abs=1e-3)  # not "about 19"
    assert "0.19 tokens per parameter" in str(b)


def shared_batches(seed=0, steps=400):
    """Two falling loss curves fed the same batches: each step's difficulty multiplies both."""
    rng = np.random.default_rng(seed)
    difficulty = np.exp(rng.normal(0, 0.03, steps))
    difficulty[[150, 250, 320]] = 1.2  # three hard batches
    t = np.arange(steps)
    return (4 + 6 * np.exp(-t / 60)) * difficulty, (4.3 + 6 * np.exp(-t / 90)) * difficulty


def test_hard_batches_fool_the_raw_detector_but_not_the_paired_one():
    a, b = shared_batches()
    assert set(np.flatnonzero(raw_spikes(a))) >= {150, 250, 320} and set(np.flatnonzero(raw_spikes(b))) >= {150, 250, 320}
    assert not paired_spikes(a, b).any() and not paired_spikes(b, a).any()
    a[200] *= 1.25  # an instability of a's own
    assert np.flatnonzero(paired_spikes(a, b)).tolist() == [200]
    assert not paired_spikes(b, a).any()
    jumps = loss_jumps(a)
    assert np.isnan(jumps[:10]).all() and jumps[200] > math.log(1.1) > jumps[199]


def test_a_drop_of_the_reference_is_no_spike_of_the_run():
    a, b = shared_batches()
    b[120:126] *= 0.85  # the reference does better for a few steps; a's own loss never rises
    ratio_jump = np.log(a[123] / b[123]) - np.median(np.log(a[113:123] / b[113:123]))
    assert ratio_jump > math.log(1.1)  # the ratio alone would call it a spike of a's
    assert not paired_spikes(a, b).any()


def test_grad_norm_excursions():
    norms = np.full(200, 0.5) * np.exp(np.random.default_rng(1).normal(0, 0.1, 200))
    norms[[5, 150]] = 4.0  # step 5 has too little history to judge
    assert np.flatnonzero(grad_norm_excursions(norms)).tolist() == [150]


def test_tokens_to_target_interpolates_the_first_crossing():
    tokens = [0, 100, 200, 300]
    losses = [10.0, 6.0, 4.0, 5.0]
    assert tokens_to_target(tokens, losses, 5.0) == pytest.approx(150.0)
    assert tokens_to_target(tokens, losses, 6.0) == pytest.approx(100.0)
    assert tokens_to_target(tokens, losses, 12.0) == 0.0
    assert math.isnan(tokens_to_target(tokens, losses, 3.0))


def test_token_consumption_ratio_of_a_curve_twice_as_fast_is_two():
    tokens = np.linspace(0, 1000, 51)
    adamw = (tokens, 10 - tokens / 200)  # linear: reaches loss L at 200 (10 - L)
    muon = (tokens, 10 - tokens / 100)
    for target in (9.0, 7.5, 6.0):
        assert token_consumption_ratio(adamw, muon, target) == pytest.approx(2.0)
    assert math.isnan(token_consumption_ratio(adamw, muon, 2.0))  # AdamW never gets there


def test_the_shared_warmup_holds_back_neither_optimizer_much_and_extends_past_the_longest():
    losses = {"adamw": {0.02: 5.43, 0.1: 5.31, 0.2: 5.23}, "muon": {0.02: 4.94, 0.1: 4.95, 0.2: 4.96}}
    handicaps = warmup_handicaps(losses)
    assert handicaps[0.1] == pytest.approx({"adamw": 0.08, "muon": 0.01})
    assert choose_warmup((0.02, 0.1, 0.2), losses) == ([0.02, 0.1, 0.2, 0.3], None)  # the longest won: try longer
    losses["adamw"][0.3], losses["muon"][0.3] = 5.22, 5.10  # Muon would lose 0.16 at 0.3: AdamW's 0.01 at 0.2 is less
    assert choose_warmup((0.02, 0.1, 0.2), losses) == ([0.02, 0.1, 0.2, 0.3], 0.2)
    assert choose_warmup((0.02, 0.1), {"adamw": {0.02: 5.0}, "muon": {0.02: 4.0, 0.1: 4.1}}) == ([0.02, 0.1], None)  # waits


@pytest.mark.parametrize("length", [0, 3, 10, 50, 51, 137])
@pytest.mark.parametrize("window,start", [(50, 10), (10, 10), (8, 3)])
def test_trailing_medians_are_each_steps_median_of_the_window_before_it(length, window, start):
    x = np.random.default_rng(length).lognormal(size=length)
    expected = [np.median(x[max(0, t - window):t]) if t >= start else np.nan for t in range(length)]
    np.testing.assert_array_equal(trailing_medians(x, window, start), expected)
