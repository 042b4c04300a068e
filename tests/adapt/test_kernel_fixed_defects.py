"""A sensor's hot and dead pixels, found across a group's frames, are left out of the blur-kernel estimate
(adapt/kernel/fixed_defects.py).

The bundled clean photos, cropped to one size (a camera's frames share one), blurred by known kernels,
noisy, then marked with hot pixels at the same places in every frame and JPEG-compressed. The thresholds
were chosen on benchmarks/data/dev_photos (benchmarks/kernel_overlays.py), not on these photos.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import adassr.adapt.kernel.fixed_defects as fixed_defects_module
from adassr.adapt.degradation import blur_downsample, gaussian_kernel, jpeg_roundtrip
from adassr.adapt.kernel import KernelEstimationConfig, estimate_kernel
from adassr.adapt.kernel.features import CrossScaleSample, FeatureSpec
from adassr.adapt.kernel.fixed_defects import fixed_defects
from adassr.runtime.errors import ShapeError

SCALE = 4
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
HR_SIZE = (296, 448)  # every bundled photo holds it: the frames of one camera share a size


def _crops(photos: list[np.ndarray]) -> list[np.ndarray]:
    out = []
    for p in photos:
        top, left = (p.shape[0] - HR_SIZE[0]) // 2, (p.shape[1] - HR_SIZE[1]) // 2
        out.append(p[top:top + HR_SIZE[0], left:left + HR_SIZE[1]])
    return out


def _places(shape: tuple[int, ...], count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(4, shape[0] - 4, count), rng.integers(4, shape[1] - 4, count)


def _frames(photos: list[np.ndarray], kernel: tuple[float, float, float], *, noise: float, quality: int | None,
            hot: int = 0, dead: int = 0, seed: int = 0) -> list[np.ndarray]:
    """LR frames of one synthetic camera: blurred, downsampled, noisy, marked at fixed places, then JPEG."""
    k = gaussian_kernel(kernel[0], kernel[1], math.radians(kernel[2]), scale=SCALE)
    frames = []
    for j, hr in enumerate(_crops(photos)):
        lr = blur_downsample(hr, k, SCALE)
        lr = np.clip(lr + np.random.default_rng(seed + j).normal(0.0, noise, lr.shape), 0.0, 1.0).astype(np.float32)
        if hot:
            rows, cols = _places(lr.shape, hot, seed + 777)
            lr[rows, cols] = 1.0
        if dead:
            rows, cols = _places(lr.shape, dead, seed + 999)
            lr[rows, cols] = 0.0
        frames.append(lr if quality is None else jpeg_roundtrip(lr, quality))
    return frames


def _lumas(frames: list[np.ndarray]) -> dict[int, np.ndarray]:
    return {i: (f @ LUMA).astype(np.float32) for i, f in enumerate(frames)}


def _found(masks: dict[int, np.ndarray], frames: list[np.ndarray], rows: np.ndarray, cols: np.ndarray) -> float:
    """The share of the places covered in every frame."""
    assert set(masks) == set(range(len(frames)))
    return float(np.mean([all(m[r, c] for m in masks.values()) for r, c in zip(rows, cols, strict=True)]))


@pytest.mark.parametrize(("noise", "quality"), [(0.0, None), (2 / 255, 90), (3 / 255, 75)])
def test_hot_pixels_at_the_same_places_in_every_frame_are_found(
        acceptance_photos: list[np.ndarray], noise: float, quality: int | None) -> None:
    frames = _frames(acceptance_photos, (2.4, 1.2, 30.0), noise=noise, quality=quality, hot=30)
    masks = fixed_defects(_lumas(frames))
    rows, cols = _places(frames[0].shape, 30, 777)
    assert _found(masks, frames, rows, cols) >= 0.9
    # what is left out is the places' surroundings and their JPEG blocks only
    reach, block = fixed_defects_module.REACH, fixed_defects_module.JPEG_BLOCK
    near = np.zeros(frames[0].shape[:2], dtype=bool)
    for r, c in zip(rows, cols, strict=True):
        near[max(r - reach, 0):r + reach + 1, max(c - reach, 0):c + reach + 1] = True
        near[r // block * block:(r // block + 1) * block, c // block * block:(c // block + 1) * block] = True
    assert not (masks[0] & ~near).any()
    r, c = rows[0], cols[0]
    assert masks[0][r // block * block, c // block * block] and masks[0][r - reach, c + reach]


def test_dead_pixels_are_found_as_hot_ones_are(acceptance_photos: list[np.ndarray]) -> None:
    frames = _frames(acceptance_photos, (1.6, 1.6, 0.0), noise=2 / 255, quality=None, dead=20)
    masks = fixed_defects(_lumas(frames))
    rows, cols = _places(frames[0].shape, 20, 999)
    # a dead pixel on a dark area stands out of nothing: count those on the frames' brighter parts
    lumas = _lumas(frames)
    bright = [all(lumas[i][r, c - 1] > 0.15 and lumas[i][r, c + 1] > 0.15 for i in lumas)
              for r, c in zip(rows, cols, strict=True)]
    assert sum(bright) >= 5
    assert _found(masks, frames, rows[bright], cols[bright]) >= 0.9


@pytest.mark.parametrize(("noise", "quality"), [(0.0, None), (2 / 255, 90), (5 / 255, 60)])
def test_clean_frames_have_no_defects(acceptance_photos: list[np.ndarray], noise: float, quality: int | None) -> None:
    frames = _frames(acceptance_photos, (2.4, 1.2, 30.0), noise=noise, quality=quality)
    assert fixed_defects(_lumas(frames)) == {}


def test_a_peak_in_fewer_than_two_thirds_of_the_frames_is_no_defect(acceptance_photos: list[np.ndarray]) -> None:
    frames = _frames(acceptance_photos, (1.6, 1.6, 0.0), noise=1 / 255, quality=None)
    rows, cols = _places(frames[0].shape, 30, 5)
    marked = [f.copy() for f in frames]
    for f in marked[:3]:  # 3 of 5: a glint, a speck that a few frames share
        f[rows, cols] = 1.0
    assert fixed_defects(_lumas(marked)) == {}
    marked[3][rows, cols] = 1.0  # 4 of 5
    masks = fixed_defects(_lumas(marked))
    assert _found(masks, marked, rows, cols) >= 0.9


def test_only_frames_of_one_size_are_compared_and_at_least_three_of_them(acceptance_photos: list[np.ndarray]) -> None:
    frames = _frames(acceptance_photos, (1.6, 1.6, 0.0), noise=1 / 255, quality=None, hot=30)
    lumas = _lumas(frames)
    two = {0: lumas[0], 1: lumas[1]}
    assert fixed_defects(two) == {}
    # two frames of another size (a crop, a rotated frame) beside three of the first: only those three
    mixed = {0: lumas[0], 1: lumas[1], 2: lumas[2], 3: lumas[3][:-4], 4: lumas[4][:-4]}
    masks = fixed_defects(mixed)
    assert set(masks) == {0, 1, 2}
    rows, cols = _places(frames[0].shape, 30, 777)
    assert _found(masks, frames[:3], rows, cols) >= 0.9
    assert fixed_defects({0: lumas[0][:2], 1: lumas[1][:2], 2: lumas[2][:2]}) == {}  # no pixel has 8 neighbours


def test_a_static_scene_s_own_specks_are_not_left_out_past_the_cap(acceptance_photos: list[np.ndarray]) -> None:
    # a fixed camera: the same scene in every frame, its texture at the same places, a dense pattern of specks
    base = _frames(acceptance_photos[:1], (1.2, 1.2, 0.0), noise=0.0, quality=None)[0]
    specks = base.copy()
    specks[2:-2:3, 2:-2:3] = 1.0  # every third pixel of every third row: a texture, not a sensor's defects
    frames = [np.clip(specks + np.random.default_rng(i).normal(0.0, 1 / 255, specks.shape), 0, 1).astype(np.float32)
              for i in range(4)]
    assert fixed_defects(_lumas(frames)) == {}


@pytest.mark.parametrize("quality", [None, 75])
def test_hot_pixels_no_longer_pull_the_group_estimate_where_the_per_tile_rule_keeps_them(
        acceptance_photos: list[np.ndarray], quality: int | None) -> None:
    kernel = (3.2, 1.6, 120.0)
    frames = _frames(acceptance_photos, kernel, noise=2 / 255, quality=quality, hot=40)
    clean = _frames(acceptance_photos, kernel, noise=2 / 255, quality=quality)

    def distance(images: list[np.ndarray], **options: bool) -> tuple[float, int]:
        est = estimate_kernel(images, scale=SCALE, config=KernelEstimationConfig(**options))
        ka = gaussian_kernel(est.sigma_x, est.sigma_y, math.radians(est.theta_deg), scale=SCALE, size=26)
        kb = gaussian_kernel(kernel[0], kernel[1], math.radians(kernel[2]), scale=SCALE, size=26)
        return float(np.linalg.norm(ka - kb)), est.diagnostics["n_pixels_fixed_defects"]

    clean_distance, clean_left_out = distance(clean)
    with_rule, left_out = distance(frames)
    without_rule, none_left_out = distance(frames, leave_out_fixed_defects=False)
    assert clean_left_out == 0 and none_left_out == 0 and left_out > 0
    assert without_rule > clean_distance + 0.02  # the hot pixels pull the estimate off
    assert with_rule <= clean_distance + 0.01


def test_a_left_out_mask_of_another_shape_is_refused() -> None:
    spec = FeatureSpec(derivative_sigma=0.0, orders=(1, 2), n_directions=8, anisotropy_weight=0.5)
    y = np.random.default_rng(0).random((40, 40))
    with pytest.raises(ShapeError, match=r"left_out: got shape \(40, 39\), expected the tile's shape \(40, 40\)"):
        CrossScaleSample(y, spec, 1.0, left_out=np.zeros((40, 39), dtype=bool))


def test_each_tile_of_a_large_frame_leaves_out_the_defects_at_its_own_place(
        acceptance_photos: list[np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    import adassr.adapt.kernel.estimate as estimate_module

    frames = _frames(acceptance_photos, (2.4, 1.2, 30.0), noise=2 / 255, quality=None, hot=30)
    lumas = {i: estimate_module._luma(f, i) for i, f in enumerate(frames)}  # as the estimator reads them
    masks = fixed_defects(lumas)
    seen: list[tuple[np.ndarray, np.ndarray | None]] = []

    class Recording(CrossScaleSample):
        def __init__(self, y: np.ndarray, *args: object, left_out: np.ndarray | None = None, **kwargs: object) -> None:
            seen.append((np.array(y), None if left_out is None else np.array(left_out)))
            super().__init__(y, *args, left_out=left_out, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(estimate_module, "CrossScaleSample", Recording)
    config = KernelEstimationConfig(tile=48, max_tiles_per_image=2)  # 74 x 112 frames: two 48 x 48 windows each
    est = estimate_kernel(frames, scale=SCALE, config=config)
    assert est.diagnostics["n_pixels_fixed_defects"] > 0 and len(seen) == 2 * len(frames)
    for k, (tile, left_out) in enumerate(seen):
        y, mask = lumas[k // 2], masks[k // 2]
        assert tile.shape == (48, 48) and left_out is not None
        places = [(r, c) for r in range(0, 74 - 47, 48) for c in range(0, 112 - 47, 48)
                  if np.array_equal(y[r:r + 48, c:c + 48], tile)]
        assert len(places) == 1
        r, c = places[0]
        assert np.array_equal(left_out, mask[r:r + 48, c:c + 48])
