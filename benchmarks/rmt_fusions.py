"""RMT's fusions of issue 28 on CPU: aten ops per eager forward and interleaved timings, against the code before
them (restored in this process by patching) and against the official qhfan/RMT code.

    python -m benchmarks.rmt_fusions --official PATH/RMT.py --out results/cpu/fusions

Counts: the aten ops one eager forward dispatches under no_grad, by the GPU proxy's tracer and its definition of a
kernel (benchmarks/_gpu_proxy.py; a first forward fills the caches, the second is counted), as kernels, dtype casts
(`_to_copy` changing dtype) and `new_ones`/`constant_pad_nd` (the folded conv kernels), in three settings: CPU
fp32, CPU bf16 autocast, and bf16 autocast on the proxy's fake CUDA (no driver; autocast applies CUDA's own policy,
where softmax runs in fp32). "before" patches back what the
fusions replaced: the folded kernels rebuilt on every call, and the attention core run under autocast.
Timings, interleaved round by round (fp32, inference_mode, 224x224, medians): official eager and compiled where
they run, ours eager, ours eager before, ours compiled (the conv, as CPU graphs take it) and ours compiled with
the shifted multiply-add depthwise convs (`_rmt_fast.depthwise_taps`, which compiled graphs take on CUDA).
Writes OUT/rmt_fusions.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
from pathlib import Path
from unittest import mock

import torch

import zoo
from benchmarks import _gpu_proxy as gp
from zoo import _retention, _rmt_fast
from benchmarks._common import (
    Timed,
    agreeing_calls,
    failed_lines,
    import_official_rmt,
    interleaved,
    load_fact,
    machine,
    official_and_ours,
    official_note,
    ratio_lines,
    report_head,
    table,
)

ROOT = Path(__file__).resolve().parents[1]

TOL = 1e-4
SIZE = 224


def _old_matmul_softmax(q, k, v, bias):
    """The attention core as it was: under autocast, CUDA's policy runs softmax in fp32."""
    return torch.matmul(torch.softmax(torch.matmul(q, k.transpose(-1, -2)).add_(bias), -1), v)


@contextlib.contextmanager
def before_fusions():
    """The code before the fusions: folded kernels rebuilt on every call, the attention core under autocast."""
    with (
        mock.patch.object(_rmt_fast.DWConv2d, "_weights", lambda self, x: (self._fold(), self.conv.bias)),
        mock.patch.object(_retention, "matmul_softmax", _old_matmul_softmax),
    ):
        yield


def count(name: str, batch: int, setting: str) -> dict[str, int]:
    """Kernels, dtype casts and folded-kernel ops of one eager forward, counted by the GPU proxy's tracer (on fake
    CUDA, its `eager_trace`)."""
    torch.manual_seed(0)
    model = zoo.load(name).requires_grad_(False)
    if setting == "fake cuda bf16 autocast":
        trace = gp.eager_trace(model, batch, SIZE, torch.bfloat16)
    else:
        x = torch.randn(batch, 3, SIZE, SIZE)
        trace = gp.EagerTrace()
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=setting == "cpu bf16 autocast"):
            model(x)
            with gp.Tracer(trace):
                model(x)
    fold_ops = trace.calls["new_ones"] + trace.calls["constant_pad_nd"]
    return {"kernels": trace.total.kernels, "casts": trace.casts, "fold ops": fold_ops}


def counts(name: str, batch: int) -> dict[str, dict[str, dict[str, int]]]:
    out = {}
    for setting in ("cpu fp32", "cpu bf16 autocast", "fake cuda bf16 autocast"):
        with before_fusions():
            before = count(name, batch, setting)
        out[setting] = {"before": before, "after": count(name, batch, setting)}
        print(json.dumps({setting: out[setting]}), flush=True)
    return out


def build_paths(
    name: str, batch: int, official, compiled_too: bool = True
) -> tuple[list[Timed], dict[str, float], dict[str, str]]:
    torch.manual_seed(0)
    x = torch.randn(batch, 3, SIZE, SIZE)
    paths = []
    if official is None:
        ours = zoo.load(name)
    else:
        theirs, ours = official_and_ours(official, name)
        paths.append(Timed("official eager", lambda: theirs(x)))
        if compiled_too:
            compiled_theirs = torch.compile(theirs)
            paths.append(Timed("official compiled", lambda: compiled_theirs(x)))
    before = copy.deepcopy(ours)
    compiled = torch.compile(copy.deepcopy(ours), fullgraph=True)
    shifted = torch.compile(copy.deepcopy(ours), fullgraph=True)

    def ours_before():
        with before_fusions():
            return before(x)

    def ours_shifted():
        with mock.patch.object(_rmt_fast, "SHIFTED_CONV_DEVICES", ("cpu", "cuda")):
            return shifted(x)

    paths += [Timed("ours eager", lambda: ours(x)), Timed("ours eager before", ours_before)]
    if compiled_too:
        paths += [Timed("ours compiled", lambda: compiled(x)), Timed("ours compiled, shifted taps", ours_shifted)]
    return agreeing_calls(paths, TOL, f"{name} batch {batch}")


