"""kernels.newton_schulz: the symmetric kernels, the fused step, and the orthogonalisation it drives.

On CPU the kernels run under Triton's interpreter in fp32 (and fp16), with 16x16 tiles, so the small,
awkward shapes here still span several tiles with ragged edges. The spectral tests fix the working dtype
to fp32 so they test the iteration's math on any device; bf16 (the CUDA default) is checked on GPU only.
"""
import numpy as np
import pytest
import torch

from kernels.newton_schulz import (
    POLAR_EXPRESS,
    POLAR_EXPRESS_SAFETY,
    QUINTIC,
    bx_plus_ax,
    newton_schulz,
    newton_schulz_ref,
    ns_step,
    xxt,
    xxt_plus,
    xxt_ref,
)
from helpers import assert_close, assert_error_within


def gpu(test):
    """Mark a test as GPU-only: `-m gpu` selects it, and it is skipped where there is no CUDA."""
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")(test))


# (M, K) and (B, M, K): one row, ragged tiles, tall and wide, several off-diagonal tiles, a stack.
XXT_SHAPES = [(1, 7), (17, 33), (33, 20), (64, 96), (70, 45), (3, 20, 40)]
# Newton-Schulz inputs: wide, tall (transposed inside), square-ish, a stack.
NS_SHAPES = [(24, 40), (40, 24), (17, 33), (3, 16, 28)]


def singular_values(X: torch.Tensor) -> torch.Tensor:
    """(…, min(M, N)) in descending order, in fp64."""
    return torch.linalg.svdvals(X.double())


