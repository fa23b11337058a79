"""One parser for training logs: modded-nanogpt's text logs, our train.log, and our run directories.

A step line is a line that *starts* with `step:N/M` (`step:1390/1390 val_loss:3.2775 train_time:79532ms
step_avg:57.22ms`; our trainer appends `tokens_per_s:T mfu:P%`); its known `key:value` tokens are read,
and every other line (the source code a modded-nanogpt log starts with, whose f-strings hold "step:", versions,
the GPU table) is skipped. Validation lines make the loss curve; the last one gives the final loss and the
run's time (records/README.md, "How a run counts"). A text log is "ok" when its last validation is at the planned
step M or it has our trainer's closing `result: ...` line, else "incomplete". A run directory is read
from its `events.jsonl` (harness/runlog.py); its train.log supplies the planned step count.

    load_run(path)    a log file, an events.jsonl, or a run directory -> RunLog
    load_runs(path)   the above, or a folder of log files and run directories -> [RunLog]
"""
from __future__ import annotations

import difflib
import hashlib
import itertools
import math
import os
import re
from decimal import Decimal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from harness.runlog import (TRAIN_LOG_FILE, EVENTS_FILE, divergence, last_event, read_events, read_regular,
                            type_problem)
from harness.snapshot import embedded_code_hash

LOG_SUFFIXES = (".txt", ".log")
CODE_SEPARATOR = "=" * 100  # modded-nanogpt's print0("="*100) after the logged source

# The vocabulary size a log states: our train.log's config line ('vocab_size': 50304), or the code a
# modded-nanogpt log starts with (GPT(vocab_size=50257, ...)).
_VOCAB = re.compile(r"""\bvocab_size['"]?\s*(?::\s*int\s*)?[:=]\s*(\d+)""")
_STEP_LINE = re.compile(r"^step:(\d+)/(\d+)(?=\s|$)")
# A step line's value: '79532ms' -> 79532, '41.2%' -> 41.2, 'nan', 'inf'; anything else ('n/a') is not read.
_VALUE = re.compile(r"^([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?nan|[-+]?inf)(ms|%)?$", re.IGNORECASE)


# The JSON types of the events' fields that a RunLog reads (runlog.py lists the events); a field of
# another type makes the run unreadable, in one line naming the file and the field.
CONFIG_EVENT_TYPES = {"track": "string|null", "config": "object|null", "config.seed": "integer|null",
                      "config.target_val_loss": "number|null", "config.stop_at_target": "boolean|integer|null",
                      "config.num_steps": "integer|null", "config.vocab_size": "integer|null"}
META_EVENT_TYPES = {"code_hash": "string|null", "world_size": "integer|null", "hardware": "object|null",
                    "versions": "object|null", "git": "object|null", "origin": "string|null",
                    "embedded_code": "boolean|null", "log_sha256": "string|null", "command": "string|null",
                    "started": "string|null"}
RESULT_EVENT_TYPES = {"status": "string", "tokens": "integer|null", "tokens_per_s": "number|null",
                      "target_val_loss": "number|null", "steps": "integer|null"}


class LogError(ValueError):
    """A log that cannot be read. The message is one line naming the file and the problem."""


class InvalidLog(LogError):
    """A log whose values are impossible (harness.logs.impossible); the message names the line or event."""


