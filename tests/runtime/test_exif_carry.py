"""The photo's EXIF travels into its upscaled output (camera, date, exposure, GPS), without what the new
pixels make wrong (orientation, pixel size, resolution, thumbnail, maker note).

Before, every output lost the whole block, with no note, although the README promised that outputs
keep what a photo carries where the format can hold it (a helper's hunt): a photo library lost its
capture dates, and an upscaled photo the EXIF Make that routes it to its camera's model.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin

from adassr.runtime.images import ImageWarning, encode_image, read_camera_exif, read_image, write_image
from adassr.runtime.images.exif import EXIF_IFD, GPS_IFD, INTEROP_IFD, MAX_JPEG_EXIF_BYTES, carried_exif

ROOT = Path(__file__).resolve().parents[2]
FLOWER = ROOT / "samples" / "cameras" / "canon" / "flower.jpg"  # a Canon PowerShot S40 photo
FORMATS = (".jpg", ".png", ".webp", ".tif")


def _exif_of(path_or_bytes: Path | bytes) -> Image.Exif:
    """The file's EXIF with its directories loaded (a TIFF's are read from the file when first asked for)."""
    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    with Image.open(source) as im:
        exif = im.getexif()
        for ifd in (EXIF_IFD, GPS_IFD, INTEROP_IFD):
            exif.get_ifd(ifd)
        return exif


def _photo_with_everything(path: Path) -> Path:
    """A JPEG with orientation 6, IFD0 description tags, an Exif directory (capture date, pixel size,
    maker note, interoperability with the related image size) and GPS."""
    exif = Image.Exif()
    exif[271], exif[272], exif[306], exif[274] = "TestMake", "Model X", "2024:01:02 03:04:05", 6
    exif[282], exif[283], exif[296] = 300.0, 300.0, 2  # 300 dpi
    exif[33432] = "(c) the photographer"
    sub = exif.get_ifd(EXIF_IFD)
    sub[36867], sub[33434], sub[0xA002], sub[0xA003] = "2023:05:06 07:08:09", 0.004, 48, 64
    sub[0x927C] = b"vendor data with offsets" * 4  # MakerNote
    sub[INTEROP_IFD] = {1: "R98", 0x1001: 48, 0x1002: 64}
    exif.get_ifd(GPS_IFD).update({1: "N", 2: (52.0, 31.0, 12.0)})
    pixels = np.random.default_rng(0).integers(0, 255, (64, 48, 3), np.uint8)  # stored 48 wide, 64 high
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    return path


@pytest.mark.parametrize("suffix", FORMATS)
def test_every_format_carries_the_photos_exif_without_what_the_pixels_make_wrong(tmp_path: Path,
                                                                                 suffix: str) -> None:
    image = read_image(_photo_with_everything(tmp_path / "photo.jpg"))
    assert image.pixels.shape[:2] == (48, 64)  # orientation 6 applied
    out = write_image(tmp_path / f"out{suffix}", image.pixels, exif=image.exif)
    exif = _exif_of(out)
    assert (exif.get(271), exif.get(272), exif.get(306), exif.get(33432)) == (
        "TestMake", "Model X", "2024:01:02 03:04:05", "(c) the photographer")
    for dropped in (274, 282, 283, 296):  # orientation applied; 300 dpi would print the x4 image 4x as large
        assert dropped not in exif
    sub = exif.get_ifd(EXIF_IFD)
    assert sub.get(36867) == "2023:05:06 07:08:09" and float(sub[33434]) == pytest.approx(0.004)
    assert 0xA002 not in sub and 0xA003 not in sub and 0x927C not in sub
    assert exif.get_ifd(INTEROP_IFD) == {1: "R98"}
    gps = exif.get_ifd(GPS_IFD)
    assert gps[1] == "N" and [float(v) for v in gps[2]] == [52.0, 31.0, 12.0]
    again = read_image(out)
    assert again.pixels.shape == image.pixels.shape and again.exif_make == "TestMake"
    assert read_camera_exif(out) == ("TestMake", "Model X")  # an upscaled photo still routes to its camera
    with Image.open(out) as im:  # Pillow decodes every output as before
        assert im.size == (64, 48)


def test_a_tiff_inputs_structure_tags_are_not_taken_for_exif(tmp_path: Path) -> None:
    """A TIFF's getexif() is its whole IFD0 (strips, bits per sample, ...): only the description goes on."""
    info = TiffImagePlugin.ImageFileDirectory_v2()
    info[271], info[306] = "TiffMake", "2020:02:02 02:02:02"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "in.tif", tiffinfo=info)
    image = read_image(tmp_path / "in.tif")
    assert image.exif is not None
    for suffix in FORMATS:
        exif = _exif_of(encode_image(suffix, image.pixels, exif=image.exif))
        assert exif.get(271) == "TiffMake" and exif.get(306) == "2020:02:02 02:02:02"
        if suffix != ".tif":  # the TIFF output's own structure tags are its own
            assert not {256, 257, 258, 259, 273, 279} & set(exif)


