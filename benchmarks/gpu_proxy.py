"""Predicted H200 work per forward or training step, counted on a CPU: eager kernels and bytes, compiled launches
and bytes.

    python -m benchmarks.gpu_proxy --official /path/to/qhfan/RMT/classfication_release/RMT.py
    python -m benchmarks.gpu_proxy --models rmt_s swin_t --modes compiled --out /tmp/proxy
    python -m benchmarks.gpu_proxy --models rmt_s swin_t --official /path/to/RMT.py --train --out results/proxy/train

Each model (random weights) runs on fake CUDA tensors at batch x 3 x size x size under bf16 autocast (`--dtype fp32`:
none), with no GPU: benchmarks/_gpu_proxy.py explains how and what counts as a kernel and a byte. Eager: one traced
forward (after a warm-up); compiled: inductor's launches for a pretend H200. `--train`: one training step instead
(forward in train mode, a loss, backward to every parameter's gradient; no optimizer step), eager as autograd runs it
and compiled as AOTAutograd splits it into inductor's forward and backward graphs. Fake tensors hold no data, so the
batch costs nothing and the bytes are those of the batch asked for (no extrapolation). Times and img/s are predictions:
bytes / 2.1 TB/s compiled, / 1.6 TB/s eager, calibrated on results/h200 (checked again in the report, where the batch,
size and dtype match that run). The official RMT.py is given by path and built by its own builder
(`--official-variants`, rmt_s by default). Writes OUT/gpu_proxy.json and OUT/gpu_proxy.md (default OUT: results/proxy),
rewritten after each model, so a stopped run keeps what it counted. The numbers depend only on the code and torch's
version: a rerun gives the same files.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import torch

import zoo
from benchmarks import _gpu_proxy as gp
from common.provenance import git_commit
from zoo.rmt import ATTN_IMPLS
from benchmarks._common import OFFICIAL_RMT_BUILDERS, build_official, import_official_rmt, official_source

ROOT = Path(__file__).resolve().parents[1]

MODELS = ("rmt_s", "swin_t", "rmt_t", "rmt_b", "rmt_l", "maxvit_t", "internimage_t")  # the headline pair first
DTYPES = {"bf16": torch.bfloat16, "fp32": None}
MODES = ("eager", "compiled")
# Issue 34's targets for rmt_s at batch 256, bf16, 224^2 (GB = 1e9 bytes); a training step's, against swin_t's.
TARGETS = {"compiled GB": 42.7, "compiled launches": 500, "stage-1 block compiled GB": 3.5, "eager kernels": 900,
           "eager GB": 80.0, "training step GB / swin_t's": 1.3}  # fmt: skip
# Profile rows of results/h200 (torch.profiler names) and the dispatched aten ops each counts.
PROFILE_OPS = {
    "aten::addmm": ("addmm",),
    "aten::bmm": ("bmm",),
    "aten::_softmax": ("_softmax",),
    "aten::cat": ("cat", "stack"),  # stack runs cat
    "aten::native_layer_norm": ("native_layer_norm",),
    "aten::mul": ("mul",),
    "aten::add": ("add",),
    "aten::gelu": ("gelu",),
    "aten::flip": ("flip",),
}
CONV_ROWS = ("aten::cudnn_convolution", "aten::_conv_depthwise2d")  # both are aten convolution calls


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), help="zoo model names")
    ap.add_argument("--official", type=Path, help="the official qhfan/RMT classfication_release/RMT.py")
    ap.add_argument("--official-variants", nargs="+", default=["rmt_s"], choices=sorted(OFFICIAL_RMT_BUILDERS))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="bf16: autocast; fp32: none")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--train", action="store_true", help="count one training step (forward + backward) per mode")
    ap.add_argument(
        "--attn-impls",
        nargs="+",
        default=[],
        choices=[i for i in ATTN_IMPLS if i != "auto"],
        help="also count each RMT model with these attention paths (rows 'rmt_s attn_impl=triton', ...)",
    )
    ap.add_argument("--h200", type=Path, default=ROOT / "results" / "h200", help="the measured run to calibrate on")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "proxy")
    args = ap.parse_args(argv)
    unknown = [m for m in args.models if m not in zoo.list_models()]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; `python -m zoo list` names them.")
    if args.batch < 1 or args.size < 32:
        ap.error("--batch must be at least 1 and --size at least 32.")
    if args.official is not None and (args.official.suffix != ".py" or not args.official.is_file()):
        ap.error(f"--official {args.official} is not the official RMT.py file.")
    return args


def measured(h200: Path) -> dict:
    """The H200's bf16 batch-256 224^2 forward times (ms) of the paths the proxy predicts, from its result files."""
    out = {"source": "results/h200 (torch 2.11, bf16 autocast, batch 256, 224^2; ours at commit e93e383)"}
    gpu = json.loads((h200 / "rmt_gpu.json").read_text())
    setting = next(s for s in gpu["settings"] if s["batch"] == 256)
    for label, img_s in setting["median"].items():
        if label.startswith("official"):
            out[f"{label} rmt_s"] = 256 / img_s * 1e3
    for line in (h200 / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("status") == "ok" and row["model"] == "swin_t" and row["batch_size"] == 256:
            how = {"eager": "eager", "compile": "compiled"}[row["backend"]]
            out[f"swin_t {how}"] = 256 / row["throughput_ips"] * 1e3
    out["profile"] = {label: {r["op"]: r["calls"] for r in rows} for label, rows in gpu["profile"].items()}
    return out


def stats_row(stats: gp.OpStats, tbps: float, batch: int) -> dict:
    return {
        "kernels": stats.kernels,
        "GB": stats.bytes / 1e9,
        "library kernels": stats.opaque_kernels,
        "library GB": stats.opaque_bytes / 1e9,
        "predicted ms": gp.predict_ms(stats.bytes, tbps),
        "predicted img/s": gp.predict_img_s(stats.bytes, tbps, batch) if stats.bytes else None,
    }


def count(model: torch.nn.Module, args: argparse.Namespace) -> dict:
    """Eager and compiled kernels and bytes of one model, in all and per block."""
    dtype = DTYPES[args.dtype]
    result = {}
    if "eager" in args.modes:
        trace = (gp.eager_train_trace if args.train else gp.eager_trace)(model, args.batch, args.size, dtype)
        result["eager"] = {
            **stats_row(trace.total, gp.EAGER_TBPS, args.batch),
            "calls": dict(sorted(trace.calls.items())),
            "per_op": {op: stats_row(s, gp.EAGER_TBPS, args.batch) for op, s in trace.per_op.items()},
            "per_block": {b: stats_row(s, gp.EAGER_TBPS, args.batch) for b, s in trace.per_block.items()},
            "undeclared custom ops": dict(trace.undeclared),
        }
    if "compiled" in args.modes:
        launches = (gp.compiled_train_kernels if args.train else gp.compiled_kernels)(
            model, args.batch, args.size, dtype
        )
        total = gp.OpStats()
        for launch in launches:
            total.add(launch.bytes, launch.opaque, launch.launches)
        result["compiled"] = {
            **stats_row(total, gp.COMPILED_TBPS, args.batch),
            "per_block": {b: stats_row(s, gp.COMPILED_TBPS, args.batch) for b, s in gp.per_block(launches).items()},
            "undeclared custom ops": dict(collections.Counter(launch.op for launch in launches if launch.undeclared)),
        }
    return result


def calibration(results: dict, cal: dict) -> list[dict]:
    """Bytes the proxy counts over the time the H200 measured, for each path both have."""
    rows = []
    paths = [("official compiled rmt_s", "official rmt_s", "compiled"),
             ("official eager rmt_s", "official rmt_s", "eager"),
             ("swin_t compiled", "swin_t", "compiled"), ("swin_t eager", "swin_t", "eager")]  # fmt: skip
    for label, name, mode in paths:
        if label in cal and mode in results.get(name, {}):
            gb = results[name][mode]["GB"]
            rows.append({"path": f"{name} {mode}", "GB": gb, "measured ms": cal[label], "TB/s": gb / cal[label]})
    return rows


def call_check(results: dict, cal: dict) -> list[dict]:
    """The official code's eager calls per op against the H200 profile's (its top rows only)."""
    if not cal or "eager" not in results.get("official rmt_s", {}):  # no H200 run to check against
        return []
    profile, calls = cal["profile"]["official eager"], results["official rmt_s"]["eager"]["calls"]
    rows = [{"op": row, "H200": profile[row], "proxy": sum(calls.get(op, 0) for op in ops)}
            for row, ops in PROFILE_OPS.items() if row in profile]  # fmt: skip
    if any(r in profile for r in CONV_ROWS):
        rows.append({"op": " + ".join(CONV_ROWS), "H200": sum(profile.get(r, 0) for r in CONV_ROWS),
                     "proxy": calls.get("convolution", 0)})  # fmt: skip
    return rows


def targets(results: dict, train: bool) -> list[dict]:
    """Issue 34's targets for rmt_s, read against this run (only at batch 256, bf16, 224^2)."""
    ours, swin = results.get("rmt_s", {}), results.get("swin_t", {})
    rows = []
    if train:
        goal = TARGETS["training step GB / swin_t's"]
        rows += [(f"training step {mode} GB / swin_t's", ours[mode]["GB"] / swin[mode]["GB"], goal)
                 for mode in MODES if mode in ours and mode in swin]  # fmt: skip
    elif "compiled" in ours:
        stage1 = [v["GB"] for b, v in ours["compiled"]["per_block"].items() if b.startswith("layers.0.blocks.")]
        rows += [("compiled GB (swin_t's)", ours["compiled"]["GB"], TARGETS["compiled GB"]),
                 ("compiled launches", ours["compiled"]["kernels"], TARGETS["compiled launches"]),
                 ("largest stage-1 block compiled GB", max(stage1), TARGETS["stage-1 block compiled GB"])]  # fmt: skip
    if "eager" in ours and not train:
        rows += [("eager kernels", ours["eager"]["kernels"], TARGETS["eager kernels"]),
                 ("eager GB", ours["eager"]["GB"], TARGETS["eager GB"])]  # fmt: skip
    return [{"target": t, "now": now, "goal": goal, "met": now <= goal} for t, now, goal in rows]


def fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.2f}"
    return "" if v is None else str(v)


