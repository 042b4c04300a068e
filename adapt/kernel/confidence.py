"""A kernel estimate's confidence: how likely it is closer to the camera's true kernel than the fixed G(1.6).

The fixed Gaussian G(1.6) HR px is what a camera gets without an estimate, so the question a confidence
answers is whether the estimate beats it. :func:`kernel_confidence` reads the estimate's diagnostics
(nothing else, so a manifest's confidence can be recomputed from its record) and returns a logistic
model's probability of that:

``confidence = 1 / (1 + exp(-(b + sum_i w_i * f_i)))`` over the features of :func:`confidence_features`:
how many scenes the frames show (one scene's content biases the estimate as one photo's does), the JPEG
blockiness and the noise (they hide the fine structure the estimate reads), how well the scenes (one
scene: its parts) agree on the blur direction, how much better the estimate explains the images than
G(1.6) does (the fit's relative loss gap), the fit's residual, and how far the estimate is from G(1.6)
(an estimate next to G(1.6) can hardly be much closer to the truth than G(1.6) is).

The weights were fitted by ``benchmarks/kernel_confidence.py`` on synthetic camera groups made from the
development photos (benchmarks/data/dev_photos), with 1-8 scenes, noise 0-5/255 and JPEG quality
none-60, and checked on groups made from other photos (tests/data/hr), never fitted there
(``benchmarks/results/kernel_confidence.md``). Where the fixed Gaussian is returned (the images cannot
tell it from the estimate) the confidence is 0: that kernel *is* G(1.6).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["FEATURES", "WEIGHTS", "confidence_features", "kernel_confidence", "kernel_distance", "logistic",
           "returned_a_fallback"]

FEATURES = ("log_scenes", "jpeg_blockiness", "noise_255", "direction_agreement", "no_direction_agreement",
            "log_loss_gap", "residual_rms", "distance_from_fixed")
"""The names of :func:`confidence_features`, in its order."""
WEIGHTS: tuple[float, ...] = (-0.3402, 2.1638, -2.5617, 0.1335, 0.8042, 0.0, -0.0579, -7.3849, 8.8966)
"""The intercept, then one weight per feature, in the order of :data:`FEATURES`: fitted by
``python benchmarks/kernel_confidence.py report`` on 424 groups of the development photos (see the module
doc). ``no_direction_agreement`` never occurred there (its weight is 0: an estimate without a direction
check counts as one whose parts disagree)."""
FIXED_SIGMA = 1.6
"""HR sigma of the fixed Gaussian the estimate is compared with."""


def kernel_distance(a: tuple[float, float, float], b: tuple[float, float, float], scale: int) -> float:
    """L2 distance between two Gaussian kernels ``(sigma_x, sigma_y, theta_deg)`` (sigmas in HR px) on a
    26-tap HR support at an even ``scale``, 25 at an odd one (the distance ``benchmarks/kernel_clipping.py``
    scores with at x4)."""
    from adassr.adapt.degradation import gaussian_kernel

    size = 26 if scale % 2 == 0 else 25
    ka = gaussian_kernel(a[0], a[1], math.radians(a[2]), scale=scale, size=size)
    kb = gaussian_kernel(b[0], b[1], math.radians(b[2]), scale=scale, size=size)
    return float(np.linalg.norm(ka - kb))


def _distance_from_fixed(estimate: Mapping[str, Any], scale: int) -> float:
    """:func:`kernel_distance` between the estimate and G(:data:`FIXED_SIGMA`)."""
    mine = (float(estimate["sigma_x"]), float(estimate["sigma_y"]), float(estimate["theta_deg"]))
    return kernel_distance(mine, (FIXED_SIGMA, FIXED_SIGMA, 0.0), scale)


def confidence_features(diagnostics: Mapping[str, Any], scale: int = 4) -> np.ndarray:
    """The features of :data:`FEATURES` from an estimate's ``diagnostics`` (those of a cross-scale fit:
    ``n_scenes``, ``jpeg_blockiness``, ``noise_sigma``, ``fixed_gaussian_loss_gap``, ``residual_rms``,
    ``estimate_before_fallback`` and, where measured, ``direction_agreement``). Raises ``KeyError``
    naming a missing key."""
    d = diagnostics
    scenes = d.get("n_scenes")
    if scenes is None:  # a record written before scenes were counted: its images
        scenes = len(d["images_used"])
    agreement = d.get("direction_agreement")
    return np.array([
        math.log(max(int(scenes), 1)),
        float(d["jpeg_blockiness"]),
        255.0 * float(d["noise_sigma"]),
        0.0 if agreement is None else float(agreement),
        1.0 if agreement is None else 0.0,
        math.log1p(max(float(d["fixed_gaussian_loss_gap"]), 0.0)),
        float(d["residual_rms"]),
        _distance_from_fixed(d["estimate_before_fallback"], scale),
    ])


def logistic(z: float) -> float:
    """``1 / (1 + exp(-z))`` without overflow."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def returned_a_fallback(diagnostics: Mapping[str, Any]) -> bool:
    """Whether the record's kernel is a fallback rather than the estimate: no estimate was made (the
    bicubic kernel: no ``estimate_before_fallback``), or the fixed Gaussian was returned (the loss gap
    within the allowed one, the rule of :func:`adassr.adapt.kernel.estimate_kernel`)."""
    if "estimate_before_fallback" not in diagnostics:
        return True
    allowed = float(diagnostics.get("fallback_gap_allowed", 0.0))
    return allowed > 0 and float(diagnostics.get("fixed_gaussian_loss_gap", math.inf)) <= allowed


def kernel_confidence(diagnostics: Mapping[str, Any], scale: int = 4,
                      weights: tuple[float, ...] = WEIGHTS) -> float:
    """The modelled probability (in [0, 1]) that the estimate described by ``diagnostics`` is closer to
    the true kernel than G(1.6) (see the module doc); ``weights``: the intercept and one weight per feature.
    0 for a record whose kernel is a fallback: the fixed Gaussian (its loss gap within the allowed one)
    or the bicubic kernel (no estimate was made)."""
    if len(weights) != len(FEATURES) + 1:
        raise ValueError(f"weights must be the intercept and {len(FEATURES)} feature weights; got {len(weights)}")
    if returned_a_fallback(diagnostics):
        return 0.0
    f = confidence_features(diagnostics, scale)
    return logistic(float(weights[0] + np.dot(weights[1:], f)))
