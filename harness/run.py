"""Launch the trainer for N seeds, show live progress, and append every run to the records log.

    python -m harness.run [--track cpu-tiny] [--seeds N] [--seed-start S] [--nproc K] [--name NAME]
                          [--script train_gpt.py] [--timeout SEC] [--runs-dir runs] [--records records]
                          [--no-leaderboard] [-- --key=value ...]

Each run gets runs/<run_id>/ (the trainer writes events.jsonl, train.log and code/ there; the harness
adds console.log, everything the process printed). The trainer runs under
`torchrun --standalone --nproc_per_node=K` when K > 1 or CUDA is available, plain `python` otherwise.
When a run ends, one row built from its events.jsonl goes to records/runs.jsonl, whatever happened:
status comes from the trainer's result event (ok / diverged; its "error" is "crashed"), "crashed"
if the process died without one, "timeout" past --timeout, "interrupted" on Ctrl-C (the trainer is
stopped, the row written, and the harness exits 130). Exit status: 0 when every run is ok, else 1.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import queue
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from harness.logs import LogError, RunLog, load_run, parse_step_line
from harness.records import RECORDS_DIR, append_run
from harness.snapshot import REPO_ROOT

DEFAULT_TRACK = "cpu-tiny"
DEFAULT_SCRIPT = REPO_ROOT / "train_gpt.py"
DEFAULT_RUNS_DIR = REPO_ROOT / "runs"
HARNESS_OWNED = ("--track", "--seed", "--run_dir")  # set per run by the harness, not by overrides
STOP_GRACE_S = 5.0  # between SIGINT, SIGTERM and SIGKILL when stopping a trainer


def new_run_id(track: str, seed: int) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{track}-s{seed}-{secrets.token_hex(2)}"


def use_torchrun(nproc: int) -> bool:
    if nproc > 1:
        return True
    import torch  # only here: importing torch costs a second or two

    return torch.cuda.is_available()


def trainer_command(script, track: str, seed: int, run_dir, overrides: Sequence[str], nproc: int) -> list[str]:
    args = [str(script), f"--track={track}", f"--seed={seed}", f"--run_dir={run_dir}", *overrides]
    if use_torchrun(nproc):
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return [sys.executable, *args]


def check_overrides(overrides: Sequence[str]) -> str | None:
    """None if every override is a trainer `--key=value` the harness does not own, else the problem."""
    for o in overrides:
        if not (o.startswith("--") and "=" in o and len(o.split("=", 1)[0]) > 2):
            return f"trainer override {o!r} is not of the form --key=value"
        if o.split("=", 1)[0] in HARNESS_OWNED:
            return f"trainer override {o!r}: {', '.join(HARNESS_OWNED)} are set by the harness (use its own options)"
    return None


# ----------------------------------------------------------------------------------------------
# One run


class _Progress:
    """A tqdm bar driven by the trainer's step lines: step/total, train time, last val loss, ETA."""

    def __init__(self, desc: str):
        self.bar = tqdm(desc=desc, unit="step", dynamic_ncols=True, disable=None, file=sys.stderr)
        self.train_s, self.val = None, None

    def line(self, text: str, echo: bool) -> None:
        fields = parse_step_line(text)
        if fields is None:
            if echo and text.strip():
                self.bar.write(text.rstrip("\n"), file=sys.stdout)
            return
        if self.bar.total != fields["total"]:
            self.bar.total = fields["total"]
        self.bar.update(max(0, fields["step"] - self.bar.n))
        if "train_time_ms" in fields:
            self.train_s = fields["train_time_ms"] / 1000
        if "val_loss" in fields:
            self.val = fields["val_loss"]
            if echo:
                self.bar.write(text.rstrip("\n"), file=sys.stdout)
        parts = [f"train {self.train_s:.1f}s" if self.train_s is not None else None,
                 f"val {self.val:.4f}" if self.val is not None else None]
        self.bar.set_postfix_str(", ".join(p for p in parts if p), refresh=False)

    def close(self) -> None:
        self.bar.close()


