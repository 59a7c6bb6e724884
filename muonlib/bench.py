"""Benchmarks that measure side by side in one run and write ``data/bench/*.json`` with provenance.

    python -m muonlib.bench models --out data/bench    # fwd+bwd per size/variant, KV cache, MoE vs dense, train step
    python -m muonlib.bench optim --out data/bench     # Muon step vs torch.optim.Muon vs AdamW

Runs on a CPU too (with ``--sizes tiny``), which is how the tests keep it working.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .models import GPT, MLP, MoE, kv_cache_bytes, preset
from .optim import Muon, build_optimizer
from .provenance import write_json


def median_ms(fn: Callable[[], object], warmup: int = 3, iters: int = 10) -> float:
    """Median wall time of ``fn`` in ms, synchronising the GPU around each call."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _autocast():
    return torch.autocast("cuda", dtype=torch.bfloat16) if torch.cuda.is_available() else torch.autocast("cpu", enabled=False)


def _peak_reset():
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gb() -> float | None:
    return torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else None


def bench_forward_backward(size: str, variant: str, batch: int, compile: bool, iters: int) -> dict:
    config = preset(size, variant)
    with torch.device(_device()):
        model = GPT(config).train()
    step_model = torch.compile(model) if compile else model
    idx = torch.randint(0, config.vocab_size, (batch, config.context), device=_device())

    def fwd_bwd():
        with _autocast():
            _, loss = step_model(idx, idx)
        loss.backward()

    _peak_reset()
    ms = median_ms(fwd_bwd, warmup=3, iters=iters)
    tokens = batch * config.context
    result = dict(size=size, variant=variant, compiled=compile, batch=batch, context=config.context,
                  params=model.num_parameters(), active_params=model.num_parameters(active=True),
                  fwd_bwd_ms=ms, tokens_per_s=tokens / ms * 1e3, peak_memory_gb=_peak_gb())
    del model, step_model
    return result


def bench_kv_cache(size: str, variant: str, batch: int, prompt: int, new_tokens: int) -> dict:
    config = preset(size, variant)
    with torch.device(_device()):
        model = GPT(config).eval()
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model.to(dtype)
    before = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
    cache = model.new_cache(batch, prompt + new_tokens)
    measured = (torch.cuda.memory_allocated() - before) if torch.cuda.is_available() else cache.nbytes()
    del cache
    idx = torch.randint(0, config.vocab_size, (batch, prompt), device=_device())
    ms = median_ms(lambda: model.generate(idx, new_tokens, temperature=0), warmup=1, iters=3)
    result = dict(size=size, variant=variant, batch=batch, seq_len=prompt + new_tokens, dtype=str(dtype),
                  kv_bytes_measured=measured, kv_bytes_analytic=kv_cache_bytes(config, batch, prompt + new_tokens, dtype),
                  generate_ms=ms, decode_tokens_per_s=batch * new_tokens / ms * 1e3)
    del model
    return result


def bench_moe_layer(size: str, tokens: int, compile: bool) -> dict:
    """The MoE FFN against a dense GELU MLP of the same active width ((shared + top_k) * h)."""
    config = preset(size, "moe-mla")
    with torch.device(_device()):
        moe = MoE(config, 0.02)
        dense = MLP(config.d_model, (config.n_shared_experts + config.top_k) * config.expert_hidden, 0.02)
    x = torch.randn(tokens, config.d_model, device=_device())
    out = {}
    for name, layer in (("moe", moe), ("dense", dense)):
        fn = torch.compile(layer) if compile else layer
        with torch.no_grad(), _autocast():
            out[f"{name}_forward_ms"] = median_ms(lambda: fn(x), warmup=3, iters=20)

        def fwd_bwd():
            with _autocast():
                fn(x).float().square().mean().backward()

        out[f"{name}_fwd_bwd_ms"] = median_ms(fwd_bwd, warmup=3, iters=20)
    return dict(size=size, tokens=tokens, compiled=compile, d_model=config.d_model, expert_hidden=config.expert_hidden, **out,
                forward_ratio=out["moe_forward_ms"] / out["dense_forward_ms"],
                fwd_bwd_ratio=out["moe_fwd_bwd_ms"] / out["dense_fwd_bwd_ms"])


def bench_train_step(size: str, variant: str, optimizer: str, batch: int, compile: bool, iters: int) -> dict:
    config = preset(size, variant)
    with torch.device(_device()):
        model = GPT(config).train()
    step_model = torch.compile(model) if compile else model
    opt = build_optimizer(model, optimizer, lr=1e-3)
    idx = torch.randint(0, config.vocab_size, (batch, config.context), device=_device())

    def step():
        with _autocast():
            _, loss = step_model(idx, idx)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    _peak_reset()
    ms = median_ms(step, warmup=3, iters=iters)
    return dict(size=size, variant=variant, optimizer=optimizer, compiled=compile, batch=batch,
                step_ms=ms, tokens_per_s=batch * config.context / ms * 1e3, peak_memory_gb=_peak_gb())


def hidden_matrices(size: str) -> list[tuple[int, int]]:
    """The hidden weight matrices of an MHA model, as in GPT-2 layouts: 4 d x d, d_ff x d, d x d_ff per layer."""
    c = preset(size)
    return [(c.d_model, c.d_model)] * 4 * c.n_layer + [(c.d_ff, c.d_model), (c.d_model, c.d_ff)] * c.n_layer


