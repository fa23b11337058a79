"""A roofline model of one training micro-step and optimizer step of a track on an H100, without a GPU.

    python -m benchmarks.roofline [--track T] [--kernels triton|torch] [--gpus N] [--assume A,B,...]
                                  [--attention-backward atomic|two_pass] [--doc-mean 1000] [--window W]
                                  [--<trainer field>=<value> ...]

Any other `--key=value` is a train_gpt.py Config override on top of the track's preset (`--fp8_head=false`,
`--embed_bf16=false`, `--num_layers=8`, ...), checked as the trainer checks it.

Every component of the step is a list of kernels, each with its FLOPs and the bytes it moves to and from
device memory; its time is the largest of FLOPs / the matmul or attention rate, bytes / the copy rate and
its kernel count x the least time of a kernel. Rates come from one table, `harness.hardware.H100_RATES`
(low, central, high): estimates, not measurements, until `benchmarks/gpu_check.sh` measures the card. The
estimate uses the central rates; the range line uses the low and the high ones.

Accounting (per micro-step of N = batch_size x seq_len tokens; d = model_dim, a = heads x head_dim, f =
mlp_ratio x d, V = vocab_size, L = layers):
- matmuls: each linear (N, K) @ (K, M) is 2NKM FLOPs forward and 4NKM backward (dX and dW), bf16
  operands read once and the output written once.
- the FP8 head (cfg.fp8_head, the fineweb-124m default: `kernels.fp8.fp8_mm`, `fp8_head_items`): its three
  matmuls at the FP8 rate (`matmul_fp8`) with 1-byte operands, and each cast its body makes on CUDA, by its
  bytes: x and w to e4m3 and the logits' gradient to e5m2, each one kernel (`kernels.fp8.cast_fp8`) that reads
  the tensor once and writes the fp8 copy and its transpose (the gradient's written by the loss's backward with
  our kernels: `loss_items`); dX written in bf16, dW in fp32 with
  transposed strides and copied into the weight's layout by AccumulateGrad. Without it (`--fp8_head=false`,
  the small tracks) the head is a bf16 matmul and its weight an autocast cast.
- attention: the (query block, key block) tiles each kernel visits at its own tile sizes
  (`kernels.attention.query_block_ranges` / `key_block_ranges`, the kernels' own loop bounds), masked pairs
  inside partial tiles counted as work; 2 x 2 x BM x BN x D FLOPs per forward tile, 4 and 3 matmuls per tile
  for the two-pass backward (dK/dV, then dQ), 5 for the one-pass one (dQ by fp32 atomics, its buffer
  zeroed, then read and cast: 10 bytes per element; the atomics' L2 traffic is not counted). The window
  is averaged over the schedule and the layers with attention (each step's long or short window,
  `train_gpt.window_size` and `attention_windows`, per `layer_attention`) and the documents are
  geometric with mean `--doc-mean` tokens (1000: the document starts of bench_model's synthetic tokens;
  FineWeb's own mean is not measured here). HBM bytes: q, k, v, o (and dO, dq, dk, dv) once per kernel, each
  read where it lies (v a strided view of the packed qkv output: no copy);
  the re-reads of K/V tiles across query blocks are assumed to hit L2. FlexAttention (--kernels=torch):
  128 x 128 tiles, forward 2 and backward 7 matmuls per tile. The kernels' TMA loads (sm_90) change no
  rate here: the `attention_*_tma` rates, for TMA with the QK^T matmul overlapped with the softmax
  (FlashAttention-3), apply only with `--assume tma`.
- elementwise: Inductor fuses the element-wise ops between two opaque ops (matmuls, custom ops) into one
  kernel that reads each input once and writes each output once; its backward moves twice the forward's
  bytes (reads the upstream gradient and the saved inputs, writes the input gradients). Our norms are
  custom ops (opaque): each reads and writes the residual stream's dtype (bf16: the trainer casts the
  embedding rows to autocast's dtype, so no cast stands before a matmul); F.rms_norm (--kernels=torch) is
  decomposed and fused into its neighbours. Our
  norm ops carry the adds and mixes around them, each counted by the tensors it reads and writes forward and
  backward: a block's entry (previous MLP output added, λ-mix, RMSNorm: `kernels.norm.mix_rms_norm`), the
  residual add after attention with the MLP's norm and the final add with the final norm (`add_rms_norm`),
  QK-norm with rotary (`rms_norm_rotary`). ReLU^2 (`kernels.mlp.relu2_mlp`) lives in the fc matmul's epilogues:
  forward the post tile is written beside pre, backward pre is read where d_post = dY W_proj is accumulated and
  d_pre written in its place, so only post's write and pre's read (2f B a token each) are counted beyond the
  matmuls; our Triton matmul is assumed to run at the table's matmul rate (cuBLAS-class), an estimate that
  `benchmarks/bench_mlp.py` measures. Inductor's ReLU^2 (--kernels=torch) is an element-wise kernel of its own
  each way, counted by its tensors (4f B forward, 6f backward: `relu2_item`), not by the rule above.
- loss (`loss_items`): the head's bf16 logits read once forward (soft-cap, log-sum-exp and the target fused),
  read and the bf16 gradient written once backward (recomputed, not saved); with the FP8 head and our kernels
  (`kernels.head_loss`) the backward writes G8 and G8^T (e5m2) instead, and the head's dY cast is gone.
- embedding tables (`table_bytes`): bf16 with cfg.embed_bf16 (the fineweb-124m default), else fp32. The token
  gather reads a table row per token and writes it in the stream's dtype (an fp32 table's cast fused); each
  layer with a value embedding gathers its table's rows inside the v mix. Backward, per table, Inductor's
  embedding_dense_backward: an fp32 (V, d) buffer zeroed, the gradient rows scatter-added into it (8 B an
  element: each fp32 row read and written, an upper bound where rows repeat), cast to bf16 for a bf16 table.
- weights: autocast's fp32 -> bf16 cast of every matrix each micro-step and the cast of its gradient back (not
  the FP8 head's weight: the op casts it itself), and gradient accumulation (grad += new, in the gradient's
  dtype: the tables' bf16 or fp32, fp32 for the rest) on all but the first micro-step of a step.
- optimizer (per step, optim.py): fused Adam 28 B per parameter (p, g, m, v read; p, m, v written) on 1/N of
  the embeddings and head (its state and step sharded; the scalars are negligible), and for bf16 tables the
  cast of their gradients to fp32 (whole) and of this rank's fp32 master slices back to bf16; Muon's momentum on this
  rank's share, 5 quintic Newton-Schulz steps of 4 m^2 k + 2 m^3 FLOPs per (m, k) matrix (m <= k) on its share,
  the update applied to every matrix.
- communication (per step, N > 1 GPUs): Muon's and Adam's gradients reduce-scattered in fp32, Muon's updates
  all-gathered in bf16 and Adam's parameters in their dtype: bytes x (N - 1) / N each, over the bus bandwidth.
  The optimizer step's time is a two-stream timeline (`OPTIMIZER_TIMELINE`: compute and NCCL, in the order the
  trainer issues them); the communication its compute does not hide is reported as exposed.

Options (`--assume`, comma-separated) model the changes issue 21 plans outside this module, so that their
effect is estimated before they exist: see `OPTIONS`. The attention backward is the kernel file's default
(`kernels.attention.DEFAULT_BACKWARD`) unless `--attention-backward` names one.

Not modelled: the SFU cost of exp/tanh over the logits, L2 hit rates, kernel overlap, pipeline drains
between the attention kernels' three loops, CPU launch overhead (the GPU is assumed to stay fed), the
first micro-step's extra gradient-buffer allocation.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections import Counter
from dataclasses import dataclass

import pandas as pd
import torch

from harness.hardware import H100_RATES
from harness.tracks import TRACKS
from kernels import attention
from train_gpt import (attention_windows, layer_kinds, parse_config, resolve_config, value_embed_tables,
                       window_size)

# The changes issue 21 plans in the trainer and the optimizer, as assumptions of the model.
OPTIONS = {
    "bf16_weights": "item 1: the matrices (the blocks' and a bf16 head's) stored in bf16: no autocast casts of them "
                    "(the rest of their traffic counted as for the fp32 matrices the code has)",
    "tma": "item 3: TMA loads and QK^T overlapped with the softmax in the attention kernels (the *_tma rates)",
}
# kernels.attention.doc_bounds, once per micro-step (the trainer's mask step): arange, searchsorted, sub, clamp,
# two gathers, the stack into (2, N); 4-byte elements: 10 N read and written (the stack's 4 N in and out included)
DOC_BOUNDS_KERNELS = 7


@dataclass(frozen=True)
class Item:
    """One or more kernels of a component: FLOPs and device-memory bytes per micro-step (or per step)."""

    component: str
    name: str
    flops: float = 0.0
    bytes: float = 0.0
    rate: str | None = None  # the H100_RATES key that bounds the FLOPs
    kernels: int = 1
    per_step: bool = False  # once per optimizer step, not per micro-step
    bandwidth: str = "copy"  # the H100_RATES key that bounds the bytes


def item_seconds(item: Item, scenario: int = 1) -> float:
    """max(FLOPs / rate, bytes / bandwidth, kernels x least kernel time); scenario 0 pessimistic (low rates, the
    longest kernel time), 1 central, 2 optimistic."""
    compute = item.flops / H100_RATES[item.rate][scenario] if item.rate and item.flops else 0.0
    memory = item.bytes / H100_RATES[item.bandwidth][scenario]
    return max(compute, memory, item.kernels * H100_RATES["kernel_s"][2 - scenario])


# ---------------------------------------------------------------------------------------------- the track


def track_config(track: str, *argv: str, **overrides):
    """The trainer's Config for a track (its preset, then the `--key=value` arguments `argv`, then `overrides`), as
    train_gpt.parse_config builds it; a ValueError (one line: its ConfigError) for an unknown track or a bad
    override."""
    return dataclasses.replace(parse_config([f"--track={track}", *argv]), **overrides)


def schedule_windows(cfg) -> Counter:
    """window -> number of (step, layer with attention) pairs of the run that train at it: each step's long or
    short window (train_gpt.window_size, attention_windows) in each such layer, steps 0..num_steps-1."""
    kinds = [kind for kind in layer_kinds(cfg) if kind != "-"]
    return Counter(attention_windows(window_size(step, cfg), cfg)[kind == "S"]
                   for step in range(cfg.num_steps) for kind in kinds)


def attention_layers(cfg) -> tuple[int, int]:
    """(layers with attention, those of them without a value embedding) of cfg's model."""
    layers = [(kind, table) for kind, table in zip(layer_kinds(cfg), value_embed_tables(cfg)) if kind != "-"]
    return len(layers), sum(table is None for _, table in layers)


