"""The EXIF block an upscaled image carries over from its photo.

What is kept: the photo's description (IFD0: camera make and model, date, description, artist,
copyright, software, rating) and its Exif and GPS directories (capture date, exposure, lens,
location, ...), with the interoperability directory. What is not: anything the new pixels make
wrong or that cannot be moved safely: the orientation (already applied to the pixels), the pixel
dimensions (``PixelXDimension`` / ``PixelYDimension``, and the interoperability directory's related
image size), the resolution (the same DPI would print the x4 image four times as large), a TIFF's
image structure tags (strips, bits per sample, compression, ...), the thumbnail (IFD1, of the
original pixels) and the maker note (vendor data with offsets into the original file, which a move
breaks).

The entries are copied as they are stored: their type, count and value bytes (only put into
little-endian order), never through a decoded value, so text in any encoding (a UTF-8 ``Make`` or
``Artist``), ``UNDEFINED`` fields and rationals come out as they went in. The payload is
TIFF-structured (a little-endian TIFF header and IFD0, without JPEG's ``Exif\\0\\0`` prefix): what
PNG's ``eXIf`` chunk and WebP's ``EXIF`` chunk hold, and JPEG's APP1 segment after the prefix. TIFF
output takes the same directories into its own IFD0 (:func:`tiff_exif_blob`). A source that is
malformed beyond an entry (a directory out of the data, a loop of directories) carries nothing;
an entry of an unknown type, with its value out of the data, or whose value would take the values
carried past 1 MiB is left out (a TIFF upload can name 1024 entries of gigabytes each: they are
never read, nor are the values of entries that are not carried).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

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
})
_INTEROP_DROPPED = frozenset({0x1001, 0x1002})  # RelatedImageWidth, RelatedImageLength

# TIFF field types: bytes per value, and the size of the unit whose byte order a value has (1: none)
TIFF_TYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
_UNIT_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 4, 6: 1, 7: 1, 8: 2, 9: 4, 10: 4, 11: 4, 12: 8, 13: 4}
_LONG = 4
_MAX_ENTRIES = 1024  # per directory: a camera writes a few dozen
_MAX_VALUE_BYTES = 1 << 20  # all the values carried together (a JPEG's whole EXIF is at most 64 KiB)


@dataclass(frozen=True)
class _Entry:
    tag: int
    kind: int  # the TIFF field type
    count: int
    data: bytes  # the value, little-endian


@dataclass(frozen=True)
class _Directory:
    entries: tuple[_Entry, ...]
    children: tuple[tuple[int, _Directory], ...] = ()  # (pointer tag, directory)


def carried_exif(payload: bytes | None) -> bytes | None:
    """The EXIF payload an output carries (see the module docstring) from a photo's raw EXIF block
    (TIFF-structured, with or without the ``Exif\\0\\0`` prefix), or None when it has nothing worth
    carrying or cannot be read."""
    if not payload:
        return None
    data = payload[len(EXIF_PREFIX):] if payload.startswith(EXIF_PREFIX) else payload
    return _carried(_reader(data))


def _reader(data: bytes) -> Callable[[int, int], bytes]:
    """``read(offset, size)`` over ``data``; ValueError for a range out of it."""
    def read(offset: int, size: int) -> bytes:
        if offset < 0 or offset + size > len(data):
            raise ValueError("out of the EXIF block")
        return data[offset:offset + size]

    return read


def carried_tiff_exif(fh: BinaryIO) -> bytes | None:
    """:func:`carried_exif` of a TIFF file's own first directory (a TIFF keeps its EXIF there)."""
    def read(offset: int, size: int) -> bytes:
        fh.seek(offset)
        chunk = fh.read(size)
        if len(chunk) != size:
            raise ValueError("out of the file")
        return chunk

    return _carried(read)


def _carried(read: Callable[[int, int], bytes]) -> bytes | None:
    try:
        tree = _read_tree(read)
    except (ValueError, struct.error, OSError):
        return None
    if tree is None or not (tree.entries or tree.children):
        return None
    return b"II*\x00" + struct.pack("<I", 8) + _directory_bytes(tree, 8)[0]


def _read_tree(read: Callable[[int, int], bytes]) -> _Directory | None:
    """IFD0's kept entries, with the Exif (and in it the interoperability) and GPS directories."""
    head = read(0, 8)
    endian = {b"II*\x00": "<", b"MM\x00*": ">"}.get(head[:4])
    if endian is None:  # BigTIFF or no TIFF structure
        return None
    seen: set[int] = set()
    budget = [_MAX_VALUE_BYTES]  # value bytes left to read, for the whole tree

    def directory(offset: int, keep: Callable[[int], bool]) -> tuple[tuple[_Entry, ...], dict[int, int]]:
        return _entries(read, endian, offset, seen, budget, keep)

    ifd0, pointers = directory(struct.unpack(endian + "I", head[4:])[0], lambda tag: tag in _IFD0_KEPT)
    children = []
    if EXIF_IFD in pointers:
        sub, sub_pointers = directory(pointers[EXIF_IFD], lambda tag: tag not in _EXIF_DROPPED)
        nested: tuple[tuple[int, _Directory], ...] = ()
        if INTEROP_IFD in sub_pointers:
            interop, _ = directory(sub_pointers[INTEROP_IFD], lambda tag: tag not in _INTEROP_DROPPED)
            nested = ((INTEROP_IFD, _Directory(interop)),) if interop else ()
        if sub or nested:
            children.append((EXIF_IFD, _Directory(sub, nested)))
    if GPS_IFD in pointers:
        gps, _ = directory(pointers[GPS_IFD], lambda tag: True)
        if gps:
            children.append((GPS_IFD, _Directory(gps)))
    return _Directory(ifd0, tuple(children))


