"""No line kills a reader: every reader of results files (report, --resume, the suite's --resume, the Hub's
push-results and convert --results, `bench.load_results`) skips a line it cannot read with one note and keeps every
row around it; one line costs at most `results.MAX_LINE` bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import cli, env, load_results, runner, suite
from bench.results import MAX_LINE, append_row, read_lines
from bench.spec import RowSpec, RunRequest, Settings
from hub.__main__ import main as hub_main
from hub.card import read_results
from common.cli import EXIT_USAGE, EXIT_OK

SPEC = RowSpec("test_convnext", "eager", "fp32", 1, (32, 32), "cpu")

# Each damage: bytes a results file may hold between two good rows (or, for "bom", before the first).
DAMAGE = {
    "list for a flag": json.dumps({**SPEC.fields(), "channels_last": [1], "status": "ok"}).encode() + b"\n",
    "list for options": json.dumps({**SPEC.fields(), "backend_options": [1, 2], "status": "ok"}).encode() + b"\n",
    "dict for the machine": json.dumps({**SPEC.fields(), "env": {"device_name": {"a": 1}}}).encode() + b"\n",
    "deep nesting": b"[" * 200_000 + b"\n",
    "deep nesting in a row": b'{"model": ' + b"[" * 200_000 + b"\n",
    "a line past MAX_LINE": b'{"model": "' + b"x" * (MAX_LINE + 10) + b'"}\n',
    "a line past MAX_LINE without an end": b"[" + b"1," * (MAX_LINE // 2 + 10),
    "NUL tail": b"\0" * 5000,
    "binary": bytes(range(256)) * 4 + b"\n",
}


def _row(batch: int, machine: str = "Test CPU") -> dict:
    return {
        **SPEC.fields(),
        "batch_size": batch,
        "status": "ok",
        "throughput_ips": 1.0,
        "env": {"device_name": machine},
    }


def _file(path: Path, damage: str, machine: str = "Test CPU") -> Path:
    """Row batch 1, the damage, row batch 2 (appended as the harness appends, after a torn tail)."""
    path.write_bytes(b"\xef\xbb\xbf" if damage == "bom" else b"")
    append_row(path, _row(1, machine))
    with open(path, "ab") as f:
        f.write(DAMAGE.get(damage, b""))
    append_row(path, _row(2, machine))
    return path


@pytest.mark.parametrize("damage", [*DAMAGE, "bom"])
def test_every_reader_keeps_the_rows_around_a_line_it_cannot_read(damage, tmp_path, capsys):
    path = _file(tmp_path / "r.jsonl", damage)
    assert [r["batch_size"] for r in load_results(path)] == [1, 2]
    assert [r["batch_size"] for r in read_results(path, "test_convnext")] == [1, 2]
    capsys.readouterr()
    assert cli.main(["report", str(path), "--format", "csv"]) == EXIT_OK
    out, err = capsys.readouterr()
    assert len([ln for ln in out.splitlines() if ln.startswith("test_convnext")]) == 2
    assert "Traceback" not in err and err.count("note: skipped") == (damage != "bom")
    assert hub_main(["push-results", str(path), "--repo", "me/bench", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert " from 2 rows of r.jsonl to " in out and "Traceback" not in err


@pytest.mark.parametrize("damage", [*DAMAGE, "bom"])
def test_resume_reads_past_a_damaged_line_and_measures_only_what_is_missing(damage, tmp_path, monkeypatch):
    path = _file(tmp_path / "r.jsonl", damage, env.device_name("cpu"))
    measured: list[list[RowSpec]] = []
    monkeypatch.setattr(runner._Run, "group", lambda self, specs: measured.append(specs))
    specs = tuple(RowSpec("test_convnext", "eager", "fp32", b, (32, 32), "cpu") for b in (1, 2, 3))
    settings = Settings(warmup=0, iters=1)
    runner.run(RunRequest(specs, settings, str(path), "t", resume=True, progress=False))
    assert [s.batch_size for group in measured for s in group] == [3]


@pytest.mark.parametrize("damage", ["NUL tail", "a line past MAX_LINE", "binary", "bom"])
def test_a_damaged_file_is_resumed_not_refused(damage, tmp_path, monkeypatch, capsys):
    """bench.py --resume and the suite's --resume check the file they append to before anything runs: damage after
    the first row is what readers skip, not a binary file."""
    monkeypatch.setattr(runner._Run, "group", lambda self, specs: None)
    path = _file(tmp_path / "r.jsonl", damage)
    argv = ["--models", "test_convnext", "--input-size", "32", "--batch-size", "1", "--resume", "--out", str(path)]
    assert cli.main(argv) != EXIT_USAGE, capsys.readouterr().err
    out = tmp_path / "suite"
    out.mkdir()
    _file(out / "results.jsonl", damage)
    monkeypatch.setattr(suite, "write_outputs", lambda rows, out, device: None)
    assert suite.main(["--dry-run", "--out", str(out), "--resume", "--quiet"]) != EXIT_USAGE
    assert "binary" not in capsys.readouterr().err


def test_a_binary_file_is_still_refused_as_a_results_file(tmp_path, capsys):
    path = tmp_path / "model.pth"
    path.write_bytes(b"PK\x03\x04\x00\x00" + bytes(range(256)) + b"\n{}\n")
    assert cli.main(["--models", "test_convnext", "--out", str(path)]) == EXIT_USAGE
    assert "is a binary file" in capsys.readouterr().err


def test_no_line_is_held_whole_past_the_bound(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"a\n" + b"x" * (10 * 64 * 1024) + b"\nb\n\xef\xbb\xbfc")
    assert list(read_lines(path, limit=1024)) == [(1, "a\n"), (2, None), (3, "b\n"), (4, "\ufeffc")]


def test_a_fifo_is_never_opened_by_the_line_reader(tmp_path):
    fifo = tmp_path / "r.jsonl"
    import os

    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        list(read_lines(fifo))
