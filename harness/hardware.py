"""Hardware and software facts for logs and records, and the one table of peak FLOP/s used for MFU."""
from __future__ import annotations

import importlib.metadata
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


# What one H100 SXM is expected to sustain, (low, central, high): estimates for benchmarks/roofline.py, not
# measurements (benchmarks/NOTES.md, "The step on paper", gives their sources and what would measure them).
#   matmul: dense bf16 cuBLAS GEMMs of the model's sizes, ~65-80% of the 989 TFLOP/s peak; matmul_fp8: the same
#     fractions of the 1,979 TFLOP/s dense FP8 peak (torch._scaled_mm, kernels/fp8.py).
#   attention_*: FlashAttention-2 on an H100 (FA3 paper, Shah et al. 2024, fig. 5-6), head dim 128, counted over
#     the tiles a kernel visits; *_tma: with TMA loads and QK^T overlapped with the softmax (FA3-class).
#   copy: bytes read plus written by a memory-bound kernel (~85-90% of 3.35 TB/s); nccl_busbw: nccl-tests' bus
#     bandwidth between 8 NVLink H100s; kernel_s: the least time a kernel takes, launch and tail included.
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
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if device_name and key in device_name), None)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def hardware_info() -> dict:
    """GPU model and count if CUDA is there, else the CPU model and core count."""
    import torch

    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
        return {"kind": "cuda", "gpu": gpu, "gpu_count": torch.cuda.device_count(), "peak_flops": peak_flops(gpu)}
    return {"kind": "cpu", "cpu": cpu_model(), "cpu_count": os.cpu_count(), "peak_flops": None}


def software_versions() -> dict:
    import numpy
    import torch

    try:  # from the package metadata, not `import triton`: importing it before TRITON_INTERPRET is set
        # (train_gpt sets it for a CPU run) leaves tl.sum and co. uncallable by the interpreter
        triton_version = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton_version = None
    return {"python": sys.version.split()[0], "torch": torch.__version__, "triton": triton_version,
            "cuda": torch.version.cuda, "numpy": numpy.__version__}


def _output(*cmd: str) -> str | None:
    """A command's stdout, or None where it fails, is not there or takes over 10 s."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state(repo: str | os.PathLike | None = None) -> dict:
    """{"commit": sha or None, "dirty": bool or None}: None where it is not known (no git checkout, git fails)."""
    git = ("git", "-C", str(repo or REPO_ROOT))
    head = _output(*git, "rev-parse", "HEAD")
    status = _output(*git, "status", "--porcelain", "--untracked-files=no") if head else None
    return {"commit": head and head.strip(), "dirty": None if status is None else bool(status.strip())}


def nvidia_smi() -> str | None:
    return _output("nvidia-smi")
