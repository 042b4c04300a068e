"""Tests of adassr.runtime.images: decoding, EXIF, orientation, strictness, atomic writing."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import simplejpeg
from PIL import Image, ImageCms, ImageFile, ImageOps

from adassr.runtime.errors import ConfigError, ImageError
from adassr.runtime.images import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_READ_SUFFIXES,
    SUPPORTED_WRITE_SUFFIXES,
    AlphaDroppedWarning,
    ImageWarning,
    LoadedImage,
    ProfileDroppedWarning,
    encode_image,
    from_float32,
    read_camera_exif,
    read_image,
    read_image_size,
    to_float32,
    write_image,
)
from adassr.runtime.images import write as write_module
from adassr.runtime.images.convert import uint16_to_uint8

from ._peak import peak_growth

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples" / "cameras"
HR = REPO / "tests" / "data" / "hr"
FUJI = Path(__file__).resolve().parents[2] / "samples" / "large" / "fujifilm.mpo"  # 10 MP, 2 frames


# ----------------------------------------------------------------------------- helpers


def _photo(h: int = 48, w: int = 64) -> np.ndarray:
    """A crop of a real photo (uint8 RGB)."""
    with Image.open(HR / "chelsea.png") as im:
        rgb = np.asarray(im.convert("RGB"))
    return rgb[100 : 100 + h, 150 : 150 + w].copy()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _exif_bytes(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[274] = orientation
    exif[271] = "TestMake"
    raw = exif.tobytes()
    return raw[6:] if raw.startswith(b"Exif\x00\x00") else raw


def _png_with_exif(png: bytes, orientation: int, *, after_idat: bool = False) -> bytes:
    """Insert an eXIf chunk after IHDR (or just before IEND)."""
    chunk = _png_chunk(b"eXIf", _exif_bytes(orientation))
    if after_idat:
        iend = png.rindex(b"IEND") - 4
        return png[:iend] + chunk + png[iend:]
    after_ihdr = 8 + 8 + 13 + 4
    return png[:after_ihdr] + chunk + png[after_ihdr:]


_TIFF_FORMATS = {1: "<B", 3: "<H", 4: "<I", 6: "<b", 8: "<h", 9: "<i", 16: "<Q", 17: "<q"}


def _tiff16(a: np.ndarray, orientation: int | None = None, *, bits: int = 16, orientation_type: int = 3,
            photometric: int | None = None, extra_samples: int = 2, big: bool = False) -> bytes:
    """A minimal little-endian uncompressed 16-bit (or ``bits``) TIFF (IFD first, one strip); a: H x W x C;
    the orientation stored with the TIFF field type ``orientation_type`` (3 SHORT, 8 SSHORT, 16 LONG8, ...).
    ``big``: a BigTIFF (8-byte offsets and counts, 20-byte IFD entries)."""
    h, w, c = a.shape
    data = a.astype("<u2" if bits == 16 else "u1").tobytes()
    tags: dict[int, tuple[int, list[int]]] = {
        256: (3, [w]), 257: (3, [h]), 258: (3, [bits] * c), 259: (3, [1]),
        262: (3, [photometric if photometric is not None else 2 if c >= 3 else 1]), 273: (4, [0]), 277: (3, [c]),
        278: (3, [h]),
        279: (4, [len(data)]), 284: (3, [1]),
    }
    if c == 4:
        tags[338] = (3, [extra_samples])  # 2 unassociated alpha, 1 associated (premultiplied)
    if orientation is not None:
        tags[274] = (orientation_type, [orientation])
    offset, word, first = ("<Q", 8, 16) if big else ("<I", 4, 8)  # offsets' format and size; the first IFD
    if big:
        tags[273], tags[279] = (16, [0]), (16, [len(data)])
    ifd_size = (8 if big else 2) + (20 if big else 12) * len(tags) + word  # count, entries, next IFD
    extra = b""
    entries = []
    for tag in sorted(tags):
        typ, vals = tags[tag]
        raw = b"".join(struct.pack(_TIFF_FORMATS[typ], v) for v in vals)
        if len(raw) > word:
            entries.append([tag, typ, len(vals), struct.pack(offset, first + ifd_size + len(extra))])
            extra += raw
        else:
            entries.append([tag, typ, len(vals), raw.ljust(word, b"\0")])
    data_offset = first + ifd_size + len(extra)
    if big:
        out = b"II+\x00" + struct.pack("<HHQ", 8, 0, first) + struct.pack("<Q", len(entries))
    else:
        out = b"II*\x00" + struct.pack("<I", first) + struct.pack("<H", len(entries))
    for tag, typ, count, raw in entries:
        if tag == 273:
            raw = struct.pack(offset, data_offset)
        out += struct.pack("<HH" + offset[1], tag, typ, count) + raw
    return out + b"\0" * word + extra + data


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height grey pixels but holds almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    chunks = _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def _save(path: Path, im: Image.Image, **kw: object) -> Path:
    im.save(path, **kw)
    return path


@pytest.fixture
def no_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any pixel decode (Pillow, OpenCV or TurboJPEG) fail the test."""

    def fail(*_a: object, **_k: object) -> None:
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", fail)
    monkeypatch.setattr(cv2, "imdecode", fail)
    monkeypatch.setattr(simplejpeg, "decode_jpeg", fail)


# Where the stored top-left and stored top-right pixels appear after applying each EXIF
# orientation (EXIF 2.3, tag 0x0112: "0th row / 0th column" positions).
_CORNERS = {
    1: ("TL", "TR"), 2: ("TR", "TL"), 3: ("BR", "BL"), 4: ("BL", "BR"),
    5: ("TL", "BL"), 6: ("TR", "BR"), 7: ("BR", "TR"), 8: ("BL", "TL"),
}


def _corner(a: np.ndarray, where: str) -> np.ndarray:
    return a[0 if where[0] == "T" else -1, 0 if where[1] == "L" else -1]


def _check_orientation(stored: np.ndarray, shown: np.ndarray, orientation: int) -> None:
    h, w = stored.shape[:2]
    assert shown.shape[:2] == ((w, h) if orientation >= 5 else (h, w))
    tl, tr = _CORNERS[orientation]
    np.testing.assert_array_equal(_corner(shown, tl), stored[0, 0])
    np.testing.assert_array_equal(_corner(shown, tr), stored[0, -1])


# ----------------------------------------------------------------------------- import hygiene


def test_import_loads_no_torch() -> None:
    code = "import sys, adassr.runtime.images; assert 'torch' not in sys.modules, 'torch was imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr


def test_constants() -> None:
    assert DEFAULT_MAX_PIXELS == 100_000_000
    assert set(SUPPORTED_WRITE_SUFFIXES) <= set(SUPPORTED_READ_SUFFIXES)
    expected = {".png", ".jpg", ".jpeg", ".jfif", ".jpe", ".mpo", ".webp", ".tif", ".tiff", ".bmp"}
    assert set(SUPPORTED_READ_SUFFIXES) == expected


# ----------------------------------------------------------------------------- camera samples


@pytest.mark.parametrize(
    ("rel", "make", "model", "size"),
    [
        ("nintendo/sugarshack.mpo", "Nintendo", "Nintendo 3DS", (480, 640)),
        ("canon/flower.jpg", "Canon", "Canon PowerShot S40", (360, 480)),
        ("nokia/iptc.jpg", "Nokia", "N70-1", (480, 640)),
    ],
)
def test_camera_samples(rel: str, make: str, model: str, size: tuple[int, int]) -> None:
    path = SAMPLES / rel
    img = read_image(path)
    assert (img.height, img.width, img.channels) == (*size, 3)
    assert img.pixels.dtype == np.uint8 and img.bit_depth == 8 and img.alpha is None
    assert (img.exif_make, img.exif_model) == (make, model)
    assert img.path == path
    assert read_camera_exif(path) == (make, model)
    with Image.open(path) as ref:
        np.testing.assert_array_equal(img.pixels, np.asarray(ref.convert("RGB")))


def test_mpo_reads_first_frame() -> None:
    path = SAMPLES / "nintendo" / "sugarshack.mpo"
    img = read_image(path)
    with Image.open(path) as ref:
        assert ref.n_frames == 2
        ref.seek(1)
        second = np.asarray(ref.convert("RGB"))
    assert img.pixels.shape == second.shape
    assert not np.array_equal(img.pixels, second)


def _tiff_with_a_damaged_second_page(path: Path) -> np.ndarray:
    """An 8x8 RGB TIFF whose next-page pointer leads to a directory without width and height (what a
    truncated multi-page TIFF looks like); returns the first page's pixels."""
    pixels = (np.arange(8 * 8 * 3) % 256).astype(np.uint8).reshape(8, 8, 3)

    def entry(tag: int, kind: int, count: int, value: int) -> bytes:
        if kind == 4 or count > 1:
            return struct.pack("<HHII", tag, kind, count, value)
        return struct.pack("<HHIHH", tag, kind, count, value, 0)

    first, n = 8, 10
    bits = first + 2 + n * 12 + 4
    second = bits + 6
    data = second + 2 + 12 + 4
    entries = [entry(256, 4, 1, 8), entry(257, 4, 1, 8), entry(258, 3, 3, bits), entry(259, 3, 1, 1),
               entry(262, 3, 1, 2), entry(273, 4, 1, data), entry(277, 3, 1, 3), entry(278, 4, 1, 8),
               entry(279, 4, 1, pixels.size), entry(284, 3, 1, 1)]
    path.write_bytes(b"II*\x00" + struct.pack("<I", first) + struct.pack("<H", n) + b"".join(entries)
                     + struct.pack("<I", second) + struct.pack("<HHH", 8, 8, 8)
                     + struct.pack("<H", 1) + entry(305, 3, 1, 0) + b"\0\0\0\0" + pixels.tobytes())
    return pixels


def test_a_damaged_second_page_still_reads_the_first(tmp_path: Path) -> None:
    """Counting the pages raised Pillow's TypeError("Missing dimensions"), which ended a whole folder
    run with a traceback."""
    path = tmp_path / "damaged.tif"
    pixels = _tiff_with_a_damaged_second_page(path)
    with Image.open(path) as im, pytest.raises(TypeError):
        _ = im.n_frames  # the library's behaviour this guards against
    with pytest.warns(UserWarning, match="holds more than one page"):
        np.testing.assert_array_equal(read_image(path).pixels, pixels)


def test_the_pages_of_a_tiff_are_not_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counting parses every page directory: an upload of 44,000 one-pixel pages (5 MB) held a server
    worker for tens of seconds, only to word a note. A TIFF says "more than one page" instead."""
    from PIL import TiffImagePlugin

    frames = [Image.fromarray(_photo()), Image.fromarray(_photo()[::-1].copy())]
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])

    def counted(self: object) -> int:
        raise AssertionError("the pages were counted")

    monkeypatch.setattr(TiffImagePlugin.TiffImageFile, "n_frames", property(counted))
    with pytest.warns(UserWarning, match="holds more than one page"):
        image = read_image(tmp_path / "pages.tif")
    np.testing.assert_array_equal(image.pixels, _photo())
    damaged = tmp_path / "damaged.tif"
    _tiff_with_a_damaged_second_page(damaged)
    with pytest.warns(UserWarning, match="holds more than one page"):  # its first directory says so
        read_image(damaged)


def test_read_camera_exif_decodes_no_pixels(no_decode: None) -> None:
    assert read_camera_exif(SAMPLES / "canon" / "flower.jpg") == ("Canon", "Canon PowerShot S40")
    assert read_camera_exif(SAMPLES / "nintendo" / "frozenpond.mpo") == ("Nintendo", "Nintendo 3DS")
    assert read_camera_exif(HR / "chelsea.png") == (None, None)


def test_a_png_exif_after_the_image_data_is_read_without_decoding(no_decode: None, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """read_camera_exif saw only an eXIf chunk before IDAT while read_image saw any: adapt grouped such
    a PNG by its name while the runtime routed it by its Make."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(buf, format="PNG")
    for after in (False, True):
        path = tmp_path / f"exif_{after}.png"
        path.write_bytes(_png_with_exif(buf.getvalue(), 1, after_idat=after))
        assert read_camera_exif(path) == ("TestMake", None)
    damaged = tmp_path / "damaged.png"  # the chunk list ends in garbage instead of IEND: no EXIF, no error
    png = buf.getvalue()
    damaged.write_bytes(png[: png.rindex(b"IEND") - 4] + b"\xff\xff\xff\xf0junk")
    assert read_camera_exif(damaged) == (None, None)
    huge = tmp_path / "huge.png"  # an eXIf chunk claiming 4 GiB: never read (allocated) in one go
    huge.write_bytes(png[: png.rindex(b"IEND") - 4] + b"\xff\xff\xff\xf0eXIf" + b"\0" * 16)
    real_open = Path.open
    asked: list[int] = []

    class Watched:
        def __init__(self, fh: Any) -> None:
            self._fh = fh

        def read(self, n: int = -1) -> bytes:
            asked.append(n)
            return self._fh.read(n)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._fh, name)

        def __enter__(self) -> Watched:
            return self

        def __exit__(self, *exc: object) -> None:
            self._fh.close()

    monkeypatch.setattr(Path, "open", lambda self, *a, **k: Watched(real_open(self, *a, **k)))
    assert read_camera_exif(huge) == (None, None)
    assert asked and max(asked) < 2**20, asked


