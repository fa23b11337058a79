"""What every benchmark shares: the metadata stamped on each row and the one results CSV.

Rows go to benchmarks/results.csv (a superset of columns across benchmarks, written with pandas), each
stamped with date, git SHA, GPU, torch and Triton versions, so numbers stay attributable.

Two environment variables, for runs on a copy of the checkout (benchmarks/gpu_check.py on a lent GPU):
BENCH_RESULTS_CSV writes the rows to another file instead, and BENCH_GIT_SHA names the commit where the
copy has no .git to read it from.
"""
from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import pandas as pd
from filelock import FileLock

from harness.files import atomic_file
from harness.hardware import git_state, software_versions

RESULTS_CSV = Path(os.environ.get("BENCH_RESULTS_CSV") or Path(__file__).resolve().parent / "results.csv")


def metadata() -> dict:
    import torch

    versions = software_versions()
    sha = git_state()["commit"] or os.environ.get("BENCH_GIT_SHA")
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "git_sha": sha[:10] if sha else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch": versions["torch"],
        "triton": versions["triton"],
    }


def append_results(rows: list[dict], path: Path = RESULTS_CSV) -> pd.DataFrame:
    """Stamp rows with metadata() and append them to the CSV (locked; temp file, then rename)."""
    new = pd.DataFrame([{**metadata(), **row} for row in rows])
    _append(new, path)
    return new


def merge_results(src: Path, path: Path = RESULTS_CSV) -> int:
    """Append the rows of another results CSV (a GPU session's, already stamped) to `path`; returns how many."""
    new = pd.read_csv(src)
    _append(new, path)
    return len(new)


def _append(new: pd.DataFrame, path: Path) -> None:
    """Read-modify-write under the file's lock (two benchmarks at once must not drop rows), written whole."""
    with FileLock(f"{path}.lock"):
        table = pd.concat([pd.read_csv(path), new], ignore_index=True) if path.exists() else new
        with atomic_file(path, "w") as f:
            table.to_csv(f, index=False)


def require_cuda(name: str) -> bool:
    """Benchmarks measure GPUs: without one, say so in one line and let the caller exit 0."""
    import torch

    if not torch.cuda.is_available():
        print(f"{name}: no CUDA device here; this benchmark measures GPUs only (nothing recorded)")
        return False
    return True


def bench_ms(fn, device="cuda", *, grad_to_none=None, cpu_reps: int = 3, **do_bench_kwargs) -> float:
    """Milliseconds per call of fn. On a GPU: triton.testing.do_bench(fn, grad_to_none=..., **do_bench_kwargs),
    exactly. Elsewhere (the tests run the benchmarks' cases tiny on a CPU, where do_bench cannot time: it
    needs a GPU) the median wall clock of `cpu_reps` calls after one untimed call, grad_to_none reset
    before each: for checking code paths, not for numbers."""
    import inspect

    import torch
    import triton.testing

    if torch.device(device).type == "cuda":
        return triton.testing.do_bench(fn, grad_to_none=grad_to_none, **do_bench_kwargs)
    # arguments do_bench would refuse (a typo) fail here too, not first on a GPU
    inspect.signature(triton.testing.do_bench).bind(fn, grad_to_none=grad_to_none, **do_bench_kwargs)
    fn()
    times = []
    for _ in range(cpu_reps):
        for x in grad_to_none or ():
            x.grad = None
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return sorted(times)[len(times) // 2]
