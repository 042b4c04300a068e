"""``estimate_kernel``: one anisotropic Gaussian blur kernel from LR images (see the package doc)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import cv2
import numpy as np
from scipy.optimize import minimize

from adassr.adapt.degradation import gaussian_kernel, kernel_size, params_from_covariance
from adassr.adapt.kernel.agreement import consensus_direction, direction_agreement
from adassr.adapt.kernel.confidence import kernel_confidence
from adassr.adapt.kernel.features import CrossScaleSample, FeatureSpec
from adassr.adapt.kernel.fixed_defects import fixed_defects
from adassr.adapt.kernel.result import (
    METHOD_CROSS_SCALE,
    METHOD_FIXED_GAUSSIAN,
    KernelEstimate,
    bicubic_kernel_estimate,
)
from adassr.adapt.kernel.scenes import Window, labels_of, summarise
from adassr.runtime.errors import ConfigError, ImageError, ShapeError

__all__ = ["CALIBRATION", "KernelEstimationConfig", "estimate_kernel"]

# Linear calibration per scale and mode: raw_lr_sigma = a * true_lr_sigma + b (LR pixels, both
# principal axes; the estimate is (raw - b) / a, clipped at 0.4 HR px). Fitted by
# `python benchmarks/kernel_calibration.py --scales 4 3 2 --kernels 40 --seed 0` (robust soft-L1
# fit of the log error over random kernels, sigmas 0.8-3.4 HR px, axis ratio <= 3, half with
# noise 2/255) on crops of samples/cameras/canon/xmp_test.jpg and of the first frame of
# fujifilm.mpo (both downscaled by 2-4 with antialiasing to act as sharp HR) and on
# tests/data/calibration/ref_I0{4,6}.png -- never on tests/data/hr, the acceptance images.
# Its output: benchmarks/results/kernel_calibration.json. Other scales use the x4 constants.
CALIBRATION: Mapping[int, Mapping[str, tuple[float, float]]] = MappingProxyType({
    2: MappingProxyType({"group": (0.8936, 0.0709), "single": (1.0175, -0.0117)}),
    3: MappingProxyType({"group": (1.0792, -0.0441), "single": (1.1572, -0.0748)}),
    4: MappingProxyType({"group": (1.2924, -0.1011), "single": (1.3310, -0.1021)}),
})
_FALLBACK_SCALE = 4
_ROWS = 256  # rows per band when converting to luma
_LUMA = np.array([0.299, 0.587, 0.114])
_MIN_HR_SIGMA = 0.4  # the linear map is clipped here (sigmas below ~0.8 HR px are aliased at x4)


@dataclass(frozen=True)
class KernelEstimationConfig:
    """Settings of :func:`estimate_kernel`; the defaults are the calibrated ones."""

    structure_fraction: float = 1.0  # share of pixels (most structured first) that count
    pixel_snr: float = 8.0  # only pixels whose local gradient energy is this many times the noise's (at
    # least the top 30 % of each tile); 0: every pixel. Chosen on benchmarks/data/dev_photos and the
    # calibration crops (benchmarks/README.md, "Noise and smooth photos"), never on tests/data/hr.
    noise_share: float = 1.0  # subtract this share of white noise's expected derivative energies (at
    # the group's smallest per-image noise estimate) from the statistics of y and z; 1 is the
    # closed-form share, 0 turns it off. Chosen on benchmarks/data/dev_photos (benchmarks/README.md,
    # "Subtracting the noise"), never on tests/data/hr.
    n_directions: int = 8  # directions of the directional-derivative energies
    anisotropy_weight: float = 0.5  # weight of the 1st-derivative shape features
    derivative_sigma: float = 0.0  # 0: finite differences; > 0: Gaussian derivatives (LR px)
    orders: tuple[int, int] = (1, 2)  # derivative orders whose energy ratio measures the blur
    isotropy_prior: float = 0.0  # weight of (log sigma_major / sigma_minor)^2 in the loss
    robust_scale: float = 0.0  # group mode: c * log(1 + loss_i / c) per image (0: plain mean)
    max_images: int = 16  # larger groups: this many images, evenly spaced
    tile: int = 160  # images above max_tiles_per_image tiles: the most structured tiles ...
    max_tiles_per_image: int = 4  # ... of this side, at most this many
    min_side: int = 32  # smallest usable LR side
    sigma_lr_range: tuple[float, float] = (0.18, 1.8)  # LR sigmas searched (below ~0.2: aliased)
    max_evaluations: int = 300  # Nelder-Mead budget
    calibrate: bool = True  # False: raw cross-scale sigmas (used to fit the calibration)
    calibration: tuple[tuple[float, float], tuple[float, float]] | None = None  # (group, single)
    # (a, b) pairs replacing CALIBRATION, e.g. after refitting with benchmarks/kernel_calibration.py
    min_signal_to_noise: float = 4.0  # structure energy / noise energy for an image to count
    # Fallback (see estimate_kernel): when the fixed Gaussian G(fallback_sigma) HR px explains the
    # cross-scale statistics within a relative loss gap of ``fallback_gap`` of the best fit (plus
    # ``fallback_gap_per_blockiness`` per unit of JPEG blockiness), the data cannot tell them apart
    # and the fixed Gaussian is returned; both 0 (the default) disable it. Off by default since the
    # refit of `python benchmarks/kernel_fallback_calibration.py --kernels 40` (noise 0-5/255 x JPEG
    # none/95/75/60 on the calibration crops, never tests/data/hr; results/kernel_fallback_calibration.json)
    # with the current estimator: a small gap means an estimate next to G(1.6), and there the estimate
    # was the closer of the two every time the rule could fire (the earlier 0.05 per unit of
    # blockiness, fitted on the estimator of commit 5753206, fired on the development photos in 15 of
    # 424 groups and returned the further kernel in 11; benchmarks/README.md, "The fixed-Gaussian
    # fallback, refitted"). The confidence still says how far to trust the estimate.
    fallback_sigma: float = 1.6
    fallback_gap: float = 0.0
    fallback_gap_per_blockiness: float = 0.0
    # Fit each image of a group alone as well (one image: each of its tiles, or its quadrants) and
    # report how well their blur directions agree (diagnostics["direction_agreement"] and
    # ["direction_check"] = "images" / "parts", see adassr.adapt.kernel.agreement); in group mode
    # their consensus gives the kernel's direction (``direction_from``). It about doubles the fit's
    # time. Skipped for an image with fewer than two structured parts, and for the fixed Gaussian
    # unless the consensus makes the estimate reported before the fallback.
    direction_check: bool = True
    # Group mode, with the direction check: "images" takes the direction the images' own fits agree on
    # (consensus_direction: each votes with its elongation) and refits the two axes' sigmas at that
    # direction; "fit" keeps the pooled fit's direction, which the images with the strongest edges
    # dominate. Chosen on benchmarks/data/dev_photos (benchmarks/README.md, "The direction the images
    # vote for"), checked on tests/data/hr.
    direction_from: str = "images"
    # Letterbox bars and frames added after capture (rows or columns of one colour along an image's
    # edges, up to MAX_BAR_SHARE of a side): their edges are sharp, made by the recorder and not by the
    # lens, and pulled a small image's estimate sharp and along the bar (benchmarks/README.md, "Letterbox
    # bars"). Such border rows and columns are left out, with ``bar_margin`` px more beyond them (a JPEG's
    # ringing around the bar's edge), where at least ``min_side`` remains. 0: nothing left out.
    bar_margin: int = 8
    # Burnt-in text (a timestamp, a camera name) and hot pixels, drawn after capture: pixels far sharper
    # and stronger than the tile's own structure in every direction are left out
    # (adassr.adapt.kernel.too_sharp; benchmarks/README.md, "Burnt-in text and hot pixels"). False:
    # nothing left out.
    leave_out_too_sharp: bool = True
    # A sensor's hot and dead pixels: single pixels that stand out of all their neighbours at the same
    # place in most frames of one size are left out of all of them (adassr.adapt.kernel.fixed_defects;
    # benchmarks/README.md, "Burnt-in text and hot pixels"). False: nothing left out.
    leave_out_fixed_defects: bool = True
    # Frames of one scene (a fixed camera's view again and again: adassr.adapt.kernel.scenes) count as one
    # image: the pooled fit weighs scenes equally, the direction vote has one voice per scene, and a group of
    # one scene is fitted and calibrated as a single image (benchmarks/README.md, "How many scenes a kernel
    # needs"). False: every frame counts as an image of its own.
    group_scenes: bool = True

    def __post_init__(self) -> None:
        if not self.pixel_snr >= 0:
            raise ConfigError(f"pixel_snr must be >= 0 (0 counts every pixel), got {self.pixel_snr}")
        if not 0.0 <= self.noise_share <= 1.0:
            raise ConfigError(f"noise_share must be in [0, 1] (0: off, 1: the whole expected noise share), "
                              f"got {self.noise_share}")
        if not 0.02 <= self.structure_fraction <= 1.0:
            raise ConfigError(f"structure_fraction must be in [0.02, 1], got {self.structure_fraction}")
        if self.n_directions < 3:
            raise ConfigError(f"n_directions must be >= 3, got {self.n_directions}")
        if self.anisotropy_weight < 0 or self.isotropy_prior < 0 or self.derivative_sigma < 0:
            raise ConfigError("anisotropy_weight, isotropy_prior and derivative_sigma must be >= 0")
        if tuple(self.orders) not in ((1, 2), (1, 3), (2, 3)):
            raise ConfigError(f"orders must be (1, 2), (1, 3) or (2, 3), got {self.orders}")
        if self.max_images < 1 or self.max_tiles_per_image < 1:
            raise ConfigError("max_images and max_tiles_per_image must be >= 1")
        if self.min_side < 16 or self.tile < self.min_side:
            raise ConfigError(f"need tile >= min_side >= 16, got tile={self.tile}, min_side={self.min_side}")
        lo, hi = self.sigma_lr_range
        if not 0 < lo < hi:
            raise ConfigError(f"sigma_lr_range must be (low, high) with 0 < low < high, got {self.sigma_lr_range}")
        if self.calibration is not None and (
                len(self.calibration) != 2 or any(len(p) != 2 or not p[0] > 0 for p in self.calibration)):
            raise ConfigError(f"calibration must be ((a, b), (a, b)) for (group, single) with a > 0, "
                              f"got {self.calibration}")
        if self.fallback_sigma <= 0 or self.fallback_gap < 0 or self.fallback_gap_per_blockiness < 0:
            raise ConfigError("fallback_sigma must be > 0 and the fallback gaps >= 0")
        if self.max_evaluations < 10:
            raise ConfigError(f"max_evaluations must be >= 10, got {self.max_evaluations}")
        if self.bar_margin < 0:
            raise ConfigError(f"bar_margin must be >= 0 (0: border bars are not left out), got {self.bar_margin}")
        if self.direction_from not in ("fit", "images"):
            raise ConfigError(f"direction_from must be 'fit' or 'images', got {self.direction_from!r}")


def _check_scale(scale: Any) -> int:
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 2:
        raise ConfigError(f"scale must be an integer >= 2, got {scale!r}")
    return int(scale)


def _luma(image: Any, index: int) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ImageError(f"image {index} is a {type(image).__name__}, expected a numpy array (HxW or HxWx3)")
    if not np.issubdtype(image.dtype, np.floating):
        levels = {np.dtype(np.uint8): " (divide 8-bit levels by 255)", np.dtype(np.uint16): " (divide 16-bit "
                  "levels by 65535)"}.get(image.dtype, "")
        raise ImageError(f"image {index} has dtype {image.dtype}; pass a float image in [0, 1]{levels}")
    if image.ndim == 3 and image.shape[2] in (3, 4):
        y = np.empty(image.shape[:2], np.float64)
        for r in range(0, image.shape[0], _ROWS):  # in bands: no float64 copy of all three channels
            y[r:r + _ROWS] = image[r:r + _ROWS, :, :3].astype(np.float64) @ _LUMA
    elif image.ndim == 3 and image.shape[2] == 1:
        y = image[..., 0].astype(np.float64)
    elif image.ndim == 2:
        y = image.astype(np.float64)
    else:
        raise ShapeError(f"image {index}", image.shape, "(H, W) or (H, W, 3), float in [0, 1]")
    if y.size == 0 or not np.all(np.isfinite(y)):
        raise ImageError(f"image {index} is empty or has NaN/inf values; pass finite float images in [0, 1]")
    if y.max() > 1.5 or y.min() < -0.5:
        raise ImageError(
            f"image {index} is not in [0, 1] (dtype {image.dtype}, range {y.min():.3g}..{y.max():.3g}); "
            "divide 8-bit levels by 255 and 16-bit ones by 65535"
        )
    return y


BAR_TOLERANCE = 2.0 / 255.0
"""How far a bar's pixels may lie from its colour (luma): a bar added digitally is one value; a frame's
rows of photo content always vary more than this along a whole row."""
MIN_BAR = 2
"""Rows (or columns) of one colour along an edge needed to call them a bar (one flat edge row is common)."""


MAX_BAR_SHARE = 0.4
"""The most of a side one bar may cover: letterbox and pillarbox bars cover 12-22 % a side (2.39:1, 4:3 or
1:1 pictures in 16:9 frames), 34 % for an upright 9:16 video in a 16:9 frame; a flat area larger than
this is part of the picture (a wall, a sky)."""


def _bar_depth(lines: np.ndarray) -> int:
    """How many of ``lines`` (rows from an image's edge inwards, as a 2-D array) are one bar: each within
    :data:`BAR_TOLERANCE` of the first line's median along its whole length, at least :data:`MIN_BAR` of
    them and at most :data:`MAX_BAR_SHARE` of all (else 0)."""
    if lines.shape[0] == 0:
        return 0
    colour = float(np.median(lines[0]))
    limit = int(MAX_BAR_SHARE * lines.shape[0])
    depth = 0
    for line in lines[: limit + 1]:
        if float(np.max(np.abs(line - colour))) > BAR_TOLERANCE:
            break
        depth += 1
    return depth if MIN_BAR <= depth <= limit else 0


def _whole_blocks(n: int, block: int = 8) -> int:
    return -(-n // block) * block


def without_border_bars(y: np.ndarray, config: KernelEstimationConfig) -> np.ndarray:
    """``y`` without letterbox or pillarbox bars along its edges and ``config.bar_margin`` px beyond them;
    ``y`` itself when it has none, or when less than ``config.min_side`` would remain. Looked for twice: a
    letterbox inside a pillarbox of another colour is one colour along its rows only once the columns are cut."""
    rows, cols = border_bar_window(y, config)
    return y if (rows, cols) == (slice(0, y.shape[0]), slice(0, y.shape[1])) else y[rows, cols]


def border_bar_window(y: np.ndarray, config: KernelEstimationConfig) -> Window:
    """The rows and columns of ``y`` that :func:`without_border_bars` keeps (all of them where it keeps ``y``)."""
    r0, r1, c0, c1 = 0, y.shape[0], 0, y.shape[1]
    for _ in range(2):
        cut = _cut_bars(y[r0:r1, c0:c1], config)
        if cut is None:
            break
        rows, cols = cut
        r0, r1, c0, c1 = r0 + rows.start, r0 + rows.stop, c0 + cols.start, c0 + cols.stop
    return slice(r0, r1), slice(c0, c1)


def _cut_bars(y: np.ndarray, config: KernelEstimationConfig) -> Window | None:
    """The window of ``y`` without the bars along its edges (and the margin), or None: none, or too little
    would remain."""
    h, w = y.shape
    top, bottom = _bar_depth(y), _bar_depth(y[::-1])
    left, right = _bar_depth(y.T), _bar_depth(y.T[::-1])
    if not (top or bottom or left or right):
        return None
    m = config.bar_margin
    # the top and left cuts are rounded up to whole 8x8 blocks: jpeg_blockiness reads the JPEG block grid
    r0, r1 = (_whole_blocks(top + m) if top else 0), h - (bottom + m if bottom else 0)
    c0, c1 = (_whole_blocks(left + m) if left else 0), w - (right + m if right else 0)
    if min(r1 - r0, c1 - c0) < config.min_side:
        return None
    return slice(r0, r1), slice(c0, c1)


def _tiles(y: np.ndarray, config: KernelEstimationConfig) -> list[Window]:
    """The image itself, or its most structured ``tile``-sized windows when it is larger (a side
    shorter than ``tile`` is kept whole: a long, thin strip gives windows of its width, so the fit's
    time stays bounded by ``max_tiles_per_image`` windows whatever the image's length)."""
    h, w = y.shape
    t = config.tile
    if h * w <= t * t * config.max_tiles_per_image:
        return [(slice(0, h), slice(0, w))]
    th, tw = min(t, h), min(t, w)
    cands: list[tuple[float, int, int]] = []
    for r in range(0, h - th + 1, th):  # one band of tiles at a time: the same values, a band's memory
        top, bottom = max(r - 1, 0), min(r + th + 1, h)  # one row of context each side for the 3x3 Sobel
        band = y[top:bottom]
        gx = cv2.Sobel(band, cv2.CV_64F, 1, 0)
        gy = cv2.Sobel(band, cv2.CV_64F, 0, 1)
        energy = (gx * gx + gy * gy)[r - top:r - top + th]
        cands.extend((float(np.median(energy[:, c:c + tw])), r, c) for c in range(0, w - tw + 1, tw))
    cands.sort(key=lambda item: -item[0])
    return [(slice(r, r + th), slice(c, c + tw)) for _, r, c in cands[:config.max_tiles_per_image]]


def jpeg_blockiness(y: np.ndarray, block: int = 8) -> float:
    """How much stronger luma steps are across the 8x8 JPEG block grid than inside blocks.

    ``mean |step| on grid boundaries / mean |step| elsewhere - 1`` over rows and columns (grid
    aligned to the image origin, as a camera's JPEG is): about 0 for an uncompressed image,
    growing as quantisation gets coarser. Images under 4 blocks per side give 0.
    """
    if min(y.shape) < 4 * block:
        return 0.0
    height, width = y.shape
    on_columns = (np.arange(width - 1) % block) == block - 1  # steps from column j to j + 1
    sums = np.zeros((2, 2))  # [across columns, across rows] x [on the grid, inside blocks]
    counts = np.zeros((2, 2))
    for r in range(0, height, _ROWS):  # in bands of rows: a band's memory, not the image's
        across = np.abs(np.diff(y[r:r + _ROWS], axis=1))
        sums[0] += across[:, on_columns].sum(), across[:, ~on_columns].sum()
        counts[0] += across.shape[0] * on_columns.sum(), across.shape[0] * (~on_columns).sum()
        down = np.abs(np.diff(y[r:r + _ROWS + 1], axis=0))  # steps from row i to i + 1, i = r, r + 1, ...
        on_rows = ((r + np.arange(down.shape[0])) % block) == block - 1
        sums[1] += down[on_rows].sum(), down[~on_rows].sum()
        counts[1] += on_rows.sum() * width, (~on_rows).sum() * width
    ratios = []
    for (on_sum, inside_sum), (on_n, inside_n) in zip(sums, counts, strict=True):
        inside = inside_sum / inside_n
        if inside <= 1e-6:
            continue
        ratios.append(float(on_sum / on_n) / inside - 1.0)
    return max(0.0, float(np.mean(ratios))) if ratios else 0.0


def _select_images(n: int, max_images: int) -> list[int]:
    if n <= max_images:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, max_images)})


