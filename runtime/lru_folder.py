"""Keep a cache folder under a byte cap by removing its least recently used files (torch-free)."""

from __future__ import annotations

from pathlib import Path

from adassr.runtime.tempfiles import remove_stale_temps

STALE_TEMP_AGE_S = 3600.0
"""Temporary files of dead writers older than this are removed at every use of the cache (a cache folder
has no lock, so a younger one may be another machine's write in progress)."""


def remove_dead_writes(folder: Path) -> None:
    """Remove the temporary files that killed writers left in the cache ``folder`` (over an hour old, see
    :data:`STALE_TEMP_AGE_S`). Called on every use of a cache, hit or miss: a cache that only hits never
    evicts, and a killed export's half-written graph (tens of MB, outside the byte cap) stayed for good."""
    remove_stale_temps(folder, older_than_s=STALE_TEMP_AGE_S)


def evict_least_recent(folder: Path, pattern: str, max_bytes: int) -> None:
    """Remove the files of ``folder`` matching ``pattern``, oldest modification time first, until
    the rest hold at most ``max_bytes``. Files that vanish meanwhile are skipped. Temporary files
    that killed writers left (over an hour old) go too."""
    remove_dead_writes(folder)
    entries = []
    for entry in folder.glob(pattern):
        try:
            stat = entry.stat()
        except OSError:
            continue
        entries.append((stat.st_mtime, stat.st_size, entry))
    total = sum(size for _, size, _ in entries)
    for _, size, entry in sorted(entries, key=lambda e: e[0]):
        if total <= max_bytes:
            break
        entry.unlink(missing_ok=True)
        total -= size
