"""benchmarks/common.py: the results CSV keeps every row, whichever benchmarks write it at once; bench_ms times
on a CPU and hands a GPU to do_bench unchanged. benchmarks/__main__.py: a failing benchmark is reported."""
import inspect
import multiprocessing as mp
import os
import stat

import pandas as pd
import pytest
import torch

from benchmarks.common import append_results, merge_results


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


def test_the_results_csv_is_readable_by_others_and_merges_whole(tmp_path):
    path, other = tmp_path / "results.csv", tmp_path / "gpu.csv"
    old = os.umask(0o022)
    try:
        append_results([{"bench": "a", "case": "1", "ms": 1.0}], path=path)
        append_results([{"bench": "b", "case": "2", "ms": 2.0}], path=other)
        assert merge_results(other, path=path) == 1
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # 0666 less the umask, not a temporary's 0600
    assert list(pd.read_csv(path)["bench"]) == ["a", "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu.csv", "gpu.csv.lock", "results.csv", "results.csv.lock"]


def test_bench_ms_times_on_the_cpu_and_resets_grads():
    from benchmarks.common import bench_ms

    x = torch.ones(3, requires_grad=True)
    seen = []

    def step():
        seen.append(x.grad)
        (2 * x).sum().backward()

    assert bench_ms(step, "cpu", grad_to_none=[x], cpu_reps=3) > 0
    assert len(seen) == 4 and seen[1:] == [None] * 3  # one untimed call, then 3 timed ones from fresh grads


def test_bench_ms_hands_a_gpu_to_do_bench_unchanged(monkeypatch):
    """On CUDA every argument goes to triton.testing.do_bench, which must accept them (bound to its signature)."""
    import triton.testing

    from benchmarks.common import bench_ms

    signature, calls = inspect.signature(triton.testing.do_bench), []

    def fake_do_bench(*args, **kwargs):
        calls.append(signature.bind(*args, **kwargs).arguments)
        return 1.5

    monkeypatch.setattr(triton.testing, "do_bench", fake_do_bench)
    fn = object()
    assert bench_ms(fn, "cuda", grad_to_none=["g"], warmup=25, rep=200, return_mode="median") == 1.5
    assert calls == [dict(fn=fn, grad_to_none=["g"], warmup=25, rep=200, return_mode="median")]


def test_run_all_counts_a_nonzero_return_and_an_exception_as_failed(monkeypatch, tmp_path, capsys):
    import types

    import benchmarks.__main__ as run_all

    def fake(result):
        def main():
            if isinstance(result, Exception):
                raise result
            return result

        return types.SimpleNamespace(main=main)

    modules = {"benchmarks.bench_ok": fake(0), "benchmarks.bench_none": fake(None), "benchmarks.bench_some": fake(1),
               "benchmarks.bench_boom": fake(RuntimeError("boom"))}
    monkeypatch.setattr(run_all, "BENCHMARKS", sorted(name.split(".")[1] for name in modules))
    monkeypatch.setattr(run_all, "RESULTS_CSV", tmp_path / "results.csv")
    monkeypatch.setattr(run_all, "importlib", types.SimpleNamespace(import_module=modules.__getitem__))
    assert run_all.main(["bench_ok", "bench_none"]) == 0
    assert run_all.main(["bench_ok", "bench_some", "bench_boom"]) == 1
    assert capsys.readouterr().out.strip().endswith("failed: bench_some, bench_boom")


def test_bench_ms_refuses_on_a_cpu_what_do_bench_would_refuse_on_a_gpu():
    from benchmarks.common import bench_ms

    assert bench_ms(lambda: None, "cpu", return_mode="median") >= 0
    with pytest.raises(TypeError, match="return_mod"):
        bench_ms(lambda: None, "cpu", return_mod="median")
