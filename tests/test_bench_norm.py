"""benchmarks/bench_norm.py's code paths on a tiny case: the benchmark is for GPUs, but a GPU session is too short
to discover there that it no longer matches kernels/norm.py's API. On the CPU the kernels run under Triton's
interpreter, in fp32 (it has no bf16 arithmetic); where there is a GPU the tiny case runs there in bf16."""
import math

import pandas as pd
import torch

from benchmarks.bench_norm import BYTES_MOVED, CASES, bench_case


def test_rows_of_every_op_direction_and_impl(device):
    m, n = 8, 48
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rows = bench_case(m, n, device, dtype=dtype, compile=False)
    impls = ["triton (ours)", "torch eager", "copy ceiling"]
    benches = [f"{op} {d}" for op in BYTES_MOVED for d in ("fwd", "fwd+bwd")]
    assert [(r["bench"], r["impl"]) for r in rows] == [(b, i) for b in benches for i in impls]
    unit = m * n * dtype.itemsize
    for row in rows:
        assert set(row) == {"bench", "case", "impl", "ms", "gbps"}
        assert row["case"] == "(8, 48) " + str(dtype).removeprefix("torch.")
        op, direction = row["bench"].split()
        moved = BYTES_MOVED[op][direction == "fwd+bwd"] * unit
        assert row["ms"] > 0 and math.isclose(row["gbps"], moved / row["ms"] * 1e-6)
    assert len({r["gbps"] for r in rows if r["impl"] == "copy ceiling"}) == 1  # one copy measurement
    # main's table
    table = pd.DataFrame(rows).pivot_table(index=["bench", "case"], columns="impl", values="gbps", sort=False)
    assert table.shape == (6, 3)


def test_bytes_moved_are_the_minimum_traffic():
    # per element, in units of the dtype: forward reads x, writes y; backward reads x and dy, writes dx
    # (+ forward again: fwd+bwd); add_rms_norm also reads the residual and writes the sum, and its backward
    # reads the sum's gradient
    assert BYTES_MOVED == {"rms_norm": (2, 5), "layer_norm": (2, 5), "add_rms_norm": (4, 8)}


def test_cases_are_row_counts_and_widths():
    assert all(isinstance(m, int) and isinstance(n, int) and n * 2 <= 65536 for m, n in CASES)
