"""Command line: `bench.py [options]` measures, `bench.py report RESULTS` renders saved rows.

Exit codes: 0 every row ok; 1 an output (standard output, results, a plot) could not be written (a full disk); 2 bad
arguments; 3 some backend unavailable here or some input size a model's architecture cannot take (all other rows
ok); 4 some row ran out of memory, failed or disagreed with eager; 130 / 143 stopped by Ctrl-C / SIGTERM (rows
already measured are kept); 141 the reader of standard output went away (`| head -1`).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import itertools
import json
import math
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from common import paths
from common.cli import EXIT_OK, OneLineParser, UsageError, emit, run_cli
from .args import exit_code, input_sizes, positive_float, positive_int
from .backends import BACKENDS, COMPILE_MODES
from .columns import printable
from .launchers import LAUNCHERS, LauncherUnavailable
from .options import add_flags, flag_of, given, set_given
from .precision import ALIASES, PRECISIONS, described, names
from .report import (
    BY_NAME,
    FORMATS,
    PLOT_NEEDS,
    PLOTS,
    TERMINAL_FORMAT,
    drawable,
    plot,
    render_table,
    select_columns,
    slim,
    status_summary,
    table_order,
    timm_csv,
)
from .results import check_results_paths, iter_results, latest_rows, read_lines, result_files
from .spec import HUB_WEIGHTS, MODES, RANDOM_INIT, RowSpec, RunRequest, Settings, default_threads, first_line

__all__ = [
    "main",
    "build_parser",
    "parse_run_args",
    "grid",
]

DEFAULTS = Settings()
DEFAULT_RESULTS = "bench_results/results.jsonl"
# timm's --amp-dtype values, each naming the precision `--amp` then means (precision.ALIASES)
TIMM_AMP_DTYPES = {"float16": "amp_float16", "bfloat16": "amp_bfloat16"}

# `python bench.py` with no arguments: a small CPU comparison that finishes in a few minutes. Its threads are the
# default's (torch's: OMP_NUM_THREADS, else one per core), so a preset row and the same row asked for explicitly are
# one measurement; on a shared machine give --threads 1 (competing OpenMP threads can slow a step twentyfold).
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "models": ["rmt_t", "swin_t"],
        "backend": ["eager", "compile"],
        "precision": ["fp32"],
        "batch_size": [1, 8],
        "device": "cpu",
        "warmup": 3,
        "iters": 20,
    },
}


def _json_value(value: Any) -> bool:
    """Whether `value` travels to a worker and into a row unchanged as JSON (tuples become lists)."""
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_json_value(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_value(v) for k, v in value.items())
    return False


# Model kwargs the harness sets from its own flags (and records in every row).
_OWN_FLAGS = {"pretrained": "--pretrained or --checkpoint", "features_only": "--features-only"}


def parse_model_kwargs(values: list[str]) -> dict[str, Any]:
    """timm's `--model-kwargs k=v ...`: values read as Python literals where they are one (0.1, True, [1, 2],
    {'a': 1}), else strings; each in its JSON form (a tuple becomes a list), as rows and resume keys hold it."""
    import zoo

    kwargs = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"--model-kwargs expects key=value pairs, got {value!r}.")
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            parsed = text
        if not _json_value(parsed):
            raise UsageError(
                f"--model-kwargs {key}={text} is a {type(parsed).__name__}, which a results row cannot record; give "
                f"a number, string, True/False/None, or a list or dict of them."
            )
        if key in _OWN_FLAGS:  # the row records the flag, so the kwarg would be measured but recorded otherwise
            raise UsageError(f"--model-kwargs {key}=... is set by {_OWN_FLAGS[key]}; use that instead.")
        kwargs[key] = json.loads(json.dumps(parsed))
    try:
        zoo.check_model_kwargs(kwargs)
    except ValueError as exc:
        raise UsageError(f"--model-kwargs: {exc}") from None
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
    try:  # the results' line reader: regular files only (a FIFO would block), each line bounded
        lines = [text for _, text in read_lines(path) if text is not None]
    except OSError as exc:
        raise UsageError(f"--model-list {path!r} cannot be read ({exc.strerror or type(exc).__name__}).") from None
    names = [ln.split("#", 1)[0].strip() for ln in lines]
    names = [n for n in names if n]
    if not names:
        raise UsageError(f"--model-list {path!r} names no model.")
    return names


def _precision(text: str) -> str:
    value = ALIASES.get(text, text)
    if value not in PRECISIONS:
        raise argparse.ArgumentTypeError(f"expected one of {described()}, got {text!r}")
    return value


def _add_backend_options(p: argparse.ArgumentParser) -> None:
    """Each backend's own flags, declared on its Options; each takes one value or a sweep."""
    for cls in BACKENDS.values():
        add_flags(p, cls.name, cls.Options, sweep=True)


