"""Training-step measurement (timm's `--bench train`): forward, loss, backward and optimizer step, timed as one step.

The model trains as it would: train mode (dropout and stochastic depth on, at the model's own drop-path rate),
cross-entropy against fixed random labels, SGD at timm's benchmark learning rate, autocast with a gradient scaler where
the precision asks for one (`Precision.grad_scaler`: fp16). The optimizer never sees a real batch, so the weights
drift; the work per step does not change.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .backends import Backend
from .precision import autocast, precision
from .spec import RowSpec, Unavailable

__all__ = ["training_step"]


def training_step(
    model: nn.Module, backend: Backend, spec: RowSpec, x: torch.Tensor
) -> tuple[Callable[[], None], dict[str, Any]]:
    """A closure running one training step on `x`, and the fields that describe it."""
    if spec.grad_checkpointing:
        if not hasattr(model, "set_grad_checkpointing"):
            raise Unavailable(
                f"{spec.model} has no set_grad_checkpointing, so gradient checkpointing cannot be switched on."
            )
        model.set_grad_checkpointing(True)
    with torch.no_grad():
        classes = model(x[:1]).shape[-1]
    model.train()
    module = backend.for_training(model, spec)
    target = torch.randint(0, classes, (x.shape[0],), generator=torch.Generator().manual_seed(0)).to(x.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)  # timm benchmark.py's default optimizer and rate
    scaler = torch.amp.GradScaler(torch.device(spec.device).type, enabled=precision(spec.precision).grad_scaler)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(spec.precision, spec.device):
            loss = F.cross_entropy(module(x), target)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    fields = {"optimizer": "SGD(lr=1e-4)", "loss": "cross_entropy", "grad_scaler": scaler.is_enabled()}
    return step, fields
