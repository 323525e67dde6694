"""What the benchmarks against the official code share: importing that code from a path, the official RMT model
with its weights loaded into ours, interleaved timing, and the machine's state (load average, versions) recorded
beside every number."""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

import zoo
from bench.env import cpu_name
from common.provenance import git_commit
from bench.device import synchronize
from zoo.rmt import checkpoint_filter_fn


def _official_builders() -> dict[str, str]:
    """Each RMT variant's official builder, as the registry states it ("official builder RMT_S; ..."); the token
    labelling variants have none of their own."""
    stated = {
        name: re.match(r"official builder (\w+);", zoo.info(name).notes) for name in zoo.list_models(family="rmt")
    }
    return {name: found.group(1) for name, found in stated.items() if found}


OFFICIAL_RMT_BUILDERS = _official_builders()
# The official RMT.py imports these at module level; its model uses neither.
RMT_STUBS = {"fvcore.nn": {"FlopCountAnalysis": None, "flop_count_table": None}, "einops": {"einsum": None}}


class OfficialCodeError(SystemExit):
    """Bad --official path or an official module that does not import: one sentence, exit status 2."""

    def __init__(self, message: str):
        print(message, file=sys.stderr)
        super().__init__(2)


def _stub(name: str, attrs: dict[str, object]) -> types.ModuleType:
    """A module standing in for an import the timed model never uses: attributes given as None raise when
    called, others take the given value (for what the official module runs at import time)."""

    def unavailable(*_args, **_kwargs):
        raise RuntimeError(f"{name} is stubbed by the benchmark; the official model should not call it")

    module = types.ModuleType(name)
    for attr, value in attrs.items():
        setattr(module, attr, unavailable if value is None else value)
    return module


def import_official(path: Path, module: str, stubs: dict[str, dict[str, object]]) -> tuple[types.ModuleType, list[str]]:
    """Import `module` (dotted, relative to `path`) from the official source folder `path`, put first on sys.path.

    Each import in `stubs` that is not installed is replaced by a stub with the listed attributes; the names of
    the stubbed modules are returned so the report can say so.
    """
    if not path.is_dir():
        raise OfficialCodeError(f"--official {path} is not a folder with the official code.")
    stubbed = []
    for name, attrs in stubs.items():
        try:
            importlib.import_module(name)
        except ImportError:
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                sys.modules.setdefault(prefix, _stub(prefix, attrs if i == len(parts) else {}))
            if len(parts) > 1:
                setattr(sys.modules[".".join(parts[:-1])], parts[-1], sys.modules[name])
            stubbed.append(name)
    sys.path.insert(0, str(path))
    try:
        file = path / (module.replace(".", "/") + ".py")
        spec = importlib.util.spec_from_file_location(f"official_{module.replace('.', '_')}", file)
        if spec is None or not file.is_file():
            raise OfficialCodeError(f"--official {path} has no {file.name}; give the folder that holds it.")
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = loaded  # registries (timm's register_model) look the module up by name
        spec.loader.exec_module(loaded)
    except ImportError as exc:
        raise OfficialCodeError(f"The official {module} does not import ({exc}); install the missing package.")
    return loaded, stubbed


def import_official_rmt(file: Path) -> tuple[types.ModuleType, list[str]]:
    """qhfan/RMT's classfication_release/RMT.py, given as the file, with its unused imports stubbed where missing."""
    if file.suffix != ".py" or not file.is_file():
        raise OfficialCodeError(f"--official {file} is not the official RMT.py file.")
    return import_official(file.parent, file.stem, RMT_STUBS)


def build_official(official: types.ModuleType, name: str, arch: dict | None = None) -> nn.Module:
    """The official model, randomly initialised, in eval mode: from the official builder for `name`, or, given
    `arch` (the official VisRetNet's arguments, which ours shares), that architecture."""
    return (official.VisRetNet(**arch) if arch else getattr(official, OFFICIAL_RMT_BUILDERS[name])(None)).eval()