def document_starts(T: int, mean: float, seed: int = 0) -> torch.Tensor:
    """cu_seqlens (int32) of geometric document lengths with this mean, cut at T: the stated assumption."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.nonzero(torch.rand(T, generator=g) < 1 / mean).flatten().tolist()
    return torch.tensor(sorted({0, *starts, T}), dtype=torch.int32)


def _visits(ranges: list[tuple[int, int, int, int]], step: int) -> int:
    """Tiles a kernel runs over loop bounds (lo, full_lo, full_hi, hi): its three loops of `step`."""
    return sum(len(range(lo, fl, step)) + len(range(fl, fh, step)) + len(range(fh, hi, step))
               for lo, fl, fh, hi in ranges)


def attention_tiles(T: int, window: int, cu_seqlens: torch.Tensor | None, kernels: str, head_dim: int,
                    backward: str) -> dict[str, tuple[int, int, int, int]]:
    """pass -> (tiles visited per (batch row, head), BLOCK_M, BLOCK_N, matmuls per tile) for one attention call."""
    w = None if window >= T else window
    if kernels == "torch":  # FlexAttention: 128 x 128 blocks, dQ and dK/dV programs in its backward
        fwd = _visits(attention.query_block_ranges(T, 128, 128, window_size=w, cu_seqlens=cu_seqlens), 128)
        dkdv = _visits(attention.key_block_ranges(T, 128, 128, window_size=w, cu_seqlens=cu_seqlens), 128)
        return {"fwd": (fwd, 128, 128, 2), "dkdv": (dkdv, 128, 128, 4), "dq": (fwd, 128, 128, 3)}
    tiles = {}
    for kind, matmuls in [("fwd", 2), *([("dkdv", 4), ("dq", 3)] if backward == "two_pass" else [("bwd", 5)])]:
        cfg = attention.cuda_block_config(kind, head_dim, torch.bfloat16)
        if kind in ("fwd", "dq"):
            ranges = attention.query_block_ranges(T, cfg.block_m, cfg.block_n, window_size=w, cu_seqlens=cu_seqlens)
            tiles[kind] = (_visits(ranges, cfg.block_n), cfg.block_m, cfg.block_n, matmuls)
        else:  # a key block walks query blocks
            ranges = attention.key_block_ranges(T, cfg.block_m, cfg.block_n, window_size=w, cu_seqlens=cu_seqlens)
            tiles[kind] = (_visits(ranges, cfg.block_m), cfg.block_m, cfg.block_n, matmuls)
    return tiles


# ---------------------------------------------------------------------------------------------- the items


def attention_items(tiles: dict, B: int, T: int, H: int, D: int, calls: int = 1, rate_suffix: str = "") -> list[Item]:
    """The attention kernels of `calls` calls on (B, T, H, D) bf16 inputs, forward then backward; `tiles` from
    attention_tiles (per (batch row, head) of one call). rate_suffix "_tma" takes the TMA-class rates."""
    rows_heads, tokens = B * H * calls, B * T * calls
    io = 2 * H * D  # bytes per token of one (T, H, D) bf16 tensor

    def tile_flops(kind):
        n, block_m, block_n, matmuls = tiles[kind]
        return n * matmuls * 2 * block_m * block_n * D * rows_heads

    items = [Item("attention", "forward (q, k, v read; o, lse written)", flops=tile_flops("fwd"),
                  bytes=(4 * io + 4 * H) * tokens, rate="attention_fwd" + rate_suffix, kernels=calls),
             Item("attention", "backward preprocess (delta = rowsum(dO o O))", bytes=(2 * io + 4 * H) * tokens,
                  kernels=calls)]
    if "bwd" in tiles:
        items += [Item("attention", "backward, one pass, 5 matmuls/tile (dQ by fp32 atomics)", flops=tile_flops("bwd"),
                       bytes=(6 * io + 8 * H) * tokens, rate="attention_bwd" + rate_suffix, kernels=calls),
                  Item("attention", "dQ fp32 buffer: zero, then cast to bf16", bytes=(4 + 4 + 2) * H * D * tokens,
                       kernels=2 * calls)]
    else:
        items += [Item("attention", "backward dK/dV, 4 matmuls/tile", flops=tile_flops("dkdv"),
                       bytes=(6 * io + 8 * H) * tokens, rate="attention_bwd" + rate_suffix, kernels=calls),
                  Item("attention", "backward dQ, 3 matmuls/tile", flops=tile_flops("dq"),
                       bytes=(5 * io + 8 * H) * tokens, rate="attention_bwd" + rate_suffix, kernels=calls)]
    return items


def matmul_item(name: str, N: int, K: int, M: int, count: int, backward: bool = True) -> Item:
    """`count` bf16 matmuls (N, K) @ (K, M): 2NKM FLOPs forward and 4NKM backward (dX and dW), operands read once and
    the output written once by each; forward only with backward=False."""
    passes = 3 if backward else 1
    return Item("matmul", f"{name} ({N}x{K} @ {K}x{M}) x{count}", flops=2 * passes * N * K * M * count,
                bytes=passes * 2 * (N * K + K * M + N * M) * count, rate="matmul", kernels=passes * count)


def relu2_item(N: int, f: int, count: int, kernels: str, backward: bool = True) -> Item:
    """ReLU^2 between the MLP's matmuls, `count` layers of N tokens of width f, bf16, beyond the matmuls' own bytes.
    torch: Inductor saves pre and post; its forward kernel reads pre and writes post (4f B a token), its backward
    kernel reads d_post and pre and writes d_pre (6f B): 10f B with the backward, not the generic element-wise
    rule's 12f (backward = 2 x forward). triton (kernels.mlp.relu2_mlp, in the fc matmul's epilogues): post written
    beside pre (2f B) forward, pre read beside the d_post accumulator (2f B) backward, d_pre written in d_post's
    place; no kernel. kernels/mlp.py's docstring counts both per token."""
    if kernels == "torch":
        return Item("elementwise", f"ReLU^2 x{count}", bytes=(4 + 6 * backward) * f * N * count,
                    kernels=(1 + backward) * count)
    return Item("elementwise", f"ReLU^2 in the fc matmul's epilogues (post written, pre read back) x{count}",
                bytes=(2 + 2 * backward) * f * N * count, kernels=0)


