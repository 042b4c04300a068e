"""JPEG decoding that notices damaged image data.

libjpeg, under Pillow and OpenCV alike, only *warns* when a JPEG's entropy-coded data is damaged
(bytes lost in a transfer, a camera's write cut short but the end-of-image marker still written):
it fills the rest of the picture with grey or decodes garbage, and neither library passes the
warning on. A fleet's cameras produce such files (flaky links, full cards), and upscaling them, or
worse adapting a camera's model to them, silently gives wrong results.

Here libjpeg-turbo decodes through TurboJPEG (``simplejpeg``) with "stop on warning": a warning that
means damaged data raises :class:`ImageError`; the pixels are the ones Pillow (the same libjpeg-turbo,
the same default DCT and upsampling) would give, faster and without its 4-byte-a-pixel copy. Which
warnings are damage:

- :data:`DAMAGE_SIGNS` (data ends early, a bad Huffman or arithmetic code, a restart marker missing,
  the file ends, a progression out of order), wherever they come;
- "extraneous bytes" once the first scan has begun: bytes left at a restart marker or before the next
  scan's tables are another stretch's data (:func:`extraneous_is_damage`); before the end marker, more
  than :data:`MAX_END_PADDING` bytes that are not one repeated value (a few are an encoder's padding).

Stray bytes between header segments (before the first scan, as some encoders write) are dropped and the
data decoded again, so its scans are still checked. Other warnings (an unknown JFIF revision or Adobe
transform, a bad ICC chunk, end padding) are not damage: the caller decodes the file as before (Pillow),
unchecked after that first warning, since TurboJPEG stops at the first (at end padding the whole picture
has been checked by then).

What is found, measured by ``benchmarks/jpeg_damage.py``: a scan cut short with its end marker kept,
nearly every stretch of bytes lost from a baseline scan, most from a progressive one. Not found: a
flipped bit inside the data (it mostly decodes to a wrong but valid code), a loss whose garbage happens
to use up the data left exactly, and damage in arithmetic-coded JPEGs (rare in cameras: libjpeg pads their
data with zeros without a word).

A progressive JPEG whose scans stop before every coefficient of every component has reached full
precision (:func:`progressive_shortfall`) decodes without a word from libjpeg, to a blurrier or coarser
picture: it was cut at a scan boundary with its end marker kept, or written so on purpose (the standard
allows it, and ``jpegtran -scans`` can), which its headers cannot tell apart; the reader reads it with a
note (:mod:`adassr.runtime.images.read`), not a refusal.
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
"""Lower-case parts of libjpeg-turbo's warnings (``jerror.h``, JWRN_*) that mean the pixels are wrong, whatever
comes with them. "Extraneous bytes" warnings are judged by where they are (:func:`extraneous_is_damage`)."""

MAX_END_PADDING = 16
"""Most extraneous bytes before the end-of-image marker always taken as an encoder's padding ("1 extraneous
bytes before marker 0xd9" is common in photo collections). More are padding only when they are one repeated
value (zeros, fill bytes); otherwise they are scan data left over, as a packet duplicated or misplaced inside
a scan leaves (its size, most often some hundred bytes or more)."""

_END_CANDIDATES = 4
"""End markers after the first scan looked at for the padding (the image's own comes first; bounded, so a
file of many FFD9 pairs cannot make the check slow)."""
_EXTRANEOUS = re.compile(r"(\d+) extraneous bytes before marker 0x([0-9a-f]{2})")
_END = 0xD9

_COLOURSPACE = {"L": "GRAY", "RGB": "RGB", "CMYK": "CMYK"}
"""Pillow's mode of a JPEG -> TurboJPEG's output colour space of the same pixels."""

_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RST0-7, SOI: markers without a length
_SOS = 0xDA
_PROGRESSIVE_HUFFMAN = 0xC2  # SOF2
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
"""A marker after entropy-coded data: 0xFF then neither a stuffed zero, a restart nor a fill byte (after fill
bytes, the last 0xFF matches; without the ``+`` of ``\xff+`` the search is about 15 times faster)."""
_MAX_SEGMENTS = 10_000
"""Segments :func:`progressive_shortfall` follows at most (far more than any encoder writes; the decoder's
own scan limit refuses such files anyway)."""


def is_damage(message: str) -> bool:
    """Whether a libjpeg-turbo warning means the decoded pixels would be wrong wherever it comes from."""
    lowered = message.lower()
    return any(sign in lowered for sign in DAMAGE_SIGNS)


def extraneous_bytes(message: str) -> tuple[int, int] | None:
    """(count, marker) of an "N extraneous bytes before marker 0xXX" warning, else None."""
    found = _EXTRANEOUS.search(message.lower())
    return None if found is None else (int(found.group(1)), int(found.group(2), 16))


def extraneous_is_damage(data: bytes, count: int, marker: int) -> bool:
    """Whether ``count`` bytes left over before ``marker`` *after the first scan began* mean damage: data left
    at a restart marker or before the next scan's tables or header is another stretch's data (a marker lost, a
    packet duplicated); before the end marker more than :data:`MAX_END_PADDING` bytes are, unless they are
    padding: one repeated value just before an end marker of ``data`` (fill bytes 0xFF between them allowed)
    whose run does not reach on into the scan by more than :data:`MAX_END_PADDING` bytes. A run that does is
    the scan's tail overwritten (unwritten sectors, a download's missing range filled with zeros): the decoder
    read its start as scan data. (Stray bytes between header segments, before the first scan, are harmless
    and handled apart.)"""
    if marker != _END:
        return True
    if count <= MAX_END_PADDING:
        return False
    scan = scan_data_start(data)
    if scan is None:
        return True
    end = data.find(b"\xff\xd9", scan)  # scan data holds no FFD9; tables between progressive scans might
    for _ in range(_END_CANDIDATES):
        if end < 0:
            break
        if _is_padding(data, scan, end, count):
            return False
        end = data.find(b"\xff\xd9", end + 2)
    return True


def _is_padding(data: bytes, scan: int, end: int, count: int) -> bool:
    """Whether the ``count`` bytes before the end marker at ``end`` (and its fill bytes) are one value whose
    run starts where the scan's data ends, give or take :data:`MAX_END_PADDING` bytes."""
    while end > scan and data[end - 1] == 0xFF:  # fill bytes before the marker (libjpeg does not count them)
        end -= 1
    start = end - count
    if start < scan:
        return False
    padding = data[start:end]
    if padding.count(padding[:1]) != count:
        return False
    reach = data[max(scan, start - MAX_END_PADDING - 1) : start]  # the run may go on this far into the scan
    return len(reach) <= MAX_END_PADDING or reach.count(padding[:1]) != len(reach)


