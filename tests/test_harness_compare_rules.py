"""compare's rules beyond the community's default: pooling logs of different code (--allow-code-diff), the
olympic and median scorings (--scoring), and the optimization track's steps rule (--rule steps).

Logs are written in modded-nanogpt's format (tests/helpers.py: the code, versions, nvidia-smi, step lines); every
expected figure is computed by hand in the comments.
"""
import json
import math

import pytest
from scipy import stats as scipy_stats

from harness import compare, stats
from helpers import CODE, FP8_BASE_L, FP8_BASE_T, HEADER, modded_log, write


def compare_json(capsys, *argv) -> dict:
    assert compare.main([*argv, "--json", "--no-plot"]) == 0
    return json.loads(capsys.readouterr().out)


def short_log(total: int, final_loss: float, final_ms: int = 60000, code: str = CODE) -> str:
    """A modded-nanogpt log of `total` steps: validation at 0, total // 2 and total, the last at `final_loss`."""
    lines = []
    for step, loss in ((0, 10.8258), (total // 2, final_loss + 0.5), (total, final_loss)):
        t = round(final_ms * step / total)
        lines.append(f"step:{step}/{total} val_loss:{loss:.4f} train_time:{t}ms step_avg:{t / max(step, 1):.2f}ms")
    return code + HEADER + "\n".join(lines) + "\npeak memory allocated: 30908 MiB reserved: 46472 MiB\n"


# ----------------------------------------------------------------------------------------------
# --allow-code-diff

def named(run: str) -> str:
    return CODE + f'run_id = "{run}"\n'


@pytest.fixture
def mixed_code(tmp_path):
    folder = tmp_path / "pr"
    for i, (ms, loss) in enumerate([(80000, 3.2770), (80500, 3.2760), (81000, 3.2750)]):
        write(folder, f"run{i}.txt", modded_log(ms, loss, code=named("record_a" if i < 2 else "record_b")))
    return folder


def test_code_that_differs_is_refused_with_the_differing_lines(mixed_code, capsys):
    assert compare.main(["--logs", f"pr={mixed_code}", "--no-plot"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run0.txt and" in err and "run2.txt differ (code " in err
    assert "line 11 'run_id = \"record_a\"' vs line 11 'run_id = \"record_b\"'" in err
    assert "--allow-code-diff" in err


def test_allow_code_diff_pools_and_says_so(mixed_code, capsys):
    fig = compare_json(capsys, "--logs", f"pr={mixed_code}", "--allow-code-diff")
    (v,) = fig["variants"]
    assert v["n"] == 3 and v["pooled_across_code"] is True
    (diff,) = v["code_differences"]
    assert "run0.txt and" in diff and "run2.txt" in diff and "'run_id = \"record_b\"'" in diff
    assert v["time_s"]["mean"] == pytest.approx(80.5)  # (80 + 80.5 + 81) / 3
    assert compare.main(["--logs", f"pr={mixed_code}", "--allow-code-diff", "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "pooled across different code, --allow-code-diff" in out


def test_allow_code_diff_reproduces_a_published_set_that_names_its_runs(tmp_path, capsys):
    # modded-nanogpt's 2026-07-17_FP8DownProjection baseline (13 runs), its last run's code naming another run:
    # pooled, the published statistics.md's figures (mean 80.728615 s, std 0.065165 s, loss 3.2782461538,
    # p 0.0042976481)
    for i, (t, loss) in enumerate(zip(FP8_BASE_T, FP8_BASE_L)):
        write(tmp_path / "set", f"run{i:02d}.txt",
              modded_log(round(t * 1000), loss, code=named("record_b" if i == 12 else "record_a")))
    fig = compare_json(capsys, "--logs", f"set={tmp_path / 'set'}", "--allow-code-diff")
    (v,) = fig["variants"]
    assert v["n"] == 13 and len(v["code_differences"]) == 1
    assert v["time_s"]["mean"] == pytest.approx(80.728615, abs=5e-7)
    assert v["time_s"]["std"] == pytest.approx(0.065165, abs=5e-7)
    assert v["final_val_loss"]["mean"] == pytest.approx(3.2782461538, abs=5e-11)
    assert v["p_loss_below_target"] == pytest.approx(0.0042976481, abs=5e-11)


# ----------------------------------------------------------------------------------------------
# --scoring olympic | median

def write_set(folder, runs):
    for i, (ms, loss) in enumerate(runs):
        write(folder, f"run{i}.txt", modded_log(ms, loss))
    return folder


def test_olympic_drops_the_fastest_and_the_slowest(tmp_path, capsys):
    # 80 81 82 83 90 s: the olympic mean is (81 + 82 + 83) / 3 = 82; winsorized 81 81 82 83 83 has std 1, so
    # se = 1 * sqrt(5) / 3 and the interval is 82 -+ t(0.975, 2) * se = 82 -+ 4.302653 * 0.745356 = 82 -+ 3.207008.
    folder = write_set(tmp_path / "a", [(t * 1000, 3.2775) for t in (83, 80, 90, 81, 82)])
    fig = compare_json(capsys, "--logs", f"a={folder}", "--scoring", "olympic")
    s = fig["scoring"]["variants"][0]["score"]
    assert (s["rule"], s["n"], s["used"], s["misses"], s["fails"]) == ("olympic", 5, 3, 0, None)
    assert s["score"] == pytest.approx(82.0)
    assert s["ci95"] == pytest.approx([82 - 3.207008, 82 + 3.207008], abs=1e-5)
    assert fig["variants"][0]["time_s"]["mean"] == pytest.approx(83.2)  # the default's figures stay


def test_olympic_counts_a_miss_as_the_slowest_and_two_misses_fail(tmp_path, capsys):
    # the 81 s run misses the target: it is dropped as the slowest, with the fastest (80): (82 + 83 + 84) / 3 = 83
    one = write_set(tmp_path / "one", [(80000, 3.2775), (81000, 3.2850), (82000, 3.2775), (83000, 3.2775),
                                       (84000, 3.2775)])
    s = compare_json(capsys, "--logs", f"one={one}", "--scoring", "olympic")["scoring"]["variants"][0]["score"]
    assert s["score"] == pytest.approx(83.0) and s["misses"] == 1 and s["fails"] is None
    two = write_set(tmp_path / "two", [(80000, 3.2775), (81000, 3.2850), (82000, 3.2900), (83000, 3.2775)])
    s = compare_json(capsys, "--logs", f"two={two}", "--scoring", "olympic")["scoring"]["variants"][0]["score"]
    assert s["score"] is None and s["misses"] == 2 and "2 runs missed the target" in s["fails"]
    assert compare.main(["--logs", f"two={two}", "--scoring", "olympic", "--no-plot"]) == 0
    assert "fails: 2 runs missed the target" in capsys.readouterr().out


def test_a_run_left_out_is_a_miss_under_olympic_scoring(tmp_path, capsys):
    # five finished runs and two that diverged: MLPerf counts every launched run, so the two are misses and the
    # set gets no olympic score; the community's mean scores the five finished runs
    runs = [(80000, 3.2775), (81000, 3.2775), (82000, 3.2775), (83000, 3.2775), (84000, 3.2775)]
    folder = write_set(tmp_path / "set", runs)
    for i in range(2):
        write(folder, f"diverged{i}.txt", modded_log(85000 + i, math.nan))
    s = compare_json(capsys, "--logs", f"set={folder}", "--scoring", "olympic")["scoring"]["variants"][0]["score"]
    assert s["score"] is None and s["misses"] == 2 and "2 runs missed the target" in s["fails"]
    assert compare.main(["--logs", f"set={folder}", "--scoring", "olympic", "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == "not comparable: set gets no olympic score (2 runs missed the target (at most 1))"


def test_the_verdict_follows_the_scoring_and_the_steps_rule(tmp_path, capsys):
    # idea: six runs at 3.2700 and two at 3.2801, mean 3.272525, std 0.004677: the loss rule passes (t = -4.52,
    # p = 0.0014) and the mean speedup is clear, but two runs missed the target: no olympic score, no result
    base = write_set(tmp_path / "base", [(t, 3.2700) for t in (90000, 90500, 91000, 91500, 92000)])
    idea = write_set(tmp_path / "idea", [(t, 3.2700) for t in (80000, 80300, 80600, 80900, 81200, 81500)]
                     + [(81800, 3.2801), (82100, 3.2801)])
    fig = compare_json(capsys, "--logs", f"base={base}", f"idea={idea}", "--scoring", "olympic")
    assert fig["variants"][1]["passes_loss_rule"] is True and fig["variants"][1]["vs_baseline"]["speedup_ci95"][0] > 1
    (line,) = [v["line"] for v in fig["verdicts"] if v["variant"] == "idea"]
    assert line.startswith("not comparable: idea gets no olympic score (2 runs missed the target")
    # the steps rule adds its own line: both sets end at 1390 steps with mean losses 3.27 and 3.2725
    fig = compare_json(capsys, "--logs", f"base={base}", f"idea={idea}", "--rule", "steps")
    steps = [v["line"] for v in fig["verdicts"] if v["line"].split(":")[0].endswith("(steps rule)")]
    assert len(steps) == 2 and steps[0].startswith("verdict (steps rule): base is valid")
    # pairwise: (3.27 - 3.272525 + 0) / sqrt(1/5 + 1/8) = -0.00443 < 0.004
    assert steps[1].startswith("inconclusive (steps rule): idea is valid (") and \
        "not shown better than base on the steps rule (pairwise -0.004429 vs 0.004, +0 steps saved)" in steps[1]


def test_olympic_against_a_baseline_is_yuen_s_trimmed_test(tmp_path, capsys):
    base_t, new_t = [80, 81, 82, 83, 90, 81.5], [79, 80.2, 81, 82, 84, 79.5]
    base = write_set(tmp_path / "base", [(round(t * 1000), 3.2775) for t in base_t])
    new = write_set(tmp_path / "new", [(round(t * 1000), 3.2775) for t in new_t])
    vs = compare_json(capsys, "--logs", f"base={base}", f"new={new}", "--scoring", "olympic")["scoring"]["variants"][1]["vs_baseline"]
    # olympic means: base (81 + 81.5 + 82 + 83) / 4 = 81.875, new (79.5 + 80.2 + 81 + 82) / 4 = 80.675
    assert vs["diff"] == pytest.approx(80.675 - 81.875) and vs["ratio"] == pytest.approx(81.875 / 80.675)
    yuen = scipy_stats.ttest_ind(new_t, base_t, equal_var=False, trim=1 / 6)  # equal n, no misses: scipy's Yuen
    assert vs["p_two_sided"] == pytest.approx(yuen.pvalue) and vs["test"] == "Yuen"
    assert vs["p_faster"] == pytest.approx(yuen.pvalue / 2)  # the new set is the faster one


def test_median_with_its_order_statistic_interval_and_mann_whitney(tmp_path, capsys):
    # 9 runs, 81 .. 89 s: the median is 85; the 95% order-statistic interval is (x(2), x(8)) = (82, 88):
    # P(2 <= B <= 7) = 1 - 2 * (1 + 9) / 512 = 0.961 >= 0.95, while (x(3), x(7)) covers 1 - 2 * 46 / 512 = 0.82.
    base = write_set(tmp_path / "base", [(t * 1000, 3.2775) for t in range(81, 90)])
    new = write_set(tmp_path / "new", [(t * 1000, 3.2775) for t in range(70, 79)])
    fig = compare_json(capsys, "--logs", f"base={base}", f"new={new}", "--scoring", "median")
    s, vs = fig["scoring"]["variants"][0]["score"], fig["scoring"]["variants"][1]["vs_baseline"]
    assert s["score"] == 85 and s["ci95"] == [82, 88]
    # every new run is faster than every baseline run: U = 0, exact one-sided p = 1 / C(18, 9) = 1 / 48620
    assert vs["p_faster"] == pytest.approx(1 / math.comb(18, 9)) and vs["test"] == "Mann-Whitney"
    assert vs["ratio"] == pytest.approx(85 / 74) and vs["diff"] == pytest.approx(-11)


def test_median_of_too_few_runs_has_no_interval():
    s = stats.median([3, 1, 2, 5, 4])  # the widest order-statistic interval covers 1 - 2 / 32 = 0.9375 < 0.95
    assert s.score == 3 and math.isnan(s.ci_low) and math.isnan(s.ci_high)


def test_an_unknown_scoring_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        compare.main(["--logs", f"a={tmp_path}", "--scoring", "best"])
    assert exc.value.code == 2 and "invalid choice: 'best'" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# --rule steps: modded-nanogpt's optimization track (records/track_3_optimization/README.md)

def test_the_track_s_own_examples():
    # "for a single non-cherry-picked run, any val loss below 3.276 suffices, and for n=4 runs, any average below
    # 3.278": (3.28 - mean) * sqrt(n) >= 0.004
    assert stats.below_margin([3.2759], 3.28) >= stats.STEPS_MARGIN > stats.below_margin([3.2761], 3.28)
    assert stats.below_margin([3.2779] * 4, 3.28) >= stats.STEPS_MARGIN > stats.below_margin([3.2781] * 4, 3.28)
    # "((3.2778 - 3.2785) + (40/100 * 0.0045)) / (1/10 + 1/16)**0.5 = 0.0027": 0.0011 / 0.403113 = 0.0027288
    assert stats.pairwise_margin([3.2778] * 10, 3250, [3.2785] * 16, 3210) == pytest.approx(0.0027288, abs=1e-7)
    # "final_loss_diff = -0.0002, exp_stepbased_loss_diff = 50/100*0.0045 = 0.00225, n1 = n2 = 20 ... 0.00648"
    assert stats.pairwise_margin([3.2788] * 20, 3375, [3.2790] * 20, 3325) == pytest.approx(0.0064827, abs=1e-7)


def test_steps_to_target_and_the_validity_condition(tmp_path, capsys):
    # tests/helpers.steps validates at 0, 250, ..., 1250 and 1390 with loss final + 7.5 (1 - step / 1390)^3:
    # a final 3.2700 gives 3.2777 at 1250 (first at or below 3.28: step 1250); 3.2775 gives 3.2852 there (step
    # 1390); 3.2900 never reaches it.
    folder = write_set(tmp_path / "a", [(80000, 3.2700), (80100, 3.2700), (80200, 3.2775), (80300, 3.2775),
                                        (80400, 3.2900)])
    fig = compare_json(capsys, "--logs", f"a={folder}", "--rule", "steps")
    assert fig["steps_rule"]["sigma"] == 0.0013 and fig["steps_rule"]["margin"] == 0.004
    v = fig["steps_rule"]["variants"][0]
    assert [r["first_step_at_or_below_target"] for r in v["runs"]] == [1250, 1250, 1390, 1390, None]
    assert v["reached"] == 4 and v["first_step_at_or_below_target"]["mean"] == pytest.approx(1320)
    # mean final loss (2 * 3.27 + 2 * 3.2775 + 3.29) / 5 = 3.2770: (3.28 - 3.277) * sqrt 5 = 0.0067082 >= 0.004;
    # z = -0.003 / (0.0013 / sqrt 5) = -5.160157
    assert v["steps"] == 1390 and v["mean_final_val_loss"] == pytest.approx(3.277)
    assert v["below_margin"] == pytest.approx(0.0067082, abs=1e-7) and v["valid"] is True
    assert v["p_z_loss_below_target"] == pytest.approx(scipy_stats.norm.cdf(-5.160157), rel=1e-5)
    # at step 1250 the mean is (2 * 3.2777 + 2 * 3.2852 + 3.2977) / 5 = 3.2847, above the target: 1390 is the first
    assert v["earliest_valid_step"] == 1390
    low = write_set(tmp_path / "low", [(80000, 3.2600), (80100, 3.2610)])
    # at 1250: 3.2677 and 3.2687, mean 3.2682: (3.28 - 3.2682) * sqrt 2 = 0.0167 >= 0.004; at 1000: 3.2600 +
    # 7.5 (390 / 1390)^3 = 3.4257 and 3.4267, above
    v = compare_json(capsys, "--logs", f"low={low}", "--rule", "steps")["steps_rule"]["variants"][0]
    assert v["earliest_valid_step"] == 1250
    # a stated sigma scales the threshold (0.004 is 3.09 x the track's 0.0013): with sigma 0.01 it is 0.030769,
    # and the first set's 0.0067082 is not valid, nor is any step of it
    steps = compare_json(capsys, "--logs", f"a={folder}", "--rule", "steps", "--loss-sigma", "0.01")["steps_rule"]
    assert steps["margin"] == pytest.approx(0.004 * 0.01 / 0.0013)
    v = steps["variants"][0]
    assert v["valid"] is False and v["earliest_valid_step"] is None


def test_the_pairwise_rule_trades_loss_against_steps(tmp_path, capsys):
    # baseline: 1000 steps, final 3.280 and 3.282 (mean 3.281); variant: 900 steps, final 3.283 and 3.285 (3.284).
    # (3.281 - 3.284 + 0.0045 * 100 / 100) / sqrt(1/2 + 1/2) = 0.0015 < 0.004: not shown better.
    for i, loss in enumerate((3.280, 3.282)):
        write(tmp_path / "base", f"r{i}.txt", short_log(1000, loss))
    for i, loss in enumerate((3.283, 3.285)):
        write(tmp_path / "new", f"r{i}.txt", short_log(900, loss))
    logs = ("--logs", f"base={tmp_path / 'base'}", f"new={tmp_path / 'new'}", "--rule", "steps")
    vs = compare_json(capsys, *logs)["steps_rule"]["variants"][1]["vs_baseline"]
    assert vs["steps_saved"] == 100 and vs["loss_diff"] == pytest.approx(-0.003)
    assert vs["pairwise_margin"] == pytest.approx(0.0015) and vs["better"] is False
    # at 0.045 per 100 steps the 100 steps saved are worth 0.045: (-0.003 + 0.045) / 1 = 0.042, better
    vs = compare_json(capsys, *logs, "--steps-rate", "0.045")["steps_rule"]["variants"][1]["vs_baseline"]
    assert vs["pairwise_margin"] == pytest.approx(0.042) and vs["better"] is True
    assert compare.main([*logs, "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "the steps rule of modded-nanogpt's optimization track" in out
    assert "0.00150: not shown better" in out and "not valid" in out  # 3.281 is above the target


@pytest.mark.parametrize("option", ["--loss-sigma", "--steps-rate"])
@pytest.mark.parametrize("value, why", [("-1", "'-1' is not above 0"), ("0", "'0' is not above 0"),
                                        ("nan", "'nan' is not a finite number")])
def test_a_steps_rule_scale_that_is_not_above_0_is_a_usage_error(tmp_path, capsys, option, value, why):
    """A negative --loss-sigma made the steps rule's margin negative, so a run short of the target read 'valid'."""
    log = tmp_path / "a.txt"
    log.write_text(short_log(1000, 3.279))
    with pytest.raises(SystemExit) as exc:
        compare.main(["--logs", f"a={log}", "--rule", "steps", option, value, "--no-plot"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"python -m harness.compare: error: argument {option}: {why}"
