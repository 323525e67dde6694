"""InternImage (CVPR 2023, https://arxiv.org/abs/2211.05778) with a pure PyTorch DCNv3.

The official DCNv3 is a CUDA extension that needs its own build and fails on CPU; `dcnv3` here is plain
PyTorch (one `grid_sample` per layer), so the model runs on any device, under `torch.compile` and
`torch.export`. Module names follow the official code (OpenGVLab/InternImage, classification/), including
the indices its `nn.Sequential` norm wrappers add (`norm1.0`, `dw_conv.1.1`, ...), so its checkpoints load
with no renaming; the Hub's transformers-style port is mapped back by `checkpoint_filter_fn`.

Tensors are channels-last (N, H, W, C) inside the levels, as in the official code.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models import FeatureInfo
from timm.models._features_fx import register_notrace_module
from torch.utils.checkpoint import checkpoint
from torchvision.ops import Permute

from ._builder import create, stage_indices
from ._checkpoint import StateDict
from ._registry import Family, ModelInfo, register_family
from ._staged import StagedModel

__all__ = [
    "InternImage",
    "DCNv3",
    "dcnv3",
    "dcnv3_reference",
    "checkpoint_filter_fn",
    "DCN_IMPLS",
    "FAMILY",
    "INFOS",
]

_POINTS = 9  # 3x3 kernel points; kernel 3, stride 1, pad 1, dilation 1 in every released model
DCN_IMPLS = ("fast", "reference")


def _kernel_xy(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel point displacements (dx, dy) in pixels, x-major (point p = ix * 3 + iy) like the official op."""
    k = torch.arange(-1, 2, device=like.device, dtype=like.dtype)
    return k.repeat_interleave(3), k.repeat(3)


