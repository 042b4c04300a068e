"""Conversions between integer pixels and float32 in [0, 1]."""

from __future__ import annotations

import numpy as np

from adassr.runtime.errors import ConfigError, ImageError
from adassr.runtime.images.float_range import check_float_range

_MAX = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}


def _array(a: object, what: str) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise ImageError(f"{what} expects a numpy array, got {type(a).__module__}.{type(a).__qualname__} "
                         "(a torch tensor: .numpy() it; a list: np.asarray it with its dtype)")
    return a


def to_float32(a: np.ndarray) -> np.ndarray:
    """uint8 or uint16 -> float32 in [0, 1] (divided by 255 or 65535); a new array."""
    peak = _MAX.get(_array(a, "to_float32").dtype.newbyteorder("="))  # a big-endian uint16 (from a file) is uint16 too
    if peak is None:
        raise ImageError(f"to_float32 expects uint8 or uint16 pixels, got {a.dtype}")
    return a.astype(np.float32) / np.float32(peak)


def from_float32(a: np.ndarray, bit_depth: int) -> np.ndarray:
    """Float in [0, 1] -> uint8 (bit_depth 8) or uint16 (16): clipped, rounded to nearest.

    A model's overshoot is clipped; values beyond [-0.5, 1.5] (0-255 levels stored as float, say, which
    became white), NaN and infinities are errors (:func:`~adassr.runtime.images.float_range.check_float_range`).
    """
    if bit_depth not in (8, 16):
        raise ConfigError(f"bit_depth must be 8 or 16, got {bit_depth!r}")
    if not np.issubdtype(_array(a, "from_float32").dtype, np.floating):
        raise ImageError(f"from_float32 expects a floating-point array, got {a.dtype}")
    work = a.astype(np.float32) if a.dtype.itemsize < 4 else a
    if work.size:
        check_float_range(float(np.min(work)), float(np.max(work)), "from_float32's input")
    peak = 255 if bit_depth == 8 else 65535
    scaled: np.ndarray = np.rint(np.clip(work, 0.0, 1.0) * peak)
    return scaled.astype(np.uint8 if bit_depth == 8 else np.uint16)


def uint16_to_uint8(a: np.ndarray) -> np.ndarray:
    """Round uint16 to the nearest uint8 level: round(v * 255 / 65535) = round(v / 257), exact."""
    return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
