"""Ablations: run variants interleaved, or compare finished runs, with the speedrun community's statistics.

Runs count as records/README.md states ("How a run counts"); the loss rule (harness.stats.loss_rule)
certifies the target over a set.

Run mode: each variant is NAME=SPEC, SPEC being trainer overrides and optionally script=PATH; the first
variant (or --baseline) is the baseline. Every variant's and seed's config is resolved (`--print_config`)
before the first run, and the first the trainer refuses stops everything. Seeds run interleaved
(A0 B0 A1 B1 ...) so drift in the machine hits every variant alike; each run is recorded in
records/runs.jsonl under its variant's name.

    python -m harness.compare --track cpu-tiny --seeds 4 --variant base= --variant lr="--muon_lr=0.04"
    python -m harness.compare --baseline base= --variant fused="script=other_train.py --muon_lr=0.04"

Logs mode: NAME=PATH, PATH a log file, a folder of logs or run directories, or comma-separated run
ids from the records log; the first is the baseline. One variant alone prints that set's figures.

    python -m harness.compare --logs base=records/2025-01-01_a/runs new=run_id1,run_id2
    python -m harness.compare --logs pr=logs/this_pr/

Within a variant, runs of different planned steps, target, code or config are refused, naming the two
files, and so are two logs of one run (harness.logs.log_identity). The tables end in one line per variant,
`verdict:`, `inconclusive:` or `not comparable:`: a speedup whose 95% interval excludes 1, only where the
variant and the baseline pass the loss rule; a time spread above NOISY_SPREAD of the mean is named as
noise. One variant alone is judged on the loss rule.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shlex
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from harness.cli import (doc_parser, error_line, markdown_table, os_error_line, positive_finite_float,
                         run_cli)
from harness import stats
from harness.stats import fmt
from harness.leaderboard import loss_axis, pyplot, save_png
from harness.logs import LogError, RunLog, code_differences, config_diff, describe_difference, load_run, load_runs
from harness.records import RecordsError, find_runs, name_problem, row_run_dir
from harness.runlog import finite_or_none
from harness.tracks import FINEWEB_TARGET, default_target, track_target
from harness.run import (DEFAULT_SCRIPT, DEFAULT_TRACK, add_launch_arguments, check_overrides, destination_problem,
                         first_config_problem, interrupted_exit, raise_on_stop_signals, refuse, render_leaderboard,
                         restore_handlers, run_one)

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
    skipped_status: list[str] = field(default_factory=list)  # their statuses: diverged, incomplete, crashed, ...
    notes: list[str] = field(default_factory=list)  # what to know about the input (a log also in another variant)
    code_differences: list[str] = field(default_factory=list)  # --allow-code-diff: runs pooled across code, and how


def _split_named(text: str, option: str) -> tuple[str, str]:
    """NAME=REST, NAME a variant's name by the rule of every name in runs/ and records/ (records.name_problem)."""
    name, sep, rest = text.partition("=")
    problem = name_problem("NAME", name) if sep else "expected NAME=..."
    if problem:
        raise argparse.ArgumentTypeError(f"{option} {text!r}: {problem}")
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
        if token.startswith("script="):  # checked with --script's in main
            variant.script = Path(token.split("=", 1)[1])
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
    is_path = os.path.lexists(path)  # a link loop is a path; a long list of run ids (too long a name) is not
    try:
        if is_path:
            return load_runs(path)
        if "/" in variant.source or variant.source.endswith((".txt", ".log", ".jsonl")):
            raise CompareError(f"--logs {variant.name}={variant.source}: no such file or folder")
        ids = [i for i in variant.source.split(",") if i]
        if not ids:
            raise CompareError(f"--logs {variant.name}={variant.source}: no run ids")
        return [load_run(row_run_dir(row)) for row in find_runs(ids, records_dir)]
    except (LogError, RecordsError) as exc:
        raise CompareError(f"--logs {variant.name}: {exc}") from None
    except OSError as exc:  # a log or folder that cannot be read
        raise CompareError(f"--logs {variant.name}: {os_error_line(exc)}") from None


def code_difference(first: RunLog, log: RunLog) -> str | None:
    """'code <hash> vs <hash>: line 11 'x' vs line 11 'y'; ...' (the first few differing lines, where both logs carry
    their code), or None when the two runs have the same code or one states none."""
    if not (first.code_hash and log.code_hash and first.code_hash != log.code_hash):
        return None
    text = f"code {first.code_hash[:12]} vs {log.code_hash[:12]}"
    if first.code is not None and log.code is not None:
        text += ": " + "; ".join(describe_difference(d) for d in code_differences(first.code, log.code))
    return text


