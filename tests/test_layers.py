"""The layers, enforced by import-linter's contracts in pyproject.toml: zoo <- bench <- hub and benchmarks, and hub
using only the names zoo exports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_import_contracts_are_kept():
    lint = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(lint).exists():
        pytest.skip("import-linter is not installed (it comes with the test extra)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([lint, "--no-cache"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 kept, 0 broken" in proc.stdout


def test_zoo_exports_what_hub_uses():
    import zoo

    for name in ("check_fits", "CLIENT_ERRORS", "hub_repo_id", "fetch_weights", "timm_checkpoint_filter"):
        assert name in zoo.__all__ and getattr(zoo, name) is not None
    assert zoo.RMT_HUB_ORG_ENV == zoo.info("rmt_t").hub_org_env  # the variable the registry names
