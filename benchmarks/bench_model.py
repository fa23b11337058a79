"""Whole-model training throughput on one GPU: the fineweb-124m model on each kernel backend, and
nanoGPT's GPT-2 as the reference, in the same run.

    python -m benchmarks.bench_model [--steps 20] [--warmup 8] [--kernels torch triton] [--windows first,last]
                                     [--no-reference] [--tiny]

What is timed (CUDA events around `steps` steps, after `warmup` untimed ones; the first untimed one, made even
with --warmup 0, compiles, and its wall time is `compile_s`; `peak_mem_gib` is the allocator's peak over the
case):
- ours, `--kernels=torch` and `--kernels=triton`: train_gpt.train_step on one micro-batch of the
  fineweb-124m track (B=1, 48K tokens, random tokens with a document start every ~1000), i.e. one step
  of one rank of the 8-GPU run without communication: attention-mask build, forward, backward, Adam
  and Muon (Newton-Schulz on every hidden matrix: one rank alone does all eight ranks' shares). Two
  cases: the first and the last window size of the schedule. Then Muon's step alone on the same
  model (`muon_ms`, and `muon_frac` = its share of the training step). Beside each step time, `est_ms`:
  benchmarks/roofline.py's estimate of the same step (this window, one micro-step, the optimizer, one GPU).
- reference: a plain nanoGPT GPT-2 (dense causal SDPA, LayerNorm, GELU, tied embedding, fused AdamW,
  torch.compile, bf16 autocast) on 48 x 1024 tokens, the same tokens per step.

Accounting: tokens/s = tokens per step / step time. MFU = FLOPs per token x tokens/s / the GPU's peak
dense bf16 FLOP/s (harness.hardware). FLOPs per token are train_gpt.flops_per_token: 6 x matmul weights
(head included, embeddings excluded) + 12 x layers x attention width x visible keys, with the visible
keys of a causal window w over T tokens c - c^2 / (2T), c = min(w, T); for plain causal (the reference)
that is T/2. Documents are ignored, so a document-masked run is credited with a little more attention
than it does. Rows go to benchmarks/results.csv, each as soon as its case is done; the table of this
run's rows is printed last.

`--tiny` runs the same cases on a micro model (TINY_OVERRIDES) on the CPU, uncompiled, Triton kernels under
its interpreter: the rehearsal of benchmarks/gpu_check.py, for code paths, not numbers.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections import Counter

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import append_results, require_cuda
from harness.data import BOS_ID
from harness.hardware import peak_flops

# --tiny: the fineweb-124m model shrunk to seconds per step on a CPU, where Triton's interpreter pays for
# every program it runs (2 layers of width 16, 64 tokens, 1 Newton-Schulz step)
TINY_OVERRIDES = ("--num_layers=2", "--model_dim=16", "--num_heads=1", "--head_dim=16", "--value_embeds=1",
                  "--unet_skips=1", "--seq_len=64", "--window_min=16", "--window_max=32", "--window_block=16",
                  "--ns_steps=1", "--layer_attention=LS", "--fp8_head=false")
TINY_REFERENCE = dict(B=2, T=32, layers=1, dim=16, heads=1)


class RefBlock(nn.Module):
    """nanoGPT's block: pre-LayerNorm, dense causal attention (SDPA: flash), GELU MLP, biases."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.c_attn, self.c_proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.c_fc, self.mlp_proj = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):  # (B, T, C)
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
        x = x + self.c_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class RefGPT(nn.Module):
    """nanoGPT's GPT-2 small (124M): learned positions, tied embedding and head, vocab padded to 50304."""

    def __init__(self, vocab=50304, seq_len=1024, layers=12, dim=768, heads=12):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, dim), nn.Embedding(seq_len, dim)
        self.blocks = nn.ModuleList(RefBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.wte.weight
        self.layers, self.dim, self.vocab = layers, dim, vocab

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x)).float()
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    def flops_per_token(self, T: int) -> float:
        weights = self.layers * 12 * self.dim**2 + self.dim * self.vocab
        return 6 * weights + 12 * self.layers * self.dim * (T / 2)


