"""The speedrun's history, recomputed from the raw logs of a modded-nanogpt checkout's records/ folder.

    python -m harness.history ROOT [--json] [--out DIR] [--target X]

ROOT is a records/ folder in either layout modded-nanogpt has used:

    ROOT/<MMDDYY>_<Name>/[<variant>/]*.txt                         (2024 to mid-2025; no track folder)
    ROOT/track_<n>_<name>/<YYYY-MM-DD>_<Name>/[<variant>/]*.txt    (since)

Each folder of logs in a record folder is a variant (baseline, this_pr, ...), its runs counted as records/README.md
says ("How a run counts"), a log found twice once. Flagged: code or planned steps that differ, logs cut off or
diverged (left out). A problem (an unreadable folder or log, a misnamed folder) is one line on stderr.

Writes DIR/history.md (a table per track, the flags, the problems) and DIR/history.png (each variant's mean
time against its date); --json prints every figure, and each run's, on stdout. Exit status: 2 if ROOT is not a
folder, 1 if a problem was reported or the output could not be written, else 0.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from harness import stats
from harness.cli import doc_parser, markdown_table, os_error_line, positive_finite_float, run_cli
from harness.files import write_atomic
from harness.leaderboard import TIME_NOTE, pyplot, save_png
from harness.logs import LOG_SUFFIXES, LogError, code_differences, describe_difference, load_run
from harness.runlog import finite_or_none
from harness.runrow import RUNS_DIR
from harness.stats import fmt, mean_std
from harness.tracks import FINEWEB_TARGET

PAGE_FILE = "history.md"
PLOT_FILE = "history.png"
DEFAULT_OUT = RUNS_DIR / "history"
NO_TRACK = "(no track folder)"
# modded-nanogpt's README's targets, keyed by the <name> of a track_<n>_<name> folder.
TRACK_TARGETS = {"short": FINEWEB_TARGET, "medium": 2.92, "optimization": FINEWEB_TARGET}

_TRACK_DIR = re.compile(r"^track_(\d+)_(.+)$")
_DATED = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(?:[_-](.*))?$")  # 2026-07-17_Name (a few use '-' or no name)
_MMDDYY = re.compile(r"^(\d{2})(\d{2})(\d{2})_(.+)$")  # 071724_Name


@dataclass
class RecordFolder:
    path: Path
    track: str  # the track folder's name, or NO_TRACK
    date: str  # YYYY-MM-DD
    name: str
    target: float


def parse_record_folder(path: Path, track: str | None) -> RecordFolder | None:
    """The record a folder's name says ('<YYYY-MM-DD>_<Name>' in a track folder, else '<MMDDYY>_<Name>'), or None."""
    m = (_MMDDYY if track is None else _DATED).match(path.name)
    if not m:
        return None
    if track is None:
        month, day, yy, name = m.groups()
        year, target = f"20{yy}", FINEWEB_TARGET
    else:
        year, month, day, name = m.groups()
        target = TRACK_TARGETS.get(_TRACK_DIR.match(track).group(2), FINEWEB_TARGET)
    try:
        date = dt.date(int(year), int(month), int(day)).isoformat()
    except ValueError:
        return None
    return RecordFolder(path, track or NO_TRACK, date, name or "", target)


def _folders(path: Path, problems: list[str]) -> list[Path]:
    """The folders in `path`, sorted; none, and a problem, where it cannot be read."""
    try:
        return sorted(p for p in path.iterdir() if p.is_dir())
    except OSError as exc:
        problems.append(f"{path}: cannot read ({os_error_line(exc)})")
        return []


def find_records(root: Path, problems: list[str]) -> list[RecordFolder]:
    """Every record folder under ROOT, in both layouts, by track then date."""
    records = []

    def add(folder: Path, track: str | None, expected: str) -> None:
        if (record := parse_record_folder(folder, track)) is None:
            problems.append(f"{folder}: not a record folder (expected {expected}); skipped")
        else:
            records.append(record)

    for entry in _folders(root, problems):
        if _TRACK_DIR.match(entry.name):
            for child in _folders(entry, problems):
                add(child, entry.name, "<YYYY-MM-DD>_<Name>")
        else:
            add(entry, None, "<MMDDYY>_<Name> or track_<n>_<name>/")
    return sorted(records, key=lambda r: (r.track, r.date, r.name))


def log_folders(record: RecordFolder, problems: list[str]) -> dict[str, list[Path]]:
    """variant -> its log files: the record folder's own ("."), and each folder below it that holds logs."""
    found: dict[str, list[Path]] = {}

    def unreadable(exc: OSError) -> None:
        problems.append(f"{exc.filename or record.path}: cannot read ({exc.strerror or exc})")

    for folder, dirs, files in os.walk(record.path, onerror=unreadable):
        dirs.sort()
        logs = sorted(Path(folder) / f for f in files if f.endswith(LOG_SUFFIXES))
        if logs:
            found[Path(folder).relative_to(record.path).as_posix()] = logs
    if not found:
        problems.append(f"{record.path}: no logs (*.txt, *.log) in this record folder")
    return found


