"""The decoded-image record and the format tables shared by reading and writing."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adassr.runtime.errors import ImageError
from adassr.runtime.images.convert import used_peak

DEFAULT_MAX_PIXELS = 100_000_000

SUPPORTED_READ_SUFFIXES: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".jfif", ".jpe", ".mpo", ".webp", ".tif", ".tiff", ".bmp",
)
"""Suffixes a folder's images are listed by (any case; ``.jfif`` and ``.jpe`` are JPEG files as browsers and
messaging apps save them). The content decides the format when a file is read."""
SUPPORTED_WRITE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")


def is_image_file(path: Path) -> bool:
    """Whether ``path`` is a visible file (name not starting with ``.``) with a readable image suffix.

    The one rule every stage uses to list the images of a folder; the content is checked when read.
    """
    return not path.name.startswith(".") and path.suffix.lower() in SUPPORTED_READ_SUFFIXES and path.is_file()

def unreadable_image_entry(path: Path) -> str | None:
    """Why a visible entry with an image suffix is no image file that can be read: a symbolic link whose
    target is gone, or a FIFO, socket or device; None for anything else (a file, a folder, another name).

    Listings name such entries (a failed file for ``upscale``, a skipped one for ``adapt``) instead of
    leaving them out without a word.
    """
    if path.name.startswith(".") or path.suffix.lower() not in SUPPORTED_READ_SUFFIXES:
        return None
    if path.is_symlink() and not path.exists():
        return "a link whose target does not exist"
    if path.exists() and not path.is_file() and not path.is_dir():
        return "not a regular file (a FIFO, socket or device)"
    return None


# Formats read_image accepts (sniffed from the content, not the suffix).
READ_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "MPO", "WEBP", "TIFF", "BMP")
# Pillow opener names: MPO has no opener of its own, the JPEG one returns MPO files as such.
PILLOW_OPENERS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "TIFF", "BMP")

_DTYPE_BITS = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}


def icc_colour_space(profile: bytes | None) -> str | None:
    """The data colour space of an ICC profile (header bytes 16-19: ``"RGB"``, ``"GRAY"``,
    ``"CMYK"``, ...), or None for no profile or one too short to have a header. Bytes other than
    printable ASCII show as ``?`` (the name goes into notes, terminals and HTTP headers)."""
    if not profile or len(profile) < 128:
        return None
    return "".join(chr(b) if 0x20 <= b <= 0x7E else "?" for b in profile[16:20]).strip()


def profile_fits(profile: bytes | None, channels: int) -> bool:
    """Whether ``profile`` describes pixels of ``channels`` colour channels (1: GRAY, 3: RGB)."""
    return icc_colour_space(profile) == {1: "GRAY", 3: "RGB"}.get(channels)


def bit_depth_of(dtype: np.dtype) -> int | None:
    """8 for uint8, 16 for uint16, None for any other dtype."""
    return _DTYPE_BITS.get(np.dtype(dtype))


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """A decoded image in display orientation.

    ``pixels`` is H x W x C (C = 1 grey or 3 RGB), uint8 or uint16; ``alpha`` is H x W with the
    same dtype, or None. EXIF orientation has already been applied to both. ``icc_profile`` is the
    file's embedded colour profile when it describes the decoded pixels (an RGB profile for RGB
    pixels, a grey one for grey), so that writers can embed it again; None otherwise.
    ``dropped_profile`` names the colour space of an embedded profile that did not describe the
    decoded pixels (a CMYK profile of a CMYK JPEG decoded to RGB), for the note of whoever writes
    an output; None when there was none. ``untagged_colour`` names a colour declaration of a file
    without an ICC profile that is not plain sRGB (a PNG ``gAMA`` or ``cHRM`` chunk, the EXIF
    ColorSpace "Uncalibrated" of a camera set to Adobe RGB), which writers cannot carry: a note too.
    ``exif`` is the photo's EXIF as an output carries it over (camera, date, exposure, GPS; without
    orientation, pixel size, resolution, thumbnail and maker note: see :mod:`adassr.runtime.images.exif`),
    a TIFF-structured payload for the writers' ``exif``; None when the file has none.
    """

    pixels: np.ndarray
    alpha: np.ndarray | None
    bit_depth: int
    exif_make: str | None
    exif_model: str | None
    path: Path | None
    icc_profile: bytes | None = None
    dropped_profile: str | None = None
    untagged_colour: str | None = None  # a colour declaration other than ICC, which no output carries
    exif: bytes | None = None  # the EXIF an output carries over (adassr.runtime.images.exif.carried_exif)
    sample_peak: int | None = None
    """16-bit pixels: the level that stands for white, where the caller knows the camera's sample range
    (``upscale --sample-bits 16``: 65535 for a dark 16-bit photo); None: :meth:`white` lets the values decide."""

    def white(self) -> int:
        """The level that stands for white in :attr:`pixels`: :attr:`sample_peak` when given, else
        :func:`~adassr.runtime.images.convert.used_peak` (255 for 8-bit pixels)."""
        return self.sample_peak if self.sample_peak is not None else used_peak(self.pixels)

    def profile_note(self) -> str | None:
        """The note for an output of this image when its file's profile was dropped, or its colours were
        declared some other way than by an ICC profile (PNG gAMA / cHRM, EXIF ColorSpace), else None."""
        if self.dropped_profile is None:
            if self.untagged_colour is None:
                return None
            return (f"it declares its colours by {self.untagged_colour}, not by an ICC profile, and the output "
                    "carries no such tag (viewers show it as sRGB); convert the photo to sRGB, or embed its ICC "
                    "profile, first")
        pixels = "grey" if self.pixels.shape[2] == 1 else "RGB"
        return (f"its {self.dropped_profile} colour profile does not describe its {pixels} pixels, so the output "
                "carries no profile (viewers show it as sRGB)")

    def __post_init__(self) -> None:
        px = self.pixels
        for name, array in (("pixels", px), ("alpha", self.alpha)):
            if array is not None and not isinstance(array, np.ndarray):
                raise ImageError(f"LoadedImage.{name} must be a numpy array, got {type(array).__name__}")
        if px.ndim != 3 or px.shape[2] not in (1, 3):
            raise ImageError(f"LoadedImage.pixels must be H x W x 1 or H x W x 3, got {px.shape}")
        if bit_depth_of(px.dtype) is None:
            raise ImageError(f"LoadedImage.pixels dtype {px.dtype} is not supported: use uint8 (bit_depth 8) or "
                             "uint16 (bit_depth 16) in the machine's byte order")
        if bit_depth_of(px.dtype) != self.bit_depth:
            raise ImageError(
                f"LoadedImage.pixels dtype {px.dtype} does not match bit_depth {self.bit_depth}"
            )
        if self.alpha is not None and (
            self.alpha.shape != px.shape[:2] or self.alpha.dtype != px.dtype
        ):
            raise ImageError(
                f"LoadedImage.alpha must be {px.shape[:2]} {px.dtype}, got "
                f"{self.alpha.shape} {self.alpha.dtype}"
            )

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def channels(self) -> int:
        return int(self.pixels.shape[2])


class ImageWarning(UserWarning):
    """Something about an image was tolerated (e.g. an unreadable EXIF block)."""


class ProfileDroppedWarning(ImageWarning):
    """A colour profile could not be embedded in the output: a grey profile for an output stored as
    RGB (WebP, 16-bit grey+alpha TIFF), or a profile whose colour space does not match the pixels."""


class AlphaDroppedWarning(ImageWarning):
    """An alpha channel was dropped because the output format cannot store it (JPEG)."""


def note(notes: list[str] | None, message: str, category: type[ImageWarning], *, stacklevel: int) -> None:
    """``message`` appended to ``notes``, or without a list warned as ``category``. ``stacklevel`` as
    :func:`warnings.warn` takes it here (1 is this function). A list keeps the notes of one call apart
    from other threads' (the warnings machinery is process-wide state)."""
    if notes is not None:
        notes.append(message)
    else:
        warnings.warn(message, category, stacklevel=stacklevel)
