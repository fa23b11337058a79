"""kernels/head_loss.py: the FP8 head's soft-capped cross-entropy against its float references.

On fresh random inputs at awkward shapes (a single row, rows that fill no tile, V not a multiple of the forward's
chunk of 256 or the backward's 64-wide tile), with the record's cap (15) and without, targets at 0 and V - 1:
- the forward kernel's lse and row losses against float64 on the same bf16 logits (fp32 math: 2e-5);
- the backward kernel's scaled gradient (the interpreter's output, no fp8 cast) against float64 autograd of the
  reference on the same logits, times grad_s: this pins the math that the CUDA path then casts;
- the op's loss, dX and dW against the composition it replaces (kernels.fp8.fp8_mm's logits, autograd of the
  soft-capped cross-entropy in fp32, torch's cast of grad_s dl, kernels.fp8's matmuls), and against the fp32
  emulation (fp8_mm_ref) within the bf16 logits' and the e5m2 gradient's rounding;
- opcheck, torch.compile forward and backward, one-line errors for bad input.
On a GPU: the kernel's G8 and G8^T bits equal torch's cast of its own fp32 output, and the op the composition.
"""
import numpy as np
import pytest
import torch

from kernels import fp8
from kernels.fp8 import E5M2, fp8_mm_ref
from kernels.head_loss import (fp8_head_loss, fp8_head_loss_ref, loss_grad, loss_rows, softcap_cross_entropy)

SCALES = dict(x_s=2.0, w_s=2.0**9, grad_s=2.0**19)
KERNEL_SHAPES = [(1, 97), (37, 1000), (130, 97), (130, 1000)]  # (N, V): the kernels take any V
OP_SHAPES = [(1, 16, 112), (37, 48, 1008), (130, 16, 1008), (130, 48, 112)]  # (N, d, V): d, V multiples of 16
CAPS = [15.0, 0.0]


def _logits(N, V, seed):
    """bf16 logits spread past the cap (|l| up to ~40), so tanh's saturation is exercised."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(N, V, generator=gen) * 8).bfloat16()


def _targets(N, V, seed):
    t = torch.randint(V, (N,), generator=torch.Generator().manual_seed(seed + 1))
    t[0] = V - 1
    if N > 1:
        t[-1] = 0
    return t


def _op_inputs(N, d, V, seed):
    """x RMS-normed as the head sees it, w at a trained head's scale times 4 (logits of a few units)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, d, generator=gen)
    x = (x / x.pow(2).mean(-1, keepdim=True).sqrt()).bfloat16()
    return x, 0.2 * torch.randn(V, d, generator=gen), _targets(N, V, seed)


def _within(got, want, rel, name, atol=0.0):
    """max |got - want| <= rel max |want| + atol, failing with where and how much."""
    diff = (got.double() - want.double()).abs()
    bound = rel * want.double().abs().max().item() + atol
    if diff.max().item() > bound:
        i = tuple(int(k) for k in torch.unravel_index(diff.argmax(), diff.shape))
        raise AssertionError(f"{name}: max |diff| {diff.max().item():.3e} > {bound:.3e} at {i} (got "
                             f"{got[i].item():.6g}, want {want[i].item():.6g})")


@pytest.mark.parametrize("cap", CAPS)
@pytest.mark.parametrize("N,V", KERNEL_SHAPES)
def test_the_forward_kernel_is_the_float64_loss(N, V, cap):
    logits, targets = _logits(N, V, seed=N + V), _targets(N, V, seed=N + V)
    lse, loss = loss_rows(logits, targets, cap)
    z = logits.double()
    z = cap * torch.tanh(z / cap) if cap else z
    want_lse = torch.logsumexp(z, -1)
    _within(lse, want_lse, 0, "lse", atol=2e-5 * want_lse.abs().max().item())
    want = want_lse - z.gather(1, targets[:, None])[:, 0]
    _within(loss, want, 0, "row loss", atol=2e-5 * want_lse.abs().max().item())
    assert torch.allclose(loss.mean().double(), softcap_cross_entropy(logits.double(), targets, cap), atol=2e-5)