def bench_optimizer_step(size: str) -> list[dict]:
    shapes = hidden_matrices(size)
    params = [torch.nn.Parameter(torch.randn(s, device=_device()) * 0.02) for s in shapes]
    grads = [torch.randn_like(p) for p in params]
    optimizers = {
        "muonlib.Muon": lambda: Muon(params, lr=0.02),
        "torch.optim.Muon": lambda: torch.optim.Muon(params, lr=0.02, adjust_lr_fn="match_rms_adamw"),
        "AdamW(fused)" if torch.cuda.is_available() else "AdamW": lambda: torch.optim.AdamW(params, lr=1e-3, fused=torch.cuda.is_available() or None),
    }
    rows = []
    for name, make in optimizers.items():
        opt = make()

        def step():
            for p, g in zip(params, grads):
                p.grad = g  # gradients are in place for every timed step
            opt.step()

        rows.append(dict(size=size, optimizer=name, n_matrices=len(shapes), step_ms=median_ms(step, warmup=3, iters=20)))
    base = next(r["step_ms"] for r in rows if r["optimizer"] == "torch.optim.Muon")
    for r in rows:
        r["speedup_vs_torch_muon"] = base / r["step_ms"]
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m muonlib.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["models", "optim"])
    parser.add_argument("--out", default="data/bench")
    parser.add_argument("--name", default=None, help="output file stem (default: the benchmark's name)")
    parser.add_argument("--parts", default="fwd_bwd,kv,moe,train", help="which model benchmarks to run")
    parser.add_argument("--sizes", default="XS,S,M,L,XL")
    parser.add_argument("--variants", default="mha,mla,mla-norope,moe-mla")
    parser.add_argument("--compile-sizes", default="XS,L", help="sizes whose fwd+bwd is also measured compiled")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args(argv)
    sizes, variants = args.sizes.split(","), args.variants.split(",")
    out = Path(args.out)
    config = vars(args)
    if args.what == "optim":
        rows = [r for s in sizes for r in bench_optimizer_step(s)]
        write_json(out / f"{args.name or 'optimizer_step'}.json", rows, config)
        for r in rows:
            print(f"{r['size']:>4} {r['optimizer']:<18} {r['step_ms']:8.2f} ms  x{r['speedup_vs_torch_muon']:.1f} vs torch.optim.Muon")
        return
    parts = args.parts.split(",")
    results: dict[str, list] = {"forward_backward": [], "kv_cache": [], "moe_layer": [], "train_step": []}

    def record(section: str, run: Callable[[], dict], describe: Callable[[dict], str], **key) -> None:
        # one failing configuration (e.g. a compile error) is recorded, not fatal
        try:
            row = run()
        except Exception as error:  # noqa: BLE001 - the error text is the result
            row = dict(key, error=f"{type(error).__name__}: {error}"[:500])
        results[section].append(row)
        print(row["error"] if "error" in row else describe(row), flush=True)
        write_json(out / f"{args.name or 'models'}.json", results, config)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    compile_sizes = args.compile_sizes.split(",")
    if "fwd_bwd" in parts:
        for size in sizes:
            for variant in variants:
                for compiled in [False] + ([True] if size in compile_sizes else []):
                    record("forward_backward", lambda: bench_forward_backward(size, variant, args.batch, compiled, args.iters),
                           lambda r: f"fwd+bwd {r['size']:>4} {r['variant']:<10} compiled={r['compiled']!s:<5} {r['fwd_bwd_ms']:8.1f} ms "
                                     f"{r['tokens_per_s']:>10,.0f} tok/s peak {r['peak_memory_gb']}",
                           size=size, variant=variant, compiled=compiled)
    kv_size = "L" if "L" in sizes else sizes[0]
    if "kv" in parts:
        for variant in variants:
            record("kv_cache", lambda: bench_kv_cache(kv_size, variant, batch=16, prompt=32 if kv_size == "tiny" else 64,
                                                     new_tokens=8 if kv_size == "tiny" else 192),
                   lambda r: f"kv {r['size']} {r['variant']:<10} measured {r['kv_bytes_measured']:,} analytic "
                             f"{r['kv_bytes_analytic']:,} decode {r['decode_tokens_per_s']:,.0f} tok/s",
                   size=kv_size, variant=variant)
    if "moe" in parts:
        for compiled in (False, True):
            record("moe_layer", lambda: bench_moe_layer(kv_size, tokens=16384 if kv_size != "tiny" else 256, compile=compiled),
                   lambda r: f"moe layer {r['size']} compiled={r['compiled']}: forward x{r['forward_ratio']:.2f}, "
                             f"fwd+bwd x{r['fwd_bwd_ratio']:.2f} of dense",
                   size=kv_size, compiled=compiled)
    if "train" in parts:
        for size in [s for s in sizes if s in compile_sizes] or sizes[:1]:
            for optimizer in ("adamw", "muon"):
                record("train_step", lambda: bench_train_step(size, "mha", optimizer, args.batch, torch.cuda.is_available(), args.iters),
                       lambda r: f"train step {r['size']} {r['optimizer']}: {r['step_ms']:.1f} ms, {r['tokens_per_s']:,.0f} tok/s",
                       size=size, optimizer=optimizer)


if __name__ == "__main__":
    main()