def _option_sweeps(args: argparse.Namespace, backend: str) -> list[tuple[tuple[str, Any], ...]]:
    """Every combination of the backend's option values asked for, each as its non-default options."""
    fields = dataclasses.fields(BACKENDS[backend].Options)
    chosen = given(args, backend, BACKENDS[backend].Options)
    values = [chosen.get(f.name, [f.default]) for f in fields]
    return [tuple((f.name, v) for f, v in zip(fields, combo) if v != f.default) for combo in itertools.product(*values)]


def _add_table_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--format",
        default=TERMINAL_FORMAT,
        choices=FORMATS,
        metavar="FMT",
        help=f"table format (default {TERMINAL_FORMAT}): github (Markdown), latex, csv, timm (timm's benchmark CSV) "
        "or any tabulate format",
    )
    p.add_argument(
        "--columns",
        nargs="+",
        metavar="NAME",
        help=f"table columns, shown as asked ({', '.join(BY_NAME)}), or all that have values; CSV keeps every field",
    )


def _add_plot_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plot", metavar="PNG", help="save a figure (png, pdf or svg), captioned with how it was measured")
    p.add_argument(
        "--plot-kind",
        choices=PLOTS,
        default=PLOTS[0],
        help="accuracy: top-1 against throughput (default); batch: throughput against batch size; dense: latency "
        "and memory against input size (--features-only rows)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="bench.py",
        description="Benchmark zoo models: params, GMACs, latency, throughput, memory, compile time, accuracy.",
        epilog="`bench.py report RESULTS.jsonl` renders saved results. Without --models, --preset quick fills what is "
        "not given. Exit codes: 0 all rows ok, 1 an output could not be written (a full disk), 2 bad arguments, 3 a "
        "backend is unavailable here or a model cannot take an input size, 4 a row ran out of memory, failed or "
        "mismatched, 130/143 stopped by Ctrl-C/SIGTERM, 141 the reader of standard output went away.",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), help="named settings; explicit options override them")
    p.add_argument(
        "--models",
        "--model",
        "-m",
        nargs="+",
        metavar="NAME",
        help="zoo or timm model names; wildcards such as 'swin_*' (--model: timm's name for it)",
    )
    p.add_argument("--model-list", metavar="FILE", help="a file of model names, one per line (timm's --model-list)")
    p.add_argument(
        "--model-kwargs", nargs="+", default=[], metavar="K=V", help="passed to the model builder, e.g. attn_impl=flex"
    )
    p.add_argument(
        "--bench", choices=(*MODES, "both"), default="infer", help="time inference (default), a training step, or both"
    )
    p.add_argument(
        "--backend", nargs="+", choices=tuple(BACKENDS), help="default: eager (no short flag: -b is the batch)"
    )
    p.add_argument(
        "--precision",
        "-p",
        nargs="+",
        type=_precision,
        metavar="P",
        help=f"{described()} (timm's names with timm's meaning; default fp32)",
    )
    p.add_argument("--amp", action="store_true", help="timm's: autocast, in --amp-dtype; same as --precision amp")
    p.add_argument(
        "--amp-dtype",
        choices=tuple(TIMM_AMP_DTYPES),
        help="timm's: the autocast dtype with --amp (default float16)",
    )
    p.add_argument(
        "--torchcompile",
        nargs="?",
        const="inductor",
        metavar="BACKEND|MODE",
        help="timm's: --backend compile (inductor, the only torch.compile backend measured here), or a mode "
        "(same as --compile-mode MODE)",
    )
    p.add_argument("--torchcompile-mode", metavar="MODE", help="timm's: same as --compile-mode MODE")
    p.add_argument(
        "--batch-size",
        "-b",
        nargs="+",
        type=positive_int,
        metavar="N",
        help="batch sweep (default: 1 256 on cuda, 1 8 on cpu)",
    )
    p.add_argument(
        "--input-size", nargs="+", metavar="SIZE", help="N or HxW each, or timm's C H W (default: each model's own)"
    )
    p.add_argument("--img-size", type=int, metavar="N", help="timm's square input size, same as --input-size N")
    p.add_argument(
        "--features-only", action="store_true", help="benchmark the dense-prediction backbone (stage outputs)"
    )
    p.add_argument("--channels-last", action="store_true")
    p.add_argument(
        "--tf32",
        action="store_true",
        help="TF32 matmuls/convolutions and cudnn.benchmark, as timm's benchmark.py on a GPU",
    )
    p.add_argument(
        "--grad-checkpointing", action="store_true", help="train mode: gradient checkpointing where the model has it"
    )
    _add_backend_options(p)
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument(
        "--threads",
        type=positive_int,
        help="CPU threads (torch.set_num_threads), recorded in each row; default, presets included: torch's own "
        "(OMP_NUM_THREADS where set, else one per core)",
    )
    p.add_argument(
        "--warmup", "--num-warm-iter", type=int, help=f"untimed iterations per row (default {DEFAULTS.warmup})"
    )
    p.add_argument(
        "--iters", "--num-bench-iter", type=positive_int, help=f"timed iterations per row (default {DEFAULTS.iters})"
    )
    p.add_argument("--no-flops", action="store_true", help="skip the GMAC count")
    p.add_argument("--data", metavar="DIR", help="ImageFolder-layout dataset for top-1/top-5")
    p.add_argument(
        "--max-samples", type=positive_int, metavar="N", help="evaluate at most N images (spread over the set)"
    )
    p.add_argument("--pretrained", action="store_true", help="load each model's Hub weights")
    p.add_argument(
        "--checkpoint",
        nargs="+",
        metavar="[NAME=]PATH",
        default=[],
        help="local weights, per model: what zoo.load(pretrained=PATH) takes (a checkpoint file, e.g. the official "
        ".pth, or a folder written by `python -m hub convert`)",
    )
    p.add_argument(
        "--import", dest="imports", nargs="+", metavar="MODULE", default=[], help="modules that register extra models"
    )
    p.add_argument("--out", metavar="FILE", help=f"results JSONL, appended to (default {DEFAULT_RESULTS})")
    p.add_argument(
        "--results-file", metavar="CSV", help="timm's: also write this run's rows as timm's benchmark CSV (whole)"
    )
    p.add_argument(
        "--resume", action="store_true", help="skip rows already measured (status ok or oom) in --out and its shards"
    )
    p.add_argument(
        "--launcher",
        choices=tuple(LAUNCHERS),
        default="none",
        help="none: run here (default); local or slurm: submitit jobs (pip install 'rmt-zoo[cluster]')",
    )
    for cls in LAUNCHERS.values():
        add_flags(p, cls.name, cls.Options, sweep=False)
    p.add_argument(
        "--timeout",
        type=positive_float,
        default=DEFAULTS.timeout_s,
        metavar="S",
        help=f"seconds per worker process before it is killed (default {DEFAULTS.timeout_s:.0f})",
    )
    _add_table_options(p)
    _add_plot_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="show worker output")
    return p


