"""Launchers: where the groups of a grid run. `none` runs them here, one after another (the default); `local` and
`slurm` send them as submitit jobs (the `cluster` extra), on this machine or a Slurm cluster.

Every launcher takes the runner and one `RunRequest` (`launch(worker, request)`, as optimum-benchmark's launchers
do), so a run option is a field of the request and reaches every launcher unchanged. A job runs the same runner as
`none` does, on the request narrowed to its group (there is no scheduler of our own): it appends to its own
results shard beside `--out` (`results.shard-<job>.jsonl`), which `report` and `--resume` read as one file with it.
Locally at most one job runs per visible GPU at a time, each seeing only its GPU (`--jobs N` on a CPU machine); on
Slurm each group is one job of an array. A job that dies becomes error rows for what it had not measured, and
nothing measured is lost. A launcher is one class here, listed in LAUNCHERS, with its flags declared on its Options.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shlex
import shutil
import signal
import sys
import time
import unicodedata
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar

from common.paths import WriteError, make_own_folder

from .args import positive_int
from .options import NoOptions, flag_of, option
from .results import append_row, iter_results, shard_path
from .runner import Interrupted, Outcome, crash_reason, group_rows, import_path, stopped_by_sigterm, unmeasured_row
from .spec import RowSpec, RunRequest, Settings, row_key

__all__ = ["LAUNCHERS", "Launcher", "LauncherUnavailable", "InProcess", "Local", "Slurm", "Worker"]


class LauncherUnavailable(Exception):
    """The launcher cannot work here (submitit missing, no GPU for a GPU run, a submission the cluster refused); the
    message is one sentence."""


Worker = Callable[[RunRequest], Outcome]


def control_character(text: str) -> str | None:
    """The first character of `text` that could end or hide a line of a generated job script (a newline, carriage
    return, any other control or format character, a line or paragraph separator), as Python writes it."""
    for char in text:
        if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            return repr(char)
    return None


def script_text(text: str) -> str:
    """An option value that is written into a job script (`#SBATCH --partition=...`): no control characters, which
    would end the line and run the rest on the compute node. Quoting is submitit's (shlex)."""
    char = control_character(text)
    if char:
        raise argparse.ArgumentTypeError(f"{text!r} holds the control character {char}; a job script cannot carry it")
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a name, got an empty value")
    return text


def _check_script_values(values: dict[str, Any]) -> None:
    """Refuse, before anything is submitted, any value bound for a job script that holds a control character (an
    --out path with a newline names the job's log files in `#SBATCH --output=...`)."""
    for what, value in values.items():
        char = value is not None and control_character(str(value))
        if char:
            raise LauncherUnavailable(
                f"{what} {str(value)!r} holds the control character {char}, which a job script cannot carry."
            )


def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise LauncherUnavailable(
            "The local and slurm launchers use submitit, which is not installed (pip install 'rmt-zoo[cluster]')."
        ) from None
    return submitit


