"""Damaged JPEG image data is refused, not decoded grey; good JPEGs decode to Pillow's exact pixels.

libjpeg only warns about damaged entropy-coded data, and Pillow decodes such a file without an error
(these tests check that it still does, so each case is one the reader must catch itself): the part
after the damage comes out grey or garbled. The photos are crops of the bundled test photos.
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from adassr.runtime.errors import ImageError
from adassr.runtime.images import ImageWarning, read_image
from adassr.runtime.images.jpeg_reader import (
    MAX_END_PADDING,
    decode_jpeg_checked,
    extraneous_bytes,
    extraneous_is_damage,
    is_damage,
    progressive_shortfall,
    scan_data_start,
    without_header_gaps,
)

REPO = Path(__file__).resolve().parents[2]
HR = REPO / "tests" / "data" / "hr"
SAMPLES = REPO / "samples" / "cameras"


def _photo(name: str = "coffee.png", h: int = 160, w: int = 224) -> np.ndarray:
    with Image.open(HR / name) as im:
        rgb = np.asarray(im.convert("RGB"))
    return rgb[40 : 40 + h, 60 : 60 + w].copy()


def _jpeg(pixels: np.ndarray, mode: str = "RGB", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    kwargs.setdefault("quality", 90)
    Image.fromarray(pixels).convert(mode).save(buf, format="JPEG", **kwargs)
    return buf.getvalue()


def _jpeg_with_restarts(pixels: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_RST_INTERVAL, 4])
    assert ok
    return data.tobytes()


def _scan_start(data: bytes) -> int:
    """Offset of the first entropy-coded byte (after the first SOS segment)."""
    sos = data.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")


def _cut_keeping_end(data: bytes) -> bytes:
    """The scan cut in its middle, the end-of-image marker written after it (a write cut short)."""
    start = _scan_start(data)
    return data[: start + (len(data) - start) // 2] + b"\xff\xd9"


def _bytes_lost(data: bytes) -> bytes:
    """300 bytes lost from the middle of the scan (a dropped packet)."""
    middle = _scan_start(data) + (len(data) - _scan_start(data)) // 2
    return data[:middle] + data[middle + 300 :]


def _stretch_repeated(data: bytes, length: int = 300, scan_end: bytes = b"\xff\xd9") -> bytes:
    """``length`` bytes of the middle of the scan that ends at ``scan_end`` delivered twice (a packet sent
    again): the scan's blocks end before its data does."""
    start = _scan_start(data)
    middle = (start + data.index(scan_end, start)) // 2
    return data[:middle] + data[middle - length :]


def _tail_zeroed(data: bytes) -> bytes:
    """The scan's data zeros from 40 % on, the end marker kept (unwritten sectors, a download's missing range
    filled in): the decoder reads zeros as codes, then reports the rest as extraneous bytes."""
    start = _scan_start(data)
    at = start + (len(data) - start) * 2 // 5
    return data[:at] + b"\x00" * (len(data) - 2 - at) + b"\xff\xd9"


def _segment_lost(data: bytes) -> bytes:
    """One restart interval's data lost, with its RST marker."""
    first = data.index(b"\xff\xd2", _scan_start(data))  # RST2 .. RST3 dropped: RST4 follows RST1
    second = data.index(b"\xff\xd3", first + 2)
    return data[:first] + data[second + 2 :]


def _pillow_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        arr = np.asarray(im.convert("RGB") if im.mode == "CMYK" else im)
    return arr[..., None] if arr.ndim == 2 else arr


