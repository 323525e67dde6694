"""Faults in the harness, by class: outputs that are inputs or not files, torn writes, damaged rows, broken pipes,
resume keys, unbounded work in the runner, energy through a fake NVML and the terminal table's width."""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from bench import cli, results
from bench.measure import Energy, Loop
from bench.report import plot, render_table
from bench.results import append_row, iter_results, latest_rows, load_results
from bench.runner import run
from bench.spec import RowSpec, RunRequest, Settings
from bench.args import EXIT_FAILED, EXIT_OUTPUT
from common.cli import EXIT_OK, EXIT_USAGE

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- output paths


@pytest.mark.parametrize("kind", ["fifo", "devnull", "dangling"])
def test_unusable_out_is_one_sentence_before_anything_runs(kind, tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    if kind == "fifo":
        os.mkfifo(out)
    elif kind == "dangling":
        out.symlink_to(tmp_path / "gone" / "r.jsonl")
    else:
        out = "/dev/null"
    assert cli.main(["--models", "test_convnext", "--out", str(out)]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: --out")


def test_report_plot_over_its_input_is_refused(tmp_path, capsys, make_row):
    path = tmp_path / "r.jsonl"
    append_row(path, make_row())
    before = path.read_bytes()
    assert cli.main(["report", str(path), "--plot", str(path)]) == EXIT_USAGE
    assert "are the same file" in capsys.readouterr().err and path.read_bytes() == before


# ----------------------------------------------------------------------------------------------- the results file


def test_a_failed_append_leaves_no_torn_row(tmp_path, monkeypatch, make_row):
    path = tmp_path / "r.jsonl"
    append_row(path, make_row(throughput_ips=1.0))
    before = path.read_bytes()
    real_write = os.write

    def disk_full(fd, data):
        real_write(fd, bytes(data)[: len(data) // 2])  # half the row reaches the disk, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results.os, "write", disk_full)
    with pytest.raises(OSError):
        append_row(path, make_row(throughput_ips=2.0))
    monkeypatch.undo()
    assert path.read_bytes() == before  # cut back to the last whole row
    append_row(path, make_row(throughput_ips=3.0))
    assert [r["throughput_ips"] for r in load_results(path)] == [1.0, 3.0]


@pytest.mark.parametrize(
    "damage",
    [
        {"throughput_ips": "fast"},
        {"latency_ms": {"p50": "9"}},
        {"graph_breaks": 1.5},
        {"gmacs": True},
        {"latency_ms": [1, 2]},
        {"reason": 7},
        {"env": {"device_name": 3}},
        {"top1": [80]},
    ],
)
def test_rows_with_wrongly_typed_fields_are_skipped_not_formatted(damage, tmp_path, capsys, make_row):
    path = tmp_path / "r.jsonl"
    append_row(path, make_row(throughput_ips=1.0))
    with open(path, "a") as f:
        f.write(json.dumps(make_row(batch_size=2, **damage)) + "\n")
    assert [r["batch_size"] for r in load_results(path)] == [8]
    assert cli.main(["report", str(path)]) == EXIT_OK  # no format-code crash
    assert "skipped 1 line(s)" in capsys.readouterr().err


def test_resume_keys_on_what_changes_the_number_and_on_the_machine(make_row):
    base = make_row()
    for change in (
        {"data": "/val"},
        {"threads": 4},
        {"weights": "hub"},
        {"max_samples": 100},
        {"env": {"device_name": "Other CPU"}},
        {"backend_options": {"mode": "max-autotune"}},
    ):
        assert results.row_key({**base, **change}) != results.row_key(base), change
    old = {**base, "compile_mode": "max-autotune"}  # a schema-2 row
    del old["backend_options"]
    assert results.row_key(old) == results.row_key({**base, "backend_options": {"mode": "max-autotune"}})
    assert len(latest_rows([base, {**base, "env": {"device_name": "Other CPU"}}])) == 2  # two machines, two rows


def test_two_machines_show_a_device_column(make_row):
    rows = [make_row(), make_row(env={"device_name": "Other CPU"})]
    header = render_table(rows).splitlines()[0]
    assert " device " in header and "Other CPU" in render_table(rows)
    assert " device " not in render_table(rows[:1]).splitlines()[0]


def test_a_plot_of_only_non_finite_numbers_is_not_saved(tmp_path, make_row):
    png = tmp_path / "p.png"
    assert not plot(
        [make_row(model="rmt_t", throughput_ips=float("nan")), make_row(model="rmt_t", throughput_ips=math.inf)], png
    )
    assert not png.exists()


# ----------------------------------------------------------------------------------------------- standard output


@pytest.mark.e2e
def test_a_closed_pipe_ends_output_quietly_and_a_full_disk_is_one_sentence(tmp_path, make_row, subprocess_env):
    path = tmp_path / "r.jsonl"
    for batch in range(1, 400):
        append_row(path, make_row(batch_size=batch))
    piped = subprocess.run(
        f"{sys.executable} bench.py report {path} | head -1",
        shell=True,
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    assert piped.stdout.startswith("model ") and piped.stderr == ""
    with open("/dev/full", "w") as full:
        failed = subprocess.run(
            [sys.executable, "bench.py", "report", str(path)],
            cwd=REPO,
            env=subprocess_env(),
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
        )
    assert failed.returncode == EXIT_OUTPUT
    assert failed.stderr.strip() == "error: Standard output could not be written (No space left on device)."


# ----------------------------------------------------------------------------------------------- the runner


@pytest.mark.e2e  # the runner starts a worker process
def test_the_runner_reads_rows_from_its_channel_not_the_results_file(tmp_path, monkeypatch, make_row):
    out = tmp_path / "r.jsonl"
    with open(out, "w") as f:  # a large file the runner must not re-read while rows are timed
        for i in range(20_000):
            f.write(json.dumps(make_row(batch_size=i + 1)) + "\n")

    def no_reading(*args, **kwargs):
        raise AssertionError("the runner read the results file")

    monkeypatch.setattr("bench.runner.iter_results", no_reading)
    spec = RowSpec("test_convnext", "eager", "fp32", 1, (32, 32), "cpu")
    outcome = run(
        RunRequest(
            (spec, RowSpec("test_convnext", "eager", "fp32", 2, (32, 32), "cpu")),
            Settings(warmup=0, iters=2, flops=False),
            str(out),
            "test",
            progress=False,
        )
    )
    assert [(r["batch_size"], r["status"]) for r in outcome.rows] == [(1, "ok"), (2, "ok")]
    assert sum(1 for _ in iter_results(out)) == 20_002


@pytest.mark.e2e
def test_a_sub_second_timeout_is_said_as_given(tmp_path, faulty_models, subprocess_env):
    (tmp_path / "faulty_models.py").write_text(faulty_models)
    out = tmp_path / "r.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            "bench.py",
            "--import",
            "faulty_models",
            "--models",
            "hang_net",
            "--batch-size",
            "1",
            "--timeout",
            "0.5",
            "--out",
            str(out),
            "--quiet",
        ],
        cwd=REPO,
        env=subprocess_env(tmp_path, BENCH_TEST_PIDFILE=str(tmp_path / "pid")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == EXIT_FAILED
    [row] = load_results(out)
    assert "timed out after 0.5 s" in row["reason"]


# ----------------------------------------------------------------------------------------------- energy and width


class _FakeNVML(types.ModuleType):
    """nvidia-ml-py's calls the energy tracker makes; the counter advances 500 J per read."""

    def __init__(self):
        super().__init__("pynvml")
        self.reads = 0

    def nvmlInit(self):
        pass

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return "handle"

    def nvmlDeviceGetHandleByIndex(self, index):
        return "handle"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        self.reads += 1
        return 1_000_000 + 500_000 * self.reads  # millijoules


def test_energy_per_image_from_nvml(monkeypatch):
    fake = _FakeNVML()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr("bench.measure._nvml_handle", lambda nvml, index: "handle")  # no GPU to find here
    monkeypatch.setattr("bench.measure.is_cuda", lambda device: True)
    clock = iter([10.0, 12.0])
    monkeypatch.setattr("bench.measure.time.perf_counter", lambda: next(clock))
    energy = Energy("cuda:0")
    energy.start()
    energy.stop()
    fields = energy.fields(Loop([5.0] * 10, 2.0, batch_size=25))
    assert fields["energy_j"] == pytest.approx(500.0) and fields["power_w"] == pytest.approx(250.0)
    assert fields["energy_j_per_img"] == pytest.approx(500.0 / 250) and "energy_note" not in fields


def test_energy_is_absent_with_the_reason_on_cpu():
    fields = Energy("cpu").fields(Loop([1.0], 0.001))
    assert fields["energy_j_per_img"] is None and "NVML on NVIDIA GPUs" in fields["energy_note"]


def test_default_table_fits_120_columns(make_row):
    rows = [
        make_row(
            model="internimage_t",
            backend="compile",
            precision="amp-bf16",
            batch_size=256,
            input_size=[800, 1344],
            features_only=True,
            gmacs=107.94,
            latency_ms={"p50": 1234.56},
            throughput_ips=12345.6,
            peak_mem_mb=12345.0,
            diff_vs_eager_rel=1.2e-2,
            status="mismatch",
            reason="x",
        ),
        make_row(backend="tensorrt", status="unavailable", reason="y"),
    ]
    lines = render_table(rows).splitlines()
    assert max(len(ln) for ln in lines[:-2]) <= 120, lines[0]
    assert "p99" not in lines[0] and len(render_table(rows, columns=["all"]).splitlines()[0]) > 120
