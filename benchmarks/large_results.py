"""Does a large results file change what is measured, or what reading it costs? Every run appends to one file that
grows without bound, so neither may grow with it (results/README.md has the history).

    python -m benchmarks.large_results --rows 100000 --rounds 3 --out results/cpu/large_results

Writes a results file of N realistic rows (each with 50 step times), then, interleaved round by round, times
`bench.py` on rmt_t at 64x64, batch 1, appending to an empty file and to the large one (the worker's own p50 per
run; medians over rounds); then `bench.py report` on the large file: wall time and the peak resident memory of the
process. Writes large_results.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._common import machine
from bench.results import as_row

ROOT = Path(__file__).resolve().parents[1]

RUN = [
    "--models",
    "rmt_t",
    "--input-size",
    "64",
    "--batch-size",
    "1",
    "--warmup",
    "5",
    "--iters",
    "30",
    "--no-flops",
    "--threads",
    "1",
    "--quiet",
    "--device",
    "cpu",
]
# Runs `bench.py report` in this child and prints its own peak RSS (kB, VmHWM: ru_maxrss would carry this parent's
# peak across exec) last, on stderr.
REPORT = (
    "import sys; sys.argv = ['bench.py', 'report', sys.argv[1]]; from bench.cli import main; "
    "from bench.device import proc_status_kb; code = main(); print(proc_status_kb('VmHWM'), file=sys.stderr); "
    "sys.exit(code)"
)


def write_rows(path: Path, n: int) -> None:
    """N distinct rows shaped like real ones (the key varies by batch size and model, so none collapses)."""
    times = [35.0 + 0.01 * i for i in range(50)]
    with open(path, "w") as f:
        for i in range(n):
            row = {
                "schema_version": 3,
                "model": f"m{i % 97}",
                "backend": "eager",
                "precision": "fp32",
                "batch_size": 1 + i,
                "input_size": [64, 64],
                "device": "cpu",
                "status": "ok",
                "reason": "",
                "params": 14_334_216,
                "gmacs": 0.22,
                "latency_ms": {
                    "mean": 35.0,
                    "p50": 35.0,
                    "p90": 36.0,
                    "p95": 36.5,
                    "p99": 37.0,
                    "std": 0.3,
                    "min": 34.8,
                },
                "times_ms": times,
                "throughput_ips": 28.6,
                "peak_mem_mb": 700.0,
                "env": {"device_name": "CPU", "torch": "x"},
                "command": "python bench.py",
                "timestamp": "2026-11-27T00:00:00+00:00",
            }
            f.write(json.dumps(row) + "\n")


def measured_p50(out: Path) -> float:
    """The p50 (ms) of the newest rmt_t row in `out`, after one run appending to it."""
    proc = subprocess.run(
        [sys.executable, "bench.py", *RUN, "--out", str(out)], cwd=ROOT, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"bench.py failed: {proc.stderr.strip().splitlines()[-1]}")
    with open(out, "rb") as f:  # the newest row is the last line; reading the whole file here would be the cost
        f.seek(max(0, f.seek(0, 2) - (1 << 16)))
        return as_row(f.read().decode().splitlines()[-1])["latency_ms"]["p50"]


def report_cost(path: Path) -> dict:
    """Wall time and peak RSS of `bench.py report PATH` in a fresh process (the imports of torch and the zoo
    included, which a one-row file shows alone)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", REPORT, str(path)], cwd=ROOT, capture_output=True, text=True)
    return {
        "wall_s": time.perf_counter() - t0,
        "peak_rss_mb": int(proc.stderr.strip().splitlines()[-1]) / 1024,
        "exit_code": proc.returncode,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "cpu" / "large_results")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        empty, large = Path(tmp) / "empty.jsonl", Path(tmp) / "large.jsonl"
        t0 = time.perf_counter()
        write_rows(large, args.rows)
        size_mb = large.stat().st_size / 2**20
        print(f"wrote {args.rows} rows ({size_mb:.0f} MiB) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        p50 = {"empty": [], "large": []}
        for r in range(args.rounds):  # interleaved: the machine's load hits both alike
            p50["empty"].append(measured_p50(empty))
            p50["large"].append(measured_p50(large))
            print(f"round {r + 1}: empty {p50['empty'][-1]:.2f} ms, large {p50['large'][-1]:.2f} ms", file=sys.stderr)
        small = Path(tmp) / "small.jsonl"
        write_rows(small, 1)
        report = {name: report_cost(path) for name, path in (("one row", small), (f"{args.rows} rows", large))}
    result = {
        "command": "python -m benchmarks.large_results " + " ".join(sys.argv[1:]),
        "rows": args.rows,
        "file_mib": size_mb,
        "bench_args": RUN,
        "p50_ms": {k: {"runs": v, "median": statistics.median(v)} for k, v in p50.items()},
        "report": report,
        "machine": machine(threads=1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "large_results.json").write_text(json.dumps(result, indent=2) + "\n")
    e, g = result["p50_ms"]["empty"]["median"], result["p50_ms"]["large"]["median"]
    md = f"""# A large results file: measurement and reading cost

`{result["command"]}` on {result["machine"].get("cpu")} (load average {result["machine"]["load_avg"]}).

| results file appended to | rmt_t 64x64 batch 1, p50 ms (median of {args.rounds} interleaved runs) |
|---|---|
| empty | {e:.2f} |
| {args.rows} rows ({size_mb:.0f} MiB) | {g:.2f} ({g / e:.2f}x) |

| `bench.py report` on | wall s | peak RSS MB | exit code |
|---|---|---|---|
""" + "".join(
        f"| {name} | {r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['exit_code']} |\n" for name, r in report.items()
    )
    (args.out / "large_results.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
