"""NIQE (Mittal, Soundararajan and Bovik 2012), numpy float64 reference (no scipy needed).

A faithful port of the original MATLAB release (``computequality.m``,
``computefeature.m``, ``estimateaggdparam.m``) with its pristine model
(``data/niqe_pris_params.npz``, from the iqa-torch 1.2.1 wheel, Apache-2.0):

1. RGB -> gray with MATLAB ``rgb2gray`` on uint8 (coefficients 0.298936...,
   0.587043..., 0.114020...; result rounded half away from zero to uint8).
   ``convert='y'`` uses the BT.601 luma of MATLAB ``rgb2ycbcr`` on uint8 instead
   (16 + (65.481 R + 128.553 G + 24.966 B) / 255, rounded), as SR papers do.
2. Crop to a multiple of the 96x96 block size (top-left anchored).
3. At each of two scales: MSCN coefficients ``(I - mu) / (sigma + 1)`` with the
   normalised 7x7 Gaussian window (sigma 7/6) and replicate borders; per block
   (96x96, then 48x48) an AGGD fit of the coefficients and of their products with
   four circularly shifted copies (shifts (0,1), (1,0), (1,1), (1,-1), wrapping
   inside the block like MATLAB ``circshift``): 18 features per scale. AGGD shape
   is the first minimiser of ``(r(gamma) - rhatnorm)^2`` over ``gamma = 0.2:0.001:10``.
   The second scale is MATLAB ``imresize(I, 0.5)`` (bicubic a = -0.5 with
   antialiasing, symmetric borders), implemented exactly in :func:`imresize_weights`.
4. All blocks are used (the sharpness selection exists only in the training code).
   ``nanmean`` over blocks per feature, ``nancov`` over blocks without NaN (N - 1
   normalisation), quality = sqrt(d' pinv((C_pris + C_dist) / 2) d) with MATLAB's
   pinv tolerance ``max(size) * norm * eps``.

Input conventions (the original works on 8-bit images): uint8 arrays are used as
is; uint16 arrays are scaled to 8 bits (round(v / 257)); floating arrays are taken
in [0, 1], clipped and quantised to 8 bits (round(255 x)), i.e. scored as if saved as an
8-bit image (values below -0.5 or above 1.5 mean another scale and are refused,
:mod:`adassr.runtime.images.float_range`). ``crop_border`` removes that many pixels on each side first.

Float noise in flat regions: where the 7x7 neighbourhood is constant, the exact MSCN
value is 0 but every implementation computes a rounding residue (about 1e-14) whose
sign decides which AGGD side the sample counts on; no port can reproduce MATLAB's
residues bit for bit. We filter separably (as MATLAB's ``imfilter`` does for a rank-1
kernel on double data), along columns then rows, with a fixed tap order and separate
multiply/add, so results are reproducible across machines and identical in
:mod:`.niqe_torch`. On the calibration images: dist_I04 (no flat areas) matches MATLAB
to 1e-12, dist_I06 (flat sky) to 4e-5; other orders of the same arithmetic (2-D
window, rows first, SVD factors) gave differences of 6e-5 to 1.1e-3 there.

Deviations: the original cannot score images with fewer than two 96x96 blocks
meaningfully (MATLAB's ``nancov`` of a single row is a scalar); we raise
:class:`~adassr.runtime.errors.ShapeError` instead. When fewer than two blocks have all 36
features finite (flat images: an AGGD side without samples gives NaN, as in MATLAB)
the score is NaN. Block statistics are computed with array reshapes (no loop over
blocks); the grid argmin uses the strict monotonicity of ``r(gamma)`` (a binary
search plus an exact check of neighbouring candidates), which returns the same
index as the full argmin.
"""

from __future__ import annotations

import functools
import math
from importlib import resources
from typing import Literal

import numpy as np

from adassr.runtime.errors import ConfigError, ImageError, ShapeError
from adassr.runtime.images.float_range import check_float_range

Convert = Literal["gray", "y"]

