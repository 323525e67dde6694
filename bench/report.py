"""Tables (tabulate or CSV) and the accuracy-vs-throughput plot, from result rows."""
from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from tabulate import tabulate, tabulate_formats

from .spec import STATUSES

__all__ = ["FORMATS", "render_table", "table_order", "status_summary", "plot"]

FORMATS = ("csv", *tabulate_formats)

_CSV_FIELDS = (
    "model", "backend", "compile_mode", "precision", "batch_size", "input_size", "features_only", "channels_last", "device",
    "status", "reason", "params", "gmacs", "gmacs_torch", "latency_ms.mean", "latency_ms.p50", "latency_ms.p90",
    "latency_ms.p99", "latency_ms.std", "throughput_ips", "peak_mem_mb", "peak_mem_reserved_mb", "compile_s",
    "graph_breaks", "top1", "top5", "eval_samples", "env.device_name", "timestamp",
)


def _get(row: dict[str, Any], dotted: str) -> Any:
    value: Any = row
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _num(value: Any, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def _backend_label(row: dict[str, Any]) -> str:
    label = row["backend"]
    if row.get("compile_mode") not in (None, "default"):
        label += f" ({row['compile_mode']})"
    return label + (" +cl" if row.get("channels_last") else "")


def _input_label(row: dict[str, Any]) -> str:
    h, w = row["input_size"]
    return f"{h}x{w}" + (" feat" if row.get("features_only") else "")


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(_CSV_FIELDS)
    for row in rows:
        writer.writerow(["x".join(map(str, v)) if isinstance(v, list) else ("" if v is None else v) for v in (_get(row, f) for f in _CSV_FIELDS)])
    return buf.getvalue()


def table_order(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Models and backends in the order they first appear, then input size and batch size ascending."""
    first: dict[tuple, int] = {}
    for row in rows:
        first.setdefault((row["model"], row["backend"]), len(first))
    return sorted(rows, key=lambda r: (first[r["model"], r["backend"]], r["precision"], bool(r.get("features_only")),
                                       bool(r.get("channels_last")), list(r["input_size"]), r["batch_size"]))


def render_table(rows: Iterable[dict[str, Any]], fmt: str = "github") -> str:
    """One line per row; rows that are not `ok` carry a numbered note with their reason under the table."""
    rows = list(rows)
    if fmt == "csv":
        return _csv(rows)
    notes: list[str] = []
    body = []
    for row in rows:
        status = row.get("status", "error")
        reasons = [r for r in (row.get("reason"), row.get("flops_error"), row.get("accuracy_error")) if r]
        if reasons:
            note = " ".join(reasons)
            if note not in notes:
                notes.append(note)
            status += f" [{notes.index(note) + 1}]"
        lat = row.get("latency_ms") or {}
        body.append([
            row["model"], _backend_label(row), row["precision"], row["batch_size"], _input_label(row),
            _num(row.get("params") and row["params"] / 1e6, ".2f"), _num(row.get("gmacs"), ".3f"),
            _num(lat.get("mean"), ".2f"), _num(lat.get("p50"), ".2f"), _num(lat.get("p90"), ".2f"), _num(lat.get("p99"), ".2f"),
            _num(lat.get("std"), ".2f"), _num(row.get("throughput_ips"), ".1f"), _num(row.get("peak_mem_mb"), ".0f"),
            _num(row.get("compile_s"), ".1f"), _num(row.get("graph_breaks"), "d"),
            _num(row.get("top1"), ".2f"), _num(row.get("top5"), ".2f"), status,
        ])
    headers = [
        "model", "backend", "precision", "batch", "input", "params (M)", "GMACs", "mean ms", "p50 ms", "p90 ms", "p99 ms",
        "std ms", "img/s", "peak MB", "compile s", "breaks", "top-1", "top-5", "status",
    ]
    table = tabulate(body, headers=headers, tablefmt=fmt, disable_numparse=True)
    return table + "".join(f"\n[{i}] {note}" for i, note in enumerate(notes, 1))


def status_summary(rows: list[dict[str, Any]]) -> str:
    counts = Counter(r.get("status", "error") for r in rows)
    return f"{len(rows)} rows: " + ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts[s])


def _plot_points(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One point per model/backend/precision: throughput at its largest measured batch, measured top-1 if any."""
    import zoo

    best: dict[tuple, dict[str, Any]] = {}
    top1: dict[tuple, float] = {}
    for row in rows:
        if row.get("status") != "ok" or row.get("features_only") or row.get("throughput_ips") is None:
            continue
        key = (row["model"], _backend_label(row), row["precision"])
        if key not in best or row["batch_size"] > best[key]["batch_size"]:
            best[key] = row
        if row.get("top1") is not None:
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
        points.append({"model": key[0], "series": f"{key[1]} {key[2]}", "x": row["throughput_ips"],
                       "y": measured if measured is not None else paper, "measured": measured is not None})
    return points


def plot(rows: Iterable[dict[str, Any]], path: str | Path, title: str | None = None) -> bool:
    """Save accuracy against throughput as a PNG; False (and no file) when no row has both numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = list(rows)
    points = _plot_points(rows)
    if not points:
        return False
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=150)
    series = sorted({p["series"] for p in points})
    colors = dict(zip(series, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4))
    for name in series:
        for measured, marker_face, label in ((True, None, "measured top-1"), (False, "none", "paper top-1 (zoo.info, not measured here)")):
            pts = [p for p in points if p["series"] == name and p["measured"] == measured]
            if pts:
                ax.scatter([p["x"] for p in pts], [p["y"] for p in pts], s=48, color=colors[name],
                           facecolors=marker_face or colors[name], label=f"{name}: {label}")
    for i, p in enumerate(points):  # alternate above/below so labels of neighbouring points do not collide
        ax.annotate(p["model"], (p["x"], p["y"]), textcoords="offset points", xytext=(5, 5 if i % 2 else -11), fontsize=8)
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
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True
