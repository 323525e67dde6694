"""Tables, CSVs and the plot (bench/report.py)."""

from __future__ import annotations

import csv
import html
import io
import json
import re
import shutil
import subprocess

import pytest

from bench import cli, measure
from bench.columns import Column
from bench.measure import Loop
from bench.report import plot, render_table, status_summary, table_order
from bench.results import append_row, load_results
from bench.schema import row_schema


def test_table_formats_and_notes(make_row):
    reason = "torch_tensorrt is not installed."
    rows = [
        make_row(),
        make_row(backend="tensorrt", status="unavailable", reason=reason, latency_ms=None, throughput_ips=None),
        make_row(
            backend="tensorrt", batch_size=1, status="unavailable", reason=reason, latency_ms=None, throughput_ips=None
        ),
        make_row(
            batch_size=256, status="oom", reason="Out of memory at batch 256.", latency_ms=None, throughput_ips=None
        ),
    ]
    table = render_table(rows, "github", ["all"])
    lines = table.splitlines()
    assert lines[0].startswith("| model") and "p99 ms" in lines[0] and "img/s" in lines[0]
    assert "| 28.29 " in lines[2] and "| 4.51 " in lines[2] and "| 800.0 " in lines[2]
    assert table.count("unavailable [1]") == 2 and "oom [2]" in table  # identical reasons share one note
    assert lines[-3:] == [f"[1] {reason}", "", "[2] Out of memory at batch 256."] and lines[-6] == ""
    csv_lines = render_table(rows, "csv").splitlines()
    assert csv_lines[0].startswith("model,mode,backend,precision,batch_size,input_size")
    assert len(csv_lines) == 5 and ",224x224," in csv_lines[1] and ",15.0," in csv_lines[1]
    assert status_summary(rows) == "4 rows: 1 ok, 1 oom, 2 unavailable"


def test_terminal_table_shows_only_columns_with_values(make_row):
    header = render_table([make_row()], "github", ["all"]).splitlines()[0]
    assert "p50 ms" in header and "img/s" in header
    for empty in ("top-1", "top-5", "compile s", "breaks", "vs eager", "p95 ms", "| mode ", "| device "):
        assert empty not in header
    rows = [
        make_row(),
        make_row(backend="compile", compile_s=2.5, graph_breaks=0, diff_vs_eager_rel=3e-7, mode="train", tf32=True),
    ]
    table = render_table(rows, "github", ["all"])
    header = table.splitlines()[0]
    for shown in ("compile s", "breaks", "vs eager", "| mode "):
        assert shown in header
    assert "| train " in table and "fp32 +tf32" in table and "3.0e-07" in table
    assert "top1" in render_table([make_row()], "csv").splitlines()[0]  # CSV keeps every field


def test_timm_csv_has_timm_columns_and_merges_infer_and_train(make_row):
    rows = [
        make_row(throughput_ips=812.3456, latency_ms={"mean": 9.87654}),
        make_row(mode="train", throughput_ips=201.0, latency_ms={"mean": 39.8}),
        make_row(model="rmt_t", params=14_334_216, gmacs=2.651, throughput_ips=900.0, latency_ms={"mean": 8.9}),
        make_row(model="rmt_t", batch_size=1, status="oom"),
    ]
    lines = list(csv.DictReader(io.StringIO(render_table(rows, "timm"))))
    assert list(lines[0])[:11] == [
        "model",
        "infer_samples_per_sec",
        "infer_step_time",
        "infer_batch_size",
        "infer_img_size",
        "infer_gmacs",
        "train_samples_per_sec",
        "train_step_time",
        "train_batch_size",
        "train_img_size",
        "param_count",
    ]
    swin, rmt = lines
    assert (
        swin["model"] == "swin_t" and swin["infer_samples_per_sec"] == "812.35" and swin["infer_step_time"] == "9.877"
    )
    assert swin["infer_img_size"] == "224" and swin["infer_gmacs"] == "4.51" and swin["param_count"] == "28.29"
    assert swin["train_samples_per_sec"] == "201.0" and swin["train_batch_size"] == "8"
    assert rmt["param_count"] == "14.33" and rmt["train_step_time"] == ""  # the oom row is left out
    only_infer = render_table([make_row()], "timm").splitlines()[0]
    assert "train_" not in only_infer


