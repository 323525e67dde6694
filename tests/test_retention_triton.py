"""attn_impl="triton" (zoo/_retention_triton.py): numerics through Triton's interpreter on CPU tensors against
attn_impl="matmul" (fp32 and fp16; the interpreter's tl.dot is wrong on bf16 operands), the sm_90 build of every
stage shape of every RMT size (registers and spills, from ptxas), and torch.compile / torch.export.

Triton's interpreter needs TRITON_INTERPRET=1 before triton is first imported, and would then take over every
Triton kernel of the process, so the numeric cases run in one child process (this file run as a script), which
reports each case's error and fused calls as JSON; the tests here assert on them.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import operator
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from bench.flops import count_gmacs
from zoo import _retention, _rmt_fast, _rmt_reference, rmt
from zoo import _retention_triton as rt
from zoo._op_cost import OpCost, cost_of


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max|ours - ref| / max|ref|, the fixtures' criterion (the child process runs outside pytest: no fixtures)."""
    return ((ours - ref).abs().max() / ref.abs().max()).item()


triton = pytest.importorskip("triton", reason="attn_impl='triton' needs triton (installed with torch on Linux)")

TINY = dict(
    embed_dims=(16, 32, 48, 64),
    depths=(1, 1, 1, 1),
    num_heads=(2, 2, 4, 4),
    mlp_ratios=(3, 3, 3, 3),
    chunkwise_recurrents=(True, True, False, False),
    projection=96,
    num_classes=10,
)  # fmt: skip  (head dims 8, 16, 12, 16: padded to the kernel's 16-wide tiles)
TOL = {"fp32": 1e-5, "fp16": 2e-3}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
# The op alone against fp64 (grid, heads, head dim, chunkwise, dtype): stage 1 of an 800x1344 input has rows of 336
# keys (6 key blocks) and columns of 200 (13 blocks of image rows, each looping over all 200 rows); two rows of it,
# and two columns of 72 (5 blocks of rows: the same loops, a third of the interpreter's time), stand for the grid.
OP_CASES = {
    "rows_336": ((2, 336), 1, 16, True, torch.float32),
    "columns_72": ((72, 2), 1, 16, True, torch.float32),
    "rows_cols_fp16": ((13, 17), 2, 32, True, torch.float16),
    "whole_fp32": ((5, 6), 2, 16, False, torch.float32),
}
# Gradients of the op alone against autograd of fp64 matmul-softmax: rows and columns, fp32 and fp16 (one block a
# sequence: one launch a pass), fp16 rows of 20 at head dim 32 (two heads to the 64-token tile such rows take; 3
# heads: the second pair half past the last), a whole image of 70 tokens and rows of 40 (fp32's backward blocks
# hold 32 tokens: key and query loops over blocks, the rows' pass adding to the columns' dq, dk).
GRAD_CASES = {
    "grad_rows_cols_fp32": ((7, 9), 2, 16, True, torch.float32),
    "grad_rows_cols_fp16": ((7, 9), 2, 16, True, torch.float16),
    "grad_rows_paired_fp16": ((5, 20), 3, 32, True, torch.float16),
    "grad_whole_fp32": ((5, 14), 2, 16, False, torch.float32),
    "grad_rows_40_fp32": ((2, 40), 1, 16, True, torch.float32),
}
# Short rows packed into 64-token tiles (`rt.PACK_ROWS`), the op's output and gradients against fp64 (16-bit only:
# fp32 never packs): 13x17 packs two image rows of 32 slots in the forward (13 rows: the last pair half past the
# image) and two heads of 32 / four of 16 in the backward's rows and columns; 7x9 four rows of 16, and its 3 heads
# leave one slot of the backward's packs of four past the last head.
PACKED_CASES = {
    "packed_rows_cols_fp16": ((13, 17), 2, 32, True, torch.float16),
    "packed_heads_fp16": ((7, 9), 3, 16, True, torch.float16),
}
# The depthwise taps kernels (`rt.fused_taps`), forward and backward, against autograd of fp64 GELU and conv2d:
# (B, H, W, C), K, gelu, in_bias, u NCHW-ordered, dtype. 19 rows: two programs' chunks of 16; 70 wide: two blocks of
# 64 pixels; 300 channels: two blocks, the second partial; 5x5 as LePE's.
TAPS_CASES = {
    "taps_ffn_fp32": ((2, 5, 7, 24), 3, True, True, False, torch.float32),
    "taps_cpe_nchw_fp32": ((1, 19, 70, 40), 3, False, False, True, torch.float32),
    "taps_5x5_fp32": ((2, 4, 3, 16), 5, True, False, False, torch.float32),
    "taps_channels_fp32": ((2, 9, 9, 300), 3, True, True, False, torch.float32),
    "taps_ffn_fp16": ((2, 6, 11, 24), 3, True, True, False, torch.float16),
}
MASA_CASES = [f"{h}x{w}-{form}-{dt}" for h, w in ((7, 9), (13, 17)) for form in ("rows_cols", "whole") for dt in DTYPES]


# --- the child: every case that runs the kernel -----------------------------------------------------------------------


class _Calls:
    """Counts calls of the fused op (their `chunkwise`), so that a silent fallback to matmul cannot pass."""

    def __init__(self):
        self.seen: list[bool] = []
        self._fused = rt.retention
        rt.retention = self

    def __call__(self, qkv, weight, bias, rot, decay, chunkwise):
        self.seen.append(chunkwise)
        return self._fused(qkv, weight, bias, rot, decay, chunkwise)

    def take(self) -> list[bool]:
        seen, self.seen = self.seen, []
        return seen


class _NormCalls:
    """Counts calls of `rt.norm_linear` (whether each adds a residual, and whether it scales it)."""

    def __init__(self):
        self.seen: list[list[bool]] = []
        self._fused = rt.norm_linear
        rt.norm_linear = self

    def __call__(self, x, norm, layer, y=None, scale=None):
        self.seen.append([y is not None, scale is not None])
        return self._fused(x, norm, layer, y, scale)

    def take(self) -> list[list[bool]]:
        seen, self.seen = self.seen, []
        return seen


class _Backwards:
    """Counts runs of the fused backward (their `chunkwise`), so that gradients from elsewhere cannot pass; not the
    op's fake implementation, which plans the same launches on fake tensors while a graph is traced."""

    def __init__(self):
        self.seen: list[bool] = []
        self._plan = rt.backward_plan
        rt.backward_plan = self

    def __call__(self, dout, qkv, rot, decay, dv_add, chunkwise, run):
        if not isinstance(qkv, FakeTensor):
            self.seen.append(chunkwise)
        return self._plan(dout, qkv, rot, decay, dv_add, chunkwise, run)

    def take(self) -> list[bool]:
        seen, self.seen = self.seen, []
        return seen


def _masa(dim: int, heads: int, chunkwise: bool, dtype: torch.dtype, x: torch.Tensor) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    relpos = rmt.DecayPosition(dim, heads, 2, 4, chunkwise)
    masa = rmt.ManhattanSelfAttention(dim, heads, chunkwise).eval().to(dtype)
    outs = {}
    with torch.no_grad():
        for impl in ("matmul", "triton"):
            outs[impl] = masa(x.to(dtype), relpos(x.shape[1], x.shape[2], dtype), relpos.decay, impl)
    return outs


