"""benchmarks/roofline.py's accounting on a model small enough to count by hand: the tiles the attention kernels
visit, the FLOPs and bytes of a matmul, of attention, of a norm and of the loss, the time rule, the CLI's last
line and its one-line refusals."""
import dataclasses
import re
from collections import Counter

import pytest
import torch

from benchmarks import roofline
from harness.hardware import H100_RATES

# one layer of width 64, one head of 64, 256 tokens, vocabulary 128: every figure below is counted by hand
TINY = dict(num_layers=1, model_dim=64, num_heads=1, head_dim=64, mlp_ratio=4, vocab_size=128, value_embeds=0,
            unet_skips=0, seq_len=256, batch_size=1, grad_accum=1)


def _item(items, name):
    [found] = [i for i in items if i.name.startswith(name)]
    return found


def test_attention_tiles_follow_the_kernels_loop_bounds():
    # forward 128 queries x 64 keys, dQ 128 x 32, dK/dV 128 keys x 32-query steps (kernels.attention, D=64)
    tiles = roofline.attention_tiles(256, 256, None, "triton", 64, "two_pass")
    # causal: query block 0 sees keys 0..127 (2 tiles of 64, 4 of 32), block 1 keys 0..255 (4, 8)
    assert tiles["fwd"] == (6, 128, 64, 2) and tiles["dq"] == (12, 128, 32, 3)
    # key block 0 is seen by queries 0..255 (8 steps of 32), key block 1 by queries 128..255 (4)
    assert tiles["dkdv"] == (12, 32, 128, 4)
    # window 64: query block 1 (128..255) needs keys from 65, so from the key block at 64: 3 tiles
    assert roofline.attention_tiles(256, 64, None, "triton", 64, "two_pass")["fwd"][0] == 2 + 3
    # two documents of 128: each query block sees only its own 128 keys
    cu = torch.tensor([0, 128, 256], dtype=torch.int32)
    assert roofline.attention_tiles(256, 256, cu, "triton", 64, "two_pass")["fwd"][0] == 2 + 2
    # FlexAttention: 128 x 128 blocks, 1 + 2
    assert roofline.attention_tiles(256, 256, None, "torch", 64, "two_pass")["fwd"] == (3, 128, 128, 2)
    # the one-pass backward at D = 64: key blocks of 128 walk 64-query steps, 4 + 2 tiles of 5 matmuls
    one_pass = roofline.attention_tiles(256, 256, None, "triton", 64, "atomic")
    assert set(one_pass) == {"fwd", "bwd"} and one_pass["bwd"] == (6, 64, 128, 5)


