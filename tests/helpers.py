"""Helpers shared by the tests: comparisons for the kernel tests, speedrun logs for the harness tests.

Two rules, both from the kernels this field trusts:
- `assert_close`: a dtype tolerance table (Liger-Kernel's habit), failing with where and how much.
- `assert_error_within`: flash-attention's rule for low precision: our error against an fp32
  reference is at most `factor` x PyTorch's own error in the same dtype on the same inputs, plus atol.
"""
from __future__ import annotations

from pathlib import Path

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
# Speedrun logs in modded-nanogpt's published format (its source code, versions, nvidia-smi, step lines)

# The source a modded-nanogpt log starts with (its f-strings mention "step:", as the real one's do).
CODE = '''\
import os
import sys
with open(sys.argv[0]) as f:
    code = f.read()  # read the code of this file ASAP, for logging

def print0(s, console=False):
    print(s)

for step in range(train_steps + 1):
    print0(f"step:{step}/{train_steps} val_loss:{val_loss:.4f} train_time:{training_time_ms:.0f}ms", console=True)
'''
SEP = "=" * 100


def gpu_table(n: int) -> str:
    rows = "".join(f"|   {i}  NVIDIA H100 80GB HBM3          On  |   00000000:{i:02X}:00.0 Off |                    0 |\n"
                   f"| N/A   54C    P0            147W /  700W |    1521MiB /  81559MiB |      0%      Default |\n"
                   for i in range(n))
    return ("Fri Jul 17 12:22:51 2026\n"
            "+-----------------------------------------------------------------------------------------+\n"
            "| NVIDIA-SMI 580.159.04             Driver Version: 580.159.04     CUDA Version: 13.0     |\n"
            "|=========================================+========================+======================|\n"
            + rows +
            "| Processes:                                                                              |\n"
            "|    0   N/A  N/A          979223      C   ...pt-challenge-py312/bin/python       1512MiB |\n")


HEADER = (f"{SEP}\nRunning Python 3.12.3 (main, Jan 22 2026, 20:57:42) [GCC 13.3.0]\n"
          "Running PyTorch 2.10.0+cu128 compiled for CUDA 12.8\nRunning Triton version 3.6.0\n"
          + gpu_table(8) + f"{SEP}\nCompiling model and warming up kernels\n")
TOTAL = 1390


def steps(final_ms: int, final_loss: float, *, cut_at: int | None = None, nan_from: int | None = None) -> str:
    """Step lines as modded-nanogpt prints them: validation at 0, every 250 steps and the last one."""
    lines = []
    for step in (0, 1, 2, 250, 251, 500, 750, 1000, 1250, 1389, TOTAL):
        if cut_at is not None and step > cut_at:
            break
        t = round(final_ms * step / TOTAL)
        if step % 250 == 0 or step == TOTAL:
            loss = final_loss + 7.5 * (1 - step / TOTAL) ** 3
            text = "nan" if nan_from is not None and step >= nan_from else f"{loss:.4f}"
            lines.append(f"step:{step}/{TOTAL} val_loss:{text} train_time:{t}ms step_avg:{t / max(step, 1):.2f}ms")
        else:
            lines.append(f"step:{step}/{TOTAL} train_time:{t}ms step_avg:{t / max(step, 1):.2f}ms")
    if cut_at is None:
        lines.append("peak memory allocated: 30908 MiB reserved: 46472 MiB")
    return "\n".join(lines) + "\n"


def modded_log(final_ms=80694, final_loss=3.2775, code=CODE, **kw) -> str:
    return code + HEADER + steps(final_ms, final_loss, **kw)


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


def run_ingest(where: dict, *inputs, track="modded-nanogpt", name="imported", extra=()) -> int:
    """harness.ingest's command line, with where = {"records": ..., "runs": ...}."""
    from harness import ingest

    return ingest.main(["--track", track, "--name", name, "--records", str(where["records"]), "--runs-dir",
                        str(where["runs"]), *extra, *map(str, inputs)])


def rows(where: dict) -> list[dict]:
    """The runs log's rows as written (load_records would make a number column with gaps float)."""
    import json

    from harness.records import load_records

    frame, problems = load_records(where["records"])
    assert problems == []
    return [json.loads(line) for line in (where["records"] / "runs.jsonl").read_text().splitlines()]
