"""The run directory's event log: one JSON object per line, the contract between trainer and harness.

train_gpt.py writes `events.jsonl` in its run directory; the harness reads it back. Every line has
"event" (its kind) and "time" (UTC ISO-8601). The kinds, in the order a run writes them:

  config  {"track": str, "config": {resolved hyperparameters}}
  meta    {"code_hash": str, "world_size": int, "hardware": {...}, "versions": {...}, "git": {...}}
  step    {"step": int, "train_time_ms": float, "step_avg_ms": float, "train_loss": float|None,
           "tokens_per_s": float, "mfu": float|None}
  val     {"step": int, "val_loss": float, "train_time_ms": float}
  result  {"status": "ok"|"diverged"|"error"|"interrupted" (SIGINT, SIGTERM, SIGHUP), "reached_target": bool, "target_val_loss": float,
           "stop_at_target": bool, "time_to_target_ms": float|None (first val <= target), "steps": int, "tokens": int, "final_val_loss": float|None,
           "train_time_ms": float (the run's time: at its final validation), "peak_memory_mb": float|None, "tokens_per_s": float, "mfu": float|None,
           "error": str|None}

A step event is written when its loss reaches the host, one step late (the trainer never waits for the GPU
between validations), so a run stopped by a signal or a crash may lack its last step event; its train_time_ms
is host time when the step was queued. Val and result times are exact (the clock stops after a device
synchronize).

A run taken in from another trainer's text log (harness.ingest; harness.run --cmd) has the same events,
read from that log (harness/ingest.py: write_run_files): config holds the target, num_steps, seed and
stop_at_target false; meta adds "origin" ("ingested" | "cmd"), "embedded_code", "log_sha256", "source",
"started" and, for --cmd, "command", "seed_env" and "script"; the result's status may also be
"incomplete" (the log ends before its planned last step), or for --cmd "crashed" or "timeout".

Only rank 0 writes, each line in one flushed write() call: a crash leaves every finished line readable,
and a reader skips (and reports) a torn last line.
"""
from __future__ import annotations

import datetime as _dt
import errno
import json
import math
import os
import stat
from pathlib import Path
from typing import Iterator

EVENTS_FILE = "events.jsonl"
TRAIN_LOG_FILE = "train.log"  # the trainer's own log lines (harness.run keeps all it printed in console.log)


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


DIVERGED_ABOVE = 2.0  # x ln(vocab): a loss above this is divergence (divergence's docstring says why)
UNIFORM_MARGIN = 0.1  # val loss: how far from ln(vocab) a finished run's curve must move to count as learning
UNIFORM_EXACT = 1e-3  # val loss: this close to ln(vocab) is uniform logits (a collapsed model)


def divergence(val_losses, train_losses, vocab_size: int | None, finished: bool = True) -> str | None:
    """Why a run's losses say it diverged (one line), or None: the one divergence policy.

    - A loss (train or val) that is not finite.
    - A loss above DIVERGED_ABOVE x ln(vocab_size), the loss of guessing uniformly (an untrained model's,
      10.83 for GPT-2's vocabulary): twice it is a confidently wrong model, which only an unstable
      optimization makes.
    - For a run that finished its schedule, a final val loss no better than guessing uniformly: more than
      UNIFORM_MARGIN above ln(vocab_size); at or above it after a validation more than UNIFORM_MARGIN
      below it (learned, then lost); or within UNIFORM_EXACT of it (a collapsed model's uniform logits).
    A smoke run that has not yet moved off ln(vocab_size) by more than rounding is not judged diverged: the loss
    rule fails it. The last two need vocab_size; without it only the first applies.
    """
    losses = [(kind, loss) for kind, values in (("val", val_losses), ("train", train_losses)) for loss in values]
    for kind, loss in losses:
        if loss is None or not math.isfinite(loss):
            return f"{kind} loss {loss} is not finite"
    if not vocab_size or vocab_size < 2:
        return None
    uniform = math.log(vocab_size)
    for kind, loss in losses:
        if loss > DIVERGED_ABOVE * uniform:
            return (f"{kind} loss {loss:.4g} is above {DIVERGED_ABOVE:g} x ln(vocab {vocab_size}) = "
                    f"{DIVERGED_ABOVE * uniform:.2f}")
    final, earlier = (val_losses[-1], val_losses[:-1]) if val_losses else (None, [])
    if finished and final is not None and (
            final > uniform + UNIFORM_MARGIN or abs(final - uniform) < UNIFORM_EXACT
            or (final >= uniform and any(loss < uniform - UNIFORM_MARGIN for loss in earlier))):
        return (f"final val loss {val_losses[-1]:.4f} is not below ln(vocab {vocab_size}) = {uniform:.4f}: "
                "no better than guessing uniformly")
    return None