def test_micro_step_accounting_on_a_small_model():
    cfg = roofline.track_config("cpu-tiny", **TINY)
    tiles = {"fwd": (6, 128, 64, 2), "dkdv": (12, 32, 128, 4), "dq": (6, 128, 64, 3)}
    items = roofline.micro_step_items(cfg, "triton", set(), tiles, gpus=1)
    N = 256
    qkv = _item(items, "qkv")
    assert qkv.flops == 6 * N * 64 * 192  # 2NKM forward + 4NKM backward
    assert qkv.bytes == 3 * 2 * (N * 64 + 64 * 192 + N * 192)
    fwd = _item(items, "forward")
    assert fwd.flops == 6 * 2 * 2 * 128 * 64 * 64  # tiles x matmuls x 2 BM BN D
    assert fwd.bytes == (4 * 128 + 4) * N  # q, k, v read, o written (128 B a token each), lse 4 B
    assert _item(items, "backward dK/dV").flops == 12 * 4 * 2 * 32 * 128 * 64
    assert _item(items, "backward dQ").flops == 6 * 3 * 2 * 128 * 64 * 64
    one_pass = roofline.micro_step_items(cfg, "triton", set(), {"fwd": tiles["fwd"], "bwd": (6, 64, 128, 5)}, gpus=1)
    assert _item(one_pass, "backward, one pass").flops == 6 * 5 * 2 * 64 * 128 * 64
    assert _item(one_pass, "dQ fp32 buffer").bytes == (4 + 4 + 2) * 64 * N  # zero, then read fp32 and write bf16
    # the embedding's norm: bf16 in and out (2 x 2 x 64 B a token) forward, 1.5x that backward, one call
    assert _item(items, "rms_norm op").bytes == 2 * 2 * 64 * 2.5 * N
    # mix_rms_norm in the one block (no MLP output before it): x, x0 in, s and its norm out (4 x 2 x 64 B);
    # backward x, x0, ds, dy in, dx, dx0 out (6 x 2 x 64 B)
    assert _item(items, "mix + RMSNorm (mix_rms_norm, no residual)").bytes == (4 + 6) * 2 * 64 * N
    assert not [i for i in items if i.name.startswith("residual add + mix")]
    # add_rms_norm: x, the attention out in, the sum and its norm out (4 x 2 x 64 B), backward as much, L calls
    assert _item(items, "residual add (attention out) + RMSNorm (add_rms_norm)").bytes == 4 * 2 * 64 * 2 * N
    # the final one: its sum unused, so no gradient of it to read backward (4 in and out, 3 back)
    assert _item(items, "final residual add (MLP out) + RMSNorm").bytes == (4 + 3) * 2 * 64 * N
    # QK-norm + rotary on q and k (128 B a token each): read and written once forward; dy and x read, dx written back
    assert _item(items, "QK-norm + rotary").bytes == 2 * (2 + 3) * 128 * N
    assert not [i for i in items if i.name.startswith(("rotary", "v copy"))]
    # x0's gradient: the one block's dx0 read and the sum written (an estimate of Inductor's fusion of the adds)
    assert _item(items, "x0's gradient summed").bytes == 2 * 2 * 64 * N
    assert _item(items, "soft-cap + cross-entropy").bytes == 3 * 2 * 128 * N  # bf16 logits: read; read + write
    # the bf16 residual stream: no activation cast before a matmul; the fp32 table's gathered rows (4 B each)
    # are written in bf16 (2 B), forward only: the backward is the embedding gradient's scatter-add
    assert not [i for i in items if i.name.startswith("cast to bf16")]
    assert _item(items, "token embedding gather").bytes == (4 + 2) * 64 * N
    # the table's gradient: an fp32 (128, 64) buffer zeroed, the bf16 gradient rows (2 B) scatter-added into fp32
    # rows (4 B read, 4 written), no cast (the table is fp32)
    assert _item(items, "embedding gradients").bytes == 4 * 128 * 64 + (2 + 8) * 64 * N
    assert _item(items, "autocast casts").bytes == 12 * (64 * 192 + 64 * 64 + 2 * 64 * 256 + 64 * 128)
    # bf16 weights: no autocast casts of the matrices; the tables are not theirs (cfg.embed_bf16 is)
    bf16 = roofline.micro_step_items(cfg, "triton", {"bf16_weights"}, tiles, gpus=1)
    assert not [i for i in bf16 if i.name.startswith("autocast casts")]
    assert _item(bf16, "token embedding gather").bytes == (4 + 2) * 64 * N


