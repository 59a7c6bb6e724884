"""Which compute preset fits the machine a notebook runs on."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

PRESETS = ("cpu", "t4", "a100", "h100", "h200")
#: the presets of Hopper GPUs: the same plans, told apart in result names (one GPU kind per comparison)
HOPPER = ("h100", "h200")


@dataclass(frozen=True)
class Hardware:
    preset: str  # one of PRESETS
    device: str  # "cpu" or "cuda"
    name: str  # what the machine calls itself
    bf16: bool  # fast bfloat16 matmuls (Ampere and newer)

    def __str__(self) -> str:
        return f"{self.name} -> preset {self.preset!r} (device {self.device}, bf16 {'yes' if self.bf16 else 'no'})"


#: the environment variable that names a preset to use instead of the detected one, the device
#: staying the detected one; with ``cpu`` a chapter's rerun on a GPU trains the CPU's tiny plans
#: there, a few steps each
PRESET_VARIABLE = "MUONLIB_PRESET"


def detect_hardware() -> Hardware:
    """The preset for the first visible GPU, or ``cpu``; :data:`PRESET_VARIABLE` overrides it.

    An H200 maps to ``h200``, other Hopper and newer GPUs to ``h100``, Ampere-class GPUs
    (compute capability 8.x) to ``a100``, anything older (Colab's T4 is 7.5) to ``t4``, which
    has no bf16 tensor cores.
    """
    chosen = os.environ.get(PRESET_VARIABLE) or None
    if chosen is not None and chosen not in PRESETS:
        raise ValueError(f"{PRESET_VARIABLE}={chosen!r} is no preset: choose one of {list(PRESETS)}, or unset it to use the detected one")
    if not torch.cuda.is_available():
        return Hardware(chosen or "cpu", "cpu", "CPU", bf16=False)
    name = torch.cuda.get_device_name(0)
    major, _ = torch.cuda.get_device_capability(0)
    preset = ("h200" if "H200" in name else "h100") if major >= 9 else "a100" if major == 8 else "t4"
    return Hardware(chosen or preset, "cuda", name, bf16=major >= 8)


#: HBM bandwidth in bytes/s from the vendors' datasheets, by a fragment of the name
#: ``torch.cuda.get_device_name`` gives; the first that matches counts, so the longer names of a
#: family's variants come before its plain name
DATASHEET_BANDWIDTH = {"GH200": 4.0e12, "H200": 4.8e12, "H100 NVL": 3.9e12, "H100 PCIe": 2.0e12, "H100": 3.35e12,
                       "A100-SXM4-80GB": 2.039e12, "A100 80GB PCIe": 1.935e12, "A100": 1.555e12,
                       "L40S": 864e9, "L40": 864e9, "L4": 300e9, "T4": 320e9}


def datasheet_bandwidth(gpu: str) -> float | None:
    """The datasheet HBM bandwidth (bytes/s) of the GPU named ``gpu``, or ``None`` for one not in
    :data:`DATASHEET_BANDWIDTH`: for floors that must not depend on a measurement, the time no
    kernel can beat when it moves a given number of bytes."""
    return next((bandwidth for fragment, bandwidth in DATASHEET_BANDWIDTH.items() if fragment in gpu), None)