def test_table_order(make_row):
    rows = [
        make_row(model="b", batch_size=8),
        make_row(model="a"),
        make_row(model="b", batch_size=1),
        make_row(model="b", backend="compile"),
    ]
    assert [(r["model"], r["backend"], r["batch_size"]) for r in table_order(rows)] == [
        ("b", "eager", 1),
        ("b", "eager", 8),
        ("a", "eager", 8),
        ("b", "compile", 8),
    ]


def test_plot_uses_paper_accuracy_when_none_was_measured(tmp_path, make_row):
    png = tmp_path / "plot.png"
    assert plot([make_row(), make_row(model="rmt_t", top1=81.0)], png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plot([make_row(status="oom")], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


class _Temperature(measure.Tracker):
    """A tracker that exists only in this test: one table column and one CSV-only field."""

    columns = (
        Column("temp C", "temp_c", ".1f", id="temp", unit="degrees C"),
        Column("", "temp_sensor", kind="text", table=False),
    )

    def fields(self, loop: Loop) -> dict:
        return {"temp_c": 41.25, "temp_sensor": "fake"}


def test_a_new_tracker_is_one_class_and_its_fields_reach_every_output(monkeypatch, make_row, tmp_path, capsys):
    monkeypatch.setattr(measure, "TRACKERS", (*measure.TRACKERS, _Temperature))
    row = make_row(**_Temperature("cpu").fields(Loop([1.0], 1.0)))
    [line] = csv.DictReader(io.StringIO(render_table([row], "csv")))
    assert line["temp_c"] == "41.25" and line["temp_sensor"] == "fake"
    table = render_table([row], "simple", ["all"])
    assert "temp C" in table.splitlines()[0] and "41.2" in table.splitlines()[2]
    path = tmp_path / "r.jsonl"
    append_row(path, row)
    append_row(path, {**row, "batch_size": 1, "temp_c": "hot"})  # the store validates the new field by its kind
    assert [r["batch_size"] for r in load_results(path, quiet=True)] == [8]
    assert cli.main(["report", str(path), "--columns", "model", "temp"]) == 0
    assert capsys.readouterr().out.splitlines()[0].split() == ["model", "temp", "C", "status"]


def test_every_field_a_tracker_writes_is_declared_and_reaches_the_csv(make_row):
    loop = Loop([2.0, 3.0], 0.005, batch_size=2)
    header = next(csv.reader(io.StringIO(render_table([make_row()], "csv"))))
    for cls in measure.TRACKERS:
        tracker = cls("cpu")
        tracker.start()
        tracker.stop()
        written = tracker.fields(loop)
        declared = {c.field.split(".")[0]: c for c in cls.columns}
        assert set(written) <= set(declared), cls.__name__
        for name, value in written.items():
            fields = [c.field for c in cls.columns if c.field.split(".")[0] == name and c.csv]
            assert fields or not declared[name].csv, name
            assert all(f in header for f in fields), (cls.__name__, fields)
    assert {"energy_j", "peak_mem_kind", "peak_mem_reserved_mb", "energy_note"} <= set(header)


@pytest.mark.parametrize("fmt", ["simple", "github", "csv", "timm"])
def test_text_fields_are_printed_escaped(fmt, make_row):
    hostile = "\x1b]0;owned\x07\x1b[2J\r"
    rows = [
        make_row(model="swin_t" + hostile, env={"device_name": "cpu" + hostile}),
        make_row(status="error", reason="boom" + hostile, backend_options={"mode": hostile}),
    ]
    out = render_table(rows, fmt, ["all"] if fmt not in ("csv", "timm") else None)
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out
    if fmt != "timm":  # timm's CSV has only measured rows, and the model name
        assert "\\x1b]0;owned" in out


def test_columns_show_what_is_asked_in_that_order(make_row):
    rows = [make_row(), make_row(batch_size=1)]  # one machine, no training, no top-1, no energy
    table = render_table(rows, "simple", ["device", "mode", "top1", "j_img", "status", "model"])
    assert table.splitlines()[0].split() == ["device", "mode", "top-1", "J/img", "status", "model"]
    assert table.splitlines()[2].split() == ["Test", "CPU", "infer", "ok", "swin_t"]
    with pytest.raises(ValueError, match="Unknown column 'nope'"):
        render_table(rows, "simple", ["model", "nope"])
    default = render_table(rows, "simple").splitlines()[0].split()
    assert "device" not in default and "mode" not in default and default[-1] == "status"


def test_every_field_a_worker_writes_reaches_the_csv(tmp_path):
    """Real rows (infer and train, FLOPs counted) from the worker's entry in this process: every field they carry is
    a CSV column, unless the schema keeps it to the JSON lines; the columns are read from the schema, not listed."""
    from dataclasses import asdict

    from bench import worker
    from bench.spec import RowSpec, Settings

    out, job = tmp_path / "r.jsonl", tmp_path / "job.json"
    specs = [RowSpec("test_convnext", "eager", "fp32", 1, (32, 32), "cpu", mode=m) for m in ("infer", "train")]
    settings = asdict(Settings(warmup=0, iters=1))
    job.write_text(json.dumps({"rows": [s.fields() for s in specs], "settings": settings, "results": str(out),
                               "run_id": "test", "command": "pytest"}))  # fmt: skip
    worker.main(str(job))
    rows = load_results(out)
    assert [r["status"] for r in rows] == ["ok", "ok"], [r["reason"] for r in rows]
    schema = row_schema(measure.TRACKERS)
    header = next(csv.reader(io.StringIO(render_table(rows, "csv"))))
    assert header == [c.field for c in schema if c.csv]
    in_csv = {f.split(".")[0] for f in header} | {c.field for c in schema if not c.csv}
    for row in rows:
        assert set(row) <= in_csv, set(row) - in_csv


def _rows_with_notes(make_row) -> list[dict]:
    """An ok row, and rows whose notes hold what Markdown and LaTeX read as markup."""
    reason = "torch_tensorrt is not installed; pip install 'rmt-zoo[tensorrt]' (50% of rows | $x & #_^~{}\\)."
    return [
        make_row(),
        make_row(backend="tensorrt", status="unavailable", reason=reason, latency_ms=None, throughput_ips=None),
        make_row(batch_size=256, status="oom", reason="Out of memory at batch 256.", latency_ms=None),
    ]


@pytest.mark.parametrize("fmt", ["github", "pipe"])
def test_markdown_table_with_notes_parses_as_exactly_its_rows(fmt, make_row):
    from markdown_it import MarkdownIt

    rows = _rows_with_notes(make_row)
    tokens = MarkdownIt("commonmark").enable("table").parse(render_table(rows, fmt))
    body = [t for t in tokens if t.type == "tr_open"][1:]  # the first is the header's
    assert len(body) == len(rows)
    paragraphs = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "paragraph_open"]
    assert [p.split("]")[0] for p in paragraphs[1:]] == ["[1", "[2"] and paragraphs[0].startswith(
        "img/s: "
    )  # each note its own paragraph, none a row


def _latex_table(make_row) -> str:
    return render_table(_rows_with_notes(make_row), "latex", ["model", "backend", "batch", "p50", "status"])


def test_latex_is_booktabs_with_numbers_right_aligned_and_notes_as_footnotes(make_row):
    table = _latex_table(make_row)
    lines = table.splitlines()
    assert lines[0] == r"\begin{tabular}{llrrl}" and lines[-1] == r"\end{tabular}"
    assert [ln for ln in lines if ln in (r"\toprule", r"\midrule", r"\bottomrule")] == [
        r"\toprule",
        r"\midrule",
        r"\bottomrule",
    ]
    body = lines[lines.index(r"\midrule") + 1 : lines.index(r"\bottomrule")]
    assert len(body) == 3 and all(ln.count(" & ") == 4 and ln.endswith(r" \\") for ln in body)
    assert body[1].endswith(r"unavailable\textsuperscript{1} \\") and body[2].endswith(r"oom\textsuperscript{2} \\")
    notes = lines[lines.index(r"\bottomrule") + 1 : -1]
    assert len(notes) == 2 and all(n.startswith(r"\multicolumn{5}{l}") for n in notes)
    text = re.sub(
        r"\\(textbackslash|textasciitilde|textasciicircum|textsuperscript|footnotesize|multicolumn)", "", table
    )
    assert not re.search(r"(?<!\\)[$&%#_^~]", text.replace(" & ", " ")), "an unescaped special character"


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no pdflatex here; the structural check above runs")
def test_latex_compiles_with_pdflatex(make_row, tmp_path):
    document = "\n".join(
        [r"\documentclass{article}", r"\usepackage{booktabs}", r"\begin{document}", _latex_table(make_row)]
    )
    (tmp_path / "t.tex").write_text(document + "\n\\end{document}\n")
    done = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:]
    assert (tmp_path / "t.pdf").stat().st_size > 0