def _entries(read: Callable[[int, int], bytes], endian: str, offset: int, seen: set[int], budget: list[int],
             keep: Callable[[int], bool]) -> tuple[tuple[_Entry, ...], dict[int, int]]:
    """The entries of the directory at ``offset`` whose tag ``keep`` accepts, sorted by tag (values
    little-endian; the others' values are never read), and the offsets its pointers to the Exif, GPS
    and interoperability directories point at; ``budget[0]``: the value bytes still to be read."""
    if offset in seen:
        raise ValueError("a loop of directories")
    seen.add(offset)
    (count,) = struct.unpack(endian + "H", read(offset, 2))
    if count > _MAX_ENTRIES:
        raise ValueError("too many entries")
    raw = read(offset + 2, 12 * count)
    found: dict[int, _Entry] = {}
    pointers: dict[int, int] = {}
    for k in range(count):
        tag, kind, n = struct.unpack_from(endian + "HHI", raw, 12 * k)
        field = raw[12 * k + 8:12 * k + 12]
        if tag in (EXIF_IFD, GPS_IFD, INTEROP_IFD):
            if kind in (_LONG, 13) and n == 1:
                pointers[tag] = struct.unpack(endian + "I", field)[0]
            continue
        size = TIFF_TYPE_BYTES.get(kind, 0) * n
        if not keep(tag) or size == 0 or size > budget[0]:  # not carried, an unknown type, or past the budget
            continue
        try:
            value = field[:size] if size <= 4 else read(struct.unpack(endian + "I", field)[0], size)
        except ValueError:  # a value out of the data: this entry only is left out (and costs no budget)
            continue
        budget[0] -= size
        found[tag] = _Entry(tag, kind, n, _little(value, _UNIT_BYTES[kind], endian))
    return tuple(found[tag] for tag in sorted(found)), pointers


def _little(value: bytes, unit: int, endian: str) -> bytes:
    """``value`` (units of ``unit`` bytes in ``endian`` order) in little-endian order."""
    if endian == "<" or unit == 1:
        return value
    return b"".join(value[i:i + unit][::-1] for i in range(0, len(value), unit))


def _padded(data: bytes) -> bytes:
    return data + b"\0" * (len(data) % 2)  # values start on a word boundary


def _directory_bytes(directory: _Directory, at: int) -> tuple[bytes, list[tuple[int, int, int, bytes]]]:
    """``directory`` laid out at offset ``at`` (even): its entries, next-directory pointer, values and
    sub-directories; and its ``(tag, type, count, 4-byte field)`` entries."""
    data, entries = _values_and_children(directory, at + 2 + 12 * (len(directory.entries) +
                                                                  len(directory.children)) + 4)
    head = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI", t, k, n) + f for t, k, n, f in entries)
    return head + struct.pack("<I", 0) + data, entries


def _values_and_children(directory: _Directory, at: int) -> tuple[bytes, list[tuple[int, int, int, bytes]]]:
    """The out-of-line values and the sub-directories of ``directory``, laid out from offset ``at``
    (even), and its entries (sorted by tag, as TIFF wants) whose fields point there."""
    values = b""
    entries = []
    for e in directory.entries:
        if len(e.data) <= 4:
            entries.append((e.tag, e.kind, e.count, e.data.ljust(4, b"\0")))
        else:
            entries.append((e.tag, e.kind, e.count, struct.pack("<I", at + len(values))))
            values += _padded(e.data)
    blobs = b""
    for tag, child in directory.children:
        where = at + len(values) + len(blobs)
        entries.append((tag, _LONG, 1, struct.pack("<I", where)))
        blobs += _directory_bytes(child, where)[0]
    return values + blobs, sorted(entries, key=lambda entry: entry[0])


def tiff_exif_blob(payload: bytes, at: int) -> tuple[bytes, list[tuple[int, int, int, bytes]]]:
    """A payload of :func:`carried_exif` for a little-endian TIFF whose next bytes start at (even) offset
    ``at``: the bytes to write there (IFD0's out-of-line values, then the Exif and GPS directories),
    and the ``(tag, type, count, value field)`` entries to put in the TIFF's own IFD0."""
    tree = _read_tree(_reader(payload))
    if tree is None:
        return b"", []
    return _values_and_children(tree, at)
