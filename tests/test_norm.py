"""kernels/norm.py against PyTorch: outputs and every gradient, awkward shapes, strides, compile, errors.

Strided inputs keep their layout in every test (`_leaf`), and the trainer's QK-norm inputs, chunked views
of the QKV projection, are checked for values, gradients and that the kernels read them in place.

References are F.rms_norm / F.layer_norm evaluated in float64 on the same (already rounded) inputs, so
the tolerance table in tests/helpers.py measures only our kernel's rounding. On CPU the kernels run
under Triton's interpreter, which stores bf16 by truncation (up to 1 ulp, not 0.5): the bf16 row of
the table (2e-2) covers it. On a GPU, bf16 is held to flash-attention's "2x PyTorch's own error" rule.
"""
import pytest
import torch
import torch.nn.functional as F

from kernels.norm import (MAX_ROW_BYTES, add_rms_norm, add_rms_norm_ref, layer_norm, layer_norm_ref, mix_rms_norm,
                          mix_rms_norm_ref, rms_norm, rms_norm_ref, rms_norm_rotary, rms_norm_rotary_ref)
from helpers import assert_close, assert_error_within

# 1 row; Liger's (1, 1, 1023); width 1; (3, 5, 7) leading dims; a QK-norm (B, T, H, D); a width that is
# not a power of two with rows that do not fill the last tile.
SHAPES = [(1, 1023), (1, 1, 1023), (13, 1), (3, 5, 7, 48), (2, 9, 3, 64), (37, 300)]
DTYPES = [torch.float32, torch.float16]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _leaf(t: torch.Tensor) -> torch.Tensor:
    """A leaf copy of t with t's strides, gaps included (clone() would make a slice of wider rows contiguous)."""
    leaf = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)
    return leaf.copy_(t.detach()).requires_grad_(True)


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


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 1023), (13, 1), (2, 9, 33), (3, 5, 7, 48)], ids=str)
def test_add_rms_norm_without_weight_matches_its_reference(shape, dtype, device):
    """The trainer's use (`train_gpt.Block`): no weight, the sum carried on as the next residual and the normed
    output fed to the MLP, so both outputs get a gradient. Against `add_rms_norm_ref` in float64, forward and
    the gradients of x and the residual."""
    x, r, ds, dy = (torch.randn(shape, device=device, dtype=dtype) for _ in range(4))
    eps = torch.finfo(dtype).eps

    def run(fn, x, r, eps):
        x, r = _leaf(x), _leaf(r)
        s, y = fn(x, r, None, eps)
        ((y * dy.to(y.dtype)).sum() + (s * ds.to(s.dtype)).sum()).backward()
        return s.detach(), y.detach(), x.grad, r.grad

    ours = run(add_rms_norm, x, r, None)  # eps None: finfo(dtype).eps, as rms_norm's default
    ref = run(add_rms_norm_ref, _double(x), _double(r), eps)
    for name, a, e in zip(["sum", "y", "dx", "dresidual"], ours, ref):
        assert a.dtype == dtype and a.shape == shape, f"{name}: {a.dtype} {tuple(a.shape)}"
        assert_close(a, e, name=name, dtype=dtype)


