"""The real entry point in subprocesses: one worker per group, rows on disk as they finish, OOM and crashes
reported as rows, --resume, missing TensorRT, accuracy on a generated ImageFolder, report rendering."""

from __future__ import annotations

import csv
import io
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bench.results import load_results

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.e2e


@pytest.fixture
def bench(subprocess_env):
    """`python bench.py ARGS` in a child process; `env_path` holds modules it may --import."""

    def run(*args: str, env_path: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "bench.py", *args],
            cwd=REPO,
            env=subprocess_env(env_path),
            capture_output=True,
            text=True,
            timeout=600,
        )

    return run


TINY = [
    "--models",
    "test_convnext",
    "--batch-size",
    "1",
    "--input-size",
    "64",
    "--warmup",
    "0",
    "--iters",
    "2",
    "--no-flops",
    "--quiet",
]


def test_run_measures_everything_and_reports_missing_tensorrt(tmp_path, bench, make_image_folder):
    data = make_image_folder(tmp_path / "data")
    out, png = tmp_path / "r.jsonl", tmp_path / "plot.png"
    args = [
        "--models",
        "test_convnext",
        "--backend",
        "eager",
        "tensorrt",
        "--batch-size",
        "1",
        "2",
        "--input-size",
        "64",
        "--warmup",
        "1",
        "--iters",
        "3",
        "--data",
        str(data),
        "--max-samples",
        "5",
        "--out",
        str(out),
        "--plot",
        str(png),
        "--quiet",
    ]
    proc = bench(*args)
    assert proc.returncode == 3, proc.stderr  # 3: a backend is unavailable, everything else ok
    rows = load_results(out)
    # TensorRT is known to be missing before any model is built: one status row for its two rows, no worker
    assert [(r["backend"], r["batch_size"], r["status"]) for r in rows] == [
        ("tensorrt", 1, "unavailable"),
        ("eager", 2, "ok"),
        ("eager", 1, "ok"),
    ]
    for row in rows[1:]:
        assert row["input_size"] == [64, 64] and row["device"] == "cpu" and row["precision"] == "fp32"
        assert row["params"] > 0 and row["gmacs"] > 0 and row["gmacs_torch"] > 0
        assert set(row["latency_ms"]) >= {"mean", "p50", "p90", "p99", "std"} and row["throughput_ips"] > 0
        assert row["peak_mem_mb"] > 0 and row["compile_s"] is None
        assert row["energy_j_per_img"] is None and "NVML" in row["energy_note"]  # no GPU here: absent, with the reason
        assert row["eval_samples"] == 5 and 0 <= row["top1"] <= row["top5"] <= 100
        assert (
            row["env"]["torch"] and row["env"]["timm"] and "git_commit" in row["env"] and "torch_tensorrt" in row["env"]
        )
        assert row["command"].startswith("python bench.py --models test_convnext") and row["timestamp"]
        assert row["data"] == str(data.resolve()) and row["max_samples"] == 5 and row["weights"] == "random init"
    assert rows[0]["reason"].startswith("torch_tensorrt is not installed") and "1 more row(s)" in rows[0]["reason"]
    assert len({r["run_id"] for r in rows}) == 1
    assert re.search(r"^test_convnext +tensorrt", proc.stdout, re.M) and "unavailable [2]" in proc.stdout
    assert "[1] The 2 class folder(s) were scored as the first 2 of the head's 1000 classes" in proc.stdout
    assert png.read_bytes()[:4] == b"\x89PNG"

    report = bench("report", str(out), "--format", "csv")
    assert report.returncode == 0, report.stderr
    table = list(csv.DictReader(io.StringIO(report.stdout)))
    assert [(t["backend"], t["batch_size"], t["status"]) for t in table] == [  # table order: batch ascending
        ("tensorrt", "1", "unavailable"),
        ("eager", "1", "ok"),
        ("eager", "2", "ok"),
    ]
    assert float(table[2]["throughput_ips"]) == rows[1]["throughput_ips"]