def test_photos_without_exif_and_bundled_camera_photos(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "plain.png")
    assert read_image(tmp_path / "plain.png").exif is None
    flower = read_image(FLOWER)
    assert flower.exif is not None
    exif = _exif_of(encode_image(".jpg", flower.pixels, exif=flower.exif))
    assert exif.get(271) == "Canon" and exif.get_ifd(EXIF_IFD).get(36867) == "2003:12:14 12:01:44"


def test_a_block_too_large_for_jpeg_is_dropped_with_a_note_and_kept_by_png(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[271], exif[270] = "BigMake", "x" * (MAX_JPEG_EXIF_BYTES + 10)
    payload = carried_exif(exif.tobytes())
    assert payload is not None and len(payload) > MAX_JPEG_EXIF_BYTES
    pixels = np.zeros((16, 16, 3), np.uint8)
    notes: list[str] = []
    data = encode_image(".jpg", pixels, exif=payload, notes=notes)
    assert 271 not in _exif_of(data)
    assert len(notes) == 1 and "EXIF (camera, date, ...) was not carried over" in notes[0] and "JPEG" in notes[0]
    with pytest.warns(ImageWarning, match="was not carried over"):
        write_image(tmp_path / "big.jpg", pixels, exif=payload)
    assert _exif_of(encode_image(".png", pixels, exif=payload)).get(271) == "BigMake"


def test_a_bigtiff_goes_without_exif_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    import adassr.runtime.images.write as write_module

    exif = Image.Exif()
    exif[271] = "Make"
    payload = carried_exif(exif.tobytes())
    monkeypatch.setattr(write_module, "is_bigtiff", lambda *size: True)  # a 3.5 GiB array is no unit test
    notes: list[str] = []
    data = encode_image(".tif", np.zeros((8, 8, 3), np.uint8), exif=payload, notes=notes)
    assert 271 not in _exif_of(data) and "BigTIFF" in notes[0]


def _block(endian: str, ifd0: list[tuple[int, int, int, bytes]],
           exif_dir: Sequence[tuple[int, int, int, bytes]] = (), pointer_type: int = 4) -> bytes:
    """A raw EXIF block (``Exif\\0\\0``, TIFF header, IFD0 and an Exif directory) from
    ``(tag, type, count, value bytes in endian's order)`` entries, laid out by hand as cameras do."""
    import struct

    def directory(entries: list[tuple[int, int, int, bytes]], at: int) -> bytes:
        values_at = at + 2 + 12 * len(entries) + 4
        head, values = struct.pack(endian + "H", len(entries)), b""
        for tag, kind, count, value in entries:
            if len(value) <= 4:
                head += struct.pack(endian + "HHI", tag, kind, count) + value.ljust(4, b"\0")
            else:
                head += struct.pack(endian + "HHII", tag, kind, count, values_at + len(values))
                values += value + b"\0" * (len(value) % 2)
        return head + struct.pack(endian + "I", 0) + values

    order = b"II*\x00" if endian == "<" else b"MM\x00*"
    first = [*ifd0, (EXIF_IFD, pointer_type, 1, b"\0\0\0\0")] if exif_dir else list(ifd0)
    size = len(directory(first, 8))
    if exif_dir:
        first[-1] = (EXIF_IFD, pointer_type, 1, struct.pack(endian + "I", 8 + size))
    tiff = order + struct.pack(endian + "I", 8) + directory(first, 8)
    if exif_dir:
        tiff += directory(list(exif_dir), 8 + size)
    return b"Exif\x00\x00" + tiff


@pytest.mark.parametrize("endian", ["<", ">"])
def test_entries_are_carried_as_stored_text_types_and_rationals(tmp_path: Path, endian: str) -> None:
    """Pillow's model rewrote the entries: a UTF-8 Make became '??ikon ??' (and an upscaled photo then
    routed to another camera), UNDEFINED fields became BYTE, rationals were reduced (a helper's review)."""
    import struct

    make = "Ñikon ©".encode() + b"\0"
    artist = "José Müller".encode() + b"\0"
    rational = struct.pack(endian + "II", 28, 10)  # FNumber 2.8 as the camera stored it
    comment = b"UNICODE\0" + "héllo".encode("utf-16-be" if endian == ">" else "utf-16-le")
    block = _block(endian, [(271, 2, len(make), make), (272, 2, 5, b"D850\0"), (274, 3, 1,
                                                                                  struct.pack(endian + "H", 6)),
                            (315, 2, len(artist), artist)],
                   [(33437, 5, 1, rational), (0x9286, 7, len(comment), comment),
                    (0x9101, 7, 4, b"\x01\x02\x03\x00"), (0xA002, 4, 1, struct.pack(endian + "I", 4000))])
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(photo, exif=block)
    image = read_image(photo)
    assert read_camera_exif(photo) == ("Ñikon ©", "D850")
    for suffix in FORMATS:
        out = write_image(tmp_path / f"out{suffix}", image.pixels, exif=image.exif)
        assert read_camera_exif(out) == ("Ñikon ©", "D850")  # routed to the same camera as the photo
        assert read_image(out).exif == image.exif  # the block travels unchanged through every format
    from PIL import TiffImagePlugin

    payload = image.exif
    assert payload is not None
    ifd = TiffImagePlugin.ImageFileDirectory_v2(payload[:8])
    ifd.load(_at(payload, 8))
    assert ifd.tagtype[271] == 2 and 274 not in ifd
    exif_at = ifd[EXIF_IFD]
    sub = TiffImagePlugin.ImageFileDirectory_v2(payload[:8])
    sub.load(_at(payload, exif_at))
    assert sub.tagtype[0x9286] == 7 and sub.tagtype[0x9101] == 7 and 0xA002 not in sub
    assert sub.tagtype[33437] == 5 and sub[33437].numerator == 28 and sub[33437].denominator == 10


def _walk(payload: bytes, at: int = 8) -> list[tuple[int, int, int, int]]:
    """Every entry of a carried (little-endian) payload's directories: ``(tag, type, count, value offset or
    -1 when the value is inline)``, the Exif, GPS and interoperability directories followed."""
    import struct

    (count,) = struct.unpack_from("<H", payload, at)
    found = []
    for k in range(count):
        tag, kind, n, field = struct.unpack_from("<HHII", payload, at + 2 + 12 * k)
        if tag in (EXIF_IFD, GPS_IFD, INTEROP_IFD):
            found += _walk(payload, field)
            continue
        size = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 7: 1, 9: 4, 10: 8}[kind] * n
        found.append((tag, kind, n, field if size > 4 else -1))
    return found


