"""kernels/mlp.py against PyTorch: the output and all three gradients, awkward shapes, the epilogues' stored
values, opcheck, torch.compile, bad inputs.

The reference is `relu2_mlp_ref` in float64 on the same (already rounded) inputs; each result is held to
flash-attention's rule (tests/helpers.py `assert_error_within`): its error is at most twice PyTorch's own, the
reference run in the same dtype on the same inputs. On a CPU the kernel runs under Triton's interpreter (fp32 and
fp16; it has no bf16 arithmetic); bf16 is GPU-marked.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton

from helpers import assert_error_within
from kernels.mlp import (CUDA_CONFIGS, GROUP_M, INTERPRETER_BLOCKS, _mlp_matmul_kernel, _relu2_mlp_op, mlp_matmul,
                         relu2_mlp, relu2_mlp_ref)

# (leading dims of x, d, f): one token; 37 and 130 tokens (a partial tile-row; 130 is 3 tile-rows of the
# interpreter's 64, two groups of 2, the last one partial); d = 40 and 48 (not multiples of the 32-wide K block);
# f = 4d and odd f (partial tile-columns); leading batch dims (B, T).
SHAPES = [((1,), 40, 160), ((37,), 48, 97), ((130,), 40, 160), ((2, 9), 48, 192), ((3, 11), 40, 101)]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _inputs(lead, d, f, dtype, device):
    """x (*lead, d) and weights at nn.Linear's init scale, so pre, post and y stay O(1)."""
    x = torch.randn(*lead, d, device=device).to(dtype)
    w_fc = (torch.randn(f, d, device=device) * d**-0.5).to(dtype)
    w_proj = (torch.randn(d, f, device=device) * f**-0.5).to(dtype)
    return x, w_fc, w_proj


