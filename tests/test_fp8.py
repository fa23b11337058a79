"""kernels/fp8.py: the FP8 head's scaling math against float references, and the op against its emulation.

Two checks, on fresh random inputs at several shapes (rows that fill no tile, a single row) and the
record's scales: (1) `fp8_mm_ref`, the casts emulated through torch's float8 dtypes, is within the
formats' rounding of the plain fp32 matmul and its gradients (e4m3: relative 2^-4 per operand, e5m2: 2^-3);
(2) the op itself (`torch._scaled_mm`, which PyTorch's CPU build runs) equals that emulation: the same
casts, so the only differences are the accumulation order and the bf16 rounding of y and dX.

The casts' kernel (`cast_fp8`, the op's path on CUDA) against torch's casts bit for bit: under Triton's
interpreter on values an fp8 format holds exactly (its own float conversion does not round to nearest even),
overflow, inf and NaN, at awkward shapes; on a GPU on random values of every magnitude. The op's outputs
equal the eager composition they replace (casts, transposed copies, `_scaled_mm`) with either cast path.
"""
import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import kernels.fp8
from kernels.fp8 import E4M3, E5M2, cast_fp8, cast_fp8_ref, fp8_mm, fp8_mm_ref, quantize
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


@pytest.mark.parametrize("dtype", [torch.float64, torch.int32])
def test_a_dtype_the_casts_do_not_take_is_a_one_line_error_on_every_device(dtype):
    with pytest.raises(ValueError, match="fp8_mm: expected bf16, fp16 or fp32"):
        fp8_mm(torch.zeros(16, 32, dtype=dtype), torch.zeros(16, 32))


@pytest.mark.parametrize("scales,name", [
    ((0.0, 512.0, 2.0**19), "x_s = 0.0"), ((2.0, -512.0, 2.0**19), "w_s = -512.0"),
    ((2.0, 512.0, float("nan")), "grad_s = nan"), ((2.0, float("inf"), 2.0**19), "w_s = inf"),
    ((1e-300, 512.0, 2.0**19), "x_s = 1e-300"), ((2.0, 512.0, 2.0**200), "grad_s = 1.6")])
def test_a_scale_that_is_not_a_positive_fp32_number_is_a_one_line_error(scales, name):
    with pytest.raises(ValueError, match=f"fp8_mm: {name}") as info:
        fp8_mm(torch.zeros(16, 32), torch.zeros(16, 32), *scales)
    assert "\n" not in str(info.value)


def test_operands_on_two_devices_are_a_one_line_error():
    with pytest.raises(ValueError, match="fp8_mm: x and w must be on one device, got cpu and meta"):
        fp8_mm(torch.zeros(16, 32), torch.zeros(16, 32, device="meta"))


def test_the_op_compiles_with_inductor_forward_and_backward():
    """Inductor checks a custom op's outputs against its fake's sizes and strides (dW is a transposed view).
    Without its FX graph cache: the cache keys the op by name, not by its fake, so a graph compiled against
    another version of this op would replay that version's sizes and strides."""
    x, w, dy = _inputs(32, 64, 48, seed=9)
    with torch._inductor.config.patch(fx_graph_cache=False):
        y, dx, dw = _run(torch.compile(fp8_mm, fullgraph=True), x, w, dy)
    y_eager, dx_eager, dw_eager = _run(fp8_mm, x, w, dy)
    assert torch.equal(y, y_eager) and torch.equal(dx, dx_eager) and torch.equal(dw, dw_eager)


@pytest.mark.parametrize("M", [32, 1, 0])  # M = 1 and 0: X8^T (K, M) whose transposed copy counts as contiguous
def test_the_ops_fakes_match_the_real_ops(M):
    x, w, dy = _inputs(M, 64, 48, seed=10)
    torch.library.opcheck(torch.ops.speedrun.fp8_mm, (x, w, 2.0, 512.0, 2.0**19), test_utils="test_faketensor")
    x8t, w8t = x.mul(2).to(E4M3).t().contiguous(), w.mul(512).to(E4M3).t().contiguous()
    torch.library.opcheck(torch.ops.speedrun.fp8_mm_backward, (dy, x8t, w8t, 2.0, 512.0, 2.0**19),
                          test_utils="test_faketensor")
    # opcheck passes strides that differ on a size-1 dim; the saved X8^T's must equal the fake's all the same
    real = torch.ops.speedrun.fp8_mm(x, w, 2.0, 512.0, 2.0**19)
    with FakeTensorMode() as mode:
        fake = torch.ops.speedrun.fp8_mm(mode.from_tensor(x), mode.from_tensor(w), 2.0, 512.0, 2.0**19)
    assert [(t.shape, t.stride(), t.dtype) for t in real] == [(t.shape, t.stride(), t.dtype) for t in fake]


