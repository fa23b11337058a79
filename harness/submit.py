"""Submit a record: check a set of runs against the record rule from their own logs, then write its folder.

    python -m harness.submit --name NAME --description TEXT [--records records]
                             [--exclude RUN_ID --reason TEXT]... RUN_ID...

The rule is records/README.md's ("The record rule", "How a run counts"), checked from each run's own events.jsonl
and train.log. On success it writes records/<YYYY-MM-DD>_<NAME>/ whole and re-renders the leaderboard;
otherwise it prints the failing condition in one line and exits 1.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Sequence

from harness import stats
from harness.cli import doc_parser, not_a_folder, os_error_line, run_cli
from harness.files import atomic_folder, clean_stale_temps, fsync_tree
from harness.leaderboard import render
from harness.stats import fmt, mean_std
from harness.logs import CONFIG_KEYS_FREE, LogError, RunLog, config_diff, load_run, record_runs
from harness.records import (RECORD_FILE, RECORD_SCHEMA, RECORDS_DIR, RUNS_FILE, RecordsError, find_runs,
                             last_rows, list_records, name_problem, row_run_dir, runs_lock)
from harness.runlog import TRAIN_LOG_FILE, EVENTS_FILE, finite_or_none, read_regular
from harness.snapshot import HASH_FILE, SNAPSHOT_DIR, snapshot_hash
from harness.verify import check_against_log, render_statistics, statistics, warn_damaged_lines


class Refused(Exception):
    """A submission that breaks the rule; the message is the one failing condition."""


def check_name(name: str, records_dir: Path) -> None:
    """A record name records.name_problem accepts, not taken by a record folder yet. Raises Refused."""
    if problem := name_problem("record name", name):
        raise Refused(problem)
    taken = sorted(p.name for p in Path(records_dir).glob(f"*_{name}")
                   if p.is_dir() and p.name.split("_", 1)[1] == name)
    if taken:
        raise Refused(f"record name {name!r} is taken by records/{taken[0]}; records are never overwritten")


def render_readme(record: dict) -> str:
    s = record["stats"]
    prev = s.get("previous")
    origin = record.get("origin")
    if origin == "cmd" and record.get("command"):  # harness.run --cmd: the foreign trainer's own command
        command = f"python -m harness.run --track {record['track']} --seeds {s['n']} --cmd {shlex.quote(record['command'])}"
    elif origin:  # ingested logs: the code is the source the logs start with
        command = f"the trainer in code/ (the source its logs printed), {s['n']} runs, then python -m harness.ingest"
    else:
        command = f"python -m harness.run --track {record['track']} --seeds {s['n']}"
        if record["overrides"]:
            command += " -- " + shlex.join(record["overrides"])
    versions = ", ".join(f"{k} {v}" for k, v in sorted((record.get("versions") or {}).items()) if v)
    lines = [
        f"# {record['name']}", "", record["description"], "",
        f"- track: {record['track']}, target val loss {s['target_val_loss']}",
        f"- time: {mean_std(s['train_time_ms'], '.2f', 1000, 'nan')} s over {s['n']} runs",
        f"- final val loss: {mean_std(s['final_val_loss'], '.4f', missing='nan')} "
        f"(one-sided t-test that it is below the target: p = {fmt(s['p_loss_below_target'], '.2e', 'nan')})",
        f"- speedup over {prev['name']}: {fmt(prev['speedup']['ratio'], '.3f', 'nan')}x" if prev
        else "- the first record on this track",
        f"- hardware: {record['hardware']}; versions: {versions}",
        f"- git commit: {record.get('git_commit')}; code hash: {record['code_hash']}",
        *(f"- excluded: run {x['run_id']}: {x['reason']}" for x in record.get("excluded") or []), "",
        "Reproduce (at that commit, on that hardware):", "", f"    {command}", "",
        f"Check: `python -m harness.verify records/{record['folder']}`; every number is in statistics.md.",
    ]
    return "\n".join(lines) + "\n"


def gather(run_ids: Sequence[str], records_dir: Path) -> tuple[list[dict], list[RunLog]]:
    """Each run's runs.jsonl row and its log read from its own run directory."""
    rows = find_runs(run_ids, records_dir)
    logs = []
    for row in rows:
        if row.get("status") not in (None, "ok"):  # the runs log's status: the harness's (interrupted, timeout) or the events'
            raise Refused(f"run {row['run_id']}: status {row.get('status')!r} in {records_dir / RUNS_FILE}; "
                          "every run must finish 'ok'")
        run_dir = row_run_dir(row)
        if not (run_dir / EVENTS_FILE).is_file():
            hint = (f" (a log put there by hand: take it in with `python -m harness.ingest --track TRACK --name NAME "
                    f"{run_dir / TRAIN_LOG_FILE}`)" if (run_dir / TRAIN_LOG_FILE).is_file() else "")
            raise Refused(f"run {row['run_id']}: no {EVENTS_FILE} in its run directory {run_dir}{hint}")
        logs.append(load_run(run_dir))
    return rows, logs


