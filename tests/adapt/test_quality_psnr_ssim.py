"""PSNR / SSIM: calibration values, closed-form cases, invariances and errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import convolve2d

from adassr.adapt.quality.psnr_ssim import psnr, ssim
from adassr.runtime.errors import ConfigError, ImageError, ShapeError
from adassr.runtime.images import read_image, to_float32

ROOT = Path(__file__).resolve().parents[2]
CALIB = ROOT / "tests" / "data" / "calibration"
RGB_PSNR = {"I04": 20.99, "I06": 27.01}  # reference values published with these TID2013 crops (NOTICE)
OFFICIAL_SSIM = {"I04": 0.9978, "I06": 0.9989}  # the original SSIM code (on MATLAB rgb2gray)


def _pair(name: str) -> tuple[np.ndarray, np.ndarray]:
    return read_image(CALIB / f"dist_{name}.png").pixels, read_image(CALIB / f"ref_{name}.png").pixels


@pytest.mark.parametrize("name", sorted(RGB_PSNR))
def test_rgb_psnr_matches_reference(name: str) -> None:
    dist, ref = _pair(name)
    assert abs(psnr(dist, ref, channel="rgb") - RGB_PSNR[name]) <= 0.02


@pytest.mark.parametrize("name", sorted(OFFICIAL_SSIM))
def test_gray_ssim_matches_original_code(name: str) -> None:
    dist, ref = _pair(name)
    assert abs(ssim(dist, ref, channel="gray") - OFFICIAL_SSIM[name]) <= 1e-4


def test_identical_images() -> None:
    dist, _ = _pair("I04")
    for channel in ("y", "rgb", "gray"):
        assert psnr(dist, dist, channel=channel) == math.inf
        assert ssim(dist, dist, channel=channel) == 1.0


def test_symmetric() -> None:
    dist, ref = _pair("I06")
    for channel in ("y", "rgb"):
        assert psnr(dist, ref, channel=channel) == psnr(ref, dist, channel=channel)
        assert ssim(dist, ref, channel=channel) == ssim(ref, dist, channel=channel)


def test_psnr_closed_form_on_constant_offsets() -> None:
    base = np.full((32, 32, 3), 100, dtype=np.uint8)
    shifted = base + np.uint8(5)
    assert psnr(shifted, base, channel="rgb") == pytest.approx(10 * math.log10(255**2 / 25))
    dy = 5 * (65.481 + 128.553 + 24.966) / 255  # the BT.601 luma moves by 5 * 219 / 255
    assert psnr(shifted, base) == pytest.approx(10 * math.log10(255**2 / dy**2))


def test_ssim_equals_direct_valid_2d_filtering() -> None:
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (40, 50, 1)).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    x = np.arange(11) - 5.0
    g = np.exp(-x * x / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    fa, fb = a[..., 0].astype(float), b[..., 0].astype(float)

    def f(img: np.ndarray) -> np.ndarray:
        return convolve2d(img, w, mode="valid")

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ma, mb = f(fa), f(fb)
    va, vb, cab = f(fa * fa) - ma**2, f(fb * fb) - mb**2, f(fa * fb) - ma * mb
    expected = (((2 * ma * mb + c1) * (2 * cab + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))).mean()
    assert ssim(a, b) == pytest.approx(expected, rel=1e-12)


def test_input_types_and_crop_border() -> None:
    dist, ref = _pair("I04")
    assert psnr(to_float32(dist), to_float32(ref)) == pytest.approx(psnr(dist, ref), rel=1e-6)
    assert psnr(dist.astype(np.uint16) * 257, ref.astype(np.uint16) * 257) == pytest.approx(psnr(dist, ref), rel=1e-12)
    assert psnr(dist, ref, crop_border=4) == psnr(dist[4:-4, 4:-4], ref[4:-4, 4:-4])
    assert ssim(dist, ref, crop_border=4, channel="rgb") == ssim(dist[4:-4, 4:-4], ref[4:-4, 4:-4], channel="rgb")


def test_errors() -> None:
    dist, ref = _pair("I04")
    with pytest.raises(ShapeError):
        psnr(dist, ref[:-1])
    with pytest.raises(ShapeError):
        ssim(dist[:8, :8], ref[:8, :8])
    for narrow in (np.s_[:40, :10], np.s_[:10, :40]):  # one side under the 11-px window: an error, not NaN
        with pytest.raises(ShapeError, match="at least 11x11"):
            ssim(dist[narrow], ref[narrow])
    with pytest.raises(ConfigError):
        psnr(dist, ref, channel="lab")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        ssim(dist, ref, crop_border=-1)
    with pytest.raises(ConfigError, match="integer"):
        psnr(dist, ref, crop_border=2.5)  # type: ignore[arg-type]


def test_float_images_on_another_scale_are_refused_not_scored() -> None:
    """Floats are on [0, 1]: 8-bit levels stored as float used to give -10 dB without a word."""
    from adassr.adapt.quality.niqe import niqe
    from adassr.runtime.errors import ImageError

    dist, ref = _pair("I04")
    for bad in (dist.astype(np.float32), to_float32(dist) * 2.0 - 1.0):  # 0-255 levels, [-1, 1]
        for metric in (psnr, ssim):
            with pytest.raises(ImageError, match="not on the \\[0, 1\\] scale"):
                metric(bad, ref)
        with pytest.raises(ImageError, match="divide 8-bit levels by 255"):
            niqe(bad)
    overshoot = np.clip(to_float32(dist) * 1.2 - 0.1, -0.2, 1.2)  # a model's unclamped output: scored
    assert math.isfinite(psnr(overshoot, ref))
    with pytest.raises(ImageError, match="NaN") as info:
        psnr(np.full(dist.shape, np.nan, np.float32), ref, channel="gray")
    assert "NIQE" not in str(info.value)
    from adassr.runtime.images.float_range import check_float_range

    for low, high in ((math.nan, math.nan), (0.0, math.inf), (-math.inf, 1.0)):
        with pytest.raises(ImageError, match="NaN or infinite"):  # NaN compared as in range
            check_float_range(low, high)


@pytest.mark.parametrize("channel", ["y", "rgb", "gray"])
def test_errors_name_the_argument_at_fault(channel: str) -> None:
    """A bad reference was reported as "image ..." (with channel gray as "NIQE input"): a helper's hunt."""
    ok = np.zeros((40, 44, 3), np.uint8)
    with pytest.raises(ImageError, match=r"^reference dtype int16 is not supported"):
        psnr(ok, ok.astype(np.int16), channel=channel)  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match=r"^reference: got shape \(1, 40, 44, 3\)"):
        ssim(ok, ok[None], channel=channel)  # type: ignore[arg-type]
    with pytest.raises(ImageError, match=r"^image is float with values in \[0, 255\]"):
        psnr(np.full((40, 44, 3), 255.0, np.float32) * np.linspace(0, 1, 44, dtype=np.float32)[None, :, None], ok,
             channel=channel)  # type: ignore[arg-type]