def _forward_backward(fn, inputs, dy):
    """y = fn(*leaves); y.backward(dy); returns (y, [dx, dW_fc, dW_proj])."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    y = fn(*leaves)
    y.backward(dy)
    return y.detach(), [t.grad for t in leaves]


def _check(inputs, dy):
    dtype = inputs[0].dtype
    ours = _forward_backward(relu2_mlp, inputs, dy)
    exact = _forward_backward(relu2_mlp_ref, [t.double() for t in inputs], dy.double())
    torch_own = _forward_backward(relu2_mlp_ref, inputs, dy)  # PyTorch in the same dtype: the error it pays
    for name, got, want, theirs in zip(("y", "dx", "dW_fc", "dW_proj"), [ours[0], *ours[1]], [exact[0], *exact[1]],
                                       [torch_own[0], *torch_own[1]]):
        assert got.dtype == dtype and got.shape == want.shape, f"{name}: {got.dtype} {tuple(got.shape)}"
        assert_error_within(got, want, theirs, name=f"{name} {dtype}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("lead, d, f", SHAPES, ids=[f"{lead}x{d}-{f}" for lead, d, f in SHAPES])
def test_forward_and_every_gradient_match_the_reference(lead, d, f, dtype, device):
    x, w_fc, w_proj = _inputs(lead, d, f, dtype, device)
    _check([x, w_fc, w_proj], torch.randn(*lead, d, device=device).to(dtype))


def test_strided_inputs_are_read_as_they_are(device):
    # x a slice of wider rows, w_fc a transposed view, dy a transposed (T, B, d) view: no layout assumed
    x = torch.randn(37, 64, device=device)[:, :40]
    w_fc = (torch.randn(40, 97, device=device) * 40**-0.5).t()
    w_proj = torch.randn(40, 97, device=device) * 97**-0.5
    dy = torch.randn(40, 37, device=device).t()
    _check([x, w_fc, w_proj], dy)


def test_the_forward_stores_pre_and_post_squared_from_the_rounded_pre(device):
    # post is relu(pre)² of pre as stored (fp16): bit for bit what PyTorch's relu and square give on that pre
    x, w_fc, w_proj = _inputs((130,), 48, 97, torch.float16, device)
    y, pre, post = _relu2_mlp_op(x, w_fc, w_proj)
    assert torch.equal(post, torch.relu(pre).square())
    assert_error_within(pre, x.double() @ w_fc.double().t(), x @ w_fc.t(), name="pre")
    assert (pre < 0).any() and (pre > 0).any()  # both sides of the ReLU were exercised
    assert torch.equal(y, post @ w_proj.t())


def test_the_backward_gradient_is_zero_where_pre_is_not_positive(device):
    # d_pre = (dy W_proj) · 2 relu(pre): rows of x that make every pre <= 0 pass no gradient to x
    x, w_fc, w_proj = _inputs((37,), 40, 97, torch.float32, device)
    x[5] = 0.0  # pre = 0 on row 5: relu'(0) taken as 0, as PyTorch's relu backward does
    y, (dx, dw_fc, _) = _forward_backward(relu2_mlp, [x, w_fc, w_proj], torch.randn(37, 40, device=device))
    assert torch.equal(dx[5], torch.zeros_like(dx[5])) and dx.abs().sum() > 0


def test_zero_tokens(device):
    x, w_fc, w_proj = _inputs((0,), 40, 97, torch.float32, device)
    y, (dx, dw_fc, dw_proj) = _forward_backward(relu2_mlp, [x, w_fc, w_proj], torch.zeros(0, 40, device=device))
    assert y.shape == dx.shape == (0, 40)
    assert torch.equal(dw_fc, torch.zeros_like(dw_fc)) and torch.equal(dw_proj, torch.zeros_like(dw_proj))


def test_zero_width_and_zero_hidden(device):
    # d = 0 (x (M, 0)) and f = 0: the reference's empty matmuls give zeros, and so do ours
    for d, f in ((0, 97), (40, 0)):
        x, w_fc, w_proj = (torch.randn(*shape, device=device) for shape in ((2, 5, d), (f, d), (d, f)))
        dy = torch.randn(2, 5, d, device=device)
        ours, ref = _forward_backward(relu2_mlp, [x, w_fc, w_proj], dy), _forward_backward(relu2_mlp_ref,
                                                                                         [x, w_fc, w_proj], dy)
        for got, want in zip([ours[0], *ours[1]], [ref[0], *ref[1]]):
            assert got.shape == want.shape and torch.equal(got, want)


# inf x 0 in the matmuls makes NaN on purpose (as in the reference); numpy warns in the interpreter
@pytest.mark.filterwarnings("ignore:invalid value encountered in matmul:RuntimeWarning")
def test_nan_and_inf_reach_the_output_and_gradients_as_in_the_reference(device):
    # relu(NaN) is NaN (a NaN pre must not vanish into a 0); the backward passes exactly 0 where pre <= 0, an inf
    # d_post included, and NaN where pre is NaN, as torch's relu backward
    x, w_fc, w_proj = _inputs((37,), 40, 97, torch.float32, device)
    x[3, 7], x[11, 0], x[20, 5] = float("nan"), float("inf"), -float("inf")
    dy = torch.randn(37, 40, device=device)
    dy[30, 2] = float("inf")
    ours, ref = _forward_backward(relu2_mlp, [x, w_fc, w_proj], dy), _forward_backward(relu2_mlp_ref,
                                                                                     [x, w_fc, w_proj], dy)
    for name, got, want in zip(("y", "dx", "dW_fc", "dW_proj"), [ours[0], *ours[1]], [ref[0], *ref[1]]):
        assert torch.equal(got.isnan(), want.isnan()), f"{name}: NaN at {got.isnan().sum()} vs {want.isnan().sum()}"
        assert torch.equal(got.isinf(), want.isinf()), f"{name}: inf at {got.isinf().sum()} vs {want.isinf().sum()}"
        finite = want.isfinite()
        torch.testing.assert_close(got[finite], want[finite], rtol=1e-4, atol=1e-4)


def test_every_cuda_configuration_sums_k_in_the_same_blocks():
    # the autotuner's pick must not change the bits: one BLOCK_K across CUDA_CONFIGS
    assert len({bk for _, _, bk, _, _ in CUDA_CONFIGS}) == 1 and len(CUDA_CONFIGS) >= 2
    bm, bn, bk, group_m, _, _ = INTERPRETER_BLOCKS
    assert 40 % bk and 48 % bk and 97 % bn and 130 % bm  # SHAPES reach partial blocks under the interpreter...
    assert -(-130 // bm) % group_m and -(-130 // bm) > group_m  # ...and a partial last group of tile-rows


# kernels/mlp.py's matmul compiled for sm_90 (no GPU needed) with every stride a runtime int32, as a launch passes
# any stride other than 1; prints Triton's IR pointer updates, each naming its offset's type
ADDPTR_SCRIPT = """
import re, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from kernels import mlp
fn = mlp._mlp_matmul_kernel
for epilogue in ("relu2", "relu2_grad"):
    constexprs = dict(EPILOGUE=epilogue, BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, DOT_PRECISION="tf32")
    signature = {n: "constexpr" if n in constexprs else "*bf16" if n.endswith("_ptr") else "i32" for n in fn.arg_names}
    kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                            target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4, num_stages=3))
    print("\\n".join(re.findall(r"tt\\.addptr .*", kernel.asm["ttir"])))
