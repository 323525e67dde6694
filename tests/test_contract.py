"""timm's model contract, over every model of the zoo: what timm's own tests/test_models.py checks.

Every check builds each variant at its full widths (heads, layer scale, token labelling, post-norm as they are)
with one block per stage: depth changes no shape, and the full-depth layouts and parameter counts are checked
against the official ones in test_rmt.py and test_internimage.py. Shapes and the interface are checked at the
default input on the meta device (no memory, no compute); numbers (FX against eager, gradients reaching every
parameter, grad checkpointing, intermediates against forward_features) on the zoo's own families.
"""

from __future__ import annotations

import contextlib
import copy
import math

import pytest
import timm
import torch
from timm.layers import get_channel_dim, get_spatial_dim
from timm.models import FeatureInfo, get_notrace_functions, get_notrace_modules, group_parameters
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import zoo

ALL = zoo.list_models()
OURS = [name for f in zoo.families().values() if f.built_by == "zoo" for name in zoo.list_models(family=f.name)]
ONE_BLOCK = dict(depths=(1, 1, 1, 1))


def _input(model: torch.nn.Module, device: str = "meta", batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, *model.pretrained_cfg["input_size"], device=device)


def test_our_models_are_registered_with_timm_and_their_cfgs():
    for name in OURS:
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg is not None and cfg.hf_hub_id == zoo.info(name).hf_hub_id
        assert name in timm.list_models(name_matches_cfg=True) and name in timm.list_pretrained(name)


@pytest.mark.variants("rmt_s_tl")
@pytest.mark.parametrize("name", ALL)
def test_interface_shapes_and_cfg_at_full_width(name):
    """timm's test_model_default_cfgs, on the meta device."""
    with torch.device("meta"):
        model = zoo.load(name, **ONE_BLOCK)
        cfg = model.default_cfg
        assert cfg is model.pretrained_cfg and model.num_classes == 1000
        assert model.num_features > 0 and model.head_hidden_size > 0
        x = _input(model)
        fmt = getattr(model, "output_fmt", "NCHW")
        spatial, channel = get_spatial_dim(fmt), get_channel_dim(fmt)
        features = model.forward_features(x)
        pre = model.forward_head(features, pre_logits=True)
        assert [features.shape[i] for i in spatial] == list(cfg["pool_size"])
        assert features.shape[channel] == model.num_features and pre.shape == (1, model.head_hidden_size)
        assert model(x).shape == (1, 1000)
        state = model.state_dict()
        classifiers = cfg["classifier"] if isinstance(cfg["classifier"], (tuple, list)) else (cfg["classifier"],)
        assert all(f"{c}.weight" in state for c in classifiers) and f"{cfg['first_conv']}.weight" in state
        assert model.get_classifier() is model.get_submodule(classifiers[0])

        model.reset_classifier(0)
        assert model.num_classes == 0 and model(x).shape == pre.shape
        model.reset_classifier(0, "")
        unpooled = model(x)
        assert unpooled.ndim == 4 and [unpooled.shape[i] for i in spatial] == list(cfg["pool_size"])
        bare = zoo.load(name, num_classes=0, global_pool="", **ONE_BLOCK)
        assert bare(x).ndim == 4
        gray = zoo.load(name, in_chans=1, drop_rate=0.1, drop_path_rate=0.2, **ONE_BLOCK)  # timm's common arguments
        assert gray(x[:, :1]).shape == (1, 1000)


@pytest.mark.variants("rmt_s_tl")
@pytest.mark.parametrize("name", OURS)
def test_default_cfgs_non_std_as_timm_checks_it(name):
    """timm's test_model_default_cfgs_non_std, check for check: the channel axis comes from `feature_dim`,
    a model reset with reset_classifier(0) gives head_hidden_size-wide outputs and one built with num_classes=0
    num_features-wide ones (the projection ends forward_features wherever a head does not read the stage)."""
    with torch.device("meta"):
        model = zoo.load(name, **ONE_BLOCK)
        assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
        x = _input(model)
        feat_dim = model.feature_dim
        features = model.forward_features(x)
        pre = model.forward_head(features, pre_logits=True)
        assert features.ndim == 4 and feat_dim % 4 == get_channel_dim(model.output_fmt)
        assert features.shape[feat_dim] == model.num_features and pre.shape[1] == model.head_hidden_size
        model.reset_classifier(0)
        pooled = model(x)
        assert model.num_classes == 0 and pooled.shape[feat_dim] == model.head_hidden_size and pooled.shape == pre.shape
        headless = zoo.load(name, num_classes=0, **ONE_BLOCK)
        assert headless(x).shape[feat_dim] == headless.num_features