def test_the_carried_block_is_what_strict_readers_take() -> None:
    """Values start on even offsets (TIFF 6.0: "word boundary"), an Exif pointer stored as type IFD (13,
    as some cameras write it) is followed, and a photo whose first directory holds only entries that are
    not carried (orientation) still carries its Exif directory: its capture date (a helper's mutants
    survived each of these)."""
    import struct

    odd = [(271, 2, 5, b"Sony\0"), (272, 2, 9, b"ILCE-7M3\0"), (305, 2, 7, b"ver1.0\0")]  # 5, 9, 7 bytes
    date = b"2026:12:06 10:00:00\0"
    payload = carried_exif(_block("<", odd, [(0x9003, 2, len(date), date), (0x9286, 7, 3, b"abc")]))
    assert payload is not None
    entries = _walk(payload)
    assert {e[0] for e in entries} == {271, 272, 305, 0x9003, 0x9286}
    assert all(offset % 2 == 0 for *_, offset in entries if offset >= 0), entries
    assert payload[entries[[e[0] for e in entries].index(0x9003)][3]:][:len(date)] == date

    as_ifd = carried_exif(_block("<", odd, [(0x9003, 2, len(date), date)], pointer_type=13))
    assert as_ifd is not None and 0x9003 in {e[0] for e in _walk(as_ifd)}

    only_dropped = carried_exif(_block("<", [(274, 3, 1, struct.pack("<H", 6))], [(0x9003, 2, len(date), date)]))
    assert only_dropped is not None
    assert [e[0] for e in _walk(only_dropped)] == [0x9003]  # the orientation stays behind, the date travels


