"""RMT on a GPU against the official qhfan/RMT code, same weights, interleaved in one process.

    python -m benchmarks.rmt_gpu --official .gl/RMT.py --out OUT   # a CUDA machine
    python -m benchmarks.rmt_gpu --official .gl/RMT.py --out OUT --parts latency   # one part only
    python -m benchmarks.rmt_gpu --official .gl/RMT.py --out OUT --rehearse   # CPU, tiny sizes: the plumbing only

rmt_s at 224x224 in three settings: bf16 autocast at batch 256 (throughput), fp32 at batch 1 (latency), and bf16
autocast training steps at batch 64 (train: forward and backward, eager only, as a compiled training graph would take
minutes of the GPU session to build; the official code, ours "auto", ours with short rows packed, whose backward
packs too, and swin_t; gradients accumulate between steps, as no optimizer runs). Paths,
interleaved round by round: official eager, official torch.compile, ours eager (attn_impl="auto"), ours
torch.compile(fullgraph=True); compiled graphs are static (dynamic=False), and at batch 1 use CUDA graphs
(mode="reduce-overhead", both implementations), the usual way to serve batch 1 when launches dominate. "auto" takes
the fused Triton retention kernels on CUDA (zoo/_retention_triton.py; matmul-softmax where they cannot be built, with
a warning), a choice made on predicted numbers, so the throughput setting times it beside its alternatives: ours
eager with attn_impl="matmul" (what "auto" took before, at these short rows), "triton" (the kernels named, no
fallback) and "sdpa", ours compiled with "matmul", ours eager with its LayerNorms apart from the matmuls (where the
fused kernels run "auto" computes them inside the qkv and fc1 matmuls: this times that kernel against LayerNorm and
cuBLAS), ours eager with short rows packed (zoo/_retention_triton.py's PACK_ROWS: stages 2-3 in 64-row wgmma tiles,
against today's 16-row ones; `SWITCHED` holds both switches); and swin_t, eager and compiled, timm's own code at
equal GMACs.
The official model's random initial weights are loaded into ours (`checkpoint_filter_fn`, strict). Before timing,
every path's output is checked against the eager fp32 output of its own code on the same input: 1e-4 in fp32, 5e-2
under bf16 autocast (the harness's bf16 bound: bf16 keeps 8 significant bits and errors compound over rmt_s's 29
blocks); the official bf16's own error is reported beside ours.
A path that raises (a compiler bug, say) is reported and left out; the others are timed.
TF32 is off throughout (cuDNN's default TF32 convolutions alone exceed 1e-4), so fp32 is fp32. Rounds are bracketed
by synchronisation; medians over rounds. Between the first two settings (--parts picks among throughput, memory,
latency and train, always in that order): rmt_t as a backbone (features_only) at 800x1344, batch 1, fp32, the peak of
torch.cuda.max_memory_allocated over one forward of ours, of our reference path and of the official model (its whole
classifier: it has no features_only), each after a warm-up forward, empty_cache and reset_peak_memory_stats. And a
torch.profiler table of one forward of each path of the throughput setting, compiled ones included (top operators by
self CUDA time).
The official RMT.py imports fvcore and einops, which its model does not use: where missing they are stubbed.
Writes OUT/rmt_gpu.md, OUT/rmt_gpu.json and OUT/rmt_gpu_profile.md, rewritten after each part, so a run stopped
early keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import sys
import time
from dataclasses import dataclass, field
from unittest import mock
from pathlib import Path
from typing import Callable

import torch

import zoo
from zoo import _retention, _retention_triton
from bench.env import collect_env
from bench.device import synchronize
from bench.measure import numerics
from bench.precision import precision
from benchmarks import _common as shared

# The harness's own bounds against eager: fp32, and bf16 autocast.
TOL = {None: precision("fp32").tolerance, torch.bfloat16: precision("amp-bf16").tolerance}


# The path of "auto" with short rows packed (stages 2-3 in 64-row wgmma tiles, against today's 16-row mma.sync ones).
PACKED = "ours eager (auto, short rows packed)"
# Module switches "auto" is timed with as well, each a path: label -> (module, attribute, value for the call).
SWITCHED = {
    # LayerNorm, then cuBLAS: the eager alternative to the LayerNorm-in-matmul kernel "auto" takes without gradients
    "ours eager (auto, LayerNorms apart)": (_retention, "NORMS_IN_MATMUL", False),
    PACKED: (_retention_triton, "PACK_ROWS", True),
}

# What rmt_gpu.py measures, in this order; --parts picks some (a second call finishes what a first one had no time for).
PARTS = ("throughput", "memory", "latency", "train")


@dataclass(frozen=True)
class Setting:
    part: str  # "throughput", "latency" or "train"
    label: str
    batch: int
    autocast: torch.dtype | None  # None: fp32
    compile_mode: str | None = None  # torch.compile's mode for every compiled path; None: its default
    attn_impls: tuple[str, ...] = ()  # ours eager with these attn_impls as well as "auto"
    compiled_attn_impls: tuple[str, ...] = ()  # ours compiled with these attn_impls as well as "auto"
    peers: tuple[str, ...] = ()  # other models (timm's own code) timed eager and compiled beside RMT
    switched: tuple[str, ...] = ()  # ours eager ("auto") with these SWITCHED settings as well
    train: bool = False  # each path a training step (forward, then backward), eager paths only


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
    settings=(Setting("throughput", "bf16 autocast", 256, torch.bfloat16, attn_impls=("matmul", "triton", "sdpa"),
                      compiled_attn_impls=("matmul",), peers=("swin_t",), switched=tuple(SWITCHED)),
              Setting("latency", "fp32", 1, None, compile_mode="reduce-overhead"),
              Setting("train", "bf16 autocast, training step", 64, torch.bfloat16, peers=("swin_t",),
                      switched=(PACKED,), train=True)),
    dense_model="rmt_t", dense_size=(800, 1344), rounds=5, min_round_s=0.5, profile_rows=25, compile_backend="inductor",
)  # fmt: skip
# CPU, tiny: every step runs, nothing is measured. A one-block-per-stage RMT with both MaSA forms and layer scale;
# the "eager" compile backend traces the graphs as inductor would get them, without its C++ build.
REHEARSE = Config(
    device="cpu", model="rmt_t", size=64,
    settings=(Setting("throughput", "bf16 autocast", 2, torch.bfloat16, attn_impls=("sdpa",), peers=("test_convnext",),
                      switched=tuple(SWITCHED)),
              Setting("latency", "fp32", 1, None, compile_mode="reduce-overhead"),
              Setting("train", "bf16 autocast, training step", 2, torch.bfloat16, peers=("test_convnext",),
                      switched=(PACKED,), train=True)),
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

    if not setting.train:
        return call

    def step() -> torch.Tensor:  # gradients recorded inside the harness's inference_mode; they accumulate
        with torch.inference_mode(False), torch.enable_grad():
            out = call()
            out.float().sum().backward()
        return out.detach()

    return step


def _switch(model: torch.nn.Module, label: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """model(x) with the module switch SWITCHED[label] set for the call."""
    module, name, value = SWITCHED[label]

    def call(x: torch.Tensor) -> torch.Tensor:
        with mock.patch.object(module, name, value):
            return model(x)

    return call


def time_setting(cfg: Config, official, setting: Setting) -> tuple[list[shared.Timed], dict]:
    """The setting's paths, each checked against the eager fp32 output of its own code, then timed interleaved."""
    torch.manual_seed(0)
    x = torch.randn(setting.batch, 3, cfg.size, cfg.size, device=cfg.device)
    theirs, ours = (m.to(cfg.device) for m in shared.official_and_ours(official, cfg.model, cfg.arch))
    compile_args = dict(backend=cfg.compile_backend, mode=setting.compile_mode, dynamic=False)
    models = {"official eager": theirs, "ours eager": ours}
    if not setting.train:
        models["official compiled"] = torch.compile(theirs, **compile_args)
        models["ours compiled"] = torch.compile(ours, fullgraph=True, **compile_args)
    for impl in setting.attn_impls:
        models[f"ours eager ({impl})"] = copy.deepcopy(ours).set_attn_impl(impl)
    for impl in setting.compiled_attn_impls:
        models[f"ours compiled ({impl})"] = torch.compile(
            copy.deepcopy(ours).set_attn_impl(impl), fullgraph=True, **compile_args
        )
    for label in setting.switched:
        models[label] = _switch(ours, label)
    owner = dict.fromkeys(models, "official")  # whose code's eager fp32 output each path is checked against
    eager_fp32 = {"official": theirs}
    for name in setting.peers:
        peer = zoo.load(name).eval().to(cfg.device)
        eager_fp32[name] = models[f"{name} eager"] = peer
        owner[f"{name} eager"] = owner[f"{name} compiled"] = name
        if not setting.train:
            models[f"{name} compiled"] = torch.compile(peer, **compile_args)
    paths = [shared.Timed(label, _under(setting, cfg.device, m, x)) for label, m in models.items()]
    with torch.inference_mode():
        refs = {name: m(x).float() for name, m in eager_fp32.items()}
    start = time.perf_counter()
    paths, outs, failed = shared.first_calls(paths)
    first_call_s = time.perf_counter() - start
    errors = {label: shared.rel_err(out.float(), refs[owner[label]]) for label, out in outs.items()}
    tol = TOL[setting.autocast]
    bad = {label: e for label, e in errors.items() if e > tol}
    if bad:
        raise SystemExit(f"{setting.label}: outputs disagree with their code's eager fp32 output beyond {tol}: {bad}.")
    shared.interleaved(paths, setting.batch, cfg.rounds, cfg.min_round_s, cfg.device)
    median = {p.label: p.median for p in paths}
    row = {"part": setting.part, "setting": setting.label, "batch": setting.batch, "rounds": cfg.rounds,
           "tolerance": tol, "compile_mode": setting.compile_mode or "default", "rel_err_vs_eager_fp32": errors,
           "failed": failed, "img_s": {p.label: p.img_s for p in paths}, "median": median,
           "ratios": shared.ratios(median, setting.peers, setting.attn_impls, setting.compiled_attn_impls),
           "first_calls_s": first_call_s}  # fmt: skip
    for label in setting.switched:
        if label in median:
            row["ratios"][f"ours eager / {label}"] = median["ours eager"] / median[label]
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
    official_model = shared.build_official(official, cfg.dense_model, cfg.arch)
    rows["official (whole classifier)"], _ = _forward_peak(official_model, x, cfg.device)
    errors = [shared.rel_err(f, s) for f, s in zip(fast, slow)]
    if max(errors) > TOL[None]:
        raise SystemExit(f"backbone features disagree with the reference path beyond {TOL[None]}: {errors}.")
    return {"model": cfg.dense_model, "size": list(cfg.dense_size), "paths": rows, "rel_err_ours_vs_reference": errors}


