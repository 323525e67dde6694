"""ARCHITECTURE.md is true where a test can check it: every file its "where each kind of change goes" names exists,
every registry it names is defined in that file and nowhere else, every class it names is defined in that file; its
map names every module; each test module is named for a module or a property it lists, and imports no other."""

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


def _section(title: str) -> str:
    return (REPO / "ARCHITECTURE.md").read_text().split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _map() -> dict[str, str]:
    """The map's block of each package: its line and the indented lines under it."""
    block = (REPO / "ARCHITECTURE.md").read_text().split("```\n", 2)[1]
    blocks: dict[str, str] = {}
    for line in block.splitlines():
        head = re.match(r"(\w+)/\s", line)
        if head:
            package = head.group(1)
        blocks[package] = blocks.get(package, "") + line[8:] + "\n"
    return blocks


def test_the_map_names_every_module_of_each_package():
    blocks = _map()
    assert set(blocks) == {"common", "zoo", "bench", "hub"}
    for package, text in blocks.items():
        for path in sorted((REPO / package).glob("*.py")):
            if path.stem != "__init__":
                assert re.search(rf"(?<![\w.]){re.escape(path.stem)}\b", text), f"the map omits {package}/{path.name}"


def test_each_test_module_is_named_for_a_module_or_a_named_property():
    text = " ".join(_section("Tests").split())
    properties = set(re.findall(r"`(\w+)`", text.split("one of these:", 1)[1].split(". ", 1)[0]))
    modules = {p.stem.lstrip("_") for pkg in PACKAGES for p in (REPO / pkg).glob("*.py")} | set(PACKAGES)
    for path in sorted((REPO / "tests").glob("test_*.py")):
        name = path.stem.removeprefix("test_")
        prefixed = name.partition("_")
        named = prefixed[0] in ("hub", "bench") and (REPO / prefixed[0] / f"{prefixed[2]}.py").is_file()
        assert name in modules or named or name in properties, f"{path.name} names no module and no listed property"


def test_no_test_module_imports_another_or_conftest():
    for path in sorted((REPO / "tests").glob("*.py")):
        imports = re.findall(r"^\s*(?:from|import)\s+([\w.]+)", path.read_text(), re.M)
        assert not [m for m in imports if m.split(".")[0] in ("conftest", "tests") or m.startswith("test_")], path.name
