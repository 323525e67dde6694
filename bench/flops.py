"""Parameters and GMACs, counted one way for every family.

GMACs follow the convention of the papers' tables: fvcore's count (one multiply-add = one FLOP) of convolutions,
linear layers, matmul/bmm/einsum, normalisations, adaptive pooling, upsampling and grid_sample. fvcore skips
`scaled_dot_product_attention`, so a model that uses the fused kernel would lose its QK^T and AV products while the
same model written with `q @ k.transpose(-2, -1)` keeps them (timm's Swin-T: 4.37 G fused vs 4.51 G explicit). The
handles below count every attention kernel as those two matmuls, B*heads*Lq*Lk*(d_qk + d_v) MACs, whatever
the mask or bias; FlexAttention, which TorchScript tracing cannot enter, is counted through an SDPA of the
same shapes. Softmax, activations and other elementwise work are not counted (as in fvcore).

`gmacs_torch` is the cross-check: torch.utils.flop_counter's FLOPs / 2, which counts matmuls, convolutions and
attention but no normalisation, so it sits slightly below `gmacs` (about 0.4% for Swin-T).

Custom ops (RMT's fused Triton kernels on CUDA) are opaque to both counters; each one that declares its multiply-adds
(`zoo.macs_of`) is counted as the plain ops it stands for would be, so a model counts the same whichever kernels run.
"""

from __future__ import annotations

import math
import sys
import warnings
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

import zoo

__all__ = ["count_params", "count_gmacs", "flex_as_sdpa", "ATTENTION_OPS", "FLOPS_NOTE"]

FLOPS_NOTE = "fvcore MACs + attention (QK^T, AV) for matmul, SDPA and FlexAttention alike"

ATTENTION_OPS = (
    "aten::scaled_dot_product_attention",
    "aten::_scaled_dot_product_flash_attention",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_cudnn_attention",
)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _attention_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """QK^T plus AV of one attention call: q (..., Lq, d), k (..., Lk, d), v (..., Lk, dv)."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(inputs[i]) for i in range(3))
    return math.prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])


def _meta(value: Any) -> Any:
    """A shape (torch's counter passes tensors as their shapes) as a meta tensor; anything else as it is."""
    return torch.empty(value, device="meta") if isinstance(value, torch.Size) else value


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """CPU's fused SDPA kernel, which torch's counter has no formula for (it counted 0): QK^T and AV, as on CUDA."""
    return sdpa_flop_count(query, key, value)


def _torch_mapping() -> dict:
    """torch's counter's formulas for the declared custom ops (2 FLOPs a multiply-add), and for CPU's SDPA kernel."""

    def formula(name: str):
        def flops(*args, out_shape=None, **kwargs) -> int:
            return 2 * zoo.macs_of(name, *map(_meta, args), **kwargs).macs

        return flops

    packets = {
        name: getattr(getattr(torch.ops, name.split("::")[0]), name.split("::")[1]) for name in zoo.declared_macs()
    }
    mapping = {packet: formula(name) for name, packet in packets.items()}  # the counter keys ops by their packet
    return {**mapping, torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def _fvcore_handle(name: str):
    """fvcore's handle for a declared custom op: its multiply-adds, and 5 a normalized element (fvcore's
    LayerNorm with affine parameters)."""

    def handle(inputs: list[Any], outputs: list[Any]) -> int:
        from fvcore.nn.jit_handles import get_shape

        args = [torch.empty(get_shape(v), device="meta") if get_shape(v) is not None else v.toIValue() for v in inputs]
        macs = zoo.macs_of(name, *args)
        return macs.macs + 5 * macs.normalized

    return handle


@contextmanager
def flex_as_sdpa() -> Iterator[None]:
    """Stand an SDPA of the same shapes in for FlexAttention while counting.

    Tracing cannot see inside flex_attention's higher-order op, and its score_mod is elementwise work that the
    convention does not count anyway. Every module attribute bound to flex_attention is swapped, since model files
    usually import the function by name.
    """
    try:
        from torch.nn.attention import flex_attention as flex_module
    except ImportError:
        yield
        return
    original = flex_module.flex_attention

    def stand_in(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any):
        out = F.scaled_dot_product_attention(query, key, value, enable_gqa=int(query.size(-3)) != int(key.size(-3)))
        return (out, out.new_zeros(out.shape[:-1])) if kwargs.get("return_lse") else out

    bound = [
        (m, name)
        for m in list(sys.modules.values())
        for name, v in list(getattr(m, "__dict__", {}).items())
        if v is original
    ]
    for m, name in bound:
        setattr(m, name, stand_in)
    try:
        yield
    finally:
        for m, name in bound:
            setattr(m, name, original)


def _torch_gmacs(model: nn.Module, x: torch.Tensor) -> float | None:
    """torch.utils.flop_counter's count, halved: the cross-check, and all there is without fvcore."""
    try:
        with FlopCounterMode(display=False, custom_mapping=_torch_mapping()) as counter:
            model(x)
        return counter.get_total_flops() / 2e9
    except Exception:  # optional; some kernels refuse dispatch modes
        return None


@torch.no_grad()
def count_gmacs(model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """GMACs of one forward pass on `x` (use batch 1): fvcore with attention handles, and torch's cross-check.

    fvcore is imported here, not at module import: without it `gmacs` is None with the reason, and the row's other
    measurements stand.
    """
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError:
        FlopCountAnalysis = None
    with flex_as_sdpa(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        counts: dict[str, Any] = {"gmacs": None, "gmacs_torch": _torch_gmacs(model, x)}
        if FlopCountAnalysis is None:
            return {
                **counts,
                "flops_error": "fvcore is not installed, so GMACs in the papers' convention were not counted.",
            }
        handles = {op: _attention_macs for op in ATTENTION_OPS} | {op: _fvcore_handle(op) for op in zoo.declared_macs()}
        analysis = FlopCountAnalysis(model, x).set_op_handle(**handles)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return {**counts, "gmacs": analysis.total() / 1e9}
