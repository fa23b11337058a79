"""Helpers shared by the tests: token data, comparisons for the kernel tests, speedrun logs and fake
trainers for the harness tests.

`docs_stream` and `synthetic_tokens` write shards' worth of documents (BOS first). Two comparison rules,
both from the kernels this field trusts:
- `assert_close`: a dtype tolerance table (Liger-Kernel's habit), failing with where and how much.
- `assert_error_within`: flash-attention's rule for low precision: our error against an fp32
  reference is at most `factor` x PyTorch's own error in the same dtype on the same inputs, plus atol.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
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


# ----------------------------------------------------------------------------------------------
# Speedrun logs in modded-nanogpt's published format (its source code, versions, nvidia-smi, step lines)

# The source a modded-nanogpt log starts with (its f-strings mention "step:", as the real one's do).
CODE = '''\
import os
import sys
with open(sys.argv[0]) as f:
    code = f.read()  # read the code of this file ASAP, for logging

def print0(s, console=False):
    print(s)

for step in range(train_steps + 1):
    print0(f"step:{step}/{train_steps} val_loss:{val_loss:.4f} train_time:{training_time_ms:.0f}ms", console=True)
'''
SEP = "=" * 100


def gpu_table(n: int) -> str:
    rows = "".join(f"|   {i}  NVIDIA H100 80GB HBM3          On  |   00000000:{i:02X}:00.0 Off |                    0 |\n"
                   f"| N/A   54C    P0            147W /  700W |    1521MiB /  81559MiB |      0%      Default |\n"
                   for i in range(n))
    return ("Fri Jul 17 12:22:51 2026\n"
            "+-----------------------------------------------------------------------------------------+\n"
            "| NVIDIA-SMI 580.159.04             Driver Version: 580.159.04     CUDA Version: 13.0     |\n"
            "|=========================================+========================+======================|\n"
            + rows +
            "| Processes:                                                                              |\n"
            "|    0   N/A  N/A          979223      C   ...pt-challenge-py312/bin/python       1512MiB |\n")


HEADER = (f"{SEP}\nRunning Python 3.12.3 (main, Jan 22 2026, 20:57:42) [GCC 13.3.0]\n"
          "Running PyTorch 2.10.0+cu128 compiled for CUDA 12.8\nRunning Triton version 3.6.0\n"
          + gpu_table(8) + f"{SEP}\nCompiling model and warming up kernels\n")
TOTAL = 1390


def steps(final_ms: int, final_loss: float, *, cut_at: int | None = None, nan_from: int | None = None) -> str:
    """Step lines as modded-nanogpt prints them: validation at 0, every 250 steps and the last one."""
    lines = []
    for step in (0, 1, 2, 250, 251, 500, 750, 1000, 1250, 1389, TOTAL):
        if cut_at is not None and step > cut_at:
            break
        t = round(final_ms * step / TOTAL)
        if step % 250 == 0 or step == TOTAL:
            loss = final_loss + 7.5 * (1 - step / TOTAL) ** 3
            text = "nan" if nan_from is not None and step >= nan_from else f"{loss:.4f}"
            lines.append(f"step:{step}/{TOTAL} val_loss:{text} train_time:{t}ms step_avg:{t / max(step, 1):.2f}ms")
        else:
            lines.append(f"step:{step}/{TOTAL} train_time:{t}ms step_avg:{t / max(step, 1):.2f}ms")
    if cut_at is None:
        lines.append("peak memory allocated: 30908 MiB reserved: 46472 MiB")
    return "\n".join(lines) + "\n"


def modded_log(final_ms=80694, final_loss=3.2775, code=CODE, **kw) -> str:
    return code + HEADER + steps(final_ms, final_loss, **kw)


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


def run_ingest(where: dict, *inputs, track="modded-nanogpt", name="imported", extra=()) -> int:
    """harness.ingest's command line, with where = {"records": ..., "runs": ...}."""
    from harness import ingest

    return ingest.main(["--track", track, "--name", name, "--records", str(where["records"]), "--runs-dir",
                        str(where["runs"]), *extra, *map(str, inputs)])


