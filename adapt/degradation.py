"""Synthetic degradation helpers shared by kernel estimation, internal pairs and benchmarks.

Conventions (every caller relies on them; tests pin them down):

* Coordinates: ``x`` is the column index (to the right), ``y`` the row index (downwards).
* Kernel parameters: ``sigma_x`` and ``sigma_y`` are the standard deviations (in pixels of the
  image being blurred, i.e. at HR resolution) along the kernel's own principal axes; ``theta``
  (radians) turns the ``sigma_x`` axis from the +x axis towards +y (clockwise on screen, since y
  points down). The covariance is ``R diag(sigma_x^2, sigma_y^2) R^T`` with
  ``R = [[cos, -sin], [sin, cos]]`` acting on ``(x, y)`` vectors.
* Kernel arrays: a kernel is a normalised 2-D array (rows = y, columns = x) whose centre is at
  ``((K_h - 1) / 2, (K_w - 1) / 2)``: a half-integer position when a side length is even. Kernels
  made for downsampling by ``s`` have sides of the same parity as ``s`` (odd for odd ``s``, even
  for even ``s``) so that their centre falls exactly on a sampling position (see below).
* Sampling phase (pixel-centre alignment): :func:`blur_downsample` returns
  ``out[j, i] = (image * k)(s * j + (s - 1) / 2, s * i + (s - 1) / 2)``: LR pixel ``j`` covers HR
  pixels ``s*j .. s*j + s - 1`` and sits at their centre. This is the convention of MATLAB
  ``imresize``, Pillow's ``resize``, ``cv2.INTER_AREA`` and ``torch`` ``align_corners=False``,
  hence the one that SR backbones (Real-ESRGAN, RealSR) assume between LR and SR pixels. With the
  box kernel of side ``s`` it equals ``cv2.resize(..., interpolation=cv2.INTER_AREA)``; with
  :func:`bicubic_kernel` it equals MATLAB / Pillow antialiased bicubic downscaling (away from the
  borders). The image is extended by symmetric reflection (``cv2.BORDER_REFLECT``, MATLAB's
  ``'symmetric'``).
* Convolution, not correlation: ``image * k`` flips ``k``. Gaussian kernels are point-symmetric so
  the difference only matters for user-given asymmetric kernels.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from adassr.runtime.errors import ConfigError, ImageError, ShapeError
from adassr.runtime.images.float_range import check_float_range

__all__ = [
    "bicubic_kernel",
    "blur_downsample",
    "box_kernel",
    "covariance_from_params",
    "cubic",
    "gaussian_kernel",
    "kernel_covariance",
    "kernel_size",
    "params_from_covariance",
]


MAX_KERNEL_SIDE = 1001
"""Largest kernel side this module builds (sigma about 166 px): a wider blur is no camera's, and
its kernel would take gigabytes (a side of ``n`` costs ``8 n^2`` bytes and ``n^2`` taps a pixel)."""


def _check_scale(scale: int) -> int:
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ConfigError(f"scale must be a positive integer, got {scale!r}: use 2, 3 or 4")
    return int(scale)


def covariance_from_params(sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """2x2 covariance (in ``(x, y)`` order) of a Gaussian with the given axes and angle (radians)."""
    if not (sigma_x > 0 and sigma_y > 0) or not all(map(math.isfinite, (sigma_x, sigma_y, theta))):
        raise ConfigError(
            f"kernel sigmas must be finite and > 0, got sigma_x={sigma_x!r}, sigma_y={sigma_y!r}, "
            f"theta={theta!r}"
        )
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    return rot @ np.diag([sigma_x**2, sigma_y**2]) @ rot.T


def params_from_covariance(cov: np.ndarray) -> tuple[float, float, float]:
    """Inverse of :func:`covariance_from_params`: ``(sigma_x, sigma_y, theta)``.

    ``sigma_x >= sigma_y``; ``theta`` (radians) is the direction of the major axis, in
    ``(-pi/2, pi/2]``. For an isotropic covariance ``theta`` is 0.
    """
    cov = np.asarray(cov, dtype=np.float64)
    if cov.shape != (2, 2):
        raise ShapeError("covariance", cov.shape, "(2, 2)")
    cov = 0.5 * (cov + cov.T)
    vals, vecs = np.linalg.eigh(cov)  # ascending
    if vals[0] <= 0:
        raise ConfigError(f"covariance must be positive definite, got eigenvalues {vals.tolist()}")
    major = vecs[:, 1]
    theta = math.atan2(major[1], major[0])
    if theta <= -math.pi / 2:
        theta += math.pi
    elif theta > math.pi / 2:
        theta -= math.pi
    if math.isclose(vals[0], vals[1], rel_tol=1e-9):
        theta = 0.0
    return math.sqrt(vals[1]), math.sqrt(vals[0]), theta


def kernel_size(sigma_max: float, scale: int = 1) -> int:
    """Side length covering +-3 sigma: ``2 * ceil(3 * sigma_max) + 1``, made even for even scales.

    An even side (one more tap) centres the kernel on a half-integer position, which is where the
    sampling positions of an even ``scale`` lie (see the module docstring). The side is at least
    ``scale + 2`` so every kernel covers the whole footprint of an LR pixel.
    """
    scale = _check_scale(scale)
    if isinstance(sigma_max, bool) or not isinstance(sigma_max, (int, float, np.integer, np.floating)):
        raise ConfigError(f"sigma_max must be a number, got {sigma_max!r}")
    if not (sigma_max > 0 and math.isfinite(sigma_max)):
        raise ConfigError(f"sigma_max must be finite and > 0, got {sigma_max!r}")
    side = 2 * math.ceil(3.0 * sigma_max) + 1
    if scale % 2 == 0:
        side += 1
    while side < scale + 2:
        side += 2
    _check_side(side, f"sigma_max={sigma_max!r}")
    return side


def _check_side(side: int, what: str) -> None:
    if side > MAX_KERNEL_SIDE:
        raise ConfigError(
            f"{what} needs a kernel of {side} x {side} taps, more than the {MAX_KERNEL_SIDE} this "
            f"module builds: a blur that wide is no camera's; use a sigma below "
            f"{(MAX_KERNEL_SIDE - 3) / 6:.0f} px"
        )


def _grid(side: int) -> np.ndarray:
    return np.arange(side, dtype=np.float64) - (side - 1) / 2.0


def gaussian_kernel(
    sigma_x: float,
    sigma_y: float,
    theta: float = 0.0,
    *,
    scale: int = 1,
    size: int | None = None,
) -> np.ndarray:
    """Normalised anisotropic Gaussian kernel (float64, rows = y, columns = x).

    The continuous Gaussian is sampled at the pixel offsets of a ``size x size`` grid centred at
    ``(size - 1) / 2`` and divided by its sum. ``size`` defaults to
    ``kernel_size(max(sigma_x, sigma_y), scale)``; a given ``size`` must have the parity of
    ``scale`` when the kernel is meant for :func:`blur_downsample` with that scale.
    """
    scale = _check_scale(scale)
    cov = covariance_from_params(sigma_x, sigma_y, theta)
    if size is None:
        size = kernel_size(max(sigma_x, sigma_y), scale)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ConfigError(f"kernel size must be a whole number of taps, got {size!r}")
    size = int(size)
    if size < 1:
        raise ConfigError(f"kernel size must be >= 1, got {size}")
    if size > MAX_KERNEL_SIDE:
        raise ConfigError(
            f"kernel size {size} is more than the {MAX_KERNEL_SIDE} taps this module builds: a "
            "blur that wide is no camera's; use a smaller size"
        )
    if size % 2 != scale % 2:
        raise ConfigError(
            f"kernel size {size} has the wrong parity for scale {scale}: use an "
            f"{'even' if scale % 2 == 0 else 'odd'} size so the kernel centre is a sampling position"
        )
    g = _grid(size)
    xx, yy = np.meshgrid(g, g)
    inv = np.linalg.inv(cov)
    q = inv[0, 0] * xx * xx + 2.0 * inv[0, 1] * xx * yy + inv[1, 1] * yy * yy
    k = np.exp(-0.5 * q)
    return k / k.sum()


def kernel_covariance(kernel: np.ndarray) -> np.ndarray:
    """Second central moments (2x2, ``(x, y)`` order) of a kernel about its array centre.

    Uses the centre convention of the module (``(side - 1) / 2``), not the kernel's centroid, so
    a mis-centred kernel shows up as extra spread.
    """
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim != 2:
        raise ShapeError("kernel", k.shape, "(K_h, K_w)")
    total = k.sum()
    if not total > 0:
        raise ConfigError("kernel must have a positive sum")
    k = k / total
    yy, xx = np.meshgrid(_grid(k.shape[0]), _grid(k.shape[1]), indexing="ij")
    sxx = float((k * xx * xx).sum())
    syy = float((k * yy * yy).sum())
    sxy = float((k * xx * yy).sum())
    return np.array([[sxx, sxy], [sxy, syy]])


def cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys cubic convolution kernel (``a = -0.5``: MATLAB ``imresize`` and Pillow bicubic)."""
    t = np.abs(np.asarray(t, dtype=np.float64))
    t2, t3 = t * t, t * t * t
    near = (a + 2.0) * t3 - (a + 3.0) * t2 + 1.0
    far = a * t3 - 5.0 * a * t2 + 8.0 * a * t - 4.0 * a
    return np.where(t <= 1.0, near, np.where(t < 2.0, far, 0.0))


