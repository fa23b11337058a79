"""harness.submit's every-run rule (MLPerf's rule against cherry-picking): a finished run of the set's track, code
and config left out of the set is refused, named, unless it is excluded with --exclude RUN_ID --reason TEXT, which
goes into the record's README.md and record.json and is shown by verify and the leaderboard."""
import json

import pytest

from harness import leaderboard, submit, verify
from harness.records import RECORD_FILE, hide_run
from harness.run import run_one
from helpers import write_fake_trainer


@pytest.fixture
def world(tmp_path):
    """Three finished runs of one config (seeds 0, 1, 2) and one of another config (--step_ms=8)."""
    script = write_fake_trainer(tmp_path / "code")
    runs, records = tmp_path / "runs", tmp_path / "records"

    def run(name, seed, *overrides):
        return run_one(track="cpu-tiny", seed=seed, name=name, script=script, overrides=list(overrides),
                       runs_dir=runs, records_dir=records)["run_id"]

    return {"records": records, "base": [run("base", seed) for seed in (0, 1, 2)], "other": run("fast", 0, "--step_ms=8")}


def submit_main(world, *argv) -> int:
    return submit.main(["--records", str(world["records"]), "--no-leaderboard", "--description", "d", "--name", "b",
                        *argv])


def test_a_finished_run_left_out_is_refused_naming_it(world, capsys):
    a, b, c = world["base"]
    assert submit_main(world, a, b) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"every finished run counts: {c} ran the same track, code and config" in err
    assert world["other"] not in err  # another config is another set
    assert not any(p.name.endswith("_b") for p in world["records"].iterdir())


def test_a_hidden_run_still_counts_and_is_excluded_with_a_reason(world, capsys):
    a, b, c = world["base"]
    hide_run(c, "launched by mistake", world["records"])
    assert submit_main(world, a, b) == 1  # hiding a row is no way around the every-run rule
    assert f"every finished run counts: {c}" in capsys.readouterr().err
    assert submit_main(world, "--exclude", c, "--reason", "launched by mistake", a, b) == 0


def test_every_run_in_the_set_is_accepted(world, capsys):
    assert submit_main(world, *world["base"]) == 0
    record = json.loads(next(world["records"].glob(f"*_b/{RECORD_FILE}")).read_text())
    assert record["excluded"] == [] and record["stats"]["n"] == 3


def test_an_exclusion_with_its_reason_is_written_and_shown(world, capsys):
    a, b, c = world["base"]
    assert submit_main(world, "--exclude", c, "--reason", "node  rebooted mid-run", a, b) == 0
    folder = next(world["records"].glob("*_b"))
    record = json.loads((folder / RECORD_FILE).read_text())
    assert record["excluded"] == [{"run_id": c, "reason": "node rebooted mid-run"}] and record["stats"]["n"] == 2
    assert f"- excluded: run {c}: node rebooted mid-run" in (folder / "README.md").read_text()
    capsys.readouterr()
    assert verify.main([str(folder)]) == 0
    assert f"{folder}: excluded run {c}: node rebooted mid-run" in capsys.readouterr().out
    page = leaderboard.render(world["records"], world["records"] / "leaderboard.md").read_text()
    assert f"excluded {c}: node rebooted mid-run" in page


@pytest.mark.parametrize("argv, message", [
    (["--exclude", "nosuchrun", "--reason", "r"], "--exclude nosuchrun: no run with that id"),
    (["--exclude", "{a}", "--reason", "r"], "--exclude {a}: that run is in the set"),
    (["--exclude", "{c}", "--reason", " "], "--exclude {c}: the reason is empty"),
], ids=["unknown", "in-the-set", "no-reason"])
def test_a_bad_exclusion_is_refused_in_one_line(world, capsys, argv, message):
    a, b, c = world["base"]
    argv = [x.format(a=a, c=c) for x in argv]
    assert submit_main(world, *argv, a, b) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message.format(a=a, c=c) in err


def test_each_exclude_needs_its_reason(world, capsys):
    a, b, c = world["base"]
    with pytest.raises(SystemExit) as exc:
        submit_main(world, "--exclude", c, a, b)
    assert exc.value.code == 2 and "give one --reason per --exclude" in capsys.readouterr().err