def with_spectrum(s: torch.Tensor, M: int, N: int) -> torch.Tensor:
    """A random (M, N) fp32 matrix whose nonzero singular values are `s` (len(s) <= min(M, N))."""
    U, _ = torch.linalg.qr(torch.randn(M, len(s), dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(N, len(s), dtype=torch.float64))
    return (U * s.double()) @ V.T


def assert_reachable_in_band(G: torch.Tensor, out: torch.Tensor, lo: float = 0.6, hi: float = 1.25):
    """Every output σ <= hi, and those of input σ/‖G‖_F >= 3e-3 (all 5 quintic steps can reach) >= lo.

    A square Gaussian matrix has σ_min/‖G‖_F ~ N^-1.5, out of any 5-step iteration's reach, so the lower
    bound only covers the reachable ones: sorted descending, they are a prefix of each matrix's σ, and
    the k-th largest output is a lower bound for the outputs of the k largest inputs.
    """
    s_in = singular_values(G) / G.double().norm(dim=(-2, -1))[..., None]
    s_out = singular_values(out)
    reachable = s_in >= 3e-3
    low = s_out[reachable].min()
    assert s_out.max() <= hi and low >= lo, f"σ span [{s_out.min():.3f}, {s_out.max():.3f}], reachable from {low:.3f}"


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg, f"error message is not one line: {msg!r}"
    return msg


# ------------------------------------------------------------------------------------- symmetric kernels


@pytest.mark.parametrize("shape", XXT_SHAPES, ids=str)
def test_xxt_matches_matmul(device, shape):
    X = torch.randn(shape, device=device)
    out = xxt(X)
    assert out.dtype == X.dtype and out.shape == (*shape[:-1], shape[-2])
    # fp32 products of K terms of size ~1: absolute error grows like K·eps.
    assert_close(out, xxt_ref(X.double()), name="xxt", atol=1e-5 * shape[-1])


@pytest.mark.parametrize("shape", [(17, 33), (3, 20, 40)], ids=str)
def test_xxt_fp16_within_torch_error(device, shape):
    X = torch.randn(shape, device=device).half()
    assert_error_within(xxt(X), xxt_ref(X.double()), xxt_ref(X), name="xxt fp16", atol=1e-3)


@pytest.mark.parametrize("shape", XXT_SHAPES, ids=str)
def test_xxt_lower_triangle_is_the_exact_mirror(device, shape):
    X = torch.randn(shape, device=device)
    # Only upper tiles are launched: every lower entry must come from a mirrored store, none left as NaN.
    out = torch.full((*shape[:-1], shape[-2]), float("nan"), device=device)
    xxt(X, out=out)
    assert not out.isnan().any(), "some output entries were never written"
    assert torch.equal(out, out.mT), "X Xᵀ is not bit-for-bit symmetric"


@pytest.mark.parametrize("shape", [(1, 1), (20, 20), (33, 33), (3, 17, 17)], ids=str)
def test_xxt_plus_matches_formula(device, shape):
    A = xxt(torch.randn(shape, device=device)) / shape[-1]  # symmetric, entries ~1
    alpha, beta = QUINTIC[2], QUINTIC[1]
    out = xxt_plus(A, alpha=alpha, beta=beta)
    A64 = A.double()
    assert_close(out, alpha * A64 @ A64 + beta * A64, name="alpha·A² + beta·A", atol=1e-5 * shape[-1])
    assert torch.equal(out, out.mT), "alpha·A² + beta·A is not bit-for-bit symmetric"


@pytest.mark.parametrize("shape", [(1, 7), (17, 33), (33, 20), (3, 20, 40)], ids=str)
def test_bx_plus_ax_matches_formula(device, shape):
    M = shape[-2]
    X = torch.randn(shape, device=device)
    B = torch.randn(*shape[:-1], M, device=device)
    out = bx_plus_ax(B, X, a=QUINTIC[0])
    assert_close(out, B.double() @ X.double() + QUINTIC[0] * X.double(), name="B X + a·X", atol=1e-5 * M)


@pytest.mark.parametrize("shape", [(17, 33), (3, 20, 40)], ids=str)
def test_ns_step_matches_formula(device, shape):
    X = torch.randn(shape, device=device)
    X = X / X.norm(dim=(-2, -1), keepdim=True)  # the iteration's regime: every σ <= 1
    a, b, c = QUINTIC
    X64 = X.double()
    A = X64 @ X64.mT
    assert_close(ns_step(X, a, b, c), a * X64 + (b * A + c * A @ A) @ X64, name="a·X + (b·A + c·A²) X")


# ------------------------------------------------------------------------------------- Newton-Schulz


@pytest.mark.parametrize("coefficients", ["quintic", "polar_express"])
@pytest.mark.parametrize("shape", NS_SHAPES, ids=str)
def test_newton_schulz_matches_reference(device, shape, coefficients):
    G = torch.randn(shape, device=device)
    out = newton_schulz(G, coefficients=coefficients, dtype=torch.float32)
    assert out.shape == G.shape and out.dtype == G.dtype
    ref = newton_schulz_ref(G, coefficients=coefficients, dtype=torch.float32)
    assert_close(out, ref, name="newton_schulz", atol=1e-5)


def test_newton_schulz_fp16_within_torch_error(device):
    G = torch.randn(24, 40, device=device)
    ours = newton_schulz(G.half(), dtype=torch.float16)  # fp16 in, fp16 iteration (the CPU default for fp16)
    assert ours.dtype == torch.float16
    ref32 = newton_schulz_ref(G, dtype=torch.float32)
    ref16 = newton_schulz_ref(G.half(), dtype=torch.float16)
    assert_error_within(ours, ref32, ref16, name="newton_schulz fp16", atol=1e-3)


@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (3, 16, 28)], ids=str)
def test_random_input_singular_values_in_band(device, shape):
    # A Gaussian matrix that is not square keeps σ_min/‖G‖_F ≈ (√N-√M)/√(MN) ≳ 0.02: all in reach.
    s = singular_values(newton_schulz(torch.randn(shape, device=device), dtype=torch.float32))
    assert s.min() >= 0.6 and s.max() <= 1.25, f"singular values span [{s.min():.3f}, {s.max():.3f}]"


