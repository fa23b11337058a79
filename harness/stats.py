"""The statistics of records and comparisons: thin wrappers on scipy.stats, one textbook method each.

Every function takes plain sequences of floats and returns floats; NaN where the sample is too small for
the figure (a std needs 2 values, a test 2 per group). `loss` prints the record's loss rule on final val
losses (one-sided one-sample t-test, H1: mean < target, p < ALPHA: modded-nanogpt's rule); `times` a
candidate's times against a baseline's (the ratio of means with Fieller's 95% interval, Welch's t-test):

    python -m harness.stats loss --target 3.28 3.2817 3.2796 3.2778 ...       # the record's loss rule
    python -m harness.stats times --baseline 80.61 80.71 ... --candidate 79.54 79.74 ...
    pbpaste | python -m harness.stats loss                                      # numbers from stdin

Numbers may be separated by spaces, commas or newlines, and wrapped in [ ], as a record's
statistics.md prints its lists.
"""
from __future__ import annotations

import math
import re
import sys
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

from harness.cli import doc_parser, markdown_table, positive_finite_float, run_cli
from harness.tracks import FINEWEB_TARGET

CONFIDENCE = 0.95
ALPHA = 0.01  # the record rule's significance, for the loss and for the time
POWER = 0.8  # for runs_needed_*: the chance that a set of that size passes, at the effect observed
MAX_RUNS = 10_000  # runs_needed_* gives None beyond this (no practical set passes)


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1)
    ci_low: float  # 95% t-interval for the mean
    ci_high: float

    def as_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean, "std": self.std, "ci95": [self.ci_low, self.ci_high]}


def _array(values: Sequence[float]) -> np.ndarray:
    return np.asarray(list(values), dtype=np.float64)


def _quiet(test, *args, **kwargs):
    """A scipy test without its RuntimeWarnings (near-identical samples); the NaN it returns says the same."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return test(*args, **kwargs)


def _no_spread(std: float, mean: float) -> bool:
    """A std that is rounding noise (identical values give ~1e-16 x mean, not 0)."""
    return std <= 1e-12 * abs(mean)


def describe(values: Sequence[float]) -> Summary:
    x = _array(values)
    n = len(x)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n < 2:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    low, high = stats.t.interval(CONFIDENCE, n - 1, loc=mean, scale=stats.sem(x)) if std > 0 else (mean, mean)
    return Summary(n, mean, std, float(low), float(high))


def p_mean_below(values: Sequence[float], target: float) -> float:
    """p-value of the one-sided one-sample t-test, H0: mean >= target, H1: mean < target. NaN (no test) for
    fewer than 2 values; runs with no spread at all take the test's limit, 0 below the target and 1 at or above
    it (scipy gives NaN at exactly the target, which would read as 'no test')."""
    x = _array(values)
    if len(x) < 2:
        return math.nan
    if x.min() == x.max():
        return 0.0 if x[0] < target else 1.0
    return float(_quiet(stats.ttest_1samp, x, target, alternative="less").pvalue)


def welch(a: Sequence[float], b: Sequence[float], alternative: str = "two-sided") -> float:
    """p-value of Welch's t-test of mean(a) vs mean(b); alternative 'less' means H1: mean(a) < mean(b)."""
    a, b = _array(a), _array(b)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    return float(_quiet(stats.ttest_ind, a, b, equal_var=False, alternative=alternative).pvalue)


@dataclass(frozen=True)
class LossRule:
    """The loss rule over a set of runs: the final val losses described, and the one-sided one-sample t-test
    that their mean is below the target (p < ALPHA passes)."""

    losses: Summary
    target: float
    p: float  # NaN for fewer than 2 runs: no test
    runs_needed: int | None  # runs_needed_loss at this mean and std

    @property
    def passes(self) -> bool | None:  # None: no test
        return None if math.isnan(self.p) else bool(self.p < ALPHA)

    @property
    def verdict(self) -> str:
        return loss_rule_verdict(self.passes)


def loss_rule_verdict(passes: bool | None) -> str:
    """The word a table prints for LossRule.passes (as a figure's JSON keeps it)."""
    return {True: "passes", False: "fails", None: "untested (n < 2)"}[passes]


