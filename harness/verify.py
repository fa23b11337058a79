"""Re-check a record folder from its own files.

    python -m harness.verify records/<date>_<name> [...]

Checks the code hash, the runs, each train.log against its events.jsonl, every statistic recomputed from the
logs, and statistics.md; each mismatch is one line (where, expected, found), exit 1 on any; an events line it
reads past is a warning on stderr. submit computes and checks a record with this module's statistics,
render_statistics, check_against_log and warn_damaged_lines.
"""
from __future__ import annotations

import hashlib
import math
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

from harness import stats
from harness.cli import doc_parser, error_line, os_error_line, run_cli
from harness.logs import (InvalidLog, LogError, RunLog, embedded_code, load_run, printed_tolerance, record_runs,
                          step_lines)
from harness.records import RECORD_FILE, RecordsError, read_record
from harness.runlog import EVENTS_FILE, TRAIN_LOG_FILE, finite_or_none, read_regular
from harness.snapshot import HASH_FILE, SNAPSHOT_DIR, embedded_code_hash, snapshot_hash
from harness.stats import fmt

JSON_RTOL = 1e-9  # a recomputed figure against record.json's: JSON keeps full precision, only rounding differs


def statistics(logs: list[RunLog], target: float, previous: dict | None = None,
               previous_logs: list[RunLog] | None = None) -> tuple[list[dict], dict]:
    """(per-run figures, statistics) of a record, from its runs' logs, and the previous record's logs."""
    logs = sorted(logs, key=lambda log: log.run_id or log.name)
    runs = [{
        "run_id": log.run_id or log.name,
        "seed": log.seed,
        "final_val_loss": log.final_val_loss,
        "train_time_ms": log.train_time_ms,
        "time_to_target_ms": log.time_to_target(target),
        "steps": log.final_step,
        "tokens": log.tokens,
    } for log in logs]
    times = [r["train_time_ms"] for r in runs]
    rule = stats.loss_rule([r["final_val_loss"] for r in runs], target)
    result = {
        "n": len(runs),
        "target_val_loss": target,
        "reached_target": sum(r["time_to_target_ms"] is not None for r in runs),  # at any validation
        "final_at_or_below_target": sum(r["final_val_loss"] <= target for r in runs),
        "train_time_ms": stats.describe(times).as_dict(),
        "final_val_loss": rule.losses.as_dict(),
        "p_loss_below_target": rule.p,
        "previous": None,
    }
    if previous is not None:
        prev_times = [log.train_time_ms for log in sorted(previous_logs, key=lambda log: log.run_id or log.name)]
        result["previous"] = {
            "folder": previous["folder"],
            "name": previous["name"],
            "train_time_ms": stats.describe(prev_times).as_dict(),
            "speedup": stats.speedup(prev_times, times).as_dict(),
            "p_welch_faster": stats.welch(times, prev_times, alternative="less"),
        }
    return runs, result


def _summary(summary: dict, spec: str, unit: str = "", scale: float = 1) -> str:
    """'mean X, std Y, 95% CI A .. B' of a stats.describe dict."""
    low, high = summary["ci95"]
    return (f"mean {fmt(summary['mean'], spec, 'nan', scale)}{unit}, std {fmt(summary['std'], spec, 'nan', scale)}{unit}, "
            f"95% CI {fmt(low, spec, 'nan', scale)} .. {fmt(high, spec, 'nan', scale)}{unit}")