@pytest.mark.parametrize("cap", CAPS)
@pytest.mark.parametrize("N,V", KERNEL_SHAPES)
def test_the_backward_kernel_is_autograds_gradient_scaled(N, V, cap):
    """The interpreter's output (no cast): grad_s dl, against float64 autograd of the reference, dloss != 1."""
    logits, targets, dloss = _logits(N, V, seed=N * V), _targets(N, V, seed=N * V), torch.tensor(0.75)
    lse, _ = loss_rows(logits, targets, cap)
    g, none = loss_grad(logits, lse, targets, dloss, cap, SCALES["grad_s"], write_fp8=False)
    assert none is None and g.dtype == torch.float32 and g.shape == (N, V)
    z = logits.double().requires_grad_()
    (softcap_cross_entropy(z, targets, cap) * dloss.double()).backward()
    want = z.grad * SCALES["grad_s"]
    # p = exp(z - lse) carries lse's and tanh's fp32 error (~1e-6 relative)
    _within(g, want, 1e-5, "grad_s dl")
    assert ((g.double() - want).abs() <= 1e-5 * want.abs() + 1e-6 * want.abs().max()).all()


@pytest.mark.parametrize("N,V", KERNEL_SHAPES)
def test_the_fp8_path_writes_every_element_and_its_transpose(N, V):
    """WRITE_FP8 under the interpreter, whose fp8 cast is its own (it rounds and clamps exponents its way: the GPU
    test pins the bits), so what is checked here is the layout and the masks: G8^T is G8 transposed on partial
    tiles too, and every element is written (where the fp32 path's value is a normal e5m2 number: its sign, and a
    magnitude that is not zero)."""
    logits, targets, dloss = _logits(N, V, seed=N + 7), _targets(N, V, seed=N + 7), torch.tensor(1.0)
    lse, _ = loss_rows(logits, targets, 15.0)
    g8, g8t = loss_grad(logits, lse, targets, dloss, 15.0, SCALES["grad_s"], write_fp8=True)
    g, _ = loss_grad(logits, lse, targets, dloss, 15.0, SCALES["grad_s"], write_fp8=False)
    assert (g8.shape, g8t.shape, g8.dtype, g8t.dtype) == ((N, V), (V, N), E5M2, E5M2) and g8t.is_contiguous()
    assert torch.equal(g8t.view(torch.uint8), g8.view(torch.uint8).t())
    normal = (g.abs() >= 2.0**-14) & (g.abs() <= 57344.0)
    assert normal.sum() >= N * V // 10, "too few values in e5m2's normal range to check"
    bits = g8.view(torch.uint8)[normal]
    assert torch.equal(bits >= 0x80, (g < 0)[normal]) and (bits & 0x7F != 0).all()  # the sign, a nonzero magnitude


def _run(fn, x, w, targets, cap):
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    loss = fn(x, w, targets, cap, **SCALES)
    loss.backward()
    return loss.detach(), x.grad, w.grad


def _composition(x, w, targets, cap, x_s, w_s, grad_s):
    """What the op fuses, unfused: kernels.fp8's logits, fp32 autograd of the loss on them, torch's cast of
    grad_s dl (fp32, not rounded to bf16 first, as the kernel casts), kernels.fp8's backward matmuls."""
    logits, x8t, w8t = fp8.forward(x.contiguous(), w, x_s, w_s)
    z = logits.float().requires_grad_()
    loss = softcap_cross_entropy(z, targets, cap)
    loss.backward()
    g8, g8t = fp8.cast_fp8_ref(z.grad * grad_s, 1.0, E5M2, transpose=True)
    return (loss.detach(), *fp8.backward(g8, g8t, x8t, w8t, x_s, w_s, grad_s))