def test_bf16_embedding_tables_on_a_small_model():
    """cfg.embed_bf16 (fineweb-124m's default): the tables are stored in bf16, so the gathers read 2 B an element,
    Inductor's embedding backward casts each table's fp32 gradient buffer to bf16, a gradient accumulates in bf16,
    and ShardedAdam casts the tables' gradients to fp32 and its master slices back, and all-gathers them in bf16.
    One token table and one value-embedding table (read by the one layer) of 128 x 64; 256 tokens."""
    cfg = roofline.track_config("cpu-tiny", **{**TINY, "value_embeds": 1, "num_layers": 2}, embed_bf16=True)
    tiles = {"fwd": (6, 128, 64, 2), "bwd": (6, 64, 128, 5)}
    items = roofline.micro_step_items(cfg, "triton", set(), tiles, gpus=1)
    N, table = 256, 128 * 64
    assert _item(items, "token embedding gather").bytes == (2 + 2) * 64 * N  # bf16 row in, bf16 row out
    # v (128 B a token) and the bf16 table row (2 x 64 B) in, v out; backward twice that; layers 0 and 1
    assert _item(items, "value-embedding gather + v mix").bytes == 3 * (128 + 2 * 64 + 128) * N * 2
    # per table: the fp32 buffer zeroed (4 B), the rows scatter-added (2 + 8 B a gradient element), the buffer
    # cast to the bf16 gradient (4 B read, 2 written)
    grads = _item(items, "embedding gradients")
    assert grads.bytes == 2 * (4 * table + (2 + 8) * 64 * N + (4 + 2) * table) and grads.kernels == 2 * 3
    fp32 = roofline.micro_step_items(roofline.track_config("cpu-tiny", **{**TINY, "value_embeds": 1, "num_layers": 2}),
                                     "triton", set(), tiles, gpus=1)
    assert _item(fp32, "token embedding gather").bytes == (4 + 2) * 64 * N
    assert _item(fp32, "value-embedding gather + v mix").bytes == 3 * (128 + 4 * 64 + 128) * N * 2
    assert _item(fp32, "embedding gradients").bytes == 2 * (4 * table + (2 + 8) * 64 * N)
    # grad_accum 2: on one micro-step of two, grad += new in the gradient's dtype: the tables' bf16 (2 + 2 read,
    # 2 written), fp32 for the matrices (the head included) and the 8 scalars (2 blocks' λ pairs, 2 layers' v λ pairs)
    matrices = 2 * (64 * 192 + 64 * 64 + 2 * 64 * 256) + 64 * 128
    accumulate = _item(roofline.micro_step_items(dataclasses.replace(cfg, grad_accum=2), "triton", set(), tiles,
                                                 gpus=1), "gradient accumulation")
    assert accumulate.bytes == (3 * 2 * 2 * table + 12 * (matrices + 2 * 2 + 2 * 2)) / 2
    # the optimizer on 2 GPUs: the two tables' bf16 gradients cast to fp32 whole, this rank's half of the masters
    # cast back; the all-gather moves the tables in bf16 and the head (fp32 whatever the tables) in fp32
    opt = roofline.optimizer_items(cfg, gpus=2)
    assert _item(opt, "Adam: bf16 gradients").bytes == (2 + 4) * 2 * table
    assert _item(opt, "Adam: fp32 masters").bytes == (4 + 2) * 2 * table / 2
    assert _item(opt, "Adam: all-gather").bytes == 0.5 * (2 * 2 * table + 4 * table)
    assert _item(opt, "Adam: reduce-scatter").bytes == 0.5 * 4 * 3 * table  # fp32 gradients, head included
    assert not [i for i in roofline.optimizer_items(roofline.track_config("cpu-tiny", **TINY), gpus=2)
                if i.name.startswith("Adam: bf16 gradients")]


