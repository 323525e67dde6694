"""`python -m hub publish`: upload a converted folder to a Hub repo with huggingface_hub's HfApi.

The repo defaults to the one the folder's card points users to (config.json's hf_hub_id, which is where
`zoo.load(name, pretrained=True)` looks, given the card's RMT_HUB_ORG), so what is published is what users load;
only for RMT, whose organisation is a setting: a Swin, MaxViT or InternImage folder points to its authors' upstream
repo, which needs an explicit `--repo`.

Only regular files inside the folder are uploaded: a symbolic link could point anywhere (a system file, a home
folder), so none is followed, and each file is committed by name from the plan, opened without following links and
checked to be the very file that was listed, so nothing swapped in after the plan can be sent instead.
"""

from __future__ import annotations

import json
import os
import stat
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled
from huggingface_hub.utils import validate_repo_id
from safetensors import SafetensorError, safe_open

import zoo
from bench.columns import get_field
from zoo import CLIENT_ERRORS, check_fits, timm_checkpoint_filter

from .card import hub_url
from .convert import CARD, CONFIG, WEIGHTS, file_sha256

__all__ = ["PublishError", "PlannedFile", "UploadPlan", "list_files", "plan_upload", "publish", "check_repo_id"]

# What publish reads from config.json: (field, type, required), parents before their fields.
_CONFIG_FIELDS: tuple[tuple[str, type, bool], ...] = (
    ("architecture", str, True),
    ("family", str, True),
    ("pretrained_cfg", dict, True),
    ("pretrained_cfg.hf_hub_id", str, False),
    ("provenance", dict, True),
    ("provenance.weights_sha256", str, True),
)
_JSON_TYPES = {
    dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean",
    type(None): "null",
}  # fmt: skip


class PublishError(RuntimeError):
    """A folder that is not ready to publish, or an upload the Hub refused."""


@dataclass(frozen=True)
class PlannedFile:
    """A regular file inside the folder as it was listed: the upload sends this very file or nothing."""

    path: str  # inside the folder, "/"-separated: also its path in the repo
    size: int
    identity: tuple[int, int]  # (st_dev, st_ino)


