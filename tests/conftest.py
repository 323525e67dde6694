"""Shared fixtures. Test modules take helpers as fixtures and never import each other or this file.

The official fixtures are carried in tests/fixtures (see its README), so a clone needs nothing beside it. Tests that
run the harness's processes, or compile or export a model, are marked `e2e` (the slow tier), and so are the larger
variants of a check marked `variants`: `pytest -m "not e2e"` is the fast tier.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def pytest_configure(config: pytest.Config) -> None:
    """Each xdist worker gets its share of the cores: torch's default of one thread per core in every worker
    oversubscribes the machine and roughly doubles the suite's time on 2 cores. Processes the tests start inherit
    the share through OMP_NUM_THREADS unless the caller set it."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A check marked `variants` runs on each family's smallest variant (and the variants the marker names) in the
    fast tier, and on the others in the slow tier (`e2e`): the code is the same, only widths and depths change."""
    import zoo

    smallest = {}
    for name in zoo.comparison_models():  # smallest first within each family
        smallest.setdefault(zoo.info(name).family, name)
    for item in items:
        marker = item.get_closest_marker("variants")
        if marker is None:
            continue
        name = item.callspec.params["name"]
        if name not in {*smallest.values(), *marker.args}:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


# ------------------------------------------------------------------------------------- official-code fixtures


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """The fixtures' criterion: max|ours - ref| / max|ref| (must be <= 1e-4)."""
    return ((ours - ref).abs().max() / ref.abs().max()).item()


@pytest.fixture(scope="session")
def rel_err() -> Callable[[torch.Tensor, torch.Tensor], float]:
    return _rel_err


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


# ------------------------------------------------------------------------------------- small models


@pytest.fixture(scope="session")
def rmt_small() -> dict[str, Any]:
    """An RMT config with every kind of stage (chunkwise and whole-image, with and without layer scale), tiny."""
    return dict(
        embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(2, 2, 4, 4), mlp_ratios=(3, 3, 3, 3),
        chunkwise_recurrents=(True, True, False, False), layerscales=(False, True, False, True), projection=96,
        num_classes=10,
    )  # fmt: skip


