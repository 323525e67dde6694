"""Fused Triton kernels for RMT's retention, softmax(q k^T + D) v, opt-in as `attn_impl="triton"`.

Why: at head dim 16-32 the matmul-softmax path writes the (L x L) scores and reads them back, several times the
feature map itself in stage 1 (issue 28). Here the decay D = gamma_head * distance is computed in the kernel from
token indices, the scores stay in registers (flash-style online softmax), q/k/v are read through their strides in
the layouts MaSA already produces (no layout copies), and accumulation is fp32 for fp16/bf16/fp32 inputs.

Two kernels, one launch per call:
- row-then-column form (stages 1-3): one pass per image, head and block of the grid. The column attention takes
  the image rows one at a time as its keys (online softmax), and its value at row r, the row attention of (r, j)
  against row r, is computed right there in registers: no `rows` tensor goes to memory, and q, k, v are read from
  DRAM once (the programs of one image and head are adjacent, so the rows they share are re-read from L2), where
  two passes moved 8 feature maps (q, k, v, rows; q, k, rows, out) and this moves 4 (predicted, issue 34). The
  price is compute: each block of image rows recomputes the row attention it needs (a 4x repeat at 56x56).
- whole-image form (stage 4): every token against every token, Manhattan distance from token indices.
Predicted, not measured: one row pass of rmt_s's stage 1 at 224x224, batch 256, has 256*56*4*56*56 = 180 M scores;
matmul-softmax writes them and reads them back at least twice (scores, then probabilities), >= 4 x 180 M x 2 B =
1.4 GB in bf16, where the fused pass moves q, k, v and its output, 4 x 103 MB, and no mask.

Devices: CUDA tensors run the compiled kernels. CPU tensors run only through Triton's interpreter, which takes
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
NOT_SPECIALIZED = ("seq_len", "height", "width", "n_b", "n_c", "n_heads", "n_i", "n_j")
# The whole-image kernel's warps per block size, (16-bit inputs, fp32): with these every stage of rmt_t/s/b/l builds
# for sm_90 with fewer than 255 registers and no spills under Triton 3.6 and 3.8 (tests/test_retention_triton.py;
# fp32's dots run on FMAs and hold more in registers, so it takes more warps).
WARPS = {16: (1, 1), 32: (1, 4), 64: (4, 8)}
# Bound by _kernels() when Triton is first used: the kernels' source names it, and Triton resolves it at compile time.
tl = None


def require() -> None:
    """Fail in one sentence where Triton is missing, when a model is built with attn_impl="triton"."""
    try:
        import triton  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f'attn_impl="triton" needs the triton package, which cannot be imported here ({e}).') from e


def _rows_then_columns_kernel(
    q, k, v, out, decay,
    height, width, n_heads, n_i, n_j,
    sq_b, sq_h, sq_n, sq_w, sq_d,
    sk_b, sk_h, sk_n, sk_w, sk_d,
    sv_b, sv_h, sv_w, sv_n, sv_d,
    so_b, so_h, so_w, so_n, so_d,
    sg,
    HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """One program: the output at BLOCK_I image rows x BLOCK_J columns of one image and head, rows then columns in
    one pass. q, k (b, h, N, w, d), v and out (b, h, w, N, d), read through their strides. The column attention's
    keys are the image rows r = 0..height-1, taken one at a time with an online softmax; its value at row r is the
    row attention of (r, columns) against row r, computed here in registers (so no `rows` tensor in memory). The
    programs of one image and head are adjacent (rows fastest), so their repeated reads of q, k, v hit L2."""
    pid = tl.program_id(0).to(tl.int64)
    ib = pid % n_i
    jb = (pid // n_i) % n_j
    bh = pid // (n_i * n_j)
    bb = bh // n_heads
    hd = bh % n_heads
    log2e = 1.4426950408889634  # scores in log2 units, for exp2
    gamma = tl.load(decay + hd * sg).to(tl.float32) * log2e
    offs_i = ib * BLOCK_I + tl.arange(0, BLOCK_I)
    offs_j = jb * BLOCK_J + tl.arange(0, BLOCK_J)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    dim_ok = offs_d < HEAD_DIM
    j_ok = offs_j < width
    q += bb * sq_b + hd * sq_n
    k += bb * sk_b + hd * sk_n
    v += bb * sv_b + hd * sv_n
    q_cols = tl.load(  # the column attention's queries, (BLOCK_I, BLOCK_J, BLOCK_D)
        q + offs_i[:, None, None] * sq_h + offs_j[None, :, None] * sq_w + offs_d[None, None, :] * sq_d,
        mask=(offs_i < height)[:, None, None] & j_ok[None, :, None] & dim_ok[None, None, :],
        other=0.0,
    ).to(tl.float32)
    m_c = tl.full((BLOCK_I, BLOCK_J), float("-inf"), tl.float32)
    l_c = tl.zeros((BLOCK_I, BLOCK_J), tl.float32)
    acc = tl.zeros((BLOCK_I, BLOCK_J, BLOCK_D), tl.float32)
    row_mask = j_ok[:, None] & dim_ok[None, :]
    for r in range(0, height):
        # row attention of (r, offs_j) against image row r: the column attention's value at key r
        q_row = tl.load(q + r * sq_h + offs_j[:, None] * sq_w + offs_d[None, :] * sq_d, mask=row_mask, other=0.0)
        m_r = tl.full((BLOCK_J,), float("-inf"), tl.float32)
        l_r = tl.zeros((BLOCK_J,), tl.float32)
        acc_r = tl.zeros((BLOCK_J, BLOCK_D), tl.float32)
        for start in range(0, width, BLOCK_N):
            keys = start + offs_n
            key_ok = keys < width
            k_tile = tl.load(  # k^T tile
                k + r * sk_h + keys[None, :] * sk_w + offs_d[:, None] * sk_d,
                mask=key_ok[None, :] & dim_ok[:, None],
                other=0.0,
            )
            dist = tl.abs(offs_j[:, None] - keys[None, :]).to(tl.float32)
            scores = tl.dot(q_row, k_tile, input_precision=PRECISION) * log2e + gamma * dist
            scores = tl.where(key_ok[None, :], scores, float("-inf"))
            m_new = tl.maximum(m_r, tl.max(scores, 1))
            alpha = tl.exp2(m_r - m_new)
            p = tl.exp2(scores - m_new[:, None])
            l_r = l_r * alpha + tl.sum(p, 1)
            v_tile = tl.load(
                v + r * sv_h + keys[:, None] * sv_w + offs_d[None, :] * sv_d,
                mask=key_ok[:, None] & dim_ok[None, :],
                other=0.0,
            )
            acc_r = acc_r * alpha[:, None] + tl.dot(p.to(v_tile.dtype), v_tile, input_precision=PRECISION)
            m_r = m_new
        value = acc_r / l_r[:, None]  # (BLOCK_J, BLOCK_D); padded columns hold finite garbage, never stored
        key = tl.load(k + r * sk_h + offs_j[:, None] * sk_w + offs_d[None, :] * sk_d, mask=row_mask, other=0.0)
        dist = tl.abs(offs_i - r).to(tl.float32)
        scores = tl.sum(q_cols * key.to(tl.float32)[None, :, :], 2) * log2e + gamma * dist[:, None]
        m_new = tl.maximum(m_c, scores)
        alpha = tl.exp2(m_c - m_new)
        p = tl.exp2(scores - m_new)
        l_c = l_c * alpha + p
        acc = acc * alpha[:, :, None] + p[:, :, None] * value[None, :, :]
        m_c = m_new
    tl.store(
        out
        + bb * so_b
        + hd * so_n
        + offs_i[:, None, None] * so_h
        + offs_j[None, :, None] * so_w
        + offs_d[None, None, :] * so_d,
        (acc / l_c[:, :, None]).to(out.dtype.element_ty),
        mask=(offs_i < height)[:, None, None] & j_ok[None, :, None] & dim_ok[None, None, :],
    )


def _whole_image_kernel(
    q, k, v, out, decay,
    seq_len, width, n_b, n_c,
    sq_a, sq_b, sq_c, sq_t, sq_d,
    sk_a, sk_b, sk_c, sk_t, sk_d,
    sv_a, sv_b, sv_c, sv_t, sv_d,
    so_a, so_b, so_c, so_t, so_d,
    sg_a, sg_b, sg_c,
    HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """One program: BLOCK_M queries of the sequence at batch index (a, b, c) (c fastest); every tensor is read
    through its own strides (sX_a, sX_b, sX_c over the batch axes, sX_t over tokens, sX_d over the head dim), the
    decay through strides that are 0 except on the head's axis. Tokens are t = row * width + column, and the
    decay is by their Manhattan distance."""
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
    row_m = offs_m // width
    col_m = offs_m % width
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for start in range(0, seq_len, BLOCK_N):
        keys = start + offs_n
        key_ok = keys < seq_len
        k_tile = tl.load(k_ptrs, mask=key_ok[None, :] & dim_ok[:, None], other=0.0)
        dist = tl.abs(row_m[:, None] - (keys // width)[None, :]) + tl.abs(col_m[:, None] - (keys % width)[None, :])
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


# The kernels by name, as launch plans name them.
SOURCES = {"rows_then_columns": _rows_then_columns_kernel, "whole_image": _whole_image_kernel}


@functools.cache
def _kernels() -> dict:
    """The kernels, jitted: for the GPU, or for Triton's interpreter where triton was imported with
    TRITON_INTERPRET=1 (its own library functions are interpreted or compiled from that moment on)."""
    global tl
    import triton
    import triton.language

    tl = triton.language
    return {name: triton.jit(fn, do_not_specialize=NOT_SPECIALIZED) for name, fn in SOURCES.items()}


def _interpreted(kernel) -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernel, InterpretedFunction)


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # fp32 as exact as the matmul path (no TF32)


def whole_image_config(seq_len: int, head_dim: int, dtype: torch.dtype) -> dict:
    """Block sizes and warps for the whole-image form: up to 64 tokens a block; 16 is tl.dot's smallest side."""
    block = min(64, max(16, _pow2(seq_len)))
    return dict(
        BLOCK_M=block,
        BLOCK_N=block,
        BLOCK_D=max(16, _pow2(head_dim)),
        PRECISION=_precision(dtype),
        num_warps=WARPS[block][dtype == torch.float32],
    )


