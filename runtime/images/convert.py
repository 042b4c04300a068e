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


SAMPLE_PEAKS: tuple[int, ...] = (1023, 4095, 16383, 65535)
"""The top levels of 10-, 12-, 14- and 16-bit samples, which 16-bit files hold (see :func:`used_peak`)."""


def used_peak(a: np.ndarray) -> int:
    """The level a model's 1.0 stands for in ``a``'s pixels: 255 for uint8; for uint16 the smallest of
    :data:`SAMPLE_PEAKS` that holds ``a``'s largest value.

    Scientific, microscope and machine-vision cameras store 10-, 12- or 14-bit samples in 16-bit files
    (a 12-bit image's values stop at 4095) and say so nowhere a reader can rely on. Divided by 65535 such
    an image is 16 times darker than its camera made it, and the model, which learnt photos, served it as
    another picture: the fallback backbone's output of a crop of the canon sample at 10 / 12 / 14 bits was
    5 / 18 / 28 dB from the same crop served at full range (``benchmarks/sample_range.py``). Served at its
    sample range, and brought back to it, it comes out as the full-range photo would (62-85 dB, rounding).
    A 16-bit photo under a quarter of full range everywhere is served stretched the same way.
    """
    dtype = _array(a, "used_peak").dtype.newbyteorder("=")
    if dtype == np.uint8:
        return 255
    if dtype != np.uint16:
        raise ImageError(f"used_peak expects uint8 or uint16 pixels, got {a.dtype}")
    top = int(a.max()) if a.size else 0
    return next(peak for peak in SAMPLE_PEAKS if top <= peak)


def checked_peak(dtype: np.dtype, peak: object) -> int:
    """``peak`` as the level that stands for white in pixels of ``dtype`` (uint8: 255 only; uint16: 1-65535);
    ConfigError for anything else (a bool, a float, a NumPy integer: pass ``int(...)``)."""
    full = 255 if np.dtype(dtype).newbyteorder("=") == np.uint8 else 65535
    if isinstance(peak, bool) or not isinstance(peak, int) or not 0 < peak <= full:
        raise ConfigError(f"peak must be an integer from 1 to {full} for {dtype} pixels (the level that stands for "
                          f"white, e.g. used_peak(input pixels)), got {peak!r}")
    if full == 255 and peak != full:
        raise ConfigError(f"peak applies to 16-bit pixels; 8-bit pixels stand as they are (pass 255 or None), "
                          f"got {peak}")
    return peak


def parse_sample_bits(text: str) -> int | None:
    """``auto`` (any case) -> None (the values decide: :func:`used_peak`), ``9``-``16`` -> that number of bits of a
    16-bit file's samples (its top level ``2 ** bits - 1`` stands for white); ConfigError otherwise."""
    if text.strip().lower() == "auto":
        return None
    bits = int(text) if text.strip().isascii() and text.strip().isdigit() else 0
    if not 9 <= bits <= 16:
        raise ConfigError(f"sample bits must be auto or a number of bits from 9 to 16 (12 for a 12-bit camera's "
                          f"16-bit files, 16 for a dark 16-bit photo), got {text!r}")
    return bits


def to_float32(a: np.ndarray, *, peak: int | None = None) -> np.ndarray:
    """uint8 or uint16 -> float32, divided by ``peak`` (default 255 or 65535, the container's range; the
    model's input takes :func:`used_peak`); a new array."""
    full = _MAX.get(_array(a, "to_float32").dtype.newbyteorder("="))  # a big-endian uint16 (from a file) is uint16 too
    if full is None:
        raise ImageError(f"to_float32 expects uint8 or uint16 pixels, got {a.dtype}")
    if peak is not None and (isinstance(peak, bool) or not isinstance(peak, int) or not 0 < peak <= full):
        raise ConfigError(f"peak must be an integer in 1-{full} for {a.dtype} pixels, got {peak!r}")
    return a.astype(np.float32) / np.float32(full if peak is None else peak)


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


def uint16_to_uint8(a: np.ndarray, peak: int = 65535) -> np.ndarray:
    """Round uint16 to the nearest uint8 level, ``peak`` standing for 255: round(v * 255 / peak), exact
    (at 65535: round(v / 257)); values above ``peak`` become 255. ``peak`` (1-65535) is a 16-bit file's
    sample range (:func:`used_peak`: 4095 for a 12-bit camera's file, whose values at 65535 would come out
    at 16 of 255, nearly black)."""
    if isinstance(peak, bool) or not isinstance(peak, int) or not 0 < peak <= 65535:
        raise ConfigError(f"peak must be an integer in 1-65535, got {peak!r}")
    if peak == 65535:
        return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
    levels = (a.astype(np.uint32) * 510 + peak) // (2 * peak)  # floor(v * 255 / peak + 1/2): halves up
    return np.minimum(levels, 255).astype(np.uint8)
