"""The speedrun community's convention, everywhere: a run's time is the train time of its final validation,
every finished run counts, runs go their full schedule, and the loss rule (p < 0.01) certifies the target.

Sample logs are written here in modded-nanogpt's layout (tests/helpers.py's LOG_HEAD and LOG_STEPS); the
record-shaped set reuses the published times and losses of modded-nanogpt's 2026-07-17_FP8DownProjection
baseline (13 runs, three of which end above 3.28), so the figures can be checked against its statistics.md.
"""
import json

import pytest
from scipy import stats as scipy_stats

from harness import compare, leaderboard, stats, submit, verify
from harness.logs import load_run
from harness.run import group_summary, run_one
from helpers import FP8_BASE_L, FP8_BASE_T, LOG_HEAD as CODE, LOG_STEPS as STEPS, write_fake_trainer

# Published statistics.md of that baseline: mean train time 80.728615 s, std 0.065165 s, 13 runs, mean val
# loss 3.2782461538, one-sided p 0.0042976481.
PUBLISHED = dict(n=13, time_mean=80.728615, time_std=0.065165, loss_mean=3.2782461538, p=0.0042976481)


def log_text(final_ms: int, final_loss: float, *, steps: int = 1390, code: str = CODE, early: str = "3.2790") -> str:
    """A modded-nanogpt log whose final validation is at `final_ms` with `final_loss`; the validation at step
    1250 has loss `early` (below the target there: an early crossing that must not become the run's time)."""
    text = code + STEPS.replace("val_loss:3.3062", f"val_loss:{early}")
    text = text.replace("step:1390/1390 val_loss:3.2775 train_time:79532ms",
                        f"step:1390/1390 val_loss:{final_loss:.4f} train_time:{final_ms}ms")
    return text.replace("/1390", f"/{steps}").replace("step:1390/", f"step:{steps}/")


@pytest.fixture
def published_set(tmp_path):
    folder = tmp_path / "baseline"
    folder.mkdir()
    for i, (t, loss) in enumerate(zip(FP8_BASE_T, FP8_BASE_L)):
        (folder / f"run{i:02d}.txt").write_text(log_text(round(t * 1000), loss))
    return folder


def compare_json(capsys, *argv) -> dict:
    assert compare.main([*argv, "--json", "--no-plot"]) == 0
    return json.loads(capsys.readouterr().out)


def test_one_variant_gives_the_record_s_own_figures(published_set, capsys):
    fig = compare_json(capsys, "--logs", f"base={published_set}")
    (v,) = fig["variants"]
    assert v["n"] == PUBLISHED["n"]  # every run, the three that end above 3.28 too
    assert sum(loss > 3.28 for loss in FP8_BASE_L) == 3 and v["final_at_or_below_target"] == 10
    assert v["time_s"]["mean"] == pytest.approx(PUBLISHED["time_mean"], abs=5e-7)
    assert v["time_s"]["std"] == pytest.approx(PUBLISHED["time_std"], abs=5e-7)
    assert v["final_val_loss"]["mean"] == pytest.approx(PUBLISHED["loss_mean"], abs=5e-11)
    assert v["p_loss_below_target"] == pytest.approx(PUBLISHED["p"], abs=5e-11)
    assert v["passes_loss_rule"] is True and v["vs_baseline"] is None
    assert fig["target"] == 3.28 and "state none" in fig["target_source"]
    # the runs-needed figure is the power calculation at the observed mean and std
    s = stats.describe(FP8_BASE_L)
    assert v["runs_needed_loss_rule"] == stats.runs_needed_loss(s.mean, s.std, 3.28) == 17
    # every run's figures: the headline time is the final one, the early crossing an extra
    run = v["runs"][0]
    assert set(run) >= {"time_s", "first_crossing_s", "final_val_loss", "final_step", "planned_steps"}
    assert run["time_s"] == FP8_BASE_T[0] and run["first_crossing_s"] == 71.533  # step 1250's train time
    assert v["first_crossing_s"]["reached"] == 13


