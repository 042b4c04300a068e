"""How well the blur directions that the images of a group prefer one by one agree.

In group mode one kernel is fitted to all images together. Each image can also be fitted alone;
where those fits point their major axes in different directions, the group's angle rests on
little evidence (heavy JPEG removes the fine texture that constrains it, and a photo dominated by
one edge direction leaves the blur along that edge unconstrained). The agreement is the length of
the anisotropy-weighted mean of the doubled angles (an axis turned by 180 deg is the same axis):

    agreement = | sum_i a_i exp(2j theta_i) | / sum_i a_i,   a_i = log(sigma_major_i / sigma_minor_i)

1 when every anisotropic image points the same way, near 0 when their directions cancel, and
about ``1 / sqrt(n)`` for ``n`` directions drawn at random, so with few images even unrelated
directions agree by chance. Measured on the development photos and the calibration crops
(``benchmarks/kernel_direction_agreement.py``; ``benchmarks/README.md``, "How far to trust the
angle"): the group's angle error grows as the agreement falls; the groups warned at the thresholds
below (chosen there, never on tests/data/hr) missed the angle by more than 15 deg in 58 % of the
cases, the others in 12 %.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from adassr.runtime.errors import ConfigError

__all__ = ["DIRECTION_AGREEMENT_WARN", "DIRECTION_AGREEMENT_WARN_PARTS", "MIN_WARN_AXIS_RATIO",
           "consensus_direction", "direction_agreement", "warn_threshold"]

DIRECTION_AGREEMENT_WARN = 0.7  # below this the group's angle is reported as uncertain ...
MIN_WARN_AXIS_RATIO = 1.15  # ... when the kernel is at least this elongated (a rounder one has no angle to trust)
DIRECTION_AGREEMENT_WARN_PARTS = 0.85
"""The same for one image, whose direction check compares its tiles or quadrants: parts of one photo
share its content, so they agree more easily than separate photos. Chosen on the development photos
and the kernel-calibration photos in single-image mode, never tests/data/hr (benchmarks/README.md,
"One image: its parts"): single-image angles missed by more than 15 deg in 78 % / 71 % / 49 % / 24 %
of the estimates whose parts agreed below 0.5 / 0.5-0.7 / 0.7-0.85 / from 0.85."""
_ROUND = 1e-6  # total log axis ratio below which every image is round: nothing to disagree about


def _weighted_doubled_angles(fits: Sequence[tuple[float, float, float]], what: str) -> tuple[float, float, float]:
    """``(sum a_i, sum a_i cos 2 theta_i, sum a_i sin 2 theta_i)`` of the module doc."""
    if not fits:
        raise ConfigError(f"{what} needs the fit of at least one image")
    total = 0.0
    re = im = 0.0
    for major, minor, theta in fits:
        if not (math.isfinite(major) and math.isfinite(minor) and major > 0 and minor > 0 and math.isfinite(theta)):
            raise ConfigError(f"per-image fit ({major}, {minor}, {theta}) must have finite positive sigmas "
                              "and a finite angle")
        if minor > major:  # the axes given the other way round: theta names the minor axis
            major, minor, theta = minor, major, theta + math.pi / 2.0
        weight = math.log(major / minor)
        total += weight
        re += weight * math.cos(2.0 * theta)
        im += weight * math.sin(2.0 * theta)
    return total, re, im


def direction_agreement(fits: Sequence[tuple[float, float, float]]) -> float:
    """The agreement of the module doc from ``(sigma_major, sigma_minor, theta_radians)`` per image.

    1.0 when no image is anisotropic (round fits have no direction to disagree about). Raises
    :class:`ConfigError` for an empty sequence or a sigma that is not positive and finite.
    """
    total, re, im = _weighted_doubled_angles(fits, "direction_agreement")
    if total < _ROUND:
        return 1.0
    return min(1.0, math.hypot(re, im) / total)


def consensus_direction(fits: Sequence[tuple[float, float, float]]) -> float | None:
    """The direction (radians, in (-pi/2, pi/2]) the fits point to together: half the angle of the
    anisotropy-weighted mean of the doubled angles (the module doc's sum), so each image votes with
    its own elongation and an axis turned by 180 deg counts as the same axis. None when every fit is
    round or the directions cancel exactly. Same errors as :func:`direction_agreement`."""
    total, re, im = _weighted_doubled_angles(fits, "consensus_direction")
    if total < _ROUND or math.hypot(re, im) < _ROUND * total:
        return None
    return 0.5 * math.atan2(im, re)


def warn_threshold(check: str | None) -> float:
    """The agreement below which an elongated estimate is warned, for the diagnostics'
    ``direction_check``: ``"parts"`` (one image's tiles or quadrants) or ``"images"`` (a group; also
    for records written before the single-image check, which have no ``direction_check``)."""
    return DIRECTION_AGREEMENT_WARN_PARTS if check == "parts" else DIRECTION_AGREEMENT_WARN
