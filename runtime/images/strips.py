"""Rows of an image a strip at a time: the encoders and the reader bound their working memory so.

A whole-image operation in NumPy (a concatenation, a byte-order change, a fancy index) makes a copy of
the image, often in a wider type; done a strip of rows at a time, the copy is the strip's.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
from collections.abc import Callable, Iterator
from typing import Any, Literal, TypeVar

import numpy as np

_T = TypeVar("_T")
_I = TypeVar("_I")

MAX_ENCODER_THREADS = 8
"""The most threads one encoder runs its strips on: more gain little on strips of about a mebibyte."""


def strip_rows(row_bytes: int, budget: int, *, multiple: int = 1) -> int:
    """Rows in a strip of about ``budget`` bytes of ``row_bytes``-byte rows: a multiple of ``multiple``,
    at least ``multiple`` (a row longer than the budget is a strip of its own)."""
    return max(1, budget // max(1, multiple * row_bytes)) * multiple


def row_strips(height: int, row_bytes: int, budget: int, *, multiple: int = 1) -> Iterator[slice]:
    """The strips of :func:`strip_rows` over ``height`` rows, as slices (the last one may run past the end)."""
    rows = strip_rows(row_bytes, budget, multiple=multiple)
    for top in range(0, height, rows):
        yield slice(top, top + rows)


def interleaved(pixels: np.ndarray, alpha: np.ndarray | None, *, byteorder: Literal["<", ">"],
                grey_as_rgb: bool = False) -> np.ndarray:
    """Rows x W x samples, contiguous: the pixels (grey repeated into RGB with ``grey_as_rgb``), then
    the alpha, in ``byteorder`` (``">"`` or ``"<"``; 8-bit samples have none). A view of ``pixels``
    where nothing has to change."""
    if grey_as_rgb and pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    block = pixels if alpha is None else np.concatenate([pixels, alpha[..., None]], axis=2)
    return np.ascontiguousarray(block, dtype=block.dtype.newbyteorder(byteorder))


class StripPool:
    """Runs an encoder's strips on several threads (zlib, libjpeg-turbo through OpenCV and most NumPy
    work release the GIL), or in the caller's thread when there is one strip or one thread.

    ``threads``: the most threads (default: one per usable physical core, or ``ADASSR_THREADS``), at
    most :data:`MAX_ENCODER_THREADS` and the number of strips. On leaving the block, strips not begun
    are dropped and running ones end (after an error, nothing keeps running)."""

    def __init__(self, strips: int, threads: int | None = None) -> None:
        if strips <= 1 or threads == 1:
            self.workers = 1
        else:
            from adassr.runtime.cpu_info import intra_op_threads

            self.workers = max(1, min(strips, MAX_ENCODER_THREADS, threads or intra_op_threads()))
        self._executor = (cf.ThreadPoolExecutor(self.workers, thread_name_prefix="adassr-encode")
                          if self.workers > 1 else None)

    def __enter__(self) -> StripPool:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def submit(self, fn: Callable[..., _T], *args: Any) -> cf.Future[_T]:
        """``fn(*args)`` on a thread of the pool (at once, in this thread, without one)."""
        if self._executor is not None:
            return self._executor.submit(fn, *args)
        future: cf.Future[_T] = cf.Future()
        future.set_result(fn(*args))
        return future

    def ordered(self, fn: Callable[[_I], _T], items: list[_I], *, ahead: int | None = None) -> Iterator[_T]:
        """``fn`` of each item, in order, at most ``ahead`` (default: one more than the threads) computed
        or computing at once, so that the results waiting to be written stay few."""
        ahead = ahead or self.workers + 1
        window: collections.deque[cf.Future[_T]] = collections.deque()
        for item in items:
            window.append(self.submit(fn, item))
            if len(window) >= ahead:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
