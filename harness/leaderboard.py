"""Render leaderboard.md (and records/leaderboard.png) from records/.

    python -m harness.leaderboard [--records records] [--out leaderboard.md]

Per track: the records fastest first, their history (each one's speedup over the one before), the last 10 runs,
and a plot of the records' times and of the first and current records' loss curves. The same records give the
same bytes, the PNG included.
"""
from __future__ import annotations

import errno
import math
import os
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

from harness.cli import doc_parser, markdown_table, os_error_line, run_cli
from harness.files import atomic_file, clean_stale_temps, write_atomic
from harness.logs import LogError, record_runs
from harness.records import RECORDS_DIR, list_records, load_records
from harness import stats
from harness.stats import ALPHA, fmt, mean_std
from harness.tracks import TRACKS

PLOT_FILE = "leaderboard.png"
RECENT_RUNS = 10
DPI = 100
# What a record's time is (records/README.md, "How a run counts"), stated once per page.
TIME_NOTE = ("A run's time is its train time at its final validation, whether or not that run ended below the "
             "target; every run of a record counts, and runs go their full schedule (the speedrun community's "
             "convention). The target is certified over the set: p is the one-sided t-test that the mean final "
             f"val loss is below the target, and a record needs p < {ALPHA}.")


def pyplot():
    """matplotlib.pyplot on the Agg backend (files, no display), imported where a plot is drawn: it takes a second."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path) -> None:
    """Write a figure as PNG, whole or not at all (harness.files.atomic_file), and close it. Fixed dpi and no
    software stamp: the same figure gives the same bytes."""
    try:
        with atomic_file(path) as f:
            fig.savefig(f, format="png", dpi=DPI, metadata={"Software": None})
    finally:
        pyplot().close(fig)


def runs_cell(record: dict) -> str:
    """A record's run count, with the runs that ended above the target and the runs excluded, with the reason."""
    s = record["stats"]
    below = s.get("final_at_or_below_target")
    notes = [] if below in (None, s["n"]) else [f"{below} ended at or below the target"]
    notes += [f"excluded {x.get('run_id')}: {x.get('reason')}" for x in record.get("excluded") or [] if isinstance(x, dict)]
    return f"{s['n']}" + (f" ({'; '.join(notes)})" if notes else "")


def records_table(records: list[dict], link_base: str) -> str:
    ranked = sorted(records, key=lambda r: (r["stats"]["train_time_ms"]["mean"], r["folder"]))
    return markdown_table([{
        "#": rank,
        "time (s)": mean_std(r["stats"]["train_time_ms"], ".2f", 1000),
        "val loss": mean_std(r["stats"]["final_val_loss"], ".4f"),
        "runs": runs_cell(r),
        "p (loss < target)": fmt(r["stats"].get("p_loss_below_target"), ".2g"),
        "date": r["date"],
        "name": r["name"],
        "description": r.get("description", ""),
        "folder": f"[{r['folder']}]({link_base}/{r['folder']}/)",
    } for rank, r in enumerate(ranked, 1)])


def history_table(records: list[dict]) -> str:
    rows = []
    for r in records:  # oldest first
        prev = r["stats"].get("previous")
        if prev:
            sp = prev["speedup"]
            low, high = (fmt(x, ".3f") for x in sp["ci95"])
            speedup = f"{fmt(sp['ratio'], '.3f')}x (95% CI {low}–{high}) over {prev['name']}"
        else:
            speedup = "first record (baseline)"
        rows.append({"date": r["date"], "name": r["name"],
                     "time (s)": fmt(r["stats"]["train_time_ms"]["mean"], ".2f", scale=1000),
                     "speedup over previous": speedup})
    return markdown_table(rows)


def _below(row: dict) -> str:
    loss, target = row.get("final_val_loss"), row.get("target_val_loss")
    return "—" if pd.isna(loss) or pd.isna(target) else "yes" if loss <= target else "no"


def _overrides(row: dict) -> str:
    """Every override a run was made with, and a flag on a CPU run under a GPU track (its figures are not the track's)."""
    overrides = row.get("overrides") if isinstance(row.get("overrides"), list) else []
    text = " ".join(map(str, overrides)) or "none"
    on_cpu = str(row.get("hardware") or "").startswith("CPU ")  # harness.logs.RunLog.hardware_label's CPU form
    if on_cpu and TRACKS.get(row.get("track"), {}).get("device") == "cuda":
        text = f"**CPU run on a GPU track** ({text})"
    return text


