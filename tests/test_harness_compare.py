"""harness.compare's verdicts: one line per variant ends every comparison, with figures worked out by hand here.

Three runs per variant keep the arithmetic short: times 100, 102, 98 s (mean 100, std 2) against
90, 92, 88 s (mean 90, std 2); final losses 3.269, 3.270, 3.271 (mean 3.270, std 0.001) against the
target 3.28. The one-sided t of the loss rule is -0.01 / (0.001 / sqrt 3) = -10 sqrt 3 on 2 degrees of
freedom, where the t distribution's cdf is 1/2 + t / (2 sqrt(2 + t^2)): p = 0.5 - 17.3205 / (2 x 17.3781) = 0.00166.
"""
import json

import pytest

from harness import compare, stats
from test_harness_convention import log_text

BASE_T, FAST_T = [100.0, 102.0, 98.0], [90.0, 92.0, 88.0]
PASS_L, FAIL_L = [3.269, 3.270, 3.271], [3.284, 3.285, 3.286]


def write_set(folder, times, losses):
    folder.mkdir()
    for i, (t, loss) in enumerate(zip(times, losses)):
        (folder / f"run{i}.txt").write_text(log_text(round(t * 1000), loss))
    return folder


def verdict_lines(tmp_path, capsys, **sets) -> tuple[list[str], dict]:
    """compare --logs on the sets (name -> (times, losses)), baseline first: (the text's verdict lines, --json)."""
    args = [f"{name}={write_set(tmp_path / name, *tl)}" for name, tl in sets.items()]
    assert compare.main(["--logs", *args, "--no-plot"]) == 0
    text = capsys.readouterr().out
    assert compare.main(["--logs", *args, "--no-plot", "--json"]) == 0
    fig = json.loads(capsys.readouterr().out)
    lines = [ln for ln in text.splitlines() if ln.startswith(("verdict:", "inconclusive:", "not comparable:"))]
    assert lines == [v["line"] for v in fig["verdicts"]]  # the text's last lines are the JSON's verdicts
    assert text.rstrip().splitlines()[-len(lines):] == lines
    return lines, fig


def test_faster_and_passing(tmp_path, capsys):
    # speedup 100 / 90 = 1.1111: 11.11% faster. Fieller: v = 4 / 3 per group, Welch-Satterthwaite df
    # (v + R^2 v)^2 / (v^2 / 2 + R^4 v^2 / 2) = 3.9564, t_0.975 = 2.78855; the roots of
    # (8100 - t^2 v) R^2 - 18000 R + (10000 - t^2 v) = 0 are 1.05900 and 1.16607. Welch t = -10 / sqrt(2 x 4 / 3)
    # = -6.1237 on 4 df: one-sided p = 0.0018.
    lines, fig = verdict_lines(tmp_path, capsys, base=(BASE_T, PASS_L), fast=(FAST_T, PASS_L))
    assert lines == ["verdict: fast is faster than base by 11.11% (95% CI 5.90% to 16.61%, p = 0.0018) "
                     "and passes the loss rule (p = 0.0017)"]
    assert fig["verdicts"][0]["kind"] == "verdict" and fig["verdicts"][0]["variant"] == "fast"


def test_slower_and_passing(tmp_path, capsys):
    # the same sets the other way round: the new run takes 100 / 90 - 1 = 11.11% longer; its interval is the
    # faster case's inverted: 1 / (90 / 100 bounds) -> 1.05900 .. 1.16607 again, by symmetry of the sets.
    lines, _ = verdict_lines(tmp_path, capsys, base=(FAST_T, PASS_L), slow=(BASE_T, PASS_L))
    assert lines == ["verdict: slow is slower than base by 11.11% (95% CI 5.90% to 16.61%, p = 0.0018) "
                     "and passes the loss rule (p = 0.0017)"]


def test_failing_the_loss_rule_is_not_a_result(tmp_path, capsys):
    # losses 3.284..3.286: t = +0.005 / (0.001 / sqrt 3) = 5 sqrt 3; p = 0.5 + 8.6603 / (2 sqrt 77) = 0.99
    lines, fig = verdict_lines(tmp_path, capsys, base=(BASE_T, PASS_L), idea=(FAST_T, FAIL_L))
    assert lines == ["not comparable: idea fails the loss rule (p = 0.99); idea's speedup is not a result"]
    assert fig["verdicts"][0]["kind"] == "not comparable"
    assert compare.main(["--logs", f"base={tmp_path / 'base'}", f"idea={tmp_path / 'idea'}", "--no-plot"]) == 0
    assert "(not a result: idea fails the loss rule (p = 0.99))" in capsys.readouterr().out  # the table marks it


