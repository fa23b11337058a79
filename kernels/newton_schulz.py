"""Muon's Newton-Schulz orthogonalisation, on Triton matmuls that compute symmetric products once.

The math
--------
Muon (Keller Jordan, 2024) replaces an update G by (approximately) its polar factor U Vᵀ, where
G = U S Vᵀ. An odd polynomial applied to X acts on its singular values only, so iterating

    A = X Xᵀ                          # (M, M), symmetric
    B = b A + c A²                    # (M, M), symmetric: A² = A Aᵀ since A is symmetric
    X ← a X + B X                     # = a X + b (XXᵀ)X + c (XXᵀ)²X, i.e. σ ← aσ + bσ³ + cσ⁵

from X₀ = G / (‖G‖_F + 1e-7) (so every σ ≤ 1) pushes all nonzero singular values towards 1.
X is (M, N) with M ≤ N (tall matrices are transposed first), so A and B are the small products.

Coefficients
------------
- `QUINTIC` = (3.4445, -4.7750, 2.0315), the same triple every step: Keller Jordan's Muon
  (modded-nanogpt). It maximises the slope at 0 (a = 3.4445), so small singular values grow fast,
  at the price of not converging to exactly 1: after 5 steps singular values land in roughly
  [0.7, 1.2], which Muon tolerates. As a scalar map, 5 steps send every σ/‖G‖_F ≥ 3e-3 into
  [0.68, 1.21]; smaller ones grow by at most a⁵ ≈ 490, so 1e-3 only reaches 0.47 and 1e-4 0.05.
- `POLAR_EXPRESS`: a different quintic per step, each the minimax-optimal odd quintic for the
  interval the previous steps leave (Amsel, Persson, Musco, Gower, "The Polar Express: Optimal
  Matrix Sign Methods and Their Application to the Muon Algorithm", arXiv:2505.16932, 2025).
  Values copied from the authors' repository (github.com/NoahAmsel/PolarExpress,
  `polar_express/basic.py`): `optimal_composition(l=1e-3, num_iters=8, safety_factor_eps=1e-2,
  cushion=0.02)`, each step but the last divided by the 1.01 safety factor (a/1.01, b/1.01³,
  c/1.01⁵), and the input normalised by 1.01·‖G‖_F + 1e-7. Steps beyond the eighth repeat the last
  one, (15/8, -10/8, 3/8), the quintic with p(1) = 1, p'(1) = p''(1) = 0. As a scalar map, the first 5
  steps send every σ/‖G‖_F ≥ 1e-3 into [0.84, 1.13] (checked in the tests). modded-nanogpt and nanochat
  use another schedule from the same code (5 steps, safety 2e-2); pass such a list as `coefficients`.

The kernels (three layers: `@triton.jit` kernels, host launchers, the custom op)
-------------------------------------------------------------------------------
- `_syrk_kernel` → `xxt(X)` = X Xᵀ and `xxt_plus(A, alpha, beta)` = alpha·A Aᵀ + beta·A: one program
  per output tile on or above the diagonal (a grid of only the T(T+1)/2 upper tiles, T = ⌈M/BLOCK⌉);
  each off-diagonal tile is also stored transposed into the lower triangle, and the diagonal tile is
  made exactly symmetric, so the output is bit-for-bit symmetric. For the NS step, `xxt_plus(A, c, b)`
  gives B = c·A² + b·A with the `b·A +` epilogue fused (A symmetric, so A Aᵀ = A²). The symmetric trick
  is modded-nanogpt's (`triton_kernels.py`: XXT, ba_plus_cAA), which launches the full grid and returns
  early below the diagonal; here the grid holds only the upper tiles.
- `_bx_plus_ax_kernel` → `bx_plus_ax(B, X, a)` = B X + a·X: a plain tiled matmul with the `a·X +`
  epilogue fused (the output must not alias X).
- `ns_step(X, a, b, c)`: one iteration, the three launches above.
- `newton_schulz(G, steps, coefficients, dtype)`: checks, then the custom op `speedrun::newton_schulz`
  (cast, transpose tall, normalise, iterate, undo): opaque to torch.compile, traced via its fake.
  `newton_schulz_ref` and `xxt_ref` are the same math in plain PyTorch.

FLOP accounting, per step, per (M, N) matrix with M ≤ N, counting full products:
    2·M·M·N (X Xᵀ) + 2·M·M·M (A·A) + 2·M·M·N (B·X)  =  4·M²·N + 2·M³.
Benchmarks report TFLOP/s against this count; the symmetric kernels actually do (T+1)/(2T) of the
first two (58% at M = 768, BLOCK = 128), so "effective" TFLOP/s can exceed what the tensor cores do.

Block sizes: on CUDA, 128x128 output tiles with BLOCK_K = 64 (bf16/fp16; 32 for fp32 to fit shared
memory), 8 warps, 4 stages: the usual Hopper tensor-core tile. Symmetric tiles must be square. Under the
interpreter (CPU) tiles are 16x16 (BLOCK_K 32) so small test matrices still span several tiles.

Limits: 2-D (M, N) or 3-D (B, M, N) real float inputs (anything else: a one-line ValueError); the norm is
taken in fp32, the iteration runs in bf16 on CUDA (fp32 accumulation), and on CPU in fp16 for fp16 input,
fp32 otherwise (Triton's interpreter cannot do bf16 arithmetic: bf16 there is a ValueError); `dtype=`
overrides. A zero matrix gives zeros. Each step allocates nothing (A, B and a ping-pong X are allocated once
per call). No autograd: Muon calls it under no_grad. Compiled for sm_90 without a GPU (`python -m
benchmarks.ptxas_report`; Triton 3.9, ptxas 13.4): 4-stage pipelines in 128 KiB of shared memory in bf16,
119 (syrk), 219 (syrk with C) and 126 (bx_plus_ax) registers, no spills. GPU: not measured; `python -m
benchmarks.bench_newton_schulz` measures it.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from kernels import check_interpretable, check_launchable, interpreted

# Keller Jordan's Muon quintic, (a, b, c) for σ ← aσ + bσ³ + cσ⁵, used every step.
QUINTIC = (3.4445, -4.7750, 2.0315)

# Amsel et al. 2025 (arXiv:2505.16932), from github.com/NoahAmsel/PolarExpress polar_express/basic.py:
# optimal_composition(l=1e-3, num_iters=8, safety_factor_eps=1e-2, cushion=0.02), before the safety factor.
_POLAR_EXPRESS_UNSCALED = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),  # the fixed point: every later step uses this one
)
# The authors' safety factor s = 1.01: every step but the last becomes p(x/s) = (a/s, b/s³, c/s⁵), so a σ that
# rounding pushed up to s is still treated as if <= 1; the input is likewise normalised by s·‖G‖_F.
POLAR_EXPRESS_SAFETY = 1.01
POLAR_EXPRESS = tuple(
    (a / POLAR_EXPRESS_SAFETY, b / POLAR_EXPRESS_SAFETY**3, c / POLAR_EXPRESS_SAFETY**5)
    for a, b, c in _POLAR_EXPRESS_UNSCALED[:-1]
) + (_POLAR_EXPRESS_UNSCALED[-1],)

NORM_EPS = 1e-7  # X₀ = G / (safety·‖G‖_F + NORM_EPS): a zero G stays zero, never NaN


# ------------------------------------------------------------------------------------------------ kernels


@triton.jit
def _upper_tile(pid, num_tiles):
    """Linear index over the upper-triangular tile pairs, row by row, → (tile_m, tile_n) with tile_m <= tile_n."""
    tile_m = pid * 0
    row_len = pid * 0 + num_tiles  # tiles left in row tile_m: num_tiles - tile_m
    while pid >= row_len:
        pid -= row_len
        tile_m += 1
        row_len -= 1
    return tile_m, tile_m + pid


@triton.jit
def _syrk_kernel(
    a_ptr,  # (batch, M, K) input A
    c_ptr,  # (batch, M, M) symmetric addend C, read only when HAS_C (M == K then)
    out_ptr,  # (batch, M, M) output: alpha·A Aᵀ + beta·C
    M,
    K,
    a_stride_b,
    a_stride_m,
    a_stride_k,
    c_stride_b,
    c_stride_m,
    c_stride_n,
    out_stride_b,
    out_stride_m,
    out_stride_n,
    alpha,
    beta,
    HAS_C: tl.constexpr,
    BLOCK: tl.constexpr,  # square output tiles: a tile and its mirror have the same shape
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,  # "ieee" for fp32 inputs, ignored for fp16/bf16
):
    """out = alpha·A Aᵀ (+ beta·C): one program per output tile on or above the diagonal, mirrored below."""
    tile_m, tile_n = _upper_tile(tl.program_id(0), tl.cdiv(M, BLOCK))
    batch = tl.program_id(1).to(tl.int64)
    offs_m = tile_m * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) rows of A, rows of the tile
    offs_n = tile_n * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) rows of A, columns of the tile
    offs_k = tl.arange(0, BLOCK_K)

    a_ptr += batch * a_stride_b
    left_ptrs = a_ptr + offs_m[:, None] * a_stride_m + offs_k[None, :] * a_stride_k  # (BLOCK, BLOCK_K)
    right_ptrs = a_ptr + offs_n[:, None] * a_stride_m + offs_k[None, :] * a_stride_k  # (BLOCK, BLOCK_K)
    acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_mask = offs_k[None, :] < K - k * BLOCK_K
        left = tl.load(left_ptrs, mask=(offs_m[:, None] < M) & k_mask, other=0.0)
        right = tl.load(right_ptrs, mask=(offs_n[:, None] < M) & k_mask, other=0.0)
        acc = tl.dot(left, tl.trans(right), acc, input_precision=DOT_PRECISION)
        left_ptrs += BLOCK_K * a_stride_k
        right_ptrs += BLOCK_K * a_stride_k

    mask = (offs_m[:, None] < M) & (offs_n[None, :] < M)
    out = alpha * acc
    if HAS_C:
        c_ptrs = c_ptr + batch * c_stride_b + offs_m[:, None] * c_stride_m + offs_n[None, :] * c_stride_n
        out += beta * tl.load(c_ptrs, mask=mask, other=0.0).to(tl.float32)
    if tile_m == tile_n:
        # Rounding makes acc[i, j] and acc[j, i] differ in the last bits: keep the upper half, mirror it.
        out = tl.where(offs_m[:, None] <= offs_n[None, :], out, tl.trans(out))
    out = out.to(out_ptr.dtype.element_ty)

    out_ptr += batch * out_stride_b
    tl.store(out_ptr + offs_m[:, None] * out_stride_m + offs_n[None, :] * out_stride_n, out, mask=mask)
    if tile_m != tile_n:  # the mirror tile (tile_n, tile_m) of the lower triangle
        mirror_ptrs = out_ptr + offs_n[:, None] * out_stride_m + offs_m[None, :] * out_stride_n
        tl.store(mirror_ptrs, tl.trans(out), mask=(offs_n[:, None] < M) & (offs_m[None, :] < M))


@triton.jit
def _bx_plus_ax_kernel(
    b_ptr,  # (batch, M, M) B
    x_ptr,  # (batch, M, N) X
    out_ptr,  # (batch, M, N) output: B X + a·X (must not alias X)
    M,
    N,
    b_stride_b,
    b_stride_m,
    b_stride_k,
    x_stride_b,
    x_stride_m,
    x_stride_n,
    out_stride_b,
    out_stride_m,
    out_stride_n,
    a,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """out = B X + a·X: one program per (BLOCK_M, BLOCK_N) output tile, the `a·X +` fused into the epilogue."""
    pid = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    num_tiles_n = tl.cdiv(N, BLOCK_N)
    offs_m = (pid // num_tiles_n) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) rows of B, X and out
    offs_n = (pid % num_tiles_n) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) columns of X and out
    offs_k = tl.arange(0, BLOCK_K)

    b_ptr += batch * b_stride_b
    x_ptr += batch * x_stride_b
    b_ptrs = b_ptr + offs_m[:, None] * b_stride_m + offs_k[None, :] * b_stride_k  # (BLOCK_M, BLOCK_K)
    x_ptrs = x_ptr + offs_k[:, None] * x_stride_m + offs_n[None, :] * x_stride_n  # (BLOCK_K, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(M, BLOCK_K)):
        k_left = M - k * BLOCK_K
        b = tl.load(b_ptrs, mask=(offs_m[:, None] < M) & (offs_k[None, :] < k_left), other=0.0)
        x = tl.load(x_ptrs, mask=(offs_k[:, None] < k_left) & (offs_n[None, :] < N), other=0.0)
        acc = tl.dot(b, x, acc, input_precision=DOT_PRECISION)
        b_ptrs += BLOCK_K * b_stride_k
        x_ptrs += BLOCK_K * x_stride_m

    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    x_tile = tl.load(x_ptr + offs_m[:, None] * x_stride_m + offs_n[None, :] * x_stride_n, mask=mask)
    out = acc + a * x_tile.to(tl.float32)
    out_ptrs = out_ptr + batch * out_stride_b + offs_m[:, None] * out_stride_m + offs_n[None, :] * out_stride_n
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask)


_INTERPRETED = interpreted(_syrk_kernel)  # made for Triton's interpreter (TRITON_INTERPRET=1 at import)


# ------------------------------------------------------------------------------------------------ launchers


def _launch_config(on_cuda: bool, element_size: int) -> dict:
    """Tile sizes: the Hopper tensor-core tile on CUDA; small tiles under the CPU interpreter."""
    if on_cuda:
        # 128x128x64 bf16: 32 KiB of operands per stage, 4 stages in Hopper's 228 KiB shared memory.
        # fp32 operands are twice as big, so BLOCK_K halves.
        return dict(BLOCK=128, BLOCK_K=64 if element_size <= 2 else 32, num_warps=8, num_stages=4)
    return dict(BLOCK=16, BLOCK_K=32, num_warps=1, num_stages=1)


def _dot_precision(t: torch.Tensor) -> str:
    # fp32 inputs: exact fp32 products (TF32 would lose 13 mantissa bits); fp16/bf16 ignore this.
    return "ieee" if t.dtype == torch.float32 else "tf32"


def _as_stack(t: torch.Tensor) -> torch.Tensor:
    """(M, N) → (1, M, N); (B, M, N) unchanged."""
    return t.unsqueeze(0) if t.ndim == 2 else t


def _check_inputs(op: str, *tensors: torch.Tensor, any_float: bool = False, launches: bool = True) -> None:
    """One-line ValueErrors unless each tensor is a (M, N) matrix or a (B, M, N) stack of a dtype the kernels
    take (float32, float16, bfloat16), or of any real float dtype where the op casts first (any_float), and, where
    the op launches Triton kernels (`launches`; not the PyTorch reference), on a device they can run on."""
    for t in tensors:
        if not isinstance(t, torch.Tensor) or t.ndim not in (2, 3):
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{op}: expected a (M, N) matrix or a (B, M, N) stack, got {shape}")
        if any_float and not t.dtype.is_floating_point:
            raise ValueError(f"{op}: expected a real floating-point tensor, got {t.dtype}")
        if not any_float and t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"{op}: expected float32, float16 or bfloat16, got {t.dtype}")
    if launches:
        check_launchable(op, _INTERPRETED, *tensors)
        if not any_float:  # any_float: the op casts first; `newton_schulz` checks its working dtype
            check_interpretable(op, _INTERPRETED, tensors[0].dtype)


def _check_out(op: str, out: torch.Tensor | None, shape: tuple[int, ...], *inputs: torch.Tensor) -> None:
    """A one-line ValueError unless `out` is None or a `shape` buffer of the inputs' dtype and device that is none of
    them: the kernels write `shape` through out's strides (past the end of a smaller one) while reading the inputs."""
    x = inputs[0]
    alias = out is not None and out.numel() > 0 and any(out.data_ptr() == t.data_ptr() for t in inputs)
    if out is not None and (tuple(out.shape) != shape or out.dtype != x.dtype or out.device != x.device or alias):
        raise ValueError(f"{op}: out must be {shape} {x.dtype} on {x.device}, not an input, got {tuple(out.shape)} "
                         f"{out.dtype} on {out.device}{' (an input)' if alias else ''}")


