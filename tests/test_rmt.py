"""RMT against the official code's outputs, its checkpoint layouts, and its own reference path."""

from __future__ import annotations

import collections
import copy
import logging

import pytest
import timm
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

import zoo
import zoo.rmt as rmt

# The speed machinery and the attention paths are tested here as units, beside the model they serve: each test
# names the private module it reaches into, and no other test module does.
from zoo import _retention, _rmt_fast, _rmt_reference
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


@pytest.mark.variants
@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_param_counts_match_official(name):
    with torch.device("meta"):
        model = rmt.RMT(**zoo.info(name).arch)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[name]
    assert zoo.info(name).paper_params_m == pytest.approx(OFFICIAL_PARAMS[name] / 1e6)


@pytest.mark.variants("rmt_s_tl")
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


@pytest.mark.parametrize("size", [(199, 301), pytest.param((800, 1344), marks=pytest.mark.e2e)])  # dense: slow tier
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
        monkeypatch.setattr(_retention, "MAX_MASK_ELEMS", 100)
        for layer in model.layers:
            layer.Relpos._cache.clear()
        whole, column = (
            model.layers[2].Relpos(4, 6, torch.float32)[2:],
            model.layers[0].Relpos(16, 24, torch.float32)[2:],
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
    monkeypatch.setattr(_rmt_fast, "POSITION_CACHE_BYTES", 256 << 10)
    sizes = [(32 + 4 * i, 48 + 2 * i) for i in range(16)]
    inputs = {s: torch.randn(1, 3, *s) for s in sizes}
    first = {}
    with torch.no_grad():
        for size in sizes:
            first[size] = model(inputs[size])
            grids = [f.shape[-2:] for f in model.forward_intermediates(inputs[size], intermediates_only=True)]
            entries = list(cache._entries.values())
            assert cache.nbytes == sum(n for _, n in entries) == sum(_storage_bytes(t) for t, _ in entries)
            assert 0 < cache.nbytes <= _rmt_fast.POSITION_CACHE_BYTES
            stages = [layer.Relpos._stage_id for layer in model.layers]
            assert list(cache._entries)[-4:] == [
                (s, *g, torch.float32, torch.device("cpu")) for s, g in zip(stages, grids)
            ]
        assert len(cache) < 4 * len(sizes)  # the bound evicted
        for size in reversed(sizes):  # recent sizes hit, evicted ones are rebuilt
            assert torch.equal(model(inputs[size]), first[size])
        monkeypatch.setattr(_rmt_fast, "POSITION_CACHE_BYTES", 1024)
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
@pytest.mark.parametrize(
    "impl, mode, batch", [("auto", "default", 2), ("sdpa", "reduce-overhead", 1)]
)  # auto on CPU mixes matmul-softmax and SDPA; sdpa as on GPUs, in the batch-1 CUDA-graphs mode
def test_compile_fullgraph_and_export(impl, mode, batch, rel_err, rmt_small):
    """Also after an eager forward under inference_mode has filled the position cache. reduce-overhead (CUDA graphs)
    compiles without graph breaks too; on CPU inductor runs it without graphs."""
    torch.manual_seed(0)
    model = rmt.RMT(**rmt_small, attn_impl=impl).eval()
    x = torch.randn(batch, 3, 64, 96)
    with torch.inference_mode():
        eager = model(x)
    torch._dynamo.reset()
    assert torch._dynamo.explain(model)(x).graph_break_count == 0
    compiled = torch.compile(model, mode=mode, fullgraph=True)
    with torch.no_grad():
        for _ in range(3):  # warm-up calls, then the recorded one under CUDA graphs
            out = compiled(x)
        assert rel_err(out, eager) <= 1e-5
    exported = torch.export.export(model, (x,))
    assert rel_err(exported.module()(x), eager) <= 1e-5


@pytest.mark.e2e  # flex_attention compiles its kernel, 5-15 s on 2 cores
@pytest.mark.parametrize("chunkwise", [True, False])
def test_flex_attention_matches_sdpa(chunkwise, rel_err):
    torch.manual_seed(0)
    relpos = rmt.DecayPosition(32, 4, 2, 4, chunkwise)
    masa = rmt.ManhattanSelfAttention(32, 4, chunkwise).eval()
    x = torch.randn(2, 5, 7, 32)
    with torch.no_grad():
        sdpa = masa(x, relpos(5, 7, x.dtype), relpos.decay, "sdpa")
        assert rel_err(masa(x, relpos(5, 7, x.dtype), relpos.decay, "matmul"), sdpa) <= 1e-5
        flex = masa(x, relpos(5, 7, x.dtype), relpos.decay, "flex")
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


def test_set_attn_impl_is_the_one_switch(monkeypatch, rmt_small):
    """The constructor's and set_attn_impl's choice reaches every block: each attention call runs the path named,
    and "reference" runs the official-shaped blocks instead (no call of the fast attention at all)."""
    seen = []
    attend, block = rmt.attend, _rmt_reference.block
    monkeypatch.setattr(rmt, "attend", lambda impl, *a: seen.append(impl) or attend(impl, *a))
    monkeypatch.setattr(_rmt_reference, "block", lambda *a: seen.append("official block") or block(*a))
    model = rmt.RMT(**rmt_small, attn_impl="sdpa").eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        model(x)
        assert seen == ["sdpa"] * 4
        seen.clear()
        model.set_attn_impl("reference")(x)
        assert seen == ["official block"] * 4
        seen.clear()
        model.set_attn_impl("matmul")(x)
    assert seen == ["matmul"] * 4


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

    monkeypatch.setattr(_retention, "sdpa", recording("sdpa", _retention.sdpa))
    monkeypatch.setattr(_retention, "matmul_softmax", recording("matmul", _retention.matmul_softmax))
    relpos = rmt.DecayPosition(32, 4, 2, 4, chunkwise).to(device)
    masa = rmt.ManhattanSelfAttention(32, 4, chunkwise).eval().to(device)
    x = torch.randn(1, *size, 32, device=device)
    with torch.no_grad():
        masa(x, relpos(*size, x.dtype), relpos.decay)
    assert _retention.SHORT_ROW == 64 and seen == calls


class _OpCounter(TorchDispatchMode):
    """Counts the aten ops a forward dispatches (by name) and the dtypes softmax sees."""

    def __init__(self):
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()
        self.softmax_dtypes: set[torch.dtype] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.ops[name] += 1
        if name == "_softmax":
            self.softmax_dtypes.add(args[0].dtype)
        return func(*args, **(kwargs or {}))


def test_attention_core_has_no_fp32_softmax_round_trip_under_cuda_autocast(monkeypatch):
    """CUDA's autocast runs softmax in fp32: on bf16 scores that is a cast to fp32 and one back before the second
    matmul. With q, k, v already bf16, the core runs outside autocast; traced on fake CUDA tensors (no driver), the
    device's real autocast policy applies."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    mode = FakeTensorMode()
    fake = lambda t: mode.fake_tensor_converter.from_meta_and_device(mode, t.to("meta"), torch.device("cuda"))  # noqa: E731
    q, k, v = (fake(torch.empty(8, 4, 56, 16, dtype=torch.bfloat16)) for _ in range(3))
    bias = fake(torch.empty(1, 4, 56, 56, dtype=torch.bfloat16))
    with mode, torch.no_grad(), torch.autocast("cuda", torch.bfloat16), _OpCounter() as seen:
        out = _retention.matmul_softmax(q, k, v, bias)
    assert out.dtype == torch.bfloat16 and out.device.type == "cuda"
    assert seen.ops["_to_copy"] == 0 and seen.softmax_dtypes == {torch.bfloat16}
    with mode, torch.no_grad(), torch.autocast("cuda", torch.bfloat16), _OpCounter() as seen:
        torch.softmax(torch.matmul(q, k.transpose(-1, -2)).add_(bias), -1)
    assert seen.ops["_to_copy"] >= 1 and seen.softmax_dtypes == {torch.float32}  # what the policy would do


def test_attention_core_in_bf16_stays_within_tolerance_and_fp32_is_unchanged(rel_err):
    torch.manual_seed(0)
    q, k, v = (torch.randn(6, 4, 49, 16) for _ in range(3))
    bias = -torch.rand(1, 4, 49, 49)
    exact = torch.softmax(q @ k.transpose(-1, -2) + bias, -1) @ v
    assert torch.equal(_retention.matmul_softmax(q, k, v, bias), torch.matmul(torch.softmax(q @ k.mT + bias, -1), v))
    with torch.autocast("cpu", torch.bfloat16), _OpCounter() as seen:
        low = _retention.matmul_softmax(*(t.bfloat16() for t in (q, k, v)), bias.bfloat16())
    assert low.dtype == torch.bfloat16 and seen.softmax_dtypes == {torch.bfloat16}
    assert rel_err(low.float(), exact) <= 3e-2


def _eager_ops(model: torch.nn.Module, x: torch.Tensor) -> collections.Counter:
    with torch.no_grad(), _OpCounter() as seen:
        model(x)
    return seen.ops


def _forget_folded(model: torch.nn.Module) -> torch.nn.Module:
    for conv in model.modules():
        if isinstance(conv, _rmt_fast.DWConv2d):
            conv._kept = None
    return model


def test_folded_conv_weights_kept_and_refreshed_when_weights_change(rmt_small):
    """The residual depthwise convs' folded kernels are built once per weight version in eager no-grad forwards
    (no per-call new_ones/pad/add), and every way weights change (optimizer steps with and without foreach,
    in-place edits, load_state_dict, dtype casts) gives the output of a model built fresh from those weights."""
    torch.manual_seed(0)
    model = rmt.RMT(**rmt_small).eval()
    x = torch.randn(2, 3, 64, 96)
    _eager_ops(model, x)  # builds the position tables too
    _forget_folded(model)
    first, again = _eager_ops(model, x), _eager_ops(model, x)
    assert first["constant_pad_nd"] == 8 and "constant_pad_nd" not in again and "new_ones" not in again
    assert sum(again.values()) == sum(first.values()) - 3 * 8  # 2 residual convs in each of 4 blocks

    def check(m: torch.nn.Module) -> None:
        fresh = _forget_folded(copy.deepcopy(m))
        with torch.no_grad():
            assert torch.equal(m(x.to(next(m.parameters()).dtype)), fresh(x.to(next(m.parameters()).dtype)))

    with torch.no_grad():
        before = model(x)
    for foreach in (False, True):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, foreach=foreach)
        model.train()
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
        model.eval()
        check(model)
    with torch.no_grad():
        assert not torch.equal(model(x), before)
        model.layers[0].blocks[0].pos.conv.weight.mul_(2)
    check(model)
    model.load_state_dict(rmt.RMT(**rmt_small).state_dict())
    check(model)
    check(model.double())


def test_folded_conv_weights_recomputed_where_gradients_are_recorded(rmt_small):
    """Training and any grad-enabled forward build the folded kernel from the parameter, so its gradient flows."""
    torch.manual_seed(0)
    model = rmt.RMT(**rmt_small).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        model(x)  # keeps folded kernels
    model(x).sum().backward()
    for conv in (model.layers[0].blocks[0].pos.conv, model.layers[1].blocks[0].ffn.dwconv.conv):
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_depthwise_taps_equal_the_conv(kernel_size, rel_err):
    torch.manual_seed(0)
    conv = _rmt_fast.DWConv2d(24, kernel_size, residual=kernel_size == 3)
    x = torch.randn(2, 24, 9, 13).permute(0, 2, 3, 1)  # NCHW memory seen as (B, H, W, C), as a stage's first block
    with torch.no_grad():
        weight, bias = conv._weights(x)
        assert rel_err(_rmt_fast.depthwise_taps(x, weight, bias), conv(x)) <= 1e-6


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_autocast_dtype_traces_fullgraph(autocast):
    """The helpers that ask autocast's dtype trace without graph breaks (torch 2.11's dynamo cannot trace
    torch.amp.is_autocast_available: fullgraph failed there, on the GPU machine's version, and not on later ones)."""
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, 7, 16).bfloat16()
    bias = torch.zeros(1, 2, 7, 7).bfloat16()
    x, weight = torch.randn(1, 5, 6, 8), torch.randn(8, 1, 3, 3)

    def core(q, k, v, bias, x, weight):
        return _retention.matmul_softmax(q, k, v, bias), _rmt_fast.depthwise_taps(x, weight, None)

    torch._dynamo.reset()
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        eager = core(q, k, v, bias, x, weight)
        compiled = torch.compile(core, fullgraph=True, backend="eager")(q, k, v, bias, x, weight)
    for a, b in zip(compiled, eager):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert compiled[1].dtype == (torch.bfloat16 if autocast else torch.float32)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
