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

Any other trainer (modded-nanogpt's train_gpt.py, say) runs through --cmd:

    python -m harness.run --cmd "torchrun --standalone --nproc_per_node=8 train_gpt.py" [--cwd DIR]
                          [--track modded-nanogpt] [--seeds N] [--seed-env SEED] [--logfile auto|stdout|PATH]
                          [--target X] [--timeout SEC] ...

The command runs as given (in --cwd), once per seed, with the seed in the environment variable
--seed-env (SEED; the trainer may read it or not, the row records both the seed and the variable's
name), its stdout driving the same progress bar. When it ends the run is recorded as harness.ingest
records a log (harness/ingest.py): the log is the trainer's own log file where it writes one
(--logfile auto: a *.txt/*.log path it printed, modded-nanogpt's `logs/<id>.txt`, else the newest
logs/*.txt under --cwd written during the run; a path; or stdout), else its stdout, kept as
train.log; code/ is the source the log starts with, else the script the command names (read at
launch). Status: timeout / interrupted as above, diverged for a NaN val loss, crashed for a non-zero
exit, else ok when the log reaches its planned last step and incomplete when it does not.
"""
from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import queue
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from harness.logs import LOG_SUFFIXES, LogError, RunLog, load_run, parse_step_line
from harness.records import RECORDS_DIR, append_run
from harness.snapshot import REPO_ROOT

DEFAULT_TRACK = "cpu-tiny"
DEFAULT_SCRIPT = REPO_ROOT / "train_gpt.py"
DEFAULT_RUNS_DIR = REPO_ROOT / "runs"
HARNESS_OWNED = ("--track", "--seed", "--run_dir")  # set per run by the harness, not by overrides
STOP_GRACE_S = 5.0  # between SIGINT, SIGTERM and SIGKILL when stopping a trainer
CMD_TRACK = "modded-nanogpt"  # --cmd's track when none is given
SEED_ENV = "SEED"  # --cmd: the environment variable that carries the seed to the trainer


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
        "stop_at_target": result.get("stop_at_target", (log.stop_at_target if log else None)),
    }


def run_summary(row: dict) -> str:
    """One line: status, the run's time (train time at its final validation), final loss against the target."""
    parts = [f"{row['run_id']}: {row['status']}"]
    if row.get("train_time_ms") is not None:
        parts.append(f"time {row['train_time_ms'] / 1000:.2f} s (train time at the final validation)")
    if row.get("final_val_loss") is not None:
        target = row.get("target_val_loss")
        side = "" if target is None else (" (at or below the target {})" if row["final_val_loss"] <= target
                                          else " (above the target {})").format(target)
        parts.append(f"final val loss {row['final_val_loss']:.4f} at step {row.get('steps')}{side}")
    if row.get("time_to_target_ms") is not None:
        parts.append(f"first at or below the target at {row['time_to_target_ms'] / 1000:.2f} s"
                     + (", where it stopped (--stop_at_target)" if row.get("stop_at_target") else ""))
    parts.append(f"logs in {row['run_dir']}")
    return ", ".join(parts)


def _stream(proc: subprocess.Popen, lines: queue.Queue, console, progress: _Progress, *, timeout: float | None,
            start: float, run_id: str, echo: bool, ctrl_c: threading.Event) -> str | None:
    """Copy the trainer's output to console.log and the progress bar until it ends; "timeout" if stopped for time.
    Raises KeyboardInterrupt, here and only here, once `ctrl_c` is set (see _launch)."""
    deadline = start + timeout if timeout else None
    while True:
        if ctrl_c.is_set():
            raise KeyboardInterrupt
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


@dataclass
class _Ended:
    """How a launched command ended, as _launch saw it."""

    status: str | None  # "timeout" or "interrupted" when the harness stopped it, else None
    returncode: int | None
    wall_s: float
    interrupted: bool = False
    previous_sigint: object = None  # after Ctrl-C: the SIGINT handler to put back once the run is recorded


def _launch(cmd: Sequence[str], *, env: dict, run_id: str, console_path: Path, timeout: float | None, echo: bool,
            cwd: Path | None = None, stdout_lines: list[str] | None = None) -> _Ended:
    """Run `cmd` in its own process group; copy its output to console_path and the progress bar until it ends.

    With `stdout_lines`, the command's stdout is also kept there, apart from its stderr (both go to the
    console log and the bar); without, stderr is merged into stdout. On Ctrl-C the command is stopped and
    SIGINT ignored until the caller has recorded the run (_finish); any other failure of the harness stops
    the command and is raised.
    """
    console = open(console_path, "w", encoding="utf-8")
    progress = _Progress(run_id)
    start = time.monotonic()
    # Own process group: the terminal's Ctrl-C reaches the harness only, which then stops the whole group.
    # So from here on every way out of this function must stop the trainer, or it keeps running unseen.
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT if stdout_lines is None else subprocess.PIPE,
                                text=True, errors="replace", bufsize=1, env=env, cwd=cwd, start_new_session=True)
    except BaseException:
        console.close()
        progress.close()
        raise
    lines: queue.Queue[str | None] = queue.Queue()

    def copy(stream, keep: list[str] | None):
        for text in stream:
            if keep is not None:
                keep.append(text)
            lines.put(text)

    def pump():
        errors = None
        if stdout_lines is not None:
            errors = threading.Thread(target=copy, args=(proc.stderr, None), daemon=True)
            errors.start()
        copy(proc.stdout, stdout_lines)
        if errors is not None:
            errors.join()
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    ended = _Ended(status=None, returncode=None, wall_s=0.0)
    # Ctrl-C only sets a flag, which _stream turns into KeyboardInterrupt between two lines: raised wherever the
    # signal happened to land, it could leave the line queue's lock held (inside queue.get), and the harness
    # then hung for good when it drained the queue (seen under load, in the Ctrl-C tests).
    ctrl_c = threading.Event()
    try:
        previous_sigint = signal.signal(signal.SIGINT, lambda signum, frame: ctrl_c.set())
    except ValueError:  # not the main thread: Ctrl-C cannot reach this harness anyway
        previous_sigint = None
    try:
        reader.start()
        ended.status = _stream(proc, lines, console, progress, timeout=timeout, start=start, run_id=run_id, echo=echo,
                               ctrl_c=ctrl_c)
        if previous_sigint is not None:
            signal.signal(signal.SIGINT, previous_sigint)
    except KeyboardInterrupt:
        ended.status, ended.interrupted = "interrupted", True
        if previous_sigint is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not lose the row
        ended.previous_sigint = previous_sigint
        _stop(proc)
    except BaseException:  # the harness itself failed (disk full, a bug): stop the trainer, then report it
        if previous_sigint is not None:
            signal.signal(signal.SIGINT, previous_sigint)
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
    finally:
        console.close()
        progress.close()
    ended.returncode, ended.wall_s = proc.returncode, time.monotonic() - start
    return ended


def _finish(ended: _Ended, record) -> dict:
    """Call record() (which writes the run's row and returns it), print the run's summary, and after a
    Ctrl-C put SIGINT back and raise KeyboardInterrupt."""
    try:
        row = record()
        print(run_summary(row), flush=True)
    finally:
        if ended.interrupted and ended.previous_sigint is not None:
            signal.signal(signal.SIGINT, ended.previous_sigint)
    if ended.interrupted:
        raise KeyboardInterrupt
    return row


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
    ended = _launch(cmd, env=env, run_id=run_id, console_path=run_dir / "console.log", timeout=timeout, echo=echo)

    def record() -> dict:
        row = build_row(run_dir, run_id=run_id, name=name, track=track, seed=seed, overrides=overrides,
                        harness_status=ended.status, returncode=ended.returncode, script=script, nproc=nproc,
                        wall_s=ended.wall_s)
        append_run(row, records_dir)
        return row

    return _finish(ended, record)


# ----------------------------------------------------------------------------------------------
# Any trainer: --cmd


def script_in_command(argv: Sequence[str], cwd: Path) -> Path | None:
    """The Python script a command runs: its first argument ending in .py that is a file (relative to cwd)."""
    for arg in argv:
        if arg.endswith(".py") and (cwd / arg).is_file():
            return (cwd / arg).resolve()
    return None


def trainer_log(spec: str, cwd: Path, stdout_lines: Sequence[str], since: float) -> Path | None:
    """The trainer's own log file, recorded instead of its stdout where it has more (modded-nanogpt writes
    its source code only to its log file). spec "stdout": none; a path (relative to cwd): that file if it
    is there; "auto": the last line of stdout naming a *.txt or *.log file written since `since` (modded-
    nanogpt prints `logs/<run id>.txt`), else the newest logs/*.txt or logs/*.log under cwd written since."""
    if spec == "stdout":
        return None
    if spec != "auto":
        path = cwd / spec
        return path if path.is_file() else None

    def fresh(path: Path) -> bool:
        try:
            return path.is_file() and path.stat().st_mtime >= since - 1  # coarse file-system clocks
        except OSError:
            return False

    for line in reversed(stdout_lines):
        text = line.strip()
        if text.endswith(LOG_SUFFIXES) and not text.startswith("step:") and fresh(cwd / text):
            return cwd / text
    written = [p for suffix in LOG_SUFFIXES for p in (cwd / "logs").glob(f"*{suffix}") if fresh(p)]
    return max(written, key=lambda p: p.stat().st_mtime) if written else None


def cmd_status(log: RunLog | None, harness_status: str | None, returncode: int | None) -> str:
    """A --cmd run's status: the harness's (timeout, interrupted), else diverged (a NaN val loss), crashed
    (a non-zero exit), or what its log shows: ok at its planned last step, else incomplete."""
    if harness_status:
        return harness_status
    if log is not None and log.status == "diverged":
        return "diverged"
    if returncode != 0:
        return "crashed"
    return log.status if log is not None else "incomplete"


def run_cmd_one(command: str, *, track: str, seed: int, name: str, seed_env: str = SEED_ENV,
                target: float | None = None, logfile: str = "auto", cwd=None, timeout: float | None = None,
                runs_dir=DEFAULT_RUNS_DIR, records_dir=RECORDS_DIR, echo: bool = True) -> dict:
    """Run any trainer's command once (the seed in the environment variable `seed_env`), record it, return the row.

    The run directory is made as harness.ingest makes one (harness/ingest.py), from the trainer's log
    (trainer_log) or else its stdout: train.log, events.jsonl, code/ (the source the log starts with,
    else the script the command names, read when it starts); console.log holds everything it printed.
    On Ctrl-C the trainer is stopped and the run recorded as "interrupted" before KeyboardInterrupt is
    raised again.
    """
    from harness import ingest
    from harness.hardware import git_state

    cwd = Path(cwd or os.getcwd()).resolve()
    argv = shlex.split(command)
    target = ingest.default_target(track) if target is None else target
    run_id = new_run_id(track, seed)
    run_dir = Path(runs_dir).resolve() / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    script = script_in_command(argv, cwd)
    script_file = (script.name, script.read_bytes()) if script else None  # at launch: the code that runs
    print(f"[{run_id}] {seed_env}={seed} {command}  (in {cwd})", flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", seed_env: str(seed)}
    stdout_lines: list[str] = []
    since = time.time()
    ended = _launch(argv, env=env, run_id=run_id, console_path=run_dir / "console.log", timeout=timeout, echo=echo,
                    cwd=cwd, stdout_lines=stdout_lines)

    def record() -> dict:
        printed = ingest.parse_log_bytes("".join(list(stdout_lines)).encode("utf-8"), "stdout")
        parsed, path = printed, trainer_log(logfile, cwd, list(stdout_lines), since)
        if path is not None:
            own = ingest.parse_log_bytes(path.read_bytes(), str(path))
            parsed, path = (own, path) if own.log is not None or printed.log is None else (printed, None)
        elif logfile not in ("auto", "stdout"):
            print(f"warning: --logfile {logfile}: no such file in {cwd} after the run; recording its stdout",
                  file=sys.stderr)
        status = cmd_status(parsed.log, ended.status, ended.returncode)
        source = str(path) if path is not None else "stdout"
        pending = run_dir / f".pending-{os.getpid()}"
        try:
            ingest.write_run_files(pending, parsed, track=track, target=target, seed=seed, status=status,
                                   git=git_state(cwd), script=script_file,
                                   meta={"origin": "cmd", "source": source, "command": command, "seed_env": seed_env,
                                         "script": str(script) if script else None})
            for entry in pending.iterdir():
                os.rename(entry, run_dir / entry.name)
            pending.rmdir()
        except BaseException:
            shutil.rmtree(pending, ignore_errors=True)
            raise
        row = build_row(run_dir, run_id=run_id, name=name, track=track, seed=seed, overrides=[],
                        harness_status=status, returncode=ended.returncode, script=command,
                        nproc=parsed.facts.world_size or 1, wall_s=ended.wall_s)
        row.update(origin="cmd", source=source, log_sha256=parsed.sha256, seed_env=seed_env)
        append_run(row, records_dir)
        return row

    return _finish(ended, record)


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
    """Over the runs of one invocation that finished ok: time (final train time) and final val loss,
    mean ± std and 95% CI, and the loss rule's p and verdict (the speedrun's convention: every run counts)."""
    from harness import stats

    ok = [r for r in rows if r["status"] == "ok" and r.get("final_val_loss") is not None
          and r.get("train_time_ms") is not None]
    text = f"{len(ok)}/{len(rows)} runs ok"
    if not ok:
        return text
    t = stats.describe([r["train_time_ms"] / 1000 for r in ok])
    target = next((r.get("target_val_loss") for r in ok if r.get("target_val_loss") is not None), None)
    rule = stats.loss_rule([r["final_val_loss"] for r in ok], math.nan if target is None else target)
    s = rule.losses
    text += f"; time {t.mean:.2f} ± {t.std:.2f} s (95% CI {t.ci_low:.2f}..{t.ci_high:.2f})"
    text += f"; final val loss {s.mean:.4f} ± {s.std:.4f}"
    if target is not None:
        text += f"; p(mean loss < {target}) = {rule.p:.3g}, loss rule (p < {stats.ALPHA}): {rule.verdict}"
    if any(r.get("stop_at_target") for r in ok):
        text += "; some runs stopped at the target (--stop_at_target): exploratory, not a record"
    return text


def _cmd_problem(args, overrides: Sequence[str]) -> str | None:
    """What is wrong with a --cmd invocation, or None."""
    if overrides:
        return "with --cmd the trainer's arguments go in the command, not after '--'"
    if args.script is not None or args.nproc is not None:
        return "--cmd runs its own command: leave out --script and --nproc (e.g. torchrun --nproc_per_node=8 in it)"
    try:
        argv = shlex.split(args.cmd)
    except ValueError as exc:
        return f"--cmd {args.cmd!r}: {exc}"
    if not argv:
        return "--cmd is empty"
    cwd = args.cwd or Path.cwd()
    program = argv[0]
    if not ((cwd / program).is_file() if os.sep in program else shutil.which(program)):
        return f"--cmd: {program}: no such program" + (f" in {cwd}" if os.sep in program else " on PATH")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", args.seed_env):
        return f"--seed-env {args.seed_env!r}: not an environment variable name"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    from harness.ingest import IngestError, check_name
    from harness.overrides import ConfigError, normalize_argv

    ours, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m harness.run", description=__doc__.split("\n\n")[0],
                                     epilog="Trainer overrides go after '--', e.g. -- --lr=0.01 (or -- --lr 0.01)")
    add_launch_arguments(parser)
    parser.set_defaults(track=None, nproc=None)  # their defaults differ with --cmd
    parser.add_argument("--name", default=None, help="name stored with each run (default: the track)")
    parser.add_argument("--script", type=Path, default=None, help="trainer script (default train_gpt.py)")
    cmd = parser.add_argument_group("any trainer (--cmd)")
    cmd.add_argument("--cmd", default=None, metavar="COMMAND",
                     help="run this command instead of our trainer, e.g. 'torchrun --standalone --nproc_per_node=8 "
                     f"train_gpt.py' (--track default {CMD_TRACK})")
    cmd.add_argument("--cwd", type=Path, default=None, help="--cmd: the directory it runs in (default: this one)")
    cmd.add_argument("--seed-env", default=SEED_ENV, metavar="NAME",
                     help=f"--cmd: the environment variable that carries the seed (default {SEED_ENV})")
    cmd.add_argument("--logfile", default="auto", metavar="PATH|auto|stdout",
                     help="--cmd: the trainer's own log to record (default auto: one it names on stdout, else the "
                     "newest logs/*.txt it wrote; stdout: what it printed)")
    cmd.add_argument("--target", type=float, default=None,
                     help="--cmd: target val loss (default: the track's, else 3.28)")
    args = parser.parse_args(ours)
    if args.cmd is None:
        given = [opt for opt, changed in (("--cwd", args.cwd is not None), ("--seed-env", args.seed_env != SEED_ENV),
                                          ("--logfile", args.logfile != "auto"), ("--target", args.target is not None))
                 if changed]
        if given:
            parser.error(f"{', '.join(given)}: only with --cmd")
    track = args.track or (CMD_TRACK if args.cmd is not None else DEFAULT_TRACK)
    try:
        check_name("track", track)
        overrides = normalize_argv(overrides)
    except (IngestError, ConfigError) as exc:
        parser.error(str(exc))
    if args.cwd is not None and not args.cwd.is_dir():
        parser.error(f"--cwd {args.cwd}: no such directory")
    if args.target is not None and not math.isfinite(args.target):
        parser.error(f"--target {args.target}: expected a finite number")
    problem = _cmd_problem(args, overrides) if args.cmd is not None else check_overrides(overrides)
    if problem:
        parser.error(problem)
    script = args.script or DEFAULT_SCRIPT
    if args.cmd is None and not Path(script).is_file():
        parser.error(f"--script {script}: no such file")

    rows = []
    try:
        for seed in range(args.seed_start, args.seed_start + args.seeds):
            if args.cmd is not None:
                rows.append(run_cmd_one(args.cmd, track=track, seed=seed, name=args.name or track,
                                        seed_env=args.seed_env, target=args.target, logfile=args.logfile,
                                        cwd=args.cwd, timeout=args.timeout, runs_dir=args.runs_dir,
                                        records_dir=args.records))
            else:
                rows.append(run_one(track=track, seed=seed, name=args.name or track, script=script,
                                    nproc=args.nproc or 1, overrides=overrides, timeout=args.timeout,
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
