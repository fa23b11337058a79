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
    package = path.relative_to(root).with_suffix("").parts[:-1]  # the package a relative import starts from
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


def code_files(root: str | os.PathLike = REPO_ROOT) -> list[Path]:
    """TRAINER and every file under `root` it imports, transitively, as paths relative to root, sorted."""
    root = Path(root)
    if not (root / TRAINER).is_file():
        raise FileNotFoundError(f"no {TRAINER} under {root}")
    found, todo = set(), [root / TRAINER]
    while todo:
        path = todo.pop()
        if path not in found:
            found.add(path)
            todo += [f for m in _imported_modules(path, root) if (f := _module_file(root, m)) is not None]
    return sorted(p.relative_to(root) for p in found)


def code_hash(root: str | os.PathLike = REPO_ROOT) -> str:
    """The hash of our trainer's code files (`code_files`) under `root`."""
    root = Path(root)
    return hash_files({rel.as_posix(): (root / rel).read_bytes() for rel in code_files(root)})


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


def write_snapshot(dest_dir: str | os.PathLike, files: Mapping[str, bytes]) -> str:
    """Write `files` into `dest_dir/code/` with their CODE_HASH; return the hash."""
    dest = Path(dest_dir) / SNAPSHOT_DIR
    for rel, data in files.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(data)
    digest = snapshot_hash(dest)
    (dest / HASH_FILE).write_text(digest + "\n")
    return digest


def snapshot_code(dest_dir: str | os.PathLike, root: str | os.PathLike = REPO_ROOT) -> str:
    """Copy our trainer's code files into `dest_dir/code/`, write its CODE_HASH, return the hash."""
    root, dest = Path(root), Path(dest_dir) / SNAPSHOT_DIR
    for rel in code_files(root):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, dest / rel)
    digest = snapshot_hash(dest)
    (dest / HASH_FILE).write_text(digest + "\n")
    return digest
