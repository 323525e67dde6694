"""Every OS refusal is one sentence: a name longer than the file system allows (ENAMETOOLONG), a /dev/shm too full
for --workers, a batch that cannot fit in bench.accuracy, a standard output that cannot encode the text."""

from __future__ import annotations

import io
import os
import sys
from types import SimpleNamespace

import pytest

from bench import accuracy, cli
from bench.accuracy import SharedMemoryError, evaluate
from common.cli import UsageError
from bench.results import append_row
from bench.suite import main as suite_main
from common.cli import EXIT_USAGE, EXIT_OK


def _long(tmp_path, suffix: str) -> str:
    return str(tmp_path / ("a" * 300 + suffix))


@pytest.mark.parametrize(
    "argv",
    [
        lambda t, data: ["--models", "test_convnext", "--out", _long(t, ".jsonl")],
        lambda t, data: ["--models", "test_convnext", "--out", str(t / "r.jsonl"), "--plot", _long(t, ".png")],
        lambda t, data: ["report", str(data), "--plot", _long(t, ".png")],
    ],
    ids=["bench --out", "bench --plot", "report --plot"],
)
def test_a_name_too_long_is_one_sentence_in_bench(argv, tmp_path, capsys, make_row):
    data = tmp_path / "r.jsonl"
    append_row(data, make_row(top1=80.0))
    assert cli.main(argv(tmp_path, data)) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "longer than the file system allows" in err, err[-200:]


def test_a_name_too_long_is_one_sentence_in_accuracy_and_the_suite(tmp_path, capsys, make_image_folder):
    data = make_image_folder(tmp_path / "data")
    with pytest.raises(UsageError, match="longer than the file system allows"):
        accuracy.parse_args(["--model", "test_vit", "--data", str(data), "--out", _long(tmp_path, ".json")], 0, 1)
    assert suite_main(["--dry-run", "--out", _long(tmp_path, "")]) == EXIT_USAGE
    assert "longer than the file system allows" in capsys.readouterr().err


def test_an_accuracy_batch_that_cannot_fit_is_refused_up_front(tmp_path, monkeypatch, make_image_folder):
    data = make_image_folder(tmp_path / "data")
    monkeypatch.setattr(accuracy, "available_memory", lambda device: 2**30)
    argv = ["--model", "test_vit", "--data", str(data), "--device", "cpu", "--batch-size", "100000"]
    with pytest.raises(UsageError, match="needs at least about .* GiB .* and cpu has 1.0 GiB free"):
        accuracy.parse_args(argv, 0, 1)
    assert accuracy.parse_args(argv[:-1] + ["8"], 0, 1).batch_size == 8


def test_workers_that_dev_shm_cannot_take_are_refused_up_front(tmp_path, monkeypatch, make_image_folder):
    data = make_image_folder(tmp_path / "data")
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(f_bavail=16, f_frsize=4096))  # 64 KiB free
    argv = ["--model", "test_vit", "--data", str(data), "--device", "cpu", "--workers", "2"]
    with pytest.raises(UsageError, match="--workers 2 passes about .* MiB of decoded images through /dev/shm"):
        accuracy.parse_args(argv, 0, 1)
    assert accuracy.parse_args(argv[:-1] + ["0"], 0, 1).workers == 0


def test_a_dev_shm_that_fills_during_the_run_is_one_sentence(tmp_path, make_image_folder):
    data = make_image_folder(tmp_path / "data")

    def forward(x):  # what torch raises when a worker cannot write its batch to /dev/shm
        raise RuntimeError("unable to write to file </torch_123_456_0>: No space left on device (28)")

    with pytest.raises(SharedMemoryError, match="ran out of shared memory"):
        evaluate(forward, "test_vit", (32, 32), str(data), 2, None, lambda t: t, workers=1)
    with pytest.raises(RuntimeError, match="No space left"):  # without workers it is no shared-memory fault
        evaluate(forward, "test_vit", (32, 32), str(data), 2, None, lambda t: t, workers=0)


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_a_stdout_that_cannot_encode_a_name_gets_it_escaped(encoding, tmp_path, monkeypatch, capsys, make_row):
    path = tmp_path / "r.jsonl"
    append_row(path, make_row(model="modèle→日本", env={"device_name": "CPU — x"}))
    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding=encoding))
    assert cli.main(["report", str(path)]) == EXIT_OK
    sys.stdout.flush()
    out = raw.getvalue().decode(encoding)
    assert "mod" in out and ("\\u2192" in out or "\\xe8" in out)
    assert "Traceback" not in capsys.readouterr().err