class Launcher:
    """Runs `worker` (the runner, `runner.run`) on a request, as optimum-benchmark's `launch(worker, worker_args)`:
    here, or on parts of the request as jobs; returns the request's rows in its order."""

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions

    def __init__(self, options: Any = None):
        self.options = options if options is not None else self.Options()

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this launcher cannot work from this machine, asked before anything runs."""
        return None

    def launch(self, worker: Worker, request: RunRequest) -> Outcome:
        raise NotImplementedError


class InProcess(Launcher):
    """`--launcher none`: the whole request in this process's runner, one group after another, on the device
    named by --device."""

    name = "none"

    def launch(self, worker: Worker, request: RunRequest) -> Outcome:
        return worker(request)


@dataclass
class _Job:
    """One submitted group: its submitit job, its rows and the shard they go to."""

    job: Any
    group: list[RowSpec]
    shard: Path
    number: int


class _Jobs(Launcher):
    """What local and slurm share: one submitit job per group (the same request, narrowed to the group and its
    shard), error rows for jobs that died, and jobs ended with the launch."""

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            _submitit()
        except LauncherUnavailable as exc:
            return str(exc)
        return None

    def executor(self, folder: Path, settings: Settings, groups: list[list[RowSpec]]) -> Any:
        raise NotImplementedError

    def submit(self, executor: Any, calls: list[tuple[list[RowSpec], Path, Worker, RunRequest]]) -> list[_Job]:
        """Submit each call (group, shard, worker, request) as a job; return the jobs, done or still running."""
        raise NotImplementedError

    def launch(self, worker: Worker, request: RunRequest) -> Outcome:
        submitit = _submitit()
        results = Path(request.results)
        run_id = request.run_id or uuid.uuid4().hex[:12]
        folder = results.with_name(f"{results.stem}.submitit") / run_id
        options = {flag_of(type(self.options), k): v for k, v in vars(self.options).items()}
        _check_script_values({"--out": results, **options})
        try:
            make_own_folder(folder)
        except WriteError as exc:
            raise LauncherUnavailable(str(exc)) from None
        groups = group_rows(request.specs)
        calls = []
        for i, group in enumerate(groups):
            shard = shard_path(results, f"{run_id}-{i}")
            part = replace(
                request,
                specs=tuple(group),
                results=str(shard),
                resume_from=str(request.resume_from or results),
                progress=False,
                run_id=run_id,
            )
            calls.append((group, shard, worker, part))
        rows: list[dict[str, Any]] = []
        failed = 0
        self.jobs: list[_Job] = []
        try:
            with stopped_by_sigterm():
                try:
                    executor = self.executor(folder, request.settings, groups)
                    jobs = self.submit(executor, calls)
                except (
                    submitit.core.utils.FailedJobError,
                    submitit.core.utils.FailedSubmissionError,
                    RuntimeError,
                ) as exc:
                    _remove_run_folder(folder)
                    raise LauncherUnavailable(
                        f"{self.name.capitalize()} refused the jobs: {_submission_error(exc)}."
                    ) from None
                except LauncherUnavailable:
                    _remove_run_folder(folder)
                    raise
                for job in jobs:
                    try:
                        rows += job.job.result().rows
                    except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError):
                        failed += 1
                        rows += _fill_dead_job(job, run_id, request.command, _job_failure(job.job, folder))
                    if request.verbose:
                        _echo_log(job, len(groups))
        except (KeyboardInterrupt, Interrupted):
            self.stop()
            raise
        if failed:
            print(f"note: {failed} job(s) died; their logs are kept in {folder}.", file=sys.stderr)
        else:
            _remove_run_folder(folder)  # nothing to look into: no log folder grows run after run
        keyed = {row_key(r, machine=""): r for r in rows}
        return Outcome([keyed[k] for s in request.specs if (k := row_key(s.fields(), machine="")) in keyed])

    def stop(self) -> None:
        """End what this launch submitted, when it is stopped (Ctrl-C, SIGTERM)."""


def _remove_run_folder(folder: Path) -> None:
    """A run's submitit folder, and `<results>.submitit` above it once no other run's folder is left there."""
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        folder.parent.rmdir()


def _submission_error(exc: Exception) -> str:
    """The scheduler's own reason, from sbatch's error output or submitit's sentence, as one clause."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else type(exc).__name__
    return last.removeprefix("sbatch: error: ").rstrip(".")[:300]


def _setup() -> list[str]:
    """Shell lines each job runs first: this checkout importable and the working folder off sys.path, as the runner
    makes it for its workers (`runner.child_env`); a `bench/` where the job starts is never imported."""
    return [f"export PYTHONPATH={shlex.quote(import_path())}", "export PYTHONSAFEPATH=1"]


def _job_failure(job: Any, folder: Path) -> str:
    """Why a job ended without its rows: the error its runner raised if its log shows one, else how it ended, and
    where its log is."""
    try:
        log = job.stderr() or ""
    except OSError:
        log = ""
    why = crash_reason(log)
    state = getattr(job, "state", "UNKNOWN")
    how = f"{why} (job state {state})" if why else f"it ended without a result (job state {state}; killed?)"
    return f"{how}; its log is in {folder}"


def _echo_log(job: _Job, total: int) -> None:
    """--verbose under a job launcher: the job's own output (its runner's progress and its workers'), once it ends."""
    try:
        text = "".join(part for part in (job.job.stdout(), job.job.stderr()) if part)
    except OSError:
        text = ""
    print(f"job {job.number + 1}/{total} ({job.group[0].model}, {len(job.group)} row(s)) ended:", file=sys.stderr)
    print(text.rstrip(), file=sys.stderr, flush=True)


def _fill_dead_job(job: _Job, run_id: str, command: str, why: str) -> list[dict[str, Any]]:
    """The rows a dead job wrote before it died, and an error row for each row it did not."""
    shard = job.shard
    written = (
        {row_key(r, machine=""): r for r in iter_results(shard, quiet=True, shards=False) if r.get("run_id") == run_id}
        if shard.exists()
        else {}
    )
    rows = list(written.values())
    for spec in job.group:
        if row_key(spec.fields(), machine="") not in written:
            row = unmeasured_row(
                spec, "error", f"The job running this row died before it finished: {why}", run_id, command
            )
            append_row(shard, row)
            rows.append(row)
    return rows


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc (children first found, grandchildren after)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _kill_tree(pid: int) -> None:
    """SIGKILL `pid` and every process below it: submitit's shell wrapper, its job controller, the job's runner and
    its workers, so that nothing of the job writes a row after the launcher has returned."""
    for target in [pid, *_descendants(pid)]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, signal.SIGKILL)


@dataclass(frozen=True)
class LocalOptions:
    jobs: int | None = field(
        default=None,
        metadata=option(
            "--jobs",
            "local launcher: jobs at a time (default: one per visible GPU, or 1 on a CPU run)",
            type=positive_int,
        ),
    )


