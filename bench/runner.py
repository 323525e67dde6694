"""Runs a grid of rows: one subprocess per model/backend/precision/layout group, rows appended as they finish.

A worker that crashes, hangs past its timeout or is killed for memory takes only its own unfinished rows with it:
the runner writes those as `error` rows naming the cause and goes on with the next group.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any, Iterable

from tqdm import tqdm

from .env import REPO_ROOT, collect_env
from .results import append_row, latest_rows, load_results, utc_now
from .spec import RowSpec, Settings, row_key

__all__ = ["run", "group_rows", "RESUMABLE", "Interrupted"]

# Rows with these statuses are measurements; --resume skips them. `error` and `unavailable` rows are retried,
# since a fixed bug or a newly installed backend should change them.
RESUMABLE = ("ok", "oom")


def group_rows(specs: Iterable[RowSpec]) -> list[list[RowSpec]]:
    """Rows sharing a worker, in the order their groups first appear."""
    groups: dict[tuple, list[RowSpec]] = {}
    for spec in specs:
        groups.setdefault(spec.group(), []).append(spec)
    return list(groups.values())


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Interrupted(Exception):
    """The run was stopped by a signal (SIGTERM from SLURM, `timeout` or CI; SIGINT is KeyboardInterrupt)."""


def _raise_interrupted(signum: int, _frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True) if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """In the forked child before exec: the kernel kills the worker when the runner dies, even by SIGKILL."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the runner died between fork and prctl
        os._exit(1)


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit|Warning)\b:?")


def crash_reason(log: str) -> str:
    """The error that ended a worker: the last traceback's exception line, not whatever was printed after it."""
    lines = [ln.rstrip() for ln in log.splitlines() if ln.strip()]
    starts = [i for i, ln in enumerate(lines) if ln.startswith("Traceback (most recent call last)")]
    if starts:
        tail = [ln for ln in lines[starts[-1] + 1:] if not ln.startswith((" ", "\t"))]
        found = next((ln for ln in tail if _EXCEPTION_LINE.match(ln)), None)
        if found:
            return found.strip()[:300]
    found = next((ln for ln in reversed(lines) if _EXCEPTION_LINE.match(ln.strip()) and "Warning" not in ln.split(":")[0]), None)
    return (found or "").strip()[:300]


def _read(log: IO[str]) -> str:
    log.flush()
    log.seek(0)
    return log.read()


def _rows_of(path: Path, run_id: str) -> list[dict[str, Any]]:
    return [r for r in load_results(path, quiet=True) if r.get("run_id") == run_id] if path.exists() else []


def _known_flops(path: Path, run_id: str, spec: RowSpec) -> dict[str, dict]:
    """GMACs already counted in this run for the same model and head, so later groups skip the trace."""
    known = {}
    for r in _rows_of(path, run_id):
        if r["model"] == spec.model and r.get("features_only") == spec.features_only and r.get("gmacs") is not None:
            known[json.dumps(list(r["input_size"]))] = {"gmacs": r["gmacs"], "gmacs_torch": r.get("gmacs_torch")}
    return known


