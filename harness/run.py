"""Launch the trainer for N seeds, show live progress, and append every run to the records log.

    python -m harness.run --track cpu-tiny --seeds 3 -- --muon_lr=0.04
    python -m harness.run --cmd "torchrun --standalone --nproc_per_node=8 train_gpt.py" --cwd ../modded-nanogpt

Each run gets runs/<run_id>/ (the trainer's events.jsonl, train.log and code/, and console.log: everything
the process printed) and, however it ends, one row in records/runs.jsonl. records/README.md states the
statuses, what a stop signal does and what is refused before the first run ("What the harness guarantees").
Exit status: 0 when every run is ok, 2 for a refusal (nothing launched), 128 + its number on a stop signal,
else 1. --cmd runs any other trainer's command, the seed in the environment variable --seed-env, and records
it as harness.ingest records a log (write_from_log).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from tqdm import tqdm

from harness.cli import doc_parser, not_a_folder, os_error_line, positive_finite_float, run_cli, stdout_to_devnull
from harness.hardware import git_state
from harness.ingest import parse_log_bytes, write_run_files
from harness.logs import LOG_SUFFIXES, LogError, RunLog, load_run, parse_step_line
from harness.overrides import ConfigError, normalize_argv
from harness.records import RECORDS_DIR, RecordsError, append_run, check_appendable, name_problem
from harness.runrow import HARNESS_ERROR, RUNS_DIR, harness_error_row, new_run_id, run_row
from harness.snapshot import REPO_ROOT
from harness.tracks import FINEWEB_TARGET, default_target

DEFAULT_TRACK = "cpu-tiny"
DEFAULT_SCRIPT = REPO_ROOT / "train_gpt.py"
HARNESS_OWNED = ("--track", "--seed", "--run_dir")  # set per run by the harness, not by overrides
STOP_GRACE_S = 5.0  # between SIGINT, SIGTERM and SIGKILL when stopping a trainer
CMD_TRACK = "modded-nanogpt"  # --cmd's track when none is given
SEED_ENV = "SEED"  # --cmd: the environment variable that carries the seed to the trainer
CONFIG_CHECK_S = 300  # the most a trainer's --print_config may take (it imports torch)


def trainer_command(script, track: str, seed: int, run_dir, overrides: Sequence[str], nproc: int) -> list[str]:
    """Our trainer's command line: under torchrun for more than one process or where CUDA is, else plain python."""
    args = [str(script), f"--track={track}", f"--seed={seed}", f"--run_dir={run_dir}", *overrides]
    if nproc == 1:
        import torch  # only here: importing torch costs a second or two

        if not torch.cuda.is_available():
            return [sys.executable, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


def trainer_env() -> dict:
    """The environment our trainer runs in: the harness's, unbuffered, with this repository importable."""
    return {**os.environ, "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)}


def config_problem(script, track: str, seed: int, overrides: Sequence[str], nproc: int,
                   stopped: Callable[[], bool], full_schedule: bool = False) -> str | None:
    """The trainer's one error line about a run's config, or None, from `script --print_config` (one JSON line,
    or one error line and exit 2). With full_schedule (a comparison's runs), stopping at the target is one too.
    Once stopped() is true, it launches nothing, and stops (_stop) the check it runs within half a second."""
    if stopped():
        return None
    cmd = [sys.executable, str(script), "--print_config", f"--track={track}", f"--seed={seed}", *overrides]
    deadline = time.monotonic() + CONFIG_CHECK_S
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
                          env={**trainer_env(), "WORLD_SIZE": str(nproc)}, start_new_session=True) as proc:
        while not stopped() and time.monotonic() < deadline:
            with contextlib.suppress(subprocess.TimeoutExpired):  # communicate again loses no output
                stdout, stderr = proc.communicate(timeout=0.5)
                break
        else:
            _stop(proc)
            return None if stopped() else f"{script} --print_config: no answer within {CONFIG_CHECK_S} s"
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if proc.returncode == 2 and lines:  # the trainer's config error
        return lines[-1].removeprefix("error: ")
    if proc.returncode != 0:
        return f"{script} --print_config failed (exit status {proc.returncode})" + (f": {lines[-1]}" if lines else "")
    try:
        config = json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        config = None
    if not isinstance(config, dict):
        return f"{script} --print_config printed no config (one JSON line expected)"
    if full_schedule and config.get("stop_at_target") in (True, 1, "true"):
        return ("--stop_at_target=true: a comparison's runs go their full schedule (records/README.md, "
                "'How a run counts'); explore with harness.run")
    return None


def first_config_problem(checks: Sequence[tuple[str, dict]]) -> str | None:
    """The first of `checks` (label, config_problem's kwargs) with a problem as "LABEL: problem", or None; they run
    a few at a time. Once a problem is found, none starts and those running are stopped; a stop signal does the same,
    and then raises Interrupted. Till then it is only noted: raised while the main thread joins a check's thread, it
    would mark that thread ended (Python 3.11), and the check would outlive the harness."""
    done, signals = threading.Event(), _StopFlag()
    pool = ThreadPoolExecutor(max_workers=min(4, len(checks) or 1))
    try:
        futures = [pool.submit(config_problem, **kwargs, stopped=lambda: done.is_set() or signals.signum is not None)
                   for _, kwargs in checks]
        problem = next((f"{label}: {p}" for (label, _), f in zip(checks, futures) if (p := f.result())), None)
    finally:
        done.set()
        pool.shutdown()
        signals.uninstall()
    if signals.signum is not None:
        raise Interrupted(signals.signum)
    return problem


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


class ProgressBar(tqdm):
    """The live progress of one run, driven by the trainer's step lines (step/total, train time, last val loss,
    ETA); with echo, it prints every line the trainer prints but the step lines without a validation."""

    def __init__(self, desc: str):
        super().__init__(desc=desc, unit="step", dynamic_ncols=True, disable=None, file=sys.stderr)
        self.train_s, self.val = None, None

    def line(self, text: str, echo: bool) -> None:
        fields = parse_step_line(text)
        if fields is None:
            if echo and text.strip():
                self.say(text.rstrip("\n"))
            return
        self.total = fields["total"]
        self.update(max(0, fields["step"] - self.n))
        if "train_time_ms" in fields:
            self.train_s = fields["train_time_ms"] / 1000
        if "val_loss" in fields:
            self.val = fields["val_loss"]
            if echo:
                self.say(text.rstrip("\n"))
        parts = [f"train {self.train_s:.1f}s" if self.train_s is not None else None,
                 f"val {self.val:.4f}" if self.val is not None else None]
        self.set_postfix_str(", ".join(p for p in parts if p), refresh=False)

    def say(self, text: str) -> None:
        """Print a line on stdout above the bar. Once stdout's reader stops reading (`harness.run | head`), the rest
        goes to /dev/null: the run goes on and is recorded."""
        try:
            self.write(text, file=sys.stdout)
        except BrokenPipeError:
            stdout_to_devnull()


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


def run_summary(row: dict, last_val: tuple[int, float] | None) -> str:
    """One line: status, the run's time (train time at its final validation), and its last validation
    (`last_val`: step and val loss, nan for a diverged one) against the target."""
    parts = [f"{row['run_id']}: {row['status']}"]
    if row.get("train_time_ms") is not None:
        parts.append(f"time {row['train_time_ms'] / 1000:.2f} s (train time at the final validation)")
    if last_val is not None:
        step, loss = last_val
        target = row.get("target_val_loss")
        side = "" if target is None or not math.isfinite(loss) else (
            f" (at or below the target {target})" if loss <= target else f" (above the target {target})")
        parts.append(f"final val loss {loss:.4f} at step {step}{side}")
    if row.get("time_to_target_ms") is not None:
        parts.append(f"first at or below the target at {row['time_to_target_ms'] / 1000:.2f} s"
                     + (", where it stopped (--stop_at_target)" if row.get("stop_at_target") else ""))
    parts.append(f"logs in {row['run_dir']}")
    return ", ".join(parts)


def last_validation(run_dir: Path) -> tuple[int, float] | None:
    """(step, val loss) of a run directory's last validation; None if it has none."""
    try:
        log = load_run(run_dir, require_val=False)
    except LogError:
        return None
    return (log.val_steps[-1], log.val_losses[-1]) if log.val_steps else None


# ----------------------------------------------------------------------------------------------
# Stop signals: Ctrl-C (SIGINT), SIGTERM (what `timeout` and `kill` send) and SIGHUP (a closed terminal)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A stop signal reached the harness; `recorded`: the status the run in flight was recorded with, None if
    there was none."""

    def __init__(self, signum: int = signal.SIGINT, recorded: str | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.recorded = int(signum), recorded


def on_stop_signals(handler) -> dict:
    """Install `handler` for every stop signal; return the previous handlers, for restore_handlers ({} off the
    main thread, which signals do not reach)."""
    try:
        return {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    except ValueError:
        return {}


def raise_on_stop_signals() -> dict:
    """Between runs, every stop signal raises Interrupted, as Ctrl-C raises KeyboardInterrupt."""
    def raise_interrupted(signum, frame):
        raise Interrupted(signum)

    return on_stop_signals(raise_interrupted)


def interrupted_exit(exc: KeyboardInterrupt) -> int:
    """Print the one line that says what a stop signal did, and return the exit status 128 + signal number."""
    signum, recorded = getattr(exc, "signum", signal.SIGINT), getattr(exc, "recorded", None)
    what = ("no run was in flight" if recorded is None else
            f"the run was stopped and recorded as '{recorded}'" if recorded == "interrupted" else
            f"the run in flight had ended, and was recorded as '{recorded}'")
    print(f"interrupted ({signal.Signals(signum).name}): {what}", file=sys.stderr)
    return 128 + signum


class _StopFlag:
    """From a run's launch until its row is written, and while the config checks run, the stop signals only note
    which one came (see _launch, first_config_problem): none is lost, and none lands in the middle of writing the
    row or of joining a thread. Installed when made."""

    def __init__(self):
        self.signum: int | None = None
        self.previous = on_stop_signals(lambda signum, frame: setattr(self, "signum", signum))

    def uninstall(self) -> None:
        restore_handlers(self.previous)
        self.previous = {}


def restore_handlers(previous: dict | None) -> None:
    for sig, handler in (previous or {}).items():
        signal.signal(sig, handler)


def _stream(proc: subprocess.Popen, lines: queue.Queue, console, progress: ProgressBar, *, timeout: float | None,
            start: float, run_id: str, echo: bool, stop: _StopFlag) -> str | None:
    """Copy the trainer's output to console.log and the progress bar until it ends; "timeout" if stopped for time.
    Raises Interrupted, here and only here, once a stop signal has set `stop` (see _launch)."""
    deadline = start + timeout if timeout else None
    while True:
        if stop.signum is not None:
            raise Interrupted(stop.signum)
        wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
        try:
            text = lines.get(timeout=wait)
        except queue.Empty:
            if deadline is not None and time.monotonic() >= deadline:
                progress.say(f"[{run_id}] timeout after {timeout:g} s: stopping the trainer")
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
    stop: _StopFlag  # still installed: the caller uninstalls it once the run is recorded


def _launch(launch: Launch, *, timeout: float | None, echo: bool, stdout_lines: list[str] | None) -> _Ended:
    """Run launch.argv in its own process group; copy its output to console.log and the progress bar until it ends.

    With `stdout_lines`, its stdout is also kept there, apart from its stderr. A stop signal stops the command
    and is noted (ended.stop) until the caller has recorded the run; any other failure stops it and is raised.
    """
    # A stop signal only sets a flag, which _stream turns into Interrupted between two lines: raised where it
    # lands, it could leave the line queue's lock held, and draining the queue would hang. The flag is up
    # before Popen, so that a signal landing just after it still stops the trainer.
    ended = _Ended(status=None, returncode=None, wall_s=0.0, stop=_StopFlag())
    lines: queue.Queue[str | None] = queue.Queue()
    proc = None

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

    try:
        with open(launch.run_dir / "console.log", "w", encoding="utf-8") as console, \
                ProgressBar(launch.label or launch.run_id) as progress:
            start = time.monotonic()
            # Own process group: the terminal's Ctrl-C or hangup reaches the harness only, which then stops the
            # whole group. So every way out of this function must stop the trainer, or it keeps running unseen.
            proc = subprocess.Popen(launch.argv, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT if stdout_lines is None else subprocess.PIPE, text=True,
                                    errors="replace", bufsize=1, env=launch.env, cwd=launch.cwd, start_new_session=True)
            reader = threading.Thread(target=pump, daemon=True)
            reader.start()
            try:
                ended.status = _stream(proc, lines, console, progress, timeout=timeout, start=start,
                                       run_id=launch.run_id, echo=echo, stop=ended.stop)
            except Interrupted:
                ended.status = "interrupted"
                _stop(proc)
            reader.join(timeout=STOP_GRACE_S)  # the rest of what the trainer printed before it went
            while not lines.empty():
                if (text := lines.get_nowait()) is not None:
                    console.write(text)
    except BaseException:  # the harness itself failed (disk full, a bug): stop the trainer, then report it
        ended.stop.uninstall()
        if proc is not None and proc.returncode is None:  # not yet waited on: still running
            _stop(proc)
        raise
    ended.returncode, ended.wall_s = proc.returncode, time.monotonic() - start
    return ended


@dataclass
class FromLog:
    """How a --cmd run is recorded: from the trainer's own log, as harness.ingest records a log."""

    command: str  # as given, run in Launch.cwd
    logfile: str  # "auto", "stdout" or a path (trainer_log)
    target: float
    seed_env: str
    script: Path | None  # the script the command names (script_in_command)
    script_file: tuple[str, bytes] | None  # its name and bytes, read at launch: the code that runs
    since: float  # time.time() at launch
    before: dict  # log_files_in(cwd) at launch


@dataclass
class Launch:
    """One run: the command to launch and what its row records."""

    argv: list[str]
    run_id: str
    run_dir: Path
    track: str
    seed: int
    name: str
    env: dict
    shown: str  # the line that announces the run
    label: str | None = None  # the progress bar's, e.g. "lr 2/4" (variant lr, its run 2 of 4); None: the run id
    cwd: Path | None = None
    fields: dict = field(default_factory=dict)  # our trainer's run: its row's overrides, script and nproc
    from_log: FromLog | None = None  # None: the trainer writes its run directory itself (events.jsonl, code/, ...)


def new_run_dir(runs_dir, track: str, seed: int) -> tuple[str, Path]:
    """A fresh run id and its run directory under runs_dir, made."""
    run_id = new_run_id(track, f"s{seed}")
    run_dir = Path(runs_dir).resolve() / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_id, run_dir


def launch_and_record(launch: Launch, *, timeout: float | None, records_dir, echo: bool = True) -> dict:
    """Run one launch to its end, append its row (run_row) to records_dir/runs.jsonl, print its summary, return
    the row. A stop signal, also one that comes as the run ends or is recorded, raises Interrupted once the
    row is written ("interrupted" where it stopped the trainer)."""
    print(launch.shown, flush=True)
    stdout_lines = [] if launch.from_log is not None else None  # a --cmd run's stdout, kept apart from its stderr
    ended = _launch(launch, timeout=timeout, echo=echo, stdout_lines=stdout_lines)
    try:
        failure = None
        try:
            if launch.from_log is not None:
                status, fields = write_from_log(launch, list(stdout_lines), ended)
            else:
                status, fields = ended.status, launch.fields
            row = run_row(launch.run_dir, run_id=launch.run_id, name=launch.name, track=launch.track,
                          seed=launch.seed, status=status, returncode=ended.returncode, wall_s=ended.wall_s, **fields)
        except Exception as exc:  # the harness failed to read the finished run: record that much, never lose it
            failure = f"{type(exc).__name__}: {exc}".splitlines()[0]
            row = harness_error_row(launch.run_dir, run_id=launch.run_id, name=launch.name, track=launch.track,
                                    seed=launch.seed, returncode=ended.returncode, wall_s=ended.wall_s, error=failure)
        try:
            append_run(row, records_dir)
        except OSError as exc:  # the runs log went away since the check before launch (disk full, say)
            raise RecordsError(f"run {launch.run_id} not recorded in the runs log ({os_error_line(exc)}); "
                               f"its folder {launch.run_dir} holds what it wrote") from None
        if failure is not None:
            raise RecordsError(f"run {launch.run_id} recorded as '{HARNESS_ERROR}': the harness could not read what it "
                               f"wrote ({failure}); its folder {launch.run_dir} holds it")
        print(run_summary(row, last_validation(launch.run_dir)), flush=True)
    finally:
        ended.stop.uninstall()
    if ended.stop.signum is not None:  # also one that came as the run ended, or while it was recorded
        raise Interrupted(ended.stop.signum, recorded=row["status"])
    return row


def run_one(*, track: str, seed: int, name: str, script=DEFAULT_SCRIPT, nproc: int = 1,
            overrides: Sequence[str] = (), timeout: float | None = None, runs_dir=RUNS_DIR,
            records_dir=RECORDS_DIR, echo: bool = True, label: str | None = None) -> dict:
    """Run our trainer once (it writes runs/<run_id>/ itself), record it, return the row."""
    run_id, run_dir = new_run_dir(runs_dir, track, seed)
    argv = trainer_command(script, track, seed, run_dir, overrides, nproc)
    launch = Launch(argv, run_id, run_dir, track, seed, name, env=trainer_env(), shown=f"[{run_id}] {shlex.join(argv)}",
                    label=label, fields=dict(overrides=list(overrides), script=str(script), nproc=nproc))
    return launch_and_record(launch, timeout=timeout, records_dir=records_dir, echo=echo)


# ----------------------------------------------------------------------------------------------
# Any trainer: --cmd


def script_in_command(argv: Sequence[str], cwd: Path) -> Path | None:
    """The Python script a command runs: its first argument ending in .py that is a file (relative to cwd)."""
    return next(((cwd / arg).resolve() for arg in argv if arg.endswith(".py") and (cwd / arg).is_file()), None)


def log_files_in(cwd: Path) -> dict[Path, tuple[int, int]]:
    """{path: (mtime_ns, size)} of the logs/*.txt and logs/*.log files under cwd."""
    found = {}
    for suffix in LOG_SUFFIXES:
        for path in (cwd / "logs").glob(f"*{suffix}"):
            try:
                st = path.stat()
            except OSError:
                continue
            found[path] = (st.st_mtime_ns, st.st_size)
    return found


def _step_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if parse_step_line(line) is not None]