def check(run_ids: Sequence[str], logs: list[RunLog], records_dir: Path) -> tuple[list[dict], dict]:
    """Apply the record rule; return the set's (per-run figures, statistics) (verify.statistics). Raises Refused."""
    if len(run_ids) < 2:
        raise Refused(f"a record needs at least 2 runs, got {len(run_ids)}")
    for i, run_id in enumerate(run_ids):
        if run_id in run_ids[:i]:
            raise Refused(f"run {run_id} is given twice")
    for log in logs:
        if log.status != "ok":
            raise Refused(f"run {log.run_id}: status {log.status!r} in its {EVENTS_FILE}; every run must finish 'ok'")
        why = "optional stopping biases time and loss; a record's runs go their full schedule"
        if log.stopped_early:
            flag = " (--stop_at_target=true)" if log.stop_at_target else ""
            raise Refused(f"run {log.run_id} stopped at the target at step {log.final_step} of "
                          f"{log.total_steps}{flag}: {why}")
        if log.stop_at_target:
            raise Refused(f"run {log.run_id} was made with --stop_at_target=true: {why}")
    first = logs[0]
    seen: dict[str, RunLog] = {}
    for log in logs:
        if log.origin is not None and log.code_hash is None:
            raise Refused(f"run {log.run_id}: no source code: its log ({Path(log.source) / TRAIN_LOG_FILE}) does not "
                          "start with the code that produced it, and no script was kept; a record needs its code")
        if against_log := check_against_log(log):
            raise Refused(f"run {log.run_id}: {against_log[0]}")
        if other := next((seen[i] for i in log.identities if i in seen), None):
            raise Refused(f"runs {other.run_id} and {log.run_id} are one run: {Path(other.source) / TRAIN_LOG_FILE} and "
                          f"{Path(log.source) / TRAIN_LOG_FILE} have the same step lines or validations")
        seen.update(dict.fromkeys(log.identities, log))
        snapshot = Path(log.source) / SNAPSHOT_DIR
        try:
            stated = read_regular(snapshot / HASH_FILE).decode(errors="replace").strip()
        except FileNotFoundError:
            raise Refused(f"run {log.run_id}: no code snapshot ({snapshot / HASH_FILE} missing)") from None
        except OSError as exc:  # there, but no file to read: a folder, a FIFO
            raise Refused(f"run {log.run_id}: {os_error_line(exc)}") from None
        recomputed = snapshot_hash(snapshot)
        if recomputed != stated or log.code_hash != stated:
            raise Refused(f"run {log.run_id}: code hash mismatch: snapshot recomputes {recomputed[:12]}, "
                          f"CODE_HASH says {stated[:12]}, events say {(log.code_hash or 'none')[:12]}")
        if log.code_hash != first.code_hash:
            raise Refused(f"runs {first.run_id} and {log.run_id} have different code hashes "
                          f"({first.code_hash[:12]} vs {log.code_hash[:12]})")
        for field in ("track", "target"):
            if getattr(log, field) != getattr(first, field):
                raise Refused(f"runs {first.run_id} and {log.run_id} differ in {field}: "
                              f"{getattr(first, field)!r} vs {getattr(log, field)!r}")
        if log.hardware_label != first.hardware_label:
            raise Refused(f"runs {first.run_id} and {log.run_id} ran on different hardware: "
                          f"{first.hardware_label} vs {log.hardware_label}")
        if diff := config_diff(first.config or {}, log.config or {}):
            raise Refused(f"runs {first.run_id} and {log.run_id} differ in config: {diff}")
    seeds = {}
    for log in logs:  # a log names no seed (None): such runs are told apart by their logs (above)
        if log.seed is not None and log.seed in seeds:
            raise Refused(f"runs {seeds[log.seed]} and {log.run_id} share seed {log.seed}")
        seeds[log.seed] = log.run_id
    if not first.track:
        raise Refused(f"run {first.run_id}: its {EVENTS_FILE} names no track")
    if first.target is None:
        raise Refused(f"run {first.run_id}: its {EVENTS_FILE} states no target val loss")
    target = first.target
    records, damaged = list_records(records_dir)
    if damaged:  # the current record might be the damaged one: comparing against an older one would be wrong
        raise Refused(f"{damaged[0]}; repair it before submitting")
    previous = next((r for r in reversed(records) if r["track"] == first.track), None)  # the latest is the fastest
    previous_logs: list[RunLog] = []
    if previous is not None:
        if previous["stats"]["target_val_loss"] != target:
            raise Refused(f"target val loss {target} differs from the current {first.track} record's "
                          f"({previous['stats']['target_val_loss']}, records/{previous['folder']})")
        if previous.get("hardware") != first.hardware_label:
            raise Refused(f"hardware {first.hardware_label} differs from the current {first.track} record's "
                          f"({previous.get('hardware')}, records/{previous['folder']}): times are not comparable")
        try:
            previous_logs = record_runs(records_dir / previous["folder"])
        except LogError as exc:
            raise Refused(f"the current {first.track} record's runs cannot be read ({exc}); "
                          "repair it before submitting") from None
    runs, s = statistics(logs, target, previous, previous_logs)
    if not stats.loss_rule([log.final_val_loss for log in logs], target).passes:
        raise Refused(f"mean final val loss {s['final_val_loss']['mean']:.4f} is not significantly below the target "
                      f"{target}: one-sided t-test p = {s['p_loss_below_target']:.3g} (needs < {stats.ALPHA}, {s['n']} runs)")
    if previous is not None:
        prev = s["previous"]
        mean, prev_mean = s["train_time_ms"]["mean"] / 1000, prev["train_time_ms"]["mean"] / 1000
        if not (mean < prev_mean and prev["p_welch_faster"] < stats.ALPHA):
            raise Refused(f"mean time {mean:.3f} s is not significantly faster than the current record "
                          f"records/{previous['folder']} ({prev_mean:.3f} s): one-sided Welch p = "
                          f"{prev['p_welch_faster']:.3g} (needs < {stats.ALPHA})")
    return runs, s


