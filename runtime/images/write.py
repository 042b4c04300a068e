"""Encoding arrays to image files, atomically.

The format comes from the suffix. PNG and TIFF keep uint16; JPEG and WebP are 8-bit formats, so
uint16 is rounded to uint8 there. Alpha is written by PNG, WebP and TIFF and dropped (with an
:class:`AlphaDroppedWarning`) by JPEG. WebP has no grey mode: grey is stored as RGB.

Encoders: PNG (8 and 16 bits) by :mod:`adassr.runtime.images.png_writer` and TIFF (8 and 16 bits) by
:mod:`adassr.runtime.images.tiff_writer`, which stream the array's rows into the file (Pillow and
OpenCV would first copy a large output once more); JPEG by :mod:`adassr.runtime.images.jpeg_writer`,
which has libjpeg-turbo encode a strip of rows at a time (baseline, a restart marker at every row of
blocks); WebP by :mod:`adassr.runtime.images.webp_writer` (OpenCV's libwebp: about half the memory of
Pillow's) or, with alpha, by Pillow. 16-bit grey+alpha TIFF is stored as 16-bit RGBA (Pillow cannot
read grey+alpha at 16 bits, nor OpenCV keep its alpha). JPEG and WebP refuse sizes their encoders
cannot hold (:data:`MAX_SIDE_BY_FORMAT`), before anything is written; :func:`check_writable_size`
lets a caller check that before the work that makes the image. JPEG uses 4:4:4 chroma at quality >=
90 and 4:2:0 below; WebP is lossy at ``quality`` (with alpha ``exact``: RGB kept under transparent
pixels); PNG and TIFF use zlib level 1 (speed over a few percent of size), TIFF as Adobe Deflate with
the horizontal-differencing predictor. A colour profile (``icc_profile``) is embedded by every
writer: PNG gets an iCCP chunk after IHDR, JPEG APP2 segments, WebP an ICCP chunk and TIFF the ICC tag
(34675); a grey profile for WebP's RGB, or for 16-bit grey+alpha TIFF (stored as RGBA), and a profile
over JPEG's 16,707,345 bytes (255 APP2 segments) are dropped with a :class:`ProfileDroppedWarning`.
The photo's EXIF (``exif``, see :mod:`adassr.runtime.images.exif` for what it keeps) is embedded by
every writer too: JPEG in an APP1 segment, PNG in an eXIf chunk, WebP in an EXIF chunk, TIFF in its
IFD0 with the Exif and GPS directories; a block over one JPEG segment, or a BigTIFF, goes without it
(an :class:`ImageWarning` says so).

The file is written to a temporary file in the destination directory, fsynced and renamed over the
destination (PNG, JPEG and TIFF are encoded straight into it, WebP in memory first, as libwebp
encodes): a failure leaves no partial file and an existing destination untouched. A writer killed
mid-write leaves its hidden temporary file (named with its pid, see :mod:`adassr.runtime.tempfiles`);
the next write of the same file removes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from adassr.runtime.errors import ConfigError, ImageError, ImageTooLargeError
from adassr.runtime.images._model import (
    SUPPORTED_WRITE_SUFFIXES,
    AlphaDroppedWarning,
    ImageWarning,
    ProfileDroppedWarning,
    icc_colour_space,
    note,
    profile_fits,
)
from adassr.runtime.images.convert import checked_peak, uint16_to_uint8, used_peak
from adassr.runtime.images.exif import MAX_JPEG_EXIF_BYTES
from adassr.runtime.images.jpeg_writer import MAX_ICC_BYTES, write_jpeg
from adassr.runtime.images.png_writer import write_png
from adassr.runtime.images.tiff_writer import is_bigtiff, write_tiff
from adassr.runtime.images.webp_writer import write_webp
from adassr.runtime.tempfiles import create_temp, remove_stale_temps

# zlib level 1: several times faster than level 6 for slightly larger files (docs/performance.md).
_PNG_LEVEL = 1
_TIFF_LEVEL = 1  # the same trade for TIFF (with the predictor: half the size of Pillow's TIFF, in half the time)

_FORMAT_BY_SUFFIX = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}


MAX_SIDE_BY_FORMAT = {"JPEG": 65_500, "WEBP": 16_383}
"""Longest side each format's encoder writes (libjpeg's JPEG_MAX_DIMENSION, libwebp's
WEBP_MAX_DIMENSION); PNG and TIFF take any size this runtime makes."""


def size_problem(suffix: str, height: int, width: int) -> str | None:
    """Why the format of ``suffix`` (e.g. ``".webp"``) cannot hold a ``width x height`` image, or
    None when it can (an unknown suffix too: writing it is refused with the list of formats)."""
    fmt = _FORMAT_BY_SUFFIX.get(suffix.lower())
    limit = MAX_SIDE_BY_FORMAT.get(fmt or "")
    if limit is None or max(height, width) <= limit:
        return None
    return f"a {width}x{height} image is larger than {fmt} can hold ({limit:,} pixels a side)"


def check_writable_size(path: str | os.PathLike[str], height: int, width: int) -> None:
    """:class:`ImageTooLargeError` when the format of ``path``'s suffix cannot hold a ``width x
    height`` image (checked before an upscale, so the refusal costs no model time)."""
    p = Path(path)
    problem = size_problem(p.suffix, height, width)
    if problem is not None:
        raise ImageTooLargeError(f"{p}: {problem}; write .png or .tif instead, or use a smaller outscale")


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
    icc_profile: bytes | None = None,
    remove_stale: bool = True,
    threads: int | None = None,
    exif: bytes | None = None,
    peak: int | None = None,
) -> Path:
    """Write H x W x C (C in {1, 3}; H x W is taken as grey) uint8/uint16 pixels; return the path.

    ``alpha`` is H x W with the pixels' dtype. ``quality`` (1-100) applies to JPEG and WebP.
    ``icc_profile`` (e.g. :attr:`LoadedImage.icc_profile`) is embedded when it fits the stored
    pixels; where it cannot be (a grey profile for WebP's or 16-bit grey+alpha TIFF's RGB) a
    :class:`ProfileDroppedWarning` says so. ``exif`` (:attr:`LoadedImage.exif`, a TIFF-structured EXIF
    payload) is embedded by every format (JPEG APP1, PNG eXIf, WebP EXIF, TIFF IFD0 and its Exif and GPS
    directories); where it cannot be (a block over JPEG's 64 KiB, a BigTIFF) an :class:`ImageWarning`
    says so. PNG, JPEG and TIFF are encoded straight into the temporary file, without a copy of the
    encoded image in memory.

    ``remove_stale``: first remove the temporary files of ``path`` that killed writers left (reading the
    folder). A batch that writes many files into one folder removes them for all its outputs once
    (:func:`adassr.runtime.tempfiles.remove_stale_temps`) and passes False: reading the folder for
    every file made a batch's time grow with the square of its size.

    ``threads``: PNG, JPEG and TIFF encode strips on that many threads at once (default: one per
    usable physical core, or ``ADASSR_THREADS``; at most 8); the file's bytes do not depend on it.

    ``peak`` (16-bit pixels): the level that stands for white, 65535 by default. A microscope's or
    machine-vision camera's 16-bit file of 12-bit samples stops at 4095 (the upscaled output keeps that
    range: :func:`adassr.runtime.images.convert.used_peak` of the input); written to JPEG or WebP, which hold
    8 bits, at 65535 it came out at 16 of 255, nearly black. With ``peak=4095`` 4095 becomes 255. PNG and
    TIFF store 16-bit values as they are, whatever ``peak``. Alpha converts at ``peak`` or at its own
    range (:func:`~adassr.runtime.images.convert.used_peak` of the alpha), whichever is wider: a 12-bit
    file's alpha at 4095 also when its pixels are dark, a 16-bit alpha at 65535.
    """
    p = _path(path, "write_image")
    return PreparedWrite(p, _encoding_for(p, p.suffix, pixels, alpha, quality, icc_profile, threads,
                                          exif=exif, peak=peak)).write(remove_stale=remove_stale)


@dataclass(frozen=True)
class PreparedWrite:
    """An image checked and converted for its file, every warning about it given, nothing encoded yet:
    :meth:`write` encodes it into the file (atomically). Lets a caller give the warnings in its own thread
    and write in another (warnings' filters and records are process-wide, not per thread)."""

    path: Path
    encoding: _Encoding

    @property
    def nbytes(self) -> int:
        """Bytes of the pixels (and alpha) it holds until written."""
        return self.encoding.px.nbytes + (0 if self.encoding.al is None else self.encoding.al.nbytes)

    def write(self, *, remove_stale: bool = True) -> Path:
        """Encode into the file, as :func:`write_image` does; warns about nothing."""
        _atomic_write(self.path, self.encoding.write_to, remove_stale=remove_stale)
        return self.path


def prepare_write(
    path: str | os.PathLike[str],
    pixels: np.ndarray,
    *,
    alpha: np.ndarray | None = None,
    quality: int = 95,
    icc_profile: bytes | None = None,
    threads: int | None = None,
    exif: bytes | None = None,
    peak: int | None = None,
) -> PreparedWrite:
    """The checks, conversions and warnings of :func:`write_image` (same arguments), without the writing."""
    p = _path(path, "prepare_write")
    return PreparedWrite(p, _encoding_for(p, p.suffix, pixels, alpha, quality, icc_profile, threads, exif=exif,
                                          peak=peak))


def _path(path: object, caller: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise ImageError(f"{caller} takes a file path (str or pathlib.Path), got {type(path).__name__}")
    return Path(path)


def encode_image(
    suffix: str,
    pixels: np.ndarray,
    *,
    alpha: np.ndarray | None = None,
    quality: int = 95,
    icc_profile: bytes | None = None,
    threads: int | None = None,
    notes: list[str] | None = None,
    exif: bytes | None = None,
    peak: int | None = None,
) -> bytes:
    """The bytes :func:`write_image` would write to a file ending in ``suffix`` (e.g. ``".png"``).

    Same rules and errors as :func:`write_image`; nothing touches the filesystem. ``notes``: a list that
    takes the messages of the :class:`ImageWarning` s instead (the process's warnings state is not touched:
    concurrent encodes in threads keep their notes apart).
    """
    if not isinstance(suffix, str) or not suffix.startswith(".") or "/" in suffix or "\\" in suffix:
        raise ImageError(f"encode_image takes a file suffix with its dot, e.g. '.png', got {suffix!r}; use one of "
                         f"{', '.join(SUPPORTED_WRITE_SUFFIXES)}")
    buf = io.BytesIO()
    _encoding_for(Path(f"image{suffix}"), suffix, pixels, alpha, quality, icc_profile, threads, notes,
                  exif=exif, peak=peak).write_to(buf)
    return buf.getvalue()


def _encoding_for(
    p: Path, suffix: str, pixels: np.ndarray, alpha: np.ndarray | None, quality: int, icc_profile: bytes | None,
    threads: int | None = None, notes: list[str] | None = None, *, exif: bytes | None = None,
    peak: int | None = None,
) -> _Encoding:
    fmt = _FORMAT_BY_SUFFIX.get(suffix.lower())
    if fmt is None:
        raise ImageError(
            f"{p}: cannot write suffix {suffix or '(none)'!r}; use one of "
            f"{', '.join(SUPPORTED_WRITE_SUFFIXES)}"
        )
    check_quality(quality)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be an integer >= 1 or None (one per usable core), got {threads!r}")
    if icc_profile is not None and not isinstance(icc_profile, bytes):
        raise ImageError(f"{p}: icc_profile must be bytes or None, got {type(icc_profile).__name__}")
    if exif is not None and not isinstance(exif, bytes):
        raise ImageError(f"{p}: exif must be bytes (LoadedImage.exif) or None, got {type(exif).__name__}")
    px, al = _validated(p, pixels, alpha)
    white = _checked_peak(p, px.dtype, peak)
    check_writable_size(p, px.shape[0], px.shape[1])
    encoding = _prepare(p, fmt, px, al, quality, icc_profile or None, notes, white)
    return dataclasses.replace(encoding, threads=threads, exif=_exif_for(encoding, exif or None, notes))


def _exif_for(encoding: _Encoding, exif: bytes | None, notes: list[str] | None) -> bytes | None:
    """``exif`` when ``encoding``'s file can hold it, else None and a note."""
    if exif is None:
        return None
    why = None
    if encoding.fmt == "JPEG" and len(exif) > MAX_JPEG_EXIF_BYTES:
        why = f"it has {len(exif):,} bytes, more than one JPEG segment holds ({MAX_JPEG_EXIF_BYTES:,})"
    elif encoding.fmt == "TIFF":
        samples = (3 if encoding.grey_as_rgb else encoding.px.shape[2]) + (encoding.al is not None)
        if is_bigtiff(encoding.px.shape[0], encoding.px.shape[1], samples, encoding.px.itemsize):
            why = "the image is written as a BigTIFF, which this writer gives no EXIF directories"
    if why is None:
        return exif
    note(notes, f"{encoding.p}: the photo's EXIF (camera, date, ...) was not carried over ({why}); write PNG "
                "to keep it", ImageWarning, stacklevel=5)
    return None


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


def _checked_peak(p: Path, dtype: np.dtype, peak: object) -> int:
    """The level that stands for white in pixels of ``dtype``: ``peak``, or the container's top when None."""
    if peak is None:
        return 255 if dtype == np.uint8 else 65535
    try:
        return checked_peak(dtype, peak)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None


def _profile_dropped(p: Path, why: str, notes: list[str] | None) -> None:
    note(notes, f"{p}: the input's colour profile was not embedded ({why}); colours may look different in "
                 "colour-managed viewers", ProfileDroppedWarning, stacklevel=6)


@dataclass(frozen=True)
class _Encoding:
    """One image ready to encode: everything decided and warned about, nothing encoded yet."""

    p: Path
    fmt: str
    px: np.ndarray  # H x W x C, after the format's conversions
    al: np.ndarray | None
    quality: int
    icc_profile: bytes | None  # one that fits, or None
    grey_as_rgb: bool = False  # TIFF: store grey pixels as RGB (16-bit grey+alpha)
    threads: int | None = None  # PNG, JPEG, TIFF: strips encoded at once (None: one per usable core)
    exif: bytes | None = None  # the EXIF payload to embed (one the format holds), or None

    def write_to(self, out: BinaryIO) -> None:
        """Encode into ``out``; ImageError (naming the file) for what the encoder refuses, OSError for
        the writing."""
        try:
            self._encode(out)
        except ImageError as e:
            raise ImageError(f"{self.p}: {e}") from e

    def _encode(self, out: BinaryIO) -> None:
        if self.fmt == "PNG":
            write_png(out, self.px, alpha=self.al, icc_profile=self.icc_profile, exif=self.exif, level=_PNG_LEVEL,
                      threads=self.threads)
        elif self.fmt == "JPEG":
            write_jpeg(out, self.px, quality=self.quality, icc_profile=self.icc_profile, exif=self.exif,
                       threads=self.threads)
        elif self.fmt == "TIFF":
            write_tiff(out, self.px, alpha=self.al, icc_profile=self.icc_profile, exif=self.exif, level=_TIFF_LEVEL,
                       grey_as_rgb=self.grey_as_rgb, threads=self.threads)
        elif self.al is None:  # WebP (RGB: _prepare made grey RGB)
            write_webp(out, self.px, quality=self.quality, icc_profile=self.icc_profile, exif=self.exif)
        else:
            _write_webp_with_alpha(out, self.px, self.al, quality=self.quality, icc_profile=self.icc_profile,
                                   exif=self.exif)


def _write_webp_with_alpha(out: BinaryIO, px: np.ndarray, al: np.ndarray, *, quality: int,
                           icc_profile: bytes | None, exif: bytes | None = None) -> None:
    """WebP with alpha through Pillow, whose ``exact`` keeps the colours under transparent pixels."""
    options: dict[str, object] = {"quality": quality, "exact": True}
    if icc_profile is not None:
        options["icc_profile"] = icc_profile
    if exif is not None:
        options["exif"] = exif
    try:
        Image.fromarray(np.dstack([px, al])).save(out, format="WEBP", **options)
    except (OSError, ValueError, KeyError) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise  # the file system's error (a full disk), not the encoder's
        raise ImageError(f"Pillow could not encode WEBP ({e})") from e


def _prepare(p: Path, fmt: str, px: np.ndarray, al: np.ndarray | None, quality: int,
             icc_profile: bytes | None, notes: list[str] | None = None, peak: int = 65535) -> _Encoding:
    """The format's conversions and their warnings (at the caller of write_image / encode_image), or their
    messages appended to ``notes``. ``peak``: the 16-bit level that an 8-bit format's 255 stands for."""
    if fmt == "JPEG" and al is not None:
        note(notes, f"{p}: JPEG cannot store alpha; the alpha channel was dropped (PNG or WebP output keeps it)",
              AlphaDroppedWarning, stacklevel=5)
        al = None
    if fmt in ("JPEG", "WEBP") and px.dtype == np.uint16:
        px = uint16_to_uint8(px, peak)
        if al is not None:  # at the pixels' range, or the alpha's own where that is wider (a 16-bit alpha)
            al = uint16_to_uint8(al, max(peak, used_peak(al)))
    if icc_profile is not None and not profile_fits(icc_profile, px.shape[2]):
        _profile_dropped(p, f"a {icc_colour_space(icc_profile) or 'malformed'} profile for "
                            f"{'grey' if px.shape[2] == 1 else 'RGB'} pixels", notes)
        icc_profile = None
    if fmt == "JPEG" and icc_profile is not None and len(icc_profile) > MAX_ICC_BYTES:
        _profile_dropped(p, f"it has {len(icc_profile):,} bytes, more than JPEG's {MAX_ICC_BYTES:,}", notes)
        icc_profile = None
    grey_as_rgb = False
    if px.dtype == np.uint16:
        if px.shape[2] == 1 and al is not None and fmt == "TIFF":  # readers do not take 16-bit grey+alpha TIFF
            grey_as_rgb = True  # RGBA, made a strip at a time by the encoder
            if icc_profile is not None:
                icc_profile = None  # a grey profile for RGB pixels
                _profile_dropped(p, "16-bit grey+alpha TIFF is stored as RGBA, and the profile is a grey one",
                                 notes)
    elif fmt == "WEBP" and px.shape[2] == 1:
        px = np.repeat(px, 3, axis=2)
        if icc_profile is not None:
            _profile_dropped(p, "WebP stores grey as RGB, and the profile is a grey one", notes)
            icc_profile = None
    return _Encoding(p, fmt, px, al, quality, icc_profile, grey_as_rgb)


def _atomic_write(p: Path, write: Callable[[BinaryIO], None], *, remove_stale: bool = True) -> None:
    """Call ``write`` on a temporary file in ``p``'s directory, fsync and rename it to ``p``; on any
    failure the temporary file is removed and an existing ``p`` is untouched."""
    parent = p.parent
    if not parent.is_dir():
        raise ImageError(f"{p}: directory {parent} does not exist; create it first")
    # Temporary files of writers that were killed (their pid is gone) are removed first.
    if remove_stale:
        remove_stale_temps(parent, target=p.name)
    try:
        # O_EXCL: never clobber; mode 0o666 lets the umask decide, like a plain open().
        fd, tmp = create_temp(p)
    except OSError as e:
        raise ImageError(f"{p}: cannot create a file in {parent} ({e.strerror})") from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        _keep_mode(p, tmp)
        os.replace(tmp, p)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno == errno.ENAMETOOLONG:
            raise ImageError(f"{p}: the file name is longer than the file system takes (255 bytes on most); "
                             "give the input a shorter name, or choose another -o") from e
        if isinstance(e, OSError):
            raise ImageError(
                f"{p}: writing failed ({e.strerror or e}); check free space and permissions"
            ) from e
        raise
    _fsync_directory(parent)


def _keep_mode(target: Path, tmp: Path) -> None:
    """Give ``tmp`` the permission bits of the file it replaces, as writing into that file would keep
    them (a 0600 output stayed private only until it was written again). A link in the target's place
    is replaced by the file; its target is left alone."""
    try:
        st = os.stat(target, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode):
        with contextlib.suppress(OSError):  # another owner's file: the new one keeps the umask's mode
            os.chmod(tmp, stat.S_IMODE(st.st_mode))


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable (POSIX); Windows has no directory handles to fsync."""
    if os.name == "nt":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # a folder that can be written but not read (mode 0333): the file is in place all the same
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some network and FUSE filesystems refuse to fsync a folder: the file is in place
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)
