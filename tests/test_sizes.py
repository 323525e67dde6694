"""Every comparison model at every input size its architecture allows: timm's Swin and MaxViT are built for the
row's size, RMT and InternImage take any size with one build, and a size an architecture cannot take is refused in
one sentence before anything is built or measured."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import zoo
from bench.results import load_results
from bench.runner import _refusals  # the runner's per-row refusal, tested without starting a worker
from bench.spec import RowSpec, Settings
from bench.worker import Worker

REPO = Path(__file__).resolve().parent.parent
SIZE = (96, 128)  # not the models' own 224x224, and allowed for every family (MaxViT: 3x4 windows)


def _maps(size: tuple[int, int]) -> list[tuple[int, int]]:
    """Stage maps at strides 4, 8, 16 and 32, rounded up as every family here rounds."""
    return [(math.ceil(size[0] / r), math.ceil(size[1] / r)) for r in (4, 8, 16, 32)]


@pytest.mark.variants
@pytest.mark.parametrize("name", zoo.comparison_models())
def test_every_comparison_model_builds_and_forwards_at_another_size(name):
    """On the meta device: the whole forward's shapes, without the arithmetic."""
    with torch.device("meta"):
        model = zoo.load(name, features_only=True, **zoo.input_size_kwargs(name, SIZE))
        features = model(torch.empty(1, 3, *SIZE))
    assert [tuple(f.shape[-2:]) for f in features] == _maps(SIZE)
    assert [f.shape[1] for f in features] == model.feature_info.channels()


@pytest.mark.parametrize("name", ["swin_t", "maxvit_t"])
def test_timm_models_are_built_for_the_size_and_run_on_cpu(name):
    """Built at 224 (timm's default) they refuse 96x128; built with the size's kwargs they run it."""
    x = torch.randn(1, 3, *SIZE)
    assert zoo.input_size_kwargs(name, SIZE) == {"img_size": SIZE}
    with pytest.raises(AssertionError):
        zoo.load(name)(x)
    model = zoo.load(name, img_size=SIZE, features_only=True)
    with torch.no_grad():
        features = model(x)
    assert [tuple(f.shape[-2:]) for f in features] == _maps(SIZE)
    assert all(torch.isfinite(f).all() for f in features)


@pytest.mark.parametrize("name", ["rmt_t", "internimage_t"])
def test_rmt_and_internimage_take_any_size_with_one_build(name):
    assert zoo.input_size_kwargs(name, (17, 23)) == {}
    with torch.device("meta"):
        model = zoo.load(name, features_only=True, depths=(1, 1, 1, 1))  # depth changes no shape, only time
        for size in [(17, 23), SIZE]:
            assert [tuple(f.shape[-2:]) for f in model(torch.empty(1, 3, *size))] == _maps(size)


def _timm_runs(timm_name: str, size: tuple[int, int], **kwargs) -> bool:
    try:
        model = timm.create_model(timm_name, img_size=size, num_classes=0, **kwargs).eval()
        with torch.no_grad():
            maps = [tuple(f.shape[-2:]) for f in model.forward_intermediates(torch.randn(1, 3, *size), indices=4)[1]]
    except (AssertionError, RuntimeError):
        return False
    assert maps == _maps(size)
    return True


# MaxViT's partitions at small widths and depths: the sizes it takes depend only on the stem, the stage count and
# the window and grid sizes.
_TINY_MAXVIT = dict(embed_dim=(32, 32, 32, 32), depths=(1, 1, 1, 1), stem_width=16)


@pytest.mark.parametrize(
    "kwargs, sides",
    [
        ({}, [*range(28, 72, 3), 96, 100, 127, 128, 160, 161, 192]),
        ({"transformer_window_size": 7}, [200, 216, 220, 221, 224, 225, 231, 448]),
    ],
    ids=["windows of side over 32", "fixed 7x7 windows"],
)
def test_maxvit_rule_is_what_timm_builds(kwargs, sides):
    """The rule accepts exactly the sizes timm's MaxViT runs (both sides, each its own axis)."""
    for side in sides:
        size = (side, 64 if not kwargs else 224)
        try:
            zoo.input_size_kwargs("maxvit_t", size, **_TINY_MAXVIT, **kwargs)
            allowed = True
        except zoo.InputSizeError:
            allowed = False
        assert allowed == _timm_runs("maxvit_tiny_tf_224", size, **_TINY_MAXVIT, **kwargs), size


