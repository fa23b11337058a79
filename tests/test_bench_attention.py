"""benchmarks/bench_attention.py's code paths on tiny cases: the benchmark is for GPUs, but a GPU session is too
short to discover there that it no longer matches kernels/attention.py's or PyTorch's API. On the CPU the
kernels run under Triton's interpreter, in fp16 and fp32 (it has no bf16 arithmetic); where there is a GPU the
same tiny cases run there in bf16, timed by do_bench."""
import inspect

import pytest
import torch

from benchmarks.bench_attention import (
    MODES,
    _bench_case,
    _cases,
    _flex_block_mask,
    allowed_pairs,
    check_bf16,
    document_cu_seqlens,
    run_cases,
)
from kernels.attention import attention_mask, attention_ref

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def test_documents_fill_the_sequence():
    cu = document_cu_seqlens(5000, mean=300, seed=1)
    assert cu.dtype == torch.int32 and cu[0] == 0 and cu[-1] == 5000 and (cu.diff() >= 1).all()
    assert torch.equal(cu, document_cu_seqlens(5000, mean=300, seed=1))  # seeded


@pytest.mark.parametrize("window", [None, 1, 7, 40])
@pytest.mark.parametrize("docs", [False, True])
def test_allowed_pairs_count_the_mask(window, docs):
    T = 90
    cu = document_cu_seqlens(T, mean=12, seed=2) if docs else None
    assert allowed_pairs(T, window, cu) == int(attention_mask(T, window_size=window, cu_seqlens=cu).sum())


@pytest.mark.parametrize("window", [None, 20])
@pytest.mark.parametrize("docs", [False, True])
def test_flex_rows_compute_the_same_mask_as_ours(window, docs):
    from torch.nn.attention.flex_attention import flex_attention

    T = 256  # two of create_block_mask's 128-token blocks
    cu = document_cu_seqlens(T, mean=40, seed=3) if docs else None
    q, k, v = (torch.randn(1, T, 2, 16) for _ in range(3))
    block_mask = _flex_block_mask(T, window, cu, "cpu", compile=False)
    got = flex_attention(*(x.transpose(1, 2) for x in (q, k, v)), block_mask=block_mask).transpose(1, 2)
    torch.testing.assert_close(got, attention_ref(q, k, v, window_size=window, cu_seqlens=cu), atol=1e-5, rtol=1e-5)


def test_accuracy_check_passes_on_a_tiny_case(device):
    dtype = torch.bfloat16 if device == "cuda" else torch.float16
    assert check_bf16(device, dtype=dtype, T=96, H=1, D=32, window=20, mean_doc=30)


def test_main_cases_fit_the_case_runner():
    flex = {"compiled": object()}
    for case in _cases():  # run_cases' call, bound without running the GPU-sized case
        inspect.signature(_bench_case).bind(*case, flex, set(), "cuda", dtype=torch.bfloat16, modes=MODES,
                                            backend="inductor")


def _fixed_time(fn, device, **kwargs):  # runs fn once, then says it took 10 ns: the TFLOP/s are known
    fn()
    return 1e-5


def _check_flops(rows, shapes):
    # forward: 4 B H D FLOP per allowed (query, key) pair; forward + backward: 3.5 x that
    for row in rows:
        assert set(row) == {"bench", "case", "mode", "impl", "ms", "tflops", "est_ms"}
        assert (row["est_ms"] > 0) if row["impl"] == "ours" else row["est_ms"] is None  # the roofline's, ours only
        B, T, H, D, window, cu_ = shapes[row["case"]]
        flops = 4 * B * H * D * allowed_pairs(T, window, cu_) * (3.5 if row["bench"] == "attention_fwd_bwd" else 1)
        assert row["tflops"] == round(flops / 1e-5 / 1e9, 1) > 1


def test_rows_of_ours_flex_and_sdpa(device, monkeypatch):
    import benchmarks.bench_attention as bench

    cu = document_cu_seqlens(64, mean=20, seed=0)
    cases = [("tiny docs", 1, 64, 2, 16, 24, cu), ("tiny causal", 2, 32, 1, 16, None, None)]
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    monkeypatch.setattr(bench, "bench_ms", _fixed_time)
    rows = run_cases(cases, device, dtype=dtype, compile=False)
    got = [(r["bench"], r["case"], r["mode"], r["impl"]) for r in rows]
    # FlexAttention has no backward on a CPU: its forward alone there; SDPA once per shape, plain causal.
    fwd, bwd = "attention_fwd", "attention_fwd_bwd"
    flex_bwd = [bwd] if device == "cuda" else []
    assert got == [
        (fwd, "tiny docs", "eager", "ours"), (bwd, "tiny docs", "eager", "ours"),
        *[(bench, "tiny docs", "eager", "flex") for bench in [fwd, *flex_bwd]],
        (fwd, "B1 T64 H2 D16 causal", "eager", "sdpa_flash"), (bwd, "B1 T64 H2 D16 causal", "eager", "sdpa_flash"),
        (fwd, "tiny causal", "eager", "ours"), (bwd, "tiny causal", "eager", "ours"),
        *[(bench, "tiny causal", "eager", "flex") for bench in [fwd, *flex_bwd]],
        (fwd, "B2 T32 H1 D16 causal", "eager", "sdpa_flash"), (bwd, "B2 T32 H1 D16 causal", "eager", "sdpa_flash"),
    ]
    shapes = {"tiny docs": (1, 64, 2, 16, 24, cu), "B1 T64 H2 D16 causal": (1, 64, 2, 16, None, None),
              "tiny causal": (2, 32, 1, 16, None, None), "B2 T32 H1 D16 causal": (2, 32, 1, 16, None, None)}
    _check_flops(rows, shapes)


def test_compiled_mode_compiles_every_implementation(device, monkeypatch):
    # Like with like: with compile=True each mode holds ours and SDPA, "compiled" also FlexAttention, and in
    # "compiled" every timed function went through torch.compile (aot_eager here: no code generation on a CPU).
    import benchmarks.bench_attention as bench

    compiled = []
    real_compile = torch.compile

    def spy_compile(fn, **kwargs):
        compiled.append(getattr(fn, "__name__", repr(fn)))
        return real_compile(fn, **kwargs)

    monkeypatch.setattr(bench, "bench_ms", _fixed_time)
    monkeypatch.setattr(torch, "compile", spy_compile)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rows = run_cases([("tiny", 1, 32, 1, 16, 8, None)], device, dtype=dtype, backend="aot_eager")
    modes_impls = sorted({(r["mode"], r["impl"]) for r in rows})
    assert modes_impls == [("compiled", "flex"), ("compiled", "ours"), ("compiled", "sdpa_flash"),
                           ("eager", "ours"), ("eager", "sdpa_flash")]
    assert sorted(compiled) == ["flex_attention", "ours", "sdpa"]
    _check_flops(rows, {"tiny": (1, 32, 1, 16, 8, None), "B1 T32 H1 D16 causal": (1, 32, 1, 16, None, None)})
