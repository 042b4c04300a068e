"""The range a float image given to a metric, a degradation or an integer conversion must lie in, and its check."""

from __future__ import annotations

import math

from adassr.runtime.errors import ImageError

FLOAT_LOW, FLOAT_HIGH = -0.5, 1.5
"""Float images are on the [0, 1] scale. A model's output may overshoot a little (NIQE clips it,
PSNR and LPIPS take it as it is); values beyond these bounds mean another scale: 0-255 or 0-65535
levels stored as float, or [-1, 1]."""


def check_float_range(low: float, high: float, what: str = "image") -> None:
    """``ImageError`` when a float image's smallest and largest values say it is not on [0, 1].

    A NaN or infinite extreme (``min``/``max`` propagate NaN) is refused as a broken image.
    """
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ImageError(
            f"{what} contains NaN or infinite values (range [{low}, {high}]): give a finite image on "
            "the [0, 1] scale (a float file with missing data, or a model output that diverged)"
        )
    if low < FLOAT_LOW or high > FLOAT_HIGH:
        raise ImageError(
            f"{what} is float with values in [{low:.4g}, {high:.4g}], not on the [0, 1] scale: "
            "divide 8-bit levels by 255 and 16-bit ones by 65535, or map [-1, 1] to [0, 1] with (x + 1) / 2"
        )
