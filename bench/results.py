"""The JSON-lines results file: one row per measurement, appended the moment it exists so a crash loses nothing.

Readers skip what they cannot read (a line cut short by a crash, a foreign or older-schema line, binary junk) with
one summary note on stderr, and never fail on it: a results file is shared by runs, editors and other tools.
"""
from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from .spec import SCHEMA_VERSION, row_key

__all__ = ["load_results", "append_row", "latest_rows", "utc_now", "SCHEMA_VERSION"]

# What a line must hold, with these types, to be read as a row; anything else is somebody else's line.
_REQUIRED = {"model": str, "backend": str, "precision": str, "batch_size": int, "input_size": list, "status": str}


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _as_row(line: str) -> dict[str, Any] | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if not isinstance(row, dict) or any(not isinstance(row.get(k), t) for k, t in _REQUIRED.items()):
        return None
    size = row["input_size"]
    if len(size) != 2 or not all(isinstance(v, int) for v in size) or isinstance(row["batch_size"], bool):
        return None
    return row


def load_results(path: str | Path, quiet: bool = False) -> list[dict[str, Any]]:
    """All rows of a results file, oldest first; lines that are not rows are skipped with one note on stderr.

    Raises FileNotFoundError (an OSError) when the file cannot be opened.
    """
    rows, skipped = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = _as_row(line)
            if row is None:
                skipped.append(n)
            else:
                rows.append(row)
    if skipped and not quiet:
        first = ", ".join(map(str, skipped[:5])) + (", ..." if len(skipped) > 5 else "")
        print(f"note: skipped {len(skipped)} line(s) of {path} that are not benchmark rows (line {first}).", file=sys.stderr)
    return rows


def _ends_cleanly(path: Path) -> bool:
    """True when the file is empty or ends in a newline, so an appended row starts on its own line."""
    with open(path, "rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def append_row(path: str | Path, row: dict[str, Any]) -> None:
    """Append one row and force it to disk before the next measurement starts.

    A file left without a final newline (a crash mid-write, an editor) gets one first, so the torn line stays torn
    and the new row stays whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lead = "" if not path.exists() or _ends_cleanly(path) else "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(lead + json.dumps({"schema_version": SCHEMA_VERSION, **row}, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def latest_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest row of each measurement (a re-run replaces the older number), in the order they were measured."""
    latest: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        key = row_key(row)
        latest.pop(key, None)
        latest[key] = row
    return list(latest.values())