def _report_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="bench.py report", description="Render saved benchmark results.")
    p.add_argument(
        "results", nargs="+", metavar="RESULTS", help="results JSONL files (with their shards), read in order"
    )
    _add_table_options(p)
    _add_plot_options(p)
    p.add_argument("--all", action="store_true", help="every row, not only the newest per measurement")
    return p


def _checkpoints(values: list[str], models: list[str]) -> dict[str, str]:
    import zoo

    mapping = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            if len(models) != 1:
                raise UsageError(
                    f"--checkpoint {value!r} names no model; write NAME=PATH when benchmarking several models."
                )
            name, path = models[0], value
        if name not in models:
            raise UsageError(f"--checkpoint names {name!r}, which is not among --models.")
        try:  # a file, or a folder `python -m hub convert` wrote: what zoo.load takes
            zoo.checkpoint_file(path)
        except zoo.CheckpointError as exc:
            raise UsageError(f"--checkpoint: {exc}") from None
        mapping[name] = str(Path(path).resolve())
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


def _weights(args: argparse.Namespace, model: str) -> str:
    """The row's weights field: a checkpoint path, the Hub repo and revision ("hub:ORG/NAME@main"), or random
    initialisation."""
    if model in args.checkpoints:
        return args.checkpoints[model]
    if not args.pretrained:
        return RANDOM_INIT
    import zoo

    try:
        repo = zoo.hub_repo_id(zoo.info(model))
    except zoo.WeightsUnavailableError as exc:
        raise UsageError(str(exc)) from None
    return f"{HUB_WEIGHTS}{repo}@{os.environ.get(zoo.HUB_REVISION_ENV) or 'main'}"


