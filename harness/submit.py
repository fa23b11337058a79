"""Submit a record: check a set of runs against the record rule from their own logs, then write its folder.

    python -m harness.submit --name NAME --description TEXT [--records records] RUN_ID...

Every figure is recomputed from each run's events.jsonl (found through its row in
records/runs.jsonl), never taken from the runs log's summary. The rule (records/README.md):

  1. at least 2 runs, distinct run ids and seeds; every run finished with status "ok" and ran its whole
     schedule (a run stopped at the target, --stop_at_target, is optional stopping: refused). Runs read
     from logs name no seed: they are told apart by their logs (two with the same train.log are one
     run taken in twice, refused); every run's train.log must agree with its events and, for a run
     taken in from a log, start with its code (harness.ingest.check_against_log); a log without its
     source code is no record;
  2. one track, one code hash (each snapshot's recomputed hash equals its CODE_HASH and the hash in
     its events), one resolved config apart from the seed, one hardware, one target val loss (the
     same as the track's current record's);
  3. mean final val loss below the target: one-sided one-sample t-test, p < 0.01;
  4. faster than the track's current record: lower mean time, one-sided Welch test p < 0.01 (the
     first record on a track has nothing to beat). A run's time is its train time at its final
     validation, whether or not that run ended below the target: the speedrun community's
     convention, in which the loss rule over the set, not each run, certifies the target.

On success it writes records/<YYYY-MM-DD>_<NAME>/ (code/, runs/<run_id>/{events.jsonl,train.log},
statistics.md, README.md, record.json) through a temporary folder and a rename, then re-renders the
leaderboard. Otherwise it prints the failing condition in one line and exits 1.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

from harness import stats
from harness.ingest import check_against_log
from harness.logs import CONFIG_KEYS_FREE, LogError, RunLog, config_diff, load_run
from harness.records import (RECORD_FILE, RECORD_SCHEMA, RECORDS_DIR, RecordsError, find_runs, finite_or_none,
                             fsync_path, list_records, os_error_line, row_run_dir)
from harness.runlog import TRAIN_LOG_FILE, EVENTS_FILE
from harness.snapshot import HASH_FILE, SNAPSHOT_DIR, snapshot_hash

ALPHA = 0.01  # significance for both the loss rule and the speed rule
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


class Refused(Exception):
    """A submission that breaks the rule; the message is the one failing condition."""


def check_name(name: str, records_dir: Path) -> None:
    if not name:
        raise Refused("record name is empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise Refused(f"record name {name!r} contains control characters")
    if "/" in name or "\\" in name or ".." in name or name.startswith("."):
        raise Refused(f"record name {name!r} could leave records/ ('/', '\\', '..' or a leading '.')")
    if not _NAME.match(name):
        raise Refused(f"record name {name!r}: use 1-80 letters, digits, '.', '_' or '-', "
                      "starting with a letter or digit")
    taken = sorted(p.name for p in Path(records_dir).glob(f"*_{name}")
                   if p.is_dir() and p.name.split("_", 1)[1] == name)
    if taken:
        raise Refused(f"record name {name!r} is taken by records/{taken[0]}; records are never overwritten")


def run_time_ms(log: RunLog) -> float:
    """A run's time for the record: its train time at its final validation (every speedrun record's)."""
    return log.time_ms


def statistics(logs: list[RunLog], target: float, previous: dict | None = None,
               previous_logs: list[RunLog] | None = None) -> tuple[list[dict], dict]:
    """(per-run figures, statistics) of a record, from its runs' logs, and the previous record's logs."""
    logs = sorted(logs, key=lambda log: log.run_id or log.name)
    runs = [{
        "run_id": log.run_id or log.name,
        "seed": log.seed,
        "final_val_loss": log.final_val_loss,
        "time_ms": run_time_ms(log),
        "time_to_target_ms": log.time_to_target(target),
        "train_time_ms": log.train_time_ms,
        "steps": log.final_step,
        "tokens": log.tokens,
    } for log in logs]
    times = [r["time_ms"] for r in runs]
    losses = [r["final_val_loss"] for r in runs]
    result = {
        "n": len(runs),
        "target_val_loss": target,
        "reached_target": sum(r["time_to_target_ms"] is not None for r in runs),  # at any validation
        "final_at_or_below_target": sum(r["final_val_loss"] <= target for r in runs),
        "time_ms": stats.describe(times).as_dict(),
        "final_val_loss": stats.describe(losses).as_dict(),
        "p_loss_below_target": stats.p_mean_below(losses, target),
        "previous": None,
    }
    if previous is not None:
        prev_times = [run_time_ms(log) for log in sorted(previous_logs, key=lambda log: log.run_id or log.name)]
        result["previous"] = {
            "folder": previous["folder"],
            "name": previous["name"],
            "time_ms": stats.describe(prev_times).as_dict(),
            "speedup": stats.speedup(prev_times, times).as_dict(),
            "p_welch_faster": stats.welch(times, prev_times, alternative="less"),
        }
    return runs, result


def _num(x, spec: str, scale: float = 1, missing: str = "nan") -> str:
    """x / scale formatted; `missing` for None (JSON's null) or NaN."""
    return missing if x is None or (isinstance(x, float) and math.isnan(x)) else format(x / scale, spec)


def _summary(summary: dict, spec: str, unit: str = "", scale: float = 1) -> str:
    """'mean X, std Y, 95% CI A .. B' of a stats.describe dict."""
    low, high = summary["ci95"]
    return (f"mean {_num(summary['mean'], spec, scale)}{unit}, std {_num(summary['std'], spec, scale)}{unit}, "
            f"95% CI {_num(low, spec, scale)} .. {_num(high, spec, scale)}{unit}")


def render_statistics(record: dict) -> str:
    """statistics.md: every number of the record and the raw lists. harness.verify re-renders and compares it.

    Its text is part of RECORD_SCHEMA: a change here makes verify expect the new text from old
    records, so bump the schema and keep this renderer for records of schema 1.
    """
    s, runs, target = record["stats"], record["runs"], record["stats"]["target_val_loss"]
    table = pd.DataFrame([{
        "run id": r["run_id"],
        "seed": r["seed"],
        "final val loss": _num(r["final_val_loss"], ".6f"),
        "time (s)": _num(r["time_ms"], ".3f", 1000),
        "first val ≤ target (s)": _num(r["time_to_target_ms"], ".3f", 1000, "never"),
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
        f"- one-sided one-sample t-test, H1: mean < {target}: p = {_num(s['p_loss_below_target'], '.3e')} "
        f"(rule: < {ALPHA})", "",
        "## Time (each run's train time at its final validation; every run counts)", "",
        "- " + _summary(s["time_ms"], ".3f", " s", 1000),
    ]
    prev = s.get("previous")
    if prev:
        sp = prev["speedup"]
        lines += [
            "", f"## Against the previous record, {prev['folder']}", "",
            f"- previous: {_summary(prev['time_ms'], '.3f', ' s', 1000)}, over {prev['time_ms']['n']} runs",
            f"- speedup (ratio of mean times, 95% Fieller interval): {_num(sp['ratio'], '.6f')} "
            f"(95% CI {_num(sp['ci95'][0], '.6f')} .. {_num(sp['ci95'][1], '.6f')})",
            f"- one-sided Welch t-test, H1: faster than the previous record: p = {_num(prev['p_welch_faster'], '.3e')} "
            f"(rule: < {ALPHA})",
        ]
    else:
        lines += ["", "## Against the previous record", "", "- none: the first record on this track"]
    lines += [
        "", "## Raw lists (run id order)", "",
        f"- final_val_loss = {[r['final_val_loss'] for r in runs]!r}",
        f"- time_ms = {[r['time_ms'] for r in runs]!r}",
    ]
    return "\n".join(lines) + "\n"


def render_readme(record: dict, overrides: list[str]) -> str:
    s = record["stats"]
    prev = s.get("previous")
    origin = record.get("origin")
    if origin == "cmd" and record.get("command"):  # harness.run --cmd: the foreign trainer's own command
        command = f"python -m harness.run --track {record['track']} --seeds {s['n']} --cmd {shlex.quote(record['command'])}"
    elif origin:  # ingested logs: the code is the source the logs start with
        command = f"the trainer in code/ (the source its logs printed), {s['n']} runs, then python -m harness.ingest"
    else:
        command = f"python -m harness.run --track {record['track']} --seeds {s['n']}"
        if overrides:
            command += " -- " + shlex.join(overrides)
    versions = ", ".join(f"{k} {v}" for k, v in sorted((record.get("versions") or {}).items()) if v)
    lines = [
        f"# {record['name']}", "", record["description"], "",
        f"- track: {record['track']}, target val loss {s['target_val_loss']}",
        f"- time: {_num(s['time_ms']['mean'], '.2f', 1000)} ± {_num(s['time_ms']['std'], '.2f', 1000)} s "
        f"over {s['n']} runs",
        f"- final val loss: {_num(s['final_val_loss']['mean'], '.4f')} ± {_num(s['final_val_loss']['std'], '.4f')} "
        f"(one-sided t-test that it is below the target: p = {_num(s['p_loss_below_target'], '.2e')})",
        f"- speedup over {prev['name']}: {_num(prev['speedup']['ratio'], '.3f')}x" if prev
        else "- the first record on this track",
        f"- hardware: {record['hardware']}; versions: {versions}",
        f"- git commit: {record.get('git_commit')}; code hash: {record['code_hash']}", "",
        "Reproduce (at that commit, on that hardware):", "", f"    {command}", "",
        f"Check: `python -m harness.verify records/{record['folder']}`; every number is in statistics.md.",
    ]
    return "\n".join(lines) + "\n"


def gather(run_ids: Sequence[str], records_dir: Path) -> tuple[list[dict], list[RunLog]]:
    """Each run's runs.jsonl row and its log read from its own run directory."""
    rows = find_runs(run_ids, records_dir)
    logs = []
    for row in rows:
        run_dir = row_run_dir(row)
        if not (run_dir / EVENTS_FILE).is_file():
            hint = (f" (a log put there by hand: take it in with `python -m harness.ingest --track TRACK --name NAME "
                    f"{run_dir / TRAIN_LOG_FILE}`)" if (run_dir / TRAIN_LOG_FILE).is_file() else "")
            raise Refused(f"run {row['run_id']}: no {EVENTS_FILE} in its run directory {run_dir}{hint}")
        logs.append(load_run(run_dir))
    return rows, logs


def check(run_ids: Sequence[str], logs: list[RunLog], records_dir: Path) -> tuple[float, dict | None, list[RunLog]]:
    """Apply the record rule; return (target, current record or None, its logs). Raises Refused."""
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
    log_hashes: dict[str, str] = {}
    for log in logs:
        if log.origin is not None and log.code_hash is None:
            raise Refused(f"run {log.run_id}: no source code: its log ({Path(log.source) / TRAIN_LOG_FILE}) does not "
                          "start with the code that produced it, and no script was kept; a record needs its code")
        against_log = check_against_log(log)
        if against_log:
            raise Refused(f"run {log.run_id}: {against_log[0]}")
        if (Path(log.source) / TRAIN_LOG_FILE).is_file():
            digest = hashlib.sha256((Path(log.source) / TRAIN_LOG_FILE).read_bytes()).hexdigest()
            if digest in log_hashes:
                raise Refused(f"runs {log_hashes[digest]} and {log.run_id} have the same log ({TRAIN_LOG_FILE} sha256 "
                              f"{digest[:12]}): one run taken in twice")
            log_hashes[digest] = log.run_id
        snapshot = Path(log.source) / SNAPSHOT_DIR
        if not (snapshot / HASH_FILE).is_file():
            raise Refused(f"run {log.run_id}: no code snapshot ({snapshot / HASH_FILE} missing)")
        stated = (snapshot / HASH_FILE).read_text().strip()
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
        diff = config_diff(first.config or {}, log.config or {})
        if diff:
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
    on_track = [r for r in records if r["track"] == first.track]
    previous = on_track[-1] if on_track else None  # each record beat the one before: the latest is the fastest
    previous_logs: list[RunLog] = []
    if previous is not None:
        if previous["stats"]["target_val_loss"] != target:
            raise Refused(f"target val loss {target} differs from the current {first.track} record's "
                          f"({previous['stats']['target_val_loss']}, records/{previous['folder']})")
        if previous.get("hardware") != first.hardware_label:
            raise Refused(f"hardware {first.hardware_label} differs from the current {first.track} record's "
                          f"({previous.get('hardware')}, records/{previous['folder']}): times are not comparable")
        prev_runs = records_dir / previous["folder"] / "runs"
        try:
            previous_logs = [load_run(p) for p in sorted(prev_runs.iterdir()) if p.is_dir()]
            why = None if previous_logs else f"no run directories in {prev_runs}"
        except LogError as exc:
            why = str(exc)
        except OSError as exc:
            why = os_error_line(exc)
        if why:
            raise Refused(f"the current {first.track} record's runs cannot be read ({why}); "
                          "repair it before submitting")
    _, s = statistics(logs, target, previous, previous_logs)
    losses = s["final_val_loss"]
    if not s["p_loss_below_target"] < ALPHA:
        raise Refused(f"mean final val loss {losses['mean']:.4f} is not significantly below the target {target}: "
                      f"one-sided t-test p = {s['p_loss_below_target']:.3g} (needs < {ALPHA}, {s['n']} runs)")
    if previous is not None:
        prev = s["previous"]
        mean, prev_mean = s["time_ms"]["mean"] / 1000, prev["time_ms"]["mean"] / 1000
        if not (mean < prev_mean and prev["p_welch_faster"] < ALPHA):
            raise Refused(f"mean time {mean:.3f} s is not significantly faster than the current record "
                          f"records/{previous['folder']} ({prev_mean:.3f} s): one-sided Welch p = "
                          f"{prev['p_welch_faster']:.3g} (needs < {ALPHA})")
    return target, previous, previous_logs


def build_record(name: str, description: str, rows: list[dict], logs: list[RunLog], target: float,
                 previous: dict | None, previous_logs: list[RunLog], folder: str) -> dict:
    runs, s = statistics(logs, target, previous, previous_logs)
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
        "stats": s,
    }


def record_json(record: dict) -> str:
    return json.dumps(finite_or_none(record), indent=1, allow_nan=False) + "\n"


def write_record(record: dict, logs: list[RunLog], overrides: list[str], records_dir: Path) -> Path:
    """Write the record folder through a hidden temporary folder and one rename.

    Every file and folder in it is fsynced before the rename, and records/ after it, so that a
    crash leaves either no record folder or a whole one, never one with empty files.
    """
    final = records_dir / record["folder"]
    tmp = records_dir / f".{record['folder']}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(Path(logs[0].source) / SNAPSHOT_DIR, tmp / SNAPSHOT_DIR)
        for log in logs:
            dest = tmp / "runs" / log.run_id
            dest.mkdir(parents=True)
            for fname in (EVENTS_FILE, TRAIN_LOG_FILE):
                if (Path(log.source) / fname).exists():
                    shutil.copy2(Path(log.source) / fname, dest / fname)
        (tmp / "statistics.md").write_text(render_statistics(record))
        (tmp / "README.md").write_text(render_readme(record, overrides))
        (tmp / RECORD_FILE).write_text(record_json(record))
        for folder, _, files in os.walk(tmp, topdown=False):  # files before the folders that list them
            for fname in files:
                fsync_path(Path(folder) / fname)
            fsync_path(Path(folder))
        os.rename(tmp, final)  # fails rather than replace an existing (non-empty) folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_path(records_dir)  # the rename itself
    return final


def submit(name: str, description: str, run_ids: Sequence[str], records_dir: str | os.PathLike = RECORDS_DIR) -> Path:
    """Check and write a record; return its folder. Raises Refused with the failing condition."""
    records_dir = Path(records_dir).resolve()
    check_name(name, records_dir)
    if not description.strip():
        raise Refused("the description is empty")
    try:
        rows, logs = gather(run_ids, records_dir)
        target, previous, previous_logs = check(list(run_ids), logs, records_dir)
    except (RecordsError, LogError) as exc:
        raise Refused(str(exc)) from None
    except OSError as exc:  # a run's files that cannot be read
        raise Refused(os_error_line(exc)) from None
    folder = f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}_{name}"
    if (records_dir / folder).exists():
        raise Refused(f"records/{folder} exists; records are never overwritten")
    record = build_record(name, description, rows, logs, target, previous, previous_logs, folder)
    return write_record(record, logs, list(rows[0].get("overrides") or []), records_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.submit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="record name (letters, digits, '.', '_', '-')")
    parser.add_argument("--description", required=True, help="one line: what changed")
    parser.add_argument("--records", type=Path, default=RECORDS_DIR, help="records directory (default records/)")
    parser.add_argument("--no-leaderboard", action="store_true", help="do not re-render leaderboard.md")
    parser.add_argument("run_ids", nargs="+", metavar="RUN_ID", help="run ids from records/runs.jsonl")
    args = parser.parse_args(argv)
    try:
        folder = submit(args.name, " ".join(args.description.split()), args.run_ids, args.records)
    except (Refused, ValueError) as exc:  # ValueError: figures no statistic can be computed from
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # writing the record folder failed; nothing of it was left behind
        print(f"error: the record was not written: {os_error_line(exc)}", file=sys.stderr)
        return 1
    record = json.loads((folder / RECORD_FILE).read_text())
    s = record["stats"]
    print(f"accepted: {folder}")
    print(f"  time {s['time_ms']['mean'] / 1000:.3f} ± {(s['time_ms']['std'] or 0) / 1000:.3f} s, final val loss "
          f"{s['final_val_loss']['mean']:.4f}, p = {s['p_loss_below_target']:.3g}")
    if s["previous"]:
        sp = s["previous"]["speedup"]
        print(f"  speedup over {s['previous']['name']}: {sp['ratio']:.4f}x "
              f"(95% CI {sp['ci95'][0]:.4f}..{sp['ci95'][1]:.4f})")
    if not args.no_leaderboard:
        from harness.leaderboard import default_out, render

        try:
            print(f"leaderboard: {render(args.records, default_out(args.records))}")
        except OSError as exc:  # the record stands; the page can be re-rendered with harness.leaderboard
            print(f"leaderboard: not written: {os_error_line(exc)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
