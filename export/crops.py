"""Real-photo crops the exported models are validated on.

A crop is the ``size`` x ``size`` window with the highest gradient energy on a ``size / 2`` grid
(textured content drives the network hardest; a flat sky crop would prove little). The validation
batch holds the two most textured windows (batch 2) plus a smaller non-square window (other H and W)
so one validation run also exercises the dynamic batch, height and width of the exported graph.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adassr.export.errors import ExportError
from adassr.runtime.errors import ImageError
from adassr.runtime.images import is_image_file

CROP_SIZE = 32
SMALL_CROP = (20, 28)  # (H, W) of the non-square window, cut from the most textured crop
SAMPLE_PHOTO = Path("samples") / "cameras" / "nokia" / "iptc.jpg"

log = logging.getLogger(__name__)
SAMPLES_DIR = Path("samples") / "cameras"


@dataclass(frozen=True)
class ValidationInput:
    """One NCHW float32 batch in [0, 1] and a human-readable description of where it came from."""

    batch: np.ndarray
    description: str


MAX_BUNDLED_PHOTOS = 8
"""Photos :func:`bundled_photos` returns at most (the checkout bundles 5): the fp16 check holds every
intermediate tensor of their crops in memory."""


def _checkout_roots() -> list[Path]:
    """Checkouts of this project that may hold its bundled files: the package's own (an editable
    install), then the working folder when it is one (by its pyproject), never any folder that merely
    has a ``samples/cameras`` of its own (a user's project laid out as adapt's default reads)."""
    roots = [Path(__file__).resolve().parents[1]]
    try:
        cwd = Path.cwd()  # FileNotFoundError when the working folder was deleted: no checkout there
        if 'name = "adassr"' in (cwd / "pyproject.toml").read_text(encoding="utf-8"):
            roots.append(cwd)
    except (OSError, UnicodeDecodeError):
        pass
    return roots


def _repo_candidates(relative: Path) -> list[Path]:
    return [root / relative for root in _checkout_roots()]


def checkout_file(relative: Path) -> Path | None:
    """The file ``relative`` of this project's checkout (the package's own, else the working folder
    when it is one), or None (an installed package has no bundled samples)."""
    return next((p for p in _repo_candidates(relative) if p.is_file()), None)


def bundled_photos() -> list[Path]:
    """The bundled sample photos (``samples/cameras/*/*`` of this project's checkout, at most
    :data:`MAX_BUNDLED_PHOTOS`), or ``[]`` outside a checkout."""
    for root in _repo_candidates(SAMPLES_DIR):
        if root.is_dir():
            return sorted(p for p in root.glob("*/*") if is_image_file(p))[:MAX_BUNDLED_PHOTOS]
    return []


def find_validation_photo(
    images: Iterable[Mapping[str, object]] = (), explicit: str | os.PathLike[str] | None = None
) -> Path:
    """The photo to validate on: ``explicit``, else the first readable file among ``images``
    (manifest ``images`` entries, ``{"path": ...}``), else the bundled ``samples/cameras/nokia/iptc.jpg``.
    """
    if explicit is not None:
        path = Path(explicit)
        if path.is_dir():
            raise ExportError(f"validation image {path} is a folder; pass one photo with --validation-image")
        if not path.is_file():
            raise ExportError(f"validation image {path} does not exist; pass an existing photo with --validation-image")
        return path
    for entry in images if isinstance(images, (list, tuple)) else ():  # a hand-edited manifest: no list, no photos
        raw = entry.get("path") if isinstance(entry, Mapping) else None
        if isinstance(raw, str) and usable_photo(Path(raw)):
            return Path(raw)
    bundled = checkout_file(SAMPLE_PHOTO)
    if bundled is not None:
        return bundled
    where = ("the camera's images are not readable from here, and " if isinstance(images, (list, tuple)) and images
             else "")
    raise ExportError(
        f"no photo to validate the export on: {where}the bundled {SAMPLE_PHOTO} comes with a checkout of adassr, "
        "not with an installed package; pass a photo with --validation-image PATH"
    )


def usable_photo(path: Path) -> bool:
    """Whether ``path`` decodes as an image large enough to validate on (adapt skips damaged and tiny
    members of a group, but its manifest lists every member): its size from the header first, then the
    whole file, since a truncated photo has a good header."""
    from adassr.runtime.errors import AdassrError
    from adassr.runtime.images import read_image_size

    if not path.is_file():
        return False
    try:
        width, height = read_image_size(path)
        if min(height, width) <= max(SMALL_CROP):
            return False
        read_rgb(path)
    except (AdassrError, OSError, MemoryError):
        return False
    return True


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """A photo as float32 RGB H x W x 3 in [0, 1] (grey replicated, alpha dropped)."""
    from adassr.runtime.images import read_image, to_float32, used_peak

    raw = read_image(path).pixels
    pixels = to_float32(raw, peak=used_peak(raw))  # as upscale serves it
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels[:, :, :3], dtype=np.float32)