def variant_figures(record: RecordFolder, variant: str, files: list[Path], target: float, problems: list[str],
                    progress: tqdm) -> dict | None:
    """Every figure of one folder of logs (times in seconds), its flags, and each run's; None where it holds no
    speedrun log. Finished runs count, each log once; the others are left out with why."""
    logs, left_out, duplicates, no_code = [], [], [], []
    codes: dict[str, str] = {}  # code hash -> the code, first seen
    code_files: dict[str, list[str]] = {}  # code hash -> the files carrying it
    seen: dict[str, str] = {}
    for path in files:
        progress.update()
        try:
            log = load_run(path)
        except LogError as exc:  # not a speedrun log, or gone
            problems.append(str(exc))
            continue
        except OSError as exc:
            problems.append(f"{path}: cannot read ({os_error_line(exc)})")
            continue
        if log.identity in seen:
            duplicates.append(f"{path.name} is the same log as {seen[log.identity]}: counted once")
            continue
        seen[log.identity] = path.name
        if log.code_hash is None:
            no_code.append(path.name)
        else:
            codes.setdefault(log.code_hash, log.code)
            code_files.setdefault(log.code_hash, []).append(path.name)
        log.code = None  # the text is kept once per hash, above
        if log.status == "ok":
            logs.append(log)
        else:
            left_out.append({"file": path.name, "status": log.status, "final_step": log.final_step,
                             "planned_steps": log.total_steps})
    if not (logs or left_out or duplicates):
        return None
    rule = stats.loss_rule([log.final_val_loss for log in logs], target)
    hashes = list(code_files)
    first = hashes[0] if hashes else None
    code_diffs = [{"hash": h, "files": code_files[h], "vs_hash": first, "vs_file": code_files[first][0],
                   "lines": code_differences(codes[first], codes[h])} for h in hashes[1:]]
    planned = sorted({log.total_steps for log in logs if log.total_steps is not None})
    flags = []
    for d in code_diffs:
        names = ", ".join(d["files"][:3]) + (f" and {len(d['files']) - 3} more" if len(d["files"]) > 3 else "")
        shown = "; ".join(describe_difference(x) for x in d["lines"])
        flags.append(f"code differs: {d['vs_file']} ({first[:12]}) vs {names} ({d['hash'][:12]}): {shown}")
    if len(planned) > 1:
        flags.append(f"planned steps differ: {', '.join(map(str, planned))}")
    for out in left_out:
        what = "cut off" if out["status"] == "incomplete" else out["status"]
        flags.append(f"{out['file']}: {what} at step {out['final_step']} of {out['planned_steps']}, left out")
    flags += duplicates
    if no_code and hashes:
        flags.append(f"no code at the top of {', '.join(no_code)}")
    return finite_or_none({
        "track": record.track,
        "date": record.date,
        "record": record.name,
        "folder": record.path.name,
        "variant": variant,
        "target": target,
        "n": len(logs),
        "time_s": stats.describe([log.train_time_ms / 1000 for log in logs]).as_dict(),
        "final_val_loss": rule.losses.as_dict(),
        "p_loss_below_target": rule.p,
        "passes_loss_rule": rule.passes,  # None: n < 2, no test
        "planned_steps": planned,
        "final_steps": sorted({log.final_step for log in logs}),
        "code_hashes": hashes,
        "code_differences": code_diffs,
        "left_out": left_out,
        "flags": flags,
        "runs": [{"file": Path(log.source).name, "time_s": log.train_time_ms / 1000, "final_val_loss": log.final_val_loss,
                  "final_step": log.final_step, "planned_steps": log.total_steps, "code_hash": log.code_hash}
                 for log in logs],
    })


def history(root: str | os.PathLike, target: float | None = None) -> tuple[list[dict], list[str]]:
    """(every variant's figures, problems) for a records/ folder; --target's value overrides each track's."""
    problems: list[str] = []
    folders = [(record, log_folders(record, problems)) for record in find_records(Path(root), problems)]
    total = sum(len(files) for _, found in folders for files in found.values())
    variants = []
    with tqdm(total=total, unit="log", desc="history", disable=None, file=sys.stderr) as progress:
        for record, found in folders:
            for variant, files in found.items():
                figures = variant_figures(record, variant, files, record.target if target is None else target,
                                          problems, progress)
                if figures is not None:
                    variants.append(figures)
    return variants, problems