def profile(paths: list[shared.Timed], device: str, top: int) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """One forward of each path under torch.profiler: the top operators by self device (CPU: self CPU) time,
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
    facts = [
        f"{env['device_name']}, driver {env['gpu_driver']}, CUDA {env['cuda']}, torch {env['torch']}, timm "
        f"{env['timm']}, Python {env['python']}, commit {env['git_commit']}",
        f"{result['model']} at {result['size']}x{result['size']}, inference_mode (training steps: gradients "
        "recorded), eval mode, random weights (the official "
        f"model's, loaded into ours), TF32 off ({json.dumps(result['numerics'])}); medians over interleaved rounds",
    ]
    lines = shared.report_head("RMT on a GPU: ours against the official code", result, facts)
    for row in result["settings"]:
        compiled = "" if row["part"] == "train" else f"; torch.compile mode {row['compile_mode']}"
        heading = f"{row['setting']}, batch {row['batch']} ({row['rounds']} rounds{compiled})"
        columns = ["path", "img/s (median)", "min", "max", "ms per batch (median)",
                   f"rel. err vs its code's eager fp32 (bound {row['tolerance']:g})"]  # fmt: skip
        errors = row["rel_err_vs_eager_fp32"]
        cells = [
            [label, *(f"{v:.1f}" for v in (row["median"][label], min(rates), max(rates))),
             f"{1e3 * row['batch'] / row['median'][label]:.2f}", f"{errors[label]:.1e}"]
            for label, rates in row["img_s"].items()
        ]  # fmt: skip
        lines += shared.table(heading, columns, cells) + shared.ratio_lines(row["ratios"])
        lines += [f"First call of each path (compiles included): {row['first_calls_s']:.0f} s in all", ""]
        lines += shared.failed_lines(row["failed"])
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
        lines += [f"Operator profiles of one forward per path of the first setting: `{result['profile_file']}`", ""]
    return "\n".join(lines)


def write(result: dict, tables: dict[str, str], out: Path) -> None:
    (out / "rmt_gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "rmt_gpu.md").write_text(markdown(result) + "\n")
    if tables:
        sections = [f"## {label}\n\n```\n{table}\n```\n" for label, table in tables.items()]
        label = next(row["setting"] for row in result["settings"] if row["part"] == "throughput")
        title = f"# One forward per path, {label}, torch.profiler\n\n"
        (out / result["profile_file"]).write_text(title + "\n".join(sections))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", type=Path, required=True, help="qhfan/RMT's classfication_release/RMT.py")
    ap.add_argument("--out", type=Path, required=True, help="folder for rmt_gpu.md, rmt_gpu.json, rmt_gpu_profile.md")
    ap.add_argument("--rehearse", action="store_true", help="CPU, tiny sizes, few rounds: checks the plumbing only")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                    help="what to measure (always in the order throughput, memory, latency); default: all")  # fmt: skip
    args = ap.parse_args(argv)
    cfg = REHEARSE if args.rehearse else GPU
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("rmt_gpu.py needs a CUDA device; --rehearse checks it on CPU.")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    official, stubbed = shared.import_official_rmt(args.official)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"command": " ".join(["python", "-m", "benchmarks.rmt_gpu", *(sys.argv[1:] if argv is None else argv)]),
              "env": {**collect_env(cfg.device), **shared.machine(torch.get_num_threads())}, "numerics": numerics(),
              "official": shared.official_note(args.official, stubbed), "model": cfg.model, "size": cfg.size,
              "parts_asked": [p for p in PARTS if p in args.parts], "parts_done": [], "settings": [],
              "profile_file": "rmt_gpu_profile.md"}  # fmt: skip
    tables: dict[str, str] = {}
    # the backbone's memory second: eager and quick, so a run stopped in the latency setting's compiles still has it
    for part in result["parts_asked"]:
        start = time.perf_counter()
        if part == "memory":
            result["dense"] = dense_memory(cfg, official)
            summary = result["dense"]["paths"]
        else:
            setting = next(s for s in cfg.settings if s.part == part)
            paths, row = time_setting(cfg, official, setting)
            result["settings"].append(row)
            if part == "throughput":
                result["profile"], tables = profile(paths, cfg.device, cfg.profile_rows)
            del paths  # frees this setting's models before the next part's memory is measured
            summary = row["ratios"]
        result["parts_done"].append(part)
        write(result, tables, args.out)
        print(f"{part}: {json.dumps(summary)} ({time.perf_counter() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
