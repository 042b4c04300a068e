"""A baseline JPEG encoder that writes a large array in horizontal strips.

Pillow copies an RGB array into its own image (4 bytes a pixel) before it encodes, and OpenCV wants
BGR (another copy of the whole array), so writing a large JPEG cost 1.3 x the output array again.
Here libjpeg-turbo (through OpenCV) encodes a strip of rows at a time, and the strips' scans are joined
into one file: the file declares a restart interval of one row of MCUs (the 8 x 8 or, with 4:2:0
chroma, 16 x 16 pixel blocks), so the entropy coder starts afresh at every row of blocks and a strip
that begins at such a row encodes exactly as it would inside the whole image. Strips are a multiple
of 8 rows of blocks, so each strip's own restart markers (numbered 0 to 7 in turn) are the ones the
whole image has there, and the marker between two strips is always RST7. Besides the array, the
encoder holds a strip's BGR copy and its encoded bytes per thread (the strips are encoded on one
thread per core at once, up to 8, and written in order; about 2 MiB each; a strip has at least 64
rows at 4:4:4 or grey and 128 at 4:2:0, so rows over about 5,000 RGB pixels make it larger: 400 x
65,500 RGB noise, the worst case, added 56-69 MB at quality 95 in reviews' measurements, with the
content).

The result is the file that OpenCV writes for the whole image with the same quality, chroma
subsampling and restart interval (tests check this byte for byte), plus the photo's EXIF in an APP1
segment and the ICC profile in APP2 segments. The restart markers cost 2 bytes a row of blocks, and
the restarts a few bytes more.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

from adassr.runtime.errors import ImageError
from adassr.runtime.images.exif import EXIF_PREFIX, MAX_JPEG_EXIF_BYTES
from adassr.runtime.images.strips import StripPool, row_strips

_STRIP_BYTES = 2 << 20  # raw bytes encoded at a time (at least one group of 8 rows of blocks)
_BLOCK_ROWS_PER_STRIP_UNIT = 8  # restart markers cycle through RST0..RST7
_ICC_MARKER = b"ICC_PROFILE\0"
_ICC_CHUNK = 65_535 - 2 - len(_ICC_MARKER) - 2  # profile bytes one APP2 segment holds
MAX_ICC_BYTES = 255 * _ICC_CHUNK
"""Largest profile JPEG's APP2 segments hold (255 numbered segments)."""


def subsampling_for(quality: int) -> str:
    """Chroma subsampling at ``quality``: 4:4:4 from 90 up (fine colour edges survive), 4:2:0 below."""
    return "4:4:4" if quality >= 90 else "4:2:0"


def write_jpeg(out: BinaryIO, pixels: np.ndarray, *, quality: int, icc_profile: bytes | None = None,
               exif: bytes | None = None, threads: int | None = None) -> None:
    """Write H x W x C (C in {1, 3}) uint8 RGB or grey ``pixels`` to ``out`` as a baseline JPEG.

    ``quality`` is libjpeg's 1-100 scale (:func:`subsampling_for` picks the chroma subsampling).
    ``exif`` (a TIFF-structured EXIF payload of at most
    :data:`~adassr.runtime.images.exif.MAX_JPEG_EXIF_BYTES`) goes in an APP1 segment after JFIF's APP0.
    ``threads`` encode strips at once (default: one per usable core; see
    :class:`~adassr.runtime.images.strips.StripPool`); the bytes do not depend on it. The caller
    checks shapes, dtype and size (:func:`adassr.runtime.images.write.write_image` does).
    ImageError when OpenCV refuses to encode; OSError from ``out`` passes through.
    """
    h, w, c = pixels.shape
    block = 16 if c == 3 and subsampling_for(quality) == "4:2:0" else 8
    params = _params(quality, c, blocks_per_row=-(-w // block))
    strips = list(row_strips(h, w * c, _STRIP_BYTES, multiple=block * _BLOCK_ROWS_PER_STRIP_UNIT))
    with StripPool(len(strips), threads) as pool:
        _write_strips(out, pool.ordered(lambda rows: _split(_encode_strip(pixels[rows], params)), strips), h,
                      icc_profile, exif)


def _write_strips(out: BinaryIO, encoded: Iterator[tuple[bytes, memoryview]], height: int,
                  icc_profile: bytes | None, exif: bytes | None = None) -> None:
    """The file from each strip's header and scan, in order (see the module docstring)."""
    first_header: bytes | None = None
    for header, scan in encoded:
        if first_header is None:
            first_header = header
            out.write(_whole_image_header(header, height, icc_profile, exif))
        else:
            if _without_height(header) != _without_height(first_header):
                raise ImageError("OpenCV encoded the JPEG strips with different tables; write .png instead, "
                                 "and report the OpenCV version (python -c 'import cv2; print(cv2.__version__)')")
            out.write(b"\xff\xd7")  # the restart marker between the strips (see the module docstring)
        out.write(scan)
    out.write(b"\xff\xd9")


def _params(quality: int, channels: int, *, blocks_per_row: int) -> list[int]:
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_RST_INTERVAL, blocks_per_row,
              cv2.IMWRITE_JPEG_OPTIMIZE, 0, cv2.IMWRITE_JPEG_PROGRESSIVE, 0]
    if channels == 3:
        factor = (cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444 if subsampling_for(quality) == "4:4:4"
                  else cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420)
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, factor]
    return params