def trainer_log(spec: str, cwd: Path, stdout_lines: Sequence[str], since: float,
                before: dict[Path, tuple[int, int]]) -> tuple[Path | None, str | None]:
    """The trainer's own log file (modded-nanogpt writes its source code only there), or None and why.

    Only a log provably the run's counts, since runs may share a cwd: spec "stdout": none; a path (relative to
    cwd): that file, if the run wrote it; "auto": the last stdout line naming a log written since `since`,
    else the one logs/ file written during the run (changed from `before`) whose step lines include every
    step line the run printed, in order, a validation among them (two such files are no proof: none).
    """
    def fresh(path: Path) -> bool:
        try:
            return path.is_file() and path.stat().st_mtime >= since - 1  # coarse file-system clocks
        except OSError:
            return False

    if spec == "stdout":
        return None, None
    if spec != "auto":
        path = cwd / spec
        if not path.is_file():
            return None, f"--logfile {spec}: no such file in {cwd} after the run"
        return (path, None) if fresh(path) else (None, f"--logfile {spec}: not written during the run")

    for line in reversed(stdout_lines):
        text = line.strip()
        if text.endswith(LOG_SUFFIXES) and not text.startswith("step:") and fresh(cwd / text):
            return cwd / text, None
    written = [p for p, stat in log_files_in(cwd).items() if before.get(p) != stat]
    if not written:
        return None, None
    printed = _step_lines("".join(stdout_lines))
    if not any("val_loss" in parse_step_line(line) for line in printed):
        return None, (f"{len(written)} log file(s) written in {cwd / 'logs'} during the run, none provably its own "
                      "(it printed no path and no validation line to match)")
    matching = []
    for path in written:
        try:
            text = path.read_bytes().decode("utf-8", errors="replace")
        except OSError:
            continue
        lines = iter(_step_lines(text))
        if all(any(line == w for line in lines) for w in printed):  # each printed line, in order
            matching.append(path)
    if len(matching) == 1:
        return matching[0], None
    return None, (f"{len(written)} log file(s) written in {cwd / 'logs'} during the run, "
                  + ("none with" if not matching else f"{len(matching)} with") + " the step lines it printed")


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