def _png_to_splice(depth: int, *, seed: int) -> tuple[bytes, int, int]:
    """A 16 x 12 RGB PNG of ``depth`` bits, where chunks go after IHDR, and where before IEND."""
    rgb = np.random.default_rng(seed).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    if depth == 8:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG")
        png = buf.getvalue()
    else:
        png = cv2.imencode(".png", rgb[..., ::-1].astype(np.uint16) * 257)[1].tobytes()
    return png, 8 + 8 + 13 + 4, png.rindex(b"IEND") - 4


def _make_exif(make: str) -> bytes:
    exif = Image.Exif()
    exif[271] = make
    return exif.tobytes()[6:]


def _legacy_exif_chunk(kind: bytes, make: str) -> bytes:
    """ImageMagick's and exiv2's ``Raw profile type exif`` text chunk: "\\nexif\\n  <length>\\n" and the hex."""
    payload = b"Exif\0\0" + _make_exif(make)
    hexed = payload.hex()
    text = f"\nexif\n{len(payload):8d}\n" + "\n".join(hexed[i:i + 72] for i in range(0, len(hexed), 72)) + "\n"
    key = b"Raw profile type exif\0"
    body = {b"tEXt": key + text.encode(), b"zTXt": key + b"\0" + zlib.compress(text.encode()),
            b"iTXt": key + b"\1\0\0\0" + zlib.compress(text.encode())}[kind]
    return _png_chunk(kind, body)


@pytest.mark.parametrize("depth", [8, 16])
def test_a_pngs_make_is_the_same_for_adapt_and_the_runtime(tmp_path: Path, depth: int) -> None:
    """adapt (read_camera_exif) and upscale/serve (read_image) read a PNG's Make by different rules: an 8-bit
    PNG with EXIF only in a legacy 'Raw profile type exif' text chunk was routed to the camera that adapt never
    trained on it (its folder's group instead), a 16-bit one to the fallback, and one with two eXIf chunks
    went to one camera's group and the other camera's model (a helper's hunt). One rule now: the first
    eXIf chunk, else the legacy text chunk."""
    png, after_ihdr, iend = _png_to_splice(depth, seed=1)
    files = {f"legacy_{kind.decode()}.png": (png[:after_ihdr] + _legacy_exif_chunk(kind, "NIKON CORPORATION")
                                             + png[after_ihdr:], "NIKON CORPORATION")
             for kind in (b"tEXt", b"zTXt", b"iTXt")}
    files["legacy_after.png"] = (png[:iend] + _legacy_exif_chunk(b"zTXt", "SONY") + png[iend:], "SONY")
    upper = _legacy_exif_chunk(b"tEXt", "Ricoh").replace(b"\nexif\n", b"\nEXIF\n")  # Pillow reads only the hex
    files["legacy_upper.png"] = (png[:after_ihdr] + _png_chunk(b"tEXt", upper[8:-4]) + png[after_ihdr:], "Ricoh")
    canon, nikon = _png_chunk(b"eXIf", _make_exif("Canon")), _png_chunk(b"eXIf", _make_exif("Nikon"))
    files["two_after.png"] = (png[:iend] + canon + nikon + png[iend:], "Canon")
    files["two_around.png"] = (png[:after_ihdr] + canon + png[after_ihdr:iend] + nikon + png[iend:], "Canon")
    files["exif_and_legacy.png"] = (png[:after_ihdr] + _legacy_exif_chunk(b"tEXt", "SONY") + png[after_ihdr:iend]
                                    + nikon + png[iend:], "Nikon")
    for name, (data, make) in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        assert read_camera_exif(path)[0] == make, name
        image = read_image(path)
        assert image.exif_make == make and image.pixels.shape == (12, 16, 3), name
    bad = tmp_path / "bad_legacy.png"  # hex that is no hex: a note, no Make, the pixels as always
    bad.write_bytes(png[:after_ihdr] + _png_chunk(b"tEXt", b"Raw profile type exif\0\nexif\n  4\nzz\n")
                    + png[after_ihdr:])
    notes: list[str] = []
    assert read_image(bad, notes=notes).exif_make is None and "unreadable EXIF block ignored" in notes[0]
    with pytest.warns(ImageWarning, match="unreadable EXIF block ignored"):
        assert read_camera_exif(bad) == (None, None)
    bomb = tmp_path / "bomb.png"  # a compressed legacy chunk that inflates past 1 MiB is not inflated (after
    # the image data, where the decoder's own limit on text chunks, which refuses the file, does not look)
    bomb.write_bytes(png[:iend] + _png_chunk(b"zTXt", b"Raw profile type exif\0\0"
                                             + zlib.compress(b"\nexif\n 9\n" + b"0" * (4 << 20))) + png[iend:])
    with pytest.warns(ImageWarning, match="inflates past 1,048,576 bytes"):
        assert read_camera_exif(bomb) == (None, None)


@pytest.mark.parametrize("depth", [8, 16])
def test_a_pngs_xmp_orientation_turns_it_when_its_exif_has_none(tmp_path: Path, depth: int) -> None:
    """Pillow's getexif takes the orientation of an XMP packet where the EXIF has none: the 8-bit PNGs turned by
    it, and must still do so now that a PNG's EXIF is read by the project's own rule; 16-bit ones too (they
    ignored it)."""
    png, after_ihdr, iend = _png_to_splice(depth, seed=2)
    xmp = _png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0<x:xmpmeta><rdf:Description tiff:Orientation=\"6\"/>"
                                  b"</x:xmpmeta>")
    turned = tmp_path / "xmp.png"
    turned.write_bytes(png[:after_ihdr] + xmp + png[after_ihdr:])
    assert read_image(turned).pixels.shape[:2] == (16, 12)  # orientation 6: a quarter turn
    exif = Image.Exif()
    exif[274] = 1
    upright = tmp_path / "exif_wins.png"
    upright.write_bytes(png[:after_ihdr] + xmp + png[after_ihdr:iend] + _png_chunk(b"eXIf", exif.tobytes()[6:])
                        + png[iend:])
    assert read_image(upright).pixels.shape[:2] == (12, 16)


def test_read_image_size_decodes_no_pixels(no_decode: None, tmp_path: Path) -> None:
    assert read_image_size(SAMPLES / "canon" / "flower.jpg") == (480, 360)
    assert read_image_size(SAMPLES / "nintendo" / "frozenpond.mpo") == (640, 480)
    assert read_image_size(HR / "chelsea.png") == (451, 300)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        read_image_size(empty)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ImageError, match="not a readable image"):
        read_image_size(text)


def test_exif_text_is_stripped(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[271] = "  ACME Corp\x00\x00"
    exif[272] = "   "
    path = _save(tmp_path / "a.jpg", Image.fromarray(_photo()), exif=exif)
    assert read_camera_exif(path) == ("ACME Corp", None)
    img = read_image(path)
    assert (img.exif_make, img.exif_model) == ("ACME Corp", None)


def test_corrupt_exif_does_not_block_pixels(tmp_path: Path) -> None:
    rgb = _photo()
    broken = b"Exif\x00\x00II*\x00\xff\xff\xff\x7f"  # IFD offset far past the end
    path = _save(tmp_path / "bad.jpg", Image.fromarray(rgb), exif=broken)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow reports the corrupt block itself
        img = read_image(path)
        assert read_camera_exif(path) == (None, None)
    assert (img.exif_make, img.exif_model) == (None, None)
    assert _psnr(img.pixels, rgb) > 32


# ----------------------------------------------------------------------------- orientation


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_png_8bit(tmp_path: Path, orientation: int) -> None:
    stored = _photo(5, 7)
    exif = Image.Exif()
    exif[274] = orientation
    path = _save(tmp_path / "o.png", Image.fromarray(stored), exif=exif)
    shown = read_image(path).pixels
    _check_orientation(stored, shown, orientation)
    with Image.open(path) as ref:
        np.testing.assert_array_equal(shown, np.asarray(ImageOps.exif_transpose(ref)))


@pytest.mark.parametrize("orientation", [2, 3, 6, 8])
def test_orientation_tiff_webp_jpeg_and_alpha(tmp_path: Path, orientation: int) -> None:
    # Flat quadrants so that lossy JPEG keeps the corner colours.
    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:16, :32] = (255, 0, 0)
    stored[:16, 32:] = (0, 255, 0)
    stored[16:, :32] = (0, 0, 255)
    stored[16:, 32:] = (255, 255, 0)
    alpha = np.full((32, 64), 255, np.uint8)
    alpha[:16, :32] = 7
    exif = Image.Exif()
    exif[274] = orientation
    rgba = Image.fromarray(np.dstack([stored, alpha]))
    tif = read_image(_save(tmp_path / "o.tif", rgba, tiffinfo={274: orientation}))
    _check_orientation(stored, tif.pixels, orientation)
    assert tif.alpha is not None
    _check_orientation(alpha, tif.alpha, orientation)
    webp = read_image(_save(tmp_path / "o.webp", Image.fromarray(stored), exif=exif, lossless=True))
    np.testing.assert_array_equal(webp.pixels, tif.pixels)
    jpg = read_image(_save(tmp_path / "o.jpg", Image.fromarray(stored), exif=exif, quality=95))
    assert jpg.pixels.shape == tif.pixels.shape
    for where in ("TL", "TR", "BL", "BR"):  # corners: far from the chroma bleeding at edges
        diff = _corner(jpg.pixels, where).astype(int) - _corner(tif.pixels, where)
        assert np.abs(diff).max() <= 16, where


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_16bit_colour(tmp_path: Path, orientation: int) -> None:
    rng = np.random.default_rng(orientation)
    stored = rng.integers(0, 65536, (6, 9, 3), dtype=np.uint16)
    # Expected result from Pillow's own transpose of an index map (independent of our code).
    index = Image.fromarray(np.arange(6 * 9, dtype=np.uint16).reshape(6, 9))
    exif = Image.Exif()
    exif[274] = orientation
    index.info["exif"] = exif.tobytes()
    moved = np.asarray(ImageOps.exif_transpose(index)).astype(np.intp)
    expected = stored.reshape(-1, 3)[moved]

    ok, buf = cv2.imencode(".png", stored[..., ::-1])
    assert ok
    for name, data in [
        ("early.png", _png_with_exif(buf.tobytes(), orientation)),
        ("late.png", _png_with_exif(buf.tobytes(), orientation, after_idat=True)),
        ("o.tiff", _tiff16(stored, orientation)),
    ]:
        (tmp_path / name).write_bytes(data)
        img = read_image(tmp_path / name)
        assert img.bit_depth == 16 and img.pixels.dtype == np.uint16, name
        np.testing.assert_array_equal(img.pixels, expected, err_msg=name)
        _check_orientation(stored, img.pixels, orientation)


