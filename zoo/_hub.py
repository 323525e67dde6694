"""Pretrained weights from the Hugging Face Hub, fetched by huggingface_hub itself (next to the models, as
timm keeps its `_hub.py`; the `hub` package builds on this, never the other way round).

Going through `hf_hub_download` means its cache (HF_HOME / HF_HUB_CACHE), offline mode (HF_HUB_OFFLINE=1),
tokens (HF_TOKEN or `hf auth login`), endpoint (HF_ENDPOINT) and progress bars apply unchanged. Two knobs
of our own, read at call time:

- `ModelInfo.hub_org_env` (RMT: RMT_HUB_ORG): the organisation holding a family's repos (`<org>/rmt_s`, ...),
  since no RMT weights are on the Hub yet and whoever converts them publishes under their own name;
- ZOO_HUB_REVISION: a branch, tag or commit to take weights from (default: each repo's main branch).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from huggingface_hub import HfApi, constants, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ._registry import ModelInfo

__all__ = [
    "WeightsUnavailableError",
    "fetch_weights",
    "hub_repo_id",
    "published_where",
    "REVISION_ENV",
    "FALLBACK_FILENAME",
    "METADATA_TIMEOUT_S",
]

REVISION_ENV = "ZOO_HUB_REVISION"
# Seconds the one metadata call may take before a download: an unpublished repo or a dead network is then one
# sentence at once, not huggingface_hub's retries.
METADATA_TIMEOUT_S = 2.0
# Pickled weights are only a fallback, for repos without safetensors (timm's name for them).
FALLBACK_FILENAME = "pytorch_model.bin"
# Errors of the HTTP client under huggingface_hub (httpx2, httpx or requests, by version) share HfHubHTTPError's bases.
CLIENT_ERRORS: tuple[type[BaseException], ...] = (OSError, *HfHubHTTPError.__bases__)

_logger = logging.getLogger("zoo")


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights that could not be found or fetched; the message says where we looked and what to do."""


def hub_repo_id(model_info: ModelInfo, org: str | None = None) -> str:
    """The Hub repo of `model_info`'s weights: in organisation `org`, else $`hub_org_env` where the registry names
    one, else the registry's own."""
    if not model_info.hf_hub_id:
        raise WeightsUnavailableError(
            f"{model_info.name} has no weights on the Hugging Face Hub; {_remedy(model_info)}."
        )
    org = org or (os.environ.get(model_info.hub_org_env) if model_info.hub_org_env else None)
    if not model_info.hub_org_env or not org:
        return model_info.hf_hub_id
    return f"{org}/{model_info.hf_hub_id.split('/', 1)[-1]}"


def published_where(model_info: ModelInfo) -> str:
    """Where `model_info`'s weights can be had today, as `python -m zoo list` shows it: the Hub repo where one is
    published, else how to get them."""
    if model_info.hub_org_env and not os.environ.get(model_info.hub_org_env):
        return f"official release: pretrained=PATH (.pth or a converted folder), or set {model_info.hub_org_env}"
    return hub_repo_id(model_info) if model_info.hf_hub_id else "none: pretrained=PATH"


def _remedy(model_info: ModelInfo, hub: bool = True) -> str:
    """What to do instead; without `hub` (the Hub out of reach or switched off), only what works without it."""
    name = model_info.name
    if model_info.hub_org_env:
        by_name = (
            f" (publish OUT_DIR with `python -m hub publish OUT_DIR` and set {model_info.hub_org_env}=ORG to load it "
            f"by name)"
        )
        return (
            f'two ways work{"" if hub else " without the Hub"}: pass pretrained="/path/to/RELEASE.pth" (the official '
            f"checkpoint file), or convert it with `python -m hub convert --model {name} RELEASE.pth OUT_DIR` and pass "
            f'pretrained="OUT_DIR"{by_name if hub else ""}'
        )
    convert = f"`python -m hub convert --model {name} SRC.pth OUT_DIR`"
    return (
        f'pass pretrained="/path/to/checkpoint" (.safetensors, or a .pth that {convert} '
        f"checks and turns into OUT_DIR/model.safetensors)"
    )


def _where(repo: str, files: list[str], revision: str | None) -> str:
    return f"{' or '.join(files)} in {repo} at revision {revision or constants.DEFAULT_REVISION}"


def _unreachable(error: BaseException, where: str, cache: str, timeout: float | None = None) -> str:
    """The Hub out of reach, said as this machine's situation (no network, a proxy or firewall in the way), not as a
    fault of the weights or of the zoo; `timeout`: the wait the failed call was given, where the caller set it."""
    name = type(error).__name__
    waited = f" in {timeout:.0f} s" if timeout is not None and "Timeout" in name else ""
    return (
        f"the Hugging Face Hub ({constants.ENDPOINT}) could not be reached from this machine ({name}{waited}), and "
        f"{where} is not in the local cache ({cache})"
    )


