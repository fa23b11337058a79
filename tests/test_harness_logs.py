"""harness.logs: the one parser, on logs written here (modded-nanogpt's layout: code first, then steps)."""
import math
import re

import pytest

from harness.logs import (LogError, code_differences, header_lines, load_run, load_runs, parse_step_line, parse_text,
                          printed_tolerance)
from helpers import LOG_HEAD as CODE, LOG_STEPS as STEPS

def write(tmp_path, text, name="log.txt"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_full_modded_nanogpt_log(tmp_path):
    log = load_run(write(tmp_path, CODE + STEPS, "0a1b2c.txt"))
    assert log.name == "0a1b2c" and log.status == "ok"
    assert log.val_steps == [0, 125, 1250, 1390]
    assert log.val_losses == [10.8258, 4.3817, 3.3062, 3.2775]
    assert log.val_times_ms == [0, 7024, 71533, 79532]
    assert (log.final_val_loss, log.train_time_ms, log.final_step) == (3.2775, 79532, 1390)
    assert (log.last_step, log.total_steps, log.step_avg_ms, log.tokens_per_s) == (1390, 1390, 57.22, None)
    assert log.target is None
    assert log.time_to_target(3.28) == 79532  # the first validation at or below the target
    assert log.time_to_target(3.31) == 71533
    assert log.time_to_target(3.0) is None


def test_header_lines_are_the_lines_before_the_first_step_line():
    lines = header_lines((CODE + STEPS).replace("\n", "\r\n"))
    assert lines == CODE.splitlines()  # the code's "step:" inside strings and comments is not a step line
    assert header_lines("a\nb") == ["a", "b"] and header_lines("step:0/1 x\na") == [] and header_lines("") == []


def test_the_vocabulary_is_read_from_the_header_only(tmp_path):
    text = CODE + "model = GPT(vocab_size=50257)\n" + STEPS
    assert parse_text(text, source="x").vocab_size == 50257
    assert parse_text(CODE + STEPS + "model = GPT(vocab_size=50257)\n", source="x").vocab_size is None


def test_our_format_extra_tokens(tmp_path):
    text = ("step:0/10 val_loss:10.9 train_time:0ms step_avg:0.00ms tokens_per_s:0 mfu:n/a\n"
            "step:5/10 train_time:50ms step_avg:10.00ms tokens_per_s:51200 mfu:41.5% some:thing\n"
            "step:10/10 val_loss:4.5 train_time:100ms step_avg:10.00ms tokens_per_s:52000 mfu:n/a\n")
    log = parse_text(text, source="x")
    assert log.status == "ok" and log.tokens_per_s == 52000 and log.val_losses == [10.9, 4.5]
    assert parse_step_line("step:5/10 train_time:50ms step_avg:10.00ms tokens_per_s:51200 mfu:41.5% some:thing") == {
        "step": 5, "total": 10, "train_time_ms": 50.0, "step_avg_ms": 10.0, "tokens_per_s": 51200.0, "mfu": 41.5}


@pytest.mark.parametrize("line", ["  step:1/2 val_loss:1 train_time:1ms", "xstep:1/2 val_loss:1", "step:1 val_loss:1",
                                  "step:1/2x val_loss:1", 'print(f"step:{step}/{n}")', "step:a/b val_loss:1"])
def test_not_step_lines(line):
    assert parse_step_line(line) is None


@pytest.mark.parametrize("line, key", [("step:10/10 val_loss:4.6 val_loss:4.5 train_time:100ms", "val_loss"),
                                       ("step:10/10 val_loss:4.5 train_time:n/a train_time:100ms", "train_time"),
                                       ("step:10/10 val_loss:4.5 train_time:100ms step:9/10", "step")])
def test_a_step_line_giving_a_key_twice_is_refused_naming_the_line(tmp_path, line, key):
    """Which of two values a line means is unknowable: the text log, and a run folder whose train.log holds the
    line, are refused in one line naming file and line number."""
    from harness.logs import InvalidLog
    from harness.runlog import EventLog

    assert parse_step_line(line)["malformed"] == f"{key} given twice"
    text = "step:0/10 val_loss:10.9 train_time:0ms\nstep:5/10 train_time:50ms\n" + line + "\n"
    with pytest.raises(InvalidLog, match=f"^x:3: {key} given twice: not a valid log$"):
        parse_text(text, source="x")
    run = tmp_path / "run"
    events = EventLog(run)
    events.write("val", step=10, val_loss=4.5, train_time_ms=100.0)
    events.close()
    (run / "train.log").write_text(text)
    where = re.escape(str(run / "train.log"))
    with pytest.raises(InvalidLog, match=f"^{where}:3: {key} given twice: not a valid log$"):
        load_run(run)


def test_cut_off_log_is_incomplete(tmp_path):
    cut = CODE + STEPS.split("step:1389")[0]  # the run died after step 1250's validation
    log = load_run(write(tmp_path, cut))
    assert log.status == "incomplete"
    assert (log.final_val_loss, log.train_time_ms, log.final_step, log.total_steps) == (3.3062, 71533, 1250, 1390)


def test_torn_last_line(tmp_path):
    log = load_run(write(tmp_path, CODE + STEPS[: STEPS.index("step:1390/1390") + 25]))
    assert log.status == "incomplete" and log.final_step == 1250  # 'step:1390/1390 val_loss:' with no time: ignored


def test_diverged_log(tmp_path):
    log = parse_text("step:0/4 val_loss:10.0 train_time:0ms\nstep:4/4 val_loss:nan train_time:9ms\n", source="d")
    assert log.status == "diverged" and math.isnan(log.final_val_loss)


def test_no_validation_line_is_a_one_line_error(tmp_path):
    path = write(tmp_path, CODE + "step:1/1390 train_time:28ms step_avg:28.45ms\n")
    with pytest.raises(LogError) as exc:
        load_run(path)
    msg = str(exc.value)
    assert str(path) in msg and "no validation line" in msg and "\n" not in msg


def test_missing_paths(tmp_path):
    with pytest.raises(LogError, match="no such log file"):
        load_run(tmp_path / "nope.txt")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(LogError, match="not a run directory"):
        load_run(tmp_path / "empty_dir")
    with pytest.raises(LogError, match="no logs"):
        load_runs(tmp_path / "empty_dir")


def test_folder_of_logs_and_run_dirs(tmp_path):
    write(tmp_path, CODE + STEPS, "b.txt")
    write(tmp_path, STEPS, "a.log")
    write(tmp_path, "not a log", "notes.md")
    run = tmp_path / "run1"
    run.mkdir()
    write(run, STEPS, "train.log")
    logs = load_runs(tmp_path)
    assert [log.name for log in logs] == ["a", "b", "run1"]
    assert all(log.final_val_loss == 3.2775 for log in logs)


def test_events_run_dir(tmp_path):
    from harness.runlog import EventLog

    run = tmp_path / "20250101-000000-cpu-tiny-s7-abcd"
    events = EventLog(run)
    events.write("config", track="cpu-tiny", config={"seed": 7, "target_val_loss": 4.0})
    events.write("meta", code_hash="f" * 64, world_size=1, hardware={"kind": "cpu"}, versions={}, git={})
    events.write("val", step=0, val_loss=10.0, train_time_ms=0.0)
    events.write("step", step=1, train_time_ms=5.0, step_avg_ms=5.0, train_loss=None, tokens_per_s=1000.0, mfu=None)
    events.write("val", step=2, val_loss=3.9, train_time_ms=10.0)
    events.close()
    with open(run / "events.jsonl", "a") as f:
        f.write('{"event": "val", "step": 3, "val_lo')  # torn last line: the process was killed mid-write
    log = load_run(run)
    assert (log.run_id, log.track, log.seed, log.code_hash, log.target) == (run.name, "cpu-tiny", 7, "f" * 64, 4.0)
    assert log.status == "incomplete" and log.val_steps == [0, 2] and log.time_to_target() == 10.0
    assert len(log.problems) == 1 and "events.jsonl:6" in log.problems[0]


def test_our_trainer_stops_early_at_the_target():
    text = ("step:0/400 val_loss:10.8 train_time:0ms step_avg:0.00ms tokens_per_s:0 mfu:n/a\n"
            "step:20/400 val_loss:5.9 train_time:2000ms step_avg:100.00ms tokens_per_s:40000 mfu:n/a\n"
            "result: reached target 6.0 in 2000ms; 20 steps, 81,920 tokens, final val_loss 5.9000\n")
    assert parse_text(text, source="x").status == "ok"
    assert parse_text(text.rsplit("result", 1)[0], source="x").status == "incomplete"


def test_compare_refuses_a_zero_time_in_one_line(tmp_path):
    # A hand-made log that "reaches" the target at 0 ms: no speedup can be computed from it.
    import subprocess
    import sys

    for name, t in (("a", 0), ("b", 1000)):
        (tmp_path / f"{name}.txt").write_text(f"step:10/10 val_loss:3.0000 train_time:{t}ms step_avg:1.00ms\n")
    out = subprocess.run(
        [sys.executable, "-m", "harness.compare", "--no-plot", "--target", "3.28",
         "--logs", f"a={tmp_path / 'a.txt'}", f"b={tmp_path / 'b.txt'}"],
        capture_output=True, text=True,
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == "error: speedup needs positive times, got [0.0]"


@pytest.mark.parametrize("val, why", [
    (dict(step=2, val_loss=-2.5, train_time_ms=10.0), "val_loss -2.5 is negative"),
    (dict(step=2, val_loss=3.9, train_time_ms=-1.0), "is not a time"),
    (dict(step=0, val_loss=3.9, train_time_ms=10.0), "steps go backwards"),
    (dict(step=2, val_loss=3.9, train_time_ms=0.5), "time goes backwards"),
], ids=["negative-loss", "negative-time", "steps-back", "time-back"])
def test_impossible_val_events_are_refused(tmp_path, val, why):
    from harness.logs import InvalidLog
    from harness.runlog import EventLog

    run = tmp_path / "run"
    events = EventLog(run)
    events.write("config", track="cpu-tiny", config={"seed": 7, "target_val_loss": 4.0})
    events.write("val", step=1, val_loss=10.0, train_time_ms=1.0)
    events.write("val", **val)
    events.close()
    with pytest.raises(InvalidLog) as exc:
        load_run(run)
    assert str(exc.value).startswith(f"{run / 'events.jsonl'}: val event at step {val['step']}: ") and why in str(exc.value)


def test_a_2024_log_whose_clock_restarts_after_warm_up_is_read():
    """2024 modded-nanogpt reset training_time_ms at step 10 (untimed warm-up): the step lines' times go back
    once; the validations' times never do."""
    text = ("step:0/3000 val_loss:10.8258 train_time:0ms step_avg:nanms\n"
            "step:1/3000 train_loss:10.8258 train_time:29500ms step_avg:nanms\n"
            "step:10/3000 train_loss:9.1 train_time:31021ms step_avg:nanms\n"
            "step:11/3000 train_loss:8.9 train_time:216ms step_avg:nanms\n"
            "step:125/3000 val_loss:4.4 train_time:25130ms step_avg:219.87ms\n"
            "step:3000/3000 val_loss:3.2790 train_time:655000ms step_avg:219.00ms\n")
    log = parse_text(text, source="2024.txt")
    assert log.status == "ok" and log.val_times_ms == [0, 25130, 655000] and log.train_losses[-1] == 8.9


def test_code_differences_number_the_lines_of_each_side():
    a = "import os\nx = 1\ny = 2\nz = 3"
    b = "import os\nimport sys\nx = 1\nz = 4"
    assert code_differences(a, b) == [
        {"line_a": None, "a": None, "line_b": 2, "b": "import sys"},
        {"line_a": 3, "a": "y = 2", "line_b": 4, "b": "z = 4"},
        {"line_a": 4, "a": "z = 3", "line_b": None, "b": None},
    ]
    assert len(code_differences(a, b, limit=1)) == 1 and code_differences(a, a) == []


def test_a_log_that_cannot_be_read_is_named_with_why_not_passed_over(tmp_path):
    """A link loop given as a log or found in a folder, a FIFO in a folder, and a run directory's events.jsonl that
    is a link loop: each is 'cannot read (why)', not 'no such log file' nor 'no logs in this folder' (a FIFO is not
    opened)."""
    import os

    (tmp_path / "loop.txt").symlink_to("loop.txt")
    loop = "cannot read (Too many levels of symbolic links)"
    with pytest.raises(LogError, match=re.escape(f"{tmp_path / 'loop.txt'}: {loop}")):
        load_run(tmp_path / "loop.txt")
    with pytest.raises(LogError, match=re.escape(f"{tmp_path / 'loop.txt'}: {loop}")):
        load_runs(tmp_path)
    (tmp_path / "loop.txt").unlink()
    os.mkfifo(tmp_path / "fifo.log")
    with pytest.raises(LogError, match=re.escape(f"{tmp_path / 'fifo.log'}: cannot read (not a regular file")):
        load_runs(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "events.jsonl").symlink_to("events.jsonl")
    write(run_dir, CODE + STEPS, name="train.log")
    with pytest.raises(LogError, match=re.escape(f"{run_dir / 'events.jsonl'}: {loop}")):
        load_run(run_dir)


def test_a_step_past_its_planned_total_is_refused_naming_the_line():
    from harness.logs import InvalidLog

    with pytest.raises(InvalidLog) as exc:
        parse_text("step:20/20 val_loss:3.2 train_time:10ms\nstep:21/20 val_loss:3.1 train_time:11ms\n", source="x")
    assert str(exc.value) == "x:2: step 21 is past the planned 20: not a valid log"


def _events_run(tmp_path, *vals):
    from harness.runlog import EventLog

    run = tmp_path / "run"
    events = EventLog(run)
    events.write("config", track="cpu-tiny", config={"seed": 7, "target_val_loss": 4.0})
    for val in vals:
        events.write("val", **val)
    events.close()
    return run


def test_a_run_directory_s_events_without_validation_or_with_a_malformed_one(tmp_path):
    """No val event: one line naming the events file. A val event lacking a field: skipped and reported (verify and
    submit print it), the rest read. The events file itself names the same run as its directory."""
    run = _events_run(tmp_path)
    with pytest.raises(LogError) as exc:
        load_run(run)
    assert str(exc.value) == f"{run / 'events.jsonl'}: no validation line (no 'val' event)"
    run = _events_run(tmp_path / "b", dict(step=1, val_loss=4.5, train_time_ms=1.0), dict(step=2, val_loss=3.9))
    log = load_run(run)
    assert log.val_steps == [1] and log.problems == [
        f"{run / 'events.jsonl'}: skipped malformed val event (KeyError('train_time_ms'))"]
    assert load_run(run / "events.jsonl") == log


def test_a_log_path_that_leads_nowhere_is_one_line(tmp_path):
    (tmp_path / "dangling.txt").symlink_to(tmp_path / "gone.txt")
    with pytest.raises(LogError) as exc:
        load_run(tmp_path / "dangling.txt")
    assert str(exc.value) == f"{tmp_path / 'dangling.txt'}: no such log file"
    with pytest.raises(LogError) as exc:
        load_runs(tmp_path / "nothing")
    assert str(exc.value) == f"{tmp_path / 'nothing'}: no such log file or folder"


@pytest.mark.parametrize("text, expected", [("3.2775", 5e-5), ("1.23e-04", 5e-7), ("42", 0.5), ("nan", math.inf),
                                            ("1e999", math.inf), ("1E+999999999999999999", math.inf),
                                            ("1E-999999999999999999", 0.0)])
def test_printed_tolerance_is_half_the_last_printed_digit_for_any_exponent(text, expected):
    """verify holds each logged number to its printed digits; an exponent beyond Decimal's range is no traceback."""
    assert printed_tolerance(text) == pytest.approx(expected)
