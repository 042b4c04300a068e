"""Temporary files of killed writers: which names count as such, and when one may go (runtime/tempfiles.py).
Each test was written against a change that mutation testing made unnoticed (it fails under it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from adassr.runtime import tempfiles
from adassr.runtime.tempfiles import create_temp, current_umask, remove_stale_temps

from ._processes import dead_pid


def test_a_live_process_s_temporary_file_is_kept(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        temp = tmp_path / f".x.png.{child.pid}.00ff.tmp"
        temp.write_text("being written")
        assert remove_stale_temps(tmp_path) == [] and temp.exists()
    finally:
        child.kill()
        child.wait()


def test_only_whole_temporary_names_are_removed_and_pid_0_is_nobody_s(tmp_path: Path) -> None:
    """A user's ``....tmp.bak`` is no temporary file of ours; pid 0 (os.kill(0, 0) signals our own process
    group, so it looked alive) is no writer's."""
    dead = dead_pid()
    names = [f".x.png.{dead}.00ff.tmp.bak", f".x.png.{dead}.00ff.tmpx", ".x.png..00ff.tmp"]
    for name in names:
        (tmp_path / name).write_text("user data")
    (tmp_path / ".x.png.0.00ff.tmp").write_text("left by a writer")
    assert remove_stale_temps(tmp_path) == [".x.png.0.00ff.tmp"]
    assert all((tmp_path / name).exists() for name in names)


def test_this_process_s_temporary_file_made_by_a_relative_path_is_kept_under_the_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("out").mkdir()
    fd, temp = create_temp(Path("out") / "a.png")
    os.close(fd)
    assert remove_stale_temps(tmp_path / "out", locked=True) == [] and (tmp_path / temp).exists()
    assert remove_stale_temps(Path("out"), locked=True) == []


def test_a_sweep_skips_what_it_cannot_remove_or_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another user's stale file in a shared folder, or a "folder" that is a file: nothing removed, no error."""
    (tmp_path / f".x.png.{dead_pid()}.00ff.tmp").write_text("t")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert remove_stale_temps(a_file) == []

    def unlink(path: object, *args: object, **kwargs: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(tempfiles.os, "unlink", unlink)
    assert remove_stale_temps(tmp_path) == []


def test_the_umask_is_read_in_octal() -> None:
    """umask 027 read as decimal would give Triton's version folders mode 0751 (the tests' 002 reads alike)."""
    old = os.umask(0o027)
    try:
        assert current_umask() == 0o027
    finally:
        os.umask(old)