class Local(_Jobs):
    """submitit's LocalExecutor: jobs on this machine, at most one per visible GPU at a time."""

    name = "local"
    Options = LocalOptions

    def executor(self, folder, settings, groups):
        submitit = _submitit()
        cuda = bool(groups) and groups[0][0].device.startswith("cuda")
        gpus = _gpu_count() if cuda else 0
        if cuda and not gpus:
            raise LauncherUnavailable("The local launcher was asked for a CUDA run, but torch sees no GPU here.")
        slots = self.options.jobs or max(1, gpus)
        if gpus and slots > gpus:
            raise LauncherUnavailable(f"--jobs {slots} asks for more jobs at a time than the {gpus} visible GPU(s).")
        timeout_min = max(len(g) for g in groups) * settings.timeout_s / 60 + 10 if groups else 10
        executors = []
        for slot in range(slots):
            ex = submitit.LocalExecutor(folder=folder / f"slot{slot}")
            ex.update_parameters(
                timeout_min=timeout_min,
                gpus_per_node=1 if gpus else 0,
                visible_gpus=(slot,) if gpus else (),
                setup=_setup(),
            )
            executors.append(ex)
        return executors

    def submit(self, executors, calls):
        """Start a group whenever a slot is free, and return once every group has started (the last ones may still
        be running: their results are waited for in submission order)."""
        running: list[_Job | None] = [None] * len(executors)
        pending = list(enumerate(calls))
        while pending:
            for slot, job in enumerate(running):
                if job is not None and job.job.done():
                    running[slot] = None
                if running[slot] is None and pending:
                    number, (group, shard, worker, request) = pending.pop(0)
                    job = executors[slot].submit(worker, request)
                    # submitit waits up to 15 s for a missing result file to appear on a network file system; a
                    # local job writes it on this disk before it ends, so a dead job's absent file is final.
                    job._results_timeout_s = 0
                    running[slot] = _Job(job, group, shard, number)
                    self.jobs.append(running[slot])
            time.sleep(0.2)
        return self.jobs

    def stop(self):
        """Kill every job of this launch that has not ended, with all its processes, and wait for them."""
        for job in self.jobs:
            process = getattr(job.job, "_process", None)  # submitit's LocalJob: the shell wrapper it started
            if process is not None and process.poll() is None:
                _kill_tree(process.pid)
                process.wait()


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = field(
        default=None, metadata=option("--slurm-partition", "Slurm partition", type=script_text)
    )
    account: str | None = field(default=None, metadata=option("--slurm-account", "Slurm account", type=script_text))
    qos: str | None = field(default=None, metadata=option("--slurm-qos", "Slurm quality of service", type=script_text))
    time_min: int = field(default=60, metadata=option("--slurm-time", "minutes per job", type=positive_int))
    gpus: int = field(default=1, metadata=option("--slurm-gpus", "GPUs per job (the rows use one)", type=positive_int))
    cpus: int = field(default=8, metadata=option("--slurm-cpus", "CPUs per job", type=positive_int))
    mem_gb: int | None = field(
        default=None, metadata=option("--slurm-mem-gb", "memory per job in GB", type=positive_int)
    )
    constraint: str | None = field(
        default=None,
        metadata=option("--slurm-constraint", "Slurm node constraint, e.g. a GPU kind", type=script_text),
    )
    parallel: int = field(
        default=64, metadata=option("--slurm-parallel", "array jobs running at a time", type=positive_int)
    )


class Slurm(_Jobs):
    """submitit's SlurmExecutor: one array job, one task per group; the launcher waits for them all."""

    name = "slurm"
    Options = SlurmOptions

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if shutil.which("sbatch") is None:
            return "--launcher slurm submits with sbatch, which is not on PATH here; run it from a Slurm login node."
        return super().unavailable_reason()

    def executor(self, folder, settings, groups):
        submitit = _submitit()
        o = self.options
        ex = submitit.SlurmExecutor(folder=folder / "%j")
        ex.update_parameters(
            job_name="rmt-zoo-bench",
            time=o.time_min,
            gpus_per_node=o.gpus,
            cpus_per_task=o.cpus,
            ntasks_per_node=1,
            array_parallelism=o.parallel,
            setup=_setup(),
            **{
                k: v
                for k, v in dict(
                    partition=o.partition,
                    account=o.account,
                    qos=o.qos,
                    constraint=o.constraint,
                    mem=f"{o.mem_gb}GB" if o.mem_gb else None,
                ).items()
                if v is not None
            },
        )
        return ex

    def submit(self, executor, calls):
        # sbatch's own error output is kept out of the terminal: a refusal becomes one sentence (see launch)
        with contextlib.redirect_stderr(io.StringIO()), executor.batch():
            submitted = [executor.submit(worker, request) for _, _, worker, request in calls]
        self.jobs = [_Job(job, group, shard, i) for i, (job, (group, shard, _, _)) in enumerate(zip(submitted, calls))]
        array = self.jobs[0].job.job_id.split("_")[0] if self.jobs else "-"
        print(f"submitted {len(self.jobs)} Slurm job(s) (array {array}); waiting", file=sys.stderr)
        return self.jobs

    def stop(self):
        print("the Slurm jobs keep running; `bench.py report` reads their shards when they finish.", file=sys.stderr)


LAUNCHERS: dict[str, type[Launcher]] = {cls.name: cls for cls in (InProcess, Local, Slurm)}
