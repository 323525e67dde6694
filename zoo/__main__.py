"""`python -m zoo [list [PATTERN] | info NAME]`: the zoo's models, their sizes and where their weights live."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict

from tabulate import tabulate

import zoo

# The exit status of a process killed by SIGPIPE, as a shell reports it: what `yes | head -1` leaves behind.
EXIT_BROKEN_PIPE = 128 + 13


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
                i.hf_hub_id,
            ]
        )
    headers = ["model", "family", "params (M, counted)", "GFLOPs (paper)", "top-1 (paper)", "input", "weights (Hub)"]
    return tabulate(rows, headers=headers, tablefmt="github")


def _write(text: str) -> int:
    """Print `text`; a reader that went away ends quietly, as Unix tools do, and any other write error in one line."""
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except OSError as e:
        # What is left cannot be written either: stdout goes to /dev/null, so the interpreter's last flush is silent.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if isinstance(e, BrokenPipeError):
            return EXIT_BROKEN_PIPE
        print(f"error: cannot write to standard output ({e.strerror or e}).", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m zoo", description=__doc__)
    sub = ap.add_subparsers(dest="cmd")
    sub.add_parser("list", help="table of the zoo's models").add_argument("pattern", nargs="?", default="*")
    sub.add_parser("info", help="one model's metadata").add_argument("name")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "info":
            return _write("\n".join(f"{key}: {value}" for key, value in asdict(zoo.info(args.name)).items()))
        pattern = getattr(args, "pattern", "*")
        names = zoo.list_models(pattern)
        if not names:
            print(f"error: no model of the zoo matches {pattern!r}; `python -m zoo list` shows all.", file=sys.stderr)
            return 2
        return _write(_table(names))
    except zoo.UnknownModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
