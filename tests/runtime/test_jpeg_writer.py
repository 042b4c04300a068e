"""The strip JPEG encoder: the same bytes as OpenCV's encoding of the whole image, the chroma
subsampling and quality that write_image promises, the ICC profile in APP2 segments, files no larger
than Pillow's, and no second copy of the image in memory."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from adassr.runtime.errors import ImageError
from adassr.runtime.images import ProfileDroppedWarning, encode_image, jpeg_writer, read_image, write_image
from adassr.runtime.images.jpeg_writer import write_jpeg

from ._peak import write_peak_growth

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "samples" / "cameras" / "canon" / "flower.jpg"


def _photo(scale: float = 1.0) -> np.ndarray:
    px = np.asarray(Image.open(PHOTO).convert("RGB"))
    return px if scale == 1.0 else cv2.resize(px, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)


def _encoded(pixels: np.ndarray, quality: int, icc: bytes | None = None) -> bytes:
    buf = io.BytesIO()
    write_jpeg(buf, pixels, quality=quality, icc_profile=icc)
    return buf.getvalue()


def _opencv_whole(pixels: np.ndarray, quality: int) -> bytes:
    """OpenCV's encoding of the whole image with the same settings (restart at every row of blocks)."""
    block = 16 if pixels.shape[2] == 3 and quality < 90 else 8
    arr = pixels[..., 0] if pixels.shape[2] == 1 else np.ascontiguousarray(pixels[..., ::-1])
    params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_RST_INTERVAL, -(-pixels.shape[1] // block)]
    if pixels.shape[2] == 3:
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                   cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444 if quality >= 90 else cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420]
    ok, buf = cv2.imencode(".jpg", arr, params)
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("quality", [95, 90, 89, 60])
@pytest.mark.parametrize("shape", [(333, 397, 3), (300, 200, 1), (129, 7, 3), (1, 1, 3), (17, 1, 1)])
def test_strips_join_into_opencvs_encoding_of_the_whole_image(
    monkeypatch: pytest.MonkeyPatch, shape: tuple[int, int, int], quality: int
) -> None:
    """With the smallest strips (64 or 128 rows), the joined file is byte for byte the one OpenCV writes
    for the whole image: the strips' scans and restart markers are where the whole image has them."""
    monkeypatch.setattr(jpeg_writer, "_STRIP_BYTES", 1)
    h, w, c = shape
    pixels = _photo()[:h, :w, :c].copy()
    ours = _encoded(pixels, quality)
    assert ours == _opencv_whole(pixels, quality)
    decoded = np.asarray(Image.open(io.BytesIO(ours))).reshape(shape)
    assert np.abs(decoded.astype(int) - pixels).mean() < 6


@pytest.mark.parametrize("quality,sampling", [(95, 0), (90, 0), (89, 2), (50, 2)])
def test_chroma_subsampling_and_quality_are_what_write_image_promises(quality: int, sampling: int) -> None:
    """4:4:4 from quality 90 up, 4:2:0 below; the quantisation tables are libjpeg's at that quality,
    as Pillow writes them."""
    pixels = _photo()[:64, :64]
    ours = Image.open(io.BytesIO(encode_image(".jpg", pixels, quality=quality)))
    assert isinstance(ours, JpegImagePlugin.JpegImageFile)
    assert JpegImagePlugin.get_sampling(ours) == sampling
    pillow = io.BytesIO()
    Image.fromarray(pixels).save(pillow, format="JPEG", quality=quality)
    assert ours.quantization == Image.open(pillow).quantization  # type: ignore[attr-defined]


@pytest.mark.parametrize("quality", [95, 75])
def test_a_photo_is_no_larger_than_pillows_and_as_faithful(quality: int) -> None:
    pixels = _photo(scale=2.0)
    pillow = io.BytesIO()
    Image.fromarray(pixels).save(pillow, format="JPEG", quality=quality,
                                 subsampling="4:4:4" if quality >= 90 else "4:2:0")
    ours = encode_image(".jpg", pixels, quality=quality)
    assert len(ours) <= 1.01 * len(pillow.getvalue()), (len(ours), len(pillow.getvalue()))

    def error(data: bytes) -> float:
        return float(np.abs(np.asarray(Image.open(io.BytesIO(data))).astype(int) - pixels).mean())

    assert error(ours) <= error(pillow.getvalue()) + 0.01


