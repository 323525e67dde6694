"""Reading checkpoints safely and loading them strictly.

Weights are never unpickled with code execution: a safetensors file (told by its content, whatever its name)
through safetensors, anything else through `torch.load(weights_only=True)`. A checkpoint that does not fit ends in
one error naming the keys, never a silent partial load; one no model could load as it is (keys that are no names,
sparse, meta or quantized tensors, NaN or infinite weights) is named malformed, and a pickle weights_only refused is
named unsafe, with what it asked to import.
"""

from __future__ import annotations

import argparse
import errno
import logging
import pickle
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterable

import torch
import torch.nn as nn

from ._registry import ModelInfo

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "LoadReport",
    "read_checkpoint",
    "check_fits",
    "load_pretrained",
]

_logger = logging.getLogger("zoo")

# Wrappers seen in the wild, in order of preference: EMA weights are what RMT-S/B/L report (qhfan/RMT #25),
# the plain ones what RMT-T reports (ModelInfo.prefer_ema=False).
_EMA_KEYS = ("model_ema", "state_dict_ema")
_PLAIN_KEYS = ("model", "state_dict", "module")
# DeiT-style training scripts (the official RMT one among them) save their argparse options beside the weights;
# a Namespace holds only plain values, so allowing it keeps weights_only's guarantee.
_SAFE_GLOBALS = [argparse.Namespace]
# What a PyTorch checkpoint's pickle imports; anything else in a file weights_only refused is why it refused.
_CHECKPOINT_GLOBALS = ("torch.", "collections.OrderedDict", *(f"{g.__module__}.{g.__name__}" for g in _SAFE_GLOBALS))
StateDict = dict[str, torch.Tensor]
FilterFn = Callable[[StateDict, nn.Module], StateDict]


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read (missing, a link loop, damaged), or that was refused as unsafe because
    unpickling it could run code."""


class CheckpointMismatchError(ValueError):
    """A readable checkpoint whose keys or shapes do not fit the model."""


@dataclass
class LoadReport:
    """What was loaded, kept on the model as `model.load_report` so the choice of weights is visible."""

    source: str
    entry: str  # which nesting key was taken, e.g. "model_ema", or "(bare)"
    dropped: tuple[str, ...] = ()


def _is_tensor_dict(obj: object) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _odd_kind(tensor: torch.Tensor) -> str:
    """What makes `tensor` no plain dense tensor of values ('' when it is one)."""
    if tensor.is_meta:
        return "meta, without values"
    if tensor.layout != torch.strided:
        return "sparse"
    if tensor.is_quantized:
        return "quantized"
    return ""


def _check_tensors(state: StateDict, source: str) -> None:
    """Refuse a state dict no model can load as it is, naming what is wrong: keys that are not parameter names,
    tensors that are not plain dense ones, floating values that are NaN or infinite (damaged weights)."""
    keys = [repr(k) for k in state if not isinstance(k, str)]
    if keys:
        raise CheckpointError(
            f"Checkpoint {source} is malformed: its keys must be parameter names, and {_listing(keys, 3)} "
            f"{'is' if len(keys) == 1 else 'are'} not."
        )
    odd = [f"{k} ({kind})" for k, v in state.items() if (kind := _odd_kind(v))]
    if odd:
        raise CheckpointError(
            f"Checkpoint {source} is malformed: {len(odd)} tensor(s) are not plain dense tensors: {_listing(odd, 3)}."
        )
    bad = [k for k, v in state.items() if (v.is_floating_point() or v.is_complex()) and not bool(v.isfinite().all())]
    if bad:
        raise CheckpointError(
            f"Checkpoint {source} holds NaN or infinite values in {len(bad)} tensor(s) ({_listing(bad, 3)}): its "
            f"weights are damaged."
        )


def _unwrap(obj: object, source: str, prefer_ema: bool) -> tuple[StateDict, str]:
    if _is_tensor_dict(obj):
        state, entry = obj, "(bare)"
    else:
        if not isinstance(obj, dict):
            raise CheckpointError(f"Checkpoint {source} holds a {type(obj).__name__}, not a state dict.")
        order = _EMA_KEYS + _PLAIN_KEYS if prefer_ema else _PLAIN_KEYS + _EMA_KEYS
        entry = next((k for k in order if _is_tensor_dict(obj.get(k))), None)
        if entry is None:
            raise CheckpointError(
                f"Checkpoint {source} has no state dict under any of {', '.join(order)} "
                f"(its top-level keys: {', '.join(map(str, list(obj)[:8]))})."
            )
        state = obj[entry]
    _check_tensors(state, source)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state), entry


class _Inert:
    """Stands in for every object a pickle asks for, so reading it runs nothing."""

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __setstate__(self, state: object) -> None:
        pass


class _ImportRecorder(pickle.Unpickler):
    """Reads a pickle of any protocol, recording the globals it imports instead of importing them."""

    def __init__(self, file):
        super().__init__(file)
        self.imports: list[str] = []

    def find_class(self, module: str, name: str) -> type:
        self.imports.append(f"{module}.{name}")
        return _Inert

    def persistent_load(self, pid: object) -> None:
        return None


def _imports(file: IO[bytes]) -> list[str]:
    """The globals the pickles in `file` import, one pickle after another, as far as they can be read."""
    recorder = _ImportRecorder(file)
    while True:
        try:
            recorder.load()
        except Exception:  # the end of the pickles, or damage: what was read so far is the answer
            return recorder.imports


def _foreign_imports(path: Path) -> list[str]:
    """The globals, other than a checkpoint's own, that `path` imports: in a zip checkpoint its data.pkl, in a
    legacy or plain pickle file each pickle in turn."""
    with open(path, "rb") as f:
        if zipfile.is_zipfile(f):
            with zipfile.ZipFile(f) as archive:
                pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
                imports = _imports(archive.open(pickles[0])) if pickles else []
        else:
            f.seek(0)
            imports = _imports(f)
    return [g for g in imports if not g.startswith(_CHECKPOINT_GLOBALS)]


def not_a_file(path: Path) -> CheckpointError:
    try:
        path.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            return CheckpointError(f"Checkpoint path {path} is a symbolic-link loop: its links never reach a file.")
        return CheckpointError(f"Checkpoint file {path} does not exist.")
    return CheckpointError(f"Checkpoint path {path} is not a file.")


def _is_safetensors(path: Path) -> bool:
    """Whether `path` is laid out as a safetensors file: an 8-byte header length, then the JSON header."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            size = path.stat().st_size
    except OSError:
        return False
    return len(head) == 9 and head[8:] == b"{" and struct.unpack("<Q", head[:8])[0] <= size - 8


