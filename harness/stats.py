"""The statistics of records and comparisons: thin wrappers on scipy.stats, one textbook method each.

- describe:        n, mean, sample std (ddof=1), 95% t-interval for the mean.
- p_mean_below:    one-sided one-sample t-test, H1: mean < target (modded-nanogpt's record rule on the loss).
- welch:           Welch's unequal-variance t-test (scipy.stats.ttest_ind(equal_var=False)).
- speedup:         baseline time / new time as a ratio of geometric means, with the 95% interval from
                   Welch's t-interval on log times, exponentiated. Ratios of positive quantities are
                   analysed on the log scale (the bioequivalence convention for a ratio of means); for
                   run-time spreads of a few percent the geometric mean and the mean differ by far less
                   than the interval.

Every function takes plain sequences of floats and returns floats; NaN where the sample is too
small for the figure (a std needs 2 values, a test 2 per group).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


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
    """p-value of the one-sided one-sample t-test, H0: mean >= target, H1: mean < target."""
    x = _array(values)
    if len(x) < 2:
        return math.nan
    return float(stats.ttest_1samp(x, target, alternative="less").pvalue)


def welch(a: Sequence[float], b: Sequence[float], alternative: str = "two-sided") -> float:
    """p-value of Welch's t-test of mean(a) vs mean(b); alternative 'less' means H1: mean(a) < mean(b)."""
    a, b = _array(a), _array(b)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    return float(stats.ttest_ind(a, b, equal_var=False, alternative=alternative).pvalue)


@dataclass(frozen=True)
class Speedup:
    ratio: float  # geometric-mean(baseline) / geometric-mean(new): > 1 means new is faster
    ci_low: float
    ci_high: float
    p_faster: float  # one-sided Welch p on log times, H1: new is faster than baseline

    def as_dict(self) -> dict:
        return {"ratio": self.ratio, "ci95": [self.ci_low, self.ci_high], "p_faster": self.p_faster}


def speedup(baseline_times: Sequence[float], new_times: Sequence[float]) -> Speedup:
    """Speedup of `new` over `baseline` (times, positive), with a 95% Welch interval on the log scale."""
    a, b = _array(baseline_times), _array(new_times)
    if len(a) == 0 or len(b) == 0:
        return Speedup(math.nan, math.nan, math.nan, math.nan)
    if (a <= 0).any() or (b <= 0).any():
        bad = sorted(float(t) for t in np.concatenate([a, b]) if t <= 0)
        raise ValueError(f"speedup needs positive times, got {bad[:3]}")
    log_a, log_b = np.log(a), np.log(b)
    ratio = math.exp(log_a.mean() - log_b.mean())
    if len(a) < 2 or len(b) < 2:
        return Speedup(ratio, math.nan, math.nan, math.nan)
    test = stats.ttest_ind(log_a, log_b, equal_var=False, alternative="two-sided")
    ci = test.confidence_interval(CONFIDENCE)
    p_faster = stats.ttest_ind(log_a, log_b, equal_var=False, alternative="greater").pvalue
    return Speedup(ratio, math.exp(ci.low), math.exp(ci.high), float(p_faster))