def _identity_problem(first: RunLog, log: RunLog, allow_code_diff: bool = False) -> str | None:
    """Why two logs of one variant may not be pooled (code only without allow_code_diff), or None."""
    if first.total_steps != log.total_steps:
        return f"planned steps {first.total_steps} vs {log.total_steps}"
    if first.target is not None and log.target is not None and first.target != log.target:
        return f"target val loss {first.target} vs {log.target}"
    if not allow_code_diff and (diff := code_difference(first, log)):
        return diff
    if first.stopped_early != log.stopped_early:  # a first-crossing time would pool with final ones
        return f"{'one stopped at the target, one ran' if first.stopped_early else 'one ran, one stopped at the target'} " \
               "its whole schedule"
    if first.config is not None and log.config is not None and (diff := config_diff(first.config, log.config)):
        return f"config {diff}"
    return None


def admit(variant: Variant, logs: list[RunLog], allow_code_diff: bool = False) -> None:
    """Add one variant's runs: one that did not finish ok is left out (noted); two logs of one run and runs
    that differ (_identity_problem) are refused; with allow_code_diff, each code difference is kept."""
    seen = {i: log.source for log in variant.logs for i in log.identities}
    for log in logs:
        if same := next((seen[i] for i in log.identities if i in seen), None):
            raise CompareError(f"variant {variant.name}: {same} and {log.source} are the same run "
                               "(the same step lines or validations); give each run once")
        seen.update(dict.fromkeys(log.identities, log.source))
        if log.status != "ok":
            variant.skipped.append(f"{log.source} ({log.status})")
            variant.skipped_status.append(log.status)
            continue
        if variant.logs:
            problem = _identity_problem(variant.logs[0], log, allow_code_diff)
            if not problem and allow_code_diff and (diff := code_difference(variant.logs[0], log)):
                variant.code_differences.append(f"{variant.logs[0].source} and {log.source}: {diff}")
            if problem:
                hint = " (or pool them with --allow-code-diff)" if problem.startswith("code ") else ""
                raise CompareError(f"variant {variant.name}: {variant.logs[0].source} and {log.source} differ "
                                   f"({problem}); compare them as two variants{hint}")
        variant.logs.append(log)


def unknown_track_problem(track: str | None, given: float | None) -> str | None:
    """Why --track gives no target where --target is not given (a track harness/tracks.py does not know), or None."""
    if given is None and track and track_target(track) is None:
        return (f"--track {track}: not one of the tracks in harness/tracks.py, so it has no default target; "
                "give --target")
    return None


def resolve_target(variants: list[Variant], given: float | None, track: str | None) -> tuple[float, str]:
    """(target, where it came from): --target; else the one the logs state, logs that state none taking the
    track's default (--track), or the FineWeb speedrun's 3.28."""
    if given is not None:
        return given, "--target"
    stated = sorted({log.target for v in variants for log in v.logs if log.target is not None})
    silent = [log for v in variants for log in v.logs if log.target is None]
    if problem := unknown_track_problem(track, given):
        raise CompareError(problem)
    default, default_source = default_target(track), f"track {track}'s default" if track else "the FineWeb speedrun's"
    candidates = sorted(set(stated) | ({default} if silent else set()))
    if len(candidates) > 1:
        why = f"the runs state targets {stated}" + (f" and {len(silent)} state none (default {default})" if silent else "")
        raise CompareError(f"{why}; choose one with --target")
    if not silent:
        return stated[0], "stated by the runs"
    if stated:
        n_stated = sum(len(v.logs) for v in variants) - len(silent)
        return default, f"stated by {n_stated} run(s); {default_source} for the {len(silent)} that state none"
    return default, f"{default_source}: the logs state none"


# ----------------------------------------------------------------------------------------------
# Figures


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000


def _times(v: Variant) -> list[float]:
    return [log.train_time_ms / 1000 for log in v.logs]


def _losses(v: Variant) -> list[float]:
    return [log.final_val_loss for log in v.logs]


def _mean_or_none(values) -> float | None:
    values = [x for x in values if x is not None]
    return sum(values) / len(values) if values else None


