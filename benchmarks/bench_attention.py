"""Flash attention benchmark: ours vs SDPA (flash backend) vs FlexAttention, in one run.

    python -m benchmarks.bench_attention

Cases (bf16):
- the trainer's long packed batch, B=1 T=49152 H=6 D=128, with windows 128, 384, 768, 1792 and
  documents drawn like web text (lognormal lengths, mean ~1k tokens, seeded). Ours and FlexAttention
  (compiled, block mask from create_block_mask) compute the same window+document mask; SDPA's flash
  backend has no window or documents, so it runs plain causal on the same shape as the dense
  upper bound.
- dense causal B=8 T=8192 H=6 D=128 and B=64 T=1024 H=12 D=64, all three on the same mask.

Like with like: every row has a `mode`, and implementations are compared within one mode. "eager":
ours (`flash_attention` called as it is: its input checks read no value from the GPU, so no host sync
is timed) and SDPA. "compiled": ours, FlexAttention and SDPA, each wrapped in
torch.compile(fullgraph=True, dynamic=False). FlexAttention has no eager row on a GPU: eager, it is
PyTorch's dense reference (the (B, H, T, T) scores in memory: tens of GB at T = 49152), not its kernel.

Accounting (tutorial 06): forward = 4 * B * H * D FLOPs per allowed (query, key) pair, pairs counted
exactly from the mask geometry (sum over tokens of min(window, position in document + 1)); forward
+ backward = 3.5 x forward (backward = 2.5 x forward). Each implementation is credited with the
pairs of the mask it computes, so SDPA's plain-causal rows count T (T + 1) / 2 pairs per sequence;
compare ms across implementations on the same case. Our rows also carry `est_ms`, benchmarks/roofline.py's
estimate of the same call on an H100 (`attention_call_ms`), so a GPU run calibrates it.

First checks our bf16 output and gradients against the fp32 reference on a small case (at most 2x
PyTorch's own bf16 error + 1e-3) and raises if that fails. Appends every row to
benchmarks/results.csv (benchmarks.common stamps date, git SHA, GPU, torch and Triton versions) and
prints the table last. Without CUDA it says so and exits 0.
"""
from __future__ import annotations

import math
import sys

import torch

from benchmarks.common import RESULTS_CSV, append_results, bench_ms, require_cuda

WINDOWS = (128, 384, 768, 1792)
MODES = ("eager", "compiled")  # like with like: every implementation is timed in the same mode as the others
MEAN_DOC_TOKENS = 1000
DOC_SIGMA = 1.0  # lognormal shape: a long tail of long documents, many short ones


def document_cu_seqlens(T: int, *, mean: float = MEAN_DOC_TOKENS, sigma: float = DOC_SIGMA, seed: int = 0):
    """int32 cumulative starts of documents with lognormal lengths (mean `mean`), cut to fill T."""
    gen = torch.Generator().manual_seed(seed)
    mu = math.log(mean) - sigma**2 / 2  # E[lognormal] = exp(mu + sigma^2 / 2)
    lengths = []
    while sum(lengths) < T:
        length = max(1, round(math.exp(mu + sigma * float(torch.randn((), generator=gen)))))
        lengths.append(min(length, T - sum(lengths)))
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


def allowed_pairs(T: int, window: int | None, cu_seqlens: torch.Tensor | None) -> int:
    """Exact number of allowed (query, key) pairs of one sequence: sum_i min(window, i - doc_start(i) + 1)."""
    tokens = torch.arange(T, dtype=torch.int64)
    if cu_seqlens is None:
        keys = tokens + 1
    else:
        cu = cu_seqlens.cpu().long()
        doc_start = cu[torch.searchsorted(cu, tokens, right=True) - 1]
        keys = tokens - doc_start + 1
    if window is not None:
        keys = keys.clamp(max=window)
    return int(keys.sum())


