"""benchmarks/bench_norm.py's code paths on a tiny case: the benchmark is for GPUs, but a GPU session is too short
to discover there that it no longer matches kernels/norm.py's API. On the CPU the kernels run under Triton's
interpreter, in fp32 (it has no bf16 arithmetic) and eager only (compiling on 2 CPU cores costs minutes); where
there is a GPU the tiny case runs there in bf16."""
import math

import pandas as pd
import pytest
import torch

from benchmarks.bench_norm import BYTES_MOVED, CASES, MODES, QKV_CASES, _implementations, bench_case, bench_qkv_case

IMPLS = ["ours", "torch", "copy ceiling"]


def _check_accounting(rows, unit):
    for row in rows:
        assert set(row) == {"bench", "case", "mode", "impl", "ms", "gb", "gbps"}
        op, direction = row["bench"].split()
        moved = BYTES_MOVED[op][direction == "fwd+bwd"] * unit
        assert math.isclose(row["gb"], moved * 1e-9)
        assert row["ms"] > 0 and math.isclose(row["gbps"], moved / row["ms"] * 1e-6)


def test_rows_of_every_op_direction_and_impl(device):
    m, n = 8, 48
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rows = bench_case(m, n, device, dtype=dtype, compile=False)
    benches = [f"{op} {d}" for op in BYTES_MOVED for d in ("fwd", "fwd+bwd")]
    assert [(r["bench"], r["mode"], r["impl"]) for r in rows] == [(b, "eager", i) for b in benches for i in IMPLS]
    assert {r["case"] for r in rows} == {"(8, 48) " + str(dtype).removeprefix("torch.")}
    _check_accounting(rows, m * n * dtype.itemsize)
    assert len({r["gbps"] for r in rows if r["impl"] == "copy ceiling"}) == 1  # one copy measurement
    # main's table: one row per bench, case and mode; ours and torch side by side
    table = pd.DataFrame(rows).pivot_table(index=["bench", "case", "mode"], columns="impl", values="gbps", sort=False)
    assert table.shape == (6, 3)


def test_qkv_view_case_counts_the_view_not_the_projection(device):
    B, T, H, D = 2, 3, 2, 16
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rows = bench_qkv_case(B, T, H, D, device, dtype=dtype, compile=False)
    assert [(r["bench"], r["impl"]) for r in rows] == [(f"rms_norm {d}", i) for d in ("fwd", "fwd+bwd") for i in IMPLS]
    assert rows[0]["case"] == f"qkv view ({B}, {T}, {H}, {D}) " + str(dtype).removeprefix("torch.")
    _check_accounting(rows, B * T * H * D * dtype.itemsize)  # q's elements: a third of the projection's


def test_compiled_mode_compiles_ours_and_torch_alike(monkeypatch):
    # Like with like: in mode "compiled" both functions go through torch.compile, in "eager" neither does.
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(fn) or fn)
    w = torch.ones(8)
    impls = _implementations("rms_norm", 8, w, None, MODES)
    assert sorted(impls) == [("compiled", "ours"), ("compiled", "torch"), ("eager", "ours"), ("eager", "torch")]
    assert compiled == [impls["compiled", "ours"], impls["compiled", "torch"]]
    assert impls["eager", "ours"] is impls["compiled", "ours"]  # the same function, compiled or not


@pytest.mark.parametrize("cases", [CASES, QKV_CASES])
def test_cases_fit_the_row_limit(cases):
    assert all(isinstance(d, int) for case in cases for d in case)
    assert all(case[-1] * 2 <= 65536 for case in cases)