"""


def test_every_pointer_offset_is_int64():
    """No offset wraps at 2^31: a column times W_fc's row stride (a weight over 2^31 elements) and k times a
    transposed x's column stride (over 2^25 rows) are the cases no test here can allocate, so the compiled IR is
    read instead: every `tt.addptr` adds an i64 offset. In a subprocess: this session's kernels are interpreted."""
    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", ADDPTR_SCRIPT], cwd=repo, env={**env, "PYTHONPATH": str(repo)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    updates = proc.stdout.splitlines()
    offsets = [re.search(r", (tensor<[0-9x]+x(\w+)>|(\w+))\s+loc", line) for line in updates]
    assert len(updates) >= 20 and all(m for m in offsets), updates
    narrow = [line for line, m in zip(updates, offsets) if (m.group(2) or m.group(3)) != "i64"]
    assert not narrow, narrow


def test_custom_ops_pass_opcheck(device):
    x, w_fc, w_proj = (t.requires_grad_() for t in _inputs((19,), 40, 97, torch.float32, device))
    torch.library.opcheck(torch.ops.speedrun.relu2_mlp.default, (x, w_fc, w_proj))
    _, pre, post = _relu2_mlp_op(x.detach(), w_fc.detach(), w_proj.detach())
    dy = torch.randn(19, 40, device=device)
    torch.library.opcheck(torch.ops.speedrun.relu2_mlp_bwd.default, (dy, x.detach(), w_fc.detach(),
                                                                      w_proj.detach(), pre, post))


