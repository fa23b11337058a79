"""The kernels against PyTorch as pytest-benchmark benchmarks, eager, bf16, on the main shape of each
benchmarks/bench_*.py (their docstrings hold the accounting). Skipped without CUDA.

Each call is timed by pytest-benchmark's clock around the op and a torch.cuda.synchronize(), so a
round ends when the GPU's work does, not when the launch returns; ours and PyTorch's share a group,
which the table and --benchmark-compare show side by side. With benchmarking on, each also records
triton.testing.do_bench's median (benchmarks.common.bench_ms: L2 flushed between calls) and the
rate it gives, in the benchmark's extra_info (`--benchmark-json`, `--benchmark-autosave`).

The benchmark modules' own runs (python -m benchmarks) stay the source of benchmarks/results.csv.
"""
import pytest
import torch

from benchmarks.bench_attention import allowed_pairs, document_cu_seqlens
from benchmarks.bench_newton_schulz import CASES as NS_CASES, STEPS, flops as ns_flops
from benchmarks.bench_norm import BYTES_MOVED, CASES as NORM_CASES
from benchmarks.common import bench_ms

# Not marked `gpu`: that marker selects the tests benchmarks/gpu_check.py runs (pytest -m gpu), not benchmarks.
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="kernel benchmarks time a CUDA device")

DTYPE = torch.bfloat16
NORM_M, NORM_N = NORM_CASES[0]  # GPT-2 small's activations: 64 x 1024 tokens of 768
# (B, T, H, D, window, documents): the trainer's packed batch at a mid-schedule window, and dense causal
ATTENTION_CASES = {"B1 T49152 H6 D128 w768 docs": (1, 49152, 6, 128, 768, True),
                   "B8 T8192 H6 D128 causal": (8, 8192, 6, 128, None, False)}


def run_benchmark(benchmark, fn, *, work: float, unit: str, leaves=()):
    """Time fn with a synchronize after each call (one untimed call first: Triton's JIT compiles there);
    with benchmarking on, record do_bench's median and `work` per second (unit 'GB/s' or 'TFLOP/s')."""
    def call():
        for t in leaves:
            t.grad = None
        fn()
        torch.cuda.synchronize()

    call()
    benchmark.pedantic(call, rounds=50, warmup_rounds=5)
    if not benchmark.disabled:
        ms = bench_ms(fn, "cuda", grad_to_none=list(leaves), return_mode="median")
        benchmark.extra_info.update({"do_bench_ms": ms, unit: work / (ms * 1e-3) / (1e9 if unit == "GB/s" else 1e12)})


@pytest.mark.parametrize("impl", ["ours", "torch"])
@pytest.mark.parametrize("op", list(BYTES_MOVED))
def test_norm_forward(benchmark, op, impl):
    import torch.nn.functional as F

    from kernels.norm import add_rms_norm, layer_norm, rms_norm

    benchmark.group = f"{op} fwd ({NORM_M}, {NORM_N}) bf16"
    x, r = (torch.randn(NORM_M, NORM_N, device="cuda", dtype=DTYPE) for _ in range(2))
    w, b = (torch.randn(NORM_N, device="cuda", dtype=DTYPE) for _ in range(2))
    fns = {
        ("rms_norm", "ours"): lambda: rms_norm(x, w),
        ("rms_norm", "torch"): lambda: F.rms_norm(x, (NORM_N,), w),
        ("layer_norm", "ours"): lambda: layer_norm(x, w, b),
        ("layer_norm", "torch"): lambda: F.layer_norm(x, (NORM_N,), w, b),
        ("add_rms_norm", "ours"): lambda: add_rms_norm(x, r, w),
        ("add_rms_norm", "torch"): lambda: F.rms_norm(x + r, (NORM_N,), w),
    }
    run_benchmark(benchmark, fns[op, impl], work=BYTES_MOVED[op][0] * x.numel() * x.element_size(), unit="GB/s")


@pytest.mark.parametrize("impl", ["ours", "torch"])
@pytest.mark.parametrize("case", list(NS_CASES))
def test_newton_schulz(benchmark, case, impl):
    from kernels.newton_schulz import newton_schulz, newton_schulz_ref

    B, M, N = NS_CASES[case]
    benchmark.group = f"newton_schulz {case} bf16, {STEPS} steps"
    G = torch.randn(*((B,) if B else ()), M, N, device="cuda", dtype=DTYPE)
    fn = newton_schulz if impl == "ours" else newton_schulz_ref
    run_benchmark(benchmark, lambda: fn(G, steps=STEPS), work=ns_flops(B, M, N), unit="TFLOP/s")


@pytest.mark.parametrize("direction", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", ["ours", "sdpa_flash"])
@pytest.mark.parametrize("case", list(ATTENTION_CASES))
def test_attention(benchmark, case, impl, direction):
    """Ours on the case's mask; SDPA's flash backend on plain causal, the same shape (it has no window or
    documents: the dense upper bound). FLOPs: 4·B·H·D per allowed pair, forward + backward 3.5x that."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from kernels.attention import flash_attention

    B, T, H, D, window, docs = ATTENTION_CASES[case]
    benchmark.group = f"attention {direction} {case} bf16"
    cu = document_cu_seqlens(T) if docs else None
    q, k, v = (torch.randn(B, T, H, D, device="cuda", dtype=DTYPE, requires_grad=True) for _ in range(3))
    if impl == "ours":
        cu_dev = None if cu is None else cu.cuda()
        inputs, pairs = (q, k, v), allowed_pairs(T, window, cu)

        def forward():
            return flash_attention(q, k, v, window_size=window, cu_seqlens=cu_dev)
    else:
        inputs = tuple(t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))  # (B, H, T, D)
        pairs = allowed_pairs(T, None, None)

        def forward():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(*inputs, is_causal=True)
    grad = torch.randn_like(forward())
    fwd_flops = 4 * B * H * D * pairs
    if direction == "fwd":
        with torch.no_grad():
            run_benchmark(benchmark, forward, work=fwd_flops, unit="TFLOP/s")
    else:
        run_benchmark(benchmark, lambda: forward().backward(grad), work=3.5 * fwd_flops, unit="TFLOP/s", leaves=inputs)
