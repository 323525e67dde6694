"""CPU throughput of internimage_t: the official model with its pure-PyTorch DCNv3 against ours.

    python -m benchmarks.internimage_dcn_cpu --official /path/to/OpenGVLab/InternImage/classification
    python -m benchmarks.internimage_dcn_cpu            # no official comparison: our two operators only

With --official, the official `InternImage(core_op="DCNv3_pytorch")` is built from that folder, its weights are
loaded into ours (strictly, through the zoo's checkpoint_filter_fn) and the logits must agree to 1e-4 before
anything is timed. The official ops_dcnv3 package imports its compiled CUDA extension (`DCNv3`) and
`pkg_resources` at import time although the pure-PyTorch operator uses neither; where they are not installed
they are stubbed (the output says which), nothing is installed. Timed, interleaved round by round, eager fp32,
inference_mode: the official model, ours with its fast DCNv3 (`fast`), and ours with the official operator's
algorithm (`reference`, `InternImage.set_dcn_impl`). Offset and mask weights are set to small random values
first: the released initialisation is zero, which would put every sample exactly on a pixel centre, unlike a
trained model. Each level's sampling call is then timed alone, to show where the two operators differ.
Writes results/cpu/internimage_dcn_cpu.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

import zoo
from benchmarks._common import Timed, cpu_description, import_official, interleaved, official_note, rel_err
from zoo.internimage import DCN_IMPLS, InternImage, checkpoint_filter_fn, dcnv3, dcnv3_reference

ROOT = Path(__file__).resolve().parents[1]

OFFICIAL = "official"
TOL = 1e-4
# Imported by ops_dcnv3 at import time, used only by its CUDA operator.
STUBS = {"DCNv3": {"dcnv3_forward": None, "dcnv3_backward": None},
         "pkg_resources": {"get_distribution": lambda name: types.SimpleNamespace(version="0")}}  # fmt: skip


@dataclass
class Setup:
    model: str
    batch: int
    size: int
    threads: int
    warmup: int
    iters: int
    rounds: int
    command: str
    official: str = ""
    torch: str = torch.__version__
    cpu: str = ""
    load_avg_before: tuple[float, ...] = ()  # other processes on the machine slow both operators alike


@dataclass
class Timing:
    """Per-call wall times of one operator choice, for a whole model pass or one DCNv3 sampling call."""

    impl: str
    seconds: list[float] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)


@dataclass
class LevelOp:
    """The sampling operator alone, at one level's shape; `depth` calls of it run per model pass."""

    level: int
    shape: tuple[int, int, int, int]  # N, H, W, C of the values
    groups: int
    depth: int
    timings: dict[str, Timing]


def _perturb_offsets(model: torch.nn.Module, seed: int = 0) -> None:
    """Small random offset/mask weights so samples land between pixels, as in a trained model."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith((".dcn.offset.weight", ".dcn.mask.weight")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)


def _official_model(module: types.ModuleType, name: str) -> torch.nn.Module:
    """The official InternImage with the same architecture as the zoo's `name`, on its pure-PyTorch DCNv3."""
    arch = {k: list(v) if isinstance(v, tuple) else v for k, v in zoo.info(name).arch.items()}
    return module.InternImage(core_op="DCNv3_pytorch", **arch).eval()


def _timed_rounds(setup: Setup, calls: dict[str, Callable[[], object]]) -> dict[str, Timing]:
    """Per-call times of each call, in interleaved rounds (`_common.interleaved`, one call a round) after warm-up."""
    paths = [Timed(impl, call) for impl, call in calls.items()]
    with torch.inference_mode():
        for _ in range(max(0, setup.warmup - 1)):  # interleaved warms each path up once more
            for call in calls.values():
                call()
    interleaved(paths, batch=1, rounds=setup.rounds * setup.iters, min_round_s=0.0)
    return {p.label: Timing(p.label, [1.0 / calls_per_s for calls_per_s in p.img_s]) for p in paths}