def loss_rule(final_losses: Sequence[float], target: float) -> LossRule:
    """The one summary of the loss rule: run, compare, submit and this module's command line print it."""
    summary = describe(final_losses)
    return LossRule(summary, target, p_mean_below(final_losses, target),
                    runs_needed_loss(summary.mean, summary.std, target))


@dataclass(frozen=True)
class Speedup:
    ratio: float  # mean(baseline) / mean(new): > 1 means new is faster
    ci_low: float  # Fieller's 95% interval for the ratio (NaN when the new mean is not clearly positive)
    ci_high: float
    p_faster: float  # one-sided Welch p, H1: mean(new) < mean(baseline)

    def as_dict(self) -> dict:
        return {"ratio": self.ratio, "ci95": [self.ci_low, self.ci_high], "p_faster": self.p_faster}


def speedup(baseline_times: Sequence[float], new_times: Sequence[float]) -> Speedup:
    """Speedup of `new` over `baseline` (times, positive): the ratio of mean times, with Fieller's interval.

    Fieller: the ratio R = mean_b / mean_n bounds the pivot (mean_b - R mean_n)^2 <= t^2 (v_b + R^2 v_n),
    v = s^2 / n per group, a quadratic in R whose roots are the interval; t at 97.5% on the
    Welch-Satterthwaite degrees of freedom of v_b + R^2 v_n at the estimate.
    """
    a, b = _array(baseline_times), _array(new_times)
    if (a <= 0).any() or (b <= 0).any():
        bad = sorted(float(t) for t in np.concatenate([a, b]) if t <= 0)
        raise ValueError(f"speedup needs positive times, got {bad[:3]}")
    ratio = float(a.mean() / b.mean())
    if len(a) < 2 or len(b) < 2:
        return Speedup(ratio, math.nan, math.nan, math.nan)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    total = va + ratio**2 * vb
    if total == 0:  # no spread at all: the ratio is exact
        return Speedup(ratio, ratio, ratio, math.nan)  # and no test: a t statistic needs a spread
    df = total**2 / (va**2 / (len(a) - 1) + ratio**4 * vb**2 / (len(b) - 1))
    t = stats.t.ppf(0.5 + CONFIDENCE / 2, df)
    qa, qb, qc = b.mean() ** 2 - t**2 * vb, -2 * a.mean() * b.mean(), a.mean() ** 2 - t**2 * va
    disc = qb**2 - 4 * qa * qc
    if qa <= 0 or disc < 0:  # the new mean is not significantly above 0: the interval is unbounded
        low = high = math.nan
    else:
        low, high = sorted(((-qb - math.sqrt(disc)) / (2 * qa), (-qb + math.sqrt(disc)) / (2 * qa)))
    return Speedup(ratio, float(low), float(high), welch(b, a, alternative="less"))


@dataclass(frozen=True)
class Difference:
    diff: float  # mean(new) - mean(baseline)
    ci_low: float  # 95% Welch interval
    ci_high: float


def mean_difference(baseline: Sequence[float], new: Sequence[float]) -> Difference:
    """mean(new) - mean(baseline) with the 95% Welch t-interval."""
    a, b = _array(baseline), _array(new)
    diff = float(b.mean() - a.mean())
    if len(a) < 2 or len(b) < 2:
        return Difference(diff, math.nan, math.nan)
    if a.var() == 0 and b.var() == 0:
        return Difference(diff, diff, diff)
    ci = _quiet(lambda: stats.ttest_ind(b, a, equal_var=False).confidence_interval(CONFIDENCE))
    return Difference(diff, float(ci.low), float(ci.high))


