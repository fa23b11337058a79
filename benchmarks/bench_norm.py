"""kernels/norm.py against PyTorch, eager against eager and compiled against compiled, in effective GB/s.

Run: `python -m benchmarks.bench_norm` (needs CUDA; without it, prints one line and exits 0).

Like with like: every row has a `mode`. "eager": our op called directly vs F.rms_norm / F.layer_norm
(the fused ops: their kernels/norm.py reference) eager; "compiled": the reference under torch.compile, as
`--kernels=torch` runs it inside the compiled model, against our op called as it is. Ours is a custom op:
torch.compile around it alone compiles a graph of that one call, the same Triton kernels, so wrapping it
buys no speed and costs an inductor compile per function (7 of the 14 that gpu_check's `--quick` stage
would otherwise compile); its "compiled" row repeats its "eager" timing, the same call timed once. Each compiled
reference is compiled once per case and warmed up before timing.

Accounting: bytes that must move, M rows of N elements of `bytes` each; weights, bias and the fp32
per-row statistics are negligible next to them and not counted. Each row's `gb` column is that count.
    rms_norm / layer_norm   forward           read x, write y                          2·M·N·bytes
                            forward+backward  + read x and dy, write dx                5·M·N·bytes
    add_rms_norm            forward           read x and residual, write sum and y     4·M·N·bytes
                            forward+backward  + read sum, dy and dsum, write dx        8·M·N·bytes
The trainer's fused norms (train_gpt.Block's entry and CausalSelfAttention's QK-norm), M rows of N:
    mix_rms_norm (x, r, x0)    forward           read x, r, x0, write s and y                    5·M·N·bytes
                               forward+backward  + read x, r, x0, ds, dy, write dx (= dr), dx0  12·M·N·bytes
    mix_rms_norm_no_r (x, x0)  forward           read x, x0, write s and y                       4·M·N·bytes
                               forward+backward  + read x, x0, ds, dy, write dx, dx0            10·M·N·bytes
    rms_norm_rotary            forward           read x, write y                                 2·M·N·bytes
                               forward+backward  + read x and dy, write dx                       5·M·N·bytes
(the per-token bytes benchmarks/roofline.py counts for them). Their reference is kernels/norm.py's `*_ref`
(what `--kernels=torch` runs), eager or compiled like F.rms_norm; the λ gradients' fp32 partial sums and
the rotary tables are negligible. Their "ours" rows carry `est_ms`, the roofline's estimate of the very
call (`roofline.memory_call_ms`: those bytes at its copy rate, one kernel forward and one backward, as its
norm items count them); the other rows have none. r is no leaf of the timed backward: its gradient is x's tensor, and a
second leaf would add autograd's copy for it to both implementations (the trainer has no such copy).
Our kernels move exactly that, strided inputs included: they read x in place (tests/test_norm.py checks
the launch pointers). An implementation that copies a strided x first moves more than it is credited
with (a copy before the forward and another of the saved x before the backward: 4 and 9 ·M·N·bytes),
and its effective GB/s shows it.

Cases, bf16:
- contiguous (M, N): GPT-2 small's activations (65536, 768) (B·T = 64 × 1024 tokens) and widths 1024 to
  8192 with the same ~50M elements; every op.
- the trainer's QK-norm input, rms_norm only: q as a view of the QKV projection,
  `F.linear(x, W).view(B, T, 3H, D).chunk(3, dim=-2)[0]`, (B, T, H, D) = (48, 1024, 6, 128): 48K tokens,
  rows of 256 bytes spaced 3·H·D apart. M = B·T·H rows of N = D.
- the trainer's fused norms at fineweb-124m's shapes: mix_rms_norm with and without r on the residual
  stream (1, 49152, 768); rms_norm_rotary on q as a view of the QKV projection, (1, 49152, 6, 128), with
  train_gpt.Rotary's tables.
Copy ceiling: x.clone() (eager; on the QKV case a clone of the strided view) moves 2·M·N·bytes; its
GB/s bounds any memory-bound op. Its row under each bench and mode gives that GB/s and the time a copy
at that rate would take to move the bench's bytes.
"""
from __future__ import annotations

import pandas as pd
import torch
import torch.nn.functional as F

