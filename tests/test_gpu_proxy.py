"""The GPU proxy's mechanism on toy models: eager kernels and bytes exact, autocast's CUDA policy applied on fake CUDA,
indexing served in Python as the C++ binding does it, inductor's launches fused and attributed to blocks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensor

import benchmarks._common as common
from benchmarks import _gpu_proxy as gp
from benchmarks import gpu_proxy
from zoo._op_cost import OpCost, declare_cost

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


class Residual(nn.Module):
    """x + relu(fc(x) * 2 + 1) on the last dimension: one matmul and four pointwise ops."""

    def __init__(self, dim: int = 4):
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.fc(x) * 2 + 1)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(Residual(), Residual())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


# Batch 2 of 3x4x4 images in fp32: the residual stream is 96 floats, 384 bytes.
STREAM = 2 * 3 * 4 * 4 * 4


def _toy_op(name: str):
    """A custom op proxy_test::name computing x * 2, with a fake implementation; the ops differ only in what the
    proxy is told of their cost (below)."""

    def double(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    op = torch.library.custom_op(f"proxy_test::{name}", double, mutates_args=())
    op.register_fake(lambda x: torch.empty_like(x))
    return op


declared, undeclared, allocating, failing = map(_toy_op, ("declared", "undeclared", "allocating", "failing"))
# Three launches reading the input five times over and writing it once.
declare_cost(
    "proxy_test::declared", lambda x: OpCost(3, 5 * x.numel() * x.element_size(), x.numel() * x.element_size())
)


def _allocating_cost(x: torch.Tensor) -> OpCost:
    """Two launches through a buffer the size of x, allocated as a launch plan allocates its outputs."""
    rows = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    assert isinstance(rows, FakeTensor), "a declaration must run in its values' fake mode"
    return OpCost(2, 2 * rows.numel() * rows.element_size(), 2 * rows.numel() * rows.element_size())


def _failing_cost(x: torch.Tensor) -> OpCost:
    raise ValueError("this declaration fails")


declare_cost("proxy_test::allocating", _allocating_cost)
declare_cost("proxy_test::failing", _failing_cost)


class CustomOps(nn.Module):
    """declared(x) + undeclared(x): two custom ops and one add."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return declared(x) + undeclared(x)


def test_eager_kernels_and_bytes_are_exact_in_fp32():
    trace = gp.eager_trace(Toy(), batch=2, size=4, autocast=None)
    # per block: addmm (bias 16 B, input, weight^T 64 B, output), mul, add (scalar), relu: read + write; add: 2 + 1
    addmm = 16 + STREAM + 64 + STREAM
    block = addmm + 3 * 2 * STREAM + 3 * STREAM
    assert trace.total.kernels == 10
    assert trace.total.bytes == 2 * block
    assert {b: (s.kernels, s.bytes) for b, s in trace.per_block.items()} == {
        "blocks.0": (5, block),
        "blocks.1": (5, block),
    }
    assert trace.per_op["addmm"].kernels == 2 and trace.per_op["addmm"].bytes == 2 * addmm
    assert trace.total.opaque_kernels == 0


def test_bf16_autocast_applies_its_cuda_policy_on_fake_cuda():
    trace = gp.eager_trace(Residual(), batch=2, size=4, autocast=torch.bfloat16)
    assert trace.calls["_to_copy"] == 3  # input, weight and bias cast to bf16 for the matmul
    # the matmul's output is bf16: half the bytes of the fp32 one
    assert trace.per_op["addmm"].bytes == (16 + STREAM + 64 + STREAM) // 2


def test_library_kernels_are_counted_apart():
    model = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU())
    trace = gp.eager_trace(model, batch=2, size=4, autocast=None)
    assert (trace.total.kernels, trace.total.opaque_kernels) == (2, 1)
    assert trace.per_op["convolution"].bytes == trace.total.opaque_bytes


