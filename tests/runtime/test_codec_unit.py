"""The server's upload decoding (adassr.runtime.server.codec): from mutation testing, behaviour no test checked."""

from __future__ import annotations

import errno
import struct
import zlib
from collections.abc import Iterator

import pytest

from adassr.runtime.errors import ImageError, ImageTooLargeError, PixelLimitError
from adassr.runtime.server import codec

from ._server import small_png


@pytest.fixture
def uploads() -> Iterator[codec.UploadFolder]:
    folder = codec.UploadFolder()
    try:
        yield folder
    finally:
        folder.close()


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height grey pixels but holds almost no data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def test_a_decoded_upload_carries_no_temporary_path(uploads: codec.UploadFolder) -> None:
    image = uploads.decode(small_png(6, 5), max_pixels=10_000)
    assert image.pixels.shape == (6, 5, 3) and image.path is None


def test_the_decoders_own_guard_is_too_large_but_not_the_operators_limit(uploads: codec.UploadFolder) -> None:
    """Above Pillow's guard but under --max-pixels: a 413 (ImageTooLargeError), not blamed on --max-pixels."""
    with pytest.raises(ImageTooLargeError, match="decompression bomb") as err:
        uploads.decode(_png_claiming(30_000, 30_000), max_pixels=10**9)
    assert not isinstance(err.value, PixelLimitError)
    assert "--max-pixels" not in str(err.value)
    with pytest.raises(PixelLimitError, match="set by its operator with --max-pixels"):
        uploads.decode(_png_claiming(300, 300), max_pixels=20_000)


@pytest.mark.parametrize("code", [errno.ENFILE, errno.ENOMEM, errno.EIO, errno.ENOSPC])
def test_every_server_side_errno_is_a_503(uploads: codec.UploadFolder, monkeypatch: pytest.MonkeyPatch,
                                          code: int) -> None:
    def failing(path: object, **kwargs: object) -> object:
        raise ImageError(f"{path}: cannot read the file") from OSError(code, "server trouble")

    monkeypatch.setattr(codec, "read_image", failing)
    with pytest.raises(codec.UploadSpaceError, match="server trouble"):
        uploads.decode(small_png(4, 4), max_pixels=10_000)


def test_an_oserror_raised_while_handling_another_is_followed(uploads: codec.UploadFolder,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader that raises its ImageError inside ``except OSError`` without ``from``: the OSError is its
    ``__context__``, not its ``__cause__``."""
    def failing(path: object, **kwargs: object) -> object:
        try:
            raise OSError(errno.EMFILE, "Too many open files")
        except OSError:
            raise ImageError(f"{path}: cannot read the file")  # noqa: B904 (the reader this test stands for)

    monkeypatch.setattr(codec, "read_image", failing)
    with pytest.raises(codec.UploadSpaceError, match="Too many open files"):
        uploads.decode(small_png(4, 4), max_pixels=10_000)


def test_an_oserror_of_the_upload_itself_is_not_a_503(uploads: codec.UploadFolder,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(path: object, **kwargs: object) -> object:
        raise ImageError(f"{path}: the file is damaged") from OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(codec, "read_image", failing)
    with pytest.raises(ImageError, match="the uploaded image: the file is damaged") as err:
        uploads.decode(small_png(4, 4), max_pixels=10_000)
    assert not isinstance(err.value, codec.UploadSpaceError)


def test_a_heif_upload_is_named_as_such_without_the_temporary_name(uploads: codec.UploadFolder) -> None:
    heif = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 100
    with pytest.raises(ImageError, match=r"the uploaded image: a HEIF \(HEIC\) image, a format adassr does not "
                                         r"read") as err:
        uploads.decode(heif, max_pixels=10_000)
    assert "upload-" not in str(err.value)
