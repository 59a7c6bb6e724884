"""Benchmarks that measure side by side in one run and write ``data/bench/*.json`` with provenance.

    python -m muonlib.bench models                    # fwd+bwd per size/variant, KV cache, MoE vs dense, train step
    python -m muonlib.bench optim                     # Muon step vs torch.optim.Muon vs AdamW
    python -m muonlib.bench ns                        # Newton-Schulz per shape: torch, compiled, Triton
    python -m muonlib.bench profile                   # GPU time of a Muon step by kind of kernel (GPU only)
    python -m muonlib.bench ddp --sizes L --optimizers adamw,muon,muon-redundant   # data-parallel scaling over 1, 2, 4 GPUs
    python -m muonlib.bench decode --sizes L          # tokens/s and roofline share per architecture and batch, beside two anchors
    python -m muonlib.bench latent --sizes L,XL       # MLA's decode attention alone: the kernel's launch configurations' bandwidth
    python -m muonlib.bench attention                 # MLA's training attention by route and SDPA backend, against MHA's
    python -m muonlib.bench kernels --sizes L         # where a compiled forward+backward spends its GPU time, per variant (GPU only)

Runs on a CPU too (with ``--sizes tiny``), which is how the tests keep it working.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import statistics
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import Tensor
from torch._dynamo.utils import counters

from . import linalg
from .data import data_root
from .models import GPT, MLP, MoE, kv_cache_bytes, preset
from .optim import Muon, build_optimizer, classify_parameters
from .provenance import check_replaceable, provenance, write_json
from .train import flops_per_token


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


def spin_up(seconds: float = 0.25) -> None:
    """Keep the GPU busy for ``seconds`` before a sub-millisecond measurement: after a
    compilation it idles at lower clocks, and the first configuration timed then reads slow
    (seen once: cuBLAS at 0.47 ms instead of 0.10 ms)."""
    if not torch.cuda.is_available():
        return
    A = torch.randn(2048, 2048, device="cuda", dtype=torch.float16)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        A @ A
        torch.cuda.synchronize()


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


def utilisation(tokens_per_s: float, flops_per_token: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: the training FLOPs done per second over ``peak`` (the measured
    dense bf16 matmul rate, :func:`matmul_rate`); ``None`` without a GPU."""
    return None if peak is None else tokens_per_s * flops_per_token / peak


