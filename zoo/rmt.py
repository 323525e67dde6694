"""RMT: Retentive Networks Meet Vision Transformers (Fan et al., CVPR 2024, arXiv 2309.11523).

Written from the paper's description and checked against outputs of the official code (qhfan/RMT), which
tests/fixtures carries. Module and parameter names follow the official state dicts so released checkpoints load by
name; the one deliberate difference is the fused `retention.qkv` projection, which `checkpoint_filter_fn` builds
from the official q/k/v projections.

Manhattan Self-Attention (MaSA) is softmax(q k^T + D) v with an additive spatial-decay bias D, so any attention
kernel that takes an additive mask computes it. `attn_impl="auto"` takes the fused Triton kernels
(zoo/_retention_triton.py, forward and backward) on CUDA where they build, else batched matmul-softmax on CPU
(faster there in eager mode; compiled whole-image stages take SDPA) and, on other devices, for rows of at most
SHORT_ROW keys; longer rows take `scaled_dot_product_attention` with D as the mask, which never holds the scores.
"matmul", "sdpa" and "flex" (FlexAttention, D computed inside the kernel) choose one. Position tables and
masks are cached per stage, grid size, dtype and device, in one least-recently-used cache per model bounded by
POSITION_CACHE_BYTES; the whole-image form switches to query blocks with masks built block by block when a full
(HW)^2 mask would be large. `attn_impl="reference"` keeps a plain path written like the official code (masks
rebuilt every call, explicit matmul and softmax) as the test oracle. `attn_impl="triton"` takes the fused kernels
on any device (CPU through Triton's interpreter only).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from timm.models import FeatureInfo
from timm.models._features_fx import register_notrace_module
from torch.utils.checkpoint import checkpoint

from . import _retention_triton
from ._builder import create, stage_indices
from ._checkpoint import StateDict
from ._registry import Family, ModelInfo, register_family
from ._staged import StagedModel

__all__ = [
    "RMT",
    "checkpoint_filter_fn",
    "DEFAULT_HUB_ORG",
    "ORG_ENV",
    "ATTN_IMPLS",
    "POSITION_CACHE_BYTES",
    "PositionCache",
    "FAMILY",
    "INFOS",
]

DEFAULT_HUB_ORG = "rmt-zoo"
# No RMT weights are on the Hub yet: whoever converts them publishes under their own organisation, named here.
ORG_ENV = "RMT_HUB_ORG"
ATTN_IMPLS = ("auto", "matmul", "sdpa", "flex", "reference", "triton")
# Above this many mask elements (heads x L x L), the whole-image form works in query blocks (64 MB in fp32).
MAX_MASK_ELEMS = 1 << 24
# What one model keeps of its position tables and masks: every stage's at any one input size up to dense-prediction
# sizes (rmt_t: 47 MiB at 512x512, 44 MiB at 800x1344, 3.3 MiB at 224x224).
POSITION_CACHE_BYTES = 64 << 20
# Attention rows of at most this many keys take batched matmul-softmax under "auto" on GPUs too: every row at
# classification sizes (7..56 tokens). On an H200 at batch 256 (bf16), SDPA's kernel took 40.5 ms of 109 ms of
# CUDA time on rmt_s's 54 such calls; the official code's bmm and softmax kernels for them take 11.3 ms
# (results/h200/rmt_gpu_profile.md). Longer rows (dense prediction) keep SDPA, which holds no L x L scores.
SHORT_ROW = 64


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """Map each adjacent pair (x0, x1) to (x1, x0); the sign of the rotation lives in the sin table."""
    return x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)


def _rotate(x: torch.Tensor, real: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
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


def _abs_distance(n: int, device: torch.device) -> torch.Tensor:
    idx = torch.arange(n, device=device, dtype=torch.float32)
    return (idx[:, None] - idx[None, :]).abs()


def _manhattan_bias(decay_h: torch.Tensor, decay_w: torch.Tensor, rows: slice) -> torch.Tensor:
    """decay * (|i - i'| + |j - j'|) for the query tokens in image rows `rows`, against all tokens: (N, r*w, h*w).

    Built with one broadcast add from the decayed 1-D tables (N, h, h) and (N, w, w), which is far cheaper than
    computing distances token by token.
    """
    n, h, w = decay_h.shape[0], decay_h.shape[1], decay_w.shape[1]
    bias = decay_h[:, rows, None, :, None] + decay_w[:, None, :, None, :]  # (N, r, w, h, w)
    return bias.reshape(n, -1, h * w)


class PositionCache:
    """The stages' position tables by (stage, grid, dtype, device), evicting the least recently used beyond
    POSITION_CACHE_BYTES (read at each insertion); tables larger than that on their own are not kept."""

    def __init__(self):
        self._entries: OrderedDict[tuple, tuple[tuple[torch.Tensor, ...], int]] = OrderedDict()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple) -> tuple[torch.Tensor, ...] | None:
        if key not in self._entries:
            return None
        self._entries.move_to_end(key)
        return self._entries[key][0]

    def put(self, key: tuple, tables: tuple[torch.Tensor, ...]) -> None:
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tables}  # views count once
        self._entries[key] = (tables, sum(storages.values()))
        self.nbytes += self._entries[key][1]
        while self.nbytes > POSITION_CACHE_BYTES:
            self.nbytes -= self._entries.popitem(last=False)[1][1]

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0


_STAGE_IDS = itertools.count()


@register_notrace_module  # shape-dependent tables and a cache: a leaf for FX
class DecayPosition(nn.Module):
    """The per-stage generator (`Relpos` in the official code) of rotary tables and spatial-decay masks.

    `angle` and `decay` are persistent buffers, as in the official state dicts, so a checkpoint's own values are
    used. Tables derived from them are kept in `cache` (shared by a model's stages) in eager mode, built outside
    inference mode as plain constants so that any later forward, recording gradients or not, can use them; they
    are recomputed inside compiled or exported graphs, and dropped when the buffers are loaded or moved.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        init_value: float,
        heads_range: float,
        chunkwise: bool,
        cache: PositionCache | None = None,
    ):
        super().__init__()
        key_dim = dim // num_heads
        angle = 1.0 / (10000 ** torch.linspace(0, 1, key_dim // 2))
        self.register_buffer("angle", angle.repeat_interleave(2))
        heads = torch.arange(num_heads, dtype=torch.float)
        self.register_buffer("decay", torch.log(1 - 2 ** (-init_value - heads_range * heads / num_heads)))
        self.num_heads = num_heads
        self.chunkwise = chunkwise
        self._cache = PositionCache() if cache is None else cache
        self._stage_id = next(_STAGE_IDS)

    def _load_from_state_dict(self, *args, **kwargs):
        self._cache.clear()  # tables derived from the old buffers would be stale
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, recurse=True):
        self._cache.clear()
        return super()._apply(fn, recurse)

    def rotary(self, h: int, w: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """sin and cos of n * angle for the row-major token index n = i * w + j, shaped (h, w, 1, key_dim)."""
        index = torch.arange(h * w, device=self.angle.device, dtype=torch.float32)
        theta = index[:, None] * self.angle.float()[None, :]
        sign = torch.tensor([-1.0, 1.0], device=theta.device).repeat(theta.shape[-1] // 2)
        sin = (theta.sin() * sign).reshape(h, w, 1, -1).to(dtype)
        return sin, theta.cos().reshape(h, w, 1, -1).to(dtype)

    def rotary_fast(self, h: int, w: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Tables for `_rotate` on q and k stacked as (2, b, h, N, w, d) (decomposed form) or (2, b, N, h, w, d)
        (whole-image form), with k's 1/sqrt(d) scale folded into its row: real (cos, signed sin), and the
        complex cos + i sin per pair where eager fp32/fp64 can use it (else the real table again)."""
        sin, cos = self.rotary(h, w, torch.float32)  # (h, w, 1, d)
        scale = torch.tensor([1.0, self.angle.shape[0] ** -0.5], device=sin.device).view(2, 1, 1, 1, 1, 1)
        shape = (1, h, 1, w, -1) if self.chunkwise else (1, 1, h, w, -1)
        real = torch.stack((cos.reshape(shape), sin.reshape(shape)))[:, None] * scale  # (2, 2, *shape)
        if torch.compiler.is_compiling() or torch.jit.is_tracing() or dtype not in (torch.float32, torch.float64):
            return real.to(dtype), real.to(dtype)
        table = torch.complex(real[0, ..., ::2], real[1, ..., 1::2])
        return real.to(dtype), table.to(torch.complex128 if dtype == torch.float64 else torch.complex64)

    def masks(self, h: int, w: int, dtype: torch.dtype, fast: bool = True) -> tuple[torch.Tensor, ...]:
        """Decay biases. Official form: (row (N,w,w), column (N,h,h)) or whole-image (N,hw,hw).

        `fast` form, 4-D for SDPA's fused kernels: row (1,N,w,w) and column (1,N,h,h); whole-image (1,N,hw,hw),
        or where that would exceed MAX_MASK_ELEMS the decayed 1-D tables (N,h,h) and (N,w,w), from which MaSA
        builds the mask block by block.
        """
        decay = self.decay.float()[:, None, None]
        device = self.decay.device
        mask_w = (decay * _abs_distance(w, device)).to(dtype)
        mask_h = (decay * _abs_distance(h, device)).to(dtype)
        if self.chunkwise:
            return (mask_w, mask_h) if not fast else (mask_w[None], mask_h[None])
        if fast and self.num_heads * (h * w) ** 2 > MAX_MASK_ELEMS:
            return mask_h, mask_w
        whole = _manhattan_bias(mask_h, mask_w, slice(None))
        return (whole[None],) if fast else (whole,)

    def forward(self, h: int, w: int, dtype: torch.dtype, cached: bool = True) -> tuple[torch.Tensor, ...]:
        """(*rotary_fast, *masks); `cached=False` gives (sin, cos, *official-form masks) rebuilt on every call,
        as the official code does."""
        if not cached:
            return (*self.rotary(h, w, dtype), *self.masks(h, w, dtype, fast=False))
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return (*self.rotary_fast(h, w, dtype), *self.masks(h, w, dtype))
        key = (self._stage_id, h, w, dtype, self.angle.device)
        tables = self._cache.get(key)
        if tables is None:
            # Under inference_mode the tables would be inference tensors, which autograd cannot save later.
            with torch.inference_mode(False), torch.no_grad():
                tables = (*self.rotary_fast(h, w, dtype), *self.masks(h, w, dtype))
            self._cache.put(key, tables)
        return tables


# Device types with an autocast, asked once here: torch.compile on torch 2.11 (the GPU machine's) cannot trace
# torch.amp.is_autocast_available (a C builtin), so fullgraph graphs calling it fail; is_autocast_enabled and
# get_autocast_dtype it traces.
_AUTOCAST_KINDS = frozenset(
    kind for kind in ("cpu", "cuda", "xpu", "mps", "hpu", "mtia", "xla") if torch.amp.is_autocast_available(kind)
)


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast runs matmuls and convs in on `device`, or None where it is off (or has no autocast)."""
    kind = device.type
    available = kind in _AUTOCAST_KINDS if torch.compiler.is_compiling() else torch.amp.is_autocast_available(kind)
    if available and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return None


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    # k comes scaled (folded into the rotary table). Masks are kept 4-D: a 3-D one sends SDPA on CPU to its
    # slower math path.
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)


def _matmul_softmax(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Eager CPU attention: at RMT's short rows (7..56 tokens) batched matmuls with an in-place bias add and a
    softmax beat SDPA's CPU kernels (measured in benchmarks/rmt_cpu.py); k comes scaled.

    Under autocast with q already in half precision it runs outside autocast, in q's dtype: CUDA's autocast would
    run softmax in fp32, writing the scores out in fp32 and casting the probabilities back (two score-sized copies
    per call), while softmax on bf16/fp16 accumulates in fp32 anyway (eager kernels and inductor alike).
    """
    if q.dtype in (torch.bfloat16, torch.float16) and _autocast_dtype(q.device) is not None:
        with torch.autocast(q.device.type, enabled=False):
            return _matmul_softmax(q, k.to(q.dtype), v.to(q.dtype), bias)
    scores = torch.matmul(q, k.transpose(-1, -2)).add_(bias)
    return torch.matmul(torch.softmax(scores, -1), v)


def _auto_matmul(device: torch.device, keys: int, width: int) -> bool:
    """Whether "auto" takes matmul-softmax. On CPU it beats SDPA's kernels in eager mode, and under torch.compile
    at the short rows and columns of the decomposed form (width 0); compiled whole-image stages are faster on SDPA
    (benchmarks/rmt_cpu.py, "ours compiled"). Elsewhere: short rows only (SHORT_ROW)."""
    if device.type == "cpu":
        return width == 0 or not torch.compiler.is_compiling()
    return keys <= SHORT_ROW


def _decayed_softmax(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T + bias) v spelled out, with k already scaled, as the official code computes it."""
    return torch.softmax(q @ k.transpose(-1, -2) + bias, -1) @ v


def _stack_rotate(x: torch.Tensor) -> torch.Tensor:
    """The official code's stack-based pair rotation (with our signed sin table it equals `_rotate_pairs`)."""
    return torch.stack((x[..., 1::2], x[..., ::2]), -1).flatten(-2)


_compiled_flex = None


def _flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, width: int) -> torch.Tensor:
    """FlexAttention with the decay computed inside the kernel from token indices: no mask in memory at all.

    width > 0: whole-image Manhattan distance on a grid of that width; width == 0: 1-D distance |i - i'|.
    k comes scaled.
    """
    from torch.nn.attention.flex_attention import flex_attention

    def score_mod(score, b, h, q_idx, kv_idx):
        if width:
            dist = (q_idx // width - kv_idx // width).abs() + (q_idx % width - kv_idx % width).abs()
        else:
            dist = (q_idx - kv_idx).abs()
        return score + decay[h] * dist

    global _compiled_flex
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return flex_attention(q, k, v, score_mod=score_mod, scale=1.0)
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex(q, k, v, score_mod=score_mod, scale=1.0)


def _depthwise_taps(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Depthwise conv of channels-last x (B, H, W, C) as k*k shifted multiply-adds over the zero-padded map, in the
    dtype the conv would run in (autocast's where it is on): a form inductor fuses with the ops around it, where
    the conv is a separate kernel reading and writing the whole map."""
    dtype = _autocast_dtype(x.device) or x.dtype
    x, weight = x.to(dtype), weight.to(dtype)
    k, p = weight.shape[-1], weight.shape[-1] // 2
    h, w = x.shape[1], x.shape[2]
    padded = F.pad(x, (0, 0, p, p, p, p))
    out = None
    for i, j in itertools.product(range(k), range(k)):
        tap = padded[:, i : i + h, j : j + w] * weight[:, 0, i, j]
        out = tap if out is None else out + tap
    return out if bias is None else out + bias.to(dtype)


# Devices where compiled graphs take `_depthwise_taps` instead of the conv (eager keeps cuDNN / mkldnn everywhere).
SHIFTED_CONV_DEVICES = ("cuda",)


class DWConv2d(nn.Module):
    """Depthwise conv on channels-last (B, H, W, C) tensors, returned contiguous; both permutes are views.

    With `residual`, returns x + conv(x) as one conv whose kernel has 1 added at its centre tap, which saves a
    full-size add. `reference` mode does what the official code does instead: contiguous copies and a separate add.
    Eager forwards that record no gradients reuse the folded kernel (and, under autocast, the kernel and bias
    already cast), rebuilt when the weights change; compiled graphs on SHIFTED_CONV_DEVICES use `_depthwise_taps`.
    """

    def __init__(self, dim: int, kernel_size: int, residual: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size, 1, kernel_size // 2, groups=dim)
        self.residual = residual
        self.reference = False
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
        compiler must see the parameters; otherwise kept, with the parameters' version counters and storage as the
        key, so in-place updates (optimizer steps, load_state_dict) and moves or casts rebuild it."""
        weight, bias = self.conv.weight, self.conv.bias
        if (
            torch.is_grad_enabled()
            or torch.compiler.is_compiling()
            or torch.jit.is_tracing()
            or isinstance(weight, torch.fx.Proxy)
        ):
            return self._fold(), bias
        dtype = _autocast_dtype(x.device) or weight.dtype
        if not self.residual and dtype == weight.dtype:
            return weight, bias
        key = (weight._version, bias._version, weight.data_ptr(), bias.data_ptr(), weight.device, dtype)
        if self._kept is None or self._kept[0] != key:
            # built outside inference mode, like the position tables, so later forwards recording gradients can
            # read it; it is a constant, not a parameter view, so autocast does not cast it again
            with torch.inference_mode(False), torch.no_grad():
                self._kept = (key, self._fold().to(dtype), bias.to(dtype))
        return self._kept[1], self._kept[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reference:
            y = self.conv(x.permute(0, 3, 1, 2).contiguous()).permute(0, 2, 3, 1).contiguous()
            return x + y if self.residual else y
        weight, bias = self._weights(x)
        if torch.compiler.is_compiling() and x.device.type in SHIFTED_CONV_DEVICES:
            return _depthwise_taps(x, weight, bias)
        # A stage's first block gets NCHW-ordered memory from the downsampling conv; one copy here puts the whole
        # residual stream in contiguous (B, H, W, C), which LayerNorm and the linear layers read without copies.
        x = x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        y = F.conv2d(x, weight, bias, padding=self.conv.padding, groups=self.conv.groups)
        return y.permute(0, 2, 3, 1)


@register_notrace_module  # impl dispatch and shape-dependent blocking: a leaf for FX
class ManhattanSelfAttention(nn.Module):
    """MaSA (`retention`): rotary q/k, decay-biased attention (whole-image or row-then-column), plus LePE."""

    def __init__(self, dim: int, num_heads: int, chunkwise: bool, attn_impl: str = "auto"):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.chunkwise = chunkwise
        self.attn_impl = attn_impl
        self.qkv = nn.Linear(dim, 3 * dim)
        self.lepe = DWConv2d(dim, 5)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, pos: tuple[torch.Tensor, ...], decay: torch.Tensor) -> torch.Tensor:
        if self.attn_impl == "reference":
            return self._forward_reference(x, pos)
        b, h, w, c = x.shape
        n, d = self.num_heads, self.head_dim
        (w_qk, w_v), (b_qk, b_v) = self.qkv.weight.split((2 * c, c)), self.qkv.bias.split((2 * c, c))
        v = F.linear(x, w_v, b_v)  # its own matmul: a contiguous v is 2-4x faster in the depthwise LePE conv
        lepe = self.lepe(v)
        qk = F.linear(x, w_qk, b_qk).view(b, h, w, 2, n, d)
        # q and k rotated in one pass, written as (b, h, N, w, d) for row attention or (b, N, h, w, d) for whole-image
        q, k = _rotate(qk.permute(3, 0, 1, 4, 2, 5) if self.chunkwise else qk.permute(3, 0, 4, 1, 2, 5), *pos[:2])
        v = v.view(b, h, w, n, d)
        if self.attn_impl == "triton" or (self.attn_impl == "auto" and _retention_triton.auto_takes(v)):
            out = _retention_triton.retention(q, k, v, decay, self.chunkwise)  # with its fused backward
        elif self.chunkwise:
            out = self._row_then_column(q, k, v, pos[2:], decay)
        else:
            out = self._whole_image(q, k, v, pos[2:], decay)
        # lepe first: the sum takes its contiguous layout, so out's permute costs no separate copy
        return self.out_proj((lepe.view(b, h, w, n, d) + out).view(b, h, w, c))

    def _forward_reference(self, x: torch.Tensor, pos: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The test oracle and benchmark baseline, shaped like the official code: three projections, k scaled
        before rotation, stack-based rotation, permute-heavy layouts, masks built per call, explicit softmax."""
        b, h, w, c = x.shape
        n, d = self.num_heads, self.head_dim
        (wq, wk, wv), (bq, bk, bv) = self.qkv.weight.chunk(3), self.qkv.bias.chunk(3)
        q, k, v = F.linear(x, wq, bq), F.linear(x, wk, bk) * d**-0.5, F.linear(x, wv, bv)
        lepe = self.lepe(v)
        sin, cos = pos[0].squeeze(2), pos[1].squeeze(2)
        q = q.view(b, h, w, n, d).permute(0, 3, 1, 2, 4)  # (b, n, h, w, d)
        k = k.view(b, h, w, n, d).permute(0, 3, 1, 2, 4)
        qr, kr = q * cos + _stack_rotate(q) * sin, k * cos + _stack_rotate(k) * sin
        if self.chunkwise:
            mask_w, mask_h = pos[2], pos[3]
            v = v.reshape(b, h, w, n, d).permute(0, 1, 3, 2, 4)  # (b, h, n, w, d)
            v = _decayed_softmax(qr.transpose(1, 2), kr.transpose(1, 2), v, mask_w)
            out = _decayed_softmax(
                qr.permute(0, 3, 1, 2, 4), kr.permute(0, 3, 1, 2, 4), v.permute(0, 3, 2, 1, 4), mask_h
            )
            out = out.permute(0, 3, 1, 2, 4).flatten(-2)  # (b, w, n, h, d) -> (b, h, w, c)
        else:
            qr, kr = qr.flatten(2, 3), kr.flatten(2, 3)  # (b, n, hw, d)
            v = v.reshape(b, h, w, n, d).permute(0, 3, 1, 2, 4).flatten(2, 3)
            out = _decayed_softmax(qr, kr, v, pos[2]).transpose(1, 2).reshape(b, h, w, c)
        return self.out_proj(out + lepe)

    def _attend(self, q, k, v, bias, decay, width: int) -> torch.Tensor:
        if self.attn_impl == "flex":
            return _flex(q, k, v, decay.to(q.dtype), width)
        if self.attn_impl in ("matmul", "triton") or (
            self.attn_impl == "auto" and _auto_matmul(q.device, k.shape[-2], width)
        ):
            return _matmul_softmax(q, k, v, bias)
        return _sdpa(q, k, v, bias)

    def _row_then_column(self, q, k, v, masks, decay) -> torch.Tensor:
        """q, k (b, h, N, w, d), v (b, h, w, N, d) -> (b, h, w, N, d): rows, then columns of the rows' output."""
        b, h, n, w, d = q.shape
        mask_w, mask_h = masks
        out = self._attend(q.flatten(0, 1), k.flatten(0, 1), v.transpose(2, 3).flatten(0, 1), mask_w, decay, 0)
        cols = lambda t: t.view(b, h, n, w, d).permute(0, 3, 2, 1, 4).reshape(b * w, n, h, d)  # noqa: E731
        out = self._attend(cols(q), cols(k), cols(out), mask_h, decay, 0)  # (b*w, N, h, d)
        return out.view(b, w, n, h, d).permute(0, 3, 1, 2, 4)

    def _whole_image(self, q, k, v, masks, decay) -> torch.Tensor:
        """q, k (b, N, h, w, d), v (b, h, w, N, d) -> (b, h, w, N, d)."""
        b, n, h, w, d = q.shape
        q, k, v = q.flatten(2, 3), k.flatten(2, 3), v.flatten(1, 2).transpose(1, 2)
        if len(masks) == 1 or self.attn_impl == "flex":
            out = self._attend(q, k, v, masks[0], decay, w)
        else:
            out = self._whole_image_blocks(q, k, v, *masks, decay)
        return out.transpose(1, 2).unflatten(1, (h, w))

    def _whole_image_blocks(self, q, k, v, mask_h, mask_w, decay) -> torch.Tensor:
        """Query blocks of whole image rows, each with its own slice of the mask, so no (HW)^2 mask is held."""
        h, w = mask_h.shape[-1], mask_w.shape[-1]
        step = max(1, MAX_MASK_ELEMS // (self.num_heads * w * h * w))
        outs = []
        for start in range(0, h, step):
            bias = _manhattan_bias(mask_h, mask_w, slice(start, start + step))[None]
            outs.append(self._attend(q[:, :, start * w : (start + step) * w], k, v, bias, decay, w))
        return torch.cat(outs, dim=2)


class FeedForward(nn.Module):
    """FFN: fc1, GELU, a residual depthwise 3x3 conv, fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.dwconv = DWConv2d(hidden, 3, residual=True)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dwconv(self.act(self.fc1(x))))


class RetBlock(nn.Module):
    """CPE, then MaSA and FFN in pre-norm residuals, with optional layer scale (gamma_1, gamma_2)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        chunkwise: bool,
        drop_path: float,
        layer_scale: float | None,
        attn_impl: str,
    ):
        super().__init__()
        self.pos = DWConv2d(dim, 3, residual=True)
        self.retention_layer_norm = nn.LayerNorm(dim, eps=1e-6)
        self.retention = ManhattanSelfAttention(dim, num_heads, chunkwise, attn_impl)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.final_layer_norm = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = FeedForward(dim, int(mlp_ratio * dim))
        if layer_scale:
            self.gamma_1 = nn.Parameter(torch.full((1, 1, 1, dim), layer_scale))
            self.gamma_2 = nn.Parameter(torch.full((1, 1, 1, dim), layer_scale))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x: torch.Tensor, pos: tuple[torch.Tensor, ...], decay: torch.Tensor) -> torch.Tensor:
        x = self.pos(x)
        y = self.retention(self.retention_layer_norm(x), pos, decay)
        x = x + self.drop_path(y if self.gamma_1 is None else self.gamma_1 * y)
        y = self.ffn(self.final_layer_norm(x))
        return x + self.drop_path(y if self.gamma_2 is None else self.gamma_2 * y)


class PatchMerging(nn.Module):
    """Downsample between stages: conv3x3 stride 2 (`reduction`) and BatchNorm (`norm`), channels-last in and out."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.reduction = nn.Conv2d(dim, out_dim, 3, 2, 1)
        self.norm = nn.BatchNorm2d(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)


class RMTStage(nn.Module):
    """`depth` RetBlocks sharing one DecayPosition, then an optional PatchMerging."""

    def __init__(
        self,
        dim: int,
        out_dim: int | None,
        depth: int,
        num_heads: int,
        init_value: float,
        heads_range: float,
        mlp_ratio: float,
        chunkwise: bool,
        drop_path: list[float],
        layer_scale: float | None,
        attn_impl: str,
        cache: PositionCache | None = None,
    ):
        super().__init__()
        self.Relpos = DecayPosition(dim, num_heads, init_value, heads_range, chunkwise, cache)
        self.blocks = nn.ModuleList(
            RetBlock(dim, num_heads, mlp_ratio, chunkwise, drop_path[i], layer_scale, attn_impl) for i in range(depth)
        )
        self.downsample = PatchMerging(dim, out_dim) if out_dim is not None else None
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (stage output before downsampling, input of the next stage)."""
        h, w = x.shape[1], x.shape[2]
        pos = self.Relpos(h, w, x.dtype, cached=self.blocks[0].retention.attn_impl != "reference")
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x, pos, self.Relpos.decay, use_reentrant=False)
            else:
                x = blk(x, pos, self.Relpos.decay)
        return x, (self.downsample(x) if self.downsample is not None else x)


class PatchEmbed(nn.Module):
    """Stem of four 3x3 convs (stride 4 in all), returning channels-last tokens."""

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        half = dim // 2
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, half, 3, 2, 1), nn.BatchNorm2d(half), nn.GELU(),
            nn.Conv2d(half, half, 3, 1, 1), nn.BatchNorm2d(half), nn.GELU(),
            nn.Conv2d(half, dim, 3, 2, 1), nn.BatchNorm2d(dim), nn.GELU(),
            nn.Conv2d(dim, dim, 3, 1, 1), nn.BatchNorm2d(dim),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class RMT(StagedModel):
    """RMT backbone and classifier, with timm's model interface.

    The head is the official one: a 1024-wide projection, BatchNorm and SiLU on every token, average pooling,
    then the classifier (plus, with `token_label`, the max-pooled token classifier `aux_head`). The official
    `forward_features` ends after the pooling; ours ends before it, after the projection, channels-last
    (`output_fmt` "NHWC", `num_features` 1024), except for a token-labelling model with classes whose
    `aux_head` reads the last stage's tokens: its `forward_features` is that stage's map (`num_features` 512)
    and the projection opens `forward_head`. `features_only=True` makes it a backbone returning NCHW stage
    outputs (strides 4..32) for `out_indices`.
    """

    stages_attr = "layers"
    projection_modules = ("proj", "norm")
    head_modules = ("aux_head",)

    def __init__(
        self,
        embed_dims: tuple[int, ...] = (64, 128, 256, 512),
        depths: tuple[int, ...] = (2, 2, 8, 2),
        num_heads: tuple[int, ...] = (4, 4, 8, 16),
        init_values: tuple[float, ...] = (2, 2, 2, 2),
        heads_ranges: tuple[float, ...] = (4, 4, 6, 6),
        mlp_ratios: tuple[float, ...] = (3, 3, 3, 3),
        chunkwise_recurrents: tuple[bool, ...] = (True, True, False, False),
        layerscales: tuple[bool, ...] = (False, False, False, False),
        layer_init_values: float = 1e-6,
        projection: int = 1024,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        token_label: bool = False,
        aux_head_on: str = "stage",
        features_only: bool = False,
        out_indices: int | tuple[int, ...] | None = (0, 1, 2, 3),
        attn_impl: str = "auto",
    ):
        """
        Args:
            embed_dims: Channels of each stage's tokens.
            depths: Blocks per stage.
            num_heads: Attention heads per stage.
            init_values: Per stage, the decay of the first head: gamma = 1 - 2^-(init_value + ...).
            heads_ranges: Per stage, how far the heads' decays spread: head h of H adds heads_range * h / H.
            mlp_ratios: Per stage, the feed-forward width over the token width.
            chunkwise_recurrents: Per stage, attention decomposed along rows then columns (True) or over the
                whole image (False), as the official code chooses per variant.
            layerscales: Per stage, whether blocks scale their residual branches by learned factors.
            layer_init_values: Initial value of those factors.
            projection: Width of the head's projection (1x1 conv, BatchNorm, SiLU) before pooling.
            num_classes: Classifier outputs; 0 for no classifier.
            in_chans: Input image channels.
            global_pool: timm's pooling type for the head ("avg", or "" for none).
            drop_rate: Dropout before the classifier.
            drop_path_rate: Stochastic depth rate of the last block (rising linearly from 0 over the blocks).
            token_label: Add the token-labelling head `aux_head` (RMT-*-TL variants).
            aux_head_on: Where `aux_head` reads tokens: "stage" (the last stage, as the official code) or "proj"
                (after the projection).
            features_only: Build a backbone that returns NCHW stage outputs instead of logits.
            out_indices: The stages a features-only model returns, as timm takes them (an int n: the last n;
                negatives count from the end).
            attn_impl: How attention runs: "auto" (by row length and device), "matmul", "sdpa", "flex" or
                "reference" (the official computation, for checks); see ATTN_IMPLS.
        """
        super().__init__()
        if aux_head_on not in ("stage", "proj"):
            raise ValueError(f"aux_head_on must be 'stage' or 'proj', not {aux_head_on!r}.")
        self.num_classes = num_classes
        self.features_only = features_only
        self.out_indices = stage_indices(len(depths), out_indices)
        self.output_fmt = "NCHW" if features_only else "NHWC"
        stage_tokens_read = token_label and aux_head_on == "stage" and num_classes > 0
        self.projection_at = "none" if features_only else "head" if stage_tokens_read else "features"
        self.num_features = projection if self.projection_at == "features" else embed_dims[-1]
        self.head_hidden_size = projection
        self.token_label = token_label
        self.aux_head_on = aux_head_on
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        rates = [drop_path_rate * i / max(1, sum(depths) - 1) for i in range(sum(depths))]
        self.layers = nn.ModuleList()
        cache = PositionCache()  # one budget for the whole model's tables
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.layers.append(
                RMTStage(
                    embed_dims[i],
                    embed_dims[i + 1] if i + 1 < len(depths) else None,
                    depth,
                    num_heads[i],
                    init_values[i],
                    heads_ranges[i],
                    mlp_ratios[i],
                    chunkwise_recurrents[i],
                    rates[start : start + depth],
                    layer_init_values if layerscales[i] else None,
                    attn_impl,
                    cache,
                )
            )
        info = [dict(num_chs=c, reduction=4 * 2**i, module=f"layers.{i}") for i, c in enumerate(embed_dims)]
        self.feature_info = FeatureInfo(info, self.out_indices) if features_only else info
        if features_only:
            self.proj = self.norm = self.head = self.aux_head = None
        else:
            self.proj = nn.Linear(embed_dims[-1], projection)
            self.norm = nn.BatchNorm2d(projection)
            self.head_drop = nn.Dropout(drop_rate)
            self.reset_classifier(num_classes, global_pool)
        self.set_attn_impl(attn_impl)
        self.apply(self._init_weights)
        for m in self.modules():
            if isinstance(m, ManhattanSelfAttention):
                for part in m.qkv.weight.chunk(3):
                    nn.init.xavier_normal_(part, gain=2**-2.5)
                nn.init.xavier_normal_(m.out_proj.weight)
                nn.init.zeros_(m.out_proj.bias)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def set_attn_impl(self, attn_impl: str) -> "RMT":
        """Switch every MaSA between "auto" (the fused kernels on CUDA where they build: `auto_takes`; else
        matmul-softmax or SDPA by device and row length: `_auto_matmul`),
        "matmul" (always batched matmul-softmax), "sdpa", "flex" (FlexAttention, compiled; meant for CUDA), "triton"
        (zoo/_retention_triton.py, forward and backward) and "reference" (official-shaped,
        the test oracle)."""
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {', '.join(ATTN_IMPLS)}, not {attn_impl!r}.")
        if attn_impl == "triton":
            _retention_triton.require()
        for m in self.modules():
            if isinstance(m, ManhattanSelfAttention):
                m.attn_impl = attn_impl
            elif isinstance(m, DWConv2d):
                m.reference = attn_impl == "reference"
        return self

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for layer-wise learning-rate decay: stem, then stage by stage (block by block)."""
        return dict(
            stem=r"^patch_embed",
            blocks=r"^layers\.(\d+)" if coarse else [
                (r"^layers\.(\d+)\.blocks\.(\d+)", None),
                (r"^layers\.(\d+)\.downsample", (99998,)),
                (r"^proj|^norm", (99999,)),
            ],
        )  # fmt: skip

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier, and token-labelling head, for `num_classes`; global_pool "avg", or "" for the map."""
        super().reset_classifier(num_classes, global_pool)
        aux_in = self.num_features if self.aux_head_on == "stage" else self.head_hidden_size
        self.aux_head = nn.Linear(aux_in, num_classes) if self.token_label and num_classes > 0 else None

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.norm(self.proj(x).permute(0, 3, 1, 2))).permute(0, 2, 3, 1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        projected = self.project(x) if self.projection_at == "head" else x
        pooled = self._pool(projected)
        if pre_logits:
            return pooled
        logits = self.head(self.head_drop(pooled))
        if self.aux_head is not None:  # on forward_features' tokens when aux_head_on is "stage", else projected ones
            tokens = x if self.aux_head_on == "stage" else projected
            logits = logits + 0.5 * self.aux_head(tokens).flatten(1, 2).amax(1)
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.features_only:
            return self.forward_intermediates(x, self.out_indices, intermediates_only=True)
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state: StateDict, model: nn.Module) -> StateDict:
    """Official keys to ours: q/k/v projections concatenated into `qkv`; everything else is named alike."""
    out: StateDict = {}
    for key, value in state.items():
        if ".retention.q_proj." in key:
            k_key, v_key = key.replace(".q_proj.", ".k_proj."), key.replace(".q_proj.", ".v_proj.")
            if k_key in state and v_key in state:
                out[key.replace(".q_proj.", ".qkv.")] = torch.cat([value, state[k_key], state[v_key]])
                continue
        elif (".retention.k_proj." in key or ".retention.v_proj." in key) and (
            key.replace(".k_proj.", ".q_proj.").replace(".v_proj.", ".q_proj.") in state
        ):
            continue
        out[key] = value
    return out


def _mismatch_hint(state: StateDict, model: RMT) -> str:
    """Name the known layouts that do not fit the current architecture, and checkpoints of other models."""
    if not any(".blocks.0.retention." in k for k in state):
        return "It does not look like an RMT checkpoint (it has no layers.*.blocks.*.retention keys)."
    aux = state.get("aux_head.weight")
    if aux is not None and model.aux_head_on == "stage" and aux.shape[1] == model.head_hidden_size:
        return (
            f"Its aux_head takes {aux.shape[1]} inputs, as the released RMT-S* weights are reported to (512,000 more "
            f"parameters than the official code); build with aux_head_on='proj' to apply it to the "
            f"{aux.shape[1]}-wide projected tokens, a reading the official code does not confirm."
        )
    if not any(k.endswith("Relpos.angle") for k in state) and not any(".ffn.dwconv." in k for k in state):
        return (
            "It looks like the Dec 2023 release of RMT (no rotary position, no FFN dwconv, no 1024-wide head), "
            "which the current architecture cannot load."
        )
    return ""


FAMILY = Family(
    "rmt",
    "RMT, from *Retentive Networks Meet Vision Transformers* (CVPR 2024): a hierarchical vision transformer whose "
    "Manhattan self-attention (MaSA) adds a decay by the Manhattan distance between tokens to the attention scores",
    code="https://github.com/qhfan/RMT",
    built_by="zoo",
)
_PAPER = "https://arxiv.org/abs/2309.11523"
_ARCHS: dict[str, dict] = {
    "rmt_t": dict(
        embed_dims=(64, 128, 256, 512), depths=(2, 2, 8, 2), num_heads=(4, 4, 8, 16), heads_ranges=(4, 4, 6, 6),
        mlp_ratios=(3, 3, 3, 3), chunkwise_recurrents=(True, True, False, False), layerscales=(False,) * 4,
        drop_path_rate=0.1,
    ),
    "rmt_s": dict(
        embed_dims=(64, 128, 256, 512), depths=(3, 4, 18, 4), num_heads=(4, 4, 8, 16), heads_ranges=(4, 4, 6, 6),
        mlp_ratios=(4, 4, 3, 3), chunkwise_recurrents=(True, True, True, False), layerscales=(False,) * 4,
        drop_path_rate=0.15,
    ),
    "rmt_b": dict(
        embed_dims=(80, 160, 320, 512), depths=(4, 8, 25, 8), num_heads=(5, 5, 10, 16), heads_ranges=(5, 5, 6, 6),
        mlp_ratios=(4, 4, 3, 3), chunkwise_recurrents=(True, True, True, False),
        layerscales=(False, False, True, True), layer_init_values=1e-6, drop_path_rate=0.4,
    ),
    "rmt_l": dict(
        embed_dims=(112, 224, 448, 640), depths=(4, 8, 25, 8), num_heads=(7, 7, 14, 20), heads_ranges=(6, 6, 6, 6),
        mlp_ratios=(4, 4, 3, 3), chunkwise_recurrents=(True, True, True, False),
        layerscales=(False, False, True, True), layer_init_values=1e-6, drop_path_rate=0.5,
    ),
}  # fmt: skip


def _info(name: str, official_fn: str, params: int, gflops: float, top1: float) -> ModelInfo:
    token_label = name.endswith("_tl")
    return ModelInfo(
        name=name,
        family=FAMILY.name,
        arch=dict(_ARCHS[name.removesuffix("_tl")], token_label=token_label),
        paper_params_m=params / 1e6,
        paper_gflops=gflops,
        paper_top1=top1,
        hf_hub_id=f"{DEFAULT_HUB_ORG}/{name}",
        hf_hub_filename="model.safetensors",
        paper=_PAPER,
        prefer_ema=name != "rmt_t",  # RMT-T reports its plain weights, S/B/L their EMA weights (qhfan/RMT #25)
        notes=f"official builder {official_fn}; params are the official code's count; GFLOPs as the paper prints "
        "them; qhfan/RMT states no license",
        first_conv="patch_embed.proj.0",
        classifier=("head", "aux_head") if token_label else "head",
        hub_org_env=ORG_ENV,
        comparable=not token_label,  # trained with extra supervision
    )


# name: official builder, params of the official code, paper GFLOPs, paper top-1
_VARIANTS: dict[str, tuple[str, int, float, float]] = {
    "rmt_t": ("RMT_T3", 14_334_216, 2.5, 82.4),
    "rmt_s": ("RMT_S", 26_967_240, 4.5, 84.1),
    "rmt_b": ("RMT_M2", 54_154_896, 9.7, 85.0),
    "rmt_l": ("RMT_L6", 95_464_864, 18.2, 85.5),
    "rmt_s_tl": ("RMT_S (token labeling)", 26_967_240 + 513_000, 4.5, 84.8),
    "rmt_b_tl": ("RMT_M2 (token labeling)", 54_154_896 + 513_000, 9.7, 85.6),
    "rmt_l_tl": ("RMT_L6 (token labeling)", 95_464_864 + 641_000, 18.2, 86.1),
}
INFOS: dict[str, ModelInfo] = {name: _info(name, *row) for name, row in _VARIANTS.items()}


def _create(variant: str, pretrained: bool | str | Path = False, **kwargs) -> RMT:
    return create(RMT, variant, pretrained, filter_fn=checkpoint_filter_fn, hint=_mismatch_hint, **kwargs)


register_family(FAMILY, INFOS.values(), _create)