BLOCK_SIZE = 96
"""Block side of the original release at the first scale (48 at the second)."""

RGB2GRAY_COEFFS = (0.2989360212937754, 0.5870430744511212, 0.11402090425510325)
"""MATLAB ``rgb2gray`` weights: first row of ``inv([1 .956 .621; 1 -.272 -.647; 1 -1.106 1.703])``."""

BT601_Y_COEFFS = (65.481, 128.553, 24.966)
"""MATLAB ``rgb2ycbcr`` luma row for 8-bit data (divide by 255, add 16)."""

GAUSSIAN_SIZE = 7
GAUSSIAN_SIGMA = 7.0 / 6.0
_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))


def _matlab_colon(start: float, step: float, stop: float) -> np.ndarray:
    """``start:step:stop`` computed as MATLAB does (first half from start, second from stop)."""
    n = int(np.floor((stop - start) / step + 1e-10))
    k = np.arange(n + 1, dtype=np.float64)
    end = start + n * step
    first = start + k * step
    second = end - (n - k) * step
    return np.where(k < n / 2, first, second)


@functools.lru_cache(maxsize=1)
def aggd_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(gam, r_gam, beta_factor, mean_factor)`` over the grid ``0.2:0.001:10``.

    ``r_gam = Gamma(2/g)^2 / (Gamma(1/g) Gamma(3/g))`` (strictly increasing),
    ``beta_factor = sqrt(Gamma(1/g) / Gamma(3/g))``, ``mean_factor = Gamma(2/g) / Gamma(1/g)``.
    Arrays are read-only.
    """
    gam = _matlab_colon(0.2, 0.001, 10.0)
    gamma_fn = np.vectorize(math.gamma, otypes=[np.float64])
    r_gam = gamma_fn(2.0 / gam) ** 2 / (gamma_fn(1.0 / gam) * gamma_fn(3.0 / gam))
    beta = np.sqrt(gamma_fn(1.0 / gam) / gamma_fn(3.0 / gam))
    mean = gamma_fn(2.0 / gam) / gamma_fn(1.0 / gam)
    if not np.all(np.diff(r_gam) > 0):  # pragma: no cover - mathematical property
        raise AssertionError("r(gamma) must be strictly increasing")
    for a in (gam, r_gam, beta, mean):
        a.setflags(write=False)
    return gam, r_gam, beta, mean


@functools.lru_cache(maxsize=1)
def pristine_params() -> tuple[np.ndarray, np.ndarray]:
    """``(mu (36,), cov (36, 36))`` of the original pristine model, float64, read-only."""
    ref = resources.files("adassr.adapt.quality").joinpath("data/niqe_pris_params.npz")
    with ref.open("rb") as fh, np.load(fh, allow_pickle=False) as data:
        mu = np.asarray(data["mu_pris_param"], dtype=np.float64).reshape(36)
        cov = np.asarray(data["cov_pris_param"], dtype=np.float64).reshape(36, 36)
    mu.setflags(write=False)
    cov.setflags(write=False)
    return mu, cov


def gaussian_window_1d() -> np.ndarray:
    """1-D factor of MATLAB ``fspecial('gaussian', 7, 7/6)`` (normalised; outer(g, g) is the 2-D window)."""
    x = np.arange(GAUSSIAN_SIZE, dtype=np.float64) - (GAUSSIAN_SIZE - 1) / 2
    g = np.exp(-(x * x) / (2.0 * GAUSSIAN_SIGMA * GAUSSIAN_SIGMA))
    return g / g.sum()


def _cubic(x: np.ndarray) -> np.ndarray:
    """MATLAB ``imresize`` cubic kernel (a = -0.5)."""
    ax = np.abs(x)
    ax2 = ax * ax
    ax3 = ax2 * ax
    return (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1) + (
        -0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0
    ) * ((ax > 1) & (ax <= 2))


@functools.lru_cache(maxsize=32)
def imresize_weights(in_length: int, scale: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """``(weights, indices)``, each (out, taps), of MATLAB ``imresize`` bicubic along one axis.

    Follows ``imresize.m``'s ``contributions``: antialiasing for scale < 1 (kernel
    ``scale * cubic(scale * x)``, width ``4 / scale``), output length
    ``ceil(in * scale)``, per-row normalised weights, symmetric (mirror, edge
    repeated) index folding (0-based here), all-zero tap columns removed.
    Output ``i`` is ``sum_k weights[i, k] * x[indices[i, k]]``. Read-only.
    """
    if in_length < 1 or scale <= 0:
        raise ConfigError(f"imresize_weights: in_length {in_length} and scale {scale} must be positive")
    out_length = int(np.ceil(in_length * scale))
    kernel_width = 4.0
    if scale < 1:
        def h(x: np.ndarray) -> np.ndarray:
            return scale * _cubic(scale * x)
        kernel_width /= scale
    else:
        h = _cubic
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - kernel_width / 2.0)
    p = int(np.ceil(kernel_width)) + 2
    indices = left[:, None] + np.arange(p, dtype=np.float64)[None, :]
    weights = h(u[:, None] - indices)
    weights = weights / weights.sum(axis=1, keepdims=True)
    aux = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])
    folded = aux[np.mod(indices.astype(np.int64) - 1, aux.size)]
    keep = np.any(weights != 0, axis=0)
    weights = np.ascontiguousarray(weights[:, keep])
    folded = np.ascontiguousarray(folded[:, keep])
    weights.setflags(write=False)
    folded.setflags(write=False)
    return weights, folded


def _resize_axis(x: np.ndarray, axis: int, scale: float) -> np.ndarray:
    weights, indices = imresize_weights(x.shape[axis], scale)
    acc = np.zeros(x.shape[:axis] + (weights.shape[0],) + x.shape[axis + 1 :], dtype=np.float64)
    shape = [1] * x.ndim
    shape[axis] = weights.shape[0]
    for k in range(weights.shape[1]):  # taps in order, as imresizemex accumulates
        acc = acc + weights[:, k].reshape(shape) * np.take(x, indices[:, k], axis=axis)
    return acc


def matlab_imresize(image: np.ndarray, scale: float = 0.5) -> np.ndarray:
    """MATLAB ``imresize(image, scale)`` (bicubic, antialiasing) of a 2-D float64 array.

    Rows (dim 1) are resized first, as MATLAB does for equal scales.
    """
    return _resize_axis(_resize_axis(image, 0, scale), 1, scale)


def _round_half_away(x: np.ndarray) -> np.ndarray:
    return np.floor(x + 0.5)


def to_uint8_levels(image: np.ndarray, what: str = "image") -> np.ndarray:
    """Image as float64 8-bit levels (integers 0..255), HxW or HxWxC (``what`` names it in errors)."""
    if image.dtype == np.uint8:
        return image.astype(np.float64)
    if image.dtype == np.uint16:
        return _round_half_away(image.astype(np.float64) / 257.0)
    if np.issubdtype(image.dtype, np.floating):
        if not np.all(np.isfinite(image)):
            raise ImageError(f"{what} has NaN or infinite values: pass a finite image in [0, 1]")
        if image.size:
            check_float_range(float(image.min()), float(image.max()), what)
        return _round_half_away(np.clip(image.astype(np.float64), 0.0, 1.0) * 255.0)
    raise ImageError(
        f"{what} dtype {image.dtype} is not supported: pass uint8, uint16 or float in [0, 1]"
    )


def to_luma(image: np.ndarray, convert: Convert = "gray", what: str = "NIQE input") -> np.ndarray:
    """The 2-D float64 luminance NIQE scores (integer levels), from HxW, HxWx1 or HxWx3 (``what`` names
    the image in errors)."""
    if convert not in ("gray", "y"):
        raise ConfigError(f"convert must be 'gray' or 'y', got {convert!r}")
    levels = to_uint8_levels(image, what)
    if levels.ndim == 3 and levels.shape[2] == 1:
        levels = levels[:, :, 0]
    if levels.ndim == 2:
        return levels
    if levels.ndim != 3 or levels.shape[2] != 3:
        raise ShapeError(what, image.shape, "HxW, HxWx1 or HxWx3")
    r, g, b = levels[:, :, 0], levels[:, :, 1], levels[:, :, 2]
    if convert == "gray":
        c0, c1, c2 = RGB2GRAY_COEFFS
        return np.minimum(_round_half_away(c0 * r + c1 * g + c2 * b), 255.0)
    c0, c1, c2 = BT601_Y_COEFFS
    return _round_half_away(16.0 + (c0 * r + c1 * g + c2 * b) / 255.0)


def gaussian_blur(image: np.ndarray) -> np.ndarray:
    """``imfilter(image, window, 'replicate')`` with the NIQE window, separably.

    Separable (as MATLAB for a rank-1 kernel on double data): along columns (dim 1)
    first, then rows; taps are accumulated in a fixed order with separate multiply and
    add, so the float64 result is reproducible and equal to :mod:`.niqe_torch`'s.
    """
    g = gaussian_window_1d()
    r = GAUSSIAN_SIZE // 2
    out = image
    for axis in (0, 1):
        padded = np.pad(out, [(r, r) if a == axis else (0, 0) for a in range(2)], mode="edge")
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for k in range(GAUSSIAN_SIZE):
            acc = acc + g[k] * (padded[k : k + n] if axis == 0 else padded[:, k : k + n])
        out = acc
    return out


def mscn(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(structdis, sigma)``: MSCN coefficients with C = 1 and the local deviation."""
    mu = gaussian_blur(image)
    sigma = np.sqrt(np.abs(gaussian_blur(image * image) - mu * mu))
    return (image - mu) / (sigma + 1.0), sigma