def test_one_variant_table(published_set, capsys):
    assert compare.main(["--logs", f"base={published_set}", "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "a run's time is its train time at its final validation, every finished run counts" in out
    assert "| base " in out and "80.7286 ± 0.0652" in out and "| passes " in out and "against the baseline" not in out


def test_comparison_json_is_complete(published_set, tmp_path, capsys):
    faster = tmp_path / "faster"
    faster.mkdir()
    for i, (t, loss) in enumerate(zip(FP8_BASE_T, FP8_BASE_L)):
        (faster / f"run{i:02d}.txt").write_text(log_text(round(t * 990), loss, code=CODE + "# faster\n"))
    fig = compare_json(capsys, "--logs", f"base={published_set}", f"fast={faster}")
    vs = fig["variants"][1]["vs_baseline"]
    base_t, fast_t = [t for t in FP8_BASE_T], [round(t * 990) / 1000 for t in FP8_BASE_T]
    assert vs["speedup"] == pytest.approx(sum(base_t) / sum(fast_t))
    assert vs["speedup_ci95"][0] < vs["speedup"] < vs["speedup_ci95"][1]
    welch = scipy_stats.ttest_ind(fast_t, base_t, equal_var=False)
    assert vs["p_time_two_sided"] == pytest.approx(welch.pvalue)
    assert vs["p_time_faster"] == pytest.approx(welch.pvalue / 2)
    assert vs["time_diff_s"] == pytest.approx(sum(fast_t) / 13 - sum(base_t) / 13)
    ci = welch.confidence_interval(0.95)
    assert vs["time_diff_ci95"] == pytest.approx([ci.low, ci.high])
    assert vs["p_loss_two_sided"] == pytest.approx(1.0)  # the same losses
    assert vs["runs_needed_per_variant"] >= 2


def test_a_log_given_twice_is_refused(published_set, capsys):
    (published_set / "copy.txt").write_text((published_set / "run00.txt").read_text() + "\n")
    assert compare.main(["--logs", f"base={published_set}", "--no-plot"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "are the same run" in err and "copy.txt" in err and "run00.txt" in err


@pytest.mark.parametrize("odd, differ", [
    (dict(steps=1400), "planned steps 1390 vs 1400"),
    (dict(code=CODE.replace("import os", "import sys")), "code "),
], ids=["steps", "code"])
def test_mixed_logs_are_refused_naming_both_files(published_set, capsys, odd, differ):
    (published_set / "zz_odd.txt").write_text(log_text(80700, 3.2770, **odd))
    assert compare.main(["--logs", f"base={published_set}", "--no-plot"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run00.txt and" in err and "zz_odd.txt differ" in err and differ in err


def test_target_source_is_stated(published_set, capsys):
    fig = compare_json(capsys, "--logs", f"base={published_set}", "--target", "3.279")
    assert (fig["target"], fig["target_source"]) == (3.279, "--target")
    fig = compare_json(capsys, "--logs", f"base={published_set}", "--track", "cpu-tiny")
    assert (fig["target"], fig["target_source"]) == (5.6, "track cpu-tiny's default: the logs state none")


def test_submit_and_compare_agree_with_runs_above_the_target(tmp_path, capsys):
    """Fake runs ending around the target: some above it. Every one counts, at its final train time, in compare,
    submit, verify, the leaderboard and harness.run's summary alike."""
    script = write_fake_trainer(tmp_path / "code")
    runs, records = tmp_path / "runs", tmp_path / "records"
    rows = [run_one(track="cpu-tiny", seed=seed, name="near", script=script, runs_dir=runs, records_dir=records,
                    overrides=["--end_loss=3.24", "--loss_noise=0.015"]) for seed in range(8)]
    capsys.readouterr()
    logs = [load_run(r["run_dir"]) for r in rows]
    assert any(log.final_val_loss > 3.28 for log in logs) and any(log.final_val_loss <= 3.28 for log in logs)
    assert any(log.time_to_target(3.28) not in (None, log.train_time_ms) for log in logs)  # an early crossing
    final_times = [log.train_time_ms for log in logs]

    ids = [r["run_id"] for r in rows]
    fig = compare_json(capsys, "--logs", "near=" + ",".join(ids), "--records", str(records))
    v = fig["variants"][0]
    assert v["n"] == 8 and v["time_s"]["mean"] == pytest.approx(sum(final_times) / 8000)
    p = stats.p_mean_below([log.final_val_loss for log in logs], 3.28)
    assert v["p_loss_below_target"] == pytest.approx(p)
    assert f"time {sum(final_times) / 8000:.2f} ± " in group_summary(rows)

    rc = submit.main(["--records", str(records), "--description", "d", "--name", "near", *ids])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert p < 0.01, f"the sample set should pass the loss rule (seeds 0-7 of the fake do, p = 0.004): {err}"
    folder = next(records.glob("*_near"))
    record = json.loads((folder / "record.json").read_text())
    assert record["schema"] == 3
    assert [r["train_time_ms"] for r in record["runs"]] == sorted(final_times, key=lambda t: ids[final_times.index(t)])
    assert record["stats"]["train_time_ms"]["mean"] / 1000 == pytest.approx(v["time_s"]["mean"])
    assert record["stats"]["n"] == 8 and record["stats"]["final_at_or_below_target"] == v["final_at_or_below_target"]
    assert verify.main([str(folder)]) == 0
    text = leaderboard.render(records, tmp_path / "lb.md").read_text()
    assert "A run's time is its train time at its final validation" in text


def test_runs_stopped_at_the_target_are_shown_and_refused(tmp_path, capsys):
    script = write_fake_trainer(tmp_path / "code")
    runs, records = tmp_path / "runs", tmp_path / "records"
    rows = [run_one(track="cpu-tiny", seed=seed, name="stop", script=script, runs_dir=runs, records_dir=records,
                    overrides=["--stop_at_target=1"]) for seed in (0, 1)]
    ids = [row["run_id"] for row in rows]
    assert group_summary(rows).endswith("; some runs stopped at the target (--stop_at_target): exploratory, not a record")
    capsys.readouterr()
    log = load_run(runs / ids[0])
    assert log.stopped_early and log.final_step < log.total_steps
    fig = compare_json(capsys, "--logs", "stop=" + ",".join(ids), "--records", str(records))
    assert fig["variants"][0]["stopped_early"] == 2
    assert compare.main(["--logs", "stop=" + ",".join(ids), "--records", str(records), "--no-plot"]) == 0
    assert "(2 stopped at the target)" in capsys.readouterr().out
    assert submit.main(["--records", str(records), "--no-leaderboard", "--description", "d", "--name", "x", *ids]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stopped at the target at step" in err and "(--stop_at_target=true)" in err
    assert "a record's runs go their full schedule" in err
    assert not [p for p in records.iterdir() if p.is_dir()]
    run_one(track="cpu-tiny", seed=2, name="full", script=script, runs_dir=runs, records_dir=records)
    recent = leaderboard.render(records, tmp_path / "lb.md").read_text().split("### Recent runs")[1]
    assert recent.count("(stopped at the target)") == 2  # the two stopped runs, not the full one


def test_a_text_log_that_stopped_early_is_not_a_full_run(tmp_path):
    text = ("step:0/400 val_loss:10.8 train_time:0ms step_avg:0.00ms\n"
            "step:20/400 val_loss:5.9 train_time:2000ms step_avg:100.00ms\n"
            "result: train_time 2000ms, 20/400 steps, 81,920 tokens, final val_loss 5.9000 ...\n")
    (tmp_path / "stopped.txt").write_text(text)
    log = load_run(tmp_path / "stopped.txt")
    assert log.status == "ok" and log.stopped_early and log.train_time_ms == 2000


def test_a_stopped_and_a_full_run_are_not_pooled(tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    full = "step:0/40 val_loss:10.8 train_time:0ms step_avg:0.00ms\nstep:40/40 val_loss:5.5 train_time:4000ms step_avg:100ms\n"
    (folder / "a_full.txt").write_text(full)
    (folder / "b_stopped.txt").write_text("step:0/40 val_loss:10.8 train_time:0ms step_avg:0.00ms\n"
                                          "step:20/40 val_loss:5.9 train_time:2000ms step_avg:100ms\n"
                                          "result: train_time 2000ms, 20/40 steps ...\n")
    assert compare.main(["--logs", f"m={folder}", "--no-plot", "--target", "6"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a_full.txt and" in err and "b_stopped.txt differ" in err and "stopped at the target" in err


def fake_run_ids(tmp_path, *overrides: str) -> list[str]:
    """The run ids of fake-trainer runs, one per override, seeds 0, 1, ..., recorded in tmp_path/records."""
    script = write_fake_trainer(tmp_path / "code")
    return [run_one(track="cpu-tiny", seed=seed, name="t", script=script, runs_dir=tmp_path / "runs",
                    records_dir=tmp_path / "records", overrides=[o])["run_id"] for seed, o in enumerate(overrides)]


@pytest.mark.parametrize("overrides, why", [
    (("--target_val_loss=3.28", "--target_val_loss=3.3"), "(target val loss 3.28 vs 3.3)"),
    (("--loss_noise=0.001", "--loss_noise=0.002"), "(config loss_noise 0.001 vs 0.002)")], ids=["target", "config"])
def test_runs_that_state_different_targets_or_configs_are_not_pooled(tmp_path, capsys, overrides, why):
    ids = fake_run_ids(tmp_path, *overrides)
    capsys.readouterr()
    assert compare.main(["--logs", "t=" + ",".join(ids), "--records", str(tmp_path / "records"), "--no-plot"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: variant t: ") and why in line


def test_variants_that_state_different_targets_need_one_given(tmp_path, published_set, capsys):
    a, b = fake_run_ids(tmp_path, "--target_val_loss=3.28", "--target_val_loss=3.3")
    capsys.readouterr()
    where = ["--records", str(tmp_path / "records"), "--no-plot"]
    assert compare.main(["--logs", f"a={a}", f"b={b}", *where]) == 1
    assert capsys.readouterr().err == "error: the runs state targets [3.28, 3.3]; choose one with --target\n"
    # the published logs state none: the default, 3.28, agrees with a's and not with b's
    assert compare.main(["--logs", f"pub={published_set}", f"a={a}", *where]) == 0
    assert "target val loss 3.28 (stated by 1 run(s); the FineWeb speedrun's for the 13 that state none)" \
        in capsys.readouterr().out
    assert compare.main(["--logs", f"pub={published_set}", f"b={b}", *where]) == 1
    assert capsys.readouterr().err == ("error: the runs state targets [3.3] and 13 state none (default 3.28); "
                                       "choose one with --target\n")
    assert compare.main(["--logs", f"pub={published_set}", f"b={b}", *where, "--target", "3.3"]) == 0
    assert "target val loss 3.3 (--target)" in capsys.readouterr().out


def test_a_diverged_log_is_named_and_one_run_is_untested(published_set, tmp_path, capsys):
    nan = log_text(80700, 3.2770).replace("val_loss:3.2770", "val_loss:nan")
    (published_set / "zz_nan.txt").write_text(nan)
    assert compare.main(["--logs", f"base={published_set}", "--no-plot"]) == 0
    out, err = capsys.readouterr()
    assert "| 13 (+1 diverged, left out) " in out and "zz_nan.txt (diverged)" in err
    one = tmp_path / "one"
    one.mkdir()
    (one / "only.txt").write_text(log_text(80700, 3.2770))
    fig = compare_json(capsys, "--logs", f"one={one}")
    assert fig["variants"][0]["passes_loss_rule"] is None and fig["variants"][0]["p_loss_below_target"] is None
    assert compare.main(["--logs", f"one={one}", "--no-plot"]) == 0
    assert "untested (n < 2)" in capsys.readouterr().out


def test_a_log_in_two_variants_is_noted(published_set, capsys):
    fig = compare_json(capsys, "--logs", f"a={published_set}", f"b={published_set}")
    assert len(fig["variants"][1]["notes"]) == 13 and "is also in variant a" in fig["variants"][1]["notes"][0]


def test_an_unknown_track_is_refused(published_set, capsys):
    assert compare.main(["--logs", f"base={published_set}", "--track", "cpu-tinny", "--no-plot"]) == 1
    assert "--track cpu-tinny: not one of the tracks in harness/tracks.py" in capsys.readouterr().err
