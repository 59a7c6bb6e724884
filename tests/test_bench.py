"""The benchmarks run on a CPU (tiny sizes) and write results with provenance."""

import json

from muonlib import bench


def test_optimizer_benchmark_writes_provenance(tmp_path):
    bench.main(["optim", "--out", str(tmp_path), "--sizes", "tiny"])
    data = json.loads((tmp_path / "optimizer_step.json").read_text())
    assert {"git_commit", "gpu", "torch", "date", "config"} <= set(data["provenance"])
    assert {r["optimizer"] for r in data["results"]} == {"muonlib.Muon", "torch.optim.Muon", "AdamW"}


def test_model_benchmarks_run_on_cpu(tmp_path):
    bench.main(["models", "--out", str(tmp_path), "--sizes", "tiny", "--variants", "mha,moe-mla",
                "--compile-sizes", "none", "--parts", "fwd_bwd,kv", "--batch", "2", "--iters", "1"])
    results = json.loads((tmp_path / "models.json").read_text())["results"]
    assert len(results["forward_backward"]) == 2 and all("error" not in r for r in results["forward_backward"])
    for r in results["kv_cache"]:
        assert r["kv_bytes_measured"] == r["kv_bytes_analytic"]