def _grid_argmin(values: np.ndarray) -> np.ndarray:
    """First index of min over the grid of ``(r_gam - v)^2`` for each v (index 0 for NaN)."""
    _, r_gam, _, _ = aggd_tables()
    n = r_gam.size
    safe = np.where(np.isnan(values), r_gam[0], values)
    pos = np.searchsorted(r_gam, safe)
    cand = np.clip(pos[..., None] + np.arange(-2, 2), 0, n - 1)
    err = (r_gam[cand] - safe[..., None]) ** 2
    best = np.take_along_axis(cand, np.argmin(err, axis=-1)[..., None], axis=-1)[..., 0]
    return np.where(np.isnan(values), 0, best)


def aggd_fit(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """AGGD fit along the last axis: ``(alpha, beta_l, beta_r, mean_factor)`` like ``estimateaggdparam``.

    NaN where the original yields NaN (no negative or no positive sample); alpha is then
    the first grid value, as MATLAB's ``min`` over an all-NaN vector returns index 1.
    """
    gam, _, beta_tab, mean_tab = aggd_tables()
    sq = samples * samples
    neg = samples < 0
    pos = samples > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        left_std = np.sqrt(np.where(neg, sq, 0.0).sum(-1) / neg.sum(-1))
        right_std = np.sqrt(np.where(pos, sq, 0.0).sum(-1) / pos.sum(-1))
        gammahat = left_std / right_std
        rhat = np.abs(samples).mean(-1) ** 2 / sq.mean(-1)
        rhatnorm = rhat * (gammahat**3 + 1) * (gammahat + 1) / (gammahat**2 + 1) ** 2
    idx = _grid_argmin(rhatnorm)
    return gam[idx], left_std * beta_tab[idx], right_std * beta_tab[idx], mean_tab[idx]


def _blocks(x: np.ndarray, size: int) -> np.ndarray:
    """(H, W) -> (H//size * W//size, size, size) blocks, in any fixed order."""
    h, w = x.shape
    nr, nc = h // size, w // size
    return x[: nr * size, : nc * size].reshape(nr, size, nc, size).transpose(0, 2, 1, 3).reshape(-1, size, size)


def block_features(structdis: np.ndarray, size: int) -> np.ndarray:
    """(N, 18) features of ``computefeature.m`` for each size x size block."""
    blocks = _blocks(structdis, size)
    flat = blocks.reshape(blocks.shape[0], -1)
    alpha, bl, br, _ = aggd_fit(flat)
    feats = [alpha, (bl + br) / 2.0]
    for shift in _SHIFTS:
        pair = flat * np.roll(blocks, shift, axis=(1, 2)).reshape(flat.shape)
        alpha, bl, br, mean_factor = aggd_fit(pair)
        feats.extend([alpha, (br - bl) * mean_factor, bl, br])
    return np.stack(feats, axis=1)


def niqe_features(luma: np.ndarray, block_size: int = BLOCK_SIZE) -> np.ndarray:
    """(N, 36) per-block features of a 2-D float64 image at two scales."""
    h, w = luma.shape
    nr, nc = h // block_size, w // block_size
    if nr * nc < 2:
        raise ShapeError(
            "NIQE input (after crop_border)", (h, w),
            f"at least two {block_size}x{block_size} blocks (e.g. {block_size}x{2 * block_size})",
        )
    image = luma[: nr * block_size, : nc * block_size].astype(np.float64)
    feats = []
    for scale in (1, 2):
        structdis, _ = mscn(image)
        feats.append(block_features(structdis, block_size // scale))
        if scale == 1:
            image = matlab_imresize(image, 0.5)
    return np.concatenate(feats, axis=1)


def pinv_matlab(a: np.ndarray) -> np.ndarray:
    """Pseudo-inverse with MATLAB's default tolerance ``max(size) * norm(a) * eps``."""
    u, s, vt = np.linalg.svd(a)
    tol = max(a.shape) * (s[0] if s.size else 0.0) * np.finfo(np.float64).eps
    keep = s > tol
    return (vt[keep].T / s[keep]) @ u[:, keep].T


def niqe_distance(features: np.ndarray) -> float:
    """NIQE quality from (N, 36) block features (NaN handling as ``nanmean``/``nancov``)."""
    mu_p, cov_p = pristine_params()
    valid = ~np.isnan(features)
    with np.errstate(invalid="ignore", divide="ignore"):  # an all-NaN column gives NaN, as nanmean
        mu_d = np.where(valid, features, 0.0).sum(axis=0) / valid.sum(axis=0)
    complete = features[~np.isnan(features).any(axis=1)]
    if complete.shape[0] < 2:
        return float("nan")
    cov_d = np.cov(complete, rowvar=False)
    diff = mu_p - mu_d
    value = diff @ pinv_matlab((cov_p + cov_d) / 2.0) @ diff
    return float(np.sqrt(max(value, 0.0)))  # >= 0 up to rounding (PSD form)


def niqe(image: np.ndarray, *, crop_border: int = 0, convert: Convert = "gray") -> float:
    """NIQE of one image (lower is better). See the module docstring for input conventions.

    ``image``: HxW, HxWx1 or HxWx3 RGB; uint8, uint16 or float in [0, 1].
    ``crop_border``: pixels removed on each side before scoring (SR papers use the scale).
    ``convert``: ``'gray'`` (original ``rgb2gray``) or ``'y'`` (BT.601 Y).
    Returns NaN when fewer than two blocks give finite features (e.g. flat images);
    raises :class:`~adassr.runtime.errors.ShapeError` below two 96x96 blocks.
    """
    if isinstance(crop_border, bool) or not isinstance(crop_border, (int, np.integer)) or crop_border < 0:
        raise ConfigError(f"crop_border must be an integer >= 0, got {crop_border!r}")
    luma = to_luma(np.asarray(image), convert)
    if crop_border:
        luma = luma[crop_border:-crop_border, crop_border:-crop_border]
    return niqe_distance(niqe_features(luma))
