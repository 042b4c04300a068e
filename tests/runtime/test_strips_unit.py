"""Strips and the encoders' thread pool (adassr.runtime.images.strips): from mutation testing."""

from __future__ import annotations

import threading
import time

import pytest

from adassr.runtime.images.strips import StripPool


def test_ordered_keeps_at_most_one_more_result_than_the_threads_ahead() -> None:
    """In the caller's thread (one worker): when the first result is handed over, two items were computed."""
    calls: list[int] = []

    def fn(item: int) -> int:
        calls.append(item)
        return item * 10

    seen: list[tuple[int, int]] = []
    with StripPool(5, threads=1) as pool:
        for result in pool.ordered(fn, list(range(5))):
            seen.append((result, len(calls)))
    assert seen == [(0, 2), (10, 3), (20, 4), (30, 5), (40, 5)]


def test_strips_run_on_the_pools_threads_and_no_more_threads_than_strips() -> None:
    with StripPool(2, threads=8) as pool:
        assert pool.workers == 2
        name = pool.submit(lambda: threading.current_thread().name).result()
    assert name.startswith("adassr-encode")


def test_leaving_after_an_error_waits_for_the_running_strips() -> None:
    """Docstring: "after an error, nothing keeps running"."""
    finished: list[int] = []
    started = threading.Barrier(3)

    def slow(item: int) -> None:
        started.wait(timeout=5)
        time.sleep(0.2)
        finished.append(item)

    with pytest.raises(RuntimeError, match="encoder failed"), StripPool(6, threads=2) as pool:
        for item in range(6):
            pool.submit(slow, item)
        started.wait(timeout=5)  # both threads are in a strip
        raise RuntimeError("encoder failed")
    assert sorted(finished) == [0, 1]  # the running ones ended; those not begun were dropped