@dataclass
class RunLog:
    """One training run as read from its log. Times in milliseconds of timed training."""

    source: str  # the file or run directory it was read from
    name: str  # the run id for our run directories, the file stem for text logs
    val_steps: list[int] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    val_times_ms: list[float] = field(default_factory=list)
    train_losses: list[float] = field(default_factory=list)  # those the log prints (step lines or step events)
    vocab_size: int | None = None  # as the log states it (our config; modded-nanogpt's code), None where it does not
    divergence: str | None = None  # why its losses say it diverged (harness.runlog.divergence), None if they do not
    last_step: int | None = None  # last step line seen (validation or not)
    total_steps: int | None = None  # M in step:N/M (planned steps)
    step_avg_ms: float | None = None
    tokens_per_s: float | None = None
    status: str = "incomplete"  # ok | diverged | error | incomplete (no final step / no result event)
    code_hash: str | None = None  # events: meta.code_hash; text logs: the hash of the embedded code
    code: str | None = None  # text logs: the source code the log starts with, None where it has none
    # From events.jsonl only (None for text logs):
    run_id: str | None = None
    track: str | None = None
    seed: int | None = None
    target: float | None = None
    tokens: int | None = None
    world_size: int | None = None
    config: dict | None = None
    hardware: dict | None = None
    versions: dict | None = None
    git: dict | None = None
    result: dict | None = None
    stop_at_target: bool | None = None  # events: the config's flag (None for text logs and older runs)
    origin: str | None = None  # events: meta.origin, "ingested" (harness.ingest) or "cmd" (harness.run --cmd); None: ours
    embedded_code: bool | None = None  # events: meta.embedded_code, whether code/ is the source its train.log starts with
    log_sha256: str | None = None  # events: meta.log_sha256, of the train.log a foreign run was read from
    command: str | None = None  # events: meta.command, the command line of a harness.run --cmd run
    started: str | None = None  # events: meta.started, when an ingested log says its run started (ISO 8601)
    identity: str | None = None  # what makes the log one run (log_identity); a copy of a log has the same
    problems: list[str] = field(default_factory=list)  # damaged lines skipped while reading

    @property
    def final_val_loss(self) -> float | None:
        return self.val_losses[-1] if self.val_losses else None

    @property
    def train_time_ms(self) -> float | None:
        """The run's time, as every speedrun record counts it: the train time of its final validation."""
        return self.val_times_ms[-1] if self.val_times_ms else None

    @property
    def identities(self) -> set[str]:
        """Its step lines' `identity` and its validations at a log's printed precision (kept by a run folder's
        events even where its train.log is gone): two logs sharing one are one run."""
        points = "\n".join(f"{s} {v:.4f} {t:.0f}" for s, v, t in zip(self.val_steps, self.val_losses, self.val_times_ms))
        curve = "validations\n" + points if points else None
        return {i for i in (self.identity, curve and hashlib.sha256(curve.encode()).hexdigest()) if i}

    @property
    def stopped_early(self) -> bool:
        """Whether the run ended before its planned step count without being cut off: stopped at the target."""
        return (self.status == "ok" and self.total_steps is not None and self.final_step is not None
                and self.final_step < self.total_steps)

    @property
    def final_step(self) -> int | None:
        return self.val_steps[-1] if self.val_steps else None

    @property
    def hardware_label(self) -> str | None:
        """'8x NVIDIA H100 80GB HBM3', or 'CPU <model> (<n> cores)'; None without a meta event."""
        h = self.hardware
        if not h:
            return None
        if h.get("kind") == "cuda":
            return f"{self.world_size or h.get('gpu_count') or 1}x {h.get('gpu')}"
        return f"CPU {h.get('cpu')}" + (f" ({h['cpu_count']} cores)" if h.get("cpu_count") else "")

    def time_to_target(self, target: float | None = None) -> float | None:
        """Train time (ms) of the first validation with loss <= target (the log's own target where none is given;
        an extra figure, not the run's time); None if never reached."""
        target = self.target if target is None else target
        return next((time_ms for loss, time_ms in zip(self.val_losses, self.val_times_ms) if loss <= target), None)


# ----------------------------------------------------------------------------------------------
# Text logs


CONFIG_KEYS_FREE = ("seed", "run_dir")  # config fields that may differ between runs of one set (a record, a variant)


def config_diff(a: dict, b: dict) -> str | None:
    """The first config field, apart from CONFIG_KEYS_FREE, in which two runs differ ('key A vs B'), or None."""
    return next((f"{key} {a.get(key)!r} vs {b.get(key)!r}" for key in sorted(set(a) | set(b))
                 if key not in CONFIG_KEYS_FREE and a.get(key) != b.get(key)), None)