def progressive_shortfall(data: bytes) -> str | None:
    """For a progressive (SOF2) JPEG whose scans leave a coefficient of a component short of full precision
    (never coded, or not refined down to its last bit) when the first end marker comes, what is missing, in
    words; None for a complete one, any other JPEG, or a file whose segments or scan headers cannot be
    followed or break the standard's limits (the decoder judges those). Encoders' progressions end with
    each coefficient at full precision (the last scans are its refinements), so a shortfall mostly means
    later scans are missing: the file was cut at a scan boundary and its end marker written or kept; the
    standard also allows a progression that stops early on purpose. Follows segment lengths from SOI and,
    after each scan header, the entropy-coded data to the next marker, so markers inside APP segments (an
    EXIF thumbnail) do not count. Never raises; its work is bounded by the file's size."""
    if not data.startswith(b"\xff\xd8"):
        return None
    components: list[int] | None = None
    finest: dict[int, list[int]] = {}  # component id -> per coefficient, the lowest approximation bit reached
    i, n = 2, len(data)
    for _ in range(_MAX_SEGMENTS):
        while i + 1 < n and data[i] == 0xFF and data[i + 1] == 0xFF:  # fill bytes
            i += 1
        if i + 1 >= n or data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == _END:
            break
        if marker in _STANDALONE:
            i += 2
            continue
        end = _segment_end(data, i)
        if end is None:
            return None
        segment = data[i + 4:end]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a frame header (SOFn)
            if marker != _PROGRESSIVE_HUFFMAN:
                return None
            if len(segment) < 6 or len(segment) < 6 + 3 * segment[5]:
                return None
            components = [segment[6 + 3 * k] for k in range(segment[5])]
            finest = {c: [99] * 64 for c in components}
        elif marker == _SOS:
            if components is None or not segment or len(segment) < 1 + 2 * segment[0] + 3:
                return None
            count = segment[0]
            start, stop, bits = segment[1 + 2 * count], segment[2 + 2 * count], segment[3 + 2 * count]
            ids = [segment[1 + 2 * k] for k in range(count)]
            # the standard's limits (B.2.3, G.1.1.1.1): 1-4 distinct components of the frame, an AC band of
            # one component; a crafted header listing 255 components would otherwise cost 255 x 64 steps a scan
            if not 1 <= count <= 4 or len(set(ids)) != count or (start > 0 and count != 1) or stop > 63 \
                    or start > stop or (start == 0 and stop != 0):
                return None
            low = bits & 0x0F
            for c in ids:
                row = finest.get(c)
                if row is None:
                    return None
                row[start:stop + 1] = [min(bit, low) for bit in row[start:stop + 1]]
            found = _NEXT_MARKER.search(data, end)
            if found is None:
                return None
            i = found.start()
            continue
        i = end
    else:
        return None
    if components is None:
        return None
    short = []
    for c in components:
        missing = [k for k, bit in enumerate(finest[c]) if bit != 0]
        if missing:
            never = sum(finest[c][k] == 99 for k in missing)
            short.append(f"component {c}: {len(missing)} of 64 coefficients short of full precision"
                         + (f", {never} never coded" if never else ""))
    return "; ".join(short) or None