def measure_model(
    setup: Setup, official: types.ModuleType | None
) -> tuple[dict[str, Timing], dict[str, float], InternImage]:
    """Whole-model timings per path, and each path's max relative logit difference from the first path."""
    model = zoo.load(setup.model)
    calls: dict[str, Callable[[], object]] = {}
    x = torch.randn(setup.batch, 3, setup.size, setup.size, generator=torch.Generator().manual_seed(1))
    if official is not None:
        theirs = _official_model(official, setup.model)
        _perturb_offsets(theirs)
        model.load_state_dict(checkpoint_filter_fn(theirs.state_dict(), model), strict=True)
        calls[OFFICIAL] = lambda: theirs(x)
    else:
        _perturb_offsets(model)
    calls |= {impl: lambda impl=impl: model.set_dcn_impl(impl)(x) for impl in DCN_IMPLS}
    with torch.inference_mode():
        outs = {label: call() for label, call in calls.items()}
    first = next(iter(outs.values()))
    diffs = {label: rel_err(out, first) for label, out in outs.items()}
    if max(diffs.values()) > TOL:
        raise SystemExit(f"Logits disagree beyond {TOL} with {next(iter(outs))}: {diffs}.")
    return _timed_rounds(setup, calls), diffs, model


def measure_ops(setup: Setup, model: InternImage) -> list[LevelOp]:
    """The sampling call alone at each level's shape, with offsets of about half a pixel."""
    ops = {"fast": dcnv3, "reference": dcnv3_reference}
    gen = torch.Generator().manual_seed(2)
    levels, h, w = [], setup.size, setup.size
    for i, level in enumerate(model.levels):
        h, w = -(-h // (4 if i == 0 else 2)), -(-w // (4 if i == 0 else 2))  # ceil: stride-2 convs, padding 1
        dcn, c = level.blocks[0].dcn, model.feature_info[i]["num_chs"]
        values = torch.randn(setup.batch, h, w, c, generator=gen)
        offset = 0.5 * torch.randn(setup.batch, h, w, dcn.groups * 18, generator=gen)
        mask = torch.randn(setup.batch, h, w, dcn.groups * 9, generator=gen)
        calls = {impl: lambda op=op: op(values, offset, mask, dcn.groups, dcn.offset_scale) for impl, op in ops.items()}
        levels.append(LevelOp(i, (setup.batch, h, w, c), dcn.groups, len(level.blocks), _timed_rounds(setup, calls)))
    return levels


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:.1f}"


LABELS = {
    OFFICIAL: "official model, its DCNv3_pytorch",
    "fast": "ours, fast DCNv3",
    "reference": "ours, official operator's algorithm",
}


