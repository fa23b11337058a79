"""Causal flash attention with a sliding window and document masking, forward and backward in Triton.

Layout is the trainer's: q, k, v and the output are (B, T, H, D). Attention is always causal; on top
of that `window_size` W keeps query i to keys i - W < j <= i, and `cu_seqlens` (the cumulative
document starts of a packed batch, B = 1) keeps every query inside its own document. Query i may
attend key j iff

    j <= i  and  j > i - W  and  doc(j) == doc(i).

The file ends with the PyTorch paths: `attention_ref` (an explicit mask in fp32, the tests' reference)
and, for the trainer's batches of packed documents, one mask builder and attention per backend:
`dense_mask` + `sdpa_attention` (torch, CPU), `FlexMasks` + `make_flex_attention` (torch, CUDA),
`packed_cu_seqlens` + `packed_flash_attention` (the kernel).

The math (Flash Attention 2, Dao 2023; the exp2 form from Triton's tutorial 06-fused-attention)
---------------------------------------------------------------------------------------------------
Forward, per query row i, with s = scale and masked scores set to -inf:

    S = s Q K^T,   P = softmax(S) row-wise,   O = P V,   LSE_i = log sum_j exp(S_ij).

The kernel streams key blocks through an online softmax with fp32 accumulators: the running max m,
the running sum l and the unnormalised output are rescaled by exp(m_old - m_new) whenever the max
grows. Scores are kept in log2 units (S * log2(e)) so every exponential is one exp2; the saved
LSE is in the same log2 units, one fp32 per (b, h, i).

Backward, the vector-Jacobian product for an upstream gradient dO, with P recomputed from Q, K and
LSE (P = exp2(S log2 e - LSE)) instead of stored:

    dV = P^T dO
    dP = dO V^T
    dS = P o (dP - delta),  delta_i = sum_j P_ij dP_ij = rowsum(dO o O)_i   (preprocess kernel)
    dQ = dS K s
    dK = dS^T Q s

dK and dV come from one kernel that owns a key block and walks the query blocks that see it. dQ comes
one of two ways (`backward`, default DEFAULT_BACKWARD = "atomic"):
- "atomic" (FlashAttention-2's backward): the same kernel also computes dS K for each tile and adds it
  into an fp32 dQ buffer with atomic adds, cast to the input dtype at the end. Five matmuls per tile
  (S, dP, dV, dK, dQ). On a GPU the atomics land in a varying order, so dQ's last bits vary between runs.
- "two_pass": a second kernel owns a query block, walks its key blocks and recomputes S and dP for dQ:
  seven matmuls per tile, but each program writes only its own rows, without atomics: the same inputs
  give the same bits.

Block skipping
--------------
The allowed keys of one query row form one interval [lo(i), i], with lo non-decreasing in i, so
the keys needed by a query block [q0, q_last] are one interval [lo(q0), q_last] and the blocks
outside it are never visited. Inside it a block is *full* (no pair masked: no mask arithmetic at
all) or *partial* (computed with the mask). The loop over a query block's key blocks is therefore
three loops, partial [lo, full_lo), full [full_lo, full_hi), partial [full_hi, hi), with

    lo      = floor(max(0, q0 - W + 1, doc_start[q0]))            lowest key any row needs
    full_lo = ceil(max(0, q_last - W + 1, doc_start[q_last]))     lowest key every row needs
    full_hi = floor(q0 + 1)                                        causal: block entirely <= q0
    hi      = q_last + 1

(floor/ceil to the key block size, then clamped so lo <= full_lo <= full_hi <= hi). The dK/dV
kernel uses the mirror image over query blocks (the key block's last key's document end and
window end bound the highest query). Per-token document starts and ends are int32 arrays built on
the host from cu_seqlens (searchsorted). `query_block_ranges` and `key_block_ranges` are the same
arithmetic in Python; the tests check that the kernels visit exactly the blocks of the explicit
mask that hold at least one allowed pair, and mask only the partial ones. Cost therefore follows
the number of non-empty blocks: ~T * (W + block) for a window, ~T^2 / 2 for plain causal.

FLOP accounting (as in tutorial 06)
-----------------------------------
Forward: 2 matmuls of 2 * D FLOPs per allowed (query, key) pair per head: 4 * B * H * D * pairs,
where pairs = T (T + 1) / 2 for plain causal (about half of T^2), sum_i min(W, i - doc_start(i) + 1)
with a window and documents. Backward: 2.5 x forward (five matmuls instead of two, counting the
recompute of P), the useful work; the two-pass backward does 3.5 x (seven). Only allowed pairs are
counted, never the masked ones inside partial blocks (benchmarks/roofline.py counts the visited tiles).

Loads
-----
On Hopper and newer GPUs (`use_tma`) the forward and the dK/dV kernel (both backwards) load their Q, K, V
and dO tiles with TMA (bulk tensor copies from host-built descriptors over the (B * T, H * D) row view the
trainer's packed-QKV views have); elsewhere, and for layouts without that view or TMA's 16-byte
alignment, they use pointer loads, as the two-pass dQ kernel always does. Rows past T then read the next
sequence's rows or TMA's zero fill: masked (P = 0) or never stored.

Block sizes
-----------
`_CUDA_BLOCKS` is a small table by pass and head dim, taken from the Hopper settings of Triton's
tutorial 06 (forward 128 queries x 64 keys; backward dK/dV 128 keys with 32-query steps, dQ 128
queries with 32/64-key steps). The one-pass backward ("bwd") steps 64 queries at a time, over 128 keys
at D = 64 and 64 keys at D = 128, where 128 keys spill (the dQ tile's fp32 accumulator comes on top of
dK's and dV's); at D = 128 it has 255 registers.
Warps: `python -m benchmarks.ptxas_report` compiles every entry for sm_90 without a GPU and reads
ptxas' register and spill counts; with 4 warps the forward and dK/dV passes at D = 64 spill (12 and
36 bytes), so every bf16 entry has 8 warps, and none spills (with TMA where sm_90 takes it: Triton 3.9,
ptxas 13.4: 119-255 registers, 65-162 KiB of shared memory; Triton 3.6, ptxas 12.8: 108-255). Which
tiles are *fastest* only a GPU can say: not measured. A table, not an autotuner: block sizes are known to the Python range
helpers, nothing is benchmarked at first call, and one compile serves every window size (window is a
runtime int, not specialised). fp32 (tests only) gets 32 x 32 tiles on CUDA: with the bf16 tiles its
operands are twice as big and the dQ kernel at D = 128 asks for 288 KiB of shared memory, over
Hopper's 227 KiB (32 x 32 needs at most 69 KiB, and spills at D = 128: correct, slow, tests only).
Under Triton's interpreter (CPU) small blocks
(16/32) keep tests fast and still exercise several blocks per sequence with unequal query/key block
sizes.

Limits
------
- dtypes: bf16 and fp16 (fp32 accepted for testing; its dots run in IEEE fp32, not tf32); under Triton's
  interpreter fp16 and fp32 (it has no bf16 arithmetic).
- head dim: 64 and 128 are the tuned ones; 16 and 32 are accepted (small tests).
- q, k, v share one shape (no GQA), one dtype and one device; window_size >= 1; cu_seqlens int32,
  non-decreasing from 0 to T, with B == 1. Empty documents (repeated entries) are allowed, so a
  caller can pad cu_seqlens to a fixed length with trailing T's: one shape every step, no recompile
  and no host sync to count documents.
- No host sync anywhere in a call on a GPU, eager or compiled: the input checks read only shapes,
  strides, dtypes and devices (one-line ValueErrors), and the per-token document bounds are built on
  the device. CUDA cu_seqlens' *values* are therefore unchecked, as in FlashAttention's varlen API
  (a check would wait for the device in every attention layer of an eager step, a round trip
  FlexAttention and SDPA do not pay); `check_cu_seqlens(cu_seqlens, T)` checks them with one sync,
  for tests and debugging. Invalid values give a wrong mask, never an out-of-bounds access (loop
  bounds are clamped to [0, T), document indices to the table). CPU cu_seqlens cost nothing to read,
  so eager calls check them.
- Offsets along the sequence (token index x the T stride) are int32: T x stride_t must stay below
  2^31, i.e. T up to ~2.8M for contiguous (B, T, 6, 128) and ~930k for a packed qkv view. Inputs
  spanning 2^31 elements or more are refused.
- Not measured on a GPU. `python -m benchmarks.bench_attention` measures
  it against SDPA (flash) and FlexAttention.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.nn.attention.flex_attention import BlockMask, flex_attention
from triton.tools.tensor_descriptor import TensorDescriptor

from kernels import check_interpretable, check_launchable, check_tensors, interpreted

LOG2E = 1.4426950408889634
SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)


# The backwards `flash_attention` offers (its `backward` argument; None: DEFAULT_BACKWARD, which the trainer uses).
# "atomic": one kernel per key block, 5 matmuls per tile, dQ summed in fp32 by atomic adds (FlashAttention-2):
# fast, but on a GPU the atomics land in a varying order, so dQ's last bits vary from run to run.
# "two_pass": the dK/dV kernel, then a dQ kernel that recomputes S and dP (7 matmuls per tile), no atomics:
# the same inputs give the same bits (same seed, same run), for debugging and reproducibility checks.
BACKWARDS = ("atomic", "two_pass")
DEFAULT_BACKWARD = "atomic"


@dataclass(frozen=True)
class Blocks:
    """Tile sizes of one kernel: BLOCK_M queries x BLOCK_N keys per step."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


