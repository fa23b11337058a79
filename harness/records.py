"""The records/ directory (records/README.md): the append-only runs log, records/runs.jsonl (rows ROW_TYPES,
appended whole under a filelock), and the accepted records' folders, records/<date>_<name>/record.json
(RECORD_KEYS). A damaged line or record is reported in one line and skipped; it never hides the others.

A mistaken row is hidden, never edited: `python -m harness.records hide RUN_ID --reason TEXT` appends a tombstone
{"schema": 1, "hides": RUN_ID, "reason": TEXT, "timestamp": ...}; `python -m harness.records hidden` lists them.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import errno
import json
import os
import re
import stat
import sys
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd
from filelock import FileLock

from harness.cli import error_line, not_a_folder, os_error_line, run_cli
from harness.runlog import (finite_or_none, is_json_type, iter_json_lines, json_type_name, nonfinite_key, read_regular,
                            type_problem)
from harness.snapshot import REPO_ROOT

SCHEMA = 1  # of a runs.jsonl row
RECORD_SCHEMA = 3  # of a record.json; schema 2 is read too (its times named time_ms: _schema_2_names)
RECORDS_DIR = REPO_ROOT / "records"
RUNS_FILE = "runs.jsonl"
RECORD_FILE = "record.json"
LOCK_TIMEOUT_S = 60  # check_appendable's wait for the runs log's lock: longer is another writer stuck, not busy
# A row's fields and their JSON types (records/README.md says what they mean); a field of another type is
# reported and read as missing. origin: "ingested" or "cmd", absent for our trainer's runs; source: the log a
# foreign run was read from, or "stdout"; seed_env: the variable that carried a --cmd run's seed.
ROW_TYPES = {
    "run_id": "string", "timestamp": "string|null", "track": "string|null", "name": "string|null",
    "git_commit": "string|null", "git_dirty": "boolean|null", "code_hash": "string|null", "hardware": "string|null",
    "torch": "string|null", "triton": "string|null", "cuda": "string|null", "python": "string|null",
    "seed": "integer|null", "overrides": "array|null", "time_to_target_ms": "number|null", "steps": "integer|null",
    "tokens": "integer|null", "final_val_loss": "number|null", "reached_target": "boolean|null",
    "status": "string|null", "run_dir": "string|null", "target_val_loss": "number|null",
    "train_time_ms": "number|null", "returncode": "integer|null", "script": "string|null", "nproc": "integer|null",
    "wall_s": "number|null", "stop_at_target": "boolean|integer|null", "origin": "string|null",
    "source": "string|null", "log_sha256": "string|null", "seed_env": "string|null",
}
ROW_FIELDS = tuple(ROW_TYPES)
ROW_COUNTS_AND_TIMES = ("time_to_target_ms", "steps", "tokens", "train_time_ms", "wall_s", "nproc")  # never negative


# What submit, the leaderboard and verify read from a record.json: each key (dotted, parents first) and its
# JSON types. The keys under a null object are not checked (a track's first record has "previous": null).
RECORD_KEYS = {
    "schema": "integer", "name": "string", "track": "string", "date": "string", "code_hash": "string",
    "description": "string|absent", "submitted": "string|absent", "hardware": "string|null|absent", "runs": "array",
    "stats": "object", "stats.n": "integer", "stats.target_val_loss": "number",
    "stats.final_at_or_below_target": "integer", "stats.train_time_ms": "object", "stats.train_time_ms.mean": "number",
    "stats.train_time_ms.std": "number|null", "stats.final_val_loss": "object",
    "stats.final_val_loss.mean": "number|null", "stats.final_val_loss.std": "number|null",
    "stats.p_loss_below_target": "number|null", "stats.previous": "object|null|absent", "excluded": "array|absent",
    "stats.previous.folder": "string", "stats.previous.name": "string", "stats.previous.train_time_ms": "object",
    "stats.previous.speedup": "object", "stats.previous.speedup.ratio": "number|null",
    "stats.previous.speedup.ci95": "array", "stats.previous.p_welch_faster": "number|null",
}
RECORD_RUN_TYPES = {"seed": "integer|null", "final_val_loss": "number|null", "time_to_target_ms": "number|null",
                    "train_time_ms": "number|null", "steps": "integer|null", "tokens": "integer|null"}


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


def name_problem(kind: str, name: str) -> str | None:
    """Why `name` cannot name a track or a record (it goes into run ids and folder names), or None."""
    if not name:
        return f"{kind} is empty"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return f"{kind} {name!r} contains control characters"
    if "/" in name or "\\" in name or ".." in name or name.startswith("."):
        return f"{kind} {name!r} could leave records/ or runs/ ('/', '\\', '..' or a leading '.')"
    if not _NAME.match(name):
        return f"{kind} {name!r}: use 1-80 letters, digits, '.', '_' or '-', starting with a letter or digit"
    return None


class RecordsError(ValueError):
    """A bad or missing entry in records/. The message is one line naming the file and the entry."""


def runs_path(records_dir: str | os.PathLike = RECORDS_DIR) -> Path:
    return Path(records_dir) / RUNS_FILE


def runs_lock(records_dir: str | os.PathLike = RECORDS_DIR) -> FileLock:
    """The lock on records/runs.jsonl, held for each append and by a writer whose check and write are one step.
    One object per path, so that a holder may append (filelock counts re-entries of one object)."""
    try:
        path = str(Path(records_dir).resolve() / RUNS_FILE) + ".lock"
    except RuntimeError:  # a link loop: Python before 3.13 raises RuntimeError where 3.13 raises OSError
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(records_dir)) from None
    if path not in _LOCKS:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        _LOCKS[path] = FileLock(path)
    return _LOCKS[path]


_LOCKS: dict[str, FileLock] = {}


def append_run(row: dict, records_dir: str | os.PathLike = RECORDS_DIR) -> Path:
    """Append one row (with "schema": 1) to records/runs.jsonl, whole, under the lock."""
    if not row.get("run_id"):
        raise RecordsError("a runs.jsonl row needs a run_id")
    return _append_line({"schema": SCHEMA, **finite_or_none(row)}, records_dir)


def _append_line(obj: dict, records_dir: str | os.PathLike) -> Path:
    """One JSON line, starting a line of its own: after a torn last line (a killed writer, a hand edit) a newline
    goes first, so that line stays one damaged line and the new one is whole."""
    path = runs_path(records_dir)
    lock = runs_lock(records_dir)  # first: it names a records folder that is a link loop
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(obj, allow_nan=False, sort_keys=False) + "\n").encode()
    with lock:
        fd = _open_runs_log(path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            written = os.write(fd, line)
            if written != len(line):  # a regular file takes the whole write or fails (disk full)
                raise OSError(f"{path}: short write ({written} of {len(line)} bytes); the last line is torn")
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def _open_runs_log(path: Path, flags: int) -> int:
    """os.open(path) for appending, refused with an OSError naming it where it is no regular file (a FIFO: its
    open would wait for a reader, its pread fails with a bare EINVAL)."""
    fd = os.open(path, flags | os.O_NONBLOCK, 0o644)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file (a FIFO, device or socket)", str(path))
    return fd


def _read_rows(records_dir: str | os.PathLike, hidden: bool = False) -> tuple[list[dict], list[str], bool]:
    """The rows of records/runs.jsonl as written (plus "line"), the problems (a line that is no schema-1 row is
    reported and skipped), and whether the runs log could not be read at all (a missing one is read: no rows).
    A hidden row is left out, or with hidden=True kept with "hidden": {reason, ...}."""
    path = runs_path(records_dir)
    rows, problems, tombstones, unreadable = [], [], {}, False
    if not os.path.lexists(path):  # a dangling link or a link loop is there, and is reported as unreadable
        return rows, problems, unreadable
    try:
        for lineno, row in iter_json_lines(path, problems, limit=None):  # a runs log grows without bound
            tombstone = isinstance(row, dict) and isinstance(row.get("hides"), str) and "run_id" not in row
            if tombstone and row.get("schema") == SCHEMA:
                tombstones[row["hides"]] = {"reason": row.get("reason"), "timestamp": row.get("timestamp"),
                                            "line": lineno}
            elif not isinstance(row, dict) or not isinstance(row.get("run_id"), str) or not row["run_id"]:
                problems.append(f"{path}:{lineno}: skipped line without a run_id")
            elif row.get("schema") != SCHEMA:
                problems.append(f"{path}:{lineno}: skipped line with schema {row.get('schema')!r} (expected {SCHEMA})")
            else:
                while problem := type_problem(row, ROW_TYPES):
                    key = problem.split(" ", 1)[0]
                    problems.append(f"{path}:{lineno}: {problem}; read as missing")
                    row[key] = None
                for key in ROW_COUNTS_AND_TIMES:
                    if row.get(key) is not None and row[key] < 0:
                        problems.append(f"{path}:{lineno}: {negative(key, row[key])}; read as missing")
                        row[key] = None
                row["line"] = lineno
                rows.append(row)
    except OSError as exc:
        problems.append(f"{path}: cannot read ({exc.strerror or exc})")
        unreadable = True
    for row in rows:
        if row["run_id"] in tombstones:
            row["hidden"] = tombstones[row["run_id"]]
    known = {row["run_id"] for row in rows}
    problems += [f"{path}:{t['line']}: a tombstone hides {run_id!r}, which no row has"
                 for run_id, t in tombstones.items() if run_id not in known]
    return (rows if hidden else [r for r in rows if "hidden" not in r]), problems, unreadable


def load_records(records_dir: str | os.PathLike = RECORDS_DIR) -> tuple[pd.DataFrame, list[str]]:
    """All rows of records/runs.jsonl as a DataFrame (ROW_FIELDS first), and the problems. For tables: a number
    column with gaps is float (seed 3 reads 3.0); find_runs gives the values as written."""
    rows, problems, _ = _read_rows(records_dir)
    frame = pd.DataFrame(rows)
    columns = list(ROW_FIELDS) + [c for c in frame.columns if c not in ROW_FIELDS]
    return frame.reindex(columns=columns), problems


def find_runs(run_ids: Iterable[str], records_dir: str | os.PathLike = RECORDS_DIR) -> list[dict]:
    """The last row of each run id, in the order given, as written, with every ROW_FIELDS key (None where absent
    or not finite). Raises RecordsError for a hidden run or one not in the runs log (with its first problem)."""
    by_id, problems = last_rows(records_dir, hidden=True)
    found = []
    for run_id in run_ids:
        if run_id in by_id and (why := by_id[run_id].get("hidden")):
            raise RecordsError(f"run {run_id} is hidden ({runs_path(records_dir)} line {why['line']}: "
                               f"{why['reason']})")
        if run_id not in by_id:
            raise _no_run(run_id, problems, records_dir)
        found.append(by_id[run_id])
    return found


def _no_run(run_id: str, problems: list[str], records_dir: str | os.PathLike) -> RecordsError:
    """The error for a run id the runs log has no row of, naming the first problem reading it (a damaged line,
    an unreadable log) where there is one: the row may be there."""
    damaged = f" ({len(problems)} problems reading it; the first: {problems[0]})" if problems else ""
    return RecordsError(f"{runs_path(records_dir)}: no run with id {run_id!r}{damaged}")


def last_rows(records_dir: str | os.PathLike = RECORDS_DIR, hidden: bool = False) -> tuple[dict[str, dict], list[str]]:
    """{run id: its last row, as find_runs gives it}, and the problems; hidden=True keeps the hidden runs."""
    rows, problems, _ = _read_rows(records_dir, hidden=hidden)
    return {row["run_id"]: {**dict.fromkeys(ROW_FIELDS), **finite_or_none(row)} for row in rows}, problems


def row_run_dir(row: dict) -> Path:
    """The run directory a runs.jsonl row names. Raises RecordsError where it names none."""
    run_dir = row.get("run_dir")
    if not isinstance(run_dir, str) or not run_dir:
        raise RecordsError(f"run {row.get('run_id')}: its {RUNS_FILE} row (line {row.get('line')}) "
                           f"has run_dir {json.dumps(run_dir)}, not a path")
    return Path(run_dir)


def record_problem(record) -> str | None:
    """What makes a parsed record.json unusable (one line), or None."""
    if not isinstance(record, dict):
        return f"not a JSON object but {json_type_name(record)}"
    record = _schema_2_names(record)
    if problem := type_problem(record, RECORD_KEYS, absent_ok=False):
        return problem
    if record["schema"] == 1:
        return (f"schema 1 (this harness reads schemas 2 and {RECORD_SCHEMA}: schema 1 timed a run at its first validation "
                "at or below the target, not at its final one; submit its runs again)")
    if record["schema"] not in (2, RECORD_SCHEMA):
        return f"schema {record['schema']} (this harness reads schemas 2 and {RECORD_SCHEMA})"
    for i, run in enumerate(record["runs"]):
        if not isinstance(run, dict) or not isinstance(run.get("run_id"), str):
            return f"runs[{i}] has no run_id"
        if problem := type_problem(run, RECORD_RUN_TYPES, f"runs[{i}]"):
            return problem
    if key := negative_key(record):
        return key
    previous = record["stats"].get("previous")
    if previous and (len(previous["speedup"]["ci95"]) != 2
                     or not all(is_json_type(x, "number|null") for x in previous["speedup"]["ci95"])):
        return "stats.previous.speedup.ci95 is not a pair of numbers"
    return None


def negative_key(record: dict) -> str | None:
    """'<key> is <value>, a negative count or time' for the first such figure of a typed record.json (the
    leaderboard ranks by its mean time; a negative one would lead it), or None."""
    figures = [("stats.n", record["stats"]["n"]), ("stats.train_time_ms.mean", record["stats"]["train_time_ms"]["mean"]),
               ("stats.train_time_ms.std", record["stats"]["train_time_ms"]["std"])]
    figures += [(f"runs[{i}].{key}", run.get(key)) for i, run in enumerate(record["runs"])
                for key in ("train_time_ms", "time_to_target_ms", "steps", "tokens")]
    return next((negative(key, value) for key, value in figures if value is not None and value < 0), None)


def negative(key: str, value) -> str:
    return f"{key} is {value}, a negative count or time"


def _schema_2_names(record):
    """A schema-2 record.json with its times under schema 3's name, train_time_ms."""
    if not isinstance(record, dict) or record.get("schema") != 2 or not isinstance(record.get("stats"), dict):
        return record
    record = copy.deepcopy(record)
    for holder in (record["stats"], record["stats"].get("previous")):
        if isinstance(holder, dict) and "time_ms" in holder and "train_time_ms" not in holder:
            holder["train_time_ms"] = holder.pop("time_ms")
    for run in record.get("runs") if isinstance(record.get("runs"), list) else []:
        if isinstance(run, dict) and "train_time_ms" in run:
            run.pop("time_ms", None)
    return record


