"""The registry: names, metadata, timm families, errors, and the install itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def test_families_are_registry_data_and_list_their_models():
    fams = zoo.families()
    assert list(fams) == ["rmt", "internimage", "swin", "maxvit"]  # registration order
    assert {n for n, f in fams.items() if f.built_by == "zoo"} == {"rmt", "internimage"}
    for name, fam in fams.items():
        assert fam.name == name and fam.code.startswith("https://github.com/") and "\n" not in fam.description
        assert all(zoo.info(m).family == name for m in zoo.list_models(family=name))
    assert "Manhattan self-attention" in fams["rmt"].description
    assert sorted(m for f in fams for m in zoo.list_models(family=f)) == zoo.list_models()
    with pytest.raises(ValueError, match="Unknown family 'vit'; the zoo's families are rmt, internimage, swin, maxvit"):
        zoo.list_models(family="vit")


def test_comparison_models_leave_out_token_labelling():
    """What the GPU suite compares: every family's models but RMT's token-labelling variants, family by family."""
    assert zoo.comparison_models() == [
        "rmt_t", "rmt_s", "rmt_b", "rmt_l", "internimage_t", "internimage_s", "internimage_b", "internimage_l",
        "swin_t", "swin_s", "swin_b", "maxvit_t", "maxvit_s", "maxvit_b",
    ]  # fmt: skip


@pytest.mark.parametrize("family", ["rmt", "internimage"])
def test_generated_entry_points_are_timm_models_written_in_the_family_module(family):
    import importlib
    import pickle

    module = importlib.import_module(f"zoo.{family}")
    names = zoo.list_models(family=family)
    assert timm.list_models(f"{family}_*") == names and timm.list_models(module=family) == names
    for name in names:
        fn = getattr(module, name)
        assert (fn.__name__, fn.__qualname__, fn.__module__) == (name, name, module.__name__)
        assert timm.models.model_entrypoint(name) is fn and pickle.loads(pickle.dumps(fn)) is fn
        assert name in module.__all__ and name in module.default_cfgs
        assert timm.models.get_pretrained_cfg(name).architecture == name
    assert not timm.is_model("swin_t")  # timm's own families stay under timm's names


@pytest.mark.parametrize("name", ALL)
def test_pretrained_cfg_reads_back_as_the_same_facts(name):
    """ModelInfo -> pretrained_cfg -> ModelInfo through the one field mapping keeps every fact the cfg carries."""
    from dataclasses import asdict

    from zoo._registry import _CFG_FIELDS, ModelInfo  # the registry's own field mapping is what this tests

    i = zoo.info(name)
    back = asdict(ModelInfo.from_pretrained_cfg(name, timm.models.PretrainedCfg(**i.pretrained_cfg())))
    assert {f: back[f] for f in _CFG_FIELDS} == {f: asdict(i)[f] for f in _CFG_FIELDS}


def test_register_family_refuses_a_second_registration_and_strays():
    from zoo._registry import Family, ModelInfo, register_family  # registering is what this tests

    fam = Family("rmt", "again", code="", built_by="zoo")
    with pytest.raises(ValueError, match="rmt, rmt_t would be registered twice"):
        register_family(fam, [ModelInfo(name="rmt_t", family="rmt")], lambda name, pretrained=False, **kw: None)
    stray = Family("stray", "a test family", code="", built_by="timm")
    with pytest.raises(ValueError, match="stray_t name another family than 'stray'"):
        register_family(stray, [ModelInfo(name="stray_t", family="rmt")], lambda name, pretrained=False, **kw: None)
    assert "stray" not in zoo.families() and "stray_t" not in zoo.list_models()


@pytest.mark.variants
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


def test_timm_aliases_load_the_file_a_pretrained_cfg_overlay_names(tmp_path):
    """As with timm.create_model, pretrained=True with pretrained_cfg_overlay=dict(file=...) loads that file."""
    from safetensors.torch import save_file

    small = dict(depths=(1, 1, 1, 1), num_classes=7)
    torch.manual_seed(0)
    saved = zoo.load("swin_t", **small)
    save_file({k: v.contiguous() for k, v in saved.state_dict().items()}, str(tmp_path / "swin.safetensors"))
    loaded = zoo.load(
        "swin_t", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "swin.safetensors")), **small
    )
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(CheckpointError):
        zoo.load(
            "swin_t", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "none.safetensors")), **small
        )


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


@pytest.mark.e2e
def test_cli_lists_and_rejects_unknown_names():
    ok = subprocess.run([sys.executable, "-m", "zoo", "list", "rmt_t*"], capture_output=True, text=True)
    assert ok.returncode == 0 and "14.33" in ok.stdout
    # nothing is published under rmt-zoo: the list says where weights can be had today, not an empty repo
    assert "rmt-zoo/rmt_t" not in ok.stdout and "official release: pretrained=PATH" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "zoo", "info", "rmt_ss"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "Did you mean: rmt_s" in bad.stderr


@pytest.mark.e2e
def test_cli_pattern_matching_nothing_is_an_error_in_one_sentence():
    proc = subprocess.run([sys.executable, "-m", "zoo", "list", "zzz*"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: no model of the zoo matches 'zzz*'") and proc.stderr.count("\n") == 1


@pytest.mark.e2e
def test_cli_ends_quietly_when_the_reader_goes_and_says_why_a_write_failed():
    cmd = [sys.executable, "-m", "zoo", "list", "rmt_t"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before the table is written (`| head` after its lines)
    err = proc.stderr.read()
    assert proc.wait() == 141 and "Traceback" not in err and "Error" not in err, err
    if Path("/dev/full").exists():
        with open("/dev/full", "w") as full:
            proc = subprocess.run(cmd, stdout=full, stderr=subprocess.PIPE, text=True)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.splitlines()[-1] == "error: Standard output could not be written (No space left on device)."


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


def test_a_pickle_that_calls_os_system_is_refused_as_unsafe_not_called_damaged(tmp_path):
    import os
    import pickle

    marker = tmp_path / "ran"

    class System:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": {"w": torch.zeros(1)}, "payload": System()}, tmp_path / "torch_save.pth")
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"model": System()}))  # protocol 4 or 5: not weights_only's
    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.zeros(1000)}}, good)
    (tmp_path / "truncated.pth").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for name in ("torch_save.pth", "plain.pkl"):
        with pytest.raises(CheckpointError) as err:
            zoo.load("rmt_t", pretrained=tmp_path / name)
        msg, system = str(err.value), f"{os.system.__module__}.system"
        assert msg.startswith(f"Refused to load {tmp_path / name} as unsafe: it asks to import {system}")
        assert "damaged" not in msg and _one_sentence(msg)
    assert not marker.exists()
    with pytest.raises(CheckpointError) as err:
        zoo.load("rmt_t", pretrained=tmp_path / "truncated.pth")
    assert "not a readable PyTorch file" in str(err.value) and "unsafe" not in str(err.value)


def test_a_symbolic_link_loop_is_named_as_one(tmp_path):
    loop = tmp_path / "loop.pth"
    try:
        loop.symlink_to(loop)
    except OSError:
        pytest.skip("no symbolic links here")
    with pytest.raises(CheckpointError) as err:
        zoo.load("rmt_t", pretrained=loop)
    assert str(err.value) == f"Checkpoint path {loop} is a symbolic-link loop: its links never reach a file."
    with pytest.raises(CheckpointError, match="does not exist"):
        zoo.load("rmt_t", pretrained=tmp_path / "missing.pth")


def _one_sentence(message: str) -> bool:
    return "\n" not in message and ". " not in message.rstrip(".") and message.endswith(".")


SMALL = {"rmt_t": dict(depths=(1, 1, 1, 1)), "internimage_t": dict(depths=(1, 1, 1, 1))}


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize(
    "kwargs,error,needle",
    [
        (dict(features_only=True, out_indices=(0, 4)), ValueError, "out of range for 4 stages"),
        (dict(features_only=True, out_indices=(-5,)), ValueError, "out of range for 4 stages"),
        (dict(features_only=True, out_indices=5), ValueError, "last 5 of 4 stages"),
        (dict(num_classes=-5), ValueError, "num_classes must be a whole number >= 0"),
        (dict(num_classes="10"), ValueError, "not '10'"),
        (dict(pretrained=1), TypeError, "pretrained must be True (the Hub), False or a checkpoint path, not 1 (int)"),
        (dict(global_pool="max"), ValueError, "global_pool must be 'avg' or ''"),
    ],
)  # fmt: skip
def test_model_arguments_are_checked_at_build_time_in_one_sentence(name, kwargs, error, needle):
    for build in (zoo.load, timm.create_model):
        with torch.device("meta"), pytest.raises(error) as err:
            build(name, **SMALL[name], **kwargs)
        assert needle in str(err.value) and _one_sentence(str(err.value)), str(err.value)


@pytest.mark.parametrize("name", SMALL)
def test_out_indices_mean_the_same_in_both_families(name):
    """timm's semantics everywhere: negatives count from the end, an int n is the last n stages."""
    with torch.device("meta"):
        last = zoo.load(name, features_only=True, out_indices=(-1,), **SMALL[name])
        two = zoo.load(name, features_only=True, out_indices=2, **SMALL[name])
        swapped = zoo.load(name, features_only=True, out_indices=(3, -3), **SMALL[name])
        full = zoo.load(name, **SMALL[name])
    assert last.feature_info.channels() == [full.feature_info[-1]["num_chs"]]
    assert two.out_indices == (2, 3) and last.out_indices == (3,) and swapped.out_indices == (1, 3)
    assert [f.shape[1] for f in swapped(torch.randn(1, 3, 64, 64, device="meta"))] == swapped.feature_info.channels()
    feats = last(torch.randn(1, 3, 64, 64, device="meta"))
    assert len(feats) == 1 and feats[0].shape[1] == last.feature_info.channels()[0]


