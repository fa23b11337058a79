"""The fake train_gpt.py of the harness tests (tests/helpers.py) keeps the trainer's contract.

The fake speaks the real trainer's interface (`--track --seed --run_dir --key=value`, `--print_config`, modded-nanogpt
step lines on stdout and in train.log, events.jsonl through harness.runlog, a code/ snapshot through
harness.snapshot) in a fraction of a second, with knobs to diverge, crash or hang. It is written as
`train_gpt.py` into a folder of its own, so its snapshot and code hash are its own; writing it with
a different `flavor` gives different code (a different hash).
"""
import json

from harness.logs import load_run
from harness.snapshot import code_hash
from helpers import run_fake, write_fake_trainer

def test_fake_trainer_keeps_the_contract(tmp_path):
    script = write_fake_trainer(tmp_path / "code")
    out = run_fake(script, tmp_path / "run", seed=3)
    assert out.returncode == 0, out.stderr
    run_dir = tmp_path / "run"
    events = [json.loads(line)["event"] for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert events[:2] == ["config", "meta"] and events[-1] == "result"
    stated = (run_dir / "code" / "CODE_HASH").read_text().strip()
    assert stated == code_hash(run_dir / "code") == code_hash(script.parent)
    log = load_run(run_dir)
    assert log.status == "ok" and log.seed == 3 and log.track == "cpu-tiny" and log.total_steps == 20
    assert log.val_steps == [0, 5, 10, 15, 20] and log.time_to_target() == log.val_times_ms[3]
    assert (run_dir / "train.log").read_text() == out.stdout


def test_fake_trainer_flavors_have_different_hashes(tmp_path):
    a = write_fake_trainer(tmp_path / "a", "a")
    b = write_fake_trainer(tmp_path / "b", "b")
    assert code_hash(a.parent) != code_hash(b.parent)


def test_fake_trainer_diverges(tmp_path):
    out = run_fake(write_fake_trainer(tmp_path / "code"), tmp_path / "run", "--nan_at=10")
    assert out.returncode == 1
    log = load_run(tmp_path / "run")
    assert log.status == "diverged" and log.val_steps == [0, 5, 10]
