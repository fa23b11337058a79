"""harness.submit, verify, leaderboard and compare on damaged inputs: a one-line error naming the file, never a
traceback; and an accepted record reaches the disk whole (every file and folder fsynced, then the rename)."""
import json
import os
import shutil
from pathlib import Path

import pytest

from harness import compare, leaderboard, submit, verify
from harness.records import RECORD_FILE, append_run, record_problem
from harness.run import run_one
from helpers import LOG_HEAD as CODE, LOG_STEPS as STEPS, write_fake_trainer


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two runs accepted as the cpu-tiny baseline record, and two faster runs not yet submitted (made once)."""
    root = tmp_path_factory.mktemp("world")
    script = write_fake_trainer(root / "code")
    runs, records = root / "runs", root / "records"

    def run(name, seed, *overrides):
        return run_one(track="cpu-tiny", seed=seed, name=name, script=script, overrides=list(overrides),
                       runs_dir=runs, records_dir=records)["run_id"]

    base = [run("base", seed) for seed in (0, 1)]
    fast = [run("fast", seed, "--step_ms=8") for seed in (0, 1)]
    assert submit.main(["--records", str(records), "--no-leaderboard", "--description", "d",
                        "--name", "baseline", *base]) == 0
    return {"records": records, "base": base, "fast": fast}


@pytest.fixture
def records(world, tmp_path):
    """A copy of the world's records/ to damage (its runs log still points at the world's run directories)."""
    copy = tmp_path / "records"
    shutil.copytree(world["records"], copy)
    return copy


def baseline(records: Path) -> Path:
    return next(p for p in records.iterdir() if p.name.endswith("_baseline"))


def one_line(text: str) -> str:
    assert text.count("\n") == 1 and "Traceback" not in text, text
    return text


def submit_fast(world, records, capsys, name="fast") -> tuple[int, str]:
    rc = submit.main(["--records", str(records), "--no-leaderboard", "--description", "d", "--name", name,
                      *world["fast"]])
    return rc, capsys.readouterr().err


def test_previous_record_without_runs_is_refused_in_one_line(world, records, capsys):
    runs = baseline(records) / "runs"
    shutil.rmtree(runs)
    rc, err = submit_fast(world, records, capsys)
    assert rc == 1 and one_line(err).startswith("refused: ") and str(runs) in err and "repair" in err
    runs.mkdir()  # there, but empty
    rc, err = submit_fast(world, records, capsys)
    assert rc == 1 and f"runs cannot be read (no run directories in {runs})" in one_line(err)
    assert sorted(p.name for p in records.iterdir() if p.is_dir()) == [baseline(records).name]


def _edit(change):
    def apply(path: Path):
        record = json.loads(path.read_text())
        change(record)
        path.write_text(json.dumps(record))
    return apply


def _as_directory(path: Path):
    path.unlink()
    path.mkdir()


@pytest.mark.parametrize("damage, why", [
    (lambda p: p.write_text('{"track": "cpu-tiny", "stats": {'), "not valid JSON"),
    (_as_directory, "cannot read (Is a directory)"),
    (lambda p: p.write_text("[1, 2]"), "not a JSON object but an array"),
    (_edit(lambda r: r["stats"].pop("target_val_loss")), "stats.target_val_loss missing"),
    (_edit(lambda r: r["stats"]["train_time_ms"].update(mean="fast")), "stats.train_time_ms.mean is a string, expected number"),
    (_edit(lambda r: r["stats"].update(previous={"name": "older"})), "stats.previous.folder missing"),
    (_edit(lambda r: r.update(schema=4)), "schema 4 (this harness reads schemas 2 and 3)"),
    (_edit(lambda r: r.update(schema=1)), "schema 1 (this harness reads schemas 2 and 3: schema 1 timed a run at its"),
    (_edit(lambda r: r.pop("name")), "name missing"),
    (_edit(lambda r: r["stats"]["train_time_ms"].update(std=float("nan"))), "stats.train_time_ms.std is NaN or Infinity"),
    (_edit(lambda r: r["stats"]["final_val_loss"].update(mean=float("inf"))), "stats.final_val_loss.mean is NaN or"),
    (_edit(lambda r: r["runs"][1].update(train_time_ms="80.1")), "runs[1].train_time_ms is a string, expected number or null"),
    (_edit(lambda r: r["runs"][0].update(seed=[1])), "runs[0].seed is an array, expected integer or null"),
    (_edit(lambda r: r["runs"][1].pop("run_id")), "runs[1] has no run_id"),
    (_edit(lambda r: r["stats"].update(previous={"folder": "f", "name": "n", "train_time_ms": {}, "p_welch_faster": None,
                                                 "speedup": {"ratio": 1.0, "ci95": [1.0]}})),
     "stats.previous.speedup.ci95 is not a pair of numbers"),
], ids=["not-json", "a-folder", "not-an-object", "no-target", "mean-not-a-number", "previous-without-folder",
        "other-schema", "first-crossing-schema", "no-name", "nan", "infinity", "run-time-a-string", "seed-a-list",
        "run-without-id", "ci95-not-a-pair"])
def test_damaged_record_json_is_one_line_everywhere(world, records, tmp_path, capsys, damage, why):
    folder = baseline(records)
    damage(folder / RECORD_FILE)

    rc, err = submit_fast(world, records, capsys)
    assert rc == 1 and one_line(err).startswith(f"refused: {folder / RECORD_FILE}: skipped damaged record ({why}")
    assert err.endswith("; repair it before submitting\n")

    assert verify.main([str(folder)]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"{folder / RECORD_FILE}: {why}") and "FAILED, 1 mismatches" in out

    assert leaderboard.main(["--records", str(records), "--out", str(tmp_path / "lb.md")]) == 0
    err = capsys.readouterr().err
    assert f"leaderboard: {folder / RECORD_FILE}: skipped damaged record ({why}" in err and "Traceback" not in err
    assert "No accepted record yet." in (tmp_path / "lb.md").read_text()


def _unreadable_events(run_dir: Path) -> Path:
    """Make run_dir/events.jsonl a folder that opens as a folder: reading it fails with an OSError."""
    events = run_dir / "events.jsonl"
    events.unlink()
    (events / "events.jsonl").mkdir(parents=True)
    return events


def test_unreadable_events_file_is_one_line_everywhere(world, records, tmp_path, capsys):
    folder = baseline(records)
    events = _unreadable_events(folder / "runs" / world["base"][0])

    rc, err = submit_fast(world, records, capsys)
    assert rc == 1 and "the current cpu-tiny record's runs cannot be read" in one_line(err)
    assert "Is a directory" in err and str(events) in err

    assert verify.main([str(folder)]) == 1
    assert "Is a directory" in capsys.readouterr().out

    argv = ["--logs", f"old={folder / 'runs'}", f"new={','.join(world['fast'])}", "--no-plot",
            "--records", str(records)]
    assert compare.main(argv) == 1
    err = capsys.readouterr().err
    assert one_line(err).startswith("error: --logs old: ") and "Is a directory" in err

    assert leaderboard.main(["--records", str(records), "--out", str(tmp_path / "lb.md")]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_accepted_record_is_fsynced_before_and_after_the_rename(world, records, monkeypatch, capsys):
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to name an fsynced descriptor")
    events, real_fsync, real_rename = [], os.fsync, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src, dst):
        events.append(("rename", str(src), str(dst)))
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    rc, err = submit_fast(world, records, capsys)
    assert rc == 0, err

    renames = [e for e in events if e[0] == "rename"]
    assert len(renames) == 1
    _, tmp, final = renames[0]
    at = events.index(renames[0])
    before = {Path(path) for _, path in events[:at]}
    written = {Path(final)} | set(Path(final).rglob("*"))
    assert {Path(tmp) / p.relative_to(final) for p in written} <= before, "a file or folder was not fsynced"
    assert ("fsync", str(records.resolve())) in events[at + 1:], "records/ was not fsynced after the rename"


def _synthetic_record(records: Path, track: str, name: str, mean_ms: float, below: int, day: int) -> None:
    record = {
        "schema": 2, "name": name, "description": f"{name} on {track}", "track": track, "date": f"2025-01-0{day}",
        "submitted": f"2025-01-0{day}T00:00:00+00:00", "code_hash": "0" * 64, "hardware": "CPU Fake CPU (2 cores)",
        "runs": [{"run_id": "r0"}, {"run_id": "r1"}],
        "stats": {"n": 2, "target_val_loss": 3.28, "reached_target": 2, "final_at_or_below_target": below,
                  "time_ms": {"n": 2, "mean": mean_ms, "std": 10.0, "ci95": [mean_ms - 90, mean_ms + 90]},
                  "final_val_loss": {"n": 2, "mean": 3.25, "std": 0.01, "ci95": [3.16, 3.34]},
                  "p_loss_below_target": 0.004, "previous": None},
    }
    assert record_problem(record) is None
    folder = records / f"2025-01-0{day}_{name}"
    folder.mkdir(parents=True)
    (folder / RECORD_FILE).write_text(json.dumps(record))


def test_leaderboard_says_once_what_a_record_time_is(tmp_path):
    records = tmp_path / "records"
    _synthetic_record(records, "cpu-tiny", "all-below", 200.0, below=2, day=1)
    _synthetic_record(records, "gpu-small", "one-below", 300.0, below=1, day=2)
    page = leaderboard.render(records, tmp_path / "lb1.md")
    text = page.read_text()
    assert "time to target" not in text
    assert text.count("A run's time is its train time at its final validation, whether or not") == 1
    assert "| 2 (1 ended at or below the target) |" in text and "| 2 (" not in text.split("## gpu-small")[0]
    again = leaderboard.render(records, tmp_path / "lb2.md")
    assert again.read_bytes() == page.read_bytes()


def test_leaderboard_out_that_cannot_be_written_is_one_line(tmp_path, capsys):
    (tmp_path / "records").mkdir()
    (tmp_path / "file").write_text("")
    assert leaderboard.main(["--records", str(tmp_path / "records"), "--out", str(tmp_path / "file" / "lb.md")]) == 1
    assert one_line(capsys.readouterr().err).startswith("leaderboard: not written: ")


def test_runs_log_row_without_a_run_dir_is_named(tmp_path, capsys):
    append_run({"run_id": "a", "track": "cpu-tiny", "run_dir": None}, tmp_path)
    append_run({"run_id": "b", "track": "cpu-tiny", "run_dir": str(tmp_path)}, tmp_path)
    assert compare.main(["--logs", "x=a", "y=b", "--no-plot", "--records", str(tmp_path)]) == 1
    err = one_line(capsys.readouterr().err)
    assert err == "error: --logs x: run a: its runs.jsonl row (line 1) has run_dir null, not a path\n"
    rc = submit.main(["--records", str(tmp_path), "--no-leaderboard", "--description", "d", "--name", "n", "a", "b"])
    assert rc == 1 and "run a: its runs.jsonl row (line 1) has run_dir null" in one_line(capsys.readouterr().err)


def test_empty_logs_inputs_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for spec, message in [(f"a={tmp_path / 'empty'}", "no logs (*.txt, *.log) or run directories"),
                          ("a=,", "no run ids")]:
        assert compare.main(["--logs", spec, "b=x", "--no-plot", "--records", str(tmp_path)]) == 1
        assert message in one_line(capsys.readouterr().err)


def test_plot_dir_that_cannot_be_made_is_one_line(tmp_path, capsys):
    for name in ("old", "new"):
        (tmp_path / f"{name}.txt").write_text(CODE + STEPS.replace("79532ms", "79000ms" if name == "old" else "78000ms"))
    (tmp_path / "file").write_text("")
    argv = ["--logs", f"old={tmp_path / 'old.txt'}", f"new={tmp_path / 'new.txt'}",
            "--plot-dir", str(tmp_path / "file")]
    assert compare.main(argv) == 1
    captured = capsys.readouterr()
    assert "| new" in captured.out and one_line(captured.err).startswith("error: plots not written: ")


def _submit_after(barrier, records: str, name: str, run_ids: list[str], out: str) -> None:
    import contextlib
    import io
    import sys

    barrier.wait()
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = submit.main(["--records", records, "--no-leaderboard", "--description", "d", "--name", name, *run_ids])
    Path(out).write_text(f"{rc}\n{err.getvalue()}")
    sys.exit(0)


def test_concurrent_submits_of_the_same_runs_make_one_record(world, records, tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")  # real processes, started together
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_submit_after, args=(barrier, str(records), name, world["fast"], str(tmp_path / name)))
             for name in ("fast1", "fast2")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    made = sorted(p.name.split("_", 1)[1] for p in records.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(made) == 2 and "baseline" in made, made  # the baseline and one of the two
    winner = next(name for name in made if name != "baseline")
    loser = "fast2" if winner == "fast1" else "fast1"
    assert (tmp_path / winner).read_text() == "0\n"
    refusal = (tmp_path / loser).read_text()
    assert refusal.startswith("1\nrefused: ") and "not significantly faster than the current record" in refusal
    assert f"_{winner}" in refusal, refusal


@pytest.mark.parametrize("change, field", [
    (lambda e: e.update(config="x"), "config.config is a string, expected object or null"),
    (lambda e: e["config"].update(seed="0"), "config.config.seed is a string, expected integer or null"),
    (lambda e: e.update(track=5), "config.track is an integer, expected string or null"),
], ids=["config-a-string", "seed-a-string", "track-a-number"])
def test_wrongly_typed_events_config_is_one_line_everywhere(world, records, tmp_path, capsys, change, field):
    folder = baseline(records)
    events = folder / "runs" / world["base"][0] / "events.jsonl"
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    change(next(e for e in lines if e["event"] == "config"))
    events.write_text("".join(json.dumps(e) + "\n" for e in lines))
    expected = f"{events}: {field}"

    rc, err = submit_fast(world, records, capsys)
    assert rc == 1 and expected in one_line(err)

    assert verify.main([str(folder)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == expected and out[1].endswith("statistics not recomputed: 1 of 2 runs cannot be read (above)")

    argv = ["--logs", f"old={folder / 'runs'}", f"new={','.join(world['fast'])}", "--no-plot", "--records", str(records)]
    assert compare.main(argv) == 1
    assert expected in one_line(capsys.readouterr().err)

    assert leaderboard.main(["--records", str(records), "--out", str(tmp_path / "lb.md")]) == 0
    assert expected in capsys.readouterr().err and "## cpu-tiny" in (tmp_path / "lb.md").read_text()


def test_pages_get_the_umask_s_mode_and_killed_writers_leave_nothing(world, records, tmp_path, capsys):
    import stat
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a writer killed mid-write: its pid runs no more
    stale = [records / f".leaderboard.png.tmp-{proc.pid}-0123abcd", tmp_path / f".lb.md.tmp-{proc.pid}-0123abcd"]
    for path in stale:
        path.write_bytes(b"half")
    stale_record = records / f".2026-01-01_fast.tmp-{proc.pid}-0123abcd"
    (stale_record / "runs").mkdir(parents=True)
    old = os.umask(0o022)
    try:
        assert leaderboard.main(["--records", str(records), "--out", str(tmp_path / "lb.md")]) == 0
        rc, err = submit_fast(world, records, capsys)
    finally:
        os.umask(old)
    assert rc == 0, err
    for page in (tmp_path / "lb.md", records / "leaderboard.png"):
        assert stat.S_IMODE(page.stat().st_mode) == 0o644, page
    assert not any(p.exists() for p in [*stale, stale_record])
    assert not [p for p in records.iterdir() if ".tmp-" in p.name]


def test_an_interrupted_run_is_refused_under_its_own_status(world, records, tmp_path, capsys):
    """A Ctrl-C run is 'interrupted' in runs.jsonl (its events end without a result): submit names that status."""
    import sys

    from test_harness_run import ctrl_c_at_step_5

    script = write_fake_trainer(tmp_path / "code")
    ctrl_c_at_step_5([sys.executable, "-m", "harness.run", "--script", str(script), "--runs-dir", str(tmp_path / "runs"),
                      "--records", str(records), "--no-leaderboard", "--", "--hang_at=7"])
    (stopped,) = [json.loads(line)["run_id"] for line in (records / "runs.jsonl").read_text().splitlines()
                  if json.loads(line)["status"] == "interrupted"]
    rc = submit.main(["--records", str(records), "--no-leaderboard", "--description", "d", "--name", "x",
                      world["fast"][0], stopped])
    err = one_line(capsys.readouterr().err)
    assert rc == 1 and f"run {stopped}: status 'interrupted' in {records / 'runs.jsonl'}" in err


# ----------------------------------------------------------------------------------------------
# The record rule's refusals, each one line naming the runs and the condition, with nothing written

def _events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def copy_run(world, records: Path, run_id: str, new_id: str, change=None, **row_fields) -> Path:
    """A copy of a world run's directory as run new_id (its row, updated with row_fields, appended to records' runs
    log), its events changed in place by change(events) (a list of event dicts)."""
    (row,) = [r for r in map(json.loads, (records / "runs.jsonl").read_text().splitlines()) if r.get("run_id") == run_id]
    run_dir = records.parent / "copies" / new_id
    shutil.copytree(row["run_dir"], run_dir)
    if change is not None:
        events = _events(run_dir)
        change(events)
        (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    append_run({**row, "run_id": new_id, "run_dir": str(run_dir), **row_fields}, records)
    return run_dir


def _event(events: list[dict], kind: str) -> dict:
    return next(e for e in events if e["event"] == kind)


def _set_target(target):
    def change(events):
        _event(events, "config")["config"]["target_val_loss"] = target
        _event(events, "result")["target_val_loss"] = target
    return change


def _set_cpu(events):
    _event(events, "meta")["hardware"]["cpu"] = "Other CPU"


def _set_track(track):
    return lambda events: _event(events, "config").update(track=track)


def written(records: Path) -> tuple[list[str], bytes]:
    """What a refused submit must leave as it was: records/'s entries and the runs log's bytes."""
    return sorted(p.name for p in records.iterdir()), (records / "runs.jsonl").read_bytes()


def refused_line(records: Path, capsys, *run_ids: str, name: str = "x", description: str = "d") -> str:
    """harness.submit's refusal of the set: its one stderr line (exit 1), after checking nothing was written."""
    before = written(records)
    rc = submit.main(["--records", str(records), "--no-leaderboard", "--description", description, "--name", name,
                      *run_ids])
    err = capsys.readouterr().err
    assert rc == 1 and one_line(err).startswith("refused: "), err
    assert written(records) == before, "a refused submission wrote something"
    return err[len("refused: "):-1]