def official_and_ours(official: types.ModuleType, name: str, arch: dict | None = None) -> tuple[nn.Module, nn.Module]:
    """The official model and ours with its weights, loaded strictly through the zoo's official-key loader."""
    theirs = build_official(official, name, arch)
    ours = zoo.load(name, **(arch or {}))
    ours.load_state_dict(checkpoint_filter_fn(theirs.state_dict(), ours), strict=True)
    return theirs, ours


def ratios(
    median: dict[str, float],
    peers: tuple[str, ...] = (),
    attn_impls: tuple[str, ...] = (),
    compiled_attn_impls: tuple[str, ...] = (),
) -> dict[str, float]:
    """Throughput ratios of ours to the official code (and to the reference path, to each peer model eager and
    compiled, and to ours with each other attn_impl, eager and compiled), for the paths present."""
    pairs = [("ours eager", "official eager"), ("ours compiled", "official compiled"), ("ours eager", "reference path"),
             ("official eager", "reference path")]  # fmt: skip
    pairs += [(f"ours {how}", f"{peer} {how}") for peer in peers for how in ("eager", "compiled")]
    pairs += [("ours eager", f"ours eager ({impl})") for impl in attn_impls]
    pairs += [
        (f"ours compiled ({impl})", b) for impl in compiled_attn_impls for b in ("official compiled", "ours compiled")
    ]
    return {f"{a} / {b}": median[a] / median[b] for a, b in pairs if a in median and b in median}


def official_source(path: Path) -> str:
    """Which version of the official code `path` is: the commit of the git checkout it lies in, or the first line of
    the *_SOURCE.txt that gpu_wheels.sh writes beside a copied file; never this machine's path."""
    folder = path if path.is_dir() else path.parent
    notes = sorted(folder.glob("*_SOURCE.txt"))
    if notes:
        return notes[0].read_text().splitlines()[0]
    git = ["git", "-C", str(folder), "rev-parse", "--show-toplevel", "HEAD"]
    found = subprocess.run(git, capture_output=True, text=True).stdout.split()
    if len(found) == 2 and Path(found[0]).resolve() != Path(__file__).resolve().parents[1]:  # not this project's
        return f"{path.name} at commit {found[1]}"
    return f"{path.name} (commit unknown)"


def official_note(path: Path | None, stubbed: list[str]) -> str:
    """What the report says about the official code: which version it is and what was stubbed, or its absence."""
    if path is None:
        return "none given (--official), so **no official comparison was made**"
    stubs = f"; not installed, so stubbed (unused by the timed model): {', '.join(stubbed)}" if stubbed else ""
    return f"{official_source(path)}{stubs}"


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """The fixtures' criterion: max|ours - ref| / max|ref|."""
    return ((ours - ref).abs().max() / ref.abs().max()).item()


@dataclass
class Timed:
    """One labelled way of running the forward pass and its per-round throughputs: images per wall second, and
    images per CPU second of this process. The CPU time includes worker threads spin-waiting, so on a loaded
    machine it follows wall time closely; it is kept as a check, not as a load-free measure."""

    label: str
    call: Callable[[], object]
    img_s: list[float] = field(default_factory=list)
    img_cpu_s: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.img_s)

    @property
    def median_cpu(self) -> float:
        return statistics.median(self.img_cpu_s)


def first_calls(paths: list[Timed]) -> tuple[list[Timed], dict[str, torch.Tensor], dict[str, str]]:
    """Call each path once under inference_mode (compiling where it compiles): the paths that ran, their outputs,
    and the error of each that raised, in a line. A compiler bug in one path then costs only that path's numbers
    (inductor's SDPA pattern rewrite fails on the official code's rank-5 attention in fp32 on CPU, torch 2.11-2.14)."""
    ran, outs, failed = [], {}, {}
    with torch.inference_mode():
        for p in paths:
            try:
                out = p.call()
                # a copy: the next call of a CUDA-graph path (mode="reduce-overhead") overwrites its output
                outs[p.label] = out.clone() if isinstance(out, torch.Tensor) else out
            except Exception as exc:  # any failure of this path is reported in the results, not raised
                lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
                failed[p.label] = f"{type(exc).__name__}: {' '.join(lines[:2])}"
                continue
            ran.append(p)
    return ran, outs, failed


