"""The wheel: common, zoo, hub and bench and the console scripts, not benchmarks/."""

from __future__ import annotations

from pathlib import Path


def test_the_wheel_ships_common_zoo_hub_and_bench_and_the_console_scripts():
    import importlib
    import tomllib

    import setuptools

    repo = Path(__file__).resolve().parents[1]
    config = tomllib.loads((repo / "pyproject.toml").read_text())
    packages = setuptools.find_packages(str(repo), include=config["tool"]["setuptools"]["packages"]["find"]["include"])
    assert {p.split(".")[0] for p in packages} == {
        "common",
        "zoo",
        "hub",
        "bench",
    }  # not benchmarks/ (matched by a bare "bench*")
    scripts = config["project"]["scripts"]
    assert set(scripts) == {"rmt-bench", "rmt-hub"}
    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function))
    assert "onnxruntime" in " ".join(config["project"]["optional-dependencies"]["onnx"])
