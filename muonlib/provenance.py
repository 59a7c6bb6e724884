"""What produced a result: code version, machine, software, time. Written into every artifact."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch


def git_commit() -> str:
    """``MUONLIB_COMMIT`` where it is set (a tree copied to a GPU machine may carry a stale
    ``.git``), else the checkout's commit, ``+dirty`` if it has uncommitted changes."""
    if "MUONLIB_COMMIT" in os.environ:
        return os.environ["MUONLIB_COMMIT"]
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance(config: dict[str, Any] | None = None, seed: int | None = None) -> dict[str, Any]:
    return {
        "git_commit": git_commit(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,  # None: a CPU
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "config": config,
        # runs sharing the GPU (set by the experiment runner): their timings are not a lone run's
        "runs_per_gpu": int(os.environ.get("MUONLIB_RUNS_PER_GPU", "1")),
    }


def device_name() -> str:
    """The GPU results are measured on, or ``"CPU"``."""
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"


def check_replaceable(path: str | Path) -> None:
    """Refuse to replace a result file measured on another device (a CPU run would overwrite
    an H100's committed numbers)."""
    path = Path(path)
    if not path.exists():
        return
    try:
        theirs = json.loads(path.read_text())["provenance"].get("gpu") or "CPU"
    except (ValueError, KeyError, TypeError):
        return  # not a result file of ours: nothing measured to protect
    if theirs != device_name():
        raise FileExistsError(f"{path} holds results measured on {theirs}, and this machine is {device_name()}: "
                              f"write elsewhere (--out), or replace them deliberately (--force)")


def write_json(path: str | Path, results: Any, config: dict[str, Any] | None = None, seed: int | None = None) -> Path:
    """Write ``{"provenance": ..., "results": ...}`` atomically (a crash leaves the old file);
    never over results measured on another device (:func:`check_replaceable`)."""
    path = Path(path)
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"provenance": provenance(config, seed), "results": results}, indent=1, default=str))
    tmp.replace(path)
    return path
