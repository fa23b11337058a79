"""Which files make a run's code, their hash, and the snapshot copied into every run directory.

The code hash identifies "the same code" for record submissions: every run of a record must share
it, and `harness.verify` recomputes it from the snapshot. For our trainer it covers `train_gpt.py` and
every module of the repository it imports, directly or through another (`code_files`: an ast walk of
the import statements, those inside functions included, with the packages they run): the kernels, the
data loader, the track presets, and the leaf harness modules the trainer uses. Whatever can change
what is trained is in it. A run from another trainer (harness.ingest, harness.run --cmd) has as its
snapshot the source code its log starts with (modded-nanogpt prints its own source first), kept as one
file, EMBEDDED_CODE; or, where the log holds none, the script its command ran.

The hash is sha256 over (relative path, content) of every file of the snapshot, in sorted order, so
`snapshot_hash(run_dir/code)` equals the `code_hash` of the tree it was copied from, and
`embedded_code_hash(text)` equals the `snapshot_hash` of a snapshot holding that text.
"""
from __future__ import annotations

import ast
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
        digest.update(rel.encode() + b"\0")
        digest.update(files[rel])
        digest.update(b"\0")
    return digest.hexdigest()


def _module_file(root: Path, module: str) -> Path | None:
    """The file under root that `import module` runs (module.py or module/__init__.py), None if not there."""
    base = root.joinpath(*module.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def _imported_modules(path: Path, root: Path) -> set[str]:
    """Every module name the file's import statements (anywhere in it) may load, with their parent packages."""
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
            names.update([base, *(f"{base}.{alias.name}" for alias in node.names)])  # a name may be a submodule
    parts = [name.split(".") for name in names if name]
    return {".".join(p[:i]) for p in parts for i in range(1, len(p) + 1)}


def _code_paths(root: Path, trainer: str | os.PathLike | None) -> dict[Path, Path]:
    """{path in the snapshot: file} for the trainer and every file under root it imports, transitively. The
    trainer is the script that runs (root/TRAINER by default); one outside root goes in under its file name."""
    if trainer is None and not (root / TRAINER).is_file():
        raise FileNotFoundError(f"no {TRAINER} under {root}")
    trainer = Path(trainer).resolve() if trainer is not None else root / TRAINER
    if not trainer.is_file():
        raise FileNotFoundError(f"no trainer {trainer}")
    found, todo = set(), [trainer]
    while todo:
        path = todo.pop()
        if path not in found:
            found.add(path)
            todo += [f for m in _imported_modules(path, root) if (f := _module_file(root, m)) is not None]
    root = root.resolve()
    return {(p.relative_to(root) if p.is_relative_to(root) else Path(p.name)): p for p in found}


def code_files(root: str | os.PathLike = REPO_ROOT, trainer: str | os.PathLike | None = None) -> list[Path]:
    """The trainer (root/TRAINER unless given) and every file under `root` it imports, transitively, as their
    paths in a snapshot (relative to root), sorted."""
    return sorted(_code_paths(Path(root), trainer))


def code_hash(root: str | os.PathLike = REPO_ROOT, trainer: str | os.PathLike | None = None) -> str:
    """The hash of a trainer's code files (`code_files`) under `root`."""
    return hash_files({rel.as_posix(): path.read_bytes() for rel, path in _code_paths(Path(root), trainer).items()})


def snapshot_hash(snapshot: str | os.PathLike) -> str:
    """The hash of every file in a snapshot folder (run_dir/code), its CODE_HASH aside."""
    snapshot = Path(snapshot)
    if not snapshot.is_dir():
        raise FileNotFoundError(f"{snapshot}: no code snapshot folder")
    files = {p.relative_to(snapshot).as_posix(): p.read_bytes() for p in snapshot.rglob("*")
             if p.is_file() and p.relative_to(snapshot).as_posix() != HASH_FILE}
    if not files:
        raise FileNotFoundError(f"{snapshot}: the code snapshot holds no files")
    return hash_files(files)


def embedded_code_hash(code: str) -> str:
    """The hash of a snapshot holding only `code` as EMBEDDED_CODE (a foreign log's printed source)."""
    return hash_files({EMBEDDED_CODE: code.encode("utf-8")})


def write_snapshot(dest_dir: str | os.PathLike, files: Mapping[str | Path, bytes | Path]) -> str:
    """Write `files` (relative path: its bytes, or the file to copy) into `dest_dir/code/` with their CODE_HASH;
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
    """Copy the running trainer's code files (`code_files`) into `dest_dir/code/`, write its CODE_HASH, return
    the hash. `trainer` is the script that runs: a copy of train_gpt.py under another name is its own code."""
    return write_snapshot(dest_dir, _code_paths(Path(root), trainer))
