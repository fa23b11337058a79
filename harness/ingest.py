"""Take in runs made elsewhere: each speedrun text log becomes a run in the records log, with its own run directory.

    python -m harness.ingest --track TRACK --name NAME [--target X] [--records records] [--runs-dir runs]
                             LOG_OR_DIR...

A log is modded-nanogpt's (its source code, the "Running ..." lines and nvidia-smi table, then `step:N/M`
lines) or our trainer's train.log; a folder stands for its *.txt and *.log files. Each log becomes
runs/<run_id>/ (train.log byte for byte, events.jsonl, and code/: the source the log starts with, if any;
harness.submit refuses a run without it), written whole before its row goes to records/runs.jsonl.

A log of a run already in the runs log (the same step lines) is reported and not added again; a file that
is not a speedrun log gets one line naming it, and the others still go in. Each new run id is printed on
stdout; everything else goes to stderr. Exit status: 1 if some input could not be taken in, else 0.
"""
from __future__ import annotations

import ast
import contextlib
import datetime as dt
import hashlib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from harness.cli import doc_parser, not_a_folder, os_error_line, positive_finite_float, run_cli
from harness.files import atomic_folder, clean_stale_temps, fsync_tree
from harness.hardware import peak_flops
from harness.logs import (LOG_SUFFIXES, InvalidLog, LogError, RunLog, embedded_code, header_lines, log_identity,
                          parse_step_line, parse_text)
from harness.records import RECORDS_DIR, append_run, load_records, name_problem, runs_lock
from harness.runlog import TRAIN_LOG_FILE, EventLog, read_regular
from harness.runrow import RUNS_DIR, new_run_id, run_row
from harness.tracks import default_target
from harness.snapshot import EMBEDDED_CODE, embedded_code_hash, write_snapshot

ORIGIN = "ingested"
# The "Running ..." lines, each group a version ("pytorch" in 2024 logs)
_RUNNING = re.compile(r"^(?:Running Python (?P<python>\S+)"
                      r"|(?i:Running PyTorch (?P<torch>\S+) compiled for CUDA (?P<cuda>\S+))"
                      r"|Running Triton version (?P<triton>\S+))")
# An nvidia-smi GPU row: "|   0  NVIDIA H100 80GB HBM3          On  |   00000000:8D:00.0 Off |  ..."
_GPU_ROW = re.compile(r"^\|\s+(\d+)\s+(\S.*?)\s+(?:On|Off)\s+\|")
# nvidia-smi's clock line, the run's start on its machine's clock: "Sat Aug 23 13:44:03 2025"
_SMI_CLOCK = re.compile(r"^((?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) +\d+ "
                        r"\d\d:\d\d:\d\d \d{4})\s*$")
_PEAK_MEMORY = re.compile(r"^peak memory allocated: (\d+) MiB")
_OUR_PROCESSES = re.compile(r"^track \S+, (\d+) process\(es\) on ")
_OUR_DICT_LINE = re.compile(r"^(config|versions|hardware|git): (\{.*)")  # train_gpt.py's "key: {...}" lines


class IngestError(ValueError):
    """An input that cannot be taken in; the message is one line naming it."""


# ----------------------------------------------------------------------------------------------
# Reading a log


@dataclass
class Facts:
    """What a log's header says about the run, besides its curve."""

    versions: dict = field(default_factory=dict)  # python, torch, cuda, triton
    hardware: dict | None = None  # {"kind": "cuda", "gpu", "gpu_count", "peak_flops"}, or ours as logged
    world_size: int | None = None
    config: dict | None = None  # our train.log's resolved config
    git: dict | None = None  # our train.log's
    peak_memory_mb: float | None = None
    started: str | None = None  # nvidia-smi's clock line at the run's start, ISO 8601 (the machine's local time)


@dataclass
class Parsed:
    """A log as harness.ingest and harness.run --cmd read it."""

    data: bytes
    text: str
    sha256: str
    code: str | None  # the source the log starts with (harness.logs.embedded_code), None if none
    log: RunLog | None  # None: not a speedrun log (no validation line), or one refused (error)
    error: str | None  # why a log with step lines is refused (harness.logs.InvalidLog), the line named
    facts: Facts
    events: list[tuple[str, dict]]  # ("step" | "val", fields), in the log's order


