"""The FP8 head's soft-capped cross-entropy, its gradient written in FP8 by the loss itself, beside its reference.

For x (N, d) (the final norm's output), the head's weight w (V, d) and targets (N,) in [0, V), with the FP8
matmul of kernels/fp8.py (its scales x_s, w_s, grad_s and casts q4, q5) and the soft-cap c (0: none):

    forward   l   = (q4(x_s x) q4(w_s w)^T) / (x_s w_s)         (N, V) bf16 logits (fp8.forward)
              t   = tanh(l / c),  z = c t                         soft-cap (Gemma 2), fp32; z = l when c = 0
              lse_i = log sum_j exp(z_ij)                         online over V in chunks (Milakov & Gimelshein)
              loss  = mean_i (lse_i - z_i,target_i)
    backward  dz  = (softmax(z) - onehot(target)) dloss / N       the mean's and the softmax's vector-Jacobian
              dl  = dz (1 - t^2)                                  tanh' (1 when c = 0)
              G8  = q5(grad_s dl)  and  G8^T                      written by the same kernel, no bf16 dl
              dx, dw = fp8.backward(G8, G8^T, X8^T, W8^T)         (N, d) bf16, (V, d) fp32

Two Triton kernels:
- `_loss_forward_kernel`, one program a row: reads the row's bf16 logits once, BLOCK_V at a time, keeps the
  running max m and sum s of exp(z - m) (rescaled by exp(m_old - m_new) when the max grows), and the target's
  z from one gather; writes lse_i and the row's loss (fp32). The mean over rows is torch's (N values).
- `_loss_backward_kernel`, one program a (BLOCK_R, BLOCK_V) tile: reads the tile's logits, the rows' lse and
  targets and dloss (a device scalar: no host sync), forms grad_s dl in fp32 and, on CUDA (WRITE_FP8), casts
  it with kernels.fp8's `fp8_bits` and writes G8 and G8^T as kernels.fp8.cast_fp8 does. Without WRITE_FP8 (the
  interpreter, which cannot cast to fp8 as the hardware does: kernels/fp8.py) it writes grad_s dl in fp32 and
  torch's cast makes G8 and G8^T: the math is the same kernel's, only the cast differs. The cast here rounds
  the fp32 product once; the unfused path rounds dl to bf16 first, then grad_s dl to e5m2 (the two differ
  only where the bf16 rounding moves a value across an e5m2 rounding boundary).
tanh(u) = sign(u) (1 - e) / (1 + e) with e = exp(-2|u|) in (0, 1]: no overflow, |error| ~ 1e-7 absolute, so
z = c t is off by up to ~c 2^-24: the caps taken are 2^-126 <= c <= MAX_SOFTCAP = 2^12 (an error below 2^-12, under
the bf16 logits' own rounding). Larger caps cap no logit a model reaches and lose the small ones (c = 1e9 makes
every z 0); below 2^-126, 1 / c overflows fp32.

Saved for the backward: the bf16 logits (what Inductor saves for the unfused loss), lse (N fp32) and kernels.fp8's
X8^T and W8^T. Targets must lie in [0, V): checked on the CPU, eagerly (a one-line ValueError). On CUDA a check would
be a host sync and under torch.compile a data-dependent guard, so there an out-of-range target reads no memory (its
gather is masked) and makes its row's loss and gradient NaN: the mean loss is NaN, which the trainer reports as a
divergence. F.cross_entropy's ignore_index (-100) is not supported (the trainer never uses it): -100 is out of range
like any negative target, refused on the CPU, NaN on CUDA, never silently dropped from the mean as the reference
drops it.

Bytes, per logit (N V = 49152 x 50304 = 2.47G at fineweb-124m's micro-step), against the unfused composition
(Inductor's soft-cap + cross-entropy on bf16 logits, then kernels.fp8.cast_fp8 on the bf16 gradient):
    unfused   forward read 2; backward read 2 + bf16 dl written 2; the cast reads dl 2, writes G8, G8^T 1 + 1:  10 B
    fused     forward read 2; backward read 2, writes G8, G8^T 1 + 1:                                              6 B
plus N x (8 + 4 + 4) B (targets, lse, the row loss) and N x 4 (their mean) forward, N x (8 + 4) backward. The 4 B
a logit saved are 9.9 GB, ~3.4 ms at 2.9 TB/s (an estimate at the roofline's copy rate; benchmarks/bench_fp8.py
measures it). Arithmetic, per logit and pass: 2 exponentials and 1 division (the tanh; the softmax's exponential)
and ~12 other fp32 operations. At the SFU's 16 operations a clock per SM (132 SMs x ~1.8 GHz = ~3.8 T/s on an H100
SXM, an estimate from the published count, not measured) the 3 special-function operations of the 2.47G logits
take ~2.0 ms a pass, against the forward's 4.9 GB in 1.7 ms at 2.9 TB/s: the forward may be bound by the SFU
rather than memory; the backward (9.9 GB, 3.4 ms) is memory-bound.

Block sizes: on CUDA a forward chunk of 4096 logits (8 KiB of bf16, 8 warps) and 64 x 64 backward tiles (8 KiB in,
2 x 4 KiB out, 4 warps, as kernels.fp8's CAST_BLOCK); under the interpreter chunks of 256 (so tests' V = 1000 takes
four, the last partial). Spill-free on sm_90 under Triton 3.9 and 3.6 (`python -m benchmarks.ptxas_report
head_loss`); not measured on a GPU. Offsets are int64 (N V > 2^31).
"""
from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from kernels import check_launchable, check_tensors, fp8, interpreted
from kernels.fp8 import E4M3, E5M2, fp8_bits