def mlp_call_ms(M: int, d: int, f: int, *, backward: bool, kernels: str = "triton") -> float:
    """The estimate (central rates) of one MLP call proj(relu(fc(x))^2) on M tokens, bf16: forward, or forward and
    backward; what benchmarks/bench_mlp times. Our Triton fc matmul is assumed to run at the table's matmul rate."""
    items = [matmul_item("mlp fc", M, d, f, 1, backward), matmul_item("mlp proj", M, f, d, 1, backward),
             relu2_item(M, f, 1, kernels, backward)]
    return 1e3 * sum(item_seconds(i) for i in items)


def attention_call_ms(B: int, T: int, H: int, D: int, window: int | None, cu_seqlens: torch.Tensor | None, *,
                      backward: bool, kernels: str = "triton", attention_backward: str | None = None) -> float:
    """The estimate (central rates) of one call of our attention on (B, T, H, D) bf16 inputs: the forward, or the
    forward and the backward; what benchmarks/bench_attention times. window None: plain causal."""
    bwd = attention_backward or attention.DEFAULT_BACKWARD
    tiles = attention_tiles(T, T if window is None else window, cu_seqlens, kernels, D, bwd)
    items = attention_items(tiles, B, T, H, D)
    return 1e3 * sum(item_seconds(i) for i in (items if backward else items[:1]))


