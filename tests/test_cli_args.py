"""bench.py's arguments in this process (bench/cli.py): one-sentence usage errors, timm-style options, the grid,
presets and exit codes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from bench import cli
from bench.args import EXIT_FAILED, EXIT_UNAVAILABLE, exit_code
from common.cli import EXIT_OK, EXIT_USAGE, UsageError
from common.paths import check_output_path


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
        assert cli.main(["--models", "test_convnext", *argv]) == EXIT_USAGE
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (argv, err)
    assert cli.main(["report", str(tmp_path / "binary.jsonl"), "--plot", str(tmp_path)]) == EXIT_USAGE
    assert "is a folder" in capsys.readouterr().err
    check_output_path(tmp_path / "new" / "deeper" / "r.jsonl", "--out", text_file=True)  # created on first write


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
        (["--models", "swin_t", "--columns", "p50", "nope"], "--columns: Unknown column 'nope'"),
    ],
)
def test_bad_arguments_give_one_sentence_and_exit_2(argv, message, capsys):
    assert cli.main(argv) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err


@pytest.mark.parametrize("body", ["raise RuntimeError('boom')", "raise SystemExit(3)", "1/0", "raise KeyError('k')"])
def test_import_of_a_module_that_raises_is_one_sentence(body, tmp_path, monkeypatch, capsys):
    (tmp_path / "bad_registry.py").write_text(body + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cli.main(["--models", "swin_t", "--import", "bad_registry"]) == EXIT_USAGE
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
    assert args.preset == "quick" and args.device == "cpu" and args.models == ["rmt_t", "swin_t"]
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


def test_exit_codes(make_row):
    assert exit_code([make_row()]) == EXIT_OK
    assert exit_code([make_row(), make_row(status="unavailable")]) == EXIT_UNAVAILABLE
    assert exit_code([make_row(status="unavailable"), make_row(status="oom")]) == EXIT_FAILED
    assert exit_code([make_row(status="error")]) == EXIT_FAILED


def test_a_preset_row_and_the_same_row_asked_for_explicitly_are_one_measurement(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)  # torch's default, whatever this machine's
    preset = cli.grid(cli.parse_run_args([]))
    explicit = cli.parse_run_args(["--models", "rmt_t", "swin_t", "--device", "cpu", "--backend", "eager", "compile"])
    explicit.batch_size = [1, 8]
    assert [s.key(None) for s in preset] == [s.key(None) for s in cli.grid(explicit)]
    assert {s.threads for s in preset} == {3}  # the real count, never None
    assert "default, presets included: torch's own" in " ".join(cli.build_parser().format_help().split())


def test_pretrained_rows_record_the_hub_repo_and_revision(monkeypatch):
    monkeypatch.setenv("ZOO_HUB_REVISION", "v1")
    (spec,) = cli.grid(cli.parse_run_args(["--models", "swin_t", "--pretrained", "--batch-size", "1"]))
    assert spec.weights == "hub:timm/swin_tiny_patch4_window7_224.ms_in1k@v1" and spec.pretrained() is True
    (spec,) = cli.grid(cli.parse_run_args(["--models", "swin_t", "--batch-size", "1"]))
    assert spec.weights == "random init" and spec.pretrained() is False


# The flags of timm's benchmark.py that bench.py takes with timm's meaning (tests/fixtures/timm_benchmark_args.json:
# timm's own argument list, read from the commit it records).
TIMM_FLAGS = (
    "--model",
    "-m",
    "-b",
    "--batch-size",
    "--amp",
    "--amp-dtype",
    "--precision",
    "--torchcompile",
    "--torchcompile-mode",
    "--num-warm-iter",
    "--num-bench-iter",
    "--results-file",
    "--model-list",
    "--model-kwargs",
    "--img-size",
    "--input-size",
    "--channels-last",
    "--grad-checkpointing",
    "--device",
    "--bench",
)


def _timm_arguments() -> dict[str, dict]:
    listing = json.loads((Path(__file__).parent / "fixtures" / "timm_benchmark_args.json").read_text())
    return {flag: arg for arg in listing["arguments"] for flag in arg["flags"]}


def test_timm_flags_are_bench_flags_of_the_same_shape():
    timm_args = _timm_arguments()
    ours = {s: a for a in cli.build_parser()._actions for s in a.option_strings}
    for flag in TIMM_FLAGS:
        assert flag in timm_args, flag  # the list above is timm's
        assert flag in ours, flag
        timm_arg, action = timm_args[flag], ours[flag]
        assert set(timm_arg["flags"]) <= set(action.option_strings), flag  # the short and long names go together
        if timm_arg.get("action") == "'store_true'":
            assert action.nargs == 0, flag
        elif timm_arg.get("nargs") == "'?'":
            assert action.nargs == "?" and repr(action.const) == timm_arg["const"], flag


def test_timm_flags_mean_what_they_mean_in_timm(tmp_path):
    argv = ["--model", "swin_t", "-b", "2", "--amp", "--amp-dtype", "bfloat16", "--torchcompile"]
    argv += ["--num-warm-iter", "1", "--num-bench-iter", "3", "--results-file", str(tmp_path / "t.csv")]
    args = cli.parse_run_args(argv)
    assert args.models == ["swin_t"] and args.batch_size == [2] and args.precision == ["amp-bf16"]
    assert args.backend == ["compile"] and (args.warmup, args.iters) == (1, 3)
    assert args.results_file == str(tmp_path / "t.csv")
    assert cli.parse_run_args(["--model", "swin_t", "--amp"]).precision == ["amp-fp16"]  # timm's default dtype
    for name, ours in (("amp_bfloat16", "amp-bf16"), ("amp_float16", "amp-fp16"), ("float32", "fp32")):
        assert cli.parse_run_args(["--model", "swin_t", "--precision", name]).precision == [ours]
    [spec] = cli.grid(cli.parse_run_args(["--model", "swin_t", "-b", "1", "--torchcompile", "max-autotune"]))
    assert (spec.backend, spec.backend_options) == ("compile", (("mode", "max-autotune"),))
    [spec] = cli.grid(
        cli.parse_run_args(["--model", "swin_t", "-b", "1", "--torchcompile", "--torchcompile-mode", "reduce-overhead"])
    )
    assert (spec.backend, spec.backend_options) == ("compile", (("mode", "reduce-overhead"),))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--amp-dtype", "bfloat16"], "add --amp, or give --precision amp_bfloat16"),
        (["--amp", "--precision", "fp32"], "either --amp (timm's) or --precision"),
        (["--torchcompile", "aot_eager"], "--torchcompile takes inductor"),
        (["--torchcompile", "max-autotune", "--compile-mode", "default"], "Give the compile mode once"),
    ],
)
def test_timm_flags_that_cannot_mean_what_they_say_are_refused(argv, message, capsys):
    assert cli.main(["--model", "swin_t", *argv]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_checkpoint_takes_what_zoo_load_takes(tmp_path, rmt_converted):
    [spec] = cli.grid(cli.parse_run_args(["--model", "rmt_t", "-b", "1", "--checkpoint", str(rmt_converted)]))
    assert spec.weights == str(rmt_converted.resolve()) and spec.pretrained() == str(rmt_converted.resolve())
    [spec] = cli.grid(cli.parse_run_args(["--model", "rmt_t", "-b", "1", "--checkpoint", f"rmt_t={rmt_converted}"]))
    assert spec.weights == str(rmt_converted.resolve())
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="is a folder with neither model.safetensors nor pytorch_model.bin"):
        cli.parse_run_args(["--model", "rmt_t", "--checkpoint", str(tmp_path / "empty")])