def figures(variants: list[Variant], target: float, target_source: str = "") -> dict:
    """Every number of the comparison (times in seconds), baseline first."""
    base = variants[0]
    out = {"target": target, "target_source": target_source, "baseline": base.name,
           "time": "train time at each run's final validation; every finished run counts", "variants": []}
    for v in variants:
        times, losses = _times(v), _losses(v)
        crossings = [_seconds(log.time_to_target(target)) for log in v.logs]
        time_s, rule = stats.describe(times), stats.loss_rule(losses, target)
        entry = {
            "name": v.name,
            "n": len(v.logs),
            "skipped": v.skipped,
            "skipped_status": dict(Counter(v.skipped_status)),
            "notes": v.notes,
            "pooled_across_code": bool(v.code_differences),  # --allow-code-diff pooled runs of different code
            "code_differences": v.code_differences,
            "time_s": time_s.as_dict(),
            "final_val_loss": rule.losses.as_dict(),
            "p_loss_below_target": rule.p,
            "passes_loss_rule": rule.passes,  # None: n < 2, no test
            "runs_needed_loss_rule": rule.runs_needed,
            "final_at_or_below_target": sum(x <= target for x in losses),
            "first_crossing_s": {**stats.describe([c for c in crossings if c is not None]).as_dict(),
                                 "reached": sum(c is not None for c in crossings)},
            "steps": sorted({log.total_steps for log in v.logs if log.total_steps is not None}),
            "stopped_early": sum(log.stopped_early for log in v.logs),
            "tokens_per_s_mean": _mean_or_none(log.tokens_per_s for log in v.logs),
            "vs_baseline": None,
            "runs": [{"source": log.source, "time_s": _seconds(log.train_time_ms), "first_crossing_s": crossing,
                      "final_val_loss": log.final_val_loss, "final_step": log.final_step,
                      "planned_steps": log.total_steps, "stopped_early": log.stopped_early}
                     for log, crossing in zip(v.logs, crossings)],
        }
        if v is not base:
            base_times, base_time = _times(base), stats.describe(_times(base))
            sp, diff = stats.speedup(base_times, times), stats.mean_difference(base_times, times)
            entry["vs_baseline"] = {
                "speedup": sp.ratio,
                "speedup_ci95": [sp.ci_low, sp.ci_high],
                "time_diff_s": diff.diff,
                "time_diff_ci95": [diff.ci_low, diff.ci_high],
                "p_time_faster": sp.p_faster,
                "p_time_two_sided": stats.welch(times, base_times),
                "p_loss_two_sided": stats.welch(losses, _losses(base)),
                "runs_needed_per_variant": stats.runs_needed_difference(base_time.mean, base_time.std,
                                                                        time_s.mean, time_s.std),
            }
        out["variants"].append(entry)
    return finite_or_none(out)


def _ci(value, ci95, spec: str) -> str:
    """'value [low, high]', each formatted with spec (stats.fmt)."""
    return f"{fmt(value, spec)} [{fmt(ci95[0], spec)}, {fmt(ci95[1], spec)}]"


def _summary_cell(s: dict, spec: str) -> str:
    return f"{fmt(s['mean'], spec)} ± {_ci(s['std'], s['ci95'], spec)}" if s["n"] else "—"


def table(fig: dict) -> str:
    """One row per variant: its own figures."""
    rows = []
    for v in fig["variants"]:
        crossing = v["first_crossing_s"]
        notes = [f"+{k} {status}, left out" for status, k in v["skipped_status"].items()]
        notes += [f"{v['stopped_early']} stopped at the target"] if v["stopped_early"] else []
        notes += ["pooled across different code, --allow-code-diff"] if v.get("pooled_across_code") else []
        rows.append({
            "variant": v["name"] + (" (baseline)" if v["name"] == fig["baseline"] and len(fig["variants"]) > 1 else ""),
            "n": f"{v['n']}" + (f" ({'; '.join(notes)})" if notes else ""),
            "time (s), mean ± std [95% CI]": _summary_cell(v["time_s"], ".4f"),
            "final val loss, mean ± std [95% CI]": _summary_cell(v["final_val_loss"], ".5f"),
            f"p(loss < {fig['target']})": fmt(v["p_loss_below_target"], ".4g"),
            f"loss rule (p < {stats.ALPHA})": stats.loss_rule_verdict(v["passes_loss_rule"]),
            f"runs the loss rule needs at this mean and std ({stats.POWER:.0%} power)": fmt(v["runs_needed_loss_rule"], "d"),
            "steps": ", ".join(map(str, v["steps"])) or "—",
            "extra: first val ≤ target (s), mean": f"{fmt(crossing['mean'], '.3f')} ({crossing['reached']}/{v['n']} runs)",
        })
    return markdown_table(rows)


def comparison_table(fig: dict) -> str | None:
    """One row per variant against the baseline; None when there is only one variant."""
    rows = []
    for v in fig["variants"][1:]:  # the baseline's vs_baseline is None
        vs, why = v["vs_baseline"], _not_a_result(fig, v)
        rows.append({
            "variant": v["name"],
            "speedup (ratio of mean times) [95% CI]": _ci(vs["speedup"], vs["speedup_ci95"], ".4f")
            + (f" (not a result: {why})" if why else ""),
            "Δ time, variant − baseline (s) [95% CI]": _ci(vs["time_diff_s"], vs["time_diff_ci95"], "+.3f"),
            "p faster (Welch, one-sided)": fmt(vs["p_time_faster"], ".2g"),
            "p time (Welch, two-sided)": fmt(vs["p_time_two_sided"], ".2g"),
            "p loss (Welch, two-sided)": fmt(vs["p_loss_two_sided"], ".2g"),
            f"runs per variant for the speedup's CI to exclude 1 ({stats.POWER:.0%} power)": fmt(vs["runs_needed_per_variant"], "d"),
        })
    return markdown_table(rows) if rows else None


