"""The fsyncs and renames a write makes, in order: which path each fsync reached (named through Linux's
/proc/self/fd) and what each rename moved. For tests that a file reaches the disk before its name does,
and its folder after."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def record_fsyncs_and_renames(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Patch ``os.fsync`` and ``os.replace`` (every module's: they are the ``os`` module's) to record
    ``("fsync", path)``, and ``("replace", source)`` then ``("replaced", target)`` per rename; skip the
    test where descriptors cannot be named. ``monkeypatch.undo()`` ends the recording."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("names the fsynced descriptors through Linux's /proc/self/fd")
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.extend([("replace", str(src)), ("replaced", str(dst))])
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events
