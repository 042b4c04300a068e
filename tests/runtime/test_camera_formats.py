"""Camera formats adassr does not read (HEIF, AVIF, JPEG XL, raw): named, never misread."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin

from adassr.runtime.errors import ImageError
from adassr.runtime.images import ImageWarning, read_image, read_image_size
from adassr.runtime.images.camera_formats import (
    AVIF,
    HEIF,
    JPEG_XL,
    RAW,
    left_out_note,
    raw_tiff_problem,
    sniffed_format,
    suffix_format,
)


def _ftyp(brand: bytes) -> bytes:
    """An ISO base media file's first box, as HEIF, AVIF and CR3 files (and MP4 videos) begin."""
    return struct.pack(">I", 24) + b"ftyp" + brand + b"\x00\x00\x00\x00" + brand + b"mif1" + b"\x00" * 32


def _tiff(path: Path, tags: dict[int, tuple[int, object]], size: tuple[int, int] = (40, 30)) -> Path:
    """An RGB TIFF of ``size`` (width, height) with extra first-directory ``tags`` (tag: (type, value))."""
    ifd = TiffImagePlugin.ImageFileDirectory_v2()
    for tag, (kind, value) in tags.items():
        ifd[tag] = value
        ifd.tagtype[tag] = kind
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="TIFF", tiffinfo=ifd)
    return path


@pytest.mark.parametrize(("head", "kind"), [
    (_ftyp(b"heic"), HEIF), (_ftyp(b"mif1"), HEIF), (_ftyp(b"heix"), HEIF),
    (_ftyp(b"avif"), AVIF), (_ftyp(b"avis"), AVIF), (_ftyp(b"crx "), RAW),
    (b"\xff\x0a\xfa\x7f" + b"\x00" * 28, JPEG_XL), (b"\x00\x00\x00\x0cJXL \r\n\x87\n" + b"\x00" * 20, JPEG_XL),
    (b"IIRO\x08\x00\x00\x00" + b"\x00" * 24, RAW), (b"IIU\x00\x08\x00\x00\x00" + b"\x00" * 24, RAW),
    (b"FUJIFILMCCD-RAW 0201" + b"\x00" * 12, RAW), (b"II*\x00\x10\x00\x00\x00CR\x02\x00" + b"\x00" * 20, RAW),
])
def test_the_formats_are_told_by_their_first_bytes(head: bytes, kind: str) -> None:
    assert sniffed_format(head) == kind


@pytest.mark.parametrize("head", [
    _ftyp(b"mp42"), _ftyp(b"isom"),  # videos: another format, not a photo format named here
    b"\x89PNG\r\n\x1a\n" + b"\x00" * 24, b"\xff\xd8\xff\xe0" + b"\x00" * 28,
    b"II*\x00\x08\x00\x00\x00" + b"\x00" * 24, b"MM\x00*\x00\x00\x00\x08" + b"\x00" * 24, b"", b"ftyp",
])
def test_other_files_are_not_taken_for_them(head: bytes) -> None:
    assert sniffed_format(head) is None


def test_the_suffixes_name_the_kind_whatever_their_case() -> None:
    assert suffix_format(Path("IMG_0001.HEIC")) == HEIF
    assert suffix_format(Path("a.heif")) == HEIF
    assert suffix_format(Path("DSC_0001.NEF")) == RAW
    assert suffix_format(Path("x.dng")) == RAW
    assert suffix_format(Path("x.avif")) == AVIF
    assert suffix_format(Path("x.jpg")) is None
    assert suffix_format(Path("heic")) is None


def test_a_tiff_marked_as_a_dng_or_as_a_preview_is_a_raw_file() -> None:
    assert "DNG" in (raw_tiff_problem({50706: b"\x01\x04\x00\x00"}) or "")
    assert "preview" in (raw_tiff_problem({254: 1}) or "")
    assert "preview" in (raw_tiff_problem({254: 5}) or "")  # bit 0 with the transparency-mask bit
    assert raw_tiff_problem({254: 0}) is None
    assert raw_tiff_problem({254: 2}) is None  # one page of a multi-page file: an ordinary TIFF
    assert raw_tiff_problem({}) is None


def test_a_dngs_preview_is_refused_not_read_as_the_photo(tmp_path: Path) -> None:
    """Pillow opens a DNG (a TIFF) at its first image, a small preview: it was upscaled as if it were the photo."""
    dng = _tiff(tmp_path / "DJI_0001.DNG", {254: (4, 1), 50706: (1, b"\x01\x04\x00\x00")}, size=(160, 120))
    renamed = dng.rename(tmp_path / "DJI_0001.tif")  # the content decides, not the suffix
    for reader in (read_image, read_image_size):
        with pytest.raises(ImageError, match=r"DJI_0001\.tif: a DNG raw file .*develop to a 16-bit TIFF"):
            reader(renamed)


def test_a_tiff_whose_first_image_is_a_reduced_resolution_preview_is_refused(tmp_path: Path) -> None:
    nef_like = _tiff(tmp_path / "DSC_0001.tif", {254: (4, 1), 271: (2, "NIKON CORPORATION")}, size=(160, 120))
    with pytest.raises(ImageError, match="reduced-resolution preview"):
        read_image(nef_like)


