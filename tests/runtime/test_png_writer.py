"""The streaming PNG encoder: exact round trips through independent decoders, every filter type and
block boundary exercised, files as small as Pillow's, and no second copy of the image in memory."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from adassr.runtime.images import png_writer, read_image
from adassr.runtime.images.png_writer import write_png

from ._peak import write_peak_growth

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "samples" / "cameras" / "canon" / "flower.jpg"


def _photo() -> np.ndarray:
    return np.asarray(Image.open(PHOTO).convert("RGB"))


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, body) of every chunk, checking each CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, out = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        out.append((kind, body))
        pos += 12 + length
    return out


def _filter_types(data: bytes, row_bytes: int) -> set[int]:
    raw = zlib.decompress(b"".join(body for kind, body in _chunks(data) if kind == b"IDAT"))
    return set(raw[:: row_bytes + 1])


def _encoded(pixels: np.ndarray, alpha: np.ndarray | None = None, icc: bytes | None = None) -> bytes:
    buf = io.BytesIO()
    write_png(buf, pixels, alpha=alpha, icc_profile=icc)
    return buf.getvalue()


@pytest.mark.parametrize("depth", [8, 16])
@pytest.mark.parametrize("channels,with_alpha", [(1, False), (1, True), (3, False), (3, True)])
def test_every_layout_decodes_exactly_with_opencv(depth: int, channels: int, with_alpha: bool) -> None:
    photo = _photo()[:37, :53]
    rng = np.random.default_rng(depth + channels)
    px = photo[..., :channels] if channels == 1 else photo
    if depth == 16:
        px = px.astype(np.uint16) * 257 + rng.integers(0, 257, px.shape).astype(np.uint16)
    alpha = rng.integers(0, 2 ** depth, px.shape[:2]).astype(px.dtype) if with_alpha else None
    data = _encoded(np.ascontiguousarray(px), alpha)
    back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert back.dtype == px.dtype
    if channels == 1 and with_alpha:  # OpenCV expands grey+alpha to BGRA
        assert np.array_equal(back[..., 0], px[..., 0]) and np.array_equal(back[..., 3], alpha)
        return
    want = px if channels == 1 else px[..., ::-1]
    if with_alpha:
        want = np.dstack([want, alpha])
    assert np.array_equal(back, np.squeeze(want, axis=2) if want.shape[2] == 1 else want)


def test_all_five_filters_are_chosen_and_undone_exactly() -> None:
    photo = _photo()[:60, :80].astype(np.int16)
    rows = [
        np.random.default_rng(1).integers(0, 256, (6, 80, 3)),  # noise: None wins
        np.broadcast_to(np.arange(80)[None, :, None] * 3, (6, 80, 3)),  # a horizontal ramp: Sub
        np.broadcast_to(np.random.default_rng(2).integers(0, 256, (1, 80, 3)), (6, 80, 3)),  # repeated rows: Up
        photo,  # a photograph: Paeth and Average
    ]
    pixels = np.concatenate(rows).astype(np.uint8)
    data = _encoded(pixels)
    assert _filter_types(data, 80 * 3) == {0, 1, 2, 3, 4}
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), pixels)


def test_rows_are_filtered_across_block_and_chunk_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(png_writer, "_BLOCK_BYTES", 1300)  # 2 rows of 200 x 3 bytes a block
    monkeypatch.setattr(png_writer, "_IDAT_BYTES", 5000)
    noise = np.random.default_rng(3).integers(0, 256, (160, 200, 3), dtype=np.uint8)  # zlib emits as it goes
    pixels = np.concatenate([_photo()[:41, :200], noise, _photo()[41:100, :200]])
    data = _encoded(pixels)
    assert sum(kind == b"IDAT" for kind, _ in _chunks(data)) > 3
    assert {2, 4} & _filter_types(data, 200 * 3)  # rows that read the row above
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), pixels)


def test_the_profile_is_an_iccp_chunk_before_the_image_data() -> None:
    profile = bytes(range(256)) * 3
    kinds = [kind for kind, _ in _chunks(_encoded(_photo()[:8, :8], icc=profile))]
    assert kinds[:3] == [b"IHDR", b"iCCP", b"IDAT"] and kinds[-1] == b"IEND"
    body = dict(_chunks(_encoded(_photo()[:8, :8], icc=profile)))[b"iCCP"]
    name, rest = body.split(b"\x00", 1)
    assert rest[0] == 0 and zlib.decompress(rest[1:]) == profile and name == b"ICC Profile"


def test_a_one_pixel_image_and_a_one_pixel_wide_column() -> None:
    for shape in [(1, 1, 3), (40, 1, 1), (1, 40, 3)]:
        pixels = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
        back = np.asarray(Image.open(io.BytesIO(_encoded(pixels))))
        assert np.array_equal(back.reshape(shape), pixels)


def test_a_photo_compresses_as_well_as_with_pillow() -> None:
    pixels = cv2.resize(_photo(), None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    pillow = io.BytesIO()
    Image.fromarray(pixels).save(pillow, format="PNG", compress_level=1)
    ours = len(_encoded(pixels))
    assert ours <= 1.01 * len(pillow.getvalue()), (ours, len(pillow.getvalue()))


def test_write_image_keeps_a_large_png_out_of_a_second_copy(tmp_path: Path) -> None:
    """Writing a 48 MB RGB array raises the process's peak memory by the encoder's blocks and their filtered
    variants (13 MB on one thread, 27 MB on two), not by a copy of the array (Pillow's alone was 64 MB)."""
    growth = write_peak_growth(tmp_path / "big.png")
    assert growth < 32e6, growth
    assert read_image(tmp_path / "big.png").pixels.shape == (4000, 4000, 3)


def _plain_paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The PNG specification's Paeth predictor, byte by byte in wide integers."""
    a16, b16, c16 = (x.astype(np.int32) for x in (a, b, c))
    p = a16 + b16 - c16
    pa, pb, pc = np.abs(p - a16), np.abs(p - b16), np.abs(p - c16)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def test_the_paeth_predictor_is_exact_for_every_input() -> None:
    v = np.arange(256, dtype=np.uint8)
    a, b, c = (x.reshape(4096, 4096) for x in np.meshgrid(v, v, v, indexing="ij"))
    assert np.array_equal(png_writer._paeth_predictor(a, b, c), _plain_paeth(a, b, c))


def _plain_filtered(raw: np.ndarray, previous: np.ndarray, bpp: int) -> bytes:
    """Every row filtered five ways from the specification, the least sum of |signed byte| chosen."""
    x = raw.astype(np.int32)
    b = np.vstack([previous[None].astype(np.int32), x[:-1]])
    a = np.zeros_like(x)
    a[:, bpp:] = x[:, :-bpp]
    c = np.zeros_like(x)
    c[:, bpp:] = b[:, :-bpp]
    candidates = [x, x - a, x - b, x - (a + b) // 2, x - _plain_paeth(a, b, c)]
    residuals = [(r % 256).astype(np.uint8) for r in candidates]
    scores = np.stack([np.abs(r.view(np.int8).astype(np.int32)).sum(axis=1) for r in residuals])
    choice = scores.argmin(axis=0)  # ties: the first
    return b"".join(bytes([k]) + residuals[k][i].tobytes() for i, k in enumerate(choice))


@pytest.mark.parametrize("bpp", [1, 2, 3, 4, 6, 8])
def test_each_row_gets_the_filter_libpng_s_heuristic_picks(bpp: int) -> None:
    photo = _photo()[:64, : 90 * 8 // bpp].reshape(64, -1)[:, : 90 * bpp]
    noise = np.random.default_rng(bpp).integers(0, 256, (8, photo.shape[1]), dtype=np.uint8)
    ramp = np.broadcast_to((np.arange(photo.shape[1]) * 7 % 256).astype(np.uint8), (8, photo.shape[1]))
    raw = np.ascontiguousarray(np.vstack([photo, noise, ramp, photo[::-1]]))
    previous = photo[5]
    assert png_writer._filtered(raw, previous, bpp) == _plain_filtered(raw, previous, bpp)


@pytest.mark.parametrize("block", [1300, 40_000])  # blocks shorter and longer than deflate's 32 KiB window
def test_the_file_does_not_depend_on_the_threads(monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    monkeypatch.setattr(png_writer, "_BLOCK_BYTES", block)
    pixels = np.ascontiguousarray(np.vstack([_photo()[:200, :400], _photo()[::-1][:120, :400]]))
    files = []
    for threads in (1, 2, 5):
        buf = io.BytesIO()
        write_png(buf, pixels, threads=threads)
        files.append(buf.getvalue())
    assert files[0] == files[1] == files[2]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(files[0]))), pixels)
    assert np.array_equal(cv2.imdecode(np.frombuffer(files[0], np.uint8), cv2.IMREAD_UNCHANGED)[..., ::-1], pixels)
    whole = io.BytesIO()
    monkeypatch.setattr(png_writer, "_BLOCK_BYTES", 1 << 30)  # one block: one deflate stream, no cut
    write_png(whole, pixels)
    # the cuts cost under 1 % with blocks longer than the window (the encoder's are 512 KiB: 0.01 % on a photo)
    assert len(files[0]) <= (1.01 if block > 32768 else 1.1) * len(whole.getvalue())


def test_a_zlib_level_outside_0_to_9_is_refused() -> None:
    with pytest.raises(ValueError, match="0-9"):
        write_png(io.BytesIO(), np.zeros((2, 2, 3), np.uint8), level=10)
