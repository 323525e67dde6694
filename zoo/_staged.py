"""timm's model interface, once for both families: a stem, then stages that each return (output, next input)."""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.models._features import feature_take_indices

__all__ = ["StagedModel"]


class StagedModel(nn.Module):
    """Grad checkpointing, classifier access and reset, `forward_intermediates` and pruning, for a model with
    `patch_embed`, a ModuleList named by `stages_attr` (each stage with a `grad_checkpointing` flag, returning
    its output before downsampling and the next stage's input, channels-last) and `head` on `head_hidden_size`.

    Both families widen every token (RMT's `proj`/`norm`, InternImage's `conv_head`) before pooling. Like the
    conv head of timm's EfficientNet, that projection ends `forward_features` (`projection_at` "features",
    `num_features == head_hidden_size`), unless a head reads the stage's own tokens (RMT's token-labelling
    head): then it opens `forward_head` ("head"). Pruning sets it to "none".
    """

    stages_attr = "layers"
    stage_tail = "downsample"  # a stage's modules after its blocks, a regex alternation (`group_matcher`)
    projection_modules: tuple[str, ...] = ()  # the per-token projection between the last stage and pooling
    head_modules: tuple[str, ...] = ()  # modules beside `head` that pruning the head drops with it
    projection_at = "features"
    # The channel axis of forward_features' map (NHWC), where timm's NHWC models declare it (timm's checks of
    # non-standard models read it, and take axis 1 of a 4-D map without it).
    feature_dim = -1
    head_hidden_size: int
    num_classes: int
    global_pool: str

    def _stages(self) -> nn.ModuleList:
        return getattr(self, self.stages_attr)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self._stages():
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for layer-wise learning-rate decay, as timm's: the stem, then stage by stage (block by
        block, each stage's tail after its blocks), the projection last."""
        stages = rf"^{self.stages_attr}\.(\d+)"
        return dict(
            stem=r"^patch_embed",
            blocks=stages if coarse else [
                (rf"{stages}\.blocks\.(\d+)", None),
                (rf"{stages}\.(?:{self.stage_tail})", (99998,)),
                ("|".join(f"^{name}" for name in self.projection_modules), (99999,)),
            ],
        )  # fmt: skip

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier for `num_classes`; global_pool "avg", or "" for the unpooled map."""
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '' (no pooling), not {global_pool!r}.")
            self.global_pool = global_pool
        if self.global_pool == "" and num_classes > 0:
            raise ValueError("global_pool='' leaves an unpooled map, so it needs num_classes=0.")
        self.num_classes = num_classes
        self.head = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The projection, channels-last in and out."""
        raise NotImplementedError

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        """Average over the map (NHWC), or keep it with global_pool ""."""
        return x.mean((1, 2)) if self.global_pool == "avg" else x

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs before downsampling (NCHW or NHWC) and, unless `intermediates_only`, the final map.

        `norm` is accepted for timm's interface: no norm sits between the last stage and the head.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', not {output_fmt!r}.")
        stages = self._stages()
        take_indices, max_index = feature_take_indices(len(stages), indices)
        if stop_early or intermediates_only:
            stages = stages[: max_index + 1]
        intermediates = []
        x = self.patch_embed(x)
        for i, stage in enumerate(stages):
            out, x = stage(x)
            if i in take_indices:
                intermediates.append(out.permute(0, 3, 1, 2) if output_fmt == "NCHW" else out)
        if intermediates_only:
            return intermediates
        if self.projection_at == "features" and len(stages) == len(self._stages()):
            x = self.project(x)
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last one in `indices` and the head; as in timm's EfficientNet, the projection
        goes with the stages (`prune_norm` or a stage dropped) when `forward_features` ends with it, else with the
        head."""
        take_indices, max_index = feature_take_indices(len(self._stages()), indices)
        truncated = max_index + 1 < len(self._stages())
        setattr(self, self.stages_attr, self._stages()[: max_index + 1])
        dropped = []
        if prune_head:
            dropped += self.head_modules
            self.head = nn.Identity()
            self.num_classes = 0
        if (self.projection_at == "head" and prune_head) or (
            self.projection_at == "features" and (prune_norm or truncated)
        ):
            dropped += self.projection_modules
            self.projection_at = "none"
        for name in dropped:
            setattr(self, name, None)
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW image -> the map pooling reads, channels-last (N, H/32, W/32, num_features)."""
        x = self.patch_embed(x)
        for stage in self._stages():
            _, x = stage(x)
        return self.project(x) if self.projection_at == "features" else x
