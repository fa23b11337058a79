"""The real train_gpt.py through harness.run, on a micro config and tiny shards (slow: about a minute on 2 cores)."""
import numpy as np
import pytest

from harness import run
from harness.shards import BOS_ID, write_shard
from harness.logs import load_run
from harness.records import load_records
from harness.snapshot import REPO_ROOT, code_hash

SCRIPT = REPO_ROOT / "train_gpt.py"
MICRO = ["--num_steps=4", "--val_every=2", "--val_tokens=1024", "--seq_len=64", "--val_seq_len=64", "--batch_size=2",
         "--num_layers=2", "--model_dim=64", "--num_heads=2", "--head_dim=32", "--unet_skips=1", "--value_embeds=1",
         "--window_min=32", "--window_max=64", "--window_block=32", "--warmup_steps=1", "--target_val_loss=10.5"]


def tiny_shard(path, n_docs, rng):
    docs = [np.concatenate([[BOS_ID], rng.integers(0, 1000, rng.integers(20, 200))]) for _ in range(n_docs)]
    return write_shard(path, np.concatenate(docs).astype(np.uint16))


@pytest.mark.slow
def test_real_trainer_through_the_harness(tmp_path):
    rng = np.random.default_rng(0)
    tiny_shard(tmp_path / "train_000000.bin", 200, rng)
    tiny_shard(tmp_path / "val_000000.bin", 30, rng)
    overrides = [f"--train_files={tmp_path}/train_*.bin", f"--val_files={tmp_path}/val_000000.bin", *MICRO]
    row = run.run_one(track="cpu-tiny", seed=1, name="micro", script=SCRIPT, overrides=overrides, timeout=300,
                      runs_dir=tmp_path / "runs", records_dir=tmp_path / "records")
    assert row["status"] == "ok", (tmp_path / "runs" / row["run_id"] / "console.log").read_text()
    assert load_records(tmp_path / "records")[0]["run_id"].tolist() == [row["run_id"]]
    log = load_run(row["run_dir"])
    assert (log.track, log.seed, log.target, log.total_steps) == ("cpu-tiny", 1, 10.5, 4)
    assert log.code_hash == row["code_hash"] == code_hash(log.source + "/code")
    assert log.val_steps[0] == 0 and log.final_step in (2, 4) and log.final_val_loss == row["final_val_loss"]
    assert log.time_to_target() == row["time_to_target_ms"] and row["hardware"].startswith("CPU ")
    assert row["torch"] and row["python"] and row["steps"] == log.final_step
