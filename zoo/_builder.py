"""The zoo's families built through timm's machinery, with the zoo's checked arguments and strict, safe loading.

`build_model_with_cfg` resolves the pretrained_cfg (registered by `generate_default_cfgs`, or handed over by
`timm.create_model("hf-hub:ORG/NAME")`, `local-dir:DIR` or `pretrained_cfg_overlay=dict(file=...)`); the
weights it names are then read with safetensors or `torch.load(weights_only=True)`, mapped from official
keys by the family's `checkpoint_filter_fn` and loaded strictly, with errors that name the keys.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch.nn as nn
from timm.models import build_model_with_cfg

from ._checkpoint import CheckpointError, FilterFn, StateDict, load_pretrained, not_a_file
from ._hub import FALLBACK_FILENAME, fetch_weights
from ._registry import ModelInfo, registered_info

__all__ = ["create", "stage_indices", "check_pretrained", "check_model_kwargs", "checkpoint_file"]

_WEIGHT_FILES = ("model.safetensors", FALLBACK_FILENAME)


def stage_indices(num_stages: int, indices: int | Sequence[int] | None) -> tuple[int, ...]:
    """Absolute stage indices as timm takes them: None is all, an int n the last n, negatives count from the end;
    sorted, as the stages produce them."""
    if indices is None:
        return tuple(range(num_stages))
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 0 < indices <= num_stages:
            raise ValueError(
                f"out_indices={indices} asks for the last {indices} of {num_stages} stages; use 1 to {num_stages}."
            )
        return tuple(range(num_stages - indices, num_stages))
    try:
        given = tuple(indices)
    except TypeError:
        raise ValueError(f"out_indices must be an int or a sequence of stage indices, not {indices!r}.") from None
    bad = [i for i in given if not isinstance(i, int) or isinstance(i, bool) or not -num_stages <= i < num_stages]
    if bad or not given:
        raise ValueError(
            f"out_indices={indices!r} is out of range for {num_stages} stages; "
            f"use indices from 0 to {num_stages - 1} (or -{num_stages} to -1 from the end)."
        )
    stages = [i % num_stages for i in given]
    if len(set(stages)) < len(stages):  # timm would return fewer maps than indices asked for
        twice = next(s for s in stages if stages.count(s) > 1)
        raise ValueError(f"out_indices={indices!r} names stage {twice} more than once; name each stage once.")
    return tuple(sorted(stages))  # outputs come in stage order, so the info does too


def check_pretrained(pretrained: object) -> None:
    """`pretrained` is True, False or a checkpoint path; anything else is refused in one sentence."""
    if not isinstance(pretrained, (bool, str, Path)) and pretrained is not None:
        raise TypeError(
            f"pretrained must be True (the Hub), False or a checkpoint path, not {pretrained!r} "
            f"({type(pretrained).__name__})."
        )
    if isinstance(pretrained, (str, Path)) and not str(pretrained).strip():
        raise ValueError(
            "pretrained='' names no checkpoint; pass a path, True for the Hub or False for random weights."
        )


# timm's dropout and drop-path rates: a probability of dropping, so 1 (everything dropped) or more cannot train.
_RATES = ("drop_rate", "drop_path_rate", "attn_drop_rate", "proj_drop_rate", "pos_drop_rate", "patch_drop_rate")


def check_model_kwargs(kwargs: Mapping[str, object]) -> None:
    """Refuse, where they are given (zoo.load, bench.py's --model-kwargs), kwargs no build can honour: a rate
    outside [0, 1), a num_classes that is no count."""
    for name in _RATES:
        value = kwargs.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1):
            raise ValueError(f"{name} must be a number from 0 up to, not including, 1, not {value!r}.")
    num_classes = kwargs.get("num_classes")
    if num_classes is not None and (
        not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0
    ):
        raise ValueError(f"num_classes must be a whole number >= 0 (0 for no classifier), not {num_classes!r}.")


def checkpoint_file(path: str | Path) -> Path:
    """The weights file `path` names, as zoo.load reads it: a checkpoint file, or the weights file of a folder
    `python -m hub convert` wrote. Raises CheckpointError (one sentence) for anything else."""
    path = Path(path)
    if path.is_dir():
        found = next((path / f for f in _WEIGHT_FILES if (path / f).is_file()), None)
        if found is None:
            raise CheckpointError(
                f"{path} is a folder with neither {' nor '.join(_WEIGHT_FILES)} in it; pass the checkpoint file itself."
            )
        return found
    if not path.is_file():
        raise not_a_file(path)
    return path


# pretrained_cfg fields that name weights outside a Hub repo; a repo's own config.json may not set them.
_REDIRECTS = ("file", "url", "state_dict")


def _from_repo_only(cfg: dict, asked: dict) -> dict:
    """The pretrained_cfg of a `hf-hub:` model with what its config.json may not decide removed: a repo's config
    names weights only inside that repo, so a `file` (a local path), `url` or `state_dict` it sets is dropped and a
    `hf_hub_filename` that leaves the repo's tree refused, unless the caller asked for it (pretrained_cfg_overlay)."""
    if cfg.get("source") != "hf-hub":
        return cfg
    cfg = {k: v for k, v in cfg.items() if k not in _REDIRECTS or k in asked}
    name = cfg.get("hf_hub_filename")
    if "hf_hub_filename" not in asked and name is not None:
        parts = str(name).replace("\\", "/").split("/")
        if not isinstance(name, str) or not name or name.startswith("/") or ".." in parts or ":" in parts[0]:
            raise CheckpointError(
                f"The config.json of {cfg.get('hf_hub_id')} names the weights file {name!r}, which is not a file "
                f"inside that repo; pass pretrained_cfg_overlay=dict(hf_hub_filename=...) to choose one."
            )
    return cfg


def resolve_weights(
    model_info: ModelInfo,
    pretrained: bool | str | Path,
    cfg: dict,
    cache_dir: str | Path | None = None,
    asked: dict | None = None,
) -> Path | StateDict:
    """Where the weights are: a path given to `zoo.load`, else what the pretrained_cfg names, as timm reads it.

    `asked` is the caller's own pretrained_cfg_overlay: only it may point a `hf-hub:` model's weights elsewhere
    than its repo (see `_from_repo_only`)."""
    if not isinstance(pretrained, bool):
        return checkpoint_file(pretrained)
    cfg = _from_repo_only(cfg, asked or {})
    if cfg.get("state_dict"):
        return cfg["state_dict"]
    if cfg.get("file"):  # pretrained_cfg_overlay=dict(file=...), or the folder of `local-dir:`
        return checkpoint_file(cfg["file"])
    repo = cfg.get("hf_hub_id")
    # The registry's own repo keeps the organisation override; any other (hf-hub:ORG/NAME, an overlay) is exact.
    exact = repo if repo and (cfg.get("source") == "hf-hub" or repo != model_info.hf_hub_id) else None
    return fetch_weights(model_info, repo_id=exact, filename=cfg.get("hf_hub_filename"), cache_dir=cache_dir)


def create(
    cls: Callable[..., nn.Module],
    variant: str,
    pretrained: bool | str | Path = False,
    filter_fn: FilterFn | None = None,
    hint: Callable[[StateDict, nn.Module], str] | None = None,
    **kwargs,
) -> nn.Module:
    """Build `variant` (its registry arch, overridden by kwargs) with timm's builder, then load its weights.

    `features_only` builds the model's own backbone mode (NCHW stage maps through `forward_intermediates`),
    which is also what timm's `feature_cls="getter"` asks for.
    """
    model_info = registered_info(variant)
    check_pretrained(pretrained)
    check_model_kwargs(kwargs)
    features_only = bool(kwargs.pop("features_only", False))
    feature_cls = kwargs.pop("feature_cls", None)
    if feature_cls not in (None, "getter"):
        raise ValueError(
            f"{variant} builds its features through forward_intermediates (feature_cls='getter'), not {feature_cls!r}."
        )
    model = build_model_with_cfg(
        partial(cls, features_only=features_only), variant, pretrained=False, **{**model_info.arch, **kwargs}
    )
    model.model_name = variant
    if pretrained:
        source = resolve_weights(
            model_info, pretrained, model.pretrained_cfg, kwargs.get("cache_dir"), kwargs.get("pretrained_cfg_overlay")
        )
        load_pretrained(model, model_info, source, filter_fn, hint)
    return model
