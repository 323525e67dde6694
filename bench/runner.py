"""Runs a grid of rows: one subprocess per model build (consecutive rows sharing a worker key), rows appended as they
finish.

A worker reports each row on its own progress channel (a pipe), so the runner sleeps in `select` while rows are
timed and never re-reads the results file. A worker that crashes, hangs past its timeout or is killed for memory
takes only its own unfinished rows with it: the runner writes those as `error` rows naming the cause and goes on.
Rows a backend cannot run here are known before any model is built: each backend and reason gets one status row.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from tqdm import tqdm

from common.paths import WriteError
from common.provenance import REPO_ROOT

from .backends import BACKENDS
from .env import collect_env, device_name
from .report import row_line
from .results import append_row, iter_results, latest_rows, result_files, utc_now
from .spec import RowSpec, RunRequest, Settings, row_key

__all__ = [
    "run",
    "measured_as_asked",
    "Outcome",
    "group_rows",
    "RESUMABLE",
    "Interrupted",
    "crash_reason",
    "stopped_exit_code",
    "stopped_by_sigterm",
    "unmeasured_row",
    "python_module",
    "child_env",
    "import_path",
]

# Rows with these statuses are measurements; --resume skips them. `error` and `unavailable` rows are retried,
# since a fixed bug or a newly installed backend should change them.
RESUMABLE = ("ok", "oom")


def measured_as_asked(row: dict[str, Any], settings: Settings) -> bool:
    """Whether --resume may keep `row`: it was timed with at least the iterations and warm-up asked now (a row that
    records neither, from an old file, is kept)."""
    return all(
        not isinstance(row.get(name), int) or row[name] >= getattr(settings, name) for name in ("iters", "warmup")
    )


def group_rows(specs: Iterable[RowSpec]) -> list[list[RowSpec]]:
    """Runs of consecutive rows that share a worker (one model build); the plan's order is kept, so a plan in
    priority order runs in priority order."""
    groups: list[list[RowSpec]] = []
    for spec in specs:
        if groups and groups[-1][0].worker_key() == spec.worker_key():
            groups[-1].append(spec)
        else:
            groups.append([spec])
    return groups


# A `python -m` (or `-c`) child puts its working folder first on sys.path: a `bench/` or `timm/` folder where the user
# stands would run in every worker. Python 3.11's -P (PYTHONSAFEPATH for everything the child starts in turn) leaves
# it out; on 3.10 the child drops it itself before importing the module.
_SAFE_PATH = sys.version_info >= (3, 11)
_DROP_CWD = (
    "import runpy, sys; del sys.path[0], sys.argv[0]; "
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)"
)


def python_module(module: str, *args: str) -> list[str]:
    """The command running `module` (as `python -m`) under this interpreter, importing from the install and
    PYTHONPATH only, never from the working folder."""
    if _SAFE_PATH:
        return [sys.executable, "-P", "-m", module, *args]
    return [sys.executable, "-c", _DROP_CWD, module, *args]


def import_path() -> str:
    """PYTHONPATH for a child that must import what this process imports: this process's sys.path, made absolute
    (its '' is the working folder only where this process has it too, as under `python -m bench`)."""
    return os.pathsep.join(dict.fromkeys(os.path.abspath(p) for p in [str(REPO_ROOT), *sys.path]))


def child_env() -> dict[str, str]:
    """This process's environment for a child started by `python_module`: this process's import path, and the working
    folder off sys.path in every Python the child starts in turn (a compile worker, a job's runner)."""
    return dict(os.environ, PYTHONPATH=import_path(), PYTHONSAFEPATH="1")


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


@contextlib.contextmanager
def stopped_by_sigterm() -> Iterator[None]:
    """SIGTERM raises Interrupted inside the block, as Ctrl-C raises KeyboardInterrupt, so whatever the run started
    is ended on the way out (only the main thread can set a handler; elsewhere this does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stopped_exit_code(exc: BaseException, results: str | Path | None) -> int:
    """Say in one line that a run was stopped and what was kept (where: `results`, None when no file was written);
    the shell's exit code for the signal."""
    name = str(exc) if isinstance(exc, Interrupted) else "SIGINT"
    kept = (
        f"the rows measured so far are kept in {results} (--resume continues)"
        if results
        else "no row was measured, so no results file was written"
    )
    print(f"\nstopped by {name}: the worker was ended and {kept}.", file=sys.stderr)
    return 128 + signal.Signals[name].value


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
        tail = [ln for ln in lines[starts[-1] + 1 :] if not ln.startswith((" ", "\t"))]
        found = next((ln for ln in tail if _EXCEPTION_LINE.match(ln)), None)
        if found:
            return found.strip()[:300]
    found = next(
        (ln for ln in reversed(lines) if _EXCEPTION_LINE.match(ln.strip()) and "Warning" not in ln.split(":")[0]), None
    )
    return (found or "").strip()[:300]


def _read(log: IO[str]) -> str:
    log.flush()
    log.seek(0)
    return log.read()


class _Channel:
    """The read end of a worker's progress pipe: whole JSON lines, each a row the worker has written or a step
    message (`"event": "step"`)."""

    def __init__(self, fd: int):
        self.fd, self.buffer = fd, b""

    def read(self, timeout: float) -> tuple[list[dict[str, Any]], bool]:
        """Rows that arrived within `timeout` seconds, and whether the pipe is closed."""
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return [], False
        chunk = os.read(self.fd, 1 << 20)
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        rows = []
        for line in lines:
            try:
                rows.append(json.loads(line))
            except ValueError:  # a worker killed mid-line; the row is on disk or becomes an error row
                pass
        return rows, not chunk


def unmeasured_row(spec: RowSpec, status: str, reason: str, run_id: str, command: str) -> dict[str, Any]:
    """A row that says why `spec` has no measurement (a backend missing here, a worker or job that died)."""
    env = collect_env(spec.device)
    return {
        **spec.fields(),
        "status": status,
        "reason": reason,
        "run_id": run_id,
        "command": command,
        "env": env,
        "timestamp": utc_now(),
    }


@dataclass
class Outcome:
    """What a run produced: the grid's rows (those skipped by --resume included) and how many rows the time budget
    left unrun (no row at all, so --resume picks them up)."""

    rows: list[dict[str, Any]]
    unfinished: int = 0


class _Run:
    def __init__(
        self,
        settings: Settings,
        results: Path,
        command: str,
        verbose: bool,
        deadline: float | None,
        bar: tqdm,
        run_id: str | None = None,
        steps: tqdm | None = None,
        show_rows: bool = False,
    ):
        self.settings = settings
        self.deadline = deadline
        self.results = results
        self.command = command
        self.verbose = verbose
        self.bar = bar
        self.steps = steps if steps is not None else tqdm(disable=True)  # the current row's steps
        self.show_rows = show_rows
        self.step_phase: tuple[str, int] | None = None  # what the step bar shows
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.rows: dict[tuple, dict[str, Any]] = {}  # this run's rows by key (machine-free)

    def _keep(self, row: dict[str, Any]) -> None:
        self.rows[row_key(row, machine="")] = row
        self.bar.update(1)
        if self.show_rows and not self.bar.disable:  # above the bars on a terminal
            tqdm.write(row_line(row), file=sys.stderr)
        elif self.show_rows:  # a plain line in a log
            print(row_line(row), file=sys.stderr, flush=True)

    def _step(self, event: dict[str, Any]) -> None:
        """A worker's message of where its row is: the step bar shows the row, the phase, its steps and their ETA."""
        if self.steps.disable:
            return
        row = event["row"]
        what = f"{row['model']} {row['backend']} {row['precision']} b{row['batch_size']}: {event['phase']}"
        if self.step_phase != (what, event["total"]):
            self.step_phase = (what, event["total"])
            self.steps.reset(total=event["total"] or None)
            self.steps.set_description(what, refresh=False)
        self.steps.update(event["done"] - self.steps.n)

    def _known_flops(self, spec: RowSpec) -> dict[str, dict]:
        """GMACs already counted in this run for the same model and head, so later workers skip the trace."""
        return {
            json.dumps(list(r["input_size"])): {"gmacs": r["gmacs"], "gmacs_torch": r.get("gmacs_torch")}
            for r in self.rows.values()
            if r["model"] == spec.model and r.get("features_only") == spec.features_only and r.get("gmacs") is not None
        }

    def write_unmeasured(self, spec: RowSpec, status: str, reason: str) -> None:
        """Write and keep the row saying why `spec` has no measurement."""
        row = unmeasured_row(spec, status, reason, self.run_id, self.command)
        append_row(self.results, row)
        self._keep(row)

    def group(self, specs: list[RowSpec]) -> None:
        read_fd, write_fd = os.pipe()
        job = {
            "rows": [s.fields() for s in specs],
            "settings": asdict(self.settings),
            "results": str(self.results),
            "run_id": self.run_id,
            "command": self.command,
            "known_flops": self._known_flops(specs[0]),
            "progress_fd": write_fd,
        }
        # The job goes in through stdin and the log into an unnamed temporary file: nothing is left on disk even
        # when the runner is killed with SIGKILL.
        try:
            with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as log:
                out = None if self.verbose else log
                proc = subprocess.Popen(
                    python_module("bench.worker", "-"),
                    stdin=subprocess.PIPE,
                    stdout=out,
                    stderr=out,
                    env=child_env(),
                    start_new_session=True,
                    preexec_fn=lambda parent=os.getpid(): _die_with_parent(parent),
                    text=True,
                    pass_fds=(write_fd,),
                )
                os.close(write_fd)
                write_fd = -1
                cause = self._wait(proc, job, _Channel(read_fd)) or _describe_exit(proc.returncode)
                tail = "" if self.verbose else _read(log)
        finally:
            os.close(read_fd)
            if write_fd >= 0:
                os.close(write_fd)
        why = crash_reason(tail)
        reason = f"The worker process stopped ({cause}) before this row finished" + (f": {why}" if why else ".")
        for spec in specs:
            if row_key(spec.fields(), machine="") not in self.rows:
                self.write_unmeasured(spec, "error", reason)

    def _wait(self, proc: subprocess.Popen, job: dict[str, Any], channel: _Channel) -> str | None:
        """Wait for the worker, keeping rows as they arrive; a worker past its timeout or the run's deadline is
        killed, and so is the worker of a run stopped by Ctrl-C or SIGTERM."""
        deadline = time.monotonic() + self.settings.timeout_s
        if self.deadline is not None:
            deadline = min(deadline, self.deadline)
        try:
            try:
                proc.stdin.write(json.dumps(job))
                proc.stdin.close()
            except BrokenPipeError:  # the worker died at start; its exit code and log say why
                pass
            closed = False
            while not closed:
                messages, closed = channel.read(min(1.0, deadline - time.monotonic()))
                for message in messages:
                    if "event" in message:
                        self._step(message)
                    else:
                        self._keep(message)
                if proc.poll() is not None and not messages:
                    break  # exited; a grandchild may still hold the pipe open
                if time.monotonic() > deadline:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    over_budget = self.deadline is not None and time.monotonic() >= self.deadline
                    return (
                        "stopped at the run's time budget"
                        if over_budget
                        else f"timed out after {_seconds(self.settings.timeout_s)}"
                    )
            proc.wait()
        except (KeyboardInterrupt, Interrupted):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        return None


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s >= 10 else f"{s:.3g} s"


def _size_refusal(spec: RowSpec) -> str | None:
    """Why the row's model cannot take its input size (zoo's rule for the architecture), or None. A model this
    process does not know (registered by an `--import` only the worker runs, in a launcher's job) is left to the
    worker, which checks again."""
    import zoo

    try:
        zoo.input_size_kwargs(spec.model, spec.input_size, **dict(spec.model_kwargs))
    except zoo.InputSizeError as exc:
        return str(exc)
    except zoo.UnknownModelError:
        return None
    return None


def _refusals(specs: list[RowSpec]) -> dict[RowSpec, tuple[str, str, str]]:
    """Rows that cannot run here: (what refused them, the reason, how the rows sharing it are named) for a backend
    missing (asked once per backend, precision, mode and device) or an input size the model cannot take (once per
    model, size and model kwargs)."""
    cache: dict[tuple, tuple[str, str, str] | None] = {}
    refused = {}
    for spec in specs:
        backend_key = (spec.backend, spec.precision, spec.mode, spec.device)
        size_key = (spec.input_size, *spec.worker_key())  # the kwargs as JSON: a list value (depths=[...]) keys too
        if backend_key not in cache:
            reason = BACKENDS[spec.backend].refusal(spec)
            cache[backend_key] = (spec.backend, reason, "of this backend") if reason else None
        if size_key not in cache:
            reason = _size_refusal(spec)
            cache[size_key] = (spec.model, reason, "of this model and size") if reason else None
        found = cache[backend_key] or cache[size_key]
        if found:
            refused[spec] = found
    return refused


def run(request: RunRequest) -> Outcome:
    """Measure the request's rows into its results file; --resume skips rows measured in `resume_from` (default the
    results file) or its shards on this machine.

    With a budget, no group starts after it is spent and a running one is stopped at its end; the rows left out have
    no row at all, so `--resume` picks them up later.
    """
    specs, settings = list(request.specs), request.settings
    results = Path(request.results)
    machines = {d: device_name(d) for d in {s.device for s in specs}}
    done: dict[tuple, dict[str, Any]] = {}
    source = Path(request.resume_from or results)
    if request.resume and (source.exists() or result_files(source)):
        wanted = {s.key(machines[s.device]) for s in specs}
        done = {
            k: r
            for r in latest_rows(iter_results(source))
            if r.get("status") in RESUMABLE and (k := row_key(r)) in wanted and measured_as_asked(r, settings)
        }
    todo = [s for s in specs if s.key(machines[s.device]) not in done]
    refused = _refusals(todo)
    deadline = None if request.budget_s is None else time.monotonic() + request.budget_s
    # a bar redrawn into a log file is dozens of lines: bars only on a terminal, a plain line per row elsewhere
    show = request.progress and sys.stderr.isatty()
    unfinished = 0
    runner = None
    by_reason: dict[tuple[str, str, str], list[RowSpec]] = {}
    for spec, found in refused.items():
        by_reason.setdefault(found, []).append(spec)
    try:
        with (
            stopped_by_sigterm(),
            tqdm(total=len(todo) - len(refused) + len(by_reason), unit="row", disable=not show, file=sys.stderr) as bar,
            tqdm(unit="step", disable=not show, file=sys.stderr, position=1, leave=False) as steps,
        ):
            runner = _Run(
                settings,
                results,
                request.command,
                request.verbose,
                deadline,
                bar,
                request.run_id,
                steps,
                request.progress or request.verbose,
            )
            for (_, reason, what), same in by_reason.items():  # one status row per reason, not one per row
                more = (
                    f" ({len(same) - 1} more row(s) {what} were not run for the same reason.)" if len(same) > 1 else ""
                )
                runner.write_unmeasured(same[0], "unavailable", reason + more)
            for group in group_rows(s for s in todo if s not in refused):
                if deadline is not None and time.monotonic() >= deadline:
                    unfinished += len(group)
                    continue
                bar.set_description(f"{group[0].model} ({len(group)} rows)")
                if (request.progress or request.verbose) and not show:  # a log's line (a launcher's job: verbose)
                    print(f"running {group[0].model}: {len(group)} row(s)", file=sys.stderr, flush=True)
                runner.group(group)
    except (WriteError, KeyboardInterrupt, Interrupted) as exc:  # a full disk or a stop: what was kept is the result
        exc.rows = _kept(specs, runner.rows if runner else {}, done, machines)
        raise
    return Outcome(_kept(specs, runner.rows, done, machines), unfinished)


def _kept(specs: list[RowSpec], fresh: dict[tuple, dict], done: dict[tuple, dict], machines: dict) -> list[dict]:
    """The grid's rows measured by this run or skipped by --resume, in the grid's order."""
    rows = []
    for spec in specs:
        row = fresh.get(row_key(spec.fields(), machine="")) or done.get(spec.key(machines[spec.device]))
        if row is not None:
            rows.append(row)
    return rows
