"""The tile batcher on its own: which batch runs when, and cancellation at submission."""

from __future__ import annotations

import time

import numpy as np
import pytest

from adassr.runtime.server.scheduler import BatchRecord, RequestCancelled, Ticket, TileBatcher


class _Doubling:
    """A stand-in model: doubles each value (the batcher only needs ``infer``)."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(batch.shape[0])
        return batch * 2


def test_a_full_batch_does_not_wait_for_another_key_s_max_wait() -> None:
    """The batcher looked only at the key with the oldest tile: a full batch of another key waited
    until that tile's max_wait had passed."""
    records: list[BatchRecord] = []
    batcher = TileBatcher(max_batch=2, max_wait_s=30.0, on_batch=records.append)
    model = _Doubling()
    ticket = Ticket(time.monotonic() + 60)
    tile = np.ones((3, 4, 4), np.float32)
    try:
        with batcher.producer():  # a request still preparing tiles: nothing is idle
            lone = batcher.submit("a", model, tile, ticket)  # type: ignore[arg-type]
            full = [batcher.submit("b", model, tile * k, ticket) for k in (1, 2)]  # type: ignore[arg-type]
            outputs = [future.result(timeout=10) for future in full]  # not after a's 30 s
            assert [float(out.max()) for out in outputs] == [2.0, 4.0] and not lone.done()
            assert model.calls == [2]
    finally:
        batcher.close(timeout=5)
    assert lone.result(timeout=10).max() == 2.0  # closing runs what is left


def test_a_cancelled_request_queues_no_tile() -> None:
    batcher = TileBatcher(max_batch=4, max_wait_s=0.01)
    model = _Doubling()
    ticket = Ticket(time.monotonic() + 60)
    infer = batcher.infer_fn("a", model, ticket)  # type: ignore[arg-type]
    try:
        assert infer(np.ones((2, 3, 4, 4), np.float32)).max() == 2.0
        ticket.cancel("client disconnected")
        with pytest.raises(RequestCancelled, match="client disconnected"):
            infer(np.ones((2, 3, 4, 4), np.float32))
        assert batcher.depth == 0 and model.calls == [2]
    finally:
        batcher.close(timeout=5)


class _FailsOnce(_Doubling):
    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(batch.shape[0])
        if len(self.calls) == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return batch * 2


def test_a_failed_model_call_drops_the_failed_request_s_queued_tiles() -> None:
    """A request's tiles split over a failing batch and a later one: the later one still ran (a model
    call for a request already answered 500, maybe batched with others' tiles), counted as work done."""
    import threading

    model = _FailsOnce()
    records: list[BatchRecord] = []
    batcher = TileBatcher(max_batch=2, max_wait_s=0.3, on_batch=records.append)
    ticket = Ticket(time.monotonic() + 60)
    errors: list[BaseException] = []
    tiles = np.ones((3, 3, 4, 4), np.float32)  # 3 tiles: a batch of 2 (it fails), then 1 left queued
    try:
        infer = batcher.infer_fn("k", model, ticket)  # type: ignore[arg-type]

        def run() -> None:
            try:
                infer(tiles)
            except RuntimeError as exc:
                errors.append(exc)

        with batcher.producer():
            thread = threading.Thread(target=run)
            thread.start()
            thread.join(timeout=10)
        assert [str(e) for e in errors] == ["CUDA out of memory (simulated)"]
        time.sleep(0.6)  # longer than max_wait: a left-over tile would have run by now
        assert model.calls == [2] and batcher.depth == 0 and records == []
    finally:
        batcher.close(timeout=5)


def test_a_lone_request_does_not_wait_max_wait_for_company() -> None:
    """When every pipeline that could add tiles is waiting for results, a part batch runs at once: a
    single request's model calls must not each wait --max-wait-ms (a helper's mutant made every call wait)."""
    import concurrent.futures as cf

    batcher = TileBatcher(max_batch=4, max_wait_s=30.0)
    model = _Doubling()
    infer = batcher.infer_fn("a", model, Ticket(time.monotonic() + 120))  # type: ignore[arg-type]

    def one_request() -> list[float]:
        with batcher.producer():
            return [float(infer(np.ones((1, 3, 4, 4), np.float32)).max()) for _ in range(3)]

    try:
        with cf.ThreadPoolExecutor(1) as pool:
            assert pool.submit(one_request).result(timeout=20) == [2.0, 2.0, 2.0]  # not after 3 x 30 s
        assert model.calls == [1, 1, 1]
    finally:
        batcher.close(timeout=5)


class _Slow(_Doubling):
    def infer(self, batch: np.ndarray) -> np.ndarray:
        time.sleep(0.5)
        return super().infer(batch)


