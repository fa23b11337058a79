"""Run every benchmark in one process, one GPU session: `python -m benchmarks [--quick | --tiny] [names...]`.

Each benchmark appends its rows to benchmarks/results.csv; a failing one is reported and the rest
still run. The short table of this session's rows is printed last.

    --quick  the main shapes only (QUICK: the trainer's shapes and the issue's targets), sized for the first
             GPU session's budget (benchmarks/gpu_check.py); without it every benchmark runs all its cases
    --tiny   each benchmark's code on tiny cases on the CPU (TINY: fp32/fp16, no torch.compile, Triton under
             its interpreter): the rehearsal of a GPU session, for code paths, not numbers
"""
import argparse
import importlib
import os
import sys
import time
import traceback
from pathlib import Path

import pandas as pd

from benchmarks.common import RESULTS_CSV, append_results

# Every benchmarks/bench_*.py that exists, so the list never names a module that is not there.
BENCHMARKS = sorted(p.stem for p in Path(__file__).resolve().parent.glob("bench_*.py"))

# --quick: module tables replaced before main() runs (the modules read them when main() runs), and arguments
# for the mains that take some. Attention keeps the schedule's two ends and both dense cases; the norm keeps
# GPT-2 small's activations, the shape of the target; FP8 keeps the head's loss (the trainer's path: the
# loss writes G8 itself) and leaves out the casts; Newton-Schulz and the model keep all their cases.
QUICK_TABLES = {
    "bench_attention": {"WINDOWS": (128, 1792)},
    "bench_norm": {"CASES": [(65536, 768)]},
    "bench_fp8": {"CASES": []},
}
QUICK_ARGS = {"bench_model": ["--windows", "mid", "--no-reference", "--steps", "30", "--warmup", "3"]}


def _tiny_attention(bench):
    import torch

    if not bench.check_bf16("cpu", dtype=torch.float16, T=48, H=1, D=16, window=20, mean_doc=15):
        raise RuntimeError("bench_attention: fp16 check failed")
    cu = bench.document_cu_seqlens(48, mean=15, seed=0)
    append_results(bench.run_cases([("B1 T48 H1 D16 w20 docs", 1, 48, 1, 16, 20, cu)], "cpu", dtype=torch.float32,
                                   compile=False))


def _tiny_norm(bench):
    import torch

    append_results(bench.bench_case(8, 48, "cpu", dtype=torch.float32, compile=False))


def _tiny_newton_schulz(bench):
    import torch

    append_results(bench.bench_case("16x24", 0, 16, 24, bench.implementations(compile=False), "cpu", torch.float32))


def _tiny_mlp(bench):
    import torch

    append_results(bench.bench_case(37, 40, 97, "cpu", dtype=torch.float32, compile=False))


def _tiny_fp8(bench):
    import torch

    append_results(bench.bench_case("dY", (19, 37), torch.bfloat16, bench.E5M2, 2.0**19, "cpu", compile=False)
                   + bench.bench_loss(19, 37, 15.0, 2.0**19, "cpu", compile=False))


# --tiny: benchmark name -> function of its module running the module's cases on tiny inputs on the CPU
TINY = {
    "bench_attention": _tiny_attention,
    "bench_norm": _tiny_norm,
    "bench_newton_schulz": _tiny_newton_schulz,
    "bench_mlp": _tiny_mlp,
    "bench_fp8": _tiny_fp8,
    "bench_model": lambda bench: bench.main(["--tiny", "--windows", "first", "--no-reference", "--steps", "1",
                                             "--warmup", "0"]),
}


def run_one(name: str, mode: str | None):
    """One benchmark's main (its return value: nonzero when some of its cases failed), in `mode`."""
    if mode == "tiny":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the module imports triton
    module = importlib.import_module(f"benchmarks.{name}")
    if mode == "tiny":
        return TINY[name](module)
    if mode == "quick":
        for attr, value in QUICK_TABLES.get(name, {}).items():
            if not hasattr(module, attr):  # a renamed table must fail loudly, not run every case
                raise AttributeError(f"--quick: benchmarks.{name} has no {attr} to replace")
            setattr(module, attr, value)
        if name in QUICK_ARGS:
            return module.main(QUICK_ARGS[name])
    return module.main()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="name", help=f"of {', '.join(BENCHMARKS)} (default: all)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick", help="the main shapes only")
    mode.add_argument("--tiny", action="store_const", dest="mode", const="tiny", help="tiny cases on the CPU")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    names = args.names or BENCHMARKS
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {BENCHMARKS}", file=sys.stderr)
        return 2
    before = len(pd.read_csv(RESULTS_CSV)) if RESULTS_CSV.exists() else 0
    failed = []
    for name in names:
        start = time.monotonic()
        print(f"=== {name}", flush=True)
        try:
            if run_one(name, args.mode):  # nonzero: some of its cases failed
                failed.append(name)
        except Exception:  # one broken benchmark must not cost the others their GPU time
            traceback.print_exc()
            failed.append(name)
        print(f"=== {name}: {time.monotonic() - start:.0f} s", flush=True)
    if RESULTS_CSV.exists():
        rows = pd.read_csv(RESULTS_CSV).iloc[before:]
        cols = [c for c in ("bench", "case", "mode", "impl", "ms", "tflops", "gbps", "tokens_per_s", "mfu") if c in rows]
        with pd.option_context("display.width", 200, "display.max_rows", 500):
            print(rows[cols].to_string(index=False))
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
