"""Files and folders written whole (a temporary beside the target, then one rename), and the temporaries a killed
writer leaves behind, cleaned by the next writer.

A temporary is `.<target name>.tmp-<pid>[-<8 hex>]`: hidden from record and run listings, and naming its writer. A
file gets open()'s mode (0666 less the umask), not mkstemp's 0600: pages, plots and records are for every reader.
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import IO, Iterator

STALE_AFTER_S = 3600  # a temporary this old is stale even if its pid runs (pids are reused); writers take seconds
_TEMP = re.compile(r"^\..+\.tmp-(\d+)(?:-[0-9a-f]{8})?$")  # .<name>.tmp-<pid>[-<8 hex>]: ours, with or without the hex


def temp_path(path: str | os.PathLike) -> Path:
    """A fresh temporary name for `path`, in its folder."""
    path = Path(path)
    return path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """A temporary beside `path`, open for writing; on a clean exit fsynced, given its mode and renamed over
    `path`. On an error it is removed and `path` is untouched."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, mode.replace("w", "x")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0o022)  # the only way to read it is to set it; put it back at once
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_file(path) as f:
        f.write(data)
    return Path(path)


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's data, or a folder's entries, to disk (a folder is opened read-only for this)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str | os.PathLike) -> None:
    """fsync every file under `folder`, then each folder after its files, `folder` last: a crash after the rename
    that publishes it leaves no empty files."""
    for parent, _, files in os.walk(folder, topdown=False):
        for fname in files:
            fsync_path(Path(parent) / fname)
        fsync_path(Path(parent))


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder beside `path` for the caller to fill and fsync_tree; on a clean exit renamed to `path`
    (failing rather than replace a non-empty folder) and the parent fsynced. On an error it is removed."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_path(path.parent)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def clean_stale_temps(folder: str | os.PathLike, max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove and return the temporaries in `folder` named as ours whose writer is gone: its pid no longer runs,
    or the temporary is older than max_age_s."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:  # no folder (yet), or one that cannot be listed: nothing to clean
        return removed
    now = time.time()
    for entry in entries:
        m = _TEMP.match(entry.name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            age = now - entry.lstat().st_mtime
        except OSError:
            continue
        if _running(int(m.group(1))) and age < max_age_s:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed
