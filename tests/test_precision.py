"""Precisions (bench/precision.py): one table that the CLI, the backends, training, the output check and the GPU
suite all read, so a new precision is one entry."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from bench import cli, suite
from bench.backends import Eager, TensorRT
from bench.precision import PRECISIONS, Precision, precision
from bench.train import training_step
from bench.worker import output_difference
from common.cli import EXIT_USAGE


@pytest.fixture
def fake_precision(monkeypatch) -> str:
    """A precision that exists only in this test: float16 autocast that needs loss scaling, as amp-fp16 does, with
    its own tolerance and the suite's autocast role."""
    name = "amp-test16"
    monkeypatch.setitem(
        PRECISIONS,
        name,
        Precision(name, torch.float32, torch.float16, autocast=True, tolerance=3e-2, trainable=True, grad_scaler=True),
    )
    return name


def test_a_new_precision_lands_everywhere_from_its_table_entry(
    fake_precision, bench_flags, make_spec, tmp_path, capsys
):
    assert fake_precision in bench_flags["--precision"].help
    args = cli.parse_run_args(["--models", "swin_t", "--precision", fake_precision, "--bench", "train", "--out",
                               str(tmp_path / "r.jsonl")])  # fmt: skip
    assert args.precision == [fake_precision]  # accepted, and trainable
    assert cli.main(["--models", "swin_t", "--precision", "fp8"]) == EXIT_USAGE
    assert fake_precision in capsys.readouterr().err  # the error lists it
    spec = make_spec("tensorrt", fake_precision)
    assert "autocast does not apply" in TensorRT.refusal(spec)  # an autocast precision, refused by a cast backend
    _, fields = training_step(
        nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), Eager(), make_spec("eager", fake_precision, mode="train"),
        torch.randn(2, 3, 2, 2),
    )  # fmt: skip
    assert fields["grad_scaler"] is True  # the loss is scaled because its entry says so
    ref = torch.randn(4, 10)
    assert output_difference(ref, ref * 1.02, make_spec("compile", fake_precision))["diff_tolerance_rel"] == 3e-2
    assert precision(fake_precision).tolerance == 3e-2


def test_cast_backends_name_the_cast_precisions_and_the_suite_reads_its_roles(monkeypatch, make_spec):
    monkeypatch.setitem(
        PRECISIONS,
        "fp8t",
        Precision("fp8t", torch.float16, torch.float16, autocast=False, tolerance=1, trainable=False),
    )
    assert "(fp32, fp16, bf16, fp8t)" in TensorRT.refusal(make_spec("tensorrt", "amp-bf16"))
    config = suite.SuiteConfig(device="cpu")
    assert PRECISIONS[config.precision].suite == "autocast" and PRECISIONS[config.cast_precision].suite == "cast"
    assert not PRECISIONS["amp-bf16"].grad_scaler and PRECISIONS["amp-fp16"].grad_scaler
