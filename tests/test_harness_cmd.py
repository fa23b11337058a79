"""harness.run --cmd with a fake modded-nanogpt trainer: progress, the recorded run, every way it ends.

The fake is written here and behaves as modded-nanogpt's train_gpt.py does where the harness can see
it: it reads its own source first, prints that source, the "Running ..." version lines and an
nvidia-smi-like table (one row per process), then `step:N/M ...` lines; only rank 0 prints; under
torchrun it joins a gloo process group. With --logfile=1 it writes its log to logs/<uuid>.txt and
prints only the path and the step lines to stdout, as modded-nanogpt does; --logfile=2 leaves out the
path, --console=0 the step lines too. It reads the seed from $SEED, and knobs diverge, crash, hang or
stop it early, or make it wait before it exits (end_sleep).
"""
import json
import os
import signal
import subprocess
import sys

import pytest

from harness import run, submit, verify
from harness.logs import load_run
from harness.records import load_records
from harness.snapshot import EMBEDDED_CODE, REPO_ROOT, embedded_code_hash, hash_files, snapshot_hash
from helpers import ctrl_c_at_step_5, processes_running, signal_at_step_5

FAKE_MODDED = '''\
import math
import os
import sys
import time
import uuid

with open(sys.argv[0]) as f:
    code = f.read()  # its own source, for the log (modded-nanogpt's habit)

rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
if world > 1:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
cfg = dict(steps=20, val_every=5, step_ms=10.0, end_loss=3.2, logfile=0, print_code=1, nan_at=-1, crash_at=-1,
           hang_at=-1, exit_at=-1, sleep=0.0, console=1, end_sleep=0.0)
for arg in sys.argv[1:]:
    key, _, value = arg[2:].partition("=")
    cfg[key] = type(cfg[key])(value)
seed = int(os.environ.get("SEED", "0"))
logfile = None
if rank == 0 and cfg["logfile"]:
    os.makedirs("logs", exist_ok=True)
    logfile = f"logs/{uuid.uuid4()}.txt"
    if cfg["logfile"] == 1:
        print(logfile, flush=True)


def print0(s, console=False):
    if rank != 0:
        return
    if logfile:
        with open(logfile, "a") as f:
            print(s, file=f)
    if (console and cfg["console"]) or not logfile:
        print(s, flush=True)


if cfg["print_code"]:
    print0(code)
    print0("=" * 100)
print0(f"Running Python {sys.version}")
print0("Running PyTorch 2.10.0+cu128 compiled for CUDA 12.8")
print0("Running Triton version 3.6.0")
print0("+-----------------------------------------------------------------------------------------+")
print0("| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |")
for gpu in range(world):
    print0(f"|   {gpu}  Fake GPU 80GB                 On  |   00000000:{gpu:02d}:00.0 Off |                    0 |")
print0(f"seed from SEED: {seed}", console=True)
print0("=" * 100)
offset = 0.002 * math.sin(seed + 1)
if world > 1:  # the processes agree on the offset through the process group
    t = torch.tensor([offset])
    dist.all_reduce(t)
    offset = float(t) / world
steps = cfg["steps"]
for step in range(steps + 1):
    t = step * cfg["step_ms"] * (1 + 0.01 * math.cos(seed))
    if step == cfg["crash_at"]:
        raise RuntimeError("fake crash")
    if step == cfg["exit_at"]:
        sys.exit(0)
    while step == cfg["hang_at"]:
        time.sleep(0.05)
    if step % cfg["val_every"] == 0 or step == steps:
        loss = cfg["end_loss"] + 2.8 * math.exp(-5 * step / steps) + offset
        if 0 <= cfg["nan_at"] <= step:
            loss = float("nan")
        print0(f"step:{step}/{steps} val_loss:{loss:.4f} train_time:{t:.0f}ms step_avg:{t / max(step, 1):.2f}ms",
               console=True)
    else:
        print0(f"step:{step}/{steps} train_time:{t:.0f}ms step_avg:{t / max(step, 1):.2f}ms", console=True)
    time.sleep(cfg["sleep"])
print0("peak memory allocated: 1234 MiB reserved: 2048 MiB", console=True)
time.sleep(cfg["end_sleep"])
if world > 1:
    dist.destroy_process_group()
'''


