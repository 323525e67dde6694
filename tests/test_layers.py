"""The layers, enforced by import-linter's contracts in pyproject.toml: common <- zoo <- bench <- hub and benchmarks,
hub and bench using only the names zoo exports, common importing nothing of the project; and each contract catches
the import it names, planted in a copy of the tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


PACKAGES = ("common", "zoo", "bench", "hub", "benchmarks")
LAYERS = "common <- zoo <- bench <- hub, benchmarks"
ZOO_EXPORTS = "hub and bench use only what zoo exports"
COMMON = "common imports nothing of the project"


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    lint = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(lint).exists():
        pytest.skip("import-linter is not installed (it comes with the test extra)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    return subprocess.run([lint, "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.e2e
def test_import_contracts_are_kept():
    proc = _lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 kept, 0 broken" in proc.stdout


@pytest.mark.e2e
@pytest.mark.parametrize(
    "module, planted, broken",
    [
        (None, None, None),  # the copy itself passes: a failure below is the planted line's
        ("hub/card.py", "from zoo.__main__ import main", ZOO_EXPORTS),  # a zoo module no list ever named
        ("hub/convert.py", "from zoo._hub import fetch_weights", ZOO_EXPORTS),
        ("bench/worker.py", "import zoo.rmt", ZOO_EXPORTS),
        ("zoo/_registry.py", "import bench.spec", LAYERS),  # upward
        ("bench/results.py", "from hub import card", LAYERS),
        ("common/cli.py", "import zoo", COMMON),
        ("common/provenance.py", "from bench import env", COMMON),
    ],
)
def test_each_contract_fails_on_the_import_it_forbids(tmp_path, module, planted, broken):
    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    if planted:
        with open(tmp_path / module, "a") as f:
            f.write(f"\n{planted}  # planted by tests/test_layers.py\n")
    proc = _lint_imports(tmp_path)
    if broken is None:
        assert proc.returncode == 0 and "3 kept, 0 broken" in proc.stdout, proc.stdout + proc.stderr
    else:
        assert proc.returncode != 0 and f"{broken} BROKEN" in proc.stdout, proc.stdout + proc.stderr


def test_zoo_exports_what_hub_uses():
    import zoo

    for name in ("check_fits", "CLIENT_ERRORS", "hub_repo_id", "fetch_weights", "timm_checkpoint_filter"):
        assert name in zoo.__all__ and getattr(zoo, name) is not None
    assert zoo.RMT_HUB_ORG_ENV == zoo.info("rmt_t").hub_org_env  # the variable the registry names