_JSON_TYPES = {"boolean": bool, "object": dict, "array": list, "string": str, "integer": int, "number": (int, float),
               "null": type(None)}  # boolean first: a bool is also an int


def is_json_type(value, types: str) -> bool:
    """Whether a parsed JSON value has one of the types 'string|null|...' ("absent" is ignored here; a
    boolean is only a boolean, never an integer or a number)."""
    return any(isinstance(value, bool) if t == "boolean" else isinstance(value, _JSON_TYPES[t]) and not isinstance(value, bool)
               for t in types.split("|") if t != "absent")


def json_type_name(value) -> str:
    """'a string', 'an object', 'null', ...: what a JSON value is, for a message."""
    if value is None:
        return "null"
    name = next((t for t, cls in _JSON_TYPES.items() if isinstance(value, cls)), type(value).__name__)
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def type_problem(obj: dict, types: dict[str, str], where: str = "", *, absent_ok: bool = True) -> str | None:
    """The first key of obj whose value is not of its JSON type in `types`, as '<where>.<key> is a string, expected
    a number or null' (the key alone without `where`), or None. A dotted key ('stats.previous.folder') names a value
    in nested objects, listed after its parents, and is not checked under a null or absent one. An absent key is
    fine; with absent_ok=False, only where its types include 'absent' ('<key> missing' otherwise)."""
    for key, allowed in types.items():
        holder, (*parents, leaf) = obj, key.split(".")
        for parent in parents:
            holder = holder.get(parent) if isinstance(holder, dict) else None
        name = f"{where}.{key}" if where else key
        if not isinstance(holder, dict):
            continue  # under a null or absent object
        if leaf not in holder:
            if not absent_ok and "absent" not in allowed.split("|"):
                return f"{name} missing"
        elif not is_json_type(holder[leaf], allowed):
            expected = allowed.replace("|absent", "").replace("|", " or ")
            return f"{name} is {json_type_name(holder[leaf])}, expected {expected}"
    return None


def nonfinite_key(value, where: str = "") -> str | None:
    """The dotted key of the first NaN or infinity in a parsed JSON value (Python's json reads them), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "the value"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    keys = ((f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}".lstrip("."), item) for key, item in items)
    return next((found for key, item in keys if (found := nonfinite_key(item, key))), None)


class EventLog:
    """Append-only JSON-lines writer for one run directory (rank 0 only)."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / EVENTS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, event: str, **fields) -> None:
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")
        line = json.dumps({"event": event, "time": now, **finite_or_none(fields)}, allow_nan=False)
        self._file.write(line + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


MAX_LOG_BYTES = 64 * 2**20  # a training log or events file read whole: far above a real one (a 2000-step
# modded-nanogpt log with its code is under 1 MB; our train.log and events.jsonl take ~200 bytes a step)


def read_regular(path: str | os.PathLike, limit: int | None = MAX_LOG_BYTES) -> bytes:
    """A regular file's bytes; never blocks on a FIFO or reads a device without end. Raises OSError, whose
    strerror says why, for a FIFO, a device or a socket, a folder (EISDIR), or a file over `limit` bytes."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once, without waiting for a writer
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, device or socket); logs are read from "
                          "regular files only", str(path))
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
            size += len(chunk)
            if limit is not None and size > limit:
                raise OSError(errno.EFBIG, f"larger than {limit} bytes, more than any training log", str(path))
        return b"".join(chunks)
    finally:
        os.close(fd)


def iter_json_lines(path: str | os.PathLike, problems: list[str],
                    limit: int | None = MAX_LOG_BYTES) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) of each non-blank line of a JSON-lines file. A line that is not JSON
    (a torn last line, say) is skipped and reported in `problems` as "<file>:<line>: skipped damaged line (...)"."""
    text = read_regular(path, limit).decode("utf-8", errors="replace")
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the parser goes
            problems.append(f"{path}:{lineno}: skipped damaged line ({exc})")
            continue
        yield lineno, value


def read_events(path: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """(events, problems) of an events file (or the run directory holding one): the events that parsed, and one
    message per line that did not, naming the file and line; a damaged line never stops the rest from loading."""
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
    return next((event for event in reversed(events) if event["event"] == kind), None)


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
