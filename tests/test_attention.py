"""Flash attention (kernels/attention.py) against the explicit-mask reference.

Every case checks the output and dQ, dK, dV on fresh random inputs: fp32 to a tight tolerance,
fp16 (and bf16 on a GPU) by the "at most 2x PyTorch's own error" rule. Cases cover T = 1, T not a
multiple of the block, windows of 1 / under a block / over T, length-1 documents, one document,
many short ones, and window + documents together. Block skipping is checked twice: the Python
loop bounds against the explicit mask (visited blocks == non-empty blocks, unmasked blocks == full
blocks), and the bounds the kernels actually used against the Python ones. No host sync: a call
on meta tensors (no data to read) must run through, and on a GPU under torch.cuda's sync debug mode.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import triton
from helpers import assert_close, assert_error_within

from kernels.attention import (
    BACKWARDS,
    LOG2E,
    FlexMasks,
    attention_mask,
    attention_ref,
    block_config,
    check_cu_seqlens,
    dense_mask,
    doc_bounds,
    flash_attention,
    flash_attention_backward,
    flash_attention_forward,
    key_block_ranges,
    packed_cu_seqlens,
    packed_flash_attention,
    query_block_ranges,
    sdpa_attention,
    window_tensor,
)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _cu(lengths) -> torch.Tensor:
    """Document lengths -> int32 cumulative starts (0, l0, l0 + l1, ..., T)."""
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


def _random_lengths(T: int, max_len: int) -> list[int]:
    lengths = []
    while sum(lengths) < T:
        lengths.append(min(int(torch.randint(1, max_len + 1, ())), T - sum(lengths)))
    return lengths


# name -> (T, window_size, document lengths or None, or "random" for short random documents)
CASES = {
    "T1": (1, None, None),
    "T_ragged": (45, None, None),
    "window1": (40, 1, None),
    "window_under_block": (70, 7, None),
    "window_over_T": (50, 200, None),
    "docs_of_length_1": (40, None, [1, 1, 1, 5, 1, 30, 1]),
    "one_document": (50, None, [50]),
    "many_short_docs": (80, None, "random"),
    "window_and_docs": (77, 9, [20, 1, 33, 23]),
    "empty_docs_as_padding": (40, 9, [12, 0, 28, 0, 0]),  # the trainer pads cu_seqlens to a fixed length with T's
}


def _case(name: str):
    T, window, lengths = CASES[name]
    if lengths == "random":
        lengths = _random_lengths(T, 6)
    return T, window, None if lengths is None else _cu(lengths)


def _inputs(B, T, H, D, dtype, device):
    q, k, v = (torch.randn(B, T, H, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    return q, k, v, torch.randn(B, T, H, D, device=device, dtype=dtype)


def _run(fn, q, k, v, do, **kwargs):
    """Output and (dq, dk, dv) of fn for upstream gradient do."""
    out = fn(q, k, v, **kwargs)
    return (out, *torch.autograd.grad(out, (q, k, v), do.to(out.dtype)))


def _reference_fp32(q, k, v, do, **kwargs):
    leaves = [x.detach().float().requires_grad_() for x in (q, k, v)]
    return _run(attention_ref, *leaves, do.float(), **kwargs)


def _check_low_precision(q, k, v, do, *, atol, backward=None, **kwargs):
    """Ours vs the fp32 reference, within 2x PyTorch's own error computed in q's dtype."""
    ours = _run(flash_attention, q, k, v, do, backward=backward, **kwargs)
    ref32 = _reference_fp32(q, k, v, do, **kwargs)
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]
    ref_lowp = _run(attention_ref, *leaves, do, upcast=False, **kwargs)
    for name, a, r32, rlo in zip(("out", "dq", "dk", "dv"), ours, ref32, ref_lowp):
        assert a.dtype == q.dtype, f"{name}: dtype {a.dtype} != {q.dtype}"
        # `a` in its own dtype, not .float(): the bound's rounding floor is half an ulp of a's dtype
        assert_error_within(a, r32, rlo, name=name, atol=atol)


# --------------------------------------------------------------------------------------------------
# Correctness
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backward", BACKWARDS)
@pytest.mark.parametrize("case", list(CASES))
def test_fp32_matches_reference(case, backward, device):
    T, window, cu = _case(case)
    B = 1 if cu is not None else 2
    q, k, v, do = _inputs(B, T, 2, 16, torch.float32, device)
    cu = None if cu is None else cu.to(device)
    ours = _run(flash_attention, q, k, v, do, window_size=window, cu_seqlens=cu, backward=backward)
    ref = _reference_fp32(q, k, v, do, window_size=window, cu_seqlens=cu)
    for name, a, r in zip(("out", "dq", "dk", "dv"), ours, ref):
        assert_close(a, r, name=f"{case} {backward} {name}")


@pytest.mark.parametrize("backward", BACKWARDS)
@pytest.mark.parametrize("case", list(CASES))
def test_fp16_within_torch_error(case, backward, device):
    T, window, cu = _case(case)
    q, k, v, do = _inputs(1, T, 2, 64, torch.float16, device)
    _check_low_precision(q, k, v, do, window_size=window, cu_seqlens=None if cu is None else cu.to(device), atol=1e-4,
                         backward=backward)


@pytest.mark.parametrize("backward", BACKWARDS)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_head_dims(head_dim, dtype, backward, device):
    T, window, cu = 21, 6, _cu([4, 12, 5]).to(device)
    q, k, v, do = _inputs(1, T, 1, head_dim, dtype, device)
    if dtype == torch.float32:
        ours = _run(flash_attention, q, k, v, do, window_size=window, cu_seqlens=cu, backward=backward)
        ref = _reference_fp32(q, k, v, do, window_size=window, cu_seqlens=cu)
        for name, a, r in zip(("out", "dq", "dk", "dv"), ours, ref):
            assert_close(a, r, name=f"D={head_dim} {backward} {name}")
    else:
        _check_low_precision(q, k, v, do, window_size=window, cu_seqlens=cu, atol=1e-4, backward=backward)


def test_lse_and_custom_scale(device):
    """The saved LSE (log2 units) is logsumexp of the masked, scaled scores; scale is honoured."""
    T, window, scale = 37, 11, 0.3
    q, k, v, do = _inputs(2, T, 2, 16, torch.float32, device)
    out, lse = flash_attention_forward(q.detach(), k.detach(), v.detach(), None, window, scale)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.detach(), k.detach()) * scale
    scores = scores.masked_fill(~attention_mask(T, window_size=window, device=device), float("-inf"))
    assert_close(lse, torch.logsumexp(scores, -1) * LOG2E, name="lse")
    assert_close(out, attention_ref(q, k, v, window_size=window, scale=scale), name="out")


def test_strided_inputs(device):
    """Views of one packed qkv tensor, and mixed layouts (a contiguous q beside strided k, v), are right."""
    B, T, H, D = 2, 33, 2, 16
    qkv = torch.randn(B, T, 3, H, D, device=device, requires_grad=True)
    do = torch.randn(B, T, H, D, device=device)
    for q, k, v in [qkv.unbind(2), (qkv[:, :, 0].contiguous(), qkv[:, :, 1], qkv[:, :, 2])]:
        ours = _run(flash_attention, q, k, v, do, window_size=5)
        ref = _reference_fp32(q, k, v, do, window_size=5)
        for name, a, r in zip(("out", "dq", "dk", "dv"), ours, ref):
            assert_close(a, r, name=f"strided {name}")


def test_two_pass_backward_is_deterministic(device):
    """two_pass: the same inputs give the same bits (atomic's dQ may not, on a GPU)."""
    T, window, cu = _case("window_and_docs")
    q, k, v, do = _inputs(1, T, 2, 16, torch.float32, device)
    first = _run(flash_attention, q, k, v, do, window_size=window, cu_seqlens=cu.to(device), backward="two_pass")
    second = _run(flash_attention, q, k, v, do, window_size=window, cu_seqlens=cu.to(device), backward="two_pass")
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_the_backwards_agree_and_an_unknown_one_is_refused(device):
    T, window, cu = _case("window_and_docs")
    q, k, v, do = _inputs(1, T, 2, 16, torch.float32, device)
    kw = dict(window_size=window, cu_seqlens=cu.to(device))
    atomic = _run(flash_attention, q, k, v, do, backward="atomic", **kw)
    two_pass = _run(flash_attention, q, k, v, do, backward="two_pass", **kw)
    assert torch.equal(atomic[0], two_pass[0])  # the forward is shared
    for name, a, b in zip(("dq", "dk", "dv"), atomic[1:], two_pass[1:]):
        assert_close(a, b, name=name)
    with pytest.raises(ValueError, match="flash_attention: backward 'fast' not one of atomic, two_pass"):
        flash_attention(q, k, v, backward="fast")


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend, device):
    """The custom ops trace with fullgraph=True, forward and backward; window is a plain int arg."""
    T, cu = 40, _cu([10, 1, 29]).to(device)
    q, k, v, do = _inputs(1, T, 2, 16, torch.float32, device)

    def fn(q, k, v, window):
        return flash_attention(q, k, v, window_size=window, cu_seqlens=cu) * 2.0

    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    for window in (3, 17):
        ours = _run(compiled, q, k, v, do, window=window)
        ref = _run(fn, q, k, v, do, window=window)
        for name, a, r in zip(("out", "dq", "dk", "dv"), ours, ref):
            assert_close(a, r, name=f"compiled window={window} {name}")