def test_fp8_head_on_a_small_model():
    """cfg.fp8_head (fineweb-124m's default): kernels.fp8.fp8_mm's three matmuls at the FP8 rate with 1-byte
    operands, and each cast its body makes on CUDA, one kernel a tensor (kernels.fp8.cast_fp8: read once, the fp8
    copy and its transpose written): x (256 x 64, bf16) and w (128 x 64, fp32) to e4m3, dY (256 x 128, bf16) to
    e5m2 (with --kernels=torch; with ours the loss writes G8); six fp32 scalars; dW (fp32, transposed strides) copied
    into the weight's layout. No transposed copies, no autocast cast of the head's weight, no bf16 head matmul."""
    cfg = roofline.track_config("cpu-tiny", **TINY, fp8_head=True)
    tiles = {"fwd": (6, 128, 64, 2), "bwd": (6, 64, 128, 5)}
    items = roofline.micro_step_items(cfg, "triton", set(), tiles, gpus=1)
    N, d, V = 256, 64, 128
    x, w, g = N * d, V * d, N * V
    assert not [i for i in items if i.name.startswith("head (")]
    fwd, dx, dw = (_item(items, f"head, FP8: {name}") for name in ("Y =", "dX =", "dW ="))
    assert {i.rate for i in (fwd, dx, dw)} == {"matmul_fp8"} and fwd.flops == dx.flops == dw.flops == 2 * N * d * V
    assert fwd.bytes == x + w + 2 * g  # X8, W8 in; bf16 logits out
    assert dx.bytes == g + w + 2 * x  # G8, W8 in; bf16 dX out
    assert dw.bytes == x + g + 4 * w  # X8^T, G8^T in; fp32 dW out
    casts = [_item(items, f"FP8: {name}") for name in ("x (bf16) cast", "w (fp32) cast")]
    assert [c.bytes for c in casts] == [(2 + 1 + 1) * x, (4 + 1 + 1) * w]
    assert [c.kernels for c in casts] == [1, 1]
    # dY's cast: its own kernel with the torch backend; with ours the loss's backward writes G8 (test below)
    assert not [i for i in items if "dY" in i.name]
    torch_items = roofline.micro_step_items(cfg, "torch", set(), tiles, gpus=1)
    dy = _item(torch_items, "FP8: dY (bf16) cast")
    assert dy.bytes == (2 + 1 + 1) * g and dy.kernels == 1
    assert not [i for i in items if i.component == "head" and ("transposed" in i.name or "then cast" in i.name)]
    scales = _item(items, "FP8: the matmuls' inverse scales")
    assert scales.bytes == 6 * 4 and scales.kernels == 6
    assert _item(items, "FP8: dW copied").bytes == 8 * w
    # the autocast casts: the blocks' matrices only (qkv, out, fc, proj), 2 kernels each
    casts = _item(items, "autocast casts")
    assert casts.bytes == 12 * (64 * 192 + 64 * 64 + 2 * 64 * 256) and casts.kernels == 2 * 4
    # the FP8 rate: twice the bf16 one (the H100's dense FP8 peak is twice its bf16 peak)
    assert H100_RATES["matmul_fp8"] == tuple(2 * r for r in H100_RATES["matmul"])
    # without it, the bf16 head and its weight's autocast cast
    bf16 = roofline.micro_step_items(roofline.track_config("cpu-tiny", **TINY), "triton", set(), tiles, gpus=1)
    assert _item(bf16, "head (").flops == 6 * N * d * V and not [i for i in bf16 if i.component == "head"]



def test_the_fp8_heads_loss_writes_its_gradient_with_our_kernels():
    """Hand-counted at N = 256 tokens, V = 128: with the FP8 head and --kernels=triton (kernels.head_loss) the
    forward reads the bf16 logits once (2 B each; targets 8 B, lse and loss 4 + 4 B a row; their mean 4 B a row,
    a second kernel) and the backward reads them again and writes G8 and G8^T (2 + 1 + 1 B; targets and lse 8 + 4
    B a row): 6 B a logit where the torch backend moves 2 + 2 + 2 (the loss) + 2 + 1 + 1 (dY's cast) = 10."""
    cfg = roofline.track_config("cpu-tiny", **TINY, fp8_head=True)
    tiles = {"fwd": (6, 128, 64, 2), "bwd": (6, 64, 128, 5)}
    N, V = 256, 128
    ours = roofline.micro_step_items(cfg, "triton", set(), tiles, gpus=1)
    loss = [i for i in ours if i.component == "loss"]
    assert [(i.bytes, i.kernels) for i in loss] == [(2 * N * V + 16 * N + 4 * N, 2), (4 * N * V + 12 * N, 1)]
    theirs = roofline.micro_step_items(cfg, "torch", set(), tiles, gpus=1)
    assert [(i.bytes, i.kernels) for i in theirs if i.component == "loss"] == [(6 * N * V, 2)]
    moved = {name: sum(i.bytes for i in items if i.component == "loss" or "dY" in i.name)
             for name, items in (("ours", ours), ("torch", theirs))}
    assert moved == {"ours": 6 * N * V + 32 * N, "torch": 10 * N * V}
    # the bf16 head (no FP8): Inductor's loss with either backend
    bf16 = roofline.micro_step_items(roofline.track_config("cpu-tiny", **TINY), "triton", set(), tiles, gpus=1)
    assert [(i.bytes, i.kernels) for i in bf16 if i.component == "loss"] == [(6 * N * V, 2)]


