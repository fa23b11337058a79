"""benchmarks/bench_newton_schulz.py's code paths on tiny cases: the benchmark is for GPUs, but a GPU session is
too short to discover there that it no longer matches kernels/newton_schulz.py's API. On the CPU the kernels run
under Triton's interpreter, in fp32 (it has no bf16 arithmetic); where there is a GPU the tiny cases run there
in bf16."""
import math

import torch

from benchmarks.bench_newton_schulz import CASES, bench_case, flops, implementations


def test_flops_count_the_full_products():
    # X Xᵀ and B X: 2·M²·N each; A·A: 2·M³; M is the short side
    assert flops(0, 768, 3072, steps=1) == 4 * 768**2 * 3072 + 2 * 768**3 == flops(0, 3072, 768, steps=1)
    assert flops(12, 768, 3072) == 12 * 5 * flops(0, 768, 3072, steps=1)
    assert set(CASES) == {"12x768x3072", "48x768x768", "768x3072"}


def test_rows_of_a_stack_and_of_a_tall_matrix(device):
    impls = implementations(compile=False)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    for case, (B, M, N) in {"2x16x24": (2, 16, 24), "24x16": (0, 24, 16)}.items():
        rows = bench_case(case, B, M, N, impls, device, dtype)
        assert [r["impl"] for r in rows] == ["triton", "torch"]
        for row in rows:
            assert set(row) == {"bench", "case", "impl", "ms", "tflops", "max_err_vs_fp32"} and row["case"] == case
            assert row["ms"] > 0 and math.isclose(row["tflops"], flops(B, M, N) / (row["ms"] * 1e-3) / 1e12)
            assert row["max_err_vs_fp32"] < (1e-4 if dtype == torch.float32 else 0.1)  # against the fp32 reference


def test_compiled_reference_is_listed():
    assert list(implementations()) == ["triton", "torch", "torch.compile"]
