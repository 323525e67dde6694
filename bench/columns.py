"""How a row's fields are read and shown: the dotted-field getter and the `Column` every output is made from.

A leaf module, so that measurements (bench/measure.py), the report and the model cards (hub/card.py) can all
declare and read columns without importing each other.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["Column", "KINDS", "get_field", "printable", "markdown_cell", "markdown_code", "csv_text"]


@functools.cache
def _parts(dotted: str) -> tuple[str, ...]:
    return tuple(dotted.split("."))


def get_field(row: dict[str, Any], dotted: str) -> Any:
    """`row["env"]["device_name"]` for "env.device_name"; None where any step is missing."""
    value: Any = row
    for part in _parts(dotted):
        value = value.get(part) if isinstance(value, dict) else None
    return value


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def printable(text: str) -> str:
    """`text` with control characters (terminal escape sequences, carriage returns, newlines) written as \\xNN, so
    a results field can never drive the terminal it is printed on."""
    return text.translate(_CONTROL)


def markdown_cell(text: str) -> str:
    """`text` as one Markdown table cell: printable, its `|` escaped so it cannot split the row."""
    return printable(text).replace("|", "\\|")


def markdown_code(text: str) -> str:
    """`text` as a Markdown code span that holds it whole: printable (a newline cannot start a heading), fenced by
    more backticks than the longest run inside it, as CommonMark reads code spans."""
    text = printable(text)
    run = longest = 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    ticks = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


# A CSV cell starting with one of these is run as a formula by spreadsheets (CSV injection).
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def csv_text(text: str) -> str:
    """`text` as a CSV cell a spreadsheet shows as text: printable, and a leading formula character quoted by `'`."""
    return ("'" if text.startswith(_FORMULA) else "") + printable(text)


KINDS = ("number", "whole", "text", "flag", "mapping", "list")


@dataclass(frozen=True)
class Column:
    """One field of a row as every output shows it: the terminal/LaTeX header, the row field (the CSV column), the
    format, and where it has one, timm's CSV name (prefixed infer_/train_ by the row's mode) and rounding.

    `kind` is what the field holds (one of KINDS; by default "whole" for a "d" format, "number" for any other format,
    else "text"), `unit` what its numbers count. `table=False`: shown in the CSV only; `csv=False`: kept in the JSON
    lines only.
    """

    header: str
    field: str
    fmt: str = ""
    label: Callable[[dict[str, Any]], str] | None = None  # the table cell, where it is not the formatted field
    scale: float = 1.0
    timm: str | None = None
    timm_digits: int | None = None
    always: bool = False  # shown in the terminal even when empty
    id: str = ""  # the name `--columns` takes; the field's last part when not given
    kind: str = ""
    unit: str = ""
    table: bool = True
    csv: bool = True

    def __post_init__(self) -> None:
        if not self.kind:
            object.__setattr__(self, "kind", "whole" if self.fmt.endswith("d") else "number" if self.fmt else "text")
        if self.kind not in KINDS:
            raise ValueError(f"Column {self.field!r}: kind {self.kind!r} is not one of {', '.join(KINDS)}.")

    @property
    def name(self) -> str:
        return self.id or self.field.rsplit(".", 1)[-1]

    def value(self, row: dict[str, Any]) -> Any:
        value = get_field(row, self.field)
        return (
            value * self.scale
            if isinstance(value, (int, float)) and not isinstance(value, bool) and self.scale != 1
            else value
        )

    def cell(self, row: dict[str, Any]) -> str:
        if self.label is not None:
            return printable(self.label(row))
        value = self.value(row)
        return "" if value is None or value == [] else printable(format(value, self.fmt))
