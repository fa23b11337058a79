"""benchmarks/common.py: the results CSV keeps every row, whichever benchmarks write it at once."""
import multiprocessing as mp

import pandas as pd

from benchmarks.common import append_results


def _append(args):
    path, worker = args
    for i in range(10):
        append_results([{"bench": f"w{worker}", "case": str(i), "ms": float(i)}], path=path)


def test_concurrent_appends_lose_no_row(tmp_path):
    path = tmp_path / "results.csv"
    with mp.get_context("spawn").Pool(3) as pool:
        pool.map(_append, [(path, w) for w in range(3)])
    table = pd.read_csv(path)
    assert len(table) == 30 and sorted(table["bench"].unique()) == ["w0", "w1", "w2"]
    assert {"date", "git_sha", "gpu", "torch", "triton"} <= set(table.columns)