def test_a_failing_baseline_makes_no_speedup_a_result(tmp_path, capsys):
    lines, _ = verdict_lines(tmp_path, capsys, base=(BASE_T, FAIL_L), idea=(FAST_T, PASS_L))
    assert lines == ["not comparable: the baseline base fails the loss rule (p = 0.99); idea's speedup is not a result"]


def test_inconclusive_says_how_many_runs_would_resolve(tmp_path, capsys):
    # means 100 and 99: a 1.00% difference; speedup 100 / 99 = 1.0101 whose interval contains 1
    near = [99.0, 101.0, 97.0]
    lines, _ = verdict_lines(tmp_path, capsys, base=(BASE_T, PASS_L), near=(near, PASS_L))
    needed = stats.runs_needed_difference(100.0, 2.0, 99.0, 2.0)  # d = 1 / 2 = 0.5: the textbook 64 per group
    assert needed == 64
    assert len(lines) == 1 and lines[0].startswith("inconclusive: near vs base: speedup +1.01% (95% CI ")
    assert lines[0].endswith("; about 64 runs per variant would resolve a 1.00% difference")


def test_a_wide_time_spread_is_named_as_noise(tmp_path, capsys):
    # std 10 s on a mean of 100 s: 10.00% of the mean, above NOISY_SPREAD (3%)
    assert compare.NOISY_SPREAD == 0.03
    lines, _ = verdict_lines(tmp_path, capsys, base=([100.0, 110.0, 90.0], PASS_L))
    assert lines == ["verdict: base passes the loss rule (p = 0.0017, 3 runs); "
                     "noise: base's times spread 10.00% of their mean (above 3%)"]


def test_one_variant_is_judged_on_the_loss_rule(tmp_path, capsys):
    assert verdict_lines(tmp_path, capsys, a=(BASE_T, PASS_L))[0] == [
        "verdict: a passes the loss rule (p = 0.0017, 3 runs)"]
    assert verdict_lines(tmp_path, capsys, b=(BASE_T, FAIL_L))[0] == [
        "verdict: b fails the loss rule (p = 0.99): its mean val loss 3.28500 is not below the target 3.28"]
    assert verdict_lines(tmp_path, capsys, c=([100.0], [3.27]))[0] == [
        "inconclusive: c has 1 run; the loss rule needs at least 2"]
    # mean 3.279 just below the target with std 0.001 (t = -sqrt 3, p = 0.11): more runs would pass it
    lines = verdict_lines(tmp_path, capsys, d=(BASE_T, [3.278, 3.279, 3.280]))[0]
    assert len(lines) == 1 and lines[0].startswith("inconclusive: d fails the loss rule (p = 0.11, 3 runs); about ")


def ablation_log(folder, name, losses):
    """A 10-step ablation's log: validation every other step, every loss far above a 5.6 target."""
    lines = [f"step:{s}/10 val_loss:{loss:.4f} train_time:{s * 100}ms step_avg:{s and 100}ms"
             for s, loss in zip(range(0, 11, 2), losses)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("\n".join(lines) + "\n")
    return folder / name


ABLATION = {"base": [10.83, 9.1, 8.2, 7.7, 7.4, 7.21], "lr": [10.83, 8.9, 7.9, 7.5, 7.3, 7.12]}


@pytest.mark.parametrize("xlabel", ["train time (s)", "step"])
def test_the_curves_of_a_short_ablation_are_in_the_frame(tmp_path, xlabel):
    import matplotlib.pyplot as plt

    from harness.logs import load_run

    variants = [compare.Variant(name, logs=[load_run(ablation_log(tmp_path / name, "run.txt", losses))])
                for name, losses in ABLATION.items()]
    fig = compare.curves_figure(variants, 5.6, xlabel)
    try:
        (ax,) = fig.axes
        low, high = ax.get_ylim()
        everything = [x for losses in ABLATION.values() for x in losses] + [5.6]  # the target line too
        assert low <= min(everything) and high >= max(everything)
        assert high - low < 2 * (max(everything) - min(everything))  # the frame is the data's, not an empty page
        assert ax.get_yscale() == "linear"  # 10.83 / 5.6 < LOG_SCALE_SPAN
    finally:
        plt.close(fig)
