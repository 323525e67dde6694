"""Fused Triton kernels for RMT's retention, softmax(q k^T + D) v, forward and backward: `attn_impl="triton"`, and
what `attn_impl="auto"` takes on CUDA where they build (`auto_takes`); and two more RMT kernels (below).

Why: at head dim 16-32 the matmul-softmax path writes the (L x L) scores and reads them back, several times the
feature map itself in stage 1. Here the decay D = gamma_head * distance is computed in the kernel from token
indices, the scores stay in registers (flash-style online softmax), and accumulation is fp32 for fp16/bf16/fp32
inputs. The op also takes what is around attention in MaSA: q, k and v are read as views of the one qkv projection;
q and k are rotated (with k's 1/sqrt(d)) as they are loaded, from the stage's rotary tables (`_rotary`); LePE,
MaSA's depthwise 5x5 conv of v, is computed from the v the program reads (`_lepe`) and added as the output is stored,
in the (b, h, w, N, d) layout the output projection reads. So a compiled graph holds no rotation, conv or add
kernels around the op. docs/rmt_internals.md has the predicted bytes behind each choice.

The forward, one launch per call:
- row-then-column form (stages 1-3): one pass per image, head and block of the grid. The column attention takes
  the image rows one at a time as its keys (online softmax), and its value at row r, the row attention of (r, j)
  against row r, is computed right there in registers: no `rows` tensor goes to memory, and q, k, v are read from
  DRAM once (the programs of one image and head are adjacent, so the rows they share are re-read from L2). The
  price is compute: each block of image rows recomputes the row attention it needs (a 4x repeat at 56x56).
- whole-image form (stage 4): every token against every token, Manhattan distance from token indices
  (`_attend_kernel`, which also runs single 1-D passes for the backward).
- short rows packed (`PACK_ROWS`, off until a GPU times it): 16-bit rows and columns of up to 32 tokens go several
  to a 64-token tile with a block-diagonal mask, so stages 2-3 at 224x224 run their dots as sm_90 wgmma where
  today's tiles take 16-row mma.sync: the forward's row attention 2 image rows of 32 or 4 of 16 at once
  (`_packed_row_attention`), the backward's 1-D passes 2 or 4 heads (`_packed`). The price: PACK times the score
  elements of the tiles they replace, and more row recompute in the forward. (The backward's 16-bit rows of 17-32
  tokens at head dim 32 had a 64-token tile each anyway: they pair their heads whatever the switch says.)
The backward (rmt_zoo::retention_backward, the op's autograd formula), flash-style: probabilities recomputed from q,
k and the decay in registers, nothing L x L in memory. It writes the qkv gradient in place, each part in its input's
layout (no stack or scatter): rows then columns backpropagate columns first (their d(values) is d(rows)), then rows,
adding their dq, dk to the columns'; the rows (the columns' values) are recomputed first. A pass whose sequences fit
one block (every one at 224x224) is one launch writing dq, dk, dv; a longer one is its forward recomputed with its
log-sum-exp, then a dq launch and a dk/dv launch. LePE's gradients come from the conv's own backward
(`_lepe_backward`): the weight's and bias's directly, v's added by the launch that writes v's gradient.

Devices: CUDA tensors run the compiled kernels. CPU tensors run only through Triton's interpreter, which takes
TRITON_INTERPRET=1 set before triton is first imported (Triton's own library functions are jitted or interpreted
at that moment); otherwise the call fails with one sentence. The tests run it so, in a child process.
Triton is imported on first use only, so zoo imports where it is missing, and `attn_impl="triton"` then fails when
the model is built (`require`); "auto" then keeps its other paths.
LayerNorm inside the matmul after it (`norm_linear`, rmt_zoo::norm_linear, one launch of `_norm_linear_kernel`): where
MaSA takes the fused op and no gradients are recorded, each block's LayerNorms run inside its qkv and fc1 matmuls, fc1's
with the residual sum before it, so neither the normalized map nor that sum goes to memory (it has no backward:
training keeps the plain modules).
The depthwise taps (`fused_taps`, rmt_zoo::depthwise_taps, `_taps_kernel` and `_taps_backward_kernel`): in compiled
training steps on CUDA, the CPE's and the FFN's 3x3 convs (the FFN's with fc1's bias and GELU applied as u is loaded)
in one launch each way; the backward writes u's gradient and per-program sums of the parameters' gradients, where the
plain taps' backward read the maps again for each tap (zoo/_rmt_fast.py's `taps_kernel_takes` says where).
Every launch plan declares its cost (zoo/_op_cost.py) for the GPU proxy (`_declared_cost`, `_declared_backward_cost`,
`_declared_norm_linear_cost`, `_declared_taps_cost`, `_declared_taps_backward_cost`), and each forward op its
multiply-adds for the FLOP counters.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import warnings

import torch

from ._op_cost import OpCost, OpMacs, declare_cost, declare_macs

__all__ = ["auto_takes", "fused_taps", "norm_linear", "require", "retention", "taps_available"]

# Where attn_impl="auto" takes the kernels: device types, and whether triton is installed (asked once, at import,
# without importing it).
AUTO_DEVICES = ("cuda",)
TRITON_FOUND = importlib.util.find_spec("triton") is not None

# Sizes the kernel is not specialized on (value 1, multiples of 16), so new grid sizes reuse the compiled kernel.
NOT_SPECIALIZED = ("seq_len", "height", "width", "n_b", "n_c", "n_heads", "n_i", "n_j", "n_rows", "n_chunks")
# The whole-image kernel's warps per block size, (16-bit inputs, fp32): with these every stage of rmt_t/s/b/l builds
# for sm_90 with fewer than 255 registers and no spills under Triton 3.6 and 3.8 (tests/test_retention_triton.py;
# fp32's dots run on FMAs and hold more in registers, so it takes more warps).
WARPS = {16: (1, 1), 32: (1, 4), 64: (4, 8)}
# Whether short rows are packed into 64-row tiles, so that stages 2-3 at 224x224 (rows and columns of 28 and 14) run
# 4-warp programs whose dots are wgmma on sm_90: the forward's row attention, several image rows to a tile
# (`packed_config`), and the backward's 1-D passes, several heads to a tile (`attend_config`), each with a
# block-diagonal mask. Off until a GPU says otherwise: a packed tile computes PACK times the score elements of the
# tiles it replaces (exp2 and the rest), and the packed forward's programs take fewer image rows each (more row
# recompute), where today's 16-row mma.sync dots are a small part of a program's instructions. benchmarks/rmt_gpu.py
# times both, inference and training steps.
PACK_ROWS = False
# A packed tile's queries (and keys): 64, wgmma's rows for one warpgroup.
PACKED_TILE = 64
# Meta-parameters of a launch that are compile options, not the kernel's constexprs.
LAUNCH_OPTIONS = ("num_warps", "num_stages", "maxnreg")
# Bound by _kernels() when Triton is first used: the kernels' source names it, and Triton resolves it at compile time.
tl = None


def require() -> None:
    """Fail in one sentence where Triton is missing, when a model is built with attn_impl="triton"."""
    try:
        import triton  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f'attn_impl="triton" needs the triton package, which cannot be imported here ({e}).') from e


def _rows_then_columns_kernel(
    q, k, v, lepe_w, lepe_b, out, rot, decay, height, width, n_heads, n_i, n_j, sq, sk, sv, so, st, sg,
    HEAD_DIM: tl.constexpr, LEPE_K: tl.constexpr, PRECISION: tl.constexpr, PACK: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """One program: the output at BLOCK_I image rows x BLOCK_J columns of one image and head, rows then columns in
    one pass. q, k (b, h, N, w, d) unrotated, rotated on load by the tables at rot (`_rotary`); v and out
    (b, h, w, N, d); each tensor's strides as one tuple in its dims' order (rot's: q's, then to sin, to k's; the
    decay's over heads). out = LePE(v) (`_lepe`) + attention. The column attention's keys are the image rows
    r = 0..height-1, taken one at a time with an online softmax (`_column_step`); its value at row r is the row
    attention of (r, columns) against row r, computed here in registers (so no `rows` tensor in memory): a row at a
    time (PACK 1, `_row_attention`), or PACK rows in one tile (`_packed_row_attention`, where one block holds a
    whole row). The programs of one image and head are adjacent (rows fastest), so their repeated reads of q, k, v
    hit L2."""
    sq_b, sq_h, sq_n, sq_w, sq_d = sq
    sk_b, sk_h, sk_n, sk_w, sk_d = sk
    sv_b, sv_h, sv_w, sv_n, sv_d = sv
    so_b, so_h, so_w, so_n, so_d = so
    st_b, st_h, st_n, st_w, st_d, st_sin, st_k = st
    pid = tl.program_id(0).to(tl.int64)
    ib = pid % n_i
    jb = (pid // n_i) % n_j
    bh = pid // (n_i * n_j)
    bb = bh // n_heads
    hd = bh % n_heads
    gamma = tl.load(decay + hd * sg[0]).to(tl.float32) * 1.4426950408889634  # log2 units, for exp2
    offs_i = ib * BLOCK_I + tl.arange(0, BLOCK_I)
    offs_j = jb * BLOCK_J + tl.arange(0, BLOCK_J)
    offs_d = tl.arange(0, BLOCK_D)
    dim_ok = offs_d < HEAD_DIM
    j_ok = offs_j < width
    q += bb * sq_b + hd * sq_n
    k += bb * sk_b + hd * sk_n
    v += bb * sv_b + hd * sv_n
    rot += bb * st_b + hd * st_n
    out_mask = (offs_i < height)[:, None, None] & j_ok[None, :, None] & dim_ok[None, None, :]
    q_cols = _rotary(  # the column attention's queries, (BLOCK_I, BLOCK_J, BLOCK_D)
        q, rot, offs_i[:, None, None] * sq_h + offs_j[None, :, None] * sq_w,
        offs_i[:, None, None] * st_h + offs_j[None, :, None] * st_w, offs_d[None, None, :], sq_d, st_d, st_sin,
        out_mask,
    )  # fmt: skip
    m_c = tl.full((BLOCK_I, BLOCK_J), float("-inf"), tl.float32)
    l_c = tl.zeros((BLOCK_I, BLOCK_J), tl.float32)
    acc = tl.zeros((BLOCK_I, BLOCK_J, BLOCK_D), tl.float32)
    row_mask = j_ok[:, None] & dim_ok[None, :]
    if PACK == 1:
        for r in range(0, height):
            value = _row_attention(
                q, k, v, rot, r, offs_j, offs_d, dim_ok, row_mask, gamma, width, sq_h, sq_w, sq_d, sk_h, sk_w,
                sk_d, sv_h, sv_w, sv_d, st_h, st_w, st_d, st_sin, st_k, PRECISION, BLOCK_J, BLOCK_N, BLOCK_D,
            )  # fmt: skip
            m_c, l_c, acc = _column_step(
                q_cols, k, rot, r, offs_i, offs_j, offs_d, row_mask, value, gamma, height, m_c, l_c, acc, sk_h,
                sk_w, sk_d, st_h, st_w, st_d, st_sin, st_k,
            )  # fmt: skip
    else:
        for r0 in range(0, height, PACK):
            values = _packed_row_attention(
                q, k, v, rot, r0, offs_d, dim_ok, gamma, height, width, sq_h, sq_w, sq_d, sk_h, sk_w, sk_d, sv_h,
                sv_w, sv_d, st_h, st_w, st_d, st_sin, st_k, PRECISION, PACK, BLOCK_J, BLOCK_D,
            )  # fmt: skip
            for p in tl.static_range(PACK):
                m_c, l_c, acc = _column_step(
                    q_cols, k, rot, r0 + p, offs_i, offs_j, offs_d, row_mask, values[p], gamma, height, m_c, l_c,
                    acc, sk_h, sk_w, sk_d, st_h, st_w, st_d, st_sin, st_k,
                )  # fmt: skip
    outs = (
        bb * so_b
        + hd * so_n
        + offs_i[:, None, None] * so_h
        + offs_j[None, :, None] * so_w
        + offs_d[None, None, :] * so_d
    )
    lepe = _lepe(
        v, lepe_w, lepe_b, hd * HEAD_DIM, offs_i[:, None, None], offs_j[None, :, None], offs_d[None, None, :],
        dim_ok[None, None, :], height, width, sv_h, sv_w, sv_d, out_mask, LEPE_K,
    )  # fmt: skip
    tl.store(out + outs, (acc / l_c[:, :, None] + lepe).to(out.dtype.element_ty), mask=out_mask)


def _row_attention(
    q, k, v, rot, r, offs_j, offs_d, dim_ok, row_mask, gamma, width, sq_h, sq_w, sq_d, sk_h, sk_w, sk_d, sv_h, sv_w,
    sv_d, st_h, st_w, st_d, st_sin, st_k, PRECISION: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    """The row attention of (r, offs_j) against image row r, (BLOCK_J, BLOCK_D) fp32, BLOCK_N keys at a time with
    an online softmax (a BLOCK_J x BLOCK_N dot: mma.sync on sm_90, wgmma takes 64 rows). Padded columns hold finite
    garbage, never stored."""
    offs_n = tl.arange(0, BLOCK_N)
    q_row = _rotary(
        q, rot, r * sq_h + offs_j[:, None] * sq_w, r * st_h + offs_j[:, None] * st_w, offs_d[None, :], sq_d, st_d,
        st_sin, row_mask,
    ).to(q.dtype.element_ty)  # fmt: skip
    m_r, l_r, acc_r = _softmax_start(BLOCK_J, BLOCK_D)
    for start in range(0, width, BLOCK_N):
        keys = start + offs_n
        key_ok = keys < width
        k_tile = _rotary(  # k^T tile
            k, rot + st_k, r * sk_h + keys[None, :] * sk_w, r * st_h + keys[None, :] * st_w, offs_d[:, None],
            sk_d, st_d, st_sin, key_ok[None, :] & dim_ok[:, None],
        ).to(k.dtype.element_ty)  # fmt: skip
        dist = tl.abs(offs_j[:, None] - keys[None, :]).to(tl.float32)
        scores = tl.dot(q_row, k_tile, input_precision=PRECISION) * 1.4426950408889634 + gamma * dist
        v_tile = tl.load(
            v + r * sv_h + keys[:, None] * sv_w + offs_d[None, :] * sv_d,
            mask=key_ok[:, None] & dim_ok[None, :],
            other=0.0,
        )
        m_r, l_r, acc_r = _softmax_step(scores, key_ok, v_tile, m_r, l_r, acc_r, PRECISION)
    return acc_r / l_r[:, None]


def _packed_row_attention(
    q, k, v, rot, r0, offs_d, dim_ok, gamma, height, width, sq_h, sq_w, sq_d, sk_h, sk_w, sk_d, sv_h, sv_w, sv_d,
    st_h, st_w, st_d, st_sin, st_k, PRECISION: tl.constexpr, PACK: tl.constexpr, BLOCK_J: tl.constexpr,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    """The row attention of image rows r0..r0+PACK-1 (every column: BLOCK_J >= width), as one tile of
    PACK * BLOCK_J queries against as many keys with a block-diagonal mask (a query sees its own row's keys), so
    the dots are 64-row wgmma on sm_90; the price is PACK times the score elements. Returns the PACK rows' values,
    each (BLOCK_J, BLOCK_D) fp32 (`_split_rows`); rows past the image hold finite garbage (`_column_step` leaves
    them out)."""
    tokens = tl.arange(0, PACK * BLOCK_J)
    rows, cols = r0 + tokens // BLOCK_J, tokens % BLOCK_J
    ok = (rows < height) & (cols < width)
    mask = ok[:, None] & dim_ok[None, :]
    q_tile = _rotary(
        q, rot, rows[:, None] * sq_h + cols[:, None] * sq_w, rows[:, None] * st_h + cols[:, None] * st_w,
        offs_d[None, :], sq_d, st_d, st_sin, mask,
    ).to(q.dtype.element_ty)  # fmt: skip
    k_tile = _rotary(  # k^T tile
        k, rot + st_k, rows[None, :] * sk_h + cols[None, :] * sk_w, rows[None, :] * st_h + cols[None, :] * st_w,
        offs_d[:, None], sk_d, st_d, st_sin, ok[None, :] & dim_ok[:, None],
    ).to(k.dtype.element_ty)  # fmt: skip
    dist = tl.abs(cols[:, None] - cols[None, :]).to(tl.float32)
    scores = tl.dot(q_tile, k_tile, input_precision=PRECISION) * 1.4426950408889634 + gamma * dist
    same_row = (rows[:, None] == rows[None, :]) & (cols < width)[None, :]
    scores = tl.where(same_row, scores, float("-inf"))
    p = tl.exp2(scores - tl.max(scores, 1)[:, None])
    v_tile = tl.load(v + rows[:, None] * sv_h + cols[:, None] * sv_w + offs_d[None, :] * sv_d, mask=mask, other=0.0)
    value = tl.dot(p.to(v_tile.dtype), v_tile, input_precision=PRECISION) / tl.sum(p, 1)[:, None]
    return _split_rows(value, PACK, BLOCK_J, BLOCK_D)


def _split_rows(value, PACK: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
    """(PACK * BLOCK_J, BLOCK_D) as a tuple of PACK (BLOCK_J, BLOCK_D) tensors, row p of the image first in
    position p (PACK 2 or 4: Triton splits a trailing dim of 2)."""
    if PACK == 2:
        rows = tl.split(tl.permute(tl.reshape(value, (2, BLOCK_J, BLOCK_D)), (1, 2, 0)))
    else:
        first, second = tl.split(tl.permute(tl.reshape(value, (2, 2, BLOCK_J, BLOCK_D)), (2, 3, 0, 1)))
        row0, row2 = tl.split(first)
        row1, row3 = tl.split(second)
        rows = (row0, row1, row2, row3)
    return rows


def _column_step(
    q_cols, k, rot, r, offs_i, offs_j, offs_d, row_mask, value, gamma, height, m_c, l_c, acc, sk_h, sk_w, sk_d,
    st_h, st_w, st_d, st_sin, st_k,
):  # fmt: skip
    """Image row r into the column attention's online softmax (running max m_c, sum l_c, output acc, fp32): the
    queries q_cols (BLOCK_I, BLOCK_J, BLOCK_D) against r's keys (loaded, rotated) with value, the row attention at
    (r, offs_j). A row past the image (r >= height) adds nothing."""
    key = _rotary(
        k, rot + st_k, r * sk_h + offs_j[:, None] * sk_w, r * st_h + offs_j[:, None] * st_w, offs_d[None, :], sk_d,
        st_d, st_sin, row_mask & (r < height),
    )  # fmt: skip
    dist = tl.abs(offs_i - r).to(tl.float32)
    scores = tl.sum(q_cols * key[None, :, :], 2) * 1.4426950408889634 + gamma * dist[:, None]
    scores = tl.where(r < height, scores, float("-inf"))
    m_new = tl.maximum(m_c, scores)
    alpha = tl.exp2(m_c - m_new)
    p = tl.exp2(scores - m_new)
    return m_new, l_c * alpha + p, acc * alpha[:, :, None] + p[:, :, None] * value[None, :, :]


def _sequence(n_b, n_c, PACK: tl.constexpr):
    """Batch index (a, b, c) of this program's first sequence: program axis 0, c fastest, PACK sequences along c a
    program (the last program's may run past n_c)."""
    pid = tl.program_id(0).to(tl.int64)
    n_packs = tl.cdiv(n_c, PACK)
    return pid // (n_b * n_packs), (pid // n_packs) % n_b, (pid % n_packs) * PACK


def _packed(BLOCK: tl.constexpr, PACK: tl.constexpr, c, n_c, start):
    """A tile of BLOCK tokens holding PACK sequences of BLOCK // PACK slots: each token's sequence (0..PACK-1,
    counted from c), its position (from start), and whether its sequence exists (c + sequence < n_c)."""
    tokens = tl.arange(0, BLOCK)
    seq = tokens // (BLOCK // PACK)
    return seq, start + tokens % (BLOCK // PACK), c + seq < n_c


def _log2_decay(decay, sg, a, b, c, ok):
    """The decay of sequence(s) (a, b, c) in log2 units (sg: the decay's strides over a, b, c); 0 where not ok."""
    return tl.load(decay + _offset(sg, a, b, c), mask=ok, other=0.0).to(tl.float32) * 1.4426950408889634


def _offset(strides, a, b, c):
    """The offset of batch index (a, b, c) along the first three of `strides`."""
    return a * strides[0] + b * strides[1] + c * strides[2]


def _rounded(ptr, like, mask):
    """fp32 values at ptr, rounded first to like's dtype: a parameter as autocast would cast it for like's op."""
    return tl.load(ptr, mask=mask, other=0.0).to(like.dtype.element_ty).to(tl.float32)


def _lepe(
    v, weight, bias, channel, rows, cols, offs_d, dims_ok, height, width, sv_h, sv_w, sv_d, mask, K: tl.constexpr
):
    """LePE, the depthwise K x K conv of v (zero-padded, with bias), at image positions (rows, cols) and the head's
    dims offs_d (channels channel + offs_d; dims_ok the real ones) where mask holds, in fp32, as the conv in v's
    dtype (autocast's) accumulating in fp32 gives it: weight (C, 1, K, K), contiguous, and bias (C,) rounded to v's
    dtype. v's taps
    around a tile are lines the attention reads anyway (L1/L2 hits): the conv moves no feature map of its own."""
    total = tl.zeros(mask.shape, tl.float32) + _rounded(bias + channel + offs_d, v, dims_ok)
    for tap in range(K * K):  # a loop, not unrolled: unrolled, the compiler hoists every tap's load and spills
        r = rows + (tap // K - K // 2)
        c = cols + (tap % K - K // 2)
        inside = mask & (r >= 0) & (r < height) & (c >= 0) & (c < width)
        x = tl.load(v + r * sv_h + c * sv_w + offs_d * sv_d, mask=inside, other=0.0).to(tl.float32)
        total += x * _rounded(weight + (channel + offs_d) * (K * K) + tap, v, dims_ok)
    return total


def _rotary(x, rot, offs, rot_offs, offs_d, sx_d, st_d, st_sin, mask):
    """x's elements at offs + d * sx_d, rotated in fp32 as zoo/_rmt_fast.py's `rotate` does: x * cos + (x with its
    pairs (2i, 2i+1) swapped) * signed sin, the tables read at rot + rot_offs + d * st_d (sin st_sin further on; k's
    tables carry its 1/sqrt(d)). The swapped pairs are a second load of the same lines (an L1 hit)."""
    x_ = tl.load(x + offs + offs_d * sx_d, mask=mask, other=0.0).to(tl.float32)
    swapped = tl.load(x + offs + (offs_d ^ 1) * sx_d, mask=mask, other=0.0).to(tl.float32)
    cos = tl.load(rot + rot_offs + offs_d * st_d, mask=mask, other=0.0).to(tl.float32)
    sin = tl.load(rot + st_sin + rot_offs + offs_d * st_d, mask=mask, other=0.0).to(tl.float32)
    return x_ * cos + swapped * sin


def _unrotary(grad, rot, rot_offs, dims, st_d, st_sin, mask, dest, PRECISION: tl.constexpr):
    """The gradient of `_rotary`'s input from that of its output (rows x dims, fp32): grad * cos + the pairs of
    grad * sin swapped. The swap is a product with a permutation matrix, in dest's dtype (exact in fp32; in 16 bits
    a rounding of the term as dest's store rounds the sum): it stays in the dot's layout, where a register shuffle
    (split, join) converts layouts and spills at head dim 32."""
    cos = tl.load(rot + rot_offs + dims[None, :] * st_d, mask=mask, other=0.0).to(tl.float32)
    sin = tl.load(rot + st_sin + rot_offs + dims[None, :] * st_d, mask=mask, other=0.0).to(tl.float32)
    swap = ((dims[:, None] ^ 1) == dims[None, :]).to(dest.dtype.element_ty)
    return grad * cos + tl.dot((grad * sin).to(dest.dtype.element_ty), swap, input_precision=PRECISION)


def _softmax_start(BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """An online softmax's running max, sum and output (fp32) for BLOCK_M queries, before any key."""
    return (
        tl.full((BLOCK_M,), float("-inf"), tl.float32),
        tl.zeros((BLOCK_M,), tl.float32),
        tl.zeros((BLOCK_M, BLOCK_D), tl.float32),
    )


def _softmax_step(scores, key_ok, v_tile, m, total, acc, PRECISION: tl.constexpr):
    """One block of keys into an online softmax (scores in log2 units; keys not key_ok left out): the running max m,
    sum total and output acc rescaled to the new max, and this block's probabilities times v_tile added."""
    scores = tl.where(key_ok[None, :], scores, float("-inf"))
    m_new = tl.maximum(m, tl.max(scores, 1))
    alpha = tl.exp2(m - m_new)
    p = tl.exp2(scores - m_new[:, None])
    acc = acc * alpha[:, None] + tl.dot(p.to(v_tile.dtype), v_tile, input_precision=PRECISION)
    return m_new, total * alpha + tl.sum(p, 1), acc


def _distance(queries, keys, width, MANHATTAN: tl.constexpr):
    """(queries x keys) distances as fp32: Manhattan on a grid of `width` columns (t = row * width + column), or
    |t - t'|."""
    if MANHATTAN:
        dist = tl.abs(queries[:, None] // width - (keys // width)[None, :])
        dist += tl.abs(queries[:, None] % width - (keys % width)[None, :])
    else:
        dist = tl.abs(queries[:, None] - keys[None, :])
    return dist.to(tl.float32)


def _attend_kernel(
    q, k, v, lepe_w, lepe_b, out, lse, rot, decay, seq_len, width, n_b, n_c, sq, sk, sv, so, st, sg,
    HEAD_DIM: tl.constexpr, MANHATTAN: tl.constexpr, LEPE_K: tl.constexpr, STORE_LSE: tl.constexpr,
    PRECISION: tl.constexpr, PACK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    """One program: BLOCK_M queries of the sequence at batch index (a, b, c) (c fastest), or, PACK > 1, the whole
    sequences c..c+PACK-1 in one tile (`_packed`) with a block-diagonal mask (a query sees its own sequence's
    keys): short rows as one 64-row wgmma tile on sm_90. Every tensor is read through its own strides, one tuple
    each (over a, b, c, tokens, head dim), the decay through strides sg that are 0 except on the head's axis.
    MANHATTAN: tokens are t = row * width + column and the decay is by their Manhattan distance; else by |t - t'|.
    q and k come unrotated and are rotated on load by the tables at rot (`_rotary`; rot's strides st as q's, then to
    sin and to k's tables). LEPE_K > 0 (the whole image, b the head; PACK 1): out = LePE(v) (`_lepe`, a
    LEPE_K x LEPE_K conv) + attention. STORE_LSE: each query's log2-sum-exp2 of its scores (log2 units) goes to
    lse, contiguous (A, B, C, L) fp32, for the backward."""
    a, b, c = _sequence(n_b, n_c, PACK)
    log2e = 1.4426950408889634  # scores in log2 units, for exp2
    seq_m, offs_m, real_m = _packed(BLOCK_M, PACK, c, n_c, tl.program_id(1) * (BLOCK_M // PACK))
    offs_d = tl.arange(0, BLOCK_D)
    dim_ok = offs_d < HEAD_DIM
    gamma = _log2_decay(decay, sg, a, b, c + seq_m, real_m)
    rot += _offset(st, a, b, c)
    q_mask = ((offs_m < seq_len) & real_m)[:, None] & dim_ok[None, :]
    q_tile = _rotary(
        q + _offset(sq, a, b, c), rot, (seq_m * sq[2] + offs_m * sq[3])[:, None],
        (seq_m * st[2] + offs_m * st[3])[:, None], offs_d[None, :], sq[4], st[4], st[5], q_mask,
    ).to(q.dtype.element_ty)  # fmt: skip
    k += _offset(sk, a, b, c)
    v += _offset(sv, a, b, c)
    m_i, l_i, acc = _softmax_start(BLOCK_M, BLOCK_D)
    for start in range(0, seq_len, BLOCK_N // PACK):
        seq_n, keys, real_n = _packed(BLOCK_N, PACK, c, n_c, start)
        key_ok = keys < seq_len
        loaded = key_ok & real_n
        k_tile = _rotary(  # k^T tile
            k, rot + st[6], (seq_n * sk[2] + keys * sk[3])[None, :], (seq_n * st[2] + keys * st[3])[None, :],
            offs_d[:, None], sk[4], st[4], st[5], loaded[None, :] & dim_ok[:, None],
        ).to(k.dtype.element_ty)  # fmt: skip
        dist = _distance(offs_m, keys, width, MANHATTAN)
        scores = tl.dot(q_tile, k_tile, input_precision=PRECISION) * log2e + gamma[:, None] * dist
        if PACK > 1:
            scores = tl.where(seq_m[:, None] == seq_n[None, :], scores, float("-inf"))
        v_tile = tl.load(
            v + (seq_n * sv[2] + keys * sv[3])[:, None] + offs_d[None, :] * sv[4],
            mask=loaded[:, None] & dim_ok[None, :],
            other=0.0,
        )
        m_i, l_i, acc = _softmax_step(scores, key_ok, v_tile, m_i, l_i, acc, PRECISION)
    outs = _offset(so, a, b, c) + (seq_m * so[2] + offs_m * so[3])[:, None] + offs_d[None, :] * so[4]
    acc = acc / l_i[:, None]
    if LEPE_K > 0:
        acc += _lepe(
            v, lepe_w, lepe_b, b * HEAD_DIM, offs_m[:, None] // width, offs_m[:, None] % width, offs_d[None, :],
            dim_ok[None, :], seq_len // width, width, width * sv[3], sv[3], sv[4], q_mask, LEPE_K,
        )  # fmt: skip
    tl.store(out + outs, acc.to(out.dtype.element_ty), mask=q_mask)
    if STORE_LSE:
        sequences = (a * n_b + b) * n_c + c + seq_m
        tl.store(lse + sequences * seq_len + offs_m, m_i + tl.log2(l_i), mask=(offs_m < seq_len) & real_m)


def _attend_backward_kernel(
    q, k, v, out, dout, lse, dq, dk, dv, dv_add, rot, decay, seq_len, width, n_b, n_c, sq, sk, sv, so, st, sg,
    HEAD_DIM: tl.constexpr, MANHATTAN: tl.constexpr, DQ: tl.constexpr, ACCUMULATE: tl.constexpr,
    ADD_DV: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Flash-style backward of `_attend_kernel` for one block of the sequence at batch index (a, b, c): the
    probabilities are recomputed from q, k, the decay and the forward's lse, and rowsum(dout * out) from the
    forward's output. DQ: the block is BLOCK_M queries, looping over keys, writing dq; else it is BLOCK_N keys,
    looping over queries, writing dk and dv. ACCUMULATE: dq (or dk) is added to what is there (dv is not). out and
    dout share the strides so; dq, dk and dv take q's, k's and v's. ADD_DV: dv_add (strides so) is added to dv
    (another gradient of v's, so that none is summed outside). q and k come unrotated (rotated on load, `_rotary`),
    and dq, dk are the gradients of the unrotated q, k (`_unrotary`)."""
    a, b, c = _sequence(n_b, n_c, 1)
    gamma = _log2_decay(decay, sg, a, b, c, True)
    log2e = 1.4426950408889634  # scores in log2 units, for exp2
    offs_d = tl.arange(0, BLOCK_D)
    dim_ok = offs_d < HEAD_DIM
    q += _offset(sq, a, b, c)
    k += _offset(sk, a, b, c)
    v += _offset(sv, a, b, c)
    dq += _offset(sq, a, b, c)
    dk += _offset(sk, a, b, c)
    dv += _offset(sv, a, b, c)
    rot += _offset(st, a, b, c)
    g_off = _offset(so, a, b, c)
    lse += ((a * n_b + b) * n_c + c) * seq_len
    if DQ:
        offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        m_ok = offs_m < seq_len
        q_tile = _rotary(
            q, rot, offs_m[:, None] * sq[3], offs_m[:, None] * st[3], offs_d[None, :], sq[4], st[4], st[5],
            m_ok[:, None] & dim_ok[None, :],
        ).to(q.dtype.element_ty)  # fmt: skip
        g_ptrs = g_off + offs_m[:, None] * so[3] + offs_d[None, :] * so[4]
        do_tile = tl.load(dout + g_ptrs, mask=m_ok[:, None] & dim_ok[None, :], other=0.0)
        o_tile = tl.load(out + g_ptrs, mask=m_ok[:, None] & dim_ok[None, :], other=0.0)
        delta_m = tl.sum(do_tile.to(tl.float32) * o_tile.to(tl.float32), 1)
        lse_m = tl.load(lse + offs_m, mask=m_ok, other=0.0)
        acc_q = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
        n_loop = tl.cdiv(seq_len, BLOCK_N)
    else:
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < seq_len
        k_tile = _rotary(
            k, rot + st[6], offs_n[:, None] * sk[3], offs_n[:, None] * st[3], offs_d[None, :], sk[4], st[4], st[5],
            n_ok[:, None] & dim_ok[None, :],
        ).to(k.dtype.element_ty)  # fmt: skip
        v_tile = tl.load(
            v + offs_n[:, None] * sv[3] + offs_d[None, :] * sv[4], mask=n_ok[:, None] & dim_ok[None, :], other=0.0
        )
        acc_k = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
        acc_v = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
        n_loop = tl.cdiv(seq_len, BLOCK_M)
    for step in range(0, n_loop):
        if DQ:
            offs_n = step * BLOCK_N + tl.arange(0, BLOCK_N)
            n_ok = offs_n < seq_len
            kv_mask = n_ok[:, None] & dim_ok[None, :]
            k_tile = _rotary(
                k, rot + st[6], offs_n[:, None] * sk[3], offs_n[:, None] * st[3], offs_d[None, :], sk[4], st[4], st[5],
                kv_mask,
            ).to(k.dtype.element_ty)  # fmt: skip
            v_tile = tl.load(v + offs_n[:, None] * sv[3] + offs_d[None, :] * sv[4], mask=kv_mask, other=0.0)
        else:
            offs_m = step * BLOCK_M + tl.arange(0, BLOCK_M)
            m_ok = offs_m < seq_len
            q_mask = m_ok[:, None] & dim_ok[None, :]
            q_tile = _rotary(
                q, rot, offs_m[:, None] * sq[3], offs_m[:, None] * st[3], offs_d[None, :], sq[4], st[4], st[5], q_mask
            ).to(q.dtype.element_ty)
            g_ptrs = g_off + offs_m[:, None] * so[3] + offs_d[None, :] * so[4]
            do_tile = tl.load(dout + g_ptrs, mask=q_mask, other=0.0)
            o_tile = tl.load(out + g_ptrs, mask=q_mask, other=0.0)
            delta_m = tl.sum(do_tile.to(tl.float32) * o_tile.to(tl.float32), 1)
            lse_m = tl.load(lse + offs_m, mask=m_ok, other=0.0)
        dist = _distance(offs_m, offs_n, width, MANHATTAN)
        scores = tl.dot(q_tile, tl.trans(k_tile), input_precision=PRECISION) * log2e + gamma * dist
        p = tl.where(m_ok[:, None] & n_ok[None, :], tl.exp2(scores - lse_m[:, None]), 0.0)
        dp = tl.dot(do_tile, tl.trans(v_tile), input_precision=PRECISION)
        ds = p * (dp - delta_m[:, None])
        if DQ:
            acc_q += tl.dot(ds.to(k_tile.dtype), k_tile, input_precision=PRECISION)
        else:
            acc_v += tl.dot(tl.trans(p.to(do_tile.dtype)), do_tile, input_precision=PRECISION)
            acc_k += tl.dot(tl.trans(ds.to(q_tile.dtype)), q_tile, input_precision=PRECISION)
    if DQ:
        mask = m_ok[:, None] & dim_ok[None, :]
        grads = offs_m[:, None] * sq[3] + offs_d[None, :] * sq[4]
        acc_q = _unrotary(acc_q, rot, offs_m[:, None] * st[3], offs_d, st[4], st[5], mask, dq, PRECISION)
        if ACCUMULATE:
            acc_q += tl.load(dq + grads, mask=mask, other=0.0).to(tl.float32)
        tl.store(dq + grads, acc_q.to(dq.dtype.element_ty), mask)
    else:
        mask = n_ok[:, None] & dim_ok[None, :]
        grads = offs_n[:, None] * sk[3] + offs_d[None, :] * sk[4]
        acc_k = _unrotary(acc_k, rot + st[6], offs_n[:, None] * st[3], offs_d, st[4], st[5], mask, dk, PRECISION)
        if ACCUMULATE:
            acc_k += tl.load(dk + grads, mask=mask, other=0.0).to(tl.float32)
        tl.store(dk + grads, acc_k.to(dk.dtype.element_ty), mask)
        if ADD_DV:
            acc_v += tl.load(dv_add + g_off + offs_n[:, None] * so[3] + offs_d[None, :] * so[4], mask, 0.0).to(
                tl.float32
            )
        tl.store(dv + offs_n[:, None] * sv[3] + offs_d[None, :] * sv[4], acc_v.to(dv.dtype.element_ty), mask)


def _attend_backward_block_kernel(
    q, k, v, dout, dq, dk, dv, dv_add, rot, decay, seq_len, width, n_b, n_c, sq, sk, sv, so, st, sg,
    HEAD_DIM: tl.constexpr, MANHATTAN: tl.constexpr, ACCUMULATE: tl.constexpr, ADD_DV: tl.constexpr,
    PRECISION: tl.constexpr, PACK: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """The backward of `_attend_kernel` where one block holds the whole sequence (every row and column at 224x224),
    or PACK whole sequences (`_packed`, a block-diagonal mask): one program recomputes the probabilities outright
    (no lse), takes rowsum(dout * out) as rowsum(p * dp) (no out), and writes dq, dk and dv. Strides, rotation,
    ACCUMULATE and ADD_DV as `_attend_backward_kernel`."""
    a, b, c = _sequence(n_b, n_c, PACK)
    log2e = 1.4426950408889634  # scores in log2 units, for exp2
    seq, pos, real = _packed(BLOCK, PACK, c, n_c, 0)
    offs_d = tl.arange(0, BLOCK_D)
    ok = pos < seq_len
    mask = (ok & real)[:, None] & (offs_d < HEAD_DIM)[None, :]
    gamma = _log2_decay(decay, sg, a, b, c + seq, real)
    rot += _offset(st, a, b, c)
    tokens = (seq * st[2] + pos * st[3])[:, None]
    q_at = _offset(sq, a, b, c) + (seq * sq[2] + pos * sq[3])[:, None]
    k_at = _offset(sk, a, b, c) + (seq * sk[2] + pos * sk[3])[:, None]
    q_tile = _rotary(q + q_at, rot, 0, tokens, offs_d[None, :], sq[4], st[4], st[5], mask).to(q.dtype.element_ty)
    k_tile = _rotary(k + k_at, rot + st[6], 0, tokens, offs_d[None, :], sk[4], st[4], st[5], mask).to(
        k.dtype.element_ty
    )
    v_at = _offset(sv, a, b, c) + (seq * sv[2] + pos * sv[3])[:, None] + offs_d[None, :] * sv[4]
    v_tile = tl.load(v + v_at, mask=mask, other=0.0)
    g_ptrs = _offset(so, a, b, c) + (seq * so[2] + pos * so[3])[:, None] + offs_d[None, :] * so[4]
    do_tile = tl.load(dout + g_ptrs, mask=mask, other=0.0)
    dist = _distance(pos, pos, width, MANHATTAN)
    scores = tl.dot(q_tile, tl.trans(k_tile), input_precision=PRECISION) * log2e + gamma[:, None] * dist
    scores = tl.where(ok[None, :], scores, float("-inf"))
    if PACK > 1:
        scores = tl.where(seq[:, None] == seq[None, :], scores, float("-inf"))
    p = tl.exp2(scores - tl.max(scores, 1)[:, None])
    p = p / tl.sum(p, 1)[:, None]
    dp = tl.dot(do_tile, tl.trans(v_tile), input_precision=PRECISION)
    ds = p * (dp - tl.sum(p * dp, 1)[:, None])
    acc_q = tl.dot(ds.to(k_tile.dtype), k_tile, input_precision=PRECISION)
    acc_k = tl.dot(tl.trans(ds.to(q_tile.dtype)), q_tile, input_precision=PRECISION)
    acc_v = tl.dot(tl.trans(p.to(do_tile.dtype)), do_tile, input_precision=PRECISION)
    acc_q = _unrotary(acc_q, rot, tokens, offs_d, st[4], st[5], mask, dq, PRECISION)
    acc_k = _unrotary(acc_k, rot + st[6], tokens, offs_d, st[4], st[5], mask, dk, PRECISION)
    q_grads = q_at + offs_d[None, :] * sq[4]  # each gradient in its input's layout
    k_grads = k_at + offs_d[None, :] * sk[4]
    if ACCUMULATE:
        acc_q += tl.load(dq + q_grads, mask=mask, other=0.0).to(tl.float32)
        acc_k += tl.load(dk + k_grads, mask=mask, other=0.0).to(tl.float32)
    tl.store(dq + q_grads, acc_q.to(dq.dtype.element_ty), mask)
    tl.store(dk + k_grads, acc_k.to(dk.dtype.element_ty), mask)
    if ADD_DV:
        acc_v += tl.load(dv_add + g_ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(dv + v_at, acc_v.to(dv.dtype.element_ty), mask)


def _normed_rows(
    x, y, scale, cols, sx_k, sy_k, mask,
    HAS_Y: tl.constexpr, HAS_SCALE: tl.constexpr, ROUND_PRODUCT: tl.constexpr, ROUND_SUM: tl.constexpr,
):  # fmt: skip
    """x (+ y, or + scale * y) at channels cols of the rows x and y point to, in fp32, each step rounded where torch's
    type promotion rounds it (to y's dtype, then x's): the LayerNorm's input as the graph computes it."""
    s = tl.load(x + cols * sx_k, mask=mask, other=0.0).to(tl.float32)
    if HAS_Y:
        t = tl.load(y + cols * sy_k, mask=mask, other=0.0).to(tl.float32)
        if HAS_SCALE:
            t *= tl.load(scale + cols, mask=mask, other=0.0).to(tl.float32)
        if ROUND_PRODUCT:
            t = t.to(y.dtype.element_ty).to(tl.float32)
        s += t
        if ROUND_SUM:
            s = s.to(x.dtype.element_ty).to(tl.float32)
    return s


def _norm_linear_kernel(
    x, y, scale, norm_w, norm_b, weight, bias, out, n_rows, height, width, K, N, eps, n_n, sx, sy, sw, so,
    HAS_Y: tl.constexpr, HAS_SCALE: tl.constexpr, ROUND_PRODUCT: tl.constexpr, ROUND_SUM: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """One program: BLOCK_M rows x BLOCK_N outputs of linear(LayerNorm(x (+ y or scale * y, `_normed_rows`))). x, y
    (A, height, width, K), each read through its own strides (a tuple), so any layout inductor gives them is read in
    place (a stage's first block gets the downsampling conv's NCHW-ordered memory); weight (N, K), out (M, N), M =
    A * height * width. The LayerNorm's output and the linear's weight and bias are rounded to out's dtype (the
    matmul's), as autocast casts them (the bias before it is added to the fp32 accumulator). The row statistics take
    two passes over the rows' K values (the mean, then the squared deviations), the matmul a third, each re-reading
    the BLOCK_M x K rows from L1/L2: the normalized rows never go to memory. Programs that share rows are adjacent
    (columns fastest)."""
    pid = tl.program_id(0).to(tl.int64)
    offs_m = (pid // n_n) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = (pid % n_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < n_rows
    n_ok = offs_n < N
    a, pixel = offs_m // (height * width), offs_m % (height * width)
    x += (a * sx[0] + (pixel // width) * sx[1] + (pixel % width) * sx[2])[:, None]
    y += (a * sy[0] + (pixel // width) * sy[1] + (pixel % width) * sy[2])[:, None]
    total = tl.zeros((BLOCK_M,), tl.float32)
    for start in range(0, K, BLOCK_K):
        cols = start + offs_k[None, :]
        mask = m_ok[:, None] & (cols < K)
        total += tl.sum(_normed_rows(x, y, scale, cols, sx[3], sy[3], mask, HAS_Y, HAS_SCALE, ROUND_PRODUCT,
                                     ROUND_SUM), 1)  # fmt: skip
    mean = total / K
    squares = tl.zeros((BLOCK_M,), tl.float32)
    for start in range(0, K, BLOCK_K):
        cols = start + offs_k[None, :]
        mask = m_ok[:, None] & (cols < K)
        dev = _normed_rows(x, y, scale, cols, sx[3], sy[3], mask, HAS_Y, HAS_SCALE, ROUND_PRODUCT, ROUND_SUM)
        dev -= mean[:, None]
        squares += tl.sum(tl.where(mask, dev * dev, 0.0), 1)
    rstd = 1.0 / tl.sqrt(squares / K + eps)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for start in range(0, K, BLOCK_K):
        ks = start + offs_k
        k_ok = ks < K
        mask = m_ok[:, None] & k_ok[None, :]
        s = _normed_rows(x, y, scale, ks[None, :], sx[3], sy[3], mask, HAS_Y, HAS_SCALE, ROUND_PRODUCT, ROUND_SUM)
        gain = tl.load(norm_w + ks, mask=k_ok, other=0.0).to(tl.float32)
        shift = tl.load(norm_b + ks, mask=k_ok, other=0.0).to(tl.float32)
        normed = ((s - mean[:, None]) * rstd[:, None] * gain[None, :] + shift[None, :]).to(out.dtype.element_ty)
        w_tile = tl.load(weight + offs_n[None, :] * sw[0] + ks[:, None] * sw[1], k_ok[:, None] & n_ok[None, :], 0.0)
        acc += tl.dot(normed, w_tile.to(out.dtype.element_ty), input_precision=PRECISION)
    acc += _rounded(bias + offs_n, out, n_ok)[None, :]
    outs = offs_m[:, None] * so[0] + offs_n[None, :] * so[1]
    tl.store(out + outs, acc.to(out.dtype.element_ty), m_ok[:, None] & n_ok[None, :])


def _activated(a, shift, ok, GELU: tl.constexpr, SHIFT: tl.constexpr):
    """The taps' input where ok holds, 0 elsewhere (the conv's zero padding): a (+ shift), through exact GELU where
    asked; fp32."""
    if SHIFT:
        a += shift[None, :]
    if GELU:
        a = 0.5 * a * (1.0 + tl.math.erf(a * 0.7071067811865476))
    return tl.where(ok, a, 0.0)


def _taps_kernel(
    u, in_bias, weight, bias, out, height, width, channels, n_chunks, su, so,
    K: tl.constexpr, GELU: tl.constexpr, IN_BIAS: tl.constexpr, ROWS: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):  # fmt: skip
    """One program: ROWS image rows of one image, BLOCK_C channels, of conv(act(u + in_bias)) + bias, the depthwise
    K x K conv with zero padding, act GELU or none. u (B, height, width, C) read through its strides, out likewise;
    weight (C, 1, K, K) contiguous. The parameters are rounded to out's dtype (autocast's), the taps accumulate in
    fp32 from the loaded tiles (a tap's neighbours come from L1/L2, not DRAM)."""
    pid = tl.program_id(0)
    image, chunk = (pid // n_chunks).to(tl.int64), pid % n_chunks
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_p = tl.arange(0, BLOCK_P)
    c_ok = offs_c < channels
    u += image * su[0] + offs_c[None, :] * su[3]
    out += image * so[0] + offs_c[None, :] * so[3]
    shift = _rounded(in_bias + offs_c, u, c_ok) if IN_BIAS else offs_c
    added = _rounded(bias + offs_c, out, c_ok)
    for y in range(chunk * ROWS, tl.minimum(chunk * ROWS + ROWS, height)):
        for x0 in range(0, width, BLOCK_P):
            xs = x0 + offs_p
            acc = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
            tile = u + y * su[1] + xs[:, None] * su[2]
            for t in tl.static_range(K * K):
                yy = y + t // K - K // 2
                xx = xs + t % K - K // 2
                ok = ((xx >= 0) & (xx < width))[:, None] & c_ok[None, :] & (yy >= 0) & (yy < height)
                step = (t // K - K // 2) * su[1] + (t % K - K // 2) * su[2]
                a = tl.load(tile + step, mask=ok, other=0.0).to(tl.float32)
                acc += _activated(a, shift, ok, GELU, IN_BIAS) * _rounded(weight + offs_c * (K * K) + t, out, c_ok)
            acc += added[None, :]
            tl.store(out + y * so[1] + xs[:, None] * so[2], acc.to(out.dtype.element_ty),
                     (xs < width)[:, None] & c_ok[None, :])  # fmt: skip


def _taps_backward_kernel(
    dout, u, in_bias, weight, du, sums, height, width, channels, n_chunks, sd, su, sdu,
    K: tl.constexpr, GELU: tl.constexpr, IN_BIAS: tl.constexpr, ROWS: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    """`_taps_kernel`'s backward over the same programs: the gradient of u (the conv's transpose, times GELU's
    derivative where asked) stored in du's layout, and this program's partial sums of the parameters' gradients,
    stored as sums[pid, t, c]: the weight's K*K taps (t < K*K; dweight[c, t] = sum dout[p - t] * act(u)[p], from
    the same shifted dout tiles the input's gradient reads), the bias's (t = K*K) and in_bias's (t = K*K + 1). No
    gradient map but du goes to memory, and no map is read twice from DRAM."""
    pid = tl.program_id(0)
    image, chunk = (pid // n_chunks).to(tl.int64), pid % n_chunks
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_p = tl.arange(0, BLOCK_P)
    taps = tl.arange(0, BLOCK_T)[:, None]
    c_ok = offs_c < channels
    dout += image * sd[0] + offs_c[None, :] * sd[3]
    u += image * su[0] + offs_c[None, :] * su[3]
    du += image * sdu[0] + offs_c[None, :] * sdu[3]
    shift = _rounded(in_bias + offs_c, u, c_ok) if IN_BIAS else offs_c
    acc = tl.zeros((BLOCK_T, BLOCK_C), tl.float32)
    for y in range(chunk * ROWS, tl.minimum(chunk * ROWS + ROWS, height)):
        for x0 in range(0, width, BLOCK_P):
            xs = x0 + offs_p
            centre = (xs < width)[:, None] & c_ok[None, :]
            a = tl.load(u + y * su[1] + xs[:, None] * su[2], mask=centre, other=0.0).to(tl.float32)
            if IN_BIAS:
                a += shift[None, :]
            g = _activated(a, shift, centre, GELU, False)
            dg = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
            tile = dout + y * sd[1] + xs[:, None] * sd[2]
            for t in tl.static_range(K * K):
                yy = y - t // K + K // 2
                xx = xs - t % K + K // 2
                ok = ((xx >= 0) & (xx < width))[:, None] & c_ok[None, :] & (yy >= 0) & (yy < height)
                step = (K // 2 - t // K) * sd[1] + (K // 2 - t % K) * sd[2]
                d = tl.load(tile + step, mask=ok, other=0.0).to(tl.float32)
                dg += d * _rounded(weight + offs_c * (K * K) + t, u, c_ok)[None, :]
                acc += tl.where(taps == t, tl.sum(d * g, 0)[None, :], 0.0)
                if t == K * K // 2:  # the centre tap: dout itself, the bias's gradient
                    acc += tl.where(taps == K * K, tl.sum(d, 0)[None, :], 0.0)
            if GELU:
                pdf = tl.exp(-0.5 * a * a) * 0.3989422804014327
                dg *= 0.5 * (1.0 + tl.math.erf(a * 0.7071067811865476)) + a * pdf
            dg = tl.where(centre, dg, 0.0)
            tl.store(du + y * sdu[1] + xs[:, None] * sdu[2], dg.to(du.dtype.element_ty), centre)
            if IN_BIAS:
                acc += tl.where(taps == K * K + 1, tl.sum(dg, 0)[None, :], 0.0)
    sums += pid.to(tl.int64) * (K * K + 2) * channels
    tl.store(sums + taps * channels + offs_c[None, :], acc, (taps < K * K + 2) & c_ok[None, :])


# Functions the kernels call, jitted with them.
HELPERS = (
    _sequence,
    _packed,
    _log2_decay,
    _offset,
    _rounded,
    _lepe,
    _distance,
    _rotary,
    _unrotary,
    _row_attention,
    _packed_row_attention,
    _split_rows,
    _column_step,
    _softmax_start,
    _softmax_step,
    _normed_rows,
    _activated,
)
# The kernels by name, as launch plans name them.
SOURCES = {
    "rows_then_columns": _rows_then_columns_kernel,
    "attend": _attend_kernel,
    "attend_backward": _attend_backward_kernel,
    "attend_backward_block": _attend_backward_block_kernel,
    "norm_linear": _norm_linear_kernel,
    "taps": _taps_kernel,
    "taps_backward": _taps_backward_kernel,
}


@functools.cache
def _kernels() -> dict:
    """The kernels, jitted: for the GPU, or for Triton's interpreter where triton was imported with
    TRITON_INTERPRET=1 (its own library functions are interpreted or compiled from that moment on)."""
    global tl
    import triton
    import triton.language

    tl = triton.language
    for helper in HELPERS:  # the kernels call them by these names: bound to their jitted selves
        globals()[helper.__name__] = triton.jit(helper)
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


def attend_config(seq_len: int, head_dim: int, dtype: torch.dtype, n_seq: int = 1) -> dict:
    """Block sizes and warps for one pass of `_attend_kernel` over sequences of seq_len tokens, n_seq of them along
    the batch axis c: up to 64 tokens a block (16 is tl.dot's smallest side); one pipeline stage where the key loop
    runs once (nothing to prefetch: no shared memory spent on it). With PACK_ROWS, 16-bit sequences of up to 32
    tokens, several along c (heads), go PACKED_TILE // block to a 4-warp tile."""
    block = min(64, max(16, _pow2(seq_len)))
    if PACK_ROWS and dtype != torch.float32 and block <= PACKED_TILE // 2 and n_seq > 1:
        tile = dict(BLOCK_M=PACKED_TILE, BLOCK_N=PACKED_TILE, BLOCK_D=max(16, _pow2(head_dim)))
        return dict(PACK=PACKED_TILE // block, **tile, PRECISION="tf32", num_warps=4, num_stages=1)
    return dict(
        PACK=1,
        BLOCK_M=block,
        BLOCK_N=block,
        BLOCK_D=max(16, _pow2(head_dim)),
        PRECISION=_precision(dtype),
        num_warps=WARPS[block][dtype == torch.float32],
        **(dict(num_stages=1) if seq_len <= block else {}),
    )


# The row-then-column form's keys a block in fp32, whose dots run on FMAs, by head dim (< 32, >= 32): at 32 keys a
# block, head dim 32 spills on sm_90 once q and k are rotated on load (tests/test_retention_triton.py).
_FP32_KEYS = (32, 16)


def rows_then_columns_config(height: int, width: int, head_dim: int, dtype: torch.dtype) -> dict:
    """Block sizes and warps for the row-then-column form: 16 columns (tl.dot's smallest side, the row attention's
    queries), up to 32 keys of a row a block (at 64, 16-bit stage 1 spilled 88-104 bytes on sm_90 under Triton 3.6,
    the GPU machine's, though not under 3.8), and as many image rows as keep the column attention's queries and
    accumulator (BLOCK_I x 16 x BLOCK_D each) at 32 fp32 registers a thread of 4 warps. fp32 takes 8 warps: with
    the LePE conv in its epilogue, 4 spilled 48 bytes at stage 1 under Triton 3.6 (at 255 registers; 8: 232, no
    spills, under 3.6 and 3.8). One pipeline stage where a row's keys fit one block (28x28 and 14x14 grids): nothing
    to prefetch, and the shared memory its buffers took goes (sm_90, bf16: 27.6 to 5.1 KB at 28x28, 14.3 to 3.1 KB
    at 14x14). With PACK_ROWS, 16-bit rows of up to 32 columns go `packed_config`'s way."""
    block_d = max(16, _pow2(head_dim))
    if PACK_ROWS and dtype != torch.float32 and width <= PACKED_TILE // 2:
        return packed_config(height, width, block_d)
    keys = min(_FP32_KEYS[block_d >= 32] if dtype == torch.float32 else 32, max(16, _pow2(width)))
    return dict(
        PACK=1,
        BLOCK_I=min(_pow2(height), 4 * 32 * 32 // (16 * block_d)),
        BLOCK_J=16,
        BLOCK_N=keys,
        BLOCK_D=block_d,
        PRECISION=_precision(dtype),
        num_warps=8 if dtype == torch.float32 else 4,
        **(dict(num_stages=1) if width <= keys else {}),
    )


def packed_config(height: int, width: int, block_d: int) -> dict:
    """The row-then-column form with PACK image rows of BLOCK_J >= width columns as one PACKED_TILE tile
    (`_packed_row_attention`): two rows of 32 at 28x28, four of 16 at 14x14, one pipeline stage. 8 warps, two
    warpgroups sharing each 64-row wgmma, and BLOCK_I as the column attention's registers allow (BLOCK_I x BLOCK_J
    x BLOCK_D <= 512 a warp: 4 rows at 28x28, 8 at 14x14, head dim 32): on 4 warps the same budget takes half the
    image rows a program (twice the row recompute: each program recomputes every row's attention), and twice it
    spilled on sm_90 under Triton 3.6 (24 bytes at 28x28, 444 at 14x14)."""
    block_j = max(16, _pow2(width))
    return dict(
        PACK=PACKED_TILE // block_j,
        BLOCK_I=max(1, min(_pow2(height), 512 * 8 // (block_j * block_d))),
        BLOCK_J=block_j,
        BLOCK_N=block_j,
        BLOCK_D=block_d,
        PRECISION="tf32",
        num_warps=8,
        num_stages=1,
    )


Launch = tuple[str, tuple[int, ...], tuple, dict]


def _table(q: torch.Tensor, rot: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """q's rotary table (`rot` is (cos/sin, q/k, ...) broadcasting to q's shape) as a view of q's shape, which the
    views below take as they take q, and the strides from cos to sin and from q's tables to k's."""
    return rot[0, 0].expand(q.shape), (rot.stride(0), rot.stride(1))


def _strides(q, k, v, out, table, pairs, decay) -> tuple[tuple[int, ...], ...]:
    """The kernels' stride arguments, one tuple a tensor; the rotary table's ends with its `pairs`."""
    return q.stride(), k.stride(), v.stride(), out.stride(), (*table.stride(), *pairs), decay.stride()


def launches(qkv, weight, bias, rot, decay, chunkwise: bool) -> tuple[torch.Tensor, list[Launch]]:
    """The output (b, h, w, N, d), contiguous, and the launches that fill it, each (kernel name, grid, arguments,
    meta-parameters) (`retention` documents the inputs; the LePE weight is contiguous); on meta tensors too, which
    is how the tests compile every stage shape for sm_90 and how the op's cost is declared."""
    q, k, v = _qkv_views(qkv, chunkwise)
    out = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    table, pairs = _table(q, rot)
    if chunkwise:  # q, k (b, h, N, w, d); v, out (b, h, w, N, d): one pass per image, head and block of the grid
        b, h, n, w, head_dim = q.shape
        meta = rows_then_columns_config(h, w, head_dim, q.dtype)
        n_i, n_j = _cdiv(h, meta["BLOCK_I"]), _cdiv(w, meta["BLOCK_J"])
        args = (
            q,
            k,
            v,
            weight,
            bias,
            out,
            table,
            decay,
            h,
            w,
            n,
            n_i,
            n_j,
            *_strides(q, k, v, out, table, pairs, decay),
        )
        flags = dict(HEAD_DIM=head_dim, LEPE_K=weight.shape[-1])
        return out, [("rows_then_columns", (b * n * n_i * n_j,), args, dict(meta, **flags))]
    b, n, h, w, _ = q.shape  # q, k (b, N, h, w, d): every token against every token of the image
    (qv, kv, tv), (vv, ov), dec = _whole_image_views((q, k, table), (v, out), decay)
    return out, [_attend(qv, kv, tv, pairs, vv, ov, dec, None, w, lepe=(weight, bias))]


def _qkv_views(qkv: torch.Tensor, chunkwise: bool) -> tuple[torch.Tensor, ...]:
    """q and k of the projection qkv (b, h, w, 3, N, d) as (b, h, N, w, d) views (chunkwise) or (b, N, h, w, d), and
    v as a (b, h, w, N, d) view."""
    q, k, _ = qkv.permute(3, 0, 1, 4, 2, 5) if chunkwise else qkv.permute(3, 0, 4, 1, 2, 5)
    return q, k, qkv[:, :, :, 2]


def _whole_image_views(qs, maps, decay):
    """q-like tensors qs (b, N, h, w, d) and maps (b, h, w, N, d) as (b, N, 1, hw, d) views, the decay (N,) as
    (b, N, 1)."""
    b, n = qs[0].shape[:2]
    tokens = lambda t: t.flatten(1, 2).transpose(1, 2).unsqueeze(2)  # noqa: E731  (b, h, w, N, d) -> (b, N, 1, hw, d)
    flat = lambda t: t.flatten(2, 3).unsqueeze(2)  # noqa: E731  (b, N, h, w, d) -> (b, N, 1, hw, d)
    return [*map(flat, qs)], [*map(tokens, maps)], decay.view(1, n, 1).expand(b, n, 1)


def _row_views(qs, maps, decay):
    """q-like tensors qs (b, h, N, w, d) as they are and maps (b, h, w, N, d) as (b, h, N, w, d) views, the decay
    (N,) as (b, h, N): one sequence per image row and head."""
    b, h, n = qs[0].shape[:3]
    return [*qs], [t.transpose(2, 3) for t in maps], decay.view(1, 1, n).expand(b, h, n)


def _column_views(qs, maps, decay):
    """As `_row_views`, one sequence per image column and head: (b, w, N, h, d) views and (b, w, N)."""
    b, _, n, w, _ = qs[0].shape
    cols = lambda t: t.permute(0, 3, 2, 1, 4)  # noqa: E731  (b, h, N, w, d) -> (b, w, N, h, d)
    return [*map(cols, qs)], [t.permute(0, 2, 3, 1, 4) for t in maps], decay.view(1, 1, n).expand(b, w, n)


def _attend(q, k, table, pairs, v, out, decay, lse, width: int, lepe: tuple | None = None) -> Launch:
    """One launch of `_attend_kernel`: out <- (LePE(v) +) softmax(q k^T + decay * distance) v over dim 3, and the
    lse where one is given. q, k (unrotated), q's rotary table, v, out: (A, B, C, L, D) strided views; pairs: the
    table's strides to sin and to k's; decay: an (A, B, C) view; lepe: the conv's (weight, bias), for a whole image
    (B the head). width > 0: Manhattan distance on a grid of that width; 0: 1-D distance."""
    n_a, n_b, n_c, seq_len, head_dim = q.shape
    meta = attend_config(seq_len, head_dim, q.dtype, n_c)
    pack = meta["PACK"]
    grid = (n_a * n_b * _cdiv(n_c, pack), _cdiv(seq_len, meta["BLOCK_M"] // pack))
    weight, bias = lepe or (out, out)  # unread without LePE
    lse_ = out if lse is None else lse
    args = (q, k, v, weight, bias, out, lse_, table, decay, seq_len, max(width, 1), n_b, n_c)
    lepe_k = 0 if lepe is None else weight.shape[-1]
    flags = dict(HEAD_DIM=head_dim, MANHATTAN=width > 0, LEPE_K=lepe_k, STORE_LSE=lse is not None)
    return "attend", grid, (*args, *_strides(q, k, v, out, table, pairs, decay)), dict(meta, **flags)


def norm_linear_config(n_out: int, dtype: torch.dtype, strided: bool) -> dict:
    """Block sizes and warps of `_norm_linear_kernel`: 16-bit 128 x 128 tiles on 8 warps (two warpgroups' wgmma on
    sm_90), K 64 at a time; fp32, whose dots run on FMAs, 64 x 64 on 4, K 32 at a time. `strided`: x's channels are
    not contiguous (a stage's first block: NCHW-ordered memory), where the loads take more registers: K half as
    many at a time (at 64, 16-bit spilled 20 bytes at 255 registers on sm_90; fp32 12). tests/test_retention_triton.py
    builds every RMT layer's, in both layouts, for sm_90 without spills."""
    if dtype == torch.float32:
        block_k = 16 if strided else 32
        return dict(BLOCK_M=64, BLOCK_N=min(64, max(16, _pow2(n_out))), BLOCK_K=block_k, PRECISION="ieee", num_warps=4)
    block_k = 32 if strided else 64
    return dict(BLOCK_M=128, BLOCK_N=min(128, max(16, _pow2(n_out))), BLOCK_K=block_k, PRECISION="tf32", num_warps=8)


def _image_view(t: torch.Tensor) -> torch.Tensor:
    """t (..., K) as (A, height, width, K), a view wherever t's leading dims can be merged into A."""
    return t.flatten(0, -4) if t.dim() >= 4 else t.reshape(*(1,) * (4 - t.dim()), *t.shape)  # -1 fails on 0 pixels


def _norm_linear_plan(x, y, scale, norm_weight, norm_bias, eps: float, weight, bias, dtype) -> tuple:
    """The output (x's leading dims, N) in `dtype`, contiguous, and the one launch that fills it (`norm_linear`
    documents the inputs); on meta and fake tensors too."""
    n_out, k = weight.shape
    x4 = _image_view(x)
    y4 = x4 if y is None else _image_view(y)
    n_rows, height, width = x4.shape[0] * x4.shape[1] * x4.shape[2], x4.shape[1], x4.shape[2]
    out = torch.empty(n_rows, n_out, dtype=dtype, device=x.device)
    meta = norm_linear_config(n_out, dtype, x4.stride(-1) != 1)
    n_n = _cdiv(n_out, meta["BLOCK_N"])
    product = y4.dtype if scale is None else torch.promote_types(y4.dtype, scale.dtype)
    flags = dict(
        HAS_Y=y is not None,
        HAS_SCALE=scale is not None,
        ROUND_PRODUCT=scale is not None and product.itemsize < 4,
        ROUND_SUM=y is not None and torch.promote_types(x4.dtype, product).itemsize < 4,
    )
    args = (x4, y4, x4 if scale is None else scale, norm_weight, norm_bias, weight, bias, out, n_rows, height, width)
    args += (k, n_out, eps, n_n, x4.stride(), y4.stride(), weight.stride(), out.stride())
    launch = ("norm_linear", (_cdiv(n_rows, meta["BLOCK_M"]) * n_n,), args, dict(meta, **flags))
    return out.view(*x.shape[:-1], n_out), [launch]


# Image rows a depthwise-taps program takes: its partial sums of the parameters' gradients are (K*K + 2) x C fp32 per
# TAPS_ROWS rows of an image (rmt_s at 224x224: 2.8% of a stage-1 map's bytes, 45% of a 7x7 one's, 8.7% over all
# its taps' maps; 2.3% at 800x800), written once and read once by their sum, both counted in the declared cost.
TAPS_ROWS = 16


def taps_config(width: int, channels: int) -> dict:
    """Tiles of the depthwise-taps kernels: a row's BLOCK_P pixels (the width, up to 64) by BLOCK_C channels, 1024
    elements on 8 warps. On sm_90 (tests/test_retention_triton.py builds every RMT CPE's and FFN's) 2048 on 4 or 8
    warps, or 1024 on 4, spilled in one kernel or another (GELU's forward up to 1 KB); so did every tile where the
    channels are strided, hence `fused_taps` hands the kernels contiguous maps. The backward also takes maxnreg
    (`_taps_backward_plan`): one block of 8 warps an SM, whose cost in latency hiding only a GPU can tell."""
    block_p = min(64, _pow2(width))
    return dict(ROWS=TAPS_ROWS, BLOCK_P=block_p, BLOCK_C=min(max(16, 1024 // block_p), max(16, _pow2(channels))),
                num_warps=8, num_stages=1)  # fmt: skip


def _taps_grid(u: torch.Tensor, meta: dict) -> tuple[int, tuple[int, int]]:
    """(n_chunks, grid) of the taps kernels over u (B, H, W, C)."""
    b, h, _, c = u.shape
    n_chunks = _cdiv(h, meta["ROWS"])
    return n_chunks, (b * n_chunks, _cdiv(c, meta["BLOCK_C"]))


def _taps_plan(u, in_bias, weight, bias, gelu: bool, dtype) -> tuple[torch.Tensor, list[Launch]]:
    """The output (B, H, W, C) in `dtype`, contiguous, and the one launch that fills it (`fused_taps` documents the
    inputs); on meta and fake tensors too."""
    b, h, w, c = u.shape
    out = torch.empty(b, h, w, c, dtype=dtype, device=u.device)
    meta = taps_config(w, c)
    n_chunks, grid = _taps_grid(u, meta)
    flags = dict(K=weight.shape[-1], GELU=gelu, IN_BIAS=in_bias is not None)
    shift = bias if in_bias is None else in_bias  # unread without IN_BIAS
    args = (u, shift, weight, bias, out, h, w, c, n_chunks, u.stride(), out.stride())
    return out, [("taps", grid, args, dict(meta, **flags))]


def _taps_backward_plan(dout, u, in_bias, weight, gelu: bool) -> tuple[tuple[torch.Tensor, torch.Tensor], list[Launch]]:
    """u's gradient (u's shape and dtype, contiguous) and the partial sums (programs, K*K + 2, C) fp32 of the
    weight's, bias's and in_bias's gradients, and the one launch that fills both; on meta and fake tensors too."""
    b, h, w, c = u.shape
    k = weight.shape[-1]
    du = torch.empty(u.shape, dtype=u.dtype, device=u.device)
    # ptxas's own register choice (often 128, sometimes 64) spilled 8-156 bytes in one dtype or another, under Triton
    # 3.6 or 3.8, at every tile tried (256-2048 elements, 4 or 8 warps); with up to 255 it takes 188-220, no spills
    meta = dict(taps_config(w, c), **({} if torch.version.hip else dict(maxnreg=255)))  # an NVIDIA option
    n_chunks, grid = _taps_grid(u, meta)
    sums = torch.empty(grid[0], k * k + 2, c, dtype=torch.float32, device=u.device)
    flags = dict(K=k, GELU=gelu, IN_BIAS=in_bias is not None, BLOCK_T=_pow2(k * k + 2))
    shift = weight if in_bias is None else in_bias  # unread without IN_BIAS
    args = (dout, u, shift, weight, du, sums, h, w, c, n_chunks, dout.stride(), u.stride(), du.stride())
    return (du, sums), [("taps_backward", grid, args, dict(meta, **flags))]


# The fp32 backward's warps (both kernels; fp32 takes 32 tokens a block). With 4, on sm_90: under Triton 3.6 (the GPU
# machine's) head dim 32's dq and dk/dv kernels took 252-255 registers and the rows' and columns' spilled 24 and 32
# bytes, head dim 16's dk/dv 24 bytes once each gradient took its input's layout; under 3.8 the one-block kernel
# spilled 8 bytes at head dim 32 once it added the LePE conv's gradient. With 8: 79-183 registers, no spills under
# 3.6 and 3.8, the tiles and their pipelining unchanged (tests/test_retention_triton.py).
FP32_BACKWARD_WARPS = 8


def backward_config(seq_len: int, head_dim: int, dtype: torch.dtype, n_seq: int = 1) -> dict:
    """`attend_config` for the backward (n_seq sequences along c, which PACK_ROWS may pack); fp32 takes 32 tokens a
    block and `FP32_BACKWARD_WARPS`: its dots run on FMAs, and at 64 tokens a block or fewer warps it spills."""
    meta = attend_config(seq_len, head_dim, dtype, n_seq)
    meta.pop("num_stages", None)  # the one-block kernel has no loop; the others loop more than once
    if dtype == torch.float32:
        block = min(32, meta["BLOCK_M"])
        meta.update(BLOCK_M=block, BLOCK_N=block, num_warps=FP32_BACKWARD_WARPS)
    return meta


def one_block(q: torch.Tensor) -> bool:
    """Whether the backward of a pass over q (A, B, C, L, D) holds each whole sequence in one block."""
    meta = backward_config(q.shape[3], q.shape[4], q.dtype, q.shape[2])
    return q.shape[3] <= meta["BLOCK_M"] // meta["PACK"]


def _attend_backward(
    q, k, table, pairs, v, out, dout, lse, dq, dk, dv, decay, width: int, accumulate: bool, dv_add=None
) -> list[Launch]:  # fmt: skip
    """The launches of `_attend_kernel`'s backward, views as `_attend` takes them; out and dout share one layout,
    dq, dk and dv have q's, k's and v's; accumulate: dq and dk are added to what they hold; dv_add (dout's layout),
    where given, is added to dv. Where one block holds each sequence (`one_block`), one launch that needs neither
    out nor lse (pass None); else two (dq; dk and dv) that need both."""
    n_a, n_b, n_c, seq_len, head_dim = q.shape
    meta = backward_config(seq_len, head_dim, q.dtype, n_c)
    strides = _strides(q, k, v, dout, table, pairs, decay)
    flags = dict(HEAD_DIM=head_dim, MANHATTAN=width > 0, ACCUMULATE=accumulate, ADD_DV=dv_add is not None)
    dv_add = dv if dv_add is None else dv_add  # unread without ADD_DV
    if lse is None:
        args = (q, k, v, dout, dq, dk, dv, dv_add, table, decay, seq_len, max(width, 1), n_b, n_c, *strides)
        # 16-bit, head dim 32 and up: a 32-token tile spills on sm_90 (the rotation's loads), a 64-token one does not;
        # two sequences fill it where there are two (packed whatever PACK_ROWS says: the same tile, half the programs)
        wide = meta["BLOCK_M"] == 32 and meta["BLOCK_D"] >= 32 and q.dtype != torch.float32
        tile = 64 if wide else meta["BLOCK_M"]
        warps = FP32_BACKWARD_WARPS if q.dtype == torch.float32 else 4
        pack = 2 if wide and n_c > 1 else meta["PACK"]
        block = dict(PACK=pack, BLOCK=tile, BLOCK_D=meta["BLOCK_D"], PRECISION=meta["PRECISION"], num_warps=warps)
        return [("attend_backward_block", (n_a * n_b * _cdiv(n_c, pack),), args, dict(block, **flags))]
    args = (q, k, v, out, dout, lse, dq, dk, dv, dv_add, table, decay, seq_len, max(width, 1), n_b, n_c, *strides)
    assert meta.pop("PACK") == 1, "a sequence longer than a block is never packed"
    grid = (n_a * n_b * n_c, _cdiv(seq_len, meta["BLOCK_M"]))  # BLOCK_M == BLOCK_N
    return [("attend_backward", grid, args, dict(meta, **flags, DQ=dq_)) for dq_ in (True, False)]


def backward_plan(dout, qkv, rot, decay, dv_add, chunkwise: bool, run) -> torch.Tensor:
    """The gradient of qkv (q and k unrotated) from the output's, in qkv's layout (the kernels write dq, dk, dv
    into it through q's, k's and v's strides, v's with dv_add, another gradient of v's, added: no gradient is
    stacked, scattered or summed outside), flash-style (no scores or probabilities are kept): each pass's backward
    runs (columns first, whose d(values) is d(rows), then rows, adding their dq and dk to the columns'), one launch
    where one block holds each sequence, else two after the pass's forward recomputed with its lse. Rows then
    columns recompute the rows (the columns' values) in any case.
    `run(launch)` runs or records each launch, so on meta or fake tensors this is the plan."""
    dout, dv_add = dout.contiguous(), dv_add.contiguous()  # (b, h, w, N, d), as out
    qkv = qkv.contiguous()  # d_qkv takes its strides (a copy only where the op was given another layout)
    q, k, v = _qkv_views(qkv, chunkwise)
    d_qkv = torch.empty_like(qkv)
    dq, dk, dv = _qkv_views(d_qkv, chunkwise)
    out = torch.empty_like(dout, dtype=v.dtype)
    table, pairs = _table(q, rot)

    def forward(q_, k_, t_, v_, out_, decay_, width: int, needed: bool):
        """The pass's forward again, with its lse, where its backward needs them (or its output is needed)."""
        lse = None if one_block(q_) else torch.empty(q_.shape[:4], dtype=torch.float32, device=q_.device)
        if lse is not None or needed:
            run(_attend(q_, k_, t_, pairs, v_, out_, decay_, lse, width))
        return lse

    if not chunkwise:
        w = q.shape[3]
        (qv, kv, tv, dqv, dkv), (vv, ov, dov, dvv, dav), dec = _whole_image_views(
            (q, k, table, dq, dk), (v, out, dout, dv, dv_add), decay
        )
        lse = forward(qv, kv, tv, vv, ov, dec, w, False)
        for launch in _attend_backward(qv, kv, tv, pairs, vv, ov, dov, lse, dqv, dkv, dvv, dec, w, False, dav):
            run(launch)
        return d_qkv
    rows, d_rows = torch.empty_like(dout, dtype=v.dtype), torch.empty_like(dout, dtype=v.dtype)
    (qr, kr, tr, dqr, dkr), (vr, rr, drr, dvr, dar), dec_r = _row_views(
        (q, k, table, dq, dk), (v, rows, d_rows, dv, dv_add), decay
    )
    lse_r = forward(qr, kr, tr, vr, rr, dec_r, 0, True)
    (qc, kc, tc, dqc, dkc), (rc, oc, doc, drc), dec_c = _column_views(
        (q, k, table, dq, dk), (rows, out, dout, d_rows), decay
    )
    lse_c = forward(qc, kc, tc, rc, oc, dec_c, 0, False)
    for launch in [
        *_attend_backward(qc, kc, tc, pairs, rc, oc, doc, lse_c, dqc, dkc, drc, dec_c, 0, False),
        *_attend_backward(qr, kr, tr, pairs, vr, rr, drr, lse_r, dqr, dkr, dvr, dec_r, 0, True, dar),
    ]:
        run(launch)
    return d_qkv


def _runner(q: torch.Tensor):
    """A function running one launch on q's device: CUDA, or CPU through Triton's interpreter."""
    kernels = _kernels()
    interpret = _interpreted(kernels["attend"])
    if q.device.type == "cpu" and not interpret:
        raise RuntimeError(
            'attn_impl="triton" runs on CUDA tensors, or on CPU ones through Triton\'s interpreter, which needs '
            "TRITON_INTERPRET=1 set before triton is first imported."
        )

    def run(launch: Launch) -> None:
        name, grid, args, meta = launch
        if interpret:
            meta = {
                key: value for key, value in meta.items() if key not in LAUNCH_OPTIONS
            }  # the interpreter takes none
        kernels[name][grid](*args, **meta)

    return run


@torch.library.custom_op("rmt_zoo::retention", mutates_args=())
def _retention_op(
    qkv: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, rot: torch.Tensor, decay: torch.Tensor,
    chunkwise: bool,
) -> torch.Tensor:  # fmt: skip
    out, calls = launches(qkv, weight, bias, rot, decay, chunkwise)
    run = _runner(qkv)
    for launch in calls:
        run(launch)
    return out


@_retention_op.register_fake
def _(qkv, weight, bias, rot, decay, chunkwise) -> torch.Tensor:
    return qkv.new_empty(qkv[:, :, :, 2].shape)


@torch.library.custom_op("rmt_zoo::retention_backward", mutates_args=())
def _retention_backward_op(
    dout: torch.Tensor, qkv: torch.Tensor, rot: torch.Tensor, decay: torch.Tensor, dv_add: torch.Tensor,
    chunkwise: bool,
) -> torch.Tensor:  # fmt: skip
    return backward_plan(dout, qkv, rot, decay, dv_add, chunkwise, _runner(qkv))


@_retention_backward_op.register_fake
def _(dout, qkv, rot, decay, dv_add, chunkwise):
    return backward_plan(dout, qkv, rot, decay, dv_add, chunkwise, lambda launch: None)


def _setup_context(ctx, inputs, output) -> None:
    qkv, weight, bias, rot, decay, chunkwise = inputs
    ctx.save_for_backward(qkv, weight, rot, decay)
    ctx.chunkwise, ctx.bias_dtype = chunkwise, bias.dtype


def _lepe_backward(dout: torch.Tensor, v: torch.Tensor, weight: torch.Tensor, needed: list[bool]) -> tuple:
    """The LePE conv's gradients (of v, in dout's layout; of weight and bias, where `needed` says so, else None) from
    the output's, dout: the conv's own backward (cuDNN's on CUDA), in v's dtype as autocast ran the conv, on
    channels-last views of the (b, h, w, N, d) maps."""
    nchw = lambda t: t.flatten(3).permute(0, 3, 1, 2)  # noqa: E731  (b, h, w, N, d) -> (b, C, h, w), channels last
    channels, pad = weight.shape[0], weight.shape[-1] // 2
    grads = torch.ops.aten.convolution_backward(
        nchw(dout), nchw(v), weight.to(v.dtype), [channels], [1, 1], [pad, pad], [1, 1], False, [0, 0], channels,
        [True, *needed],
    )  # fmt: skip
    return grads[0].permute(0, 2, 3, 1).reshape(v.shape), grads[1], grads[2]


def _backward(ctx, dout: torch.Tensor):
    """The gradient of qkv from the fused backward, which adds the LePE conv's gradient of v as it writes v's, and
    the conv's weight's and bias's, each in its input's dtype (out = LePE(v) + attention)."""
    qkv, weight, rot, decay = ctx.saved_tensors
    dv_lepe, dweight, dbias = _lepe_backward(dout, qkv[:, :, :, 2], weight, list(ctx.needs_input_grad[1:3]))
    d_qkv = torch.ops.rmt_zoo.retention_backward(dout, qkv, rot, decay, dv_lepe, ctx.chunkwise)
    dweight = None if dweight is None else dweight.to(weight.dtype)
    dbias = None if dbias is None else dbias.to(ctx.bias_dtype)
    return d_qkv, dweight, dbias, None, None, None


_retention_op.register_autograd(_backward, setup_context=_setup_context)


def _call_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype an op call on x runs in: autocast's on x's device where it is on, else x's. (zoo/_retention.py's
    `autocast_dtype` imports this module, so this cannot import it.)"""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def retention(
    qkv: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, rot: torch.Tensor, decay: torch.Tensor,
    chunkwise: bool,
) -> torch.Tensor:  # fmt: skip
    """MaSA's output before its projection, LePE(v) + attention, as (b, h, w, N, d) contiguous (the layout out_proj
    reads), from the qkv projection (b, h, w, 3, N, d) (q and k unrotated; the kernels read all three through
    views), the LePE depthwise conv's weight (C, 1, K, K) and bias (C,), the rotary tables `rot`
    (zoo/_rmt_fast.py's `rotary_tables` real form: (cos, signed sin) x (q, k with its 1/sqrt(d)), broadcasting to
    q's shape: (b, h, N, w, d) for row-then-column, (b, N, h, w, d) for the whole image) and the per-head decay (N,).
    The kernels rotate and scale q and k as they load them, and compute the LePE conv from the v they read and add
    it as they store. Under autocast qkv takes its dtype, and the conv's weights are rounded to it, as autocast's
    matmuls and conv would."""
    return _retention_op(qkv.to(_call_dtype(qkv)), weight.contiguous(), bias, rot, decay, chunkwise)


# flexible_layout: inductor hands x and y over in whatever layout it gave them (the kernel reads them through their
# strides), where the default would copy them to the traced strides, once for each of the two ops sharing x.
# custom_op takes tags only since 2025 (pytorch/pytorch#135236) and pyproject allows torch 2.5: without them the op
# keeps inductor's default constraint (those copies).
_LAYOUT_TAGS = (
    dict(tags=(torch.Tag.flexible_layout,)) if "tags" in inspect.signature(torch.library.custom_op).parameters else {}
)


@torch.library.custom_op("rmt_zoo::norm_linear", mutates_args=(), **_LAYOUT_TAGS)
def _norm_linear_op(
    x: torch.Tensor, y: torch.Tensor | None, scale: torch.Tensor | None, norm_weight: torch.Tensor,
    norm_bias: torch.Tensor, eps: float, weight: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype,
) -> torch.Tensor:  # fmt: skip
    out, calls = _norm_linear_plan(x, y, scale, norm_weight, norm_bias, eps, weight, bias, dtype)
    _runner(x)(calls[0])
    return out


@_norm_linear_op.register_fake
def _(x, y, scale, norm_weight, norm_bias, eps, weight, bias, dtype) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=dtype)


def norm_linear(
    x: torch.Tensor, norm: torch.nn.LayerNorm, layer: torch.nn.Linear, y: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """layer(norm(x)), or layer(norm(x + y)) or layer(norm(x + scale * y)) (scale broadcasting over x's last dim),
    in one launch that normalizes the rows as it loads them for the matmul: the LayerNorm's output, and the sum,
    never go to memory. In the dtype the linear would run in (autocast's where it is on), with torch's roundings.
    For forwards that record no gradients: the op has no backward. A norm without affine parameters or a layer
    without bias takes ones and zeros in their place. y broadcasts to x's shape as x + y would; the kernel reads the
    parameters and scale as contiguous vectors of the channels."""
    k, n_out = layer.in_features, layer.out_features
    if x.shape[-1] != k or tuple(norm.normalized_shape) != (k,):
        raise ValueError(
            f"norm_linear needs x's channels ({x.shape[-1]}), the LayerNorm's shape {tuple(norm.normalized_shape)} "
            f"and the linear's in_features ({k}) to agree."
        )
    gain = norm.weight.contiguous() if norm.weight is not None else x.new_ones(k, dtype=torch.float32)
    shift = norm.bias.contiguous() if norm.bias is not None else x.new_zeros(k, dtype=torch.float32)
    bias = layer.bias.contiguous() if layer.bias is not None else x.new_zeros(n_out, dtype=torch.float32)
    scale = None if scale is None else scale.reshape(-1).expand(k).contiguous()
    y = y if y is None or y.shape == x.shape else y.expand(x.shape)  # read through its strides: 0 where broadcast
    return _norm_linear_op(x, y, scale, gain, shift, norm.eps, layer.weight, bias, _call_dtype(x))


@torch.library.custom_op("rmt_zoo::depthwise_taps", mutates_args=())
def _taps_op(
    u: torch.Tensor, in_bias: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor, gelu: bool,
    dtype: torch.dtype,
) -> torch.Tensor:  # fmt: skip
    out, calls = _taps_plan(u, in_bias, weight, bias, gelu, dtype)
    _runner(u)(calls[0])
    return out


@_taps_op.register_fake
def _(u, in_bias, weight, bias, gelu, dtype) -> torch.Tensor:
    return u.new_empty(u.shape, dtype=dtype)


@torch.library.custom_op("rmt_zoo::depthwise_taps_backward", mutates_args=())
def _taps_backward_op(
    dout: torch.Tensor, u: torch.Tensor, in_bias: torch.Tensor | None, weight: torch.Tensor, gelu: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    grads, calls = _taps_backward_plan(dout, u, in_bias, weight, gelu)
    _runner(u)(calls[0])
    return grads


@_taps_backward_op.register_fake
def _(dout, u, in_bias, weight, gelu):
    return _taps_backward_plan(dout, u, in_bias, weight, gelu)[0]


def _taps_setup_context(ctx, inputs, output) -> None:
    u, in_bias, weight, bias, gelu, _ = inputs
    ctx.save_for_backward(u, in_bias, weight)
    ctx.gelu, ctx.bias_dtype = gelu, bias.dtype


def _taps_backward(ctx, dout: torch.Tensor):
    """The gradients of u (in u's dtype), in_bias, the weight and the bias (each in its own dtype) from one launch,
    whose per-program partial sums of the parameters' gradients are summed here (a small reduction inductor fuses
    with the casts)."""
    u, in_bias, weight = ctx.saved_tensors
    du, partial = torch.ops.rmt_zoo.depthwise_taps_backward(dout.contiguous(), u, in_bias, weight, ctx.gelu)
    sums = partial.sum(0)
    k2 = weight[0].numel()
    dweight = sums[:k2].t().reshape(weight.shape).to(weight.dtype)
    d_in = None if in_bias is None else sums[k2 + 1].to(in_bias.dtype)
    return du, d_in, dweight, sums[k2].to(ctx.bias_dtype), None, None


_taps_op.register_autograd(_taps_backward, setup_context=_taps_setup_context)


def fused_taps(
    u: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, in_bias: torch.Tensor | None = None, gelu: bool = False
) -> torch.Tensor:
    """conv(act(u + in_bias)) + bias for channels-last u (B, H, W, C): the depthwise K x K conv (weight (C, 1, K, K),
    zero padding), act exact GELU where `gelu`, in one launch, and its backward in one launch that also sums the
    parameters' gradients (the plain taps' backward is a scatter and nine reductions, each reading the maps again).
    In the dtype the conv would run in (autocast's where it is on), the parameters rounded to it; u is read as
    a contiguous copy where it is not contiguous (a stage's first CPE gets the downsampling's NCHW-ordered map, which
    a compiled graph then writes channels-last in the first place). RMT's FFN passes fc1's output without its bias,
    the bias and gelu=True; the CPE its input."""
    c = u.shape[-1]
    square = weight.dim() == 4 and weight.shape[2] == weight.shape[3] and weight.shape[2] % 2 == 1
    if (
        not square
        or weight.shape[:2] != (c, 1)
        or bias.shape != (c,)
        or (in_bias is not None and in_bias.shape != (c,))
    ):
        raise ValueError(
            f"fused_taps needs a (C, 1, K, K) weight with K odd and (C,) biases for u's {c} channels, got "
            f"{tuple(weight.shape)}, {tuple(bias.shape)} and {None if in_bias is None else tuple(in_bias.shape)}."
        )
    dtype = _call_dtype(u)
    return _taps_op(u.to(dtype).contiguous(), in_bias, weight.contiguous(), bias, gelu, dtype)


def _probe(device: torch.device, dtype: torch.dtype) -> None:
    """Build and run both forms, forward and backward, and `norm_linear`, on tiny inputs, with short rows packed
    as `PACK_ROWS` says: raises where the kernels cannot be built."""
    new = lambda *s: torch.randn(s, device=device, dtype=dtype, requires_grad=True)  # noqa: E731
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
        # rows then columns on a 2x17 grid, two heads of 32 (the backward pairs the heads' rows in 16 bits); one
        # head of 16 on a 2x3 image
        for chunkwise, (h, w, n, d) in ((True, (2, 17, 2, 32)), (False, (2, 3, 1, 16))):
            rot = torch.randn(2, 2, *((1, h, 1, w, d) if chunkwise else (1, 1, h, w, d)), device=device)
            lepe = (new(n * d, 1, 5, 5), new(n * d))  # the conv, 5x5 as in RMT
            out = _retention_op(new(1, h, w, 3, n, d), *lepe, rot, torch.full((n,), -0.5, device=device), chunkwise)
            out.sum().backward()
        with torch.no_grad():  # LayerNorm inside the matmul, with a residual added first
            x = torch.randn(2, 16, device=device, dtype=dtype)
            layer, norm = torch.nn.Linear(16, 16, device=device), torch.nn.LayerNorm(16, device=device)
            norm_linear(x, norm, layer, x, torch.ones(16, device=device))


def _probe_taps(device: torch.device, dtype: torch.dtype) -> None:
    """Build and run the taps kernels as the CPE and the FFN take them, forward and backward, on tiny inputs."""
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
        for in_bias, gelu in ((None, False), (torch.randn(16, device=device), True)):
            u = torch.randn(1, 2, 3, 16, device=device, dtype=dtype, requires_grad=True)
            weight, bias = torch.randn(16, 1, 3, 3, device=device), torch.randn(16, device=device)
            fused_taps(u, weight, bias, in_bias, gelu).sum().backward()


_BUILDS: dict[tuple[torch.device, torch.dtype, bool], bool] = {}
_TAPS_BUILDS: dict[tuple[torch.device, torch.dtype], bool] = {}


def _tried(cache: dict, probe, key: tuple, fallback: str) -> bool:
    """Whether `probe(device, dtype)` runs, tried once per key (device, dtype, and any switch the probe's kernels
    follow) into `cache`; the cache's first failure warns that the `fallback` is taken. Fake tensors (export, the GPU
    proxy's fake CUDA) have nothing to build: answered as where the kernels build."""
    if torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE) is not None:
        return True
    device, dtype = key[:2]
    if key not in cache:
        first = False not in cache.values()
        try:
            probe(device, dtype)
            cache[key] = True
        except Exception as e:  # any failure to build (Triton, ptxas, the driver) takes the other path
            cache[key] = False
            if first:
                warnings.warn(f"{fallback} on {device} in {dtype} ({type(e).__name__}: {e}).", stacklevel=3)
    return cache[key]


@torch.compiler.assume_constant_result  # a compiled graph takes the answer as a constant, asked when traced
def _builds(device: torch.device, dtype: torch.dtype, packed: bool) -> bool:
    """Whether the retention and LayerNorm kernels build and run on `device` in `dtype`, with short rows packed
    (`packed`: PACK_ROWS as it is, which the probe's launches follow) or not."""
    fallback = 'attn_impl="auto" takes matmul-softmax: the fused retention kernel cannot be built'
    return _tried(_BUILDS, _probe, (device, dtype, packed), fallback)


@torch.compiler.assume_constant_result
def _taps_builds(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the taps kernels build and run on `device` in `dtype` (apart from `_builds`: either may fail alone)."""
    fallback = "compiled training steps take the plain depthwise taps: the Triton taps kernels cannot be built"
    return _tried(_TAPS_BUILDS, _probe_taps, (device, dtype), fallback)


def _kernels_may_run(x: torch.Tensor) -> bool:
    """CUDA, triton installed, and not a graph exported to ONNX (which has no op for the kernels)."""
    return x.device.type in AUTO_DEVICES and TRITON_FOUND and not torch.onnx.is_in_onnx_export()


def auto_takes(x: torch.Tensor) -> bool:
    """Whether attn_impl="auto" takes the kernels for a MaSA call on x: on CUDA where triton is installed and the
    kernels build in the dtype the call would run in (autocast's where it is on), except in a graph exported to
    ONNX, which has no op for them. Predicted, until a GPU measures it (benchmarks/rmt_gpu.py times "auto",
    "matmul" and "triton" side by side): fewer bytes than matmul-softmax at every stage (docs/rmt_internals.md)."""
    return _kernels_may_run(x) and _builds(x.device, _call_dtype(x), PACK_ROWS)


def taps_available(x: torch.Tensor) -> bool:
    """Whether the taps kernels can take a conv on x: as `auto_takes`, with the taps kernels' own build probe."""
    return _kernels_may_run(x) and _taps_builds(x.device, _call_dtype(x))


def _nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _plan_cost(plan: list[Launch], rot: torch.Tensor, decay: torch.Tensor) -> OpCost:
    """Each launch reads its inputs once and writes its outputs once: repeated reads within a launch (the image
    rows a row-then-column program shares with its neighbours, a key block read by every query block, the rotary
    tables every image and head shares) are taken to be L2 hits."""
    total = OpCost(0, 0, 0)
    tables = _nbytes(rot, decay)
    for name, _, args, meta in plan:
        if name == "attend_backward":
            q, k, v, out, dout, lse, dq, dk, dv, dv_add = args[:10]
            written = (dq,) if meta["DQ"] else (dk, dv)
            added = (*written[:1],) * meta["ACCUMULATE"] + (dv_add,) * (meta["ADD_DV"] and not meta["DQ"])
            total += OpCost(1, _nbytes(q, k, v, out, dout, lse, *added) + tables, _nbytes(*written))
        elif name == "attend_backward_block":
            q, k, v, dout, dq, dk, dv, dv_add = args[:8]
            added = (dq, dk) * meta["ACCUMULATE"] + (dv_add,) * meta["ADD_DV"]
            total += OpCost(1, _nbytes(q, k, v, dout, *added) + tables, _nbytes(dq, dk, dv))
        else:  # "rows_then_columns", "attend": q, k, v, the LePE weight and bias, out, (lse,)
            q, k, v, weight, bias, out = args[:6]
            lepe = (weight, bias) if meta["LEPE_K"] else ()
            stored = (args[6],) if meta.get("STORE_LSE") else ()  # the lse
            total += OpCost(1, _nbytes(q, k, v, *lepe) + tables, _nbytes(out, *stored))
    return total


def _declared_cost(qkv, weight, bias, rot, decay, chunkwise: bool) -> OpCost:
    """One forward call (rmt_zoo::retention): one launch, reading q, k, v, the LePE weights and the tables once and
    writing the output once."""
    return _plan_cost(launches(qkv, weight, bias, rot, decay, chunkwise)[1], rot, decay)


def _declared_backward_cost(dout, qkv, rot, decay, dv_add, chunkwise: bool) -> OpCost:
    """One backward call (rmt_zoo::retention_backward): the forward recomputed with its lse, then each pass's
    dq and dk/dv launches."""
    plan: list[Launch] = []
    backward_plan(dout, qkv, rot, decay, dv_add, chunkwise, plan.append)
    return _plan_cost(plan, rot, decay)


def _declared_norm_linear_cost(x, y, scale, norm_weight, norm_bias, eps, weight, bias, dtype) -> OpCost:
    """One call of rmt_zoo::norm_linear: one launch reading x (and y), the parameters once and writing the output
    once (the rows' second and third reads, and the weight's by every block of rows, are taken to be L2 hits)."""
    out, _ = _norm_linear_plan(x, y, scale, norm_weight, norm_bias, eps, weight, bias, dtype)
    inputs = [t for t in (x, y, scale, norm_weight, norm_bias, weight, bias) if t is not None]
    return OpCost(1, _nbytes(*inputs), _nbytes(out))


def _declared_macs(qkv, weight, bias, rot, decay, chunkwise: bool) -> OpMacs:
    """One forward call's multiply-adds as the plain path's are counted: QK^T and AV of each attention pass (rows
    then columns, or the whole image) and the LePE conv's."""
    b, h, w, _, n, d = qkv.shape
    passes = (b * n * h * w**2 + b * n * w * h**2) if chunkwise else b * n * (h * w) ** 2
    return OpMacs(2 * d * passes + b * h * w * weight.shape[0] * weight[0].numel())


def _declared_norm_linear_macs(x, y, scale, norm_weight, norm_bias, eps, weight, bias, dtype) -> OpMacs:
    """The matmul's multiply-adds, and the LayerNorm's elements."""
    return OpMacs(x.numel() // x.shape[-1] * weight.numel(), normalized=x.numel())


def _declared_taps_cost(u, in_bias, weight, bias, gelu, dtype) -> OpCost:
    """One call of rmt_zoo::depthwise_taps: one launch reading u and the parameters once, writing the output once
    (each tap's neighbours are L1/L2 hits)."""
    out, _ = _taps_plan(u, in_bias, weight, bias, gelu, dtype)
    return OpCost(1, _nbytes(u, weight, bias, *([] if in_bias is None else [in_bias])), _nbytes(out))


def _declared_taps_backward_cost(dout, u, in_bias, weight, gelu) -> OpCost:
    """One call of rmt_zoo::depthwise_taps_backward: one launch reading dout, u and the parameters once, writing u's
    gradient and the partial sums."""
    (du, sums), _ = _taps_backward_plan(dout, u, in_bias, weight, gelu)
    return OpCost(1, _nbytes(dout, u, weight, *([] if in_bias is None else [in_bias])), _nbytes(du, sums))


def _declared_taps_macs(u, in_bias, weight, bias, gelu, dtype) -> OpMacs:
    """The depthwise conv's multiply-adds."""
    return OpMacs(u.numel() * weight[0].numel())


declare_cost("rmt_zoo::retention", _declared_cost)
declare_cost("rmt_zoo::retention_backward", _declared_backward_cost)
declare_cost("rmt_zoo::norm_linear", _declared_norm_linear_cost)
declare_macs("rmt_zoo::retention", _declared_macs)
declare_macs("rmt_zoo::norm_linear", _declared_norm_linear_macs)
declare_cost("rmt_zoo::depthwise_taps", _declared_taps_cost)
declare_cost("rmt_zoo::depthwise_taps_backward", _declared_taps_backward_cost)
declare_macs("rmt_zoo::depthwise_taps", _declared_taps_macs)