def _profile(extra: int = 0) -> bytes:
    """The Adobe RGB (1998) profile of the bundled canon photo, with ``extra`` bytes appended."""
    profile = read_image(REPO / "samples" / "cameras" / "canon" / "xmp_test.jpg").icc_profile
    assert profile is not None and profile[16:20] == b"RGB "
    return profile + bytes(range(256)) * (extra // 256) + bytes(extra % 256)


def test_a_profile_over_one_segment_is_split_and_read_back(tmp_path: Path) -> None:
    """A profile larger than one APP2 segment holds goes into numbered segments after JFIF's APP0."""
    big = _profile(extra=70_000)
    data = _encoded(_photo()[:40, :40], 95, big)
    segments = []
    pos = 2
    while data[pos + 1] != 0xDA:
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        segments.append((data[pos + 1], data[pos + 4:pos + 2 + length]))
        pos += 2 + length
    assert segments[0][0] == 0xE0 and segments[0][1].startswith(b"JFIF\0")
    app2 = [body for marker, body in segments if marker == 0xE2]
    assert [b[:12] for b in app2] == [b"ICC_PROFILE\0"] * 2
    assert [(b[12], b[13]) for b in app2] == [(1, 2), (2, 2)]
    assert Image.open(io.BytesIO(data)).info["icc_profile"] == big
    assert read_image(write_image(tmp_path / "big.jpg", _photo()[:40, :40], icc_profile=big)).icc_profile == big


def test_a_profile_too_large_for_jpeg_is_dropped_with_a_warning() -> None:
    huge = _profile(extra=jpeg_writer.MAX_ICC_BYTES)
    with pytest.warns(ProfileDroppedWarning, match="more than JPEG's"):
        data = encode_image(".jpg", _photo()[:8, :8], icc_profile=huge)
    assert "icc_profile" not in Image.open(io.BytesIO(data)).info
    with pytest.raises(ImageError, match="ICC profiles of 1 to"):
        jpeg_writer.icc_segments(huge)


def test_strips_encoded_with_different_tables_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Should an OpenCV ever encode the strips with different tables, the joined file would decode
    wrongly: it is refused with the way out instead."""
    monkeypatch.setattr(jpeg_writer, "_STRIP_BYTES", 1)
    real = jpeg_writer._encode_strip
    calls: list[int] = []

    def drifting(strip: np.ndarray, params: list[int]) -> bytes:
        calls.append(1)
        tweaked = list(params)
        if len(calls) > 1:
            tweaked[1] = params[1] - 10  # another quality, other quantisation tables
        return real(strip, tweaked)

    monkeypatch.setattr(jpeg_writer, "_encode_strip", drifting)
    with pytest.raises(ImageError, match="different tables; write .png instead"):
        _encoded(_photo()[:300, :50], 95)


def test_write_image_keeps_a_large_jpeg_out_of_a_second_copy(tmp_path: Path) -> None:
    """Writing a 48 MB RGB array raises the process's peak memory by a strip's BGR copy and its encoded
    bytes, not by a copy of the array (Pillow's alone is 64 MB, OpenCV's BGR copy 48 MB)."""
    growth = write_peak_growth(tmp_path / "big.jpg", quality=90)
    assert growth < 16e6, growth
    assert read_image(tmp_path / "big.jpg").pixels.shape == (4000, 4000, 3)


@pytest.mark.parametrize("threads", [1, 3, 8])
def test_strips_encoded_on_several_threads_join_in_order(monkeypatch: pytest.MonkeyPatch, threads: int) -> None:
    """The strips are encoded at once on ``threads`` threads and written in order: the file is still byte
    for byte OpenCV's encoding of the whole image, whatever the thread count."""
    monkeypatch.setattr(jpeg_writer, "_STRIP_BYTES", 1)  # 64-row strips: seven of them
    pixels = np.ascontiguousarray(np.vstack([_photo(), _photo()[::-1]])[:420, :300])
    buf = io.BytesIO()
    write_jpeg(buf, pixels, quality=95, threads=threads)
    assert buf.getvalue() == _opencv_whole(pixels, 95)
