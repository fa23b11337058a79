"""harness.records: concurrent appends lose nothing, damaged lines are reported and skipped."""
import json
import multiprocessing
import subprocess
import sys

import pytest

from harness.records import RecordsError, append_run, check_appendable, find_runs, load_records

PROCS, ROWS_EACH = 4, 50


def _append_many(records_dir: str, proc: int) -> None:
    for i in range(ROWS_EACH):
        # long rows: many short writes interleaving would tear them; one locked write cannot
        append_run({"run_id": f"p{proc}-r{i}", "track": "cpu-tiny", "name": "x" * 2000, "seed": i}, records_dir)


def test_concurrent_appends_lose_nothing(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), p)) for p in range(PROCS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    frame, problems = load_records(tmp_path)
    assert problems == []
    assert len(frame) == PROCS * ROWS_EACH
    assert set(frame["run_id"]) == {f"p{p}-r{i}" for p in range(PROCS) for i in range(ROWS_EACH)}
    assert (frame["schema"] == 1).all()
    for p in range(PROCS):  # each writer's rows stay in its own order
        seeds = frame[frame["run_id"].str.startswith(f"p{p}-")]["seed"].tolist()
        assert seeds == list(range(ROWS_EACH))


def test_damaged_lines_are_reported_and_skipped(tmp_path):
    append_run({"run_id": "a", "final_val_loss": 3.2}, tmp_path)
    path = tmp_path / "runs.jsonl"
    with open(path, "a") as f:
        f.write("{this is not json\n")
        f.write('{"schema": 1, "track": "no run id"}\n')
        f.write('{"schema": 99, "run_id": "future"}\n')
    append_run({"run_id": "b", "final_val_loss": float("nan")}, tmp_path)  # NaN is stored as null
    with open(path, "a") as f:
        f.write('{"schema": 1, "run_id": "torn", "fin')  # a writer killed mid-line
    frame, problems = load_records(tmp_path)
    assert frame["run_id"].tolist() == ["a", "b"]
    assert [p.split(": ", 1)[0] for p in problems] == [f"{path}:{n}" for n in (2, 3, 4, 6)]
    assert all("\n" not in p for p in problems)
    assert find_runs(["b", "a"], tmp_path)[0]["final_val_loss"] is None
    assert json.loads(path.read_text().splitlines()[4])["final_val_loss"] is None


def test_missing_run_id_is_named(tmp_path):
    append_run({"run_id": "a"}, tmp_path)
    with pytest.raises(RecordsError) as exc:
        find_runs(["a", "zzz"], tmp_path)
    assert "'zzz'" in str(exc.value) and "runs.jsonl" in str(exc.value)


def test_empty_records(tmp_path):
    frame, problems = load_records(tmp_path)
    assert frame.empty and problems == [] and "run_id" in frame.columns
    with pytest.raises(RecordsError, match="needs a run_id"):
        append_run({"track": "x"}, tmp_path)


def test_find_runs_keeps_integers_where_other_rows_have_gaps(tmp_path):
    append_run({"run_id": "a", "seed": 3, "steps": 1390, "tokens": 2**40, "final_val_loss": 3.2775}, tmp_path)
    append_run({"run_id": "b", "final_val_loss": None}, tmp_path)  # no seed, steps or tokens: pandas' NaN gaps
    a, b = find_runs(["a", "b"], tmp_path)
    assert (type(a["seed"]), type(a["steps"]), type(a["tokens"])) == (int, int, int)
    assert (a["seed"], a["steps"], a["tokens"], a["final_val_loss"]) == (3, 1390, 2**40, 3.2775)
    assert b["seed"] is None and b["run_dir"] is None and b["line"] == 2


def test_missing_run_id_names_the_damaged_lines_it_may_be_on(tmp_path):
    append_run({"run_id": "a"}, tmp_path)
    with open(tmp_path / "runs.jsonl", "a") as f:
        f.write('{"schema": 1, "run_id": "b", "se\n')  # the row for b, torn
        f.write('{"schema": 1, "run_id": 7}\n')  # a run id that is not a string
    with pytest.raises(RecordsError) as exc:
        find_runs(["b"], tmp_path)
    message = str(exc.value)
    assert "\n" not in message and "no run with id 'b' (2 problems reading it; the first: " in message
    assert f"{tmp_path / 'runs.jsonl'}:2: skipped damaged line" in message
    assert load_records(tmp_path)[1][1] == f"{tmp_path / 'runs.jsonl'}:3: skipped line without a run_id"


def test_an_append_after_a_torn_last_line_starts_a_fresh_line(tmp_path):
    append_run({"run_id": "a"}, tmp_path)
    path = tmp_path / "runs.jsonl"
    with open(path, "ab") as f:
        f.write(b'{"schema": 1, "run_id": "torn", "final_val')  # a writer killed mid-line: no newline
    append_run({"run_id": "b", "final_val_loss": 3.25}, tmp_path)
    assert path.read_bytes().endswith(b"\n") and path.read_text().count("\n") == 3
    frame, problems = load_records(tmp_path)
    assert frame["run_id"].tolist() == ["a", "b"]
    assert len(problems) == 1 and problems[0].startswith(f"{path}:2: skipped damaged line")
    assert find_runs(["b"], tmp_path)[0]["final_val_loss"] == 3.25


def test_rows_of_the_wrong_types_are_named_and_the_rest_renders(tmp_path, capsys):
    from harness import leaderboard

    path = tmp_path / "runs.jsonl"
    path.write_text(
        '{"schema": 1, "run_id": "a", "track": "cpu-tiny", "timestamp": "2026-01-01T00:00:00", "final_val_loss": "low", '
        '"train_time_ms": [1], "steps": "x", "status": 5, "stop_at_target": "yes"}\n'
        '{"schema": 1, "run_id": "b", "track": ["cpu-tiny"], "timestamp": 7, "name": {"n": 1}}\n'
        '{"schema": 1, "run_id": "c", "track": "cpu-tiny", "timestamp": "2026-01-02T00:00:00", "final_val_loss": 3.1, '
        '"train_time_ms": 1000.0, "status": "ok"}\n')
    frame, problems = load_records(tmp_path)
    assert frame["run_id"].tolist() == ["a", "b", "c"]
    assert f"{path}:1: final_val_loss is a string, expected number or null; read as missing" in problems
    assert f"{path}:1: train_time_ms is an array, expected number or null; read as missing" in problems
    assert f"{path}:2: track is an array, expected string or null; read as missing" in problems
    assert len(problems) == 8 and all("\n" not in p for p in problems)
    assert find_runs(["a"], tmp_path)[0]["final_val_loss"] is None
    assert leaderboard.main(["--records", str(tmp_path), "--out", str(tmp_path / "lb.md")]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("leaderboard: ") == 8
    page = (tmp_path / "lb.md").read_text()
    assert "| c " in page and "| 3.1000 " in page


def test_a_hidden_run_is_a_tombstone_appended_and_honoured_everywhere(tmp_path, capsys):
    from harness import compare, leaderboard, records, submit

    for run_id in ("20261201-000000-cpu-tiny-s0-aaaa", "20261201-000001-cpu-tiny-s1-bbbb"):
        records.append_run({"run_id": run_id, "track": "cpu-tiny", "name": "x", "status": "ok",
                            "timestamp": "2026-12-01T00:00:00+00:00", "run_dir": str(tmp_path / run_id)}, tmp_path)
    mistaken, kept = "20261201-000000-cpu-tiny-s0-aaaa", "20261201-000001-cpu-tiny-s1-bbbb"
    before = (tmp_path / "runs.jsonl").read_bytes()
    assert records.main(["--records", str(tmp_path), "hide", mistaken, "--reason", "ran on the wrong data"]) == 0
    after = (tmp_path / "runs.jsonl").read_bytes()
    assert after.startswith(before)  # nothing rewritten: one line appended
    (tombstone,) = [json.loads(line) for line in after[len(before):].decode().splitlines()]
    assert (tombstone["hides"], tombstone["reason"], "run_id" in tombstone) == (mistaken, "ran on the wrong data", False)

    frame, problems = records.load_records(tmp_path)
    assert problems == [] and frame["run_id"].tolist() == [kept]
    with pytest.raises(records.RecordsError, match=f"run {mistaken} is hidden .*line 3: ran on the wrong data"):
        records.find_runs([kept, mistaken], tmp_path)
    capsys.readouterr()
    assert records.main(["--records", str(tmp_path), "hidden"]) == 0
    assert capsys.readouterr().out.startswith(f"{mistaken}  hidden 20")
    page = leaderboard.render(tmp_path, tmp_path / "lb.md").read_text()
    assert kept in page and mistaken not in page
    assert compare.main(["--logs", f"a={mistaken}", "--records", str(tmp_path), "--no-plot"]) == 1
    assert f"run {mistaken} is hidden" in capsys.readouterr().err
    assert submit.main(["--records", str(tmp_path), "--no-leaderboard", "--name", "n", "--description", "d",
                        kept, mistaken]) == 1
    assert f"run {mistaken} is hidden" in capsys.readouterr().err
    # a second hide, an unknown run, an empty reason: one line each, nothing appended
    for argv, message in (([mistaken, "--reason", "again"], f"run {mistaken} is hidden already (line 3: "),
                          (["nope", "--reason", "r"], "no run with id 'nope'"),
                          ([kept, "--reason", " "], "--reason: say why the run is hidden")):
        assert records.main(["--records", str(tmp_path), "hide", *argv]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
    assert (tmp_path / "runs.jsonl").read_bytes() == after


def test_records_takes_records_after_the_command_too(tmp_path, capsys):
    """`hide RUN_ID --reason R --records DIR` and `hidden --records DIR` act on DIR, as `--records DIR hide ...` does."""
    from harness import records

    run_id = "20261201-000000-cpu-tiny-s0-aaaa"
    records.append_run({"run_id": run_id, "track": "cpu-tiny", "name": "x", "status": "ok",
                        "timestamp": "2026-12-01T00:00:00+00:00", "run_dir": str(tmp_path / run_id)}, tmp_path)
    assert records.main(["hide", run_id, "--reason", "wrong data", "--records", str(tmp_path)]) == 0
    assert f"hidden: {run_id}" in capsys.readouterr().out
    assert records.main(["hidden", "--records", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith(f"{run_id}  hidden 20")
    assert records.main(["--records", str(tmp_path), "hidden"]) == 0
    assert capsys.readouterr().out.startswith(f"{run_id}  hidden 20")


def test_check_appendable_makes_a_missing_runs_log_empty(tmp_path):
    check_appendable(tmp_path / "records")
    assert (tmp_path / "records" / "runs.jsonl").read_bytes() == b""
    append_run({"run_id": "a"}, tmp_path / "records")
    check_appendable(tmp_path / "records")  # an existing log is left as it is
    assert [json.loads(line)["run_id"] for line in (tmp_path / "records" / "runs.jsonl").read_text().splitlines()] == ["a"]


def test_check_appendable_refuses_in_one_line_naming_the_runs_log(tmp_path):
    """Launchers call it before a run (harness.run, compare): a records path that is a file, or a runs log that is a
    folder, is one line naming the runs log and why, and neither is changed."""
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder\n")
    with pytest.raises(RecordsError) as exc:
        check_appendable(a_file)
    assert str(exc.value) == f"runs log {a_file / 'runs.jsonl'} cannot be appended to: {a_file}: not a folder"
    assert a_file.read_text() == "not a folder\n"

    records = tmp_path / "records"
    (records / "runs.jsonl").mkdir(parents=True)
    with pytest.raises(RecordsError) as exc:
        check_appendable(records)
    runs_log = records / "runs.jsonl"
    assert str(exc.value) == f"runs log {runs_log} cannot be appended to: Is a directory"  # the path named once
    assert runs_log.is_dir() and not any(runs_log.iterdir())


def test_check_appendable_refuses_a_lock_held_past_its_timeout_in_one_line(tmp_path, monkeypatch):
    """A runs log whose lock another writer holds past LOCK_TIMEOUT_S is refused in one line naming the lock, and
    the missing runs log is not made."""
    from filelock import FileLock

    from harness import records

    monkeypatch.setattr(records, "LOCK_TIMEOUT_S", 0.1)
    lock = f"{tmp_path.resolve() / 'runs.jsonl'}.lock"
    with FileLock(lock):  # another object on the same file: as another writer's, it excludes this one
        with pytest.raises(RecordsError) as exc:
            check_appendable(tmp_path)
    assert str(exc.value) == (f"runs log {tmp_path / 'runs.jsonl'} cannot be appended to: "
                              f"The file lock '{lock}' could not be acquired.")
    assert not (tmp_path / "runs.jsonl").exists()


def test_a_short_write_is_an_error_and_the_next_row_starts_a_line_of_its_own(tmp_path, monkeypatch):
    """A write the disk takes only part of (it fills): an OSError naming the runs log, one torn line, and the next
    append whole on a line of its own."""
    import os

    append_run({"run_id": "a"}, tmp_path)
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:10]))
    with pytest.raises(OSError) as exc:
        append_run({"run_id": "b"}, tmp_path)
    monkeypatch.undo()
    path = tmp_path / "runs.jsonl"
    assert str(exc.value) == f"{path}: short write (10 of 29 bytes); the last line is torn"
    append_run({"run_id": "c"}, tmp_path)
    frame, problems = load_records(tmp_path)
    assert list(frame["run_id"]) == ["a", "c"] and len(problems) == 1 and problems[0].startswith(f"{path}:2: skipped")


def test_a_record_json_nested_deeper_than_the_parser_goes_is_one_line(tmp_path):
    from harness.records import read_record

    path = tmp_path / "2026-12-01_x" / "record.json"
    path.parent.mkdir()
    path.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(RecordsError, match=r"record.json: not valid JSON \(maximum recursion depth"):
        read_record(path)


def _one_run_and_its_log(tmp_path) -> tuple[str, bytes]:
    run_id = "20261201-000000-cpu-tiny-s0-aaaa"
    append_run({"run_id": run_id, "track": "cpu-tiny", "status": "ok", "run_dir": str(tmp_path / run_id)}, tmp_path)
    return run_id, (tmp_path / "runs.jsonl").read_bytes()


def test_hidden_reports_what_it_cannot_read_and_a_tombstone_of_no_row(tmp_path, capsys):
    """`records hidden` names each damaged line and a tombstone hiding a run no row has (exit 0: the rest is
    listed), and a runs log it cannot read at all (a folder, a link loop) in one line with exit 1."""
    from harness import records

    run_id, _ = _one_run_and_its_log(tmp_path)
    with open(tmp_path / "runs.jsonl", "a") as f:
        f.write('{"schema": 1, "hides": "ghost", "reason": "r"}\n{"schema": 1, "run_id": "torn')
    assert records.main(["--records", str(tmp_path), "hidden"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"records: {tmp_path / 'runs.jsonl'}:3: skipped damaged line (Unterminated string starting at: line 1 column 25 (char 24))"
    assert err[1] == f"records: {tmp_path / 'runs.jsonl'}:2: a tombstone hides 'ghost', which no row has"
    for make, why in ((lambda p: p.mkdir(), "Is a directory"), (lambda p: p.symlink_to(p.name), "Too many levels of symbolic links")):
        runs = tmp_path / "runs.jsonl"
        runs.rmdir() if runs.is_dir() and not runs.is_symlink() else runs.unlink()
        make(runs)
        assert records.main(["--records", str(tmp_path), "hidden"]) == 1
        assert capsys.readouterr().err == f"records: {tmp_path / 'runs.jsonl'}: cannot read ({why})\n"
        assert records.main(["--records", str(tmp_path), "hide", run_id, "--reason", "r"]) == 1
        assert capsys.readouterr().err == (f"error: {tmp_path / 'runs.jsonl'}: no run with id {run_id!r} (1 problems "
                                           f"reading it; the first: {tmp_path / 'runs.jsonl'}: cannot read ({why}))\n")


def test_read_rows_says_whether_the_runs_log_could_be_read(tmp_path):
    """`records hidden` exits 1 on this fact, never on a problem line's wording: a damaged line is read (False), a
    runs log that is a folder is not (True), a missing one is (no rows)."""
    from harness.records import _read_rows

    _one_run_and_its_log(tmp_path)
    runs = tmp_path / "runs.jsonl"
    with open(runs, "a") as f:
        f.write("{torn")
    rows, problems, unreadable = _read_rows(tmp_path)
    assert (len(rows), len(problems), unreadable) == (1, 1, False)
    runs.unlink()
    assert _read_rows(tmp_path) == ([], [], False)
    runs.mkdir()
    assert _read_rows(tmp_path) == ([], [f"{runs}: cannot read (Is a directory)"], True)
    out = subprocess.run([sys.executable, "-m", "harness.records", "--records", str(tmp_path), "hidden"],
                         capture_output=True, text=True)
    assert (out.returncode, out.stdout, out.stderr) == (1, "", f"records: {runs}: cannot read (Is a directory)\n")


def test_records_given_a_file_is_a_usage_error_naming_it(tmp_path, capsys):
    from harness import records

    a_file = tmp_path / "a_file"
    a_file.write_text("x\n")
    for argv in (["hidden"], ["hide", "a", "--reason", "r"]):
        with pytest.raises(SystemExit) as exc:
            records.main(["--records", str(a_file), *argv])
        assert exc.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == f"python -m harness.records: error: --records {a_file}: not a folder"
    assert a_file.read_text() == "x\n"


def test_a_reason_is_kept_on_one_line(tmp_path, capsys):
    """`hidden` lists a run per line: a reason's newlines and runs of spaces are one space each, as submit keeps
    an exclusion's reason."""
    from harness import records

    run_id, _ = _one_run_and_its_log(tmp_path)
    assert records.main(["--records", str(tmp_path), "hide", run_id, "--reason", " wrong\ndata \t here "]) == 0
    assert json.loads((tmp_path / "runs.jsonl").read_text().splitlines()[-1])["reason"] == "wrong data here"
    capsys.readouterr()
    assert records.main(["--records", str(tmp_path), "hidden"]) == 0
    assert capsys.readouterr().out.endswith("(line 2): wrong data here\n")


def _a_record(**stats) -> dict:
    return {"schema": 3, "name": "x", "track": "cpu-tiny", "date": "2026-12-01", "code_hash": "0" * 64,
            "runs": [{"run_id": "r0", "train_time_ms": 100.0, "steps": 20}, {"run_id": "r1", "train_time_ms": 110.0}],
            "stats": {"n": 2, "target_val_loss": 3.28, "final_at_or_below_target": 2,
                      "train_time_ms": {"mean": 105.0, "std": 7.0}, "final_val_loss": {"mean": 3.2, "std": 0.01},
                      "p_loss_below_target": 0.004, "previous": None, **stats}}


@pytest.mark.parametrize("change, why", [
    (lambda r: r["stats"]["train_time_ms"].update(mean=-105.0), "stats.train_time_ms.mean is -105.0, a negative count or time"),
    (lambda r: r["stats"].update(n=-2), "stats.n is -2, a negative count or time"),
    (lambda r: r["runs"][0].update(steps=-20), "runs[0].steps is -20, a negative count or time"),
    (lambda r: r["runs"][1].update(time_to_target_ms=-1), "runs[1].time_to_target_ms is -1, a negative count or time"),
])
def test_a_record_with_a_negative_time_or_count_is_damaged(tmp_path, change, why):
    """A negative mean time would lead the leaderboard: such a record.json is reported and skipped."""
    from harness.records import list_records, record_problem

    record = _a_record()
    assert record_problem(record) is None
    change(record)
    assert record_problem(record) == why
    (tmp_path / "2026-12-01_x").mkdir()
    (tmp_path / "2026-12-01_x" / "record.json").write_text(json.dumps(record))
    assert list_records(tmp_path) == ([], [f"{tmp_path / '2026-12-01_x' / 'record.json'}: skipped damaged record ({why})"])


def test_a_record_json_that_is_a_link_loop_is_reported_not_dropped(tmp_path):
    """glob's '*/record.json' passes over a link loop (exists() is False): the record would vanish unreported."""
    from harness.records import list_records

    for name in ("2026-12-01_good", "2026-12-02_loop"):
        (tmp_path / name).mkdir()
    (tmp_path / "2026-12-01_good" / "record.json").write_text(json.dumps(_a_record()))
    (tmp_path / "2026-12-02_loop" / "record.json").symlink_to("record.json")
    (tmp_path / "2026-12-03_no_record").mkdir()  # a folder without a record.json is not a record
    records, problems = list_records(tmp_path)
    assert [r["folder"] for r in records] == ["2026-12-01_good"]
    assert problems == [f"{tmp_path / '2026-12-02_loop' / 'record.json'}: skipped damaged record "
                        "(cannot read (Too many levels of symbolic links))"]


def test_a_row_with_a_negative_time_or_count_reads_it_as_missing(tmp_path):
    """A runs-log row's negative time, steps or tokens is named and read as missing, as a wrongly typed one is."""
    append_run({"run_id": "a", "track": "cpu-tiny", "time_to_target_ms": -5.0, "steps": -20, "tokens": 100,
                "train_time_ms": 0.0}, tmp_path)
    (row,) = find_runs(["a"], tmp_path)
    assert (row["time_to_target_ms"], row["steps"], row["tokens"], row["train_time_ms"]) == (None, None, 100, 0.0)
    path = tmp_path / "runs.jsonl"
    assert load_records(tmp_path)[1] == [f"{path}:1: time_to_target_ms is -5.0, a negative count or time; read as missing",
                                         f"{path}:1: steps is -20, a negative count or time; read as missing"]
    assert json.loads(path.read_text())["steps"] == -20  # the line itself is kept as written


def test_a_runs_log_that_is_a_fifo_is_refused_in_one_line_naming_it(tmp_path):
    """check_appendable opened a FIFO write-only and waited for a reader; append_run's pread failed with a bare
    '[Errno 22] Invalid argument'. Both name the runs log now, and nothing is written into the FIFO."""
    import os

    os.mkfifo(tmp_path / "runs.jsonl")
    with pytest.raises(RecordsError) as exc:
        check_appendable(tmp_path)
    assert str(exc.value) == (f"runs log {tmp_path / 'runs.jsonl'} cannot be appended to: "
                              "not a regular file (a FIFO, device or socket)")
    with pytest.raises(OSError) as exc:
        append_run({"run_id": "a"}, tmp_path)
    assert str(exc.value) == f"[Errno 22] not a regular file (a FIFO, device or socket): '{tmp_path / 'runs.jsonl'}'"


def test_a_records_folder_that_is_a_link_loop_is_an_os_error_naming_it(tmp_path):
    """Path.resolve raises RuntimeError on a link loop before Python 3.13: an OSError (ELOOP) naming the folder, which
    every command reports in one line, not a traceback."""
    from harness.cli import os_error_line

    (tmp_path / "records").symlink_to("records")
    for call in (lambda: append_run({"run_id": "a"}, tmp_path / "records"), lambda: check_appendable(tmp_path / "records")):
        with pytest.raises((OSError, RecordsError)) as exc:
            call()
        line = os_error_line(exc.value) if isinstance(exc.value, OSError) else str(exc.value)
        assert line.endswith(f"{tmp_path / 'records'}: Too many levels of symbolic links")
