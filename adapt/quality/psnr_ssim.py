"""PSNR and SSIM as SR papers compute them (BasicSR ``calculate_psnr`` / ``calculate_ssim``).

- Pixels are taken on the [0, 255] scale in float64 (uint8 as is, uint16 * 255/65535,
  float in [0, 1] * 255; a float image with values below -0.5 or above 1.5 is on another scale and
  refused, :mod:`adassr.runtime.images.float_range`); ``crop_border`` pixels are removed on each side.
- ``channel='y'`` (default): the BT.601 luma of MATLAB ``rgb2ycbcr``,
  ``16 + (65.481 R + 128.553 G + 24.966 B) / 255``, kept in float (not rounded), as
  BasicSR does. ``channel='rgb'``: all three channels (single-channel images are used
  as they are in every mode). ``channel='gray'``: MATLAB ``rgb2gray`` of the 8-bit
  levels, rounded (what the original SSIM release was run on; it reproduces the
  calibration table's "official" SSIM).
- PSNR: ``10 log10(255^2 / MSE)`` with the MSE over all pixels and channels; identical
  images give ``math.inf``.
- SSIM: Wang et al. (2004) ``ssim_index.m``: 11x11 Gaussian window sigma 1.5,
  C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2, 'valid' filtering (no padding, no
  downsampling), mean of the SSIM map; for RGB the mean over channels.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from scipy.ndimage import correlate1d

from adassr.runtime.errors import ConfigError, ImageError, ShapeError
from adassr.runtime.images.float_range import check_float_range

Channel = Literal["y", "rgb", "gray"]

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
_Y_COEFFS = (65.481, 128.553, 24.966)


def to_255(image: np.ndarray, what: str = "image") -> np.ndarray:
    """HxW or HxWxC image as float64 on the [0, 255] scale, always HxWxC (``what`` names it in errors)."""
    a = np.asarray(image)
    if a.dtype == np.uint8:
        out = a.astype(np.float64)
    elif a.dtype == np.uint16:
        out = a.astype(np.float64) * (255.0 / 65535.0)
    elif np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)):
            raise ImageError(f"{what} has NaN or infinite values: pass a finite image in [0, 1]")
        if a.size:
            check_float_range(float(a.min()), float(a.max()), what)
        out = a.astype(np.float64) * 255.0
    else:
        raise ImageError(f"{what} dtype {a.dtype} is not supported: pass uint8, uint16 or float in [0, 1]")
    if out.ndim == 2:
        out = out[:, :, None]
    if out.ndim != 3 or out.shape[2] not in (1, 3):
        raise ShapeError(what, a.shape, "HxW, HxWx1 or HxWx3")
    return out


def _prepare(
    image: np.ndarray, reference: np.ndarray, crop_border: int, channel: Channel
) -> tuple[np.ndarray, np.ndarray]:
    if channel not in ("y", "rgb", "gray"):
        raise ConfigError(f"channel must be 'y', 'rgb' or 'gray', got {channel!r}")
    if channel == "gray":
        image, reference = _gray(image, "image"), _gray(reference, "reference")
    if isinstance(crop_border, bool) or not isinstance(crop_border, (int, np.integer)) or crop_border < 0:
        raise ConfigError(f"crop_border must be an integer >= 0, got {crop_border!r}")
    a, b = to_255(image, "image"), to_255(reference, "reference")
    if a.shape[:2] == b.shape[:2] and sorted((a.shape[2], b.shape[2])) == [1, 3]:
        grey, colour = ("image", "reference") if a.shape[2] == 1 else ("reference", "image")
        raise ConfigError(f"the {grey} is grey and the {colour} in colour: channel {channel!r} needs colour on both "
                          "sides; score both as grey with channel 'gray' (`adassr metrics --channel gray`)")
    if a.shape != b.shape:
        raise ShapeError("image vs reference", a.shape, f"the reference's shape {b.shape}")
    if crop_border:
        a = a[crop_border:-crop_border, crop_border:-crop_border]
        b = b[crop_border:-crop_border, crop_border:-crop_border]
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ShapeError("image after crop_border", a.shape, "at least 1x1 pixels")
    if channel == "y" and a.shape[2] == 3:
        a, b = rgb_to_y(a), rgb_to_y(b)
    return a, b


def _gray(image: np.ndarray, what: str) -> np.ndarray:
    """MATLAB rgb2gray on 8-bit levels, rounded, as uint8 HxW (gray input passes through)."""
    from adassr.adapt.quality.niqe import to_luma

    return to_luma(np.asarray(image), "gray", what).astype(np.uint8)


def rgb_to_y(rgb255: np.ndarray) -> np.ndarray:
    """HxWx3 RGB on [0, 255] -> HxWx1 BT.601 Y on [16, 235] (float, unrounded)."""
    c0, c1, c2 = _Y_COEFFS
    y = 16.0 + (c0 * rgb255[..., 0] + c1 * rgb255[..., 1] + c2 * rgb255[..., 2]) / 255.0
    return y[:, :, None]


def psnr(image: np.ndarray, reference: np.ndarray, *, crop_border: int = 0, channel: Channel = "y") -> float:
    """PSNR in dB (``math.inf`` for identical images). Symmetric in its arguments."""
    a, b = _prepare(image, reference, crop_border, channel)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0 * 255.0 / mse)


def _gaussian_1d() -> np.ndarray:
    x = np.arange(SSIM_WINDOW, dtype=np.float64) - (SSIM_WINDOW - 1) / 2
    g = np.exp(-(x * x) / (2.0 * SSIM_SIGMA * SSIM_SIGMA))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    r = SSIM_WINDOW // 2
    out = correlate1d(correlate1d(x, g, axis=0, mode="nearest"), g, axis=1, mode="nearest")
    return out[r:-r, r:-r]


def _ssim_plane(a: np.ndarray, b: np.ndarray) -> float:
    c1 = (0.01 * 255.0) ** 2
    c2 = (0.03 * 255.0) ** 2
    g = _gaussian_1d()
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    mu_a2, mu_b2, mu_ab = mu_a * mu_a, mu_b * mu_b, mu_a * mu_b
    var_a = _filter_valid(a * a, g) - mu_a2
    var_b = _filter_valid(b * b, g) - mu_b2
    cov_ab = _filter_valid(a * b, g) - mu_ab
    ssim_map = ((2 * mu_ab + c1) * (2 * cov_ab + c2)) / ((mu_a2 + mu_b2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def ssim(image: np.ndarray, reference: np.ndarray, *, crop_border: int = 0, channel: Channel = "y") -> float:
    """Mean SSIM (1.0 for identical images), per-channel mean for RGB. Symmetric."""
    a, b = _prepare(image, reference, crop_border, channel)
    if a.shape[0] < SSIM_WINDOW or a.shape[1] < SSIM_WINDOW:
        raise ShapeError("SSIM input (after crop_border)", a.shape, f"at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels")
    return float(np.mean([_ssim_plane(a[:, :, c], b[:, :, c]) for c in range(a.shape[2])]))
