"""Cross-scale derivative statistics of one LR luma image (or tile).

For an image ``y`` and a candidate LR blur covariance ``C`` the image ``z`` is ``y`` blurred by
``G(3 C)`` and downsampled by 2. The statistics are directional derivative energies
``E_n(d) = sum over pixels of (d^n y / dd^n)^2`` for orders ``n`` (default 1 and 2) and
``n_directions`` directions ``d`` in [0, pi). ``z``'s energies are pooled over all four
downsampling phases: the derivative filters dilated by 2 applied to the blurred ``y`` at full
rate give, at each pixel, the derivative of the downsampled image of that pixel's phase (in
``z``'s own grid units), so the four phases together cover every pixel of ``y`` exactly once.
Features are contrast free: ``log E_hi(d) - log E_lo(d)`` (the blur along ``d``) and
``w * (log E_lo(d) - mean_d log E_lo)`` (the shape over directions). Optionally the expected share
of white noise is subtracted from each energy first (``CrossScaleSample``'s ``subtract_sigma``).
"""

from __future__ import annotations

import copy
import math

import cv2
import numpy as np

from adassr.adapt.kernel.too_sharp import too_sharp
from adassr.runtime.errors import ShapeError

__all__ = ["FeatureSpec", "CrossScaleSample", "noise_sigma"]


def derivative_taps(sigma: float) -> list[np.ndarray]:
    """1-D correlation taps of the 0th..3rd derivative (exact on polynomials of that order).

    ``sigma == 0``: the smallest finite differences (smoothing ``[1, 2, 1] / 4``, central
    difference, ``[1, -2, 1]``, 5-tap 3rd difference). ``sigma > 0``: sampled derivatives of a
    Gaussian of that sigma (grid pixels).
    """
    if sigma > 0:
        r = max(2, math.ceil(4.0 * sigma))
        u = np.arange(-r, r + 1, dtype=np.float64)
        g0 = np.exp(-0.5 * (u / sigma) ** 2)
        g0 /= g0.sum()
        raw = [g0, u * g0, (u * u / sigma**2 - 1.0) * g0, (u**3 / sigma**2 - 3.0 * u) * g0]
    else:
        u = np.arange(-2, 3, dtype=np.float64)
        raw = [np.array([0.0, 0.25, 0.5, 0.25, 0.0]), np.array([0.0, -0.5, 0.0, 0.5, 0.0]),
               np.array([0.0, 1.0, -2.0, 1.0, 0.0]), np.array([-0.5, 1.0, 0.0, -1.0, 0.5])]
    taps = [raw[0]]
    for n in (1, 2, 3):
        t = raw[n].copy()
        # No response to lower monomials of the same parity; correlating with u^n gives n!.
        for m in range(n - 2, -1, -2):
            t -= taps[m] * float((u**m * t).sum()) / float((u**m * taps[m]).sum())
        t *= math.factorial(n) / float((u**n * t).sum())
        taps.append(t)
    return taps


NOISE_GRID = 96  # frequency samples per axis of the blurred noise gain
NOISE_FLOOR = 0.1  # noise subtraction keeps at least this share of each raw directional energy
NOISE_FREQ = np.fft.fftfreq(NOISE_GRID)
_NOISE_FXX = (NOISE_FREQ**2)[None, :]
_NOISE_FYY = (NOISE_FREQ**2)[:, None]
_NOISE_FXY = np.outer(NOISE_FREQ, NOISE_FREQ)


def _response(taps: np.ndarray) -> np.ndarray:
    """``sum_u taps[u] exp(-2 pi i f u)`` at :data:`NOISE_FREQ` (taps centred)."""
    u = np.arange(taps.size) - taps.size // 2
    return np.exp(-2j * np.pi * NOISE_FREQ[:, None] * u[None, :]) @ taps


def _dilate(v: np.ndarray, step: int) -> np.ndarray:
    out = np.zeros((v.size - 1) * step + 1)
    out[::step] = v
    return out


