"""The GPU suite's plan (priority order, worker count) and its --dry-run on CPU end to end (no GPU number is
produced or claimed)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from bench.results import load_results
from bench.runner import group_rows
from bench.suite import FULL, main, suite_specs

import zoo

HEAD = {"rmt_s", "swin_t", "maxvit_t", "internimage_t"}


def test_full_suite_plan_runs_in_priority_order():
    models = zoo.comparison_models()
    assert len(models) == 14 and not [m for m in models if m.endswith("_tl")]
    specs = suite_specs(FULL)
    assert {s.model for s in specs} == set(models) and all(s.device == "cuda" for s in specs)
    first = specs[:16]  # 1. the head-to-head tier: eager and compile, batch 1 and 256, bf16 autocast
    assert [s.model for s in first[::4]] == ["rmt_s", "swin_t", "internimage_t", "maxvit_t"]  # closest GFLOPs first
    assert {(s.backend, s.precision, s.batch_size) for s in first} == {
        (b, "amp-bf16", n) for b in ("eager", "compile") for n in (1, 256)
    }
    assert {(s.model, s.backend) for s in specs[16:24]} == {(m, "tensorrt") for m in HEAD}  # then TensorRT fp16
    assert {s.precision for s in specs[16:24]} == {"fp16"}
    rest = specs[24:]
    assert [s.backend for s in rest[:20]] == ["eager"] * 20 and [s.backend for s in rest[20:40]] == ["compile"] * 20
    dense = [s for s in specs if s.features_only]
    assert len(dense) == 28 and specs[-28:] == dense  # the 800x1344 backbone rows last
    assert {(s.batch_size, s.input_size) for s in dense} == {(1, (800, 1344))}
    assert {s.input_size for s in specs if s.model == "internimage_l" and not s.features_only} == {(384, 384)}
    # one worker per model per tier: the four head-to-head models each build once for their eight rows
    groups = group_rows(specs)
    assert [len(g) for g in groups[:4]] == [4] * 4
    assert len(groups) == 4 + 4 + 10 * 3 + 14  # head eager+compile, head TensorRT, rest per backend, dense


def test_cuda_graph_rows_are_optional_batch_one_compile_rows():
    specs = suite_specs(replace(FULL, cuda_graphs=True))
    graphs = [s for s in specs if s.backend_options == (("mode", "reduce-overhead"),)]
    assert len(graphs) == 14 and {s.batch_size for s in graphs} == {1} and {s.backend for s in graphs} == {"compile"}


@pytest.mark.parametrize("budget", ["0", "-1", "nan", "x"])
def test_budget_must_be_positive(budget, tmp_path, capsys):
    assert main(["--dry-run", "--out", str(tmp_path / "s"), "--budget-min", budget]) == 2
    assert "--budget-min expects a positive number of minutes" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.mark.e2e  # the slow tier: the suite starts its workers
def test_dry_run_writes_the_four_outputs(tmp_path, capsys):
    out = tmp_path / "suite"
    code = main(["--dry-run", "--backends", "eager", "tensorrt", "--out", str(out), "--quiet"])
    assert code == 3  # TensorRT is missing here: one status row for the run
    rows = load_results(out / "results.jsonl")
    assert [(r["model"], r["backend"], r["batch_size"], r["features_only"], r["status"]) for r in rows] == [
        ("test_convnext", "tensorrt", 1, False, "unavailable"),
        ("test_convnext", "eager", 2, False, "ok"),
        ("test_convnext", "eager", 1, False, "ok"),
        ("test_convnext", "eager", 1, True, "ok"),
    ]
    assert "1 more row(s) of this backend" in rows[0]["reason"]
    assert all(r["command"].startswith("python -m bench.suite --dry-run") for r in rows)
    assert sorted(p.name for p in out.iterdir()) == ["env.json", "results.jsonl", "table.md"]  # no top-1: no plot
    assert (out / "table.md").read_text().count("| test_") == 4
    assert json.loads((out / "env.json").read_text())["device_name"]
    assert "4 rows: 3 ok, 1 unavailable" in capsys.readouterr().err
