"""`python -m zoo [list [PATTERN] | info NAME]`: the zoo's models, their sizes and where their weights live."""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from tabulate import tabulate

import zoo


def _table(pattern: str) -> str:
    rows = []
    for name in zoo.list_models(pattern):
        i = zoo.info(name)
        rows.append([
            name, i.family, f"{zoo.param_count(name) / 1e6:.2f}", i.paper_gflops, i.paper_top1,
            "x".join(map(str, i.input_size[1:])), i.hf_hub_id,
        ])  # fmt: skip
    headers = ["model", "family", "params (M, counted)", "GFLOPs (paper)", "top-1 (paper)", "input", "weights (Hub)"]
    return tabulate(rows, headers=headers, tablefmt="github")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m zoo", description=__doc__)
    sub = ap.add_subparsers(dest="cmd")
    sub.add_parser("list", help="table of the zoo's models").add_argument("pattern", nargs="?", default="*")
    sub.add_parser("info", help="one model's metadata").add_argument("name")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "info":
            for key, value in asdict(zoo.info(args.name)).items():
                print(f"{key}: {value}")
        else:
            print(_table(getattr(args, "pattern", "*")))
    except zoo.UnknownModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
