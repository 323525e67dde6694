"""Launchers through submitit's local executor on CPU: two jobs at a time, a job killed mid-group, --resume, and
the shards read as one results file. Slurm's options checked in the sbatch text submitit would submit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.results import load_results, result_files

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
    assert rows["killjob_net", 2]["reason"].startswith("The job running this row died")
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

    assert cli.main(["--models", "test_convnext", "--jobs", "2"]) == cli.EXIT_USAGE
    assert "--jobs applies to --launcher local, not none" in capsys.readouterr().err
    assert cli.main(["--models", "test_convnext", "--launcher", "local", "--slurm-partition", "gpu"]) == cli.EXIT_USAGE
    assert "--slurm-partition applies to --launcher slurm" in capsys.readouterr().err


def test_slurm_options_reach_the_sbatch_file(tmp_path, monkeypatch, capsys):
    import submitit

    from bench import cli
    from bench.launchers import Slurm, SlurmOptions
    from bench.spec import RowSpec, Settings

    assert (
        cli.main(["--models", "test_convnext", "--launcher", "slurm", "--out", str(tmp_path / "r.jsonl")])
        == cli.EXIT_USAGE
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
    text = executor._make_submission_file_text("python -c pass", "uid")
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