def report(
    setup: Setup,
    model: dict[str, Timing],
    diffs: dict[str, float],
    levels: list[LevelOp],
    load_after: tuple[float, ...],
) -> tuple[str, dict]:
    fast, ref = model["fast"], model["reference"]
    speedup = ref.median_s / fast.median_s
    first = next(iter(model))
    rows = [
        f"| {LABELS[t.impl]} (`{t.impl}`) | {setup.batch / t.median_s:.2f} | {_ms(t.median_s)} | {_ms(min(t.seconds))} "
        f"| {_ms(max(t.seconds))} | {len(t.seconds)} | {diffs[t.impl]:.1e} |"
        for t in model.values()
    ]
    if OFFICIAL in model:
        vs_official = model[OFFICIAL].median_s / fast.median_s
        headline = (
            f"Speed-up of ours (`fast`) over the official model: **{vs_official:.2f}x**; over the official "
            f"operator's algorithm in our model (`reference`): {speedup:.2f}x (ratios of medians)."
        )
    else:
        vs_official = None
        headline = (
            "**No official comparison was made** (no --official). Speed-up of `fast` over `reference` "
            f"(ratio of medians): {speedup:.2f}x."
        )
    op_rows = [
        f"| {lv.level} | {'x'.join(map(str, lv.shape))} | {lv.groups} | {lv.depth} "
        f"| {_ms(lv.timings['fast'].median_s)} | {_ms(lv.timings['reference'].median_s)} "
        f"| {lv.timings['reference'].median_s / lv.timings['fast'].median_s:.2f}x |"
        for lv in levels
    ]
    per_pass = {impl: sum(lv.depth * lv.timings[impl].median_s for lv in levels) for impl in DCN_IMPLS}
    md = "\n".join(
        [
            f"# {setup.model}: DCNv3 operator throughput on CPU",
            "",
            f"Command: `{setup.command}`",
            "",
            f"- torch {setup.torch}, CPU: {setup.cpu}, threads: {setup.threads} (torch.set_num_threads)",
            f"- batch {setup.batch}, {setup.size}x{setup.size}, eager fp32, inference_mode; warmup {setup.warmup} "
            f"per operator, then {setup.rounds} interleaved rounds of {setup.iters} iterations per operator",
            f"- official code: {setup.official}",
            f"- load average (1, 5, 15 min) before the run: {', '.join(f'{v:.2f}' for v in setup.load_avg_before)}; "
            f"after: {', '.join(f'{v:.2f}' for v in load_after)}",
            "- `fast` = `zoo.internimage.dcnv3` (one grid_sample, padding folded into the grid, (point, pixel) "
            "layout for grid, softmax and in-place weighted sum); `reference` = `dcnv3_reference`, the official "
            "pure PyTorch algorithm (softmax over 9-long rows, pad, reference points + kernel grid, (pixel, point) "
            "grid, multiply and sum). Both fold the groups into one grid_sample call, as the official code does.",
            "",
            "## Whole model",
            "",
            "| path | img/s (median) | median ms/batch | min ms | max ms | iterations "
            f"| rel. logit diff vs `{first}` |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            headline,
            "",
            "## The sampling operator alone (median ms per call, same rounds and iterations)",
            "",
            "| level | values N x H x W x C | groups | calls per pass | fast ms | reference ms | speed-up |",
            "|---|---|---|---|---|---|---|",
            *op_rows,
            "",
            f"Summed over one pass of the model: fast {_ms(per_pass['fast'])} ms, reference "
            f"{_ms(per_pass['reference'])} ms of the median {_ms(fast.median_s)} / {_ms(ref.median_s)} ms per batch; "
            "the rest (linear layers, depthwise convs, norms, GELU) is the same code in both.",
            "",
        ]
    )
    data = {
        "setup": asdict(setup),
        "model": {t.impl: {"images_per_s": setup.batch / t.median_s, **asdict(t)} for t in model.values()},
        "speedup_fast_vs_reference": speedup,
        "speedup_fast_vs_official": vs_official,
        "max_rel_logit_diff": diffs,
        "ops": [asdict(lv) for lv in levels],
        "ops_per_pass_s": per_pass,
        "load_avg_after": load_after,
    }
    return md, data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, help="the official InternImage classification/ folder")
    parser.add_argument("--model", default="internimage_t", choices=zoo.list_models("internimage*"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=4, help="iterations per operator per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "cpu", help="folder for the .md and .json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    official, stubbed = None, []
    if args.official is not None:
        official, stubbed = import_official(args.official, "models.intern_image", STUBS)
    note = official_note(args.official, stubbed)
    print(f"official code: {note}", flush=True)
    setup = Setup(
        model=args.model,
        batch=args.batch,
        size=args.size,
        threads=args.threads,
        warmup=args.warmup,
        iters=args.iters,
        rounds=args.rounds,
        command=" ".join(["python -m benchmarks.internimage_dcn_cpu", *(argv if argv is not None else sys.argv[1:])]),
        official=note,
        cpu=cpu_description(),
        load_avg_before=tuple(os.getloadavg()),
    )
    timings, diffs, model = measure_model(setup, official)
    levels = measure_ops(setup, model)
    md, data = report(setup, timings, diffs, levels, tuple(os.getloadavg()))
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / "internimage_dcn_cpu"
    stem.with_suffix(".md").write_text(md)
    stem.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