def write_from_log(launch: Launch, stdout_lines: list[str], ended: _Ended) -> tuple[str, dict]:
    """Write a finished --cmd run's directory as harness.ingest writes one, from the trainer's log (trainer_log)
    or else its stdout; code/ is the source the log starts with, else the script read at launch. Returns its
    status and its row's fields."""
    how = launch.from_log
    printed = parse_log_bytes("".join(stdout_lines).encode("utf-8"), "stdout")
    path, why_none = trainer_log(how.logfile, launch.cwd, stdout_lines, how.since, how.before)
    parsed = printed
    if path is not None:
        try:
            own = parse_log_bytes(path.read_bytes(), str(path))
            parsed, path = (own, path) if own.log is not None or printed.log is None else (printed, None)
        except OSError as exc:  # gone or unreadable since: the run is still recorded, from its stdout
            path, why_none = None, f"its log {os_error_line(exc)}"
    if why_none:
        with contextlib.suppress(BrokenPipeError):  # `2>&1 | head`: the reader is gone, the run is still recorded
            print(f"warning: [{launch.run_id}] {why_none}; recording its stdout", file=sys.stderr)
    status = cmd_status(parsed.log, ended.status, ended.returncode)
    source = str(path) if path is not None else "stdout"
    pending = launch.run_dir / f".pending-{os.getpid()}"
    try:
        write_run_files(pending, parsed, track=launch.track, target=how.target, seed=launch.seed, status=status,
                        git=git_state(launch.cwd), script=how.script_file,
                        meta={"origin": "cmd", "source": source, "command": how.command, "seed_env": how.seed_env,
                              "script": str(how.script) if how.script else None})
        for entry in pending.iterdir():
            os.rename(entry, launch.run_dir / entry.name)
        pending.rmdir()
    except BaseException:
        shutil.rmtree(pending, ignore_errors=True)
        raise
    return status, dict(script=how.command, nproc=parsed.facts.world_size or 1, origin="cmd", source=source,
                        log_sha256=parsed.sha256, seed_env=how.seed_env)