@pytest.mark.parametrize("cap", CAPS)
@pytest.mark.parametrize("N,d,V", OP_SHAPES)
def test_the_op_is_the_composition_it_fuses(N, d, V, cap):
    """The same logits; the loss in fp32 either way; G8 differs only where the two fp32 computations of grad_s dl
    fall on either side of an e5m2 rounding boundary (rare), so dX and dW agree to 1e-3 of their size."""
    x, w, targets = _op_inputs(N, d, V, seed=N + d + V)
    loss, dx, dw = _run(fp8_head_loss, x, w, targets, cap)
    want_loss, want_dx, want_dw = _composition(x, w, targets, cap, **SCALES)
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert torch.allclose(loss, want_loss, rtol=1e-5, atol=1e-5), (loss.item(), want_loss.item())
    assert (dx.dtype, dx.shape, dw.dtype, dw.shape) == (torch.bfloat16, (N, d), torch.float32, (V, d))
    _within(dx, want_dx, 1e-3, "dX")
    _within(dw, want_dw, 1e-3, "dW")


@pytest.mark.parametrize("cap", CAPS)
@pytest.mark.parametrize("N,d,V", OP_SHAPES)
def test_the_op_is_the_fp32_emulation_within_fp8s_rounding(N, d, V, cap):
    """Against fp8_mm_ref (fp32 logits, the casts emulated): the op's logits are those rounded to bf16 (relative
    2^-9), which moves a row's loss by at most 2 x 2^-9 x its largest |logit| (lse and the target's term); the
    gradients carry that and e5m2's rounding of grad_s dl (one step of 2^-2 relative at most)."""
    x, w, targets = _op_inputs(N, d, V, seed=N * d + V)
    loss, dx, dw = _run(fp8_head_loss, x, w, targets, cap)
    want_loss, want_dx, want_dw = _run(lambda *a, **s: fp8_head_loss_ref(*a, **s, matmul=fp8_mm_ref), x, w, targets,
                                       cap)
    logits = fp8_mm_ref(x, w, **SCALES).detach()
    assert abs(loss.item() - want_loss.item()) <= 2 * 2.0**-9 * logits.abs().max().item() + 1e-5
    _within(dx.float(), want_dx, 0.1, "dX")
    _within(dw, want_dw, 0.1, "dW")


def test_the_torch_composition_is_the_fp8_matmul_then_the_soft_capped_loss():
    """fp8_head_loss_ref with kernels.fp8.fp8_mm: the head's logits in fp32, soft-capped, F.cross_entropy's mean
    (`softcap_cross_entropy`, which is also the trainer's bf16 loss: tests/test_train_gpt.py checks it calls it)."""
    x, w, targets = _op_inputs(37, 48, 1008, seed=5)
    logits = fp8.fp8_mm(x, w, **SCALES).float()
    want = torch.nn.functional.cross_entropy(15.0 * torch.tanh(logits / 15.0), targets)
    assert torch.equal(fp8_head_loss_ref(x, w, targets, 15.0, **SCALES), want)


def test_the_ops_pass_opcheck():
    """opcheck's fake-tensor and autograd-registration checks (the backward's AOT dispatch too). Its schema and the
    forward's AOT-dispatch checks are left out: they multiply or sum every output, and PyTorch's CPU has neither
    for float8 (the saved X8^T, W8^T); the torch.compile test below traces the forward and backward instead."""
    checks = ("test_faketensor", "test_autograd_registration")
    x, w, targets = _op_inputs(32, 16, 112, seed=6)
    torch.library.opcheck(torch.ops.speedrun.fp8_head_loss, (x, w.requires_grad_(), targets, 15.0, 2.0, 512.0,
                                                             2.0**19), test_utils=checks)
    logits, x8t, w8t = fp8.forward(x, w.detach(), 2.0, 512.0)
    lse, _ = loss_rows(logits, targets, 15.0)
    torch.library.opcheck(torch.ops.speedrun.fp8_head_loss_backward,
                          (torch.tensor(1.0), logits, lse, targets, x8t, w8t, 15.0, 2.0, 512.0, 2.0**19),
                          test_utils=checks + ("test_aot_dispatch_dynamic",))


def test_the_op_compiles_with_inductor_forward_and_backward():
    """Without the FX graph cache, as tests/test_fp8.py says why."""
    x, w, targets = _op_inputs(32, 16, 112, seed=7)
    with torch._inductor.config.patch(fx_graph_cache=False):
        compiled = _run(torch.compile(fp8_head_loss, fullgraph=True), x, w, targets, 15.0)
    eager = _run(fp8_head_loss, x, w, targets, 15.0)
    assert all(torch.equal(a, b) for a, b in zip(compiled, eager))


