"""The whole comparison on one GPU in one command, sized to finish in under 25 minutes:

    python -m bench.suite --out results/h100          # on a CUDA machine
    python -m bench.suite --dry-run --out /tmp/suite  # CPU, one tiny model: proves the plumbing, measures nothing

Rows, in the order they run (so a run cut short by the time budget still has the most useful ones; rerun with
--resume to finish): eager then compile, latency at batch 1 and throughput at batch 256 under bf16 autocast at each
model's own input size (224; InternImage-L 384); TensorRT fp16 at the same shapes (a status row where it is not
installed); then the features_only backbone at the dense-prediction size 800x1344, batch 1.
Writes results.jsonl, table.md, table.tex, table.csv, table_timm.csv (timm's benchmark CSV), plot.png and env.json
under --out.
"""
from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from .backends import BACKENDS
from .cli import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, OneLineParser, UsageError, exit_code
from .env import collect_env
from .report import plot, render_table, status_summary
from .paths import OutputPathError, check_output_path
from .runner import Interrupted, run
from .spec import RowSpec, Settings

GPU_MODELS = (
    "rmt_t", "rmt_s", "rmt_b", "rmt_l",
    "swin_t", "swin_s", "swin_b",
    "maxvit_t", "maxvit_s", "maxvit_b",
    "internimage_t", "internimage_s", "internimage_b", "internimage_l",
)


@dataclass(frozen=True)
class SuiteConfig:
    models: tuple[str, ...]
    device: str
    backends: tuple[str, ...] = ("eager", "compile", "tensorrt")
    precision: str = "amp-bf16"
    trt_precision: str = "fp16"  # for backends without autocast (TensorRT): fp16, TensorRT's usual fast path
    latency_batch: int = 1
    throughput_batch: int = 256
    input_size: tuple[int, int] | None = None  # None: each model's own
    dense_size: tuple[int, int] = (800, 1344)
    warmup: int = 10
    iters: int = 50
    budget_s: float = 24 * 60


FULL = SuiteConfig(models=GPU_MODELS, device="cuda")
DRY_RUN = SuiteConfig(
    models=("test_convnext",), device="cpu", throughput_batch=2, input_size=(64, 64), dense_size=(64, 96), warmup=1, iters=2
)


def suite_specs(cfg: SuiteConfig) -> list[RowSpec]:
    import zoo

    classify, dense = [], []
    for backend in cfg.backends:
        precision = cfg.precision if BACKENDS[backend].autocast else cfg.trt_precision
        mode = "default" if backend == "compile" else None
        for model in cfg.models:
            size = cfg.input_size or tuple(zoo.info(model).input_size[1:])
            for batch in (cfg.latency_batch, cfg.throughput_batch):
                classify.append(RowSpec(model, backend, precision, batch, size, cfg.device, compile_mode=mode))
            if BACKENDS[backend].autocast:  # the dense backbone: eager and compile
                dense.append(RowSpec(model, backend, precision, 1, cfg.dense_size, cfg.device, features_only=True, compile_mode=mode))
    return classify + dense


def write_outputs(rows: list[dict], out: Path, device: str) -> None:
    (out / "table.md").write_text(render_table(rows, "github") + "\n")
    (out / "table.tex").write_text(render_table(rows, "latex_booktabs") + "\n")
    (out / "table.csv").write_text(render_table(rows, "csv"))
    (out / "table_timm.csv").write_text(render_table(rows, "timm"))
    (out / "env.json").write_text(json.dumps(collect_env(device), indent=2) + "\n")
    plot(rows, out / "plot.png")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = OneLineParser(prog="python -m bench.suite", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="results folder, e.g. results/h100")
    p.add_argument("--dry-run", action="store_true", help="CPU, one tiny model, tiny sizes: checks the plumbing only")
    p.add_argument("--backends", nargs="+", choices=tuple(BACKENDS), help="a subset of the backends")
    p.add_argument("--budget-min", type=float, help="stop starting rows after this many minutes (default 24)")
    p.add_argument("--resume", action="store_true", help="skip rows already in OUT/results.jsonl")
    p.add_argument("--quiet", action="store_true")
    try:
        args = p.parse_args(argv)
        cfg = DRY_RUN if args.dry_run else FULL
        if args.backends:
            cfg = replace(cfg, backends=tuple(args.backends))
        if args.budget_min is not None:
            cfg = replace(cfg, budget_s=args.budget_min * 60)
        if cfg.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise UsageError("The GPU suite needs a CUDA device; use --dry-run to check it on CPU.")
        out = Path(args.out)
        check_output_path(out, "--out", folder=True)
        if (out / "results.jsonl").exists():
            check_output_path(out / "results.jsonl", "--out", text_file=True)
    except (UsageError, OutputPathError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out.mkdir(parents=True, exist_ok=True)
    specs = suite_specs(cfg)
    # one hung worker may not eat the whole budget
    settings = Settings(warmup=cfg.warmup, iters=cfg.iters, timeout_s=min(cfg.budget_s, 900.0))
    command = shlex.join(["python", "-m", "bench.suite", *argv])
    try:
        rows = run(specs, settings, out / "results.jsonl", command, resume=args.resume, progress=not args.quiet, budget_s=cfg.budget_s)
    except (KeyboardInterrupt, Interrupted) as exc:
        name = str(exc) if isinstance(exc, Interrupted) else "SIGINT"
        print(f"\nstopped by {name}: rows measured so far are kept in {out / 'results.jsonl'} (--resume continues).", file=sys.stderr)
        return EXIT_INTERRUPTED[name]
    write_outputs(rows, out, cfg.device)
    print(render_table(rows, "github"))
    left = len(specs) - len(rows)
    unfinished = f"; {left} rows not run within the time budget (rerun with --resume)" if left else ""
    print(f"{status_summary(rows)}{unfinished}; outputs in {out}", file=sys.stderr)
    return exit_code(rows) if left == 0 else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