def test_orientation_16bit_rgba_tiff(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    stored = rng.integers(0, 65536, (5, 8, 4), dtype=np.uint16)
    path = tmp_path / "rgba.tiff"
    path.write_bytes(_tiff16(stored, 6))
    img = read_image(path)
    np.testing.assert_array_equal(img.pixels, np.rot90(stored[..., :3], -1))
    assert img.alpha is not None
    np.testing.assert_array_equal(img.alpha, np.rot90(stored[..., 3], -1))


def test_orientation_out_of_range_is_ignored(tmp_path: Path) -> None:
    stored = _photo(5, 7)
    exif = Image.Exif()
    exif[274] = 9
    path = _save(tmp_path / "o.png", Image.fromarray(stored), exif=exif)
    np.testing.assert_array_equal(read_image(path).pixels, stored)


# ----------------------------------------------------------------------------- modes


def test_grey_rgba_la_png(tmp_path: Path) -> None:
    rgb = _photo()
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    alpha = rgb[..., 1].copy()
    img = read_image(_save(tmp_path / "g.png", Image.fromarray(grey)))
    assert img.channels == 1 and img.alpha is None
    np.testing.assert_array_equal(img.pixels[..., 0], grey)
    img = read_image(_save(tmp_path / "rgba.png", Image.fromarray(np.dstack([rgb, alpha]))))
    assert img.channels == 3
    np.testing.assert_array_equal(img.pixels, rgb)
    np.testing.assert_array_equal(img.alpha, alpha)
    img = read_image(_save(tmp_path / "la.png", Image.fromarray(np.dstack([grey, alpha]))))
    assert img.channels == 1
    np.testing.assert_array_equal(img.pixels[..., 0], grey)
    np.testing.assert_array_equal(img.alpha, alpha)


def test_palette_images(tmp_path: Path) -> None:
    colour = Image.fromarray(_photo()).quantize(16)
    lut = np.asarray(colour.getpalette("RGB"), np.uint8).reshape(-1, 3)
    index = np.asarray(colour)
    img = read_image(_save(tmp_path / "p.png", colour))
    assert img.channels == 3 and img.alpha is None
    np.testing.assert_array_equal(img.pixels, lut[index])

    transparent = int(index[0, 0])
    img = read_image(_save(tmp_path / "pt.png", colour, transparency=transparent))
    assert img.alpha is not None
    np.testing.assert_array_equal(img.alpha == 0, index == transparent)
    np.testing.assert_array_equal(img.pixels, lut[index])

    grey = Image.new("P", (4, 2))
    grey.putpalette([v for g in (0, 60, 120, 250) for v in (g, g, g)])
    grey.putdata([0, 1, 2, 3, 3, 2, 1, 0])
    img = read_image(_save(tmp_path / "pg.png", grey, transparency=2))
    assert img.channels == 1
    np.testing.assert_array_equal(img.pixels[..., 0], [[0, 60, 120, 250], [250, 120, 60, 0]])
    np.testing.assert_array_equal(img.alpha, [[255, 255, 0, 255], [255, 0, 255, 255]])


def test_colour_key_transparency_and_bilevel(tmp_path: Path) -> None:
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[1, 2] = (10, 20, 30)
    img = read_image(_save(tmp_path / "t.png", Image.fromarray(rgb), transparency=(10, 20, 30)))
    assert img.alpha is not None and img.alpha.dtype == np.uint8
    assert img.alpha[1, 2] == 0 and (img.alpha == 255).sum() == 11
    bits = Image.fromarray(np.array([[0, 255, 0]], np.uint8)).convert("1")
    img = read_image(_save(tmp_path / "b.png", bits))
    np.testing.assert_array_equal(img.pixels[..., 0], [[0, 255, 0]])


def test_16bit_grey_png_and_tiff(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 65536, (7, 11), dtype=np.uint16)
    for name in ("g16.png", "g16.tif"):
        path = _save(tmp_path / name, Image.fromarray(a))
        with Image.open(path) as im:
            assert im.mode == "I;16"
        img = read_image(path)
        assert img.bit_depth == 16 and img.pixels.dtype == np.uint16 and img.channels == 1
        np.testing.assert_array_equal(img.pixels[..., 0], a)


def test_16bit_colour_from_opencv_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 65536, (6, 10, 3), dtype=np.uint16)
    rgb[0, 0] = (65535, 0, 0)  # pure red: must land in channel 0 (RGB order)
    alpha = rng.integers(0, 65536, (6, 10), dtype=np.uint16)
    for name in ("c.png", "c.tiff"):
        assert cv2.imwrite(str(tmp_path / name), rgb[..., ::-1])
        img = read_image(tmp_path / name)
        assert img.bit_depth == 16 and img.alpha is None
        np.testing.assert_array_equal(img.pixels, rgb)
        assert tuple(img.pixels[0, 0]) == (65535, 0, 0)
    assert cv2.imwrite(str(tmp_path / "a.png"), np.dstack([rgb[..., ::-1], alpha]))
    img = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(img.pixels, rgb)
    np.testing.assert_array_equal(img.alpha, alpha)


def test_cmyk_bmp_webp(tmp_path: Path) -> None:
    img = read_image(_save(tmp_path / "c.jpg", Image.new("CMYK", (5, 4), (0, 0, 0, 0))))
    assert img.channels == 3
    assert img.pixels.min() >= 250  # CMYK white -> RGB white
    rgb = _photo()
    bmp = read_image(_save(tmp_path / "p.bmp", Image.fromarray(rgb)))
    np.testing.assert_array_equal(bmp.pixels, rgb)
    rgba = np.dstack([rgb, rgb[..., 0]])
    img = read_image(_save(tmp_path / "p.webp", Image.fromarray(rgba), lossless=True, exact=True))
    np.testing.assert_array_equal(img.pixels, rgb)
    np.testing.assert_array_equal(img.alpha, rgb[..., 0])


@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_32bit_modes_are_refused(tmp_path: Path, dtype: type) -> None:
    path = _save(tmp_path / "x.tif", Image.fromarray(np.zeros((4, 6), dtype)))
    with pytest.raises(ImageError, match="unsupported pixel mode") as err:
        read_image(path)
    assert str(path) in str(err.value)
    colour = tmp_path / "rgb.tif"  # a colour float TIFF the decoder cannot even open: it was "not an image"
    cv2.imwrite(str(colour), np.zeros((4, 6, 3), dtype))
    with pytest.raises(ImageError, match="a TIFF whose pixel layout the decoder does not take"):
        read_image(colour)


def _rle8_bmp(index: np.ndarray, palette: np.ndarray) -> bytes:
    """A bottom-up RLE8 BMP of the H x W palette ``index`` (runs of up to 255, end of line, end of bitmap)."""
    import struct

    height, width = index.shape
    data = bytearray()
    for row in index[::-1]:
        x = 0
        while x < width:
            n = 1
            while x + n < width and row[x + n] == row[x] and n < 255:
                n += 1
            data += bytes([n, int(row[x])])
            x += n
        data += b"\0\0"
    data += b"\0\1"
    table = b"".join(bytes([int(b), int(g), int(r), 0]) for r, g, b in palette)
    offset = 14 + 40 + len(table)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(data), 2835, 2835, len(palette), 0)
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + info + table + bytes(data)


def test_run_length_coded_bmps_read_as_pillow_reads_them_without_its_python_decoder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow decodes RLE BMPs in Python, a byte at a time: a 17 KB file of 4000x4000 one-pixel rows held a
    server worker for 5 s, 40 MB of zero-move escapes for 18 s (a helper's hostile-input hunt). They are
    decoded by OpenCV: the same pixels, grey when every pixel is, damage refused."""
    from PIL import BmpImagePlugin

    rng = np.random.default_rng(3)
    index = (np.arange(40 * 70).reshape(40, 70) // 23 % 256).astype(np.uint8)
    index[5:15, 10:40] = rng.integers(0, 256, (10, 30))
    colours = rng.integers(0, 256, (256, 3)).astype(np.uint8)
    greys = np.repeat(rng.permutation(256).astype(np.uint8)[:, None], 3, axis=1)  # grey, not a ramp
    expected = {}
    for name, palette in (("colour", colours), ("grey", greys)):
        (tmp_path / f"{name}.bmp").write_bytes(_rle8_bmp(index, palette))
        with Image.open(tmp_path / f"{name}.bmp") as im:
            assert im.info["compression"] == 1
            expected[name] = np.asarray(im.convert("RGB"))

    def python_decoder(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("Pillow's Python RLE decoder was used")

    monkeypatch.setattr(BmpImagePlugin.BmpRleDecoder, "decode", python_decoder)
    colour, grey = read_image(tmp_path / "colour.bmp"), read_image(tmp_path / "grey.bmp")
    assert colour.pixels.shape == (40, 70, 3) and np.array_equal(colour.pixels, expected["colour"])
    assert grey.pixels.shape == (40, 70, 1) and np.array_equal(grey.pixels[..., 0], expected["grey"][..., 0])
    assert colour.alpha is None and grey.alpha is None
    data = (tmp_path / "colour.bmp").read_bytes()
    (tmp_path / "cut.bmp").write_bytes(data[: len(data) - 200])
    with pytest.raises(ImageError, match="run-length coded BMP data is truncated or damaged"):
        read_image(tmp_path / "cut.bmp")


def _tiff_with_camera_tags() -> tuple[bytearray, int]:
    """A small RGB TIFF with Make and Model tags, and the offset of its first directory."""
    exif = Image.Exif()
    exif[271], exif[272] = "Canon", "Canon EOS 5D Mark IV"
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 48, 3), 128, np.uint8)).save(buf, "TIFF", exif=exif)
    data = bytearray(buf.getvalue())
    return data, struct.unpack_from("<I", data, 4)[0]


def _point_model_past_the_end(data: bytearray, ifd: int) -> None:
    """Damage: the Model tag's value offset points 100 bytes past the end of the file."""
    for k in range(struct.unpack_from("<H", data, ifd)[0]):
        if struct.unpack_from("<H", data, ifd + 2 + 12 * k)[0] == 272:
            struct.pack_into("<I", data, ifd + 2 + 12 * k + 8, len(data) + 100)


@pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin")  # Pillow warns as it stops at the damage
@pytest.mark.parametrize("damage", ["a tag's value offset", "the directory offset", "cut inside the directory"])
def test_a_tiff_whose_directory_points_outside_the_file_is_named_damaged(tmp_path: Path, damage: str) -> None:
    """One flipped bit in the offset of the Model tag's text made Pillow stop reading the directory, and
    the reader said "a TIFF whose pixel layout the decoder does not take (32-bit float ...)" (a helper's
    fuzzing): the file is damaged, and the message says so."""
    import struct

    data, ifd = _tiff_with_camera_tags()
    if damage == "a tag's value offset":
        _point_model_past_the_end(data, ifd)
        expected = "the value of its tag 272 lies outside the file"
    elif damage == "the directory offset":
        struct.pack_into("<I", data, 4, len(data) + 10)
        expected = "its first directory lies outside the file"
    else:
        data = data[: ifd + 2 + 12 * 3]
        expected = "its first directory runs past the end of the file"
    path = tmp_path / "damaged.tif"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=f"a damaged TIFF: {expected} .*re-copy or re-export it"):
        read_image(path)


# ----------------------------------------------------------------------------- bad input


def test_missing_directory_empty_text_gif(tmp_path: Path) -> None:
    cases = {
        tmp_path / "nope.png": "no such file",
        tmp_path: "is a directory",
        tmp_path / "empty.png": "empty",
        tmp_path / "notes.png": "not a readable image",
        tmp_path / "anim.gif": "not a readable image",
    }
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("this is not an image\n" * 20)
    Image.fromarray(_photo()).save(tmp_path / "anim.gif")
    for path, reason in cases.items():
        for fn in (read_image, read_camera_exif):
            with pytest.raises(ImageError, match=reason) as err:
                fn(path)
            assert str(path) in str(err.value)


