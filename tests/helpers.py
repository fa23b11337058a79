"""Comparison helpers shared by the kernel tests.

Two rules, both from the kernels this field trusts:
- `assert_close`: a dtype tolerance table (Liger-Kernel's habit), failing with where and how much.
- `assert_error_within`: flash-attention's rule for low precision: our error against an fp32
  reference is at most `factor` x PyTorch's own error in the same dtype on the same inputs, plus atol.
"""
from __future__ import annotations

import torch

# dtype -> (atol, rtol) for outputs of a single fused op compared against an fp32-math reference.
TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-2, 2e-2),
}


def _where(actual: torch.Tensor, expected: torch.Tensor) -> str:
    diff = (actual.double() - expected.double()).abs()
    flat = int(diff.argmax())
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape)) if diff.ndim else ()
    return (
        f"max |diff| {diff.max().item():.3e} at index {idx} "
        f"(got {actual.reshape(-1)[flat].item():.6g}, want {expected.reshape(-1)[flat].item():.6g}); "
        f"mean |diff| {diff.mean().item():.3e}"
    )


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, name: str, dtype=None, atol=None, rtol=None):
    """allclose with tolerances from TOLERANCES[dtype] unless given; the message names the tensor and the worst element."""
    dtype = dtype or actual.dtype
    table_atol, table_rtol = TOLERANCES[dtype]
    atol = table_atol if atol is None else atol
    rtol = table_rtol if rtol is None else rtol
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert torch.isfinite(a).all(), f"{name}: non-finite values at {torch.nonzero(~torch.isfinite(a))[:5].tolist()}"
    if not torch.allclose(a, e, atol=atol, rtol=rtol):
        raise AssertionError(f"{name} ({dtype}, atol={atol:g}, rtol={rtol:g}): " + _where(a, e))


def assert_error_within(actual, reference_fp32, reference_lowp, *, name: str, factor: float = 2.0, atol: float = 1e-5):
    """max|actual - ref32| <= factor * max|ref_lowp - ref32| + rounding + atol  (flash-attention's test rule).

    `rounding` is half an ulp of actual's dtype at max|ref32| (bounded by 0.5 * eps * max|ref32|): the
    floor that any result stored in that dtype pays, however exact the kernel. On small test tensors
    PyTorch's own worst error can fall below it by luck, which made the bare rule fail on ~3% of seeds.
    """
    ours = (actual.double() - reference_fp32.double()).abs().max().item()
    torch_err = (reference_lowp.double() - reference_fp32.double()).abs().max().item()
    rounding = 0.5 * torch.finfo(actual.dtype).eps * reference_fp32.double().abs().max().item()
    bound = factor * torch_err + rounding + atol
    if not ours <= bound:
        raise AssertionError(
            f"{name}: max error {ours:.3e} > {factor:g} x PyTorch's own {torch_err:.3e} + rounding {rounding:.2e} "
            f"+ {atol:g}; " + _where(actual.detach().cpu(), reference_fp32.detach().cpu())
        )


# ----------------------------------------------------------------------------------------------
# Speedrun text logs in modded-nanogpt's exact layout: the script's own source, a line of 100 '=', the
# "Running Python / PyTorch / Triton" lines and the nvidia-smi table, another '=' line, then step lines
# (validation at step 0, every 250 steps and the last one), as the README's modded-nanogpt section names it.

MODDED_CODE = '''\
import os
import sys
with open(sys.argv[0]) as f:
    code = f.read()  # read the code of this file ASAP, for logging

run_id = "record_a"

def print0(s, console=False):
    print(s)

for step in range(train_steps + 1):
    print0(f"step:{step}/{train_steps} val_loss:{val_loss:.4f} train_time:{training_time_ms:.0f}ms", console=True)
'''
_SEP = "=" * 100
_HEADER = (f"{_SEP}\nRunning Python 3.12.3 (main, Jan 22 2026, 20:57:42) [GCC 13.3.0]\n"
           "Running PyTorch 2.10.0+cu128 compiled for CUDA 12.8\nRunning Triton version 3.6.0\n"
           "Fri Jul 17 12:22:51 2026\n"
           "+-----------------------------------------------------------------------------------------+\n"
           "| NVIDIA-SMI 580.159.04             Driver Version: 580.159.04     CUDA Version: 13.0     |\n"
           "|=========================================+========================+======================|\n"
           + "".join(f"|   {i}  NVIDIA H100 80GB HBM3          On  |   00000000:{i:02X}:00.0 Off |                    0 |\n"
                     for i in range(8))
           + f"{_SEP}\nCompiling model and warming up kernels\n")


def modded_nanogpt_log(final_ms: int, final_loss: float, *, code: str = MODDED_CODE, total: int = 1390,
                       cut_at: int | None = None) -> str:
    """A whole modded-nanogpt log whose last validation (step `total`) is at `final_ms` with `final_loss`;
    `cut_at`: the log ends after that step, as a run that died there."""
    lines = []
    for step in sorted({0, 1, 2, *range(250, total, 250), total - 1, total}):
        if cut_at is not None and step > cut_at:
            break
        t = round(final_ms * step / total)
        tail = f"train_time:{t}ms step_avg:{t / max(step, 1):.2f}ms"
        if step % 250 == 0 or step == total:
            lines.append(f"step:{step}/{total} val_loss:{final_loss + 7.5 * (1 - step / total) ** 3:.4f} {tail}")
        else:
            lines.append(f"step:{step}/{total} {tail}")
    if cut_at is None:
        lines.append("peak memory allocated: 30908 MiB reserved: 46472 MiB")
    return code + _HEADER + "\n".join(lines) + "\n"
