"""harness.stats against published values: the FP8DownProjection speedrun record's own figures (tests/helpers.py), and Student's sleep data (Cushny & Peebles, 1905), as worked in R.

R's documentation example `t.test(extra ~ group, data = sleep)` and its paired form print:
  paired (one-sample on the differences g1 - g2): t = -4.0621, df = 9, p-value = 0.002833,
      mean -1.58, 95% CI -2.4598858 .. -0.7001142
  Welch two-sample: t = -1.8608, df = 17.776, p-value = 0.07939, 95% CI of the difference -3.3654832 .. 0.2054832,
      means 0.75 and 2.33
"""
import io
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from harness import stats
from helpers import FP8_BASE_L, FP8_BASE_T, FP8_NEW_T

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


def test_the_published_record_figures():
    assert stats.p_mean_below(FP8_BASE_L, 3.28) == pytest.approx(0.0042976481, abs=5e-11)
    assert stats.describe(FP8_BASE_L).std == pytest.approx(0.0020164389, abs=5e-11)
    assert stats.describe(FP8_BASE_T).mean == pytest.approx(80.728615, abs=5e-7)
    assert stats.describe(FP8_NEW_T).std == pytest.approx(0.182767, abs=5e-7)
    sp = stats.speedup(FP8_BASE_T, FP8_NEW_T)
    assert sp.ratio == pytest.approx(1.01309774, abs=5e-9)  # "speedup: 1.01309774x"
    assert stats.welch(FP8_NEW_T, FP8_BASE_T) == pytest.approx(4.9e-12, abs=5e-14)  # two-sided, as published
    assert sp.p_faster == pytest.approx(4.9e-12 / 2, rel=0.01)
    assert stats.mean_difference(FP8_BASE_T, FP8_NEW_T).diff == pytest.approx(-1.043692, abs=5e-7)
    # Fieller's interval, and the delta method's (ratio ± t x its standard error, t on Welch's 15 df) beside it
    assert (sp.ci_low, sp.ci_high) == pytest.approx((1.011643, 1.014556), abs=5e-7)
    se = sp.ratio * math.sqrt(np.var(FP8_BASE_T, ddof=1) / 13 / np.mean(FP8_BASE_T) ** 2
                              + np.var(FP8_NEW_T, ddof=1) / 13 / np.mean(FP8_NEW_T) ** 2)
    t = scipy_stats.t.ppf(0.975, 15.0)
    assert (sp.ci_low, sp.ci_high) == pytest.approx((sp.ratio - t * se, sp.ratio + t * se), abs=1e-5)


def test_mean_difference_is_the_welch_interval():
    d = stats.mean_difference(GROUP2, GROUP1)  # new = group 1: R's interval of mean(g1) - mean(g2)
    assert d.diff == pytest.approx(0.75 - 2.33)
    assert (d.ci_low, d.ci_high) == pytest.approx((-3.3654832, 0.2054832), abs=1e-7)


def test_fieller_interval_covers_the_true_ratio_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    true_ratio, trials, covered = 80.0 / 64.0, 4000, 0
    for _ in range(trials):
        sp = stats.speedup(rng.normal(80.0, 3.0, 5), rng.normal(64.0, 6.0, 7))
        covered += sp.ci_low <= true_ratio <= sp.ci_high
    assert covered / trials == pytest.approx(0.95, abs=0.015)


def test_fieller_agrees_with_the_log_scale_interval_for_small_spreads():
    base, new = [100.0, 101.0, 99.5, 100.4, 100.9], [90.2, 90.9, 89.8, 90.5]
    sp = stats.speedup(base, new)
    ci = scipy_stats.ttest_ind(np.log(base), np.log(new), equal_var=False).confidence_interval(0.95)
    assert (sp.ci_low, sp.ci_high) == pytest.approx((math.exp(ci.low), math.exp(ci.high)), rel=2e-4)


def test_speedup_of_scaled_times():
    times = [10.0, 10.5, 9.8, 10.2]
    sp = stats.speedup(times, [t / 2 for t in times])
    assert sp.ratio == pytest.approx(2.0)
    assert sp.ci_low < 2.0 < sp.ci_high
    exact = stats.speedup([3.0, 3.0], [1.5, 1.5])  # no spread at all: the ratio is exact
    assert (exact.ratio, exact.ci_low, exact.ci_high) == (2.0, 2.0, 2.0)


@pytest.mark.parametrize("d", [0.3, 0.87, 2.0, 4.0])
def test_runs_needed_is_the_textbook_power_calculation(d):
    from statsmodels.stats import power  # a dev dependency: the textbook implementation
    one_sample = power.TTestPower().solve_power(effect_size=d, alpha=0.01, power=0.8, alternative="larger")
    assert stats.runs_needed_loss(3.28 - d * 0.002, 0.002, 3.28) == max(2, math.ceil(one_sample))
    two_sample = power.TTestIndPower().solve_power(effect_size=d, alpha=0.05, power=0.8, alternative="two-sided")
    assert stats.runs_needed_difference(80.0, 0.5, 80.0 - d * 0.5, 0.5) == max(2, math.ceil(two_sample))