# (pass, head dim) -> tiles on CUDA. "dkdv" owns a key block (block_n) and steps over queries
# (block_m); "fwd" and "dq" own a query block (block_m) and step over keys (block_n).
_CUDA_BLOCKS = {
    ("fwd", 64): Blocks(128, 64, num_warps=8, num_stages=3),
    ("fwd", 128): Blocks(128, 64, num_warps=8, num_stages=3),
    ("dkdv", 64): Blocks(32, 128, num_warps=8, num_stages=5),
    ("dkdv", 128): Blocks(32, 128, num_warps=8, num_stages=3),
    ("dq", 64): Blocks(128, 32, num_warps=4, num_stages=5),
    ("dq", 128): Blocks(128, 64, num_warps=8, num_stages=3),
    # one-pass backward ("atomic"): a key block walks 64-query steps. 128 keys (FlashAttention-3's tile) at
    # D = 64; at D = 128 that spills (64-780 bytes), so 64 keys there: 255 registers, no spill with TMA loads
    # under Triton 3.6 and 3.9 (the pointer path, for layouts TMA cannot take, spills 8 bytes under 3.9)
    ("bwd", 64): Blocks(64, 128, num_warps=8, num_stages=2),
    ("bwd", 128): Blocks(64, 64, num_warps=8, num_stages=3),
}
# fp32 on CUDA (tests only): small tiles, so every pass fits shared memory at D = 128.
_CUDA_FP32_BLOCKS = Blocks(32, 32, num_warps=4, num_stages=2)
# Triton's interpreter: small tiles, unequal on purpose so tests cover block_m != block_n.
_INTERPRETER_BLOCKS = {
    "fwd": Blocks(32, 16, num_warps=4, num_stages=1),
    "dkdv": Blocks(16, 32, num_warps=4, num_stages=1),
    "dq": Blocks(32, 16, num_warps=4, num_stages=1),
    "bwd": Blocks(16, 32, num_warps=4, num_stages=1),
}


def block_config(kind: str, head_dim: int, device: torch.device | str, dtype: torch.dtype) -> Blocks:
    """Tiles for pass `kind` ("fwd", "dkdv" or "dq") at this head dim and input dtype on this device."""
    if torch.device(device).type != "cuda" or _INTERPRETED:
        return _INTERPRETER_BLOCKS[kind]
    return cuda_block_config(kind, head_dim, dtype)


def cuda_block_config(kind: str, head_dim: int, dtype: torch.dtype) -> Blocks:
    """Tiles for pass `kind` on a CUDA GPU, whatever this machine runs (benchmarks.roofline counts with them)."""
    if dtype == torch.float32:
        return _CUDA_FP32_BLOCKS
    return _CUDA_BLOCKS[(kind, 128 if head_dim > 64 else 64)]


# --------------------------------------------------------------------------------------------------
# Triton kernels
# --------------------------------------------------------------------------------------------------


@triton.jit
def _allowed(q_idx, k_idx, q_doc_start, T, window, HAS_DOCS: tl.constexpr):
    """The attention mask, broadcast over any (query, key) tile: causal, window, document, q < T."""
    allowed = (k_idx <= q_idx) & (k_idx > q_idx - window) & (q_idx < T)
    if HAS_DOCS:
        allowed = allowed & (k_idx >= q_doc_start)
    return allowed


