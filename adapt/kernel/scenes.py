"""Which frames of a group show the same scene: a fixed camera's frames are one scene many times.

A CCTV camera, a microscope on one slide or a doorbell sends frames of one view again and again. For
the blur kernel they are one image, not many: the scene's own content (its edges, its textures) biases
an estimate, and only other scenes average that bias out (``benchmarks/README.md``, "How many scenes a
kernel needs"). The estimator therefore weighs scenes, not frames, fits a group of one scene as the
single image it is, and says how many scenes it saw.

Two frames show the same scene when they have the same size and their thumbnails (the luma averaged
over :data:`THUMB` x :data:`THUMB` blocks, which also averages most of the noise and JPEG error away)
correlate by at least :data:`CORRELATION` (Pearson: a change of exposure, gain or offset does not
matter; a moving person or car lowers it only by the share of the view it covers). Frames are taken in
order and each joins the first scene whose first frame it matches, else starts a new scene. Frames
are compared over the part both hold inside their letterbox or pillarbox bars (the estimator passes
each frame's window): JPEG can make one view's bars cut to other depths, and bars shared by different
views would make them alike. A frame without contrast at that scale (a flat or black frame) is a scene
of its own. The threshold was chosen on the development photos (benchmarks/data/dev_photos), never on
tests/data/hr.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["CORRELATION", "THUMB", "FrameSummary", "labels_of", "scene_labels", "summarise"]

CORRELATION = 0.7
"""Smallest correlation of two thumbnails of one scene. On the development photos (LR 192 x 144) two
different photos correlated by 0.45 at most (median 0.07); a noisy, compressed frame (5/255, q60) or a darker
one with its own gamma by 0.995 or more with the clean frame; a shift by 4 LR px by 0.88 or more; a twelfth of
the view replaced by another photo's content (a passer-by) by 0.73-0.91."""
THUMB = 4
"""Side of the blocks a thumbnail averages (LR pixels); smaller for frames under 16 thumbnail pixels a side."""
_MIN_THUMB_SIDE = 16
_MIN_CELLS = 16
"""Fewer thumbnail cells inside both frames' windows than this: not compared."""
_FLAT = 1e-4
"""A thumbnail whose standard deviation is below this (in [0, 1] luma) has no contrast to compare."""
Window = tuple[slice, slice]
"""A tile's (or an image's content's) rows and columns in its image."""


def _block(shape: tuple[int, ...]) -> int:
    """The thumbnail block for frames of ``shape``: :data:`THUMB`, halved until the thumbnail has at least
    16 pixels a side (or 1)."""
    block = THUMB
    while block > 1 and min(shape) // block < _MIN_THUMB_SIDE:
        block //= 2
    return block


def _thumbnail(y: np.ndarray, block: int) -> np.ndarray:
    """``y`` averaged over ``block`` x ``block`` blocks (float64)."""
    h, w = y.shape
    y32 = np.ascontiguousarray(y, dtype=np.float32)
    return cv2.resize(y32, (max(w // block, 1), max(h // block, 1)), interpolation=cv2.INTER_AREA).astype(np.float64)


def _inside(a: Window, b: Window, block: int, shape: tuple[int, int]) -> tuple[slice, slice]:
    """The thumbnail cells inside both windows (whole blocks only)."""
    def span(x: slice, y: slice, n: int) -> slice:
        lo, hi = max(x.start, y.start), min(x.stop, y.stop)
        return slice(-(-lo // block), min(hi // block, n))
    return span(a[0], b[0], shape[0]), span(a[1], b[1], shape[1])


def _correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation of two thumbnails' cells; None when either has no contrast or too few cells."""
    if a.size < _MIN_CELLS:
        return None
    x, y = a.ravel() - a.mean(), b.ravel() - b.mean()
    sx, sy = float(np.sqrt(x @ x / x.size)), float(np.sqrt(y @ y / y.size))
    if sx < _FLAT or sy < _FLAT:
        return None
    return float(x @ y) / (x.size * sx * sy)


@dataclass(frozen=True)
class FrameSummary:
    """What frames are compared by: the frame's size, its content window and its thumbnail (a frame's
    luma need not be kept while the others are summarised)."""

    shape: tuple[int, int]
    window: Window
    thumbnail: np.ndarray


def summarise(y: np.ndarray, window: Window | None = None) -> FrameSummary:
    """The :class:`FrameSummary` of a 2-D luma ``y`` (float in [0, 1]); ``window``: its content inside its
    border bars, default the whole frame."""
    if y.ndim != 2:
        raise ValueError(f"scene_labels takes 2-D lumas; got shape {y.shape}")
    h, w = y.shape
    return FrameSummary((h, w), window or (slice(0, h), slice(0, w)), _thumbnail(y, _block(y.shape)))


def labels_of(frames: Sequence[FrameSummary]) -> list[int]:
    """The scene of each frame (see :func:`scene_labels`)."""
    leaders: list[FrameSummary] = []
    labels: list[int] = []
    for frame in frames:
        label = None
        for scene, leader in enumerate(leaders):
            if leader.shape != frame.shape:
                continue
            cells = _inside(frame.window, leader.window, _block(frame.shape), frame.thumbnail.shape)
            value = _correlation(frame.thumbnail[cells], leader.thumbnail[cells])
            if value is not None and value >= CORRELATION:
                label = scene
                break
        if label is None:
            label = len(leaders)
            leaders.append(frame)
        labels.append(label)
    return labels


def scene_labels(lumas: Sequence[np.ndarray], windows: Sequence[Window] | None = None) -> list[int]:
    """The scene of each frame of ``lumas`` (2-D float lumas in [0, 1]): labels 0, 1, ... in the order the
    scenes first appear; frames of one label are of one size and match that scene's first frame.
    ``windows``: each frame's content (rows, columns) inside its border bars, default the whole frame; two
    frames are compared over the part both windows hold."""
    if windows is not None and len(windows) != len(lumas):
        raise ValueError(f"scene_labels takes one window per frame; got {len(windows)} for {len(lumas)} frames")
    return labels_of([summarise(y, windows[i] if windows else None) for i, y in enumerate(lumas)])
