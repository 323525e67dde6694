"""`python -m hub publish`: upload a converted folder to a Hub repo with huggingface_hub's HfApi.

The repo defaults to the one the folder's card points users to (config.json's hf_hub_id, which is where
`zoo.load(name, pretrained=True)` looks, given the card's RMT_HUB_ORG), so what is published is what users load.

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
from typing import BinaryIO

from huggingface_hub import CommitOperationAdd, HfApi, constants
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled

from zoo._hub import CLIENT_ERRORS

from .convert import CARD, CONFIG, WEIGHTS, file_sha256

__all__ = ["PublishError", "PlannedFile", "UploadPlan", "list_files", "plan_upload", "publish"]

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
        return f"{constants.ENDPOINT}/{'datasets/' if self.repo_type == 'dataset' else ''}{self.repo_id}"

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
    try:
        config = json.loads((folder / CONFIG).read_text())
        name, family, carded = config["architecture"], config["family"], config["pretrained_cfg"]["hf_hub_id"]
    except (ValueError, KeyError, TypeError):
        raise PublishError(f"{folder / CONFIG} is not a config.json written by `python -m hub convert`.") from None
    recorded = (config.get("provenance") or {}).get("weights_sha256")
    if recorded != file_sha256(folder / WEIGHTS):
        raise PublishError(
            f"{folder / WEIGHTS} is not the file that was converted (its sha256 differs from config.json's "
            f"{recorded}); convert again rather than publish a mismatched folder."
        )
    repo_id = repo_id or carded
    warning = None
    if repo_id != carded:
        org, repo_name = repo_id.split("/", 1) if "/" in repo_id else ("", repo_id)
        if family == "rmt" and repo_name == name:
            fix = f"convert again with --org {org} so the card matches"
        else:
            fix = f"zoo.load({name!r}, pretrained=True) will not look in {repo_id}"
        warning = f"The card in {folder} points users to {carded}, not {repo_id}; {fix}."
    return UploadPlan(folder=folder, repo_id=repo_id, files=files, private=private, skipped=skipped, warning=warning)


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
