"""Blur-kernel estimation from LR images only (one kernel per camera group or per image).

Model: an LR image is ``y = downsample(x * k, s)`` (:mod:`adapt.degradation` conventions) with
``k`` an anisotropic Gaussian of covariance ``Sigma_k`` (HR pixels). In LR pixels ``y`` then
carries a blur of covariance about ``Sigma_b = Sigma_k / s^2`` (plus the scene's own softness).

Method: cross-scale derivative-energy matching (self-similarity across scales, in the spirit of
Michaeli & Irani 2013, but on derivative statistics instead of patch recurrence, which measured
about 10x slower for similar accuracy). Blurring ``y`` by ``G(3 Sigma_b)`` and downsampling by 2
(all four phases) gives an image ``z`` whose blur relative to its own grid,
``(Sigma_b + 3 Sigma_b) / 4``, equals that of ``y``. Blurred edges are scale invariant, so at the
right ``Sigma_b`` the derivative statistics of ``y`` and ``z`` agree. For ``D`` directions we
compare, over the most structured pixels of ``y`` (and the same places in ``z``):

* ``log E2(d) - log E1(d)``: mean squared 2nd over 1st directional derivative, a contrast-free
  measure of the blur along ``d`` (``~ 1 / variance`` across an edge);
* ``0.5 * (log E1(d) - mean over d)``: the shape of the 1st-derivative energy over directions.

``Sigma_b`` (3 parameters, via its matrix logarithm) minimises the squared mismatch, averaged
over the images of the group (group mode) or for one image: a 1-D isotropic search, then
Nelder-Mead. The blur of ``y`` by ``G(3 Sigma_b)`` is exact, done in the Fourier domain on the
mirror-extended image. The raw sigmas (LR pixels, along the principal axes) are then mapped by a
linear calibration ``sigma = (raw - b) / a`` whose constants were fitted on photos that are NOT
the acceptance images (``benchmarks/kernel_calibration.py``: crops of
``samples/cameras/canon/xmp_test.jpg`` and of the first frame of ``fujifilm.mpo``, downscaled by
2-4 with antialiasing to act as sharp HR). It absorbs the scene's own blur and the finite-
difference filters. Accuracy: ``benchmarks/results/kernel_estimation.md``.

Deviation from the paper: AdaSSR estimates the kernel with a separate network/procedure; we use
this training-free estimator and restrict kernels to anisotropic Gaussians.

Flat / structureless inputs: an image whose structured pixels hold no more gradient energy than
its noise carries no blur information. It is skipped in group mode; when no image is usable the
result is the bicubic kernel (the backbone's training assumption, identical to
``--kernel bicubic``) with ``method="fallback-bicubic"``, ``confidence=0`` and the reason in
``diagnostics["reason"]`` -- a camera group should not fail because of one flat picture.
Malformed inputs (wrong shape or type, NaN, no images, images smaller than ``min_side``) raise.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import cv2
import numpy as np
from scipy.optimize import minimize, minimize_scalar

from adapt.degradation import (
    bicubic_kernel,
    covariance_from_params,
    gaussian_kernel,
    kernel_size,
    params_from_covariance,
)
from runtime.errors import ConfigError, ImageError, ShapeError

__all__ = [
    "CALIBRATION",
    "KernelEstimate",
    "KernelEstimationConfig",
    "bicubic_kernel_estimate",
    "estimate_kernel",
]

METHOD_CROSS_SCALE = "cross-scale-derivative-energy"
METHOD_BICUBIC = "bicubic"
METHOD_FALLBACK = "fallback-bicubic"

# Linear calibration ``raw_lr_sigma = a * true_lr_sigma + b`` (LR pixels), per scale and mode.
# Fitted by ``benchmarks/kernel_calibration.py`` (least squares over both principal axes) on
# crops of the two calibration photos; never on tests/data/hr. Rerun it after changing the
# estimator and paste its output here.
CALIBRATION: Mapping[int, Mapping[str, tuple[float, float]]] = MappingProxyType({
    4: MappingProxyType({"group": (1.0, 0.0), "single": (1.0, 0.0)}),
})
_CALIBRATION_FALLBACK_SCALE = 4

_LUMA = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class KernelEstimationConfig:
    """Settings of :func:`estimate_kernel` (defaults are the calibrated ones)."""

    structure_fraction: float = 0.3  # share of each image's pixels (most structured) that count
    n_directions: int = 8  # directions of the directional-derivative energies
    anisotropy_weight: float = 0.5  # weight of the 1st-derivative shape features
    max_images: int = 16  # larger groups: this many images, evenly spaced
    tile: int = 160  # large images: square tiles of this side (LR pixels) ...
    max_tiles_per_image: int = 4  # ... at most this many, the most structured ones
    min_side: int = 32  # smallest usable LR side
    sigma_lr_range: tuple[float, float] = (0.1, 1.8)  # search range of the LR blur sigma
    max_evaluations: int = 300  # Nelder-Mead budget
    calibrate: bool = True  # False: raw cross-scale sigmas (used to fit the calibration)
    min_signal_to_noise: float = 4.0  # structured gradient energy / noise energy to be usable
    coherence_power: float = 0.0  # rank pixels by energy * coherence^p (p > 0 favours edges)
    derivative_sigma: float = 1.0  # Gaussian-derivative filter sigma (LR px); 0: finite differences
    orders: tuple[int, int] = (1, 2)  # derivative orders whose energy ratio measures the blur

    def __post_init__(self) -> None:
        if not 0.02 <= self.structure_fraction <= 1.0:
            raise ConfigError(f"structure_fraction must be in [0.02, 1], got {self.structure_fraction}")
        if tuple(self.orders) not in ((1, 2), (2, 3), (1, 3)):
            raise ConfigError(f"orders must be (1, 2), (2, 3) or (1, 3), got {self.orders}")
        if self.derivative_sigma < 0:
            raise ConfigError(f"derivative_sigma must be >= 0, got {self.derivative_sigma}")
        if self.n_directions < 3:
            raise ConfigError(f"n_directions must be >= 3, got {self.n_directions}")
        if self.anisotropy_weight < 0:
            raise ConfigError(f"anisotropy_weight must be >= 0, got {self.anisotropy_weight}")
        if self.max_images < 1 or self.max_tiles_per_image < 1:
            raise ConfigError("max_images and max_tiles_per_image must be >= 1")
        if self.min_side < 16 or self.tile < self.min_side:
            raise ConfigError(f"need tile >= min_side >= 16, got tile={self.tile}, min_side={self.min_side}")
        lo, hi = self.sigma_lr_range
        if not 0 < lo < hi:
            raise ConfigError(f"sigma_lr_range must be (low, high) with 0 < low < high, got {self.sigma_lr_range}")
        if self.max_evaluations < 10:
            raise ConfigError(f"max_evaluations must be >= 10, got {self.max_evaluations}")


@dataclass(frozen=True)
class KernelEstimate:
    """An estimated (or fixed) HR-resolution blur kernel for ``y_rd = downsample(y_r * k, s)``.

    ``sigma_x >= sigma_y`` are HR-pixel standard deviations along the principal axes; ``theta``
    (radians, in ``(-pi/2, pi/2]``) is the direction of the ``sigma_x`` axis from +x (columns)
    towards +y (rows, downwards). ``kernel`` is the normalised float64 array used by
    :func:`adapt.degradation.blur_downsample` (sides of the parity of ``scale``). For the bicubic
    kernel the sigmas are those of the closest Gaussian (L2), for reference only.
    """

    sigma_x: float
    sigma_y: float
    theta: float
    scale: int
    kernel: np.ndarray = field(compare=False, repr=False)
    method: str
    confidence: float
    diagnostics: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        k = np.array(self.kernel, dtype=np.float64)
        k.setflags(write=False)
        object.__setattr__(self, "kernel", k)
        object.__setattr__(self, "diagnostics", MappingProxyType(dict(self.diagnostics)))

    @property
    def theta_deg(self) -> float:
        return math.degrees(self.theta)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the manifest (angles in degrees, kernel as a 2-D list)."""
        return {
            "method": self.method,
            "scale": self.scale,
            "sigma_x": round(self.sigma_x, 6),
            "sigma_y": round(self.sigma_y, 6),
            "theta_deg": round(self.theta_deg, 4),
            "confidence": round(self.confidence, 4),
            "kernel_size": list(self.kernel.shape),
            "kernel": [[float(v) for v in row] for row in self.kernel],
            "convention": (
                "y_rd = blur_downsample(y_r, kernel, scale): convolve, then sample HR positions "
                "s*j + (s-1)/2 (pixel centres); sigma_x is the major axis, theta_deg from +x "
                "(columns) towards +y (rows, down)"
            ),
            "diagnostics": _jsonable(dict(self.diagnostics)),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KernelEstimate:
        """Inverse of :meth:`to_dict` (e.g. when a later stage reads the manifest)."""
        try:
            kernel = np.asarray(data["kernel"], dtype=np.float64)
            return cls(
                sigma_x=float(data["sigma_x"]),
                sigma_y=float(data["sigma_y"]),
                theta=math.radians(float(data["theta_deg"])),
                scale=int(data["scale"]),
                kernel=kernel,
                method=str(data["method"]),
                confidence=float(data["confidence"]),
                diagnostics=dict(data.get("diagnostics", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"kernel entry of the manifest is malformed ({exc!r}); re-run `adapt` to re-estimate it"
            ) from exc


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return float(value)
    if isinstance(value, (np.integer, int)) and not isinstance(value, bool):
        return int(value)
    return value


# --------------------------------------------------------------------------- bicubic


def _bicubic_equivalent_sigma(scale: int) -> float:
    kb = bicubic_kernel(scale)

    def dist(sigma: float) -> float:
        return float(np.sum((gaussian_kernel(sigma, sigma, 0.0, scale=scale, size=kb.shape[0]) - kb) ** 2))

    res = minimize_scalar(dist, bounds=(0.1 * scale, 1.0 * scale), method="bounded",
                          options={"xatol": 1e-4})
    return float(res.x)


def bicubic_kernel_estimate(scale: int = 4, *, method: str = METHOD_BICUBIC,
                            reason: str | None = None) -> KernelEstimate:
    """The kernel of antialiased bicubic downscaling (``--kernel bicubic``; MATLAB / Pillow).

    ``kernel`` is :func:`adapt.degradation.bicubic_kernel`, so pairs made with it through
    ``blur_downsample`` are bicubic-downscaled exactly like MATLAB ``imresize`` (interior).
    ``sigma_x = sigma_y`` is the closest Gaussian in L2 (1.57 at x4), for reference.
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ConfigError(f"scale must be a positive integer, got {scale!r}")
    sigma = _bicubic_equivalent_sigma(int(scale))
    diagnostics: dict[str, Any] = {"equivalent_gaussian": "L2-closest isotropic Gaussian, same support"}
    if reason is not None:
        diagnostics["reason"] = reason
    return KernelEstimate(
        sigma_x=sigma, sigma_y=sigma, theta=0.0, scale=int(scale), kernel=bicubic_kernel(int(scale)),
        method=method, confidence=1.0 if method == METHOD_BICUBIC else 0.0, diagnostics=diagnostics,
    )


# --------------------------------------------------------------------------- features

def _derivative_taps(sigma: float) -> list[np.ndarray]:
    """1-D correlation taps of the 0th..3rd derivative (exact on polynomials up to that order).

    ``sigma > 0``: sampled derivatives of a Gaussian (grid pixels); their responses are a power of
    the frequency times a Gaussian, so energy ratios of power-law spectra depend on the blur
    only. ``sigma == 0``: the smallest finite differences (3 or 5 taps).
    """
    if sigma > 0:
        r = max(2, math.ceil(4.0 * sigma))
        u = np.arange(-r, r + 1, dtype=np.float64)
        g0 = np.exp(-0.5 * (u / sigma) ** 2)
        g0 /= g0.sum()
        h = [g0, u * g0, (u * u / sigma**2 - 1.0) * g0, (u**3 / sigma**2 - 3.0 * u) * g0]
    else:
        u = np.arange(-2, 3, dtype=np.float64)
        h = [np.array([0.0, 0.25, 0.5, 0.25, 0.0]), np.array([0.0, -0.5, 0.0, 0.5, 0.0]),
             np.array([0.0, 1.0, -2.0, 1.0, 0.0]), np.array([-0.5, 1.0, 0.0, -1.0, 0.5])]
    taps = [h[0]]
    for n in (1, 2, 3):
        t = h[n].copy()
        # Remove responses to lower-order monomials of the same parity, then fix the scale so
        # that correlating with u^n gives n!.
        for m in range(n - 2, -1, -2):
            t -= taps[m] * float((u**m * t).sum()) / float((u**m * taps[m]).sum())
        t *= math.factorial(n) / float((u**n * t).sum())
        taps.append(t)
    return taps


def _dilate1(v: np.ndarray, step: int) -> np.ndarray:
    out = np.zeros((v.size - 1) * step + 1)
    out[::step] = v
    return out


class _DerivativeBank:
    """All partial derivatives of the given orders, as separable filters, optionally dilated.

    ``step = 2`` dilates the taps: applied to an image at full rate this gives, at every pixel,
    the derivative of the x2-downsampled image of that pixel's phase (in its own grid units).
    """

    def __init__(self, sigma: float, orders: tuple[int, ...], step: int = 1) -> None:
        taps = _derivative_taps(sigma)
        if step > 1:
            taps = [_dilate1(t, step) for t in taps]
        self.taps = taps
        self.orders = orders
        # order n -> [(kernel along x, kernel along y)] for d^n / dx^(n-k) dy^k, k = 0..n
        self.filters = {n: [(taps[n - k], taps[k]) for k in range(n + 1)] for n in orders}

    def apply(self, img: np.ndarray, index: np.ndarray) -> dict[int, np.ndarray]:
        """Derivatives at the flat pixel ``index`` of ``img``: order -> (n + 1, len(index))."""
        return {
            n: np.stack([
                cv2.sepFilter2D(img, cv2.CV_64F, kx, ky, borderType=cv2.BORDER_REFLECT).ravel()[index]
                for kx, ky in self.filters[n]
            ])
            for n in self.orders
        }

    def gradient(self, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t0, t1 = self.taps[0], self.taps[1]
        gx = cv2.sepFilter2D(img, cv2.CV_64F, t1, t0, borderType=cv2.BORDER_REFLECT)
        gy = cv2.sepFilter2D(img, cv2.CV_64F, t0, t1, borderType=cv2.BORDER_REFLECT)
        return gx, gy

    def gradient_noise_gain(self) -> float:
        """``E[gx^2 + gy^2]`` for unit white noise."""
        return 2.0 * float(np.sum(self.taps[1] ** 2) * np.sum(self.taps[0] ** 2))


class _Directions:
    """Directional derivative energies ``E_n(d)`` for ``count`` directions in [0, pi)."""

    def __init__(self, count: int, orders: tuple[int, ...]) -> None:
        th = np.arange(count) * np.pi / count
        c, s = np.cos(th), np.sin(th)
        # d^n/dd^n = sum_k C(n, k) c^(n-k) s^k d^n/dx^(n-k)dy^k
        self.v = {n: np.stack([math.comb(n, k) * c ** (n - k) * s**k for k in range(n + 1)], axis=1)
                  for n in orders}

    def energies(self, derivs: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        out = {}
        for n, h in derivs.items():
            m = (h @ h.T) / h.shape[1]
            out[n] = np.einsum("ki,ij,kj->k", self.v[n], m, self.v[n])
        return out


def _luma(image: np.ndarray, index: int) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ImageError(f"image {index} is a {type(image).__name__}, expected a numpy array (HxW or HxWx3)")
    if image.ndim == 3 and image.shape[2] in (3, 4):
        y = image[..., :3].astype(np.float64) @ _LUMA
    elif image.ndim == 3 and image.shape[2] == 1:
        y = image[..., 0].astype(np.float64)
    elif image.ndim == 2:
        y = image.astype(np.float64)
    else:
        raise ShapeError(f"image {index}", image.shape, "(H, W) or (H, W, 3) float in [0, 1]")
    if not np.all(np.isfinite(y)):
        raise ImageError(f"image {index} has NaN or infinite values; pass finite float images in [0, 1]")
    if image.dtype == np.uint8 or y.max(initial=0.0) > 1.5 or y.min(initial=0.0) < -0.5:
        raise ImageError(
            f"image {index} is not in [0, 1] (dtype {image.dtype}, range {y.min():.3g}..{y.max():.3g}); "
            "convert to float32 and divide by 255"
        )
    return y


def _noise_sigma(y: np.ndarray) -> float:
    """Immerkaer's noise estimate on the flattest half of the image (robust to edges)."""
    lap = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
    r = np.abs(cv2.filter2D(y, cv2.CV_64F, lap, borderType=cv2.BORDER_REFLECT))[1:-1, 1:-1]
    g = cv2.Sobel(y, cv2.CV_64F, 1, 0) ** 2 + cv2.Sobel(y, cv2.CV_64F, 0, 1) ** 2
    g = g[1:-1, 1:-1]
    flat = r[g <= np.quantile(g, 0.5)]
    return float(math.sqrt(math.pi / 2.0) * flat.mean() / 6.0) if flat.size else 0.0


def _structure_mask(gx: np.ndarray, gy: np.ndarray, fraction: float,
                    coherence_power: float, border: int = 4) -> tuple[np.ndarray, float]:
    """Top ``fraction`` of pixels by local gradient energy x coherence^p (edges over textures).

    Returns the mask and the mean local gradient energy over it.
    """
    h, w = gx.shape
    win = (5, 5)
    jxx = cv2.boxFilter(gx * gx, -1, win, borderType=cv2.BORDER_REFLECT)
    jxy = cv2.boxFilter(gx * gy, -1, win, borderType=cv2.BORDER_REFLECT)
    jyy = cv2.boxFilter(gy * gy, -1, win, borderType=cv2.BORDER_REFLECT)
    energy = jxx + jyy
    score = energy
    if coherence_power > 0:
        diff = np.sqrt((jxx - jyy) ** 2 + 4.0 * jxy * jxy)
        coherence = diff / np.maximum(energy, 1e-20)
        score = energy * coherence**coherence_power
    mask = np.zeros((h, w), dtype=bool)
    inner = score[border:-border, border:-border]
    if inner.size == 0:
        return mask, 0.0
    threshold = np.quantile(inner, 1.0 - fraction)
    sel = inner > threshold if threshold <= 0 else inner >= threshold
    mask[border:-border, border:-border] = sel
    chosen = energy[border:-border, border:-border][sel]
    return mask, float(chosen.mean()) if chosen.size else 0.0


class _FeatureSpec:
    """Filters and feature layout shared by all samples of one estimate."""

    def __init__(self, config: KernelEstimationConfig) -> None:
        self.low, self.high = config.orders
        orders = (self.low, self.high)
        self.bank = _DerivativeBank(config.derivative_sigma, orders)
        self.bank2 = _DerivativeBank(config.derivative_sigma, orders, step=2)
        self.dirs = _Directions(config.n_directions, orders)
        self.aniso_w = config.anisotropy_weight

    def features(self, derivs: dict[int, np.ndarray]) -> np.ndarray:
        e = self.dirs.energies(derivs)
        lo = np.log(np.maximum(e[self.low], 1e-30))
        hi = np.log(np.maximum(e[self.high], 1e-30))
        return np.concatenate([hi - lo, self.aniso_w * (lo - lo.mean())])


class _Sample:
    """One LR luma tile: its spectrum, structured-pixel mask and own features."""

    def __init__(self, y: np.ndarray, spec: _FeatureSpec, fraction: float, coherence_power: float) -> None:
        h, w = y.shape
        self.shape = (h, w)
        self.spec = spec
        ext = np.concatenate([y, y[::-1]], axis=0)
        ext = np.concatenate([ext, ext[:, ::-1]], axis=1)
        self.spectrum = np.fft.rfft2(ext)
        fy = np.fft.fftfreq(2 * h)[:, None]
        fx = np.fft.rfftfreq(2 * w)[None, :]
        self.fxx, self.fxy, self.fyy = fx * fx, fx * fy, fy * fy
        gx, gy = spec.bank.gradient(y)
        mask, self.structure_energy = _structure_mask(gx, gy, fraction, coherence_power)
        self.index = np.flatnonzero(mask)
        self.noise_sigma = _noise_sigma(y)
        self.n_pixels = int(self.index.size)
        if self.n_pixels:
            self.reference = spec.features(spec.bank.apply(y, self.index))

    def informative(self, min_snr: float) -> bool:
        noise_energy = self.spec.bank.gradient_noise_gain() * self.noise_sigma**2
        return self.n_pixels >= 64 and self.structure_energy > max(min_snr * noise_energy, 1e-10)

    def mismatch(self, cov_lr: np.ndarray) -> np.ndarray:
        """Feature difference between ``y`` and ``downsample_2(y * G(3 cov_lr))`` (4 phases)."""
        c = 3.0 * cov_lr
        t = np.exp(-2.0 * math.pi**2 * (c[0, 0] * self.fxx + 2.0 * c[0, 1] * self.fxy + c[1, 1] * self.fyy))
        h, w = self.shape
        blurred = np.fft.irfft2(self.spectrum * t, s=(2 * h, 2 * w))[:h, :w]
        # Derivatives on the x2-downsampled grid of every phase = dilated filters at full rate.
        return self.reference - self.spec.features(self.spec.bank2.apply(blurred, self.index))


def _cov_from_log(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Covariance ``expm(S)`` of ``S = [[v0, v2], [v2, v1]]``, eigen-sigmas clipped to [lo, hi]."""
    s = np.array([[v[0], v[2]], [v[2], v[1]]])
    w, u = np.linalg.eigh(s)
    w = np.clip(w, 2.0 * math.log(lo), 2.0 * math.log(hi))
    return (u * np.exp(w)) @ u.T


def _tiles(y: np.ndarray, config: KernelEstimationConfig) -> list[np.ndarray]:
    """The image itself, or its most structured ``tile``-sized squares when it is larger."""
    h, w = y.shape
    t = config.tile
    if h * w <= t * t * config.max_tiles_per_image or h < t or w < t:
        return [y]
    gx = cv2.Sobel(y, cv2.CV_64F, 1, 0)
    gy = cv2.Sobel(y, cv2.CV_64F, 0, 1)
    energy = gx * gx + gy * gy
    cands = []
    for r in range(0, h - t + 1, t):
        for c in range(0, w - t + 1, t):
            cands.append((float(np.median(energy[r : r + t, c : c + t])), r, c))
    cands.sort(reverse=True)
    return [y[r : r + t, c : c + t] for _, r, c in cands[: config.max_tiles_per_image]]


def _select_images(images: Sequence[np.ndarray], max_images: int) -> list[int]:
    n = len(images)
    if n <= max_images:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, max_images)})


def estimate_kernel(
    images: Sequence[np.ndarray],
    *,
    scale: int = 4,
    config: KernelEstimationConfig = KernelEstimationConfig(),
) -> KernelEstimate:
    """Estimate one anisotropic Gaussian blur kernel (HR pixels) from LR images of one camera.

    ``images``: LR float images in [0, 1], ``HxW`` or ``HxWx3`` (RGB; luma is used); one image
    is single-image mode, several are pooled into one kernel (group mode). ``scale``: the SR
    factor ``s`` the kernel is for. Returns a :class:`KernelEstimate`; see the module docstring
    for the method, the calibration, and the fallback on structureless input.
    """
    t0 = time.perf_counter()
    if isinstance(images, np.ndarray):
        raise ConfigError("images must be a sequence of arrays, not one array: pass [image]")
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 2:
        raise ConfigError(f"scale must be an integer >= 2, got {scale!r}")
    scale = int(scale)
    images = list(images)
    if not images:
        raise ConfigError("no images given to estimate_kernel: pass at least one LR image")
    lumas = [_luma(img, i) for i, img in enumerate(images)]
    for i, y in enumerate(lumas):
        if min(y.shape) < config.min_side:
            raise ShapeError(f"image {i}", y.shape, f"at least {config.min_side}x{config.min_side} LR pixels")
    chosen = _select_images(lumas, config.max_images)
    spec = _FeatureSpec(config)
    samples: list[tuple[_Sample, float]] = []  # (sample, weight)
    skipped: list[int] = []
    noise: list[float] = []
    for i in chosen:
        tiles = [_Sample(t, spec, config.structure_fraction, config.coherence_power)
                 for t in _tiles(lumas[i], config)]
        good = [s for s in tiles if s.informative(config.min_signal_to_noise)]
        if not good:
            skipped.append(i)
            continue
        noise.append(float(np.median([s.noise_sigma for s in good])))
        samples.extend((s, 1.0 / len(good)) for s in good)
    mode = "group" if len(images) > 1 else "single"
    base_diag: dict[str, Any] = {
        "mode": mode,
        "n_images": len(images),
        "images_used": [i for i in chosen if i not in skipped],
        "images_skipped_flat": skipped,
    }
    if not samples:
        reason = ("no image has structure above its noise (flat or pure-noise images carry no blur "
                  "information); using the bicubic kernel")
        est = bicubic_kernel_estimate(scale, method=METHOD_FALLBACK, reason=reason)
        diag = {**dict(est.diagnostics), **base_diag, "wall_time_s": time.perf_counter() - t0}
        return KernelEstimate(est.sigma_x, est.sigma_y, est.theta, scale, est.kernel, est.method, 0.0, diag)

    weights = np.array([w for _, w in samples])
    weights = weights / weights.sum()

    lo, hi = config.sigma_lr_range

    def loss(v: np.ndarray) -> float:
        cov = _cov_from_log(v, lo, hi)
        total = 0.0
        for (s, _), w in zip(samples, weights):
            d = s.mismatch(cov)
            total += w * float(d @ d)
        return total

    grid = np.linspace(math.log(lo), math.log(hi), 16)
    iso = [loss(np.array([2 * g, 2 * g, 0.0])) for g in grid]
    g0 = grid[int(np.argmin(iso))]
    x0 = np.array([2 * g0, 2 * g0, 0.0])
    simplex = np.array([x0, x0 + [0.4, -0.4, 0.0], x0 + [0.0, 0.0, 0.4], x0 + [0.3, 0.3, 0.0]])
    res = minimize(loss, x0, method="Nelder-Mead",
                   options={"initial_simplex": simplex, "xatol": 1e-3, "fatol": 1e-7,
                            "maxfev": config.max_evaluations})
    cov_lr = _cov_from_log(res.x, lo, hi)
    raw_major, raw_minor, theta = params_from_covariance(cov_lr)
    a, b = _calibration(scale, mode) if config.calibrate else (1.0, 0.0)
    floor = 0.4 / scale  # the map is linear; keep a positive sigma (0.4 HR px) for tiny blurs
    sx = max((raw_major - b) / a, floor) * scale
    sy = max((raw_minor - b) / a, floor) * scale
    if sy > sx:
        sx, sy = sy, sx
    residual = math.sqrt(float(res.fun) / samples[0][0].reference.size)
    n_pix = int(sum(s.n_pixels for s, _ in samples))
    confidence = float(np.clip(1.0 - residual / 0.3, 0.0, 1.0) * min(1.0, n_pix / 4000.0))
    diag = {
        **base_diag,
        "raw_sigma_lr": [raw_major, raw_minor],
        "calibration": [a, b],
        "residual_rms": residual,
        "n_structured_pixels": n_pix,
        "n_tiles": len(samples),
        "noise_sigma": float(np.median(noise)),
        "evaluations": int(res.nfev) + len(grid),
        "wall_time_s": time.perf_counter() - t0,
    }
    kernel = gaussian_kernel(sx, sy, theta, scale=scale, size=kernel_size(sx, scale))
    return KernelEstimate(sx, sy, theta, scale, kernel, METHOD_CROSS_SCALE, confidence, diag)


def _calibration(scale: int, mode: str) -> tuple[float, float]:
    table = CALIBRATION.get(scale, CALIBRATION[_CALIBRATION_FALLBACK_SCALE])
    return table[mode]