def check_bf16(device: str, *, dtype: torch.dtype = torch.bfloat16, T: int = 1500, H: int = 2, D: int = 128,
               window: int = 200, mean_doc: float = 300) -> bool:
    """Our bf16 output and gradients vs the fp32 reference, within 2x PyTorch's own bf16 error (the CPU
    test runs it tiny in fp16: Triton's interpreter has no bf16 arithmetic)."""
    from kernels.attention import attention_ref, flash_attention

    cu = document_cu_seqlens(T, mean=mean_doc, seed=1).to(device)
    q, k, v = (torch.randn(1, T, H, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    do = torch.randn(1, T, H, D, device=device, dtype=dtype)

    def run(fn, dtype, **kw):
        leaves = [x.detach().to(dtype).requires_grad_() for x in (q, k, v)]
        out = fn(*leaves, window_size=window, cu_seqlens=cu, **kw)
        return (out, *torch.autograd.grad(out, leaves, do.to(out.dtype)))

    ours = run(flash_attention, dtype)
    ref32 = run(attention_ref, torch.float32)
    ref16 = run(attention_ref, dtype, upcast=False)
    ok = True
    for name, a, r32, r16 in zip(("out", "dq", "dk", "dv"), ours, ref32, ref16):
        err = (a.float() - r32).abs().max().item()
        torch_err = (r16.float() - r32).abs().max().item()
        passed = err <= 2 * torch_err + 1e-3
        ok &= passed
        low = str(dtype).removeprefix("torch.")
        verdict = "ok" if passed else "FAIL"
        print(f"{low} check {name}: max error {err:.3e} vs PyTorch {low} {torch_err:.3e} -> {verdict}")
    return ok


def _cases():
    """(case name, B, T, H, D, window, cu_seqlens)."""
    T = 49152
    cu = document_cu_seqlens(T)
    for window in WINDOWS:
        yield f"B1 T{T} H6 D128 w{window} docs{len(cu) - 1}", 1, T, 6, 128, window, cu
    yield "B8 T8192 H6 D128 causal", 8, 8192, 6, 128, None, None
    yield "B64 T1024 H12 D64 causal", 64, 1024, 12, 64, None, None


def _flex_block_mask(T: int, window: int | None, cu_seqlens: torch.Tensor | None, device: str, compile: bool = True):
    from torch.nn.attention.flex_attention import create_block_mask

    doc = None
    if cu_seqlens is not None:
        tokens = torch.arange(T, device=device, dtype=torch.int32)
        doc = torch.searchsorted(cu_seqlens.to(device), tokens, right=True)

    def mask_mod(b, h, q_idx, kv_idx):
        allowed = q_idx >= kv_idx
        if window is not None:
            allowed = allowed & (q_idx - kv_idx < window)
        if doc is not None:
            allowed = allowed & (doc[q_idx] == doc[kv_idx])
        return allowed

    return create_block_mask(mask_mod, None, None, T, T, device=device, _compile=compile)


def _bench_case(case, B, T, H, D, window, cu, flex: dict, sdpa_shapes_done: set, device: str = "cuda", *,
                dtype: torch.dtype = torch.bfloat16, modes=MODES, backend: str = "inductor") -> list[dict]:
    """Rows for one case in each mode: ours and FlexAttention on its mask, SDPA flash (dense causal) once
    per shape. `flex` maps a mode to the FlexAttention function to use in it (none: no flex rows).

    Mode "eager" calls each function as it is; "compiled" wraps each in torch.compile(fullgraph=True,
    dynamic=False, backend=backend), compiled and warmed up (do_bench's warm-up) before timing. Off a GPU
    (the CPU test: tiny cases, fp16 or fp32) FlexAttention has no backward and refuses inputs that require
    grad, so it runs the forward alone on detached inputs."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from benchmarks.roofline import attention_call_ms
    from kernels.attention import flash_attention

    on_gpu = torch.device(device).type == "cuda"
    cu_dev = None if cu is None else cu.to(device)
    q, k, v = (torch.randn(B, T, H, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    do = torch.randn(B, T, H, D, device=device, dtype=dtype)
    # SDPA and FlexAttention take (B, H, T, D); give them their own contiguous layout.
    qh, kh, vh = (x.detach().transpose(1, 2).contiguous().requires_grad_() for x in (q, k, v))
    doh = do.transpose(1, 2).contiguous()
    flex_inputs = (qh, kh, vh) if on_gpu else tuple(x.detach() for x in (qh, kh, vh))
    block_mask = _flex_block_mask(T, window, cu_dev, device, compile=on_gpu)  # compiled: no dense T x T mask
    pairs = allowed_pairs(T, window, cu)
    # the roofline's estimate of ours on an H100 in bf16, written beside its measurement
    estimates = {bench: attention_call_ms(B, T, H, D, window, cu, backward=bench == "attention_fwd_bwd")
                 for bench in ("attention_fwd", "attention_fwd_bwd")}
    sdpa_once = (B, T, H, D) not in sdpa_shapes_done
    sdpa_shapes_done.add((B, T, H, D))

    def ours(q, k, v):
        return flash_attention(q, k, v, window_size=window, cu_seqlens=cu_dev)

    def sdpa(q, k, v):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    rows = []
    for mode in modes:
        wrap = (lambda fn: torch.compile(fn, fullgraph=True, dynamic=False, backend=backend)) if mode == "compiled" \
            else (lambda fn: fn)
        ours_fn, sdpa_fn = wrap(ours), wrap(sdpa)
        # impl -> (case label, forward fn, leaves, upstream grad, allowed pairs per sequence)
        impls = {"ours": (case, lambda fn=ours_fn: fn(q, k, v), (q, k, v), do, pairs)}
        if mode in flex:
            impls["flex"] = (case, lambda fn=flex[mode]: fn(*flex_inputs, block_mask=block_mask), (qh, kh, vh), doh,
                             pairs)
        if sdpa_once:
            impls["sdpa_flash"] = (f"B{B} T{T} H{H} D{D} causal", lambda fn=sdpa_fn: fn(qh, kh, vh), (qh, kh, vh), doh,
                                   allowed_pairs(T, None, None))
        for impl, (label, fn, leaves, grad, impl_pairs) in impls.items():
            fwd_flops = 4 * B * H * D * impl_pairs

            def fwd_bwd(fn=fn, grad=grad):
                fn().backward(grad)

            benches = (("attention_fwd", fn, fwd_flops), ("attention_fwd_bwd", fwd_bwd, 3.5 * fwd_flops))
            for bench, step, flops in benches if on_gpu or impl != "flex" else benches[:1]:
                ms = bench_ms(step, device, grad_to_none=list(leaves), return_mode="median")
                tflops = flops / ms / 1e9
                rows.append({"bench": bench, "case": label, "mode": mode, "impl": impl, "ms": round(ms, 4),
                             "tflops": round(tflops, 1),
                             "est_ms": round(estimates[bench], 4) if impl == "ours" else None})
                print(f"{bench:18s} {label:34s} {mode:8s} {impl:10s} {ms:9.3f} ms {tflops:7.1f} TFLOP/s", flush=True)
    return rows


def run_cases(cases, device: str = "cuda", *, dtype: torch.dtype = torch.bfloat16, compile: bool = True,
              backend: str = "inductor") -> list[dict]:
    """Every case's rows, in modes eager and compiled (eager only with compile=False: the CPU test).
    FlexAttention runs compiled only, compiled once for all cases: eager, it is PyTorch's dense reference
    (the (B, H, T, T) scores materialised: tens of GB at T = 49152), no contender. With compile=False it runs
    eager, to check the code path on a CPU."""
    from torch.nn.attention.flex_attention import flex_attention

    modes = MODES if compile else ("eager",)
    # one compile of FlexAttention and of the mask builder per shape and mask: room for them all (past the
    # limit dynamo falls back to eager, which materialises a dense T x T mask: 9 GB at T = 49152)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * len(cases))
    flex = {"compiled": torch.compile(flex_attention, dynamic=False, backend=backend)} if compile \
        else {"eager": flex_attention}
    rows, sdpa_shapes_done = [], set()  # SDPA ignores window and documents: one plain-causal run per shape
    for case in cases:
        rows += _bench_case(*case, flex, sdpa_shapes_done, device, dtype=dtype, modes=modes, backend=backend)
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()  # the case's tensors died with _bench_case
    return rows


def main() -> int:
    if not require_cuda("bench_attention"):
        return 0

    if not check_bf16("cuda"):
        raise RuntimeError("bench_attention: bf16 check failed; not benchmarking a wrong kernel")

    rows = run_cases(list(_cases()))
    table = append_results(rows)
    print(f"\nappended {len(rows)} rows to {RESULTS_CSV}")
    print(table[["gpu", "bench", "case", "mode", "impl", "ms", "tflops"]].to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
