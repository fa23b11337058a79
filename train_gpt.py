"""Train a GPT to a target validation loss as fast as possible: the NanoGPT speedrun's trainer.

    torchrun --standalone --nproc_per_node=8 train_gpt.py          # fineweb-124m: 8 GPUs, target 3.28
    torchrun --standalone --nproc_per_node=1 train_gpt.py          # the same math on 1 GPU (8 accumulation steps)
    python train_gpt.py --track=cpu-tiny                           # about two minutes on two CPU cores
    python train_gpt.py --track=cpu-tiny --seed=3 --num_steps=50 --muon_lr=0.04

Any Config field is an override, `--key=value`, parsed to the field's type and checked against its range; unknown
keys are refused. `--help` lists the fields; `--print_config` prints the resolved config (WORLD_SIZE from the
environment) as one JSON line and exits, training nothing. Sections, in order: config, distributed setup, data,
model, optimizers, schedule, step and warm-up, timed loop, main. Importing this file only defines them (tests import
the parts): the process group, the kernels and the environment are touched only by main().

Timing follows the speedrun: compile and warm-up are untimed and the model and optimizer state is reset after them;
the clock stops (after a device synchronize) around every validation; the run goes its whole schedule, and its time
is the train time of its final validation (the loss rule over a set of runs, not each run, certifies the target).
`--stop_at_target=true` stops at the first validation at or below the target instead: for exploring only, since
optional stopping biases both the time and the loss (harness.submit refuses such runs).
Exit status: 0 ok (target reached or not), 1 error, 2 bad command line, 3 diverged, 128 + the signal's number
interrupted: 130 by Ctrl-C, 143 by SIGTERM (`kill`, `timeout`), 129 by SIGHUP (neither under torchrun).
"""
from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import hashlib
import inspect
import json
import math
import os
import re
import signal
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from harness.hardware import git_state, hardware_info, nvidia_smi, peak_flops, software_versions
from harness.overrides import ConfigError, parse_overrides
from harness.runlog import EVENTS_FILE, RunWriter
from harness.shards import BOS_ID, DataError, TokenLoader, resolve_files, validate_shards
from harness.snapshot import snapshot_code
from harness.tracks import FINEWEB_TARGET, TRACKS
from optim import GradSync, Muon, ShardedAdam

# ----------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class Config:
    """Every hyperparameter of a run. The defaults are the fineweb-124m track."""

    # run
    track: str = "fineweb-124m"  # the preset in TRACKS applied before the command line's overrides
    seed: int = 0  # seeds the model's initialisation (identical on every rank)
    kernels: str = "triton"  # "triton": our kernels/ ; "torch": PyTorch reference ops (FlexAttention or SDPA)
    device: str = "auto"  # "auto" (CUDA if present), "cuda" or "cpu"
    compile: bool | None = None  # torch.compile the model; None (or "auto"): on for CUDA, off for CPU
    run_dir: str = ""  # where train.log, events.jsonl and code/ go; "" -> runs/<timestamp>-<track>-s<seed>
    # data
    train_files: str = "data/fineweb10B/fineweb_train_*.bin"  # glob of training shards (llm.c format)
    train_epochs: int = 1  # passes over the training shards the run may take
    val_files: str = "data/fineweb10B/fineweb_val_000000.bin"  # validation shard(s), read from their start
    val_tokens: int = 10_485_760  # validate on exactly this many tokens (the speedrun's fixed 10M)
    val_every: int = 125  # validate every this many steps, and always at step 0 and at the step limit
    seq_len: int = 48 * 1024  # tokens per training sequence; documents are packed and masked apart
    val_seq_len: int = 4 * 64 * 1024  # tokens per validation sequence
    batch_size: int = 1  # sequences per micro-step per process
    grad_accum: int = 0  # micro-steps per step; 0 -> 8 // world_size, so any 1/2/4/8 processes see the 8-GPU batch
    # schedule (laid out over num_steps) and target
    num_steps: int = 1770  # steps a run takes; modded-nanogpt's 2025-01/02 records (48K tokens/GPU, 3.28 in ~3 min)
    target_val_loss: float = FINEWEB_TARGET  # the val loss a set of runs must beat (reported; stops a run only with stop_at_target)
    stop_at_target: bool = False  # exploratory: stop at the first validation <= target (optional stopping; not a record)
    # model
    vocab_size: int = 50304  # GPT-2's 50257 padded to a multiple of 128 (Karpathy; @Grad62304977)
    num_layers: int = 12  # transformer blocks (L)
    model_dim: int = 768  # residual stream width
    num_heads: int = 6  # attention heads per block
    head_dim: int = 128  # width of each head (num_heads * head_dim need not equal model_dim)
    mlp_ratio: int = 4  # MLP hidden width = mlp_ratio * model_dim
    value_embeds: int = 3  # value-embedding tables k: table j feeds layers j and L-k+j (0 turns them off)
    unet_skips: int = 6  # U-net skips: layer i's output joins before layer L-1-i, for i < unet_skips (<= L/2)
    logit_softcap: float = 15.0  # logits -> c * tanh(logits / c); 0 turns the cap off
    attn_scale: float = 0.12  # softmax scale of q.k (@leloykun); 0: head_dim^-0.5
    layer_attention: str = "LSSSLSS-SSSL"  # per layer: L long window, S short (half), - none; "": L in every layer
    v_lambda: bool = True  # layers without a value embedding scale v by a learned scalar, init 0.5 (@YouJiacheng)
    embed_bf16: bool = True  # embedding tables stored in bf16 (Adam steps them through fp32 masters)
    fp8_head: bool = True  # the head's matmuls in FP8 while training (kernels/fp8.py): CUDA capability >= 8.9
    fp8_head_scales: str = "2,512,524288"  # the FP8 head's x, w and gradient scales (2, 2^9, 2^19)
    # optimizers
    muon_lr: float = 0.05  # Muon, for the hidden matrices
    muon_momentum: float = 0.95  # Nesterov momentum after the warm-up
    muon_momentum_warmup: int = 300  # steps over which Muon's momentum ramps from 0.85 (0: no ramp)
    muon_weight_decay: float = 0.0  # decoupled: p *= 1 - lr * wd before the update
    ns_steps: int = 5  # Newton-Schulz iterations per Muon step
    adam_embed_lr: float = 0.6  # Adam, token and value embeddings
    adam_head_lr: float = 0.008  # Adam, output head
    adam_scalar_lr: float = 0.04  # Adam, residual/skip/value mixing scalars
    cooldown_frac: float = 0.4  # the last fraction of num_steps decays the learning rates linearly to 0.1x
    # attention windows: the long one grows linearly from window_min to window_max, rounded up to whole blocks
    window_min: int = 0  # tokens a query sees at step 0 (itself included), before rounding up
    window_max: int = 1728  # ... at the step limit (modded-nanogpt: ceil(1728 x / 128) blocks, 128 -> 1792 tokens)
    window_block: int = 128  # window sizes are multiples of this (FlexAttention's block size), at least one
    warmup_steps: int = 10  # untimed steps on random tokens before the clock starts (state reset after)


