"""In-process tests of the harness pieces: FLOP counting, timing, memory, backends, accuracy, results, reports, CLI."""

from __future__ import annotations

import csv
import inspect
import io
import json
import os
import types
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
from bench.backends import BACKENDS, Compile, Eager, OnnxRuntime, TensorRT, TensorRTOptions, make_backend
from bench.flops import count_gmacs, count_params
from bench.measure import Energy, Latency, Memory, latency_stats, time_steps
from bench.report import plot, render_table, status_summary, table_order
from bench.paths import check_output_path
from bench.results import SCHEMA_VERSION, append_row, latest_rows, load_results
from bench.runner import crash_reason
from bench.spec import RowSpec, Unavailable
from bench.train import training_step
from bench.worker import _drop_path_rate, output_difference

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


def test_time_steps_runs_warmup_untimed_and_trackers_around_the_timed_steps():
    calls = []

    class Counting(Energy.__mro__[1]):  # a Tracker that notes when it starts and stops
        def start(self):
            calls.append("start")

        def stop(self):
            calls.append("stop")

        def fields(self, loop):
            return {"steps": len(loop.times_ms)}

    tracker = Counting("cpu")
    loop = time_steps(lambda: calls.append(1), warmup=3, iters=7, device="cpu", trackers=[tracker], batch_size=4)
    assert calls == [1, 1, 1, "start", *[1] * 7, "stop"] and len(loop.times_ms) == 7
    assert all(t >= 0 for t in loop.times_ms) and loop.wall_s * 1e3 >= sum(loop.times_ms)
    latency = Latency("cpu").fields(loop)
    assert latency["throughput_ips"] == pytest.approx(4 * 7 / loop.wall_s) and latency["times_ms"] == loop.times_ms


def test_cpu_peak_memory_is_per_row():
    memory = Memory("cpu")
    memory.start()
    block = np.ones(300 * 2**20, dtype=np.uint8)  # touched, so resident
    first = memory.fields()["peak_mem_mb"]
    del block
    memory.start()
    second = memory.fields()
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
            prepared = Compile().prepare(model, x, _spec("compile"))
            assert torch.allclose(prepared.forward(x), model(x))
        assert prepared.info["graph_breaks"] == 1 and len(prepared.info["break_reasons"]) == 1
    assert prepared.compile_s > 0


def test_backends_refuse_what_they_cannot_run_before_a_model_is_built():
    with pytest.raises(ImportError):
        import torch_tensorrt  # noqa: F401
    assert TensorRT.refusal(_spec("tensorrt")).startswith("torch_tensorrt is not installed")
    assert "autocast does not apply" in TensorRT.refusal(_spec("tensorrt", "amp-fp16"))
    assert "inference-only" in OnnxRuntime.refusal(_spec("onnxruntime", mode="train"))
    assert Eager.refusal(_spec("eager", "amp-bf16", mode="train")) is None
    assert OnnxRuntime.refusal(_spec("onnxruntime")) is None  # the onnx extra is installed for the tests


class _Relu(nn.Module):
    def forward(self, x):
        return torch.relu(x)


class _Engine(nn.Module):
    def __init__(self, converted: nn.Module, left: nn.Module):
        super().__init__()
        self._run_on_acc_0, self._run_on_gpu_1 = converted, left

    def forward(self, x):
        return self._run_on_acc_0(x)