@pytest.mark.parametrize(
    "field, other",
    [
        ("threads", 1),
        ("weights", "hub:timm/swin_tiny_patch4_window7_224.ms_in1k@main"),
        ("data", "/data/imagenet/val"),
        ("max_samples", 500),
        ("model_kwargs", {"attn_impl": "flex"}),
        ("warmup", 3),
        ("iters", 20),
    ],
)
def test_rows_that_differ_in_a_setting_are_told_apart_by_the_default_table(field, other, make_row):
    base = {"threads": 2, "warmup": 10, "iters": 50}
    rows = [make_row(**base), make_row(**{**base, field: other})]
    for fmt in ("simple", "github"):
        lines = render_table(rows, fmt).splitlines()
        assert lines[2] != lines[3], (field, fmt)  # under the header and its rule
    same = render_table([rows[0], dict(rows[0])]).splitlines()
    assert same[2] == same[3] and "threads" not in same[0]  # a setting shared by every row stays out


def test_the_table_says_which_throughput_it_shows(make_row):
    for fmt in ("simple", "github", "latex"):
        assert "wall-clock time of all timed steps (not batch / p50 ms)" in render_table([make_row()], fmt)
    assert "wall-clock" not in render_table([make_row()], columns=["model", "p50"])


@pytest.fixture
def svg_text(monkeypatch):
    """Figures saved as SVG keep their text as text, so a test reads what the figure says."""
    import matplotlib

    monkeypatch.setitem(matplotlib.rcParams, "svg.fonttype", "none")

    def read(path) -> str:
        return html.unescape(re.sub(r"<[^>]+>", " ", path.read_text()))

    return read


