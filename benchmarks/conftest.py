"""pytest-benchmark benchmarks: the harness's hot paths on real-size logs, and the kernels on a GPU.

    pytest benchmarks/ --benchmark-only                  time them (pytest-benchmark's table)
    pytest benchmarks/ --benchmark-only --benchmark-autosave, then --benchmark-compare   against the last saved
    pytest benchmarks/ --benchmark-disable               each once, as a smoke test (`make test` runs them so)

Set-up as tests/conftest.py: without a GPU, Triton runs under its interpreter (TRITON_INTERPRET=1, set before
anything imports triton), and nothing reaches the Hugging Face hub. The logs here are modded-nanogpt's
layout at its real size: about 2000 lines of source code, the versions and nvidia-smi, then a line per
step (1390 steps, validation every 125 and at the last).
"""
import os
import random

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

STEPS = 1390
VAL_EVERY = 125
CODE_LINES = 2000
SEP = "=" * 100


def source_code(lines: int = CODE_LINES) -> str:
    """A training script's worth of Python: what a log's first ~2000 lines are."""
    body = ["import os", "import sys", "import torch", ""]
    i = 0
    while len(body) < lines:
        body += [f"def layer_{i}(x, scale={i}):", f"    print(f\"step:{{i}}/{{n}} val_loss:{{x:.4f}}\")  # {i}",
                 "    return x * scale", ""]
        i += 1
    return "\n".join(body[:lines]) + "\n"


HEADER = (f"{SEP}\nRunning Python 3.12.3 (main, Jan 22 2026, 20:57:42) [GCC 13.3.0]\n"
          "Running PyTorch 2.10.0+cu128 compiled for CUDA 12.8\nRunning Triton version 3.6.0\n"
          "+-----------------------------------------------------------------------------------------+\n"
          "| NVIDIA-SMI 580.159.04             Driver Version: 580.159.04     CUDA Version: 13.0     |\n"
          + "".join(f"|   {i}  NVIDIA H100 80GB HBM3          On  |   00000000:{i:02X}:00.0 Off |                    0 |\n"
                    for i in range(8))
          + f"{SEP}\n")


def speedrun_log(final_ms: int, final_loss: float, code: str) -> str:
    """A whole modded-nanogpt log: code, header, a line per step, validation every VAL_EVERY steps and at the last."""
    lines = [code, HEADER]
    for step in range(STEPS + 1):
        t = round(final_ms * step / STEPS)
        tail = f"train_time:{t}ms step_avg:{t / max(step, 1):.2f}ms"
        if step % VAL_EVERY == 0 or step == STEPS:
            lines.append(f"step:{step}/{STEPS} val_loss:{final_loss + 7.5 * (1 - step / STEPS) ** 3:.4f} {tail}\n")
        else:
            lines.append(f"step:{step}/{STEPS} {tail}\n")
    lines.append("peak memory allocated: 30908 MiB reserved: 46472 MiB\n")
    return "".join(lines)


def write_logs(folder, n: int, *, mean_ms: float, seed: int, code: str | None = None):
    """n logs of one code in `folder`: times around mean_ms, final losses around 3.278 (fixed seed)."""
    rng = random.Random(seed)
    code = code or source_code()
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        text = speedrun_log(round(rng.gauss(mean_ms, 0.002 * mean_ms)), rng.gauss(3.278, 0.0015), code)
        (folder / f"{seed:02d}-{i:02d}.txt").write_text(text)
    return folder


@pytest.fixture(scope="session")
def logs_folder(tmp_path_factory):
    """8 real-size logs of one record."""
    return write_logs(tmp_path_factory.mktemp("logs") / "baseline", 8, mean_ms=80_700, seed=1)


@pytest.fixture(scope="session")
def two_variants(tmp_path_factory):
    """20 logs of a baseline and 20 of a variant 1.3% faster, each variant its own code."""
    root = tmp_path_factory.mktemp("variants")
    return (write_logs(root / "base", 20, mean_ms=80_700, seed=2),
            write_logs(root / "new", 20, mean_ms=79_650, seed=3, code=source_code() + "# new\n"))


@pytest.fixture
def fresh_dir(tmp_path_factory):
    """A function giving a new empty folder per call: for benchmark rounds that write (ingest) and start clean."""
    return lambda: tmp_path_factory.mktemp("round")
