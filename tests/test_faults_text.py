"""Text from rows is data, never markup: a `$...$` name in a plot, a `|` in a Markdown table, a backtick or newline
in a file name on a model card, an escape sequence in a file name on the terminal, a formula in a CSV cell."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest

from bench import cli
from bench.columns import csv_text, markdown_code
from bench.report import plot, render_table
from bench.results import append_row
from hub.card import render_card
from common.cli import EXIT_OK

NAMES = ["$x^2$", "$unclosed", r"$\notacommand$", "$x_$", r"a$\frac{1}$b"]


@pytest.mark.parametrize("name", NAMES)
def test_a_plot_takes_names_with_dollars_as_text(name, tmp_path, make_row):
    rows = [make_row(model=name, top1=80.0, env={"device_name": name}), make_row(backend="compile", top1=81.0)]
    assert plot(rows, tmp_path / "p.png") and (tmp_path / "p.png").stat().st_size > 0


def _unescaped_pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


@pytest.mark.parametrize("fmt", ["github", "pipe"])
def test_a_pipe_in_a_row_never_splits_a_markdown_table(fmt, make_row):
    rows = [make_row(model="a|b", env={"device_name": "x | y"}), make_row(model="plain")]
    lines = [ln for ln in render_table(rows, fmt).splitlines() if ln.startswith("|")]
    assert len({_unescaped_pipes(ln) for ln in lines}) == 1 and "a\\|b" in lines[2]


@pytest.mark.parametrize("value", ['=HYPERLINK("http://x")', "+1+2", "-2+3", "@SUM(A1)", "\tTAB"])
def test_a_csv_cell_is_never_a_formula(value, make_row):
    for text in (render_table([make_row(model=value, reason=value)], "csv"),
                 render_table([make_row(model=value)], "timm")):  # fmt: skip
        for row in csv.DictReader(io.StringIO(text)):
            cells = [c for c in row.values() if isinstance(c, str) and c]
            assert not any(c.startswith(("=", "+", "@", "\t")) for c in cells), cells
            assert any(c.startswith("'") for c in cells)
    assert csv_text("-1.5") == "'-1.5" and csv_text("ok") == "ok"  # text only: numbers are written as numbers


@pytest.mark.parametrize("text", ["a`b", "``x``", "x\n# Injected", "`", "a\r\n\n## H"])
def test_a_code_span_holds_any_text_on_one_line(text):
    span = markdown_code(text)
    assert "\n" not in span and "\r" not in span
    fence = re.match(r"`+", span).group()
    inner = span[len(fence) : -len(fence)]
    assert span.endswith(fence) and fence not in inner  # CommonMark: the span ends only at the same run


@pytest.mark.parametrize("name", ["x`\n# Injected heading\n`y.pth", "a|b.pth", "ok.pth"])
def test_a_file_name_injects_nothing_into_a_model_card(name, rmt_converted, make_row):
    config = json.loads((rmt_converted / "config.json").read_text())
    config["provenance"]["source_file"] = name
    row = make_row(model="rmt_t|x", env={"device_name": "GPU\n# Also injected"})
    text = render_card(config, [row], f"results`{name}")
    headings = [ln for ln in text.splitlines() if ln.startswith("#")]
    assert not any("Injected" in h or "injected" in h for h in headings)
    table = [ln for ln in text.split("## Measured numbers")[1].splitlines() if ln.startswith("|")]
    assert len({_unescaped_pipes(ln) for ln in table}) == 1


def test_an_escape_sequence_in_a_file_name_never_reaches_the_terminal(tmp_path, capsys, make_row):
    path = tmp_path / "r\x1b[2J\x1b]0;owned\x07.jsonl"
    append_row(path, make_row())
    with open(path, "a") as f:
        f.write("not a row\n")
    assert cli.main(["report", str(path)]) == EXIT_OK
    out, err = capsys.readouterr()
    assert "\x1b" not in err and "\x07" not in err and "\\x1b" in err