def test_torch_compile_traces_forward_and_backward(device):
    def block(x, w_fc, w_proj):  # the trainer's use: a residual around the MLP, leading (B, T) dims
        return x + relu2_mlp(x * 0.5, w_fc, w_proj)

    inputs = _inputs((2, 9), 48, 101, torch.float32, device)
    dy = torch.randn(2, 9, 48, device=device)
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    eager = _forward_backward(block, inputs, dy)
    traced = _forward_backward(compiled, inputs, dy)
    for got, want in zip([traced[0], *traced[1]], [eager[0], *eager[1]]):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("case, match", [
    ("int_dtype", r"relu2_mlp: x has dtype torch.int64"),
    ("weight_dtype", r"must share a dtype"),
    ("fc_shape", r"x \(\.\.\., 40\) needs w_fc \(f, 40\)"),
    ("proj_shape", r"and w_proj \(40, f\), got \(97, 40\) and \(40, 96\)"),
    ("scalar_x", r"expected x \(\.\.\., d\)"),
    ("weight_ndim", r"expected x \(\.\.\., d\), w_fc \(f, d\)"),
    ("weight_device", r"must be on one device, got \S+, \S+, meta$"),
])
def test_bad_inputs_raise_one_line_value_errors(case, match, device):
    x, w_fc, w_proj = _inputs((5,), 40, 97, torch.float32, device)
    args = {"int_dtype": (x.long(), w_fc, w_proj), "weight_dtype": (x, w_fc.half(), w_proj),
            "fc_shape": (x, w_fc[:, :39], w_proj), "proj_shape": (x, w_fc, w_proj[:, :96]),
            "scalar_x": (x[0, 0], w_fc, w_proj), "weight_ndim": (x, w_fc[None], w_proj),
            "weight_device": (x, w_fc, w_proj.to("meta"))}[case]
    with pytest.raises(ValueError, match=match) as info:
        relu2_mlp(*args)
    assert "\n" not in str(info.value)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("lead, d, f", [((1,), 40, 160), ((130,), 48, 97), ((4, 1024), 768, 3072)],
                         ids=["1x40-160", "130x48-97", "4096x768-3072"])
def test_bf16_on_the_gpu_within_twice_pytorchs_error(lead, d, f):
    x, w_fc, w_proj = _inputs(lead, d, f, torch.bfloat16, "cuda")
    _check([x, w_fc, w_proj], torch.randn(*lead, d, device="cuda").to(torch.bfloat16))


def _launch(a, b, pre, out, epilogue, config):
    """kernels.mlp's matmul with one of CUDA_CONFIGS fixed, as the autotuner launches each candidate."""
    bm, bn, bk, warps, stages = config
    (M, K), N = a.shape, b.shape[1]
    _mlp_matmul_kernel[(triton.cdiv(M, bm) * triton.cdiv(N, bn),)](
        a, *a.stride(), b, *b.stride(), pre, *pre.stride(), out, M, N, K, EPILOGUE=epilogue, BLOCK_M=bm,
        BLOCK_N=bn, BLOCK_K=bk, GROUP_M=GROUP_M, DOT_PRECISION="tf32", num_warps=warps, num_stages=stages)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("M, d, f", [(130, 200, 97), (4096, 768, 3072)], ids=["130x200-97", "4096x768-3072"])
def test_every_cuda_configuration_gives_the_same_bits_on_the_gpu(M, d, f, dtype):
    # the autotuner's pick must not change a run's numbers: each of CUDA_CONFIGS launched on the same inputs writes
    # the same pre and post forward and the same d_pre backward, and the autotuned launch writes them too
    x, w_fc, w_proj = _inputs((M,), d, f, dtype, "cuda")
    dy = torch.randn(M, d, device="cuda").to(dtype)

    def outputs(launch):
        pre, post, d_pre = (torch.empty(M, f, device="cuda", dtype=dtype) for _ in range(3))
        launch(x, w_fc.t(), pre, post, "relu2")
        launch(dy, w_proj, pre, d_pre, "relu2_grad")
        return pre, post, d_pre

    first = outputs(lambda *args: _launch(*args, CUDA_CONFIGS[0]))
    assert (first[0] < 0).any() and (first[0] > 0).any() and (first[2] != 0).any()  # both sides of the ReLU
    for config in CUDA_CONFIGS[1:]:
        for name, got, want in zip(("pre", "post", "d_pre"), outputs(lambda *args: _launch(*args, config)), first):
            assert torch.equal(got, want), f"{name}: {config} differs from {CUDA_CONFIGS[0]}"
    for name, got, want in zip(("pre", "post", "d_pre"), outputs(mlp_matmul), first):
        assert torch.equal(got, want), f"{name}: the autotuned launch differs from {CUDA_CONFIGS[0]}"