def bicubic_kernel(scale: int, a: float = -0.5) -> np.ndarray:
    """HR-resolution kernel of antialiased bicubic downscaling by ``scale`` (MATLAB / Pillow).

    Antialiased downscaling stretches the cubic kernel by the scale factor:
    ``h(u) = cubic(u / s)``, sampled at the pixel offsets ``|u| < 2 s`` of a grid centred on the
    sampling position (support ``|u| < 2 s``), normalised; the 2-D kernel is the outer product.
    ``blur_downsample(x, bicubic_kernel(s), s)`` equals ``imresize(x, 1/s, 'bicubic')`` away from
    the image borders. Its second moment is zero (Keys' cubic reproduces quadratics), so its
    "equivalent Gaussian" is defined by the L2 fit instead (sigma about 0.39 s, 1.57 at x4).
    """
    scale = _check_scale(scale)
    side = 4 * scale - scale % 2  # taps at |u| < 2 s, on the parity grid of the scale
    h = cubic(_grid(side) / scale, a)
    h = h / h.sum()
    return np.outer(h, h)


def box_kernel(scale: int) -> np.ndarray:
    """``scale x scale`` averaging kernel: ``blur_downsample`` with it equals ``cv2.INTER_AREA``."""
    scale = _check_scale(scale)
    return np.full((scale, scale), 1.0 / (scale * scale))


