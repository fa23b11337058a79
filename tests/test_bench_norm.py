"""benchmarks/bench_norm.py's code paths on a tiny case: the benchmark is for GPUs, but a GPU session is too short
to discover there that it no longer matches kernels/norm.py's API. On the CPU the kernels run under Triton's
interpreter, in fp32 (it has no bf16 arithmetic) and eager only (compiling on 2 CPU cores costs minutes); where
there is a GPU the tiny case runs there in bf16."""
import math

import pandas as pd
import pytest
import torch

from benchmarks.roofline import memory_call_ms

from benchmarks.bench_norm import (BYTES_MOVED, CASES, FUSED_BYTES_MOVED, MIX_CASES, MODES, QKV_CASES, ROTARY_CASES,
                                   _fused_implementations, _implementations, bench_case, bench_mix_case,
                                   bench_qkv_case, bench_rotary_case)

IMPLS = ["ours", "torch", "copy ceiling"]
MOVED = {**BYTES_MOVED, **FUSED_BYTES_MOVED}


def _check_accounting(rows, unit):
    for row in rows:
        assert set(row) == {"bench", "case", "mode", "impl", "ms", "gb", "gbps", "est_ms"}
        op, direction = row["bench"].split()
        moved = MOVED[op][direction == "fwd+bwd"] * unit
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
    assert all(r["est_ms"] is None for r in rows)  # the roofline estimates the trainer's fused norms only
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


@pytest.mark.parametrize("op", ["rms_norm", "layer_norm", "add_rms_norm", "mix_rms_norm", "mix_rms_norm_no_r",
                                "rms_norm_rotary"])
def test_compiled_mode_compiles_the_reference_only(op, monkeypatch):
    # Mode "compiled" puts the reference through torch.compile and calls our custom op as it is (a compiled graph
    # of that one call runs the same kernels); "eager" compiles neither. One compile per op and case, not two.
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(fn) or (lambda *a: fn(*a)))
    w = torch.ones(8)
    impls = _implementations(op, 8, w, None, MODES) if op in BYTES_MOVED else _fused_implementations(op, modes=MODES)
    assert sorted(impls) == [("compiled", "ours"), ("compiled", "torch"), ("eager", "ours"), ("eager", "torch")]
    assert compiled == [impls["eager", "torch"]]
    assert impls["compiled", "ours"] is impls["eager", "ours"] and impls["compiled", "torch"] is not compiled[0]


def test_mix_rms_norm_rows_with_and_without_r(device):
    B, T, d = 1, 5, 48
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rows = bench_mix_case(B, T, d, device, dtype=dtype, compile=False)
    benches = [f"{op} {dr}" for op in ("mix_rms_norm", "mix_rms_norm_no_r") for dr in ("fwd", "fwd+bwd")]
    assert [(r["bench"], r["impl"]) for r in rows] == [(b, i) for b in benches for i in IMPLS]
    assert {r["case"] for r in rows} == {f"({B}, {T}, {d}) " + str(dtype).removeprefix("torch.")}
    # x, r, x0 in and s, y out forward (5 tensors), 12 with the backward; without r 4 and 10
    assert [r["gb"] for r in rows if r["impl"] == "ours"] == [m * B * T * d * dtype.itemsize * 1e-9
                                                                for m in (5, 12, 4, 10)]
    _check_accounting(rows, B * T * d * dtype.itemsize)
    _check_estimates(rows)


def _check_estimates(rows):
    # ours carry the roofline's estimate of the call: its bytes, one kernel forward and one backward
    for row in rows:
        if row["impl"] != "ours":
            assert row["est_ms"] is None
        else:
            kernels = 1 if row["bench"].endswith(" fwd") else 2
            assert row["est_ms"] == memory_call_ms(row["gb"] * 1e9, kernels) > 0


def test_rms_norm_rotary_rows_count_the_view(device):
    B, T, H, D = 2, 3, 2, 16
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rows = bench_rotary_case(B, T, H, D, device, dtype=dtype, compile=False)
    assert [(r["bench"], r["impl"]) for r in rows] == [(f"rms_norm_rotary {d}", i) for d in ("fwd", "fwd+bwd")
                                                       for i in IMPLS]
    assert rows[0]["case"] == f"qkv view ({B}, {T}, {H}, {D}) " + str(dtype).removeprefix("torch.")
    _check_accounting(rows, B * T * H * D * dtype.itemsize)  # q's elements: a third of the projection's
    _check_estimates(rows)


def test_fused_rows_time_our_op_and_its_reference_on_the_same_inputs():
    # ours and the reference agree on the inputs each row passes (argument order included): r and x0 swapped, or
    # the rotary tables, would show here
    from train_gpt import Rotary

    x, r, x0 = (torch.randn(1, 5, 48) for _ in range(3))
    lambdas = torch.tensor([0.9, 0.4])
    for op, inputs in (("mix_rms_norm", (x, r, x0, lambdas)), ("mix_rms_norm_no_r", (x, x0, lambdas))):
        impls = _fused_implementations(op, modes=("eager",))
        for ours, ref in zip(impls["eager", "ours"](*inputs), impls["eager", "torch"](*inputs), strict=True):
            torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    rotary = Rotary(16, 3)
    q = torch.randn(2, 3, 6, 16).chunk(3, dim=-2)[0]
    impls = _fused_implementations("rms_norm_rotary", rotary.cos, rotary.sin, modes=("eager",))
    torch.testing.assert_close(impls["eager", "ours"](q)[0], impls["eager", "torch"](q)[0], rtol=1e-5, atol=1e-5)


def test_the_fused_cases_are_fineweb_124ms():
    from train_gpt import parse_config

    cfg = parse_config(["--track=fineweb-124m"])
    assert MIX_CASES == [(cfg.batch_size, cfg.seq_len, cfg.model_dim)]
    assert ROTARY_CASES == [(cfg.batch_size, cfg.seq_len, cfg.num_heads, cfg.head_dim)]


@pytest.mark.parametrize("cases", [CASES, QKV_CASES, MIX_CASES, ROTARY_CASES])
def test_cases_fit_the_row_limit(cases):
    assert all(isinstance(d, int) for case in cases for d in case)
    assert all(case[-1] * 2 <= 65536 for case in cases)
