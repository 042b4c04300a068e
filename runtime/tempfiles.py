"""Temporary files beside their target: naming, file modes and clean-up after killed processes.

A temporary file for ``<folder>/<name>`` is ``<folder>/.<name>.<pid>.<token>.tmp``: hidden, in the
same folder (so the final ``os.replace`` is atomic), and carrying the writer's process id, so a
later run can tell a live writer's file from one left by a process that was killed (``kill -9``,
power loss) and remove only the latter. A process id can look alive again (reused, or pid 1 in
another container), so :func:`remove_stale_temps` also removes, under the folder's lock, every
temporary file this process did not make, and elsewhere any untouched for a day. A name too long
to take the extra characters within the file system's 255 bytes stands in the temporary name
shortened, with a hash of the whole name.

Files made this way get the mode a plain ``open()`` would give (``0o666`` minus the umask), not
the ``0o600`` of :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import threading
import time
from collections.abc import Iterable
from pathlib import Path

_TEMP_RE = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.(?P<token>[0-9a-f]+)\.tmp$")
_UMASK_LOCK = threading.Lock()


NAME_MAX = 255
"""Longest file name (bytes) on the usual file systems (ext4, XFS, Btrfs, APFS, NTFS in UTF-16 units)."""
_TEMP_OVERHEAD = len(".") + len(".") + 10 + len(".") + 12 + len(".tmp")  # dots, a pid of up to 10 digits, the token
_HASH_CHARS = 16


def temp_stem(name: str) -> str:
    """How ``name`` stands in its temporary files' names: itself, or, when the temporary name would
    pass :data:`NAME_MAX` bytes, its start cut to fit followed by ``~`` and a hash of the whole name."""
    encoded = os.fsencode(name)
    if len(encoded) + _TEMP_OVERHEAD <= NAME_MAX:
        return name
    digest = hashlib.sha256(encoded).hexdigest()[:_HASH_CHARS]
    keep = name
    while len(os.fsencode(keep)) > NAME_MAX - _TEMP_OVERHEAD - 1 - _HASH_CHARS:
        keep = keep[:-1]  # by characters: never half of a multi-byte one (undecodable bytes are one each)
    return f"{keep}~{digest}"


def temp_path(target: Path) -> Path:
    """A fresh temporary path beside ``target`` (see the module docstring for the name)."""
    return target.parent / f".{temp_stem(target.name)}.{os.getpid()}.{secrets.token_hex(6)}.tmp"


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux), else briefly set."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def create_temp(target: Path) -> tuple[int, Path]:
    """Create an empty temporary file for ``target`` (O_EXCL, umask-derived mode); ``(fd, path)``."""
    while True:
        tmp = temp_path(target)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        _remember(tmp)
        return fd, tmp


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (ours, or another user's); False for 0, negatives and impossible ones."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except OverflowError:  # beyond a C pid_t: no process has it (a foreign or damaged name)
        return False
    except OSError as exc:
        return exc.errno == errno.EPERM  # exists, owned by someone else
    return True


def is_stale_temp(name: str) -> bool:
    """True for a temporary-file name (see :func:`temp_path`) whose writer process is gone."""
    match = _TEMP_RE.match(name)
    return match is not None and not pid_alive(int(match.group("pid")))


ABANDONED_AFTER_S = 24 * 3600.0
"""A temporary file untouched this long is a dead writer's even when its process id looks alive (a reused
id, or the same id in another container: every container's first process is pid 1)."""


def remove_stale_temps(folder: Path, *, target: str | Iterable[str] | None = None,
                       older_than_s: float = 0.0, locked: bool = False) -> list[str]:
    """Remove temporary files in ``folder`` left by dead writers (only those of ``target``, one name
    or several, when given; the folder is read once either way). Files this process is writing are
    never touched.

    ``locked``: the caller holds the folder's exclusive lock, which every writer of temporary files
    there holds, so any other process's temporary file is a dead writer's, whatever its process id
    says. Otherwise a file goes when its process is gone, or when it is older than
    :data:`ABANDONED_AFTER_S`; with ``older_than_s`` only when it is also that old (for folders written
    without a lock, which another machine sharing the folder, whose process ids mean nothing here,
    may be writing). Returns the names removed.
    """
    now = time.time()
    removed: list[str] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    own = _own_temps(folder)
    stems = None if target is None else {temp_stem(t) for t in ([target] if isinstance(target, str) else target)}
    for entry in entries:
        match = _TEMP_RE.match(entry.name)
        if match is None or (stems is not None and match.group("target") not in stems) or entry.name in own:
            continue
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
            if not locked:
                age = now - entry.stat(follow_symlinks=False).st_mtime
                if (pid_alive(int(match.group("pid"))) and age < ABANDONED_AFTER_S) or age < older_than_s:
                    continue
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(entry.name)
    return removed


_OWN: dict[str, set[str]] = {}  # folder -> names of the temporary files this process made there
_OWN_LOCK = threading.Lock()


def _remember(tmp: Path) -> None:
    with _OWN_LOCK:
        _OWN.setdefault(os.path.abspath(tmp.parent), set()).add(tmp.name)


def _own_temps(folder: Path) -> frozenset[str]:
    """Names of this process's temporary files in ``folder`` that still exist (those gone are forgotten)."""
    key = os.path.abspath(folder)
    with _OWN_LOCK:
        names = _OWN.get(key)
        if not names:
            return frozenset()
        alive = {name for name in names if os.path.lexists(os.path.join(key, name))}
        if alive:
            _OWN[key] = alive
        else:
            del _OWN[key]
        return frozenset(alive)


def remove_own_temps(timeout_s: float = 1.0) -> int:
    """Remove every temporary file this process is writing (for a process about to end in the middle of its
    writes: see :mod:`adassr.runtime.signals`); the number removed. Gives up after ``timeout_s`` waiting
    for the record's lock."""
    if not _OWN_LOCK.acquire(timeout=timeout_s):
        return 0
    try:
        paths = [os.path.join(folder, name) for folder, names in _OWN.items() for name in names]
    finally:
        _OWN_LOCK.release()
    removed = 0
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)
            removed += 1
    return removed
