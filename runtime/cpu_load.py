"""How much of this process's CPUs other processes are using, from Linux's tick counters (torch-free).

OpenMP's intra-op workers meet at a barrier after every parallel region, so one worker that the
scheduler has taken off its core holds up the others, and a worker that waits spins before it
sleeps. With as many workers as cores and other processes busy on those cores, a training step
gets far slower than its share of the CPU: on 2 cores next to one other CPU-bound process, the
CPU adaptation step took 14.5 s with 2 threads and 1.0 s with 1 (0.6 s alone with 2; docs/cpu.md,
"Other processes on the same cores"). Sizing the pool to the cores the others leave free avoids it.

The measure: between two readings, the ticks the CPUs of this process's affinity mask spent busy
(``/proc/stat``: user, nice, system, irq, softirq, steal) minus the ticks this process used
(``/proc/self/stat``: utime and stime of all its threads), divided by the ticks that passed per
CPU. Steal counts as busy: a virtual CPU whose host runs something else is not free either.
Elsewhere (no ``/proc``) nothing is measured and callers keep their thread count.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

PROC_STAT = Path("/proc/stat")
SELF_STAT = Path("/proc/self/stat")

TAKEN_FRACTION = 0.25
"""Share of a core that other processes must keep busy for the pool to leave them that core. On 2
cores (``benchmarks/cpu_contention.py``, docs/cpu.md) a training step with other processes
loading 0.1 / 0.25 / 0.5 CPUs took 0.68 / 0.93 / 1.18 s with 2 threads and 0.93 / 0.98 / 0.87 s
with 1: even at about a quarter."""

_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user nice system irq softirq steal (guest is inside user)
_IDLE_FIELDS = (3, 4)  # idle iowait


@dataclass(frozen=True)
class CpuTicks:
    """One reading: busy and total ticks summed over a set of CPUs, and this process's own ticks."""

    busy: int
    total: int
    own: int
    cpus: int  # how many CPUs were summed


def parse_proc_stat(text: str, cpus: Collection[int] | None = None) -> tuple[int, int, int]:
    """``(busy, total, count)`` ticks summed over the ``cpuN`` lines of ``/proc/stat`` whose N is in ``cpus``.

    ``cpus=None`` sums every ``cpuN`` line. Raises ValueError when no line matches.
    """
    busy = total = count = 0
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu":
            continue
        try:
            index = int(name[3:])
        except ValueError:
            continue
        if cpus is not None and index not in cpus:
            continue
        values = [int(v) for v in rest.split()]
        if len(values) < 8:
            raise ValueError(f"/proc/stat line for {name} has {len(values)} fields, expected at least 8")
        line_busy = sum(values[i] for i in _BUSY_FIELDS)
        busy += line_busy
        total += line_busy + sum(values[i] for i in _IDLE_FIELDS)
        count += 1
    if count == 0:
        raise ValueError("/proc/stat has no per-CPU line for this process's CPUs")
    return busy, total, count


def parse_self_stat(text: str) -> int:
    """utime + stime (ticks) from ``/proc/<pid>/stat``; the command name may contain spaces and parentheses."""
    fields = text[text.rindex(")") + 2:].split()
    # after the name: state is field 3 of the man page, utime 14 and stime 15 -> indexes 11 and 12 here
    return int(fields[11]) + int(fields[12])


def _affinity() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def read_ticks(proc_stat: Path = PROC_STAT, self_stat: Path = SELF_STAT,
               cpus: Collection[int] | None = None) -> CpuTicks | None:
    """A reading over ``cpus`` (default: this process's affinity mask), or None where ``/proc`` is unreadable."""
    try:
        busy, total, count = parse_proc_stat(proc_stat.read_text(), _affinity() if cpus is None else cpus)
        own = parse_self_stat(self_stat.read_text())
    except (OSError, ValueError, IndexError):
        return None
    return CpuTicks(busy, total, own, count)


@dataclass(frozen=True)
class CpuLoad:
    """Other processes' use of this process's CPUs over an interval."""

    busy_cpus: float  # CPUs' worth of their work, 0 to ``cpus``
    cpus: int  # logical CPUs in this process's affinity mask

    def threads_left_free(self, max_threads: int, threads_per_core: int = 1) -> int:
        """Threads for an intra-op pool of at most ``max_threads`` that leave the others their cores.

        The others' work is first put on the cores of the mask beyond ``max_threads`` (a cgroup
        quota can allow fewer threads than the mask has CPUs; the host's other load then runs
        on the rest), then counted in physical cores, a core being taken once a quarter of it is
        busy (:data:`TAKEN_FRACTION`), and taken from the pool; at least one thread.
        """
        if max_threads < 1:
            raise ValueError(f"max_threads must be >= 1, got {max_threads}")
        tpc = max(1, threads_per_core)
        cores = max(1, self.cpus // tpc)
        taken = int(self.busy_cpus / tpc + (1.0 - TAKEN_FRACTION))
        return max(1, min(max_threads, cores - taken))


def busy_elsewhere(before: CpuTicks, after: CpuTicks) -> CpuLoad | None:
    """What other processes did between two readings; None if no tick passed or the CPU set changed."""
    elapsed = after.total - before.total
    if elapsed <= 0 or after.cpus != before.cpus:
        return None
    others = (after.busy - before.busy) - (after.own - before.own)
    return CpuLoad(min(float(after.cpus), max(0.0, others * after.cpus / elapsed)), after.cpus)


class LoadSource(Protocol):
    """Anything that says how busy other processes kept the CPUs since it was last asked."""

    def since_last(self) -> CpuLoad | None: ...


class CpuLoadMonitor:
    """Reports how busy other processes kept this process's CPUs since the previous call."""

    def __init__(self, read: Callable[[], CpuTicks | None] = read_ticks) -> None:
        self._read = read
        self._last: CpuTicks | None = self._read()

    @property
    def available(self) -> bool:
        """False where ``/proc`` cannot be read: :meth:`since_last` then always returns None."""
        return self._last is not None

    def since_last(self) -> CpuLoad | None:
        """Other processes' load since the last call (or construction); None when not measurable."""
        now = self._read()
        if now is None or self._last is None:
            self._last = now
            return None
        load = busy_elsewhere(self._last, now)
        if load is not None:  # keep the older reading when no tick passed, so short intervals add up
            self._last = now
        return load