@pytest.mark.parametrize("x,w,targets,cap,message", [
    (torch.zeros(8, 16), torch.zeros(32, 16), torch.zeros(7, dtype=torch.long), 15.0, r"expected targets \(8,\)"),
    (torch.zeros(8, 16), torch.zeros(32, 16), torch.zeros(8), 15.0, "int32/int64"),
    (torch.zeros(8, 16), torch.zeros(32, 16), torch.full((8,), 32), 15.0, r"in \[0, 32\), got 32 .. 32"),
    (torch.zeros(8, 16), torch.zeros(32, 16), torch.full((8,), -1), 15.0, r"in \[0, 32\)"),
    (torch.zeros(8, 16), torch.zeros(32, 16), torch.zeros(8, dtype=torch.long), -1.0, "softcap = -1.0"),
    (torch.zeros(8, 16), torch.zeros(32, 16), torch.zeros(8, dtype=torch.long), float("nan"), "softcap = nan"),
    (torch.zeros(8, 16), torch.zeros(32, 16), torch.zeros(8, dtype=torch.long), float("inf"), "softcap = inf"),
    (torch.zeros(8, 24), torch.zeros(32, 24), torch.zeros(8, dtype=torch.long), 15.0, "multiples of 16"),
    # F.cross_entropy's ignore_index drops a -100 row from the mean; ours has no ignore_index and refuses it
    (torch.zeros(8, 16), torch.zeros(32, 16), torch.tensor([-100] + [0] * 7), 15.0, r"-100 .. 0 \(no ignore_index"),
    (torch.zeros(8, 16), torch.zeros(32, 16), torch.zeros(8, dtype=torch.long), 1e39, "softcap = 1e"),
    # the kernels' tanh lost the logits under a cap of 1e9 (every z 0: loss log V) and 1 / 1e-39 overflowed (a NaN)
    (torch.zeros(8, 16), torch.zeros(32, 16), torch.zeros(8, dtype=torch.long), 1e9, r"softcap = 1000000000.0: expected 0 "
     r"\(no cap\) or a number in \[2\^-126, 4096\]$"),
    (torch.zeros(8, 16), torch.zeros(32, 16), torch.zeros(8, dtype=torch.long), 1e-39, "softcap = 1e-39: expected"),
    # the op takes a float: a tensor cap requiring grad got none (softcap_cross_entropy gives one); a string was
    # a TypeError naming no argument
    (torch.zeros(8, 16), torch.zeros(32, 16), torch.zeros(8, dtype=torch.long), torch.tensor(15.0, requires_grad=True),
     r"softcap = tensor\(15\., requires_grad=True\): expected 0"),
    (torch.zeros(8, 16), torch.zeros(32, 16), torch.zeros(8, dtype=torch.long), "15", "softcap = '15': expected 0"),
    (torch.zeros(8, 16), torch.zeros(32, 16), torch.zeros(8, dtype=torch.long, device="meta"), 15.0,
     "targets must be on x's device cpu, got meta"),
])
def test_bad_input_is_a_one_line_error(x, w, targets, cap, message):
    with pytest.raises(ValueError, match=message) as info:
        fp8_head_loss(x, w, targets, cap)
    assert "\n" not in str(info.value)


def test_a_numpy_softcap_or_scale_is_a_number():
    x, w, targets = torch.randn(8, 16), torch.randn(32, 16) * 0.1, torch.arange(8)
    assert torch.equal(fp8_head_loss(x, w, targets, np.float32(15.0)), fp8_head_loss(x, w, targets, 15.0))
    numpy_scales = dict(x_s=np.float32(2.0), w_s=np.float64(2.0**9), grad_s=np.float32(2.0**19))  # as Python's
    assert torch.equal(fp8_head_loss(x, w, targets, 15.0, **numpy_scales), fp8_head_loss(x, w, targets, 15.0))


