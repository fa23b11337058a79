"""harness.compare's run mode: what it checks before the first run, and how it stops."""
import shutil
import signal
from pathlib import Path
import sys

import pytest

from harness import compare
from harness.records import load_records
from harness.shards import BOS_ID, write_shard
from helpers import signal_at_step_5, unwritable_destinations, write_fake_trainer


@pytest.fixture
def kit(tmp_path):
    return {"script": write_fake_trainer(tmp_path / "code"), "runs": tmp_path / "runs", "records": tmp_path / "records"}


def test_compare_refuses_an_unwritable_destination_before_launch(kit, tmp_path, capsys):
    for case, runs_dir, records in unwritable_destinations(tmp_path):
        argv = ["--script", str(kit["script"]), "--runs-dir", str(runs_dir), "--records", str(records),
                "--variant", "a=", "--variant", "b=--steps=10", "--no-plot", "--no-leaderboard"]
        assert compare.main(argv) == 2, case
        captured = capsys.readouterr()
        assert captured.out == "" and len(captured.err.splitlines()) == 1, (case, captured)
        assert not runs_dir.is_dir() or not any(runs_dir.iterdir()), f"{case}: an orphan run folder"


def test_typo_in_the_second_variant_stops_everything_before_the_first_run(tmp_path, capsys):
    """With the real trainer: every variant's config is resolved (train_gpt.py --print_config) before any run."""
    runs, records = tmp_path / "runs", tmp_path / "records"
    shards = tmp_path / "shards"
    for name in ("train_000001.bin", "val_000000.bin"):  # --print_config checks that the shard globs match
        write_shard(shards / name, [BOS_ID, 1, 2, 3])
    data = f"--train_files={shards}/train_*.bin --val_files={shards}/val_000000.bin"
    argv = ["--runs-dir", str(runs), "--records", str(records), "--no-plot", "--no-leaderboard", "--seeds", "3",
            "--variant", f"base=--num_steps=10 {data}", "--variant", f"lr=--muon_lrr=0.06 {data}"]
    assert compare.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "error: --variant lr, seed 0: unknown option --muon_lrr (did you mean --muon_lr?)\n"
    assert not runs.exists() and not records.exists()


def test_compare_sigterm_records_the_run_and_exits_143(kit):
    cmd = [sys.executable, "-m", "harness.compare", "--script", str(kit["script"]), "--runs-dir", str(kit["runs"]),
           "--records", str(kit["records"]), "--no-plot", "--no-leaderboard", "--variant", "a=--hang_at=7",
           "--variant", "b="]
    rest = signal_at_step_5(cmd, signal.SIGTERM, runs_dir=kit["runs"])
    frame, problems = load_records(kit["records"])
    assert problems == [] and frame["status"].tolist() == ["interrupted"] and frame["name"].tolist() == ["a"]
    assert rest.strip().splitlines()[-1] == "interrupted (SIGTERM): the run was stopped and recorded as 'interrupted'"


def test_compare_runs_log_failing_mid_set_is_one_line(kit, monkeypatch, capsys):
    from harness import run

    def disk_full(row, records_dir):
        raise OSError(28, "No space left on device", str(records_dir / "runs.jsonl"))

    monkeypatch.setattr(run, "append_run", disk_full)
    argv = ["--script", str(kit["script"]), "--runs-dir", str(kit["runs"]), "--records", str(kit["records"]),
            "--variant", "a=--steps=10", "--variant", "b=--steps=10", "--no-plot", "--no-leaderboard"]
    assert compare.main(argv) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: run ") and "not recorded in the runs log" in line and "No space left" in line


def test_progress_bars_are_labelled_variant_k_of_n(kit, monkeypatch):
    from harness import run

    labels = []

    class Recording(run.ProgressBar):
        def __init__(self, desc):
            labels.append(desc)
            super().__init__(desc)

    monkeypatch.setattr(run, "ProgressBar", Recording)
    argv = ["--script", str(kit["script"]), "--runs-dir", str(kit["runs"]), "--records", str(kit["records"]),
            "--seeds", "2", "--variant", "base=--steps=10", "--variant", "lr=--steps=10", "--no-plot",
            "--no-leaderboard"]
    assert compare.main(argv) == 0
    assert labels == ["base 1/2", "lr 1/2", "base 2/2", "lr 2/2"]
    labels.clear()
    assert run.main(argv[:8] + ["--seed-start", "3", "--no-leaderboard", "--", "--steps=10"]) == 0
    assert labels == ["run 1/2 (seed 3)", "run 2/2 (seed 4)"]