def _official(qkv, weight, bias, sin, cos, decay, chunkwise: bool) -> torch.Tensor:
    """The op's result in fp64, from the official formulas: q and k rotated (the official stack-based pair
    rotation) and k scaled by 1/sqrt(d), softmax(q k^T + decay * distance) v over each row, then over each column of
    the rows' output (chunkwise), or over the whole image with the Manhattan distance, plus LePE, the depthwise
    conv (weight, bias) of v (the official DWConv2d: an NCHW conv2d). The official-shaped rotation and softmax and
    the distance table are the reference path's private helpers: the oracle's own. qkv: (b, h, w, 3, N, d)."""
    qkv, decay = qkv.double(), decay.double()[:, None, None]
    q, k, _ = qkv.permute(3, 0, 1, 4, 2, 5) if chunkwise else qkv.permute(3, 0, 4, 1, 2, 5)
    v = qkv[:, :, :, 2]
    shape = (1, q.shape[1], 1, q.shape[3], -1) if chunkwise else (1, 1, q.shape[2], q.shape[3], -1)
    sin, cos = sin.double().reshape(shape), cos.double().reshape(shape)
    q = q * cos + _rmt_reference._stack_rotate(q) * sin
    k = (k * cos + _rmt_reference._stack_rotate(k) * sin) * k.shape[-1] ** -0.5
    image = v.flatten(3).permute(0, 3, 1, 2)  # (b, C, h, w)
    lepe = F.conv2d(image, weight.double(), bias.double(), padding=weight.shape[-1] // 2, groups=image.shape[1])
    return lepe.permute(0, 2, 3, 1).view(v.shape) + _official_attention(q, k, v, decay, chunkwise)


def _official_attention(q, k, v, decay, chunkwise: bool) -> torch.Tensor:
    if chunkwise:  # q, k (b, h, N, w, d), v (b, h, w, N, d)
        b, h, n, w, d = q.shape
        rows = _rmt_reference._decayed_softmax(q, k, v.transpose(2, 3), decay * rmt._abs_distance(w, q.device))
        cols = lambda t: t.permute(0, 3, 2, 1, 4)  # noqa: E731  (b, h, N, w, d) -> (b, w, N, h, d)
        out = _rmt_reference._decayed_softmax(cols(q), cols(k), cols(rows), decay * rmt._abs_distance(h, q.device))
        return out.permute(0, 3, 1, 2, 4)
    b, n, h, w, d = q.shape  # q, k (b, N, h, w, d)
    bias = _retention.manhattan_bias(
        decay * rmt._abs_distance(h, q.device), decay * rmt._abs_distance(w, q.device), slice(None)
    )
    out = _rmt_reference._decayed_softmax(q.flatten(2, 3), k.flatten(2, 3), v.flatten(1, 2).transpose(1, 2), bias)
    return out.transpose(1, 2).unflatten(1, (h, w))


def _op_inputs(grid: tuple[int, int], heads: int, head_dim: int, chunkwise: bool, dtype: torch.dtype):
    """A random qkv projection (b, h, w, 3, N, d) with q and k unrotated, non-contiguous (every other element of a
    larger tensor), and the LePE conv's weight and bias (fp32, 5x5) for the op, the stage's rotary sin and cos
    (h, w, 1, d) and the tables MaSA passes (`rotary_tables`), and the decay."""
    torch.manual_seed(0)
    h, w = grid
    qkv = torch.randn(1, h, w, 3, heads, 2 * head_dim, dtype=dtype)[..., ::2]
    weight, bias = torch.randn(heads * head_dim, 1, 5, 5) / 5, torch.randn(heads * head_dim)
    sin, cos = rmt.DecayPosition(heads * head_dim, heads, 2, 4, chunkwise).rotary(h, w, torch.float32)
    rot = _rmt_fast.rotary_tables(sin, cos, chunkwise, dtype, False)[0]
    return (qkv, weight, bias, rot, torch.log(1 - 2 ** (-2.0 - torch.arange(heads)))), (sin, cos)


def _op_case(*case) -> float:
    """The op's output against `_official`."""
    (qkv, weight, bias, rot, decay), tables = _op_inputs(*case)
    chunkwise = case[3]
    ours = rt._retention_op(qkv, weight, bias, rot, decay, chunkwise).double()
    if case[-1] != torch.float32:  # the op rounds the conv's weights to v's dtype, as autocast would
        weight, bias = weight.to(case[-1]), bias.to(case[-1])
    return rel_err(ours, _official(qkv, weight, bias, *tables, decay, chunkwise))


def _grad_case(*case) -> float:
    """The worst of the op's gradients of qkv (q and k unrotated) and of the LePE conv's weight and bias (its fused
    backward and the conv's) against autograd of `_official` (fp64)."""
    (qkv, weight, bias, rot, decay), tables = _op_inputs(*case)
    chunkwise = case[3]
    dout = torch.randn(qkv[:, :, :, 2].shape, dtype=torch.float64)
    ours = [t.detach().requires_grad_() for t in (qkv, weight, bias)]
    rounded = (qkv, weight.to(qkv.dtype), bias.to(qkv.dtype))  # the conv's weights as the op takes them
    ref = [t.detach().double().requires_grad_() for t in rounded]
    rt._retention_op(*ours, rot, decay, chunkwise).backward(dout.to(qkv.dtype))
    _official(*ref, *tables, decay, chunkwise).backward(dout)
    return max(rel_err(a.grad.double(), b.grad) for a, b in zip(ours, ref))


def _taps_reference(u, in_bias, weight, bias, gelu: bool) -> torch.Tensor:
    a = u if in_bias is None else u + in_bias
    a = F.gelu(a) if gelu else a
    k = weight.shape[-1]
    return F.conv2d(a.permute(0, 3, 1, 2), weight, bias, padding=k // 2, groups=u.shape[-1]).permute(0, 2, 3, 1)


def _taps_case(shape, k: int, gelu: bool, in_bias: bool, nchw: bool, dtype: torch.dtype) -> dict:
    """`rt.fused_taps`'s output and its gradients of u, the weight, the bias and in_bias against autograd of
    `_taps_reference` in fp64 (the parameters rounded to dtype, as the kernel rounds them); the worst error."""
    b, h, w, c = shape
    u = torch.randn(b, c, h, w).permute(0, 2, 3, 1) if nchw else torch.randn(b, h, w, c)
    params = [torch.randn(c, 1, k, k) * 0.3, torch.randn(c)] + ([torch.randn(c)] if in_bias else [])
    dout = torch.randn(b, h, w, c).to(dtype)
    ours = [u.to(dtype).requires_grad_()] + [t.clone().requires_grad_() for t in params]
    ref = [ours[0].detach().double().requires_grad_()] + [t.to(dtype).double().requires_grad_() for t in params]
    out = rt.fused_taps(ours[0], ours[1], ours[2], ours[3] if in_bias else None, gelu)
    out.backward(dout)
    expected = _taps_reference(ref[0], ref[3] if in_bias else None, ref[1], ref[2], gelu)
    expected.backward(dout.double())
    errs = [rel_err(out.double(), expected)] + [rel_err(a.grad.double(), e.grad) for a, e in zip(ours, ref)]
    return dict(err=max(errs), dtype=str(out.dtype), contiguous=out.is_contiguous())


class _TapsCalls:
    """Counts runs of the taps kernels' forward and backward (not their fake implementations, which plan on fake
    tensors while a graph is traced)."""

    def __init__(self):
        self.seen: list[str] = []
        self._plans = rt._taps_plan, rt._taps_backward_plan
        rt._taps_plan = lambda u, *args: self._note("forward", u, self._plans[0], u, *args)
        rt._taps_backward_plan = lambda dout, u, *args: self._note("backward", u, self._plans[1], dout, u, *args)

    def _note(self, kind, u, plan, *args):
        if not isinstance(u, FakeTensor):
            self.seen.append(kind)
        return plan(*args)

    def take(self) -> list[str]:
        seen, self.seen = self.seen, []
        return seen


def _taps_compiled_train_case() -> dict:
    """A block's FFN and CPE in a compiled training step (aot_eager, fullgraph) where the taps kernels are taken
    (the interpreter's CPU standing for CUDA): parameter gradients against the eager step's (the convs), and the
    kernels' runs."""
    torch.manual_seed(0)
    ffn, cpe = rmt.FeedForward(16, 48), _rmt_fast.DWConv2d(16, 3, residual=True)
    x = torch.randn(2, 9, 7, 16)
    built = rt.taps_available(x)  # the probe's own runs before the count
    calls = _TapsCalls()
    grads = {}
    for name in ("eager", "compiled"):
        step = lambda t: ffn(cpe(t))  # noqa: E731
        fn = torch.compile(step, fullgraph=True, backend="aot_eager") if name == "compiled" else step
        ffn.zero_grad(), cpe.zero_grad()
        fn(x).square().sum().backward()
        grads[name] = [p.grad.clone() for p in (*ffn.parameters(), *cpe.parameters())]
        grads[name + "_calls"] = calls.take()
    errs = [rel_err(a, b) for a, b in zip(grads["compiled"], grads["eager"])]
    return dict(err=max(errs), eager=grads["eager_calls"], compiled=grads["compiled_calls"], built=built)


def _lepe_rounding_case() -> dict[str, float]:
    """The output at the centre of a 3x3 grid (one head, one image) whose v is 1 at the centre's upper and lower
    neighbours and 0 elsewhere, the LePE weights there 1 + 2^-11 and -1 (0 elsewhere, no bias), and a decay of -1000
    (attention one-hot on each token itself, so 0 at the centre), per dtype and form. In fp32 the conv gives 2^-11;
    in fp16 the weights are rounded first, as autocast's conv takes them, and 1 + 2^-11 rounds to 1: 0."""
    out = {}
    for dtype in (torch.float32, torch.float16):
        qkv = torch.zeros(1, 3, 3, 3, 1, 16, dtype=dtype)
        qkv[0, 0, 1, 2], qkv[0, 2, 1, 2] = 1, 1  # v at (0, 1) and (2, 1)
        weight, bias = torch.zeros(16, 1, 5, 5), torch.zeros(16)
        weight[:, 0, 1, 2], weight[:, 0, 3, 2] = 1 + 2**-11, -1  # taps (-1, 0) and (+1, 0)
        for chunkwise in (True, False):
            rot = torch.ones(2, 2, *((1, 3, 1, 3, 16) if chunkwise else (1, 1, 3, 3, 16)))
            rot[1] = 0  # cos 1, sin 0: no rotation
            value = rt._retention_op(qkv, weight, bias, rot, torch.full((1,), -1000.0), chunkwise)[0, 1, 1, 0]
            out[f"{str(dtype)[6:]}-{'rows_cols' if chunkwise else 'whole'}"] = value.float().max().item()
    return out


# LayerNorm inside the matmul (`rt.norm_linear`) against fp64 with torch's roundings: (rows, K, N, dtype, residual,
# scale, autocast). K 80 and 48 are not multiples of the kernel's K blocks (64 16-bit, 32 fp32), N 200 and 100 not of
# its output blocks; 300 rows are three blocks of 128; x is a strided view (row stride 2K), or, where rows is
# (images, height, width), a (b, h, w, K) view of NCHW memory, as a stage's first block gets it.
NORM_CASES = {
    "norm_nchw_fp32": ((2, 5, 7), 48, 100, torch.float32, True, False, False),
    "norm_nchw_fp16": ((3, 6, 9), 80, 240, torch.float16, False, False, False),
    "norm_fp32": (37, 48, 100, torch.float32, False, False, False),
    "norm_residual_fp32": (130, 80, 200, torch.float32, True, False, False),
    "norm_scaled_fp32": (70, 64, 192, torch.float32, True, True, False),
    "norm_fp16": (300, 80, 200, torch.float16, False, False, False),
    "norm_residual_fp16": (70, 64, 192, torch.float16, True, False, False),
    "norm_scaled_fp16": (70, 48, 100, torch.float16, True, True, False),
    "norm_autocast_fp16": (70, 80, 240, torch.float16, True, True, True),
}


def _norm_case(rows, k: int, n: int, dtype: torch.dtype, residual: bool, scaled: bool, autocast: bool):
    """The op's output (its dtype, and its error against fp64: the sum, the LayerNorm's output and the parameters
    rounded where torch rounds them). Parameters fp32 under autocast (the op casts them), else in dtype."""
    torch.manual_seed(0)
    if isinstance(rows, tuple):
        b, h, w = rows
        x = (torch.randn(b, k, h, w) * 3 + 1).to(dtype).permute(0, 2, 3, 1)
    else:
        x = (torch.randn(rows, 2 * k) * 3 + 1).to(dtype)[:, ::2]
    y = torch.randn(x.shape).to(dtype) if residual else None
    norm, layer = torch.nn.LayerNorm(k, eps=1e-6), torch.nn.Linear(k, n)
    scale = torch.randn(k) if scaled else None
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
        if not autocast:
            norm, layer = norm.to(dtype), layer.to(dtype)
            scale = None if scale is None else scale.to(dtype)
        with torch.autocast("cpu", dtype=dtype, enabled=autocast):
            ours = rt.norm_linear(x, norm, layer, y, scale)
    s = x if y is None else x + (y if scale is None else scale * y)  # torch's promotions and roundings
    normed = F.layer_norm(s.double(), (k,), norm.weight.double(), norm.bias.double(), 1e-6).to(dtype).double()
    ref = F.linear(normed, layer.weight.to(dtype).double(), layer.bias.to(dtype).double())
    return dict(err=rel_err(ours.double(), ref), dtype=str(ours.dtype))


def _norm_rounding_case() -> dict[str, float]:
    """Two roundings the op must make, each at one output. "sum": fp16 x = 1 everywhere plus y = 2^-11 on half of 16
    channels: in fp16 the sum is 1 everywhere, so the row is constant, LayerNorm gives its bias (0) and the output is
    0; unrounded, the row's halves normalize to about +-0.24 and an output summing one half gives about 1.9.
    "bias": LayerNorm's gain 0 and bias 1 give 1 on every channel, a weight of -1 on one channel and the linear's
    bias b = 1 + 2^-11 + 2^-13 (fp32) make the output b - 1; under fp16 autocast b is rounded first, to 1 + 2^-10, as
    autocast casts it, so the output is 2^-10."""
    out = {}
    norm, layer = torch.nn.LayerNorm(16, eps=1e-6), torch.nn.Linear(16, 1)
    with torch.no_grad():
        layer.bias.zero_()
        layer.weight.zero_()[0, :8] = 1
        x, y = torch.ones(1, 16, dtype=torch.float16), torch.zeros(1, 16, dtype=torch.float16)
        y[0, :8] = 2**-11
        out["sum"] = rt.norm_linear(x, norm.half(), layer.half(), y).item()
        norm, layer = norm.float(), layer.float()
        norm.weight.zero_(), norm.bias.fill_(1.0)
        layer.weight.zero_()[0, 0] = -1
        layer.bias.fill_(1 + 2**-11 + 2**-13)
        for name, dtype in (("bias_fp32", torch.float32), ("bias_fp16", torch.float16)):
            with torch.autocast("cpu", dtype=torch.float16, enabled=dtype == torch.float16):
                out[name] = rt.norm_linear(torch.randn(1, 16).to(dtype), norm, layer).item()
    return out


def _norm_inputs_case() -> dict[str, float | list]:
    """Inputs torch takes that the kernel cannot read as they come: y broadcast over the rows, a one-element scale,
    a strided scale and LayerNorm gain (the kernel reads vectors as contiguous), and an empty image (0 rows wide).
    Errors against torch's layer(norm(x + scale * y)), fp32."""
    torch.manual_seed(0)
    norm, layer = torch.nn.LayerNorm(24), torch.nn.Linear(24, 17)
    out = {}
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
        x, y, scale = torch.randn(2, 3, 4, 24), torch.randn(2, 3, 4, 24), torch.randn(48)[::2]
        for name, r, s in (("y_broadcast", y[:1, :1], None), ("scale_one", y, scale[:1]), ("scale_strided", y, scale)):
            ref = layer(norm(x + (r if s is None else s * r)))
            out[name] = rel_err(rt.norm_linear(x, norm, layer, r, s), ref)
        norm.weight = torch.nn.Parameter(torch.randn(48)[::2])
        out["gain_strided"] = rel_err(rt.norm_linear(x, norm, layer), layer(norm(x)))
        out["empty_image"] = list(rt.norm_linear(torch.randn(2, 0, 4, 24), norm, layer).shape)
    return out


def _child() -> dict[str, dict]:
    calls, results = _Calls(), {}
    for case in MASA_CASES:  # odd, non-power-of-two grids, two heads; batch 2 on the smaller one
        grid, form, dt = case.split("-")
        h, w = map(int, grid.split("x"))
        outs = _masa(32, 2, form == "rows_cols", DTYPES[dt], torch.randn(2 if h * w < 100 else 1, h, w, 32))
        results[case] = dict(err=rel_err(outs["triton"].float(), outs["matmul"].float()), calls=calls.take())
    outs = _masa(32, 1, False, torch.float32, torch.randn(1, 25, 42, 32))
    results["dense_whole"] = dict(err=rel_err(outs["triton"], outs["matmul"]), calls=calls.take())
    for case, args in OP_CASES.items():
        results[case] = dict(err=_op_case(*args))
    rt.PACK_ROWS = True
    try:
        for case, args in PACKED_CASES.items():
            results[case] = dict(err=_op_case(*args), grad_err=_grad_case(*args))
    finally:
        rt.PACK_ROWS = False
    for case, args in NORM_CASES.items():
        results[case] = _norm_case(*args)
    results["norm_rounding"] = _norm_rounding_case()
    results["norm_inputs"] = _norm_inputs_case()
    results["lepe_rounding"] = _lepe_rounding_case()
    for case, args in TAPS_CASES.items():
        results[case] = _taps_case(*args)
    backwards = _Backwards()
    for case, args in GRAD_CASES.items():
        results[case] = dict(err=_grad_case(*args), backwards=backwards.take())
    torch.manual_seed(0)
    model = rmt.RMT(**TINY).eval()  # eval: no drop path; gradients are recorded all the same
    x = torch.randn(2, 3, 32, 48)
    grads = {}
    for impl in ("matmul", "triton"):
        model.zero_grad()
        model.set_attn_impl(impl)(x).square().sum().backward()
        grads[impl] = [p.grad.clone() for p in model.parameters()]
    errs = [rel_err(a, b) for a, b in zip(grads["triton"], grads["matmul"])]
    results["rmt_train"] = dict(err=max(errs), calls=calls.take(), backwards=backwards.take())
    torch.manual_seed(0)
    model = rmt.RMT(**TINY).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = model.set_attn_impl("matmul")(x)
        norms = _NormCalls()
        results["rmt_forward"] = dict(
            err=rel_err(model.set_attn_impl("triton")(x), ref), calls=calls.take(), norms=norms.take()
        )
        counts = {impl: count_gmacs(model.set_attn_impl(impl), x[:, :, :32, :48]) for impl in ("matmul", "triton")}
        results["gmacs"] = {impl: [c["gmacs"], c["gmacs_torch"]] for impl, c in counts.items()}
        calls.take(), norms.take()
        torch.manual_seed(0)  # layer scale, as rmt_b and rmt_l's last stages have it: fc1's residual is scaled
        scaled = rmt.RMT(**dict(TINY, layerscales=(True,) * 4, layer_init_values=0.5)).eval()
        ref = scaled.set_attn_impl("matmul")(x[:, :, :32, :48])
        out = scaled.set_attn_impl("triton")(x[:, :, :32, :48])
        results["rmt_forward_scaled"] = dict(err=rel_err(out, ref), calls=calls.take(), norms=norms.take())
        x = x[:1, :, :32, :48]
        eager = model(x)
        calls.take()
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        results["compiled"] = dict(err=rel_err(compiled(x), eager), calls=calls.take())
        exported = torch.export.export(model, (x,))
        calls.take()  # made while tracing
        ops = sum(node.target is torch.ops.rmt_zoo.retention.default for node in exported.graph.nodes)
        results["exported"] = dict(err=rel_err(exported.module()(x), eager), ops=ops)
        # inductor's lowering of the op, on one layer (a whole model takes a minute to build on 2 cores)
        masa, relpos = model.layers[0].blocks[0].retention, model.layers[0].Relpos
        x = torch.randn(2, 5, 7, masa.qkv.in_features)
        eager = masa(x, relpos(5, 7, x.dtype), relpos.decay, "triton")
        calls.take()
        compiled = torch.compile(masa, fullgraph=True)(x, relpos(5, 7, x.dtype), relpos.decay, "triton")
        results["inductor"] = dict(err=rel_err(compiled, eager), calls=calls.take())
    # a training step compiled (aot_eager, fullgraph): the backward op is in the graph and its gradients match
    grads = {}
    for name, fn in (("eager", masa), ("compiled", torch.compile(masa, fullgraph=True, backend="aot_eager"))):
        masa.zero_grad()
        fn(x, relpos(5, 7, x.dtype), relpos.decay, "triton").square().sum().backward()
        grads[name] = masa.qkv.weight.grad.clone()
    results["compiled_train"] = dict(
        err=rel_err(grads["compiled"], grads["eager"]), calls=calls.take(), backwards=backwards.take()
    )
    rt.AUTO_DEVICES = ("cpu",)  # the interpreter's CPU stands for CUDA
    with torch.no_grad():
        compiled = torch.compile(masa, fullgraph=True, backend="aot_eager")(
            x, relpos(5, 7, x.dtype), relpos.decay, "auto"
        )
        eager = masa(x, relpos(5, 7, x.dtype), relpos.decay, "triton")
    builds = [[str(device), str(dtype), packed, ok] for (device, dtype, packed), ok in rt._BUILDS.items()]
    results["auto_compiled"] = dict(err=rel_err(compiled, eager), calls=calls.take()[:-1], builds=builds)
    _rmt_fast.SHIFTED_CONV_DEVICES = ("cpu",)
    results["taps_compiled_train"] = _taps_compiled_train_case()
    return results


def _run_child() -> str:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=900, cwd=Path(__file__).parent
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout.splitlines()[-1]


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory) -> dict[str, dict]:
    """The child's results; under pytest-xdist run once per test session, whichever worker asks first (the child
    takes a minute or more on 2 cores), shared through the session's base temporary folder."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return json.loads(_run_child())
    import filelock

    shared = tmp_path_factory.getbasetemp().parent / "retention_triton_child.json"
    with filelock.FileLock(f"{shared}.lock"):
        if not shared.exists():
            shared.write_text(_run_child())
    return json.loads(shared.read_text())


@pytest.mark.e2e
@pytest.mark.parametrize("case", MASA_CASES)
def test_masa_matches_matmul(interpreted, case):
    """Odd, non-power-of-two grids (7x9 at batch 2, 13x17), two heads, both MaSA forms, through the interpreter."""
    assert interpreted[case]["calls"] == [case.split("-")[1] == "rows_cols"]
    assert interpreted[case]["err"] <= TOL[case.split("-")[2]]


@pytest.mark.e2e
def test_dense_whole_image_stage(interpreted):
    """The last stage of an 800x1344 input (25x42 tokens: 1050 keys, 17 key blocks), one image, one head."""
    assert interpreted["dense_whole"]["calls"] == [False] and interpreted["dense_whole"]["err"] <= TOL["fp32"]


@pytest.mark.e2e
@pytest.mark.parametrize("case", OP_CASES)
def test_op_matches_official_fp64(interpreted, case):
    """The op alone, non-contiguous q and k, against the official formulas in fp64."""
    assert interpreted[case]["err"] <= TOL["fp16" if OP_CASES[case][-1] == torch.float16 else "fp32"]


@pytest.mark.e2e
@pytest.mark.parametrize("case", PACKED_CASES)
def test_packed_short_rows_match_official_fp64(interpreted, case):
    """The op with short rows packed (`rt.PACK_ROWS`), forward and gradients, against the official formulas in
    fp64, as unpacked (`test_packed_launches` shows these cases pack)."""
    assert interpreted[case]["err"] <= TOL["fp16"] and interpreted[case]["grad_err"] <= TOL["fp16"]


def _packs(grid: tuple[int, int], heads: int, head_dim: int, chunkwise: bool, dtype: torch.dtype) -> dict:
    """{kernel: PACK} of the op's forward and backward launches at a shape (`_plan`)."""
    packs: dict[str, set] = {}
    for name, _, _, meta in _plan(*grid, heads, head_dim, chunkwise, dtype):
        packs.setdefault(name, set()).add(meta.get("PACK", 1))
    return {name: sorted(p) for name, p in packs.items()}


@pytest.mark.parametrize(
    ("case", "expected"),
    [(PACKED_CASES["packed_rows_cols_fp16"], {"rows_then_columns": [2], "attend": [2],
                                              "attend_backward_block": [2, 4]}),
     (PACKED_CASES["packed_heads_fp16"], {"rows_then_columns": [4], "attend": [4], "attend_backward_block": [4]}),
     (((28, 28), 4, 32, True, torch.bfloat16), {"rows_then_columns": [2], "attend": [2],
                                                "attend_backward_block": [2]}),
     (((14, 14), 8, 32, True, torch.bfloat16), {"rows_then_columns": [4], "attend": [4],
                                                "attend_backward_block": [4]}),
     (((56, 56), 4, 16, True, torch.bfloat16), {"rows_then_columns": [1], "attend": [1],
                                                "attend_backward_block": [1]}),
     (((13, 17), 2, 32, True, torch.float32), {"rows_then_columns": [1], "attend": [1],
                                               "attend_backward_block": [1]}),
     (((5, 6), 2, 16, False, torch.float16), {"attend": [1], "attend_backward_block": [1]})],
    ids=["13x17", "7x9", "28x28", "14x14", "56x56", "fp32", "whole-5x6"],
)  # fmt: skip
def test_packed_launches(case, expected, monkeypatch):
    """With PACK_ROWS, 16-bit rows of up to 32 tokens pack into 64-token tiles: the forward's image rows (2 of 32,
    4 of 16), the backward's heads (its rows recomputed, then its columns' and rows' gradients); rows of 56, fp32
    (whose dots run on FMAs) and the whole image (one sequence a head: nothing to pack beside it) do not. Off, only
    the backward's 16-bit sequences of 17-32 tokens at head dim 32, which a 64-token tile holds anyway, pack two
    heads to it."""
    monkeypatch.setattr(rt, "PACK_ROWS", True)
    assert _packs(*case) == expected
    monkeypatch.setattr(rt, "PACK_ROWS", False)
    unpacked = {name: [1] for name in expected}
    if case[2] >= 32 and case[-1] != torch.float32 and 16 < case[0][1] <= 32:  # rows a 64-token tile pads anyway
        unpacked["attend_backward_block"] = [1, 2] if case[0][0] <= 16 else [2]  # columns: 16 tokens or fewer
    assert _packs(*case) == unpacked


@pytest.mark.parametrize(("grid", "pack", "rows"), [((28, 28), 2, 4), ((14, 14), 4, 8)])
def test_packed_tile_shapes(grid, pack, rows, monkeypatch):
    """A packed tile is 64 tokens, one pipeline stage: the backward's passes on 4 warps (one warpgroup: wgmma's
    shape on sm_90, which the sm_90 build test checks), the forward on 8 (two sharing its dots), whose programs take
    as many image rows as the column attention's registers allow at head dim 32 (BLOCK_I x BLOCK_J x 32 <= 4096)
    and one block of columns, the whole row."""
    monkeypatch.setattr(rt, "PACK_ROWS", True)
    h, w = grid
    meta = rt.rows_then_columns_config(h, w, 32, torch.bfloat16)
    assert (meta["PACK"], meta["BLOCK_I"], meta["PACK"] * meta["BLOCK_J"]) == (pack, rows, rt.PACKED_TILE)
    assert meta["BLOCK_J"] >= w and meta["num_warps"] == 8 and meta["num_stages"] == 1
    one_d = rt.attend_config(w, 32, torch.bfloat16, 4)
    assert (one_d["PACK"], one_d["BLOCK_M"], one_d["num_warps"]) == (pack, rt.PACKED_TILE, 4)


@pytest.mark.e2e
def test_lepe_weights_are_rounded_to_the_compute_dtype(interpreted):
    """fp16: a LePE weight of 1 + 2^-11 acts as 1, as autocast's conv takes it (the sum with -1 is 0); fp32 keeps it
    (2^-11). Both forms, each at the centre of a 3x3 grid."""
    rounding = interpreted["lepe_rounding"]
    assert rounding == {"float32-rows_cols": 2**-11, "float32-whole": 2**-11, "float16-rows_cols": 0.0,
                        "float16-whole": 0.0}  # fmt: skip


@pytest.mark.e2e
@pytest.mark.parametrize("case", GRAD_CASES)
def test_backward_matches_matmul_softmax_autograd(interpreted, case):
    """dq, dk, dv from the fused backward against autograd of fp64 matmul-softmax (the official formulas)."""
    assert interpreted[case]["backwards"] == [GRAD_CASES[case][3]]
    assert interpreted[case]["err"] <= TOL["fp16" if GRAD_CASES[case][-1] == torch.float16 else "fp32"]


@pytest.mark.e2e
@pytest.mark.parametrize("case", TAPS_CASES)
def test_fused_taps_match_fp64(interpreted, case):
    """The taps kernels' output and gradients (u's, the weight's, the bias's, in_bias's) against autograd of fp64,
    in the call's dtype, contiguous whatever u's layout."""
    result, dtype = interpreted[case], TAPS_CASES[case][-1]
    assert result["dtype"] == str(dtype) and result["contiguous"]
    assert result["err"] <= TOL["fp16" if dtype == torch.float16 else "fp32"]


@pytest.mark.e2e
def test_compiled_training_takes_the_taps_kernels(interpreted):
    """A compiled training step runs the FFN's and the CPE's taps kernels forward and backward, with the eager
    step's gradients (eager runs the convs)."""
    result = interpreted["taps_compiled_train"]
    assert result["built"] and result["eager"] == []
    assert sorted(result["compiled"]) == ["backward"] * 2 + ["forward"] * 2
    assert result["err"] <= 1e-5


@pytest.mark.e2e
def test_rmt_training_takes_the_kernel(interpreted):
    """A whole RMT's parameter gradients, fp32: every MaSA runs the op forward and its fused backward."""
    train = interpreted["rmt_train"]
    assert train["calls"] == [True, True, False, False] and train["backwards"] == [False, False, True, True]
    assert train["err"] <= 1e-4


@pytest.mark.e2e
def test_rmt_forward_matches_matmul(interpreted):
    """A whole RMT (both forms, head dims 8, 12, 16), fp32, batch 2."""
    assert interpreted["rmt_forward"]["calls"] == [True, True, False, False]
    assert interpreted["rmt_forward"]["err"] <= 1e-4


@pytest.mark.e2e
def test_rmt_forward_takes_norms_inside_the_matmuls(interpreted):
    """With no gradients recorded, each block's two LayerNorms run inside the qkv and fc1 matmuls (fc1's with the
    residual sum, scaled where the block has layer scale), and the model matches matmul-softmax's plain path."""
    plain, scaled = interpreted["rmt_forward"], interpreted["rmt_forward_scaled"]
    assert plain["norms"] == [[False, False], [True, False]] * 4
    assert scaled["norms"] == [[False, False], [True, True]] * 4
    assert scaled["calls"] == [True, True, False, False] and scaled["err"] <= 1e-4


@pytest.mark.e2e
def test_fused_kernels_count_as_the_plain_path(interpreted):
    """GMACs (fvcore's, and torch's counter's) are the same whether the fused kernels run or the plain ops do: the
    custom ops declare their multiply-adds."""
    gmacs = interpreted["gmacs"]
    assert gmacs["triton"] == gmacs["matmul"] and gmacs["matmul"][1] > 0  # integer counts / 1e9: exactly equal


@pytest.mark.e2e
@pytest.mark.parametrize("case", NORM_CASES)
def test_norm_linear_matches_fp64(interpreted, case):
    """linear(LayerNorm(x (+ scale * y))) in one kernel against fp64 with torch's roundings, in the dtype the linear
    runs in (autocast's)."""
    dtype = NORM_CASES[case][3]
    assert interpreted[case]["dtype"] == str(dtype)
    assert interpreted[case]["err"] <= TOL["fp16" if dtype == torch.float16 else "fp32"]


@pytest.mark.e2e
def test_norm_linear_rounds_as_torch_does(interpreted):
    """The residual sum rounded to fp16 before the LayerNorm; the linear's bias rounded to autocast's dtype."""
    rounding = interpreted["norm_rounding"]
    assert rounding["sum"] == 0.0
    assert rounding["bias_fp16"] == 2**-10 and rounding["bias_fp32"] == pytest.approx(2**-11 + 2**-13, rel=1e-5)


@pytest.mark.e2e
def test_norm_linear_reads_inputs_as_torch_broadcasts_them(interpreted):
    """y broadcast over rows, a one-element scale, strided vectors and an empty image give torch's results."""
    inputs = interpreted["norm_inputs"]
    assert inputs.pop("empty_image") == [2, 0, 4, 17]
    assert all(err <= TOL["fp32"] for err in inputs.values()), inputs


def test_norm_linear_refuses_mismatched_channels():
    """x's channels, the LayerNorm's shape and the linear's inputs must agree (the kernel takes K from the linear,
    and would read other channels than torch's LayerNorm normalizes); refused before anything is launched."""
    with pytest.raises(ValueError, match="to agree"):
        rt.norm_linear(torch.randn(5, 32), torch.nn.LayerNorm(32), torch.nn.Linear(24, 8))
    with pytest.raises(ValueError, match="to agree"):
        rt.norm_linear(torch.randn(5, 24), torch.nn.LayerNorm(16), torch.nn.Linear(24, 8))


@pytest.mark.e2e
def test_compile_fullgraph_and_export(interpreted):
    """The fake implementation traces; the compiled (aot_eager; inductor on one layer) and exported graphs keep the
    op and run it."""
    assert interpreted["compiled"]["calls"] == [True, True, False, False] and interpreted["compiled"]["err"] <= 1e-5
    exported = interpreted["exported"]
    assert exported["ops"] == 4 and exported["err"] <= 1e-5  # the fake implementation gives no values
    assert interpreted["inductor"]["calls"] == [True] and interpreted["inductor"]["err"] <= 1e-5  # traced once
    train = interpreted["compiled_train"]
    assert train["calls"] == [True, True] and train["backwards"] == [True, True] and train["err"] <= 1e-5


@pytest.mark.e2e
def test_auto_compiled_probes_and_takes_the_kernel(interpreted):
    """ "auto" on a device where the kernels build (the interpreter's CPU standing for CUDA): the build probe runs
    (its kernels really launch) while torch.compile(fullgraph=True) traces, and the graph takes the op."""
    auto = interpreted["auto_compiled"]
    assert auto["builds"] == [["cpu", "torch.float32", False, True]]
    assert auto["calls"] == [True] and auto["err"] <= 1e-5


# --- in this process: no kernel runs ----------------------------------------------------------------------------------


def _meta_inputs(chunkwise: bool):
    """bf16 q, k, v as views of one qkv projection, the fp32 LePE weight and bias, fp32 rotary tables and decay, and
    an output gradient of rmt_s's stage 1 at 224x224 (batch 2), on the meta device."""
    b, h, w, n, d = 2, 56, 56, 4, 16
    qkv = torch.empty(b, h, w, 3, n, d, dtype=torch.bfloat16, device="meta")
    lepe = torch.empty(n * d, 1, 5, 5, device="meta"), torch.empty(n * d, device="meta")
    rot = torch.empty(2, 2, *((1, h, 1, w, d) if chunkwise else (1, 1, h, w, d)), device="meta")
    decay, dout = torch.empty(n, device="meta"), torch.empty(b, h, w, n, d, dtype=qkv.dtype, device="meta")
    return qkv, *lepe, rot, decay, dout


@pytest.mark.parametrize("chunkwise", [True, False], ids=["rows_cols", "whole"])
def test_declared_cost_is_one_pass(chunkwise):
    """One launch per call, reading q, k, v (and the LePE weights, the tables and decay) once and writing the output
    once: the row-then-column form keeps its rows on chip (two passes moved 8 feature maps); rotation and LePE, the
    conv of the v it reads, are in it (the conv's output is no map of its own)."""
    qkv, weight, bias, rot, decay, _ = _meta_inputs(chunkwise)
    fm, tables = qkv.numel() // 3 * 2, rot.numel() * 4 + 16  # a feature map; the rotary tables and decay
    lepe = (weight.numel() + bias.numel()) * 4
    cost = cost_of("rmt_zoo::retention", qkv, weight, bias, rot, decay, chunkwise)
    assert cost == OpCost(1, 3 * fm + lepe + tables, fm)


@pytest.mark.parametrize("chunkwise", [True, False], ids=["rows_cols", "whole"])
def test_declared_backward_cost(chunkwise):
    """Rows and columns of 56 fit one block: the rows recomputed (the columns' values), then one launch per pass
    (the rows' adding their dq, dk to the columns', and the LePE conv's gradient of v to theirs). The whole image's
    3136 tokens do not: its forward recomputed with its lse (4 bytes a query), then dq and dk/dv launches that read
    the output and the lse (and the dk/dv one the conv's gradient of v)."""
    qkv, _, _, rot, decay, dout = _meta_inputs(chunkwise)
    fm, lse, tab = dout.numel() * 2, dout.numel() // 16 * 4, rot.numel() * 4 + 16  # a map; the lse; the tables
    if chunkwise:  # rows: q, k, v -> rows; columns: q, k, rows, dout -> dq, dk, d(rows); rows: ... (+ dq, dk, dv') -> 3
        expected = OpCost(3, 3 * fm + 4 * fm + 7 * fm + 3 * tab, fm + 3 * fm + 3 * fm)
    else:  # q, k, v -> out, lse; q, k, v, out, dout, lse -> dq; the same and dv' -> dk, dv
        expected = OpCost(3, 3 * fm + 2 * (5 * fm + lse) + fm + 3 * tab, fm + lse + 3 * fm)
    assert cost_of("rmt_zoo::retention_backward", dout, qkv, rot, decay, dout, chunkwise) == expected


@pytest.mark.parametrize(
    ("grid", "chunkwise", "stages"),
    [((7, 7), False, {"num_stages": 1}), ((25, 42), False, {}), ((28, 28), True, {"num_stages": 1}),
     ((14, 14), True, {"num_stages": 1}), ((56, 56), True, {})],
    ids=["whole-7x7", "whole-25x42", "rows-28x28", "rows-14x14", "rows-56x56"],
)  # fmt: skip
def test_one_pipeline_stage_where_the_key_loop_runs_once(grid, chunkwise, stages):
    """A forward whose key loop runs once builds with one pipeline stage, no prefetch buffers: the whole 7x7 image,
    and rows of 28 and 14 keys (one 32- or 16-key block); at 25x42 (17 key blocks) and rows of 56 (two blocks)
    Triton's default pipelining stays."""
    h, w = grid
    qkv = torch.empty(2, h, w, 3, 16, 32, dtype=torch.bfloat16, device="meta")
    rot = torch.empty(2, 2, *((1, h, 1, w, 32) if chunkwise else (1, 1, h, w, 32)), device="meta")
    lepe = torch.empty(512, 1, 5, 5, device="meta")
    ((name, _, _, meta),) = rt.launches(qkv, lepe, lepe[:, 0, 0, 0], rot, torch.empty(16, device="meta"), chunkwise)[1]
    assert name == ("rows_then_columns" if chunkwise else "attend")
    assert {key: meta[key] for key in ("num_stages",) if key in meta} == stages


@pytest.mark.parametrize("head_dim", [16, 32])
def test_fp32_backward_takes_8_warps(head_dim):
    """The fp32 backward of rows and columns longer than a block (800x1344's stage 2: 168 and 100 tokens) keeps
    32-token blocks at 8 warps: with 4 its kernels spilled on sm_90 under Triton 3.6 (the GPU machine's; the sm_90
    build test there), at head dim 32 and, once the gradients took their inputs' layouts, at 16."""
    b, h, w, n = 2, 100, 168, 2
    qkv = torch.empty(b, h, w, 3, n, head_dim, device="meta")
    rot = torch.empty(2, 2, 1, h, 1, w, head_dim, device="meta")
    plan = []
    dout = torch.empty(b, h, w, n, head_dim, device="meta")
    rt.backward_plan(dout, qkv, rot, torch.empty(n, device="meta"), dout, True, plan.append)
    metas = [meta for name, _, _, meta in plan if name == "attend_backward"]
    assert len(metas) == 4  # dq, then dk and dv, of the columns and of the rows
    assert {(meta["BLOCK_M"], meta["BLOCK_N"], meta["num_warps"]) for meta in metas} == {(32, 32, 8)}


@pytest.mark.e2e  # exports one MaSA layer
@pytest.mark.parametrize("chunkwise", [True, False], ids=["rows_cols", "whole"])
def test_rotation_scale_and_lepe_are_inside_the_op(chunkwise):
    """MaSA's exported graph with "triton", its tables given: the qkv and output projections, views and the op, and
    no rotation, scaling, conv or add of its own (matmul-softmax's graph has them: mul, flip, conv2d, add)."""
    relpos = rmt.DecayPosition(32, 2, 2, 4, chunkwise)
    masa = rmt.ManhattanSelfAttention(32, 2, chunkwise).eval()

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.masa = masa

        def forward(self, x, decay, *pos):
            return self.masa(x, pos, decay, "triton")

    graph = torch.export.export(Layer(), (torch.randn(2, 5, 7, 32), relpos.decay, *relpos(5, 7, torch.float32))).graph
    ops = [node.target for node in graph.nodes if node.op == "call_function"]
    aten = torch.ops.aten
    views = {aten.split_with_sizes.default, aten.view.default, aten.permute.default, aten.select.int, operator.getitem}
    no_ops = {aten.to.dtype, aten._assert_tensor_metadata.default}  # the op's casts to the dtype it already has
    computed = [op for op in ops if op not in views | no_ops]
    fused = torch.ops.rmt_zoo.retention.default
    assert sorted(map(str, computed)) == sorted(map(str, [aten.linear.default] * 2 + [fused]))


@pytest.fixture
def auto_on_cpu(monkeypatch):
    """ "auto" asks for the kernels on CPU as it would on CUDA, with triton found, and nothing tried yet."""
    monkeypatch.setattr(rt, "AUTO_DEVICES", ("cpu",))
    monkeypatch.setattr(rt, "TRITON_FOUND", True)
    monkeypatch.setattr(rt, "_BUILDS", {})
    monkeypatch.setattr(rt, "_TAPS_BUILDS", {})


def test_taps_fall_back_apart_from_the_retention_kernel(auto_on_cpu, monkeypatch):
    """A taps build that fails (an option another Triton backend lacks, say) warns once and leaves compiled training
    on the plain taps; the retention kernel's choice is its own probe's."""
    monkeypatch.setattr(rt, "_probe", lambda device, dtype: None)

    def failing(device, dtype):
        raise KeyError("maxnreg")

    monkeypatch.setattr(rt, "_probe_taps", failing)
    x = torch.randn(1, 2, 2, 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not rt.taps_available(x) and not rt.taps_available(x.double()) and rt.auto_takes(x)
    assert len(caught) == 1 and "take the plain depthwise taps" in str(caught[0].message)
    assert rt._TAPS_BUILDS == {(x.device, torch.float32): False, (x.device, torch.float64): False}


def test_auto_falls_back_with_one_warning_where_the_kernel_cannot_be_built(auto_on_cpu, monkeypatch):
    """A build that fails (as ptxas would) sends "auto" to matmul-softmax: one warning however many calls and
    dtypes, and the output is matmul-softmax's."""
    tried = []

    def failing_runner(q):
        def run(launch):
            tried.append(launch[0])
            raise RuntimeError("PTXAS error: Internal Triton PTX codegen error")

        return run

    monkeypatch.setattr(rt, "_runner", failing_runner)
    torch.manual_seed(0)
    model = rmt.RMT(**TINY).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [model(x), model(x), model.double()(x.double())]
    assert tried and len(caught) == 1 and "cannot be built on cpu" in str(caught[0].message)
    with torch.no_grad():
        assert torch.equal(outs[2], model.set_attn_impl("matmul")(x.double()))
        assert torch.equal(outs[0], model.float()(x)) and torch.equal(outs[1], outs[0])


def test_auto_takes_the_kernel_where_it_builds(auto_on_cpu, monkeypatch):
    """Where the kernels build, "auto" calls the op at every stage, and (no gradients recorded) the LayerNorms inside
    the matmuls; not where triton is missing, nor on a device type "auto" does not list."""
    seen = []
    monkeypatch.setattr(rt, "_probe", lambda device, dtype: None)
    monkeypatch.setattr(
        rt, "retention", lambda qkv, weight, bias, rot, decay, chunkwise: seen.append(chunkwise) or qkv[:, :, :, 2] * 1
    )
    norms = []
    monkeypatch.setattr(
        rt, "norm_linear", lambda x, norm, layer, *res: norms.append(len(res)) or layer(norm(x + sum(res[:1], 0)))
    )
    model = rmt.RMT(**TINY).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model(x)
        assert seen == [True, True, False, False] and rt._BUILDS == {(x.device, torch.float32, False): True}
        assert norms == [0, 1] * 4  # qkv's LayerNorm alone, fc1's with the residual
        monkeypatch.setattr(rt, "TRITON_FOUND", False)
        model(x)
        monkeypatch.setattr(rt, "TRITON_FOUND", True)
        monkeypatch.setattr(rt, "AUTO_DEVICES", ("cuda",))
        model(x)
    assert seen == [True, True, False, False] and norms == [0, 1] * 4


def test_auto_exports_to_onnx_without_the_kernels(auto_on_cpu, monkeypatch):
    """ONNX has no op for the custom kernels: an ONNX export of "auto" takes the plain path where the kernels would
    otherwise run (the interpreter's CPU standing for CUDA), and exports."""
    pytest.importorskip("onnxscript", reason="the onnx extra is not installed")
    monkeypatch.setattr(rt, "_probe", lambda device, dtype: None)
    taken = []
    monkeypatch.setattr(rt, "retention", lambda qkv, *args: taken.append("retention") or qkv[:, :, :, 2] * 1)
    monkeypatch.setattr(rt, "norm_linear", lambda x, norm, layer, *res: taken.append("norm") or layer(norm(x)))
    model = rmt.RMT(**TINY).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
        assert "retention" in taken and "norm" in taken  # where the kernels build, "auto" takes them
        taken.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), dynamo=True, verbose=False)
    assert taken == [] and len(program.model_proto.graph.node) > 0


