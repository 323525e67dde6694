"""The CUDA paths against the reference paths on tiny sizes (well under a minute on an H100); skipped without CUDA.

CI has no GPU, so here every test is collected and skipped; benchmarks/gpu_run.sh runs them on the lent GPU machine
(`python -m pytest -m cuda tests/test_cuda.py`). Errors are relative to max|reference| (the fixtures' criterion).
fp32 runs with TF32 off: cuDNN convolutions default to TF32, whose 10-bit mantissa alone exceeds the 1e-4 bar.
"""

from __future__ import annotations

import copy

import pytest
import torch

import zoo.internimage as ii
import zoo.rmt as rmt
from zoo import _retention, _retention_triton, _rmt_reference  # the CUDA side of test_rmt.py's unit checks
from bench.measure import Energy, Latency, Memory, time_steps


pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TOL = 1e-4
# Under autocast, against the fp32 reference: bf16 keeps 8 significant bits (unit roundoff 2^-8 = 3.9e-3), fp16 11
# (2^-11 = 4.9e-4). A few blocks of projections, softmax and residual adds compound that to a few roundoffs (the
# CPU bf16 run of this model measures about 1e-2); each bound allows about 8 roundoffs.
LOW_TOL = {torch.bfloat16: 3e-2, torch.float16: 4e-3}
LOW = list(LOW_TOL)


@pytest.fixture(autouse=True)
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture
def rmt_pair(rmt_small):
    def pair(impl: str = "auto") -> tuple[rmt.RMT, rmt.RMT, torch.Tensor]:
        """The small RMT on CUDA with `impl`, a copy on the reference path, and an input with both MaSA forms."""
        torch.manual_seed(0)
        model = rmt.RMT(**rmt_small, attn_impl=impl).eval().cuda()
        return model, copy.deepcopy(model).set_attn_impl("reference"), torch.randn(2, 3, 64, 96, device="cuda")

    return pair


@pytest.mark.parametrize("impl", ["auto", "sdpa", "matmul", "triton"])
def test_rmt_paths_match_reference_fp32(impl, rel_err, rmt_pair):
    model, reference, x = rmt_pair(impl)
    with torch.no_grad():
        assert rel_err(model(x), reference(x)) <= TOL


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_rmt_auto_takes_both_kernels_by_row_length(dtype, rel_err, rmt_pair, monkeypatch):
    """Where "auto" does not take the fused kernels (here: CUDA off its list), an input whose first stage has rows
    longer than SHORT_ROW runs those on SDPA and every shorter row (columns, later stages) on matmul-softmax, in one
    forward."""
    monkeypatch.setattr(_retention_triton, "AUTO_DEVICES", ())
    taken = []
    for name in ("sdpa", "matmul_softmax"):
        kernel = getattr(_retention, name)
        monkeypatch.setattr(_retention, name, lambda *a, name=name, kernel=kernel: taken.append(name) or kernel(*a))
    model, reference, _ = rmt_pair("auto")
    x = torch.randn(1, 3, 64, 4 * (_retention.SHORT_ROW + 8), device="cuda")  # stage 1: 16 x 72 tokens
    with torch.no_grad():
        ref = reference(x)
        taken.clear()
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            out = model(x)
    assert taken[0] == "sdpa" and "matmul_softmax" in taken
    assert rel_err(out.float(), ref) <= LOW_TOL.get(dtype, TOL)