def test_swin_runs_at_every_multiple_of_its_patch_and_refuses_the_rest():
    tiny = dict(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
    for side in range(16, 80, 4):
        assert _timm_runs("swin_tiny_patch4_window7_224", (side, 36), **tiny)
        assert zoo.input_size_kwargs("swin_t", (side, 36)) == {"img_size": (side, 36)}
    # timm would run 65 by dropping the last row of pixels; the rule refuses it
    assert timm.create_model("swin_tiny_patch4_window7_224", img_size=65, **tiny).patch_embed.grid_size == (16, 16)
    with pytest.raises(zoo.InputSizeError):
        zoo.input_size_kwargs("swin_t", (65, 64))


@pytest.mark.parametrize(
    "name, size, says",
    [
        (
            "maxvit_t",
            (100, 100),
            "maxvit_t cannot run at 100x100: timm partitions every stage into 3x3 windows and grids (each side // 32), "
            "which must be at least 1 and divide each stage's map (25x25, 13x13, 7x7, 4x4); the nearest sizes that "
            "run are 96x96 and 128x128.",
        ),
        (
            "swin_s",
            (65, 66),
            "swin_s cannot run at 65x66: its 4x4 patch embedding needs each side to be a multiple of 4 (timm would "
            "drop the remainder); the nearest sizes that run are 64x64 and 68x68.",
        ),
        ("maxvit_b", (16, 800), "into 0x25 windows and grids"),
    ],
)
def test_an_impossible_size_is_one_sentence_from_load_and_from_the_rule(name, size, says):
    for call in (lambda: zoo.input_size_kwargs(name, size), lambda: zoo.load(name, img_size=size)):
        with pytest.raises(zoo.InputSizeError) as caught:
            call()
        message = str(caught.value)
        assert says in message
        assert "\n" not in message and message.endswith(".") and message.count(": ") == 1


def test_img_size_must_be_a_size():
    with pytest.raises(ValueError, match=r"img_size must be N or \(H, W\)"):
        zoo.load("swin_t", img_size=(64, "64"))


@pytest.mark.parametrize("name, size", [("swin_t", (64, 64)), ("maxvit_t", SIZE)])
def test_pretrained_weights_at_224_load_at_another_size(name, size, tmp_path):
    """timm's checkpoint filter resamples the relative-position tables whose window changed (Swin's last stages
    clamp their windows to a 2x2 map; MaxViT's windows become 3x4); everything else loads as it was."""
    source = zoo.load(name)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = zoo.load(name, pretrained=path, img_size=size)
    theirs, ours = source.state_dict(), model.state_dict()
    resized = [k for k in ours if ours[k].shape != theirs[k].shape]
    assert resized and all(k.endswith("relative_position_bias_table") for k in resized)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if k not in resized)
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 1000)


def _spec(model: str, size: tuple[int, int], batch_size: int = 1, **kw) -> RowSpec:
    return RowSpec(model, "eager", "fp32", batch_size, size, "cpu", features_only=True, threads=1, **kw)


def test_worker_builds_a_timm_model_once_per_size(tmp_path):
    out = tmp_path / "r.jsonl"
    rows = [_spec("swin_t", (64, 64)), _spec("swin_t", SIZE)]
    Worker(rows, Settings(warmup=0, iters=1, flops=False), str(out), {}, {}).run()
    got = {tuple(r["input_size"]): r for r in load_results(out)}
    assert set(got) == {(64, 64), SIZE}  # one build at 64x64 alone would refuse 96x128
    assert all(r["status"] == "ok" for r in got.values()), [r["reason"] for r in got.values()]


def test_runner_refuses_an_impossible_size_once_before_any_build():
    specs = [_spec("maxvit_t", (100, 100), batch_size=b) for b in (1, 2)] + [_spec("maxvit_t", SIZE)]
    refused = _refusals(specs)
    assert set(refused) == set(specs[:2])
    assert len(set(refused.values())) == 1
    assert "maxvit_t cannot run at 100x100" in next(iter(refused.values()))[1]
    # model kwargs change the rule: fixed 7x7 windows need sides near multiples of 224
    fixed = _spec("maxvit_t", (800, 1344), model_kwargs=(("transformer_window_size", 7),))
    assert "7x7 windows and grids (fixed)" in _refusals([fixed])[fixed][1]


@pytest.mark.e2e
def test_bench_row_at_64x64_for_swin_t_and_one_sentence_for_an_impossible_size(tmp_path):
    out = tmp_path / "r.jsonl"
    args = ["--models", "swin_t", "maxvit_t", "--input-size", "64x64", "100x100", "--device", "cpu"]
    args += ["--features-only", "--batch-size", "1", "--warmup", "0", "--iters", "1", "--threads", "1"]
    proc = subprocess.run(
        [sys.executable, "bench.py", *args, "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    rows = {(r["model"], tuple(r["input_size"])): r for r in load_results(out)}
    assert proc.returncode == 3, proc.stderr
    assert rows[("swin_t", (64, 64))]["status"] == "ok"
    assert rows[("maxvit_t", (64, 64))]["status"] == "ok"
    assert rows[("swin_t", (100, 100))]["status"] == "ok"
    refused = rows[("maxvit_t", (100, 100))]
    assert refused["status"] == "unavailable" and "gmacs" not in refused
    assert "maxvit_t cannot run at 100x100" in refused["reason"] and "maxvit_t cannot run" in proc.stdout
    assert json.loads(out.read_text().splitlines()[0])["status"] == "unavailable"  # written before any measurement
