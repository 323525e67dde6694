"""Tables (tabulate or CSV) and the accuracy-vs-throughput plot, from result rows."""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable

import tabulate as tabulate_module
from tabulate import tabulate, tabulate_formats

from .backends import options_label
from .columns import Column, csv_text, get_field, markdown_cell, printable
from .schema import NOTES, csv_fields, row_schema, table_columns
from .paths import write_atomic
from .spec import KEY_DEFAULTS, STATUSES, backend_options

__all__ = [
    "FORMATS",
    "TERMINAL_FORMAT",
    "COLUMNS",
    "BY_NAME",
    "STATUS",
    "columns",
    "by_name",
    "DEFAULT_COLUMNS",
    "select_columns",
    "slim",
    "render_table",
    "table_order",
    "status_summary",
    "plot",
    "timm_csv",
]

FORMATS = ("csv", "timm", *tabulate_formats)
MARKDOWN_FORMATS = ("github", "pipe")  # a `|` in a cell would split the row
# What a terminal shows by default: aligned columns without rules, so the default columns fit 120 characters.
TERMINAL_FORMAT = "simple"


def _backend_label(row: dict[str, Any]) -> str:
    """The backend with its non-default options, and layout flags: "compile (mode=max-autotune) +cl"."""
    options = backend_options(row)
    label = row["backend"] + (f" ({options_label(options)})" if options else "")
    return label + (" +cl" if row.get("channels_last") else "") + (" +gc" if row.get("grad_checkpointing") else "")


def _precision_label(row: dict[str, Any]) -> str:
    """The precision, and TF32 where the row allowed it for fp32 matmuls (timm's GPU default)."""
    return row["precision"] + (" +tf32" if row.get("tf32") else "")


def _input_label(row: dict[str, Any]) -> str:
    h, w = row["input_size"]
    return f"{h}x{w}" + (" feat" if row.get("features_only") else "")


# How identity fields read in a table (the fields themselves are the row schema's, bench/schema.py).
_LABELS: dict[str, Callable[[dict[str, Any]], str]] = {
    "mode": lambda r: r.get("mode", "infer"),
    "backend": _backend_label,
    "precision": _precision_label,
    "input": _input_label,
    "device": lambda r: get_field(r, "env.device_name") or r.get("device") or "",
}


def _status_label(row: dict[str, Any]) -> str:
    return row.get("status", "error")


# Every row has a status; a table shows it last unless `--columns` places it.
STATUS = Column("status", "status", kind="text", label=_status_label, always=True)


def _trackers() -> tuple[type, ...]:
    from . import measure

    return tuple(measure.TRACKERS)  # read at call time: the trackers the worker runs


def columns() -> tuple[Column, ...]:
    """Every table column, in table order: what identifies a row, each tracker's measurements, then the rest."""
    return tuple(replace(c, label=_LABELS[c.name]) if c.name in _LABELS else c for c in table_columns(_trackers()))


def by_name() -> dict[str, Column]:
    """Table columns by the name `--columns` takes."""
    return {c.name: c for c in (*columns(), STATUS)}


COLUMNS = columns()  # the table columns of the trackers this module was imported with
BY_NAME = by_name()
# The terminal's default: what a reader compares, within 120 characters; `--columns` picks others, `all` every one.
DEFAULT_COLUMNS = (
    "model",
    "mode",
    "backend",
    "precision",
    "batch",
    "input",
    "device",
    "gmacs",
    "p50",
    "img_s",
    "peak_mb",
    "diff",
    "top1",
)


def _read() -> frozenset[str]:
    """Every top-level field some output of this module reads (and what keys a row, old schemas included)."""
    fields = {c.field.split(".")[0] for c in row_schema(_trackers()) if c.csv}
    return frozenset(fields | set(KEY_DEFAULTS) | set(NOTES) | {"compile_mode", "status"}) - {"env"}


def slim(row: dict[str, Any]) -> dict[str, Any]:
    """The part of a row the tables, CSVs and plot read (env reduced to its device name): a report over a large
    file holds a few hundred bytes per row, not the raw step times and environment of each."""
    read = _read()
    kept = {k: row[k] for k in read if k in row}
    if "env" in row:
        kept["env"] = {"device_name": get_field(row, "env.device_name")}
    return kept


def _csv_value(value: Any) -> Any:
    if isinstance(value, list):
        return "x".join(map(str, value))
    if isinstance(value, dict):
        return csv_text(json.dumps(value, sort_keys=True)) if value else ""
    if isinstance(value, str):
        return csv_text(value)
    return "" if value is None else value