@triton.jit
def _query_block_range(q0, T, window, doc_start_ptr, HAS_DOCS: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr):
    """Key loop bounds for queries [q0, q0 + BLOCK_M): partial [lo, full_lo), full [full_lo, full_hi),
    partial [full_hi, hi). Same arithmetic as `query_block_ranges` below."""
    q_last = tl.minimum(q0 + BLOCK_M, T) - 1
    lowest_any = tl.maximum(q0 - window + 1, 0)  # lowest key any row of the block needs
    lowest_all = tl.maximum(q_last - window + 1, 0)  # lowest key every row of the block needs
    if HAS_DOCS:
        lowest_any = tl.maximum(lowest_any, tl.load(doc_start_ptr + q0))
        lowest_all = tl.maximum(lowest_all, tl.load(doc_start_ptr + q_last))
    lo = (lowest_any // BLOCK_N) * BLOCK_N
    hi = q_last + 1
    full_lo = tl.minimum(tl.maximum(tl.cdiv(lowest_all, BLOCK_N) * BLOCK_N, lo), hi)
    full_hi = tl.maximum(tl.minimum(((q0 + 1) // BLOCK_N) * BLOCK_N, hi), full_lo)
    return lo, full_lo, full_hi, hi


@triton.jit
def _key_block_range(n0, T, window, doc_end_ptr, HAS_DOCS: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr):
    """Query loop bounds for keys [n0, n0 + BLOCK_N), same three-part split as `_query_block_range`.
    Same arithmetic as `key_block_ranges` below."""
    n_last = tl.minimum(n0 + BLOCK_N, T) - 1
    end_any = tl.minimum(n_last + window, T)  # one past the last query any key of the block serves
    end_all = tl.minimum(n0 + window, T)  # one past the last query every key of the block serves
    if HAS_DOCS:
        end_any = tl.minimum(end_any, tl.load(doc_end_ptr + n_last))
        end_all = tl.minimum(end_all, tl.load(doc_end_ptr + n0))
    lo = (n0 // BLOCK_M) * BLOCK_M
    hi = end_any
    full_lo = tl.minimum(tl.maximum(tl.cdiv(n_last, BLOCK_M) * BLOCK_M, lo), hi)
    full_hi = tl.maximum(tl.minimum((end_all // BLOCK_M) * BLOCK_M, hi), full_lo)
    return lo, full_lo, full_hi, hi


@triton.jit
def _store_ranges(ptr, lo, full_lo, full_hi, hi):
    """Debug output for the block-skipping tests: one block's four loop bounds."""
    tl.store(ptr + 0, lo)
    tl.store(ptr + 1, full_lo)
    tl.store(ptr + 2, full_hi)
    tl.store(ptr + 3, hi)


@triton.jit
def _load_kv_block(k_base, v_base, offs_k, offs_d, k_stride_t, v_stride_t, T, MASKED: tl.constexpr):
    """The K and V tiles (BLOCK_N, D) of keys offs_k. Only partial (MASKED) blocks can run past T, so
    only they pay for bounds checks; keys past T read as 0 and the mask removes them."""
    k_offs = offs_k[:, None] * k_stride_t + offs_d[None, :]
    v_offs = offs_k[:, None] * v_stride_t + offs_d[None, :]
    if MASKED:
        k = tl.load(k_base + k_offs, mask=offs_k[:, None] < T, other=0.0)
        v = tl.load(v_base + v_offs, mask=offs_k[:, None] < T, other=0.0)
    else:
        k = tl.load(k_base + k_offs)
        v = tl.load(v_base + v_offs)
    return k, v


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_base, v_base, k_desc, v_desc, desc_row, desc_col, k_stride_t, v_stride_t, offs_m,
               q_doc_start, T, window, qk_scale, start, end, MASKED: tl.constexpr, HAS_DOCS: tl.constexpr,
               HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr, USE_TMA: tl.constexpr):
    """Online softmax over key blocks [start, end); MASKED applies the mask (partial blocks only). USE_TMA
    loads K and V through the tensor descriptors (rows desc_row + key, columns from desc_col)."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in range(start, end, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_k = start_n + offs_n
        if USE_TMA:  # rows past T read the next sequence's keys or zeros; the mask removes them
            k = k_desc.load([desc_row + start_n, desc_col])  # (BLOCK_N, D)
            v = v_desc.load([desc_row + start_n, desc_col])
        else:
            k, v = _load_kv_block(k_base, v_base, offs_k, offs_d, k_stride_t, v_stride_t, T, MASKED)  # (BLOCK_N, D)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
        if MASKED:
            allowed = _allowed(offs_m[:, None], offs_k[None, :], q_doc_start[:, None], T, window, HAS_DOCS)
            s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row with nothing allowed so far keeps m = -inf; shift by 0 there so exp2 gives 0, not NaN.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_shift[:, None])
        alpha = tl.math.exp2(m_i - m_shift)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["window"])
def _attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr,  # (B, T, H, D), each with its own strides (unit head-dim stride)
    q_desc, k_desc, v_desc,  # with USE_TMA: tensor descriptors of q, k, v as (B * T, H * D) rows; else unread
    o_ptr,  # (B, T, H, D) contiguous
    lse_ptr,  # (B, H, T) fp32, log2 units
    doc_start_ptr,  # (T,) int32: first token of each token's document (read only with HAS_DOCS)
    ranges_ptr,  # (cdiv(T, BLOCK_M), 4) int32: loop bounds, written only with STORE_RANGES
    q_stride_b, q_stride_t, q_stride_h, k_stride_b, k_stride_t, k_stride_h, v_stride_b, v_stride_t, v_stride_h,
    o_stride_b, o_stride_t, o_stride_h,
    T, H, window, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_DOCS: tl.constexpr,
    STORE_RANGES: tl.constexpr, DOT_PRECISION: tl.constexpr, USE_TMA: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    # Last query blocks first: under plain causal they hold the most work, so they start early.
    pid_m = tl.num_programs(1) - 1 - tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    q0 = pid_m * BLOCK_M
    offs_m = q0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T

    desc_row, desc_col = b * T, h * HEAD_DIM  # this (b, h)'s origin in the descriptors' (B * T, H * D) view
    if USE_TMA:  # rows past T (not stored) read the next sequence's queries or zeros
        q = q_desc.load([desc_row + q0, desc_col])
    else:
        q_base = b.to(tl.int64) * q_stride_b + h * q_stride_h
        q = tl.load(q_ptr + q_base + offs_m[:, None] * q_stride_t + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    if HAS_DOCS:
        q_doc_start = tl.load(doc_start_ptr + offs_m, mask=row_ok, other=0)
    else:
        q_doc_start = tl.zeros([BLOCK_M], dtype=tl.int32)

    lo, full_lo, full_hi, hi = _query_block_range(q0, T, window, doc_start_ptr, HAS_DOCS, BLOCK_M, BLOCK_N)
    if STORE_RANGES:
        if pid_bh == 0:
            _store_ranges(ranges_ptr + pid_m * 4, lo, full_lo, full_hi, hi)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    k_base = k_ptr + b.to(tl.int64) * k_stride_b + h * k_stride_h
    v_base = v_ptr + b.to(tl.int64) * v_stride_b + h * v_stride_h
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, k_desc, v_desc, desc_row, desc_col, k_stride_t,
                               v_stride_t, offs_m, q_doc_start, T, window, qk_scale, lo, full_lo, True, HAS_DOCS, HEAD_DIM,
                               BLOCK_N, DOT_PRECISION, USE_TMA)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, k_desc, v_desc, desc_row, desc_col, k_stride_t,
                               v_stride_t, offs_m, q_doc_start, T, window, qk_scale, full_lo, full_hi, False, HAS_DOCS, HEAD_DIM,
                               BLOCK_N, DOT_PRECISION, USE_TMA)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, k_desc, v_desc, desc_row, desc_col, k_stride_t,
                               v_stride_t, offs_m, q_doc_start, T, window, qk_scale, full_hi, hi, True, HAS_DOCS, HEAD_DIM,
                               BLOCK_N, DOT_PRECISION, USE_TMA)

    # Every real row sees its own diagonal, so l > 0; the guard only keeps padding rows finite.
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_safe[:, None]
    lse = tl.where(l_i == 0.0, float("inf"), m_i + tl.math.log2(l_safe))  # +inf: P = 0 in the backward
    o_base = b.to(tl.int64) * o_stride_b + h * o_stride_h
    tl.store(o_ptr + o_base + offs_m[:, None] * o_stride_t + offs_d[None, :], o.to(o_ptr.dtype.element_ty),
             mask=row_ok[:, None])
    tl.store(lse_ptr + pid_bh.to(tl.int64) * T + offs_m, lse, mask=row_ok)


@triton.jit
def _attn_bwd_preprocess_kernel(
    o_ptr, do_ptr,  # (B, T, H, D) contiguous
    delta_ptr,  # (B, H, T) fp32
    o_stride_b, o_stride_t, o_stride_h,
    T, H,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """delta_i = rowsum(dO o O)_i, which equals sum_j P_ij dP_ij."""
    pid_bh = tl.program_id(0)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    offs = b.to(tl.int64) * o_stride_b + h * o_stride_h + offs_m[:, None] * o_stride_t + offs_d[None, :]
    row_ok = offs_m < T
    o = tl.load(o_ptr + offs, mask=row_ok[:, None], other=0.0).to(tl.float32)
    do = tl.load(do_ptr + offs, mask=row_ok[:, None], other=0.0).to(tl.float32)
    tl.store(delta_ptr + pid_bh.to(tl.int64) * T + offs_m, tl.sum(o * do, 1), mask=row_ok)


@triton.jit
def _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, dq_base, q_desc, do_desc, desc_row, desc_col,
                doc_start_ptr, q_stride_t, o_stride_t, offs_k, T, window, scale, qk_scale, start, end,
                MASKED: tl.constexpr, HAS_DOCS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                DOT_PRECISION: tl.constexpr, DQ_ATOMIC: tl.constexpr, USE_TMA: tl.constexpr):
    """Accumulate dK, dV of one key block over query blocks [start, end); works on transposed tiles
    (keys x queries) so P^T and dS^T come out directly. With DQ_ATOMIC, also dQ += dS K s into the fp32 rows
    at dq_base (o's strides), by atomic adds: the fifth matmul of the tile. USE_TMA loads Q and dO through
    the tensor descriptors (rows desc_row + query, columns from desc_col)."""
    offs_d = tl.arange(0, HEAD_DIM)
    for start_m in range(start, end, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        offs_q = start_m + tl.arange(0, BLOCK_M)
        q_offs = offs_q[:, None] * q_stride_t + offs_d[None, :]
        do_offs = offs_q[:, None] * o_stride_t + offs_d[None, :]
        if USE_TMA:  # rows past T read the next sequence's rows or zeros; the mask gives them P = 0
            q = q_desc.load([desc_row + start_m, desc_col])  # (BLOCK_M, D)
            do = do_desc.load([desc_row + start_m, desc_col])
        elif MASKED:
            q = tl.load(q_base + q_offs, mask=(offs_q < T)[:, None], other=0.0)  # (BLOCK_M, D)
            do = tl.load(do_base + do_offs, mask=(offs_q < T)[:, None], other=0.0)
        else:
            q = tl.load(q_base + q_offs)
            do = tl.load(do_base + do_offs)
        if MASKED:
            lse = tl.load(lse_base + offs_q, mask=offs_q < T, other=0.0)  # (BLOCK_M,)
            delta = tl.load(delta_base + offs_q, mask=offs_q < T, other=0.0)
        else:
            lse = tl.load(lse_base + offs_q)
            delta = tl.load(delta_base + offs_q)
        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M)
        p_t = tl.math.exp2(s_t - lse[None, :])
        if MASKED:
            if HAS_DOCS:
                q_doc_start = tl.load(doc_start_ptr + offs_q, mask=offs_q < T, other=0)
            else:
                q_doc_start = tl.zeros([BLOCK_M], dtype=tl.int32)
            allowed = _allowed(offs_q[None, :], offs_k[:, None], q_doc_start[None, :], T, window, HAS_DOCS)
            p_t = tl.where(allowed, p_t, 0.0)
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)  # dV += P^T dO
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # (dO V^T)^T
        ds_t = (p_t * (dp_t - delta[None, :])).to(q.dtype)  # one rounding serves dK and dQ
        dk = tl.dot(ds_t, q, dk, input_precision=DOT_PRECISION)  # dK += dS^T Q (scaled later)
        if DQ_ATOMIC:
            dq = tl.dot(tl.trans(ds_t), k, input_precision=DOT_PRECISION) * scale  # (BLOCK_M, D): dS K s
            if MASKED:
                tl.atomic_add(dq_base + do_offs, dq, mask=(offs_q < T)[:, None], sem="relaxed")
            else:
                tl.atomic_add(dq_base + do_offs, dq, sem="relaxed")
    return dk, dv


@triton.jit(do_not_specialize=["window"])
def _attn_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr,  # (B, T, H, D), each with its own strides (unit head-dim stride)
    do_ptr,  # (B, T, H, D) contiguous
    q_desc, k_desc, v_desc, do_desc,  # with USE_TMA: tensor descriptors of q, k, v, dO as (B * T, H * D) rows
    lse_ptr, delta_ptr,  # (B, H, T) fp32
    dk_ptr, dv_ptr,  # (B, T, H, D) contiguous
    dq_ptr,  # (B, T, H, D) fp32 contiguous, zeroed: dQ accumulated here (read only with DQ_ATOMIC)
    doc_start_ptr, doc_end_ptr,  # (T,) int32 (read only with HAS_DOCS)
    ranges_ptr,  # (cdiv(T, BLOCK_N), 4) int32: loop bounds, written only with STORE_RANGES
    q_stride_b, q_stride_t, q_stride_h, k_stride_b, k_stride_t, k_stride_h, v_stride_b, v_stride_t, v_stride_h,
    o_stride_b, o_stride_t, o_stride_h,
    T, H, window, scale, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_DOCS: tl.constexpr,
    STORE_RANGES: tl.constexpr, DOT_PRECISION: tl.constexpr, DQ_ATOMIC: tl.constexpr, USE_TMA: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    pid_n = tl.program_id(1)  # first key blocks first: under plain causal they hold the most work
    b = pid_bh // H
    h = pid_bh % H
    n0 = pid_n * BLOCK_N
    offs_k = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    o_base = b.to(tl.int64) * o_stride_b + h * o_stride_h
    key_ok = offs_k < T

    desc_row, desc_col = b * T, h * HEAD_DIM  # this (b, h)'s origin in the descriptors' (B * T, H * D) view
    if USE_TMA:  # keys past T (never stored) read the next sequence's rows or zeros; the mask gives them P = 0
        k = k_desc.load([desc_row + n0, desc_col])  # (BLOCK_N, D)
        v = v_desc.load([desc_row + n0, desc_col])
    else:
        k_offs = b.to(tl.int64) * k_stride_b + h * k_stride_h + offs_k[:, None] * k_stride_t + offs_d[None, :]
        v_offs = b.to(tl.int64) * v_stride_b + h * v_stride_h + offs_k[:, None] * v_stride_t + offs_d[None, :]
        k = tl.load(k_ptr + k_offs, mask=key_ok[:, None], other=0.0)  # (BLOCK_N, D)
        v = tl.load(v_ptr + v_offs, mask=key_ok[:, None], other=0.0)

    lo, full_lo, full_hi, hi = _key_block_range(n0, T, window, doc_end_ptr, HAS_DOCS, BLOCK_M, BLOCK_N)
    if STORE_RANGES:
        if pid_bh == 0:
            _store_ranges(ranges_ptr + pid_n * 4, lo, full_lo, full_hi, hi)

    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    q_base = q_ptr + b.to(tl.int64) * q_stride_b + h * q_stride_h
    do_base = do_ptr + o_base
    lse_base = lse_ptr + pid_bh.to(tl.int64) * T
    delta_base = delta_ptr + pid_bh.to(tl.int64) * T
    dq_base = dq_ptr + o_base
    dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, dq_base, q_desc, do_desc, desc_row,
                         desc_col, doc_start_ptr, q_stride_t, o_stride_t, offs_k, T, window, scale, qk_scale, lo,
                         full_lo, True, HAS_DOCS, HEAD_DIM, BLOCK_M, DOT_PRECISION, DQ_ATOMIC, USE_TMA)
    dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, dq_base, q_desc, do_desc, desc_row,
                         desc_col, doc_start_ptr, q_stride_t, o_stride_t, offs_k, T, window, scale, qk_scale,
                         full_lo, full_hi, False, HAS_DOCS, HEAD_DIM, BLOCK_M, DOT_PRECISION, DQ_ATOMIC, USE_TMA)
    dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, dq_base, q_desc, do_desc, desc_row,
                         desc_col, doc_start_ptr, q_stride_t, o_stride_t, offs_k, T, window, scale, qk_scale,
                         full_hi, hi, True, HAS_DOCS, HEAD_DIM, BLOCK_M, DOT_PRECISION, DQ_ATOMIC, USE_TMA)

    out_offs = o_base + offs_k[:, None] * o_stride_t + offs_d[None, :]
    tl.store(dk_ptr + out_offs, (dk * scale).to(dk_ptr.dtype.element_ty), mask=key_ok[:, None])
    tl.store(dv_ptr + out_offs, dv.to(dv_ptr.dtype.element_ty), mask=key_ok[:, None])


@triton.jit
def _dq_inner(dq, q, do, lse, delta, k_base, v_base, k_stride_t, v_stride_t, offs_m, q_doc_start, T, window, qk_scale,
              start, end, MASKED: tl.constexpr, HAS_DOCS: tl.constexpr, HEAD_DIM: tl.constexpr,
              BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Accumulate dQ of one query block over key blocks [start, end)."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in range(start, end, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_k = start_n + offs_n
        k, v = _load_kv_block(k_base, v_base, offs_k, offs_d, k_stride_t, v_stride_t, T, MASKED)  # (BLOCK_N, D)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        p = tl.math.exp2(s - lse[:, None])
        if MASKED:
            allowed = _allowed(offs_m[:, None], offs_k[None, :], q_doc_start[:, None], T, window, HAS_DOCS)
            p = tl.where(allowed, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)  # dO V^T
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)  # dQ += dS K (scaled later)
    return dq


@triton.jit(do_not_specialize=["window"])
def _attn_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr,  # (B, T, H, D), each with its own strides (unit head-dim stride)
    do_ptr,  # (B, T, H, D) contiguous
    lse_ptr, delta_ptr,  # (B, H, T) fp32
    dq_ptr,  # (B, T, H, D) contiguous
    doc_start_ptr,  # (T,) int32 (read only with HAS_DOCS)
    ranges_ptr,  # (cdiv(T, BLOCK_M), 4) int32: loop bounds, written only with STORE_RANGES
    q_stride_b, q_stride_t, q_stride_h, k_stride_b, k_stride_t, k_stride_h, v_stride_b, v_stride_t, v_stride_h,
    o_stride_b, o_stride_t, o_stride_h,
    T, H, window, scale, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_DOCS: tl.constexpr,
    STORE_RANGES: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    pid_m = tl.num_programs(1) - 1 - tl.program_id(1)  # heaviest (last) query blocks first
    b = pid_bh // H
    h = pid_bh % H
    q0 = pid_m * BLOCK_M
    offs_m = q0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    q_base = b.to(tl.int64) * q_stride_b + h * q_stride_h
    o_base = b.to(tl.int64) * o_stride_b + h * o_stride_h
    row_ok = offs_m < T

    q = tl.load(q_ptr + q_base + offs_m[:, None] * q_stride_t + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    do = tl.load(do_ptr + o_base + offs_m[:, None] * o_stride_t + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    lse = tl.load(lse_ptr + pid_bh.to(tl.int64) * T + offs_m, mask=row_ok, other=0.0)
    delta = tl.load(delta_ptr + pid_bh.to(tl.int64) * T + offs_m, mask=row_ok, other=0.0)
    if HAS_DOCS:
        q_doc_start = tl.load(doc_start_ptr + offs_m, mask=row_ok, other=0)
    else:
        q_doc_start = tl.zeros([BLOCK_M], dtype=tl.int32)

    lo, full_lo, full_hi, hi = _query_block_range(q0, T, window, doc_start_ptr, HAS_DOCS, BLOCK_M, BLOCK_N)
    if STORE_RANGES:
        if pid_bh == 0:
            _store_ranges(ranges_ptr + pid_m * 4, lo, full_lo, full_hi, hi)

    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    k_base = k_ptr + b.to(tl.int64) * k_stride_b + h * k_stride_h
    v_base = v_ptr + b.to(tl.int64) * v_stride_b + h * v_stride_h
    dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, k_stride_t, v_stride_t, offs_m, q_doc_start, T, window, qk_scale,
                   lo, full_lo, True, HAS_DOCS, HEAD_DIM, BLOCK_N, DOT_PRECISION)
    dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, k_stride_t, v_stride_t, offs_m, q_doc_start, T, window, qk_scale,
                   full_lo, full_hi, False, HAS_DOCS, HEAD_DIM, BLOCK_N, DOT_PRECISION)
    dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, k_stride_t, v_stride_t, offs_m, q_doc_start, T, window, qk_scale,
                   full_hi, hi, True, HAS_DOCS, HEAD_DIM, BLOCK_N, DOT_PRECISION)
    tl.store(dq_ptr + o_base + offs_m[:, None] * o_stride_t + offs_d[None, :], (dq * scale).to(dq_ptr.dtype.element_ty),
             mask=row_ok[:, None])


# --------------------------------------------------------------------------------------------------
# Host side: block ranges in Python, document bounds, launchers
# --------------------------------------------------------------------------------------------------


def _ceil_to(x: int, m: int) -> int:
    return -(-x // m) * m


def query_block_ranges(T: int, block_m: int, block_n: int, *, window_size: int | None = None,
                       cu_seqlens: torch.Tensor | None = None) -> list[tuple[int, int, int, int]]:
    """Key loop bounds (lo, full_lo, full_hi, hi) of every query block, as the forward and dQ kernels
    compute them: key blocks in [lo, full_lo) and [full_hi, hi) are partial (masked), those in
    [full_lo, full_hi) full; every other key block is skipped. Steps are `block_n` keys."""
    window = T if window_size is None else window_size
    doc_start = _doc_bounds(cu_seqlens, T)[0].tolist() if cu_seqlens is not None else None
    ranges = []
    for q0 in range(0, T, block_m):
        q_last = min(q0 + block_m, T) - 1
        lowest_any = max(q0 - window + 1, 0)
        lowest_all = max(q_last - window + 1, 0)
        if doc_start is not None:
            lowest_any = max(lowest_any, doc_start[q0])
            lowest_all = max(lowest_all, doc_start[q_last])
        lo = lowest_any // block_n * block_n
        hi = q_last + 1
        full_lo = min(max(_ceil_to(lowest_all, block_n), lo), hi)
        full_hi = max(min((q0 + 1) // block_n * block_n, hi), full_lo)
        ranges.append((lo, full_lo, full_hi, hi))
    return ranges


def key_block_ranges(T: int, block_m: int, block_n: int, *, window_size: int | None = None,
                     cu_seqlens: torch.Tensor | None = None) -> list[tuple[int, int, int, int]]:
    """Query loop bounds (lo, full_lo, full_hi, hi) of every key block (`block_n` keys), as the dK/dV
    kernel computes them; steps are `block_m` queries. Same meaning as `query_block_ranges`."""
    window = T if window_size is None else window_size
    doc_end = _doc_bounds(cu_seqlens, T)[1].tolist() if cu_seqlens is not None else None
    ranges = []
    for n0 in range(0, T, block_n):
        n_last = min(n0 + block_n, T) - 1
        end_any = min(n_last + window, T)
        end_all = min(n0 + window, T)
        if doc_end is not None:
            end_any = min(end_any, doc_end[n_last])
            end_all = min(end_all, doc_end[n0])
        lo = n0 // block_m * block_m
        hi = end_any
        full_lo = min(max(_ceil_to(n_last, block_m), lo), hi)
        full_hi = max(min(end_all // block_m * block_m, hi), full_lo)
        ranges.append((lo, full_lo, full_hi, hi))
    return ranges


def _doc_bounds(cu_seqlens: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token document start and end (exclusive), both (T,) int32, from cu_seqlens (n_docs + 1,).
    On the device, no host sync. The clamp changes nothing for valid cu_seqlens (0 <= doc <= n_docs - 1
    there) and keeps invalid ones (unchecked, see `check_cu_seqlens`) from indexing out of bounds."""
    tokens = torch.arange(T, device=cu_seqlens.device, dtype=torch.int32)
    doc = torch.searchsorted(cu_seqlens, tokens, right=True) - 1  # (T,) document index of each token
    doc = doc.clamp_(0, cu_seqlens.numel() - 2)
    return cu_seqlens[doc].contiguous(), cu_seqlens[doc + 1].contiguous()


def doc_bounds(cu_seqlens: torch.Tensor, T: int) -> torch.Tensor:
    """(2, T) int32: per-token document start (row 0) and end, exclusive (row 1), from cu_seqlens (n_docs + 1,).
    The kernels read these; a caller with many attention calls over one cu_seqlens (the trainer: every layer,
    forward and backward) builds them once and passes them to `flash_attention` as `doc_bounds`."""
    return torch.stack(_doc_bounds(cu_seqlens, T))


def _unit_head_dim(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each (B, T, H, D) tensor as it is where its head-dim stride is 1 (the kernels take any other strides per
    tensor: views of one packed qkv tensor, or q and k normalised beside a strided v, pass without a copy);
    a contiguous copy otherwise."""
    return tuple(x if x.stride(-1) == 1 else x.contiguous() for x in tensors)


def _bht_strides(*tensors: torch.Tensor) -> tuple[int, ...]:
    """The (batch, token, head) strides of each (B, T, H, D) tensor, in the kernels' argument order."""
    return tuple(st for x in tensors for st in x.stride()[:3])


def use_tma(q: torch.Tensor) -> bool:
    """Whether the forward loads through TMA tensor descriptors by default: on CUDA GPUs of compute capability 9.0
    and newer (Hopper's bulk tensor copies); the pointer path elsewhere (Triton's interpreter, older GPUs)."""
    return (q.device.type == "cuda" and not _INTERPRETED
            and torch.cuda.get_device_capability(q.device)[0] >= 9)


def _row_descriptors(*tensors_and_boxes: tuple[torch.Tensor, int]):
    """TMA descriptors of (B, T, H, D) tensors seen as (B * T, H * D) rows, each with a (box rows, D) box; None
    where one has no such view (heads not adjacent, sequences not back to back) or misses TMA's 16-byte
    alignment of its base and row stride."""
    descriptors = []
    for x, box in tensors_and_boxes:
        B, T, H, D = x.shape
        stride_b, stride_t, stride_h, stride_d = x.stride()
        rows_ok = stride_d == 1 and stride_h == D and (B == 1 or stride_b == T * stride_t)
        if not (rows_ok and (stride_t * x.element_size()) % 16 == 0 and x.data_ptr() % 16 == 0):
            return None
        descriptors.append(TensorDescriptor(x, shape=[B * T, H * D], strides=[stride_t, 1], block_shape=[box, D]))
    return tuple(descriptors)


def _launch_common(q: torch.Tensor, window_size: int) -> dict:
    """Kernel arguments shared by every pass; no window is a window of T."""
    B, T, H, D = q.shape
    return dict(
        T=T, H=H, window=T if window_size < 0 else min(window_size, T),
        HEAD_DIM=D, DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )


def flash_attention_forward(q, k, v, cu_seqlens, window_size: int, scale: float, *, bounds=None, ranges=None,
                            tma: bool | None = None):
    """Forward launcher.

    Args:
        q, k, v: (B, T, H, D), same dtype and device.
        cu_seqlens: (n_docs + 1,) int32 document starts, or None.
        window_size: keys per query including itself; -1 for none.
        scale: softmax scale applied to q k^T.
        bounds: `doc_bounds(cu_seqlens, T)` if the caller has it; None: built here from cu_seqlens.
        ranges: optional (cdiv(T, BLOCK_M), 4) int32 tensor that receives the key loop bounds of each
            query block (tests of block skipping).
        tma: load q, k and v through TMA tensor descriptors; None: `use_tma(q)` (Hopper and newer). Inputs
            whose layout has no (B * T, H * D) row view, or is not 16-byte aligned, take the pointer path.
    Returns:
        out (B, T, H, D) in q's dtype, lse (B, H, T) fp32 in log2 units.
    """
    B, T, H, D = q.shape
    q, k, v = _unit_head_dim(q, k, v)
    out = torch.empty((B, T, H, D), device=q.device, dtype=q.dtype)
    lse = torch.empty((B, H, T), device=q.device, dtype=torch.float32)
    if cu_seqlens is not None and bounds is None:
        bounds = doc_bounds(cu_seqlens, T)
    doc_start = bounds[0] if cu_seqlens is not None else lse  # lse: unread placeholder
    cfg = block_config("fwd", D, q.device, q.dtype)
    use = use_tma(q) if tma is None else tma
    descriptors = _row_descriptors((q, cfg.block_m), (k, cfg.block_n), (v, cfg.block_n)) if use else None
    grid = (B * H, triton.cdiv(T, cfg.block_m))
    _attn_fwd_kernel[grid](
        q, k, v, *(descriptors or (q, k, v)), out, lse, doc_start, ranges if ranges is not None else lse,
        *_bht_strides(q, k, v, out), qk_scale=scale * LOG2E, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, HAS_DOCS=cu_seqlens is not None,
        STORE_RANGES=ranges is not None, USE_TMA=descriptors is not None, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        **_launch_common(q, window_size),
    )
    return out, lse


def flash_attention_backward(do, q, k, v, out, lse, cu_seqlens, window_size: int, scale: float, *,
                             bounds=None, backward: str = DEFAULT_BACKWARD, dkdv_ranges=None, dq_ranges=None,
                             tma: bool | None = None):
    """Backward launcher: delta preprocess, then the dK/dV kernel, and the dQ kernel ("two_pass") or dQ
    accumulated by the dK/dV kernel itself in fp32 and cast ("atomic").

    Args:
        do: (B, T, H, D) upstream gradient of the output.
        q, k, v, cu_seqlens, window_size, scale, bounds: as given to the forward.
        out, lse: the forward's outputs.
        backward: "atomic" (5 matmuls per tile; dQ's fp32 sums in the order the atomics land, so not
            bit-reproducible on a GPU) or "two_pass" (7 matmuls per tile; bit-reproducible).
        dkdv_ranges, dq_ranges: optional int32 tensors that receive the loop bounds of each key block
            (cdiv(T, BLOCK_N), 4) and of each query block (cdiv(T, BLOCK_M), 4) (tests; dq_ranges two_pass only).
        tma: the dK/dV kernel loads q, k, v and dO through TMA descriptors, as in the forward; None: `use_tma(q)`.
            The two-pass dQ kernel always uses pointers.
    Returns:
        dq, dk, dv, each (B, T, H, D) contiguous in q's dtype.
    """
    if backward not in BACKWARDS:
        raise ValueError(f"flash_attention: backward {backward!r} not one of {', '.join(BACKWARDS)}")
    B, T, H, D = q.shape
    q, k, v = _unit_head_dim(q, k, v)
    do, out = do.contiguous(), out.contiguous()
    dk, dv = (torch.empty((B, T, H, D), device=q.device, dtype=q.dtype) for _ in range(2))
    atomic = backward == "atomic"
    # atomic: dQ summed in fp32 (B, T, H, D), o's strides, then cast; two_pass: dQ itself
    dq = torch.zeros((B, T, H, D), device=q.device, dtype=torch.float32) if atomic else torch.empty_like(dk)
    delta = torch.empty_like(lse)
    common = _launch_common(q, window_size)

    _attn_bwd_preprocess_kernel[(B * H, triton.cdiv(T, 64))](
        out, do, delta, out.stride(0), out.stride(1), out.stride(2), T, H, HEAD_DIM=D, BLOCK_M=64,
    )
    has_docs = cu_seqlens is not None
    if has_docs and bounds is None:
        bounds = doc_bounds(cu_seqlens, T)
    doc_start, doc_end = (bounds[0], bounds[1]) if has_docs else (lse, lse)  # lse: unread placeholder
    strides = _bht_strides(q, k, v, do)  # dk, dv and the dQ buffer are contiguous: do's strides

    cfg = block_config("bwd" if atomic else "dkdv", D, q.device, q.dtype)
    use = use_tma(q) if tma is None else tma
    descriptors = _row_descriptors((q, cfg.block_m), (k, cfg.block_n), (v, cfg.block_n), (do, cfg.block_m)) \
        if use else None
    _attn_bwd_dkdv_kernel[(B * H, triton.cdiv(T, cfg.block_n))](
        q, k, v, do, *(descriptors or (q, k, v, do)), lse, delta, dk, dv, dq, doc_start, doc_end,
        dkdv_ranges if dkdv_ranges is not None else lse,
        *strides, scale=scale, qk_scale=scale * LOG2E, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        HAS_DOCS=has_docs, STORE_RANGES=dkdv_ranges is not None, DQ_ATOMIC=atomic, USE_TMA=descriptors is not None,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **common,
    )
    if atomic:
        return dq.to(q.dtype), dk, dv
    cfg = block_config("dq", D, q.device, q.dtype)
    _attn_bwd_dq_kernel[(B * H, triton.cdiv(T, cfg.block_m))](
        q, k, v, do, lse, delta, dq, doc_start, dq_ranges if dq_ranges is not None else lse,
        *strides, scale=scale, qk_scale=scale * LOG2E, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        HAS_DOCS=has_docs, STORE_RANGES=dq_ranges is not None, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages, **common,
    )
    return dq, dk, dv


# --------------------------------------------------------------------------------------------------
# Custom ops, autograd, public function
# --------------------------------------------------------------------------------------------------


def _check_window(window_size: int | None) -> None:
    """A one-line ValueError unless the window is None (a window_tensor's -1) or an int >= 1."""
    if window_size is not None and (not isinstance(window_size, numbers.Integral) or window_size < 1):  # numpy's too
        raise ValueError(f"flash_attention: window_size must be an int >= 1 or None (window_tensor: -1), got "
                         f"{window_size!r}")


# The window is a 0-d int64 CPU tensor, not an int: torch.compile specialises a graph on every int it is
# given (dynamic=False), so an int window would compile one graph per window size of the schedule (14 train
# and 14 validation graphs for fineweb-124m). A CPU tensor's value is read on the host (no device sync) when
# the kernel launches, and the fake implementations never read it.
def window_tensor(window_size: int | None) -> torch.Tensor:
    """The window as the ops take it: a 0-d int64 CPU tensor, -1 for none."""
    _check_window(window_size)
    return torch.tensor(-1 if window_size is None else window_size, dtype=torch.int64)


@torch.library.custom_op("speedrun::flash_attention_fwd", mutates_args=())
def _flash_attention_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor | None,
                            bounds: torch.Tensor | None, window: torch.Tensor, scale: float,
                            backward: str) -> tuple[torch.Tensor, torch.Tensor]:
    # `backward`: for the backward only
    window_size = int(window)  # a CPU tensor: no device sync
    _check_window(None if window_size == -1 else window_size)
    if cu_seqlens is not None and cu_seqlens.device.type == "cpu":  # free on the host (the op's, compiled too)
        check_cu_seqlens(cu_seqlens, q.shape[1])
    return flash_attention_forward(q, k, v, cu_seqlens, window_size, scale, bounds=bounds)


@_flash_attention_fwd_op.register_fake
def _(q, k, v, cu_seqlens, bounds, window, scale, backward):
    B, T, H, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((B, H, T), dtype=torch.float32)


@torch.library.custom_op("speedrun::flash_attention_bwd", mutates_args=())
def _flash_attention_bwd_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                            lse: torch.Tensor, cu_seqlens: torch.Tensor | None, bounds: torch.Tensor | None,
                            window: torch.Tensor, scale: float,
                            backward: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return flash_attention_backward(do, q, k, v, out, lse, cu_seqlens, int(window), scale, bounds=bounds,
                                    backward=backward)


@_flash_attention_bwd_op.register_fake
def _(do, q, k, v, out, lse, cu_seqlens, bounds, window, scale, backward):
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens, bounds, window, scale, backward = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens, bounds, window)
    ctx.scale, ctx.backward = scale, backward


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, cu_seqlens, bounds, window = ctx.saved_tensors
    dq, dk, dv = _flash_attention_bwd_op(dout, q, k, v, out, lse, cu_seqlens, bounds, window, ctx.scale,
                                         ctx.backward)
    return dq, dk, dv, None, None, None, None, None


_flash_attention_fwd_op.register_autograd(_backward, setup_context=_setup_context)


_INTERPRETED = interpreted(_attn_fwd_kernel)  # made for Triton's interpreter (TRITON_INTERPRET=1 at import)


def _check_inputs(q, k, v, window_size, cu_seqlens, bounds=None) -> None:
    """One-line ValueErrors for inputs the kernels do not handle. Reads shapes, strides, dtypes and devices; the op
    reads the values it can without a host sync (the window tensor's, CPU cu_seqlens'), compiled too."""
    check_tensors("flash_attention", q=q, k=k, v=v, cu_seqlens=cu_seqlens, doc_bounds=bounds)
    if q.dim() != 4:
        raise ValueError(f"flash_attention: q must be (B, T, H, D), got shape {tuple(q.shape)}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"flash_attention: q, k, v shapes differ: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"flash_attention: q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"flash_attention: dtype {q.dtype} not supported (bf16, fp16, fp32)")
    if not (q.device == k.device == v.device):
        raise ValueError(f"flash_attention: q, k, v devices differ: {q.device}, {k.device}, {v.device}")
    check_launchable("flash_attention", _INTERPRETED, q)
    check_interpretable("flash_attention", _INTERPRETED, q.dtype)
    B, T, H, D = q.shape
    if D not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"flash_attention: head dim {D} not supported (one of {SUPPORTED_HEAD_DIMS})")
    if T < 1 or B < 1 or H < 1:
        raise ValueError(f"flash_attention: empty input of shape {tuple(q.shape)}")
    if isinstance(window_size, torch.Tensor):  # its value is checked by the op, which reads it (compiled too)
        if window_size.device.type != "cpu" or window_size.dim() != 0 or window_size.dtype != torch.int64:
            raise ValueError(f"flash_attention: a tensor window_size must be a 0-d int64 CPU tensor "
                             f"(window_tensor(w)), got {window_size.dim()}-d {window_size.dtype} on {window_size.device}")
    else:
        _check_window(window_size)
    for name, t in (("q", q), ("k", k), ("v", v)):
        span = 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride()))  # elements from first to last
        if span >= 2**31:
            raise ValueError(f"flash_attention: {name} spans {span} elements; the kernels' int32 offsets need < 2^31")
    if cu_seqlens is None:
        if bounds is not None:
            raise ValueError("flash_attention: doc_bounds given without cu_seqlens")
        return
    if bounds is not None and (bounds.shape != (2, T) or bounds.dtype != torch.int32 or bounds.device != q.device
                               or not bounds.is_contiguous()):  # the kernels index each row as contiguous
        raise ValueError(f"flash_attention: doc_bounds must be (2, T = {T}) contiguous int32 on {q.device} "
                         f"(doc_bounds(cu_seqlens, T)), got {tuple(bounds.shape)} {bounds.dtype} on {bounds.device} "
                         f"(contiguous: {bounds.is_contiguous()})")
    if cu_seqlens.dtype != torch.int32:
        raise ValueError(f"flash_attention: cu_seqlens must be int32, got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"flash_attention: cu_seqlens must be 1-D with >= 2 entries, got shape {tuple(cu_seqlens.shape)}")
    if cu_seqlens.device != q.device:
        raise ValueError(f"flash_attention: cu_seqlens on {cu_seqlens.device}, q on {q.device}")
    if B != 1:
        raise ValueError(f"flash_attention: cu_seqlens needs a packed batch with B == 1, got B = {B}")


def check_cu_seqlens(cu_seqlens: torch.Tensor, T: int) -> None:
    """One-line ValueErrors unless cu_seqlens (n_docs + 1,) int32 starts at 0, ends at T and never decreases.

    `flash_attention` calls it for CPU tensors only: on a GPU reading the values waits for the device (one
    host sync), which every attention layer of an eager CUDA step would pay; tests and debugging call it
    there, and the trainer's cu_seqlens is valid by construction (`packed_cu_seqlens`). Unchecked bad values
    give a wrong mask, never an access out of bounds: the kernels clamp every loop bound to [0, T) and
    `_doc_bounds` clamps document indices.
    """
    if cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"check_cu_seqlens: need 1-D int32 with >= 2 entries, got {cu_seqlens.dtype} "
                         f"of shape {tuple(cu_seqlens.shape)}")
    first, last, monotone = torch.stack(  # one host sync for the three value checks
        [cu_seqlens[0], cu_seqlens[-1], (cu_seqlens[1:] >= cu_seqlens[:-1]).all().to(torch.int32)]
    ).tolist()
    if first != 0:
        raise ValueError(f"flash_attention: cu_seqlens must start at 0, starts at {first}")
    if last != T:
        raise ValueError(f"flash_attention: cu_seqlens must end at T = {T}, ends at {last}")
    if not monotone:
        raise ValueError("flash_attention: cu_seqlens must be non-decreasing (document starts in order)")


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window_size: int | torch.Tensor | None = None,
                    cu_seqlens: torch.Tensor | None = None, doc_bounds: torch.Tensor | None = None,
                    scale: float | None = None, backward: str | None = None) -> torch.Tensor:
    """Causal attention, optionally windowed and document-masked.

    Args:
        q, k, v: (B, T, H, D), bf16 or fp16 (fp32 for tests), D in {64, 128} (16 and 32 also work); each read
            in place with its own strides where its head dim has unit stride (views of a packed qkv projection,
            or a v view beside contiguous q and k), copied otherwise.
        window_size: an int >= 1: query i sees keys i - window_size < j <= i (itself included); None: all
            earlier keys. Or `window_tensor(w)`, a 0-d CPU tensor: under torch.compile an int is
            baked into the graph (one graph per window size), a tensor is an input (one graph for all).
        cu_seqlens: (n_docs + 1,) int32 cumulative document starts of a packed batch, from 0 to T,
            non-decreasing (empty documents, e.g. trailing T's as padding, are allowed); needs B == 1.
            Queries see only keys of their own document. Its values are checked on the CPU only: on
            CUDA they are unchecked (a check is a host sync per call), as in FlashAttention's varlen
            API; `check_cu_seqlens(cu_seqlens, T)` checks them there, for tests and debugging.
        doc_bounds: `doc_bounds(cu_seqlens, T)`, (2, T) int32, for callers that attend many times over one
            cu_seqlens (built once instead of in every call); None: built in each forward and backward.
        scale: softmax scale, default D ** -0.5.
        backward: "atomic" (5 matmuls per tile; dQ's fp32 sums not bit-reproducible on a GPU) or "two_pass"
            (7 matmuls per tile, bit-reproducible); None: DEFAULT_BACKWARD (see BACKWARDS).
    Returns:
        (B, T, H, D) in q's dtype. Differentiable in q, k, v; traces under torch.compile.

    Queries and keys share positions (self-attention over one T), so the causal diagonal is i == j.
    """
    _check_inputs(q, k, v, window_size, cu_seqlens, doc_bounds)
    if not (scale is None or isinstance(scale, numbers.Real)):  # the op takes a float: a tensor gets no gradient
        raise ValueError(f"flash_attention: scale must be a number or None, got {type(scale).__name__}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    window = window_size if isinstance(window_size, torch.Tensor) else window_tensor(window_size)
    backward = DEFAULT_BACKWARD if backward is None else backward
    if backward not in BACKWARDS:
        raise ValueError(f"flash_attention: backward {backward!r} not one of {', '.join(BACKWARDS)}")
    out, _ = _flash_attention_fwd_op(q, k, v, cu_seqlens, doc_bounds, window, scale, backward)
    return out


# --------------------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------------------


def attention_mask(T: int, *, window_size: int | None = None, cu_seqlens: torch.Tensor | None = None,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """(T, T) bool, True where query i (row) may attend key j (column): causal, window, same document."""
    i = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    mask = j <= i
    if window_size is not None:
        mask = mask & (j > i - window_size)
    if cu_seqlens is not None:
        doc = torch.searchsorted(cu_seqlens.to(device), torch.arange(T, device=device, dtype=cu_seqlens.dtype),
                                 right=True)
        mask = mask & (doc[:, None] == doc[None, :])
    return mask


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window_size: int | None = None,
                  cu_seqlens: torch.Tensor | None = None, scale: float | None = None,
                  upcast: bool = True) -> torch.Tensor:
    """The same attention in plain PyTorch with an explicit mask: fp32 math returning fp32 (upcast),
    or all math in the input dtype (upcast=False, PyTorch's own low-precision error for the tests).
    q, k, v: (B, T, H, D); returns (B, T, H, D)."""
    B, T, H, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    dtype = torch.float32 if upcast else q.dtype
    qh, kh, vh = (x.to(dtype).transpose(1, 2) for x in (q, k, v))  # (B, H, T, D)
    mask = attention_mask(T, window_size=window_size, cu_seqlens=cu_seqlens, device=q.device)
    scores = (qh @ kh.transpose(-1, -2)) * scale  # (B, H, T, T)
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    return (probs @ vh).transpose(1, 2)


# --------------------------------------------------------------------------------------------------
# A packed batch of documents: the trainer's attention on each backend
# --------------------------------------------------------------------------------------------------
# `starts` (B, T) bool marks where a document starts (row starts included: nothing before a row is
# visible). Each backend turns it into its own mask once per step; attention reads it in every layer.


def packed_cu_seqlens(starts: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kernel's mask for the B rows packed into one of N = B*T tokens: (cu_seqlens (N + 1,) int32,
    `window_tensor(window)`, `doc_bounds` (2, N) int32), so that one compiled graph serves every window size
    of the schedule and the document bounds are built once per step, not in every layer's forward and backward.

    The document starts come first, then N repeated (empty documents, which the kernel allows; there are
    at most N starts, so at least one N ends it): one length every step, so no host sync to count
    documents (torch.nonzero would; so would building the end from a Python list) and no recompile."""
    N = starts.numel()
    cu_seqlens = torch.nonzero_static(starts.flatten(), size=N + 1, fill_value=N).flatten()
    cu_seqlens = cu_seqlens.to(torch.int32)
    return cu_seqlens, window_tensor(window), doc_bounds(cu_seqlens, N)


def packed_flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask,
                           scale: float | None = None) -> torch.Tensor:
    """`flash_attention` over q, k, v (B, T, H, D) packed into one row, documents kept apart by the
    `packed_cu_seqlens` mask; softmax scale `scale` (None: D ** -0.5). Returns (B, T, H, D)."""
    (cu_seqlens, window, bounds), (B, T, H, D) = mask, q.shape
    y = flash_attention(*(x.reshape(1, B * T, H, D) for x in (q, k, v)), window_size=window, cu_seqlens=cu_seqlens,
                        doc_bounds=bounds, scale=scale)
    return y.reshape(B, T, H, D)


def dense_mask(starts: torch.Tensor, window: int) -> torch.Tensor:
    """(B, 1, T, T) bool for SDPA: query i sees key j iff i - window < j <= i, in the same document."""
    T = starts.size(1)
    docs = starts.cumsum(1)  # (B, T) document index per token
    i, j = torch.arange(T, device=starts.device)[:, None], torch.arange(T, device=starts.device)[None, :]
    causal_window = (j <= i) & (j > i - window)  # (T, T)
    return (causal_window & (docs[:, :, None] == docs[:, None, :]))[:, None]


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                   scale: float | None = None) -> torch.Tensor:
    """PyTorch's scaled_dot_product_attention with a `dense_mask` and softmax scale `scale` (None: D ** -0.5):
    q, k, v (B, T, H, D) -> (B, T, H, D)."""
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                       scale=scale)
    return y.transpose(1, 2)


class FlexMasks:
    """FlexAttention block masks for a packed batch: causal, windowed, documents apart (the CUDA torch path).

    Block-level masks built by hand, after @YouJiacheng's in modded-nanogpt: a (query block, key
    block) pair is skipped when no pair in it is visible, "full" when every pair is, "partial"
    (mask_mod evaluated) otherwise. The batch is flattened to one row of N = B*T tokens. mask_mod
    reads persistent buffers (one set per N) so torch.compile sees the same function every step.
    """

    def __init__(self, block: int = 128):
        self.block, self._buffers = block, {}

    def __call__(self, starts: torch.Tensor, window: int) -> BlockMask:
        docs = starts.flatten().cumsum(0)  # (N,)
        N, bs = docs.numel(), self.block
        if N % bs:
            raise ValueError(f"FlexAttention needs batch_size x seq_len ({N}) to be a multiple of {bs}")
        if N not in self._buffers:
            doc_buf, window_buf = torch.empty_like(docs), torch.zeros((), dtype=torch.int64, device=docs.device)

            def mask_mod(b, h, q, kv):
                return (q >= kv) & (q - kv < window_buf) & (doc_buf[q] == doc_buf[kv])

            self._buffers[N] = (doc_buf, window_buf, mask_mod)
        doc_buf, window_buf, mask_mod = self._buffers[N]
        doc_buf.copy_(docs)
        window_buf.fill_(window)
        n = N // bs
        blocks = torch.arange(n, device=docs.device)
        d = blocks[:, None] - blocks[None, :]  # (n, n) query block - key block
        lo, hi = docs.view(n, bs)[:, 0], docs.view(n, bs)[:, -1]  # first/last document of each block
        any_visible = (d >= 0) & (d * bs - (bs - 1) < window) & (lo[:, None] <= hi[None, :]) & (hi[:, None] >= lo[None, :])
        all_visible = (d > 0) & (d * bs + bs - 1 < window) & (lo[:, None] == hi[None, :]) & (hi[:, None] == lo[None, :])

        def ordered(m):  # (n, n) bool -> per query block: count, key block indices with the True ones first
            order = torch.argsort(m.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
            return m.sum(-1, dtype=torch.int32)[None, None].contiguous(), order[None, None].contiguous()

        partial, full = ordered(any_visible & ~all_visible), ordered(all_visible)
        return BlockMask.from_kv_blocks(*partial, *full, BLOCK_SIZE=bs, mask_mod=mask_mod)


def make_flex_attention():
    """FlexAttention over q, k, v (B, T, H, D) packed into one row for a `FlexMasks` block mask, compiled
    with static shapes (FlexAttention is only fast compiled). Returns attention(q, k, v, block_mask, scale=None),
    scale the softmax scale (None: D ** -0.5)."""
    compiled = torch.compile(flex_attention, dynamic=False)

    def attention(q, k, v, block_mask, scale=None):
        B, T, H, D = q.shape
        q, k, v = (x.reshape(1, B * T, H, D).transpose(1, 2) for x in (q, k, v))
        return compiled(q, k, v, block_mask=block_mask, scale=scale).transpose(1, 2).reshape(B, T, H, D)

    return attention