@triton.jit
def _softcap(logit, inv_cap, cap, HAS_CAP: tl.constexpr):
    """(z, t): z = cap tanh(logit / cap), t = tanh(logit / cap) in fp32 (the division as a product by 1 / cap: one
    rounding more than torch's division, within the tests' 1e-5); z = logit and t = 0 without the cap."""
    if HAS_CAP:
        u = logit * inv_cap
        e = tl.exp(-2.0 * tl.abs(u))  # in (0, 1]
        t = (1.0 - e) / (1.0 + e)
        t = tl.where(u < 0, -t, t)
        return cap * t, t
    else:
        return logit, tl.zeros_like(logit)


@triton.jit
def _loss_forward_kernel(
    logits_ptr,  # (N, V) bf16, row-major
    targets_ptr,  # (N,) int64 or int32
    lse_ptr,  # (N,) fp32 out: log-sum-exp of the row's soft-capped logits
    loss_ptr,  # (N,) fp32 out: lse - the target's soft-capped logit
    V, cap, inv_cap,
    HAS_CAP: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * V
    m = -float("inf")
    s = 0.0
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        logit = tl.load(base + cols, mask=cols < V, other=0.0).to(tl.float32)
        z, _ = _softcap(logit, inv_cap, cap, HAS_CAP)
        z = tl.where(cols < V, z, -float("inf"))
        m_new = tl.maximum(m, tl.max(z, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    target = tl.load(targets_ptr + row).to(tl.int64)
    valid = (target >= 0) & (target < V)  # else no read (no bounds check on CUDA) and a NaN loss
    l_t = tl.load(base + target, mask=valid, other=0.0).to(tl.float32)
    z_t, _ = _softcap(l_t, inv_cap, cap, HAS_CAP)
    tl.store(lse_ptr + row, lse)
    tl.store(loss_ptr + row, tl.where(valid, lse - z_t, float("nan")))


@triton.jit
def _loss_backward_kernel(
    logits_ptr,  # (N, V) bf16, row-major
    lse_ptr,  # (N,) fp32
    targets_ptr,  # (N,) int64 or int32
    dloss_ptr,  # () fp32: the mean loss's gradient
    g_ptr,  # (N, V): uint8 e5m2 bits of q5(grad_s dl) with WRITE_FP8, else fp32 grad_s dl; row-major
    gt_ptr,  # (V, N) uint8: the bits transposed, row-major (WRITE_FP8 only)
    N, V, cap, inv_cap, coef,  # coef = grad_s / N
    HAS_CAP: tl.constexpr, WRITE_FP8: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)
    mask = (rows[:, None] < N) & (cols[None, :] < V)
    logit = tl.load(logits_ptr + rows[:, None] * V + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    lse = tl.load(lse_ptr + rows, mask=rows < N, other=0.0)
    target = tl.load(targets_ptr + rows, mask=rows < N, other=-1).to(tl.int64)
    z, t = _softcap(logit, inv_cap, cap, HAS_CAP)
    p = tl.exp(z - lse[:, None])  # softmax(z)
    dz = tl.where(cols[None, :] == target[:, None], p - 1.0, p)
    if HAS_CAP:
        dz = dz * (1.0 - t * t)
    d = dz * (tl.load(dloss_ptr).to(tl.float32) * coef)  # grad_s dl
    d = tl.where(((target >= 0) & (target < V))[:, None], d, float("nan"))  # a target outside [0, V): NaN, as its loss
    if WRITE_FP8:
        bits = fp8_bits(d, True)
        tl.store(g_ptr + rows[:, None] * V + cols[None, :], bits, mask=mask)
        tl.store(gt_ptr + cols[:, None] * N + rows[None, :], tl.trans(bits), mask=tl.trans(mask))
    else:
        tl.store(g_ptr + rows[:, None] * V + cols[None, :], d, mask=mask)


CUDA_FORWARD = 4096, 8  # (BLOCK_V, warps)
INTERPRETER_FORWARD = 256, 4
MAX_SOFTCAP = 2.0**12  # the largest cap whose z = c tanh(l / c) the kernels keep within 2^-12 (module docstring)
BACKWARD_TILE = 64, 64  # (BLOCK_R, BLOCK_V), 4 warps


_INTERPRETED = interpreted(_loss_forward_kernel)  # made for Triton's interpreter (TRITON_INTERPRET=1 at import)


def _caps(softcap: float) -> tuple[float, float]:
    return (softcap, 1.0 / softcap) if softcap else (1.0, 1.0)


def loss_rows(logits: Tensor, targets: Tensor, softcap: float) -> tuple[Tensor, Tensor]:
    """logits (N, V) bf16 contiguous, targets (N,) -> (lse (N,), per-row loss (N,)), fp32, in one read of the logits."""
    N, V = logits.shape
    lse, loss = (torch.empty(N, dtype=torch.float32, device=logits.device) for _ in range(2))
    block_v, warps = INTERPRETER_FORWARD if _INTERPRETED or not logits.is_cuda else CUDA_FORWARD
    cap, inv_cap = _caps(softcap)
    _loss_forward_kernel[(N,)](logits, targets, lse, loss, V, cap, inv_cap, HAS_CAP=bool(softcap), BLOCK_V=block_v,
                               num_warps=warps)
    return lse, loss


def loss_grad(logits: Tensor, lse: Tensor, targets: Tensor, dloss: Tensor, softcap: float, grad_s: float,
              write_fp8: bool) -> tuple[Tensor, Tensor | None]:
    """grad_s x the logits' gradient of the mean loss, from one read of the logits.

    Args: logits (N, V) bf16, lse (N,) fp32 (`loss_rows`'), targets (N,), dloss () the mean loss's gradient.
    Returns: write_fp8: (G8 (N, V), G8^T (V, N)) e5m2, contiguous; else (grad_s dl (N, V) fp32, None)."""
    N, V = logits.shape
    if write_fp8:
        g, gt = (torch.empty(shape, dtype=torch.uint8, device=logits.device) for shape in ((N, V), (V, N)))
    else:
        g, gt = torch.empty(N, V, dtype=torch.float32, device=logits.device), None
    block_r, block_v = BACKWARD_TILE
    cap, inv_cap = _caps(softcap)
    if N and V:  # else nothing to write (and no 1 / N)
        grid = (triton.cdiv(N, block_r), triton.cdiv(V, block_v))
        _loss_backward_kernel[grid](logits, lse, targets, dloss.float().contiguous(), g, g if gt is None else gt, N,
                                    V, cap, inv_cap, grad_s / N, HAS_CAP=bool(softcap), WRITE_FP8=write_fp8,
                                    BLOCK_R=block_r, BLOCK_V=block_v, num_warps=4)
    return (g.view(E5M2), gt.view(E5M2)) if write_fp8 else (g, None)


def loss_grad_fp8(logits: Tensor, lse: Tensor, targets: Tensor, dloss: Tensor, softcap: float,
                  grad_s: float) -> tuple[Tensor, Tensor]:
    """(G8 (N, V), G8^T (V, N)) e5m2 = q5(grad_s dl): on CUDA written by the loss kernel; elsewhere torch's cast of
    its fp32 output (the product by 1 is exact)."""
    if fp8._use_kernel(logits):
        return loss_grad(logits, lse, targets, dloss, softcap, grad_s, write_fp8=True)
    return fp8.cast_fp8_ref(loss_grad(logits, lse, targets, dloss, softcap, grad_s, False)[0], 1.0, E5M2,
                            transpose=True)


@torch.library.custom_op("speedrun::fp8_head_loss", mutates_args=())
def _fp8_head_loss_op(x: Tensor, w: Tensor, targets: Tensor, softcap: float, x_s: float, w_s: float,
                      grad_s: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (mean loss () fp32, logits (N, V) bf16, lse (N,) fp32, X8^T (d, N), W8^T (d, V)); all but the loss are
    the backward's operands."""
    logits, x8t, w8t = fp8.forward(x, w, x_s, w_s)
    lse, loss = loss_rows(logits, targets, softcap)
    return loss.mean(), logits, lse, x8t, w8t


@_fp8_head_loss_op.register_fake
def _(x, w, targets, softcap, x_s, w_s, grad_s):
    N, V = x.size(0), w.size(0)
    return (x.new_empty((), dtype=torch.float32), x.new_empty(N, V, dtype=torch.bfloat16),
            x.new_empty(N, dtype=torch.float32), x.new_empty(x.shape[::-1], dtype=E4M3),
            w.new_empty(w.shape[::-1], dtype=E4M3))


@torch.library.custom_op("speedrun::fp8_head_loss_backward", mutates_args=())
def _fp8_head_loss_backward_op(dloss: Tensor, logits: Tensor, lse: Tensor, targets: Tensor, x8t: Tensor, w8t: Tensor,
                               softcap: float, x_s: float, w_s: float, grad_s: float) -> tuple[Tensor, Tensor]:
    """-> (dX (N, d) bf16, dW (V, d) fp32 with transposed strides), as kernels.fp8's backward."""
    g8, g8t = loss_grad_fp8(logits, lse, targets, dloss, softcap, grad_s)
    return fp8.backward(g8, g8t, x8t, w8t, x_s, w_s, grad_s)


@_fp8_head_loss_backward_op.register_fake
def _(dloss, logits, lse, targets, x8t, w8t, softcap, x_s, w_s, grad_s):
    return x8t.new_empty(x8t.shape[::-1], dtype=torch.bfloat16), w8t.new_empty(w8t.shape, dtype=torch.float32).t()


def _setup_context(ctx, inputs, output):
    _, _, targets, softcap, x_s, w_s, grad_s = inputs
    ctx.save_for_backward(output[1], output[2], targets, output[3], output[4])
    ctx.args = softcap, x_s, w_s, grad_s
    ctx.set_materialize_grads(False)


def _backward(ctx, dloss, *_):
    dx, dw = _fp8_head_loss_backward_op(dloss, *ctx.saved_tensors, *ctx.args)
    return dx, dw, None, None, None, None, None


_fp8_head_loss_op.register_autograd(_backward, setup_context=_setup_context)


def check_inputs(x: Tensor, w: Tensor, targets: Tensor, softcap: float, **scales: float) -> None:
    check_tensors("fp8_head_loss", x=x, w=w, targets=targets)
    fp8.check_inputs(x, w)
    fp8.check_scales("fp8_head_loss", **scales)
    if targets.device != x.device:
        raise ValueError(f"fp8_head_loss: targets must be on x's device {x.device}, got {targets.device}")
    check_launchable("fp8_head_loss", _INTERPRETED, x)
    if targets.shape != x.shape[:1] or targets.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"fp8_head_loss: expected targets ({x.size(0)},) int32/int64 for x {tuple(x.shape)}, got "
                         f"{tuple(targets.shape)} {targets.dtype}")
    number = isinstance(softcap, numbers.Real)  # the op takes a float: a tensor would get no gradient
    if not (number and (softcap == 0 or torch.finfo(torch.float32).tiny <= softcap <= MAX_SOFTCAP)):  # docstring
        raise ValueError(f"fp8_head_loss: softcap = {softcap!r}: expected 0 (no cap) or a number in [2^-126, "
                         f"{MAX_SOFTCAP:g}]")
    if targets.device.type != "cpu" or torch.compiler.is_compiling():  # the range check reads the values: on a
        return  # GPU a host sync; out-of-range targets give a NaN loss there (the module docstring)
    if targets.numel() and not 0 <= int(targets.min()) <= int(targets.max()) < w.size(0):
        raise ValueError(f"fp8_head_loss: targets must lie in [0, {w.size(0)}), got {int(targets.min())} .. "
                         f"{int(targets.max())} (no ignore_index: every row counts)")


def fp8_head_loss(x: Tensor, w: Tensor, targets: Tensor, softcap: float = 15.0, x_s: float = 2.0,
                  w_s: float = 2.0**9, grad_s: float = 2.0**19) -> Tensor:
    """The mean soft-capped cross-entropy of the logits x w^T through FP8 (the module docstring's math).

    Args: x (N, d) bf16/fp32, w (V, d), targets (N,) int32/int64 in [0, V) on x's device (no ignore_index: a
    target outside [0, V) is a ValueError on the CPU, a NaN loss on a GPU); d, V (and N on a GPU) multiples of 16;
    softcap c = 0 (no cap) or in [2^-126, MAX_SOFTCAP]; the FP8 scales of kernels.fp8 (kernels.fp8.check_scales).
    Returns: the mean loss, an fp32 scalar, differentiable in x (bf16 gradient) and w (fp32); traces under
    torch.compile."""
    check_inputs(x, w, targets, softcap, x_s=x_s, w_s=w_s, grad_s=grad_s)
    return _fp8_head_loss_op(x.contiguous(), w.contiguous(), targets.contiguous(), float(softcap), float(x_s),
                             float(w_s), float(grad_s))[0]


def softcap_cross_entropy(logits: Tensor, targets: Tensor, softcap: float) -> Tensor:
    """The mean cross-entropy of c tanh(logits / c) (c = 0: of the logits), in fp32 (or the logits' wider dtype)."""
    logits = logits.float() if logits.dtype in (torch.bfloat16, torch.float16) else logits
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    return F.cross_entropy(logits, targets)


def fp8_head_loss_ref(x: Tensor, w: Tensor, targets: Tensor, softcap: float = 15.0, x_s: float = 2.0,
                      w_s: float = 2.0**9, grad_s: float = 2.0**19, matmul=fp8.fp8_mm) -> Tensor:
    """The composition the op fuses: `matmul` (kernels.fp8.fp8_mm; fp8_mm_ref for its fp32 emulation), then
    `softcap_cross_entropy`. Autograd's gradient goes through the matmul's own cast of dl."""
    return softcap_cross_entropy(matmul(x, w, x_s, w_s, grad_s), targets, softcap)