class _CountingReads(io.BytesIO):
    """A file that counts the bytes read from it (one count per test: reset ``read_bytes`` first)."""

    read_bytes = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        _CountingReads.read_bytes += len(data)
        return data


def _at(data: bytes, offset: int) -> io.BytesIO:
    stream = io.BytesIO(data)
    stream.seek(offset)
    return stream


def test_a_tiff_photo_carries_its_exif_and_gps_directories(tmp_path: Path) -> None:
    """A TIFF keeps its Exif and GPS directories in the file, which Pillow reads when first asked for:
    asked after the file was closed, they came back empty (a helper's review)."""
    source = read_image(_photo_with_everything(tmp_path / "photo.jpg"))
    tif = write_image(tmp_path / "photo.tif", source.pixels, exif=source.exif)
    again = read_image(tif)
    assert again.exif == source.exif
    exif = _exif_of(write_image(tmp_path / "out.png", again.pixels, exif=again.exif))
    assert exif.get_ifd(EXIF_IFD).get(36867) == "2023:05:06 07:08:09" and exif.get_ifd(GPS_IFD)[1] == "N"


@pytest.mark.parametrize("damage", ["no TIFF header", "IFD0 out of the block", "a loop", "unknown type",
                                    "BigTIFF"])
def test_a_malformed_block_carries_nothing_or_leaves_the_entry_out(damage: str) -> None:
    import struct

    good = _block("<", [(271, 2, 5, b"Make\0"), (306, 2, 20, b"2024:01:02 03:04:05\0")])[6:]
    if damage == "no TIFF header":
        assert carried_exif(b"JUNK" + good[4:]) is None
    elif damage == "IFD0 out of the block":
        assert carried_exif(good[:4] + struct.pack("<I", 10_000) + good[8:]) is None
    elif damage == "a loop":  # IFD0's Exif pointer points at IFD0 itself
        looped = _block("<", [(271, 2, 5, b"Make\0"), (EXIF_IFD, 4, 1, struct.pack("<I", 8))])[6:]
        assert carried_exif(looped) is None
    elif damage == "unknown type":
        odd = _block("<", [(271, 2, 5, b"Make\0"), (306, 99, 20, b"\0\0\0\0")])[6:]
        exif = Image.Exif()
        exif.load(carried_exif(odd) or b"")
        assert exif.get(271) == "Make" and 306 not in exif
    else:
        assert carried_exif(b"II+\x00" + good[4:]) is None
    assert carried_exif(b"") is None and carried_exif(None) is None
    with pytest.raises(Exception, match="exif must be bytes"):
        encode_image(".png", np.zeros((4, 4, 3), np.uint8), exif="Make")  # type: ignore[arg-type]


