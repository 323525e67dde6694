"""Benchmark results on the Hub, as a dataset repo: the rows, a CSV, the table, the plot and a dataset card.

`python -m hub push-results RESULTS... --repo ORG/NAME` calls `push_results`, so numbers measured on one machine can be
read on any other (`hf_hub_download(ORG/NAME, "results.jsonl", repo_type="dataset")`). The files are staged in a
temporary folder and committed from there by `hub.publish` (regular files only, by name), which also turns Hub
errors into one sentence.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData

from bench.columns import get_field
from common.provenance import REPO_ROOT
from bench.report import plot, render_table, status_summary

from .publish import PublishError, UploadPlan, check_repo_id, list_files, publish

__all__ = ["push_results", "published_rows", "ROWS", "CSV", "TABLE", "PLOT", "CARD"]

ROWS, CSV, TABLE, PLOT, CARD = "results.jsonl", "results.csv", "table.md", "plot.png", "README.md"


# A path in free text: one character of it, and an absolute path that starts a word. A "/" after ":" starts one
# (cache:/home/...), unless it is the "//" of a URL.
_PATH_CHAR = r"[^\s'\"`,;()\[\]{}<>|]"
_ABSOLUTE = re.compile(rf"(?:(?<![\w.~:/-])/|(?<=:)/(?!/)){_PATH_CHAR}*|(?<![\w.-])~/{_PATH_CHAR}*")
HIDDEN_PATH, HIDDEN_HOST = "<path>", "<host>"


def _known_paths(rows: list[dict[str, Any]]) -> list[str]:
    """The absolute paths a run knows to be private, longest first: each row's data folder and checkpoint (whole,
    spaces and all), the working folder, home, the temporary folder, and the Hub's and torch's caches."""
    import torch.hub
    from huggingface_hub import constants

    known = {os.getcwd(), os.path.expanduser("~"), tempfile.gettempdir(), constants.HF_HOME, constants.HF_HUB_CACHE}
    known |= {torch.hub.get_dir(), os.environ.get("XDG_CACHE_HOME", ""), os.environ.get("TORCH_HOME", "")}
    known |= {v for r in rows for f in ("data", "weights") if isinstance(v := r.get(f), str)}
    paths = {os.path.normpath(p) for p in known if p and os.path.isabs(p)} - {"/"}
    return sorted(paths, key=len, reverse=True)


def _redact_text(text: str, hosts: list[str], root: str, private: list[str]) -> str:
    """`text` with paths inside the repository made relative, the `private` paths hidden wherever they appear
    (after "cache:", with a space inside), any other absolute path hidden, and the machine's host names hidden."""
    end = rf"(?:/{_PATH_CHAR}*)?(?!{_PATH_CHAR})"  # the rest of the path below a known one, never a longer name
    text = re.sub(rf"{re.escape(root)}(/{_PATH_CHAR}*)?(?!{_PATH_CHAR})", lambda m: (m.group(1) or "/.")[1:], text)
    for known in private:
        text = re.sub(re.escape(known) + end, HIDDEN_PATH, text)
    text = _ABSOLUTE.sub(HIDDEN_PATH, text)
    for host in hosts:
        text = re.sub(rf"(?<![\w.-]){re.escape(host)}(?![\w-])", HIDDEN_HOST, text)
    return text


def _redact_command(command: str, hosts: list[str], root: str, private: list[str]) -> str:
    """A recorded command line (shlex-quoted), redacted argument by argument: an argument holding a hidden path is
    hidden whole, so a quoted path with spaces leaves no tail."""
    try:
        words = shlex.split(command)
    except ValueError:  # not a command this harness wrote: redacted as text
        return _redact_text(command, hosts, root, private)
    shown = []
    for word in words:
        redacted = _redact_text(word, hosts, root, private)
        flag, sep, _ = word.partition("=")
        if HIDDEN_PATH in redacted and HIDDEN_PATH not in word:  # the placeholder is written bare, never quoted
            shown.append(f"{flag}={HIDDEN_PATH}" if sep and flag.startswith("-") else HIDDEN_PATH)
        else:
            shown.append(shlex.quote(redacted))
    return " ".join(shown)


def _redact(value: Any, hosts: list[str], root: str, private: list[str], key: str = "") -> Any:
    if isinstance(value, str) and key == "command":
        return _redact_command(value, hosts, root, private)
    if isinstance(value, str):
        return _redact_text(value, hosts, root, private)
    if isinstance(value, dict):
        return {k: _redact(v, hosts, root, private, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, hosts, root, private) for v in value]
    return value


def published_rows(rows: list[dict[str, Any]], include_host: bool = False) -> list[dict[str, Any]]:
    """The rows as they are uploaded. Unless `include_host`: no host name (env.hostname dropped, and the names
    hidden as <host> wherever else they appear) and no local path (absolute paths inside this repository become
    relative; the paths the run knows, `_known_paths`, are hidden as <path> wherever they appear, and so is any other
    absolute path: checkpoints, --data folders, --out files in commands and reasons)."""
    if include_host:
        return rows
    hosts = {platform.node()} | {h for r in rows if isinstance(h := get_field(r, "env.hostname"), str)}
    hosts_by_length = sorted((h for h in hosts if len(h) >= 3), key=len, reverse=True)  # "a" would mangle text
    root, private = os.path.normpath(str(REPO_ROOT)), _known_paths(rows)
    out = []
    for row in rows:
        row = dict(row)
        if isinstance(row.get("env"), dict):
            row["env"] = {k: v for k, v in row["env"].items() if k != "hostname"}
        out.append(_redact(row, hosts_by_length, root, private))
    return out


