"""Tables (tabulate or CSV) and the accuracy-vs-throughput plot, from result rows."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import textwrap
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable

import tabulate as tabulate_module
from tabulate import tabulate, tabulate_formats

from .backends import options_label
from .columns import Column, csv_text, get_field, markdown_cell, printable
from .schema import NOTES, csv_fields, row_schema, settings_columns, table_columns
from common.paths import write_atomic
from .spec import KEY_DEFAULTS, STATUSES, backend_options

__all__ = [
    "FORMATS",
    "LATEX_FORMATS",
    "latex_escape",
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
    "row_line",
    "table_order",
    "status_summary",
    "plot",
    "drawable",
    "PLOTS",
    "PLOT_NEEDS",
    "caption",
    "timm_csv",
]

FORMATS = ("csv", "timm", *tabulate_formats)
# Written here rather than by tabulate: escaped, booktabs rules, numbers right-aligned, notes as table footnotes.
LATEX_FORMATS = ("latex", "latex_booktabs")
MARKDOWN_FORMATS = ("github", "pipe")  # a `|` in a cell would split the row
# Under every table with the img/s column: not batch / p50, which a reader might take it for.
THROUGHPUT_LEGEND = "img/s: images per second over the wall-clock time of all timed steps (not batch / p50 ms)."
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
    """The part of a row the tables, CSVs and plot read (env reduced to its device name and torch version): a report
    over a large file holds a few hundred bytes per row, not the raw step times and environment of each."""
    read = _read()
    kept = {k: row[k] for k in read if k in row}
    if "env" in row:
        kept["env"] = {"device_name": get_field(row, "env.device_name"), "torch": get_field(row, "env.torch")}
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
    others when any row has a value, and besides them every setting (threads, weights, data, ...) in which rows
    differ, so that no two rows that measured differently look alike. The status comes last unless it was placed."""
    if asked:
        return [*columns, *([] if STATUS in columns else [STATUS])]
    names = {c.name for c in columns}
    differing = [c for c in settings_columns() if c.name not in names and len({c.cell(r) for r in rows}) > 1]
    shown = []
    for column in (*columns, *differing):
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
    if fmt in LATEX_FORMATS:
        return _latex(shown, headers, body, notes)
    if fmt == TERMINAL_FORMAT:
        table = _simple(headers, body)
    else:
        padding, tabulate_module.MIN_PADDING = tabulate_module.MIN_PADDING, 0  # no extra blanks beside headers
        try:
            table = tabulate(body, headers=headers, tablefmt=fmt, disable_numparse=True)
        finally:
            tabulate_module.MIN_PADDING = padding
    # After a blank line: a Markdown (GFM) table runs on until one, so a note right under it would read as a row;
    # in Markdown each note is its own paragraph, so that they do not run together into one line.
    lines = [f"[{i}] {note}" for note, i in notes.items()]
    if any(c.name == "img_s" for c in shown):  # two throughputs could be meant; say which this is
        lines.insert(0, THROUGHPUT_LEGEND)
    return table + ("\n\n" if lines else "") + ("\n\n" if fmt in MARKDOWN_FORMATS else "\n").join(lines)


# Characters LaTeX reads as commands, each written as the text it stands for.
_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """`text` as LaTeX prints it literally."""
    return "".join(_LATEX_SPECIAL.get(c, c) for c in text)


def _latex(shown: list[Column], headers: list[str], body: list[list[str]], notes: dict[str, int]) -> str:
    """A booktabs tabular (needs `\\usepackage{booktabs}`): text escaped, numbers right-aligned, each note a
    footnote mark in the status cell and a line under the bottom rule."""
    marked = re.compile(r" \[(\d+)\]$")

    def cell(text: str) -> str:
        match = marked.search(text)
        if not match:
            return latex_escape(text)
        return latex_escape(text[: match.start()]) + rf"\textsuperscript{{{match.group(1)}}}"

    align = "".join("r" if c.kind in ("number", "whole") else "l" for c in shown)
    lines = [rf"\begin{{tabular}}{{{align}}}", r"\toprule", " & ".join(map(latex_escape, headers)) + r" \\"]
    lines += [r"\midrule", *(" & ".join(map(cell, row)) + r" \\" for row in body), r"\bottomrule"]
    legend = [THROUGHPUT_LEGEND] if any(c.name == "img_s" for c in shown) else []
    lines += [rf"\multicolumn{{{len(shown)}}}{{l}}{{\footnotesize {latex_escape(text)}}} \\" for text in legend]
    lines += [
        rf"\multicolumn{{{len(shown)}}}{{l}}{{\footnotesize\textsuperscript{{{i}}} {latex_escape(note)}}} \\"
        for note, i in notes.items()
    ]
    return "\n".join([*lines, r"\end{tabular}"])