def _truncated_files(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(4)
    ok, png16 = cv2.imencode(".png", rng.integers(0, 65536, (64, 80, 3), dtype=np.uint16))
    assert ok
    sources = {
        "half.jpg": (SAMPLES / "canon" / "flower.jpg").read_bytes(),
        "half.mpo": (SAMPLES / "nintendo" / "sugarshack.mpo").read_bytes()[:60_000],
        "half.png": (HR / "chelsea.png").read_bytes(),
        "half16.png": png16.tobytes(),
        "half16.tiff": _tiff16(rng.integers(0, 65536, (64, 80, 3), dtype=np.uint16)),
    }
    out = []
    for name, data in sources.items():
        path = tmp_path / name
        path.write_bytes(data[: len(data) // 2])
        out.append(path)
    return out


def test_truncated_files_raise(tmp_path: Path) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    for path in _truncated_files(tmp_path):
        with pytest.raises(ImageError, match="truncated") as err:
            read_image(path)
        assert str(path) in str(err.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_refuses_when_truncated_loading_was_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageError, match="LOAD_TRUNCATED_IMAGES"):
        read_image(HR / "chelsea.png")


def test_decompression_bomb_headers(tmp_path: Path, no_decode: None) -> None:
    huge = tmp_path / "huge.png"  # 900 Mpx: beyond Pillow's hard limit
    huge.write_bytes(_png_claiming(30_000, 30_000))
    big = tmp_path / "big.png"  # 110 Mpx: Pillow only warns; max_pixels must refuse
    big.write_bytes(_png_claiming(11_000, 10_000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # over Pillow's guard and over max_pixels: max_pixels is the limit named (it is the one that counts)
        with pytest.raises(ImageError,
                           match="image is 30000x30000 = 900,000,000 pixels, above the limit of 100,000,000") as err:
            read_image(huge)
        assert str(huge) in str(err.value) and str(err.value).endswith("downscale it first")
        assert "MAX_IMAGE_PIXELS" not in str(err.value)  # library advice, no use to a server's client
        with pytest.raises(ImageError, match="decompression bomb") as err:  # a limit above the guard: the guard
            read_image(huge, max_pixels=10**9)
        from adassr.runtime.server.codec import UploadFolder

        uploads = UploadFolder()
        try:  # the server names its operator's --max-pixels wherever that limit refuses the image
            with pytest.raises(ImageError, match="above the limit of 20,000.*set by its operator with --max-pixels"):
                uploads.decode(huge.read_bytes(), max_pixels=20_000)
            with pytest.raises(ImageError, match="above the limit of 20,000.*set by its operator with --max-pixels"):
                uploads.decode(big.read_bytes(), max_pixels=20_000)
        finally:
            uploads.close()
        with pytest.raises(ImageError, match="above the limit of .*; downscale it first") as err:
            read_image(big)
        assert "110,000,000" in str(err.value) and str(big) in str(err.value)
        with pytest.raises(ImageError, match="above the limit of .*; downscale it first"):
            read_image(HR / "chelsea.png", max_pixels=1000)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".jpg", ".webp", ".bmp"])
def test_pillow_warning_superseded_by_max_pixels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    """Every format: Pillow's TIFF decoder warned again while decoding (a review's finding)."""
    path = _save(tmp_path / f"g{suffix}", Image.fromarray(_photo(40, 40)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1600 px: Pillow warns, below 2x
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(path).pixels.shape[:2] == (40, 40)
        with pytest.raises(ImageError, match="above the limit of 1,599, which guards memory; downscale it first"):
            read_image(path, max_pixels=1599)
    leaked = [f for f in warnings.filters if f[2] is Image.DecompressionBombWarning]
    assert leaked == []  # read_image's filter change did not outlive the call


def test_reading_with_notes_leaves_the_warning_hooks_of_other_threads_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The header open silenced Pillow's bomb warning with warnings.catch_warnings, which puts the process's
    filters and showwarning back as they were when it began: a hook another thread installed meanwhile (a
    caller recording warnings beside a server's decoding threads) was undone (a helper's hunt)."""
    path = _save(tmp_path / "g.png", Image.fromarray(_photo(40, 40)))

    def other_threads_hook(*args: object, **kwargs: object) -> None:
        pass

    factory, accept = Image.OPEN["PNG"]

    def opening(fp: Any, filename: Any) -> Any:
        warnings.showwarning = other_threads_hook  # installed by another thread while this one opens the file
        return factory(fp, filename)

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # put back after the test
    monkeypatch.setitem(Image.OPEN, "PNG", (opening, accept))
    assert read_image(path, notes=[]).pixels.shape == (40, 40, 3)
    assert warnings.showwarning is other_threads_hook


@pytest.mark.parametrize("value", [0, -5, 1.5, True])
def test_bad_max_pixels(value: object) -> None:
    with pytest.raises(ConfigError, match="max_pixels"):
        read_image(HR / "chelsea.png", max_pixels=value)  # type: ignore[arg-type]


def test_concurrent_reads_match_serial() -> None:
    from concurrent.futures import ThreadPoolExecutor

    paths = [SAMPLES / "canon" / "flower.jpg", SAMPLES / "nokia" / "iptc.jpg", HR / "chelsea.png"]
    paths *= 3
    filters_before = list(warnings.filters)
    serial = [read_image(p).pixels for p in paths]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = [img.pixels for img in pool.map(read_image, paths)]
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)
    assert list(warnings.filters) == filters_before


# ----------------------------------------------------------------------------- large real photo


@pytest.mark.skipif(not FUJI.is_file(), reason=f"{FUJI} not present on this machine")
def test_large_real_photo(monkeypatch: pytest.MonkeyPatch) -> None:
    img = read_image(FUJI)
    assert (img.height, img.width, img.channels) == (2736, 3648, 3)
    assert (img.exif_make, img.exif_model) == ("FUJIFILM", "FinePix REAL 3D W3")
    assert img.pixels[::8, ::8].std() > 10  # a real photo, not a flat fill

    calls: list[str] = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda *_a, **_k: calls.append("pillow"))
    monkeypatch.setattr(cv2, "imdecode", lambda *_a, **_k: calls.append("opencv"))
    with pytest.raises(ImageError, match="9,980,928 pixels") as err:
        read_image(FUJI, max_pixels=5_000_000)
    assert "5,000,000" in str(err.value)
    assert calls == []  # refused from the header: neither decoder ran (no timing needed to show it)


# ----------------------------------------------------------------------------- writing


def _roundtrip(path: Path, pixels: np.ndarray, alpha: np.ndarray | None = None) -> LoadedImage:
    assert write_image(path, pixels, alpha=alpha) == path
    return read_image(path)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".TIFF"])
def test_write_lossless_roundtrips(tmp_path: Path, suffix: str) -> None:
    rgb = _photo()
    rng = np.random.default_rng(5)
    rgb16 = rng.integers(0, 65536, (9, 13, 3), dtype=np.uint16)
    a16 = rng.integers(0, 65536, (9, 13), dtype=np.uint16)
    cases: list[tuple[np.ndarray, np.ndarray | None]] = [
        (rgb, None),
        (rgb[..., :1], None),
        (rgb, rgb[..., 2].copy()),
        (rgb16, None),
        (rgb16[..., 1:2], None),
        (rgb16, a16),
    ]
    if suffix == ".png":
        cases += [(rgb[..., :1], rgb[..., 0].copy()), (rgb16[..., :1], a16)]
    for i, (px, al) in enumerate(cases):
        img = _roundtrip(tmp_path / f"r{i}{suffix}", px, al)
        assert img.pixels.dtype == px.dtype and img.bit_depth == (8 if px.dtype == np.uint8 else 16)
        np.testing.assert_array_equal(img.pixels, px, err_msg=f"case {i}")
        if al is None:
            assert img.alpha is None
        else:
            np.testing.assert_array_equal(img.alpha, al, err_msg=f"case {i}")


def test_write_2d_grey_and_16bit_grey_alpha_tiff(tmp_path: Path) -> None:
    grey = _photo()[..., 0].copy()
    np.testing.assert_array_equal(_roundtrip(tmp_path / "g.png", grey).pixels[..., 0], grey)
    g16 = grey.astype(np.uint16) * 257
    alpha = (np.arange(g16.size, dtype=np.uint16).reshape(g16.shape) * 97) % 65535
    back = _roundtrip(tmp_path / "ga.tif", g16, alpha)  # refused after the upscale once; now 16-bit RGBA
    assert back.bit_depth == 16 and back.channels == 3
    np.testing.assert_array_equal(back.pixels, np.repeat(g16[..., None], 3, axis=2))
    np.testing.assert_array_equal(back.alpha, alpha)


def test_signed_16_bit_tiff_gets_a_message_that_names_the_samples(tmp_path: Path) -> None:
    """A valid signed 16-bit TIFF was called inconsistent ("re-export it")."""
    path = tmp_path / "s16.tif"
    assert cv2.imwrite(str(path), (np.arange(24 * 40).reshape(24, 40) - 300).astype(np.int16))
    with pytest.raises(ImageError, match=r"unsupported samples \(int16, not unsigned 8- or 16-bit\); convert"):
        read_image(path)


@pytest.mark.parametrize("suffix, limit", [(".webp", 16_383), (".jpg", 65_500), (".jpeg", 65_500)])
def test_a_size_the_format_cannot_hold_is_refused_before_writing(tmp_path: Path, suffix: str, limit: int) -> None:
    """WebP output wider than 16383 px failed in the encoder (after the whole upscale), with its raw
    message; JPEG past 65500 px too."""
    from adassr.runtime.errors import ImageTooLargeError
    from adassr.runtime.images import check_writable_size, size_problem

    assert size_problem(suffix, 2, limit) is None and size_problem(suffix, limit, 2) is None
    assert size_problem(".png", 2, 70_000) is None and size_problem(".tif", 70_000, 2) is None
    with pytest.raises(ImageTooLargeError, match=f"a {limit + 1}x2 image is larger than .* can hold "
                                                 f"\\({limit:,} pixels a side\\); write .png or .tif"):
        check_writable_size(tmp_path / f"w{suffix}", 2, limit + 1)
    target = tmp_path / f"o{suffix}"
    target.write_bytes(b"the old output")
    with pytest.raises(ImageTooLargeError):
        write_image(target, np.zeros((limit + 1, 1, 3), np.uint8))
    assert target.read_bytes() == b"the old output" and sorted(p.name for p in tmp_path.iterdir()) == [target.name]
    assert len(encode_image(".png", np.zeros((2, 16_400, 3), np.uint8))) > 0  # PNG holds it


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def test_write_jpeg_webp_approximate(tmp_path: Path) -> None:
    rgb = _photo(96, 128)
    for suffix in (".jpg", ".jpeg", ".webp"):
        img = _roundtrip(tmp_path / f"a{suffix}", rgb)
        assert img.pixels.shape == rgb.shape and img.pixels.dtype == np.uint8
        assert _psnr(img.pixels, rgb) > 32, suffix
    low = write_image(tmp_path / "low.jpg", rgb, quality=10)
    assert low.stat().st_size < (tmp_path / "a.jpg").stat().st_size / 2
    grey = _photo(96, 128)[..., :1]
    img = _roundtrip(tmp_path / "g.jpg", grey)
    assert img.channels == 1 and _psnr(img.pixels, grey) > 32
    img = _roundtrip(tmp_path / "g.webp", grey)  # WebP has no grey mode: stored as RGB
    assert img.channels == 3 and _psnr(img.pixels, np.repeat(grey, 3, axis=2)) > 32


def test_write_webp_keeps_alpha_jpeg_drops_it(tmp_path: Path) -> None:
    rgb = _photo()
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, :20] = 0
    img = _roundtrip(tmp_path / "a.webp", rgb, alpha)
    np.testing.assert_array_equal(img.alpha, alpha)
    with pytest.warns(AlphaDroppedWarning, match="alpha"):
        write_image(tmp_path / "a.jpg", rgb, alpha=alpha)
    assert read_image(tmp_path / "a.jpg").alpha is None


def test_write_16bit_to_8bit_formats_rounds(tmp_path: Path) -> None:
    levels = np.array([0, 128, 129, 385, 386, 32896, 65407, 65535], np.uint16)
    flat = np.repeat(np.repeat(levels, 8)[None, :], 8, axis=0)  # 8 x 64, flat 8x8 blocks
    img = _roundtrip(tmp_path / "a.jpg", flat[..., None])
    assert img.bit_depth == 8
    expected = np.round(flat.astype(np.float64) * 255 / 65535)
    assert np.abs(img.pixels[..., 0].astype(int) - expected).max() <= 1
    every = np.arange(65536, dtype=np.uint16)
    exact = np.round(every.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(uint16_to_uint8(every), exact)


@pytest.mark.parametrize("suffix", [".jpg", ".webp"])
def test_a_12_bit_image_keeps_its_brightness_in_8_bit_formats(tmp_path: Path, suffix: str) -> None:
    """A 16-bit file of 12-bit samples (values up to 4095; the upscaled output keeps that range) written to
    JPEG or WebP was divided by 257: white came out at 16 of 255, nearly black. With the input's sample
    range as ``peak`` it comes out as the 8-bit photo would."""
    rgb = _photo()
    twelve = np.round(rgb.astype(np.float64) * 4095 / 255).astype(np.uint16)
    want = _roundtrip(tmp_path / f"eight{suffix}", rgb).pixels.astype(int)
    dark = _roundtrip(tmp_path / f"dark{suffix}", twelve).pixels
    assert dark.max() <= 17  # the default: 65535 stands for white
    path = tmp_path / f"twelve{suffix}"
    assert write_image(path, twelve, peak=4095) == path
    got = read_image(path).pixels.astype(int)
    assert np.abs(got - want).mean() < 0.5 and np.abs(got - want).max() <= 3
    again = encode_image(suffix, twelve, peak=4095, quality=95)
    assert again == path.read_bytes()


def test_peak_converts_16_bit_levels_and_alpha_exactly(tmp_path: Path) -> None:
    every = np.arange(65536, dtype=np.uint16)
    for peak in (1023, 4095, 16383, 65535, 1000):
        want = np.minimum(np.floor(every.astype(np.float64) * 255 / peak + 0.5), 255).astype(np.uint8)
        np.testing.assert_array_equal(uint16_to_uint8(every, peak), want)
    # alpha: at the pixels' range when it holds it (a 12-bit file's alpha), else at 16 bits
    px = np.full((8, 8, 3), 4095, np.uint16)
    for alpha, opaque in ((np.full((8, 8), 4095, np.uint16), 255), (np.full((8, 8), 65535, np.uint16), 255),
                          (np.full((8, 8), 2048, np.uint16), 128), (np.full((8, 8), 32896, np.uint16), 128)):
        alpha[:, :2] = 0  # not opaque everywhere: the reader keeps it
        back = read_image(write_image(tmp_path / "a.webp", px, alpha=alpha, peak=4095))
        assert back.alpha is not None and int(back.alpha[4, 6]) == opaque, int(alpha[4, 6])
        assert int(back.pixels[4, 4, 0]) == 255
    # 16-bit formats keep the values as they are
    assert int(read_image(write_image(tmp_path / "k.png", px, peak=4095)).pixels.max()) == 4095
    for bad, pixels in ((0, px), (65536, px), (True, px), (4095.0, px), (4095, px[..., :1].astype(np.uint8))):
        with pytest.raises(ConfigError, match="peak"):
            write_image(tmp_path / "bad.jpg", pixels, peak=bad)  # type: ignore[arg-type]
    assert not (tmp_path / "bad.jpg").exists()
    grey8 = read_image(write_image(tmp_path / "u8.jpg", np.full((8, 8, 1), 120, np.uint8), peak=255)).pixels
    assert abs(int(grey8.max()) - 120) <= 1 and abs(int(grey8.min()) - 120) <= 1  # 8-bit: as it is


def test_a_bad_peak_is_refused_whatever_the_format_and_dtype(tmp_path: Path) -> None:
    """peak is checked before any conversion: a PNG or TIFF (which ignore it) and 8-bit pixels (which are
    written as they are) refuse a bad one too, and uint16_to_uint8 itself does not take True, 2.5 or 0
    (0 divided by zero and gave black with a RuntimeWarning)."""
    px16 = np.full((8, 8, 3), 4095, np.uint16)
    px8 = np.full((8, 8, 3), 120, np.uint8)
    for suffix in (".png", ".tif", ".jpg"):
        for bad, pixels in ((0, px16), (True, px16), (4095.0, px16), (100, px8), (True, px8)):
            with pytest.raises(ConfigError, match="peak"):
                write_image(tmp_path / f"bad{suffix}", pixels, peak=bad)  # type: ignore[arg-type]
            assert not (tmp_path / f"bad{suffix}").exists()
    every = np.arange(65536, dtype=np.uint16)
    for bad in (True, 2.5, 0, -1, 65536):
        with pytest.raises(ConfigError, match="peak"):
            uint16_to_uint8(every, bad)  # type: ignore[arg-type]


def test_write_rejects_bad_input_and_leaves_nothing(tmp_path: Path) -> None:
    rgb = _photo()
    bad = [
        (tmp_path / "a.gif", rgb, {}, ImageError, ".png"),
        (tmp_path / "a", rgb, {}, ImageError, ".tiff"),
        (tmp_path / "f.png", rgb.astype(np.float32), {}, ImageError, "from_float32"),
        (tmp_path / "i.png", rgb.astype(np.int16), {}, ImageError, "uint16"),
        (tmp_path / "c4.png", np.dstack([rgb, rgb[..., :1]]), {}, ImageError, "alpha="),
        (tmp_path / "e.png", rgb[:0], {}, ImageError, "non-empty"),
        (tmp_path / "ad.png", rgb, {"alpha": rgb[..., 0].astype(np.uint16)}, ImageError, "alpha"),
        (tmp_path / "as.png", rgb, {"alpha": rgb[:-1, :, 0]}, ImageError, "alpha"),
        (tmp_path / "q.jpg", rgb, {"quality": 0}, ConfigError, "quality"),
        (tmp_path / "nodir" / "a.png", rgb, {}, ImageError, "does not exist"),
    ]
    for path, px, kw, exc, needle in bad:
        with pytest.raises(exc, match=needle.replace(".", "\\.")):
            write_image(path, px, **kw)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fail_at", ["fsync", "replace"])
def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: str) -> None:
    path = tmp_path / "out.png"
    write_image(path, _photo())
    before = path.read_bytes()

    def broken(*_a: object, **_k: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(write_module.os, fail_at, broken)
    with pytest.raises(ImageError, match="No space left") as err:
        write_image(path, _photo()[::-1].copy())
    assert str(path) in str(err.value)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_a_full_disk_while_the_encoder_writes_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  suffix: str) -> None:
    """PNG and JPEG are encoded straight into the temporary file, TIFF through memory; a disk that fills
    half-way reads as a full disk (not as an encoder error) and keeps the old image."""
    path = write_image(tmp_path / f"out{suffix}", _photo())
    before = path.read_bytes()
    real = write_module._Encoding.write_to
    noise = np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8)  # about 1.4 MB of PNG

    def half_then_full(self: object, out: object) -> None:
        class Filling:
            def __init__(self) -> None:
                self.written = 0

            def write(self, data: bytes) -> int:
                if self.written + len(data) > 20_000:
                    raise OSError(28, "No space left on device")
                self.written += len(data)
                return out.write(data)  # type: ignore[attr-defined, no-any-return]

            def __getattr__(self, name: str) -> object:
                if name == "fileno":
                    raise AttributeError(name)  # Pillow must go through write()
                return getattr(out, name)

        real(self, Filling())  # type: ignore[arg-type]

    monkeypatch.setattr(write_module._Encoding, "write_to", half_then_full)
    with pytest.raises(ImageError, match="writing failed .No space left"):
        write_image(path, noise)
    monkeypatch.undo()
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".tif"])
def test_encode_image_gives_the_bytes_write_image_writes(tmp_path: Path, suffix: str) -> None:
    """The server encodes with encode_image, the CLI writes with write_image: the same bytes, 8 and 16 bit."""
    for pixels in (_photo(), _photo().astype(np.uint16) * 257):
        path = write_image(tmp_path / f"a{suffix}", pixels, icc_profile=_profile() if suffix != ".tif" else None)
        assert encode_image(suffix, pixels, icc_profile=_profile() if suffix != ".tif" else None) == path.read_bytes()
    for wrong in (suffix.lstrip("."), f"x{suffix}", Path(suffix)):
        with pytest.raises(ImageError, match="takes a file suffix with its dot"):
            encode_image(wrong, _photo())  # type: ignore[arg-type]
    for no_path in (b"x" + suffix.encode(), None):
        with pytest.raises(ImageError, match="str or pathlib.Path"):
            write_image(no_path, _photo())  # type: ignore[arg-type]
        with pytest.raises(ImageError, match="str or pathlib.Path"):
            read_image(no_path)  # type: ignore[arg-type]


def _profile(space: bytes = b"RGB ") -> bytes:
    """The Adobe RGB (1998) profile of the bundled canon photo, its colour space field set to ``space``."""
    profile = read_image(SAMPLES / "canon" / "xmp_test.jpg").icc_profile
    assert profile is not None and profile[16:20] == b"RGB "
    return profile[:16] + space + profile[20:]


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".tif"])
def test_colour_profile_roundtrip_8bit(tmp_path: Path, suffix: str) -> None:
    profile = _profile()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProfileDroppedWarning)
        path = write_image(tmp_path / f"a{suffix}", _photo(), icc_profile=profile)
    assert read_image(path).icc_profile == profile
    assert read_image(write_image(tmp_path / f"plain{suffix}", _photo())).icc_profile is None


def test_colour_profile_16bit_png_and_where_it_is_dropped(tmp_path: Path) -> None:
    rgb16 = _photo().astype(np.uint16) * 257 + 3
    path = write_image(tmp_path / "deep.png", rgb16, icc_profile=_profile())
    back = read_image(path)  # an iCCP chunk added to OpenCV's PNG: both decoders still read it
    assert back.icc_profile == _profile() and back.bit_depth == 16
    np.testing.assert_array_equal(back.pixels, rgb16)
    with Image.open(path) as im:
        assert im.info["icc_profile"] == _profile()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProfileDroppedWarning)  # 16-bit TIFF keeps it too now (an ICC tag added)
        deep_tif = write_image(tmp_path / "deep.tif", rgb16, icc_profile=_profile())
        with_alpha = write_image(tmp_path / "deep_a.tif", rgb16, alpha=rgb16[..., 0].copy(), icc_profile=_profile())
    for tif in (deep_tif, with_alpha):
        back = read_image(tif)
        assert back.icc_profile == _profile() and back.bit_depth == 16
        np.testing.assert_array_equal(back.pixels, rgb16)
    np.testing.assert_array_equal(read_image(with_alpha).alpha, rgb16[..., 0])
    with Image.open(with_alpha) as im:
        assert im.tag_v2.get(338) == (2,) and im.info["icc_profile"] == _profile()
    with pytest.warns(ProfileDroppedWarning, match="16-bit grey\\+alpha TIFF is stored as RGBA"):
        grey16 = rgb16[..., :1].copy()
        write_image(tmp_path / "ga.tif", grey16, alpha=grey16[..., 0].copy(), icc_profile=_profile(b"GRAY"))
    grey = _photo()[..., :1].copy()
    with pytest.warns(ProfileDroppedWarning, match="RGB profile for grey pixels"):
        write_image(tmp_path / "g.png", grey, icc_profile=_profile())
    gray_profile = _profile(b"GRAY")
    assert read_image(write_image(tmp_path / "g2.png", grey, icc_profile=gray_profile)).icc_profile == gray_profile
    with pytest.warns(ProfileDroppedWarning, match="WebP stores grey as RGB"):
        write_image(tmp_path / "g.webp", grey, icc_profile=gray_profile)


def test_a_profile_that_does_not_describe_the_decoded_pixels_is_not_kept(tmp_path: Path) -> None:
    """A CMYK file is decoded to RGB, so its CMYK profile would be wrong on the output. The image says
    which profile it dropped, for the note of whoever writes an output (reading alone prints nothing:
    `adassr metrics` printed a note about an output it never writes)."""
    cmyk = Image.fromarray(_photo()).convert("CMYK")
    cmyk.save(tmp_path / "c.jpg", quality=95, icc_profile=_profile(b"CMYK"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = read_image(tmp_path / "c.jpg")
    assert image.channels == 3 and image.icc_profile is None and image.dropped_profile == "CMYK"
    assert image.profile_note() == ("its CMYK colour profile does not describe its RGB pixels, so the output "
                                    "carries no profile (viewers show it as sRGB)")
    # A grey PNG carrying an RGB profile (which the PNG rules do not allow): dropped, and said so.
    Image.fromarray(_photo()[..., 0]).save(tmp_path / "g.png", icc_profile=_profile())
    grey = read_image(tmp_path / "g.png")
    assert grey.icc_profile is None and "its RGB colour profile does not describe its grey pixels" in str(
        grey.profile_note())
    assert read_image(write_image(tmp_path / "plain.png", _photo())).profile_note() is None


def test_image_notes_logged_turns_notes_into_log_lines_as_they_come(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Adaptation and metrics print no notes of their own: a multi-page note became a raw Python warning
    there. Notes are logged when raised, so a read that fails afterwards loses none."""
    import logging

    from adassr.runtime.images import image_notes_logged

    frames = [Image.fromarray(_photo()), Image.fromarray(_photo()[::-1].copy())]
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])
    logger = logging.getLogger("test.notes")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ImageWarning)  # no ImageWarning escapes as a Python warning
        with caplog.at_level(logging.WARNING, logger="test.notes"), pytest.raises(RuntimeError), \
                image_notes_logged(logger):
            read_image(tmp_path / "pages.tif")
            raise RuntimeError("a later failure in the block")
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / 'pages.tif'}: holds more than one page (a multi-page file); only the first is read"]
    with pytest.warns(DeprecationWarning, match="other warnings pass"), image_notes_logged(logger):
        warnings.warn("other warnings pass as Python shows them", DeprecationWarning, stacklevel=1)


def test_pillows_warnings_on_a_damaged_file_become_log_lines(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """``adassr metrics`` on a damaged TIFF printed Pillow's "site-packages/PIL/TiffImagePlugin.py:982:
    UserWarning: Truncated File Read" and a line of Pillow's source above its own error."""
    import logging

    from adassr.runtime.images import image_notes_logged

    data, ifd = _tiff_with_camera_tags()
    _point_model_past_the_end(data, ifd)
    (tmp_path / "damaged.tif").write_bytes(bytes(data))
    logger = logging.getLogger("test.notes")
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with caplog.at_level(logging.WARNING, logger="test.notes"), image_notes_logged(logger), \
                pytest.raises(ImageError, match="a damaged TIFF"):
            read_image(tmp_path / "damaged.tif")
    assert not [w for w in shown if issubclass(w.category, UserWarning)]
    assert {r.getMessage() for r in caplog.records} == {"the image decoder (Pillow) noted: Truncated File Read"}


def _watch_warnings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A list that records each use of ``warnings.warn`` and ``warnings.catch_warnings`` (which still work)."""
    used: list[str] = []
    real_warn, real_catch = warnings.warn, warnings.catch_warnings

    def warn(*args: Any, **kwargs: Any) -> None:
        used.append("warn")
        real_warn(*args, **kwargs)

    def catch(*args: Any, **kwargs: Any) -> Any:
        used.append("catch_warnings")
        return real_catch(*args, **kwargs)

    monkeypatch.setattr(warnings, "warn", warn)
    monkeypatch.setattr(warnings, "catch_warnings", catch)
    return used


def test_read_notes_go_to_a_list_without_the_warnings_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server reads concurrent uploads in threads: it silenced the reader's notes with
    warnings.catch_warnings, process-wide state that threads share (a filter restored by one thread
    dropped another's), and a client never learnt that only the first page of its file was upscaled.
    With ``notes`` the messages come back per call and the warnings machinery is not used."""
    frames = [Image.fromarray(_photo()), Image.fromarray(_photo()[::-1].copy())]
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])
    collected: list[str] = []
    used = _watch_warnings(monkeypatch)
    image = read_image(tmp_path / "pages.tif", notes=collected)
    monkeypatch.undo()
    assert "warn" not in used, used
    assert collected == [
        f"{tmp_path / 'pages.tif'}: holds more than one page (a multi-page file); only the first is read"]
    assert np.array_equal(image.pixels, _photo())
    with pytest.warns(ImageWarning, match="only the first is read"):  # without a list: a warning, as before
        read_image(tmp_path / "pages.tif")


