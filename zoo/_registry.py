"""One registry for every family: names, metadata (`ModelInfo`) and builders.

The harness and the Hub model cards read `ModelInfo`; nothing else restates those facts.
"""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

__all__ = [
    "ModelInfo", "UnknownModelError", "register", "list_models", "info", "builder", "suggest", "model_kwargs",
    "registered_info",
]  # fmt: skip

# Arguments timm.create_model hands every builder; the zoo's builders take their configuration from ModelInfo.
_TIMM_ONLY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


@dataclass(frozen=True)
class ModelInfo:
    """What a user needs to pick, preprocess and cite a model; paper numbers are labelled as such."""

    name: str
    family: str
    arch: dict = field(default_factory=dict)
    paper_params_m: float | None = None
    paper_gflops: float | None = None  # fvcore convention: one multiply-add counts as one FLOP
    paper_top1: float | None = None
    input_size: tuple[int, int, int] = (3, 224, 224)
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, float, float] = IMAGENET_DEFAULT_STD
    num_classes: int = 1000
    hf_hub_id: str | None = None
    hf_hub_filename: str | None = None
    license: str | None = None
    paper: str | None = None
    timm_name: str | None = None
    prefer_ema: bool = True  # which weights of a checkpoint holding both are the reported ones
    notes: str = ""
    first_conv: str | None = None  # module names timm's pretrained_cfg carries (in_chans adaption, head resets)
    classifier: str | tuple[str, ...] | None = None
    # Environment variable naming the Hub organisation to take weights from instead of hf_hub_id's, for families
    # whose weights whoever converts them publishes under their own name (RMT: none are on the Hub yet).
    hub_org_env: str | None = None

    def pretrained_cfg(self) -> dict:
        """timm's pretrained_cfg for this model (for `generate_default_cfgs` and config.json), without nulls."""
        cfg = dict(
            hf_hub_id=self.hf_hub_id,
            hf_hub_filename=self.hf_hub_filename,
            num_classes=self.num_classes,
            input_size=self.input_size,
            pool_size=(self.input_size[1] // 32, self.input_size[2] // 32),
            crop_pct=self.crop_pct,
            crop_mode="center",
            interpolation=self.interpolation,
            mean=self.mean,
            std=self.std,
            first_conv=self.first_conv,
            classifier=self.classifier,
            license=self.license,
            paper_ids=self.paper,
        )
        return {k: v for k, v in cfg.items() if v is not None}


class UnknownModelError(ValueError):
    """Raised for a name neither this zoo nor timm knows; the message suggests close names."""


_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_INFOS: dict[str, ModelInfo] = {}


def register(model_info: ModelInfo) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: record a builder `fn(pretrained=False, **kwargs) -> nn.Module` under `model_info.name`."""

    def decorate(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if model_info.name in _BUILDERS:
            raise ValueError(f"model {model_info.name!r} is registered twice")
        _BUILDERS[model_info.name] = fn
        _INFOS[model_info.name] = model_info
        return fn

    return decorate


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    """Names of this zoo's models matching a shell-style pattern (timm names pass through `load` too)."""
    return sorted(
        n for n, i in _INFOS.items() if fnmatch.fnmatch(n, pattern) and (family is None or i.family == family)
    )


def suggest(name: str, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Close names for a typo, from this zoo first, then from `extra` (timm's names)."""
    ours = difflib.get_close_matches(name.lower(), list(_INFOS), n=3, cutoff=0.5)
    theirs = difflib.get_close_matches(name.lower(), list(extra), n=3, cutoff=0.7) if extra else []
    return ours + [n for n in theirs if n not in ours][: max(0, 5 - len(ours))]


def _unknown(name: str) -> UnknownModelError:
    import timm

    close = suggest(name, timm.list_models())
    hint = f" Did you mean: {', '.join(close)}?" if close else " See zoo.list_models()."
    return UnknownModelError(f"Unknown model {name!r}: it is neither in this zoo nor in timm.{hint}")


def info(name: str) -> ModelInfo:
    """Metadata for a zoo model, or for any timm model (read from its pretrained config)."""
    if name in _INFOS:
        return _INFOS[name]
    import timm

    if not timm.is_model(name):
        raise _unknown(name)
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return ModelInfo(name=name, family="timm", timm_name=name)
    return ModelInfo(
        name=name,
        family="timm",
        input_size=tuple(cfg.input_size),
        crop_pct=cfg.crop_pct,
        interpolation=cfg.interpolation,
        mean=tuple(cfg.mean),
        std=tuple(cfg.std),
        num_classes=cfg.num_classes,
        hf_hub_id=cfg.hf_hub_id,
        hf_hub_filename="model.safetensors" if cfg.hf_hub_id else None,
        license=cfg.license,
        paper=cfg.paper_ids if isinstance(cfg.paper_ids, str) else None,
        timm_name=name,
        first_conv=cfg.first_conv,
        classifier=cfg.classifier,
    )


def builder(name: str) -> Callable[..., nn.Module] | None:
    """The registered builder for `name`, or None when it is a timm pass-through name; unknown names raise."""
    if name in _BUILDERS:
        return _BUILDERS[name]
    import timm

    if timm.is_model(name):
        return None
    raise _unknown(name)


def model_kwargs(kwargs: dict) -> dict:
    """A builder's kwargs without the ones timm.create_model adds, so timm and zoo.load build alike."""
    return {k: v for k, v in kwargs.items() if k not in _TIMM_ONLY_KWARGS}


def registered_info(name: str) -> ModelInfo:
    """The zoo's own ModelInfo for `name` (no timm fallback), for the family builders."""
    return _INFOS[name]