def test_the_oldest_waiting_tile_runs_first() -> None:
    """Two part batches due at once: the one whose tile waited longest runs first, so one camera's or tile
    shape's requests cannot starve another's (a helper's mutant ran the newest first)."""
    order: list[str] = []
    batcher = TileBatcher(max_batch=2, max_wait_s=0.05, on_batch=lambda r: None)
    busy, a, b = _Slow(), _Doubling(), _Doubling()
    a.infer = lambda batch: (order.append("a"), batch * 2)[1]  # type: ignore[method-assign]
    b.infer = lambda batch: (order.append("b"), batch * 2)[1]  # type: ignore[method-assign]
    ticket = Ticket(time.monotonic() + 60)
    tile = np.ones((3, 4, 4), np.float32)
    try:
        with batcher.producer():  # still preparing tiles: nothing is idle, part batches wait for max_wait
            first = [batcher.submit("busy", busy, tile, ticket) for _ in range(2)]  # type: ignore[arg-type]
            time.sleep(0.1)  # the full batch is on the (single) inference thread for 0.5 s
            older = batcher.submit("a", a, tile, ticket)  # type: ignore[arg-type]
            time.sleep(0.1)
            newer = batcher.submit("b", b, tile, ticket)  # type: ignore[arg-type]
            for future in (*first, older, newer):
                future.result(timeout=20)
        assert order == ["a", "b"]
    finally:
        batcher.close(timeout=5)


def test_a_ticket_keeps_its_first_reason() -> None:
    ticket = Ticket(time.monotonic() + 60)
    calls: list[int] = []
    ticket.on_cancel(lambda: calls.append(1))
    ticket.cancel("deadline")
    ticket.cancel("client disconnected")  # the request's outcome and metric stay the deadline's
    assert ticket.cancelled and ticket.reason == "deadline" and calls == [1]
    with pytest.raises(RequestCancelled, match="deadline"):
        ticket.check()


# -- what mutation testing changed unnoticed (each test fails under its mutant) ---------------------
TILE = np.ones((3, 4, 4), np.float32)


def _ticket() -> Ticket:
    return Ticket(time.monotonic() + 60)


def test_tiles_of_different_shapes_never_share_a_model_call() -> None:
    """The server runs small images at their own size (no padding to the tile): two such requests to one
    camera must not be stacked into one call, where np.stack would fail both."""
    import concurrent.futures as cf
    import threading

    batcher = TileBatcher(max_batch=4, max_wait_s=0.2)
    model = _Doubling()
    shapes = [(1, 3, 4, 4), (1, 3, 8, 8)]
    gate = threading.Barrier(2)

    def one(shape: tuple[int, ...]) -> tuple[int, ...]:
        infer = batcher.infer_fn("m", model, _ticket())  # type: ignore[arg-type]
        with batcher.producer():
            gate.wait()
            return infer(np.ones(shape, np.float32)).shape

    try:
        with batcher.producer(), cf.ThreadPoolExecutor(2) as pool:  # held: no part batch before max_wait
            futures = [pool.submit(one, s) for s in shapes]
            assert [f.result(timeout=20) for f in futures] == shapes
        assert sorted(model.calls) == [1, 1]
    finally:
        batcher.close(timeout=5)


def test_a_tile_submitted_after_close_is_refused_not_left_waiting() -> None:
    from adassr.runtime.errors import BackendError

    batcher = TileBatcher(max_batch=2, max_wait_s=0.01)
    batcher.close(timeout=5)
    with pytest.raises(BackendError, match="shutting down"):
        batcher.submit("a", _Doubling(), TILE, _ticket())  # type: ignore[arg-type]


def test_submit_wakes_an_idle_inference_thread() -> None:
    batcher = TileBatcher(max_batch=1, max_wait_s=30.0)
    try:
        time.sleep(0.3)  # the inference thread waits on an empty queue
        assert batcher.submit("a", _Doubling(), TILE, _ticket()).result(timeout=10).max() == 2.0  # type: ignore[arg-type]
    finally:
        batcher.close(timeout=5)


def test_a_finished_model_call_does_not_leave_its_request_counted_as_blocked() -> None:
    """A request whose call returned is no longer waiting for results; were it still counted, every part
    batch would look idle and run alone (and the producer count must go up and down with the pipelines)."""
    import concurrent.futures as cf

    batcher = TileBatcher(max_batch=4, max_wait_s=30.0)
    model = _Doubling()
    infer = batcher.infer_fn("a", model, Ticket(time.monotonic() + 120))  # type: ignore[arg-type]

    def request() -> np.ndarray:
        with batcher.producer():
            infer(np.ones((4, 3, 4, 4), np.float32))  # a full batch: runs at once
            return infer(np.ones((1, 3, 4, 4), np.float32))  # a part batch: waits for the other pipeline

    other = batcher.producer()
    other.__enter__()
    try:
        with cf.ThreadPoolExecutor(1) as pool:
            second = pool.submit(request)
            time.sleep(1.0)
            assert model.calls == [4] and not second.done()
            other.__exit__(None, None, None)  # the other pipeline ends: the part batch is due at once
            assert second.result(timeout=10).max() == 2.0
        assert model.calls == [4, 1]
    finally:
        batcher.close(timeout=5)


