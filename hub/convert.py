"""A released checkpoint (e.g. RMT's official `.pth`) to a Hub-ready folder: model.safetensors, config.json, README.md.

The weights are written exactly as the checkpoint's chosen entry holds them (EMA when present), keys unchanged,
so the file also loads into the official code; the zoo's loaders map official keys at load time. Nothing is
written unless the checkpoint loads strictly into the zoo's model, and the written file must then give the
same outputs as the source.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import errno
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from safetensors import SafetensorError
from safetensors.torch import save_file

import zoo
from common import __version__
from common.paths import TEMP_MARK, OutputPathError, check_distinct, check_output_path, current_umask, write_atomic
from common.provenance import git_commit
from zoo import ModelInfo, hub_repo_id, read_checkpoint

from .card import read_results, render_card

__all__ = ["ConversionError", "Conversion", "convert", "WEIGHTS", "CONFIG", "CARD", "ENTRY_MEANING"]

WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "README.md"
# Converted weights are the source tensors unchanged, so any difference at all means something went wrong.
TOLERANCE = 1e-5
ENTRY_MEANING = {
    "model_ema": "EMA weights",
    "state_dict_ema": "EMA weights",
    "model": "non-EMA weights",
    "state_dict": "non-EMA weights",
    "module": "non-EMA weights",
    "(bare)": "only state dict",  # read after "the": "took the only state dict (entry '(bare)') of FILE"
}


class ConversionError(RuntimeError):
    """The written weights do not reproduce the source checkpoint, or an input of the conversion is unusable."""


@dataclass
class Conversion:
    """What `convert` wrote, and the check it passed."""

    out_dir: Path
    config: dict
    measured_rows: int


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _outputs(name: str, weights: Path, x: torch.Tensor) -> torch.Tensor:
    """The zoo's model for `name` with `weights` loaded strictly (CheckpointMismatchError names any bad key)."""
    model = zoo.load(name, pretrained=weights)
    with torch.inference_mode():
        return model(x)


