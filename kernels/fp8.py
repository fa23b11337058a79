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
"""
from __future__ import annotations

import torch
from torch import Tensor

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


def _inverse(scale: float, device: torch.device) -> Tensor:
    """1 / scale as _scaled_mm takes it: an fp32 scalar tensor on the operands' device, filled there (torch.tensor
    would copy it from the host, and a pageable copy waits for the GPU: a host sync in every call)."""
    return torch.full((), 1 / scale, dtype=torch.float32, device=device)


@torch.library.custom_op("speedrun::fp8_mm", mutates_args=())
def _fp8_mm_op(x: Tensor, w: Tensor, x_s: float, w_s: float, grad_s: float) -> tuple[Tensor, Tensor, Tensor]:
    """x (M, K), w (N, K) -> (x w^T (M, N) bf16, X8 (M, K), W8 (N, K)); the FP8 copies are kept for the backward."""
    x8, w8 = x.mul(x_s).to(E4M3), w.mul(w_s).to(E4M3)
    out = torch._scaled_mm(x8, w8.t(), out_dtype=torch.bfloat16, scale_a=_inverse(x_s, x.device),
                           scale_b=_inverse(w_s, x.device), use_fast_accum=True)
    return out, x8, w8


@_fp8_mm_op.register_fake
def _(x, w, x_s, w_s, grad_s):
    return x.new_empty(x.size(0), w.size(0), dtype=torch.bfloat16), x.to(E4M3), w.to(E4M3)


@torch.library.custom_op("speedrun::fp8_mm_backward", mutates_args=())
def _fp8_mm_backward_op(g: Tensor, x8: Tensor, w8: Tensor, x_s: float, w_s: float,
                        grad_s: float) -> tuple[Tensor, Tensor]:
    """dY (M, N), X8 (M, K), W8 (N, K) -> (dX (M, K) bf16, dW (N, K) fp32)."""
    g8 = g.mul(grad_s).to(E5M2)
    # _scaled_mm takes its first operand row-major and its second column-major
    dx = torch._scaled_mm(g8, w8.t().contiguous().t(), out_dtype=torch.bfloat16, scale_a=_inverse(grad_s, g.device),
                          scale_b=_inverse(w_s, g.device), use_fast_accum=False)
    dw = torch._scaled_mm(x8.t().contiguous(), g8.t().contiguous().t(), out_dtype=torch.float32,
                          scale_a=_inverse(x_s, g.device), scale_b=_inverse(grad_s, g.device), use_fast_accum=False).t()
    return dx, dw


@_fp8_mm_backward_op.register_fake
def _(g, x8, w8, x_s, w_s, grad_s):
    # dW comes out of _scaled_mm as (K, N) row-major, transposed: strides (1, N), which Inductor checks
    return x8.new_empty(x8.shape, dtype=torch.bfloat16), w8.new_empty(w8.shape[::-1], dtype=torch.float32).t()


def _setup_context(ctx, inputs, output):
    *_, x_s, w_s, grad_s = inputs
    ctx.save_for_backward(output[1], output[2])
    ctx.scales = x_s, w_s, grad_s
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_out, *_):
    dx, dw = _fp8_mm_backward_op(grad_out.contiguous(), *ctx.saved_tensors, *ctx.scales)
    return dx, dw, None, None, None


_fp8_mm_op.register_autograd(_backward, setup_context=_setup_context)


def check_inputs(x: Tensor, w: Tensor) -> None:
    if x.ndim != 2 or w.ndim != 2 or x.size(1) != w.size(1):
        raise ValueError(f"fp8_mm: expected x (M, K) and w (N, K), got {tuple(x.shape)} and {tuple(w.shape)}")
    if x.size(1) % 16 or w.size(0) % 16 or x.is_cuda and x.size(0) % 16:  # CUDA's dW matmul takes X8^T (K, M)
        raise ValueError(f"fp8_mm: K = {x.size(1)}, N = {w.size(0)} (and M = {x.size(0)} on a GPU) must be "
                         "multiples of 16 (torch._scaled_mm)")


def fp8_mm(x: Tensor, w: Tensor, x_s: float = 2.0, w_s: float = 2.0**9, grad_s: float = 2.0**19) -> Tensor:
    """x w^T through FP8 (the module docstring's math): x (M, K) any float dtype, w (N, K) -> (M, N) bf16.
    Differentiable in x (bf16 gradient) and w (fp32 gradient); traces under torch.compile."""
    check_inputs(x, w)
    return _fp8_mm_op(x.contiguous(), w.contiguous(), x_s, w_s, grad_s)[0]


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