def test_token_labelling_head_reads_the_stage_and_a_headless_model_ends_projected():
    """RMT-S*'s aux_head reads the last stage's 512-wide tokens, so its forward_features stops there; without
    classes nothing reads them and forward_features ends with the projection, as for the other variants."""
    with torch.device("meta"):
        tl, plain, headless = zoo.load("rmt_s_tl"), zoo.load("rmt_s"), zoo.load("rmt_s_tl", num_classes=0)
        assert (tl.projection_at, tl.num_features, tl.aux_head.in_features) == ("head", 512, 512)
        assert (plain.projection_at, plain.num_features) == (headless.projection_at, headless.num_features)
        assert headless.projection_at == "features" and headless.num_features == headless.head_hidden_size == 1024
        headless.reset_classifier(5)  # a fresh token head then reads the tokens forward_features returns
        assert headless.aux_head.in_features == 1024 and headless(_input(headless)).shape == (1, 5)


@pytest.mark.variants("rmt_s_tl")
@pytest.mark.parametrize("name", ALL)
def test_intermediates_and_features_only_at_full_width(name):
    """timm's test_model_forward_intermediates and test_model_forward_features, on the meta device."""
    with torch.device("meta"):
        model = zoo.load(name, **ONE_BLOCK)
        info = FeatureInfo(model.feature_info, len(model.feature_info))
        x = _input(model)
        final, inters = model.forward_intermediates(x, output_fmt="NCHW")
        assert final.shape == model.forward_features(x).shape
        dense = [i for i, r in enumerate(info.reduction()) if 4 <= r <= 32]
        assert len(inters) == len(info.channels()) >= 3
        for c, r, t in zip(info.channels(), info.reduction(), inters):
            assert t.shape[1] == c and t.shape[-1] <= math.ceil(x.shape[-1] / r) + 1
        backbone = zoo.load(name, features_only=True, **ONE_BLOCK)
        feats = backbone(x)
        assert len(feats) == len(backbone.feature_info.channels()) == len(dense)
        assert [f.shape[1] for f in feats] == backbone.feature_info.channels()
        assert backbone.feature_info.reduction() == [4, 8, 16, 32]


@pytest.mark.variants
@pytest.mark.parametrize("name", ALL)
def test_group_matcher_places_every_parameter(name):
    """Layer-wise decay needs every parameter in a group, the stem first and the stages in order."""
    with torch.device("meta"):
        model = zoo.load(name)
    groups = group_parameters(model, model.group_matcher(coarse=False))
    placed = {p for names in groups.values() for p in names}
    assert placed == {n for n, _ in model.named_parameters()}
    assert len(groups) > 5 and any("patch_embed" in p or "stem" in p for p in groups[min(groups)])


@pytest.mark.filterwarnings("ignore:NOTE. The nodes obtained by tracing")
@pytest.mark.variants("rmt_s_tl")  # and the token-labelling head
@pytest.mark.parametrize("name", OURS)
def test_fx_trace_and_backward_and_grad_checkpointing(name):
    """timm's test_model_forward_fx, test_model_backward(_fx) and grad-checkpointing checks, one block per stage."""
    torch.manual_seed(0)
    model = zoo.load(name, num_classes=42, **ONE_BLOCK).eval()
    x = torch.randn(2, 3, 64, 64)
    tracer = dict(
        leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(), param_shapes_constant=True
    )
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer)
    fx = create_feature_extractor(
        model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer
    )
    with torch.no_grad():
        eager = model(x)
        assert torch.allclose(fx(x)[eval_nodes[-1]], eager, atol=1e-5)
        _, before = model.forward_intermediates(x)
        model.set_grad_checkpointing()
        assert torch.allclose(model(x), eager, rtol=1e-4, atol=1e-5)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(model.forward_intermediates(x)[1], before))
    for net in (model.train(), fx.train()):
        net.zero_grad()
        out = net(x)
        out = out if isinstance(out, torch.Tensor) else next(iter(out.values()))
        assert out.shape == (2, 42)
        out.mean().backward()
        missing = [n for n, p in net.named_parameters() if p.grad is None]
        assert not missing, missing


