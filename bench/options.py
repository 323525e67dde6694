"""Options of an axis's entries (a backend's, a launcher's), each field declaring its own command-line flag.

A field's metadata, made by `option(...)`, names the flag and its help; the CLI adds every declared flag under a
destination of its own and reads the values back, so adding an option is one field in one place.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["NoOptions", "option", "add_flags", "given", "set_given", "flag_of"]


@dataclass(frozen=True)
class NoOptions:
    """The Options of an entry that has none."""


def option(flag: str, help: str, **argparse_kwargs: Any) -> dict[str, Any]:
    """Field metadata declaring an option's command-line flag (argparse keywords such as type and choices)."""
    return {"flag": flag, "help": help, **argparse_kwargs}


def _dest(owner: str, name: str) -> str:
    return f"option_{owner}_{name}"


def add_flags(parser: argparse.ArgumentParser, owner: str, options: type, sweep: bool) -> None:
    """Add the flags `options`' fields declare; with `sweep`, each takes several values (a grid axis)."""
    for f in dataclasses.fields(options):
        meta = dict(f.metadata)
        flag, help_text = meta.pop("flag"), meta.pop("help")
        parser.add_argument(
            flag,
            dest=_dest(owner, f.name),
            metavar=f.name.upper(),
            help=f"{help_text} (default {f.default})",
            **({"nargs": "+"} if sweep else {}),
            **meta,
        )


def given(args: argparse.Namespace, owner: str, options: type) -> dict[str, Any]:
    """The flag values given on the command line for `owner`'s options, by field name (absent when not given)."""
    found = {f.name: getattr(args, _dest(owner, f.name), None) for f in dataclasses.fields(options)}
    return {k: v for k, v in found.items() if v is not None}


def set_given(args: argparse.Namespace, owner: str, name: str, value: Any) -> None:
    """Set `owner`'s option `name` as its flag would (another flag that means the same, such as timm's)."""
    setattr(args, _dest(owner, name), value)


def flag_of(options: type, name: str) -> str:
    """The command-line flag of field `name`, for error sentences."""
    return next(f.metadata["flag"] for f in dataclasses.fields(options) if f.name == name)