def printed_tolerance(text: str) -> float:
    """Half a unit of the last printed digit of a step line's value (_VALUE): '3.2775' -> 5e-5, '1.23e-04' -> 5e-7,
    '42' -> 0.5; inf for 'nan' or 'inf', and for a last digit beyond a float ('1e999'); 0 below one ('1e-999').
    The exponent is clamped to a float's range first: scaleb refuses exponents beyond Decimal's own."""
    exponent = Decimal(text).as_tuple().exponent
    return math.inf if not isinstance(exponent, int) else float(Decimal("0.5").scaleb(max(-400, min(400, exponent))))


# The keys a step line gives, as printed -> the field they fill; other keys are ignored.
STEP_KEYS = {"val_loss": "val_loss", "train_time": "train_time_ms", "step_avg": "step_avg_ms",
             "tokens_per_s": "tokens_per_s", "mfu": "mfu", "train_loss": "train_loss"}


def _step_line(line: str) -> tuple[dict, dict] | None:
    """(parse_step_line's fields, {field: its number as printed}), None for a line that is not a step line. A key
    given twice (`step` included) makes the line malformed: only its step and total, and "malformed", are read."""
    m = _STEP_LINE.match(line)
    if not m:
        return None
    fields, printed, seen = {"step": int(m.group(1)), "total": int(m.group(2))}, {}, {"step"}
    for key, _, value in (token.partition(":") for token in line[m.end():].split() if token.find(":") > 0):
        if key in seen:
            return {"step": fields["step"], "total": fields["total"], "malformed": f"{key} given twice"}, {}
        seen.add(key)
        if key in STEP_KEYS and (v := _VALUE.match(value)):
            fields[STEP_KEYS[key]], printed[STEP_KEYS[key]] = float(v.group(1)), v.group(1)
    return fields, printed


def parse_step_line(line: str) -> dict | None:
    """{"step": N, "total": M, and the STEP_KEYS fields given with a readable value}, or "malformed" (why) for a
    line that gives a key twice; None if the line is not a step line."""
    parsed = _step_line(line)
    return parsed[0] if parsed else None


def header_lines(text: str) -> list[str]:
    """The lines before the first step line: a log's source code, versions, GPU table and config lines."""
    lines = text.splitlines()
    return lines[:next((i for i, line in enumerate(lines) if _STEP_LINE.match(line)), len(lines))]


def step_lines(text: str, source: str) -> Iterator[tuple[int, dict, dict]]:
    """(line number, fields, printed) of each step line (_step_line). Raises InvalidLog, naming source and line
    number, at a malformed step line."""
    for lineno, line in enumerate(text.splitlines(), 1):
        if (parsed := _step_line(line)) is None:
            continue
        if "malformed" in parsed[0]:
            raise InvalidLog(f"{source}:{lineno}: {parsed[0]['malformed']}: not a valid log")
        yield lineno, *parsed


def embedded_code(text: str) -> str | None:
    """The source code a modded-nanogpt log starts with, exactly as printed: everything before the first line of
    100 '=' (after it, where the log opens with one, as 2024 logs do). None where a step line comes first or the
    block holds no Python (`import` or `def` at a line start)."""
    lines = text.split("\n")
    start = 1 if lines and lines[0].rstrip("\r") == CODE_SEPARATOR else 0
    for i in range(start, len(lines)):
        line = lines[i].rstrip("\r")
        if _STEP_LINE.match(line):
            return None
        if line == CODE_SEPARATOR:
            code = "\n".join(lines[start:i])
            return code if re.search(r"^(import |from \S+ import |def )", code, re.MULTILINE) else None
    return None


DIFF_LINES = 3  # differing lines shown per pair of codes


