"""Ablations: run variants interleaved, or compare finished runs, with honest statistics.

Run mode: each variant is NAME=SPEC, SPEC being trainer overrides and optionally script=PATH; the
first variant (or --baseline) is the baseline. Seeds run interleaved (A0 B0 A1 B1 ...) so drift in
the machine hits every variant alike; each run is recorded in records/runs.jsonl under its name.

    python -m harness.compare --track cpu-tiny --seeds 4 --variant base= --variant lr="--lr=0.1"
    python -m harness.compare --baseline base= --variant fused="script=other_train.py --lr=0.1"

Logs mode: NAME=PATH, PATH a log file, a folder of logs or run directories, or comma-separated run
ids from the records log; the first is the baseline.

    python -m harness.compare --logs base=records/2025-01-01_a/runs new=run_id1,run_id2

One table per invocation: per variant n, time to target and final val loss (mean ± std, 95% CI),
steps, tokens/s, the one-sided p that the mean loss is below the target, and against the baseline
the speedup (ratio of geometric means, 95% Welch interval on log times) and Welch p-values for time
and loss (two-sided). Only runs that finished ok count; time to target only over runs that reached
it. --json prints the same figures as JSON (times in seconds). Plots of val loss against train time
and against step go to --plot-dir (default runs/compare-<UTC time>/).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from harness import stats
from harness.logs import DEFAULT_TARGET, LogError, RunLog, load_run, load_runs
from harness.records import RecordsError, find_runs, finite_or_none, os_error_line, row_run_dir
from harness.run import DEFAULT_SCRIPT, add_launch_arguments, check_overrides, run_one

_VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class CompareError(ValueError):
    """Bad compare input; one line naming the variant and the problem."""


@dataclass
class Variant:
    name: str
    overrides: list[str] = field(default_factory=list)
    script: Path | None = None
    source: str = ""  # logs mode: the PATH given
    logs: list[RunLog] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # runs left out, with why


def _split_named(text: str, option: str) -> tuple[str, str]:
    name, sep, rest = text.partition("=")
    if not sep or not _VARIANT_NAME.match(name):
        raise argparse.ArgumentTypeError(f"{option} {text!r}: expected NAME=..., "
                                         "NAME of letters, digits, '.', '_', '-'")
    return name, rest


def parse_variant(text: str) -> Variant:
    """'NAME=--lr=0.1 --steps=10 script=other.py' -> Variant (argparse type for --variant/--baseline)."""
    name, spec = _split_named(text, "--variant")
    variant = Variant(name)
    try:
        tokens = shlex.split(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--variant {name}: {exc}") from None
    for token in tokens:
        if token.startswith("script="):
            variant.script = Path(token.split("=", 1)[1])
            if not variant.script.is_file():
                raise argparse.ArgumentTypeError(f"--variant {name}: script {variant.script}: no such file")
        else:
            variant.overrides.append(token)
    problem = check_overrides(variant.overrides)
    if problem:
        raise argparse.ArgumentTypeError(f"--variant {name}: {problem}")
    return variant


def parse_logs_arg(text: str) -> Variant:
    name, path = _split_named(text, "--logs")
    if not path:
        raise argparse.ArgumentTypeError(f"--logs {text!r}: expected NAME=PATH")
    return Variant(name, source=path)


def load_variant_logs(variant: Variant, records_dir: Path) -> list[RunLog]:
    """A log file, a folder of logs or run directories, or comma-separated run ids -> logs."""
    path = Path(variant.source)
    try:
        if path.exists():
            return load_runs(path)
        if "/" in variant.source or variant.source.endswith(tuple(".txt .log .jsonl".split())):
            raise CompareError(f"--logs {variant.name}={variant.source}: no such file or folder")
        ids = [i for i in variant.source.split(",") if i]
        if not ids:
            raise CompareError(f"--logs {variant.name}={variant.source}: no run ids")
        return [load_run(row_run_dir(row)) for row in find_runs(ids, records_dir)]
    except (LogError, RecordsError) as exc:
        raise CompareError(f"--logs {variant.name}: {exc}") from None
    except OSError as exc:  # a log or folder that cannot be read
        raise CompareError(f"--logs {variant.name}: {os_error_line(exc)}") from None


def _keep_finished(variant: Variant, logs: list[RunLog]) -> None:
    for log in logs:
        if log.status == "ok":
            variant.logs.append(log)
        else:
            variant.skipped.append(f"{log.source} ({log.status})")


def resolve_target(variants: list[Variant], given: float | None) -> float:
    if given is not None:
        return given
    stated = sorted({log.target for v in variants for log in v.logs if log.target is not None})
    if len(stated) > 1:
        raise CompareError(f"the runs state different targets {stated}; choose one with --target")
    return stated[0] if stated else DEFAULT_TARGET


# ----------------------------------------------------------------------------------------------
# Figures


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000


def figures(variants: list[Variant], target: float) -> dict:
    """Every number of the comparison (times in seconds), baseline first."""
    base = variants[0]

    def times(v):
        return [_seconds(t) for t in (log.time_to_target(target) for log in v.logs) if t is not None]

    def losses(v):
        return [log.final_val_loss for log in v.logs]

    def mean_of(values):
        values = [x for x in values if x is not None]
        return sum(values) / len(values) if values else None

    out = {"target": target, "baseline": base.name, "variants": []}
    for v in variants:
        entry = {
            "name": v.name,
            "n": len(v.logs),
            "skipped": v.skipped,
            "reached_target": len(times(v)),
            "time_to_target_s": stats.describe(times(v)).as_dict(),
            "final_val_loss": stats.describe(losses(v)).as_dict(),
            "steps_mean": mean_of(log.final_step for log in v.logs),
            "tokens_per_s_mean": mean_of(log.tokens_per_s for log in v.logs),
            "p_loss_below_target": stats.p_mean_below(losses(v), target),
            "vs_baseline": None,
            "runs": [{"source": log.source, "time_to_target_s": _seconds(log.time_to_target(target)),
                      "final_val_loss": log.final_val_loss, "steps": log.final_step} for log in v.logs],
        }
        if v is not base:
            sp = stats.speedup(times(base), times(v)) if times(base) and times(v) else None
            entry["vs_baseline"] = {
                "speedup": sp.ratio if sp else None,
                "speedup_ci95": [sp.ci_low, sp.ci_high] if sp else [None, None],
                "p_time_welch": stats.welch(times(v), times(base)),
                "p_loss_welch": stats.welch(losses(v), losses(base)),
            }
        out["variants"].append(entry)
    return finite_or_none(out)


def _f(x, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def _summary_cell(s: dict, spec: str) -> str:
    if not s["n"]:
        return "—"
    return f"{_f(s['mean'], spec)} ± {_f(s['std'], spec)} [{_f(s['ci95'][0], spec)}, {_f(s['ci95'][1], spec)}]"


def table(fig: dict) -> str:
    rows = []
    for v in fig["variants"]:
        vs = v["vs_baseline"]
        rows.append({
            "variant": v["name"] + (" (baseline)" if vs is None else ""),
            "n": f"{v['n']}" + (f" (+{len(v['skipped'])} not ok)" if v["skipped"] else ""),
            "time to target (s), mean ± std [95% CI]": _summary_cell(v["time_to_target_s"], ".3f")
            + (f" ({v['reached_target']}/{v['n']} reached)" if v["reached_target"] != v["n"] else ""),
            "final val loss, mean ± std [95% CI]": _summary_cell(v["final_val_loss"], ".4f"),
            "steps": _f(v["steps_mean"], ".0f"),
            "tokens/s": _f(v["tokens_per_s_mean"], ",.0f"),
            f"p(loss < {fig['target']})": _f(v["p_loss_below_target"], ".2g"),
            "speedup [95% CI]": "1" if vs is None else
            f"{_f(vs['speedup'], '.3f')} [{_f(vs['speedup_ci95'][0], '.3f')}, {_f(vs['speedup_ci95'][1], '.3f')}]",
            "p time (Welch)": "" if vs is None else _f(vs["p_time_welch"], ".2g"),
            "p loss (Welch)": "" if vs is None else _f(vs["p_loss_welch"], ".2g"),
        })
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)


def plot(variants: list[Variant], target: float, plot_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness.leaderboard import zoom_to_target

    plot_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for fname, xlabel, xs in (("loss_vs_time.png", "train time (s)", lambda log: [t / 1000 for t in log.val_times_ms]),
                              ("loss_vs_step.png", "step", lambda log: log.val_steps)):
        fig, ax = plt.subplots(figsize=(8, 5))
        for i, v in enumerate(variants):
            for j, log in enumerate(v.logs):
                ax.plot(xs(log), log.val_losses, color=colors[i % len(colors)], alpha=0.7, lw=1,
                        label=v.name if j == 0 else None)
        ax.axhline(target, color="black", ls="--", lw=0.8, label=f"target {target}")
        zoom_to_target(ax, [x for v in variants for log in v.logs for x in log.val_losses], target)
        ax.set(xlabel=xlabel, ylabel="val loss", title=f"val loss against {xlabel.split(' (')[0]}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(plot_dir / fname, dpi=100, metadata={"Software": None})
        plt.close(fig)
        paths.append(plot_dir / fname)
    return paths


# ----------------------------------------------------------------------------------------------
# CLI


def _collect(args, variants: list[Variant]) -> None:
    """Fill each variant's logs: read them (logs mode) or run them interleaved, A0 B0 A1 B1 ... (run mode)."""
    if args.logs:
        for v in variants:
            _keep_finished(v, load_variant_logs(v, args.records))
        return
    for seed in range(args.seed_start, args.seed_start + args.seeds):
        for v in variants:
            row = run_one(track=args.track, seed=seed, name=v.name, script=v.script or args.script, nproc=args.nproc,
                          overrides=v.overrides, timeout=args.timeout, runs_dir=args.runs_dir, records_dir=args.records)
            try:
                _keep_finished(v, [load_run(row["run_dir"])])
            except LogError as exc:
                v.skipped.append(f"{row['run_id']} ({row['status']}: {exc})")
            except OSError as exc:
                v.skipped.append(f"{row['run_id']} ({row['status']}: {os_error_line(exc)})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.compare", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    add_launch_arguments(parser)
    parser.add_argument("--baseline", type=parse_variant, default=None, metavar="NAME=SPEC",
                        help="run mode: the baseline variant (default: the first --variant)")
    parser.add_argument("--variant", type=parse_variant, action="append", default=[], metavar="NAME=SPEC",
                        help="run mode: a variant, SPEC = trainer overrides and/or script=PATH")
    parser.add_argument("--script", type=Path, default=DEFAULT_SCRIPT, help="trainer for variants without script=")
    parser.add_argument("--logs", type=parse_logs_arg, nargs="+", action="extend", default=[], metavar="NAME=PATH",
                        help="logs mode: a log, a folder of logs or run dirs, or run ids a,b,c; "
                        "the first is the baseline")
    parser.add_argument("--target", type=float, default=None,
                        help=f"target val loss (default: the runs' own; {DEFAULT_TARGET} for logs that state none)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of the table")
    parser.add_argument("--plot-dir", type=Path, default=None, help="where the plots go (default runs/compare-<time>/)")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)

    variants = ([args.baseline] if args.baseline else []) + args.variant
    if variants and args.logs:
        parser.error("give either --variant/--baseline (run mode) or --logs (logs mode), not both")
    if not variants and not args.logs:
        parser.error("nothing to compare: give --variant NAME=SPEC (run mode) or --logs NAME=PATH (logs mode)")
    variants = variants or args.logs
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        parser.error(f"variant names must be unique, got {names}")
    if len(variants) < 2:
        parser.error("need at least two variants: a baseline and one to compare with it")
    for v in variants:
        if not args.logs and not (v.script or args.script).is_file():
            parser.error(f"--variant {v.name}: script {v.script or args.script}: no such file")

    # With --json, stdout carries only the JSON: the runs' progress and echo go to stderr.
    chatter = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    try:
        with chatter:
            _collect(args, variants)
        for v in variants:
            if not v.logs:
                raise CompareError(f"variant {v.name}: no finished runs to compare (left out: {'; '.join(v.skipped)})")
        target = resolve_target(variants, args.target)
    except CompareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the run was stopped and recorded as 'interrupted'", file=sys.stderr)
        return 130

    try:
        fig = figures(variants, target)
    except ValueError as exc:  # figures no statistic can be computed from (a time of 0 ms in a hand-made log)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for v in variants:
        for s in v.skipped:
            print(f"{v.name}: left out {s}", file=sys.stderr)
    if args.json:
        print(json.dumps(fig, indent=1))
    else:
        print(f"target val loss {target}; baseline {variants[0].name}")
        print(table(fig))
    rc = 0
    if not args.no_plot:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        plot_dir = args.plot_dir or args.runs_dir / f"compare-{stamp}"
        try:
            for path in plot(variants, target, plot_dir):
                print(f"plot: {path}", file=sys.stderr if args.json else sys.stdout)
        except OSError as exc:
            print(f"error: plots not written: {os_error_line(exc)}", file=sys.stderr)
            rc = 1
    if not args.logs and not args.no_leaderboard:
        from harness.run import render_leaderboard

        try:
            with chatter:
                render_leaderboard(args.records)
        except OSError as exc:
            print(f"error: leaderboard not written: {os_error_line(exc)}", file=sys.stderr)
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
