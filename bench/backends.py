"""Backends turn an eval-mode model into a forward function for one input shape (and, where they can, a module to
train through).

A backend is one class, listed once in `BACKENDS`: its `name`, its `Options` dataclass (each field declares its own
command-line flag through `option(...)`, which the CLI adds and sweeps), which precisions it runs, the pip extra and
distributions it needs, and `unavailable_reason`, asked once per run before any model is built. Each reports its
own build cost (`compile_s`) and diagnostics; a row it cannot run after all raises `spec.Unavailable` with the
one-sentence reason that goes into the row. A new backend is one class here plus its extra in pyproject.toml.
"""

from __future__ import annotations

import importlib.util
import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
import torch.nn as nn

from .device import is_cuda, synchronize
from .args import positive_int
from .options import NoOptions, option
from .precision import autocast, names, precision
from .spec import RowSpec, first_line

__all__ = [
    "BACKENDS",
    "Prepared",
    "Backend",
    "Eager",
    "Compile",
    "TensorRT",
    "OnnxRuntime",
    "make_backend",
    "options_label",
    "trt_arguments",
    "trt_partition",
]


@dataclass
class Prepared:
    forward: Callable[[torch.Tensor], Any]
    compile_s: float | None = None
    info: dict[str, Any] = field(default_factory=dict)


