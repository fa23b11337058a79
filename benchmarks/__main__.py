"""Run every benchmark in one process, one GPU session: `python -m benchmarks [names...]`.

Each benchmark appends its rows to benchmarks/results.csv; a failing one is reported and the rest
still run. The short table of this session's rows is printed last.
"""
import importlib
import sys
import time
import traceback
from pathlib import Path

import pandas as pd

from benchmarks.common import RESULTS_CSV

# Every benchmarks/bench_*.py that exists, so the list never names a module that is not there.
BENCHMARKS = sorted(p.stem for p in Path(__file__).resolve().parent.glob("bench_*.py"))


def main(argv=None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or BENCHMARKS
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
            if importlib.import_module(f"benchmarks.{name}").main():  # nonzero: some of its cases failed
                failed.append(name)
        except Exception:  # one broken benchmark must not cost the others their GPU time
            traceback.print_exc()
            failed.append(name)
        print(f"=== {name}: {time.monotonic() - start:.0f} s", flush=True)
    if RESULTS_CSV.exists():
        rows = pd.read_csv(RESULTS_CSV).iloc[before:]
        cols = [c for c in ("bench", "case", "impl", "ms", "tflops", "gbps", "tokens_per_s", "mfu") if c in rows]
        with pd.option_context("display.width", 200, "display.max_rows", 500):
            print(rows[cols].to_string(index=False))
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
