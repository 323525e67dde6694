"""InternImage against the official code's outputs and checkpoint layouts, and DCNv3 against first principles."""

from __future__ import annotations

import logging
import math

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import FeatureInfo

import zoo
import zoo.internimage as ii
from zoo import CheckpointMismatchError
from zoo import check_fits


TOL = 1e-4
NAMES = ["internimage_t", "internimage_s", "internimage_b", "internimage_l"]
OFFICIAL_PARAMS = {
    "internimage_t": 29_918_424, "internimage_s": 50_079_880,
    "internimage_b": 97_461_832, "internimage_l": 223_334_810,
}  # fmt: skip
FIXTURES = ["internimage_tiny_prenorm", "internimage_tiny_postnorm"]


def _save_pth(tmp_path, state, name="internimage.pth"):
    path = tmp_path / name
    torch.save({"model": state, "epoch": 299}, path)
    return path


def _save_hub_safetensors(tmp_path, state):
    """The transformers-style layout of OpenGVLab/internimage_*: `model.` prefix, gamma1/2 -> layer_scale1/2."""
    hub = {"model." + k.replace(".gamma1", ".layer_scale1").replace(".gamma2", ".layer_scale2"): v
           for k, v in state.items()}  # fmt: skip
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in hub.items()}, str(path))
    return path, hub


def _direct_dcnv3(values, offset, mask, groups, offset_scale):
    """DCNv3 sampling written point by point from its definition, in float64, to check the vectorised ops."""
    n, h, w, c = values.shape
    gc = c // groups
    out = torch.zeros_like(values)
    off = offset.view(n, h, w, groups, 9, 2)
    weights = mask.view(n, h, w, groups, 9).softmax(-1)

    def pixel(b, yy, xx, grp):
        inside = 0 <= yy < h and 0 <= xx < w
        return values[b, yy, xx, grp * gc : (grp + 1) * gc] if inside else torch.zeros(gc, dtype=values.dtype)

    for b in range(n):
        for y in range(h):
            for x in range(w):
                for grp in range(groups):
                    for p in range(9):
                        ix, iy = divmod(p, 3)  # x-major kernel points
                        sx = x + (ix - 1 + off[b, y, x, grp, p, 0].item()) * offset_scale
                        sy = y + (iy - 1 + off[b, y, x, grp, p, 1].item()) * offset_scale
                        x0, y0 = math.floor(sx), math.floor(sy)
                        fx, fy = sx - x0, sy - y0
                        sample = (
                            pixel(b, y0, x0, grp) * (1 - fx) * (1 - fy)
                            + pixel(b, y0, x0 + 1, grp) * fx * (1 - fy)
                            + pixel(b, y0 + 1, x0, grp) * (1 - fx) * fy
                            + pixel(b, y0 + 1, x0 + 1, grp) * fx * fy
                        )
                        out[b, y, x, grp * gc : (grp + 1) * gc] += weights[b, y, x, grp, p] * sample
    return out


@pytest.mark.parametrize("op", [ii.dcnv3, ii.dcnv3_reference], ids=["fast", "reference"])
@pytest.mark.parametrize("offset_scale", [1.0, 2.0])
def test_dcnv3_matches_its_definition(op, offset_scale, dcn_inputs):
    values, offset, mask = dcn_inputs()
    expected = _direct_dcnv3(values, offset, mask, 2, offset_scale)
    assert torch.allclose(op(values, offset, mask, 2, offset_scale), expected, atol=1e-10)


def test_fast_and_reference_ops_agree_with_gradients(dcn_inputs):
    values, offset, mask = (t.requires_grad_() for t in dcn_inputs(n=3, h=6, w=9, groups=4, group_channels=5))
    grads = []
    for op in (ii.dcnv3, ii.dcnv3_reference):
        out = op(values, offset, mask, 4, 2.0)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads.append((out.detach(), *(t.grad.clone() for t in (values, offset, mask))))
        for t in (values, offset, mask):
            t.grad = None
    for fast, ref in zip(*grads):
        assert torch.allclose(fast, ref, atol=1e-10)


def test_one_grid_sample_per_layer(monkeypatch):
    calls = []
    grid_sample = ii.F.grid_sample

    def counted(inp, grid, *args, **kwargs):
        calls.append((tuple(inp.shape), tuple(grid.shape)))
        return grid_sample(inp, grid, *args, **kwargs)

    monkeypatch.setattr(ii.F, "grid_sample", counted)
    model = ii.InternImage(channels=16, depths=(1, 2, 1, 1), groups=(2, 4, 4, 8), num_classes=3).eval()
    with torch.no_grad():
        model(torch.randn(3, 3, 32, 48))
    assert len(calls) == 5  # one per DCNv3 layer, all groups and points at once
    assert calls[0] == ((3 * 2, 8, 8, 12), (3 * 2, 9, 8 * 12, 2))