def grid(args: argparse.Namespace) -> list[RowSpec]:
    """Every row the arguments ask for, in the order they will run."""
    import zoo

    modes = list(MODES) if args.bench == "both" else [args.bench]
    kwargs = tuple(args.model_kwargs.items())
    data = str(Path(args.data).resolve()) if args.data else None
    specs = []
    for model in args.models:
        sizes = args.input_size or [tuple(zoo.info(model).input_size[1:])]
        for mode, backend in itertools.product(modes, args.backend):
            for options, precision, size, batch in itertools.product(
                _option_sweeps(args, backend), args.precision, sizes, args.batch_size
            ):
                specs.append(
                    RowSpec(
                        model=model,
                        backend=backend,
                        precision=precision,
                        batch_size=batch,
                        input_size=tuple(size),
                        device=args.device,
                        channels_last=args.channels_last,
                        features_only=args.features_only,
                        backend_options=options,
                        mode=mode,
                        tf32=args.tf32,
                        model_kwargs=kwargs,
                        grad_checkpointing=args.grad_checkpointing and mode == "train",
                        weights=_weights(args, model),
                        threads=args.threads,
                        data=data,
                        max_samples=args.max_samples,
                    )
                )
    return specs


def _check_choices(args: argparse.Namespace) -> None:
    """Combinations that could not mean what they say, refused before anything runs."""
    for cls in BACKENDS.values():
        for name in given(args, cls.name, cls.Options):
            if cls.name not in args.backend:
                flag = flag_of(cls.Options, name)
                raise UsageError(
                    f"{flag} applies to the {cls.name} backend, which is not among "
                    f"--backend ({' '.join(args.backend)})."
                )
    for cls in LAUNCHERS.values():
        for name in given(args, cls.name, cls.Options):
            if cls.name != args.launcher:
                raise UsageError(f"{flag_of(cls.Options, name)} applies to --launcher {cls.name}, not {args.launcher}.")
    if args.launcher != "none" and args.device not in ("cpu", "cuda"):
        raise UsageError(
            f"--launcher {args.launcher} gives each job its own GPU as 'cuda'; use --device cuda, not {args.device}."
        )
    if args.tf32 and not args.device.startswith("cuda"):
        raise UsageError(
            f"--tf32 switches CUDA matmuls and convolutions to TF32, and this run is on {args.device}; drop it."
        )
    if args.grad_checkpointing and args.bench == "infer":
        raise UsageError("--grad-checkpointing applies to training steps; add --bench train or both.")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if args.threads and args.threads > cpus:
        raise UsageError(
            f"--threads {args.threads} is more than the {cpus} CPU(s) this process may use; oversubscribed threads "
            "distort timings."
        )