class DerivativeBank:
    """All partial derivatives of the given orders as separable filters, optionally dilated."""

    def __init__(self, sigma: float, orders: tuple[int, ...], step: int = 1) -> None:
        taps = derivative_taps(sigma)
        if step > 1:
            taps = [_dilate(t, step) for t in taps]
        self.taps = taps
        self.orders = orders
        # order n -> [(taps along x, taps along y)] for d^n / dx^(n-k) dy^k, k = 0..n
        self.filters = {n: [(taps[n - k], taps[k]) for k in range(n + 1)] for n in orders}
        # Frequency responses of those filters at NOISE_FREQ (rows f_y, columns f_x).
        self._responses = {n: np.stack([np.outer(_response(ky), _response(kx)) for kx, ky in self.filters[n]])
                           for n in orders}

    def apply(self, img: np.ndarray, index: np.ndarray) -> dict[int, np.ndarray]:
        """Derivatives at the flat pixel ``index``: order -> array (n + 1, len(index))."""
        return {
            n: np.stack([
                cv2.sepFilter2D(img, cv2.CV_64F, kx, ky, borderType=cv2.BORDER_REFLECT).ravel()[index]
                for kx, ky in self.filters[n]
            ])
            for n in self.orders
        }

    def gradient_energy(self, img: np.ndarray) -> np.ndarray:
        t0, t1 = self.taps[0], self.taps[1]
        gx = cv2.sepFilter2D(img, cv2.CV_64F, t1, t0, borderType=cv2.BORDER_REFLECT)
        gy = cv2.sepFilter2D(img, cv2.CV_64F, t0, t1, borderType=cv2.BORDER_REFLECT)
        return gx * gx + gy * gy

    def noise_gram(self, n: int, transfer_sq: np.ndarray | None = None) -> np.ndarray:
        """``E[h h^T]`` per pixel for unit white noise, ``h`` the ``n + 1`` partial derivatives of
        order ``n`` (what ``apply`` returns for one pixel). ``transfer_sq``: the squared transfer
        function of a blur applied before the derivatives, sampled at :data:`NOISE_FREQ` (rows
        f_y, columns f_x); ``None``: no blur (the taps' exact inner products)."""
        if transfer_sq is None:
            flat = [np.outer(ky, kx).ravel() for kx, ky in self.filters[n]]
            return np.array([[float(a @ b) for b in flat] for a in flat])
        resp = self._responses[n]
        return np.einsum("kyx,lyx,yx->kl", resp, resp.conj(), transfer_sq).real / transfer_sq.size

    def gradient_noise_gain(self) -> float:
        """``E[gx^2 + gy^2]`` for unit white noise."""
        return 2.0 * float(np.sum(self.taps[1] ** 2) * np.sum(self.taps[0] ** 2))


class FeatureSpec:
    """Filters and feature layout shared by all samples of one estimate."""

    def __init__(self, *, derivative_sigma: float, orders: tuple[int, int], n_directions: int,
                 anisotropy_weight: float) -> None:
        self.low, self.high = orders
        self.bank = DerivativeBank(derivative_sigma, (self.low, self.high))
        self.bank2 = DerivativeBank(derivative_sigma, (self.low, self.high), step=2)
        th = np.arange(n_directions) * np.pi / n_directions
        c, s = np.cos(th), np.sin(th)
        # d^n / dd^n = sum_k C(n, k) c^(n-k) s^k d^n / dx^(n-k) dy^k
        self.coef = {n: np.stack([math.comb(n, k) * c ** (n - k) * s**k for k in range(n + 1)], axis=1)
                     for n in (self.low, self.high)}
        self.anisotropy_weight = anisotropy_weight
        self.size = 2 * n_directions

    def features(self, derivs: dict[int, np.ndarray], noise: dict[int, np.ndarray] | None = None) -> np.ndarray:
        """The feature vector of derivatives at the counted pixels (``apply``'s output). ``noise``:
        order -> the expected noise part of ``h @ h.T``, subtracted from each directional energy,
        which keeps at least :data:`NOISE_FLOOR` of its raw value."""
        logs = {}
        for n, h in derivs.items():
            m = h @ h.T
            e = np.einsum("ki,ij,kj->k", self.coef[n], m, self.coef[n])
            if noise is not None:
                e = np.maximum(e - np.einsum("ki,ij,kj->k", self.coef[n], noise[n], self.coef[n]), NOISE_FLOOR * e)
            logs[n] = np.log(np.maximum(e, 1e-30))
        lo, hi = logs[self.low], logs[self.high]
        return np.concatenate([hi - lo, self.anisotropy_weight * (lo - lo.mean())])