def rows(where: dict) -> list[dict]:
    """The runs log's rows as written (load_records would make a number column with gaps float)."""
    import json

    from harness.records import load_records

    frame, problems = load_records(where["records"])
    assert problems == []
    return [json.loads(line) for line in (where["records"] / "runs.jsonl").read_text().splitlines()]


# The head of a modded-nanogpt log and its step lines, as harness.logs' tests read them
LOG_HEAD = '''\
import os
def print0(s, console=False):
    pass
for step in range(train_steps + 1):
    last_step = (step == train_steps)
    if last_step or (val_loss_every > 0 and step % val_loss_every == 0):
        print0(f"step:{step}/{train_steps} val_loss:{val_loss:.4f} train_time:{training_time_ms:.0f}ms", console=True)
        s = "step:1/2 val_loss:0.1 train_time:1ms"  # a string in the code, indented
# step:3/4 val_loss:0.2 train_time:2ms   <- a comment, not at the line start either
====================================================================================================
Running Python 3.12.7 (main, Oct  1 2024, 08:52:12) [GCC 13.2.0]
Running PyTorch 2.6.0.dev20241203+cu124 compiled for CUDA 12.4
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: 12.4     |
'''

LOG_STEPS = '''\
step:0/1390 val_loss:10.8258 train_time:0ms step_avg:0.03ms
step:1/1390 train_time:28ms step_avg:28.45ms
step:2/1390 train_time:85ms step_avg:42.60ms
step:125/1390 val_loss:4.3817 train_time:7024ms step_avg:56.19ms
step:1250/1390 val_loss:3.3062 train_time:71533ms step_avg:57.23ms
step:1389/1390 train_time:79478ms step_avg:57.22ms
step:1390/1390 val_loss:3.2775 train_time:79532ms step_avg:57.22ms
peak memory allocated: 22045 MiB reserved: 24218 MiB
'''


# The published statistics of modded-nanogpt's record 2026-07-17_FP8DownProjection (its statistics.md):
# baseline and this_pr times and losses of 13 runs each, and the figures it prints.
FP8_BASE_T = [80.610, 80.710, 80.678, 80.720, 80.747, 80.693, 80.659, 80.694, 80.763, 80.795, 80.818, 80.840, 80.745]
FP8_NEW_T = [79.536, 79.740, 79.814, 79.658, 79.593, 79.629, 80.231, 79.653, 79.641, 79.532, 79.539, 79.682, 79.656]
FP8_BASE_L = [3.2817, 3.2796, 3.2778, 3.2802, 3.2775, 3.2767, 3.2758, 3.2821, 3.2780, 3.2768, 3.2769, 3.2775, 3.2766]


# A fake train_gpt.py (tests/test_harness_fakes.py checks that it keeps the trainer's contract)