def render_statistics(record: dict) -> str:
    """statistics.md: every number of the record and the raw lists. Its text is part of RECORD_SCHEMA (verify
    compares it): a change bumps the schema, and an older record renders as its schema did."""
    s, runs, target = record["stats"], record["runs"], record["stats"]["target_val_loss"]
    times_label = "time_ms" if record["schema"] == 2 else "train_time_ms"
    table = pd.DataFrame([{
        "run id": r["run_id"],
        "seed": r["seed"],
        "final val loss": fmt(r["final_val_loss"], ".6f", 'nan'),
        "time (s)": fmt(r["train_time_ms"], ".3f", 'nan', 1000),
        "first val ≤ target (s)": fmt(r["time_to_target_ms"], ".3f", "never", 1000),
        "steps": r["steps"],
    } for r in runs]).to_markdown(index=False, disable_numparse=True)
    lines = [
        f"# Statistics: {record['name']} ({record['track']})", "",
        "Recomputed from the runs' own logs (runs/<run_id>/events.jsonl) by `harness.submit`; "
        "`python -m harness.verify` recomputes them again.", "",
        f"- target val loss: {target}",
        f"- runs: {s['n']} ({s['final_at_or_below_target']} ended at or below the target, "
        f"{s['reached_target']} were at or below it at some validation)",
        f"- code hash: {record['code_hash']}", "",
        "## Runs", "", table, "",
        "## Final val loss", "",
        "- " + _summary(s["final_val_loss"], ".6f"),
        f"- one-sided one-sample t-test, H1: mean < {target}: p = {fmt(s['p_loss_below_target'], '.3e', 'nan')} "
        f"(rule: < {stats.ALPHA})", "",
        "## Time (each run's train time at its final validation; every run counts)", "",
        "- " + _summary(s["train_time_ms"], ".3f", " s", 1000),
    ]
    prev = s.get("previous")
    if prev:
        sp = prev["speedup"]
        lines += [
            "", f"## Against the previous record, {prev['folder']}", "",
            f"- previous: {_summary(prev['train_time_ms'], '.3f', ' s', 1000)}, over {prev['train_time_ms']['n']} runs",
            f"- speedup (ratio of mean times, 95% Fieller interval): {fmt(sp['ratio'], '.6f', 'nan')} "
            f"(95% CI {fmt(sp['ci95'][0], '.6f', 'nan')} .. {fmt(sp['ci95'][1], '.6f', 'nan')})",
            f"- one-sided Welch t-test, H1: faster than the previous record: p = {fmt(prev['p_welch_faster'], '.3e', 'nan')} "
            f"(rule: < {stats.ALPHA})",
        ]
    else:
        lines += ["", "## Against the previous record", "", "- none: the first record on this track"]
    lines += [
        "", "## Raw lists (run id order)", "",
        f"- final_val_loss = {[r['final_val_loss'] for r in runs]!r}",
        f"- {times_label} = {[r['train_time_ms'] for r in runs]!r}",
    ]
    return "\n".join(lines) + "\n"


def check_against_log(log: RunLog) -> list[str]:
    """Where a run directory's train.log disagrees with its events.jsonl, one line each naming file and field:
    its sha256 (meta.log_sha256), its embedded code's hash (meta.embedded_code), and each validation line against
    its val event (to the printed digits). A run of ours without train.log is not checked."""
    run_dir = Path(log.source)
    path, events_path = run_dir / TRAIN_LOG_FILE, run_dir / EVENTS_FILE
    try:
        data = read_regular(path)
    except FileNotFoundError:
        return [f"{path}: missing (the log this run was read from)"] if log.origin is not None else []
    text, problems = data.decode("utf-8", errors="replace"), []
    if log.log_sha256 is not None and hashlib.sha256(data).hexdigest() != log.log_sha256:
        problems.append(f"{path}: sha256: expected {log.log_sha256} ({events_path.name} meta.log_sha256), found "
                        f"{hashlib.sha256(data).hexdigest()}: the log was changed after the run was recorded")
    if log.embedded_code:
        code = embedded_code(text)
        found = embedded_code_hash(code) if code is not None else None
        if found != log.code_hash:
            problems.append(f"{path}: embedded code: hashes to {found or 'nothing (no source code at its top)'}, "
                            f"expected the run's code hash {log.code_hash} ({events_path.name} meta.code_hash)")
    try:
        lines = [(lineno, f, printed) for lineno, f, printed in step_lines(text, str(path))
                 if "val_loss" in f and "train_time_ms" in f]
    except InvalidLog as exc:
        return problems + [str(exc)]
    events = list(zip(log.val_steps, log.val_losses, log.val_times_ms))
    if len(lines) != len(events):
        problems.append(f"{path}: {len(lines)} validation lines, but {events_path} has {len(events)} val events")
    for i, ((lineno, fields, printed), (step, loss, time_ms)) in enumerate(zip(lines, events)):
        where, event = f"{path}:{lineno}", f"{events_path.name} val event {i + 1}"
        printed_loss, loss_text, time_text = fields["val_loss"], printed["val_loss"], printed["train_time_ms"]
        if fields["step"] != step:
            problems.append(f"{where}: step: the log says {fields['step']}, {event} says {step}")
        same_loss = (math.isnan(printed_loss) and math.isnan(loss)) or \
            abs(printed_loss - loss) <= printed_tolerance(loss_text) + 1e-9 * abs(loss)
        if not same_loss:
            problems.append(f"{where}: val_loss: the log says {loss_text}, {event} (step {step}) says {loss!r}")
        if not abs(fields["train_time_ms"] - time_ms) <= printed_tolerance(time_text) + 1e-6:
            problems.append(f"{where}: train_time: the log says {time_text}ms, {event} (step {step}) says {time_ms!r}")
    return problems


