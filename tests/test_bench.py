"""In-process tests of the harness pieces: FLOP counting, timing, memory, backends, accuracy, results, reports, CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm.layers
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import zoo
from bench import cli
from bench.accuracy import DataError, check_data_dir, evaluate
from bench.backends import BackendUnavailable, Compile, Eager, TensorRT
from bench.flops import count_gmacs, count_params
from bench.measure import PeakMemory, latency_stats, time_steps
from bench.report import plot, render_table, status_summary, table_order
from bench.results import append_row, latest_rows, load_results
from bench.spec import RowSpec

# ----------------------------------------------------------------------------------------------- FLOPs


def test_swin_t_gmacs_match_timm():
    counts = count_gmacs(zoo.load("swin_t"), torch.randn(1, 3, 224, 224))
    assert round(counts["gmacs"], 2) == 4.51
    # torch's counter has no normalisation layers, so it sits just below fvcore's convention
    assert 0.98 * counts["gmacs"] < counts["gmacs_torch"] < counts["gmacs"]


def test_rmt_s_gmacs_match_official_code():
    model = zoo.load("rmt_s")
    assert count_params(model) == 26_967_240
    assert count_gmacs(model, torch.randn(1, 3, 224, 224))["gmacs"] == pytest.approx(4.800, abs=5e-4)


class _Attention(nn.Module):
    """q = k = v = x (B, heads, L, d), through one of the three attention spellings."""

    def __init__(self, impl: str):
        super().__init__()
        self.impl = impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = -(torch.arange(x.shape[-2])[:, None] - torch.arange(x.shape[-2])[None]).abs().float()
        if self.impl == "matmul":
            return torch.softmax(x @ x.transpose(-2, -1) + bias, -1) @ x
        if self.impl == "sdpa":
            return F.scaled_dot_product_attention(x, x, x, attn_mask=bias)
        from torch.nn.attention.flex_attention import flex_attention

        return flex_attention(x, x, x, score_mod=lambda s, b, h, i, j: s - (i - j).abs())


def test_attention_counts_the_same_for_matmul_sdpa_and_flex():
    x = torch.randn(2, 4, 64, 16)
    expected = 2 * 4 * 64 * 64 * (16 + 16) / 1e9  # QK^T + AV
    for impl in ("matmul", "sdpa", "flex"):
        assert count_gmacs(_Attention(impl), x)["gmacs"] == pytest.approx(expected), impl


def test_fused_and_explicit_attention_give_the_same_vit_count():
    x = torch.randn(1, 3, 160, 160)
    fused = zoo.load("test_vit")
    assert fused.blocks[0].attn.fused_attn
    timm.layers.set_fused_attn(False)
    try:
        explicit = zoo.load("test_vit")
    finally:
        timm.layers.set_fused_attn(True)
    explicit.load_state_dict(fused.state_dict())
    assert not explicit.blocks[0].attn.fused_attn
    assert count_gmacs(fused, x)["gmacs"] == pytest.approx(count_gmacs(explicit, x)["gmacs"])


# ----------------------------------------------------------------------------------------------- timing and memory


def test_latency_stats():
    stats = latency_stats([float(v) for v in range(1, 101)])
    assert stats["mean"] == pytest.approx(50.5)
    assert stats["p50"] == pytest.approx(50.5)
    assert stats["p90"] == pytest.approx(90.1)
    assert stats["p99"] == pytest.approx(99.01)
    assert stats["std"] == pytest.approx(np.std(np.arange(1, 101)))
    assert stats["min"] == 1.0


def test_time_steps_runs_warmup_untimed():
    calls = []
    times, wall_s = time_steps(lambda: calls.append(1), warmup=3, iters=7, device="cpu")
    assert len(calls) == 10 and len(times) == 7
    assert all(t >= 0 for t in times) and wall_s * 1e3 >= sum(times)


def test_cpu_peak_memory_is_per_row():
    memory = PeakMemory("cpu")
    memory.reset()
    block = np.ones(300 * 2**20, dtype=np.uint8)  # touched, so resident
    first = memory.read()["peak_mem_mb"]
    del block
    memory.reset()
    second = memory.read()
    assert first >= 300 and second["peak_mem_mb"] < first - 200
    assert second["peak_mem_kind"] == "RSS peak (row)"


# ----------------------------------------------------------------------------------------------- backends


def _spec(backend: str, precision: str = "fp32", **kw) -> RowSpec:
    return RowSpec(model="x", backend=backend, precision=precision, batch_size=2, input_size=(8, 8), device="cpu", **kw)


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc(x)
        if x.sum() > 0:  # data-dependent: a graph break for torch.compile, an error for torch.export
            return x * 2
        return x


def test_eager_autocast_runs_in_bf16():
    model = nn.Linear(8, 4)
    out = Eager().prepare(model, torch.randn(2, 8), _spec("eager", "amp-bf16")).forward(torch.randn(2, 8))
    assert out.dtype == torch.bfloat16


def test_compile_reports_graph_breaks_and_compile_time():
    model = _Branchy().eval()
    for x in (torch.ones(2, 8), -torch.ones(2, 8)):  # both sides of the branch: one break either way
        model.fc.bias.data.fill_(float(x[0, 0]) * 10)
        with torch.no_grad():
            prepared = Compile().prepare(model, x, _spec("compile", compile_mode="default"))
            assert torch.allclose(prepared.forward(x), model(x))
        assert prepared.info["graph_breaks"] == 1 and len(prepared.info["break_reasons"]) == 1
    assert prepared.compile_s > 0


def test_tensorrt_missing_is_unavailable_with_export_check():
    with pytest.raises(ImportError):
        import torch_tensorrt  # noqa: F401
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(BackendUnavailable) as ok:
        TensorRT().prepare(nn.Conv2d(3, 4, 3).eval(), x, _spec("tensorrt"))
    assert str(ok.value).startswith("torch_tensorrt is not installed")
    assert "torch.export.export succeeded" in str(ok.value) and ok.value.info["export_ok"]
    with pytest.raises(BackendUnavailable) as failed:
        TensorRT().prepare(_Branchy().eval(), torch.randn(2, 8), _spec("tensorrt"))
    assert "torch.export.export failed" in str(failed.value) and not failed.value.info["export_ok"]
    with pytest.raises(BackendUnavailable, match="autocast does not apply"):
        TensorRT().prepare(nn.Conv2d(3, 4, 3), x, _spec("tensorrt", "amp-fp16"))


def test_tensorrt_precision_arguments_follow_the_installed_api():
    from bench.backends import _precision_kwargs

    def explicit_typing(exported_program, inputs=None, *, use_explicit_typing=True, enabled_precisions=None): ...

    def weak_typing(exported_program, inputs=None, *, enabled_precisions=None, use_explicit_typing=False): ...

    def oldest(exported_program, inputs=None, *, enabled_precisions=None): ...

    assert _precision_kwargs(explicit_typing, torch.float16) == {}  # would reject enabled_precisions
    assert _precision_kwargs(weak_typing, torch.float16) == {"enabled_precisions": {torch.float16}}
    assert _precision_kwargs(oldest, torch.bfloat16) == {"enabled_precisions": {torch.bfloat16}}


# ----------------------------------------------------------------------------------------------- accuracy


def make_image_folder(root: Path, per_class: int = 3) -> Path:
    """Two classes told apart by brightness: class 'a' dark, class 'b' bright."""
    for name, level in (("a", 30), ("b", 220)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((40, 48, 3), level + i, dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def _brightness_logits(x: torch.Tensor) -> torch.Tensor:
    m = x.float().mean(dim=(1, 2, 3))
    return torch.stack([-m, m, torch.zeros_like(m)], dim=1)


def test_accuracy_on_image_folder_pads_the_last_batch(tmp_path):
    data = make_image_folder(tmp_path / "data")
    seen_batches = []

    def forward(x):
        seen_batches.append(x.shape[0])
        return _brightness_logits(x)

    result = evaluate(forward, "test_vit", (32, 32), str(data), 4, None, lambda t: t)
    assert result == {"top1": 100.0, "top5": 100.0, "eval_samples": 6}
    assert seen_batches == [4, 4]  # 6 images: the second batch is padded to the static shape
    flipped = evaluate(lambda x: -_brightness_logits(x), "test_vit", (32, 32), str(data), 4, 4, lambda t: t)
    assert flipped["eval_samples"] == 4 and flipped["top1"] == 0.0 and flipped["top5"] == 100.0


def test_data_folder_checks(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        check_data_dir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        check_data_dir(tmp_path / "empty")
    (tmp_path / "noimg" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        check_data_dir(tmp_path / "noimg")
    check_data_dir(make_image_folder(tmp_path / "ok"))


# ----------------------------------------------------------------------------------------------- results and reports


def _row(**kw) -> dict:
    row = {
        "model": "swin_t", "backend": "eager", "precision": "fp32", "batch_size": 8, "input_size": [224, 224],
        "device": "cpu", "channels_last": False, "features_only": False, "compile_mode": None, "status": "ok", "reason": "",
        "params": 28_288_354, "gmacs": 4.509, "latency_ms": {"mean": 10.0, "p50": 9.0, "p90": 12.0, "p99": 15.0, "std": 1.0},
        "throughput_ips": 800.0, "peak_mem_mb": 900.0, "env": {"device_name": "Test CPU"},
    }
    row.update(kw)
    return row


def test_results_file_round_trip_survives_a_torn_line(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    append_row(path, _row(throughput_ips=1.0))
    append_row(path, _row(throughput_ips=2.0))
    append_row(path, _row(batch_size=1))
    with open(path, "a") as f:
        f.write('{"model": "cut sho')  # a crash mid-write
    rows = load_results(path)
    assert [r["throughput_ips"] for r in rows] == [1.0, 2.0, 800.0]
    assert "skipped unreadable line 4" in capsys.readouterr().err
    latest = latest_rows(rows)
    assert [(r["batch_size"], r["throughput_ips"]) for r in latest] == [(8, 2.0), (1, 800.0)]


def test_table_formats_and_notes():
    reason = "torch_tensorrt is not installed."
    rows = [
        _row(),
        _row(backend="tensorrt", status="unavailable", reason=reason, latency_ms=None, throughput_ips=None),
        _row(backend="tensorrt", batch_size=1, status="unavailable", reason=reason, latency_ms=None, throughput_ips=None),
        _row(batch_size=256, status="oom", reason="Out of memory at batch 256.", latency_ms=None, throughput_ips=None),
    ]
    table = render_table(rows, "github")
    lines = table.splitlines()
    assert lines[0].startswith("| model") and "p99 ms" in lines[0] and "img/s" in lines[0]
    assert "| 28.29 " in lines[2] and "| 4.509 " in lines[2] and "| 800.0 " in lines[2]
    assert table.count("unavailable [1]") == 2 and "oom [2]" in table  # identical reasons share one note
    assert lines[-2:] == [f"[1] {reason}", "[2] Out of memory at batch 256."]
    assert "\\begin{tabular}" in render_table(rows, "latex")
    csv_lines = render_table(rows, "csv").splitlines()
    assert csv_lines[0].startswith("model,backend,compile_mode,precision,batch_size,input_size")
    assert len(csv_lines) == 5 and ",224x224," in csv_lines[1] and ",15.0," in csv_lines[1]
    assert status_summary(rows) == "4 rows: 1 ok, 1 oom, 2 unavailable"


def test_table_order():
    rows = [_row(model="b", batch_size=8), _row(model="a"), _row(model="b", batch_size=1), _row(model="b", backend="compile")]
    assert [(r["model"], r["backend"], r["batch_size"]) for r in table_order(rows)] == [
        ("b", "eager", 1), ("b", "eager", 8), ("a", "eager", 8), ("b", "compile", 8)
    ]


def test_plot_uses_paper_accuracy_when_none_was_measured(tmp_path):
    png = tmp_path / "plot.png"
    assert plot([_row(), _row(model="rmt_t", top1=81.0)], png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plot([_row(status="oom")], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


# ----------------------------------------------------------------------------------------------- CLI arguments


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--models", "swin_tt"], "Did you mean: swin_t"),
        (["--models", "swin_t", "--batch-size", "0"], "expected a positive integer, got '0'"),
        (["--models", "swin_t", "--batch-size", "x"], "expected a positive integer, got 'x'"),
        (["--models", "swin_t", "--input-size", "224x"], "expected N or HxW"),
        (["--models", "swin_t", "--data", "/no/such/folder"], "does not exist"),
        (["--models", "swin_t", "--device", "cuda"], "no CUDA device"),
        (["--models", "swin_t", "--backend", "onnx"], "invalid choice: 'onnx'"),
        (["--models", "swin_t", "--precision", "fp8"], "expected one of fp32"),
        (["--models", "swin_t", "rmt_t", "--checkpoint", "/x.pth"], "names no model"),
        (["--models", "swin_t", "--checkpoint", "/no/file.pth"], "does not exist"),
        (["--models", "swin_t", "--import", "no_such_module_xyz"], "no_such_module_xyz"),
        (["report", "/no/results.jsonl"], "does not exist"),
    ],
)
def test_bad_arguments_give_one_sentence_and_exit_2(argv, message, capsys):
    assert cli.main(argv) == cli.EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err


def test_grid_and_presets():
    args = cli.parse_run_args([])
    assert args.preset == "quick" and args.device == "cpu" and args.models == ["rmt_t", "swin_t"] and args.threads == 1
    assert cli.parse_run_args(["--out", "x.jsonl", "--batch-size", "2"]).models == ["rmt_t", "swin_t"]
    specs = cli.grid(args)
    assert len(specs) == 2 * 2 * 2
    assert {(s.backend, s.compile_mode) for s in specs} == {("eager", None), ("compile", "default")}
    args = cli.parse_run_args(["--models", "internimage_l", "swin_t", "--precision", "autocast", "--batch-size", "4"])
    assert [(s.model, s.input_size, s.precision) for s in cli.grid(args)] == [
        ("internimage_l", (384, 384), "amp-bf16"), ("swin_t", (224, 224), "amp-bf16")
    ]


def test_exit_codes():
    assert cli.exit_code([_row()]) == cli.EXIT_OK
    assert cli.exit_code([_row(), _row(status="unavailable")]) == cli.EXIT_UNAVAILABLE
    assert cli.exit_code([_row(status="unavailable"), _row(status="oom")]) == cli.EXIT_FAILED
    assert cli.exit_code([_row(status="error")]) == cli.EXIT_FAILED


def test_load_results_is_importable_from_the_package(tmp_path):
    import bench

    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(_row()) + "\n")
    assert bench.load_results(path)[0]["latency_ms"]["p50"] == 9.0
