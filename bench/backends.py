"""Backends turn an eval-mode model into a forward function for one input shape (and, where they can, a module to
train through).

A backend is a class with its `name` and its own `Options` dataclass, listed once in `BACKENDS`; the CLI, the grid
and the suite read the names from there. Each reports its own build cost (`compile_s`) and diagnostics; a backend
that cannot run here raises `BackendUnavailable` with the one-sentence reason that goes into the row.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
import torch.nn as nn

from .measure import is_cuda, synchronize
from .precision import autocast, compute_dtype
from .spec import RowSpec

__all__ = ["BACKENDS", "BackendUnavailable", "Prepared", "Backend", "Eager", "Compile", "TensorRT", "OnnxRuntime",
           "make_backend", "trt_arguments", "trt_partition"]


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


@dataclass(frozen=True)
class NoOptions:
    pass


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


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


def _no_autocast(spec: RowSpec, what: str) -> None:
    if spec.precision.startswith("amp-"):
        raise BackendUnavailable(f"{what} is built for one precision (fp32, fp16 or bf16), so autocast does not apply.")


class Backend:
    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    autocast: ClassVar[bool] = True  # runs amp-* rows; graph compilers build for one cast precision instead

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()
        self._per_size: dict[tuple[int, int], dict[str, Any]] = {}

    def _once_per_size(self, spec: RowSpec, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Diagnostics that do not depend on the batch size, computed at the first row of each input size."""
        if spec.input_size not in self._per_size:
            self._per_size[spec.input_size] = compute()
        return self._per_size[spec.input_size]

    def prepare(self, model: nn.Module, x: torch.Tensor, spec: RowSpec) -> Prepared:
        raise NotImplementedError

    def for_training(self, model: nn.Module, spec: RowSpec) -> nn.Module:
        """The module a training step runs through; a backend that only builds inference graphs refuses."""
        raise BackendUnavailable(f"The {self.name} backend builds inference-only graphs, so it has no training step to time.")

    def after_oom(self) -> None:
        """Drop whatever the backend caches, so the next row starts clean after an out-of-memory error."""


class Eager(Backend):
    name = "eager"

    def prepare(self, model: nn.Module, x: torch.Tensor, spec: RowSpec) -> Prepared:
        return Prepared(_with_precision(model, spec))

    def for_training(self, model: nn.Module, spec: RowSpec) -> nn.Module:
        return model


class Compile(Backend):
    """torch.compile with a static shape per row (`spec.compile_mode`); graph breaks from torch._dynamo.explain."""

    name = "compile"

    @staticmethod
    def _mode(spec: RowSpec) -> str | None:
        return None if spec.compile_mode in (None, "default") else spec.compile_mode

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
        forward = _with_precision(torch.compile(model, mode=self._mode(spec), dynamic=False), spec)
        return Prepared(forward, _first_call_s(forward, x, spec.device), dict(info))

    def for_training(self, model: nn.Module, spec: RowSpec) -> nn.Module:
        torch._dynamo.reset()
        return torch.compile(model, mode=self._mode(spec), dynamic=False)

    def after_oom(self) -> None:
        torch._dynamo.reset()


@dataclass(frozen=True)
class TensorRTOptions:
    min_block_size: int = 5  # torch_tensorrt's default: smaller PyTorch-op islands stay in PyTorch