def noise_sigma(y: np.ndarray, clipped: np.ndarray | None = None) -> float:
    """Immerkaer's noise estimate over the flatter half of the image (texture inflates it).

    Clipped areas are left out first: pixels at black or white whose 3x3 neighbourhood is constant
    (blown highlights, black letterbox bars). They carry no noise because
    clipping removed it; where they made up half the image, the flatter half was all zeros and the
    estimate fell to 0, which switched off the flat-image check, the pixel filter and the group's
    noise subtraction (a far too sharp kernel). Constant areas at other levels (an 8-bit sky) count.
    """
    lap = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
    r = np.abs(cv2.filter2D(y, cv2.CV_64F, lap, borderType=cv2.BORDER_REFLECT))[1:-1, 1:-1]
    g = (cv2.Sobel(y, cv2.CV_64F, 1, 0) ** 2 + cv2.Sobel(y, cv2.CV_64F, 0, 1) ** 2)[1:-1, 1:-1]
    if r.size == 0:
        return 0.0
    kept = ~(_clipped(y) if clipped is None else clipped)[1:-1, 1:-1]
    if np.count_nonzero(kept) >= MIN_NOISE_PIXELS:  # else the image is (nearly) all clipped: no estimate to save
        r, g = r[kept], g[kept]
    flat = r[g <= np.quantile(g, 0.5)]
    return float(math.sqrt(math.pi / 2.0) * flat.mean() / 6.0)


MIN_NOISE_PIXELS = 64
"""The fewest unclipped pixels :func:`noise_sigma` estimates from."""


CLIP_REACH = 8
"""LR pixels around a clipped area that do not count as structure in :meth:`CrossScaleSample.informative`:
the edge of a blown highlight or a letterbox bar is made by clipping, not by the lens, so a frame
whose only structure is such an edge (a flat noisy frame half blown out) carries no blur information
and is skipped. The fit itself leaves out only the clipped pixels: on the development photos with
simulated sensor clipping, leaving out their surroundings too lost more data than it removed bias
(benchmarks/README.md, "Sensor clipping")."""


CLIP_AWAY_SHARE = 0.25
"""Below this share of a tile's unclipped pixels away from clipping, the flat-image check reads all
its unclipped pixels (a tile mostly blown out keeps its clipped edges' blurred surroundings)."""


FAINT_STRUCTURE = 2.0 / 255
"""Structure amplitude (the root of a tile's top-30% local gradient energy over white noise's gain, in
luma units) below which a tile is faint whatever its noise estimate says: steps of one or two 8-bit
levels are JPEG's quantised block means or banding more often than edges a lens blurred."""

LOW_CONTRAST = 7.0 / 255
"""Below this structure amplitude a tile is faint unless it also stands out at :data:`COARSE_FACTOR`
times coarser scale (:data:`COARSE_MIN_SNR`). JPEG removes the high band that the noise estimate
reads, so a flat noisy frame after JPEG looked structured at its own scale (benchmarks/README.md,
"Flat frames after JPEG"); averaged down by 4, its noise is white again and measurable."""