@pytest.mark.parametrize("coefficients", ["quintic", "polar_express"])
def test_low_rank_input_only_nonzero_directions_pushed_up(device, coefficients):
    rank = 4
    G = with_spectrum(torch.tensor([1.0, 0.5, 0.2, 0.05]), 24, 40).float().to(device)
    s = singular_values(newton_schulz(G, coefficients=coefficients, dtype=torch.float32))
    top, rest = s[:rank], s[rank:]
    assert top.min() >= 0.6 and top.max() <= 1.25, f"top-{rank} singular values {top.tolist()}"
    # Zero directions hold only rounding noise (~1e-7), amplified at most a⁵ ≈ 490 by 5 steps.
    assert rest.max() < 1e-3, f"zero singular directions grew to {rest.max():.2e}"


def test_ill_conditioned_input_top_in_band_tiny_ones_not(device):
    # Singular values spanning 1e-3..1. The quintic multiplies small σ by at most a = 3.4445 per step,
    # so after 5 steps σ/‖G‖_F below ~1e-3 is still well under 1: stated, not hidden.
    spectrum = torch.logspace(0, -3, 24)
    G = with_spectrum(spectrum, 24, 40).float().to(device)
    normalised = spectrum.double() / G.double().norm()
    out = {
        name: singular_values(newton_schulz(G, coefficients=name, dtype=torch.float32)).cpu()
        for name in ("quintic", "polar_express")
    }

    reachable = normalised >= 3e-3
    assert out["quintic"][reachable].min() >= 0.6 and out["quintic"].max() <= 1.25, out["quintic"].tolist()
    tiny = normalised < 1e-3
    assert tiny.any() and (out["quintic"][tiny] < 0.6).all(), "the quintic should leave the tiniest σ below the band"
    assert (out["quintic"][tiny] > 50 * normalised[tiny]).all(), "the tiniest σ should still grow a lot"
    # Polar Express is designed for σ/‖G‖_F >= 1e-3 (its l = 1e-3): all of those land in band.
    assert out["polar_express"][normalised >= 1e-3].min() >= 0.8, out["polar_express"].tolist()
    assert out["polar_express"].min() > out["quintic"].min()


def test_scalar_maps_of_both_schedules():
    # Odd polynomials act on each singular value alone: the 5-step scalar maps give the bands exactly.
    sigma = np.logspace(-4, 0, 4001)

    def after(schedule, safety):
        x = sigma / safety
        for a, b, c in schedule:
            x = a * x + b * x**3 + c * x**5
        return x

    quintic = after([QUINTIC] * 5, 1.0)
    assert 0.68 <= quintic[sigma >= 3e-3].min() and quintic.max() <= 1.21
    assert quintic[sigma == 1e-3] < 0.5 and quintic[sigma == 1e-4] < 0.06  # small σ stay small
    polar = after(POLAR_EXPRESS[:5], POLAR_EXPRESS_SAFETY)
    assert 0.84 <= polar[sigma >= 1e-3].min() and polar.max() <= 1.13
    # The schedule's last, repeated step is the quintic fixed at 1: p(1) = 1, p'(1) = p''(1) = 0.
    a, b, c = POLAR_EXPRESS[-1]
    assert (a + b + c, a + 3 * b + 5 * c, 6 * b + 20 * c) == (1.0, 0.0, 0.0)


def test_polar_express_orthogonalises_better_than_quintic(device):
    G = torch.randn(3, 24, 40, device=device)
    err = {
        name: (singular_values(newton_schulz(G, coefficients=name, dtype=torch.float32)) - 1).abs().max()
        for name in ("quintic", "polar_express")
    }
    assert err["polar_express"] < err["quintic"], err


def test_custom_schedule_repeats_its_last_triple(device):
    G = torch.randn(17, 33, device=device)
    settle = POLAR_EXPRESS[-1]
    ours = newton_schulz(G, steps=4, coefficients=[QUINTIC, settle])
    ref = newton_schulz_ref(G, steps=4, coefficients=[QUINTIC, settle, settle, settle])
    assert_close(ours, ref, name="schedule", atol=1e-5)


