"""harness.run with the fake trainer: every way a run ends is recorded, Ctrl-C included."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from harness import run
from harness.records import load_records
from helpers import ctrl_c_at_step_5, processes_running, signal_at_step_5, unwritable_destinations, write_fake_trainer


@pytest.fixture
def kit(tmp_path):
    return {"script": write_fake_trainer(tmp_path / "code"), "runs": tmp_path / "runs", "records": tmp_path / "records"}


def run_fake(kit, *overrides, seed=0, timeout=None):
    return run.run_one(track="cpu-tiny", seed=seed, name="t", script=kit["script"], overrides=overrides,
                       timeout=timeout, runs_dir=kit["runs"], records_dir=kit["records"])


def only_row(kit):
    frame, problems = load_records(kit["records"])
    assert problems == [] and len(frame) == 1
    return frame.iloc[0].to_dict()


def test_ok_run_row(kit):
    row = run_fake(kit, "--steps=10", "--val_every=5", seed=4)
    assert row == {k: v for k, v in only_row(kit).items() if k in row}
    assert row["status"] == "ok" and row["seed"] == 4 and row["steps"] == 10
    assert row["overrides"] == ["--steps=10", "--val_every=5"]
    assert row["code_hash"] and row["hardware"] == "CPU Fake CPU (2 cores)" and row["python"]
    assert row["reached_target"] and row["time_to_target_ms"] > 0 and row["final_val_loss"] < 3.28
    console = (kit["runs"] / row["run_id"] / "console.log").read_text()
    assert "step:10/10 val_loss:" in console and "fake trainer" in console


def test_diverged_run(kit):
    row = run_fake(kit, "--nan_at=10")
    assert row["status"] == "diverged" and row["final_val_loss"] is None and only_row(kit)["status"] == "diverged"


def test_a_run_whose_loss_explodes_but_stays_finite_is_diverged(kit):
    # the trainer's result says ok; the losses (above 2 x ln(vocab) = 21.6) say otherwise
    row = run_fake(kit, "--start_loss=40.0", "--end_loss=30.0")
    assert row["status"] == "diverged" and only_row(kit)["status"] == "diverged"


def test_crash_without_result_is_crashed(kit):
    row = run_fake(kit, "--crash_at=12")
    assert row["status"] == "crashed" and row["returncode"] == 1
    assert row["final_val_loss"] is not None  # the last validation before the crash (step 10)
    assert "RuntimeError: fake crash" in (kit["runs"] / row["run_id"] / "console.log").read_text()


def test_timeout(kit):
    start = time.monotonic()
    row = run_fake(kit, "--hang_at=3", timeout=1.5)
    assert row["status"] == "timeout" and time.monotonic() - start < run.STOP_GRACE_S + 5
    assert only_row(kit)["status"] == "timeout"


@pytest.mark.timeout(60, method="thread")  # a harness that only asks would wait for the trainer forever
def test_a_trainer_that_ignores_sigint_and_sigterm_is_killed_and_its_run_recorded(kit, monkeypatch):
    text = kit["script"].read_text()
    kit["script"].write_text(text.replace("        if step == cfg[\"hang_at\"]:\n", "        if step == cfg[\"hang_at\"]:\n"
                                          "            import signal\n"
                                          "            signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                                          "            signal.signal(signal.SIGTERM, signal.SIG_IGN)\n", 1))
    monkeypatch.setattr(run, "STOP_GRACE_S", 0.5)
    row = run_fake(kit, "--hang_at=3", timeout=1.0)
    assert row["status"] == "timeout" and row["returncode"] == -signal.SIGKILL and only_row(kit)["status"] == "timeout"
    assert not processes_running(kit["script"]), "the trainer was left running"


def test_ctrl_c_records_interrupted(kit):
    cmd = [sys.executable, "-m", "harness.run", "--script", str(kit["script"]), "--runs-dir", str(kit["runs"]),
           "--records", str(kit["records"]), "--no-leaderboard", "--", "--hang_at=7"]
    rest = ctrl_c_at_step_5(cmd)
    row = only_row(kit)
    assert row["status"] == "interrupted" and row["final_val_loss"] is not None
    assert "interrupted" in rest and "Traceback" not in rest.split("interrupted")[0]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_stop_the_trainer_and_record_the_run(kit, sig):
    cmd = [sys.executable, "-m", "harness.run", "--script", str(kit["script"]), "--runs-dir", str(kit["runs"]),
           "--records", str(kit["records"]), "--no-leaderboard", "--", "--hang_at=7"]
    rest = signal_at_step_5(cmd, sig, runs_dir=kit["runs"])
    row = only_row(kit)
    assert row["status"] == "interrupted" and row["final_val_loss"] is not None
    assert not processes_running(kit["script"]), "the trainer was left running"
    summary, last = rest.strip().splitlines()[-2:]
    assert summary.startswith(f"{row['run_id']}: interrupted") and "at step 5 " in summary  # its last validation
    assert last == f"interrupted ({signal.Signals(sig).name}): the run was stopped and recorded as 'interrupted'"


def test_summary_names_the_step_of_the_last_validation(kit, capsys):
    run_fake(kit, "--crash_at=12")  # validations at 0, 5, 10; step lines up to 11
    assert "final val loss" in (out := capsys.readouterr().out) and "at step 10 " in out
    run_fake(kit, "--nan_at=10")
    assert "diverged" in (out := capsys.readouterr().out) and "final val loss nan at step 10," in out


def test_bad_cli_arguments(kit, capsys):
    for argv, message in [
        (["--script", str(kit["script"]), "--", "lr=0.1"], "bad argument 'lr=0.1': expected --key=value or --key value"),
        (["--script", str(kit["script"]), "--", "--lr"], "--lr: expected a value (--lr=VALUE or --lr VALUE)"),
        (["--script", str(kit["script"]), "--", "--seed", "3"], "set by the harness"),
        (["--script", str(kit["script"]), "--", "--seed=3"], "set by the harness"),
        (["--script", str(kit["script"].parent / "nope.py")], "no such file"),
        (["--seeds", "0"], "must be >= 1"),
        (["--script", str(kit["script"]), "--timeout", "0"], "argument --timeout: '0' is not above 0"),
        (["--script", str(kit["script"]), "--timeout", "1h"], "argument --timeout: '1h' is not a number"),
        (["--script", str(kit["script"]), "--name", "a|b"], "--name 'a|b': use 1-80 letters"),  # a table's cell
        (["--script", str(kit["script"]), "--name", "a\nb"], "--name 'a\\nb' contains control characters"),
    ]:
        with pytest.raises(SystemExit) as exc:
            run.main(argv)
        assert exc.value.code == 2
        assert message in capsys.readouterr().err
    assert not (kit["records"] / "runs.jsonl").exists()


def test_cli_exit_status_and_rows(kit, capsys):
    argv = ["--script", str(kit["script"]), "--runs-dir", str(kit["runs"]), "--records", str(kit["records"]),
            "--seeds", "2", "--seed-start", "5", "--name", "two"]
    assert run.main(argv) == 0
    out = capsys.readouterr().out
    assert "2/2 runs ok" in out and "leaderboard:" in out
    assert (kit["records"].parent / "leaderboard.md").exists()
    assert run.main(argv + ["--no-leaderboard", "--", "--nan_at=5"]) == 1
    frame, _ = load_records(kit["records"])
    assert frame["seed"].tolist() == [5, 6, 5, 6] and frame["name"].tolist() == ["two"] * 4
    assert frame["status"].tolist() == ["ok", "ok", "diverged", "diverged"]
    assert json.loads((kit["records"] / "runs.jsonl").read_text().splitlines()[0])["schema"] == 1


def test_harness_failure_stops_the_trainer(kit, monkeypatch):
    """The trainer runs in its own session, out of the terminal's reach: a harness error must stop it."""
    procs = []

    def failing_stream(proc, *args, **kwargs):
        procs.append(proc)
        raise RuntimeError("harness bug")

    monkeypatch.setattr(run, "_stream", failing_stream)
    with pytest.raises(RuntimeError, match="harness bug"):
        run_fake(kit, "--hang_at=3")
    assert procs and procs[0].poll() is not None, "the trainer was left running"


