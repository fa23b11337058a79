"""The CUDA tile tables, compiled for Hopper (sm_90) on this GPU-less machine: no bf16 configuration the
kernels launch on an H100 may spill registers or ask for more shared memory than an H100 has, and every
matmul kernel uses wgmma (the report also counts TMA copies).

benchmarks/ptxas_report.py does the compiling (Triton's own ptxas). It runs in a subprocess: this test
session imported the kernels under TRITON_INTERPRET=1, and interpreted kernels cannot be compiled.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
ptxas = pytest.importorskip("triton.backends.nvidia.compiler")


def _report(tmp_path, *groups: str, timeout: int = 300) -> pd.DataFrame:
    """`python -m benchmarks.ptxas_report GROUPS --strict` (exit 0: nothing spills or overflows) and its table, in a
    subprocess: importing benchmarks.ptxas_report turns this session's Triton interpreter off."""
    csv = tmp_path / "ptxas.csv"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.ptxas_report", *groups, "--strict", f"--csv={csv}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return pd.read_csv(csv)


def test_bf16_tile_tables_fit_an_h100_without_spilling(tmp_path):
    table = _report(tmp_path, "attention", "newton_schulz", "norm", "mlp", timeout=900)
    # the four attention passes (fwd, dkdv, dq and the one-pass bwd) at both head dims, the Newton-Schulz kernels
    # (syrk with and without C), RMSNorm, LayerNorm and the mix + RMSNorm both ways at 4 widths, QK-norm + rotary
    # both ways at head dims 64 and 128, the MLP's fc matmul with each ReLU^2 epilogue at its 3 autotuned tiles
    assert len(table) == 8 + 3 + 16 + 8 + 4 + 6 and set(table.dtype) == {"bf16"}
    assert (table.registers > 0).all() and (table.registers <= 255).all()
    assert (table.spill_stores == 0).all() and table.fits.all()
    # every matmul kernel issues Hopper's warpgroup MMA; the element-wise norms have none
    matmuls = table[table.kernel.str.startswith(("attention", "newton_schulz", "mlp"))]
    assert len(matmuls) == 17 and (matmuls.wgmma > 0).all(), matmuls[["kernel", "wgmma"]]
    assert (table[table.kernel.str.startswith("norm")].wgmma == 0).all()
    assert {"tma", "cp_async"} <= set(table.columns) and (table.tma >= 0).all()


PTX = """
    wgmma.fence.sync.aligned;
    wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%f1}, %rd1, %rd2, 1, 1, 1, 0, 1;
  wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%f2}, %rd3, %rd4, 1, 1, 1, 0, 1;
    wgmma.commit_group.sync.aligned;
    @%p7 cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%r1], [%rd5, {%r2, %r3}], [%r4];
    cp.async.cg.shared.global [ %r5 + 0 ], [ %rd6 + 0 ], 0x10, %r6;
    @!%p2 cp.async.ca.shared.global [ %r7 + 0 ], [ %rd7 + 0 ], 0x4, %r8;
    cp.async.commit_group;
    // wgmma.mma_async in a comment is not an instruction
"""


def test_ptx_instruction_counts():
    # in a subprocess: importing benchmarks.ptxas_report turns this session's Triton interpreter off
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "import sys; from benchmarks.ptxas_report import ptx_counts; print(ptx_counts(sys.stdin.read()))"
    proc = subprocess.run([sys.executable, "-c", code], input=PTX, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "{'wgmma': 2, 'tma': 1, 'cp_async': 2}"


def test_fp8_cast_kernels_compile_for_an_h100_without_spilling(tmp_path):
    """The FP8 head's casts (kernels.fp8.cast_fp8), as the op launches them: element-wise, no matmul."""
    table = _report(tmp_path, "fp8")
    assert len(table) == 4 and set(table.dtype) == {"bf16", "fp32"} and table.kernel.str.startswith("fp8 cast").all()
    assert (table.registers > 0).all() and (table.spill_stores == 0).all() and table.fits.all()
    assert (table.wgmma == 0).all()


def test_head_loss_kernels_compile_for_an_h100_without_spilling(tmp_path):
    """The FP8 head's loss kernels (kernels.head_loss), forward and the backward writing G8 and G8^T, with the cap
    and without, as the op launches them on CUDA: element-wise and reductions, no matmul."""
    table = _report(tmp_path, "head_loss")
    assert list(table.kernel) == ["head_loss fwd", "head_loss bwd e5m2 + transpose", "head_loss fwd (no cap)",
                                  "head_loss bwd e5m2 + transpose (no cap)"]
    assert (table.registers > 0).all() and (table.spill_stores == 0).all() and table.fits.all()
    assert (table.wgmma == 0).all()


def test_the_default_groups_are_all_but_the_sweep():
    # what the help says: every group but sweep (the candidate tiles), fp8 among them
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import json; from benchmarks.ptxas_report import GROUPS, parse_args; "
            "print(json.dumps([parse_args([]).groups, list(GROUPS)]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    default, groups = json.loads(proc.stdout)
    assert default == [g for g in groups if g != "sweep"] and "fp8" in default