@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("impl", ["sdpa", "matmul", "triton"])
def test_rmt_paths_under_autocast(impl, dtype, rel_err, rmt_pair):
    model, reference, x = rmt_pair(impl)
    with torch.no_grad():
        ref = reference(x)
        with torch.autocast("cuda", dtype=dtype):
            low = model(x)
    assert low.dtype == dtype and 0 < rel_err(low.float(), ref) <= LOW_TOL[dtype]


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_packed_short_rows_match_unpacked(dtype, rel_err, rmt_small, monkeypatch):
    """attn_impl="triton" with short rows packed (`PACK_ROWS`: the 64x96 input's chunkwise stages, rows of 24 and 12
    and columns of 16 and 8, all pack) against it unpacked, under autocast: the output, the input's gradient and
    each MaSA's qkv weight's (gradients through the packed backward; layer scale 0.5, so that none underflows)."""
    torch.manual_seed(0)
    model = rmt.RMT(**rmt_small, layer_init_values=0.5, attn_impl="triton").eval().cuda()
    x, weight = torch.randn(2, 3, 64, 96, device="cuda"), torch.linspace(-1, 1, 10, device="cuda")
    qkvs = [block.retention.qkv.weight for layer in model.layers for block in layer.blocks]
    runner, packs = _retention_triton._runner, []

    def spying(q):  # notes each launch's PACK as it runs
        run = runner(q)
        return lambda launch: packs.append(launch[3].get("PACK", 1)) or run(launch)

    monkeypatch.setattr(_retention_triton, "_runner", spying)
    results, ran = {}, {}
    for packed in (False, True):
        monkeypatch.setattr(_retention_triton, "PACK_ROWS", packed)
        model.zero_grad()
        inp = x.clone().requires_grad_()
        with torch.autocast("cuda", dtype=dtype):
            out = model(inp)
        (out.float() * weight).sum().backward()
        results[packed] = [out.float(), inp.grad, *(w.grad for w in qkvs)]
        ran[packed], packs[:] = set(packs), []
    assert ran[False] == {1} and max(ran[True]) > 1, ran
    errors = [rel_err(a.float(), b.float()) for a, b in zip(results[True], results[False])]
    assert max(errors) <= LOW_TOL[dtype], errors