def _plain_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al. ssim_index.m on one plane: 11x11 Gaussian (sigma 1.5), 'valid' 2-D filtering, mean of the map."""
    x = np.arange(11) - 5.0
    g = np.outer(np.exp(-x * x / 4.5), np.exp(-x * x / 4.5))
    w = g / g.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ma, mb = convolve2d(a, w, mode="valid"), convolve2d(b, w, mode="valid")
    va = convolve2d(a * a, w, mode="valid") - ma**2
    vb = convolve2d(b * b, w, mode="valid") - mb**2
    cab = convolve2d(a * b, w, mode="valid") - ma * mb
    return float((((2 * ma * mb + c1) * (2 * cab + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))).mean())


def _plain_y(rgb: np.ndarray) -> np.ndarray:
    """MATLAB rgb2ycbcr luma of 8-bit RGB, unrounded (BasicSR ``bgr2ycbcr(y_only=True)`` on RGB order)."""
    r, g, b = (rgb[..., c].astype(np.float64) for c in range(3))
    return 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def test_y_channel_scores_match_a_plain_bt601_computation() -> None:
    """R and B coefficients swapped, or the +16 offset dropped (SSIM's C1 is not offset-free), went unnoticed."""
    dist, ref = _pair("I04")
    dist, ref = dist[:96, :128], ref[:96, :128]
    ya, yb = _plain_y(dist), _plain_y(ref)
    assert psnr(dist, ref) == pytest.approx(10 * math.log10(255**2 / np.mean((ya - yb) ** 2)), rel=1e-12)
    assert ssim(dist, ref) == pytest.approx(_plain_ssim(ya, yb), rel=1e-12)


def test_rgb_ssim_is_the_mean_of_the_three_channel_ssims() -> None:
    dist, ref = _pair("I06")
    dist, ref = dist[:64, :80], ref[:64, :80]
    per_channel = [_plain_ssim(dist[..., c].astype(np.float64), ref[..., c].astype(np.float64)) for c in range(3)]
    assert len(set(per_channel)) == 3  # the channels differ: a score of one channel alone would show
    assert ssim(dist, ref, channel="rgb") == pytest.approx(np.mean(per_channel), rel=1e-12)


def test_ssim_of_exactly_one_window() -> None:
    """11x11 is the smallest image SSIM is defined on (one window), not an error."""
    dist, ref = _pair("I04")
    a, b = dist[100:111, 200:211], ref[100:111, 200:211]
    assert ssim(a, b) == pytest.approx(_plain_ssim(_plain_y(a), _plain_y(b)), rel=1e-12)
    assert ssim(dist[100:115, 200:215], ref[100:115, 200:215], crop_border=2) == pytest.approx(
        _plain_ssim(_plain_y(dist[102:113, 202:213]), _plain_y(ref[102:113, 202:213])), rel=1e-12)


def test_a_crop_border_that_leaves_no_pixels_is_an_error_not_nan() -> None:
    dist, ref = _pair("I04")
    small_d, small_r = dist[:20, :30], ref[:20, :30]
    assert math.isfinite(psnr(small_d, small_r, crop_border=9))  # 2x12 pixels left
    for crop in (10, 15):
        with pytest.raises(ShapeError, match="at least 1x1"):
            psnr(small_d, small_r, crop_border=crop)


def test_four_channel_arrays_are_refused() -> None:
    """An RGBA array is not scored (its alpha would count in channel 'rgb'); the CLI drops alpha when reading."""
    dist, ref = _pair("I04")
    alpha = np.full(dist.shape[:2] + (1,), 255, np.uint8)
    for channel in ("y", "rgb"):
        with pytest.raises(ShapeError, match="HxWx3"):
            psnr(np.concatenate([dist, alpha], 2), np.concatenate([ref, alpha], 2), channel=channel)  # type: ignore[arg-type]
