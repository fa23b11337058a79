"""Fused RMSNorm and LayerNorm over the last dimension, beside their PyTorch references.

Math, per row x of width N (statistics in fp32 whatever the storage dtype; w and b optional):

    RMSNorm     rstd = 1 / sqrt(mean(x²) + eps)                      x̂ = x · rstd
    LayerNorm   μ = mean(x),  rstd = 1 / sqrt(mean((x − μ)²) + eps)  x̂ = (x − μ) · rstd
    y = x̂ · w + b

Backward (the vector-Jacobian product), with g = dy · w (g = dy without a weight), means over the row:

    RMSNorm     dx = rstd · (g − x̂ · mean(g · x̂))
    LayerNorm   dx = rstd · (g − mean(g) − x̂ · mean(g · x̂))
    dw = Σ_rows dy · x̂          db = Σ_rows dy

The forward is one pass that keeps only rstd per row (and μ for LayerNorm); the backward recomputes
x̂ from x and those statistics, so it too is one pass over the rows.

Bytes that must move, per row of N elements of `bytes` each (weights, bias and the fp32 statistics are
negligible next to them): forward reads x and writes y, 2·N·bytes; backward reads x and dy and writes
dx, 3·N·bytes; forward + backward 5·N·bytes. That is also what these kernels move, strided inputs
included (they are read in place, see below). `benchmarks/bench_norm.py` reports GB/s on that count.

Block sizes. A program holds whole rows in registers (BLOCK_N = next_power_of_2(N)), so x is read once:
no second pass over memory for the statistics. Rows are limited to 65536 bytes (the limit of Triton's
layer-norm tutorial): N ≤ 32768 in bf16/fp16, N ≤ 16384 in fp32; wider rows raise ValueError (they
would need a chunked two-pass kernel). Narrow rows, e.g. QK-norm over a head dim of 64-128, are packed
BLOCK_M to a tile so that one program still moves about 4096 elements; num_warps follows the tile size
(Liger-Kernel's `calculate_settings`).

Weight gradients without atomics (Liger-Kernel's RMSNorm backward): the backward launches about one
program per SM; each walks a contiguous chunk of rows, writes their dx, accumulates dy·x̂ (and dy) in
fp32 registers and stores one partial row; dw = partials.sum(0). The result is deterministic.

`add_rms_norm(x, residual)` fuses the residual add into the forward (one read of each, one write of
the sum and of the normed output; the norm is of the sum as rounded to x.dtype, as unfused code sees
it) and folds the sum's gradient into dx in the backward.

`mix_rms_norm(x, residual, x0, λ)` is the trainer's block entry: s = λ0·(x + residual) + λ1·x0, then its
RMSNorm, one pass reading x, residual (optional) and x0 and writing s and the normed output. Its backward
reads the three inputs again (a = x + residual and s recomputed bit for bit: nothing but rstd is saved
besides the inputs) with ds and dy, and writes dx (= dresidual = λ0·g) and dx0 (= λ1·g), g = ds + the
RMSNorm vjp of dy; dλ0 = Σ g·a and dλ1 = Σ g·x0 are reduced in the same pass, one fp32 partial pair per
program (as the weight gradient), summed after: deterministic, no atomics.

`rms_norm_rotary(x, cos, sin)` is QK-norm then rotary (`rotary_ref`, the half-truncated rotation of
train_gpt's Rotary tables) per (token, head) row of (B, T, H, D): a program holds each row as its two
halves (x1, x2), normalises, rounds to x.dtype (as `rms_norm` stores it) and writes (n1·cos + n2·sin,
n2·cos − n1·sin). Backward: dn = the rotation's transpose of dy, then RMSNorm's vjp; x is re-read, nothing
but rstd saved. Per call it moves 2·M·D·bytes forward and 3·M·D·bytes backward, where QK-norm followed by
an Inductor rotary moved 4 and 5 (the normed tensor written, read back, and its gradient too).

Inputs are read in place, never copied, whenever their last dim has unit stride and their leading dims
form at most two groups that each nest into one stride: the kernels address row r of M = prod(shape[:-1])
at (r // rows_inner)·stride_outer + (r % rows_inner)·stride_inner (`_row_layout`). That covers contiguous
tensors, slices of wider rows, transposed (T, B, N) -> (B, T, N) views, and the trainer's QK-norm
inputs: q and k are `F.linear(x, W_qkv).view(B, T, 3H, D).chunk(3, dim=-2)` views, (B, T, H, D) with
strides (T·3HD, 3HD, D, 1): outer group B·T at 3HD, inner group H at D. Copying them (`reshape(-1, D)`)
would move 2·M·D·bytes more in the forward and 2·M·D·bytes more in the backward (the saved x copied
again): for q and k in 12 layers at 48K tokens, H·D = 768 in bf16, ~7 GB per micro-step. Anything else
(three or more groups, a non-unit last stride, e.g. dy expanded from a scalar) is copied. Outputs (y, the sum, dx) are contiguous and in x.dtype, whatever the
autocast state (fp32 math inside, no separate cast: the op is not on autocast's lists). Weight and bias
may have another float dtype than x (e.g. fp32 parameters, bf16 activations); dw and db come back in the
parameter's dtype.

Status: correct against PyTorch under Triton's CPU interpreter (tests/test_norm.py; its bf16 test
is GPU-marked). GPU: not measured; BLOCK_M, num_warps and the number of backward programs
are untuned heuristics (one program per SM walks its
rows one tile at a time with nothing else in flight on that SM: if the backward measures latency-bound,
try 2-4 programs per SM), and add_rms_norm's fusion is unmeasured. Run `python -m
benchmarks.bench_norm` on an H100 to fill benchmarks/results.csv.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels import check_launchable, check_tensors, interpreted

# Widest row a program holds in registers, in bytes (Triton's 05-layer-norm tutorial uses the same).
MAX_ROW_BYTES = 65536
# Elements one program moves per tile: narrow rows are stacked until a tile holds about this many.
TILE_ELEMENTS = 4096
# Backward programs without a GPU (the interpreter runs them one after another; a few suffice).
CPU_BACKWARD_PROGRAMS = 4
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------------------------------------
# PyTorch references (fp32 math, result in the input dtype)
# ---------------------------------------------------------------------------------------------------


def rms_norm_ref(x: Tensor, weight: Optional[Tensor] = None, eps: Optional[float] = None) -> Tensor:
    """RMSNorm over the last dim in fp32: x · rsqrt(mean(x²) + eps) · w; eps=None means finfo(x.dtype).eps."""
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    x32 = x.float()
    y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    return y.to(x.dtype)


def add_rms_norm_ref(x: Tensor, residual: Tensor, weight: Optional[Tensor] = None,
                     eps: Optional[float] = None) -> tuple[Tensor, Tensor]:
    """(x + residual, rms_norm_ref(x + residual, weight, eps)): the sum in x's dtype, its norm as `rms_norm_ref`."""
    s = x + residual
    return s, rms_norm_ref(s, weight, eps)


