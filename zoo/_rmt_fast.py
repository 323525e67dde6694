"""RMT's speed machinery, apart from the architecture: the position-table cache, rotary and decay tables in the
layouts attention reads, and depthwise convs on channels-last tokens with the residual folded into the kernel.

None of it changes what the model computes (tests/test_rmt.py checks each against the reference path); it changes
how many kernels run and how much memory they move. docs/rmt_internals.md has the measurements behind each.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _retention, _retention_triton
from ._retention import autocast_dtype, in_graph, manhattan_bias

__all__ = [
    "POSITION_CACHE_BYTES",
    "BIAS_APART_DEVICES",
    "SHIFTED_CONV_DEVICES",
    "PositionCache",
    "DWConv2d",
    "decay_masks",
    "linear",
    "plain",
    "depthwise_taps",
    "taps_kernel_takes",
    "rotary_tables",
    "rotate",
]

# What one model keeps of its position tables and masks: every stage's at any one input size up to dense-prediction
# sizes (rmt_t: 47 MiB at 512x512, 44 MiB at 800x1344, 3.3 MiB at 224x224).
POSITION_CACHE_BYTES = 64 << 20
# Devices where compiled graphs take `depthwise_taps` instead of the conv (eager keeps cuDNN / mkldnn everywhere).
SHIFTED_CONV_DEVICES = ("cuda",)
# Devices where compiled graphs add a linear layer's bias apart from its matmul (`linear`).
BIAS_APART_DEVICES = ("cuda",)
# Whether compiled graphs that record gradients take the Triton taps kernels (`taps_kernel_takes`), and for which
# kernel sizes: the CPE's and the FFN's 3x3 (LePE's 5x5 runs inside the retention op where that runs; its taps
# kernels spilled on sm_90).
TAPS_IN_KERNEL = True
TAPS_KERNEL_SIZES = (3,)

Tables = tuple[torch.Tensor, ...]


class PositionCache:
    """The stages' position tables by (stage, grid, dtype, device), evicting the least recently used beyond
    POSITION_CACHE_BYTES (read at each insertion); tables larger than that on their own are not kept."""

    def __init__(self):
        self._entries: OrderedDict[tuple, tuple[Tables, int]] = OrderedDict()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple) -> Tables | None:
        if key not in self._entries:
            return None
        self._entries.move_to_end(key)
        return self._entries[key][0]

    def put(self, key: tuple, tables: Tables) -> None:
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tables}  # views count once
        self._entries[key] = (tables, sum(storages.values()))
        self.nbytes += self._entries[key][1]
        while self.nbytes > POSITION_CACHE_BYTES:
            self.nbytes -= self._entries.popitem(last=False)[1][1]

    def lookup(self, key: tuple, build: Callable[[], Tables]) -> Tables:
        """The tables under `key`, built and kept on a miss: outside inference mode, as plain constants, so that
        any later forward, recording gradients or not, can read them (autograd cannot save inference tensors)."""
        tables = self.get(key)
        if tables is None:
            with torch.inference_mode(False), torch.no_grad():
                tables = build()
            self.put(key, tables)
        return tables

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """Map each adjacent pair (x0, x1) to (x1, x0); the sign of the rotation lives in the sin table."""
    return x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)


def rotate(x: torch.Tensor, real: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotary position for q and k stacked in x's dim 0 (k also scaled), as a new contiguous tensor in x's
    logical order, so a permuted view of the projection comes out in the layout attention reads.

    With a complex `table` (eager, fp32/fp64) each pair is one complex multiply written straight into the
    output: no pair flip, no separate products and sum. Otherwise `real` holds (cos, signed sin), the form
    inductor fuses into one kernel and the one lower precisions (autocast) take.
    """
    # `out=` has no autograd, so a forward that records gradients takes the real form.
    if table.is_complex() and x.dtype == table.real.dtype and not (torch.is_grad_enabled() and x.requires_grad):
        out = torch.empty(x.shape[:-1] + (x.shape[-1] // 2,), dtype=table.dtype, device=x.device)
        torch.mul(torch.view_as_complex(x.unflatten(-1, (-1, 2))), table, out=out)
        return torch.view_as_real(out).flatten(-2)
    cos, sin = real
    return (x * cos + _rotate_pairs(x) * sin).contiguous()


def rotary_tables(
    sin: torch.Tensor, cos: torch.Tensor, chunkwise: bool, dtype: torch.dtype, complex_ok: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tables for `rotate` on q and k stacked as (2, b, h, N, w, d) (chunkwise) or (2, b, N, h, w, d) (whole
    image), from fp32 (h, w, 1, d) sin and cos, with k's 1/sqrt(d) scale folded into its row: real (cos, signed
    sin), and the complex cos + i sin per pair where `complex_ok` and the dtype is fp32/fp64 (else real again). The
    fused Triton op reads the real form itself, rotating q and k as it loads them (zoo/_retention_triton.py)."""
    h, w = sin.shape[:2]
    scale = torch.tensor([1.0, sin.shape[-1] ** -0.5], device=sin.device).view(2, 1, 1, 1, 1, 1)
    shape = (1, h, 1, w, -1) if chunkwise else (1, 1, h, w, -1)
    real = torch.stack((cos.reshape(shape), sin.reshape(shape)))[:, None] * scale  # (2, 2, *shape)
    if not complex_ok or dtype not in (torch.float32, torch.float64):
        return real.to(dtype), real.to(dtype)
    table = torch.complex(real[0, ..., ::2], real[1, ..., 1::2])
    return real.to(dtype), table.to(torch.complex128 if dtype == torch.float64 else torch.complex64)


def decay_masks(mask_h: torch.Tensor, mask_w: torch.Tensor, chunkwise: bool) -> Tables:
    """The decay biases from the decayed 1-D distances (N, h, h) and (N, w, w), 4-D for SDPA's fused kernels:
    row (1, N, w, w) and column (1, N, h, h); whole-image (1, N, hw, hw), or where that would exceed
    MAX_MASK_ELEMS the 1-D tables themselves, from which attention builds the mask block by block."""
    if chunkwise:
        return mask_w[None], mask_h[None]
    n, h, w = mask_h.shape[0], mask_h.shape[1], mask_w.shape[1]
    if n * (h * w) ** 2 > _retention.MAX_MASK_ELEMS:
        return mask_h, mask_w
    return (manhattan_bias(mask_h, mask_w, slice(None))[None],)


def plain(module: nn.Module, kind: type[nn.Module]) -> bool:
    """Whether `module` is exactly a `kind` (for nn.GELU, the exact one). The fused paths that read a module's
    parameters instead of calling it (a LayerNorm inside the matmul, fc1's bias apart or in the taps kernel, GELU in
    the taps kernel, the q/k and v matmuls from qkv's weight) take it only then, so a subclass or a wrapper in its
    place (LoRA's, a quantizer's) or another activation keeps its own forward. Forward hooks are not looked at (the
    GPU proxy hooks every module to attribute its kernels): a hook on such a module runs where the module is called."""
    return type(module) is kind and (kind is not nn.GELU or module.approximate == "none")


def linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """layer(x). In compiled inference graphs on BIAS_APART_DEVICES the bias is added apart from the matmul, in the
    matmul's output dtype: inductor then adds it, and autocast's cast of it, inside the elementwise kernel that reads
    the output (RMT's fc1: GELU's), where cuBLAS's bias epilogue needs the cast bias as a kernel of its own: one
    launch fewer a layer, the same bytes. Under autocast the bias is added to the matmul's 16-bit output, not to its
    fp32 accumulator. Where the output feeds a conv's taps, keep the layer as it is: the add there makes inductor
    write the padded input out first (RMT's out_proj and fc2, whose outputs the next CPE reads). Graphs that record
    gradients keep it too: there the separate add costs the backward more bytes than it saves (the GPU proxy's
    counts are in docs/rmt_internals.md)."""
    apart = in_graph() and x.device.type in BIAS_APART_DEVICES and not torch.is_grad_enabled()
    if layer.bias is None or not apart or not plain(layer, nn.Linear):
        return layer(x)
    y = F.linear(x, layer.weight)
    return y + layer.bias.to(y.dtype)


def depthwise_taps(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Depthwise conv of channels-last x (B, H, W, C) as k*k shifted multiply-adds over the zero-padded map, in the
    dtype the conv would run in (autocast's where it is on): a form inductor fuses with the ops around it, where
    the conv is a separate kernel reading and writing the whole map."""
    dtype = autocast_dtype(x.device) or x.dtype
    x, weight = x.to(dtype), weight.to(dtype)
    k, p = weight.shape[-1], weight.shape[-1] // 2
    h, w = x.shape[1], x.shape[2]
    padded = F.pad(x, (0, 0, p, p, p, p))
    out = None
    for i, j in itertools.product(range(k), range(k)):
        tap = padded[:, i : i + h, j : j + w] * weight[:, 0, i, j]
        out = tap if out is None else out + tap
    return out if bias is None else out + bias.to(dtype)


def taps_kernel_takes(x: torch.Tensor) -> bool:
    """Whether a depthwise conv on x runs as `_retention_triton.fused_taps`: in compiled graphs that record gradients
    on SHIFTED_CONV_DEVICES where the Triton kernels build, unless TAPS_IN_KERNEL is off. There the plain taps'
    backward scatters into a padded map and reduces each tap's weight gradient in a kernel of its own, reading the
    maps again each time; the kernel's backward reads dout and the input once. Inference graphs keep the plain taps,
    which inductor fuses with the ops around them (docs/rmt_internals.md has the counts)."""
    return (
        TAPS_IN_KERNEL
        and torch.is_grad_enabled()
        and torch.compiler.is_compiling()
        and x.device.type in SHIFTED_CONV_DEVICES
        and _retention_triton.taps_available(x)
    )


class DWConv2d(nn.Module):
    """Depthwise conv on channels-last (B, H, W, C) tensors, returned contiguous; both permutes are views.

    With `residual`, returns x + conv(x) as one conv whose kernel has 1 added at its centre tap, which saves a
    full-size add. Eager forwards that record no gradients reuse the folded kernel (and, under autocast, the kernel
    and bias already cast), rebuilt when the weights change; compiled graphs on SHIFTED_CONV_DEVICES use
    `depthwise_taps`.
    """

    def __init__(self, dim: int, kernel_size: int, residual: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size, 1, kernel_size // 2, groups=dim)
        self.residual = residual
        self._kept: tuple[tuple, torch.Tensor, torch.Tensor] | None = None  # (validity key, weight, bias)

    def _load_from_state_dict(self, *args, **kwargs):
        self._kept = None  # also when parameters are assigned rather than copied into
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, recurse=True):
        self._kept = None  # a freed parameter's address could come back with the same version count
        return super()._apply(fn, recurse)

    def _fold(self) -> torch.Tensor:
        weight = self.conv.weight
        if not self.residual:
            return weight
        centre = self.conv.kernel_size[0] // 2
        return weight + F.pad(weight.new_ones(weight.shape[0], 1, 1, 1), (centre,) * 4)

    def _weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The kernel (skip connection folded in) and bias the conv uses. Built on every call where autograd or a
        tracer must see the parameters; otherwise kept, with the parameters' version counters and storage as the
        key, so in-place updates (optimizer steps, load_state_dict) and moves or casts rebuild it."""
        weight, bias = self.conv.weight, self.conv.bias
        if torch.is_grad_enabled() or in_graph() or isinstance(weight, torch.fx.Proxy):
            return self._fold(), bias
        dtype = autocast_dtype(x.device) or weight.dtype
        if not self.residual and dtype == weight.dtype:
            return weight, bias
        key = (weight._version, bias._version, weight.data_ptr(), bias.data_ptr(), weight.device, dtype)
        if self._kept is None or self._kept[0] != key:
            # built outside inference mode, like the position tables, so later forwards recording gradients can
            # read it; it is a constant, not a parameter view, so autocast does not cast it again
            with torch.inference_mode(False), torch.no_grad():
                self._kept = (key, self._fold().to(dtype), bias.to(dtype))
        return self._kept[1], self._kept[2]

    def takes_kernel(self, x: torch.Tensor) -> bool:
        """Whether this conv on x runs as the Triton taps kernel: `taps_kernel_takes`, at TAPS_KERNEL_SIZES."""
        return self.conv.kernel_size[0] in TAPS_KERNEL_SIZES and taps_kernel_takes(x)

    def fused(self, u: torch.Tensor, in_bias: torch.Tensor | None = None, gelu: bool = False) -> torch.Tensor:
        """self(GELU(u + in_bias)) (GELU where `gelu`) in one Triton launch (`takes_kernel` says where)."""
        return _retention_triton.fused_taps(u, *self._weights(u), in_bias, gelu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling() and x.device.type in SHIFTED_CONV_DEVICES:  # x is a Proxy under FX
            return self.fused(x) if self.takes_kernel(x) else depthwise_taps(x, *self._weights(x))
        weight, bias = self._weights(x)
        # A stage's first block gets NCHW-ordered memory from the downsampling conv; one copy here puts the whole
        # residual stream in contiguous (B, H, W, C), which LayerNorm and the linear layers read without copies.
        x = x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        y = F.conv2d(x, weight, bias, padding=self.conv.padding, groups=self.conv.groups)
        return y.permute(0, 2, 3, 1)
