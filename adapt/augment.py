"""Augmentation operations for internal training pairs (paper §III-C3, §IV-A1).

Pure functions on float32 HxWxC arrays in [0, 1]; the random draws live in :mod:`adassr.adapt.pairs`.
Where each op acts, and why:

* Geometric (dihedral flip/rotation, random affine) act on the target-resolution crop of y_r *and*
  its weight map together, before degradation, so y_rd, y_r and the weights stay aligned.
* Photometric (RandAugment-style: brightness, contrast, saturation, gamma, hue) act on the RGB of
  that crop before degradation, so input and target see the same colour mapping and the pair
  still describes the degradation only.
* Unsharp masking and noise act on the degraded input y_rd only: they are what the network must
  learn to undo (noise) or be robust to (sharpening by the camera), so the target stays clean.

Parameters the paper leaves open (documented deviations / choices):

* Affine: A = a * R(theta) * Shear_x(phi); the content is scaled by ``a`` (a < 1 zooms out, so a
  target patch covers 1/a as many source pixels). Sampling is bilinear; for a < 1 the source is
  first blurred with a Gaussian of sigma (1/a - 1)/2 (the scikit-image anti-aliasing rule) so the
  zoomed-out target is not aliased.
* Photometric magnitudes are normalised to v in [-1, 1] and scaled per op: brightness x*(1+0.3v),
  contrast about the patch mean luminance by (1+0.3v), saturation about the pixel luminance by
  (1+0.5v), gamma x**(2**(0.5v)), hue rotation about the grey axis by 36*v degrees. Every op
  clips to [0, 1].
* Noise follows Real-ESRGAN: Gaussian with sigma in absolute [0, 1] units, Poisson as
  (Poisson(255 x)/255 - x) * scale; "gray" noise is one noise field shared by the three channels
  (for Poisson, computed on the luminance).
* USM: x + amount * (x - G_sigma(x)), clipped, no threshold mask (Real-ESRGAN's radius-50 mask is
  meant for full images, not 16-64 px LR patches); borders reflect.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

DIHEDRAL_COUNT = 8
PHOTOMETRIC_OPS: tuple[str, ...] = ("brightness", "contrast", "saturation", "gamma", "hue")
NOISE_NONE = "none"
NOISE_GAUSSIAN = "gaussian"
NOISE_POISSON = "poisson"
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_HUE_MAX_DEG = 36.0


# --------------------------------------------------------------------------- geometric


def dihedral(image: np.ndarray, index: int) -> np.ndarray:
    """Apply dihedral transform ``index`` (0..7) to the first two axes.

    ``index % 4`` quarter turns counter-clockwise, then a left-right flip when ``index >= 4``;
    index 0 is the identity.
    """
    if not 0 <= index < DIHEDRAL_COUNT:
        raise ValueError(f"dihedral index must be in 0..7, got {index}")
    out = np.rot90(image, index % 4, axes=(0, 1))
    if index >= 4:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


@dataclass(frozen=True)
class AffineParams:
    """Random affine: content scaled by ``scale``, rotated by ``rotate_deg``, x-sheared by ``shear_deg``."""

    scale: float
    rotate_deg: float
    shear_deg: float

    def forward_matrix(self) -> np.ndarray:
        """2x2 A (in (x, y) order) mapping a source offset to a target offset."""
        t = math.radians(self.rotate_deg)
        rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        shear = np.array([[1.0, math.tan(math.radians(self.shear_deg))], [0.0, 1.0]])
        return self.scale * rot @ shear

    def inverse_matrix(self) -> np.ndarray:
        """2x2 B = A^-1 (in (x, y) order): source = centre_s + B @ (target - centre_t)."""
        return np.linalg.inv(self.forward_matrix())

    def antialias_sigma(self, enabled: bool) -> float:
        """Gaussian pre-blur (source pixels) for zooming out by ``scale``; 0 when not needed."""
        if not enabled or self.scale >= 1.0:
            return 0.0
        return (1.0 / self.scale - 1.0) / 2.0


def antialias_radius(sigma: float) -> int:
    """Half-size of the Gaussian pre-blur window for ``sigma`` (0 means no blur)."""
    return int(math.ceil(3.0 * sigma)) if sigma > 0.0 else 0


def max_inverse_row_sums(rotate_deg: float, shear_deg: float, *, steps: int = 101) -> float:
    """Largest row sum of |B| for scale 1 over rotations in ±rotate_deg and shears in ±shear_deg.

    A target half-extent h maps to at most ``h * value / scale`` source pixels per axis.
    Evaluated on a dense grid (corners included); callers add a small safety factor.
    """
    rots = np.radians(np.linspace(-rotate_deg, rotate_deg, steps))[:, None]
    tans = np.tan(np.radians(np.linspace(-shear_deg, shear_deg, steps)))[None, :]
    c, s = np.cos(rots), np.sin(rots)
    # A = R(theta) Shear(t) has determinant 1, so B = A^-1 = [[c + s t, s - c t], [-s, c]].
    row_x = np.abs(c + s * tans) + np.abs(s - c * tans)
    row_y = np.abs(s) + np.abs(c) + 0.0 * tans
    return float(max(row_x.max(), row_y.max()))


def source_half_extents(inverse: np.ndarray, out_size: int) -> tuple[float, float]:
    """Source half-extents (x, y) covered by an ``out_size`` square target under ``inverse``."""
    half = (out_size - 1) / 2.0
    sums = np.abs(inverse).sum(axis=1) * half
    return float(sums[0]), float(sums[1])


def warp_affine_crop(
    image: np.ndarray,
    centre_xy: tuple[float, float],
    params: AffineParams,
    out_size: int,
    *,
    antialias: bool,
) -> np.ndarray:
    """Resample an ``out_size`` square target whose centre maps to ``centre_xy`` in ``image``.

    Only the source region the target needs (plus bilinear and anti-aliasing margins) is read, so
    the cost does not depend on the image size. The caller guarantees the region is inside the
    image (see :func:`affine_margin`). Bilinear sampling (OpenCV: 1/32-pixel weights).
    """
    inverse = params.inverse_matrix()
    sigma = params.antialias_sigma(antialias)
    radius = antialias_radius(sigma)
    ex, ey = source_half_extents(inverse, out_size)
    cx, cy = centre_xy
    x0 = math.floor(cx - ex) - 1 - radius
    y0 = math.floor(cy - ey) - 1 - radius
    x1 = math.ceil(cx + ex) + 1 + radius
    y1 = math.ceil(cy + ey) + 1 + radius
    height, width = image.shape[:2]
    if x0 < 0 or y0 < 0 or x1 >= width or y1 >= height:
        raise ValueError(
            f"affine source region x {x0}..{x1}, y {y0}..{y1} leaves the {width}x{height} image"
        )
    region = image[y0 : y1 + 1, x0 : x1 + 1]
    if radius > 0:
        size = 2 * radius + 1
        region = cv2.GaussianBlur(region, (size, size), sigma, borderType=cv2.BORDER_REFLECT_101)
    half = (out_size - 1) / 2.0
    matrix = np.empty((2, 3), dtype=np.float64)
    matrix[:, :2] = inverse
    matrix[:, 2] = np.array([cx - x0, cy - y0]) - inverse @ np.array([half, half])
    out = cv2.warpAffine(
        region,
        matrix,
        (out_size, out_size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REFLECT_101,
    )
    return out.reshape(out_size, out_size, image.shape[2])


def affine_margin(inverse_row_sum: float, scale: float, out_size: int, antialias: bool) -> float:
    """Distance the source centre must keep from the image border for an affine draw.

    ``inverse_row_sum`` is the row sum of |B| at scale 1 (see :func:`max_inverse_row_sums`);
    the margin covers the target footprint, one bilinear neighbour and the pre-blur window.
    """
    half = (out_size - 1) / 2.0
    sigma = AffineParams(scale, 0.0, 0.0).antialias_sigma(antialias)
    return half * inverse_row_sum / scale + 1.0 + antialias_radius(sigma)


# --------------------------------------------------------------------------- photometric


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Rec.601 luma of an HxWx3 array, HxW."""
    return np.tensordot(rgb, _LUMA, axes=([-1], [0])).astype(np.float32)