def test_runs_needed_with_no_spread():
    same = stats.describe([3.2766] * 5)  # identical runs: a std of ~1e-16, not 0
    assert stats.runs_needed_loss(same.mean, same.std, 3.28) == 2
    assert stats.runs_needed_loss(3.0, 1e-6, 3.28) == 2  # a huge noncentrality: scipy's NaN tail is power 1


def test_runs_needed_when_no_set_can_pass():
    assert stats.runs_needed_loss(3.29, 0.01, 3.28) is None  # the mean is above the target
    assert stats.runs_needed_loss(3.27, math.nan, 3.28) is None
    assert stats.runs_needed_loss(3.2799999, 1.0, 3.28) is None  # beyond MAX_RUNS
    assert stats.runs_needed_difference(80.0, 0.1, 80.0, 0.1) is None


def test_cli_loss_rule_on_a_pasted_list(capsys):
    assert stats.main(["loss", "--target", "3.28", str(FP8_BASE_L)]) == 0
    out = capsys.readouterr().out
    assert "0.0042976481" in out and "passes" in out and "| 13 " in out


def test_cli_times_from_stdin_and_arguments(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(" ".join(map(str, FP8_BASE_L))))
    assert stats.main(["loss"]) == 0 and "passes" in capsys.readouterr().out
    assert stats.main(["times", "--baseline", *map(str, FP8_BASE_T), "--candidate", *map(str, FP8_NEW_T)]) == 0
    out = capsys.readouterr().out
    assert "1.01309774" in out and "4.91e-12" in out and "-1.043692" in out


def test_cli_bad_numbers_are_one_line(capsys):
    assert stats.main(["loss", "3.28", "oops"]) == 2
    assert capsys.readouterr().err == "error: not a number: 'oops'\n"
    assert stats.main(["loss", "3.28"]) == 2
    assert "need at least 2 numbers" in capsys.readouterr().err
    assert stats.main(["loss", "nan", "3.2", "3.1"]) == 2
    assert capsys.readouterr().err == "error: not a finite number: 'nan'\n"
    for argv, text in ((["loss", "[3.28,", "3.27,", "3.26"], "[3.28, 3.27, 3.26"), (["loss", "3.28,", "3.27]"], "3.28, 3.27]"),
                       (["loss", "]3.28,", "3.27["], "]3.28, 3.27["),
                       (["times", "--baseline", "[1,", "2", "--candidate", "1", "2"], "[1, 2")):
        assert stats.main(argv) == 2
        captured = capsys.readouterr()
        assert captured.err == f"error: unbalanced brackets: {text!r}\n" and captured.out == ""
    assert stats.main(["loss", "[[3.28,", "3.27],", "[3.26]]"]) == 0  # pairs nest


