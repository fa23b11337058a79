"""Hardware and software facts for logs and records, and the one table of peak FLOP/s used for MFU."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

from harness.snapshot import REPO_ROOT

# Dense bf16 tensor-core peak, FLOP/s, per GPU, from the vendors' datasheets (no sparsity).
# Matched by substring of torch.cuda.get_device_name(); the first match wins, so list specific names first.
PEAK_BF16_FLOPS = {
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,  # SXM
    "GH200": 989e12,  # before "H200", which it contains
    "H200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "RTX 4090": 165e12,
}


# What one H100 SXM is expected to sustain, as (low, central, high): estimates for benchmarks/roofline.py, not
# measurements, until benchmarks/gpu_check.sh's env stage measures the matmul and copy ceilings on the card.
#   matmul: dense bf16 GEMMs of the model's sizes through cuBLAS, ~65-80% of the 989 TFLOP/s peak.
#   matmul_fp8: torch._scaled_mm (e4m3 / e5m2 operands, kernels/fp8.py) at the same fractions of the dense FP8
#     peak, twice the bf16 one (H100 SXM datasheet: 1,979 TFLOP/s FP8 against 989 bf16, both without sparsity):
#     650 / 989 = 0.657 -> 1,300, 700 / 989 = 0.708 -> 1,400, 780 / 989 = 0.789 -> 1,560. An estimate: no FP8
#     matmul has run on our card; the backward's exact accumulation (use_fast_accum=False, periodic promotion
#     to fp32) may run below the forward's fast one, which one rate does not tell apart.
#   attention_fwd / _bwd: a FlashAttention-2-class kernel (Triton, pointer loads, no TMA or warp specialisation):
#     the FA3 paper (Shah et al. 2024, fig. 5-6) gives FA2 on an H100 at ~300-370 TFLOP/s forward and ~250-330
#     backward at head dim 128; counted over the tiles a kernel visits, masked pairs included.
#   attention_fwd_tma / _bwd_tma: the same with TMA loads and a QK^T wgmma overlapped with the softmax (FA3 and
#     Triton's Hopper tutorial reach ~500-700 forward): the range issue 21 item 3 aims at.
#   copy: bytes read plus written per second by a memory-bound kernel (~85-90% of 3.35 TB/s HBM3).
#   nccl_busbw: all-reduce / reduce-scatter / all-gather bus bandwidth between 8 NVLink H100s (nccl-tests' busbw).
#   kernel_s: the least time a kernel takes, launch and tail included.
H100_RATES = {
    "matmul": (650e12, 700e12, 780e12),  # FLOP/s
    "matmul_fp8": (1300e12, 1400e12, 1560e12),
    "attention_fwd": (300e12, 350e12, 400e12),
    "attention_bwd": (250e12, 290e12, 330e12),
    "attention_fwd_tma": (450e12, 520e12, 600e12),
    "attention_bwd_tma": (330e12, 380e12, 450e12),
    "copy": (2.8e12, 2.9e12, 3.0e12),  # bytes/s
    "nccl_busbw": (350e9, 400e9, 450e9),  # bytes/s
    "kernel_s": (3e-6, 4e-6, 6e-6),  # seconds
}


def peak_flops(device_name: str | None) -> float | None:
    """Peak dense bf16 FLOP/s for a device name, or None where unknown (CPUs: no MFU is claimed)."""
    if not device_name:
        return None
    for key, flops in PEAK_BF16_FLOPS.items():
        if key in device_name:
            return flops
    return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info() -> dict:
    """GPU model and count if CUDA is there, else the CPU model and core count."""
    import torch

    if torch.cuda.is_available():
        return {
            "kind": "cuda",
            "gpu": torch.cuda.get_device_name(0),
            "gpu_count": torch.cuda.device_count(),
            "peak_flops": peak_flops(torch.cuda.get_device_name(0)),
        }
    return {"kind": "cpu", "cpu": cpu_model(), "cpu_count": os.cpu_count(), "peak_flops": None}


def software_versions() -> dict:
    import importlib.metadata

    import numpy
    import torch

    try:  # from the package metadata, not `import triton`: importing it before TRITON_INTERPRET is set
        # (train_gpt sets it for a CPU run) leaves tl.sum and co. uncallable by the interpreter
        triton_version = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton_version = None
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "numpy": numpy.__version__,
    }


def git_state(repo: str | os.PathLike | None = None) -> dict:
    """{"commit": sha or None, "dirty": bool or None}: None where this is not a git checkout."""
    repo = str(repo or REPO_ROOT)

    def git(*args):
        return subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        status = git("status", "--porcelain", "--untracked-files=no")
        return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}


def nvidia_smi() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=10)
        return out.stdout if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None