def decode_jpeg_checked(p: Path, data: bytes, mode: str, size: tuple[int, int]) -> np.ndarray | None:
    """The first frame of JPEG (or MPO) bytes as H x W x C uint8 pixels (C = 1 grey, 3 RGB; CMYK is only
    checked and gives None), or None when the caller should decode with Pillow (a mode TurboJPEG does not
    give as Pillow does, a warning that is not damage, an error Pillow reports in its own words).

    ``mode`` and ``size`` are Pillow's from the header. Raises :class:`ImageError` when the decoder warns
    that the image data is damaged (:data:`DAMAGE_SIGNS`, :func:`extraneous_is_damage`).
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
            extra = extraneous_bytes(message)
            if extra is not None and attempt is data:
                cleaned = without_header_gaps(data)
                if cleaned is not None:  # stray bytes between header segments: dropped, the scans still checked
                    attempt = cleaned
                    continue
            if is_damage(message) or (extra is not None and extraneous_is_damage(attempt, *extra)):
                raise ImageError(f"{p}: image data is truncated or damaged (JPEG decoder: {message}); part of the "
                                 "picture would come out grey or garbled; re-copy the file from the camera or "
                                 "re-export it") from e
            return None
        if colourspace == "CMYK" or pixels.shape[:2] != (size[1], size[0]):
            return None
        return pixels
    return None


def without_header_gaps(data: bytes) -> bytes | None:
    """The JPEG with bytes that are not part of any marker segment before its first scan removed (libjpeg
    skips them with an "extraneous bytes" warning), or None when there are none or the header cannot be
    followed. The scans and everything after the first SOS segment are kept as they are."""
    walked = _walk_header(data)
    if walked is None or not walked[1]:
        return None
    kept, end = bytearray(), 0
    for gap_start, gap_end in walked[1]:
        kept += data[end:gap_start]
        end = gap_end
    return bytes(kept + data[end:])


def scan_data_start(data: bytes) -> int | None:
    """Offset of the image's first entropy-coded byte (after its first SOS segment, not one inside an APP
    segment's thumbnail), or None when the header cannot be followed to a scan."""
    walked = _walk_header(data)
    if walked is None:
        return None
    sos = walked[0]
    return sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")


def _walk_header(data: bytes) -> tuple[int, list[tuple[int, int]]] | None:
    """(the offset of the first SOS marker in ``data``, the (start, end) of the bytes between header segments)
    by following the segments' lengths from SOI, or None when they cannot be followed to a scan."""
    if not data.startswith(b"\xff\xd8"):
        return None
    gaps: list[tuple[int, int]] = []
    i, n = 2, len(data)
    while i < n:
        if data[i] != 0xFF:
            gap_end = data.find(b"\xff", i)
            if gap_end < 0:
                return None
            gaps.append((i, gap_end))
            i = gap_end
            continue
        while i + 1 < n and data[i + 1] == 0xFF:  # fill bytes before a marker are allowed
            i += 1
        if i + 1 >= n:
            return None
        marker = data[i + 1]
        if marker == 0x00:  # a stuffed zero cannot start a segment: part of the gap
            gaps.append((i, i + 2))
            i += 2
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        end = _segment_end(data, i)
        if end is None:
            return None
        if marker == _SOS:
            return i, gaps
        i = end
    return None


def _segment_end(data: bytes, i: int) -> int | None:
    """The offset after the marker segment whose marker is at ``i`` (its length field counts from after the
    marker), or None when the segment runs past the data."""
    if i + 4 > len(data):
        return None
    end = i + 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return end if end <= len(data) else None