def row_line(row: dict[str, Any]) -> str:
    """One row as a line of its own (a run's progress as rows land): what it is, p50 and img/s, status and note."""
    what = [by_name()[n].cell(row) for n in ("model", "backend", "precision")]
    what[1:1] = [row["mode"]] if row.get("mode", "infer") != "infer" else []
    numbers = [f"{c.cell(row)} {c.header}" for c in map(by_name().get, ("p50", "img_s")) if c.cell(row)]
    note = printable(" ".join(dict.fromkeys(row[k] for k in NOTES if row.get(k))))
    status = row.get("status", "error") + (f": {note}" if note and row.get("status") != "ok" else "")
    return f"{' '.join(what)} batch {row['batch_size']} {_input_label(row)}: {', '.join([*numbers, status])}"


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
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


PLOTS = ("accuracy", "batch", "dense")  # what `--plot-kind` draws
# What each figure needs of at least one row, said when none has it.
PLOT_NEEDS = {
    "accuracy": "a finite throughput and a (measured or paper) top-1",
    "batch": "a throughput at two or more batch sizes of one model, backend, precision and input",
    "dense": "a --features-only measurement",
}


def _plot_points(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One point per model/backend/precision: throughput at its largest measured batch with its per-step spread
    (the p90 step to the fastest), measured top-1 if any, else the paper's."""
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
                "backend": key[1],
                "precision": key[2],
                "x": row["throughput_ips"],
                "spread": _spread(row),
                "y": measured if measured is not None else paper,
                "measured": measured is not None,
                "size": row.get("gmacs") if _finite(row.get("gmacs")) else None,
                "row": row,  # the row drawn: the caption describes these, not the rows left out
            }
        )
    return points


def _spread(row: dict[str, Any]) -> tuple[float, float] | None:
    """Images per second of the p90 step and of the fastest step: how far one step's throughput ranges."""
    slow, fast = get_field(row, "latency_ms.p90"), get_field(row, "latency_ms.min")
    if not (_finite(slow) and _finite(fast)) or fast <= 0:
        return None
    return row["batch_size"] * 1e3 / slow, row["batch_size"] * 1e3 / fast


def _values(rows: list[dict[str, Any]], read: Callable[[dict[str, Any]], Any]) -> str:
    found = sorted({str(v) for v in map(read, rows) if v not in (None, "")})
    return ", ".join(found) if len(found) <= 3 else f"{', '.join(found[:3])}, ... ({len(found)})"


def caption(rows: list[dict[str, Any]]) -> str:
    """How the plotted rows were measured, in one or two lines under the figure: device, torch, precision, batch,
    threads, weights and date."""
    parts = [
        ("device", _values(rows, lambda r: get_field(r, "env.device_name"))),
        ("torch", _values(rows, lambda r: get_field(r, "env.torch"))),
        ("precision", _values(rows, _precision_label)),
        ("batch", _values(rows, lambda r: r.get("batch_size"))),
        ("threads", _values(rows, lambda r: r.get("threads"))),
        ("weights", _values(rows, lambda r: r.get("weights", KEY_DEFAULTS["weights"]))),
        ("date", _values(rows, lambda r: (r.get("timestamp") or "")[:10])),
    ]
    text = "; ".join(f"{name} {value}" for name, value in parts if value)
    return "\n".join(textwrap.wrap(text, 130))


def _figure(rows: list[dict[str, Any]], panels: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=(8 * panels if panels > 1 else 9, 6), dpi=150, squeeze=False)
    fig.text(0.01, 0.01, caption(rows), fontsize=7, va="bottom", ha="left", color="0.3")
    return plt, fig, list(axes[0])


