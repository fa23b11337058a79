"""The FP8 head's casts and its loss: kernels/fp8.py's one-pass cast and kernels/head_loss.py's loss that writes
the FP8 gradient, against torch, in effective GB/s.

Run: `python -m benchmarks.bench_fp8` (needs CUDA; without it, prints one line and exits 0).

Each case is a tensor the FP8 head casts, in the layouts `_scaled_mm` takes (kernels/fp8.py's docstring):
the fp8 copy and its transpose. Implementations, all on the same input:
- "ours": `cast_fp8(t, scale, dtype, transpose=True)`, one kernel;
- "torch eager": `cast_fp8_ref`, the op's eager body: the product in t's dtype, the cast, a transposed copy;
- "torch compiled": `cast_fp8_ref` under torch.compile (Inductor fuses the product into the cast; the
  transposed copy is its own loop or fused, as Inductor decides);
- "copy ceiling": t.clone(), whose GB/s bounds any memory-bound op; its ms is the time a copy at that rate
  would take to move the case's bytes.

Accounting: the bytes that must move, per element of t, its size read once and 1 + 1 written (the fp8 copy
and its transpose): 4 B for bf16, 6 for fp32; every row's `gb` and effective GB/s use that count, so a slower
implementation shows as a lower GB/s. The eager body moves more: 2 + 2 (the product) + 2 + 1 (the cast) + 1 + 1
(the transposed copy) = 9 B for bf16, 15 for fp32. "ours" rows carry `est_ms`, the roofline's estimate of the
call (`roofline.memory_call_ms`: the bytes at its copy rate, one kernel), as its FP8 head items count it.

Cases (fineweb-124m, one 48K-token micro-step): the logits' gradient dY (49152, 50304) bf16 to e5m2 at
grad_s = 2^19 (2.5G elements, 9.9 GB to move), x (49152, 768) bf16 and the head's weight w (50304, 768) fp32
to e4m3 at 2 and 2^9.

The loss (`bench_loss`, LOSS_CASE): from the head's bf16 logits (N, V) and the targets to the mean loss and the
backward's G8 and G8^T (e5m2, grad_s = 2^19), soft-cap 15, dloss = 1:
- "ours": kernels.head_loss's forward kernel and mean, then `loss_grad_fp8` (on CUDA the backward kernel writes
  G8 and G8^T);
- "torch compiled": what --kernels=torch runs, `softcap_cross_entropy` under torch.compile (Inductor's forward and
  backward kernels, the bf16 gradient written), then kernels.fp8's cast of that gradient (`cast_fp8` on CUDA);
  on the CPU (the test) "torch eager", the same uncompiled.
Accounting: the bytes that must move, per logit 2 (forward read) + 2 (backward read) + 1 + 1 (G8, G8^T) = 6 B,
plus 32 B a row (targets twice, lse and the row loss written and read): 14.8 GB at fineweb-124m's 49152 x 50304.
The unfused composition moves 10 B a logit (the bf16 gradient written and read again by the cast). "ours" carries
`est_ms`, the roofline's estimate (`roofline.loss_items`, 3 kernels at its copy rate).
"""
from __future__ import annotations

import pandas as pd
import torch

from benchmarks.common import append_results, bench_ms, require_cuda
from benchmarks.roofline import loss_items, memory_call_ms
from kernels import fp8
from kernels.fp8 import E4M3, E5M2, cast_fp8, cast_fp8_ref
from kernels.head_loss import loss_grad_fp8, loss_rows, softcap_cross_entropy

# (name, (R, C), input dtype, fp8 dtype, scale)
CASES = [("dY", (49152, 50304), torch.bfloat16, E5M2, 2.0**19), ("x", (49152, 768), torch.bfloat16, E4M3, 2.0),
         ("w", (50304, 768), torch.float32, E4M3, 2.0**9)]
LOSS_CASE = (49152, 50304, 15.0, 2.0**19)  # (N, V, softcap, grad_s): the head's logits in one micro-step


def _implementations(compile: bool) -> dict:
    impls = {"ours": cast_fp8, "torch eager": cast_fp8_ref}
    if compile:
        impls["torch compiled"] = torch.compile(cast_fp8_ref, dynamic=False)
    return impls