def agreeing_calls(paths: list[Timed], tol: float, what: str) -> tuple[list[Timed], dict[str, float], dict[str, str]]:
    """`first_calls`, then each output's relative error against the first path's: the paths that ran, their errors
    and the failures. Nothing is timed when paths disagree: the run stops, naming `what` and the paths beyond `tol`."""
    paths, outs, failed = first_calls(paths)
    ref = next(iter(outs.values()))
    errors = {label: rel_err(out, ref) for label, out in outs.items()}
    bad = {label: e for label, e in errors.items() if e > tol}
    if bad:
        raise SystemExit(f"{what}: outputs disagree with {paths[0].label} beyond {tol}: {bad}.")
    return paths, errors, failed


def report_head(title: str, result: dict, facts: list[str]) -> list[str]:
    """A report's opening lines: its title, the command that wrote it, the facts of its setting, the official code."""
    return [f"# {title}", "", f"Command: `{result['command']}`", "", *(f"- {fact}" for fact in facts),
            f"- official code: {result['official']}", ""]  # fmt: skip


def load_fact(result: dict, why: str) -> str:
    """A CPU report's fact of the machine's load (`uptime`) before and after the run, and why it is read so."""
    return f"load before: `{result['env']['uptime']}`; after: `{result['uptime_after']}` ({why})"


def table(heading: str, columns: list[str], rows: list[list[str]]) -> list[str]:
    """A report's section: its heading, then a markdown table of these columns and rows (cells already written)."""
    lines = [f"## {heading}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def ratio_lines(ratios: dict[str, float]) -> list[str]:
    """The line of a table's throughput ratios (ours to each other path), between blank lines."""
    return ["", "Ratios of medians: " + ", ".join(f"{k} **{v:.2f}x**" for k, v in ratios.items()), ""]


def failed_lines(failed: dict[str, str]) -> list[str]:
    """The report's lines for the paths that did not run (none when all ran)."""
    return [f"Did not run: **{label}**: `{error}`" for label, error in failed.items()] + ([""] if failed else [])


def interleaved(paths: list[Timed], batch: int, rounds: int, min_round_s: float, device: str = "cpu") -> None:
    """Warm each path up (compiling where it compiles), then time them in interleaved rounds, each round long
    enough (>= min_round_s, whole forwards) that timer noise is small; a busy neighbour slows all paths alike.
    On a GPU each round is bracketed by synchronisation, so it times the queued work, not its launch."""

    def run(p: Timed, n: int) -> tuple[float, float]:
        synchronize(device)
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            p.call()
        synchronize(device)
        return time.perf_counter() - start, time.process_time() - cpu

    iters = {}
    with torch.inference_mode():
        for p in paths:
            p.call()
            iters[p.label] = max(1, round(min_round_s / run(p, 1)[0]))
        for _ in range(rounds):
            for p in paths:
                wall, cpu = run(p, iters[p.label])
                p.img_s.append(batch * iters[p.label] / wall)
                p.img_cpu_s.append(batch * iters[p.label] / cpu)


def cpu_description() -> str:
    """The CPU as the kernel names it, its logical CPU count and the SIMD level torch uses."""
    return f"{cpu_name()} ({os.cpu_count()} logical CPUs, {torch.backends.cpu.get_cpu_capability()})"


def machine(threads: int) -> dict:
    """Versions, CPU and the `uptime` load average: the machine is shared, so the load belongs with the numbers."""
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip() if shutil.which("uptime") else ""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_description(),
        "threads": threads,
        "git_commit": git_commit(),
        "uptime": uptime,
        "load_avg": list(os.getloadavg()),
    }
