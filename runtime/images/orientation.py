"""EXIF orientation (tag 274) applied to numpy arrays, so every decoder path shares one code."""

from __future__ import annotations

import numpy as np

ORIENTATION_TAG = 274


def apply_orientation(a: np.ndarray, orientation: int) -> np.ndarray:
    """Return ``a`` (H x W or H x W x C) turned from stored to display orientation.

    Values follow the EXIF/TIFF specification: 1 as stored, 2 mirrored left-right, 3 rotated 180,
    4 mirrored top-bottom, 5 transposed, 6 rotated 90 clockwise, 7 transversed, 8 rotated 90
    counter-clockwise. Any other value (0, 9, garbage) is treated as 1, as viewers do.
    """
    if orientation == 2:
        out = a[:, ::-1]
    elif orientation == 3:
        out = a[::-1, ::-1]
    elif orientation == 4:
        out = a[::-1]
    elif orientation == 5:
        out = np.swapaxes(a, 0, 1)
    elif orientation == 6:
        out = np.swapaxes(a, 0, 1)[:, ::-1]
    elif orientation == 7:
        out = np.swapaxes(a[::-1, ::-1], 0, 1)
    elif orientation == 8:
        out = np.swapaxes(a, 0, 1)[::-1]
    else:
        return a
    return np.ascontiguousarray(out)
