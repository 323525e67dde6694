"""RMT's official-shaped forward, `attn_impl="reference"`: the test oracle and the benchmark baseline.

It reads the same modules and parameters as the fast path but computes as the official code (qhfan/RMT) does:
position tables and masks rebuilt on every call, three projections with k scaled before the rotation, the
stack-based pair rotation, permute-heavy layouts, an explicit matmul and softmax, depthwise convs on contiguous
NCHW copies with the residual added after. Nothing of zoo/_rmt_fast.py is used, so it checks that module too.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._retention import manhattan_bias

__all__ = ["block", "dwconv", "retention", "tables"]


def tables(relpos: nn.Module, h: int, w: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """(sin, cos, row mask (N, w, w), column mask (N, h, h)), or (sin, cos, whole-image mask (N, hw, hw))."""
    mask_h, mask_w = relpos.distances(h, w, dtype)
    masks = (mask_w, mask_h) if relpos.chunkwise else (manhattan_bias(mask_h, mask_w, slice(None)),)
    return (*relpos.rotary(h, w, dtype), *masks)


def _stack_rotate(x: torch.Tensor) -> torch.Tensor:
    """The official code's stack-based pair rotation (with our signed sin table it equals a pair flip)."""
    return torch.stack((x[..., 1::2], x[..., ::2]), -1).flatten(-2)


def _decayed_softmax(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T + bias) v spelled out, with k already scaled, as the official code computes it."""
    return torch.softmax(q @ k.transpose(-1, -2) + bias, -1) @ v


def dwconv(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A DWConv2d (channels-last in and out) as the official code runs it: contiguous copies, a separate add."""
    y = module.conv(x.permute(0, 3, 1, 2).contiguous()).permute(0, 2, 3, 1).contiguous()
    return x + y if module.residual else y


def retention(masa: nn.Module, x: torch.Tensor, pos: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """A ManhattanSelfAttention's output for channels-last x (b, h, w, c), with `pos` from `tables`."""
    b, h, w, c = x.shape
    n, d = masa.num_heads, masa.head_dim
    (wq, wk, wv), (bq, bk, bv) = masa.qkv.weight.chunk(3), masa.qkv.bias.chunk(3)
    q, k, v = F.linear(x, wq, bq), F.linear(x, wk, bk) * d**-0.5, F.linear(x, wv, bv)
    lepe = dwconv(masa.lepe, v)
    sin, cos = pos[0].squeeze(2), pos[1].squeeze(2)
    q = q.view(b, h, w, n, d).permute(0, 3, 1, 2, 4)  # (b, n, h, w, d)
    k = k.view(b, h, w, n, d).permute(0, 3, 1, 2, 4)
    qr, kr = q * cos + _stack_rotate(q) * sin, k * cos + _stack_rotate(k) * sin
    if masa.chunkwise:
        mask_w, mask_h = pos[2], pos[3]
        v = v.reshape(b, h, w, n, d).permute(0, 1, 3, 2, 4)  # (b, h, n, w, d)
        v = _decayed_softmax(qr.transpose(1, 2), kr.transpose(1, 2), v, mask_w)
        out = _decayed_softmax(qr.permute(0, 3, 1, 2, 4), kr.permute(0, 3, 1, 2, 4), v.permute(0, 3, 2, 1, 4), mask_h)
        out = out.permute(0, 3, 1, 2, 4).flatten(-2)  # (b, w, n, h, d) -> (b, h, w, c)
    else:
        qr, kr = qr.flatten(2, 3), kr.flatten(2, 3)  # (b, n, hw, d)
        v = v.reshape(b, h, w, n, d).permute(0, 3, 1, 2, 4).flatten(2, 3)
        out = _decayed_softmax(qr, kr, v, pos[2]).transpose(1, 2).reshape(b, h, w, c)
    return masa.out_proj(out + lepe)


def block(blk: nn.Module, x: torch.Tensor, pos: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """A RetBlock's output, official-shaped throughout."""
    x = dwconv(blk.pos, x)
    y = retention(blk.retention, blk.retention_layer_norm(x), pos)
    x = x + blk.drop_path(y if blk.gamma_1 is None else blk.gamma_1 * y)
    ffn = blk.ffn
    y = ffn.fc2(dwconv(ffn.dwconv, ffn.act(ffn.fc1(blk.final_layer_norm(x)))))
    return x + blk.drop_path(y if blk.gamma_2 is None else blk.gamma_2 * y)