class _FakeTorchTensorRT:
    """A stand-in `torch_tensorrt` whose `dynamo.compile` has one release's keyword arguments (name: default); it
    records what it was given and returns a graph split as torch_tensorrt splits one: an engine submodule and a
    PyTorch submodule."""

    def __init__(self, keywords: dict):
        self.calls: list[dict] = []

        def compile(exported_program, inputs=None, **kwargs):
            self.calls.append(kwargs)
            return _Engine(exported_program.module(), torch.fx.symbolic_trace(_Relu()))

        kind = inspect.Parameter.KEYWORD_ONLY
        compile.__signature__ = inspect.Signature(
            [
                inspect.Parameter("exported_program", inspect.Parameter.POSITIONAL_OR_KEYWORD),
                inspect.Parameter("inputs", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
            ]
            + [inspect.Parameter(name, kind, default=default) for name, default in keywords.items()]
        )
        self.dynamo = types.SimpleNamespace(compile=compile)


TRT_2_11 = {"enabled_precisions": None, "use_explicit_typing": False, "min_block_size": 5, "disable_tf32": False}
TRT_2_12 = {**TRT_2_11, "attn_bias_is_causal": True}
TRT_2_13 = {
    "min_block_size": 5,
    "disable_tf32": False,
    "attn_bias_is_causal": True,
}  # enabled_precisions, use_explicit_typing gone


@pytest.mark.parametrize(
    "keywords, precision, passed, typing",
    [
        (
            TRT_2_11,
            "fp16",
            {"enabled_precisions": {torch.float16}, "min_block_size": 5, "disable_tf32": True},
            "enabled_precisions=float16",
        ),
        (
            TRT_2_12,
            "fp16",
            {
                "enabled_precisions": {torch.float16},
                "min_block_size": 5,
                "disable_tf32": True,
                "attn_bias_is_causal": False,
            },
            "enabled_precisions=float16",
        ),
        (
            {**TRT_2_11, "use_explicit_typing": True},
            "bf16",
            {"min_block_size": 5, "disable_tf32": True},
            "explicit typing (default)",
        ),
        (
            TRT_2_13,
            "fp16",
            {"min_block_size": 5, "disable_tf32": True, "attn_bias_is_causal": False},
            "strong typing (always on)",
        ),
        ({"min_block_size": 5}, "fp32", {"min_block_size": 5}, "strong typing (always on)"),
    ],
)
def test_tensorrt_arguments_follow_the_installed_release(keywords, precision, passed, typing):
    fake = _FakeTorchTensorRT(keywords)
    model, x = nn.Conv2d(3, 4, 3).eval(), torch.randn(2, 3, 16, 16)
    prepared = TensorRT().build(fake, model, x, _spec("tensorrt", precision))
    assert fake.calls == [passed]
    info = prepared.info
    assert info["trt_typing"] == typing and info["trt_min_block_size"] == 5
    assert info["trt_attn_bias_is_causal"] == passed.get("attn_bias_is_causal")
    assert (info["trt_engines"], info["trt_torch_subgraphs"], info["trt_fully_converted"]) == (1, 1, False)
    assert info["trt_torch_ops"] == ["relu"]  # what stayed in PyTorch
    assert torch.allclose(prepared.forward(x), model(x))


def test_tensorrt_min_block_size_option_reaches_the_compiler():
    fake = _FakeTorchTensorRT(TRT_2_13)
    TensorRT(TensorRTOptions(min_block_size=1)).build(
        fake, nn.Conv2d(3, 4, 3).eval(), torch.randn(1, 3, 16, 16), _spec("tensorrt", "fp16")
    )
    assert fake.calls[0]["min_block_size"] == 1
    TensorRT().build(fake, nn.Conv2d(3, 4, 3).eval(), torch.randn(1, 3, 16, 16), _spec("tensorrt", "fp32", tf32=True))
    assert fake.calls[1]["disable_tf32"] is False  # --tf32: TensorRT's TF32 stays on, as for the other backends


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
    assert result == {"top1": 100.0, "top5": 100.0, "eval_samples": 6, "eval_skipped": 0}
    assert seen_batches == [4, 4]  # 6 images: the second batch is padded to the static shape
    flipped = evaluate(lambda x: -_brightness_logits(x), "test_vit", (32, 32), str(data), 4, 4, lambda t: t)
    assert flipped["eval_samples"] == 4 and flipped["top1"] == 0.0 and flipped["top5"] == 100.0


def test_a_corrupt_image_is_skipped_and_counted(tmp_path):
    data = make_image_folder(tmp_path / "data")
    (data / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))  # a JPEG header, then nothing decodable
    good = data / "b" / "cut.jpg"
    Image.fromarray(np.full((40, 48, 3), 200, dtype=np.uint8)).save(good)
    good.write_bytes(good.read_bytes()[:100])  # truncated mid-stream
    result = evaluate(_brightness_logits, "test_vit", (32, 32), str(data), 4, None, lambda t: t)
    assert result["eval_samples"] == 6 and result["eval_skipped"] == 2 and result["top1"] == 100.0
    assert result["accuracy_note"].startswith("2 unreadable image(s) skipped")


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
        "model": "swin_t",
        "backend": "eager",
        "precision": "fp32",
        "batch_size": 8,
        "input_size": [224, 224],
        "device": "cpu",
        "channels_last": False,
        "features_only": False,
        "backend_options": {},
        "status": "ok",
        "reason": "",
        "params": 28_288_354,
        "gmacs": 4.509,
        "latency_ms": {"mean": 10.0, "p50": 9.0, "p90": 12.0, "p99": 15.0, "std": 1.0},
        "throughput_ips": 800.0,
        "peak_mem_mb": 900.0,
        "env": {"device_name": "Test CPU"},
    }
    row.update(kw)
    return row