def code_differences(a: str, b: str, limit: int = DIFF_LINES) -> list[dict]:
    """The first `limit` lines in which code b differs from code a: {"line_a", "a", "line_b", "b"}, 1-based line
    numbers, None (and no text) on the side that has no such line (an insertion or a deletion)."""
    lines_a, lines_b = a.split("\n"), b.split("\n")
    opcodes = difflib.SequenceMatcher(None, lines_a, lines_b, autojunk=False).get_opcodes()
    pairs = (pair for tag, i1, i2, j1, j2 in opcodes if tag != "equal"
             for pair in itertools.zip_longest(range(i1, i2), range(j1, j2)))
    return [{"line_a": None if ia is None else ia + 1, "a": None if ia is None else lines_a[ia],
             "line_b": None if ib is None else ib + 1, "b": None if ib is None else lines_b[ib]}
            for ia, ib in itertools.islice(pairs, limit)]


def describe_difference(d: dict) -> str:
    """'line 12 'x = 1' vs line 12 'x = 2'', one differing line, either side possibly absent."""
    return " vs ".join(f"line {d['line_' + s]} {d[s].strip()!r}" if d["line_" + s] is not None else "(no line)"
                       for s in "ab")


def log_identity(text: str) -> str | None:
    """What makes a log one run: the sha256 of its step lines, whitespace collapsed (None without any). Two files
    with the same step lines are one run whatever else differs (line ends, an edited header): two real runs never
    print the same train times at every step."""
    lines = [" ".join(line.split()) for line in text.splitlines() if parse_step_line(line) is not None]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest() if lines else None


def impossible(fields: dict, previous: dict | None) -> str | None:
    """What makes a step line's (or a val event's) values impossible, or None: a negative loss, a train time
    negative or not finite, a step past its planned total, a step or total that changes or goes back, a
    validation's time below the one before's. A NaN or +inf loss is possible (divergence). Time is compared
    between validations only: 2024 logs restart their clock after warm-up. `previous`: the last line's fields
    and, as "val_time_ms", the last validation's time."""
    for key in ("val_loss", "train_loss"):
        if key in fields and fields[key] < 0:
            return f"{key} {fields[key]} is negative (a cross-entropy loss is at least 0)"
    time_ms = fields.get("train_time_ms")
    if time_ms is not None and not (math.isfinite(time_ms) and time_ms >= 0):
        return f"train_time {time_ms}ms is not a time (negative or not finite)"
    if fields.get("total") is not None and fields["step"] > fields["total"]:
        return f"step {fields['step']} is past the planned {fields['total']}"
    if previous is not None:
        if fields.get("total") is not None and previous.get("total") is not None and fields["total"] != previous["total"]:
            return f"planned steps {fields['total']}, but {previous['total']} before"
        if fields["step"] < previous["step"]:
            return f"step {fields['step']} comes after step {previous['step']}: steps go backwards"
        last_val_ms = previous.get("val_time_ms")
        if "val_loss" in fields and time_ms is not None and last_val_ms is not None and time_ms < last_val_ms:
            return f"train_time {time_ms:g}ms comes after {last_val_ms:g}ms at the validation before: time goes backwards"
    return None


def parse_text(text: str, *, source: str, name: str | None = None) -> RunLog:
    """A text log -> RunLog. Raises LogError without a validation line, InvalidLog (naming the line) at a
    malformed or impossible one."""
    log = RunLog(source=source, name=name if name is not None else Path(source).stem)
    log.code = embedded_code(text)
    log.code_hash = embedded_code_hash(log.code) if log.code is not None else None
    log.identity = log_identity(text)
    previous: dict | None = None
    for lineno, fields, _ in step_lines(text, source):
        if problem := impossible(fields, previous):
            raise InvalidLog(f"{source}:{lineno}: {problem}: not a valid log")
        previous = {**(previous or {}), **fields}
        log.last_step, log.total_steps = fields["step"], fields["total"]
        log.step_avg_ms = fields.get("step_avg_ms", log.step_avg_ms)
        log.tokens_per_s = fields.get("tokens_per_s", log.tokens_per_s)
        if "train_loss" in fields:
            log.train_losses.append(fields["train_loss"])
        if "val_loss" in fields and "train_time_ms" in fields:  # a torn last line may lack its time
            previous["val_time_ms"] = fields["train_time_ms"]
            log.val_steps.append(fields["step"])
            log.val_losses.append(fields["val_loss"])
            log.val_times_ms.append(fields["train_time_ms"])
    if not log.val_steps:
        raise LogError(f"{source}: no validation line "
                       "(a line starting 'step:N/M' with 'val_loss:X' and 'train_time:Tms')")
    log.vocab_size = int(m.group(1)) if (m := _VOCAB.search("\n".join(header_lines(text)))) else None
    # at its planned last step, or our trainer's closing "result: ..." line (it may stop early, at the target)
    finished = log.final_step == log.total_steps or any(line.startswith("result: ") for line in text.splitlines())
    log.divergence = divergence(log.val_losses, log.train_losses, log.vocab_size, finished=finished)
    if log.divergence:
        log.status = "diverged"
    elif finished:
        log.status = "ok"
    return log