@pytest.mark.parametrize(
    "shape, dtype",
    [
        ((24, 40), torch.float32),
        ((40, 24), torch.float64),
        ((3, 16, 28), torch.float16),
        ((2, 28, 16), torch.bfloat16),
        ((1, 9), torch.float32),
        ((9, 1), torch.float32),
        ((2, 0, 5), torch.float32),
    ],
    ids=str,
)
def test_shape_and_dtype_preserved(device, shape, dtype):
    G = torch.randn(shape, device=device).to(dtype)
    out = newton_schulz(G)
    assert out.shape == G.shape and out.dtype == G.dtype and out.is_contiguous()
    assert torch.isfinite(out).all()


def test_non_contiguous_input(device):
    G = torch.randn(40, 24, device=device)
    ours, want = newton_schulz(G.mT, dtype=torch.float32), newton_schulz(G.mT.contiguous(), dtype=torch.float32)
    assert_close(ours, want, name="transposed view", atol=1e-6)


def test_zero_input_gives_zeros(device):
    out = newton_schulz(torch.zeros(17, 33, device=device))
    assert torch.equal(out, torch.zeros_like(out))
    # A zero matrix inside a stack stays zero; its neighbours are normalised on their own.
    G = torch.randn(3, 16, 28, device=device)
    G[1] = 0
    out = newton_schulz(G)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert_reachable_in_band(G[0], out[0])


@pytest.mark.parametrize(
    "G, kwargs, match",
    [
        (torch.randn(8), {}, "got \\(8,\\)"),
        (torch.randn(2, 3, 4, 5), {}, "got \\(2, 3, 4, 5\\)"),
        (torch.ones(4, 6, dtype=torch.int64), {}, "torch.int64"),
        (torch.ones(4, 6, dtype=torch.bool), {}, "torch.bool"),
        (torch.randn(4, 6, dtype=torch.complex64), {}, "torch.complex64"),
        (torch.randn(4, 6), {"coefficients": "cubic"}, "unknown coefficients 'cubic'"),
        (torch.randn(4, 6), {"coefficients": [(1.0, 2.0)]}, "coefficients must be"),
        (torch.randn(4, 6), {"coefficients": None}, "coefficients must be"),
        (torch.randn(4, 6), {"dtype": torch.float64}, "dtype must be"),
        (torch.randn(4, 6), {"steps": 0}, "steps must be a positive int"),
    ],
    ids=["1-D", "4-D", "int64", "bool", "complex", "bad-name", "bad-triple", "none-coefficients", "bad-dtype", "zero-steps"],
)
def test_bad_input_raises_one_line(G, kwargs, match):
    for fn in (newton_schulz, newton_schulz_ref):
        with pytest.raises(ValueError, match=match) as exc_info:
            fn(G, **kwargs)
        one_line(exc_info)


def test_kernel_launchers_reject_bad_shapes():
    with pytest.raises(ValueError, match="square"):
        xxt_plus(torch.randn(4, 6), 1.0, 1.0)
    with pytest.raises(ValueError, match="one dtype"):
        bx_plus_ax(torch.randn(4, 4), torch.randn(5, 6), 1.0)
    with pytest.raises(ValueError, match="^xxt: expected float32, float16 or bfloat16, got torch.int64$"):
        xxt(torch.ones(4, 6, dtype=torch.int64))