def test_compiled_graphs_add_fc1_bias_apart(monkeypatch, autocast):
    """In inference graphs compiled for BIAS_APART_DEVICES (CUDA; here CPU stands for it) a linear's bias is added
    after a bias-free matmul, in the matmul's dtype, so inductor adds it inside the next elementwise kernel (the GPU
    proxy: one launch fewer per FFN); training graphs and other devices keep addmm. The result is the layer's, to a
    bf16 rounding under autocast."""
    from torch.fx.experimental.proxy_tensor import make_fx

    torch.manual_seed(0)
    layer, x = torch.nn.Linear(32, 48), torch.randn(2, 5, 32)
    monkeypatch.setattr(_rmt_fast, "BIAS_APART_DEVICES", ("cpu",))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        with torch.enable_grad():  # a training graph keeps addmm
            assert torch.ops.aten.addmm.default in {
                n.target for n in make_fx(lambda t: _rmt_fast.linear(layer, t))(x).graph.nodes
            }
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        graph = make_fx(lambda t: _rmt_fast.linear(layer, t))(x)
        ours, ref = _rmt_fast.linear(layer, x), layer(x)
    ops = {node.target for node in graph.graph.nodes if node.op == "call_function"}
    assert torch.ops.aten.addmm.default not in ops and torch.ops.aten.add.Tensor in ops
    assert ours.dtype == ref.dtype and torch.allclose(ours.float(), ref.float(), atol=2e-2 if autocast else 1e-6)
    monkeypatch.setattr(_rmt_fast, "BIAS_APART_DEVICES", ("cuda",))
    with torch.no_grad():
        eager = {n.target for n in make_fx(lambda t: _rmt_fast.linear(layer, t))(x).graph.nodes}
    assert torch.ops.aten.addmm.default in eager