def _stop(proc: subprocess.Popen) -> None:
    """Stop the trainer's process group: SIGINT, then SIGTERM, then SIGKILL, STOP_GRACE_S apart."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=STOP_GRACE_S)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


def build_row(run_dir: Path, *, run_id: str, name: str, track: str, seed: int, overrides: Sequence[str],
              harness_status: str | None, returncode: int | None, script, nproc: int, wall_s: float) -> dict:
    """The runs.jsonl row for a finished run, from its events.jsonl (whatever of it was written)."""
    from harness.hardware import git_state

    try:
        log: RunLog | None = load_run(run_dir, require_val=False)
    except LogError:
        log = None
    result = (log.result if log else None) or {}
    if harness_status:
        status = harness_status
    elif not result:
        status = "crashed"
    else:
        status = {"ok": "ok", "diverged": "diverged"}.get(result.get("status"), "crashed")
        if status == "ok" and returncode != 0:
            status = "crashed"
    git = (log.git if log else None) or git_state()
    versions = (log.versions if log else None) or {"python": sys.version.split()[0]}
    target = result.get("target_val_loss", log.target if log else None)
    ttt = result.get("time_to_target_ms") if result else (log.time_to_target(target) if log and target else None)
    final = result.get("final_val_loss") if result else (log.final_val_loss if log else None)
    return {
        "run_id": run_id,
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "track": (log.track if log else None) or track,
        "name": name,
        "git_commit": git.get("commit"),
        "git_dirty": git.get("dirty"),
        "code_hash": log.code_hash if log else None,
        "hardware": log.hardware_label if log else None,
        "torch": versions.get("torch"),
        "triton": versions.get("triton"),
        "cuda": versions.get("cuda"),
        "python": versions.get("python"),
        "seed": seed,
        "overrides": list(overrides),
        "time_to_target_ms": ttt,
        "steps": result.get("steps", log.last_step if log else None),
        "tokens": result.get("tokens"),
        "final_val_loss": final,
        "reached_target": bool(result.get("reached_target", ttt is not None)),
        "status": status,
        "run_dir": str(Path(run_dir).resolve()),
        "target_val_loss": target,
        "train_time_ms": result.get("train_time_ms", log.train_time_ms if log else None),
        "returncode": returncode,
        "script": str(script),
        "nproc": nproc,
        "wall_s": round(wall_s, 3),
    }


def run_summary(row: dict) -> str:
    """One line: status, final loss and step, time to target."""
    parts = [f"{row['run_id']}: {row['status']}"]
    if row.get("final_val_loss") is not None:
        parts.append(f"final val loss {row['final_val_loss']:.4f} at step {row.get('steps')}")
    if row.get("time_to_target_ms") is not None:
        parts.append(f"target {row.get('target_val_loss')} reached at "
                     f"{row['time_to_target_ms'] / 1000:.2f} s train time")
    elif row["status"] == "ok":
        parts.append(f"target {row.get('target_val_loss')} not reached")
    if row.get("train_time_ms") is not None:
        parts.append(f"train time {row['train_time_ms'] / 1000:.2f} s")
    parts.append(f"logs in {row['run_dir']}")
    return ", ".join(parts)


def _stream(proc: subprocess.Popen, lines: queue.Queue, console, progress: _Progress, *, timeout: float | None,
            start: float, run_id: str, echo: bool) -> str | None:
    """Copy the trainer's output to console.log and the progress bar until it ends; "timeout" if stopped for time."""
    deadline = start + timeout if timeout else None
    while True:
        wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
        try:
            text = lines.get(timeout=wait)
        except queue.Empty:
            if deadline is not None and time.monotonic() >= deadline:
                progress.bar.write(f"[{run_id}] timeout after {timeout:g} s: stopping the trainer", file=sys.stdout)
                _stop(proc)
                return "timeout"
            continue
        if text is None:
            proc.wait()
            return None
        console.write(text)
        console.flush()
        progress.line(text, echo)


def run_one(*, track: str, seed: int, name: str, script=DEFAULT_SCRIPT, nproc: int = 1,
            overrides: Sequence[str] = (), timeout: float | None = None, runs_dir=DEFAULT_RUNS_DIR,
            records_dir=RECORDS_DIR, echo: bool = True) -> dict:
    """Run the trainer once, record it in records_dir/runs.jsonl, return the row.

    On Ctrl-C the trainer is stopped and the run recorded as "interrupted" before KeyboardInterrupt
    is raised again.
    """
    run_id = new_run_id(track, seed)
    run_dir = Path(runs_dir).resolve() / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    cmd = trainer_command(script, track, seed, run_dir, overrides, nproc)
    print(f"[{run_id}] {shlex.join(cmd)}", flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)}
    console = open(run_dir / "console.log", "w", encoding="utf-8")
    progress = _Progress(run_id)
    start = time.monotonic()
    # Own process group: the terminal's Ctrl-C reaches the harness only, which then stops the whole group.
    # So from here on every way out of this function must stop the trainer, or it keeps running unseen.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                            bufsize=1, env=env, start_new_session=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump():
        for text in proc.stdout:
            lines.put(text)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    interrupted, previous_handler = False, None
    try:
        reader.start()
        harness_status = _stream(proc, lines, console, progress, timeout=timeout, start=start, run_id=run_id, echo=echo)
    except KeyboardInterrupt:
        interrupted, harness_status = True, "interrupted"
        previous_handler = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not lose the row
        _stop(proc)
    except BaseException:  # the harness itself failed (disk full, a bug): stop the trainer, then report it
        _stop(proc)
        console.close()
        progress.close()
        raise
    try:
        reader.join(timeout=STOP_GRACE_S)  # the rest of what the trainer printed before it went
        while not lines.empty():
            text = lines.get_nowait()
            if text is not None:
                console.write(text)
        console.close()
        progress.close()
        row = build_row(run_dir, run_id=run_id, name=name, track=track, seed=seed, overrides=overrides,
                        harness_status=harness_status, returncode=proc.returncode, script=script, nproc=nproc,
                        wall_s=time.monotonic() - start)
        append_run(row, records_dir)
        print(run_summary(row), flush=True)
    finally:
        if interrupted:
            signal.signal(signal.SIGINT, previous_handler)
    if interrupted:
        raise KeyboardInterrupt
    return row


