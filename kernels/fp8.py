"""FP8 matmul for the output head: y = x w^T with x and w cast to float8 e4m3, the gradient to float8 e5m2.

After modded-nanogpt's FP8 lm_head (@YouJiacheng), with the scales of its 2025-01-26 BatchSize record
(x_s = 2, w_s = 2^9, grad_s = 2^19). With q4, q5 the casts to e4m3 / e5m2 (round to nearest even):

    forward   X8 = q4(x_s X),  W8 = q4(w_s W)              X (M, K), W (N, K)
              Y  = (X8 W8^T) / (x_s w_s)                     (M, N) bf16, accumulated in fp32
    backward  G8 = q5(grad_s dY)                             dY (M, N)
              dX = (G8 W8) / (grad_s w_s)                    (M, K) bf16
              dW = (G8^T X8) / (grad_s x_s)                  (N, K) fp32

The scales are fixed powers of two, so scaling and unscaling are exact: the only error is the casts'
rounding, a relative 2^-4 for e4m3 (3 mantissa bits) and 2^-3 for e5m2 (2 bits) on values in the formats'
normal ranges (e4m3: 2^-6 .. 448, e5m2: 2^-14 .. 57344); smaller values keep fewer bits down to 2^-9 and
2^-16, below which they become 0, and larger ones overflow (PyTorch 2.13's CPU cast saturates e4m3fn at 448
and takes e5m2 to inf). The scales put the head's values between those ends: x is RMS-normed, so
|x_s X| <= 2 sqrt(K); |W| < 448 / 2^9 = 0.875 fits; a logit's loss gradient is at most 1 / tokens (2^-15.6 for
48K tokens), so grad_s dY <= 2^3.4, and a probability p's gradient p / tokens keeps e5m2's normal precision
down to p ~ 2^-14 / 2^19 x 2^15.6 ~ 2^-17. The trainer multiplies grad_s by its accumulation steps, whose
mean divides dY by as much, so the casts see the values of the record's 8 GPUs on any number of GPUs.
The forward uses `_scaled_mm`'s fast accumulation, the backward the exact one, as the record.

`torch._scaled_mm` needs FP8 tensor cores on a GPU (CUDA capability >= 8.9: Ada, Hopper and later) and K, N
(on a GPU M too) multiples of 16; recent CPU builds of PyTorch run it too (the tests). `fp8_mm_ref` is the same
math emulated in fp32 (the casts round-tripped through torch's float8 dtypes), for the tests.

Layouts. `_scaled_mm` takes its first operand row-major and its second column-major, so the three matmuls
read X8 (M, K) and W8 (N, K) row-major (the forward: X8 @ W8^T), W8^T (K, N) row-major (dX = G8 @ W8, W8 as
the column-major view of W8^T), and X8^T (K, M) and G8 (M, N) and G8^T (N, M) row-major (dW^T = X8^T @ G8, G8
as the column-major view of G8^T). Each tensor is cast once into every layout it is needed in: the forward
writes X8 and X8^T from one read of x, W8 and W8^T from one read of w, and keeps X8^T and W8^T for the
backward; the backward writes G8 and G8^T from one read of dY.

The casts (`cast_fp8`, on CUDA; `cast_fp8_ref` is the same in torch and what runs elsewhere): one Triton
kernel reads a (BLOCK_R, BLOCK_C) tile of t (bf16 or fp32) once, forms t * scale rounded to t's dtype (what
`t.mul(scale)` stores), casts it and writes the fp8 bits row-major and, when asked, transposed. Bytes per
element: 2 (bf16) or 4 (fp32) read, 1 written per layout; against 2 + 2 (the product) + 2 + 1 (the cast) and
1 + 1 per transposed copy eagerly: dY's 9 B a logit become 4. Its values are torch's: round to nearest even
(the hardware's `cvt.rn`), e4m3fn's finite overflow and inf saturated at +-448 (PyTorch 2.13's c10 cast;
clamped before the cast), e5m2's |y| >= 61440 to +-inf (the hardware cast saturates at 57344, so those bits
are written explicitly), NaN as 0x7f with y's sign. 64 x 64 tiles (8 KiB of bf16 in, 2 x 4 KiB out, 4
warps; not tuned on a GPU). Offsets are int64: the logits' gradient has 49152 x 50304 = 2.5G elements.
Triton's interpreter rounds fp8 casts its own way (not to nearest even, its overflow unsaturated), so on
the CPU the kernel is checked on values an fp8 format holds exactly, overflow, inf and NaN (tests/test_fp8.py).
"""
from __future__ import annotations

