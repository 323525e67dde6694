"""`python -m hub publish`: upload a converted folder to a Hub repo with huggingface_hub's HfApi.

The repo defaults to the one the folder's card points users to (config.json's hf_hub_id, which is where
`zoo.load(name, pretrained=True)` looks, given the card's RMT_HUB_ORG), so what is published is what users load.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled

from zoo._hub import CLIENT_ERRORS

from .convert import CARD, CONFIG, WEIGHTS, file_sha256

__all__ = ["PublishError", "UploadPlan", "plan_upload", "publish"]


class PublishError(RuntimeError):
    """A folder that is not ready to publish, or an upload the Hub refused."""


@dataclass
class UploadPlan:
    """What an upload would send, and where; `describe()` is the dry run's report."""

    folder: Path
    repo_id: str
    files: list[tuple[str, int]]  # (path inside the folder, bytes)
    private: bool
    warning: str | None = None

    def describe(self) -> str:
        total = sum(size for _, size in self.files)
        lines = [
            f"Would upload {len(self.files)} files ({_size(total)}) from {self.folder} to "
            f"{constants.ENDPOINT}/{self.repo_id} ({'private' if self.private else 'public'}, "
            f"created if missing):"
        ]
        lines += [f"  {_size(size):>10}  {path}" for path, size in self.files]
        return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def plan_upload(folder: str | Path, repo_id: str | None = None, private: bool = False) -> UploadPlan:
    """Check that `folder` is a converted folder and list what would be uploaded where; no network."""
    folder = Path(folder)
    missing = [f for f in (WEIGHTS, CONFIG, CARD) if not (folder / f).is_file()]
    if missing:
        raise PublishError(
            f"{folder} is not a converted folder (missing {', '.join(missing)}); "
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
    files = sorted(
        (p.relative_to(folder).as_posix(), p.stat().st_size)
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    return UploadPlan(folder=folder, repo_id=repo_id, files=files, private=private, warning=warning)


def publish(plan: UploadPlan, token: str | None = None, commit_message: str | None = None) -> str:
    """Create the repo if needed and upload the planned folder; returns the commit URL."""
    api = HfApi(token=token)
    what = f"Publishing {plan.folder} to {plan.repo_id} failed"
    try:
        api.create_repo(plan.repo_id, repo_type="model", private=plan.private, exist_ok=True)
        info = api.upload_folder(
            repo_id=plan.repo_id,
            folder_path=plan.folder,
            repo_type="model",
            allow_patterns=[path for path, _ in plan.files],
            commit_message=commit_message or f"Upload {plan.folder.name} converted by python -m hub convert",
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