@pytest.mark.parametrize("B, T, H, D, window, lengths", [(2, 45, 2, 16, 7, None), (1, 77, 2, 64, 9, [20, 1, 33, 23]),
                                                         (3, 1, 1, 32, None, None), (1, 70, 1, 16, None, [70])])
def test_tma_matches_the_pointer_path(B, T, H, D, window, lengths, device):
    """The forward and the dK/dV kernel through TMA tensor descriptors (Hopper's path, run here by Triton's
    interpreter) on views of one packed qkv tensor: the same bits as the pointer path, and the reference's values.
    Rows past T read the next sequence's rows (B > 1) or zeros, and are masked or not stored."""
    from kernels.attention import _row_descriptors

    qkv = torch.randn(B, T, 3 * H, D, device=device, requires_grad=True)
    q, k, v = qkv.chunk(3, dim=2)
    do = torch.randn(B, T, H, D, device=device)
    cu = None if lengths is None else _cu(lengths).to(device)
    assert _row_descriptors((q, 32), (k, 16), (v, 16), (do, 32)) is not None  # the views qualify: TMA is taken
    w, scale = -1 if window is None else window, D**-0.5
    tma = flash_attention_forward(q, k, v, cu, w, scale, tma=True)
    pointers = flash_attention_forward(q, k, v, cu, w, scale, tma=False)
    assert torch.equal(tma[0], pointers[0]) and torch.equal(tma[1], pointers[1])
    ref = _reference_fp32(q, k, v, do, window_size=window, cu_seqlens=cu)
    assert_close(tma[0], ref[0], name="tma out")
    for backward in BACKWARDS:
        grads = flash_attention_backward(do, q, k, v, *tma, cu, w, scale, backward=backward, tma=True)
        pointer_grads = flash_attention_backward(do, q, k, v, *tma, cu, w, scale, backward=backward, tma=False)
        for name, a, b, r in zip(("dq", "dk", "dv"), grads, pointer_grads, ref[1:]):
            assert torch.equal(a, b), f"{backward} {name}: TMA and pointer paths differ"
            assert_close(a, r, name=f"tma {backward} {name}")