class Attention(nn.Module):
    """SDPA with an additive mask over the 16 pixels of each image, one head of width 3."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = x.flatten(2).transpose(1, 2).unsqueeze(1)  # (b, 1, 16, 3)
        return F.scaled_dot_product_attention(q, q, q, attn_mask=q[..., :1].expand(-1, -1, 16, 16))


def test_half_precision_sdpa_takes_the_fused_kernel_and_fp32_the_math_path():
    fused = gp.eager_trace(Attention(), batch=2, size=4, autocast=torch.bfloat16)
    assert fused.calls["_scaled_dot_product_cudnn_attention"] == 1
    assert fused.total.opaque_kernels == 1 and "bmm" not in fused.calls
    math = gp.eager_trace(Attention(), batch=2, size=4, autocast=None)
    assert math.calls["bmm"] == 2 and math.total.opaque_kernels == 0


@pytest.mark.parametrize(
    "index",
    [
        (None,),
        (slice(None), None),
        (Ellipsis, slice(1, None, 2)),
        (0, Ellipsis, 1),
        (slice(None), [2, 0]),
        (Ellipsis, None, slice(None, 2)),
        (1,),
    ],  # fmt: skip
)
def test_fake_indexing_matches_the_binding(index):
    index = tuple(torch.tensor(i) if isinstance(i, list) else i for i in index)  # index tensors: on the CPU
    real = torch.arange(3 * 4 * 5.0).reshape(3, 4, 5)
    with gp.fake_cuda() as mode:
        with mode:
            fake = torch.empty(3, 4, 5, device="cuda")
            out = fake[tuple(mode.from_tensor(i) if isinstance(i, torch.Tensor) else i for i in index)]
    assert out.device.type == "cuda"
    assert out.shape == real[index].shape


def test_prediction_is_bytes_over_bandwidth():
    assert gp.predict_ms(2_100_000_000, 2.1) == pytest.approx(1.0)
    assert gp.predict_img_s(2_100_000_000, 2.1, batch=256) == pytest.approx(256_000)


def test_block_of_groups_module_paths():
    assert gp.block_of("layers.0.blocks.2.retention.qkv") == "layers.0.blocks.2"
    assert gp.block_of("layers.1.Relpos") == "layers.1"
    assert gp.block_of("patch_embed.proj.0") == "patch_embed"
    assert gp.block_of("") == "(model)"


@pytest.mark.e2e  # the slow tier: inductor's first compile in a process, 15-35 s on 2 shared cores
def test_compiled_launches_fuse_and_belong_to_their_blocks():
    eager = gp.eager_trace(Toy(), batch=2, size=4, autocast=None)
    assert not torch.utils._triton.has_triton()  # cached "no" on this CPU, as after any earlier compile in the process
    launches = gp.compiled_kernels(Toy(), batch=2, size=4, autocast=None)
    blocks = gp.per_block(launches)
    assert 0 < len(launches) < eager.total.kernels
    assert set(blocks) == {"blocks.0", "blocks.1"}
    # each block: its matmul (a library kernel) and one fused kernel for the four pointwise ops
    assert all(s.kernels == 2 and s.opaque_kernels == 1 for s in blocks.values())
    assert all(launch.bytes > 0 for launch in launches)
    assert sum(s.bytes for s in blocks.values()) < eager.total.bytes


def test_one_fake_cuda_and_one_kernel_counter_serve_every_script():
    """Two definitions of "a kernel" drift apart; the proxy's module holds the only fake mode and dispatch mode."""
    owners = {
        path.name
        for path in BENCHMARKS.glob("*.py")
        for marker in ("FakeTensorMode", "TorchDispatchMode")
        if marker in path.read_text()
    }
    assert owners == {"_gpu_proxy.py"}


def test_views_and_allocations_are_no_kernels():
    aten = torch.ops.aten
    assert gp.is_kernel(aten.add.Tensor) and gp.is_kernel(aten.clone.default)
    assert not any(gp.is_kernel(op) for op in (aten.view.default, aten.transpose.int, aten.empty.memory_format))


def test_official_builders_are_read_from_the_registry(monkeypatch):
    notes = {"rmt_x": "official builder RMT_X; params ...", "rmt_x_tl": "official builder RMT_X (token labeling); ..."}
    monkeypatch.setattr(common.zoo, "list_models", lambda family=None: sorted(notes))
    monkeypatch.setattr(common.zoo, "info", lambda name: type("Info", (), {"notes": notes[name]}))
    assert common._official_builders() == {"rmt_x": "RMT_X"}
    assert common.OFFICIAL_RMT_BUILDERS["rmt_s"] == "RMT_S"


def test_a_custom_op_counts_as_it_declared_and_an_undeclared_one_is_reported():
    with pytest.warns(UserWarning, match="proxy_test::undeclared declared no GPU cost"):
        trace = gp.eager_trace(CustomOps(), batch=2, size=4, autocast=None)
    assert (trace.per_op["proxy_test::declared"].kernels, trace.per_op["proxy_test::declared"].bytes) == (3, 6 * STREAM)
    assert (trace.per_op["proxy_test::undeclared"].kernels, trace.per_op["proxy_test::undeclared"].bytes) == (
        1,
        2 * STREAM,
    )
    assert trace.undeclared == {"proxy_test::undeclared": 1}
    assert (trace.total.kernels, trace.total.bytes) == (3 + 1 + 1, 6 * STREAM + 2 * STREAM + 3 * STREAM)


