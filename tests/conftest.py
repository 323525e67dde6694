"""Shared helpers: the official fixtures are carried in tests/fixtures (see its README), so a clone needs nothing
beside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """The fixtures' criterion: max|ours - ref| / max|ref| (must be <= 1e-4)."""
    return ((ours - ref).abs().max() / ref.abs().max()).item()


class Fixture:
    """One official-code fixture: its constructor config, official state dict, input and outputs."""

    def __init__(self, name: str):
        meta = json.loads((FIXTURES / "index.json").read_text())[name]
        tensors = load_file(str(FIXTURES / f"{name}.safetensors"))
        self.name = name
        self.config: dict = meta["config"]
        self.state_dict = {k[len("state_dict.") :]: v for k, v in tensors.items() if k.startswith("state_dict.")}
        self.input = tensors["input"]
        self.logits = tensors["logits"]
        self.features = [tensors[f"features.{i}"] for i in range(len(meta["feature_shapes"]))]


@pytest.fixture(scope="session")
def official_shapes() -> dict[str, dict[str, list[int]]]:
    return json.loads((FIXTURES / "official_state_dict_shapes.json").read_text())


@pytest.fixture(scope="session")
def fixture():
    cache: dict[str, Fixture] = {}

    def get(name: str) -> Fixture:
        if name not in cache:
            cache[name] = Fixture(name)
        return cache[name]

    return get
