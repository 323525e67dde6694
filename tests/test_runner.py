"""The runner (bench/runner.py): a dead worker's reason is its error, not a trailing log line; a run shows each row
as it lands, with the steps inside a row on a terminal."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.runner import crash_reason, run
from bench.spec import RowSpec, RunRequest, Settings

REPO = Path(__file__).resolve().parents[1]


def test_crash_reason_is_the_error_not_a_trailing_log_line():
    log = """loading
Traceback (most recent call last):
  File "x.py", line 3, in <module>
    boom()
RuntimeError: CUDA error: an illegal memory access was encountered
/usr/lib/python3/site-packages/torch/cuda/__init__.py:99: UserWarning: something at exit
  warnings.warn(
"""
    assert crash_reason(log) == "RuntimeError: CUDA error: an illegal memory access was encountered"
    chained = log.replace(
        "RuntimeError",
        "During handling of the above exception, another exception occurred:\n\n"
        'Traceback (most recent call last):\n  File "y"\nValueError: second\nX',
    )
    assert crash_reason(chained) == "ValueError: second"
    assert crash_reason("Segmentation fault\n  warnings.warn(\n") == ""
    assert crash_reason("") == ""


class _Terminal(io.StringIO):
    """A standard error that says it is a terminal, so the runner draws its bars into it."""

    def isatty(self) -> bool:
        return True


@pytest.mark.e2e
def test_a_terminal_shows_each_row_as_it_lands_and_the_steps_inside_a_row(tmp_path, monkeypatch):
    specs = [
        RowSpec("test_convnext", "eager", "fp32", 1, (64, 64), "cpu", threads=1),
        RowSpec("test_convnext", "eager", "fp32", 2, (64, 64), "cpu", threads=1),
    ]
    monkeypatch.setattr(sys, "stderr", _Terminal())
    request = RunRequest(tuple(specs), Settings(warmup=2, iters=3, flops=False), str(tmp_path / "r.jsonl"), "test")
    outcome = run(request)
    assert [r["status"] for r in outcome.rows] == ["ok", "ok"]
    shown = sys.stderr.getvalue()
    for phase in ("build", "prepare", "warm-up", "timed"):
        assert f"test_convnext eager fp32 b2: {phase}" in shown or f"test_convnext eager fp32 b1: {phase}" in shown
    assert "timed: 100%" in shown and "3/3" in shown  # the step bar reaches the row's last timed step
    plain = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", shown)  # tqdm moves the cursor between its bars
    lines = [ln for ln in re.split(r"[\r\n]", plain) if ln.startswith("test_convnext eager fp32 batch ")]
    assert [ln.split(":")[0] for ln in lines] == [
        "test_convnext eager fp32 batch 2 64x64",  # the worker runs the larger batch first
        "test_convnext eager fp32 batch 1 64x64",
    ]
    assert all(ln.endswith(", ok") and " ms, " in ln for ln in lines)


@pytest.mark.e2e
def test_a_log_gets_a_plain_line_per_row_as_it_lands(tmp_path, subprocess_env):
    """Standard error in a file: no bar, but each group's start and each row, in the order they happen."""
    argv = ["--models", "test_convnext", "test_vit", "--batch-size", "1", "--input-size", "64", "--warmup", "0"]
    argv += ["--iters", "2", "--no-flops", "--device", "cpu", "--threads", "1", "--out", str(tmp_path / "r.jsonl")]
    log = tmp_path / "log"
    with open(log, "w") as f:
        proc = subprocess.run(
            [sys.executable, "bench.py", *argv], cwd=REPO, env=subprocess_env(), stderr=f, timeout=600
        )
    assert proc.returncode == 0
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith(("running ", "test_"))]
    assert [ln.split(":")[0] for ln in lines] == [
        "running test_convnext",
        "test_convnext eager fp32 batch 1 64x64",
        "running test_vit",
        "test_vit eager fp32 batch 1 64x64",
    ]
    assert "\r" not in log.read_text() and "%|" not in log.read_text()  # no bar redrawn into the file
