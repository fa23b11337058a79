"""kernels/mlp.py's relu2_mlp against the PyTorch MLP, eager against eager and compiled against compiled, in TFLOP/s.

    python -m benchmarks.bench_mlp

CUDA only (elsewhere it says so in one line and exits 0). The case is the fineweb-124m MLP of one layer on one
micro-step: x (49152, 768) -> 3072 -> 768, bf16, weights at nn.Linear's scale. The reference is
`relu2_mlp_ref` = F.linear(F.relu(F.linear(x, W_fc)).square(), W_proj): eager, and compiled, where Inductor
fuses ReLU² into one element-wise kernel forward and one backward (what --kernels=torch runs); ours is the
custom op, called as it is ("eager") and inside torch.compile ("compiled": the same kernels, the graph around
them compiled), so each mode compares like with like.

Accounting: forward 2 matmuls of 2·M·d·f FLOPs; forward + backward 3 x that (dX and dW of each); TFLOP/s on that
count. Bytes (bf16): kernels/mlp.py's docstring counts ReLU²'s per token, fused and unfused (roofline.relu2_item).
Our rows carry `est_ms`, benchmarks/roofline.py's estimate of the same call on an H100 (`mlp_call_ms`: the
matmuls at the table's matmul rate, an assumption for our Triton fc matmul that this benchmark checks), so a GPU
run calibrates it. `max_err_vs_fp32` is max|y - y_fp32| of the forward against the reference run in fp32 on
the same inputs. Times are do_bench medians, compile and autotuning excluded (an untimed call first). Rows
are appended to benchmarks/results.csv; the table of this run's rows is printed last.
"""
from __future__ import annotations

import pandas as pd
import torch

from benchmarks.common import append_results, bench_ms, require_cuda
from benchmarks.roofline import mlp_call_ms
from kernels.mlp import relu2_mlp, relu2_mlp_ref

CASES = [(49152, 768, 3072)]  # (M tokens, d, f): fineweb-124m's micro-step of 48K tokens, one layer
MODES = ("eager", "compiled")
BENCHES = {"mlp_fwd": 1, "mlp_fwd_bwd": 3}  # bench -> multiple of the forward's FLOPs


def flops(M: int, d: int, f: int, bench: str) -> float:
    return BENCHES[bench] * 2 * 2 * M * d * f


def implementations(modes=MODES) -> dict:
    """(mode, impl) -> function of (x, w_fc, w_proj); "compiled" wraps ours and the reference alike."""
    impls = {}
    for mode in modes:
        for impl, fn in (("ours", relu2_mlp), ("torch", relu2_mlp_ref)):
            impls[mode, impl] = torch.compile(fn, dynamic=False) if mode == "compiled" else fn
    return impls


def bench_case(M: int, d: int, f: int, device: str = "cuda", *, dtype: torch.dtype = torch.bfloat16,
               compile: bool = True) -> list[dict]:
    """Rows of one case, every bench, mode and impl on the same inputs; compile=False: mode "eager" only. The CPU
    test runs it tiny, in fp32 (Triton's interpreter has no bf16 arithmetic)."""
    x = torch.randn(M, d, device=device).to(dtype).requires_grad_()
    w_fc = (torch.randn(f, d, device=device) * d**-0.5).to(dtype).requires_grad_()
    w_proj = (torch.randn(d, f, device=device) * f**-0.5).to(dtype).requires_grad_()
    dy = torch.randn(M, d, device=device).to(dtype)
    leaves = [x, w_fc, w_proj]
    with torch.no_grad():
        exact = relu2_mlp_ref(*(t.float() for t in leaves))
    case = f"({M}, {d} -> {f}) {str(dtype).removeprefix('torch.')}"
    rows = []
    for (mode, impl), fn in implementations(MODES if compile else ("eager",)).items():
        err = (fn(*leaves).detach().float() - exact).abs().max().item()  # untimed: compiles and autotunes

        def fwd(fn=fn):
            return fn(*leaves)

        def fwd_bwd(fn=fn):
            fn(*leaves).backward(dy)

        for bench, step in (("mlp_fwd", fwd), ("mlp_fwd_bwd", fwd_bwd)):
            step()  # the backward's compile, outside the timing
            ms = bench_ms(step, device, grad_to_none=leaves, return_mode="median")
            est = mlp_call_ms(M, d, f, backward=bench == "mlp_fwd_bwd") if impl == "ours" else None
            rows.append(dict(bench=bench, case=case, mode=mode, impl=impl, ms=ms,
                             tflops=flops(M, d, f, bench) / (ms * 1e-3) / 1e12, est_ms=est, max_err_vs_fp32=err))
            print(f"{bench:12s} {case:28s} {mode:8s} {impl:6s} {ms:8.3f} ms {rows[-1]['tflops']:6.1f} TFLOP/s"
                  + (f" (roofline {est:.3f} ms)" if est else "") + f", max|y - y_fp32| {err:.2e}", flush=True)
    torch._dynamo.reset()
    return rows


def main() -> int:
    if not require_cuda("bench_mlp"):
        return 0
    rows = [row for M, d, f in CASES for row in bench_case(M, d, f)]
    table = append_results(rows)
    print(f"TFLOP/s on {torch.cuda.get_device_name(0)} (ours vs torch in the same mode; accounting in the docstring)")
    with pd.option_context("display.width", 200):
        columns = ["bench", "case", "mode", "impl", "ms", "tflops", "est_ms", "max_err_vs_fp32"]
        print(table[columns].to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