def _distinct(rows: list[dict[str, Any]], *fields: str) -> list[str]:
    """Each value the rows hold in the first of `fields` that is set, in first-seen order."""
    seen: dict[str, None] = {}
    for row in rows:
        value = next((v for f in fields if (v := get_field(row, f)) is not None), None)
        if value is not None:
            seen[str(value)] = None
    return list(seen)


def _recorded(rows: list[dict[str, Any]], *fields: str) -> str:
    return ", ".join(_distinct(rows, *fields)) or "not recorded"


def _card(rows: list[dict[str, Any]], repo_id: str, sources: list[str], table: str, plotted: bool) -> str:
    """README.md of the dataset repo: how the numbers were measured, read from the rows themselves."""
    data = DatasetCardData(
        pretty_name=f"rmt-zoo benchmark results: {repo_id.split('/')[-1]}",
        tags=["benchmark", "image-classification", "rmt-zoo"],
        # The dataset viewer shows the flat CSV; results.jsonl keeps every field of every row.
        configs=[{"config_name": "default", "data_files": CSV}],
    )
    commands = "\n".join(_distinct(rows, "command")) or "(not recorded)"
    timestamps = sorted(_distinct(rows, "timestamp"))
    when = f"{timestamps[0]} to {timestamps[-1]}" if timestamps else "not recorded"
    files = [
        f"`{ROWS}`: the rows as the harness writes them, every field (read them with rmt-zoo's `bench.load_results`)",
        f"`{CSV}`: the same rows as `bench.py report --format csv` writes them",
        f"`{TABLE}`: the table `bench.py report` prints",
    ]
    if plotted:
        files.append(f"`{PLOT}`: accuracy against throughput, as `bench.py report --plot` draws it")
    file_list = "\n".join(f"- {f}" for f in files)
    figure = f"\n![accuracy against throughput]({PLOT})\n" if plotted else ""
    body = f"""# Benchmark results: {repo_id}

Measured with the benchmark harness of **rmt-zoo** (RMT, InternImage, Swin and MaxViT; `python bench.py`), which runs
each row in its own worker process and appends it to a JSON-lines file as soon as it is measured. Rows read from
{", ".join(f"`{Path(s).name}`" for s in sources) or "files not named"}; {status_summary(rows)}.

## How the numbers were measured

- devices: {_recorded(rows, "env.device_name", "device")}
- torch {_recorded(rows, "env.torch")}; timm {_recorded(rows, "env.timm")}
- rmt-zoo git commit: {_recorded(rows, "env.git_commit")} (`-dirty`: the checkout had uncommitted changes)
- measured: {when}
- commands:

```
{commands}
```

## Files

{file_list}

```python
from huggingface_hub import hf_hub_download
from bench import load_results  # rmt-zoo

rows = load_results(hf_hub_download("{repo_id}", "{ROWS}", repo_type="dataset"))
```

## Table

{table}
{figure}"""
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n{body}"))  # parsed back, so the YAML is known to load


def _stage(rows: list[dict[str, Any]], folder: Path, repo_id: str, sources: list[str]) -> None:
    (folder / ROWS).write_text("".join(json.dumps(row, default=str) + "\n" for row in rows))
    (folder / CSV).write_text(render_table(rows, "csv"))
    table = render_table(rows, "github")
    (folder / TABLE).write_text(table + "\n")
    plotted = plot(rows, folder / PLOT)
    (folder / CARD).write_text(_card(rows, repo_id, sources, table, plotted))


def push_results(
    rows: list[dict[str, Any]],
    repo_id: str,
    *,
    sources: list[str],
    dry_run: bool = False,
    private: bool = True,
    token: str | None = None,
    include_host: bool = False,
) -> str:
    """Upload `rows` to the dataset repo `repo_id` (created private if missing, unless `private` is False) and
    return what to print: the repo, the row count, the files and their sizes, then (dry run) whether host names and
    local paths are redacted and "Dry run: nothing was uploaded.", or the commit URL. A dry run never prints the rows
    themselves: `bench.py report` shows them.

    `rows` are as `bench.py report` shows them (`load_results` of each file in `sources`, then `latest_rows`);
    `sources` are those files, named (by file name only) on the card. Every file staged (rows, CSV, table, plot,
    card) is made from `published_rows`: host names and local paths redacted unless `include_host`. Raises
    PublishError, one sentence, for no rows, a malformed repo id, or an upload the Hub refused (offline, 401, ...).
    """
    check_repo_id(repo_id)
    if not rows:
        raise PublishError(f"There are no benchmark rows to upload to {repo_id}.")
    rows = published_rows(rows, include_host)
    names = ", ".join(Path(s).name for s in sources) or "benchmark results"
    with tempfile.TemporaryDirectory(prefix="rmt-zoo-results-") as staging:
        folder = Path(staging)
        _stage(rows, folder, repo_id, sources)
        files, _ = list_files(folder)
        what = f"{len(rows)} rows of {names}"
        plan = UploadPlan(folder=folder, repo_id=repo_id, files=files, private=private, repo_type="dataset", what=what)
        if dry_run:
            hosts = "kept (--include-host)" if include_host else "redacted (--include-host keeps them)"
            return (
                f"{plan.describe()}\nHost names and local paths in every file: {hosts}.\nDry run: nothing was uploaded."
            )
        url = publish(plan, token=token, commit_message=f"Benchmark results: {what}")
    return f"{plan.describe()}\nUploaded: {url}"