def options_label(options: dict[str, Any]) -> str:
    """How a row's non-default backend options read in a table: "mode=max-autotune"."""
    return ", ".join(f"{k}={v}" for k, v in sorted(options.items()))


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
    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    runs_autocast: ClassVar[bool] = True  # graph compilers build for one cast precision instead
    trains: ClassVar[bool] = False  # has a training step (`for_training`)
    extra: ClassVar[str | None] = None  # the pip extra that installs what it needs
    distributions: ClassVar[tuple[str, ...]] = ()  # versions recorded in each row's env

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()
        self._per_size: dict[tuple[int, int], dict[str, Any]] = {}

    @classmethod
    def unavailable_reason(cls, device: str) -> str | None:
        """Why this backend cannot run on `device` on this machine at all, asked before any model is built."""
        return None

    @classmethod
    def refusal(cls, spec: RowSpec) -> str | None:
        """Why this backend cannot run `spec` here, known before any model is built; None when it can."""
        if precision(spec.precision).autocast and not cls.runs_autocast:
            cast = ", ".join(names(autocast=False))
            return f"The {cls.name} backend builds for one precision ({cast}), so autocast does not apply."
        if spec.mode == "train" and not cls.trains:
            return f"The {cls.name} backend builds inference-only graphs, so it has no training step to time."
        return cls.unavailable_reason(spec.device)

    def _once_per_size(self, spec: RowSpec, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Diagnostics that do not depend on the batch size, computed at the first row of each input size."""
        if spec.input_size not in self._per_size:
            self._per_size[spec.input_size] = compute()
        return self._per_size[spec.input_size]

    def prepare(self, model: nn.Module, x: torch.Tensor, spec: RowSpec) -> Prepared:
        raise NotImplementedError

    def for_training(self, model: nn.Module, spec: RowSpec) -> nn.Module:
        """The module a training step runs through (backends with `trains`)."""
        raise NotImplementedError

    def after_oom(self) -> None:
        """Drop whatever the backend caches, so the next row starts clean after an out-of-memory error."""


class Eager(Backend):
    name = "eager"
    trains = True

    def prepare(self, model: nn.Module, x: torch.Tensor, spec: RowSpec) -> Prepared:
        return Prepared(_with_precision(model, spec))

    def for_training(self, model: nn.Module, spec: RowSpec) -> nn.Module:
        return model


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class CompileOptions:
    mode: str = field(
        default="default",
        metadata=option(
            "--compile-mode",
            "torch.compile mode(s); reduce-overhead and max-autotune use CUDA graphs on a GPU",
            choices=COMPILE_MODES,
        ),
    )


class Compile(Backend):
    """torch.compile with a static shape per row; graph breaks from torch._dynamo.explain."""

    name = "compile"
    Options = CompileOptions
    trains = True

    def _mode(self) -> str | None:
        return None if self.options.mode == "default" else self.options.mode

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
        return {
            "graphs": explanation.graph_count,
            "graph_breaks": len(reasons),
            "break_reasons": list(dict.fromkeys(reasons))[:5],
        }

    def prepare(self, model: nn.Module, x: torch.Tensor, spec: RowSpec) -> Prepared:
        info = self._once_per_size(spec, lambda: self._graph_breaks(model, x, spec))
        torch._dynamo.reset()  # a fresh cache per row: its compile time and recompiles are its own
        forward = _with_precision(torch.compile(model, mode=self._mode(), dynamic=False), spec)
        return Prepared(forward, _first_call_s(forward, x, spec.device), dict(info))

    def for_training(self, model: nn.Module, spec: RowSpec) -> nn.Module:
        torch._dynamo.reset()
        return torch.compile(model, mode=self._mode(), dynamic=False)

    def after_oom(self) -> None:
        torch._dynamo.reset()


@dataclass(frozen=True)
class TensorRTOptions:
    min_block_size: int = field(
        default=5,
        metadata=option(  # torch_tensorrt's default
            "--trt-min-block-size",
            "TensorRT: smallest op island converted; smaller ones stay in PyTorch",
            type=positive_int,
        ),
    )


def trt_arguments(
    compile_fn: Callable[..., Any], spec: RowSpec, options: TensorRTOptions
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keyword arguments for `torch_tensorrt.dynamo.compile` as installed, and what they mean for the row.

    The model and input are already cast to the row's dtype. torch-tensorrt 2.13 removed `enabled_precisions` and
    `use_explicit_typing` (the engine is always typed from the graph); before that, a `use_explicit_typing`
    defaulting to True types from the graph too, and older releases build fp32 kernels unless
    `enabled_precisions` allows the lower precision. Since 2.12, `attn_bias_is_causal` (default True) rewrites an
    attention whose bias is square into causal attention; RMT's decay and MaxViT's relative-position bias are
    such biases, so it is passed as False wherever it exists. TensorRT runs fp32 layers in TF32 unless
    `disable_tf32`; it follows the row's --tf32 so an fp32 row means what it means for the other backends.
    """
    dtype = precision(spec.precision).compute_dtype
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
    info = {
        "trt_typing": typing,
        "trt_min_block_size": options.min_block_size,
        "trt_attn_bias_is_causal": kwargs.get("attn_bias_is_causal"),
        "trt_disable_tf32": kwargs.get("disable_tf32"),
    }
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
        ops += [
            getattr(node.target, "__name__", str(node.target))
            for node in (graph.nodes if graph is not None else ())
            if node.op == "call_function"
        ]
    return {
        "trt_engines": len(trt),
        "trt_torch_subgraphs": len(torch_parts),
        "trt_fully_converted": not torch_parts and bool(trt),
        "trt_torch_ops": sorted(set(ops))[:20],
    }


class TensorRT(Backend):
    """torch_tensorrt's dynamo path: torch.export, then an engine built for this row's exact input shape."""

    name = "tensorrt"
    Options = TensorRTOptions
    runs_autocast = False
    extra = "tensorrt"
    distributions = ("torch-tensorrt", "tensorrt")

    @classmethod
    def unavailable_reason(cls, device: str) -> str | None:
        if importlib.util.find_spec("torch_tensorrt") is None:
            return (
                "torch_tensorrt is not installed (pip install 'rmt-zoo[tensorrt]' on a CUDA machine), "
                "so no engine was built."
            )
        if not is_cuda(device):
            return f"TensorRT builds engines for NVIDIA GPUs only and this run is on {torch.device(device).type}."
        return None

    def prepare(self, model: nn.Module, x: torch.Tensor, spec: RowSpec) -> Prepared:
        import torch_tensorrt

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
    opset: int | None = field(
        default=None,
        metadata=option(  # None: torch.onnx's default
            "--onnx-opset", "ONNX Runtime: opset(s) to export (default torch.onnx's)", type=positive_int
        ),
    )


class OnnxRuntime(Backend):
    """torch.onnx export (the dynamo exporter), run by ONNX Runtime: the CUDA execution provider on a GPU, CPU here."""

    name = "onnxruntime"
    Options = OnnxRuntimeOptions
    runs_autocast = False
    extra = "onnx"
    distributions = ("onnxruntime", "onnxruntime-gpu", "onnx")

    @staticmethod
    def _provider(device: str) -> str:
        return "CUDAExecutionProvider" if is_cuda(device) else "CPUExecutionProvider"

    @classmethod
    def unavailable_reason(cls, device: str) -> str | None:
        try:
            import onnxruntime as ort
        except ImportError:
            return "onnxruntime is not installed (pip install 'rmt-zoo[onnx]'), so nothing was exported."
        if cls._provider(device) not in ort.get_available_providers():
            return f"The installed onnxruntime has no {cls._provider(device)} (install onnxruntime-gpu for CUDA)."
        return None

    def prepare(self, model: nn.Module, x: torch.Tensor, spec: RowSpec) -> Prepared:
        import onnxruntime as ort

        provider = self._provider(spec.device)
        t0 = time.perf_counter()
        try:
            program = torch.onnx.export(model, (x,), dynamo=True, opset_version=self.options.opset, verbose=False)
            proto = program.model_proto
        except Exception as exc:  # the row's finding: this model does not export
            raise RuntimeError(f"torch.onnx.export failed ({type(exc).__name__}: {first_line(exc, 200)})") from None
        export_s = time.perf_counter() - t0
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=[provider])
        forward = _ort_forward(session, x)
        forward(x)  # the first run, where ONNX Runtime allocates its arenas
        synchronize(spec.device)
        info = {
            "export_s": export_s,
            "onnx_opset": next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None),
            "onnx_nodes": len(proto.graph.node),
            "ort_provider": provider,
            "onnxruntime": ort.__version__,
        }
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
    """A backend with `options` (non-default values, as rows store them) over its defaults."""
    cls = BACKENDS[name]
    return cls(cls.Options(**(options or {})))