def check_every_run(logs: list[RunLog], run_ids: Sequence[str], excluded: dict[str, str], records_dir: Path) -> None:
    """Refuse unless every "ok" run of the runs log with the set's track, code hash and config (apart from
    CONFIG_KEYS_FREE) is in the set or excluded with a reason; a run whose config cannot be read counts, and so
    does a hidden one (hiding a row is no way around this rule)."""
    rows = last_rows(records_dir, hidden=True)[0]  # run id -> its last row
    for run_id, reason in excluded.items():
        if run_id in run_ids:
            raise Refused(f"--exclude {run_id}: that run is in the set")
        if run_id not in rows:
            raise Refused(f"--exclude {run_id}: no run with that id in {records_dir / RUNS_FILE}")
        if not reason.strip():
            raise Refused(f"--exclude {run_id}: the reason is empty")
    first, missing = logs[0], []
    for row in rows.values():
        if (row["run_id"] in run_ids or row["run_id"] in excluded or row["status"] != "ok"
                or row["track"] != first.track or row["code_hash"] != first.code_hash):
            continue
        try:
            log = load_run(row_run_dir(row))
        except (LogError, RecordsError, OSError):
            log = None
        if log is None or not config_diff(first.config or {}, log.config or {}):
            missing.append(row["run_id"])
    if missing:
        raise Refused(f"every finished run counts: {', '.join(missing)} ran the same track, code and config but "
                      "{} left out; add {} to the set, or give --exclude RUN_ID --reason TEXT for each".format(
                          "is" if len(missing) == 1 else "are", "it" if len(missing) == 1 else "them"))


def build_record(name: str, description: str, rows: list[dict], logs: list[RunLog], runs: list[dict], s: dict,
                 folder: str, excluded: dict[str, str] | None = None) -> dict:
    first = logs[0]
    return {
        "schema": RECORD_SCHEMA,
        "name": name,
        "description": description,
        "track": first.track,
        "date": folder.split("_", 1)[0],
        "submitted": dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds"),  # orders same-day records
        "folder": folder,
        "code_hash": first.code_hash,
        "git_commit": (first.git or {}).get("commit"),
        "hardware": first.hardware_label,
        "versions": first.versions,
        "config": {k: v for k, v in (first.config or {}).items() if k not in CONFIG_KEYS_FREE},
        "overrides": rows[0].get("overrides") or [],
        "origin": first.origin,  # None: this kit's trainer; "ingested" or "cmd": a foreign trainer's runs
        "command": first.command,
        "runs": runs,
        "excluded": [{"run_id": k, "reason": v} for k, v in (excluded or {}).items()],
        "stats": s,
    }


def write_record(record: dict, logs: list[RunLog], records_dir: Path) -> Path:
    """Write the record folder whole (harness.files.atomic_folder)."""
    clean_stale_temps(records_dir)  # what a killed submit left behind
    with atomic_folder(records_dir / record["folder"]) as tmp:
        shutil.copytree(Path(logs[0].source) / SNAPSHOT_DIR, tmp / SNAPSHOT_DIR)
        for log in logs:
            dest = tmp / "runs" / log.run_id
            dest.mkdir(parents=True)
            for fname in (EVENTS_FILE, TRAIN_LOG_FILE):
                if (Path(log.source) / fname).exists():
                    shutil.copy2(Path(log.source) / fname, dest / fname)
        (tmp / "statistics.md").write_text(render_statistics(record))
        (tmp / "README.md").write_text(render_readme(record))
        (tmp / RECORD_FILE).write_text(json.dumps(finite_or_none(record), indent=1, allow_nan=False) + "\n")
        fsync_tree(tmp)
    return records_dir / record["folder"]