def trt_arguments(compile_fn: Callable[..., Any], spec: RowSpec, options: TensorRTOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keyword arguments for `torch_tensorrt.dynamo.compile` as installed, and what they mean for the row.

    The model and input are already cast to the row's dtype. torch-tensorrt 2.13 removed `enabled_precisions` and
    `use_explicit_typing` (the engine is always typed from the graph); before that, a `use_explicit_typing`
    defaulting to True types from the graph too, and older releases build fp32 kernels unless
    `enabled_precisions` allows the lower precision. Since 2.12, `attn_bias_is_causal` (default True) rewrites an
    attention whose bias is square into causal attention; RMT's decay and MaxViT's relative-position bias are
    such biases, so it is passed as False wherever it exists. TensorRT runs fp32 layers in TF32 unless
    `disable_tf32`; it follows the row's --tf32 so an fp32 row means what it means for the other backends.
    """
    dtype = compute_dtype(spec.precision)
    params = inspect.signature(compile_fn).parameters
    kwargs: dict[str, Any] = {"min_block_size": options.min_block_size}
    if "enabled_precisions" not in params:
        typing = "strong typing (always on)"
    elif "use_explicit_typing" in params and params["use_explicit_typing"].default is True:
        typing = "explicit typing (default)"
    else:
        kwargs["enabled_precisions"] = {dtype}
        typing = f"enabled_precisions={str(dtype).removeprefix('torch.')}"
    if "attn_bias_is_causal" in params:
        kwargs["attn_bias_is_causal"] = False
    if "disable_tf32" in params:
        kwargs["disable_tf32"] = not spec.tf32
    info = {"trt_typing": typing, "trt_min_block_size": options.min_block_size, "trt_attn_bias_is_causal": kwargs.get("attn_bias_is_causal"),
            "trt_disable_tf32": kwargs.get("disable_tf32")}
    return kwargs, info


def trt_partition(engine: nn.Module) -> dict[str, Any]:
    """How much of the graph TensorRT took: engine submodules (`_run_on_acc_*`) against PyTorch ones (`_run_on_gpu_*`),
    and the ops left in PyTorch."""
    children = dict(engine.named_children())
    trt = [n for n in children if n.startswith("_run_on_acc")]
    torch_parts = [m for n, m in children.items() if n.startswith("_run_on_gpu")]
    ops = []
    for part in torch_parts:
        graph = getattr(part, "graph", None)
        ops += [getattr(node.target, "__name__", str(node.target)) for node in (graph.nodes if graph is not None else ()) if node.op == "call_function"]
    return {"trt_engines": len(trt), "trt_torch_subgraphs": len(torch_parts), "trt_fully_converted": not torch_parts and bool(trt),
            "trt_torch_ops": sorted(set(ops))[:20]}


class TensorRT(Backend):
    """torch_tensorrt's dynamo path: torch.export, then an engine built for this row's exact input shape."""

    name = "tensorrt"
    Options = TensorRTOptions
    autocast = False

    @staticmethod
    def _export_check(model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
        """Run the torch.export step TensorRT builds from, so a machine without TensorRT still tests it."""
        t0 = time.perf_counter()
        try:
            exported = torch.export.export(model, (x,))
        except Exception as exc:  # any export failure is the finding this check exists to report
            return {"export_ok": False, "export_error": f"{type(exc).__name__}: {_first_line(exc)}"}
        return {"export_ok": True, "export_s": time.perf_counter() - t0, "export_nodes": len(exported.graph.nodes)}

    def _unavailable(self, why: str, model: nn.Module, x: torch.Tensor, spec: RowSpec) -> BackendUnavailable:
        check = self._once_per_size(spec, lambda: self._export_check(model, x))
        if check["export_ok"]:
            found = f"torch.export.export succeeded ({check['export_nodes']} nodes, {check['export_s']:.1f} s)"
        else:
            found = f"torch.export.export failed ({check['export_error']})"
        return BackendUnavailable(f"{why}; tensorrt-export check: {found}.", check)

    def prepare(self, model: nn.Module, x: torch.Tensor, spec: RowSpec) -> Prepared:
        _no_autocast(spec, "A TensorRT engine")
        try:
            import torch_tensorrt
        except ImportError:
            raise self._unavailable("torch_tensorrt is not installed (pip install torch-tensorrt on a CUDA machine), so no engine was built", model, x, spec) from None
        if x.device.type != "cuda":
            raise self._unavailable(f"TensorRT builds engines for NVIDIA GPUs only and this row runs on {x.device.type}", model, x, spec)
        return self.build(torch_tensorrt, model, x, spec)

    def build(self, torch_tensorrt: Any, model: nn.Module, x: torch.Tensor, spec: RowSpec) -> Prepared:
        """Export and build through the installed `torch_tensorrt` module (a parameter so tests can pass a fake)."""
        t0 = time.perf_counter()
        exported = torch.export.export(model, (x,))
        export_s = time.perf_counter() - t0
        kwargs, info = trt_arguments(torch_tensorrt.dynamo.compile, spec, self.options)
        engine = torch_tensorrt.dynamo.compile(exported, inputs=[x], **kwargs)
        info.update(export_s=export_s, export_ok=True, **trt_partition(engine))
        return Prepared(engine, time.perf_counter() - t0, info)


@dataclass(frozen=True)
class OnnxRuntimeOptions:
    opset: int | None = None  # None: torch.onnx's default


class OnnxRuntime(Backend):
    """torch.onnx export (the dynamo exporter), run by ONNX Runtime: the CUDA execution provider on a GPU, CPU here."""

    name = "onnxruntime"
    Options = OnnxRuntimeOptions
    autocast = False

    def prepare(self, model: nn.Module, x: torch.Tensor, spec: RowSpec) -> Prepared:
        _no_autocast(spec, "An ONNX graph")
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailable("onnxruntime is not installed (pip install 'rmt-zoo[onnx]'), so nothing was exported.") from None
        provider = "CUDAExecutionProvider" if is_cuda(spec.device) else "CPUExecutionProvider"
        if provider not in ort.get_available_providers():
            raise BackendUnavailable(f"The installed onnxruntime has no {provider} (install onnxruntime-gpu for CUDA).")
        t0 = time.perf_counter()
        try:
            program = torch.onnx.export(model, (x,), dynamo=True, opset_version=self.options.opset, verbose=False)
            proto = program.model_proto
        except Exception as exc:  # the row's finding: this model does not export
            raise RuntimeError(f"torch.onnx.export failed ({type(exc).__name__}: {_first_line(exc)})") from None
        export_s = time.perf_counter() - t0
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=[provider])
        forward = _ort_forward(session, x)
        forward(x)  # the first run, where ONNX Runtime allocates its arenas
        synchronize(spec.device)
        info = {"export_s": export_s, "onnx_opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
                "onnx_nodes": len(proto.graph.node), "ort_provider": provider, "onnxruntime": ort.__version__}
        return Prepared(forward, time.perf_counter() - t0, info)


def _ort_forward(session: Any, x: torch.Tensor) -> Callable[[torch.Tensor], Any]:
    """A forward that feeds torch tensors to the session: through numpy on CPU; on a GPU bound in place to device
    buffers (sized by one call through numpy), so no step copies through the host."""
    names = [o.name for o in session.get_outputs()]
    feed = session.get_inputs()[0].name

    def one_or_list(tensors: list[torch.Tensor]) -> Any:
        return tensors[0] if len(tensors) == 1 else tensors

    if x.device.type == "cpu":
        return lambda x: one_or_list([torch.from_numpy(o) for o in session.run(names, {feed: x.numpy()})])
    index = x.device.index or 0
    outs = [torch.from_numpy(o).to(x.device) for o in session.run(names, {feed: x.cpu().numpy()})]

    def forward(x: torch.Tensor) -> Any:
        binding = session.io_binding()
        binding.bind_input(feed, "cuda", index, _numpy_dtype(x), tuple(x.shape), x.data_ptr())
        for name, out in zip(names, outs):
            binding.bind_output(name, "cuda", index, _numpy_dtype(out), tuple(out.shape), out.data_ptr())
        session.run_with_iobinding(binding)
        return one_or_list(outs)

    return forward


def _numpy_dtype(t: torch.Tensor) -> Any:
    return torch.empty((), dtype=t.dtype).numpy().dtype


BACKENDS: dict[str, type[Backend]] = {cls.name: cls for cls in (Eager, Compile, TensorRT, OnnxRuntime)}


def make_backend(name: str, options: dict[str, Any] | None = None) -> Backend:
    cls = BACKENDS[name]
    return cls(cls.Options(**(options or {})))
