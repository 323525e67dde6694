"""RMT on a GPU against the official qhfan/RMT code, same weights, interleaved in one process.

    python benchmarks/rmt_gpu.py --official .gl/RMT.py --out OUT              # a CUDA machine (about 3 min, H100)
    python benchmarks/rmt_gpu.py --official .gl/RMT.py --out OUT --rehearse   # CPU, tiny sizes: the plumbing only

rmt_s at 224x224 in two settings: bf16 autocast at batch 256 (throughput) and fp32 at batch 1 (latency). Paths,
interleaved round by round: official eager, official torch.compile, ours eager (attn_impl="auto": SDPA on a GPU),
ours torch.compile(fullgraph=True); compiled graphs are static (dynamic=False). The official model's random initial
weights are loaded into ours (`checkpoint_filter_fn`, strict). Before timing, every path's output is checked
against the official eager fp32 output on the same input: 1e-4 in fp32, 5e-2 under bf16 autocast (the harness's
bf16 bound: bf16 keeps 8 significant bits and errors compound over rmt_s's 29 blocks); the official bf16's own error
is reported beside ours. A path that raises (a compiler bug, say) is reported and left out; the others are timed.
TF32 is off throughout (cuDNN's default TF32 convolutions alone exceed 1e-4), so fp32 is fp32. Rounds are bracketed
by synchronisation; medians over rounds. After the first setting: rmt_t as a backbone (features_only) at 800x1344,
batch 1, fp32, the peak of torch.cuda.max_memory_allocated over one forward of ours, of our reference path and of
the official model (its whole classifier: it has no features_only), each after a warm-up forward, empty_cache and
reset_peak_memory_stats; and a torch.profiler table of one eager forward of each implementation in the first
setting (top operators by self CUDA time).
The official RMT.py imports fvcore and einops, which its model does not use: where missing they are stubbed.
Writes OUT/rmt_gpu.md, OUT/rmt_gpu.json and OUT/rmt_gpu_profile.md, rewritten after each part, so a run stopped
early keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import zoo  # noqa: E402
from bench.env import collect_env  # noqa: E402
from bench.measure import numerics, synchronize  # noqa: E402
from bench.precision import precision  # noqa: E402
from benchmarks._common import (  # noqa: E402
    Timed,
    build_official,
    failed_lines,
    first_calls,
    import_official_rmt,
    interleaved,
    machine,
    official_and_ours,
    official_note,
    ratios,
    rel_err,
)

# The harness's own bounds against eager: fp32, and bf16 autocast.
TOL = {None: precision("fp32").tolerance, torch.bfloat16: precision("amp-bf16").tolerance}


@dataclass(frozen=True)
class Setting:
    label: str
    batch: int
    autocast: torch.dtype | None  # None: fp32


@dataclass(frozen=True)
class Config:
    device: str
    model: str
    size: int
    settings: tuple[Setting, ...]
    dense_model: str
    dense_size: tuple[int, int]
    rounds: int
    min_round_s: float
    profile_rows: int
    compile_backend: str
    threads: int | None = None  # None: torch's default
    arch: dict = field(default_factory=dict)  # the official VisRetNet's arguments; empty: the named model's


GPU = Config(
    device="cuda", model="rmt_s", size=224,
    settings=(Setting("bf16 autocast", 256, torch.bfloat16), Setting("fp32", 1, None)),
    dense_model="rmt_t", dense_size=(800, 1344), rounds=5, min_round_s=0.5, profile_rows=25, compile_backend="inductor",
)  # fmt: skip
# CPU, tiny: every step runs, nothing is measured. A one-block-per-stage RMT with both MaSA forms and layer scale;
# the "eager" compile backend traces the graphs as inductor would get them, without its C++ build.
REHEARSE = Config(
    device="cpu", model="rmt_t", size=64,
    settings=(Setting("bf16 autocast", 2, torch.bfloat16), Setting("fp32", 1, None)),
    dense_model="rmt_t", dense_size=(64, 96), rounds=2, min_round_s=0.02, profile_rows=10, compile_backend="eager",
    threads=1,  # the rehearsal machine is shared: threads spin-waiting on busy cores multiply the time
    arch=dict(embed_dims=[16, 32, 48, 64], depths=[1, 1, 1, 1], num_heads=[2, 2, 4, 4], init_values=[2, 2, 2, 2],
              heads_ranges=[4, 4, 6, 6], mlp_ratios=[3, 3, 3, 3], chunkwise_recurrents=[True, True, False, False],
              layerscales=[False, True, False, True], projection=96, num_classes=10),
)  # fmt: skip


def _under(setting: Setting, device: str, fn: Callable, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A call of fn(x) in the setting's precision."""

    def call() -> torch.Tensor:
        context = torch.autocast(device, dtype=setting.autocast) if setting.autocast else contextlib.nullcontext()
        with context:
            return fn(x)

    return call


