"""kernels/__init__.py: the shared check every kernel file's input check calls (`check_launchable`).

Without TRITON_INTERPRET=1 when kernels/ is imported, @triton.jit makes kernels for a GPU, and a CPU tensor given to
a public op is a one-line ValueError naming the op and the fix, not Triton's "0 active drivers" from inside the
launch. Ops whose CPU path is torch's (kernels.fp8's matmul and its casts there, the PyTorch references) keep
working. One subprocess for every op: this test session imported the kernels under the interpreter.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton

import kernels

REPO = Path(__file__).resolve().parent.parent
FIX = "CPU tensors need Triton's interpreter: set TRITON_INTERPRET=1 before importing kernels/"

SCRIPT = """
import json
import torch
from kernels import attention, fp8, head_loss, mlp, newton_schulz, norm

x, q = torch.randn(16, 32), torch.randn(1, 8, 2, 16)
cos, sin = torch.randn(8, 8), torch.randn(8, 8)
calls = {
    "flash_attention": lambda: attention.flash_attention(q, q, q),
    "rms_norm": lambda: norm.rms_norm(x),
    "add_rms_norm": lambda: norm.add_rms_norm(x, x),
    "mix_rms_norm": lambda: norm.mix_rms_norm(x, None, x, torch.ones(2)),
    "rms_norm_rotary": lambda: norm.rms_norm_rotary(q, cos, sin),
    "layer_norm": lambda: norm.layer_norm(x),
    "newton_schulz": lambda: newton_schulz.newton_schulz(x),
    "xxt": lambda: newton_schulz.xxt(x),
    "xxt_plus": lambda: newton_schulz.xxt_plus(x[:, :16], 1.0, 1.0),
    "bx_plus_ax": lambda: newton_schulz.bx_plus_ax(x[:, :16], x, 1.0),
    "relu2_mlp": lambda: mlp.relu2_mlp(x, torch.randn(8, 32), torch.randn(32, 8)),
    "cast_fp8": lambda: fp8.cast_fp8(x, 1.0, fp8.E4M3),
    "fp8_head_loss": lambda: head_loss.fp8_head_loss(x, x, torch.zeros(16, dtype=torch.long)),
    "fp8_mm": lambda: fp8.fp8_mm(x, x),  # torch's casts and _scaled_mm on the CPU: no Triton
    "newton_schulz_ref": lambda: newton_schulz.newton_schulz_ref(x),  # plain torch: no Triton
}
results = {}
for op, call in calls.items():
    try:
        call()
        results[op] = "ok"
    except Exception as exc:
        results[op] = f"{type(exc).__name__}: {exc}"
import triton
print(json.dumps({**results, "triton": triton.__version__}))
"""


def test_cpu_tensors_without_the_interpreter_are_one_line_per_op():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    path = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))  # this session's Triton, if put first
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env={**env, "PYTHONPATH": path},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.splitlines()[-1])
    assert results.pop("triton") == triton.__version__  # the subprocess ran this session's Triton
    assert results.pop("fp8_mm") == "ok" and results.pop("newton_schulz_ref") == "ok"
    assert results == {op: f"ValueError: {op}: {FIX}" for op in results}


def test_the_check_passes_interpreted_kernels_and_gpu_tensors():
    kernels.check_launchable("op", True, torch.zeros(1))
    kernels.check_launchable("op", False, torch.zeros(1, device="meta"))
    with pytest.raises(ValueError, match=f"^op: {FIX}$"):
        kernels.check_launchable("op", False, torch.zeros(1, device="meta"), torch.zeros(1))


def test_this_sessions_kernels_are_interpreted():
    from kernels import mlp  # imported under tests/conftest.py's TRITON_INTERPRET=1 (no GPU here)
    assert kernels.interpreted(mlp._mlp_matmul_kernel) == (os.environ.get("TRITON_INTERPRET") == "1")


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="bf16 is refused under the interpreter only")
@pytest.mark.parametrize("op", ["flash_attention", "relu2_mlp", "xxt", "xxt_plus", "bx_plus_ax", "newton_schulz"])
def test_bf16_math_under_the_interpreter_is_one_line(op):
    # the interpreter holds bf16 as raw bits: these ops' bf16 dots would be off by 1e8 to 1e12, with no error
    from kernels import attention, mlp, newton_schulz

    q, x, a = torch.randn(1, 8, 2, 16).bfloat16(), torch.randn(16, 32).bfloat16(), torch.randn(16, 16).bfloat16()
    calls = {"flash_attention": lambda: attention.flash_attention(q, q, q),
             "relu2_mlp": lambda: mlp.relu2_mlp(x, x, x.t()),
             "xxt": lambda: newton_schulz.xxt(x), "xxt_plus": lambda: newton_schulz.xxt_plus(a, 1.0, 1.0),
             "bx_plus_ax": lambda: newton_schulz.bx_plus_ax(a, x, 1.0),
             "newton_schulz": lambda: newton_schulz.newton_schulz(x.float(), dtype=torch.bfloat16)}
    with pytest.raises(ValueError, match=f"^{op}: bfloat16 under Triton's interpreter, which has no bf16 arithmetic"):
        calls[op]()


@pytest.mark.parametrize("op, name", [
    ("flash_attention", "k"), ("flash_attention", "cu_seqlens"), ("rms_norm", "x"), ("rms_norm", "weight"),
    ("add_rms_norm", "residual"), ("mix_rms_norm", "lambdas"), ("rms_norm_rotary", "cos"), ("layer_norm", "bias"),
    ("relu2_mlp", "x"), ("fp8_mm", "w"), ("fp8_head_loss", "targets"), ("cast_fp8", "t")])
def test_an_argument_that_is_not_a_tensor_is_a_one_line_type_error(op, name):
    # a numpy array passed the dtype checks by its dtype's name ('x has dtype float32; supported: float32, ...') and a
    # list failed on a missing attribute ("'list' object has no attribute 'dtype'"), naming no argument
    from kernels import attention, fp8, head_loss, mlp, norm

    x, q = torch.randn(16, 32), torch.randn(1, 8, 2, 16)
    cos, bad = torch.randn(8, 8), [1.0] * 32
    calls = {("flash_attention", "k"): lambda: attention.flash_attention(q, q.numpy(), q),
             ("flash_attention", "cu_seqlens"): lambda: attention.flash_attention(q, q, q, cu_seqlens=[0, 8]),
             ("rms_norm", "x"): lambda: norm.rms_norm(x.numpy()), ("rms_norm", "weight"): lambda: norm.rms_norm(x, bad),
             ("add_rms_norm", "residual"): lambda: norm.add_rms_norm(x, x.numpy()),
             ("mix_rms_norm", "lambdas"): lambda: norm.mix_rms_norm(x, None, x, [1.0, 1.0]),
             ("rms_norm_rotary", "cos"): lambda: norm.rms_norm_rotary(q, cos.numpy(), cos),
             ("layer_norm", "bias"): lambda: norm.layer_norm(x, None, bad),
             ("relu2_mlp", "x"): lambda: mlp.relu2_mlp(x.numpy(), x, x.t()),
             ("fp8_mm", "w"): lambda: fp8.fp8_mm(x, bad),
             ("fp8_head_loss", "targets"): lambda: head_loss.fp8_head_loss(x, x, list(range(16))),
             ("cast_fp8", "t"): lambda: fp8.cast_fp8(x.numpy(), 1.0, fp8.E4M3)}
    with pytest.raises(TypeError, match=f"^{op}: {name} must be a torch.Tensor, got (ndarray|list)$"):
        calls[(op, name)]()
