"""Timing and memory: CUDA events on a GPU, perf_counter on CPU; peak memory per row."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def is_cuda(device: str) -> bool:
    return torch.device(device).type == "cuda"


def synchronize(device: str) -> None:
    if is_cuda(device):
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], Any], warmup: int, iters: int, device: str) -> tuple[list[float], float]:
    """Per-step times (ms) and the wall time (s) of `iters` steps after `warmup` untimed ones.

    On a GPU each step is bracketed by CUDA events and nothing synchronises inside the loop, so the queue stays
    full as in real inference; the wall time runs from the first start event to the last end event.
    """
    for _ in range(warmup):
        step()
    synchronize(device)
    if is_cuda(device):
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        for start, end in zip(starts, ends):
            start.record()
            step()
            end.record()
        torch.cuda.synchronize(device)
        return [s.elapsed_time(e) for s, e in zip(starts, ends)], starts[0].elapsed_time(ends[-1]) / 1e3
    times = []
    t_run = time.perf_counter()
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return times, time.perf_counter() - t_run


def latency_stats(times_ms: list[float]) -> dict[str, float]:
    t = np.asarray(times_ms, dtype=np.float64)
    p50, p90, p95, p99 = np.percentile(t, [50, 90, 95, 99])
    return {"mean": float(t.mean()), "p50": float(p50), "p90": float(p90), "p95": float(p95), "p99": float(p99),
            "std": float(t.std()), "min": float(t.min())}


def enable_tf32() -> None:
    """What timm's benchmark.py sets on a GPU: TF32 matmuls and convolutions, and cuDNN autotuning. Without it
    torch's defaults stand (fp32 matmuls, TF32 convolutions, no autotuning), and each row records which ran."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True


def numerics() -> dict[str, Any]:
    """The numeric settings a row ran under, read back from torch (not from the arguments)."""
    return {
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }


def _status_kb(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory of what runs between `reset()` and `read()`.

    GPU: torch's allocated and reserved peaks. CPU: the process's peak resident set (VmHWM), which Linux lets a
    process reset through /proc/self/clear_refs; where it cannot, the figure is the process's lifetime peak and
    the row says so.
    """

    def __init__(self, device: str):
        self.device = device
        self.scope = "row"

    def reset(self) -> None:
        if is_cuda(self.device):
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            _CLEAR_REFS.write_text("5")
        except OSError:
            self.scope = "process"

    def read(self) -> dict[str, Any]:
        if is_cuda(self.device):
            return {
                "peak_mem_mb": torch.cuda.max_memory_allocated(self.device) / 2**20,
                "peak_mem_reserved_mb": torch.cuda.max_memory_reserved(self.device) / 2**20,
                "peak_mem_kind": "cuda allocated / reserved",
            }
        hwm = _status_kb("VmHWM")
        return {
            "peak_mem_mb": hwm / 1024 if hwm is not None else None,
            "peak_mem_reserved_mb": None,
            "peak_mem_kind": f"RSS peak ({self.scope})",
        }
