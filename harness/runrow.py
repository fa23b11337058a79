"""The row a run becomes in records/runs.jsonl (its fields: harness/records.py), and the id it is known by.

Every way a run enters the records (harness.run, with or without --cmd, and harness.ingest) names it with
new_run_id and records it with run_row, built from the events.jsonl in its run directory.
"""
from __future__ import annotations

import datetime as dt
import secrets
import sys
from pathlib import Path
from typing import Sequence

from harness.hardware import git_state
from harness.logs import LogError, RunLog, load_run
from harness.snapshot import REPO_ROOT

RUNS_DIR = REPO_ROOT / "runs"  # where run directories go unless --runs-dir says otherwise
HARNESS_ERROR = "harness_error"  # a run's status when the harness failed to read the run it launched


def new_run_id(track: str, label: str) -> str:
    """'<UTC time>-<track>-<label>-<4 hex digits>': label is s<seed> for a run launched here, a slug of the
    file name for an ingested log."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{track}-{label}-{secrets.token_hex(2)}"


def run_row(run_dir: Path, *, run_id: str, name: str, track: str, seed: int | None, status: str | None,
            returncode: int | None = None, overrides: Sequence[str] = (), script: str | None = None,
            nproc: int | None = None, wall_s: float | None = None, origin: str | None = None,
            source: str | None = None, log_sha256: str | None = None, seed_env: str | None = None) -> dict:
    """The runs.jsonl row of a finished run, from its events.jsonl (whatever of it was written).

    `status` is the one its launcher or reader saw (timeout, interrupted; a --cmd run's or a log's own); None
    takes the events' ok or diverged, else crashed (also for ok with a non-zero exit). origin, source,
    log_sha256 and seed_env go in only for a run read from a log.
    """
    try:
        log: RunLog | None = load_run(run_dir, require_val=False)
    except LogError:
        log = None
    result = (log.result if log else None) or {}
    if status is None:
        status = {"ok": "ok", "diverged": "diverged"}.get(log.status if result else None, "crashed")
        if status == "ok" and returncode != 0:
            status = "crashed"
    git = (log.git if log else None) or git_state()
    versions = (log.versions if log else None) or {"python": sys.version.split()[0]}
    target = result.get("target_val_loss", log.target if log else None)
    ttt = result.get("time_to_target_ms") if result else (log.time_to_target(target) if log and target else None)
    final = result.get("final_val_loss") if result else (log.final_val_loss if log else None)
    row = {
        "run_id": run_id,
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "track": (log.track if log else None) or track,
        "name": name,
        "git_commit": git.get("commit"),
        "git_dirty": git.get("dirty"),
        "code_hash": log.code_hash if log else None,
        "hardware": log.hardware_label if log else None,
        **{key: versions.get(key) for key in ("torch", "triton", "cuda", "python")},
        "seed": seed,
        "overrides": list(overrides),
        "time_to_target_ms": ttt,
        "steps": result.get("steps", log.last_step if log else None),
        "tokens": result.get("tokens"),
        "final_val_loss": final,
        "reached_target": bool(result.get("reached_target", ttt is not None)),
        "status": status,
        "run_dir": str(Path(run_dir).resolve()),
        "target_val_loss": target,
        "train_time_ms": result.get("train_time_ms", log.train_time_ms if log else None),
        "returncode": returncode,
        "script": None if script is None else str(script),
        "nproc": nproc,
        "wall_s": None if wall_s is None else round(wall_s, 3),
        "stop_at_target": result.get("stop_at_target", (log.stop_at_target if log else None)),
    }
    read_from_log = {"origin": origin, "source": source, "log_sha256": log_sha256, "seed_env": seed_env}
    row.update({k: v for k, v in read_from_log.items() if v is not None})
    return row


def harness_error_row(run_dir: Path, *, run_id: str, name: str, track: str, seed: int | None,
                      returncode: int | None, wall_s: float, error: str) -> dict:
    """The row of a run the harness launched but could not read (`error`, one line), from what it knows itself."""
    return {"run_id": run_id, "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "track": track, "name": name, "seed": seed, "status": HARNESS_ERROR, "run_dir": str(Path(run_dir).resolve()),
            "returncode": returncode, "wall_s": round(wall_s, 3), "error": error}