def _read_record(path: Path) -> tuple[dict | None, str | None]:
    """(record, None), or (None, why it cannot be used)."""
    try:
        record = json.loads(read_regular(path).decode("utf-8"))
    except FileNotFoundError:
        return None, "missing"
    except OSError as exc:
        return None, f"cannot read ({exc.strerror or exc})"
    except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, or nested deeper than the parser goes
        return None, f"not valid JSON ({exc})"
    if key := nonfinite_key(record):  # Python reads NaN and Infinity; JSON has neither, and submit writes null
        return None, f"{key} is NaN or Infinity, not a JSON number"
    if problem := record_problem(record):
        return None, problem
    record = _schema_2_names(record)
    record["folder"] = path.parent.name
    return record, None


def read_record(path: str | os.PathLike) -> dict:
    """One record.json, checked by record_problem, with "folder" set. Raises RecordsError naming the file and why."""
    record, why = _read_record(Path(path))
    if why:
        raise RecordsError(f"{path}: {why}")
    return record


def list_records(records_dir: str | os.PathLike = RECORDS_DIR) -> tuple[list[dict], list[str]]:
    """Every accepted record's record.json (with "folder" added), oldest first, and the problems."""
    records, problems = [], []
    folders = sorted(p for p in Path(records_dir).iterdir() if p.is_dir()) if Path(records_dir).is_dir() else []
    for path in (folder / RECORD_FILE for folder in folders):
        if path.parent.name.startswith(".") or not os.path.lexists(path):
            continue  # a submission still being written, or a folder of no record; a link loop is reported
        record, why = _read_record(path)
        if why:
            problems.append(f"{path}: skipped damaged record ({why})")
        else:
            records.append(record)
    records.sort(key=lambda r: (r.get("submitted", ""), r["folder"]))
    return records, problems