def test_auto_probes_packed_short_rows_apart(auto_on_cpu, monkeypatch):
    """Turning PACK_ROWS on after "auto" has probed the kernels probes again, under the switch (its packed kernels
    are other builds); the answer for each setting is kept, and a packed build that fails sends only that setting to
    matmul-softmax."""
    seen = []

    def probe(device, dtype):
        seen.append(rt.PACK_ROWS)
        if rt.PACK_ROWS:
            raise RuntimeError("ptxas: out of resource")

    monkeypatch.setattr(rt, "_probe", probe)
    x = torch.randn(1, 2, 3, 1, 16)
    assert rt.auto_takes(x)
    monkeypatch.setattr(rt, "PACK_ROWS", True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not rt.auto_takes(x) and not rt.auto_takes(x)
    assert len(caught) == 1 and seen == [False, True]
    monkeypatch.setattr(rt, "PACK_ROWS", False)
    assert rt.auto_takes(x) and seen == [False, True]


def test_auto_on_fake_tensors_takes_the_kernel_untried(auto_on_cpu, monkeypatch):
    """Fake tensors (export, the GPU proxy's fake CUDA) have no device to build on: "auto" answers as where the
    kernels build, without the probe, whose backward would start a CUDA context (no driver: the process aborts)."""
    monkeypatch.setattr(rt, "_probe", lambda device, dtype: pytest.fail("probed on a fake tensor"))
    with FakeTensorMode():
        assert rt.auto_takes(torch.empty(1, 2, 3, 1, 16)) and rt._BUILDS == {}


def test_cpu_needs_the_interpreter():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("this process was started with the interpreter on")
    model = rmt.RMT(**TINY, attn_impl="triton").eval()
    with torch.no_grad(), pytest.raises(RuntimeError, match="TRITON_INTERPRET=1 set before triton is first imported"):
        model(torch.randn(1, 3, 32, 32))


def test_norms_fused_only_where_the_fused_op_runs_without_gradients(monkeypatch):
    monkeypatch.setattr(rt, "auto_takes", lambda x: True)  # as on CUDA where the kernels build
    x = torch.randn(1, 2, 2, 16)
    assert not _retention.norms_fused("auto", x)  # gradients recorded: the kernel has no backward
    with torch.no_grad():
        assert _retention.norms_fused("auto", x) and _retention.norms_fused("triton", x)
        assert not _retention.norms_fused("matmul", x)
        traced = torch.fx.symbolic_trace(lambda t: t + int(_retention.norms_fused("auto", t)))
        assert torch.equal(traced(x), x)  # FX keeps the plain modules
        monkeypatch.setattr(_retention, "NORMS_IN_MATMUL", False)
        assert not _retention.norms_fused("auto", x)


def test_gpu_benchmark_times_the_norms_apart(auto_on_cpu, monkeypatch):
    """benchmarks/rmt_gpu.py's "LayerNorms apart" path runs "auto" with the fused op but the plain LayerNorms (the
    alternative the LayerNorm-in-matmul kernel is timed against); the model itself, after it, takes the kernel."""
    from benchmarks import rmt_gpu

    monkeypatch.setattr(rt, "_probe", lambda device, dtype: None)
    monkeypatch.setattr(rt, "retention", lambda qkv, *args: qkv[:, :, :, 2] * 1)
    norms = []
    monkeypatch.setattr(rt, "norm_linear", lambda x, norm, layer, *res: norms.append(1) or layer(norm(x)))
    model = rmt.RMT(**TINY).eval()
    with torch.no_grad():
        rmt_gpu._switch(model, "ours eager (auto, LayerNorms apart)")(torch.randn(1, 3, 32, 32))
        assert norms == []
        model(torch.randn(1, 3, 32, 32))
    assert len(norms) == 8


def test_gpu_benchmark_times_short_rows_packed(auto_on_cpu, monkeypatch):
    """benchmarks/rmt_gpu.py's "short rows packed" path runs "auto" with every fused call's launches planned
    packed (`rt.PACK_ROWS` on for the call); the model itself, after it, plans them unpacked."""
    from benchmarks import rmt_gpu

    monkeypatch.setattr(rt, "_probe", lambda device, dtype: None)
    monkeypatch.setattr(rt, "norm_linear", lambda x, norm, layer, *res: layer(norm(x)))
    switches = []
    monkeypatch.setattr(rt, "retention", lambda qkv, *args: switches.append(rt.PACK_ROWS) or qkv[:, :, :, 2] * 1)
    model = rmt.RMT(**TINY).eval()
    with torch.no_grad():
        rmt_gpu._switch(model, "ours eager (auto, short rows packed)")(torch.randn(1, 3, 32, 32))
        assert switches == [True] * 4
        model(torch.randn(1, 3, 32, 32))
    assert switches == [True] * 4 + [False] * 4


def test_block_keeps_its_norms_where_stochastic_depth_runs(monkeypatch):
    """A block in train mode with drop path takes the plain forward even without gradients (the fused one has no
    stochastic depth); in eval it takes the fused one."""
    monkeypatch.setattr(rmt, "norms_fused", lambda impl, x: True)
    taken = []
    monkeypatch.setattr(rmt.RetBlock, "_norms_fused", lambda self, x, *args: taken.append(self.training) or x)
    torch.manual_seed(0)
    block, relpos = rmt.RetBlock(16, 2, 3, True, 0.5, None), rmt.DecayPosition(16, 2, 2, 4, True)
    x = torch.randn(2, 3, 4, 16)
    with torch.no_grad():
        block.train()(x, relpos(3, 4, x.dtype), relpos.decay, "matmul")
        assert taken == []
        block.eval()(x, relpos(3, 4, x.dtype), relpos.decay, "matmul")
    assert taken == [False]


def test_norm_linear_declares_its_cost():
    """One launch reading x, the residual, the scale and the parameters once, writing the output once."""
    with FakeTensorMode():
        x, y = torch.empty(2, 7, 9, 64, dtype=torch.bfloat16), torch.empty(2, 7, 9, 64, dtype=torch.bfloat16)
        params = [torch.empty(64), torch.empty(64), torch.empty(64), torch.empty(192, 64), torch.empty(192)]
        scale, norm_w, norm_b, weight, bias = params
        cost = cost_of("rmt_zoo::norm_linear", x, y, scale, norm_w, norm_b, 1e-6, weight, bias, torch.bfloat16)
    maps = 2 * 7 * 9 * 64 * 2
    assert cost == OpCost(1, 2 * maps + 4 * sum(t.numel() for t in params), 3 * maps)


def test_taps_declare_their_cost():
    """Forward: one launch reading u and the parameters once, writing the output once; backward: one launch reading
    dout, u and the parameters once, writing u's gradient and (K*K + 2) x C partial sums per 16 image rows."""
    with FakeTensorMode():
        u, dout = torch.empty(2, 20, 9, 64, dtype=torch.bfloat16), torch.empty(2, 20, 9, 64, dtype=torch.bfloat16)
        weight, bias, in_bias = torch.empty(64, 1, 3, 3), torch.empty(64), torch.empty(64)
        forward = cost_of("rmt_zoo::depthwise_taps", u, in_bias, weight, bias, True, torch.bfloat16)
        backward = cost_of("rmt_zoo::depthwise_taps_backward", dout, u, in_bias, weight, True)
    maps, params = 2 * 20 * 9 * 64 * 2, 4 * 64 * 11
    assert forward == OpCost(1, maps + params, maps)
    assert backward == OpCost(1, 2 * maps + 4 * 64 * 10, maps + 4 * (2 * 2) * 11 * 64)


@pytest.mark.parametrize(
    "weight, bias, in_bias",
    [((4, 1, 3, 3), (8,), None), ((8, 1, 2, 2), (8,), None), ((8, 1, 3, 5), (8,), None), ((8, 1, 3, 3), (8,), (4,))],
    ids=["channels", "even", "not_square", "in_bias"],
)
def test_fused_taps_refuse_mismatched_weights(weight, bias, in_bias):
    shift = None if in_bias is None else torch.randn(in_bias)
    with pytest.raises(ValueError, match="fused_taps needs a \\(C, 1, K, K\\) weight with K odd"):
        rt.fused_taps(torch.randn(1, 3, 3, 8), torch.randn(weight), torch.randn(bias), shift)


def test_taps_kernel_only_for_3x3_convs(monkeypatch):
    """The CPE's and the FFN's 3x3 convs take the taps kernel; LePE's 5x5 keeps the plain taps (its kernel builds
    spilled on sm_90, and the retention op computes it where that runs)."""
    monkeypatch.setattr(_rmt_fast, "taps_kernel_takes", lambda x: True)
    x = torch.randn(1, 2, 2, 16)
    assert _rmt_fast.DWConv2d(16, 3, residual=True).takes_kernel(x) and not _rmt_fast.DWConv2d(16, 5).takes_kernel(x)


def test_taps_kernel_only_in_compiled_training_on_cuda(monkeypatch):
    """Compiled graphs that record gradients on CUDA (where the kernels build) take the taps kernels; eager, no
    gradients, another device or TAPS_IN_KERNEL off keep the plain forms."""
    monkeypatch.setattr(rt, "taps_available", lambda x: x.device.type == "cuda")
    with FakeTensorMode(allow_non_fake_inputs=True):
        cuda = torch.empty(1, 2, 2, 16, device="cuda")
    cpu = torch.empty(1, 2, 2, 16)
    assert not _rmt_fast.taps_kernel_takes(cuda)  # eager
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert _rmt_fast.taps_kernel_takes(cuda) and not _rmt_fast.taps_kernel_takes(cpu)
    with torch.no_grad():
        assert not _rmt_fast.taps_kernel_takes(cuda)
    monkeypatch.setattr(_rmt_fast, "TAPS_IN_KERNEL", False)
    assert not _rmt_fast.taps_kernel_takes(cuda)


def test_missing_triton_fails_at_build(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # import triton raises ImportError
    rmt.RMT(**TINY)  # other impls build without it
    with pytest.raises(RuntimeError, match="needs the triton package"):
        rmt.RMT(**TINY, attn_impl="triton")


# --- the sm_90 build -------------------------------------------------------------------------------------------------

SIZES = {"224": (224, 224), "800x1344": (800, 1344)}


@functools.cache
def _jit(name: str):
    """A kernel jitted for the GPU, whatever TRITON_INTERPRET says."""
    rt._kernels()  # binds the module's `tl`
    return triton.runtime.jit.JITFunction(rt.SOURCES[name], do_not_specialize=rt.NOT_SPECIALIZED)


def _stage_shapes(arch: dict, size: tuple[int, int]):
    """(stage, h, w, heads, head dim, chunkwise) of every stage at an input size (strides 4, 8, 16, 32)."""
    dims, heads, chunkwise = arch["embed_dims"], arch["num_heads"], arch["chunkwise_recurrents"]
    for i, (dim, n, chunk) in enumerate(zip(dims, heads, chunkwise)):
        stride = 4 * 2**i
        yield i + 1, -(-size[0] // stride), -(-size[1] // stride), n, dim // n, chunk


def _stage_keys(arch: dict, size: tuple[int, int], dtype: torch.dtype):
    """(stage, packed, compile key) of every launch of every stage at an input size: attention, with short rows
    packed (`rt.PACK_ROWS`) and not, the two LayerNorms in their matmuls and the CPE's and FFN's taps."""
    for stage, h, w, n, d, chunkwise in _stage_shapes(arch, size):
        i = stage - 1
        hidden = int(arch["mlp_ratios"][i] * n * d)
        for packed in (False, True):
            for key in _sources(h, w, n, d, chunkwise, dtype, packed):
                yield stage, packed, key
        for key in _norm_sources(h, w, n * d, hidden, arch["layerscales"][i], dtype):
            yield stage, False, key
        for key in _taps_sources(h, w, n * d, hidden, dtype):
            yield stage, False, key


def _plan(h: int, w: int, n: int, d: int, chunkwise: bool, dtype: torch.dtype) -> list:
    """The launches of one stage's attention, forward and backward, on meta tensors: the projection
    (b, h, w, 3, N, d) as MaSA passes it (batch 2), the LePE conv 5x5, fp32 rotary tables."""
    qkv = torch.empty(2, h, w, 3, n, d, dtype=dtype, device="meta")
    weight, bias = torch.empty(n * d, 1, 5, 5, device="meta"), torch.empty(n * d, device="meta")
    rot = torch.empty(2, 2, *((1, h, 1, w, d) if chunkwise else (1, 1, h, w, d)), device="meta")
    decay, dout = torch.empty(n, device="meta"), torch.empty(2, h, w, n, d, dtype=dtype, device="meta")
    plan = rt.launches(qkv, weight, bias, rot, decay, chunkwise)[1]
    rt.backward_plan(dout, qkv, rot, decay, dout, chunkwise, plan.append)
    return plan


def _sources(h: int, w: int, n: int, d: int, chunkwise: bool, dtype: torch.dtype, packed: bool):
    """The compile keys of the launches of one stage's attention, forward and backward (`_plan`, `_keys`), short
    rows packed or not."""
    saved, rt.PACK_ROWS = rt.PACK_ROWS, packed
    try:
        plan = _plan(h, w, n, d, chunkwise, dtype)
    finally:
        rt.PACK_ROWS = saved
    yield from _keys(plan)


def _norm_sources(h: int, w: int, dim: int, hidden: int, layer_scale: bool, dtype: torch.dtype):
    """The compile keys of one stage's LayerNorms inside its qkv and fc1 matmuls (`_keys`): x and the residual in
    dtype, x contiguous and NCHW-ordered (as a stage's first block gets it), the parameters fp32 as autocast leaves
    them, fc1's residual scaled where the stage has layer scale."""
    contiguous = torch.empty(2, h, w, dim, dtype=dtype, device="meta")
    nchw = torch.empty(2, dim, h, w, dtype=dtype, device="meta").permute(0, 2, 3, 1)
    params = lambda *shape: torch.empty(*shape, device="meta")  # noqa: E731
    for x in (contiguous, nchw):
        for n_out, residual in ((3 * dim, False), (hidden, True)):
            y, scale = (contiguous, params(dim) if layer_scale else None) if residual else (None, None)
            yield from _keys(rt._norm_linear_plan(x, y, scale, params(dim), params(dim), 1e-6, params(n_out, dim),
                                                  params(n_out), dtype)[1])  # fmt: skip


def _taps_sources(h: int, w: int, dim: int, hidden: int, dtype: torch.dtype):
    """The compile keys of one stage's taps kernels, forward and backward (`_keys`): the CPE's, and the FFN's with
    fc1's bias and GELU, on contiguous maps (as `rt.fused_taps` hands them over); the parameters fp32."""
    params = lambda c: (torch.empty(c, 1, 3, 3, device="meta"), torch.empty(c, device="meta"))  # noqa: E731
    for channels, in_bias, gelu in ((dim, None, False), (hidden, params(hidden)[1], True)):
        u = torch.empty(2, h, w, channels, dtype=dtype, device="meta")
        weight, bias = params(channels)
        yield from _keys(rt._taps_plan(u, in_bias, weight, bias, gelu, dtype)[1])
        yield from _keys(rt._taps_backward_plan(u, u, in_bias, weight, gelu)[1])


def _keys(launches):
    """The compile keys (name, signature, constexprs, attributes, options) of launches, specialized on the arguments
    as Triton's launcher specializes them (values 1, multiples of 16, aligned pointers)."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.nvidia.compiler import CUDABackend

    for name, _, args, meta in launches:
        kernel = _jit(name)
        meta = dict(meta)
        options = {key: meta.pop(key) for key in rt.LAUNCH_OPTIONS if key in meta}
        values = [*args, *(meta[p.name] for p in kernel.params[len(args) :])]
        signature, constexprs, attrs = {}, {}, {}
        for i, (param, value) in enumerate(zip(kernel.params, values)):
            if param.is_constexpr:
                signature[param.name], constexprs[param.name] = "constexpr", value
                continue
            ty, attr = native_specialize_impl(CUDABackend, value, False, param.name not in rt.NOT_SPECIALIZED, True)
            signature[param.name] = ty
            if ty == "constexpr":
                constexprs[param.name] = attr
            elif isinstance(ty, tuple):  # a tuple of strides: each element specialized, addressed by (param, index)
                for j, (ty_j, attr_j) in enumerate(zip(ty, attr)):
                    if ty_j == "constexpr":
                        constexprs[(i, j)] = attr_j
                    elif attr_j:
                        attrs[(i, j)] = attr_j
            elif attr:
                attrs[(i,)] = attr
        yield name, tuple(signature.items()), tuple(constexprs.items()), tuple(attrs.items()), tuple(options.items())


def _ptxas(key, monkeypatch) -> tuple[int, int, bool]:
    """Registers and spill bytes (stores + loads) of one sm_90 build, from ptxas's own report, and whether its dots
    run on Hopper's warpgroup MMA (wgmma)."""
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend

    name, signature, constexprs, attrs, options = key
    source = triton.compiler.ASTSource(
        _jit(name),
        dict(signature),
        constexprs=dict(constexprs),
        attrs={path: CUDABackend.parse_attr(a) for path, a in attrs},
    )
    monkeypatch.setenv("TRITON_DUMP_PTXAS_LOG", "1")  # the log goes to stdout
    monkeypatch.setenv("TRITON_ALWAYS_COMPILE", "1")  # no cache hit: ptxas runs every time
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(options))
    text = log.getvalue()
    regs = re.search(r"Used (\d+) registers", text)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    assert regs and spills, f"no ptxas report in:\n{text}"
    return int(regs[1]), int(spills[1]) + int(spills[2]), "wgmma.mma_async" in compiled.asm["ptx"]


@pytest.mark.e2e  # the slow tier: ptxas runs for every stage shape
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
def test_sm90_build_has_no_spills(dtype, monkeypatch, tmp_path):
    """Every stage of rmt_t/s/b/l at 224x224 and 800x1344, attention (short rows packed and not), the LayerNorms in
    their matmuls and the taps; launches that compile alike are built once."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    builds: dict[tuple, list[str]] = {}
    for variant, arch in rmt._ARCHS.items():
        for size_name, size in SIZES.items():
            for stage, packed, key in _stage_keys(arch, size, dtype):
                builds.setdefault(key, []).append(f"{variant}@{size_name}/stage{stage}{'/packed' * packed}")
    report = []
    for key, uses in builds.items():
        regs, spills, wgmma = _ptxas(key, monkeypatch)
        report.append((key[0], dict(key[2]), key[4], regs, spills, wgmma, uses))
    assert all(spills == 0 and regs <= 255 for *_, regs, spills, _, _ in report), "\n".join(map(str, report))
    # the LayerNorm-in-matmul kernel's 16-bit tiles (128 x 128 on 8 warps) take wgmma; fp32's dots run on FMAs
    norms = [wgmma for name, *_, wgmma, _ in report if name == "norm_linear"]
    assert norms and all(wgmma == (dtype != torch.float32) for wgmma in norms), "\n".join(map(str, report))
    # with short rows packed, every attention launch of stages 2-4 at 224x224 runs its dots as wgmma in 16 bits, on
    # one warpgroup (the packed forward: two)
    late = re.compile(r"@224/stage[234]/packed")
    packed = [(name, wgmma, dict(options)["num_warps"]) for name, _, options, _, _, wgmma, uses in report
              if name.startswith(("rows", "attend")) and any(map(late.search, uses))]  # fmt: skip
    warps = lambda name: 8 if name == "rows_then_columns" else 4  # noqa: E731
    if dtype != torch.float32:
        assert packed and all(wgmma and n == warps(name) for name, wgmma, n in packed), packed


if __name__ == "__main__":
    print(json.dumps(_child()))
