"""kernels/norm.py against PyTorch: outputs and every gradient, awkward shapes, strides, compile, errors.

References are F.rms_norm / F.layer_norm evaluated in float64 on the same (already rounded) inputs, so
the tolerance table in tests/helpers.py measures only our kernel's rounding. On CPU the kernels run
under Triton's interpreter, which stores bf16 by truncation (up to 1 ulp, not 0.5): the bf16 row of
the table (2e-2) covers it. On a GPU, bf16 is held to flash-attention's "2x PyTorch's own error" rule.
"""
import pytest
import torch
import torch.nn.functional as F

from kernels.norm import MAX_ROW_BYTES, add_rms_norm, layer_norm, layer_norm_ref, rms_norm, rms_norm_ref
from helpers import assert_close, assert_error_within

# 1 row; Liger's (1, 1, 1023); width 1; (3, 5, 7) leading dims; a QK-norm (B, T, H, D); a width that is
# not a power of two with rows that do not fill the last tile.
SHAPES = [(1, 1023), (1, 1, 1023), (13, 1), (3, 5, 7, 48), (2, 9, 3, 64), (37, 300)]
DTYPES = [torch.float32, torch.float16]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def _double(t):
    return None if t is None else t.detach().double()


def _params(n, dtype, device, weight: bool, bias: bool):
    """(w, b): a weight near 1 and a small bias, or None for each left out."""
    w = _leaf((1 + 0.1 * torch.randn(n)).to(device, dtype)) if weight else None
    b = _leaf((0.1 * torch.randn(n)).to(device, dtype)) if bias else None
    return w, b


def _forward_backward(fn, inputs, dy):
    """y = fn(*inputs); y.backward(dy); returns y and the gradient of each input (None stays None)."""
    leaves = [None if t is None else _leaf(t) for t in inputs]
    y = fn(*leaves)
    y.backward(dy)
    return y.detach(), [None if t is None else t.grad for t in leaves]


def _norms(norm: str, n: int, eps):
    """(ours, PyTorch's), each a function of (x, w, b); eps=None takes each op's default."""
    if norm == "rms":
        return (lambda x, w, b: rms_norm(x, w, eps)), (lambda x, w, b: F.rms_norm(x, (n,), w, eps))
    eps = 1e-5 if eps is None else eps
    return (lambda x, w, b: layer_norm(x, w, b, eps)), (lambda x, w, b: F.layer_norm(x, (n,), w, b, eps))


def _check_against(ours, ref, dtype, names=("x", "weight", "bias")):
    (y, grads), (y_ref, grads_ref) = ours, ref
    assert_close(y, y_ref, name="y", dtype=dtype)
    for name, g, g_ref in zip(names, grads, grads_ref):
        if g_ref is not None:
            assert g is not None, f"{name}: no gradient"
            assert_close(g, g_ref, name=f"d{name}", dtype=dtype)


def _compare_with_torch(norm, x, w, b, dy, *, eps=None, dtype=None):
    """Our y, dx, dw, db against PyTorch's in float64 on the same inputs, with the table for `dtype`."""
    if norm == "rms" and eps is None:
        eps = torch.finfo(x.dtype).eps  # F.rms_norm's default for x's dtype, not for float64
    ours, torch_norm = _norms(norm, x.shape[-1], eps)
    got = _forward_backward(ours, [x, w, b], dy)
    want = _forward_backward(torch_norm, [_double(x), _double(w), _double(b)], dy.double())
    _check_against(got, want, dtype or x.dtype)
    return got


