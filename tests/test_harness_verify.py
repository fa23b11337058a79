"""harness.verify on record folders written here: run ids that look like numbers, statistics.md edits."""
import json
import re
import shutil
from pathlib import Path

import pytest

from harness import submit, verify
from harness.logs import InvalidLog, load_run
from harness.records import append_run
from helpers import CODE, modded_log, rows, run_ingest, write

RUNS = [(80694, 3.2775), (80720, 3.2768), (80659, 3.2772), (80818, 3.2779)]
NUMBER_LIKE_IDS = ["1e5", "4518e917", "0x1f", "20250823-4518e917-1e5"]


def record_with_run_ids(where, tmp_path, capsys, run_ids) -> Path:
    """Ingest len(run_ids) logs, give their run folders these ids in a fresh runs log, submit them."""
    for i, (ms, loss) in enumerate(RUNS[:len(run_ids)]):
        write(tmp_path / "logs", f"{i}.txt", modded_log(ms, loss))
    assert run_ingest(where, tmp_path / "logs") == 0
    records = tmp_path / "renamed"
    for row, run_id in zip(rows(where), run_ids):
        run_dir = Path(row["run_dir"]).rename(Path(row["run_dir"]).parent / run_id)
        append_run({**row, "run_id": run_id, "run_dir": str(run_dir)}, records)
    capsys.readouterr()
    assert submit.main(["--records", str(records), "--no-leaderboard", "--name", "ids", "--description", "d",
                        *run_ids]) == 0, capsys.readouterr().err
    (folder,) = [p for p in records.iterdir() if p.is_dir()]
    return folder


def test_run_ids_that_look_like_numbers_verify(where, tmp_path, capsys):
    folder = record_with_run_ids(where, tmp_path, capsys, NUMBER_LIKE_IDS)
    assert "4518e917" in (folder / "statistics.md").read_text()
    capsys.readouterr()
    assert verify.main([str(folder)]) == 0, capsys.readouterr().out
    assert capsys.readouterr().out == f"{folder}: ok\n"


@pytest.mark.parametrize("old, new", [("4518e917", "4518e918"), ("0x1f", "0x1e"), ("3.2775", "3.2774")])
def test_an_edited_statistics_md_is_named(where, tmp_path, capsys, old, new):
    folder = record_with_run_ids(where, tmp_path, capsys, NUMBER_LIKE_IDS)
    stats_md = folder / "statistics.md"
    lines = stats_md.read_text().splitlines(keepends=True)
    lineno = next(i for i, line in enumerate(lines, 1) if old in line)
    lines[lineno - 1] = lines[lineno - 1].replace(old, new, 1)
    stats_md.write_text("".join(lines))
    capsys.readouterr()
    assert verify.main([str(folder)]) == 1
    out = capsys.readouterr().out
    assert f"{stats_md}:{lineno}: expected" in out and "1 mismatches" in out, out


@pytest.mark.parametrize("damage, found", [(lambda p: p.unlink(), "missing"),
                                           (lambda p: p.write_bytes(b"\xff\xfe"), "cannot read ('utf-8' codec")],
                         ids=["missing", "not-utf8"])
def test_a_statistics_md_missing_or_unreadable_is_one_line(where, tmp_path, capsys, damage, found):
    folder = record_with_run_ids(where, tmp_path, capsys, NUMBER_LIKE_IDS)
    damage(folder / "statistics.md")
    (problem,) = verify.verify(folder)
    assert problem.startswith(f"{folder / 'statistics.md'}: {found}") and "\n" not in problem


def test_record_json_figures_are_compared_as_numbers(where, tmp_path, capsys):
    folder = record_with_run_ids(where, tmp_path, capsys, NUMBER_LIKE_IDS)
    record = json.loads((folder / "record.json").read_text())
    record["stats"]["train_time_ms"]["mean"] *= 1 + 1e-12  # within JSON_RTOL: the same figure
    (folder / "record.json").write_text(json.dumps(record, indent=1) + "\n")
    capsys.readouterr()
    assert verify.main([str(folder)]) == 0, capsys.readouterr().out
    copy = tmp_path / "copy"
    shutil.copytree(folder.parent, copy)
    record["stats"]["train_time_ms"]["mean"] += 1
    (copy / folder.name / "record.json").write_text(json.dumps(record, indent=1) + "\n")
    capsys.readouterr()
    assert verify.main([str(copy / folder.name)]) == 1
    assert "record.json: stats.train_time_ms.mean: expected" in capsys.readouterr().out