def run_cmd_one(command: str, *, track: str, seed: int, name: str, seed_env: str = SEED_ENV,
                target: float | None = None, logfile: str = "auto", cwd=None, timeout: float | None = None,
                runs_dir=RUNS_DIR, records_dir=RECORDS_DIR, echo: bool = True, label: str | None = None) -> dict:
    """Run any trainer's command once (the seed in the environment variable `seed_env`), record it from its
    log (write_from_log), return the row."""
    cwd = Path(cwd or os.getcwd()).resolve()
    argv = shlex.split(command)
    target = default_target(track) if target is None else target
    run_id, run_dir = new_run_dir(runs_dir, track, seed)
    script = script_in_command(argv, cwd)
    from_log = FromLog(command, logfile, target, seed_env, script,
                       (script.name, script.read_bytes()) if script else None, time.time(), log_files_in(cwd))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", seed_env: str(seed)}
    launch = Launch(argv, run_id, run_dir, track, seed, name, env=env, label=label, cwd=cwd, from_log=from_log,
                    shown=f"[{run_id}] {seed_env}={seed} {command}  (in {cwd})")
    return launch_and_record(launch, timeout=timeout, records_dir=records_dir, echo=echo)


# ----------------------------------------------------------------------------------------------
# CLI


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Harness arguments before the first '--', trainer overrides after it."""
    argv = list(argv)
    i = argv.index("--") if "--" in argv else len(argv)
    return argv[:i], argv[i + 1:]


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared with harness.compare's run mode."""
    parser.add_argument("--track", default=DEFAULT_TRACK, help=f"trainer track (default {DEFAULT_TRACK})")
    parser.add_argument("--seeds", type=positive_int, default=1, help="runs, one per seed (default 1)")
    parser.add_argument("--seed-start", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--nproc", type=positive_int, default=1, help="processes (GPUs) per run (default 1)")
    parser.add_argument("--timeout", type=positive_finite_float, default=None, help="stop a run after SEC seconds")
    parser.add_argument("--runs-dir", type=Path, default=RUNS_DIR, help="where run directories go")
    parser.add_argument("--records", type=Path, default=RECORDS_DIR,
                        help="records directory (runs.jsonl inside; leaderboard.md goes next to it)")
    parser.add_argument("--no-leaderboard", action="store_true", help="do not re-render leaderboard.md")


def render_leaderboard(records_dir: Path) -> None:
    from harness.leaderboard import render

    try:
        out = render(records_dir)  # leaderboard.md next to the records folder
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
    if args.logfile not in ("auto", "stdout") and (cwd / args.logfile).is_dir():  # the trainer cannot write it
        return f"--logfile {args.logfile}: a folder in {cwd}, not a log file"
    return seed_env_problem(args.seed_env)


# Variables a launch sets for the trainer's processes (torchrun's, Python's): the seed must not overwrite one.
LAUNCH_ENV = ("PYTHONPATH", "PYTHONUNBUFFERED", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
              "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
              "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")


def seed_env_problem(name: str) -> str | None:
    """Why `name` cannot carry the seed (one line), or None: not a variable name, a variable the environment
    already has (PATH, HOME, ...; the seed would overwrite it) or one a launch sets (LAUNCH_ENV)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        return f"--seed-env {name!r}: not an environment variable name"
    if name in os.environ:
        return (f"--seed-env {name}: the environment already has {name}, which the seed would overwrite "
                "(name another variable)")
    if name in LAUNCH_ENV:
        return f"--seed-env {name}: the launch sets {name} for the trainer (name another variable)"
    return None


def destination_problem(runs_dir: Path, records_dir: Path) -> str | None:
    """What keeps a run's folder or its row from being written (one line), or None: checked before the first
    run starts. Makes the runs folder, and the runs log where missing."""
    if problem := not_a_folder("--runs-dir", runs_dir):  # mkdir would say 'File exists'
        return problem
    try:
        Path(runs_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"--runs-dir {runs_dir}: {os_error_line(exc, runs_dir)}"
    if not os.access(runs_dir, os.W_OK | os.X_OK):
        return f"--runs-dir {runs_dir}: not writable"
    try:
        check_appendable(records_dir)
    except RecordsError as exc:
        return f"--records {records_dir}: {exc}"
    return None


def refuse(message: str) -> int:
    """A problem found before any run starts: one line on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    ours, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
    parser = doc_parser("run", __doc__, with_rest=False,
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
                     "logs/*.txt it wrote that holds the step lines it printed; stdout: what it printed)")
    cmd.add_argument("--target", type=positive_finite_float, default=None,
                     help=f"--cmd: target val loss (default: the track's, else {FINEWEB_TARGET})")
    args = parser.parse_args(ours)
    given = [f"--{key.replace('_', '-')}" for key in ("cwd", "seed_env", "logfile", "target")
             if getattr(args, key) != parser.get_default(key)]
    if args.cmd is None and given:
        parser.error(f"{', '.join(given)}: only with --cmd")
    track = args.track or (CMD_TRACK if args.cmd is not None else DEFAULT_TRACK)
    # the track and the name go into run ids, folders, the runs log and the leaderboard's tables
    for problem in (name_problem("track", track), args.name is not None and name_problem("--name", args.name)):
        if problem:
            parser.error(problem)
    try:
        overrides = normalize_argv(overrides)
    except ConfigError as exc:
        parser.error(str(exc))
    if args.cwd is not None and not args.cwd.is_dir():
        parser.error(f"--cwd {args.cwd}: no such directory")
    problem = _cmd_problem(args, overrides) if args.cmd is not None else check_overrides(overrides)
    if problem:
        parser.error(problem)
    script = args.script or DEFAULT_SCRIPT
    if args.cmd is None and not Path(script).is_file():
        parser.error(f"--script {script}: no such file")

    seeds = range(args.seed_start, args.seed_start + args.seeds)
    rows = []
    previous = raise_on_stop_signals()
    try:
        problem = None if args.cmd is not None else first_config_problem(
            [(f"seed {seed}", dict(script=script, track=track, seed=seed, overrides=overrides, nproc=args.nproc or 1))
             for seed in seeds])
        problem = problem or destination_problem(args.runs_dir, args.records)
        if problem:
            return refuse(problem)
        for k, seed in enumerate(seeds, 1):
            each = dict(track=track, seed=seed, name=args.name or track, timeout=args.timeout, runs_dir=args.runs_dir,
                        records_dir=args.records, label=f"run {k}/{len(seeds)} (seed {seed})")
            if args.cmd is not None:
                rows.append(run_cmd_one(args.cmd, seed_env=args.seed_env, target=args.target, logfile=args.logfile,
                                        cwd=args.cwd, **each))
            else:
                rows.append(run_one(script=script, nproc=args.nproc or 1, overrides=overrides, **each))
    except RecordsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        code = interrupted_exit(exc)
        if (rows or getattr(exc, "recorded", None)) and not args.no_leaderboard:
            render_leaderboard(args.records)
        return code
    finally:
        restore_handlers(previous)
    if len(rows) > 1:
        print(group_summary(rows))
    if not args.no_leaderboard:
        render_leaderboard(args.records)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    run_cli(main)
