"""Launchers through submitit's local executor on CPU: two jobs at a time, a job killed mid-group, --resume, and
the shards read as one results file. Slurm's options checked in the sbatch text submitit would submit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.results import load_results, result_files
from common.cli import EXIT_USAGE

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("submitit", reason="the cluster extra is not installed")

# Appended to the faulty_models fixture: a model whose forward kills the job that runs it.
KILL_JOB = """

class KillsItsJob(Faulty):
    def forward(self, x):
        if x.shape[0] >= 2:
            os.kill(os.getppid(), signal.SIGKILL)  # the worker's parent is the job's runner: the whole job dies
        return super().forward(x[:1]).expand(x.shape[0], -1)


register_family(
    Family("killjob", "a model that kills the job running it", code="", built_by="zoo"),
    [ModelInfo(name="killjob_net", family="killjob", input_size=(3, 32, 32))],
    lambda name, pretrained=False, **kw: KillsItsJob("none"),
)
"""


def _bench(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "bench.py", "--import", "faulty_models", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.e2e
@pytest.mark.timeout(900)  # two launches of two jobs each, every job a fresh interpreter
def test_local_jobs_shards_a_killed_job_and_resume(tmp_path, faulty_models, subprocess_env, table_lines):
    (tmp_path / "faulty_models.py").write_text(faulty_models + KILL_JOB)
    out = tmp_path / "r.jsonl"
    args = [
        "--models",
        "test_convnext",
        "killjob_net",
        "--batch-size",
        "1",
        "2",
        "--input-size",
        "32",
        "--warmup",
        "0",
        "--iters",
        "2",
        "--no-flops",
        "--out",
        str(out),
        "--launcher",
        "local",
        "--jobs",
        "2",
        "--quiet",
    ]
    first = _bench(subprocess_env(tmp_path), *args)
    assert first.returncode == 4, first.stderr  # the killed job's rows are errors
    assert not out.exists() and len(result_files(out)) == 2  # each job appended to its own shard
    rows = {(r["model"], r["batch_size"]): r for r in load_results(out)}
    assert {k: r["status"] for k, r in rows.items()} == {
        ("test_convnext", 1): "ok",
        ("test_convnext", 2): "ok",
        ("killjob_net", 1): "error",
        ("killjob_net", 2): "error",
    }
    reason = rows["killjob_net", 2]["reason"]
    assert reason.startswith("The job running this row died before it finished: it ended without a result (job state")
    assert f"its log is in {tmp_path / 'r.submitit'}" in reason and "submitit" not in reason.split("its log")[0]
    assert len({r["run_id"] for r in rows.values()}) == 1  # one launch
    # the worker runs batch 2 first (largest batch first), so the job died before killjob_net's batch 1 too
    slots = sorted(p.name for p in (tmp_path / "r.submitit").glob("*/slot*"))
    assert slots == ["slot0", "slot1"]  # the two groups ran as two jobs at a time; a dead job's logs are kept
    assert table_lines(first.stdout, "killjob_net") == 2 and "1 job(s) died" in first.stderr

    second = _bench(subprocess_env(tmp_path), *args, "--resume")
    assert second.returncode == 4
    fresh = [r for r in load_results(out) if r["run_id"] != rows["test_convnext", 1]["run_id"]]
    assert sorted((r["model"], r["batch_size"]) for r in fresh) == [
        ("killjob_net", 1),
        ("killjob_net", 2),
    ]  # errors retried
    report = subprocess.run(
        [sys.executable, "bench.py", "report", str(out)], cwd=REPO, env=subprocess_env(), capture_output=True, text=True
    )
    assert (
        report.returncode == 0
        and table_lines(report.stdout, "test_convnext") == 2
        and table_lines(report.stdout, "killjob_net") == 2
    )


def test_launcher_arguments(tmp_path, capsys):
    from bench import cli

    assert cli.main(["--models", "test_convnext", "--jobs", "2"]) == EXIT_USAGE
    assert "--jobs applies to --launcher local, not none" in capsys.readouterr().err
    assert cli.main(["--models", "test_convnext", "--launcher", "local", "--slurm-partition", "gpu"]) == EXIT_USAGE
    assert "--slurm-partition applies to --launcher slurm" in capsys.readouterr().err


def test_slurm_options_reach_the_sbatch_file(tmp_path, monkeypatch, capsys):
    import submitit

    from bench import cli
    from bench.launchers import Slurm, SlurmOptions
    from bench.spec import RowSpec, Settings

    assert (
        cli.main(["--models", "test_convnext", "--launcher", "slurm", "--out", str(tmp_path / "r.jsonl")]) == EXIT_USAGE
    )
    assert "sbatch, which is not on PATH" in capsys.readouterr().err  # no cluster here: said before anything runs
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", staticmethod(lambda: 1))  # as if srun were here

    options = SlurmOptions(
        partition="gpu",
        account="vision",
        qos="high",
        time_min=30,
        gpus=1,
        cpus=12,
        mem_gb=64,
        constraint="h100",
        parallel=8,
    )
    group = [RowSpec("rmt_s", "eager", "amp-bf16", 1, (224, 224), "cuda")]
    executor = Slurm(options).executor(tmp_path / "submitit", Settings(), [group])
    text = executor._make_submission_file_text("python -c pass", "uid")  # submitit's script, without a cluster
    for line in (
        "--partition=gpu",
        "--account=vision",
        "--qos=high",
        "--time=30",
        "--gpus-per-node=1",
        "--cpus-per-task=12",
        "--mem=64GB",
        "--constraint=h100",
        "--job-name=rmt-zoo-bench",
    ):
        assert f"#SBATCH {line}" in text, line
    assert "export PYTHONPATH=" in text  # jobs import this checkout, installed or not


@pytest.mark.e2e
def test_verbose_under_the_local_launcher_prints_progress(tmp_path, subprocess_env):
    out = tmp_path / "r.jsonl"
    args = ["--models", "test_convnext", "--batch-size", "1", "--input-size", "32", "--warmup", "0", "--iters", "2",
            "--no-flops", "--out", str(out), "--launcher", "local", "--verbose"]  # fmt: skip
    proc = subprocess.run([sys.executable, "bench.py", *args], cwd=REPO, env=subprocess_env(), capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "job 1/1 (test_convnext, 1 row(s)) ended:" in proc.stderr  # the launcher's progress
    assert "running test_convnext: 1 row(s)" in proc.stderr and "worker done in" in proc.stderr  # the job's own
    assert not out.exists() and f"results in {out} and 1 shard file(s) beside it (r.shard-" in proc.stderr


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.e2e
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_a_stopped_local_launch_ends_its_jobs_and_nothing_writes_after_it(how, tmp_path, faulty_models, subprocess_env):
    (tmp_path / "faulty_models.py").write_text(faulty_models)
    pidfile, out = tmp_path / "worker.pid", tmp_path / "r.jsonl"
    args = ["--models", "hang_net", "test_convnext", "--batch-size", "1", "--out", str(out), "--launcher", "local",
            "--quiet"]  # fmt: skip
    env = subprocess_env(tmp_path, BENCH_TEST_PIDFILE=str(pidfile))
    proc = subprocess.Popen([sys.executable, "bench.py", "--import", "faulty_models", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
            time.sleep(0.2)
        worker = int(pidfile.read_text())  # hang_net's worker, inside the job, hangs in its forward
        proc.send_signal(getattr(signal, how))
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + getattr(signal, how), err
    assert err.strip().splitlines()[-1].startswith(f"stopped by {how}:") and "Traceback" not in err
    assert not _alive(worker)  # ended by the launcher, not orphaned
    before = sorted((p.name, p.stat().st_size) for p in result_files(out))
    time.sleep(3)  # test_convnext would have been measured in this time had the job lived on
    assert sorted((p.name, p.stat().st_size) for p in result_files(out)) == before
    assert not any(b'"test_convnext"' in p.read_bytes() for p in result_files(out))  # no row of the next model


def _fake_sbatch(folder: Path, message: str) -> Path:
    """An sbatch that refuses every job with `message`, as a cluster does for a bad partition."""
    folder.mkdir()
    sbatch = folder / "sbatch"
    sbatch.write_text(f"#!/bin/sh\necho {message!r} >&2\nexit 1\n")
    sbatch.chmod(0o755)
    return folder


@pytest.mark.parametrize("srun", [pytest.param(True, marks=pytest.mark.e2e), False])  # e2e: runs a fake sbatch
def test_a_refused_slurm_submission_is_one_sentence_and_leaves_nothing(srun, tmp_path, monkeypatch, capsys):
    import submitit

    from bench import cli

    bin_dir = _fake_sbatch(tmp_path / "bin", "sbatch: error: invalid partition specified: nope")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    if srun:  # sbatch runs and refuses; without srun submitit refuses before sbatch
        monkeypatch.setattr(submitit.SlurmExecutor, "affinity", staticmethod(lambda: 1))
    out = tmp_path / "res" / "r.jsonl"
    out.parent.mkdir()
    argv = ["--models", "test_convnext", "--launcher", "slurm", "--slurm-partition", "nope", "--out", str(out)]
    assert cli.main(argv) == EXIT_USAGE
    captured = capsys.readouterr()
    [line] = [ln for ln in captured.err.splitlines() if ln.strip()]
    expected = "invalid partition specified: nope." if srun else 'Could not detect "srun"'
    assert line.startswith("error: Slurm refused the jobs: ") and expected in line, line
    assert list(out.parent.iterdir()) == []  # no .submitit folder, no results