def test_ordinary_tiffs_are_read_as_before(tmp_path: Path) -> None:
    plain = _tiff(tmp_path / "plain.tif", {})
    full = _tiff(tmp_path / "full.tif", {254: (4, 0)})
    page = _tiff(tmp_path / "page.tif", {254: (4, 2)})
    for path in (plain, full, page):
        assert read_image(path).pixels.shape == (30, 40, 3)
    # a pyramid: the full image first, its reduced-resolution copy second
    pyramid = tmp_path / "pyramid.tif"
    big = Image.fromarray(np.full((60, 80, 3), 90, np.uint8))
    small = Image.fromarray(np.full((30, 40, 3), 90, np.uint8))
    reduced = TiffImagePlugin.ImageFileDirectory_v2()
    reduced[254] = 1
    reduced.tagtype[254] = 4
    small.encoderinfo = {"tiffinfo": reduced}  # the appended page's own tags
    big.save(pyramid, format="TIFF", save_all=True, append_images=[small])
    with Image.open(pyramid) as im:
        im.seek(1)
        assert im.tag_v2.get(254) == 1
    with pytest.warns(ImageWarning, match="only the first is read"):
        assert read_image(pyramid).pixels.shape == (60, 80, 3)


def test_a_heif_photo_is_named_with_what_to_do(tmp_path: Path) -> None:
    heic = tmp_path / "IMG_0001.jpg"  # a phone photo renamed: the content is HEIF
    heic.write_bytes(_ftyp(b"heic") + b"\x00" * 200)
    with pytest.raises(ImageError, match=r"IMG_0001\.jpg: a HEIF \(HEIC\) image, a format adassr does not read "
                                         r".*convert to JPEG or PNG first"):
        read_image(heic)
    other = tmp_path / "clip.jpg"
    other.write_bytes(_ftyp(b"mp42") + b"\x00" * 200)
    with pytest.raises(ImageError, match="not a readable image"):
        read_image(other)


def test_the_note_counts_and_names_the_files_left_out_by_kind() -> None:
    names = [Path(f"IMG_{k}.HEIC") for k in range(5)] + [Path("DSC_1.NEF"), Path(".IMG_9.HEIC"), Path("a.jpg"),
                                                          Path("notes.txt")]
    note = left_out_note(names) or ""
    assert note.startswith("6 files in formats adassr does not read were left out")
    assert "HEIF (HEIC) files (5: IMG_0.HEIC, IMG_1.HEIC, IMG_2.HEIC, ...)" in note
    assert "raw files (1: DSC_1.NEF): develop" in note
    assert ".IMG_9" not in note and "a.jpg" not in note
    assert (left_out_note([Path("x.heif")]) or "").startswith("1 file in formats adassr does not read was left out")
    assert left_out_note([Path("a.jpg"), Path(".b.heic")]) is None


def test_a_canon_cr2_that_pillow_opens_is_refused_not_read_as_its_first_image(tmp_path: Path) -> None:
    """A CR2 is a TIFF with Canon's ``CR`` mark after its header and no DNG nor preview tag in its first
    directory: Pillow opens it at that image (a preview), which must be refused as a raw file."""
    width, height = 8, 6
    entries = [(256, 3, width), (257, 3, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 0),
               (277, 3, 1), (278, 3, height), (279, 4, width * height)]
    ifd_at = 16
    pixels_at = ifd_at + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHII", tag, kind, 1, pixels_at if tag == 273 else value) if kind == 4
        else struct.pack("<HHIHH", tag, kind, 1, value, 0) for tag, kind, value in entries) + b"\x00" * 4
    cr2 = tmp_path / "IMG_0001.tif"  # renamed: the content decides
    cr2.write_bytes(b"II*\x00" + struct.pack("<I", ifd_at) + b"CR\x02\x00" + b"\x00" * 4 + ifd
                    + bytes(width * height))
    plain = tmp_path / "plain.tif"
    plain.write_bytes(cr2.read_bytes()[:8] + b"\x00" * 8 + cr2.read_bytes()[16:])  # the same without the mark
    assert read_image(plain).pixels.shape[:2] == (height, width)
    for reader in (read_image, read_image_size):
        with pytest.raises(ImageError, match=r"IMG_0001\.tif: a raw camera file \(Canon CR2\).*develop"):
            reader(cr2)
    # its first image a layout Pillow cannot open (the sensor's mosaic): still named a raw file, not a TIFF layout
    data = bytearray(cr2.read_bytes())
    at = data.find(struct.pack("<HHIH", 262, 3, 1, 1))
    data[at + 8:at + 10] = struct.pack("<H", 32803)
    cr2.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"IMG_0001\.tif: a raw image, a format adassr does not read .*develop"):
        read_image(cr2)


def test_a_dng_whose_first_image_is_the_sensors_mosaic_is_named_a_dng(tmp_path: Path) -> None:
    """Android's DngCreator without a thumbnail puts the colour-filter-array data first, which Pillow cannot
    open: it was told to convert 'an unusual sample layout' to 8- or 16-bit RGB, not to develop a raw file."""
    dng = _tiff(tmp_path / "IMG_20261207.dng", {50706: (1, b"\x01\x04\x00\x00")})
    data = bytearray(dng.read_bytes())
    at = data.find(struct.pack("<HHI", 262, 3, 1))  # Photometric, RGB -> colour filter array (32803)
    assert at > 0
    data[at + 8:at + 10] = struct.pack("<H", 32803)
    dng.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"IMG_20261207\.dng: a DNG raw file \(its first image is the sensor's "
                                         r"undeveloped data\); develop to a 16-bit TIFF"):
        read_image(dng)
    plain = _tiff(tmp_path / "cfa.tif", {})  # the same layout without the DNG tag: the general message
    data = bytearray(plain.read_bytes())
    at = data.find(struct.pack("<HHI", 262, 3, 1))
    data[at + 8:at + 10] = struct.pack("<H", 32803)
    plain.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="a TIFF whose pixel layout the decoder does not take"):
        read_image(plain)