def _timed_rows(bench: str, case: str, implementations: dict, args: tuple, moved: float, est_ms: float,
                device: str) -> list[dict]:
    """A row per implementation called on the same args: warmed up (its compile, outside the timing), then timed;
    `moved` the bytes that must move, `est_ms` the roofline's estimate, on ours' row."""
    rows = []
    for impl, fn in implementations.items():
        fn(*args)
        ms = bench_ms(lambda: fn(*args), device)
        rows.append(dict(bench=bench, case=case, impl=impl, ms=ms, gb=moved * 1e-9, gbps=moved / ms * 1e-6,
                         est_ms=est_ms if impl == "ours" else None))
    return rows


def bench_case(name: str, shape: tuple[int, int], t_dtype: torch.dtype, dtype: torch.dtype, scale: float,
               device: str = "cuda", *, compile: bool = True) -> list[dict]:
    """Rows of one cast, each implementation on the same input t: values of the size the trainer's are scaled to
    (the module docstring of kernels/fp8.py). compile=False: no compiled row (the CPU test)."""
    t = (torch.randn(shape, device=device) * 8 / scale).to(t_dtype)
    moved = t.numel() * (t.element_size() + 2)
    case = f"{name} {tuple(shape)} {str(t_dtype).removeprefix('torch.')} -> {str(dtype).removeprefix('torch.')}"
    rows = _timed_rows("fp8 cast + transpose", case, _implementations(compile), (t, scale, dtype, True), moved,
                       memory_call_ms(moved, 1), device)
    copy_gbps = 2 * t.numel() * t.element_size() / bench_ms(lambda: t.clone(), device) * 1e-6
    rows.append(dict(bench="fp8 cast + transpose", case=case, impl="copy ceiling", ms=moved / copy_gbps * 1e-6,
                     gb=moved * 1e-9, gbps=copy_gbps, est_ms=None))
    torch._dynamo.reset()  # the next case compiles afresh, for its static shapes
    return rows


def _loss_implementations(compile: bool) -> dict:
    def ours(logits, targets, softcap, grad_s):
        lse, loss = loss_rows(logits, targets, softcap)
        return loss.mean(), loss_grad_fp8(logits, lse, targets, torch.ones((), device=logits.device), softcap, grad_s)

    loss_fn = torch.compile(softcap_cross_entropy, dynamic=False) if compile else softcap_cross_entropy

    def composition(logits, targets, softcap, grad_s):
        z = logits.detach().requires_grad_()
        loss = loss_fn(z, targets, softcap)
        loss.backward()
        return loss.detach(), fp8._cast(z.grad, grad_s, E5M2, transpose=True)

    return {"ours": ours, "torch compiled" if compile else "torch eager": composition}


def bench_loss(N: int, V: int, softcap: float, grad_s: float, device: str = "cuda", *,
               compile: bool = True) -> list[dict]:
    """Rows of the loss with its FP8 gradient, each implementation on the same logits (of a few units, as the
    trainer's) and targets. compile=False: the torch row eager (the CPU test)."""
    gen = torch.Generator(device=device).manual_seed(0)
    logits = (torch.randn(N, V, device=device, generator=gen) * 4).bfloat16()
    targets = torch.randint(V, (N,), device=device, generator=gen)
    items = loss_items(N, V, fused=True)  # the bytes that must move: the roofline's count of the fused loss
    moved, estimate = sum(i.bytes for i in items), sum(memory_call_ms(i.bytes, i.kernels) for i in items)
    case = f"logits ({N}, {V}) bf16, cap {softcap:g} -> loss, G8, G8^T e5m2"
    rows = _timed_rows("fp8 head loss + gradient cast", case, _loss_implementations(compile),
                       (logits, targets, softcap, grad_s), moved, estimate, device)
    torch._dynamo.reset()
    return rows


def main() -> None:
    if not require_cuda("bench_fp8"):
        return
    rows = [row for case in CASES for row in bench_case(*case)] + bench_loss(*LOSS_CASE)
    append_results(rows)
    table = pd.DataFrame(rows).pivot_table(index=["case"], columns="impl", values=["ms", "gbps"], sort=False)
    print(f"FP8 head's casts and loss on {torch.cuda.get_device_name(0)}: ms and effective GB/s (the bytes that must move; "
          "accounting in the docstring); ours' roofline estimate: "
          + ", ".join(f"{r['case'].split()[0]} {r['est_ms']:.2f} ms" for r in rows if r["impl"] == "ours"))
    with pd.option_context("display.width", 200):
        print(table.round(2).to_string())


if __name__ == "__main__":
    main()
