"""Precision modes: cast weights and inputs (fp16, bf16) or run an fp32 model under torch.autocast (amp-*)."""
from __future__ import annotations

import contextlib
from typing import ContextManager

import torch
import torch.nn as nn

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def weight_dtype(precision: str) -> torch.dtype:
    """dtype of the weights and inputs: the cast dtype, or fp32 for the autocast modes."""
    return _DTYPES.get(precision, torch.float32)


def compute_dtype(precision: str) -> torch.dtype:
    """dtype the matmuls run in (what a TensorRT engine is built for)."""
    return _DTYPES[precision.removeprefix("amp-")]


def autocast(precision: str, device: str) -> ContextManager:
    """torch.autocast for the amp-* modes, a no-op otherwise."""
    if not precision.startswith("amp-"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=compute_dtype(precision))


def prepare_model(model: nn.Module, precision: str, device: str, channels_last: bool) -> nn.Module:
    model = model.to(device=device, dtype=weight_dtype(precision))
    return model.to(memory_format=torch.channels_last) if channels_last else model


def make_input(batch_size: int, input_size: tuple[int, int], precision: str, device: str, channels_last: bool) -> torch.Tensor:
    """A fixed random batch; the values do not change the work these models do."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn((batch_size, 3, *input_size), generator=g).to(device=device, dtype=weight_dtype(precision))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
