"""train_gpt.py on the CPU: its parts in-process, and whole runs of a micro model as subprocesses.

Runs use tiny shards of a synthetic, learnable "language" written here (never the real corpus) and a
micro model (2 layers, dim 64, 2 heads x 32, seq 64): a few steps take seconds. Subprocesses run with
OMP_NUM_THREADS=1, so parallel test workers do not fight over the cores.
"""
from __future__ import annotations

import copy
import dataclasses
import errno
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import train_gpt as T
from kernels.attention import attention_ref, dense_mask, sdpa_attention
from kernels.newton_schulz import newton_schulz_ref
from harness.runlog import read_events
from harness.shards import BOS_ID, write_shard
from harness.snapshot import HASH_FILE, SNAPSHOT_DIR
from helpers import run_two_processes, synthetic_tokens
from optim import Muon

REPO = Path(__file__).resolve().parent.parent
MICRO = [
    "--track=cpu-tiny", "--num_layers=2", "--model_dim=64", "--num_heads=2", "--head_dim=32", "--value_embeds=1",
    "--unet_skips=1", "--seq_len=64", "--val_seq_len=64", "--batch_size=4", "--grad_accum=1", "--val_tokens=1024",
    "--num_steps=6", "--val_every=3", "--window_min=16", "--window_max=64", "--window_block=16", "--warmup_steps=1",
    "--target_val_loss=0.5", "--train_epochs=1", "--logit_softcap=15", "--adam_embed_lr=0.6", "--adam_head_lr=0.008",
    "--muon_lr=0.05",
]
STEP_LINE = re.compile(r"^step:\d+/\d+ train_time:\d+ms step_avg:\d+\.\d{2}ms tokens_per_s:\d+ mfu:(n/a|\d+\.\d{2}%)$")
VAL_LINE = re.compile(
    r"^step:\d+/\d+ val_loss:\d+\.\d{4} train_time:\d+ms step_avg:\d+\.\d{2}ms tokens_per_s:\d+ mfu:(n/a|\d+\.\d{2}%)$")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    write_shard(folder / "micro_train_000000.bin", synthetic_tokens(rng, 200))
    write_shard(folder / "micro_val_000000.bin", synthetic_tokens(rng, 30))
    return folder


def data_args(shards: Path) -> list[str]:
    return [f"--train_files={shards}/micro_train_*.bin", f"--val_files={shards}/micro_val_000000.bin"]


