"""Keep a cache folder under a byte cap by removing its least recently used files (torch-free)."""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path
from stat import S_ISREG

from adassr.runtime.tempfiles import remove_stale_temps

log = logging.getLogger(__name__)

STALE_TEMP_AGE_S = 3600.0
"""Temporary files of dead writers older than this are removed at every use of the cache (a cache folder
has no lock, so a younger one may be another machine's write in progress)."""


def remove_dead_writes(folder: Path) -> None:
    """Remove the temporary files that killed writers left in the cache ``folder`` (over an hour old, see
    :data:`STALE_TEMP_AGE_S`). Called on every use of a cache, hit or miss: a cache that only hits never
    evicts, and a killed export's half-written graph (tens of MB, outside the byte cap) stayed for good."""
    remove_stale_temps(folder, older_than_s=STALE_TEMP_AGE_S)


def evict_least_recent(folder: Path, pattern: str, max_bytes: int, *, keep: Collection[str] = ()) -> None:
    """Remove the files of ``folder`` matching ``pattern``, oldest modification time first, until
    the rest hold at most ``max_bytes``; the files named in ``keep`` are never removed (a run's own
    entries, which a cap smaller than the run needs would otherwise evict one by one: nothing reused).
    Files that vanish meanwhile are skipped, and so are those that
    cannot be removed (another user's in a shared folder, a folder of that name): eviction goes on with
    the next one, and one warning names them (each folder once a process). Temporary files that killed
    writers left (over an hour old) go too."""
    remove_dead_writes(folder)
    entries = []
    for entry in folder.glob(pattern):
        try:
            stat = entry.stat()
        except OSError:
            continue
        if S_ISREG(stat.st_mode):  # a folder of that name is no entry of the cache: never counted nor removed
            entries.append((stat.st_mtime, stat.st_size, entry))
    total = sum(size for _, size, _ in entries)
    entries = [e for e in entries if e[2].name not in keep]  # counted, never removed
    kept: list[str] = []
    for _, size, entry in sorted(entries, key=lambda e: e[0]):
        if total <= max_bytes:
            break
        try:
            entry.unlink(missing_ok=True)
        except OSError as exc:
            kept.append(f"{entry.name} ({exc.strerror or exc})")
            continue
        total -= size
    if kept and total > max_bytes and folder not in _WARNED:
        _WARNED.add(folder)
        log.warning("the cache folder %s stays above its cap of %d MB: %d of its least recently used files cannot "
                    "be removed, e.g. %s; remove them by hand or give this user a cache folder of its own "
                    "(ADASSR_CACHE_DIR)", folder, max_bytes >> 20, len(kept), kept[0])


_WARNED: set[Path] = set()
"""Cache folders whose eviction was warned about in this process: one warning each, not one per write."""
