"""A sensor's defects: single pixels that stand out of their neighbours at the same place in most frames.

A hot (or dead) pixel is brighter (or darker) than all eight of its neighbours, and it is so at the
same place in every frame a sensor takes, whatever the scene. Content that passed through the lens
is spread by the camera's blur and rarely stands out of all its neighbours by much; where it does
(a glint, a texture's speck, noise) it moves with the scene from frame to frame. The per-tile rule
of :mod:`adassr.adapt.kernel.too_sharp` compares a pixel with its own tile only, and on a busy,
high-contrast photo, or under JPEG, which smears a hot pixel into a ringing block, a hot pixel is
not strong enough there to be told apart (``benchmarks/README.md``, "Burnt-in text and hot pixels").
Across the frames of a group it is: the frames of one size are compared place by place, and a
place that is a peak in most of them is a defect in all of them.

A pixel is a peak in a frame when it stands out of the brightest (or below the darkest) of its
eight neighbours by more than :data:`PEAK` times the frame's residual scale (the robust spread of
``y - median3x3(y)``, at least :data:`SCALE_FLOOR`, an 8-bit level). A place is a defect when it is
a peak in at least :data:`SHARE` of the frames of its size, and in at least :data:`MIN_FRAMES` of
them. The defects, :data:`REACH` pixels around them and the :data:`JPEG_BLOCK` x :data:`JPEG_BLOCK`
block of the JPEG grid (aligned to the frame's origin, as a camera's JPEG is) that holds each of them
are left out of every such frame: JPEG rings a hot pixel across its block, and that ringing, sharp as
well, pulled the estimate sharp when only the pixels around the defect were left out. Nothing is left
out where more than :data:`MAX_SHARE` of a frame's pixels would be defects (a static scene's own
texture, then, not a sensor's: a bad sensor has a few dozen hot pixels in a frame of 27,000). The
thresholds were chosen on the development photos (benchmarks/data/dev_photos), never on tests/data/hr.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import cv2
import numpy as np

__all__ = ["fixed_defects"]

PEAK = 6.0
"""How far a defect stands out of its eight neighbours, in the frame's residual scale."""
SCALE_FLOOR = 1.0 / 255.0
"""Smallest residual scale: an 8-bit level (a clean frame's smooth areas have none)."""
SHARE = 2.0 / 3.0
"""The share of a size's frames in which a place must be a peak."""
MIN_FRAMES = 3
"""Fewer frames of one size than this: nothing to compare, nothing is left out."""
REACH = 3
"""LR pixels around a defect that are left out too (the filters' reach)."""
JPEG_BLOCK = 8
"""Side of the JPEG block, on the grid from the frame's origin, left out around each defect."""
MAX_SHARE = 0.005
"""Nothing is left out of frames of a size where more than this share of a frame's pixels would be defects."""

_NEIGHBOURS = np.ones((3, 3), np.uint8)
_NEIGHBOURS[1, 1] = 0


def _peaks(y: np.ndarray) -> np.ndarray:
    """The pixels of ``y`` (a luma frame) that stand out of all eight neighbours by more than
    :data:`PEAK` times the frame's residual scale, up or down."""
    y32 = np.ascontiguousarray(y, dtype=np.float32)
    residual = np.abs(y32 - cv2.medianBlur(y32, 3))
    scale = max(1.4826 * float(np.median(residual)), SCALE_FLOOR)
    # the border is reflected with the edge row in it, so a pixel on the edge is its own neighbour: never a peak
    above = y32 - cv2.dilate(y32, _NEIGHBOURS, borderType=cv2.BORDER_REFLECT)
    below = cv2.erode(y32, _NEIGHBOURS, borderType=cv2.BORDER_REFLECT) - y32
    return np.maximum(above, below) > PEAK * scale


def _their_blocks(defects: np.ndarray) -> np.ndarray:
    """The :data:`JPEG_BLOCK` blocks (grid from the origin) that hold a defect, as a mask of its shape."""
    b = JPEG_BLOCK
    h, w = defects.shape
    blocks = np.zeros((-(-h // b), -(-w // b)), dtype=bool)
    rows, cols = np.nonzero(defects)
    blocks[rows // b, cols // b] = True
    return np.repeat(np.repeat(blocks, b, axis=0), b, axis=1)[:h, :w]


def fixed_defects(lumas: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
    """For each frame of ``lumas`` (index -> luma, float in [0, 1]) that shares its size with at least
    :data:`MIN_FRAMES` - 1 others: the boolean mask of its size's defects, :data:`REACH` pixels around
    them and their JPEG blocks (the same mask for every frame of that size); frames without defects
    are absent."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for index, y in lumas.items():
        by_shape.setdefault(tuple(y.shape), []).append(index)
    size = 2 * REACH + 1
    found: dict[int, np.ndarray] = {}
    for shape, indices in by_shape.items():
        if len(indices) < MIN_FRAMES:  # no place can be a peak in enough of them: skip the filtering
            continue
        counts = np.zeros(shape, dtype=np.int32)
        for index in indices:
            counts += _peaks(lumas[index])
        needed = max(MIN_FRAMES, math.ceil(SHARE * len(indices)))
        defects = counts >= needed
        if not defects.any() or np.count_nonzero(defects) > MAX_SHARE * defects.size:
            continue
        mask = cv2.dilate(defects.astype(np.uint8), np.ones((size, size), np.uint8)).astype(bool)
        mask |= _their_blocks(defects)
        for index in indices:
            found[index] = mask
    return found
