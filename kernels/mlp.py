"""The MLP with ReLU² in the matmul epilogues, y = proj(relu(fc(x))²), beside its PyTorch reference.

The math, for x (M, d), W_fc (f, d), W_proj (d, f) (nn.Linear's (out, in) layout):

    forward   pre  = x W_fcᵀ                  (M, f)
              post = relu(pre)²               (M, f)
              y    = post W_projᵀ             (M, d)
    backward  d_post = dy W_proj              (M, f)
              d_pre  = d_post · 2 relu(pre)   (M, f)   (relu(p)² has derivative 2 relu(p), 0 for p <= 0)
              dW_proj = dyᵀ post,  dW_fc = d_preᵀ x,  dx = d_pre W_fc

One Triton matmul kernel, C = A B with B addressed through its strides (B = W_fcᵀ forward, W_proj backward),
carries the element-wise work in its epilogue, where the accumulator tile is still in registers:
- forward (`EPILOGUE = "relu2"`): writes pre and post. post is squared from pre as rounded to the storage
  dtype, not from the fp32 accumulator: the backward reads that stored pre, so post and d_pre are functions of
  the same value (the derivative is the derivative of what the forward computed), and post equals the
  reference's `relu(pre).square()` on its rounded pre (the square of a bf16/fp16 value is exact in fp32, so one
  rounding to the dtype gives what PyTorch's square gives).
- backward (`EPILOGUE = "relu2_grad"`): the accumulator is d_post = dy W_proj; the epilogue reads the saved pre
  tile and writes d_pre = d_post · 2 relu(pre) in fp32, rounded once. d_post itself is never stored.
The other four matmuls (y, dW_proj, dW_fc, dx) are torch matmuls (cuBLAS on a GPU). Saved for the backward:
x, pre and post (and the weights, which are parameters): as much memory as eager autograd keeps for the unfused
reference (x, relu(pre), which the ReLU and the square both save, and post).

Bytes and FLOPs, per token, bf16 (2 B), f = 4d: the matmuls do 2·2·d·f FLOPs forward and 2·4·d·f backward as
unfused. Unfused, Inductor's element-wise kernel reads pre and writes post forward (2·2f B), and backward reads
d_post and pre and writes d_pre (3·2f B), beside the matmuls' own reads and writes: 10f B a token. Fused, the
forward writes post in the epilogue beside pre (+2f B) and the backward reads pre in the epilogue (+2f B) and writes
d_pre where the unfused matmul writes d_post (so d_post's read and the separate d_pre write go): 4f B a token,
12.3 KB at f = 3072 where unfused moves 30.7 KB.
`benchmarks/bench_mlp.py` measures both at the fineweb-124m shapes (49152 x 768 -> 3072).

Program order (Triton's matmul tutorial): output tiles are taken GROUP_M tile-rows at a time, column by column
inside the group, so the programs in flight share A's tile-rows and B's tile-columns in L2. Every edge is masked
(any M, N, K; K is zero-padded to the block).

Block sizes. CUDA (sm_90, bf16/fp16): `triton.autotune` over CUDA_CONFIGS, all with BLOCK_K = 64, so every
choice sums the products in the same order and gives the same bits (the autotuner's pick does not change a
run's numbers): 128x256 and 128x128 tiles, 8 warps, 3-4 stages, each spill-free on sm_90 under Triton 3.9
(`python -m benchmarks.ptxas_report mlp`; the table is in benchmarks/NOTES.md). fp32 inputs take the
exact fp32 product ("ieee") and half the BLOCK_K (CUDA_FP32_CONFIG). Under Triton's interpreter (CPU): one small
fixed tile and group, INTERPRETER_BLOCKS, so test shapes span several tiles and groups.

Limits: x (..., d) and the weights of one dtype among float32, float16, bfloat16 (the trainer casts its fp32
weights to the activations' dtype under autocast), on one device; anything else is a one-line ValueError.
Interpreter: fp32 and fp16 (it has no bf16 arithmetic: bf16 there is a ValueError). Any size, zero included.
NaN and inf propagate as in the reference: relu keeps a NaN pre NaN; the backward passes exactly 0 where
pre <= 0. GPU: not measured; `python -m benchmarks.bench_mlp`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from kernels import check_interpretable, check_launchable, check_tensors, interpreted

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
GROUP_M = 8  # tile-rows per program group on CUDA (L2 reuse of B's tile-columns)
# sm_90, 2-byte operands: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages). Shared memory per stage
# (BM + BN)·BK·2 B: 48 KiB at 128x256x64 (3 stages, 144 KiB), 32 KiB at 128x128x64 (4 stages, 128 KiB).
CUDA_CONFIGS = [(128, 256, 64, 8, 3), (128, 128, 64, 8, 4), (128, 128, 64, 4, 4)]
# The fixed tiles, (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages). fp32 on a GPU (the tests'): exact
# products, small tiles. Under TRITON_INTERPRET=1 the interpreter's time grows with the programs (cpu-tiny's MLP,
# 2048 x 128 -> 512, forward + backward: 25 s at 32 x 32 x 16, 4.5 s at 64 x 64 x 32); groups of 2 tile-rows let
# the tests' shapes reach several groups and a partial last one (it ignores warps and stages).
CUDA_FP32_CONFIG = (64, 64, 32, GROUP_M, 4, 3)
INTERPRETER_BLOCKS = (64, 64, 32, 2, 1, 1)


def relu2_mlp_ref(x: Tensor, w_fc: Tensor, w_proj: Tensor) -> Tensor:
    """proj(relu(fc(x))²) in plain PyTorch: x (..., d), w_fc (f, d), w_proj (d, f) -> (..., d)."""
    return F.linear(F.relu(F.linear(x, w_fc)).square(), w_proj)


# ---------------------------------------------------------------------------------------------------
# The kernel
# ---------------------------------------------------------------------------------------------------


@triton.jit
def _mlp_matmul_kernel(
    a_ptr, a_stride_m, a_stride_k,  # (M, K) x forward, dy backward
    b_ptr, b_stride_k, b_stride_n,  # (K, N) W_fcᵀ forward (a transposed view), W_proj backward
    pre_ptr, pre_stride_m, pre_stride_n,  # (M, N) pre: written forward, read backward
    out_ptr,  # (M, N) contiguous: post forward, d_pre backward
    M, N, K,
    EPILOGUE: tl.constexpr,  # "relu2": write pre and relu(pre)²; "relu2_grad": write acc · 2 relu(pre)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 operands; fp16/bf16 ignore it
):
    # Grouped program order (Triton's matmul tutorial): GROUP_M tile-rows, walked column by column.
    pid = tl.program_id(0)
    tiles_m, tiles_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * tiles_n)
    first_m = group * GROUP_M
    rows_in_group = tl.minimum(tiles_m - first_m, GROUP_M)
    tile_m = first_m + (pid % (GROUP_M * tiles_n)) % rows_in_group
    tile_n = (pid % (GROUP_M * tiles_n)) // rows_in_group

    # int64 offsets: in int32, a column times B's column stride overflows for a weight over 2^31 elements, and
    # k times A's k stride (the advance by BLOCK_K too) for a transposed x over 2^25 rows
    offs_m = tile_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_n = tile_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)  # (BLOCK_K,)
    a_ptrs = a_ptr + offs_m[:, None] * a_stride_m + offs_k[None, :] * a_stride_k  # (BLOCK_M, BLOCK_K)
    b_ptrs = b_ptr + offs_k[:, None] * b_stride_k + offs_n[None, :] * b_stride_n  # (BLOCK_K, BLOCK_N)
    a_step, b_step = tl.cast(a_stride_k, tl.int64) * BLOCK_K, tl.cast(b_stride_k, tl.int64) * BLOCK_K
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=(offs_m[:, None] < M) & (offs_k[None, :] < k_left), other=0.0)
        b = tl.load(b_ptrs, mask=(offs_k[:, None] < k_left) & (offs_n[None, :] < N), other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        a_ptrs += a_step
        b_ptrs += b_step

    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    pre_ptrs = pre_ptr + offs_m[:, None] * pre_stride_m + offs_n[None, :] * pre_stride_n
    out_ptrs = out_ptr + offs_m[:, None] * N + offs_n[None, :]
    if EPILOGUE == "relu2":
        pre = acc.to(pre_ptr.dtype.element_ty)
        tl.store(pre_ptrs, pre, mask=mask)
        # squared from pre as stored (the module docstring); relu keeps a NaN pre NaN, as torch.relu
        pre = pre.to(tl.float32)
        r = tl.where(pre < 0.0, 0.0, pre)
        tl.store(out_ptrs, (r * r).to(out_ptr.dtype.element_ty), mask=mask)
    else:
        # relu(p)² has derivative 2 relu(p), and exactly 0 where p <= 0 (torch's relu backward, a where on p <= 0,
        # passes nothing there, not even an inf d_post); a NaN p gives NaN, as there
        pre = tl.load(pre_ptrs, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptrs, tl.where(pre <= 0.0, 0.0, acc * 2.0 * pre).to(out_ptr.dtype.element_ty), mask=mask)


_INTERPRETED = interpreted(_mlp_matmul_kernel)  # made for Triton's interpreter (TRITON_INTERPRET=1 at import)


def _cuda_configs() -> list:
    return [triton.Config(dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk), num_warps=w, num_stages=s)
            for bm, bn, bk, w, s in CUDA_CONFIGS]


# On CUDA: the autotuner picks one of CUDA_CONFIGS per (M, N, K, epilogue, dtype); every pick has BLOCK_K 64, so
# the bits do not depend on it. The backward only reads pre, and both epilogues overwrite their outputs whole, so
# re-running a launch while timing it changes nothing.
_mlp_matmul_autotuned = triton.autotune(configs=_cuda_configs(), key=["M", "N", "K", "EPILOGUE", "DOT_PRECISION"])(
    _mlp_matmul_kernel)


# ---------------------------------------------------------------------------------------------------
# Launcher
# ---------------------------------------------------------------------------------------------------


def mlp_matmul(a: Tensor, b: Tensor, pre: Tensor, out: Tensor, epilogue: str) -> None:
    """Launch C = a b with `epilogue` ("relu2" or "relu2_grad", see `_mlp_matmul_kernel`) into pre / out.

    Args:
        a: (M, K), any strides. b: (K, N), any strides (W_fc.t() is read in place).
        pre: (M, N): written by "relu2", read by "relu2_grad"; any strides.
        out: (M, N) contiguous: post ("relu2") or d_pre ("relu2_grad"); a's dtype.
    """
    (M, K), N = a.shape, b.shape[1]
    if M == 0 or N == 0:
        return
    precision = "ieee" if a.dtype == torch.float32 else "tf32"
    args = (a, *a.stride(), b, *b.stride(), pre, *pre.stride(), out, M, N, K)
    if not a.is_cuda or a.dtype == torch.float32:  # a fixed tile: the interpreter's, or exact fp32 products' on CUDA
        bm, bn, bk, group_m, warps, stages = CUDA_FP32_CONFIG if a.is_cuda else INTERPRETER_BLOCKS
        grid = (triton.cdiv(M, bm) * triton.cdiv(N, bn),)
        _mlp_matmul_kernel[grid](*args, EPILOGUE=epilogue, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=group_m,
                                 DOT_PRECISION=precision, num_warps=warps, num_stages=stages)
    else:
        grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
        _mlp_matmul_autotuned[grid](*args, EPILOGUE=epilogue, GROUP_M=GROUP_M, DOT_PRECISION=precision)


# ---------------------------------------------------------------------------------------------------
# Custom ops (what autograd and torch.compile see) and the public function
# ---------------------------------------------------------------------------------------------------


@torch.library.custom_op("speedrun::relu2_mlp", mutates_args=())
def _relu2_mlp_op(x: Tensor, w_fc: Tensor, w_proj: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """x (M, d), w_fc (f, d), w_proj (d, f) -> (y (M, d), pre (M, f), post (M, f)); pre and post are saved."""
    M, f = x.shape[0], w_fc.shape[0]
    pre = x.new_empty(M, f)
    post = x.new_empty(M, f)
    mlp_matmul(x, w_fc.t(), pre, post, "relu2")
    return post @ w_proj.t(), pre, post


@_relu2_mlp_op.register_fake
def _(x, w_fc, w_proj):
    M, f = x.shape[0], w_fc.shape[0]
    return x.new_empty(M, w_proj.shape[0]), x.new_empty(M, f), x.new_empty(M, f)


@torch.library.custom_op("speedrun::relu2_mlp_bwd", mutates_args=())
def _relu2_mlp_bwd_op(dy: Tensor, x: Tensor, w_fc: Tensor, w_proj: Tensor, pre: Tensor,
                      post: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """dy (M, d) and the saved tensors -> (dx (M, d), dW_fc (f, d), dW_proj (d, f))."""
    d_pre = torch.empty_like(pre, memory_format=torch.contiguous_format)
    mlp_matmul(dy, w_proj, pre, d_pre, "relu2_grad")  # d_pre = (dy W_proj) · 2 relu(pre)
    return d_pre @ w_fc, d_pre.t() @ x, dy.t() @ post


@_relu2_mlp_bwd_op.register_fake
def _(dy, x, w_fc, w_proj, pre, post):
    return x.new_empty(x.shape), x.new_empty(w_fc.shape), x.new_empty(w_proj.shape)  # contiguous, as mm's outputs


def _relu2_mlp_setup(ctx, inputs, output):
    x, w_fc, w_proj = inputs
    _, pre, post = output
    ctx.save_for_backward(x, w_fc, w_proj, pre, post)
    ctx.set_materialize_grads(False)


def _relu2_mlp_backward(ctx, dy, _dpre, _dpost):
    x, w_fc, w_proj, pre, post = ctx.saved_tensors
    return _relu2_mlp_bwd_op(dy, x, w_fc, w_proj, pre, post)


_relu2_mlp_op.register_autograd(_relu2_mlp_backward, setup_context=_relu2_mlp_setup)


def _check_inputs(x: Tensor, w_fc: Tensor, w_proj: Tensor) -> None:
    """One-line ValueErrors for inputs the kernel does not take."""
    check_tensors("relu2_mlp", x=x, w_fc=w_fc, w_proj=w_proj)
    for name, t in (("x", x), ("w_fc", w_fc), ("w_proj", w_proj)):
        if t.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"relu2_mlp: {name} has dtype {t.dtype}; supported: float32, float16, bfloat16")
    if x.dim() < 1 or w_fc.dim() != 2 or w_proj.dim() != 2:
        raise ValueError(f"relu2_mlp: expected x (..., d), w_fc (f, d), w_proj (d, f), got {tuple(x.shape)}, "
                         f"{tuple(w_fc.shape)}, {tuple(w_proj.shape)}")
    d, f = x.shape[-1], w_fc.shape[0]
    if w_fc.shape[1] != d or tuple(w_proj.shape) != (d, f):
        raise ValueError(f"relu2_mlp: x (..., {d}) needs w_fc (f, {d}) and w_proj ({d}, f), got "
                         f"{tuple(w_fc.shape)} and {tuple(w_proj.shape)}")
    if not w_fc.dtype == w_proj.dtype == x.dtype:
        raise ValueError(f"relu2_mlp: x, w_fc, w_proj must share a dtype (cast the weights to x's), got {x.dtype}, "
                         f"{w_fc.dtype}, {w_proj.dtype}")
    if not w_fc.device == w_proj.device == x.device:
        raise ValueError(f"relu2_mlp: x, w_fc, w_proj must be on one device, got {x.device}, {w_fc.device}, "
                         f"{w_proj.device}")
    check_launchable("relu2_mlp", _INTERPRETED, x)
    check_interpretable("relu2_mlp", _INTERPRETED, x.dtype)


def relu2_mlp(x: Tensor, w_fc: Tensor, w_proj: Tensor) -> Tensor:
    """proj(relu(fc(x))²) with ReLU² in the fc matmul's epilogues (the module docstring's math).

    Args:
        x: (..., d) float32, float16 or bfloat16, any leading shape.
        w_fc: (f, d), x's dtype and device (nn.Linear(d, f).weight).
        w_proj: (d, f), x's dtype and device (nn.Linear(f, d).weight).

    Returns:
        (..., d) in x's dtype (fp32 accumulation); differentiable in x, w_fc and w_proj, traceable by
        torch.compile. Saves x, pre and post (M x f each) for the backward.
    """
    _check_inputs(x, w_fc, w_proj)
    y, _, _ = _relu2_mlp_op(x.reshape(x.shape[:-1].numel(), x.shape[-1]), w_fc, w_proj)  # (M, d), d = 0 too
    return y.view(*x.shape[:-1], w_proj.shape[0])