def _syrk(A: torch.Tensor, C: torch.Tensor | None, alpha: float, beta: float, out: torch.Tensor | None):
    """Launch `_syrk_kernel`: alpha·A Aᵀ (+ beta·C). A (…, M, K), C and out (…, M, M)."""
    M, K = A.shape[-2:]
    if out is None:
        out = torch.empty(*A.shape[:-1], M, device=A.device, dtype=A.dtype)
    a3, o3 = _as_stack(A), _as_stack(out)
    c3 = _as_stack(C) if C is not None else o3  # an unread placeholder when HAS_C is False
    if o3.numel() == 0:
        return out
    cfg = _launch_config(A.is_cuda, A.element_size())
    num_tiles = triton.cdiv(M, cfg["BLOCK"])
    grid = (num_tiles * (num_tiles + 1) // 2, a3.shape[0])
    _syrk_kernel[grid](
        a3, c3, o3, M, K,
        *a3.stride(), *c3.stride(), *o3.stride(),
        float(alpha), float(beta),
        HAS_C=C is not None, DOT_PRECISION=_dot_precision(A), **cfg,
    )  # fmt: skip
    return out


def xxt(X: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """X Xᵀ, computing only the tiles on or above the diagonal and mirroring them.

    Args:
        X: (M, K) or (B, M, K), float32/float16/bfloat16.
        out: optional (…, M, M) buffer of X's dtype to write into.
    Returns:
        (…, M, M) in X's dtype (fp32 accumulation), exactly symmetric.
    """
    _check_inputs("xxt", X)
    _check_out("xxt", out, (*X.shape[:-1], X.shape[-2]), X)
    return _syrk(X, None, 1.0, 0.0, out)


def xxt_plus(A: torch.Tensor, alpha: float, beta: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """alpha·A Aᵀ + beta·A for a symmetric A (so A Aᵀ = A²): the NS step's B = c·A² + b·A.

    Args:
        A: (M, M) or (B, M, M), symmetric (the `beta·A` term reads only its upper triangle).
        alpha, beta: scalars.
        out: optional (…, M, M) buffer of A's dtype; must not alias A.
    Returns:
        (…, M, M) in A's dtype, exactly symmetric.
    """
    _check_inputs("xxt_plus", A)
    if A.shape[-1] != A.shape[-2]:
        raise ValueError(f"xxt_plus: A must be square (symmetric), got shape {tuple(A.shape)}")
    _check_out("xxt_plus", out, tuple(A.shape), A)
    return _syrk(A, A, alpha, beta, out)


def bx_plus_ax(B: torch.Tensor, X: torch.Tensor, a: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """B X + a·X, the NS step's update, with the `a·X +` fused into the matmul's epilogue.

    Args:
        B: (M, M) or (B, M, M).
        X: (M, N) or (B, M, N), same dtype and batch as B.
        a: scalar.
        out: optional buffer shaped like X; must not alias X (other tiles still read it).
    Returns:
        Shaped like X, in X's dtype (fp32 accumulation).
    """
    _check_inputs("bx_plus_ax", B, X)
    if B.shape[:-1] != X.shape[:-1] or B.shape[-1] != B.shape[-2] or B.dtype != X.dtype or B.device != X.device:
        got = f"{tuple(B.shape)} {B.dtype} on {B.device} and {tuple(X.shape)} {X.dtype} on {X.device}"
        raise ValueError(f"bx_plus_ax: need B (…, M, M) and X (…, M, N) of one dtype and device, got {got}")
    _check_out("bx_plus_ax", out, tuple(X.shape), X, B)
    return _bx_plus_ax(B, X, a, torch.empty_like(X, memory_format=torch.contiguous_format) if out is None else out)


def _bx_plus_ax(B: torch.Tensor, X: torch.Tensor, a: float, out: torch.Tensor) -> torch.Tensor:
    """Launch `_bx_plus_ax_kernel`: out = B X + a·X."""
    b3, x3, o3 = _as_stack(B), _as_stack(X), _as_stack(out)
    if o3.numel() == 0:
        return out
    M, N = X.shape[-2:]
    cfg = _launch_config(X.is_cuda, X.element_size())
    block = cfg.pop("BLOCK")
    grid = (triton.cdiv(M, block) * triton.cdiv(N, block), x3.shape[0])
    _bx_plus_ax_kernel[grid](
        b3, x3, o3, M, N,
        *b3.stride(), *x3.stride(), *o3.stride(),
        float(a),
        BLOCK_M=block, BLOCK_N=block, DOT_PRECISION=_dot_precision(X), **cfg,
    )  # fmt: skip
    return out


def _ns_step_into(X, a, b, c, A, B, out):
    """One step into preallocated buffers: A, B (…, M, M) scratch, `out` shaped like X (not X itself). The
    launchers, unchecked: the op checks its input once, not at each of its steps' three launches."""
    _syrk(X, None, 1.0, 0.0, A)  # A = X Xᵀ
    _syrk(A, A, c, b, B)  # B = c·A² + b·A
    return _bx_plus_ax(B, X, a, out)  # X_new = B X + a·X


def ns_step(X: torch.Tensor, a: float, b: float, c: float) -> torch.Tensor:
    """One Newton-Schulz step, X ← a·X + (b·A + c·A²) X with A = X Xᵀ, as three kernel launches.

    Args:
        X: (M, N) or (B, M, N) with M <= N (the symmetric products are M x M).
    Returns:
        The new X, same shape and dtype.
    """
    _check_inputs("ns_step", X)
    M = X.shape[-2]
    A = torch.empty(*X.shape[:-1], M, device=X.device, dtype=X.dtype)
    return _ns_step_into(X, a, b, c, A, torch.empty_like(A), torch.empty_like(X))


# ------------------------------------------------------------------------------------------------ the op


def _resolve_schedule(coefficients, steps: int) -> tuple[list[tuple[float, float, float]], float]:
    """(per-step (a, b, c) list of length `steps`, norm safety factor) for the `coefficients` argument."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"newton_schulz: steps must be a positive int, got {steps!r}")
    if isinstance(coefficients, str):
        named = {"quintic": ([QUINTIC], 1.0), "polar_express": (list(POLAR_EXPRESS), POLAR_EXPRESS_SAFETY)}
        if coefficients not in named:
            choices = "'quintic', 'polar_express' or (a, b, c) triples"
            raise ValueError(f"newton_schulz: unknown coefficients {coefficients!r}; use {choices}")
        per_step, safety = named[coefficients]
    else:
        bad = ValueError(f"newton_schulz: coefficients must be a name, (a, b, c) or a list of them, got {coefficients!r}")
        try:
            if len(coefficients) == 3 and all(isinstance(v, (int, float)) for v in coefficients):
                per_step, safety = [tuple(coefficients)], 1.0
            else:
                per_step, safety = [tuple(t) for t in coefficients], 1.0
        except TypeError:  # None, a number, a list of non-sequences
            raise bad from None
        if not per_step or any(len(t) != 3 for t in per_step):
            raise bad
    # A schedule shorter than `steps` repeats its last triple (the Polar Express authors' rule).
    schedule = per_step[:steps] + [per_step[-1]] * max(0, steps - len(per_step))
    return [tuple(float(v) for v in t) for t in schedule], float(safety)


def _working_dtype(G: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is None:
        # bf16 on GPU (Muon's choice); the CPU interpreter cannot do bf16 math, so keep fp16 or use fp32.
        return torch.bfloat16 if G.is_cuda else (torch.float16 if G.dtype == torch.float16 else torch.float32)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"newton_schulz: dtype must be None, float32, float16 or bfloat16, got {dtype}")
    return dtype


def _normalised_wide(G: torch.Tensor, norm_safety: float, dtype: torch.dtype) -> tuple[torch.Tensor, bool]:
    """X₀ = G / (safety·‖G‖_F + eps) per matrix (norm in fp32), transposed to M <= N, in `dtype`."""
    G32 = G.float()
    X = G32 / (G32.norm(dim=(-2, -1), keepdim=True) * norm_safety + NORM_EPS)
    tall = G.shape[-2] > G.shape[-1]
    return (X.mT if tall else X).to(dtype), tall


@torch.library.custom_op("speedrun::newton_schulz", mutates_args=())
def _newton_schulz_op(
    G: torch.Tensor,
    coefficients: list[float],
    norm_safety: float,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The kernel path; `coefficients` is the schedule flattened to [a₀, b₀, c₀, a₁, …]."""
    X, tall = _normalised_wide(G, norm_safety, dtype)
    X = X.contiguous()
    M = X.shape[-2]
    A = torch.empty(*X.shape[:-1], M, device=X.device, dtype=X.dtype)  # (…, M, M) X Xᵀ
    B = torch.empty_like(A)  # (…, M, M) c·A² + b·A
    spare = torch.empty_like(X)  # ping-pong partner of X: bx_plus_ax must not write over its input
    for i in range(0, len(coefficients), 3):
        a, b, c = coefficients[i : i + 3]
        X, spare = _ns_step_into(X, a, b, c, A, B, spare), X
    return (X.mT if tall else X).to(G.dtype).contiguous()


@_newton_schulz_op.register_fake
def _(G, coefficients, norm_safety, dtype):
    return torch.empty_like(G, memory_format=torch.contiguous_format)


def newton_schulz(
    G: torch.Tensor,
    steps: int = 5,
    coefficients: str | tuple[float, float, float] | Sequence[tuple[float, float, float]] = QUINTIC,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Approximate orthogonalisation of G (its polar factor U Vᵀ) by `steps` Newton-Schulz iterations on Triton.

    Args:
        G: (M, N) or (B, M, N), any real float dtype. Each matrix of a stack is normalised on its own.
        steps: number of iterations.
        coefficients: `QUINTIC` (default, the same triple each step), "quintic", "polar_express"
            (Amsel et al. 2025's per-step schedule, with its 1.01 normalisation safety factor), an
            (a, b, c) triple, or a sequence of triples (one per step, the last repeated).
        dtype: working dtype of the iteration; None means bf16 on CUDA, else fp16 for fp16 input and
            fp32 otherwise.
    Returns:
        G's shape and dtype; singular values of a full-rank G land near 1 (roughly [0.7, 1.2] for the
        quintic), zero ones stay zero, and a zero G gives zeros.
    Raises:
        ValueError: not 2-D/3-D, not a real float, unknown coefficients, bad dtype or steps.
    """
    _check_inputs("newton_schulz", G, any_float=True)
    schedule, safety = _resolve_schedule(coefficients, steps)
    flat = [v for triple in schedule for v in triple]
    dtype = _working_dtype(G, dtype)
    check_interpretable("newton_schulz", _INTERPRETED, dtype)
    return _newton_schulz_op(G, flat, safety, dtype)


# ------------------------------------------------------------------------------------------------ references


def xxt_ref(X: torch.Tensor) -> torch.Tensor:
    """X Xᵀ in plain PyTorch, (…, M, K) → (…, M, M)."""
    return X @ X.mT


def newton_schulz_ref(
    G: torch.Tensor,
    steps: int = 5,
    coefficients: str | tuple[float, float, float] | Sequence[tuple[float, float, float]] = QUINTIC,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """`newton_schulz` in plain PyTorch matmuls: same arguments, same math, same result up to rounding."""
    _check_inputs("newton_schulz_ref", G, any_float=True, launches=False)
    schedule, safety = _resolve_schedule(coefficients, steps)
    X, tall = _normalised_wide(G, safety, _working_dtype(G, dtype))
    for a, b, c in schedule:
        A = X @ X.mT  # (…, M, M)
        B = b * A + c * (A @ A)  # (…, M, M)
        X = a * X + B @ X  # (…, M, N)
    return (X.mT if tall else X).to(G.dtype)