def time_steps(step, steps: int, warmup: int, device: torch.device) -> float:
    """Median milliseconds per call of step() over `steps` calls, after `warmup` untimed ones (CUDA events
    on a GPU; the wall clock on a CPU, where the tests run this file on a micro model)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            step()
            times.append(1000 * (time.perf_counter() - t0))
    return sorted(times)[len(times) // 2]


def first_call_s(step, device: torch.device) -> float:
    """Wall seconds of one call of step(), synchronised: the first call of a compiled step is its compile."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def peak_memory_gib(device: torch.device) -> float | None:
    """The CUDA allocator's peak since the last reset, GiB (None on a CPU)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def random_tokens(B: int, T: int, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, BOS_ID, (B, T), generator=g)
    tokens[torch.rand(B, T, generator=g) < 1e-3] = BOS_ID  # a document start every ~1000 tokens
    return tokens.to(device)


def bench_ours(kernels: str, window: int, steps: int, warmup: int, peak: float | None, *,
               device: torch.device = torch.device("cuda", 0), overrides: tuple[str, ...] = (),
               compile: bool = True) -> dict:
    """One training step of the fineweb-124m model (plus `overrides`) on `kernels`, and Muon's step alone."""
    import train_gpt as T
    from benchmarks.roofline import estimate  # imports the kernels: after TRITON_INTERPRET is set (--tiny)

    argv = ["--track=fineweb-124m", f"--kernels={kernels}", "--grad_accum=1", f"--device={device.type}", *overrides]
    cfg = T.resolve_config(T.parse_config(argv), 1, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    ops = T.make_ops(kernels, device)
    model = T.GPT(cfg, ops).to(device)
    optimizers = T.make_optimizers(model, cfg, ops, T.DistEnv())
    torch._dynamo.config.recompile_limit = 64
    stepped = torch.compile(model) if compile else model
    x = random_tokens(cfg.batch_size, cfg.seq_len, device)
    batches = [(x, torch.roll(x, -1, dims=1))]

    def step():
        T.train_step(stepped, ops, optimizers, batches, window, 0, cfg, T.DistEnv())

    compile_s = first_call_s(step, device)
    ms = time_steps(step, steps, max(warmup - 1, 0), device)
    peak_gib = peak_memory_gib(device)
    # Muon alone on every hidden matrix (one GPU does all eight ranks' shares), on fresh gradients
    muon = optimizers.muon
    for group in muon.param_groups:
        for p in group["params"]:
            p.grad = torch.randn_like(p)
    muon_ms = time_steps(muon.step, steps, warmup, device)
    tokens = cfg.batch_size * cfg.seq_len
    tokens_per_s = tokens / (ms / 1000)
    # the roofline's estimate of this very step (one micro-step at this window, the optimizer, one GPU)
    est_ms = estimate(cfg, kernels, gpus=1, windows=Counter({window: 1})).step_ms[0]
    mfu = T.flops_per_token(cfg, window) * tokens_per_s / peak if peak else None
    return dict(bench="model", case=f"fineweb-124m B=1 T={cfg.seq_len} window={window}", impl=kernels, ms=ms,
                est_ms=est_ms,
                tokens_per_s=tokens_per_s, mfu=mfu, muon_ms=muon_ms, muon_frac=muon_ms / ms, compile_s=compile_s,
                peak_mem_gib=peak_gib, ops="; ".join(f"{k}={v}" for k, v in ops.sources.items()))


def bench_reference(steps: int, warmup: int, peak: float | None, *, device: torch.device = torch.device("cuda", 0),
                    B: int = 48, T: int = 1024, layers: int = 12, dim: int = 768, heads: int = 12,
                    compile: bool = True) -> dict:
    """nanoGPT's GPT-2 training step on B x T tokens (48 x 1024: the same tokens per step as ours)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    model = RefGPT(seq_len=T, layers=layers, dim=dim, heads=heads).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    stepped = torch.compile(model) if compile else model
    x = random_tokens(B, T, device)
    y = torch.roll(x, -1, dims=1)

    def step():
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            loss = stepped(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    compile_s = first_call_s(step, device)
    ms = time_steps(step, steps, max(warmup - 1, 0), device)
    tokens_per_s = B * T / (ms / 1000)
    mfu = model.flops_per_token(T) * tokens_per_s / peak if peak else None
    return dict(bench="model", case=f"gpt2-124m B={B} T={T} causal", impl="nanogpt", ms=ms,
                tokens_per_s=tokens_per_s, mfu=mfu, compile_s=compile_s, peak_mem_gib=peak_memory_gib(device))


def schedule_windows(names: str, cfg) -> list[int]:
    """Window sizes from a comma list: "first", "mid" and "last" of cfg's schedule, or numbers of tokens."""
    import train_gpt as T

    steps = {"first": 0, "mid": cfg.num_steps // 2, "last": cfg.num_steps}
    return [T.window_size(steps[name], cfg) if name in steps else int(name) for name in names.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per case (median reported)")
    parser.add_argument("--warmup", type=int, default=8, help="untimed steps first (the first compiles)")
    parser.add_argument("--kernels", nargs="+", choices=("torch", "triton"), default=["torch", "triton"],
                        help="the backends of ours to time")
    parser.add_argument("--windows", default="first,last",
                        help="attention windows: first, mid, last (of fineweb-124m's schedule) or token counts")
    parser.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                        help="also time nanoGPT's GPT-2 on the same tokens per step")
    parser.add_argument("--tiny", action="store_true", help="a micro model on the CPU, uncompiled (a rehearsal)")
    args = parser.parse_args([] if argv is None else argv)
    if args.tiny:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before train_gpt imports triton (kernels on a CPU)
        device, overrides, reference, compile = torch.device("cpu"), TINY_OVERRIDES, TINY_REFERENCE, False
    else:
        if not require_cuda("bench_model"):
            return 0
        device, overrides, reference, compile = torch.device("cuda", 0), (), {}, True
    import train_gpt as T

    torch.set_float32_matmul_precision("high")
    peak = peak_flops(torch.cuda.get_device_name(0)) if device.type == "cuda" else None
    windows = schedule_windows(args.windows, T.parse_config(["--track=fineweb-124m", *overrides]))
    cases = [(bench_ours, (kernels, w), dict(overrides=overrides)) for kernels in args.kernels for w in windows]
    if args.reference:
        cases.append((bench_reference, (), reference))
    rows = []
    for fn, case_args, kwargs in cases:
        try:
            row = fn(*case_args, args.steps, args.warmup, peak, device=device, compile=compile, **kwargs)
            append_results([row])  # now, not at the end: a later case that hangs must not lose this one
            rows.append(row)
            estimated = f" (roofline estimate {row['est_ms']:.1f})" if "est_ms" in row else ""
            print(f"{row['impl']:8s} {row['case']}: {row['ms']:.1f} ms/step{estimated}, {row['tokens_per_s']:,.0f} "
                  f"tokens/s, compiled in {row['compile_s']:.0f} s", flush=True)
        except Exception as exc:  # a broken backend must not cost the other cases their GPU time
            print(f"bench_model: {fn.__name__}{case_args} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        torch._dynamo.reset()
    if rows:
        # reindex, not [[...]]: with every ours case failed, the rows have no muon_ms / muon_frac columns
        table = pd.DataFrame(rows).reindex(columns=["case", "impl", "ms", "est_ms", "tokens_per_s", "mfu", "muon_ms",
                                                    "muon_frac", "compile_s", "peak_mem_gib"])
        table["mfu"] = table["mfu"].map(lambda m: "n/a" if m is None or m != m else f"{100 * m:.1f}%")
        print(table.to_string(index=False, float_format=lambda v: f"{v:,.1f}"))
    return 0 if len(rows) == len(cases) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