def test_oom_and_crash_are_rows_and_resume_skips_what_was_measured(tmp_path, bench, faulty_models, table_lines):
    (tmp_path / "faulty_models.py").write_text(faulty_models)
    out = tmp_path / "r.jsonl"
    args = [
        "--import",
        "faulty_models",
        "--models",
        "crash_net",
        "oom_net",
        "--batch-size",
        "1",
        "2",
        "--warmup",
        "0",
        "--iters",
        "2",
        "--out",
        str(out),
        "--quiet",
    ]
    first = bench(*args, env_path=tmp_path)
    assert first.returncode == 4, first.stderr  # 4: some row ran out of memory or failed
    rows = {(r["model"], r["batch_size"]): r for r in load_results(out)}
    # the crash killed crash_net's worker before either of its rows finished; oom_net still ran
    for batch in (1, 2):
        assert rows["crash_net", batch]["status"] == "error"
        assert "worker process stopped (killed by SIGKILL)" in rows["crash_net", batch]["reason"]
    assert rows["oom_net", 2]["status"] == "oom" and "Out of memory at batch 2" in rows["oom_net", 2]["reason"]
    assert rows["oom_net", 1]["status"] == "ok" and rows["oom_net", 1]["latency_ms"]["p50"] > 0

    second = bench(*args, "--resume", env_path=tmp_path)
    assert second.returncode == 4
    all_rows = load_results(out)
    new = [r for r in all_rows if r["run_id"] != rows["oom_net", 1]["run_id"]]
    assert sorted((r["model"], r["batch_size"]) for r in new) == [("crash_net", 1), ("crash_net", 2)]  # errors retried
    assert table_lines(second.stdout, "oom_net") == 2 and table_lines(second.stdout, "crash_net") == 2


def test_unknown_model_through_the_entry_point(bench):
    proc = bench("--models", "rmt_ss")
    assert proc.returncode == 2 and proc.stdout == ""
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: Unknown model 'rmt_ss'") and "Did you mean: rmt_s" in line


def test_a_results_file_cut_before_its_last_newline_loses_nothing(tmp_path, bench, table_lines):
    out = tmp_path / "a.jsonl"
    assert bench(*TINY, "--out", str(out)).returncode == 0
    out.write_bytes(out.read_bytes()[:-1])  # truncate -s -1
    second = bench(*TINY, "--batch-size", "2", "--out", str(out))
    assert second.returncode == 0, second.stderr  # no false "worker stopped (exit code 0)" row
    assert [(r["batch_size"], r["status"]) for r in load_results(out)] == [(1, "ok"), (2, "ok")]
    report = bench("report", str(out))
    assert report.returncode == 0 and report.stderr == "" and table_lines(report.stdout, "test_convnext") == 2