@pytest.mark.e2e  # the slow tier: dynamo traces the whole model
def test_compiled_depthwise_taps_fullgraph(monkeypatch, rel_err, rmt_small):
    """The shifted multiply-add form is what compiled graphs take on CUDA; here it is forced on CPU. aot_eager runs
    the traced graph (the path taken and its numbers) without inductor's C++ build of every tap, 85 s cold on 2 cores;
    inductor's build of the model is test_compile_fullgraph_and_export's."""
    torch.manual_seed(0)
    model = rmt.RMT(**rmt_small).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        eager = model(x)
    monkeypatch.setattr(_rmt_fast, "SHIFTED_CONV_DEVICES", ("cpu",))
    monkeypatch.setattr(_rmt_fast, "BIAS_APART_DEVICES", ("cpu",))  # fc1's bias added apart too
    torch._dynamo.reset()
    seen = []
    real = _rmt_fast.depthwise_taps
    monkeypatch.setattr(_rmt_fast, "depthwise_taps", lambda *a: seen.append(a[1].shape[-1]) or real(*a))
    with torch.no_grad():
        assert rel_err(torch.compile(model, backend="aot_eager", fullgraph=True)(x), eager) <= 1e-5
    assert sorted(set(seen)) == [3, 5] and len(seen) == 3 * 4  # pos, lepe, ffn dwconv in each of 4 blocks