def _scored(v: Variant, target: float, scoring: str) -> tuple[list[float], list[bool]]:
    """(times, missed) of a variant's runs under a scoring rule. Olympic scoring (MLPerf's) counts every launched
    run: a run left out (diverged, crashed, cut off) is a miss, scored as the slowest, so it is never silently
    dropped; the other rules score the finished runs, as the community's mean does."""
    times, missed = _times(v), [log.final_val_loss > target for log in v.logs]
    if scoring == "olympic" and v.skipped and times:
        times, missed = times + [max(times)] * len(v.skipped), missed + [True] * len(v.skipped)
    return times, missed


def score_figures(variants: list[Variant], target: float, scoring: str) -> dict:
    """Each variant's time under a scoring rule (stats.score) and, against the baseline, stats.compare_scores."""
    base = variants[0]
    out = {"scoring": scoring, "variants": []}
    for v in variants:
        entry = {"name": v.name, "score": stats.score(scoring, *_scored(v, target, scoring)).as_dict(),
                 "vs_baseline": None}
        if v is not base:
            (bt, bm), (vt, vm) = _scored(base, target, scoring), _scored(v, target, scoring)
            entry["vs_baseline"] = stats.compare_scores(scoring, bt, vt, bm, vm).as_dict()
        out["variants"].append(entry)
    return finite_or_none(out)


def score_table(fig: dict) -> str:
    """One row per variant: its score under the rule, with the test against the baseline."""
    rule, rows = fig["scoring"], []
    for v in fig["variants"]:
        s, vs = v["score"], v["vs_baseline"] or {}
        rows.append({
            "variant": v["name"],
            f"time (s), {rule} [95% CI]": f"fails: {s['fails']}" if s["fails"] else _ci(s["score"], s["ci95"], ".4f"),
            "runs scored / used / missed the target": f"{s['n']} / {s['used']} / {s['misses']}",
            "ratio baseline / variant": fmt(vs.get("ratio"), ".4f"),
            "Δ, variant − baseline (s) [95% CI]": _ci(vs["diff"], vs["diff_ci95"], "+.3f") if vs else "—",
            "p faster (one-sided)": fmt(vs.get("p_faster"), ".2g"),
            "p (two-sided)": fmt(vs.get("p_two_sided"), ".2g"),
            "test": vs.get("test", "—"),
        })
    return markdown_table(rows)


def _mean_steps(v: Variant) -> float:
    return sum(log.final_step for log in v.logs) / len(v.logs)


def earliest_passing_step(v: Variant, target: float, sigma: float = stats.STEPS_SIGMA) -> int | None:
    """The earliest validation step, common to every run, at which the set's mean loss passes the track's margin
    (the stopping point chosen the same across all runs, as the track allows), None if none does."""
    curves = [dict(zip(log.val_steps, log.val_losses)) for log in v.logs]
    common = sorted(set.intersection(*(set(c) for c in curves)))
    threshold = stats.steps_margin(sigma)
    return next((s for s in common if stats.below_margin([c[s] for c in curves], target) >= threshold), None)


def steps_figures(variants: list[Variant], target: float, sigma: float, rate: float) -> dict:
    """The steps rule of modded-nanogpt's optimization track (its records/track_3_optimization/README.md), per
    variant and against the baseline: the conditions steps_table's headings write out, with `sigma` and `rate`."""
    base, threshold = variants[0], stats.steps_margin(sigma)
    out = {"rule": "steps", "target": target, "sigma": sigma, "margin": threshold,
           "rate_per_100_steps": rate, "variants": []}
    for v in variants:
        reached = [next((s for s, loss in zip(log.val_steps, log.val_losses) if loss <= target), None)
                   for log in v.logs]  # each run's first step at or below the target
        losses = _losses(v)
        margin = stats.below_margin(losses, target)
        entry = {"name": v.name, "n": len(v.logs),
                 "first_step_at_or_below_target": stats.describe([s for s in reached if s is not None]).as_dict(),
                 "reached": sum(s is not None for s in reached),
                 "steps": _mean_steps(v),
                 "mean_final_val_loss": _mean_or_none(losses),
                 "p_z_loss_below_target": stats.z_below(losses, target, sigma),
                 "below_margin": margin,
                 "valid": bool(margin >= threshold),
                 "earliest_valid_step": earliest_passing_step(v, target, sigma),
                 "runs": [{"source": log.source, "first_step_at_or_below_target": s, "final_step": log.final_step,
                           "final_val_loss": log.final_val_loss} for log, s in zip(v.logs, reached)],
                 "vs_baseline": None}
        if v is not base:
            pair = stats.pairwise_margin(_losses(base), _mean_steps(base), losses, _mean_steps(v), rate)
            entry["vs_baseline"] = {"steps_saved": _mean_steps(base) - _mean_steps(v),
                                    "loss_diff": _mean_or_none(_losses(base)) - _mean_or_none(losses),
                                    "pairwise_margin": pair, "better": bool(pair >= threshold)}
        out["variants"].append(entry)
    return finite_or_none(out)


