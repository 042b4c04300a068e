"""The PNG / TIFF byte helpers of :mod:`adassr.runtime.images.containers`, on small real files and on
hand-built headers (big-endian, BigTIFF, cut short) that the reader meets in the wild."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from adassr.runtime.images import read_image
from adassr.runtime.images.containers import (
    PNG_SIGNATURE,
    png_chunk_counts,
    png_without_exif,
    read_png_header,
    tiff_without_orientation,
)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width: int, height: int, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def test_read_png_header_reads_width_height_depth_and_colour_type() -> None:
    head = _png(7, 3, "RGBA")[:33]
    header = read_png_header(head)
    assert header is not None
    assert (header.width, header.height, header.bit_depth, header.colour_type) == (7, 3, 8, 6)


def test_read_png_header_refuses_a_short_head_and_a_first_chunk_other_than_ihdr() -> None:
    png = _png(7, 3)
    assert read_png_header(png[:26]) is not None
    assert read_png_header(png[:25]) is None  # the colour type byte is missing: not an IndexError
    assert read_png_header(png[:12] + b"IHDX" + png[16:]) is None
    assert read_png_header(b"GIF89a" + png[6:]) is None


def test_png_without_exif_removes_every_exif_chunk_and_returns_the_first_payload() -> None:
    png = _png(4, 2)
    ihdr_end = len(PNG_SIGNATURE) + 25
    with_exif = (png[:ihdr_end] + _chunk(b"eXIf", b"MM\0*first") + png[ihdr_end:-12]
                 + _chunk(b"eXIf", b"II*\0second") + png[-12:])
    data, payload = png_without_exif(with_exif)
    assert payload == b"MM\0*first"  # the chunk body, without its CRC, and the first of two
    assert data == png
    assert png_chunk_counts(with_exif)[b"eXIf"] == 2


def test_png_without_exif_keeps_a_truncated_tail_for_the_decoder() -> None:
    png = _png(4, 2)
    cut = png[:-7]  # IEND cut short: not a whole chunk
    assert png_without_exif(cut) == (cut, None)
    assert png_without_exif(b"not a png") == (b"not a png", None)


def test_png_chunk_counts_counts_the_last_chunk_and_nothing_of_other_files() -> None:
    counts = png_chunk_counts(_png(4, 2))
    assert counts[b"IHDR"] == 1 and counts[b"IEND"] == 1
    assert png_chunk_counts(_png(4, 2)[:-1]).get(b"IEND") is None
    assert png_chunk_counts(b"\0" * 8 + _chunk(b"tEXt", b"a\0b")) == {}


def _tiff(order: str, *, big: bool = False, entries: list[tuple[int, int, int, bytes]], ifd: int | None = None,
          next_ifd: bool = True) -> bytes:
    """A TIFF header and its first IFD (right after the header unless ``ifd`` says otherwise); each entry
    (tag, type, count, inline value bytes, padded)."""
    mark = b"II" if order == "<" else b"MM"
    if big:
        first = 16 if ifd is None else ifd
        out = mark + struct.pack(order + "HHHQ", 43, 8, 0, first) + struct.pack(order + "Q", len(entries))
        for tag, typ, count, value in entries:
            out += struct.pack(order + "HHQ", tag, typ, count) + value.ljust(8, b"\0")
        return out + (struct.pack(order + "Q", 0) if next_ifd else b"")
    first = 8 if ifd is None else ifd
    out = mark + struct.pack(order + "HI", 42, first) + struct.pack(order + "H", len(entries))
    for tag, typ, count, value in entries:
        out += struct.pack(order + "HHI", tag, typ, count) + value.ljust(4, b"\0")
    return out + (struct.pack(order + "I", 0) if next_ifd else b"")


def test_tiff_without_orientation_in_big_endian_classic_and_bigtiff() -> None:
    for big in (False, True):
        entries = [(256, 3, 1, struct.pack(">H", 5)), (274, 3, 1, struct.pack(">H", 6))]
        data = _tiff(">", big=big, entries=entries)
        want = _tiff(">", big=big, entries=[entries[0], (274, 3, 1, struct.pack(">H", 1))])
        assert tiff_without_orientation(data) == want, big


def test_tiff_without_orientation_in_a_little_endian_bigtiff_writes_the_value_not_the_count() -> None:
    entries = [(274, 3, 1, struct.pack("<H", 6))]
    data = _tiff("<", big=True, entries=entries)
    assert tiff_without_orientation(data) == _tiff("<", big=True, entries=[(274, 3, 1, struct.pack("<H", 1))])


def test_tiff_without_orientation_finds_the_tag_in_an_entry_that_ends_the_file() -> None:
    data = _tiff("<", entries=[(274, 3, 1, struct.pack("<H", 8))], next_ifd=False)
    assert tiff_without_orientation(data) == _tiff("<", entries=[(274, 3, 1, struct.pack("<H", 1))], next_ifd=False)


def test_tiff_without_orientation_leaves_a_value_too_wide_for_its_entry_alone() -> None:
    # a LONG8 orientation in a classic TIFF: 8 bytes do not fit the entry's 4, so it is stored elsewhere
    data = _tiff("<", entries=[(274, 16, 1, struct.pack("<I", 64)), (275, 3, 1, struct.pack("<H", 6))])
    assert tiff_without_orientation(data) == data


def test_tiff_without_orientation_leaves_damaged_headers_as_they_are() -> None:
    short_big = b"II+\x00" + struct.pack("<HHI", 8, 0, 16)  # a BigTIFF cut inside its first-IFD offset
    assert tiff_without_orientation(short_big) == short_big
    beyond = _tiff("<", entries=[(274, 3, 1, struct.pack("<H", 6))], ifd=4000)
    assert tiff_without_orientation(beyond) == beyond
    for big in (False, True):
        cut = _tiff("<", big=big, entries=[(274, 3, 1, struct.pack("<H", 6))])[:-12]  # the entry cut short
        assert tiff_without_orientation(cut) == cut
    assert tiff_without_orientation(b"II\x2b") == b"II\x2b"


def test_a_big_endian_16_bit_tiff_is_turned_once(tmp_path: Path) -> None:
    """A Motorola-order (``MM``) TIFF's orientation must be neutralised before decoding, as an ``II`` one's is."""
    stored = (np.arange(6 * 9).reshape(6, 9) * 1000).astype(np.uint16)
    exif = Image.Exif()
    exif[274] = 6
    path = tmp_path / "be.tif"
    Image.frombytes("I;16B", (9, 6), stored.astype(">u2").tobytes()).save(path, exif=exif.tobytes())
    assert path.read_bytes()[:2] == b"MM"
    image = read_image(path)
    np.testing.assert_array_equal(image.pixels[..., 0], np.rot90(stored, -1))