def table_bytes(cfg) -> int:
    """Bytes per element of the stored embedding tables: bf16 with cfg.embed_bf16 (train_gpt.GPT; Adam steps fp32
    masters of them, optim.ShardedAdam), else fp32."""
    return 2 if cfg.embed_bf16 else 4


def fp8_head_items(N: int, d: int, V: int, fused_loss: bool) -> list[Item]:
    """The FP8 head (cfg.fp8_head: kernels.fp8.fp8_mm on x (N, d) bf16 and the fp32 weight w (V, d)), forward and
    backward, as its body runs: a custom op, so Inductor calls it as it is and fuses nothing into it.
    - three torch._scaled_mm at the FP8 rate, 2 N d V FLOPs each, operands 1 B an element: Y = X8 W8^T (bf16 out),
      dX = G8 W8 (bf16 out), dW = X8^T G8 (fp32 out);
    - each cast is one kernel (kernels.fp8.cast_fp8) that reads its input once, scales and casts it, and writes
      the fp8 copy in each layout a matmul takes (`_scaled_mm`: first operand row-major, second column-major):
      x (bf16, 2 B read, X8 and X8^T 1 + 1 written) and w (fp32, 4 read, W8 and W8^T 1 + 1) to e4m3, dY (bf16,
      2 read, G8 and G8^T 1 + 1) to e5m2: no separate scaled product, no transposed copies. With `fused_loss`
      (--kernels=triton: kernels.head_loss) the loss's backward writes G8 and G8^T itself (`loss_items`): no dY;
    - the six `_inverse` scales, one fill kernel each;
    - dW comes out with transposed strides (1, V), so autograd's AccumulateGrad copies it into the weight's layout
      (fp32, 4 B read, 4 written)."""
    x, w, g = N * d, V * d, N * V  # elements of x, of w and of the logits' gradient
    flops = 2 * N * d * V
    dy_cast = [] if fused_loss else [
        Item("head", "FP8: dY (bf16) cast to e5m2, G8 and G8^T in one pass", bytes=(2 + 1 + 1) * g)]
    return [
        Item("matmul", "head, FP8: Y = X8 W8^T (e4m3 in, bf16 out, fast accumulation)", flops=flops,
             bytes=x + w + 2 * g, rate="matmul_fp8"),
        Item("matmul", "head, FP8: dX = G8 W8 (e5m2 x e4m3, bf16 out)", flops=flops, bytes=g + w + 2 * x,
             rate="matmul_fp8"),
        Item("matmul", "head, FP8: dW = X8^T G8 (e4m3 x e5m2, fp32 out)", flops=flops, bytes=x + g + 4 * w,
             rate="matmul_fp8"),
        Item("head", "FP8: x (bf16) cast to e4m3, X8 and X8^T in one pass", bytes=(2 + 1 + 1) * x),
        Item("head", "FP8: w (fp32) cast to e4m3, W8 and W8^T in one pass", bytes=(4 + 1 + 1) * w),
        *dy_cast,
        Item("head", "FP8: the matmuls' inverse scales (fp32 scalars, torch.full)", bytes=6 * 4, kernels=6),
        Item("head", "FP8: dW copied into the weight's layout (AccumulateGrad)", bytes=(4 + 4) * w),
    ]


