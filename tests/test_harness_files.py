"""harness.files: files written whole with the umask's mode; the temporaries a killed writer leaves, cleaned."""
import os
import stat
import subprocess
import sys
import time

import pytest

from harness.files import atomic_file, clean_stale_temps, temp_path, write_atomic


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_file_written_whole_gets_the_umask_s_mode(tmp_path, umask_027):
    path = write_atomic(tmp_path / "page.md", b"hello\n")
    assert path.read_bytes() == b"hello\n" and mode(path) == 0o640
    os.umask(0o022)
    with atomic_file(tmp_path / "page.md", "w") as f:
        f.write("again\n")
    assert (tmp_path / "page.md").read_text() == "again\n" and mode(tmp_path / "page.md") == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page.md"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    write_atomic(tmp_path / "page.md", b"old\n")
    with pytest.raises(RuntimeError):
        with atomic_file(tmp_path / "page.md") as f:
            f.write(b"half")
            raise RuntimeError("killed")
    assert (tmp_path / "page.md").read_bytes() == b"old\n" and len(list(tmp_path.iterdir())) == 1


def test_only_our_stale_temporaries_are_cleaned(tmp_path):
    gone = dead_pid()
    stale_file = tmp_path / f".leaderboard.md.tmp-{gone}-0123abcd"
    stale_dir = tmp_path / f".2026-01-01_fast.tmp-{gone}"  # the form without the hex part
    live = tmp_path / f".leaderboard.png.tmp-{os.getppid()}-0123abcd"  # a writer that still runs
    old_live = tmp_path / f".x.tmp-{os.getppid()}-deadbeef"  # ... for longer than any writer takes
    theirs = [tmp_path / f".notes.tmp-{gone}-xyz", tmp_path / "run.tmp-1-0123abcd", tmp_path / f".a.tmp-{gone}.bak"]
    for path in [stale_file, live, old_live, *theirs]:
        path.write_text("x")
    (stale_dir / "runs").mkdir(parents=True)
    os.utime(old_live, (time.time() - 7200, time.time() - 7200))
    assert sorted(clean_stale_temps(tmp_path)) == sorted([stale_file, stale_dir, old_live])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in [live, *theirs])
    assert temp_path(tmp_path / "a.md").name.startswith(f".a.md.tmp-{os.getpid()}-")


def test_a_temporary_of_another_user_s_live_writer_is_kept(tmp_path, monkeypatch):
    """kill(pid, 0) on another user's process raises PermissionError: it runs, so its temporary stays."""
    def kill(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    theirs = tmp_path / f".leaderboard.md.tmp-{os.getpid() + 1}-0123abcd"
    theirs.write_text("x")
    monkeypatch.setattr(os, "kill", kill)
    assert clean_stale_temps(tmp_path) == [] and theirs.exists()
