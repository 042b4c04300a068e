"""Blur-kernel estimation from LR images only (one kernel per camera group or per image).

Model: an LR image is ``y = downsample(x * k, s)`` (:mod:`adassr.adapt.degradation` conventions) with
``k`` an anisotropic Gaussian of covariance ``Sigma_k`` in HR pixels; in LR pixels ``y`` carries
a blur of covariance about ``Sigma_b = Sigma_k / s^2`` (plus the scene's own softness).

Method -- cross-scale derivative-energy matching, a training-free relative of Michaeli & Irani's
(2013) cross-scale patch recurrence: blurring ``y`` by ``G(3 Sigma_b)`` and downsampling by 2
gives an image ``z`` whose blur relative to its own grid, ``(Sigma_b + 3 Sigma_b) / 4``, equals
that of ``y``. Edges (and power-law textures) are scale invariant, so at the right ``Sigma_b``
``y`` and ``z`` have the same contrast-free derivative statistics: per direction ``d`` the ratio
of mean squared 2nd to 1st directional derivative (``~ 1 / blur variance along d``) and the
shape of the 1st-derivative energy over directions (:mod:`adassr.adapt.kernel.features`). ``Sigma_b``
(3 parameters via its matrix logarithm) minimises the squared mismatch, averaged over the
group's images: a 1-D isotropic search, then Nelder-Mead. ``G(3 Sigma_b)`` is applied exactly
in the Fourier domain on the mirror-extended image; ``z``'s four phases are pooled. Large images
contribute their most structured tiles, and within a tile only the pixels whose local gradient
energy stands well above the noise (``KernelEstimationConfig.pixel_snr``): in smooth, noisy areas
white noise would read as a very sharp kernel. From every derivative energy of ``y`` and ``z``
white noise's closed-form share is subtracted (``KernelEstimationConfig.noise_share``), at the
group's smallest per-image noise estimate: dense texture inflates an image's estimate, and the
images of one camera share one noise level (``benchmarks/README.md``, "Subtracting the noise").

The raw LR sigmas (principal axes) go through a linear calibration whose constants
(:data:`adassr.adapt.kernel.estimate.CALIBRATION`) were fitted by ``benchmarks/kernel_calibration.py``
on photos that are not the acceptance images; it absorbs the finite-difference filters, the
aliasing of small kernels and the average non-self-similarity of photographed scenes. Measured
accuracy and its limits: ``benchmarks/results/kernel_estimation.md``. In short: one kernel per
group of several images is much more reliable than one per image, because scene content (fur,
lattices, smooth shading, depth of field) biases a single image's estimate by up to +-30%.

The direction: in group mode each image is also fitted alone, and the kernel's direction is the
one their fits agree on, each image voting with its own elongation
(:func:`adassr.adapt.kernel.agreement.consensus_direction`); the two axes' sigmas are then refitted
at that direction (``KernelEstimationConfig.direction_from``; the pooled fit's own direction leans
towards the images with the strongest edges, and under noise and heavy JPEG it missed the
development photos' angles by 13-16 deg in median against 8-11 deg for the vote; benchmarks/README.md,
"The direction the images vote for"). How far to trust it: ``diagnostics["direction_agreement"]``
says how well the images' directions agree; :meth:`KernelEstimate.direction_warning` turns a low
agreement on an elongated kernel into a message (``adapt`` logs it). Heavy JPEG and edge-dominated
photos leave the direction unconstrained.

Deviations from the paper: AdaSSR takes the kernel from an external estimator; this one is
training-free and restricted to anisotropic Gaussians.

Flat inputs: an image whose most structured pixels hold no more gradient energy than its noise
carries no blur information; it is skipped in group mode, and when no image is usable the result
is the bicubic kernel (the backbones' training degradation, the same as ``--kernel bicubic``)
with ``method="fallback-bicubic"``, ``confidence=0`` and the reason in ``diagnostics``, so a
camera group does not fail on a flat picture. Faint structure (edges of an 8-bit level or two, or
under 7/255 and no more than noise when averaged down by 4) is a second choice: a flat noisy frame
after JPEG looks like that (JPEG removed the high band its noise estimate reads), and so does a dim,
densely textured photo. Beside images with clear structure, faint tiles are left out and an image
with only faint ones is skipped (``diagnostics["images_skipped_faint"]``, also in
``images_skipped_flat``); when everything is faint it is fitted and ``diagnostics["faint_structure_only"]``
says so (:meth:`KernelEstimate.faint_warning`; benchmarks/README.md, "Flat frames after JPEG").
Content drawn after capture (a recorder's burnt-in timestamp, a sensor's hot pixels) is sharper than
the camera's blur allows and, at full contrast, carried half of a small frame's derivative energy: pixels
far sharper and stronger than a tile's own structure in every direction are left out
(:mod:`adassr.adapt.kernel.too_sharp`; ``diagnostics["n_pixels_too_sharp"]``; benchmarks/README.md,
"Burnt-in text and hot pixels"). A sensor's hot and dead pixels are found across the frames too: single
pixels that stand out of all their neighbours at the same place in most frames of one size are left out
of all of them (:mod:`adassr.adapt.kernel.fixed_defects`; ``diagnostics["n_pixels_fixed_defects"]``).
Frames of one scene (a fixed camera's view again and again) count as one image
(:mod:`adassr.adapt.kernel.scenes`; ``diagnostics["n_scenes"]``, ``["scene_of_image"]``): the pooled fit
weighs scenes equally and each scene votes once on the direction, since a scene's content biases the
estimate whatever number of frames show it; a group of one scene is fitted and calibrated as a single
image and :meth:`KernelEstimate.scene_warning` says so (benchmarks/README.md, "How many scenes a kernel
needs"). ``confidence`` is the modelled probability that the kernel is closer to the truth than the fixed
G(1.6), from the scenes, JPEG, noise, the direction agreement and the fit
(:mod:`adassr.adapt.kernel.confidence`; benchmarks/README.md, "What the confidence says").
Malformed input (not arrays, wrong shape, NaN,
uint8, no images, sides below ``min_side``) raises a typed error.
"""

from __future__ import annotations

from adassr.adapt.kernel.estimate import CALIBRATION, KernelEstimationConfig, estimate_kernel
from adassr.adapt.kernel.result import (
    METHOD_BICUBIC,
    METHOD_CROSS_SCALE,
    METHOD_FALLBACK,
    METHOD_FIXED_GAUSSIAN,
    KernelEstimate,
    bicubic_kernel_estimate,
)

__all__ = [
    "CALIBRATION",
    "METHOD_BICUBIC",
    "METHOD_CROSS_SCALE",
    "METHOD_FALLBACK",
    "METHOD_FIXED_GAUSSIAN",
    "KernelEstimate",
    "KernelEstimationConfig",
    "bicubic_kernel_estimate",
    "estimate_kernel",
]