def test_a_missing_events_file_is_named(where, tmp_path, capsys):
    folder = record_with_run_ids(where, tmp_path, capsys, NUMBER_LIKE_IDS)
    events = folder / "runs" / "0x1f" / "events.jsonl"
    events.unlink()
    capsys.readouterr()
    assert verify.main([str(folder)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{events}: missing" and "statistics not recomputed: 1 of 4 runs cannot be read" in out[1]


def test_a_schema_2_record_is_read_under_its_old_names(where, tmp_path, capsys):
    """Schema 2 named a run's time time_ms in record.json and statistics.md; it still verifies and ranks."""
    from harness import leaderboard

    folder = record_with_run_ids(where, tmp_path, capsys, NUMBER_LIKE_IDS)
    record = json.loads((folder / "record.json").read_text())
    record["schema"] = 2
    record["stats"]["time_ms"] = record["stats"].pop("train_time_ms")
    for run in record["runs"]:
        run["time_ms"] = run["train_time_ms"]
    (folder / "record.json").write_text(json.dumps(record, indent=1) + "\n")
    stats_md = folder / "statistics.md"
    stats_md.write_text(stats_md.read_text().replace("- train_time_ms = [", "- time_ms = ["))
    capsys.readouterr()
    assert verify.main([str(folder)]) == 0, capsys.readouterr().out
    page = leaderboard.render(folder.parent, tmp_path / "lb.md").read_text()
    assert "| 80.72 ± 0.07 " in page, page


@pytest.mark.parametrize("name", ["statistics.md", "record.json"])
def test_a_fifo_in_a_record_folder_is_named_not_waited_on(where, tmp_path, capsys, name):
    import os
    import subprocess
    import sys

    folder = record_with_run_ids(where, tmp_path, capsys, NUMBER_LIKE_IDS)
    (folder / name).unlink()
    os.mkfifo(folder / name)
    proc = subprocess.run([sys.executable, "-m", "harness.verify", str(folder)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{folder / name}: " in proc.stdout and "not a regular file" in proc.stdout, proc.stdout


def test_a_train_log_giving_a_key_twice_is_one_problem_naming_the_line(where, tmp_path):
    """The run's events were read before its train.log gained the line; loaded again, the run is refused alike."""
    assert run_ingest(where, write(tmp_path / "logs", "a.txt", modded_log())) == 0
    run_dir = Path(rows(where)[0]["run_dir"])
    log, train_log = load_run(run_dir), run_dir / "train.log"
    lines = train_log.read_text().splitlines(keepends=True)
    i = max(i for i, line in enumerate(lines) if line.startswith("step:") and " val_loss:" in line)
    lines[i] = lines[i].replace(" val_loss:", " val_loss:9 val_loss:", 1)
    train_log.write_text("".join(lines))
    why = f"{train_log}:{i + 1}: val_loss given twice: not a valid log"
    assert verify.check_against_log(log)[-1] == why
    with pytest.raises(InvalidLog, match=f"^{re.escape(why)}$"):
        load_run(run_dir)


# ----------------------------------------------------------------------------------------------
# Refusals of a record whose files disagree: each one line naming the file, expected and found

def test_a_runs_folder_unlike_record_json_is_named(where, tmp_path, capsys):
    folder = record_with_run_ids(where, tmp_path, capsys, NUMBER_LIKE_IDS)
    runs_dir, listed = folder / "runs", sorted(NUMBER_LIKE_IDS)
    shutil.rmtree(runs_dir / "0x1f")
    left = [i for i in listed if i != "0x1f"]
    assert verify.verify(folder)[0] == f"{runs_dir}: expected the runs of record.json {listed}, found {left}"
    shutil.copytree(runs_dir / "1e5", runs_dir / "0x1f")
    shutil.copytree(runs_dir / "1e5", runs_dir / "extra")
    capsys.readouterr()
    assert verify.main([str(folder)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{runs_dir}: expected the runs of record.json {listed}, found {listed + ['extra']}"


def _rewrite_events(events: Path, change) -> None:
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    change(lines)
    events.write_text("".join(json.dumps(e) + "\n" for e in lines))


def test_a_code_hash_mismatch_is_named_where_it_is(where, tmp_path, capsys):
    """record.json's code_hash, the snapshot's CODE_HASH file and each run's meta.code_hash must be the hash the
    snapshot's files recompute to; each one that is not is named."""
    folder = record_with_run_ids(where, tmp_path, capsys, NUMBER_LIKE_IDS)
    record_path, snapshot = folder / "record.json", folder / "code"
    code_hash = json.loads(record_path.read_text())["code_hash"]
    assert verify.verify(folder) == []

    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "code_hash": "a" * 64}, indent=1) + "\n")
    problems = verify.verify(folder)
    assert problems[0] == f"{record_path}: code_hash: expected {code_hash}, found {'a' * 64}"
    record_path.write_text(json.dumps(record, indent=1) + "\n")

    (snapshot / "CODE_HASH").write_text("b" * 64 + "\n")
    assert verify.verify(folder) == [f"{snapshot / 'CODE_HASH'}: expected {code_hash} (recomputed from {snapshot}), "
                                     f"found {'b' * 64}"]
    (snapshot / "CODE_HASH").write_text(code_hash + "\n")

    events = folder / "runs" / "0x1f" / "events.jsonl"
    _rewrite_events(events, lambda lines: next(e for e in lines if e["event"] == "meta").update(code_hash="c" * 64))
    capsys.readouterr()
    assert verify.main([str(folder)]) == 1
    assert f"{events}: meta.code_hash: expected {code_hash}, found {'c' * 64}" in capsys.readouterr().out.splitlines()


def test_a_record_without_readable_runs_says_so(where, tmp_path, capsys):
    folder = record_with_run_ids(where, tmp_path, capsys, NUMBER_LIKE_IDS)
    runs_dir = folder / "runs"
    for run_id in NUMBER_LIKE_IDS:
        (runs_dir / run_id / "events.jsonl").unlink()
    problems = verify.verify(folder)
    assert problems == [f"{runs_dir / i / 'events.jsonl'}: missing" for i in sorted(NUMBER_LIKE_IDS)] + [
        f"{runs_dir}: no readable runs"]
    shutil.rmtree(runs_dir)
    capsys.readouterr()
    assert verify.main([str(folder)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{runs_dir}: expected the runs of record.json {sorted(NUMBER_LIKE_IDS)}, found []",
        f"{runs_dir}: no readable runs", f"{folder}: FAILED, 2 mismatches"]


def base_and_faster_record(where, tmp_path, capsys) -> tuple[Path, Path]:
    """Two records of ingested logs: "base", and "fast" (other code, each run 1 s faster) with base as its previous."""
    for i, (ms, loss) in enumerate(RUNS):
        write(tmp_path / "base", f"{i}.txt", modded_log(ms, loss))
        write(tmp_path / "fast", f"{i}.txt", modded_log(ms - 1000, loss, code=CODE + "# faster\n"))
    sub = ["--records", str(where["records"]), "--no-leaderboard", "--description", "d"]
    for name in ("base", "fast"):
        before = {row["run_id"] for row in rows(where)} if (where["records"] / "runs.jsonl").exists() else set()
        assert run_ingest(where, tmp_path / name, name=name) == 0
        run_ids = [row["run_id"] for row in rows(where) if row["run_id"] not in before]
        assert submit.main([*sub, "--name", name, *run_ids]) == 0, capsys.readouterr().err
    base, fast = (next(where["records"].glob(f"*_{name}")) for name in ("base", "fast"))
    return base, fast


def test_an_unreadable_previous_record_is_one_line(where, tmp_path, capsys):
    """A record beating a previous one recomputes the speedup from that record's runs; where they cannot be read,
    that is one line naming the previous record, and the rest is still checked."""
    base, fast = base_and_faster_record(where, tmp_path, capsys)
    assert json.loads((fast / "record.json").read_text())["stats"]["previous"]["folder"] == base.name
    assert verify.verify(fast) == []
    shutil.rmtree(base / "runs")
    assert verify.verify(fast) == [f"{base}: the previous record's runs cannot be read "
                                   f"({base / 'runs'}: cannot read (No such file or directory))"]


def test_a_folder_that_is_not_there_is_one_line_and_the_rest_are_checked(where, tmp_path, capsys):
    folder = record_with_run_ids(where, tmp_path, capsys, NUMBER_LIKE_IDS)
    capsys.readouterr()
    assert verify.main([str(tmp_path / "nothing"), str(folder)]) == 1
    captured = capsys.readouterr()
    assert captured.err == f"{tmp_path / 'nothing'}: no such record folder\n" and captured.out == f"{folder}: ok\n"


@pytest.mark.parametrize("damage, problem", [
    (lambda r: r["runs"][0].pop("steps"), "runs[0].steps: expected 1390, found nothing"),
    (lambda r: r["runs"][0].pop("time_to_target_ms"), "runs[0].time_to_target_ms: expected 80694.0, found nothing"),
    (lambda r: r["stats"].pop("reached_target"), "stats.reached_target: expected 4, found nothing"),
    (lambda r: r["stats"]["train_time_ms"].pop("ci95"), "stats.train_time_ms.ci95: expected ["),
], ids=["run-steps", "run-time-to-target", "reached-target", "time-ci95"])
def test_a_figure_record_json_lacks_is_one_line_and_statistics_md_still_checked(where, tmp_path, capsys, damage,
                                                                                  problem):
    """statistics.md is compared with the recomputed figures' rendering: a figure record.json lacks is one line,
    never a traceback, and statistics.md is still checked."""
    folder = record_with_run_ids(where, tmp_path, capsys, ["a", "b", "c", "d"])
    record_path = folder / "record.json"
    record = json.loads(record_path.read_text())
    damage(record)
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    (line,) = verify.verify(folder)
    assert line.startswith(f"{record_path}: {problem}")
    stats_md = folder / "statistics.md"
    stats_md.write_text(stats_md.read_text().replace("- runs: 4 (", "- runs: 5 ("))
    capsys.readouterr()
    assert verify.main([str(folder)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == line and out[1].startswith(f"{stats_md}:") and out[2] == f"{folder}: FAILED, 2 mismatches"


def test_a_previous_record_s_figures_that_cannot_be_rendered_are_one_line(where, tmp_path, capsys):
    """Where the previous record's runs cannot be read, record.json's figures for it are rendered as they stand;
    where they lack one, statistics.md is not compared, in one line saying why."""
    base, fast = base_and_faster_record(where, tmp_path, capsys)
    shutil.rmtree(base / "runs")
    record = json.loads((fast / "record.json").read_text())
    record["stats"]["previous"]["train_time_ms"].pop("mean")
    (fast / "record.json").write_text(json.dumps(record, indent=1) + "\n")
    assert verify.verify(fast) == [
        f"{base}: the previous record's runs cannot be read ({base / 'runs'}: cannot read (No such file or directory))",
        f"{fast / 'statistics.md'}: not compared: record.json's figures cannot be rendered ('mean' missing)"]


@pytest.mark.parametrize("change, line", [
    (dict(date="2001-01-01"), "date: expected the folder's {day!r}, found '2001-01-01'"),
    (dict(excluded=[1]), "excluded[0]: expected {{\"run_id\": ..., \"reason\": ...}}, found 1"),
    (dict(excluded=[{"run_id": "x", "reason": " "}]),
     "excluded[0]: expected {{\"run_id\": ..., \"reason\": ...}}, found {{'run_id': 'x', 'reason': ' '}}"),
    (dict(excluded=[{"run_id": "0x1f", "reason": "slow"}]), "excluded[0]: run 0x1f is also one of the record's runs"),
])
def test_record_json_s_date_and_exclusions_are_checked(where, tmp_path, capsys, change, line):
    """What submit writes and nothing recomputes: the date the folder is named by, each excluded run as a run id
    with a reason, never one of the record's own runs."""
    folder = record_with_run_ids(where, tmp_path, capsys, NUMBER_LIKE_IDS)
    record_path = folder / "record.json"
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, **change}, indent=1) + "\n")
    day = folder.name.split("_", 1)[0]
    assert f"{record_path}: {line.format(day=day)}" in verify.verify(folder)


def test_a_folder_argument_that_is_a_file_or_a_link_loop_is_named_as_such(tmp_path, capsys):
    """Not 'no such record folder' for a path that is there: a file is 'not a folder', a link loop 'cannot read'."""
    a_file, loop = tmp_path / "record.json", tmp_path / "loop"
    a_file.write_text("{}")
    loop.symlink_to("loop")
    assert verify.main([str(a_file), str(loop), str(tmp_path / "nothing")]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{a_file}: not a folder (a record is a folder, records/<date>_<name>)",
        f"{loop}: cannot read (Too many levels of symbolic links)",
        f"{tmp_path / 'nothing'}: no such record folder"]


def _extra_stats_key(folder: Path) -> None:
    record = json.loads((folder / "record.json").read_text())
    record["stats"]["extra"] = 1
    (folder / "record.json").write_text(json.dumps(record, indent=1) + "\n")


@pytest.mark.parametrize("damage, problem", [
    (lambda f: shutil.rmtree(f / "code"), "{f}/code: no code snapshot folder"),
    (lambda f: [p.unlink() for p in (f / "code").rglob("*") if p.name != "CODE_HASH"],
     "{f}/code: the code snapshot holds no files"),
    (lambda f: (f / "runs" / "0x1f" / "train.log").unlink(),
     "{f}/runs/0x1f/train.log: missing (the log this run was read from)"),
    (lambda f: [(f / "runs" / "0x1f" / "train.log").unlink(), (f / "runs" / "0x1f" / "train.log").mkdir()],
     "{f}/runs/0x1f/train.log: cannot read (Is a directory)"),
    (_extra_stats_key, "{f}/record.json: stats.extra: not expected, found 1"),
    (lambda f: open(f / "statistics.md", "a").write("one more line\n"), "{f}/statistics.md: expected 34 lines, found 35"),
], ids=["no-code", "empty-code", "no-train-log", "train-log-a-folder", "extra-key", "extra-line"])
def test_a_damaged_record_part_is_one_line_naming_it(where, tmp_path, capsys, damage, problem):
    """What verify checks that a record can lose or gain: its code, an ingested run's train.log (the log it was read
    from), a figure record.json holds beyond the recomputed ones, a line statistics.md has beyond its rendering."""
    folder = record_with_run_ids(where, tmp_path, capsys, NUMBER_LIKE_IDS)
    damage(folder)
    capsys.readouterr()
    assert verify.main([str(folder)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == problem.format(f=folder) and out[-1] == f"{folder}: FAILED, {len(out) - 1} mismatches", out


def test_a_folder_inside_a_record_that_cannot_be_listed_is_one_line(where, tmp_path, capsys, monkeypatch):
    """A runs/ folder another user's permissions keep closed (root reads any, so the error is made here)."""
    folder = record_with_run_ids(where, tmp_path, capsys, NUMBER_LIKE_IDS)

    def closed(folder):
        raise PermissionError(13, "Permission denied", str(folder / "runs"))

    monkeypatch.setattr(verify, "verify", closed)
    capsys.readouterr()
    assert verify.main([str(folder)]) == 1
    assert capsys.readouterr().out == f"{folder / 'runs'}: Permission denied\n{folder}: FAILED, 1 mismatches\n"


def test_a_train_log_that_is_a_link_loop_makes_its_run_unreadable(where, tmp_path, capsys):
    """A run folder's train.log that is a link loop is named, as any log that cannot be read: never passed over."""
    folder = record_with_run_ids(where, tmp_path, capsys, NUMBER_LIKE_IDS)
    train_log = folder / "runs" / "0x1f" / "train.log"
    train_log.unlink()
    train_log.symlink_to("train.log")
    assert verify.verify(folder) == [f"{train_log}: cannot read (Too many levels of symbolic links)",
                                     f"{folder / 'record.json'}: statistics not recomputed: 1 of 4 runs cannot be read "
                                     "(above)"]
