"""Command line: `bench.py [options]` measures, `bench.py report RESULTS` renders saved rows.

Exit codes: 0 every row ok; 2 bad arguments; 3 some backend unavailable here (all other rows ok);
4 some row ran out of memory, failed or disagreed with eager; 130 / 143 stopped by Ctrl-C / SIGTERM (rows already
measured are kept).
"""
from __future__ import annotations

import argparse
import ast
import fnmatch
import importlib
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence

from .backends import BACKENDS
from .report import FORMATS, plot, render_table, status_summary, table_order
from .paths import OutputPathError, check_output_path
from .results import latest_rows, load_results
from .spec import COMPILE_MODES, MODES, PRECISION_ALIASES, PRECISIONS, TRAIN_PRECISIONS, RowSpec, Settings

EXIT_OK, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_FAILED = 0, 2, 3, 4
EXIT_INTERRUPTED = {"SIGINT": 128 + signal.SIGINT, "SIGTERM": 128 + signal.SIGTERM}
DEFAULT_RESULTS = "bench_results/results.jsonl"
MIN_SIDE, MAX_SIDE = 16, 16384  # below 16 pixels no model here has a feature map left; above, tensors overflow

# `python bench.py` with no arguments: a small CPU comparison that finishes in a few minutes. One thread, because
# on a shared machine OpenMP threads that compete for cores can slow a step twentyfold; --threads overrides it.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "models": ["rmt_t", "swin_t"],
        "backend": ["eager", "compile"],
        "precision": ["fp32"],
        "batch_size": [1, 8],
        "device": "cpu",
        "threads": 1,
        "warmup": 3,
        "iters": 20,
    },
}


class UsageError(Exception):
    """Bad arguments; the message is the one sentence the user sees."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one sentence (UsageError) instead of usage text."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message[0].upper() + message[1:] + ("" if message.endswith(".") else "."))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value > 1_000_000:
        raise argparse.ArgumentTypeError(f"{text} is too large (at most 1000000)")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _side(text: str, given: str) -> int:
    if not text.isdigit():
        raise UsageError(f"--input-size expects N, HxW or timm's C H W with whole numbers, got {given!r}.")
    value = int(text)
    if not MIN_SIDE <= value <= MAX_SIDE:
        raise UsageError(f"--input-size {given} is outside {MIN_SIDE}..{MAX_SIDE} pixels per side.")
    return value


def input_sizes(values: list[str]) -> list[tuple[int, int]]:
    """`--input-size` values: N or HxW each, or timm's `C H W` (three plain numbers, the first a channel count)."""
    if len(values) == 3 and all(v.isdigit() for v in values) and int(values[0]) <= 4:
        if int(values[0]) != 3:
            raise UsageError(f"--input-size {' '.join(values)} reads as timm's C H W, and these models take 3 channels, not {values[0]}.")
        given = " ".join(values)
        return [(_side(values[1], given), _side(values[2], given))]
    sizes = []
    for value in values:
        parts = value.lower().split("x")
        if len(parts) not in (1, 2):
            raise UsageError(f"--input-size expects N, HxW or timm's C H W with whole numbers, got {value!r}.")
        h, w = [_side(p, value) for p in parts] * (2 if len(parts) == 1 else 1)
        sizes.append((h, w))
    return sizes


