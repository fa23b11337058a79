"""The records/ directory: the append-only runs log and the accepted record folders.

records/runs.jsonl   one JSON object per finished (or failed) run, "schema": 1, appended by
                     harness.run and never rewritten. Appends are safe across processes: a
                     filelock on runs.jsonl.lock, then the whole line in one os.write() on an
                     O_APPEND descriptor, then fsync. A damaged line is reported by line number and
                     skipped; it never hides the others.
records/<date>_<name>/record.json
                     one accepted record each, written by harness.submit (see records/README.md).

A row's fields (ROW_FIELDS): run_id, timestamp (UTC, run end), track, name, git_commit, git_dirty,
code_hash, hardware (GPU model and count, or CPU model), torch/triton/cuda/python versions, seed,
overrides (trainer --key=value list), time_to_target_ms (null if not reached), steps, tokens,
final_val_loss, reached_target, status (ok | diverged | crashed | interrupted | timeout), run_dir;
and after them target_val_loss, train_time_ms, returncode, script, nproc, wall_s.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable

import pandas as pd
from filelock import FileLock

from harness.runlog import finite_or_none  # noqa: F401  (re-exported: submit, verify and compare use it)
from harness.runlog import iter_json_lines
from harness.snapshot import REPO_ROOT

SCHEMA = 1
RECORDS_DIR = REPO_ROOT / "records"
RUNS_FILE = "runs.jsonl"
RECORD_FILE = "record.json"
STATUSES = ("ok", "diverged", "crashed", "interrupted", "timeout")
ROW_FIELDS = (
    "run_id", "timestamp", "track", "name", "git_commit", "git_dirty", "code_hash", "hardware",
    "torch", "triton", "cuda", "python", "seed", "overrides", "time_to_target_ms", "steps", "tokens",
    "final_val_loss", "reached_target", "status", "run_dir",
    "target_val_loss", "train_time_ms", "returncode", "script", "nproc", "wall_s",
)


class RecordsError(ValueError):
    """A bad or missing entry in records/. The message is one line naming the file and the entry."""


def runs_path(records_dir: str | os.PathLike = RECORDS_DIR) -> Path:
    return Path(records_dir) / RUNS_FILE


def append_run(row: dict, records_dir: str | os.PathLike = RECORDS_DIR) -> Path:
    """Append one row (with "schema": 1) to records/runs.jsonl, atomically with respect to other writers."""
    if not row.get("run_id"):
        raise RecordsError("a runs.jsonl row needs a run_id")
    path = runs_path(records_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps({"schema": SCHEMA, **finite_or_none(row)}, allow_nan=False, sort_keys=False) + "\n").encode()
    with FileLock(str(path) + ".lock"):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, line)
            if written != len(line):  # a regular file takes the whole write or fails (disk full)
                raise OSError(f"{path}: short write ({written} of {len(line)} bytes); the last line is torn")
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def load_records(records_dir: str | os.PathLike = RECORDS_DIR) -> tuple[pd.DataFrame, list[str]]:
    """All rows of records/runs.jsonl as a DataFrame (columns ROW_FIELDS first), and the problems.

    A line that is not JSON, not an object, has no run_id, or another schema is reported as
    "<file>:<line>: ..." and skipped. A missing file is an empty table.
    """
    path = runs_path(records_dir)
    rows, problems = [], []
    if path.exists():
        for lineno, row in iter_json_lines(path, problems):
            if not isinstance(row, dict) or not row.get("run_id"):
                problems.append(f"{path}:{lineno}: skipped line without a run_id")
            elif row.get("schema") != SCHEMA:
                problems.append(f"{path}:{lineno}: skipped line with schema {row.get('schema')!r} (expected {SCHEMA})")
            else:
                row["line"] = lineno
                rows.append(row)
    frame = pd.DataFrame(rows)
    columns = list(ROW_FIELDS) + [c for c in frame.columns if c not in ROW_FIELDS]
    return frame.reindex(columns=columns), problems


def find_runs(run_ids: Iterable[str], records_dir: str | os.PathLike = RECORDS_DIR) -> list[dict]:
    """The rows for these run ids (the last row where one appears twice), in the order given.

    Raises RecordsError naming the first run id that is not in the runs log.
    """
    frame, _ = load_records(records_dir)
    by_id = {} if frame.empty else {r["run_id"]: r for r in frame.to_dict("records")}
    rows = []
    for run_id in run_ids:
        if run_id not in by_id:
            raise RecordsError(f"{runs_path(records_dir)}: no run with id {run_id!r}")
        rows.append({k: (None if _is_missing(v) else v) for k, v in by_id[run_id].items()})
    return rows


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# ----------------------------------------------------------------------------------------------
# Record folders


def list_records(records_dir: str | os.PathLike = RECORDS_DIR) -> tuple[list[dict], list[str]]:
    """Every accepted record's record.json (with "folder" added), oldest first, and the problems."""
    records_dir = Path(records_dir)
    records, problems = [], []
    if not records_dir.is_dir():
        return records, problems
    for path in sorted(records_dir.glob(f"*/{RECORD_FILE}")):
        if path.parent.name.startswith("."):
            continue  # a submission still being written
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(record, dict) or "track" not in record or "stats" not in record:
                raise ValueError("not a record object")
        except ValueError as exc:
            problems.append(f"{path}: skipped damaged record ({exc})")
            continue
        record["folder"] = path.parent.name
        records.append(record)
    records.sort(key=lambda r: (r.get("submitted", ""), r["folder"]))
    return records, problems
