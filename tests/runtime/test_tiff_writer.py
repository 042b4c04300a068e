"""The streaming TIFF encoder: exact round trips through Pillow, OpenCV (libtiff) and read_image for
every layout it writes, strips and BigTIFF exercised, the tags the docs promise, files smaller than
the encoders it replaced, and no second copy of the image in memory."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from adassr.runtime.images import read_image, tiff_writer, write_image
from adassr.runtime.images.tiff_writer import write_tiff

from ._peak import peak_growth, write_peak_growth

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "samples" / "cameras" / "canon" / "flower.jpg"


def _photo(scale: float = 1.0) -> np.ndarray:
    px = np.asarray(Image.open(PHOTO).convert("RGB"))
    return px if scale == 1.0 else cv2.resize(px, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)


def _encoded(pixels: np.ndarray, alpha: np.ndarray | None = None, icc: bytes | None = None) -> bytes:
    buf = io.BytesIO()
    write_tiff(buf, pixels, alpha=alpha, icc_profile=icc, level=1)
    return buf.getvalue()


@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("depth", [8, 16])
@pytest.mark.parametrize("channels,with_alpha", [(1, False), (1, True), (3, False), (3, True)])
def test_every_layout_decodes_exactly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, depth: int, channels: int,
                                      with_alpha: bool, big: bool) -> None:
    """Strips of a few rows (the last one shorter), classic TIFF and BigTIFF: libtiff (through OpenCV),
    Pillow where it keeps the layout, and read_image give back the very samples written."""
    monkeypatch.setattr(tiff_writer, "_STRIP_BYTES", 1000)
    monkeypatch.setattr(tiff_writer, "_BIG_OVER", 0 if big else 7 << 29)
    rng = np.random.default_rng(depth + channels)
    top = 256 if depth == 8 else 65536
    pixels = rng.integers(0, top, (61, 37, channels)).astype(np.uint8 if depth == 8 else np.uint16)
    alpha = rng.integers(0, top, (61, 37)).astype(pixels.dtype) if with_alpha else None
    data = _encoded(pixels, alpha)
    assert data[:4] == (b"II+\0" if big else b"II*\0")
    path = tmp_path / "x.tif"
    path.write_bytes(data)
    want = pixels if alpha is None else np.concatenate([pixels, alpha[..., None]], axis=2)
    if depth == 8 or channels == 1 and not with_alpha:  # Pillow has no 16-bit colour, nor 16-bit grey+alpha
        assert np.array_equal(np.asarray(Image.open(path)).reshape(want.shape), want)
    if not with_alpha or depth == 16 and channels == 3:  # OpenCV drops grey's alpha, premultiplies 8-bit RGBA
        decoded = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).reshape(want.shape)
        if want.shape[2] >= 3:
            decoded = decoded[..., [2, 1, 0, 3][:want.shape[2]]]
        assert np.array_equal(decoded, want)
    if depth == 8 or not (channels == 1 and with_alpha):  # write_image stores 16-bit grey+alpha as RGBA
        back = read_image(path)
        assert np.array_equal(back.pixels, pixels)
        assert (back.alpha is None) == (alpha is None)
        if alpha is not None:
            assert np.array_equal(back.alpha, alpha)


def test_tags_say_deflate_with_the_predictor_and_carry_the_profile() -> None:
    icc = read_image(REPO / "samples" / "cameras" / "canon" / "xmp_test.jpg").icc_profile
    assert icc is not None
    rng = np.random.default_rng(0)
    with Image.open(io.BytesIO(_encoded(_photo()[:20, :30], rng.integers(0, 256, (20, 30), np.uint8), icc))) as im:
        tags = im.tag_v2
        assert (tags[259], tags[317], tags[262], tags[277], tags[284]) == (8, 2, 2, 4, 1)
        assert tags[338] == (2,) and tags[258] == (8, 8, 8, 8)
        assert im.info["icc_profile"] == icc


def test_one_row_one_column_and_one_pixel() -> None:
    for shape in [(1, 1, 3), (40, 1, 1), (1, 40, 3)]:
        pixels = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(_encoded(pixels)))).reshape(shape), pixels)


def test_a_photo_is_smaller_than_with_the_encoders_it_replaced() -> None:
    """8-bit: Pillow's Deflate TIFF (no predictor); 16-bit: OpenCV's LZW TIFF (with the predictor)."""
    pixels = _photo(scale=2.0)
    pillow = io.BytesIO()
    Image.fromarray(pixels).save(pillow, format="TIFF", compression="tiff_adobe_deflate")
    assert len(_encoded(pixels)) < 0.8 * len(pillow.getvalue())
    deep = pixels.astype(np.uint16) * 257
    ok, opencv = cv2.imencode(".tiff", np.ascontiguousarray(deep[..., ::-1]))
    assert ok and len(_encoded(deep)) < 1.05 * len(opencv)


def test_write_image_keeps_a_large_tiff_out_of_a_second_copy(tmp_path: Path) -> None:
    """Writing a 48 MB RGB array raises the process's peak memory by a strip and its compressed bytes,
    not by a copy of the array (Pillow's alone was 64 MB, and the file was held in memory as well)."""
    growth = write_peak_growth(tmp_path / "big.tif")
    assert growth < 16e6, growth
    assert read_image(tmp_path / "big.tif").pixels.shape == (4000, 4000, 3)


def test_sixteen_bit_grey_and_alpha_is_made_rgba_a_strip_at_a_time(tmp_path: Path) -> None:
    """16-bit grey+alpha is stored as RGBA (readers do not take it as it is): the grey was repeated into a
    whole RGB copy first, 3 x the grey array (100 MB more for a 4000x4000 image; a helper's review)."""
    growth = peak_growth(
        setup="""
import numpy as np
from adassr.runtime.images import write_image
px = np.random.default_rng(0).integers(0, 65536, (4000, 4000), dtype=np.uint16)
al = px[::-1].copy()
""",
        action=f"write_image({str(tmp_path / 'ga.tif')!r}, px, alpha=al)",
    )
    assert growth < 16e6, growth
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 65536, (33, 20), dtype=np.uint16)
    alpha = rng.integers(0, 65536, (33, 20), dtype=np.uint16)
    back = read_image(write_image(tmp_path / "small.tif", grey, alpha=alpha))
    assert back.pixels.shape == (33, 20, 3) and back.pixels.dtype == np.uint16
    assert all(np.array_equal(back.pixels[..., k], grey) for k in range(3))
    assert back.alpha is not None and np.array_equal(back.alpha, alpha)