def rows_then_columns_config(height: int, width: int, head_dim: int, dtype: torch.dtype) -> dict:
    """Block sizes and warps for the row-then-column form: 16 columns (tl.dot's smallest side, the row attention's
    queries), up to 64 keys of a row a block, and as many image rows as keep the column attention's queries and
    accumulator (BLOCK_I x 16 x BLOCK_D each) at 32 fp32 registers a thread of 4 warps."""
    block_d = max(16, _pow2(head_dim))
    return dict(
        BLOCK_I=min(_pow2(height), 4 * 32 * 32 // (16 * block_d)),
        BLOCK_J=16,
        BLOCK_N=min(32 if dtype == torch.float32 else 64, max(16, _pow2(width))),  # fp32's dots run on FMAs
        BLOCK_D=block_d,
        PRECISION=_precision(dtype),
        num_warps=4,
    )


Launch = tuple[str, tuple[int, ...], tuple, dict]


def launches(q, k, v, decay, chunkwise: bool) -> tuple[torch.Tensor, list[Launch]]:
    """The output (b, h, w, N, d), contiguous, and the launches that fill it, each (kernel name, grid, arguments,
    meta-parameters) (`retention` documents the inputs); on meta tensors too, which is how the tests compile every
    stage shape for sm_90 and how the op's cost is declared."""
    out = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    if chunkwise:  # q, k (b, h, N, w, d); v, out (b, h, w, N, d): one pass per image, head and block of the grid
        b, h, n, w, head_dim = q.shape
        meta = rows_then_columns_config(h, w, head_dim, q.dtype)
        n_i, n_j = _cdiv(h, meta["BLOCK_I"]), _cdiv(w, meta["BLOCK_J"])
        strides = (*q.stride(), *k.stride(), *v.stride(), *out.stride(), *decay.stride())
        args = (q, k, v, out, decay, h, w, n, n_i, n_j, *strides)
        return out, [("rows_then_columns", (b * n * n_i * n_j,), args, dict(meta, HEAD_DIM=head_dim))]
    b, n, h, w, head_dim = q.shape  # q, k (b, N, h, w, d): every token against every token of the image
    tokens = lambda t: t.flatten(1, 2).transpose(1, 2).unsqueeze(2)  # noqa: E731  (b, h, w, N, d) -> (b, N, 1, hw, d)
    q, k, v_, out_ = q.flatten(2, 3).unsqueeze(2), k.flatten(2, 3).unsqueeze(2), tokens(v), tokens(out)
    decay = decay.view(1, n, 1).expand(b, n, 1)
    meta = whole_image_config(h * w, head_dim, q.dtype)
    strides = (*q.stride(), *k.stride(), *v_.stride(), *out_.stride(), *decay.stride())
    args = (q, k, v_, out_, decay, h * w, w, n, 1, *strides)
    grid = (b * n, _cdiv(h * w, meta["BLOCK_M"]))
    return out, [("whole_image", grid, args, dict(meta, HEAD_DIM=head_dim))]


@torch.library.custom_op("rmt_zoo::retention", mutates_args=())
def _retention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, chunkwise: bool
) -> torch.Tensor:
    kernels = _kernels()
    interpret = _interpreted(kernels["whole_image"])
    if q.device.type == "cpu" and not interpret:
        raise RuntimeError(
            'attn_impl="triton" runs on CUDA tensors, or on CPU ones through Triton\'s interpreter, which needs '
            "TRITON_INTERPRET=1 set before triton is first imported."
        )
    out, calls = launches(q, k, v, decay, chunkwise)
    for name, grid, args, meta in calls:
        if interpret:
            meta.pop("num_warps")  # the interpreter takes none
        kernels[name][grid](*args, **meta)
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


def _declared_cost(q, k, v, decay, chunkwise: bool) -> OpCost:
    """What one call moves to and from device memory, from its launch plan: each launch reads its inputs once
    (repeated reads within a launch, of the rows an image and head share, are L2 hits) and writes its output."""
    total = OpCost(0, 0, 0)
    for _, _, args, _ in launches(q, k, v, decay, chunkwise)[1]:
        q_, k_, v_, out = args[:4]
        read = sum(t.numel() * t.element_size() for t in (q_, k_, v_, decay))
        total += OpCost(1, read, out.numel() * out.element_size())
    return total


declare_cost("rmt_zoo::retention", _declared_cost)
