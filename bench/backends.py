"""Backends turn an eval-mode model into a forward function for one input shape.

Each reports its own build cost (`compile_s`) and diagnostics; a backend that cannot run here raises
`BackendUnavailable` with the one-sentence reason that goes into the row.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

from .measure import synchronize
from .precision import autocast, compute_dtype
from .spec import RowSpec

__all__ = ["BackendUnavailable", "Prepared", "Backend", "Eager", "Compile", "TensorRT", "make_backend"]


class BackendUnavailable(Exception):
    """The backend cannot run this row here; str(exc) is the row's reason, `info` extra row fields."""

    def __init__(self, reason: str, info: dict[str, Any] | None = None):
        super().__init__(reason)
        self.info = info or {}


@dataclass
class Prepared:
    forward: Callable[[torch.Tensor], Any]
    compile_s: float | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _with_precision(fn: Callable[[torch.Tensor], Any], spec: RowSpec) -> Callable[[torch.Tensor], Any]:
    def forward(x: torch.Tensor) -> Any:
        with autocast(spec.precision, spec.device):
            return fn(x)

    return forward


def _first_call_s(forward: Callable[[torch.Tensor], Any], x: torch.Tensor, device: str) -> float:
    """Wall time of the first call, where lazy backends do their compiling."""
    t0 = time.perf_counter()
    forward(x)
    synchronize(device)
    return time.perf_counter() - t0


class Backend:
    name = ""

    def __init__(self) -> None:
        self._per_size: dict[tuple[int, int], dict[str, Any]] = {}

    def _once_per_size(self, spec: RowSpec, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Diagnostics that do not depend on the batch size, computed at the first row of each input size."""
        if spec.input_size not in self._per_size:
            self._per_size[spec.input_size] = compute()
        return self._per_size[spec.input_size]

    def prepare(self, model: nn.Module, x: torch.Tensor, spec: RowSpec) -> Prepared:
        raise NotImplementedError


class Eager(Backend):
    name = "eager"

    def prepare(self, model: nn.Module, x: torch.Tensor, spec: RowSpec) -> Prepared:
        return Prepared(_with_precision(model, spec))


class Compile(Backend):
    """torch.compile with a static shape per row; graph breaks come from torch._dynamo.explain."""

    name = "compile"

    @staticmethod
    def _graph_breaks(model: nn.Module, x: torch.Tensor, spec: RowSpec) -> dict[str, Any]:
        """Dynamo's graph count and break reasons.

        Breaks are counted from the reasons: explain's graph_break_count is graphs - 1, which misses a break whose
        resumed code holds no tensor op.
        """
        torch._dynamo.reset()
        with autocast(spec.precision, spec.device):
            explanation = torch._dynamo.explain(model)(x)
        reasons = [r.reason.strip().splitlines()[0][:160] for r in explanation.break_reasons]
        return {"graphs": explanation.graph_count, "graph_breaks": len(reasons), "break_reasons": list(dict.fromkeys(reasons))[:5]}

    def prepare(self, model: nn.Module, x: torch.Tensor, spec: RowSpec) -> Prepared:
        info = self._once_per_size(spec, lambda: self._graph_breaks(model, x, spec))
        torch._dynamo.reset()  # a fresh cache per row: its compile time and recompiles are its own
        mode = None if spec.compile_mode in (None, "default") else spec.compile_mode
        forward = _with_precision(torch.compile(model, mode=mode, dynamic=False), spec)
        return Prepared(forward, _first_call_s(forward, x, spec.device), dict(info))


class TensorRT(Backend):
    """torch_tensorrt's dynamo path: torch.export, then an engine built for this row's exact input shape."""

    name = "tensorrt"

    @staticmethod
    def _export_check(model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
        """Run the torch.export step TensorRT builds from, so a machine without TensorRT still tests it."""
        t0 = time.perf_counter()
        try:
            exported = torch.export.export(model, (x,))
        except Exception as exc:  # any export failure is the finding this check exists to report
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            return {"export_ok": False, "export_error": f"{type(exc).__name__}: {first}"}
        return {"export_ok": True, "export_s": time.perf_counter() - t0, "export_nodes": len(exported.graph.nodes)}

    def _unavailable(self, why: str, model: nn.Module, x: torch.Tensor, spec: RowSpec) -> BackendUnavailable:
        check = self._once_per_size(spec, lambda: self._export_check(model, x))
        if check["export_ok"]:
            found = f"torch.export.export succeeded ({check['export_nodes']} nodes, {check['export_s']:.1f} s)"
        else:
            found = f"torch.export.export failed ({check['export_error']})"
        return BackendUnavailable(f"{why}; tensorrt-export check: {found}.", check)

    def prepare(self, model: nn.Module, x: torch.Tensor, spec: RowSpec) -> Prepared:
        if spec.precision.startswith("amp-"):
            raise BackendUnavailable("A TensorRT engine is built for one precision (fp32, fp16 or bf16), so autocast does not apply.")
        try:
            import torch_tensorrt
        except ImportError:
            raise self._unavailable("torch_tensorrt is not installed (pip install torch-tensorrt on a CUDA machine), so no engine was built", model, x, spec) from None
        if x.device.type != "cuda":
            raise self._unavailable(f"TensorRT builds engines for NVIDIA GPUs only and this row runs on {x.device.type}", model, x, spec)
        t0 = time.perf_counter()
        exported = torch.export.export(model, (x,))
        export_s = time.perf_counter() - t0
        typing = _precision_kwargs(torch_tensorrt.dynamo.compile, compute_dtype(spec.precision))
        engine = torch_tensorrt.dynamo.compile(exported, inputs=[x], **typing)
        info = {"export_s": export_s, "export_ok": True, "trt_typing": "enabled_precisions" if typing else "explicit"}
        return Prepared(engine, time.perf_counter() - t0, info)


def _precision_kwargs(compile_fn: Callable[..., Any], dtype: torch.dtype) -> dict[str, Any]:
    """How to ask torch_tensorrt for an engine in `dtype` (the model and input are already cast to it).

    Newer releases type the engine from the graph (`use_explicit_typing`, default True) and reject
    `enabled_precisions`; older ones build fp32 kernels unless `enabled_precisions` allows the lower precision.
    """
    explicit = inspect.signature(compile_fn).parameters.get("use_explicit_typing")
    return {} if explicit is not None and explicit.default is True else {"enabled_precisions": {dtype}}


def make_backend(name: str) -> Backend:
    return {"eager": Eager, "compile": Compile, "tensorrt": TensorRT}[name]()