def textured_windows(image: np.ndarray, size: int, count: int) -> list[tuple[int, int]]:
    """Top-left corners of ``count`` ``size`` windows with the most gradient energy, most textured
    first: non-overlapping ones on a ``size / 2`` grid (greedily); where that leaves fewer, the best of
    the non-overlapping ``size``-aligned tiles (a 64 px image whose best window is the centre one
    still gets two apart); fewer only when the image has fewer windows at all."""
    if image.ndim != 3 or image.shape[2] < 1:
        raise ExportError(f"textured_windows needs an H x W x C image, got shape {image.shape}")
    h, w = image.shape[:2]
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 1 <= size <= min(h, w):
        raise ExportError(f"window size {size!r} must be an integer from 1 to the image's shorter side {min(h, w)}")
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ExportError(f"window count {count!r} must be an integer >= 1")
    luma = image.mean(axis=2, dtype=np.float64)
    energy = np.zeros((h, w))
    energy[:, 1:] += np.abs(np.diff(luma, axis=1))
    energy[1:, :] += np.abs(np.diff(luma, axis=0))
    integral = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))

    def ranked(step: int) -> list[tuple[int, int]]:
        ys = np.array(sorted({*range(0, h - size + 1, step), h - size}))
        xs = np.array(sorted({*range(0, w - size + 1, step), w - size}))
        y, x = (a.ravel() for a in np.meshgrid(ys, xs, indexing="ij"))
        total = integral[y + size, x + size] - integral[y, x + size] - integral[y + size, x] + integral[y, x]
        return [(int(y[i]), int(x[i])) for i in np.argsort(-total, kind="stable")]

    def apart(candidates: list[tuple[int, int]]) -> list[tuple[int, int]]:
        chosen: list[tuple[int, int]] = []
        for cy, cx in candidates:
            if all(abs(cy - py) >= size or abs(cx - px) >= size for py, px in chosen):
                chosen.append((cy, cx))
                if len(chosen) == count:
                    break
        return chosen

    greedy = apart(ranked(max(1, size // 2)))
    if len(greedy) < count:
        tiles = apart(ranked(size))
        if len(tiles) > len(greedy):
            return tiles
    return greedy


def validation_inputs(photo: str | os.PathLike[str], *, size: int = CROP_SIZE) -> list[ValidationInput]:
    """Batch 2 of the two most textured ``size`` crops of ``photo``, and one smaller non-square crop."""
    try:
        image = read_rgb(photo)
    except ImageError as exc:
        raise ExportError(f"cannot read the validation photo {photo}: {exc}") from exc
    h, w = image.shape[:2]
    need = max(SMALL_CROP) + 1  # a window larger than the non-square crop in both H and W
    if min(h, w) < need:
        raise ExportError(f"validation photo {photo} is {w}x{h}; it needs at least {need}x{need} pixels (a "
                          f"window and a smaller {SMALL_CROP[0]}x{SMALL_CROP[1]} crop of it); pass a larger one "
                          "with --validation-image")
    size = min(size, h, w)
    corners = textured_windows(image, size, 2)
    if len(corners) < 2:  # an image of one window: the batch repeats it (batch 2 is what is tested)
        corners = corners * 2
    crops = np.stack([image[y : y + size, x : x + size].transpose(2, 0, 1) for y, x in corners])
    sh, sw = min(SMALL_CROP[0], size), min(SMALL_CROP[1], size)
    y0, x0 = corners[0]
    small = crops[:1, :, :sh, :sw]
    where = ", ".join(f"(y={y}, x={x})" for y, x in corners)
    return [
        ValidationInput(np.ascontiguousarray(crops), f"{photo}: {size}x{size} crops at {where} as a batch of 2"),
        ValidationInput(np.ascontiguousarray(small), f"{photo}: {sh}x{sw} crop at (y={y0}, x={x0})"),
    ]


def photo_crops(paths: Sequence[str | os.PathLike[str]], *, size: int = CROP_SIZE) -> ValidationInput | None:
    """The most textured ``size`` crop of each photo in ``paths`` (smaller ones skipped) as one batch."""
    crops, names = [], []
    for path in paths:
        try:
            image = read_rgb(path)
        except ImageError as exc:  # an extra check: one damaged photo must not stop the export
            log.warning("not using %s for the fp16 check: %s", path, exc)
            continue
        if min(image.shape[:2]) < size:
            continue
        (y, x), = textured_windows(image, size, 1)
        crops.append(image[y : y + size, x : x + size].transpose(2, 0, 1))
        names.append(Path(path).name)
    if not crops:
        return None
    label = f"{size}x{size} most textured crop of each of {', '.join(names)}"
    return ValidationInput(np.ascontiguousarray(np.stack(crops)), label)
