"""Dynamic batching of tiles across requests, with cancellation and deadlines.

A request's pipeline (running in a worker thread) hands its tiles to :class:`TileBatcher` through
:meth:`TileBatcher.infer_fn`, which returns an ``InferFn`` for :func:`adassr.runtime.pipeline.upscale_pixels`:
the runtime's own tiling, blending, colour and ``outscale`` code runs unchanged, only the model
call goes through the batcher.

Batching rule (Triton's dynamic batcher, in small): tiles wait in one FIFO per *batch key*
(model identity + tile shape). An inference thread takes the key whose oldest tile has waited
longest and runs it when it holds ``max_batch`` tiles or its oldest tile has waited ``max_wait``;
it then takes up to ``max_batch`` tiles of that key, from any requests, and runs them as one
``N x 3 x H x W`` call. Results go back through per-tile futures.

Cancellation: every request has a :class:`Ticket`. Cancelling it (client gone, deadline passed)
removes its queued tiles at once (counted in ``tiles_cancelled``) and makes its pipeline stop at
its next model call with :class:`RequestCancelled`. Tiles already inside a running model call
finish; their results are dropped.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from adassr.runtime.backends import Backend
from adassr.runtime.errors import AdassrError, BackendError
from adassr.runtime.tiling import InferFn

logger = logging.getLogger(__name__)


class RequestCancelled(AdassrError):
    """The request was cancelled (client disconnected or deadline passed); its work was dropped."""


class DeadlineExceeded(RequestCancelled):
    """The request's deadline passed before its result was ready."""