def dcnv3(
    values: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, groups: int, offset_scale: float
) -> torch.Tensor:
    """Deformable sampling of DCNv3: (N, H, W, C) values -> (N, H, W, C), in one `grid_sample` call.

    `offset` (N, H, W, G*9*2) holds (x, y) pixel offsets per group and kernel point, `mask` (N, H, W, G*9)
    the point logits, softmaxed here over each group's 9 points. Groups are folded into the batch and the
    kernel points into the grid's rows, so one call samples everything; the zero padding of the official op
    is folded into the grid coordinates (grid_sample's zeros outside the image are the same thing). Grid,
    samples and weights are laid out (point, pixel), so the softmax and the weighted sum run over whole
    rows of pixels instead of 9-long rows, and the sum is taken in place.
    """
    n, h, w, c = values.shape
    g, hw = groups, h * w
    sampled_from = values.view(n, h, w, g, c // g).permute(0, 3, 4, 1, 2).reshape(n * g, c // g, h, w)
    # grid_sample's [-1, 1] units (align_corners=False) put pixel x at (2x + 1) / W - 1; the official op
    # scales the kernel displacements by offset_scale as well as the offsets. Sizes enter only as Python
    # scalars, so torch.export keeps H and W symbolic.
    dx, dy = _kernel_xy(values)
    off = offset.view(n, h, w, g, _POINTS, 2)
    centre_x = (torch.arange(w, device=values.device, dtype=values.dtype) + 0.5) * (2 / w) - 1
    centre_y = (torch.arange(h, device=values.device, dtype=values.dtype) + 0.5) * (2 / h) - 1
    grid_x = (off[..., 0] + dx) * (2 * offset_scale / w) + centre_x.view(w, 1, 1)
    grid_y = (off[..., 1] + dy) * (2 * offset_scale / h) + centre_y.view(h, 1, 1, 1)
    # (N, G, 9, H, W, 2): one row of pixels per group and kernel point
    grid = torch.stack((grid_x.permute(0, 3, 4, 1, 2), grid_y.permute(0, 3, 4, 1, 2)), -1)
    out = F.grid_sample(
        sampled_from, grid.view(n * g, _POINTS, hw, 2), mode="bilinear", padding_mode="zeros", align_corners=False
    )  # (N*G, C/G, 9, H*W)
    weights = mask.view(n, hw, g, _POINTS).permute(0, 2, 3, 1).reshape(n * g, 1, _POINTS, hw).softmax(2)
    out = out.mul_(weights).sum(2)  # (N*G, C/G, H*W), i.e. (N, C, H*W)
    return out.view(n, c, h, w).permute(0, 2, 3, 1)


def dcnv3_reference(
    values: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, groups: int, offset_scale: float
) -> torch.Tensor:
    """The official pure PyTorch operator's algorithm, step by step; kept to check and time `dcnv3` against.

    Same arguments and result as `dcnv3`. Like the official module it softmaxes the mask over 9-long rows;
    like the official operator it zero-pads the values by one pixel, builds reference points and a kernel
    grid normalised by the padded size, repeats them over the batch, samples a (pixel, point) grid (groups
    folded into the batch, one call, as the official code does) and sums the weighted samples over the last
    axis.
    """
    n, h, w, c = values.shape
    g, hw = groups, h * w
    padded = F.pad(values, (0, 0, 1, 1, 1, 1))
    hp, wp = h + 2, w + 2
    ref_y, ref_x = torch.meshgrid(
        torch.linspace(1.5, h + 0.5, h, device=values.device, dtype=values.dtype) / hp,
        torch.linspace(1.5, w + 0.5, w, device=values.device, dtype=values.dtype) / wp,
        indexing="ij",
    )
    ref = torch.stack((ref_x, ref_y), -1).view(1, h, w, 1, 2)
    dx, dy = _kernel_xy(values)
    kernel = torch.stack((dx / wp, dy / hp), -1).repeat(g, 1).view(1, 1, 1, g * _POINTS, 2)
    spatial_norm = values.new_tensor([wp, hp]).repeat(g * _POINTS).view(1, 1, 1, -1)
    locations = (ref + kernel * offset_scale).repeat(n, 1, 1, 1, 1).flatten(3, 4)
    locations = locations + offset * offset_scale / spatial_norm
    grids = (2 * locations - 1).view(n, hw, g, _POINTS, 2).transpose(1, 2).flatten(0, 1)
    per_group = padded.view(n, hp * wp, c).transpose(1, 2).reshape(n * g, c // g, hp, wp)
    sampled = F.grid_sample(per_group, grids, mode="bilinear", padding_mode="zeros", align_corners=False)
    weights = mask.view(n, hw, g, _POINTS).softmax(-1).transpose(1, 2).reshape(n * g, 1, hw, _POINTS)
    out = (sampled * weights).sum(-1).view(n, c, hw)
    return out.transpose(1, 2).reshape(n, h, w, c).contiguous()


def _layer_norm(dim: int, nchw_in: bool = False, nchw_out: bool = False) -> nn.Sequential:
    """Channel LayerNorm (eps 1e-6) wrapped with permutes exactly where the official code puts them.

    The wrapper's indices are part of the official checkpoint keys (`norm1.0.weight` vs `norm1.1.weight`).
    """
    layers = [Permute([0, 2, 3, 1])] if nchw_in else []
    layers.append(nn.LayerNorm(dim, eps=1e-6))
    if nchw_out:
        layers.append(Permute([0, 3, 1, 2]))
    return nn.Sequential(*layers)


@register_notrace_module  # sampling arithmetic on shapes: a leaf for FX
class DCNv3(nn.Module):
    """Deformable convolution v3: values `input_proj`, offsets and point weights read off a depthwise conv."""

    def __init__(self, dim: int, groups: int, offset_scale: float = 1.0):
        super().__init__()
        if dim % groups:
            raise ValueError(f"DCNv3 channels ({dim}) must be divisible by its groups ({groups}).")
        self.groups = groups
        self.offset_scale = offset_scale
        self.impl = "fast"  # or "reference"; set through InternImage.set_dcn_impl
        self.dw_conv = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim), _layer_norm(dim, nchw_in=True), nn.GELU()
        )
        self.offset = nn.Linear(dim, groups * _POINTS * 2)
        self.mask = nn.Linear(dim, groups * _POINTS)
        self.input_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero offsets and uniform point weights at the start, as the official initialisation."""
        for layer in (self.offset, self.mask):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        for layer in (self.input_proj, self.output_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature = self.dw_conv(x.permute(0, 3, 1, 2))
        sample = dcnv3_reference if self.impl == "reference" else dcnv3
        x = sample(self.input_proj(x), self.offset(feature), self.mask(feature), self.groups, self.offset_scale)
        return self.output_proj(x)


class InternImageBlock(nn.Module):
    """DCNv3 and MLP, each residual, with pre-norm (T) or post-norm and layer scale (S, B, L)."""

    def __init__(
        self,
        dim: int,
        groups: int,
        offset_scale: float,
        mlp_ratio: float,
        layer_scale: float | None,
        post_norm: bool,
        drop_path: float,
    ):
        super().__init__()
        self.post_norm = post_norm
        self.norm1 = _layer_norm(dim)
        self.dcn = DCNv3(dim, groups, offset_scale)
        self.norm2 = _layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.gamma1 = nn.Parameter(torch.full((dim,), layer_scale)) if layer_scale is not None else None
        self.gamma2 = nn.Parameter(torch.full((dim,), layer_scale)) if layer_scale is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.post_norm:
            y = self.norm1(self.dcn(x))
        else:
            y = self.dcn(self.norm1(x))
        x = x + self.drop_path(y if self.gamma1 is None else self.gamma1 * y)
        y = self.norm2(self.mlp(x)) if self.post_norm else self.mlp(self.norm2(x))
        return x + self.drop_path(y if self.gamma2 is None else self.gamma2 * y)


class StemEmbed(nn.Module):
    """Two stride-2 3x3 convs (to C/2, then C) with LayerNorms: NCHW image in, NHWC stride-4 map out."""

    def __init__(self, channels: int, in_chans: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, channels // 2, 3, stride=2, padding=1)
        self.norm1 = _layer_norm(channels // 2, nchw_in=True, nchw_out=True)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(channels // 2, channels, 3, stride=2, padding=1)
        self.norm2 = _layer_norm(channels, nchw_in=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))


class Downsample(nn.Module):
    """3x3 stride-2 conv (no bias) doubling the channels, then LayerNorm; NHWC in and out."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, 2 * dim, 3, stride=2, padding=1, bias=False)
        self.norm = _layer_norm(2 * dim, nchw_in=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x.permute(0, 3, 1, 2)))