@pytest.mark.parametrize("change, field, values", [
    (_set_track("gpu-small"), "track", "'cpu-tiny' vs 'gpu-small'"),
    (_set_target(3.29), "target", "3.28 vs 3.29"),
], ids=["track", "target"])
def test_runs_differing_in_track_or_target_are_refused(world, records, capsys, change, field, values):
    a = world["fast"][0]
    copy_run(world, records, world["fast"][1], "b2", change)
    assert refused_line(records, capsys, a, "b2") == f"runs {a} and b2 differ in {field}: {values}"


def test_runs_on_different_hardware_are_refused(world, records, capsys):
    a = world["fast"][0]
    copy_run(world, records, world["fast"][1], "b2", _set_cpu)
    assert refused_line(records, capsys, a, "b2") == (
        f"runs {a} and b2 ran on different hardware: CPU Fake CPU (2 cores) vs CPU Other CPU (2 cores)")


def test_runs_sharing_a_seed_are_refused(world, records, capsys):
    a = world["fast"][0]
    seed = _event(_events(copy_run(world, records, a, "a2")), "config")["config"]["seed"]
    copy_run(world, records, world["fast"][1], "b2", lambda events: _event(events, "config")["config"].update(seed=seed))
    assert refused_line(records, capsys, a, "b2") == f"runs {a} and b2 share seed {seed}"


