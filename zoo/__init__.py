"""RMT, InternImage, Swin and MaxViT behind one registry.

    import zoo
    model = zoo.load("rmt_s", pretrained=True)
    zoo.families()                      # name -> Family (description, official code, who builds it)
    zoo.list_models(family="rmt")       # its models; zoo.comparison_models(): the ones benchmarks compare

Importing `zoo` also registers RMT and InternImage with timm, so `timm.create_model("rmt_s")` works. The names in
`__all__` are the zoo's public interface; the layers above it (bench, hub) use only these.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ._builder import check_model_kwargs, checkpoint_file
from ._checkpoint import CheckpointError, CheckpointMismatchError, LoadReport, check_fits, read_checkpoint
from ._op_cost import declared_macs, macs_of
from ._hub import CLIENT_ERRORS, REVISION_ENV as HUB_REVISION_ENV, WeightsUnavailableError, fetch_weights, hub_repo_id
from ._registry import (
    Family,
    InputSizeError,
    ModelInfo,
    UnknownModelError,
    comparison_models,
    families,
    info,
    input_size_kwargs,
    list_models,
)
from . import rmt, internimage, timm_models  # noqa: F401  (registration side effects; families are listed in this order)
from .rmt import ORG_ENV as RMT_HUB_ORG_ENV
from .timm_models import _filter_fn as timm_checkpoint_filter

__all__ = [
    "load",
    "param_count",
    "info",
    "list_models",
    "families",
    "comparison_models",
    "input_size_kwargs",
    "Family",
    "ModelInfo",
    "UnknownModelError",
    "InputSizeError",
    "CheckpointError",
    "CheckpointMismatchError",
    "LoadReport",
    "read_checkpoint",
    "check_fits",
    "checkpoint_file",
    "check_model_kwargs",
    # the Hub: where a model's weights live and how a download fails
    "fetch_weights",
    "hub_repo_id",
    "WeightsUnavailableError",
    "CLIENT_ERRORS",
    "HUB_REVISION_ENV",
    "RMT_HUB_ORG_ENV",
    "timm_checkpoint_filter",
    # custom ops' multiply-adds, which FLOP counters cannot see inside (bench/flops.py counts them)
    "declared_macs",
    "macs_of",
]


def load(name: str, pretrained: bool | str | Path = False, **kwargs) -> nn.Module:
    """Build `name` in eval mode, optionally with weights (True: from the Hub; a path: a local checkpoint file,
    or a folder written by `python -m hub convert`).

    kwargs are the model's own and timm's (`num_classes`, `features_only`, `out_indices`, `drop_path_rate`,
    `global_pool`, `pretrained_cfg_overlay`, `img_size` for Swin and MaxViT, ...), checked when the model is built;
    `input_size_kwargs(name, (H, W))` says what a size needs, or why the architecture cannot take it. Names outside
    this zoo pass through to `timm.create_model` unchanged.
    """
    from ._builder import check_pretrained
    from ._registry import builder

    check_pretrained(pretrained)
    check_model_kwargs(kwargs)
    build = builder(name)
    if build is None:
        model = timm_models.create(name, pretrained, **kwargs)
    else:
        model = build(pretrained=pretrained, **kwargs)
    return model.eval()


def param_count(name: str, **kwargs) -> int:
    """Exact parameter count, from a model built on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        model = load(name, **kwargs)
    return sum(p.numel() for p in model.parameters())
