"""Output paths, checked before anything is measured or written, so a bad path costs nothing and loses nothing.

Every CLI of the project (bench.py, bench.suite, hub convert) checks its outputs here: that each can be written
without blocking (a FIFO), without failing late (a dangling link, a device such as /dev/null), and that no output
is also an input or another output (a plot written over the results it was drawn from).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Mapping

__all__ = ["OutputPathError", "check_output_path", "check_distinct"]

PathLike = str | os.PathLike


class OutputPathError(ValueError):
    """An output path that cannot be written; the message is one sentence."""


def _kind(mode: int) -> str:
    """What a path that is neither a regular file nor a folder is, for the error sentence."""
    for test, name in (
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _check_text(path: Path, what: str) -> None:
    """An existing results file must be text: appending rows to a binary file would corrupt it further."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    binary = b"\0" in head
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        binary |= exc.start < len(head) - 4  # not merely a character cut at the 64 KiB boundary
    if binary:
        raise OutputPathError(f"{what} {str(path)!r} is a binary file, not a JSON-lines results file.")


def check_output_path(path: PathLike, what: str, text_file: bool = False, folder: bool = False) -> None:
    """Raise OutputPathError unless `path` can be written (created if missing), without opening anything that
    could block.

    `text_file`: an existing file must be text (a results file appended to); `folder`: `path` is a folder to fill.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise OutputPathError(
            f"{what} {str(path)!r} is a symbolic link to {os.readlink(path)!r}, which does not exist."
        )
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):  # missing, or under a file: the parent walk below says which
        mode = None
    except OSError as exc:  # a symlink loop, a path component that is a file, ...
        raise OutputPathError(f"{what} {str(path)!r} cannot be used ({exc.strerror}).") from None
    if mode is not None:
        if not (stat.S_ISDIR(mode) if folder else stat.S_ISREG(mode)):
            kind = "a folder" if stat.S_ISDIR(mode) else "a file" if stat.S_ISREG(mode) else _kind(mode)
            raise OutputPathError(
                f"{what} {str(path)!r} is {kind}; give {'a folder' if folder else 'a regular file path'}."
            )
        if not os.access(path, os.W_OK):
            raise OutputPathError(f"{what} {str(path)!r} is not writable.")
        if text_file:
            _check_text(path, what)
        return
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(f"{what} {str(path)!r} lies under {str(parent)!r}, which is a file, not a folder.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what} {str(path)!r} cannot be created: the folder {str(parent)!r} is not writable.")


def _same(a: Path, b: Path) -> bool:
    """Same file by name after resolving links, or, when both exist, by inode (hard links)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_distinct(outputs: Mapping[str, PathLike | None], inputs: Mapping[str, PathLike | None] | None = None) -> None:
    """Refuse an output that is also an input or another output, any path inside a folder that is an output, and
    an output inside a folder that is an input.

    Keys name the paths as the user gave them ("--out", "--plot", "RESULTS"); None values are skipped.
    """
    outs = [(k, Path(v)) for k, v in outputs.items() if v is not None]
    ins = [(k, Path(v)) for k, v in (inputs or {}).items() if v is not None]
    for i, (out_name, out) in enumerate(outs):
        for name, other in [*outs[:i], *outs[i + 1 :], *ins]:
            role = "an input" if (name, other) in ins else "another output"
            if _same(out, other):
                raise OutputPathError(
                    f"{out_name} and {name} are the same file {str(out)!r}, so writing {out_name} would destroy "
                    f"{role}; give each its own path."
                )
            if out.is_dir() and other.resolve().is_relative_to(out.resolve()):
                raise OutputPathError(
                    f"{name} {str(other)!r} lies inside {out_name} {str(out)!r}, which is written over; choose a path "
                    f"outside it."
                )
            if role == "an input" and other.is_dir() and out.resolve().is_relative_to(other.resolve()):
                raise OutputPathError(
                    f"{out_name} {str(out)!r} lies inside the input folder {name} {str(other)!r}; write it elsewhere."
                )