def test_relu2_in_the_matmul_epilogues_counts_only_post_written_and_pre_read_back():
    """f = 4 x 64 = 256, N = 256 tokens, one layer. Our kernels (kernels.mlp): forward post written beside pre (2f B a
    token), backward pre read beside the dY W_proj accumulator (2f B); no kernel of its own. PyTorch's: Inductor's
    kernel reads pre and writes post (4f B), backward reads d_post and pre and writes d_pre (6f B): three bf16
    tensors of width f, not the element-wise rule's twice the forward."""
    cfg = roofline.track_config("cpu-tiny", **TINY)
    tiles = {"fwd": (6, 128, 64, 2), "dkdv": (12, 32, 128, 4), "dq": (6, 128, 64, 3)}
    N, f = 256, 256
    ours = _item(roofline.micro_step_items(cfg, "triton", set(), tiles, gpus=1), "ReLU^2")
    assert ours.bytes == (2 + 2) * f * N and ours.kernels == 0
    assert roofline.item_seconds(ours) == pytest.approx(4 * f * N / H100_RATES["copy"][1])
    torch_ = _item(roofline.micro_step_items(cfg, "torch", set(), tiles, gpus=1), "ReLU^2")
    assert torch_.bytes == (2 * 2 + 3 * 2) * f * N == 10 * 256 * 256 and torch_.kernels == 2
    # forward only (bench_mlp's forward row): pre read, post written
    assert roofline.relu2_item(N, f, 1, "torch", backward=False).bytes == 4 * f * N
    # the matmuls are the same items on both backends: the fused epilogue adds bytes, not FLOPs
    for name in ("mlp fc", "mlp proj"):
        assert _item(roofline.micro_step_items(cfg, "triton", set(), tiles, gpus=1), name) == \
            _item(roofline.micro_step_items(cfg, "torch", set(), tiles, gpus=1), name)


def test_one_mlp_call_differs_between_backends_by_the_relu2_bytes_only():
    # fineweb's shapes, 49152 tokens, d = 768, f = 3072: the ReLU^2 bytes are far above a kernel's least time, so
    # Inductor's kernels cost 4f B a token forward (10f B with the backward) where the epilogues cost 2f (4f)
    M, d, f, copy = 49152, 768, 3072, H100_RATES["copy"][1]
    for backward, saved in [(False, 4 - 2), (True, 10 - 4)]:
        torch_ms = roofline.mlp_call_ms(M, d, f, backward=backward, kernels="torch")
        ours_ms = roofline.mlp_call_ms(M, d, f, backward=backward)
        assert torch_ms - ours_ms == pytest.approx(1e3 * saved * f * M / copy)
    # the forward's matmuls: 2 x 2 M d f FLOPs at the matmul rate (compute-bound at these shapes), post's 2f B
    assert roofline.mlp_call_ms(M, d, f, backward=False) == pytest.approx(
        1e3 * (4 * M * d * f / H100_RATES["matmul"][1] + 2 * f * M / copy))


def test_one_attention_call():
    # causal T = 4096, one head of 64: query block i (128 rows) visits 2 (i + 1) key tiles of 64, 1056 in all
    flops = 1056 * 2 * 2 * 128 * 64 * 64
    fwd = roofline.attention_call_ms(1, 4096, 1, 64, None, None, backward=False)
    assert fwd == pytest.approx(1e3 * flops / H100_RATES["attention_fwd"][1])  # compute-bound, above 4 us
    assert roofline.attention_call_ms(1, 4096, 1, 64, None, None, backward=True) > 2 * fwd


def test_one_memory_bound_call():
    # bench_norm's estimate of a fused norm: its bytes at the copy rate, or its kernels' least time
    rates = {k: v[1] for k, v in H100_RATES.items()}
    assert roofline.memory_call_ms(rates["copy"] * 1e-3, 2) == pytest.approx(1.0)
    assert roofline.memory_call_ms(1.0, 3) == pytest.approx(1e3 * 3 * rates["kernel_s"])