def time_setting(cfg: Config, official, setting: Setting) -> tuple[list[Timed], dict]:
    """The four paths of one setting, checked against the official eager fp32 output, then timed interleaved."""
    torch.manual_seed(0)
    x = torch.randn(setting.batch, 3, cfg.size, cfg.size, device=cfg.device)
    theirs, ours = (m.to(cfg.device) for m in official_and_ours(official, cfg.model, cfg.arch))
    compile_args = dict(backend=cfg.compile_backend, dynamic=False)
    models = {
        "official eager": theirs,
        "official compiled": torch.compile(theirs, **compile_args),
        "ours eager": ours,
        "ours compiled": torch.compile(ours, fullgraph=True, **compile_args),
    }
    paths = [Timed(label, _under(setting, cfg.device, m, x)) for label, m in models.items()]
    with torch.inference_mode():
        ref = theirs(x).float()
    start = time.perf_counter()
    paths, outs, failed = first_calls(paths)
    first_call_s = time.perf_counter() - start
    errors = {label: rel_err(out.float(), ref) for label, out in outs.items()}
    tol = TOL[setting.autocast]
    bad = {label: e for label, e in errors.items() if e > tol}
    if bad:
        raise SystemExit(f"{setting.label}: outputs disagree with the official eager fp32 output beyond {tol}: {bad}.")
    interleaved(paths, setting.batch, cfg.rounds, cfg.min_round_s, cfg.device)
    median = {p.label: p.median for p in paths}
    row = {"setting": setting.label, "batch": setting.batch, "rounds": cfg.rounds, "tolerance": tol,
           "rel_err_vs_official_fp32": errors, "failed": failed, "img_s": {p.label: p.img_s for p in paths},
           "median": median, "ratios": ratios(median), "first_calls_s": first_call_s}  # fmt: skip
    return paths, row


def _forward_peak(model: torch.nn.Module, x: torch.Tensor, device: str) -> tuple[dict, object]:
    """One forward's time and peak allocated memory (MiB, CUDA only), after a warm-up forward."""
    cuda = torch.device(device).type == "cuda"
    model.to(device)
    with torch.inference_mode():
        model(x)
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20 if cuda else None
        synchronize(device)
        start = time.perf_counter()
        out = model(x)
        synchronize(device)
        seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    model.to("cpu")
    out = [o.cpu() for o in out] if isinstance(out, (list, tuple)) else out.cpu()
    return {"peak_mib": peak, "allocated_before_mib": before, "forward_s": seconds}, out


def dense_memory(cfg: Config, official) -> dict:
    """The backbone's peak memory and time per path; ours and the reference path share weights and must agree."""
    torch._dynamo.reset()  # compiled graphs of the timed settings hold no memory into these peaks
    torch.manual_seed(0)
    x = torch.randn(1, 3, *cfg.dense_size, device=cfg.device)
    ours = zoo.load(cfg.dense_model, features_only=True, **cfg.arch)
    reference = zoo.load(cfg.dense_model, features_only=True, attn_impl="reference", **cfg.arch)
    reference.load_state_dict(ours.state_dict())
    rows = {}
    rows["ours"], fast = _forward_peak(ours, x, cfg.device)
    rows["reference path"], slow = _forward_peak(reference, x, cfg.device)
    del ours, reference
    official_model = build_official(official, cfg.dense_model, cfg.arch)
    rows["official (whole classifier)"], _ = _forward_peak(official_model, x, cfg.device)
    errors = [rel_err(f, s) for f, s in zip(fast, slow)]
    if max(errors) > TOL[None]:
        raise SystemExit(f"backbone features disagree with the reference path beyond {TOL[None]}: {errors}.")
    return {"model": cfg.dense_model, "size": list(cfg.dense_size), "paths": rows, "rel_err_ours_vs_reference": errors}


def profile(paths: list[Timed], device: str, top: int) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """One forward of each eager path under torch.profiler: the top operators by self device (CPU: self CPU) time,
    as rows and as torch's own table."""
    cuda = torch.device(device).type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    rows, tables = {}, {}
    with torch.inference_mode():
        for p in paths:
            with torch.profiler.profile(activities=activities) as prof:
                p.call()
                synchronize(device)
            events = sorted(prof.key_averages(), key=lambda e: -getattr(e, key))
            rows[p.label] = [{"op": e.key, "self_ms": getattr(e, key) / 1e3, "calls": e.count} for e in events[:top]]
            tables[p.label] = prof.key_averages().table(sort_by=key, row_limit=top)
    return rows, tables


