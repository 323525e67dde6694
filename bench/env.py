"""The machine and software a number was measured on, recorded in every row."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

import torch

from common.provenance import command_line, git_commit

from .device import cuda_present


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    """The CPU model as the kernel reports it (platform.processor() is empty on most Linux systems)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    """The machine a row is measured on, as rows record it: the GPU's name, or the CPU's."""
    return torch.cuda.get_device_name(device) if cuda_present(device) else cpu_name()


def collect_env(device: str) -> dict[str, Any]:
    """Versions and hardware for `device`; GPU fields are None on a CPU run."""
    from .backends import BACKENDS  # each backend names the distributions its rows depend on

    cuda = cuda_present(device)
    return {
        "device_name": device_name(device),
        "hostname": platform.node(),
        "gpu_driver": command_line(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        if cuda
        else None,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "timm": _version("timm"),
        "fvcore": _version("fvcore"),
        **{d.replace("-", "_"): _version(d) for cls in BACKENDS.values() for d in cls.distributions},
        "python": platform.python_version(),
        "os": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "git_commit": git_commit(),
    }


def available_memory(device: str) -> int | None:
    """Bytes free for a new row on `device` (a GPU's free memory, or the system's MemAvailable); None if unknown."""
    if cuda_present(device):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None
