"""What the three command lines (`python -m zoo`, `bench.py` and its tools, `python -m hub`) share: one exit-code
policy and one writer of standard output. It lives in the lowest layer so that each of them can use it.

Exit codes: 0 done; 1 a failure, said in one sentence on stderr (a write that failed, a download or upload refused,
a closed standard output); 2 bad arguments, refused in one sentence before anything ran; 128 + the signal when
stopped by one (130 Ctrl-C, 143 SIGTERM; what was finished is kept); 141 when the reader of standard output went
away (`| head -1`), as for any Unix tool killed by SIGPIPE. bench.py adds 3 and 4 for rows that could not run or
failed (bench/args.py).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Callable, NoReturn

__all__ = [
    "EXIT_OK",
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "EXIT_BROKEN_PIPE",
    "exit_interrupted",
    "UsageError",
    "OneLineParser",
    "OutputError",
    "ReaderGone",
    "emit",
    "run_cli",
]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE.value


def exit_interrupted(signum: int) -> int:
    """The shell's exit status for a process stopped by `signum`: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + signum


class UsageError(Exception):
    """Bad arguments; the message is the one sentence the user sees."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one sentence (UsageError) instead of usage text."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message[0].upper() + message[1:] + ("" if message.endswith(".") else "."))


class OutputError(Exception):
    """Standard output could not be written (a full disk, a closed descriptor); the message is one sentence."""


class ReaderGone(Exception):
    """The reader of standard output went away (`| head -1`): not an error, the output simply ends."""


def emit(text: str) -> None:
    """Write to standard output: ReaderGone when the reader went away, OutputError for any other failure."""
    if sys.stdout is None:  # started with stdout closed (`>&-`): Python has no sys.stdout at all
        raise OutputError("Standard output is closed, so nothing can be printed.")
    try:
        try:
            sys.stdout.write(text)
        except UnicodeEncodeError:  # an encoding without the character (LC_ALL=C, PYTHONIOENCODING=ascii): escaped
            sys.stdout.reconfigure(errors="backslashreplace")
            sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would report the broken pipe again when it flushes stdout at exit; point stdout at nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise ReaderGone from None
    except OSError as exc:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the interpreter's last flush stays silent
        raise OutputError(f"Standard output could not be written ({exc.strerror or exc}).") from None


def run_cli(body: Callable[[], int], failures: tuple[type[BaseException], ...] = ()) -> int:
    """Run a command line's `body` under the policy above: UsageError is 2, OutputError and `failures` (each's
    message is one sentence) are 1, a reader gone is 141, Ctrl-C is 130; every message goes to stderr."""
    try:
        return body()
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ReaderGone:
        return EXIT_BROKEN_PIPE
    except (OutputError, *failures) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("\nstopped by SIGINT.", file=sys.stderr)
        return exit_interrupted(signal.SIGINT)
