"""Kernel generation and blur+downsample geometry (adassr.adapt.degradation)."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from adassr.adapt.degradation import (
    MAX_KERNEL_SIDE,
    bicubic_kernel,
    blur_downsample,
    box_kernel,
    covariance_from_params,
    cubic,
    gaussian_kernel,
    jpeg_roundtrip,
    kernel_covariance,
    kernel_size,
    params_from_covariance,
)
from adassr.runtime.errors import ConfigError, ShapeError

HR = Path(__file__).resolve().parents[1] / "data" / "hr"


def _photo(name: str = "astronaut") -> np.ndarray:
    with Image.open(HR / f"{name}.png") as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


@pytest.mark.parametrize("scale", [1, 2, 3, 4])
@pytest.mark.parametrize("params", [(0.8, 0.8, 0.0), (2.4, 0.8, 0.5), (3.2, 1.2, -1.2), (1.6, 1.2, 2.0)])
def test_gaussian_kernel_is_normalised_symmetric_and_parity_matched(scale, params):
    k = gaussian_kernel(*params, scale=scale)
    assert k.shape[0] == k.shape[1] == kernel_size(max(params[:2]), scale)
    assert k.shape[0] % 2 == scale % 2
    assert k.sum() == pytest.approx(1.0, abs=1e-12)
    assert (k >= 0).all()
    np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-15)  # point symmetric: conv == corr


@pytest.mark.parametrize("scale", [3, 4])
@pytest.mark.parametrize("sx,sy,deg", [(2.4, 0.8, 0), (2.4, 0.8, 30), (3.2, 1.2, 120),
                                        (1.6, 1.2, 75), (3.2, 3.2, 0), (0.8, 0.8, 0)])
def test_second_moments_recover_sigmas_and_angle(scale, sx, sy, deg):
    k = gaussian_kernel(sx, sy, math.radians(deg), scale=scale, size=36 if scale % 2 == 0 else 35)
    ex, ey, eth = params_from_covariance(kernel_covariance(k))
    assert ex == pytest.approx(sx, rel=2e-3)
    assert ey == pytest.approx(sy, rel=2e-3)
    if sx != sy:
        d = (math.degrees(eth) - deg) % 180.0
        assert min(d, 180.0 - d) < 0.05


def test_angle_convention_x_right_y_down():
    wide_x = gaussian_kernel(3.0, 1.0, 0.0, size=31)
    cov = kernel_covariance(wide_x)
    assert cov[0, 0] > 8 * cov[1, 1]  # theta = 0: major axis along columns (x)
    assert wide_x[15, 15 + 4] > wide_x[15 + 4, 15]
    wide_y = gaussian_kernel(3.0, 1.0, math.pi / 2, size=31)
    np.testing.assert_allclose(wide_y, wide_x.T, atol=1e-12)
    diag = kernel_covariance(gaussian_kernel(3.0, 1.0, math.pi / 4, size=31))
    assert diag[0, 1] > 0  # +45 deg turns +x towards +y (down): x and y grow together
    k = gaussian_kernel(3.0, 1.0, math.pi / 4, size=31)
    assert k[20, 20] > k[10, 20]


def test_covariance_round_trip_and_ranges():
    for sx, sy, th in [(2.0, 1.0, 0.3), (2.0, 1.0, 0.3 + math.pi), (1.0, 2.0, 0.0), (1.5, 1.5, 1.0)]:
        cov = covariance_from_params(sx, sy, th)
        ex, ey, eth = params_from_covariance(cov)
        assert ex >= ey
        assert -math.pi / 2 < eth <= math.pi / 2
        np.testing.assert_allclose(covariance_from_params(ex, ey, eth), cov, atol=1e-12)
    assert params_from_covariance(np.eye(2) * 4.0) == (2.0, 2.0, 0.0)
    with pytest.raises(ConfigError):
        covariance_from_params(0.0, 1.0, 0.0)
    with pytest.raises(ConfigError):
        params_from_covariance(np.array([[1.0, 0.0], [0.0, -1.0]]))


def test_kernel_size_rules():
    assert kernel_size(1.0, 1) == 7
    assert kernel_size(1.0, 3) == 7
    assert kernel_size(1.0, 4) == 8
    assert kernel_size(0.1, 4) == 6  # at least scale + 2
    with pytest.raises(ConfigError):
        gaussian_kernel(1.0, 1.0, 0.0, scale=4, size=7)  # odd side for an even scale


def test_kernel_sizes_beyond_reason_are_refused_with_a_message():
    """A fractional size was blamed on parity, inf overflowed, and sigma 1e5 asked for 2.6 TiB."""
    with pytest.raises(ConfigError, match="whole number of taps"):
        gaussian_kernel(1.0, 1.0, size=2.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="whole number of taps"):
        gaussian_kernel(1.0, 1.0, size=True)
    for bad in (math.inf, math.nan, 0.0, -1.0):
        with pytest.raises(ConfigError, match="finite and > 0"):
            kernel_size(bad, 4)
    with pytest.raises(ConfigError, match="no camera's; use a sigma below 166"):
        gaussian_kernel(1e5, 1e5)
    with pytest.raises(ConfigError, match="more than the 1001 taps"):
        gaussian_kernel(1.0, 1.0, size=2001)
    assert kernel_size(166.0, 4) <= MAX_KERNEL_SIDE  # the largest sigma the message offers still works
    assert gaussian_kernel(2.0, 1.0, 0.3, scale=4, size=np.int64(16)).shape == (16, 16)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_box_kernel_equals_inter_area(scale):
    img = _photo()[:24 * scale, :20 * scale]
    ours = blur_downsample(img, box_kernel(scale), scale)
    ref = cv2.resize(img, (20, 24), interpolation=cv2.INTER_AREA)
    assert ours.shape == (24, 20, 3)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_kernel_equals_pillow_bicubic_interior(scale):
    gray = _photo()[:32 * scale, :28 * scale].mean(axis=2).astype(np.float32)
    ref = np.asarray(Image.fromarray(gray, mode="F").resize((28, 32), Image.BICUBIC))
    ours = blur_downsample(gray, bicubic_kernel(scale), scale)
    np.testing.assert_allclose(ours[2:-2, 2:-2], ref[2:-2, 2:-2], atol=2e-5)


def test_bicubic_kernel_shape_and_moments():
    for scale in (2, 3, 4):
        k = bicubic_kernel(scale)
        assert k.shape == (4 * scale - scale % 2,) * 2
        assert k.sum() == pytest.approx(1.0)
        row = k.sum(axis=0)
        np.testing.assert_allclose(k, np.outer(row, row), atol=1e-12)  # separable
        # Keys' cubic reproduces quadratics: zero second moment (so no moment-matched sigma).
        assert abs(kernel_covariance(k)[0, 0]) < 1e-9
    assert cubic(np.array([0.0, 1.0, 2.0])).tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_sampling_phase_is_pixel_centre(scale):
    """A linear ramp keeps its value under any symmetric kernel: out[j, i] = s*i + (s-1)/2."""
    h, w = 12 * scale, 10 * scale
    ramp_x = np.tile(np.arange(w, dtype=np.float32), (h, 1))
    ramp_y = np.tile(np.arange(h, dtype=np.float32)[:, None], (1, w))
    k = gaussian_kernel(1.7, 0.9, 0.4, scale=scale)
    margin = k.shape[0] // scale + 1
    out_x = blur_downsample(ramp_x, k, scale)
    out_y = blur_downsample(ramp_y, k, scale)
    expect_x = scale * np.arange(w // scale) + (scale - 1) / 2
    expect_y = scale * np.arange(h // scale) + (scale - 1) / 2
    np.testing.assert_allclose(out_x[margin:-margin, margin:-margin],
                               np.tile(expect_x, (h // scale, 1))[margin:-margin, margin:-margin], atol=1e-3)
    np.testing.assert_allclose(out_y[margin:-margin, margin:-margin],
                               np.tile(expect_y[:, None], (1, w // scale))[margin:-margin, margin:-margin],
                               atol=1e-3)


def test_blur_downsample_shapes_channels_and_errors():
    img = _photo()[:50, :43]
    k = gaussian_kernel(1.2, 1.2, 0.0, scale=4)
    out = blur_downsample(img, k, 4)
    assert out.shape == (12, 10, 3) and out.dtype == np.float32
    for c in range(3):
        np.testing.assert_allclose(out[..., c], blur_downsample(img[..., c], k, 4), atol=1e-6)
    big = gaussian_kernel(3.2, 3.2, 0.0, scale=4, size=40)  # pad larger than the image side
    assert blur_downsample(img[:8, :8], big, 4).shape == (2, 2, 3)
    with pytest.raises(ShapeError):
        blur_downsample(img, gaussian_kernel(1.2, 1.2, 0.0, scale=3), 4)  # odd kernel, even scale
    with pytest.raises(ShapeError):
        blur_downsample(img[:3, :3], k, 4)
    with pytest.raises(ConfigError):
        blur_downsample(img, k, 0)


def test_jpeg_roundtrip_loses_more_at_lower_quality_and_checks_its_input():
    img = _photo()[:96, :128]
    errors = []
    for quality in (95, 75, 60, 30):
        out = jpeg_roundtrip(img, quality)
        assert out.shape == img.shape and out.dtype == np.float32 and out.flags["C_CONTIGUOUS"]
        assert out.min() >= 0.0 and out.max() <= 1.0
        errors.append(float(np.abs(out - img).mean()))
    assert errors == sorted(errors) and errors[0] < 0.01 < errors[-1]  # q95 nearly lossless, q30 not
    # RGB order is kept: a pure red image stays red (the encoder works in BGR).
    red = np.zeros((16, 16, 3), np.float32)
    red[..., 0] = 1.0
    assert jpeg_roundtrip(red, 90)[..., 0].mean() > 0.9 > jpeg_roundtrip(red, 90)[..., 2].mean() + 0.5
    # Values outside [0, 1] are clipped, not wrapped around.
    assert jpeg_roundtrip(np.full((8, 8, 3), 1.5, np.float32), 95).min() > 0.95
    with pytest.raises(ShapeError):
        jpeg_roundtrip(img[..., 0], 90)
    with pytest.raises(ConfigError, match="integer from 1"):
        jpeg_roundtrip(img, 0)
    with pytest.raises(ConfigError, match="integer from 1"):
        jpeg_roundtrip(img, 50.7)  # type: ignore[arg-type]
    from adassr.runtime.errors import ImageError

    for wrong in (img * 255, (img * 255).astype(np.uint8)):  # 8-bit levels: once came back almost white
        with pytest.raises(ImageError, match="divide 8-bit levels by 255"):
            jpeg_roundtrip(wrong, 90)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_blur_downsample_whole_output_with_symmetric_borders(scale):
    """The tests compared the interior only: a pad one row short (zeros at the bottom) or the other
    reflection (BORDER_REFLECT_101) changed border pixels by 0.2-0.3 unnoticed (mutation testing).
    Reference: symmetric padding, then the direct sum at s*j + (s-1)/2."""
    rng = np.random.default_rng(scale)
    for h, w in ((30, 37), (33, 31)):
        image = rng.random((h, w, 3)).astype(np.float32)
        kernel = rng.random((scale + 6, scale + 4)) ** 2
        kernel /= kernel.sum()
        kh, kw = kernel.shape
        out = blur_downsample(image, kernel, scale)
        pad = max(kh, kw) + scale
        padded = np.pad(image.astype(np.float64), ((pad, pad), (pad, pad), (0, 0)), mode="symmetric")
        ref = np.zeros((h // scale, w // scale, 3))
        for j in range(h // scale):
            for i in range(w // scale):
                # out[j] = sum_u k[u] x[s j + (s-1)/2 - (u - (kh-1)/2)]: an integer index, the parities matching
                for u in range(kh):
                    for v in range(kw):
                        y = scale * j + (scale + kh) // 2 - 1 - u
                        x = scale * i + (scale + kw) // 2 - 1 - v
                        ref[j, i] += kernel[u, v] * padded[pad + y, pad + x]
        np.testing.assert_allclose(out, ref, atol=2e-5)


def test_a_kernel_of_the_wrong_width_parity_alone_is_refused():
    kernel = np.full((14, 13), 1 / (14 * 13))
    with pytest.raises(ShapeError, match="parity of scale 4"):
        blur_downsample(np.zeros((40, 40), np.float32), kernel, 4)
    with pytest.raises(ShapeError, match="parity of scale 4"):
        blur_downsample(np.zeros((40, 40), np.float32), kernel.T, 4)


def test_jpeg_roundtrip_rounds_to_the_nearest_level():
    """Flat patches come back exactly at quality 100: 0.2 is level 51, not 50 (a truncation bias)."""
    for value in (0.2, 0.55, 0.999):
        flat = np.full((16, 16, 3), value, np.float32)
        assert np.all(jpeg_roundtrip(flat, 100) == np.float32(round(value * 255) / 255.0)), value


def test_kernel_covariance_of_a_kernel_summing_to_zero_is_refused():
    kernel = np.zeros((5, 5))
    kernel[2, 1], kernel[2, 3] = 1.0, -1.0
    with pytest.raises(ConfigError, match="positive sum"):
        kernel_covariance(kernel)
