"""What the harness's command lines add to the project's shared policy (common/cli.py): the rows' exit codes and
the value parsers. bench.py, bench.suite and bench.accuracy parse with these, so a bad value reads the same everywhere.
"""

from __future__ import annotations

import argparse
from typing import Any

from common.cli import EXIT_FAILURE, EXIT_OK, UsageError

__all__ = [
    "EXIT_OUTPUT",
    "EXIT_UNAVAILABLE",
    "EXIT_FAILED",
    "exit_code",
    "positive_int",
    "positive_float",
    "input_sizes",
]

# The shared policy (common/cli.py: 0 done, 1 failure such as an output (standard output, results, a plot) that could
# not be written, 2 bad arguments, 128 + signal when stopped, 141 reader gone), plus the harness's own: 3 a backend is
# unavailable here or a model cannot take an input size (all other rows ok); 4 a row ran out of memory, failed or
# disagreed with eager.
EXIT_OUTPUT, EXIT_UNAVAILABLE, EXIT_FAILED = EXIT_FAILURE, 3, 4
MIN_SIDE, MAX_SIDE = 16, 16384  # below 16 pixels no model here has a feature map left; above, tensors overflow
MAX_COUNT = 1_000_000


def exit_code(rows: list[dict[str, Any]]) -> int:
    """A run's exit status from its rows' statuses: 4 when any failed, else 3 when any could not run here, else 0."""
    statuses = {r.get("status") for r in rows}
    if statuses & {"oom", "error", "mismatch"}:
        return EXIT_FAILED
    return EXIT_UNAVAILABLE if "unavailable" in statuses else EXIT_OK


def positive_int(text: str) -> int:
    """A whole number from 1 to a million (batch sizes, iterations, option values)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"{text} is too large (at most {MAX_COUNT})")
    return value


def positive_float(text: str) -> float:
    """A finite number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _plain(text: str) -> bool:
    """Digits 0-9 only ("²" and other Unicode digits pass str.isdigit but are no size)."""
    return text.isascii() and text.isdecimal()


def _side(text: str, given: str) -> int:
    if not _plain(text):
        raise UsageError(f"--input-size expects N, HxW or timm's C H W with whole numbers, got {given!r}.")
    value = int(text)
    if not MIN_SIDE <= value <= MAX_SIDE:
        raise UsageError(f"--input-size {given} is outside {MIN_SIDE}..{MAX_SIDE} pixels per side.")
    return value


def input_sizes(values: list[str]) -> list[tuple[int, int]]:
    """`--input-size` values: N or HxW each, or timm's `C H W` (three plain numbers, the first a channel count)."""
    if len(values) == 3 and all(_plain(v) for v in values) and int(values[0]) <= 4:
        if int(values[0]) != 3:
            raise UsageError(
                f"--input-size {' '.join(values)} reads as timm's C H W, and these models take 3 channels, "
                f"not {values[0]}."
            )
        given = " ".join(values)
        return [(_side(values[1], given), _side(values[2], given))]
    sizes = []
    for value in values:
        parts = value.lower().split("x")
        if len(parts) not in (1, 2):
            raise UsageError(f"--input-size expects N, HxW or timm's C H W with whole numbers, got {value!r}.")
        h, w = [_side(p, value) for p in parts] * (2 if len(parts) == 1 else 1)
        sizes.append((h, w))
    return sizes