class _LaunchSpy:
    """Stands in for a @triton.jit kernel: records the data pointers of its first three arguments (q, k, v) at
    each launch, then launches the real kernel."""

    def __init__(self, kernel):
        self.kernel, self.pointers = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.pointers.append(tuple(a.data_ptr() for a in args[:3]))
            return self.kernel[grid](*args, **kwargs)
        return launch


@pytest.mark.parametrize("tma", [False, True])
@pytest.mark.parametrize("backward", BACKWARDS)
def test_v_view_of_packed_qkv_is_read_in_place(backward, tma, device, monkeypatch):
    """The trainer's layers without value embeddings: q and k normalised (contiguous) beside v, a view of the packed
    qkv output (token stride 3 H D). Every kernel reads each of q, k, v where it lies (no copy), through TMA
    descriptors or pointers, and gives the reference's output and gradients."""
    from kernels import attention

    spies = {name: _LaunchSpy(getattr(attention, name))
             for name in ("_attn_fwd_kernel", "_attn_bwd_dkdv_kernel", "_attn_bwd_dq_kernel")}
    for name, spy in spies.items():
        monkeypatch.setattr(attention, name, spy)
    T, window, cu = _case("window_and_docs")
    H, D = 2, 16
    qkv = torch.randn(1, T, 3 * H, D, device=device, requires_grad=True)
    q, k, v = qkv.chunk(3, dim=2)
    q, k = q * 1.5, k - 0.25  # new contiguous tensors, as QK-norm and rotary give
    do = torch.randn(1, T, H, D, device=device)
    cu = cu.to(device)
    assert attention._row_descriptors((q, 16), (k, 16), (v, 16)) is not None  # each has a row view: TMA is taken
    out, lse = flash_attention_forward(q, k, v, cu, window, D**-0.5, tma=tma)
    grads = flash_attention_backward(do, q, k, v, out, lse, cu, window, D**-0.5, backward=backward, tma=tma)
    ref = _reference_fp32(q, k, v, do, window_size=window, cu_seqlens=cu)
    for name, a, r in zip(("out", "dq", "dk", "dv"), (out, *grads), ref):
        assert_close(a, r, name=f"{backward} tma={tma} {name}")
    launches = [p for spy in spies.values() for p in spy.pointers]
    assert len(launches) == 2 + (backward == "two_pass")
    assert all(p == (q.data_ptr(), k.data_ptr(), v.data_ptr()) for p in launches), "a kernel read a copy"


