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
order and each joins the first scene whose first frame it matches, else starts a new scene. A frame
without contrast at that scale (a flat or black frame) is a scene of its own. The threshold was chosen
on the development photos (benchmarks/data/dev_photos), never on tests/data/hr.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["CORRELATION", "THUMB", "scene_labels"]

CORRELATION = 0.7
"""Smallest correlation of two thumbnails of one scene. On the development photos (LR 192 x 144) two
different photos correlated by 0.45 at most (median 0.07); a noisy, compressed frame (5/255, q60) or a darker
one with its own gamma by 0.995 or more with the clean frame; a shift by 4 LR px by 0.88 or more; a twelfth of
the view replaced by another photo's content (a passer-by) by 0.73-0.91."""
THUMB = 4
"""Side of the blocks a thumbnail averages (LR pixels); smaller for frames under 16 thumbnail pixels a side."""
_MIN_THUMB_SIDE = 16
_FLAT = 1e-4
"""A thumbnail whose standard deviation is below this (in [0, 1] luma) has no contrast to compare."""


def _thumbnail(y: np.ndarray) -> np.ndarray | None:
    """``y`` averaged over blocks, zero mean and unit variance, flattened; None when it has no contrast."""
    h, w = y.shape
    block = THUMB
    while block > 1 and min(h, w) // block < _MIN_THUMB_SIDE:
        block //= 2
    y32 = np.ascontiguousarray(y, dtype=np.float32)
    small = cv2.resize(y32, (max(w // block, 1), max(h // block, 1)), interpolation=cv2.INTER_AREA)
    small = small.astype(np.float64).ravel()
    spread = float(small.std())
    if spread < _FLAT:
        return None
    return (small - small.mean()) / spread


def scene_labels(lumas: Sequence[np.ndarray]) -> list[int]:
    """The scene of each frame of ``lumas`` (2-D float lumas in [0, 1]): labels 0, 1, ... in the order the
    scenes first appear; frames of one label are of one size and match that scene's first frame."""
    leaders: list[tuple[tuple[int, ...], np.ndarray | None]] = []
    labels: list[int] = []
    for y in lumas:
        if y.ndim != 2:
            raise ValueError(f"scene_labels takes 2-D lumas; got shape {y.shape}")
        thumb = _thumbnail(y)
        label = None
        if thumb is not None:
            for index, (shape, leader) in enumerate(leaders):
                if shape == y.shape and leader is not None and float(thumb @ leader) / thumb.size >= CORRELATION:
                    label = index
                    break
        if label is None:
            label = len(leaders)
            leaders.append((tuple(y.shape), thumb))
        labels.append(label)
    return labels
