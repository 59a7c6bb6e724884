"""The trainer every experiment goes through: schedule, precision, evaluation, metrics,
checkpoints that resume exactly, and a clear stop on divergence.

``train(config, out_dir)`` writes ``out_dir/metrics.jsonl`` -- a provenance header, then one
record per step (with ``val_loss`` and ``test_loss`` at evaluation steps), then a ``final``
record -- and keeps ``out_dir/checkpoint.pt``. Called again on the same folder it resumes
from the checkpoint (the data of step ``k`` depends only on the seed and ``k``, the schedule
only on ``k``) and, on a CPU, reproduces the uninterrupted run bit for bit; a finished run
is not repeated. A diverged run ends with a ``final`` record that says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import time
import warnings
from collections.abc import Iterable
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .data import VOCAB_SIZE, TokenBatches, evaluation_batches, load_manifest, load_tokens
from .distributed import Launch, agree, all_reduce_sum, compile_data_parallel, distributed_now, launch
from .models import GPT, preset
from .models.moe import MoE
from .optim import build_optimizer
from .provenance import provenance

@dataclass(frozen=True)
class TrainConfig:
    model: str = "XS"  # a Table 1 preset (muonlib.models.PRESETS)
    variant: str = "mha"
    model_changes: dict[str, Any] = field(default_factory=dict)  # e.g. {"context": 256}
    optimizer: str = "muon"  # muon | adamw | shampoo (build_optimizer)
    lr: float = 2.5e-3  # peak; Table 1's LR_max for XS
    adamw_lr: float | None = None  # the AdamW part of a Muon run (default: lr)
    weight_decay: float = 0.1
    optimizer_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"momentum": 0.9}
    corpus: str = "mix"  # muonlib.data.CORPORA
    batch_size: int = 32  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per step
    steps: int = 300
    warmup: float = 0.02  # fraction of steps (inside the paper's range, QUOTES["recipe"])
    final_lr_ratio: float = 0.1  # cosine decays to this fraction of the peak
    grad_clip: float | None = 1.0  # global-norm clipping; 0 or None: none (the norm is still logged)
    eval_every: int = 50
    eval_tokens: int = 2**17
    checkpoint_every: int = 100
    precision: str = "auto"  # auto | bf16 | fp16 | fp32
    compile: bool = False
    device: str = "auto"
    seed: int = 0

    def __post_init__(self):
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ValueError(f"precision must be auto, bf16, fp16 or fp32, got {self.precision!r}")
        for name in ("steps", "batch_size", "grad_accum", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        if not 0 <= self.final_lr_ratio <= 1:
            raise ValueError(f"final_lr_ratio is the fraction of the peak rate left at the end, in [0, 1]; got {self.final_lr_ratio}")
        for name in ("lr", "adamw_lr", "weight_decay"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise ValueError(f"grad_clip is the largest gradient norm kept (0 or None: no clipping), got {self.grad_clip}")

    def model_config(self):
        return preset(self.model, self.variant, **self.model_changes)

    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.model_config().context

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class TrainingDiverged(RuntimeError):
    pass


def not_finite(named_tensors: Iterable[tuple[str, Tensor | None]]) -> list[str]:
    """The names of the tensors that hold a NaN or an infinity (``None`` ones skipped)."""
    return [name for name, t in named_tensors if t is not None and not bool(torch.isfinite(t).all())]


def named_few(names: list[str], shown: int = 3) -> str:
    """``"no"``, or the first ``shown`` names and how many more."""
    if not names:
        return "no"
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"{len(names)} ({', '.join(names[:shown])}{more})"


class TrainingStopped(RuntimeError):
    """Raised at a step boundary when ``should_stop`` asks, after a checkpoint of that step."""


def lr_factor(step: int, steps: int, warmup: float, final_ratio: float) -> float:
    """Linear warm-up over ``warmup * steps`` steps (at least one), then cosine decay from the
    peak to ``final_ratio`` of it at the last step. ``step`` counts from 0."""
    warm = max(1, round(warmup * steps))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, steps - 1 - warm)
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def flops_per_token(model: GPT) -> int:
    """Training FLOPs per token: ``6 N`` for the active parameters (forward 2, backward 4)
    plus ``12 L d T`` for the attention scores and their values (PaLM, appendix B)."""
    c = model.config
    positions = model.pos_emb.weight.numel() if model.pos_emb is not None else 0
    return 6 * (model.num_parameters(active=True) - positions) + 12 * c.n_layer * c.d_model * c.context


def resolve_device(config: TrainConfig, run: Launch = Launch()) -> tuple[torch.device, str]:
    """The device and the precision: bf16 autocast where the GPU has bf16 tensor cores, fp16
    with loss scaling on older GPUs (Colab's T4), fp32 on a CPU. Under ``torchrun`` each
    process takes the GPU of its local rank."""
    if config.device == "auto":
        device = torch.device("cuda", run.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    else:
        device = torch.device(config.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for but no GPU is visible: use device='auto' or 'cpu'")
    precision = config.precision
    # A T4 (compute capability 7.5) reports bf16 support, but only through emulation, without
    # bf16 tensor cores: fp16 with loss scaling is its fast mixed precision.
    bf16_cores = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8
    if precision == "auto":
        precision = "fp32" if device.type == "cpu" else ("bf16" if bf16_cores else "fp16")
    if precision == "bf16" and device.type == "cuda" and not bf16_cores:
        raise RuntimeError(f"{torch.cuda.get_device_name(device)} has no bf16 tensor cores: use precision='fp16' or 'auto'")
    return device, precision


class Checkpoint:
    """Model, optimizer, step, RNG and loss-scaler state in one atomically replaced file,
    headed by the sha256 of the rest: ``torch.load`` does not check the zip's CRCs, so a
    damaged checkpoint would otherwise load and train on garbage."""

    MAGIC = b"muonlib-checkpoint sha256="

    def __init__(self, path: Path):
        self.path = path

    def save(self, model, optimizer, scaler, step: int, config: dict, precision: str) -> None:
        state = {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
            "scaler": scaler.state_dict(), "config": config, "precision": precision,
            "rng": {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        payload = buffer.getvalue()
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(self.MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n")
            f.write(payload)
        tmp.replace(self.path)

    def read(self) -> dict:
        """The saved state, after checking its hash."""
        redo = "delete it to start the run afresh"
        raw = self.path.read_bytes()
        if not raw.startswith(self.MAGIC):
            raise ValueError(f"checkpoint {self.path} has no integrity header (not written by this muonlib, or its "
                             f"start is damaged): {redo}")
        digest, _, payload = raw[len(self.MAGIC):].partition(b"\n")
        if hashlib.sha256(payload).hexdigest().encode() != digest:
            raise ValueError(f"checkpoint {self.path} is damaged (its sha256 does not match the one saved with it): {redo}")
        try:
            return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
        except Exception as err:
            raise ValueError(f"checkpoint {self.path} cannot be read ({err}): {redo}") from err

    @staticmethod
    def restore(state: dict, model, optimizer, scaler) -> int:
        """Put a read state back into the training objects; returns its step."""
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["cpu"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        return state["step"]


class MetricsLog:
    """``metrics.jsonl``: a header ``{"provenance": ...}``, step records, a ``final`` record."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> tuple[dict | None, list[dict]]:
        """The header (``None`` for a missing or empty file) and every record after it. A last
        line cut short (the process was killed while writing it) is dropped; damage anywhere
        else is an error."""
        if not self.path.exists():
            return None, []
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        parsed = []
        for i, line in enumerate(lines):
            try:
                parsed.append(json.loads(line))
            except json.JSONDecodeError as err:
                if i == len(lines) - 1 and i > 0:
                    break
                raise ValueError(f"{self.path}, line {i + 1}, is damaged ({err}): delete the run folder to start afresh") from err
        return (parsed[0], parsed[1:]) if parsed else (None, [])

    def start(self, header: dict, keep_until: int | None) -> list[dict]:
        """Begin a run (header only) or resume one: keep the records up to step ``keep_until``."""
        old_header, records = self.read()
        if keep_until is None or old_header is None:
            old_header, records = header, []
        records = [r for r in records if "final" not in r and r["step"] <= keep_until]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in [old_header, *records]))
        return records

    def append(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


@torch.no_grad()
def evaluate(model, batches, device, autocast) -> float:
    """Mean held-out loss per token. Under several processes each evaluates its rows of
    every batch, as in training, and the sums are added up over the ranks."""
    model.eval()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed_now() else (0, 1)
    loss_sum, tokens = torch.zeros((), dtype=torch.float64, device=device), 0
    for x, y in batches:
        share = -(-len(x) // world)
        x, y = x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]
        if len(x) == 0:
            continue
        with autocast:
            _, loss = model(x.to(device), y.to(device))
        loss_sum += loss.double() * y.numel()  # summed on the device: no sync per batch
        tokens += y.numel()
    model.train()
    total, count = all_reduce_sum(torch.stack([loss_sum, loss_sum.new_tensor(tokens)])).tolist()  # one sync at the end
    return total / count


def identity(config: dict[str, Any]) -> dict[str, Any]:
    """What makes two configurations the same run: everything but the device it runs on, as
    JSON holds it (a saved header has lists where the configuration has tuples)."""
    return json.loads(json.dumps({k: v for k, v in config.items() if k != "device"}))


def check_same_run(config: TrainConfig, saved: dict[str, Any], where: Path) -> None:
    """Refuse to continue (or return) a run of another configuration in the same folder."""
    ours, theirs = identity(config.to_dict()), identity(saved)
    differing = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    if differing:
        changes = ", ".join(f"{k}: {theirs.get(k)!r} there, {ours.get(k)!r} here" for k in differing)
        raise ValueError(f"{where} holds a run of another configuration ({changes}); continuing it would mix the two. "
                         f"Train in another folder, or delete {where} to start afresh.")


@contextmanager
def exclusive(folder: Path):
    """Hold a lock on ``folder`` for as long as a run trains in it: a second trainer on the
    same folder would write every record twice."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(folder / "train.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another process is training in {folder}; wait for it, or train in another folder") from None
        lock.write(str(os.getpid()))
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def train(config: TrainConfig, out_dir: str | Path, progress: bool = True, should_stop: Callable[[], bool] | None = None) -> list[dict]:
    """Train (or resume, or return the finished run in) ``out_dir``; returns the step records.

    A folder holds one run: resuming it with another configuration is refused, and so is a
    second trainer while one runs. ``should_stop`` is asked after every step; when it answers
    true the run saves a checkpoint of that step and raises :class:`TrainingStopped`, so
    nothing is lost.

    Launched by ``torchrun`` (``WORLD_SIZE`` > 1) the run is data-parallel: every step's
    batch is split over the processes (``batch_size`` counts the whole batch), so the data of
    step ``k`` and the global batch are those of one process; rank 0 writes the metrics and
    checkpoints."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = launch(config.device)
    with ExitStack() as stack:
        refusal = None
        try:  # every rank must learn of a refusal, or the others would wait for it forever
            if run.main:
                stack.enter_context(exclusive(out_dir))
            saved_header, saved = MetricsLog(out_dir / "metrics.jsonl").read()  # read by every rank before rank 0 writes
            if saved_header is not None:
                check_same_run(config, saved_header["provenance"]["config"], out_dir)
            if config.batch_size % run.world:
                raise ValueError(f"batch_size ({config.batch_size} sequences, over all processes) must be a multiple of the "
                                 f"{run.world} processes")
        except Exception as err:  # noqa: BLE001 - re-raised below, after every rank has heard of it
            refusal = err
        if not agree(refusal is None):
            raise refusal or RuntimeError(f"another process refused to start the run in {out_dir}; its message says why")
        return _train(config, out_dir, progress and run.main, should_stop, run, saved)


def _train(config: TrainConfig, out_dir: Path, progress: bool, should_stop: Callable[[], bool] | None, run: Launch,
           saved: list[dict]) -> list[dict]:
    log, checkpoint = MetricsLog(out_dir / "metrics.jsonl"), Checkpoint(out_dir / "checkpoint.pt")
    if saved and "final" in saved[-1]:
        return saved[:-1]
    device, precision = resolve_device(config, run)
    model_config = config.model_config()
    if model_config.vocab_size < VOCAB_SIZE:
        raise ValueError(f"the model's vocabulary ({model_config.vocab_size}) is smaller than GPT-2's ({VOCAB_SIZE}), "
                         f"which the corpora are tokenized with: set model_changes={{'vocab_size': {VOCAB_SIZE}}}")

    torch.manual_seed(config.seed)  # the same initial weights on every rank
    model = GPT(model_config).to(device)
    options = dict(config.optimizer_options)
    if run.distributed and config.optimizer == "muon":
        options.setdefault("distributed", True)  # the ranks hold the same gradients: share the Newton-Schulz work
    optimizer = build_optimizer(model, config.optimizer, lr=config.lr, weight_decay=config.weight_decay,
                                adamw_lr=config.adamw_lr, **options)
    for group in optimizer.param_groups:
        group["peak_lr"] = group["lr"]
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16) if precision != "fp32" else nullcontext()

    start = 0
    if checkpoint.path.exists():
        state = checkpoint.read()
        check_same_run(config, state["config"], out_dir)
        if state["precision"] != precision:
            raise ValueError(f"{out_dir} was trained in {state['precision']} and would resume in {precision} on this "
                             f"machine: resume where {state['precision']} runs, or set precision='{state['precision']}'")
        start = Checkpoint.restore(state, model, optimizer, scaler)
        del state
    train_tokens = load_tokens(config.corpus, "train")
    batches = TokenBatches(train_tokens, config.batch_size, model_config.context, config.seed)
    share = config.batch_size // run.world
    rows = slice(run.rank * share, (run.rank + 1) * share)  # this rank's rows of every batch
    held_out = {split: evaluation_batches(load_tokens(config.corpus, split), config.batch_size, model_config.context, config.eval_tokens)
                for split in ("val", "test")}
    manifest = load_manifest(config.corpus)
    tokens_per_step = config.tokens_per_step()
    flops = flops_per_token(model) * tokens_per_step
    header = {"provenance": provenance(config.to_dict(), config.seed) | {"precision": precision},
              "parameters": model.num_parameters(), "active_parameters": model.num_parameters(active=True),
              "tokens_per_step": tokens_per_step, "flops_per_step": flops,
              "data": {"corpus": config.corpus, "version": manifest["version"],
                       **{f"{split}_tokens": v["tokens"] for split, v in manifest["splits"].items()},
                       "train_sha256": manifest["splits"]["train"]["sha256"]}}
    header["processes"] = run.world
    records = log.start(header, keep_until=start or None) if run.main else [r for r in saved if "final" not in r and r["step"] <= start]
    saved_step = start
    parallel = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       broadcast_buffers=False) if run.distributed else model  # MoE buffers: summed below
    step_model = (compile_data_parallel(parallel) if run.distributed else torch.compile(parallel)) if config.compile else parallel
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def diverged(what: str, value: float, step: int) -> TrainingDiverged:
        # which tensors broke tells an overflow in one layer's kernel from a run that blew up whole
        weights = not_finite(model.named_parameters())
        grads = not_finite((name, p.grad) for name, p in model.named_parameters())
        if run.main:
            log.append({"final": True, "diverged": True, "step": step, "val_loss": None, "test_loss": None,
                        "not_finite_weights": weights, "not_finite_grads": grads})
        saved = f"the last good checkpoint is {checkpoint.path} (step {saved_step})" if saved_step else "no checkpoint was saved yet"
        return TrainingDiverged(f"the {what} became {value} at step {step + 1} (not finite: {named_few(weights)} weights, "
                                f"{named_few(grads)} gradients); {saved}. Lower the learning rate or raise the warm-up; "
                                f"resuming from the checkpoint would diverge the same way.")

    bar = tqdm(total=config.steps, initial=start, desc=f"{config.optimizer} lr={config.lr:g}", disable=not progress)
    for step in range(start, config.steps):
        t0 = time.perf_counter()
        factor = lr_factor(step, config.steps, config.warmup, config.final_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = group["peak_lr"] * factor
        loss_sum = torch.zeros((), device=device)
        for micro in range(config.grad_accum):
            x, y = batches(step * config.grad_accum + micro, rows)
            last = micro + 1 == config.grad_accum  # gradients are averaged over the ranks once, after the last
            with parallel.no_sync() if run.distributed and not last else nullcontext():
                with autocast:
                    _, loss = step_model(x.to(device, non_blocking=True), y.to(device, non_blocking=True))
                scaler.scale(loss / config.grad_accum).backward()
            loss_sum += loss.detach()
        scaler.unscale_(optimizer)
        if config.grad_clip:
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
        # one sync per step; the ranks' losses are averaged, their gradient norms are the same
        loss, grad_norm = (all_reduce_sum(torch.stack([loss_sum / config.grad_accum, grad_norm.float()])) / run.world).tolist()
        if not math.isfinite(loss):
            raise diverged("training loss", loss, step)
        skipped = not math.isfinite(grad_norm)
        if skipped and not scaler.is_enabled():
            raise diverged("gradient norm", grad_norm, step)
        if skipped:  # fp16 loss scaling expects overflows: the scaler skips the step and lowers its scale
            warnings.warn(f"step {step + 1}: the fp16 gradients overflowed (norm {grad_norm}); the loss scaler skips "
                          f"this step and lowers its scale", RuntimeWarning, stacklevel=2)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        for layer in model.moe_layers():  # every rank routed its own tokens: balance on all of them
            all_reduce_sum(layer.router.counts)
        model.update_moe_biases()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0

        record = {
            "step": step + 1, "loss": loss, "lr": config.lr * factor, "grad_norm": grad_norm,
            "tokens": (step + 1) * tokens_per_step, "flops": (step + 1) * flops, "seconds": seconds,
            "tokens_per_s": tokens_per_step / seconds, **({"skipped": True} if skipped else {}),
        }
        if device.type == "cuda":
            record["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
        if moe := model.moe_layers():
            keys = ("cv", "max_violation", "starved")
            cv, violation, starved = torch.stack([torch.stack([s[k] for k in keys]) for s in map(MoE.load_statistics, moe)]).T.tolist()
            # one transfer for all layers: the mean CV, the worst violation, the experts of every layer no token reached
            record["moe_cv"], record["moe_max_violation"], record["moe_starved"] = sum(cv) / len(cv), max(violation), int(sum(starved))
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            for split, eval_set in held_out.items():
                record[f"{split}_loss"] = evaluate(step_model, eval_set, device, autocast)
        if run.main:
            log.append(record)
        records.append(record)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", **({"val": f"{record['val_loss']:.3f}"} if "val_loss" in record else {}))
        asked = should_stop is not None and should_stop()
        stopping = not agree(not asked)  # any rank asked: every rank stops at this step
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps or stopping:
            if run.main:
                checkpoint.save(model, optimizer, scaler, step + 1, config.to_dict(), precision)
            saved_step = step + 1
        if stopping and step + 1 < config.steps:
            bar.close()
            raise TrainingStopped(f"stopped at step {step + 1} of {config.steps}; the checkpoint resumes it")
    bar.close()
    last = records[-1]
    if run.main:
        log.append({"final": True, "step": config.steps, "val_loss": last["val_loss"], "test_loss": last["test_loss"],
                    "min_val_loss": min(r["val_loss"] for r in records if "val_loss" in r)})
    return records


def parse_settings(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs as TrainConfig fields; values are JSON where they parse as JSON
    (numbers, booleans, objects), strings otherwise."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"expected KEY=VALUE with KEY one of {', '.join(sorted(fields))}; got {pair!r}")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    return settings


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m muonlib.train", description="Train one run (resumable); under torchrun, data-parallel over its processes.",
        epilog="example: torchrun --nproc_per_node 4 -m muonlib.train runs/l-muon model=L optimizer=muon lr=3e-3 batch_size=64 steps=2000")
    parser.add_argument("out_dir", type=Path, help="the run's folder: metrics.jsonl and checkpoint.pt")
    parser.add_argument("settings", nargs="*", help="TrainConfig fields as KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        config = TrainConfig(**parse_settings(args.settings))
        records = train(config, args.out_dir)
        if launch(config.device).main:
            last = records[-1]
            print(f"step {last['step']}: loss {last['loss']:.4f}, validation {last.get('val_loss', float('nan')):.4f}; "
                  f"metrics in {args.out_dir}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
