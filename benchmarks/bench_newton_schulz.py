"""Newton-Schulz (Muon's orthogonalisation): our Triton kernels against the PyTorch reference, eager and compiled.

    python -m benchmarks.bench_newton_schulz

CUDA only (elsewhere it says so in one line and exits 0). Cases are the speedrun's Muon matrices for
GPT-2 small (d = 768): the 12 MLP matrices as one (12, 768, 3072) stack, the 48 attention matrices as
(48, 768, 768), and a single 768x3072. Each runs 5 quintic steps in bf16, from a bf16 input.

Accounting, per step, per (M, N) matrix with M <= N, counting the full products:
    2·M²·N (X Xᵀ) + 2·M³ (A·A) + 2·M²·N (B·X) = 4·M²·N + 2·M³ FLOP.
Our symmetric kernels compute only the upper tiles of the first two, so our TFLOP/s is "effective": it
credits the mirrored half as if computed, which is the fair way to compare against the reference.
Times are medians from triton.testing.do_bench; compile time is excluded (one untimed call first).
Rows are appended to benchmarks/results.csv; the table of this run's rows is printed last.
"""
from __future__ import annotations

import pandas as pd
import torch

from benchmarks.common import append_results, bench_ms, require_cuda
from kernels.newton_schulz import newton_schulz, newton_schulz_ref

STEPS = 5
CASES = {  # name -> (B, M, N); B = 0 for a single matrix
    "12x768x3072": (12, 768, 3072),
    "48x768x768": (48, 768, 768),
    "768x3072": (0, 768, 3072),
}


def flops(B: int, M: int, N: int, steps: int = STEPS) -> float:
    """Full-product FLOP for `steps` iterations over B matrices (B = 0: one matrix)."""
    m, n = min(M, N), max(M, N)
    return max(B, 1) * steps * (4 * m * m * n + 2 * m**3)


def implementations(compile: bool = True) -> dict:
    """impl name -> function of G (no torch.compile entry with compile=False: the CPU test's shortcut)."""
    impls = {
        "triton": lambda G: newton_schulz(G, steps=STEPS),
        "torch": lambda G: newton_schulz_ref(G, steps=STEPS),
    }
    if compile:
        reference_compiled = torch.compile(newton_schulz_ref, dynamic=False)
        impls["torch.compile"] = lambda G: reference_compiled(G, steps=STEPS)
    return impls


def bench_case(case: str, B: int, M: int, N: int, impls: dict, device: str = "cuda",
               dtype: torch.dtype = torch.bfloat16) -> list[dict]:
    """Rows of one case, each impl on the same random input. The CPU test runs it tiny and in fp32
    (Triton's interpreter has no bf16 arithmetic)."""
    G = torch.randn(*((B,) if B else ()), M, N, device=device, dtype=dtype)
    exact = newton_schulz_ref(G.float(), steps=STEPS, dtype=torch.float32)
    rows = []
    for impl, fn in impls.items():
        out = fn(G)  # untimed: JIT/torch.compile compilation happens here
        if G.is_cuda:
            torch.cuda.synchronize()
        err = (out.float() - exact).abs().max().item()
        ms = bench_ms(lambda: fn(G), device, warmup=25, rep=200, return_mode="median")
        tflops = flops(B, M, N) / (ms * 1e-3) / 1e12
        rows.append(dict(bench="newton_schulz", case=case, impl=impl, ms=ms, tflops=tflops, max_err_vs_fp32=err))
        print(f"{case:>12} {impl:>14}: {ms:8.3f} ms {tflops:6.1f} TFLOP/s, max|out - fp32| {err:.2e}", flush=True)
    return rows


def main() -> None:
    if not require_cuda("bench_newton_schulz"):
        return
    impls = implementations()
    rows = [row for case, (B, M, N) in CASES.items() for row in bench_case(case, B, M, N, impls)]
    table = append_results(rows)
    with pd.option_context("display.width", 200):
        print(table[["gpu", "case", "impl", "ms", "tflops", "max_err_vs_fp32"]].to_string(index=False))


if __name__ == "__main__":
    main()
