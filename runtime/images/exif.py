"""The EXIF block an upscaled image carries over from its photo.

What is kept: the photo's description (IFD0: camera make and model, date, description, artist,
copyright, software, rating) and its Exif and GPS sub-directories (capture date, exposure, lens,
location, ...). What is not: anything the new pixels make wrong or that cannot be relocated
safely: the orientation (already applied to the pixels), the pixel dimensions (``PixelXDimension``
/ ``PixelYDimension``, and the interoperability directory's related image size), resolution (the
same DPI would print the x4 image four times as large), the image structure tags of a TIFF
(strips, bits per sample, compression, ...), the thumbnail (IFD1, of the original pixels) and the
maker note (vendor data with offsets into the original file, which a move breaks).

The payload is TIFF-structured (a TIFF header and IFD0, without JPEG's ``Exif\\0\\0`` prefix): what
PNG's ``eXIf`` chunk and WebP's ``EXIF`` chunk hold, and JPEG's APP1 segment after the prefix.
TIFF output takes the same directories into its own IFD0 (:func:`tiff_exif_blob`).
"""

from __future__ import annotations

import struct
from typing import Any

from PIL import Image

EXIF_PREFIX = b"Exif\x00\x00"
MAX_JPEG_EXIF_BYTES = 65_535 - 2 - len(EXIF_PREFIX)
"""The largest payload one JPEG APP1 segment holds (its length field counts itself and the prefix)."""

EXIF_IFD, GPS_IFD, INTEROP_IFD = 0x8769, 0x8825, 0xA005
_IFD0_KEPT = frozenset({
    270,  # ImageDescription
    271,  # Make
    272,  # Model
    305,  # Software
    306,  # DateTime
    315,  # Artist
    18246,  # Rating
    18249,  # RatingPercent
    33432,  # Copyright
    40091, 40092, 40093, 40094, 40095,  # Windows XPTitle, XPComment, XPAuthor, XPKeywords, XPSubject
})
_EXIF_DROPPED = frozenset({
    0xA002,  # PixelXDimension
    0xA003,  # PixelYDimension
    0x927C,  # MakerNote
    INTEROP_IFD,  # re-added below without its related image size
})
_INTEROP_DROPPED = frozenset({0x1001, 0x1002})  # RelatedImageWidth, RelatedImageLength


def carried_exif(exif: Image.Exif) -> bytes | None:
    """The EXIF payload an output of the image carries (see the module docstring), or None when the
    photo has nothing worth carrying or its values cannot be written back (malformed tags)."""
    out = Image.Exif()
    for tag in _IFD0_KEPT:
        if tag in exif:
            out[tag] = exif[tag]
    try:
        sub = {k: v for k, v in exif.get_ifd(EXIF_IFD).items() if k not in _EXIF_DROPPED}
        interop = {k: v for k, v in exif.get_ifd(INTEROP_IFD).items() if k not in _INTEROP_DROPPED}
        gps = dict(exif.get_ifd(GPS_IFD))
    except (KeyError, ValueError, TypeError, struct.error, OSError):  # a damaged sub-directory: IFD0 only
        sub, interop, gps = {}, {}, {}
    if interop:
        sub[INTEROP_IFD] = interop
    if sub:
        out[EXIF_IFD] = sub
    if gps:
        out[GPS_IFD] = gps
    if not len(out):
        return None
    try:
        data = out.tobytes()
    except (KeyError, ValueError, TypeError, AttributeError, struct.error, OverflowError):  # a tag Pillow cannot write
        return None
    return data[len(EXIF_PREFIX):] if data.startswith(EXIF_PREFIX) else data


def exif_fields(payload: bytes) -> tuple[dict[int, Any], dict[int, Any], dict[int, Any]]:
    """IFD0's tags, the Exif sub-directory (its interoperability directory as a dict under
    ``INTEROP_IFD``) and the GPS sub-directory of a payload made by :func:`carried_exif`."""
    exif = Image.Exif()
    exif.load(payload)
    ifd0 = {k: v for k, v in exif.items() if k not in (EXIF_IFD, GPS_IFD)}
    sub = dict(exif.get_ifd(EXIF_IFD))
    if INTEROP_IFD in sub:
        sub[INTEROP_IFD] = dict(exif.get_ifd(INTEROP_IFD))
    return ifd0, sub, dict(exif.get_ifd(GPS_IFD))


def tiff_exif_blob(payload: bytes, at: int) -> tuple[bytes, list[tuple[int, int, int, bytes]]]:
    """``payload``'s directories for a little-endian TIFF whose next bytes start at offset ``at``:
    the bytes to write there, and the ``(tag, type, count, value field)`` entries (4-byte fields,
    offsets absolute) to put in the TIFF's IFD0, among its own.

    Pillow lays the tags out as one directory at ``at`` followed by its values and sub-directories;
    that directory's entries are taken into IFD0 and its own header is never read (unused bytes,
    which TIFF allows)."""
    from PIL import TiffImagePlugin

    ifd0, sub, gps = exif_fields(payload)
    ifd = TiffImagePlugin.ImageFileDirectory_v2(prefix=b"II")
    for tag, value in ifd0.items():
        ifd[tag] = value
    if sub:
        ifd[EXIF_IFD] = sub
    if gps:
        ifd[GPS_IFD] = gps
    data = ifd.tobytes(at)
    (count,) = struct.unpack_from("<H", data)
    entries = [struct.unpack_from("<HHI4s", data, 2 + 12 * k) for k in range(count)]
    return data, [(int(tag), int(kind), int(n), bytes(field)) for tag, kind, n, field in entries]