def _check_memory(args: argparse.Namespace) -> None:
    """Refuse, before anything runs, a row whose input alone (with the weights and a first feature map, see
    `minimum_bytes`) is more than the device has free: such a row could only end out of memory, or swap for hours."""
    import zoo

    from .env import available_memory
    from .precision import memory_refusal

    free = available_memory(args.device)
    if free is None:
        return
    batch = max(args.batch_size)
    for model in args.models:
        for size in args.input_size or [tuple(zoo.info(model).input_size[1:])]:
            for name in args.precision:
                reason = memory_refusal(model, size, batch, name, args.device, free)
                if reason:
                    raise UsageError(reason)


def _check_plot_format(path: str) -> None:
    """matplotlib picks the file type from the extension; check it before anything is measured."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in formats:
        raise UsageError(
            f"--plot {path!r} has no image extension matplotlib writes; use .png, .pdf or .svg "
            f"(or {', '.join(sorted(set(formats) - {'png', 'pdf', 'svg'}))})."
        )


def check_columns(names: list[str] | None) -> None:
    """`--columns` names, checked against the table's columns (trackers' included) before anything runs."""
    try:
        select_columns(names)
    except ValueError as exc:
        raise UsageError(f"--columns: {exc}") from None


def _timm_flags(args: argparse.Namespace) -> None:
    """timm's benchmark.py flags, with timm's meaning, as this harness's own (before a preset fills the rest)."""
    if args.amp_dtype and not args.amp:
        raise UsageError(f"--amp-dtype sets the dtype of --amp; add --amp, or give --precision amp_{args.amp_dtype}.")
    if args.amp:
        if args.precision:
            raise UsageError("Give either --amp (timm's) or --precision, not both.")
        args.precision = [_precision(TIMM_AMP_DTYPES[args.amp_dtype or "float16"])]
    modes = [m for m in (args.torchcompile, args.torchcompile_mode) if m not in (None, "inductor")]
    if args.torchcompile_mode == "inductor" or any(m not in COMPILE_MODES for m in modes):
        bad = args.torchcompile_mode if args.torchcompile_mode == "inductor" else modes[0]
        raise UsageError(
            f"--torchcompile takes inductor (torch.compile's backend, the one measured here) or a mode, and "
            f"--torchcompile-mode a mode ({', '.join(COMPILE_MODES)}); got {bad!r}."
        )
    if args.torchcompile or args.torchcompile_mode:
        args.backend = list(dict.fromkeys([*(args.backend or []), "compile"]))
    if modes:
        if given(args, "compile", BACKENDS["compile"].Options).get("mode") or len(set(modes)) > 1:
            raise UsageError("Give the compile mode once: --compile-mode, --torchcompile MODE or --torchcompile-mode.")
        set_given(args, "compile", "mode", modes[:1])


