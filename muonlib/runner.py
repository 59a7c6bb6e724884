"""Independent training runs spread over every GPU of a machine, from one queue.

One worker slot per GPU (or several: ``per_device``), each run a subprocess that sees only
its GPU through ``CUDA_VISIBLE_DEVICES``; on a machine without a GPU the slots are CPU
processes sharing the cores. The queue is a *plan*: a function from the finished runs to
every run the experiment wants so far, so that a stage that depends on an earlier one (the
seeds of a chosen rate, a sweep extended past its edge) is queued the moment its inputs
exist, and the other slots never wait for a whole stage to end.

Nothing is lost: finished runs are skipped, an interrupted run resumes from its checkpoint,
a run that crashes is reported (with the end of its log) while the others go on, and Ctrl-C
asks every run to checkpoint its current step and stop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

POLL_SECONDS = 1.0
STOP_GRACE_SECONDS = 120  # how long stopped runs get to write their checkpoint
LAUNCH_MARGIN = 1.15  # a run starts before a deadline only if this many times its expected seconds still fit
PACE_FROM = 0.25  # a run in flight tells how long its kind takes once it has run this share of its steps


@dataclass(frozen=True)
class Job:
    """One run: its identifier, the number of steps it takes, and the arguments of its worker."""

    run: str
    steps: int
    argv: tuple[str, ...]  # after `python -m`
    log: Path  # where its output goes; progress is read from `progress` (one line per step)
    progress: Path
    work: float = 0.0  # how long it takes, in any unit common to the queue (default: its steps)
    kind: str = ""  # runs of one kind take about as long (same model, optimizer and length)
    serial: bool = False  # its steps queue on the GPU, so two such runs there take as long as one after the other


@dataclass
class Report:
    finished: list[str] = field(default_factory=list)  # finished by this call
    failed: dict[str, str] = field(default_factory=dict)  # run -> the end of its log
    waiting: list[str] = field(default_factory=list)  # wanted, never started (deadline, failures upstream)
    interrupted: bool = False
    seconds: dict[str, float] = field(default_factory=dict)  # run -> wall-clock seconds of its worker

    def __str__(self) -> str:
        lines = [f"{len(self.finished)} runs finished in {sum(self.seconds.values()) / 60:.1f} worker-minutes"]
        if self.failed:
            lines.append(f"{len(self.failed)} failed: " + ", ".join(self.failed))
        if self.waiting:
            lines.append(f"{len(self.waiting)} not started")
        if self.interrupted:
            lines.append("interrupted: the runs in flight saved checkpoints and resume on the next call")
        return "; ".join(lines)


def slots(devices: int | None, per_device: int = 1, cpu_workers: int = 1) -> list[dict[str, str]]:
    """The environment of every worker slot: ``per_device`` slots on each of ``devices`` GPUs
    (``None``: every visible GPU), or ``cpu_workers`` CPU slots where there is no GPU."""
    import torch

    if per_device < 1 or cpu_workers < 1:
        raise ValueError("per_device and cpu_workers must be >= 1")
    visible = torch.cuda.device_count()
    if visible == 0:
        if devices:
            raise RuntimeError(f"{devices} GPU(s) asked for, but no GPU is visible: leave out --gpus to run on the CPU")
        threads = max(1, (os.cpu_count() or 1) // cpu_workers)
        return [{"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(threads)} for _ in range(cpu_workers)]
    if devices is not None and not 1 <= devices <= visible:
        raise ValueError(f"{devices} GPU(s) asked for; {visible} visible")
    ids = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(visible)))).split(",")[: devices or visible]
    threads = max(1, (os.cpu_count() or 1) // (len(ids) * per_device))
    return [{"CUDA_VISIBLE_DEVICES": gpu, "MUONLIB_RUNS_PER_GPU": str(per_device), "OMP_NUM_THREADS": str(threads)}
            for gpu in ids for _ in range(per_device)]


def steps_done(path: Path) -> int:
    try:
        return max(0, path.read_bytes().count(b"\n") - 1)  # the header is not a step
    except FileNotFoundError:
        return 0


def expected_seconds(job: Job, done: int, seen: dict[str, list[tuple[float, float]]]) -> float | None:
    """How long ``job`` still needs, with ``done`` of its steps behind it, on slots where whole
    runs have been seen to take ``seen`` (kind -> [(seconds, work)]): as long as the slowest run of
    its kind, or with none seen yet, the slowest run of any kind, longer in proportion where it
    has more work (a run's start-up does not shrink with its work, so smaller runs are not
    counted as faster); ``None`` before any run has been seen."""
    if job.kind in seen:
        whole = max(seconds for seconds, _ in seen[job.kind])
    elif seen:
        whole = max(seconds * max(1.0, (job.work or job.steps) / (work or 1.0)) for runs in seen.values() for seconds, work in runs)
    else:
        return None
    return whole * (1 - done / job.steps)


def run_queue(plan: Callable[[], list[Job]], is_finished: Callable[[str], bool], environments: list[dict[str, str]],
              progress: bool = True, deadline: float | None = None, description: str = "runs") -> Report:
    """Run what ``plan()`` wants on the worker slots until nothing more is wanted.

    ``plan`` is asked again whenever a run ends; ``is_finished`` says whether a run's
    result exists. ``deadline`` (seconds from now): start no run after it, nor one that
    would not end by it at the pace of this queue's runs so far (:func:`expected_seconds`);
    runs in flight finish. A ``serial`` job starts only on a GPU no other serial job is using:
    sharing gains it nothing, and it would hold back every slot it took."""
    report = Report()
    running: dict[str, tuple[subprocess.Popen, int, Job]] = {}
    started: dict[str, tuple[float, int]] = {}  # run -> when it started, and the steps it had then
    finished_seconds: dict[str, list[tuple[float, float]]] = {}  # kind -> (whole-run seconds, work) of runs ended here
    free = list(range(len(environments)))
    stop_launching = time.monotonic() + deadline if deadline is not None else None
    bar = tqdm(total=0, unit="step", desc=description, disable=not progress, dynamic_ncols=True)
    wanted: list[Job] = []

    def whole_run_seconds(job: Job, steps_now: int) -> float | None:  # scaled from the steps it ran here
        since, first = started[job.run]
        share = (steps_now - first) / job.steps
        return (time.monotonic() - since) / share if share > 0 else None

    def pace() -> dict[str, list[tuple[float, float]]]:  # the runs ended here, and those in flight far enough along
        seen = {kind: list(runs) for kind, runs in finished_seconds.items()}
        for _, _, job in running.values():
            steps_now = steps_done(job.progress)
            if (steps_now - started[job.run][1]) / job.steps >= PACE_FROM:
                seen.setdefault(job.kind, []).append((whole_run_seconds(job, steps_now), job.work or job.steps))
        return seen

    def fits(job: Job, seen: dict[str, list[tuple[float, float]]]) -> bool:
        if stop_launching is None:
            return True
        left = stop_launching - time.monotonic()
        needs = expected_seconds(job, steps_done(job.progress), seen)
        return left > 0 and (needs is None or LAUNCH_MARGIN * needs <= left)

    def slot_for(job: Job) -> int | None:  # a free slot; for a serial job, one on a GPU no serial job is using
        taken = {environments[slot].get("CUDA_VISIBLE_DEVICES") for _, slot, other in running.values() if other.serial}
        return next((slot for slot in free if not job.serial or environments[slot].get("CUDA_VISIBLE_DEVICES") not in taken), None)

    try:
        while True:
            wanted = plan()
            pending = [j for j in wanted if not is_finished(j.run) and j.run not in running and j.run not in report.failed]
            pending.sort(key=lambda j: -(j.work or j.steps))  # longest first: the last wave ends soonest
            seen = pace() if free and pending and stop_launching is not None else {}
            while free and (start := next(((j, s) for j in pending if fits(j, seen) and (s := slot_for(j)) is not None), None)):
                job, slot = start
                pending.remove(job)
                free.remove(slot)
                job.log.parent.mkdir(parents=True, exist_ok=True)
                with open(job.log, "ab") as log:
                    proc = subprocess.Popen([sys.executable, "-m", *job.argv], stdout=log, stderr=subprocess.STDOUT,
                                            env=os.environ | environments[slot])
                running[job.run] = (proc, slot, job)
                started[job.run] = (time.monotonic(), steps_done(job.progress))
            bar.total = sum(j.steps for j in wanted)
            bar.n = sum(j.steps if is_finished(j.run) else steps_done(j.progress) if j.run in running else 0 for j in wanted)
            bar.set_postfix(running=len(running), failed=len(report.failed), refresh=False)
            bar.refresh()
            if not running:
                report.waiting = [j.run for j in pending]
                return report
            time.sleep(POLL_SECONDS)
            for run, (proc, slot, job) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[run]
                free.append(slot)
                report.seconds[run] = time.monotonic() - started[run][0]
                if proc.returncode == 0 and is_finished(run):
                    report.finished.append(run)
                    if (whole := whole_run_seconds(job, job.steps)) is not None:
                        finished_seconds.setdefault(job.kind, []).append((whole, job.work or job.steps))
                else:
                    tail = job.log.read_text(errors="replace").splitlines()[-15:] if job.log.exists() else []
                    report.failed[run] = "\n".join(tail)
                    bar.write(f"run {run} failed (exit {proc.returncode}); its log is {job.log}:\n  " + "\n  ".join(tail[-5:]))
    except KeyboardInterrupt:
        report.interrupted = True
        report.waiting = [j.run for j in wanted if not is_finished(j.run)]
        return report
    finally:  # however the loop ends (Ctrl-C, an error in the plan, SIGTERM), no worker is left behind
        stop_workers([proc for proc, _, _ in running.values()])
        bar.close()


def stop_workers(processes: list[subprocess.Popen]) -> None:
    """Ask each worker to checkpoint and stop (SIGINT), wait up to :data:`STOP_GRACE_SECONDS`,
    then kill those still running. A second Ctrl-C while waiting kills at once."""
    for proc in processes:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    end = time.monotonic() + STOP_GRACE_SECONDS
    try:
        for proc in processes:
            proc.wait(timeout=max(0.0, end - time.monotonic()))
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        pass
    finally:
        for proc in processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def terminate_as_interrupt() -> None:
    """Make SIGTERM (a scheduler or ``timeout`` ending the runner) stop the queue as Ctrl-C does."""
    def interrupt(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)


def worker_signals() -> Callable[[], bool]:
    """In a worker: SIGINT and SIGTERM ask the run to stop at its next step boundary."""
    asked = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: asked.append(True))
    return lambda: bool(asked)

