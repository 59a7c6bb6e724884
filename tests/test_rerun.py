"""A reader's rerun, on a GPU: every chapter with a rerun switch executed top to bottom with it
on, the way Colab runs it after a restart, at the smallest preset that exercises the path
(``MUONLIB_PRESET=cpu``: the CPU's tiny plans, trained on this GPU, a few steps each; the
benchmarks remeasured with the options their files record, shrunk by ``bench.smoke_options``).
Each runs on a copy of the data folder, so the saved results stay as they are.

Part of ``make test-gpu``. The decode chapter's rerun (the tiny model) takes a minute on a CPU
and runs in CI too. On a CPU the training chapters' tiny plans take a quarter of an hour each,
too long for CI: ``MUONLIB_RERUN_ON_CPU=1`` runs them here too (the other benchmark chapters
compile and time L and XL models: they need a GPU)."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from muonlib.bench import SMOKE_OPTIONS, smoke_options

ROOT = Path(__file__).resolve().parents[1]
SWITCH, ON = "RERUN = False", "RERUN = True"
CHAPTERS = sorted(p for p in (ROOT / "notebooks").rglob("*.ipynb") if SWITCH in p.read_text())
BENCHMARK_CHAPTERS = ("architectures.ipynb", "decode.ipynb", "fast_muon.ipynb")  # they remeasure
QUICK_ON_CPU = ("decode.ipynb",)  # reruns that CI runs on its CPU


def test_every_chapter_that_reads_runs_or_benchmarks_has_one_rerun_switch():
    names = {p.name for p in CHAPTERS}
    assert {"muon_vs_adamw.ipynb", "batch_sizes.ipynb", "scaling.ipynb", "ablations.ipynb", "attention_and_moe.ipynb",
            "protocols.ipynb", *BENCHMARK_CHAPTERS} <= names
    for path in CHAPTERS:
        assert path.read_text().count(SWITCH) == 1, f"{path.name}: one rerun switch, off as committed"


def reader_data(tmp_path: Path) -> Path:
    """A copy of the data folder: saved results and benchmarks copied, the prepared corpora
    linked (read only), the rerun's checkpoints in the copy."""
    data = tmp_path / "data"
    for part in ("results", "bench", "sample"):
        shutil.copytree(ROOT / "data" / part, data / part)
    (data / "cache").mkdir()
    for prepared in ("mix", "sample", "downloads"):
        if (ROOT / "data" / "cache" / prepared).exists():
            (data / "cache" / prepared).symlink_to(ROOT / "data" / "cache" / prepared)
    return data


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_a_readers_rerun_executes_the_chapter_top_to_bottom(path, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient
    from traitlets.config import Config

    if not (torch.cuda.is_available() or path.name in QUICK_ON_CPU):
        if path.name in BENCHMARK_CHAPTERS:
            pytest.skip("these benchmarks compile and time L and XL models: make test-gpu reruns them")
        if not os.environ.get("MUONLIB_RERUN_ON_CPU"):
            pytest.skip("a training chapter's rerun takes 20 minutes or more on a two-core CPU: make test-gpu runs it (or MUONLIB_RERUN_ON_CPU=1)")
    data = reader_data(tmp_path)
    monkeypatch.setenv("MUONLIB_DATA", str(data))
    monkeypatch.setenv("MUONLIB_PRESET", "cpu")
    # the kernel imports this checkout's muonlib, installed or not (a GPU machine's python may lack it)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    notebook = nbformat.read(path, as_version=4)
    (switch,) = [c for c in notebook.cells if c.cell_type == "code" and SWITCH in c.source]
    switch.source = switch.source.replace(SWITCH, ON)
    workdir = tmp_path / "colab"  # where the notebook runs, and keeps what it packs for the reader
    workdir.mkdir()
    # the kernel talks over unix sockets in tmp_path: over TCP, chapters rerun at once can race for one free port
    kernel = Config({"KernelManager": {"transport": "ipc", "ip": str(tmp_path / "kernel")}})
    NotebookClient(notebook, timeout=1800, kernel_name="python3", config=kernel, resources={"metadata": {"path": str(workdir)}}).execute()
    saved = {p.relative_to(data) for p in (data / "results").rglob("*.jsonl.gz")} | {p.relative_to(data) for p in (data / "bench").glob("*.json")}
    before = {p.relative_to(ROOT / "data") for p in (ROOT / "data" / "results").rglob("*.jsonl.gz")} | \
             {p.relative_to(ROOT / "data") for p in (ROOT / "data" / "bench").glob("*.json")}
    if path.name in BENCHMARK_CHAPTERS:  # remeasured in place, at the smoke options: each file the chapter reads is new
        remeasured = [f for f in before if f.parts[0] == "bench" and (data / f).read_bytes() != (ROOT / "data" / f).read_bytes()]
        assert remeasured, "the rerun measured nothing"
        kept = [o.text for cell in notebook.cells for o in cell.get("outputs", []) if "kept as it was" in o.get("text", "")]
        assert not kept, f"on this GPU the rerun kept saved files (a reader's smaller GPU may): {kept}"
        for f in remeasured:
            saved = json.loads((ROOT / "data" / f).read_text())["provenance"]["config"]
            config = json.loads((data / f).read_text())["provenance"]["config"]
            smoke = {key: value for key, value in smoke_options(saved).items() if key in SMOKE_OPTIONS[saved["what"]]}
            assert smoke.items() <= config.items(), f"{f} was not measured at the smoke options"
    else:  # the tiny plans' runs, named by their preset, beside the saved ones; kept in an archive
        assert {f for f in saved - before if f.name.startswith("cpu-")}, "the rerun trained nothing"
        assert list(workdir.glob("*-results.tar")), "the rerun's results were not packed for the reader to keep"
