"""CPU throughput of internimage_t with the zoo's DCNv3 against the official operator's algorithm.

Both operators run in the same model with the same weights (`InternImage.set_dcn_impl`), eager fp32,
rounds interleaved so a busy neighbour on the machine slows both alike; per-iteration times are kept and the
median is reported. Offset and mask weights are set to small random values first: the released
initialisation is zero, which would put every sample exactly on a pixel centre, unlike a trained model.
Each level's sampling call is then timed alone, to show where the two differ.

    python benchmarks/internimage_dcn_cpu.py            # writes results/cpu/internimage_dcn_cpu.{md,json}
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

import zoo
from bench.env import cpu_name
from zoo.internimage import DCN_IMPLS, DCNv3, InternImage, dcnv3, dcnv3_reference

ROOT = Path(__file__).resolve().parents[1]


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


def _cpu_name() -> str:
    return f"{cpu_name()} ({os.cpu_count()} logical CPUs, {torch.backends.cpu.get_cpu_capability()})"


def _perturb_offsets(model: torch.nn.Module, seed: int = 0) -> None:
    """Small random offset/mask weights so samples land between pixels, as in a trained model."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DCNv3):
                for layer in (m.offset, m.mask):
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * 0.02)


def _timed_rounds(setup: Setup, calls: dict[str, Callable[[], object]]) -> dict[str, Timing]:
    """Warm every call up, then time them in interleaved rounds so machine noise falls on all alike."""
    timings = {impl: Timing(impl) for impl in calls}
    with torch.inference_mode():
        for call in calls.values():
            for _ in range(setup.warmup):
                call()
        for _ in range(setup.rounds):
            for impl, call in calls.items():
                for _ in range(setup.iters):
                    start = time.perf_counter()
                    call()
                    timings[impl].seconds.append(time.perf_counter() - start)
    return timings


def measure_model(setup: Setup) -> tuple[dict[str, Timing], float, InternImage]:
    """Whole-model timings per operator, and the max relative difference of their logits."""
    model = zoo.load(setup.model)
    _perturb_offsets(model)
    x = torch.randn(setup.batch, 3, setup.size, setup.size, generator=torch.Generator().manual_seed(1))
    timings = _timed_rounds(setup, {impl: lambda impl=impl: model.set_dcn_impl(impl)(x) for impl in DCN_IMPLS})
    with torch.inference_mode():
        fast, ref = (model.set_dcn_impl(impl)(x) for impl in ("fast", "reference"))
    return timings, ((fast - ref).abs().max() / ref.abs().max()).item(), model


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
        calls = {
            impl: lambda op=op: op(values, offset, mask, dcn.groups, dcn.offset_scale) for impl, op in ops.items()
        }
        levels.append(LevelOp(i, (setup.batch, h, w, c), dcn.groups, len(level.blocks), _timed_rounds(setup, calls)))
    return levels


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:.1f}"


def report(
    setup: Setup, model: dict[str, Timing], diff: float, levels: list[LevelOp], load_after: tuple[float, ...]
) -> tuple[str, dict]:
    fast, ref = model["fast"], model["reference"]
    speedup = ref.median_s / fast.median_s
    rows = [
        f"| {t.impl} | {setup.batch / t.median_s:.2f} | {_ms(t.median_s)} | {_ms(min(t.seconds))} "
        f"| {_ms(max(t.seconds))} | {len(t.seconds)} |"
        for t in (fast, ref)
    ]
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
            f"- load average (1, 5, 15 min) before the run: {', '.join(f'{v:.2f}' for v in setup.load_avg_before)}; "
            f"after: {', '.join(f'{v:.2f}' for v in load_after)}",
            "- `fast` = `zoo.internimage.dcnv3` (one grid_sample, padding folded into the grid, (point, pixel) "
            "layout for grid, softmax and in-place weighted sum); `reference` = `dcnv3_reference`, the official "
            "pure PyTorch algorithm (softmax over 9-long rows, pad, reference points + kernel grid, (pixel, point) "
            "grid, multiply and sum). Both fold the groups into one grid_sample call, as the official code does.",
            "",
            "## Whole model",
            "",
            "| operator | img/s (median) | median ms/batch | min ms | max ms | iterations |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            f"Speed-up of `fast` over `reference` (ratio of medians): **{speedup:.2f}x**. "
            f"Max relative difference of their logits: {diff:.1e}.",
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
        "model": {t.impl: {"images_per_s": setup.batch / t.median_s, **asdict(t)} for t in (fast, ref)},
        "speedup": speedup,
        "max_rel_logit_diff": diff,
        "ops": [asdict(lv) for lv in levels],
        "ops_per_pass_s": per_pass,
        "load_avg_after": load_after,
    }
    return md, data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    setup = Setup(
        model=args.model,
        batch=args.batch,
        size=args.size,
        threads=args.threads,
        warmup=args.warmup,
        iters=args.iters,
        rounds=args.rounds,
        command="python " + " ".join([os.path.relpath(__file__, ROOT), *(argv if argv is not None else sys.argv[1:])]),
        cpu=_cpu_name(),
        load_avg_before=tuple(os.getloadavg()),
    )
    timings, diff, model = measure_model(setup)
    levels = measure_ops(setup, model)
    md, data = report(setup, timings, diff, levels, tuple(os.getloadavg()))
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / "internimage_dcn_cpu"
    stem.with_suffix(".md").write_text(md)
    stem.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