def test_a_run_without_its_code_snapshot_is_refused(world, records, capsys):
    run_dir = copy_run(world, records, world["fast"][1], "b2")
    (run_dir / "code" / "CODE_HASH").unlink()
    assert refused_line(records, capsys, world["fast"][0], "b2") == (
        f"run b2: no code snapshot ({run_dir / 'code' / 'CODE_HASH'} missing)")


@pytest.mark.parametrize("make, why", [(Path.mkdir, "Is a directory"), (os.mkfifo, "not a regular file (a FIFO")],
                         ids=["a-folder", "a-fifo"])
def test_a_code_hash_that_is_no_file_is_named_as_such(world, records, capsys, make, why):
    run_dir = copy_run(world, records, world["fast"][1], "b2")
    hash_file = run_dir / "code" / "CODE_HASH"
    hash_file.unlink()
    make(hash_file)
    assert refused_line(records, capsys, world["fast"][0], "b2").startswith(f"run b2: {hash_file}: {why}")


def _code_hash(run_dir: Path) -> str:
    return (run_dir / "code" / "CODE_HASH").read_text().strip()


def test_a_code_hash_mismatch_is_refused_naming_all_three(world, records, capsys):
    """The snapshot's files, its CODE_HASH file and the events' meta.code_hash must agree."""
    from harness.snapshot import snapshot_hash

    a = world["fast"][0]
    run_dir = copy_run(world, records, world["fast"][1], "b2")
    h = _code_hash(run_dir)
    (run_dir / "code" / "CODE_HASH").write_text("f" * 64 + "\n")  # the file says another hash
    assert refused_line(records, capsys, a, "b2") == (
        f"run b2: code hash mismatch: snapshot recomputes {h[:12]}, CODE_HASH says {'f' * 12}, events say {h[:12]}")

    run_dir = copy_run(world, records, world["fast"][1], "c2")
    (run_dir / "code" / "train_gpt.py").write_text("# edited after the run\n")  # the files hash to another
    edited = snapshot_hash(run_dir / "code")
    assert edited != h
    assert refused_line(records, capsys, a, "c2") == (
        f"run c2: code hash mismatch: snapshot recomputes {edited[:12]}, CODE_HASH says {h[:12]}, events say {h[:12]}")

    copy_run(world, records, world["fast"][1], "d2", lambda events: _event(events, "meta").update(code_hash="e" * 64))
    assert refused_line(records, capsys, a, "d2") == (
        f"run d2: code hash mismatch: snapshot recomputes {h[:12]}, CODE_HASH says {h[:12]}, events say {'e' * 12}")