def run_trainer(run_dir: Path, *args: str, nproc: int = 1, timeout: int = 600,
                extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [*(launcher if nproc > 1 else [sys.executable]), "train_gpt.py", f"--run_dir={run_dir}", *args]
    # as from a user's shell: the test session's TRITON_INTERPRET=1 and the Inductor cache folder its compiles set
    # stay behind (the trainer sets both itself)
    env = {**{k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TORCHINDUCTOR_CACHE_DIR")},
           "OMP_NUM_THREADS": "1", **(extra_env or {})}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def val_losses(run_dir: Path) -> list[float]:
    events, problems = read_events(run_dir)
    assert not problems, problems
    return [e["val_loss"] for e in events if e["event"] == "val"]


def train_losses(run_dir: Path) -> list[float]:
    events, problems = read_events(run_dir)
    assert not problems, problems
    return [e["train_loss"] for e in events if e["event"] == "step"]


def result_of(run_dir: Path) -> dict:
    events, _ = read_events(run_dir)
    assert events[-1]["event"] == "result", f"last event is {events[-1]['event']}, not result"
    return events[-1]


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"


def one_error_line(proc: subprocess.CompletedProcess, code: int) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}; stderr:\n{proc.stderr[-2000:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"stderr is not one error line:\n{proc.stderr[-2000:]}"
    return lines[0]


# ---------------------------------------------------------------------------------------------- config


def test_overrides_are_typed_and_applied_after_the_track():
    cfg = T.parse_config(["--track=cpu-tiny", "--seed=3", "--muon_lr=0.1", "--compile=true", "--train_files=x*.bin"])
    assert (cfg.track, cfg.seed, cfg.muon_lr, cfg.compile, cfg.train_files) == ("cpu-tiny", 3, 0.1, True, "x*.bin")
    assert cfg.num_layers == T.TRACKS["cpu-tiny"]["num_layers"]
    assert T.parse_config(["--compile=0"]).compile is False
    assert T.parse_config(["--compile=auto"]).compile is None
    assert T.parse_config([]) == T.Config(**T.TRACKS["fineweb-124m"])
    spaced = T.parse_config(["--track", "cpu-tiny", "--seed", "3", "--muon_lr", "0.1", "--compile", "true",
                             "--train_files=x*.bin"])
    assert spaced == cfg  # `--key value` is `--key=value`, type-checked the same


@pytest.mark.parametrize("argv, message", [
    (["--num_stepz=3"], "unknown option --num_stepz (did you mean --num_steps?)"),
    (["--seed=abc"], "--seed=abc: expected int"),
    (["--compile=maybe"], "--compile=maybe: expected true/false/1/0"),
    (["--seed"], "--seed: expected a value (--seed=VALUE or --seed VALUE)"),
    (["--seed", "abc"], "--seed=abc: expected int"),
    (["seed=3"], "bad argument 'seed=3': expected --key=value or --key value"),
    (["--track=nope"], "unknown track 'nope'"),
])
def test_bad_overrides_are_refused(argv, message):
    with pytest.raises(T.ConfigError) as info:
        T.parse_config(argv)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_resolve_fills_automatic_fields_and_checks_the_world_size():
    cpu = torch.device("cpu")
    cfg = T.resolve_config(T.parse_config(["--fp8_head=false"]), 2, cpu)
    assert cfg.grad_accum == 4 and cfg.compile is False and cfg.run_dir.startswith("runs") and "fineweb-124m-s0" in cfg.run_dir
    with pytest.raises(T.ConfigError, match="world size 3 does not divide the 8-GPU batch of 8"):
        T.resolve_config(T.parse_config(["--fp8_head=false"]), 3, cpu)
    explicit = T.parse_config(["--grad_accum=1", "--val_tokens=3072", "--val_seq_len=1024", "--fp8_head=false"])
    assert T.resolve_config(explicit, 3, cpu).grad_accum == 1  # set explicitly: any world size
    with pytest.raises(T.ConfigError, match="val_tokens"):
        T.resolve_config(T.parse_config(["--val_tokens=1000", "--fp8_head=false"]), 1, cpu)


def test_schedules():
    cfg = T.parse_config(["--num_steps=100", "--window_min=128", "--window_max=1792", "--window_block=128"])
    windows = [T.window_size(s, cfg) for s in range(101)]
    assert windows[0] == 128 and windows[-1] == 1792 and windows == sorted(windows)
    assert all(w % 128 == 0 for w in windows)
    assert T.lr_scale(0, cfg) == 1.0 and T.lr_scale(59, cfg) == 1.0 and T.lr_scale(100, cfg) == pytest.approx(0.1)
    assert T.muon_momentum(0, cfg) == pytest.approx(0.85) and T.muon_momentum(300, cfg) == pytest.approx(0.95)


def test_the_window_schedule_is_the_records_and_the_small_tracks_keep_theirs():
    """fineweb-124m: the 2025-01-26 record's long window, next_multiple_of_n(1728 step / 1770, n=128) tokens, and
    its short one, half the blocks (floor, at least one). cpu-tiny and shakespeare-1gpu: the schedule they had,
    window_min -> window_max linearly in whole blocks, one window for every layer."""
    cfg = T.parse_config([])
    for step in range(cfg.num_steps + 1):
        record = next(x for x in range(128, int(1728 * step / 1770) + 1 + 128, 128) if x >= 1728 * step / 1770)
        assert T.attention_windows(T.window_size(step, cfg), cfg) == [record, max(1, record // 128 // 2) * 128]
    for track in ("cpu-tiny", "shakespeare-1gpu"):
        cfg = T.parse_config([f"--track={track}"])
        for step in range(cfg.num_steps + 1):
            x = min(step / cfg.num_steps, 1.0)
            old = min(cfg.window_max, math.ceil((cfg.window_min + (cfg.window_max - cfg.window_min) * x)
                                                / cfg.window_block) * cfg.window_block)
            assert T.attention_windows(T.window_size(step, cfg), cfg) == [old], (track, step)


def test_flops_count_the_layers_with_attention_at_their_windows():
    cfg = T.parse_config([])
    dim, hdim, T_ = cfg.model_dim, cfg.num_heads * cfg.head_dim, cfg.seq_len
    matmuls = 6 * (11 * 4 * hdim * dim + 12 * 8 * dim * dim + dim * cfg.vocab_size)
    # at the 1792 window: layers 0, 4, 11 long (7 has no attention), the other 8 at 896; no document ends
    visible = 3 * (1792 - 1792**2 / (2 * T_)) + 8 * (896 - 896**2 / (2 * T_))
    assert T.flops_per_token(cfg, 1792) == pytest.approx(matmuls + 12 * hdim * visible, rel=1e-12)


def test_importing_the_trainer_has_no_side_effects():
    code = ("import os, sys, torch.distributed as dist; env = dict(os.environ); import train_gpt; "
            "assert not dist.is_initialized() and dict(os.environ) == env; "
            "assert not [m for m in sys.modules if m.startswith('kernels') or m == 'triton'], 'kernels imported'")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr


def test_every_numeric_field_has_a_range():
    numeric = {f.name for f in dataclasses.fields(T.Config) if f.type in ("int", "float")}
    assert numeric == set(T.LIMITS)


@pytest.mark.parametrize("override, message", [
    ("--batch_size=0", "--batch_size=0: must be >= 1"),
    ("--val_seq_len=0", "--val_seq_len=0: must be >= 1"),
    ("--seq_len=0", "--seq_len=0: must be >= 1"),
    ("--train_epochs=0", "--train_epochs=0: must be >= 1"),
    ("--num_heads=0", "--num_heads=0: must be >= 1"),
    ("--mlp_ratio=0", "--mlp_ratio=0: must be >= 1"),
    ("--model_dim=0", "--model_dim=0: must be >= 1"),
    ("--vocab_size=-5", "--vocab_size=-5: must be >= 1"),
    ("--target_val_loss=nan", "--target_val_loss=nan: must be finite"),
    ("--target_val_loss=inf", "--target_val_loss=inf: must be finite"),
    ("--cooldown_frac=2", "--cooldown_frac=2.0: must be between 0 and 1"),
    ("--warmup_steps=-1", "--warmup_steps=-1: must be >= 0"),
    ("--muon_momentum=1.5", "--muon_momentum=1.5: must be between 0 and 1"),
    ("--muon_lr=-0.1", "--muon_lr=-0.1: must be >= 0"),
    ("--ns_steps=0", "--ns_steps=0: must be >= 1"),
    ("--window_min=64", "window_min=64 > window_max=32"),
    ("--attn_scale=-0.1", "--attn_scale=-0.1: must be >= 0"),
    ("--layer_attention=LSS", "--layer_attention=LSS: expected L, S or - for each of the 4 layers"),
    ("--layer_attention=LSSX", "--layer_attention=LSSX: expected L, S or - for each of the 4 layers"),
    ("--fp8_head_scales=2,x,8", "--fp8_head_scales=2,x,8: expected comma-separated floats"),
    ("--fp8_head_scales=2,512", "--fp8_head_scales=2,512: expected three positive numbers (x, w, gradient)"),
    ("--fp8_head_scales=2,0,8", "--fp8_head_scales=2,0,8: expected three positive numbers (x, w, gradient)"),
    ("--fp8_head=true", "--fp8_head=true needs a GPU with FP8 (CUDA capability >= 8.9; this run has a CPU) and "
                        "model_dim, vocab_size, batch_size x seq_len multiples of 16: add --fp8_head=false"),
    ("--run_dir=README.md", "--run_dir=README.md: exists and is not a folder"),
    ("--seed=18446744073709551616", "--seed=18446744073709551616: must be between 0 and 18446744073709551615"),
    ("--num_stepz=3", "unknown option --num_stepz (did you mean --num_steps?)"),
    ("--print_config=1", "--print_config=1: --print_config takes no value"),
    ("--help=true", "--help=true: --help takes no value"),
    ("--device=gpu", "--device=gpu: expected auto, cuda or cpu"),
])
def test_nonsense_is_one_line_exit_2(override, message, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert T.main(["--print_config", "--track=cpu-tiny", "--window_max=32", override]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"error: {message}\n"


@pytest.mark.parametrize("variables, message", [
    (dict(RANK="abc"), "RANK=abc: expected integers (launch with torchrun)"),
    (dict(WORLD_SIZE="2.0"), "WORLD_SIZE=2.0: expected integers (launch with torchrun)"),
    (dict(WORLD_SIZE="0"), "RANK=0, LOCAL_RANK=0, WORLD_SIZE=0: expected 0 <= LOCAL_RANK <= RANK < WORLD_SIZE"),
    (dict(RANK="2", WORLD_SIZE="2"), "RANK=2, LOCAL_RANK=0, WORLD_SIZE=2: expected 0 <= LOCAL_RANK <= RANK"),
    (dict(RANK="-1", WORLD_SIZE="2"), "RANK=-1, LOCAL_RANK=0, WORLD_SIZE=2: expected 0 <= LOCAL_RANK <= RANK"),
])
def test_torchrun_variables_that_name_no_rank_of_a_world_are_one_line_exit_2(variables, message, capsys, monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert T.main(["--print_config", "--track=cpu-tiny"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: {message}") and err.count("\n") == 1, err


def test_a_bad_command_line_is_reported_by_rank_0_only(capsys, monkeypatch):
    """Every rank gets the same command line: one error line under torchrun, not one per process."""
    for name, value in dict(RANK="1", LOCAL_RANK="1", WORLD_SIZE="2").items():
        monkeypatch.setenv(name, value)
    assert T.main(["--print_config", "--track=cpu-tiny", "--num_stepz=3"]) == 2
    assert capsys.readouterr() == ("", "")


def test_a_run_dir_that_cannot_take_the_runs_logs_is_one_line_exit_2(tmp_path, capsys):
    """A link loop, a file on the path, a link to nothing (mkdir's tracebacks), and a folder holding a run's
    events already (two runs' events in one file would read as one run)."""
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "nothing")
    (tmp_path / "file").write_text("")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "events.jsonl").write_text("")
    for run_dir, problem in [("loop", "Too many levels of symbolic links"), ("file/run", "Not a directory"),
                             ("dangling", "a link to nothing"),
                             ("used", "holds another run's events.jsonl: give each run a folder of its own")]:
        assert T.main(["--print_config", "--track=cpu-tiny", f"--run_dir={tmp_path / run_dir}"]) == 2
        assert capsys.readouterr().err == f"error: --run_dir={tmp_path / run_dir}: {problem}\n"


def main_sets(tmp_path: Path) -> dict[str, str]:
    """The variables main() sets before a run, set here first so that the test restores them."""
    return dict(TRITON_INTERPRET="1", TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))


def test_several_processes_without_torchruns_rendezvous_are_one_line_exit_1(shards, tmp_path, capsys, monkeypatch):
    for name, value in dict(RANK="1", LOCAL_RANK="1", WORLD_SIZE="2", MASTER_ADDR="", MASTER_PORT="",
                            **main_sets(tmp_path)).items():
        monkeypatch.setenv(name, value)
    assert T.main([*MICRO, *data_args(shards), f"--run_dir={tmp_path / 'r'}"]) == 1
    assert capsys.readouterr().err == "error: WORLD_SIZE=2 without MASTER_ADDR and MASTER_PORT: launch with torchrun\n"


def test_a_run_dir_it_cannot_write_in_is_one_line_exit_1(shards, tmp_path, capsys, monkeypatch):
    def refuse(run_dir):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(run_dir))

    for name, value in main_sets(tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(T, "RunWriter", refuse)
    monkeypatch.setattr(T, "train", lambda *args: pytest.fail("trained without a run folder"))
    assert T.main([*MICRO, *data_args(shards), f"--run_dir={tmp_path / 'r'}"]) == 1
    assert capsys.readouterr().err == f"error: --run_dir={tmp_path / 'r'}: cannot write there (Permission denied)\n"


def test_a_crash_is_recorded_as_an_error_result_and_raised(shards, tmp_path, monkeypatch):
    """An exception the trainer does not expect (a bug, an out-of-memory) keeps its traceback and still ends the
    run's events with a result."""
    def crash(*args):
        raise RuntimeError("boom")

    for name, value in main_sets(tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(T, "train", crash)
    with pytest.raises(RuntimeError, match="boom"):
        T.main([*MICRO, *data_args(shards), f"--run_dir={tmp_path / 'r'}"])
    result = result_of(tmp_path / "r")
    assert (result["status"], result["error"], result["steps"]) == ("error", "RuntimeError: boom", 0)


def test_print_config_prints_one_json_line_and_creates_nothing(shards, tmp_path):
    run_dir = tmp_path / "never"
    cmd = [sys.executable, "train_gpt.py", "--print_config", "--track=cpu-tiny", "--grad_accum=0", "--seed=3",
           f"--run_dir={run_dir}", *data_args(shards)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "WORLD_SIZE": "2"})
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert len(proc.stdout.splitlines()) == 1
    cfg = json.loads(proc.stdout)
    assert cfg == dataclasses.asdict(T.resolve_config(T.parse_config(cmd[3:]), 2, torch.device("cpu")))
    assert (cfg["seed"], cfg["grad_accum"], cfg["compile"], cfg["run_dir"]) == (3, 4, False, str(run_dir))
    assert not run_dir.exists()
    proc = subprocess.run([*cmd, f"--val_files={tmp_path}/none_*.bin"], cwd=REPO, capture_output=True, text=True)
    assert one_error_line(proc, 2) == (f"error: {tmp_path}/none_*.bin: no shards match; harness.data builds no shards of that name: "
                                         "put llm.c-format shards there")
    assert proc.stdout == ""


def test_help_lists_every_field_with_its_type_default_and_comment(capsys):
    assert T.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "  --seed=0  (int)  seeds the model's initialisation (identical on every rank)" in out.splitlines()
    assert "--compile=None  (bool | None)  torch.compile the model" in out
    for f in dataclasses.fields(T.Config):
        assert f"--{f.name}={f.default}  (" in out


# ---------------------------------------------------------------------------------------------- the record's elements


def _recording_ops(backend: str = "torch"):
    """The backend's CPU ops, recording each attention call's (scale, mask window), each FP8 head loss call's
    (softcap, scales) and each bf16 head loss call's (softcap, the loss it returned)."""
    ops, calls, windows = T.make_ops(backend, torch.device("cpu")), [], {}
    mask_fn, attention, head_loss, bf16_loss = ops.attention_mask, ops.attention, ops.fp8_head_loss, ops.head_loss

    def masks(starts, ws):
        made = mask_fn(starts, ws)
        windows.update({id(m): w for m, w in zip(made, ws)})
        return made

    def attend(q, k, v, mask, scale):
        calls.append(("attention", scale, windows[id(mask)]))
        return attention(q, k, v, mask, scale)

    def head(*args):
        calls.append(("fp8_head_loss", *args[3:]))
        return head_loss(*args)

    def bf16_head(logits, targets, softcap):
        loss = bf16_loss(logits, targets, softcap)
        calls.append(("head_loss", softcap, loss))
        return loss

    ops.attention_mask, ops.attention, ops.fp8_head_loss, ops.head_loss = masks, attend, head, bf16_head
    return ops, calls


def test_the_record_elements_shape_the_model():
    """fineweb-124m's model at a small width on the CPU: no attention in layer 7, the long window in 0, 4 and 11
    and half of it elsewhere, the scale 0.12, a v scalar in every attention layer, bf16 tables, and the FP8 head
    in training (its gradient scale times the accumulation steps) but not in validation, whose loss is the one
    `ops.head_loss` returns (the model does not restate it)."""
    cfg = T.parse_config(["--model_dim=64", "--num_heads=2", "--head_dim=32", "--seq_len=64", "--grad_accum=2"])
    ops, calls = _recording_ops()
    model, inputs = T.GPT(cfg, ops), _batch_with_documents(1, 64)
    assert [block.attn is None for block in model.blocks] == [i == 7 for i in range(12)]
    assert [tuple(b.attn.value_lambdas.tolist()) for b in model.blocks if b.attn] == \
        [(0.5, 0.5)] * 3 + [(0.5,)] * 5 + [(0.5, 0.5)] * 3
    assert {p.dtype for p in [*model.embed.parameters(), *model.value_embeds.parameters()]} == {torch.bfloat16}
    masks = ops.attention_mask(T.document_starts(inputs), T.attention_windows(T.window_size(1770, cfg), cfg))
    model(inputs, inputs, masks).backward()
    long_short = [1792 if i in (0, 4, 11) else 896 for i in range(12) if i != 7]
    assert calls == [("attention", 0.12, w) for w in long_short] + [("fp8_head_loss", 15.0, 2.0, 512.0, 524288.0 * 2)]
    assert all(p.grad is not None for p in model.parameters())
    calls.clear()
    with torch.no_grad():
        loss = model(inputs, inputs, masks)
    assert [c[0] for c in calls] == ["attention"] * 11 + ["head_loss"]
    assert calls[-1][1] == 15.0 and calls[-1][2] is loss


def test_the_record_model_trains_on_the_cpu():
    """fineweb-124m's defaults at a small width through make_optimizers and train_step on the torch ops (the FP8
    head on PyTorch's CPU _scaled_mm): finite losses, every parameter moves, the bf16 tables are stepped through
    fp32 masters."""
    cpu, env = torch.device("cpu"), T.DistEnv()
    cfg = T.parse_config(["--model_dim=64", "--num_heads=2", "--head_dim=32", "--seq_len=128", "--grad_accum=2"])
    ops = T.make_ops("torch", cpu)
    model = T.GPT(cfg, ops)
    optimizers, before = T.make_optimizers(model, cfg, ops, env), copy.deepcopy(model.state_dict())
    for step in range(3):  # zero-initialised head and projections: a gradient reaches every parameter by step 3
        batches = [(x, x.roll(-1, 1)) for x in (_batch_with_documents(1, 128, seed=2 * step + i) for i in range(2))]
        assert torch.isfinite(T.train_step(model, ops, optimizers, batches, 256, step, cfg, env))
    assert [n for n, p in model.named_parameters() if torch.equal(p, before[n])] == []
    master = optimizers.adam.of[model.embed.weight].stepped  # the bf16 table's fp32 master, and its fp32 state
    assert model.embed.weight.dtype == torch.bfloat16 and master.dtype == torch.float32
    assert optimizers.adam.state[master]["exp_avg"].dtype == torch.float32


def test_value_embeddings_are_as_wide_as_v_where_the_heads_do_not_span_the_model():
    """num_heads x head_dim need not equal model_dim: a value embedding is added to v, so it is hdim wide."""
    cfg = T.parse_config(["--track=cpu-tiny", "--num_layers=2", "--unet_skips=1", "--value_embeds=1",
                          "--model_dim=48", "--num_heads=2", "--head_dim=32"])
    ops = T.make_ops("torch", torch.device("cpu"))
    model, inputs = T.GPT(cfg, ops), _batch_with_documents(2, 32)
    model(inputs, inputs, ops.attention_mask(T.document_starts(inputs), T.attention_windows(64, cfg))).backward()
    assert model.value_embeds[0].weight.shape == (cfg.vocab_size, 64)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_both_backends_apply_the_attention_scale(backend):
    """The scale reaches each backend's attention op: its output is the reference's at that scale, not D^-0.5's."""
    ops = T.make_ops(backend, torch.device("cpu"))
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 40, 2, 16, generator=g) for _ in range(3))
    starts = torch.zeros(2, 40, dtype=torch.bool)
    starts[:, 0] = True
    for window, mask in zip([32, 16], ops.attention_mask(starts, [32, 16])):
        got = ops.attention(q, k, v, mask, 0.4)
        torch.testing.assert_close(got, attention_ref(q, k, v, window_size=window, scale=0.4), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(got, attention_ref(q, k, v, window_size=window), rtol=1e-3, atol=1e-3)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flexattentions_long_and_short_masks_keep_their_own_windows():
    """The CUDA torch path builds a FlexAttention block mask per window in one step; each keeps its window (a
    mask's mask_mod reads buffers that a second mask of the same length must not overwrite). Run here by
    FlexAttention's CPU reference against SDPA with the dense masks."""
    from torch.nn.attention.flex_attention import flex_attention

    starts = T.document_starts(torch.randint(0, 1000, (2, 256)))  # one document a row: every window shows
    ops = T.make_ops("torch", torch.device("cuda"))
    q, k, v = (torch.randn(2, 256, 2, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    flat = [x.reshape(1, 512, 2, 16).transpose(1, 2) for x in (q, k, v)]
    for window, block_mask in zip([200, 60], ops.attention_mask(starts, [200, 60])):
        got = flex_attention(*flat, block_mask=block_mask, scale=0.3).transpose(1, 2).reshape(2, 256, 2, 16)
        want = sdpa_attention(q, k, v, dense_mask(starts, window), scale=0.3)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_the_fp8_head_trains_like_the_float_head():
    """The head through kernels/fp8.py (which PyTorch's CPU build runs) gives the bf16 head's loss within FP8's
    rounding, and a gradient for every parameter."""
    cfg = T.parse_config(["--track=cpu-tiny", "--fp8_head=true", "--num_layers=2", "--unet_skips=1"])
    inputs, losses = _batch_with_documents(2, 64), []
    for fp8 in (False, True):
        torch.manual_seed(0)
        ops = T.make_ops("torch", torch.device("cpu"))
        model = T.GPT(dataclasses.replace(cfg, fp8_head=fp8), ops)
        torch.nn.init.normal_(model.head.weight, std=0.02)  # a zero head would make both losses log(V)
        with torch.autocast("cpu", torch.bfloat16):
            loss = model(inputs, torch.roll(inputs, -1, 1), ops.attention_mask(T.document_starts(inputs), [32]))
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())
        losses.append(loss.item())
    assert losses[1] == pytest.approx(losses[0], abs=0.01) and losses[1] != losses[0]


@pytest.mark.parametrize("softcap", [15.0, 0.0])
def test_the_fused_head_loss_trains_like_the_torch_composition(softcap):
    """--kernels=triton's head loss (kernels/head_loss.py: the loss writes the FP8 gradient) in the model, every
    other op the torch backend's: the composition's loss, and the head's and the last block's gradients within
    1e-2 in norm. The composition rounds dl to bf16 before the e5m2 cast and the op rounds it once, so G8
    differs by an e5m2 step wherever the two roundings part (tests/test_head_loss.py pins the op itself). Logits
    of several units, so the cap (15) shapes the loss."""
    cfg = T.parse_config(["--track=cpu-tiny", "--fp8_head=true", "--num_layers=2", "--unet_skips=1",
                          "--vocab_size=1008", f"--logit_softcap={softcap}"])
    inputs = _batch_with_documents(2, 64) % 1008
    results = []
    for fused in (False, True):
        torch.manual_seed(0)
        ops = T.make_ops("torch", torch.device("cpu"))
        if fused:
            ops.fp8_head_loss = T.make_ops("triton", torch.device("cpu")).fp8_head_loss
        model = T.GPT(cfg, ops)
        torch.nn.init.normal_(model.head.weight, std=0.5)
        with torch.autocast("cpu", torch.bfloat16):
            loss = model(inputs, torch.roll(inputs, -1, 1), ops.attention_mask(T.document_starts(inputs), [32]))
        loss.backward()
        results.append((loss.item(), model.head.weight.grad, model.blocks[-1].mlp.proj.weight.grad))
    (loss, head, proj), (fused_loss, fused_head, fused_proj) = results
    assert fused_loss == pytest.approx(loss, rel=1e-5)
    for got, want in ((fused_head, head), (fused_proj, proj)):
        assert (got - want).norm() <= 1e-2 * want.norm(), ((got - want).norm() / want.norm()).item()


# ---------------------------------------------------------------------------------------------- attention masks


def _batch_with_documents(B: int, T_: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randint(0, 1000, (B, T_), generator=g)
    inputs[torch.rand(B, T_, generator=g) < 0.02] = BOS_ID
    return inputs


def test_document_starts_mark_every_bos_and_every_row_start():
    inputs = _batch_with_documents(3, 50)
    starts = T.document_starts(inputs)
    assert torch.equal(starts[:, 1:], inputs[:, 1:] == BOS_ID) and starts[:, 0].all()


def test_attention_gets_one_dtype_under_bf16_autocast():
    """The CUDA path runs under bf16 autocast; FlexAttention and the kernels need q, k, v of one dtype,
    also in the layers that mix in an (fp32) value embedding. CPU autocast stands in for CUDA's here."""
    cfg = T.resolve_config(T.parse_config(["--track=cpu-tiny", "--num_layers=2", "--value_embeds=1",
                                           "--unet_skips=1"]), 1, torch.device("cpu"))
    ops = T.make_ops("torch", torch.device("cpu"))
    dtypes, sdpa = [], ops.attention

    def attention(q, k, v, mask, scale):
        dtypes.append((q.dtype, k.dtype, v.dtype))
        return sdpa(q, k, v, mask, scale)

    ops.attention = attention
    model, inputs = T.GPT(cfg, ops), _batch_with_documents(2, 64)
    with torch.autocast("cpu", torch.bfloat16):
        model(inputs, inputs, ops.attention_mask(T.document_starts(inputs), [32]))
    assert dtypes == [(torch.bfloat16,) * 3] * 2


@pytest.mark.parametrize("autocast", [False, True])
def test_the_residual_stream_is_in_autocasts_dtype_and_the_loss_in_fp32(autocast):
    """Under bf16 autocast (the CUDA path; CPU autocast stands in for it) every block reads and writes the
    residual stream in bf16, the embedding tables stay fp32 (Adam's state) and the loss is fp32; without
    autocast (the CPU tracks) the stream stays fp32."""
    cfg = T.resolve_config(T.parse_config(["--track=cpu-tiny", "--num_layers=4", "--value_embeds=1",
                                           "--unet_skips=2"]), 1, torch.device("cpu"))
    ops = T.make_ops("torch", torch.device("cpu"))
    model, inputs, seen = T.GPT(cfg, ops), _batch_with_documents(2, 64), []
    for block in model.blocks:
        # x, r (None in the first block and where a skip joins), x0 in; x and the MLP output out
        block.register_forward_hook(lambda _, args, out: seen.append({t.dtype for t in (*args[:3], *out) if t is not None}))
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        loss = model(inputs, inputs, ops.attention_mask(T.document_starts(inputs), [32]))
    loss.backward()
    stream = torch.bfloat16 if autocast else torch.float32
    assert seen == [{stream}] * 4
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


def test_triton_ops_give_the_torch_ops_loss_and_gradients():
    """One tiny model, the same weights and batch, on each backend's ops (kernels/ under Triton's interpreter,
    the fused residual add (+ mix) + RMSNorm, QK-norm + rotary and the MLP with ReLU^2 in its matmul epilogues
    included): the same loss and every parameter's gradient, in fp32."""
    cfg = T.resolve_config(T.parse_config(["--track=cpu-tiny", "--num_layers=2", "--model_dim=32", "--num_heads=2",
                                           "--head_dim=16", "--mlp_ratio=2", "--value_embeds=1", "--unet_skips=1"]),
                           1, torch.device("cpu"))
    inputs, results = _batch_with_documents(1, 64), {}
    for backend in ("torch", "triton"):
        torch.manual_seed(0)
        ops = T.make_ops(backend, torch.device("cpu"))
        model = T.GPT(cfg, ops)
        assert all(block.mlp.relu2_mlp is ops.relu2_mlp for block in model.blocks)  # the MLPs run the backend's op
        for p in model.parameters():  # zero-initialised projections and head would leave most gradients 0
            torch.nn.init.normal_(p, std=0.2)
        loss = model(inputs, torch.roll(inputs, -1, 1), ops.attention_mask(T.document_starts(inputs), [24]))
        loss.backward()
        results[backend] = loss.detach(), {n: p.grad for n, p in model.named_parameters()}
    (loss_ref, grads_ref), (loss, grads) = results["torch"], results["triton"]
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-5)
    assert grads.keys() == grads_ref.keys()
    for name, g in grads.items():
        assert g is not None and g.abs().max() > 0, f"{name}: no gradient"
        torch.testing.assert_close(g, grads_ref[name], rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_a_kernel_file_that_does_not_import_is_an_error_not_a_fallback(backend, monkeypatch):
    import kernels

    monkeypatch.delattr(kernels, "norm", raising=False)  # `from kernels import norm` now looks in sys.modules,
    monkeypatch.setitem(sys.modules, "kernels.norm", None)  # which makes it raise ImportError
    with pytest.raises(T.ConfigError) as info:
        T.make_ops(backend, torch.device("cpu"))
    assert str(info.value).startswith(f"--kernels={backend}: kernels/ does not import (ModuleNotFoundError: ")
    assert "kernels.norm" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("backend, device, sources", [
    ("triton", "cpu", ("kernels.attention.flash_attention", "kernels.norm.rms_norm", "kernels.newton_schulz.newton_schulz")),
    ("torch", "cpu", ("torch SDPA with a dense mask", "kernels.norm.rms_norm_ref", "kernels.newton_schulz.newton_schulz_ref")),
    ("torch", "cuda", ("torch FlexAttention", "kernels.norm.rms_norm_ref", "kernels.newton_schulz.newton_schulz_ref")),
])
def test_each_backend_names_the_ops_it_uses(backend, device, sources):
    ops = T.make_ops(backend, torch.device(device))  # imports the kernel files
    assert (ops.sources["attention"], ops.sources["rms_norm"], ops.sources["newton_schulz"]) == sources
    for fused in ("add_rms_norm", "mix_rms_norm", "rms_norm_rotary"):
        assert ops.sources[fused] == sources[1].replace("rms_norm", fused)
    assert ops.sources["relu2_mlp"] == "kernels.mlp.relu2_mlp" + ("" if backend == "triton" else "_ref")
    assert ops.sources["fp8_head_loss"] == "kernels.head_loss.fp8_head_loss" + ("" if backend == "triton" else "_ref")
    assert ops.sources["head_loss"] == "kernels.head_loss.softcap_cross_entropy"  # both backends' bf16 head loss
    for op in ("rms_norm", "add_rms_norm", "mix_rms_norm", "rms_norm_rotary", "newton_schulz", "fp8_head_loss",
               "relu2_mlp", "head_loss"):
        module, name = ops.sources[op].rsplit(".", 1)
        assert getattr(ops, op) is getattr(sys.modules[module], name)


# ---------------------------------------------------------------------------------------------- Muon


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_torch_backend_uses_the_kernel_files_newton_schulz(device):
    """One Newton-Schulz reference, kernels/newton_schulz.py's, beside its kernel; Muon's update is its output."""
    ops = T.make_ops("torch", torch.device(device))
    assert ops.newton_schulz is newton_schulz_ref
    p = torch.nn.Parameter(torch.randn(2, 16, 24))
    before, p.grad = p.detach().clone(), torch.randn(2, 16, 24)
    Muon([p], lr=0.1, momentum=0.9, weight_decay=0.0, ns_steps=3, newton_schulz=ops.newton_schulz).step()
    nesterov = p.grad.clone().lerp_(torch.zeros_like(p.grad).lerp_(p.grad, 0.1), 0.9)
    torch.testing.assert_close(p.detach(), before - 0.1 * newton_schulz_ref(nesterov, 3), rtol=0, atol=1e-6)


def fill(template: str, tmp_path: Path) -> str:
    """A script template with the repository, the output folder and MICRO filled in."""
    return template.format(repo=str(REPO), out=str(tmp_path), micro=MICRO)


DIST_OVERLAP = """
import json, sys
sys.path.insert(0, {repo!r})
import torch
import torch.distributed as dist
import train_gpt as T

dist.init_process_group("gloo")
rank, cpu = dist.get_rank(), torch.device("cpu")
cfg = T.resolve_config(T.parse_config([*{micro}, "--grad_accum=2"]), 2, cpu)
env, ops = T.DistEnv(rank, rank, 2), T.make_ops("torch", cpu)
torch.manual_seed(0)
model = T.GPT(cfg, ops)
optimizers = T.make_optimizers(model, cfg, ops, env)
events, where = [], [None]  # (step, where, collective, its input's ndim) for every collective launched

def recorded(name, collective):
    def launch(*args, **kwargs):
        events.append((*where[0], name, args[-1].ndim))
        return collective(*args, **kwargs)
    return launch

for name, kind in [("all_reduce", "all_reduce"), ("reduce_scatter_single", "reduce_scatter"),
                   ("reduce_scatter_tensor", "reduce_scatter"), ("all_gather_single", "all_gather"),
                   ("all_gather_into_tensor", "all_gather")]:
    if hasattr(dist, name):
        setattr(dist, name, recorded(kind, getattr(dist, name)))
tensor_backward = torch.Tensor.backward

def backward(self, *args, **kwargs):
    step, micro = where[0]
    where[0] = step, f"backward {{micro}}"
    tensor_backward(self, *args, **kwargs)
    where[0] = step, micro + 1

torch.Tensor.backward = backward
g = torch.Generator().manual_seed(rank)
for step in range(2):
    where[0] = step, 0
    x = [torch.randint(0, 512, (cfg.batch_size, cfg.seq_len), generator=g) for _ in range(cfg.grad_accum)]
    T.train_step(model, ops, optimizers, [(t, t.roll(-1, 1)) for t in x], 32, step, cfg, env)
json.dump(events, open(f"{out}/events{{rank}}.json", "w"))
dist.destroy_process_group()
"""


def test_gradient_communication_starts_inside_the_backward(tmp_path):
    """An eager training step of 2 micro-steps on 2 processes: no collective in the first micro-step's backward;
    in the last one every gradient collective, Muon's reduce-scatters (of 3-d stacks) before Adam's (flat: the
    embedding, the value embedding, the head, then the scalars' all-reduce); after it, the loss's all-reduce,
    then Muon's all-gathers and Adam's."""
    run_two_processes(fill(DIST_OVERLAP, tmp_path), tmp_path)
    for rank in range(2):
        events = json.loads((tmp_path / f"events{rank}.json").read_text())
        for step in range(2):
            first, last, after = ([(name, ndim) for s, w, name, ndim in events if s == step and w == where]
                                  for where in ("backward 0", "backward 1", 2))
            assert first == [], f"step {step}: communication in the first micro-step's backward: {first}"
            assert last == [("reduce_scatter", 3)] * 2 + [("reduce_scatter", 1)] * 3 + [("all_reduce", 1)], last
            assert after == [("all_reduce", 0)] + [("all_gather", 3)] * 2 + [("all_gather", 1)] * 3, after


DIST_WARM_UP = """
import copy, json, sys
sys.path.insert(0, {repo!r})
import torch
import torch.distributed as dist
import train_gpt as T

dist.init_process_group("gloo")
rank, cpu = dist.get_rank(), torch.device("cpu")
cfg = T.resolve_config(T.parse_config([*{micro}, "--grad_accum=2", "--warmup_steps=2"]), 2, cpu)
env, ops = T.DistEnv(rank, rank, 2), T.make_ops("torch", cpu)

def build():
    torch.manual_seed(0)
    model = T.GPT(cfg, ops)
    return model, T.make_optimizers(model, cfg, ops, env)

g = torch.Generator().manual_seed(rank)
batches = [(t, t.roll(-1, 1)) for t in [torch.randint(0, 512, (cfg.batch_size, cfg.seq_len), generator=g)
                                        for _ in range(cfg.grad_accum)]]
model, optimizers = build()
initial = copy.deepcopy(model.state_dict())
T.warm_up(model, ops, optimizers, cfg, env, cpu, evaluate=None)
restored = [torch.equal(v, initial[k]) for k, v in model.state_dict().items()]
states = [len(optimizers.adam.state), len(optimizers.muon.state)]
losses = [T.train_step(model, ops, optimizers, batches, 32, 0, cfg, env).item()]
fresh, fresh_optimizers = build()
losses.append(T.train_step(fresh, ops, fresh_optimizers, batches, 32, 0, cfg, env).item())
same = [torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters())]
json.dump(dict(restored=restored, states=states, losses=losses, same=same), open(f"{out}/warm{{rank}}.json", "w"))
dist.barrier()  # both ranks finish before either tears gloo down: one alone can abort (SIGABRT) under load
dist.destroy_process_group()
"""


def test_the_warm_up_restores_the_sharded_state_on_two_processes(tmp_path):
    """Two processes: after the warm-up's two training steps the parameters are the initial ones and Adam's and
    Muon's sharded state is empty again, so the first step after it gives the bits a fresh model's first step
    gives."""
    run_two_processes(fill(DIST_WARM_UP, tmp_path), tmp_path)
    for rank in range(2):
        got = json.loads((tmp_path / f"warm{rank}.json").read_text())
        assert all(got["restored"]) and got["states"] == [0, 0], got
        assert got["losses"][0] == got["losses"][1] and all(got["same"]), got


# ---------------------------------------------------------------------------------------------- compiling


COMPILE_PRELUDE = """
import json, sys
sys.path.insert(0, {repo!r})
import torch
from torch._inductor.compile_fx import compile_fx
import train_gpt as T
from harness.runlog import RunWriter

cpu, phase, graphs = torch.device("cpu"), ["warm-up"], []  # graphs: [phase, symbolic sizes among its inputs]

def backend(gm, example_inputs):  # Inductor, counting graphs and the symbolic sizes of their inputs
    values = [node.meta.get("example_value") for node in gm.graph.nodes if node.op == "placeholder"]
    sizes = [s for v in values for s in (v.shape if isinstance(v, torch.Tensor) else [v])]
    graphs.append([phase[0], sum(isinstance(s, torch.SymInt) for s in sizes)])
    return compile_fx(gm, example_inputs)

compile = torch.compile
torch.compile = lambda fn, **kwargs: compile(fn, **{{**kwargs, "backend": backend}})
"""
COMPILED_RUN = COMPILE_PRELUDE + """
timed_run = T.timed_run

def timed(*args, **kwargs):
    phase[0] = "timed"
    return timed_run(*args, **kwargs)

T.timed_run = timed
argv = [*{micro}, *sys.argv[1:], "--compile=true", "--num_layers=1", "--value_embeds=0", "--unet_skips=0",
        "--seq_len=64", "--val_seq_len=128", "--num_steps=2", "--val_every=1"]
T.train(T.resolve_config(T.parse_config(argv), 1, cpu), T.DistEnv(), cpu, RunWriter({out!r}), T.RunState())
json.dump(graphs, open({out!r} + "/graphs.json", "w"))
"""
COMPILED_FLEX = COMPILE_PRELUDE + """
argv = [*{micro}, "--num_layers=1", "--value_embeds=0", "--unet_skips=0", "--seq_len=256", "--val_seq_len=512",
        "--batch_size=1"]
cfg = T.resolve_config(T.parse_config(argv), 1, cpu)
ops = T.make_ops("torch", torch.device("cuda"))  # FlexAttention, here on the CPU
model = T.compile_model(T.GPT(cfg, ops))
with torch.no_grad():  # FlexAttention has no backward on a CPU: forward only, as validation runs it
    for length in (256, 512, 256, 512):
        x = torch.randint(0, 512, (1, length))
        model(x, x, ops.attention_mask(T.document_starts(x), [128]))
json.dump(graphs, open({out!r} + "/graphs.json", "w"))
"""


def run_script(template: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Run a script (`fill`ed) as one process; it must succeed."""
    script = tmp_path / "script.py"
    script.write_text(fill(template, tmp_path))
    proc = subprocess.run([sys.executable, str(script), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_compiled_run_compiles_both_lengths_once_in_the_warm_up(shards, tmp_path):
    """A compiled run (the CPU torch path) that trains at 64 tokens and validates at 128: one static graph
    each, both compiled in the warm-up, none with a symbolic size, none in the timed loop (its batches have
    the warm-up's layout: strides, no aliasing). With torch.compile's default (automatic dynamic shapes), or
    with the warm-up's inputs aliasing its targets, the validation graph would have symbolic sizes and the
    timed loop would compile a third graph."""
    run_script(COMPILED_RUN, tmp_path, *data_args(shards))
    graphs = json.loads((tmp_path / "graphs.json").read_text())
    assert graphs == [["warm-up", 0], ["warm-up", 0]], graphs
    assert len(val_losses(tmp_path)) == 3


def test_compiled_triton_path_has_one_graph_for_every_window(shards, tmp_path):
    """Our attention kernel under torch.compile: the schedule's three window sizes (16, 48, 64) share one train
    graph and one validation graph, because the window reaches the op as a 0-d CPU tensor. A Python int
    would be baked into each graph: three of each (28 full-model compiles for fineweb-124m's warm-up)."""
    run_script(COMPILED_RUN, tmp_path, *data_args(shards), "--kernels=triton")
    graphs = json.loads((tmp_path / "graphs.json").read_text())
    assert graphs == [["warm-up", 0], ["warm-up", 0]], graphs
    assert len(val_losses(tmp_path)) == 3


def test_compiled_triton_path_with_the_records_elements_still_has_one_graph_each(shards, tmp_path):
    """The same with a short-window layer (two masks a step: 16/16, 48/16, 64/32), the 0.12 scale, v scaled by
    its λ and bf16 tables: still one train graph and one validation graph, both in the warm-up."""
    run_script(COMPILED_RUN, tmp_path, *data_args(shards), "--kernels=triton", "--layer_attention=S",
               "--attn_scale=0.12", "--v_lambda=true", "--embed_bf16=true")
    graphs = json.loads((tmp_path / "graphs.json").read_text())
    assert graphs == [["warm-up", 0], ["warm-up", 0]], graphs
    assert len(val_losses(tmp_path)) == 3


def test_compiled_flex_attention_validates_at_two_lengths(tmp_path):
    """FlexAttention (the CUDA torch path's attention) compiled at two lengths, forward only as in validation:
    one static graph per length. With automatic dynamic shapes the second length would be a symbolic
    one, which Inductor's CPU FlexAttention template fails to compile (a C++ error)."""
    run_script(COMPILED_FLEX, tmp_path)
    assert json.loads((tmp_path / "graphs.json").read_text()) == [["warm-up", 0], ["warm-up", 0]]


# ---------------------------------------------------------------------------------------------- whole runs


@pytest.fixture(scope="module")
def micro_run(shards, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "micro"
    assert_ok(run_trainer(run_dir, *MICRO, *data_args(shards)))
    return run_dir


def test_inductor_caches_one_folder_per_version_of_the_kernels(micro_run, tmp_path):
    """A graph compiled against another version of a custom op would replay its output sizes and strides."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    assert f"inductor cache: {T.inductor_cache_dir()}\n" in (micro_run / "train.log").read_text()
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    for folder, fake in (("a", "x.new_empty(4)"), ("b", "x.new_empty(4).t()")):
        (tmp_path / folder / "op.py").write_text(f"def fake(x):\n    return {fake}\n")
        (tmp_path / folder / "notes.txt").write_text(folder)  # not a kernel file
    a, b = T.inductor_cache_dir(str(tmp_path / "a")), T.inductor_cache_dir(str(tmp_path / "b"))
    assert a != b and os.path.dirname(a) == os.path.dirname(b) == default_cache_dir()
    (tmp_path / "b" / "op.py").write_text((tmp_path / "a" / "op.py").read_text())
    assert T.inductor_cache_dir(str(tmp_path / "b")) == a


def test_the_inductor_cache_folder_of_a_missing_or_unreadable_kernels_folder(tmp_path):
    # Inductor's own folder, not a traceback before the run's own checks
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "op.py").mkdir()  # open() fails on it as on a file without read permission (root reads those)
    assert T.inductor_cache_dir(str(tmp_path / "missing")) == T.inductor_cache_dir(str(tmp_path / "k")) \
        == default_cache_dir()


def test_an_empty_inductor_cache_variable_is_no_folder(shards, tmp_path):
    # Inductor reads "" as the working directory: its cache would land in the checkout
    argv = [*MICRO, *data_args(shards), "--num_steps=1", "--val_every=1"]
    assert_ok(run_trainer(tmp_path / "run", *argv, extra_env={"TORCHINDUCTOR_CACHE_DIR": ""}))
    assert f"inductor cache: {T.inductor_cache_dir()}\n" in (tmp_path / "run" / "train.log").read_text()


def test_a_few_steps_lower_the_loss(micro_run):
    losses = val_losses(micro_run)
    assert len(losses) == 3 and losses[-1] < losses[0] - 1.0, losses


def test_events_follow_the_runlog_contract(micro_run):
    events, _ = read_events(micro_run)
    kinds = [e["event"] for e in events]
    assert kinds[:2] == ["config", "meta"] and kinds[-1] == "result"
    assert kinds.count("step") == 6 and kinds.count("val") == 3
    config, meta, result = events[0], events[1], events[-1]
    assert config["track"] == "cpu-tiny" and config["config"]["num_layers"] == 2 and config["config"]["grad_accum"] == 1
    assert meta["world_size"] == 1 and meta["hardware"]["kind"] in ("cpu", "cuda")
    assert set(meta) >= {"code_hash", "hardware", "versions", "git"} and meta["versions"]["torch"] == torch.__version__
    assert meta["code_hash"] == (micro_run / SNAPSHOT_DIR / HASH_FILE).read_text().strip()
    assert (micro_run / SNAPSHOT_DIR / "train_gpt.py").read_text() == (REPO / "train_gpt.py").read_text()
    step = next(e for e in events if e["event"] == "step")
    assert set(step) == {"event", "time", "step", "train_time_ms", "step_avg_ms", "train_loss", "tokens_per_s", "mfu"}
    assert set(result) == {"event", "time", "status", "reached_target", "target_val_loss", "stop_at_target", "time_to_target_ms",
                           "steps", "tokens", "final_val_loss", "train_time_ms", "peak_memory_mb", "tokens_per_s", "mfu", "error"}
    assert result["status"] == "ok" and result["reached_target"] is False and result["time_to_target_ms"] is None
    assert result["steps"] == 6 and result["tokens"] == 6 * 4 * 64 and result["error"] is None
    assert result["final_val_loss"] == val_losses(micro_run)[-1]


def test_train_log_uses_the_speedrun_line_format(micro_run):
    lines = (micro_run / "train.log").read_text().splitlines()
    step_lines = [line for line in lines if line.startswith("step:")]
    assert len(step_lines) == 9
    for line in step_lines:
        assert (VAL_LINE if "val_loss" in line else STEP_LINE).match(line), line
    assert step_lines[0].startswith("step:0/6 val_loss:") and step_lines[-1].startswith("step:6/6 val_loss:")


def test_same_seed_gives_identical_val_losses(micro_run, shards, tmp_path):
    assert_ok(run_trainer(tmp_path / "again", *MICRO, *data_args(shards)))
    assert val_losses(tmp_path / "again") == val_losses(micro_run)


def test_a_run_goes_its_whole_schedule_past_the_target(micro_run, shards, tmp_path):
    """Fixed-length runs by default: reaching the target early is reported, not a reason to stop."""
    target = val_losses(micro_run)[1] + 1e-3  # reached at the second validation (step 3 of 6)
    assert_ok(run_trainer(tmp_path / "full", *MICRO, *data_args(shards), f"--target_val_loss={target}"))
    result = result_of(tmp_path / "full")
    assert result["reached_target"] is True and result["steps"] == 6 and result["stop_at_target"] is False
    vals = [e for e in read_events(tmp_path / "full")[0] if e["event"] == "val"]
    assert result["time_to_target_ms"] == vals[1]["train_time_ms"] < result["train_time_ms"] == vals[-1]["train_time_ms"]
    assert val_losses(tmp_path / "full") == val_losses(micro_run)  # the target changes nothing in the training


def test_stop_at_target_is_explicit_and_written_down(micro_run, shards, tmp_path):
    target = val_losses(micro_run)[1] + 1e-3
    assert_ok(run_trainer(tmp_path / "early", *MICRO, *data_args(shards), f"--target_val_loss={target}",
                          "--stop_at_target=true"))
    result = result_of(tmp_path / "early")
    assert result["reached_target"] is True and result["steps"] == 3 and result["stop_at_target"] is True
    assert result["time_to_target_ms"] == result["train_time_ms"] > 0
    config = next(e for e in read_events(tmp_path / "early")[0] if e["event"] == "config")["config"]
    assert config["stop_at_target"] is True
    assert "stopped at the target (--stop_at_target)" in (tmp_path / "early" / "train.log").read_text()


@pytest.mark.parametrize("accum_one, accum_two", [(2, 1), (4, 2)])
def test_two_processes_match_one_with_gradient_accumulation(shards, tmp_path, accum_one, accum_two):
    """One global batch per step, on 1 process of accum_one micro-steps or on 2 of accum_two (with 2, the gradient
    hooks must wait for the last micro-step): the same train and val losses at every step, to fp32 rounding.
    Three layers: the middle one has no value embedding (its parameters must not break the communication)."""
    args = [*MICRO, *data_args(shards), "--num_steps=6", "--val_every=3", "--num_layers=3"]
    assert_ok(run_trainer(tmp_path / "one", *args, f"--grad_accum={accum_one}"))
    assert_ok(run_trainer(tmp_path / "two", *args, f"--grad_accum={accum_two}", nproc=2))
    assert read_events(tmp_path / "two")[0][1]["world_size"] == 2
    assert result_of(tmp_path / "one")["tokens"] == result_of(tmp_path / "two")["tokens"] == 6 * accum_one * 4 * 64
    for losses in (train_losses, val_losses):
        one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
        assert len(one) == (6 if losses is train_losses else 3)
        np.testing.assert_allclose(two, one, rtol=0, atol=2e-4)
    assert one[-1] < one[0] - 0.5


def test_triton_backend_matches_torch(shards, tmp_path):
    """A one-layer run on kernels/ (under Triton's interpreter: kept tiny) follows the torch run's curve, and
    says in its log that it ran on the kernels."""
    args = [*MICRO, *data_args(shards), "--num_layers=1", "--model_dim=32", "--head_dim=16", "--mlp_ratio=2",
            "--value_embeds=0", "--unet_skips=0", "--ns_steps=2", "--num_steps=2", "--val_every=1",
            "--val_tokens=256", "--warmup_steps=0"]
    assert_ok(run_trainer(tmp_path / "torch", *args, "--kernels=torch"))
    assert_ok(run_trainer(tmp_path / "triton", *args, "--kernels=triton"))
    assert ("ops: attention=kernels.attention.flash_attention, rms_norm=kernels.norm.rms_norm, "
            "newton_schulz=kernels.newton_schulz.newton_schulz") in (tmp_path / "triton" / "train.log").read_text()
    torch_losses, triton_losses = val_losses(tmp_path / "torch"), val_losses(tmp_path / "triton")
    assert torch_losses[-1] < torch_losses[0] - 0.1
    np.testing.assert_allclose(triton_losses, torch_losses, rtol=0, atol=1e-3)


# ---------------------------------------------------------------------------------------------- failures


def test_unknown_override_is_one_line_exit_2(tmp_path):
    proc = run_trainer(tmp_path / "r", "--track=cpu-tiny", "--num_stepz=3")
    assert one_error_line(proc, 2) == "error: unknown option --num_stepz (did you mean --num_steps?)"
    assert not (tmp_path / "r").exists()


def test_bad_value_is_one_line_exit_2(tmp_path):
    proc = run_trainer(tmp_path / "r", "--track=cpu-tiny", "--seq_len=long")
    assert one_error_line(proc, 2) == "error: --seq_len=long: expected int"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_gpu_track_without_a_gpu_is_one_line_exit_2(tmp_path):
    proc = run_trainer(tmp_path / "r", "--track=fineweb-124m")
    assert "needs a CUDA GPU" in one_error_line(proc, 2) and "--device=cpu" in proc.stderr


def test_missing_data_is_one_line_exit_1_with_an_error_result(tmp_path):
    proc = run_trainer(tmp_path / "r", *MICRO, f"--train_files={tmp_path}/nothing_*.bin")
    assert f"{tmp_path}/nothing_*.bin: no shards match" in one_error_line(proc, 1)
    result = result_of(tmp_path / "r")
    assert result["status"] == "error" and "no shards match" in result["error"] and result["steps"] == 0


def test_an_error_under_torchrun_is_one_line_from_rank_0(tmp_path):
    """Every rank fails on the same missing data; rank 0 alone says so (torchrun adds its own report after)."""
    proc = run_trainer(tmp_path / "r", *MICRO, f"--train_files={tmp_path}/nothing_*.bin", nproc=2)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 1 and len(errors) == 1 and "no shards match" in errors[0], proc.stderr[-2000:]


def test_too_little_data_fails_before_training(shards, tmp_path):
    proc = run_trainer(tmp_path / "r", *MICRO, *data_args(shards), "--num_steps=100000")
    assert "too little data" in one_error_line(proc, 1)
    assert result_of(tmp_path / "r")["status"] == "error"


def stopped_run(shards, tmp_path, *signums, ignored=(), env=(), launcher=()) -> tuple[subprocess.Popen, str]:
    """A long run (under `launcher`, e.g. torchrun's module) sent `signums` once its timed loop runs, with the
    signals `ignored` ignored as it starts (nohup ignores SIGHUP); the process ended and its stderr."""
    cmd = [sys.executable, *launcher, "train_gpt.py", f"--run_dir={tmp_path / 'r'}", *MICRO, *data_args(shards),
           "--num_steps=10000", "--val_every=10000", "--train_epochs=1000"]

    def dispositions():  # SIGINT at its default: a shell's background job ignores it, and Python then would too
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        for signum in ignored:
            signal.signal(signum, signal.SIG_IGN)

    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **dict(env)}, preexec_fn=dispositions)
    try:
        for line in proc.stdout:
            if line.startswith("step:2/"):
                break
        for signum in signums:
            proc.send_signal(signum)
            time.sleep(1)
        return proc, proc.communicate(timeout=120)[1]
    finally:
        proc.kill()


@pytest.mark.parametrize("signum, how", [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM"),
                                         (signal.SIGHUP, "SIGHUP")])
def test_a_stop_signal_is_one_line_and_recorded_as_interrupted(shards, tmp_path, signum, how):
    proc, err = stopped_run(shards, tmp_path, signum)
    assert proc.returncode == 128 + signum and len(err.splitlines()) == 1, err
    assert re.fullmatch(rf"error: interrupted \({how}\) after \d+ of 10000 steps; the run's events are in \S+\n", err)
    result = result_of(tmp_path / "r")
    assert result["status"] == "interrupted" and result["steps"] >= 2 and result["error"].startswith(f"interrupted ({how})")
    assert read_events(tmp_path / "r")[1] == [] and (tmp_path / "r" / "train.log").read_text().endswith("\n")


def test_a_sighup_nohup_ignores_stays_ignored(shards, tmp_path):
    """Under nohup a closed terminal's SIGHUP does not stop the run; Ctrl-C still does."""
    proc, err = stopped_run(shards, tmp_path, signal.SIGHUP, signal.SIGINT, ignored=[signal.SIGHUP])
    assert proc.returncode == 130 and result_of(tmp_path / "r")["error"].startswith("interrupted (Ctrl-C)"), err


def test_under_torchrun_sigterm_keeps_its_default(shards, tmp_path):
    """torchrun stops every worker with SIGTERM when one fails: a worker ends at once, and records no interrupt."""
    proc, err = stopped_run(shards, tmp_path, signal.SIGTERM, env={"TORCHELASTIC_RUN_ID": "test"})
    assert proc.returncode == -signal.SIGTERM and "result" not in [e["event"] for e in read_events(tmp_path / "r")[0]]


def test_torchrun_stopped_by_ctrl_c_is_one_line_from_rank_0(shards, tmp_path):
    """torchrun passes Ctrl-C's SIGINT to every rank; each records the run as interrupted, rank 0 alone says so."""
    proc, err = stopped_run(shards, tmp_path, signal.SIGINT,
                            launcher=["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"])
    assert len([line for line in err.splitlines() if line.startswith("error: interrupted (Ctrl-C)")]) == 1, err
    assert result_of(tmp_path / "r")["status"] == "interrupted"


def test_a_shard_both_trained_and_validated_on_is_refused_before_the_clock(shards):
    """A train glob that also matches the val shard (fineweb_*.bin) would measure the val loss on trained tokens."""
    cfg = T.parse_config([*MICRO, f"--train_files={shards}/micro_*.bin", f"--val_files={shards}/micro_val_000000.bin"])
    with pytest.raises(T.DataError) as info:
        T.check_data(cfg, T.DistEnv())
    assert str(info.value) == (f"{os.path.realpath(shards)}/micro_val_000000.bin: both a training and a validation "
                               f"shard (--train_files={shards}/micro_*.bin matches a --val_files={shards}/"
                               "micro_val_000000.bin shard): the val loss would be of trained tokens")


def test_vocab_smaller_than_the_data_is_refused_before_the_clock(shards, tmp_path):
    proc = run_trainer(tmp_path / "r", *MICRO, *data_args(shards), "--vocab_size=512")
    line = one_error_line(proc, 1)
    assert re.fullmatch(rf"error: {shards}/micro_\w+_000000.bin: token id 50256 >= vocab size 512 \(first at position \d+\)", line), line
    assert "warm-up" not in proc.stdout and result_of(tmp_path / "r")["status"] == "error"


def test_a_vocabulary_without_bos_trains_on_shards_of_its_ids(tmp_path):
    """A vocabulary too small to hold <|endoftext|> (each row is then one document) over shards of its ids: the
    warm-up's random tokens stay inside it too."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        write_shard(tmp_path / f"{split}.bin", rng.integers(0, 128, 2000))
    proc = run_trainer(tmp_path / "r", *MICRO, f"--train_files={tmp_path}/train.bin", f"--val_files={tmp_path}/val.bin",
                       "--vocab_size=128", "--num_steps=2", "--val_every=2")
    assert_ok(proc)
    assert result_of(tmp_path / "r")["status"] == "ok"


def test_nan_loss_stops_at_once_as_diverged(shards, tmp_path):
    proc = run_trainer(tmp_path / "r", *MICRO, *data_args(shards), "--num_steps=20", "--val_every=20",
                       "--muon_lr=1e30", "--adam_embed_lr=1e30", "--adam_head_lr=1e30", "--logit_softcap=0")
    line = one_error_line(proc, 3)
    assert (match := re.match(r"error: diverged: train loss nan at step (\d+) ", line)), line
    bad_step = int(match.group(1))
    result = result_of(tmp_path / "r")
    assert result["status"] == "diverged" and "nan" in result["error"] and result["steps"] < 20
    # losses are read one step late (no host sync per step): the run stops one step after the NaN at most
    assert result["steps"] in (bad_step, bad_step + 1)
    events, _ = read_events(tmp_path / "r")
    assert [e["step"] for e in events if e["event"] == "step"] == list(range(1, bad_step))


def test_a_nan_validation_loss_after_finite_train_losses_is_diverged(shards, tmp_path):
    """The last step's update overflows the head (fp32 weights near 1e38): every train loss is finite, the
    validation after it is not."""
    proc = run_trainer(tmp_path / "r", *MICRO, *data_args(shards), "--num_steps=1", "--val_every=1",
                       "--adam_head_lr=1e38", "--logit_softcap=0")
    assert one_error_line(proc, 3) == "error: diverged: validation loss nan at step 1"
    assert all(math.isfinite(loss) for loss in train_losses(tmp_path / "r"))
    assert result_of(tmp_path / "r")["status"] == "diverged"


# ---------------------------------------------------------------------------------------------- GPU only


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_a_compiled_training_step_never_waits_for_the_gpu(kernels):
    """After compilation, a training step and the queuing of its loss make no host sync (a sync would leave
    the GPU idle while the next step is launched): CUDA's sync debug mode turns any into an error."""
    device = torch.device("cuda", 0)
    argv = ["--track=fineweb-124m", f"--kernels={kernels}", "--grad_accum=2", "--num_layers=2", "--model_dim=128",
            "--num_heads=2", "--head_dim=64", "--value_embeds=1", "--unet_skips=1", "--seq_len=1024",
            "--window_min=128", "--window_max=256", "--layer_attention=S-"]
    cfg = T.resolve_config(T.parse_config(argv), 1, device)
    ops = T.make_ops(kernels, device)
    model = T.GPT(cfg, ops).to(device)
    optimizers, env = T.make_optimizers(model, cfg, ops, T.DistEnv()), T.DistEnv()
    compiled, losses = T.compile_model(model), T.LaggedLosses(device)
    x = torch.randint(0, BOS_ID + 1, (cfg.batch_size, cfg.seq_len))
    batches = [[T.to_device((x, x.roll(-1, 1)), device) for _ in range(cfg.grad_accum)] for _ in range(6)]
    for step in range(3):  # compile and warm up
        T.train_step(compiled, ops, optimizers, batches[step], 128, step, cfg, env)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(3, 6):
            losses.push(T.train_step(compiled, ops, optimizers, batches[step], 128, step, cfg, env), step=step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert [fields["step"] for _, fields in losses.ready()] == [3, 4, 5]


# ---------------------------------------------------------------------------------------------- the README's recipe


def test_the_readmes_recipe_table_is_the_fineweb_defaults():
    """README.md's "The fineweb-124m recipe" table names the Config value of each record element; every value is
    fineweb-124m's, and every field of the recipe (all but how and where a run runs) is in the table."""
    from typing import get_type_hints

    from harness.overrides import parse_value

    section = (REPO / "README.md").read_text().split("## The fineweb-124m recipe\n")[1].split("\n## ")[0]
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0][2] == "Config" and all(len(row) == 4 for row in rows), rows[0]
    listed = [re.findall(r"`(\w+)=([^`]*)`", row[2]) for row in rows[1:]]
    assert all(listed), [row[0] for row, pairs in zip(rows[1:], listed) if not pairs]  # a value for every element
    cfg, kinds = T.parse_config(["--track=fineweb-124m"]), get_type_hints(T.Config)
    table = {name: parse_value(name, text, kinds[name]) for pairs in listed for name, text in pairs}
    assert table == {name: getattr(cfg, name) for name in table}
    run_fields = {"track", "seed", "kernels", "device", "compile", "run_dir", "train_files", "train_epochs",
                  "val_files", "stop_at_target"}
    assert set(kinds) - run_fields == set(table), set(kinds) - run_fields ^ set(table)