class InternImageLevel(nn.Module):
    """One resolution: blocks, a closing LayerNorm (pre-norm models only), then the downsampling."""

    def __init__(self, dim: int, depth: int, groups: int, drop_path: list[float], downsample: bool, **block_kwargs):
        super().__init__()
        self.blocks = nn.ModuleList(
            InternImageBlock(dim, groups, drop_path=dp, **block_kwargs) for dp in drop_path[:depth]
        )
        self.norm = nn.Identity() if block_kwargs["post_norm"] else _layer_norm(dim)
        self.downsample = Downsample(dim) if downsample else nn.Identity()
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the level's output before and after its downsampling."""
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        x = self.norm(x)
        return x, self.downsample(x)


class InternImage(StagedModel):
    """InternImage classifier with timm's model interface, or with `features_only` a backbone returning NCHW
    maps at strides 4..32.

    Arguments are the official constructor's (channels, depths, groups, layer_scale, offset_scale, post_norm,
    mlp_ratio, num_classes, cls_scale), timm's (in_chans, global_pool, drop_rate, drop_path_rate), plus
    `dcn_impl`: "fast" (`dcnv3`) or "reference" (`dcnv3_reference`). `forward_features` returns the last
    level's map widened by `cls_scale` (the official `conv_head`: 1x1 conv, BatchNorm, GELU), channels-last
    (`output_fmt` "NHWC"), so `num_features` and `head_hidden_size` are that width; the head pools and classifies.
    """

    stages_attr = "levels"
    stage_tail = "norm|downsample"
    projection_modules = ("conv_head",)

    def __init__(
        self,
        channels: int = 64,
        depths: tuple[int, ...] = (4, 4, 18, 4),
        groups: tuple[int, ...] = (4, 8, 16, 32),
        layer_scale: float | None = None,
        offset_scale: float = 1.0,
        post_norm: bool = False,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        cls_scale: float = 1.5,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        features_only: bool = False,
        out_indices: int | tuple[int, ...] | None = (0, 1, 2, 3),
        dcn_impl: str = "fast",
    ):
        """
        Args:
            channels: Channels of the first level; each later level doubles them.
            depths: Blocks per level.
            groups: DCNv3 groups per level (each samples its own offsets).
            layer_scale: Initial value of learned per-channel residual scales; None for none (InternImage-T).
            offset_scale: Scale of the predicted sampling offsets.
            post_norm: Normalise after each residual branch instead of before (the larger variants).
            mlp_ratio: Feed-forward width over the level's width.
            num_classes: Classifier outputs; 0 for no classifier.
            in_chans: Input image channels.
            global_pool: timm's pooling type for the head ("avg", or "" for none).
            cls_scale: Width of the head's 1x1 conv (`conv_head`) over the last level's width.
            drop_rate: Dropout before the classifier.
            drop_path_rate: Stochastic depth rate of the last block (rising linearly from 0 over the blocks).
            features_only: Build a backbone that returns NCHW level outputs instead of logits.
            out_indices: The levels a features-only model returns, as timm takes them (an int n: the last n;
                negatives count from the end).
            dcn_impl: DCNv3 implementation: "fast" (`dcnv3`) or "reference" (`dcnv3_reference`); see DCN_IMPLS.
        """
        super().__init__()
        if len(depths) != len(groups):
            raise ValueError(f"depths ({len(depths)} levels) and groups ({len(groups)} levels) must match.")
        self.num_classes = num_classes
        self.features_only = features_only
        self.out_indices = stage_indices(len(depths), out_indices)
        self.output_fmt = "NCHW" if features_only else "NHWC"
        dims = [channels * 2**i for i in range(len(depths))]
        self.projection_at = "none" if features_only else "features"
        self.head_hidden_size = int(dims[-1] * cls_scale)
        self.num_features = dims[-1] if features_only else self.head_hidden_size
        drop_path = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.patch_embed = StemEmbed(channels, in_chans)
        self.levels = nn.ModuleList(
            InternImageLevel(
                dims[i],
                depths[i],
                groups[i],
                drop_path[sum(depths[:i]) :],
                downsample=i < len(depths) - 1,
                offset_scale=offset_scale,
                mlp_ratio=mlp_ratio,
                layer_scale=layer_scale,
                post_norm=post_norm,
            )
            for i in range(len(depths))
        )
        stages = [dict(num_chs=d, reduction=4 * 2**i, module=f"levels.{i}") for i, d in enumerate(dims)]
        if features_only:
            self.feature_info = FeatureInfo(stages, self.out_indices)
        else:
            self.feature_info = stages
            self.conv_head = nn.Sequential(
                nn.Conv2d(dims[-1], self.head_hidden_size, 1, bias=False),
                nn.Sequential(nn.BatchNorm2d(self.head_hidden_size)),
                nn.GELU(),
            )
            self.head_drop = nn.Dropout(drop_rate)
            self.reset_classifier(num_classes, global_pool)
        self.apply(self._init_weights)
        for m in self.modules():
            if isinstance(m, DCNv3):
                m.reset_parameters()
        self.set_dcn_impl(dcn_impl)

    def set_dcn_impl(self, impl: str) -> InternImage:
        """Switch every DCNv3 layer to "fast" (`dcnv3`) or "reference" (`dcnv3_reference`) sampling."""
        if impl not in DCN_IMPLS:
            raise ValueError(f"dcn_impl must be one of {', '.join(DCN_IMPLS)}, not {impl!r}.")
        for m in self.modules():
            if isinstance(m, DCNv3):
                m.impl = impl
        return self

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_head(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self._pool(x)
        return x if pre_logits else self.head(self.head_drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.features_only:
            return self.forward_intermediates(x, self.out_indices, intermediates_only=True)
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state: StateDict, model: nn.Module) -> StateDict:
    """Official `.pth` keys pass unchanged; the Hub's transformers-style port (`model.` prefix, layer scales
    named `layer_scale1/2`) is mapped back to the official names."""
    if not all(k.startswith("model.") for k in state):
        return state
    return {re.sub(r"\.layer_scale([12])$", r".gamma\1", k[len("model.") :]): v for k, v in state.items()}


FAMILY = Family(
    "internimage",
    "InternImage, from *InternImage: Exploring Large-Scale Vision Foundation Models with Deformable Convolutions* "
    "(CVPR 2023): a convolutional backbone built on deformable convolution v3 (DCNv3)",
    code="https://github.com/OpenGVLab/InternImage",
    built_by="zoo",
)
_PAPER = "https://arxiv.org/abs/2211.05778"
_NOTES = "params as the official code counts them; GFLOPs are fvcore's (multiply-adds); top-1 from the paper"


def _info(
    name: str,
    hub_repo: str,
    params: float,
    gflops: float,
    top1: float,
    arch: dict,
    size: int = 224,
    notes: str = _NOTES,
) -> ModelInfo:
    return ModelInfo(
        name=name,
        family=FAMILY.name,
        arch=arch,
        paper_params_m=params,
        paper_gflops=gflops,
        paper_top1=top1,
        input_size=(3, size, size),
        crop_pct=1.0,
        interpolation="bicubic",
        hf_hub_id=f"OpenGVLab/{hub_repo}",
        hf_hub_filename="model.safetensors",
        license="mit",
        paper=_PAPER,
        notes=notes,
        first_conv="patch_embed.conv1",
        classifier="head",
    )


# name: Hub repo under OpenGVLab, params (M) as the official code counts them, GFLOPs, top-1, arch[, size, notes]
_VARIANTS: dict[str, tuple] = {
    "internimage_t": (
        "internimage_t_1k_224", 29.918424, 4.90, 83.5,
        dict(channels=64, depths=(4, 4, 18, 4), groups=(4, 8, 16, 32), layer_scale=None, offset_scale=1.0,
             post_norm=False),
    ),
    "internimage_s": (
        "internimage_s_1k_224", 50.079880, 8.33, 84.2,
        dict(channels=80, depths=(4, 4, 21, 4), groups=(5, 10, 20, 40), layer_scale=1e-5, offset_scale=1.0,
             post_norm=True),
    ),
    "internimage_b": (
        "internimage_b_1k_224", 97.461832, 16.21, 84.9,
        dict(channels=112, depths=(4, 4, 21, 4), groups=(7, 14, 28, 56), layer_scale=1e-5, offset_scale=1.0,
             post_norm=True),
    ),
    "internimage_l": (
        "internimage_l_22kto1k_384", 223.334810, 107.94, 87.7,
        dict(channels=160, depths=(5, 5, 22, 5), groups=(10, 20, 40, 80), layer_scale=1e-5, offset_scale=2.0,
             post_norm=True),
        384, _NOTES + "; pretrained on ImageNet-22K, fine-tuned on ImageNet-1K at 384x384",
    ),
}  # fmt: skip
INFOS: dict[str, ModelInfo] = {name: _info(name, *row) for name, row in _VARIANTS.items()}


def _checkpoint_hint(state: StateDict, model: InternImage) -> str:
    """Say which released model a checkpoint of another width looks like, from its stem."""
    stem = state.get("patch_embed.conv2.weight")
    if stem is None:
        return "It does not look like an InternImage checkpoint (no patch_embed.conv2.weight)."
    width, ours = stem.shape[0], model.patch_embed.conv2.out_channels
    if width == ours:
        return ""
    like = [n for n, i in INFOS.items() if i.arch["channels"] == width]
    guess = f"it looks like {like[0]} weights" if like else f"it matches none of {', '.join(INFOS)}"
    return f"The checkpoint's stem is {width} channels wide, this model's {ours}: {guess}."


def _create(variant: str, pretrained: bool | str | Path = False, **kwargs) -> InternImage:
    return create(InternImage, variant, pretrained, filter_fn=checkpoint_filter_fn, hint=_checkpoint_hint, **kwargs)


register_family(FAMILY, INFOS.values(), _create)