def _plain_log_axis(axis: Any, low: float, high: float) -> None:
    """A log axis from `low` to `high` (its final limits) whose ticks read as plain numbers, never 3e-01, and lie
    inside the limits, at least two of them: 2, 5, 10, 20, 50, ... over a decade or more; every integer step of a
    decade over less; round, evenly spaced numbers where fewer than two of those fall inside (150 to 180, or 0.95 to
    1.8 around one tick)."""
    import matplotlib.ticker as ticker

    subs = (1.0, 2.0, 5.0) if high > 10 * low else tuple(float(i) for i in range(1, 10))
    ticks: list[float] = []
    for locator in (ticker.LogLocator(base=10, subs=subs), ticker.MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10])):
        ticks = [t for t in locator.tick_values(low, high) if low <= t <= high]
        if len(ticks) >= 2:
            break
    axis.set_major_locator(ticker.FixedLocator(ticks))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.12g}"))  # 1000000, not 1e+06
    axis.set_minor_formatter(ticker.NullFormatter())


def _save(plt: Any, fig: Any, path: str | Path) -> None:
    import matplotlib.text

    for text in fig.findobj(matplotlib.text.Text):  # text from rows is data: `$...$` in a name is no mathtext
        text.set_parse_math(False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    try:  # written whole or not at all: no 0-byte image when the disk is full, no write through a planted link
        write_atomic(path, lambda f: fig.savefig(f, format=Path(path).suffix.lstrip(".").lower()))
    finally:
        plt.close(fig)


def _accuracy_plot(rows: list[dict[str, Any]], path: str | Path, title: str | None) -> bool:
    points = _plot_points(rows)
    if not points:
        return False
    plt, fig, (ax,) = _figure([p["row"] for p in points])
    series = sorted({(p["backend"], p["precision"]) for p in points})
    colors = dict(zip(series, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4))
    sizes = [p["size"] for p in points if p["size"]]
    scale = 400 / max(sizes) if sizes else 0
    for model in sorted({(p["model"], p["precision"]) for p in points}):  # one model's backends, joined
        same = sorted((p for p in points if (p["model"], p["precision"]) == model), key=lambda p: p["x"])
        if len(same) > 1:
            ax.plot([p["x"] for p in same], [p["y"] for p in same], color="0.6", lw=1, zorder=1)
    for p in points:
        color = colors[p["backend"], p["precision"]]
        if p["spread"]:
            low, high = p["spread"]
            ax.plot([low, high], [p["y"], p["y"]], color=color, lw=2, alpha=0.5, zorder=2)
        ax.scatter(
            p["x"],
            p["y"],
            s=max(30, p["size"] * scale) if p["size"] else 48,
            color=color,
            facecolors=color if p["measured"] else "none",
            zorder=3,
        )
    for i, p in enumerate(points):  # alternate above/below so labels of neighbouring points do not collide
        ax.annotate(
            p["model"], (p["x"], p["y"]), textcoords="offset points", xytext=(6, 6 if i % 2 else -12), fontsize=8
        )
    for name in series:
        ax.scatter([], [], s=48, color=colors[name], label=f"{name[0]} {name[1]}")
    ax.plot([], [], color="0.6", lw=1, label="one model's backends, joined")
    ax.plot([], [], color="0.3", lw=2, alpha=0.5, label="per-step spread: p90 step to fastest")
    if sizes:
        ax.scatter([], [], s=48, color="0.7", label="marker area: GMACs")
    ax.set_xscale("log")
    ax.margins(x=0.15, y=0.15)
    _plain_log_axis(ax.xaxis, *ax.get_xlim())
    ax.set_xlabel("throughput (images/s over the timed steps' wall clock, largest measured batch)")
    measured = {p["measured"] for p in points}
    ax.set_ylabel(
        "top-1 (%, paper)"
        if measured == {False}
        else "top-1 (%, measured)"
        if measured == {True}
        else "top-1 (%): filled measured, hollow paper"
    )
    device = _values(rows, lambda r: get_field(r, "env.device_name"))
    ax.set_title(title or f"Accuracy vs throughput{f' on {device}' if device else ''}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    _save(plt, fig, path)
    return True


def _line_label(row: dict[str, Any]) -> str:
    return f"{row['model']} {_backend_label(row)} {_precision_label(row)}"


def _batch_lines(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The batch figure's lines: each model/backend/precision/input measured at two or more batch sizes."""
    lines: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("status") == "ok" and _finite(row.get("throughput_ips")):
            lines.setdefault(f"{_line_label(row)} {_input_label(row)}", []).append(row)
    return {
        k: sorted(v, key=lambda r: r["batch_size"]) for k, v in lines.items() if len({r["batch_size"] for r in v}) > 1
    }


def _batch_plot(rows: list[dict[str, Any]], path: str | Path, title: str | None) -> bool:
    """Throughput against batch size, one line per model/backend/precision/input, with the per-step spread."""
    lines = _batch_lines(rows)
    if not lines:
        return False
    plt, fig, (ax,) = _figure(rows)
    for label, line in sorted(lines.items()):
        batches = [r["batch_size"] for r in line]
        drawn = ax.plot(batches, [r["throughput_ips"] for r in line], marker="o", label=label)
        spreads = [_spread(r) for r in line]
        if all(spreads):
            ax.fill_between(
                batches, [s[0] for s in spreads], [s[1] for s in spreads], color=drawn[0].get_color(), alpha=0.15
            )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
    _plain_log_axis(ax.yaxis, *ax.get_ylim())
    ax.set_xlabel("batch size")
    ax.set_ylabel("throughput (images/s, wall clock); band: p90 step to fastest")
    ax.set_title(title or "Throughput vs batch size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    _save(plt, fig, path)
    return True


def _dense_lines(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The dense figure's lines: the --features-only rows with a p50 latency, per backbone and batch size."""
    lines: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("status") == "ok" and row.get("features_only") and _finite(get_field(row, "latency_ms.p50")):
            lines.setdefault(f"{_line_label(row)} b{row['batch_size']}", []).append(row)
    return lines


def _dense_plot(rows: list[dict[str, Any]], path: str | Path, title: str | None) -> bool:
    """The dense table as a figure: p50 latency and peak memory against input size (pixels), per backbone."""
    lines = _dense_lines(rows)
    if not lines:
        return False
    plt, fig, axes = _figure(rows, panels=2)
    for label, line in sorted(lines.items()):
        line.sort(key=lambda r: r["input_size"][0] * r["input_size"][1])
        pixels = [r["input_size"][0] * r["input_size"][1] / 1e6 for r in line]
        axes[0].plot(pixels, [get_field(r, "latency_ms.p50") for r in line], marker="o", label=label)
        memory = [(p, r.get("peak_mem_mb")) for p, r in zip(pixels, line) if _finite(r.get("peak_mem_mb"))]
        axes[1].plot([m[0] for m in memory], [m[1] for m in memory], marker="o", label=label)
    sizes = sorted({tuple(r["input_size"]) for line in lines.values() for r in line}, key=lambda s: s[0] * s[1])
    for ax, ylabel in zip(axes, ("p50 latency (ms)", "peak memory (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([h * w / 1e6 for h, w in sizes], [f"{h}x{w}" for h, w in sizes], rotation=30, fontsize=8)
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        _plain_log_axis(ax.yaxis, *ax.get_ylim())
        ax.set_xlabel("input size (H x W)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(title or "Dense backbones: latency and memory against input size")
    _save(plt, fig, path)
    return True


# Each figure: what it selects of the rows (nothing selected: no figure), and what draws it.
_FIGURES = {
    "accuracy": (_plot_points, _accuracy_plot),
    "batch": (_batch_lines, _batch_plot),
    "dense": (_dense_lines, _dense_plot),
}


def drawable(rows: Iterable[dict[str, Any]], kind: str) -> bool:
    """Whether some row has what the `kind` figure needs (PLOT_NEEDS), so `plot` would draw it: a command asked for
    a figure checks this before it prints or writes anything."""
    return bool(_FIGURES[kind][0](list(rows)))


def plot(rows: Iterable[dict[str, Any]], path: str | Path, title: str | None = None, kind: str = "accuracy") -> bool:
    """Save a figure of the rows (png, pdf or svg) with a caption of how they were measured: accuracy against
    throughput, throughput against batch size ("batch"), or latency and memory against input size ("dense"); False
    (and no file) when no row has what the figure needs."""
    return _FIGURES[kind][1](list(rows), path, title)
