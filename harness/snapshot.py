"""Which files make a run's code, their hash, and the snapshot copied into every run directory.

The code hash identifies "the same code" for record submissions: every run of a record must share
it, and `harness.verify` recomputes it from the snapshot. It covers `train_gpt.py` and
`kernels/*.py`: the files that decide what is trained and how fast, and nothing that only reports.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CODE_GLOBS = ("train_gpt.py", "kernels/*.py")
SNAPSHOT_DIR = "code"
HASH_FILE = "CODE_HASH"


def code_files(root: str | os.PathLike = REPO_ROOT) -> list[Path]:
    """The run's code files under `root`, as paths relative to it, sorted."""
    root = Path(root)
    files = sorted({p.relative_to(root) for pattern in CODE_GLOBS for p in root.glob(pattern) if p.is_file()})
    if not files:
        raise FileNotFoundError(f"no code files ({', '.join(CODE_GLOBS)}) under {root}")
    return files


def code_hash(root: str | os.PathLike = REPO_ROOT) -> str:
    """sha256 over (relative path, content) of every code file, in sorted order."""
    root = Path(root)
    digest = hashlib.sha256()
    for rel in code_files(root):
        digest.update(rel.as_posix().encode() + b"\0")
        digest.update((root / rel).read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def snapshot_code(dest_dir: str | os.PathLike, root: str | os.PathLike = REPO_ROOT) -> str:
    """Copy the code files into `dest_dir/code/`, write its CODE_HASH, return the hash."""
    root, dest = Path(root), Path(dest_dir) / SNAPSHOT_DIR
    for rel in code_files(root):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, dest / rel)
    digest = code_hash(dest)
    (dest / HASH_FILE).write_text(digest + "\n")
    return digest