# Each numeric field's closed range (None: no bound); a float must also be finite.
LIMITS: dict[str, tuple[float | None, float | None]] = {
    **dict.fromkeys(("train_epochs", "val_tokens", "val_every", "seq_len", "val_seq_len", "batch_size", "num_steps",
                     "vocab_size", "num_layers", "model_dim", "num_heads", "mlp_ratio", "ns_steps", "window_max",
                     "window_block"), (1, None)),
    "seed": (0, 2**64 - 1),  # torch.manual_seed's range
    **dict.fromkeys(("grad_accum", "value_embeds", "unet_skips", "muon_momentum_warmup", "warmup_steps",
                     "target_val_loss", "logit_softcap", "muon_lr", "muon_weight_decay", "adam_embed_lr",
                     "adam_head_lr", "adam_scalar_lr", "window_min", "attn_scale"), (0, None)),
    "head_dim": (4, None), "muon_momentum": (0, 1), "cooldown_frac": (0, 1),
}


def parse_config(argv: list[str]) -> Config:
    """Config from `--key=value` arguments (harness/overrides.py): the --track preset first, then the overrides."""
    overrides = parse_overrides(argv, Config)
    track = overrides.pop("track", Config.track)
    if track not in TRACKS:
        raise ConfigError(f"unknown track {track!r} (tracks: {', '.join(TRACKS)})")
    return Config(track=track, **{**TRACKS[track], **overrides})