def _dcn_inputs(n=2, h=3, w=5, groups=2, group_channels=3, offsets=1.5, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(n, h, w, groups * group_channels, generator=gen, dtype=dtype)
    offset = torch.randn(n, h, w, groups * 18, generator=gen, dtype=dtype) * offsets  # reaches past the border
    mask = torch.randn(n, h, w, groups * 9, generator=gen, dtype=dtype)
    return values, offset, mask


@pytest.fixture(scope="session")
def dcn_inputs() -> Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """DCNv3 inputs (values, offsets, mask) in channels-last layout whose offsets reach past the border."""
    return _dcn_inputs


@pytest.fixture(scope="session")
def internimage_with_offsets() -> Callable[[], torch.nn.Module]:
    """A small InternImage whose DCNv3 layers sample a few pixels away (not the zero initialisation's grid)."""

    def build() -> torch.nn.Module:
        import zoo.internimage as ii

        torch.manual_seed(0)
        model = ii.InternImage(channels=16, depths=(1, 1, 2, 1), groups=(2, 2, 4, 8), offset_scale=2.0, num_classes=7)
        for m in model.modules():
            if isinstance(m, ii.DCNv3):
                torch.nn.init.normal_(m.offset.weight, std=0.5)
                torch.nn.init.normal_(m.mask.weight, std=0.5)
        return model

    return build


# ------------------------------------------------------------------------------------- the harness


def _row(**kw) -> dict:
    row = {
        "model": "swin_t",
        "backend": "eager",
        "precision": "fp32",
        "batch_size": 8,
        "input_size": [224, 224],
        "device": "cpu",
        "channels_last": False,
        "features_only": False,
        "backend_options": {},
        "status": "ok",
        "reason": "",
        "params": 28_288_354,
        "gmacs": 4.509,
        "latency_ms": {"mean": 10.0, "p50": 9.0, "p90": 12.0, "p99": 15.0, "std": 1.0},
        "throughput_ips": 800.0,
        "peak_mem_mb": 900.0,
        "env": {"device_name": "Test CPU"},
    }
    row.update(kw)
    return row


@pytest.fixture(scope="session")
def make_row() -> Callable[..., dict]:
    """A measured swin_t row as the harness writes it; keywords replace or add fields."""
    return _row


@pytest.fixture(scope="session")
def make_spec() -> Callable[..., Any]:
    """A RowSpec of a CPU row at batch 2 and 8x8 pixels: make_spec(backend, precision="fp32", **fields)."""
    from bench.spec import RowSpec

    def spec(backend: str, precision: str = "fp32", **kw) -> RowSpec:
        return RowSpec(
            model="x", backend=backend, precision=precision, batch_size=2, input_size=(8, 8), device="cpu", **kw
        )

    return spec


def _make_image_folder(root: Path, per_class: int = 3) -> Path:
    """Two classes told apart by brightness: class 'a' dark, class 'b' bright."""
    for name, level in (("a", 30), ("b", 220)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((40, 48, 3), level + i, dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def make_image_folder() -> Callable[..., Path]:
    return _make_image_folder


@pytest.fixture(scope="session")
def brightness_logits() -> Callable[[torch.Tensor], torch.Tensor]:
    """Logits of a classifier that tells make_image_folder's classes apart: dark is class 0, bright class 1."""

    def logits(x: torch.Tensor) -> torch.Tensor:
        m = x.float().mean(dim=(1, 2, 3))
        return torch.stack([-m, m, torch.zeros_like(m)], dim=1)

    return logits


# Registers models that fail on purpose at batch >= 2, inside the worker process that imports it.
FAULTY_MODELS = """
import os, signal, time
import torch, torch.nn as nn
from zoo._registry import Family, ModelInfo, register_family


class Faulty(nn.Module):
    def __init__(self, fault):
        super().__init__()
        self.fault = fault
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        if self.fault == "hang":  # says where it is, then hangs like a stuck kernel
            with open(os.environ["BENCH_TEST_PIDFILE"], "w") as f:
                f.write(str(os.getpid()))
            time.sleep(600)
        if x.shape[0] >= 2:
            if self.fault == "oom":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected by the test)")
            os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does
        return self.head(self.conv(x).mean((2, 3)))


register_family(
    Family("test", "models that fail on purpose", code="", built_by="zoo"),
    [ModelInfo(name=f"{fault}_net", family="test", input_size=(3, 32, 32)) for fault in ("oom", "crash", "hang")],
    lambda name, pretrained=False, **kw: Faulty(name.removesuffix("_net")),
)
"""


@pytest.fixture(scope="session")
def faulty_models() -> str:
    """Source of a module (for `--import`) registering oom_net, crash_net and hang_net, which fail at batch >= 2."""
    return FAULTY_MODELS


def _env(env_path: Path | None = None, **extra: str) -> dict[str, str]:
    path = [str(env_path or ""), str(REPO), os.environ.get("PYTHONPATH", "")]  # kept: packages may live there
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, path)), **extra)


@pytest.fixture(scope="session")
def subprocess_env() -> Callable[..., dict[str, str]]:
    """The environment of a child process that imports this checkout (and modules in `env_path`, if given)."""
    return _env


@pytest.fixture(scope="session")
def table_lines() -> Callable[[str, str], int]:
    def count(text: str, model: str) -> int:
        """Rows of a terminal table (tabulate's simple format) that are `model`'s."""
        return sum(1 for line in text.splitlines() if line.split(" ", 1)[0] == model)

    return count


# ------------------------------------------------------------------------------------- the Hub, offline

HUB_ORG = "test-org"


@pytest.fixture(scope="session")
def hub_org() -> str:
    return HUB_ORG


def _file_sha256(path: Path) -> str:
    from hub.convert import file_sha256

    return file_sha256(path)