# ----------------------------------------------------------------------------------------------
# CLI


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Harness arguments before the first '--', trainer overrides after it."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared with harness.compare's run mode."""
    parser.add_argument("--track", default=DEFAULT_TRACK, help=f"trainer track (default {DEFAULT_TRACK})")
    parser.add_argument("--seeds", type=positive_int, default=1, help="runs, one per seed (default 1)")
    parser.add_argument("--seed-start", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--nproc", type=positive_int, default=1, help="processes (GPUs) per run (default 1)")
    parser.add_argument("--timeout", type=positive_float, default=None, help="stop a run after SEC seconds")
    parser.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS_DIR, help="where run directories go")
    parser.add_argument("--records", type=Path, default=RECORDS_DIR,
                        help="records directory (runs.jsonl inside; leaderboard.md goes next to it)")
    parser.add_argument("--no-leaderboard", action="store_true", help="do not re-render leaderboard.md")


def render_leaderboard(records_dir: Path) -> None:
    from harness.leaderboard import default_out, render

    try:
        out = render(records_dir, default_out(records_dir))
    except (OSError, ValueError) as exc:  # the runs are already recorded: warn, don't lose the exit status
        print(f"warning: leaderboard not re-rendered: {exc}", file=sys.stderr)
        return
    print(f"leaderboard: {out}")


def group_summary(rows: list[dict]) -> str:
    """Mean ± std and 95% CI over the runs of one invocation, with the record rule's p-value."""
    from harness import stats

    ok = [r for r in rows if r["status"] == "ok"]
    losses = [r["final_val_loss"] for r in ok if r.get("final_val_loss") is not None]
    times = [r["time_to_target_ms"] / 1000 for r in ok if r.get("time_to_target_ms") is not None]
    target = next((r.get("target_val_loss") for r in ok if r.get("target_val_loss") is not None), None)
    text = f"{len(ok)}/{len(rows)} runs ok"
    if times:
        t = stats.describe(times)
        text += (f"; time to target {t.mean:.2f} ± {t.std:.2f} s "
                 f"(95% CI {t.ci_low:.2f}..{t.ci_high:.2f}, {t.n} reached)")
    if losses:
        s = stats.describe(losses)
        text += f"; final val loss {s.mean:.4f} ± {s.std:.4f}"
        if target is not None:
            text += f"; p(mean loss < {target}) = {stats.p_mean_below(losses, target):.3g}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    ours, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m harness.run", description=__doc__.split("\n\n")[0],
                                     epilog="Trainer overrides go after '--', e.g. -- --lr=0.01")
    add_launch_arguments(parser)
    parser.add_argument("--name", default=None, help="name stored with each run (default: the track)")
    parser.add_argument("--script", type=Path, default=DEFAULT_SCRIPT, help="trainer script (default train_gpt.py)")
    args = parser.parse_args(ours)
    problem = check_overrides(overrides)
    if problem:
        parser.error(problem)
    if not Path(args.script).is_file():
        parser.error(f"--script {args.script}: no such file")

    rows = []
    try:
        for seed in range(args.seed_start, args.seed_start + args.seeds):
            rows.append(run_one(track=args.track, seed=seed, name=args.name or args.track, script=args.script,
                                nproc=args.nproc, overrides=overrides, timeout=args.timeout,
                                runs_dir=args.runs_dir, records_dir=args.records))
    except KeyboardInterrupt:
        print("interrupted: the run was stopped and recorded as 'interrupted'", file=sys.stderr)
        if not args.no_leaderboard:
            render_leaderboard(args.records)
        return 130
    if len(rows) > 1:
        print(group_summary(rows))
    if not args.no_leaderboard:
        render_leaderboard(args.records)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