@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_norm_linear_matches_the_plain_ops_under_autocast(dtype, rel_err):
    """LayerNorm inside the matmul (the fused kernel a no-grad block takes) against LayerNorm, then the linear, under
    autocast, with a scaled residual added first, for x in both layouts a block hands it (NCHW-ordered memory, as a
    stage's first block gets it, and contiguous). Both round at the same points; only accumulation order differs."""
    torch.manual_seed(0)
    norm, layer = torch.nn.LayerNorm(80, eps=1e-6).cuda(), torch.nn.Linear(80, 240).cuda()
    x = torch.randn(2, 80, 7, 9, device="cuda").permute(0, 2, 3, 1)
    y, scale = torch.randn(2, 7, 9, 80, device="cuda"), torch.rand(80, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
        for xs in (x.to(dtype), x.to(dtype).contiguous()):
            out = _retention_triton.norm_linear(xs, norm, layer, y.to(dtype), scale)
            ref = layer(norm(xs + scale * y.to(dtype)))
            assert out.dtype == ref.dtype == dtype and rel_err(out.float(), ref.float()) <= LOW_TOL[dtype] / 4


@pytest.mark.parametrize("dtype", [torch.float32, *LOW], ids=str)
def test_compiled_training_takes_the_taps_kernels(dtype, rel_err, monkeypatch):
    """A block's CPE and FFN in a compiled training step (inductor, fullgraph) run the Triton taps kernels forward and
    backward, and their gradients (the input's and the parameters') match the eager step's (cuDNN's convs) in fp32
    and under autocast."""
    taken = []
    fused = _retention_triton.fused_taps
    monkeypatch.setattr(_retention_triton, "fused_taps", lambda *args: taken.append(1) or fused(*args))
    torch.manual_seed(0)
    ffn, cpe = rmt.FeedForward(64, 192).cuda(), rmt.DWConv2d(64, 3, residual=True).cuda()
    x = torch.randn(4, 14, 14, 64, device="cuda", requires_grad=True)
    grads = {}
    for name, step in (
        ("eager", lambda t: ffn(cpe(t))),
        ("compiled", torch.compile(lambda t: ffn(cpe(t)), fullgraph=True)),
    ):
        ffn.zero_grad(), cpe.zero_grad()
        x.grad = None
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            out = step(x)
        out.float().square().mean().backward()
        grads[name] = [p.grad.float().clone() for p in (x, *ffn.parameters(), *cpe.parameters())]
    assert len(taken) == 2  # traced once: the CPE's and the FFN's
    worst = max(rel_err(a, b) for a, b in zip(grads["compiled"], grads["eager"]))
    assert worst <= LOW_TOL.get(dtype, TOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("chunkwise", [True, False])
def test_flex_attention_matches_reference(chunkwise, dtype, rel_err):
    """One MaSA layer per form: each new shape compiles a FlexAttention kernel, so the grid is square and small.
    Head dim 16, the least CUDA's FlexAttention kernels take (every RMT variant has 16 or more)."""
    torch.manual_seed(0)
    relpos = rmt.DecayPosition(64, 4, 2, 4, chunkwise).cuda()
    masa = rmt.ManhattanSelfAttention(64, 4, chunkwise).eval().cuda()
    x = torch.randn(2, 6, 6, 64, device="cuda")
    with torch.no_grad():
        ref = _rmt_reference.retention(masa, x, _rmt_reference.tables(relpos, 6, 6, x.dtype))
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            out = masa(x, relpos(6, 6, x.dtype), relpos.decay, "flex")
    assert out.dtype == dtype and rel_err(out.float(), ref) <= LOW_TOL.get(dtype, TOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_compiled_fullgraph_matches_reference(dtype, rel_err, rmt_pair):
    model, reference, x = rmt_pair()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        ref = reference(x)
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            out = compiled(x)
    assert rel_err(out.float(), ref) <= LOW_TOL.get(dtype, TOL)


def test_backward_matches_reference(rel_err, rmt_small, rmt_pair):
    model, reference, x = rmt_pair()
    weight = torch.linspace(-1, 1, rmt_small["num_classes"], device="cuda")
    grads = []
    for net in (model, reference):
        inp = x.clone().requires_grad_()
        (net(inp) * weight).sum().backward()
        grads.append({"input": inp.grad, **{name: p.grad for name, p in net.named_parameters()}})
    fast, ref = grads
    errors = {name: rel_err(fast[name], ref[name]) for name in ref}
    assert all(e <= TOL for e in errors.values()), {name: e for name, e in errors.items() if not e <= TOL}


def test_channels_last_model_and_input(rel_err, rmt_pair):
    model, reference, x = rmt_pair()
    with torch.no_grad():
        ref = reference(x)
        out = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert rel_err(out, ref) <= TOL


def test_dcnv3_op_matches_reference_with_gradients(dcn_inputs, rel_err):
    inputs = [t.float().cuda().requires_grad_() for t in dcn_inputs(n=3, h=6, w=9, groups=4, group_channels=5)]
    results = []
    for op in (ii.dcnv3, ii.dcnv3_reference):
        out = op(*inputs, 4, 2.0)
        (out * torch.linspace(-1, 1, out.numel(), device="cuda").view_as(out)).sum().backward()
        results.append((out.detach(), *(t.grad.clone() for t in inputs)))
        for t in inputs:
            t.grad = None
    for fast, ref in zip(*results):
        assert rel_err(fast, ref) <= TOL


def test_internimage_fast_matches_reference(internimage_with_offsets, rel_err):
    model = internimage_with_offsets().eval().cuda()
    x = torch.randn(3, 3, 45, 70, device="cuda")
    with torch.no_grad():
        fast = model(x)
        ref = model.set_dcn_impl("reference")(x)
    assert rel_err(fast, ref) <= TOL


# --- the harness's CUDA measurements: its trackers around its timed loop -----------------------------------------


def test_harness_cuda_event_timing_and_peak_memory(rmt_pair):
    """One tiny row: each step queues 10^7 GPU clock cycles of sleep before a forward, so event times that follow
    the GPU (not the host, which returns at once) are at least 1 ms even at a 10 GHz clock; the peak includes a
    64 MiB buffer allocated and freed inside the measured span."""
    model, _, x = rmt_pair()

    def step():
        torch.cuda._sleep(10**7)
        with torch.no_grad():
            model(x)

    memory, energy = Memory("cuda"), Energy("cuda")
    memory.start()
    loop = time_steps(step, warmup=2, iters=5, device="cuda", trackers=[energy], batch_size=x.shape[0])
    torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")  # allocated and freed at once
    peak = memory.fields(loop)
    assert len(loop.times_ms) == 5 and min(loop.times_ms) >= 1.0
    assert (
        sum(loop.times_ms) <= loop.wall_s * 1e3 * 1.01
    )  # steps are disjoint spans of the first-start-to-last-end wall time
    assert Latency("cuda").fields(loop)["throughput_ips"] == pytest.approx(x.shape[0] * 5 / loop.wall_s)
    assert peak["peak_mem_mb"] == torch.cuda.max_memory_allocated() / 2**20 >= 64
    assert peak["peak_mem_reserved_mb"] >= peak["peak_mem_mb"]
    joules = energy.fields(loop)
    if energy.reason is None:  # NVML is there: the counter read around the loop never runs backwards
        assert joules["energy_j"] >= 0 and joules["energy_j_per_img"] >= 0
    else:
        assert joules["energy_j_per_img"] is None and joules["energy_note"] == energy.reason