def warn_damaged_lines(log: RunLog) -> None:
    """Name on stderr each line of a record's run's events.jsonl that was skipped (a line torn or garbled after
    its result, say): the run stands on its other events (records/README.md), but not silently. A validation
    lost so is a mismatch of check_against_log, which holds each val event against train.log's lines."""
    for problem in log.problems:
        print(f"warning: run {log.run_id}: {problem}", file=sys.stderr)


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
    elif all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (expected, found)):
        if not math.isclose(expected, found, rel_tol=JSON_RTOL, abs_tol=1e-12):
            out.append(f"{where}: expected {expected!r}, found {found!r}")
    elif expected != found:
        out.append(f"{where}: expected {expected!r}, found {found!r}")


def compare_text(expected: str, found: str, where: str, out: list[str]) -> None:
    """Line by line, exactly (the numbers are checked in record.json, never read back from the text)."""
    exp_lines, found_lines = expected.splitlines(), found.splitlines()
    if len(exp_lines) != len(found_lines):
        out.append(f"{where}: expected {len(exp_lines)} lines, found {len(found_lines)}")
    for lineno, (e, f) in enumerate(zip(exp_lines, found_lines), 1):
        if e != f:
            out.append(f"{where}:{lineno}: expected {e.strip()!r}, found {f.strip()!r}")


def record_fields_problems(record: dict, folder_name: str, record_path: Path) -> list[str]:
    """What submit writes that no recomputation checks: the date its folder is named by, and each excluded run as
    {run_id, reason}, a run that is not among the record's own."""
    out = []
    if not folder_name.startswith(f"{record['date']}_"):
        day = folder_name.split("_", 1)[0]
        out.append(f"{record_path}: date: expected the folder's {day!r}, found {record['date']!r}")
    ids = {r["run_id"] for r in record["runs"]}
    for i, x in enumerate(record.get("excluded") or []):
        if not (isinstance(x, dict) and isinstance(x.get("run_id"), str) and isinstance(x.get("reason"), str)
                and x["reason"].strip()):
            out.append(f"{record_path}: excluded[{i}]: expected {{\"run_id\": ..., \"reason\": ...}}, found {x!r}")
        elif x["run_id"] in ids:
            out.append(f"{record_path}: excluded[{i}]: run {x['run_id']} is also one of the record's runs")
    return out