def write_fake_modded(folder, flavor: str = "a"):
    """Write the fake as folder/train_gpt.py (a flavor comment makes different code) and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train_gpt.py"
    path.write_text(f"# fake modded-nanogpt trainer, flavor {flavor}\n" + FAKE_MODDED)
    return path


@pytest.fixture
def kit(tmp_path):
    script = write_fake_modded(tmp_path / "modded")
    return {"script": script, "cwd": script.parent, "runs": tmp_path / "runs", "records": tmp_path / "records"}


def run_cmd(kit, *args, seed=0, timeout=None, logfile="auto"):
    command = " ".join([sys.executable, "train_gpt.py", *args])
    return run.run_cmd_one(command, track="fake-modded", seed=seed, name="t", cwd=kit["cwd"], timeout=timeout,
                           logfile=logfile, runs_dir=kit["runs"], records_dir=kit["records"])


def rows(kit):
    frame, problems = load_records(kit["records"])
    assert problems == []
    return frame.to_dict("records")


def test_cmd_run_is_recorded_with_its_embedded_code(kit, capsys):
    argv = ["--cmd", f"{sys.executable} train_gpt.py --steps=10", "--cwd", str(kit["cwd"]), "--seeds", "2",
            "--seed-start", "3", "--runs-dir", str(kit["runs"]), "--records", str(kit["records"]), "--no-leaderboard"]
    assert run.main(argv) == 0
    out = capsys.readouterr().out
    assert "step:10/10 val_loss:" in out and "2/2 runs ok" in out  # the val lines come through the progress bar
    first, second = rows(kit)
    source = kit["script"].read_text()
    for row, seed in ((first, 3), (second, 4)):
        assert (row["status"], row["seed"], row["seed_env"], row["origin"]) == ("ok", seed, "SEED", "cmd")
        assert (row["track"], row["name"], row["steps"], row["target_val_loss"]) == ("modded-nanogpt", "modded-nanogpt",
                                                                                  10, 3.28)
        assert row["hardware"] == "1x Fake GPU 80GB" and row["torch"] == "2.10.0+cu128" and row["triton"] == "3.6.0"
        assert row["code_hash"] == embedded_code_hash(source) and row["source"] == "stdout"
        run_dir = kit["runs"] / row["run_id"]
        assert (run_dir / "code" / EMBEDDED_CODE).read_text() == source
        assert snapshot_hash(run_dir / "code") == row["code_hash"]
        assert f"seed from SEED: {seed}" in (run_dir / "train.log").read_text()
        log = load_run(run_dir)
        assert (log.origin, log.embedded_code, log.seed, log.total_steps, log.status) == ("cmd", True, seed, 10, "ok")
        assert log.val_steps == [0, 5, 10] and log.final_val_loss == row["final_val_loss"]
        assert log.train_time_ms == row["train_time_ms"] and row["script"] == argv[1]  # the command, as given
    assert first["final_val_loss"] != second["final_val_loss"]  # the seed reached the trainer


def test_cmd_runs_submit_and_verify(kit, capsys):
    ids = [run_cmd(kit, seed=seed)["run_id"] for seed in (0, 1, 2)]
    assert submit.main(["--records", str(kit["records"]), "--no-leaderboard", "--description", "fake modded",
                        "--name", "fake", *ids]) == 0
    folder = next(p for p in kit["records"].iterdir() if p.is_dir())
    assert verify.main([str(folder)]) == 0
    assert "ok" in capsys.readouterr().out


def test_cmd_under_torchrun_records_the_trainers_own_logfile(kit):
    command = (f"{sys.executable} -m torch.distributed.run --standalone --nproc_per_node=2 train_gpt.py "
               "--logfile=1 --steps=10")
    row = run.run_cmd_one(command, track="fake-modded", seed=5, name="two", cwd=kit["cwd"], timeout=120,
                          runs_dir=kit["runs"], records_dir=kit["records"])
    run_dir = kit["runs"] / row["run_id"]
    assert row["status"] == "ok", (run_dir / "console.log").read_text()
    logs = list((kit["cwd"] / "logs").glob("*.txt"))
    assert len(logs) == 1 and row["source"] == str(logs[0])
    assert (run_dir / "train.log").read_bytes() == logs[0].read_bytes()
    console = (run_dir / "console.log").read_text()
    assert "step:10/10 val_loss:" in console and "import uuid" not in console  # stdout had no code; the log has
    assert row["hardware"] == "2x Fake GPU 80GB" and row["nproc"] == 2
    assert row["code_hash"] == embedded_code_hash(kit["script"].read_text())
    assert load_run(run_dir).val_steps == [0, 5, 10]


def test_cmd_without_printed_code_keeps_the_script(kit):
    row = run_cmd(kit, "--print_code=0")
    run_dir = kit["runs"] / row["run_id"]
    assert row["status"] == "ok"
    assert row["code_hash"] == hash_files({"train_gpt.py": kit["script"].read_bytes()})
    assert sorted(p.name for p in (run_dir / "code").iterdir()) == ["CODE_HASH", "train_gpt.py"]
    log = load_run(run_dir)
    assert log.embedded_code is False and log.code_hash == row["code_hash"]


@pytest.mark.parametrize("args, status, returncode", [
    (("--nan_at=10",), "diverged", 0),
    (("--crash_at=12",), "crashed", 1),
    (("--exit_at=12",), "incomplete", 0),
], ids=["nan", "crash", "exit-early"])
def test_cmd_run_endings(kit, args, status, returncode):
    row = run_cmd(kit, *args)
    assert (row["status"], row["returncode"]) == (status, returncode)
    assert rows(kit)[0]["status"] == status
    run_dir = kit["runs"] / row["run_id"]
    assert load_run(run_dir).result["status"] == status
    if status == "crashed":
        assert "RuntimeError: fake crash" in (run_dir / "console.log").read_text()
        assert "Traceback" not in (run_dir / "train.log").read_text()  # stderr is not the trainer's log


def test_cmd_timeout(kit):
    row = run_cmd(kit, "--hang_at=7", timeout=1.5)
    assert row["status"] == "timeout" and row["final_val_loss"] is not None  # the step-5 validation
    assert rows(kit)[0]["status"] == "timeout"


def test_cmd_ctrl_c_records_interrupted(kit):
    cmd = [sys.executable, "-m", "harness.run", "--cmd", f"{sys.executable} train_gpt.py --hang_at=7",
           "--cwd", str(kit["cwd"]), "--runs-dir", str(kit["runs"]), "--records", str(kit["records"]),
           "--no-leaderboard"]
    ctrl_c_at_step_5(cmd)
    (row,) = rows(kit)
    assert row["status"] == "interrupted" and row["final_val_loss"] is not None and row["origin"] == "cmd"
    events = [json.loads(line) for line in (kit["runs"] / row["run_id"] / "events.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "result" and events[-1]["status"] == "interrupted"


def test_cmd_sigterm_stops_the_trainer_and_records_the_run(kit):
    cmd = [sys.executable, "-m", "harness.run", "--cmd", f"{sys.executable} train_gpt.py --hang_at=7",
           "--cwd", str(kit["cwd"]), "--runs-dir", str(kit["runs"]), "--records", str(kit["records"]),
           "--no-leaderboard"]
    rest = signal_at_step_5(cmd, signal.SIGTERM)
    (row,) = rows(kit)
    assert row["status"] == "interrupted" and row["origin"] == "cmd" and "at step 5 " in rest
    assert not processes_running(kit["cwd"]), "the trainer was left running"


def test_explicit_logfile_that_never_appears_falls_back_to_stdout(kit, capsys):
    row = run_cmd(kit, logfile="logs/none.txt")
    assert row["status"] == "ok" and row["source"] == "stdout"
    assert "--logfile logs/none.txt: no such file" in capsys.readouterr().err


def test_explicit_logfile_the_run_did_not_write_is_not_taken(kit, capsys):
    (kit["cwd"] / "logs").mkdir()
    (kit["cwd"] / "logs" / "old.txt").write_text("step:0/10 val_loss:9.0000 train_time:0ms step_avg:0.00ms\n")
    old = kit["cwd"] / "logs" / "old.txt"
    os.utime(old, (old.stat().st_atime - 3600, old.stat().st_mtime - 3600))  # another run's, an hour ago
    row = run_cmd(kit, logfile="logs/old.txt")
    assert row["status"] == "ok" and row["source"] == "stdout"
    assert "--logfile logs/old.txt: not written during the run" in capsys.readouterr().err


def test_cmd_runs_sharing_a_cwd_each_record_their_own_log(kit):
    """Concurrent runs in one --cwd whose trainer writes logs/<uuid>.txt without printing its path: each run
    is recorded with its own log (the one holding the step lines it printed), never another's. The first
    run waits a second before it exits while the second still writes, so the newest log at its end is not its own."""
    def harness(seed: int, args: str):
        return subprocess.Popen(
            [sys.executable, "-m", "harness.run", "--cmd", f"{sys.executable} train_gpt.py --logfile=2 {args}",
             "--cwd", str(kit["cwd"]), "--seed-start", str(seed), "--runs-dir", str(kit["runs"]), "--records",
             str(kit["records"]), "--no-leaderboard"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    procs = [harness(0, "--steps=10 --sleep=0.05 --end_sleep=1.5"), harness(1, "--steps=40 --sleep=0.05"),
             harness(2, "--steps=20 --sleep=0.05")]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    recorded = rows(kit)
    assert sorted(r["seed"] for r in recorded) == [0, 1, 2]
    for row in recorded:
        assert row["source"].startswith(str(kit["cwd"] / "logs")), row
        log = (kit["runs"] / row["run_id"] / "train.log").read_text()
        assert f"seed from SEED: {row['seed']}" in log, f"seed {row['seed']} was recorded with {row['source']}"
    assert len({r["source"] for r in recorded}) == 3


def test_cmd_log_that_is_not_provably_the_runs_own_is_not_taken(kit, capsys):
    """A trainer that writes logs/<uuid>.txt and prints neither its path nor a step line: nothing ties that
    file to this run, so the run is recorded from its stdout, and the harness says so."""
    row = run_cmd(kit, "--logfile=2", "--console=0")
    assert row["source"] == "stdout" and row["status"] == "incomplete"
    err = capsys.readouterr().err
    assert "1 log file(s) written in" in err and "none provably its own" in err and "recording its stdout" in err


def test_a_warning_to_a_reader_that_stopped_reading_still_records_the_run_s_own_status(kit):
    """`harness.run --cmd ... 2>&1 | head -1`: the warning that the run's log is not provably its own meets a closed
    pipe; the run is recorded with its status, not as the harness's error."""
    cmd = [sys.executable, "-m", "harness.run", "--cmd", f"{sys.executable} train_gpt.py --logfile=2 --console=0",
           "--cwd", str(kit["cwd"]), "--runs-dir", str(kit["runs"]), "--records", str(kit["records"]), "--no-leaderboard"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT)
    proc.stdout.readline()
    proc.stdout.close()
    proc.wait(timeout=60)
    (row,) = rows(kit)
    assert row["status"] == "incomplete" and row["source"] == "stdout"


