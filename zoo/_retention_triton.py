"""A fused Triton kernel for RMT's retention, softmax(q k^T + D) v, opt-in as `attn_impl="triton"`.

Why: at head dim 16-32 the matmul-softmax path writes the (L x L) scores and reads them back, several times the
feature map itself in stage 1 (issue 28). Here the decay D = gamma_head * distance is computed in the kernel from
token indices (1-D |i - i'| for the row and column passes, Manhattan |i - i'| + |j - j'| for the whole-image stage),
the scores stay in registers (flash-style online softmax over key blocks), q/k/v are read through their strides in
the layouts MaSA already produces (no layout copies), and accumulation is fp32 for fp16/bf16/fp32 inputs.
Predicted, not measured: one row pass of rmt_s's stage 1 at 224x224, batch 256, has 256*56*4*56*56 = 180 M scores;
matmul-softmax writes them and reads them back at least twice (scores, then probabilities), >= 4 x 180 M x 2 B =
1.4 GB in bf16, where the fused pass moves q, k, v and its output, 4 x 103 MB, and no mask.

Opt-in until a GPU measurement shows it faster than "auto" (then "auto" takes it on CUDA): benchmarks/rmt_gpu.py's
throughput setting (rmt_s, batch 256, bf16 autocast) times it, eager and compiled, beside "auto" and "sdpa", and its
output check covers every path it times.

Devices: CUDA tensors run the compiled kernel. CPU tensors run only through Triton's interpreter, which takes
TRITON_INTERPRET=1 set before triton is first imported (Triton's own library functions are jitted or interpreted
at that moment); otherwise the call fails with one sentence. The tests run it so, in a child process.
No backward: MaSA takes matmul-softmax instead when gradients are recorded. Triton is imported on first use only,
so zoo imports where it is missing, and `attn_impl="triton"` then fails when the model is built (`require`).
"""

from __future__ import annotations

import functools

import torch

from ._op_cost import OpCost, declare_cost

__all__ = ["require", "retention"]

# Sizes the kernel is not specialized on (value 1, multiples of 16), so new grid sizes reuse the compiled kernel.
NOT_SPECIALIZED = ("seq_len", "width", "n_b", "n_c")
# Warps per block size, (16-bit inputs, fp32): with these every stage of rmt_t/s/b/l builds for sm_90 with fewer than
# 255 registers and no spills under Triton 3.6 and 3.8 (tests/test_retention_triton.py; fp32's dots run on FMAs and
# hold more in registers, so it takes more warps).
WARPS = {16: (1, 1), 32: (1, 4), 64: (4, 8)}
# Bound by _kernel() when Triton is first used: the kernel's source names it, and Triton resolves it at compile time.
tl = None


def require() -> None:
    """Fail in one sentence where Triton is missing, when a model is built with attn_impl="triton"."""
    try:
        import triton  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f'attn_impl="triton" needs the triton package, which cannot be imported here ({e}).') from e