def loss_items(N: int, V: int, fused: bool) -> list[Item]:
    """The soft-capped cross-entropy on the head's bf16 logits (N, V), forward and backward.
    - fused (the FP8 head with --kernels=triton: kernels.head_loss.fp8_head_loss): forward, one kernel reads the
      logits once (2 B each) and the targets (8 B a row) and writes each row's lse and loss (4 + 4 B), then their
      mean (4 B a row read, one kernel); backward, one kernel reads the logits (2 B), the targets and lse (8 + 4 B
      a row) and writes G8 and G8^T (e5m2, 1 + 1 B): the FP8 head's dY cast is this kernel's (fp8_head_items);
    - else Inductor's: the logits read once forward (soft-cap, log-sum-exp and the target fused), read and the bf16
      gradient written once backward (recomputed, not saved), 2 + 2 + 2 B a logit."""
    if fused:
        return [Item("loss", "FP8 head loss fwd: bf16 logits read, row lse + loss written, their mean (head_loss)",
                     bytes=2 * N * V + N * (8 + 4 + 4) + 4 * N, kernels=2),
                Item("loss", "FP8 head loss bwd: bf16 logits read, G8 and G8^T (e5m2) written (head_loss)",
                     bytes=(2 + 1 + 1) * N * V + N * (8 + 4))]
    return [Item("loss", "soft-cap + cross-entropy on bf16 logits (fwd read; bwd read + write)", bytes=3 * 2 * V * N,
                 kernels=2)]


def memory_call_ms(nbytes: float, kernels: int) -> float:
    """The estimate (central rates) of one memory-bound call moving `nbytes` in `kernels` kernels, as the norm
    items count it: what benchmarks/bench_norm times for the trainer's fused norms."""
    return 1e3 * item_seconds(Item("norm", "call", bytes=nbytes, kernels=kernels))


def micro_step_items(cfg, kernels: str, options: set[str], tiles: dict, gpus: int) -> list[Item]:
    """Every kernel group of one micro-step (forward and backward) of cfg's model; `tiles` from attention_tiles
    (averaged over windows: floats are fine)."""
    N = cfg.batch_size * cfg.seq_len
    L, d, H, D, V = cfg.num_layers, cfg.model_dim, cfg.num_heads, cfg.head_dim, cfg.vocab_size
    a, f = H * D, cfg.mlp_ratio * cfg.model_dim
    R = 2  # bytes per element of the residual stream: bf16 (autocast's dtype, train_gpt.GPT.forward)
    E = table_bytes(cfg)  # bytes per element of the stored embedding tables
    ve_layers = 2 * cfg.value_embeds
    A, plain_v = attention_layers(cfg)  # layers with attention (fineweb-124m: 11), those with v as it is
    skips = cfg.unet_skips
    items = []

    def matmul(name, K, M, count):
        items.append(matmul_item(name, N, K, M, count))

    def elementwise(component, name, per_token_bytes, count=1, backward=2.0, kernels=1):
        """A fused group moving per_token_bytes per token forward, `backward` times that backward."""
        if count:
            items.append(Item(component, f"{name} x{count}", bytes=(1 + backward) * per_token_bytes * N * count,
                              kernels=(1 + (backward > 0)) * kernels * count))

    matmul("qkv", d, 3 * a, A)
    matmul("attention out", a, d, A)
    matmul("mlp fc", d, f, L)
    matmul("mlp proj", f, d, L)
    if cfg.fp8_head:
        items += fp8_head_items(N, d, V, fused_loss=kernels == "triton")
    else:
        matmul("head", d, V, 1)

    tma = "_tma" if "tma" in options and kernels == "triton" else ""
    items += attention_items(tiles, cfg.batch_size, cfg.seq_len, H, D, calls=A, rate_suffix=tma)
    io = 2 * a  # bytes per token of one (T, H, D) bf16 tensor
    if kernels == "triton":
        items.append(Item("attention", f"document bounds (once per micro-step, {DOC_BOUNDS_KERNELS} kernels)",
                          bytes=4 * 10 * N, kernels=DOC_BOUNDS_KERNELS))

    # the residual stream around each block: the first add (mix x = l0 x + l1 x0, plus the skip in the second
    # half, plus the previous block's MLP output) and the second (x + attention output), each followed by a norm
    mix_in = 2 * R * d + 2 * d  # x, x0 and the previous block's bf16 output
    first_half_skip_store = R * d  # block i < unet_skips: its output is kept for the skip
    if kernels == "torch":  # the references' adds, mixes and RMSNorms, fused by Inductor
        elementwise("norm", "residual add + mix + RMSNorm, fused (bf16 out)", mix_in + R * d + 2 * d, L)
        elementwise("norm", "residual add + RMSNorm, fused (bf16 out)", (R + 2) * d + R * d + 2 * d, A)
        elementwise("norm", "final residual add + RMSNorm (bf16 out)", (R + 2) * d + 2 * d, 1)
        elementwise("embedding", "token embedding gather + RMSNorm", E * d + R * d, 1)
        elementwise("elementwise", "U-net skip outputs kept", first_half_skip_store + R * d, skips, backward=1.0)
    else:  # our norm ops (train_gpt.Block and GPT.forward); per token: bytes forward, bytes backward
        def fused(name, fwd, bwd, count):
            if count:
                items.append(Item("norm", f"{name} x{count}", bytes=(fwd + bwd) * N * count, kernels=2 * count))

        # mix_rms_norm: x, the previous MLP output r, x0 in; s and its norm out. Backward: x, r, x0 (a and s
        # recomputed), ds, dy in; dx (= dr) and dx0 out; the lambdas' gradients as per-program partial sums
        with_r = L - 1 - skips  # not the first block (no r yet), nor where a skip joins (r added with it)
        fused("residual add + mix + RMSNorm (mix_rms_norm)", (2 * R + 2) * d + (R + 2) * d, (2 * R + 2 + R + 2) * d
              + 2 * R * d, with_r)
        fused("mix + RMSNorm (mix_rms_norm, no residual)", 2 * R * d + (R + 2) * d, (2 * R + R + 2) * d + 2 * R * d,
              L - with_r)
        # add_rms_norm: x and the attention out in, the sum and its norm out; backward: the sum's and the norm's
        # gradients and the sum in, one gradient out (x's and the attention out's)
        fused("residual add (attention out) + RMSNorm (add_rms_norm)", (2 * R + 2) * d + 2 * d, (2 * R + 2) * d + R * d,
              A)
        fused("final residual add (MLP out) + RMSNorm (add_rms_norm, the sum unused)", (R + 2) * d + (R + 2) * d,
              (R + 2) * d + R * d, 1)
        fused("rms_norm op (the embedding's)", 2 * R * d, 3 * R * d, 1)
        # the table's rows read, written in the stream's dtype (an fp32 table's cast fused); its backward is the
        # embedding gradient's scatter-add, below
        elementwise("embedding", "token embedding gather, in the stream's dtype", E * d + R * d, 1, backward=0)
        # the blocks' dx0 summed by autograd: a chain of adds that Inductor inlines into one kernel (an estimate of
        # its fusion): each layer's dx0 read once, the sum written once
        items.append(Item("elementwise", f"x0's gradient summed over the {L} blocks", bytes=(L + 1) * R * d * N))
        # the second half adds the skip with the last MLP output, x + r + w (xs + rs): 4 in, 1 out; backward: g, xs,
        # rs in, w g (xs's and rs's gradient) out; the first half keeps (x, r) for it (no store)
        elementwise("elementwise", "residual add + U-net skip (x + r + w (xs + rs))", 5 * R * d, skips, backward=0.8)
    if kernels == "torch":  # F.rms_norm and the rotation, fused by Inductor
        elementwise("norm", "QK-norm + rotary, fused", 2 * 2 * io, A)
    else:  # kernels.norm.rms_norm_rotary on q, then on k: each read once and written once; backward: dy and x
        # read, dx written
        elementwise("norm", "QK-norm + rotary (rms_norm_rotary, q and k)", 2 * 2 * io, A, backward=1.5, kernels=2)
    elementwise("elementwise", "value-embedding gather + v mix", io + E * d + io, ve_layers)
    elementwise("elementwise", "v scaled by its λ (v_lambda)", 2 * io, plain_v if cfg.v_lambda else 0)
    items.append(relu2_item(N, f, L, kernels))

    items += loss_items(N, V, fused=cfg.fp8_head and kernels == "triton")

    # weights: the matrices' autocast casts and the gradient accumulation over micro-steps. The FP8 head's weight
    # is no autocast cast: the op takes it in fp32 and scales and casts it itself (fp8_head_items)
    blocks = A * (3 * a * d + a * d) + L * 2 * d * f
    matrices = blocks + (0 if cfg.fp8_head else d * V)  # the matrices autocast casts
    tables = 1 + cfg.value_embeds
    embeddings = tables * V * d
    scalars = L * 2 + ve_layers * 2 + skips
    if "bf16_weights" not in options:
        items.append(Item("weights", "autocast casts: fp32 -> bf16 forward, gradients bf16 -> fp32",
                          bytes=12 * matrices, kernels=2 * (2 * A + 2 * L + (not cfg.fp8_head))))
    # Inductor's embedding_dense_backward (torch/_decomp): an fp32 (V, d) buffer zeroed, the (N, d) gradient rows
    # (the stream's dtype) scatter-added into it (each fp32 row read and written: 8 B an element, an upper bound:
    # a repeated token's row hits L2), and a bf16 table's gradient cast from the buffer (4 B read, 2 B written)
    cast = 6 * embeddings if E == 2 else 0
    items.append(Item("embedding", f"embedding gradients: dense (V, d) fp32 zero + scatter-add"
                                   f"{' + cast to bf16' if E == 2 else ''}, x{tables} tables",
                      bytes=4 * embeddings + tables * N * d * (R + 8) + cast, kernels=(2 + (E == 2)) * tables))
    accumulate = (cfg.grad_accum - 1) / cfg.grad_accum
    if accumulate:  # grad += new in each gradient's dtype: the tables' E bytes, fp32 for the rest
        items.append(Item("weights", f"gradient accumulation (grad += new) on {cfg.grad_accum - 1} of "
                                     f"{cfg.grad_accum} micro-steps",
                          bytes=(12 * (blocks + d * V + scalars) + 3 * E * embeddings) * accumulate,
                          kernels=4 * L + 10))
    return items


