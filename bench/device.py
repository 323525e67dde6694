"""The device a row runs on, asked in one place: whether it is a GPU, waiting for its queue, and this process's
memory as the kernel counts it."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["is_cuda", "cuda_present", "synchronize", "proc_status_kb"]

_STATUS = Path("/proc/self/status")


def is_cuda(device: str) -> bool:
    """`device` names a CUDA device ("cuda", "cuda:1")."""
    return torch.device(device).type == "cuda"


def cuda_present(device: str) -> bool:
    """`device` names a CUDA device and torch sees one, so the GPU can be asked about (its name, its driver)."""
    return is_cuda(device) and torch.cuda.is_available()


def synchronize(device: str) -> None:
    """Wait for the device's queue (a no-op on CPU), so a clock read after it counts the work queued before."""
    if is_cuda(device):
        torch.cuda.synchronize(device)


def proc_status_kb(field: str) -> int | None:
    """A field of /proc/self/status in kB (VmHWM, VmRSS), or None where the kernel has none."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None
