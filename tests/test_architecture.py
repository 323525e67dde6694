"""ARCHITECTURE.md's "where each kind of change goes" is true: every file it names exists, every registry it names is
defined in that file and nowhere else in the packages, and every class it names is defined in that file."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "zoo", "bench", "hub", "benchmarks")


def _table() -> list[tuple[str, str]]:
    text = (REPO / "ARCHITECTURE.md").read_text()
    section = text.split("## Where each kind of change goes", 1)[1].split("\n\n", 2)[1]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| ")]
    return [(change.strip(), place.strip()) for change, place, _ in rows[1:]]


def _defined(name: str, source: str, indented: bool = False) -> bool:
    """`name` is a class or an assignment in `source` (at module level, or in a class body with `indented`)."""
    indent = r"[ \t]*" if indented else ""
    return re.search(rf"^{indent}(class {name}\b|{name}\s*(:[^=\n]*)?=)", source, re.M) is not None


def test_the_table_names_places_that_exist_and_registries_defined_once():
    rows = _table()
    assert len(rows) >= 8 and rows[0][0].startswith("a precision")
    sources = {p: p.read_text() for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    for change, place in rows:
        files = [REPO / f for f in re.findall(r"`((?:common|zoo|bench|hub|benchmarks)/[\w/]+\.py)`", place)]
        names = [n for n in re.findall(r"`([A-Za-z_]+)`", place)]
        assert files or "<family>" in place, change
        for file in files:
            assert file.is_file(), (change, file)
        for name in names:
            if name.isupper():  # a registry (PRECISIONS, BACKENDS, ...): defined in the named file only
                where = [p for p, src in sources.items() if _defined(name, src)]
                assert len(where) == 1 and where[0] in files, (change, name, where)
            elif name[0].isupper():  # a class (or a class's attribute) the change extends, defined in the file
                assert any(_defined(name, f.read_text(), indented=True) for f in files), (change, name)