def recent_runs_table(runs: pd.DataFrame) -> str:
    """The last RECENT_RUNS rows, newest first. (`x in (True,)`: a flag read through pandas may be NaN for rows
    that lack it, and NaN is truthy.)"""
    runs = runs.sort_values(["timestamp", "run_id"]).tail(RECENT_RUNS).iloc[::-1]
    return markdown_table([{
        "finished (UTC)": r.get("timestamp"),
        "run id": r["run_id"],
        "name": fmt(r.get("name")),
        "status": fmt(r.get("status")),
        "final val loss": fmt(r.get("final_val_loss"), ".4f"),
        "time (s)": fmt(r.get("train_time_ms"), ".2f", scale=1000),
        "final ≤ target": _below(r),
        "steps": fmt(r.get("steps"), ".0f") + (" (stopped at the target)" if r.get("stop_at_target") in (True,) else ""),
        "hardware": fmt(r.get("hardware")),
        "overrides": _overrides(r),
    } for r in runs.to_dict("records")])


LOG_SCALE_SPAN = 2.0  # a loss axis whose top is above this many times its bottom is drawn on a log scale


def loss_axis(ax, losses: list[float], target: float | None) -> None:
    """The val-loss axis over every finite loss and the target, with a 2% margin; on a log scale where they span
    more than LOG_SCALE_SPAN x (a first step's ~11 against 3.28), so the approach to the target keeps its room."""
    shown = [x for x in losses if math.isfinite(x)] + ([target] if target is not None else [])
    if not shown:
        return
    low, high = min(shown), max(shown)
    if low > 0 and high > LOG_SCALE_SPAN * low:
        from matplotlib.ticker import FuncFormatter

        ax.set(yscale="log", ylim=(low / 1.02, high * 1.02))
        plain = FuncFormatter(lambda y, _: f"{y:g}")  # 3, 4, 5 ... 10 rather than 4 x 10^0
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        return
    margin = 0.02 * (high - low) or 0.02 * abs(high) or 0.02
    ax.set_ylim(low - margin, high + margin)


def draw(records_dir: Path, by_track: dict[str, list[dict]]):
    """The leaderboard's figure: per track, the records' times and the first and current records' loss curves."""
    plt = pyplot()
    with plt.style.context("default"):
        fig, axes = plt.subplots(len(by_track), 2, figsize=(11, 3.8 * len(by_track)), squeeze=False)
        for (track, records), (ax_time, ax_loss) in zip(by_track.items(), axes):
            # One tick per record in the order they were set (several may share a date), its runs' times described.
            points = [stats.describe([run["train_time_ms"] / 1000 for run in r["runs"]
                                      if run.get("train_time_ms") is not None]) for r in records]
            times = [s.mean if s.n else r["stats"]["train_time_ms"]["mean"] / 1000 for r, s in zip(records, points)]
            lower = [t - s.ci_low if s.ci_low == s.ci_low else 0 for t, s in zip(times, points)]
            upper = [s.ci_high - t if s.ci_high == s.ci_high else 0 for t, s in zip(times, points)]
            ax_time.step(range(len(records)), times, where="post", color="tab:blue")
            ax_time.errorbar(range(len(records)), times, yerr=[lower, upper], fmt="o", color="tab:blue", capsize=4,
                             label="mean, 95% CI")
            ax_time.set_xticks(range(len(records)), [f"{r['date']}\n{r['name']}" for r in records], fontsize=8)
            ax_time.set(xlim=(-0.5, len(records) - 0.5), ylim=(0, 1.1 * max(t + u for t, u in zip(times, upper))),
                        title=f"{track}: record time", ylabel="mean run time (s)")
            ax_time.grid(alpha=0.3)
            ax_time.legend(fontsize=8)
            shown = [records[0]] if len(records) == 1 else [records[0], records[-1]]
            losses = []
            for record, color, label in zip(shown, ("tab:gray", "tab:red"), ("baseline", "current record")):
                try:
                    logs = record_runs(records_dir / record["folder"])
                except LogError as exc:
                    print(f"leaderboard: {exc}", file=sys.stderr)
                    logs = []
                for i, log in enumerate(logs):
                    ax_loss.plot([t / 1000 for t in log.val_times_ms], log.val_losses, color=color, alpha=0.7, lw=1,
                                 label=f"{label}: {record['name']}" if i == 0 else None)
                    losses += log.val_losses
            target = records[-1]["stats"].get("target_val_loss")
            if target is not None:
                ax_loss.axhline(target, color="black", ls="--", lw=0.8, label=f"target {target}")
            loss_axis(ax_loss, losses, target)
            ax_loss.set(title=f"{track}: val loss", xlabel="train time (s)", ylabel="val loss")
            ax_loss.grid(alpha=0.3)
            ax_loss.legend(fontsize=8)
        fig.tight_layout()
    return fig