def test_a_harness_failure_after_the_run_still_records_it(kit, monkeypatch, capsys):
    """The trainer finished; reading its run folder fails (a bug, a disk error): the run gets a row that says so."""
    from harness import run

    def broken(*args, **kwargs):
        raise RuntimeError("cannot read events.jsonl\nsecond line")

    monkeypatch.setattr(run, "run_row", broken)
    argv = ["--script", str(kit["script"]), "--runs-dir", str(kit["runs"]), "--records", str(kit["records"]),
            "--no-leaderboard", "--", "--steps=10"]
    assert run.main(argv) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: run ") and "recorded as 'harness_error'" in line and "cannot read events" in line
    frame, problems = load_records(kit["records"])
    assert problems == [] and frame["status"].tolist() == ["harness_error"]
    assert (Path(frame["run_dir"][0]) / "events.jsonl").is_file()


def test_a_variant_that_stops_at_the_target_is_refused_before_the_first_run(kit, capsys):
    # its seeds could end some stopped, some not, and the set would be refused halfway through
    argv = ["--script", str(kit["script"]), "--runs-dir", str(kit["runs"]), "--records", str(kit["records"]),
            "--variant", "a=--steps=10", "--variant", "b=--steps=10 --stop_at_target=1", "--no-plot", "--no-leaderboard"]
    assert compare.main(argv) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: --variant b, seed 0: --stop_at_target=true: a comparison's runs go their full")
    assert not kit["runs"].exists() and not kit["records"].exists()


def test_a_run_folder_copied_without_its_train_log_is_the_same_run(kit, tmp_path, capsys):
    # the copy's identity comes from its val events, the original's from its train.log: one run all the same
    from harness import run

    row = run.run_one(track="cpu-tiny", seed=0, name="a", script=kit["script"], overrides=["--steps=10"],
                      runs_dir=kit["runs"], records_dir=kit["records"], echo=False)
    other = run.run_one(track="cpu-tiny", seed=1, name="a", script=kit["script"], overrides=["--steps=10"],
                        runs_dir=kit["runs"], records_dir=kit["records"], echo=False)
    copy = kit["runs"] / f"{row['run_id']}-copy"
    shutil.copytree(row["run_dir"], copy)
    (copy / "train.log").unlink()
    capsys.readouterr()
    assert compare.main(["--logs", f"a={kit['runs']}", "--no-plot"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "are the same run" in err and copy.name in err and other["run_id"] not in err


def test_a_track_with_no_target_is_refused_before_the_first_run(kit, capsys):
    """--track unknown to harness/tracks.py without --target has no target to judge the runs by: refused before
    launch (it was found after every run had trained); with --target the track is taken."""
    argv = ["--script", str(kit["script"]), "--runs-dir", str(kit["runs"]), "--records", str(kit["records"]),
            "--track", "nope", "--variant", "a=", "--no-plot", "--no-leaderboard"]
    assert compare.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ("error: --track nope: not one of the tracks in harness/tracks.py, "
                                                   "so it has no default target; give --target\n")
    assert not kit["runs"].exists() and not kit["records"].exists()
    assert compare.main([*argv, "--target", "3.28"]) == 0
    assert load_records(kit["records"])[0]["track"].tolist() == ["nope"]


def test_a_runs_dir_that_is_a_file_is_named_not_a_folder(kit, tmp_path, capsys):
    """mkdir's 'PATH: File exists' said nothing of what is wrong with --runs-dir."""
    a_file = tmp_path / "a_file"
    a_file.write_text("x\n")
    argv = ["--script", str(kit["script"]), "--runs-dir", str(a_file), "--records", str(kit["records"]),
            "--variant", "a=", "--no-plot", "--no-leaderboard"]
    assert compare.main(argv) == 2
    assert capsys.readouterr().err == f"error: --runs-dir {a_file}: not a folder\n"
    assert a_file.read_text() == "x\n" and not kit["records"].exists()


def test_a_variant_whose_runs_all_crash_is_one_line_and_its_runs_are_recorded(kit, capsys):
    argv = ["--script", str(kit["script"]), "--runs-dir", str(kit["runs"]), "--records", str(kit["records"]),
            "--variant", "a=--steps=10", "--variant", "b=--steps=10 --crash_at=0", "--no-plot", "--no-leaderboard"]
    assert compare.main(argv) == 1
    (line,) = capsys.readouterr().err.splitlines()
    frame, problems = load_records(kit["records"])
    assert problems == [] and frame["status"].tolist() == ["ok", "crashed"]
    assert line.startswith(f"error: variant b: no finished runs to compare (left out: {frame['run_id'][1]} (crashed: ")
