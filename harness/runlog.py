"""The run directory's event log: one JSON object per line, the contract between trainer and harness.

train_gpt.py writes `events.jsonl` in its run directory; the harness reads it back. Every line has
"event" (its kind) and "time" (UTC ISO-8601). The kinds, in the order a run writes them:

  config  {"track": str, "config": {resolved hyperparameters}}
  meta    {"code_hash": str, "world_size": int, "hardware": {...}, "versions": {...}, "git": {...}}
  step    {"step": int, "train_time_ms": float, "step_avg_ms": float, "train_loss": float|None,
           "tokens_per_s": float, "mfu": float|None}
  val     {"step": int, "val_loss": float, "train_time_ms": float}
  result  {"status": "ok"|"diverged"|"error"|"interrupted" (Ctrl-C), "reached_target": bool, "target_val_loss": float,
           "stop_at_target": bool, "time_to_target_ms": float|None (first val <= target), "steps": int, "tokens": int, "final_val_loss": float|None,
           "train_time_ms": float (the run's time: at its final validation), "peak_memory_mb": float|None, "tokens_per_s": float, "mfu": float|None,
           "error": str|None}

A step event is written when its loss reaches the host, one step late (the trainer never waits for the
GPU between validations), so a run stopped by a signal or a crash may lack its last step event. Its
train_time_ms is host time when the step was queued, so on a GPU it can run ahead of the device by a
step; val and result times are exact (the clock stops after a device synchronize).

A run taken in from another trainer's text log (harness.ingest; harness.run --cmd) has the same
events, read from that log (harness/ingest.py), which is its train.log: config holds the target,
num_steps (the M of step:N/M), seed (null for a log, the seed passed for --cmd) and stop_at_target
false; meta adds "origin" ("ingested" | "cmd"), "embedded_code" (bool: code/ is the source the log
starts with; false: code/ is the script the command ran, or there is no code/ and code_hash is null),
"log_sha256" (of train.log), "source" (the file it was read from, or "stdout") and, for --cmd,
"command", "seed_env" and "script"; its hardware is {"kind": "cuda", "gpu", "gpu_count",
"peak_flops"} from the log's nvidia-smi table (world_size = gpu_count), versions those of its
"Running ..." lines, git {"commit": null, "dirty": null} for a log (the command's working tree for
--cmd). Step events carry what the line printed (train_loss, tokens_per_s and mfu mostly null); the
result's status is "ok", "diverged", "incomplete" (the log ends before its planned last step), or for
--cmd also "crashed", "timeout" or "interrupted"; its tokens and mfu are null.

Only rank 0 writes. Each line is written with one write() call and flushed, so a crash leaves every
finished line readable; a reader skips (and reports) a torn last line instead of failing.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
from pathlib import Path
from typing import Iterator

EVENTS_FILE = "events.jsonl"
TRAIN_LOG_FILE = "train.log"  # the trainer's own log lines (harness.run keeps all it printed in console.log)


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def finite_or_none(value):
    """JSON has no NaN or infinity: a non-finite float (a diverged loss, an undefined std) becomes null,
    with the status or the field's meaning saying why."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


class EventLog:
    """Append-only JSON-lines writer for one run directory (rank 0 only)."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / EVENTS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, event: str, **fields) -> None:
        line = json.dumps({"event": event, "time": _utc_now(), **finite_or_none(fields)}, allow_nan=False)
        self._file.write(line + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def iter_json_lines(path: str | os.PathLike, problems: list[str]) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) of each non-blank line of a JSON-lines file. A line that is not JSON
    (a torn last line, say) is skipped and reported in `problems` as "<file>:<line>: skipped damaged line (...)"."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as exc:
                problems.append(f"{path}:{lineno}: skipped damaged line ({exc})")
                continue
            yield lineno, value


def read_events(path: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """Read an events file (or the run directory holding one).

    Returns (events, problems): the events that parsed, and one message per line that did not,
    naming the file and line number. A damaged line never stops the rest from loading.
    """
    path = Path(path)
    if path.is_dir():
        path = path / EVENTS_FILE
    events, problems = [], []
    for lineno, obj in iter_json_lines(path, problems):
        if isinstance(obj, dict) and "event" in obj:
            events.append(obj)
        else:
            problems.append(f"{path}:{lineno}: skipped damaged line (not an event object)")
    return events, problems


def last_event(events: list[dict], kind: str) -> dict | None:
    for event in reversed(events):
        if event["event"] == kind:
            return event
    return None


class RunWriter:
    """What a run writes on rank 0: lines on the console and in run_dir/train.log, events in events.jsonl.
    With run_dir None (the other ranks) it writes nothing."""

    def __init__(self, run_dir: str | os.PathLike | None):
        self.events = EventLog(run_dir) if run_dir else None
        self.file = open(Path(run_dir) / TRAIN_LOG_FILE, "a", encoding="utf-8") if run_dir else None

    def line(self, text: str, console: bool = True) -> None:
        if self.file:
            if console:
                print(text, flush=True)
            self.file.write(text + "\n")
            self.file.flush()

    def event(self, kind: str, **fields) -> None:
        if self.events:
            self.events.write(kind, **fields)

    def close(self) -> None:
        if self.file:
            self.file.close()
            self.events.close()
