"""benchmarks/bench_mlp.py's code paths on a tiny case: the benchmark is for GPUs, but a GPU session is too short to
discover there that it no longer matches kernels/mlp.py's API. On the CPU the kernel runs under Triton's interpreter,
in fp32 (it has no bf16 arithmetic) and eager only (compiling on 2 CPU cores costs minutes); where there is a GPU the
tiny case runs there in bf16."""
import math

import pandas as pd
import torch

from benchmarks.bench_mlp import BENCHES, CASES, MODES, bench_case, flops, implementations
from benchmarks.roofline import mlp_call_ms


def test_flops_count_both_matmuls_and_the_backward():
    assert flops(49152, 768, 3072, "mlp_fwd") == 2 * 2 * 49152 * 768 * 3072  # fc and proj
    assert flops(49152, 768, 3072, "mlp_fwd_bwd") == 3 * flops(49152, 768, 3072, "mlp_fwd")  # + dX and dW of each
    assert CASES == [(49152, 768, 3072)]  # fineweb-124m: 48K tokens, d = 768, f = 4d


def test_rows_of_every_bench_and_impl_on_one_case(device):
    M, d, f = 37, 40, 97
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rows = bench_case(M, d, f, device, dtype=dtype, compile=False)
    assert [(r["bench"], r["mode"], r["impl"]) for r in rows] == [
        (b, "eager", i) for i in ("ours", "torch") for b in BENCHES]
    for row in rows:
        assert set(row) == {"bench", "case", "mode", "impl", "ms", "tflops", "est_ms", "max_err_vs_fp32"}
        assert row["case"] == "(37, 40 -> 97) " + str(dtype).removeprefix("torch.")
        assert row["ms"] > 0 and math.isclose(row["tflops"], flops(M, d, f, row["bench"]) / (row["ms"] * 1e-3) / 1e12)
        assert row["max_err_vs_fp32"] < (1e-4 if dtype == torch.float32 else 0.1)
        # the roofline's estimate beside ours, none beside the reference
        want = mlp_call_ms(M, d, f, backward=row["bench"] == "mlp_fwd_bwd") if row["impl"] == "ours" else None
        assert row["est_ms"] == want
    table = pd.DataFrame(rows).pivot_table(index=["bench", "case", "mode"], columns="impl", values="ms", sort=False)
    assert table.shape == (2, 2)  # ours and torch side by side for each bench


def test_compiled_mode_compiles_ours_and_torch_alike(monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(fn) or fn)
    impls = implementations(MODES)
    assert sorted(impls) == [("compiled", "ours"), ("compiled", "torch"), ("eager", "ours"), ("eager", "torch")]
    assert compiled == [impls["compiled", "ours"], impls["compiled", "torch"]]
