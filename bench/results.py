"""The JSON-lines results file: one row per measurement, appended whole the moment it exists so a crash loses nothing.

Readers stream the file and skip what they cannot read (a line cut short by a crash, a foreign or damaged line, a
row whose fields have the wrong types, one nested past the parser's depth, one longer than `MAX_LINE`, binary junk or
the NUL bytes a crash leaves) with one summary note on stderr, and never fail on it: a results file is shared by runs,
launchers, editors and other tools. Every reader (report, --resume, the suite, the Hub's push-results and convert
--results, `bench.load_results`) reads through `iter_results`, so one line costs at most `MAX_LINE` bytes of memory.
Jobs of a launcher append to their own shards beside the file (`results.shard-<job>.jsonl`), which every reader
takes together with it.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import stat
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from .columns import get_field, printable
from .schema import REQUIRED, checked_fields
from common.paths import InputPathError, append_bytes, check_input_path
from .spec import SCHEMA_VERSION, row_key

__all__ = [
    "load_results",
    "iter_results",
    "append_row",
    "latest_rows",
    "utc_now",
    "result_files",
    "check_results_paths",
    "shard_path",
    "SCHEMA_VERSION",
    "read_lines",
    "MAX_LINE",
]

# A row is a few kilobytes (its env included); a line past this is no row and is skipped unread.
MAX_LINE = 1 << 20


@functools.cache
def _checks(trackers: tuple[type, ...]) -> tuple[tuple[str, str], ...]:
    """(field, kind) of every schema field whose type a reader relies on."""
    return tuple((c.field, c.kind) for c in checked_fields(trackers))


def _trackers() -> tuple[type, ...]:
    from . import measure  # torch; readers that validate rows format measurements anyway

    return tuple(measure.TRACKERS)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_KIND_CHECKS = {
    "number": _is_number,
    "whole": lambda v: _is_number(v) and isinstance(v, int),
    "text": lambda v: isinstance(v, str),
    "mapping": lambda v: isinstance(v, dict),
}


def as_row(line: str) -> dict[str, Any] | None:
    """The row a line holds, or None when it is not a readable row (every field a reader formats is checked)."""
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        return None
    if not isinstance(row, dict) or any(not isinstance(row.get(k), t) for k, t in REQUIRED.items()):
        return None
    size = row["input_size"]
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in size):
        return None
    if isinstance(row["batch_size"], bool):
        return None
    for name, kind in _checks(_trackers()):
        value = get_field(row, name)
        if value is not None and not _KIND_CHECKS[kind](value):
            return None
    try:  # every field --resume and latest_rows key on must hash (a list where a flag belongs does not)
        hash(row_key(row))
    except (TypeError, ValueError, AttributeError):
        return None
    return row


def read_lines(file: str | Path, limit: int = MAX_LINE) -> Iterator[tuple[int, str | None]]:
    """(line number, text) of each line of a text file, as UTF-8 with undecodable bytes replaced and a leading BOM
    dropped; a line longer than `limit` bytes comes as (n, None) without ever being held whole, so no line can take
    more memory than `limit`. Opens only regular files (never blocks on a FIFO); raises OSError."""
    fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            code = errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL
            raise OSError(code, os.strerror(code) if stat.S_ISDIR(mode) else "not a regular file", str(file))
        os.set_blocking(fd, True)
        n = 0
        while chunk := f.readline(limit + 1):
            n += 1
            if len(chunk) > limit and not chunk.endswith(b"\n"):
                while (rest := f.readline(1 << 16)) and not rest.endswith(b"\n"):
                    pass
                yield n, None
                continue
            text = chunk.decode("utf-8", errors="replace")
            yield n, text.removeprefix("\ufeff") if n == 1 else text


def shard_path(path: str | Path, job: str) -> Path:
    """Where launcher job `job` appends its rows: beside `path`, read with it."""
    path = Path(path)
    return path.with_name(f"{path.stem}.shard-{job}{path.suffix}")


def result_files(path: str | Path, quiet: bool = False) -> list[Path]:
    """`path` (when it exists) and its launcher shards, in name order.

    Shards are matched by their exact name (`STEM.shard-JOB.SUFFIX`, never as a glob pattern, so `res[1].jsonl` and
    `res?.jsonl` mean only themselves), and only regular files are taken: anything else of that name (a FIFO,
    which would block the reader forever, a folder) is skipped with a note on stderr.
    """
    path = Path(path)
    prefix, suffix = f"{path.stem}.shard-", path.suffix
    try:
        with os.scandir(path.parent if str(path.parent) else ".") as entries:
            named = sorted(
                (e for e in entries if e.name.startswith(prefix) and e.name.endswith(suffix)), key=lambda e: e.name
            )
    except OSError:
        named = []
    shards: list[Path] = []
    odd = [path] if path.exists() and not path.is_file() and not path.is_dir() else []
    for entry in named:
        if len(entry.name) <= len(prefix) + len(suffix):
            continue
        (shards if entry.is_file() else odd).append(path.parent / entry.name)
    if odd and not quiet:
        print(
            f"note: skipped {len(odd)} entr{'y' if len(odd) == 1 else 'ies'} named as {printable(str(path))} or its "
            f"shards that "
            f"{'is' if len(odd) == 1 else 'are'} not a regular file ({', '.join(printable(str(p)) for p in odd[:3])}).",
            file=sys.stderr,
        )
    return ([path] if path.is_file() or path.is_dir() else []) + shards


def check_results_paths(paths: Iterable[str | Path], what: str = "Results file") -> None:
    """Refuse (InputPathError: one sentence, exit 2) a results path given on a command line that names nothing to
    read (a folder; neither it nor a shard exists) or whose file or shard cannot be opened; every command that reads
    results files (`bench.py report`, `python -m hub push-results`, `hub convert --results`) checks them here first."""
    for path in paths:
        if os.path.isdir(path):
            raise InputPathError(f"{what} {str(path)!r} is a folder; give the results .jsonl file in it.")
        files = result_files(path)
        if not files:  # a launcher's run may have left only shards beside the name
            if os.path.lexists(path):  # a link loop, a dangling link, a FIFO: named for what it is
                check_input_path(path, what)
            raise InputPathError(f"{what} {str(path)!r} does not exist (nor any shard of it).")
        for file in files:
            check_input_path(file, what)


def iter_results(path: str | Path, quiet: bool = False, shards: bool = True) -> Iterator[dict[str, Any]]:
    """Every row of a results file (and its shards), oldest first, read one line at a time; lines that are not
    rows are skipped with one note on stderr per file. Raises OSError when the file cannot be opened."""
    files = result_files(path, quiet) if shards else [Path(path)]
    if not files:
        if os.path.lexists(path):  # a FIFO or device: never opened (a FIFO would block)
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        open(path, encoding="utf-8").close()  # the FileNotFoundError the caller expects
    for file in files:
        skipped: list[int] = []
        for n, line in read_lines(file):
            if line is not None and not line.strip():
                continue
            row = None if line is None else as_row(line)
            if row is None:
                skipped.append(n)
            else:
                yield row
        if skipped and not quiet:
            first = ", ".join(map(str, skipped[:5])) + (", ..." if len(skipped) > 5 else "")
            print(
                f"note: skipped {len(skipped)} line(s) of {printable(str(file))} that are not benchmark rows "
                f"(line {first}).",
                file=sys.stderr,
            )


def load_results(path: str | Path, quiet: bool = False) -> list[dict[str, Any]]:
    """All rows of a results file and its shards, oldest first (see `iter_results`)."""
    return list(iter_results(path, quiet))


def append_row(path: str | Path, row: dict[str, Any]) -> None:
    """Append one row whole, or nothing, and force it to disk before the next measurement starts.

    One O_APPEND write under the appenders' lock (`paths.append_bytes`): a file left without a final newline (a
    crash mid-write, an editor) gets one first, so the torn line stays torn and the new row stays whole; a write that
    fails part-way (disk full, `ulimit -f`) cuts off only its own bytes, never a row another process appended
    meanwhile. Raises WriteError (one sentence) when the row could not be written.
    """
    append_bytes(path, (json.dumps({"schema_version": SCHEMA_VERSION, **row}, default=str) + "\n").encode())


def latest_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest row of each measurement (a re-run replaces the older number), in the order they were measured;
    rows of the same measurement from different machines are different rows."""
    latest: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        key = row_key(row)
        latest.pop(key, None)
        latest[key] = row
    return list(latest.values())
