"""One worker process: build one model once, run all its rows (any backend, precision and layout), append each row
as it ends and report it to the runner on the progress channel.

Run by the runner as `python -m bench.worker -` with the job as JSON on stdin; a crash here costs only the rows not
yet written.
"""

from __future__ import annotations

import copy
import gc
import importlib
import json
import os
import sys
import time
from typing import IO, Any, Callable

import torch
import torch.nn as nn

import zoo
from common.paths import WriteError

from .accuracy import Meaningless, evaluate
from .backends import Backend, make_backend
from .env import collect_env
from .flops import FLOPS_NOTE, count_gmacs, count_params
from .device import is_cuda, synchronize
from .measure import TRACKERS, Loop, enable_tf32, numerics, time_steps
from .precision import make_input, precision, prepare_model
from .results import append_row, utc_now
from .spec import RowSpec, Settings, Unavailable, first_line
from .train import training_step

Measured = tuple[dict[str, Any], Loop]


def _is_oom(exc: BaseException) -> bool:
    """CUDA raises torch.OutOfMemoryError; the CPU allocator raises a RuntimeError that says so."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and (
        "out of memory" in str(exc).lower() or "can't allocate memory" in str(exc).lower()
    )


def _free(device: str) -> None:
    gc.collect()
    if is_cuda(device):
        torch.cuda.empty_cache()


def _tensors(output: Any) -> list[torch.Tensor]:
    return list(output) if isinstance(output, (list, tuple)) else [output]


def output_difference(reference: Any, output: Any, spec: RowSpec) -> dict[str, Any]:
    """Max absolute and relative (to the largest reference value) difference from eager on the same input."""
    pairs = [
        (r.detach().float().cpu(), o.detach().float().cpu())
        for r, o in zip(_tensors(reference), _tensors(output), strict=True)
    ]
    max_abs = max(float((o - r).abs().max()) for r, o in pairs)
    if any(bool((o - r).isnan().any()) for r, o in pairs):
        max_abs = float("nan")  # max() would drop a NaN
    scale = max(float(r.abs().max()) for r, _ in pairs)
    rel = max_abs / scale if scale else max_abs
    tol = precision(spec.precision).tolerance_for(spec.tf32)
    fields = {"diff_vs_eager_max_abs": max_abs, "diff_vs_eager_rel": rel, "diff_tolerance_rel": tol}
    if not rel <= tol:  # NaN counts as beyond
        fields.update(
            status="mismatch",
            reason=f"Output differs from eager by {rel:.2e} relative (max abs {max_abs:.2e}), beyond the {tol:.0e} "
            f"tolerance for {spec.precision}.",
        )
    return fields


def _drop_path_rate(model: nn.Module) -> float:
    """The largest stochastic-depth rate in the model (timm's DropPath and torchvision's StochasticDepth)."""
    rates = [
        float(getattr(m, "drop_prob", getattr(m, "p", 0.0)) or 0.0)
        for m in model.modules()
        if type(m).__name__ in ("DropPath", "StochasticDepth")
    ]
    return round(max(rates, default=0.0), 6)  # builders compute rates in float32 (0.10000000149)


class Worker:
    """Holds the model (fp32, as built), its cast copy for the current precision and layout, the backends, and the
    per-input-size caches (FLOPs, accuracy) for one group of rows."""

    def __init__(
        self,
        rows: list[RowSpec],
        settings: Settings,
        results: str,
        base: dict[str, Any],
        known_flops: dict[str, dict],
        progress: IO[str] | None = None,
    ):
        self.rows = rows
        self.settings = settings
        self.results = results
        self.base = base
        self.progress = progress
        self.sent = 0.0  # when the last step message went to the runner
        self.flops = {tuple(json.loads(k)): v for k, v in known_flops.items()}
        self.accuracy: dict[tuple, dict[str, Any]] = {}
        self.backends: dict[tuple, Backend] = {}
        self.variant: tuple[tuple, nn.Module] | None = None
        self.head = rows[0]

    def _write(self, spec: RowSpec, fields: dict[str, Any]) -> None:
        row = {**spec.fields(), "status": "ok", "reason": "", **self.base, **fields, "timestamp": utc_now()}
        append_row(self.results, row)
        self._send(row)

    def _send(self, message: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.write(json.dumps(message, default=str) + "\n")
            self.progress.flush()

    def _step(self, spec: RowSpec, phase: str, done: int = 0, total: int = 0) -> None:
        """Where the row is (building, compiling, warm-up or timed steps), for the runner's progress bar: a phase's
        first and last step and at most five messages a second between them, so fast steps are not slowed."""
        now = time.monotonic()
        if 1 < done < total and now - self.sent < 0.2:
            return
        self.sent = now
        self._send({"event": "step", "row": spec.fields(), "phase": phase, "done": done, "total": total})

    def _count_flops(self, model: nn.Module, rows: list[RowSpec]) -> None:
        """GMACs at batch 1 per input size, on the fp32 model before any cast; a failure is noted, not fatal."""
        for size in dict.fromkeys(r.input_size for r in rows):
            if size in self.flops or not self.settings.flops:
                continue
            try:
                self.flops[size] = count_gmacs(model, make_input(1, size, "fp32", self.head.device, False))
            except Exception as exc:  # a counting failure (fvcore missing included) must not cost the speed measurement
                self.flops[size] = {"gmacs": None, "flops_error": f"{type(exc).__name__}: {first_line(exc)}"}
            _free(self.head.device)

    def _model_for(self, model: nn.Module, spec: RowSpec) -> nn.Module:
        """The model in the row's weight dtype and layout: the built one where they are fp32 and contiguous, else a
        cast copy kept while consecutive rows share it."""
        key = (precision(spec.precision).weight_dtype, spec.channels_last)
        if key == (torch.float32, False):
            self.variant = None
            return model
        if self.variant is None or self.variant[0] != key:
            self.variant = None
            _free(spec.device)
            self.variant = (key, prepare_model(copy.deepcopy(model), spec.precision, spec.device, spec.channels_last))
        return self.variant[1]

    def _backend(self, spec: RowSpec) -> Backend:
        key = (spec.backend, spec.backend_options)
        if key not in self.backends:
            self.backends[key] = make_backend(spec.backend, dict(spec.backend_options))
        return self.backends[key]

    def _builds(self) -> list[tuple[dict[str, Any], list[RowSpec]]]:
        """The group's rows by the build their input size needs: one build for models that take any size, one per
        size for those built for a size (timm's Swin and MaxViT)."""
        head = self.head
        builds: dict[str, tuple[dict[str, Any], list[RowSpec]]] = {}
        for spec in self.rows:
            try:
                sized = zoo.input_size_kwargs(head.model, spec.input_size, **dict(head.model_kwargs))
            except zoo.InputSizeError as exc:  # the runner refuses these first; a launcher's job may not know the model
                self._write(spec, {"status": "unavailable", "reason": str(exc)})
                continue
            builds.setdefault(json.dumps(sized, default=str), (sized, []))[1].append(spec)
        return list(builds.values())

    def run(self) -> None:
        for sized, rows in self._builds():
            self._run_build(sized, rows)
            self.variant = None
            self.backends.clear()  # a backend may hold the previous build's compiled graphs
            _free(self.head.device)

    def _run_build(self, sized: dict[str, Any], rows: list[RowSpec]) -> None:
        head = self.head
        self._step(rows[0], "build")
        try:
            kwargs = {**dict(head.model_kwargs), **({"features_only": True} if head.features_only else {}), **sized}
            model = zoo.load(head.model, pretrained=head.pretrained(), **kwargs).to(head.device)
        except Exception as exc:  # every row of the build fails the same way; say so in each
            for spec in rows:
                self._write(
                    spec,
                    {
                        "status": "oom" if _is_oom(exc) else "error",
                        "reason": f"Could not build the model: {type(exc).__name__}: {first_line(exc)}",
                    },
                )
            return
        common = {"params": count_params(model), **numerics()}
        if head.mode == "train":
            common["drop_path_rate"] = _drop_path_rate(model)
        self._count_flops(model, rows)
        for spec in rows:
            measure = self._train if spec.mode == "train" else self._infer
            fields = self._guarded(measure, self._model_for(model, spec), self._backend(spec), spec)
            self._write(spec, {**common, **self.flops.get(spec.input_size, {}), "flops_note": FLOPS_NOTE, **fields})

    def _guarded(
        self, measure: Callable[..., Measured], model: nn.Module, backend: Backend, spec: RowSpec
    ) -> dict[str, Any]:
        """One row's measurement with every tracker running; its failure is that row's result, and the next row
        still runs."""
        _free(spec.device)
        trackers = [cls(spec.device) for cls in TRACKERS]
        try:
            x = make_input(spec.batch_size, spec.input_size, spec.precision, spec.device, spec.channels_last)
            for tracker in trackers:
                if tracker.scope == "row":
                    tracker.start()
            fields, loop = measure(model, backend, spec, x, trackers)
            for tracker in trackers:
                fields.update(tracker.fields(loop))
            return fields
        except Unavailable as exc:
            return {"status": "unavailable", "reason": str(exc), **exc.info}
        except Exception as exc:
            if _is_oom(exc):
                backend.after_oom()
                return {"status": "oom", "reason": f"Out of memory at batch {spec.batch_size}: {first_line(exc)}"}
            return {"status": "error", "reason": f"{type(exc).__name__}: {first_line(exc)}"}
        finally:
            x = None
            _free(spec.device)

    def _timed(self, step: Callable[[], Any], spec: RowSpec, trackers: list, warmup: int) -> Loop:
        """The timed loop with the loop-scoped trackers around it, then the row-scoped ones stopped."""
        loop = time_steps(
            step,
            warmup,
            self.settings.iters,
            spec.device,
            [t for t in trackers if t.scope == "loop"],
            spec.batch_size,
            on_step=lambda phase, done, total: self._step(spec, phase, done, total),
        )
        for tracker in trackers:
            if tracker.scope == "row":
                tracker.stop()
        return loop

    def _infer(self, model: nn.Module, backend: Backend, spec: RowSpec, x: torch.Tensor, trackers: list) -> Measured:
        with torch.no_grad():
            self._step(spec, "compile" if backend.name != "eager" else "prepare")
            prepared = backend.prepare(model, x, spec)
            loop = self._timed(lambda: prepared.forward(x), spec, trackers, self.settings.warmup)
            fields = {"compile_s": prepared.compile_s, **prepared.info}
            if backend.name != "eager":  # trackers stopped: the check's eager run is not measured
                reference = make_backend("eager").prepare(model, x, spec).forward(x)
                fields.update(output_difference(reference, prepared.forward(x), spec))
                del reference
        if spec.data and not spec.features_only:
            fields.update(self._accuracy(prepared.forward, spec, getattr(model, "num_classes", None)))
        return fields, loop

    def _train(self, model: nn.Module, backend: Backend, spec: RowSpec, x: torch.Tensor, trackers: list) -> Measured:
        step, fields = training_step(model, backend, spec, x)
        self._step(spec, "compile" if backend.name != "eager" else "prepare")
        t0 = time.perf_counter()
        step()  # the first step compiles where the backend compiles
        synchronize(spec.device)
        first_s = time.perf_counter() - t0
        loop = self._timed(step, spec, trackers, max(0, self.settings.warmup - 1))
        return {**fields, "compile_s": first_s if backend.name != "eager" else None}, loop

    def _accuracy(self, forward: Callable[[torch.Tensor], Any], spec: RowSpec, classes: int | None) -> dict[str, Any]:
        """Measured once per input size, precision and backend through this row's forward, then reused. Accuracy the
        inputs make meaningless (no classifier, other classes than the head's, NaN logits) fails the row."""
        key = (spec.input_size, spec.precision, spec.backend, spec.backend_options, spec.channels_last)
        if key not in self.accuracy:
            dtype = precision(spec.precision).weight_dtype
            memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format

            def to_device(images: torch.Tensor) -> torch.Tensor:
                return images.to(spec.device, dtype=dtype).contiguous(memory_format=memory_format)

            try:
                self.accuracy[key] = evaluate(
                    forward,
                    spec.model,
                    spec.input_size,
                    spec.data,
                    spec.batch_size,
                    spec.max_samples,
                    to_device,
                    head_classes=classes,
                )
            except Meaningless as exc:
                self.accuracy[key] = {"status": "error", "reason": f"No accuracy: {exc}"}
            except Exception as exc:  # speed numbers stand without it; the reason is kept
                return {"accuracy_error": f"{type(exc).__name__}: {first_line(exc)}"}
        return self.accuracy[key]


def main(job_path: str) -> None:
    if job_path == "-":
        job = json.load(sys.stdin)
    else:
        with open(job_path, encoding="utf-8") as f:
            job = json.load(f)
    settings = Settings(**{**job["settings"], "imports": tuple(job["settings"]["imports"])})
    rows = [RowSpec.from_fields(r) for r in job["rows"]]
    if rows[0].threads:
        torch.set_num_threads(rows[0].threads)
    for module in settings.imports:
        importlib.import_module(module)
    if rows[0].tf32:
        enable_tf32()
    # within each backend/precision/layout block (blocks keep the plan's order): largest batch first per input size,
    # so accuracy (if asked) runs at the fastest batch
    block = lambda r: (r.mode, r.backend, r.backend_options, r.precision, r.channels_last)  # noqa: E731
    first = {}
    for r in rows:
        first.setdefault(block(r), len(first))
    rows.sort(key=lambda r: (first[block(r)], r.input_size, -r.batch_size))
    base = {
        "run_id": job["run_id"],
        "command": job["command"],
        "warmup": settings.warmup,
        "iters": settings.iters,
        "env": collect_env(rows[0].device),
    }
    progress = os.fdopen(job["progress_fd"], "w", encoding="utf-8") if job.get("progress_fd") is not None else None
    t0 = time.perf_counter()
    try:
        Worker(rows, settings, job["results"], base, job.get("known_flops", {}), progress).run()
    except WriteError as exc:  # the runner names the rows left unwritten; no traceback for a full disk
        print(f"WriteError: {exc}", file=sys.stderr)
        sys.exit(1)
    print(f"worker done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1])