def _eager_composition(x, w, dy, x_s, w_s, grad_s):
    """The op's math written out as torch ops: each cast as a product then a cast, each transposed operand a copy."""
    inv = lambda s: torch.tensor(1 / s)  # noqa: E731
    x8, w8, g8 = x.mul(x_s).to(E4M3), w.mul(w_s).to(E4M3), dy.mul(grad_s).to(E5M2)
    y = torch._scaled_mm(x8, w8.t(), out_dtype=torch.bfloat16, scale_a=inv(x_s), scale_b=inv(w_s), use_fast_accum=True)
    dx = torch._scaled_mm(g8, w8.t().contiguous().t(), out_dtype=torch.bfloat16, scale_a=inv(grad_s),
                          scale_b=inv(w_s))
    dw = torch._scaled_mm(x8.t().contiguous(), g8.t().contiguous().t(), out_dtype=torch.float32, scale_a=inv(x_s),
                          scale_b=inv(grad_s)).t()
    return y.float(), dx.float(), dw


def _fp8_values(dtype, shape, scale, gen):
    """Random values q / scale with q any finite value of `dtype` (subnormals and the largest included)."""
    values = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(dtype).float()
    values = values[values.isfinite()]
    return values[torch.randint(len(values), shape, generator=gen)] / scale


@pytest.mark.parametrize("M,K,N", SHAPES)
def test_the_op_equals_the_eager_composition_bit_for_bit(M, K, N):
    x, w, dy = _inputs(M, K, N, seed=M + 2)
    assert all(torch.equal(a, b) for a, b in zip(_run(fp8_mm, x, w, dy), _eager_composition(x, w, dy, **SCALES)))


@pytest.mark.parametrize("M,K,N", SHAPES[:3])
def test_the_op_with_the_cast_kernel_equals_the_eager_composition(M, K, N, monkeypatch):
    """The CUDA path's casts (the kernel, here under the interpreter) feed every matmul the operand in the layout
    it needs: on inputs the casts hold exactly, the outputs are the eager composition's bits."""
    gen = torch.Generator().manual_seed(M)
    x = _fp8_values(E4M3, (M, K), SCALES["x_s"], gen).bfloat16()
    w = _fp8_values(E4M3, (N, K), SCALES["w_s"], gen)
    dy = _fp8_values(E5M2, (M, N), SCALES["grad_s"], gen).bfloat16()
    calls = []
    monkeypatch.setattr(kernels.fp8, "_use_kernel", lambda t: calls.append(t.shape) or True)
    outputs = _run(fp8_mm, x, w, dy)
    assert calls == [(M, K), (N, K), (M, N)]
    assert all(torch.equal(a, b) for a, b in zip(outputs, _eager_composition(x, w, dy, **SCALES)))


def _assert_same_bits(q, ref, where):
    """The same bytes, NaN's sign aside: torch's t.mul(s) gives NaN a sign of its own (the CPU's bf16 rounding a
    positive one, the GPU's multiply the canonical one), so NaN bytes (0x7f, 0xff) compare equal."""
    canonical = lambda b: torch.where(b & 0x7F == 0x7F, 0x7F, b)  # noqa: E731
    q, ref = canonical(q.view(torch.uint8)), canonical(ref.view(torch.uint8))
    if not torch.equal(q, ref):
        i = (q != ref).nonzero()[0].tolist()
        raise AssertionError(f"{where}: {int((q != ref).sum())} of {q.numel()} bytes differ, first at {i}: "
                             f"{q[tuple(i)].item():#04x} against torch's {ref[tuple(i)].item():#04x}")


CAST_SHAPES = [(1, 1), (1, 100), (37, 53), (64, 64), (130, 67), (3, 257)]  # 64 x 64 tiles: partial in either dim
SPECIAL = [0.0, -0.0, float("inf"), float("-inf"), float("nan")]