@pytest.mark.parametrize("change, message", [
    (_set_track(None), "run a2: its events.jsonl names no track"),
    (_set_target(None), "run a2: its events.jsonl states no target val loss"),
], ids=["no-track", "no-target"])
def test_events_naming_no_track_or_no_target_are_refused(world, records, capsys, change, message):
    copy_run(world, records, world["fast"][0], "a2", change)
    copy_run(world, records, world["fast"][1], "b2", change)
    assert refused_line(records, capsys, "a2", "b2") == message


@pytest.mark.parametrize("change, message", [
    (_set_target(3.29), "target val loss 3.29 differs from the current cpu-tiny record's (3.28, records/{folder})"),
    (_set_cpu, "hardware CPU Other CPU (2 cores) differs from the current cpu-tiny record's "
               "(CPU Fake CPU (2 cores), records/{folder}): times are not comparable"),
], ids=["target", "hardware"])
def test_a_set_unlike_the_current_record_is_refused(world, records, capsys, change, message):
    copy_run(world, records, world["fast"][0], "a2", change)
    copy_run(world, records, world["fast"][1], "b2", change)
    assert refused_line(records, capsys, "a2", "b2") == message.format(folder=baseline(records).name)


def test_an_empty_description_is_refused(world, records, capsys):
    assert refused_line(records, capsys, *world["fast"], description=" \t ") == "the description is empty"
    with pytest.raises(submit.Refused, match="^the description is empty$"):
        submit.submit("x", " \t ", world["fast"], records)  # the check is submit's, not only its command line's
    assert not list(records.glob("*_x"))


