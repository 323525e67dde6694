"""RMT on CPU: our fast path against the official-shaped reference path, in one run on one machine.

    python benchmarks/rmt_cpu.py            # writes results/cpu/rmt_cpu.{md,json}

1. Eager throughput of rmt_s at batch 8, 224x224, 2 threads, fp32 (fast and reference runs interleaved, so
   drift in machine load hits both alike; the median of the per-round ratios is reported).
2. Peak memory of rmt_t as a backbone (features_only) at 800x1344, batch 1, each path in its own process:
   peak RSS during the forward minus RSS before it.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import zoo  # noqa: E402
from bench.env import cpu_name  # noqa: E402


def throughput(threads: int, batch: int, rounds: int, iters: int) -> dict:
    torch.set_num_threads(threads)
    model = zoo.load("rmt_s")
    x = torch.randn(batch, 3, 224, 224)
    rates: dict[str, list[float]] = {"auto": [], "reference": []}
    with torch.inference_mode():
        for impl in rates:  # warm-up: allocator, kernels, position-table cache
            model.set_attn_impl(impl)(x)
        for _ in range(rounds):
            for impl in rates:
                model.set_attn_impl(impl)
                start = time.perf_counter()
                for _ in range(iters):
                    model(x)
                rates[impl].append(batch * iters / (time.perf_counter() - start))
    ratios = [f / r for f, r in zip(rates["auto"], rates["reference"])]
    return {
        "fast_img_s": statistics.median(rates["auto"]),
        "reference_img_s": statistics.median(rates["reference"]),
        "speedup_median": statistics.median(ratios),
        "speedup_min": min(ratios),
        "rounds": rounds,
        "iters_per_round": iters,
    }


def peak_memory_child(impl: str, height: int, width: int, threads: int) -> None:
    """Runs in a subprocess: prints the forward's peak RSS increase in MiB as JSON."""
    torch.set_num_threads(threads)
    model = zoo.load("rmt_t", features_only=True, attn_impl=impl)
    x = torch.randn(1, 3, height, width)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with torch.inference_mode():
        feats = model(x)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"impl": impl, "peak_rss_increase_mib": (peak - before) / 1024, "seconds": seconds,
                      "shapes": [list(f.shape) for f in feats]}))  # fmt: skip


def peak_memory(height: int, width: int, threads: int) -> list[dict]:
    rows = []
    for impl in ("auto", "reference"):
        cmd = [sys.executable, __file__, "--child", impl, "--size", str(height), str(width), "--threads", str(threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--size", type=int, nargs=2, default=(800, 1344), metavar=("H", "W"))
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "cpu")
    ap.add_argument("--child", choices=("auto", "reference"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return peak_memory_child(args.child, *args.size, args.threads)

    env = {"torch": torch.__version__, "cpu": cpu_name(), "python": platform.python_version(), "threads": args.threads}
    tp = throughput(args.threads, args.batch, args.rounds, args.iters)
    mem = peak_memory(*args.size, args.threads)
    result = {"command": " ".join(["python", "benchmarks/rmt_cpu.py", *sys.argv[1:]]), "env": env,
              "throughput_rmt_s": {"batch": args.batch, "size": 224, **tp}, "peak_memory_rmt_t": mem}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rmt_cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    fast, ref = (next(m for m in mem if m["impl"] == i) for i in ("auto", "reference"))
    md = f"""# RMT on CPU: fast path vs the official-shaped reference path

Command: `{result['command']}`
Machine: {env['cpu']}, {args.threads} threads, torch {env['torch']}, Python {env['python']}, fp32, eager, inference_mode.

| measurement | fast (auto) | reference | ratio |
|---|---|---|---|
| rmt_s throughput, batch {args.batch}, 224x224 (img/s, median of {args.rounds} rounds) | {tp['fast_img_s']:.2f} | {tp['reference_img_s']:.2f} | {tp['speedup_median']:.2f}x (worst round {tp['speedup_min']:.2f}x) |
| rmt_t backbone peak RSS increase, batch 1, {args.size[0]}x{args.size[1]} (MiB) | {fast['peak_rss_increase_mib']:.0f} | {ref['peak_rss_increase_mib']:.0f} | {ref['peak_rss_increase_mib'] / fast['peak_rss_increase_mib']:.1f}x less |
| rmt_t backbone forward time, batch 1, {args.size[0]}x{args.size[1]} (s) | {fast['seconds']:.2f} | {ref['seconds']:.2f} | |

The reference path is written like the official code (three projections, stack-based rotation, contiguous
permutes around depthwise convs, masks rebuilt every forward, explicit softmax(QK^T + D)V) and is the test oracle.
"""
    (args.out / "rmt_cpu.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
