"""Files and folders written whole: a temporary name beside the target, then one rename; and the temporaries a
killed writer leaves behind, cleaned by the next writer.

A temporary is named `.<target name>.tmp-<pid>-<8 hex>`: hidden (record and run listings skip dot
names), and it says which process made it. A `.<name>.tmp-<pid>` folder (no hex part), as an
existing records/ or runs/ may hold from a killed writer, is cleaned the same way. A file gets the mode open() would give it, 0666 less the
umask, not mkstemp's 0600: leaderboard.md, its plot, record files and data manifests are meant to
be read by whoever reads the repository.
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


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; put it back at once
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary beside `path` for writing; on a clean exit, fsync it, give it 0666 less the umask,
    and rename it over `path`. On an error the temporary is removed and `path` is untouched."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, mode.replace("w", "x")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
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
    """fsync every file under `folder`, then each folder after the files it lists, `folder` last: before a
    rename publishes it, so that a crash leaves no folder with empty files."""
    for parent, _, files in os.walk(folder, topdown=False):
        for fname in files:
            fsync_path(Path(parent) / fname)
        fsync_path(Path(parent))


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder name beside `path` for the caller to fill and fsync (fsync_tree); on a clean exit it is
    renamed to `path` (which fails rather than replace a folder that is there and not empty) and the parent folder
    is fsynced, so that `path` is whole or absent. On an error the temporary is removed."""
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
        return True
    return True


def clean_stale_temps(folder: str | os.PathLike, max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove the temporaries (files or folders) in `folder` that this module's naming marks as ours and
    whose writer is gone: its pid no longer runs, or the temporary is older than max_age_s. Nothing else
    is touched. Returns what was removed."""
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