def test_a_taken_name_or_an_existing_record_folder_is_refused(world, records, capsys):
    """A name taken by a record folder of any date is refused first; a file where the folder would go, too."""
    from harness.logs import load_run
    from harness.records import find_runs, row_run_dir

    taken = records / "2020-01-01_fast"
    taken.mkdir()
    assert refused_line(records, capsys, *world["fast"], name="fast") == (
        "record name 'fast' is taken by records/2020-01-01_fast; records are never overwritten")
    taken.rmdir()
    rows = find_runs(world["fast"], records)
    folder = f"{submit.record_date(rows, [load_run(row_run_dir(r)) for r in rows])}_fast"
    (records / folder).write_text("not a record\n")
    assert refused_line(records, capsys, *world["fast"], name="fast") == f"records/{folder} exists; records are never overwritten"
    assert (records / folder).read_text() == "not a record\n"


def test_exclude_naming_a_run_twice_is_a_usage_error(world, records, capsys):
    before = written(records)
    with pytest.raises(SystemExit) as exc:
        submit.main(["--records", str(records), "--no-leaderboard", "--description", "d", "--name", "x",
                     "--exclude", world["base"][0], "--reason", "r", "--exclude", world["base"][0], "--reason", "s",
                     *world["fast"]])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.splitlines()[-1] == "python -m harness.submit: error: --exclude: a run is named twice", err
    assert "Traceback" not in err and written(records) == before


