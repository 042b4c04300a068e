"""Internal training pairs (y_rd, y_r) with augmentations (paper §III-B, §III-C3, §IV-A1).

The target is a crop of the group's own LR image y_r; the input y_rd is that crop blurred with the
estimated kernel k_e and downsampled by the backbone scale s. Augmentations: see
:mod:`adassr.adapt.augment` for what each op does and where it acts.

Degradation convention: :func:`adassr.adapt.degradation.blur_downsample` (reused, on the crop only)::

    y_rd[i, j] = (y_r * k)(s*i + (s-1)/2, s*j + (s-1)/2)

a true convolution with k, centred at ((kh-1)/2, (kw-1)/2), sampled at the centre of the s x s
block of HR pixels s*i .. s*i+s-1 that LR pixel i covers. This is the pixel-centre convention of
cv2.resize / bicubic downsampling that the pretrained backbone was trained on (an s x s box kernel
reproduces cv2.INTER_AREA exactly), so fine-tuning on the pairs does not teach the network a
sub-pixel shift; plain ``blur then x[::s, ::s]`` with a centred odd kernel would put the LR pixel
at HR s*i, a (s-1)/2-pixel (1.5 px at x4) shift. ``blur_downsample`` needs kernel sides with the
parity of s (estimated kernels have it). Extension here: a kernel of the other parity (e.g. an odd
kernel at x4) is shifted by half a pixel with linear interpolation (convolved with [0.5, 0.5]
along that axis, adding variance 1/4 px^2). Consequences pinned by the tests: a 1x1 delta gives
y_rd = y_r[1::3, 1::3] at x3 and the mean of y_r[4i+1:4i+3, 4j+1:4j+3] at x4.

Sampling: an image is picked with probability proportional to its area (``image_choice="uniform"``
picks images uniformly), then the crop position uniformly. Pixels are then about equally likely to
be trained on, not exactly: those near an image's border lie in fewer crops, and an image barely
larger than a crop has few positions, each drawn often.
Only the crop (target patch plus blur margin, or the affine footprint) is read and degraded.
Deviation for small images: when a zoomed-out affine draw (scale down to 0.5 doubles the
footprint) cannot fit an image, that image's lower scale bound is raised to the smallest scale
that fits; images large enough draw the scale exactly uniformly from ``affine_scale``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from adassr.adapt.augment import (
    DIHEDRAL_COUNT,
    NOISE_NONE,
    PHOTOMETRIC_OPS,
    AffineParams,
    NoiseParams,
    UsmParams,
    add_noise,
    affine_margin,
    apply_photometric,
    dihedral,
    max_inverse_row_sums,
    noise_kind,
    unsharp_mask,
    warp_affine_crop,
)
from adassr.adapt.degradation import blur_downsample
from adassr.runtime.errors import ConfigError, ImageError, ShapeError
from adassr.runtime.fields import check_field_types

# Kernel size assumed by :func:`validate_images` when the kernel is not known yet.
DEFAULT_KERNEL_SIZE = 21
_AFFINE_SAFETY = 1.01  # on the grid-evaluated worst-case footprint


@dataclass(frozen=True)
class PairConfig:
    """How internal pairs are cut and augmented. Probabilities are per sample.

    scale: backbone scale s. lr_patch: side of the y_rd patch (the y_r patch is lr_patch*scale).
    p_flip_rot: chance of a dihedral transform, drawn uniformly from all 8 (identity included).
    p_affine, affine_scale, affine_rotate_deg, affine_shear_deg: random affine (scale uniform in
    [0.5, 1] per §IV-A1; rotation and x-shear uniform in +-deg, our choice), with optional
    anti-aliasing when zooming out.
    p_gauss_noise / p_poisson_noise: exclusive choices per §IV-A1 (0.24 / 0.16), noise on y_rd
    only; gauss_sigma_range in [0, 1] units (1-10 / 255); poisson_scale_range multiplies
    Real-ESRGAN's Poisson(255 x)/255 noise (narrowed from Real-ESRGAN's 0.05-3 so its strength,
    about 11/255 at mid-grey for scale 1, matches the Gaussian range); p_gray_noise as Real-ESRGAN.
    p_photometric: chance of RandAugment-style ops on input and target alike; 1..photometric_max_ops
    distinct ops from PHOTOMETRIC_OPS, each with a magnitude uniform in +-photometric_magnitude/10.
    p_usm, usm_sigma_range (LR pixels), usm_amount_range: unsharp masking of y_rd only.
    """

    scale: int = 4
    lr_patch: int = 32
    p_flip_rot: float = 1.0
    p_affine: float = 0.5
    affine_scale: tuple[float, float] = (0.5, 1.0)
    affine_rotate_deg: float = 10.0
    affine_shear_deg: float = 5.0
    affine_antialias: bool = True
    p_gauss_noise: float = 0.24
    p_poisson_noise: float = 0.16
    gauss_sigma_range: tuple[float, float] = (1.0 / 255.0, 10.0 / 255.0)
    poisson_scale_range: tuple[float, float] = (0.05, 1.0)
    p_gray_noise: float = 0.4
    p_photometric: float = 0.5
    photometric_max_ops: int = 2
    photometric_magnitude: float = 5.0
    p_usm: float = 0.3
    usm_sigma_range: tuple[float, float] = (0.5, 1.5)
    usm_amount_range: tuple[float, float] = (0.2, 0.8)
    image_choice: Literal["area", "uniform"] = "area"

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.scale < 1:
            raise ConfigError(f"scale must be an integer >= 1, got {self.scale!r}")
        if self.lr_patch < 1:
            raise ConfigError(f"lr_patch must be an integer >= 1, got {self.lr_patch!r}")
        for name in ("p_flip_rot", "p_affine", "p_gauss_noise", "p_poisson_noise",
                     "p_gray_noise", "p_photometric", "p_usm"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be a probability in [0, 1], got {value}")
        if self.p_gauss_noise + self.p_poisson_noise > 1.0:
            raise ConfigError("p_gauss_noise + p_poisson_noise must not exceed 1 (they are exclusive)")
        # upper bounds far above any useful value, which keep the sampler's work bounded (a USM sigma of
        # 1e6 px built a Gaussian of millions of taps per pair)
        for name, lo_bound, hi_bound in (("affine_scale", 1e-3, 4.0), ("gauss_sigma_range", 0.0, 1.0),
                                         ("poisson_scale_range", 0.0, 100.0), ("usm_sigma_range", 1e-3, 10.0),
                                         ("usm_amount_range", 0.0, 10.0)):
            lo, hi = getattr(self, name)
            if not lo_bound <= lo <= hi <= hi_bound:
                raise ConfigError(f"{name} must be (low, high) with {lo_bound} <= low <= high <= {hi_bound}, "
                                  f"got {(lo, hi)}")
        if not (0.0 <= self.affine_rotate_deg <= 45.0 and 0.0 <= self.affine_shear_deg <= 30.0):
            raise ConfigError("affine_rotate_deg must be in [0, 45] and affine_shear_deg in [0, 30]")
        if not 1 <= self.photometric_max_ops <= len(PHOTOMETRIC_OPS):
            raise ConfigError(f"photometric_max_ops must be in 1..{len(PHOTOMETRIC_OPS)}")
        if not 0.0 <= self.photometric_magnitude <= 10.0:
            raise ConfigError("photometric_magnitude must be in [0, 10] (RandAugment scale)")
        if self.image_choice not in ("area", "uniform"):
            raise ConfigError(f"image_choice must be 'area' or 'uniform', got {self.image_choice!r}")

    @property
    def hr_patch(self) -> int:
        """Side of the y_r (target) patch in pixels."""
        return self.lr_patch * self.scale

    def without_augmentation(self) -> PairConfig:
        """The same geometry with every augmentation switched off (plain crops)."""
        return PairConfig(scale=self.scale, lr_patch=self.lr_patch, p_flip_rot=0.0, p_affine=0.0,
                          p_gauss_noise=0.0, p_poisson_noise=0.0, p_photometric=0.0, p_usm=0.0,
                          image_choice=self.image_choice)


# --------------------------------------------------------------------------- kernel and geometry


def prepare_kernel(kernel: np.ndarray, scale: int) -> np.ndarray:
    """Validate a blur kernel and give it sides with the parity of ``scale`` (float32).

    Checks it is a finite 2-D array summing to 1 (within 1e-3; renormalised). Per axis whose size
    differs in parity from ``scale`` the kernel is shifted by half a pixel (convolved with
    [0.5, 0.5], one tap longer), so its centre lands on the sampling positions of
    :func:`adassr.adapt.degradation.blur_downsample`; conforming kernels (``gaussian_kernel(...,
    scale=s)``) are returned unchanged apart from the dtype.
    """
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim != 2 or min(k.shape) < 1:
        raise ShapeError("blur kernel", k.shape, "a 2-D array (kh, kw)")
    if not np.all(np.isfinite(k)):
        raise ConfigError("blur kernel has non-finite values; re-run kernel estimation")
    total = float(k.sum())
    if abs(total - 1.0) > 1e-3:
        raise ConfigError(f"blur kernel must sum to 1, sums to {total:.6f}; normalise it first")
    k = k / total
    if (k.shape[0] - scale) % 2:
        shifted = np.zeros((k.shape[0] + 1, k.shape[1]))
        shifted[:-1] += 0.5 * k
        shifted[1:] += 0.5 * k
        k = shifted
    if (k.shape[1] - scale) % 2:
        shifted = np.zeros((k.shape[0], k.shape[1] + 1))
        shifted[:, :-1] += 0.5 * k
        shifted[:, 1:] += 0.5 * k
        k = shifted
    return np.ascontiguousarray(k, dtype=np.float32)


@dataclass(frozen=True)
class PairGeometry:
    """Crop layout for one pair; sizes in target (y_r) pixels.

    A ``crop`` x ``crop`` region is cut (or warped) from y_r. The target is
    ``crop[margin:margin+hr_patch, margin:margin+hr_patch]`` and the input is
    ``blur_downsample(crop, kernel, scale)[o:o+lr_patch, o:o+lr_patch]`` with
    ``o = margin // scale``. ``margin`` is a multiple of ``scale`` covering the kernel's reach, so
    every kept input pixel sees real pixels only (no border extension).
    """

    scale: int
    lr_patch: int
    hr_patch: int
    margin: int
    crop: int

    @property
    def lr_offset(self) -> int:
        return self.margin // self.scale


def pair_geometry(config: PairConfig, prepared_shape: tuple[int, int]) -> PairGeometry:
    """Geometry for ``config`` and a prepared kernel of shape ``prepared_shape``."""
    s = config.scale
    reach = max(0, (prepared_shape[0] - s) // 2, (prepared_shape[1] - s) // 2)
    margin = -(-reach // s) * s
    return PairGeometry(scale=s, lr_patch=config.lr_patch, hr_patch=config.hr_patch,
                        margin=margin, crop=config.hr_patch + 2 * margin)


def _prepared_shape(kernel_shape: tuple[int, int], scale: int) -> tuple[int, int]:
    return tuple(n + ((n - scale) % 2) for n in kernel_shape)  # type: ignore[return-value]


def blur_downsample_crop(crop: np.ndarray, prepared: np.ndarray, geometry: PairGeometry) -> np.ndarray:
    """y_rd patch (lr_patch x lr_patch x 3) of a ``geometry.crop`` square crop of y_r.

    Uses :func:`adassr.adapt.degradation.blur_downsample` on the crop only (see :class:`PairGeometry`).
    """
    o, p = geometry.lr_offset, geometry.lr_patch
    out = blur_downsample(crop, prepared, geometry.scale)
    return np.ascontiguousarray(out[o : o + p, o : o + p])


# --------------------------------------------------------------------------- validation


def _min_side(config: PairConfig, prepared_shape: tuple[int, int], worst_row_sum: float) -> int:
    geometry = pair_geometry(config, prepared_shape)
    side = geometry.crop
    if config.p_affine > 0.0:
        margin = affine_margin(worst_row_sum * _AFFINE_SAFETY, config.affine_scale[1],
                               geometry.crop, config.affine_antialias)
        side = max(side, int(math.ceil(2.0 * margin + 1.0)))
    return side


def min_image_size(config: PairConfig, kernel_shape: tuple[int, int] = (DEFAULT_KERNEL_SIZE,) * 2) -> int:
    """Smallest image side (LR pixels, both height and width) the sampler accepts.

    The ``hr_patch`` target plus the blur margin of the kernel; with ``p_affine > 0`` also room
    for the largest rotation/shear at the upper affine scale.
    """
    worst = max_inverse_row_sums(config.affine_rotate_deg, config.affine_shear_deg)
    return _min_side(config, _prepared_shape(kernel_shape, config.scale), worst)


def _largest_fitting_patch(config: PairConfig, kernel_shape: tuple[int, int], side: int) -> int:
    best = 0
    for patch in range(1, config.lr_patch):
        trial = dataclasses.replace(config, lr_patch=patch)
        if min_image_size(trial, kernel_shape) <= side:
            best = patch
        else:
            break
    return best


def validate_images(
    images: Sequence[np.ndarray],
    config: PairConfig,
    *,
    kernel_shape: tuple[int, int] = (DEFAULT_KERNEL_SIZE,) * 2,
    names: Sequence[str] | None = None,
) -> None:
    """Check images are float HxWx3 in [0, 1] and large enough for ``config``.

    Raises ConfigError (no images, or an image smaller than :func:`min_image_size`, naming the
    minimum and the largest patch that would fit), ShapeError or ImageError.
    """
    if len(images) == 0:
        raise ConfigError("no images to cut training pairs from; give at least one LR image")
    minimum = min_image_size(config, kernel_shape)
    for index, raw in enumerate(images):
        image = np.asarray(raw)
        label = names[index] if names is not None else f"image {index}"
        if image.ndim != 3 or image.shape[2] != 3:
            raise ShapeError(label, image.shape, "(H, W, 3) RGB")
        if not np.issubdtype(image.dtype, np.floating):
            raise ImageError(f"{label} has dtype {image.dtype}; convert to float32 in [0, 1] (divide 8-bit by 255)")
        if not np.isfinite(image).all():
            raise ImageError(f"{label} contains NaN or infinite values; give a finite image in [0, 1] "
                             "(a float file with missing data, or an upstream step that diverged)")
        lo, hi = float(np.min(image)), float(np.max(image))
        if lo < -1e-6 or hi > 1.0 + 1e-6:
            raise ImageError(f"{label} has values in [{lo}, {hi}]; expected [0, 1] (divide 8-bit by 255)")
        height, width = image.shape[:2]
        if min(height, width) < minimum:
            fits = _largest_fitting_patch(config, kernel_shape, min(height, width))
            hint = f"use lr_patch <= {fits}" if fits else "no patch size fits"
            raise ConfigError(
                f"{label} is {width}x{height} px, too small for scale {config.scale} and lr_patch "
                f"{config.lr_patch}: each side must be at least {minimum} LR pixels (a "
                f"{config.hr_patch}-px target patch plus the {kernel_shape[0]}x{kernel_shape[1]} "
                f"kernel's blur margin"
                + (", plus room for the random affine rotation/shear" if config.p_affine > 0 else "")
                + f"); {hint}, or use larger images"
            )


MIN_LR_PATCH = 8  # smallest LR patch a group falls back to when no image fits the configured one


@dataclass(frozen=True)
class UsableImages:
    """Which images of a group can give training pairs, and with which patch.

    ``indices``: the usable images, in input order. ``skipped``: (label, width, height) of the
    images too small even for ``config``. ``config``: the requested pair config, or a copy with
    a smaller ``lr_patch`` when no image fitted the requested one. ``minimum``: the side (LR
    pixels) an image needs for ``config.lr_patch``.
    """

    indices: tuple[int, ...]
    skipped: tuple[tuple[str, int, int], ...]
    config: PairConfig
    minimum: int
    requested_patch: int

    @property
    def patch_reduced(self) -> bool:
        return self.config.lr_patch != self.requested_patch

    def warning(self) -> str | None:
        """One message naming the skipped images and any patch reduction (None when neither)."""
        parts = []
        if self.patch_reduced:
            parts.append(f"no image fits the {self.requested_patch}-px LR patch; using lr_patch "
                         f"{self.config.lr_patch} (on images this small the quality benchmark saw adaptation "
                         "lower NIQE but lose fidelity to the scene: compare the output with the backbone's, "
                         "or adapt on larger photos of the camera)")
        if self.skipped:
            listed = ", ".join(f"{label} ({w}x{h})" for label, w, h in self.skipped)
            parts.append(f"skipped {len(self.skipped)} image(s) smaller than {self.minimum} LR pixels "
                         f"per side (the minimum for lr_patch {self.config.lr_patch}): {listed}")
        return "; ".join(parts) or None


def select_usable_images(
    images: Sequence[np.ndarray],
    config: PairConfig,
    *,
    kernel_shape: tuple[int, int] = (DEFAULT_KERNEL_SIZE,) * 2,
    names: Sequence[str] | None = None,
    min_patch: int = MIN_LR_PATCH,
    kernel_assumed: bool = False,
) -> UsableImages:
    """Keep the images large enough for ``config``; never fail while one image can be used.

    ``kernel_assumed``: ``kernel_shape`` is a default size standing in for a kernel not estimated yet
    (the minimum the error gives may then grow once the kernel is known, and the message says so).

    Images whose shorter side is below :func:`min_image_size` are skipped. When that leaves none,
    the LR patch shrinks to the largest size (not below ``min_patch``) that the largest image
    fits, and the images fitting that patch are used. Raises ConfigError when no image fits even
    ``min_patch``, giving the minimum size; shape, dtype and range problems of any image raise as
    in :func:`validate_images`.
    """
    if len(images) == 0:
        raise ConfigError("no images to cut training pairs from; give at least one LR image")
    if isinstance(min_patch, bool) or not isinstance(min_patch, (int, np.integer)) or min_patch < 1:
        raise ConfigError(f"min_patch must be an integer >= 1 (LR pixels), got {min_patch!r}; "
                          f"the default is {MIN_LR_PATCH}")
    if names is not None and len(names) != len(images):
        raise ConfigError(f"got {len(names)} names for {len(images)} images; give one name per image (or none)")
    labels = [names[i] if names is not None else f"image {i}" for i in range(len(images))]
    sides = []
    for index, raw in enumerate(images):
        image = np.asarray(raw)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ShapeError(labels[index], image.shape, "(H, W, 3) RGB")
        sides.append((int(image.shape[1]), int(image.shape[0])))
    chosen = config
    minimum = min_image_size(config, kernel_shape)
    if all(min(w, h) < minimum for w, h in sides):
        largest = max(min(w, h) for w, h in sides)
        patch = _largest_fitting_patch(config, kernel_shape, largest)
        floor = min(min_patch, config.lr_patch)
        if patch < floor:
            need = min_image_size(dataclasses.replace(config, lr_patch=floor), kernel_shape)
            listed = ", ".join(f"{label} ({w}x{h})" for label, (w, h) in zip(labels, sides, strict=True))
            assumed = (" (the default size: the kernel estimated from blurrier images is larger and needs larger "
                       "images still)" if kernel_assumed else "")
            raise ConfigError(
                f"no image is large enough to adapt to: each side must be at least {need} LR pixels "
                f"(lr_patch {floor} at scale {config.scale} with a {kernel_shape[0]}x{kernel_shape[1]} "
                f"kernel{assumed}; {minimum} for the configured lr_patch {config.lr_patch}); got {listed}. "
                "Use larger images."
            )
        chosen = dataclasses.replace(config, lr_patch=patch)
        minimum = min_image_size(chosen, kernel_shape)
    keep = tuple(i for i, (w, h) in enumerate(sides) if min(w, h) >= minimum)
    skipped = tuple((labels[i], w, h) for i, (w, h) in enumerate(sides) if i not in keep)
    validate_images([images[i] for i in keep], chosen, kernel_shape=kernel_shape,
                    names=[labels[i] for i in keep])
    return UsableImages(keep, skipped, chosen, minimum, config.lr_patch)


# --------------------------------------------------------------------------- sampler


@dataclass(frozen=True)
class SampleParams:
    """Every random choice behind one pair; :meth:`PairSampler.render` is a pure function of it.

    centre_xy: source position (x, y) of the crop centre in image pixels (integer crop when
    ``affine`` is None: top-left = centre - (crop-1)/2). photometric: (op, value in [-1, 1]).
    """

    image_index: int
    centre_xy: tuple[float, float]
    dihedral: int
    affine: AffineParams | None
    photometric: tuple[tuple[str, float], ...]
    usm: UsmParams | None
    noise: NoiseParams


@dataclass(frozen=True)
class PairBatch:
    """A batch of pairs, NCHW float32: lr = y_rd (B,3,p,p), hr = y_r (B,3,ps,ps), weight (B,1,ps,ps)."""

    lr: np.ndarray
    hr: np.ndarray
    weight: np.ndarray
    params: tuple[SampleParams, ...] = field(repr=False)


@dataclass(frozen=True)
class _Source:
    data: np.ndarray  # HxWx3 or HxWx4 (RGB + weight), float32 contiguous
    scale_low: float  # lower affine scale bound that fits this image


class PairSampler:
    """Draws augmented (y_rd, y_r, weight) pairs from a group's LR images. Build with
    :func:`make_pair_sampler`. Holds its own ``np.random.Generator``; same seed, same batches."""

    def __init__(self, sources: list[_Source], prepared_kernel: np.ndarray, config: PairConfig,
                 has_weights: bool, seed: int) -> None:
        self._sources = sources
        self._kernel = prepared_kernel
        self._config = config
        self._has_weights = has_weights
        self._geometry = pair_geometry(config, prepared_kernel.shape)
        self._rng = np.random.default_rng(seed)
        areas = np.array([s.data.shape[0] * s.data.shape[1] for s in sources], dtype=np.float64)
        if config.image_choice == "uniform":
            areas = np.ones_like(areas)
        self._image_p = areas / areas.sum()

    @property
    def config(self) -> PairConfig:
        return self._config

    @property
    def geometry(self) -> PairGeometry:
        return self._geometry

    @property
    def prepared_kernel(self) -> np.ndarray:
        """The kernel actually applied (parity-adjusted, float32); a copy."""
        return self._kernel.copy()

    def affine_scale_low(self, image_index: int) -> float:
        """Lower affine scale bound for an image (``config.affine_scale[0]`` unless it is small)."""
        return self._sources[image_index].scale_low

    def draw_params(self) -> SampleParams:
        """Draw the random choices for one pair (advances the generator)."""
        cfg, rng, geo = self._config, self._rng, self._geometry
        index = int(rng.choice(len(self._sources), p=self._image_p))
        source = self._sources[index]
        height, width = source.data.shape[:2]
        flip = int(rng.integers(DIHEDRAL_COUNT)) if rng.random() < cfg.p_flip_rot else 0
        affine: AffineParams | None = None
        if rng.random() < cfg.p_affine:
            affine = AffineParams(
                scale=float(rng.uniform(source.scale_low, cfg.affine_scale[1])),
                rotate_deg=float(rng.uniform(-cfg.affine_rotate_deg, cfg.affine_rotate_deg)),
                shear_deg=float(rng.uniform(-cfg.affine_shear_deg, cfg.affine_shear_deg)),
            )
        if affine is None:
            half = (geo.crop - 1) / 2.0
            x0 = int(rng.integers(0, width - geo.crop + 1))
            y0 = int(rng.integers(0, height - geo.crop + 1))
            centre = (x0 + half, y0 + half)
        else:
            inv = np.abs(affine.inverse_matrix()).sum(axis=1)
            mx = affine_margin(float(inv[0]) * affine.scale, affine.scale, geo.crop, cfg.affine_antialias)
            my = affine_margin(float(inv[1]) * affine.scale, affine.scale, geo.crop, cfg.affine_antialias)
            eps = 1e-6  # keeps floor/ceil of the footprint inside the image
            if width - 1 - 2 * (mx + eps) < 0 or height - 1 - 2 * (my + eps) < 0:
                raise RuntimeError(f"affine footprint {2 * mx + 1:.1f}x{2 * my + 1:.1f} exceeds the "
                                   f"{width}x{height} image: scale bound computation is wrong")
            centre = (float(rng.uniform(mx + eps, width - 1 - mx - eps)),
                      float(rng.uniform(my + eps, height - 1 - my - eps)))
        ops: tuple[tuple[str, float], ...] = ()
        if rng.random() < cfg.p_photometric:
            count = int(rng.integers(1, cfg.photometric_max_ops + 1))
            names = rng.choice(len(PHOTOMETRIC_OPS), size=count, replace=False)
            limit = cfg.photometric_magnitude / 10.0
            ops = tuple((PHOTOMETRIC_OPS[int(n)], float(rng.uniform(-limit, limit))) for n in names)
        usm = None
        if rng.random() < cfg.p_usm:
            usm = UsmParams(sigma=float(rng.uniform(*cfg.usm_sigma_range)),
                            amount=float(rng.uniform(*cfg.usm_amount_range)))
        kind = noise_kind(float(rng.random()), cfg.p_gauss_noise, cfg.p_poisson_noise)
        noise = NoiseParams()
        if kind != NOISE_NONE:
            span = cfg.gauss_sigma_range if kind == "gaussian" else cfg.poisson_scale_range
            noise = NoiseParams(kind=kind, level=float(rng.uniform(*span)),
                                gray=bool(rng.random() < cfg.p_gray_noise),
                                seed=int(rng.integers(2**63 - 1)))
        return SampleParams(index, centre, flip, affine, ops, usm, noise)

    def render(self, params: SampleParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lr HxWx3, hr, weight HxW) for ``params``; deterministic."""
        geo, cfg = self._geometry, self._config
        data = self._sources[params.image_index].data
        if params.affine is None:
            half = (geo.crop - 1) / 2.0
            x0 = int(round(params.centre_xy[0] - half))
            y0 = int(round(params.centre_xy[1] - half))
            crop = data[y0 : y0 + geo.crop, x0 : x0 + geo.crop]
        else:
            crop = warp_affine_crop(data, params.centre_xy, params.affine, geo.crop,
                                    antialias=cfg.affine_antialias)
        crop = dihedral(crop, params.dihedral)
        rgb = crop[..., :3]
        if params.photometric:
            rgb = apply_photometric(rgb, params.photometric)
        lr = blur_downsample_crop(rgb, self._kernel, geo)
        m, n = geo.margin, geo.hr_patch
        hr = rgb[m : m + n, m : m + n]
        weight = crop[m : m + n, m : m + n, 3] if self._has_weights else np.ones((n, n), dtype=np.float32)
        if params.usm is not None:
            lr = unsharp_mask(lr, params.usm)
        lr = add_noise(lr, params.noise)
        return np.clip(lr, 0.0, 1.0), hr, weight

    def sample(self, batch_size: int) -> PairBatch:
        """Draw ``batch_size`` pairs as NCHW float32 arrays."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        params = tuple(self.draw_params() for _ in range(batch_size))
        rendered = [self.render(p) for p in params]
        lr = np.stack([r[0].transpose(2, 0, 1) for r in rendered]).astype(np.float32, copy=False)
        hr = np.stack([r[1].transpose(2, 0, 1) for r in rendered]).astype(np.float32, copy=False)
        weight = np.stack([r[2][None] for r in rendered]).astype(np.float32, copy=False)
        return PairBatch(lr=np.ascontiguousarray(lr), hr=np.ascontiguousarray(hr),
                         weight=np.ascontiguousarray(weight), params=params)


def _scale_low(config: PairConfig, worst: float, crop: int, side: int) -> float:
    """Smallest affine scale in ``config.affine_scale`` whose worst-case footprint fits ``side``."""
    lo, hi = config.affine_scale

    def fits(scale: float) -> bool:
        margin = affine_margin(worst * _AFFINE_SAFETY, scale, crop, config.affine_antialias)
        return 2.0 * margin + 1.0 <= side

    if fits(lo):
        return lo
    for _ in range(40):  # bisection; fits(hi) holds after validation
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def make_pair_sampler(
    images: Sequence[np.ndarray],
    kernel: np.ndarray,
    config: PairConfig,
    *,
    weights: Sequence[np.ndarray] | None = None,
    seed: int,
    names: Sequence[str] | None = None,
) -> PairSampler:
    """Sampler of internal pairs from a group's LR images ``images`` (float32 HxWx3 in [0, 1]).

    ``kernel``: 2-D blur kernel at the images' resolution, summing to 1. ``weights``: optional
    per-image HxW loss-weight maps at the same resolution, cropped and transformed with y_r.
    ``names`` label images in error messages.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    prepared = prepare_kernel(kernel, config.scale)
    kernel_shape = (int(np.asarray(kernel).shape[0]), int(np.asarray(kernel).shape[1]))
    validate_images(images, config, kernel_shape=kernel_shape, names=names)
    if weights is not None and len(weights) != len(images):
        raise ConfigError(f"got {len(weights)} weight maps for {len(images)} images; give one per image")
    worst = max_inverse_row_sums(config.affine_rotate_deg, config.affine_shear_deg)
    geometry = pair_geometry(config, prepared.shape)
    sources: list[_Source] = []
    for index, image in enumerate(images):
        data = np.asarray(image, dtype=np.float32)
        if weights is not None:
            w = np.asarray(weights[index], dtype=np.float32)
            if w.shape != data.shape[:2]:
                raise ShapeError(f"weight map {index}", w.shape, f"{data.shape[:2]} (the image's H, W)")
            if not np.all(np.isfinite(w)) or (w.size and w.min() < 0):
                raise ConfigError(f"weight map {index} has non-finite or negative values; loss weights are >= 0 "
                                  "(a negative one would make training increase the error there)")
            data = np.concatenate([data, w[..., None]], axis=2)
        low = config.affine_scale[0]
        if config.p_affine > 0.0:
            low = _scale_low(config, worst, geometry.crop, min(data.shape[:2]))
        sources.append(_Source(np.ascontiguousarray(data), low))
    return PairSampler(sources, prepared, config, weights is not None, seed)
