"""RMT against the official code's outputs, its checkpoint layouts, and its own reference path."""

from __future__ import annotations

import logging

import pytest
import timm
import torch

import zoo
import zoo.rmt as rmt
from zoo import CheckpointMismatchError
from zoo._checkpoint import check_fits


TOL = 1e-4
OFFICIAL_PARAMS = {
    "rmt_t": 14_334_216, "rmt_s": 26_967_240, "rmt_b": 54_154_896, "rmt_l": 95_464_864,
    "rmt_s_tl": 27_480_240, "rmt_b_tl": 54_667_896, "rmt_l_tl": 96_105_864,
}  # fmt: skip
# A small config that still has both MaSA forms, layer scale and odd head counts, for the costlier checks.


def _save_pth(tmp_path, obj, name="ckpt.pth"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("impl", ["auto", "sdpa", "reference"])
@pytest.mark.parametrize("name,zoo_name", [("rmt_tiny", "rmt_t"), ("rmt_tiny_token_label", "rmt_s_tl")])
def test_fixture_logits(fixture, tmp_path, name, zoo_name, impl, rel_err):
    fx = fixture(name)
    path = _save_pth(tmp_path, {"model": fx.state_dict, "epoch": 3})
    model = zoo.load(zoo_name, pretrained=path, attn_impl=impl, **fx.config)
    with torch.no_grad():
        assert rel_err(model(fx.input), fx.logits) <= TOL


def test_fixture_logits_with_gradients_recorded_and_backward(fixture, tmp_path, rel_err):
    """Recording gradients switches the eager rotary from the complex `out=` form (no autograd) to the real one."""
    fx = fixture("rmt_tiny")
    model = zoo.load("rmt_t", pretrained=_save_pth(tmp_path, {"model": fx.state_dict}), **fx.config)
    logits = model(fx.input)
    assert logits.requires_grad and rel_err(logits.detach(), fx.logits) <= TOL
    logits.square().sum().backward()
    grad = model.layers[0].blocks[0].retention.qkv.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("impl", ["auto", "sdpa", "reference"])
def test_fixture_stage_features(fixture, tmp_path, impl, rel_err):
    fx = fixture("rmt_tiny")
    path = _save_pth(tmp_path, {"model": fx.state_dict})
    model = zoo.load("rmt_t", pretrained=path, features_only=True, attn_impl=impl, **fx.config)
    assert model.feature_info.channels() == list(fx.config["embed_dims"])
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        feats = model(fx.input)
    assert [f.shape for f in feats] == [f.shape for f in fx.features]
    for ours, ref in zip(feats, fx.features):
        assert rel_err(ours, ref) <= TOL


def test_ema_weights_preferred_and_reported(fixture, tmp_path, caplog, rel_err):
    fx = fixture("rmt_tiny")
    noisy = {k: v + 0.1 if v.is_floating_point() else v for k, v in fx.state_dict.items()}
    path = _save_pth(tmp_path, {"model": noisy, "model_ema": fx.state_dict})
    with caplog.at_level(logging.INFO, logger="zoo"):
        model = zoo.load("rmt_s", pretrained=path, **fx.config)
    assert model.load_report.entry == "model_ema"
    assert "model_ema" in caplog.text
    with torch.no_grad():
        assert rel_err(model(fx.input), fx.logits) <= TOL


@pytest.mark.parametrize("wrap", ["state_dict", "bare_module_prefix", "safetensors_fused"])
def test_checkpoint_nestings(fixture, tmp_path, wrap, rel_err):
    fx = fixture("rmt_tiny")
    if wrap == "state_dict":
        path = _save_pth(tmp_path, {"state_dict": fx.state_dict})
    elif wrap == "bare_module_prefix":
        path = _save_pth(tmp_path, {f"module.{k}": v for k, v in fx.state_dict.items()})
    else:  # our own fused layout, as saved from a zoo model
        from safetensors.torch import save_file

        src = zoo.load("rmt_t", pretrained=_save_pth(tmp_path, fx.state_dict), **fx.config)
        assert any(".retention.qkv." in k for k in src.state_dict())
        path = tmp_path / "ours.safetensors"
        save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    model = zoo.load("rmt_t", pretrained=path, **fx.config)
    with torch.no_grad():
        assert rel_err(model(fx.input), fx.logits) <= TOL


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_param_counts_match_official(name):
    with torch.device("meta"):
        model = rmt.RMT(**zoo.info(name).arch)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[name]
    assert zoo.info(name).paper_params_m == pytest.approx(OFFICIAL_PARAMS[name] / 1e6)


@pytest.mark.parametrize(
    "official,name,extra",
    [
        ("rmt_t", "rmt_t", {}), ("rmt_s", "rmt_s", {}), ("rmt_b", "rmt_b", {}), ("rmt_l", "rmt_l", {}),
        ("rmt_t_token_label", "rmt_t", {"token_label": True}), ("rmt_s_token_label", "rmt_s_tl", {}),
        ("rmt_b_token_label", "rmt_b_tl", {}), ("rmt_l_token_label", "rmt_l_tl", {}),
    ],
)  # fmt: skip
def test_full_size_official_layouts_fit(official_shapes, official, name, extra):
    with torch.device("meta"):
        model = rmt.RMT(**{**zoo.info(name).arch, **extra})
        state = {k: torch.empty(shape) for k, shape in official_shapes[official].items()}
    check_fits(model, rmt.checkpoint_filter_fn(state, model), official)


def test_dec_2023_layout_is_named(fixture, tmp_path):
    fx = fixture("rmt_tiny")
    old = {k: v for k, v in fx.state_dict.items() if "Relpos" not in k and ".ffn.dwconv." not in k}
    with pytest.raises(CheckpointMismatchError) as err:
        zoo.load("rmt_t", pretrained=_save_pth(tmp_path, {"model": old}), **fx.config)
    msg = str(err.value)
    assert "Dec 2023" in msg and "layers.0.Relpos.angle" in msg and "ffn.dwconv.conv.weight" in msg


def test_wide_aux_head_is_reported_then_loadable(fixture, tmp_path):
    fx = fixture("rmt_tiny_token_label")
    state = dict(fx.state_dict)
    state["aux_head.weight"] = torch.randn(10, 96)  # the 1024-wide S* layout, scaled down to projection=96
    path = _save_pth(tmp_path, {"model": state})
    with pytest.raises(CheckpointMismatchError, match="aux_head_on='proj'") as err:
        zoo.load("rmt_s_tl", pretrained=path, **fx.config)
    assert "aux_head.weight (checkpoint [10, 96], model [10, 64])" in str(err.value)
    model = zoo.load("rmt_s_tl", pretrained=path, aux_head_on="proj", **fx.config)
    with torch.no_grad():
        assert model(fx.input).shape == (2, 10)


def test_wrong_size_names_shapes(fixture, tmp_path):
    fx = fixture("rmt_tiny")
    with pytest.raises(CheckpointMismatchError) as err:
        zoo.load(
            "rmt_t",
            pretrained=_save_pth(tmp_path, {"model": fx.state_dict}),
            **{**fx.config, "embed_dims": [16, 32, 48, 80]},
        )
    assert "28 of another shape" in str(err.value)
    assert "layers.2.downsample.reduction.weight (checkpoint [64, 48, 3, 3], model [80, 48, 3, 3])" in str(err.value)


def test_num_classes_resizes_or_drops_head(fixture, tmp_path, caplog, rel_err):
    fx = fixture("rmt_tiny")
    path = _save_pth(tmp_path, {"model": fx.state_dict})
    config = {k: v for k, v in fx.config.items() if k != "num_classes"}
    with caplog.at_level(logging.INFO, logger="zoo"):
        five = zoo.load("rmt_t", pretrained=path, num_classes=5, **config)
    assert set(five.load_report.dropped) == {"head.weight", "head.bias"} and "dropped" in caplog.text
    pooled = zoo.load("rmt_t", pretrained=path, num_classes=0, **config)
    with torch.no_grad():
        assert five(fx.input).shape == (2, 5)
        feats = pooled(fx.input)
    assert feats.shape == (2, 96)
    full = zoo.load("rmt_t", pretrained=path, **fx.config)
    with torch.no_grad():  # the pooled features are what the loaded head classifies
        assert rel_err(full.head(feats), fx.logits) <= TOL


@pytest.mark.parametrize("size", [(199, 301), (800, 1344)])
def test_features_any_size_match_reference(size, rel_err, rmt_small):
    torch.manual_seed(0)
    model = rmt.RMT(**rmt_small, features_only=True).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        fast = model(x)
        slow = model.set_attn_impl("reference")(x)
    strides = [4, 8, 16, 32]
    for f, s, stride in zip(fast, slow, strides):
        assert f.shape[-2:] == (-(-size[0] // stride), -(-size[1] // stride))
        assert rel_err(f, s) <= TOL


def test_large_grid_paths_equal_full_masks(monkeypatch, rel_err, rmt_small):
    """Where full masks would be large: whole-image attention in row blocks, columns with a compact mask."""
    torch.manual_seed(0)
    model = rmt.RMT(**rmt_small).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        full = model(x)
        monkeypatch.setattr(rmt, "MAX_MASK_ELEMS", 100)
        for layer in model.layers:
            layer.Relpos._cache.clear()
        whole, column = (
            model.layers[2].Relpos.masks(4, 6, torch.float32),
            model.layers[0].Relpos.masks(16, 24, torch.float32),
        )
        assert [m.shape for m in whole] == [(4, 4, 4), (4, 6, 6)]  # 1-D tables, no (HW)^2 mask
        assert column[1].shape == (1, 2, 16, 16)  # compact, not repeated per column
        for impl in ("auto", "sdpa"):
            assert rel_err(model.set_attn_impl(impl)(x), full) <= 1e-6


def _storage_bytes(tensors) -> int:
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


def test_position_cache_is_one_lru_per_model_bounded_by_bytes_and_exact(monkeypatch, rmt_small):
    """Many input sizes: the model's tables never hold more than POSITION_CACHE_BYTES, the least recently used go
    first, tables above the bound on their own are not kept, and every output equals one from fresh tables."""
    torch.manual_seed(0)
    model = rmt.RMT(**rmt_small).eval()
    cache = model.layers[0].Relpos._cache
    assert all(layer.Relpos._cache is cache for layer in model.layers)
    monkeypatch.setattr(rmt, "POSITION_CACHE_BYTES", 256 << 10)
    sizes = [(32 + 4 * i, 48 + 2 * i) for i in range(16)]
    inputs = {s: torch.randn(1, 3, *s) for s in sizes}
    first = {}
    with torch.no_grad():
        for size in sizes:
            first[size] = model(inputs[size])
            grids = [f.shape[-2:] for f in model.forward_intermediates(inputs[size], intermediates_only=True)]
            entries = list(cache._entries.values())
            assert cache.nbytes == sum(n for _, n in entries) == sum(_storage_bytes(t) for t, _ in entries)
            assert 0 < cache.nbytes <= rmt.POSITION_CACHE_BYTES
            stages = [layer.Relpos._stage_id for layer in model.layers]
            assert list(cache._entries)[-4:] == [
                (s, *g, torch.float32, torch.device("cpu")) for s, g in zip(stages, grids)
            ]
        assert len(cache) < 4 * len(sizes)  # the bound evicted
        for size in reversed(sizes):  # recent sizes hit, evicted ones are rebuilt
            assert torch.equal(model(inputs[size]), first[size])
        monkeypatch.setattr(rmt, "POSITION_CACHE_BYTES", 1024)
        cache.clear()
        assert torch.equal(model(inputs[sizes[-1]]), first[sizes[-1]])
        assert all(n <= 1024 for _, n in cache._entries.values()) and cache.nbytes <= 1024


def test_position_cache_follows_loaded_buffers(fixture, rel_err):
    fx = fixture("rmt_tiny")
    model = rmt.RMT(**fx.config).eval()
    with torch.no_grad():
        model(fx.input)  # fills the cache with tables from the initial buffers
        state = rmt.checkpoint_filter_fn({**fx.state_dict, "layers.0.Relpos.decay": torch.tensor([-0.5, -0.05])}, model)
        model.load_state_dict(state)
        cached = model(fx.input)
        fresh = model.set_attn_impl("reference")(fx.input)
    assert rel_err(cached, fresh) <= TOL
    assert rel_err(cached, fx.logits) > TOL  # the new decay really took effect


@pytest.mark.e2e  # the slow tier: inductor compiles in its worker processes, then an export
@pytest.mark.parametrize("impl", ["auto", "sdpa"])  # auto on CPU mixes matmul-softmax and SDPA; sdpa as on GPUs
def test_compile_fullgraph_and_export(impl, rel_err, rmt_small):
    """Also after an eager forward under inference_mode has filled the position cache."""
    torch.manual_seed(0)
    model = rmt.RMT(**rmt_small, attn_impl=impl).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.inference_mode():
        eager = model(x)
    torch._dynamo.reset()
    assert torch._dynamo.explain(model)(x).graph_break_count == 0
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        assert rel_err(compiled(x), eager) <= 1e-5
    exported = torch.export.export(model, (x,))
    assert rel_err(exported.module()(x), eager) <= 1e-5


@pytest.mark.parametrize("chunkwise", [True, False])
def test_flex_attention_matches_sdpa(chunkwise, rel_err):
    torch.manual_seed(0)
    relpos = rmt.DecayPosition(32, 4, 2, 4, chunkwise)
    masa = rmt.ManhattanSelfAttention(32, 4, chunkwise).eval()
    x = torch.randn(2, 5, 7, 32)
    with torch.no_grad():
        masa.attn_impl = "sdpa"
        sdpa = masa(x, relpos(5, 7, x.dtype), relpos.decay)
        masa.attn_impl = "matmul"
        assert rel_err(masa(x, relpos(5, 7, x.dtype), relpos.decay), sdpa) <= 1e-5
        masa.attn_impl = "flex"
        flex = masa(x, relpos(5, 7, x.dtype), relpos.decay)
    assert rel_err(flex, sdpa) <= TOL


def test_registered_with_timm_and_data_config():
    model = timm.create_model("rmt_t", pretrained=False, num_classes=7)
    assert isinstance(model, rmt.RMT) and model.head.out_features == 7
    cfg = timm.data.resolve_data_config({}, model=model)
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic"


def test_drop_path_rate_rises_linearly():
    model = zoo.load("rmt_t", drop_path_rate=0.3)
    blocks = [b for layer in model.layers for b in layer.blocks]
    assert isinstance(blocks[0].drop_path, torch.nn.Identity)
    assert blocks[-1].drop_path.drop_prob == pytest.approx(0.3)


def test_bad_attn_impl_is_one_sentence(rmt_small):
    with pytest.raises(ValueError, match="attn_impl must be one of auto, matmul, sdpa, flex, reference"):
        rmt.RMT(**rmt_small, attn_impl="cuda")


@pytest.mark.parametrize("impl", ["auto", "sdpa"])
def test_bf16_autocast_stays_within_bf16_tolerance(impl, rel_err, rmt_small):
    torch.manual_seed(0)
    model = rmt.RMT(**rmt_small, attn_impl=impl).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = model.set_attn_impl("reference")(x)
        model.set_attn_impl(impl)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.dtype == torch.bfloat16
    assert 0 < rel_err(low.float(), ref) <= 3e-2


def test_training_checkpoint_with_args_and_plain_weights_for_rmt_t(fixture, tmp_path, rel_err):
    """Official training checkpoints carry their argparse options; RMT-T reports its plain (non-EMA) weights."""
    import argparse

    fx = fixture("rmt_tiny")
    noisy = {k: v + 0.1 if v.is_floating_point() else v for k, v in fx.state_dict.items()}
    ckpt = {
        "model": fx.state_dict,
        "model_ema": noisy,
        "args": argparse.Namespace(lr=1e-3, model="RMT_T3"),
        "epoch": 299,
    }
    model = zoo.load("rmt_t", pretrained=_save_pth(tmp_path, ckpt), **fx.config)
    assert model.load_report.entry == "model"
    with torch.no_grad():
        assert rel_err(model(fx.input), fx.logits) <= TOL
    assert zoo.load("rmt_s", pretrained=_save_pth(tmp_path, ckpt), **fx.config).load_report.entry == "model_ema"


@pytest.mark.parametrize(
    "device, size, chunkwise, calls",
    [
        ("meta", (5, 7), True, [("matmul", 7), ("matmul", 5)]),  # a GPU-like device, rows then columns: short
        ("meta", (5, 7), False, [("matmul", 35)]),  # whole image of 35 keys: still short
        ("meta", (9, 8), False, [("sdpa", 72)]),  # whole image of 72 keys: SDPA
        ("meta", (3, 80), True, [("sdpa", 80), ("matmul", 3)]),  # rows of 80 keys: SDPA; columns of 3: matmul
        ("cpu", (9, 8), False, [("matmul", 72)]),  # CPU eager: matmul-softmax at any length
    ],
)
def test_auto_attention_kernel_by_device_and_row_length(monkeypatch, device, size, chunkwise, calls):
    """The "auto" kernel choice: batched matmul-softmax for rows of at most SHORT_ROW keys on every device, SDPA for
    longer rows off the CPU; the (kernel, keys) of each attention call are recorded."""
    seen = []

    def recording(kernel: str, real):
        def attend(q, k, v, bias):
            seen.append((kernel, k.shape[-2]))
            return real(q, k, v, bias)

        return attend

    monkeypatch.setattr(rmt, "_sdpa", recording("sdpa", rmt._sdpa))
    monkeypatch.setattr(rmt, "_matmul_softmax", recording("matmul", rmt._matmul_softmax))
    relpos = rmt.DecayPosition(32, 4, 2, 4, chunkwise).to(device)
    masa = rmt.ManhattanSelfAttention(32, 4, chunkwise).eval().to(device)
    x = torch.randn(1, *size, 32, device=device)
    with torch.no_grad():
        masa(x, relpos(*size, x.dtype), relpos.decay)
    assert rmt.SHORT_ROW == 64 and seen == calls
