"""RMT on CPU against the official qhfan/RMT code, same weights, interleaved in one process.

    python -m benchmarks.rmt_cpu --official /path/to/qhfan/RMT/classfication_release/RMT.py
    python -m benchmarks.rmt_cpu            # no official comparison: ours eager, compiled and the reference path

The official model is built by its own builder (RMT_T3, RMT_S, RMT_M2), its random initial weights are loaded into
ours through the zoo's official-key loader (`checkpoint_filter_fn`, strict), and every path's logits must agree
with the official eager ones to 1e-4 (max|diff| / max|ref|) before anything is timed. Timed, interleaved round by
round, each labelled: official eager, official torch.compile, ours eager (attn_impl="auto"), ours torch.compile,
and our reference path (attn_impl="reference", written like the official code; the test oracle). fp32,
inference_mode, 224x224; medians over rounds. The official RMT.py imports fvcore and einops but its model uses
neither: where one is not installed it is stubbed (the output says which), nothing is installed.
`--memory` adds the peak RSS of rmt_t as a backbone at 800x1344, each path in its own process.
Writes results/cpu/rmt_cpu.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

import zoo
from bench.device import proc_status_kb
from benchmarks import _common as shared

ROOT = Path(__file__).resolve().parents[1]

TOL = 1e-4
SIZE = 224


def build_paths(
    name: str, batch: int, official, seed: int = 0
) -> tuple[list[shared.Timed], dict[str, float], dict[str, str]]:
    """The labelled forward passes for one model and batch that ran, each one's error against the first, and the
    error of each that did not run."""
    torch.manual_seed(seed)
    x = torch.randn(batch, 3, SIZE, SIZE)
    paths = []
    if official is None:
        ours = zoo.load(name)
    else:
        theirs, ours = shared.official_and_ours(official, name)
        compiled_theirs = torch.compile(theirs)
        paths += [
            shared.Timed("official eager", lambda: theirs(x)),
            shared.Timed("official compiled", lambda: compiled_theirs(x)),
        ]
    reference = copy.deepcopy(ours).set_attn_impl("reference")
    compiled_ours = torch.compile(ours, fullgraph=True)
    paths += [
        shared.Timed("ours eager", lambda: ours(x)),
        shared.Timed("ours compiled", lambda: compiled_ours(x)),
        shared.Timed("reference path", lambda: reference(x)),
    ]
    return shared.agreeing_calls(paths, TOL, f"{name} batch {batch}")


def profile(paths: list[shared.Timed], top: int) -> dict[str, list[dict]]:
    """Self CPU time of the `top` costliest operators in one forward of each path (torch.profiler)."""
    tables = {}
    with torch.inference_mode():
        for p in paths:
            with torch.profiler.profile() as prof:
                p.call()
            events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
            tables[p.label] = [
                {"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "calls": e.count} for e in events[:top]
            ]
    return tables


def peak_memory_child(impl: str, height: int, width: int, threads: int) -> None:
    """Runs in a subprocess: prints the forward's peak RSS increase in MiB as JSON.

    Read from this process's own high-water mark (VmHWM), reset just before the forward: getrusage's ru_maxrss
    also carries the parent's peak across fork and exec, which hid every increase once the parent had grown.
    """
    torch.set_num_threads(threads)
    model = zoo.load("rmt_t", features_only=True, attn_impl=impl)
    x = torch.randn(1, 3, height, width)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = proc_status_kb("VmRSS") / 1024
    start = time.perf_counter()
    with torch.inference_mode():
        model(x)
    seconds = time.perf_counter() - start
    peak = proc_status_kb("VmHWM") / 1024
    print(json.dumps({"impl": impl, "peak_rss_increase_mib": peak - before, "seconds": seconds}))


def peak_memory(height: int, width: int, threads: int) -> list[dict]:
    rows = []
    for impl in ("auto", "reference"):
        cmd = [sys.executable, "-m", "benchmarks.rmt_cpu", "--child", impl, "--threads", str(threads)]
        cmd += ["--memory-size", str(height), str(width)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    return rows


def markdown(result: dict) -> str:
    env = result["env"]
    facts = [
        f"{env['cpu']}, {env['threads']} threads, torch {env['torch']}, Python {env['python']}, fp32, inference_mode, "
        f"{SIZE}x{SIZE}, random weights (the official model's, loaded into ours), commit {env['git_commit']}",
        shared.load_fact(
            result,
            "2 cores shared with other work: rounds are interleaved so load hits every path alike; medians over rounds",
        ),
    ]
    lines = shared.report_head("RMT on CPU: ours against the official code", result, facts)
    for row in result["rows"]:
        heading = f"{row['model']}, batch {row['batch']} ({row['rounds']} rounds)"
        first = next(iter(row["img_s"]))
        columns = ["path", "img/s (median)", "min", "max", "img per CPU-s (median)", f"rel. err vs {first}"]
        cells = [
            [label, *(f"{v:.2f}" for v in (row["median"][label], min(rates), max(rates), row["median_cpu"][label])),
             f"{row['rel_err'][label]:.1e}"]
            for label, rates in row["img_s"].items()
        ]  # fmt: skip
        lines += shared.table(heading, columns, cells) + shared.ratio_lines(row["ratios"])
        lines += ["Same, per CPU-second: " + ", ".join(f"{k} {v:.2f}x" for k, v in row["ratios_cpu"].items()), ""]
        lines += shared.failed_lines(row["failed"])
        for label, ops in row.get("profile", {}).items():
            total = sum(o["self_ms"] for o in ops)
            lines += [f"Profile, one forward of {label} (top operators by self CPU time; {total:.0f} ms in these):", ""]
            lines += ["| operator | self ms | calls |", "|---|---|---|"]
            lines += [f"| {o['op']} | {o['self_ms']:.1f} | {o['calls']} |" for o in ops] + [""]
    if result.get("peak_memory_rmt_t"):
        fast, ref = result["peak_memory_rmt_t"]
        lines += [
            "## rmt_t backbone (features_only), batch 1, 800x1344, each path in its own process",
            "",
            "| path | peak RSS increase (MiB) | forward (s) |",
            "|---|---|---|",
            f"| ours (auto) | {fast['peak_rss_increase_mib']:.0f} | {fast['seconds']:.2f} |",
            f"| reference path | {ref['peak_rss_increase_mib']:.0f} | {ref['seconds']:.2f} |",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", type=Path, help="the official RMT.py (qhfan/RMT classfication_release/RMT.py)")
    ap.add_argument(
        "--models", nargs="+", default=["rmt_t", "rmt_s", "rmt_b"], choices=list(shared.OFFICIAL_RMT_BUILDERS)
    )
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-round-s", type=float, default=1.0, help="whole forwards per round, at least this long")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="also profile one forward per path: top N ops")
    ap.add_argument("--memory", action="store_true", help="also the rmt_t backbone peak RSS at 800x1344")
    ap.add_argument("--memory-only", action="store_true", help="only the rmt_t backbone peak RSS (no throughput)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "cpu")
    ap.add_argument("--child", choices=("auto", "reference"), help=argparse.SUPPRESS)
    ap.add_argument("--memory-size", type=int, nargs=2, default=(800, 1344), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        peak_memory_child(args.child, *args.memory_size, args.threads)
        return 0

    official, stubbed = None, []
    if args.official is not None:
        official, stubbed = shared.import_official_rmt(args.official)
    note = shared.official_note(args.official, stubbed)
    print(f"official code: {note}", flush=True)
    result = {"command": " ".join(["python", "-m", "benchmarks.rmt_cpu", *(sys.argv[1:] if argv is None else argv)]),
              "env": shared.machine(args.threads), "official": note, "stubbed": stubbed, "rows": []}  # fmt: skip
    for name in [] if args.memory_only else args.models:
        for batch in args.batch:
            paths, errors, failed = build_paths(name, batch, official)
            shared.interleaved(paths, batch, args.rounds, args.min_round_s)
            median = {p.label: p.median for p in paths}
            median_cpu = {p.label: p.median_cpu for p in paths}
            row = {"model": name, "batch": batch, "rounds": args.rounds, "img_s": {p.label: p.img_s for p in paths},
                   "img_cpu_s": {p.label: p.img_cpu_s for p in paths}, "median": median, "median_cpu": median_cpu,
                   "rel_err": errors, "failed": failed, "ratios": shared.ratios(median),
                   "ratios_cpu": shared.ratios(median_cpu)}  # fmt: skip
            if args.profile:
                row["profile"] = profile(paths, args.profile)
            result["rows"].append(row)
            print(json.dumps({k: row[k] for k in ("model", "batch", "median", "ratios", "ratios_cpu")}), flush=True)
    if args.memory or args.memory_only:
        result["peak_memory_rmt_t"] = peak_memory(*args.memory_size, args.threads)
    result["uptime_after"] = shared.machine(args.threads)["uptime"]
    md = markdown(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rmt_cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "rmt_cpu.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
