"""JPEG decoding that notices damaged image data.

libjpeg, under Pillow and OpenCV alike, only *warns* when a JPEG's entropy-coded data is damaged
(bytes lost in a transfer, a camera's write cut short but the end-of-image marker still written):
it fills the rest of the picture with grey or decodes garbage, and neither library passes the
warning on. A fleet's cameras produce such files (flaky links, full cards), and upscaling them, or
worse adapting a camera's model to them, silently gives wrong results.

Here libjpeg-turbo decodes through TurboJPEG (``simplejpeg``) with "stop on warning": a warning that
means damaged data (:data:`DAMAGE_SIGNS`) raises :class:`ImageError`; the pixels are the ones Pillow
(the same libjpeg-turbo, the same default DCT and upsampling) would give, in half its time and without
its 4-byte-a-pixel copy. Warnings about metadata rather than pixels (extraneous bytes between header
segments or before the end marker, as some encoders write; an unknown JFIF revision or Adobe transform;
a bad ICC chunk) are not damage: extraneous bytes between header segments are dropped and the data
decoded again, so its entropy-coded data is still checked; for the others the caller decodes the file
as before (Pillow), unchecked after that first warning, since TurboJPEG stops at the first (before the
end marker, the whole picture has been checked by then).

Lost or cut data is found (a lost stretch of a scan, a lost restart interval, a write cut short);
a flipped bit inside the data mostly garbles a block or a stripe without any sign a decoder can see.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import simplejpeg

from adassr.runtime.errors import ImageError

DAMAGE_SIGNS = (
    "premature end of data segment",  # the scan's data ends early: the rest is filled (grey)
    "bad huffman code",
    "bad arithmetic code",
    "instead of rst",  # a restart marker lost or out of order: data between them lost
    "premature end of jpeg file",  # truncated
    "inconsistent progression sequence",  # a progressive scan lost or damaged
)
"""Lower-case parts of libjpeg-turbo's warnings (``jerror.h``, JWRN_*) that mean the pixels are wrong (and
"extraneous bytes" before a restart marker, below)."""

_COLOURSPACE = {"L": "GRAY", "RGB": "RGB", "CMYK": "CMYK"}
"""Pillow's mode of a JPEG -> TurboJPEG's output colour space of the same pixels."""

_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RST0-7, SOI: markers without a length
_SOS = 0xDA


_BEFORE_RESTART = re.compile(r"extraneous bytes before marker 0xd[0-7]\b")
"""Data left over at a restart marker: an interval holds more than its blocks, so another's data ran into it
(the markers between them lost). Before other markers extra bytes are padding some encoders write."""


def is_damage(message: str) -> bool:
    """Whether a libjpeg-turbo warning means the decoded pixels would be wrong."""
    lowered = message.lower()
    return any(sign in lowered for sign in DAMAGE_SIGNS) or _BEFORE_RESTART.search(lowered) is not None


def decode_jpeg_checked(p: Path, data: bytes, mode: str, size: tuple[int, int]) -> np.ndarray | None:
    """The first frame of JPEG (or MPO) bytes as H x W x C uint8 pixels (C = 1 grey, 3 RGB; CMYK is only
    checked and gives None), or None when the caller should decode with Pillow (a mode TurboJPEG does not
    give as Pillow does, a warning that is not damage, an error Pillow reports in its own words).

    ``mode`` and ``size`` are Pillow's from the header. Raises :class:`ImageError` when the decoder warns
    that the image data is damaged (:data:`DAMAGE_SIGNS`).
    """
    colourspace = _COLOURSPACE.get(mode)
    if colourspace is None:
        return None
    attempt = data
    for _ in range(2):
        try:
            pixels: np.ndarray = simplejpeg.decode_jpeg(attempt, colorspace=colourspace, strict=True)
        except ValueError as e:
            message = str(e)
            if is_damage(message):
                raise ImageError(f"{p}: image data is truncated or damaged (JPEG decoder: {message}); part of the "
                                 "picture would come out grey or garbled; re-copy the file from the camera or "
                                 "re-export it") from e
            if "extraneous bytes" in message.lower() and attempt is data:
                cleaned = without_header_gaps(data)
                if cleaned is not None:
                    attempt = cleaned
                    continue
            return None
        if colourspace == "CMYK" or pixels.shape[:2] != (size[1], size[0]):
            return None
        return pixels
    return None


def without_header_gaps(data: bytes) -> bytes | None:
    """The JPEG with bytes that are not part of any marker segment before its first scan removed (libjpeg
    skips them with an "extraneous bytes" warning), or None when there are none or the header cannot be
    followed. The scans and everything after the first SOS segment are kept as they are."""
    if not data.startswith(b"\xff\xd8"):
        return None
    out = bytearray(data[:2])
    i, n, dropped = 2, len(data), False
    while i < n:
        if data[i] != 0xFF:
            gap_end = data.find(b"\xff", i)
            if gap_end < 0:
                return None
            i, dropped = gap_end, True
            continue
        while i + 1 < n and data[i + 1] == 0xFF:  # fill bytes before a marker are allowed
            i += 1
        if i + 1 >= n:
            return None
        marker = data[i + 1]
        if marker == 0x00:  # a stuffed zero cannot start a segment: part of the gap
            i, dropped = i + 2, True
            continue
        if marker in _STANDALONE:
            out += data[i:i + 2]
            i += 2
            continue
        if i + 4 > n:
            return None
        end = i + 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if end > n:
            return None
        if marker == _SOS:
            out += data[i:]
            return bytes(out) if dropped else None
        out += data[i:end]
        i = end
    return None
