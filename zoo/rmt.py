"""RMT: Retentive Networks Meet Vision Transformers (Fan et al., CVPR 2024, arXiv 2309.11523).

Written from the paper's description and checked against outputs of the official code (qhfan/RMT), which
tests/fixtures carries. Module and parameter names follow the official state dicts so released checkpoints load by
name; the one deliberate difference is the fused `retention.qkv` projection, which `checkpoint_filter_fn` builds
from the official q/k/v projections.

This file holds the architecture, top-down as the paper builds it: the stem, Manhattan Self-Attention (MaSA) with
its decay, the blocks, stages and model, the checkpoint filter and the variants. MaSA is softmax(q k^T + D) v with
an additive spatial-decay bias D, so any attention kernel that takes an additive mask computes it; how it runs
(`attn_impl`) is zoo/_retention.py's, the caches and fused layouts that make it fast are zoo/_rmt_fast.py's, and
`attn_impl="reference"` runs zoo/_rmt_reference.py, written like the official code, as the test oracle.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from timm.models import FeatureInfo
from timm.models._features_fx import register_notrace_module
from torch.utils.checkpoint import checkpoint

from . import _retention_triton, _rmt_reference
from ._builder import create, stage_indices
from ._checkpoint import StateDict
from ._registry import Family, ModelInfo, register_family
from ._retention import ATTN_IMPLS, attend, check_impl, fused, in_graph, norms_fused
from ._rmt_fast import DWConv2d, PositionCache, decay_masks, linear, plain, rotary_tables, rotate
from ._staged import StagedModel

__all__ = ["RMT", "checkpoint_filter_fn", "DEFAULT_HUB_ORG", "ORG_ENV", "ATTN_IMPLS", "FAMILY", "INFOS"]

DEFAULT_HUB_ORG = "rmt-zoo"
# No RMT weights are on the Hub yet: whoever converts them publishes under their own organisation, named here.
ORG_ENV = "RMT_HUB_ORG"


class PatchEmbed(nn.Module):
    """Stem of four 3x3 convs (stride 4 in all), returning channels-last tokens."""

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        half = dim // 2
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, half, 3, 2, 1), nn.BatchNorm2d(half), nn.GELU(),
            nn.Conv2d(half, half, 3, 1, 1), nn.BatchNorm2d(half), nn.GELU(),
            nn.Conv2d(half, dim, 3, 2, 1), nn.BatchNorm2d(dim), nn.GELU(),
            nn.Conv2d(dim, dim, 3, 1, 1), nn.BatchNorm2d(dim),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


def _abs_distance(n: int, device: torch.device) -> torch.Tensor:
    idx = torch.arange(n, device=device, dtype=torch.float32)
    return (idx[:, None] - idx[None, :]).abs()


_STAGE_IDS = itertools.count()


@register_notrace_module  # shape-dependent tables and a cache: a leaf for FX
class DecayPosition(nn.Module):
    """The per-stage generator (`Relpos` in the official code) of MaSA's rotary position and spatial decay.

    Head h decays by gamma_h = 1 - 2^-(init_value + heads_range * h / H): D = log(gamma_h) * Manhattan distance.
    `angle` and `decay` are persistent buffers, as in the official state dicts, so a checkpoint's own values are
    used. The tables in attention's layouts are kept in `cache` (shared by a model's stages) in eager mode and
    recomputed inside compiled or exported graphs; loading or moving the buffers drops them.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        init_value: float,
        heads_range: float,
        chunkwise: bool,
        cache: PositionCache | None = None,
    ):
        super().__init__()
        key_dim = dim // num_heads
        angle = 1.0 / (10000 ** torch.linspace(0, 1, key_dim // 2))
        self.register_buffer("angle", angle.repeat_interleave(2))
        heads = torch.arange(num_heads, dtype=torch.float)
        self.register_buffer("decay", torch.log(1 - 2 ** (-init_value - heads_range * heads / num_heads)))
        self.num_heads = num_heads
        self.chunkwise = chunkwise
        self._cache = PositionCache() if cache is None else cache
        self._stage_id = next(_STAGE_IDS)

    def _load_from_state_dict(self, *args, **kwargs):
        self._cache.clear()  # tables derived from the old buffers would be stale
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, recurse=True):
        self._cache.clear()
        return super()._apply(fn, recurse)

    def rotary(self, h: int, w: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """sin and cos of n * angle for the row-major token index n = i * w + j, shaped (h, w, 1, key_dim)."""
        index = torch.arange(h * w, device=self.angle.device, dtype=torch.float32)
        theta = index[:, None] * self.angle.float()[None, :]
        sign = torch.tensor([-1.0, 1.0], device=theta.device).repeat(theta.shape[-1] // 2)
        sin = (theta.sin() * sign).reshape(h, w, 1, -1).to(dtype)
        return sin, theta.cos().reshape(h, w, 1, -1).to(dtype)

    def distances(self, h: int, w: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The decayed 1-D distances log(gamma) * |i - i'| along columns (N, h, h) and rows (N, w, w)."""
        decay = self.decay.float()[:, None, None]
        device = self.decay.device
        return (decay * _abs_distance(h, device)).to(dtype), (decay * _abs_distance(w, device)).to(dtype)

    def _tables(self, h: int, w: int, dtype: torch.dtype, complex_ok: bool) -> tuple[torch.Tensor, ...]:
        rotary = rotary_tables(*self.rotary(h, w, torch.float32), self.chunkwise, dtype, complex_ok)
        return (*rotary, *decay_masks(*self.distances(h, w, dtype), self.chunkwise))

    def forward(self, h: int, w: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """(rotary real, rotary table, *decay masks) in the layouts `_rmt_fast.rotate` and `_retention.attend` read."""
        if in_graph():
            return self._tables(h, w, dtype, complex_ok=False)
        key = (self._stage_id, h, w, dtype, self.angle.device)
        return self._cache.lookup(key, lambda: self._tables(h, w, dtype, complex_ok=True))


@register_notrace_module  # impl dispatch and shape-dependent blocking: a leaf for FX
class ManhattanSelfAttention(nn.Module):
    """MaSA (`retention`): rotary q/k, decay-biased attention (whole-image or row-then-column), plus LePE."""

    def __init__(self, dim: int, num_heads: int, chunkwise: bool):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.chunkwise = chunkwise
        self.qkv = nn.Linear(dim, 3 * dim)
        self.lepe = DWConv2d(dim, 5)
        self.out_proj = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        pos: tuple[torch.Tensor, ...],
        decay: torch.Tensor,
        attn_impl: str = "auto",
        norm: nn.LayerNorm | None = None,
    ) -> torch.Tensor:
        """MaSA of x (b, h, w, c), or of norm(x) where a norm is given: the fused kernels compute it inside the qkv
        matmul (`norms_fused`)."""
        b, h, w, c = x.shape
        n, d = self.num_heads, self.head_dim
        if fused(attn_impl, x):  # rotation, k's scale, attention and the LePE conv in one kernel, reading qkv
            conv = self.lepe.conv
            qkv = self.qkv(x) if norm is None else _retention_triton.norm_linear(x, norm, self.qkv)
            out = _retention_triton.retention(qkv.view(b, h, w, 3, n, d), conv.weight, conv.bias, pos[0], decay,
                                              self.chunkwise)  # fmt: skip
            return self.out_proj(out.view(b, h, w, c))
        if norm is not None:
            x = norm(x)
        if plain(self.qkv, nn.Linear):
            (w_qk, w_v), (b_qk, b_v) = self.qkv.weight.split((2 * c, c)), self.qkv.bias.split((2 * c, c))
            v = F.linear(x, w_v, b_v)  # its own matmul: a contiguous v is 2-4x faster in the depthwise LePE conv
            qk = F.linear(x, w_qk, b_qk)
        else:  # a wrapped or subclassed qkv computes its own output
            qk, v = self.qkv(x).split((2 * c, c), -1)
        lepe = self.lepe(v).view(b, h, w, n, d)
        qk = qk.view(b, h, w, 2, n, d)
        # q and k as views (b, h, N, w, d) for row attention or (b, N, h, w, d) for whole-image, rotated in one pass
        # and written in the layout attention reads; lepe first: the sum takes its contiguous layout, so out's
        # permute costs no separate copy
        qk = qk.permute(3, 0, 1, 4, 2, 5) if self.chunkwise else qk.permute(3, 0, 4, 1, 2, 5)
        out = lepe + attend(attn_impl, *rotate(qk, *pos[:2]), v.view(b, h, w, n, d), pos[2:], decay, self.chunkwise)
        return self.out_proj(out.view(b, h, w, c))


class FeedForward(nn.Module):
    """FFN: fc1, GELU, a residual depthwise 3x3 conv, fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.dwconv = DWConv2d(hidden, 3, residual=True)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(
        self, x: torch.Tensor, norm: nn.LayerNorm | None = None, residual: tuple[torch.Tensor, ...] = ()
    ) -> torch.Tensor:
        """FFN(x), or FFN(norm(x + residual)) where a norm is given, residual (y,) or (y, scale) added as x + y or
        x + scale * y: the fused kernel computes both inside fc1's matmul (`norms_fused`)."""
        if norm is not None:
            hidden = _retention_triton.norm_linear(x, norm, self.fc1, *residual)
        elif self._taps_fused(x):  # fc1's bias and GELU inside the taps kernel: no hidden map between them
            return self.fc2(self.dwconv.fused(F.linear(x, self.fc1.weight), self.fc1.bias, gelu=True))
        else:  # fc1's bias is added with GELU in compiled CUDA graphs; fc2's stays in its matmul (`linear` says why)
            hidden = linear(self.fc1, x)
        return self.fc2(self.dwconv(self.act(hidden)))

    def _taps_fused(self, x: torch.Tensor) -> bool:
        """Whether fc1's bias, GELU and the depthwise conv run as one taps kernel: where the conv takes it, fc1 and
        the activation plain (`plain`)."""
        plain_ = plain(self.fc1, nn.Linear) and self.fc1.bias is not None and plain(self.act, nn.GELU)
        return plain_ and plain(self.dwconv, DWConv2d) and self.dwconv.takes_kernel(x)


class RetBlock(nn.Module):
    """CPE, then MaSA and FFN in pre-norm residuals, with optional layer scale (gamma_1, gamma_2)."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, chunkwise: bool, drop_path: float, layer_scale: float | None
    ):
        super().__init__()
        self.pos = DWConv2d(dim, 3, residual=True)
        self.retention_layer_norm = nn.LayerNorm(dim, eps=1e-6)
        self.retention = ManhattanSelfAttention(dim, num_heads, chunkwise)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.final_layer_norm = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = FeedForward(dim, int(mlp_ratio * dim))
        if layer_scale:
            self.gamma_1 = nn.Parameter(torch.full((1, 1, 1, dim), layer_scale))
            self.gamma_2 = nn.Parameter(torch.full((1, 1, 1, dim), layer_scale))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(
        self, x: torch.Tensor, pos: tuple[torch.Tensor, ...], decay: torch.Tensor, attn_impl: str = "auto"
    ) -> torch.Tensor:
        if attn_impl == "reference":
            return _rmt_reference.block(self, x, pos)
        x = self.pos(x)
        if norms_fused(attn_impl, x) and not (self.training and isinstance(self.drop_path, DropPath)) and self._plain():
            return self._norms_fused(x, pos, decay, attn_impl)
        y = self.retention(self.retention_layer_norm(x), pos, decay, attn_impl)
        x = x + self.drop_path(y if self.gamma_1 is None else self.gamma_1 * y)
        y = self.ffn(self.final_layer_norm(x))
        return x + self.drop_path(y if self.gamma_2 is None else self.gamma_2 * y)

    def _plain(self) -> bool:
        """Whether the LayerNorms and the matmuls after them are plain (`plain`): the fused forward reads their
        parameters."""
        norms = plain(self.retention_layer_norm, nn.LayerNorm) and plain(self.final_layer_norm, nn.LayerNorm)
        return norms and plain(self.retention.qkv, nn.Linear) and plain(self.ffn.fc1, nn.Linear)

    def _norms_fused(
        self, x: torch.Tensor, pos: tuple[torch.Tensor, ...], decay: torch.Tensor, attn_impl: str
    ) -> torch.Tensor:
        """The forward with each LayerNorm inside the matmul after it, and the first residual sum inside fc1's: the
        normalized maps and that sum never go to memory (a compiled graph recomputes the sum in the next block's
        first kernel). Stochastic depth is off here (eval, or a rate of 0)."""
        y = self.retention(x, pos, decay, attn_impl, norm=self.retention_layer_norm)
        residual = (y,) if self.gamma_1 is None else (y, self.gamma_1)
        z = self.ffn(x, norm=self.final_layer_norm, residual=residual)
        x = x + (y if self.gamma_1 is None else self.gamma_1 * y)
        return x + (z if self.gamma_2 is None else self.gamma_2 * z)


class PatchMerging(nn.Module):
    """Downsample between stages: conv3x3 stride 2 (`reduction`) and BatchNorm (`norm`), channels-last in and out."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.reduction = nn.Conv2d(dim, out_dim, 3, 2, 1)
        self.norm = nn.BatchNorm2d(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)


class RMTStage(nn.Module):
    """`depth` RetBlocks sharing one DecayPosition, then an optional PatchMerging.

    `attn_impl` is the one place a stage's attention path is kept; `RMT.set_attn_impl` sets it.
    """

    def __init__(
        self,
        dim: int,
        out_dim: int | None,
        depth: int,
        num_heads: int,
        init_value: float,
        heads_range: float,
        mlp_ratio: float,
        chunkwise: bool,
        drop_path: list[float],
        layer_scale: float | None,
        cache: PositionCache | None = None,
    ):
        super().__init__()
        self.Relpos = DecayPosition(dim, num_heads, init_value, heads_range, chunkwise, cache)
        self.blocks = nn.ModuleList(
            RetBlock(dim, num_heads, mlp_ratio, chunkwise, drop_path[i], layer_scale) for i in range(depth)
        )
        self.downsample = PatchMerging(dim, out_dim) if out_dim is not None else None
        self.grad_checkpointing = False
        self.attn_impl = "auto"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (stage output before downsampling, input of the next stage)."""
        h, w, impl = x.shape[1], x.shape[2], self.attn_impl
        pos = _rmt_reference.tables(self.Relpos, h, w, x.dtype) if impl == "reference" else self.Relpos(h, w, x.dtype)
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x, pos, self.Relpos.decay, impl, use_reentrant=False)
            else:
                x = blk(x, pos, self.Relpos.decay, impl)
        return x, (self.downsample(x) if self.downsample is not None else x)


class RMT(StagedModel):
    """RMT backbone and classifier, with timm's model interface.

    The head is the official one: a 1024-wide projection, BatchNorm and SiLU on every token, average pooling,
    then the classifier (plus, with `token_label`, the max-pooled token classifier `aux_head`). The official
    `forward_features` ends after the pooling; ours ends before it, after the projection, channels-last
    (`output_fmt` "NHWC", `num_features` 1024), except for a token-labelling model with classes whose
    `aux_head` reads the last stage's tokens: its `forward_features` is that stage's map (`num_features` 512)
    and the projection opens `forward_head`. `features_only=True` makes it a backbone returning NCHW stage
    outputs (strides 4..32) for `out_indices`.
    """

    stages_attr = "layers"
    projection_modules = ("proj", "norm")
    head_modules = ("aux_head",)

    def __init__(
        self,
        embed_dims: tuple[int, ...] = (64, 128, 256, 512),
        depths: tuple[int, ...] = (2, 2, 8, 2),
        num_heads: tuple[int, ...] = (4, 4, 8, 16),
        init_values: tuple[float, ...] = (2, 2, 2, 2),
        heads_ranges: tuple[float, ...] = (4, 4, 6, 6),
        mlp_ratios: tuple[float, ...] = (3, 3, 3, 3),
        chunkwise_recurrents: tuple[bool, ...] = (True, True, False, False),
        layerscales: tuple[bool, ...] = (False, False, False, False),
        layer_init_values: float = 1e-6,
        projection: int = 1024,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        token_label: bool = False,
        aux_head_on: str = "stage",
        features_only: bool = False,
        out_indices: int | tuple[int, ...] | None = (0, 1, 2, 3),
        attn_impl: str = "auto",
    ):
        """
        Args:
            embed_dims: Channels of each stage's tokens.
            depths: Blocks per stage.
            num_heads: Attention heads per stage.
            init_values: Per stage, the decay of the first head: gamma = 1 - 2^-(init_value + ...).
            heads_ranges: Per stage, how far the heads' decays spread: head h of H adds heads_range * h / H.
            mlp_ratios: Per stage, the feed-forward width over the token width.
            chunkwise_recurrents: Per stage, attention decomposed along rows then columns (True) or over the
                whole image (False), as the official code chooses per variant.
            layerscales: Per stage, whether blocks scale their residual branches by learned factors.
            layer_init_values: Initial value of those factors.
            projection: Width of the head's projection (1x1 conv, BatchNorm, SiLU) before pooling.
            num_classes: Classifier outputs; 0 for no classifier.
            in_chans: Input image channels.
            global_pool: timm's pooling type for the head ("avg", or "" for none).
            drop_rate: Dropout before the classifier.
            drop_path_rate: Stochastic depth rate of the last block (rising linearly from 0 over the blocks).
            token_label: Add the token-labelling head `aux_head` (RMT-*-TL variants).
            aux_head_on: Where `aux_head` reads tokens: "stage" (the last stage, as the official code) or "proj"
                (after the projection).
            features_only: Build a backbone that returns NCHW stage outputs instead of logits.
            out_indices: The stages a features-only model returns, as timm takes them (an int n: the last n;
                negatives count from the end).
            attn_impl: How attention runs: "auto" (the fused kernel on CUDA where Triton builds it, else
                matmul-softmax or SDPA by device and row length), "matmul", "sdpa", "flex" (FlexAttention, compiled;
                meant for CUDA), "triton" (the fused kernel of zoo/_retention_triton.py, forward and backward) or
                "reference" (the official computation, the test oracle); `set_attn_impl` switches it later.
        """
        super().__init__()
        if aux_head_on not in ("stage", "proj"):
            raise ValueError(f"aux_head_on must be 'stage' or 'proj', not {aux_head_on!r}.")
        self.num_classes = num_classes
        self.features_only = features_only
        self.out_indices = stage_indices(len(depths), out_indices)
        self.output_fmt = "NCHW" if features_only else "NHWC"
        stage_tokens_read = token_label and aux_head_on == "stage" and num_classes > 0
        self.projection_at = "none" if features_only else "head" if stage_tokens_read else "features"
        self.num_features = projection if self.projection_at == "features" else embed_dims[-1]
        self.head_hidden_size = projection
        self.token_label = token_label
        self.aux_head_on = aux_head_on
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        rates = [drop_path_rate * i / max(1, sum(depths) - 1) for i in range(sum(depths))]
        self.layers = nn.ModuleList()
        cache = PositionCache()  # one budget for the whole model's tables
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.layers.append(
                RMTStage(
                    embed_dims[i],
                    embed_dims[i + 1] if i + 1 < len(depths) else None,
                    depth,
                    num_heads[i],
                    init_values[i],
                    heads_ranges[i],
                    mlp_ratios[i],
                    chunkwise_recurrents[i],
                    rates[start : start + depth],
                    layer_init_values if layerscales[i] else None,
                    cache,
                )
            )
        info = [dict(num_chs=c, reduction=4 * 2**i, module=f"layers.{i}") for i, c in enumerate(embed_dims)]
        self.feature_info = FeatureInfo(info, self.out_indices) if features_only else info
        if features_only:
            self.proj = self.norm = self.head = self.aux_head = None
        else:
            self.proj = nn.Linear(embed_dims[-1], projection)
            self.norm = nn.BatchNorm2d(projection)
            self.head_drop = nn.Dropout(drop_rate)
            self.reset_classifier(num_classes, global_pool)
        self.set_attn_impl(attn_impl)
        self.apply(self._init_weights)
        for m in self.modules():
            if isinstance(m, ManhattanSelfAttention):
                for part in m.qkv.weight.chunk(3):
                    nn.init.xavier_normal_(part, gain=2**-2.5)
                nn.init.xavier_normal_(m.out_proj.weight)
                nn.init.zeros_(m.out_proj.bias)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def set_attn_impl(self, attn_impl: str) -> "RMT":
        """Switch every stage's attention path (see ATTN_IMPLS and the `attn_impl` argument)."""
        check_impl(attn_impl)
        for stage in self.layers:
            stage.attn_impl = attn_impl
        return self

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier, and token-labelling head, for `num_classes`; global_pool "avg", or "" for the map."""
        super().reset_classifier(num_classes, global_pool)
        aux_in = self.num_features if self.aux_head_on == "stage" else self.head_hidden_size
        self.aux_head = nn.Linear(aux_in, num_classes) if self.token_label and num_classes > 0 else None

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.norm(self.proj(x).permute(0, 3, 1, 2))).permute(0, 2, 3, 1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        projected = self.project(x) if self.projection_at == "head" else x
        pooled = self._pool(projected)
        if pre_logits:
            return pooled
        logits = self.head(self.head_drop(pooled))
        if self.aux_head is not None:  # on forward_features' tokens when aux_head_on is "stage", else projected ones
            tokens = x if self.aux_head_on == "stage" else projected
            logits = logits + 0.5 * self.aux_head(tokens).flatten(1, 2).amax(1)
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.features_only:
            return self.forward_intermediates(x, self.out_indices, intermediates_only=True)
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state: StateDict, model: nn.Module) -> StateDict:
    """Official keys to ours: q/k/v projections concatenated into `qkv`; everything else is named alike."""
    out: StateDict = {}
    for key, value in state.items():
        if ".retention.q_proj." in key:
            k_key, v_key = key.replace(".q_proj.", ".k_proj."), key.replace(".q_proj.", ".v_proj.")
            if k_key in state and v_key in state:
                out[key.replace(".q_proj.", ".qkv.")] = torch.cat([value, state[k_key], state[v_key]])
                continue
        elif (".retention.k_proj." in key or ".retention.v_proj." in key) and (
            key.replace(".k_proj.", ".q_proj.").replace(".v_proj.", ".q_proj.") in state
        ):
            continue
        out[key] = value
    return out


def _mismatch_hint(state: StateDict, model: RMT) -> str:
    """Name the known layouts that do not fit the current architecture, and checkpoints of other models."""
    if not any(".blocks.0.retention." in k for k in state):
        return "It does not look like an RMT checkpoint (it has no layers.*.blocks.*.retention keys)."
    aux = state.get("aux_head.weight")
    if aux is not None and model.aux_head_on == "stage" and aux.shape[1] == model.head_hidden_size:
        return (
            f"Its aux_head takes {aux.shape[1]} inputs, as the released RMT-S* weights are reported to (512,000 more "
            f"parameters than the official code); build with aux_head_on='proj' to apply it to the "
            f"{aux.shape[1]}-wide projected tokens, a reading the official code does not confirm."
        )
    if not any(k.endswith("Relpos.angle") for k in state) and not any(".ffn.dwconv." in k for k in state):
        return (
            "It looks like the Dec 2023 release of RMT (no rotary position, no FFN dwconv, no 1024-wide head), "
            "which the current architecture cannot load."
        )
    return ""


FAMILY = Family(
    "rmt",
    "RMT, from *Retentive Networks Meet Vision Transformers* (CVPR 2024): a hierarchical vision transformer whose "
    "Manhattan self-attention (MaSA) adds a decay by the Manhattan distance between tokens to the attention scores",
    code="https://github.com/qhfan/RMT",
    built_by="zoo",
)
_PAPER = "https://arxiv.org/abs/2309.11523"
_ARCHS: dict[str, dict] = {
    "rmt_t": dict(
        embed_dims=(64, 128, 256, 512), depths=(2, 2, 8, 2), num_heads=(4, 4, 8, 16), heads_ranges=(4, 4, 6, 6),
        mlp_ratios=(3, 3, 3, 3), chunkwise_recurrents=(True, True, False, False), layerscales=(False,) * 4,
        drop_path_rate=0.1,
    ),
    "rmt_s": dict(
        embed_dims=(64, 128, 256, 512), depths=(3, 4, 18, 4), num_heads=(4, 4, 8, 16), heads_ranges=(4, 4, 6, 6),
        mlp_ratios=(4, 4, 3, 3), chunkwise_recurrents=(True, True, True, False), layerscales=(False,) * 4,
        drop_path_rate=0.15,
    ),
    "rmt_b": dict(
        embed_dims=(80, 160, 320, 512), depths=(4, 8, 25, 8), num_heads=(5, 5, 10, 16), heads_ranges=(5, 5, 6, 6),
        mlp_ratios=(4, 4, 3, 3), chunkwise_recurrents=(True, True, True, False),
        layerscales=(False, False, True, True), layer_init_values=1e-6, drop_path_rate=0.4,
    ),
    "rmt_l": dict(
        embed_dims=(112, 224, 448, 640), depths=(4, 8, 25, 8), num_heads=(7, 7, 14, 20), heads_ranges=(6, 6, 6, 6),
        mlp_ratios=(4, 4, 3, 3), chunkwise_recurrents=(True, True, True, False),
        layerscales=(False, False, True, True), layer_init_values=1e-6, drop_path_rate=0.5,
    ),
}  # fmt: skip


def _info(name: str, official_fn: str, params: int, gflops: float, top1: float) -> ModelInfo:
    token_label = name.endswith("_tl")
    return ModelInfo(
        name=name,
        family=FAMILY.name,
        arch=dict(_ARCHS[name.removesuffix("_tl")], token_label=token_label),
        paper_params_m=params / 1e6,
        paper_gflops=gflops,
        paper_top1=top1,
        hf_hub_id=f"{DEFAULT_HUB_ORG}/{name}",
        hf_hub_filename="model.safetensors",
        paper=_PAPER,
        prefer_ema=name != "rmt_t",  # RMT-T reports its plain weights, S/B/L their EMA weights (qhfan/RMT #25)
        notes=f"official builder {official_fn}; params are the official code's count; GFLOPs as the paper prints "
        "them; qhfan/RMT states no license",
        first_conv="patch_embed.proj.0",
        classifier=("head", "aux_head") if token_label else "head",
        hub_org_env=ORG_ENV,
        comparable=not token_label,  # trained with extra supervision
    )


# name: official builder, params of the official code, paper GFLOPs, paper top-1
_VARIANTS: dict[str, tuple[str, int, float, float]] = {
    "rmt_t": ("RMT_T3", 14_334_216, 2.5, 82.4),
    "rmt_s": ("RMT_S", 26_967_240, 4.5, 84.1),
    "rmt_b": ("RMT_M2", 54_154_896, 9.7, 85.0),
    "rmt_l": ("RMT_L6", 95_464_864, 18.2, 85.5),
    "rmt_s_tl": ("RMT_S (token labeling)", 26_967_240 + 513_000, 4.5, 84.8),
    "rmt_b_tl": ("RMT_M2 (token labeling)", 54_154_896 + 513_000, 9.7, 85.6),
    "rmt_l_tl": ("RMT_L6 (token labeling)", 95_464_864 + 641_000, 18.2, 86.1),
}
INFOS: dict[str, ModelInfo] = {name: _info(name, *row) for name, row in _VARIANTS.items()}


def _create(variant: str, pretrained: bool | str | Path = False, **kwargs) -> RMT:
    return create(RMT, variant, pretrained, filter_fn=checkpoint_filter_fn, hint=_mismatch_hint, **kwargs)


register_family(FAMILY, INFOS.values(), _create)