from benchmarks.common import append_results, bench_ms, require_cuda
from benchmarks.roofline import memory_call_ms
from kernels import norm
from train_gpt import Rotary

CASES = [(65536, 768), (49152, 1024), (24576, 2048), (12288, 4096), (6144, 8192)]  # (M, N): M·N ≈ 50M
QKV_CASES = [(48, 1024, 6, 128)]  # (B, T, H, D): q of the trainer's QKV projection, 48K tokens
DTYPE = torch.bfloat16
MODES = ("eager", "compiled")
# op -> multiples of M·N·bytes that must move in (forward, forward+backward): see the module docstring.
BYTES_MOVED = {"rms_norm": (2, 5), "layer_norm": (2, 5), "add_rms_norm": (4, 8)}
FUSED_BYTES_MOVED = {"mix_rms_norm": (5, 12), "mix_rms_norm_no_r": (4, 10), "rms_norm_rotary": (2, 5)}
MIX_CASES = [(1, 49152, 768)]  # (B, T, d): fineweb-124m's residual stream, one 48K-token micro-step
ROTARY_CASES = [(1, 49152, 6, 128)]  # (B, T, H, D): its q (and k), views of the QKV projection


def _implementations(op: str, n: int, w, b, modes=MODES) -> dict:
    """(mode, impl) -> function of (x, residual) returning the op's output tensors, as a tuple. Mode
    "compiled" wraps PyTorch's in torch.compile(dynamic=False) (`_like_with_like`)."""
    if op == "rms_norm":

        def ours(x, r):
            return (norm.rms_norm(x, w),)

        def torch_fn(x, r):
            return (F.rms_norm(x, (n,), w),)

    elif op == "layer_norm":

        def ours(x, r):
            return (norm.layer_norm(x, w, b),)

        def torch_fn(x, r):
            return (F.layer_norm(x, (n,), w, b),)

    else:

        def ours(x, r):
            return norm.add_rms_norm(x, r, w)

        def torch_fn(x, r):
            s = x + r
            return s, F.rms_norm(s, (n,), w)

    return _like_with_like(ours, torch_fn, modes)


def _like_with_like(ours, torch_fn, modes) -> dict:
    """(mode, impl) -> ours or torch_fn; in mode "compiled" torch_fn wrapped in torch.compile(dynamic=False) and
    ours as it is (the module docstring)."""
    impls = {}
    for mode in modes:
        impls[mode, "ours"] = ours
        impls[mode, "torch"] = torch.compile(torch_fn, dynamic=False) if mode == "compiled" else torch_fn
    return impls


def _fused_implementations(op: str, cos=None, sin=None, modes=MODES) -> dict:
    """(mode, impl) -> function of the op's inputs returning its outputs as a tuple: kernels/norm.py's fused op
    ("ours") and its reference `*_ref` ("torch"); rms_norm_rotary takes x, the tables are cos and sin."""
    if op == "rms_norm_rotary":
        def ours(x):
            return (norm.rms_norm_rotary(x, cos, sin),)

        def torch_fn(x):
            return (norm.rms_norm_rotary_ref(x, cos, sin),)

    elif op == "mix_rms_norm":
        def ours(x, r, x0, lambdas):
            return norm.mix_rms_norm(x, r, x0, lambdas)

        def torch_fn(x, r, x0, lambdas):
            return norm.mix_rms_norm_ref(x, r, x0, lambdas)

    else:  # mix_rms_norm_no_r: the first block and where a U-net skip joins (train_gpt.GPT.forward)
        def ours(x, x0, lambdas):
            return norm.mix_rms_norm(x, None, x0, lambdas)

        def torch_fn(x, x0, lambdas):
            return norm.mix_rms_norm_ref(x, None, x0, lambdas)

    return _like_with_like(ours, torch_fn, modes)


def _time_ms(fn, direction: str, inputs: tuple, leaves) -> float:
    """do_bench of fn(*inputs)'s forward, or of its forward and backward (grads of the leaves reset each rep);
    the wall clock off a GPU (benchmarks.common.bench_ms)."""
    grads = [torch.randn_like(out) for out in fn(*inputs)]

    def step():
        outs = fn(*inputs)
        if direction == "fwd+bwd":
            torch.autograd.backward(outs, grads)

    step()  # compile warm-up, outside the timing
    return bench_ms(step, inputs[0].device, grad_to_none=leaves)


