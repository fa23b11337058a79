"""The CUDA tile tables, compiled for Hopper (sm_90) on this GPU-less machine: no bf16 configuration the
kernels launch on an H100 may spill registers or ask for more shared memory than an H100 has.

benchmarks/ptxas_report.py does the compiling (Triton's own ptxas). It runs in a subprocess: this test
session imported the kernels under TRITON_INTERPRET=1, and interpreted kernels cannot be compiled.
"""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
ptxas = pytest.importorskip("triton.backends.nvidia.compiler")


def test_bf16_tile_tables_fit_an_h100_without_spilling(tmp_path):
    csv = tmp_path / "ptxas.csv"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.ptxas_report", "attention", "newton_schulz", "norm",
                           "--strict", f"--csv={csv}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = pd.read_csv(csv)
    # every pass at both head dims, the Newton-Schulz kernels (syrk with and without C), RMSNorm and LayerNorm both ways at 4 widths
    assert len(table) == 6 + 3 + 16 and set(table.dtype) == {"bf16"}
    assert (table.registers > 0).all() and (table.registers <= 255).all()
    assert (table.spill_stores == 0).all() and table.fits.all()
