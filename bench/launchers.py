"""Launchers: where the groups of a grid run. `none` runs them here, one after another (the default); `local` and
`slurm` send them as submitit jobs (the `cluster` extra), on this machine or a Slurm cluster.

A job runs the same runner as `none` does on its groups (there is no scheduler of our own): it appends to its own
results shard beside `--out` (`results.shard-<job>.jsonl`), which `report` and `--resume` read as one file with it.
Locally at most one job runs per visible GPU at a time, each seeing only its GPU (`--jobs N` on a CPU machine); on
Slurm each group is one job of an array. A job that dies becomes error rows for what it had not measured, and
nothing measured is lost. A launcher is one class here, listed in LAUNCHERS, with its flags declared on its Options.
"""

from __future__ import annotations

import dataclasses
import shlex
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .args import positive_int
from .env import REPO_ROOT
from .options import NoOptions, option
from .results import append_row, iter_results, shard_path
from .runner import Outcome, group_rows, run, status_row
from .spec import RowSpec, Settings, row_key

__all__ = ["LAUNCHERS", "Launcher", "LauncherUnavailable", "run_job"]


class LauncherUnavailable(Exception):
    """The launcher cannot work here (submitit missing, no GPU for a GPU run); the message is one sentence."""


def run_job(
    specs: list[dict[str, Any]],
    settings: dict[str, Any],
    shard: str,
    command: str,
    resume_from: str,
    resume: bool,
    run_id: str,
) -> list[dict[str, Any]]:
    """What one submitit job runs: the ordinary runner on its rows, into its shard; returns its rows."""
    outcome = run(
        [RowSpec.from_fields(s) for s in specs],
        Settings(**{**settings, "imports": tuple(settings["imports"])}),
        shard,
        command,
        resume=resume,
        progress=False,
        resume_from=resume_from,
        run_id=run_id,
    )
    return outcome.rows


def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise LauncherUnavailable(
            "The local and slurm launchers use submitit, which is not installed (pip install 'rmt-zoo[cluster]')."
        ) from None
    return submitit


class Launcher:
    """Runs a grid's groups and returns the rows, as `runner.run` does."""

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions

    def __init__(self, options: Any = None):
        self.options = options if options is not None else self.Options()

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this launcher cannot work from this machine, asked before anything runs."""
        return None

    def launch(
        self,
        specs: list[RowSpec],
        settings: Settings,
        results: Path,
        command: str,
        resume: bool,
        progress: bool,
        verbose: bool,
    ) -> Outcome:
        raise NotImplementedError


class Here(Launcher):
    """Every group in this process's runner, one after another, on the device named by --device."""

    name = "none"

    def launch(self, specs, settings, results, command, resume, progress, verbose) -> Outcome:
        return run(specs, settings, results, command, resume=resume, progress=progress, verbose=verbose)


class _Jobs(Launcher):
    """What local and slurm share: one submitit job per group, shards, and error rows for jobs that died."""

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            _submitit()
        except LauncherUnavailable as exc:
            return str(exc)
        return None

    def executor(self, folder: Path, settings: Settings, groups: list[list[RowSpec]]) -> Any:
        raise NotImplementedError

    def submit(self, executor: Any, calls: list[tuple]) -> list[tuple[Any, list[RowSpec], Path]]:
        raise NotImplementedError

    def launch(self, specs, settings, results, command, resume, progress, verbose) -> Outcome:
        submitit = _submitit()
        run_id = uuid.uuid4().hex[:12]
        folder = results.with_name(f"{results.stem}.submitit") / run_id
        groups = group_rows(specs)
        executor = self.executor(folder, settings, groups)
        calls = []
        for i, group in enumerate(groups):
            shard = shard_path(results, f"{run_id}-{i}")
            calls.append(
                (
                    group,
                    shard,
                    (
                        run_job,
                        [s.fields() for s in group],
                        dataclasses.asdict(settings),
                        str(shard),
                        command,
                        str(results),
                        resume,
                        run_id,
                    ),
                )
            )
        rows: list[dict[str, Any]] = []
        failed = 0
        try:
            for job, group, shard in self.submit(executor, calls):
                try:
                    rows += job.result()
                except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as exc:
                    failed += 1
                    rows += _fill_dead_job(group, shard, run_id, command, _job_failure(exc))
        except (KeyboardInterrupt, Exception):
            self.stop(executor)
            raise
        if failed:
            print(f"note: {failed} job(s) died; their logs are kept in {folder}.", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)  # nothing to look into: no log folder grows run after run
            if not any(folder.parent.iterdir()):
                folder.parent.rmdir()
        keyed = {row_key(r, machine=""): r for r in rows}
        return Outcome([keyed[k] for s in specs if (k := row_key(s.fields(), machine="")) in keyed])

    def stop(self, executor: Any) -> None:
        """Cancel what this launch submitted, when it is stopped."""