def read_facts(text: str, code: str | None) -> Facts:
    """Versions from the "Running ..." lines, GPUs from the nvidia-smi table, and, in our train.log, the
    config/versions/hardware/git lines; the peak memory from modded-nanogpt's closing line."""
    facts = Facts()
    gpus: dict[int, str] = {}
    for line in header_lines(text[text.find(code) + len(code):] if code is not None else text):
        if m := _RUNNING.match(line):
            facts.versions.update({key: version for key, version in m.groupdict().items() if version is not None})
        elif m := _GPU_ROW.match(line):
            gpus.setdefault(int(m.group(1)), m.group(2))
        elif (m := _SMI_CLOCK.match(line)) and facts.started is None:
            facts.started = dt.datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y").isoformat()
        elif m := _OUR_PROCESSES.match(line):
            facts.world_size = int(m.group(1))
        elif m := _OUR_DICT_LINE.match(line):
            try:
                parsed = ast.literal_eval(m.group(2))
            except (ValueError, SyntaxError):
                continue  # a line that only looks like ours: the run's facts are then unknown, not wrong
            if isinstance(parsed, dict) and m.group(1) == "versions":
                facts.versions.update(parsed)
            elif isinstance(parsed, dict):
                setattr(facts, m.group(1), parsed)
    if gpus and (facts.hardware or {}).get("kind") != "cuda":
        names = sorted(set(gpus.values()))
        facts.hardware = {"kind": "cuda", "gpu": " + ".join(names), "gpu_count": len(gpus),
                          "peak_flops": peak_flops(names[0]) if len(names) == 1 else None}
        facts.world_size = facts.world_size or len(gpus)
    facts.peak_memory_mb = next((float(m.group(1)) for line in reversed(text.splitlines()[-50:])
                                 if (m := _PEAK_MEMORY.match(line))), None)
    return facts


def step_events(text: str) -> list[tuple[str, dict]]:
    """A val event per validation line (a torn one, without its train time, skipped), a step event per other."""
    events = []
    for fields in filter(None, map(parse_step_line, text.splitlines())):
        if "val_loss" in fields:
            if "train_time_ms" in fields:
                events.append(("val", {key: fields[key] for key in ("step", "val_loss", "train_time_ms")}))
            continue
        step = {key: fields.get(key) for key in ("step", "train_time_ms", "step_avg_ms", "train_loss", "tokens_per_s")}
        events.append(("step", {**step, "mfu": None if fields.get("mfu") is None else fields["mfu"] / 100}))
    return events


def parse_log_bytes(data: bytes, source: str) -> Parsed:
    """Read a log's bytes. Never raises: a text with no validation line, or with a malformed step line or
    impossible values, has log None and the reason in error."""
    text = data.decode("utf-8", errors="replace")
    code = embedded_code(text)
    log, error = None, None
    try:
        log = parse_text(text, source=source)
    except InvalidLog as exc:
        error = str(exc)
    except LogError:
        pass
    return Parsed(data=data, text=text, sha256=hashlib.sha256(data).hexdigest(), code=code, log=log, error=error,
                  facts=read_facts(text, code), events=step_events(text))


# ----------------------------------------------------------------------------------------------
# Writing a run directory


def result_fields(parsed: Parsed, status: str, target: float, stop_at_target: bool) -> dict:
    """The result event of a run read from its log (runlog.py's fields; tokens and MFU are not in a text log)."""
    log = parsed.log
    fields = {"status": status, "reached_target": False, "target_val_loss": target, "stop_at_target": stop_at_target,
              "time_to_target_ms": None, "steps": None, "tokens": None, "final_val_loss": None, "train_time_ms": None,
              "peak_memory_mb": parsed.facts.peak_memory_mb, "tokens_per_s": None, "mfu": None,
              "error": "the log has no validation line"}
    if log is None:
        return fields
    ttt = log.time_to_target(target)
    return {**fields, "reached_target": ttt is not None, "time_to_target_ms": ttt, "steps": log.last_step,
            "final_val_loss": log.final_val_loss, "train_time_ms": log.train_time_ms, "tokens_per_s": log.tokens_per_s,
            "error": {"diverged": log.divergence,
                      "incomplete": f"the log ends at step {log.last_step} of {log.total_steps}"}.get(status)}