def _cov_from_log(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Covariance ``expm(S)``, ``S = [[v0, v2], [v2, v1]]``, eigen-sigmas clipped to [lo, hi]."""
    s = np.array([[v[0], v[2]], [v[2], v[1]]])
    w, u = np.linalg.eigh(s)
    w = np.clip(w, 2.0 * math.log(lo), 2.0 * math.log(hi))
    return (u * np.exp(w)) @ u.T


def _calibration(scale: int, mode: str) -> tuple[float, float]:
    return CALIBRATION.get(scale, CALIBRATION[_FALLBACK_SCALE])[mode]


def estimate_kernel(
    images: Sequence[np.ndarray],
    *,
    scale: int = 4,
    config: KernelEstimationConfig = KernelEstimationConfig(),
) -> KernelEstimate:
    """Estimate one anisotropic Gaussian blur kernel (HR pixels) from LR images of one camera.

    ``images``: LR float images in [0, 1], ``HxW`` or ``HxWx3`` (RGB; the luma is used). Several
    usable images are pooled into one kernel (group mode: the mean of the per-image losses, each
    image weighted equally); one usable image (one given, or the others skipped as flat) is
    single-image mode, calibrated as such. ``scale``: the SR factor the kernel is for.

    Returns a :class:`KernelEstimate` with ``method="cross-scale-derivative-energy"``, or the
    bicubic kernel with ``method="fallback-bicubic"`` and ``confidence=0`` when no image carries
    structure above its noise (flat images; the reason is in ``diagnostics["reason"]``).
    ``confidence``: the modelled probability that the estimate is closer to the true kernel than the
    fixed G(1.6) (:func:`adassr.adapt.kernel.confidence.kernel_confidence`, from the diagnostics: the
    scenes, JPEG blockiness, noise, direction agreement, loss gap, residual and the estimate's distance
    from G(1.6)); 0 where G(1.6) itself is returned (only with the fixed-Gaussian check switched on:
    ``fallback_gap`` / ``fallback_gap_per_blockiness``, both 0 by default). Raises :class:`ConfigError`,
    :class:`ImageError` or :class:`ShapeError` on malformed input.
    """
    t0 = time.perf_counter()
    if isinstance(images, np.ndarray):
        raise ConfigError("images must be a sequence of arrays, not one array: pass [image]")
    scale = _check_scale(scale)
    images = list(images)
    chosen = _select_images(len(images), config.max_images)
    frames = _checked_frames(images, config, chosen)
    lumas = _cut_lumas(frames, config)
    spec = FeatureSpec(derivative_sigma=config.derivative_sigma, orders=config.orders,
                       n_directions=config.n_directions, anisotropy_weight=config.anisotropy_weight)
    usable = _usable_tiles(lumas, chosen, spec, config)
    used_lumas = [lumas[i] for i in usable.used]
    scenes = _scene_labels(frames, usable.used) if config.group_scenes else list(range(len(used_lumas)))
    n_scenes = len(set(scenes))
    # the scenes actually fitted: a group whose other images were all flat, or whose frames all show one
    # scene, is fitted (and calibrated) as the one image it is
    mode = "group" if n_scenes > 1 else "single"
    diag: dict[str, Any] = {
        "mode": mode,
        "n_images": len(images),
        "images_used": usable.used,
        "images_skipped_flat": usable.skipped,
        "images_skipped_faint": usable.skipped_faint,
        "faint_structure_only": usable.all_faint,
        "n_scenes": n_scenes,
    }
    if n_scenes < len(scenes):
        diag["scene_of_image"] = scenes  # in the order of images_used
    if not usable.per_image:
        return _bicubic_fallback(scale, diag, t0)
    samples = _Samples(usable.per_image, usable.noise, used_lumas, spec, scenes)
    return _cross_scale_estimate(samples, config, scale=scale, mode=mode, diag=diag, t0=t0)


def _scene_labels(frames: Mapping[int, tuple[np.ndarray, Window]], used: Sequence[int]) -> list[int]:
    """The scene of each ``used`` image (:func:`adassr.adapt.kernel.scenes.scene_labels`), its frames compared
    whole, over the content both keep inside their border bars: frames of one size are compared even where
    JPEG made their bars' cuts differ, and shared bars do not make different views alike. The bars are looked
    for also where ``config.bar_margin`` is 0 (the fit keeps them; the comparison cuts them without a margin).
    ``frames``: :func:`_checked_frames`'s whole lumas and bar windows."""
    return labels_of([summarise(*frames[i]) for i in used])


@dataclass(frozen=True)
class _Samples:
    """What the fit reads: the informative tiles of each usable image, the noise sigma of each
    usable image, the usable images' luma, the feature definition, and the scene of each usable image
    (labels 0, 1, ...: :func:`adassr.adapt.kernel.scenes.scene_labels`)."""

    per_image: list[list[CrossScaleSample]]
    noise: list[float]
    lumas: list[np.ndarray]
    spec: FeatureSpec
    scenes: list[int]

    @property
    def n_scenes(self) -> int:
        return len(set(self.scenes))

    @property
    def weights(self) -> list[float]:
        """Each image's weight in the pooled loss: every scene weighs the same, shared by its frames."""
        counts = {label: self.scenes.count(label) for label in set(self.scenes)}
        return [1.0 / (len(counts) * counts[label]) for label in self.scenes]

    def scene_median(self, values: Sequence[float]) -> float:
        """The median over the scenes of each scene's median of ``values`` (one per usable image): a scene
        counts once, whatever its number of frames."""
        return float(np.median([np.median([v for v, label in zip(values, self.scenes, strict=True) if label == scene])
                                for scene in range(self.n_scenes)]))

    @property
    def per_scene(self) -> list[list[CrossScaleSample]]:
        """The tiles of each scene's frames, together, in the order of the labels."""
        return [[t for tiles, label in zip(self.per_image, self.scenes, strict=True) if label == scene
                 for t in tiles] for scene in range(self.n_scenes)]

    @property
    def n_pixels(self) -> int:
        return int(sum(t.n_pixels for tiles in self.per_image for t in tiles))

    @property
    def n_too_sharp(self) -> int:
        return int(sum(t.n_too_sharp for tiles in self.per_image for t in tiles))

    @property
    def n_fixed_defects(self) -> int:
        return int(sum(t.n_fixed_defects for tiles in self.per_image for t in tiles))

    @property
    def n_tiles(self) -> int:
        return sum(len(tiles) for tiles in self.per_image)


@dataclass(frozen=True)
class _CrossScaleFit:
    """The optimum of the cross-scale loss, in raw (uncalibrated) LR pixels."""

    raw_major: float  # sigma along the major axis
    raw_minor: float
    theta: float  # radians, direction of the major axis
    best_loss: float  # the loss at the optimum
    evaluations: int  # loss evaluations (grid + Nelder-Mead)
    loss: Callable[[np.ndarray], float]  # of the log-covariance vector [log var_x, log var_y, cov term]


@dataclass(frozen=True)
class _FixedGaussianCheck:
    """How much worse the fixed Gaussian ``G(fallback_sigma)`` fits than the optimum, and how much
    worse it may fit and still be used (see :class:`KernelEstimationConfig`)."""

    gap: float  # relative loss gap: (loss_fixed - best) / best, >= 0
    allowed_gap: float  # fallback_gap + fallback_gap_per_blockiness * blockiness
    blockiness: float  # median JPEG blockiness of the usable images

    @property
    def use_fixed(self) -> bool:
        """True when the data cannot tell the fixed Gaussian from the estimate."""
        return self.allowed_gap > 0 and self.gap <= self.allowed_gap


def _cross_scale_estimate(samples: _Samples, config: KernelEstimationConfig, *, scale: int, mode: str,
                          diag: dict[str, Any], t0: float) -> KernelEstimate:
    """Fit the kernel to ``samples``, calibrate it to HR pixels and return it, or the fixed Gaussian
    when that fits as well (:attr:`_FixedGaussianCheck.use_fixed`); ``diag`` (the caller's
    diagnostics, updated in place) becomes the estimate's diagnostics."""
    fit = _fit_covariance(samples.per_image, config, weights=samples.weights, robust=samples.n_scenes > 1)
    a, b = _calibration_of(config, scale, mode)
    blockiness = samples.scene_median([jpeg_blockiness(y) for y in samples.lumas])
    check = _check_fixed_gaussian(fit, (a, b), blockiness, config, scale)
    group = samples.n_scenes > 1
    # With the fixed Gaussian returned, the direction still makes the estimate reported before the fallback.
    if config.direction_check and (not check.use_fixed or (group and config.direction_from == "images")):
        if group:
            directions, fits = _per_scene_directions(samples, config)
            diag.update(directions)
            consensus = consensus_direction([(f.raw_major, f.raw_minor, f.theta) for f in fits])
            if config.direction_from == "images" and consensus is not None:
                diag["pooled_fit_theta_deg"] = math.degrees(fit.theta)
                fit = _refit_at_direction(fit, consensus, config)
                # the fallback and the confidence judge the kernel returned, whose loss is the refit's
                check = _check_fixed_gaussian(fit, (a, b), blockiness, config, scale)
        else:
            diag.update(_per_part_directions(samples, config))
    if check.use_fixed:  # a round kernel has no direction to trust or doubt
        diag.pop("direction_agreement", None)
        diag.pop("direction_check", None)
    residual = math.sqrt(fit.best_loss / samples.spec.size)
    sx, sy = _calibrated_sigmas(fit, (a, b), scale)
    diag.update({
        "fixed_gaussian_sigma": config.fallback_sigma,
        "fixed_gaussian_loss_gap": check.gap,
        "fallback_gap_allowed": check.allowed_gap,
        "jpeg_blockiness": check.blockiness,
        "estimate_before_fallback": {"sigma_x": sx, "sigma_y": sy, "theta_deg": math.degrees(fit.theta)},
        "raw_sigma_lr": [fit.raw_major, fit.raw_minor],
        "calibration": [a, b],
        "residual_rms": residual,
        "n_pixels": samples.n_pixels,
        "n_pixels_too_sharp": samples.n_too_sharp,  # left out as drawn after capture (too_sharp.py)
        "n_pixels_fixed_defects": samples.n_fixed_defects,  # left out around a sensor's defects (fixed_defects.py)
        "n_tiles": samples.n_tiles,
        "noise_sigma": samples.scene_median(samples.noise),
        "noise_sigma_subtracted": _subtracted_sigma(samples.noise, config.noise_share),
        "evaluations": fit.evaluations,
        "wall_time_s": time.perf_counter() - t0,
    })
    theta, method = fit.theta, METHOD_CROSS_SCALE
    # 0 where the fixed Gaussian is returned (the same rule, read from diag): G(1.6) is never closer than itself
    confidence = kernel_confidence(diag, scale)
    if check.use_fixed:
        diag["reason"] = _fixed_gaussian_reason(config.fallback_sigma, check)
        sx = sy = float(config.fallback_sigma)
        theta, method = 0.0, METHOD_FIXED_GAUSSIAN
    kernel = gaussian_kernel(sx, sy, theta, scale=scale, size=kernel_size(sx, scale))
    return KernelEstimate(sx, sy, theta, scale, kernel, method, confidence, diag)


def _check_fixed_gaussian(fit: _CrossScaleFit, calibration: tuple[float, float], blockiness: float,
                          config: KernelEstimationConfig, scale: int) -> _FixedGaussianCheck:
    """Evaluate the loss at the fixed Gaussian's raw LR sigma (``calibration`` ``(a, b)`` applied,
    clipped to ``sigma_lr_range``) against ``fit``'s; ``blockiness``: the images' median JPEG blockiness."""
    a, b = calibration
    lo, hi = config.sigma_lr_range
    raw_fixed = float(np.clip(a * config.fallback_sigma / scale + b, lo, hi))
    loss_fixed = fit.loss(np.array([2.0 * math.log(raw_fixed), 2.0 * math.log(raw_fixed), 0.0]))
    best_loss = min(fit.best_loss, loss_fixed)
    gap = (loss_fixed - best_loss) / max(best_loss, 1e-12)
    allowed_gap = config.fallback_gap + config.fallback_gap_per_blockiness * blockiness
    return _FixedGaussianCheck(gap, allowed_gap, blockiness)


def _calibrated_sigmas(fit: _CrossScaleFit, calibration: tuple[float, float], scale: int) -> tuple[float, float]:
    """``(sigma_major, sigma_minor)`` in HR pixels: ``(raw - b) / a``, each at least ``_MIN_HR_SIGMA``."""
    a, b = calibration
    floor = _MIN_HR_SIGMA / scale
    sx = max((fit.raw_major - b) / a, floor) * scale
    sy = max((fit.raw_minor - b) / a, floor) * scale
    return (sy, sx) if sy > sx else (sx, sy)


def _fixed_gaussian_reason(sigma: float, check: _FixedGaussianCheck) -> str:
    """The diagnostics' ``reason`` when the fixed Gaussian is returned."""
    return (
        f"the fixed Gaussian G({sigma:g}) fits the cross-scale statistics within "
        f"{100 * check.gap:.1f} % of the best estimate (allowed {100 * check.allowed_gap:.1f} % at JPEG "
        f"blockiness {check.blockiness:.2f}): the images cannot tell them apart, so the fixed Gaussian is used")


def _checked_lumas(images: Sequence[np.ndarray], config: KernelEstimationConfig,
                   chosen: Sequence[int]) -> dict[int, np.ndarray]:
    """The luma of the ``chosen`` images, by index, without their border bars where ``config.bar_margin``
    is set; every image is checked (``ConfigError`` / ``ShapeError`` / ``ImageError`` for no images, bad
    ones or too small ones), but only the chosen ones keep their float64 luma (a group of 64 images kept 8
    bytes a pixel of each, 16 of them used)."""
    return _cut_lumas(_checked_frames(images, config, chosen), config)


def _checked_frames(images: Sequence[np.ndarray], config: KernelEstimationConfig,
                    chosen: Sequence[int]) -> dict[int, tuple[np.ndarray, Window]]:
    """The whole luma of each ``chosen`` image and the window inside its border bars
    (:func:`border_bar_window`), by index, every image checked as :func:`_checked_lumas` says: the fit
    reads the window (:func:`_cut_lumas`), the scene comparison the whole frame with it."""
    if not images:
        raise ConfigError("no images given to estimate_kernel: pass at least one LR image")
    keep = set(chosen)
    frames: dict[int, tuple[np.ndarray, Window]] = {}
    for i, img in enumerate(images):
        y = _luma(img, i)
        if min(y.shape) < config.min_side:
            raise ShapeError(f"image {i}", y.shape, f"at least {config.min_side}x{config.min_side} LR pixels")
        if i in keep:
            frames[i] = (y, border_bar_window(y, config))
    return frames


def _cut_lumas(frames: Mapping[int, tuple[np.ndarray, Window]],
               config: KernelEstimationConfig) -> dict[int, np.ndarray]:
    """The lumas the fit reads: each frame inside its bar window where ``config.bar_margin`` is set, else whole."""
    return {i: (y[window] if config.bar_margin else y) for i, (y, window) in frames.items()}


@dataclass(frozen=True)
class _UsableTiles:
    """What :func:`_usable_tiles` found: the tiles each usable image contributes, the images skipped
    (no informative tile, or only faint ones beside others' clear structure), and whether every
    tile used is faint (:attr:`CrossScaleSample.faint`)."""

    per_image: list[list[CrossScaleSample]]
    used: list[int]  # image indices, in the order of per_image
    skipped: list[int]  # sorted
    skipped_faint: list[int]  # the skipped images whose informative tiles were all faint
    noise: list[float]  # noise sigma per usable image
    all_faint: bool


def _prefer_clear(tiles: Sequence[CrossScaleSample]) -> list[CrossScaleSample]:
    """The tiles that are not faint, when there are any; else all of them."""
    clear = [t for t in tiles if not t.faint]
    return clear if clear else list(tiles)


def _usable_tiles(
    lumas: Mapping[int, np.ndarray], chosen: Sequence[int], spec: FeatureSpec, config: KernelEstimationConfig
) -> _UsableTiles:
    """The informative tiles of each chosen image, with a preference: when any tile of the group has
    clear structure, faint tiles are left out and an image with only faint ones is skipped (a flat
    noisy frame after JPEG would otherwise be fitted and, as the group's smallest noise estimate, cut
    the noise subtracted from every photo); when every informative tile is faint (a dim, densely
    textured group, or flat frames only), they are all used, as nothing clearer exists.

    With ``config.noise_share`` > 0 the tiles subtract the noise share at :func:`_subtracted_sigma`."""
    informative: dict[int, list[CrossScaleSample]] = {}
    skipped: list[int] = []
    defects = fixed_defects({i: lumas[i] for i in chosen}) if config.leave_out_fixed_defects else {}
    for i in chosen:
        mask = defects.get(i)
        samples = [CrossScaleSample(lumas[i][window], spec, config.structure_fraction, config.pixel_snr,
                                    leave_out_too_sharp=config.leave_out_too_sharp,
                                    left_out=None if mask is None else mask[window])
                   for window in _tiles(lumas[i], config)]
        good = [s for s in samples if s.informative(config.min_signal_to_noise)]
        if good:
            informative[i] = good
        else:
            skipped.append(i)
    any_clear = any(not s.faint for good in informative.values() for s in good)
    skipped_faint = [i for i, good in informative.items() if any_clear and all(s.faint for s in good)]
    used = [i for i in informative if i not in skipped_faint]
    per_image = [_prefer_clear(informative[i]) for i in used]
    noise = [float(np.median([s.noise_sigma for s in tiles])) for tiles in per_image]
    if config.noise_share > 0 and per_image:
        sigma = _subtracted_sigma(noise, config.noise_share)
        per_image = [[s.subtracting(sigma) for s in tiles] for tiles in per_image]
    return _UsableTiles(per_image, used, sorted(skipped + skipped_faint), skipped_faint, noise,
                        all_faint=bool(per_image) and not any_clear)


def _subtracted_sigma(noise: Sequence[float], share: float) -> float:
    """The noise sigma whose derivative energies are subtracted: ``sqrt(share)`` times the smallest
    per-image estimate. A camera group's images share one noise level, and dense texture inflates
    an image's estimate (it reads as noise), so the smallest one is the least inflated; it errs
    towards subtracting too little, never too much."""
    return math.sqrt(share) * float(min(noise))


def _bicubic_fallback(scale: int, diag: dict[str, Any], t0: float) -> KernelEstimate:
    fallback = bicubic_kernel_estimate(
        scale, reason="no image has structure above its noise (flat or pure-noise images carry no "
                      "blur information); using the bicubic kernel, as --kernel bicubic would")
    diag.update(fallback.diagnostics)
    diag["wall_time_s"] = time.perf_counter() - t0
    return KernelEstimate(fallback.sigma_x, fallback.sigma_y, fallback.theta, scale,
                          fallback.kernel, fallback.method, 0.0, diag)


def _fit_covariance(per_image: list[list[CrossScaleSample]], config: KernelEstimationConfig, *,
                    weights: Sequence[float] | None = None, robust: bool | None = None) -> _CrossScaleFit:
    """Minimise the (robust, group-mode) cross-scale mismatch over log-covariances: a coarse isotropic
    grid, then Nelder-Mead; the optimum's eigen-sigmas are clipped to ``sigma_lr_range``. ``weights``:
    of each image's loss (default: equal), summing to 1; ``robust`` (default: more than one image):
    whether ``config.robust_scale`` applies."""
    lo, hi = config.sigma_lr_range
    c = config.robust_scale if (len(per_image) > 1 if robust is None else robust) else 0.0
    w = np.full(len(per_image), 1.0 / len(per_image)) if weights is None else np.asarray(weights, dtype=np.float64)

    def image_loss(tiles: list[CrossScaleSample], cov: np.ndarray) -> float:
        return float(np.mean([float(d @ d) for d in (t.mismatch(cov) for t in tiles)]))

    def loss(v: np.ndarray) -> float:
        cov = _cov_from_log(v, lo, hi)
        losses = np.array([image_loss(tiles, cov) for tiles in per_image])
        total = float(w @ (c * np.log1p(losses / c) if c > 0 else losses))
        if config.isotropy_prior > 0:
            ev = np.linalg.eigvalsh(cov)
            total += config.isotropy_prior * (0.5 * math.log(ev[1] / ev[0])) ** 2
        return total

    grid = np.linspace(math.log(lo), math.log(hi), 16)
    iso = [loss(np.array([2.0 * g, 2.0 * g, 0.0])) for g in grid]
    g0 = grid[int(np.argmin(iso))]
    x0 = np.array([2.0 * g0, 2.0 * g0, 0.0])
    simplex = np.array([x0, x0 + [0.4, -0.4, 0.0], x0 + [0.0, 0.0, 0.4], x0 + [0.3, 0.3, 0.0]])
    res = minimize(loss, x0, method="Nelder-Mead",
                   options={"initial_simplex": simplex, "xatol": 1e-3, "fatol": 1e-7,
                            "maxfev": config.max_evaluations})
    raw_major, raw_minor, theta = params_from_covariance(_cov_from_log(res.x, lo, hi))
    return _CrossScaleFit(raw_major, raw_minor, theta, float(res.fun), int(res.nfev) + len(grid), loss)


def _refit_at_direction(fit: _CrossScaleFit, theta: float, config: KernelEstimationConfig) -> _CrossScaleFit:
    """The two axes' sigmas that minimise ``fit.loss`` with the major axis at ``theta`` (radians),
    from the pooled fit's sigmas: Nelder-Mead over the log variance along ``theta`` and ``w``, the
    variance across being ``w^2`` less in log, so the axis along ``theta`` is never the shorter one
    (where the loss wants the other axis longer, the kernel comes out round, not turned by 90 deg);
    sigmas clipped to ``sigma_lr_range``."""
    lo, hi = config.sigma_lr_range
    c, s = math.cos(theta), math.sin(theta)

    def log_cov(p: np.ndarray) -> np.ndarray:  # [log var along, w] -> [S00, S11, S01]
        along, across = p[0], p[0] - p[1] * p[1]
        return np.array([along * c * c + across * s * s, along * s * s + across * c * c, (along - across) * c * s])

    p0 = np.array([2.0 * math.log(fit.raw_major), math.sqrt(max(2.0 * math.log(fit.raw_major / fit.raw_minor), 0.0))])
    res = minimize(lambda p: fit.loss(log_cov(p)), p0, method="Nelder-Mead",
                   options={"initial_simplex": np.array([p0, p0 + [0.3, 0.0], p0 + [0.0, 0.3]]),
                            "xatol": 1e-3, "fatol": 1e-7, "maxfev": config.max_evaluations})
    along, w = float(res.x[0]), float(res.x[1])
    major = float(np.clip(math.exp(along / 2.0), lo, hi))
    minor = float(np.clip(math.exp((along - w * w) / 2.0), lo, hi))
    return _CrossScaleFit(major, minor, theta, float(res.fun), fit.evaluations + int(res.nfev), fit.loss)


def _per_scene_directions(samples: _Samples,
                          config: KernelEstimationConfig) -> tuple[dict[str, Any], list[_CrossScaleFit]]:
    """Each scene fitted alone (its frames' tiles together): its direction (degrees) and raw axis ratio,
    and their agreement; and the fits. Where every image is a scene of its own the keys are
    ``per_image_*``, in the order of the diagnostics' ``images_used``, else ``per_scene_*``, in the order
    of the labels of ``scene_of_image``."""
    if samples.n_scenes == len(samples.per_image):
        return _direction_fits(samples.per_image, config, check="images", key="per_image")
    return _direction_fits(samples.per_scene, config, check="images", key="per_scene")


def _direction_fits(items: list[list[CrossScaleSample]], config: KernelEstimationConfig, *, check: str,
                    key: str) -> tuple[dict[str, Any], list[_CrossScaleFit]]:
    """Fit each item (an image's tiles, or one part) alone: ``direction_check``, the agreement of
    their directions and ``<key>_theta_deg`` / ``<key>_axis_ratio`` in ``items``' order; and the fits."""
    fits = [_fit_covariance([tiles], config) for tiles in items]
    return {
        "direction_check": check,
        "direction_agreement": direction_agreement([(f.raw_major, f.raw_minor, f.theta) for f in fits]),
        f"{key}_theta_deg": [math.degrees(f.theta) for f in fits],
        f"{key}_axis_ratio": [f.raw_major / f.raw_minor for f in fits],
    }, fits


PART_MIN_SIDE = 64
"""Smallest side (LR pixels) of a quadrant in the single-image direction check."""


def _image_parts(samples: _Samples, config: KernelEstimationConfig) -> list[CrossScaleSample]:
    """The parts of a single image that the direction check fits one by one: its tiles when the fit
    used several, else its quadrants (each at least :data:`PART_MIN_SIDE` per side), informative
    ones only, with the same noise share subtracted as the whole image's fit."""
    tiles = samples.per_image[0]
    if len(tiles) > 1:
        return tiles
    y = samples.lumas[0]
    h, w = y.shape
    if min(h, w) < 2 * PART_MIN_SIDE:
        return []
    quads = [y[r:r + h // 2, c:c + w // 2] for r in (0, h // 2) for c in (0, w // 2)]
    parts = [CrossScaleSample(q, samples.spec, config.structure_fraction, config.pixel_snr,
                              leave_out_too_sharp=config.leave_out_too_sharp) for q in quads]
    parts = _prefer_clear([part for part in parts if part.informative(config.min_signal_to_noise)])
    if config.noise_share > 0:
        sigma = _subtracted_sigma(samples.noise, config.noise_share)
        parts = [part.subtracting(sigma) for part in parts]
    return parts


def _per_part_directions(samples: _Samples, config: KernelEstimationConfig) -> dict[str, Any]:
    """Single-image mode: the image's tiles (or quadrants) fitted one by one, their directions and
    agreement (``direction_check: "parts"``); nothing when fewer than two parts carry structure."""
    parts = _image_parts(samples, config)
    if len(parts) < 2:
        return {}
    return _direction_fits([[part] for part in parts], config, check="parts", key="per_part")[0]


def _calibration_of(config: KernelEstimationConfig, scale: int, mode: str) -> tuple[float, float]:
    """``(a, b)`` of the linear calibration ``raw = a * true + b`` (identity when disabled)."""
    if not config.calibrate:
        return 1.0, 0.0
    if config.calibration is not None:
        return config.calibration[0 if mode == "group" else 1]
    return _calibration(scale, mode)
