"""Lossy WebP of an opaque image through OpenCV's libwebp, with the ICC profile in the RIFF container.

Pillow copies an RGB array into its own image (4 bytes a pixel) and hands it to libwebp's animation
encoder, which keeps a canvas of its own: encoding took about 4 x the array again. OpenCV's encoder
takes a BGR copy (the array once more) and libwebp's simple API converts it straight to YUV: about
2.1 x. libwebp encodes all of an image at once, so this is the least here (the array and its copy).
At the same quality both write the same VP8 bitstream (libwebp's defaults; the tests compare the
files). OpenCV writes no ICC profile or EXIF, so the file is rewrapped as Pillow wraps it: a VP8X chunk
that flags them, then ICCP, then the VP8 chunk, then EXIF (the order of the WebP container specification).

Images with alpha stay with Pillow: OpenCV's encoder cleans the colours under transparent pixels
(libwebp's default), and write_image keeps them (``exact``).
"""

from __future__ import annotations

import struct
from typing import BinaryIO

import numpy as np

from adassr.runtime.errors import ImageError

_ICC_FLAG, _EXIF_FLAG = 0x20, 0x08


def write_webp(out: BinaryIO, pixels: np.ndarray, *, quality: int, icc_profile: bytes | None = None,
               exif: bytes | None = None) -> None:
    """Write H x W x 3 uint8 RGB ``pixels`` to ``out`` as a lossy WebP at ``quality`` (1-100), with the
    ICC profile and ``exif`` (a TIFF-structured EXIF payload) when given.

    The caller checks shapes, dtype and size (:func:`adassr.runtime.images.write.write_image` does);
    ImageError when OpenCV refuses to encode or writes something other than a simple lossy WebP.
    """
    import cv2

    h, w = pixels.shape[:2]
    try:
        ok, buf = cv2.imencode(".webp", np.ascontiguousarray(pixels[..., ::-1]), [cv2.IMWRITE_WEBP_QUALITY, quality])
    except cv2.error as e:
        raise ImageError(f"OpenCV could not encode WebP ({e})") from e
    if not ok:
        raise ImageError("OpenCV could not encode WebP")
    data = buf.data.cast("B")  # the encoder's buffer, without a bytes copy
    if not icc_profile and not exif:
        out.write(data)
        return
    if bytes(data[:4]) != b"RIFF" or bytes(data[8:16]) != b"WEBPVP8 ":
        raise ImageError(f"OpenCV's WebP is not a simple lossy file (it starts {bytes(data[:16])!r})")
    vp8 = data[12:]  # the VP8 chunk: its header, bitstream and padding
    flags = (_ICC_FLAG if icc_profile else 0) | (_EXIF_FLAG if exif else 0)
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([flags, 0, 0, 0]) \
        + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
    iccp = _chunk(b"ICCP", icc_profile) if icc_profile else b""
    exif_chunk = _chunk(b"EXIF", exif) if exif else b""
    riff_size = 4 + len(vp8x) + len(iccp) + len(vp8) + len(exif_chunk)
    if riff_size > 0xFFFFFFFF - 8:
        raise ImageError("the WebP file would pass 4 GiB, the limit of its RIFF container")
    out.write(b"RIFF" + struct.pack("<I", riff_size) + b"WEBP" + vp8x + iccp)
    out.write(vp8)
    out.write(exif_chunk)


def _chunk(kind: bytes, body: bytes) -> bytes:
    """A RIFF chunk: its four-letter kind, size, body and the padding to an even length."""
    return kind + struct.pack("<I", len(body)) + body + b"\0" * (len(body) % 2)
