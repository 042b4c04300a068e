"""Cleaned training targets (adassr.adapt.target_denoise) on real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adassr.adapt.target_denoise import clean_targets
from adassr.runtime.errors import ConfigError, ImageError

HR = Path(__file__).resolve().parents[1] / "data" / "hr"


def _photo(name: str) -> np.ndarray:
    with Image.open(HR / name) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32)[:128, :160] / np.float32(255.0)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


def test_strength_zero_returns_the_same_arrays() -> None:
    images = [_photo("astronaut.png"), _photo("coffee.png")]
    out = clean_targets(images, 0.0)
    assert all(a is b for a, b in zip(out, images, strict=True))


def test_noise_is_removed_and_clean_texture_kept() -> None:
    clean = _photo("astronaut.png")
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 5 / 255, clean.shape).astype(np.float32), 0, 1)
    (denoised,) = clean_targets([noisy], 3.0)
    assert denoised.dtype == np.float32 and denoised.shape == clean.shape
    assert denoised.min() >= 0.0 and denoised.max() <= 1.0
    # closer to the clean photo than the noisy input was
    assert _psnr(denoised, clean) > _psnr(noisy, clean) + 2.0
    # the clean photo at the same strength is barely changed (its edges have more contrast than h)
    (kept,) = clean_targets([clean], 3.0)
    assert _psnr(kept, clean) > 38.0


@pytest.mark.parametrize("strength", [-1.0, 31.0, float("nan"), float("inf")])
def test_bad_strength_is_a_config_error(strength: float) -> None:
    with pytest.raises(ConfigError, match="target_denoise"):
        clean_targets([_photo("coffee.png")], strength)


def test_bad_image_is_an_image_error() -> None:
    with pytest.raises(ImageError, match="image 1"):
        clean_targets([_photo("coffee.png"), np.zeros((8, 8), np.float32)], 3.0)
