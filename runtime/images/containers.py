"""Small, specification-level helpers on PNG and TIFF bytes.

Pillow decodes 16-bit colour to 8 bits, so those images go through OpenCV; OpenCV's TIFF decoder
applies the TIFF orientation tag itself while its PNG decoder ignores eXIf. To keep one
orientation code path, the bytes handed to OpenCV carry no orientation (PNG eXIf chunks dropped,
TIFF tag 274 set to 1) and :func:`adassr.runtime.images.orientation.apply_orientation` does the turning.
PNG and TIFF files are written by :mod:`adassr.runtime.images.png_writer` and
:mod:`adassr.runtime.images.tiff_writer`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class PngHeader:
    width: int
    height: int
    bit_depth: int
    colour_type: int  # 0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA


def read_png_header(head: bytes) -> PngHeader | None:
    """Parse the IHDR chunk from the first 26+ bytes of a PNG; None if they are not a PNG."""
    if len(head) < 26 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return PngHeader(width, height, head[24], head[25])


def png_without_exif(data: bytes) -> tuple[bytes, bytes | None]:
    """(the PNG with its eXIf chunks removed, the first eXIf payload or None).

    Other chunks stay byte-identical; the chunk is found wherever it is (before or after IDAT).
    """
    if not data.startswith(PNG_SIGNATURE):
        return data, None
    parts = [PNG_SIGNATURE]
    payload: bytes | None = None
    pos = len(PNG_SIGNATURE)
    for kind, start, end in _png_chunks(data):
        if kind != b"eXIf":
            parts.append(data[start:end])
        elif payload is None:
            payload = data[start + 8 : end - 4]
        pos = end
    parts.append(data[pos:])  # a malformed or truncated tail: left for the decoder to judge
    return b"".join(parts), payload


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """``(type, start, end)`` of each whole chunk of a PNG, in order, up to a malformed or truncated one."""
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        end = pos + 12 + length
        if end > len(data):
            return
        yield data[pos + 4 : pos + 8], pos, end
        pos = end


def png_chunk_counts(data: bytes) -> dict[bytes, int]:
    """How many whole chunks of each type a PNG holds (a malformed or truncated tail ends the walk)."""
    counts: dict[bytes, int] = {}
    if data.startswith(PNG_SIGNATURE):
        for kind, _, _ in _png_chunks(data):
            counts[kind] = counts.get(kind, 0) + 1
    return counts


_INTEGER_FORMATS = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 16: "Q", 17: "q"}
"""TIFF integer field types (BYTE, SHORT, LONG, SBYTE, SSHORT, SLONG and BigTIFF's LONG8, SLONG8) and their
struct formats: libtiff and Pillow take the orientation in the signed and wider ones too, not only in SHORT.
(Pillow reads a BYTE orientation as bytes, which the reader takes for 1; set to 1 here as well, such a tag
turns nothing, consistently.)"""


def tiff_without_orientation(data: bytes) -> bytes:
    """The TIFF (classic or BigTIFF) with tag 274 of the first IFD set to 1 (as stored)."""
    if data[:2] == b"II":
        order = "<"
    elif data[:2] == b"MM":
        order = ">"
    else:
        return data
    if len(data) < 16:
        return data
    (magic,) = struct.unpack(order + "H", data[2:4])
    if magic == 42:
        (ifd,) = struct.unpack(order + "I", data[4:8])
        count_fmt, count_size, entry_size, value_at = "H", 2, 12, 8
    elif magic == 43:
        (ifd,) = struct.unpack(order + "Q", data[8:16])
        count_fmt, count_size, entry_size, value_at = "Q", 8, 20, 12
    else:
        return data
    if ifd + count_size > len(data):
        return data
    (count,) = struct.unpack(order + count_fmt, data[ifd : ifd + count_size])
    for i in range(count):
        pos = ifd + count_size + i * entry_size
        if pos + entry_size > len(data):
            return data
        tag, typ = struct.unpack(order + "HH", data[pos : pos + 4])
        if tag == 274 and typ in _INTEGER_FORMATS and struct.calcsize(_INTEGER_FORMATS[typ]) <= entry_size - value_at:
            value = struct.pack(order + _INTEGER_FORMATS[typ], 1)  # inline: a count of one fits the entry
            at = pos + value_at
            if data[at : at + len(value)] == value:
                return data  # stored as 1 already
            return b"".join((data[:at], value, data[at + len(value) :]))  # one copy of the file, not two
    return data