def test_an_item_takes_its_slowest_bound():
    rates = {k: v[1] for k, v in H100_RATES.items()}
    compute = roofline.Item("matmul", "x", flops=rates["matmul"] * 1e-3, bytes=rates["copy"] * 1e-4, rate="matmul")
    assert roofline.item_seconds(compute) == pytest.approx(1e-3)
    memory = roofline.Item("norm", "y", bytes=rates["copy"] * 2e-3)
    assert roofline.item_seconds(memory) == pytest.approx(2e-3)
    tiny = roofline.Item("attention", "z", bytes=1.0, kernels=10)
    assert roofline.item_seconds(tiny) == pytest.approx(10 * rates["kernel_s"])
    # pessimistic: the low rates and the longest kernel time
    assert roofline.item_seconds(tiny, 0) == pytest.approx(10 * H100_RATES["kernel_s"][2])


def test_step_is_accumulated_micro_steps_plus_optimizer_and_communication():
    cfg = roofline.track_config("cpu-tiny", **{**TINY, "grad_accum": 4})
    e = roofline.estimate(cfg, "triton", gpus=2, windows=Counter({64: 1}))
    t = e.table
    micro = t[~t.per_step].ms.sum()
    assert e.micro_ms[0] == pytest.approx(micro)
    optimizer, communication = t[t.per_step & ~t.communication].ms.sum(), t[t.communication].ms.sum()
    assert e.step_ms[0] == pytest.approx(4 * micro + optimizer + e.comm_exposed_ms)
    assert t.communication.any() and 0 < e.comm_exposed_ms <= communication  # some of it hidden, never more


def test_optimizer_and_communication_accounting_on_a_small_model():
    """optim.py on 2 GPUs: Adam's state and step on half of the embedding and head (2 x 128 x 64 = 16,384
    parameters), each gradient reduce-scattered in fp32, Adam's parameters all-gathered in fp32 (fp32 tables: the
    bf16 ones are test_bf16_embedding_tables_on_a_small_model's), Muon's updates in bf16; each collective moves
    bytes x (N - 1) / N."""
    cfg = roofline.track_config("cpu-tiny", **TINY)
    items = roofline.optimizer_items(cfg, gpus=2)
    adam, muon = 2 * 128 * 64, 64 * 192 + 64 * 64 + 2 * 64 * 256  # qkv + out (4 of 64 x 64), fc + proj
    assert _item(items, "Adam (fused) on 1/2").bytes == 28 * adam / 2
    assert _item(items, "Adam: reduce-scatter").bytes == 0.5 * 4 * adam
    assert _item(items, "Adam: all-gather").bytes == 0.5 * 4 * adam
    assert _item(items, "Muon: reduce-scatter").bytes == 0.5 * 4 * muon
    assert _item(items, "Muon: all-gather").bytes == 0.5 * 2 * muon
    one = roofline.optimizer_items(cfg, gpus=1)  # one GPU: Adam over everything, no collective
    assert _item(one, "Adam (fused) on 1/1").bytes == 28 * adam
    assert not [i for i in one if i.component == "communication"]


def test_the_optimizer_timeline_follows_the_trainers_order():
    """Counted by hand (ms): stack 0-1; on the wire Muon's reduce-scatter 1-3, Adam's 3-8; Muon's momentum 3-4 and
    Newton-Schulz 4-6 meanwhile; Muon's all-gather 8-9 (behind Adam's reduce-scatter); Adam's step 8-9 (after its
    reduce-scatter); Adam's all-gather 9-14; Muon's apply 9-10. The step ends at 14: 6 of compute, 8 exposed."""
    ms = {"Muon: gradients stacked": 1, "Muon: reduce-scatter fp32": 2, "Adam: reduce-scatter fp32": 5,
          "Muon: momentum": 1, "Muon: Newton-Schulz": 2, "Muon: all-gather": 1, "Adam (fused) on 1/8": 1,
          "Adam: all-gather": 5, "Muon: updates applied": 1}
    assert roofline.optimizer_timeline(ms) == 14
    compute = {k: v for k, v in ms.items() if "reduce-scatter" not in k and "all-gather" not in k}
    assert roofline.optimizer_timeline(compute) == 6  # one GPU: no collective, the compute back to back