def _smallest_n(power_at, start: int = 2) -> int | None:
    """The smallest n >= start with power_at(n) >= POWER (power grows with n), None past MAX_RUNS: doubling, then
    bisection, so n is never probed far beyond where the power first reaches POWER (scipy's NaN tail)."""
    high = start
    while not power_at(high) >= POWER:
        if high >= MAX_RUNS:
            return None
        high = min(2 * high, MAX_RUNS)
    low = max(start, high // 2)
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if power_at(mid) >= POWER else (mid + 1, high)
    return low


def _power_or_one(power: float) -> float:
    """scipy's noncentral t gives NaN far in its tail, where the noncentrality is huge: the power is 1 there."""
    return 1.0 if math.isnan(power) else float(power)


def runs_needed_loss(mean: float, std: float, target: float, alpha: float = ALPHA) -> int | None:
    """Runs for the loss rule (one-sided one-sample t-test, mean < target, p < alpha) to pass with POWER
    at this mean and std. None when the mean is not below the target or the std is unknown."""
    if not (math.isfinite(mean) and math.isfinite(std)) or mean >= target:
        return None
    if _no_spread(std, mean):
        return 2
    d = (target - mean) / std

    def power(n: int) -> float:  # P(T > t_crit), T noncentral t with df n - 1 and noncentrality d sqrt(n)
        return _power_or_one(stats.nct.sf(stats.t.ppf(1 - alpha, n - 1), n - 1, d * math.sqrt(n)))

    return _smallest_n(power)


def runs_needed_difference(mean_a: float, std_a: float, mean_b: float, std_b: float,
                           alpha: float = 1 - CONFIDENCE) -> int | None:
    """Runs per variant for a two-sided t-test of the means at `alpha` to succeed with POWER (so that a
    95% interval of the difference, or of the speedup, excludes no-change), at the difference observed
    and the two stds' root mean square (Cohen's d for equal group sizes)."""
    if not all(math.isfinite(x) for x in (mean_a, std_a, mean_b, std_b)) or mean_a == mean_b:
        return None
    spread = math.sqrt((std_a**2 + std_b**2) / 2)
    if _no_spread(spread, max(abs(mean_a), abs(mean_b))):
        return 2
    d = abs(mean_a - mean_b) / spread

    def power(n: int) -> float:  # both tails of a noncentral t with df 2n - 2, noncentrality d sqrt(n / 2)
        df, nc = 2 * n - 2, d * math.sqrt(n / 2)
        crit = stats.t.ppf(1 - alpha / 2, df)
        return _power_or_one(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))

    return _smallest_n(power)


# ----------------------------------------------------------------------------------------------
# Scoring rules for a set's time: the community's mean (describe/speedup above), MLPerf's olympic mean, the median

SCORINGS = ("mean", "olympic", "median")  # the community's is the first: the default


@dataclass(frozen=True)
class Score:
    """A set's time under one scoring rule: the score and its 95% interval (NaN where too few runs or the set
    fails), the runs it is computed from, and the runs that missed the target."""

    rule: str
    n: int
    used: int
    score: float
    ci_low: float
    ci_high: float
    misses: int = 0
    fails: str | None = None  # why the set gets no score
    var_w: float = math.nan  # olympic: the winsorized sample variance of the sorted times (Yuen's test reads it)

    def as_dict(self) -> dict:
        return {"rule": self.rule, "n": self.n, "used": self.used, "score": self.score,
                "ci95": [self.ci_low, self.ci_high], "misses": self.misses, "fails": self.fails}


def olympic(times: Sequence[float], missed: Sequence[bool] | None = None) -> Score:
    """MLPerf Training's olympic score: drop the fastest and the slowest run, average the rest. A run that missed
    the target counts as the slowest; a set with more than one miss fails. The 95% interval is the trimmed mean's
    (Tukey-McLaughlin: se = winsorized std / ((1 - 2g/n) sqrt(n)), t on h - 1 degrees of freedom, h = n - 2)."""
    missed = [False] * len(times) if missed is None else list(missed)
    n, misses = len(times), sum(missed)
    if misses > 1:
        return Score("olympic", n, 0, math.nan, math.nan, math.nan, misses, f"{misses} runs missed the target (at most 1)")
    if n < 3:
        return Score("olympic", n, 0, math.nan, math.nan, math.nan, misses, f"{n} runs: olympic scoring needs 3")
    x = _array(times)
    x[np.asarray(missed, dtype=bool)] = np.inf  # a run that missed the target: MLPerf counts it as the slowest
    x, h = np.sort(x), n - 2
    w = x.copy()
    w[0], w[-1] = w[1], w[-2]  # winsorized: each trimmed end replaced by its neighbour
    tm, var_w = float(x[1:-1].mean()), float(w.var(ddof=1)) if h >= 2 else math.nan
    if h < 2 or not var_w > 0:
        low = high = tm if var_w == 0 else math.nan
    else:
        se = math.sqrt(var_w) * math.sqrt(n) / h
        low, high = (float(v) for v in stats.t.interval(CONFIDENCE, h - 1, loc=tm, scale=se))
    return Score("olympic", n, h, tm, low, high, misses, var_w=var_w)