def test_a_grey_palette_with_an_rgb_profile_is_read_as_rgb_and_keeps_the_profile(tmp_path: Path) -> None:
    """A palette PNG whose colours are all grey was read as grey, and its (valid) RGB profile then dropped
    without a word: Adobe RGB greys shift in colour-managed viewers once the profile is gone."""
    grey = np.repeat(_photo()[..., :1] // 16 * 16, 3, axis=2)
    palette = Image.fromarray(grey).quantize(16)
    palette.save(tmp_path / "p.png", icc_profile=_profile())
    palette.save(tmp_path / "plain.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProfileDroppedWarning)
        image = read_image(tmp_path / "p.png")
    assert image.channels == 3 and image.icc_profile == _profile()
    np.testing.assert_array_equal(image.pixels, np.asarray(palette.convert("RGB")))
    assert read_image(tmp_path / "plain.png").channels == 1  # without a profile a grey palette is still grey


def test_written_file_has_normal_permissions(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    path = write_image(tmp_path / "a.png", _photo())
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    overwritten = write_image(tmp_path / "a.png", _photo()[::-1].copy())
    np.testing.assert_array_equal(read_image(overwritten).pixels, _photo()[::-1])


# ----------------------------------------------------------------------------- float conversion


def test_float_roundtrip_is_exact() -> None:
    for dtype, bits in ((np.uint8, 8), (np.uint16, 16)):
        every = np.arange(np.iinfo(dtype).max + 1, dtype=dtype)
        f = to_float32(every)
        assert f.dtype == np.float32 and f[0] == 0.0 and f[-1] == 1.0
        np.testing.assert_array_equal(from_float32(f, bits), every)


def test_from_float32_clips_rounds_and_refuses() -> None:
    a = np.array([-0.5, 0.0, 0.4 / 255, 0.6 / 255, 1.0, 1.5], np.float32)  # a model's overshoot: clipped
    np.testing.assert_array_equal(from_float32(a, 8), [0, 0, 0, 1, 255, 255])
    # another scale (0-255 levels as float) became white, +inf the peak (a helper's hunt of the library API)
    with pytest.raises(ImageError, match=r"values in \[0.5, 255\], not on the \[0, 1\] scale: divide 8-bit"):
        from_float32(np.array([0.5, 2.0, 255.0], np.float32), 8)
    with pytest.raises(ImageError, match="NaN or infinite"):
        from_float32(np.array([0.5, np.inf], np.float32), 16)
    for not_an_array in ([0.5], None):
        with pytest.raises(ImageError, match="expects a numpy array, got builtins"):
            from_float32(not_an_array, 8)  # type: ignore[arg-type]
        with pytest.raises(ImageError, match="expects a numpy array"):
            to_float32(not_an_array)  # type: ignore[arg-type]
    assert from_float32(np.zeros((0, 3), np.float32), 8).shape == (0, 3)
    assert from_float32(a, 16).dtype == np.uint16
    assert from_float32(np.array([1.0], np.float16), 16)[0] == 65535  # no float16 overflow
    with pytest.raises(ImageError, match="NaN"):
        from_float32(np.array([0.5, np.nan], np.float32), 8)
    with pytest.raises(ConfigError, match="bit_depth"):
        from_float32(a, 12)
    with pytest.raises(ImageError, match="floating"):
        from_float32(np.zeros(3, np.uint8), 8)
    with pytest.raises(ImageError, match="uint8 or uint16"):
        to_float32(np.zeros(3, np.float32))


def test_loaded_image_validates() -> None:
    px = np.zeros((2, 3, 3), np.uint8)
    img = LoadedImage(px, None, 8, None, None, None)
    assert (img.height, img.width, img.channels) == (2, 3, 3)
    with pytest.raises(ImageError):
        LoadedImage(px, None, 16, None, None, None)
    with pytest.raises(ImageError):
        LoadedImage(px, np.zeros((2, 3), np.uint16), 8, None, None, None)
    with pytest.raises(ImageError):
        LoadedImage(np.zeros((2, 3, 2), np.uint8), None, 8, None, None, None)


@pytest.mark.parametrize("suffix", [".tif", ".png", ".jpg"])
def test_a_file_size_limit_reads_as_a_write_failure(tmp_path: Path, suffix: str) -> None:
    """A real short write (RLIMIT_FSIZE, in a child process): libtiff, writing to the file descriptor
    itself, used to report it as 'Pillow could not encode TIFF (encoder error -2)'."""
    script = """
import resource, signal, sys
import numpy as np
from adassr.runtime.errors import ImageError
from adassr.runtime.images import write_image
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
noise = np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8)
resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
try:
    write_image(sys.argv[1], noise)
except ImageError as exc:
    print(exc)
"""
    target = tmp_path / f"out{suffix}"
    proc = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert "writing failed (File too large)" in proc.stdout, proc.stdout + proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_sixteen_bit_rgba_tiff_says_its_fourth_sample_is_alpha(tmp_path: Path,
                                                                capfd: pytest.CaptureFixture[str]) -> None:
    """OpenCV wrote 16-bit RGBA TIFF without ExtraSamples: other readers took the alpha for an unknown
    channel, and OpenCV's own reader warned on stderr at every read. The profile is kept beside it."""
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 65536, (9, 7, 3), dtype=np.uint16)
    alpha = rng.integers(0, 65536, (9, 7), dtype=np.uint16)
    path = write_image(tmp_path / "a.tif", pixels, alpha=alpha, icc_profile=_profile())
    with Image.open(path) as im:
        assert im.tag_v2.get(338) == (2,) and im.tag_v2.get(277) == 4  # unassociated alpha
        assert im.info["icc_profile"] == _profile()
    capfd.readouterr()
    back = read_image(path)
    assert "TIFF_Warning" not in capfd.readouterr().err
    np.testing.assert_array_equal(back.pixels, pixels)
    np.testing.assert_array_equal(back.alpha, alpha)
    assert back.icc_profile == _profile()


def test_a_folder_that_cannot_be_fsynced_does_not_fail_a_written_image(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Some network and FUSE filesystems refuse fsync on a folder (EINVAL): the complete output, already
    in place, was reported as failed."""
    import errno
    import stat as stat_module

    real_fsync = os.fsync

    def picky(fd: int) -> None:
        if stat_module.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", picky)
    target = tmp_path / "out.png"
    write_image(target, _photo())
    np.testing.assert_array_equal(read_image(target).pixels, _photo())


def test_a_folder_that_can_be_written_but_not_read_gets_its_image(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """In a mode-0333 folder (writable, not readable) the folder cannot be opened to fsync it: the complete
    output, already in place, was reported as "an unexpected PermissionError, a bug" (a helper's review)."""
    real_open = os.open
    target = tmp_path / "drop" / "x.png"
    target.parent.mkdir()

    def no_read(path, flags, *args, **kw):  # type: ignore[no-untyped-def]
        if Path(path) == target.parent and not flags & (os.O_WRONLY | os.O_RDWR):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", no_read)
    write_image(target, _photo())
    monkeypatch.undo()
    np.testing.assert_array_equal(read_image(target).pixels, _photo())


def _png_with_chunks(path: Path, chunks: list[tuple[bytes, bytes]]) -> Path:
    """A 4 x 4 RGB PNG with extra ancillary chunks before its image data."""
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4, 3), 100, np.uint8)).save(buf, format="PNG")
    data = buf.getvalue()
    at = data.index(b"IDAT") - 4
    extra = b"".join(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
                     for kind, body in chunks)
    path.write_bytes(data[:at] + extra + data[at:])
    return path


def test_colours_declared_without_an_icc_profile_get_a_note(tmp_path: Path) -> None:
    """PNG gAMA / cHRM and the EXIF ColorSpace 'Uncalibrated' of an Adobe RGB camera JPEG were dropped
    without a word: viewers showed the outputs as sRGB (a helper's review)."""
    linear = read_image(_png_with_chunks(tmp_path / "linear.png", [(b"gAMA", struct.pack(">I", 100000))]))
    assert "a PNG gAMA of 1" in (linear.profile_note() or "")
    p3 = [int(v * 100000) for v in (0.3127, 0.329, 0.68, 0.32, 0.265, 0.69, 0.15, 0.06)]
    wide = read_image(_png_with_chunks(tmp_path / "p3.png", [(b"cHRM", struct.pack(">8I", *p3))]))
    assert "PNG cHRM primaries other than sRGB's" in (wide.profile_note() or "")
    srgb = [int(v * 100000) for v in (0.3127, 0.329, 0.64, 0.33, 0.30, 0.60, 0.15, 0.06)]
    plain = read_image(_png_with_chunks(tmp_path / "srgb.png", [(b"gAMA", struct.pack(">I", 45455)),
                                                                (b"cHRM", struct.pack(">8I", *srgb))]))
    assert plain.profile_note() is None
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA001] = 0xFFFF
    Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(tmp_path / "adobe.jpg", exif=exif.tobytes())
    assert "EXIF ColorSpace 'Uncalibrated'" in (read_image(tmp_path / "adobe.jpg").profile_note() or "")