def model_kwargs(values: list[str]) -> dict[str, Any]:
    """timm's `--model-kwargs k=v ...`: values read as Python literals where they are one (0.1, True), else strings."""
    kwargs = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"--model-kwargs expects key=value pairs, got {value!r}.")
        try:
            kwargs[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            kwargs[key] = text
    return kwargs


def expand_models(names: list[str]) -> list[str]:
    """Model names with shell wildcards expanded: this zoo's names first, else timm's."""
    import timm
    import zoo

    models: list[str] = []
    for name in names:
        if not any(c in name for c in "*?["):
            models.append(name)
            continue
        found = zoo.list_models(name) or timm.list_models(name)
        if not found:
            raise UsageError(f"--models {name!r} matches no model in this zoo or in timm.")
        models += found
    return list(dict.fromkeys(models))


def _model_list(path: str) -> list[str]:
    """timm's --model-list: a text file of names (or wildcards), one per line; blank lines and # comments skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--model-list {path!r} cannot be read ({getattr(exc, 'strerror', None) or type(exc).__name__}).") from None
    names = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
    names = [n for n in names if n]
    if not names:
        raise UsageError(f"--model-list {path!r} names no model.")
    return names


def _precision(text: str) -> str:
    value = PRECISION_ALIASES.get(text, text)
    if value not in PRECISIONS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(PRECISIONS)} or autocast, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="bench.py",
        description="Benchmark zoo models: params, GMACs, latency, throughput, memory, compile time, accuracy.",
        epilog="`bench.py report RESULTS.jsonl` renders saved results. Without --models, --preset quick fills what is not given. "
        "Exit codes: 0 all rows ok, 2 bad arguments, 3 a backend is unavailable here, 4 a row ran out of memory or failed.",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), help="named settings; explicit options override them")
    p.add_argument("--models", "-m", nargs="+", metavar="NAME", help="zoo or timm model names; wildcards such as 'swin_*'")
    p.add_argument("--model-list", metavar="FILE", help="a file of model names, one per line (timm's --model-list)")
    p.add_argument("--model-kwargs", nargs="+", default=[], metavar="K=V", help="passed to the model builder, e.g. attn_impl=flex")
    p.add_argument("--bench", choices=(*MODES, "both"), default="infer", help="time inference (default), a training step, or both")
    p.add_argument("--backend", "-b", nargs="+", choices=tuple(BACKENDS), help="default: eager")
    p.add_argument("--precision", "-p", nargs="+", type=_precision, metavar="P",
                   help=f"{', '.join(PRECISIONS)}; amp = amp-fp16 as in timm, autocast = amp-bf16 (default fp32)")
    p.add_argument("--batch-size", nargs="+", type=_positive_int, metavar="N", help="batch sweep (default: 1 256 on cuda, 1 8 on cpu)")
    p.add_argument("--input-size", nargs="+", metavar="SIZE", help="N or HxW each, or timm's C H W (default: each model's own)")
    p.add_argument("--img-size", type=int, metavar="N", help="timm's square input size, same as --input-size N")
    p.add_argument("--features-only", action="store_true", help="benchmark the dense-prediction backbone (stage outputs)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--tf32", action="store_true", help="TF32 matmuls/convolutions and cudnn.benchmark, as timm's benchmark.py on a GPU")
    p.add_argument("--grad-checkpointing", action="store_true", help="train mode: gradient checkpointing where the model has it")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, default=None, help="torch.compile mode (default: default)")
    p.add_argument("--trt-min-block-size", type=_positive_int, metavar="N", help="TensorRT: smallest op island converted (default 5)")
    p.add_argument("--onnx-opset", type=_positive_int, metavar="N", help="ONNX Runtime: opset to export (default torch.onnx's)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--threads", type=_positive_int, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--warmup", type=int, help="untimed iterations per row (default 10)")
    p.add_argument("--iters", type=_positive_int, help="timed iterations per row (default 50)")
    p.add_argument("--no-flops", action="store_true", help="skip the GMAC count")
    p.add_argument("--data", metavar="DIR", help="ImageFolder-layout dataset for top-1/top-5")
    p.add_argument("--max-samples", type=_positive_int, metavar="N", help="evaluate at most N images (spread over the set)")
    p.add_argument("--pretrained", action="store_true", help="load each model's Hub weights")
    p.add_argument("--checkpoint", nargs="+", metavar="[NAME=]PATH", default=[], help="local weights, per model")
    p.add_argument("--import", dest="imports", nargs="+", metavar="MODULE", default=[], help="modules that register extra models")
    p.add_argument("--out", metavar="FILE", help=f"results JSONL, appended to (default {DEFAULT_RESULTS})")
    p.add_argument("--resume", action="store_true", help="skip rows already measured (status ok or oom) in --out")
    p.add_argument("--timeout", type=_positive_float, default=1800.0, metavar="S", help="seconds per worker process before it is killed")
    p.add_argument("--format", default="github", choices=FORMATS, metavar="FMT", help="table format: csv, timm (timm's benchmark CSV) or any tabulate format")
    p.add_argument("--plot", metavar="PNG", help="save accuracy vs throughput")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="show worker output")
    return p


def _report_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="bench.py report", description="Render saved benchmark results.")
    p.add_argument("results", nargs="+", metavar="RESULTS", help="results JSONL files, read in order")
    p.add_argument("--format", default="github", choices=FORMATS, metavar="FMT", help="csv, timm (timm's benchmark CSV) or any tabulate format")
    p.add_argument("--plot", metavar="PNG")
    p.add_argument("--all", action="store_true", help="every row, not only the newest per measurement")
    return p


def _checkpoints(values: list[str], models: list[str]) -> dict[str, str]:
    mapping = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            if len(models) != 1:
                raise UsageError(f"--checkpoint {value!r} names no model; write NAME=PATH when benchmarking several models.")
            name, path = models[0], value
        if name not in models:
            raise UsageError(f"--checkpoint names {name!r}, which is not among --models.")
        if not Path(path).is_file():
            raise UsageError(f"Checkpoint file {path!r} does not exist.")
        mapping[name] = path
    return mapping


def _resolve_device(requested: str | None) -> str:
    import torch

    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UsageError(f"Unknown device {requested!r}; use cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {requested} was asked for but torch sees no CUDA device here.")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"Device {requested!r} is not supported; use cpu, cuda or cuda:N.")
    return requested


def grid(args: argparse.Namespace) -> list[RowSpec]:
    """Every row the arguments ask for, in the order they will run."""
    import zoo

    modes = list(MODES) if args.bench == "both" else [args.bench]
    kwargs = tuple(args.model_kwargs.items())
    specs = []
    for model in args.models:
        sizes = args.input_size or [tuple(zoo.info(model).input_size[1:])]
        for mode in modes:
            for backend in args.backend:
                for precision in args.precision:
                    for size in sizes:
                        for batch in args.batch_size:
                            specs.append(RowSpec(
                                model=model, backend=backend, precision=precision, batch_size=batch, input_size=tuple(size),
                                device=args.device, channels_last=args.channels_last, features_only=args.features_only,
                                compile_mode=(args.compile_mode or "default") if backend == "compile" else None,
                                mode=mode, tf32=args.tf32, model_kwargs=kwargs, grad_checkpointing=args.grad_checkpointing and mode == "train",
                            ))
    return specs


def parse_run_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse and validate; every problem becomes a UsageError with one sentence."""
    args = build_parser().parse_args(argv)
    if args.preset is None and args.models is None and args.model_list is None:
        args.preset = "quick"
    for key, value in PRESETS.get(args.preset, {}).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for module in args.imports:
        try:
            importlib.import_module(module)
        except (Exception, SystemExit) as exc:  # a module that raises anything on import is the user's to fix; say what
            raise UsageError(f"--import {module} failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else 'no message'}.") from None
    import zoo

    if args.model_list:
        args.models = [*(args.models or []), *_model_list(args.model_list)]
    args.models = expand_models(args.models)
    args.model_kwargs = model_kwargs(args.model_kwargs)
    if args.img_size is not None:
        if args.input_size:
            raise UsageError("Give either --img-size or --input-size, not both.")
        args.input_size = [str(args.img_size)]
    args.input_size = input_sizes(args.input_size) if args.input_size else None
    for model in args.models:
        try:
            zoo.info(model)
        except zoo.UnknownModelError as exc:
            raise UsageError(str(exc)) from None
    args.device = _resolve_device(args.device)
    args.backend = args.backend or ["eager"]
    args.precision = args.precision or ["fp32"]
    args.batch_size = args.batch_size or ([1, 256] if args.device.startswith("cuda") else [1, 8])
    if args.warmup is not None and args.warmup < 0:
        raise UsageError(f"--warmup must be 0 or more, got {args.warmup}.")
    if args.data:
        from .accuracy import DataError, check_data_dir

        try:
            check_data_dir(args.data)
        except DataError as exc:
            raise UsageError(str(exc)) from None
    if args.checkpoint and args.pretrained:
        raise UsageError("Use either --pretrained or --checkpoint, not both.")
    if args.bench != "infer":
        if args.features_only:
            raise UsageError("--bench train times classification training; drop --features-only.")
        cast = [p for p in args.precision if p not in TRAIN_PRECISIONS]
        if cast:
            raise UsageError(f"--bench train runs {', '.join(TRAIN_PRECISIONS)} (autocast keeps fp32 weights), not {cast[0]}.")
    args.checkpoints = _checkpoints(args.checkpoint, args.models)
    args.out = args.out or DEFAULT_RESULTS
    check_outputs([(args.out, "--out", True), (args.plot, "--plot", False)])
    return args


def check_outputs(paths: list[tuple[str | None, str, bool]]) -> None:
    """Every (path, option, is-results-file) given must be writable, checked before anything is measured."""
    for path, option, text_file in paths:
        if path:
            try:
                check_output_path(path, option, text_file=text_file)
            except OutputPathError as exc:
                raise UsageError(str(exc)) from None


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        warmup=10 if args.warmup is None else args.warmup,
        iters=args.iters or 50,
        threads=args.threads,
        flops=not args.no_flops,
        data=str(Path(args.data).resolve()) if args.data else None,
        max_samples=args.max_samples,
        pretrained=args.pretrained,
        checkpoints={k: str(Path(v).resolve()) for k, v in args.checkpoints.items()},
        imports=tuple(args.imports),
        timeout_s=args.timeout,
        backend_options={
            "tensorrt": {"min_block_size": args.trt_min_block_size} if args.trt_min_block_size else {},
            "onnxruntime": {"opset": args.onnx_opset} if args.onnx_opset else {},
        },
    )


