"""Pixels drawn after capture: sharper, and stronger, than anything the camera's blur let through.

A recorder burns a timestamp and a camera name into CCTV frames, and a sensor's hot pixels are
single bright dots: neither passed through the lens, so neither carries the camera's blur. The
cross-scale fit reads sums of derivative energies, and such content, sharp and at full contrast,
carries a share of them far beyond its area: on the development photos (LR 192 x 144) a small
timestamp and camera name covered about 2 % of a frame and carried about half of its 2nd-derivative
energy, and the group's estimate went from a mean L2 distance of about 0.04 to the true kernel to
about 0.15, worse than the fixed G(1.6) (``benchmarks/kernel_overlays.py``).

The rule reads nothing about fonts, colours or places. A pixel's local sharpness along a direction
is its 2nd- over its 1st-derivative energy in a :data:`WINDOW` box; it is compared, direction by
direction, with the median of the tile's most structured pixels (the reference: the top
:data:`REFERENCE_SHARE` of the counted ones by 2nd-derivative energy; at noise 0 every pixel is
counted and the median of all of them is a flat area's). A pixel is left out when it is more than
:data:`FACTOR` times sharper than the reference in *every* one of :data:`DIRECTIONS` directions (an
anisotropic blur leaves edges across its short axis several times sharper than along its long one;
drawn content is sharp both ways) and its 2nd-derivative energy is more than :data:`STRENGTH` times
the reference's (thin lines and noise can be as sharp, but none of a frame's own content carries the
energy of content drawn at full contrast). :data:`PASSES` passes, the later ones with a reference
that no longer holds what the earlier ones left out: 50 hot pixels pulled the first reference up.

Nothing is left out where it would take more than :data:`MAX_SHARE` of the counted pixels (a scanned
document, a graphic: the sharp content is the picture's). The thresholds were chosen on the
development photos (benchmarks/data/dev_photos), never on tests/data/hr; there no clean frame lost
more than 0.3 % of its counted pixels.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from adassr.adapt.kernel.features import DerivativeBank

__all__ = ["too_sharp"]

DIRECTIONS = 4
"""Directions in which a pixel must be sharper than the reference."""
WINDOW = 5
"""Side of the box over which the local derivative energies are summed (LR px)."""
FACTOR = 3.0
"""How many times sharper than the reference's median a left-out pixel is, in every direction."""
STRENGTH = 8.0
"""How many times the reference's median 2nd-derivative energy a left-out pixel carries."""
REFERENCE_SHARE = 0.3
"""The reference: this share of the counted pixels, the most structured (2nd-derivative energy)."""
REACH = 3
"""LR pixels around a left-out one that are left out too (a JPEG's ringing, the filters' reach)."""
MAX_SHARE = 0.5
"""Nothing is left out where more than this share of the counted pixels would be."""
PASSES = 2
"""Passes, each with a reference without what the earlier ones left out."""
MIN_COUNTED = 64
"""Fewer counted pixels than this: nothing to compare with, nothing is left out."""


class _LocalEnergies:
    """A tile's local (:data:`WINDOW` box) 2nd-derivative energy, and the 1st- and 2nd-derivative
    energies along each of :data:`DIRECTIONS` directions."""

    def __init__(self, y: np.ndarray, bank: DerivativeBank) -> None:
        t0, t1, t2 = bank.taps[0], bank.taps[1], bank.taps[2]
        gx, gy, gxx, gxy, gyy = (cv2.sepFilter2D(y, cv2.CV_64F, kx, ky, borderType=cv2.BORDER_REFLECT)
                                 for kx, ky in ((t1, t0), (t0, t1), (t2, t0), (t1, t1), (t0, t2)))
        self.second = _box(gxx * gxx + 2.0 * gxy * gxy + gyy * gyy)
        self.ratios: list[np.ndarray] = []  # per direction: 2nd- over 1st-derivative energy
        for k in range(DIRECTIONS):
            c, s = math.cos(k * math.pi / DIRECTIONS), math.sin(k * math.pi / DIRECTIONS)
            first = _box((c * gx + s * gy) ** 2)
            second = _box((c * c * gxx + 2.0 * c * s * gxy + s * s * gyy) ** 2)
            self.ratios.append(second / np.maximum(first, 1e-20))

    def sharp_beyond(self, counted: np.ndarray) -> np.ndarray:
        """The pixels :data:`FACTOR` times sharper in every direction and :data:`STRENGTH` times
        stronger than the reference taken from ``counted``."""
        strength = self.second[counted]
        reference = counted & (self.second >= np.quantile(strength, 1.0 - REFERENCE_SHARE))
        score = np.full(self.second.shape, np.inf)
        for ratio in self.ratios:
            np.minimum(score, ratio / max(float(np.median(ratio[reference])), 1e-20), out=score)
        strong = self.second > STRENGTH * float(np.median(self.second[reference]))
        return (score > FACTOR) & strong


def _box(values: np.ndarray) -> np.ndarray:
    return cv2.boxFilter(values, -1, (WINDOW, WINDOW), borderType=cv2.BORDER_REFLECT)


def too_sharp(y: np.ndarray, bank: DerivativeBank, counted: np.ndarray) -> np.ndarray:
    """The pixels of ``y`` (a luma tile) that count as drawn after capture, and :data:`REACH` pixels
    around them (a boolean mask of ``y``'s shape): see the module docstring. ``counted``: the pixels the
    fit would count (the reference comes from them)."""
    left_out = np.zeros(y.shape, dtype=bool)
    total = int(np.count_nonzero(counted))
    if total < MIN_COUNTED:
        return left_out
    energies = _LocalEnergies(np.asarray(y, dtype=np.float64), bank)
    size = 2 * REACH + 1
    for _ in range(PASSES):
        remaining = counted & ~left_out
        if np.count_nonzero(remaining) < MIN_COUNTED:
            break
        sharp = energies.sharp_beyond(remaining)
        if not sharp.any():
            break
        left_out |= cv2.dilate(sharp.astype(np.uint8), np.ones((size, size), np.uint8)).astype(bool)
    if np.count_nonzero(left_out & counted) > MAX_SHARE * total:
        return np.zeros(y.shape, dtype=bool)
    return left_out
