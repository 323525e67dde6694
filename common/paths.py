"""Output paths, checked before anything is measured or written, so a bad path costs nothing and loses nothing, and
written as if the output folder were hostile; input paths, checked up front too (`check_input_path`).

Every CLI of the project (bench.py, bench.suite, bench.accuracy, hub convert) checks its outputs here: that each can
be written without blocking (a FIFO), without failing late (a dangling link, a device such as /dev/null), and that no
output is also an input or another output (a plot written over the results it was drawn from).

Every write goes through `append_bytes` (results rows) or `write_atomic` (whole files), which never follow a link
planted in the folder meanwhile and never touch bytes they did not write: a full disk or a file-size limit costs the
one write that failed and nothing before it (`WriteError`, one sentence).
"""

from __future__ import annotations

import errno
import fcntl
import os
import resource
import signal
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Mapping

from .cli import UsageError

__all__ = [
    "InputPathError",
    "check_input_path",
    "OutputPathError",
    "WriteError",
    "check_output_path",
    "check_distinct",
    "append_bytes",
    "write_atomic",
    "make_own_folder",
    "ignore_file_size_signal",
    "current_umask",
    "TEMP_MARK",
]

PathLike = str | os.PathLike


class OutputPathError(UsageError):
    """An output path that cannot be written: a usage error (exit 2), said in one sentence."""


class InputPathError(UsageError):
    """An input path that is missing or cannot be read: a usage error (exit 2), said in one sentence."""


class WriteError(OSError):
    """A write that failed (a full disk, a file-size limit, a link planted in the folder); the message is one
    sentence, and nothing written before it was touched. `rows` holds what a run had kept when it happened."""

    def __init__(self, message: str, rows: list | None = None):
        super().__init__(message)
        self.message, self.rows = message, rows

    def __str__(self) -> str:
        return self.message


# Temporary files are named `.NAME.<TEMP_MARK><random>`: unique, created exclusively, and recognisable as ours.
TEMP_MARK = "partial-"


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
    """An existing results file must be text: appending rows to a binary file would corrupt it further. Judged by
    its first line, which a results file's writer always finished: damage later on (a torn row, the NUL bytes a
    crash leaves) is what readers skip, not a reason to refuse the file."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    first = head.split(b"\n", 1)[0].strip(b"\0")
    binary = any(byte < 0x20 and byte not in b"\t\r" for byte in first)  # JSON text holds no raw control bytes
    try:
        first.decode("utf-8")
    except UnicodeDecodeError as exc:
        binary |= exc.start < len(first) - 4 or b"\n" in head  # not merely a character cut at the 64 KiB boundary
    if binary:
        raise OutputPathError(f"{what} {str(path)!r} is a binary file, not a JSON-lines results file.")


def check_output_path(path: PathLike, what: str, text_file: bool = False, folder: bool = False) -> None:
    """Raise OutputPathError unless `path` can be written (created if missing), without opening anything that
    could block.

    `text_file`: an existing file must be text (a results file appended to); `folder`: `path` is a folder to fill.
    """
    path = Path(path)
    try:  # what the OS refuses for the name itself (too long, a loop in the folders above) is one sentence too
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as exc:
        raise OutputPathError(f"{what} {str(path)!r} cannot be used ({_reason(exc)}).") from None
    if path.is_symlink() and not path.exists():
        raise OutputPathError(
            f"{what} {str(path)!r} is a symbolic link to {os.readlink(path)!r}, which does not exist."
        )
    if path.is_symlink() and not folder:
        raise OutputPathError(
            f"{what} {str(path)!r} is a symbolic link to {os.readlink(path)!r}, and outputs are never written through "
            f"links; give the file itself."
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
    try:  # access() says yes to root everywhere, also in /proc and /sys, which take no new files: try one
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.{TEMP_MARK}", dir=parent)
    except OSError as exc:
        raise OutputPathError(
            f"{what} {str(path)!r} cannot be created: the folder {str(parent)!r} takes no new files ({exc.strerror})."
        ) from None
    os.close(fd)
    os.unlink(probe)


def check_input_path(path: PathLike, what: str, folder: bool = False) -> None:
    """Raise InputPathError unless `path` is a regular file (with `folder`, a folder) this process can open for
    reading; nothing but a file or folder is opened (a FIFO would block), and nothing is read."""
    shown = str(path)
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode) if folder else stat.S_ISREG(mode):
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
    except FileNotFoundError:
        link = f" is a symbolic link to {os.readlink(path)!r}, which" if os.path.islink(path) else ""
        raise InputPathError(f"{what} {shown!r}{link} does not exist.") from None
    except OSError as exc:  # unreadable, a link loop, a file where a folder should be on the way
        raise InputPathError(f"{what} {shown!r} cannot be read ({exc.strerror or exc}).") from None
    if not (stat.S_ISDIR(mode) if folder else stat.S_ISREG(mode)):
        kind = "a folder" if stat.S_ISDIR(mode) else "a file" if stat.S_ISREG(mode) else _kind(mode)
        raise InputPathError(f"{what} {shown!r} is {kind}; give {'a folder' if folder else 'a file'}.")


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


def ignore_file_size_signal() -> None:
    """A write past `ulimit -f` raises SIGXFSZ, which kills the process by default; ignored, the write fails with
    EFBIG instead and is reported in one sentence like a full disk. Children inherit the ignored signal."""
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _reason(exc: OSError) -> str:
    if exc.errno == errno.EFBIG:
        return "the file-size limit (ulimit -f) was reached"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full" if exc.errno == errno.ENOSPC else "the disk quota is used up"
    if exc.errno == errno.ELOOP:
        return "it is a symbolic link, and outputs are never written through links"
    if exc.errno == errno.ENAMETOOLONG:
        return "the name is longer than the file system allows"
    return exc.strerror or str(exc)


def append_bytes(path: str | Path, data: bytes, separate: bool = True) -> None:
    """Append `data` (one or more whole lines) to `path` with one O_APPEND write, then force it to disk.

    Never follows a link and never opens anything but a regular file (a FIFO would block). Appenders of this
    project hold an exclusive lock on the file around the write, so `separate` (start on a new line when the file
    ends in a torn line) sees the true tail. A write that fails part-way (disk full, file-size limit) leaves a torn
    tail of its own: exactly those bytes are cut back off, and only while they are still the file's tail, so no
    other writer's row is ever touched. Raises WriteError (one sentence).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        raise WriteError(f"Could not open {path} to append a row ({_reason(exc)}).") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise WriteError(f"Could not append to {path}: it is not a regular file.")
        fcntl.flock(fd, fcntl.LOCK_EX)
        start = os.fstat(fd).st_size
        if separate and start and os.pread(fd, 1, start - 1) != b"\n":
            data = b"\n" + data
        try:
            written = os.write(fd, data)
            if written != len(data):  # what the next write would raise: the file-size limit or a full disk
                limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
                full = limit != resource.RLIM_INFINITY and start + written >= limit
                raise OSError(errno.EFBIG if full else errno.ENOSPC, "short write")
        except OSError as exc:
            _cut_own_tail(fd, start, data)
            reason = _reason(exc)
            raise WriteError(
                f"Could not append a row to {path} ({reason}); the rows written before it are kept."
            ) from None
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        try:
            os.fsync(fd)
        except OSError as exc:
            raise WriteError(f"Could not force a row of {path} to disk ({_reason(exc)}).") from None
    finally:
        os.close(fd)