COARSE_FACTOR = 4
COARSE_MIN_SIDE = 24
"""Coarse check only where the averaged tile keeps this many pixels per side (else it is skipped)."""
COARSE_MIN_SNR = 16.0
"""Top-30% gradient energy over the noise's, at the coarse scale, that a low-contrast tile needs."""
COARSE_SPREAD = 4
"""Coarse pixels beyond the blocks near clipping that still see a clipped edge (the 5x5 box and the
5-tap derivative filters each reach 2): the coarse check leaves them out too."""
QUANTISATION_SIGMA = 1.0 / (255 * math.sqrt(12.0))
"""The smallest noise sigma the coarse check assumes: 8-bit rounding (a constant area reads as 0)."""


def coarse_signal_to_noise(y: np.ndarray, bank: DerivativeBank, away: np.ndarray | None = None) -> float | None:
    """``y`` averaged down by :data:`COARSE_FACTOR`: mean of its top 30% local (5x5) gradient energy
    over white noise's at its noise estimate (at least :data:`QUANTISATION_SIGMA`); ``None`` when the
    averaged image is under :data:`COARSE_MIN_SIDE` pixels per side. ``away`` (``y``'s shape): the
    pixels far enough from clipping to count (:data:`CLIP_REACH`; default all), as at full scale:
    a blown lamp's edge in a flat frame is clipping's, not structure."""
    f = COARSE_FACTOR
    h, w = (y.shape[0] // f) * f, (y.shape[1] // f) * f
    if min(h, w) < COARSE_MIN_SIDE * f:
        return None
    c = cv2.resize(np.ascontiguousarray(y[:h, :w]), (w // f, h // f), interpolation=cv2.INTER_AREA)
    b = CrossScaleSample.BORDER
    energy = cv2.boxFilter(bank.gradient_energy(c), -1, (5, 5), borderType=cv2.BORDER_REFLECT)[b:-b, b:-b]
    if away is not None and not away.all():
        # a block with any pixel near clipping, and the blocks the 5x5 box and the 5-tap filters spread it to
        near = cv2.resize(np.ascontiguousarray(~away[:h, :w], dtype=np.float32), (w // f, h // f),
                          interpolation=cv2.INTER_AREA) > 0
        block_away = _away_from(near, COARSE_SPREAD)[b:-b, b:-b]
        if np.count_nonzero(block_away) >= CLIP_AWAY_SHARE * block_away.size:  # else its edges are all it has
            energy = energy[block_away]
    top = energy[energy >= np.quantile(energy, 0.7)]
    sigma = max(noise_sigma(c), QUANTISATION_SIGMA)
    return float(top.mean()) / (bank.gradient_noise_gain() * sigma**2)


def _away_from(clipped: np.ndarray, reach: int) -> np.ndarray:
    """Pixels farther than ``reach`` from any ``clipped`` pixel (all of them in most photos)."""
    if not clipped.any():
        return np.ones(clipped.shape, dtype=bool)
    if reach <= 0:
        return ~clipped
    size = 2 * reach + 1
    near: np.ndarray = cv2.dilate(clipped.astype(np.uint8), np.ones((size, size), np.uint8)).astype(bool)
    return ~near


CLIP_MARGIN = 0.5 / 255
"""How close to 0 or 1 a value counts as clipped (half an 8-bit level)."""


def _clipped(y: np.ndarray) -> np.ndarray:
    """Pixels at black or white (within :data:`CLIP_MARGIN`) whose 3x3 neighbourhood is constant."""
    kernel = np.ones((3, 3), np.uint8)
    work = np.ascontiguousarray(y, dtype=np.float32)
    constant = cv2.dilate(work, kernel) == cv2.erode(work, kernel)
    return constant & ((work <= CLIP_MARGIN) | (work >= 1.0 - CLIP_MARGIN))


class CrossScaleSample:
    """One LR luma image or tile: spectrum, counted pixels and reference features.

    ``fraction`` < 1 keeps only the most structured pixels (local gradient energy); 1 keeps every
    pixel but a 4-pixel border. All pixels is the scale-consistent choice: a mask chosen on ``y``
    covers a narrower part of ``z``'s (twice as wide, in ``y`` pixels) edge profiles, which biased
    the estimate on scale-invariant test scenes (dead leaves).

    ``pixel_snr`` > 0 further drops the pixels whose local (5x5) gradient energy is below
    ``pixel_snr`` times white noise's at the tile's estimated noise sigma, keeping at least the
    ``min_kept`` most structured share. Where noise dominates (smooth skin or sky at 5/255), it
    reads as a very sharp kernel and pins the minor axis at the search floor; on clean or
    textured images (nearly) every pixel passes, so the calibration still holds.

    ``leave_out_too_sharp`` leaves out content drawn after capture (burnt-in text, hot pixels:
    :mod:`adassr.adapt.kernel.too_sharp`); ``n_too_sharp`` counts the pixels it left out.
    ``left_out`` (a boolean mask of ``y``'s shape) leaves out pixels the caller found, before that
    rule (a sensor's defects: :mod:`adassr.adapt.kernel.fixed_defects`); ``n_fixed_defects`` counts
    those that would have been counted.

    ``subtract_sigma`` > 0 subtracts the expected contribution of white noise of that sigma
    (closed form, :meth:`DerivativeBank.noise_gram`) from each directional energy of ``y`` and,
    for every candidate blur, of ``z`` (the noise blurred by ``G(3 C)`` and seen through the
    dilated filters); each energy keeps at least :data:`NOISE_FLOOR` of its raw value. The caller
    chooses the sigma (``estimate_kernel``: the group's smallest per-image estimate).
    """

    BORDER = 4

    def __init__(self, y: np.ndarray, spec: FeatureSpec, fraction: float, pixel_snr: float = 0.0,
                 min_kept: float = 0.3, subtract_sigma: float = 0.0, leave_out_too_sharp: bool = False,
                 left_out: np.ndarray | None = None) -> None:
        h, w = y.shape
        self.shape = (h, w)
        self.spec = spec
        ext = np.concatenate([y, y[::-1]], axis=0)
        ext = np.concatenate([ext, ext[:, ::-1]], axis=1)
        self.spectrum = np.fft.rfft2(ext)  # mirror extension: no wrap-around edges when blurring
        fy = np.fft.fftfreq(2 * h)[:, None]
        fx = np.fft.rfftfreq(2 * w)[None, :]
        self.fxx, self.fxy, self.fyy = fx * fx, fx * fy, fy * fy
        b = self.BORDER
        energy = cv2.boxFilter(spec.bank.gradient_energy(y), -1, (5, 5), borderType=cv2.BORDER_REFLECT)
        clipped = _clipped(y)
        usable = ~clipped[b:h - b, b:w - b]  # clipped pixels carry no blur: never counted
        inner = energy[b:h - b, b:w - b][usable]
        away = _away_from(clipped, CLIP_REACH)
        structural = energy[b:h - b, b:w - b][away[b:h - b, b:w - b]]
        if structural.size < CLIP_AWAY_SHARE * inner.size:  # mostly clipped: its edges are all it has
            structural = inner
        mask = np.zeros((h, w), dtype=bool)
        self.noise_sigma = noise_sigma(y, clipped)
        if inner.size:
            keep = inner >= np.quantile(inner, 1.0 - fraction) if fraction < 1.0 else np.ones_like(inner, bool)
            if pixel_snr > 0:
                above = inner >= pixel_snr * spec.bank.gradient_noise_gain() * self.noise_sigma**2
                if above.mean() < min_kept:
                    above = inner >= np.quantile(inner, 1.0 - min_kept)
                keep &= above
            # a pixel without any gradient carries no blur: where most are flat (an 8-bit sky, a graphic)
            # their tie at 0 met every quantile above, and a flat image with one dot was fitted on all its
            # pixels, at full confidence
            keep &= inner > 0
            placed = np.zeros(usable.shape, dtype=bool)
            placed[usable] = keep
            mask[b:h - b, b:w - b] = placed
        self.n_fixed_defects = 0
        if left_out is not None:
            if left_out.shape != y.shape:
                raise ShapeError("CrossScaleSample left_out", tuple(left_out.shape), f"the tile's shape {y.shape}")
            self.n_fixed_defects = int(np.count_nonzero(left_out & mask))
            mask &= ~left_out
        self.n_too_sharp = 0
        if leave_out_too_sharp and mask.any():
            drawn = too_sharp(y, spec.bank, mask)
            self.n_too_sharp = int(np.count_nonzero(drawn & mask))
            mask &= ~drawn
        if structural.size:
            top = structural[structural >= np.quantile(structural, 0.7)]
            self.structure_energy = float(top.mean())
        else:
            self.structure_energy = 0.0
        self.faint = self._faint(y, away)
        self.index = np.flatnonzero(mask)
        self.n_pixels = int(self.index.size)
        self._derivs = spec.bank.apply(y, self.index) if self.n_pixels else None
        self._set_subtracted_noise(subtract_sigma)

    def _faint(self, y: np.ndarray, away: np.ndarray) -> bool:
        """Whether the tile's structure is faint: below :data:`FAINT_STRUCTURE`, or below
        :data:`LOW_CONTRAST` and no more than noise at the coarse scale. A flat noisy frame after JPEG
        is faint, and so is a dim, densely textured photo: the estimate prefers the tiles that are not
        (``estimate._usable_tiles``)."""
        amplitude = math.sqrt(self.structure_energy / self.spec.bank.gradient_noise_gain())
        if amplitude >= LOW_CONTRAST:
            return False
        if amplitude < FAINT_STRUCTURE:
            return True
        snr = coarse_signal_to_noise(y, self.spec.bank, away)
        return snr is not None and snr < COARSE_MIN_SNR

    def _set_subtracted_noise(self, sigma: float) -> None:
        self.noise_var = sigma**2 * self.n_pixels  # the subtracted noise part's scale
        noise = ({n: self.noise_var * self.spec.bank.noise_gram(n) for n in (self.spec.low, self.spec.high)}
                 if self.noise_var > 0 else None)
        self.reference = self.spec.features(self._derivs, noise) if self._derivs is not None else None

    def subtracting(self, sigma: float) -> CrossScaleSample:
        """This sample with ``subtract_sigma=sigma``, without recomputing its spectrum or mask."""
        other = copy.copy(self)
        other._set_subtracted_noise(sigma)
        return other

    def informative(self, min_snr: float) -> bool:
        """Whether the top 30% of local gradient energy stands above the noise's share."""
        noise_energy = self.spec.bank.gradient_noise_gain() * self.noise_sigma**2
        return self.n_pixels >= 64 and self.structure_energy > max(min_snr * noise_energy, 1e-10)

    def mismatch(self, cov_lr: np.ndarray) -> np.ndarray:
        """``features(y) - features(downsample_2(y * G(3 cov_lr)))`` (the 4 phases pooled)."""
        c = 3.0 * cov_lr
        t = np.exp(-2.0 * math.pi**2 * (c[0, 0] * self.fxx + 2.0 * c[0, 1] * self.fxy + c[1, 1] * self.fyy))
        h, w = self.shape
        blurred = np.fft.irfft2(self.spectrum * t, s=(2 * h, 2 * w))[:h, :w]
        noise = None
        if self.noise_var > 0:
            tsq = np.exp(-4.0 * math.pi**2 * (c[0, 0] * _NOISE_FXX + 2.0 * c[0, 1] * _NOISE_FXY + c[1, 1] * _NOISE_FYY))
            noise = {n: self.noise_var * self.spec.bank2.noise_gram(n, tsq) for n in (self.spec.low, self.spec.high)}
        return self.reference - self.spec.features(self.spec.bank2.apply(blurred, self.index), noise)