@pytest.mark.parametrize("scale", ["x_s", "w_s", "grad_s"])
@pytest.mark.parametrize("value", [0.0, -2.0, float("nan"), float("inf")])
def test_a_bad_scale_is_a_one_line_error(scale, value):
    with pytest.raises(ValueError, match=f"fp8_head_loss: {scale} = {value}") as info:
        fp8_head_loss(torch.zeros(8, 16), torch.zeros(32, 16), torch.zeros(8, dtype=torch.long),
                      **{**SCALES, scale: value})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("cap", CAPS)
def test_a_target_outside_the_vocabulary_makes_its_row_nan_and_reads_nothing(cap):
    # what CUDA runs unchecked (the CPU's ValueError comes first in the public function): the row's loss and its
    # gradient row are NaN, every other row as with a valid target; far-out targets read no memory (masked)
    N, V = 37, 97
    logits, targets = _logits(N, V, seed=30), _targets(N, V, seed=30)
    bad = targets.clone()
    rows = [2, 5, 11, 36]
    bad[rows] = torch.tensor([-100, -1, V, 2**40])
    lse, loss = loss_rows(logits, targets, cap)
    lse_bad, loss_bad = loss_rows(logits, bad, cap)
    keep = torch.ones(N, dtype=torch.bool)
    keep[rows] = False
    assert torch.equal(lse_bad, lse) and loss_bad[rows].isnan().all() and torch.equal(loss_bad[keep], loss[keep])
    dloss = torch.tensor(1.0)
    g = loss_grad(logits, lse, targets, dloss, cap, 2.0**19, write_fp8=False)[0]
    g_bad = loss_grad(logits, lse, bad, dloss, cap, 2.0**19, write_fp8=False)[0]
    assert g_bad[rows].isnan().all() and torch.equal(g_bad[keep], g[keep])


def test_no_rows():
    # N = 0: the reference's mean over no rows is NaN, and its gradients are empty (dX) and zero (dW)
    x, w, targets = torch.zeros(0, 16, dtype=torch.bfloat16), 0.2 * torch.randn(112, 16), torch.zeros(0, dtype=torch.long)
    got, want = _run(fp8_head_loss, x, w, targets, 15.0), _run(fp8_head_loss_ref, x, w, targets, 15.0)
    assert got[0].isnan() and want[0].isnan()
    for a, b in zip(got[1:], want[1:]):
        assert a.shape == b.shape and torch.equal(a.float(), b.float())


GPU = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                         reason="needs a CUDA GPU with FP8 (capability >= 8.9)")


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("N,V", [(130, 1000), (4096, 50304)])
def test_the_kernel_writes_the_e5m2_bits_of_its_own_gradient(N, V):
    """On the hardware's cast: G8 and G8^T are torch's cast of the same kernel's fp32 grad_s dl, bit for bit."""
    logits, targets = _logits(N, V, seed=1).cuda(), _targets(N, V, seed=1).cuda()
    lse, _ = loss_rows(logits, targets, 15.0)
    g8, g8t = loss_grad(logits, lse, targets, torch.tensor(1.0, device="cuda"), 15.0, 2.0**19, write_fp8=True)
    g, _ = loss_grad(logits, lse, targets, torch.tensor(1.0, device="cuda"), 15.0, 2.0**19, write_fp8=False)
    want = g.to(E5M2)
    assert torch.equal(g8.view(torch.uint8), want.view(torch.uint8))
    assert torch.equal(g8t.view(torch.uint8), want.t().contiguous().view(torch.uint8))


@pytest.mark.gpu
@GPU
@pytest.mark.parametrize("N,d,V", [(1024, 768, 50304)])
def test_the_op_on_the_gpu_is_the_composition_and_never_syncs(N, d, V):
    """The loss to fp32's summation noise; dX and dW in norm (51M logits: a few hundred fall on an e5m2 rounding
    boundary that the kernel's and torch's fp32 arithmetic put on either side, each one e5m2 step of one element)."""
    x, w, targets = (t.cuda() for t in _op_inputs(N, d, V, seed=2))
    want = _composition(x, w, targets, 15.0, **SCALES)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = _run(fp8_head_loss, x, w, targets, 15.0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
    for g, ref, name in ((got[1], want[1], "dX"), (got[2], want[2], "dW")):
        assert (g.float() - ref.float()).norm() <= 1e-3 * ref.float().norm(), name
