"""The harness end to end with the fake trainer: compare -> submit (refused, then accepted) -> verify -> leaderboard."""
import json
import shutil

import pytest

from harness import compare, leaderboard, submit, verify
from harness.records import load_records
from harness.run import run_one
from helpers import LOG_HEAD as CODE, LOG_STEPS as STEPS, write_fake_trainer


def refused(capsys, *argv) -> str:
    """Run harness.submit expecting a refusal; return its one line."""
    assert submit.main(list(argv)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("refused: "), err
    return err


def test_compare_submit_verify_leaderboard(tmp_path, capsys):
    script_a = write_fake_trainer(tmp_path / "code_a", "a")
    script_b = write_fake_trainer(tmp_path / "code_b", "b")
    runs, records = tmp_path / "runs", tmp_path / "records"
    where = ["--runs-dir", str(runs), "--records", str(records)]

    # --- compare, run mode: two variants x 2 seeds, interleaved, each recorded under its name
    argv = ["--seeds", "2", "--script", str(script_a), "--variant", "base=", "--variant", "fast=--step_ms=8",
            "--plot-dir", str(tmp_path / "plots"), "--json", *where]
    assert compare.main(argv) == 0
    fig = json.loads(capsys.readouterr().out)
    base, fast = fig["variants"]
    assert (fig["target"], fig["baseline"], base["n"], fast["n"]) == (3.28, "base", 2, 2)
    assert fast["vs_baseline"]["speedup"] == pytest.approx(1.25, rel=0.03)
    low, high = fast["vs_baseline"]["speedup_ci95"]
    assert low < fast["vs_baseline"]["speedup"] < high
    assert fast["vs_baseline"]["p_time_faster"] < 0.05
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {"loss_vs_time.png", "loss_vs_step.png", "runs.png"}
    frame, _ = load_records(records)
    assert frame["name"].tolist() == ["base", "fast", "base", "fast"] and frame["seed"].tolist() == [0, 0, 1, 1]
    base_ids = frame[frame["name"] == "base"]["run_id"].tolist()
    fast_ids = frame[frame["name"] == "fast"]["run_id"].tolist()

    # --- compare, logs mode on the same runs gives the same figures
    assert compare.main(["--logs", f"base={','.join(base_ids)}", f"fast={','.join(fast_ids)}", "--json",
                         "--no-plot", "--records", str(records)]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["variants"][1]["vs_baseline"] == fig["variants"][1]["vs_baseline"]

    # --- runs that must be refused
    diverged = run_one(track="cpu-tiny", seed=2, name="bad", script=script_a, overrides=["--nan_at=10"],
                       runs_dir=runs, records_dir=records)["run_id"]
    other_code = run_one(track="cpu-tiny", seed=2, name="other", script=script_b, runs_dir=runs,
                         records_dir=records)["run_id"]
    noisy = [run_one(track="cpu-tiny", seed=s, name="noisy", script=script_a, runs_dir=runs, records_dir=records,
                     overrides=["--end_loss=3.27", "--loss_noise=0.02"])["run_id"] for s in (3, 4)]
    capsys.readouterr()
    sub = ["--records", str(records), "--no-leaderboard", "--description", "d"]
    assert "status 'diverged'" in refused(capsys, *sub, "--name", "x", *base_ids, diverged)
    assert "different code hashes" in refused(capsys, *sub, "--name", "x", *base_ids, other_code)
    assert "at least 2 runs" in refused(capsys, *sub, "--name", "x", base_ids[0])
    assert "given twice" in refused(capsys, *sub, "--name", "x", base_ids[0], base_ids[0])
    assert "no run with id 'nope'" in refused(capsys, *sub, "--name", "x", base_ids[0], "nope")
    assert "not significantly below the target" in refused(capsys, *sub, "--name", "x", *noisy)
    assert "differ in config" in refused(capsys, *sub, "--name", "x", base_ids[0], fast_ids[1])
    assert not [p for p in records.iterdir() if p.is_dir()], "a refused submission left a folder behind"

    # --- the first record on the track, then a faster one
    assert submit.main([*sub, "--name", "baseline", *base_ids]) == 0
    assert submit.main(["--records", str(records), "--description", "8 ms steps", "--name", "fast", *fast_ids]) == 0
    out = capsys.readouterr().out
    assert "speedup over baseline: 1.2" in out and "leaderboard:" in out
    folders = sorted(p for p in records.iterdir() if p.is_dir())
    assert [p.name.split("_", 1)[1] for p in folders] == ["baseline", "fast"]
    fast_folder = next(p for p in folders if p.name.endswith("_fast"))
    record = json.loads((fast_folder / "record.json").read_text())
    assert record["stats"]["previous"]["speedup"]["ratio"] == pytest.approx(fast["vs_baseline"]["speedup"])
    assert sorted(p.name for p in (fast_folder / "runs").iterdir()) == sorted(fast_ids)
    assert {p.name for p in fast_folder.iterdir()} == {"code", "runs", "statistics.md", "README.md", "record.json"}
    assert "train_time_ms = [" in (fast_folder / "statistics.md").read_text()

    # --- not faster than the record now; a taken name
    assert "not significantly faster" in refused(capsys, *sub, "--name", "again", *base_ids)
    assert "is taken" in refused(capsys, *sub, "--name", "fast", *fast_ids)

    # --- verify: both records pass; a copy with one edited time, or edited code, fails and says where
    assert verify.main([str(p) for p in folders]) == 0
    capsys.readouterr()
    tampered = tmp_path / "tampered"
    shutil.copytree(records, tampered)
    events = tampered / fast_folder.name / "runs" / fast_ids[0] / "events.jsonl"
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    last_val = max(i for i, e in enumerate(lines) if e["event"] == "val")  # the final validation: the run's time
    lines[last_val]["train_time_ms"] *= 0.9
    events.write_text("".join(json.dumps(e) + "\n" for e in lines))
    assert verify.main([str(tampered / fast_folder.name)]) == 1
    report = capsys.readouterr().out
    assert f"record.json: runs[{sorted(fast_ids).index(fast_ids[0])}].train_time_ms: expected" in report
    assert "statistics.md:" not in report and "FAILED" in report  # it still renders record.json's figures
    code = tampered / folders[0].name / "code" / "train_gpt.py"
    code.write_text(code.read_text() + "# edited\n")
    assert verify.main([str(tampered / folders[0].name)]) == 1
    assert "CODE_HASH: expected" in capsys.readouterr().out

    # --- leaderboard: same records, same bytes (page and plot)
    page = leaderboard.render(records, tmp_path / "lb1.md")
    plot = records / leaderboard.PLOT_FILE
    first = (page.read_bytes(), plot.read_bytes())
    page2 = leaderboard.render(records, tmp_path / "lb2.md")
    assert (page2.read_bytes(), plot.read_bytes()) == first
    text = page.read_text()
    assert text.index("| fast") < text.index("| baseline")  # fastest first
    assert "first record (baseline)" in text and "x (95% CI" in text and "Recent runs" in text
    assert f"(records/{fast_folder.name}/)" in text and "(records/leaderboard.png)" in text


def test_compare_modded_nanogpt_logs(tmp_path, capsys):
    for name, scale in (("old", 1.0), ("new", 0.9)):
        folder = tmp_path / name
        folder.mkdir()
        for seed, jitter in enumerate((0, 300, -200)):
            text = CODE + STEPS.replace("71533ms", f"{int(71533 * scale)}ms").replace(
                "79532ms", f"{int((79532 + jitter) * scale)}ms").replace(
                "val_loss:3.2775", f"val_loss:{3.2775 + jitter / 1e5:.4f}")
            (folder / f"{seed}.txt").write_text(text)
    assert compare.main(["--logs", f"old={tmp_path / 'old'}", f"new={tmp_path / 'new'}", "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "target val loss 3.28 (the FineWeb speedrun's: the logs state none)" in out and "baseline old" in out
    assert "| new" in out and "| 1.1111 [" in out


@pytest.mark.parametrize("name, why", [
    ("", "empty"), ("..", "could leave records/"), ("../evil", "could leave records/"), ("a/b", "could leave records/"),
    ("a\\b", "could leave records/"), (".hidden", "could leave records/"), ("a\nb", "control characters"),
    ("a b", "use 1-80 letters"),
])
def test_record_names_that_could_escape_are_refused(tmp_path, capsys, name, why):
    line = refused(capsys, "--records", str(tmp_path / "records"), "--no-leaderboard", "--description", "d",
                   "--name", name, "some-run")
    assert why in line
    assert not (tmp_path / "evil").exists() and not (tmp_path / "records").exists()


def test_bad_compare_inputs(tmp_path, capsys):
    assert compare.main(["--logs", "a=" + str(tmp_path / "missing.txt"), "b=x,y", "--no-plot",
                         "--records", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.txt: no such file" in err
    for argv, message in [(["--variant", "noequals"], "expected NAME=..."),
                          (["--variant", "a=", "--variant", "a=--lr=1"], "must be unique"),
                          (["--variant", "a=lr=1", "--variant", "b="], "is not of the form --key=value"),
                          (["--variant", "a=", "--logs", "b=x"], "not both"),
                          # a variant's name obeys the rule of every name in runs/ and records/ (records.name_problem)
                          (["--variant", "x" * 81 + "="], "use 1-80 letters"),
                          (["--variant", "a..b=", "--variant", "c="], "could leave records/ or runs/"),
                          (["--logs", "a..b=x", "--logs", "c=y"], "could leave records/ or runs/"),
                          (["--variant", "a=--note='unclosed"], "--variant a: No closing quotation"),
                          (["--variant", f"a=script={tmp_path / 'nope.py'}"], f"--variant a: script {tmp_path / 'nope.py'}: no such file"),
                          (["--script", str(tmp_path / "nope.py"), "--variant", "a="], f"script {tmp_path / 'nope.py'}: no such file"),
                          (["--logs", "a="], "--logs 'a=': expected NAME=PATH"),
                          ([], "nothing to compare: give --variant NAME=SPEC (run mode) or --logs NAME=PATH (logs mode)")]:
        with pytest.raises(SystemExit) as exc:
            compare.main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err.splitlines()[-1], (argv, err)


def test_empty_leaderboard_is_a_valid_page(tmp_path):
    page = leaderboard.render(tmp_path / "records", tmp_path / "leaderboard.md")
    text = page.read_text()
    assert text.startswith("# Leaderboard\n") and "No records yet" in text and text.endswith("\n")
    assert not (tmp_path / "records" / leaderboard.PLOT_FILE).exists()