import numbers
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels import check_launchable, check_tensors, interpreted

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


@triton.jit
def fp8_bits(y, E5M2: tl.constexpr):
    """The fp8 bits (uint8) of fp32 y cast as torch casts (the module docstring's rules): e5m2 when E5M2, else
    e4m3fn. Every kernel that writes fp8 casts through this one."""
    a = tl.abs(y)
    sign = tl.where(y.to(tl.int32, bitcast=True) < 0, 0x80, 0)
    if E5M2:
        bits = y.to(tl.float8e5).to(tl.uint8, bitcast=True).to(tl.int32)
        bits = tl.where(a >= 61440.0, sign | 0x7C, bits)  # rounds past 57344: inf, as torch's cast
    else:
        y = tl.where(a > 448.0, tl.where(sign != 0, -448.0, 448.0), y)  # e4m3fn has no inf: saturate, as torch
        bits = y.to(tl.float8e4nv).to(tl.uint8, bitcast=True).to(tl.int32)
    return tl.where(y != y, sign | 0x7F, bits).to(tl.uint8)  # NaN


@triton.jit
def _cast_fp8_kernel(
    t_ptr,   # (R, C) bf16 or fp32, row-major
    q_ptr,   # (R, C) uint8: the fp8 bits of q(scale t), row-major
    qt_ptr,  # (C, R) uint8: the same bits transposed, row-major (written when TRANSPOSE)
    R, C, scale,
    E5M2: tl.constexpr, TRANSPOSE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (rows[:, None] < R) & (cols[None, :] < C)
    t = tl.load(t_ptr + rows[:, None] * C + cols[None, :], mask=mask, other=0.0)
    y = (t.to(tl.float32) * scale).to(t.dtype).to(tl.float32)  # t.mul(scale): the product rounded to t's dtype
    bits = fp8_bits(y, E5M2)
    tl.store(q_ptr + rows[:, None] * C + cols[None, :], bits, mask=mask)
    if TRANSPOSE:
        tl.store(qt_ptr + cols[:, None] * R + rows[None, :], tl.trans(bits), mask=tl.trans(mask))


CAST_BLOCK = 64, 64  # (BLOCK_R, BLOCK_C)
_INTERPRETED = interpreted(_cast_fp8_kernel)  # made for Triton's interpreter (TRITON_INTERPRET=1 at import)


def cast_fp8(t: Tensor, scale: float, dtype: torch.dtype, transpose: bool = False) -> tuple[Tensor, Optional[Tensor]]:
    """q(scale t) in one pass, as `cast_fp8_ref` (the module docstring's casts).

    Args: t (R, C) bf16, fp16 or fp32, contiguous; scale a float; dtype E4M3 or E5M2; transpose: also write the
    transpose.
    Returns: (q (R, C) in dtype, q^T (C, R) in dtype, contiguous, or None without transpose).
    """
    check_tensors("cast_fp8", t=t)
    if t.ndim != 2 or not t.is_contiguous() or t.dtype not in (torch.bfloat16, torch.float16, torch.float32) \
            or dtype not in (E4M3, E5M2) or not isinstance(scale, numbers.Real):  # a kernel argument: no tensor
        raise ValueError(f"cast_fp8: expected a contiguous 2-D bf16/fp16/fp32 tensor, a number scale and E4M3/E5M2, "
                         f"got {tuple(t.shape)} {t.dtype} (contiguous: {t.is_contiguous()}) by {type(scale).__name__} "
                         f"to {dtype}")
    check_launchable("cast_fp8", _INTERPRETED, t)
    R, C = t.shape
    q = torch.empty(R, C, dtype=torch.uint8, device=t.device)
    qt = torch.empty(C, R, dtype=torch.uint8, device=t.device) if transpose else q
    block_r, block_c = CAST_BLOCK
    grid = (triton.cdiv(R, block_r), triton.cdiv(C, block_c))
    _cast_fp8_kernel[grid](t, q, qt, R, C, float(scale), E5M2=dtype == E5M2, TRANSPOSE=transpose,
                           BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4)
    return q.view(dtype), qt.view(dtype) if transpose else None


def cast_fp8_ref(t: Tensor, scale: float, dtype: torch.dtype,
                 transpose: bool = False) -> tuple[Tensor, Optional[Tensor]]:
    """`cast_fp8` in torch: the product in t's dtype, then the cast (two kernels), then a transposed copy."""
    q = t.mul(scale).to(dtype)
    # contiguous_format, not .contiguous(): a transpose with a size-1 (or 0) dim counts as contiguous and would
    # keep strides other than the fakes' (and the kernel's) row-major ones
    return q, q.t().clone(memory_format=torch.contiguous_format) if transpose else None


def _use_kernel(t: Tensor) -> bool:
    """The casts run as the Triton kernel on CUDA; elsewhere (the CPU) as torch's casts."""
    return t.is_cuda


def _cast(t: Tensor, scale: float, dtype: torch.dtype, transpose: bool) -> tuple[Tensor, Optional[Tensor]]:
    return (cast_fp8 if _use_kernel(t) else cast_fp8_ref)(t, scale, dtype, transpose)


def _inverse(scale: float, device: torch.device) -> Tensor:
    """1 / scale as _scaled_mm takes it: an fp32 scalar tensor on the operands' device, filled there (torch.tensor
    would copy it from the host, and a pageable copy waits for the GPU: a host sync in every call)."""
    return torch.full((), 1 / scale, dtype=torch.float32, device=device)


def forward(x: Tensor, w: Tensor, x_s: float, w_s: float) -> tuple[Tensor, Tensor, Tensor]:
    """The forward's body: x (M, K), w (N, K) contiguous -> (Y = x w^T (M, N) bf16, X8^T (K, M), W8^T (K, N)), the
    transposed FP8 copies being the backward's operands. Shared by the ops that end in the head's matmul."""
    x8, x8t = _cast(x, x_s, E4M3, transpose=True)
    w8, w8t = _cast(w, w_s, E4M3, transpose=True)
    out = torch._scaled_mm(x8, w8.t(), out_dtype=torch.bfloat16, scale_a=_inverse(x_s, x.device),
                           scale_b=_inverse(w_s, x.device), use_fast_accum=True)
    return out, x8t, w8t


def backward(g8: Tensor, g8t: Tensor, x8t: Tensor, w8t: Tensor, x_s: float, w_s: float,
             grad_s: float) -> tuple[Tensor, Tensor]:
    """The backward's matmuls: G8 (M, N), G8^T (N, M) e5m2, X8^T (K, M), W8^T (K, N) e4m3 -> (dX (M, K) bf16,
    dW (N, K) fp32 with transposed strides (1, N))."""
    # _scaled_mm takes its first operand row-major and its second column-major (the .t() views)
    dx = torch._scaled_mm(g8, w8t.t(), out_dtype=torch.bfloat16, scale_a=_inverse(grad_s, g8.device),
                          scale_b=_inverse(w_s, g8.device), use_fast_accum=False)
    dw = torch._scaled_mm(x8t, g8t.t(), out_dtype=torch.float32, scale_a=_inverse(x_s, g8.device),
                          scale_b=_inverse(grad_s, g8.device), use_fast_accum=False).t()
    return dx, dw


@torch.library.custom_op("speedrun::fp8_mm", mutates_args=())
def _fp8_mm_op(x: Tensor, w: Tensor, x_s: float, w_s: float, grad_s: float) -> tuple[Tensor, Tensor, Tensor]:
    """x (M, K), w (N, K) -> (x w^T (M, N) bf16, X8^T (K, M), W8^T (K, N)); the transposed FP8 copies are the
    backward's operands."""
    return forward(x, w, x_s, w_s)


@_fp8_mm_op.register_fake
def _(x, w, x_s, w_s, grad_s):
    return (x.new_empty(x.size(0), w.size(0), dtype=torch.bfloat16), x.new_empty(x.shape[::-1], dtype=E4M3),
            w.new_empty(w.shape[::-1], dtype=E4M3))


@torch.library.custom_op("speedrun::fp8_mm_backward", mutates_args=())
def _fp8_mm_backward_op(g: Tensor, x8t: Tensor, w8t: Tensor, x_s: float, w_s: float,
                        grad_s: float) -> tuple[Tensor, Tensor]:
    """dY (M, N), X8^T (K, M), W8^T (K, N) -> (dX (M, K) bf16, dW (N, K) fp32)."""
    g8, g8t = _cast(g, grad_s, E5M2, transpose=True)
    return backward(g8, g8t, x8t, w8t, x_s, w_s, grad_s)


@_fp8_mm_backward_op.register_fake
def _(g, x8t, w8t, x_s, w_s, grad_s):
    # dW comes out of _scaled_mm as (K, N) row-major, transposed: strides (1, N), which Inductor checks
    return x8t.new_empty(x8t.shape[::-1], dtype=torch.bfloat16), w8t.new_empty(w8t.shape, dtype=torch.float32).t()


def _setup_context(ctx, inputs, output):
    *_, x_s, w_s, grad_s = inputs
    ctx.save_for_backward(output[1], output[2])
    ctx.scales = x_s, w_s, grad_s
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_out, *_):
    dx, dw = _fp8_mm_backward_op(grad_out.contiguous(), *ctx.saved_tensors, *ctx.scales)
    return dx, dw, None, None, None