def _without_nulls(value: Any) -> Any:
    """timm's config.json carries no nulls: a field that does not apply is left out."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


def _config(
    model_info: ModelInfo, source: Path, source_sha256: str, entry: str, weights: Path, check: dict, org: str | None
) -> dict:
    """config.json in timm's layout (what `timm.create_model("hf-hub:ORG/NAME")` reads: architecture,
    num_classes, num_features, pretrained_cfg), plus arch, provenance and paper facts."""
    with torch.device("meta"):
        num_features = zoo.load(model_info.name).num_features
    return _without_nulls({
        "architecture": model_info.name,
        "num_classes": model_info.num_classes,
        "num_features": num_features,
        "pretrained_cfg": {**model_info.pretrained_cfg(), "hf_hub_id": hub_repo_id(model_info, org)},
        "family": model_info.family,
        "arch": model_info.arch,
        "license": model_info.license,
        "paper": model_info.paper,
        "paper_metrics": {
            "params_m": model_info.paper_params_m,
            "gflops": model_info.paper_gflops,
            "top1": model_info.paper_top1,
            "note": model_info.notes or "as reported in the paper; gflops count one multiply-add as one FLOP",
        },
        "provenance": {
            "source_file": source.name,
            "source_sha256": source_sha256,
            "entry": entry,
            "weights": ENTRY_MEANING.get(entry, entry),
            "key_layout": "as in the source checkpoint",
            "weights_sha256": file_sha256(weights),
            "converter": f"rmt-zoo {__version__} (python -m hub convert)",
            # the checkout that converted, '-dirty' when it had uncommitted changes (as benchmark rows record it)
            "converter_commit": git_commit(),
            "converted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "check": check,
        },
    })  # fmt: skip


def _check_destination(out_dir: Path, source: Path, results: Path | None, force: bool) -> None:
    """Refuse (OutputPathError: a usage error, exit 2), before any work, a destination that cannot be written, would
    mix old and new files or would destroy an input (the source or the results file inside an OUT_DIR that --force
    replaces whole)."""
    check_output_path(out_dir, "OUT_DIR", folder=True)
    check_output_path(out_dir.resolve().parent, "The folder OUT_DIR goes into", folder=True)  # renames happen there
    check_distinct({"OUT_DIR": out_dir}, {"SOURCE": source, "--results": results})
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise OutputPathError(
            f"{out_dir} already holds files, which `publish` would upload beside the new ones; "
            f"choose an empty folder or pass --force to replace it whole."
        )


def _staging_prefix(out_dir: Path) -> str:
    """Name start of the hidden folders a conversion into `out_dir` stages in (followed by its pid)."""
    return f".{out_dir.name}.{TEMP_MARK}"


def _clean_stale_staging(out_dir: Path) -> None:
    """Remove the staging folders that killed conversions into `out_dir` left beside it: named with the prefix and
    the pid of a process that no longer runs, and real folders (never a link someone put there)."""
    prefix = _staging_prefix(out_dir)
    try:
        entries = list(os.scandir(out_dir.parent))
    except OSError:
        return
    for entry in entries:
        pid, _, rest = entry.name[len(prefix) :].partition("-")
        if not entry.name.startswith(prefix) or not pid.isdecimal() or not rest:
            continue
        if not entry.is_dir(follow_symlinks=False) or _alive(int(pid)):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _swap_into_place(staged: Path, out_dir: Path, force: bool) -> None:
    """Move the finished `staged` folder to `out_dir` with one rename, so no reader sees a half-written mix.

    Without `force`, `out_dir` may only be missing or empty: the rename fails on a folder that is not empty, so a
    file put there during the conversion is kept and the conversion is refused. With `force`, the folder there is
    replaced whole (moved aside, then removed).
    """
    staged.chmod(0o777 & ~current_umask())  # mkdtemp's 0700 would shut everyone else out of the finished folder
    if not force:
        try:
            staged.rename(out_dir)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise
            raise ConversionError(
                f"{out_dir} was given files during the conversion (or became something other than a folder), so "
                f"nothing there was replaced; move them away or pass --force to replace the folder whole."
            ) from None
        return
    if not out_dir.exists() and not out_dir.is_symlink():
        staged.rename(out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(out_dir)}{os.getpid()}-old-", dir=out_dir.parent))
    out_dir.rename(old / out_dir.name)
    try:
        staged.rename(out_dir)
    except OSError:
        (old / out_dir.name).rename(out_dir)  # put the previous folder back
        raise
    shutil.rmtree(old, ignore_errors=True)


def convert(
    model_name: str,
    source: str | Path,
    out_dir: str | Path,
    results: str | Path | None = None,
    org: str | None = None,
    force: bool = False,
    results_dataset: str | None = None,
) -> Conversion:
    """Convert `source` for zoo model `model_name` into `out_dir`; `results` is a harness JSONL for the card, and
    `results_dataset` the dataset repo (ORG/NAME) with the full benchmark, which the card links to.

    Everything is written into a hidden folder beside `out_dir` (`.NAME.partial-PID-...`, created exclusively) and
    moved into place only once weights, config and card are complete and checked, so an interrupted conversion
    leaves the previous folder untouched; folders that killed conversions left are removed by the next one. A
    non-empty `out_dir` is refused unless `force`, and then replaced whole (no stale file survives); files that
    appear in it during the conversion are kept and the conversion refused, unless `force`.
    """
    model_info = zoo.info(model_name)
    repo_id = hub_repo_id(model_info, org)
    try:  # the organisation (--org or its environment variable) is written into config.json and the card
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ConversionError(
            f"The Hub repo id {repo_id!r} is not valid (ORG/NAME: letters, digits, -, _ and ., no '..' or '--'); "
            f"check --org."
        ) from None
    source, out_dir = Path(source), Path(out_dir)
    results = Path(results) if results is not None else None
    _check_destination(out_dir, source, results, force)
    rows = read_results(results, model_name) if results is not None else []
    state, entry = read_checkpoint(source, model_info.prefer_ema)
    source_sha256 = file_sha256(source)
    x = torch.randn((1, *model_info.input_size), generator=torch.Generator().manual_seed(0))
    reference = _outputs(model_name, source, x)
    if not bool(reference.isfinite().all()):  # nothing to hold the conversion to: the source's fault, said as such
        raise zoo.CheckpointError(
            f"Checkpoint {source} gives NaN or infinite outputs for {model_name} on a test input; its weights are "
            f"damaged or not {model_name}'s, and nothing was written to {out_dir}."
        )

    parent = out_dir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_staging(out_dir)
    staged = Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(out_dir)}{os.getpid()}-", dir=parent))
    try:
        weights = staged / WEIGHTS
        # clone: safetensors refuses tensors that share storage, which torch.load can hand back.
        tensors = {k: v.detach().clone().contiguous() for k, v in state.items()}
        del state
        try:  # by name, inside the staging folder only this process can write to (mkdtemp's 0700)
            save_file(tensors, str(weights), metadata={"format": "pt"})
        except SafetensorError as e:  # not an OSError, though it mostly reports one
            raise ConversionError(f"Writing {out_dir / WEIGHTS} failed ({e}).") from None
        # safetensors creates its file 0600; give it what open() would under the umask.
        weights.chmod(0o666 & ~current_umask())
        del tensors
        diff = (reference - _outputs(model_name, weights, x)).abs().max().item()
        if not diff <= TOLERANCE:
            raise ConversionError(
                f"The converted weights give outputs up to {diff:.3g} away from {source} (allowed {TOLERANCE}), "
                f"so nothing was written to {out_dir}."
            )
        check = {"strict_load": True, "input_shape": list(x.shape), "max_abs_output_diff": diff, "tolerance": TOLERANCE}
        config = _config(model_info, source, source_sha256, entry, weights, check, org)
        write_atomic(staged / CONFIG, json.dumps(config, indent=2) + "\n")
        results_name = results.name if results is not None else None
        write_atomic(staged / CARD, render_card(config, rows, results_name, results_dataset))
        _swap_into_place(staged, out_dir, force)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return Conversion(out_dir=out_dir, config=config, measured_rows=len(rows))