def steps_table(fig: dict) -> str:
    """One row per variant: steps, the validity verdict and the pairwise verdict against the baseline."""
    rows, margin = [], fig["margin"]
    for v in fig["variants"]:
        s, vs = v["first_step_at_or_below_target"], v["vs_baseline"]
        rows.append({
            "variant": v["name"],
            "steps": fmt(v["steps"], "g"),
            "first step ≤ target, mean [95% CI]": f"{_ci(s['mean'], s['ci95'], '.1f')} ({v['reached']}/{v['n']} runs)"
                                                 if s["n"] else f"— (0/{v['n']} runs)",
            "mean final val loss": fmt(v["mean_final_val_loss"], ".5f"),
            f"z-test p (σ = {fig['sigma']})": fmt(v["p_z_loss_below_target"], ".3g"),
            f"(target − mean)·√n ≥ {margin}": f"{fmt(v['below_margin'], '.5f')}: {'valid' if v['valid'] else 'not valid'}",
            "earliest valid step": fmt(v["earliest_valid_step"], "d"),
            f"pairwise: (Δloss + {fig['rate_per_100_steps']}·Δsteps/100)/√(1/n1+1/n2) ≥ {margin}":
                f"{fmt(vs['pairwise_margin'], '.5f')}: {'better' if vs['better'] else 'not shown better'}" if vs else "—",
        })
    return markdown_table(rows)


NOISY_SPREAD = 0.03  # a variant whose time std is above this fraction of its mean time is named as noise


def _p(p: float | None) -> str:
    """A p-value as a verdict prints it: two significant digits, '2e-5' rather than '2e-05'."""
    return re.sub(r"e([+-])0*(\d)", r"e\1\2", fmt(p, ".2g")).replace("e+", "e")


def _pct(x: float | None, spec: str = ".2f") -> str:
    return fmt(x, spec, scale=0.01) + "%"


def _not_a_result(fig: dict, v: dict) -> str | None:
    """Why a variant's speedup over the baseline is not a result: it, or the baseline, fails the loss rule, or
    gets no score under the --scoring rule asked for."""
    base = fig["variants"][0]
    for who, entry in ((v["name"], v), (f"the baseline {base['name']}", base)):
        if entry["passes_loss_rule"] is False:
            return f"{who} fails the loss rule (p = {_p(entry['p_loss_below_target'])})"
        if (why := _score_failure(fig, entry["name"])) is not None:
            return f"{who} {why}"
    return None


def _score_failure(fig: dict, name: str) -> str | None:
    """'gets no <rule> score (<why>)' where --scoring gave the variant none, else None."""
    scored = {e["name"]: e["score"] for e in (fig.get("scoring") or {}).get("variants", [])}
    score = scored.get(name)
    return f"gets no {score['rule']} score ({score['fails']})" if score and score["fails"] else None


def _steps_verdicts(fig: dict) -> list[dict]:
    """With --rule steps, one more line per variant: the optimization track's judgement on steps."""
    rule, out = fig.get("steps_rule"), []
    if not rule:
        return out
    threshold = rule["margin"]
    for v in rule["variants"]:
        valid = (f"valid ((target - mean loss) x sqrt(n) = {v['below_margin']:.4g} >= {threshold:.4g})" if v["valid"]
                 else f"not valid ((target - mean loss) x sqrt(n) = {fmt(v['below_margin'], '.4g')} < {threshold:.4g})")
        vs = v["vs_baseline"]
        if not v["valid"]:
            kind, words = "not comparable", f"{v['name']} is {valid} on the steps rule; its steps are not a result"
        elif vs is None:
            kind, words = "verdict", f"{v['name']} is {valid} on the steps rule at {fmt(v['steps'], '.0f')} steps"
        else:
            better = "better than" if vs["better"] else "not shown better than"
            kind = "verdict" if vs["better"] else "inconclusive"
            words = (f"{v['name']} is {valid} and {better} {rule['variants'][0]['name']} on the steps rule "
                     f"(pairwise {fmt(vs['pairwise_margin'], '.4g')} vs {threshold:.4g}, "
                     f"{fmt(vs['steps_saved'], '+.0f')} steps saved)")
        out.append({"variant": v["name"], "kind": kind, "line": f"{kind} (steps rule): {words}"})
    return out