def median(times: Sequence[float]) -> Score:
    """The median time with the order-statistic (binomial) 95% interval of scipy.stats.quantile_test; NaN ends
    where the sample is too small for one (fewer than 6 runs)."""
    x = _array(times)
    m = float(np.median(x))
    ci = stats.quantile_test(x, q=m, p=0.5).confidence_interval(CONFIDENCE)
    return Score("median", len(x), len(x), m, float(ci.low), float(ci.high))


def score(rule: str, times: Sequence[float], missed: Sequence[bool] | None = None) -> Score:
    """A set's time under `rule` (one of SCORINGS); `missed` marks runs whose final loss missed the target."""
    if rule == "olympic":
        return olympic(times, missed)
    if rule == "median":
        return median(times)
    if rule == "mean":
        s = describe(times)
        return Score("mean", s.n, s.n, s.mean, s.ci_low, s.ci_high)
    raise ValueError(f"scoring {rule!r}: not one of {', '.join(SCORINGS)}")


@dataclass(frozen=True)
class ScoreComparison:
    """A variant's score against the baseline's: the ratio baseline / variant (> 1: faster), the difference
    variant - baseline with its 95% interval (NaN where the rule's test gives none), and the test's p-values."""

    ratio: float
    diff: float
    ci_low: float
    ci_high: float
    p_faster: float  # one-sided, H1: the variant is faster
    p_two_sided: float
    test: str

    def as_dict(self) -> dict:
        return {"ratio": self.ratio, "diff": self.diff, "diff_ci95": [self.ci_low, self.ci_high],
                "p_faster": self.p_faster, "p_two_sided": self.p_two_sided, "test": self.test}


def yuen(baseline: Sequence[float], new: Sequence[float], baseline_missed: Sequence[bool] | None = None,
         new_missed: Sequence[bool] | None = None) -> ScoreComparison:
    """Yuen's trimmed t-test of the olympic means (one run trimmed from each end of each set, a miss as the
    slowest): d = (n - 1) s_w^2 / (h (h - 1)) per set, Welch-Satterthwaite degrees of freedom. Without misses and
    with equal n it is scipy.stats.ttest_ind(new, baseline, equal_var=False, trim=1/n)."""
    a, b = olympic(baseline, baseline_missed), olympic(new, new_missed)
    nan = math.nan
    if a.fails or b.fails:
        return ScoreComparison(nan, nan, nan, nan, nan, nan, "Yuen")
    ratio, diff = a.score / b.score, b.score - a.score
    (da, ha), (db, hb) = (((s.n - 1) * s.var_w / (s.used * (s.used - 1)) if s.used >= 2 else nan, s.used)
                          for s in (a, b))
    total = da + db
    if not total > 0:
        return ScoreComparison(ratio, diff, nan, nan, nan, nan, "Yuen")
    df = total**2 / (da**2 / (ha - 1) + db**2 / (hb - 1))
    t = diff / math.sqrt(total)
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, df) * math.sqrt(total)
    return ScoreComparison(ratio, diff, diff - half, diff + half, float(stats.t.cdf(t, df)),
                           float(2 * stats.t.sf(abs(t), df)), "Yuen")


def mann_whitney(baseline: Sequence[float], new: Sequence[float]) -> ScoreComparison:
    """The ratio and difference of medians (no interval), and the Mann-Whitney U test's p-values (exact where no
    two times tie, else the normal approximation)."""
    a, b = _array(baseline), _array(new)
    ma, mb = float(np.median(a)), float(np.median(b))
    method = "exact" if len(np.unique(np.concatenate([a, b]))) == len(a) + len(b) else "asymptotic"  # exact: no ties
    p_faster = float(stats.mannwhitneyu(b, a, alternative="less", method=method).pvalue)
    p_two = float(stats.mannwhitneyu(b, a, alternative="two-sided", method=method).pvalue)
    return ScoreComparison(ma / mb, mb - ma, math.nan, math.nan, p_faster, p_two, "Mann-Whitney")