@pytest.mark.parametrize("impl", ii.DCN_IMPLS)
@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_logits_and_features(fixture, name, impl, rel_err):
    fx = fixture(name)
    model = ii.InternImage(**fx.config, dcn_impl=impl).eval()
    model.load_state_dict(fx.state_dict, strict=True)
    backbone = ii.InternImage(**fx.config, dcn_impl=impl, features_only=True).eval()
    backbone.load_state_dict({k: v for k, v in fx.state_dict.items() if not k.startswith(("conv_head.", "head."))})
    with torch.no_grad():
        logits, feats = model(fx.input), backbone(fx.input)
    assert rel_err(logits, fx.logits) <= TOL
    assert [f.shape for f in feats] == [f.shape for f in fx.features]
    for ours, ref in zip(feats, fx.features):
        assert rel_err(ours, ref) <= TOL


@pytest.mark.variants
@pytest.mark.parametrize("name", NAMES)
def test_full_size_layout_equals_official(official_shapes, name):
    with torch.device("meta"):
        model = zoo.internimage._create(name)  # the module under test's bare builder: no weights, no registry
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == official_shapes[name]  # same keys, same shapes, no renaming
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[name]
    assert zoo.info(name).paper_params_m == pytest.approx(OFFICIAL_PARAMS[name] / 1e6)
    with torch.device("meta"):
        official = {k: torch.empty(s) for k, s in official_shapes[name].items()}
        hub = {"model." + k.replace(".gamma", ".layer_scale"): v for k, v in official.items()}
    check_fits(model, ii.checkpoint_filter_fn(official, model), "official .pth")
    check_fits(model, ii.checkpoint_filter_fn(hub, model), "Hub model.safetensors")


@pytest.mark.parametrize("layout", ["pth", "hub_safetensors"])
def test_load_both_official_layouts(fixture, tmp_path, layout, rel_err):
    fx = fixture("internimage_tiny_postnorm")  # has layer scales, so the gamma renaming is exercised
    if layout == "pth":
        path, entry = _save_pth(tmp_path, fx.state_dict), "model"
    else:
        (path, hub), entry = _save_hub_safetensors(tmp_path, fx.state_dict), "(bare)"
        assert any(k.endswith(".layer_scale1") for k in hub) and not any(".gamma" in k for k in hub)
    model = zoo.load("internimage_s", pretrained=path, **fx.config)
    assert model.load_report.entry == entry and not model.training
    backbone = zoo.load("internimage_s", pretrained=path, features_only=True, **fx.config)
    assert {k for k in backbone.load_report.dropped} == {
        k for k in fx.state_dict if k.startswith(("conv_head.", "head."))
    }
    with torch.no_grad():
        assert rel_err(model(fx.input), fx.logits) <= TOL
        for ours, ref in zip(backbone(fx.input), fx.features):
            assert rel_err(ours, ref) <= TOL


def test_wrong_checkpoints_name_their_keys(fixture, tmp_path):
    fx = fixture("internimage_tiny_prenorm")
    path = _save_pth(tmp_path, fx.state_dict)
    with pytest.raises(CheckpointMismatchError) as err:  # post-norm model: level norms unexpected, gammas missing
        zoo.load("internimage_t", pretrained=path, **{**fx.config, "post_norm": True, "layer_scale": 1e-5})
    msg = str(err.value)
    assert "levels.0.blocks.0.gamma1" in msg and "levels.0.norm.0.weight" in msg
    with pytest.raises(CheckpointMismatchError) as err:  # wider model
        zoo.load("internimage_t", pretrained=path, **{**fx.config, "channels": 32})
    msg = str(err.value)
    assert "patch_embed.conv1.weight (checkpoint [8, 3, 3, 3], model [16, 3, 3, 3])" in msg
    assert "stem is 16 channels wide, this model's 32: it matches none of internimage_t" in msg
    state = {k: torch.zeros(s) for k, s in [("patch_embed.conv2.weight", (64, 32, 3, 3))]}
    with pytest.raises(CheckpointMismatchError, match="this model's 16: it looks like internimage_t weights"):
        zoo.load("internimage_t", pretrained=_save_pth(tmp_path, state, "stem.pth"), **fx.config)


def test_num_classes_zero_and_resized_head(fixture, tmp_path, caplog, rel_err):
    fx = fixture("internimage_tiny_prenorm")
    path = _save_pth(tmp_path, fx.state_dict)
    config = {k: v for k, v in fx.config.items() if k != "num_classes"}
    pooled = zoo.load("internimage_t", pretrained=path, num_classes=0, **config)
    with caplog.at_level(logging.INFO, logger="zoo"):
        five = zoo.load("internimage_t", pretrained=path, num_classes=5, **config)
    assert set(five.load_report.dropped) == {"head.weight", "head.bias"} and "dropped" in caplog.text
    full = zoo.load("internimage_t", pretrained=path, **fx.config)
    with torch.no_grad():
        feats = pooled(fx.input)
        assert (
            feats.shape == (2, int(8 * fx.config["channels"] * fx.config["cls_scale"])) == (2, pooled.head_hidden_size)
        )
        assert rel_err(full.head(feats), fx.logits) <= TOL  # pooled features are what the head classifies
        assert five(fx.input).shape == (2, 5)


