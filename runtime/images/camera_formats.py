"""Camera file formats adassr does not read, named instead of left out or misread.

Phones save HEIF (``.heic``; AVIF and JPEG XL on some), and cameras, drones and microscopes save raw
files (DNG, NEF, CR2, ARW, ...). None of these is decoded here: HEIF needs a codec under a licence the
product cannot ship, and a raw file needs developing (demosaicking, white balance, a tone curve), which
is the photographer's choice. What this module does instead:

- a folder's listing names the files it leaves out for their format (:func:`left_out_note`), so a
  folder of ``.heic`` photos is not silently half-processed;
- a file whose content is one of these formats gets an error that names the format and the way out
  (:func:`sniffed_format`), not "not a readable image";
- a raw file built on TIFF (DNG, NEF, ARW, ...) is refused although Pillow would open it
  (:func:`raw_tiff_problem`): what it would read is the raw file's first image, often a small preview
  (160 x 120 in a NEF) that would be upscaled in place of the photo.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType

HEIF = "HEIF (HEIC)"
AVIF = "AVIF"
JPEG_XL = "JPEG XL"
RAW = "raw"

UNREAD_PHOTO_SUFFIXES: Mapping[str, str] = MappingProxyType({
    **dict.fromkeys((".heic", ".heif", ".hif"), HEIF),
    ".avif": AVIF,
    ".jxl": JPEG_XL,
    **dict.fromkeys((".dng", ".nef", ".nrw", ".cr2", ".cr3", ".crw", ".arw", ".srf", ".sr2", ".orf", ".rw2",
                     ".raf", ".pef", ".srw", ".rwl", ".3fr", ".iiq", ".x3f", ".erf", ".mrw", ".dcr", ".kdc",
                     ".mos", ".raw"), RAW),
})
"""Suffixes (lower case) of camera formats that are not read, and the kind of format each is."""

_ADVICE = {
    HEIF: "convert to JPEG or PNG first (e.g. `heif-convert IMG.HEIC IMG.jpg`, or set the phone to save "
          "'Most Compatible' JPEG)",
    AVIF: "convert to JPEG or PNG first (e.g. `avifdec IMG.avif IMG.png`)",
    JPEG_XL: "convert to JPEG or PNG first (e.g. `djxl IMG.jxl IMG.png`)",
    RAW: "develop to a 16-bit TIFF or PNG (or a JPEG) in a raw converter first (e.g. darktable, RawTherapee, "
         "`dcraw -T -6`)",
}

_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1",
                          b"mif2", b"mif3"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_RAW_BRANDS = frozenset({b"crx "})  # Canon CR3
_JXL_CODESTREAM = b"\xff\x0a"
_JXL_CONTAINER = b"\x00\x00\x00\x0cJXL \r\n\x87\n"

DNG_VERSION_TAG = 50706
NEW_SUBFILE_TYPE_TAG = 254
_REDUCED_RESOLUTION = 1
"""NewSubFileType bit 0: this image is a reduced-resolution version of another image in the file."""


def advice(kind: str) -> str:
    """What to do with a file of ``kind`` (one of this module's format kinds)."""
    return _ADVICE[kind]


def suffix_format(path: Path) -> str | None:
    """The kind of unread camera format ``path``'s suffix names (``".HEIC"`` -> :data:`HEIF`), or None."""
    return UNREAD_PHOTO_SUFFIXES.get(path.suffix.lower())


def unread_photos(paths: Iterable[Path]) -> list[Path]:
    """The visible regular files among ``paths`` whose suffix names an unread camera format, sorted: what a
    folder's listing names as left out (a folder named ``x.heic`` or macOS's ``._IMG.HEIC`` is none)."""
    return sorted(p for p in paths if suffix_format(p) is not None and not p.name.startswith(".") and p.is_file())


def sniffed_format(head: bytes) -> str | None:
    """The kind of unread camera format a file's first bytes (16 or more) show, or None.

    ISO base media files (HEIF, AVIF, CR3) by the major brand of their ``ftyp`` box, JPEG XL by its
    signatures, and the raw formats with headers of their own (Olympus ORF, Panasonic RW2, Fujifilm
    RAF, Canon CR2's TIFF header with its ``CR`` mark).
    """
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _HEIF_BRANDS:
            return HEIF
        if brand in _AVIF_BRANDS:
            return AVIF
        if brand in _RAW_BRANDS:
            return RAW
        return None
    if head.startswith(_JXL_CODESTREAM) or head.startswith(_JXL_CONTAINER):
        return JPEG_XL
    if head[:4] in (b"IIRO", b"IIRS", b"MMOR", b"IIU\x00") or head.startswith(b"FUJIFILMCCD-RAW"):
        return RAW
    if head[:4] == b"II*\x00" and head[8:10] == b"CR":
        return RAW
    return None


def raw_tiff_problem(tags: Mapping[int, object]) -> str | None:
    """Why a TIFF whose first directory holds ``tags`` is a raw file's, or None for an ordinary TIFF.

    A DNG version tag marks a DNG; a first image marked as a reduced-resolution version of another
    (NewSubFileType bit 0) is a preview, as raw formats built on TIFF put first (NEF, DNG, ARW, ...).
    """
    if DNG_VERSION_TAG in tags:
        return "a DNG raw file (what would be read is its first image, often a small preview, not the photo)"
    subfile = tags.get(NEW_SUBFILE_TYPE_TAG)
    if isinstance(subfile, int) and subfile & _REDUCED_RESOLUTION:
        return ("a file whose first image is a reduced-resolution preview of another (a raw file's, e.g. NEF or "
                "ARW), not the photo")
    return None


def left_out_note(paths: Iterable[Path]) -> str | None:
    """One line naming the visible files among ``paths`` that are left out because their suffix is an
    unread camera format (count, kinds, a few names, what to do), or None when there are none."""
    found: dict[str, list[Path]] = {}
    for path in paths:
        kind = suffix_format(path)
        if kind is not None and not path.name.startswith("."):
            found.setdefault(kind, []).append(path)
    if not found:
        return None
    count = sum(len(v) for v in found.values())
    parts = []
    for kind, files in found.items():
        names = ", ".join(p.name for p in sorted(files)[:3]) + (", ..." if len(files) > 3 else "")
        parts.append(f"{kind} files ({len(files)}: {names}): {advice(kind)}")
    noun, verb = ("file", "was") if count == 1 else ("files", "were")
    return f"{count} {noun} in formats adassr does not read {verb} left out: " + "; ".join(parts)
