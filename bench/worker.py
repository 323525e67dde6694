"""One worker process: build one model, run its rows for one backend/precision/layout, append each row as it ends.

Run by the runner as `python -m bench.worker -` with the job as JSON on stdin; a crash here costs only the rows not
yet written.
"""
from __future__ import annotations

import gc
import importlib
import json
import sys
import time
from typing import Any

import torch
import torch.nn as nn

import zoo

from .accuracy import evaluate
from .backends import Backend, BackendUnavailable, make_backend
from .env import collect_env
from .flops import FLOPS_NOTE, count_gmacs, count_params
from .measure import PeakMemory, enable_tf32, is_cuda, latency_stats, numerics, synchronize, time_steps
from .precision import compute_dtype, make_input, prepare_model, weight_dtype
from .results import append_row, utc_now
from .spec import RowSpec, Settings
from .train import training_step

# Largest |backend - eager| / max|eager| a row may show before its status says the backends disagree: what the
# precision's rounding explains, with room for a different kernel order (TF32 rounds to 10 mantissa bits).
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
TF32_TOLERANCE = 5e-3


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


def _tensors(output: Any) -> list[torch.Tensor]:
    return list(output) if isinstance(output, (list, tuple)) else [output]


def output_difference(reference: Any, output: Any, spec: RowSpec) -> dict[str, Any]:
    """Max absolute and relative (to the largest reference value) difference from eager on the same input."""
    pairs = [(r.detach().float().cpu(), o.detach().float().cpu()) for r, o in zip(_tensors(reference), _tensors(output), strict=True)]
    max_abs = max(float((o - r).abs().max()) for r, o in pairs)
    if any(bool((o - r).isnan().any()) for r, o in pairs):
        max_abs = float("nan")  # max() would drop a NaN
    scale = max(float(r.abs().max()) for r, _ in pairs)
    rel = max_abs / scale if scale else max_abs
    dtype = compute_dtype(spec.precision)
    tol = TF32_TOLERANCE if dtype == torch.float32 and spec.tf32 else TOLERANCE[dtype]
    fields = {"diff_vs_eager_max_abs": max_abs, "diff_vs_eager_rel": rel, "diff_tolerance_rel": tol}
    if not rel <= tol:  # NaN counts as beyond
        fields.update(status="mismatch", reason=f"Output differs from eager by {rel:.2e} relative (max abs {max_abs:.2e}), beyond the {tol:.0e} tolerance for {spec.precision}.")
    return fields


def _drop_path_rate(model: nn.Module) -> float:
    """The largest stochastic-depth rate in the model (timm's DropPath and torchvision's StochasticDepth)."""
    rates = [float(getattr(m, "drop_prob", getattr(m, "p", 0.0)) or 0.0) for m in model.modules() if type(m).__name__ in ("DropPath", "StochasticDepth")]
    return round(max(rates, default=0.0), 6)  # builders compute rates in float32 (0.10000000149)


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
        row = {**spec.fields(), "status": "ok", "reason": "", **self.base, **fields}
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
            kwargs = {**dict(head.model_kwargs), **({"features_only": True} if head.features_only else {})}
            model = zoo.load(head.model, pretrained=weights, **kwargs).to(head.device)
        except Exception as exc:  # every row of the group fails the same way; say so in each
            for spec in self.rows:
                self._write(spec, {"status": "oom" if _is_oom(exc) else "error", "reason": f"Could not build the model: {type(exc).__name__}: {_first_line(exc)}"})
            return
        common = {"params": count_params(model), "weights": _weights_label(weights), **numerics()}
        if head.mode == "train":
            common["drop_path_rate"] = _drop_path_rate(model)
        self._count_flops(model)
        model = prepare_model(model, head.precision, head.device, head.channels_last)
        backend = make_backend(head.backend, self.settings.backend_options.get(head.backend))
        measure = self._train if head.mode == "train" else self._infer
        for spec in self.rows:
            self._write(spec, {**common, **self.flops.get(spec.input_size, {}), "flops_note": FLOPS_NOTE, **self._guarded(measure, model, backend, spec)})

    def _guarded(self, measure, model: nn.Module, backend: Backend, spec: RowSpec) -> dict[str, Any]:
        """One row's measurement; its failure is that row's result, and the next row still runs."""
        memory = PeakMemory(spec.device)
        _free(spec.device)
        memory.reset()
        try:
            x = make_input(spec.batch_size, spec.input_size, spec.precision, spec.device, spec.channels_last)
            fields, times, wall_s = measure(model, backend, spec, x, memory)
            return {"latency_ms": latency_stats(times), "times_ms": times, "throughput_ips": spec.batch_size * len(times) / wall_s, **fields}
        except BackendUnavailable as exc:
            return {"status": "unavailable", "reason": str(exc), **exc.info}
        except Exception as exc:
            if _is_oom(exc):
                backend.after_oom()
                return {"status": "oom", "reason": f"Out of memory at batch {spec.batch_size}: {_first_line(exc)}"}
            return {"status": "error", "reason": f"{type(exc).__name__}: {_first_line(exc)}"}
        finally:
            x = None
            _free(spec.device)

    def _infer(self, model: nn.Module, backend: Backend, spec: RowSpec, x: torch.Tensor, memory: PeakMemory) -> tuple[dict[str, Any], list[float], float]:
        settings = self.settings
        with torch.no_grad():
            prepared = backend.prepare(model, x, spec)
            times, wall_s = time_steps(lambda: prepared.forward(x), settings.warmup, settings.iters, spec.device)
            fields = {"compile_s": prepared.compile_s, **prepared.info, **memory.read()}  # before the check's eager run
            if backend.name != "eager":
                reference = make_backend("eager").prepare(model, x, spec).forward(x)
                fields.update(output_difference(reference, prepared.forward(x), spec))
                del reference
        if settings.data and not spec.features_only:
            fields.update(self._accuracy(prepared.forward, spec))
        return fields, times, wall_s

    def _train(self, model: nn.Module, backend: Backend, spec: RowSpec, x: torch.Tensor, memory: PeakMemory) -> tuple[dict[str, Any], list[float], float]:
        step, fields = training_step(model, backend, spec, x)
        t0 = time.perf_counter()
        step()  # the first step compiles where the backend compiles
        synchronize(spec.device)
        first_s = time.perf_counter() - t0
        times, wall_s = time_steps(step, max(0, self.settings.warmup - 1), self.settings.iters, spec.device)
        return {**fields, "compile_s": first_s if backend.name != "eager" else None, **memory.read()}, times, wall_s

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
    if job_path == "-":
        job = json.load(sys.stdin)
    else:
        with open(job_path, encoding="utf-8") as f:
            job = json.load(f)
    settings = Settings(**{**job["settings"], "imports": tuple(job["settings"]["imports"])})
    if settings.threads:
        torch.set_num_threads(settings.threads)
    for module in settings.imports:
        importlib.import_module(module)
    rows = [RowSpec.from_fields(r) for r in job["rows"]]
    if rows[0].tf32:
        enable_tf32()
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