def check_ranges(cfg: Config) -> None:
    """A ConfigError naming the first numeric field outside its LIMITS."""
    for name, (lo, hi) in LIMITS.items():
        value = getattr(cfg, name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--{name}={value}: must be finite")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ConfigError(f"--{name}={value}: must be " + (f">= {lo}" if hi is None else f"between {lo} and {hi}"))


def list_field(cfg: Config, name: str, kind: type = int) -> list:
    """A comma-separated field's values ("" is none); a ConfigError for an entry that is not a `kind`."""
    try:
        return [kind(item) for item in getattr(cfg, name).split(",") if item.strip()]
    except ValueError:
        raise ConfigError(f"--{name}={getattr(cfg, name)}: expected comma-separated {kind.__name__}s") from None


def layer_kinds(cfg: Config) -> str:
    """layer_attention for each layer: L (long window), S (short window) or - (no attention)."""
    return cfg.layer_attention or "L" * cfg.num_layers


def value_embed_tables(cfg: Config) -> list[int | None]:
    """The value-embedding table of each layer: 0..k-1 on the first k layers and again on the last k (@YouJiacheng)."""
    L, k = cfg.num_layers, cfg.value_embeds
    return [i if i < k else i - (L - k) if i >= L - k else None for i in range(L)]


def resolve_config(cfg: Config, world_size: int, device: torch.device, fp8_gpu: bool | None = None) -> Config:
    """Fill the automatic fields (grad_accum, compile, run_dir) and check what can be checked up front. fp8_gpu:
    whether the GPU has FP8 tensor cores (None: ask the device; the roofline, an H100's, says True)."""
    check_ranges(cfg)
    if cfg.grad_accum == 0 and 8 % world_size:
        raise ConfigError(f"world size {world_size} does not divide the 8-GPU batch of 8 micro-batches "
                          "(use 1, 2, 4 or 8 processes, or set --grad_accum)")
    run_dir = cfg.run_dir or os.path.join("runs", f"{dt.datetime.now():%Y%m%d-%H%M%S}-{cfg.track}-s{cfg.seed}")
    cfg = dataclasses.replace(cfg, grad_accum=cfg.grad_accum or 8 // world_size, run_dir=run_dir,
                              compile=device.type == "cuda" if cfg.compile is None else cfg.compile)
    L, cuda, scales = cfg.num_layers, device.type == "cuda", list_field(cfg, "fp8_head_scales", float)
    flex = cuda and cfg.kernels == "torch"
    fp8 = fp8_gpu if fp8_gpu is not None else cuda and torch.cuda.get_device_capability(device) >= (8, 9)  # Ada+
    checks = [
        (cfg.kernels in ("torch", "triton"), f"--kernels={cfg.kernels}: expected torch or triton"),
        (not (problem := run_dir_problem(run_dir)), f"--run_dir={run_dir}: {problem}"),
        (2 * cfg.value_embeds <= L, f"value_embeds={cfg.value_embeds}: between 0 and num_layers/2 = {L // 2}"),
        (cfg.unet_skips <= L // 2, f"unet_skips={cfg.unet_skips}: between 0 and num_layers/2 = {L // 2}"),
        (cfg.head_dim % 4 == 0, f"head_dim={cfg.head_dim}: must be a multiple of 4 (rotary)"),
        (cfg.window_min <= cfg.window_max, f"window_min={cfg.window_min} > window_max={cfg.window_max}"),
        (cfg.val_tokens % (world_size * cfg.batch_size * cfg.val_seq_len) == 0,
         f"val_tokens={cfg.val_tokens} is not a multiple of world_size x batch_size x val_seq_len = "
         f"{world_size * cfg.batch_size * cfg.val_seq_len}"),
        (not flex or cfg.batch_size * cfg.seq_len % 128 == cfg.batch_size * cfg.val_seq_len % 128 == 0,
         "FlexAttention (--kernels=torch on CUDA) needs batch_size x seq_len and x val_seq_len multiples of 128"),
        (len(layer_kinds(cfg)) == L and set(layer_kinds(cfg)) <= set("LS-"),
         f"--layer_attention={cfg.layer_attention}: expected L, S or - for each of the {L} layers"),
        (len(scales) == 3 and all(0 < x < math.inf for x in scales),
         f"--fp8_head_scales={cfg.fp8_head_scales}: expected three positive numbers (x, w, gradient)"),
        (not cfg.fp8_head or fp8 and cfg.model_dim % 16 == cfg.vocab_size % 16 == cfg.batch_size * cfg.seq_len % 16
         == 0, "--fp8_head=true needs a GPU with FP8 (CUDA capability >= 8.9; this run has "
         f"{torch.cuda.get_device_name(device) if cuda else 'a CPU'}) and model_dim, vocab_size, batch_size x seq_len "
         "multiples of 16: add --fp8_head=false"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    return cfg


def run_dir_problem(run_dir: str) -> str | None:
    """Why run_dir cannot take a run's logs, or None: it is no folder (a file, a link that cannot be followed, a
    file on its path), or it holds a run's events.jsonl already (two runs' events in one file read as one run)."""
    try:
        if not os.path.isdir(run_dir):
            os.stat(run_dir)
            return "exists and is not a folder"
    except FileNotFoundError:
        return "a link to nothing" if os.path.lexists(run_dir) else None
    except OSError as exc:  # a link loop, a file where a folder of the path should be
        return exc.strerror or str(exc)
    used = os.path.lexists(os.path.join(run_dir, EVENTS_FILE))
    return f"holds another run's {EVENTS_FILE}: give each run a folder of its own" if used else None


def config_help() -> str:
    """`--help`: the fields with their types, defaults and comments, read from Config's source."""
    lines = [__doc__.split("\n\n")[1].strip("\n"), "", f"tracks: {', '.join(TRACKS)} (a track presets fields first)"]
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    for line in inspect.getsource(Config).splitlines()[3:]:
        if field_line := re.match(r"\s+(\w+): (.+?) = .*?  # (.*)$", line):
            name, kind, comment = field_line.groups()
            lines.append(f"  --{name}={defaults[name]}  ({kind})  {comment}")
        elif section := re.match(r"\s+# (.*)$", line):
            lines.append(f"{section.group(1)}:")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Distributed setup (torchrun's RANK / LOCAL_RANK / WORLD_SIZE; a plain `python` run is one process)


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_environ(cls) -> DistEnv:
        """torchrun's variables; a ConfigError where they are not integers or not a rank of the world."""
        names = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
        try:
            env = cls(*(int(os.environ.get(name, int(name == "WORLD_SIZE"))) for name in names))
        except ValueError:
            given = ", ".join(f"{name}={os.environ[name]}" for name in names if name in os.environ)
            raise ConfigError(f"{given}: expected integers (launch with torchrun)") from None
        if not 0 <= env.local_rank <= env.rank < env.world_size:
            raise ConfigError(f"RANK={env.rank}, LOCAL_RANK={env.local_rank}, WORLD_SIZE={env.world_size}: "
                              "expected 0 <= LOCAL_RANK <= RANK < WORLD_SIZE (launch with torchrun)")
        return env

    @property
    def master(self) -> bool:
        return self.rank == 0


def pick_device(cfg: Config, env: DistEnv) -> torch.device:
    kind = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if kind not in ("cuda", "cpu"):
        raise ConfigError(f"--device={cfg.device}: expected auto, cuda or cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"track {cfg.track} needs a CUDA GPU and none is visible "
                          "(add --device=cpu to run it on the CPU anyway)")
    return torch.device("cuda", env.local_rank) if kind == "cuda" else torch.device("cpu")


def init_distributed(env: DistEnv, device: torch.device) -> None:
    """NCCL between GPUs, gloo between CPU processes; multi-node is torchrun's business (--nnodes/--rdzv). A
    ConfigError for several processes without the rendezvous address torchrun sets (MASTER_ADDR, MASTER_PORT)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    if env.world_size > 1 and not (os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT")):
        raise ConfigError(f"WORLD_SIZE={env.world_size} without MASTER_ADDR and MASTER_PORT: launch with torchrun")
    if env.world_size > 1:
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)


# ----------------------------------------------------------------------------------------------
# Data (harness/shards.py: llm.c's shard format; documents start with BOS_ID)


def check_data(cfg: Config, env: DistEnv) -> None:
    """DataError unless every shard is valid with ids below vocab_size (read once, here, before the clock), none
    both a training and a validation shard (a glob like fineweb_*.bin), and they hold enough for the run."""
    train, val = validate_shards(cfg.train_files, cfg.vocab_size), validate_shards(cfg.val_files, cfg.vocab_size)
    if both := sorted({os.path.realpath(p) for p in train} & {os.path.realpath(p) for p in val}):
        raise DataError(f"{both[0]}: both a training and a validation shard (--train_files={cfg.train_files} "
                        f"matches a --val_files={cfg.val_files} shard): the val loss would be of trained tokens")
    make_train_loader(cfg, env).check_available(cfg.num_steps * cfg.grad_accum)
    make_val_loader(cfg, env)


def make_train_loader(cfg: Config, env: DistEnv) -> TokenLoader:
    """This rank's slice of the global stream of training sequences."""
    return TokenLoader(cfg.train_files, seq_len=cfg.seq_len, batch_size=cfg.batch_size, rank=env.rank,
                       world_size=env.world_size, epochs=cfg.train_epochs)


def make_val_loader(cfg: Config, env: DistEnv) -> tuple[TokenLoader, int]:
    """A fresh loader over the first val_tokens validation tokens, and the number of batches this rank reads."""
    loader = TokenLoader(cfg.val_files, seq_len=cfg.val_seq_len, batch_size=cfg.batch_size, rank=env.rank,
                         world_size=env.world_size)
    batches = cfg.val_tokens // (env.world_size * cfg.batch_size * cfg.val_seq_len)
    loader.check_available(batches)
    return loader, batches


def document_starts(inputs: Tensor) -> Tensor:
    """(B, T) bool: True where a document starts, at every <|endoftext|> and at every row start."""
    starts = inputs == BOS_ID
    starts[:, 0] = True  # a row is its own context: nothing before it is visible
    return starts


def to_device(batch: tuple[Tensor, Tensor], device: torch.device) -> tuple[Tensor, Tensor]:
    """Fresh copies with (T, 1) strides (pinned and sent asynchronously to a GPU), whatever the source: torch.compile
    guards on strides (a loader's (1, T) slice of a (1, T + 1) row keeps stride T + 1) and on aliasing (the
    warm-up's inputs are its targets), so the warm-up's graphs would not fit the timed loop's batches."""
    pin = device.type == "cuda"
    batch = tuple(torch.empty(t.shape, dtype=t.dtype, pin_memory=pin).copy_(t) for t in batch)
    return tuple(t.to(device, non_blocking=True) for t in batch) if pin else batch


# ----------------------------------------------------------------------------------------------
# Model


@dataclass
class Ops:
    """The ops a backend provides. The model and Muon call only these, so `--kernels` swaps them from outside:
    "triton" is kernels/, "torch" PyTorch's attention (FlexAttention on CUDA, SDPA with a dense mask on a CPU)
    and each kernel file's reference for the rest."""
    rms_norm: Callable[[Tensor], Tensor]  # (..., D) -> (..., D), no learned weight
    add_rms_norm: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]  # x, r (..., D) -> x + r, rms_norm(x + r)
    mix_rms_norm: Callable  # x, r or None, x0 (..., D), λ (2,) -> s = λ0 (x + r) + λ1 x0, rms_norm(s)
    rms_norm_rotary: Callable  # x (B, T, H, D), cos, sin (>= T, D/2) -> rotary(rms_norm(x)): QK-norm + rotary
    attention_mask: Callable[[Tensor, list[int]], list]  # (document starts (B, T) bool, windows) -> a mask per window
    attention: Callable[..., Tensor]  # q, k, v (B, T, H, D), mask, softmax scale (None: D^-0.5) -> (B, T, H, D)
    fp8_head_loss: Callable[..., Tensor]  # x (N, d), w (V, d), targets (N,), softcap, x_s, w_s, grad_s -> mean loss
    head_loss: Callable[[Tensor, Tensor, float], Tensor]  # logits (N, V), targets (N,), softcap -> mean loss in fp32
    relu2_mlp: Callable[[Tensor, Tensor, Tensor], Tensor]  # x (..., d), W_fc (f, d), W_proj (d, f) -> (..., d)
    newton_schulz: Callable[[Tensor, int], Tensor]  # (G (N, M, K), steps) -> ~orthogonalised G, same shape
    sources: dict[str, str]  # op -> where it comes from, for the log


def make_ops(kernels: str, device: torch.device) -> Ops:
    """The backend's ops. kernels/ is imported here, not at the top: @triton.jit reads TRITON_INTERPRET when a kernel
    file is imported, and main() sets it first for a CPU run (imported without it, each op refuses CPU tensors in one
    line: kernels.check_launchable). A kernel file that fails to import is an error."""
    try:
        from kernels import attention, head_loss, mlp, newton_schulz, norm
    except ImportError as exc:
        raise ConfigError(f"--kernels={kernels}: kernels/ does not import ({type(exc).__name__}: {exc})") from None
    fused = ("add_rms_norm", "mix_rms_norm", "rms_norm_rotary")  # kernels.norm's fused ops, each beside `<op>_ref`
    loss_source = "kernels.head_loss.softcap_cross_entropy"  # the bf16 head's loss, one for both backends
    if kernels == "triton":
        def masks(starts, windows):  # the documents' bounds built once for every window
            cu_seqlens, _, bounds = attention.packed_cu_seqlens(starts, windows[0])
            return [(cu_seqlens, attention.window_tensor(w), bounds) for w in windows]

        sources = dict(attention="kernels.attention.flash_attention", rms_norm="kernels.norm.rms_norm",
                       newton_schulz="kernels.newton_schulz.newton_schulz",
                       **{op: f"kernels.norm.{op}" for op in fused}, relu2_mlp="kernels.mlp.relu2_mlp",
                       fp8_head_loss="kernels.head_loss.fp8_head_loss", head_loss=loss_source)
        return Ops(norm.rms_norm, norm.add_rms_norm, norm.mix_rms_norm, norm.rms_norm_rotary, masks,
                   attention.packed_flash_attention, head_loss.fp8_head_loss, head_loss.softcap_cross_entropy,
                   mlp.relu2_mlp, newton_schulz.newton_schulz, sources)
    cuda, flex = device.type == "cuda", [attention.FlexMasks() for _ in range(2)]  # a mask's buffers per window
    masks = (lambda starts, windows: [f(starts, w) for f, w in zip(flex, windows)]) if cuda else \
        (lambda starts, windows: [attention.dense_mask(starts, w) for w in windows])  # FlexAttention or dense SDPA
    attend = attention.make_flex_attention() if cuda else attention.sdpa_attention
    refs = dict(attention="torch FlexAttention" if cuda else "torch SDPA with a dense mask",
                rms_norm="kernels.norm.rms_norm_ref", newton_schulz="kernels.newton_schulz.newton_schulz_ref",
                **{op: f"kernels.norm.{op}_ref" for op in fused}, fp8_head_loss="kernels.head_loss.fp8_head_loss_ref",
                relu2_mlp="kernels.mlp.relu2_mlp_ref", head_loss=loss_source)
    return Ops(norm.rms_norm_ref, norm.add_rms_norm_ref, norm.mix_rms_norm_ref, norm.rms_norm_rotary_ref, masks,
               attend, head_loss.fp8_head_loss_ref, head_loss.softcap_cross_entropy, mlp.relu2_mlp_ref,
               newton_schulz.newton_schulz_ref, refs)


def init_linear_(weight: Tensor) -> Tensor:
    """Uniform with std 0.5 / sqrt(fan_in) (improved init scale by @YouJiacheng, modded-nanogpt)."""
    bound = 3**0.5 * 0.5 * weight.size(-1) ** -0.5
    return nn.init.uniform_(weight, -bound, bound)


class Rotary(nn.Module):
    """The tables of rotary position embeddings (Su et al. 2021), half-truncated with base 1024 (@YouJiacheng):
    head_dim/4 frequencies rotate half of the dims, the other half carry no position (frequency 0). The rotation
    is `ops.rms_norm_rotary`'s (kernels.norm.rotary_ref)."""

    def __init__(self, head_dim: int, max_seq_len: int):
        super().__init__()
        freq = (1 / 1024) ** torch.linspace(0, 1, steps=head_dim // 4)
        freq = torch.cat([freq, freq.new_zeros(head_dim // 4)])  # (D/2,)
        theta = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), freq)  # (T_max, D/2)
        self.register_buffer("cos", theta.cos(), persistent=False)
        self.register_buffer("sin", theta.sin(), persistent=False)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: Config, ops: Ops, rotary: Rotary, value_embed: bool):
        super().__init__()
        self.ops, self.rotary, self.H, self.D = ops, rotary, cfg.num_heads, cfg.head_dim
        hdim = cfg.num_heads * cfg.head_dim
        # merged QKV weight, one (hdim, dim) matrix each for Muon (@fernbear.bsky.social, @YouJiacheng)
        self.qkv_w = nn.Parameter(init_linear_(torch.empty(3, hdim, cfg.model_dim)))
        self.proj = nn.Linear(hdim, cfg.model_dim, bias=False)
        nn.init.zeros_(self.proj.weight)  # zero-init output projection (@Grad62304977)
        # v <- λ0 v + λ1 ve with a value embedding, else λ0 v (v_lambda) or v: every element gets a gradient
        n = 2 if value_embed else int(cfg.v_lambda)
        self.value_lambdas = nn.Parameter(torch.full((n,), 0.5)) if n else None
        self.scale = cfg.attn_scale or None  # None: the op's D^-0.5

    def forward(self, x: Tensor, ve: Tensor | None, mask) -> Tensor:  # x (B, T, dim)
        B, T, _ = x.shape
        q, k, v = F.linear(x, self.qkv_w.flatten(0, 1)).view(B, T, 3 * self.H, self.D).chunk(3, dim=-2)
        # QK-norm (@Grad62304977; Dehghani et al. 2023), then rotary, in one pass; the attention op takes one dtype
        q, k = (self.ops.rms_norm_rotary(t, self.rotary.cos, self.rotary.sin).type_as(v) for t in (q, k))
        if ve is not None:  # value embeddings (@KoszarskyB, after the value residual of Zhou et al. 2024)
            # fp32 tables (embed_bf16 off) and a bf16 v under autocast: cast, or v becomes fp32 and q, k, v differ
            v = self.value_lambdas[0] * v + self.value_lambdas[1] * ve.view_as(v).type_as(v)
        elif self.value_lambdas is not None:  # (@YouJiacheng)
            v = self.value_lambdas[0] * v
        y = self.ops.attention(q, k, v, mask, self.scale)  # (B, T, H, D)
        return self.proj(y.reshape(B, T, self.H * self.D))


class MLP(nn.Module):
    def __init__(self, cfg: Config, ops: Ops):
        super().__init__()
        self.relu2_mlp = ops.relu2_mlp  # proj(relu(fc(x))^2), ReLU^2 in the fc matmul's epilogues with kernels/
        self.fc = nn.Linear(cfg.model_dim, cfg.mlp_ratio * cfg.model_dim, bias=False)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.model_dim, cfg.model_dim, bias=False)
        init_linear_(self.fc.weight)
        nn.init.zeros_(self.proj.weight)  # zero-init output projection (@Grad62304977)

    def forward(self, x: Tensor) -> Tensor:  # x (B, T, dim)
        # ReLU^2 (So et al. 2021, Primer; @SKYLINEZ007, @Grad62304977). The op is not on autocast's lists: the fp32
        # weights are cast to x's dtype here, as autocast casts them for F.linear (bf16 on CUDA; a no-op on a CPU)
        return self.relu2_mlp(x, self.fc.weight.type_as(x), self.proj.weight.type_as(x))


class Block(nn.Module):
    def __init__(self, cfg: Config, ops: Ops, rotary: Rotary, value_embed: bool, attention: bool):
        super().__init__()
        self.mix_norm, self.add_norm = ops.mix_rms_norm, ops.add_rms_norm
        self.attn = CausalSelfAttention(cfg, ops, rotary, value_embed) if attention else None
        self.mlp = MLP(cfg, ops)
        self.lambdas = nn.Parameter(torch.tensor([1.0, 0.0]))  # x <- a (x + r) + b x0, a residual to the embedding

    def forward(self, x: Tensor, r: Tensor | None, x0: Tensor, ve: Tensor | None, mask) -> tuple[Tensor, Tensor]:
        x, h = self.mix_norm(x, r, x0, self.lambdas)  # x <- a (x + r) + b x0 and its norm: one pass
        if self.attn is not None:  # layer 7 of the record has none (@YouJiacheng)
            x, h = self.add_norm(x, self.attn(h, ve, mask))  # x + attention out and its norm: one pass
        return x, self.mlp(h)


class GPT(nn.Module):
    def __init__(self, cfg: Config, ops: Ops):
        super().__init__()
        L, k, kinds = cfg.num_layers, cfg.value_embeds, layer_kinds(cfg)
        self.norm, self.add_norm = ops.rms_norm, ops.add_rms_norm
        self.head_loss, self.fp8_head_loss = ops.head_loss, ops.fp8_head_loss
        self.softcap = cfg.logit_softcap
        dtype = torch.bfloat16 if cfg.embed_bf16 else None  # the tables' dtype (Adam keeps fp32 masters of bf16 ones)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.model_dim, dtype=dtype)
        hdim = cfg.num_heads * cfg.head_dim  # a value embedding is added to v: (B, T, H, D)
        self.value_embeds = nn.ModuleList(nn.Embedding(cfg.vocab_size, hdim, dtype=dtype) for _ in range(k))
        self.ve_table = value_embed_tables(cfg)
        rotary = Rotary(cfg.head_dim, max(cfg.seq_len, cfg.val_seq_len))
        self.blocks = nn.ModuleList(Block(cfg, ops, rotary, self.ve_table[i] is not None, kinds[i] != "-")
                                    for i in range(L))
        self.mask_of = [int(kind == "S") for kind in kinds]  # each layer's mask: 0 the long window's, 1 the short's
        self.skip_weights = nn.Parameter(torch.ones(cfg.unet_skips))  # U-net skips (@brendanh0gan)
        self.head = nn.Linear(cfg.model_dim, cfg.vocab_size, bias=False)  # untied from the embedding
        nn.init.zeros_(self.head.weight)  # (@Grad62304977)
        # FP8 head (@YouJiacheng): x_s, w_s, grad_s; grad_s x grad_accum undoes the mean's 1 / grad_accum in dY
        x_s, w_s, grad_s = list_field(cfg, "fp8_head_scales", float)
        self.fp8_scales = (x_s, w_s, grad_s * max(cfg.grad_accum, 1)) if cfg.fp8_head else None

    def forward(self, inputs: Tensor, targets: Tensor, masks: list) -> Tensor:
        """inputs, targets: (B, T) token ids; masks: ops.attention_mask's for `attention_windows`. The mean loss."""
        L, S = len(self.blocks), len(self.skip_weights)
        ve = [table(inputs) for table in self.value_embeds]  # k x (B, T, hdim)
        x, dev = self.embed(inputs), inputs.device.type  # (B, T, dim); the residual stream takes autocast's dtype
        x = x.to(torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else torch.float32)  # bf16 on CUDA
        x = x0 = self.norm(x)  # norm of the embedding (@Grad62304977)
        r, skips = None, []  # r: the last block's MLP output, added in the next norm's pass (a block's output: x + r)
        for i, block in enumerate(self.blocks):
            if i >= L - S:  # the second half takes the first half's outputs, innermost first
                x, r = x + r + self.skip_weights[L - 1 - i] * torch.add(*skips.pop()), None
            x, r = block(x, r, x0, None if self.ve_table[i] is None else ve[self.ve_table[i]], masks[self.mask_of[i]])
            if i < S:
                skips.append((x, r))
        x = self.add_norm(x, r)[1]  # the last add and the final norm, one pass
        if self.fp8_scales and torch.is_grad_enabled():  # FP8 in training only, as the record: validation in bf16
            return self.fp8_head_loss(x.flatten(0, 1), self.head.weight, targets.view(-1), self.softcap,
                                      *self.fp8_scales)  # logits, soft-cap and loss (kernels/head_loss.py)
        # tanh soft-cap (Gemma 2; @Grad62304977), lowered from 30 to 15 by @KoszarskyB, and the loss, in fp32
        return self.head_loss(self.head(x).flatten(0, 1), targets.view(-1), self.softcap)  # logits (B T, V)


def flops_per_token(cfg: Config, window: int) -> float:
    """Training FLOPs per token (forward + backward = 3 x forward), counting matmuls only (an FP8 head's too):
    6 x (matmul weights) per token, plus, in each layer with attention, 2 matmuls of 2 x hdim FLOPs per visible
    key, x 3, the visible keys of its causal window w over T tokens ignoring documents: c - c^2 / (2T), c = min(w, T).
    """
    dim, hdim, T, windows = cfg.model_dim, cfg.num_heads * cfg.head_dim, cfg.seq_len, attention_windows(window, cfg)
    layers = [windows[kind == "S"] for kind in layer_kinds(cfg) if kind != "-"]  # each attention layer's window
    weights = len(layers) * 4 * hdim * dim + cfg.num_layers * 2 * cfg.mlp_ratio * dim * dim + dim * cfg.vocab_size
    return 6 * weights + 12 * hdim * sum(min(w, T) - min(w, T) ** 2 / (2 * T) for w in layers)


# ----------------------------------------------------------------------------------------------
# Optimizers (optim.py: Muon, ShardedAdam and their gradients' averaging, GradSync)


@dataclass
class Optimizers:
    """Adam and Muon, and the averaging of their gradients over the ranks."""

    adam: ShardedAdam
    muon: Muon
    sync: GradSync

    @property
    def both(self) -> tuple[ShardedAdam, Muon]:
        return self.adam, self.muon


def make_optimizers(model: GPT, cfg: Config, ops: Ops, env: DistEnv) -> Optimizers:
    """Muon for the blocks' matrices, Adam for embeddings, head and scalars; their gradients' averaging."""
    hidden = [p for p in model.blocks.parameters() if p.ndim >= 2]
    embeds = [*model.embed.parameters(), *model.value_embeds.parameters()]
    scalars = [p for p in model.parameters() if p.ndim < 2]
    head = [model.head.weight]
    assert len(hidden) + len(embeds) + len(scalars) + len(head) == len(list(model.parameters()))
    # betas (0.8, 0.95) and the small eps (@YouJiacheng) as in modded-nanogpt
    adam = ShardedAdam([dict(params=embeds, lr=cfg.adam_embed_lr), dict(params=head, lr=cfg.adam_head_lr),
                        dict(params=scalars, lr=cfg.adam_scalar_lr)], sharded=[*embeds, *head],
                       world_size=env.world_size, rank=env.rank, betas=(0.8, 0.95), eps=1e-10, fused=True)
    muon = Muon(hidden, lr=cfg.muon_lr, momentum=cfg.muon_momentum, weight_decay=cfg.muon_weight_decay,
                ns_steps=cfg.ns_steps, newton_schulz=ops.newton_schulz, world_size=env.world_size)
    for group in (*adam.param_groups, *muon.param_groups):
        group["initial_lr"] = group["lr"]
    return Optimizers(adam, muon, GradSync(list(model.parameters()), [muon, adam], env.world_size))


# ----------------------------------------------------------------------------------------------
# Schedule (step s of num_steps; progress x = s / num_steps)


def lr_scale(step: int, cfg: Config) -> float:
    """Constant, then a linear cool-down to 0.1x over the last cooldown_frac (modded-nanogpt)."""
    x = step / cfg.num_steps
    if x < 1 - cfg.cooldown_frac:
        return 1.0
    w = (1 - x) / cfg.cooldown_frac
    return w + (1 - w) * 0.1


def muon_momentum(step: int, cfg: Config) -> float:
    """Momentum warm-up 0.85 -> muon_momentum (modded-nanogpt)."""
    frac = min(step / cfg.muon_momentum_warmup, 1.0) if cfg.muon_momentum_warmup > 0 else 1.0
    return (1 - frac) * 0.85 + frac * cfg.muon_momentum


def window_size(step: int, cfg: Config) -> int:
    """The long window: window_min -> window_max linearly, rounded up to whole window_blocks, at least one (the
    record: ceil(1728 x / 128) blocks; window warm-up by @fernbear.bsky.social, block-wise by @YouJiacheng)."""
    w = cfg.window_min + (cfg.window_max - cfg.window_min) * min(step, cfg.num_steps) / cfg.num_steps
    return max(1, math.ceil(w / cfg.window_block)) * cfg.window_block


def attention_windows(window: int, cfg: Config) -> list[int]:
    """[long window], and the short one where layers use it: half the long one in whole blocks, at least one
    (the record's long-short masks: @leloykun and @YouJiacheng, after Gemma 2)."""
    short = max(1, window // cfg.window_block // 2) * cfg.window_block
    return [window, short] if "S" in layer_kinds(cfg) else [window]


# ----------------------------------------------------------------------------------------------
# Step and warm-up: one training step; the untimed warm-up (the state is restored after it, the speedrun's rule)


def train_step(model, ops: Ops, optimizers, batches, window: int, step: int, cfg: Config, env: DistEnv) -> Tensor:
    """One optimizer step over grad_accum micro-batches; returns the mean loss over all ranks (a device scalar)."""
    device = batches[0][0].device
    total = torch.zeros((), device=device)
    for i, (inputs, targets) in enumerate(batches):
        optimizers.sync.last_micro_step = i == len(batches) - 1  # its hooks communicate on the last one only
        with torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(inputs, targets, ops.attention_mask(document_starts(inputs), attention_windows(window, cfg)))
        (loss / len(batches)).backward()
        total += loss.detach()
    optimizers.sync.finish()  # launches what the backward's hooks have not (optim.py: the order)
    total /= len(batches)
    loss_sync = dist.all_reduce(total, op=dist.ReduceOp.AVG, async_op=True) if env.world_size > 1 else None
    for opt in optimizers.both:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lr_scale(step, cfg)
    for group in optimizers.muon.param_groups:
        group["momentum"] = muon_momentum(step, cfg)
    # Muon first (its reduce-scatters went first); Adam steps while Muon's updates are being all-gathered
    optimizers.muon.step(between=optimizers.adam.step)
    model.zero_grad(set_to_none=True)
    if loss_sync is not None:
        loss_sync.wait()
    # Adam's all-gathers complete before anything reads the parameters (the next forward, validation, the warm-up's
    # restore); on CUDA a wait holds back only the compute stream's next kernels: the next batch's copy and mask
    optimizers.adam.wait()
    return total


def inductor_cache_dir(kernels_dir: str = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels")) -> str:
    """Inductor's cache folder for this version of kernels/ (main sets it unless the environment does): its caches
    know a custom op by its name, not by its fake, so a graph compiled against another version of an op would
    replay that version's output sizes and strides. Inductor's own folder where kernels/ cannot be read (no
    traceback here: --kernels=torch needs no kernels/, and --kernels=triton reports the failed import in one line)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    digest = hashlib.sha256()
    try:
        for name in sorted(f for f in os.listdir(kernels_dir) if f.endswith(".py")):
            with open(os.path.join(kernels_dir, name), "rb") as f:
                digest.update(name.encode() + b"\0" + f.read() + b"\0")
    except OSError:
        return default_cache_dir()
    return os.path.join(default_cache_dir(), f"kernels-{digest.hexdigest()[:12]}")


def compile_model(model: nn.Module) -> nn.Module:
    """torch.compile with static shapes: one graph per shape (training, validation), both compiled by warm_up;
    the window is no part of a graph (a 0-d tensor for the kernel, a buffer in FlexAttention's mask). With
    automatic dynamic shapes the second shape would compile with a symbolic length: slower code, and a compile
    error in Inductor's CPU FlexAttention template."""
    dynamo = torch._dynamo.config  # headroom, should a guard no CPU test sees compile more graphs on a GPU
    setattr(dynamo, "recompile_limit" if hasattr(dynamo, "recompile_limit") else "cache_size_limit", 64)
    return torch.compile(model, dynamic=False)


def warm_up(model, ops, optimizers, cfg: Config, env: DistEnv, device: torch.device, evaluate) -> None:
    """Compile and warm the kernels on random tokens, then restore the initial model and optimizer state.
    When compiling: a training step at every window size of the schedule and a validation batch at the window
    of every validation (its own shape and no_grad: other graphs). No path compiles per window (the CPU tests
    count the graphs); visiting every window makes a guard only a GPU meets recompile here, untimed."""
    initial = copy.deepcopy(model.state_dict()), [copy.deepcopy(opt.state_dict()) for opt in optimizers.both]
    windows = sorted({window_size(s, cfg) for s in range(cfg.num_steps + 1)})
    steps = max(cfg.warmup_steps, len(windows)) if cfg.compile else cfg.warmup_steps
    gen = torch.Generator().manual_seed(cfg.seed)
    top = min(BOS_ID + 1, cfg.vocab_size)  # random ids, BOS among them where the vocabulary holds it
    for i in range(steps):
        batches = [to_device((torch.randint(0, top, (cfg.batch_size, cfg.seq_len), generator=gen),) * 2, device)
                   for _ in range(cfg.grad_accum)]
        train_step(model, ops, optimizers, batches, windows[i % len(windows)], 0, cfg, env)
    if cfg.compile:
        val_steps = [*range(0, cfg.num_steps, cfg.val_every), cfg.num_steps]
        for window in sorted({window_size(s, cfg) for s in val_steps}):
            evaluate(window, max_batches=1)
    model.load_state_dict(initial[0])
    for opt, opt_state in zip(optimizers.both, initial[1]):
        opt.load_state_dict(opt_state)


# ----------------------------------------------------------------------------------------------
# Timed loop


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


class Clock:
    """Training time: runs during training, stopped after a device synchronize around validation."""

    def __init__(self, device: torch.device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.total_ms, self.t0 = 0.0, None

    def start(self):
        self.sync()
        self.t0 = time.perf_counter()

    def stop(self):
        self.sync()
        self.total_ms, self.t0 = self.ms(), None

    def ms(self) -> float:
        return self.total_ms + (1000 * (time.perf_counter() - self.t0) if self.t0 is not None else 0.0)


class LaggedLosses:
    """Each step's loss, read on the host one step late. Reading it at once (`.item()`) would make the host
    wait for the GPU every step, which then idles while the next step is launched. Instead the loss is
    copied to pinned memory behind an event, and the host waits for that event only after queuing the
    next step. On a CPU the copy is done at once and the same code runs, tests included."""

    def __init__(self, device: torch.device):
        self.cuda, self.pending = device.type == "cuda", []  # [(loss on the host, its event, fields)]

    def push(self, loss: Tensor, **fields) -> None:
        host = loss.detach().to("cpu", non_blocking=True)  # pinned and asynchronous from a GPU
        event = torch.cuda.Event() if self.cuda else None
        if event is not None:
            event.record()
        self.pending.append((host, event, fields))

    def ready(self, keep: int = 0):
        """(loss, fields) of the queued steps but the newest `keep`, oldest first."""
        while len(self.pending) > keep:
            host, event, fields = self.pending.pop(0)
            if event is not None:
                event.synchronize()
            yield host.item(), fields


@dataclass
class RunState:
    """What the run has done so far; the result event is written from it however the run ends."""

    steps: int = 0
    tokens: int = 0
    flops: float = 0.0
    train_time_ms: float = 0.0
    val_loss: float | None = None
    time_to_target_ms: float | None = None
    peak_flops: float | None = None  # the whole world's peak FLOP/s, None where unknown (CPUs)

    def tokens_per_s(self) -> float:
        return self.tokens / (self.train_time_ms / 1000) if self.train_time_ms > 0 else 0.0

    def mfu(self) -> float | None:  # None where the peak is unknown
        ok = self.peak_flops is not None and self.train_time_ms > 0
        return self.flops / (self.train_time_ms / 1000) / self.peak_flops if ok else None

    def suffix(self) -> str:
        mfu = self.mfu()
        return f" tokens_per_s:{self.tokens_per_s():.0f} mfu:" + ("n/a" if mfu is None else f"{100 * mfu:.2f}%")


def timed_run(model, ops, optimizers, cfg: Config, env: DistEnv, device, evaluate, log: RunWriter, state: RunState):
    """Train the whole schedule (to the first validation at or below the target with stop_at_target)."""
    loader = make_train_loader(cfg, env)
    tokens_per_step = env.world_size * cfg.grad_accum * cfg.batch_size * cfg.seq_len
    clock, N, losses = Clock(device), cfg.num_steps, LaggedLosses(device)

    def log_steps(keep: int) -> None:  # the step events whose losses have arrived; stop on NaN or inf
        for loss, fields in losses.ready(keep):
            if not math.isfinite(loss):
                raise Diverged(f"train loss {loss} at step {fields['step']} (try lower learning rates)")
            log.event("step", **fields, train_loss=loss)

    clock.start()
    step = 0
    while True:
        if step == N or step % cfg.val_every == 0:
            clock.stop()
            log_steps(keep=0)
            state.train_time_ms = t = clock.ms()
            state.val_loss = val_loss = evaluate(window_size(step, cfg))
            log.line(f"step:{step}/{N} val_loss:{val_loss:.4f} train_time:{t:.0f}ms step_avg:{t / max(step, 1):.2f}ms"
                     + state.suffix())
            log.event("val", step=step, val_loss=val_loss, train_time_ms=t)
            if not math.isfinite(val_loss):
                raise Diverged(f"validation loss {val_loss} at step {step}")
            if val_loss <= cfg.target_val_loss and state.time_to_target_ms is None:
                state.time_to_target_ms = t  # the first crossing: reported beside the final time
                if cfg.stop_at_target:
                    return
            if step == N:
                return
            clock.start()
        window = window_size(step, cfg)
        batches = [to_device(loader.next_batch(), device) for _ in range(cfg.grad_accum)]
        loss = train_step(model, ops, optimizers, batches, window, step, cfg, env)
        step += 1
        state.steps, state.tokens = step, state.tokens + tokens_per_step
        state.flops += tokens_per_step * flops_per_token(cfg, window)
        state.train_time_ms = t = clock.ms()
        log.line(f"step:{step}/{N} train_time:{t:.0f}ms step_avg:{t / step:.2f}ms" + state.suffix())
        losses.push(loss, step=step, train_time_ms=t, step_avg_ms=t / step, tokens_per_s=state.tokens_per_s(),
                    mfu=state.mfu())
        log_steps(keep=1)


def make_evaluate(model, ops, cfg: Config, env: DistEnv, device: torch.device):
    @torch.no_grad()
    def evaluate(window: int, max_batches: int | None = None) -> float:
        """Mean loss over the first val_tokens validation tokens (or max_batches batches), averaged over the ranks."""
        (loader, batches), windows = make_val_loader(cfg, env), attention_windows(window, cfg)
        batches = min(batches, max_batches or batches)
        total = torch.zeros((), device=device)
        for _ in range(batches):
            inputs, targets = to_device(loader.next_batch(), device)
            with torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda"):
                total += model(inputs, targets, ops.attention_mask(document_starts(inputs), windows))
        total /= batches
        if env.world_size > 1:
            dist.all_reduce(total, op=dist.ReduceOp.AVG)
        return total.item()

    return evaluate


def train(cfg: Config, env: DistEnv, device: torch.device, log: RunWriter, state: RunState) -> None:
    """Build everything, warm up, reset, and run the timed loop."""
    torch.manual_seed(cfg.seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)  # same seed, same losses, bit for bit
    else:
        torch.set_float32_matmul_precision("high")
    ops = make_ops(cfg.kernels, device)
    if cfg.kernels == "triton" and device.type == "cpu":
        log.line("notice: Triton kernels on the CPU run under TRITON_INTERPRET=1 (a test path, very slow)")
    log.line("ops: " + ", ".join(f"{op}={source}" for op, source in ops.sources.items()))
    check_data(cfg, env)
    model = GPT(cfg, ops).to(device)
    if env.world_size > 1:
        for p in model.parameters():
            dist.broadcast(p.detach(), 0)
    optimizers = make_optimizers(model, cfg, ops, env)
    log.line(f"model: {sum(p.numel() for p in model.parameters()):,} parameters, "
             f"{flops_per_token(cfg, window_size(cfg.num_steps, cfg)) / 1e9:.3f} GFLOP/token at the full window")
    if cfg.compile:
        model = compile_model(model)
    evaluate = make_evaluate(model, ops, cfg, env, device)
    started = time.perf_counter()
    log.line("warm-up: compiling and warming the kernels (untimed)" if cfg.compile else "warm-up (untimed)")
    warm_up(model, ops, optimizers, cfg, env, device, evaluate)
    log.line(f"warm-up: done in {time.perf_counter() - started:.1f} s; the state is reset, the clock starts")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        peak = peak_flops(torch.cuda.get_device_name(device))  # per GPU; None for a GPU not in the table
        state.peak_flops = peak * env.world_size if peak else None
    timed_run(model, ops, optimizers, cfg, env, device, evaluate, log, state)


# ----------------------------------------------------------------------------------------------
# Main: the result event and line, however the run ends


def write_result(log: RunWriter, cfg: Config, state: RunState, device: torch.device, status: str,
                 error: str | None = None) -> None:
    """The result event (however the run ended) and, for a finished run, the closing `result:` line.
    train_time_ms is the run's time (at its final validation); time_to_target_ms its first crossing."""
    peak_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    reached = state.time_to_target_ms is not None
    log.event("result", status=status, reached_target=reached, target_val_loss=cfg.target_val_loss,
              stop_at_target=cfg.stop_at_target, time_to_target_ms=state.time_to_target_ms, steps=state.steps,
              tokens=state.tokens, final_val_loss=state.val_loss, train_time_ms=state.train_time_ms,
              peak_memory_mb=peak_mb, tokens_per_s=state.tokens_per_s(), mfu=state.mfu(), error=error)
    if status != "ok":
        return
    mfu, below = state.mfu(), state.val_loss is not None and state.val_loss <= cfg.target_val_loss
    first = (f"first at or below it at {state.time_to_target_ms:.0f}ms" if reached else "never at or below it")
    stopped = "; stopped at the target (--stop_at_target)" if cfg.stop_at_target and reached else ""
    log.line(f"result: train_time {state.train_time_ms:.0f}ms, {state.steps}/{cfg.num_steps} steps, "
             f"{state.tokens:,} tokens, final val_loss {state.val_loss:.4f} "
             f"({'at or below' if below else 'above'} the target {cfg.target_val_loss}; {first}){stopped}; "
             f"{state.tokens_per_s():.0f} tokens/s, mfu " + ("n/a" if mfu is None else f"{100 * mfu:.2f}%")
             + ("" if peak_mb is None else f", peak memory {peak_mb:.0f} MiB"))


def main(argv: list[str] | None = None) -> int:
    """`--help` prints the fields; `--print_config` prints the resolved config as one JSON line and trains nothing."""
    env, argv = DistEnv(), sys.argv[1:] if argv is None else argv
    if "--help" in argv or "-h" in argv:
        print(config_help())
        return 0
    print_only = "--print_config" in argv
    try:
        env = DistEnv.from_environ()
        cfg = parse_config([arg for arg in argv if arg != "--print_config"])
        device = pick_device(cfg, env)
        cfg = resolve_config(cfg, env.world_size, device)
        if print_only:
            resolve_files(cfg.train_files), resolve_files(cfg.val_files)
    except (ConfigError, DataError) as exc:
        if env.master:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    if print_only:
        print(json.dumps(dataclasses.asdict(cfg)))
        return 0
    if device.type == "cpu":  # before anything imports the kernels (torch's deterministic mode and torch.compile
        os.environ["TRITON_INTERPRET"] = "1"  # do): @triton.jit reads it, and a CPU runs Triton only interpreted
    if not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):  # asked before torch._inductor's import sets it to the default
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = inductor_cache_dir()
    try:
        init_distributed(env, device)
        log, state = RunWriter(cfg.run_dir if env.master else None), RunState()
    except (ConfigError, OSError) as exc:  # no rendezvous address; a run folder it may not write in
        why = exc if isinstance(exc, ConfigError) else (f"--run_dir={cfg.run_dir}: cannot write there "
                                                        f"({exc.strerror or exc})")
        print(f"error: {why}", file=sys.stderr)
        return 1
    try:
        if env.master:
            log.event("config", track=cfg.track, config=dataclasses.asdict(cfg))
            meta = dict(code_hash=snapshot_code(cfg.run_dir, trainer=__file__), world_size=env.world_size,
                        hardware=hardware_info(), versions=software_versions(), git=git_state())
            log.event("meta", **meta)
            log.line(f"run_dir: {cfg.run_dir}")
            log.line(f"track {cfg.track}, {env.world_size} process(es) on {device.type}, kernels {cfg.kernels}, "
                     f"grad_accum {cfg.grad_accum}, compile {cfg.compile}, seed {cfg.seed}")
            log.line(f"config: {dataclasses.asdict(cfg)}", console=False)
            for key in ("versions", "hardware", "git"):
                log.line(f"{key}: {meta[key]}", console=False)
            log.line(nvidia_smi() or "nvidia-smi: not available", console=False)
            log.line(f"inductor cache: {os.environ['TORCHINDUCTOR_CACHE_DIR']}", console=False)
        train(cfg, env, device, log, state)
        write_result(log, cfg, state, device, "ok")
        return 0
    except (DataError, ConfigError, Diverged) as exc:
        status = "diverged" if isinstance(exc, Diverged) else "error"
        write_result(log, cfg, state, device, status, str(exc))
        if env.master:
            print(f"error: {'diverged: ' if status == 'diverged' else ''}{exc}", file=sys.stderr)
        return 3 if status == "diverged" else 1
    except KeyboardInterrupt as exc:  # Ctrl-C, or stop_signal's SIGTERM or SIGHUP
        signum = exc.args[0] if exc.args else signal.SIGINT
        how = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        write_result(log, cfg, state, device, "interrupted", f"interrupted ({how}) after {state.steps} steps")
        if env.master:
            print(f"error: interrupted ({how}) after {state.steps} of {cfg.num_steps} steps; "
                  f"the run's events are in {cfg.run_dir}", file=sys.stderr)
        return 128 + signum
    except BaseException as exc:
        write_result(log, cfg, state, device, "error", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        log.close()
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":  # here, not in main(): importing and calling main() install nothing
    def stop_signal(signum: int, frame) -> None:  # SIGTERM and SIGHUP stop a run as Ctrl-C does: status interrupted
        raise KeyboardInterrupt(signum)
    for stop in (signal.SIGTERM, signal.SIGHUP):  # not where nohup ignores one, nor under torchrun (it stops workers)
        if signal.getsignal(stop) == signal.SIG_DFL and "TORCHELASTIC_RUN_ID" not in os.environ:
            signal.signal(stop, stop_signal)
    sys.exit(main())