def table(rows: list[dict], keys: list[str]) -> list[str]:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    return lines + ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows] + [""]


MODEL_KEYS = ["model", "eager kernels", "eager GB", "eager library kernels", "predicted eager img/s",
              "compiled launches", "compiled GB", "compiled library launches", "predicted compiled img/s",
              "undeclared custom ops"]  # fmt: skip


def model_row(name: str, result: dict) -> dict:
    """One model's row of the table: kernels, GB, library kernels and predicted img/s eager and compiled, and the
    custom ops counted without a declared cost."""
    row = {"model": name}
    for mode in MODES:
        r = result.get(mode, {})
        kernels = "kernels" if mode == "eager" else "launches"
        row.update({f"{mode} {kernels}": r.get("kernels"), f"{mode} GB": r.get("GB"),
                    f"{mode} library {kernels}": r.get("library kernels"),
                    f"predicted {mode} img/s": r.get("predicted img/s")})  # fmt: skip
    undeclared = {op for mode in MODES for op in result.get(mode, {}).get("undeclared custom ops", {})}
    row["undeclared custom ops"] = ", ".join(sorted(undeclared)) or "none"
    return row


def markdown(report: dict) -> str:
    a = report["args"]
    what = "training step (forward + backward, no optimizer step)" if a.get("train") else "forward"
    lines = [
        f"# GPU proxy: kernels and bytes per {what} on fake CUDA (batch {a['batch']}, {a['size']}², {a['dtype']})",
        "",
        f"Command: `{report['command']}`  ",
        f"torch {report['torch']}, our code at commit {report['git_commit']}, official code: {report['official']}.  ",
        "Counted on a CPU with no GPU (`benchmarks/_gpu_proxy.py` says how). **Every figure below is predicted**: "
        "kernels and bytes as fake CUDA tensors count them, ms and img/s "
        f"from bytes at {gp.COMPILED_TBPS} TB/s compiled and {gp.EAGER_TBPS} TB/s eager (calibrated on results/h200); "
        "library kernels (cuDNN/cuBLAS convolutions, matmuls, attention) are counted apart: their speed need not "
        "follow their bytes. Custom ops count as they declare (zoo/_op_cost.py; `rmt_zoo::retention`: its launch "
        "plan); an undeclared one is listed.",
        "",
        "## Per model",
        "",
    ]
    lines += table([model_row(name, r) for name, r in report["results"].items()], MODEL_KEYS)
    if report["calibration"]:
        lines += ["## Calibration against the H200 (measured time, proxy bytes)", ""]
        lines += table(report["calibration"], ["path", "GB", "measured ms", "TB/s"])
    if report["call_check"]:
        lines += ["## Eager calls of the official code: proxy against the H200 profile (its top rows)", ""]
        lines += table([{**r, "equal": r["H200"] == r["proxy"]} for r in report["call_check"]],
                       ["op", "H200", "proxy", "equal"])  # fmt: skip
    if report["targets"]:
        lines += ["## Issue 34's targets for rmt_s (proxy, predicted)", ""]
        lines += table(report["targets"], ["target", "now", "goal", "met"])
    lines += ["## Per block", "", "Predicted ms at the calibrated bandwidths. A compiled launch belongs to the block "
              "of its latest origin op; a block's first launches may hold the previous block's last ops.",
              ""]  # fmt: skip
    for name, r in report["results"].items():
        blocks = {}
        for mode in ("eager", "compiled"):
            for b, s in r.get(mode, {}).get("per_block", {}).items():
                blocks.setdefault(b, {"block": b}).update(
                    {f"{mode} kernels": s["kernels"], f"{mode} GB": s["GB"], f"predicted {mode} ms": s["predicted ms"]}
                )
        lines += [f"### {name}", ""]
        lines += table(list(blocks.values()), ["block", "eager kernels", "eager GB", "predicted eager ms",
                                               "compiled kernels", "compiled GB", "predicted compiled ms"])  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    official = import_official_rmt(args.official)[0] if args.official else None
    standard = args.batch == 256 and args.size == 224 and args.dtype == "bf16"
    cal = measured(args.h200) if standard and not args.train else {}
    shown = [a if a != str(args.official) else "PATH/TO/RMT.py" for a in (sys.argv[1:] if argv is None else argv)]
    report = {
        "command": f"python -m benchmarks.gpu_proxy {' '.join(shown)}".strip(),
        "args": {
            "models": args.models,
            "batch": args.batch,
            "size": args.size,
            "dtype": args.dtype,
            "modes": args.modes,
            "attn_impls": args.attn_impls,
            "train": args.train,
        },
        "torch": torch.__version__,
        "git_commit": git_commit(),
        "official": official_source(args.official) if args.official else "none given (--official)",
        "bandwidth_TBps": {"compiled": gp.COMPILED_TBPS, "eager": gp.EAGER_TBPS},
        "results": {},
    }
    builders = [(name, lambda name=name: zoo.load(name)) for name in args.models]
    builders += [
        (f"{name} attn_impl={impl}", lambda name=name, impl=impl: zoo.load(name, attn_impl=impl))
        for name in args.models
        if zoo.info(name).family == "rmt"
        for impl in args.attn_impls
    ]
    if official is not None:
        builders[1:1] = [(f"official {v}", lambda v=v: build_official(official, v)) for v in args.official_variants]
    args.out.mkdir(parents=True, exist_ok=True)
    for label, build in builders:
        start = time.perf_counter()
        torch.manual_seed(0)
        report["results"][label] = count(build(), args)
        report["calibration"] = calibration(report["results"], cal)
        report["call_check"] = call_check(report["results"], cal)
        report["targets"] = targets(report["results"], args.train) if standard else []
        (args.out / "gpu_proxy.json").write_text(json.dumps(report, indent=1) + "\n")
        (args.out / "gpu_proxy.md").write_text(markdown(report) + "\n")
        summary = {m: (r["kernels"], round(r["GB"], 2)) for m, r in report["results"][label].items()}
        print(f"{label}: {summary} (kernels, GB) in {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
