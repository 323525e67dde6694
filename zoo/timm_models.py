"""Swin and MaxViT through timm, pinned to their ImageNet-1K-only tags, and pass-through for any timm name.

Weights go through the same strict loader as the other families, so errors read the same everywhere.
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable

import timm
import torch
import torch.nn as nn
from timm.models import maxxvit
from timm.models._features import FeatureInfo

from ._builder import check_pretrained, resolve_weights, stage_indices
from ._checkpoint import load_pretrained
from ._registry import Family, InputSizeError, ModelInfo, info, register_family

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


SWIN_PATCH = 4  # every Swin here is timm's swin_*_patch4_window7_224
MAXVIT_STEM_STRIDE = 2  # MaxViT's stem halves the image, then each stage halves its map (rounding up)


def _nearest(size: tuple[int, int], fits: Callable[[int, int], bool], limit: int = 4096) -> str:
    """The closest sizes at or below and above `size` that fit, each side searched on its own axis (up to `limit`
    pixels above it)."""
    below = [next((s for s in range(side, 0, -1) if fits(axis, s)), None) for axis, side in enumerate(size)]
    above = [next((s for s in range(side, side + limit) if fits(axis, s)), None) for axis, side in enumerate(size)]
    sizes = [f"{h}x{w}" for h, w in (below, above) if h is not None and w is not None]
    if not sizes:
        return f"no size within {limit} pixels of it runs"
    return ("the nearest sizes that run are " if len(set(sizes)) > 1 else "the nearest size that runs is ") + (
        " and ".join(dict.fromkeys(sizes))
    )


def _swin_size(name: str, size: tuple[int, int], kwargs: dict) -> dict:
    """timm builds Swin for one size (`img_size`) and pads each stage to whole windows, so only the patch embedding
    constrains the size: timm's strided conv would silently drop what is left over."""
    if all(side % SWIN_PATCH == 0 for side in size):
        return {"img_size": size}
    raise InputSizeError(
        f"{name} cannot run at {size[0]}x{size[1]}: its {SWIN_PATCH}x{SWIN_PATCH} patch embedding needs each side "
        f"to be a multiple of {SWIN_PATCH} (timm would drop the remainder); "
        f"{_nearest(size, lambda _, side: side % SWIN_PATCH == 0)}."
    )


def _maxvit_size(name: str, size: tuple[int, int], kwargs: dict) -> dict:
    """timm builds MaxViT for one size (`img_size`), with block windows and dilated grids of side // 32 (7 at 224)
    unless `transformer_window_size`/`transformer_grid_size` fix them; both must divide every stage's map, as
    timm's partitions do not pad."""
    cfg = maxxvit.model_cfgs["_".join(info(name).timm_name.split(".")[0].split("_")[:-1])]
    ratio = kwargs.get("transformer_partition_ratio", cfg.transformer_cfg.partition_ratio)
    window = kwargs.get("transformer_window_size", cfg.transformer_cfg.window_size)
    grid = kwargs.get("transformer_grid_size", cfg.transformer_cfg.grid_size) or window
    window, grid = [None if p is None else (p, p) if isinstance(p, int) else tuple(p) for p in (window, grid)]
    stages = len(kwargs.get("depths", cfg.depths))

    def parts(axis: int, side: int) -> tuple[int, int, list[int]]:
        maps = [math.ceil(side / (MAXVIT_STEM_STRIDE * 2 ** (k + 1))) for k in range(stages)]
        return (window or (side // ratio,) * 2)[axis], (grid or (side // ratio,) * 2)[axis], maps

    def fits(axis: int, side: int) -> bool:
        w, g, maps = parts(axis, side)
        return w >= 1 and g >= 1 and all(m % w == 0 and m % g == 0 for m in maps)

    if fits(0, size[0]) and fits(1, size[1]):
        return {"img_size": size}
    (wh, gh, mh), (ww, gw, mw) = parts(0, size[0]), parts(1, size[1])
    how = "fixed" if window else f"each side // {ratio}"
    split = f"{wh}x{ww} windows and grids" if (wh, ww) == (gh, gw) else f"{wh}x{ww} windows and {gh}x{gw} grids"
    maps = ", ".join(f"{h}x{w}" for h, w in zip(mh, mw))
    raise InputSizeError(
        f"{name} cannot run at {size[0]}x{size[1]}: timm partitions every stage into {split} ({how}), which must be "
        f"at least 1 and divide each stage's map ({maps}); {_nearest(size, fits)}."
    )


_SIZE_RULES = {SWIN.name: _swin_size, MAXVIT.name: _maxvit_size}


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
    rule = _SIZE_RULES.get(model_info.family)
    if rule is not None and kwargs.get("img_size") is not None:
        kwargs.update(rule(name, _pair(kwargs["img_size"]), kwargs))
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


def _pair(img_size: object) -> tuple[int, int]:
    """`img_size` as timm takes it: N or (H, W), whole numbers."""
    pair = (img_size, img_size) if isinstance(img_size, int) else img_size
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in pair)
    ):
        raise ValueError(f"img_size must be N or (H, W) with whole numbers above 0, not {img_size!r}.")
    return int(pair[0]), int(pair[1])


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
    register_family(
        _family,
        [_alias(name, _family, _paper, *row) for name, row in _table.items()],
        create,
        _SIZE_RULES[_family.name],
    )