def _alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for whoever inherited it to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _wait_for(predicate, seconds: float = 60.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _start_until_hang_net(tmp_path, faulty_models, subprocess_env, args: list[str], out) -> tuple:
    """bench.py on faulty_models' models (`args`: models and flags), at batch 1 into `out`, started and waited on
    until hang_net's worker has written its pid: (the process, the pid file)."""
    (tmp_path / "faulty_models.py").write_text(faulty_models)
    pidfile = tmp_path / "worker.pid"
    argv = ["--import", "faulty_models", "--models", *args, "--batch-size", "1", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(
        [sys.executable, "bench.py", *argv],
        cwd=REPO,
        env=subprocess_env(tmp_path, BENCH_TEST_PIDFILE=str(pidfile)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if not _wait_for(lambda: pidfile.exists() and pidfile.read_text()):
        proc.kill()
        pytest.fail("hang_net's worker never started")
    return proc, pidfile


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="worker death with its parent uses Linux's PR_SET_PDEATHSIG"
)
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL", "SIGINT"])
def test_a_stopped_run_leaves_no_worker_behind(how, tmp_path, faulty_models, subprocess_env):
    out = tmp_path / "r.jsonl"
    before = set(os.listdir(tempfile.gettempdir()))
    proc, pidfile = _start_until_hang_net(tmp_path, faulty_models, subprocess_env, ["hang_net", "test_convnext"], out)
    try:
        worker = int(pidfile.read_text())
        assert _alive(worker)
        proc.send_signal(getattr(signal, how))
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _wait_for(lambda: not _alive(worker), 30), f"worker {worker} outlived its parent ({how})"
    assert not out.exists() or load_results(out) == []  # no half row, and test_convnext never started
    if how != "SIGKILL":
        assert proc.returncode == 128 + getattr(signal, how)
        [line] = err.strip().splitlines()
        assert line.startswith(f"stopped by {how}: the worker was ended") and "Traceback" not in err
        assert "no row was measured, so no results file was written" in line and str(out) not in line
    assert not {
        n for n in set(os.listdir(tempfile.gettempdir())) - before if n.startswith("bench-")
    }  # nothing left in /tmp


def test_train_mode_and_onnxruntime_through_the_entry_point(tmp_path, bench):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    out = tmp_path / "r.jsonl"
    proc = bench(*TINY, "--backend", "eager", "onnxruntime", "--bench", "both", "--out", str(out))
    assert proc.returncode == 3, proc.stderr  # onnxruntime has no training step: a status row
    rows = {(r["mode"], r["backend"]): r for r in load_results(out)}
    assert {k: r["status"] for k, r in rows.items()} == {
        ("infer", "eager"): "ok",
        ("infer", "onnxruntime"): "ok",
        ("train", "eager"): "ok",
        ("train", "onnxruntime"): "unavailable",
    }
    ort = rows["infer", "onnxruntime"]
    assert ort["diff_vs_eager_rel"] < 1e-4 and ort["ort_provider"] == "CPUExecutionProvider"
    train = rows["train", "eager"]
    assert train["throughput_ips"] > 0 and len(train["times_ms"]) == 2 and train["peak_mem_mb"] > 0
    assert train["optimizer"] == "SGD(lr=1e-4)" and train["schema_version"] >= 2
    assert train["float32_matmul_precision"] == "highest" and train["cudnn_benchmark"] is False
    assert re.search(r" train +eager", proc.stdout) and re.search(r" infer +eager", proc.stdout)
    timm_csv = bench("report", str(out), "--format", "timm")
    [line] = [ln for ln in csv.DictReader(io.StringIO(timm_csv.stdout)) if ln["backend"] == "eager"]
    assert float(line["infer_samples_per_sec"]) > 0 and float(line["train_samples_per_sec"]) > 0


def test_python_dash_m_bench_is_the_same_entry_point(subprocess_env):
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--models", "rmt_ss"],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: Unknown model 'rmt_ss'")
    help_text = subprocess.run(
        [sys.executable, "-m", "bench", "--help"],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (
        help_text.returncode == 0
        and "--bench {infer,train,both}" in help_text.stdout
        and "onnxruntime" in help_text.stdout
    )


def test_a_timm_benchmark_command_measures(tmp_path, bench):
    """timm's flags through the entry point (--torchcompile's compile is measured by the tests of that backend; its
    flag maps onto it in tests/test_cli_args.py)."""
    out, timm_csv = tmp_path / "r.jsonl", tmp_path / "timm.csv"
    argv = ["--model", "test_convnext", "-b", "1", "--amp", "--amp-dtype", "bfloat16", "--img-size", "64"]
    argv += ["--num-warm-iter", "0", "--num-bench-iter", "2", "--results-file", str(timm_csv), "--no-flops"]
    proc = bench(*argv, "--device", "cpu", "--quiet", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    [row] = load_results(out)
    assert (row["precision"], row["batch_size"], row["warmup"], row["iters"]) == ("amp-bf16", 1, 0, 2)
    [line] = csv.DictReader(io.StringIO(timm_csv.read_text()))
    assert line["model"] == "test_convnext" and float(line["infer_samples_per_sec"]) > 0


def test_ctrl_c_prints_the_table_of_what_was_kept_and_where(tmp_path, faulty_models, subprocess_env):
    out = tmp_path / "r.jsonl"
    models = ["test_convnext", "hang_net", "--input-size", "64", "--iters", "2", "--no-flops"]
    proc, _ = _start_until_hang_net(tmp_path, faulty_models, subprocess_env, models, out)
    try:
        proc.send_signal(signal.SIGINT)
        stdout, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    [row] = [ln for ln in stdout.splitlines() if ln.startswith("test_convnext")]  # the table of the row kept
    assert row.split()[-1] == "ok"
    assert err.strip().splitlines()[-1].endswith(f"the rows measured so far are kept in {out} (--resume continues).")