def compare_scores(rule: str, baseline: Sequence[float], new: Sequence[float],
                   baseline_missed: Sequence[bool] | None = None, new_missed: Sequence[bool] | None = None
                   ) -> ScoreComparison:
    """The test that fits `rule`: Welch with Fieller's ratio (mean), Yuen (olympic), Mann-Whitney (median)."""
    if rule == "olympic":
        return yuen(baseline, new, baseline_missed, new_missed)
    if rule == "median":
        return mann_whitney(baseline, new)
    if rule == "mean":
        sp, d = speedup(baseline, new), mean_difference(baseline, new)
        return ScoreComparison(sp.ratio, d.diff, d.ci_low, d.ci_high, sp.p_faster, welch(new, baseline), "Welch")
    raise ValueError(f"scoring {rule!r}: not one of {', '.join(SCORINGS)}")


# ----------------------------------------------------------------------------------------------
# The steps rule: modded-nanogpt's optimization track (records/track_3_optimization/README.md, "Rules" and
# "Pairwise statistical significance") judges a result on steps, its loss by a z-test with a stated sigma

STEPS_SIGMA = 0.0013  # the per-run std of the final loss the track's z-test assumes
STEPS_MARGIN = 0.004  # the track's threshold: 3.09 sigma, the one-sided z-test at p < 0.001, rounded as it states it
STEPS_RATE = 0.0045  # loss per 100 steps: the track's measured trade (its result #12 shortened by 200 steps)


def steps_margin(sigma: float = STEPS_SIGMA) -> float:
    """The threshold of the track's validity and pairwise figures for a stated per-run sigma: STEPS_MARGIN is
    3.09 x the track's own sigma, so another sigma scales it (0.004 at STEPS_SIGMA, as the track states it)."""
    return STEPS_MARGIN * sigma / STEPS_SIGMA


def z_below(losses: Sequence[float], target: float, sigma: float = STEPS_SIGMA) -> float:
    """p of the one-sided z-test that the mean loss is below the target, with a stated (not estimated) sigma
    per run: Phi((mean - target) / (sigma / sqrt(n)))."""
    x = _array(losses)
    return float(stats.norm.cdf((x.mean() - target) / (sigma / math.sqrt(len(x)))))


def below_margin(losses: Sequence[float], target: float) -> float:
    """The track's validity figure, (target - mean loss) * sqrt(n); a result is valid when it is >= STEPS_MARGIN."""
    x = _array(losses)
    return float((target - x.mean()) * math.sqrt(len(x))) if len(x) else math.nan


def pairwise_margin(baseline_losses: Sequence[float], baseline_steps: float, new_losses: Sequence[float],
                    new_steps: float, rate: float = STEPS_RATE) -> float:
    """The track's pairwise figure: (final_loss_diff + exp_stepbased_loss_diff) / sqrt(1/n1 + 1/n2), the loss
    difference baseline - new plus the steps the new result saves charged at `rate` per 100 steps; the new result
    is better when it is >= STEPS_MARGIN."""
    a, b = _array(baseline_losses), _array(new_losses)
    return float(((a.mean() - b.mean()) + rate * (baseline_steps - new_steps) / 100) / math.sqrt(1 / len(a) + 1 / len(b)))


# ----------------------------------------------------------------------------------------------
# Command line: numbers in, the figures a record or a comparison prints out


def parse_numbers(text: str) -> list[float]:
    """'[3.28, 3.27]', '3.28 3.27', one per line: -> floats. Raises ValueError naming a bad token, or the text
    where its brackets do not pair ('[3.28, 3.27' is a list cut off)."""
    depth = 0
    for c in text:
        depth += {"[": 1, "]": -1}.get(c, 0)
        if depth < 0:
            break
    if depth:
        raise ValueError(f"unbalanced brackets: {text.strip()!r}")
    values = []
    for token in re.split(r"[\s,\[\]]+", text.strip()):
        if token:
            try:
                values.append(float(token))
            except ValueError:
                raise ValueError(f"not a number: {token!r}") from None
            if not math.isfinite(values[-1]):
                raise ValueError(f"not a finite number: {token!r}")
    return values


