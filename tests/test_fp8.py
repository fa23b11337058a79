"""kernels/fp8.py: the FP8 head's scaling math against float references, and the op against its emulation.

Two checks, on fresh random inputs at several shapes (rows that fill no tile, a single row) and the
record's scales: (1) `fp8_mm_ref`, the casts emulated through torch's float8 dtypes, is within the
formats' rounding of the plain fp32 matmul and its gradients (e4m3: relative 2^-4 per operand, e5m2: 2^-3);
(2) the op itself (`torch._scaled_mm`, which PyTorch's CPU build runs) equals that emulation: the same
casts, so the only differences are the accumulation order and the bf16 rounding of y and dX.
"""
import pytest
import torch

from kernels.fp8 import E4M3, E5M2, fp8_mm, fp8_mm_ref, quantize
from helpers import assert_close

SHAPES = [(1, 16, 16), (37, 64, 48), (130, 128, 272), (257, 96, 1024)]  # (M, K, N)
SCALES = dict(x_s=2.0, w_s=2.0**9, grad_s=2.0**19)


def _inputs(M, K, N, seed):
    """x RMS-normed as the head sees it, w at the scale of a trained head, dY the size of a mean loss's gradient."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=gen)
    x = (x / x.pow(2).mean(-1, keepdim=True).sqrt()).bfloat16()
    w = 0.05 * torch.randn(N, K, generator=gen)
    dy = (torch.randn(M, N, generator=gen) / (M * 64)).bfloat16()
    return x, w, dy


def _run(fn, x, w, dy):
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = fn(x, w, **SCALES)
    y.backward(dy.to(y.dtype))
    return y.detach().float(), x.grad.float(), w.grad.float()


@pytest.mark.parametrize("dtype,scale,rel", [(E4M3, 2.0**9, 2.0**-4), (E5M2, 2.0**19, 2.0**-3)])
def test_quantize_rounds_within_the_formats_precision_and_the_scale_is_exact(dtype, scale, rel):
    t = torch.randn(4096, generator=torch.Generator().manual_seed(1)) / scale * 8  # scale * t in the normal range
    t = t[(t * scale).abs() > (2.0**-6 if dtype == E4M3 else 2.0**-14)]
    q = quantize(t, scale, dtype)
    assert ((q - t).abs() <= rel * t.abs()).all()
    assert torch.equal(q * scale, (t * scale).to(dtype).float())  # a power-of-two scale adds no rounding


@pytest.mark.parametrize("M,K,N", SHAPES)
def test_the_emulation_is_the_float_matmul_within_fp8_rounding(M, K, N):
    x, w, dy = _inputs(M, K, N, seed=M)
    y, dx, dw = _run(fp8_mm_ref, x, w, dy)
    xf, wf, g = x.float(), w, dy.float()
    # each product carries at most the two operands' relative rounding: |error| <= (1 + r1)(1 + r2) - 1 of |a||b|
    e44, e54 = (1 + 2.0**-4) ** 2 - 1, (1 + 2.0**-3) * (1 + 2.0**-4) - 1
    assert ((y - xf @ wf.t()).abs() <= e44 * (xf.abs() @ wf.abs().t()) + 1e-6).all()
    assert ((dx - g @ wf).abs() <= e54 * (g.abs() @ wf.abs()) + 1e-6).all()
    # dY's smallest entries fall below e5m2's normal range (2^-14 / grad_s): their rounding is absolute
    floor = 2.0**-16 / SCALES["grad_s"]
    assert ((dw - g.t() @ xf).abs() <= e54 * (g.abs().t() @ xf.abs()) + floor * M * xf.abs().max() + 1e-6).all()


@pytest.mark.parametrize("M,K,N", SHAPES)
def test_the_op_equals_its_emulation_forward_and_both_gradients(M, K, N):
    x, w, dy = _inputs(M, K, N, seed=M + 1)
    y, dx, dw = _run(fp8_mm, x, w, dy)
    y_ref, dx_ref, dw_ref = _run(fp8_mm_ref, x, w, dy)
    assert_close(y, y_ref, dtype=torch.bfloat16, name="y")  # bf16 output, same fp8 products
    assert_close(dx, dx_ref, dtype=torch.bfloat16, name="dX")
    assert_close(dw, dw_ref, dtype=torch.float32, name="dW")  # fp32 output: only the summation order differs


def test_the_gradients_have_the_parameters_dtypes():
    x, w, dy = _inputs(32, 64, 48, seed=7)
    x, w = x.requires_grad_(), w.requires_grad_()
    fp8_mm(x, w, **SCALES).backward(dy)
    assert (fp8_mm(x, w).dtype, x.grad.dtype, w.grad.dtype) == (torch.bfloat16, torch.bfloat16, torch.float32)


@pytest.mark.parametrize("shape_x,shape_w,message", [
    ((8, 24), (32, 24), "multiples of 16"), ((8, 32), (40, 32), "multiples of 16"), ((8, 32), (32, 16), "expected x")])
def test_bad_shapes_are_one_line_errors(shape_x, shape_w, message):
    with pytest.raises(ValueError, match=message):
        fp8_mm(torch.zeros(shape_x), torch.zeros(shape_w))


def test_the_op_compiles_with_inductor_forward_and_backward():
    """Inductor checks a custom op's outputs against its fake's sizes and strides (dW is a transposed view)."""
    x, w, dy = _inputs(32, 64, 48, seed=9)
    y, dx, dw = _run(torch.compile(fp8_mm, fullgraph=True), x, w, dy)
    y_eager, dx_eager, dw_eager = _run(fp8_mm, x, w, dy)
    assert torch.equal(y, y_eager) and torch.equal(dx, dx_eager) and torch.equal(dw, dw_eager)


def test_the_ops_fakes_match_the_real_ops():
    x, w, dy = _inputs(32, 64, 48, seed=10)
    torch.library.opcheck(torch.ops.speedrun.fp8_mm, (x, w, 2.0, 512.0, 2.0**19), test_utils="test_faketensor")
    x8, w8 = x.mul(2).to(torch.float8_e4m3fn), w.mul(512).to(torch.float8_e4m3fn)
    torch.library.opcheck(torch.ops.speedrun.fp8_mm_backward, (dy, x8, w8, 2.0, 512.0, 2.0**19),
                          test_utils="test_faketensor")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="needs a CUDA GPU with FP8 (capability >= 8.9)")
@pytest.mark.parametrize("M,K,N", [(48, 768, 1024), (1000, 768, 50304)])
def test_the_op_on_the_gpu_equals_its_emulation_and_never_syncs(M, K, N):
    """On FP8 tensor cores (fast accumulation forward): the emulation's values, and no host sync in the op's
    forward or backward (CUDA's sync debug mode turns one into an error)."""
    x, w, dy = (t.cuda() for t in _inputs(M, K, N, seed=3))
    y_ref, dx_ref, dw_ref = (t.cuda() for t in _run(fp8_mm_ref, x.cpu(), w.cpu(), dy.cpu()))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y, dx, dw = _run(fp8_mm, x, w, dy)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_close(y, y_ref, dtype=torch.bfloat16, name="y")
    assert_close(dx, dx_ref, dtype=torch.bfloat16, name="dX")
    assert_close(dw, dw_ref, dtype=torch.bfloat16, name="dW")  # fp32 out; the GPU sums in another order