@pytest.mark.parametrize("weight", [False, True], ids=["no_weight", "weight"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_rms_norm_matches_torch(shape, dtype, weight, device):
    x = torch.randn(shape, device=device, dtype=dtype)
    if shape[-1] == 1:
        # Width 1: dx = rstd·g·(1 − x̂²) cancels in fp32 as |x| → 0 (PyTorch's fp32 loses the same
        # digits), so keep |x| away from 0.
        x = x.sign() * x.abs().clamp(min=0.1)
    w, _ = _params(shape[-1], dtype, device, weight, False)
    _compare_with_torch("rms", x, w, None, torch.randn_like(x))


@pytest.mark.parametrize("affine", ["none", "weight", "weight_bias", "bias"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_layer_norm_matches_torch(shape, dtype, affine, device):
    x = torch.randn(shape, device=device, dtype=dtype)
    w, b = _params(shape[-1], dtype, device, "weight" in affine, "bias" in affine)
    _compare_with_torch("layer", x, w, b, torch.randn_like(x))


@pytest.mark.parametrize("norm", ["rms", "layer"])
def test_bf16_within_table(norm, device):
    x = torch.randn(2, 9, 3, 64, device=device, dtype=torch.bfloat16)
    w, b = _params(64, torch.bfloat16, device, True, norm == "layer")
    _compare_with_torch(norm, x, w, b, torch.randn_like(x))


@pytest.mark.parametrize("norm", ["rms", "layer"])
def test_fp32_params_with_fp16_activations(norm, device):
    x = torch.randn(5, 7, 160, device=device, dtype=torch.float16)
    w, b = _params(160, torch.float32, device, True, norm == "layer")
    y, (dx, dw, _) = _compare_with_torch(norm, x, w, b, torch.randn_like(x), dtype=torch.float16)
    assert y.dtype == dx.dtype == torch.float16 and dw.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_rms_norm_default_eps_is_dtype_eps(dtype, device):
    # Rows with mean(x²) ~ eps, so eps matters: None must mean finfo(dtype).eps, as in F.rms_norm.
    eps = torch.finfo(dtype).eps
    x = (eps**0.5 * torch.randn(4, 64)).to(device, dtype)
    assert_close(rms_norm(x), F.rms_norm(x.double(), (64,), eps=eps), name="y", dtype=dtype)
    assert not torch.allclose(rms_norm(x, eps=4 * eps).double(), rms_norm(x).double(), rtol=0.1)


def test_references_match_torch(device):
    x, w, b = (torch.randn(s, device=device) for s in [(5, 33), (33,), (33,)])
    assert_close(rms_norm_ref(x, w), F.rms_norm(x, (33,), w), name="rms_norm_ref")
    assert_close(rms_norm_ref(x, w, eps=1e-3), F.rms_norm(x, (33,), w, 1e-3), name="rms_norm_ref eps")
    assert_close(layer_norm_ref(x, w, b), F.layer_norm(x, (33,), w, b), name="layer_norm_ref")


@pytest.mark.parametrize("dtype", [*DTYPES, torch.bfloat16], ids=str)
@pytest.mark.parametrize("use_sum", [True, False], ids=["sum_used", "sum_unused"])
def test_add_rms_norm_matches_torch(dtype, use_sum, device):
    shape, n, eps = (3, 11, 96), 96, torch.finfo(dtype).eps
    x, r, ds, dy = (torch.randn(shape, device=device, dtype=dtype) for _ in range(4))
    w, _ = _params(n, dtype, device, True, False)

    def run(fn, x, r, w):
        x, r, w = _leaf(x), _leaf(r), _leaf(w)
        s, y = fn(x, r, w)
        loss = (y * dy.to(y.dtype)).sum() + ((s * ds.to(s.dtype)).sum() if use_sum else 0)
        loss.backward()
        return s.detach(), y.detach(), x.grad, r.grad, w.grad

    ours = run(add_rms_norm, x, r, w)
    assert_close(ours[0], x.double() + r.double(), name="sum", dtype=dtype)

    def torch_add_rms_norm(x, r, w):
        # The kernel normalises the sum as stored in dtype (the interpreter rounds bf16 by truncation):
        # take that rounding from its output, the gradient passing straight through.
        s = x + r
        s = s + (ours[0].double() - s).detach()
        return s, F.rms_norm(s, (n,), w, eps)

    ref = run(torch_add_rms_norm, x.double(), r.double(), w.double())
    for name, a, e in zip(["y", "dx", "dresidual", "dweight"], ours[1:], ref[1:]):
        assert_close(a, e, name=name, dtype=dtype)


@pytest.mark.parametrize("norm", ["rms", "layer"])
def test_non_contiguous_inputs_and_grads(norm, device):
    # x: a transposed (T, B, D) -> (B, T, D) view (copied) and a column slice of wider rows (read in
    # place); dy: transposed, and expanded from a scalar as y.sum().backward() gives (stride 0).
    d = 80
    w, b = _params(d, torch.float32, device, True, norm == "layer")
    transposed = torch.randn(9, 4, d, device=device).transpose(0, 1)  # (4, 9, d)
    sliced = torch.randn(4, 9, 2 * d, device=device)[..., :d]  # (4, 9, d), row stride 2d
    dy_transposed = torch.randn(9, 4, d, device=device).transpose(0, 1)
    dy_expanded = torch.ones((), device=device).expand(4, 9, d)
    for x in (transposed, sliced):
        assert not x.is_contiguous()
        for dy in (dy_transposed, dy_expanded):
            _compare_with_torch(norm, x, w, b, dy, eps=1e-6)


def test_weight_grad_is_deterministic(device):
    x, dy = torch.randn(257, 384, device=device), torch.randn(257, 384, device=device)
    w, b = _params(384, torch.float32, device, True, True)
    first = _forward_backward(layer_norm, [x, w, b], dy)[1]
    second = _forward_backward(layer_norm, [x, w, b], dy)[1]
    for a, c in zip(first, second):
        assert torch.equal(a, c)


def test_zero_rows(device):
    x = torch.randn(0, 3, 16, device=device)
    w, b = _params(16, torch.float32, device, True, True)
    y, (dx, dw, db) = _forward_backward(layer_norm, [x, w, b], torch.randn(0, 3, 16, device=device))
    assert y.shape == dx.shape == (0, 3, 16)
    assert torch.equal(dw, torch.zeros(16, device=device)) and torch.equal(db, torch.zeros(16, device=device))


@pytest.mark.parametrize("op", ["rms_norm", "layer_norm", "add_rms_norm"])
def test_custom_ops_pass_opcheck(op, device):
    # Schema, fake (meta) implementation, autograd registration and AOT dispatch, per torch.library.
    x, r = torch.randn(3, 5, 24, device=device), torch.randn(3, 5, 24, device=device)
    w, b = _params(24, torch.float32, device, True, True)
    args = {"rms_norm": (x, w, 1e-6), "layer_norm": (x, w, b, 1e-5), "add_rms_norm": (x, r, w, 1e-6)}[op]
    torch.library.opcheck(getattr(torch.ops.speedrun, op).default, args)


def test_torch_compile_traces_forward_and_backward(device):
    def block(x, r, w, b):
        s, h = add_rms_norm(x, r, w)
        q = rms_norm(h.view(2, 9, 3, 32))  # QK-norm shape (B, T, H, D)
        return layer_norm(q.view(2, 9, 96) + s, w, b)

    x, r, dy = (torch.randn(2, 9, 96, device=device) for _ in range(3))
    w, b = _params(96, torch.float32, device, True, True)
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    eager = _forward_backward(block, [x, r, w, b], dy)
    traced = _forward_backward(compiled, [x, r, w, b], dy)
    _check_against(traced, eager, torch.float32, ["x", "residual", "weight", "bias"])


@pytest.mark.parametrize(
    "case, match",
    [
        ("int_dtype", "dtype torch.int64"),
        ("weight_shape", r"weight has shape \(63,\), expected \(64,\)"),
        ("bias_shape", r"bias has shape \(2, 64\)"),
        ("too_wide", "wider than 32768"),
        ("scalar", "non-empty last dim"),
        ("residual_shape", "residual is"),
    ],
)
def test_bad_inputs_raise_one_line_value_errors(case, match, device):
    x = torch.randn(4, 64, device=device)
    call = {
        "int_dtype": lambda: rms_norm(torch.ones(4, 64, dtype=torch.int64, device=device)),
        "weight_shape": lambda: rms_norm(x, torch.ones(63, device=device)),
        "bias_shape": lambda: layer_norm(x, None, torch.ones(2, 64, device=device)),
        "too_wide": lambda: layer_norm(torch.ones(1, MAX_ROW_BYTES // 2 + 1, device=device).half()),
        "scalar": lambda: rms_norm(torch.tensor(1.0, device=device)),
        "residual_shape": lambda: add_rms_norm(x, torch.randn(4, 32, device=device)),
    }[case]
    with pytest.raises(ValueError, match=match) as err:
        call()
    assert "\n" not in str(err.value)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("n", [768, 1023, 4096])
@pytest.mark.parametrize("norm", ["rms", "layer"])
def test_bf16_error_within_twice_torch_on_gpu(norm, n):
    # flash-attention's rule: our error against float64 <= 2x PyTorch's own bf16 error + a small atol.
    x = torch.randn(4096, n, device="cuda", dtype=torch.bfloat16)
    dy = torch.randn_like(x)
    w, b = _params(n, torch.bfloat16, "cuda", True, norm == "layer")
    ours, torch_norm = _norms(norm, n, torch.finfo(torch.bfloat16).eps if norm == "rms" else 1e-5)
    got = _forward_backward(ours, [x, w, b], dy)
    torch_bf16 = _forward_backward(torch_norm, [x, w, b], dy)
    exact = _forward_backward(torch_norm, [_double(x), _double(w), _double(b)], dy.double())
    assert_error_within(got[0], exact[0], torch_bf16[0], name="y", atol=1e-3)
    for name, g, g_torch, g_exact in zip(["x", "weight", "bias"], got[1], torch_bf16[1], exact[1]):
        if g_exact is not None:
            assert_error_within(g, g_exact, g_torch, name=f"d{name}", atol=1e-3)
