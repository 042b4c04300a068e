"""Self-similarity loss-weight map (adapt/attention.py): behaviour on real photos and synthetic
textures with the real backbone, and map properties with a small random-weight RRDBNet."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adassr.adapt.archs.rrdbnet import RRDBNet
from adassr.adapt.attention import (
    compute_weight_map,
    gradient_grid,
    guidance_map,
    self_similarity_grid,
    similarity_grid,
    trunk_features,
    weight_from_map,
)
from adassr.adapt.config import AttentionConfig
from adassr.adapt.precision import Precision, resolve_precision
from adassr.runtime.errors import ConfigError, ShapeError, WeightsError
from adassr.runtime.images import read_image, to_float32

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
FP32 = Precision("fp32", "cpu")
MODES = ("attention", "uniform", "gradient", "similarity")


@pytest.fixture(scope="module")
def real_model() -> RRDBNet:
    from adassr.adapt.weights import load_backbone

    return load_backbone().model


@pytest.fixture(scope="module")
def small_model() -> RRDBNet:
    torch.manual_seed(0)
    return RRDBNet(num_feat=32, num_block=1, num_grow_ch=16).eval()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    image = to_float32(read_image(ROOT / "tests/data/hr/coffee.png").pixels)[..., :3]
    return cv2.resize(image, (72, 48), interpolation=cv2.INTER_AREA)


def _luma(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(image, dtype=np.float32), cv2.COLOR_RGB2GRAY)


def _sobel_energy(image: np.ndarray) -> float:
    grey = _luma(image)
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)[2:-2, 2:-2]
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)[2:-2, 2:-2]
    return float((gx**2 + gy**2).mean())


def _local_variance(image: np.ndarray, size: int = 7) -> np.ndarray:
    grey = _luma(image)
    mean = cv2.blur(grey, (size, size))
    return cv2.blur(grey * grey, (size, size)) - mean * mean


# ---------------------------------------------------------------- (a) real photos, real backbone

PHOTOS = ("nokia/iptc.jpg", "canon/flower.jpg", "nintendo/sugarshack.mpo")


@pytest.mark.parametrize("name", PHOTOS)
def test_textured_pixels_weigh_more_than_flat_ones_on_bundled_photos(real_model: RRDBNet, name: str) -> None:
    image = to_float32(read_image(ROOT / "samples/cameras" / name).pixels)[..., :3]  # .mpo: first frame
    config = AttentionConfig(max_side=160)
    weight = compute_weight_map(real_model, image, config, device=CPU,
                                precision=resolve_precision("auto", CPU))
    variance = _local_variance(image)
    flat_limit, textured_limit = np.quantile(variance, [0.3, 0.7])
    textured = float(weight[variance >= textured_limit].mean())
    flat = float(weight[variance <= flat_limit].mean())
    print(f"{name}: textured {textured:.3f} flat {flat:.3f} ratio {textured / flat:.2f}")
    assert textured >= 1.5 * flat


# ---------------------------------------------------------------- (b) recurrence, synthetic

def _texture_pair(seed: int, height: int = 96, half: int = 96,
                  tile: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """A tiled random patch and a fresh random texture, both Gaussian-filtered noise (sigma 1.5 px),
    the second rescaled to the same mean squared Sobel gradient of the luma as the first."""
    rng = np.random.default_rng(seed)
    margin = 8
    size = (height + 2 * margin, half + 2 * margin)
    patch = rng.standard_normal((tile, tile, 3)).astype(np.float32)
    tiled = np.tile(patch, (size[0] // tile + 1, size[1] // tile + 1, 1))[: size[0], : size[1]]
    fresh = rng.standard_normal(tiled.shape).astype(np.float32)

    def filtered(noise: np.ndarray) -> np.ndarray:
        smooth = cv2.GaussianBlur(noise, (0, 0), 1.5)[margin:-margin, margin:-margin]
        return smooth / smooth.std()

    repeated, single = filtered(tiled), filtered(fresh)
    repeated_img = 0.5 + 0.08 * repeated
    single_img = 0.5 + 0.08 * single
    single_img = 0.5 + (single_img - 0.5) * math.sqrt(_sobel_energy(repeated_img) / _sobel_energy(single_img))
    for half_img in (repeated_img, single_img):  # no clipping: the energies stay equal
        assert half_img.min() >= 0.0 and half_img.max() <= 1.0
    return repeated_img.astype(np.float32), single_img.astype(np.float32)


@pytest.mark.parametrize("repeated_side", ["left", "right"])
def test_repeated_texture_outweighs_non_repeating_one(real_model: RRDBNet, repeated_side: str) -> None:
    repeated, single = _texture_pair(seed=11)
    halves = (repeated, single) if repeated_side == "left" else (single, repeated)
    image = np.concatenate(halves, axis=1)
    assert _sobel_energy(repeated) == pytest.approx(_sobel_energy(single), rel=0.01)
    mid = image.shape[1] // 2

    def repeated_and_single_means(weight: np.ndarray) -> tuple[float, float]:
        left, right = float(weight[:, :mid].mean()), float(weight[:, mid:].mean())
        return (left, right) if repeated_side == "left" else (right, left)

    attention = compute_weight_map(real_model, image, AttentionConfig(), device=CPU,
                                   precision=resolve_precision("auto", CPU))
    gradient = compute_weight_map(real_model, image, AttentionConfig(mode="gradient"), device=CPU,
                                  precision=FP32)
    att_rep, att_single = repeated_and_single_means(attention)
    grad_rep, grad_single = repeated_and_single_means(gradient)
    print(f"repeated {repeated_side}: attention repeated {att_rep:.3f} single {att_single:.3f}; "
          f"gradient repeated {grad_rep:.3f} single {grad_single:.3f}")
    assert att_rep > 1.15 * att_single
    # Same gradient energy: a gradient-magnitude map cannot tell the halves apart.
    assert grad_rep == pytest.approx(grad_single, rel=0.10)


# ---------------------------------------------------------------- properties (small random model)

@pytest.mark.parametrize("mode", MODES)
def test_map_has_mean_one_and_weights_are_clipped(small_model: RRDBNet, photo: np.ndarray, mode: str) -> None:
    config = AttentionConfig(mode=mode)
    guidance = guidance_map(small_model, photo, config, device=CPU, precision=FP32)
    weight = compute_weight_map(small_model, photo, config, device=CPU, precision=FP32)
    assert guidance.shape == weight.shape == photo.shape[:2]
    assert guidance.dtype == weight.dtype == np.float32
    assert guidance.mean() == pytest.approx(1.0, abs=1e-4)
    assert weight.min() >= 0.1 and weight.max() <= 3.0
    np.testing.assert_allclose(weight, np.clip(0.9 * guidance + 0.1, 0.1, 3.0), atol=1e-6)
    if mode == "uniform":
        assert np.all(guidance == 1.0)
    else:
        assert guidance.std() > 0.01


def test_weighting_clips_both_ends() -> None:
    weight = weight_from_map(np.array([[0.0, 1.0, 5.0]]))
    np.testing.assert_allclose(weight, [[0.1, 1.0, 3.0]], atol=1e-6)


def test_modes_give_different_maps(small_model: RRDBNet, photo: np.ndarray) -> None:
    maps = {mode: guidance_map(small_model, photo, AttentionConfig(mode=mode), device=CPU, precision=FP32)
            for mode in ("attention", "gradient", "similarity")}
    for a, b in (("attention", "gradient"), ("attention", "similarity"), ("gradient", "similarity")):
        assert np.abs(maps[a] - maps[b]).mean() > 0.05, (a, b)


def test_max_side_computes_features_on_the_reduced_image(small_model: RRDBNet, photo: np.ndarray,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, ...]] = []
    original = small_model.trunk_features

    def recording(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))
        return original(x)

    monkeypatch.setattr(small_model, "trunk_features", recording)
    config = AttentionConfig(max_side=36)
    guidance = guidance_map(small_model, photo, config, device=CPU, precision=FP32)
    assert seen == [(1, 3, 24, 36)]  # 48 x 72 reduced to a 36-pixel longer side
    assert guidance.shape == photo.shape[:2]
    assert guidance.mean() == pytest.approx(1.0, abs=1e-4)
    full = guidance_map(small_model, photo, replace(config, max_side=None), device=CPU, precision=FP32)
    assert seen[-1] == (1, 3, 48, 72)
    assert not np.allclose(guidance, full, atol=1e-3)
    # the reduced map still follows the full one (same image, coarser features)
    assert np.corrcoef(guidance.ravel(), full.ravel())[0, 1] > 0.3


def test_exclude_radius_changes_the_map(small_model: RRDBNet, photo: np.ndarray) -> None:
    maps = [guidance_map(small_model, photo, AttentionConfig(exclude_radius=r), device=CPU, precision=FP32)
            for r in (0, 1)]
    assert np.abs(maps[0] - maps[1]).max() > 0.01


def test_map_is_deterministic(small_model: RRDBNet, photo: np.ndarray) -> None:
    first = compute_weight_map(small_model, photo, AttentionConfig(), device=CPU, precision=FP32)
    second = compute_weight_map(small_model, photo, AttentionConfig(), device=CPU, precision=FP32)
    np.testing.assert_array_equal(first, second)


def _dense_attention_grid(features: torch.Tensor, config: AttentionConfig) -> torch.Tensor:
    """Steps 2-4 of adapt/attention.py written out with the full N x N matrix."""
    k = config.highpass
    padded = F.pad(features, (k // 2,) * 4, mode="replicate")
    channels = features.shape[1]
    local_mean = F.conv2d(padded, torch.full((channels, 1, k, k), 1.0 / k**2), groups=channels)
    pooled = F.avg_pool2d(features - local_mean, config.pool, ceil_mode=True)[0]
    c, h, w = pooled.shape
    tokens = pooled.reshape(c, h * w).T.double()
    tokens = tokens - tokens.mean(0)
    d = c // config.heads
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    rows, cols = rows.reshape(-1), cols.reshape(-1)
    near = ((rows[:, None] - rows[None]).abs() <= config.exclude_radius) & (
        (cols[:, None] - cols[None]).abs() <= config.exclude_radius) & (config.exclude_radius > 0)
    total = torch.zeros(h * w, dtype=torch.float64)
    for head in range(config.heads):
        g = tokens[:, head * d:(head + 1) * d]
        floor_sq = config.texture_floor**2 * (g**2).sum(1).mean()
        t = g / torch.sqrt((g**2).sum(1, keepdim=True) + floor_sq)
        logits = (config.temperature * t @ t.T).masked_fill(near, -math.inf)
        total += torch.softmax(logits, dim=1).sum(0)
    return (total / config.heads).reshape(h, w)


def test_attention_grid_equals_the_dense_formula() -> None:
    torch.manual_seed(1)
    features = torch.randn(1, 16, 22, 27)
    features[..., :8, :] *= 0.05  # a "flat" band
    for config in (AttentionConfig(heads=4, exclude_radius=1), AttentionConfig(heads=2, exclude_radius=0,
                                                                               temperature=4.0, pool=2)):
        got = self_similarity_grid(features, config).double()
        torch.testing.assert_close(got, _dense_attention_grid(features, config), rtol=1e-4, atol=1e-4)


def test_similarity_grid_equals_cosine_column_sums() -> None:
    torch.manual_seed(2)
    features = torch.rand(1, 8, 12, 10) + 0.1
    pooled = F.avg_pool2d(features, 2)[0].reshape(8, -1).T
    unit = pooled / pooled.norm(dim=1, keepdim=True)
    expected = (unit @ unit.T).sum(0).reshape(6, 5)
    torch.testing.assert_close(similarity_grid(features, 2), expected, rtol=1e-5, atol=1e-5)


def test_gradient_map_peaks_at_an_edge_and_is_uniform_on_a_constant_image(small_model: RRDBNet) -> None:
    image = np.full((32, 40, 3), 0.3, np.float32)
    config = AttentionConfig(mode="gradient")
    np.testing.assert_array_equal(guidance_map(small_model, image, config, device=CPU, precision=FP32),
                                  np.ones((32, 40), np.float32))
    image[:, 20:] = 0.8
    grid = gradient_grid(image, 4)
    assert grid.shape == (8, 10)
    column_means = grid.mean(0)
    assert set(torch.topk(column_means, 2).indices.tolist()) == {4, 5}  # columns 16-23 hold the edge
    assert column_means[0] == 0.0


def test_bad_inputs_raise_typed_errors(small_model: RRDBNet, photo: np.ndarray) -> None:
    config = AttentionConfig()
    with pytest.raises(ShapeError):
        compute_weight_map(small_model, photo[..., 0], config, device=CPU, precision=FP32)
    with pytest.raises(ConfigError):
        compute_weight_map(small_model, (photo * 255).astype(np.uint8), config, device=CPU, precision=FP32)
    bad = photo.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ConfigError):
        compute_weight_map(small_model, bad, config, device=CPU, precision=FP32)
    with pytest.raises(ConfigError, match="not the \\[0, 1\\] scale"):  # 8-bit levels as float: another map
        compute_weight_map(small_model, photo * 255, config, device=CPU, precision=FP32)
    with pytest.raises(ShapeError, match="exclude radius"):  # 2 x 2 tokens, all within radius 1
        compute_weight_map(small_model, photo[:8, :8], config, device=CPU, precision=FP32)
    for bad_config in ({"temperature": 0.0}, {"highpass": 4}, {"texture_floor": -1.0}, {"max_side": 4}):
        with pytest.raises(ConfigError):
            AttentionConfig(**bad_config)
    # Finite features but a temperature that overflows the logits: an all-NaN map passed every later check
    # (np.clip keeps NaN, and a NaN mean is not <= 0) when the grid's check was dropped (mutation testing).
    with pytest.raises(ConfigError, match="temperature"):
        compute_weight_map(small_model, photo, AttentionConfig(temperature=1e39), device=CPU, precision=FP32)


def test_an_overflowing_trunk_is_computed_again_in_fp32_never_taken_for_a_flat_image(
        small_model: RRDBNet, photo: np.ndarray, caplog: pytest.LogCaptureFixture) -> None:
    """One Inf feature (an fp16 overflow) made the map NaN, which passed for a constant image's
    uniform map (and the weight-map cache kept it)."""
    config = AttentionConfig()
    calls: list[str] = []

    def overflowing(image: np.ndarray) -> torch.Tensor:
        calls.append("trunk")
        features = trunk_features(small_model, image, device=CPU, precision=FP32)
        features[0, 0, 3, 5] = math.inf
        return features

    expected = guidance_map(small_model, photo, config, device=CPU, precision=FP32)
    assert expected.std() > 0.05  # a real map, not the uniform one
    with caplog.at_level("WARNING", logger="adassr.adapt.attention"):
        got = guidance_map(small_model, photo, config, device=CPU, precision=Precision("bf16", "cpu"),
                           trunk=overflowing)
    assert calls == ["trunk"] and "overflowed in bf16" in caplog.text
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)  # the fp32 features' map
    for mode in ("attention", "similarity"):
        with pytest.raises(WeightsError, match="NaN or Inf features in fp32"):
            guidance_map(small_model, photo, replace(config, mode=mode), device=CPU, precision=FP32,
                         trunk=overflowing)
    broken = RRDBNet(num_feat=32, num_block=1, num_grow_ch=16).eval()
    broken.load_state_dict(small_model.state_dict())
    with torch.no_grad():
        broken.conv_first.weight[0, 0, 0, 0] = math.nan
    with pytest.raises(WeightsError, match="weights are damaged"):
        compute_weight_map(broken, photo, config, device=CPU, precision=Precision("bf16", "cpu"))


def test_trunk_features_match_the_plain_forward_and_leave_the_model_as_it_was(
        small_model: RRDBNet, photo: np.ndarray) -> None:
    """The channels-last input is a speed choice only: same features, NCHW out, model untouched."""
    formats = [p.is_contiguous() for p in small_model.parameters()]
    got = trunk_features(small_model, photo, device=CPU, precision=FP32)
    with torch.no_grad():
        plain = small_model.trunk_features(torch.from_numpy(np.ascontiguousarray(photo.transpose(2, 0, 1)))[None])
    assert got.shape == plain.shape == (1, 32, 48, 72)
    assert got.is_contiguous()
    torch.testing.assert_close(got, plain, rtol=1e-4, atol=1e-5)
    assert [p.is_contiguous() for p in small_model.parameters()] == formats


def test_the_token_grid_is_placed_at_the_token_centres() -> None:
    """A token's weight belongs to the pixels it pooled: its peak is centred on ``(i + 0.5) * pool`` and a
    resize to another size interpolates (a helper's mutants, corner-aligned bilinear and nearest-neighbour
    resizing, moved weights by up to 1.5 LR px or made them blocky, and passed)."""
    from adassr.adapt.attention import _to_image_map

    grid = torch.zeros(3, 4)
    grid[1, 2] = 1.0  # one token: rows 4..7 and columns 8..11 of a 12 x 16 image at pool 4
    m = _to_image_map(grid + 0.01, 4, (12, 16), (12, 16))
    peak = m.max()
    assert m[5, 9] == pytest.approx(peak) and m[6, 10] == pytest.approx(peak)  # around the centre (6, 10)
    assert m[5, 9] == pytest.approx(m[6, 9]) == pytest.approx(m[5, 10])
    assert m[4, 8] == pytest.approx(m[7, 11]) and m[4, 8] < peak  # symmetric about the centre, lower at the edge
    larger = _to_image_map(torch.arange(1.0, 13.0).reshape(3, 4), 4, (12, 16), (24, 32))  # a ramp
    assert larger.shape == (24, 32) and larger.mean() == pytest.approx(1.0, rel=1e-5)
    assert np.mean(larger[:, 1:] == larger[:, :-1]) < 0.5  # interpolated, not repeated pixel pairs
