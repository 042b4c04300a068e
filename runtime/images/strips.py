"""Rows of an image a strip at a time: the encoders and the reader bound their working memory so.

A whole-image operation in NumPy (a concatenation, a byte-order change, a fancy index) makes a copy of
the image, often in a wider type; done a strip of rows at a time, the copy is the strip's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np


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
