"""One registry for every family: the families, their models' metadata (`ModelInfo`) and builders.

Each family's module states its facts once, as data: a `Family` record and a table of its variants' `ModelInfo`s,
handed to `register_family`, which generates the entry points. The harness, the Hub model cards and the tests
read families and models from here; nothing else restates those facts.
"""

from __future__ import annotations

import difflib
import fnmatch
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Literal

import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import PretrainedCfg, generate_default_cfgs, register_model

__all__ = [
    "Family",
    "ModelInfo",
    "UnknownModelError",
    "InputSizeError",
    "register_family",
    "families",
    "list_models",
    "comparison_models",
    "info",
    "builder",
    "input_size_kwargs",
    "suggest",
    "registered_info",
]


@dataclass(frozen=True)
class Family:
    """A model family: what it is (one line, as model cards open), its official code, and whose code builds it.

    `built_by="zoo"`: built by this repository's code and registered with timm as well; `"timm"`: timm's own models.
    """

    name: str
    description: str
    code: str
    built_by: Literal["zoo", "timm"]


# ModelInfo fields that timm's pretrained_cfg carries, with their pretrained_cfg names: the one mapping, both ways.
_SAME_NAME = (
    "hf_hub_id hf_hub_filename num_classes input_size crop_pct interpolation mean std first_conv classifier license"
)
_CFG_FIELDS = {**{name: name for name in _SAME_NAME.split()}, "paper": "paper_ids"}


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
    # False for variants trained with extra supervision (RMT's token labelling): their top-1 is not comparable
    # with the other families', so the benchmark's comparison (`comparison_models`) leaves them out.
    comparable: bool = True

    def pretrained_cfg(self) -> dict:
        """timm's pretrained_cfg for this model (for `generate_default_cfgs` and config.json), without nulls."""
        cfg = {cfg_name: getattr(self, name) for name, cfg_name in _CFG_FIELDS.items()}
        cfg.update(pool_size=(self.input_size[1] // 32, self.input_size[2] // 32), crop_mode="center")
        return {k: v for k, v in cfg.items() if v is not None}

    @classmethod
    def from_pretrained_cfg(cls, name: str, cfg: PretrainedCfg) -> ModelInfo:
        """The facts a timm pretrained_cfg holds, read back: what the zoo knows of a model timm builds."""
        facts = {f: getattr(cfg, cfg_name) for f, cfg_name in _CFG_FIELDS.items()}
        facts.update(
            input_size=tuple(cfg.input_size),
            mean=tuple(cfg.mean),
            std=tuple(cfg.std),
            # timm reads model.safetensors from a Hub repo unless its cfg names a file; the zoo names it.
            hf_hub_filename="model.safetensors" if cfg.hf_hub_id else None,
            paper=cfg.paper_ids if isinstance(cfg.paper_ids, str) else None,
        )
        return cls(name=name, family="timm", timm_name=name, **facts)


class UnknownModelError(ValueError):
    """Raised for a name neither this zoo nor timm knows; the message suggests close names."""


class InputSizeError(ValueError):
    """Raised for an input size a model's architecture cannot take; the message says why and the nearest sizes."""


# A family's rule for input sizes: (name, (H, W), build kwargs) -> the kwargs that build the model for that size,
# or InputSizeError. Families without one take any size with one build.
SizeRule = Callable[[str, tuple[int, int], dict], dict]

_FAMILIES: dict[str, Family] = {}
_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_INFOS: dict[str, ModelInfo] = {}
_SIZE_RULES: dict[str, SizeRule] = {}


def _entry_point(name: str, create: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """`name(pretrained=False, **kwargs)`, defined as if written in `create`'s module (timm, pickle and FX look it
    up there by name)."""

    def entry_point(pretrained: bool | str | Path = False, **kwargs) -> nn.Module:
        return create(name, pretrained, **kwargs)

    entry_point.__name__ = entry_point.__qualname__ = name
    entry_point.__module__ = create.__module__
    entry_point.__doc__ = f"Build {name} (see `zoo.info({name!r})`); kwargs as for `zoo.load`."
    return entry_point


def register_family(
    family: Family, variants: Iterable[ModelInfo], create: Callable[..., nn.Module], sizes: SizeRule | None = None
) -> None:
    """Register `family` and its variants, each built by `create(name, pretrained=False, **kwargs)`; `sizes` is the
    family's input-size rule when a model is built for one size (see `input_size_kwargs`).

    Every variant gets an entry point named after it in `create`'s module. For a family the zoo builds, that module
    also gets `default_cfgs` from the variants' pretrained_cfgs, and the entry points go through timm's
    `register_model`, so `timm.list_models`, `timm.create_model`, `hf-hub:` and `local-dir:` know the variants.
    """
    variants = list(variants)
    twice = ([family.name] if family.name in _FAMILIES else []) + [v.name for v in variants if v.name in _INFOS]
    if twice:
        raise ValueError(f"{', '.join(twice)} would be registered twice.")
    strays = [v.name for v in variants if v.family != family.name]
    if strays:
        raise ValueError(f"{', '.join(strays)} name another family than {family.name!r}.")
    module = sys.modules[create.__module__]
    if family.built_by == "zoo":
        cfgs = generate_default_cfgs({v.name: v.pretrained_cfg() for v in variants})
        vars(module).setdefault("default_cfgs", {}).update(cfgs)  # what register_model reads
    _FAMILIES[family.name] = family
    if sizes is not None:
        _SIZE_RULES[family.name] = sizes
    for variant in variants:
        fn = _entry_point(variant.name, create)
        setattr(module, variant.name, fn)
        _BUILDERS[variant.name], _INFOS[variant.name] = fn, variant
        if family.built_by == "zoo":
            register_model(fn)


def families() -> dict[str, Family]:
    """Every registered family by name, in the order they were registered."""
    return dict(_FAMILIES)


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    """Names of this zoo's models (of one family) matching a shell-style pattern, sorted (timm names pass through
    `load` too)."""
    if family is not None and family not in _FAMILIES:
        raise ValueError(f"Unknown family {family!r}; the zoo's families are {', '.join(_FAMILIES)}.")
    return sorted(
        n for n, i in _INFOS.items() if fnmatch.fnmatch(n, pattern) and (family is None or i.family == family)
    )


def comparison_models() -> list[str]:
    """The models a benchmark compares: every registered model but those marked not `comparable` (RMT's
    token-labelling variants), family by family in registration order, each in its variant table's order."""
    return [n for n, i in _INFOS.items() if i.comparable]


def input_size_kwargs(name: str, input_size: tuple[int, int], **kwargs) -> dict:
    """The build kwargs that make `name` take (H, W) inputs: {} where one build takes any size (RMT, InternImage,
    timm names outside the zoo, built as timm builds them), timm's `img_size` for Swin and MaxViT. A size the
    architecture cannot take raises InputSizeError with one sentence, before anything is built."""
    model_info = info(name)
    rule = _SIZE_RULES.get(model_info.family) if name in _INFOS else None
    return rule(name, (int(input_size[0]), int(input_size[1])), kwargs) if rule else {}


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
    return ModelInfo.from_pretrained_cfg(name, cfg)


def builder(name: str) -> Callable[..., nn.Module] | None:
    """The registered builder for `name`, or None when it is a timm pass-through name; unknown names raise."""
    if name in _BUILDERS:
        return _BUILDERS[name]
    import timm

    if timm.is_model(name):
        return None
    raise _unknown(name)


def registered_info(name: str) -> ModelInfo:
    """The zoo's own ModelInfo for `name` (no timm fallback), for the family builders."""
    return _INFOS[name]