def test_tma_needs_a_row_view_and_falls_back_to_pointers(device):
    from kernels.attention import _row_descriptors, use_tma

    B, T, H, D = 2, 33, 2, 16
    q, k, v = (torch.randn(B, H, T, D, device=device).transpose(1, 2) for _ in range(3))  # heads not adjacent
    assert _row_descriptors((q, 32), (k, 16), (v, 16)) is None
    do = torch.randn(B, T, H, D, device=device)
    out, lse = flash_attention_forward(q, k, v, None, 5, D**-0.5, tma=True)  # the pointer path, still right
    ref = _reference_fp32(q, k, v, do, window_size=5)
    assert_close(out, ref[0], name="fallback out")
    grads = flash_attention_backward(do, q, k, v, out, lse, None, 5, D**-0.5, tma=True)
    for name, a, r in zip(("dq", "dk", "dv"), grads, ref[1:]):
        assert_close(a, r, name=f"fallback {name}")
    assert not use_tma(q)  # the interpreter (and a CPU) take the pointer path by default


# --------------------------------------------------------------------------------------------------
# Block skipping: cost follows the non-empty blocks of the mask
# --------------------------------------------------------------------------------------------------


def _random_geometry():
    T = int(torch.randint(1, 120, ()))
    window = [None, int(torch.randint(1, 2 * T + 1, ()))][int(torch.randint(0, 2, ()))]
    cu = _cu(_random_lengths(T, int(torch.randint(1, T + 1, ())))) if torch.rand(()) < 0.6 else None
    return T, window, cu


