"""Property-based fuzzing of the image readers: damaged files give typed errors, never anything else.

Seeds are small valid files of every readable format (built here); hypothesis truncates them, flips
bits and overwrites header bytes. For every mutant, ``read_image`` (with a small pixel budget) and
``read_camera_exif`` must either succeed within the budget or raise one of the project's typed
errors (:class:`AdassrError`): no other exception, no hang (hypothesis deadline), and no image
above the budget. The example budget is fixed and the search derandomized, so runs repeat.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from adassr.runtime.errors import AdassrError
from adassr.runtime.images import ImageWarning, read_camera_exif, read_image

pytestmark = pytest.mark.faults

BUDGET = 64 * 64  # pixels: the seeds are 24 x 20, so any header that grows the image trips it
EXAMPLES = 250
FUZZ = settings(max_examples=EXAMPLES, deadline=10_000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _pillow(fmt: str, mode: str = "RGB", **kwargs: object) -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[271] = "Canon"
    exif[274] = 6  # rotated: exercises the orientation path
    if fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        kwargs.setdefault("exif", exif.tobytes())
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _png16() -> bytes:
    pixels = np.random.default_rng(1).integers(0, 65536, (20, 24, 3), dtype=np.uint16)
    ok, data = cv2.imencode(".png", pixels)
    assert ok
    return data.tobytes()


SEEDS: dict[str, bytes] = {
    "png": _pillow("PNG"),
    "png-palette": _pillow("PNG", "P", transparency=0),
    "png16": _png16(),
    "jpeg": _pillow("JPEG", quality=80),
    "jpeg-progressive": _pillow("JPEG", progressive=True),
    "tiff-deflate": _pillow("TIFF", compression="tiff_adobe_deflate"),
    "tiff-raw": _pillow("TIFF"),
    "bmp": _pillow("BMP"),
    "webp": _pillow("WEBP", quality=70),
}
_DIR = Path(tempfile.mkdtemp(prefix="adassr-fuzz-"))


def _check(data: bytes, name: str) -> None:
    path = _DIR / name
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ImageWarning)
        warnings.simplefilter("ignore", UserWarning)  # Pillow's notes on damaged TIFF tags
        try:
            image = read_image(path, max_pixels=BUDGET)
        except AdassrError:
            pass
        else:
            h, w = image.pixels.shape[:2]
            assert h * w <= BUDGET
            assert image.pixels.dtype in (np.uint8, np.uint16)
        with contextlib.suppress(AdassrError):
            read_camera_exif(path)


def test_every_seed_reads() -> None:
    for name, data in SEEDS.items():
        path = _DIR / f"seed-{name}"
        path.write_bytes(data)
        assert read_image(path, max_pixels=BUDGET).pixels.shape[:2] in ((20, 24), (24, 20)), name


seed_names = st.sampled_from(sorted(SEEDS))


@FUZZ
@given(seed=seed_names, cut=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_files(seed: str, cut: float) -> None:
    data = SEEDS[seed]
    _check(data[: int(len(data) * cut)], f"trunc-{seed}")


@FUZZ
@given(seed=seed_names, flips=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 7)),
                                       min_size=1, max_size=8))
def test_bit_flips(seed: str, flips: list[tuple[float, int]]) -> None:
    data = bytearray(SEEDS[seed])
    for where, bit in flips:
        data[int(where * len(data))] ^= 1 << bit
    _check(bytes(data), f"flip-{seed}")


@FUZZ
@given(seed=seed_names, offset=st.integers(0, 96), patch=st.binary(min_size=1, max_size=4))
def test_header_fields(seed: str, offset: int, patch: bytes) -> None:
    """Overwrite bytes in the header region (sizes, bit depths, offsets, tag counts)."""
    data = bytearray(SEEDS[seed])
    end = min(offset + len(patch), len(data))
    data[offset:end] = patch[: end - offset]
    _check(bytes(data), f"header-{seed}")


@pytest.mark.parametrize("width, height", [(6000, 6000), (65535, 65535), (2**31 - 1, 1)])
def test_huge_declared_size_is_refused_before_decoding(tmp_path: Path, width: int, height: int) -> None:
    """A PNG whose IHDR claims a huge size: refused from the header (no allocation, no decode)."""
    import struct
    import zlib

    data = bytearray(SEEDS["png"])
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path = tmp_path / "bomb.png"
    path.write_bytes(bytes(data))
    with pytest.raises(AdassrError, match="above the limit|guard against decompression bombs"):
        read_image(path, max_pixels=BUDGET)