_fp8_mm_op.register_autograd(_backward, setup_context=_setup_context)


def check_scales(op: str, **scales: float) -> None:
    """A one-line ValueError naming the first scale that is not a positive number whose inverse, like itself, is
    a normal fp32 number: _scaled_mm takes 1 / scale as an fp32 tensor, the cast kernel the scale as an fp32."""
    fp32 = torch.finfo(torch.float32)
    for name, s in scales.items():
        if not (isinstance(s, numbers.Real) and fp32.tiny <= s <= fp32.max and fp32.tiny <= 1 / s <= fp32.max):
            raise ValueError(f"{op}: {name} = {s}: expected a positive number between 2^-126 and 2^127 (its "
                             "inverse in fp32 too)")


def check_inputs(x: Tensor, w: Tensor) -> None:
    check_tensors("fp8_mm", x=x, w=w)
    if x.ndim != 2 or w.ndim != 2 or x.size(1) != w.size(1):
        raise ValueError(f"fp8_mm: expected x (M, K) and w (N, K), got {tuple(x.shape)} and {tuple(w.shape)}")
    if {x.dtype, w.dtype} - {torch.bfloat16, torch.float16, torch.float32}:  # what the casts take
        raise ValueError(f"fp8_mm: expected bf16, fp16 or fp32 x and w, got {x.dtype} and {w.dtype}")
    if x.device != w.device:
        raise ValueError(f"fp8_mm: x and w must be on one device, got {x.device} and {w.device}")
    if x.size(1) % 16 or w.size(0) % 16 or x.is_cuda and x.size(0) % 16:  # CUDA's dW matmul takes X8^T (K, M)
        raise ValueError(f"fp8_mm: K = {x.size(1)}, N = {w.size(0)} (and M = {x.size(0)} on a GPU) must be "
                         "multiples of 16 (torch._scaled_mm)")