def read_checkpoint(path: str | Path, prefer_ema: bool = True) -> tuple[StateDict, str]:
    """Read a safetensors or PyTorch file (told apart by content, so a safetensors file named `.pth` reads) into a
    flat state dict; return it and the nesting key taken.

    With `prefer_ema`, EMA weights are taken when the file has them; otherwise the plain ones are.
    """
    path = Path(path)
    if not path.is_file():
        raise not_a_file(path)
    if path.suffix == ".safetensors" or _is_safetensors(path):
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises several unrelated types for a damaged file
            raise CheckpointError(f"Checkpoint {path} is not a readable safetensors file ({e}).") from None
        return _unwrap(state, str(path), prefer_ema)
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only names the global it refused (torch's own included: torch.hub.load is no weight either)
        refused = re.findall(r"Unsupported global: GLOBAL (\S+)", str(e))
        foreign = list(dict.fromkeys([*refused, *_foreign_imports(path)]))
        if not foreign:  # damaged, or not a pickle at all: nothing in it asked to run anything
            raise CheckpointError(
                f"Checkpoint {path} is not a readable PyTorch file (it is damaged or not a checkpoint)."
            ) from None
        raise CheckpointError(
            f"Refused to load {path} as unsafe: it asks to import {_listing(dict.fromkeys(foreign), 3)}, and "
            f"torch.load(weights_only=True) refuses whatever could run code while loading."
        ) from None
    except Exception as e:
        raise CheckpointError(f"Checkpoint {path} is not a readable PyTorch file ({type(e).__name__}: {e}).") from None
    return _unwrap(obj, str(path), prefer_ema)


def _listing(keys: Iterable[str], limit: int = 6) -> str:
    keys = list(keys)
    head = ", ".join(keys[:limit])
    return head + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_fits(model: nn.Module, state: StateDict, source: str, hint: str = "") -> None:
    """Raise CheckpointMismatchError naming missing, unexpected and mis-shaped keys, if any."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} (checkpoint {list(state[k].shape)}, model {list(own[k].shape)})"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    # load_state_dict would cast an integer, bool or complex tensor into a float parameter without a word
    dtypes = [
        f"{k} (checkpoint {state[k].dtype}, model {own[k].dtype})"
        for k in own
        if k in state and own[k].is_floating_point() and not state[k].is_floating_point()
    ]
    if not (missing or unexpected or shapes or dtypes):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {_listing(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {_listing(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} of another shape: {_listing(shapes, 4)}")
    if dtypes:
        parts.append(f"{len(dtypes)} not floating point: {_listing(dtypes, 4)}")
    name = getattr(model, "model_name", type(model).__name__)
    raise CheckpointMismatchError(
        f"Checkpoint {source} does not fit {name}: {'; '.join(parts)}.{(' ' + hint) if hint else ''}"
    )


def load_pretrained(
    model: nn.Module,
    model_info: ModelInfo,
    source: Path | StateDict,
    filter_fn: FilterFn | None = None,
    hint: Callable[[StateDict, nn.Module], str] | None = None,
) -> None:
    """Load `source` (a checkpoint file, or a state dict from a pretrained_cfg) into `model`, strictly.

    A `features_only` model drops the keys of the modules it does not have (the head); a model built for
    another number of classes than `model_info` drops, with a log line, the classifier's keys of another size.
    """
    if isinstance(source, dict):
        state, entry, where = _unwrap(source, "pretrained_cfg['state_dict']", model_info.prefer_ema) + ("state_dict",)
    else:
        (state, entry), where = read_checkpoint(source, model_info.prefer_ema), str(source)
    if filter_fn is not None:
        state = filter_fn(state, model)
    own = model.state_dict()
    classifier = model_info.classifier or ()
    classifier = tuple(f"{c}." for c in ((classifier,) if isinstance(classifier, str) else classifier))
    if getattr(model, "features_only", False):
        children = dict(model.named_children())
        dropped = tuple(k for k in state if k not in own and k.split(".", 1)[0] not in children)
    elif getattr(model, "num_classes", model_info.num_classes) != model_info.num_classes:
        # Only a different class count is dropped; any other shape difference is a real mismatch.
        dropped = tuple(
            k for k in state if k.startswith(classifier) and (k not in own or own[k].shape[:1] != state[k].shape[:1])
        )
    else:
        dropped = ()
    for k in dropped:
        del state[k]
    if dropped and not getattr(model, "features_only", False):
        # The freshly initialised classifier stays; everything else must still fit exactly.
        state.update({k: v for k, v in own.items() if k.startswith(classifier) and k not in state})
        _logger.info(
            "%s: classifier weights dropped for %d classes: %s", model_info.name, model.num_classes, _listing(dropped)
        )
    check_fits(model, state, where, hint(state, model) if hint else "")
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, ValueError, AttributeError) as e:  # what check_fits cannot foresee
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise CheckpointError(f"Checkpoint {where} could not be loaded into {model_info.name}: {first}") from None
    model.load_report = LoadReport(source=where, entry=entry, dropped=dropped)
    _logger.info("%s: loaded %r weights from %s", model_info.name, entry, where)