def _raise(*_: object) -> None:
    raise RuntimeError("metrics broken")


def test_failing_callbacks_never_end_the_inference_thread() -> None:
    model = _FailsOnce()
    batcher = TileBatcher(max_batch=2, max_wait_s=0.01, on_batch=_raise, on_cancelled_tiles=_raise)
    try:
        ticket = _ticket()
        with batcher.producer():
            futures = [batcher.submit("k", model, TILE, ticket) for _ in range(3)]  # type: ignore[arg-type]
        with pytest.raises(RuntimeError, match="simulated"):
            futures[0].result(timeout=10)
        for _ in range(2):  # the failed request's third tile was dropped: both callbacks raised on the thread
            later = [batcher.submit("k", model, TILE, _ticket()) for _ in range(2)]  # type: ignore[arg-type]
            assert [float(f.result(timeout=10).max()) for f in later] == [2.0, 2.0]
    finally:
        batcher.close(timeout=5)


def test_close_runs_a_part_batch_at_once_even_while_a_pipeline_is_open() -> None:
    batcher = TileBatcher(max_batch=4, max_wait_s=30.0)
    with batcher.producer():
        future = batcher.submit("a", _Doubling(), TILE, _ticket())  # type: ignore[arg-type]
        batcher.close(timeout=5)
        assert future.result(timeout=5).max() == 2.0


def test_a_part_batch_runs_after_max_wait_while_another_pipeline_prepares_tiles() -> None:
    batcher = TileBatcher(max_batch=4, max_wait_s=0.1)
    try:
        with batcher.producer():  # never submits: nothing else wakes the inference thread
            assert batcher.submit("a", _Doubling(), TILE, _ticket()).result(timeout=10).max() == 2.0  # type: ignore[arg-type]
    finally:
        batcher.close(timeout=5)


class _Short(_Doubling):
    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(batch.shape[0])
        return batch[:1] * 2 if len(self.calls) == 1 else batch * 2


def test_a_short_model_output_fails_its_tiles_and_the_batcher_goes_on() -> None:
    """A backend that returns fewer rows than it got must fail that batch's tiles, not the inference
    thread (every later request would hang until its deadline)."""
    model = _Short()
    batcher = TileBatcher(max_batch=2, max_wait_s=30.0)
    try:
        with batcher.producer():  # a full batch of two runs at once; no part batch of one before it
            first = [batcher.submit("k", model, TILE, _ticket()) for _ in range(2)]  # type: ignore[arg-type]
            for f in first:
                with pytest.raises(IndexError):
                    f.result(timeout=10)
            later = [batcher.submit("k", model, TILE, _ticket()) for _ in range(2)]  # type: ignore[arg-type]
            assert [float(f.result(timeout=10).max()) for f in later] == [2.0, 2.0]
    finally:
        batcher.close(timeout=5)


def test_a_batch_record_counts_requests_not_tiles() -> None:
    records: list[BatchRecord] = []
    batcher = TileBatcher(max_batch=2, max_wait_s=30.0, on_batch=records.append)
    try:
        ticket = _ticket()
        with batcher.producer():
            for f in [batcher.submit("k", _Doubling(), TILE, ticket) for _ in range(2)]:  # type: ignore[arg-type]
                f.result(timeout=10)
    finally:
        batcher.close(timeout=5)
    assert records == [BatchRecord("k", 2, 1)]


def test_close_waits_for_the_queued_work_and_stops_every_thread() -> None:
    """The server closes its models right after close() returns: a call still running then would use a
    closed model; and every inference thread must wake to stop, not only one."""
    batcher = TileBatcher(max_batch=1, max_wait_s=0.01)
    future = batcher.submit("a", _Slow(), TILE, _ticket())  # type: ignore[arg-type]
    batcher.close(timeout=10)
    assert future.done()
    three = TileBatcher(max_batch=1, max_wait_s=0.01, threads=3)
    time.sleep(0.2)  # all three wait on the empty queue
    started = time.monotonic()
    three.close(timeout=5)
    assert not any(t.is_alive() for t in three._threads) and time.monotonic() - started < 4


def test_model_calls_run_on_every_inference_thread() -> None:
    import threading

    meet = threading.Barrier(2, timeout=5)

    class _Meets(_Doubling):
        def infer(self, batch: np.ndarray) -> np.ndarray:
            meet.wait()  # both calls must be running at once
            return batch * 2

    batcher = TileBatcher(max_batch=1, max_wait_s=0.01, threads=2)
    try:
        futures = [batcher.submit(k, _Meets(), TILE, _ticket()) for k in "ab"]  # type: ignore[arg-type]
        assert [float(f.result(timeout=10).max()) for f in futures] == [2.0, 2.0]
    finally:
        batcher.close(timeout=5)