@pytest.fixture(scope="session")
def put_in_cache() -> Callable[..., str]:
    def put(cache: Path, repo_id: str, files: dict[str, Path | bytes], revision: str = "main") -> str:
        """Lay `files` out as huggingface_hub's cache holds a repo at `revision`; return the commit id used."""
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True, exist_ok=True)
        (repo / "blobs").mkdir(exist_ok=True)
        for name, content in files.items():
            tmp = repo / "blobs" / "incoming"
            tmp.write_bytes(content) if isinstance(content, bytes) else tmp.write_bytes(content.read_bytes())
            blob = repo / "blobs" / _file_sha256(tmp)
            tmp.replace(blob)
            (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / revision).write_text(commit)
        return commit

    return put


def _official_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the official code's exact keys and shapes (BN variances positive, decays negative)."""
    shapes = json.loads((FIXTURES / "official_state_dict_shapes.json").read_text())[name]
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith("Relpos.decay"):
            state[key] = -torch.rand(shape, generator=g) - 0.1
        else:
            state[key] = torch.randn(shape, generator=g) * 0.02
    return state


@pytest.fixture(scope="session")
def official_state() -> Callable[..., dict[str, torch.Tensor]]:
    return _official_state


@pytest.fixture(scope="session")
def timm_state() -> Callable[[str], dict[str, torch.Tensor]]:
    def state(name: str) -> dict[str, torch.Tensor]:
        """A freshly initialised zoo model's state dict: timm's own layout, as timm's Hub repos hold it."""
        import zoo

        torch.manual_seed(0)
        return {k: v.contiguous() for k, v in zoo.load(name).state_dict().items()}

    return state


def _deit_checkpoint(path: Path, model: dict, ema: dict | None) -> Path:
    """A DeiT-style training checkpoint, as RMT's official release is."""
    obj = {"model": model, "epoch": 299, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5}]}}
    if ema is not None:
        obj["model_ema"] = ema
    torch.save(obj, path)
    return path


@pytest.fixture(scope="session")
def deit_checkpoint() -> Callable[..., Path]:
    return _deit_checkpoint


@pytest.fixture(scope="session")
def small_logits() -> Callable[[torch.nn.Module], torch.Tensor]:
    def logits(model: torch.nn.Module) -> torch.Tensor:
        """Outputs on a small fixed input (RMT and InternImage take any size), to compare loaded weights cheaply."""
        x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            return model(x)

    return logits


@pytest.fixture(scope="session")
def one_sentence() -> Callable[[str], bool]:
    def check(message: str) -> bool:
        body = message.rstrip(".")
        return "\n" not in message and ". " not in body and message.endswith(".")

    return check


@pytest.fixture
def bench_flags() -> dict[str, Any]:
    """bench.py's flags, each to its argparse action (argparse has no public way to list a parser's actions)."""
    from bench import cli

    return dict(cli.build_parser()._option_string_actions)