def _measured(make_row, **kw) -> dict:
    base = {"threads": 4, "weights": "random init", "timestamp": "2026-12-04T23:00:00Z"}
    return make_row(**{**base, "env": {"device_name": "Test CPU", "torch": "2.99.0"}, **kw})


def test_the_plot_is_a_captioned_figure(tmp_path, make_row, svg_text):
    rows = [
        _measured(make_row, throughput_ips=0.3),  # a slow row: ticks stay plain numbers below 1
        _measured(make_row, backend="compile", throughput_ips=2.0),
        _measured(make_row, model="rmt_t", gmacs=2.65, throughput_ips=1.5),
    ]
    left_out = _measured(make_row, precision="amp-fp16", batch_size=64, status="oom", throughput_ips=None)
    svg = tmp_path / "plot.svg"
    assert plot([*rows, left_out], svg)
    text = svg_text(svg)
    assert "amp-fp16" not in text and "64" not in text  # the caption describes the points drawn, not rows left out
    for part in ("device Test CPU", "torch 2.99.0", "precision fp32", "batch 8", "threads 4", "weights random init"):
        assert part in text, part
    assert "date 2026-12-04" in text and "top-1 (%, paper)" in text
    assert "per-step spread: p90 step to fastest" in text and "one model's backends, joined" in text
    assert "marker area: GMACs" in text
    assert " 0.5 " in text and " 2 " in text, "ticks are plain numbers (not 5×10⁻¹), every step within a decade"
    with_top1 = [_measured(make_row, top1=80.0, throughput_ips=2.0)]
    assert plot(with_top1, svg) and "top-1 (%, measured)" in svg_text(svg)