def exit_code(rows: list[dict[str, Any]]) -> int:
    statuses = {r.get("status") for r in rows}
    if statuses & {"oom", "error", "mismatch"}:
        return EXIT_FAILED
    return EXIT_UNAVAILABLE if "unavailable" in statuses else EXIT_OK


def _show(rows: list[dict[str, Any]], fmt: str, plot_path: str | None) -> None:
    print(render_table(rows, fmt), end="" if fmt in ("csv", "timm") else "\n")
    if plot_path:
        saved = plot(rows, plot_path)
        print(f"plot: {plot_path}" if saved else "plot: no row has both a throughput and a (measured or paper) top-1", file=sys.stderr)


def run_main(argv: Sequence[str]) -> int:
    from .runner import Interrupted, run

    args = parse_run_args(argv)
    out = args.out
    command = shlex.join(["python", "bench.py", *argv])
    try:
        rows = run(grid(args), settings_from(args), out, command, resume=args.resume, progress=not args.quiet, verbose=args.verbose)
    except (KeyboardInterrupt, Interrupted) as exc:
        name = str(exc) if isinstance(exc, Interrupted) else "SIGINT"
        print(f"\nstopped by {name}: the worker was ended and the rows measured so far are kept in {out} (--resume continues).", file=sys.stderr)
        return EXIT_INTERRUPTED[name]
    _show(rows, args.format, args.plot)
    print(f"{status_summary(rows)}; results in {out}", file=sys.stderr)
    return exit_code(rows)


def report_main(argv: Sequence[str]) -> int:
    args = _report_parser().parse_args(argv)
    rows = []
    for path in args.results:
        if not os.path.isfile(path):
            raise UsageError(f"Results file {path!r} does not exist.")
    check_outputs([(args.plot, "--plot", False)])
    for path in args.results:
        try:
            rows += load_results(path)
        except OSError as exc:
            raise UsageError(f"Results file {path!r} cannot be read ({exc.strerror or exc}).") from None
    rows = table_order(rows if args.all else latest_rows(rows))
    if not rows:
        names = " and ".join(repr(p) for p in args.results)
        raise UsageError(f"Results file {names} holds no benchmark rows.")
    _show(rows, args.format, args.plot)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return report_main(argv[1:]) if argv[:1] == ["report"] else run_main(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\nstopped by SIGINT.", file=sys.stderr)
        return EXIT_INTERRUPTED["SIGINT"]
