"""The registry: names, metadata, timm families, errors, and the install itself."""
from __future__ import annotations

import subprocess
import sys

import pytest
import timm
import torch

import zoo
from zoo import CheckpointError, CheckpointMismatchError, UnknownModelError

ALL = [
    "rmt_t", "rmt_s", "rmt_b", "rmt_l", "rmt_s_tl", "rmt_b_tl", "rmt_l_tl",
    "internimage_t", "internimage_s", "internimage_b", "internimage_l",
    "swin_t", "swin_s", "swin_b", "maxvit_t", "maxvit_s", "maxvit_b",
]  # fmt: skip


def test_torch_torchvision_timm_import_together():
    """The setup's promise: a matching torch/torchvision pair (a CPU torch beside a CUDA torchvision fails here)."""
    import torchvision

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    keep = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
    assert keep.tolist() == [0, 2]
    assert timm.data.create_transform(224) is not None


def test_every_listed_name_is_registered():
    assert zoo.list_models() == sorted(ALL)
    assert zoo.list_models("rmt_*_tl") == ["rmt_b_tl", "rmt_l_tl", "rmt_s_tl"]
    assert zoo.list_models(family="swin") == ["swin_b", "swin_s", "swin_t"]


@pytest.mark.parametrize("name", ["swin_t", "swin_s", "swin_b", "maxvit_t", "maxvit_s", "maxvit_b"])
def test_timm_families_use_in1k_tags_and_their_sizes(name):
    i = zoo.info(name)
    assert i.timm_name.endswith((".ms_in1k", ".in1k")) and i.hf_hub_id == f"timm/{i.timm_name}"
    assert zoo.param_count(name) / 1e6 == pytest.approx(i.paper_params_m, abs=0.005)


@pytest.mark.parametrize("name", ALL)
def test_info_is_complete(name):
    i = zoo.info(name)
    assert i.name == name and i.paper_top1 and i.paper_gflops and i.paper
    assert i.hf_hub_id and i.hf_hub_filename == "model.safetensors"
    assert i.input_size[0] == 3 and 0.8 <= i.crop_pct <= 1.0 and len(i.mean) == len(i.std) == 3


@pytest.mark.parametrize("name", ["swin_t", "maxvit_t"])
def test_timm_features_are_nchw_at_strides_4_to_32(name):
    model = zoo.load(name, features_only=True)
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 224, 224))
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert [f.shape[1] for f in feats] == model.feature_info.channels()
    assert [f.shape[-1] for f in feats] == [56, 28, 14, 7]


def test_timm_names_pass_through():
    model = zoo.load("test_vit", num_classes=3)
    assert not model.training
    size = zoo.info("test_vit").input_size
    with torch.no_grad():
        assert model(torch.randn(1, *size)).shape == (1, 3)


def test_unknown_name_suggests_close_names():
    with pytest.raises(UnknownModelError, match=r"Did you mean: rmt_s\b"):
        zoo.load("rmt_ss")
    with pytest.raises(UnknownModelError, match="swin_t"):
        zoo.info("swim_t")


def test_cli_lists_and_rejects_unknown_names():
    ok = subprocess.run([sys.executable, "-m", "zoo", "list", "rmt_t*"], capture_output=True, text=True)
    assert ok.returncode == 0 and "14.33" in ok.stdout and "rmt-zoo/rmt_t" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "zoo", "info", "rmt_ss"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "Did you mean: rmt_s" in bad.stderr


def test_timm_checkpoint_path_loads_strictly(tmp_path):
    src = zoo.load("test_vit", num_classes=4)
    path = tmp_path / "vit.pth"
    torch.save({"state_dict": src.state_dict()}, path)
    x = torch.randn(1, *zoo.info("test_vit").input_size)
    with torch.no_grad():
        assert torch.equal(zoo.load("test_vit", pretrained=path, num_classes=4)(x), src(x))
    del_key = {k: v for k, v in src.state_dict().items() if not k.startswith("blocks.0.")}
    torch.save(del_key, path)
    with pytest.raises(CheckpointMismatchError, match="missing: blocks.0."):
        zoo.load("test_vit", pretrained=path, num_classes=4)


def test_unsafe_or_broken_files_are_refused(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model": {"w": torch.zeros(1)}, "payload": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="Refused to load"):
        zoo.load("rmt_t", pretrained=tmp_path / "evil.pth")
    assert not marker.exists()
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        zoo.load("rmt_t", pretrained=tmp_path / "junk.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        zoo.load("rmt_t", pretrained=tmp_path / "missing.pth")
