"""Accuracy that cannot be right is never reported: logits that are not numbers, a model without a classifier,
more class folders than the head scores, an unreadable class folder, --features-only with --data. Each is a refusal
or a row whose status and reason say what is wrong, in bench.py's workers and in bench.accuracy alike."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from bench import accuracy, cli, load_results
from bench.accuracy import DataError, Meaningless, check_data_dir, evaluate
from bench.spec import RowSpec, Settings
from bench.worker import Worker
from common.cli import EXIT_USAGE
from bench.args import EXIT_FAILED


def _logits(columns: int, value: float | None = None):
    """Logits of `columns` classes telling make_image_folder's dark class 0 from bright class 1, or all `value`."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        m = x.float().mean(dim=(1, 2, 3))
        scores = torch.stack([-m, m, *[torch.zeros_like(m)] * (columns - 2)], dim=1)[:, :columns]
        return scores if value is None else torch.full_like(scores, value)

    return forward


def _evaluate(forward, data: Path, **kw):
    return evaluate(forward, "test_vit", (32, 32), str(data), 2, None, lambda t: t, **kw)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_logits_that_are_no_numbers_give_no_accuracy(value, tmp_path, make_image_folder):
    data = make_image_folder(tmp_path / "data")
    with pytest.raises(Meaningless, match="NaN or infinite logits for all 6 images"):
        _evaluate(_logits(3, value), data)


def test_an_image_whose_logits_are_no_numbers_counts_as_a_miss(tmp_path, make_image_folder):
    data = make_image_folder(tmp_path / "data")
    good = _logits(2)

    def forward(x):  # the brightest image of class b overflows
        out = good(x)
        out[x.float().mean(dim=(1, 2, 3)) > x.float().mean(dim=(1, 2, 3)).min() + 0.5] = float("nan")
        return out

    result = _evaluate(forward, data)
    assert result["top1"] < 100.0 and result["top5"] < 100.0
    assert "gave NaN or infinite logits and count as misses" in result["accuracy_note"]


@pytest.mark.parametrize(
    "case, forward, kw, says",
    [
        ("no classifier", _logits(2), {"head_classes": 0}, "no classifier"),
        ("pooled features", _logits(2), {"head_classes": 0}, "num_classes=0"),
        ("more folders than logits", _logits(1), {}, "2 class folders, more than the 1 classes"),
        ("more folders than the head", _logits(2), {"head_classes": 1}, "more than the 1 classes"),
        ("feature maps", lambda x: [x, x], {}, "returns list, not one row of class scores"),
        ("a map", lambda x: x, {}, "returns a tensor of shape (2, 3, 32, 32)"),
    ],
)
def test_a_head_that_cannot_score_the_folders_gives_no_accuracy(case, forward, kw, says, tmp_path, make_image_folder):
    data = make_image_folder(tmp_path / "data")
    with pytest.raises(Meaningless, match=says.replace("(", r"\(").replace(")", r"\)")):
        _evaluate(forward, data, **kw)


def test_fewer_folders_than_classes_are_scored_with_a_note(tmp_path, make_image_folder):
    data = make_image_folder(tmp_path / "data")
    result = _evaluate(_logits(1000), data, head_classes=1000)
    assert result["top1"] == 100.0
    assert "2 class folder(s) were scored as the first 2 of the head's 1000 classes" in result["accuracy_note"]


def _unreadable(monkeypatch, folder: Path) -> None:
    real = os.scandir

    def scandir(path="."):
        if os.path.realpath(path) == os.path.realpath(folder):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_an_unreadable_class_folder_is_refused_up_front(tmp_path, monkeypatch, make_image_folder):
    data = make_image_folder(tmp_path / "data")
    _unreadable(monkeypatch, data / "b")
    with pytest.raises(DataError, match="class folder .*/b' of --data cannot be read"):
        check_data_dir(data)


def test_an_unreadable_folder_inside_a_class_is_skipped_and_said(tmp_path, monkeypatch, make_image_folder):
    data = make_image_folder(tmp_path / "data")
    (data / "b" / "more").mkdir()
    _unreadable(monkeypatch, data / "b" / "more")
    result = _evaluate(_logits(2), data)
    assert "1 folder(s) could not be read and were skipped" in result["accuracy_note"]


def test_features_only_with_data_is_refused(tmp_path, capsys, make_image_folder):
    data = make_image_folder(tmp_path / "data")
    argv = ["--models", "test_convnext", "--features-only", "--data", str(data), "--out", str(tmp_path / "r.jsonl")]
    assert cli.main(argv) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--features-only" in err and "--data" in err


class _Net(nn.Module):
    def __init__(self, num_classes: int, value: float | None = None):
        super().__init__()
        self.num_classes, self.value = num_classes, value
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return _logits(max(self.num_classes, 2), self.value)(x)[:, : max(self.num_classes, 1)] * self.scale


@pytest.mark.parametrize(
    "net, code, says",
    [
        (_Net(2, float("nan")), EXIT_FAILED, "NaN or infinite logits for all 6 images"),
        (_Net(1), EXIT_USAGE, "2 class folders, more than the 1 classes"),
        (_Net(0), EXIT_USAGE, "no classifier (num_classes=0)"),
    ],
)
def test_bench_accuracy_reports_no_accuracy_that_cannot_be_right(net, code, says, tmp_path, monkeypatch, capsys,
                                                                 make_image_folder):  # fmt: skip
    data = make_image_folder(tmp_path / "data")
    monkeypatch.setattr(accuracy.zoo, "load", lambda *a, **k: net)
    assert accuracy.main(["--model", "test_vit", "--data", str(data), "--device", "cpu", "--batch-size", "2"]) == code
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and says in err


def test_a_worker_row_without_a_classifier_fails_with_the_reason(tmp_path, make_image_folder):
    data = make_image_folder(tmp_path / "data")
    out = tmp_path / "r.jsonl"
    spec = RowSpec("test_convnext", "eager", "fp32", 2, (32, 32), "cpu", model_kwargs=(("num_classes", 0),),
                   data=str(data))  # fmt: skip
    Worker([spec], Settings(warmup=0, iters=1, flops=False), str(out), {}, {}).run()
    [row] = load_results(out)
    assert row["status"] == "error" and "No accuracy: The model has no classifier" in row["reason"]
    assert "top1" not in row
