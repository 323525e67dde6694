"""README.md and docs/*.md: every relative link resolves (anchors included), and every `python bench.py ...` or
`python -m ...` command they show parses, as its own command line's argparse parser reads it (nothing runs)."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
OURS = ("zoo", "hub", "bench", "benchmarks")  # `python -m` modules of this repository
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", re.M | re.S)
# A command line of ours: env assignments, python (or torchrun's options), then bench.py or -m MODULE, arguments.
COMMAND = re.compile(r"^(?:[A-Z_]+=\S+ )*(?:\S*python3? |torchrun .*?)(bench\.py|-m [\w.]+)( .*)?$")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    text = FENCE.sub("", doc.read_text())
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", text, re.M)}


def test_every_relative_link_resolves():
    checked = 0
    for doc in DOCS:
        for target in LINK.findall(doc.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (doc.parent / path).resolve() if path else doc
            assert resolved.exists(), f"{doc.name}: link {target} resolves to nothing"
            if anchor:
                assert anchor in _anchors(resolved), f"{doc.name}: {target} names no heading of {resolved.name}"
            checked += 1
    assert checked >= 10  # the README links into docs/


def _commands() -> list[tuple[str, str]]:
    """(doc, command) for every command of ours a code block shows (continued lines joined), and every one inline
    code shows with its arguments (a bare `python -m hub convert` in prose names a command, it does not give one)."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        lines = [ln.strip() for block in FENCE.findall(text) for ln in block.replace("\\\n", " ").splitlines()]
        inline = [span for span in re.findall(r"`([^`\n]+)`", FENCE.sub("", text)) if len(span.split()) > 4]
        for line in lines + inline:
            match = COMMAND.match(line)
            if match and (match.group(1) == "bench.py" or match.group(1).split()[1].split(".")[0] in OURS):
                found.append((doc.name, f"{match.group(1)}{match.group(2) or ''}"))
    return found


class _Parsed(BaseException):
    """Raised once a command's arguments have parsed: nothing after parsing runs."""


@pytest.fixture
def parse_only(monkeypatch):
    original = argparse.ArgumentParser.parse_args

    def parse(self, args=None, namespace=None):
        original(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse)


def test_the_docs_show_commands():
    entries = {cmd.split(" ")[0] if cmd.startswith("bench.py") else " ".join(cmd.split()[:2]) for _, cmd in _commands()}
    assert {"bench.py", "-m zoo", "-m hub", "-m bench.suite", "-m bench.accuracy"} <= entries, entries


@pytest.mark.parametrize("doc, command", _commands())
def test_every_command_shown_parses(doc, command, parse_only, monkeypatch):
    words = shlex.split(command, comments=True)
    for i, word in enumerate(words):  # a pipe or redirection ends the command
        if word in ("|", ">", ">>", "&&", ";", "2>&1"):
            words = words[:i]
            break
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), pytest.raises(_Parsed):
        if words[0] == "bench.py":
            monkeypatch.setattr(sys, "argv", words)
            runpy.run_path(str(REPO / "bench.py"), run_name="__main__")
        else:
            monkeypatch.setattr(sys, "argv", [words[1], *words[2:]])
            runpy.run_module(words[1], run_name="__main__", alter_sys=False)
    assert err.getvalue() == "", (doc, command, err.getvalue())