def fp8_mm(x: Tensor, w: Tensor, x_s: float = 2.0, w_s: float = 2.0**9, grad_s: float = 2.0**19) -> Tensor:
    """x w^T through FP8 (the module docstring's math): x (M, K) bf16, fp16 or fp32, w (N, K) -> (M, N) bf16.
    Differentiable in x (bf16 gradient) and w (fp32 gradient); traces under torch.compile. The scales are positive
    (powers of two keep scaling exact), each and its inverse within fp32's normal range; else a ValueError."""
    check_inputs(x, w)
    check_scales("fp8_mm", x_s=x_s, w_s=w_s, grad_s=grad_s)
    return _fp8_mm_op(x.contiguous(), w.contiguous(), float(x_s), float(w_s), float(grad_s))[0]  # numpy too


def quantize(t: Tensor, scale: float, dtype: torch.dtype) -> Tensor:
    """t as the FP8 matmul sees it, in fp32: q(scale t) / scale."""
    return t.float().mul(scale).to(dtype).float() / scale


class _Fp8MatmulRef(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, x_s, w_s, grad_s):
        qx, qw = quantize(x, x_s, E4M3), quantize(w, w_s, E4M3)
        ctx.save_for_backward(qx, qw)
        ctx.grad_s = grad_s
        return qx @ qw.t()

    @staticmethod
    def backward(ctx, g):
        qx, qw = ctx.saved_tensors
        qg = quantize(g, ctx.grad_s, E5M2)
        return qg @ qw, qg.t() @ qx, None, None, None


def fp8_mm_ref(x: Tensor, w: Tensor, x_s: float = 2.0, w_s: float = 2.0**9, grad_s: float = 2.0**19) -> Tensor:
    """`fp8_mm` emulated in fp32: the same casts, exact fp32 matmuls, fp32 output and gradients."""
    return _Fp8MatmulRef.apply(x, w, x_s, w_s, grad_s)