def _read(path: Path, what: str = "log file", read=read_regular):
    """read(path), an OSError raised as a LogError, one line naming the file."""
    try:
        return read(path)
    except FileNotFoundError:
        raise LogError(f"{path}: no such {what}") from None
    except OSError as exc:
        raise LogError(f"{path}: cannot read ({exc.strerror or exc})") from None


def parse_log_file(path: str | os.PathLike) -> RunLog:
    text = _read(Path(path)).decode("utf-8", errors="replace")
    return parse_text(text, source=str(path))


# ----------------------------------------------------------------------------------------------
# Our run directories


def parse_events(events_path: str | os.PathLike, *, require_val: bool = True) -> RunLog:
    """Read a run directory's events.jsonl (and its train.log for the planned step count)."""
    events_path = Path(events_path)
    run_dir = events_path.parent
    events, problems = _read(events_path, "events file", read_events)
    log = RunLog(source=str(run_dir), name=run_dir.name, run_id=run_dir.name, problems=problems)
    config, meta, result = last_event(events, "config"), last_event(events, "meta"), last_event(events, "result")
    for event, types in ((config, CONFIG_EVENT_TYPES), (meta, META_EVENT_TYPES), (result, RESULT_EVENT_TYPES)):
        if event is not None and (problem := type_problem(event, types, event["event"])):
            raise LogError(f"{events_path}: {problem}")
    if config:
        log.track = config.get("track")
        log.config = config.get("config") or {}
        log.seed = log.config.get("seed")
        log.target = log.config.get("target_val_loss")
        log.stop_at_target = log.config.get("stop_at_target")
    for key in META_EVENT_TYPES:  # each a RunLog field of the same name
        setattr(log, key, (meta or {}).get(key))
    previous_val: dict | None = None
    for e in events:
        try:
            if e["event"] == "val":
                loss = e["val_loss"]
                fields = {"step": int(e["step"]), "val_loss": math.nan if loss is None else float(loss),  # null: non-finite
                          "train_time_ms": float(e["train_time_ms"])}
                if problem := impossible(fields, previous_val):
                    raise InvalidLog(f"{events_path}: val event at step {fields['step']}: {problem}: not a valid log")
                previous_val = {**fields, "val_time_ms": fields["train_time_ms"]}
                log.val_steps.append(fields["step"])
                log.val_losses.append(fields["val_loss"])
                log.val_times_ms.append(fields["train_time_ms"])
            elif e["event"] == "step":
                log.last_step = int(e["step"])
                log.step_avg_ms = e.get("step_avg_ms", log.step_avg_ms)
                log.tokens_per_s = e.get("tokens_per_s", log.tokens_per_s)
                if e.get("train_loss") is not None:
                    log.train_losses.append(float(e["train_loss"]))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, LogError):
                raise
            log.problems.append(f"{events_path}: skipped malformed {e['event']} event ({exc!r})")
    if log.val_steps:
        log.last_step = max(log.last_step or 0, log.val_steps[-1])
    if result:
        log.result = result
        log.status = result.get("status", "error")
        log.tokens = result.get("tokens")
        log.tokens_per_s = result.get("tokens_per_s", log.tokens_per_s)
        if result.get("target_val_loss") is not None:
            log.target = result["target_val_loss"]
    console = run_dir / TRAIN_LOG_FILE
    if os.path.lexists(console):  # lexists: a link loop or a dangling link is named as unreadable, not passed over
        text = _read(console).decode("utf-8", errors="replace")
        for _, fields, _ in step_lines(text, str(console)):
            log.total_steps = fields["total"]
        log.identity = log_identity(text)
    if log.identity is None and log.val_steps:  # no train.log: the curve of its val events
        curve = "\n".join(f"{s} {v!r} {t!r}" for s, v, t in zip(log.val_steps, log.val_losses, log.val_times_ms))
        log.identity = hashlib.sha256(curve.encode()).hexdigest()
    if log.total_steps is None and result:
        log.total_steps = result.get("steps")
    log.vocab_size = (log.config or {}).get("vocab_size")  # an integer or None: CONFIG_EVENT_TYPES checked it
    log.divergence = divergence(log.val_losses, log.train_losses, log.vocab_size, finished=log.status == "ok")
    if log.divergence and log.status in ("ok", "incomplete"):  # a result that says ok may hold a diverged curve
        log.status = "diverged"
    if require_val and not log.val_steps:
        raise LogError(f"{events_path}: no validation line (no 'val' event)")
    return log