def write_run_files(dest: Path, parsed: Parsed, *, track: str, target: float, seed: int | None, status: str,
                    meta: dict, script: tuple[str, bytes] | None = None, git: dict | None = None) -> None:
    """Write train.log, events.jsonl and code/ (the log's embedded source, else `script` (name, bytes), else
    nothing) for a run read from its log into `dest`, fsynced. `meta` adds to the meta event; `git` replaces
    the log's own."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / TRAIN_LOG_FILE).write_bytes(parsed.data)
    code = ({EMBEDDED_CODE: parsed.code.encode("utf-8")} if parsed.code is not None
            else dict([script]) if script else None)
    digest = write_snapshot(dest, code) if code else None
    assert parsed.code is None or digest == embedded_code_hash(parsed.code)
    facts, log = parsed.facts, parsed.log
    config = dict(facts.config or {})
    config.update(target_val_loss=target, seed=seed, stop_at_target=bool(config.get("stop_at_target", False)))
    config.setdefault("num_steps", log.total_steps if log else None)
    if log is not None and log.vocab_size is not None:
        config.setdefault("vocab_size", log.vocab_size)  # divergence's ln(vocab) rule, read again from the events
    with contextlib.closing(EventLog(dest)) as events:
        events.write("config", track=track, config=config)
        events.write("meta", code_hash=digest, world_size=facts.world_size, hardware=facts.hardware,
                     versions=facts.versions, git=git or facts.git or {"commit": None, "dirty": None},
                     embedded_code=parsed.code is not None, log_sha256=parsed.sha256, started=facts.started, **meta)
        for kind, fields in parsed.events:
            events.write(kind, **fields)
        events.write("result", **result_fields(parsed, status, target, config["stop_at_target"]))
    fsync_tree(dest)


# ----------------------------------------------------------------------------------------------
# Ingesting


def log_files(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """(files to read, problems): a folder gives its *.txt and *.log entries other than folders, sorted (one the
    reader cannot take, a FIFO or a link loop, is named by it); a file is taken as it is."""
    files, problems = [], []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix in LOG_SUFFIXES and not p.is_dir())
            if not found:
                problems.append(f"{item}: no logs (*.txt, *.log) in this folder")
            files += found
        elif os.path.lexists(item):  # a dangling link or a link loop is there: its reader says why it cannot read it
            files.append(item)
        else:
            problems.append(f"{item}: no such log file or folder")
    return files, problems


def known_logs(records_dir: Path) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """{log identity: (run id, the file it was read from)} of the runs in the runs log whose run directory
    keeps its train.log (harness.logs.log_identity), and the runs log's problems."""
    frame, problems = load_records(records_dir)
    known: dict[str, tuple[str, str]] = {}
    for row in frame.to_dict("records"):
        if not isinstance(row.get("run_dir"), str):
            continue
        path = Path(row["run_dir"]) / TRAIN_LOG_FILE
        try:
            identity = log_identity(read_regular(path).decode("utf-8", errors="replace"))
        except OSError:  # a run directory moved or removed: nothing to compare with
            continue
        source = row.get("source") if isinstance(row.get("source"), str) else str(path)
        if identity is not None:
            known.setdefault(identity, (row["run_id"], source))
    return known, problems


def layout_problem(parsed: Parsed, path: Path) -> str | None:
    """Why a text with step lines is not a speedrun log (no header of either kind before them: a console
    transcript echoes the validation lines without one), one line naming what it holds instead, or None."""
    facts = parsed.facts
    if parsed.code is not None or facts.versions or facts.hardware or facts.config:
        return None
    lines = [line.strip() for line in parsed.text.splitlines() if line.strip()]
    found = next((line for line in lines if parse_step_line(line) is None), None)
    instead = f"its first other line is {found[:80]!r}" if found else "it holds step lines only"
    where = next((m.group(1) for line in lines if (m := re.match(r"^run_dir: (\S+)$", line))), None)
    hint = f"; a console transcript? the run's own log is {Path(where) / TRAIN_LOG_FILE}" if where else ""
    return (f"{path}: not a speedrun log: step lines without a speedrun log's header (modded-nanogpt's source code, "
            f"'Running PyTorch ...' lines and nvidia-smi table, or our train.log's 'config: {{...}}' line); "
            f"{instead}{hint}")