def optimizer_items(cfg, gpus: int) -> list[Item]:
    """The optimizer step and its communication, once per step, on one of `gpus` ranks (optim.py): Adam's state and
    step sharded, 1/gpus of the embeddings and head on each rank; Muon's Newton-Schulz on 1/gpus of the matrices."""
    L, d, H, D, V = cfg.num_layers, cfg.model_dim, cfg.num_heads, cfg.head_dim, cfg.vocab_size
    a, f = H * D, cfg.mlp_ratio * cfg.model_dim
    adam = (1 + cfg.value_embeds) * V * d + d * V  # embeddings and head (scalars: negligible)
    A = attention_layers(cfg)[0]
    groups = [(min(a, d), max(a, d), 4 * A), (min(d, f), max(d, f), 2 * L)]  # (m, k, matrices) per Muon shape group
    muon = sum(m * k * n for m, k, n in groups)
    E, tables = table_bytes(cfg), (1 + cfg.value_embeds) * V * d  # the head is fp32 whatever the tables are
    items = [Item("optimizer", f"Adam (fused) on 1/{gpus} of {adam / 1e6:.0f}M parameters", bytes=28 * adam / gpus,
                  kernels=3, per_step=True)]
    if E == 2:  # ShardedAdam: the bf16 tables' gradients cast to fp32 (the reduce-scatter's input, or the step's on one
        # GPU), whole; after the step, this rank's fp32 master slices cast back into the tables (the all-gather's input)
        items += [Item("optimizer", "Adam: bf16 gradients to fp32 (the tables)", bytes=6 * tables,
                       kernels=1 + cfg.value_embeds, per_step=True),
                  Item("optimizer", f"Adam: fp32 masters to bf16 (1/{gpus} of the tables)", bytes=6 * tables / gpus,
                       kernels=1 + cfg.value_embeds, per_step=True)]
    ns_flops = sum(math.ceil(n / gpus) * 5 * (4 * m * m * k + 2 * m ** 3) for m, k, n in groups)
    ns_bytes = sum(math.ceil(n / gpus) * 5 * 2 * (3 * m * k + 3 * m * m) for m, k, n in groups)
    items += [
        Item("optimizer", "Muon: gradients stacked (fp32 copy)", bytes=8 * muon, kernels=2, per_step=True),
        Item("optimizer", f"Muon: momentum and Nesterov on 1/{gpus}", bytes=24 * muon / gpus, kernels=4, per_step=True),
        Item("optimizer", f"Muon: Newton-Schulz x{cfg.ns_steps} on 1/{gpus} of the matrices", flops=ns_flops,
             bytes=ns_bytes, rate="matmul", kernels=len(groups) * (2 + 3 * cfg.ns_steps), per_step=True),
        Item("optimizer", "Muon: updates applied (bf16 -> fp32, p += u)", bytes=18 * muon, kernels=4, per_step=True),
    ]
    if gpus > 1:
        share, buckets = (gpus - 1) / gpus, 2 + cfg.value_embeds  # reduce-scatter / all-gather: bytes x (N - 1) / N
        items += [
            Item("communication", "Muon: reduce-scatter fp32 gradients", bytes=share * 4 * muon, kernels=len(groups),
                 per_step=True, bandwidth="nccl_busbw"),
            Item("communication", "Adam: reduce-scatter fp32 gradients", bytes=share * 4 * adam, kernels=buckets,
                 per_step=True, bandwidth="nccl_busbw"),
            Item("communication", "Muon: all-gather bf16 updates", bytes=share * 2 * muon, kernels=len(groups),
                 per_step=True, bandwidth="nccl_busbw"),
            Item("communication", f"Adam: all-gather parameters ({'bf16' if E == 2 else 'fp32'} tables, fp32 head)",
                 bytes=share * (E * tables + 4 * d * V), kernels=buckets, per_step=True,
                 bandwidth="nccl_busbw"),
        ]
    return items


