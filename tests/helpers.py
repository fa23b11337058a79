"""Helpers shared by the tests: token data, and comparisons for the kernel tests.

`docs_stream` and `synthetic_tokens` write shards' worth of documents (BOS first). Two comparison rules,
both from the kernels this field trusts:
- `assert_close`: a dtype tolerance table (Liger-Kernel's habit), failing with where and how much.
- `assert_error_within`: flash-attention's rule for low precision: our error against an fp32
  reference is at most `factor` x PyTorch's own error in the same dtype on the same inputs, plus atol.
"""
from __future__ import annotations

import numpy as np
import torch

from harness.shards import BOS_ID


def docs_stream(rng: np.random.Generator, n_docs: int, min_len: int = 1, max_len: int = 40) -> np.ndarray:
    """Random documents, each starting with BOS, concatenated (like a real shard)."""
    parts = [np.concatenate([[BOS_ID], rng.integers(0, 50000, rng.integers(min_len, max_len))]) for _ in range(n_docs)]
    return np.concatenate(parts).astype(np.uint16)


def synthetic_tokens(rng: np.random.Generator, n_docs: int) -> np.ndarray:
    """Documents (BOS first) of a 512-token language where the next token is (5t + 3) mod 512 90% of the time."""
    docs = []
    for _ in range(n_docs):
        t, doc = int(rng.integers(512)), [BOS_ID]
        for _ in range(int(rng.integers(20, 200))):
            t = (5 * t + 3) % 512 if rng.random() < 0.9 else int(rng.integers(512))
            doc.append(t)
        docs.append(doc)
    return np.concatenate(docs).astype(np.uint16)

# dtype -> (atol, rtol) for outputs of a single fused op compared against an fp32-math reference.
TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-2, 2e-2),
}


def _where(actual: torch.Tensor, expected: torch.Tensor) -> str:
    diff = (actual.double() - expected.double()).abs()
    flat = int(diff.argmax())
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape)) if diff.ndim else ()
    return (
        f"max |diff| {diff.max().item():.3e} at index {idx} "
        f"(got {actual.reshape(-1)[flat].item():.6g}, want {expected.reshape(-1)[flat].item():.6g}); "
        f"mean |diff| {diff.mean().item():.3e}"
    )


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, name: str, dtype=None, atol=None, rtol=None):
    """allclose with tolerances from TOLERANCES[dtype] unless given; the message names the tensor and the worst element."""
    dtype = dtype or actual.dtype
    table_atol, table_rtol = TOLERANCES[dtype]
    atol = table_atol if atol is None else atol
    rtol = table_rtol if rtol is None else rtol
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert torch.isfinite(a).all(), f"{name}: non-finite values at {torch.nonzero(~torch.isfinite(a))[:5].tolist()}"
    if not torch.allclose(a, e, atol=atol, rtol=rtol):
        raise AssertionError(f"{name} ({dtype}, atol={atol:g}, rtol={rtol:g}): " + _where(a, e))


def assert_error_within(actual, reference_fp32, reference_lowp, *, name: str, factor: float = 2.0, atol: float = 1e-5):
    """max|actual - ref32| <= factor * max|ref_lowp - ref32| + rounding + atol  (flash-attention's test rule).

    `rounding` is half an ulp of actual's dtype at max|ref32| (bounded by 0.5 * eps * max|ref32|): the
    floor that any result stored in that dtype pays, however exact the kernel. On small test tensors
    PyTorch's own worst error can fall below it by luck, which made the bare rule fail on ~3% of seeds.
    """
    ours = (actual.double() - reference_fp32.double()).abs().max().item()
    torch_err = (reference_lowp.double() - reference_fp32.double()).abs().max().item()
    rounding = 0.5 * torch.finfo(actual.dtype).eps * reference_fp32.double().abs().max().item()
    bound = factor * torch_err + rounding + atol
    if not ours <= bound:
        raise AssertionError(
            f"{name}: max error {ours:.3e} > {factor:g} x PyTorch's own {torch_err:.3e} + rounding {rounding:.2e} "
            f"+ {atol:g}; " + _where(actual.detach().cpu(), reference_fp32.detach().cpu())
        )
