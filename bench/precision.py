"""Precisions, one table: everything the harness knows about a precision is a field of its row in `PRECISIONS`.

A cast precision (fp16, bf16) casts the weights and inputs; an autocast one (amp-*) runs the fp32 model under
torch.autocast. The CLI's choices and help, the backends' refusals, training's gradient scaler, the output check's
tolerance and the GPU suite's choice all read this table, so a new precision is one entry here plus its tests.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ContextManager

import torch
import torch.nn as nn

__all__ = [
    "Precision",
    "PRECISIONS",
    "ALIASES",
    "precision",
    "names",
    "suite_precision",
    "described",
    "autocast",
    "prepare_model",
    "make_input",
    "minimum_bytes",
]


@dataclass(frozen=True)
class Precision:
    """One precision mode.

    `tolerance`: the largest |backend - eager| / max|eager| a non-eager row may show before its status says the
    backends disagree: what the compute dtype's rounding explains, with room for a different kernel order.
    `tf32_tolerance`: the same when fp32 matmuls may run in TF32 (10 mantissa bits), where that applies.
    `trainable`: a training step makes sense (cast half-precision weights would need a master copy).
    `grad_scaler`: training scales the loss (float16 gradients underflow without it; bfloat16 has fp32's range).
    `suite`: the role it plays in the GPU comparison (bench.suite): "autocast" for backends that run autocast,
    "cast" for those that build for one dtype.
    """

    name: str
    weight_dtype: torch.dtype
    compute_dtype: torch.dtype
    autocast: bool
    tolerance: float
    trainable: bool
    tf32_tolerance: float | None = None
    grad_scaler: bool = False
    suite: str | None = None

    def tolerance_for(self, tf32: bool) -> float:
        return self.tf32_tolerance if tf32 and self.tf32_tolerance is not None else self.tolerance


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision(
            "fp32", torch.float32, torch.float32, autocast=False, tolerance=1e-4, trainable=True, tf32_tolerance=5e-3
        ),
        Precision("fp16", torch.float16, torch.float16, autocast=False, tolerance=1e-2, trainable=False, suite="cast"),
        Precision("bf16", torch.bfloat16, torch.bfloat16, autocast=False, tolerance=5e-2, trainable=False),
        Precision(
            "amp-fp16", torch.float32, torch.float16, autocast=True, tolerance=1e-2, trainable=True, grad_scaler=True
        ),
        Precision(
            "amp-bf16", torch.float32, torch.bfloat16, autocast=True, tolerance=5e-2, trainable=True, suite="autocast"
        ),
    )
}
# `amp` follows timm's benchmark.py (float16 autocast); `autocast` is this harness's bf16 autocast.
# timm's names (benchmark.py's --precision, and "amp_" + its --amp-dtype), with timm's meaning
ALIASES = {
    "amp": "amp-fp16",
    "amp_float16": "amp-fp16",
    "amp_bfloat16": "amp-bf16",
    "autocast": "amp-bf16",
    "float32": "fp32",
    "float16": "fp16",
    "bfloat16": "bf16",
}


def names(**where: object) -> list[str]:
    """The precisions whose fields equal `where` (all of them without it), in table order: names(autocast=False)."""
    return [n for n, p in PRECISIONS.items() if all(getattr(p, k) == v for k, v in where.items())]


def suite_precision(role: str) -> str:
    """The precision that plays `role` ("autocast" or "cast") in the GPU comparison."""
    return next(n for n, p in PRECISIONS.items() if p.suite == role)


def described() -> str:
    """Every precision and alias, as help texts and error sentences list them."""
    return f"{', '.join(PRECISIONS)}; aliases {', '.join(f'{a} = {t}' for a, t in ALIASES.items())}"


def precision(name: str) -> Precision:
    """The table entry for a precision name or alias; KeyError for anything else."""
    return PRECISIONS[ALIASES.get(name, name)]


def autocast(name: str, device: str) -> ContextManager:
    """torch.autocast for an autocast precision, a no-op otherwise."""
    p = precision(name)
    if not p.autocast:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=p.compute_dtype)


def prepare_model(model: nn.Module, name: str, device: str, channels_last: bool) -> nn.Module:
    model = model.to(device=device, dtype=precision(name).weight_dtype)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def make_input(
    batch_size: int, input_size: tuple[int, int], name: str, device: str, channels_last: bool
) -> torch.Tensor:
    """A fixed random batch; the values do not change the work these models do."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn((batch_size, 3, *input_size), generator=g).to(device=device, dtype=precision(name).weight_dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def minimum_bytes(batch_size: int, input_size: tuple[int, int], name: str, params: float = 0.0) -> int:
    """An estimate, meant to fall below what any row really needs, of the memory one forward takes: the weights
    (`params` of them), the input batch and one stride-4 feature map of 64 channels (the narrowest first stage of
    the compared models), each at the precision's weight dtype. A row above what the device has cannot run."""
    element = torch.finfo(precision(name).weight_dtype).bits // 8
    pixels = batch_size * input_size[0] * input_size[1]
    return int(element * (params + pixels * 3 + pixels // 16 * 64))


def memory_refusal(model: str, size: tuple[int, int], batch: int, name: str, device: str, free: int) -> str | None:
    """Why `model` at `size`, `batch` and precision `name` cannot run with `free` bytes on `device` (see
    `minimum_bytes`), the sentence bench.py and bench.accuracy refuse it with before anything runs; None if it may."""
    import zoo

    need = minimum_bytes(batch, size, name, (zoo.info(model).paper_params_m or 0) * 1e6)
    if need <= free:
        return None
    return (
        f"{model} at {size[0]}x{size[1]} and batch {batch} needs at least about {need / 2**30:.1f} GiB "
        f"(an estimate: weights, the input batch and one stride-4 feature map of 64 channels), and "
        f"{device} has {free / 2**30:.1f} GiB free; use a smaller --input-size or --batch-size."
    )