class _Marker:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.fixture(scope="session")
def evil_pickle() -> Callable[[dict, Path], bytes]:
    def make(obj: dict, marker: Path) -> bytes:
        """`obj` plus an object whose unpickling creates `marker`; checked to really do so with plain pickle."""
        probe = marker.with_name(marker.name + ".probe")
        pickle.loads(pickle.dumps(_Marker(probe), protocol=2))
        assert probe.exists()
        return pickle.dumps({**obj, "x": _Marker(marker)}, protocol=2)

    return make


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hub cache, huggingface_hub in offline mode (in this process and in subprocesses)."""
    from huggingface_hub import constants

    from zoo import HUB_REVISION_ENV, RMT_HUB_ORG_ENV

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in (RMT_HUB_ORG_ENV, HUB_REVISION_ENV):
        monkeypatch.delenv(var, raising=False)
    return cache


@pytest.fixture(scope="session")
def rmt_release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    """An official-layout RMT-T release file with plain and EMA weights: (path, plain, ema)."""
    plain, ema = _official_state("rmt_t", seed=0), _official_state("rmt_t", seed=1)
    path = _deit_checkpoint(tmp_path_factory.mktemp("release") / "RMT-T.pth", plain, ema)
    return path, plain, ema


@pytest.fixture(scope="session")
def rmt_converted(rmt_release, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hub.convert import convert

    path, _, _ = rmt_release
    out = tmp_path_factory.mktemp("converted") / "rmt_t"
    results = out.parent / "results.jsonl"
    rows = [
        {"model": "rmt_t", "status": "ok", "backend": "eager", "precision": "fp32", "batch_size": 64,
         "input_size": [224, 224], "device": "cuda", "throughput_ips": 1234.56, "latency_ms": {"p50": 51.9},
         "top1": None, "env": {"device_name": "NVIDIA H100"}},
        {"model": "rmt_t", "status": "error", "backend": "tensorrt", "throughput_ips": 99999.0},
        {"model": "rmt_s", "status": "ok", "backend": "eager", "throughput_ips": 777.0},
    ]  # fmt: skip
    results.write_text("\n".join(map(json.dumps, rows)) + "\nnot json\n")
    convert("rmt_t", path, out, results=results, org=HUB_ORG)
    return out


@pytest.fixture(scope="session")
def bare_converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`python -m hub convert` of a bare safetensors state dict with --results-dataset, run as from a source tree that
    is not installed (no rmt-zoo distribution metadata) under umask 027: (OUT_DIR, what it printed)."""
    import importlib.metadata

    from hub.__main__ import main

    def not_installed(real):
        def lookup(name, *args, **kwargs):
            if name.lower().replace("_", "-") == "rmt-zoo":
                raise importlib.metadata.PackageNotFoundError(name)
            return real(name, *args, **kwargs)

        return lookup

    tmp = tmp_path_factory.mktemp("bare")
    save_file(_official_state("rmt_t"), str(tmp / "rmt_t.safetensors"))
    old_umask = os.umask(0o027)
    try:
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()) as printed:
            for name in ("version", "distribution", "metadata"):
                mp.setattr(importlib.metadata, name, not_installed(getattr(importlib.metadata, name)))
            argv = [str(tmp / "rmt_t.safetensors"), str(tmp / "out"), "--results-dataset", "bench-org/rmt-results"]
            assert main(["convert", "--model", "rmt_t", *argv]) == 0
    finally:
        os.umask(old_umask)
    return tmp / "out", printed.getvalue()


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> dict:
    """HfApi replaced by a recorder: the repos it would create and each commit's files with their bytes."""
    calls: dict = {"repos": [], "commits": []}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, **kwargs):
            calls["repos"].append((repo_id, kwargs))

        def create_commit(self, repo_id, operations, *, commit_message, repo_type=None, **kwargs):
            files = {}
            for op in operations:
                op.path_or_fileobj.seek(0)
                files[op.path_in_repo] = op.path_or_fileobj.read()
            calls["commits"].append(
                {"repo_id": repo_id, "repo_type": repo_type, "message": commit_message, "files": files}
            )
            return SimpleNamespace(commit_url=f"https://hf.test/{repo_id}/commit/1")

        def __getattr__(self, name):
            raise AssertionError(f"HfApi.{name} is not how this project uploads")

    import hub.publish

    monkeypatch.setattr(hub.publish, "HfApi", FakeApi)
    return calls


@pytest.fixture(scope="session")
def bench_rows() -> Callable[[], list[dict]]:
    def rows() -> list[dict]:
        """Rows as the harness writes them: two measured on a GPU, one failed."""
        env = {
            "device_name": "NVIDIA H100 80GB HBM3",
            "torch": "2.9.0+cu128",
            "timm": "1.0.20",
            "git_commit": "abc123-dirty",
        }
        base = {"schema_version": 2, "backend": "eager", "precision": "amp-bf16", "batch_size": 64,
                "input_size": [224, 224], "device": "cuda", "status": "ok", "env": env,
                "command": "python -m bench.suite --out results/h100", "timestamp": "2025-01-02T03:04:05+00:00",
                "latency_ms": {"p50": 20.5}}  # fmt: skip
        return [
            {**base, "model": "rmt_t", "throughput_ips": 3120.5},
            {**base, "model": "swin_t", "throughput_ips": 4410.0, "timestamp": "2025-01-02T04:00:00+00:00"},
            {**base, "model": "rmt_s", "backend": "tensorrt", "status": "error", "reason": "export failed",
             "command": "python bench.py --models rmt_s --backend tensorrt"},
        ]  # fmt: skip

    return rows