@pytest.mark.parametrize("dtype,scale", [(E4M3, 2.0), (E4M3, 2.0**9), (E5M2, 2.0**19), (E5M2, 2.0**-3)])
@pytest.mark.parametrize("t_dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("R,C", CAST_SHAPES)
# the overflow cases' products overflow fp16 to inf on purpose (torch's t.mul does too); numpy warns in the interpreter
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_the_cast_kernel_writes_torchs_bits_and_their_transpose(R, C, t_dtype, dtype, scale):
    """Values the format holds exactly (subnormals, the largest), overflow (e4m3: saturated at 448, e5m2: inf
    from 61440 up), +-inf, NaN and signed zeros, scaled by the trainer's scales (and one below 1)."""
    gen = torch.Generator().manual_seed(R * 1000 + C)
    limit = 448.0 if dtype == E4M3 else 57344.0
    extra = torch.tensor(SPECIAL + [limit * 1.07, -limit * 1.5, 61440.0, -65536.0, 1e30]) / scale
    t = _fp8_values(dtype, (R, C), scale, gen)
    pick = torch.rand(R, C, generator=gen) < 0.2
    t = torch.where(pick, extra[torch.randint(len(extra), (R, C), generator=gen)], t).to(t_dtype)
    q, qt = cast_fp8(t, scale, dtype, transpose=True)
    ref, ref_t = cast_fp8_ref(t, scale, dtype, transpose=True)
    assert (q.dtype, q.shape, qt.dtype, qt.shape) == (dtype, (R, C), dtype, (C, R)) and qt.is_contiguous()
    _assert_same_bits(q, ref, "q")
    _assert_same_bits(qt, ref_t, "q^T")
    q_only, none = cast_fp8(t, scale, dtype)
    assert none is None
    _assert_same_bits(q_only, ref, "q without the transpose")


def test_the_cast_kernel_takes_a_numpy_scale():
    # the kernel takes a Python float: Triton refuses a numpy one ('cannot convert 2.0 of type numpy.float32')
    t = torch.tensor([[1.0, -0.5, 448.0, 3.0]])
    _assert_same_bits(cast_fp8(t, np.float32(2.0), E4M3)[0], cast_fp8_ref(t, 2.0, E4M3)[0], "q")


def test_fp8_mm_takes_numpy_scales():
    """Scales are numbers by one rule in every FP8 op (numbers.Real): numpy's give Python's result."""
    x, w = torch.randn(16, 32), torch.randn(48, 32)
    scales = (np.float32(2.0), np.float64(2.0**9), np.float32(2.0**19))
    assert torch.equal(fp8_mm(x, w, *scales), fp8_mm(x, w, *(float(s) for s in scales)))


@pytest.mark.parametrize("t,scale,dtype,message", [
    (torch.zeros(4, 4, dtype=torch.float64), 2.0, E4M3, "bf16/fp16/fp32"),
    (torch.zeros(4, 4).t()[:, :2], 2.0, E4M3, "contiguous"), (torch.zeros(2, 2, 2), 2.0, E5M2, "2-D"),
    (torch.zeros(4, 4), 2.0, torch.bfloat16, "E4M3/E5M2"),
    # a tensor scale would reach the kernel as a pointer (a Triton type error from inside the launch)
    (torch.zeros(4, 4), torch.tensor(2.0), E4M3, r"a number scale .* by Tensor to ")])
def test_the_cast_kernel_refuses_bad_input_in_one_line(t, scale, dtype, message):
    with pytest.raises(ValueError, match=message) as info:
        cast_fp8(t, scale, dtype)
    assert "\n" not in str(info.value)


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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("R,C,t_dtype,dtype,scale", [
    (130, 67, torch.float32, E4M3, 2.0**9), (768, 50304, torch.float32, E4M3, 2.0**9),
    (1000, 768, torch.bfloat16, E4M3, 2.0), (49152, 50304, torch.bfloat16, E5M2, 2.0**19)])
def test_the_cast_kernel_on_the_gpu_writes_torchs_bits(R, C, t_dtype, dtype, scale):
    """Random values over 60 binades (rounding to nearest even, subnormals, overflow) plus inf and NaN, on the
    hardware's casts; the last shape is the logits' gradient: 2.5G elements, int64 offsets.

    Memory: gpu_check runs the GPU tests on 6 workers on one card, so the input is built and checked 4096 rows at
    a time. At 49152 x 50304 (2.47G elements) the whole tensors are t (bf16, 4.9 GB), q and q^T (2.5 GB each); a
    chunk's temporaries (fp32 normal and exponent, int8 exponent; then the reference's bf16 product and fp8 rows and
    the comparison's uint8 copies) are under 3.5 GB: a peak of about 13.5 GB."""
    rows = 4096
    gen = torch.Generator(device="cuda").manual_seed(R)
    t = torch.empty(R, C, device="cuda", dtype=t_dtype)
    for i in range(0, R, rows):
        n = min(rows, R - i)
        exponent = torch.randint(-40, 20, (n, C), device="cuda", generator=gen, dtype=torch.int8)
        t[i:i + n] = torch.randn(n, C, device="cuda", generator=gen) * torch.exp2(exponent) / scale
    t.view(-1)[:5] = torch.tensor(SPECIAL, device="cuda", dtype=t_dtype)
    q, qt = cast_fp8(t, scale, dtype, transpose=True)
    for i in range(0, R, rows):
        ref, _ = cast_fp8_ref(t[i:i + rows], scale, dtype)
        _assert_same_bits(q[i:i + rows], ref, f"q, rows from {i}")
        _assert_same_bits(qt.t()[i:i + rows], q[i:i + rows], f"q^T, rows from {i}")
