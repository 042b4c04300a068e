"""Encoding arrays to image files, atomically.

The format comes from the suffix. PNG and TIFF keep uint16; JPEG and WebP are 8-bit formats, so
uint16 is rounded to uint8 there. Alpha is written by PNG, WebP and TIFF and dropped (with an
:class:`AlphaDroppedWarning`) by JPEG. WebP has no grey mode: grey is stored as RGB.

Encoders: 8-bit by Pillow; 16-bit by OpenCV (Pillow has no 16-bit colour), except 16-bit
grey+alpha PNG, by :mod:`adassr.runtime.images.containers`; 16-bit grey+alpha TIFF is refused (no
encoder here writes it and Pillow cannot read it back). JPEG uses 4:4:4 chroma at quality >= 90
and 4:2:0 below; WebP is lossy at ``quality`` with ``exact`` (RGB kept under transparent pixels);
PNG uses zlib level 1 (speed over a few percent of size); TIFF uses Deflate (8-bit) or OpenCV's
default LZW (16-bit).

The file is encoded in memory first, then written to a temporary file in the destination
directory, fsynced and renamed over the destination: a failure leaves no partial file and an
existing destination untouched. A writer killed mid-write leaves its hidden temporary file
(named with its pid, see :mod:`adassr.runtime.tempfiles`); the next write of the same file
removes it.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from adassr.runtime.errors import ConfigError, ImageError
from adassr.runtime.images._model import SUPPORTED_WRITE_SUFFIXES, AlphaDroppedWarning
from adassr.runtime.images.containers import encode_png_grey_alpha16
from adassr.runtime.images.convert import uint16_to_uint8
from adassr.runtime.tempfiles import create_temp, remove_stale_temps

# zlib level 1: several times faster than level 6 for slightly larger files (docs/performance.md).
_PNG_LEVEL = 1

_FORMAT_BY_SUFFIX = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}


def check_quality(quality: object, *, what: str = "quality") -> int:
    """``quality`` if it is a JPEG / WebP quality (an integer from 1 to 100), else ``ConfigError``
    naming it as ``what`` (e.g. the command-line flag ``--quality``)."""
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ConfigError(f"{what} must be an integer from 1 to 100, got {quality!r}")
    return quality


def write_image(
    path: str | os.PathLike[str],
    pixels: np.ndarray,
    *,
    alpha: np.ndarray | None = None,
    quality: int = 95,
) -> Path:
    """Write H x W x C (C in {1, 3}; H x W is taken as grey) uint8/uint16 pixels; return the path.

    ``alpha`` is H x W with the pixels' dtype. ``quality`` (1-100) applies to JPEG and WebP.
    """
    p = Path(path)
    data = _encode_for(p, p.suffix, pixels, alpha, quality)
    _atomic_write(p, data)
    return p


def encode_image(
    suffix: str,
    pixels: np.ndarray,
    *,
    alpha: np.ndarray | None = None,
    quality: int = 95,
) -> bytes:
    """The bytes :func:`write_image` would write to a file ending in ``suffix`` (e.g. ``".png"``).

    Same rules and errors as :func:`write_image`; nothing touches the filesystem.
    """
    return _encode_for(Path(f"image{suffix}"), suffix, pixels, alpha, quality)


def _encode_for(
    p: Path, suffix: str, pixels: np.ndarray, alpha: np.ndarray | None, quality: int
) -> bytes:
    fmt = _FORMAT_BY_SUFFIX.get(suffix.lower())
    if fmt is None:
        raise ImageError(
            f"{p}: cannot write suffix {suffix or '(none)'!r}; use one of "
            f"{', '.join(SUPPORTED_WRITE_SUFFIXES)}"
        )
    check_quality(quality)
    px, al = _validated(p, pixels, alpha)
    return _encode(p, fmt, px, al, quality)


def _validated(
    p: Path, pixels: np.ndarray, alpha: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    if not isinstance(pixels, np.ndarray):
        raise ImageError(f"{p}: pixels must be a numpy array, got {type(pixels).__name__}")
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ImageError(
            f"{p}: cannot write pixels of dtype {pixels.dtype}; use uint8 or uint16 "
            "(from_float32(a, 8) or from_float32(a, 16) converts [0, 1] floats)"
        )
    px = pixels[..., None] if pixels.ndim == 2 else pixels
    if px.ndim != 3 or px.shape[2] not in (1, 3) or px.shape[0] == 0 or px.shape[1] == 0:
        raise ImageError(
            f"{p}: pixels must be H x W, H x W x 1 or H x W x 3 and non-empty, got {pixels.shape}"
            " (pass an alpha channel separately with alpha=)"
        )
    if alpha is None:
        return np.ascontiguousarray(px), None
    if not isinstance(alpha, np.ndarray):
        raise ImageError(f"{p}: alpha must be a numpy array, got {type(alpha).__name__}")
    al = alpha[..., 0] if alpha.ndim == 3 and alpha.shape[2] == 1 else alpha
    if al.shape != px.shape[:2] or al.dtype != px.dtype:
        raise ImageError(
            f"{p}: alpha must be {px.shape[:2]} {px.dtype} to match the pixels, got "
            f"{alpha.shape} {alpha.dtype}"
        )
    return np.ascontiguousarray(px), np.ascontiguousarray(al)


def _encode(p: Path, fmt: str, px: np.ndarray, al: np.ndarray | None, quality: int) -> bytes:
    if fmt == "JPEG" and al is not None:
        warnings.warn(
            f"{p}: JPEG cannot store alpha; the alpha channel was dropped (write .png, .webp or "
            ".tiff to keep it)",
            AlphaDroppedWarning,
            stacklevel=4,
        )
        al = None
    if fmt in ("JPEG", "WEBP") and px.dtype == np.uint16:
        px = uint16_to_uint8(px)
        al = None if al is None else uint16_to_uint8(al)
    if px.dtype == np.uint16:
        return _encode_16bit(p, fmt, px, al)
    if fmt == "WEBP" and px.shape[2] == 1:
        px = np.repeat(px, 3, axis=2)
    arr = px[..., 0] if px.shape[2] == 1 else px
    if al is not None:
        arr = np.dstack([px, al])
    im = Image.fromarray(arr)
    options: dict[str, object] = {}
    if fmt == "JPEG":
        options = {"quality": quality, "subsampling": "4:4:4" if quality >= 90 else "4:2:0"}
    elif fmt == "WEBP":
        options = {"quality": quality, "exact": True}
    elif fmt == "PNG":
        options = {"compress_level": _PNG_LEVEL}
    elif fmt == "TIFF":
        options = {"compression": "tiff_adobe_deflate"}
    buf = io.BytesIO()
    try:
        im.save(buf, format=fmt, **options)
    except (OSError, ValueError, KeyError) as e:
        raise ImageError(f"{p}: Pillow could not encode {fmt} ({e})") from e
    return buf.getvalue()


def _encode_16bit(p: Path, fmt: str, px: np.ndarray, al: np.ndarray | None) -> bytes:
    import cv2

    if px.shape[2] == 1 and al is not None:
        if fmt == "PNG":
            return encode_png_grey_alpha16(px[..., 0], al)
        raise ImageError(
            f"{p}: 16-bit grey+alpha TIFF is not supported; write .png, or pass 3-channel pixels"
        )
    if px.shape[2] == 1:
        arr = px[..., 0]
    elif al is None:
        arr = np.ascontiguousarray(px[..., ::-1])
    else:
        arr = np.dstack([px[..., ::-1], al])
    params = [cv2.IMWRITE_PNG_COMPRESSION, _PNG_LEVEL] if fmt == "PNG" else []
    ext = ".png" if fmt == "PNG" else ".tiff"
    try:
        ok, buf = cv2.imencode(ext, arr, params)
    except cv2.error as e:
        raise ImageError(f"{p}: OpenCV could not encode 16-bit {fmt} ({e})") from e
    if not ok:
        raise ImageError(f"{p}: OpenCV could not encode 16-bit {fmt}")
    return buf.tobytes()


def _atomic_write(p: Path, data: bytes) -> None:
    """Write ``data`` to ``p`` via a temporary file in the same directory, fsync and rename."""
    parent = p.parent
    if not parent.is_dir():
        raise ImageError(f"{p}: directory {parent} does not exist; create it first")
    # Temporary files of writers that were killed (their pid is gone) are removed first.
    remove_stale_temps(parent, target=p.name)
    try:
        # O_EXCL: never clobber; mode 0o666 lets the umask decide, like a plain open().
        fd, tmp = create_temp(p)
    except OSError as e:
        raise ImageError(f"{p}: cannot create a file in {parent} ({e.strerror})") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise ImageError(
                f"{p}: writing failed ({e.strerror or e}); check free space and permissions"
            ) from e
        raise
    _fsync_directory(parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable (POSIX); Windows has no directory handles to fsync."""
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
