"""Predicting a CUDA GPU's work on a CPU: kernels and bytes per forward, eager and compiled, with no GPU or driver.

The model runs on fake CUDA tensors (FakeTensorMode, device cuda): shapes, dtypes and strides are exact, no data exists.
`torch.cuda.is_available` and `is_bf16_supported` are patched so `torch.autocast("cuda", torch.bfloat16)` applies its
real CUDA policy; the four Python bindings that take a CUDA device guard (and fail without a driver),
`Tensor.__getitem__`, `Tensor.contiguous`, `Tensor.copy_` and `torch.tensor(..., device=)`, are served in Python for
fake tensors.

Eager (`eager_trace`): one forward under `torch.no_grad()` (not inference_mode, which leaves composite ops whole), after
a warm-up forward that fills the models' caches, seen by a TorchDispatchMode below autocast: every aten op as the GPU
would receive it. An op is one kernel unless it is a view or a bare allocation (an approximation: cuDNN may add a bias
kernel or a layout kernel to a convolution, cuBLAS a split-K reduction); its bytes are the sum of its input and output
tensors' bytes (broadcast dimensions, stride 0, counted once), so an in-place add counts read, read, write. A custom op
(any namespace but aten) counts as it declares (zoo/_op_cost.py: its launches and bytes from its own launch plan); one
that declares nothing counts as one kernel moving its inputs and outputs once, with a warning, and the report lists it.
Ops are attributed to the innermost module running (forward hooks) and summed per block.

Compiled (`compiled_kernels`): the forward is traced to an aten graph by make_fx under the same fake mode (autocast
applied, `torch.compiler.is_compiling()` answering True as under dynamo, module paths recorded per node), and inductor
compiles it for a pretend H200 (sm_90 properties, capability (9, 0)); shape padding, comprehensive padding and
joint-graph constant folding are off, since they run kernels. Inductor is stopped before code generation; its
scheduler's nodes after fusion are the launches, and each node's read/write buffer sizes
(`get_read_write_buffers_sizes`, the sizes inductor itself uses for its bandwidth metrics) are its bytes, except a
custom op's, which inductor sees as one extern node moving inputs and outputs once: its declared cost replaces that
(undeclared: kept, and reported). The pretend H200 reports its DRAM bandwidth (4.8 TB/s) to inductor's fusion costs,
which a real one takes from the driver: without it every call fails and inductor takes another branch. No Triton code is
generated, so Triton's driver is never asked for a target (`triton.compile` with `GPUTarget("cuda", 90, 32)` compiles a
kernel for sm_90 where that is wanted). A launch belongs to the block of its latest origin op in graph order. make_fx
rather than torch.export: export wraps autocast in a higher-order op whose inlining loses the module path of every node;
both give swin_t the same 294 launches and 42.68 GB.

Training step (`eager_train_trace`, `compiled_train_kernels`): forward in train mode, a loss (log-sum-exp of the
logits: cross-entropy's traffic) and backward to every parameter's gradient; no optimizer step. Autograd asks a CUDA
driver for streams, so the forward is traced on fake CUDA with no gradient recorded (the model told that gradients
are: `torch.is_grad_enabled()` answers True) and differentiated on meta tensors: eager, the aten ops autograd runs,
replayed on fake CUDA under the tracer; compiled, AOTAutograd's forward and backward graphs (inductor's
decompositions and partitioner) each compiled by `compile_fx_inner` as above, random ops (drop-path) as fallback
kernels where inductor would fuse them, the backward's launches in a block "(backward)".

Time (`predict_ms`): bytes over an effective bandwidth, calibrated on the one H200 measurement (results/h200, torch
2.11, bf16, batch 256): compiled swin_t 42.7 GB in 20.98 ms (2.03 TB/s), compiled official RMT-S 105.7 GB in 49.13 ms
(2.15 TB/s), hence COMPILED_TBPS = 2.1 (both within 5%); eager plain-op code ran at 1.5-1.7 TB/s, hence EAGER_TBPS =
1.6. Opaque library kernels (attention, convolution) can run far from that (cuDNN SDPA on 7-56-key rows: 0.2 TB/s), so
their kernels and bytes are reported apart. Every time from here is a prediction and is labelled so.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import functools
import re
import types
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator
from unittest import mock

import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from zoo._op_cost import cost_of

aten = torch.ops.aten

COMPILED_TBPS = 2.1  # inductor bytes / measured compiled time on the H200 (see the module docstring)
EAGER_TBPS = 1.6  # eager plain-op bytes / measured time on the H200: 1.5-1.7
# Ops that launch one library kernel whose speed does not follow its bytes.
OPAQUE = ("convolution", "_scaled_dot_product", "_flash_attention", "_efficient_attention", "_cudnn_attention")
# Ops that allocate or alias and launch nothing (_unsafe_view is a view its schema does not mark as one).
NO_KERNEL = {
    "_unsafe_view",
    "empty",
    "empty_strided",
    "empty_like",
    "new_empty",
    "new_empty_strided",
    "lift_fresh",
    "detach",
}
# The pretend device: an H200's properties as torch.cuda.get_device_properties reports them.
H200 = types.SimpleNamespace(
    name="NVIDIA H200",
    major=9,
    minor=0,
    multi_processor_count=132,
    total_memory=150_096_871_424,
    warp_size=32,
    max_threads_per_multi_processor=2048,
    max_threads_per_block=1024,
    regs_per_multiprocessor=65536,
    shared_memory_per_block=49152,
    shared_memory_per_block_optin=232448,
    shared_memory_per_multiprocessor=233472,
    L2_cache_size=50 << 20,
    gcnArchName="NVIDIA H200",
    is_integrated=False,
    is_multi_gpu_board=False,
    uuid="00000000-0000-0000-0000-000000000000",
)

# An H200's DRAM bandwidth in GB/s, NVIDIA's H200 datasheet (4.8 TB/s, HBM3e, SXM and NVL alike). Inductor's
# datasheet table (torch/_inductor/analysis/device_info.py) has no H200 and asks the driver otherwise, which fails here.
H200_DRAM_GBPS = 4800.0

_BLOCK = re.compile(r"^(.*?\bblocks\.\d+)(?:\.|$)")


def block_of(path: str) -> str:
    """The block a module path belongs to: its `...blocks.N` prefix, else its stage (`layers.2`) or top module."""
    found = _BLOCK.match(path)
    if found:
        return found.group(1)
    parts = path.split(".")
    if len(parts) > 1 and parts[1].isdigit():
        return ".".join(parts[:2])
    return parts[0] or "(model)"


# --- fake CUDA -------------------------------------------------------------------------------------------------------

_getitem, _contiguous, _copy, _tensor = (
    torch.Tensor.__getitem__,
    torch.Tensor.contiguous,
    torch.Tensor.copy_,
    torch.tensor,
)
_sdpa = torch.nn.functional.scaled_dot_product_attention


def _fake_cuda(t: object) -> bool:
    return isinstance(t, FakeTensor) and t.device.type == "cuda"


def _fake_getitem(self: torch.Tensor, index):
    """Basic and advanced indexing (ints, slices, None, Ellipsis, index tensors) as the C++ binding applies it:
    views first, then one aten.index for the tensor indices."""
    if not _fake_cuda(self):
        return _getitem(self, index)
    index = index if isinstance(index, tuple) else (index,)
    real = sum(1 for i in index if i is not None and i is not Ellipsis)
    out, dim, tensors = self, 0, []
    for i in index:
        if i is Ellipsis:
            skip = self.dim() - real
            dim, tensors = dim + skip, tensors + [None] * skip
        elif i is None:
            out, dim = aten.unsqueeze.default(out, dim), dim + 1
            tensors.append(None)
        elif isinstance(i, bool) or not isinstance(i, (int, slice, torch.Tensor)):
            raise TypeError(f"fake CUDA indexing does not serve {type(i).__name__} indices")
        elif isinstance(i, int):
            out = aten.select.int(out, dim, i)
        elif isinstance(i, slice):
            out = aten.slice.Tensor(out, dim, i.start, i.stop, 1 if i.step is None else i.step)
            dim += 1
            tensors.append(None)
        else:
            dim += 1
            tensors.append(i)
    if any(t is not None for t in tensors):
        while tensors[-1] is None:
            tensors.pop()
        out = aten.index.Tensor(out, tensors)
    return out


def _fake_contiguous(self: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format):
    if not _fake_cuda(self):
        return _contiguous(self, memory_format=memory_format)
    return (
        self
        if self.is_contiguous(memory_format=memory_format)
        else aten.clone.default(self, memory_format=memory_format)
    )


def _fake_copy(self: torch.Tensor, src: torch.Tensor, non_blocking: bool = False) -> torch.Tensor:
    """In-place copy (BatchNorm's running statistics in train mode), whose binding takes a device guard."""
    return aten.copy_.default(self, src, non_blocking) if _fake_cuda(self) else _copy(self, src, non_blocking)


def _fake_tensor(data, *args, device=None, **kwargs):
    """torch.tensor on CUDA: an uninitialised fake tensor of the right shape and dtype (values are never read)."""
    if device is None or torch.device(device).type != "cuda":
        return _tensor(data, *args, device=device, **kwargs)
    host = _tensor(data, *args, **kwargs)
    return torch.empty(host.shape, dtype=host.dtype, device=device)


def _fake_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """SDPA in half precision on fake CUDA: cuDNN's fused kernel, which the H200 ran (torch 2.11, sm_90, with or
    without a mask); without a driver torch's own backend choice falls back to the math path."""
    dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else query.dtype
    if not (_fake_cuda(query) and dtype in (torch.bfloat16, torch.float16) and not enable_gqa):
        return _sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
    query, key, value = (t.to(dtype) for t in (query, key, value))  # autocast's casts, as it makes them for SDPA
    if attn_mask is not None:
        attn_mask = attn_mask.to(dtype).expand(*query.shape[:-1], key.shape[-2])
    return aten._scaled_dot_product_cudnn_attention(
        query, key, value, attn_mask, False, dropout_p, is_causal, False, scale=scale
    )[0]


@contextlib.contextmanager
def fake_cuda() -> Iterator[FakeTensorMode]:
    """A fake mode for CUDA tensors and the patches that let models and autocast run on them with no driver."""
    with contextlib.ExitStack() as stack:
        for target, value in (
            ("torch.cuda.is_available", lambda: True),
            ("torch.cuda.is_bf16_supported", lambda *_a, **_k: True),
            ("torch.tensor", _fake_tensor),
            ("torch.nn.functional.scaled_dot_product_attention", _fake_sdpa),
        ):
            stack.enter_context(mock.patch(target, value))
        stack.enter_context(mock.patch.object(torch.Tensor, "__getitem__", _fake_getitem))
        stack.enter_context(mock.patch.object(torch.Tensor, "contiguous", _fake_contiguous))
        stack.enter_context(mock.patch.object(torch.Tensor, "copy_", _fake_copy))
        # RMT's position cache keys its entries by storage pointer; a fake storage has none, and no data moves anyway.
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
        yield FakeTensorMode()


@contextlib.contextmanager
def pretend_h200() -> Iterator[None]:
    """torch.cuda's device queries answering as an H200 (sm_90), for inductor's choices; no kernel is launched."""
    from torch._dynamo import device_interface
    from torch._inductor.analysis import device_info
    from torch._inductor.analysis.device_info import DeviceInfo

    interface = device_interface.CudaInterface
    with contextlib.ExitStack() as stack:
        for target, value in (
            ("torch.cuda.get_device_properties", lambda *_a, **_k: H200),
            ("torch.cuda.get_device_capability", lambda *_a, **_k: (H200.major, H200.minor)),
            ("torch.cuda.get_device_name", lambda *_a, **_k: H200.name),
            ("torch.cuda.current_device", lambda: 0),
            ("torch.cuda.device_count", lambda: 1),
            ("torch.cuda.set_device", lambda *_a: None),
            ("torch.cuda._exchange_device", lambda _i: 0),
            ("torch.cuda._maybe_exchange_device", lambda _i: 0),
            ("torch.cuda.get_rng_state", lambda *_a, **_k: torch.zeros(16, dtype=torch.uint8)),
            ("torch.cuda.set_rng_state", lambda *_a, **_k: None),
        ):
            stack.enter_context(mock.patch(target, value))
        for name, value in (("get_device_properties", lambda *_a, **_k: H200), ("current_device", lambda: 0),
                            ("device_count", lambda: 1)):  # fmt: skip
            stack.enter_context(mock.patch.object(interface, name, staticmethod(value)))
        stack.enter_context(mock.patch.dict(device_interface.caching_worker_device_properties, {"cuda": [H200]}))
        # Inductor's fusion costs divide bytes by the DRAM bandwidth (`get_gpu_dram_gbps`); with no tops listed, its
        # FLOP estimates ask the driver as before.
        datasheet = DeviceInfo(tops={}, dram_bw_gbs=H200_DRAM_GBPS, dram_gb=H200.total_memory / 1e9)
        stack.enter_context(mock.patch.dict(device_info._device_mapping, {H200.name.upper(): datasheet}))
        # torch caches whether Triton can run: an earlier CPU compile in this process answered "no CUDA device".
        # Asked afresh here (an H200), and afresh again after, so nothing outside sees the pretend answer.
        has_triton = torch.utils._triton.has_triton
        has_triton.cache_clear()
        stack.callback(has_triton.cache_clear)
        yield


def to_fake_cuda(model: nn.Module, mode: FakeTensorMode) -> nn.Module:
    """A copy of the model with every parameter and buffer a fake CUDA tensor of the same shape, dtype and strides;
    its parameters do not require grad (autocast's weight-cast cache would otherwise ask the driver for a stream)."""
    model = copy.deepcopy(model).requires_grad_(False)

    def convert(t: torch.Tensor) -> torch.Tensor:
        with mode:
            return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cuda")

    return model._apply(convert)


# --- eager -----------------------------------------------------------------------------------------------------------


def _extent_bytes(t: torch.Tensor) -> int:
    """Bytes a kernel touches for `t`: its element size times the sizes of the dimensions it does not broadcast."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
    return n * t.element_size()


def _is_view(func: torch._ops.OpOverload) -> bool:
    returns = func._schema.returns
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)


@dataclass
class OpStats:
    """Kernels and bytes of some ops, and how many of them are opaque library kernels."""

    kernels: int = 0
    bytes: int = 0
    opaque_kernels: int = 0
    opaque_bytes: int = 0

    def add(self, nbytes: int, opaque: bool, kernels: int = 1) -> None:
        self.kernels += kernels
        self.bytes += nbytes
        if opaque:
            self.opaque_kernels += kernels
            self.opaque_bytes += nbytes


@dataclass
class EagerTrace:
    """What ran under a `Tracer`: calls per op (views included), kernels and bytes per op, per block and in all,
    and the dtype casts among them (`_to_copy` changing dtype)."""

    calls: collections.Counter = field(default_factory=collections.Counter)
    per_op: dict[str, OpStats] = field(default_factory=lambda: collections.defaultdict(OpStats))
    per_block: dict[str, OpStats] = field(default_factory=lambda: collections.defaultdict(OpStats))
    total: OpStats = field(default_factory=OpStats)
    casts: int = 0
    undeclared: collections.Counter = field(default_factory=collections.Counter)


def _undeclared(name: str, seen: collections.Counter) -> None:
    """Note a call of a custom op that declared no cost (zoo/_op_cost.py): it is counted as one kernel moving its
    inputs and outputs once, which may be far from what it runs, so the report lists it and a warning says so."""
    if not seen[name]:
        warnings.warn(f"{name} declared no GPU cost (zoo/_op_cost.py): counted as one kernel reading its inputs and "
                      "writing its outputs once.", stacklevel=3)  # fmt: skip
    seen[name] += 1


def is_kernel(func: torch._ops.OpOverload) -> bool:
    """Whether an aten op launches a kernel: the one definition every script of the proxy counts by."""
    return func.overloadpacket.__name__ not in NO_KERNEL and not _is_view(func)


class Tracer(TorchDispatchMode):
    """Counts every op dispatched inside it into `trace`, attributed to the block `where()` names; on any device
    (the proxy's fake CUDA, or real CPU tensors)."""

    def __init__(self, trace: EagerTrace, where: Callable[[], str] = lambda: ""):
        super().__init__()
        self.trace, self.where = trace, where

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.namespace == "prim":  # TorchScript's metadata queries (prim::device): no kernel, no custom op
            return out
        custom = func.namespace != "aten"
        name = func._schema.name if custom else func.overloadpacket.__name__
        self.trace.calls[name] += 1
        if not custom and not is_kernel(func):
            return out
        if name == "_to_copy" and out.dtype != args[0].dtype:
            self.trace.casts += 1
        nbytes = sum(_extent_bytes(t) for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor))
        kernels, opaque = 1, name.startswith(OPAQUE)
        if custom:
            cost = cost_of(name, *args, **kwargs)
            if cost is None:
                _undeclared(name, self.trace.undeclared)
            else:
                kernels, nbytes = cost.launches, cost.bytes
        for stats in (self.trace.per_op[name], self.trace.per_block[block_of(self.where())], self.trace.total):
            stats.add(nbytes, opaque, kernels)
        return out


@contextlib.contextmanager
def module_paths(model: nn.Module, on_enter: Callable[[str, nn.Module], None] | None = None,
                 on_exit: Callable[[str], None] | None = None) -> Iterator[Callable[[], str]]:  # fmt: skip
    """While open, a function giving the path of the innermost module of `model` running (the model's is "")."""
    names = {id(m): name for name, m in model.named_modules()}
    stack = [""]

    def pre(module, _args):
        if id(module) in names:
            stack.append(names[id(module)])
            if on_enter:
                on_enter(stack[-1], module)

    def post(module, _args, _out):
        if id(module) in names and len(stack) > 1:
            path = stack.pop()
            if on_exit:
                on_exit(path)

    hooks = (nn.modules.module.register_module_forward_pre_hook(pre),
             nn.modules.module.register_module_forward_hook(post, always_call=True))  # fmt: skip
    try:
        yield lambda: stack[-1]
    finally:
        for h in hooks:
            h.remove()


def _autocast(dtype: torch.dtype | None, cache: bool = True):
    """CUDA autocast to `dtype` (None: none); `cache=False` where parameters require grad, whose cached casts would
    ask a driver for a stream."""
    return torch.autocast("cuda", dtype, cache_enabled=cache) if dtype is not None else contextlib.nullcontext()


def eager_trace(
    model: nn.Module, batch: int, size: int = 224, autocast: torch.dtype | None = torch.bfloat16
) -> EagerTrace:
    """Kernels and bytes of one eager forward of `model` (built on the CPU, any weights) on fake CUDA, batch x 3 x
    size x size, under autocast to `autocast` (None: fp32); the second forward is traced, after a warm-up."""
    trace = EagerTrace()
    with fake_cuda() as mode:
        model = to_fake_cuda(model, mode)
        with mode:
            x = torch.empty(batch, 3, size, size, device="cuda")
        with mode, torch.no_grad(), _autocast(autocast):
            model(x)
        with mode, torch.no_grad(), _autocast(autocast), module_paths(model) as where, Tracer(trace, where):
            model(x)
    return trace


# --- compiled --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    """One scheduler node of inductor's compiled graph: its kind, bytes read and written, block, and the kernels it
    launches (a custom op's declared count; 1 otherwise); `op` names a custom op, `undeclared` one with no cost."""

    kind: str
    bytes: int
    block: str
    launches: int = 1
    op: str | None = None
    undeclared: bool = False

    @property
    def opaque(self) -> bool:
        """A library kernel (an extern call, not a custom op): its speed need not follow its bytes."""
        return self.kind == "ExternKernelSchedulerNode" and self.op is None


def _custom_op_launch(node, block: str, undeclared: collections.Counter, mode: FakeTensorMode) -> Launch | None:
    """A custom op's node as the op declared it (zoo/_op_cost.py), called on its arguments' fake values in their fake
    `mode` (a declaration may allocate, as launch plans do, and inductor's scheduler runs with no fake mode active);
    None for any other node. Inductor's own estimate (one kernel moving inputs and outputs once) stays where none is
    declared."""
    op = getattr(node.node, "op_overload", None)
    if not isinstance(op, torch._ops.OpOverload) or op.namespace == "aten":
        return None
    name = op._schema.name
    origin = next((o for o in node.node.get_origins() if o.target is op), None)
    value = lambda n: n.meta["val"]  # noqa: E731
    with mode:
        cost = cost_of(name, *torch.fx.node.map_arg(origin.args, value), **torch.fx.node.map_arg(origin.kwargs, value))
    if cost is None:
        _undeclared(name, undeclared)
        return Launch(type(node).__name__, node.get_read_write_buffers_sizes(), block, op=name, undeclared=True)
    return Launch(type(node).__name__, cost.bytes, block, cost.launches, op=name)


class _Stop(Exception):
    """Raised by the patched scheduler once it has fused: code generation is not needed."""


def _stopped(error: BaseException | None) -> bool:
    """Whether `error` is, or was raised while handling, `_Stop`: the scheduler finished, not failed halfway."""
    while error is not None:
        if isinstance(error, _Stop):
            return True
        error = error.__cause__ or error.__context__
    return False


def _launch_block(node, path: Callable[[torch.fx.Node], str | None], order: dict[torch.fx.Node, int]) -> str:
    """The block of a launch's latest origin in graph order: origins accumulate every op inlined into a buffer,
    back to earlier blocks, and the last one is where the kernel's output is made."""
    origins = [o for sub in node.get_nodes() if sub.node is not None for o in sub.node.get_origins() if path(o)]
    return block_of(path(max(origins, key=lambda o: order.get(o, -1)))) if origins else "(model)"


def _module_path(origin: torch.fx.Node) -> str | None:
    stack = origin.meta.get("nn_module_stack")
    return next(reversed(stack.values()))[0] if stack else None


def inductor_launches(
    graph: torch.fx.GraphModule, inputs: list[torch.Tensor], mode: FakeTensorMode, backward: bool | None = None
) -> list[Launch]:
    """Inductor's launches for `graph` (an aten graph on fake CUDA `inputs`, in `mode`) on a pretend H200: its
    scheduler's nodes after fusion, code generation stopped before it starts (see the module docstring).
    `backward` given: `graph` is one of AOTAutograd's partitioned graphs (inductor's decompositions applied), compiled
    as torch.compile compiles it (`compile_fx_inner`), random ops as fallback kernels."""
    from torch._inductor.compile_fx import compile_fx_inner
    from torch._inductor.virtualized import V
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    from torch._inductor import config as inductor_config
    from torch._inductor import scheduler as inductor_scheduler
    from torch._inductor.ir import MultiOutput

    launches: list[Launch] = []
    undeclared: collections.Counter = collections.Counter()

    def capture(scheduler) -> None:
        from torch._inductor.virtualized import V

        order = {n: i for i, n in enumerate(V.graph.graph.nodes)}
        for node in scheduler.nodes:
            if isinstance(node, inductor_scheduler.NopKernelSchedulerNode) or isinstance(node.node, MultiOutput):
                continue  # no kernel: an allocation or a view, or one output of a multi-output kernel
            block = _launch_block(node, _module_path, order)
            launches.append(
                _custom_op_launch(node, block, undeclared, mode)
                or Launch(type(node).__name__, node.get_read_write_buffers_sizes(), block)
            )
        raise _Stop

    patches = dict(shape_padding=False, comprehensive_padding=False, joint_graph_constant_folding=False)
    if backward is None:
        compile_ = torch._inductor.compile
    else:  # its nodes' values are the meta tensors it was traced on: made fake CUDA again first
        FakeTensorProp(graph, mode).propagate(*inputs)
        compile_ = functools.partial(compile_fx_inner, is_backward=backward)
        patches["fallback_random"] = True  # inductor replaces random ops before partitioning, which ran elsewhere
    with pretend_h200(), mode, torch.no_grad(), inductor_config.patch(patches), V.set_fake_mode(mode):
        with mock.patch.object(inductor_scheduler.Scheduler, "codegen", capture):
            try:
                compile_(graph, inputs)
            except Exception as error:  # inductor wraps _Stop in its own error; any other error is the count's
                if not _stopped(error):
                    raise
    return launches


def _forward_graph(
    model: nn.Module,
    batch: int,
    size: int,
    autocast: torch.dtype | None,
    mode: FakeTensorMode,
    train: bool = False,
    compiling: bool = True,
) -> tuple[torch.fx.GraphModule, list[torch.Tensor]]:
    """The forward of `model` (already on fake CUDA) as an aten graph of (*parameters, *buffers, images), autocast
    applied, each node with its module path; `compiling`: `torch.compiler.is_compiling()` answering True as under
    dynamo; `train`: as a training step takes it (see `_train_step`)."""
    from torch.fx.experimental.proxy_tensor import get_proxy_mode, make_fx

    def enter(path_: str, module: nn.Module) -> None:  # make_fx's tracer records this stack on every node it creates
        proxy = get_proxy_mode()
        if proxy is not None:
            proxy.tracer.module_stack[path_ or "(model)"] = (path_, type(module).__qualname__)

    def leave(path_: str) -> None:
        proxy = get_proxy_mode()
        if proxy is not None:
            proxy.tracer.module_stack.pop(path_ or "(model)", None)

    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    with mode:
        inputs = [*state.values(), torch.empty(batch, 3, size, size, device="cuda")]

    def forward(*flat):
        with _autocast(autocast, cache=not train):
            return torch.func.functional_call(model, dict(zip(state, flat[:-1])), (flat[-1],))

    grad = mock.patch("torch.is_grad_enabled", lambda: True) if train else contextlib.nullcontext()
    compile_ = mock.patch("torch.compiler.is_compiling", lambda: True) if compiling else contextlib.nullcontext()
    with mode, torch.no_grad(), grad, compile_:
        with module_paths(model, enter, leave):
            return make_fx(forward)(*inputs), inputs


def compiled_kernels(
    model: nn.Module, batch: int, size: int = 224, autocast: torch.dtype | None = torch.bfloat16
) -> list[Launch]:
    """Inductor's launches for one compiled forward of `model` on a pretend H200 (see the module docstring)."""
    with fake_cuda() as mode, pretend_h200():
        graph, inputs = _forward_graph(to_fake_cuda(model, mode), batch, size, autocast, mode)
        return inductor_launches(graph, inputs, mode)


# --- training step ---------------------------------------------------------------------------------------------------


def _on_device(graph: torch.fx.GraphModule, device: str, make: Callable[[torch.Tensor], torch.Tensor]):
    """`graph` (changed in place) with every device argument `device` and every tensor constant remade by `make`."""
    target = torch.device(device)
    move = lambda a: target if isinstance(a, torch.device) else a  # noqa: E731
    for node in graph.graph.nodes:
        node.args, node.kwargs = torch.fx.node.map_aggregate((node.args, node.kwargs), move)
        if node.op == "get_attr" and isinstance(getattr(graph, node.target), torch.Tensor):
            setattr(graph, node.target, make(getattr(graph, node.target)))
    graph.recompile()
    return graph


def _like(t: torch.Tensor, device: str) -> torch.Tensor:
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device)


def _train_step(
    model: nn.Module, batch: int, size: int, autocast: torch.dtype | None, compiling: bool, mode: FakeTensorMode
) -> tuple[Callable[..., torch.Tensor], list[torch.Tensor], int]:
    """The loss of one training step of `model` (on fake CUDA) as a function of (*parameters, *buffers, images) on
    meta tensors, and those inputs (parameters requiring grad) and the number of parameters.

    The forward is traced on fake CUDA, in train mode, as `_forward_graph` does (autocast's CUDA policy applied,
    `compiling`: the branches a compiled graph takes), under no_grad with `torch.is_grad_enabled()` answering True
    and the parameters requiring grad, so the model takes its training branches while autograd, which asks a CUDA
    driver for streams, records nothing. A branch on an intermediate tensor's `requires_grad` sees False (RMT's:
    its fp32 complex rotary and its Triton op, neither taken by a bf16 step of attn_impl "auto"). The graph then
    moves to meta tensors, where autograd runs."""

    model = model.train().requires_grad_(True)
    params = len(list(model.parameters()))
    if not compiling:  # the eager path, after a forward that fills the model's caches (their tables: graph constants)
        with mode, torch.no_grad(), _autocast(autocast, cache=False):
            model(torch.empty(batch, 3, size, size, device="cuda"))
    graph, inputs = _forward_graph(model, batch, size, autocast, mode, train=True, compiling=compiling)
    graph = _on_device(graph, "meta", lambda t: _like(t, "meta"))
    inputs = [_like(t, "meta").requires_grad_(i < params) for i, t in enumerate(inputs)]

    def loss(*flat):  # cross-entropy's traffic without labels: a log-sum-exp over the logits, in fp32
        return torch.fx.Interpreter(graph).run(*flat).float().logsumexp(-1).mean()

    return loss, inputs, params


@contextlib.contextmanager
def _cuda_conv_layouts(mode: FakeTensorMode) -> Iterator[None]:
    """Meta convolutions, forward and backward, whose outputs take the memory format a CUDA one chooses (cuDNN keeps
    channels-last), as fake CUDA's do: meta kernels leave them contiguous, and a graph traced on fake CUDA may view
    them as channels-last."""
    forward = torch._decomp.meta_table[aten.convolution.default]
    backward = torch._decomp.meta_table[aten.convolution_backward.default]

    def layout(input, weight, bias_sizes, stride, padding, dilation, transposed, output_padding, groups):
        with mode:
            fake_input, fake_weight = _like(input, "cuda"), _like(weight, "cuda")
            backend = torch._C._select_conv_backend(fake_input, fake_weight, None, stride, padding, dilation,
                                                    transposed, output_padding, groups, bias_sizes)  # fmt: skip
            return torch._C._conv_determine_backend_memory_format(fake_input, fake_weight, backend)

    active = [True]  # destroying the library leaves the kernels cached in the dispatcher: they then pass through

    def convolution(input, weight, bias, *args):
        out = forward(input, weight, bias, *args)
        if not active[0] or isinstance(input, FakeTensor):
            return out
        return out.contiguous(memory_format=layout(input, weight, None if bias is None else list(bias.shape), *args))

    def convolution_backward(grad, input, weight, bias_sizes, *args):
        grad_input, grad_weight, grad_bias = backward(grad, input, weight, bias_sizes, *args)
        if not active[0] or isinstance(input, FakeTensor):
            return grad_input, grad_weight, grad_bias
        fmt = layout(input, weight, bias_sizes, *args[:-1])
        restride = lambda t: None if t is None else t.contiguous(memory_format=fmt)  # noqa: E731
        return restride(grad_input), restride(grad_weight), grad_bias

    lib = torch.library.Library("aten", "IMPL")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "overriding a previously registered kernel": for this trace only
        lib.impl("convolution", convolution, "Meta")
        lib.impl("convolution_backward", convolution_backward, "Meta")
    try:
        yield
    finally:
        active[0] = False
        lib._destroy()


def _gradients(loss: torch.Tensor, params: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """The gradients of the parameters the loss depends on (a model may hold some its forward does not use)."""
    return [g for g in torch.autograd.grad(loss, params, allow_unused=True) if g is not None]


def eager_train_trace(
    model: nn.Module, batch: int, size: int = 224, autocast: torch.dtype | None = torch.bfloat16
) -> EagerTrace:
    """Kernels and bytes of one eager training step of `model`: forward, loss and backward to every
    parameter's gradient (no optimizer step), on fake CUDA. The step is traced on meta tensors (forward and
    `torch.autograd.grad`) and its aten ops replayed on fake CUDA under the tracer: the ops eager autograd runs."""
    from torch.fx.experimental.proxy_tensor import make_fx

    trace = EagerTrace()
    with fake_cuda() as mode:
        loss, inputs, params = _train_step(to_fake_cuda(model, mode), batch, size, autocast, False, mode)
        with _cuda_conv_layouts(mode):
            step = make_fx(lambda *flat: _gradients(loss(*flat), flat[:params]))(*inputs)
        with mode:
            step = _on_device(step, "cuda", lambda t: _like(t, "cuda"))
            fake = [_like(t, "cuda") for t in inputs]
        with mode, torch.no_grad(), Tracer(trace):
            torch.fx.Interpreter(step).run(*fake)
    return trace


def compiled_train_kernels(
    model: nn.Module, batch: int, size: int = 224, autocast: torch.dtype | None = torch.bfloat16
) -> list[Launch]:
    """Inductor's launches for one compiled training step of `model` (forward, loss, backward to every
    parameter's gradient; no optimizer step) on a pretend H200: AOTAutograd splits the step on meta tensors into a
    forward and a backward graph with inductor's own partitioner (what it saves, what it recomputes), and each is
    compiled for fake CUDA as `inductor_launches` does. Backward launches belong to "(backward)"."""
    from torch._functorch.aot_autograd import aot_function, make_boxed_func
    from torch._functorch.partitioners import min_cut_rematerialization_partition
    from torch._inductor.decomposition import select_decomp_table

    graphs: dict[str, tuple[torch.fx.GraphModule, list[torch.Tensor]]] = {}

    def keep(kind: str):
        def compiler(graph: torch.fx.GraphModule, inputs: list[torch.Tensor]):
            graphs[kind] = (graph, list(inputs))
            return make_boxed_func(graph)

        return compiler

    with fake_cuda() as mode, pretend_h200():
        loss, inputs, _ = _train_step(to_fake_cuda(model, mode), batch, size, autocast, True, mode)
        step = aot_function(loss, keep("forward"), keep("backward"), partition_fn=min_cut_rematerialization_partition,
                            decompositions=select_decomp_table())  # fmt: skip
        with _cuda_conv_layouts(mode):
            step(*inputs).backward()
        launches = []
        for kind, (graph, example) in graphs.items():
            with mode:
                graph = _on_device(graph, "cuda", lambda t: _like(t, "cuda"))
                fake = [_like(t, "cuda") if isinstance(t, torch.Tensor) else t for t in example]
            found = inductor_launches(graph, fake, mode, backward=kind == "backward")
            launches += found if kind == "forward" else [dataclasses.replace(x, block="(backward)") for x in found]
    return launches


def per_block(launches: list[Launch]) -> dict[str, OpStats]:
    """Launches and bytes per block, in order of first launch."""
    blocks: dict[str, OpStats] = {}
    for launch in launches:
        blocks.setdefault(launch.block, OpStats()).add(launch.bytes, launch.opaque, launch.launches)
    return blocks


def predict_ms(nbytes: int, tbps: float) -> float:
    """Predicted milliseconds to move `nbytes` at an effective `tbps` TB/s (10^12 bytes per second)."""
    return nbytes / (tbps * 1e12) * 1e3


def predict_img_s(nbytes: int, tbps: float, batch: int) -> float:
    """Predicted images per second of a forward of `batch` images that moves `nbytes`."""
    return batch / (predict_ms(nbytes, tbps) / 1e3)
