"""How a row's fields are read and shown: the dotted-field getter and the `Column` every output is made from.

A leaf module, so that measurements (bench/measure.py), the report and the model cards (hub/card.py) can all
declare and read columns without importing each other.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["Column", "get_field"]


@functools.cache
def _parts(dotted: str) -> tuple[str, ...]:
    return tuple(dotted.split("."))


def get_field(row: dict[str, Any], dotted: str) -> Any:
    """`row["env"]["device_name"]` for "env.device_name"; None where any step is missing."""
    value: Any = row
    for part in _parts(dotted):
        value = value.get(part) if isinstance(value, dict) else None
    return value


@dataclass(frozen=True)
class Column:
    """One field as every output shows it: the terminal/LaTeX header, the row field (the CSV column), the
    format, and where it has one, timm's CSV name (prefixed infer_/train_ by the row's mode) and rounding."""

    header: str
    field: str
    fmt: str = ""
    label: Callable[[dict[str, Any]], str] | None = None  # the table cell, where it is not the formatted field
    scale: float = 1.0
    timm: str | None = None
    timm_digits: int | None = None
    always: bool = False  # shown in the terminal even when empty
    id: str = ""  # the name `--columns` takes; the field's last part when not given

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
            return self.label(row)
        value = self.value(row)
        return "" if value is None or value == [] else format(value, self.fmt)