def test_runs_are_recorded_and_the_status_kept_where_the_leaderboard_cannot_be_written(kit, capsys):
    (kit["records"].parent / "leaderboard.md").mkdir(parents=True)  # no page can replace a folder
    assert run.main(["--script", str(kit["script"]), "--runs-dir", str(kit["runs"]), "--records", str(kit["records"]),
                     "--", "--steps=10"]) == 0
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("warning: leaderboard not re-rendered: ") and only_row(kit)["status"] == "ok"


def test_unwritable_destination_is_refused_before_launch(kit, tmp_path, capsys):
    for case, runs_dir, records in unwritable_destinations(tmp_path):
        argv = ["--script", str(kit["script"]), "--runs-dir", str(runs_dir), "--records", str(records),
                "--no-leaderboard"]
        assert run.main(argv) == 2, case
        captured = capsys.readouterr()
        assert captured.out == "", case  # nothing launched: no run line, no summary
        (line,) = captured.err.splitlines()
        assert line.startswith("error: --runs-dir" if case.startswith("runs-dir") else "error: --records"), line
        assert not case.startswith("runs-dir") or line.count(str(runs_dir)) == 1, line  # named once
        assert not runs_dir.is_dir() or not any(runs_dir.iterdir()), f"{case}: an orphan run folder"
        assert not (records / "runs.jsonl").is_file() or not (records / "runs.jsonl").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--track", "no-such-track"], "seed 0: unknown track 'no-such-track' (tracks: "),
    (["--seeds", "2", "--", "--muon_lrr=0.06"], "seed 0: unknown option --muon_lrr (did you mean --muon_lr?)"),
], ids=["track", "override"])
def test_real_trainer_config_errors_are_refused_before_launch(tmp_path, capsys, argv, message):
    """train_gpt.py --print_config resolves each seed's config first: an unknown track or a mistyped override
    is one line and exit 2, with no run started and no 'crashed' row."""
    runs, records = tmp_path / "runs", tmp_path / "records"
    assert run.main(["--runs-dir", str(runs), "--records", str(records), "--no-leaderboard", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(f"error: {message}") and captured.err.count("\n") == 1
    assert not runs.exists() and not records.exists()


def test_config_of_every_seed_is_checked_before_the_first_run(kit, capsys):
    """A trainer that refuses one seed's config: nothing runs, not even the seeds before it."""
    script = kit["script"]
    script.write_text(script.read_text().replace(
        '        print(json.dumps({**cfg, "track": track, "seed": seed}))',
        '        if seed == 2:\n            print("error: seed 2 is cursed", file=sys.stderr)\n            return 2\n'
        '        print(json.dumps({**cfg, "track": track, "seed": seed}))'))
    argv = ["--script", str(script), "--runs-dir", str(kit["runs"]), "--records", str(kit["records"]),
            "--no-leaderboard", "--seeds", "3", "--", "--stepz=3"]
    assert run.main(argv) == 2
    assert capsys.readouterr().err == "error: seed 0: unknown option --stepz=3\n"
    assert run.main(argv[:-2]) == 2
    assert capsys.readouterr().err == "error: seed 2: seed 2 is cursed\n"
    assert not kit["runs"].exists() and not kit["records"].exists()


def test_stop_signal_while_a_run_is_recorded_is_obeyed_once_its_row_is_written(kit, monkeypatch):
    """SIGTERM as the run ends: its row is written whole, then Interrupted says how it was recorded."""
    real_append = run.append_run

    def append_after_a_sigterm(row, records_dir):
        os.kill(os.getpid(), signal.SIGTERM)  # only noted: the row still goes in
        return real_append(row, records_dir)

    monkeypatch.setattr(run, "append_run", append_after_a_sigterm)
    previous = run.raise_on_stop_signals()
    try:
        with pytest.raises(run.Interrupted) as exc:
            run_fake(kit, "--steps=10", "--val_every=5")
    finally:
        run.restore_handlers(previous)
    assert (exc.value.signum, exc.value.recorded) == (signal.SIGTERM, "ok")
    assert only_row(kit)["status"] == "ok"


def test_runs_log_failing_after_the_run_is_one_line_naming_the_run_folder(kit, monkeypatch, capsys):
    def disk_full(row, records_dir):
        raise OSError(28, "No space left on device", str(records_dir / "runs.jsonl"))

    monkeypatch.setattr(run, "append_run", disk_full)
    argv = ["--script", str(kit["script"]), "--runs-dir", str(kit["runs"]), "--records", str(kit["records"]),
            "--no-leaderboard", "--", "--steps=10"]
    assert run.main(argv) == 1
    (line,) = capsys.readouterr().err.splitlines()
    (run_dir,) = kit["runs"].iterdir()
    assert line.startswith(f"error: run {run_dir.name} not recorded in the runs log (") and "No space left" in line
    assert line.endswith(f"its folder {run_dir} holds what it wrote") and (run_dir / "events.jsonl").is_file()


def test_a_reader_that_stops_reading_loses_no_run(kit):
    """`harness.run | head -1`: the runs go on and are recorded, without a traceback."""
    from harness.snapshot import REPO_ROOT

    cmd = [sys.executable, "-m", "harness.run", "--script", str(kit["script"]), "--runs-dir", str(kit["runs"]),
           "--records", str(kit["records"]), "--no-leaderboard", "--seeds", "2", "--", "--steps=300", "--val_every=1"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.readline()
    proc.stdout.close()
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr
    frame, problems = load_records(kit["records"])
    assert problems == [] and frame["status"].tolist() == ["ok", "ok"]


@pytest.mark.parametrize("body, message", [
    ("import no_such_module\n", "--print_config failed (exit status 1): ModuleNotFoundError: No module named "
                                "'no_such_module'"),
    ("print('ready')\n", "--print_config printed no config (one JSON line expected)"),
    ("print('[1, 2]')\n", "--print_config printed no config (one JSON line expected)"),
], ids=["crashes", "prints-text", "prints-a-list"])
def test_a_trainer_whose_config_cannot_be_read_is_refused_before_launch(kit, capsys, body, message):
    kit["script"].write_text(body)
    argv = ["--script", str(kit["script"]), "--runs-dir", str(kit["runs"]), "--records", str(kit["records"]),
            "--no-leaderboard"]
    assert run.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"error: seed 0: {kit['script']} {message}\n"
    assert not kit["runs"].exists() and not kit["records"].exists()


@pytest.mark.parametrize("old, new, validated", [
    ("    run_dir.mkdir(parents=True, exist_ok=True)\n", "    raise MemoryError('fake out of memory')\n", False),
    ("error=None)\n    return 0\n", "error=None)\n    return 3\n", True),  # its result says ok
], ids=["before-its-events", "at-exit-after-an-ok-result"])
def test_a_trainer_that_crashes_before_its_events_or_at_exit_is_recorded_crashed(kit, old, new, validated):
    text = kit["script"].read_text()
    assert text.count(old) == 1
    kit["script"].write_text(text.replace(old, new))
    row = run_fake(kit, "--steps=10")
    assert row["status"] == "crashed" and row["returncode"] != 0 and only_row(kit)["status"] == "crashed"
    assert (row["final_val_loss"] is not None) == validated


def test_a_trainer_whose_config_takes_too_long_is_refused_before_launch(kit, capsys, monkeypatch):
    kit["script"].write_text("import time\ntime.sleep(60)\n")
    monkeypatch.setattr(run, "CONFIG_CHECK_S", 2)
    argv = ["--script", str(kit["script"]), "--runs-dir", str(kit["runs"]), "--records", str(kit["records"]),
            "--no-leaderboard"]
    assert run.main(argv) == 2
    assert capsys.readouterr().err == f"error: seed 0: {kit['script']} --print_config: no answer within 2 s\n"
    assert not kit["runs"].exists() and not kit["records"].exists()


@pytest.mark.parametrize("command, signum", [
    (["harness.run"], signal.SIGTERM), (["harness.run"], signal.SIGINT),
    (["harness.compare", "--variant", "a=", "--no-plot"], signal.SIGHUP),
], ids=["run-SIGTERM", "run-SIGINT", "compare-SIGHUP"])
def test_a_stop_signal_during_the_config_checks_stops_them_launches_nothing_and_exits_128_plus_it(kit, command, signum):
    """A signal to the harness alone while a hung --print_config check runs: the check is stopped at once."""
    from harness.snapshot import REPO_ROOT

    started = kit["script"].with_name("started")  # the --print_config's pid, written as it starts to hang
    kit["script"].write_text(f"import os, pathlib, time\npathlib.Path({str(started)!r}).write_text(str(os.getpid()))\n"
                             "time.sleep(300)\n")
    cmd = [sys.executable, "-m", *command, "--script", str(kit["script"]), "--runs-dir", str(kit["runs"]),
           "--records", str(kit["records"]), "--no-leaderboard"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (started.exists() and started.read_text()):
        assert time.monotonic() < deadline and proc.poll() is None, "the config check never started"
        time.sleep(0.05)
    check = int(started.read_text())
    proc.send_signal(signum)
    try:
        out, err = proc.communicate(timeout=30)  # the hung check is stopped within STOP_GRACE_S, not waited for
    finally:
        proc.kill()  # nothing, once it has exited
    assert proc.returncode == 128 + signum and out == ""
    assert err == f"interrupted ({signal.Signals(signum).name}): no run was in flight\n"
    with pytest.raises(ProcessLookupError):
        os.kill(check, 0)  # the check is gone, not left behind
    assert not kit["runs"].exists() and not kit["records"].exists()


def test_a_second_stop_signal_while_the_config_checks_stop_waits_for_them(kit, monkeypatch):
    """Two SIGTERMs, the second while a check that ignores SIGINT is being stopped: Interrupted comes only once the
    check is gone (a join that a signal interrupts would let its thread, and the check, outlive the harness)."""
    started = kit["script"].with_name("started")
    kit["script"].write_text(f"import os, pathlib, signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                             f"pathlib.Path({str(started)!r}).write_text(str(os.getpid()))\ntime.sleep(300)\n")
    monkeypatch.setattr(run, "STOP_GRACE_S", 2)  # SIGINT, then SIGTERM 2 s later

    def send_two_sigterms():
        deadline = time.monotonic() + 30
        while not (started.exists() and started.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        for _ in range(2):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)

    sender = threading.Thread(target=send_two_sigterms)
    previous = run.raise_on_stop_signals()
    try:
        sender.start()
        with pytest.raises(run.Interrupted):
            run.first_config_problem([("seed 0", dict(script=kit["script"], track="cpu-tiny", seed=0, overrides=[],
                                                      nproc=1))])
    finally:
        sender.join()  # no SIGTERM reaches pytest's own handler
        run.restore_handlers(previous)
    with pytest.raises(ProcessLookupError):
        os.kill(int(started.read_text()), 0)