def test_a_run_not_finished_ok_is_refused_by_its_row_or_its_events(world, records, capsys):
    a = world["fast"][0]
    copy_run(world, records, world["fast"][1], "b2", status="timeout")
    assert refused_line(records, capsys, a, "b2") == (
        f"run b2: status 'timeout' in {records.resolve() / 'runs.jsonl'}; every run must finish 'ok'")
    copy_run(world, records, world["fast"][1], "c2", lambda events: _event(events, "result").update(status="error"))
    assert refused_line(records, capsys, a, "c2") == "run c2: status 'error' in its events.jsonl; every run must finish 'ok'"


def test_a_run_made_to_stop_at_the_target_is_refused_though_it_ran_its_schedule(world, records, capsys):
    copy_run(world, records, world["fast"][1], "b2",
             lambda events: _event(events, "config")["config"].update(stop_at_target=True))
    assert refused_line(records, capsys, world["fast"][0], "b2") == (
        "run b2 was made with --stop_at_target=true: optional stopping biases time and loss; a record's runs go "
        "their full schedule")


def test_a_run_directory_without_events_is_refused_with_the_ingest_hint(world, records, capsys):
    run_dir = copy_run(world, records, world["fast"][1], "b2")
    (run_dir / "events.jsonl").unlink()
    assert refused_line(records, capsys, world["fast"][0], "b2") == (
        f"run b2: no events.jsonl in its run directory {run_dir} (a log put there by hand: take it in with "
        f"`python -m harness.ingest --track TRACK --name NAME {run_dir / 'train.log'}`)")
    (run_dir / "train.log").unlink()
    assert refused_line(records, capsys, world["fast"][0], "b2") == f"run b2: no events.jsonl in its run directory {run_dir}"