@pytest.mark.e2e  # one inductor compile
def test_compiled_custom_op_counts_as_it_declared_and_an_undeclared_one_is_reported():
    with pytest.warns(UserWarning, match="proxy_test::undeclared declared no GPU cost"):
        launches = gp.compiled_kernels(CustomOps(), batch=2, size=4, autocast=None)
    ops = {launch.op: launch for launch in launches if launch.op}
    assert (ops["proxy_test::declared"].launches, ops["proxy_test::declared"].bytes) == (3, 6 * STREAM)
    assert ops["proxy_test::undeclared"].undeclared and not ops["proxy_test::declared"].undeclared
    assert sum(s.kernels for s in gp.per_block(launches).values()) == sum(launch.launches for launch in launches)
    assert sum(launch.launches for launch in launches) == 3 + 1 + 1  # the add: one fused kernel


class Allocating(nn.Module):
    """allocating(x) + allocating(x * 3): two calls of a custom op whose declared cost allocates."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return allocating(x) + allocating(x * 3)


@pytest.mark.e2e  # one inductor compile
def test_compiled_declarations_that_allocate_run_on_fake_cuda_and_count_every_call():
    launches = gp.compiled_kernels(Allocating(), batch=2, size=4, autocast=None)
    ops = [launch for launch in launches if launch.op == "proxy_test::allocating"]
    assert [(launch.launches, launch.bytes) for launch in ops] == [(2, 4 * STREAM)] * 2
    assert sum(launch.launches for launch in launches) == 2 + 2 + 2  # x * 3 and the add: one kernel each


class FailingSecond(nn.Module):
    """declared(x) + failing(x): the declaration that fails comes after a launch was counted."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return declared(x) + failing(x)


@pytest.mark.e2e  # one inductor compile
def test_a_compiled_count_that_fails_halfway_raises_instead_of_returning_the_launches_so_far():
    with pytest.raises(Exception, match="this declaration fails"):
        gp.compiled_kernels(FailingSecond(), batch=2, size=4, autocast=None)


def test_the_pretend_h200_reports_its_dram_bandwidth_to_inductor():
    from torch._inductor.utils import get_gpu_dram_gbps

    with gp.fake_cuda(), gp.pretend_h200():
        assert get_gpu_dram_gbps() == gp.H200_DRAM_GBPS == 4800


class GradBranch(nn.Module):
    """relu where a training step records gradients, sigmoid where not (RMT's folded convs branch so)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return torch.relu(y) if torch.is_grad_enabled() and self.training else torch.sigmoid(y)


def test_an_eager_training_step_runs_the_training_branches_and_the_backward():
    trace = gp.eager_train_trace(GradBranch(), batch=2, size=4, autocast=None)
    assert trace.calls["relu"] == 1 and "sigmoid" not in trace.calls
    assert trace.calls["threshold_backward"] == 1
    assert trace.calls["mm"] == 1  # the weight's gradient; the images need none
    toy = gp.eager_train_trace(Toy(), batch=2, size=4, autocast=None)
    forward = gp.eager_trace(Toy(), batch=2, size=4, autocast=None)
    assert toy.calls["threshold_backward"] == 2 and toy.calls["mm"] == 3  # two weights, one block's input
    assert toy.total.kernels > 2 * forward.total.kernels and toy.total.bytes > 2 * forward.total.bytes


@pytest.mark.e2e  # two inductor compiles
def test_a_compiled_training_step_has_a_forward_and_a_backward_graph():
    launches = gp.compiled_train_kernels(Toy(), batch=2, size=4, autocast=None)
    blocks = gp.per_block(launches)
    assert {"blocks.0", "blocks.1", "(backward)"} <= set(blocks)
    assert blocks["(backward)"].opaque_kernels == 3  # the three matmuls of the eager step, as library calls


def test_the_training_target_is_rmt_s_bytes_against_swin_t():
    results = {"rmt_s": {"compiled": {"GB": 13.0}}, "swin_t": {"compiled": {"GB": 10.0}}}
    (row,) = gpu_proxy.targets(results, train=True)
    assert row["target"] == "training step compiled GB / swin_t's"
    assert row["now"] == pytest.approx(1.3) and row["goal"] == 1.3


def test_the_official_calls_are_checked_only_against_a_matching_h200_run():
    """A training step or another batch has no H200 profile to check against: no rows, no failure."""
    assert gpu_proxy.call_check({"official rmt_s": {"eager": {"calls": {"add": 1}}}}, {}) == []
