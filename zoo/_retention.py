"""The ways RMT's retention, softmax(q k^T + D) v with a spatial-decay bias D, runs, and the choice between them.

`fused(impl, x)` says whether MaSA takes the fused Triton op (zoo/_retention_triton.py, forward and backward), which
takes the raw qkv projection and the LePE conv's weights and does the rotation, attention and LePE itself: "triton",
and "auto" on CUDA where it builds (`_retention_triton.auto_takes`). Otherwise `attend(impl, ...)` is the entry:
MaSA hands it rotated q, k, v and the stage's decay tables, and it runs the row-then-column or whole-image form
with the kernel `impl` names: batched matmul-softmax, SDPA with D as the mask or FlexAttention (D computed in the
kernel); "auto" picks matmul-softmax or SDPA by device and row length (`_auto_matmul`). docs/rmt_internals.md has
the measurements.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _retention_triton

__all__ = [
    "ATTN_IMPLS",
    "MAX_MASK_ELEMS",
    "NORMS_IN_MATMUL",
    "SHORT_ROW",
    "attend",
    "autocast_dtype",
    "check_impl",
    "fused",
    "in_graph",
    "manhattan_bias",
    "matmul_softmax",
    "norms_fused",
    "sdpa",
]

ATTN_IMPLS = ("auto", "matmul", "sdpa", "flex", "reference", "triton")
# Above this many mask elements (heads x L x L), the whole-image form works in query blocks (64 MB in fp32).
MAX_MASK_ELEMS = 1 << 24
# Rows of at most this many keys take matmul-softmax under "auto" on GPUs too (every row at classification sizes):
# there SDPA's kernel costs more than a bmm and a softmax. Longer rows (dense prediction) keep SDPA, which holds no
# L x L scores.
SHORT_ROW = 64

# Off: blocks keep their LayerNorms apart from the matmuls wherever the fused op runs (`norms_fused`); on a GPU,
# benchmarks/rmt_gpu.py times the fused kernel against LayerNorm and cuBLAS this way.
NORMS_IN_MATMUL = True
# Device types with an autocast, asked once: torch.compile on torch 2.11 cannot trace
# torch.amp.is_autocast_available (a C builtin); is_autocast_enabled and get_autocast_dtype it traces.
_AUTOCAST_KINDS = frozenset(
    kind for kind in ("cpu", "cuda", "xpu", "mps", "hpu", "mtia", "xla") if torch.amp.is_autocast_available(kind)
)


def in_graph() -> bool:
    """Whether this forward is being compiled, exported or traced: caches and eager-only forms step aside."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast runs matmuls and convs in on `device`, or None where it is off (or has no autocast)."""
    if device.type in _AUTOCAST_KINDS and torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


def check_impl(impl: str) -> None:
    """Refuse an unknown `attn_impl` in one sentence, and "triton" where Triton cannot be imported."""
    if impl not in ATTN_IMPLS:
        raise ValueError(f"attn_impl must be one of {', '.join(ATTN_IMPLS)}, not {impl!r}.")
    if impl == "triton":
        _retention_triton.require()


def manhattan_bias(decay_h: torch.Tensor, decay_w: torch.Tensor, rows: slice) -> torch.Tensor:
    """decay * (|i - i'| + |j - j'|) for the query tokens in image rows `rows`, against all tokens: (N, r*w, h*w),
    one broadcast add of the decayed 1-D tables (N, h, h) and (N, w, w)."""
    n, h, w = decay_h.shape[0], decay_h.shape[1], decay_w.shape[1]
    bias = decay_h[:, rows, None, :, None] + decay_w[:, None, :, None, :]  # (N, r, w, h, w)
    return bias.reshape(n, -1, h * w)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    # k comes scaled (folded into the rotary table). Masks are kept 4-D: a 3-D one sends SDPA on CPU to its
    # slower math path.
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)