@pytest.mark.parametrize("name, problem", [
    ("", "record name is empty"),
    ("a\tb", "record name 'a\\tb' contains control characters"),
    ("../up", "record name '../up' could leave records/ or runs/ ('/', '\\', '..' or a leading '.')"),
    (".hidden", "record name '.hidden' could leave records/ or runs/ ('/', '\\', '..' or a leading '.')"),
    ("a b", "record name 'a b': use 1-80 letters, digits, '.', '_' or '-', starting with a letter or digit"),
], ids=["empty", "control", "dotdot", "leading-dot", "space"])
def test_a_bad_record_name_is_refused_before_anything_is_made(world, records, capsys, name, problem):
    assert refused_line(records, capsys, *world["fast"], name=name) == problem


def test_records_that_is_not_a_folder_is_a_usage_error(world, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder\n")
    with pytest.raises(SystemExit) as exc:
        submit.main(["--records", str(a_file), "--no-leaderboard", "--description", "d", "--name", "x", *world["fast"]])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.splitlines()[-1] == f"python -m harness.submit: error: --records {a_file}: not a folder"
    assert a_file.read_text() == "not a folder\n"


def test_a_damaged_events_line_after_the_last_event_is_a_warning_in_submit_and_verify(world, records, capsys):
    """A run whose events.jsonl has a torn line after its result is still a run (records/README.md): submit accepts
    it and verify passes it, each naming the line in a warning, never silently."""
    run_dir = copy_run(world, records, world["fast"][0], "torn")
    with open(run_dir / "events.jsonl", "a") as f:
        f.write('{"event": "step", "st')
    lineno = len((run_dir / "events.jsonl").read_text().splitlines())
    why = "skipped damaged line (Unterminated string starting at: line 1 column 19 (char 18))"
    assert submit.main(["--records", str(records), "--no-leaderboard", "--description", "d", "--name", "torn",
                        "--exclude", world["fast"][0], "--reason", "copied as torn", "torn", world["fast"][1]]) == 0
    captured = capsys.readouterr()
    assert captured.err == f"warning: run torn: {run_dir / 'events.jsonl'}:{lineno}: {why}\n"
    (folder,) = records.glob("*_torn")
    assert verify.main([str(folder)]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[-1] == f"{folder}: ok"
    assert captured.err == f"warning: run torn: {folder / 'runs' / 'torn' / 'events.jsonl'}:{lineno}: {why}\n"
    events = folder / "runs" / "torn" / "events.jsonl"
    lines = events.read_text().splitlines(keepends=True)
    val = next(i for i, line in enumerate(lines) if '"event": "val"' in line)
    lines[val] = lines[val][:20] + "\n"  # a validation lost before the result: the figures would change
    events.write_text("".join(lines))
    assert verify.main([str(folder)]) == 1
    out = capsys.readouterr().out
    assert f"{folder / 'runs' / 'torn' / 'train.log'}: 5 validation lines, but {events} has 4 val events\n" in out


def test_a_run_given_twice_is_refused(world, records, capsys):
    a = world["fast"][0]
    assert refused_line(records, capsys, a, world["fast"][1], a) == f"run {a} is given twice"


def test_a_code_snapshot_of_no_files_is_refused_naming_it(world, records, capsys):
    run_dir = copy_run(world, records, world["fast"][1], "b2")
    for path in (run_dir / "code").rglob("*"):
        if path.is_file() and path.name != "CODE_HASH":
            path.unlink()
    assert refused_line(records, capsys, world["fast"][0], "b2") == f"{run_dir / 'code'}: the code snapshot holds no files"


def test_a_record_that_cannot_be_written_is_one_line_and_leaves_nothing(world, records, capsys, monkeypatch):
    """A disk that fills while the record folder is written: one line, exit 1, no folder and no temporary left."""
    def full(path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(submit, "fsync_tree", full)
    before = written(records)
    rc, err = submit_fast(world, records, capsys)
    assert rc == 1 and one_line(err).startswith("error: the record was not written: ")
    assert err.endswith(": No space left on device\n") and written(records) == before


def test_a_same_config_run_whose_folder_is_gone_still_counts(world, records, capsys):
    """The every-run rule: a finished run of the set's track and code whose run folder cannot be read is left out
    only with --exclude, as one whose config matches (its config is unknown, not another)."""
    run_dir = copy_run(world, records, world["fast"][1], "gone")
    shutil.rmtree(run_dir)
    assert refused_line(records, capsys, *world["fast"], name="x").startswith(
        "every finished run counts: gone ran the same track, code and config but is left out")


def test_a_leaderboard_that_cannot_be_written_leaves_the_record_standing(world, records, capsys, monkeypatch):
    def full(records_dir):
        raise OSError(28, "No space left on device", str(records_dir / "leaderboard.md"))

    monkeypatch.setattr(submit, "render", full)
    assert submit.main(["--records", str(records), "--description", "d", "--name", "fast", *world["fast"]]) == 0
    captured = capsys.readouterr()
    assert captured.err == f"leaderboard: not written: {records / 'leaderboard.md'}: No space left on device\n"
    (folder,) = records.glob("*_fast")
    assert f"accepted: {folder}" in captured.out and verify.main([str(folder)]) == 0


def test_a_run_of_ours_without_its_train_log_makes_a_record_without_one(world, records, capsys):
    """Our trainer's events.jsonl holds every figure; train.log is checked against it where it is there."""
    run_dir = copy_run(world, records, world["fast"][1], "no-log")
    (run_dir / "train.log").unlink()
    assert submit.main(["--records", str(records), "--no-leaderboard", "--description", "d", "--name", "nolog",
                        "--exclude", world["fast"][1], "--reason", "copied as no-log", world["fast"][0], "no-log"]) == 0
    (folder,) = records.glob("*_nolog")
    assert sorted(p.name for p in (folder / "runs" / "no-log").iterdir()) == ["events.jsonl"]
    capsys.readouterr()
    assert verify.main([str(folder)]) == 0 and capsys.readouterr().out.endswith(f"{folder}: ok\n")


def test_a_train_log_of_ours_that_lost_its_validation_lines_is_a_mismatch(world, records, capsys):
    """train.log is the cross-check of events.jsonl: one that is there but holds none of the run's validation lines
    (emptied, truncated after its header) disagrees with it, for our runs as for ingested ones."""
    run_dir = copy_run(world, records, world["fast"][1], "emptied")
    train_log = run_dir / "train.log"
    train_log.write_text("".join(line for line in train_log.read_text().splitlines(keepends=True)
                                 if "val_loss:" not in line))
    assert refused_line(records, capsys, world["fast"][0], "emptied") == (
        f"run emptied: {train_log}: 0 validation lines, but {run_dir / 'events.jsonl'} has 5 val events")
