"""What the CPU benchmarks against the official code share: importing that code from a path, interleaved timing,
and the machine's state (load average, versions) recorded beside every number."""
from __future__ import annotations

import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from bench.env import cpu_name, git_commit


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


def official_note(path: Path | None, stubbed: list[str]) -> str:
    """What the report says about the official code: where it came from and what was stubbed, or its absence."""
    if path is None:
        return "none given (--official), so **no official comparison was made**"
    stubs = f"; not installed, so stubbed (unused by the timed model): {', '.join(stubbed)}" if stubbed else ""
    return f"`{path}`{stubs}"


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


def interleaved(paths: list[Timed], batch: int, rounds: int, min_round_s: float) -> None:
    """Warm each path up (compiling where it compiles), then time them in interleaved rounds, each round long
    enough (>= min_round_s, whole forwards) that timer noise is small; a busy neighbour slows all paths alike."""
    iters = {}
    with torch.inference_mode():
        for p in paths:
            p.call()
            start = time.perf_counter()
            p.call()
            iters[p.label] = max(1, round(min_round_s / (time.perf_counter() - start)))
        for _ in range(rounds):
            for p in paths:
                start, cpu = time.perf_counter(), time.process_time()
                for _ in range(iters[p.label]):
                    p.call()
                p.img_s.append(batch * iters[p.label] / (time.perf_counter() - start))
                p.img_cpu_s.append(batch * iters[p.label] / (time.process_time() - cpu))


def machine(threads: int) -> dict:
    """Versions, CPU and the `uptime` load average: the machine is shared, so the load belongs with the numbers."""
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": f"{cpu_name()} ({os.cpu_count()} logical CPUs, {torch.backends.cpu.get_cpu_capability()})",
        "threads": threads,
        "git_commit": git_commit(),
        "uptime": uptime,
        "load_avg": list(os.getloadavg()),
    }