def test_cli_a_negative_loss_is_one_line(capsys):
    """A val loss (a cross-entropy) is never below 0: a negative one is a typo, not a loss the rule judges."""
    assert stats.main(["loss", "3.28", "-3.27", "3.26"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "error: losses: a val loss is never negative, got -3.27\n" and captured.out == ""


def test_small_samples_give_nan_not_errors():
    assert math.isnan(stats.describe([3.0]).std) and stats.describe([3.0]).mean == 3.0
    assert stats.describe([]).n == 0
    assert math.isnan(stats.p_mean_below([3.0], 3.28))
    assert math.isnan(stats.welch([1.0], [1.0, 2.0]))
    assert math.isnan(stats.speedup([1.0], [2.0]).ci_low) and stats.speedup([1.0], [2.0]).ratio == 0.5
    assert math.isnan(stats.mean_difference([1.0], [2.0]).ci_low)
    with pytest.raises(ValueError, match="positive"):
        stats.speedup([0.0, 1.0], [1.0, 2.0])


@pytest.mark.parametrize("target", ["nan", "inf", "-inf"])
def test_a_target_that_is_not_finite_is_refused(target, capsys):
    from harness import compare

    for main, argv in ((stats.main, ["loss", f"--target={target}", "3.27", "3.26"]),
                       (compare.main, ["--logs", "a=x.txt", f"--target={target}"])):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.splitlines()[-1].endswith(f"argument --target: '{target}' is not a finite number")


def test_a_reader_that_stops_reading_gets_no_traceback(tmp_path):
    """`python -m harness.X ... | head -1`: every command that prints tables ends quietly when stdout closes."""
    import os
    import subprocess
    import sys

    from harness.shards import write_shard

    (tmp_path / "a.txt").write_text("step:0/2 val_loss:10.8 train_time:0ms\nstep:2/2 val_loss:3.2 train_time:10ms\n")
    (tmp_path / "b.txt").write_text("step:0/2 val_loss:10.8 train_time:0ms\nstep:2/2 val_loss:3.3 train_time:12ms\n")
    history = tmp_path / "records"  # modded-nanogpt's records/ with one record folder
    (history / "010125_Record").mkdir(parents=True)
    for log in ("a.txt", "b.txt"):
        (history / "010125_Record" / log).write_bytes((tmp_path / log).read_bytes())
    commands = [["harness.stats", "loss", "3.27", "3.26", "3.25"],
                ["harness.compare", "--logs", f"a={tmp_path}", "--no-plot"],
                ["harness.leaderboard", "--records", str(tmp_path), "--out", str(tmp_path / "lb.md")],
                ["harness.verify", str(tmp_path)],
                ["harness.data", "inspect", str(write_shard(tmp_path / "s.bin", [50256, 1, 2]))],
                ["harness.history", str(history), "--json", "--out", str(tmp_path / "history")]]
    for argv in commands:
        read, write = os.pipe()
        os.close(read)  # the reader is gone before the first line: every write fails with EPIPE
        try:
            proc = subprocess.run([sys.executable, "-m", *argv], stdout=write, stderr=subprocess.PIPE, text=True,
                                  timeout=120)
        finally:
            os.close(write)
        assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, (argv, proc.stderr)
        assert proc.returncode == 1, (argv, proc.returncode, proc.stderr)


def test_olympic_interval_is_scipy_s_trimmed_mean_interval():
    # one run trimmed from each end of 10 is a 10% trim: scipy.stats.mstats.trimmed_mean_ci's Tukey-McLaughlin interval
    times = [80.61, 80.71, 80.68, 80.72, 80.75, 80.69, 80.66, 80.69, 80.76, 81.90]
    s = stats.olympic(times)
    low, high = scipy_stats.mstats.trimmed_mean_ci(np.array(times), limits=(0.1, 0.1))
    assert s.score == pytest.approx(scipy_stats.trim_mean(times, 0.1)) and s.used == 8
    assert (s.ci_low, s.ci_high) == pytest.approx((low, high))


def test_scores_of_too_few_runs_say_why():
    assert stats.olympic([1.0, 2.0]).fails == "2 runs: olympic scoring needs 3"
    three = stats.olympic([3.0, 1.0, 2.0])  # one run left: its mean, no interval
    assert three.score == 2 and math.isnan(three.ci_low)
    with pytest.raises(ValueError, match="scoring 'best'"):
        stats.score("best", [1.0, 2.0])


def test_runs_with_no_spread_are_tested_not_called_too_few():
    # three runs ending exactly at the target: scipy's t-test gives NaN, which read as "untested (n < 2)"
    at, below, above = stats.loss_rule([3.28] * 3, 3.28), stats.loss_rule([3.27] * 3, 3.28), stats.loss_rule([3.29] * 2, 3.28)
    assert (at.p, at.passes, at.verdict) == (1.0, False, "fails")
    assert (below.p, below.passes) == (0.0, True) and (above.p, above.passes) == (1.0, False)
    assert math.isnan(stats.loss_rule([3.27], 3.28).p) and stats.loss_rule([3.27], 3.28).passes is None


def test_cli_numbers_whose_sum_overflows_are_one_line(capsys):
    """1e308 twice overflows the mean: numpy's RuntimeWarnings (file paths and source lines) and a table of NaN."""
    assert stats.main(["times", "--baseline", "1e308", "1e308", "--candidate", "1", "2"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "error: --baseline: numbers too large to add up (their sum overflows a float)\n"
    assert captured.out == ""


def test_figures_without_spread_or_without_a_bounded_interval():
    """Fieller's interval is unbounded (NaN ends) where the new mean is not clearly above 0; identical runs need
    the fewest runs; Yuen's test has no interval and no p where both winsorized sets have no spread."""
    sp = stats.speedup([10.0, 10.1], [0.1, 20.0])
    assert sp.ratio == pytest.approx(10.05 / 10.05) and math.isnan(sp.ci_low) and math.isnan(sp.ci_high)
    same_a, same_b = stats.describe([80.0] * 3), stats.describe([79.0] * 3)
    assert stats.mean_difference([80.0] * 3, [79.0] * 3) == stats.Difference(-1.0, -1.0, -1.0)  # exact, as the ratio
    assert stats.runs_needed_difference(same_a.mean, same_a.std, same_b.mean, same_b.std) == 2
    y = stats.yuen([1.0, 2.0, 2.0, 2.0, 3.0], [1.0, 1.5, 1.5, 1.5, 2.0])
    assert (y.ratio, y.diff, y.test) == (2.0 / 1.5, -0.5, "Yuen")
    assert all(math.isnan(v) for v in (y.ci_low, y.ci_high, y.p_faster, y.p_two_sided))
