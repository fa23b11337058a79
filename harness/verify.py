"""Re-check a record folder from its own files.

    python -m harness.verify records/<date>_<name> [...]

  - the code hash recomputed from code/ equals code/CODE_HASH and record.json's code_hash;
  - every run's events.jsonl (runs/<run_id>/) names that code hash, and the runs in runs/ are the
    runs in record.json;
  - every run's train.log agrees with its events.jsonl (harness.ingest.check_against_log): for a run
    taken in from a log, its sha256 is the one recorded and the source code at its top hashes to the
    code hash (re-extracted from the log itself); for every run, each validation line (step, val_loss
    to its printed digits, train_time to the ms) is its val event;
  - the statistics recomputed from those logs (and the previous record's, for the speedup) equal
    record.json's, figure by figure (relative tolerance 1e-9: JSON keeps full precision), and
    statistics.md is exactly what record.json's figures render to (harness.submit.render_statistics).

Each mismatch is one line: where (file, field), expected (recomputed) and found. Exit 1 on any.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Sequence

from harness.cli import run_cli
from harness.ingest import check_against_log
from harness.logs import LogError, load_run, record_runs
from harness.records import RECORD_FILE, RecordsError, finite_or_none, os_error_line, read_record
from harness.runlog import EVENTS_FILE
from harness.snapshot import HASH_FILE, SNAPSHOT_DIR, snapshot_hash
from harness.submit import render_statistics, statistics

JSON_RTOL = 1e-9


def compare_values(expected, found, where: str, out: list[str]) -> None:
    """Recursively compare JSON-like values; append 'where: expected X, found Y' for each difference."""
    if isinstance(expected, dict) and isinstance(found, dict):
        for key in sorted(set(expected) | set(found)):
            if key not in found:
                out.append(f"{where}.{key}: expected {expected[key]!r}, found nothing")
            elif key not in expected:
                out.append(f"{where}.{key}: not expected, found {found[key]!r}")
            else:
                compare_values(expected[key], found[key], f"{where}.{key}", out)
    elif isinstance(expected, list) and isinstance(found, list) and len(expected) == len(found):
        for i, (e, f) in enumerate(zip(expected, found)):
            compare_values(e, f, f"{where}[{i}]", out)
    elif (isinstance(expected, (int, float)) and isinstance(found, (int, float))
          and not isinstance(expected, bool) and not isinstance(found, bool)):
        if not math.isclose(expected, found, rel_tol=JSON_RTOL, abs_tol=1e-12):
            out.append(f"{where}: expected {expected!r}, found {found!r}")
    elif expected != found:
        out.append(f"{where}: expected {expected!r}, found {found!r}")


def compare_text(expected: str, found: str, where: str, out: list[str]) -> None:
    """Line by line, exactly: a file rendered from figures must be that rendering (its numbers are
    checked as numbers in record.json, never read back from the text)."""
    exp_lines, found_lines = expected.splitlines(), found.splitlines()
    if len(exp_lines) != len(found_lines):
        out.append(f"{where}: expected {len(exp_lines)} lines, found {len(found_lines)}")
    for lineno, (e, f) in enumerate(zip(exp_lines, found_lines), 1):
        if e != f:
            out.append(f"{where}:{lineno}: expected {e.strip()!r}, found {f.strip()!r}")


def verify(folder: str | Path) -> list[str]:
    """All mismatches in a record folder (empty when it checks out)."""
    folder = Path(folder)
    problems: list[str] = []
    record_path = folder / RECORD_FILE
    try:
        record = read_record(record_path)
    except RecordsError as exc:  # missing, unreadable, not JSON, or a key missing: nothing to check against
        return [str(exc)]

    # Code.
    snapshot = folder / SNAPSHOT_DIR
    try:
        recomputed = snapshot_hash(snapshot)
        stated = (snapshot / HASH_FILE).read_text().strip() if (snapshot / HASH_FILE).exists() else None
    except FileNotFoundError as exc:  # snapshot_hash's message names the folder
        return problems + [f"{snapshot}: {exc}" if exc.filename is None else os_error_line(exc)]
    except OSError as exc:
        return problems + [os_error_line(exc)]
    if stated != recomputed:
        problems.append(f"{snapshot / HASH_FILE}: expected {recomputed} (recomputed from {snapshot}), found {stated}")
    if record.get("code_hash") != recomputed:
        problems.append(f"{record_path}: code_hash: expected {recomputed}, found {record.get('code_hash')}")

    # Runs.
    runs_dir = folder / "runs"
    run_dirs = sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    listed = sorted(r["run_id"] for r in record["runs"])
    if [p.name for p in run_dirs] != listed:
        problems.append(f"{runs_dir}: expected the runs of record.json {listed}, found {[p.name for p in run_dirs]}")
    logs = []
    for run_dir in run_dirs:
        if not (run_dir / EVENTS_FILE).exists():  # a record keeps each run's events; its train.log alone is not the run
            problems.append(f"{run_dir / EVENTS_FILE}: missing")
            continue
        try:
            log = load_run(run_dir)
        except LogError as exc:
            problems.append(str(exc))
            continue
        except OSError as exc:
            problems.append(os_error_line(exc))
            continue
        if log.code_hash != recomputed:
            problems.append(f"{run_dir / 'events.jsonl'}: meta.code_hash: expected {recomputed}, found {log.code_hash}")
        problems += check_against_log(log)
        logs.append(log)
    if not logs:
        return problems + [f"{runs_dir}: no readable runs"]
    if len(logs) < len(run_dirs):  # figures from some of the runs would differ everywhere: say it once
        return problems + [f"{folder / RECORD_FILE}: statistics not recomputed: {len(run_dirs) - len(logs)} of "
                           f"{len(run_dirs)} runs cannot be read (above)"]

    # Statistics.
    stats_found = record["stats"]
    target = stats_found["target_val_loss"]
    previous, previous_logs = None, None
    if stats_found.get("previous"):
        previous = stats_found["previous"]
        try:
            previous_logs = record_runs(folder.parent / previous["folder"])
        except LogError as exc:
            problems.append(f"{folder.parent / previous['folder']}: the previous record's runs cannot be read ({exc})")
            previous = None
    runs, recomputed_stats = statistics(logs, target, previous, previous_logs)
    expected = finite_or_none({"runs": runs, "stats": recomputed_stats})
    if previous is None and stats_found.get("previous"):
        expected["stats"]["previous"] = stats_found["previous"]  # reported above; do not report twice
    compare_values(expected["runs"], record.get("runs"), f"{record_path}: runs", problems)
    compare_values(expected["stats"], stats_found, f"{record_path}: stats", problems)
    stats_md = folder / "statistics.md"
    if not stats_md.exists():
        problems.append(f"{stats_md}: missing")
    else:
        rendered = render_statistics(record)  # record.json's figures, checked against the recomputed ones above
        try:
            compare_text(rendered, stats_md.read_text(encoding="utf-8"), str(stats_md), problems)
        except (OSError, ValueError) as exc:  # unreadable, or not UTF-8
            problems.append(f"{stats_md}: cannot read ({exc.strerror if isinstance(exc, OSError) else exc})")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, metavar="FOLDER", help="record folders, records/<date>_<name>")
    args = parser.parse_args(argv)
    failed = 0
    for folder in args.folders:
        if not folder.is_dir():
            print(f"{folder}: no such record folder", file=sys.stderr)
            failed += 1
            continue
        try:
            problems = verify(folder)
        except OSError as exc:  # a folder inside it that cannot be listed
            problems = [os_error_line(exc)]
        for p in problems:
            print(p)
        print(f"{folder}: {'FAILED, ' + str(len(problems)) + ' mismatches' if problems else 'ok'}")
        failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    run_cli(main)
