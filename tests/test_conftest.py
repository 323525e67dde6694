"""The tiers conftest.py sets up: a `variants` check runs each family's smallest variant in the fast tier and the
larger ones in the slow tier, and an xdist worker does not take more threads than its share of the cores."""

from __future__ import annotations

import os

import pytest
import torch

SMALLEST = {"rmt_t", "internimage_t", "swin_t", "maxvit_t"}


def test_larger_variants_are_in_the_slow_tier_before_marks_are_selected(request):
    variants = [item for item in request.session.items if item.get_closest_marker("variants")]
    if not variants:
        pytest.skip("this run collected no `variants` check (the whole suite does)")
    for item in variants:
        name = item.callspec.params["name"]
        fast = name in SMALLEST or name in item.get_closest_marker("variants").args
        assert (item.get_closest_marker("e2e") is None) == fast, item.nodeid
    selected = request.config.getoption("markexpr")
    if selected == "not e2e":  # the fast tier: `-m` saw the marks the hook added
        assert not any(item.get_closest_marker("e2e") for item in request.session.items)
        assert {item.callspec.params["name"] for item in variants} <= SMALLEST | {"rmt_s_tl"}


def test_an_xdist_worker_takes_its_share_of_the_cores():
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers == 1:
        pytest.skip("not under xdist: torch keeps its default")
    assert torch.get_num_threads() == max(1, (os.cpu_count() or 1) // workers)
    assert os.environ["OMP_NUM_THREADS"]  # inherited by the processes tests start
