"""A fake train_gpt.py for the harness tests, and checks that it keeps the trainer's contract.

The fake speaks the real trainer's interface (`--track --seed --run_dir --key=value`, modded-nanogpt
step lines on stdout and in train.log, events.jsonl through harness.runlog, a code/ snapshot through
harness.snapshot) in a fraction of a second, with knobs to diverge, crash or hang. It is written as
`train_gpt.py` into a folder of its own, so its snapshot and code hash are its own; writing it with
a different `flavor` gives different code (a different hash).
"""
import json
import subprocess
import sys
from pathlib import Path

from harness.logs import load_run
from harness.snapshot import REPO_ROOT, code_hash

FAKE_TRAINER = '''\
"""Fake trainer ({flavor}): modded-nanogpt step lines, events.jsonl, a code snapshot."""
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
              stop_at_target=0)


def main(argv):
    track, seed, run_dir, cfg = None, None, None, dict(CONFIG)
    for arg in argv:
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
            print(f"unknown option {{arg}}", file=sys.stderr)
            return 2
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
    env_path = str(REPO_ROOT)
    cmd = [sys.executable, str(script), "--track=cpu-tiny", f"--seed={seed}", f"--run_dir={run_dir}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env={"PYTHONPATH": env_path, "PATH": ""}, timeout=60)


def test_fake_trainer_keeps_the_contract(tmp_path):
    script = write_fake_trainer(tmp_path / "code")
    out = run_fake(script, tmp_path / "run", seed=3)
    assert out.returncode == 0, out.stderr
    run_dir = tmp_path / "run"
    events = [json.loads(line)["event"] for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert events[:2] == ["config", "meta"] and events[-1] == "result"
    stated = (run_dir / "code" / "CODE_HASH").read_text().strip()
    assert stated == code_hash(run_dir / "code") == code_hash(script.parent)
    log = load_run(run_dir)
    assert log.status == "ok" and log.seed == 3 and log.track == "cpu-tiny" and log.total_steps == 20
    assert log.val_steps == [0, 5, 10, 15, 20] and log.time_to_target() == log.val_times_ms[3]
    assert (run_dir / "train.log").read_text() == out.stdout


def test_fake_trainer_flavors_have_different_hashes(tmp_path):
    a = write_fake_trainer(tmp_path / "a", "a")
    b = write_fake_trainer(tmp_path / "b", "b")
    assert code_hash(a.parent) != code_hash(b.parent)


def test_fake_trainer_diverges(tmp_path):
    out = run_fake(write_fake_trainer(tmp_path / "code"), tmp_path / "run", "--nan_at=10")
    assert out.returncode == 1
    log = load_run(tmp_path / "run")
    assert log.status == "diverged" and log.val_steps == [0, 5, 10]