@dataclass
class UploadPlan:
    """What an upload would send, and where; `describe()` is the dry run's report."""

    folder: Path
    repo_id: str
    files: list[PlannedFile]
    private: bool
    repo_type: str = "model"
    what: str = ""  # what is uploaded, for messages (default: the folder)
    skipped: list[str] = field(default_factory=list)  # "path (why)"
    warning: str | None = None

    @property
    def url(self) -> str:
        return hub_url(self.repo_id, self.repo_type)

    def describe(self) -> str:
        total = sum(f.size for f in self.files)
        lines = [
            f"Would upload {len(self.files)} files ({_size(total)}) from {self.what or self.folder} to {self.url} "
            f"({'private' if self.private else 'public'} {self.repo_type} repo, created if missing):"
        ]
        lines += [f"  {_size(f.size):>10}  {f.path}" for f in self.files]
        lines += [f"  {'skipped':>10}  {entry}" for entry in self.skipped]
        return "\n".join(lines)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_repo_id(repo_id: str) -> None:
    """Refuse a malformed repo id before anything is staged or listed as a target."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise PublishError(f"{repo_id!r} is not a valid Hub repo id (ORG/NAME: letters, digits, -, _ and .).") from None


def list_files(folder: Path) -> tuple[list[PlannedFile], list[str]]:
    """The regular files inside `folder`, and each entry skipped with why (hidden, a link, not a regular file);
    links are never followed, so nothing outside the folder is listed."""
    files: list[PlannedFile] = []
    skipped: list[str] = []

    def visit(directory: Path, prefix: str) -> None:
        with os.scandir(directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                rel, st = prefix + entry.name, entry.stat(follow_symlinks=False)
                if entry.name.startswith("."):
                    skipped.append(f"{rel} (hidden)")
                elif stat.S_ISLNK(st.st_mode):
                    target = os.readlink(entry.path)
                    skipped.append(f"{rel} (a symbolic link to {target!r}; only regular files are uploaded)")
                elif stat.S_ISDIR(st.st_mode):
                    visit(Path(entry.path), f"{rel}/")
                elif stat.S_ISREG(st.st_mode):
                    files.append(PlannedFile(rel, st.st_size, (st.st_dev, st.st_ino)))
                else:
                    skipped.append(f"{rel} (not a regular file: a device, pipe or socket)")

    visit(folder, "")
    return files, skipped


def _read_config(path: Path) -> dict[str, Any]:
    """config.json with the fields publish relies on checked for type, so a hand edit is named, not a traceback."""
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise PublishError(f"{path} is not a config.json written by `python -m hub convert` (not JSON).") from None
    if not isinstance(config, dict):
        raise PublishError(f"{path} holds {_JSON_TYPES[type(config)]}, not the object `python -m hub convert` writes.")
    for dotted, expected, required in _CONFIG_FIELDS:
        value = get_field(config, dotted)
        if (value is None and required) or (value is not None and type(value) is not expected):
            found = "missing" if value is None else f"{_JSON_TYPES[type(value)]} {json.dumps(value)[:40]}"
            raise PublishError(
                f"{path}: field {dotted} is {found}, not {_JSON_TYPES[expected]}; convert again rather than edit it."
            )
    return config


# safetensors' header dtypes; one not listed (an fp8 kind) stands as a float, which is what check_fits asks.
_HEADER_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
    "C64": torch.complex64,
}  # fmt: skip


def _dtype(name: str) -> torch.dtype:
    return _HEADER_DTYPES.get(name, torch.float32)


def _check_weights_fit(weights: Path, name: str) -> None:
    """config.json's architecture must still describe the weights: the names, shapes and dtypes in the safetensors
    header (no tensor is read) against the model built on the meta device, after the family's mapping of official
    keys."""
    try:
        with torch.device("meta"):
            model = zoo.load(name)
    except zoo.UnknownModelError:
        raise PublishError(
            f"{weights.parent / CONFIG} names the architecture {name!r}, which is no model of this zoo or timm."
        ) from None
    try:
        with safe_open(str(weights), "pt") as f:
            state = {
                k: torch.empty(f.get_slice(k).get_shape(), dtype=_dtype(f.get_slice(k).get_dtype()), device="meta")
                for k in f.keys()
            }
    except SafetensorError as e:
        raise PublishError(f"{weights} is not a readable safetensors file ({e}).") from None
    mapping = timm_checkpoint_filter(model)
    hint = f"config.json names {name} as its architecture; convert again with the model the weights are for."
    check_fits(model, mapping(state, model) if mapping else state, str(weights), hint)


def plan_upload(folder: str | Path, repo_id: str | None = None, private: bool = False) -> UploadPlan:
    """Check that `folder` is a converted folder and list what would be uploaded where; no network."""
    folder = Path(folder)
    files, skipped = list_files(folder)
    listed = {f.path for f in files}
    absent = [f for f in (WEIGHTS, CONFIG, CARD) if f not in listed]
    if absent:
        why = [next((s for s in skipped if s.startswith(f"{f} (")), f"{f} (missing)") for f in absent]
        raise PublishError(
            f"{folder} is not a converted folder with regular files to publish ({'; '.join(why)}); "
            f"make one with `python -m hub convert --model NAME SRC.pth {folder}`."
        )
    config = _read_config(folder / CONFIG)
    name = config["architecture"]
    carded = config["pretrained_cfg"].get("hf_hub_id")
    if repo_id is None and carded is None:
        raise PublishError(f"{folder / CONFIG} names no repo (no pretrained_cfg.hf_hub_id); pass --repo ORG/NAME.")
    if repo_id is None and _upstream(name) == carded:
        raise PublishError(
            f"{folder / CONFIG} points to {carded}, the upstream repo of {name}, which this project does not own; "
            f"pass --repo ORG/NAME to publish to a repo of yours."
        )
    repo_id = repo_id or carded
    check_repo_id(repo_id)
    recorded = config["provenance"]["weights_sha256"]
    if recorded != file_sha256(folder / WEIGHTS):
        raise PublishError(
            f"{folder / WEIGHTS} is not the file that was converted (its sha256 differs from config.json's "
            f"{recorded}); convert again rather than publish a mismatched folder."
        )
    _check_weights_fit(folder / WEIGHTS, name)
    warning = None
    if carded is None:
        warning = f"The card in {folder} names no repo to load from (config.json has no hf_hub_id); convert again."
    elif repo_id != carded:
        org, repo_name = repo_id.split("/", 1) if "/" in repo_id else ("", repo_id)
        if zoo.info(name).hub_org_env and repo_name == name:  # the family's repos live in an organisation of choice
            fix = f"convert again with --org {org} so the card matches"
        else:
            fix = f"zoo.load({name!r}, pretrained=True) will not look in {repo_id}"
        warning = f"The card in {folder} points users to {carded}, not {repo_id}; {fix}."
    return UploadPlan(folder=folder, repo_id=repo_id, files=files, private=private, skipped=skipped, warning=warning)


def _upstream(name: str) -> str | None:
    """The repo of `name`'s authors where the zoo's repo for it is theirs, not one its users publish to: families
    whose organisation is a setting (RMT: RMT_HUB_ORG) have none; the others name timm's or OpenGVLab's repos."""
    try:
        found = zoo.info(name)
    except zoo.UnknownModelError:
        return None  # no zoo model: the weights check that follows names the problem
    return None if found.hub_org_env else found.hf_hub_id


def _open_planned(folder: Path, planned: PlannedFile) -> BinaryIO:
    """Open a planned file without following a link (O_NOFOLLOW) or blocking (a FIFO), and only if it is still the
    regular file that was listed (same inode and size, so a swapped parent folder is caught too)."""
    path = folder / planned.path
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        raise PublishError(f"{path} changed after it was listed ({e.strerror}), so nothing was uploaded.") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != planned.identity or st.st_size != planned.size:
        os.close(fd)
        raise PublishError(f"{path} is no longer the file that was listed, so nothing was uploaded.")
    return os.fdopen(fd, "rb")


def publish(plan: UploadPlan, token: str | None = None, commit_message: str | None = None) -> str:
    """Create the repo if needed and commit exactly the planned files, by name; returns the commit URL."""
    what = f"Uploading {plan.what or plan.folder} to {plan.repo_id} failed"
    with ExitStack() as opened:
        operations = [
            CommitOperationAdd(f.path, opened.enter_context(_open_planned(plan.folder, f))) for f in plan.files
        ]
        api = HfApi(token=token)
        try:
            api.create_repo(plan.repo_id, repo_type=plan.repo_type, private=plan.private, exist_ok=True)
            info = api.create_commit(
                plan.repo_id,
                operations,
                commit_message=commit_message or f"Upload {plan.folder.name} converted by python -m hub convert",
                repo_type=plan.repo_type,
            )
        except OfflineModeIsEnabled:
            raise PublishError(f"{what}: HF_HUB_OFFLINE is set, so the Hub cannot be reached.") from None
        except HFValidationError:
            raise PublishError(f"{what}: {plan.repo_id!r} is not a valid repo id (ORG/NAME).") from None
        except HfHubHTTPError as e:
            status = e.response.status_code if e.response is not None else None
            why = {401: "not logged in (run `hf auth login` or pass --token)", 403: "the token may not write there"}
            raise PublishError(f"{what}: HTTP {status}, {why.get(status, 'the Hub refused the request')}.") from None
        except CLIENT_ERRORS as e:
            raise PublishError(f"{what}: the Hub could not be reached ({type(e).__name__}).") from None
    return str(info.commit_url)
