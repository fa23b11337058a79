"""benchmarks/roofline.py's accounting on a model small enough to count by hand: the tiles the attention kernels
visit, the FLOPs and bytes of a matmul, of attention, of a norm and of the loss, the time rule, the CLI's last
line and its one-line refusals."""
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
    # are written in bf16 (2 B), forward, and twice that backward
    assert not [i for i in items if i.name.startswith("cast to bf16")]
    assert _item(items, "token embedding gather").bytes == (4 + 2) * 64 * 3 * N
    assert _item(items, "autocast casts").bytes == 12 * (64 * 192 + 64 * 64 + 2 * 64 * 256 + 64 * 128)
    # bf16 weights: no autocast casts of the matrices, the gather reads 2 B an element
    bf16 = roofline.micro_step_items(cfg, "triton", {"bf16_weights"}, tiles, gpus=1)
    assert not [i for i in bf16 if i.name.startswith("autocast casts")]
    assert _item(bf16, "token embedding gather").bytes == (2 + 2) * 64 * 3 * N


def test_relu2_in_the_matmul_epilogues_counts_only_post_written_and_pre_read_back():
    """f = 4 x 64 = 256, N = 256 tokens, one layer. Our kernels (kernels.mlp): forward post written beside pre (2f B a
    token), backward pre read beside the dY W_proj accumulator (2f B); no kernel of its own. PyTorch's: Inductor's
    kernel reads pre and writes post (4f B), backward reads d_post and pre and writes d_pre (8f B)."""
    cfg = roofline.track_config("cpu-tiny", **TINY)
    tiles = {"fwd": (6, 128, 64, 2), "dkdv": (12, 32, 128, 4), "dq": (6, 128, 64, 3)}
    N, f = 256, 256
    ours = _item(roofline.micro_step_items(cfg, "triton", set(), tiles, gpus=1), "ReLU^2")
    assert ours.bytes == (2 + 2) * f * N and ours.kernels == 0
    assert roofline.item_seconds(ours) == pytest.approx(4 * f * N / H100_RATES["copy"][1])
    torch_ = _item(roofline.micro_step_items(cfg, "torch", set(), tiles, gpus=1), "ReLU^2")
    assert torch_.bytes == (4 + 8) * f * N and torch_.kernels == 2
    # the matmuls are the same items on both backends: the fused epilogue adds bytes, not FLOPs
    for name in ("mlp fc", "mlp proj"):
        assert _item(roofline.micro_step_items(cfg, "triton", set(), tiles, gpus=1), name) == \
            _item(roofline.micro_step_items(cfg, "torch", set(), tiles, gpus=1), name)


def test_one_mlp_call_differs_between_backends_by_the_relu2_bytes_only():
    # fineweb's shapes, 49152 tokens, d = 768, f = 3072: the ReLU^2 bytes are far above a kernel's least time, so
    # Inductor's kernel costs 4f B a token forward (12f B with the backward) where the epilogues cost 2f (4f)
    M, d, f, copy = 49152, 768, 3072, H100_RATES["copy"][1]
    for backward, saved in [(False, 4 - 2), (True, 12 - 4)]:
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
    parameters), each gradient reduce-scattered in fp32, Adam's parameters all-gathered in fp32 (bf16 with
    bf16_weights), Muon's updates in bf16; each collective moves bytes x (N - 1) / N."""
    cfg = roofline.track_config("cpu-tiny", **TINY)
    items = roofline.optimizer_items(cfg, set(), gpus=2)
    adam, muon = 2 * 128 * 64, 64 * 192 + 64 * 64 + 2 * 64 * 256  # qkv + out (4 of 64 x 64), fc + proj
    assert _item(items, "Adam (fused) on 1/2").bytes == 28 * adam / 2
    assert _item(items, "Adam: reduce-scatter").bytes == 0.5 * 4 * adam
    assert _item(items, "Adam: all-gather").bytes == 0.5 * 4 * adam
    assert _item(items, "Muon: reduce-scatter").bytes == 0.5 * 4 * muon
    assert _item(items, "Muon: all-gather").bytes == 0.5 * 2 * muon
    bf16 = roofline.optimizer_items(cfg, {"bf16_weights"}, gpus=2)
    assert _item(bf16, "Adam: all-gather").bytes == 0.5 * 2 * adam
    assert _item(bf16, "Adam: bf16 gradients").bytes == 6 * adam + 6 * adam / 2
    one = roofline.optimizer_items(cfg, set(), gpus=1)  # one GPU: Adam over everything, no collective
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


def test_cli_ends_with_the_estimate_line(capsys):
    assert roofline.main(["--track", "cpu-tiny", "--gpus", "1"]) == 0
    last = capsys.readouterr().out.rstrip().splitlines()[-1]
    assert re.fullmatch(r"estimate: cpu-tiny micro-step \d+\.\d ms on H100 \(triton\)", last), last


@pytest.mark.parametrize("argv, message", [(["--assume", "bf16_weights,warp_drive"], "unknown option(s) warp_drive"),
                                           (["--track", "nope"], "unknown track 'nope'"),
                                           (["--gpus", "0"], "--gpus=0: need at least 1")])
def test_cli_refuses_bad_input_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        roofline.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err and "Traceback" not in err
