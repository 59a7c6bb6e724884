"""The benchmarks run on a CPU (tiny sizes) and write results with provenance."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from muonlib import bench


def test_optimizer_benchmark_writes_provenance(tmp_path):
    bench.main(["optim", "--out", str(tmp_path), "--sizes", "tiny", "--variants", "mha,moe-mla"])
    data = json.loads((tmp_path / "optimizer_step.json").read_text())
    assert {"git_commit", "gpu", "torch", "date", "config"} <= set(data["provenance"])
    rows = data["results"]
    import torch

    # on a GPU the fused step is also timed against its plain torch reference
    expected = {"muonlib.Muon", "torch.optim.Muon", "AdamW"}
    if torch.cuda.is_available():
        expected = {"muonlib.Muon", "muonlib.Muon(reference)", "torch.optim.Muon", "AdamW(fused)"}
    assert {r["optimizer"] for r in rows} == expected
    # torch.optim.Muon gets each expert as its own matrix: both optimizers see the same matrices
    moe = [r for r in rows if r["variant"] == "moe-mla"]
    experts = sum(s[0] for s in bench.hidden_matrix_shapes("tiny", "moe-mla") if len(s) == 3)
    assert len(moe) == len(expected) and moe[0]["n_matrices"] > experts


def test_each_optimizer_is_timed_with_only_its_own_tensors_alive(monkeypatch):
    """The step's peak memory is one optimizer's: when an optimizer's timing starts, nothing is
    left of those timed before it, only its own parameters and gradients (and any state it
    builds at once)."""
    import gc
    import math

    def live_bytes():
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                    for t in gc.get_objects() if issubclass(type(t), torch.Tensor) and t.device.type != "meta"}
        return sum(storages.values())

    baseline, at_start, after_step = live_bytes(), [], []

    def one_step(step, warmup, iters):
        at_start.append(live_bytes() - baseline)
        step()  # builds the optimizer's state
        after_step.append(live_bytes() - baseline)
        return 1.0

    monkeypatch.setattr(bench, "median_ms", one_step)
    rows = bench.bench_optimizer_step("tiny", "moe-mla")
    weights = 4 * sum(math.prod(s) for s in bench.hidden_matrix_shapes("tiny", "moe-mla"))  # float32
    assert len(at_start) == len(rows) and min(after_step) >= 3 * weights  # the count sees parameters, gradients, momentum
    assert max(at_start) <= 3.1 * weights  # the earlier optimizers' parameters, gradients and state are gone


def test_a_size_that_does_not_fit_the_gpu_says_which_and_what_to_do(tmp_path, monkeypatch):
    def step(size, variant, iters):
        if size == "M":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.05 GiB.")
        return [dict(size=size, variant=variant, optimizer="torch.optim.Muon", step_ms=1.0, speedup_vs_torch_muon=1.0)]

    device_properties = torch.cuda.get_device_properties

    class Properties:  # an 80 GiB GPU: this one's properties (a GPU's provenance reads its name) but its memory
        total_memory = 80 * 2**30

        def __getattr__(self, name):
            return getattr(device_properties(0), name)

    monkeypatch.setattr(bench, "bench_optimizer_step", step)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: Properties())
    with pytest.raises(MemoryError, match=r"optim at M mha does not fit .* \(80 GiB in all\).* \(--sizes XS,S\)"):
        bench.main(["optim", "--out", str(tmp_path), "--sizes", "XS,S,M,L", "--variants", "mha"])
    # a chapter's rerun on a smaller GPU than the saved file's keeps that file, and says so
    monkeypatch.setenv("MUONLIB_DATA", str(tmp_path))
    bench.main(["optim", "--sizes", "XS,S", "--variants", "mha", "--name", "optim_small"])
    saved = (tmp_path / "bench" / "optim_small.json").read_text()
    monkeypatch.setattr(bench, "bench_optimizer_step", lambda size, variant, iters: step("M", variant, iters))
    with pytest.raises(MemoryError, match=r"optim_small.json kept as it was: optim at XS mha does not fit"):
        bench.remeasure("optim_small")
    assert (tmp_path / "bench" / "optim_small.json").read_text() == saved


def test_results_go_where_the_book_reads_them_from_any_working_folder(tmp_path, monkeypatch):
    # a notebook's rerun runs in its own folder: a path relative to it would miss the data folder
    monkeypatch.setenv("MUONLIB_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    bench.main(["ns", "--ns-shapes", "1x8x8", "--iters", "1"])
    assert (tmp_path / "data" / "bench" / "newton_schulz.json").exists() and not (tmp_path / "bench").exists()


def test_newton_schulz_benchmark_compares_the_paths(tmp_path):
    bench.main(["ns", "--out", str(tmp_path), "--ns-shapes", "2x16x40", "--iters", "1"])
    (row,) = json.loads((tmp_path / "newton_schulz.json").read_text())["results"]["newton_schulz"]
    assert {"torch_ms", "torch_compiled_ms", "triton_ms", "gram_compiled_ms", "default_ms", "gram_triton_ms"} <= set(row)
    # every path is the same float16 computation up to rounding (~2e-3), bfloat16 rounds ~8x more coarsely
    assert max(row["torch_error"], row["triton_error"], row["gram_error"]) < 1e-2 < row["bf16_error"] < 5e-2
    assert row["ns_flops"] == 2 * 5 * (4 * 16 * 16 * 40 + 2 * 16**3)
    assert row["gram_ns_flops"] < row["ns_flops"]


def test_bad_shape_list_says_what_is_wanted():
    import pytest

    with pytest.raises(SystemExit, match="BATCHxROWSxCOLUMNS"):
        bench.parse_shapes("768x768")


def test_model_benchmarks_run_on_cpu(tmp_path):
    bench.main(["models", "--out", str(tmp_path), "--sizes", "tiny", "--variants", "mha,moe-mla",
                "--compile-sizes", "none", "--parts", "fwd_bwd,kv,train", "--batch", "2", "--iters", "1"])
    results = json.loads((tmp_path / "models.json").read_text())["results"]
    assert len(results["forward_backward"]) == 2 and all("error" not in r for r in results["forward_backward"])
    # model FLOPs utilisation beside tokens/s: against the GPU's measured matmul rate, none on a CPU
    for r in results["forward_backward"] + results["train_step"]:
        assert r["flops_per_token"] > 0 and (r["mfu"] is None) == (not torch.cuda.is_available())
    step = {(r["variant"], r["optimizer"]): r for r in results["train_step"]}
    assert set(step) == {(v, o) for v in ("mha", "moe-mla") for o in ("adamw", "muon")}  # a training step per architecture
    for variant in ("mha", "moe-mla"):  # Newton-Schulz counted
        assert step[variant, "muon"]["flops_per_token"] > step[variant, "adamw"]["flops_per_token"]
    for r in results["kv_cache"]:
        assert r["kv_bytes_measured"] == r["kv_bytes_analytic"]


def test_the_training_step_is_compiled_at_the_compile_sizes_only(tmp_path, monkeypatch):
    compiles = []
    monkeypatch.setattr(bench, "bench_train_step", lambda size, variant, optimizer, batch, compile, iters, peak, mode:
                        compiles.append((size, compile)) or dict(size=size, variant=variant, optimizer=optimizer, step_ms=1.0, tokens_per_s=1.0, mfu=None))
    bench.main(["models", "--out", str(tmp_path), "--sizes", "tiny,XS", "--variants", "mha", "--compile-sizes", "XS", "--parts", "train",
                "--optimizers", "muon"])
    assert compiles == [("tiny", False), ("XS", torch.cuda.is_available())]  # every size trains; XS compiled on a GPU


def test_a_benchmark_compiles_each_model_anew_past_dynamos_recompile_limit(monkeypatch):
    # the 9th model one process compiled used to run eager under a row saying "compiled"
    eager_backend = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module, mode=None: eager_backend(module, backend="eager"))
    idx = torch.randint(0, 64, (2, 16))
    with torch._dynamo.config.patch(recompile_limit=1):
        for variant in ("mha", "mla"):  # a second configuration: past a limit of one graph
            model = bench.compiled(bench.GPT(bench.preset("tiny", variant)))
            torch._dynamo.utils.counters.clear()
            model(idx, idx)
            assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1, f"{variant} ran eager"
    torch._dynamo.reset()


def test_smoke_options_shrink_a_saved_run_without_widening_it():
    models = {"what": "models", "batch": 32, "iters": 10, "compile_sizes": "XS,L,XL", "sizes": "XS,L,XL"}
    assert bench.smoke_options(models) == models | {"batch": 2, "iters": 2, "compile_sizes": "XS"}
    eager = bench.smoke_options(models | {"compile_sizes": "S,M", "iters": 1})
    assert eager["compile_sizes"] == "none" and eager["iters"] == 1  # nothing compiled the saved run left eager; counts never raised
    ns = bench.smoke_options({"what": "ns", "iters": 10, "ns_shapes": bench.NS_SHAPES})
    assert ns["ns_shapes"] == "24x256x256,24x768x3072" and ns["iters"] == 2  # the chapter's large-shape table keeps a row
    assert bench.smoke_options({"what": "ns", "iters": 1, "ns_shapes": "1x8x8,2x8x16"})["ns_shapes"] == "1x8x8,2x8x16"
    # the architectures chapter reads MLA's head widths at L from the attention routes; the profile's size is glued
    attention = {"what": "attention", "batch": 16, "iters": 10}
    assert bench.smoke_options(attention | {"sizes": "XS,S,M,L,XL"})["sizes"] == "XS,L"
    assert bench.smoke_options(attention | {"sizes": "S"})["sizes"] == "S"  # never a size the saved run did not measure
    assert bench.smoke_options({"what": "kernels", "sizes": "L,XL", "batch": 16}) == {"what": "kernels", "sizes": "L", "batch": 2}


def test_profile_sorts_kernels_by_part_and_needs_a_gpu():
    import pytest
    import torch

    assert bench.kernel_kind("nvjet_sm90_hsh_192x192_64x4_1x2_h_bz_coopB_TNN") == "matmuls (cuBLAS)"
    assert bench.kernel_kind("sm90_xmma_gemm_f16f16_f16f32") == "matmuls (cuBLAS)"
    assert bench.kernel_kind("_gram_kernel") == "Triton symmetric products"
    assert bench.kernel_kind("_momentum_kernel") == "Triton memory passes"
    assert bench.kernel_kind("_update_kernel_0d1d2d") == "Triton memory passes"
    assert bench.kernel_kind("void at::native::multi_tensor_apply_kernel<...>") == "other kernels"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA GPU"):
            bench.profile_optimizer_step("tiny")



def test_a_models_kernels_are_sorted_into_the_parts_of_its_step_and_profiling_needs_a_gpu():
    import pytest
    import torch

    kinds = {"pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<96, 128>>": "attention",
             "fmha_cutlassB_bf16_aligned_64x64_k128_sm80": "attention",  # CUTLASS-built, still attention
             "cudnn_generated_fort_native_sdpa_sm90_flash_fprop": "attention",
             "void cutlass::device_kernel<cutlass::gemm::kernel::GemmUniversal<cutlass::gemm::GroupProblemShape<...>>>": "grouped matmuls",
             "nvjet_sm90_tst_256x128_64x4_2x1_v_bz_coopA_TNT": "matmuls",
             "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n": "matmuls",
             "void at::native::(anonymous namespace)::radixSortKVInPlace<...>": "sort, gather and scatter",
             "void at::native::indexFuncLargeIndex<c10::BFloat16, long>": "sort, gather and scatter",
             "triton_per_fused__to_copy_add_mean_mul_pow_rsqrt_1": "compiled elementwise and reductions",
             "triton_poi_fused_index_put_new_zeros_3": "compiled elementwise and reductions",  # an index op, compiled
             "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>": "other kernels"}
    assert {name: bench.model_kernel_kind(name) for name in kinds} == kinds
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA GPU"):
            bench.profile_forward_backward("tiny", "mla", batch=1)

def test_a_benchmark_never_silently_replaces_results_of_another_device(tmp_path):
    import pytest

    from muonlib.provenance import device_name

    path = tmp_path / "optimizer_step.json"
    other = "NVIDIA H100 80GB HBM3" if device_name() == "CPU" else "CPU"
    committed = json.dumps({"provenance": {"gpu": None if other == "CPU" else other}, "results": ["measured there"]})
    path.write_text(committed)
    args = ["optim", "--out", str(tmp_path), "--sizes", "tiny", "--variants", "mha"]
    with pytest.raises(FileExistsError, match=f"measured on {other}.*--force"):
        bench.main(args)
    assert path.read_text() == committed  # refused before measuring anything
    bench.main(args + ["--force"])
    assert json.loads(path.read_text())["results"] != ["measured there"]


def test_a_partial_run_never_replaces_a_benchmark_that_measured_more(tmp_path):
    path = tmp_path / "optimizer_step.json"
    args = ["optim", "--out", str(tmp_path), "--variants", "mha", "--iters", "1"]
    bench.main(args + ["--sizes", "tiny"])
    bench.main(args + ["--sizes", "tiny"])  # the same options: replaced, as a rerun should
    bench.main(args + ["--sizes", "tiny", "--variants", "mha,mla"])  # more: replaced
    with pytest.raises(FileExistsError, match="--variants mla.*--out.*--force"):
        bench.main(args + ["--sizes", "tiny"])  # fewer: refused before measuring
    assert json.loads(path.read_text())["provenance"]["config"]["variants"] == "mha,mla"
    bench.main(args + ["--sizes", "tiny", "--force"])
    assert json.loads(path.read_text())["provenance"]["config"]["variants"] == "mha"


def test_data_parallel_scaling_launches_torchrun_per_gpu_count(tmp_path):
    bench.main(["ddp", "--out", str(tmp_path), "--sizes", "tiny", "--optimizers", "adamw,muon", "--gpu-counts", "1,2",
                "--batch", "2", "--iters", "2", "--device", "cpu"])  # CPU processes: two on any machine
    rows = json.loads((tmp_path / "data_parallel.json").read_text())["results"]
    assert [(r["optimizer"], r["gpus"]) for r in rows] == [("adamw", 1), ("muon", 1), ("adamw", 2), ("muon", 2)]
    assert all(r["tokens_per_s"] > 0 and r["share_of_adamw"] > 0 for r in rows)
    assert [r["speedup_vs_1_gpu"] for r in rows[:2]] == [1.0, 1.0]


def test_data_parallel_scaling_refuses_more_gpus_than_the_machine_has(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="up to 2 GPUs but this machine has 1.*--device cpu"):
        bench.main(["ddp", "--out", str(tmp_path), "--sizes", "tiny", "--optimizers", "adamw", "--gpu-counts", "1,2"])


def test_decode_benchmark_measures_cache_bytes_and_a_roofline(tmp_path):
    bench.main(["decode", "--out", str(tmp_path), "--sizes", "tiny", "--variants", "mha,mla,mla-full,mla-torch", "--batches", "1,16",
                "--long-context", "128"])
    rows = json.loads((tmp_path / "decode.json").read_text())["results"]
    assert not [r for r in rows if "error" in r]
    anchors = (bench.GRAPH_ANCHOR,) + ((bench.HF_ANCHOR,) if importlib.util.find_spec("transformers") else ())
    assert {(r["model"], r["batch"], r["context"]) for r in rows if r.get("anchor")} == (
        {(a, b, 64) for a in anchors for b in (1, 16)} | {(a, 16, 128) for a in anchors})
    rows = [r for r in rows if not r.get("anchor")]
    assert {(r["model"], r["batch"], r["context"]) for r in rows} == (
        {(m, b, 64) for m in ("mha", "mla", "mla-full", "mla-torch") for b in (1, 16)} | {(m, 16, 128) for m in ("mha", "mla", "mla-torch")})
    assert not [r for r in rows if r["model"] == "mla-torch" and r["latent_kernel"]]  # the torch arm never takes the kernel
    for r in rows:
        # on a CPU the cache's tensors are counted; on a GPU the allocator's growth, each
        # tensor rounded up to whole 512-byte blocks
        rounding = 512 * r["kv_tensors"] if torch.cuda.is_available() else 0
        assert r["kv_bytes_analytic"] <= r["kv_bytes_measured"] <= r["kv_bytes_analytic"] + rounding
        assert 0 < r["roofline_share"] and r["ceiling_tokens_per_s"] > 0 and r["weight_bytes"] > 0
    per_token = {r["model"]: r["kv_bytes_per_token_layer"] for r in rows}
    assert per_token["mla"] < per_token["mla-full"] < per_token["mha"]


def test_a_resumed_decode_benchmark_measures_each_unfinished_cache_length_whole(tmp_path, monkeypatch):
    options = ["decode", "--out", str(tmp_path), "--sizes", "tiny", "--variants", "mha", "--batches", "1,16", "--long-context", "128"]
    bench.main(options)
    path = tmp_path / "decode.json"
    saved = json.loads(path.read_text())
    first_job = saved["results"][0]["job"]
    assert {tuple(r["job"].values()) for r in saved["results"]} == {tuple(first_job.values())}  # one job measured every row
    # a job that ended during the long cache: its first row there is all it left
    cut = next(i for i, r in enumerate(saved["results"]) if r["context"] == 128) + 1
    path.write_text(json.dumps(saved | {"results": saved["results"][:cut]}))
    measured = []
    real = bench.bench_graph_anchor
    monkeypatch.setattr(bench, "bench_graph_anchor", lambda *args: measured.append(args[1:3]) or real(*args))
    monkeypatch.setattr(bench, "provenance", lambda config: {"git_commit": "second", "date": "later"})  # a job of its own
    bench.main(options + ["--resume"])
    rows = json.loads(path.read_text())["results"]
    assert {(r["model"], r["batch"], r["context"]) for r in rows} == {(r["model"], r["batch"], r["context"]) for r in saved["results"]}
    assert [r for r in rows if r["context"] == 64] == [r for r in saved["results"] if r["context"] == 64]  # the finished length kept
    assert all(r["job"] != first_job for r in rows if r["context"] == 128)  # the unfinished one measured again, whole
    assert measured == [(16, 128 - 64)]  # the graph anchor timed again at the long cache only (batch, prompt)
    bench.main(options + ["--resume"])  # nothing left: the file stays as it was
    assert json.loads(path.read_text())["results"] == rows
    # a file from before rows named their job: its rows get the file's, and are kept
    path.write_text(json.dumps(saved | {"results": [{k: v for k, v in r.items() if k != "job"} for r in saved["results"][:cut]]}))
    bench.main(options + ["--resume"])
    kept = [r for r in json.loads(path.read_text())["results"] if r["context"] == 64]
    assert kept and [r["job"]["date"] for r in kept] == [saved["provenance"]["date"]] * len(kept)
    with pytest.raises(ValueError, match="other options"):  # rows measured otherwise are not resumed
        bench.main(options[:-2] + ["--long-context", "256", "--resume"])
    with pytest.raises(SystemExit):  # --force deletes what --resume would keep
        bench.main(options + ["--resume", "--force"])
    with pytest.raises(ValueError, match="own context"):  # a long cache equal to the short one would be measured twice
        bench.main(options[:-2] + ["--long-context", "64"])


def test_a_compiled_decode_arm_compiles_its_step_or_says_it_ran_eager(monkeypatch):
    args = ("tiny", "mha-compiled", 2, 8, 8, None, 50e9, 1e12)
    # Dynamo starts afresh for each arm: a second model compiles even where one recompilation is too many
    with torch._dynamo.config.patch(recompile_limit=1):
        assert bench.bench_decode(*args)["compiled"] and bench.bench_decode("tiny", "mla-compiled", *args[2:])["compiled"]
    # an arm's batches share its compiled step: batch 1 and the first other batch compile, the rest reuse
    rows = [bench.bench_decode("tiny", "mha-compiled", batch, *args[3:]) for batch in (1, 2, 4)]
    assert [r["graphs_compiled"] > 0 for r in rows] == [True, True, False]
    monkeypatch.setattr(torch, "compile", lambda fn, **options: fn)  # as past Dynamo's recompile limit: the step runs eager
    with pytest.raises(RuntimeError, match="ran eager"):  # a fresh arm (the last one was MHA's)
        bench.bench_decode("tiny", "mla-compiled", *args[2:])


def test_latent_attention_sweep_times_torch_and_the_kernel_against_the_bytes_they_read(tmp_path):
    bench.main(["latent", "--out", str(tmp_path), "--sizes", "tiny", "--batches", "2", "--long-context", "96"])
    rows = json.loads((tmp_path / "latent_attention.json").read_text())["results"]
    assert not [r for r in rows if "error" in r]
    configs = len(bench.LATENT_CONFIGS) if torch.cuda.is_available() else 0  # the interpreter knows one configuration
    for context in (64, 96):  # the tiny preset's context, then the longer one
        arms = [r for r in rows if r["context"] == context]
        assert [r["arm"] for r in arms[:2]] == ["torch", "default"] and len(arms) == 2 + 2 * configs
        for r in arms:  # the tiny MLA: 4 heads, rank 32, rotary keys 8 wide; each arm checked against float32
            assert (r["heads"], r["rank"], r["rope"]) == (4, 32, 8) and r["relative_error"] < 2e-2
            assert r["cache_bytes"] == 2 * context * (32 + 8) * (2 if torch.cuda.is_available() else 4)
            assert r["ms"] > 0 and r["bandwidth_share"] > 0
            if not torch.cuda.is_available():  # against the CPU's nominal 50 GB/s
                assert r["bandwidth_share"] == pytest.approx(r["cache_bytes"] / (r["ms"] / 1e3) / 50e9)



def test_padding_the_values_computes_the_same_attention_as_unequal_head_dims():
    q, k = torch.randn(2, 3, 10, 12, dtype=torch.float64), torch.randn(2, 3, 10, 12, dtype=torch.float64)
    v = torch.randn(2, 3, 10, 8, dtype=torch.float64)
    routes = bench.attention_routes(head_dim=8, rope_dim=4)
    unequal, padded = routes["unequal"](q, k, v), routes["padded"](q, k, v)
    assert padded.shape == unequal.shape == (2, 3, 10, 8)
    torch.testing.assert_close(padded, unequal)
    # causal, with the scale of the concatenated head: the last query sees every key, the first one only its own
    torch.testing.assert_close(unequal[:, :, 0], v[:, :, 0])
    weights = torch.softmax(q[:, :, -1:] @ k.mT / 12 ** 0.5, dim=-1)
    torch.testing.assert_close(unequal[:, :, -1:], weights @ v)


def test_attention_routes_benchmark_times_mla_against_mha_and_records_refused_backends(tmp_path):
    bench.main(["attention", "--out", str(tmp_path), "--sizes", "tiny", "--batch", "2", "--iters", "1"])
    saved = json.loads((tmp_path / "attention_routes.json").read_text())
    assert "out" not in saved["provenance"]["config"]  # no path of the measuring machine in a file meant to travel
    rows = saved["results"]
    config = bench.preset("tiny", "mla")
    assert rows[0] | {"fwd_bwd_ms": None, "relative_error": None} == dict(
        size="tiny", batch=2, context=config.context, heads=config.n_head, qk_dim=config.head_dim, v_dim=config.head_dim,
        attention="mha", route="equal", backend="auto", fwd_bwd_ms=None, vs_mha=1.0, relative_error=None)
    assert rows[0]["relative_error"] < 2e-2  # MHA's own distance from float32, beside MLA's
    mla = rows[1:]
    assert [(r["route"], r["backend"]) for r in mla] == [(route, backend) for route in ("unequal", "padded") for backend in bench.ATTENTION_BACKENDS]
    measured = [r for r in mla if "error" not in r]
    assert {(r["route"], r["backend"]) for r in measured} >= {("unequal", "auto"), ("padded", "auto")}  # PyTorch's own choice always runs
    for r in measured:
        assert r["qk_dim"] == config.head_dim + config.rope_head_dim and r["v_dim"] == config.head_dim
        assert r["relative_error"] < 2e-2 and r["vs_mha"] == pytest.approx(r["fwd_bwd_ms"] / rows[0]["fwd_bwd_ms"])
    # FlashAttention-2 takes equal head dims only: the route as the model runs it is refused there
    assert "error" in next(r for r in mla if (r["route"], r["backend"]) == ("unequal", "flash"))

def test_a_saved_benchmark_is_remeasured_with_the_options_it_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("MUONLIB_DATA", str(tmp_path))
    bench.main(["ns", "--ns-shapes", "1x8x8,2x8x16", "--iters", "1", "--name", "ns_small"])
    saved = tmp_path / "bench" / "ns_small.json"
    before = json.loads(saved.read_text())
    saved.write_text(json.dumps({**before, "results": {"newton_schulz": []}}))  # rows only a new measurement restores
    assert bench.remeasure("ns_small") == saved
    after = json.loads(saved.read_text())
    assert [(r["batch"], r["p"], r["q"]) for r in after["results"]["newton_schulz"]] == \
        [(r["batch"], r["p"], r["q"]) for r in before["results"]["newton_schulz"]] == [(1, 8, 8), (2, 8, 16)]
    assert after["provenance"]["config"]["iters"] == 1 and after["provenance"]["date"] >= before["provenance"]["date"]
    monkeypatch.setattr(bench, "bench_newton_schulz", lambda *a: 1 / 0)  # a failed measurement keeps the saved file
    with pytest.raises(ZeroDivisionError):
        bench.remeasure("ns_small")
    assert json.loads(saved.read_text()) == after and list(saved.parent.iterdir()) == [saved]


def test_a_remeasurement_that_loses_an_arm_the_saved_file_measured_keeps_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MUONLIB_DATA", str(tmp_path))
    bench.main(["models", "--parts", "train", "--sizes", "tiny", "--variants", "mha", "--batch", "1", "--iters", "1", "--name", "train_small"])
    saved = tmp_path / "bench" / "train_small.json"
    before = json.loads(saved.read_text())
    assert [r["optimizer"] for r in before["results"]["train_step"] if "error" not in r] == ["adamw", "muon"]
    measure = bench.bench_train_step

    def failing_muon(error):  # Muon's step fails (a T4 at XL runs out of memory), AdamW's still runs
        def bench_train_step(size, variant, optimizer, *args):
            if optimizer == "muon":
                raise error
            return measure(size, variant, optimizer, *args)
        return bench_train_step

    monkeypatch.setattr(bench, "bench_train_step", failing_muon(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.05 GiB")))
    with pytest.raises(MemoryError, match="1 of the arms it measured failed on this machine, the first \\(size tiny, variant mha, optimizer muon\\)"):
        bench.remeasure("train_small")
    assert json.loads(saved.read_text()) == before and list(saved.parent.iterdir()) == [saved]
    monkeypatch.setattr(bench, "bench_train_step", failing_muon(ValueError("a bug")))
    with pytest.raises(RuntimeError, match="ValueError: a bug"):  # not a memory error: nothing a smaller size would fix
        bench.remeasure("train_small")
    assert json.loads(saved.read_text()) == before
    # an arm that failed where the file was measured too is no loss: the remeasurement replaces it
    muon = next(r for r in before["results"]["train_step"] if r["optimizer"] == "muon")
    failed = [r if r is not muon else dict(size="tiny", variant="mha", optimizer="muon", error="ValueError: a bug") for r in before["results"]["train_step"]]
    saved.write_text(json.dumps({**before, "results": {**before["results"], "train_step": failed}}))
    bench.remeasure("train_small")
    after = json.loads(saved.read_text())
    assert after["provenance"]["date"] >= before["provenance"]["date"] and after["results"]["train_step"][1]["error"] == "ValueError: a bug"
    # the decode benchmark's rows carry the job that ran them: another job's failure of the same arm is still a loss
    decoded = dict(size="L", model="mla", batch=1, context=512, tokens_per_s=1e3, job={"git_commit": "a"})
    failed = dict(size="L", model="mla", batch=1, context=512, error="OutOfMemoryError: CUDA out of memory", job={"git_commit": "b"})
    assert bench.newly_failed([failed], [decoded]) == [failed] and bench.newly_failed([failed], [decoded | {"batch": 16}]) == []
    (tmp_path / "bench" / "decode_small.json").write_text(json.dumps({**before, "results": [decoded]}))
    monkeypatch.setattr(bench, "main", lambda argv: (Path(argv[argv.index("--out") + 1]) / "decode_small.json").write_text(json.dumps({**before, "results": [failed]})))
    with pytest.raises(MemoryError, match=r"the first \(size L, model mla, batch 1, context 512\) with OutOfMemoryError"):  # the arm, not its job
        bench.remeasure("decode_small")


def test_the_graph_anchor_decodes_greedily_against_its_own_roofline():
    row = bench.bench_graph_anchor("tiny", batch=2, prompt=8, new_tokens=4, context=None, bandwidth=50e9, flop_rate=1e12)
    assert row["anchor"] and row["tokens_per_s"] > 0 and 0 < row["roofline_share"]
    config = bench.preset("tiny", "mha")
    d, L = config.d_model, config.n_layer
    itemsize = 2 if torch.cuda.is_available() else 4  # bfloat16 on a GPU, float32 on a CPU
    assert row["weight_bytes"] == itemsize * (config.vocab_size * d + L * 12 * d * d)  # qkv, out, a 4d FFN
    assert row["kv_bytes"] == itemsize * 2 * L * 2 * d * (8 + 4 / 2)  # keys and values of the positions filled on average


def test_the_compile_mode_reaches_torch_compile_and_every_compiled_row(tmp_path, monkeypatch):
    import pytest

    modes = []
    monkeypatch.setattr(torch, "compile", lambda module, mode=None: modes.append(mode) or module)
    bench.main(["models", "--out", str(tmp_path), "--sizes", "tiny", "--variants", "mha", "--compile-sizes", "tiny",
                "--parts", "fwd_bwd", "--batch", "2", "--iters", "1", "--compile-mode", "reduce-overhead"])
    rows = json.loads((tmp_path / "models.json").read_text())["results"]["forward_backward"]
    assert modes == ["reduce-overhead"]  # the eager row compiles nothing
    assert [(r["compiled"], r["compile_mode"]) for r in rows] == [(False, None), (True, "reduce-overhead")]
    bench.compiled(torch.nn.Linear(2, 2))
    assert modes[-1] is None  # torch.compile's own default
    with pytest.raises(ValueError, match="reduce-overhead"):
        bench.compiled(torch.nn.Linear(2, 2), "fast")
