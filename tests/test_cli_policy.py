"""One exit-code policy and one standard-output writer for the three command lines (common/cli.py): a closed stdout
is one sentence and 1, a reader gone is 141, bad arguments one sentence and 2, whichever CLI it is."""

from __future__ import annotations

import io
import os
import sys

import pytest

from bench import cli as bench_cli
from common import cli as policy
from bench.results import append_row
from hub.__main__ import main as hub_main
from zoo.__main__ import main as zoo_main


@pytest.fixture
def report_file(tmp_path, make_row):
    path = tmp_path / "r.jsonl"
    append_row(path, make_row())
    return path


def _commands(report_file) -> dict:
    return {
        "zoo": lambda: zoo_main(["info", "rmt_t"]),
        "bench": lambda: bench_cli.main(["report", str(report_file)]),
        "hub": lambda: hub_main(["push-results", str(report_file), "--repo", "me/results", "--dry-run"]),
    }


@pytest.mark.parametrize("name", ["zoo", "bench", "hub"])
def test_a_closed_stdout_is_one_sentence_and_exit_1(name, report_file, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdout", None)  # what Python has when started with `>&-`
    assert _commands(report_file)[name]() == policy.EXIT_FAILURE
    err = capsys.readouterr().err
    assert err == "error: Standard output is closed, so nothing can be printed.\n"


@pytest.mark.parametrize("name", ["zoo", "bench", "hub"])
def test_a_reader_gone_ends_quietly_with_141(name, report_file, monkeypatch, capsys):
    read, write = os.pipe()
    os.close(read)  # the reader went away (`| head -1` after its line)
    stdout = io.TextIOWrapper(os.fdopen(write, "wb"), write_through=True)
    monkeypatch.setattr(sys, "stdout", stdout)
    try:
        assert _commands(report_file)[name]() == policy.EXIT_BROKEN_PIPE == 141
    finally:
        stdout.close()
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [lambda: zoo_main(["lst"]), lambda: bench_cli.main(["--models", "swin_tt"]), lambda: hub_main(["pubish"])],
)
def test_bad_arguments_are_one_sentence_and_exit_2_everywhere(command, capsys):
    assert command() == policy.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.parametrize("unusable", ["missing", "a symbolic-link loop", "a dangling link"])
def test_an_input_path_missing_or_unreadable_is_one_sentence_and_exit_2_for_every_command(
    unusable, tmp_path, report_file, capsys
):
    """Every path a command reads is checked up front, as bench.py checks its inputs: a bad path is bad usage."""
    path = tmp_path / "input"
    if unusable != "missing":
        path.symlink_to(path if unusable == "a symbolic-link loop" else tmp_path / "gone")
    out = tmp_path / "out"
    commands = {
        "hub convert SOURCE": lambda: hub_main(["convert", "--model", "rmt_t", str(path), str(out)]),
        "hub convert --results": lambda: hub_main(
            ["convert", "--model", "rmt_t", str(report_file), str(out), "--results", str(path)]
        ),
        "hub publish": lambda: hub_main(["publish", str(path), "--dry-run"]),
        "hub push-results": lambda: hub_main(["push-results", str(path), "--repo", "me/results", "--dry-run"]),
        "bench.py report": lambda: bench_cli.main(["report", str(path)]),
    }
    for name, command in commands.items():
        assert command() == policy.EXIT_USAGE, name
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and repr(str(path)) in err, (name, err)
    assert not out.exists()


def test_stopped_is_128_plus_the_signal():
    assert policy.exit_interrupted(2) == 130 and policy.exit_interrupted(15) == 143


def test_hub_help_describes_the_whole_tool():
    """The description is the docstring's first paragraph, not its first line cut mid-sentence."""
    from hub.__main__ import _parser  # the module under test's own parser

    text = " ".join(_parser().format_help().split())
    assert "get RMT's official weights onto the Hub and back, and benchmark results up as a dataset repo." in text