def test_upscale_and_serve_outputs_carry_the_exif(tmp_path: Path) -> None:
    import httpx

    from adassr.cli import main
    from adassr.runtime.server.config import ServerConfig
    from adassr.runtime.store import FALLBACK_CAMERA

    from ._models import publish_camera
    from ._server import running_server

    store = tmp_path / "store"
    publish_camera(store, FALLBACK_CAMERA, seed=0)
    photo = _photo_with_everything(tmp_path / "photo.jpg")
    assert main(["upscale", "-i", str(photo), "-o", str(tmp_path / "out.png"), "--store", str(store),
                 "--no-progress"]) == 0
    exif = _exif_of(tmp_path / "out.png")
    assert exif.get(271) == "TestMake" and exif.get_ifd(EXIF_IFD).get(36867) == "2023:05:06 07:08:09"
    assert 274 not in exif
    assert main(["upscale", "-i", str(photo), "-o", str(tmp_path / "bare.png"), "--store", str(store),
                 "--no-progress", "--no-exif"]) == 0
    assert not len(_exif_of(tmp_path / "bare.png"))
    config = ServerConfig(store=store, tile=64, overlap=8, threads=1)
    with running_server(config) as live, httpx.Client(base_url=live.url, timeout=60) as client:
        reply = client.post("/v1/upscale?format=jpeg", content=photo.read_bytes())
        assert reply.status_code == 200
        served = _exif_of(reply.content)
        assert served.get(272) == "Model X" and served.get_ifd(GPS_IFD)[1] == "N" and 274 not in served
        for off in ("false", "0", "no", "off"):  # each spelling the error message offers strips it
            bare = client.post(f"/v1/upscale?format=jpeg&exif={off}", content=photo.read_bytes())
            assert bare.status_code == 200 and not len(_exif_of(bare.content)), off
        odd = client.post("/v1/upscale?exif=maybe", content=photo.read_bytes())
        assert odd.status_code == 422 and "exif must be true or false" in odd.json()["message"]


def test_serve_no_exif_sends_none_whatever_a_request_asks(tmp_path: Path) -> None:
    """A fleet that must not pass GPS positions on: ``serve --no-exif`` strips every response, and a
    request asking ``exif=true`` is told why its output has none."""
    import argparse

    import httpx

    from adassr.runtime.serve_cli import add_serve_arguments, config_from_args
    from adassr.runtime.store import FALLBACK_CAMERA

    from ._models import publish_camera
    from ._server import running_server

    store = tmp_path / "store"
    publish_camera(store, FALLBACK_CAMERA, seed=0)
    photo = _photo_with_everything(tmp_path / "photo.jpg")
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    config = config_from_args(parser.parse_args(["--store", str(store), "--tile", "64", "--tile-overlap", "8",
                                                 "--threads", "1", "--no-exif"]))
    assert config.exif is False
    with running_server(config) as live, httpx.Client(base_url=live.url, timeout=60) as client:
        for query, note in (("format=png", False), ("format=jpeg&exif=true", True)):
            reply = client.post(f"/v1/upscale?{query}", content=photo.read_bytes())
            assert reply.status_code == 200 and not len(_exif_of(reply.content))
            assert ("--no-exif" in reply.headers.get("x-adassr-note", "")) is note


def test_a_tiff_naming_huge_values_is_not_read_past_a_budget() -> None:
    """A TIFF upload can name 1024 entries of gigabytes each at one offset: the values carried are
    capped (1 MiB in all), so reading its EXIF costs next to nothing."""
    import struct

    from adassr.runtime.images.exif import carried_tiff_exif

    entries = [(271, 2, 4, b"Mak\0")] + [(40091 + k % 5, 1, 1 << 30, b"\0\0\0\0") for k in range(5)]
    entries += [(50000 + k, 7, 900_000, struct.pack("<I", 8)) for k in range(900)]  # 810 MB named, 1 MiB read
    head = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI", t, k, n) + f for t, k, n, f in entries)
    tiff = b"II*\0" + struct.pack("<I", 8) + head + struct.pack("<I", 0) + b"\0" * (2 << 20)
    _CountingReads.read_bytes = 0
    payload = carried_tiff_exif(_CountingReads(tiff))
    assert _CountingReads.read_bytes < 4 << 20
    exif = Image.Exif()
    exif.load(payload or b"")
    assert exif.get(271) == "Mak"