def parse_run_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse and validate; every problem becomes a UsageError with one sentence."""
    args = build_parser().parse_args(argv)
    check_columns(args.columns)
    _timm_flags(args)
    if args.preset is None and args.models is None and args.model_list is None:
        args.preset = "quick"
    for key, value in PRESETS.get(args.preset, {}).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for module in args.imports:
        try:
            importlib.import_module(module)
        except (Exception, SystemExit) as exc:  # a module that raises anything on import is the user's to fix; say what
            raise UsageError(
                f"--import {module} failed: {type(exc).__name__}: {first_line(exc) or 'no message'}."
            ) from None
    import zoo

    if args.model_list:
        args.models = [*(args.models or []), *_model_list(args.model_list)]
    args.models = expand_models(args.models)
    args.model_kwargs = parse_model_kwargs(args.model_kwargs)
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
    args.backend = list(dict.fromkeys(args.backend or ["eager"]))
    args.precision = list(dict.fromkeys(args.precision or ["fp32"]))
    args.batch_size = args.batch_size or ([1, 256] if args.device.startswith("cuda") else [1, 8])
    if args.warmup is not None and args.warmup < 0:
        raise UsageError(f"--warmup must be 0 or more, got {args.warmup}.")
    if args.data:
        from .accuracy import DataError, check_data_dir

        try:
            check_data_dir(args.data)
        except DataError as exc:
            raise UsageError(str(exc)) from None
        if args.features_only:
            raise UsageError("--data scores the classifier's top-1/top-5, and --features-only has none; give one.")
    if args.checkpoint and args.pretrained:
        raise UsageError("Use either --pretrained or --checkpoint, not both.")
    if args.bench != "infer":
        if args.features_only:
            raise UsageError("--bench train times classification training; drop --features-only.")
        cast = [p for p in args.precision if not PRECISIONS[p].trainable]
        if cast:
            trainable = ", ".join(names(trainable=True))
            raise UsageError(f"--bench train runs {trainable} (autocast keeps fp32 weights), not {cast[0]}.")
    _check_choices(args)
    args.threads = args.threads or default_threads()
    _check_memory(args)
    args.checkpoints = _checkpoints(args.checkpoint, args.models)
    args.out = args.out or DEFAULT_RESULTS
    check_outputs(
        {"--out": args.out, "--plot": args.plot, "--results-file": args.results_file},
        {"--data": args.data, **{f"--checkpoint {k}": v for k, v in args.checkpoints.items()}},
    )
    if args.plot:
        _check_plot_format(args.plot)
        _check_plot_kind(args)
    return args


def _check_plot_kind(args: argparse.Namespace) -> None:
    """A figure no row of the grid could give what it needs (PLOT_NEEDS), refused before anything is measured, as
    `report` refuses one its rows cannot draw."""
    import zoo

    kind = args.plot_kind
    if kind == "dense" and not args.features_only:
        raise UsageError("--plot-kind dense draws --features-only rows; add --features-only or choose another kind.")
    if kind == "accuracy" and args.features_only:
        raise UsageError("--plot-kind accuracy (the default) draws classifiers, not --features-only backbones.")
    if kind == "accuracy" and not args.data and all(zoo.info(m).paper_top1 is None for m in args.models):
        raise UsageError(
            "--plot-kind accuracy (the default) draws top-1, and no model of --models has a paper top-1; add --data to "
            "measure it, or choose another kind."
        )
    if kind == "batch" and len(set(args.batch_size)) < 2:
        raise UsageError("--plot-kind batch draws throughput against batch size; give two or more --batch-size values.")


def check_outputs(
    outputs: dict[str, str | None], inputs: dict[str, str | None] | None = None, appended: bool = True
) -> None:
    """Every output given must be writable and none may be an input or another output, checked before anything is
    measured; with `appended`, the first is a results file (appended to), and the others are written whole (an
    existing one that is no input is overwritten); a refusal is an OutputPathError, a UsageError."""
    for i, (option, path) in enumerate(outputs.items()):
        if path:
            paths.check_output_path(path, option, text_file=appended and i == 0)
    paths.check_distinct(outputs, inputs)


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        warmup=DEFAULTS.warmup if args.warmup is None else args.warmup,
        iters=args.iters or DEFAULTS.iters,
        flops=not args.no_flops,
        imports=tuple(args.imports),
        timeout_s=args.timeout,
    )


def show(rows: list[dict[str, Any]], fmt: str, plot_path: str | None, columns: list[str] | None, kind: str) -> None:
    emit(render_table(rows, fmt, columns) + ("" if fmt in ("csv", "timm") else "\n"))
    if plot_path:
        saved = plot(rows, plot_path, kind=kind)
        print(
            f"plot: {plot_path}" if saved else f"plot: no row has {PLOT_NEEDS[kind]}, so none was drawn",
            file=sys.stderr,
        )


def launcher_from(args: argparse.Namespace) -> Any:
    """The chosen launcher with its options; one sentence when it cannot work here."""
    cls = LAUNCHERS[args.launcher]
    reason = cls.unavailable_reason()
    if reason:
        raise UsageError(reason)
    return cls(cls.Options(**given(args, cls.name, cls.Options)))


def run_main(argv: Sequence[str]) -> int:
    from .runner import Interrupted, run, stopped_exit_code

    args = parse_run_args(argv)
    launcher = launcher_from(args)
    request = RunRequest(
        specs=tuple(grid(args)),
        settings=settings_from(args),
        results=args.out,
        command=shlex.join(["python", "bench.py", *argv]),
        resume=args.resume,
        progress=not args.quiet,
        verbose=args.verbose,
    )
    try:
        outcome = launcher.launch(run, request)
    except (KeyboardInterrupt, Interrupted) as exc:  # the table of what was kept, then where it is
        kept = getattr(exc, "rows", [])
        if kept:
            emit(render_table(kept, args.format, args.columns) + "\n")
        return stopped_exit_code(exc, _where(args.out) if result_files(args.out, quiet=True) else None)
    except LauncherUnavailable as exc:
        raise UsageError(str(exc)) from None
    except paths.WriteError as exc:  # a full disk or `ulimit -f`: show what was kept, then the one sentence
        emit(render_table(exc.rows, args.format, args.columns) + "\n" if exc.rows else "")
        raise
    show(outcome.rows, args.format, args.plot, args.columns, args.plot_kind)
    if args.results_file:
        paths.write_atomic(args.results_file, timm_csv(outcome.rows))
    print(f"{status_summary(outcome.rows)}; results in {_where(args.out)}", file=sys.stderr)
    return exit_code(outcome.rows)


def _where(out: str) -> str:
    """Where the rows are: a launcher's jobs append to shards beside --out (which may then not exist itself)."""
    shards = [p for p in result_files(out, quiet=True) if p != Path(out)]
    out = printable(out)  # a file name is data: an escape sequence in it never reaches the terminal
    if not shards:
        return out
    first = printable(shards[0].name)
    return f"{out} and {len(shards)} shard file(s) beside it ({first}, ...), read as one by `bench.py report {out}`"