def _setup() -> list[str]:
    """Shell lines each job runs first: this checkout importable, as the runner makes it for its workers."""
    return [f"export PYTHONPATH={shlex.quote(str(REPO_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}"]


def _job_failure(exc: Exception) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else type(exc).__name__


def _fill_dead_job(group: list[RowSpec], shard: Path, run_id: str, command: str, why: str) -> list[dict[str, Any]]:
    """The rows a dead job wrote before it died, and an error row for each row it did not."""
    written = (
        {row_key(r, machine=""): r for r in iter_results(shard, quiet=True, shards=False) if r.get("run_id") == run_id}
        if shard.exists()
        else {}
    )
    rows = list(written.values())
    for spec in group:
        if row_key(spec.fields(), machine="") not in written:
            row = status_row(spec, "error", f"The job running this row died before it finished: {why}", run_id, command)
            append_row(shard, row)
            rows.append(row)
    return rows


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
        """Start a group whenever a slot is free; yield each job when it is done, in submission order."""
        running: list[Any] = [None] * len(executors)
        self.jobs = []
        pending = list(calls)
        while pending or any(running):
            for slot, job in enumerate(running):
                if job is not None and job[0].done():
                    running[slot] = None
                if running[slot] is None and pending:
                    group, shard, call = pending.pop(0)
                    running[slot] = (executors[slot].submit(*call), group, shard)
                    self.jobs.append(running[slot])
            time.sleep(0.2)
        return self.jobs

    def stop(self, executors):
        for job, _, _ in getattr(self, "jobs", []):
            if not job.done():
                job.cancel(check=False)


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = field(default=None, metadata=option("--slurm-partition", "Slurm partition"))
    account: str | None = field(default=None, metadata=option("--slurm-account", "Slurm account"))
    qos: str | None = field(default=None, metadata=option("--slurm-qos", "Slurm quality of service"))
    time_min: int = field(default=60, metadata=option("--slurm-time", "minutes per job", type=positive_int))
    gpus: int = field(default=1, metadata=option("--slurm-gpus", "GPUs per job (the rows use one)", type=positive_int))
    cpus: int = field(default=8, metadata=option("--slurm-cpus", "CPUs per job", type=positive_int))
    mem_gb: int | None = field(
        default=None, metadata=option("--slurm-mem-gb", "memory per job in GB", type=positive_int)
    )
    constraint: str | None = field(
        default=None, metadata=option("--slurm-constraint", "Slurm node constraint, e.g. a GPU kind")
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
        with executor.batch():
            jobs = [(executor.submit(*call), group, shard) for group, shard, call in calls]
        print(
            f"submitted {len(jobs)} Slurm job(s) (array {jobs[0][0].job_id.split('_')[0] if jobs else '-'}); waiting",
            file=sys.stderr,
        )
        return jobs

    def stop(self, executor):
        print("the Slurm jobs keep running; `bench.py report` reads their shards when they finish.", file=sys.stderr)


LAUNCHERS: dict[str, type[Launcher]] = {cls.name: cls for cls in (Here, Local, Slurm)}
