"""Opaque WebP through OpenCV's libwebp: the same file Pillow writes at the same quality (profile
included), half of Pillow's working memory, and images with alpha still kept exact by Pillow."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from adassr.runtime.images import encode_image, read_image, write_image

from ._peak import peak_growth

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "samples" / "cameras" / "canon" / "flower.jpg"


def _photo() -> np.ndarray:
    return np.asarray(Image.open(PHOTO).convert("RGB"))


def _profile() -> bytes:
    """The Adobe RGB (1998) profile of the bundled canon photo."""
    profile = read_image(REPO / "samples" / "cameras" / "canon" / "xmp_test.jpg").icc_profile
    assert profile is not None
    return profile


def _pillow(pixels: np.ndarray, quality: int, **options: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="WEBP", quality=quality, **options)
    return buf.getvalue()


@pytest.mark.parametrize("quality", [1, 50, 89, 100])
def test_the_file_is_pillows_at_the_same_quality(quality: int) -> None:
    """Both hand libwebp its defaults and the quality: the files decode to the same pixels (with the
    libwebp builds here, they are the same bytes)."""
    pixels = _photo()[:101, :77]
    ours = encode_image(".webp", pixels, quality=quality)
    assert ours[:4] == b"RIFF" and ours[8:16] == b"WEBPVP8 "
    pillow = _pillow(pixels, quality)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(ours))), np.asarray(Image.open(io.BytesIO(pillow))))
    assert abs(len(ours) - len(pillow)) <= 0.01 * len(pillow)


@pytest.mark.parametrize("extra", [b"", b"\x00"])  # an even and an odd length (the ICCP chunk is padded)
def test_the_profile_goes_into_a_vp8x_container_as_pillow_writes_it(tmp_path: Path, extra: bytes) -> None:
    icc = _profile() + extra
    pixels = _photo()[:40, :60]
    ours = encode_image(".webp", pixels, quality=90, icc_profile=icc)
    assert ours[12:16] == b"VP8X" and ours[20] & 0x20  # the ICC flag
    assert int.from_bytes(ours[4:8], "little") == len(ours) - 8  # the RIFF size
    with Image.open(io.BytesIO(ours)) as im:
        assert im.info["icc_profile"] == icc and im.size == (60, 40)
        decoded = np.asarray(im.convert("RGB"))
    assert np.array_equal(decoded, np.asarray(Image.open(io.BytesIO(_pillow(pixels, 90))).convert("RGB")))
    assert read_image(write_image(tmp_path / "p.webp", pixels, icc_profile=icc)).icc_profile == icc
    decoded_cv = cv2.imdecode(np.frombuffer(ours, np.uint8), cv2.IMREAD_COLOR)
    assert decoded_cv is not None and np.array_equal(decoded_cv[..., ::-1], decoded)


def test_grey_is_stored_as_rgb() -> None:
    grey = _photo()[:30, :20, 1]
    back = np.asarray(Image.open(io.BytesIO(encode_image(".webp", grey, quality=95))))
    assert back.shape == (30, 20, 3) and np.abs(back.astype(int) - grey[..., None]).mean() < 3


def test_alpha_keeps_the_colours_under_transparent_pixels() -> None:
    """With alpha, Pillow's exact mode stays: libwebp's default (OpenCV's) would clean those colours."""
    pixels = _photo()[:48, :64]
    alpha = np.full((48, 64), 255, np.uint8)
    alpha[:, :32] = 0
    data = encode_image(".webp", pixels, alpha=alpha, quality=100)
    back = np.asarray(Image.open(io.BytesIO(data)))
    assert np.array_equal(back[..., 3], alpha)
    assert np.abs(back[:, :32, :3].astype(int) - pixels[:, :32]).mean() < 4


def test_an_opaque_webp_takes_half_of_pillows_memory() -> None:
    """Pillow's copy (4 bytes a pixel) and its animation encoder's canvas took about 4 x the array;
    libwebp's simple API through OpenCV about 2.1 x (the BGR copy and the YUV planes)."""
    setup = """
import cv2
import numpy as np
from adassr.runtime.images import encode_image
px = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (2000, 3000, 3), dtype=np.uint8), (0, 0), 3)
"""
    growth = peak_growth(setup=setup, action="data = encode_image('.webp', px, quality=90)")
    assert growth < 3.0 * 2000 * 3000 * 3, growth / (2000 * 3000 * 3)
