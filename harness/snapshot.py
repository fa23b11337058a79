"""Which files make a run's code, their hash, and the snapshot copied into every run directory.

The code hash is what "the same code" means for a record (records/README.md): sha256 over (relative path,
content) of every snapshot file, in sorted order, so a snapshot hashes as the tree it was copied from. Our
trainer's code is `train_gpt.py` and every repository module it imports, transitively (`code_files`: an ast
walk of its import statements, those inside functions included). A foreign trainer's code is the source its
log starts with, kept as one file, EMBEDDED_CODE; or, where the log holds none, the script its command ran.
"""
from __future__ import annotations

import ast
import errno
import hashlib
import os
import shutil
from pathlib import Path
from typing import Mapping

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAINER = "train_gpt.py"
SNAPSHOT_DIR = "code"
HASH_FILE = "CODE_HASH"
EMBEDDED_CODE = "embedded_code.txt"  # a foreign trainer's logged source, byte for byte as its log printed it


def hash_files(files: Mapping[str, bytes]) -> str:
    """sha256 over (relative POSIX path, content) of each file, in sorted path order."""
    digest = hashlib.sha256()
    for rel in sorted(files):
        digest.update(rel.encode() + b"\0" + files[rel] + b"\0")
    return digest.hexdigest()


def _imported_files(path: Path, root: Path) -> list[Path]:
    """The files under root that the file's import statements (anywhere in it) may run, parent packages included
    (module.py, else module/__init__.py; a name imported from a package may be a submodule)."""
    try:  # the package a relative import starts from; a script outside root is in none
        package = path.relative_to(root).with_suffix("").parts[:-1]
    except ValueError:
        package = ()
    names = set()
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            start = package[: len(package) - node.level + 1] if node.level else ()
            base = ".".join([*start, *([node.module] if node.module else [])])
            names.update([base, *(f"{base}.{alias.name}" for alias in node.names)])
    parts = [name.split(".") for name in names if name]
    files = []
    for base in {root.joinpath(*p[:i]) for p in parts for i in range(1, len(p) + 1)}:
        files += [f for f in (base.with_suffix(".py"), base / "__init__.py") if f.is_file()][:1]
    return files


def _code_paths(root: Path, trainer: str | os.PathLike | None) -> dict[Path, Path]:
    """{path in the snapshot: file} for the trainer and every file under root it imports, transitively. The
    trainer is the script that runs (root/TRAINER by default); one outside root goes in under its file name."""
    script = root / TRAINER if trainer is None else Path(trainer).resolve()
    if not script.is_file():
        raise FileNotFoundError(f"no {TRAINER} under {root}" if trainer is None else f"no trainer {script}")
    found, todo = set(), [script]
    while todo:
        path = todo.pop()
        if path not in found:
            found.add(path)
            todo += _imported_files(path, root)
    root = root.resolve()
    return {(p.relative_to(root) if p.is_relative_to(root) else Path(p.name)): p for p in found}


def code_files(root: str | os.PathLike = REPO_ROOT, trainer: str | os.PathLike | None = None) -> list[Path]:
    """The trainer's code files (`_code_paths`) as their sorted paths in a snapshot."""
    return sorted(_code_paths(Path(root), trainer))


def code_hash(root: str | os.PathLike = REPO_ROOT, trainer: str | os.PathLike | None = None) -> str:
    """The hash of the trainer's code files."""
    return hash_files({rel.as_posix(): path.read_bytes() for rel, path in _code_paths(Path(root), trainer).items()})


def snapshot_hash(snapshot: str | os.PathLike) -> str:
    """The hash of every file in a snapshot folder (run_dir/code), its CODE_HASH aside."""
    snapshot = Path(snapshot)
    if not snapshot.is_dir():
        raise FileNotFoundError(errno.ENOENT, "no code snapshot folder", str(snapshot))
    files = {p.relative_to(snapshot).as_posix(): p.read_bytes() for p in snapshot.rglob("*")
             if p.is_file() and p.relative_to(snapshot).as_posix() != HASH_FILE}
    if not files:
        raise FileNotFoundError(errno.ENOENT, "the code snapshot holds no files", str(snapshot))
    return hash_files(files)


def embedded_code_hash(code: str) -> str:
    """The hash of a snapshot holding only `code` as EMBEDDED_CODE."""
    return hash_files({EMBEDDED_CODE: code.encode("utf-8")})


def write_snapshot(dest_dir: str | os.PathLike, files: Mapping[str | Path, bytes | Path]) -> str:
    """Write `files` (relative path: its bytes, or the file to copy) and their CODE_HASH into dest_dir/code/;
    return the hash."""
    dest = Path(dest_dir) / SNAPSHOT_DIR
    for rel, data in files.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            (dest / rel).write_bytes(data)
        else:
            shutil.copy2(data, dest / rel)
    digest = snapshot_hash(dest)
    (dest / HASH_FILE).write_text(digest + "\n")
    return digest


def snapshot_code(dest_dir: str | os.PathLike, root: str | os.PathLike = REPO_ROOT,
                  trainer: str | os.PathLike | None = None) -> str:
    """write_snapshot of the running trainer's code files: `trainer` is the script that runs, so a copy of
    train_gpt.py under another name is its own code."""
    return write_snapshot(dest_dir, _code_paths(Path(root), trainer))