FAKE_TRAINER = '''\
"""Fake trainer ({flavor}): modded-nanogpt step lines, events.jsonl, a code snapshot."""
import json
import math
import random
import sys
import time
from pathlib import Path

from harness.runlog import TRAIN_LOG_FILE, EventLog
from harness.snapshot import snapshot_code

# Loss at validation step s of S: end + (start - end) * exp(-5 s / S) + a per-seed offset.
CONFIG = dict(steps=20, val_every=5, target_val_loss=3.28, start_loss=6.0, end_loss=3.2, loss_noise=0.001,
              step_ms=10.0, time_noise=0.01, sleep=0.0, nan_at=-1, crash_at=-1, hang_at=-1, tokens_per_step=1024,
              stop_at_target=0, vocab_size=50304)


def main(argv):
    track, seed, run_dir, cfg = None, None, None, dict(CONFIG)
    print_config = "--print_config" in argv  # train_gpt.py's: the resolved config as one JSON line, no training
    for arg in (a for a in argv if a != "--print_config"):
        key, _, value = arg[2:].partition("=")
        if key == "track":
            track = value
        elif key == "seed":
            seed = int(value)
        elif key == "run_dir":
            run_dir = Path(value)
        elif key in cfg:
            cfg[key] = type(cfg[key])(value)
        else:
            print(f"error: unknown option {{arg}}", file=sys.stderr)
            return 2
    if print_config:
        print(json.dumps({{**cfg, "track": track, "seed": seed}}))
        return 0
    run_dir.mkdir(parents=True, exist_ok=True)
    events = EventLog(run_dir)
    console = open(run_dir / TRAIN_LOG_FILE, "w")

    def out(line):
        print(line, flush=True)
        console.write(line + "\\n")
        console.flush()

    digest = snapshot_code(run_dir, root=Path(__file__).parent)
    events.write("config", track=track, config={{**cfg, "seed": seed, "run_dir": str(run_dir)}})
    events.write("meta", code_hash=digest, world_size=1,
                 hardware={{"kind": "cpu", "cpu": "Fake CPU", "cpu_count": 2, "peak_flops": None}},
                 versions={{"python": sys.version.split()[0], "torch": "0.fake", "triton": None, "cuda": None}},
                 git={{"commit": "0" * 40, "dirty": False}})
    out("fake trainer ({flavor}) starting")
    rng = random.Random(seed)
    step_ms = cfg["step_ms"] * (1 + cfg["time_noise"] * rng.gauss(0, 1))
    offset = cfg["loss_noise"] * rng.gauss(0, 1)
    steps, t, ttt, loss = cfg["steps"], 0.0, None, None
    tps = cfg["tokens_per_step"] / (step_ms / 1000)
    for step in range(steps + 1):
        t = step * step_ms
        if step == cfg["hang_at"]:
            while True:
                time.sleep(0.05)
        if step == cfg["crash_at"]:
            raise RuntimeError("fake crash")
        avg = t / max(step, 1)
        events.write("step", step=step, train_time_ms=t, step_avg_ms=avg, train_loss=None, tokens_per_s=tps, mfu=None)
        if step % cfg["val_every"] == 0 or step == steps:
            loss = cfg["end_loss"] + (cfg["start_loss"] - cfg["end_loss"]) * math.exp(-5 * step / steps) + offset
            if 0 <= cfg["nan_at"] <= step:
                loss = float("nan")
            out(f"step:{{step}}/{{steps}} val_loss:{{loss:.4f}} train_time:{{t:.0f}}ms step_avg:{{avg:.2f}}ms "
                f"tokens_per_s:{{tps:.0f}} mfu:n/a")
            events.write("val", step=step, val_loss=loss, train_time_ms=t)
            if not math.isfinite(loss):
                events.write("result", status="diverged", reached_target=False,
                             target_val_loss=cfg["target_val_loss"], time_to_target_ms=None, steps=step,
                             tokens=step * cfg["tokens_per_step"], final_val_loss=None, train_time_ms=t,
                             peak_memory_mb=None, tokens_per_s=tps, mfu=None, error="val loss is not finite")
                return 1
            if ttt is None and loss <= cfg["target_val_loss"]:
                ttt = t
                if cfg["stop_at_target"]:
                    steps = step
                    break
        else:
            out(f"step:{{step}}/{{steps}} train_time:{{t:.0f}}ms step_avg:{{avg:.2f}}ms "
                f"tokens_per_s:{{tps:.0f}} mfu:n/a")
        time.sleep(cfg["sleep"])
    events.write("result", status="ok", reached_target=ttt is not None, target_val_loss=cfg["target_val_loss"],
                 time_to_target_ms=ttt, steps=steps, tokens=steps * cfg["tokens_per_step"], final_val_loss=loss,
                 train_time_ms=t, peak_memory_mb=None, tokens_per_s=tps, mfu=None, error=None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
'''


