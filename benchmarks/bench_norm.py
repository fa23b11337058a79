"""kernels/norm.py against PyTorch eager and torch.compile, in effective GB/s, beside a copy ceiling.

Run: `python -m benchmarks.bench_norm` (needs CUDA; without it, prints one line and exits 0).

Accounting: bytes that must move, M rows of N elements of `bytes` each; weights, bias and the fp32
per-row statistics are negligible next to them and not counted.
    rms_norm / layer_norm   forward           read x, write y                          2·M·N·bytes
                            forward+backward  + read x and dy, write dx                5·M·N·bytes
    add_rms_norm            forward           read x and residual, write sum and y     4·M·N·bytes
                            forward+backward  + read sum, dy and dsum, write dx        8·M·N·bytes
Copy ceiling: x.clone() moves 2·M·N·bytes; its GB/s bounds any memory-bound op. Its row under each
bench gives that GB/s and the time a copy at that rate would take to move the bench's bytes.

Shapes: GPT-2 small's activations (65536, 768) (B·T = 64 × 1024 tokens) and widths 1024 to 8192 with
the same ~50M elements, in bf16. torch.compile is compiled once per case and warmed up before timing.
"""
from __future__ import annotations

import pandas as pd
import torch
import torch.nn.functional as F

from benchmarks.common import append_results, bench_ms, require_cuda

CASES = [(65536, 768), (49152, 1024), (24576, 2048), (12288, 4096), (6144, 8192)]  # (M, N): M·N ≈ 50M
DTYPE = torch.bfloat16
# op -> multiples of M·N·bytes that must move in (forward, forward+backward): see the module docstring.
BYTES_MOVED = {"rms_norm": (2, 5), "layer_norm": (2, 5), "add_rms_norm": (4, 8)}


def _implementations(op: str, n: int, w: torch.Tensor, b: torch.Tensor, compile: bool = True) -> dict:
    """impl name -> function of (x, residual) returning the op's output tensors, as a tuple (no
    torch.compile entry with compile=False: the CPU test's shortcut)."""
    from kernels.norm import add_rms_norm, layer_norm, rms_norm

    if op == "rms_norm":

        def ours(x, r):
            return (rms_norm(x, w),)

        def torch_fn(x, r):
            return (F.rms_norm(x, (n,), w),)

    elif op == "layer_norm":

        def ours(x, r):
            return (layer_norm(x, w, b),)

        def torch_fn(x, r):
            return (F.layer_norm(x, (n,), w, b),)

    else:

        def ours(x, r):
            return add_rms_norm(x, r, w)

        def torch_fn(x, r):
            s = x + r
            return s, F.rms_norm(s, (n,), w)

    implementations = {"triton (ours)": ours, "torch eager": torch_fn}
    if compile:
        implementations["torch.compile"] = torch.compile(torch_fn, dynamic=False)
    return implementations


def _time_ms(fn, direction: str, x, r, leaves) -> float:
    """do_bench of fn's forward, or of its forward and backward (grads of the leaves reset each rep);
    the wall clock off a GPU (benchmarks.common.bench_ms)."""
    grads = [torch.randn_like(out) for out in fn(x, r)]

    def step():
        outs = fn(x, r)
        if direction == "fwd+bwd":
            torch.autograd.backward(outs, grads)

    step()  # compile warm-up, outside the timing
    return bench_ms(step, x.device, grad_to_none=leaves)


def bench_case(m: int, n: int, device: str = "cuda", *, dtype: torch.dtype = DTYPE, compile: bool = True) -> list[dict]:
    """Rows of one (M, N) case. The CPU test runs it tiny, in fp32 (Triton's interpreter has no bf16
    arithmetic) and without torch.compile."""
    x = torch.randn(m, n, device=device, dtype=dtype, requires_grad=True)
    r = torch.randn(m, n, device=device, dtype=dtype, requires_grad=True)
    w = (1 + 0.1 * torch.randn(n, device=device)).to(dtype).requires_grad_()
    b = (0.1 * torch.randn(n, device=device)).to(dtype).requires_grad_()
    case = f"({m}, {n}) {str(dtype).removeprefix('torch.')}"
    unit = m * n * x.element_size()  # bytes in one (M, N) tensor
    copy_ms = bench_ms(lambda: x.detach().clone(), device)
    copy_gbps = 2 * unit / copy_ms * 1e-6

    rows = []
    for op, moves in BYTES_MOVED.items():
        implementations = _implementations(op, n, w, b, compile)
        for direction, bytes_moved in zip(("fwd", "fwd+bwd"), (moves[0] * unit, moves[1] * unit)):
            bench = f"{op} {direction}"
            for impl, fn in implementations.items():
                ms = _time_ms(fn, direction, x, r, [x, r, w, b])
                rows.append(dict(bench=bench, case=case, impl=impl, ms=ms, gbps=bytes_moved / ms * 1e-6))
            copy_row = dict(impl="copy ceiling", ms=bytes_moved / copy_gbps * 1e-6, gbps=copy_gbps)
            rows.append(dict(bench=bench, case=case, **copy_row))
    torch._dynamo.reset()  # the next case compiles afresh, for its static shapes
    return rows


def main() -> None:
    if not require_cuda("bench_norm"):
        return
    rows = [row for m, n in CASES for row in bench_case(m, n)]
    append_results(rows)
    table = pd.DataFrame(rows).pivot_table(index=["bench", "case"], columns="impl", values="gbps", sort=False)
    print(f"effective GB/s on {torch.cuda.get_device_name(0)} (higher is better; accounting in the docstring)")
    with pd.option_context("display.width", 200, "display.max_rows", 200):
        print(table.round(0).to_string())


if __name__ == "__main__":
    main()
