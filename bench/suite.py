"""The whole comparison on one GPU, in priority order under a time budget:

    python -m bench.suite --out results/h100 --budget-min 5          # on a CUDA machine
    python -m bench.suite --out results/h100 --budget-min 4 --resume # the rows the first call had no time for
    python -m bench.suite --dry-run --out /tmp/suite                 # CPU, one tiny model: proves the plumbing

Rows run in this order, so a run cut short by its budget keeps the most useful ones (--resume finishes the rest):
1. the head-to-head tier, the models of about 4.5 paper GFLOPs (rmt_s, swin_t, internimage_t, maxvit_t): eager and
   torch.compile, latency at batch 1 and throughput at batch 256, under bf16 autocast at each model's own input
   size (with --cuda-graphs also compile's reduce-overhead mode at batch 1), then TensorRT fp16 at the same shapes;
2. the other sizes, eager; 3. their compiled rows, then TensorRT; 4. the features_only backbone at the
   dense-prediction size 800x1344, batch 1, eager and compile.
Consecutive rows of one model share a worker process (one model build, one FLOP count). A backend missing here
gives one status row for the whole run. Writes results.jsonl, table.md, plot.png and env.json under --out.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from common.cli import EXIT_BROKEN_PIPE, EXIT_USAGE, OneLineParser, OutputError, ReaderGone, UsageError, emit
from common.paths import WriteError, check_output_path, ignore_file_size_signal, write_atomic

from .args import EXIT_FAILED, EXIT_OUTPUT, exit_code
from .backends import BACKENDS
from .env import collect_env
from .precision import suite_precision
from .report import plot, render_table, status_summary
from .runner import Interrupted, run, stopped_exit_code
from .spec import RowSpec, RunRequest, Settings

# The head-to-head tier: models whose paper GFLOPs lie in this band (RMT-S 4.5, Swin-T 4.5, InternImage-T 4.9,
# MaxViT-T 5.6), compared first.
HEAD_TO_HEAD_GFLOPS = (4.0, 6.0)


@dataclass(frozen=True)
class SuiteConfig:
    device: str
    models: tuple[str, ...] | None = None  # None: the registry's comparison models
    backends: tuple[str, ...] = ("eager", "compile", "tensorrt")
    precision: str = suite_precision("autocast")  # amp-bf16
    cast_precision: str = suite_precision("cast")  # for backends without autocast (TensorRT): fp16, its fast path
    latency_batch: int = 1
    throughput_batch: int = 256
    input_size: tuple[int, int] | None = None  # None: each model's own
    dense_size: tuple[int, int] = (800, 1344)
    cuda_graphs: bool = False  # add compile's reduce-overhead mode to the batch-1 rows
    warmup: int = 10
    iters: int = 50
    budget_s: float = 24 * 60


FULL = SuiteConfig(device="cuda")
DRY_RUN = SuiteConfig(
    models=("test_convnext",),
    device="cpu",
    throughput_batch=2,
    input_size=(64, 64),
    dense_size=(64, 96),
    warmup=1,
    iters=2,
)


def _tiers(models: list[str]) -> tuple[list[str], list[str]]:
    """(head-to-head models, closest in paper GFLOPs to the first family's first, then the others in registry
    order): rmt_s, swin_t, internimage_t, maxvit_t, so a cut-short run still has RMT against Swin."""
    import zoo

    low, high = HEAD_TO_HEAD_GFLOPS
    first = [m for m in models if low <= (zoo.info(m).paper_gflops or 0) <= high]
    anchor = zoo.info(first[0]).paper_gflops if first else 0.0
    first.sort(key=lambda m: abs(zoo.info(m).paper_gflops - anchor))
    return first, [m for m in models if m not in first]


def suite_specs(cfg: SuiteConfig) -> list[RowSpec]:
    """Every row of the suite, in priority order."""
    import zoo

    models = list(cfg.models or zoo.comparison_models())
    head, rest = _tiers(models) if cfg.models is None else (models[:1], models[1:])
    graph_backends = [b for b in cfg.backends if b != "eager"]

    def rows(model: str, backend: str) -> list[RowSpec]:
        prec = cfg.precision if BACKENDS[backend].runs_autocast else cfg.cast_precision
        size = cfg.input_size or tuple(zoo.info(model).input_size[1:])
        out = [
            RowSpec(model, backend, prec, batch, size, cfg.device)
            for batch in (cfg.latency_batch, cfg.throughput_batch)
        ]
        if backend == "compile" and cfg.cuda_graphs:
            out.append(
                RowSpec(
                    model,
                    backend,
                    prec,
                    cfg.latency_batch,
                    size,
                    cfg.device,
                    backend_options=(("mode", "reduce-overhead"),),
                )
            )
        return out

    def dense(model: str) -> list[RowSpec]:
        return [
            RowSpec(model, b, cfg.precision, 1, cfg.dense_size, cfg.device, features_only=True)
            for b in cfg.backends
            if BACKENDS[b].runs_autocast
        ]

    plan = [r for m in head for b in cfg.backends if BACKENDS[b].runs_autocast for r in rows(m, b)]
    plan += [r for b in cfg.backends if not BACKENDS[b].runs_autocast for m in head for r in rows(m, b)]
    if "eager" in cfg.backends:
        plan += [r for m in rest for r in rows(m, "eager")]
    plan += [r for b in graph_backends for m in rest for r in rows(m, b)]
    plan += [r for m in models for r in dense(m)]
    return plan


def write_outputs(rows: list[dict], out: Path, device: str) -> None:
    """The four files of a suite folder; everything else renders from results.jsonl with `bench.py report`. Each is
    written whole or not at all, never through a link planted in the folder (WriteError, one sentence)."""
    write_atomic(out / "table.md", render_table(rows, "github", ["all"]) + "\n")
    write_atomic(out / "env.json", json.dumps(collect_env(device), indent=2) + "\n")
    plot(rows, out / "plot.png")


def _budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise UsageError(f"--budget-min expects a positive number of minutes, got {text!r}.")
    return value


def _fail(exc: Exception, rows: list[dict]) -> int:
    """An output that could not be written: the rows kept, as a table, then one sentence."""
    try:
        if rows:
            emit(render_table(rows, "github") + "\n")
    except OutputError:
        pass  # the sentence below is what matters
    print(f"error: {exc}", file=sys.stderr)
    return EXIT_OUTPUT


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ignore_file_size_signal()
    p = OneLineParser(prog="python -m bench.suite", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="results folder, e.g. results/h100")
    p.add_argument("--dry-run", action="store_true", help="CPU, one tiny model, tiny sizes: checks the plumbing only")
    p.add_argument("--backends", nargs="+", choices=tuple(BACKENDS), help="a subset of the backends")
    p.add_argument("--budget-min", type=str, help="start no row after this many minutes (default 24)")
    p.add_argument(
        "--cuda-graphs", action="store_true", help="add compile's reduce-overhead (CUDA graphs) rows at batch 1"
    )
    p.add_argument("--resume", action="store_true", help="skip rows already in OUT/results.jsonl")
    p.add_argument("--quiet", action="store_true")
    try:
        args = p.parse_args(argv)
        cfg = DRY_RUN if args.dry_run else FULL
        if args.backends:
            cfg = replace(cfg, backends=tuple(dict.fromkeys(args.backends)))
        if args.budget_min is not None:
            cfg = replace(cfg, budget_s=_budget(args.budget_min) * 60)
        cfg = replace(cfg, cuda_graphs=args.cuda_graphs)
        if cfg.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise UsageError("The GPU suite needs a CUDA device; use --dry-run to check it on CPU.")
        out = Path(args.out)
        check_output_path(out, "--out", folder=True)
        for name in ("results.jsonl", "table.md", "env.json", "plot.png"):
            if (out / name).exists() or (out / name).is_symlink():
                check_output_path(out / name, f"--out's {name}", text_file=name == "results.jsonl")
    except UsageError as exc:  # OutputPathError among them
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out.mkdir(parents=True, exist_ok=True)
    specs = suite_specs(cfg)
    # one hung worker may not eat the whole budget
    settings = Settings(warmup=cfg.warmup, iters=cfg.iters, timeout_s=min(cfg.budget_s, 900.0))
    command = shlex.join(["python", "-m", "bench.suite", *argv])
    try:
        outcome = run(
            RunRequest(
                tuple(specs),
                settings,
                str(out / "results.jsonl"),
                command,
                resume=args.resume,
                progress=not args.quiet,
                budget_s=cfg.budget_s,
            )
        )
    except (KeyboardInterrupt, Interrupted) as exc:
        results = out / "results.jsonl"
        return stopped_exit_code(exc, results if results.exists() else None)
    except WriteError as exc:  # a full disk or `ulimit -f`: the table of what was kept, then the one sentence
        return _fail(exc, exc.rows or [])
    try:
        write_outputs(outcome.rows, out, cfg.device)
    except WriteError as exc:
        return _fail(exc, outcome.rows)
    try:
        emit(render_table(outcome.rows, "github") + "\n")
    except ReaderGone:
        return EXIT_BROKEN_PIPE
    except OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_OUTPUT
    unfinished = (
        f"; {outcome.unfinished} rows not run within the time budget (rerun with --resume)"
        if outcome.unfinished
        else ""
    )
    print(f"{status_summary(outcome.rows)}{unfinished}; outputs in {out}", file=sys.stderr)
    return exit_code(outcome.rows) if not outcome.unfinished else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
