"""benchmarks/bench_model.py's code paths on a micro model on the CPU: the benchmark is for GPUs, but a
GPU session is too short to discover there that it no longer matches train_gpt.py's API."""
import math

import torch

from benchmarks.bench_model import bench_ours, bench_reference, schedule_windows

MICRO = ("--num_layers=2", "--model_dim=64", "--num_heads=2", "--head_dim=32", "--value_embeds=1", "--unet_skips=1",
         "--seq_len=128", "--window_min=32", "--window_max=64", "--window_block=32", "--layer_attention=LS",
         "--fp8_head=false")


def test_ours_times_a_training_step_and_muon_alone():
    row = bench_ours("torch", 64, steps=2, warmup=1, peak=1e12, device=torch.device("cpu"), overrides=MICRO,
                     compile=False)
    assert row["impl"] == "torch" and row["case"] == "fineweb-124m B=1 T=128 window=64"
    assert row["ms"] > 0 and row["muon_ms"] > 0 and math.isclose(row["muon_frac"], row["muon_ms"] / row["ms"])
    assert math.isclose(row["tokens_per_s"], 128 / (row["ms"] / 1000)) and 0 < row["mfu"] < 1
    assert "newton_schulz=kernels.newton_schulz.newton_schulz_ref" in row["ops"]
    assert row["est_ms"] > 0  # the roofline's estimate of the same step, beside the measurement
    assert row["compile_s"] > 0 and row["peak_mem_gib"] is None  # no CUDA allocator to ask on a CPU


def test_reference_times_nanogpt():
    row = bench_reference(steps=2, warmup=1, peak=None, device=torch.device("cpu"), B=2, T=64, layers=1, dim=64,
                          heads=2, compile=False)
    assert row["impl"] == "nanogpt" and row["ms"] > 0 and row["mfu"] is None
    assert math.isclose(row["tokens_per_s"], 2 * 64 / (row["ms"] / 1000))


def test_windows_are_named_points_of_the_schedule_or_token_counts():
    import train_gpt as T

    cfg = T.parse_config(["--track=fineweb-124m"])  # ceil(1728 x / 128) blocks of 128 over 1770 steps
    assert schedule_windows("first,mid,last", cfg) == [128, 896, 1792]
    assert schedule_windows("256", cfg) == [256]
