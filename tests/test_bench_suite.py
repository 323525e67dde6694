"""The GPU suite's plan, and its --dry-run on CPU end to end (no GPU number is produced or claimed)."""
from __future__ import annotations

import json

from bench.results import load_results
from bench.suite import FULL, GPU_MODELS, main, suite_specs


def test_full_suite_plan():
    specs = suite_specs(FULL)
    assert {s.model for s in specs} == set(GPU_MODELS) and len(GPU_MODELS) == 14
    assert all(s.device == "cuda" for s in specs)
    classify = [s for s in specs if not s.features_only]
    dense = [s for s in specs if s.features_only]
    assert len(classify) == 14 * 3 * 2 and len(dense) == 14 * 2  # dense rows: eager and compile
    assert {(s.backend, s.precision) for s in classify} == {("eager", "amp-bf16"), ("compile", "amp-bf16"), ("tensorrt", "fp16")}
    assert {s.batch_size for s in classify} == {1, 256}
    assert {s.input_size for s in classify if s.model == "internimage_l"} == {(384, 384)}
    assert {s.input_size for s in classify if s.model != "internimage_l"} == {(224, 224)}
    assert {(s.batch_size, s.input_size) for s in dense} == {(1, (800, 1344))}
    assert specs.index(dense[0]) == len(classify)  # dense rows run last, so a cut-short run keeps the main table


def test_dry_run_writes_every_output(tmp_path, capsys):
    out = tmp_path / "suite"
    code = main(["--dry-run", "--backends", "eager", "tensorrt", "--out", str(out), "--quiet"])
    assert code == 3  # TensorRT rows are status rows here
    rows = load_results(out / "results.jsonl")
    assert [(r["backend"], r["batch_size"], r["input_size"], r["features_only"], r["status"]) for r in rows] == [
        ("eager", 2, [64, 64], False, "ok"),
        ("eager", 1, [64, 64], False, "ok"),
        ("tensorrt", 2, [64, 64], False, "unavailable"),
        ("tensorrt", 1, [64, 64], False, "unavailable"),
        ("eager", 1, [64, 96], True, "ok"),
    ]
    assert all(r["command"].startswith("python -m bench.suite --dry-run") for r in rows)
    assert (out / "table.md").read_text().count("| test_convnext") == 5
    assert "\\toprule" in (out / "table.tex").read_text()
    assert len((out / "table.csv").read_text().splitlines()) == 6
    timm_lines = (out / "table_timm.csv").read_text().splitlines()
    assert timm_lines[0].startswith("model,infer_samples_per_sec,infer_step_time") and len(timm_lines) == 3  # 2 ok batch sizes
    assert json.loads((out / "env.json").read_text())["device_name"]
    assert "5 rows: 3 ok, 2 unavailable" in capsys.readouterr().err
