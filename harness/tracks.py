"""The tracks: each a preset of train_gpt.py's Config fields, and the target val loss a set of runs must beat.

Plain data, no torch: the trainer applies a preset before the command line's overrides, and the harness
reads a track's target (`track_target`) without importing the trainer.
"""
from __future__ import annotations

FINEWEB_TARGET = 3.28  # the NanoGPT speedrun's rule: val loss on the first 10,485,760 tokens of fineweb_val_000000.bin

# The small tracks' model: attention with head_dim^-0.5 and one window in every layer, v as it is where there is no
# value embedding, fp32 embedding tables, a bf16 (GPU) or fp32 (CPU) head: none of fineweb-124m's record elements
# that Config's defaults turn on (README.md, "The fineweb-124m recipe").
PLAIN_ATTENTION = dict(attn_scale=0.0, layer_attention="", v_lambda=False, embed_bf16=False, fp8_head=False)

TRACKS: dict[str, dict] = {
    # 8xH100 (or fewer by accumulation) on FineWeb, the speedrun's rule (FINEWEB_TARGET); uncalibrated: no GPU runs
    # yet. Config's defaults: modded-nanogpt's 1770-step records of early 2025 (2025-01-26_BatchSize, timed as
    # 2025-02-01_RuleTweak; 8 x 48K tokens a step), in README.md's "The fineweb-124m recipe".
    "fineweb-124m": dict(device="cuda", target_val_loss=FINEWEB_TARGET),
    # One GPU on the embedded Shakespeare corpus (2.67M train tokens). Uncalibrated: the target is a guess
    # from the cpu-tiny curves; adjust it after the first GPU runs.
    "shakespeare-1gpu": dict(
        device="cuda", train_files="data/shakespeare/shakespeare_train_*.bin", train_epochs=8,
        val_files="data/shakespeare/shakespeare_val_000000.bin", val_tokens=262_144, val_every=50,
        seq_len=16 * 1024, val_seq_len=16 * 1024, batch_size=1, grad_accum=1, num_steps=1000,
        target_val_loss=4.8, num_layers=8, model_dim=512, num_heads=4, head_dim=128, value_embeds=2,
        unet_skips=4, window_max=1024, warmup_steps=5, **PLAIN_ATTENTION, window_min=128,
    ),
    # Two CPU cores, embedded corpus, torch kernels, calibrated for val loss per second of train time on this
    # kit's 2-core CPU machine (benchmarks/NOTES.md, "cpu-tiny calibration": seed 0's val curve every 5 steps
    # per candidate; each knob's cost per step from variants stepped in turn in one process):
    # - learning rates: the speedrun's (Muon 0.05, Adam 0.6 / 0.008), below the halved ones' curve at every
    #   step; 1.5x them is worse (5.87 vs 5.80 at step 45).
    # - value embeddings: one table costs 0.996x the CPU time per step and ends 0.047 lower at step 80; two
    #   tables end 0.024 lower still (80 steps, one thread: 5.4411 against 5.4649).
    # - soft-cap off: tanh over the 2K x 50304 logits makes a CPU step 1.8x dearer.
    # - 75 steps: below 5.6 from step 65 (5.5928; the 80-step schedule: 5.6058 there; the old 100-step recipe:
    #   from step 85), ending at 5.479.
    "cpu-tiny": dict(
        device="cpu", kernels="torch", train_files="data/shakespeare/shakespeare_train_*.bin",
        val_files="data/shakespeare/shakespeare_val_000000.bin", val_tokens=32_768, val_every=25,
        seq_len=128, val_seq_len=128, batch_size=16, grad_accum=1, num_steps=75, target_val_loss=5.6,
        num_layers=4, model_dim=128, num_heads=4, head_dim=32, value_embeds=2, unet_skips=2, logit_softcap=0.0,
        adam_embed_lr=0.6, adam_head_lr=0.008, muon_lr=0.05, window_min=32, window_max=128, window_block=32,
        warmup_steps=2, **PLAIN_ATTENTION,
    ),
}


def track_target(track: str) -> float | None:
    """The target val loss of a track, None for a track this kit does not define."""
    return TRACKS[track]["target_val_loss"] if track in TRACKS else None


def default_target(track: str | None) -> float:
    """The target of a run that states none: its track's, else the FineWeb speedrun's."""
    target = track_target(track) if track else None
    return FINEWEB_TARGET if target is None else target
