"""harness.leaderboard's plot: the loss axis covers the data and the target, and each record's time point carries
its 95% interval (stats.describe of the record's run times)."""
import pytest

from harness import leaderboard, stats
from test_harness_compare import ABLATION, ablation_log


def record(folder: str, name: str, times_ms: list[float]) -> dict:
    return {"folder": folder, "name": name, "date": "2026-12-01", "track": "cpu-tiny",
            "runs": [{"train_time_ms": t} for t in times_ms],
            "stats": {"train_time_ms": {"mean": sum(times_ms) / len(times_ms)}, "target_val_loss": 5.6}}


def test_short_ablation_records_are_drawn_with_their_intervals(tmp_path):
    import matplotlib.pyplot as plt

    for folder, losses in ABLATION.items():  # each record's runs/<run_id>/ holds one 10-step log
        ablation_log(tmp_path / folder / "runs" / "r0", "train.log", losses)
    records = [record("base", "base", [1000.0, 1100.0, 900.0]), record("lr", "lr", [800.0, 820.0, 780.0])]
    fig = leaderboard.draw(tmp_path, {"cpu-tiny": records})
    try:
        ax_time, ax_loss = fig.axes
        low, high = ax_loss.get_ylim()
        everything = [x for losses in ABLATION.values() for x in losses] + [5.6]
        assert low <= min(everything) and high >= max(everything)  # the curves and the target line are in view
        # the error bars: mean 1 s, std 0.1 s, n 3 -> t(0.975, 2) x 0.1 / sqrt 3 = 4.3027 x 0.057735 = 0.24841 s
        (bars,) = [c for c in ax_time.containers if hasattr(c, "lines")]
        segments = bars.lines[2][0].get_segments()
        (x0, y_low), (_, y_high) = segments[0]
        assert (y_low, y_high) == pytest.approx((1 - 0.24841, 1 + 0.24841), abs=1e-5)
        s = stats.describe([0.8, 0.82, 0.78])
        assert segments[1][0][1] == pytest.approx(s.ci_low) and segments[1][1][1] == pytest.approx(s.ci_high)
        assert ax_time.get_ylim()[1] >= 1 + 0.24841  # the top bar is in the frame
    finally:
        plt.close(fig)


def test_the_loss_axis_goes_to_a_log_scale_for_a_long_descent():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    try:
        leaderboard.loss_axis(ax, [10.9, 5.0, 3.30, 3.2775, float("nan")], 3.28)  # a first step's ~11: span 3.3 x
        assert ax.get_yscale() == "log"
        low, high = ax.get_ylim()
        assert low <= 3.2775 and high >= 10.9
    finally:
        plt.close(fig)


def test_recent_runs_show_their_overrides_and_flag_a_cpu_run_on_a_gpu_track(tmp_path):
    from harness.records import append_run

    heavy = ["--device=cpu", "--num_layers=2", "--model_dim=64", "--num_steps=10"]
    append_run({"run_id": "r-cpu", "track": "fineweb-124m", "status": "ok", "timestamp": "2026-12-01T00:00:00+00:00",
                "hardware": "CPU Fake CPU (2 cores)", "overrides": heavy}, tmp_path)
    append_run({"run_id": "r-gpu", "track": "fineweb-124m", "status": "ok", "timestamp": "2026-12-01T00:00:01+00:00",
                "hardware": "8x NVIDIA H100 80GB HBM3", "overrides": []}, tmp_path)
    page = leaderboard.render(tmp_path, tmp_path / "lb.md").read_text()
    (cpu_line,) = [line for line in page.splitlines() if "r-cpu" in line]
    (gpu_line,) = [line for line in page.splitlines() if "r-gpu" in line]
    assert cpu_line.rstrip(" |").endswith("**CPU run on a GPU track** (--device=cpu --num_layers=2 --model_dim=64 "
                                          "--num_steps=10)")
    assert gpu_line.rstrip(" |").endswith("| none")


def test_an_out_that_is_a_link_loop_is_a_usage_error_naming_it(tmp_path, capsys):
    """Path.resolve raised RuntimeError (Python < 3.13) on it: a traceback."""
    from harness import leaderboard

    (tmp_path / "records").mkdir()
    loop = tmp_path / "page.md"
    loop.symlink_to("page.md")
    with pytest.raises(SystemExit) as exc:
        leaderboard.main(["--records", str(tmp_path / "records"), "--out", str(loop)])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == \
        f"python -m harness.leaderboard: error: --out {loop}: Too many levels of symbolic links"


@pytest.mark.parametrize("make", [lambda p: None, lambda p: p.write_text("x\n")], ids=["missing", "a-file"])
def test_records_that_are_no_folder_are_a_usage_error_and_nothing_is_written(tmp_path, capsys, make):
    make(tmp_path / "records")
    with pytest.raises(SystemExit) as exc:
        leaderboard.main(["--records", str(tmp_path / "records")])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == \
        f"python -m harness.leaderboard: error: --records {tmp_path / 'records'}: no such directory"
    assert not (tmp_path / "leaderboard.md").exists()
