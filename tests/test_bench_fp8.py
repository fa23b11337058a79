"""benchmarks/bench_fp8.py's code paths on tiny cases: the benchmark is for GPUs, but a GPU session is too short to
discover there that it no longer matches kernels/fp8.py's API. On the CPU the kernel runs under Triton's
interpreter and nothing is compiled (compiling on 2 CPU cores costs minutes)."""
import math

import pytest
import torch

import benchmarks.bench_fp8 as bench_fp8
from benchmarks.roofline import loss_items, memory_call_ms
from kernels.fp8 import E4M3, E5M2

IMPLS = ["ours", "torch eager", "copy ceiling"]


@pytest.mark.parametrize("t_dtype,dtype,scale", [(torch.bfloat16, E5M2, 2.0**19), (torch.float32, E4M3, 2.0**9)])
def test_rows_count_the_bytes_that_must_move(device, t_dtype, dtype, scale):
    rows = bench_fp8.bench_case("dY", (19, 37), t_dtype, dtype, scale, device, compile=False)
    assert [r["impl"] for r in rows] == IMPLS
    moved = 19 * 37 * (t_dtype.itemsize + 2)  # t read once, the fp8 copy and its transpose written
    for row in rows:
        assert set(row) == {"bench", "case", "impl", "ms", "gb", "gbps", "est_ms"}
        assert row["case"].startswith("dY (19, 37) ") and math.isclose(row["gb"], moved * 1e-9)
        assert row["ms"] > 0 and math.isclose(row["gbps"], moved / row["ms"] * 1e-6)
    assert rows[0]["est_ms"] == memory_call_ms(moved, 1) and rows[1]["est_ms"] is None


def test_ours_and_torch_cast_the_same_input(monkeypatch):
    seen = {}

    def recording(name, fn):
        return lambda t, *args: seen.setdefault(name, []).append(t) or fn(t, *args)

    impls = bench_fp8._implementations
    monkeypatch.setattr(bench_fp8, "_implementations",
                        lambda compile: {k: recording(k, fn) for k, fn in impls(compile).items()})
    bench_fp8.bench_case("x", (5, 16), torch.bfloat16, E4M3, 2.0, "cpu", compile=False)
    assert set(seen) == {"ours", "torch eager"}
    assert all(t is seen["ours"][0] for calls in seen.values() for t in calls)
    assert all(t.shape == (5, 16) and t.dtype == torch.bfloat16 for t in seen["ours"])


def test_the_cases_are_the_fp8_heads_tensors():
    """fineweb-124m's micro-step on one GPU, as the roofline prices it: N tokens, d, V."""
    from benchmarks.roofline import track_config

    cfg = track_config("fineweb-124m")
    N, d, V = cfg.batch_size * cfg.seq_len, cfg.model_dim, cfg.vocab_size
    assert {name: shape for name, shape, *_ in bench_fp8.CASES} == {"dY": (N, V), "x": (N, d), "w": (V, d)}
    assert [(t_dtype, dtype, scale) for _, _, t_dtype, dtype, scale in bench_fp8.CASES] == [
        (torch.bfloat16, E5M2, 2.0**19), (torch.bfloat16, E4M3, 2.0), (torch.float32, E4M3, 2.0**9)]


def test_loss_rows_count_the_bytes_that_must_move(device):
    rows = bench_fp8.bench_loss(19, 37, 15.0, 2.0**19, device, compile=False)
    assert [r["impl"] for r in rows] == ["ours", "torch eager"]
    moved = 6 * 19 * 37 + 32 * 19  # logits read twice, G8 and G8^T written; per row targets, lse, loss
    for row in rows:
        assert set(row) == {"bench", "case", "impl", "ms", "gb", "gbps", "est_ms"}
        assert row["case"].startswith("logits (19, 37) bf16, cap 15") and math.isclose(row["gb"], moved * 1e-9)
        assert row["ms"] > 0 and math.isclose(row["gbps"], moved / row["ms"] * 1e-6)
    items = loss_items(19, 37, fused=True)
    assert sum(i.bytes for i in items) == moved
    assert rows[0]["est_ms"] == sum(memory_call_ms(i.bytes, i.kernels) for i in items) and rows[1]["est_ms"] is None


def test_the_loss_implementations_compute_the_same_loss_and_gradient():
    """Same logits in, the same mean loss and G8 out, but for an e5m2 step where the composition's rounding of the
    gradient to bf16 before the cast moves it across a rounding boundary."""
    logits = (torch.randn(37, 97, generator=torch.Generator().manual_seed(0)) * 4).bfloat16()
    targets = torch.randint(97, (37,), generator=torch.Generator().manual_seed(1))
    (loss, (g8, g8t)), (want, (w8, w8t)) = (fn(logits, targets, 15.0, 2.0**19)
                                            for fn in bench_fp8._loss_implementations(compile=False).values())
    assert torch.allclose(loss, want, rtol=1e-5) and g8.dtype == w8.dtype == E5M2
    assert torch.equal(g8t, g8.t().contiguous()) and torch.equal(w8t, w8.t().contiguous())
    # at most one e5m2 step apart (a quarter of the value, or the subnormal spacing 2^-16), and rarely
    diff = (g8.float() - w8.float()).abs()
    assert (diff <= 0.25 * w8.float().abs() + 2.0**-16).all() and (diff > 0).float().mean() < 0.05


def test_the_loss_case_is_the_fp8_heads():
    from benchmarks.roofline import track_config

    cfg = track_config("fineweb-124m")
    grad_s = float(cfg.fp8_head_scales.split(",")[2])
    assert bench_fp8.LOSS_CASE == (cfg.batch_size * cfg.seq_len, cfg.vocab_size, cfg.logit_softcap, grad_s)
