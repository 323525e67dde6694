"""One formatter and linter for the whole repository: ruff, configured in pyproject.toml (line length 120)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (it comes with the test extra)")
    return subprocess.run([ruff, *args], cwd=REPO, capture_output=True, text=True)


@pytest.mark.e2e
def test_ruff_lint():
    proc = _ruff("check", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.e2e
def test_ruff_format():
    proc = _ruff("format", "--check", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr
