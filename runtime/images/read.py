"""Decoding image files into :class:`LoadedImage`.

Strategy: Pillow opens every file (format sniffed from the content, restricted to PNG, JPEG, MPO,
WebP, TIFF and BMP) and gives the header: size, mode, EXIF. The pixel count is checked against
``max_pixels`` before any pixel is decoded. Pillow decodes everything except 16-bit colour
(PNG/TIFF RGB, RGBA and PNG grey+alpha), which Pillow would cut to 8 bits; those go through
``cv2.imdecode(IMREAD_UNCHANGED)``. Orientation is always applied here, by one function, from the
header read before decoding; decoders get bytes whose orientation metadata is neutralised (TIFF
tag 274 set to 1, PNG eXIf dropped for OpenCV), because OpenCV's TIFF decoder rotates by itself and
Pillow >= 12 rotates TIFFs while decoding, inconsistently (Pillow 13 drops the tag without
rotating when it memory-maps an uncompressed file).

JPEG (and MPO's first frame) in L, RGB or CMYK: libjpeg-turbo through TurboJPEG first
(:mod:`adassr.runtime.images.jpeg_reader`), which raises on damaged image data that libjpeg only warns
about (Pillow would decode it grey); the pixels are Pillow's, so Pillow decodes only what that path hands
back (CMYK after the check, a metadata warning).

Strictness: a truncated or damaged file raises :class:`ImageError` (Pillow's
``LOAD_TRUNCATED_IMAGES`` must stay False; if other code turned it on, reading refuses to run
rather than return a grey-filled image). Pillow's decompression-bomb warning is superseded by
``max_pixels``; its hard error (above ``2 * PIL.Image.MAX_IMAGE_PIXELS``) becomes ImageError.

Conversions: palette -> RGB (grey palette -> grey), with alpha when the palette has transparency;
single-colour PNG transparency (tRNS, its key at the image's bit depth) -> alpha; 1-bit -> grey 0/255;
CMYK, YCbCr, HSV -> RGB (Pillow's formulas, no ICC colour management); premultiplied RGBa/La (and
16-bit TIFF with associated alpha) -> straight alpha; WhiteIsZero grey TIFF -> inverted, 8- and 16-bit. 32-bit
integer ('I'), float ('F') and other modes raise ImageError: convert them to 8 or 16 bit first.
An embedded ICC profile is kept (``LoadedImage.icc_profile``) when it describes the decoded pixels:
RGB for RGB, grey for grey (so a CMYK file's profile is not).
MPO, multi-page TIFF and animated WebP: the first frame.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import stat
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, BinaryIO, TextIO, cast

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from adassr.runtime.errors import ConfigError, ImageError, ImageTooLargeError, PixelLimitError
from adassr.runtime.images._model import (
    DEFAULT_MAX_PIXELS,
    PILLOW_OPENERS,
    READ_FORMATS,
    ImageWarning,
    LoadedImage,
    bit_depth_of,
    icc_colour_space,
    note,
    profile_fits,
)
from adassr.runtime.images.camera_formats import DNG_VERSION_TAG, RAW, advice, raw_tiff_problem, sniffed_format
from adassr.runtime.images.containers import (
    PNG_SIGNATURE,
    png_chunk_counts,
    png_without_exif,
    read_png_header,
    tiff_without_orientation,
)
from adassr.runtime.images.exif import TIFF_TYPE_BYTES, carried_exif, carried_tiff_exif
from adassr.runtime.images.jpeg_reader import decode_jpeg_checked, progressive_shortfall
from adassr.runtime.images.orientation import ORIENTATION_TAG, apply_orientation
from adassr.runtime.images.strips import row_strips

_MAKE_TAG = 271
_MODEL_TAG = 272

# Errors Pillow raises for damaged data (besides ImageError's own cases).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error)
_METADATA_ERRORS = (*_DECODE_ERRORS, KeyError, TypeError, IndexError)
"""What Pillow raises on damaged metadata too: a TIFF page directory without its dimensions is a TypeError."""

MAX_JPEG_SCANS = 500
"""Most scans a JPEG may hold. A progressive JPEG has about ten; each scan costs a pass over every
block, so a 3 MB file of 100,000 empty scans kept a server worker decoding for minutes (libjpeg has
no limit of its own; its ``djpeg -maxscans`` exists for this)."""
MAX_PNG_TEXT_CHUNKS = 256
"""Most text chunks (tEXt, zTXt, iTXt) a 16-bit PNG may hold: OpenCV's libpng inflates each, and 2000
zTXt chunks cost 16 s of a worker and a thousand log lines (Pillow, for 8-bit PNGs, has its own limits)."""
MAX_TIFF_TILE_SHARE = 4
"""A TIFF tile may hold at most this many times the image's pixels, or ``MIN_TIFF_TILE_LIMIT`` pixels
(4096 x 4096, some 100 MB) where that is more: a 64x64 image declaring one 26752x26752 tile made the
decoder allocate 2 GB; unusual but valid large tiles on small images still read."""
MIN_TIFF_TILE_LIMIT = 1 << 24
OPENCV_MAX_SIDE = 1_000_000
"""OpenCV's libpng refuses 16-bit images with a side longer than this."""
OPENCV_MAX_TIFF_SIDE = 1 << 20
"""OpenCV refuses images with a side longer than this (``CV_IO_MAX_IMAGE_WIDTH``)."""

_TO_RGB_MODES = {"CMYK", "YCbCr", "HSV", "RGBX"}
_UINT16_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}


def read_image(
    path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS, notes: list[str] | None = None
) -> LoadedImage:
    """Decode an image file, with EXIF orientation applied and alpha split off.

    Raises :class:`ImageError` naming the file and the reason for a missing, empty, truncated,
    damaged, unsupported or too large (over ``max_pixels``, checked from the header before
    decoding) file. Warns (:class:`ImageWarning`) when only the first frame of an animation or a
    multi-page file is read, an unreadable EXIF block is ignored, or a progressive JPEG's scans stop
    before its picture is complete (cut between two scans); with ``notes``, a list, those
    messages are appended to it instead and the process's warnings state is not touched (so threads
    that read at once keep their notes apart), except while a TIFF of more than Pillow's
    ``Image.MAX_IMAGE_PIXELS`` (about 89 MP) that ``max_pixels`` allows is decoded: Pillow's TIFF decoder
    warns then, and only a process-wide filter silences it.
    """
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ConfigError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    p = _checked_file(path)
    with _open_header(p, max_pixels=max_pixels) as im:
        width, height = im.size
        if width * height > max_pixels:
            raise PixelLimitError(
                f"{p}: image is {width}x{height} = {width * height:,} pixels, above the limit of "
                f"{max_pixels:,}, which guards memory; downscale it first"
            )
        pixels, alpha, exif = _decode(p, im, notes)
        carried = _carried_exif(p, im)
        profile = im.info.get("icc_profile")
        declared = _colour_declaration(im.info, exif)
        _warn_if_more_frames(im, p, notes)
    dropped = None
    if not isinstance(profile, bytes) or not profile:
        profile = None
    elif not profile_fits(profile, pixels.shape[2]):
        dropped, profile = icc_colour_space(profile) or "unreadable", None
    make, model, orientation = _camera_fields(exif)
    return LoadedImage(
        pixels=apply_orientation(pixels, orientation),
        alpha=None if alpha is None else apply_orientation(alpha, orientation),
        bit_depth=bit_depth_of(pixels.dtype) or 0,
        exif_make=make,
        exif_model=model,
        path=p,
        icc_profile=profile,
        dropped_profile=dropped,
        untagged_colour=declared if profile is None and dropped is None else None,
        exif=carried,
    )


def _carried_exif(p: Path, im: ImageFile.ImageFile) -> bytes | None:
    """The EXIF an output of the image carries (:func:`carried_exif`), from the file's raw EXIF block: JPEG's
    and WebP's as Pillow found it, PNG's by the rule :func:`_png_exif` follows, a TIFF's own first directory."""
    if im.format in ("JPEG", "MPO", "WEBP"):
        raw = im.info.get("exif")
        return carried_exif(raw) if isinstance(raw, bytes) else None
    try:
        if im.format == "PNG":
            with p.open("rb", buffering=0) as fh:
                return carried_exif(_png_exif_payload(fh, os.fstat(fh.fileno()).st_size))
        if im.format == "TIFF":
            with p.open("rb") as fh:
                return carried_tiff_exif(fh)
    except (OSError, ValueError, zlib.error):  # the pixels were read: an output then carries no EXIF
        return None
    return None


_SRGB_GAMMA = 1 / 2.2  # PNG gAMA of sRGB (0.45455)
_SRGB_PRIMARIES = (0.3127, 0.3290, 0.64, 0.33, 0.30, 0.60, 0.15, 0.06)  # white, red, green, blue (x, y)
_EXIF_IFD, _COLOR_SPACE, _UNCALIBRATED = 0x8769, 0xA001, 0xFFFF


def _colour_declaration(info: Mapping[Any, Any], exif: Image.Exif) -> str | None:
    """How a file declares colours other than sRGB without an ICC profile, or None (see LoadedImage)."""
    if "srgb" in info:  # a PNG sRGB chunk: sRGB, whatever gAMA / cHRM say beside it
        return None
    found = []
    gamma = info.get("gamma")
    if isinstance(gamma, (int, float)) and abs(float(gamma) - _SRGB_GAMMA) > 0.01:
        found.append(f"a PNG gAMA of {float(gamma):g}")
    primaries = info.get("chromaticity")
    if (isinstance(primaries, tuple) and len(primaries) == 8
            and max(abs(float(a) - b) for a, b in zip(primaries, _SRGB_PRIMARIES, strict=True)) > 0.01):
        found.append("PNG cHRM primaries other than sRGB's")
    with contextlib.suppress(Exception):  # a damaged EXIF sub-IFD declares nothing
        if exif.get_ifd(_EXIF_IFD).get(_COLOR_SPACE) == _UNCALIBRATED:
            found.append("the EXIF ColorSpace 'Uncalibrated' (a camera set to Adobe RGB writes it)")
    return " and ".join(found) or None


@contextlib.contextmanager
def image_notes_logged(logger: logging.Logger) -> Iterator[None]:
    """Inside the block, the reader's :class:`ImageWarning` notes become ``logger`` warnings, for
    callers that print no notes of their own (adaptation, metrics). Each is logged when it is raised,
    so a later failure loses none. Pillow's own warnings as it reads a damaged file ("Truncated File
    Read") are logged too, as notes of the decoder rather than as a line of its source code; other
    warnings are shown as Python would show them."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", ImageWarning)
        shown = warnings.showwarning

        def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
            if issubclass(category, ImageWarning):
                logger.warning("%s", message)
            elif _from_pillow(filename):
                logger.warning("the image decoder (Pillow) noted: %s", message)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def _from_pillow(filename: str) -> bool:
    """Whether a warning was raised by Pillow's code (its plugins warn about damaged files)."""
    return Path(filename).parent.name == "PIL"


def _warn_if_more_frames(im: ImageFile.ImageFile, p: Path, notes: list[str] | None) -> None:
    """An :class:`ImageWarning` when the file holds more than the one frame read: an animated WebP or
    PNG, a multi-page TIFF. Not for MPO, whose further frames (a stereo partner, a preview) belong to
    the photo that the first frame is.

    A TIFF's pages are not counted: Pillow parses every page directory to count them (about 6 s for
    32,000 one-pixel pages, a 4 MB upload), so a TIFF only says that more pages follow, which its first
    directory records. Animated PNG and WebP files state their frame count in a header."""
    if im.format == "MPO":
        return
    try:
        if not getattr(im, "is_animated", False):
            return
        count = None if im.format == "TIFF" else int(getattr(im, "n_frames", 0) or 0)
    except _METADATA_ERRORS:  # a damaged frame table: the first frame was read, say nothing more
        return
    if count is None:
        what = "holds more than one page (a multi-page file)"
    elif count > 1:
        what = f"holds {count} frames (an animation or a multi-page file)"
    else:
        return
    note(notes, f"{p}: {what}; only the first is read", ImageWarning, stacklevel=4)