def _loss_rule_clause(v: dict, target: float) -> tuple[str, str]:
    """(kind, words) for one variant's loss rule: kind 'verdict' or 'inconclusive'."""
    if v["passes_loss_rule"] is None:
        return "inconclusive", f"{v['name']} has {v['n']} run; the loss rule needs at least 2"
    p = _p(v["p_loss_below_target"])
    if v["passes_loss_rule"]:
        return "verdict", f"{v['name']} passes the loss rule (p = {p}, {v['n']} runs)"
    needed = v["runs_needed_loss_rule"]
    if needed is None:  # the mean is not below the target: more runs do not help
        return "verdict", (f"{v['name']} fails the loss rule (p = {p}): its mean val loss "
                           f"{fmt(v['final_val_loss']['mean'], '.5f')} is not below the target {target}")
    return "inconclusive", (f"{v['name']} fails the loss rule (p = {p}, {v['n']} runs); about {needed} runs "
                            "would pass it at this mean and std")


def _noise(fig: dict, v: dict) -> str:
    """'; base's and idea's times spread ... (noise)' for the variants whose time std is above NOISY_SPREAD."""
    noisy = []
    for entry in ([fig["variants"][0]] if v is not fig["variants"][0] else []) + [v]:
        t = entry["time_s"]
        if t["std"] is not None and t["mean"] and t["std"] > NOISY_SPREAD * t["mean"]:
            noisy.append(f"{entry['name']}'s times spread {_pct(t['std'] / t['mean'])} of their mean")
    return f"; noise: {', '.join(noisy)} (above {NOISY_SPREAD:.0%})" if noisy else ""


def verdicts(fig: dict) -> list[dict]:
    """One {"variant", "kind", "line"} per variant, as the module docstring states (a speedup at a worse loss is
    not a result)."""
    variants = fig["variants"]
    out = []

    def add(v, kind, words):
        out.append({"variant": v["name"], "kind": kind, "line": f"{kind}: {words}{_noise(fig, v)}"})

    if len(variants) == 1:
        if (why := _score_failure(fig, variants[0]["name"])) is not None:
            add(variants[0], "not comparable", f"{variants[0]['name']} {why}")
        else:
            add(variants[0], *_loss_rule_clause(variants[0], fig["target"]))
        return out + _steps_verdicts(fig)
    base = variants[0]
    for v in variants[1:]:
        vs = v["vs_baseline"]
        if (why := _not_a_result(fig, v)) is not None:
            add(v, "not comparable", f"{why}; {v['name']}'s speedup is not a result")
            continue
        untested = [e for e in (base, v) if e["passes_loss_rule"] is None]
        if untested:
            add(v, "inconclusive", _loss_rule_clause(untested[0], fig["target"])[1])
            continue
        low, high = vs["speedup_ci95"]
        loss = f"passes the loss rule (p = {_p(v['p_loss_below_target'])})"
        if low is not None and low > 1:
            add(v, "verdict", f"{v['name']} is faster than {base['name']} by {_pct(vs['speedup'] - 1)} "
                f"(95% CI {_pct(low - 1)} to {_pct(high - 1)}, p = {_p(vs['p_time_faster'])}) and {loss}")
        elif high is not None and high < 1:  # slower: the new run takes 1/ratio of the baseline's time
            p_slower = stats.welch(*([r["time_s"] for r in e["runs"]] for e in (base, v)), alternative="less")
            add(v, "verdict", f"{v['name']} is slower than {base['name']} by {_pct(1 / vs['speedup'] - 1)} "
                f"(95% CI {_pct(1 / high - 1)} to {_pct(1 / low - 1)}, p = {_p(p_slower)}) and {loss}")
        else:
            needed = vs["runs_needed_per_variant"]
            size = abs(vs["time_diff_s"] / base["time_s"]["mean"]) if base["time_s"]["mean"] else None
            interval = "no interval" if low is None or high is None else \
                f"95% CI {_pct(low - 1, '+.2f')} to {_pct(high - 1, '+.2f')}"
            resolve = (f"about {needed} runs per variant would resolve a {_pct(size)} difference" if needed
                       else "no number of runs resolves no difference")
            add(v, "inconclusive", f"{v['name']} vs {base['name']}: speedup {_pct(vs['speedup'] - 1, '+.2f')} "
                f"({interval}, p = {_p(vs['p_time_faster'])}); {resolve}")
    return out + _steps_verdicts(fig)


