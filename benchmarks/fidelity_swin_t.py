"""Fidelity check: bench.py's eager swin_t throughput against timm's own benchmark.py on the same machine.

timm's benchmark.py is not in the pip package and is not committed here; fetch it from the timm repository and
pass its path. Both tools run in fresh processes, back to back in each round (which goes first alternates), with the
same model, batch, input size, threads, warm-up and iteration counts, on CPU in fp32. The verdict is the median of
the per-round ratios: on a shared machine the load drifts between rounds, and pairing within a round cancels it.

    python -m benchmarks.fidelity_swin_t --timm-benchmark /tmp/timm_benchmark.py --out results/cpu/fidelity_swin_t.json

That timm file (an older revision) has no --device flag, so a three-line driver imports it and sets device="cpu" on
its parsed arguments, exactly as its own `benchmark(args)` passes them on to its runner.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.env import collect_env
from bench.results import load_results

REPO = Path(__file__).resolve().parents[1]

TIMM_NAME = "swin_tiny_patch4_window7_224"  # what the zoo's swin_t builds

TIMM_DRIVER = """
import importlib.util, json, sys, torch
path, batch, warm, iters, threads = sys.argv[1], *map(int, sys.argv[2:6])
torch.set_num_threads(threads)
spec = importlib.util.spec_from_file_location("timm_benchmark", path)
timm_benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(timm_benchmark)
args = timm_benchmark.parser.parse_args(["--model", sys.argv[6], "--bench", "inference", "-b", str(batch),
    "--num-warm-iter", str(warm), "--num-bench-iter", str(iters)])
args.device = "cpu"
print("RESULT " + json.dumps(timm_benchmark.benchmark(args)))
"""


def run_timm(path: str, batch: int, warmup: int, iters: int, threads: int) -> float:
    cmd = [sys.executable, "-c", TIMM_DRIVER, path, str(batch), str(warmup), str(iters), str(threads), TIMM_NAME]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(threads), check=True)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])["infer_samples_per_sec"]


def run_ours(batch: int, warmup: int, iters: int, threads: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "r.jsonl")
        cmd = [
            sys.executable,
            "bench.py",
            "--models",
            "swin_t",
            "--device",
            "cpu",
            "--backend",
            "eager",
            "--precision",
            "fp32",
            "--batch-size",
            str(batch),
            "--warmup",
            str(warmup),
            "--iters",
            str(iters),
            "--threads",
            str(threads),
            "--no-flops",
            "--quiet",
            "--out",
            str(out),
        ]
        subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=_env(threads), check=True)
        [row] = load_results(out)
    return row["throughput_ips"]


def _env(threads: int) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--timm-benchmark", required=True, help="path to timm's benchmark.py (fetched, not committed)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="1 keeps a shared machine's load from oversubscribing OpenMP")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--tolerance", type=float, default=0.05)
    p.add_argument("--out", help="write the result as JSON here")
    args = p.parse_args()
    if not Path(args.timm_benchmark).is_file():
        print(f"error: timm's benchmark.py not found at {args.timm_benchmark!r}.", file=sys.stderr)
        return 2
    ours, timm = [], []
    for r in range(args.rounds):
        sides = [
            lambda: ours.append(run_ours(args.batch_size, args.warmup, args.iters, args.threads)),
            lambda: timm.append(run_timm(args.timm_benchmark, args.batch_size, args.warmup, args.iters, args.threads)),
        ]
        for side in sides if r % 2 == 0 else sides[::-1]:
            side()
        print(f"round {r + 1}: bench.py {ours[-1]:.2f} img/s, timm benchmark.py {timm[-1]:.2f} img/s", file=sys.stderr)
    ratios = [o / t for o, t in zip(ours, timm)]
    ratio = statistics.median(ratios)
    result = {
        "check": "eager swin_t throughput, bench.py vs timm benchmark.py (median of paired per-round ratios)",
        "settings": {
            "device": "cpu",
            "precision": "fp32",
            "model": f"swin_t = {TIMM_NAME}",
            "input_size": [224, 224],
            "batch_size": args.batch_size,
            "warmup": args.warmup,
            "iters": args.iters,
            "threads": args.threads,
            "rounds": args.rounds,
        },
        "bench_py_ips": ours,
        "timm_benchmark_ips": timm,
        "median_bench_py_ips": statistics.median(ours),
        "median_timm_benchmark_ips": statistics.median(timm),
        "round_ratios": ratios,
        "ratio": ratio,
        "tolerance": args.tolerance,
        "within_tolerance": abs(ratio - 1) <= args.tolerance,
        "timm_benchmark_source": "huggingface/pytorch-image-models benchmark.py (fetched separately, not committed)",
        "command": shlex.join(["python", "-m", "benchmarks.fidelity_swin_t", *sys.argv[1:]]),
        "env": collect_env("cpu"),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0 if result["within_tolerance"] else 1


if __name__ == "__main__":
    sys.exit(main())