def ingest_one(path: Path, *, track: str, name: str, target: float | None, runs_dir: Path, records_dir: Path,
               known: dict[str, tuple[str, str]]) -> dict | None:
    """Take one log in: write its run directory, append its row, return the row; None if it is in already
    (then reported on stderr). Raises IngestError for a file that is not a speedrun log or cannot be read."""
    try:
        data = read_regular(path)
    except OSError as exc:
        raise IngestError(f"{path}: cannot read ({exc.strerror or exc})") from None
    parsed = parse_log_bytes(data, str(path))
    identity = log_identity(parsed.text)
    if identity in known:
        run_id, source = known[identity]
        print(f"{path}: already ingested as run {run_id} (the same run as {source}: the same step lines); "
              "not added again", file=sys.stderr)
        return None
    if parsed.error:
        raise IngestError(parsed.error)
    if parsed.log is None:
        raise IngestError(f"{path}: not a speedrun log (no line starting 'step:N/M' with 'val_loss:X' and "
                          "'train_time:Tms')")
    if problem := layout_problem(parsed, path):
        raise IngestError(problem)
    ours = parsed.facts.config or {}
    if ours.get("track") not in (None, track):
        raise IngestError(f"{path}: the log's config names track {ours['track']!r}, not --track {track}")
    if target is None:
        target = ours.get("target_val_loss") if ours.get("target_val_loss") is not None else default_target(track)
    run_id = new_run_id(track, re.sub(r"[^A-Za-z0-9]+", "", path.stem)[:8] or "log")
    runs_dir.mkdir(parents=True, exist_ok=True)
    final, source = runs_dir / run_id, str(path.resolve())
    with atomic_folder(final) as tmp:  # write_run_files fsyncs what it writes
        write_run_files(tmp, parsed, track=track, target=target, seed=ours.get("seed"), status=parsed.log.status,
                        meta={"origin": ORIGIN, "source": source})
    row = run_row(final, run_id=run_id, name=name, track=track, seed=ours.get("seed"), status=parsed.log.status,
                  nproc=parsed.facts.world_size, origin=ORIGIN, source=source, log_sha256=parsed.sha256)
    append_run(row, records_dir)
    known[identity] = (run_id, source)
    return row


def ingest(inputs: Sequence[str | os.PathLike], *, track: str, name: str, target: float | None = None,
           runs_dir: str | os.PathLike | None = None, records_dir: str | os.PathLike = RECORDS_DIR,
           ) -> tuple[list[dict], list[str]]:
    """Ingest every log of `inputs`: (the new rows, one line per input that could not be taken in). `track` is a
    name main has checked (records.name_problem)."""
    runs_dir = Path(runs_dir or RUNS_DIR).resolve()
    records_dir = Path(records_dir)
    files, problems = log_files(inputs)
    rows = []
    with runs_lock(records_dir):  # the check (is this run in already?) and the append are one step
        clean_stale_temps(runs_dir)  # run folders a killed ingest left half-written
        known, damaged = known_logs(records_dir)
        for line in damaged:
            print(f"warning: {line}", file=sys.stderr)
        for path in files:
            try:
                row = ingest_one(path, track=track, name=name, target=target, runs_dir=runs_dir,
                                 records_dir=records_dir, known=known)
            except IngestError as exc:
                problems.append(str(exc))
                continue
            if row is not None:
                rows.append(row)
                print(row["run_id"], flush=True)
    return rows, problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = doc_parser("ingest", __doc__)
    parser.add_argument("--track", required=True, help="the track the runs are recorded on, e.g. modded-nanogpt")
    parser.add_argument("--name", required=True, help="name stored with each run")
    parser.add_argument("--target", type=positive_finite_float, default=None,
                        help="target val loss (default: the log's own, else the track's, else 3.28)")
    parser.add_argument("--records", type=Path, default=RECORDS_DIR, help="records directory (runs.jsonl inside)")
    parser.add_argument("--runs-dir", type=Path, default=None, help="where run directories go (default runs/)")
    parser.add_argument("inputs", nargs="+", metavar="LOG_OR_DIR", help="log files, or folders of *.txt / *.log")
    args = parser.parse_args(argv)
    for problem in (not_a_folder("--records", args.records), not_a_folder("--runs-dir", args.runs_dir),
                    name_problem("track", args.track), name_problem("--name", args.name)):
        if problem:
            parser.error(problem)
    try:
        rows, problems = ingest(args.inputs, track=args.track, name=args.name, target=args.target,
                                runs_dir=args.runs_dir, records_dir=args.records)
    except OSError as exc:  # the runs dir or the runs log cannot be written; what went in is recorded
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return 1
    for line in problems:
        print(f"skipped: {line}", file=sys.stderr)
    print(f"{len(rows)} run(s) ingested" + (f", {len(problems)} input(s) skipped" if problems else ""),
          file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    run_cli(main)
