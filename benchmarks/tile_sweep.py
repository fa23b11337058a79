"""Time candidate tiles of every kernel at the trainer's shapes on one GPU, against the tiles it launches today.

    python -m benchmarks.tile_sweep [--budget 120] [--groups attention_dkdv,norm_768] [--tiny]

The launchers read their tiles at every call from one place each: kernels/attention.py's `_CUDA_BLOCKS`
(`_INTERPRETER_BLOCKS` off a GPU), kernels/norm.py's `_tile_settings` and kernels/newton_schulz.py's
`_launch_config`. The sweep replaces that entry in its own process, runs, and puts it back, so no kernel
file changes and the trainer never sees a candidate.

Groups and shapes (bf16, fineweb-124m: 48K tokens per step, 6 heads of 128, model width 768):
    attention_bwd, _fwd,        B=1 T=49152 H=6 D=128, web-text documents, windows 128 and 1792 (the
    _dkdv, _dq                  schedule's ends); the forward timed alone, a backward pass as forward +
                                backward with the other passes on today's tiles: bwd is the one-pass
                                backward the trainer runs ("atomic"), dkdv and dq the two-pass one
    norm_768, norm_128          RMSNorm without weight (the trainer's) on (49152, 768), the residual stream,
                                forward and forward + backward; and forward + backward on (294912, 128),
                                QK-norm's rows
    newton_schulz               5 quintic steps on (12, 768, 3072) and (48, 768, 768), Muon's stacks
The attention candidates are the spill-free tiles `python -m benchmarks.ptxas_report sweep` lists, plus a few
forward ones; the others vary rows per program and warps (norm) or the matmul tile, K step, warps and
stages (Newton-Schulz). 40 configurations in all, 33 of them not today's.

Two phases, so that one bad candidate costs nothing but itself and compiling does not eat the budget:
1. check: subprocesses at once (a few candidates each, `--check`) run every candidate once, which has Triton
   compile it into its on-disk cache, and compare its outputs with today's tiles' (relative L2 error at
   most 1e-2: bf16 rounding, not a different function). A candidate that does not compile (too much shared
   memory), faults or computes something else is reported and not timed; a fault takes down only its own
   subprocess.
2. time: this process times the checked candidates one after another (benchmarks.common.bench_ms, do_bench's
   median), loading their kernels from the cache, until the budget runs out.
Rows (bench "tile_sweep", case = kernel and shape, impl = the tiles, ms, speedup over today's tiles, rel_err)
are appended to benchmarks/results.csv one by one, so a stop halfway keeps what was timed.

--tiny runs the same code on the CPU under Triton's interpreter with tiny shapes and two candidates a group
(fp32: the interpreter has no bf16 arithmetic): the rehearsal of benchmarks/gpu_check.py.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

REL_ERR_LIMIT = 1e-2  # candidate vs today's tiles, both bf16 with fp32 accumulation: only rounding may differ

# Attention candidates at D = 128, (block_m, block_n, num_warps, num_stages); "dkdv" and "bwd" own block_n keys
# and step over block_m queries, "fwd" and "dq" own block_m queries. The backward lists are ptxas_report's
# BACKWARD_CANDIDATES (benchmarks/NOTES.md: most of them spill-free on sm_90 with Triton 3.9).
ATTENTION_CANDIDATES = {
    "bwd": [(64, 64, 8, 2), (64, 64, 8, 3), (32, 128, 8, 2)],
    "fwd": [(128, 64, 8, 3), (128, 64, 8, 2), (128, 128, 8, 2), (64, 64, 4, 3), (128, 32, 8, 3)],
    "dkdv": [(32, 128, 8, 3), (32, 128, 8, 2), (64, 128, 8, 2), (32, 64, 4, 3), (64, 64, 4, 3), (64, 64, 8, 3),
             (16, 128, 8, 3)],
    "dq": [(128, 64, 8, 3), (128, 64, 8, 2), (128, 32, 8, 3), (64, 64, 4, 3), (64, 64, 8, 3), (64, 32, 4, 3)],
}
# RMSNorm: (rows per tile, num_warps); the tile is whole rows, so its width is next_pow2(N)
NORM_CANDIDATES = {
    768: [(1, 4), (2, 4), (4, 4), (4, 8), (8, 8), (8, 16), (16, 16)],
    128: [(8, 4), (16, 4), (32, 4), (32, 8), (64, 8), (64, 16)],
}
# Newton-Schulz: (BLOCK, BLOCK_K, num_warps, num_stages) of its matmul kernels
NS_CANDIDATES = [(128, 64, 8, 4), (128, 64, 8, 3), (128, 32, 8, 5), (128, 128, 8, 2), (64, 64, 4, 4), (128, 64, 4, 4)]


@dataclass
class Case:
    """One shape of a group: `run()` does the timed work and returns the tensors to compare."""

    label: str
    run: Callable[[], tuple]


@dataclass
class Group:
    kernel: str
    candidates: list  # today's tiles first
    label: Callable  # candidate -> its name in the table
    patch: Callable  # candidate -> context manager under which the launcher uses it
    cases: Callable[[], list[Case]]  # allocates the inputs: called where a phase needs them


# ---------------------------------------------------------------------------------------------- the groups


def _device(tiny: bool) -> str:
    return "cpu" if tiny else "cuda"


def _dtype(tiny: bool):
    import torch

    return torch.float32 if tiny else torch.bfloat16


def _attention_group(kind: str, tiny: bool) -> Group:
    import torch

    from benchmarks.bench_attention import document_cu_seqlens
    from kernels import attention

    table, key = (attention._INTERPRETER_BLOCKS, kind) if tiny else (attention._CUDA_BLOCKS, (kind, 128))
    today = table[key]
    others = [(16, 16, 4, 1)] if tiny else ATTENTION_CANDIDATES[kind]
    candidates = [today] + [b for b in (attention.Blocks(*c) for c in others) if b != today]

    @contextlib.contextmanager
    def patch(blocks):
        table[key] = blocks
        try:
            yield
        finally:
            table[key] = today

    def cases():
        B, T, H, D, windows = (1, 48, 1, 16, (20,)) if tiny else (1, 49152, 6, 128, (128, 1792))
        cu = document_cu_seqlens(T, mean=15 if tiny else 1000).to(_device(tiny))
        gen = torch.Generator(_device(tiny)).manual_seed(0)
        q, k, v, do = (torch.randn(B, T, H, D, device=_device(tiny), dtype=_dtype(tiny), generator=gen)
                       for _ in range(4))
        docs = f"docs{len(cu) - 1}"

        def forward(w):
            return lambda: (attention.flash_attention(q, k, v, window_size=w, cu_seqlens=cu),)

        backward = "atomic" if kind == "bwd" else "two_pass"  # the backward whose tiles are swept

        def forward_backward(w):
            def run():
                leaves = [x.detach().requires_grad_() for x in (q, k, v)]
                out = attention.flash_attention(*leaves, window_size=w, cu_seqlens=cu, backward=backward)
                return torch.autograd.grad(out, leaves, do)

            return run

        make = forward if kind == "fwd" else forward_backward
        what = "fwd" if kind == "fwd" else "fwd+bwd"
        return [Case(f"B{B} T{T} H{H} D{D} w{w} {docs} {what}", make(w)) for w in windows]

    return Group(f"attention {kind} D={16 if tiny else 128}", candidates,
                 lambda b: f"{b.block_m}x{b.block_n} w{b.num_warps} s{b.num_stages}", patch, cases)


def _norm_group(n: int, tiny: bool) -> Group:
    import torch
    import triton

    from kernels import norm

    cols = {768: 48, 128: 16}[n] if tiny else n
    rows = 8 if tiny else 49152 * (1 if n == 768 else 6)  # tokens, or (token, head) pairs for QK-norm
    original = norm._tile_settings
    today = original(cols)
    width = max(triton.next_power_of_2(cols), 16)
    others = [(1, 4)] if tiny else NORM_CANDIDATES[n]
    candidates = [today] + [c for c in ((m, width, w) for m, w in others) if c != today]

    @contextlib.contextmanager
    def patch(settings):
        norm._tile_settings = lambda _n: settings
        try:
            yield
        finally:
            norm._tile_settings = original

    def cases():
        gen = torch.Generator(_device(tiny)).manual_seed(0)
        x, dy = (torch.randn(rows, cols, device=_device(tiny), dtype=_dtype(tiny), generator=gen) for _ in range(2))

        def forward():
            return (norm.rms_norm(x),)

        def forward_backward():
            leaf = x.detach().requires_grad_()
            return torch.autograd.grad(norm.rms_norm(leaf), leaf, dy)

        both = [Case(f"({rows}, {cols}) fwd+bwd", forward_backward)]
        return ([Case(f"({rows}, {cols}) fwd", forward)] + both) if n == 768 else both

    return Group(f"norm rms_norm N={cols}", candidates, lambda c: f"{c[0]}x{c[1]} w{c[2]}", patch, cases)


def _newton_schulz_group(tiny: bool) -> Group:
    import torch

    from kernels import newton_schulz as ns

    original = ns._launch_config
    today = original(not tiny, _dtype(tiny).itemsize)
    others = [(16, 16, 1, 1)] if tiny else NS_CANDIDATES
    keys = ("BLOCK", "BLOCK_K", "num_warps", "num_stages")
    candidates = [today] + [c for c in (dict(zip(keys, c)) for c in others) if c != today]

    @contextlib.contextmanager
    def patch(config):
        ns._launch_config = lambda on_cuda, element_size: dict(config)  # the launchers pop from it
        try:
            yield
        finally:
            ns._launch_config = original

    def cases():
        gen = torch.Generator(_device(tiny)).manual_seed(0)
        out = []
        steps = 2 if tiny else 5  # Muon's 5; the interpreter pays for every launch
        for shape in [(16, 24)] if tiny else [(12, 768, 3072), (48, 768, 768)]:
            G = torch.randn(*shape, device=_device(tiny), dtype=_dtype(tiny), generator=gen)
            out.append(Case("x".join(map(str, shape)) + f" {steps} steps",
                            lambda G=G: (ns.newton_schulz(G, steps=steps),)))
        return out

    return Group("newton_schulz", candidates,
                 lambda c: f"{c['BLOCK']}x{c['BLOCK']}x{c['BLOCK_K']} w{c['num_warps']} s{c['num_stages']}", patch,
                 cases)


# In the order they are timed, the likeliest gains first (the backward is the costliest attention pass)
GROUPS = {
    "attention_bwd": lambda tiny: _attention_group("bwd", tiny),
    "attention_dkdv": lambda tiny: _attention_group("dkdv", tiny),
    "attention_dq": lambda tiny: _attention_group("dq", tiny),
    "attention_fwd": lambda tiny: _attention_group("fwd", tiny),
    "newton_schulz": lambda tiny: _newton_schulz_group(tiny),
    "norm_768": lambda tiny: _norm_group(768, tiny),
    "norm_128": lambda tiny: _norm_group(128, tiny),
}


# ---------------------------------------------------------------------------------------------- phase 1: check


def _first_line(exc: Exception) -> str:
    message = str(exc).splitlines()
    return f"{type(exc).__name__}: {message[0][:200] if message else ''}"


def rel_err(got: tuple, want: tuple) -> float:
    """The largest ‖got − want‖ / ‖want‖ over the outputs (fp32 norms); NaN anywhere gives inf."""
    worst = 0.0
    for a, b in zip(got, want):
        a, b = a.float(), b.float()
        err = float((a - b).norm() / b.norm().clamp_min(1e-30))
        worst = max(worst, err if err == err else float("inf"))
    return worst


def check(group_name: str, indices: list[int], tiny: bool) -> None:
    """Run candidates `indices` of a group once (compiling them) against today's tiles, on the first case;
    print one `CHECK {json}` line per candidate."""
    group = GROUPS[group_name](tiny)
    case = group.cases()[0]
    want = case.run()
    for i in indices:
        result = dict(group=group_name, index=i)
        try:
            with group.patch(group.candidates[i]):
                result["rel_err"] = rel_err(case.run(), want)
            result["ok"] = result["rel_err"] <= REL_ERR_LIMIT
        except Exception as exc:  # too much shared memory, a compile error, a fault: this candidate only
            result.update(ok=False, error=_first_line(exc))
        print("CHECK " + json.dumps(result), flush=True)


def check_all(groups: dict[str, Group], tiny: bool, processes: int, timeout_s: float) -> dict[tuple[str, int], dict]:
    """Phase 1: every non-default candidate checked, spread over `processes` subprocesses run at once."""
    work = [(name, i) for name, group in groups.items() for i in range(1, len(group.candidates))]
    shards = [work[p::processes] for p in range(processes) if work[p::processes]]
    procs = []
    for shard in shards:
        by_group: dict[str, list[int]] = {}
        for name, i in shard:
            by_group.setdefault(name, []).append(i)
        spec = ";".join(f"{name}:{','.join(map(str, idx))}" for name, idx in by_group.items())
        argv = [sys.executable, "-m", "benchmarks.tile_sweep", "--check", spec, *(["--tiny"] if tiny else [])]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, text=True))
    results = {}
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        for line in out.splitlines():
            if line.startswith("CHECK "):
                r = json.loads(line[len("CHECK "):])
                results[(r["group"], r["index"])] = r
    for key in work:  # a subprocess that died or ran out of time: its unfinished candidates say so
        results.setdefault(key, dict(group=key[0], index=key[1], ok=False,
                                     error="not checked (its check subprocess died or ran out of time)"))
    return results


# ---------------------------------------------------------------------------------------------- phase 2: time


def sweep(group_names: list[str], budget_s: float, tiny: bool, processes: int) -> list[dict]:
    """Both phases within `budget_s`: every row, timed or with the reason it was not, appended as it comes."""
    from benchmarks.common import append_results, bench_ms

    start = time.monotonic()
    groups = {name: GROUPS[name](tiny) for name in group_names}
    checked = check_all(groups, tiny, processes, timeout_s=0.6 * budget_s)  # compiling: the larger part
    print(f"check phase: {time.monotonic() - start:.0f} s, "
          f"{sum(r['ok'] for r in checked.values())} of {len(checked)} candidates passed", flush=True)
    rows = []
    device = _device(tiny)
    for name, group in groups.items():
        cases = group.cases()
        for case in cases:
            default_ms = None
            for i, candidate in enumerate(group.candidates):
                row = dict(bench="tile_sweep", kernel=group.kernel, case=f"{group.kernel} {case.label}",
                           impl=group.label(candidate), default=i == 0)
                info = checked.get((name, i), dict(ok=True, rel_err=0.0))  # today's tiles are the reference
                row["rel_err"] = info.get("rel_err")
                if not info["ok"]:
                    row["status"] = info.get("error") or f"rel_err {info['rel_err']:.2e} > {REL_ERR_LIMIT}"
                elif time.monotonic() - start > budget_s:
                    row["status"] = "skipped: out of budget"
                else:
                    try:
                        with group.patch(candidate):  # do_bench's first call loads the kernel phase 1 compiled
                            row["ms"] = bench_ms(case.run, device, cpu_reps=1, return_mode="median")
                        default_ms = row["ms"] if i == 0 else default_ms
                        row["speedup"] = default_ms / row["ms"] if default_ms else None
                        row["status"] = "ok"
                    except Exception as exc:
                        row["status"] = _first_line(exc)
                rows.append(row)
                append_results([row])
                ms = f"{row['ms']:9.3f} ms" if "ms" in row else " " * 12
                speedup = f"{row['speedup']:5.2f}x" if row.get("speedup") else " " * 6
                print(f"{row['case']:62s} {row['impl']:18s} {ms} {speedup} {row['status']}", flush=True)
    return rows


def best_by_case(rows: list[dict]) -> list[str]:
    """One line per case: the fastest timed candidate and its speedup over today's tiles."""
    lines, by_case = [], {}
    for row in rows:
        by_case.setdefault(row["case"], []).append(row)
    for case, case_rows in by_case.items():
        timed = [r for r in case_rows if r.get("ms")]
        if not timed:
            lines.append(f"{case}: nothing timed")
            continue
        best = min(timed, key=lambda r: r["ms"])
        lines.append(f"{case}: {'today' if best['default'] else best['impl']} best"
                     + ("" if best["default"] else f", {best['speedup']:.2f}x today's") + f" ({len(timed)} timed)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tile_sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=120, help="seconds for both phases (default 120)")
    parser.add_argument("--groups", default=",".join(GROUPS), help=f"comma list of {', '.join(GROUPS)}")
    parser.add_argument("--processes", type=int, default=min(8, os.cpu_count() or 1),
                        help="check subprocesses at once (default: CPU count, at most 8)")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (a rehearsal)")
    parser.add_argument("--check", help=argparse.SUPPRESS)  # phase 1's subprocesses: "group:i,j;group:k"
    args = parser.parse_args(argv)
    if args.tiny:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton; the subprocesses inherit it
    if args.check:
        for part in args.check.split(";"):
            name, indices = part.split(":")
            check(name, [int(i) for i in indices.split(",")], args.tiny)
        return 0
    import torch

    if not args.tiny and not torch.cuda.is_available():
        print("tile_sweep: no CUDA device here; it times GPUs only (nothing recorded), or run it with --tiny")
        return 0
    names = args.groups.split(",")
    if unknown := sorted(set(names) - set(GROUPS)):
        parser.error(f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    rows = sweep(names, args.budget, args.tiny, max(1, args.processes))
    print("\n".join(best_by_case(rows)))
    # a candidate that does not fit or loses is a finding; today's tiles untimed somewhere is a failure
    return 0 if all(r["status"] == "ok" for r in rows if r["default"]) else 1


if __name__ == "__main__":
    sys.exit(main())
