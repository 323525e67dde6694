"""`python -m zoo [list [PATTERN] | info NAME]`: the zoo's models, their sizes and where their weights live."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from tabulate import tabulate

import zoo
from common.cli import EXIT_OK, OneLineParser, UsageError, emit, run_cli
from zoo._hub import published_where


def _table(names: list[str]) -> str:
    rows = []
    for name in names:
        i = zoo.info(name)
        rows.append(
            [
                name,
                i.family,
                f"{zoo.param_count(name) / 1e6:.2f}",
                i.paper_gflops,
                i.paper_top1,
                "x".join(map(str, i.input_size[1:])),
                published_where(i),
            ]
        )
    headers = ["model", "family", "params (M, counted)", "GFLOPs (paper)", "top-1 (paper)", "input", "weights today"]
    return tabulate(rows, headers=headers, tablefmt="github")


def _run(args: argparse.Namespace) -> int:
    try:
        if args.cmd == "info":
            emit("\n".join(f"{key}: {value}" for key, value in asdict(zoo.info(args.name)).items()) + "\n")
            return EXIT_OK
        pattern = getattr(args, "pattern", "*")
        names = zoo.list_models(pattern)
        if not names:
            raise UsageError(f"no model of the zoo matches {pattern!r}; `python -m zoo list` shows all.")
        emit(_table(names) + "\n")
        return EXIT_OK
    except zoo.UnknownModelError as e:  # a name the zoo does not know is a bad argument
        raise UsageError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    """Exit codes as for every command line of the project (common/cli.py): 2 bad arguments, 1 output that could not
    be written, 141 a reader that went away."""
    ap = OneLineParser(prog="python -m zoo", description=__doc__)
    sub = ap.add_subparsers(dest="cmd")
    sub.add_parser("list", help="table of the zoo's models").add_argument("pattern", nargs="?", default="*")
    sub.add_parser("info", help="one model's metadata").add_argument("name")
    return run_cli(lambda: _run(ap.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