def write_fake_trainer(folder: Path, flavor: str = "a") -> Path:
    """Write the fake as folder/train_gpt.py and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train_gpt.py"
    path.write_text(FAKE_TRAINER.format(flavor=flavor))
    return path


def run_fake(script: Path, run_dir: Path, *args: str, seed: int = 0) -> subprocess.CompletedProcess:
    from harness.snapshot import REPO_ROOT

    env_path = str(REPO_ROOT)
    cmd = [sys.executable, str(script), "--track=cpu-tiny", f"--seed={seed}", f"--run_dir={run_dir}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env={"PYTHONPATH": env_path, "PATH": ""}, timeout=60)


# Stopping harness commands with signals, and where a run cannot be recorded (harness.run's tests)

def signal_at_step_5(cmd: list[str], sig: int = signal.SIGINT, runs_dir=None) -> str:
    """Start a harness command, send it `sig` once its trainer has echoed the step-5 validation (the trainers
    here then hang at step 7) and, given `runs_dir`, written its val event, and return what it printed after;
    it must exit 128 + sig."""
    from harness.snapshot import REPO_ROOT

    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:
        if line.startswith("step:5/20 val_loss:"):
            break
    else:
        pytest.fail(f"the run never reached step 5 (exit {proc.wait()})")
    deadline = time.monotonic() + 30
    while runs_dir is not None and not any('"event": "val", "time": ' in line and '"step": 5,' in line
                                           for events in runs_dir.glob("*/events.jsonl")
                                           for line in events.read_text().splitlines()):
        assert time.monotonic() < deadline, "no step-5 val event"
        time.sleep(0.05)
    proc.send_signal(sig)
    rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + sig, rest
    return rest


def ctrl_c_at_step_5(cmd: list[str]) -> str:
    return signal_at_step_5(cmd, signal.SIGINT)


def processes_running(path) -> list[int]:
    """Pids of the processes whose command line names `path` or whose working directory is `path`."""
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                named = str(path).encode() in f.read()
            if named or os.readlink(f"/proc/{entry}/cwd") == str(path):
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def unwritable_destinations(tmp_path):
    """(case id, --runs-dir, --records) where a run's folder or its row cannot be written."""
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder\n")
    runs_log_is_a_folder = tmp_path / "records_with_a_folder"
    (runs_log_is_a_folder / "runs.jsonl").mkdir(parents=True)
    cases = [("records-is-a-file", tmp_path / "runs", a_file),
             ("runs-log-is-a-folder", tmp_path / "runs", runs_log_is_a_folder),
             ("runs-dir-is-a-file", a_file, tmp_path / "records"),
             ("runs-dir-under-a-file", a_file / "runs", tmp_path / "records")]
    if os.geteuid() != 0:  # root writes into a read-only folder anyway
        read_only = tmp_path / "read_only"
        read_only.mkdir(mode=0o555)
        cases.append(("records-read-only", tmp_path / "runs", read_only))
    return cases


def run_two_processes(script: str, folder: Path) -> None:
    """Run a Python script's text as 2 gloo processes under torchrun (one thread each); it must succeed."""
    path = folder / "two_processes.py"
    path.write_text(script)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(path)]
    proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]


# Adam parameters for optim.ShardedAdam's tests, as (shape, dtype, sharded, read by the loss): sizes awkward for
# 2 ranks (21 and 45 elements, padded to 22 and 46; 1 element, so rank 1's slice is empty), sizes 2 divides
# (gathered in place), bf16 (stepped through fp32 masters), parameters the loss never reads (no gradient on any
# rank), an empty one. The whole (unsharded) ones come first, so their bucket is the last to launch.
ADAM_PARAMS = [((3,), "float32", False, True), ((2,), "float32", False, False), ((0,), "float32", False, True),
               ((4,), "bfloat16", False, True), ((5, 2), "float32", True, False), ((7, 3), "float32", True, True),
               ((10, 4), "float32", True, True), ((1,), "float32", True, True), ((9, 5), "bfloat16", True, True),
               ((6, 8), "bfloat16", True, True)]


def adam_params() -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s).to(getattr(torch, d))) for s, d, _, _ in ADAM_PARAMS]


def adam_groups(params: list) -> tuple[list[dict], list]:
    """Two learning-rate groups (0.1 for the first five parameters, 0.02 for the rest), and the sharded ones."""
    sharded = [p for p, (_, _, shard, _) in zip(params, ADAM_PARAMS) if shard]
    return [dict(params=params[:5], lr=0.1), dict(params=params[5:], lr=0.02)], sharded


def adam_grads(params: list, rank: int, step: int, micro: int) -> list:
    """The gradient of one micro-step on one rank for each parameter the loss reads, in the parameter's dtype."""
    g = torch.Generator().manual_seed(1000 * step + 10 * rank + micro)
    return [torch.randn(p.shape, generator=g).to(p.dtype) if read else None
            for p, (_, _, _, read) in zip(params, ADAM_PARAMS)]