def blur_downsample(image: np.ndarray, kernel: np.ndarray, scale: int) -> np.ndarray:
    """``(image * kernel)`` sampled at HR positions ``s * j + (s - 1) / 2`` (float32 output).

    ``image`` is ``HxW`` or ``HxWxC`` (C <= 4); the output is ``floor(H/s) x floor(W/s)`` (x C).
    ``kernel`` sides must have the parity of ``scale`` (see the module docstring); the kernel is
    used as given (normalise it first). Borders are extended by symmetric reflection.
    """
    scale = _check_scale(scale)
    img = np.asarray(image)
    if img.ndim not in (2, 3) or (img.ndim == 3 and not 1 <= img.shape[2] <= 4):
        raise ShapeError("image", img.shape, "(H, W) or (H, W, C) with C <= 4")
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim != 2 or k.size == 0:
        raise ShapeError("kernel", k.shape, "(K_h, K_w)")
    kh, kw = k.shape
    if kh % 2 != scale % 2 or kw % 2 != scale % 2:
        raise ShapeError(
            "kernel",
            k.shape,
            f"sides with the parity of scale {scale} (make it with gaussian_kernel(..., scale={scale}))",
        )
    h, w = img.shape[:2]
    out_h, out_w = h // scale, w // scale
    if out_h < 1 or out_w < 1:
        raise ShapeError("image", img.shape, f"at least {scale}x{scale} pixels for scale {scale}")
    # out[j] = sum_i kf[i] * x[s*j + o + i] with kf the flipped kernel and o = (s - K) / 2.
    oy, ox = (scale - kh) // 2, (scale - kw) // 2
    pad_t, pad_l = max(0, -oy), max(0, -ox)
    pad_b = max(0, scale * (out_h - 1) + oy + kh - h)
    pad_r = max(0, scale * (out_w - 1) + ox + kw - w)
    src: np.ndarray = img.astype(np.float32, copy=False)
    if max(pad_t, pad_b, pad_l, pad_r) > min(h, w):
        # Reflection needs the pad to be smaller than the image; repeat reflecting in steps.
        src = np.pad(src, ((pad_t, pad_b), (pad_l, pad_r)) + ((0, 0),) * (img.ndim - 2),
                     mode="symmetric")
    else:
        src = cv2.copyMakeBorder(src, pad_t, pad_b, pad_l, pad_r, cv2.BORDER_REFLECT)
        if img.ndim == 3 and src.ndim == 2:
            src = src[:, :, None]
    kf = np.ascontiguousarray(k[::-1, ::-1], dtype=np.float32)
    filtered = cv2.filter2D(src, cv2.CV_32F, kf, anchor=(0, 0), borderType=cv2.BORDER_CONSTANT)
    if img.ndim == 3 and filtered.ndim == 2:
        filtered = filtered[:, :, None]
    r0, c0 = pad_t + oy, pad_l + ox
    out = filtered[r0 : r0 + scale * out_h : scale, c0 : c0 + scale * out_w : scale]
    return np.ascontiguousarray(out, dtype=np.float32)


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """``image`` (H, W, 3) RGB in [0, 1] encoded as a JPEG of ``quality`` (1-100, OpenCV's 4:2:0
    baseline encoder) and decoded again, as a camera's compression does (float32 output)."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ShapeError("image", img.shape, "(H, W, 3) RGB")
    if not np.issubdtype(img.dtype, np.floating):
        raise ImageError(f"image has dtype {img.dtype}; pass float RGB in [0, 1] (divide 8-bit levels by 255)")
    if not np.isfinite(img).all():
        raise ImageError("image has NaN or infinite values: pass a finite image in [0, 1]")
    if img.size:
        check_float_range(float(img.min()), float(img.max()))
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= 100:
        raise ConfigError(f"JPEG quality {quality!r} is not an integer from 1 (smallest) to 100")
    u8 = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(u8[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else None
    if decoded is None:  # pragma: no cover - OpenCV encodes and decodes any uint8 RGB image
        raise RuntimeError(f"OpenCV could not round-trip a {img.shape[1]}x{img.shape[0]} image through JPEG")
    return np.ascontiguousarray(decoded[..., ::-1], dtype=np.float32) / np.float32(255.0)
