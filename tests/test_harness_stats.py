"""harness.stats against published values: Student's sleep data (Cushny & Peebles, 1905), as worked in R.

R's documentation example `t.test(extra ~ group, data = sleep)` and its paired form print:
  paired (one-sample on the differences g1 - g2): t = -4.0621, df = 9, p-value = 0.002833,
      mean -1.58, 95% CI -2.4598858 .. -0.7001142
  Welch two-sample: t = -1.8608, df = 17.776, p-value = 0.07939, 95% CI of the difference -3.3654832 .. 0.2054832,
      means 0.75 and 2.33
"""
import math

import pytest

from harness import stats

GROUP1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
GROUP2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]
DIFF = [a - b for a, b in zip(GROUP1, GROUP2)]


def test_describe_matches_the_paired_t_interval():
    s = stats.describe(DIFF)
    assert s.n == 10 and s.mean == pytest.approx(-1.58)
    assert (s.ci_low, s.ci_high) == pytest.approx((-2.4598858, -0.7001142), abs=1e-7)
    # the std behind it: t = mean / (std / sqrt(n)) = -4.0621
    assert s.mean / (s.std / math.sqrt(10)) == pytest.approx(-4.0621, abs=1e-4)


def test_one_sided_one_sample_is_half_the_two_sided_p():
    assert stats.p_mean_below(DIFF, 0.0) == pytest.approx(0.002833 / 2, rel=1e-3)
    assert stats.p_mean_below([-x for x in DIFF], 0.0) == pytest.approx(1 - 0.002833 / 2, rel=1e-5)


def test_welch():
    assert stats.welch(GROUP1, GROUP2) == pytest.approx(0.07939, rel=1e-4)
    assert stats.welch(GROUP1, GROUP2, alternative="less") == pytest.approx(0.07939 / 2, rel=1e-4)


def test_speedup_is_the_welch_interval_on_log_times():
    # times whose logs are the sleep data: the log-ratio interval is R's Welch interval, negated and exponentiated
    baseline = [math.exp(x) for x in GROUP2]
    new = [math.exp(x) for x in GROUP1]
    sp = stats.speedup(baseline, new)
    assert sp.ratio == pytest.approx(math.exp(2.33 - 0.75))
    assert (sp.ci_low, sp.ci_high) == pytest.approx((math.exp(-0.2054832), math.exp(3.3654832)), rel=1e-6)
    assert sp.p_faster == pytest.approx(0.07939 / 2, rel=1e-4)


def test_speedup_of_scaled_times():
    times = [10.0, 10.5, 9.8, 10.2]
    sp = stats.speedup(times, [t / 2 for t in times])  # exactly twice as fast: zero spread in the log ratio
    assert sp.ratio == pytest.approx(2.0)
    assert sp.ci_low < 2.0 < sp.ci_high


def test_small_samples_give_nan_not_errors():
    assert math.isnan(stats.describe([3.0]).std) and stats.describe([3.0]).mean == 3.0
    assert stats.describe([]).n == 0
    assert math.isnan(stats.p_mean_below([3.0], 3.28))
    assert math.isnan(stats.welch([1.0], [1.0, 2.0]))
    assert math.isnan(stats.speedup([1.0], [2.0]).ci_low) and stats.speedup([1.0], [2.0]).ratio == 0.5
    with pytest.raises(ValueError, match="positive"):
        stats.speedup([0.0, 1.0], [1.0, 2.0])