def curves_figure(variants: list[Variant], target: float, xlabel: str):
    """Every run's val loss against 'train time (s)' or 'step', one color per variant, with the target line."""
    plt = pyplot()
    xs = (lambda log: [t / 1000 for t in log.val_times_ms]) if xlabel == "train time (s)" else (lambda log: log.val_steps)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, v in enumerate(variants):
        for j, log in enumerate(v.logs):
            ax.plot(xs(log), log.val_losses, color=colors[i % len(colors)], alpha=0.7, lw=1,
                    label=v.name if j == 0 else None)
    ax.axhline(target, color="black", ls="--", lw=0.8, label=f"target {target}")
    loss_axis(ax, [x for v in variants for log in v.logs for x in log.val_losses], target)
    ax.set(xlabel=xlabel, ylabel="val loss", title=f"val loss against {xlabel.split(' (')[0]}")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def runs_figure(variants: list[Variant], target: float):
    """Each run's final time and final val loss, with each variant's mean and 95% interval, and the target line."""
    import numpy as np

    plt = pyplot()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, (ax_time, ax_loss) = plt.subplots(1, 2, figsize=(10, 4.5))
    jitter = np.random.default_rng(0)  # fixed: the same runs give the same picture
    for ax, values_of, label in ((ax_time, _times, "final train time (s)"), (ax_loss, _losses, "final val loss")):
        for i, v in enumerate(variants):
            values = values_of(v)
            ax.plot(i + jitter.uniform(-0.15, 0.15, len(values)), values, "o", ms=4, alpha=0.6,
                    color=colors[i % len(colors)])
            s = stats.describe(values)
            if s.n >= 2:
                ax.errorbar(i + 0.3, s.mean, yerr=[[s.mean - s.ci_low], [s.ci_high - s.mean]], fmt="D",
                            color="black", capsize=4, ms=5, label="mean, 95% CI" if i == 0 else None)
        ax.set_xticks(range(len(variants)), [v.name for v in variants])
        ax.set_xlim(-0.5, len(variants) - 0.3)
        ax.set(ylabel=label, title=f"each run's {label}")
        ax.grid(alpha=0.3, axis="y")
    ax_loss.axhline(target, color="black", ls="--", lw=0.8, label=f"target {target}")
    ax_loss.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def plot(variants: list[Variant], target: float, plot_dir: Path) -> list[Path]:
    """loss_vs_time.png, loss_vs_step.png (curves_figure) and runs.png (runs_figure) in plot_dir."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    drawn = {"loss_vs_time.png": curves_figure(variants, target, "train time (s)"),
             "loss_vs_step.png": curves_figure(variants, target, "step"), "runs.png": runs_figure(variants, target)}
    for name, fig in drawn.items():
        fig.tight_layout()
        save_png(fig, plot_dir / name)
    return [plot_dir / name for name in drawn]


# ----------------------------------------------------------------------------------------------
# CLI


def _collect(args, variants: list[Variant]) -> None:
    """Fill each variant's logs: read them (logs mode) or run them interleaved, A0 B0 A1 B1 ... (run mode)."""
    if args.logs:
        for v in variants:
            admit(v, load_variant_logs(v, args.records), args.allow_code_diff)
        seen: dict[str, str] = {}
        for v in variants:  # a log in two variants makes them look alike: say so
            for log in v.logs:
                if (first := seen.setdefault(log.identity, v.name)) != v.name:
                    v.notes.append(f"{log.source} is also in variant {first}")
        return
    for k, seed in enumerate(range(args.seed_start, args.seed_start + args.seeds), 1):
        for v in variants:
            row = run_one(track=args.track or DEFAULT_TRACK, seed=seed, name=v.name, script=v.script or args.script,
                          nproc=args.nproc, overrides=v.overrides, timeout=args.timeout, runs_dir=args.runs_dir,
                          records_dir=args.records, label=f"{v.name} {k}/{args.seeds}")
            try:
                admit(v, [load_run(row["run_dir"])], args.allow_code_diff)
            except (LogError, OSError) as exc:
                v.skipped.append(f"{row['run_id']} ({row['status']}: {error_line(exc)})")
                v.skipped_status.append(row["status"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = doc_parser("compare", __doc__)
    add_launch_arguments(parser)
    parser.set_defaults(track=None)  # run mode: cpu-tiny; logs mode: where set, the default target of logs that state none
    parser.add_argument("--baseline", type=parse_variant, default=None, metavar="NAME=SPEC",
                        help="run mode: the baseline variant (default: the first --variant)")
    parser.add_argument("--variant", type=parse_variant, action="append", default=[], metavar="NAME=SPEC",
                        help="run mode: a variant, SPEC = trainer overrides and/or script=PATH")
    parser.add_argument("--script", type=Path, default=DEFAULT_SCRIPT, help="trainer for variants without script=")
    parser.add_argument("--logs", type=parse_logs_arg, nargs="+", action="extend", default=[], metavar="NAME=PATH",
                        help="logs mode: a log, a folder of logs or run dirs, or run ids a,b,c; "
                        "the first is the baseline")
    parser.add_argument("--target", type=positive_finite_float, default=None,
                        help="target val loss (default: the one the runs state; for logs that state none, "
                        f"--track's, else the FineWeb speedrun's {FINEWEB_TARGET})")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of the table")
    parser.add_argument("--plot-dir", type=Path, default=None, help="where the plots go (default runs/compare-<time>/)")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--allow-code-diff", action="store_true",
                        help="pool the runs of one variant whose code differs (the differing lines are shown)")
    parser.add_argument("--scoring", choices=stats.SCORINGS, default="mean",
                        help="how a set's time is scored: mean (the community's, default), olympic (MLPerf: drop the "
                        "fastest and the slowest run), median")
    parser.add_argument("--rule", choices=("time", "steps"), default="time",
                        help="steps: the optimization track's rule, steps to the target and its verdicts")
    parser.add_argument("--loss-sigma", type=positive_finite_float, default=stats.STEPS_SIGMA,
                        help=f"--rule steps: the stated per-run std of the final loss for the z-test (default "
                        f"{stats.STEPS_SIGMA}, the optimization track's)")
    parser.add_argument("--steps-rate", type=positive_finite_float, default=stats.STEPS_RATE,
                        help=f"--rule steps: loss per 100 steps the pairwise rule trades (default {stats.STEPS_RATE})")
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
    for v in variants:
        if not args.logs and not (v.script or args.script).is_file():
            parser.error(f"--variant {v.name}: script {v.script or args.script}: no such file")

    # With --json, stdout carries only the JSON: the runs' progress and echo go to stderr.
    chatter = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    previous = {} if args.logs else raise_on_stop_signals()
    try:
        if not args.logs:  # before the first run: a typo in any variant must not waste the others' runs
            problem = first_config_problem(
                [(f"--variant {v.name}, seed {seed}", dict(script=v.script or args.script, track=args.track or DEFAULT_TRACK,
                                                           seed=seed, overrides=v.overrides, nproc=args.nproc,
                                                           full_schedule=True))
                 for seed in range(args.seed_start, args.seed_start + args.seeds) for v in variants])
            problem = problem or unknown_track_problem(args.track, args.target)  # else found after every run
            if problem := problem or destination_problem(args.runs_dir, args.records):
                return refuse(problem)
        with chatter:
            _collect(args, variants)
        for v in variants:
            if not v.logs:
                raise CompareError(f"variant {v.name}: no finished runs to compare (left out: {'; '.join(v.skipped)})")
        target, target_source = resolve_target(variants, args.target, args.track)
    except (CompareError, RecordsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        return interrupted_exit(exc)
    finally:
        restore_handlers(previous)

    try:
        fig = figures(variants, target, target_source)
        if args.scoring != "mean":
            fig["scoring"] = score_figures(variants, target, args.scoring)
        if args.rule == "steps":
            fig["steps_rule"] = steps_figures(variants, target, args.loss_sigma, args.steps_rate)
    except ValueError as exc:  # figures no statistic can be computed from (a time of 0 ms in a hand-made log)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for v in variants:
        for line in ([f"left out {s}" for s in v.skipped] + v.notes
                     + [f"pooled (--allow-code-diff) {diff}" for diff in v.code_differences]):
            print(f"{v.name}: {line}", file=sys.stderr)
    fig["verdicts"] = verdicts(fig)
    if args.json:
        print(json.dumps(fig, indent=1))
    else:
        print(f"target val loss {target} ({target_source}); a run's time is its train time at its final validation, "
              "every finished run counts" + (f"; baseline {variants[0].name}" if len(variants) > 1 else ""))
        print(table(fig))
        if vs := comparison_table(fig):
            print(f"\nagainst the baseline, {variants[0].name}:\n{vs}")
        if "scoring" in fig:
            print(f"\ntime scored {args.scoring} (harness.stats.score):\n{score_table(fig['scoring'])}")
        if "steps_rule" in fig:
            print(f"\nthe steps rule of modded-nanogpt's optimization track (target {target}; "
                  f"{args.steps_rate} loss per 100 steps):\n{steps_table(fig['steps_rule'])}")
        print("\n" + "\n".join(line["line"] for line in fig["verdicts"]))
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
        with chatter:
            render_leaderboard(args.records)  # warns, and keeps the exit status, where it cannot write
    return rc


if __name__ == "__main__":
    run_cli(main)