def submit(name: str, description: str, run_ids: Sequence[str], records_dir: str | os.PathLike = RECORDS_DIR,
           excluded: dict[str, str] | None = None) -> Path:
    """Check and write a record; return its folder. Raises Refused with the failing condition."""
    records_dir = Path(records_dir).resolve()
    check_name(name, records_dir)  # a bad name is refused before anything is made; "taken" is checked again locked
    if not description.strip():
        raise Refused("the description is empty")
    excluded = excluded or {}
    with runs_lock(records_dir):  # judged against the records as they are when it is written: one step
        check_name(name, records_dir)
        try:
            rows, logs = gather(run_ids, records_dir)
            runs, s = check(list(run_ids), logs, records_dir)
            check_every_run(logs, list(run_ids), excluded, records_dir)
        except (RecordsError, LogError) as exc:
            raise Refused(str(exc)) from None
        except OSError as exc:  # a run's files that cannot be read
            raise Refused(os_error_line(exc)) from None
        folder = f"{record_date(rows, logs)}_{name}"
        if (records_dir / folder).exists():
            raise Refused(f"records/{folder} exists; records are never overwritten")
        record = build_record(name, description, rows, logs, runs, s, folder, excluded)
        written = write_record(record, logs, records_dir)
    for log in logs:
        warn_damaged_lines(log)
    return written


def record_date(rows: list[dict], logs: list[RunLog]) -> str:
    """The day (YYYY-MM-DD) the last run was made: an ingested log's stated start, else its runs-log timestamp;
    today where neither is."""
    days = [(log.started or row.get("timestamp") or "")[:10] for row, log in zip(rows, logs)]
    days = [d for d in days if re.fullmatch(r"\d{4}-\d\d-\d\d", d)]
    return max(days) if days else f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = doc_parser("submit", __doc__, with_rest=False)
    parser.add_argument("--name", required=True, help="record name (letters, digits, '.', '_', '-')")
    parser.add_argument("--description", required=True, help="one line: what changed")
    parser.add_argument("--records", type=Path, default=RECORDS_DIR, help="records directory (default records/)")
    parser.add_argument("--no-leaderboard", action="store_true", help="do not re-render leaderboard.md")
    parser.add_argument("--exclude", action="append", default=[], metavar="RUN_ID",
                        help="a finished run of the same track, code and config left out of the set (with --reason)")
    parser.add_argument("--reason", action="append", default=[], metavar="TEXT",
                        help="why the --exclude before it is left out (one per --exclude, in order)")
    parser.add_argument("run_ids", nargs="+", metavar="RUN_ID", help="run ids from records/runs.jsonl")
    args = parser.parse_args(argv)
    if len(args.exclude) != len(args.reason):
        parser.error(f"give one --reason per --exclude (got {len(args.exclude)} --exclude, {len(args.reason)} --reason)")
    if len(set(args.exclude)) != len(args.exclude):
        parser.error("--exclude: a run is named twice")
    if problem := not_a_folder("--records", args.records):
        parser.error(problem)
    try:
        folder = submit(args.name, " ".join(args.description.split()), args.run_ids, args.records,
                        {run_id: " ".join(reason.split()) for run_id, reason in zip(args.exclude, args.reason)})
    except (Refused, ValueError) as exc:  # ValueError: figures no statistic can be computed from
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # writing the record folder failed; nothing of it was left behind
        print(f"error: the record was not written: {os_error_line(exc)}", file=sys.stderr)
        return 1
    s = json.loads((folder / RECORD_FILE).read_text())["stats"]
    print(f"accepted: {folder}")
    print(f"  time {s['train_time_ms']['mean'] / 1000:.3f} ± {(s['train_time_ms']['std'] or 0) / 1000:.3f} s, final val loss "
          f"{s['final_val_loss']['mean']:.4f}, p = {s['p_loss_below_target']:.3g}")
    if s["previous"]:
        sp = s["previous"]["speedup"]
        print(f"  speedup over {s['previous']['name']}: {sp['ratio']:.4f}x "
              f"(95% CI {sp['ci95'][0]:.4f}..{sp['ci95'][1]:.4f})")
    if not args.no_leaderboard:
        try:
            print(f"leaderboard: {render(args.records)}")
        except OSError as exc:  # the record stands; the page can be re-rendered with harness.leaderboard
            print(f"leaderboard: not written: {os_error_line(exc)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