@pytest.mark.skipif(os.name == "nt", reason="POSIX permission bits")
def test_a_replaced_output_keeps_its_permission_bits_and_a_link_is_replaced(tmp_path: Path) -> None:
    """Writing an output again reset a 0600 file to 0666 minus the umask (a helper's review)."""
    out = write_image(tmp_path / "a.png", np.zeros((4, 4, 3), np.uint8))
    out.chmod(0o600)
    write_image(out, np.full((4, 4, 3), 9, np.uint8))
    assert (out.stat().st_mode & 0o777) == 0o600 and read_image(out).pixels[0, 0, 0] == 9
    target = write_image(tmp_path / "target.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "link.png").symlink_to(target)
    write_image(tmp_path / "link.png", np.full((4, 4, 3), 7, np.uint8))
    assert not (tmp_path / "link.png").is_symlink() and read_image(target).pixels[0, 0, 0] == 0


# --------------------------------------------------------------------------- hostile files (a review's finds)
def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width: int, height: int, depth: int, colour: int, rows: bytes, *extra: bytes, after: bytes = b"") -> bytes:
    ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
    return (b"\x89PNG\r\n\x1a\n" + ihdr + b"".join(extra) + _png_chunk(b"IDAT", zlib.compress(rows)) + after
            + _png_chunk(b"IEND", b""))