PAIRS = [
    ("ours eager", "official eager"),
    ("ours eager before", "official eager"),
    ("ours eager", "ours eager before"),
    ("ours compiled", "official compiled"),
    ("ours compiled, shifted taps", "official compiled"),
    ("ours compiled, shifted taps", "ours compiled"),
    ("ours compiled", "official eager"),
]


def markdown(result: dict) -> str:
    env = result["env"]
    facts = [
        f"{env['cpu']}, {env['threads']} threads, torch {env['torch']}, Python {env['python']}, commit "
        f"{env['git_commit']}",
        load_fact(
            result,
            "the machine is shared: rounds are interleaved so load hits every path alike; medians "
            "over rounds, min and max show the noise",
        ),
    ]
    lines = report_head("RMT fusions (issue 28) on CPU: op counts and timings, before and after", result, facts)
    for row in result["counts"]:
        heading = f"Ops per eager forward, {row['model']}, batch {row['batch']}, no_grad (before / after)"
        columns = ["setting", "kernels", "dtype casts", "folded-kernel ops (new_ones, pad)"]
        cells = [
            [setting, *(f"{c['before'].get(k, 0)} / {c['after'].get(k, 0)}" for k in ("kernels", "casts", "fold ops"))]
            for setting, c in row["counts"].items()
        ]
        lines += [*table(heading, columns, cells), ""]
    for row in result["rows"]:
        heading = f"{row['model']}, batch {row['batch']}, fp32, inference_mode ({row['rounds']} rounds)"
        columns = ["path", "img/s (median)", "min", "max", "rel. err vs first"]
        cells = [
            [
                label,
                *(f"{v:.2f}" for v in (row["median"][label], min(rates), max(rates))),
                f"{row['rel_err'][label]:.1e}",
            ]
            for label, rates in row["img_s"].items()
        ]
        lines += table(heading, columns, cells) + ratio_lines(row["ratios"]) + failed_lines(row["failed"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", type=Path, help="the official RMT.py (qhfan/RMT classfication_release/RMT.py)")
    ap.add_argument("--model", default="rmt_s", choices=["rmt_t", "rmt_s", "rmt_b", "rmt_l"])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--count-batch", type=int, default=2, help="batch of the op counts (counts do not depend on it)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-round-s", type=float, default=1.0)
    ap.add_argument("--no-timing", action="store_true", help="only the op counts")
    ap.add_argument("--eager-only", action="store_true", help="time the eager paths only (no compiles)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "cpu" / "fusions")
    args = ap.parse_args(argv)
    if any(b < 1 for b in args.batch) or args.threads < 1 or args.rounds < 1:
        ap.error("--batch, --threads and --rounds take positive integers.")
    torch.set_num_threads(args.threads)
    official, stubbed = (None, []) if args.official is None else import_official_rmt(args.official)
    result = {
        "command": " ".join(["python", "-m", "benchmarks.rmt_fusions", *(sys.argv[1:] if argv is None else argv)]),
        "env": machine(args.threads),
        "official": official_note(args.official, stubbed),
        "counts": [{"model": args.model, "batch": args.count_batch, "counts": counts(args.model, args.count_batch)}],
        "rows": [],
    }
    write(result, args.out)
    for batch in [] if args.no_timing else args.batch:
        paths, errors, failed = build_paths(args.model, batch, official, compiled_too=not args.eager_only)
        interleaved(paths, batch, args.rounds, args.min_round_s)
        median = {p.label: p.median for p in paths}
        row = {"model": args.model, "batch": batch, "rounds": args.rounds, "img_s": {p.label: p.img_s for p in paths},
               "median": median, "rel_err": errors, "failed": failed,
               "ratios": {f"{a} / {b}": median[a] / median[b] for a, b in PAIRS if a in median and b in median},
               }  # fmt: skip
        result["rows"].append(row)
        print(json.dumps({k: row[k] for k in ("batch", "median", "ratios")}), flush=True)
        write(result, args.out)
    print(write(result, args.out))
    return 0


def write(result: dict, out: Path) -> str:
    """Write what is measured so far (after the counts and after each batch: a run stopped early keeps it)."""
    result["uptime_after"] = machine(result["env"]["threads"])["uptime"]
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(result)
    (out / "rmt_fusions.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "rmt_fusions.md").write_text(md + "\n")
    return md


if __name__ == "__main__":
    raise SystemExit(main())
