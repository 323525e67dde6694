"""The JSON-lines results file: one row per measurement, appended the moment it exists so a crash loses nothing."""
from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from .spec import row_key

__all__ = ["load_results", "append_row", "latest_rows", "utc_now"]


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def load_results(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a results file, oldest first.

    A line cut short by a crash mid-write is skipped with a note on stderr rather than failing the whole file.
    Raises FileNotFoundError when the file does not exist.
    """
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                print(f"note: skipped unreadable line {n} of {path}", file=sys.stderr)
    return rows


def append_row(path: str | Path, row: dict[str, Any]) -> None:
    """Append one row and force it to disk before the next measurement starts."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, default=str) + "\n")
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
