"""harness.ingest on sample logs written here (modded-nanogpt's layout and ours), and the ingested runs through
submit -> verify -> a tampered copy -> leaderboard."""
import hashlib
import json
import math
import re
import shutil
from pathlib import Path

import pytest
import scipy.stats

from harness import ingest, leaderboard, submit, verify
from harness.logs import load_run, parse_log_file
from harness.records import append_run
from harness.run import run_one
from harness.snapshot import EMBEDDED_CODE, snapshot_hash
from harness.verify import check_against_log
from helpers import (CODE, HEADER, SEP, TOTAL, gpu_table, modded_log, rows, run_ingest, steps, write,
                     write_fake_trainer)


def test_a_modded_nanogpt_log_becomes_a_run(where, tmp_path, capsys):
    path = write(tmp_path / "logs", "1d7c6c03-846f.txt", modded_log())
    assert run_ingest(where, path) == 0
    out = capsys.readouterr().out
    (row,) = rows(where)
    assert out == row["run_id"] + "\n" and "-1d7c6c03-" in row["run_id"]
    assert (row["status"], row["track"], row["name"], row["origin"], row["seed"]) == (
        "ok", "modded-nanogpt", "imported", "ingested", None)
    assert (row["hardware"], row["torch"], row["cuda"], row["python"], row["triton"]) == (
        "8x NVIDIA H100 80GB HBM3", "2.10.0+cu128", "12.8", "3.12.3", "3.6.0")
    assert (row["steps"], row["target_val_loss"], row["final_val_loss"], row["train_time_ms"]) == (TOTAL, 3.28, 3.2775, 80694)
    assert row["log_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and row["source"] == str(path.resolve())
    run_dir = Path(row["run_dir"])
    assert (run_dir / "train.log").read_bytes() == path.read_bytes()
    assert (run_dir / "code" / EMBEDDED_CODE).read_text() == CODE[:-1]  # the log's text up to its '=' line
    assert snapshot_hash(run_dir / "code") == parse_log_file(path).code_hash == row["code_hash"]
    assert (run_dir / "code" / "CODE_HASH").read_text().strip() == row["code_hash"]
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[:2] == ["config", "meta"] and kinds[-1] == "result"
    assert kinds.count("val") == 7 and kinds.count("step") == 4
    assert events[0]["config"] == {"target_val_loss": 3.28, "seed": None, "stop_at_target": False, "num_steps": TOTAL}
    meta = events[1]
    assert meta["hardware"] == {"kind": "cuda", "gpu": "NVIDIA H100 80GB HBM3", "gpu_count": 8, "peak_flops": 989e12}
    assert (meta["world_size"], meta["embedded_code"], meta["origin"]) == (8, True, "ingested")
    assert events[-1]["status"] == "ok" and events[-1]["peak_memory_mb"] == 30908
    log = load_run(run_dir)
    assert (log.status, log.total_steps, log.final_step, log.stopped_early) == ("ok", TOTAL, TOTAL, False)
    assert log.val_times_ms == parse_log_file(path).val_times_ms and check_against_log(log) == []


def test_the_embedded_code_is_the_logged_source_byte_for_byte(where, tmp_path):
    path = write(tmp_path / "logs", "a.txt", modded_log())
    run_ingest(where, path)
    code = (Path(rows(where)[0]["run_dir"]) / "code" / EMBEDDED_CODE).read_text()
    assert code + "\n" + HEADER == path.read_text().split(steps(80694, 3.2775))[0]


def test_cut_off_nan_no_code_and_not_a_log(where, tmp_path, capsys):
    folder = tmp_path / "logs"
    write(folder, "cut.txt", modded_log(cut_at=700))
    write(folder, "nan.txt", modded_log(nan_from=1000))
    write(folder, "nocode.txt", HEADER + steps(80000, 3.2770))
    write(folder, "notes.txt", "some notes\nstep: not a step line\n")
    (folder / "plot.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # not a *.txt / *.log: not even looked at
    assert run_ingest(where, folder) == 1
    captured = capsys.readouterr()
    assert captured.err.count("skipped: ") == 1 and f"skipped: {folder / 'notes.txt'}: not a speedrun log" in captured.err
    assert len(captured.out.split()) == 3
    by_name = {Path(r["source"]).name: r for r in rows(where)}
    assert sorted(by_name) == ["cut.txt", "nan.txt", "nocode.txt"]
    assert by_name["cut.txt"]["status"] == "incomplete" and by_name["cut.txt"]["steps"] == 500
    assert by_name["nan.txt"]["status"] == "diverged" and by_name["nan.txt"]["final_val_loss"] is None
    nocode = by_name["nocode.txt"]
    assert nocode["status"] == "ok" and nocode["code_hash"] is None
    assert not (Path(nocode["run_dir"]) / "code").exists()
    assert load_run(nocode["run_dir"]).embedded_code is False
    assert "the log ends at step 500 of 1390" in load_run(by_name["cut.txt"]["run_dir"]).result["error"]


def test_the_same_log_goes_in_once(where, tmp_path, capsys):
    path = write(tmp_path / "logs", "a.txt", modded_log())
    shutil.copy(path, tmp_path / "copy.txt")
    assert run_ingest(where, path, path, tmp_path / "copy.txt") == 0
    (row,) = rows(where)
    err = capsys.readouterr().err
    assert err.count(f"already ingested as run {row['run_id']}") == 2
    assert run_ingest(where, path) == 0
    assert len(rows(where)) == 1 and f"{path}: already ingested as run {row['run_id']}" in capsys.readouterr().err
    assert len(list(where["runs"].iterdir())) == 1


def test_a_damaged_runs_log_is_named_kept_and_its_runs_still_count(where, tmp_path, capsys):
    path = write(tmp_path / "logs", "a.txt", modded_log())
    assert run_ingest(where, path) == 0
    runs_log = where["records"] / "runs.jsonl"
    with open(runs_log, "a") as f:
        f.write('{"run_id": "torn", "sta')  # a writer killed mid-line
    capsys.readouterr()
    other = write(tmp_path / "logs", "b.txt", modded_log(final_ms=80800, final_loss=3.2771))
    assert run_ingest(where, path, other) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"warning: {runs_log}:2: skipped damaged line") and "already ingested" in err[1]
    lines = runs_log.read_text().splitlines()
    assert len(lines) == 3 and lines[1] == '{"run_id": "torn", "sta' and '"source": "' + str(other) in lines[2]


def test_a_2024_log_and_one_of_ours(where, tmp_path):
    # 2024: a '=' line before the code too, "pytorch", no Python or Triton line, a train_loss on step lines
    old_steps = steps(462573, 3.2790).replace("step:1389/1390 train_time", "step:1389/1390 train_loss:3.2243 train_time")
    old = (f"{SEP}\n{CODE}{SEP}\nRunning pytorch 2.5.1+cu124 compiled for CUDA 12.4\nnvidia-smi:\n" + gpu_table(8)
           + f"\n{SEP}\n" + old_steps)
    ours = ("run_dir: runs/x\n"
            "track cpu-tiny, 2 process(es) on cpu, kernels torch, grad_accum 1, compile False, seed 4\n"
            "config: {'track': 'cpu-tiny', 'seed': 4, 'num_steps': 10, 'target_val_loss': 5.6, "
            "'stop_at_target': False}\n"
            "versions: {'python': '3.11.7', 'torch': '2.13.0', 'triton': None, 'cuda': None}\n"
            "hardware: {'kind': 'cpu', 'cpu': 'Fake CPU', 'cpu_count': 2, 'peak_flops': None}\n"
            "git: {'commit': '" + "1" * 40 + "', 'dirty': False}\n"
            "step:0/10 val_loss:10.9000 train_time:0ms step_avg:0.00ms tokens_per_s:0 mfu:n/a\n"
            "step:5/10 train_time:50ms step_avg:10.00ms tokens_per_s:51200 mfu:n/a\n"
            "step:10/10 val_loss:5.5000 train_time:101ms step_avg:10.10ms tokens_per_s:51200 mfu:n/a\n"
            "result: train_time 101ms, 10/10 steps, 20,480 tokens, final val_loss 5.5000\n")
    assert run_ingest(where, write(tmp_path, "old.txt", old)) == 0
    assert run_ingest(where, write(tmp_path, "train.log", ours), track="cpu-tiny") == 0
    old_row, our_row = rows(where)
    assert (old_row["torch"], old_row["cuda"], old_row["python"], old_row["hardware"]) == (
        "2.5.1+cu124", "12.4", None, "8x NVIDIA H100 80GB HBM3")
    assert old_row["code_hash"] == parse_log_file(tmp_path / "old.txt").code_hash is not None
    steps_events = [json.loads(line) for line in (Path(old_row["run_dir"]) / "events.jsonl").read_text().splitlines()]
    assert [e["train_loss"] for e in steps_events if e["event"] == "step"][-1] == 3.2243
    assert (our_row["seed"], our_row["target_val_loss"], our_row["hardware"], our_row["git_commit"]) == (
        4, 5.6, "CPU Fake CPU (2 cores)", "1" * 40)
    assert our_row["status"] == "ok" and our_row["code_hash"] is None


def test_a_log_of_another_track_is_named(where, tmp_path, capsys):
    ours = "config: {'track': 'cpu-tiny', 'seed': 1}\nstep:0/10 val_loss:10.9 train_time:0ms\n"
    assert run_ingest(where, write(tmp_path, "train.log", ours), track="fineweb-124m") == 1
    assert "names track 'cpu-tiny', not --track fineweb-124m" in capsys.readouterr().err
    assert not (where["records"] / "runs.jsonl").exists()


@pytest.mark.parametrize("argv, message", [
    (["--track", "a b", "--name", "n", "x.txt"], "track 'a b': use 1-80 letters"),
    (["--track", "t", "--name", "n", "--target", "inf", "x.txt"], "argument --target: 'inf' is not a finite number"),
    (["--track", "t", "x.txt"], "the following arguments are required: --name"),
], ids=["track", "target", "no-name"])
def test_bad_arguments_are_one_line(where, argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        ingest.main(["--records", str(where["records"]), "--runs-dir", str(where["runs"]), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err.splitlines()[-1] and "Traceback" not in err
    assert not where["records"].exists() and not where["runs"].exists()


def test_missing_inputs_are_one_line_each(where, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    good = write(tmp_path / "logs", "a.txt", modded_log())
    assert run_ingest(where, tmp_path / "nope.txt", tmp_path / "empty", good) == 1
    err = capsys.readouterr().err
    assert f"skipped: {tmp_path / 'nope.txt'}: no such log file or folder\n" in err
    assert f"skipped: {tmp_path / 'empty'}: no logs (*.txt, *.log) in this folder\n" in err
    assert len(rows(where)) == 1


def test_a_failed_write_leaves_no_run_and_keeps_the_others(where, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "logs"
    write(folder, "a.txt", modded_log())
    write(folder, "b.txt", modded_log(final_ms=80500))
    real_write = ingest.EventLog.write
    calls = []

    def failing_second(self, event, **fields):
        if event == "result":
            calls.append(1)
            if len(calls) == 2:
                raise OSError(28, "No space left on device", str(self.path))
        real_write(self, event, **fields)

    monkeypatch.setattr(ingest.EventLog, "write", failing_second)
    assert run_ingest(where, folder) == 1
    assert "error: " in capsys.readouterr().err
    (row,) = rows(where)
    assert Path(row["source"]).name == "a.txt"
    assert [p.name for p in where["runs"].iterdir()] == [row["run_id"]]  # no half-written folder, no temporary


# ----------------------------------------------------------------------------------------------
# submit -> verify -> tamper -> leaderboard


BASE = [(80694, 3.2775), (80720, 3.2768), (80659, 3.2772), (80818, 3.2779)]
FAST = [(79536, 3.2776), (79740, 3.2771), (79814, 3.2769), (79658, 3.2778)]


def ingest_set(where, tmp_path, name, runs, code=CODE) -> list[str]:
    folder = tmp_path / name
    for i, (ms, loss) in enumerate(runs):
        write(folder, f"{name}{i}.txt", modded_log(ms, loss, code=code))
    assert run_ingest(where, folder, name=name) == 0
    return [r["run_id"] for r in rows(where) if r["name"] == name]


def submit_set(where, name, ids, capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = submit.main(["--records", str(where["records"]), "--no-leaderboard", "--description", f"{name} logs",
                      "--name", name, *ids])
    return rc, capsys.readouterr().err


@pytest.fixture
def two_records(where, tmp_path, capsys):
    base = ingest_set(where, tmp_path, "base", BASE)
    fast = ingest_set(where, tmp_path, "fast", FAST, code=CODE + "# faster\n")
    for name, ids in (("base", base), ("fast", fast)):
        rc, err = submit_set(where, name, ids, capsys)
        assert rc == 0, err
    folders = {p.name.split("_", 1)[1]: p for p in where["records"].iterdir() if p.is_dir()}
    return {**where, "base": folders["base"], "fast": folders["fast"], "fast_ids": sorted(fast)}


def test_submitted_statistics_are_the_published_convention(two_records):
    """A run's time is the train time of its final validation (the coordinator's issue-12 convention)."""
    for folder, runs in ((two_records["base"], BASE), (two_records["fast"], FAST)):
        s = json.loads((folder / "record.json").read_text())["stats"]
        times, losses = [ms for ms, _ in runs], [loss for _, loss in runs]
        assert s["n"] == len(runs)
        assert s["train_time_ms"]["mean"] == pytest.approx(sum(times) / len(times), rel=1e-12)
        assert s["train_time_ms"]["std"] == pytest.approx(scipy.stats.tstd(times), rel=1e-9)
        assert s["final_val_loss"]["mean"] == pytest.approx(sum(losses) / len(losses), rel=1e-12)
        p = scipy.stats.ttest_1samp(losses, 3.28, alternative="less").pvalue
        assert s["p_loss_below_target"] == pytest.approx(p, rel=1e-9)
    fast = json.loads((two_records["fast"] / "record.json").read_text())
    assert fast["hardware"] == "8x NVIDIA H100 80GB HBM3" and fast["stats"]["previous"]["name"] == "base"
    speedup = fast["stats"]["previous"]["speedup"]["ratio"]
    assert speedup == pytest.approx(sum(ms for ms, _ in BASE) / sum(ms for ms, _ in FAST), rel=1e-12)
    assert fast["origin"] == "ingested"
    readme = (two_records["fast"] / "README.md").read_text()
    assert "the trainer in code/ (the source its logs printed)" in readme and "harness.run --track" not in readme


def test_an_imported_record_is_dated_by_its_runs(two_records):
    """The logs' nvidia-smi clock line (tests/helpers.py: "Fri Jul 17 12:22:51 2026") dates the runs and the record,
    not the day of submission."""
    assert two_records["base"].name == "2026-07-17_base" and two_records["fast"].name == "2026-07-17_fast"
    assert json.loads((two_records["fast"] / "record.json").read_text())["date"] == "2026-07-17"
    assert load_run(two_records["fast"] / "runs" / two_records["fast_ids"][0]).started == "2026-07-17T12:22:51"


def test_ingested_records_verify_and_show_on_the_leaderboard(two_records, tmp_path, capsys):
    assert verify.main([str(two_records["base"]), str(two_records["fast"])]) == 0
    capsys.readouterr()
    page = leaderboard.render(two_records["records"], tmp_path / "lb.md").read_text()
    assert "## modded-nanogpt (target val loss 3.28)" in page
    assert page.index("| fast") < page.index("| base") and "8x NVIDIA H100 80GB HBM3" in page


def _val_line_index(text: str, step: int) -> int:
    return next(i for i, line in enumerate(text.splitlines()) if line.startswith(f"step:{step}/{TOTAL} val_loss:"))


def _edit_train_log_time(run: Path) -> str:
    log = run / "train.log"
    lines = log.read_text().splitlines(keepends=True)
    i = _val_line_index(log.read_text(), TOTAL)
    lines[i] = lines[i].replace("train_time:", "train_time:1", 1)
    log.write_text("".join(lines))
    return f"{log}:{i + 1}: train_time: the log says 1"


def _edit_train_log_code(run: Path) -> str:
    log = run / "train.log"
    log.write_text(log.read_text().replace("import sys\n", "import sys  # edited\n", 1))
    return f"{log}: embedded code: hashes to"


def _edit_events_loss(run: Path) -> str:
    events = run / "events.jsonl"
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    last = max(i for i, e in enumerate(lines) if e["event"] == "val")
    lines[last]["val_loss"] -= 0.01
    events.write_text("".join(json.dumps(e) + "\n" for e in lines))
    return f"{run / 'train.log'}:{_val_line_index((run / 'train.log').read_text(), TOTAL) + 1}: val_loss: the log says"


def _edit_snapshot(run: Path) -> str:
    code = run.parent.parent / "code" / EMBEDDED_CODE
    code.write_text(code.read_text() + "# edited\n")
    return f"{run.parent.parent / 'code' / 'CODE_HASH'}: expected"


@pytest.mark.parametrize("tamper", [_edit_train_log_time, _edit_train_log_code, _edit_events_loss, _edit_snapshot],
                         ids=["log-time", "log-code", "events-loss", "snapshot"])
def test_a_tampered_copy_fails_verify_naming_file_and_field(two_records, tmp_path, capsys, tamper):
    copy = tmp_path / "copy"
    shutil.copytree(two_records["records"], copy)
    folder = copy / two_records["fast"].name
    expected = tamper(folder / "runs" / two_records["fast_ids"][1])
    assert verify.main([str(folder)]) == 1
    report = capsys.readouterr().out
    assert expected in report and "FAILED" in report, report
    if tamper is _edit_events_loss:
        assert "record.json: runs[1].final_val_loss: expected" in report
    if tamper in (_edit_train_log_time, _edit_train_log_code):
        assert "train.log: sha256: expected" in report


def test_submit_refusals_for_ingested_runs(where, tmp_path, capsys):
    nocode = tmp_path / "nocode"
    for i, (ms, loss) in enumerate(BASE):
        write(nocode, f"n{i}.txt", HEADER + steps(ms, loss))
    assert run_ingest(where, nocode, name="nocode") == 0
    ids = [r["run_id"] for r in rows(where)]
    rc, err = submit_set(where, "nocode", ids, capsys)
    assert rc == 1 and err.count("\n") == 1 and "no source code: its log" in err and "a record needs its code" in err

    # The same log taken in twice (through two runs logs merged by hand) counts once: refused.
    path = write(tmp_path / "one", "a.txt", modded_log(80001, 3.2771))
    other = {"records": tmp_path / "other", "runs": tmp_path / "other_runs"}
    assert run_ingest(where, path) == 0 and run_ingest(other, path) == 0
    append_run(rows(other)[0], where["records"])
    twice = [r["run_id"] for r in rows(where) if r.get("source") == str(path.resolve())]
    rc, err = submit_set(where, "twice", twice, capsys)
    assert rc == 1 and err.count("\n") == 1 and "are one run:" in err and "have the same step lines" in err

    cut = ingest_set(where, tmp_path, "cut", [(80000, 3.27)]) + ingest_set(where, tmp_path, "cut2", [(80100, 3.27)])
    (Path(rows(where)[-1]["run_dir"]) / "train.log").write_text(modded_log(cut_at=700))
    rc, err = submit_set(where, "cut", cut, capsys)
    assert rc == 1 and "train.log: sha256: expected" in err and err.count("\n") == 1
    assert not [p for p in where["records"].iterdir() if p.is_dir()]


def test_a_log_put_in_a_run_folder_by_hand_is_pointed_to_ingest(where, tmp_path, capsys):
    for name in ("a", "b"):
        write(tmp_path / name, "train.log", modded_log())
        append_run({"run_id": name, "track": "modded-nanogpt", "run_dir": str(tmp_path / name)}, where["records"])
    rc, err = submit_set(where, "byhand", ["a", "b"], capsys)
    assert rc == 1 and err.count("\n") == 1 and "no events.jsonl" in err
    assert f"python -m harness.ingest --track TRACK --name NAME {tmp_path / 'a' / 'train.log'}" in err


def test_our_own_runs_train_log_is_checked_against_its_events(tmp_path):
    script = write_fake_trainer(tmp_path / "code")
    row = run_one(track="cpu-tiny", seed=0, name="ours", script=script, runs_dir=tmp_path / "runs",
                  records_dir=tmp_path / "records")
    log = load_run(row["run_dir"])
    assert log.origin is None and check_against_log(log) == []
    train_log = Path(row["run_dir"]) / "train.log"
    text = train_log.read_text()
    line = next(line for line in text.splitlines() if line.startswith("step:20/20 val_loss:"))
    train_log.write_text(text.replace(line, line.replace("val_loss:", "val_loss:1")))
    problems = check_against_log(load_run(row["run_dir"]))
    assert len(problems) == 1 and f"{train_log}:" in problems[0] and ": val_loss: the log says 1" in problems[0]


# Seven runs whose mean loss fails the loss rule (p = 0.030); counted twice, they would pass (p = 0.0023).
SEVEN = [(80694, 3.2775), (80720, 3.2800), (80659, 3.2768), (80818, 3.2811), (80702, 3.2772), (80688, 3.2795),
         (80731, 3.2779)]


def test_near_duplicate_logs_count_once(where, tmp_path, capsys):
    """Seven logs plus seven copies differing by a trailing newline are seven runs in ingest, compare and submit."""
    folder = tmp_path / "logs"
    for i, (ms, loss) in enumerate(SEVEN):
        text = modded_log(ms, loss)
        write(folder, f"run{i}.txt", text)
        write(folder, f"run{i}_copy.txt", text + "\n")
    assert run_ingest(where, folder) == 0
    err = capsys.readouterr().err
    ingested = rows(where)
    assert len(ingested) == 7 and {Path(r["source"]).name for r in ingested} == {f"run{i}.txt" for i in range(7)}
    for i in range(7):
        run_id = next(r["run_id"] for r in ingested if Path(r["source"]).name == f"run{i}.txt")
        assert (f"{folder / f'run{i}_copy.txt'}: already ingested as run {run_id} "
                f"(the same run as {(folder / f'run{i}.txt').resolve()}: the same step lines)") in err

    from harness import compare
    assert compare.main(["--logs", f"base={folder}", "--no-plot"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run0.txt and " in err and "run0_copy.txt are the same run" in err

    # The copies taken in through a second runs log merged by hand: submit counts each run once.
    other = {"records": tmp_path / "other", "runs": tmp_path / "other_runs"}
    copies = [folder / f"run{i}_copy.txt" for i in range(7)]
    assert run_ingest(other, *copies) == 0
    for row in rows(other):
        append_run(row, where["records"])
    ids = [r["run_id"] for r in rows(where)]
    rc, err = submit_set(where, "fourteen", ids, capsys)
    assert rc == 1 and err.count("\n") == 1 and "are one run:" in err and "have the same step lines" in err, err
    rc, err = submit_set(where, "seven", ids[:7], capsys)
    assert rc == 1 and "not significantly below the target" in err and "p = 0.0297" in err, err
    assert not [p for p in where["records"].iterdir() if p.is_dir()]


def _ingest_after(barrier, where: dict, folder: str, out: str) -> None:
    import contextlib
    import io
    import sys

    barrier.wait()
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = run_ingest(where, folder)
    Path(out).write_text(f"{rc}\n{err.getvalue()}")
    sys.exit(0)


def test_concurrent_ingests_record_each_log_once(where, tmp_path):
    import multiprocessing

    folder = tmp_path / "logs"
    for i, (ms, loss) in enumerate(SEVEN[:4]):
        write(folder, f"run{i}.txt", modded_log(ms, loss))
    ctx = multiprocessing.get_context("fork")  # real processes, started together
    barrier = ctx.Barrier(8)
    procs = [ctx.Process(target=_ingest_after, args=(barrier, where, str(folder), str(tmp_path / f"out{k}")))
             for k in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert len(rows(where)) == 4 and len(list(where["runs"].iterdir())) == 4
    outs = [(tmp_path / f"out{k}").read_text() for k in range(8)]
    assert all(out.startswith("0\n") for out in outs)
    assert sum(out.count("already ingested as run") for out in outs) == 7 * 4


def _replace_token(text: str, startswith: str, key: str, value: str) -> tuple[str, int]:
    """The log with `key:VALUE` of the first line starting `startswith` set to value; and that line's number."""
    lines = text.splitlines(keepends=True)
    i = next(i for i, line in enumerate(lines) if line.startswith(startswith))
    lines[i] = re.sub(rf"(^|\s){key}:\S+", rf"\g<1>{key}:{value}", lines[i], count=1)
    return "".join(lines), i + 1


@pytest.mark.parametrize("line, key, value, why", [
    (f"step:{TOTAL}/{TOTAL} val_loss", "val_loss", "-2.5", "val_loss -2.5 is negative"),
    ("step:1000/", "val_loss", "-inf", "val_loss -inf is negative"),
    ("step:251/", "train_time", "-400ms", "train_time -400.0ms is not a time"),
    ("step:251/", "train_time", "nanms", "train_time nanms is not a time"),
    ("step:750/", "step", f"50/{TOTAL}", "step 50 comes after step 500: steps go backwards"),
    ("step:1250/", "train_time", "100ms", "train_time 100ms comes after"),
    ("step:500/", "step", "500/1400", "planned steps 1400, but 1390 before"),
], ids=["negative-loss", "minus-inf-loss", "negative-time", "nan-time", "steps-back", "time-back", "total-changes"])
def test_impossible_values_are_refused_naming_the_line(where, tmp_path, capsys, line, key, value, why):
    text, lineno = _replace_token(modded_log(), line, key, value)
    path = write(tmp_path / "logs", "bad.txt", text)
    assert run_ingest(where, path) == 1
    err = capsys.readouterr().err
    assert f"skipped: {path}:{lineno}: " in err and why in err and "not a valid log" in err, err
    assert not (where["records"] / "runs.jsonl").exists() or rows(where) == []

    from harness import compare
    assert compare.main(["--logs", f"a={path}", "--no-plot"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}:{lineno}: " in err and why in err


def test_a_step_line_giving_a_key_twice_is_refused_naming_the_line(where, tmp_path, capsys):
    text, lineno = _replace_token(modded_log(), "step:1250/", "val_loss", "3.3062 val_loss:3.3063")
    path = write(tmp_path / "logs", "twice.txt", text)
    why = f"{path}:{lineno}: val_loss given twice: not a valid log"
    assert run_ingest(where, path) == 1
    assert f"skipped: {why}" in capsys.readouterr().err
    assert not (where["records"] / "runs.jsonl").exists() or rows(where) == []

    from harness import compare
    assert compare.main(["--logs", f"a={path}", "--no-plot"]) == 1
    assert capsys.readouterr().err == f"error: --logs a: {why}\n"


def exploded_log(vocab_line: str) -> str:
    """A run whose learning rate was 1e6: train loss 3.3e7, then stuck at exactly ln(50257), all finite."""
    uniform = f"{math.log(50257):.4f}"
    return (CODE + vocab_line + HEADER
            + f"step:0/{TOTAL} val_loss:10.8258 train_time:0ms step_avg:0.03ms\n"
            + f"step:1/{TOTAL} train_loss:33017344.0000 train_time:28ms step_avg:28.45ms\n"
            + f"step:2/{TOTAL} train_loss:{uniform} train_time:85ms step_avg:42.60ms\n"
            + f"step:{TOTAL}/{TOTAL} val_loss:{uniform} train_time:79532ms step_avg:57.22ms\n")


@pytest.mark.parametrize("vocab_line, why", [
    ("model = GPT(vocab_size=50257, num_layers=12)\n", "train loss 3.302e+07 is above 2 x ln(vocab 50257)"),
    ("", "train loss 3.302e+07 is above"),  # no vocabulary stated: the run's losses still say it
], ids=["vocab-in-code", "vocab-unstated"])
def test_a_run_whose_loss_exploded_but_stayed_finite_is_diverged(where, tmp_path, vocab_line, why):
    path = write(tmp_path / "logs", "lr1e6.txt", exploded_log(vocab_line))
    assert run_ingest(where, path) == 0
    (row,) = rows(where)
    log = load_run(row["run_dir"])
    if vocab_line:
        assert row["status"] == "diverged" and log.status == "diverged" and why in log.divergence
        assert why in log.result["error"]
    else:  # without ln(vocab), a finite loss is no divergence: the policy needs the vocabulary
        assert row["status"] == "ok" and log.divergence is None


def test_a_run_stuck_at_uniform_guessing_with_an_ok_result_is_diverged(tmp_path):
    from harness.runlog import EventLog

    run = tmp_path / "run"
    events = EventLog(run)
    events.write("config", track="cpu-tiny", config={"seed": 1, "target_val_loss": 5.6, "vocab_size": 50304})
    events.write("val", step=0, val_loss=10.83, train_time_ms=0.0)
    events.write("step", step=1, train_time_ms=5.0, step_avg_ms=5.0, train_loss=3.3e7, tokens_per_s=1.0, mfu=None)
    events.write("val", step=2, val_loss=math.log(50304), train_time_ms=10.0)
    events.write("result", status="ok", steps=2)
    events.close()
    log = load_run(run)
    assert log.status == "diverged" and "train loss 3.3e+07 is above 2 x ln(vocab 50304)" in log.divergence


def _cli(module: str, *args, timeout: float = 60):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)  # a read that blocks on a FIFO fails the test here, not the suite


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_a_fifo_or_a_device_given_as_a_log_is_refused_in_one_line(where, tmp_path, kind):
    import os

    if kind == "fifo":
        bad = tmp_path / "log.txt"
        os.mkfifo(bad)
    else:
        bad = Path("/dev/zero")
    good = write(tmp_path / "logs", "good.txt", modded_log())
    proc = _cli("harness.ingest", "--track", "modded-nanogpt", "--name", "n", "--records", where["records"],
                "--runs-dir", where["runs"], bad, good)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"skipped: {bad}: cannot read (not a regular file (a FIFO, device or socket)" in proc.stderr, proc.stderr
    assert len(rows(where)) == 1

    proc = _cli("harness.compare", "--logs", f"a={bad}", "--no-plot")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "not a regular file" in proc.stderr

    run_dir = Path(rows(where)[0]["run_dir"])  # a run folder whose train.log is not a file: named, not read
    (run_dir / "train.log").unlink()
    if kind == "fifo":
        os.mkfifo(run_dir / "train.log")
    else:
        (run_dir / "train.log").symlink_to("/dev/zero")
    proc = _cli("harness.compare", "--logs", f"a={run_dir}", "--no-plot")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and f"{run_dir / 'train.log'}" in proc.stderr


@pytest.mark.parametrize("option", ["--records", "--runs-dir"])
def test_a_folder_option_naming_a_file_is_one_line(where, tmp_path, option, capsys):
    (tmp_path / "file").write_text("")
    argv = {"--records": where["records"], "--runs-dir": where["runs"], option: tmp_path / "file"}
    with pytest.raises(SystemExit) as exc:
        ingest.main(["--track", "t", "--name", "n", *[str(x) for kv in argv.items() for x in kv],
                     str(write(tmp_path / "logs", "a.txt", modded_log()))])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"{option} {tmp_path / 'file'}: not a folder")
    if option == "--records":
        with pytest.raises(SystemExit):
            submit.main(["--records", str(tmp_path / "file"), "--name", "x", "--description", "d", "a", "b"])
        assert capsys.readouterr().err.splitlines()[-1].endswith(f"--records {tmp_path / 'file'}: not a folder")


def test_a_console_transcript_of_make_is_not_a_speedrun_log(where, tmp_path, capsys):
    """`make speedrun` echoes the trainer's validation lines with no log header: ingest names what it found."""
    transcript = (".venv/bin/python -m harness.data shakespeare\n"
                  ".venv/bin/python -m harness.run --track cpu-tiny\n"
                  "run_dir: runs/20261206-185525-cpu-tiny-s0-03cc\n"
                  "warm-up (untimed)\n"
                  "step:0/4 val_loss:10.8258 train_time:0ms step_avg:0.00ms tokens_per_s:0 mfu:n/a\n"
                  "step:4/4 val_loss:9.9919 train_time:6357ms step_avg:1589.21ms tokens_per_s:1289 mfu:n/a\n"
                  "result: train_time 6357ms, 4/4 steps, 8,192 tokens, final val_loss 9.9919\n")
    path = write(tmp_path, "make.txt", transcript)
    assert run_ingest(where, path) == 1
    err = capsys.readouterr().err
    assert f"skipped: {path}: not a speedrun log: step lines without a speedrun log's header" in err
    assert "its first other line is '.venv/bin/python -m harness.data shakespeare'" in err
    assert "a console transcript? the run's own log is runs/20261206-185525-cpu-tiny-s0-03cc/train.log" in err
    assert not (where["records"] / "runs.jsonl").exists()
    # the same step lines under modded-nanogpt's header are a run
    assert run_ingest(where, write(tmp_path, "log.txt", HEADER + transcript.split("warm-up (untimed)\n")[1])) == 0


def test_a_log_in_a_folder_that_cannot_be_read_is_named_not_skipped_silently(where, tmp_path, capsys):
    """A folder's *.txt that is a FIFO, a link loop or a dangling link is named with why it cannot be read (a FIFO
    is not opened), as it is when given by itself; the folder's good log still goes in."""
    import os

    logs = tmp_path / "logs"
    write(logs, "good.txt", modded_log())
    os.mkfifo(logs / "fifo.txt")
    (logs / "loop.txt").symlink_to("loop.txt")
    (logs / "gone.log").symlink_to("nowhere.log")
    (logs / "sub.txt").mkdir()  # a folder named like a log is no log
    assert run_ingest(where, logs) == 1
    err = capsys.readouterr().err
    assert f"skipped: {logs / 'fifo.txt'}: cannot read (not a regular file (a FIFO, device or socket)" in err
    assert f"skipped: {logs / 'loop.txt'}: cannot read (Too many levels of symbolic links)\n" in err
    assert f"skipped: {logs / 'gone.log'}: cannot read (No such file or directory)\n" in err
    assert "sub.txt" not in err and err.endswith("1 run(s) ingested, 3 input(s) skipped\n")
    assert run_ingest(where, logs / "loop.txt") == 1
    assert f"skipped: {logs / 'loop.txt'}: cannot read (Too many levels of symbolic links)\n" in capsys.readouterr().err
    assert len(rows(where)) == 1