def test_a_palette_png_without_its_palette_is_a_damaged_file(tmp_path: Path) -> None:
    """Pillow's assertion (`self.palette is not None`) escaped as AssertionError: the server answered 500."""
    rows = (b"\0" + bytes(range(16))) * 16
    plte = _png_chunk(b"PLTE", bytes(range(48)))
    for name, data in (("none.png", _png(16, 16, 8, 3, rows)), ("late.png", _png(16, 16, 8, 3, rows, after=plte))):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageError, match="image data is damaged"):
            read_image(tmp_path / name)


def _progressive_jpeg(side: int, scans: int) -> bytes:
    """A greyscale progressive JPEG: one DC scan, then ``scans`` AC scans of end-of-band runs."""
    def segment(marker: int, body: bytes) -> bytes:
        return b"\xff" + bytes([marker]) + struct.pack(">H", len(body) + 2) + body

    blocks = ((side + 7) // 8) ** 2
    data = b"\xff\xd8" + segment(0xDB, b"\x00" + bytes([1] * 64))
    data += segment(0xC2, struct.pack(">BHHB", 8, side, side, 1) + b"\x01\x11\x00")
    data += segment(0xC4, b"\x00" + bytes([1] + [0] * 15) + b"\x00")  # DC: one code '0' -> category 0
    data += segment(0xC4, b"\x10" + bytes([1, 1] + [0] * 14) + b"\xe0\x00")  # AC: '0' -> EOB14
    dc = bytes([0] * ((blocks + 7) // 8))  # one 0 bit per block
    data += segment(0xDA, b"\x01\x01\x00\x00\x00\x00") + dc
    ac = segment(0xDA, b"\x01\x01\x00\x01\x3f\x00") + b"\x00\x00\x3f"  # an EOB run covering every block, padded
    return data + ac * scans + b"\xff\xd9"


def test_a_jpeg_of_endless_scans_is_refused_before_decoding(tmp_path: Path) -> None:
    """100,000 empty scans (3 MB) kept a server worker decoding for minutes, past the request deadline."""
    from adassr.runtime.images.read import MAX_JPEG_SCANS

    path = tmp_path / "scans.jpg"
    path.write_bytes(_progressive_jpeg(64, MAX_JPEG_SCANS + 10))
    with pytest.raises(ImageError, match=f"holds {MAX_JPEG_SCANS + 11} scans, more than the {MAX_JPEG_SCANS}"):
        read_image(path)
    progressive = tmp_path / "fine.jpg"  # a real progressive JPEG (about ten scans) reads as ever
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), np.uint8)).save(
        progressive, progressive=True, quality=90)
    assert read_image(progressive).pixels.shape == (40, 48, 3)


def _rgb_tiff(width: int, height: int, bits: int, compression: int, layout: list[tuple[int, int]],
              payload: bytes) -> bytes:
    """A little-endian RGB TIFF of one strip or tile: ``layout`` is its (tag, value) pairs, with the
    offset tag (273 or 324) given any value: it is pointed at ``payload``."""
    offset_tags = (273, 324)
    entries = sorted([(256, width), (257, height), (258, 0), (259, compression), (262, 2), (277, 3),
                      (284, 1), *layout])
    bits_at = 8 + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, value in entries:
        if tag == 258:
            ifd += struct.pack("<HHII", tag, 3, 3, bits_at)
        elif tag in offset_tags:
            ifd += struct.pack("<HHII", tag, 4, 1, bits_at + 6)
        elif tag in (259, 262, 277, 284):
            ifd += struct.pack("<HHIHH", tag, 3, 1, value, 0)
        else:
            ifd += struct.pack("<HHII", tag, 4, 1, value)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\0\0\0\0" + struct.pack("<HHH", bits, bits, bits) + payload


def test_a_tiff_tile_far_larger_than_its_image_is_refused(tmp_path: Path) -> None:
    """A 64x64 image declaring one 26752x26752 tile (2 MB of deflate) made the decoder allocate 2 GB.
    The check reads the tags only, so the tile's data here is a stub."""
    tile = zlib.compress(bytes(1024))
    path = tmp_path / "tile.tif"
    path.write_bytes(_rgb_tiff(64, 64, 8, 8, [(322, 8192), (323, 8192), (324, 0), (325, len(tile))], tile))
    with pytest.raises(ImageError, match="declares 8192x8192 tiles for a 64x64 image"):
        read_image(path)
    legit = tmp_path / "large_tiles.tif"  # valid, if unusual: 512 x 512 tiles on a 100 x 80 image
    Image.fromarray(np.full((80, 100, 3), 90, np.uint8)).save(legit, tiffinfo={322: 512, 323: 512})
    assert read_image(legit).pixels.shape == (80, 100, 3)


def test_16_bit_pngs_get_the_text_chunk_and_side_limits_8_bit_ones_have(tmp_path: Path) -> None:
    """2000 zTXt chunks after IDAT went to OpenCV's libpng (16 s, 999 log lines; Pillow refuses the 8-bit
    file at once), and a valid 16-bit PNG over 1,000,000 px wide was called damaged."""
    from adassr.runtime.images.read import MAX_PNG_TEXT_CHUNKS

    rows = (b"\0" + b"\x80" * 96) * 16
    text = _png_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"A" * 1000))
    flood = tmp_path / "flood.png"
    flood.write_bytes(_png(16, 16, 16, 2, rows, after=text * (MAX_PNG_TEXT_CHUNKS + 1)))
    with pytest.raises(ImageError, match=f"holds {MAX_PNG_TEXT_CHUNKS + 1} text chunks"):
        read_image(flood)
    few = tmp_path / "few.png"
    few.write_bytes(_png(16, 16, 16, 2, rows, after=text * 3))
    assert read_image(few).pixels.dtype == np.uint16
    wide = tmp_path / "wide.png"
    wide.write_bytes(_png(1_000_001, 1, 16, 2, b"\0" + bytes(6 * 1_000_001)))
    with pytest.raises(ImageError, match="has a side longer than 1,000,000 pixels, which the 16-bit PNG decoder"):
        read_image(wide)


def test_a_16_bit_tiff_over_opencvs_side_limit_is_an_image_error(tmp_path: Path) -> None:
    """OpenCV's own limit is an assertion (cv2.error): `upscale` called it a bug in adassr, `serve` a 500."""
    from adassr.runtime.images.read import OPENCV_MAX_TIFF_SIDE

    width = OPENCV_MAX_TIFF_SIDE + 1
    rows = bytes(width * 6)  # one row of 16-bit RGB zeros
    path = tmp_path / "wide16.tif"
    path.write_bytes(_rgb_tiff(width, 1, 16, 1, [(273, 0), (278, 1), (279, len(rows))], rows))
    with pytest.raises(ImageError, match="has a side longer than 1,048,576 pixels, which its decoder"):
        read_image(path)


@pytest.mark.parametrize("transparency", [None, 3, bytes(range(0, 250, 7))])
@pytest.mark.parametrize("grey", [False, True])
def test_palette_images_read_through_lookup_tables_as_pillow_converts_them(tmp_path: Path, transparency: object,
                                                                         grey: bool) -> None:
    """Palette images are read through the palette's lookup tables (Pillow's RGB(A) conversion held 4 bytes a
    pixel and two copies more); the pixels must be what Pillow's own conversion gives, to the bit. A grey
    image is one whose used entries are grey: a coloured entry no pixel uses does not make it RGB."""
    rng = np.random.default_rng(5)
    entries = 40
    palette = rng.integers(0, 256, (entries, 3)).astype(np.uint8)
    index = rng.integers(0, entries + 3, (37, 53)).astype(np.uint8)  # some indices past the palette's end
    if grey:
        palette[:, 1:] = palette[:, :1]
        palette[7] = (255, 0, 0)  # unused
        index[index == 7] = 8
    im = Image.fromarray(index, mode="P")
    im.putpalette(palette.ravel().tolist())
    extra = {} if transparency is None else {"transparency": transparency}
    path = tmp_path / "p.png"
    im.save(path, **extra)
    loaded = read_image(path)
    with Image.open(path) as again:
        want = np.asarray(again.convert("RGBA" if transparency is not None else "RGB"))
    assert loaded.pixels.shape[2] == (1 if grey else 3)
    assert np.array_equal(loaded.pixels, want[..., :1] if grey else want[..., :3])
    if transparency is None:
        assert loaded.alpha is None
    else:
        assert loaded.alpha is not None and np.array_equal(loaded.alpha, want[..., 3])


def _read_peak_over_array(path: Path) -> float:
    """Peak memory growth of ``read_image(path)`` in a fresh process, over the decoded arrays' size."""
    setup = f"from adassr.runtime.images import read_image\nfrom pathlib import Path\np = Path({str(path)!r})"
    growth = peak_growth(setup=setup, action="image = read_image(p)")
    image = read_image(path)
    return growth / (image.pixels.nbytes + (0 if image.alpha is None else image.alpha.nbytes))


def test_reading_holds_no_whole_image_copies_beyond_pillows_own(tmp_path: Path) -> None:
    """A grey palette PNG peaked at 11 x its decoded array (Pillow's RGB conversion, two array copies, a sort
    of the indices and 8-byte copies of them); an 8-bit TIFF at 4.3 x (the file read and copied twice)."""
    rng = np.random.default_rng(0)
    grey = Image.fromarray(rng.integers(0, 200, (3000, 4000)).astype(np.uint8), mode="P")
    grey.putpalette([v for k in range(256) for v in (k, k, k)])
    grey.save(tmp_path / "grey_palette.png", compress_level=1)
    assert _read_peak_over_array(tmp_path / "grey_palette.png") < 5.0
    photo = np.repeat(np.repeat(rng.integers(0, 256, (375, 500, 3)).astype(np.uint8), 8, axis=0), 8, axis=1)
    Image.fromarray(photo).save(tmp_path / "photo.tif")
    assert _read_peak_over_array(tmp_path / "photo.tif") < 3.6
    assert np.array_equal(read_image(tmp_path / "photo.tif").pixels, photo)