def _cut_own_tail(fd: int, start: int, data: bytes) -> None:
    """After a failed append that began at `start`: cut the file back to `start` only if everything after it is a
    prefix of `data` (bytes this write put there), so a row another process appended is never removed."""
    end = os.fstat(fd).st_size
    if end <= start or os.pread(fd, end - start, start) != data[: end - start]:
        return
    try:
        os.ftruncate(fd, start)
    except OSError:
        pass  # the torn line stays; readers skip it, and the next append starts on a new line


def make_own_folder(path: str | Path) -> Path:
    """Create `path` as a new folder (mode 0700) for this run's files, inside its parent (created if missing):
    never through a link planted at either, never in a parent another user owns, never one that exists already
    (another run's, or one planted to catch our files). Raises WriteError (one sentence); nothing is removed."""
    path = Path(path)
    parent = path.parent
    try:
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENOTDIR and parent.is_symlink():
            exc = OSError(errno.ELOOP, "link")
        raise WriteError(f"Could not use {parent} as the folder of this run's files ({_reason(exc)}).") from None
    try:
        if os.fstat(fd).st_uid != os.geteuid():
            raise WriteError(f"Could not use {parent} as the folder of this run's files: another user owns it.")
        os.mkdir(path.name, 0o700, dir_fd=fd)
    except FileExistsError:
        raise WriteError(f"Could not create {path}: something of that name is there already.") from None
    except OSError as exc:
        raise WriteError(f"Could not create {path} ({_reason(exc)}).") from None
    finally:
        os.close(fd)
    return path


def current_umask() -> int:
    """The process's umask, read without changing it (os.umask would, for a moment, for every thread)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def write_atomic(path: str | Path, content: bytes | str | Callable[[BinaryIO], object]) -> None:
    """Write a whole file: into a temporary file created exclusively beside `path` (unique name, never a link), then
    renamed over `path`. A link planted at `path` is replaced, not followed; a failure leaves `path` as it was and
    no temporary file. `content` is the bytes (or text, UTF-8) or a callback that writes into the open file.
    Raises WriteError (one sentence)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.{TEMP_MARK}", dir=path.parent)
    except OSError as exc:
        raise WriteError(f"Could not write {path} ({_reason(exc)}).") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(fd, 0o666 & ~current_umask())  # what a plain open() would give, not mkstemp's 0600
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except OSError as exc:
        _remove(temp)
        raise WriteError(f"Could not write {path} ({_reason(exc)}); nothing was left half-written.") from None
    except BaseException:
        _remove(temp)
        raise


def _remove(temp: str) -> None:
    try:
        os.unlink(temp)
    except FileNotFoundError:  # someone else removed it from the folder already
        pass