def report_main(argv: Sequence[str]) -> int:
    args = _report_parser().parse_args(argv)
    check_results_paths(args.results)
    check_outputs({"--plot": args.plot}, {f"RESULTS {p}": p for p in args.results}, appended=False)
    if args.plot:
        _check_plot_format(args.plot)
    check_columns(args.columns)
    try:
        rows = (slim(r) for path in args.results for r in iter_results(path))
        rows = table_order(list(rows) if args.all else latest_rows(rows))
    except OSError as exc:
        raise UsageError(f"A results file cannot be read ({exc.strerror or exc}: {exc.filename}).") from None
    names = " and ".join(repr(p) for p in args.results)
    if not rows:
        raise UsageError(f"Results file {names} holds no benchmark rows.")
    if args.plot and not drawable(rows, args.plot_kind):
        raise UsageError(
            f"No row of {names} has {PLOT_NEEDS[args.plot_kind]}, which --plot-kind {args.plot_kind} needs, so no "
            f"figure can be drawn; nothing was written."
        )
    show(rows, args.format, args.plot, args.columns, args.plot_kind)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """bench.py's exit codes: the shared policy (common/cli.py) and the rows' own (bench/args.py)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    paths.ignore_file_size_signal()
    return run_cli(
        lambda: report_main(argv[1:]) if argv[:1] == ["report"] else run_main(argv), failures=(paths.WriteError,)
    )