def test_adams_reduce_scatter_waits_for_its_fp32_input():
    """bf16 tables: the cast to fp32 (compute 1-4) makes the reduce-scatter's input, so Adam's reduce-scatter runs
    4-9, not 3-8; then momentum 4-5, Newton-Schulz 5-7, Muon's all-gather 9-10, Adam's step 9-10, its all-gather
    10-15, Muon's apply 10-11: the step ends at 15."""
    ms = {"Muon: gradients stacked": 1, "Muon: reduce-scatter fp32": 2, "Adam: reduce-scatter fp32": 5,
          "Adam: bf16 gradients to fp32": 3, "Muon: momentum": 1, "Muon: Newton-Schulz": 2, "Muon: all-gather": 1,
          "Adam (fused) on 1/8": 1, "Adam: all-gather": 5, "Muon: updates applied": 1}
    assert roofline.optimizer_timeline(ms) == 15


def test_adams_all_gather_waits_for_the_masters_cast_back():
    """bf16 tables: the timeline of test_adams_reduce_scatter_waits_for_its_fp32_input with the masters' cast back:
    Adam steps 9-10, casts its masters into the tables 10-12 (Muon's apply waits behind it, 12-13), all-gathers
    them 12-17, not 10-15: the step ends at 17."""
    ms = {"Muon: gradients stacked": 1, "Muon: reduce-scatter fp32": 2, "Adam: reduce-scatter fp32": 5,
          "Adam: bf16 gradients to fp32": 3, "Muon: momentum": 1, "Muon: Newton-Schulz": 2, "Muon: all-gather": 1,
          "Adam (fused) on 1/8": 1, "Adam: fp32 masters to bf16": 2, "Adam: all-gather": 5,
          "Muon: updates applied": 1}
    assert roofline.optimizer_timeline(ms) == 17


def test_cli_ends_with_the_estimate_line(capsys):
    assert roofline.main(["--track", "cpu-tiny", "--gpus", "1"]) == 0
    last = capsys.readouterr().out.rstrip().splitlines()[-1]
    assert re.fullmatch(r"estimate: cpu-tiny micro-step \d+\.\d ms on H100 \(triton\)", last), last


def test_cli_takes_the_trainers_overrides(capsys):
    # the track's preset, then --key=value Config overrides: fineweb-124m's FP8 head and bf16 tables, or not
    assert roofline.main(["--track", "cpu-tiny", "--gpus", "1", "--fp8_head=true", "--embed_bf16", "true"]) == 0
    out = capsys.readouterr().out
    assert "head, FP8: Y = X8 W8^T" in out and "+ cast to bf16" in out
    assert roofline.main(["--track", "cpu-tiny", "--gpus", "1"]) == 0
    out = capsys.readouterr().out
    assert "head, FP8" not in out and "+ cast to bf16" not in out


@pytest.mark.parametrize("argv, message", [(["--assume", "bf16_weights,warp_drive"], "unknown option(s) warp_drive"),
                                           (["--track", "nope"], "unknown track 'nope'"),
                                           (["--gpus", "0"], "--gpus=0: need at least 1"),
                                           (["--fp8_head=maybe"], "--fp8_head=maybe: expected true/false"),
                                           (["--fp8head=false"], "unknown option --fp8head"),
                                           # what the trainer refuses, the roofline refuses: no estimate of a run
                                           # that cannot exist
                                           (["--num_steps=0"], "--num_steps=0: must be >= 1"),
                                           (["--model_dim=0"], "--model_dim=0: must be >= 1"),
                                           (["--gpus", "3"], "world size 3 does not divide the 8-GPU batch"),
                                           (["--num_layers=4"], "value_embeds=3: between 0 and num_layers/2"),
                                           (["--vocab_size=50257"], "vocab_size, batch_size x seq_len multiples of 16"),
                                           (["--gpus", "-3"], "--gpus=-3: need at least 1"),
                                           (["--doc-mean", "0"], "--doc-mean=0.0: need a finite number"),
                                           (["--doc-mean", "nan"], "--doc-mean=nan: need a finite number"),
                                           (["--doc-mean", "inf"], "--doc-mean=inf: need a finite number"),
                                           (["--window", "0"], "--window=0: need at least 1 token"),
                                           (["--window", "-128"], "--window=-128: need at least 1 token")])
def test_cli_refuses_bad_input_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        roofline.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err and "Traceback" not in err
