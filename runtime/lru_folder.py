"""Keep a cache folder under a byte cap by removing its least recently used files (torch-free)."""

from __future__ import annotations

from pathlib import Path


def evict_least_recent(folder: Path, pattern: str, max_bytes: int) -> None:
    """Remove the files of ``folder`` matching ``pattern``, oldest modification time first, until
    the rest hold at most ``max_bytes``. Files that vanish meanwhile are skipped."""
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