@pytest.mark.variants("rmt_s_tl")
@pytest.mark.parametrize("name", OURS)
def test_prune_intermediate_layers_and_getter_features(name):
    """timm's features_only with feature_cls='getter' and prune_intermediate_layers, one block per stage."""
    model = zoo.load(name, **ONE_BLOCK)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        full = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert model.prune_intermediate_layers(indices=(0, 1)) == [0, 1]
        pruned = model.forward_intermediates(x, indices=(0, 1), intermediates_only=True)
        assert [t.shape[1] for t in pruned] == [f["num_chs"] for f in model.feature_info[:2]]
        getter = timm.create_model(name, features_only=True, feature_cls="getter", out_indices=(-2, -1), **ONE_BLOCK)
        feats = getter(x)
    assert len(full) == 2 and [f.shape for f in feats] == [f.shape for f in full]
    assert getter.output_fmt == "NCHW" and getter.feature_info.reduction() == [16, 32]


@pytest.mark.parametrize("name", ["rmt_t", "rmt_s_tl", "internimage_t"])
def test_pruning_keeps_the_projection_while_forward_features_ends_with_it(name):
    """As timm's EfficientNet treats its conv head: pruning the head alone keeps a projection that ends
    forward_features; dropping a stage or prune_norm drops it; a projection that opens the head goes with it."""
    with torch.device("meta"):
        x = _input(zoo.load(name, **ONE_BLOCK))
        kept = zoo.load(name, **ONE_BLOCK)  # the widths decide; depth only adds time
        width = kept.head_hidden_size if kept.projection_at == "features" else kept.feature_info[-1]["num_chs"]
        kept.prune_intermediate_layers(indices=4)
        final, _ = kept.forward_intermediates(x)
        assert final.shape == kept.forward_features(x).shape and final.shape[-1] == width
        assert kept(x).shape == (1, width) and kept.num_classes == 0
        cut = zoo.load(name, **ONE_BLOCK)
        cut.prune_intermediate_layers(indices=(0, 1, 2))
        normless = zoo.load(name, **ONE_BLOCK)
        normless.prune_intermediate_layers(indices=4, prune_norm=True)
        for model in (cut, normless):
            assert model.projection_at == "none" and all(getattr(model, m) is None for m in model.projection_modules)
        assert normless.forward_features(x).shape[-1] == normless.feature_info[-1]["num_chs"]


AUTOGRAD_MODES = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad, "grad": contextlib.nullcontext}


@pytest.mark.e2e  # the slow tier: forward and backward passes in float32 and float64, 1-2 s each
@pytest.mark.parametrize("first", AUTOGRAD_MODES)
@pytest.mark.parametrize("name", ["rmt_t", "rmt_s", "internimage_t"])  # RMT: whole-image and decomposed stage 3
def test_a_forward_in_any_autograd_mode_leaves_nothing_that_changes_later_ones(name, first):
    """What a forward under inference_mode, no_grad or recording gradients leaves in a model (RMT's cached position
    tables) serves a later training step, inference and a move to float64 exactly as a fresh model does."""
    torch.manual_seed(0)
    used = zoo.load(name, num_classes=5, drop_path_rate=0.0, **ONE_BLOCK)
    fresh = copy.deepcopy(used)
    x = torch.randn(2, 3, 64, 96)
    with AUTOGRAD_MODES[first]():
        used(x)

    def step(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        model.train().zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        with torch.inference_mode():
            after = model.eval()(x)
        return [loss.detach(), after, *(p.grad for p in model.parameters())]

    assert all(torch.equal(a, b) for a, b in zip(step(used, x), step(fresh, x)))
    assert all(torch.equal(a, b) for a, b in zip(step(used.double(), x.double()), step(fresh.double(), x.double())))
