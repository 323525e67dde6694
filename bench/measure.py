"""Measurements, as trackers around the timed loop: latency, peak memory and energy.

A tracker says how its value is taken (`start`/`stop` around its scope), what it adds to the row (`fields`) and
what those fields are (`columns`: every field it writes, with its kind and unit, shown in tables or CSV-only). The
worker runs every tracker in `TRACKERS` on every row, and the row schema (bench/schema.py) joins their columns in, so
the store validates, and the tables, CSVs and cards show, a new measurement with no other edit: one class here plus
its tests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch

from .columns import Column
from .device import is_cuda, proc_status_kb, synchronize

__all__ = [
    "Loop",
    "Tracker",
    "Latency",
    "Memory",
    "Energy",
    "TRACKERS",
    "time_steps",
    "StepCallback",
    "latency_stats",
    "enable_tf32",
    "numerics",
]

_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass
class Loop:
    """What the timed loop measured: per-step times (ms), the loop's wall time (s) and the images per step."""

    times_ms: list[float]
    wall_s: float
    batch_size: int = 1


class Tracker:
    """One measurement. `scope` "loop": started after the warm-up, stopped after the timed steps finished on the
    device; "row": started before the backend builds anything, stopped after the loop (so it sees compilation)."""

    scope: ClassVar[str] = "loop"
    columns: ClassVar[tuple[Column, ...]] = ()

    def __init__(self, device: str):
        self.device = device

    def start(self) -> None:
        """Begin measuring (no-op by default)."""

    def stop(self) -> None:
        """End measuring (no-op by default)."""

    def fields(self, loop: Loop) -> dict[str, Any]:
        raise NotImplementedError


# What `time_steps` tells its `on_step` callback: the phase, the steps done and the steps in it.
StepCallback = Callable[[str, int, int], None]


def time_steps(
    step: Callable[[], Any],
    warmup: int,
    iters: int,
    device: str,
    trackers: Sequence[Tracker] = (),
    batch_size: int = 1,
    on_step: StepCallback | None = None,
) -> Loop:
    """Per-step times of `iters` steps after `warmup` untimed ones, with loop-scoped `trackers` around them.

    On a GPU each step is bracketed by CUDA events and nothing synchronises inside the loop, so the queue stays
    full as in real inference; the wall time runs from the first start event to the last end event. `on_step`
    (progress for a watcher) is told ("warm-up", done, warmup) and ("timed", done, iters) after each step; on a GPU
    a timed step is then queued, not finished.
    """
    report = on_step or (lambda phase, done, total: None)
    for i in range(warmup):
        step()
        report("warm-up", i + 1, warmup)
    synchronize(device)
    for tracker in trackers:
        tracker.start()
    if is_cuda(device):
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        for i, (start, end) in enumerate(zip(starts, ends)):
            start.record()
            step()
            end.record()
            report("timed", i + 1, iters)
        torch.cuda.synchronize(device)
        loop = Loop(
            [s.elapsed_time(e) for s, e in zip(starts, ends)], starts[0].elapsed_time(ends[-1]) / 1e3, batch_size
        )
    else:
        times = []
        t_run = time.perf_counter()
        for i in range(iters):
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
            report("timed", i + 1, iters)
        loop = Loop(times, time.perf_counter() - t_run, batch_size)
    for tracker in trackers:
        tracker.stop()
    return loop


def latency_stats(times_ms: list[float]) -> dict[str, float]:
    t = np.asarray(times_ms, dtype=np.float64)
    p50, p90, p95, p99 = np.percentile(t, [50, 90, 95, 99])
    return {
        "mean": float(t.mean()),
        "p50": float(p50),
        "p90": float(p90),
        "p95": float(p95),
        "p99": float(p99),
        "std": float(t.std()),
        "min": float(t.min()),
    }


class Latency(Tracker):
    """Step latency percentiles (CUDA events on a GPU, perf_counter on CPU) and throughput from the loop's wall time."""

    columns = (
        Column("mean ms", "latency_ms.mean", ".2f", id="mean", unit="ms", timm="step_time", timm_digits=3),
        Column("p50 ms", "latency_ms.p50", ".2f", id="p50", unit="ms"),
        Column("p90 ms", "latency_ms.p90", ".2f", id="p90", unit="ms"),
        Column("p95 ms", "latency_ms.p95", ".2f", id="p95", unit="ms"),
        Column("p99 ms", "latency_ms.p99", ".2f", id="p99", unit="ms"),
        Column("std ms", "latency_ms.std", ".2f", id="std", unit="ms"),
        Column("img/s", "throughput_ips", ".1f", id="img_s", timm="samples_per_sec", timm_digits=2, unit="images/s"),
        Column("", "latency_ms.min", ".2f", unit="ms", table=False),
        Column("", "latency_ms", kind="mapping", table=False, csv=False),  # its statistics are the fields above
        Column("", "times_ms", kind="list", unit="ms", table=False, csv=False),  # per step; the CSV has statistics
    )

    def fields(self, loop: Loop) -> dict[str, Any]:
        return {
            "latency_ms": latency_stats(loop.times_ms),
            "times_ms": loop.times_ms,
            "throughput_ips": loop.batch_size * len(loop.times_ms) / loop.wall_s,
        }