# The optimizer step on the GPU's two streams, in the order optim.py issues it: (item name prefix, stream, the
# item it waits for). Every gradient collective is queued at the backward's end (under torch.compile the hooks
# all fire there), Muon's first; Muon waits for its reduce-scatters only, Adam steps between the launch of
# Muon's all-gathers and their wait, and the step ends when Adam's all-gathers land (train_step waits for them).
OPTIMIZER_TIMELINE = [
    ("Muon: gradients stacked", "compute", None),
    ("Muon: reduce-scatter", "nccl", "Muon: gradients stacked"),
    ("Adam: bf16 gradients", "compute", None),  # the cast makes the reduce-scatter's fp32 input
    ("Adam: reduce-scatter", "nccl", "Adam: bf16 gradients"),
    ("Muon: momentum", "compute", "Muon: reduce-scatter"),
    ("Muon: Newton-Schulz", "compute", None),
    ("Muon: all-gather", "nccl", "Muon: Newton-Schulz"),
    ("Adam (fused)", "compute", "Adam: reduce-scatter"),
    ("Adam: fp32 masters", "compute", None),  # bf16 tables: the step's masters cast back, the all-gather's input
    ("Adam: all-gather", "nccl", "Adam: fp32 masters"),
    ("Muon: updates applied", "compute", "Muon: all-gather"),
]


def optimizer_timeline(ms: dict[str, float]) -> float:
    """The optimizer step's time from the backward's end: each OPTIMIZER_TIMELINE item (ms by name prefix; an item
    absent takes 0) starts when its stream is free and the item it waits for has ended; the step ends with the
    last. The NCCL stream runs its collectives one after another (one communicator, issue order)."""
    free, ended = {"compute": 0.0, "nccl": 0.0}, {}
    for prefix, stream, after in OPTIMIZER_TIMELINE:
        start = max(free[stream], ended.get(after, 0.0))
        ended[prefix] = free[stream] = start + sum(v for name, v in ms.items() if name.startswith(prefix))
    return max(ended.values())


# ---------------------------------------------------------------------------------------------- the estimate


@dataclass
class Estimate:
    track: str
    kernels: str
    gpus: int
    options: tuple[str, ...]
    backward: str
    table: pd.DataFrame  # one row per item: component, name, flops, bytes, ms (central, low-rate, high-rate), per_step
    micro_ms: tuple[float, float, float]  # central, pessimistic, optimistic
    step_ms: tuple[float, float, float]
    grad_accum: int
    comm_exposed_ms: float


def averaged_tiles(cfg, kernels: str, backward: str, doc_mean: float, windows: Counter | None = None) -> dict:
    """attention_tiles averaged over the schedule's windows (weighted by steps), for one document layout."""
    T = cfg.seq_len
    cu = document_starts(T, doc_mean)
    windows = windows or schedule_windows(cfg)
    total = sum(windows.values())
    averaged = {}
    for window, steps in windows.items():
        for kind, (n, bm, bn, mm) in attention_tiles(T, window, cu, kernels, cfg.head_dim, backward).items():
            prev = averaged.get(kind, (0.0, bm, bn, mm))
            averaged[kind] = (prev[0] + n * steps / total, bm, bn, mm)
    return averaged