@pytest.mark.parametrize("low, high", [(150.0, 180.0), (0.934, 1.87), (9.7, 19.4), (0.3, 2.5), (5.0, 500.0)])
def test_log_axis_ticks_lie_inside_the_limits_and_a_narrow_range_gets_two(low, high):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.report import _plain_log_axis  # the module under test's own helper: every figure's log axes use it

    fig, ax = plt.subplots()
    try:
        ax.set_xscale("log")
        ax.set_xlim(low, high)
        _plain_log_axis(ax.xaxis, low, high)
        ticks = list(ax.xaxis.get_majorticklocs())
        labels = [ax.xaxis.get_major_formatter()(t) for t in ticks]
    finally:
        plt.close(fig)
    assert len(ticks) >= 2 and all(low <= t <= high for t in ticks), ticks
    assert all(re.fullmatch(r"\d+(\.\d+)?", label) for label in labels), labels  # plain numbers


def test_a_batch_sweep_and_the_dense_table_are_figures_too(tmp_path, make_row, svg_text):
    sweep = [_measured(make_row, batch_size=b, throughput_ips=100.0 * b**0.5) for b in (1, 8, 64)]
    svg = tmp_path / "batch.svg"
    assert plot(sweep, svg, kind="batch")
    assert "batch size" in svg_text(svg) and "swin_t eager fp32 224x224" in svg_text(svg)
    assert "threads 4" in svg_text(svg)
    assert not plot(sweep[:1], tmp_path / "one.svg", kind="batch")  # one batch is no sweep
    dense = [
        _measured(make_row, features_only=True, input_size=list(s), latency_ms={"p50": ms}, peak_mem_mb=mb)
        for s, ms, mb in (((512, 512), 300.0, 1100.0), ((800, 1344), 1300.0, 1900.0))
    ]
    svg = tmp_path / "dense.svg"
    assert plot(dense, svg, kind="dense")
    text = svg_text(svg)
    assert "800x1344" in text and "p50 latency (ms)" in text and "peak memory (MiB)" in text
    assert not plot(sweep, tmp_path / "none.svg", kind="dense")  # no backbone rows


def test_a_figure_no_row_can_draw_is_refused_before_anything_is_written(tmp_path, make_row, capsys):
    """Asking for a figure the rows cannot give is bad usage: one sentence, exit 2, no table, no image."""
    classifier, backbone = tmp_path / "classifier.jsonl", tmp_path / "backbone.jsonl"
    append_row(classifier, make_row())  # one batch size, paper top-1: the accuracy figure only
    append_row(backbone, make_row(features_only=True))  # the dense figure only
    png = tmp_path / "p.png"
    for results, kind in [(classifier, "dense"), (classifier, "batch"), (backbone, "accuracy")]:
        assert cli.main(["report", str(results), "--plot", str(png), "--plot-kind", kind]) == 2, kind
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("error: No row of") and err.count("\n") == 1, err
        assert f"--plot-kind {kind} needs" in err and not png.exists()
    for results, kind in [(classifier, "accuracy"), (backbone, "dense")]:
        assert cli.main(["report", str(results), "--plot", str(png), "--plot-kind", kind]) == 0, kind
        assert png.is_file()
        png.unlink()


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--models", "rmt_t", "--plot-kind", "dense"], "add --features-only"),
        (["--models", "rmt_t", "--features-only"], "not --features-only backbones"),
        (["--models", "test_convnext"], "no model of --models has a paper top-1"),
        (["--models", "rmt_t", "--plot-kind", "batch", "--batch-size", "4"], "two or more --batch-size values"),
    ],
)
def test_a_run_asking_for_a_figure_its_rows_cannot_give_is_refused_before_measuring(argv, says, tmp_path, capsys):
    out, png = tmp_path / "r.jsonl", tmp_path / "p.png"
    assert cli.main([*argv, "--device", "cpu", "--out", str(out), "--plot", str(png)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --plot-kind ") and err.count("\n") == 1 and says in err, err
    assert not out.exists() and not png.exists()


def test_plot_kind_is_a_flag_of_both_commands(tmp_path):
    args = cli._report_parser().parse_args(["r.jsonl", "--plot", "p.png", "--plot-kind", "batch"])
    assert args.plot_kind == "batch"
    assert cli.build_parser().parse_args(["--plot-kind", "dense"]).plot_kind == "dense"