def _tiles(mask: torch.Tensor, T: int, block_m: int, block_n: int, own_queries: bool):
    """(any allowed, all allowed) per tile, indexed [owned block][stepped block]. Padding on the
    stepped side counts as masked (the kernel must mask it); on the owned side it is not stored."""
    pad = torch.zeros(triton.cdiv(T, block_m) * block_m, triton.cdiv(T, block_n) * block_n, dtype=torch.bool)
    pad[:T, :T] = mask
    tiles = {}
    for q0 in range(0, T, block_m):
        for n0 in range(0, T, block_n):
            rows = slice(q0, min(q0 + block_m, T)) if own_queries else slice(q0, q0 + block_m)
            cols = slice(n0, n0 + block_n) if own_queries else slice(n0, min(n0 + block_n, T))
            tile = pad[rows, cols]
            key = (q0 // block_m, n0 // block_n) if own_queries else (n0 // block_n, q0 // block_m)
            tiles[key] = (bool(tile.any()), bool(tile.all()))
    return tiles


def _check_ranges(ranges, tiles, step: int):
    for owned, (lo, full_lo, full_hi, hi) in enumerate(ranges):
        assert lo <= full_lo <= full_hi <= hi
        visited = {s // step for s in range(lo, hi, step)}
        full = {s // step for s in range(full_lo, full_hi, step)}
        nonempty = {s for (o, s), (any_, _) in tiles.items() if o == owned and any_}
        all_allowed = {s for (o, s), (_, all_) in tiles.items() if o == owned and all_}
        assert visited == nonempty, f"block {owned}: visits {sorted(visited)}, non-empty {sorted(nonempty)}"
        assert full == all_allowed, f"block {owned}: unmasked {sorted(full)}, full {sorted(all_allowed)}"


@pytest.mark.parametrize("block_m, block_n", [(16, 16), (32, 16), (16, 32), (64, 128)])
def test_loop_ranges_visit_exactly_the_nonempty_blocks(block_m, block_n):
    for _ in range(40):
        T, window, cu = _random_geometry()
        mask = attention_mask(T, window_size=window, cu_seqlens=cu)
        q_ranges = query_block_ranges(T, block_m, block_n, window_size=window, cu_seqlens=cu)
        _check_ranges(q_ranges, _tiles(mask, T, block_m, block_n, own_queries=True), block_n)
        k_ranges = key_block_ranges(T, block_m, block_n, window_size=window, cu_seqlens=cu)
        _check_ranges(k_ranges, _tiles(mask, T, block_m, block_n, own_queries=False), block_m)


def test_kernels_use_the_python_ranges(device):
    """The bounds each kernel computed (written out with STORE_RANGES) equal the Python ones."""
    D = 16
    fwd, dkdv, dq, bwd = (block_config(kind, D, device, torch.float32) for kind in ("fwd", "dkdv", "dq", "bwd"))
    for _ in range(4):
        T, window, cu = _random_geometry()
        cu = None if cu is None else cu.to(device)
        q, k, v, do = (x.detach() for x in _inputs(1, T, 1, D, torch.float32, device))
        fwd_r = torch.full((triton.cdiv(T, fwd.block_m), 4), -1, dtype=torch.int32, device=device)
        dkdv_r = torch.full((triton.cdiv(T, dkdv.block_n), 4), -1, dtype=torch.int32, device=device)
        dq_r = torch.full((triton.cdiv(T, dq.block_m), 4), -1, dtype=torch.int32, device=device)
        w = -1 if window is None else window
        out, lse = flash_attention_forward(q, k, v, cu, w, D**-0.5, ranges=fwd_r)
        flash_attention_backward(do, q, k, v, out, lse, cu, w, D**-0.5, backward="two_pass", dkdv_ranges=dkdv_r,
                                 dq_ranges=dq_r)
        bwd_r = torch.full((triton.cdiv(T, bwd.block_n), 4), -1, dtype=torch.int32, device=device)
        flash_attention_backward(do, q, k, v, out, lse, cu, w, D**-0.5, backward="atomic", dkdv_ranges=bwd_r)
        kw = dict(window_size=window, cu_seqlens=cu)
        assert bwd_r.tolist() == [list(r) for r in key_block_ranges(T, bwd.block_m, bwd.block_n, **kw)]
        assert fwd_r.tolist() == [list(r) for r in query_block_ranges(T, fwd.block_m, fwd.block_n, **kw)]
        assert dq_r.tolist() == [list(r) for r in query_block_ranges(T, dq.block_m, dq.block_n, **kw)]
        assert dkdv_r.tolist() == [list(r) for r in key_block_ranges(T, dkdv.block_m, dkdv.block_n, **kw)]


# --------------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------------


def _bad(name):
    q = torch.randn(1, 8, 2, 16)
    cases = {
        "ndim": ((q[0], q[0], q[0]), {}, "must be \\(B, T, H, D\\)"),
        "shapes": ((q, q, q[:, :4]), {}, "shapes differ"),
        "dtypes": ((q, q.half(), q), {}, "dtypes differ"),
        "dtype": ((q.double(), q.double(), q.double()), {}, "not supported"),
        "devices": ((q, q, q.to("meta")), {}, "devices differ"),
        "head_dim": ((q[..., :12],) * 3, {}, "head dim 12 not supported"),
        "empty": ((q[:, :0],) * 3, {}, "empty input of shape \\(1, 0, 2, 16\\)"),
        "window_tensor_dtype": ((q, q, q), {"window_size": torch.tensor(3.0)}, "a tensor window_size must be a 0-d "
                                "int64 CPU tensor \\(window_tensor\\(w\\)\\), got 0-d torch.float32 on cpu$"),
        # the op takes the scale as a float: a tensor requiring grad would get none, a string a multi-line schema error
        "scale_tensor": ((q, q, q), {"scale": torch.tensor(0.25, requires_grad=True)}, "scale must be a number or "
                         "None, got Tensor$"),
        "scale_str": ((q, q, q), {"scale": "0.25"}, "scale must be a number or None, got str$"),
        "window0": ((q, q, q), {"window_size": 0}, "window_size must be an int >= 1 or None .*, got 0$"),
        "window_float": ((q, q, q), {"window_size": 2.5}, "window_size must be an int >= 1 .*, got 2.5$"),
        "window_nan": ((q, q, q), {"window_size": float("nan")}, "window_size must be an int >= 1 .*, got nan$"),
        "window_tensor0": ((q, q, q), {"window_size": torch.tensor(0)}, "window_size must be an int >= 1 .*, got 0$"),
        "window_tensor_neg": ((q, q, q), {"window_size": torch.tensor(-5)}, "window_size must be .*, got -5$"),
        "cu_dtype": ((q, q, q), {"cu_seqlens": torch.tensor([0, 8])}, "must be int32"),
        "cu_shape": ((q, q, q), {"cu_seqlens": torch.tensor([8], dtype=torch.int32)}, "1-D with >= 2"),
        "cu_device": ((q, q, q), {"cu_seqlens": torch.tensor([0, 8], dtype=torch.int32, device="meta")},
                      "cu_seqlens on meta, q on cpu$"),
        "cu_batch": ((q.expand(2, -1, -1, -1),) * 3, {"cu_seqlens": torch.tensor([0, 8], dtype=torch.int32)}, "B == 1"),
        "bounds_no_cu": ((q, q, q), {"doc_bounds": torch.zeros(2, 8, dtype=torch.int32)}, "without cu_seqlens"),
        "bounds_shape": ((q, q, q), {"cu_seqlens": torch.tensor([0, 8], dtype=torch.int32),
                                     "doc_bounds": torch.zeros(2, 7, dtype=torch.int32)}, "doc_bounds must be \\(2, T = 8\\)"),
        "bounds_strided": ((q, q, q), {"cu_seqlens": torch.tensor([0, 8], dtype=torch.int32),
                                       "doc_bounds": torch.zeros(8, 2, dtype=torch.int32).t()},
                           "contiguous: False"),
    }
    return cases[name]


@pytest.mark.parametrize(
    "name", ["ndim", "shapes", "dtypes", "dtype", "devices", "head_dim", "empty", "window_tensor_dtype", "cu_device",
             "scale_tensor", "scale_str", "window0",
             "window_float", "window_nan", "window_tensor0", "window_tensor_neg", "cu_dtype", "cu_shape", "cu_batch",
             "bounds_no_cu", "bounds_shape", "bounds_strided"],
)
def test_bad_inputs_raise(name):
    args, kwargs, match = _bad(name)
    with pytest.raises(ValueError, match=match) as err:
        flash_attention(*args, **kwargs)
    assert "\n" not in str(err.value)


def test_the_backward_launcher_refuses_an_unknown_backward():
    q = torch.randn(1, 8, 2, 16)
    with pytest.raises(ValueError, match="^flash_attention: backward 'bogus' not one of atomic, two_pass$"):
        flash_attention_backward(q, q, q, q, q, q, None, -1, 0.25, backward="bogus")


@pytest.mark.parametrize("window", [2.5, 0, -1])
def test_window_tensor_refuses_a_window_that_is_not_an_int_above_zero(window):
    # the kernels would read window_tensor(2.5) as a window of 2 (the reference keeps 3 keys), -1 as no window
    with pytest.raises(ValueError, match=f"^flash_attention: window_size must be an int >= 1 .*, got {window}$"):
        window_tensor(window)


def test_numpy_numbers_are_numbers():
    q = torch.randn(1, 9, 1, 16)
    assert torch.allclose(flash_attention(q, q, q, window_size=np.int64(3), scale=np.float32(0.5)),
                          attention_ref(q, q, q, window_size=3, scale=0.5), atol=1e-5)


def test_a_window_tensor_below_one_is_refused_under_torch_compile():
    # the traced call cannot read a window tensor's value: the op does, when it runs; the kernels would give finite
    # outputs for a window of 0 (the reference allows no key: NaN) and read -5 as no window
    q = torch.randn(1, 8, 1, 16)
    attend = torch.compile(lambda q, w: flash_attention(q, q, q, window_size=w), backend="aot_eager", fullgraph=True)
    assert torch.allclose(attend(q, window_tensor(3)), attention_ref(q, q, q, window_size=3), atol=1e-5)
    for w in (0, -5):
        with pytest.raises(ValueError, match=f"^flash_attention: window_size must be an int >= 1 .*, got {w}$"):
            attend(q, torch.tensor(w))


@pytest.mark.parametrize("cu, match", [
    ([1, 8], "start at 0, starts at 1"),
    ([0, 7], "end at T = 8, ends at 7"),
    ([0, 5, 3, 8], "non-decreasing"),
    ([8], "1-D int32 with >= 2 entries"),
])
def test_check_cu_seqlens_rejects_bad_values(cu, match):
    with pytest.raises(ValueError, match=match) as err:
        check_cu_seqlens(torch.tensor(cu, dtype=torch.int32), 8)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("cu, match", [([0, 5, 3, 8], "non-decreasing"), ([0, 5, 9], "end at T = 8"), ([2, 8], "start at 0")])
def test_flash_attention_refuses_bad_cpu_cu_seqlens(cu, match):
    """On the CPU the values cost nothing to read, so flash_attention checks them (on CUDA they are unchecked)."""
    q = torch.randn(1, 8, 1, 16)
    with pytest.raises(ValueError, match=match) as err:
        flash_attention(q, q, q, cu_seqlens=torch.tensor(cu, dtype=torch.int32))
    assert "\n" not in str(err.value)


def test_bad_cpu_cu_seqlens_are_refused_under_torch_compile():
    # a traced call cannot read them: the op does, when it runs (a decreasing cu_seqlens is a wrong mask)
    q = torch.randn(1, 8, 1, 16)
    attend = torch.compile(lambda q, cu: flash_attention(q, q, q, cu_seqlens=cu), backend="aot_eager", fullgraph=True)
    good = torch.tensor([0, 5, 8], dtype=torch.int32)
    assert torch.allclose(attend(q, good), attention_ref(q, q, q, cu_seqlens=good), atol=1e-5)
    with pytest.raises(ValueError, match="^flash_attention: cu_seqlens must be non-decreasing"):
        attend(q, torch.tensor([0, 5, 3, 8], dtype=torch.int32))


def test_check_cu_seqlens_accepts_padded_documents():
    for lengths in ([8], [1, 1, 6], [3, 0, 5, 0, 0]):  # trailing T's: the trainer's fixed-length padding
        check_cu_seqlens(_cu(lengths), 8)


def test_unchecked_bad_cu_seqlens_do_not_crash(device):
    # The launchers never read cu_seqlens' values (flash_attention checks them on the CPU only); bad ones
    # give a wrong mask, but every index stays in bounds (document indices are clamped), so the passes
    # complete with finite values.
    q, k, v, do = _inputs(1, 40, 1, 16, torch.float32, device)
    for cu in ([5, 40], [0, 30], [0, 25, 10, 40], [-7, 3, 90], [0, 40, 40, 41]):
        cu = torch.tensor(cu, dtype=torch.int32, device=device)
        out, lse = flash_attention_forward(q, k, v, cu, 9, 0.25)
        grads = flash_attention_backward(do, q, k, v, out, lse, cu, 9, 0.25)
        assert all(torch.isfinite(t).all() for t in (out, *grads)), cu


# --------------------------------------------------------------------------------------------------
# A packed batch of documents: the masks of each backend agree
# --------------------------------------------------------------------------------------------------


def _starts(B: int, T: int, seed: int = 0) -> torch.Tensor:
    """(B, T) bool document starts: about one in 50 tokens, and every row start."""
    starts = torch.rand(B, T, generator=torch.Generator().manual_seed(seed)) < 0.02
    starts[:, 0] = True
    return starts


@pytest.mark.parametrize("window", [1, 37, 128, 300, 1000])
def test_dense_mask_is_causal_windowed_and_per_document(window):
    starts = _starts(2, 200)
    mask = dense_mask(starts, window)[:, 0]  # (B, T, T)
    for b in range(2):
        docs = starts[b].cumsum(0)
        i, j = torch.meshgrid(torch.arange(200), torch.arange(200), indexing="ij")
        expected = (j <= i) & (i - j < window) & (docs[i] == docs[j])
        assert torch.equal(mask[b], expected)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("window", [50, 128, 200, 384])
def test_flex_block_mask_matches_the_dense_mask(window):
    """The hand-built FlexAttention block mask (CUDA torch path), run here by FlexAttention's CPU reference."""
    from torch.nn.attention.flex_attention import flex_attention

    starts = _starts(2, 256, seed=window)
    q, k, v = (torch.randn(2, 256, 2, 16) for _ in range(3))
    block_mask = FlexMasks(block=128)(starts, window)
    flat = [x.reshape(1, 512, 2, 16).transpose(1, 2) for x in (q, k, v)]
    got = flex_attention(*flat, block_mask=block_mask).transpose(1, 2).reshape(2, 256, 2, 16)
    want = sdpa_attention(q, k, v, dense_mask(starts, window))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_flex_block_masks_refuse_a_batch_of_partial_blocks():
    with pytest.raises(ValueError, match=r"^FlexAttention needs batch_size x seq_len \(200\) to be a multiple of 128$"):
        FlexMasks(block=128)(_starts(2, 100), 64)


@pytest.mark.parametrize("window", [1, 37, 200])
def test_packed_cu_seqlens_match_the_dense_mask(window):
    """The kernel path packs the batch into one row with cu_seqlens; the same pairs must be visible, and
    cu_seqlens has one length whatever the documents (padded with N: no recompile, no host sync)."""
    starts = _starts(3, 100)
    cu_seqlens, w, bounds = packed_cu_seqlens(starts, window)
    assert torch.equal(bounds, doc_bounds(cu_seqlens, 300))
    n_docs = int(starts.sum())
    assert cu_seqlens.shape == (301,) and cu_seqlens.dtype == torch.int32
    assert (cu_seqlens[n_docs:] == 300).all() and (cu_seqlens[1:n_docs] > cu_seqlens[: n_docs - 1]).all()
    check_cu_seqlens(cu_seqlens, 300)
    packed = attention_mask(300, window_size=int(w), cu_seqlens=cu_seqlens)
    assert torch.equal(packed, torch.block_diag(*dense_mask(starts, window)[:, 0]))


@pytest.mark.parametrize("backward", BACKWARDS)
def test_precomputed_doc_bounds_give_the_same_bits(backward):
    """doc_bounds passed in (the trainer's way) and built inside each call: identical output and gradients."""
    T, window, cu = _case("window_and_docs")
    q, k, v, do = _inputs(1, T, 2, 16, torch.float32, "cpu")
    inside = _run(flash_attention, q, k, v, do, window_size=window, cu_seqlens=cu, backward=backward)
    given = _run(flash_attention, q, k, v, do, window_size=window, cu_seqlens=cu, doc_bounds=doc_bounds(cu, T),
                 backward=backward)
    for name, a, b in zip(("out", "dq", "dk", "dv"), inside, given):
        assert torch.equal(a, b), name


def test_packed_attention_builds_doc_bounds_once_per_mask(monkeypatch):
    """The trainer's path: the mask step builds the document bounds; no attention call (forward or backward,
    any number of layers) builds them again."""
    import kernels.attention as attention

    calls = []
    real = attention._doc_bounds
    monkeypatch.setattr(attention, "_doc_bounds", lambda *a: calls.append(1) or real(*a))
    starts = _starts(2, 40, seed=1)
    mask = packed_cu_seqlens(starts, 9)
    q, k, v = (torch.randn(2, 40, 2, 16, requires_grad=True) for _ in range(3))
    y = packed_flash_attention(packed_flash_attention(q, k, v, mask), k, v, mask)  # two layers
    y.sum().backward()
    assert len(calls) == 1


def test_packed_flash_attention_matches_sdpa_per_row():
    starts = _starts(2, 40, seed=1)
    q, k, v = (torch.randn(2, 40, 2, 16) for _ in range(3))
    got = packed_flash_attention(q, k, v, packed_cu_seqlens(starts, 9))
    assert_close(got, sdpa_attention(q, k, v, dense_mask(starts, 9)), name="packed flash vs SDPA")


# --------------------------------------------------------------------------------------------------
# No host sync: a call never reads a value back from the device
# --------------------------------------------------------------------------------------------------


class _NoLaunch:
    """Stands in for a @triton.jit kernel: counts launches and runs nothing (meta tensors have no memory)."""

    def __init__(self):
        self.launches = 0

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches += 1

        return launch


def test_a_call_reads_no_value_from_the_device(monkeypatch):
    # Meta tensors carry shapes, strides and dtypes but no data: any host read of a value raises on them,
    # whether Python's (.tolist(), .item(), bool(), int()) or ATen's (nonzero, .cpu(), ...). So the whole host
    # path runs on them (the public call and its autograd glue, which reach the ops' fake implementations on
    # meta, and the real launchers with the kernels stubbed out) and must raise nothing.
    import kernels.attention as attention

    stubs = {name: _NoLaunch() for name in ("_attn_fwd_kernel", "_attn_bwd_preprocess_kernel", "_attn_bwd_dkdv_kernel",
                                            "_attn_bwd_dq_kernel")}
    for name, stub in stubs.items():
        monkeypatch.setattr(attention, name, stub)
    T, window, scale = 64, 9, 0.25
    q, k, v, do = (torch.empty(1, T, 2, 16, device="meta", requires_grad=i < 3) for i in range(4))
    cu = torch.empty(5, dtype=torch.int32, device="meta")  # values unknowable, as on a GPU without a sync
    out = flash_attention(q, k, v, window_size=window, cu_seqlens=cu)
    torch.autograd.grad(out, (q, k, v), do)
    out, lse = flash_attention_forward(q.detach(), k.detach(), v.detach(), cu, window, scale)
    for backward in BACKWARDS:
        flash_attention_backward(do, q.detach(), k.detach(), v.detach(), out, lse, cu, window, scale,
                                 backward=backward)
    # the forward once; the preprocess and the dK/dV kernel in both backwards, the dQ kernel in two_pass only
    assert {name: stub.launches for name, stub in stubs.items()} == {
        "_attn_fwd_kernel": 1, "_attn_bwd_preprocess_kernel": 2, "_attn_bwd_dkdv_kernel": 2, "_attn_bwd_dq_kernel": 1}
    with pytest.raises((RuntimeError, NotImplementedError)):  # the helper that does read them needs the data
        check_cu_seqlens(cu, T)


# --------------------------------------------------------------------------------------------------
# GPU only: bf16 (Triton's interpreter has no bf16 arithmetic)
# --------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("backward", BACKWARDS)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("case", list(CASES))
def test_bf16_within_torch_error(case, head_dim, backward):
    T, window, cu = _case(case)
    q, k, v, do = _inputs(1, T, 2, head_dim, torch.bfloat16, "cuda")
    _check_low_precision(q, k, v, do, window_size=window, cu_seqlens=None if cu is None else cu.cuda(), atol=1e-3,
                         backward=backward)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("backward", BACKWARDS)
def test_bf16_long_sequence_with_window_and_docs(backward):
    """Real tile sizes with many blocks: T = 2000, window 300, ~100-token documents."""
    T = 2000
    cu = _cu(_random_lengths(T, 200)).cuda()
    q, k, v, do = _inputs(1, T, 2, 128, torch.bfloat16, "cuda")
    _check_low_precision(q, k, v, do, window_size=300, cu_seqlens=cu, atol=1e-3, backward=backward)



@pytest.mark.gpu
@needs_cuda
def test_eager_forward_and_backward_do_not_sync_on_gpu():
    T = 512
    cu = _cu([100, 1, 300, 111]).cuda()
    q, k, v, do = _inputs(1, T, 2, 128, torch.bfloat16, "cuda")
    _run(flash_attention, q, k, v, do, window_size=128, cu_seqlens=cu)  # compiles the kernels, outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _run(flash_attention, q, k, v, do, window_size=128, cu_seqlens=cu)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_inputs_spanning_int32_offsets_are_refused():
    # Meta tensors carry shape and strides without memory: (1, 2^22, 6, 128) spans 3.2e9 elements.
    q = torch.empty(1, 2**22, 6, 128, device="meta", dtype=torch.float16)
    with pytest.raises(ValueError, match=r"q spans 3221225472 elements; the kernels' int32 offsets need < 2\^31"):
        flash_attention(q, q, q)