def _hue_matrix(degrees: float) -> np.ndarray:
    """3x3 rotation about the grey axis (1, 1, 1)/sqrt(3): grey stays grey."""
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    k = 1.0 / 3.0
    q = math.sqrt(k)
    return np.array(
        [
            [c + (1 - c) * k, (1 - c) * k - q * s, (1 - c) * k + q * s],
            [(1 - c) * k + q * s, c + (1 - c) * k, (1 - c) * k - q * s],
            [(1 - c) * k - q * s, (1 - c) * k + q * s, c + (1 - c) * k],
        ],
        dtype=np.float32,
    )


def photometric_op(rgb: np.ndarray, name: str, value: float) -> np.ndarray:
    """Apply one photometric op with normalised magnitude ``value`` in [-1, 1]; clips to [0, 1].

    ``value`` 0 is the identity for every op.
    """
    if name == "brightness":
        out = rgb * np.float32(1.0 + 0.3 * value)
    elif name == "contrast":
        mean = np.float32(luminance(rgb).mean())
        out = (rgb - mean) * np.float32(1.0 + 0.3 * value) + mean
    elif name == "saturation":
        grey = luminance(rgb)[..., None]
        out = (rgb - grey) * np.float32(1.0 + 0.5 * value) + grey
    elif name == "gamma":
        out = np.power(np.clip(rgb, 0.0, 1.0), np.float32(2.0 ** (0.5 * value)))
    elif name == "hue":
        out = rgb @ _hue_matrix(_HUE_MAX_DEG * value).T
    else:
        raise ValueError(f"unknown photometric op {name!r}; expected one of {PHOTOMETRIC_OPS}")
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def apply_photometric(rgb: np.ndarray, ops: Sequence[tuple[str, float]]) -> np.ndarray:
    """Apply ``ops`` (name, value) in order."""
    out = rgb
    for name, value in ops:
        out = photometric_op(out, name, value)
    return out