def matmul_softmax(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Batched matmuls with an in-place bias add and a softmax; k comes scaled.

    Under autocast with q already in half precision it runs outside autocast, in q's dtype: CUDA's autocast would
    run softmax in fp32, writing the scores out in fp32 and casting the probabilities back (two score-sized copies
    per call), while softmax on bf16/fp16 accumulates in fp32 anyway (eager kernels and inductor alike).
    """
    if q.dtype in (torch.bfloat16, torch.float16) and autocast_dtype(q.device) is not None:
        with torch.autocast(q.device.type, enabled=False):
            return matmul_softmax(q, k.to(q.dtype), v.to(q.dtype), bias)
    scores = torch.matmul(q, k.transpose(-1, -2)).add_(bias)
    return torch.matmul(torch.softmax(scores, -1), v)


def _auto_matmul(device: torch.device, keys: int, width: int) -> bool:
    """Whether "auto" takes matmul-softmax. On CPU it beats SDPA's kernels in eager mode, and in compiled graphs at
    the short rows and columns of the decomposed form (width 0); compiled whole-image stages are faster on SDPA.
    Elsewhere: short rows only (SHORT_ROW)."""
    if device.type == "cpu":
        return width == 0 or not in_graph()
    return keys <= SHORT_ROW


_compiled_flex = None


def _flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, decay: torch.Tensor, width: int) -> torch.Tensor:
    """FlexAttention with the decay computed inside the kernel from token indices: no mask in memory at all.

    width > 0: whole-image Manhattan distance on a grid of that width; width == 0: 1-D distance |i - i'|.
    Eager calls go through one compiled flex_attention (it has no fast eager form); k comes scaled.
    """
    from torch.nn.attention.flex_attention import flex_attention

    def score_mod(score, b, h, q_idx, kv_idx):
        if width:
            dist = (q_idx // width - kv_idx // width).abs() + (q_idx % width - kv_idx % width).abs()
        else:
            dist = (q_idx - kv_idx).abs()
        return score + decay[h] * dist

    global _compiled_flex
    if in_graph():
        return flex_attention(q, k, v, score_mod=score_mod, scale=1.0)
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex(q, k, v, score_mod=score_mod, scale=1.0)


def _kernel(impl: str, q, k, v, bias, decay, width: int) -> torch.Tensor:
    """One attention call over the last two dims, by `impl`."""
    if impl == "flex":
        return _flex(q, k, v, decay.to(q.dtype), width)
    if impl == "matmul" or (impl == "auto" and _auto_matmul(q.device, k.shape[-2], width)):
        return matmul_softmax(q, k, v, bias)
    return sdpa(q, k, v, bias)


def fused(impl: str, x: torch.Tensor) -> bool:
    """Whether a MaSA call on x takes the fused op: "triton", and "auto" where `auto_takes(x)`."""
    return impl == "triton" or (impl == "auto" and _retention_triton.auto_takes(x))


def norms_fused(impl: str, x: torch.Tensor) -> bool:
    """Whether a block on x computes its LayerNorms inside the matmuls after them (`_retention_triton.norm_linear`):
    where MaSA takes the fused op (`fused`), in forwards that record no gradients (that kernel has no backward) and
    are not traced by FX (whose graph keeps the plain modules), unless NORMS_IN_MATMUL is off."""
    return NORMS_IN_MATMUL and not torch.is_grad_enabled() and not isinstance(x, torch.fx.Proxy) and fused(impl, x)


def attend(
    impl: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, masks: tuple[torch.Tensor, ...],
    decay: torch.Tensor, chunkwise: bool,
) -> torch.Tensor:  # fmt: skip
    """Retention of rotated q, k ((b, h, N, w, d) chunkwise, else (b, N, h, w, d); k scaled) and v (b, h, w, N, d)
    with the stage's decay `masks` (zoo/_rmt_fast.py's layouts), as (b, h, w, N, d), for every `impl` but the fused
    op's (`fused`)."""
    if chunkwise:
        return _row_then_column(impl, q, k, v, masks, decay)
    return _whole_image(impl, q, k, v, masks, decay)


def _row_then_column(impl: str, q, k, v, masks, decay) -> torch.Tensor:
    """q, k (b, h, N, w, d), v (b, h, w, N, d) -> (b, h, w, N, d): rows, then columns of the rows' output."""
    b, h, n, w, d = q.shape
    mask_w, mask_h = masks
    out = _kernel(impl, q.flatten(0, 1), k.flatten(0, 1), v.transpose(2, 3).flatten(0, 1), mask_w, decay, 0)
    cols = lambda t: t.view(b, h, n, w, d).permute(0, 3, 2, 1, 4).reshape(b * w, n, h, d)  # noqa: E731
    out = _kernel(impl, cols(q), cols(k), cols(out), mask_h, decay, 0)  # (b*w, N, h, d)
    return out.view(b, w, n, h, d).permute(0, 3, 1, 2, 4)


def _whole_image(impl: str, q, k, v, masks, decay) -> torch.Tensor:
    """q, k (b, N, h, w, d), v (b, h, w, N, d) -> (b, h, w, N, d); in query blocks where `masks` are 1-D tables."""
    b, n, h, w, d = q.shape
    q, k, v = q.flatten(2, 3), k.flatten(2, 3), v.flatten(1, 2).transpose(1, 2)
    if len(masks) == 1 or impl == "flex":
        out = _kernel(impl, q, k, v, masks[0], decay, w)
    else:
        out = _whole_image_blocks(impl, q, k, v, *masks, decay)
    return out.transpose(1, 2).unflatten(1, (h, w))


def _whole_image_blocks(impl: str, q, k, v, mask_h, mask_w, decay) -> torch.Tensor:
    """Query blocks of whole image rows, each with its own slice of the mask, so no (HW)^2 mask is held."""
    n, h, w = mask_h.shape[0], mask_h.shape[-1], mask_w.shape[-1]
    step = max(1, MAX_MASK_ELEMS // (n * w * h * w))
    outs = []
    for start in range(0, h, step):
        bias = manhattan_bias(mask_h, mask_w, slice(start, start + step))[None]
        outs.append(_kernel(impl, q[:, :, start * w : (start + step) * w], k, v, bias, decay, w))
    return torch.cat(outs, dim=2)