@pytest.mark.parametrize("count", [100, 1 << 20, (1 << 20) + 1])
def test_an_entry_out_of_the_data_costs_the_others_nothing(count: int) -> None:
    """An entry whose value lay out of the data was charged to the 1 MiB budget before it was read: one
    claiming 1 MiB left no budget for Make and Model, and nothing was carried (a helper's review)."""
    import struct

    entries = [(270, 2, count, struct.pack("<I", 0x7FFF0000)), (271, 2, 11, b"Nokia Corp\0"),
               (272, 2, 11, b"Lumia 1020\0")]
    exif = Image.Exif()
    exif.load(carried_exif(_block("<", entries)) or b"")
    assert (exif.get(271), exif.get(272), exif.get(270)) == ("Nokia Corp", "Lumia 1020", None)


def test_big_endian_shorts_are_swapped_and_ifd0_entries_stay_sorted() -> None:
    """A Motorola-order block's SHORT values copied unswapped would carry ISO 100 as 25600; and the directory
    pointers appended after IFD0's entries must still come in tag order, XP tags (0x9C9B...) after them, or
    strict readers skip the entries (mutation testing)."""
    import struct

    iso, area = struct.pack(">H", 100), struct.pack(">4H", 10, 20, 300, 400)  # one inline, one out of line
    title = "Hafen".encode("utf-16-le") + b"\0\0"
    block = _block(">", [(271, 2, 5, b"Make\0"), (0x9C9B, 1, len(title), title)],
                   [(0x8827, 3, 1, iso), (0x9214, 3, 4, area), (0x9209, 3, 1, struct.pack(">H", 16))])
    payload = carried_exif(block)
    assert payload is not None
    exif = Image.Exif()
    exif.load(payload)
    sub = exif.get_ifd(EXIF_IFD)
    assert (sub[0x8827], sub[0x9214], sub[0x9209]) == (100, (10, 20, 300, 400), 16)
    (count,) = struct.unpack_from("<H", payload, 8)
    tags = [struct.unpack_from("<H", payload, 10 + 12 * k)[0] for k in range(count)]
    assert tags == sorted(tags) and EXIF_IFD in tags and 0x9C9B in tags


def test_a_tiff_value_cut_short_by_the_file_end_is_left_out() -> None:
    """An entry whose value runs past the end of a TIFF file is left out, as from a block in memory: carried
    with its full count, it would be a corrupt entry in every output (mutation testing)."""
    import struct

    from adassr.runtime.images.exif import carried_tiff_exif

    artist = b"Jane Photographer\0\0\0"  # 20 bytes named, 10 in the file
    ifd = (struct.pack("<H", 2) + struct.pack("<HHI", 271, 2, 4) + b"Abc\0" + struct.pack("<HHII", 315, 2, 20, 38)
           + struct.pack("<I", 0))
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd + artist[:10]
    for payload in (carried_exif(b"Exif\x00\x00" + tiff), carried_tiff_exif(io.BytesIO(tiff))):
        assert payload is not None
        (count,) = struct.unpack_from("<H", payload, 8)  # (Pillow would drop the cut entry itself, with a warning)
        assert count == 1 and struct.unpack_from("<H", payload, 10)[0] == 271
        exif = Image.Exif()
        exif.load(payload)
        assert exif.get(271) == "Abc"


def test_the_value_budget_counts_every_entry_read() -> None:
    """Values of 600 KiB each: the 1 MiB budget is for all of them together, not per entry, or a crafted TIFF
    makes every read pull up to a GiB per directory (mutation testing)."""
    import struct

    from adassr.runtime.images.exif import carried_tiff_exif

    big = 600 * 1024
    tags = (270, 315, 33432)  # description, artist, copyright: carried IFD0 text
    values_at = 8 + 2 + 12 * len(tags) + 4
    head = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHII", tag, 2, big, values_at + k * big) for k, tag in enumerate(tags))
    text = b"".join(bytes([65 + k]) * (big - 1) + b"\0" for k in range(len(tags)))
    tiff = b"II*\x00" + struct.pack("<I", 8) + head + struct.pack("<I", 0) + text
    _CountingReads.read_bytes = 0
    payload = carried_tiff_exif(_CountingReads(tiff))
    exif = Image.Exif()
    exif.load(payload or b"")
    assert sum(tag in exif for tag in tags) <= 1
    assert _CountingReads.read_bytes < 1.3 * 2**20
