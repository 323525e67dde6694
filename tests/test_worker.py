"""The worker's checks (bench/worker.py): the output compared with eager."""

from __future__ import annotations


import pytest
import torch

from bench.worker import output_difference


def test_output_difference_flags_a_backend_that_computes_something_else(make_spec):
    ref = torch.randn(4, 10)
    same = output_difference(ref, ref + 1e-7, make_spec("compile"))
    assert "status" not in same and same["diff_vs_eager_max_abs"] == pytest.approx(1e-7, rel=0.2)
    assert same["diff_tolerance_rel"] == 1e-4
    wrong = output_difference(ref, ref.flip(0), make_spec("tensorrt"))
    assert wrong["status"] == "mismatch" and wrong["reason"].startswith("Output differs from eager by")
    assert output_difference(ref, ref * float("nan"), make_spec("compile"))["status"] == "mismatch"
    loose = output_difference([ref, ref], [ref, ref * 1.01], make_spec("compile", "bf16"))  # features_only: every stage
    assert "status" not in loose and loose["diff_vs_eager_rel"] == pytest.approx(0.01, rel=0.05)
    assert output_difference(ref, ref * 1.002, make_spec("compile", tf32=True))["diff_tolerance_rel"] == 5e-3
