"""A TIFF encoder that streams the rows of a NumPy array into a file.

Pillow copies an 8-bit RGB array into its own image (4 bytes a pixel) and OpenCV a 16-bit one into
BGR order, and both return the whole file in memory, so writing a large TIFF cost 2 to 3 x the
output array again. This encoder compresses a strip of rows at a time (about 1 MiB of the array) and
writes each as it comes; the image file directory (IFD), which lists where the strips are, goes
after them, and the header's pointer to it is written last (the output must be seekable: a file or
a BytesIO). Besides the array, it holds one strip, its differenced copy and its compressed bytes per
thread (strips are compressed on one thread per core at once, up to 8, and written in order).

Layout: little-endian baseline TIFF 6.0 (BigTIFF, the same with 8-byte offsets, when the array is
over 3.5 GiB, so that the offsets cannot overflow), one plane of interleaved samples, grey
(BlackIsZero) or RGB with an optional unassociated alpha (ExtraSamples = 2), 8 or 16 bits, Adobe
Deflate compression (zlib) with the horizontal-differencing predictor (libtiff, Pillow and OpenCV
read it; at zlib level 1 an 8-bit photograph comes out about 40 % smaller than Pillow's Deflate TIFF
without it), the ICC profile in tag 34675, and the photo's EXIF (:mod:`adassr.runtime.images.exif`: its
description tags in IFD0, its Exif and GPS directories after the strips; not in a BigTIFF).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from typing import BinaryIO

import numpy as np

from adassr.runtime.images.exif import tiff_exif_blob
from adassr.runtime.images.strips import StripPool, interleaved, row_strips, strip_rows

_STRIP_BYTES = 1 << 20  # raw bytes compressed at a time (at least one row)
_BIG_OVER = 7 << 29  # raw bytes (3.5 GiB) over which the file is a BigTIFF
_SHORT, _LONG, _UNDEFINED, _LONG8 = 3, 4, 7, 16
_FORMAT = {_SHORT: "H", _LONG: "I", _UNDEFINED: "B", _LONG8: "Q"}


def is_bigtiff(height: int, width: int, samples: int, itemsize: int) -> bool:
    """Whether :func:`write_tiff` writes an image of this size as a BigTIFF (8-byte offsets)."""
    return height * width * samples * itemsize > _BIG_OVER


def write_tiff(
    out: BinaryIO,
    pixels: np.ndarray,
    *,
    alpha: np.ndarray | None = None,
    icc_profile: bytes | None = None,
    exif: bytes | None = None,
    level: int = 6,
    grey_as_rgb: bool = False,
    threads: int | None = None,
) -> None:
    """Write H x W x C (C in {1, 3}) uint8 or uint16 ``pixels`` (and an H x W ``alpha`` of the same
    dtype) to the seekable ``out`` as a Deflate-compressed TIFF at zlib ``level``. ``exif`` (a payload of
    :func:`adassr.runtime.images.exif.carried_exif`) is left out of a BigTIFF. ``grey_as_rgb``
    stores grey pixels as RGB (each strip's grey repeated, not the whole image's). ``threads``
    compress strips at once (default: one per usable core; see
    :class:`~adassr.runtime.images.strips.StripPool`); the bytes do not depend on it.

    The caller checks shapes and dtypes (:func:`adassr.runtime.images.write.write_image` does).
    """
    h, w, c = pixels.shape
    c = 3 if grey_as_rgb else c
    samples = c + (alpha is not None)
    bits = pixels.dtype.itemsize * 8
    row_bytes = w * samples * pixels.dtype.itemsize
    big = is_bigtiff(h, w, samples, pixels.dtype.itemsize)
    offset_type = _LONG8 if big else _LONG
    rows_per_strip = strip_rows(row_bytes, _STRIP_BYTES)
    start = out.tell()
    out.write(b"II+\0" + struct.pack("<HHQ", 8, 0, 0) if big else b"II*\0" + struct.pack("<I", 0))
    offsets: list[int] = []
    counts: list[int] = []

    def compressed(rows: slice) -> bytes:
        strip = interleaved(pixels[rows], None if alpha is None else alpha[rows], byteorder="<",
                            grey_as_rgb=grey_as_rgb)  # the file is little-endian
        return zlib.compress(_differenced(strip).tobytes(), level)

    strips = list(row_strips(h, row_bytes, _STRIP_BYTES))
    with StripPool(len(strips), threads) as pool:
        for data in pool.ordered(compressed, strips):
            offsets.append(out.tell() - start)
            counts.append(len(data))
            out.write(data)
    entries: list[tuple[int, int, list[int] | bytes]] = [
        (256, _LONG, [w]),
        (257, _LONG, [h]),
        (258, _SHORT, [bits] * samples),
        (259, _SHORT, [8]),  # Adobe Deflate
        (262, _SHORT, [1 if c == 1 else 2]),  # BlackIsZero grey, or RGB
        (273, offset_type, offsets),
        (277, _SHORT, [samples]),
        (278, _LONG, [rows_per_strip]),
        (279, offset_type, counts),
        (284, _SHORT, [1]),  # interleaved samples
        (317, _SHORT, [2]),  # horizontal differencing
    ]
    if alpha is not None:
        entries.append((338, _SHORT, [2]))  # the extra sample is unassociated alpha
    entries.append((339, _SHORT, [1] * samples))  # unsigned integers
    if icc_profile:
        entries.append((34675, _UNDEFINED, icc_profile))
    packed: list[tuple[int, int, int, bytes]] = []
    if exif and not big:
        if (out.tell() - start) % 2:
            out.write(b"\0")  # a directory starts on a word boundary
        blob, packed = tiff_exif_blob(exif, out.tell() - start)
        out.write(blob)
    ifd_at = _write_ifd(out, start, entries, big, packed)
    end = out.tell()
    out.seek(start + (8 if big else 4))
    out.write(struct.pack("<Q" if big else "<I", ifd_at))
    out.seek(end)


def _differenced(strip: np.ndarray) -> np.ndarray:
    """TIFF predictor 2: each sample minus the same sample of the pixel to its left, modulo 2**bits."""
    out = strip.copy()
    np.subtract(strip[:, 1:], strip[:, :-1], out=out[:, 1:])
    return out


def _write_ifd(out: BinaryIO, start: int, entries: list[tuple[int, int, list[int] | bytes]], big: bool,
               prepacked: Sequence[tuple[int, int, int, bytes]] = ()) -> int:
    """Write the values that do not fit in their entries, then the IFD (its entries sorted by tag, with
    the ``prepacked`` ``(tag, type, count, value field)`` ones, whose values are already written); return
    the IFD's offset."""
    inline = 8 if big else 4
    packed = list(prepacked)
    for tag, kind, values in entries:
        raw = bytes(values) if isinstance(values, bytes) else struct.pack(f"<{len(values)}{_FORMAT[kind]}", *values)
        if len(raw) > inline:
            if (out.tell() - start) % 2:
                out.write(b"\0")  # values start on a word boundary
            at = out.tell() - start
            out.write(raw)
            raw = struct.pack("<Q" if big else "<I", at)
        packed.append((tag, kind, len(values), raw.ljust(inline, b"\0")))
    packed.sort(key=lambda entry: entry[0])  # TIFF wants the entries in ascending tag order
    if (out.tell() - start) % 2:
        out.write(b"\0")
    ifd_at = out.tell() - start
    if big:
        out.write(struct.pack("<Q", len(packed)))
        for tag, kind, count, raw in packed:
            out.write(struct.pack("<HHQ", tag, kind, count) + raw)
        out.write(struct.pack("<Q", 0))
    else:
        out.write(struct.pack("<H", len(packed)))
        for tag, kind, count, raw in packed:
            out.write(struct.pack("<HHI", tag, kind, count) + raw)
        out.write(struct.pack("<I", 0))
    return ifd_at