def _csv(rows: list[dict[str, Any]]) -> str:
    fields = csv_fields(_trackers())
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(fields)
    for row in rows:
        writer.writerow([_csv_value(get_field(row, f)) for f in fields])
    return buf.getvalue()


def timm_csv(rows: Iterable[dict[str, Any]]) -> str:
    """timm's benchmark.py CSV: one line per model/backend/precision/batch/size with its infer_* and train_* columns,
    param_count in millions, rounded as timm rounds; only classification rows that measured (status ok), since
    timm's benchmark has no features_only mode."""
    merged: dict[tuple, dict[str, Any]] = {}
    modes: set[str] = set()
    for row in rows:
        if row.get("status") != "ok" or row.get("features_only"):
            continue
        mode = row.get("mode", "infer")
        modes.add(mode)
        line = merged.setdefault(
            (row["model"], _backend_label(row), _precision_label(row), row["batch_size"], tuple(row["input_size"])),
            {
                "model": row["model"],
                "param_count": round(row["params"] / 1e6, 2) if row.get("params") else None,
                "backend": _backend_label(row),
                "precision": _precision_label(row),
            },
        )
        line[f"{mode}_img_size"] = row["input_size"][-1]
        for column in row_schema(_trackers()):
            value = column.value(row)
            if column.timm and value is not None:
                line[f"{mode}_{column.timm}"] = (
                    round(value, column.timm_digits) if column.timm_digits is not None else value
                )
    fields = ["model"]
    for mode in ("infer", "train"):
        if mode in modes:
            fields += [f"{mode}_{name}" for name in ("samples_per_sec", "step_time", "batch_size", "img_size")]
            fields += [f"{mode}_gmacs"] if mode == "infer" else []
    fields += ["param_count", "backend", "precision"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fields, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for line in merged.values():
        writer.writerow({k: _csv_value(line.get(k)) for k in fields})
    return buf.getvalue()


def table_order(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Models and backends in the order they first appear, then mode, input size and batch size ascending."""
    first: dict[tuple, int] = {}
    for row in rows:
        first.setdefault((row["model"], row["backend"]), len(first))
    return sorted(
        rows,
        key=lambda r: (
            first[r["model"], r["backend"]],
            r.get("mode", "infer"),
            r["precision"],
            bool(r.get("features_only")),
            bool(r.get("channels_last")),
            list(r["input_size"]),
            r["batch_size"],
        ),
    )


def select_columns(names: Iterable[str] | None) -> tuple[Column, ...]:
    """Columns by their `--columns` names ("all": every one); ValueError names an unknown one."""
    names = list(names or DEFAULT_COLUMNS)
    if names == ["all"]:
        return columns()
    known = by_name()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"Unknown column {unknown[0]!r}; choose from {', '.join(known)} or all.")
    return tuple(known[n] for n in names)


def _shown(rows: list[dict[str, Any]], columns: tuple[Column, ...], asked: bool) -> list[Column]:
    """Of `columns`, those to show: every one named with `--columns` (`asked`); otherwise those that say something
    for these rows: the mode only when a row trained, the device only when rows come from more than one machine,
    others when any row has a value. The status comes last unless it was placed."""
    if asked:
        return [*columns, *([] if STATUS in columns else [STATUS])]
    shown = []
    for column in columns:
        if column.name == "mode":
            keep = any(r.get("mode", "infer") != "infer" for r in rows)
        elif column.name == "device":
            keep = len({column.cell(r) for r in rows}) > 1
        else:
            keep = column.always or any(column.cell(r) for r in rows)
        if keep:
            shown.append(column)
    return [*shown, STATUS]


def render_table(
    rows: Iterable[dict[str, Any]], fmt: str = TERMINAL_FORMAT, columns: Iterable[str] | None = None
) -> str:
    """One line per row and, of the chosen columns (default: `DEFAULT_COLUMNS`), those that have values; CSV
    formats keep every field. Rows that are not `ok` carry a numbered note with their reason under the table."""
    rows = list(rows)
    if fmt == "csv":
        return _csv(rows)
    if fmt == "timm":
        return timm_csv(rows)
    asked = columns is not None and list(columns) != ["all"]
    shown = _shown(rows, select_columns(columns), asked)
    notes: dict[str, int] = {}  # note -> its number
    body = []
    for row in rows:
        cells = [c.cell(row) for c in shown]
        note = printable(" ".join(dict.fromkeys(row[k] for k in NOTES if row.get(k))))
        if note:
            cells[shown.index(STATUS)] += f" [{notes.setdefault(note, len(notes) + 1)}]"
        body.append([markdown_cell(c) for c in cells] if fmt in MARKDOWN_FORMATS else cells)
    headers = [c.header for c in shown]
    if fmt == TERMINAL_FORMAT:
        table = _simple(headers, body)
    else:
        padding, tabulate_module.MIN_PADDING = tabulate_module.MIN_PADDING, 0  # no extra blanks beside headers
        try:
            table = tabulate(body, headers=headers, tablefmt=fmt, disable_numparse=True)
        finally:
            tabulate_module.MIN_PADDING = padding
    return table + "".join(f"\n[{i}] {note}" for note, i in notes.items())


def _simple(headers: list[str], body: list[list[str]]) -> str:
    """tabulate's "simple" layout (left-aligned, two blanks between columns, a rule under the headers), written
    directly: tabulate's type inference would cost seconds and hundreds of MB on a file of many rows."""
    widths = [max([len(h), *(len(r[i]) for r in body)]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *map(line, body)])


def status_summary(rows: list[dict[str, Any]]) -> str:
    counts = Counter(r.get("status", "error") for r in rows)
    return f"{len(rows)} rows: " + ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s])


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _plot_points(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One point per model/backend/precision: throughput at its largest measured batch, measured top-1 if any."""
    import zoo

    best: dict[tuple, dict[str, Any]] = {}
    top1: dict[tuple, float] = {}
    for row in rows:
        if row.get("status") != "ok" or row.get("features_only") or not _finite(row.get("throughput_ips")):
            continue
        key = (row["model"], _backend_label(row), row["precision"])
        if key not in best or row["batch_size"] > best[key]["batch_size"]:
            best[key] = row
        if _finite(row.get("top1")):
            top1[key] = row["top1"]
    points = []
    for key, row in best.items():
        measured = top1.get(key)
        try:
            paper = zoo.info(row["model"]).paper_top1
        except ValueError:  # a model registered only inside the run that measured it
            paper = None
        if measured is None and paper is None:
            continue
        points.append(
            {
                "model": key[0],
                "series": f"{key[1]} {key[2]}",
                "x": row["throughput_ips"],
                "y": measured if measured is not None else paper,
                "measured": measured is not None,
            }
        )
    return points


def plot(rows: Iterable[dict[str, Any]], path: str | Path, title: str | None = None) -> bool:
    """Save accuracy against throughput as a PNG; False (and no file) when no row has both numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.text
    import matplotlib.ticker

    rows = list(rows)
    points = _plot_points(rows)
    if not points:
        return False
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=150)
    series = sorted({p["series"] for p in points})
    colors = dict(zip(series, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4))
    for name in series:
        for measured, marker_face, label in (
            (True, None, "measured top-1"),
            (False, "none", "paper top-1 (zoo.info, not measured here)"),
        ):
            pts = [p for p in points if p["series"] == name and p["measured"] == measured]
            if pts:
                ax.scatter(
                    [p["x"] for p in pts],
                    [p["y"] for p in pts],
                    s=48,
                    color=colors[name],
                    facecolors=marker_face or colors[name],
                    label=f"{name}: {label}",
                )
    for i, p in enumerate(points):  # alternate above/below so labels of neighbouring points do not collide
        ax.annotate(
            p["model"], (p["x"], p["y"]), textcoords="offset points", xytext=(5, 5 if i % 2 else -11), fontsize=8
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.LogFormatter(labelOnlyBase=False))  # plain numbers, thinned
    ax.margins(x=0.15, y=0.15)
    ax.set_xlabel("throughput (images/s, largest measured batch)")
    ax.set_ylabel("top-1 (%)")
    device = next((r["env"].get("device_name") for r in rows if r.get("env")), None)
    ax.set_title(title or f"Accuracy vs throughput{f' on {device}' if device else ''}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    for text in fig.findobj(matplotlib.text.Text):  # text from rows is data: `$...$` in a name is no mathtext
        text.set_parse_math(False)
    fig.tight_layout()
    try:  # written whole or not at all: no 0-byte image when the disk is full, no write through a planted link
        write_atomic(path, lambda f: fig.savefig(f, format=Path(path).suffix.lstrip(".").lower()))
    finally:
        plt.close(fig)
    return True