def markdown(result: dict) -> str:
    env = result["env"]
    lines = [
        "# RMT on a GPU: ours against the official code",
        "",
        f"Command: `{result['command']}`",
        "",
        f"- {env['device_name']}, driver {env['gpu_driver']}, CUDA {env['cuda']}, torch {env['torch']}, timm "
        f"{env['timm']}, Python {env['python']}, commit {env['git_commit']}",
        f"- {result['model']} at {result['size']}x{result['size']}, inference_mode, random weights (the official "
        f"model's, loaded into ours), TF32 off ({json.dumps(result['numerics'])}); medians over interleaved rounds",
        f"- official code: {result['official']}",
        "",
    ]
    for row in result["settings"]:
        lines += [
            f"## {row['setting']}, batch {row['batch']} ({row['rounds']} rounds)",
            "",
            f"| path | img/s (median) | min | max | rel. err vs official eager fp32 (bound {row['tolerance']:g}) |",
            "|---|---|---|---|---|",
        ]
        for label, rates in row["img_s"].items():
            stats = (row["median"][label], min(rates), max(rates))
            lines.append(f"| {label} | " + " | ".join(f"{v:.1f}" for v in stats) +
                         f" | {row['rel_err_vs_official_fp32'][label]:.1e} |")  # fmt: skip
        lines += ["", "Ratios of medians: " + ", ".join(f"{k} **{v:.2f}x**" for k, v in row["ratios"].items()), ""]
        lines += [f"First call of each path (compiles included): {row['first_calls_s']:.0f} s in all", ""]
        lines += failed_lines(row["failed"])
    if "dense" in result:
        dense = result["dense"]
        lines += [
            f"## {dense['model']} backbone (features_only), batch 1, {dense['size'][0]}x{dense['size'][1]}, fp32",
            "",
            "| path | peak allocated (MiB) | allocated before (MiB) | forward (s) |",
            "|---|---|---|---|",
        ]
        for label, r in dense["paths"].items():
            mib = [f"{v:.0f}" if v is not None else "n/a (CPU)" for v in (r["peak_mib"], r["allocated_before_mib"])]
            lines.append(f"| {label} | {mib[0]} | {mib[1]} | {r['forward_s']:.3f} |")
        errors = ", ".join(f"{e:.1e}" for e in dense["rel_err_ours_vs_reference"])
        lines += ["", f"Ours against the reference path, per stage: {errors}", ""]
    if "profile" in result:
        lines += [f"Operator profiles of one eager forward per implementation: `{result['profile_file']}`", ""]
    return "\n".join(lines)


def write(result: dict, tables: dict[str, str], out: Path) -> None:
    (out / "rmt_gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "rmt_gpu.md").write_text(markdown(result) + "\n")
    if tables:
        sections = [f"## {label}\n\n```\n{table}\n```\n" for label, table in tables.items()]
        title = f"# One eager forward per implementation, {result['settings'][0]['setting']}, torch.profiler\n\n"
        (out / result["profile_file"]).write_text(title + "\n".join(sections))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", type=Path, required=True, help="qhfan/RMT's classfication_release/RMT.py")
    ap.add_argument("--out", type=Path, required=True, help="folder for rmt_gpu.md, rmt_gpu.json, rmt_gpu_profile.md")
    ap.add_argument("--rehearse", action="store_true", help="CPU, tiny sizes, few rounds: checks the plumbing only")
    args = ap.parse_args(argv)
    cfg = REHEARSE if args.rehearse else GPU
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("rmt_gpu.py needs a CUDA device; --rehearse checks it on CPU.")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    official, stubbed = import_official_rmt(args.official)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"command": " ".join(["python", "benchmarks/rmt_gpu.py", *(sys.argv[1:] if argv is None else argv)]),
              "env": {**collect_env(cfg.device), **machine(torch.get_num_threads())}, "numerics": numerics(),
              "official": official_note(args.official, stubbed), "model": cfg.model, "size": cfg.size,
              "settings": [], "profile_file": "rmt_gpu_profile.md"}  # fmt: skip
    tables: dict[str, str] = {}
    for i, setting in enumerate(cfg.settings):
        start = time.perf_counter()
        paths, row = time_setting(cfg, official, setting)
        result["settings"].append(row)
        if i == 0:
            eager = [p for p in paths if p.label.endswith("eager")]
            result["profile"], tables = profile(eager, cfg.device, cfg.profile_rows)
            del eager
        del paths  # frees this setting's models before the next part's memory is measured
        write(result, tables, args.out)
        print(f"{setting.label}: {json.dumps(row['ratios'])} ({time.perf_counter() - start:.0f} s)", flush=True)
        if i == 0:  # the backbone next: eager and quick, so a run stopped in a later setting's compiles still has it
            start = time.perf_counter()
            result["dense"] = dense_memory(cfg, official)
            write(result, tables, args.out)
            summary = json.dumps(result["dense"]["paths"])
            print(f"backbone memory: {summary} ({time.perf_counter() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