def _numbers(given: list[str], what: str) -> list[float]:
    values = parse_numbers(" ".join(given) if given else sys.stdin.read())
    if len(values) < 2:
        raise ValueError(f"{what}: need at least 2 numbers, got {len(values)}")
    if not math.isfinite(sum(abs(x) for x in values)):  # every mean, std and test would be NaN
        raise ValueError(f"{what}: numbers too large to add up (their sum overflows a float)")
    return values


def fmt(value, spec: str = "", missing: str = "—", scale: float = 1) -> str:
    """The one formatter of a figure that may be missing: value (/ scale, for a number) formatted; `missing`
    for None (JSON's null) or NaN (a figure too few runs give, or pandas' gap)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value if isinstance(value, str) or scale == 1 else value / scale, spec)


def mean_std(summary: dict, spec: str, scale: float = 1, missing: str = "—") -> str:
    """'mean ± std' of a describe dict (Summary.as_dict), each formatted by fmt."""
    return f"{fmt(summary.get('mean'), spec, missing, scale)} ± {fmt(summary.get('std'), spec, missing, scale)}"


def _table(rows: list[tuple[str, str]]) -> str:
    return markdown_table([{"figure": figure, "value": value} for figure, value in rows])


def loss_report(losses: Sequence[float], target: float) -> str:
    rule = loss_rule(losses, target)
    s = rule.losses
    return _table([
        ("n", f"{s.n}"),
        ("mean ± std (sample)", f"{s.mean:.10f} ± {s.std:.10f}"),
        ("95% CI of the mean", f"[{s.ci_low:.10f}, {s.ci_high:.10f}]"),
        (f"one-sided t-test p (mean < {target})", f"{rule.p:.10f}"),
        (f"loss rule (p < {ALPHA})", rule.verdict),
        (f"runs needed ({POWER:.0%} power)", fmt(rule.runs_needed, "d")),
    ])


def times_report(baseline: Sequence[float], candidate: Sequence[float]) -> str:
    a, b = describe(baseline), describe(candidate)
    sp, diff = speedup(baseline, candidate), mean_difference(baseline, candidate)
    needed = runs_needed_difference(a.mean, a.std, b.mean, b.std)
    return _table([
        ("n (baseline, candidate)", f"{a.n}, {b.n}"),
        ("baseline mean ± std", f"{a.mean:.6f} ± {a.std:.6f}"),
        ("candidate mean ± std", f"{b.mean:.6f} ± {b.std:.6f}"),
        ("difference (candidate - baseline) [95% CI]", f"{diff.diff:+.6f} [{diff.ci_low:+.6f}, {diff.ci_high:+.6f}]"),
        ("speedup, ratio of means [95% Fieller CI]", f"{sp.ratio:.8f} [{sp.ci_low:.6f}, {sp.ci_high:.6f}]"),
        ("Welch p, candidate faster (one-sided)", f"{sp.p_faster:.3g}"),
        ("Welch p, two-sided", f"{welch(candidate, baseline):.3g}"),
        (f"runs needed per variant ({POWER:.0%} power, 95% CI excludes 1)", fmt(needed, "d")),
    ])


def main(argv: Sequence[str] | None = None) -> int:
    parser = doc_parser("stats", __doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    loss = sub.add_parser("loss", help="the loss rule on final val losses (numbers, or stdin)")
    loss.add_argument("--target", type=positive_finite_float, default=FINEWEB_TARGET,
                      help=f"target val loss (default {FINEWEB_TARGET})")
    loss.add_argument("values", nargs="*", metavar="LOSS")
    times = sub.add_parser("times", help="a candidate's times against a baseline's: speedup, difference, Welch")
    times.add_argument("--baseline", nargs="+", required=True, metavar="T")
    times.add_argument("--candidate", nargs="+", required=True, metavar="T")
    args = parser.parse_args(argv)
    try:
        if args.command == "loss":
            losses = _numbers(args.values, "losses")
            if negative := [x for x in losses if x < 0]:  # a cross-entropy is never below 0
                raise ValueError(f"losses: a val loss is never negative, got {negative[0]:g}")
            print(loss_report(losses, args.target))
        else:
            print(times_report(_numbers(args.baseline, "--baseline"), _numbers(args.candidate, "--candidate")))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    run_cli(main)
