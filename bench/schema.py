"""The row schema: every field a results row carries, with its kind, unit and where it is shown.

A leaf (it imports only the Column type), read by the results store (which lines are rows), the report (tables,
CSV, timm's CSV) and, through the report's columns, the Hub cards. What identifies a row and what the worker and
runner record are listed here; what a measurement adds is declared by its tracker (`Tracker.columns` in
bench/measure.py) and joined in by `row_schema`, so a new tracker is one class and its fields reach every output.

A field is a `Column`: `table=False` keeps it out of tables (and `--columns`) but in the CSV; `csv=False` keeps it
only in the JSON lines (the per-step times, whose statistics the CSV has).
"""

from __future__ import annotations

import functools
from typing import Iterable

from .columns import Column

__all__ = [
    "REQUIRED",
    "IDENTITY",
    "OUTCOME",
    "RECORD",
    "NOTES",
    "row_schema",
    "table_columns",
    "SETTINGS",
    "settings_columns",
    "csv_fields",
    "checked_fields",
]

# What a line must hold, with these types, to be read as a row; anything else is somebody else's line.
REQUIRED: dict[str, type] = {
    "model": str,
    "backend": str,
    "precision": str,
    "batch_size": int,
    "input_size": list,
    "status": str,
}

# What identifies a row (spec.KEY_DEFAULTS keys it) and what every table starts with.
IDENTITY: tuple[Column, ...] = (
    Column("model", "model", kind="text", always=True),
    Column("mode", "mode", kind="text"),
    Column("backend", "backend", kind="text", always=True),
    Column("precision", "precision", kind="text", always=True),
    Column("batch", "batch_size", "d", timm="batch_size", always=True, id="batch"),
    Column("input", "input_size", kind="list", unit="pixels", always=True, id="input"),
    Column("device", "env.device_name", kind="text", id="device"),
    Column("params (M)", "params", ".2f", scale=1e-6, unit="M"),
    Column("GMACs", "gmacs", ".2f", timm="gmacs", timm_digits=2, unit="GMAC"),
    Column("", "backend_options", kind="mapping", table=False),
    Column("", "features_only", kind="flag", table=False),
    Column("", "channels_last", kind="flag", table=False),
    Column("", "tf32", kind="flag", table=False),
    Column("", "device", kind="text", table=False),
    Column("kwargs", "model_kwargs", kind="mapping"),
    Column("", "grad_checkpointing", kind="flag", table=False),
    Column("weights", "weights", kind="text"),
    Column("threads", "threads", "d"),
    Column("data", "data", kind="text"),
    Column("max samples", "max_samples", "d"),
)
# What the worker finds besides the trackers' measurements: the backend's build, the check against eager, accuracy.
OUTCOME: tuple[Column, ...] = (
    Column("compile s", "compile_s", ".1f", unit="s"),
    Column("breaks", "graph_breaks", "d"),
    Column("vs eager", "diff_vs_eager_rel", ".1e", id="diff"),
    Column("top-1", "top1", ".2f", unit="%"),
    Column("top-5", "top5", ".2f", unit="%"),
    Column("", "status", kind="text", table=False),
    Column("", "reason", kind="text", table=False),
    Column("", "gmacs_torch", ".2f", table=False, unit="GMAC"),
    Column("", "diff_vs_eager_max_abs", ".1e", table=False),
    Column("", "diff_tolerance_rel", ".0e", table=False),
    Column("", "eval_samples", "d", table=False),
    Column("", "eval_skipped", "d", table=False),
    Column("", "flops_error", kind="text", table=False),
    Column("", "flops_note", kind="text", table=False),  # what the GMACs count
    # a train row's step (bench/train.py) and the model's stochastic depth
    Column("", "drop_path_rate", ".2f", table=False),
    Column("", "optimizer", kind="text", table=False),
    Column("", "loss", kind="text", table=False),
    Column("", "grad_scaler", kind="flag", table=False),
    Column("", "accuracy_error", kind="text", table=False),
    Column("", "accuracy_note", kind="text", table=False),
)
# How and when a row was measured.
RECORD: tuple[Column, ...] = (
    Column("", "float32_matmul_precision", kind="text", table=False),
    Column("", "cuda_matmul_allow_tf32", kind="flag", table=False),
    Column("", "cudnn_allow_tf32", kind="flag", table=False),
    Column("", "cudnn_benchmark", kind="flag", table=False),
    Column("warm-up", "warmup", "d"),
    Column("iters", "iters", "d"),
    Column("", "run_id", kind="text", table=False),
    Column("", "command", kind="text", table=False),
    Column("", "schema_version", "d", table=False),
    Column("", "timestamp", kind="text", table=False),
    Column("", "env", kind="mapping", table=False, csv=False),  # the machine; the CSV has its device name
)
# Text fields a table shows as the numbered note under it, in this order.
NOTES = ("reason", "flops_error", "accuracy_error", "accuracy_note")


# How a row was measured beyond what its model, backend, precision, batch and input cells say: a table adds each of
# these on its own where the rows it shows differ in it.
SETTINGS = ("env.device_name", "model_kwargs", "weights", "threads", "data", "max_samples", "warmup", "iters")


def settings_columns() -> tuple[Column, ...]:
    """The table columns of `SETTINGS`."""
    return tuple(c for c in (*IDENTITY, *RECORD) if c.table and c.field in SETTINGS)


@functools.cache
def row_schema(trackers: tuple[type, ...]) -> tuple[Column, ...]:
    """Every field, in CSV order: what identifies the row, each tracker's fields, then the rest."""
    return (*IDENTITY, *(c for t in trackers for c in t.columns), *OUTCOME, *RECORD)


def table_columns(trackers: tuple[type, ...]) -> tuple[Column, ...]:
    """The fields a table can show (`--columns` picks among them by name)."""
    return tuple(c for c in row_schema(trackers) if c.table)


def csv_fields(trackers: tuple[type, ...]) -> list[str]:
    """The CSV's columns: every field but those kept to the JSON lines."""
    return [c.field for c in row_schema(trackers) if c.csv]


def checked_fields(trackers: tuple[type, ...]) -> Iterable[Column]:
    """Fields whose type a reader relies on (numbers it formats, text it prints, mappings it reads)."""
    return (c for c in row_schema(trackers) if c.kind in ("number", "whole", "text", "mapping"))