# --- fused paths read module parameters only where the module is plain ------------------------------------------------


class _Shifted(torch.nn.Linear):
    """A linear whose own forward differs from its parameters' (as a LoRA or quantizer wrapper's would): + 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + 1


def test_plain_is_the_exact_module_type():
    assert _rmt_fast.plain(torch.nn.Linear(2, 2), torch.nn.Linear)
    assert not _rmt_fast.plain(_Shifted(2, 2), torch.nn.Linear)
    assert _rmt_fast.plain(torch.nn.GELU(), torch.nn.GELU) and not _rmt_fast.plain(torch.nn.GELU("tanh"), torch.nn.GELU)


def test_masa_calls_a_wrapped_qkv():
    """MaSA's plain path splits qkv's weight into the q/k and v matmuls; a wrapped qkv is called instead, so its own
    forward counts (here: as a bias 1 larger)."""
    torch.manual_seed(0)
    relpos = rmt.DecayPosition(32, 2, 2, 4, True)
    masa = rmt.ManhattanSelfAttention(32, 2, True).eval()
    wrapped, biased = copy.deepcopy(masa), copy.deepcopy(masa)
    wrapped.qkv = _Shifted(32, 96)
    wrapped.qkv.load_state_dict(masa.qkv.state_dict())
    biased.qkv.bias.data += 1
    x = torch.randn(2, 5, 7, 32)
    with torch.no_grad():
        args = (relpos(5, 7, x.dtype), relpos.decay, "matmul")
        assert torch.allclose(wrapped(x, *args), biased(x, *args), atol=1e-6)
        assert not torch.allclose(wrapped(x, *args), masa(x, *args), atol=1e-3)


def test_fused_paths_keep_a_wrapped_or_replaced_module(monkeypatch):
    """The taps kernel (fc1's bias and GELU inside), the LayerNorms inside the matmuls and fc1's bias apart are taken
    only with plain modules: a wrapped fc1 or another activation keeps the module calls."""
    monkeypatch.setattr(rmt.DWConv2d, "takes_kernel", lambda self, x: True)
    x = torch.randn(1, 2, 2, 16)
    ffn = rmt.FeedForward(16, 48)
    assert ffn._taps_fused(x)
    ffn.act = torch.nn.ReLU()
    assert not ffn._taps_fused(x)
    block = rmt.RetBlock(16, 2, 3, True, 0.0, None)
    assert block._plain() and block.ffn._taps_fused(x)
    block.ffn.fc1 = _Shifted(16, 48)
    assert not block._plain() and not block.ffn._taps_fused(x)
    monkeypatch.setattr(_rmt_fast, "BIAS_APART_DEVICES", ("cpu",))
    monkeypatch.setattr(_rmt_fast, "in_graph", lambda: True)
    layer = _Shifted(16, 8)
    with torch.no_grad():
        assert torch.equal(_rmt_fast.linear(layer, x), layer(x))