def muon_flops_per_token(model: GPT, tokens_per_step: int) -> float:
    """The Newton-Schulz FLOPs one Muon step adds, per token of the step's batch."""
    hidden = [p for _, p in classify_parameters(model)["hidden"]]
    return sum(linalg.newton_schulz_flops(*p.shape[-2:]) * (p.numel() // (p.shape[-2] * p.shape[-1])) for p in hidden) / tokens_per_step


#: torch.compile's modes the model benchmarks compile with (``--compile-mode``): ``reduce-overhead``
#: replays each compiled graph as a CUDA graph, which takes the launch of every kernel off the
#: host, where a small model's step of many short kernels can spend more time than on the GPU
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")


def compiled(module: torch.nn.Module, mode: str = "default") -> Callable:
    """``torch.compile`` with Dynamo's caches cleared first: a benchmark compiles many models in
    one process, and past Dynamo's recompile limit (8 graphs of one ``forward``) the next one
    would run eager while its row says compiled."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}: choose one of {list(COMPILE_MODES)}")
    torch._dynamo.reset()
    return torch.compile(module, mode=None if mode == "default" else mode)


def new_step(model: torch.nn.Module) -> None:
    """Start a training step as the trainer does, gradients set to None: under
    ``reduce-overhead`` the last step's outputs and gradients live in CUDA-graph memory that
    this step's replay overwrites, so none may be carried over (accumulated into)."""
    torch.compiler.cudagraph_mark_step_begin()
    model.zero_grad(set_to_none=True)


def bench_forward_backward(size: str, variant: str, batch: int, compile: bool, iters: int, peak: float | None = None,
                           mode: str = "default") -> dict:
    config = preset(size, variant)
    with torch.device(_device()):
        model = GPT(config).train()
    step_model = compiled(model, mode) if compile else model
    idx = torch.randint(0, config.vocab_size, (batch, config.context), device=_device())

    def fwd_bwd():
        new_step(model)
        with _autocast():
            _, loss = step_model(idx, idx)
        loss.backward()

    _peak_reset()
    ms = median_ms(fwd_bwd, warmup=3, iters=iters)
    tokens = batch * config.context
    flops = flops_per_token(model)
    result = dict(size=size, variant=variant, compiled=compile, compile_mode=mode if compile else None, batch=batch, context=config.context,
                  params=model.num_parameters(), active_params=model.num_parameters(active=True),
                  fwd_bwd_ms=ms, tokens_per_s=tokens / ms * 1e3, flops_per_token=flops,
                  mfu=utilisation(tokens / ms * 1e3, flops, peak), peak_memory_gb=_peak_gb())
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


#: the decode benchmark's models: label -> (variant, model changes); "mla-full" is MLA with r = d (A3's baseline)
DECODE_MODELS = {"mha": ("mha", {}), "mla": ("mla", {}), "mla-full": ("mla", {"full_rank": True}),
                 "mla-norope": ("mla-norope", {}), "moe-mla": ("moe-mla", {}), "mla-torch": ("mla", {}),
                 "mha-compiled": ("mha", {}), "mla-compiled": ("mla", {}), "moe-mla-compiled": ("moe-mla", {})}
#: decoders that differ from the default one, timed beside it in the same run: MLA with its
#: attention in plain torch instead of the Triton kernel, and compiled decode steps
DECODER_OPTIONS = {"mla-torch": {"latent_kernel": False}, "mha-compiled": {"compile": True}, "mla-compiled": {"compile": True},
                   "moe-mla-compiled": {"compile": True}}


def copy_bandwidth(gigabytes: float = 1.0) -> float:
    """Measured HBM bandwidth in bytes/s: a device-to-device copy of ``gigabytes``, read plus written."""
    x = torch.empty(int(gigabytes * 2**30), dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = median_ms(lambda: y.copy_(x), warmup=3, iters=10)
    return 2 * x.numel() / (ms / 1e3)


def matmul_rate(n: int = 8192) -> float:
    """Measured dense bf16 matmul FLOP/s on an ``n x n x n`` product."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = median_ms(lambda: a @ a, warmup=3, iters=10)
    return 2 * n**3 / (ms / 1e3)


def decode_model(size: str, label: str, context: int | None = None) -> GPT:
    variant, changes = DECODE_MODELS[label]
    changes = dict(changes)
    if changes.pop("full_rank", False):
        changes["latent_rank"] = preset(size).d_model
    if context is not None:
        changes["context"] = context
    with torch.device(_device()):
        model = GPT(preset(size, variant, **changes)).eval()
    return model.to(torch.bfloat16 if torch.cuda.is_available() else torch.float32)


def roofline(batch: int, weight_bytes: float, kv_bytes: float, flops: float, bandwidth: float, flop_rate: float) -> dict:
    """A decode step's ceiling from the bytes it must read and the FLOPs it must do: the slower
    of the two bounds the tokens/s."""
    seconds = max((weight_bytes + kv_bytes) / bandwidth, flops / flop_rate)
    return dict(weight_bytes=weight_bytes, kv_bytes=kv_bytes, flops=flops, ceiling_tokens_per_s=batch / seconds,
                memory_bound=(weight_bytes + kv_bytes) / bandwidth >= flops / flop_rate)


def decode_roofline(model: GPT, batch: int, filled: float, bandwidth: float, flop_rate: float) -> dict:
    """The ceiling of one decode step: it must read the weights it uses once (the routed experts
    some token of the batch picks, under uniform routing) and every filled cache entry, and do
    the matmuls; the slower of the two bounds the tokens/s."""
    config, itemsize = model.config, model.tok_emb.weight.element_size()
    positions = model.pos_emb.weight.numel() if model.pos_emb is not None else 0
    params = model.num_parameters() - positions
    routed = sum(m.routed_up.numel() + m.routed_down.numel() for m in model.moe_layers())
    if routed:
        touched = 1 - (1 - config.top_k / config.n_routed_experts) ** batch
        params -= routed * (1 - touched)
    cache = kv_cache_bytes(config, batch, 1, model.tok_emb.weight.dtype) * filled
    weight_bytes = params * itemsize
    if config.attention == "mha":
        attention_flops = 4 * config.d_model * filled * config.n_layer
    else:
        h, r, p, d = config.n_head, config.kv_rank, config.rope_head_dim, config.head_dim
        attention_flops = config.n_layer * h * (2 * (r + p) * filled + 2 * r * filled + 4 * d * r)
    flops = batch * (2 * model.num_parameters(active=True) + attention_flops)
    return roofline(batch, weight_bytes, cache, flops, bandwidth, flop_rate)


#: the decode benchmark's first anchor, timed in the same run (plain torch, one CUDA graph a step)
GRAPH_ANCHOR = "anchor: plain torch, CUDA graph"
#: the decode benchmark's second anchor, what a user would pick instead of muonlib
HF_ANCHOR = "anchor: Hugging Face, static cache"


@torch.no_grad()
def bench_graph_anchor(size: str, batch: int, prompt: int, new_tokens: int, context: int | None,
                       bandwidth: float, flop_rate: float) -> dict:
    """The plain-torch decode anchor, no muonlib (gpt-fast's way): GPT-2's block (LayerNorm, GELU,
    a 4d FFN, tied head) at the size's width, depth and heads, random weights, a static cache;
    one greedy step (every layer, the head and the argmax, the position advanced on the device)
    captured in one CUDA graph on a GPU (eager on a CPU). Tokens/s over ``new_tokens`` steps
    from position ``prompt``, against the step's own roofline."""
    import torch.nn.functional as F

    config = preset(size, "mha", **({"context": context} if context else {}))
    d, H, n_layer, V, T = config.d_model, config.n_head, config.n_layer, config.vocab_size, prompt + new_tokens
    device, on_gpu = _device(), torch.cuda.is_available()
    dtype = torch.bfloat16 if on_gpu else torch.float32
    weight = lambda *shape: torch.randn(*shape, device=device, dtype=dtype) * 0.02  # noqa: E731
    embedding = weight(V, d)
    layers = [dict(qkv=weight(3 * d, d), out=weight(d, d), up=weight(4 * d, d), down=weight(d, 4 * d)) for _ in range(n_layer)]
    keys = torch.zeros(n_layer, batch, H, T, d // H, device=device, dtype=dtype)
    values = torch.zeros_like(keys)
    token = torch.zeros(batch, 1, dtype=torch.long, device=device)
    pos = torch.tensor([prompt], device=device)
    positions = torch.arange(T, device=device)

    def step() -> None:
        x = F.embedding(token, embedding)
        visible = (positions <= pos).view(1, 1, 1, T)
        for i, layer in enumerate(layers):
            qkv = F.linear(F.layer_norm(x, (d,)), layer["qkv"]).view(batch, 1, 3, H, d // H)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            keys[i].index_copy_(2, pos, k)
            values[i].index_copy_(2, pos, v)
            y = F.scaled_dot_product_attention(q, keys[i], values[i], attn_mask=visible)
            x = x + F.linear(y.transpose(1, 2).reshape(batch, 1, d), layer["out"])
            x = x + F.linear(F.gelu(F.linear(F.layer_norm(x, (d,)), layer["up"])), layer["down"])
        token.copy_(F.linear(F.layer_norm(x, (d,)), embedding).argmax(-1))
        pos.add_(1)

    run = step
    if on_gpu:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            step()  # lazy initialisation happens before the capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        run = graph.replay
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    pos.fill_(prompt)
    sync()
    start = time.perf_counter()
    for _ in range(new_tokens):
        run()
    sync()
    seconds = time.perf_counter() - start
    itemsize = embedding.element_size()
    params = embedding.numel() + sum(w.numel() for layer in layers for w in layer.values())
    filled = prompt + new_tokens / 2
    kv_bytes = 2 * n_layer * batch * d * filled * itemsize
    flops = batch * (2 * params + 4 * d * filled * n_layer)
    ceiling = roofline(batch, params * itemsize, kv_bytes, flops, bandwidth, flop_rate)
    tokens_per_s = batch * new_tokens / seconds
    return dict(size=size, model=GRAPH_ANCHOR, anchor=True, batch=batch, prompt=prompt, new_tokens=new_tokens, context=config.context,
                cuda_graphs=on_gpu, tokens_per_s=tokens_per_s, step_ms=seconds / new_tokens * 1e3,
                **ceiling, roofline_share=tokens_per_s / ceiling["ceiling_tokens_per_s"])


@torch.no_grad()
def bench_hf_anchor(size: str, batch: int, prompt: int, new_tokens: int, context: int | None,
                    bandwidth: float, flop_rate: float) -> dict | None:
    """Hugging Face transformers' GPT-2 at the size's width, depth and heads (random weights),
    greedy ``generate`` with a static cache: tokens/s of the second of two generations, its
    prefill included (``generate`` cannot time its steps apart; a 64-token prefill costs about
    one step of 192); ``None`` where ``transformers`` is not importable."""
    try:
        import transformers
    except ImportError:
        return None
    config = preset(size, "mha", **({"context": context} if context else {}))
    gpt2 = transformers.GPT2Config(n_layer=config.n_layer, n_embd=config.d_model, n_head=config.n_head,
                                   n_positions=config.context, vocab_size=config.vocab_size)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = transformers.GPT2LMHeadModel(gpt2).to(_device(), dtype).eval()
    idx = torch.randint(0, config.vocab_size, (batch, prompt), device=_device())
    options = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, cache_implementation="static", pad_token_id=0)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    model.generate(idx, **options)
    sync()
    start = time.perf_counter()
    model.generate(idx, **options)
    sync()
    seconds = time.perf_counter() - start
    itemsize = torch.finfo(dtype).bits // 8
    params = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
    filled = prompt + new_tokens / 2
    flops = batch * (2 * params + 4 * config.d_model * filled * config.n_layer)
    ceiling = roofline(batch, params * itemsize, 2 * config.n_layer * batch * config.d_model * filled * itemsize, flops,
                       bandwidth, flop_rate)
    tokens_per_s = batch * new_tokens / seconds
    return dict(size=size, model=HF_ANCHOR, anchor=True, transformers=transformers.__version__, batch=batch, prompt=prompt,
                new_tokens=new_tokens, context=config.context, tokens_per_s=tokens_per_s, step_ms=seconds / new_tokens * 1e3,
                **ceiling, roofline_share=tokens_per_s / ceiling["ceiling_tokens_per_s"])


@torch.no_grad()
def bench_decode(size: str, label: str, batch: int, prompt: int, new_tokens: int, context: int | None,
                 bandwidth: float, flop_rate: float) -> dict:
    """Greedy decoding through :class:`muonlib.models.decode.Decoder` (static cache, CUDA graphs):
    tokens/s over ``new_tokens`` steps after a ``prompt``-token prefill (the steps timed, as the
    plain-graph anchor's are; the prefill is the time to first token), the second of two
    generations (the first captures the graphs), against its roofline; time to the first
    token for a prompt filling the context; the cache's bytes measured and analytic."""
    from .models import Decoder

    model, graphs_before_model = _decode_arm(size, label, context)
    config, dtype = model.config, model.tok_emb.weight.dtype
    idx = torch.randint(0, config.vocab_size, (batch, prompt), device=_device())
    graphs = counters["stats"]["unique_graphs"]
    _peak_reset()
    before = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
    options = DECODER_OPTIONS.get(label, {})
    decoder = Decoder(model, batch, prompt + new_tokens, **options)
    cache_bytes = (torch.cuda.memory_allocated() - before) if torch.cuda.is_available() else decoder.cache.nbytes()

    def steps(logits: Tensor) -> None:
        for _ in range(new_tokens):
            logits = decoder.step(logits.argmax(-1, keepdim=True))

    steps(decoder.prefill(idx))
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    logits = decoder.prefill(idx)
    sync()
    start = time.perf_counter()
    steps(logits)
    sync()
    seconds = time.perf_counter() - start
    graphs_compiled = counters["stats"]["unique_graphs"] - graphs
    if options.get("compile") and counters["stats"]["unique_graphs"] == graphs_before_model:
        raise RuntimeError(f"{label} ran eager: Dynamo compiled no graph of its step")
    full = Decoder(model, batch, config.context, **options)
    long_prompt = torch.randint(0, config.vocab_size, (batch, config.context), device=_device())
    ttft = median_ms(lambda: full.prefill(long_prompt).argmax(-1), warmup=1, iters=3)
    roofline = decode_roofline(model, batch, prompt + new_tokens / 2, bandwidth, flop_rate)
    tokens_per_s = batch * new_tokens / seconds
    result = dict(size=size, model=label, variant=DECODE_MODELS[label][0], batch=batch, prompt=prompt, new_tokens=new_tokens,
                  context=config.context, kv_rank=config.kv_rank if config.attention == "mla" else None,
                  cuda_graphs=decoder.cuda_graphs, latent_kernel=decoder.latent_kernel, compiled=bool(options.get("compile")),
                  graphs_compiled=graphs_compiled, tokens_per_s=tokens_per_s, step_ms=seconds / new_tokens * 1e3,
                  ttft_ms=ttft, ttft_prompt=config.context, peak_memory_gb=_peak_gb(),
                  kv_bytes_measured=cache_bytes, kv_bytes_analytic=kv_cache_bytes(config, batch, prompt + new_tokens, dtype),
                  kv_tensors=sum(map(len, decoder.cache.layers)), kv_bytes_per_token_layer=kv_cache_bytes(config, 1, 1, dtype) // config.n_layer,
                  **roofline, roofline_share=tokens_per_s / roofline["ceiling_tokens_per_s"])
    del decoder, full
    return result


@functools.lru_cache(maxsize=1)
def _decode_arm(size: str, label: str, context: int | None) -> tuple[GPT, int]:
    """The decode benchmark's model for consecutive rows of one arm (its batches), and Dynamo's
    graph count when it was built. Each arm compiles afresh: past Dynamo's recompile limit a
    compiled arm would silently run eager. An arm's batches share its compiled step (the batch
    a dynamic dimension: one graph for batch 1, one for the others), which halves the
    benchmark's compile time."""
    torch._dynamo.reset()
    return decode_model(size, label, context), counters["stats"]["unique_graphs"]


#: the options a resumed decode benchmark must share with the file it resumes
DECODE_OPTIONS = ("sizes", "variants", "batches", "long_context")


def _transformers_imports() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def decode_runs(sizes: list[str], labels: list[str], batches: list[int], long_context: int) -> list[tuple[str, str, int, int]]:
    """The decode benchmark's rows, (size, decoder, batch, cache length), a cache length at a
    time: the first size's context, opened by the anchors, then MHA and MLA decoders of the
    first size at ``long_context`` (batches of 16 and more), opened by the anchors again. Every
    goal compares rows of one cache length, so each length's rows come from one job even where a
    job ends between lengths (``--resume``). Other sizes run at their own context, a length of
    their own where it is not the first size's. The Hugging Face anchor where ``transformers``
    imports."""
    first = sizes[0]
    if long_context == preset(first).context:
        raise ValueError(f"--long-context {long_context} is {first}'s own context: choose a longer cache")
    anchors = (GRAPH_ANCHOR, HF_ANCHOR) if _transformers_imports() else (GRAPH_ANCHOR,)
    long_labels = [label for label in labels if DECODE_MODELS[label][0] in ("mha", "mla") and label != "mla-full"]
    runs = [(first, anchor, b, preset(first).context) for anchor in anchors for b in batches]
    runs += [(size, label, b, preset(size).context) for size in sizes for label in labels for b in batches]
    runs += [(first, label, b, long_context) for label in (*anchors, *long_labels) for b in batches if b >= 16]
    return runs


def finished_contexts(path: Path, runs: list[tuple[str, str, int, int]], options: dict) -> list[dict]:
    """The rows of ``path`` (a decode benchmark's file from this GPU, measured with the same
    :data:`DECODE_OPTIONS`) at each cache length all of whose planned ``runs`` it holds, error
    rows included, each with the job that measured it (a row saved before rows named their job
    gets the file's): what ``--resume`` keeps, so that a job measures the lengths another job
    left unfinished, each one whole."""
    if not path.exists():
        return []
    saved = json.loads(path.read_text())
    theirs = saved["provenance"]["config"]
    changed = {key: (theirs.get(key), options[key]) for key in DECODE_OPTIONS if theirs.get(key) != options[key]}
    if changed:
        raise ValueError(f"{path} was measured with other options ({', '.join(f'{k}: saved {a!r}, now {b!r}' for k, (a, b) in changed.items())}): "
                         f"resume with the saved ones, or start afresh with --force")
    file_job = {key: saved["provenance"][key] for key in ("git_commit", "date")} | \
               {key: theirs.get(key) for key in ("copy_bandwidth", "bf16_matmul_rate")}
    rows = [{"job": file_job} | r for r in saved["results"]]
    measured = {(r["size"], r["model"], r["batch"], r["context"]) for r in rows}
    finished = {c for c in {run[3] for run in runs} if all(run in measured for run in runs if run[3] == c)}
    return [r for r in rows if r["context"] in finished]


def bench_moe_layer(size: str, tokens: int, compile: bool, mode: str = "default") -> dict:
    """The MoE FFN against a dense GELU MLP of the same active width ((shared + top_k) * h)."""
    config = preset(size, "moe-mla")
    with torch.device(_device()):
        moe = MoE(config, 0.02)
        dense = MLP(config.d_model, (config.n_shared_experts + config.top_k) * config.expert_hidden, 0.02)
    x = torch.randn(tokens, config.d_model, device=_device())
    out = {}
    for name, layer in (("moe", moe), ("dense", dense)):
        fn = compiled(layer, mode) if compile else layer

        def forward():
            new_step(layer)
            fn(x)

        with torch.no_grad(), _autocast():
            out[f"{name}_forward_ms"] = median_ms(forward, warmup=3, iters=20)

        def fwd_bwd():
            new_step(layer)
            with _autocast():
                fn(x).float().square().mean().backward()

        out[f"{name}_fwd_bwd_ms"] = median_ms(fwd_bwd, warmup=3, iters=20)
    return dict(size=size, tokens=tokens, compiled=compile, compile_mode=mode if compile else None, d_model=config.d_model, expert_hidden=config.expert_hidden, **out,
                forward_ratio=out["moe_forward_ms"] / out["dense_forward_ms"],
                fwd_bwd_ratio=out["moe_fwd_bwd_ms"] / out["dense_fwd_bwd_ms"])


def bench_train_step(size: str, variant: str, optimizer: str, batch: int, compile: bool, iters: int, peak: float | None = None,
                     mode: str = "default") -> dict:
    config = preset(size, variant)
    with torch.device(_device()):
        model = GPT(config).train()
    step_model = compiled(model, mode) if compile else model
    opt = build_optimizer(model, optimizer, lr=1e-3)
    idx = torch.randint(0, config.vocab_size, (batch, config.context), device=_device())

    def step():
        new_step(model)
        with _autocast():
            _, loss = step_model(idx, idx)
        loss.backward()
        opt.step()

    _peak_reset()
    # Ten warm-up steps: the model's compilation and the Muon step's CUDA-graph recording stay
    # out of the timed steps.
    ms = median_ms(step, warmup=10, iters=iters)
    tokens = batch * config.context
    # Newton-Schulz counts: it is work Muon does that AdamW does not
    flops = flops_per_token(model) + (muon_flops_per_token(model, tokens) if optimizer == "muon" else 0.0)
    return dict(size=size, variant=variant, optimizer=optimizer, compiled=compile, compile_mode=mode if compile else None, batch=batch, step_ms=ms,
                tokens_per_s=tokens / ms * 1e3, flops_per_token=flops, mfu=utilisation(tokens / ms * 1e3, flops, peak),
                peak_memory_gb=_peak_gb())


def bench_data_parallel_step(size: str, optimizer: str, batch: int, iters: int, device: str = "auto") -> dict | None:
    """One rank of a data-parallel training step (launched by ``torchrun``): the compiled
    model under DistributedDataParallel, ``batch`` sequences per rank, clipping and bf16 as in
    the trainer. ``optimizer`` is ``adamw``, ``muon`` (Newton-Schulz shared over the ranks)
    or ``muon-redundant`` (every rank orthogonalises every matrix). Returns rank 0's row:
    total tokens/s, and the optimizer step's median GPU time on a rank. ``device="cpu"``
    runs the processes on CPUs (gloo) where a GPU machine has fewer GPUs than processes."""
    from torch.nn.parallel import DistributedDataParallel

    from .distributed import compile_data_parallel, launch

    run = launch(device)
    device = torch.device("cuda", run.local_rank) if device != "cpu" and torch.cuda.is_available() else torch.device("cpu")
    config = preset(size, "mha")
    torch.manual_seed(0)
    model = GPT(config).to(device).train()
    parallel = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if run.distributed else model
    step_model = (compile_data_parallel(parallel) if run.distributed else torch.compile(parallel)) if device.type == "cuda" else parallel
    name, options = {"adamw": ("adamw", {}), "muon": ("muon", {"distributed": run.distributed}),
                     "muon-redundant": ("muon", {})}[optimizer]
    opt = build_optimizer(model, name, lr=1e-3, **options)
    idx = torch.randint(0, config.vocab_size, (batch, config.context), device=device)
    optimizer_ms = []

    def step(time_optimizer: bool):
        with _autocast() if device.type == "cuda" else contextlib.nullcontext():
            _, loss = step_model(idx, idx)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if time_optimizer and device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            opt.step()
            end.record()
            end.synchronize()
            optimizer_ms.append(start.elapsed_time(end))
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(10):  # compilation, CUDA-graph recordings, NCCL communicators
        step(False)
    ms = median_ms(lambda: step(False), warmup=2, iters=iters)
    for _ in range(iters):
        step(True)
    if not run.main:
        return None
    return dict(size=size, optimizer=optimizer, gpus=run.world, batch_per_gpu=batch, step_ms=ms,
                tokens_per_s=run.world * batch * config.context / ms * 1e3,
                optimizer_step_ms=statistics.median(optimizer_ms) if optimizer_ms else None)


def data_parallel_scaling(size: str, optimizers: list[str], gpu_counts: list[int], batch: int, iters: int,
                          device: str = "auto") -> list[dict]:
    """:func:`bench_data_parallel_step` for every optimizer and GPU count, one ``torchrun``
    launch each, side by side; adds each row's speed-up over one GPU and Muon's share of
    AdamW's tokens/s at the same GPU count."""
    import subprocess
    import sys
    import tempfile

    gpus_here = torch.cuda.device_count() if device != "cpu" and torch.cuda.is_available() else None
    if gpus_here is not None and max(gpu_counts) > gpus_here:
        raise ValueError(f"--gpu-counts asks for up to {max(gpu_counts)} GPUs but this machine has {gpus_here}: "
                         f"ask for at most {gpus_here}, or pass --device cpu to launch CPU processes instead")
    rows = []
    for gpus in gpu_counts:
        for optimizer in optimizers:
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                                "-m", "muonlib.bench", "ddp-worker", "--sizes", size, "--optimizers", optimizer,
                                "--batch", str(batch), "--iters", str(iters), "--device", device, "--out", out.name], check=True)
                row = json.loads(Path(out.name).read_text())
            rows.append(row)
            print(f"ddp {size} {optimizer:<15} {gpus} GPU(s): {row['tokens_per_s']:>12,.0f} tok/s, "
                  f"optimizer step {row['optimizer_step_ms']} ms", flush=True)
    one = {r["optimizer"]: r for r in rows if r["gpus"] == 1}
    for r in rows:
        if r["optimizer"] in one:
            r["speedup_vs_1_gpu"] = r["tokens_per_s"] / one[r["optimizer"]]["tokens_per_s"]
            if r["optimizer_step_ms"] and one[r["optimizer"]]["optimizer_step_ms"]:
                r["optimizer_step_vs_1_gpu"] = r["optimizer_step_ms"] / one[r["optimizer"]]["optimizer_step_ms"]
        adamw = next((a for a in rows if a["optimizer"] == "adamw" and a["gpus"] == r["gpus"]), None)
        if adamw is not None:
            r["share_of_adamw"] = r["tokens_per_s"] / adamw["tokens_per_s"]
    return rows


def hidden_matrix_shapes(size: str, variant: str = "mha") -> list[tuple[int, ...]]:
    """Shapes of the parameters Muon updates in a model (2D matrices, 3D expert stacks)."""
    with torch.device("meta"):
        model = GPT(preset(size, variant))
    return [tuple(p.shape) for _, p in classify_parameters(model)["hidden"]]


def bench_optimizer_step(size: str, variant: str = "mha", iters: int = 20) -> list[dict]:
    """One optimizer step over a model's hidden matrices, gradients in place.
    ``torch.optim.Muon`` takes 2D parameters only, so it gets each expert as its own matrix.
    Each optimizer is timed on tensors of its own, freed before the next is built: the peak
    memory is one optimizer's, not what all of them leave behind (XL MoE-MLA has 1.7B hidden
    weights, 6.2 GiB per float32 copy)."""
    shapes = hidden_matrix_shapes(size, variant)
    matrices = [shape[-2:] for shape in shapes for _ in range(math.prod(shape[:-2]))]
    cuda = torch.cuda.is_available()
    optimizers = {
        "muonlib.Muon": (shapes, lambda params: Muon(params, lr=0.02)),
        "muonlib.Muon(reference)": (shapes, lambda params: Muon(params, lr=0.02, fused=False)),
        "torch.optim.Muon": (matrices, lambda params: torch.optim.Muon(params, lr=0.02, adjust_lr_fn="match_rms_adamw")),
        "AdamW(fused)" if cuda else "AdamW": (shapes, lambda params: torch.optim.AdamW(params, lr=1e-3, fused=cuda or None)),
    }
    if not cuda:  # without a GPU muonlib.Muon takes the reference step: the row would repeat it
        del optimizers["muonlib.Muon(reference)"]
    rows = [dict(size=size, variant=variant, optimizer=name, n_matrices=len(matrices), step_ms=time_optimizer_step(targets, make, iters))
            for name, (targets, make) in optimizers.items()]
    base = next(r["step_ms"] for r in rows if r["optimizer"] == "torch.optim.Muon")
    for r in rows:
        r["speedup_vs_torch_muon"] = base / r["step_ms"]
    return rows


def time_optimizer_step(shapes: list[tuple[int, ...]], make: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
                        iters: int) -> float:
    """Median ms of one step of the optimizer ``make`` builds over fresh parameters of ``shapes``."""
    params = [torch.nn.Parameter(torch.randn(s, device=_device()) * 0.02) for s in shapes]
    grads = [torch.randn_like(p) for p in params]
    opt = make(params)

    def step():
        for p, g in zip(params, grads):
            p.grad = g  # gradients are in place for every timed step
        opt.step()

    return median_ms(step, warmup=3, iters=iters)


def kernel_kind(name: str) -> str:
    """The part of a Muon step a GPU kernel belongs to, from the kernel's name."""
    if "_gram_kernel" in name:
        return "Triton symmetric products"
    if any(tag in name for tag in ("_momentum_kernel", "_normalize_kernel", "_update_kernel")):
        return "Triton memory passes"
    if any(tag in name for tag in ("nvjet", "gemm", "xmma", "cutlass")):
        return "matmuls (cuBLAS)"
    return "other kernels"


def kernel_times(fn: Callable[[], object], steps: int) -> list[tuple[str, float, float]]:
    """The GPU kernels of ``fn`` under the profiler, longest first: (name, ms per call of ``fn``,
    launches per call), over ``steps`` calls."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    return sorted(((event.key, event.self_device_time_total / steps / 1e3, event.count / steps)
                   for event in prof.key_averages() if event.self_device_time_total > 0), key=lambda k: -k[1])


def profile_optimizer_step(size: str, variant: str = "mha", steps: int = 5) -> list[dict]:
    """GPU time per :func:`kernel_kind` of one (fused) ``muonlib.Muon`` step over a model's
    hidden matrices, and what the step's wall time adds to the sum of its kernels (host work
    before the CUDA graph starts, and gaps between kernels)."""
    if not torch.cuda.is_available():
        raise RuntimeError("profiling a Muon step needs a CUDA GPU (the kernels are what it measures)")
    params = [torch.nn.Parameter(torch.randn(s, device="cuda") * 0.02) for s in hidden_matrix_shapes(size, variant)]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = Muon(params, lr=0.02)
    wall = median_ms(opt.step, warmup=5, iters=20)
    per_kind: dict[str, float] = defaultdict(float)
    for name, ms, _ in kernel_times(opt.step, steps):
        per_kind[kernel_kind(name)] += ms
    rows = [dict(size=size, variant=variant, part=kind, ms=ms) for kind, ms in sorted(per_kind.items())]
    rows.append(dict(size=size, variant=variant, part="host work and gaps", ms=wall - sum(per_kind.values())))
    return rows


#: the parts of a model's step, and the names their kernels carry, tried in this order (a
#: compiled kernel may fuse an index op, an attention kernel be built on CUTLASS, a grouped GEMM is a GEMM)
MODEL_KERNEL_KINDS = (("compiled elementwise and reductions", ("triton_",)),  # Inductor names its kernels after the ops they fuse
                      ("attention", ("flash", "fmha", "attention", "cudnn", "mem_eff")),
                      ("grouped matmuls", ("grouped", "groupproblemshape", "ptrarray")),  # CUTLASS's grouped GEMM on sm90
                      ("matmuls", ("nvjet", "gemm", "xmma", "cutlass", "cublas")),
                      ("sort, gather and scatter", ("sort", "scatter", "gather", "index", "radix")))


def model_kernel_kind(name: str) -> str:
    """The part of a training step a GPU kernel belongs to, from its name (:data:`MODEL_KERNEL_KINDS`)."""
    lowered = name.lower()
    return next((kind for kind, tags in MODEL_KERNEL_KINDS if any(tag in lowered for tag in tags)), "other kernels")


def profile_forward_backward(size: str, variant: str, batch: int, steps: int = 3, top: int = 12, mode: str = "default") -> list[dict]:
    """Where a compiled forward and backward spends its GPU time: per :func:`model_kernel_kind`,
    then its ``top`` kernels by time, each in ms per step with its calls per step and its share
    of the kernels' sum, and what the wall time adds to that sum. The profile that says which
    of MLA's or MoE-MLA's parts to make faster before anything is changed."""
    if not torch.cuda.is_available():
        raise RuntimeError("profiling a model's step needs a CUDA GPU (the kernels are what it measures)")
    config = preset(size, variant)
    with torch.device("cuda"):
        model = GPT(config).train()
    step_model = compiled(model, mode)
    idx = torch.randint(0, config.vocab_size, (batch, config.context), device="cuda")

    def fwd_bwd():
        new_step(model)
        with _autocast():
            _, loss = step_model(idx, idx)
        loss.backward()

    wall = median_ms(fwd_bwd, warmup=3, iters=10)
    kernels = kernel_times(fwd_bwd, steps)
    total = sum(ms for _, ms, _ in kernels)
    per_kind: dict[str, float] = defaultdict(float)
    for name, ms, _ in kernels:
        per_kind[model_kernel_kind(name)] += ms
    key = dict(size=size, variant=variant, batch=batch, compile_mode=mode, wall_ms=wall)
    rows = [key | dict(part=kind, ms=ms, share=ms / total) for kind, ms in sorted(per_kind.items(), key=lambda kv: -kv[1])]
    rows += [key | dict(part=model_kernel_kind(name), kernel=name[:160], ms=ms, calls=calls, share=ms / total)
             for name, ms, calls in kernels[:top]]
    rows.append(key | dict(part="host work and gaps", ms=wall - total, share=None))
    return rows


@contextlib.contextmanager
def symmetric_kernels(enabled: bool) -> Iterator[None]:
    """Send every Newton-Schulz step through the Triton symmetric kernels, or none (on a CPU the
    kernels then run in Triton's interpreter, if enabled)."""
    saved = linalg._symmetric_kernels_win
    linalg._symmetric_kernels_win = lambda X: enabled
    try:
        yield
    finally:
        linalg._symmetric_kernels_win = saved


def bench_newton_schulz(batch: int, p: int, q: int, iters: int) -> dict:
    """Five Newton-Schulz steps on ``batch`` wide ``p x q`` matrices in float16 (the default):
    eager torch, compiled torch, the Triton symmetric kernels and the compiled Gram iteration,
    each with its distance from a float64 run; the direct iteration in bfloat16 for its error;
    the default dispatch; and ``X X^T`` alone, by cuBLAS and by the kernel."""
    from .kernels import gram, gram_reference

    X = torch.randn(batch, p, q, device=_device(), dtype=torch.float16)
    X = X / torch.linalg.matrix_norm(X.float(), keepdim=True).to(X.dtype)
    flops = batch * linalg.newton_schulz_flops(p, q)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)  # a graph per shape
    compiled = torch.compile(linalg.newton_schulz, dynamic=False)
    exact = linalg.newton_schulz(X, dtype=torch.float64, gram=False)

    def distance(Y: Tensor) -> float:
        return ((Y.double() - exact).norm() / exact.norm()).item()

    row = dict(batch=batch, p=p, q=q, ns_flops=flops, gram_ns_flops=batch * linalg.gram_newton_schulz_flops(p, q))
    spin_up()
    with symmetric_kernels(False):
        row["torch_ms"] = median_ms(lambda: linalg.newton_schulz(X, gram=False), iters=iters)
        row["torch_compiled_ms"] = median_ms(lambda: compiled(X, gram=False), iters=iters)
        row["torch_error"] = distance(linalg.newton_schulz(X, gram=False))
        row["bf16_ms"] = median_ms(lambda: compiled(X, dtype=torch.bfloat16, gram=False), iters=iters)
        row["bf16_error"] = distance(linalg.newton_schulz(X, dtype=torch.bfloat16, gram=False))
        row["gram_compiled_ms"] = median_ms(lambda: compiled(X, gram=True), iters=iters)
        row["gram_error"] = distance(linalg.newton_schulz(X, gram=True))
    with symmetric_kernels(True):
        row["triton_ms"] = median_ms(lambda: linalg.newton_schulz(X, gram=False), iters=iters)
        row["triton_error"] = distance(linalg.newton_schulz(X, gram=False))
    row["default_ms"] = median_ms(lambda: compiled(X), iters=iters)  # what newton_schulz dispatches to here
    row["gram_cublas_ms"] = median_ms(lambda: gram_reference(X), iters=iters)
    row["gram_triton_ms"] = median_ms(lambda: gram(X), iters=iters)
    best = min(row["torch_ms"], row["torch_compiled_ms"])
    row["triton_speedup"] = best / row["triton_ms"]
    row["gram_speedup"] = best / row["gram_compiled_ms"]
    fastest = min(best, row["triton_ms"], row["gram_compiled_ms"], row["default_ms"])
    row["best_tflops"] = flops / fastest / 1e9  # the direct iteration's FLOPs: an equivalent rate for the Gram path
    return row


GRAM_CONFIGS = [dict(BLOCK=b, BLOCK_K=k, num_warps=w, num_stages=st)
                for b, k, w, st in ((64, 64, 4, 4), (64, 128, 4, 3), (128, 32, 8, 4), (128, 64, 4, 3), (128, 64, 4, 4),
                                    (128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 2), (128, 128, 8, 3))]
#: (batch, width) of the configuration sweep: the 768-wide batch of a GPT-2-small model, then single large matrices.
GRAM_CONFIG_SHAPES = ((48, 768), (1, 2048), (1, 4096), (1, 8192))


def bench_gram_configs(batch: int, width: int, iters: int) -> list[dict]:
    """The symmetric kernel's launch configurations on a batch of square float16 matrices, against cuBLAS."""
    from .kernels import gram, gram_reference

    X = torch.randn(batch, width, width, device=_device(), dtype=torch.float16)
    spin_up()
    rows = [dict(batch=batch, width=width, config="cuBLAS bmm", ms=median_ms(lambda: gram_reference(X), iters=iters))]
    for config in GRAM_CONFIGS:
        try:
            ms = median_ms(lambda: gram(X, config=config), iters=iters)
        except Exception as error:  # noqa: BLE001 - e.g. out of shared memory: recorded, not fatal
            ms = float("nan")
            print(f"gram {width} {config}: {type(error).__name__}")
        rows.append(dict(batch=batch, width=width, config=str(config), ms=ms))
    return rows


#: launch configurations the latent-attention sweep tries beside the kernel's default one
LATENT_CONFIGS = [dict(BLOCK_S=block, num_warps=warps, num_stages=stages)
                  for block in (16, 32, 64) for warps in (4, 8) for stages in (2, 3, 4)]


def graph_ms(fn: Callable[[], object], calls: int = 20, iters: int = 10) -> float:
    """Median time of one ``fn`` in ms, ``calls`` of them replayed from one CUDA graph and timed
    by CUDA events, so that neither launches nor the host count, as in a decode step's graph (on
    a CPU, timed directly)."""
    if not torch.cuda.is_available():
        return median_ms(fn, warmup=1, iters=iters)
    fn()  # compiles the kernel outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return statistics.median(times)


@torch.no_grad()
def bench_latent_configs(size: str, batch: int, context: int, bandwidth: float) -> list[dict]:
    """MLA's decode attention alone at one size's heads and ranks, a full cache of ``context``
    positions: plain torch, the kernel's default launch, and each of :data:`LATENT_CONFIGS` with
    the default split of the cache and with twice as many splits; each as a share of the copy
    bandwidth for the bytes it must read (the cache's latents and rotary keys)."""
    from .kernels.latent_attention import launch_attention, latent_attention_reference, split_count

    attn = decode_model(size, "mla", context).blocks[0].attn
    H, R, P, dtype, device = attn.n_head, attn.rank, attn.rope_dim, attn.k_up.weight.dtype, _device()
    q, q_rope = torch.randn(batch, H, R, device=device, dtype=dtype), torch.randn(batch, H, P, device=device, dtype=dtype)
    latent = torch.randn(batch, context, R, device=device, dtype=dtype)
    k_rope = torch.randn(batch, context, P, device=device, dtype=dtype)
    pos = torch.tensor([context - 1], device=device)
    cache_bytes = batch * context * (R + P) * latent.element_size()
    programs = 2 * torch.cuda.get_device_properties(device).multi_processor_count if torch.cuda.is_available() else 1
    arms: list[tuple[str, dict | None, int | None]] = [("torch", None, None), ("default", None, None)]
    for config in LATENT_CONFIGS if torch.cuda.is_available() else []:  # the interpreter knows one configuration
        doubled = 2 * split_count(batch, -(-context // config["BLOCK_S"]), programs)
        arms += [(str(config), config, None), (str(config), config, doubled)]
    truth = latent_attention_reference(q.float(), q_rope.float(), latent.float(), k_rope.float(), pos, attn.scale)
    rows = []
    for arm, config, splits in arms:
        if arm == "torch":
            call = lambda: latent_attention_reference(q, q_rope, latent, k_rope, pos, attn.scale)  # noqa: E731
        else:
            call = lambda: launch_attention(q, q_rope, latent, k_rope, pos, attn.scale, splits, config)  # noqa: E731
        try:
            relative = ((call().float() - truth).norm() / truth.norm()).item()
            if not relative < 2e-2:  # bf16 scores and weights; a launch that computes something else is no candidate
                raise ArithmeticError(f"relative error {relative:.2g} against the float32 reference")
            ms = graph_ms(call)
        except Exception as error:  # noqa: BLE001 - e.g. out of shared memory: recorded, not fatal
            rows.append(dict(size=size, batch=batch, context=context, arm=arm, splits=splits, error=f"{type(error).__name__}: {error}"[:300]))
            continue
        rows.append(dict(size=size, batch=batch, context=context, heads=H, rank=R, rope=P, arm=arm, splits=splits, ms=ms,
                         relative_error=relative, cache_bytes=cache_bytes, bandwidth_share=cache_bytes / (ms / 1e3) / bandwidth))
    return rows


#: SDPA backends an attention route can be pinned to ("auto" lets PyTorch choose)
ATTENTION_BACKENDS = ("auto", "flash", "efficient", "cudnn")


def attention_routes(head_dim: int, rope_dim: int) -> dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]]:
    """Ways to compute MLA's training attention, causal over ``(B, H, T, D + P)`` queries and
    keys and ``(B, H, T, D)`` values: as the model does (``unequal``: FlashAttention-2 takes
    equal head dims only, so PyTorch must pick another kernel), and with the values zero-padded
    to ``D + P`` and the output cut back (``padded``: flash-eligible, at (D + P) / D of the
    value FLOPs)."""
    scale = (head_dim + rope_dim) ** -0.5

    def unequal(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)

    def padded(q, k, v):
        wide = torch.nn.functional.pad(v, (0, rope_dim))
        return torch.nn.functional.scaled_dot_product_attention(q, k, wide, is_causal=True, scale=scale)[..., :head_dim]

    return {"unequal": unequal, "padded": padded}


def bench_attention_routes(size: str, batch: int, iters: int) -> list[dict]:
    """Forward and backward of one layer's training attention at ``size``'s heads and context:
    MHA's (equal head dims) as the reference, then each of MLA's :func:`attention_routes` under
    each of :data:`ATTENTION_BACKENDS`, with its time against MHA's and its distance from the
    float32 result. A backend that refuses a route is recorded as an error row: which options
    exist is part of what this measures, so that MLA's attention changes only for one that wins."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    config = preset(size, "mla")
    H, D, P, T = config.n_head, config.head_dim, config.rope_head_dim, config.context
    device, dtype = _device(), (torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}

    def inputs(qk_dim: int) -> list[Tensor]:
        generator = torch.Generator(device).manual_seed(0)
        return [torch.randn(batch, H, T, dim, device=device, generator=generator).to(dtype).requires_grad_()
                for dim in (qk_dim, qk_dim, D)]

    def timed(fn: Callable[[Tensor, Tensor, Tensor], Tensor], tensors: list[Tensor], backend: str) -> tuple[float, float]:
        pinned = (lambda: sdpa_kernel([backends[backend]])) if backend != "auto" else contextlib.nullcontext
        truth = fn(*(t.detach().float() for t in tensors))
        with pinned(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a refused backend's reasons: its error row says it
            out = fn(*tensors)
            error = ((out.float() - truth).norm() / truth.norm()).item()
            upstream = torch.randn_like(out)  # the backward alone, no loss around it and no gradient accumulated

            def fwd_bwd():
                torch.autograd.grad(fn(*tensors), tensors, upstream)

            return median_ms(fwd_bwd, warmup=3, iters=iters), error

    rows = []
    spin_up()  # every ratio divides by MHA's time, measured first
    mha_ms, mha_error = timed(attention_routes(D, 0)["unequal"], inputs(D), "auto")
    rows.append(dict(size=size, batch=batch, context=T, heads=H, qk_dim=D, v_dim=D, attention="mha", route="equal", backend="auto",
                     fwd_bwd_ms=mha_ms, vs_mha=1.0, relative_error=mha_error))
    mla = inputs(D + P)
    for route, fn in attention_routes(D, P).items():
        for backend in ATTENTION_BACKENDS:
            key = dict(size=size, batch=batch, context=T, heads=H, qk_dim=D + P, v_dim=D, attention="mla", route=route, backend=backend)
            try:
                ms, error = timed(fn, mla, backend)
            except RuntimeError as refused:  # "no available kernel": the backend does not take this route
                rows.append(key | dict(error=f"{type(refused).__name__}: {refused}"[:300]))
                continue
            rows.append(key | dict(fwd_bwd_ms=ms, vs_mha=ms / mha_ms, relative_error=error))
    return rows


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    """``"48x768x768,1x4096x4096"`` -> ``[(48, 768, 768), (1, 4096, 4096)]`` (batch x rows x columns)."""
    try:
        shapes = [tuple(int(v) for v in item.split("x")) for item in text.split(",")]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != 3 or min(s) < 1 for s in shapes):
        raise SystemExit(f"--ns-shapes wants comma-separated BATCHxROWSxCOLUMNS, e.g. 48x768x768; got {text!r}")
    return shapes  # type: ignore[return-value]


# Every hidden shape of the XS-XL models at their counts (wide orientation), then square
# and 1:4 matrices up to the sizes where symmetric kernels are reported to win.
NS_SHAPES = ("24x256x256,12x256x1024,48x512x512,24x512x2048,48x768x768,24x768x3072,48x1024x1024,24x1024x4096,"
             "8x2048x2048,4x2048x8192,2x4096x4096,1x4096x16384,1x8192x8192")


def _compiled_at_xs(saved: str) -> str:
    return "XS" if "XS" in str(saved).split(",") else "none"


def _xs_and_l(saved: str) -> str:
    """Of the saved sizes, XS and L (the architectures chapter reads MLA's head widths at L),
    else the first: never a size the saved run did not measure."""
    sizes = str(saved).split(",")
    return ",".join(s for s in sizes if s in ("XS", "L")) or sizes[0]


def _first_size(saved: str) -> str:
    return str(saved).split(",")[0]


def _ends_up_to_768_rows(saved: str) -> str:
    """The first and the last of the saved Newton-Schulz shapes with at most 768 rows: a small
    one and one the chapter's table of large shapes reads."""
    small = [shape for shape in saved.split(",") if parse_shapes(shape)[0][1] <= 768]
    return ",".join(dict.fromkeys([small[0], small[-1]])) if small else saved


#: The options a benchmark's rerun changes under the ``cpu`` preset (a CPU, or
#: ``MUONLIB_PRESET=cpu`` on a GPU), keeping every arm and every size a chapter reads, at the
#: fewest repeats and the smallest batches: models compiled at XS only (the compile path
#: exercised, not one compile per size), Newton-Schulz at two of its shapes, the decode
#: benchmark at the tiny model (its rows are read by what they hold, not by size). Counts are
#: upper bounds; a function maps the saved value to the smoke one. A check that a chapter's
#: rerun runs, in minutes, not a measurement to read.
SMOKE_OPTIONS = {"decode": dict(sizes="tiny", batches="1,16", long_context=128),
                 "models": dict(batch=2, iters=2, compile_sizes=_compiled_at_xs), "optim": dict(iters=2),
                 "profile": dict(iters=2), "ns": dict(iters=2, ns_shapes=_ends_up_to_768_rows),
                 "attention": dict(sizes=_xs_and_l, batch=2, iters=2), "kernels": dict(sizes=_first_size, batch=2)}


def smoke_options(config: dict) -> dict:
    """A benchmark's saved options with :data:`SMOKE_OPTIONS` applied."""
    def smoke(key, value):
        if callable(value):
            return value(config.get(key))
        return min(value, config.get(key, value)) if isinstance(value, int) else value

    return config | {key: smoke(key, value) for key, value in SMOKE_OPTIONS.get(config["what"], {}).items()}


def newly_failed(fresh: list | dict, saved: list | dict) -> list[dict]:
    """The rows of a benchmark's ``fresh`` results that record an error where the ``saved``
    results hold a measurement of the same arm (every field of the failed row equal but the
    error and the ``job`` that ran it): what a remeasurement lost, as opposed to an arm that
    fails everywhere."""
    def rows(results):
        return results if isinstance(results, list) else [row for part in results.values() for row in part]

    measured = [row for row in rows(saved) if "error" not in row]
    return [row for row in rows(fresh) if "error" in row
            and any(all(m.get(key) == value for key, value in row.items() if key not in ("error", "job")) for m in measured)]


def remeasure(stem: str) -> Path:
    """Measure ``data/bench/<stem>.json`` again on this machine, with the options its provenance
    recorded (shrunk by :func:`smoke_options` under the ``cpu`` preset), and replace it once the
    new measurement is complete: a failure, or an arm the saved file measured that fails here
    (:func:`newly_failed`; a ``MemoryError`` where the GPU ran out of memory), leaves the saved
    file as it was. How a chapter reruns the benchmarks it reads."""
    import tempfile

    from .hardware import detect_hardware

    saved = data_root() / "bench" / f"{stem}.json"
    config = json.loads(saved.read_text())["provenance"]["config"]
    if detect_hardware().preset == "cpu":
        config = smoke_options(config)
    with tempfile.TemporaryDirectory(dir=saved.parent) as fresh:
        argv = [config["what"], "--out", fresh, "--name", stem]
        for action in command_line()._get_optional_actions():
            if action.dest in config and action.dest not in ("help", "out", "name", "force", "resume") and config[action.dest] is not None:
                argv += [action.option_strings[0], str(config[action.dest])]
        try:
            main(argv)
        except MemoryError as error:
            raise MemoryError(f"{saved} kept as it was: {error}") from error
        measured = Path(fresh) / saved.name
        if lost := newly_failed(json.loads(measured.read_text())["results"], json.loads(saved.read_text())["results"]):
            kind = MemoryError if any(row["error"].startswith("OutOfMemoryError") for row in lost) else RuntimeError
            raise kind(f"{saved} kept as it was: {len(lost)} of the arms it measured failed on this machine, the first "
                       f"({', '.join(f'{k} {v}' for k, v in lost[0].items() if k not in ('error', 'job'))}) with {lost[0]['error']}")
        measured.replace(saved)
    return saved


#: the options that list what a benchmark measures
LISTED_OPTIONS = ("parts", "sizes", "variants", "compile_sizes", "optimizers", "ns_shapes", "gpu_counts", "batches")


def check_covers(path: Path, config: dict) -> None:
    """Refuse to replace a saved benchmark by a run that measures less of it: ``--sizes L``
    over a file holding XS to XL would drop the rows the book reads."""
    try:
        saved = json.loads(path.read_text())["provenance"]["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no file, or not one of ours: nothing measured to lose
    dropped = {key: sorted(set(str(saved[key]).split(",")) - set(str(config[key]).split(",")))
               for key in LISTED_OPTIONS if saved.get(key) is not None and config.get(key) is not None}
    if dropped := {key: values for key, values in dropped.items() if values}:
        missing = "; ".join(f"--{key.replace('_', '-')} {','.join(values)}" for key, values in dropped.items())
        raise FileExistsError(f"{path} holds what this run would not measure ({missing}): write a partial run "
                              f"elsewhere (--out), or replace the file deliberately (--force)")


def command_line() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m muonlib.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["models", "optim", "ns", "profile", "ddp", "ddp-worker", "decode", "latent", "attention", "kernels"])
    parser.add_argument("--out", default=None, help="folder of the results (default: the data folder's bench/, where the book reads them)")
    parser.add_argument("--name", default=None, help="output file stem (default: the benchmark's name)")
    parser.add_argument("--parts", default="fwd_bwd,kv,moe,train", help="which model benchmarks to run")
    parser.add_argument("--sizes", default="XS,S,M,L,XL")
    parser.add_argument("--variants", default="mha,mla,mla-norope,moe-mla")
    parser.add_argument("--compile-sizes", default="XS,L", help="sizes whose fwd+bwd is also measured compiled, and whose training step is compiled (on a GPU)")
    parser.add_argument("--compile-mode", choices=COMPILE_MODES, default="default",
                        help="`models` and `kernels`: torch.compile's mode for what they compile (reduce-overhead: CUDA graphs)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--optimizers", default="adamw,muon", help="train-step optimizers")
    parser.add_argument("--ns-shapes", default=NS_SHAPES, help="BATCHxROWSxCOLUMNS list for `ns`")
    fresh_or_resumed = parser.add_mutually_exclusive_group()
    fresh_or_resumed.add_argument("--force", action="store_true", help="replace results measured on another device")
    parser.add_argument("--gpu-counts", default="1,2,4", help="`ddp`: the numbers of GPUs to launch")
    parser.add_argument("--device", choices=["auto", "cpu"], default="auto",
                        help="`ddp`: cpu launches CPU processes (gloo) instead of one per GPU")
    parser.add_argument("--batches", default="1,16,64,256", help="`decode` and `latent`: batch sizes")
    parser.add_argument("--long-context", type=int, default=2048, help="`decode`: the longer context MHA and MLA also run at; `latent`: the second cache length")
    fresh_or_resumed.add_argument("--resume", action="store_true",
                        help="`decode`: keep the saved file's cache lengths that are complete, measure the others (a job of 10 minutes or less measures one length)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = command_line().parse_args(argv)
    if args.what == "ddp-worker":  # one torchrun process of `ddp`: rank 0 writes its row to --out
        row = bench_data_parallel_step(args.sizes, args.optimizers, args.batch, args.iters, args.device)
        if row is not None:
            Path(args.out).write_text(json.dumps(row))
        return
    sizes, variants = args.sizes.split(","), args.variants.split(",")
    out = Path(args.out) if args.out is not None else data_root() / "bench"
    config = {key: value for key, value in vars(args).items() if key != "out"}  # the file's place says where it went; a path of the measuring machine would not
    stems = {"optim": "optimizer_step", "profile": "optimizer_profile", "ns": "newton_schulz", "models": "models",
             "ddp": "data_parallel", "decode": "decode", "latent": "latent_attention",
             "attention": "attention_routes", "kernels": "model_kernels"}
    target = out / f"{args.name or stems[args.what]}.json"
    if args.force:
        target.unlink(missing_ok=True)
    check_replaceable(target)  # before minutes of measuring, not after
    check_covers(target, config)
    per_model = {  # benchmark, output stem, one printed line per result row
        "optim": (lambda size, variant: bench_optimizer_step(size, variant, args.iters), "optimizer_step",
                  lambda r: f"{r['size']:>4} {r['variant']:<8} {r['optimizer']:<20} {r['step_ms']:8.2f} ms  "
                            f"x{r['speedup_vs_torch_muon']:.1f} vs torch.optim.Muon"),
        "profile": (lambda size, variant: profile_optimizer_step(size, variant, args.iters), "optimizer_profile",
                    lambda r: f"{r['size']:>4} {r['variant']:<8} {r['part']:<30} {r['ms']:8.2f} ms"),
        "kernels": (lambda size, variant: profile_forward_backward(size, variant, args.batch, mode=args.compile_mode), "model_kernels",
                    lambda r: f"{r['size']:>4} {r['variant']:<10} {r['part']:<36} {r['ms']:8.3f} ms  {r.get('kernel', '')[:70]}"),
    }
    if args.what == "attention":  # per size, not per variant: MLA's routes against MHA's attention
        rows = []
        for size in sizes:
            new_rows = bench_attention_routes(size, args.batch, args.iters)
            rows += new_rows
            write_json(target, rows, config)
            print("\n".join(f"{r['size']:>4} {r['attention']} {r['route']:<8} {r['backend']:<9} " +
                            (r["error"][:80] if "error" in r else f"{r['fwd_bwd_ms']:8.3f} ms  x{r['vs_mha']:.2f} of MHA  error {r['relative_error']:.1e}")
                            for r in new_rows), flush=True)
        return
    if args.what == "decode":
        rows: list[dict] = []
        on_gpu = torch.cuda.is_available()
        bandwidth, flop_rate = (copy_bandwidth(), matmul_rate()) if on_gpu else (50e9, 1e12)
        config |= {"copy_bandwidth": bandwidth, "bf16_matmul_rate": flop_rate}
        runs = decode_runs(sizes, args.variants.split(","), [int(b) for b in args.batches.split(",")], args.long_context)
        job = {key: provenance(config)[key] for key in ("git_commit", "date")} | {"copy_bandwidth": bandwidth, "bf16_matmul_rate": flop_rate}
        if args.resume:
            rows = finished_contexts(target, runs, config)
            runs = [run for run in runs if run[3] not in {row["context"] for row in rows}]
        anchors = {GRAPH_ANCHOR: bench_graph_anchor, HF_ANCHOR: bench_hf_anchor}
        for size, label, batch, context in runs:
            long = context != preset(size).context
            new_tokens = min(192, context // 2)  # the anchors' 64-token prompt and 192 new tokens where they fit
            prompt = context - new_tokens if long else min(64, context - new_tokens)
            try:
                if label in anchors:
                    row = anchors[label](size, batch, prompt, new_tokens, context if long else None, bandwidth, flop_rate)
                    if row is None:
                        raise RuntimeError("transformers imported when the run was planned, and no longer does")
                else:
                    row = bench_decode(size, label, batch, prompt, new_tokens, context if long else None, bandwidth, flop_rate)
                print(f"decode {size} {label:<10} batch {batch:>3} context {row['context']:>5}: {row['tokens_per_s']:>10,.0f} tok/s "
                      f"({100 * row['roofline_share']:.0f}% of roofline)" + (f", TTFT {row['ttft_ms']:.1f} ms" if "ttft_ms" in row else ""),
                      flush=True)
            except Exception as error:  # noqa: BLE001 - the error text is the result
                row = dict(size=size, model=label, batch=batch, context=context, error=f"{type(error).__name__}: {error}"[:500])
                print(row["error"], flush=True)
            rows.append(row | {"job": job})
            write_json(target, rows, config)
            if on_gpu:
                torch.cuda.empty_cache()
        return
    if args.what == "latent":
        bandwidth = copy_bandwidth() if torch.cuda.is_available() else 50e9
        config |= {"copy_bandwidth": bandwidth}
        rows = []
        for size in sizes:
            for context in sorted({preset(size).context, args.long_context}):
                for batch in (int(b) for b in args.batches.split(",")):
                    new_rows = bench_latent_configs(size, batch, context, bandwidth)
                    rows += new_rows
                    write_json(target, rows, config)
                    baselines = {r["arm"]: r for r in new_rows if r["arm"] in ("torch", "default")}
                    launches = [r for r in new_rows if r["arm"] not in baselines and "ms" in r]
                    if launches:
                        baselines["fastest launch"] = min(launches, key=lambda r: r["ms"])
                    print(f"latent {size} batch {batch:>3} context {context:>5}: " + ", ".join(
                        f"{name} {r['ms'] * 1e3:.1f} us ({r['bandwidth_share']:.0%}, {r['arm']} splits {r['splits']})" if "ms" in r
                        else f"{name} {r['error']}" for name, r in baselines.items()), flush=True)
        return
    if args.what == "ddp":
        rows = data_parallel_scaling(sizes[0], args.optimizers.split(","), [int(n) for n in args.gpu_counts.split(",")],
                                     args.batch, args.iters, args.device)
        write_json(target, rows, config)
        return
    if args.what in per_model:
        run, stem, describe = per_model[args.what]
        rows = []
        for size in sizes:
            for variant in variants:
                try:
                    new_rows = run(size, variant)
                except torch.cuda.OutOfMemoryError as error:
                    fitted = ",".join(sizes[:sizes.index(size)])
                    raise MemoryError(f"{args.what} at {size} {variant} does not fit in what is free of this GPU's memory "
                                      f"({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB in all): free the GPU, "
                                      f"or measure on a larger one" + (f", or the sizes that fit (--sizes {fitted}) into another "
                                      f"folder (--out)" if fitted else "")) from error
                rows += new_rows
                write_json(target, rows, config)
                print("\n".join(map(describe, new_rows)), flush=True)
        return
    if args.what == "ns":
        results = {"newton_schulz": [], "gram_configs": []}
        path = target
        if torch.cuda.is_available():
            for batch, width in GRAM_CONFIG_SHAPES:
                results["gram_configs"] += bench_gram_configs(batch, width, args.iters)
                write_json(path, results, config)
                for r in results["gram_configs"][-len(GRAM_CONFIGS) - 1:]:
                    print(f"gram {batch}x{width}: {r['config']:<70} {r['ms']:.3f} ms", flush=True)
        for batch, p, q in parse_shapes(args.ns_shapes):
            results["newton_schulz"].append(bench_newton_schulz(batch, p, q, args.iters))
            write_json(path, results, config)
            r = results["newton_schulz"][-1]
            print(f"NS {batch}x{p}x{q}: torch {r['torch_ms']:.3f} compiled {r['torch_compiled_ms']:.3f} triton "
                  f"{r['triton_ms']:.3f} ms (x{r['triton_speedup']:.2f}) Gram {r['gram_compiled_ms']:.3f} ms "
                  f"(x{r['gram_speedup']:.2f}) default {r['default_ms']:.3f} ms; errors {r['torch_error']:.1e} / Gram {r['gram_error']:.1e} / bf16 "
                  f"{r['bf16_error']:.1e}; XX^T cuBLAS {r['gram_cublas_ms']:.3f} triton {r['gram_triton_ms']:.3f}", flush=True)
        return
    parts = args.parts.split(",")
    results: dict[str, list] = {"forward_backward": [], "kv_cache": [], "moe_layer": [], "train_step": []}
    peak = matmul_rate() if torch.cuda.is_available() else None
    config["bf16_matmul_rate"] = peak

    def record(section: str, run: Callable[[], dict], describe: Callable[[dict], str], **key) -> None:
        # one failing configuration (e.g. a compile error) is recorded, not fatal
        try:
            row = run()
        except Exception as error:  # noqa: BLE001 - the error text is the result
            row = dict(key, error=f"{type(error).__name__}: {error}"[:500])
        results[section].append(row)
        print(row["error"] if "error" in row else describe(row), flush=True)
        write_json(target, results, config)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    compile_sizes = args.compile_sizes.split(",")
    if "fwd_bwd" in parts:
        for size in sizes:
            for variant in variants:
                for compiled in [False] + ([True] if size in compile_sizes else []):
                    record("forward_backward", lambda: bench_forward_backward(size, variant, args.batch, compiled, args.iters, peak, args.compile_mode),
                           lambda r: f"fwd+bwd {r['size']:>4} {r['variant']:<10} compiled={r['compiled']!s:<5} {r['fwd_bwd_ms']:8.1f} ms "
                                     f"{r['tokens_per_s']:>10,.0f} tok/s peak {r['peak_memory_gb']}"
                                     + (f" MFU {r['mfu']:.1%}" if r["mfu"] is not None else ""),
                           size=size, variant=variant, compiled=compiled, compile_mode=args.compile_mode if compiled else None)
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
            record("moe_layer", lambda: bench_moe_layer(kv_size, tokens=16384 if kv_size != "tiny" else 256, compile=compiled, mode=args.compile_mode),
                   lambda r: f"moe layer {r['size']} compiled={r['compiled']}: forward x{r['forward_ratio']:.2f}, "
                             f"fwd+bwd x{r['fwd_bwd_ratio']:.2f} of dense",
                   size=kv_size, compiled=compiled)
    if "train" in parts:
        for size in sizes:
            for variant in variants:
                for optimizer in args.optimizers.split(","):
                    compile = torch.cuda.is_available() and size in compile_sizes
                    record("train_step", lambda: bench_train_step(size, variant, optimizer, args.batch, compile, args.iters, peak, args.compile_mode),
                           lambda r: f"train step {r['size']} {r['variant']} {r['optimizer']}: {r['step_ms']:.1f} ms, {r['tokens_per_s']:,.0f} tok/s"
                                     + (f", MFU {r['mfu']:.1%}" if r["mfu"] is not None else ""),
                           size=size, variant=variant, optimizer=optimizer)


if __name__ == "__main__":
    main()