def test_logfile_stdout_records_what_the_run_printed(kit, capsys):
    row = run_cmd(kit, "--logfile=1", "--steps=10", logfile="stdout")  # it prints its log's path: not taken
    assert row["source"] == "stdout" and row["status"] == "ok" and "warning" not in capsys.readouterr().err


def test_two_logs_holding_the_run_s_step_lines_are_no_proof(kit, capsys):
    """A run that leaves two logs/ files, each with every step line it printed: neither is provably its own."""
    command = f"sh -c '{sys.executable} train_gpt.py --logfile=2 --steps=10 && cp logs/*.txt logs/copy.txt'"
    row = run.run_cmd_one(command, track="fake-modded", seed=0, name="t", cwd=kit["cwd"], runs_dir=kit["runs"],
                          records_dir=kit["records"])
    assert row["source"] == "stdout" and row["status"] == "ok"
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert line == (f"warning: [{row['run_id']}] 2 log file(s) written in {kit['cwd'] / 'logs'} during the run, 2 with "
                    "the step lines it printed; recording its stdout")


@pytest.mark.parametrize("argv, message", [
    (["--cmd", f"{sys.executable} x.py", "--", "--lr=1"], "the trainer's arguments go in the command"),
    (["--cmd", f"{sys.executable} x.py", "--script", "train_gpt.py"], "leave out --script and --nproc"),
    (["--cmd", f"{sys.executable} x.py", "--nproc", "2"], "leave out --script and --nproc"),
    (["--cmd", ""], "--cmd is empty"),
    (["--cmd", f"{sys.executable} 'x.py"], "No closing quotation"),
    (["--cmd", "no-such-program-here x.py"], "no-such-program-here: no such program on PATH"),
    (["--cmd", "./nope.sh"], "./nope.sh: no such program in"),
    (["--cmd", f"{sys.executable} x.py", "--seed-env", "1SEED"], "not an environment variable name"),
    (["--cmd", f"{sys.executable} x.py", "--seed-env", "PATH"], "--seed-env PATH: the environment already has PATH"),
    (["--cmd", f"{sys.executable} x.py", "--seed-env", "MASTER_PORT"], "the launch sets MASTER_PORT"),
    (["--cmd", f"{sys.executable} x.py", "--cwd", "/no/such/dir"], "--cwd /no/such/dir: no such directory"),
    (["--cmd", f"{sys.executable} x.py", "--track", "a b"], "track 'a b': use 1-80 letters"),
    (["--cmd", f"{sys.executable} x.py", "--target", "nan"], "argument --target: 'nan' is not a finite number"),
    (["--logfile", "x.txt"], "--logfile: only with --cmd"),
    (["--seed-env", "S", "--target", "3"], "--seed-env, --target: only with --cmd"),
    (["--", "--lr"], "--lr: expected a value"),
], ids=["overrides", "script", "nproc", "empty", "quote", "program", "relative-program", "seed-env", "seed-env-PATH",
        "seed-env-launch", "cwd", "track",
        "target", "logfile", "cmd-options", "bare-key"])