def test_a_folder_without_weights_and_a_name_in_other_case_get_one_sentence(tmp_path):
    with pytest.raises(CheckpointError) as err:
        zoo.load("rmt_t", pretrained=tmp_path)
    assert "is a folder with neither model.safetensors nor pytorch_model.bin" in str(err.value)
    assert _one_sentence(str(err.value))
    with pytest.raises(UnknownModelError, match=r"Did you mean: rmt_s\b"):
        zoo.load("RMT_S")


def test_random_bytes_are_a_damaged_file_not_a_code_risk(tmp_path):
    path = tmp_path / "random.pth"
    path.write_bytes(
        torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).numpy().tobytes()
    )
    with pytest.raises(CheckpointError) as err:
        zoo.load("rmt_t", pretrained=path)
    msg = str(err.value)
    assert "not a readable PyTorch file" in msg and "run code" not in msg and _one_sentence(msg)


def test_a_foreign_checkpoint_is_not_called_an_old_rmt_release(tmp_path):
    from safetensors.torch import save_file

    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, depths=(1, 1, 1, 1))
    save_file({k: v.contiguous() for k, v in swin.state_dict().items()}, str(tmp_path / "swin.safetensors"))
    with pytest.raises(CheckpointMismatchError) as err:
        zoo.load("rmt_t", pretrained=tmp_path / "swin.safetensors")
    msg = str(err.value)
    assert "does not look like an RMT checkpoint" in msg and "Dec 2023" not in msg