# --------------------------------------------------------------------------- input-only ops


@dataclass(frozen=True)
class UsmParams:
    """Unsharp masking of the LR input: x + amount * (x - G_sigma(x))."""

    sigma: float
    amount: float


def unsharp_mask(image: np.ndarray, params: UsmParams) -> np.ndarray:
    """Sharpen ``image`` (HxWxC), clipped to [0, 1]."""
    blurred = cv2.GaussianBlur(image, (0, 0), params.sigma, borderType=cv2.BORDER_REFLECT_101)
    blurred = blurred.reshape(image.shape)
    out = image + np.float32(params.amount) * (image - blurred)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


@dataclass(frozen=True)
class NoiseParams:
    """Noise on the LR input. ``level``: Gaussian sigma or Poisson scale; ``seed`` drives the field."""

    kind: str = NOISE_NONE
    level: float = 0.0
    gray: bool = False
    seed: int = 0


def noise_kind(u: float, p_gaussian: float, p_poisson: float) -> str:
    """Decision for one uniform draw ``u`` in [0, 1): Gaussian, Poisson or none (exclusive)."""
    if u < p_gaussian:
        return NOISE_GAUSSIAN
    if u < p_gaussian + p_poisson:
        return NOISE_POISSON
    return NOISE_NONE


def add_noise(image: np.ndarray, params: NoiseParams) -> np.ndarray:
    """Add the noise described by ``params`` to ``image`` (HxWx3), clipped to [0, 1]."""
    if params.kind == NOISE_NONE:
        return image
    rng = np.random.default_rng(params.seed)
    if params.kind == NOISE_GAUSSIAN:
        shape = image.shape[:2] + ((1,) if params.gray else (image.shape[2],))
        noise = rng.standard_normal(shape, dtype=np.float32) * np.float32(params.level)
    elif params.kind == NOISE_POISSON:
        base = luminance(image)[..., None] if params.gray else image
        base = np.clip(base, 0.0, 1.0)
        noisy = rng.poisson(base * 255.0).astype(np.float32) / np.float32(255.0)
        noise = (noisy - base) * np.float32(params.level)
    else:
        raise ValueError(f"unknown noise kind {params.kind!r}")
    return np.clip(image + noise, 0.0, 1.0).astype(np.float32, copy=False)
