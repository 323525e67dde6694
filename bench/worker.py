"""One worker process: build one model, run its rows for one backend/precision/layout, append each row as it ends.

Run by the runner as `python -m bench.worker JOB.json`; a crash here costs only the rows not yet written.
"""
from __future__ import annotations

import gc
import importlib
import json
import sys
import time
from dataclasses import asdict
from typing import Any

import torch
import torch.nn as nn

import zoo

from .accuracy import evaluate
from .backends import Backend, BackendUnavailable, make_backend
from .env import collect_env
from .flops import FLOPS_NOTE, count_gmacs, count_params
from .measure import PeakMemory, is_cuda, latency_stats, time_steps
from .precision import make_input, prepare_model, weight_dtype
from .results import append_row, utc_now
from .spec import RowSpec, Settings


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def _is_oom(exc: BaseException) -> bool:
    """CUDA raises torch.OutOfMemoryError; the CPU allocator raises a RuntimeError that says so."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and ("out of memory" in str(exc).lower() or "can't allocate memory" in str(exc).lower())


def _free(device: str) -> None:
    gc.collect()
    if is_cuda(device):
        torch.cuda.empty_cache()


def _weights_label(weights: bool | str) -> str:
    return "hub" if weights is True else (str(weights) if weights else "random init")


class Worker:
    """Holds the model, backend and per-input-size caches (FLOPs, accuracy) for one group of rows."""

    def __init__(self, rows: list[RowSpec], settings: Settings, results: str, base: dict[str, Any], known_flops: dict[str, dict]):
        self.rows = rows
        self.settings = settings
        self.results = results
        self.base = base
        self.flops = {tuple(json.loads(k)): v for k, v in known_flops.items()}
        self.accuracy: dict[tuple[int, int], dict[str, Any]] = {}
        self.head = rows[0]

    def _write(self, spec: RowSpec, fields: dict[str, Any]) -> None:
        row = {**asdict(spec), "input_size": list(spec.input_size), "status": "ok", "reason": "", **self.base, **fields}
        row["timestamp"] = utc_now()
        append_row(self.results, row)

    def _count_flops(self, model: nn.Module) -> None:
        """GMACs at batch 1 per input size, on the fp32 model before any cast; a failure is noted, not fatal."""
        for size in dict.fromkeys(r.input_size for r in self.rows):
            if size in self.flops or not self.settings.flops:
                continue
            try:
                self.flops[size] = count_gmacs(model, make_input(1, size, "fp32", self.head.device, False))
            except Exception as exc:  # a counting failure must not cost the speed measurement
                self.flops[size] = {"gmacs": None, "flops_error": f"{type(exc).__name__}: {_first_line(exc)}"}
            _free(self.head.device)

    def run(self) -> None:
        head, settings = self.head, self.settings
        weights = settings.weights_for(head.model)
        try:
            kwargs = {"features_only": True} if head.features_only else {}
            model = zoo.load(head.model, pretrained=weights, **kwargs).to(head.device)
        except Exception as exc:  # every row of the group fails the same way; say so in each
            for spec in self.rows:
                self._write(spec, {"status": "oom" if _is_oom(exc) else "error", "reason": f"Could not build the model: {type(exc).__name__}: {_first_line(exc)}"})
            return
        common = {"params": count_params(model), "weights": _weights_label(weights)}
        self._count_flops(model)
        model = prepare_model(model, head.precision, head.device, head.channels_last)
        backend = make_backend(head.backend)
        for spec in self.rows:
            self._write(spec, {**common, **self.flops.get(spec.input_size, {}), "flops_note": FLOPS_NOTE, **self._measure(model, backend, spec)})

    def _measure(self, model: nn.Module, backend: Backend, spec: RowSpec) -> dict[str, Any]:
        settings, memory = self.settings, PeakMemory(spec.device)
        _free(spec.device)
        memory.reset()
        prepared = x = None
        try:
            x = make_input(spec.batch_size, spec.input_size, spec.precision, spec.device, spec.channels_last)
            with torch.no_grad():
                prepared = backend.prepare(model, x, spec)
                times, wall_s = time_steps(lambda: prepared.forward(x), settings.warmup, settings.iters, spec.device)
            fields = {
                "latency_ms": latency_stats(times),
                "throughput_ips": spec.batch_size * settings.iters / wall_s,
                "compile_s": prepared.compile_s,
                **prepared.info,
                **memory.read(),
            }
            if settings.data and not spec.features_only:
                fields.update(self._accuracy(prepared.forward, spec))
            return fields
        except BackendUnavailable as exc:
            return {"status": "unavailable", "reason": str(exc), **exc.info}
        except Exception as exc:  # one row's failure is that row's result; the next row still runs
            if _is_oom(exc):
                torch._dynamo.reset()
                return {"status": "oom", "reason": f"Out of memory at batch {spec.batch_size}: {_first_line(exc)}"}
            return {"status": "error", "reason": f"{type(exc).__name__}: {_first_line(exc)}"}
        finally:
            del prepared, x
            _free(spec.device)

    def _accuracy(self, forward, spec: RowSpec) -> dict[str, Any]:
        """Measured once per input size through this row's forward (same backend and precision), then reused."""
        if spec.input_size not in self.accuracy:
            dtype = weight_dtype(spec.precision)
            memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format

            def to_device(images: torch.Tensor) -> torch.Tensor:
                return images.to(spec.device, dtype=dtype).contiguous(memory_format=memory_format)

            try:
                self.accuracy[spec.input_size] = evaluate(
                    forward, spec.model, spec.input_size, self.settings.data, spec.batch_size, self.settings.max_samples, to_device
                )
            except Exception as exc:  # speed numbers stand without it; the reason is kept
                return {"accuracy_error": f"{type(exc).__name__}: {_first_line(exc)}"}
        return self.accuracy[spec.input_size]


def main(job_path: str) -> None:
    with open(job_path, encoding="utf-8") as f:
        job = json.load(f)
    settings = Settings(**{**job["settings"], "imports": tuple(job["settings"]["imports"])})
    if settings.threads:
        torch.set_num_threads(settings.threads)
    for module in settings.imports:
        importlib.import_module(module)
    rows = [RowSpec(**{**r, "input_size": tuple(r["input_size"])}) for r in job["rows"]]
    # largest batch first within an input size, so accuracy (if asked) runs at the fastest batch
    rows.sort(key=lambda r: (r.input_size, -r.batch_size))
    base = {
        "run_id": job["run_id"],
        "command": job["command"],
        "warmup": settings.warmup,
        "iters": settings.iters,
        "env": collect_env(rows[0].device),
    }
    t0 = time.perf_counter()
    Worker(rows, settings, job["results"], base, job.get("known_flops", {})).run()
    print(f"worker done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1])