def table(rows: list[dict]) -> str:
    return markdown_table([{
        "date": r["date"],
        "record": r["record"] or r["folder"],
        "variant": r["variant"],
        "n": f"{r['n']}" + (f" (+{len(r['left_out'])} left out)" if r["left_out"] else ""),
        "time (s), mean ± std": mean_std(r["time_s"], ".4f"),
        "final val loss, mean ± std": mean_std(r["final_val_loss"], ".5f"),
        "p(loss < target)": fmt(r["p_loss_below_target"], ".4g"),
        f"loss rule (p < {stats.ALPHA})": stats.loss_rule_verdict(r["passes_loss_rule"]),
        "steps": ", ".join(map(str, r["planned_steps"])) or "—",
        "code": ", ".join(h[:12] for h in r["code_hashes"]) or "—",
        "flags": f"{len(r['flags'])}" if r["flags"] else "",
    } for r in rows])


def render_page(root: Path, rows: list[dict], problems: list[str], plot_name: str | None) -> str:
    lines = ["# The speedrun's history, recomputed", "",
             f"Rendered by `python -m harness.history` from `{root}`: every folder of logs in every record folder. "
             + TIME_NOTE, ""]
    if plot_name:
        lines += [f"![each variant's mean time against its record's date]({plot_name})", ""]
    by_track: dict[str, list[dict]] = {}
    for r in rows:
        by_track.setdefault(r["track"], []).append(r)
    for track, track_rows in by_track.items():
        targets = sorted({r["target"] for r in track_rows})
        lines += [f"## {track} (target val loss {', '.join(map(str, targets))})", "", table(track_rows), ""]
    flagged = [r for r in rows if r["flags"]]
    if flagged:
        lines += ["## Flags", ""]
        for r in flagged:
            lines.append(f"- {r['track']}/{r['folder']}/{r['variant']}:")
            lines += [f"  - {' '.join(flag.split())}" for flag in r["flags"]]
        lines.append("")
    if problems:
        lines += ["## Problems (left out)", ""] + [f"- {p}" for p in problems] + [""]
    if not rows:
        lines += ["No logs found.", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def render_plot(rows: list[dict], path: Path) -> bool:
    """Each variant's mean time (± std) against its record's date, one panel per track; False if nothing to plot."""
    by_track: dict[str, list[dict]] = {}
    for r in rows:
        if r["time_s"]["mean"] is not None:
            by_track.setdefault(r["track"], []).append(r)
    if not by_track:
        return False
    plt = pyplot()
    import matplotlib.dates as mdates

    with plt.style.context("default"):
        fig, axes = plt.subplots(len(by_track), 1, figsize=(10, 3.8 * len(by_track)), squeeze=False)
        for (track, track_rows), (ax,) in zip(by_track.items(), axes):
            for passes, style, label in ((True, dict(color="tab:blue"), "passes the loss rule"),
                                         (False, dict(color="tab:red", mfc="none"), "fails it, or n < 2")):
                shown = [r for r in track_rows if bool(r["passes_loss_rule"]) == passes]
                if shown:
                    ax.errorbar([dt.date.fromisoformat(r["date"]) for r in shown], [r["time_s"]["mean"] for r in shown],
                                yerr=[r["time_s"]["std"] or 0.0 for r in shown], fmt="o", ms=4, capsize=2, alpha=0.8,
                                label=label, **style)
            ax.legend(fontsize=8)
            ax.set(yscale="log", title=f"{track}: each variant's mean time (± std)", ylabel="time (s)")
            ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m"))
            ax.grid(alpha=0.3, which="both")
        fig.tight_layout()
        save_png(fig, path)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = doc_parser("history", __doc__)
    parser.add_argument("root", type=Path, metavar="ROOT", help="a modded-nanogpt checkout's records/ folder")
    parser.add_argument("--json", action="store_true", help="print every figure as JSON on stdout")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"where history.md and history.png go (default {DEFAULT_OUT})")
    parser.add_argument("--target", type=positive_finite_float, default=None, help="target val loss for every track "
                        f"(default: each track's, {TRACK_TARGETS}; {FINEWEB_TARGET} without track folders)")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"error: {args.root}: not a folder", file=sys.stderr)
        return 2
    rows, problems = history(args.root, args.target)
    for p in problems:
        print(f"history: {p}", file=sys.stderr)
    rc = 1 if problems else 0
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        plotted = render_plot(rows, args.out / PLOT_FILE)
        if not plotted:
            (args.out / PLOT_FILE).unlink(missing_ok=True)  # a plot of another tree's logs
        text = render_page(args.root, rows, problems, PLOT_FILE if plotted else None)
        page = write_atomic(args.out / PAGE_FILE, text.encode())
    except OSError as exc:
        print(f"error: history not written: {os_error_line(exc)}", file=sys.stderr)
        page, rc = None, 1
    if args.json:
        print(json.dumps({"root": str(args.root), "variants": rows, "problems": problems}, indent=1))
    elif page is not None:
        print(page)
    return rc


if __name__ == "__main__":
    run_cli(main)