@pytest.mark.parametrize("field_type", [3, 4, 6, 8, 9, 16])  # SHORT, LONG, SBYTE, SSHORT, SLONG, LONG8
@pytest.mark.parametrize("bits", [8, 16])
def test_a_tiff_orientation_of_any_integer_type_is_applied_once(tmp_path: Path, field_type: int, bits: int) -> None:
    """Only SHORT and LONG orientation tags were neutralised before decoding: stored as SSHORT (or SBYTE,
    SLONG, or a BigTIFF's LONG8) an 8-bit TIFF came out turned twice (Pillow turned it while decoding, then
    the reader), and a 16-bit one was refused as inconsistent after OpenCV's libtiff turned it (a helper's
    review). LONG8 exists only in BigTIFF, so that file is a BigTIFF."""
    stored = (np.random.default_rng(4).random((9, 13, 3)) * (255 if bits == 8 else 65535)).astype(
        np.uint8 if bits == 8 else np.uint16)
    path = tmp_path / "o.tif"
    path.write_bytes(_tiff16(stored, 6, bits=bits, orientation_type=field_type, big=field_type >= 16))
    image = read_image(path)
    assert image.pixels.dtype == stored.dtype
    _check_orientation(stored, image.pixels, 6)


def test_a_one_bit_grey_png_keeps_its_transparent_colour(tmp_path: Path) -> None:
    """The tRNS colour key of a 1-bit grey PNG was dropped (transparent pixels came out opaque black);
    2- and 8-bit ones kept it."""
    row = bytes([0b10100000])  # 1, 0, 1, 0
    png = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 1, 1, 0, 0, 0, 0))
           + _png_chunk(b"tRNS", struct.pack(">H", 0)) + _png_chunk(b"IDAT", zlib.compress(b"\0" + row))
           + _png_chunk(b"IEND", b""))
    (tmp_path / "key.png").write_bytes(png)
    image = read_image(tmp_path / "key.png")
    assert image.pixels[..., 0].tolist() == [[255, 0, 255, 0]]
    assert image.alpha is not None and image.alpha.tolist() == [[255, 0, 255, 0]]


def test_an_image_over_the_decoders_guard_names_the_callers_limit(tmp_path: Path) -> None:
    """A header over Pillow's decompression-bomb guard (about 179 MP) was refused quoting that guard, not the
    caller's --max-pixels (16 MP for serve): a client that downscaled to 170 MP got a second refusal. The
    image's own size is named (it said "over 178,956,970 pixels" for any size past the guard)."""
    from adassr.runtime.errors import PixelLimitError

    path = tmp_path / "huge.png"
    path.write_bytes(_png_claiming(13000, 14000))  # 182 MP in its header
    with pytest.raises(PixelLimitError, match=r"huge\.png: image is 13000x14000 = 182,000,000 pixels, above the "
                                              r"limit of 16,000,000, which guards memory"):
        read_image(path, max_pixels=16_000_000)
    with pytest.raises(ImageError, match="decoder's guard against decompression bombs"):
        read_image(path, max_pixels=300_000_000)  # a limit above the guard: the guard is what stops it
    # a format whose decoder checks its own header (WebP, Pillow 13) names the caller's limit too (a review)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "WEBP", lossless=True)
    webp = bytearray(buf.getvalue())
    assert webp[12:16] == b"VP8L" and webp[20] == 0x2F
    bits = struct.unpack("<I", webp[21:25])[0] & ~((1 << 28) - 1)
    webp[21:25] = struct.pack("<I", bits | (14000 - 1) | ((14000 - 1) << 14))  # 14000 x 14000 in its header
    (tmp_path / "huge.webp").write_bytes(bytes(webp))
    with pytest.raises(PixelLimitError, match=r"huge\.webp: image is 196,000,000 pixels, above the limit of "
                                              r"16,000,000"):
        read_image(tmp_path / "huge.webp", max_pixels=16_000_000)


@pytest.mark.parametrize(("depth", "key", "scale"), [(2, 3, 85), (4, 9, 17)])
def test_a_low_bit_grey_png_keeps_its_transparent_colour(tmp_path: Path, depth: int, key: int, scale: int) -> None:
    """2- and 4-bit grey PNGs lost their tRNS key: Pillow scales their pixels to 8 bits, not the key (a
    helper's review)."""
    levels = [0, 1, key, 2 ** depth - 1]
    packed = 0
    for level in levels:
        packed = (packed << depth) | level
    row = packed.to_bytes(len(levels) * depth // 8 + (1 if len(levels) * depth % 8 else 0), "big")
    png = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 1, depth, 0, 0, 0, 0))
           + _png_chunk(b"tRNS", struct.pack(">H", key)) + _png_chunk(b"IDAT", zlib.compress(b"\0" + row))
           + _png_chunk(b"IEND", b""))
    (tmp_path / "key.png").write_bytes(png)
    image = read_image(tmp_path / "key.png")
    assert image.pixels[..., 0].tolist() == [[level * scale for level in levels]]
    assert image.alpha is not None and image.alpha.tolist() == [[0 if v == key else 255 for v in levels]]


def test_16_bit_tiffs_with_premultiplied_alpha_or_white_as_zero_read_as_their_8_bit_twins(tmp_path: Path) -> None:
    """A 16-bit TIFF with associated (premultiplied) alpha came back premultiplied, and a 16-bit WhiteIsZero
    grey one as a negative; the 8-bit ones were right (a helper's review)."""
    colour = np.full((2, 3, 3), 16384, np.uint16)  # premultiplied by alpha 0.5: straight colour is 32767.5
    alpha = np.full((2, 3, 1), 32768, np.uint16)
    alpha[0, 0] = 0
    colour[0, 0] = 0
    (tmp_path / "assoc.tif").write_bytes(_tiff16(np.concatenate([colour, alpha], axis=2), extra_samples=1))
    image = read_image(tmp_path / "assoc.tif")
    assert image.alpha is not None and image.alpha[0, 1] == 32768 and image.alpha[0, 0] == 0
    assert image.pixels[0, 1].tolist() == [32768] * 3 and image.pixels[0, 0].tolist() == [0] * 3
    straight = _tiff16(np.concatenate([colour, alpha], axis=2), extra_samples=2)  # unassociated: as stored
    (tmp_path / "straight.tif").write_bytes(straight)
    assert read_image(tmp_path / "straight.tif").pixels[0, 1].tolist() == [16384] * 3
    ramp = np.array([[[0], [16448], [32896], [65535]]], np.uint16)
    (tmp_path / "white_is_zero.tif").write_bytes(_tiff16(ramp, photometric=0))
    assert read_image(tmp_path / "white_is_zero.tif").pixels[..., 0].tolist() == [[65535, 49087, 32639, 0]]


def test_encode_notes_are_kept_per_call_without_the_warnings_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server encodes concurrent requests' outputs in threads: their notes (alpha dropped, a profile that does
    not fit) come back per call, not through the process-wide warnings records that threads would share."""
    from adassr.runtime.images import encode_image
    from adassr.runtime.server.codec import encode

    grey_profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()  # fits neither grey nor RGB
    rgb = _photo()
    alpha = np.full(rgb.shape[:2], 200, np.uint8)

    used = _watch_warnings(monkeypatch)
    data, notes = encode(rgb, alpha, suffix=".jpg", quality=90, icc_profile=grey_profile)
    monkeypatch.undo()
    assert used == []
    assert data.startswith(b"\xff\xd8") and len(notes) == 2
    assert "alpha channel was dropped" in notes[0] and "colour profile was not embedded" in notes[1]
    assert not notes[0].startswith("image.jpg")  # a request's output has no file name
    collected: list[str] = []
    encode_image(".webp", rgb[..., :1], quality=90, icc_profile=grey_profile, notes=collected)
    assert len(collected) == 1 and "profile" in collected[0]


# -- from mutation testing: behaviour no test checked ---------------------------------------------


@pytest.mark.parametrize("with_alpha", [False, True])
def test_16bit_pixels_written_to_webp_are_rounded_to_8_bits(tmp_path: Path, with_alpha: bool) -> None:
    """WebP holds 8 bits: 16-bit pixels are rounded as for JPEG (taken as 8-bit they came back up to 254
    levels off, with no warning)."""
    ramp = np.linspace(0, 65535, 64 * 64).astype(np.uint16).reshape(64, 64, 1).repeat(3, axis=2)
    alpha = None
    if with_alpha:
        alpha = np.full((64, 64), 65535, np.uint16)
        alpha[:, 48:] = 32896  # 128 in 8 bits
    back = read_image(write_image(tmp_path / "a.webp", ramp, alpha=alpha, quality=100))
    assert back.bit_depth == 8
    assert np.abs(back.pixels.astype(int) - uint16_to_uint8(ramp).astype(int)).max() <= 4
    if with_alpha:
        assert back.alpha is not None
        assert int(back.alpha[:, :48].min()) == 255 and abs(int(back.alpha[:, 48:].mean()) - 128) <= 1


def test_webp_with_alpha_keeps_the_colour_under_transparent_pixels(tmp_path: Path) -> None:
    """As documented: the RGB under alpha 0 is kept (WebP's encoder may otherwise flatten it)."""
    rgb = _photo()
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, :32] = 0
    back = read_image(write_image(tmp_path / "a.webp", rgb, alpha=alpha, quality=100))
    assert back.alpha is not None and int(back.alpha[:, :32].max()) == 0
    assert np.abs(back.pixels[:, :32].astype(int) - rgb[:, :32].astype(int)).mean() < 3


def test_16bit_grey_with_alpha_png_keeps_its_grey_profile(tmp_path: Path) -> None:
    """Only TIFF stores 16-bit grey+alpha as RGBA: a PNG keeps grey+alpha and its grey profile."""
    grey16 = (_photo()[..., :1].astype(np.uint16) * 257).copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProfileDroppedWarning)
        path = write_image(tmp_path / "ga.png", grey16, alpha=grey16[..., 0].copy(), icc_profile=_profile(b"GRAY"))
    back = read_image(path)
    assert back.icc_profile == _profile(b"GRAY") and back.bit_depth == 16
    np.testing.assert_array_equal(back.pixels[..., :1] if back.pixels.ndim == 3 else back.pixels[..., None], grey16)


def test_a_write_removes_what_a_killed_writer_left(tmp_path: Path) -> None:
    """A temporary file of a writer whose process is gone is removed by the next write of that name."""
    stale = tmp_path / ".a.png.999999999.0123456789ab.tmp"  # a pid no process has
    stale.write_bytes(b"half an image")
    other = tmp_path / ".b.png.999999999.0123456789ab.tmp"  # another name's: left to its own writer
    other.write_bytes(b"half another")
    write_image(tmp_path / "a.png", _photo())
    assert not stale.exists() and other.exists()


def test_a_written_image_s_folder_is_fsynced_after_the_rename(tmp_path: Path, monkeypatch) -> None:
    from ._fs_events import record_fsyncs_and_renames

    events = record_fsyncs_and_renames(monkeypatch)
    write_image(tmp_path / "a.png", _photo())
    monkeypatch.undo()
    assert events.index(("replaced", str(tmp_path / "a.png"))) < events.index(("fsync", str(tmp_path)))


def test_every_orientation_gives_a_contiguous_array() -> None:
    """A turned image as a negative-stride view: torch.from_numpy refuses those, and encoders copy them
    (mutation testing)."""
    from adassr.runtime.images.orientation import apply_orientation

    a = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    for orientation in range(2, 9):
        turned = apply_orientation(a, orientation)
        assert turned.flags.c_contiguous, orientation
        assert turned.shape == ((2, 3, 3) if orientation <= 4 else (3, 2, 3))


def test_float_conversions_keep_their_types_ranges_and_byte_orders() -> None:
    """From mutation testing: a big-endian uint16 (as read from a file) converts as uint16; bit_depth 8 gives
    uint8; values just above 1.5 are another scale, refused."""
    big_endian = np.array([0, 257, 65535], dtype=">u2")
    np.testing.assert_array_equal(to_float32(big_endian), np.array([0, 257, 65535], np.float32) / 65535)
    assert from_float32(np.array([0.0, 0.5, 1.0], np.float32), 8).dtype == np.uint8
    assert from_float32(np.array([0.0, 1.5], np.float32), 8).tolist() == [0, 255]
    with pytest.raises(ImageError, match="not on the \\[0, 1\\] scale"):
        from_float32(np.array([0.0, 1.6], np.float32), 8)