def _rows(ops, case: str, x, r, w, b, modes) -> list[dict]:
    """Rows of `ops` on input x (and residual r): per op, direction and mode, ours, PyTorch's and the copy
    ceiling, each with the bytes the accounting counts (`gb`) and the effective GB/s."""
    leaves = [t for t in (x, r, w, b) if t is not None]
    return _timed_rows({op: BYTES_MOVED[op] for op in ops}, lambda op: _implementations(op, x.shape[-1], w, b, modes),
                       case, (x, r), leaves, modes)


def _timed_rows(moved: dict, implementations_of, case: str, inputs: tuple, leaves, modes,
                estimate: bool = False) -> list[dict]:
    """Rows of each op of `moved` (op -> multiples of one input's bytes moved forward, forward+backward) on
    `inputs`, the first of them the (M, N) unit: per op, direction and mode, ours, PyTorch's
    (implementations_of(op)[mode, impl], called on the inputs) and the copy ceiling, each with the bytes the
    accounting counts (`gb`), the effective GB/s and, with `estimate`, ours with the roofline's estimate
    (`est_ms`; None on the other rows)."""
    x = inputs[0]
    device = x.device
    unit = x.numel() * x.element_size()  # bytes in one (M, N) tensor, gaps of a strided x not counted
    copy_ms = bench_ms(lambda: x.detach().clone(), device)
    copy_gbps = 2 * unit / copy_ms * 1e-6
    rows = []
    for op, moves_of_op in moved.items():
        implementations = implementations_of(op)
        for kernels, (direction, moves) in enumerate(zip(("fwd", "fwd+bwd"), moves_of_op), start=1):
            bench, bytes_moved = f"{op} {direction}", moves * unit
            est_ms = memory_call_ms(bytes_moved, kernels) if estimate else None
            timed = {}  # one timing per function: ours is the same call in both modes (the module docstring)
            for mode in modes:
                for impl in ("ours", "torch"):
                    fn = implementations[mode, impl]
                    ms = timed[fn] = timed[fn] if fn in timed else _time_ms(fn, direction, inputs, leaves)
                    rows.append(dict(bench=bench, case=case, mode=mode, impl=impl, ms=ms, gb=bytes_moved * 1e-9,
                                     gbps=bytes_moved / ms * 1e-6, est_ms=est_ms if impl == "ours" else None))
                rows.append(dict(bench=bench, case=case, mode=mode, impl="copy ceiling",
                                 ms=bytes_moved / copy_gbps * 1e-6, gb=bytes_moved * 1e-9, gbps=copy_gbps,
                                 est_ms=None))
    torch._dynamo.reset()  # the next case compiles afresh, for its static shapes
    return rows


def _params(n: int, device, dtype):
    w = (1 + 0.1 * torch.randn(n, device=device)).to(dtype).requires_grad_()
    b = (0.1 * torch.randn(n, device=device)).to(dtype).requires_grad_()
    return w, b


def bench_case(m: int, n: int, device: str = "cuda", *, dtype: torch.dtype = DTYPE, compile: bool = True) -> list[dict]:
    """Rows of one contiguous (M, N) case, every op; compile=False: mode "eager" only. The CPU test runs it
    tiny, in fp32 (Triton's interpreter has no bf16 arithmetic) and eager only."""
    x = torch.randn(m, n, device=device, dtype=dtype, requires_grad=True)
    r = torch.randn(m, n, device=device, dtype=dtype, requires_grad=True)
    w, b = _params(n, device, dtype)
    modes = MODES if compile else ("eager",)
    return _rows(BYTES_MOVED, f"({m}, {n}) {str(dtype).removeprefix('torch.')}", x, r, w, b, modes)


