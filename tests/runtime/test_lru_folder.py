"""The byte cap of the cache folders (weight maps, ONNX graphs): least recently used files go first."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from adassr.runtime.lru_folder import evict_least_recent


def _entry(folder: Path, name: str, size: int, age_s: float) -> Path:
    path = folder / name
    path.write_bytes(b"x" * size)
    os.utime(path, (1_700_000_000 - age_s,) * 2)
    return path


def test_an_entry_that_cannot_be_removed_does_not_stop_the_eviction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """The first file eviction could not remove (another user's in a shared folder: EPERM; a folder of an entry's
    name) ended it for good: the cap was never enforced again, and each write warned that it had failed, though
    it had not (a helper's hunt)."""
    (tmp_path / f"{'0' * 64}.npy").mkdir()  # oldest of all, and no file: neither counted nor removed
    os.utime(tmp_path / f"{'0' * 64}.npy", (1_600_000_000,) * 2)
    foreign = _entry(tmp_path, "a.npy", 100, age_s=50)
    older = _entry(tmp_path, "b.npy", 100, age_s=40)
    newer = [_entry(tmp_path, f"{c}.npy", 100, age_s=30 - i) for i, c in enumerate("cdef")]
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self.name == foreign.name:
            raise PermissionError(1, "Operation not permitted")
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    with caplog.at_level(logging.WARNING, logger="adassr.runtime.lru_folder"):
        evict_least_recent(tmp_path, "*.npy", 300)
        left = sorted(p.name for p in tmp_path.iterdir())
        assert left == [f"{'0' * 64}.npy", "a.npy", "e.npy", "f.npy"]  # 300 bytes with the one that stays
        assert not older.exists() and newer[-1].exists() and not caplog.records  # the cap is met: no word
        evict_least_recent(tmp_path, "*.npy", 50)  # a cap only the file that stays keeps it from
        evict_least_recent(tmp_path, "*.npy", 50)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{'0' * 64}.npy", "a.npy"]
    (warning,) = [r.getMessage() for r in caplog.records]  # once for the folder, not once per write
    assert "stays above its cap" in warning and "a.npy (Operation not permitted)" in warning


def test_entries_kept_for_the_run_are_never_evicted(tmp_path: Path) -> None:
    """A cap below what a run needs must not evict that run's own entries (the cache would thrash)."""
    _entry(tmp_path, "a.npy", 100, age_s=50)  # the oldest, but in use
    _entry(tmp_path, "b.npy", 100, age_s=40)
    _entry(tmp_path, "c.npy", 100, age_s=30)
    evict_least_recent(tmp_path, "*.npy", 0, keep={"a.npy", "c.npy"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "c.npy"]


def test_a_temporary_file_of_another_user_s_live_process_is_not_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    """os.kill(pid, 0) on another user's process fails with EPERM: the process is alive, its file is in use."""
    import errno

    from adassr.runtime import tempfiles

    def kill(pid: int, sig: int) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(tempfiles.os, "kill", kill)
    assert not tempfiles.is_stale_temp(".model.onnx.4242.0123456789ab.tmp")

    def gone(pid: int, sig: int) -> None:
        raise ProcessLookupError(errno.ESRCH, "No such process")

    monkeypatch.setattr(tempfiles.os, "kill", gone)
    assert tempfiles.is_stale_temp(".model.onnx.4242.0123456789ab.tmp")


def test_a_temporary_file_named_with_an_impossible_pid_is_a_dead_writer_s(tmp_path: Path) -> None:
    """A process id beyond a C pid_t in a temporary file's name (a foreign or damaged name in a shared cache
    folder) made os.kill raise OverflowError, which escaped every use of that cache, hit or miss, until the
    file was removed by hand (a helper's hunt)."""
    from adassr.runtime.tempfiles import is_stale_temp, remove_stale_temps

    names = [".m.npy.99999999999999999999.0123456789ab.tmp", ".m.npy.4294967297.0123456789ab.tmp"]
    for name in names:
        _entry(tmp_path, name, 10, age_s=0)  # (_entry's files are years old)
        assert is_stale_temp(name)
    assert sorted(remove_stale_temps(tmp_path)) == sorted(names)
    for name in names:
        _entry(tmp_path, name, 10, age_s=0)
    _entry(tmp_path, "a.npy", 100, age_s=50)
    _entry(tmp_path, "b.npy", 100, age_s=40)
    _entry(tmp_path, "c.npy", 100, age_s=30)
    evict_least_recent(tmp_path, "*.npy", 200)  # stops as soon as the rest fit: only the oldest goes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.npy", "c.npy"]


def test_kept_entries_count_toward_the_cap_and_only_the_pattern_s_files_go(tmp_path: Path) -> None:
    """Entries kept for the run still count (else the folder ends above its cap), files of other names are
    never touched, and a symbolic link that loops is skipped, not an error (mutation testing)."""
    for name, age in (("a.npy", 50), ("b.npy", 40), ("c.npy", 30)):
        _entry(tmp_path, name, 100, age_s=age)
    evict_least_recent(tmp_path, "*.npy", 200, keep={"c.npy"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.npy", "c.npy"]
    other = tmp_path / "other"
    other.mkdir()
    _entry(other, "notes.txt", 1000, age_s=100)
    _entry(other, "a.npy", 100, age_s=50)
    evict_least_recent(other, "*.npy", 100)
    assert sorted(p.name for p in other.iterdir()) == ["a.npy", "notes.txt"]
    looped = tmp_path / "looped"
    looped.mkdir()
    (looped / "loop.npy").symlink_to(looped / "loop.npy")
    _entry(looped, "a.npy", 100, age_s=50)
    _entry(looped, "b.npy", 100, age_s=40)
    evict_least_recent(looped, "*.npy", 100)
    assert sorted(p.name for p in looped.iterdir()) == ["b.npy", "loop.npy"]


def test_a_file_another_process_evicted_first_counts_as_gone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    for name, age in (("a.npy", 50), ("b.npy", 40), ("c.npy", 30)):
        _entry(tmp_path, name, 100, age_s=age)
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self.name == "a.npy":
            real_unlink(self)  # another process evicted it just before
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    with caplog.at_level(logging.WARNING, logger="adassr.runtime.lru_folder"):
        evict_least_recent(tmp_path, "*.npy", 200)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.npy", "c.npy"] and not caplog.records
