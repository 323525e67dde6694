"""Command line: `bench.py [options]` measures, `bench.py report RESULTS` renders saved rows.

Exit codes: 0 every row ok; 2 bad arguments; 3 some backend unavailable here (all other rows ok);
4 some row ran out of memory or failed.
"""
from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence

from .report import FORMATS, plot, render_table, status_summary, table_order
from .results import latest_rows, load_results
from .spec import BACKENDS, COMPILE_MODES, PRECISION_ALIASES, PRECISIONS, RowSpec, Settings

EXIT_OK, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_FAILED = 0, 2, 3, 4
DEFAULT_RESULTS = "bench_results/results.jsonl"

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
    return value


def _input_size(text: str) -> tuple[int, int]:
    """'224' or 'HxW' such as '800x1344'."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected N or HxW with positive integers, got {text!r}")
    h, w = (int(parts[0]),) * 2 if len(parts) == 1 else map(int, parts)
    return h, w


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
    p.add_argument("--models", "-m", nargs="+", metavar="NAME", help="zoo or timm model names")
    p.add_argument("--backend", "-b", nargs="+", choices=BACKENDS, help="default: eager")
    p.add_argument("--precision", "-p", nargs="+", type=_precision, metavar="P", help=f"{', '.join(PRECISIONS)}; autocast = amp-bf16 (default fp32)")
    p.add_argument("--batch-size", nargs="+", type=_positive_int, metavar="N", help="batch sweep (default: 1 256 on cuda, 1 8 on cpu)")
    p.add_argument("--input-size", nargs="+", type=_input_size, metavar="HxW", help="default: each model's own size")
    p.add_argument("--features-only", action="store_true", help="benchmark the dense-prediction backbone (stage outputs)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, default=None, help="torch.compile mode (default: default)")
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
    p.add_argument("--timeout", type=float, default=1800.0, metavar="S", help="seconds per worker process before it is killed")
    p.add_argument("--format", default="github", choices=FORMATS, metavar="FMT", help="table format: csv or any tabulate format")
    p.add_argument("--plot", metavar="PNG", help="save accuracy vs throughput")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="show worker output")
    return p


def _report_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="bench.py report", description="Render saved benchmark results.")
    p.add_argument("results", metavar="RESULTS", help="a results JSONL file")
    p.add_argument("--format", default="github", choices=FORMATS, metavar="FMT")
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

    specs = []
    for model in args.models:
        sizes = args.input_size or [tuple(zoo.info(model).input_size[1:])]
        for backend in args.backend:
            for precision in args.precision:
                for size in sizes:
                    for batch in args.batch_size:
                        specs.append(RowSpec(
                            model=model, backend=backend, precision=precision, batch_size=batch, input_size=tuple(size),
                            device=args.device, channels_last=args.channels_last, features_only=args.features_only,
                            compile_mode=(args.compile_mode or "default") if backend == "compile" else None,
                        ))
    return specs


def parse_run_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse and validate; every problem becomes a UsageError with one sentence."""
    args = build_parser().parse_args(argv)
    if args.preset is None and args.models is None:
        args.preset = "quick"
    for key, value in PRESETS.get(args.preset, {}).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for module in args.imports:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UsageError(f"--import {module}: {exc}.") from None
    import zoo

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
    args.checkpoints = _checkpoints(args.checkpoint, args.models)
    return args


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
    )


def exit_code(rows: list[dict[str, Any]]) -> int:
    statuses = {r.get("status") for r in rows}
    if statuses & {"oom", "error"}:
        return EXIT_FAILED
    return EXIT_UNAVAILABLE if "unavailable" in statuses else EXIT_OK


def _show(rows: list[dict[str, Any]], fmt: str, plot_path: str | None) -> None:
    print(render_table(rows, fmt))
    if plot_path:
        saved = plot(rows, plot_path)
        print(f"plot: {plot_path}" if saved else "plot: no row has both a throughput and a (measured or paper) top-1", file=sys.stderr)


def run_main(argv: Sequence[str]) -> int:
    from .runner import run

    args = parse_run_args(argv)
    out = args.out or DEFAULT_RESULTS
    command = shlex.join(["python", "bench.py", *argv])
    rows = run(grid(args), settings_from(args), out, command, resume=args.resume, progress=not args.quiet, verbose=args.verbose)
    _show(rows, args.format, args.plot)
    print(f"{status_summary(rows)}; results in {out}", file=sys.stderr)
    return exit_code(rows)


def report_main(argv: Sequence[str]) -> int:
    args = _report_parser().parse_args(argv)
    if not os.path.isfile(args.results):
        raise UsageError(f"Results file {args.results!r} does not exist.")
    rows = load_results(args.results)
    rows = table_order(rows if args.all else latest_rows(rows))
    if not rows:
        raise UsageError(f"Results file {args.results!r} holds no rows.")
    _show(rows, args.format, args.plot)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return report_main(argv[1:]) if argv[:1] == ["report"] else run_main(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