def check_appendable(records_dir: str | os.PathLike = RECORDS_DIR) -> None:
    """Raise RecordsError unless append_run can write the runs log (made empty where missing): launchers call it
    before a run, so that no run trains only to find its row has nowhere to go."""
    path = runs_path(records_dir)
    try:
        lock = runs_lock(records_dir)  # first: it names a records folder that is a link loop
        path.parent.mkdir(parents=True, exist_ok=True)
        with lock.acquire(timeout=LOCK_TIMEOUT_S):
            os.close(_open_runs_log(path, os.O_RDWR | os.O_APPEND | os.O_CREAT))  # O_RDWR: a FIFO opens at once
    except FileExistsError as exc:  # mkdir's: something other than a folder is where the records folder goes
        raise RecordsError(f"runs log {path} cannot be appended to: {exc.filename}: not a folder") from None
    except OSError as exc:
        raise RecordsError(f"runs log {path} cannot be appended to: {os_error_line(exc, path)}") from None


def hide_run(run_id: str, reason: str, records_dir: str | os.PathLike = RECORDS_DIR) -> Path:
    """Append the tombstone that hides run_id; RecordsError for an empty reason, an unknown run, or a hidden one."""
    reason = " ".join(reason.split())  # one line, as `hidden` lists it
    if not reason:
        raise RecordsError("--reason: say why the run is hidden")
    with runs_lock(records_dir):
        by_id, problems = last_rows(records_dir, hidden=True)
        row = by_id.get(run_id)
        if row is None:
            raise _no_run(run_id, problems, records_dir)
        if row.get("hidden"):
            raise RecordsError(f"run {run_id} is hidden already (line {row['hidden']['line']}: "
                               f"{row['hidden']['reason']})")
        return _append_line({"schema": SCHEMA, "hides": run_id, "reason": reason,
                             "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
                            records_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.records", description="Hide a mistaken runs-log row (a "
                                     "tombstone is appended; no line is rewritten), or list the hidden runs.")
    parser.add_argument("--records", type=Path, default=RECORDS_DIR, help="records directory (default records/)")
    # --records is also taken after the command (`hide RUN_ID --records DIR`), as every other harness command takes it.
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--records", type=Path, default=argparse.SUPPRESS, help="records directory (default records/)")
    sub = parser.add_subparsers(dest="command", required=True)
    hide = sub.add_parser("hide", parents=[after], help="hide a run from the leaderboard, compare, submit and ingest")
    hide.add_argument("run_id", metavar="RUN_ID")
    hide.add_argument("--reason", required=True, help="why: kept in the tombstone and shown by `hidden`")
    sub.add_parser("hidden", parents=[after], help="list the hidden runs and why")
    args = parser.parse_args(argv)
    if problem := not_a_folder("--records", args.records):
        parser.error(problem)
    try:
        if args.command == "hide":
            path = hide_run(args.run_id, args.reason, args.records)
            print(f"hidden: {args.run_id} (a tombstone appended to {path})")
        else:
            rows, problems, unreadable = _read_rows(args.records, hidden=True)
            for problem in problems:  # a damaged line may be a tombstone or a hidden row
                print(f"records: {problem}", file=sys.stderr)
            for row in rows:  # in the runs log's order
                if h := row.get("hidden"):
                    print(f"{row['run_id']}  hidden {h['timestamp']} (line {h['line']}): {h['reason']}")
            if unreadable:
                return 1
    except (RecordsError, OSError) as exc:
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_cli(main)