def render(records_dir: str | os.PathLike = RECORDS_DIR, out: str | os.PathLike | None = None) -> Path:
    """Write the leaderboard page (and its plot when there are records); return the page's path."""
    records_dir = Path(records_dir).resolve()
    out = Path(out) if out is not None else records_dir.parent / "leaderboard.md"  # the repository root's, by default
    for folder in {records_dir, out.resolve().parent}:  # what a killed render left behind
        clean_stale_temps(folder)
    records, problems = list_records(records_dir)
    runs, run_problems = load_records(records_dir)
    for p in problems + run_problems:
        print(f"leaderboard: {p}", file=sys.stderr)
    link_base = Path(os.path.relpath(records_dir, out.resolve().parent)).as_posix()
    by_track: dict[str, list[dict]] = {}
    for r in records:
        by_track.setdefault(r["track"], []).append(r)
    tracks = sorted(set(by_track) | set(runs["track"].dropna()))

    lines = ["# Leaderboard", "",
             "Rendered by `python -m harness.leaderboard` from `records/`; do not edit by hand. "
             f"The record rule is in [records/README.md]({link_base}/README.md).", ""]
    if not tracks:
        lines += ["No records yet, and no runs in the runs log.", "",
                  "Train with `python -m harness.run --track cpu-tiny --seeds 4`, then submit with "
                  "`python -m harness.submit --name NAME --description TEXT RUN_ID...`.", ""]
    plot_path = records_dir / PLOT_FILE
    if by_track:
        save_png(draw(records_dir, by_track), plot_path)
        lines += [f"![record times and loss curves]({link_base}/{PLOT_FILE})", "", TIME_NOTE, ""]
    elif plot_path.exists():
        plot_path.unlink()  # a plot of records that are gone
    for track in tracks:
        track_records = by_track.get(track, [])
        target = track_records[-1]["stats"].get("target_val_loss") if track_records else None
        lines += [f"## {track}" + (f" (target val loss {target})" if target is not None else ""), ""]
        if track_records:
            lines += ["### Records, fastest first", "",
                      records_table(track_records, link_base), "", "### History", "", history_table(track_records), ""]
        else:
            lines += ["No accepted record yet.", ""]
        track_runs = runs[runs["track"] == track]
        if len(track_runs):
            lines += [f"### Recent runs (last {RECENT_RUNS})", "", recent_runs_table(track_runs), ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, "\n".join(lines).rstrip("\n").encode() + b"\n")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = doc_parser("leaderboard", __doc__, with_rest=False)
    parser.add_argument("--records", type=Path, default=RECORDS_DIR, help="records directory (default records/)")
    parser.add_argument("--out", type=Path, default=None, help="page to write (default: leaderboard.md next to records/)")
    args = parser.parse_args(argv)
    if not args.records.is_dir():
        parser.error(f"--records {args.records}: no such directory")
    if args.out is not None and os.path.islink(args.out) and not os.path.exists(args.out):
        try:
            os.stat(args.out)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a dangling link is replaced by the page, as a missing page is made
                parser.error(f"--out {args.out}: {exc.strerror}")
    try:
        print(render(args.records, args.out))
    except OSError as exc:
        print(f"leaderboard: not written: {os_error_line(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_cli(main)