def verify(folder: str | Path) -> list[str]:
    """All mismatches in a record folder (empty when it checks out)."""
    folder = Path(folder)
    problems: list[str] = []
    record_path = folder / RECORD_FILE
    try:
        record = read_record(record_path)
    except RecordsError as exc:  # missing, unreadable, not JSON, or a key missing: nothing to check against
        return [str(exc)]
    problems += record_fields_problems(record, folder.name, record_path)

    # Code.
    snapshot = folder / SNAPSHOT_DIR
    try:
        recomputed = snapshot_hash(snapshot)
        hash_file = snapshot / HASH_FILE
        stated = read_regular(hash_file).decode(errors="replace").strip() if hash_file.exists() else None
    except OSError as exc:
        return [os_error_line(exc)]
    if stated != recomputed:
        problems.append(f"{hash_file}: expected {recomputed} (recomputed from {snapshot}), found {stated}")
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
        except (LogError, OSError) as exc:
            problems.append(error_line(exc))
            continue
        if log.code_hash != recomputed:
            problems.append(f"{run_dir / EVENTS_FILE}: meta.code_hash: expected {recomputed}, found {log.code_hash}")
        problems += check_against_log(log)
        warn_damaged_lines(log)
        logs.append(log)
    if not logs:
        return problems + [f"{runs_dir}: no readable runs"]
    if len(logs) < len(run_dirs):  # figures from some of the runs would differ everywhere: say it once
        return problems + [f"{folder / RECORD_FILE}: statistics not recomputed: {len(run_dirs) - len(logs)} of "
                           f"{len(run_dirs)} runs cannot be read (above)"]

    # Statistics.
    stats_found = record["stats"]
    previous, previous_logs = stats_found.get("previous") or None, None
    if previous:
        try:
            previous_logs = record_runs(folder.parent / previous["folder"])
        except LogError as exc:
            problems.append(f"{folder.parent / previous['folder']}: the previous record's runs cannot be read ({exc})")
            previous = None
    runs, recomputed_stats = statistics(logs, stats_found["target_val_loss"], previous, previous_logs)
    expected = finite_or_none({"runs": runs, "stats": recomputed_stats})
    if previous is None and stats_found.get("previous"):
        expected["stats"]["previous"] = stats_found["previous"]  # reported above; do not report twice
    compare_values(expected["runs"], record.get("runs"), f"{record_path}: runs", problems)
    compare_values(expected["stats"], stats_found, f"{record_path}: stats", problems)
    stats_md = folder / "statistics.md"
    try:
        rendered = _rendered_statistics(record, {**record, **expected})
    except (LookupError, TypeError, ValueError) as exc:
        why = f"{exc.args[0]!r} missing" if isinstance(exc, KeyError) else str(exc)
        return problems + [f"{stats_md}: not compared: record.json's figures cannot be rendered ({why})"]
    try:
        compare_text(rendered, read_regular(stats_md).decode("utf-8"), str(stats_md), problems)
    except FileNotFoundError:
        problems.append(f"{stats_md}: missing")
    except (OSError, ValueError) as exc:  # unreadable, or not UTF-8
        problems.append(f"{stats_md}: cannot read ({exc.strerror if isinstance(exc, OSError) else exc})")
    return problems


def _rendered_statistics(record: dict, recomputed: dict) -> str:
    """statistics.md as record.json's figures render it: they are checked against the recomputed ones, so a
    difference is reported once. Where a figure record.json lacks or holds as another type (reported too) keeps
    it from rendering, as the recomputed record renders it; where neither renders, the first one's error."""
    try:
        return render_statistics(record)
    except (LookupError, TypeError, ValueError):
        try:
            return render_statistics(recomputed)
        except (LookupError, TypeError, ValueError):
            pass
        raise


def exclusions(folder: str | Path) -> list[str]:
    """'excluded run ID: REASON' for each run the record leaves out (empty where record.json cannot be read)."""
    try:
        record = read_record(Path(folder) / RECORD_FILE)
    except RecordsError:
        return []
    return [f"excluded run {x.get('run_id')}: {x.get('reason')}" for x in record.get("excluded") or []
            if isinstance(x, dict)]


def _not_a_record_folder(folder: Path) -> str | None:
    """Why a FOLDER argument cannot be verified (missing, a file, a link loop), in one line, or None."""
    try:
        folder.stat()
    except FileNotFoundError:
        return f"{folder}: no such record folder"
    except OSError as exc:
        return f"{folder}: cannot read ({exc.strerror or exc})"
    return None if folder.is_dir() else f"{folder}: not a folder (a record is a folder, records/<date>_<name>)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = doc_parser("verify", __doc__, with_rest=False)
    parser.add_argument("folders", nargs="+", type=Path, metavar="FOLDER", help="record folders, records/<date>_<name>")
    args = parser.parse_args(argv)
    failed = 0
    for folder in args.folders:
        if problem := _not_a_record_folder(folder):
            print(problem, file=sys.stderr)
            failed += 1
            continue
        try:
            problems = verify(folder)
        except OSError as exc:  # a folder inside it that cannot be listed
            problems = [os_error_line(exc)]
        for p in problems:
            print(p)
        for line in exclusions(folder):
            print(f"{folder}: {line}")
        print(f"{folder}: {'FAILED, ' + str(len(problems)) + ' mismatches' if problems else 'ok'}")
        failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    run_cli(main)