@pytest.mark.parametrize("residual", [True, False], ids=["residual", "no_residual"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 1023), (13, 1), (2, 9, 33), (3, 5, 7, 48), (37, 300)], ids=str)
def test_mix_rms_norm_matches_its_reference(shape, dtype, residual, device):
    """The trainer's block entry (`train_gpt.Block`): s = λ0·(x + r) + λ1·x0 carried on as the residual and its
    norm fed to attention, so both outputs get a gradient. Against `mix_rms_norm_ref` in float64: s, the norm, and
    the gradients of x, r, x0 and both λs (the λ gradients are the kernel's per-program partial sums, summed)."""
    x, r, x0, ds, dy = (torch.randn(shape, device=device, dtype=dtype) for _ in range(5))
    lambdas = torch.tensor([0.8, -0.35], device=device)  # fp32, as the trainer's parameters
    eps = torch.finfo(dtype).eps

    def run(fn, x, r, x0, lambdas, eps):
        leaves = [_leaf(t) for t in (x, r, x0, lambdas)]
        s, y = fn(leaves[0], leaves[1] if residual else None, leaves[2], leaves[3], eps)
        ((y * dy.to(y.dtype)).sum() + (s * ds.to(s.dtype)).sum()).backward()
        return [s.detach(), y.detach()] + [t.grad for t in leaves]

    ours = run(mix_rms_norm, x, r, x0, lambdas, None)  # eps None: finfo(dtype).eps
    ref = run(mix_rms_norm_ref, *(_double(t) for t in (x, r, x0, lambdas)), eps)
    for name, a, e in zip(["sum", "y", "dx", "dresidual", "dx0", "dlambdas"], ours, ref):
        if name == "dresidual" and not residual:
            assert a is None
            continue
        assert a.shape == e.shape and a.dtype == (torch.float32 if name == "dlambdas" else dtype), name
        # dλ sums a row's worth of products per element: relative to its size, as the table's rtol reads it
        scale = 1.0 if name != "dlambdas" else float(x.numel()) ** 0.5
        assert_close(a / scale, e / scale, name=name, dtype=dtype)

