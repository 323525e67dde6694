"""Swin and MaxViT through timm, pinned to their ImageNet-1K-only tags, and pass-through for any timm name.

Weights go through the same strict loader as the other families, so errors read the same everywhere.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import timm
import torch
import torch.nn as nn
from timm.models._features import FeatureInfo

from ._builder import check_pretrained, resolve_weights, stage_indices
from ._checkpoint import load_pretrained
from ._registry import Family, ModelInfo, info, register_family

__all__ = ["TimmFeatures", "create", "SWIN", "MAXVIT"]

SWIN = Family(
    "swin",
    "Swin Transformer, from *Swin Transformer: Hierarchical Vision Transformer using Shifted Windows* (ICCV 2021): "
    "a hierarchical vision transformer with attention in shifted local windows",
    code="https://github.com/microsoft/Swin-Transformer",
    built_by="timm",
)
MAXVIT = Family(
    "maxvit",
    "MaxViT, from *MaxViT: Multi-Axis Vision Transformer* (ECCV 2022): MBConv blocks joined with block-local and "
    "dilated grid attention",
    code="https://github.com/google-research/maxvit",
    built_by="timm",
)
# family: (paper, {name: (timm model with its ImageNet-1K tag, params M, GMACs, top-1)}), numbers as timm reports them
_VARIANTS: dict[Family, tuple[str, dict[str, tuple[str, float, float, float]]]] = {
    SWIN: (
        "https://arxiv.org/abs/2103.14030",
        {
            "swin_t": ("swin_tiny_patch4_window7_224.ms_in1k", 28.29, 4.51, 81.39),
            "swin_s": ("swin_small_patch4_window7_224.ms_in1k", 49.61, 8.77, 83.23),
            "swin_b": ("swin_base_patch4_window7_224.ms_in1k", 87.77, 15.47, 83.60),
        },
    ),
    MAXVIT: (
        "https://arxiv.org/abs/2204.01697",
        {
            "maxvit_t": ("maxvit_tiny_tf_224.in1k", 30.92, 5.60, 83.43),
            "maxvit_s": ("maxvit_small_tf_224.in1k", 68.93, 11.66, 84.45),
            "maxvit_b": ("maxvit_base_tf_224.in1k", 119.47, 24.04, 84.88),
        },
    ),
}


class TimmFeatures(nn.Module):
    """NCHW stage outputs of a timm model through its `forward_intermediates` (Swin's own are NHWC)."""

    features_only = True

    def __init__(self, model: nn.Module, out_indices: tuple[int, ...]):
        super().__init__()
        model.prune_intermediate_layers(list(out_indices), prune_head=True, prune_norm=True)
        self.model = model
        self.out_indices = tuple(out_indices)
        self.feature_info = FeatureInfo(model.feature_info, self.out_indices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(
            x, indices=list(self.out_indices), intermediates_only=True, output_fmt="NCHW"
        )


def _filter_fn(model: nn.Module):
    """timm's own checkpoint filter for the model's module, so original-layout weights convert as in timm."""
    return getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)


def _dense_indices(model: nn.Module) -> tuple[int, ...]:
    """Feature indices at strides 4..32, which is what dense-prediction necks expect."""
    return tuple(i for i, f in enumerate(model.feature_info) if 4 <= f["reduction"] <= 32)


def create(
    name: str,
    pretrained: bool | str | Path = False,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    **kwargs,
) -> nn.Module:
    """Any timm model, by a zoo alias or timm's own name, built and loaded the way the zoo's own families are
    (`pretrained_cfg_overlay=dict(file=...)` and `cache_dir` included)."""
    model_info = info(name)
    check_pretrained(pretrained)
    cache_dir = kwargs.pop("cache_dir", None)
    model = timm.create_model(model_info.timm_name, pretrained=False, **kwargs)
    indices = _dense_indices(model) if out_indices is None else stage_indices(len(model.feature_info), out_indices)
    if pretrained:
        filter_fn = _filter_fn(model)
        overlay = kwargs.get("pretrained_cfg_overlay")
        source = resolve_weights(model_info, pretrained, model.pretrained_cfg, cache_dir, overlay)
        load_pretrained(model, model_info, source, (lambda sd, m: filter_fn(sd, m)) if filter_fn else None)
    if features_only:
        model = TimmFeatures(model, indices)
    return model


def _alias(
    name: str, family: Family, paper: str, timm_name: str, params: float, gmacs: float, top1: float
) -> ModelInfo:
    return replace(
        info(timm_name),  # preprocessing, license and Hub repo exactly as timm publishes them
        name=name,
        family=family.name,
        paper_params_m=params,
        paper_gflops=gmacs,
        paper_top1=top1,
        paper=paper,
        notes="params, GMACs and top-1 as timm reports them",
    )


for _family, (_paper, _table) in _VARIANTS.items():
    register_family(_family, [_alias(name, _family, _paper, *row) for name, row in _table.items()], create)
