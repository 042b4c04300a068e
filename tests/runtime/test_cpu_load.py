"""Other processes' load on this process's CPUs, from /proc tick counters (torch-free)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adassr.runtime.cpu_load import (
    CpuLoad,
    CpuLoadMonitor,
    CpuTicks,
    busy_elsewhere,
    parse_proc_stat,
    parse_self_stat,
    read_ticks,
)

STAT = """cpu  300 0 100 600 0 0 0 0 0 0
cpu0 100 0 50 350 0 0 0 0 0 0
cpu1 200 0 50 240 10 0 0 0 0 0
cpu2 5 1 2 90 0 1 1 1 0 0
intr 12345 0 0
ctxt 999
"""


def test_proc_stat_sums_the_requested_cpus() -> None:
    assert parse_proc_stat(STAT, {0, 1}) == (400, 1000, 2)  # busy user+system, total adds idle+iowait
    assert parse_proc_stat(STAT, {2}) == (11, 101, 1)  # nice, irq, softirq and steal are busy too
    assert parse_proc_stat(STAT) == (411, 1101, 3)  # every cpuN line, never the aggregate "cpu" line


def test_proc_stat_without_our_cpus_is_an_error() -> None:
    with pytest.raises(ValueError, match="no per-CPU line"):
        parse_proc_stat(STAT, {7})
    with pytest.raises(ValueError, match="fields"):
        parse_proc_stat("cpu0 1 2 3\n", {0})


def test_self_stat_reads_utime_and_stime_after_an_odd_name() -> None:
    fields = ["S"] + [str(i) for i in range(4, 60)]  # field n of proc(5) holds n
    text = "4242 (a (weird) name) " + " ".join(fields)
    assert parse_self_stat(text) == 14 + 15


def test_busy_elsewhere_subtracts_our_own_ticks() -> None:
    before = CpuTicks(busy=1000, total=4000, own=100, cpus=2)
    after = CpuTicks(busy=1000 + 300, total=4000 + 400, own=100 + 150, cpus=2)  # 200 ticks per CPU passed
    load = busy_elsewhere(before, after)
    assert load == CpuLoad(busy_cpus=pytest.approx(0.75), cpus=2)  # (300 - 150) ticks of 200 per CPU
    assert busy_elsewhere(after, after) is None  # no tick passed
    assert busy_elsewhere(before, CpuTicks(1300, 4400, 0, cpus=4)) is None  # the CPU set changed


@pytest.mark.parametrize(("busy", "cpus", "max_threads", "tpc", "threads"), [
    (0.0, 2, 2, 1, 2),
    (0.2, 2, 2, 1, 2),  # a light background process keeps both threads
    (0.25, 2, 2, 1, 1),  # a quarter of a core counts
    (1.0, 2, 2, 1, 1),
    (2.0, 2, 2, 1, 1),  # never below one thread
    (1.2, 4, 4, 1, 3),
    (1.3, 4, 4, 1, 2),
    (30.0, 64, 2, 1, 2),  # a cgroup quota of 2 CPUs on a 64-CPU host: the host's load runs on the rest
    (62.2, 64, 2, 1, 2),
    (62.3, 64, 2, 1, 1),
    (0.4, 4, 2, 2, 2),  # SMT: 0.4 busy hardware threads are 0.2 of a core
    (0.5, 4, 2, 2, 1),
    (2.0, 4, 2, 2, 1),
])
def test_threads_left_free(busy: float, cpus: int, max_threads: int, tpc: int, threads: int) -> None:
    assert CpuLoad(busy, cpus).threads_left_free(max_threads, tpc) == threads


def test_threads_left_free_rejects_an_empty_pool() -> None:
    with pytest.raises(ValueError, match="max_threads"):
        CpuLoad(0.0, 2).threads_left_free(0)


def test_monitor_without_proc_measures_nothing() -> None:
    monitor = CpuLoadMonitor(read=lambda: None)
    assert not monitor.available
    assert monitor.since_last() is None


def test_monitor_keeps_the_older_reading_until_a_tick_passes() -> None:
    readings = iter([CpuTicks(0, 0, 0, 2), CpuTicks(0, 0, 0, 2), CpuTicks(100, 200, 0, 2)])
    monitor = CpuLoadMonitor(read=lambda: next(readings))
    assert monitor.since_last() is None
    assert monitor.since_last() == CpuLoad(1.0, 2)


def test_unreadable_proc_gives_no_reading(tmp_path: Path) -> None:
    assert read_ticks(tmp_path / "missing", tmp_path / "missing") is None
    (tmp_path / "stat").write_text("intr 1 2 3\n")
    (tmp_path / "self").write_text("1 (x) S 0")
    assert read_ticks(tmp_path / "stat", tmp_path / "self") is None


@pytest.mark.skipif(not Path("/proc/stat").exists() or not hasattr(os, "sched_getaffinity"),
                    reason="needs Linux /proc and CPU affinity")
def test_a_busy_process_on_our_cpus_is_seen_and_our_own_work_is_not() -> None:
    monitor = CpuLoadMonitor()
    assert monitor.available
    time.sleep(1.0)
    background = monitor.since_last()  # what the rest of the machine does while we idle
    end = time.monotonic() + 1.0
    x = 0
    while time.monotonic() < end:  # our own work: not counted as other processes' load
        x += 1
    own = monitor.since_last()
    time.sleep(1.0)
    background_after = monitor.since_last()  # a neighbour whose load rose meanwhile shows here too
    cpu = min(os.sched_getaffinity(0))
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(child.pid, {cpu})
        time.sleep(1.5)
        other = monitor.since_last()
    finally:
        child.kill()
        child.wait()
    assert background is not None and own is not None and other is not None and background_after is not None
    # our busy second is subtracted (counted, it would read about 1.0 above what the rest of the
    # machine was doing); the child takes a whole CPU while we sleep, and what else runs on the
    # machine only adds to that
    assert own.busy_cpus < max(background.busy_cpus, background_after.busy_cpus) + 0.7
    assert other.busy_cpus >= 0.8


def test_load_counts_only_the_cpus_this_process_may_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under taskset or a cpuset the host's other CPUs are not ours; a truncated /proc/self/stat is no load
    reading; busy CPUs stay within 0..cpus (mutation testing)."""
    from adassr.runtime import cpu_load
    from adassr.runtime.cpu_load import CpuTicks, busy_elsewhere, read_ticks

    (tmp_path / "stat").write_text("cpu0 1 0 0 1 0 0 0 0\ncpu1 5 0 0 1 0 0 0 0\n")
    (tmp_path / "self").write_text("1 (x) S " + " ".join(["0"] * 50))
    monkeypatch.setattr(cpu_load, "_affinity", lambda: {0})
    assert read_ticks(tmp_path / "stat", tmp_path / "self") == CpuTicks(1, 2, 0, 1)
    (tmp_path / "self").write_text("1 (x) S 0")
    assert read_ticks(tmp_path / "stat", tmp_path / "self") is None
    assert busy_elsewhere(CpuTicks(0, 0, 0, 2), CpuTicks(100, 100, 300, 2)).busy_cpus == 0.0
    assert busy_elsewhere(CpuTicks(0, 0, 0, 2), CpuTicks(300, 100, 0, 2)).busy_cpus == 2.0
