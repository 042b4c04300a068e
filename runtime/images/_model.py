"""The decoded-image record and the format tables shared by reading and writing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adassr.runtime.errors import ImageError

DEFAULT_MAX_PIXELS = 100_000_000

SUPPORTED_READ_SUFFIXES: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".mpo", ".webp", ".tif", ".tiff", ".bmp",
)
SUPPORTED_WRITE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")


def is_image_file(path: Path) -> bool:
    """Whether ``path`` is a visible file (name not starting with ``.``) with a readable image suffix.

    The one rule every stage uses to list the images of a folder; the content is checked when read.
    """
    return not path.name.startswith(".") and path.suffix.lower() in SUPPORTED_READ_SUFFIXES and path.is_file()

# Formats read_image accepts (sniffed from the content, not the suffix).
READ_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "MPO", "WEBP", "TIFF", "BMP")
# Pillow opener names: MPO has no opener of its own, the JPEG one returns MPO files as such.
PILLOW_OPENERS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "TIFF", "BMP")

_DTYPE_BITS = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}


def bit_depth_of(dtype: np.dtype) -> int | None:
    """8 for uint8, 16 for uint16, None for any other dtype."""
    return _DTYPE_BITS.get(np.dtype(dtype))


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """A decoded image in display orientation.

    ``pixels`` is H x W x C (C = 1 grey or 3 RGB), uint8 or uint16; ``alpha`` is H x W with the
    same dtype, or None. EXIF orientation has already been applied to both.
    """

    pixels: np.ndarray
    alpha: np.ndarray | None
    bit_depth: int
    exif_make: str | None
    exif_model: str | None
    path: Path | None

    def __post_init__(self) -> None:
        px = self.pixels
        if px.ndim != 3 or px.shape[2] not in (1, 3):
            raise ImageError(f"LoadedImage.pixels must be H x W x 1 or H x W x 3, got {px.shape}")
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


class AlphaDroppedWarning(ImageWarning):
    """An alpha channel was dropped because the output format cannot store it (JPEG)."""