def load_run(path: str | os.PathLike, *, require_val: bool = True) -> RunLog:
    """A text log file, an events.jsonl, or a run directory (events.jsonl, else train.log) -> RunLog. Raises
    LogError, naming the file, for a missing path or a log without validation."""
    path = Path(path)
    if path.is_dir():
        if os.path.lexists(path / EVENTS_FILE):  # lexists: a link loop is named as unreadable, not passed over
            return parse_events(path / EVENTS_FILE, require_val=require_val)
        if os.path.lexists(path / TRAIN_LOG_FILE):
            log = parse_log_file(path / TRAIN_LOG_FILE)
            log.name = log.run_id = path.name
            return log
        raise LogError(f"{path}: not a run directory (no {EVENTS_FILE} or {TRAIN_LOG_FILE})")
    if not os.path.lexists(path):
        raise LogError(f"{path}: no such log file or run directory")
    if path.name == EVENTS_FILE:
        return parse_events(path, require_val=require_val)
    return parse_log_file(path)


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and ((path / EVENTS_FILE).exists() or (path / TRAIN_LOG_FILE).exists())


def load_runs(path: str | os.PathLike) -> list[RunLog]:
    """A log, a run directory, or a folder of logs (*.txt, *.log) and run directories -> [RunLog], sorted by name."""
    path = Path(path)
    if not os.path.lexists(path):  # a dangling link or a link loop is there: load_run says why it cannot be read
        raise LogError(f"{path}: no such log file or folder")
    if not path.is_dir() or is_run_dir(path):
        return [load_run(path)]
    # a *.txt that is no regular file (a FIFO, a link loop) is a member, named by load_run, not passed over
    members = sorted(p for p in path.iterdir() if is_run_dir(p) or (p.suffix in LOG_SUFFIXES and not p.is_dir()))
    if not members:
        raise LogError(f"{path}: no logs (*.txt, *.log) or run directories in this folder")
    return [load_run(p) for p in members]


def record_runs(folder: str | os.PathLike) -> list[RunLog]:
    """The runs of a record folder (runs/<run_id>/), in run id order. Raises LogError, one line, when there
    are none or one cannot be read."""
    runs = Path(folder) / "runs"
    try:
        logs = [load_run(p) for p in sorted(runs.iterdir()) if p.is_dir()]
    except OSError as exc:
        raise LogError(f"{runs}: cannot read ({exc.strerror or exc})") from None
    if not logs:
        raise LogError(f"no run directories in {runs}")
    return logs
