"""Faults of isolation, by class: code from the working folder in a child process, option text in a generated job
script, job files written where a planted link points."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bench import cli, launchers, runner
from common.paths import WriteError, make_own_folder
from bench.spec import RowSpec, RunRequest, Settings
from common.cli import EXIT_USAGE

# ------------------------------------------------------------------------------------- code runs only from the install


def _shadow(folder: Path, package: str, marker: Path) -> None:
    """A package `package` in `folder` that leaves `marker` behind if anything imports it."""
    (folder / package).mkdir()
    body = f"open({str(marker)!r}, 'w').close()\n"
    (folder / package / "__init__.py").write_text(body)
    (folder / package / "tool.py").write_text(body)


@pytest.mark.parametrize("safe_path", [True, False], ids=["-P", "3.10 bootstrap"])
def test_a_child_never_imports_from_its_working_folder(safe_path, tmp_path, monkeypatch):
    """A `json/` where the user stands shadows the standard library for any `python -m`; the workers' command and
    environment leave it out, and still import what the parent can (a folder on the parent's sys.path)."""
    marker = tmp_path / "ran"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    _shadow(cwd, "json", marker)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "parents_module.py").write_text("import json, sys\njson.dump(sys.argv[1:], sys.stdout)\n")
    monkeypatch.syspath_prepend(str(theirs))
    monkeypatch.setattr(runner, "_SAFE_PATH", safe_path and sys.version_info >= (3, 11))
    proc = subprocess.run(
        runner.python_module("parents_module", "a", "-b"),
        cwd=cwd,
        env=runner.child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == ["a", "-b"] and not marker.exists()


def test_every_python_below_a_worker_or_job_leaves_the_working_folder_out(tmp_path):
    """What a worker or a launcher's job starts in turn (a compile worker, submitit's `python -m` processes) runs in
    the environment the runner and the job's setup lines give it."""
    if sys.version_info < (3, 11):
        pytest.skip("PYTHONSAFEPATH is Python 3.11's; 3.10 runs the bootstrap tested above")
    marker = tmp_path / "ran"
    _shadow(tmp_path, "json", marker)
    setup = " && ".join(launchers._setup())
    for command, env in [
        (f"{setup} && {sys.executable} -m json.tool", None),
        (f"{sys.executable} -m json.tool", runner.child_env()),
    ]:
        proc = subprocess.run(command, shell=True, cwd=tmp_path, env=env, input="{}", capture_output=True, text=True)
        assert proc.returncode == 0 and proc.stdout.strip() == "{}", proc.stderr
        assert not marker.exists(), command


@pytest.mark.e2e  # the runner starts a worker process
def test_a_bench_or_timm_folder_where_the_user_stands_never_runs_in_a_worker(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    for package in ("bench", "timm"):
        _shadow(cwd, package, marker)
    monkeypatch.chdir(cwd)
    spec = RowSpec("test_convnext", "eager", "fp32", 1, (32, 32), "cpu")
    request = RunRequest(
        (spec,), Settings(warmup=0, iters=1, flops=False), str(tmp_path / "r.jsonl"), "t", progress=False
    )
    [row] = runner.run(request).rows
    assert row["status"] == "ok", row.get("reason")
    assert not marker.exists()


# ---------------------------------------------------------------------------------- options never become script lines

CONTROL = ["gpu\ntouch X\n#", "gpu\rX", "gpu\x1b[2J", "gpu\u2028X", "gpu\u202eX", "gpu\x00"]


def _text_flags() -> list[str]:
    """Every launcher flag that takes free text (not a number)."""
    return [
        f.metadata["flag"]
        for cls in launchers.LAUNCHERS.values()
        for f in dataclasses.fields(cls.Options)
        if f.type in ("str | None", "str")
    ]


def _recording_sbatch(folder: Path) -> Path:
    """An sbatch that only records it was called, on PATH first."""
    folder.mkdir()
    (folder / "sbatch").write_text(f"#!/bin/sh\ntouch {folder / 'called'}\nexit 1\n")
    (folder / "sbatch").chmod(0o755)
    return folder


@pytest.mark.parametrize("value", CONTROL)
def test_a_control_character_in_any_launcher_text_option_is_refused_as_it_is_parsed(value, tmp_path, capsys):
    flags = _text_flags()
    assert {"--slurm-partition", "--slurm-account", "--slurm-qos", "--slurm-constraint"} <= set(flags)
    for flag in flags:
        argv = ["--models", "test_convnext", "--launcher", "slurm", flag, value, "--out", str(tmp_path / "r.jsonl")]
        assert cli.main(argv) == EXIT_USAGE
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and flag in err and "control character" in err, err


@pytest.mark.parametrize("value", CONTROL[:3])
def test_a_control_character_in_the_out_path_never_reaches_sbatch(value, tmp_path, monkeypatch, capsys):
    import submitit

    bin_dir = _recording_sbatch(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", staticmethod(lambda: 1))  # as if srun were here
    out = tmp_path / "res" / f"r{value}.jsonl"
    out.parent.mkdir()
    assert cli.main(["--models", "test_convnext", "--launcher", "slurm", "--out", str(out)]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--out" in err and "control character" in err, err
    assert not (bin_dir / "called").exists() and list(out.parent.iterdir()) == []


def test_options_given_through_the_api_are_checked_before_any_submission(tmp_path):
    spec = RowSpec("test_convnext", "eager", "fp32", 1, (32, 32), "cpu")
    request = RunRequest((spec,), Settings(), str(tmp_path / "r.jsonl"), "t", progress=False)
    slurm = launchers.Slurm(launchers.SlurmOptions(qos="high\nrm -rf ~\n#"))
    with pytest.raises(launchers.LauncherUnavailable, match="--slurm-qos .* control character"):
        slurm.launch(runner.run, request)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ job files stay where asked


@pytest.mark.parametrize("plant", ["link at the job folder", "link at the run folder", "file", "run folder exists",
                                   "another user's folder"])  # fmt: skip
@pytest.mark.parametrize("launcher", ["local", "slurm"])
def test_job_files_never_go_where_a_planted_path_points(plant, launcher, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "res" / "r.jsonl"
    out.parent.mkdir()
    jobs = out.parent / "r.submitit"
    if plant == "link at the job folder":
        jobs.symlink_to(elsewhere, target_is_directory=True)
    elif plant == "file":
        jobs.write_text("mine")
    else:
        jobs.mkdir()
        if plant == "link at the run folder":
            (jobs / "run1").symlink_to(elsewhere, target_is_directory=True)
        elif plant == "run folder exists":
            (jobs / "run1").mkdir()
        else:
            monkeypatch.setattr(os, "geteuid", lambda: os.stat(jobs).st_uid + 1)
    before = sorted(p.name for p in jobs.iterdir()) if jobs.is_dir() and not jobs.is_symlink() else None
    spec = RowSpec("test_convnext", "eager", "fp32", 1, (32, 32), "cpu")
    request = RunRequest((spec,), Settings(), str(out), "t", progress=False, run_id="run1")
    with pytest.raises(launchers.LauncherUnavailable) as refused:
        launchers.LAUNCHERS[launcher]().launch(runner.run, request)
    assert len(str(refused.value).splitlines()) == 1 and str(jobs) in str(refused.value)
    assert list(elsewhere.iterdir()) == []
    if plant == "file":
        assert jobs.read_text() == "mine"
    elif before is not None:
        assert sorted(p.name for p in jobs.iterdir()) == before  # nothing added, nothing of theirs removed


def test_a_new_job_folder_is_the_users_alone(tmp_path):
    folder = tmp_path / "r.submitit" / "run1"
    make_own_folder(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.parent.stat().st_uid == os.geteuid()
    make_own_folder(folder.parent / "run2")  # another run beside it
    with pytest.raises(WriteError, match="there already"):
        make_own_folder(folder)