def _encode_strip(strip: np.ndarray, params: list[int]) -> memoryview:
    import cv2

    arr = strip[..., 0] if strip.shape[2] == 1 else np.ascontiguousarray(strip[..., ::-1])
    try:
        ok, buf = cv2.imencode(".jpg", arr, params)
    except cv2.error as e:
        raise ImageError(f"OpenCV could not encode JPEG ({e})") from e
    if not ok:
        raise ImageError("OpenCV could not encode JPEG")
    return buf.data.cast("B")  # the encoder's buffer, without a bytes copy


def _segments(data: bytes | memoryview) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each segment from after SOI through SOS."""
    if bytes(data[:2]) != b"\xff\xd8":
        raise ImageError("OpenCV's JPEG does not start with SOI")
    found = []
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ImageError(f"OpenCV's JPEG has no marker at byte {pos}")
        marker = data[pos + 1]
        (length,) = struct.unpack(">H", bytes(data[pos + 2:pos + 4]))
        found.append((marker, pos, pos + 2 + length))
        pos += 2 + length
        if marker == 0xDA:  # SOS: the entropy-coded data follows
            return found
    raise ImageError("OpenCV's JPEG has no SOS segment")


def _split(data: memoryview) -> tuple[bytes, memoryview]:
    """(SOI through SOS, the entropy-coded data without EOI: a view, not a copy) of one encoded strip."""
    end_of_header = _segments(data)[-1][2]
    if bytes(data[-2:]) != b"\xff\xd9":
        raise ImageError("OpenCV's JPEG does not end with EOI")
    return bytes(data[:end_of_header]), data[end_of_header:-2]


def _sof(header: bytes) -> tuple[int, int]:
    for marker, start, end in _segments(header):
        if marker == 0xC0:  # SOF0, baseline
            return start, end
    raise ImageError("OpenCV's JPEG has no baseline SOF0 segment")


def _without_height(header: bytes) -> bytes:
    start, _ = _sof(header)
    return header[:start + 5] + header[start + 7:]


def _whole_image_header(header: bytes, height: int, icc_profile: bytes | None, exif: bytes | None = None) -> bytes:
    """The first strip's header with the whole image's height, and the EXIF (APP1) and the ICC profile
    (APP2) after APP0."""
    start, _ = _sof(header)  # FF C0, length (2), precision (1), height (2), width (2), ...
    header = header[:start + 5] + struct.pack(">H", height) + header[start + 7:]
    if not icc_profile and not exif:
        return header
    segments = _segments(header)
    after = segments[0][2] if segments[0][0] == 0xE0 else 2  # after JFIF's APP0, else after SOI
    added = (exif_segment(exif) if exif else b"") + (icc_segments(icc_profile) if icc_profile else b"")
    return header[:after] + added + header[after:]


def exif_segment(exif: bytes) -> bytes:
    """``exif`` (a TIFF-structured payload) as the APP1 segment that carries it in a JPEG."""
    if not 1 <= len(exif) <= MAX_JPEG_EXIF_BYTES:
        raise ImageError(f"a JPEG holds EXIF blocks of 1 to {MAX_JPEG_EXIF_BYTES:,} bytes, got {len(exif):,}")
    return b"\xff\xe1" + struct.pack(">H", 2 + len(EXIF_PREFIX) + len(exif)) + EXIF_PREFIX + exif


def icc_segments(icc_profile: bytes) -> bytes:
    """``icc_profile`` as the numbered APP2 segments that carry it in a JPEG (ICC.1 Annex B.4)."""
    chunks = [icc_profile[i:i + _ICC_CHUNK] for i in range(0, len(icc_profile), _ICC_CHUNK)]
    if not 1 <= len(chunks) <= 255:
        raise ImageError(f"a JPEG holds ICC profiles of 1 to {MAX_ICC_BYTES:,} bytes, got {len(icc_profile):,}")
    return b"".join(
        b"\xff\xe2" + struct.pack(">H", 2 + len(_ICC_MARKER) + 2 + len(chunk)) + _ICC_MARKER
        + bytes([n, len(chunks)]) + chunk
        for n, chunk in enumerate(chunks, start=1)
    )