def read_image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` as stored (before EXIF orientation), from the header: no pixel is decoded.

    Raises :class:`ImageError` as :func:`read_image` does for a missing, empty, unsupported or
    damaged header (damage further into the file shows only when it is decoded).
    """
    p = _checked_file(path)
    with _open_header(p) as im:
        width, height = im.size
    return int(width), int(height)


def read_camera_exif(path: str | os.PathLike[str]) -> tuple[str | None, str | None]:
    """EXIF (Make, Model) from the file header, without decoding pixels.

    Values are stripped of NULs and whitespace; None when absent. For PNG the EXIF is found by walking
    the chunk list (seeking over the image data, decoding nothing), by the rule :func:`read_image` follows
    (:func:`_png_exif`), so the Make is the one it reports: adapt's groups and the runtime's routing agree.
    """
    p = _checked_file(path)
    with _open_header(p) as im:
        exif = _png_exif(p) if im.format == "PNG" else _exif(im, p)
        make, model, _ = _camera_fields(exif)
    return make, model


_MAX_PNG_CHUNKS = 1_000_000
"""How many chunks :func:`_png_exif_payload` walks at most (a PNG of millions of tiny chunks is no photo)."""
_RAW_EXIF_KEYWORD = b"Raw profile type exif"
"""The text chunk in which ImageMagick and exiv2 stored EXIF in PNG before the eXIf chunk existed."""
_MAX_RAW_PROFILE_BYTES = 1 << 20
"""The most bytes of a legacy EXIF text chunk read, compressed or not (EXIF is at most 64 KiB, 128 KiB as hex)."""


def _png_exif(p: Path, notes: list[str] | None = None, data: bytes | None = None) -> Image.Exif:
    """A PNG's EXIF, by one rule for every reader: the first eXIf chunk wherever it lies (a second one, which
    the PNG specification does not allow, is ignored); without one, the legacy ``Raw profile type exif``
    text chunk. ``data``: the file's bytes, where the caller holds them already."""
    try:
        if data is not None:
            payload = _png_exif_payload(io.BytesIO(data), len(data))
        else:
            with p.open("rb", buffering=0) as fh:  # 8-byte reads and seeks: no 4 KiB read per chunk
                payload = _png_exif_payload(fh, os.fstat(fh.fileno()).st_size)
    except OSError:
        payload = None
    except (ValueError, zlib.error) as e:
        note(notes, f"{p}: unreadable EXIF block ignored (its 'Raw profile type exif' text: {e}); no camera name, "
                    "orientation as stored", ImageWarning, stacklevel=3)
        payload = None
    return _exif_from_payload(payload, p, notes)


_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')


def _with_xmp_orientation(exif: Image.Exif, info: Mapping[Any, Any]) -> Image.Exif:
    """``exif`` with the orientation of the image's XMP packet where it has none, as Pillow's ``getexif`` does
    for every format (so a PNG turns as it did when Pillow read its EXIF). ``info`` of a 16-bit PNG, which Pillow
    never loads, holds only an XMP packet before the image data; an 8-bit one's holds one after it too."""
    if ORIENTATION_TAG not in exif:
        xmp = info.get("XML:com.adobe.xmp") or info.get("xmp")
        if isinstance(xmp, str):
            xmp = xmp.encode("utf-8", "replace")
        match = _XMP_ORIENTATION.search(xmp) if isinstance(xmp, bytes) else None
        if match:
            exif[ORIENTATION_TAG] = int(match[2])
    return exif


def _png_exif_payload(fh: BinaryIO, size: int) -> bytes | None:
    """The first eXIf chunk's payload, else the EXIF of the first legacy text chunk; None without either (also
    past a damaged chunk). ValueError or zlib.error for a legacy text chunk that cannot be read."""
    if fh.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
        return None
    legacy: tuple[bytes, bytes] | None = None  # (chunk type, data after the keyword) of the first legacy chunk
    for _ in range(_MAX_PNG_CHUNKS):
        head = fh.read(8)
        if len(head) < 8:
            break
        length, kind = struct.unpack(">I", head[:4])[0], head[4:]
        start = fh.tell()
        if length > size - start:  # a length past the end: damaged (never allocate it)
            break
        if kind == b"eXIf":
            payload = fh.read(length)
            return payload if len(payload) == length else None
        if kind == b"IEND":
            break
        if (legacy is None and kind in (b"tEXt", b"zTXt", b"iTXt") and length <= _MAX_RAW_PROFILE_BYTES
                and fh.read(len(_RAW_EXIF_KEYWORD) + 1) == _RAW_EXIF_KEYWORD + b"\0"):
            legacy = kind, fh.read(length - len(_RAW_EXIF_KEYWORD) - 1)
        fh.seek(start + length + 4)  # past the data and its CRC
    return None if legacy is None else _raw_profile_exif(*legacy)


def _raw_profile_exif(kind: bytes, body: bytes) -> bytes:
    """The EXIF bytes of a legacy ``Raw profile type exif`` chunk's data after its keyword: ``\\nexif\\n  <length>\\n``
    then the bytes in hex over several lines, as text (tEXt), compressed (zTXt) or international (iTXt)."""
    if kind == b"zTXt":
        body = _inflate(body[1:])  # a compression method byte, then zlib data
    elif kind == b"iTXt":  # compression flag, method, language tag NUL, translated keyword NUL, text
        compressed, rest = body[:1] == b"\1", body[2:]
        parts = rest.split(b"\0", 2)
        if len(parts) < 3:
            raise ValueError("an iTXt chunk without its language and translated keyword")
        body = _inflate(parts[2]) if compressed else parts[2]
    lines = body.decode("latin-1").split("\n")
    if len(lines) < 4:  # the name and length lines are not checked: Pillow never did
        raise ValueError("not in the 'exif, length, hex' layout")
    return bytes.fromhex("".join(lines[3:]))  # Exif.load drops a JPEG APP1 "Exif\0\0" prefix itself


def _inflate(data: bytes) -> bytes:
    """zlib data inflated to at most :data:`_MAX_RAW_PROFILE_BYTES` (ValueError past that: no bomb is inflated)."""
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, _MAX_RAW_PROFILE_BYTES)
    if inflater.unconsumed_tail:
        raise ValueError(f"it inflates past {_MAX_RAW_PROFILE_BYTES:,} bytes")
    return out


# ----------------------------------------------------------------------------- file and header


def _checked_file(path: str | os.PathLike[str]) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise ImageError(f"an image path must be a str or pathlib.Path, got {type(path).__name__}")
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        if p.is_symlink():
            raise ImageError(f"{p}: a broken link (its target {os.readlink(p)} does not exist); fix or remove "
                             "the link") from None
        raise ImageError(f"{p}: no such file; check the path") from None
    except OSError as e:
        raise ImageError(f"{p}: cannot access the file ({e.strerror}); check the path") from e
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(f"{p}: is a directory, not an image file; pass an image file")
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(f"{p}: is not a regular file; pass an image file")
    if st.st_size == 0:
        raise ImageError(f"{p}: file is empty (0 bytes); it was not written completely, re-copy it")
    return p


def _head(p: Path, n: int = 64) -> bytes:
    try:
        with open(p, "rb") as f:
            return f.read(n)
    except OSError as e:
        raise ImageError(f"{p}: cannot read the file ({e.strerror})") from e


def _starts_like_tiff(source: Path | io.BytesIO) -> bool:
    """Whether the bytes begin with a TIFF header (``II*\\0`` or ``MM\\0*``; BigTIFF too)."""
    try:
        if isinstance(source, io.BytesIO):
            head = source.getvalue()[:4]
        else:
            with open(source, "rb") as fh:
                head = fh.read(4)
    except OSError:
        return False
    return head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


_TiffEntry = tuple[int, int, int, int]
"""A TIFF directory entry: tag, type, count, value or offset."""


_TiffDirectory = tuple[list[_TiffEntry], int] | str | None
"""What :func:`_tiff_first_directory` read."""


def _tiff_first_directory(source: Path | io.BytesIO) -> _TiffDirectory:
    """A classic TIFF's first directory entries and the file's size; a str saying what is wrong when the
    directory lies or runs outside the file; None for no classic TIFF header or an unreadable file."""
    try:
        with contextlib.ExitStack() as stack:
            fh: IO[bytes] = (io.BytesIO(source.getvalue()) if isinstance(source, io.BytesIO)
                             else stack.enter_context(open(source, "rb")))
            size = fh.seek(0, io.SEEK_END)
            fh.seek(0)
            head = fh.read(8)
            endian = {b"II*\x00": "<", b"MM\x00*": ">"}.get(head[:4])
            if endian is None:
                return None
            (at,) = struct.unpack(endian + "I", head[4:])
            if at + 2 > size:
                return "its first directory lies outside the file"
            fh.seek(at)
            (count,) = struct.unpack(endian + "H", fh.read(2))
            raw = fh.read(12 * count)
            if len(raw) < 12 * count:
                return "its first directory runs past the end of the file"
            entries = [struct.unpack_from(endian + "HHII", raw, 12 * k) for k in range(count)]
    except (OSError, struct.error):
        return None
    return entries, size


def _tiff_directory_damage(directory: _TiffDirectory) -> str | None:
    """What is wrong with a classic TIFF's first ``directory``, when it or one of its values lies outside the
    file (the file was cut short, or an offset damaged: Pillow then stops reading the directory at that
    tag and takes the image for a layout it does not know); None when nothing is found."""
    if directory is None or isinstance(directory, str):
        return directory
    entries, size = directory
    for tag, kind, n, offset in entries:
        length = TIFF_TYPE_BYTES.get(kind, 0) * n
        if length > 4 and offset + length > size:
            return f"the value of its tag {tag} lies outside the file"
    return None


def _is_dng(directory: _TiffDirectory) -> bool:
    """Whether a classic TIFF's first ``directory`` holds the DNG version tag."""
    return isinstance(directory, tuple) and any(tag == DNG_VERSION_TAG for tag, *_ in directory[0])


@contextmanager
def _open_header(p: Path, source: io.BytesIO | None = None, *,
                 max_pixels: int | None = None) -> Iterator[ImageFile.ImageFile]:
    """Open with Pillow (header only) and close afterwards; every failure is an ImageError.

    ``source`` (default: the file ``p``) may be the file's bytes, with ``p`` naming it in errors.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise ImageError(
            f"{p}: PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set by other code), which would "
            "turn truncated files into grey-filled images; set it back to False"
        )
    try:
        im = _pillow_open(p, source)
    except Image.DecompressionBombError as e:  # a plugin that checks its header itself (WebP in Pillow 13)
        hard = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else 0  # where Pillow's warning turns an error
        if max_pixels is not None and max_pixels < hard:  # above the caller's limit too: that is the one to name
            counted = re.search(r"\((\d+) pixels\)", str(e))  # Pillow: "Image size (N pixels) exceeds limit of M"
            size = f"{int(counted.group(1)):,}" if counted else f"over {hard:,}"
            raise PixelLimitError(f"{p}: image is {size} pixels, above the limit of {max_pixels:,}, which guards "
                                  "memory; downscale it first") from e
        raise ImageTooLargeError(f"{p}: image is larger than the decoder's guard against decompression bombs ({e}); "
                                 "downscale it first") from e
    except PermissionError as e:
        raise ImageError(f"{p}: permission denied; check the file's permissions") from e
    except UnidentifiedImageError as e:
        directory = _tiff_first_directory(p if source is None else source)  # read once for both checks
        damage = _tiff_directory_damage(directory)
        if damage is not None:
            raise ImageError(f"{p}: a damaged TIFF: {damage} (the file was cut short or corrupted); re-copy or "
                             "re-export it") from e
        if _is_dng(directory):  # its first image the sensor's mosaic, as Android writes
            raise ImageError(f"{p}: a DNG raw file (its first image is the sensor's undeveloped data); "
                             f"{advice(RAW)}") from e
        kind = sniffed_format(_prefix(p, source))  # before the TIFF layouts: a CR2 starts as a TIFF does
        if kind is not None:
            raise ImageError(f"{p}: a {kind} image, a format adassr does not read (it reads "
                             f"{', '.join(READ_FORMATS)}); {advice(kind)}") from e
        if _starts_like_tiff(p if source is None else source):
            raise ImageError(
                f"{p}: a TIFF whose pixel layout the decoder does not take (32-bit float or integer colour, or "
                "an unusual sample layout or compression); convert it to an 8- or 16-bit grey or RGB image first"
            ) from e
        raise ImageError(
            f"{p}: not a readable image (supported: {', '.join(READ_FORMATS)}); the file is "
            "another format, damaged, or not an image"
        ) from e
    except _DECODE_ERRORS as e:
        raise ImageError(
            f"{p}: cannot read the image header ({e}); the file is damaged or unreadable"
        ) from e
    try:
        if im.format == "TIFF":
            _check_not_raw(p, im, source)
        _check_bomb_guard(p, im, max_pixels)
        yield im
    finally:
        im.close()


def _prefix(p: Path, source: io.BytesIO | None, n: int = 16) -> bytes:
    """The first ``n`` bytes of the file (or of ``source``, its bytes)."""
    return source.getvalue()[:n] if source is not None else _head(p, n)


def _check_not_raw(p: Path, im: ImageFile.ImageFile, source: io.BytesIO | None) -> None:
    """ImageError for a raw camera file built on TIFF (DNG, NEF, CR2, ...): Pillow opens it, but as its
    first image, a preview or undeveloped data, which would be upscaled in place of the photo."""
    problem = raw_tiff_problem(im.tag_v2)  # type: ignore[attr-defined]
    if problem is None and sniffed_format(_prefix(p, source)) == RAW:
        problem = "a raw camera file (Canon CR2)"
    if problem is not None:
        raise ImageError(f"{p}: {problem}; adassr reads developed photos: {advice(RAW)}")


def _pillow_open(p: Path, source: io.BytesIO | None) -> ImageFile.ImageFile:
    """``Image.open(..., formats=PILLOW_OPENERS)`` without Pillow's decompression-bomb check, which warns through
    the process-wide warnings module between one and two times ``Image.MAX_IMAGE_PIXELS``: silencing it with
    ``warnings.catch_warnings`` undid the warning hooks other threads had set meanwhile (a server's decoding
    thread broke a caller's recording of warnings). :func:`_check_bomb_guard` applies the check's limit."""
    Image.init()  # every plugin registered, as Image.open does for a format it has not loaded yet
    if source is None:
        with open(p, "rb") as fh:
            prefix = fh.read(16)
    else:
        source.seek(0)
        prefix = source.read(16)
    for name in PILLOW_OPENERS:
        factory, accept = Image.OPEN[name]
        accepted = accept is None or accept(prefix)
        if not accepted or isinstance(accepted, str):  # a str: the format's support is not installed
            continue
        if source is not None:
            source.seek(0)
        try:  # a path: the image opens (and closes) the file itself
            return factory(cast(IO[bytes], os.fspath(p)) if source is None else source, "")
        except (SyntaxError, IndexError, TypeError, struct.error):  # not this format after all, as Image.open
            continue
    raise UnidentifiedImageError(f"cannot identify image file {os.fspath(p)!r}")


def _check_bomb_guard(p: Path, im: Image.Image, max_pixels: int | None) -> None:
    """Pillow's hard limit (twice ``Image.MAX_IMAGE_PIXELS``), named with the caller's ``max_pixels`` where that
    is the lower one: a client that downscaled to just under the guard would get a second refusal."""
    guard = Image.MAX_IMAGE_PIXELS
    width, height = im.size
    pixels = max(1, width) * max(1, height)
    if guard is None or pixels <= 2 * guard:
        return
    if max_pixels is not None and max_pixels < 2 * guard:
        raise PixelLimitError(f"{p}: image is {width}x{height} = {pixels:,} pixels, above the limit of {max_pixels:,}, "
                              "which guards memory; downscale it first")
    raise ImageTooLargeError(f"{p}: image is {width}x{height} = {pixels:,} pixels, larger than the decoder's guard "
                             f"against decompression bombs ({2 * guard:,} pixels); downscale it first")


def _read_bytes(p: Path) -> bytes:
    try:
        return p.read_bytes()
    except OSError as e:
        raise ImageError(f"{p}: cannot read the file ({e.strerror})") from e


def _exif(im: Image.Image, p: Path, notes: list[str] | None = None) -> Image.Exif:
    try:
        return im.getexif()
    except _METADATA_ERRORS as e:
        note(notes, f"{p}: unreadable EXIF block ignored ({e}); no camera name, orientation as stored",
             ImageWarning, stacklevel=4)
        return Image.Exif()


def _camera_fields(exif: Image.Exif) -> tuple[str | None, str | None, int]:
    orientation = exif.get(ORIENTATION_TAG, 1)
    if not isinstance(orientation, int):
        orientation = 1
    return _clean_text(exif.get(_MAKE_TAG)), _clean_text(exif.get(_MODEL_TAG)), orientation


def _clean_text(value: object) -> str | None:
    """An EXIF text field as a string: up to the first NUL, stripped; None when empty or not text.

    EXIF says ASCII, but cameras and editors write UTF-8 (EXIF 3.0 allows it), which Pillow hands
    over decoded as Latin-1 (``"ZeiÃ\x9f"`` for ``Zeiß``): such text is decoded again as UTF-8 where it
    is valid UTF-8, and kept as Latin-1 where it is not."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        return None
    text = value.split("\x00", 1)[0].strip()
    if any("\x80" <= c <= "\xff" for c in text) and all(c <= "\xff" for c in text):
        with contextlib.suppress(UnicodeDecodeError):  # not valid UTF-8: Latin-1 after all
            text = text.encode("latin-1").decode("utf-8")
    return text or None


# ----------------------------------------------------------------------------- decoders


def _decode(p: Path, im: ImageFile.ImageFile,
            notes: list[str] | None) -> tuple[np.ndarray, np.ndarray | None, Image.Exif]:
    """(pixels, alpha, EXIF) in stored orientation."""
    shortfall = None
    if im.format in ("JPEG", "MPO"):
        data = _read_bytes(p)
        scans = data.count(b"\xff\xda")  # SOS markers: in entropy-coded data 0xFF is escaped
        if scans > MAX_JPEG_SCANS:
            raise ImageError(f"{p}: the JPEG holds {scans:,} scans, more than the {MAX_JPEG_SCANS} any encoder "
                             "writes; the file is damaged or made to stall decoders; re-export it")
        pixels = decode_jpeg_checked(p, data, im.mode, im.size)
        shortfall = progressive_shortfall(data)
        del data
        if pixels is not None:
            _note_shortfall(p, shortfall, notes)
            return pixels, None, _exif(im, p, notes)
    if im.format == "TIFF":
        _check_tiff_tiles(p, im)
        exif = _exif(im, p, notes)  # from the header, before any decoder can act on tag 274
        bits = im.tag_v2.get(258, 8)  # type: ignore[attr-defined]
        if im.mode not in _UINT16_MODES and 16 in (bits if isinstance(bits, tuple) else (bits,)):
            stored = (im.tag_v2[256], im.tag_v2[257])  # type: ignore[attr-defined]
            if max(stored) > OPENCV_MAX_TIFF_SIDE:
                raise ImageError(f"{p}: a 16-bit TIFF {stored[0]}x{stored[1]} has a side longer than "
                                 f"{OPENCV_MAX_TIFF_SIDE:,} pixels, which its decoder (OpenCV) refuses; convert it "
                                 "to 8-bit or cut it into parts")
            pixels16, alpha16 = _decode_opencv(p, tiff_without_orientation(_read_bytes(p)), stored, grey=False)
            extra = im.tag_v2.get(338)  # type: ignore[attr-defined]
            if alpha16 is not None and 1 in (extra if isinstance(extra, tuple) else (extra,)):
                _unpremultiply(pixels16, alpha16)  # associated alpha: Pillow does this for 8-bit (RGBa)
            return pixels16, alpha16, exif
        if im.tag_v2.get(274, 1) == 1:  # type: ignore[attr-defined]
            return (*_decode_pillow(p, im), exif)  # nothing for libtiff to turn: decoded from the file itself
        with _open_header(p, io.BytesIO(tiff_without_orientation(_read_bytes(p)))) as neutral:
            return (*_decode_pillow(p, neutral), exif)
    if im.format == "PNG":
        png = read_png_header(_head(p))
        if png is not None and png.bit_depth == 16 and png.colour_type in (2, 4, 6):
            data, _ = png_without_exif(whole := _read_bytes(p))
            exif = _with_xmp_orientation(_png_exif(p, notes, whole), im.info)
            del whole
            counts = png_chunk_counts(data)
            texts = sum(counts.get(kind, 0) for kind in (b"tEXt", b"zTXt", b"iTXt"))
            if texts > MAX_PNG_TEXT_CHUNKS:
                raise ImageError(f"{p}: the PNG holds {texts:,} text chunks, more than the {MAX_PNG_TEXT_CHUNKS} "
                                 "read; the file is damaged or made to stall decoders; re-export it")
            if max(im.size) > OPENCV_MAX_SIDE:
                raise ImageError(f"{p}: a 16-bit image {im.size[0]}x{im.size[1]} has a side longer than "
                                 f"{OPENCV_MAX_SIDE:,} pixels, which the 16-bit PNG decoder (OpenCV's libpng) "
                                 "refuses; convert it to 8-bit or cut it into parts")
            pixels, alpha = _decode_opencv(p, data, im.size, grey=png.colour_type == 4)
            return pixels, alpha, exif
    if im.format == "BMP" and im.info.get("compression") in _BMP_RLE:
        return (*_decode_bmp_rle(p, im), _exif(im, p, notes))
    pixels, alpha = _decode_pillow(p, im)
    _note_shortfall(p, shortfall, notes)
    # PNG: by the rule read_camera_exif follows (Pillow's getexif takes the last of two eXIf chunks once the
    # image is loaded, and a legacy text chunk only in 8-bit images)
    if im.format == "PNG":
        return pixels, alpha, _with_xmp_orientation(_png_exif(p, notes), im.info)
    return pixels, alpha, _exif(im, p, notes)


_BMP_RLE = (1, 2)
"""BMP compression values of run-length coded data (RLE8, RLE4)."""


def _decode_bmp_rle(p: Path, im: ImageFile.ImageFile) -> tuple[np.ndarray, None]:
    """A run-length coded BMP, decoded by OpenCV: Pillow's RLE decoder is Python that loops a byte at a
    time, so a 17 KB file of 4000x4000 one-pixel rows held a server worker for 5 s and a 40 MB stream of
    zero-move escapes for 18 s. As Pillow reads it: palette colours, grey when every pixel is grey
    (unless an RGB profile describes the image); no alpha (RLE has none)."""
    import cv2

    try:
        arr = cv2.imdecode(np.frombuffer(_read_bytes(p), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else "an OpenCV error"
        raise ImageError(f"{p}: run-length coded BMP data is damaged ({reason}); re-copy or re-export the file") from e
    width, height = im.size
    if arr is None or arr.dtype != np.uint8 or arr.shape[:2] != (height, width) or arr.ndim not in (2, 3):
        raise ImageError(f"{p}: run-length coded BMP data is truncated or damaged; re-copy or re-export the file")
    if arr.ndim == 2:
        return np.ascontiguousarray(arr[..., None]), None
    rgb = arr[..., 2::-1] if arr.shape[2] >= 3 else arr[..., :1]
    grey = (icc_colour_space(im.info.get("icc_profile")) != "RGB"
            and all(np.array_equal(rgb[rows, :, 0], rgb[rows, :, c])
                    for rows in row_strips(height, 3 * width, _STRIP_BYTES) for c in (1, 2)))
    return np.ascontiguousarray(rgb[..., :1] if grey else rgb), None


INCOMPLETE_SCANS = "the progressive JPEG's scans stop before its picture is complete"
"""The words of the note on a progressive JPEG whose scans stop before full precision (callers that must
not use such a picture, as adaptation, look for them)."""


def _note_shortfall(p: Path, shortfall: str | None, notes: list[str] | None) -> None:
    """The note for a progressive JPEG whose scans stop before full precision (:func:`progressive_shortfall`)."""
    if shortfall is not None:
        note(notes, f"{p}: {INCOMPLETE_SCANS} ({shortfall}), so it reads blurred or coarse: the file was cut "
                    "between two scans (re-copy it from the camera) or written so on purpose", ImageWarning,
             stacklevel=4)


def _unpremultiply(pixels: np.ndarray, alpha: np.ndarray) -> None:
    """Colour premultiplied by alpha (TIFF ExtraSamples 1, "associated") to straight colour, in place, a
    strip at a time; fully transparent pixels keep their (zero) colour."""
    peak = np.iinfo(pixels.dtype).max
    for rows in row_strips(pixels.shape[0], 8 * pixels.shape[1] * pixels.shape[2], _STRIP_BYTES):
        a = alpha[rows, :, None].astype(np.float64)
        straight = pixels[rows] * (peak / np.maximum(a, 1.0))
        pixels[rows] = np.where(a > 0, np.clip(np.rint(straight), 0, peak), pixels[rows])


def _check_tiff_tiles(p: Path, im: ImageFile.ImageFile) -> None:
    """ImageError for a TIFF whose declared tile is far larger than its image (a decoder allocates it)."""
    tags = im.tag_v2  # type: ignore[attr-defined]
    tile_w, tile_h = tags.get(322), tags.get(323)
    if not isinstance(tile_w, int) or not isinstance(tile_h, int):
        return
    width, height = im.size
    if tile_w * tile_h > max(MAX_TIFF_TILE_SHARE * width * height, MIN_TIFF_TILE_LIMIT):
        raise ImageError(f"{p}: the TIFF declares {tile_w}x{tile_h} tiles for a {width}x{height} image; the file "
                         "is damaged or made to exhaust memory; re-export it")


def _decode_pillow(p: Path, im: ImageFile.ImageFile) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        _load(im)  # full decode: a truncated file raises here
        return _pillow_arrays(im, p)
    except AssertionError as e:  # Pillow's invariants on file data (a palette image without its palette)
        raise ImageError(f"{p}: image data is damaged ({str(e) or 'an inconsistent structure'}); re-copy or re-export "
                         "the file") from e
    except _DECODE_ERRORS as e:
        raise ImageError(
            f"{p}: image data is truncated or damaged ({e}); re-copy or re-export the file"
        ) from e


_BOMB_WARNING_LOCK = threading.Lock()


def _load(im: ImageFile.ImageFile) -> None:
    """``im.load()``. Pillow's TIFF decoder runs the decompression-bomb check again as it decodes, and warns
    above ``Image.MAX_IMAGE_PIXELS`` (about 89 MP) where ``max_pixels`` allowed the image: only there is the
    warning silenced, which touches the process's warnings state (no other way exists before Python 3.14)."""
    guard = Image.MAX_IMAGE_PIXELS
    if im.format != "TIFF" or guard is None or im.size[0] * im.size[1] <= guard:
        im.load()
        return
    with _BOMB_WARNING_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im.load()


def _pillow_arrays(im: Image.Image, p: Path) -> tuple[np.ndarray, np.ndarray | None]:
    mode = im.mode
    if mode == "P":
        return _palette_arrays(im)
    if mode == "PA":
        pixels, alpha = _as_arrays(im.convert("RGBA"))
        if _palette_is_grey(im) and icc_colour_space(im.info.get("icc_profile")) != "RGB":
            return np.ascontiguousarray(pixels[..., :1]), alpha
        return pixels, alpha
    if mode == "1":
        if "transparency" in im.info:  # a tRNS colour key: Pillow's own conversion applies it (0 or 1, not 255)
            pixels, alpha = _as_arrays(im.convert("RGBA"))
            return np.ascontiguousarray(pixels[..., :1]), alpha
        return _as_arrays(im.convert("L"))
    if mode in _TO_RGB_MODES:
        return _as_arrays(im.convert("RGB"))
    if mode == "RGBa":
        return _as_arrays(im.convert("RGBA"))
    if mode == "La":
        return _as_arrays(im.convert("LA"))
    if mode in ("L", "LA", "RGB", "RGBA") or mode in _UINT16_MODES:
        if mode in _UINT16_MODES:
            pixels, alpha = _split(np.array(im).astype(np.uint16))  # native byte order
            if im.format == "TIFF" and im.tag_v2.get(262) == 0:  # type: ignore[attr-defined]
                np.subtract(np.uint16(65535), pixels, out=pixels)  # WhiteIsZero (Pillow inverts only 8-bit)
        else:
            pixels, alpha = _as_arrays(im)
        if alpha is None and "transparency" in im.info:
            alpha = _colour_key_alpha(pixels, _key_at_8_bits(im, p, im.info["transparency"]))
        return pixels, alpha
    raise ImageError(
        f"{p}: unsupported pixel mode {mode!r} (e.g. 32-bit integer or float); convert the image "
        "to 8- or 16-bit grey or RGB first"
    )


_STRIP_BYTES = 1 << 22


def _as_arrays(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """(H x W x C pixels, H x W alpha or None) of an 8-bit image, copied a strip of rows at a time:
    ``np.array(im)`` goes through ``tobytes()``, which holds the whole image as encoder chunks and as their
    joined bytes before NumPy copies it once more (2.3 x the array above Pillow's own image), and the
    alpha was split off by one more copy; here only one strip is extra."""
    width, height = im.size
    bands = im.getbands()
    colours = len(bands) - (bands[-1] == "A")
    pixels = np.empty((height, width, colours), dtype=np.uint8)
    alpha = np.empty((height, width), dtype=np.uint8) if colours < len(bands) else None
    for rows in row_strips(height, width * len(bands), _STRIP_BYTES):
        top, bottom = rows.start, min(height, rows.stop)
        strip = np.asarray(im.crop((0, top, width, bottom))).reshape(bottom - top, width, len(bands))
        pixels[top:bottom] = strip[..., :colours]
        if alpha is not None:
            alpha[top:bottom] = strip[..., colours]
    return pixels, alpha


def _palette_arrays(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """A palette image through lookup tables of its palette (and its tRNS alpha): the indices are the only
    copy besides the result (Pillow's RGB(A) conversion held 4 bytes a pixel and two more copies); a grey
    palette is read as grey, unless an RGB profile describes it (the palette holds RGB)."""
    index = _as_arrays(im)[0][..., 0]
    palette = im.getpalette("RGB") or []
    rgb = np.zeros((256, 3), dtype=np.uint8)  # an index past the palette's end reads as black, as in Pillow
    entries = np.asarray(palette[: 3 * 256], dtype=np.uint8).reshape(-1, 3)
    rgb[: len(entries)] = entries
    alpha_table = _palette_alpha(im.info.get("transparency")) if im.has_transparency_data else None
    used = _used_indices(index)
    grey = bool(np.all(rgb[used] == rgb[used][:, :1])) and icc_colour_space(im.info.get("icc_profile")) != "RGB"
    pixels = _lookup(rgb[:, :1] if grey else rgb, index)
    return pixels, None if alpha_table is None else _lookup(alpha_table, index)


def _used_indices(index: np.ndarray) -> np.ndarray:
    """Which of the 256 palette indices occur in the H x W uint8 ``index`` (counted a strip at a time:
    ``np.bincount`` turns its input into 8-byte integers first)."""
    used = np.zeros(256, dtype=bool)
    for rows in row_strips(index.shape[0], 8 * index.shape[1], _STRIP_BYTES):
        used |= np.bincount(index[rows].ravel(), minlength=256) > 0
    return used


def _lookup(table: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``table[index]`` a strip of rows at a time (NumPy turns a uint8 index into 8-byte integers first)."""
    out = np.empty(index.shape + table.shape[1:], dtype=table.dtype)
    for rows in row_strips(index.shape[0], 8 * index.shape[1], _STRIP_BYTES):
        out[rows] = table[index[rows]]
    return out


def _palette_alpha(transparency: object) -> np.ndarray | None:
    """The alpha of each palette index from a PNG/GIF ``transparency`` (per-entry bytes, or one index)."""
    table = np.full(256, 255, dtype=np.uint8)
    if isinstance(transparency, (bytes, bytearray)):
        values = np.frombuffer(bytes(transparency[:256]), dtype=np.uint8)
        table[: len(values)] = values
    elif isinstance(transparency, int) and 0 <= transparency < 256:
        table[transparency] = 0
    else:
        return None
    return table


def _split(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """H x W (x C) with C in 1..4 -> (H x W x {1,3} pixels, H x W alpha or None)."""
    if arr.ndim == 2:
        return np.ascontiguousarray(arr[..., None]), None
    c = arr.shape[2]
    if c in (1, 3):
        return np.ascontiguousarray(arr), None
    return np.ascontiguousarray(arr[..., : c - 1]), np.ascontiguousarray(arr[..., c - 1])


def _palette_is_grey(im: Image.Image) -> bool:
    palette = im.getpalette("RGB")
    if not palette:
        return False
    rgb = np.asarray(palette, dtype=np.int32).reshape(-1, 3)
    used = np.flatnonzero(_used_indices(np.asarray(im.getchannel(0))))
    used = used[used < len(rgb)]
    entries = rgb[used]
    return bool(np.all(entries == entries[:, :1]))


def _key_at_8_bits(im: Image.Image, p: Path, key: object) -> object:
    """A PNG grey tRNS key as the pixels hold it: Pillow scales 2- and 4-bit grey to 8 bits (level 3 of a
    2-bit image reads as 255), not the key (a 2-bit image's transparent 3 matched nothing)."""
    if im.format != "PNG" or im.mode != "L" or isinstance(key, bool) or not isinstance(key, int):
        return key
    header = read_png_header(_head(p))
    if header is None or header.bit_depth >= 8:
        return key
    return key * 255 // (2**header.bit_depth - 1)


def _colour_key_alpha(pixels: np.ndarray, key: object) -> np.ndarray | None:
    """Alpha from a single transparent colour (PNG tRNS for grey or RGB images)."""
    peak = np.iinfo(pixels.dtype).max
    if pixels.shape[2] == 1 and isinstance(key, int):
        hit = pixels[..., 0] == key
    elif pixels.shape[2] == 3 and isinstance(key, tuple) and len(key) == 3:
        hit = np.all(pixels == np.asarray(key, dtype=pixels.dtype), axis=-1)
    else:
        return None
    return np.where(hit, 0, peak).astype(pixels.dtype)


def _exif_from_payload(payload: bytes | None, p: Path, notes: list[str] | None = None) -> Image.Exif:
    exif = Image.Exif()
    if payload is None:
        return exif
    try:
        exif.load(payload)
    except _METADATA_ERRORS as e:
        note(notes, f"{p}: unreadable EXIF block ignored ({e}); no camera name, orientation as stored",
             ImageWarning, stacklevel=5)
        return Image.Exif()
    return exif


def _decode_opencv(
    p: Path, data: bytes, stored_size: tuple[int, int], *, grey: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """16-bit decode by OpenCV of ``data`` (orientation already neutralised); BGR(A) -> RGB(A)."""
    import cv2

    try:
        arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as e:  # its own limits are asserts (a side over CV_IO_MAX_IMAGE_WIDTH, ...)
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else "an OpenCV error"
        raise ImageError(f"{p}: OpenCV cannot decode this 16-bit image ({reason}); convert it to 8-bit, or "
                         "re-export it") from e
    width, height = stored_size
    if arr is None:
        raise ImageError(
            f"{p}: 16-bit image data is truncated, damaged, or in a layout OpenCV cannot decode (such as "
            "16-bit CMYK); re-copy the file, or convert it to 16-bit RGB or grey"
        )
    if arr.dtype in (np.int16, np.int32, np.float16, np.float32, np.float64):
        raise ImageError(
            f"{p}: unsupported samples ({arr.dtype}, not unsigned 8- or 16-bit); convert the image to "
            "8- or 16-bit grey or RGB first"
        )
    if arr.dtype != np.uint16 or arr.shape[:2] != (height, width):
        raise ImageError(
            f"{p}: decoded {arr.shape[1]}x{arr.shape[0]} {arr.dtype}, but the header says {width}x{height} 16-bit; "
            "the file is inconsistent, re-export it"
        )
    if arr.ndim == 2:
        pixels, alpha = arr[..., None], None
    elif arr.shape[2] == 3:
        pixels, alpha = arr[..., ::-1], None
    elif arr.shape[2] == 4:
        pixels, alpha = arr[..., 2::-1], arr[..., 3]
    else:
        raise ImageError(f"{p}: unsupported channel count {arr.shape[2]} in a 16-bit image")
    if grey and pixels.shape[2] == 3:
        pixels = pixels[..., :1]
    return np.ascontiguousarray(pixels), None if alpha is None else np.ascontiguousarray(alpha)