def _retention_kernel(
    q, k, v, out, decay,
    seq_len, width, n_b, n_c,
    sq_a, sq_b, sq_c, sq_t, sq_d,
    sk_a, sk_b, sk_c, sk_t, sk_d,
    sv_a, sv_b, sv_c, sv_t, sv_d,
    so_a, so_b, so_c, so_t, so_d,
    sg_a, sg_b, sg_c,
    HEAD_DIM: tl.constexpr, MANHATTAN: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """One program: BLOCK_M queries of the sequence at batch index (a, b, c) (c fastest); every tensor is read
    through its own strides (sX_a, sX_b, sX_c over the batch axes, sX_t over tokens, sX_d over the head dim), the
    decay through strides that are 0 except on the head's axis. MANHATTAN: tokens are t = row * width + column."""
    pid = tl.program_id(0).to(tl.int64)
    a = pid // (n_b * n_c)
    b = (pid // n_c) % n_b
    c = pid % n_c
    log2e = 1.4426950408889634  # scores in log2 units, for exp2
    gamma = tl.load(decay + a * sg_a + b * sg_b + c * sg_c).to(tl.float32) * log2e
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    dim_ok = offs_d < HEAD_DIM
    q_tile = tl.load(
        q + a * sq_a + b * sq_b + c * sq_c + offs_m[:, None] * sq_t + offs_d[None, :] * sq_d,
        mask=(offs_m[:, None] < seq_len) & dim_ok[None, :],
        other=0.0,
    )
    k_ptrs = k + a * sk_a + b * sk_b + c * sk_c + offs_n[None, :] * sk_t + offs_d[:, None] * sk_d  # k^T tile
    v_ptrs = v + a * sv_a + b * sv_b + c * sv_c + offs_n[:, None] * sv_t + offs_d[None, :] * sv_d
    if MANHATTAN:
        row_m = offs_m // width
        col_m = offs_m % width
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for start in range(0, seq_len, BLOCK_N):
        keys = start + offs_n
        key_ok = keys < seq_len
        k_tile = tl.load(k_ptrs, mask=key_ok[None, :] & dim_ok[:, None], other=0.0)
        if MANHATTAN:
            dist = tl.abs(row_m[:, None] - (keys // width)[None, :]) + tl.abs(col_m[:, None] - (keys % width)[None, :])
        else:
            dist = tl.abs(offs_m[:, None] - keys[None, :])
        scores = tl.dot(q_tile, k_tile, input_precision=PRECISION) * log2e + gamma * dist.to(tl.float32)
        scores = tl.where(key_ok[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v_tile = tl.load(v_ptrs, mask=key_ok[:, None] & dim_ok[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v_tile.dtype), v_tile, input_precision=PRECISION)
        m_i = m_new
        k_ptrs += BLOCK_N * sk_t
        v_ptrs += BLOCK_N * sv_t
    tl.store(
        out + a * so_a + b * so_b + c * so_c + offs_m[:, None] * so_t + offs_d[None, :] * so_d,
        (acc / l_i[:, None]).to(out.dtype.element_ty),
        mask=(offs_m[:, None] < seq_len) & dim_ok[None, :],
    )


@functools.cache
def _kernel():
    """The kernel, jitted: for the GPU, or for Triton's interpreter where triton was imported with
    TRITON_INTERPRET=1 (its own library functions are interpreted or compiled from that moment on)."""
    global tl
    import triton
    import triton.language

    tl = triton.language
    return triton.jit(_retention_kernel, do_not_specialize=NOT_SPECIALIZED)


def _interpreted(kernel) -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernel, InterpretedFunction)


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def launch_config(seq_len: int, head_dim: int, dtype: torch.dtype) -> dict:
    """Block sizes and warps for one pass: whole rows up to 64 keys in one block; 16 is tl.dot's smallest side."""
    block = min(64, max(16, _pow2(seq_len)))
    return dict(
        BLOCK_M=block,
        BLOCK_N=block,
        BLOCK_D=max(16, _pow2(head_dim)),
        PRECISION="ieee" if dtype == torch.float32 else "tf32",  # fp32 as exact as the matmul path (no TF32)
        num_warps=WARPS[block][dtype == torch.float32],
    )


def _launch(q, k, v, out, decay, width: int) -> tuple[tuple[int, int], tuple, dict]:
    """Grid, arguments and meta-parameters of one launch computing out <- softmax(q k^T + decay * distance) v over
    dim 3. q, k, v, out: (A, B, C, L, D) strided views; decay: an (A, B, C) view. width > 0: Manhattan distance on a
    grid of that width; 0: 1-D distance."""
    n_a, n_b, n_c, seq_len, head_dim = q.shape
    meta = launch_config(seq_len, head_dim, q.dtype)
    grid = (n_a * n_b * n_c, _cdiv(seq_len, meta["BLOCK_M"]))
    strides = (*q.stride(), *k.stride(), *v.stride(), *out.stride(), *decay.stride())
    args = (q, k, v, out, decay, seq_len, max(width, 1), n_b, n_c, *strides)
    return grid, args, dict(meta, HEAD_DIM=head_dim, MANHATTAN=width > 0)


def launches(q, k, v, decay, chunkwise: bool) -> tuple[torch.Tensor, list[tuple[tuple[int, int], tuple, dict]]]:
    """The output (b, h, w, N, d), contiguous, and the kernel launches that fill it (`retention` documents the
    inputs); on meta tensors too, which is how the tests compile every stage shape for sm_90."""
    out = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    if chunkwise:  # q, k (b, h, N, w, d): rows into `rows` (same layout), then its columns into out
        b, h, n, w, _ = q.shape
        rows = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        cols = lambda t: t.permute(0, 3, 2, 1, 4)  # noqa: E731  (b, h, N, w, d) -> (b, w, N, h, d)
        return out, [
            _launch(q, k, v.transpose(2, 3), rows, decay.view(1, 1, n).expand(b, h, n), 0),
            _launch(cols(q), cols(k), cols(rows), out.permute(0, 2, 3, 1, 4), decay.view(1, 1, n).expand(b, w, n), 0),
        ]
    b, n, h, w, _ = q.shape  # q, k (b, N, h, w, d): every token against every token of the image
    tokens = lambda t: t.flatten(1, 2).transpose(1, 2).unsqueeze(2)  # noqa: E731  (b, h, w, N, d) -> (b, N, 1, hw, d)
    q, k = q.flatten(2, 3).unsqueeze(2), k.flatten(2, 3).unsqueeze(2)
    return out, [_launch(q, k, tokens(v), tokens(out), decay.view(1, n, 1).expand(b, n, 1), w)]


@torch.library.custom_op("rmt_zoo::retention", mutates_args=())
def _retention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, chunkwise: bool
) -> torch.Tensor:
    kernel = _kernel()
    interpret = _interpreted(kernel)
    if q.device.type == "cpu" and not interpret:
        raise RuntimeError(
            'attn_impl="triton" runs on CUDA tensors, or on CPU ones through Triton\'s interpreter, which needs '
            "TRITON_INTERPRET=1 set before triton is first imported."
        )
    out, calls = launches(q, k, v, decay, chunkwise)
    for grid, args, meta in calls:
        if interpret:
            meta.pop("num_warps")  # the interpreter takes none
        kernel[grid](*args, **meta)
    return out


@_retention_op.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, chunkwise: bool) -> torch.Tensor:
    return v.new_empty(v.shape)


def retention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, chunkwise: bool) -> torch.Tensor:
    """MaSA's attention core, (b, h, w, N, d) contiguous, from q, k as `_rotate` writes them ((b, h, N, w, d) for
    row-then-column, (b, N, h, w, d) for the whole image; k pre-scaled), v (b, h, w, N, d) and the per-head decay
    (N,). Under autocast the three take its dtype, as autocast's matmuls would."""
    device = q.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else v.dtype
    return _retention_op(q.to(dtype), k.to(dtype), v.to(dtype), decay, chunkwise)


def _cost(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, chunkwise: bool) -> OpCost:
    """What one call moves, from its launch plan (on meta tensors): each launch reads its q, k, v and decay and
    writes its output; 2 launches and 8 feature maps row-then-column (the rows round trip, q and k read twice), 1
    launch and 4 for the whole image."""
    meta = [torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta") for t in (q, k, v, decay)]
    _, plan = launches(*meta, chunkwise)
    size = lambda t: t.numel() * t.element_size()  # noqa: E731
    read = sum(size(t) for _, args, _ in plan for t in args[:3]) + len(plan) * size(decay)
    return OpCost(len(plan), read, sum(size(args[3]) for _, args, _ in plan))


declare_cost("rmt_zoo::retention", _cost)