class _Run:
    def __init__(self, settings: Settings, results: Path, command: str, verbose: bool, deadline: float | None):
        self.settings = settings
        self.deadline = deadline
        self.results = results
        self.command = command
        self.verbose = verbose
        self.run_id = uuid.uuid4().hex[:12]
        self.written = 0  # rows of this run on disk, for the progress bar

    def group(self, specs: list[RowSpec], bar: tqdm) -> None:
        job = {
            "rows": [s.fields() for s in specs],
            "settings": asdict(self.settings),
            "results": str(self.results),
            "run_id": self.run_id,
            "command": self.command,
            "known_flops": _known_flops(self.results, self.run_id, specs[0]),
        }
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
        # The job goes in through stdin and the log into an unnamed temporary file: nothing is left on disk even
        # when the runner is killed with SIGKILL.
        with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as log:
            out = None if self.verbose else log
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.worker", "-"], stdin=subprocess.PIPE, stdout=out, stderr=out, env=env,
                start_new_session=True, preexec_fn=lambda parent=os.getpid(): _die_with_parent(parent), text=True,
            )
            cause = self._wait(proc, job, bar) or _describe_exit(proc.returncode)
            tail = "" if self.verbose else _read(log)
        why = crash_reason(tail)
        self._fill_missing(specs, f"The worker process stopped ({cause}) before this row finished" + (f": {why}" if why else "."))
        self._advance(bar)

    def _wait(self, proc: subprocess.Popen, job: dict[str, Any], bar: tqdm) -> str | None:
        """Wait for the worker, moving the bar as rows land; a worker past its timeout or the run's deadline is killed,
        and so is the worker of a run stopped by Ctrl-C or SIGTERM."""
        deadline = time.monotonic() + self.settings.timeout_s
        if self.deadline is not None:
            deadline = min(deadline, self.deadline)
        try:
            try:
                proc.stdin.write(json.dumps(job))
                proc.stdin.close()
            except BrokenPipeError:  # the worker died at start; its exit code and log say why
                pass
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    over_budget = self.deadline is not None and time.monotonic() >= self.deadline
                    return "stopped at the run's time budget" if over_budget else f"timed out after {self.settings.timeout_s:.0f} s"
                time.sleep(0.5)
                self._advance(bar)
        except (KeyboardInterrupt, Interrupted):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        self._advance(bar)
        return None

    def _advance(self, bar: tqdm) -> None:
        now = len(_rows_of(self.results, self.run_id))
        bar.update(now - self.written)
        self.written = now

    def _fill_missing(self, specs: list[RowSpec], reason: str) -> None:
        """Write an error row for each of `specs` the worker did not write."""
        written = {row_key(r) for r in _rows_of(self.results, self.run_id)}
        for spec in specs:
            if spec.key() not in written:
                row = {**spec.fields(), "status": "error", "reason": reason}
                row.update(run_id=self.run_id, command=self.command, env=collect_env(spec.device), timestamp=utc_now())
                append_row(self.results, row)


def run(
    specs: list[RowSpec],
    settings: Settings,
    results: str | Path,
    command: str,
    resume: bool = False,
    progress: bool = True,
    verbose: bool = False,
    budget_s: float | None = None,
) -> list[dict[str, Any]]:
    """Measure `specs` into `results`; returns this grid's rows (those skipped by --resume included).

    With `budget_s`, no group starts after the budget is spent and a running one is stopped at its end; the rows
    left out have no row at all, so `--resume` picks them up later.
    """
    results = Path(results)
    previous = load_results(results) if results.exists() else []
    done = {row_key(r): r for r in latest_rows(previous) if r.get("status") in RESUMABLE} if resume else {}
    todo = [s for s in specs if s.key() not in done]
    deadline = None if budget_s is None else time.monotonic() + budget_s
    runner = _Run(settings, results, command, verbose, deadline)
    # a bar redrawn into a log file is dozens of lines; off unless stderr is a terminal
    show = progress and sys.stderr.isatty()
    main_thread = threading.current_thread() is threading.main_thread()  # only there can a handler be set
    previous_handler = signal.signal(signal.SIGTERM, _raise_interrupted) if main_thread else None
    try:
        with tqdm(total=len(todo), unit="row", disable=not show, file=sys.stderr) as bar:
            for group in group_rows(todo):
                if deadline is not None and time.monotonic() >= deadline:
                    break
                head = group[0]
                bar.set_description(f"{head.model} {head.backend} {head.precision}")
                runner.group(group, bar)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous_handler)
    fresh = {row_key(r): r for r in _rows_of(results, runner.run_id)}
    return [fresh.get(s.key()) or done[s.key()] for s in specs if s.key() in fresh or s.key() in done]