def estimate(cfg, kernels: str = "triton", gpus: int = 8, options=(), backward: str | None = None,
             doc_mean: float = 1000.0, windows: Counter | None = None) -> Estimate:
    """The roofline of the micro-step and step of a trainer Config `cfg` on `gpus` H100s. `windows` replaces the
    schedule's (window -> weight); cfg.grad_accum 0 means 8 // gpus, as the trainer resolves it. A one-line
    ValueError for what the trainer would refuse on `gpus` processes (its resolve_config: ranges, the world size,
    the layer pattern, the FP8 head's shapes; the GPU being an H100, which has FP8), a document length or a window
    that is not a positive number."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} (options: {', '.join(OPTIONS)})")
    if kernels not in ("triton", "torch"):
        raise ValueError(f"kernels={kernels!r}: expected triton or torch")
    backward = backward or attention.DEFAULT_BACKWARD
    if backward not in attention.BACKWARDS:
        raise ValueError(f"attention backward {backward!r}: expected one of {', '.join(attention.BACKWARDS)}")
    if not (isinstance(gpus, int) and gpus >= 1):
        raise ValueError(f"--gpus={gpus}: need at least 1")
    if not 1 <= doc_mean < math.inf:
        raise ValueError(f"--doc-mean={doc_mean}: need a finite number of tokens >= 1")
    if windows and min(windows) < 1:
        raise ValueError(f"--window={min(windows)}: need at least 1 token")
    cfg = resolve_config(cfg, gpus, torch.device("cpu"), fp8_gpu=True)  # the trainer's checks and grad_accum
    options = set(options)
    tiles = averaged_tiles(cfg, kernels, backward if kernels == "triton" else "two_pass", doc_mean, windows)
    items = micro_step_items(cfg, kernels, options, tiles, gpus) + optimizer_items(cfg, gpus)
    rows = [dict(component=i.component, name=i.name, gflop=i.flops / 1e9, gb=i.bytes / 1e9,
                 ms=1e3 * item_seconds(i, 1), ms_slow=1e3 * item_seconds(i, 0), ms_fast=1e3 * item_seconds(i, 2),
                 per_step=i.per_step, communication=i.bandwidth == "nccl_busbw") for i in items]
    table = pd.DataFrame(rows)
    micro = table[~table.per_step]
    opt = table[table.per_step & ~table.communication]

    def totals(col):
        m, per_step = micro[col].sum(), table[table.per_step]
        step = optimizer_timeline(dict(zip(per_step.name, per_step[col])))
        return m, cfg.grad_accum * m + step, step - opt[col].sum()  # exposed communication: what the compute does not hide

    central, slow, fast = totals("ms"), totals("ms_slow"), totals("ms_fast")
    return Estimate(cfg.track, kernels, gpus, tuple(sorted(options)), backward, table, (central[0], slow[0], fast[0]),
                    (central[1], slow[1], fast[1]), cfg.grad_accum, central[2])


def report(e: Estimate) -> str:
    by_component = e.table[~e.table.per_step].groupby("component", sort=False)[["gflop", "gb", "ms"]].sum()
    lines = [
        f"roofline: {e.track} on H100 x{e.gpus}, --kernels={e.kernels}, attention backward {e.backward}, "
        f"grad_accum {e.grad_accum}, assuming: {', '.join(e.options) or 'nothing (the code as it is)'}",
        "rates (harness.hardware.H100_RATES, estimates, central): "
        + ", ".join(f"{k} {H100_RATES[k][1]:.3g}" for k in H100_RATES),
        "",
        e.table.drop(columns=["communication"]).to_markdown(index=False, floatfmt=".2f"),
        "",
        "micro-step by component (ms, central rates):",
        by_component.to_markdown(floatfmt=".2f"),
        "",
        f"step: {e.grad_accum} x micro-step + optimizer + exposed communication ({e.comm_exposed_ms:.1f} ms) = "
        f"{e.step_ms[0]:.1f} ms (range {e.step_ms[2]:.1f}-{e.step_ms[1]:.1f})",
        f"micro-step range over the table's rates: {e.micro_ms[2]:.1f}-{e.micro_ms[1]:.1f} ms",
        f"estimate: {e.track} micro-step {e.micro_ms[0]:.1f} ms on H100 ({e.kernels})",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.roofline", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("--track", default="fineweb-124m", help=f"one of {', '.join(TRACKS)}")
    parser.add_argument("--kernels", default="triton", choices=("triton", "torch"))
    parser.add_argument("--gpus", type=int, default=8,
                        help="GPUs of the run (grad_accum = 8 // gpus unless the track sets it)")
    parser.add_argument("--assume", default="", help="comma list of planned changes to assume: "
                        + "; ".join(f"{k} ({v})" for k, v in OPTIONS.items()))
    parser.add_argument("--attention-backward", choices=attention.BACKWARDS, default=None,
                        help=f"the attention backward (default: the kernel file's, {attention.DEFAULT_BACKWARD})")
    parser.add_argument("--doc-mean", type=float, default=1000.0, help="mean document length in tokens (geometric)")
    parser.add_argument("--window", type=int, help="one window for every step instead of the schedule")
    args, config_argv = parser.parse_known_args(argv)
    options = [o for o in args.assume.split(",") if o]
    try:
        e = estimate(track_config(args.track, *config_argv), args.kernels, args.gpus, options, args.attention_backward,
                     args.doc_mean, None if args.window is None else Counter({args.window: 1}))
    except ValueError as exc:
        parser.error(str(exc))
    print(report(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