class Ticket:
    """Cancellation and deadline state of one request, shared by its HTTP task and its worker."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline  # time.monotonic() value
        self.camera: str | None = None  # the camera the request was routed to, once it is
        self._cancelled = threading.Event()
        self._reason = ""
        self._on_cancel: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def reason(self) -> str:
        return self._reason

    def cancel(self, reason: str) -> None:
        """Mark cancelled (first reason wins) and run the registered callbacks once."""
        with self._lock:
            if self._cancelled.is_set():
                return
            self._reason = reason
            self._cancelled.set()
            callbacks, self._on_cancel = self._on_cancel, []
        for callback in callbacks:
            callback()

    def on_cancel(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if not self._cancelled.is_set():
                self._on_cancel.append(callback)
                return
        callback()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def check(self) -> None:
        """Raise :class:`RequestCancelled` (or :class:`DeadlineExceeded`) if this request should stop."""
        if self._cancelled.is_set():
            if self._reason == "deadline":
                raise DeadlineExceeded("the request's deadline passed")
            raise RequestCancelled(f"request cancelled ({self._reason})")
        if time.monotonic() >= self.deadline:
            self.cancel("deadline")
            raise DeadlineExceeded("the request's deadline passed")


@dataclass(eq=False)
class _Job:
    key: Hashable
    backend: Backend
    tile: np.ndarray  # 3 x H x W float32
    ticket: Ticket
    future: cf.Future[np.ndarray]
    enqueued: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class BatchRecord:
    """One model call: its key and how many tiles (from how many requests) it ran."""

    key: Hashable
    tiles: int
    requests: int


class TileBatcher:
    """Groups tiles of the same model and shape from concurrent requests into model calls.

    ``on_batch(record)`` is called after every model call (metrics, tests).
    """

    def __init__(
        self,
        *,
        max_batch: int,
        max_wait_s: float,
        threads: int = 1,
        on_batch: Callable[[BatchRecord], None] | None = None,
        on_cancelled_tiles: Callable[[int], None] | None = None,
    ) -> None:
        self._max_batch = max_batch
        self._max_wait = max_wait_s
        self._queues: dict[Hashable, deque[_Job]] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._depth = 0
        self._producers = 0  # pipelines that may still submit tiles
        self._blocked = 0  # of those, how many are waiting for results (and so cannot add tiles)
        self._on_batch = on_batch
        self._on_cancelled = on_cancelled_tiles
        self._threads = [
            threading.Thread(target=self._loop, name=f"adassr-batcher-{i}", daemon=True) for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    # -- submitting -----------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Tiles waiting (not yet in a model call)."""
        return self._depth

    def submit(self, key: Hashable, backend: Backend, tile: np.ndarray, ticket: Ticket) -> cf.Future[np.ndarray]:
        """Queue one ``3 x H x W`` tile; the future resolves to its ``3 x sH x sW`` output."""
        return self._submit_all(key, backend, [tile], ticket)[0]

    def _submit_all(self, key: Hashable, backend: Backend, tiles: Sequence[np.ndarray],
                    ticket: Ticket) -> list[cf.Future[np.ndarray]]:
        """Queue ``tiles`` of one request at once. The ticket is checked under the batcher's lock, which
        :meth:`cancel` takes too: a request cancelled meanwhile queues nothing (RequestCancelled)."""
        futures: list[cf.Future[np.ndarray]] = [cf.Future() for _ in tiles]
        with self._cond:
            if self._closed:
                raise BackendError("the server is shutting down; retry on another instance")
            ticket.check()
            queue = self._queues.setdefault(key, deque())
            for tile, future in zip(tiles, futures, strict=True):
                queue.append(_Job(key, backend, tile, ticket, future))
            self._depth += len(tiles)
            self._cond.notify()
        return futures

    def infer_fn(self, key: Hashable, backend: Backend, ticket: Ticket) -> InferFn:
        """An ``InferFn`` that sends each tile of a batch through the batcher and waits for all."""

        def _drop_queued() -> None:
            self.cancel(ticket)

        ticket.on_cancel(_drop_queued)

        def infer(batch: np.ndarray) -> np.ndarray:
            futures = self._submit_all((key, batch.shape[1:]), backend, list(batch), ticket)
            with self._cond:
                self._blocked += 1
                self._cond.notify()
            try:
                return _collect(futures)
            finally:
                with self._cond:
                    self._blocked -= 1

        def _collect(futures: list[cf.Future[np.ndarray]]) -> np.ndarray:
            try:
                return _gather(futures)
            except BaseException:
                # the request ends: its queued tiles never start, and its tiles inside a model call are
                # waited for (at most one call), so that the request lets its model close only once no
                # call runs on it (a model evicted or replaced meanwhile closes at the request's end)
                self.cancel(ticket)
                for future in futures:  # (cf.wait would wait forever on one cancelled outside an executor)
                    with contextlib.suppress(cf.CancelledError):
                        future.exception()
                raise

        def _gather(futures: list[cf.Future[np.ndarray]]) -> np.ndarray:
            outputs: list[np.ndarray] = []
            try:
                for future in futures:
                    remaining = ticket.remaining()
                    if remaining <= 0:
                        ticket.cancel("deadline")
                        ticket.check()
                    outputs.append(future.result(timeout=remaining))
            except cf.TimeoutError:
                ticket.cancel("deadline")
                ticket.check()
                raise
            except cf.CancelledError:
                ticket.check()
                raise RequestCancelled("request cancelled") from None
            return np.stack(outputs)

        return infer

    def producer(self) -> _Producer:
        """Context manager around one request's pipeline: while every open pipeline is waiting for
        results, nobody can add tiles to a batch, so due batches run at once instead of waiting
        ``max_wait``."""
        return _Producer(self)

    def _add_producer(self, delta: int) -> None:
        with self._cond:
            self._producers += delta
            self._cond.notify()

    def cancel(self, ticket: Ticket) -> int:
        """Drop every queued tile of ``ticket``; return how many were dropped."""
        dropped: list[_Job] = []
        with self._cond:
            for key, queue in list(self._queues.items()):
                keep = deque(job for job in queue if job.ticket is not ticket)
                dropped.extend(job for job in queue if job.ticket is ticket)
                if keep:
                    self._queues[key] = keep
                else:
                    del self._queues[key]
            self._depth -= len(dropped)
        for job in dropped:
            job.future.cancel()
        if dropped and self._on_cancelled is not None:
            try:  # called on an inference thread too (after a failed model call): it must not end it
                self._on_cancelled(len(dropped))
            except Exception:  # noqa: BLE001 - logged, the caller goes on
                logger.exception("the cancelled-tiles callback failed")
        return len(dropped)

    # -- running --------------------------------------------------------------------------
    def _take(self) -> list[_Job] | None:
        """Block until a batch is due; None when closed and empty."""
        with self._cond:
            while True:
                if not self._queues:
                    if self._closed:
                        return None
                    self._cond.wait()
                    continue
                now = time.monotonic()
                idle = self._blocked >= self._producers  # no pipeline is preparing tiles
                # Due: a full batch, one whose oldest tile waited max_wait, or any when closing or idle.
                # Of the due keys the one with the oldest tile runs first (a full batch of one key
                # never waits for another key's max_wait).
                due = [(key, queue) for key, queue in self._queues.items()
                       if len(queue) >= self._max_batch or now - queue[0].enqueued >= self._max_wait
                       or self._closed or idle]
                if due:
                    key, queue = min(due, key=lambda kv: kv[1][0].enqueued)
                    jobs = [queue.popleft() for _ in range(min(self._max_batch, len(queue)))]
                    if not queue:
                        del self._queues[key]
                    self._depth -= len(jobs)
                    return jobs
                oldest = min(queue[0].enqueued for queue in self._queues.values())
                self._cond.wait(timeout=self._max_wait - (now - oldest))

    def _loop(self) -> None:
        while (jobs := self._take()) is not None:
            live = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                out = live[0].backend.infer(np.stack([job.tile for job in live]))
                outputs = [out[k] for k in range(len(live))]  # a short batch fails here, not in the loop below
            except Exception as exc:  # noqa: BLE001 - the model call failed: every tile's request gets the error
                for job in live:
                    job.future.set_exception(exc)
                # and those requests fail, so their tiles still queued must not run (before this thread
                # takes the next batch: alone, or failing other requests' batches too)
                for ticket in {id(job.ticket): job.ticket for job in live}.values():
                    self.cancel(ticket)
                continue
            for job, output in zip(live, outputs, strict=True):
                job.future.set_result(output)
            if self._on_batch is not None:
                try:  # a metrics callback must never end this inference thread (requests would hang to 504)
                    self._on_batch(BatchRecord(live[0].key, len(live), len({id(j.ticket) for j in live})))
                except Exception:  # noqa: BLE001 - logged, the thread goes on
                    logger.exception("the batch callback failed")

    def close(self, timeout: float | None = None) -> None:
        """Run what is queued, then stop the inference threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)


class _Producer:
    def __init__(self, batcher: TileBatcher) -> None:
        self._batcher = batcher

    def __enter__(self) -> None:
        self._batcher._add_producer(+1)

    def __exit__(self, *exc: object) -> None:
        self._batcher._add_producer(-1)