def mix_rms_norm_ref(x: Tensor, residual: Optional[Tensor], x0: Tensor, lambdas: Tensor,
                     eps: Optional[float] = None) -> tuple[Tensor, Tensor]:
    """(s, rms_norm_ref(s, None, eps)) with s = λ0·(x + residual) + λ1·x0 (residual None: λ0·x + λ1·x0), each
    step in x's dtype as eager PyTorch rounds it."""
    a = x if residual is None else x + residual
    s = lambdas[0] * a + lambdas[1] * x0
    return s, rms_norm_ref(s, None, eps)


def rotary_ref(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary position embedding of x (B, T, H, D) in fp32, result in x's dtype: the halves (x1, x2) of D rotate
    by the angles of cos, sin (>= T, D / 2), row t for position t: (x1 cos + x2 sin, x2 cos − x1 sin)."""
    cos, sin = cos[None, : x.size(1), None, :], sin[None, : x.size(1), None, :]
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1).type_as(x)


def rms_norm_rotary_ref(x: Tensor, cos: Tensor, sin: Tensor, eps: Optional[float] = None) -> Tensor:
    """rotary_ref(rms_norm_ref(x, None, eps), cos, sin): QK-norm, then rotary."""
    return rotary_ref(rms_norm_ref(x, None, eps), cos, sin)

def layer_norm_ref(
    x: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, eps: float = 1e-5
) -> Tensor:
    """LayerNorm over the last dim in fp32: (x − mean) · rsqrt(var + eps) · w + b (biased variance)."""
    x32 = x.float()
    xc = x32 - x32.mean(-1, keepdim=True)
    y = xc * torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


# ---------------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------------


@triton.jit
def _row_offsets(rows, rows_inner, stride_outer, stride_inner):
    """Element offset of each row's first element. Rows are a (M / rows_inner, rows_inner) grid over the
    leading dims, merged into two groups (see `_row_layout`): row r sits at (r // rows_inner, r % rows_inner).
    A launch with rows_inner == 1 (rows one stride apart) specialises it to 1 and the division folds away."""
    return (rows // rows_inner) * stride_outer + (rows % rows_inner) * stride_inner


@triton.jit
def _norm_fwd_kernel(
    x_ptr, x_stride_outer, x_stride_inner,  # (M, N) input rows, unit stride along N (row addressing: _row_offsets)
    res_ptr, res_stride_outer, res_stride_inner,  # (M, N) residual added to x first, or None
    sum_ptr,  # (M, N) contiguous output x + residual, or None
    y_ptr,  # (M, N) contiguous output
    w_ptr,  # (N,) weight, or None
    b_ptr,  # (N,) bias, or None
    mean_ptr,  # (M,) fp32 output, LayerNorm only
    rstd_ptr,  # (M,) fp32 output
    M, N, rows_inner, eps,
    IS_RMS: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # One tile of BLOCK_M whole rows per program.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    cols = tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    row_mask = rows < M
    col_mask = cols < N
    mask = row_mask[:, None] & col_mask[None, :]  # (BLOCK_M, BLOCK_N)

    x_rows = _row_offsets(rows, rows_inner, x_stride_outer, x_stride_inner)  # (BLOCK_M,) int64
    x = tl.load(x_ptr + x_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        res_rows = _row_offsets(rows, rows_inner, res_stride_outer, res_stride_inner)
        r = tl.load(res_ptr + res_rows[:, None] + cols[None, :], mask=mask, other=0.0)
        s = (x + r.to(tl.float32)).to(sum_ptr.dtype.element_ty)
        tl.store(sum_ptr + rows[:, None] * N + cols[None, :], s, mask=mask)
        x = s.to(tl.float32)  # normalise the sum as stored, as the unfused code (and our backward) sees it

    if IS_RMS:
        xc = x  # masked lanes are already 0
    else:
        mean = tl.sum(x, axis=1) / N  # (BLOCK_M,)
        tl.store(mean_ptr + rows, mean, mask=row_mask)
        xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / N + eps)  # (BLOCK_M,)
    tl.store(rstd_ptr + rows, rstd, mask=row_mask)

    y = xc * rstd[:, None]
    if HAS_WEIGHT:
        y *= tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        y += tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rows[:, None] * N + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _norm_bwd_kernel(
    dy_ptr, dy_stride_outer, dy_stride_inner,  # (M, N) gradient of y, unit stride along N
    x_ptr, x_stride_outer, x_stride_inner,  # (M, N) the forward's normalised input (x + residual for add_rms_norm)
    w_ptr,  # (N,) weight, or None
    mean_ptr,  # (M,) fp32, LayerNorm only
    rstd_ptr,  # (M,) fp32
    dsum_ptr, dsum_stride_outer, dsum_stride_inner,  # (M, N) gradient reaching add_rms_norm's sum output, or None
    dx_ptr,  # (M, N) contiguous output
    dw_partial_ptr,  # (P, N) fp32 output: row pid holds this program's Σ dy·x̂, or None
    db_partial_ptr,  # (P, N) fp32 output: row pid holds this program's Σ dy, or None
    M, N, rows_inner, rows_per_program,
    IS_RMS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_DSUM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # Program pid owns rows [row_start, row_end) and walks them BLOCK_M at a time.
    pid = tl.program_id(0)
    row_start = pid.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    cols = tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    col_mask = cols < N
    if HAS_WEIGHT:
        w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)  # (BLOCK_N,)
    dw_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    db_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)

    for start in range(row_start, row_end, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
        row_mask = rows < row_end
        mask = row_mask[:, None] & col_mask[None, :]  # (BLOCK_M, BLOCK_N)
        x_rows = _row_offsets(rows, rows_inner, x_stride_outer, x_stride_inner)  # (BLOCK_M,) int64
        dy_rows = _row_offsets(rows, rows_inner, dy_stride_outer, dy_stride_inner)
        x = tl.load(x_ptr + x_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + dy_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + rows, mask=row_mask, other=0.0)  # (BLOCK_M,)

        if IS_RMS:
            xhat = x * rstd[:, None]
        else:
            mean = tl.load(mean_ptr + rows, mask=row_mask, other=0.0)
            xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        if HAS_WEIGHT:
            g = dy * w[None, :]
        else:
            g = dy
        # dx = rstd · (g − mean(g) − x̂ · mean(g · x̂)), without the mean(g) term for RMSNorm.
        g_xhat = tl.sum(g * xhat, axis=1) / N  # (BLOCK_M,)
        if IS_RMS:
            dx = (g - xhat * g_xhat[:, None]) * rstd[:, None]
        else:
            g_mean = tl.sum(g, axis=1) / N
            dx = (g - g_mean[:, None] - xhat * g_xhat[:, None]) * rstd[:, None]
        if HAS_DSUM:
            ds_rows = _row_offsets(rows, rows_inner, dsum_stride_outer, dsum_stride_inner)
            ds = tl.load(dsum_ptr + ds_rows[:, None] + cols[None, :], mask=mask, other=0.0)
            dx += ds.to(tl.float32)
        tl.store(dx_ptr + rows[:, None] * N + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)

        if HAS_WEIGHT:
            dw_acc += dy * xhat
        if HAS_BIAS:
            db_acc += dy

    if HAS_WEIGHT:
        tl.store(dw_partial_ptr + pid * N + cols, tl.sum(dw_acc, axis=0), mask=col_mask)
    if HAS_BIAS:
        tl.store(db_partial_ptr + pid * N + cols, tl.sum(db_acc, axis=0), mask=col_mask)


@triton.jit
def _mixed_rows(x_ptr, x_stride_outer, x_stride_inner, res_ptr, res_stride_outer, res_stride_inner,
                x0_ptr, x0_stride_outer, x0_stride_inner, rows, cols, mask, rows_inner, lam0, lam1,
                HAS_RESIDUAL: tl.constexpr):
    """(a, x0, s) of a tile in fp32: a = x + residual as the unfused add stores it (rounded to x's dtype), s =
    λ0·a + λ1·x0 rounded to x's dtype as stored, so the forward and the backward see the same bits."""
    x_rows = _row_offsets(rows, rows_inner, x_stride_outer, x_stride_inner)
    x = tl.load(x_ptr + x_rows[:, None] + cols[None, :], mask=mask, other=0.0)
    a = x.to(tl.float32)
    if HAS_RESIDUAL:
        res_rows = _row_offsets(rows, rows_inner, res_stride_outer, res_stride_inner)
        r = tl.load(res_ptr + res_rows[:, None] + cols[None, :], mask=mask, other=0.0)
        a = (a + r.to(tl.float32)).to(x.dtype).to(tl.float32)
    x0_rows = _row_offsets(rows, rows_inner, x0_stride_outer, x0_stride_inner)
    x0 = tl.load(x0_ptr + x0_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    s = (lam0 * a + lam1 * x0).to(x.dtype).to(tl.float32)
    return a, x0, s


@triton.jit
def _mix_rms_norm_fwd_kernel(
    x_ptr, x_stride_outer, x_stride_inner,  # (M, N) the residual stream, unit stride along N
    res_ptr, res_stride_outer, res_stride_inner,  # (M, N) added to x first (the previous block's output), or None
    x0_ptr, x0_stride_outer, x0_stride_inner,  # (M, N) the mix's second input (the normalised embedding)
    lambdas_ptr,  # (2,) λ0, λ1
    sum_ptr,  # (M, N) contiguous output s = λ0·(x + residual) + λ1·x0
    y_ptr,  # (M, N) contiguous output rms_norm(s)
    rstd_ptr,  # (M,) fp32 output
    M, N, rows_inner, eps,
    HAS_RESIDUAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    cols = tl.arange(0, BLOCK_N)
    row_mask = rows < M
    mask = row_mask[:, None] & (cols < N)[None, :]  # (BLOCK_M, BLOCK_N)
    lam0 = tl.load(lambdas_ptr).to(tl.float32)
    lam1 = tl.load(lambdas_ptr + 1).to(tl.float32)
    _, _, s = _mixed_rows(x_ptr, x_stride_outer, x_stride_inner, res_ptr, res_stride_outer, res_stride_inner,
                          x0_ptr, x0_stride_outer, x0_stride_inner, rows, cols, mask, rows_inner, lam0, lam1,
                          HAS_RESIDUAL)
    tl.store(sum_ptr + rows[:, None] * N + cols[None, :], s.to(sum_ptr.dtype.element_ty), mask=mask)
    rstd = 1.0 / tl.sqrt(tl.sum(s * s, axis=1) / N + eps)  # (BLOCK_M,); masked lanes are 0
    tl.store(rstd_ptr + rows, rstd, mask=row_mask)
    tl.store(y_ptr + rows[:, None] * N + cols[None, :], (s * rstd[:, None]).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _mix_rms_norm_bwd_kernel(
    dy_ptr, dy_stride_outer, dy_stride_inner,  # (M, N) gradient of y
    dsum_ptr, dsum_stride_outer, dsum_stride_inner,  # (M, N) gradient of s, or None
    x_ptr, x_stride_outer, x_stride_inner,  # (M, N) the forward's inputs, read again to recompute a and s
    res_ptr, res_stride_outer, res_stride_inner,  # or None
    x0_ptr, x0_stride_outer, x0_stride_inner,
    lambdas_ptr,  # (2,)
    rstd_ptr,  # (M,) fp32
    da_ptr,  # (M, N) contiguous output: the gradient of x and of the residual, λ0·ds
    dx0_ptr,  # (M, N) contiguous output: λ1·ds
    dlam_partial_ptr,  # (P, 2) fp32 output: row pid holds this program's Σ ds·a and Σ ds·x0
    M, N, rows_inner, rows_per_program,
    HAS_RESIDUAL: tl.constexpr, HAS_DSUM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # Program pid owns rows [row_start, row_end) and walks them BLOCK_M at a time (as _norm_bwd_kernel).
    pid = tl.program_id(0)
    row_start = pid.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    cols = tl.arange(0, BLOCK_N)
    lam0 = tl.load(lambdas_ptr).to(tl.float32)
    lam1 = tl.load(lambdas_ptr + 1).to(tl.float32)
    dlam0 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    dlam1 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for start in range(row_start, row_end, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        row_mask = rows < row_end
        mask = row_mask[:, None] & (cols < N)[None, :]
        a, x0, s = _mixed_rows(x_ptr, x_stride_outer, x_stride_inner, res_ptr, res_stride_outer, res_stride_inner,
                               x0_ptr, x0_stride_outer, x0_stride_inner, rows, cols, mask, rows_inner, lam0, lam1,
                               HAS_RESIDUAL)
        dy_rows = _row_offsets(rows, rows_inner, dy_stride_outer, dy_stride_inner)
        dy = tl.load(dy_ptr + dy_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + rows, mask=row_mask, other=0.0)
        shat = s * rstd[:, None]
        ds = (dy - shat * (tl.sum(dy * shat, axis=1) / N)[:, None]) * rstd[:, None]  # RMSNorm's vjp
        if HAS_DSUM:
            dsum_rows = _row_offsets(rows, rows_inner, dsum_stride_outer, dsum_stride_inner)
            ds += tl.load(dsum_ptr + dsum_rows[:, None] + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(da_ptr + rows[:, None] * N + cols[None, :], (lam0 * ds).to(da_ptr.dtype.element_ty), mask=mask)
        tl.store(dx0_ptr + rows[:, None] * N + cols[None, :], (lam1 * ds).to(dx0_ptr.dtype.element_ty), mask=mask)
        dlam0 += ds * a  # masked lanes: ds = 0
        dlam1 += ds * x0
    tl.store(dlam_partial_ptr + pid * 2, tl.sum(tl.sum(dlam0, axis=1), axis=0))
    tl.store(dlam_partial_ptr + pid * 2 + 1, tl.sum(tl.sum(dlam1, axis=1), axis=0))



@triton.jit
def _rotary_rows(rows, T, heads, half, cos_ptr, sin_ptr, cols, mask):
    """cos and sin (BLOCK_M, BLOCK_H) fp32 of each row's token: row r of (B, T, H, D) is token (r // H) % T."""
    t = (rows // heads) % T
    offs = t[:, None] * half + cols[None, :]
    return tl.load(cos_ptr + offs, mask=mask, other=0.0), tl.load(sin_ptr + offs, mask=mask, other=0.0)


@triton.jit
def _rms_norm_rotary_fwd_kernel(
    x_ptr, x_stride_outer, x_stride_inner,  # (M, D) rows of (B, T, H, D), unit stride along D (_row_offsets)
    cos_ptr, sin_ptr,  # (>= T, D / 2) fp32 contiguous: the rotary tables
    y_ptr,  # (M, D) contiguous output
    rstd_ptr,  # (M,) fp32 output
    M, T, heads, half, rows_inner, eps,
    BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    cols = tl.arange(0, BLOCK_H)  # (BLOCK_H,): the first half's columns; the second half's are cols + half
    row_mask = rows < M
    mask = row_mask[:, None] & (cols < half)[None, :]
    x_rows = _row_offsets(rows, rows_inner, x_stride_outer, x_stride_inner)[:, None] + cols[None, :]
    x1 = tl.load(x_ptr + x_rows, mask=mask, other=0.0)
    x2 = tl.load(x_ptr + x_rows + half, mask=mask, other=0.0).to(tl.float32)
    dtype = x1.dtype
    x1 = x1.to(tl.float32)
    rstd = 1.0 / tl.sqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / (2 * half) + eps)
    tl.store(rstd_ptr + rows, rstd, mask=row_mask)
    n1 = (x1 * rstd[:, None]).to(dtype).to(tl.float32)  # the norm as rms_norm stores it, then rotated
    n2 = (x2 * rstd[:, None]).to(dtype).to(tl.float32)
    cos, sin = _rotary_rows(rows, T, heads, half, cos_ptr, sin_ptr, cols, mask)
    y_rows = rows[:, None] * (2 * half) + cols[None, :]
    tl.store(y_ptr + y_rows, (n1 * cos + n2 * sin).to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(y_ptr + y_rows + half, (n2 * cos - n1 * sin).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_rotary_bwd_kernel(
    dy_ptr, dy_stride_outer, dy_stride_inner,  # (M, D) gradient of y
    x_ptr, x_stride_outer, x_stride_inner,  # (M, D) the forward's input
    cos_ptr, sin_ptr,  # (>= T, D / 2) fp32
    rstd_ptr,  # (M,) fp32
    dx_ptr,  # (M, D) contiguous output
    M, T, heads, half, rows_inner,
    BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_H)
    row_mask = rows < M
    mask = row_mask[:, None] & (cols < half)[None, :]
    dy_rows = _row_offsets(rows, rows_inner, dy_stride_outer, dy_stride_inner)[:, None] + cols[None, :]
    dy1 = tl.load(dy_ptr + dy_rows, mask=mask, other=0.0).to(tl.float32)
    dy2 = tl.load(dy_ptr + dy_rows + half, mask=mask, other=0.0).to(tl.float32)
    cos, sin = _rotary_rows(rows, T, heads, half, cos_ptr, sin_ptr, cols, mask)
    dn1 = dy1 * cos - dy2 * sin  # the rotation's transpose
    dn2 = dy1 * sin + dy2 * cos
    x_rows = _row_offsets(rows, rows_inner, x_stride_outer, x_stride_inner)[:, None] + cols[None, :]
    rstd = tl.load(rstd_ptr + rows, mask=row_mask, other=0.0)
    n1 = tl.load(x_ptr + x_rows, mask=mask, other=0.0).to(tl.float32) * rstd[:, None]
    n2 = tl.load(x_ptr + x_rows + half, mask=mask, other=0.0).to(tl.float32) * rstd[:, None]
    dot = (tl.sum(dn1 * n1, axis=1) + tl.sum(dn2 * n2, axis=1)) / (2 * half)  # mean(dn · n̂)
    dx_rows = rows[:, None] * (2 * half) + cols[None, :]
    tl.store(dx_ptr + dx_rows, ((dn1 - n1 * dot[:, None]) * rstd[:, None]).to(dx_ptr.dtype.element_ty), mask=mask)
    tl.store(dx_ptr + dx_rows + half, ((dn2 - n2 * dot[:, None]) * rstd[:, None]).to(dx_ptr.dtype.element_ty),
             mask=mask)



_INTERPRETED = interpreted(_norm_fwd_kernel)  # made for Triton's interpreter (TRITON_INTERPRET=1 at import)


# ---------------------------------------------------------------------------------------------------
# Host launchers
# ---------------------------------------------------------------------------------------------------


def _tile_settings(n: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) for rows of width n: whole rows, stacked to ~TILE_ELEMENTS."""
    # At least 16 lanes, so that width-1 rows do not give degenerate 1-wide tiles.
    block_n = max(triton.next_power_of_2(n), 16)
    block_m = max(1, TILE_ELEMENTS // block_n)
    tile = block_m * block_n
    num_warps = 4 if tile < 2048 else 8 if tile < 8192 else 16 if tile < 32768 else 32
    return block_m, block_n, num_warps


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _backward_programs(device: torch.device) -> int:
    if device.type == "cuda":
        return _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return CPU_BACKWARD_PROGRAMS


def _nested_stride(t: Tensor, dims: list[int]) -> Optional[int]:
    """The stride of the last of t's `dims` if they nest into one index (stride[a] == stride[b] * size[b] for each
    neighbour pair a, b), else None; 0 for no dims."""
    for a, b in zip(dims, dims[1:]):
        if t.stride(a) != t.stride(b) * t.shape[b]:
            return None
    return t.stride(dims[-1]) if dims else 0


def _row_strides(t: Tensor, dims: list[int], split: int) -> Optional[tuple[int, int]]:
    """(stride_outer, stride_inner) of t's rows with its leading `dims` grouped as dims[:split] and dims[split:],
    or None if a group does not nest or the last dim is not unit-stride."""
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        return None
    outer, inner = _nested_stride(t, dims[:split]), _nested_stride(t, dims[split:])
    return None if outer is None or inner is None else (outer, inner)


def _row_layout(x: Tensor, *others: Optional[Tensor]) -> tuple[int, list[tuple[Optional[Tensor], int, int]]]:
    """How the kernels address the rows of x and of `others` (each x's shape, or None) in place.

    The M = prod(x.shape[:-1]) rows are a (M / rows_inner, rows_inner) grid: the leading dims split into an
    outer and an inner group, each of which must nest into one stride. A contiguous tensor, a slice of wider
    rows (one group), a transposed (T, B, N) -> (B, T, N) view and the trainer's Q/K views of the QKV
    projection, (B, T, H, D) with strides (T·3HD, 3HD, D, 1) (outer B·T at 3HD, inner H at D), all fit. A
    tensor that fits no split shared with x (three or more groups, or a non-unit last stride) is copied.

    Returns:
        (rows_inner, [(tensor, stride_outer, stride_inner) for x, *others]): tensor is the input itself, or
        its contiguous copy where it did not fit; (None, 0, 0) for a None.
    """
    dims = [d for d in range(x.dim() - 1) if x.shape[d] > 1]  # leading dims indexing more than one row

    def splits(t: Tensor) -> list[int]:  # largest first: one group (rows_inner = 1) where possible
        return [j for j in range(len(dims), -1, -1) if _row_strides(t, dims, j) is not None]

    if not splits(x):
        x = x.contiguous()
    x_splits = splits(x)
    present = [t for t in others if t is not None]
    common = [j for j in x_splits if all(_row_strides(t, dims, j) is not None for t in present)]
    split = (common or x_splits)[0]
    rows_inner = 1
    for d in dims[split:]:
        rows_inner *= x.shape[d]
    layout = []
    for t in (x, *others):
        if t is None:
            layout.append((None, 0, 0))
            continue
        if _row_strides(t, dims, split) is None:
            t = t.contiguous()
        layout.append((t, *_row_strides(t, dims, split)))
    return rows_inner, layout


def norm_forward(
    x: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    eps: float,
    *,
    is_rms: bool,
    residual: Optional[Tensor] = None,
) -> tuple[Optional[Tensor], Tensor, Optional[Tensor], Tensor]:
    """Launch the forward kernel: RMSNorm (is_rms) or LayerNorm over the last dim, optionally of x + residual.

    Args:
        x: (..., N) float32, float16 or bfloat16, any strides (read in place where `_row_layout` can); N within
            the row limit (checked by the public functions).
        weight: (N,) or None.
        bias: (N,) or None (LayerNorm only).
        eps: added to the mean square (RMSNorm) or variance (LayerNorm).
        is_rms: RMSNorm if True, LayerNorm if False.
        residual: (..., N) like x, or None; when given, x + residual is normalised and also returned.

    Returns:
        (sum, y, mean, rstd): sum = x + residual (None without a residual) and y, both (..., N) contiguous
        in x.dtype; mean (None for RMSNorm) and rstd, (...) float32.
    """
    n = x.shape[-1]
    m = x.numel() // n
    weight = None if weight is None else weight.contiguous()  # the kernel reads (N,) at unit stride
    bias = None if bias is None else bias.contiguous()
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    rstd = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
    mean = None if is_rms else torch.empty_like(rstd)
    s = None if residual is None else torch.empty_like(y)
    if m == 0:
        return s, y, mean, rstd

    rows_inner, (x_rows, res_rows) = _row_layout(x, residual)  # read in place: (tensor, stride_outer, stride_inner)
    block_m, block_n, num_warps = _tile_settings(n)
    _norm_fwd_kernel[(triton.cdiv(m, block_m),)](
        *x_rows,
        *res_rows,
        s, y, weight, bias, mean, rstd,
        m, n, rows_inner, eps,
        IS_RMS=is_rms,
        HAS_RESIDUAL=residual is not None,
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=bias is not None,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        num_warps=num_warps,
    )
    return s, y, mean, rstd


def norm_backward(
    dy: Tensor,
    x: Tensor,
    weight: Optional[Tensor],
    mean: Optional[Tensor],
    rstd: Tensor,
    *,
    has_bias: bool,
    dsum: Optional[Tensor] = None,
) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """Launch the backward kernel, then sum the per-program weight/bias partials.

    Args:
        dy: (..., N) gradient of y, any strides.
        x: (..., N) the tensor the forward normalised (for add_rms_norm: the sum x + residual).
        weight: (N,) or None.
        mean: (...) float32 from the LayerNorm forward; None selects RMSNorm.
        rstd: (...) float32 from the forward.
        has_bias: whether to compute db.
        dsum: (..., N) gradient reaching add_rms_norm's sum output, added to dx; or None.

    Returns:
        (dx, dw, db): dx (..., N) contiguous in x.dtype; dw (None without a weight) and db (None without
        a bias), (N,) float32.
    """
    n = x.shape[-1]
    m = x.numel() // n
    weight = None if weight is None else weight.contiguous()
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if m == 0:
        dw = None if weight is None else x.new_zeros(n, dtype=torch.float32)
        db = x.new_zeros(n, dtype=torch.float32) if has_bias else None
        return dx, dw, db

    rows_inner, (x_rows, dy_rows, ds_rows) = _row_layout(x, dy, dsum)  # read in place where they fit
    # About one program per SM, each owning a contiguous chunk of whole tiles.
    block_m, block_n, num_warps = _tile_settings(n)
    tiles = triton.cdiv(m, block_m)
    rows_per_program = triton.cdiv(tiles, min(_backward_programs(x.device), tiles)) * block_m
    programs = triton.cdiv(m, rows_per_program)
    dw_partial = None if weight is None else x.new_empty(programs, n, dtype=torch.float32)
    db_partial = x.new_empty(programs, n, dtype=torch.float32) if has_bias else None
    _norm_bwd_kernel[(programs,)](
        *dy_rows,
        *x_rows,
        weight, mean, rstd,
        *ds_rows,
        dx, dw_partial, db_partial,
        m, n, rows_inner, rows_per_program,
        IS_RMS=mean is None,
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=has_bias,
        HAS_DSUM=dsum is not None,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        num_warps=num_warps,
    )
    dw = None if dw_partial is None else dw_partial.sum(0)
    db = None if db_partial is None else db_partial.sum(0)
    return dx, dw, db


def mix_norm_forward(x: Tensor, residual: Optional[Tensor], x0: Tensor, lambdas: Tensor,
                     eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Launch the mixed-residual RMSNorm forward.

    Args:
        x, x0: (..., N), one dtype, any strides (read in place where `_row_layout` can).
        residual: like x, or None (then s = λ0·x + λ1·x0).
        lambdas: (2,) λ0, λ1, read on the device (no host sync).
        eps: added to mean(s²).

    Returns:
        (s, y, rstd): s = λ0·(x + residual) + λ1·x0 and y = rms_norm(s), (..., N) contiguous in x.dtype;
        rstd (...) float32.
    """
    n = x.shape[-1]
    m = x.numel() // n
    s, y = (torch.empty(x.shape, dtype=x.dtype, device=x.device) for _ in range(2))
    rstd = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
    if m == 0:
        return s, y, rstd
    rows_inner, (x_rows, res_rows, x0_rows) = _row_layout(x, residual, x0)
    block_m, block_n, num_warps = _tile_settings(n)
    _mix_rms_norm_fwd_kernel[(triton.cdiv(m, block_m),)](
        *x_rows, *res_rows, *x0_rows, lambdas.contiguous(), s, y, rstd, m, n, rows_inner, eps,
        HAS_RESIDUAL=residual is not None, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps,
    )
    return s, y, rstd


def mix_norm_backward(dy: Tensor, dsum: Optional[Tensor], x: Tensor, residual: Optional[Tensor], x0: Tensor,
                      lambdas: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Launch the mixed-residual RMSNorm backward (a and s recomputed from the inputs), then sum the λ partials.

    With ds = dsum + rstd·(dy − ŝ·mean(dy·ŝ)), ŝ = s·rstd, a = x + residual:
    dx = dresidual = λ0·ds, dx0 = λ1·ds, dλ0 = Σ ds·a, dλ1 = Σ ds·x0 (one fp32 partial pair per program,
    summed here: deterministic, no atomics).

    Returns:
        (da, dx0, dlambdas): da (the gradient of x and of the residual) and dx0, (..., N) contiguous in x.dtype;
        dlambdas (2,) float32.
    """
    n = x.shape[-1]
    m = x.numel() // n
    da, dx0 = (torch.empty(x.shape, dtype=x.dtype, device=x.device) for _ in range(2))
    if m == 0:
        return da, dx0, x.new_zeros(2, dtype=torch.float32)
    rows_inner, (x_rows, dy_rows, ds_rows, res_rows, x0_rows) = _row_layout(x, dy, dsum, residual, x0)
    block_m, block_n, num_warps = _tile_settings(n)
    tiles = triton.cdiv(m, block_m)
    rows_per_program = triton.cdiv(tiles, min(_backward_programs(x.device), tiles)) * block_m
    programs = triton.cdiv(m, rows_per_program)
    dlam_partial = x.new_empty(programs, 2, dtype=torch.float32)
    _mix_rms_norm_bwd_kernel[(programs,)](
        *dy_rows, *ds_rows, *x_rows, *res_rows, *x0_rows, lambdas.contiguous(), rstd, da, dx0, dlam_partial,
        m, n, rows_inner, rows_per_program,
        HAS_RESIDUAL=residual is not None, HAS_DSUM=dsum is not None, BLOCK_M=block_m, BLOCK_N=block_n,
        num_warps=num_warps,
    )
    return da, dx0, dlam_partial.sum(0)



def _rotary_launch(x: Tensor) -> tuple[int, int, int, int, int]:
    """(rows, half, BLOCK_M, BLOCK_H, num_warps) for (B, T, H, D) rows held as two halves of D / 2."""
    half = x.shape[-1] // 2
    block_m, block_n, num_warps = _tile_settings(2 * half)
    return x.numel() // x.shape[-1], half, block_m, max(block_n // 2, 16), num_warps


def rms_norm_rotary_forward(x: Tensor, cos: Tensor, sin: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Launch the QK-norm + rotary forward on x (B, T, H, D), any strides (read in place where `_row_layout` can);
    cos, sin (>= T, D / 2) fp32. Returns y (B, T, H, D) contiguous in x.dtype and rstd (B, T, H) fp32."""
    B, T, H, D = x.shape
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    rstd = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
    m, half, block_m, block_h, num_warps = _rotary_launch(x)
    if m == 0:
        return y, rstd
    rows_inner, [x_rows] = _row_layout(x)
    _rms_norm_rotary_fwd_kernel[(triton.cdiv(m, block_m),)](
        *x_rows, cos.contiguous(), sin.contiguous(), y, rstd, m, T, H, half, rows_inner, eps,
        BLOCK_M=block_m, BLOCK_H=block_h, num_warps=num_warps,
    )
    return y, rstd


def rms_norm_rotary_backward(dy: Tensor, x: Tensor, cos: Tensor, sin: Tensor, rstd: Tensor) -> Tensor:
    """Launch the QK-norm + rotary backward: dx (B, T, H, D) contiguous in x.dtype (see `rms_norm_rotary`)."""
    B, T, H, D = x.shape
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    m, half, block_m, block_h, num_warps = _rotary_launch(x)
    if m == 0:
        return dx
    rows_inner, (x_rows, dy_rows) = _row_layout(x, dy)
    _rms_norm_rotary_bwd_kernel[(triton.cdiv(m, block_m),)](
        *dy_rows, *x_rows, cos.contiguous(), sin.contiguous(), rstd, dx, m, T, H, half, rows_inner,
        BLOCK_M=block_m, BLOCK_H=block_h, num_warps=num_warps,
    )
    return dx



# ---------------------------------------------------------------------------------------------------
# Custom ops (what autograd and torch.compile see) and the public functions
# ---------------------------------------------------------------------------------------------------


def _empty_like_rows(x: Tensor) -> Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)  # contiguous, as the launchers allocate


def _empty_stats(x: Tensor) -> Tensor:
    return torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)


def _grad_for(param: Optional[Tensor], grad: Tensor) -> Optional[Tensor]:
    return None if param is None else grad.to(param.dtype)


@torch.library.custom_op("speedrun::norm_bwd", mutates_args=())
def _norm_bwd_op(
    dy: Tensor,
    x: Tensor,
    weight: Optional[Tensor],
    mean: Optional[Tensor],
    rstd: Tensor,
    dsum: Optional[Tensor],
    has_bias: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """(dx, dw, db) from norm_backward; a custom op cannot return None, so a missing dw / db is shape (0,)."""
    dx, dw, db = norm_backward(dy, x, weight, mean, rstd, has_bias=has_bias, dsum=dsum)
    dw = x.new_empty(0, dtype=torch.float32) if dw is None else dw
    db = x.new_empty(0, dtype=torch.float32) if db is None else db
    return dx, dw, db


@_norm_bwd_op.register_fake
def _(dy, x, weight, mean, rstd, dsum, has_bias):
    n = x.shape[-1]
    dw = x.new_empty(n if weight is not None else 0, dtype=torch.float32)
    db = x.new_empty(n if has_bias else 0, dtype=torch.float32)
    return _empty_like_rows(x), dw, db


@torch.library.custom_op("speedrun::rms_norm", mutates_args=())
def _rms_norm_op(x: Tensor, weight: Optional[Tensor], eps: float) -> tuple[Tensor, Tensor]:
    _, y, _, rstd = norm_forward(x, weight, None, eps, is_rms=True)
    return y, rstd


@_rms_norm_op.register_fake
def _(x, weight, eps):
    return _empty_like_rows(x), _empty_stats(x)


def _rms_norm_setup(ctx, inputs, output):
    x, weight, _ = inputs
    _, rstd = output
    ctx.save_for_backward(x, weight, rstd)


def _rms_norm_backward(ctx, dy, _drstd):
    x, weight, rstd = ctx.saved_tensors
    dx, dw, _ = _norm_bwd_op(dy, x, weight, None, rstd, None, False)
    return dx, _grad_for(weight, dw), None


_rms_norm_op.register_autograd(_rms_norm_backward, setup_context=_rms_norm_setup)


@torch.library.custom_op("speedrun::add_rms_norm", mutates_args=())
def _add_rms_norm_op(
    x: Tensor, residual: Tensor, weight: Optional[Tensor], eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    s, y, _, rstd = norm_forward(x, weight, None, eps, is_rms=True, residual=residual)
    return s, y, rstd


@_add_rms_norm_op.register_fake
def _(x, residual, weight, eps):
    return _empty_like_rows(x), _empty_like_rows(x), _empty_stats(x)


def _add_rms_norm_setup(ctx, inputs, output):
    _, _, weight, _ = inputs
    s, _, rstd = output
    ctx.save_for_backward(s, weight, rstd)


def _add_rms_norm_backward(ctx, dsum, dy, _drstd):
    s, weight, rstd = ctx.saved_tensors
    # s = x + residual feeds both outputs: its gradient is dsum + the RMSNorm backward of dy.
    ds, dw, _ = _norm_bwd_op(dy, s, weight, None, rstd, dsum, False)
    return ds, ds, _grad_for(weight, dw), None


_add_rms_norm_op.register_autograd(_add_rms_norm_backward, setup_context=_add_rms_norm_setup)


@torch.library.custom_op("speedrun::mix_rms_norm", mutates_args=())
def _mix_rms_norm_op(x: Tensor, residual: Optional[Tensor], x0: Tensor, lambdas: Tensor,
                     eps: float) -> tuple[Tensor, Tensor, Tensor]:
    return mix_norm_forward(x, residual, x0, lambdas, eps)


@_mix_rms_norm_op.register_fake
def _(x, residual, x0, lambdas, eps):
    return _empty_like_rows(x), _empty_like_rows(x), _empty_stats(x)


@torch.library.custom_op("speedrun::mix_rms_norm_bwd", mutates_args=())
def _mix_rms_norm_bwd_op(dy: Tensor, dsum: Optional[Tensor], x: Tensor, residual: Optional[Tensor], x0: Tensor,
                         lambdas: Tensor, rstd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return mix_norm_backward(dy, dsum, x, residual, x0, lambdas, rstd)


@_mix_rms_norm_bwd_op.register_fake
def _(dy, dsum, x, residual, x0, lambdas, rstd):
    return _empty_like_rows(x), _empty_like_rows(x), x.new_empty(2, dtype=torch.float32)


def _mix_rms_norm_setup(ctx, inputs, output):
    x, residual, x0, lambdas, _ = inputs
    ctx.save_for_backward(x, residual, x0, lambdas, output[2])  # s is recomputed: its inputs are saved anyway
    ctx.has_residual = residual is not None


def _mix_rms_norm_backward(ctx, dsum, dy, _drstd):
    x, residual, x0, lambdas, rstd = ctx.saved_tensors
    da, dx0, dlambdas = _mix_rms_norm_bwd_op(dy, dsum, x, residual, x0, lambdas, rstd)
    return da, da if ctx.has_residual else None, dx0, dlambdas.to(lambdas.dtype), None


_mix_rms_norm_op.register_autograd(_mix_rms_norm_backward, setup_context=_mix_rms_norm_setup)


@torch.library.custom_op("speedrun::rms_norm_rotary", mutates_args=())
def _rms_norm_rotary_op(x: Tensor, cos: Tensor, sin: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    return rms_norm_rotary_forward(x, cos, sin, eps)


@_rms_norm_rotary_op.register_fake
def _(x, cos, sin, eps):
    return _empty_like_rows(x), _empty_stats(x)


@torch.library.custom_op("speedrun::rms_norm_rotary_bwd", mutates_args=())
def _rms_norm_rotary_bwd_op(dy: Tensor, x: Tensor, cos: Tensor, sin: Tensor, rstd: Tensor) -> Tensor:
    return rms_norm_rotary_backward(dy, x, cos, sin, rstd)


@_rms_norm_rotary_bwd_op.register_fake
def _(dy, x, cos, sin, rstd):
    return _empty_like_rows(x)


def _rms_norm_rotary_setup(ctx, inputs, output):
    x, cos, sin, _ = inputs
    ctx.save_for_backward(x, cos, sin, output[1])


def _rms_norm_rotary_backward(ctx, dy, _drstd):
    x, cos, sin, rstd = ctx.saved_tensors
    return _rms_norm_rotary_bwd_op(dy, x, cos, sin, rstd), None, None, None


_rms_norm_rotary_op.register_autograd(_rms_norm_rotary_backward, setup_context=_rms_norm_rotary_setup)


@torch.library.custom_op("speedrun::layer_norm", mutates_args=())
def _layer_norm_op(
    x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    _, y, mean, rstd = norm_forward(x, weight, bias, eps, is_rms=False)
    return y, mean, rstd


@_layer_norm_op.register_fake
def _(x, weight, bias, eps):
    return _empty_like_rows(x), _empty_stats(x), _empty_stats(x)


def _layer_norm_setup(ctx, inputs, output):
    x, weight, bias, _ = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, mean, rstd)
    ctx.bias_dtype = None if bias is None else bias.dtype


def _layer_norm_backward(ctx, dy, _dmean, _drstd):
    x, weight, mean, rstd = ctx.saved_tensors
    dx, dw, db = _norm_bwd_op(dy, x, weight, mean, rstd, None, ctx.bias_dtype is not None)
    return dx, _grad_for(weight, dw), None if ctx.bias_dtype is None else db.to(ctx.bias_dtype), None


_layer_norm_op.register_autograd(_layer_norm_backward, setup_context=_layer_norm_setup)


def _check_inputs(op: str, x: Tensor, **vectors: Optional[Tensor]) -> None:
    """One-line ValueErrors for inputs the kernels do not handle; `vectors` (weight, bias) must be (N,)."""
    check_tensors(op, x=x, **vectors)
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{op}: x has dtype {x.dtype}; supported: float32, float16, bfloat16")
    if x.dim() == 0 or x.shape[-1] == 0:
        raise ValueError(f"{op}: x needs a non-empty last dim to normalise, got shape {tuple(x.shape)}")
    n = x.shape[-1]
    limit = MAX_ROW_BYTES // x.element_size()
    if n > limit:
        raise ValueError(
            f"{op}: last dim {n} is wider than {limit}, the widest {x.dtype} row one program holds "
            f"({MAX_ROW_BYTES} bytes)"
        )
    check_launchable(op, _INTERPRETED, x)
    for name, v in vectors.items():
        if v is None:
            continue
        if tuple(v.shape) != (n,):
            raise ValueError(f"{op}: {name} has shape {tuple(v.shape)}, expected ({n},) to match x's last dim")
        if v.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{op}: {name} has dtype {v.dtype}; supported: float32, float16, bfloat16")
        if v.device != x.device:
            raise ValueError(f"{op}: {name} is on {v.device} but x is on {x.device}")


def rms_norm(x: Tensor, weight: Optional[Tensor] = None, eps: Optional[float] = None) -> Tensor:
    """RMSNorm over the last dim, as F.rms_norm(x, (N,), weight, eps); differentiable, torch.compile-traceable.

    Args:
        x: (..., N) float32, float16 or bfloat16, any leading shape and strides; for QK-norm pass
            q or k as (B, T, H, D), e.g. the chunked views of a QKV projection, read in place (the
            module docstring says which layouts are). N ≤ 65536 / x.element_size().
        weight: (N,) elementwise scale, or None.
        eps: added to mean(x²); None means torch.finfo(x.dtype).eps, like F.rms_norm.

    Returns:
        (..., N) contiguous, in x.dtype (statistics computed in fp32); its gradient w.r.t. x is too.
    """
    _check_inputs("rms_norm", x, weight=weight)
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    y, _ = _rms_norm_op(x, weight, float(eps))
    return y


def add_rms_norm(
    x: Tensor, residual: Tensor, weight: Optional[Tensor] = None, eps: Optional[float] = None
) -> tuple[Tensor, Tensor]:
    """Fused residual add and RMSNorm: returns (x + residual, rms_norm(x + residual, weight, eps)). Unmeasured.

    Args:
        x: (..., N) float32, float16 or bfloat16.
        residual: same shape and dtype as x.
        weight: (N,) or None.
        eps: None means torch.finfo(x.dtype).eps.

    Returns:
        (sum, normed), both (..., N) contiguous in x.dtype. The norm is taken of the sum as rounded to
        x.dtype, as `s = x + residual; rms_norm(s)` would.
    """
    check_tensors("add_rms_norm", residual=residual)
    _check_inputs("add_rms_norm", x, weight=weight)
    if residual.shape != x.shape or residual.dtype != x.dtype or residual.device != x.device:
        raise ValueError(
            f"add_rms_norm: residual is {tuple(residual.shape)} {residual.dtype} on {residual.device}, "
            f"expected x's {tuple(x.shape)} {x.dtype} on {x.device}"
        )
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    s, y, _ = _add_rms_norm_op(x, residual, weight, float(eps))
    return s, y


def mix_rms_norm(x: Tensor, residual: Optional[Tensor], x0: Tensor, lambdas: Tensor,
                 eps: Optional[float] = None) -> tuple[Tensor, Tensor]:
    """The block's residual mix and its RMSNorm in one pass: s = λ0·(x + residual) + λ1·x0, (s, rms_norm(s)).

    Args:
        x: (..., N) float32, float16 or bfloat16: the residual stream.
        residual: like x (the previous block's MLP output, added first), or None.
        x0: like x: the second input of the mix (the normalised embedding).
        lambdas: (2,) λ0, λ1 (the block's learned scalars, any float dtype; read on the device).
        eps: None means torch.finfo(x.dtype).eps.

    Returns:
        (s, normed), both (..., N) contiguous in x.dtype; differentiable in x, residual, x0 and lambdas, traceable
        by torch.compile. x + residual is rounded to x.dtype before the mix and s is normalised as rounded, as
        `mix_rms_norm_ref` computes them; the mix itself is one fp32 expression (the reference rounds each product).
    """
    check_tensors("mix_rms_norm", residual=residual, x0=x0, lambdas=lambdas)
    _check_inputs("mix_rms_norm", x)
    for name, t in (("residual", residual), ("x0", x0)):
        if t is not None and (t.shape != x.shape or t.dtype != x.dtype or t.device != x.device):
            raise ValueError(f"mix_rms_norm: {name} is {tuple(t.shape)} {t.dtype} on {t.device}, "
                             f"expected x's {tuple(x.shape)} {x.dtype} on {x.device}")
    if lambdas.shape != (2,) or lambdas.device != x.device or not lambdas.is_floating_point():
        raise ValueError(f"mix_rms_norm: lambdas must be (2,) floats on {x.device}, "
                         f"got {tuple(lambdas.shape)} {lambdas.dtype} on {lambdas.device}")
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    s, y, _ = _mix_rms_norm_op(x, residual, x0, lambdas, float(eps))
    return s, y


def rms_norm_rotary(x: Tensor, cos: Tensor, sin: Tensor, eps: Optional[float] = None) -> Tensor:
    """QK-norm and rotary in one pass: RMSNorm over each head, then the rotation of `rotary_ref`.

    Args:
        x: (B, T, H, D) float32, float16 or bfloat16, D even, any strides (the chunked q or k view of a packed
            QKV projection is read in place).
        cos, sin: (>= T, D / 2) float32, row t for position t (train_gpt.Rotary's tables); constants (not
            requiring grad: the op has no gradient for them).
        eps: None means torch.finfo(x.dtype).eps.

    Returns:
        (B, T, H, D) contiguous in x.dtype; differentiable in x, traceable by torch.compile. The norm is rounded to
        x.dtype before the rotation, as `rms_norm_rotary_ref` does.
    """
    check_tensors("rms_norm_rotary", cos=cos, sin=sin)
    _check_inputs("rms_norm_rotary", x)
    if x.dim() != 4 or x.shape[-1] % 2:
        raise ValueError(f"rms_norm_rotary: x must be (B, T, H, D) with D even, got shape {tuple(x.shape)}")
    T, half = x.shape[1], x.shape[-1] // 2
    for name, t in (("cos", cos), ("sin", sin)):  # constants: the op's gradient is x's only
        if (t.dim() != 2 or t.shape[0] < T or t.shape[1] != half or t.dtype != torch.float32 or t.device != x.device
                or t.requires_grad):
            raise ValueError(f"rms_norm_rotary: {name} must be (>= T = {T}, D / 2 = {half}) float32 on {x.device}, "
                             f"not requiring grad, got {tuple(t.shape)} {t.dtype} on {t.device}"
                             f"{' requiring grad' if t.requires_grad else ''}")
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    y, _ = _rms_norm_rotary_op(x, cos, sin, float(eps))
    return y


def layer_norm(
    x: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, eps: float = 1e-5
) -> Tensor:
    """LayerNorm over the last dim, as F.layer_norm(x, (N,), weight, bias, eps); differentiable, traceable.

    Args:
        x: (..., N) float32, float16 or bfloat16, any leading shape and strides; N ≤ 65536 / x.element_size().
        weight: (N,) elementwise scale, or None.
        bias: (N,) elementwise shift, or None.
        eps: added to the (biased) variance.

    Returns:
        (..., N) contiguous, in x.dtype (statistics computed in fp32).
    """
    _check_inputs("layer_norm", x, weight=weight, bias=bias)
    y, _, _ = _layer_norm_op(x, weight, bias, float(eps))
    return y
