"""Where a number or a converted checkpoint came from: this checkout and its commit."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["REPO_ROOT", "command_line", "git_commit"]

REPO_ROOT = Path(__file__).resolve().parents[1]


def command_line(cmd: list[str]) -> str | None:
    """First line of a helper command's output, or None when it is missing or fails."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=REPO_ROOT)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def git_commit() -> str | None:
    """HEAD of this repository, suffixed '-dirty' when the tree has uncommitted changes; without a git checkout,
    $RMT_ZOO_COMMIT (benchmarks/gpu_run.sh sets it from the carried wheel's build commit)."""
    head = command_line(["git", "rev-parse", "HEAD"])
    if head is None:  # a copy without .git (the lent GPU machine): the commit its wheel was built from, if given
        return os.environ.get("RMT_ZOO_COMMIT")
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=REPO_ROOT
    )
    return head + ("-dirty" if dirty.stdout.strip() else "")