def test_features_only_and_out_indices():
    model = zoo.load("internimage_t", features_only=True, out_indices=(1, 3), channels=16, depths=(1, 1, 1, 1))
    assert isinstance(model.feature_info, FeatureInfo)
    assert model.feature_info.channels() == [32, 128] and model.feature_info.reduction() == [8, 32]
    assert not hasattr(model, "head") and not hasattr(model, "conv_head")
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 70, 45))
    assert [tuple(f.shape) for f in feats] == [(1, 32, 9, 6), (1, 128, 3, 2)]  # ceil(size / stride)
    assert model.features_only and model.model_name == "internimage_t"


@pytest.mark.parametrize("size", [(45, 70), (97, 33)])
def test_fast_equals_reference_on_odd_sizes(size, internimage_with_offsets, rel_err):
    model = internimage_with_offsets()
    x = torch.randn(3, 3, *size)
    with torch.no_grad():
        fast = model.eval()(x)
        ref = model.set_dcn_impl("reference")(x)
    assert rel_err(fast, ref) <= TOL


def test_train_mode_drop_path_and_backward():
    model = zoo.load("internimage_t", channels=16, depths=(1, 1, 2, 1), num_classes=3, drop_path_rate=0.2).train()
    probs = [b.drop_path.drop_prob for level in model.levels for b in level.blocks if hasattr(b.drop_path, "drop_prob")]
    assert probs == pytest.approx([0.2 / 4, 0.4 / 4, 0.6 / 4, 0.2])  # linear in depth; block 0 has none
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_registry_and_timm():
    assert zoo.list_models("internimage*") == sorted(NAMES)
    for name in NAMES:
        info = zoo.info(name)
        assert (info.family, info.crop_pct, info.interpolation, info.license) == ("internimage", 1.0, "bicubic", "mit")
        assert info.hf_hub_id.startswith("OpenGVLab/internimage_") and info.hf_hub_filename == "model.safetensors"
        assert info.paper == "https://arxiv.org/abs/2211.05778" and info.arch["channels"] > 0
        assert timm.is_model(name)
    assert zoo.info("internimage_l").input_size == (3, 384, 384)
    assert zoo.info("internimage_l").hf_hub_id == "OpenGVLab/internimage_l_22kto1k_384"
    assert (zoo.info("internimage_t").paper_gflops, zoo.info("internimage_t").paper_top1) == (4.90, 83.5)
    with torch.device("meta"):
        model = timm.create_model("internimage_l", num_classes=10, cache_dir="/nowhere")
    assert isinstance(model, ii.InternImage) and model.head.out_features == 10
    assert model.model_name == "internimage_l" and model.num_classes == 10
    data = timm.data.resolve_model_data_config(model)
    assert data["input_size"] == (3, 384, 384) and data["crop_pct"] == 1.0 and data["interpolation"] == "bicubic"


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="dcn_impl must be one of fast, reference"):
        ii.InternImage(channels=16, depths=(1, 1, 1, 1), dcn_impl="cuda")
    with pytest.raises(ValueError, match="divisible"):
        ii.DCNv3(16, 3)


def _small_model(fixture):
    fx = fixture("internimage_tiny_postnorm")
    model = ii.InternImage(**fx.config).eval()
    model.load_state_dict(fx.state_dict)
    return fx, model


@pytest.mark.e2e  # torch.export traces the whole model, about 10 s
def test_torch_export_with_dynamic_sizes(fixture, rel_err):
    fx, model = _small_model(fixture)
    dims = {0: torch.export.Dim("n", max=64), 2: torch.export.Dim("h", min=33, max=2048),
            3: torch.export.Dim("w", min=33, max=2048)}  # fmt: skip
    exported = torch.export.export(model, (fx.input,), dynamic_shapes={"x": dims}).module()
    x = torch.randn(3, 3, 45, 70)
    with torch.no_grad():
        assert rel_err(exported(fx.input), fx.logits) <= TOL
        assert rel_err(exported(x), model(x)) <= TOL


@pytest.mark.e2e  # the slow tier: inductor compiles in its worker processes
def test_torch_compile_fullgraph(fixture, rel_err):
    fx, model = _small_model(fixture)
    torch._dynamo.reset()
    # aot_eager traces the same single graph inductor would get (fullgraph=True fails on any graph break)
    # without its C++ build; inductor itself is exercised on one DCNv3 layer below.
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert rel_err(compiled(fx.input), fx.logits) <= TOL
    layer = ii.DCNv3(8, 2, offset_scale=2.0).eval()
    torch.nn.init.normal_(layer.offset.weight, std=0.5)
    x = torch.randn(2, 5, 7, 8)
    with torch.no_grad():
        assert rel_err(torch.compile(layer, fullgraph=True)(x), layer(x)) <= TOL


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fixture_on_cuda(fixture, rel_err):
    fx, model = _small_model(fixture)
    with torch.no_grad():
        assert rel_err(model.cuda()(fx.input.cuda()).cpu(), fx.logits) <= TOL
        ref = model.set_dcn_impl("reference")(fx.input.cuda()).cpu()
    assert rel_err(ref, fx.logits) <= TOL