class Memory(Tracker):
    """Peak memory of the row, compilation included.

    GPU: torch's allocated and reserved peaks. CPU: the process's peak resident set (VmHWM), which Linux lets a
    process reset through /proc/self/clear_refs; where it cannot, the figure is the process's lifetime peak and
    the row says so.
    """

    scope = "row"
    columns = (
        Column("peak MB", "peak_mem_mb", ".0f", id="peak_mb", unit="MiB"),
        Column("", "peak_mem_reserved_mb", ".0f", unit="MiB", table=False),
        Column("", "peak_mem_kind", kind="text", table=False),
    )

    def start(self) -> None:
        self.scope_label = "row"
        if is_cuda(self.device):
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            _CLEAR_REFS.write_text("5")
        except OSError:
            self.scope_label = "process"

    def fields(self, loop: Loop | None = None) -> dict[str, Any]:
        if is_cuda(self.device):
            return {
                "peak_mem_mb": torch.cuda.max_memory_allocated(self.device) / 2**20,
                "peak_mem_reserved_mb": torch.cuda.max_memory_reserved(self.device) / 2**20,
                "peak_mem_kind": "cuda allocated / reserved",
            }
        hwm = proc_status_kb("VmHWM")
        return {
            "peak_mem_mb": hwm / 1024 if hwm is not None else None,
            "peak_mem_reserved_mb": None,
            "peak_mem_kind": f"RSS peak ({self.scope_label})",
        }


# The NVML energy counter advances in steps of tens of milliseconds; shorter loops get a note.
MIN_ENERGY_WINDOW_S = 1.0


class Energy(Tracker):
    """Joules per image and average watts on NVIDIA GPUs, from NVML's total-energy counter (nvidia-ml-py) read
    before and after the timed steps; absent, with the reason, elsewhere."""

    columns = (
        Column("J/img", "energy_j_per_img", ".3g", id="j_img", unit="J"),
        Column("W", "power_w", ".0f", id="watts", unit="W"),
        Column("", "energy_j", ".4g", unit="J", table=False),
        Column("", "energy_note", kind="text", table=False),
    )

    def __init__(self, device: str):
        super().__init__(device)
        self.reason: str | None = None
        self.nvml: Any = None
        if not is_cuda(device):
            self.reason = f"Energy is read from NVML on NVIDIA GPUs; this row ran on {torch.device(device).type}."
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle = _nvml_handle(pynvml, torch.device(device).index or 0)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)  # unsupported before Volta: say so now
            self.nvml = pynvml
        except ImportError:
            self.reason = "nvidia-ml-py is not installed, so no energy was read."
        except Exception as exc:  # NVMLError and its subclasses: no driver, no permission, unsupported GPU
            self.reason = f"NVML could not read the energy counter ({type(exc).__name__}: {exc})."

    def _read(self) -> tuple[float, float]:
        return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle), time.perf_counter()

    def start(self) -> None:
        if self.nvml is not None:
            self.begin = self._read()

    def stop(self) -> None:
        if self.nvml is not None:
            self.end = self._read()

    def fields(self, loop: Loop) -> dict[str, Any]:
        if self.nvml is None:
            return {"energy_j_per_img": None, "power_w": None, "energy_note": self.reason}
        joules = (self.end[0] - self.begin[0]) / 1e3  # the counter is in millijoules
        seconds = self.end[1] - self.begin[1]
        fields = {
            "energy_j": joules,
            "energy_j_per_img": joules / (loop.batch_size * len(loop.times_ms)),
            "power_w": joules / seconds if seconds > 0 else None,
        }
        if seconds < MIN_ENERGY_WINDOW_S:
            fields["energy_note"] = (
                f"Energy read over {seconds:.2f} s, near the NVML counter's update interval; indicative only."
            )
        return fields


def _nvml_handle(pynvml: Any, index: int) -> Any:
    """NVML's handle for torch's CUDA device `index`, matched by UUID (NVML numbers GPUs ignoring
    CUDA_VISIBLE_DEVICES), falling back to the index."""
    uuid = str(getattr(torch.cuda.get_device_properties(index), "uuid", "") or "")
    if uuid:
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
        except Exception:  # an NVMLError: fall back to the index
            pass
    return pynvml.nvmlDeviceGetHandleByIndex(index)


TRACKERS: tuple[type[Tracker], ...] = (Latency, Memory, Energy)


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
