"""GMAC counts (bench/flops.py): timm's and the official code's figures, and every attention path counted alike."""

from __future__ import annotations


import pytest
import timm.layers
import torch
import torch.nn as nn
import torch.nn.functional as F

import zoo
from bench.flops import count_gmacs, count_params


@pytest.mark.e2e  # the slow tier: fvcore traces a full-size model
def test_swin_t_gmacs_match_timm():
    counts = count_gmacs(zoo.load("swin_t"), torch.randn(1, 3, 224, 224))
    assert round(counts["gmacs"], 2) == 4.51
    # torch's counter has no normalisation layers, so it sits just below fvcore's convention
    assert 0.98 * counts["gmacs"] < counts["gmacs_torch"] < counts["gmacs"]


@pytest.mark.e2e  # the slow tier: fvcore traces a full-size model
def test_rmt_s_gmacs_match_official_code():
    model = zoo.load("rmt_s")
    assert count_params(model) == 26_967_240
    assert count_gmacs(model, torch.randn(1, 3, 224, 224))["gmacs"] == pytest.approx(4.800, abs=5e-4)


class _Attention(nn.Module):
    """q = k = v = x (B, heads, L, d), through one of the three attention spellings."""

    def __init__(self, impl: str):
        super().__init__()
        self.impl = impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = -(torch.arange(x.shape[-2])[:, None] - torch.arange(x.shape[-2])[None]).abs().float()
        if self.impl == "matmul":
            return torch.softmax(x @ x.transpose(-2, -1) + bias, -1) @ x
        if self.impl == "sdpa":
            return F.scaled_dot_product_attention(x, x, x, attn_mask=bias)
        from torch.nn.attention.flex_attention import flex_attention

        return flex_attention(x, x, x, score_mod=lambda s, b, h, i, j: s - (i - j).abs())


def test_attention_counts_the_same_for_matmul_sdpa_and_flex():
    """In fvcore's count and in torch's counter alike (which had no formula for CPU's fused SDPA kernel: 0)."""
    x = torch.randn(2, 4, 64, 16)
    expected = 2 * 4 * 64 * 64 * (16 + 16) / 1e9  # QK^T + AV
    for impl in ("matmul", "sdpa", "flex"):
        counts = count_gmacs(_Attention(impl), x)
        assert counts["gmacs"] == pytest.approx(expected) and counts["gmacs_torch"] == pytest.approx(expected), impl


def test_fused_and_explicit_attention_give_the_same_vit_count():
    x = torch.randn(1, 3, 160, 160)
    fused = zoo.load("test_vit")
    assert fused.blocks[0].attn.fused_attn
    timm.layers.set_fused_attn(False)
    try:
        explicit = zoo.load("test_vit")
    finally:
        timm.layers.set_fused_attn(True)
    explicit.load_state_dict(fused.state_dict())
    assert not explicit.blocks[0].attn.fused_attn
    assert count_gmacs(fused, x)["gmacs"] == pytest.approx(count_gmacs(explicit, x)["gmacs"])