def _explain(
    model_info: ModelInfo, repo: str, files: list[str], revision: str | None, cache: str, error: BaseException
) -> str:
    """One sentence: what failed, where we looked, what to do."""
    where = _where(repo, files, revision)
    if isinstance(error, LocalEntryNotFoundError):  # offline by choice, or out of reach
        what = (
            f"{where} is not in the local Hub cache ({cache}) and HF_HUB_OFFLINE is set"
            if constants.HF_HUB_OFFLINE
            else _unreachable(error.__cause__ or error, where, cache)
        )
        return f"No pretrained weights for {model_info.name}: {what}; {_remedy(model_info, hub=False)}."
    if isinstance(error, RepositoryNotFoundError):
        what = (
            f"the Hub has no repo {repo}, or it is private or gated (looked for {where}; "
            f"for a private repo set HF_TOKEN or run `hf auth login`)"
        )
    elif isinstance(error, RevisionNotFoundError):
        what = f"the Hub repo {repo} has no revision {revision or constants.DEFAULT_REVISION} (looked for {where})"
    elif isinstance(error, EntryNotFoundError):
        what = f"the Hub has no {where}"
    elif isinstance(error, HFValidationError):
        what = f"{repo!r} is not a valid Hub repo id (looked for {where})"
    elif isinstance(error, HfHubHTTPError) and error.response is not None:
        what = f"the Hub answered HTTP {error.response.status_code} for {where}"
    else:
        what = f"fetching {where} failed ({type(error).__name__})"
    return f"No pretrained weights for {model_info.name}: {what}; {_remedy(model_info)}."


def fetch_weights(
    model_info: ModelInfo,
    revision: str | None = None,
    org: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
    repo_id: str | None = None,
    filename: str | None = None,
) -> Path:
    """Local path of `model_info`'s weights, downloaded into (or found in) the Hub cache.

    `repo_id` (e.g. from `hf-hub:ORG/NAME`, optionally `@REVISION`) overrides the registry's repo and `org`.
    The safetensors file is tried first; a repo without it falls back to `pytorch_model.bin`, which the zoo
    reads with `torch.load(weights_only=True)`.
    """
    if repo_id is not None:
        repo, _, pinned = repo_id.partition("@")
        revision = revision or pinned or None
    else:
        repo = hub_repo_id(model_info, org)
    revision = revision or os.environ.get(REVISION_ENV) or None
    filename = filename or model_info.hf_hub_filename or "model.safetensors"
    files = [filename] + ([FALLBACK_FILENAME] if filename.endswith(".safetensors") else [])
    cache = str(cache_dir or constants.HF_HUB_CACHE)
    if not constants.HF_HUB_OFFLINE:  # offline, hf_hub_download reads the cache and nothing else
        published = _published_files(model_info, repo, files, revision, token, cache_dir)
        if not published:  # the Hub is out of reach, and the cache has the weights
            cached = (try_to_load_from_cache(repo, f, cache_dir, revision) for f in files)
            return Path(next(c for c in cached if isinstance(c, str)))
        files = published
    first_error: BaseException | None = None
    for name in files:
        try:
            path = hf_hub_download(
                repo, name, revision=revision, token=token, cache_dir=cache_dir, library_name="rmt-zoo"
            )
        except EntryNotFoundError as e:
            first_error = first_error or e
            # Only a missing file (or, offline, a cache miss) is worth a second look; a dead network is not.
            if isinstance(e, LocalEntryNotFoundError) and not constants.HF_HUB_OFFLINE:
                break
            continue
        except (HFValidationError, *CLIENT_ERRORS) as e:
            first_error = e
            break
        _logger.info("%s: weights %s from %s", model_info.name, name, repo)
        return Path(path)
    _logger.debug("fetching %s failed", repo, exc_info=first_error)
    raise WeightsUnavailableError(_explain(model_info, repo, files, revision, cache, first_error)) from None


def _published_files(
    model_info: ModelInfo,
    repo: str,
    files: list[str],
    revision: str | None,
    token: str | bool | None,
    cache_dir: str | Path | None,
) -> list[str]:
    """Of `files`, those the Hub repo holds, from one metadata call with a short timeout; a repo, revision or file
    that is not published is one sentence at once. An unreachable Hub gives no files (the caller falls back on the
    cache, or raises)."""
    try:
        info = HfApi().model_info(repo, revision=revision, token=token, timeout=METADATA_TIMEOUT_S)
    except (RepositoryNotFoundError, RevisionNotFoundError, HFValidationError) as error:
        cache = str(cache_dir or constants.HF_HUB_CACHE)
        raise WeightsUnavailableError(_explain(model_info, repo, files, revision, cache, error)) from None
    except CLIENT_ERRORS as error:
        cache = str(cache_dir or constants.HF_HUB_CACHE)
        if any(isinstance(try_to_load_from_cache(repo, f, cache_dir, revision), str) for f in files):
            return []
        unreachable = _unreachable(error, _where(repo, files, revision), cache, METADATA_TIMEOUT_S)
        raise WeightsUnavailableError(
            f"No pretrained weights for {model_info.name}: {unreachable}; {_remedy(model_info, hub=False)}."
        ) from None
    held = {s.rfilename for s in info.siblings or ()}
    present = [f for f in files if f in held]
    if not present:
        raise WeightsUnavailableError(
            f"No pretrained weights for {model_info.name}: the Hub has no {_where(repo, files, revision)}; "
            f"{_remedy(model_info)}."
        )
    return present