def _rotary_tables(T: int, D: int, device):
    """train_gpt.Rotary's tables: D / 4 frequencies of base 1024, then D / 4 zeros, (T, D / 2) fp32."""
    freq = (1 / 1024) ** torch.linspace(0, 1, steps=D // 4)
    freq = torch.cat([freq, freq.new_zeros(D // 2 - D // 4)])
    theta = torch.outer(torch.arange(T, dtype=torch.float32), freq)
    return theta.cos().to(device), theta.sin().to(device)


@pytest.mark.parametrize("layout", ["contiguous", "qkv view"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B, T, H, D", [(1, 1, 1, 64), (2, 9, 3, 64), (1, 37, 6, 128), (3, 5, 2, 48), (2, 7, 1, 6)],
                         ids=str)
def test_rms_norm_rotary_matches_its_reference(B, T, H, D, dtype, layout, device):
    """QK-norm + rotary in one pass against `rms_norm_rotary_ref` (rms_norm_ref, then the rotation train_gpt's Rotary
    applies) on fp32 copies of the inputs: the output and dx, tables longer than T (validation's), rows past
    T's table rows unread; the trainer's q/k views of a packed qkv tensor read in place."""
    if layout == "qkv view":
        x = _qkv_views(torch.randn(B * T, 3 * H * D, device=device, dtype=dtype), B, T, H, D)[1]
    else:
        x = torch.randn(B, T, H, D, device=device, dtype=dtype)
    cos, sin = _rotary_tables(T + 5, D, device)
    dy = torch.randn(B, T, H, D, device=device, dtype=dtype)
    y, (dx,) = _forward_backward(lambda x: rms_norm_rotary(x, cos, sin), [x], dy)
    eps = torch.finfo(dtype).eps
    y_ref, (dx_ref,) = _forward_backward(lambda x: rms_norm_rotary_ref(x, cos, sin, eps), [x.float()], dy.float())
    assert y.dtype == dx.dtype == dtype and y.is_contiguous()
    assert_close(y, y_ref, name="y", dtype=dtype)
    assert_close(dx, dx_ref, name="dx", dtype=dtype)


def test_rotary_tables_are_the_trainers(device):
    """The tables these tests rotate with are train_gpt.Rotary's (the trainer passes its cos, sin)."""
    import train_gpt

    rotary = train_gpt.Rotary(48, 40)
    cos, sin = _rotary_tables(40, 48, "cpu")
    assert torch.equal(rotary.cos, cos) and torch.equal(rotary.sin, sin)

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
    assert_close(layer_norm_ref(x), F.layer_norm(x, (33,)), name="layer_norm_ref without weight and bias")


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
    # x: a transposed (T, B, D) -> (B, T, D) view and a column slice of wider rows (both read in place), a
    # permuted slice (three stride groups: copied); dy: transposed, and expanded from a scalar as
    # y.sum().backward() gives (stride 0 everywhere: copied).
    d = 80
    w, b = _params(d, torch.float32, device, True, norm == "layer")
    transposed = torch.randn(9, 4, d, device=device).transpose(0, 1)  # (4, 9, d)
    sliced = torch.randn(4, 9, 2 * d, device=device)[..., :d]  # (4, 9, d), row stride 2d
    permuted = torch.randn(9, 4, 3, 2 * d, device=device)[..., :d].permute(1, 0, 2, 3)  # (4, 9, 3, d)
    for x in (transposed, sliced, permuted):
        assert not x.is_contiguous()
        dy_transposed = torch.randn(x.shape[1], x.shape[0], *x.shape[2:], device=device).transpose(0, 1)
        dy_expanded = torch.ones((), device=device).expand(x.shape)
        for dy in (dy_transposed, dy_expanded):
            _compare_with_torch(norm, x, w, b, dy, eps=1e-6)


# (B, T, H, D) of QKV-projection views: one row; D not a power of two; primes; one head (the leading dims
# then nest into one stride group); the trainer's H = 6, D = 128.
QKV_SHAPES = [(1, 1, 1, 64), (3, 5, 2, 48), (1, 13, 5, 31), (2, 3, 1, 100), (2, 9, 6, 128)]


def _qkv_views(qkv: torch.Tensor, B: int, T: int, H: int, D: int):
    """q, k, v as train_gpt.py makes them: F.linear's (B·T, 3·H·D) output viewed as (B, T, 3H, D), chunked."""
    return qkv.view(B, T, 3 * H, D).chunk(3, dim=-2)


@pytest.mark.parametrize("norm", ["rms", "layer"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", QKV_SHAPES, ids=str)
def test_qk_norm_on_qkv_views(shape, dtype, norm, device):
    # Norms of q and k as the trainer calls them: both outputs and every gradient, the one reaching the QKV
    # output included, against PyTorch in float64 (with a weight so dw is checked; the trainer's has none).
    # fp32 parameters, as a trainer keeps them: autograd sums q's and k's dw in the parameter's dtype, and
    # in fp16 that sum's own rounding (cancelling partials of ~10) would exceed the table.
    B, T, H, D = shape
    qkv = torch.randn(B * T, 3 * H * D, device=device, dtype=dtype)
    dys = [torch.randn(B, T, H, D, device=device, dtype=dtype) for _ in range(3)]
    w, b = _params(D, torch.float32, device, True, norm == "layer")
    ours, torch_norm = _norms(norm, D, torch.finfo(dtype).eps if norm == "rms" else 1e-5)

    def run(fn, qkv, w, b):
        qkv, w, b = _leaf(qkv), _leaf(w), None if b is None else _leaf(b)
        q, k, v = _qkv_views(qkv, B, T, H, D)
        yq, yk = fn(q, w, b), fn(k, w, b)
        torch.autograd.backward([yq, yk, v], [dy.to(yq.dtype) for dy in dys])
        return [yq.detach(), yk.detach(), qkv.grad, w.grad, None if b is None else b.grad]

    got = run(ours, qkv, w, b)
    want = run(torch_norm, qkv.double(), _double(w), _double(b))
    for name, a, e in zip(["y(q)", "y(k)", "dqkv", "dweight", "dbias"], got, want):
        if e is not None:
            assert_close(a, e, name=name, dtype=dtype)
    assert got[0].dtype == got[2].dtype == dtype and got[0].is_contiguous()


class _LaunchSpy:
    """Stands in for a @triton.jit kernel: records each launch's arguments by name, then launches the kernel."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append({**dict(zip(self.kernel.arg_names, args)), **kwargs})
            return self.kernel[grid](*args, **kwargs)

        return launch


@pytest.fixture
def norm_launches(monkeypatch):
    """(forward, backward) launch spies on kernels.norm's two kernels."""
    import kernels.norm as norm_module

    spies = _LaunchSpy(norm_module._norm_fwd_kernel), _LaunchSpy(norm_module._norm_bwd_kernel)
    monkeypatch.setattr(norm_module, "_norm_fwd_kernel", spies[0])
    monkeypatch.setattr(norm_module, "_norm_bwd_kernel", spies[1])
    return spies


@pytest.mark.parametrize("op", ["rms_norm", "layer_norm", "add_rms_norm"])
def test_qkv_views_are_read_in_place(op, norm_launches, device):
    # No copy of the input, forward or backward: the kernels get q's (and k's) own memory and strides. A
    # .contiguous() or a copying reshape in a launcher would hand them another pointer.
    fwd, bwd = norm_launches
    B, T, H, D = 2, 5, 3, 32
    qkv = torch.randn(B * T, 3 * H * D, device=device, requires_grad=True)
    q, k, _ = _qkv_views(qkv, B, T, H, D)
    dy = torch.randn(B, T, H, D, device=device)
    fn = {"rms_norm": lambda: rms_norm(q), "layer_norm": lambda: layer_norm(q),
          "add_rms_norm": lambda: add_rms_norm(q, k)[1]}[op]
    torch.autograd.backward(fn(), dy)
    row_layout = (3 * H * D, D, H)  # stride between tokens, stride between heads, heads per token
    [launch] = fwd.launches
    assert launch["x_ptr"].data_ptr() == q.data_ptr()
    assert (launch["x_stride_outer"], launch["x_stride_inner"], launch["rows_inner"]) == row_layout
    if op == "add_rms_norm":
        assert launch["res_ptr"].data_ptr() == k.data_ptr()
        assert (launch["res_stride_outer"], launch["res_stride_inner"]) == row_layout[:2]
    [launch] = bwd.launches
    assert launch["dy_ptr"].data_ptr() == dy.data_ptr()
    if op != "add_rms_norm":  # add_rms_norm's backward reads the contiguous sum it saved
        assert launch["x_ptr"].data_ptr() == q.data_ptr()
        assert (launch["x_stride_outer"], launch["x_stride_inner"], launch["rows_inner"]) == row_layout


def test_qkv_views_reach_the_kernel_in_place_under_inductor(norm_launches, device):
    # torch.compile keeps a custom op's input strides (needs_exact_strides, the default for custom ops), so
    # the compiled trainer hands the kernel the QKV view too, not a copy inductor made.
    fwd, _ = norm_launches
    B, T, H, D = 2, 8, 3, 16

    def qk_norm(x, w):
        q, k, v = F.linear(x, w).view(B, T, 3 * H, D).chunk(3, dim=-2)
        return rms_norm(q) + rms_norm(k) + v

    x, w = torch.randn(B, T, 32, device=device), torch.randn(3 * H * D, 32, device=device)
    torch.testing.assert_close(torch.compile(qk_norm, fullgraph=True)(x, w), qk_norm(x, w))
    assert {(r["x_stride_outer"], r["x_stride_inner"], r["rows_inner"]) for r in fwd.launches} == {(3 * H * D, D, H)}


def test_row_layout_reads_views_in_place_and_copies_the_rest(device):
    from kernels.norm import _row_layout

    B, T, H, D = 2, 5, 3, 16
    q = _qkv_views(torch.randn(B * T, 3 * H * D, device=device), B, T, H, D)[0]
    contiguous = torch.randn(B, T, H, D, device=device)
    rows_inner, [(t, outer, inner)] = _row_layout(q)
    assert t is q and (rows_inner, outer, inner) == (H, 3 * H * D, D)
    rows_inner, [(t, outer, _)] = _row_layout(contiguous)  # one group: rows one stride apart
    assert t is contiguous and (rows_inner, outer) == (1, D)
    # a contiguous dy beside the strided x takes x's grouping: (B·T at H·D, H at D)
    rows_inner, [(t, *x_strides), (u, *dy_strides)] = _row_layout(q, contiguous)
    assert t is q and u is contiguous and rows_inner == H and dy_strides == [H * D, D]
    permuted = torch.randn(T, B, H, 2 * D, device=device)[..., :D].transpose(0, 1)  # three groups: copied
    rows_inner, [(t, outer, inner)] = _row_layout(permuted)
    assert t is not permuted and t.is_contiguous() and torch.equal(t, permuted) and rows_inner == 1


def test_output_and_grad_in_input_dtype_under_autocast(device):
    # fp16 in, fp16 out and fp16 gradient, whatever autocast's dtype: the trainer needs no cast after the norm.
    qkv = torch.randn(6, 3 * 2 * 16, device=device, dtype=torch.float16, requires_grad=True)
    q = _qkv_views(qkv, 2, 3, 2, 16)[0]
    with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
        y = rms_norm(q)
    y.backward(torch.randn_like(y))
    assert y.dtype == qkv.grad.dtype == torch.float16


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


def test_zero_rows_of_the_fused_norms(device):
    x, x0 = (torch.randn(0, 3, 16, device=device) for _ in range(2))
    lambdas = torch.tensor([1.0, 0.5], device=device)
    y, (dx, _, dx0, dlambdas) = _forward_backward(lambda *a: mix_rms_norm(*a)[1], [x, x, x0, lambdas],
                                                  torch.ones_like(x))
    assert y.shape == dx.shape == dx0.shape == (0, 3, 16) and torch.equal(dlambdas, torch.zeros(2, device=device))
    table = torch.ones(3, 8, device=device)
    y, (dq,) = _forward_backward(lambda q: rms_norm_rotary(q, table, table), [torch.randn(0, 3, 2, 16, device=device)],
                                 torch.ones(0, 3, 2, 16, device=device))
    assert y.shape == dq.shape == (0, 3, 2, 16)


@pytest.mark.parametrize("op", ["rms_norm", "rms_norm qkv view", "layer_norm", "add_rms_norm", "mix_rms_norm",
                                "mix_rms_norm no residual", "rms_norm_rotary qkv view"])
def test_custom_ops_pass_opcheck(op, device):
    # Schema, fake (meta) implementation, autograd registration and AOT dispatch, per torch.library; the
    # strided QKV view too (the fake must give the real op's contiguous output for it).
    x, r = torch.randn(3, 5, 24, device=device), torch.randn(3, 5, 24, device=device)
    q = _qkv_views(torch.randn(3 * 5, 3 * 2 * 24, device=device, requires_grad=True), 3, 5, 2, 24)[0]
    w, b = _params(24, torch.float32, device, True, True)
    lambdas = torch.tensor([0.9, 0.2], device=device, requires_grad=True)
    args = {"rms_norm": (x, w, 1e-6), "rms_norm qkv view": (q, None, 1e-6), "layer_norm": (x, w, b, 1e-5),
            "add_rms_norm": (x, r, w, 1e-6), "mix_rms_norm": (x, r, r * 0.5, lambdas, 1e-6),
            "mix_rms_norm no residual": (x, None, r, lambdas, 1e-6),
            "rms_norm_rotary qkv view": (q, *_rotary_tables(5, 24, device), 1e-6)}[op]
    torch.library.opcheck(getattr(torch.ops.speedrun, op.split()[0]).default, args)


def test_torch_compile_traces_forward_and_backward(device):
    def block(x, r, w, b):
        x, h = mix_rms_norm(x, r, h0 := r * 0.5, w[:2])
        s, h = add_rms_norm(x, h + h0, w)
        q = rms_norm(h.view(2, 9, 3, 32))  # QK-norm shape (B, T, H, D)
        q = q + rms_norm_rotary(h.view(2, 9, 3, 32), *_rotary_tables(9, 32, device))
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
        ("weight_dtype", "rms_norm: weight has dtype torch.int64; supported: float32, float16, bfloat16$"),
        ("weight_device", r"rms_norm: weight is on meta but x is on \S+$"),
        ("rotary_odd", r"rms_norm_rotary: x must be \(B, T, H, D\) with D even, got shape \(1, 4, 4, 15\)$"),
        ("too_wide", "wider than 32768"),
        ("scalar", "non-empty last dim"),
        ("residual_shape", "residual is"),
        ("mix_x0_dtype", "mix_rms_norm: x0 is"),
        ("mix_lambdas", r"mix_rms_norm: lambdas must be \(2,\) floats"),
        # the op has no gradient for the rotary tables: one that requires one would get None, silently
        ("rotary_table_grad", r"rms_norm_rotary: sin must be .*, not requiring grad, got \(5, 8\) torch.float32 on "
                              r"\S+ requiring grad$"),
    ],
)
def test_bad_inputs_raise_one_line_value_errors(case, match, device):
    x = torch.randn(4, 64, device=device)
    call = {
        "int_dtype": lambda: rms_norm(torch.ones(4, 64, dtype=torch.int64, device=device)),
        "weight_shape": lambda: rms_norm(x, torch.ones(63, device=device)),
        "bias_shape": lambda: layer_norm(x, None, torch.ones(2, 64, device=device)),
        "weight_dtype": lambda: rms_norm(x, torch.ones(64, dtype=torch.int64, device=device)),
        "weight_device": lambda: rms_norm(x, torch.ones(64, device="meta")),
        "rotary_odd": lambda: rms_norm_rotary(torch.randn(1, 4, 4, 15, device=device), torch.ones(5, 7, device=device),
                                              torch.ones(5, 7, device=device)),
        "too_wide": lambda: layer_norm(torch.ones(1, MAX_ROW_BYTES // 2 + 1, device=device).half()),
        "scalar": lambda: rms_norm(torch.tensor(1.0, device=device)),
        "residual_shape": lambda: add_rms_norm(x, torch.randn(4, 32, device=device)),
        "mix_x0_dtype": lambda: mix_rms_norm(x, None, x.half(), torch.ones(2, device=device)),
        "mix_lambdas": lambda: mix_rms_norm(x, x, x, torch.ones(3, device=device)),
        "rotary_table_grad": lambda: rms_norm_rotary(x.view(1, 4, 4, 16), torch.ones(5, 8, device=device),
                                                     torch.ones(5, 8, device=device, requires_grad=True)),
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


@pytest.mark.gpu
@needs_cuda
def test_bf16_qkv_views_within_twice_torch_on_gpu():
    # The trainer's QK-norm at its head dim, on a GPU in bf16: y and the gradient reaching the QKV output.
    B, T, H, D = 4, 256, 6, 128
    qkv = torch.randn(B * T, 3 * H * D, device="cuda", dtype=torch.bfloat16)
    dy = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16)
    eps = torch.finfo(torch.bfloat16).eps

    def run(fn, qkv):
        qkv = _leaf(qkv)
        y = fn(_qkv_views(qkv, B, T, H, D)[0])
        y.backward(dy.to(y.dtype))
        return y.detach(), qkv.grad

    got = run(rms_norm, qkv)
    torch_bf16 = run(lambda q: F.rms_norm(q, (D,), eps=eps), qkv)
    exact = run(lambda q: F.rms_norm(q, (D,), eps=eps), qkv.double())
    for name, a, t, e in zip(["y", "dqkv"], got, torch_bf16, exact):
        assert_error_within(a, e, t, name=name, atol=1e-3)