@pytest.mark.parametrize("case, match", [
    ("xxt_small", r"^xxt: out must be \(6, 6\) torch.float32 on cpu, not an input, got \(3, 3\) torch.float32 on cpu$"),
    ("xxt_dtype", r"^xxt: out must be .*, got \(6, 6\) torch.float16 on cpu$"),
    ("xxt_plus_alias", r"^xxt_plus: out must be .*, not an input, got \(6, 6\) torch.float32 on cpu \(an input\)$"),
    ("bx_alias", r"^bx_plus_ax: out must be \(6, 10\) .* \(an input\)$"),
    ("bx_shape", r"^bx_plus_ax: out must be \(6, 10\) .*, got \(6, 9\) "),
    ("bx_device", r"^bx_plus_ax: need B .* of one dtype and device, got \(6, 6\) torch.float32 on meta and "),
])
def test_kernel_launchers_reject_bad_out_buffers(case, match):
    # the kernels write out's whole shape through its strides (past the end of a smaller one: a corrupted heap)
    # while reading the inputs (an aliased out: wrong numbers); a B on another device must not reach the launch
    X = torch.randn(6, 10)
    A = X @ X.T
    calls = {"xxt_small": lambda: xxt(X, out=torch.empty(3, 3)), "xxt_dtype": lambda: xxt(X, out=A.half()),
             "xxt_plus_alias": lambda: xxt_plus(A, 1.0, 1.0, out=A), "bx_alias": lambda: bx_plus_ax(A, X, 1.0, out=X),
             "bx_shape": lambda: bx_plus_ax(A, X, 1.0, out=torch.empty(6, 9)),
             "bx_device": lambda: bx_plus_ax(A.to("meta"), X, 1.0)}
    with pytest.raises(ValueError, match=match) as exc_info:
        calls[case]()
    one_line(exc_info)


def test_the_op_checks_its_input_once_not_at_each_step(monkeypatch):
    """Muon calls the op every optimizer step: its input checks run once per call, not three per iteration."""
    from kernels import newton_schulz as ns

    calls = []
    for name in ("_check_inputs", "_check_out"):
        check = getattr(ns, name)
        monkeypatch.setattr(ns, name, lambda *a, check=check, **k: calls.append(a[0]) or check(*a, **k))
    G = torch.randn(24, 40)
    counts = []
    for steps in (1, 5):
        calls.clear()
        newton_schulz(G, steps=steps, dtype=torch.float32)
        counts.append(len(calls))
    assert counts[0] == counts[1] and calls == ["newton_schulz"], calls


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_traces_the_op(device, backend):
    torch._dynamo.reset()
    compiled = torch.compile(newton_schulz, backend=backend, fullgraph=True)
    G = torch.randn(3, 16, 28, device=device)
    assert_close(compiled(G), newton_schulz(G), name=f"compiled ({backend})", atol=0, rtol=0)


# ------------------------------------------------------------------------------------- GPU, bf16


@gpu
@pytest.mark.parametrize("shape", [(129, 77), (768, 3072), (5, 100, 300)], ids=str)
def test_symmetric_kernels_bf16_within_twice_torch_error(shape):
    X = torch.randn(shape, device="cuda").bfloat16()
    assert_error_within(xxt(X), xxt_ref(X.float()), xxt_ref(X), name="xxt bf16", atol=1e-2)
    A = xxt(X) / shape[-1]
    A32 = A.float()
    alpha, beta = QUINTIC[2], QUINTIC[1]
    ours, exact, torch_bf16 = xxt_plus(A, alpha, beta), alpha * A32 @ A32 + beta * A32, alpha * A @ A + beta * A
    assert_error_within(ours, exact, torch_bf16, name="xxt_plus bf16", atol=1e-2)
    ours, exact, torch_bf16 = bx_plus_ax(A, X, 1.5), A32 @ X.float() + 1.5 * X.float(), A @ X + 1.5 * X
    assert_error_within(ours, exact, torch_bf16, name="bx_plus_ax bf16", atol=1e-2)


@gpu
@pytest.mark.parametrize("coefficients", ["quintic", "polar_express"])
@pytest.mark.parametrize("shape", [(768, 3072), (3072, 768), (4, 768, 768), (5, 100, 300)], ids=str)
def test_newton_schulz_bf16_within_twice_torch_error(shape, coefficients):
    G = torch.randn(shape, device="cuda")
    ours = newton_schulz(G, coefficients=coefficients)  # bf16 working dtype on CUDA
    ref32 = newton_schulz_ref(G, coefficients=coefficients, dtype=torch.float32)
    ref16 = newton_schulz_ref(G, coefficients=coefficients)
    assert_error_within(ours, ref32, ref16, name=f"newton_schulz bf16 {coefficients}", atol=1e-3)
    assert_reachable_in_band(G, ours)