def bench_qkv_case(B: int, T: int, H: int, D: int, device: str = "cuda", *, dtype: torch.dtype = DTYPE,
                   compile: bool = True) -> list[dict]:
    """Rows of rms_norm on q as the trainer's QK-norm gets it: a strided view of the QKV projection's
    (B·T, 3·H·D) output, itself the gradient's leaf (the gradient of the unused k and v is not timed).
    compile=False: mode "eager" only."""
    modes = MODES if compile else ("eager",)
    qkv = torch.randn(B * T, 3 * H * D, device=device, dtype=dtype)
    q = qkv.view(B, T, 3 * H, D).chunk(3, dim=-2)[0].requires_grad_()  # (B, T, H, D), strides (T·3HD, 3HD, D, 1)
    w, _ = _params(D, device, dtype)
    case = f"qkv view ({B}, {T}, {H}, {D}) {str(dtype).removeprefix('torch.')}"
    return _rows(["rms_norm"], case, q, None, w, None, modes)


def bench_mix_case(B: int, T: int, d: int, device: str = "cuda", *, dtype: torch.dtype = DTYPE,
                   compile: bool = True) -> list[dict]:
    """Rows of mix_rms_norm on the residual stream (B, T, d), with r (x, r, x0: a block after the first) and
    without (x, x0); fp32 λ (the trainer's parameters). compile=False: mode "eager" only."""
    modes = MODES if compile else ("eager",)
    x, r, x0 = (torch.randn(B, T, d, device=device, dtype=dtype) for _ in range(3))
    x.requires_grad_(), x0.requires_grad_()  # r: no leaf (the module docstring)
    lambdas = torch.tensor([1.0, 0.5], device=device, requires_grad=True)
    case = f"({B}, {T}, {d}) {str(dtype).removeprefix('torch.')}"
    rows = _timed_rows({"mix_rms_norm": FUSED_BYTES_MOVED["mix_rms_norm"]},
                       lambda op: _fused_implementations(op, modes=modes), case, (x, r, x0, lambdas),
                       [x, x0, lambdas], modes, estimate=True)
    return rows + _timed_rows({"mix_rms_norm_no_r": FUSED_BYTES_MOVED["mix_rms_norm_no_r"]},
                              lambda op: _fused_implementations(op, modes=modes), case, (x, x0, lambdas),
                              [x, x0, lambdas], modes, estimate=True)


def bench_rotary_case(B: int, T: int, H: int, D: int, device: str = "cuda", *, dtype: torch.dtype = DTYPE,
                      compile: bool = True) -> list[dict]:
    """Rows of rms_norm_rotary on q as the trainer's attention gets it: a strided view of the QKV projection's
    (B·T, 3·H·D) output, the gradient's leaf; train_gpt.Rotary's tables for T positions. compile=False: mode
    "eager" only."""
    modes = MODES if compile else ("eager",)
    qkv = torch.randn(B * T, 3 * H * D, device=device, dtype=dtype)
    q = qkv.view(B, T, 3 * H, D).chunk(3, dim=-2)[0].requires_grad_()  # (B, T, H, D), strides (T·3HD, 3HD, D, 1)
    rotary = Rotary(D, T).to(device)
    case = f"qkv view ({B}, {T}, {H}, {D}) {str(dtype).removeprefix('torch.')}"
    return _timed_rows({"rms_norm_rotary": FUSED_BYTES_MOVED["rms_norm_rotary"]},
                       lambda op: _fused_implementations(op, rotary.cos, rotary.sin, modes), case, (q,), [q], modes,
                       estimate=True)


def main() -> None:
    if not require_cuda("bench_norm"):
        return
    rows = [row for m, n in CASES for row in bench_case(m, n)]
    rows += [row for shape in QKV_CASES for row in bench_qkv_case(*shape)]
    rows += [row for shape in MIX_CASES for row in bench_mix_case(*shape)]
    rows += [row for shape in ROTARY_CASES for row in bench_rotary_case(*shape)]
    append_results(rows)
    table = pd.DataFrame(rows).pivot_table(index=["bench", "case", "mode"], columns="impl", values="gbps", sort=False)
    print(f"effective GB/s on {torch.cuda.get_device_name(0)} (higher is better; ours vs torch in the same mode; "
          "accounting in the docstring)")
    with pd.option_context("display.width", 200, "display.max_rows", 200):
        print(table.round(0).to_string())


if __name__ == "__main__":
    main()