def test_the_file_does_not_depend_on_the_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Strips are compressed at once on several threads and written in order: the same bytes for any count."""
    monkeypatch.setattr(tiff_writer, "_STRIP_BYTES", 5000)
    pixels = np.ascontiguousarray(_photo()[:150, :200])
    files = []
    for threads in (1, 2, 7):
        buf = io.BytesIO()
        write_tiff(buf, pixels, level=1, threads=threads)
        files.append(buf.getvalue())
    assert files[0] == files[1] == files[2]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(files[0]))), pixels)


def test_the_directory_is_in_tag_order_with_exif_and_its_size_counts_bytes() -> None:
    """TIFF 6.0 wants a directory's tags in ascending order (libtiff warns "tags are not sorted" and strict
    readers refuse such a file); the carried EXIF's IFD0 entries (Make 271, ...) go in among the image's
    own. The BigTIFF switch counts bytes, so 16-bit images switch at half the pixels (a helper's mutants:
    unsorted tags, and a size in samples, passed)."""
    import struct

    from adassr.runtime.images.exif import carried_exif

    exif = Image.Exif()
    exif[271], exif[272], exif[305] = "Canon", "Canon PowerShot S40", "Firmware 1.10"
    out = io.BytesIO()
    write_tiff(out, _photo()[:16, :24], exif=carried_exif(exif.tobytes()))
    data = out.getvalue()
    assert data[:4] == b"II*\x00"
    (first,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, first)
    tags = [struct.unpack_from("<H", data, first + 2 + 12 * k)[0] for k in range(count)]
    assert {256, 271, 272, 305}.issubset(tags) and tags == sorted(tags), tags
    with Image.open(io.BytesIO(data)) as im:
        assert im.getexif()[271] == "Canon"

    limit = tiff_writer._BIG_OVER
    pixels = limit // 4  # RGB: 3/4 of the limit at 8 bits, 3/2 of it at 16
    assert not tiff_writer.is_bigtiff(1, pixels, 3, 1) and tiff_writer.is_bigtiff(1, pixels, 3, 2)


def test_a_bigtiff_written_directly_leaves_the_exif_out(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The carried EXIF's 4-byte value fields fit a classic TIFF's 12-byte entries, not BigTIFF's 20-byte
    ones: write_tiff leaves it out of a BigTIFF itself (write_image drops it with a note before)."""
    from adassr.runtime.images.exif import carried_exif

    monkeypatch.setattr(tiff_writer, "_BIG_OVER", 0)
    exif = Image.Exif()
    exif[271] = "Canon"
    path = tmp_path / "big.tif"
    with path.open("wb") as out:
        write_tiff(out, _photo()[:8, :8], exif=carried_exif(exif.tobytes()))
    assert path.read_bytes()[:4] == b"II+\x00"
    decoded = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert decoded is not None and decoded.shape == (8, 8, 3)
    with Image.open(path) as im:
        assert 271 not in im.getexif()