def test_bad_cmd_arguments_are_one_line(kit, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        run.main([*argv, "--runs-dir", str(kit["runs"]), "--records", str(kit["records"])])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.strip().splitlines()[-1].count(message) == 1
    assert not kit["records"].exists() and not kit["runs"].exists()


def test_trainer_overrides_take_key_space_value(tmp_path):
    from test_harness_fakes import write_fake_trainer

    script = write_fake_trainer(tmp_path / "code")
    argv = ["--script", str(script), "--runs-dir", str(tmp_path / "runs"), "--records", str(tmp_path / "records"),
            "--no-leaderboard", "--", "--steps", "10", "--val_every=5"]
    assert run.main(argv) == 0
    (row,) = load_records(tmp_path / "records")[0].to_dict("records")
    assert row["overrides"] == ["--steps=10", "--val_every=5"] and row["steps"] == 10


def test_cmd_log_that_cannot_be_read_still_records_the_run(kit, monkeypatch, capsys):
    """The log it found is gone by the time it is read: the run goes in from its stdout, never lost."""
    monkeypatch.setattr(run, "trainer_log", lambda *args: (kit["cwd"] / "logs" / "gone.txt", None))
    row = run_cmd(kit)
    assert row["status"] == "ok" and row["source"] == "stdout" and rows(kit)[0]["run_id"] == row["run_id"]
    assert "gone.txt: No such file or directory; recording its stdout" in capsys.readouterr().err


def test_a_logfile_that_is_a_folder_is_refused_before_launch(kit, tmp_path, capsys):
    """--logfile naming a folder in --cwd: no trainer can write that log, so nothing is launched (the run was made,
    then recorded from its stdout as 'incomplete', 'no such file after the run')."""
    (tmp_path / "logs").mkdir()
    with pytest.raises(SystemExit) as exc:
        run.main(["--cmd", f"{sys.executable} x.py", "--cwd", str(tmp_path), "--logfile", "logs",
                  "--runs-dir", str(kit["runs"]), "--records", str(kit["records"])])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == \
        f"python -m harness.run: error: --logfile logs: a folder in {tmp_path}, not a log file"
    assert not kit["records"].exists() and not kit["runs"].exists()
