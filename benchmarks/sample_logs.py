"""Speedrun logs at their real size for the harness benchmarks: modded-nanogpt's layout, about 2000 lines of
source code, the versions and nvidia-smi, then a line per step (1390 steps, validation every 125 and at the
last one), as its records hold them.
"""
import random

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