DAMAGED = {
    "cut, end marker kept": lambda: _cut_keeping_end(_jpeg(_photo())),
    "bytes lost": lambda: _bytes_lost(_jpeg(_photo())),
    "progressive, cut": lambda: _cut_keeping_end(_jpeg(_photo(), progressive=True)),
    "grey, bytes lost": lambda: _bytes_lost(_jpeg(_photo(), "L")),
    "CMYK, cut": lambda: _cut_keeping_end(_jpeg(_photo(), "CMYK")),
    "restart interval lost": lambda: _segment_lost(_jpeg_with_restarts(_photo())),
    "a stretch repeated": lambda: _stretch_repeated(_jpeg(_photo())),
    "the scan's tail zero-filled": lambda: _tail_zeroed(_jpeg(_photo(), quality=95)),  # decoded on, then left
    "progressive, a stretch of its first scan repeated": lambda: _stretch_repeated(
        _jpeg(_photo(), progressive=True), scan_end=b"\xff\xc4"),  # data left before the next scan's table
    "MPO first frame, cut": lambda: _cut_keeping_end((SAMPLES / "nintendo" / "frozenpond.mpo").read_bytes()[:60_000]),
    # the header's stray bytes are dropped once; the scan's own extraneous bytes are then damage, not a second
    # cleaning and a decode through Pillow unchecked (mutation testing)
    "stray header bytes, and a stretch repeated": lambda: _stretch_repeated(_with_header_gap(_jpeg(_photo()))),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_image_data_is_refused(tmp_path: Path, case: str) -> None:
    data = DAMAGED[case]()
    _pillow_pixels(data)  # Pillow alone decodes it without a word: the reader must notice
    path = tmp_path / ("damaged.mpo" if "MPO" in case else "damaged.jpg")
    path.write_bytes(data)
    with pytest.raises(ImageError, match="damaged") as err:
        read_image(path)
    assert str(path) in str(err.value) and "grey or garbled" in str(err.value)


GOOD = {
    "baseline 4:2:0": lambda: _jpeg(_photo()),
    "4:4:4": lambda: _jpeg(_photo(), subsampling=0),
    "progressive, optimised": lambda: _jpeg(_photo(), progressive=True, optimize=True),
    "grey": lambda: _jpeg(_photo(), "L"),
    "RGB without YCbCr (Adobe)": lambda: _jpeg(_photo(), keep_rgb=True),
    "restart markers": lambda: _jpeg_with_restarts(_photo()),
    "odd size": lambda: _jpeg(_photo(h=37, w=53)),
    "camera sample": lambda: (SAMPLES / "canon" / "xmp_test.jpg").read_bytes(),
    "MPO sample": lambda: (SAMPLES / "nintendo" / "frozenpond.mpo").read_bytes(),
}


@pytest.mark.parametrize("case", list(GOOD))
def test_good_jpegs_decode_to_pillows_pixels(tmp_path: Path, case: str) -> None:
    data = GOOD[case]()
    path = tmp_path / "good.jpg"
    path.write_bytes(data)
    with Image.open(path) as im:
        assert im.mode in ("RGB", "L")
        size = im.size
    pixels = decode_jpeg_checked(path, data, "L" if case == "grey" else "RGB", size)
    assert pixels is not None, "TurboJPEG must decode this file itself"
    np.testing.assert_array_equal(pixels, _pillow_pixels(data))
    np.testing.assert_array_equal(read_image(path).pixels, _pillow_pixels(data))


def _with_thumbnail(pixels: np.ndarray, **kwargs: object) -> bytes:
    """A JPEG with an EXIF block that holds a baseline thumbnail (scan markers inside an APP1 segment)."""
    thumb = _jpeg(pixels[::4, ::4].copy())
    exif = Image.Exif()
    exif[0x010F] = "Canon"
    head = exif.tobytes()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", exif=head + thumb, quality=90, **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize("variant", ["RGB", "grey", "RGB with a thumbnail"])
def test_a_progressive_jpeg_cut_at_a_scan_boundary_reads_with_a_note(tmp_path: Path, variant: str) -> None:
    """A progressive JPEG whose last scans are missing but whose end marker was written decodes without any
    warning from libjpeg, to a blurrier or coarser picture (its refinement scans are gone): it was read as
    good and upscaled, or trained on, without a word. Every cut at a scan boundary reads with a note (not a
    refusal: the standard allows a progression that stops early on purpose, which the headers cannot tell
    from a cut); the whole file reads without one."""
    pixels = _photo()
    data = (_with_thumbnail(pixels, progressive=True) if "thumbnail" in variant
            else _jpeg(pixels, "L" if variant == "grey" else "RGB", progressive=True))
    scans = [at for at in range(len(data)) if data.startswith(b"\xff\xda", at)]
    image_data = scan_data_start(data)  # the image's own first scan, after the EXIF block and its thumbnail
    assert image_data is not None
    own = [at for at in scans if at >= data.rfind(b"\xff\xda", 0, image_data)]
    assert len(own) >= 6 and (len(scans) > len(own)) == ("thumbnail" in variant)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    assert progressive_shortfall(data) is None
    notes: list[str] = []
    np.testing.assert_array_equal(read_image(path, notes=notes).pixels, _pillow_pixels(data))
    assert notes == []
    for at in own[1:]:
        cut = data[:at] + b"\xff\xd9"
        assert progressive_shortfall(cut) is not None, at
        path.write_bytes(cut)
        with pytest.warns(ImageWarning, match=r"the progressive JPEG's scans stop before its picture is complete "
                          r"\(component 1: .* short of full precision.*\), so it reads blurred or coarse: the file was "
                          r"cut between two scans \(re-copy it from the camera\) or written so on purpose") as said:
            read = read_image(path)
        assert len(said) == 1 and str(said[0].message).startswith(f"{path}: ")
        np.testing.assert_array_equal(read.pixels, _pillow_pixels(cut))  # Pillow decodes it without a word


def test_progressive_shortfall_judges_only_progressive_files_it_can_follow() -> None:
    pixels = _photo(h=48, w=64)
    progressive = _jpeg(pixels, progressive=True)
    assert progressive_shortfall(_jpeg(pixels)) is None  # baseline: nothing to judge
    assert progressive_shortfall(progressive) is None
    assert progressive_shortfall(progressive[:40]) is None  # the header cannot be followed: the decoder says so
    assert progressive_shortfall(b"not a jpeg") is None
    later = progressive.index(b"\xff\xda", _scan_start(progressive))
    filled = progressive[:later] + b"\xff\xff\xff" + progressive[later:]  # fill bytes before a marker are allowed
    assert progressive_shortfall(filled) is None
    assert progressive_shortfall(filled[:filled.rindex(b"\xff\xda")] + b"\xff\xd9") is not None
    first_scan_only = progressive[:later] + b"\xff\xd9"
    said = progressive_shortfall(first_scan_only)
    assert said is not None and said.startswith("component 1: 64 of 64 coefficients short of full precision, 63 "
                                                "never coded"), said
    # Scan headers beyond the standard's limits (a review's crafted file: 500 scans listing 255 components each,
    # which cost 8 million steps, over a second, before the decoder refused it): not followed, left to the decoder.
    first = progressive.rfind(b"\xff\xda", 0, _scan_start(progressive))
    header = progressive[:first]
    for ids, band in (([1] * 255, (0, 63)), ([1, 2], (1, 63)), ([1, 1], (0, 0)), ([1, 2, 3], (0, 5)), ([], (0, 0))):
        sos = bytes([len(ids), *(b for c in ids for b in (c, 0)), *band, 0])
        scan = b"\xff\xda" + (len(sos) + 2).to_bytes(2, "big") + sos + b"\x00" * 8
        assert progressive_shortfall(header + scan * 3 + b"\xff\xd9") is None, (ids[:3], band)


def test_cmyk_is_checked_then_decoded_by_pillow(tmp_path: Path) -> None:
    data = _jpeg(_photo(), "CMYK")
    path = tmp_path / "cmyk.jpg"
    path.write_bytes(data)
    assert decode_jpeg_checked(path, data, "CMYK", (224, 160)) is None
    np.testing.assert_array_equal(read_image(path).pixels, _pillow_pixels(data))


def _with_header_gap(data: bytes) -> bytes:
    """Five stray bytes before the quantisation table's marker, as some encoders write (libjpeg warns
    "5 extraneous bytes before marker 0xdb" and decodes the picture correctly)."""
    dqt = data.index(b"\xff\xdb")
    return data[:dqt] + b"\x00\x11\x22\x33\x44" + data[dqt:]


def test_stray_bytes_between_header_segments_are_not_damage(tmp_path: Path) -> None:
    good = _jpeg(_photo())
    gapped = _with_header_gap(good)
    path = tmp_path / "gap.jpg"
    path.write_bytes(gapped)
    assert without_header_gaps(gapped) == good and without_header_gaps(good) is None
    assert decode_jpeg_checked(path, gapped, "RGB", (224, 160)) is not None  # still decoded here, and checked
    np.testing.assert_array_equal(read_image(path).pixels, _pillow_pixels(good))
    damaged = tmp_path / "gap_cut.jpg"
    damaged.write_bytes(_cut_keeping_end(gapped))
    with pytest.raises(ImageError, match="damaged"):
        read_image(damaged)


@pytest.mark.parametrize("padding", [b"\xff\x00\x12\x34", b"\x55" * 10, b"\x55" * 300, b"\x00" * 4000,
                                     b"\x00" * 300 + b"\xff"])  # a fill byte before the marker
def test_padding_before_the_end_marker_is_not_damage(tmp_path: Path, padding: bytes) -> None:
    """A few bytes, or any number of one repeated value after the scan's end, before the end marker (fill bytes
    0xFF allowed between): an encoder's padding."""
    good = _jpeg(_photo())
    path = tmp_path / "tail.jpg"
    path.write_bytes(good[:-2] + padding + b"\xff\xd9")
    np.testing.assert_array_equal(read_image(path).pixels, _pillow_pixels(good))


def test_leftover_data_before_the_end_marker_is_damage(tmp_path: Path) -> None:
    good = _jpeg(_photo())
    path = tmp_path / "tail.jpg"
    leftover = np.random.default_rng(0).integers(0, 255, 300, dtype=np.uint8).tobytes()  # no 0xff: no marker
    path.write_bytes(good[:-2] + leftover + b"\xff\xd9")
    with pytest.raises(ImageError, match="extraneous bytes before marker 0xd9"):
        read_image(path)


@pytest.mark.parametrize("data", [b"", b"\xff\xd8", b"\xff\xd8\xff", b"\xff\xd8\xff\xdb\x00",
                                  b"\xff\xd8\xff\xdb\x00\x40", b"\xff\xd8\x00\x00", b"GIF89a"])
def test_header_gaps_of_broken_headers(data: bytes) -> None:
    assert without_header_gaps(data) is None


def test_damage_signs() -> None:
    assert is_damage("Corrupt JPEG data: premature end of data segment")
    assert is_damage("Corrupt JPEG data: found marker 0xd4 instead of RST2")
    assert is_damage("Premature end of JPEG file")
    assert is_damage("Corrupt JPEG data: bad Huffman code")  # libjpeg-turbo's JWRN_* texts (jerror.h)
    assert is_damage("Corrupt JPEG data: bad arithmetic code")
    assert is_damage("Inconsistent progression sequence for component 0 coefficient 1")
    assert not is_damage("Corrupt JPEG data: 1 extraneous bytes before marker 0xd9")  # judged by where it is
    assert not is_damage("Warning: unknown JFIF revision number 3.01")
    assert extraneous_bytes("Corrupt JPEG data: 344 extraneous bytes before marker 0xd4") == (344, 0xD4)
    assert extraneous_bytes("Corrupt JPEG data: bad Huffman code") is None
    data = _jpeg(_photo())
    assert extraneous_is_damage(data, 344, 0xD4) and extraneous_is_damage(data, 2, 0xC4)  # left at RST4, DHT
    assert not extraneous_is_damage(data, MAX_END_PADDING, 0xD9)
    assert extraneous_is_damage(data, MAX_END_PADDING + 1, 0xD9)  # the bytes before the end are scan data


def test_end_padding_is_looked_for_after_the_first_scan_only() -> None:
    """End markers inside an APP segment (an EXIF thumbnail's, or many of them) are not the image's: the
    padding is looked for before the end markers that follow the image's first scan."""
    good = _jpeg(_photo())
    app = b"\x00" * 400 + b"\xff\xd9" * 20_000
    padded = good[:2] + b"\xff\xe1" + (len(app) + 2).to_bytes(2, "big") + app + good[2:-2] + b"\x00" * 300 + b"\xff\xd9"
    assert not extraneous_is_damage(padded, 300, 0xD9)
    leftover = np.random.default_rng(1).integers(0, 255, 300, dtype=np.uint8).tobytes()
    assert extraneous_is_damage(padded[:-302] + leftover + b"\xff\xd9", 300, 0xD9)