def test_results_file_round_trip_survives_a_torn_line(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    append_row(path, _row(throughput_ips=1.0))
    append_row(path, _row(throughput_ips=2.0))
    with open(path, "a") as f:
        f.write('{"model": "cut sho')  # a crash mid-write: no newline at the end
    append_row(path, _row(batch_size=1))  # the next row starts on its own line, so it is not glued to the torn one
    rows = load_results(path)
    assert [r["throughput_ips"] for r in rows] == [1.0, 2.0, 800.0]
    assert all(r["schema_version"] == SCHEMA_VERSION for r in rows)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "skipped 1 line(s)" in err and "(line 3)" in err
    latest = latest_rows(rows)
    assert [(r["batch_size"], r["throughput_ips"]) for r in latest] == [(8, 2.0), (1, 800.0)]


def test_a_row_appended_to_a_file_missing_its_last_newline_is_kept(tmp_path):
    path = tmp_path / "r.jsonl"
    append_row(path, _row(throughput_ips=1.0))
    path.write_bytes(path.read_bytes()[:-1])  # `truncate -s -1`: the last row is whole but has no newline
    append_row(path, _row(throughput_ips=2.0))
    assert [r["throughput_ips"] for r in load_results(path)] == [1.0, 2.0]


def test_foreign_partial_and_binary_lines_are_skipped_with_one_note(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    append_row(path, _row(throughput_ips=1.0))
    foreign = [
        "[1]",
        '{"name": "x"}',
        '"text"',
        "null",
        json.dumps(_row(batch_size="8")),
        json.dumps(_row(input_size=[224])),
        json.dumps(_row(input_size="224x224")),
        json.dumps(_row(model=None)),
    ]
    with open(path, "ab") as f:
        f.write(("\n".join(foreign) + "\n").encode() + bytes(range(256)) + b"\n")
    append_row(path, _row(throughput_ips=2.0))
    rows = load_results(path)
    assert [r["throughput_ips"] for r in rows] == [1.0, 2.0]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "skipped 10 line(s)" in err[0]  # 8 foreign lines, the binary run holds one newline byte
    assert cli.main(["report", str(path), "--format", "csv"]) == 0
    header, newest = capsys.readouterr().out.splitlines()  # the newest row of the one measurement
    assert dict(zip(header.split(","), newest.split(",")))["throughput_ips"] == "2.0"
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(bytes(range(256)) * 4)
    assert load_results(binary) == []
    assert cli.main(["report", str(binary)]) == cli.EXIT_USAGE
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: Results file")


def test_output_paths_are_checked_before_anything_runs(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "binary.jsonl").write_bytes(bytes(range(256)))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    cases = [
        (["--out", str(tmp_path)], "is a folder"),
        (["--out", str(tmp_path / "file" / "r.jsonl")], "which is a file, not a folder"),
        (["--out", str(tmp_path / "binary.jsonl")], "is a binary file"),
        (["--plot", str(tmp_path / "file" / "p.png")], "which is a file, not a folder"),
    ]
    if os.access(locked, os.W_OK):  # root writes anywhere; the permission case only means something otherwise
        locked.chmod(0o700)
    else:
        cases.append((["--out", str(locked / "r.jsonl")], "is not writable"))
    for argv, message in cases:
        assert cli.main(["--models", "test_convnext", *argv]) == cli.EXIT_USAGE
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (argv, err)
    assert cli.main(["report", str(tmp_path / "binary.jsonl"), "--plot", str(tmp_path)]) == cli.EXIT_USAGE
    assert "is a folder" in capsys.readouterr().err
    check_output_path(tmp_path / "new" / "deeper" / "r.jsonl", "--out", text_file=True)  # created on first write


def test_table_formats_and_notes():
    reason = "torch_tensorrt is not installed."
    rows = [
        _row(),
        _row(backend="tensorrt", status="unavailable", reason=reason, latency_ms=None, throughput_ips=None),
        _row(
            backend="tensorrt", batch_size=1, status="unavailable", reason=reason, latency_ms=None, throughput_ips=None
        ),
        _row(batch_size=256, status="oom", reason="Out of memory at batch 256.", latency_ms=None, throughput_ips=None),
    ]
    table = render_table(rows, "github", ["all"])
    lines = table.splitlines()
    assert lines[0].startswith("| model") and "p99 ms" in lines[0] and "img/s" in lines[0]
    assert "| 28.29 " in lines[2] and "| 4.51 " in lines[2] and "| 800.0 " in lines[2]
    assert table.count("unavailable [1]") == 2 and "oom [2]" in table  # identical reasons share one note
    assert lines[-2:] == [f"[1] {reason}", "[2] Out of memory at batch 256."]
    assert "\\begin{tabular}" in render_table(rows, "latex")
    csv_lines = render_table(rows, "csv").splitlines()
    assert csv_lines[0].startswith("model,mode,backend,precision,batch_size,input_size")
    assert len(csv_lines) == 5 and ",224x224," in csv_lines[1] and ",15.0," in csv_lines[1]
    assert status_summary(rows) == "4 rows: 1 ok, 1 oom, 2 unavailable"


def test_terminal_table_shows_only_columns_with_values():
    header = render_table([_row()], "github", ["all"]).splitlines()[0]
    assert "p50 ms" in header and "img/s" in header
    for empty in ("top-1", "top-5", "compile s", "breaks", "vs eager", "p95 ms", "| mode ", "| device "):
        assert empty not in header
    rows = [
        _row(),
        _row(backend="compile", compile_s=2.5, graph_breaks=0, diff_vs_eager_rel=3e-7, mode="train", tf32=True),
    ]
    table = render_table(rows, "github", ["all"])
    header = table.splitlines()[0]
    for shown in ("compile s", "breaks", "vs eager", "| mode "):
        assert shown in header
    assert "| train " in table and "fp32 +tf32" in table and "3.0e-07" in table
    assert "top1" in render_table([_row()], "csv").splitlines()[0]  # CSV keeps every field


def test_timm_csv_has_timm_columns_and_merges_infer_and_train():
    rows = [
        _row(throughput_ips=812.3456, latency_ms={"mean": 9.87654}),
        _row(mode="train", throughput_ips=201.0, latency_ms={"mean": 39.8}),
        _row(model="rmt_t", params=14_334_216, gmacs=2.651, throughput_ips=900.0, latency_ms={"mean": 8.9}),
        _row(model="rmt_t", batch_size=1, status="oom"),
    ]
    lines = list(csv.DictReader(io.StringIO(render_table(rows, "timm"))))
    assert list(lines[0])[:11] == [
        "model",
        "infer_samples_per_sec",
        "infer_step_time",
        "infer_batch_size",
        "infer_img_size",
        "infer_gmacs",
        "train_samples_per_sec",
        "train_step_time",
        "train_batch_size",
        "train_img_size",
        "param_count",
    ]
    swin, rmt = lines
    assert (
        swin["model"] == "swin_t" and swin["infer_samples_per_sec"] == "812.35" and swin["infer_step_time"] == "9.877"
    )
    assert swin["infer_img_size"] == "224" and swin["infer_gmacs"] == "4.51" and swin["param_count"] == "28.29"
    assert swin["train_samples_per_sec"] == "201.0" and swin["train_batch_size"] == "8"
    assert rmt["param_count"] == "14.33" and rmt["train_step_time"] == ""  # the oom row is left out
    only_infer = render_table([_row()], "timm").splitlines()[0]
    assert "train_" not in only_infer


def test_table_order():
    rows = [
        _row(model="b", batch_size=8),
        _row(model="a"),
        _row(model="b", batch_size=1),
        _row(model="b", backend="compile"),
    ]
    assert [(r["model"], r["backend"], r["batch_size"]) for r in table_order(rows)] == [
        ("b", "eager", 1),
        ("b", "eager", 8),
        ("a", "eager", 8),
        ("b", "compile", 8),
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
        (["--models", "swin_t", "--input-size", "224x"], "expects N, HxW or timm's C H W"),
        (["--models", "swin_t", "--input-size", "3"], "outside 16..16384 pixels"),
        (["--models", "swin_t", "--input-size", "99999999999999999999"], "outside 16..16384 pixels"),
        (["--models", "swin_t", "--input-size", "1", "224", "224"], "take 3 channels, not 1"),
        (["--models", "swin_t", "--img-size", "224", "--input-size", "224"], "either --img-size or --input-size"),
        (["--models", "swin_t", "--batch-size", "99999999999"], "too large"),
        (["--models", "swin_t", "--timeout", "-5"], "expected a positive number of seconds, got '-5'"),
        (["--models", "swin_t", "--timeout", "nan"], "expected a positive number of seconds"),
        (["--models", "nope_*"], "matches no model"),
        (["--models", "swin_t", "--model-kwargs", "attn_impl"], "key=value pairs"),
        (["--models", "swin_t", "--bench", "train", "--precision", "fp16"], "not fp16"),
        (["--models", "swin_t", "--bench", "train", "--features-only"], "drop --features-only"),
        (["--model-list", "/no/list.txt"], "cannot be read"),
        (["--models", "swin_t", "--data", "/no/such/folder"], "does not exist"),
        (["--models", "swin_t", "--device", "cuda"], "no CUDA device"),
        (["--models", "swin_t", "--backend", "onnx"], "invalid choice: 'onnx'"),
        (["--models", "swin_t", "--import", "json.decoder.nope"], "ModuleNotFoundError"),
        (["--models", "swin_t", "--precision", "fp8"], "expected one of fp32"),
        (["--models", "swin_t", "rmt_t", "--checkpoint", "/x.pth"], "names no model"),
        (["--models", "swin_t", "--checkpoint", "/no/file.pth"], "does not exist"),
        (["--models", "swin_t", "--import", "no_such_module_xyz"], "no_such_module_xyz"),
        (["report", "/no/results.jsonl"], "does not exist"),
        (["report", "/"], "is a folder"),
        (["--models", "swin_t", "--tf32"], "this run is on cpu"),
        (["--models", "swin_t", "--grad-checkpointing"], "applies to training steps"),
        (["--models", "swin_t", "--threads", "1000"], "more than the"),
        (["--models", "swin_t", "--compile-mode", "max-autotune"], "applies to the compile backend"),
        (["--models", "swin_t", "--trt-min-block-size", "0"], "expected a positive integer, got '0'"),
        (["--models", "swin_t", "--plot", "plot.xyz"], "no image extension"),
        (["--models", "swin_t", "--out", "same.jsonl", "--plot", "same.jsonl"], "are the same file"),
        (["--models", "swin_t", "--columns", "p50", "nope"], "invalid choice: 'nope'"),
    ],
)
def test_bad_arguments_give_one_sentence_and_exit_2(argv, message, capsys):
    assert cli.main(argv) == cli.EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err


@pytest.mark.parametrize("body", ["raise RuntimeError('boom')", "raise SystemExit(3)", "1/0", "raise KeyError('k')"])
def test_import_of_a_module_that_raises_is_one_sentence(body, tmp_path, monkeypatch, capsys):
    (tmp_path / "bad_registry.py").write_text(body + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cli.main(["--models", "swin_t", "--import", "bad_registry"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: --import bad_registry failed: ")


def test_timm_style_arguments(tmp_path):
    grid = lambda *argv: cli.grid(cli.parse_run_args(["--out", str(tmp_path / "r.jsonl"), *argv]))  # noqa: E731
    assert {s.input_size for s in grid("--models", "swin_t", "--input-size", "3", "224", "224")} == {(224, 224)}
    assert {s.input_size for s in grid("--models", "swin_t", "--input-size", "224", "256x320")} == {
        (224, 224),
        (256, 320),
    }
    assert {s.input_size for s in grid("--models", "swin_t", "--img-size", "192")} == {(192, 192)}
    assert [s.model for s in grid("--models", "swin_*", "rmt_t", "--batch-size", "1")] == [
        "swin_b",
        "swin_s",
        "swin_t",
        "rmt_t",
    ]
    listing = tmp_path / "models.txt"
    listing.write_text("# my models\nrmt_t\n\nmaxvit_t  # timm\n")
    assert [s.model for s in grid("--model-list", str(listing), "--batch-size", "1")] == ["rmt_t", "maxvit_t"]
    [spec] = grid("--models", "rmt_t", "--batch-size", "1", "--model-kwargs", "attn_impl=flex", "drop_path_rate=0.2")
    assert dict(spec.model_kwargs) == {"attn_impl": "flex", "drop_path_rate": 0.2}
    assert spec.fields()["model_kwargs"] == {"attn_impl": "flex", "drop_path_rate": 0.2}
    assert {s.precision for s in grid("--models", "swin_t", "--precision", "amp")} == {"amp-fp16"}  # timm's meaning
    sweep = grid(
        "--models",
        "swin_t",
        "--backend",
        "eager",
        "compile",
        "--compile-mode",
        "default",
        "reduce-overhead",
        "max-autotune",
        "--batch-size",
        "1",
    )  # CUDA graphs per row: compile's modes are a sweep, recorded
    assert [(s.backend, s.backend_options) for s in sweep] == [
        ("eager", ()),
        ("compile", ()),
        ("compile", (("mode", "reduce-overhead"),)),
        ("compile", (("mode", "max-autotune"),)),
    ]
    assert len({s.key(None) for s in sweep}) == 4
    specs = grid("--models", "swin_t", "--bench", "both", "--batch-size", "2", "--grad-checkpointing")
    assert [(s.mode, s.grad_checkpointing) for s in specs] == [("infer", False), ("train", True)]
    assert specs[0].key(None) != specs[1].key(None) and specs[0].worker_key() != specs[1].worker_key()


def test_grid_and_presets():
    args = cli.parse_run_args([])
    assert args.preset == "quick" and args.device == "cpu" and args.models == ["rmt_t", "swin_t"] and args.threads == 1
    assert cli.parse_run_args(["--out", "x.jsonl", "--batch-size", "2"]).models == ["rmt_t", "swin_t"]
    specs = cli.grid(args)
    assert len(specs) == 2 * 2 * 2
    assert {(s.backend, s.backend_options) for s in specs} == {("eager", ()), ("compile", ())}  # compile's default mode
    args = cli.parse_run_args(["--models", "internimage_l", "swin_t", "--precision", "autocast", "--batch-size", "4"])
    assert args.out == cli.DEFAULT_RESULTS
    assert [(s.model, s.input_size, s.precision) for s in cli.grid(args)] == [
        ("internimage_l", (384, 384), "amp-bf16"),
        ("swin_t", (224, 224), "amp-bf16"),
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


# ------------------------------------------------------------------------------------- output check, ONNX, train


def test_output_difference_flags_a_backend_that_computes_something_else():
    ref = torch.randn(4, 10)
    same = output_difference(ref, ref + 1e-7, _spec("compile"))
    assert "status" not in same and same["diff_vs_eager_max_abs"] == pytest.approx(1e-7, rel=0.2)
    assert same["diff_tolerance_rel"] == 1e-4
    wrong = output_difference(ref, ref.flip(0), _spec("tensorrt"))
    assert wrong["status"] == "mismatch" and wrong["reason"].startswith("Output differs from eager by")
    assert output_difference(ref, ref * float("nan"), _spec("compile"))["status"] == "mismatch"
    loose = output_difference([ref, ref], [ref, ref * 1.01], _spec("compile", "bf16"))  # features_only: every stage
    assert "status" not in loose and loose["diff_vs_eager_rel"] == pytest.approx(0.01, rel=0.05)
    assert output_difference(ref, ref * 1.002, _spec("compile", tf32=True))["diff_tolerance_rel"] == 5e-3


def test_onnxruntime_runs_the_exported_graph_on_cpu():
    model, x = zoo.load("test_convnext"), torch.randn(2, 3, 64, 64)
    spec = _spec("onnxruntime")
    with torch.no_grad():
        prepared = OnnxRuntime().prepare(model, x, spec)
        out, ref = prepared.forward(x), model(x)
    assert out.shape == ref.shape and "status" not in output_difference(ref, out, spec)
    assert prepared.info["ort_provider"] == "CPUExecutionProvider" and prepared.info["onnx_nodes"] > 0
    assert prepared.info["onnx_opset"] >= 17 and prepared.compile_s >= prepared.info["export_s"] > 0
    with pytest.raises(RuntimeError, match="^torch.onnx.export failed"):
        OnnxRuntime().prepare(_Branchy().eval(), torch.randn(2, 8), spec)


def test_backend_map_names_every_backend_once():
    assert list(BACKENDS) == ["eager", "compile", "tensorrt", "onnxruntime"]
    assert make_backend("tensorrt", {"min_block_size": 3}).options == TensorRTOptions(min_block_size=3)
    parser = cli.build_parser()
    assert set(parser._option_string_actions["--backend"].choices) == set(BACKENDS)
    for flag in ("--compile-mode", "--trt-min-block-size", "--onnx-opset"):  # each declared by its backend's Options
        assert flag in parser._option_string_actions


@pytest.mark.parametrize("precision", ["fp32", "amp-bf16"])
def test_training_step_updates_the_weights_in_train_mode(precision):
    model = zoo.load("test_convnext", drop_path_rate=0.1)
    x = torch.randn(2, 3, 64, 64)
    before = [p.detach().clone() for p in model.parameters()]
    step, fields = training_step(model, Eager(), _spec("eager", precision, mode="train"), x)
    step()
    assert model.training and fields["optimizer"] == "SGD(lr=1e-4)" and fields["grad_scaler"] is False
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert _drop_path_rate(model) == pytest.approx(0.1)


def test_fp16_training_uses_a_grad_scaler_and_checkpointing_needs_model_support():
    _, fields = training_step(
        zoo.load("test_convnext"), Eager(), _spec("eager", "amp-fp16", mode="train"), torch.randn(2, 3, 64, 64)
    )
    assert fields["grad_scaler"] is True
    with pytest.raises(Unavailable, match="has no set_grad_checkpointing"):
        training_step(
            nn.Sequential(nn.Flatten(), nn.Linear(12, 3)),
            Eager(),
            _spec("eager", mode="train", grad_checkpointing=True),
            torch.randn(2, 3, 2, 2),
        )


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


# ----------------------------------------------------------------------------------------------- packaging


def test_the_wheel_ships_zoo_hub_and_bench_and_the_console_scripts():
    import importlib
    import tomllib

    import setuptools

    repo = Path(__file__).resolve().parents[1]
    config = tomllib.loads((repo / "pyproject.toml").read_text())
    packages = setuptools.find_packages(str(repo), include=config["tool"]["setuptools"]["packages"]["find"]["include"])
    assert {p.split(".")[0] for p in packages} == {
        "zoo",
        "hub",
        "bench",
    }  # not benchmarks/ (matched by a bare "bench*")
    scripts = config["project"]["scripts"]
    assert set(scripts) == {"rmt-bench", "rmt-hub"}
    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function))
    assert "onnxruntime" in " ".join(config["project"]["optional-dependencies"]["onnx"])
