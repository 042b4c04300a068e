"""Frames of one scene (a fixed camera) count as one image in the blur-kernel estimate
(adapt/kernel/scenes.py).

The bundled clean photos, cropped to one size, blurred by a known kernel, then given noise, JPEG, another
exposure or a passer-by; the threshold was chosen on benchmarks/data/dev_photos, not on these photos.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from adassr.adapt.degradation import blur_downsample, gaussian_kernel, jpeg_roundtrip
from adassr.adapt.kernel import KernelEstimationConfig, estimate_kernel
from adassr.adapt.kernel.scenes import CORRELATION, scene_labels

SCALE = 4
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
HR_SIZE = (296, 448)  # every bundled photo holds it
KERNEL = (2.4, 1.2, 30.0)


def _frames(photos: list[np.ndarray]) -> list[np.ndarray]:
    """Each photo's centre crop of :data:`HR_SIZE`, blurred by :data:`KERNEL` and downsampled: LR RGB."""
    k = gaussian_kernel(KERNEL[0], KERNEL[1], math.radians(KERNEL[2]), scale=SCALE)
    out = []
    for p in photos:
        top, left = (p.shape[0] - HR_SIZE[0]) // 2, (p.shape[1] - HR_SIZE[1]) // 2
        out.append(np.clip(blur_downsample(p[top:top + HR_SIZE[0], left:left + HR_SIZE[1]], k, SCALE), 0, 1))
    return out


@pytest.fixture(scope="module")
def frames(acceptance_photos: list[np.ndarray]) -> list[np.ndarray]:
    return _frames(acceptance_photos)


def _noisy(lr: np.ndarray, seed: int, sigma: float = 5 / 255, quality: int = 60) -> np.ndarray:
    noisy = lr + np.random.default_rng(seed).normal(0.0, sigma, lr.shape).astype(np.float32)
    return jpeg_roundtrip(np.clip(noisy, 0, 1).astype(np.float32), quality)


def test_a_scene_is_known_again_through_noise_jpeg_exposure_and_a_passer_by(frames: list[np.ndarray]) -> None:
    a, b = frames[0], frames[1]
    darker = np.clip((0.4 * a) ** 0.8, 0, 1).astype(np.float32)  # dusk: gain and gamma
    passer = a.copy()
    h, w = a.shape[:2]
    passer[h // 3: 2 * h // 3, w // 3: w // 3 + w // 8] = 0.1  # a dark coat over 1/24 of the view
    group = [a, _noisy(a, 1), _noisy(darker, 2), passer, b, _noisy(b, 3)]
    assert scene_labels([f @ LUMA for f in group]) == [0, 0, 0, 0, 1, 1]


def test_different_photos_and_sizes_are_different_scenes(frames: list[np.ndarray]) -> None:
    lumas = [f @ LUMA for f in frames]
    assert scene_labels(lumas) == list(range(len(lumas)))
    crop = lumas[0][:, : lumas[0].shape[1] - 8]  # the same view, another size: not compared
    flat = np.full_like(lumas[0], 0.5)  # no contrast: a scene of its own, never joined
    assert scene_labels([lumas[0], crop, flat, flat.copy()]) == [0, 1, 2, 3]


def test_the_threshold_is_what_separates(frames: list[np.ndarray]) -> None:
    """A view mostly replaced by another photo (65 %) is another scene; a tenth of another photo in it (a
    passer-by) leaves it the same scene."""
    a, b = frames[0] @ LUMA, frames[3] @ LUMA
    b = (b - b.mean()) * (a.std() / b.std()) + a.mean()  # the same contrast: only the content differs
    assert scene_labels([a, 0.35 * a + 0.65 * b]) == [0, 1]
    assert scene_labels([a, 0.9 * a + 0.1 * b]) == [0, 0]
    assert 0.5 < CORRELATION < 0.95


def test_a_frame_like_two_scenes_joins_the_first(frames: list[np.ndarray]) -> None:
    """Two views that correlate by about 0.5 are two scenes; their blend matches both (about 0.87) and joins
    the first."""
    a, x = ((f @ LUMA - (f @ LUMA).mean()) / (f @ LUMA).std() for f in (frames[0], frames[3]))
    b = 0.5 * a + math.sqrt(0.75) * x
    assert scene_labels([a, b, a + b]) == [0, 1, 0]
    assert scene_labels([b, a, a + b]) == [0, 1, 0]


def test_scene_labels_rejects_colour_frames(frames: list[np.ndarray]) -> None:
    with pytest.raises(ValueError, match="2-D lumas"):
        scene_labels([frames[0]])


def _same(a, b) -> None:
    assert (a.sigma_x, a.sigma_y, a.theta) == pytest.approx((b.sigma_x, b.sigma_y, b.theta), rel=1e-9, abs=1e-12)
    assert a.confidence == pytest.approx(b.confidence, rel=1e-9, abs=1e-12)


def d_equal(a, b, *keys: str) -> bool:
    """The diagnostics ``keys`` of ``a`` and ``b`` agree to 1e-12."""
    return all(a.diagnostics[k] == pytest.approx(b.diagnostics[k], rel=1e-12, abs=1e-15) for k in keys)


def test_scenes_weigh_the_same_whatever_their_frame_count(frames: list[np.ndarray]) -> None:
    """Three copies of one view and one other view: the estimate of the two views, each counted once (the
    pooled loss, the direction each scene votes for); counting frames instead changes it."""
    a, b = frames[0], frames[1]
    config = KernelEstimationConfig()
    two = estimate_kernel([a, b], scale=SCALE, config=config)
    repeated = estimate_kernel([a, a, a, b], scale=SCALE, config=config)
    _same(repeated, two)
    assert d_equal(repeated, two, "jpeg_blockiness", "noise_sigma")
    d = repeated.diagnostics
    assert d["mode"] == "group" and d["n_scenes"] == 2 and d["scene_of_image"] == [0, 0, 0, 1]
    assert len(d["per_scene_theta_deg"]) == 2 and "per_image_theta_deg" not in d
    assert d["per_scene_theta_deg"] == pytest.approx(two.diagnostics["per_image_theta_deg"])
    assert "scene_of_image" not in two.diagnostics and two.diagnostics["n_scenes"] == 2
    frames_counted = estimate_kernel([a, a, a, b], scale=SCALE, config=KernelEstimationConfig(group_scenes=False))
    assert frames_counted.diagnostics["n_scenes"] == 4 and "scene_of_image" not in frames_counted.diagnostics
    assert (frames_counted.sigma_x, frames_counted.sigma_y) != pytest.approx((two.sigma_x, two.sigma_y), rel=1e-3)


def test_one_scene_is_fitted_and_calibrated_as_one_image(frames: list[np.ndarray]) -> None:
    """Two frames (three would look for a sensor's defects across them, which a fixed camera's texture is
    too: benchmarks/README.md)."""
    a = frames[2]
    one = estimate_kernel([a], scale=SCALE)
    static = estimate_kernel([a, a.copy()], scale=SCALE)
    _same(static, one)
    d = static.diagnostics
    assert d["mode"] == "single" and d["n_scenes"] == 1 and d["scene_of_image"] == [0, 0]
    assert d["calibration"] == one.diagnostics["calibration"] and d.get("direction_check") in ("parts", None)
    assert d.get("per_part_theta_deg") == one.diagnostics.get("per_part_theta_deg")
    assert "2 frames of 1 scene" in static.describe() and "scene" not in one.describe()
    warning = static.scene_warning()
    assert warning is not None and "2 frames" in warning and "one scene" in warning and "--kernel bicubic" in warning
    assert one.scene_warning() is None


def test_a_fixed_camera_with_noise_is_still_one_scene(frames: list[np.ndarray]) -> None:
    """Noisy, compressed frames of one view: one scene, fitted as a single image, warned about."""
    static = estimate_kernel([_noisy(frames[1], seed) for seed in range(4)], scale=SCALE)
    assert static.diagnostics["n_scenes"] == 1 and static.diagnostics["mode"] == "single"
    assert static.scene_warning() is not None
    varied = estimate_kernel([_noisy(f, seed) for seed, f in enumerate(frames[:4])], scale=SCALE)
    assert varied.diagnostics["n_scenes"] == 4 and varied.scene_warning() is None


def _boxed(f: np.ndarray, top: int = 14, side: int = 19, level: float = 0.0) -> np.ndarray:
    """``f`` inside letterbox and pillarbox bars of one level, as a recorder adds them."""
    out = np.full((f.shape[0] + 2 * top, f.shape[1] + 2 * side, 3), level, np.float32)
    out[top:top + f.shape[0], side:side + f.shape[1]] = f
    return out


def test_one_boxed_view_stays_one_scene_whatever_its_jpeg(frames: list[np.ndarray]) -> None:
    """JPEG of another quality cuts a frame's bars to another depth: the frames were then of other sizes,
    never compared, and one view came out as four scenes (a review helper's finding)."""
    view = frames[0]
    group = []
    for i, quality in enumerate((None, 95, 90, 75, 60, 50)):
        noisy = np.clip(view + np.random.default_rng(i).normal(0, 2 / 255, view.shape), 0, 1).astype(np.float32)
        group.append(_boxed(noisy) if quality is None else jpeg_roundtrip(_boxed(noisy), quality))
    est = estimate_kernel(group, scale=SCALE)
    assert est.diagnostics["n_scenes"] == 1 and est.diagnostics["mode"] == "single"
    assert est.scene_warning() is not None


def test_shared_bars_do_not_make_two_views_one(frames: list[np.ndarray]) -> None:
    """Wide bars of one level around two different views (17 % of the width a side): compared inside the
    bars, even where the fit keeps them (``bar_margin=0``), they stay two scenes."""
    from adassr.adapt.kernel.scenes import scene_labels as labels

    pair = [_boxed(f, top=0, side=23, level=0.06) for f in (frames[1], frames[3])]
    assert labels([f @ LUMA for f in pair]) == [0, 0]  # whole frames: the bars make them alike
    for config in (KernelEstimationConfig(), KernelEstimationConfig(bar_margin=0)):
        assert estimate_kernel(pair, scale=SCALE, config=config).diagnostics["n_scenes"] == 2
    with pytest.raises(ValueError, match="one window per frame"):
        labels([f @ LUMA for f in pair], [(slice(0, 10), slice(0, 10))])


def test_frames_are_compared_over_the_cells_both_windows_hold() -> None:
    from adassr.adapt.kernel.scenes import _inside

    cells = _inside((slice(0, 100), slice(8, 90)), (slice(4, 96), slice(0, 80)), 4, (25, 25))
    assert cells == (slice(1, 24), slice(2, 20))  # whole blocks inside both


def _cells(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two orthonormal random fields of 24 x 32 thumbnail cells."""
    u, v = np.random.default_rng(seed).normal(size=(2, 24, 32))
    u = (u - u.mean()) / u.std()
    v -= v.mean()
    v -= (v * u).mean() * u
    return u, v / v.std()


def _blocks(cells: np.ndarray) -> np.ndarray:
    """An LR luma whose 4 x 4 blocks are ``cells``: its thumbnail is ``cells`` itself (up to gain and offset)."""
    return 0.5 + 0.1 * np.kron(cells, np.ones((4, 4)))


def test_two_frames_are_one_scene_from_a_correlation_of_0_7() -> None:
    """Thumbnails correlating by 0.68 are two scenes, by 0.72 one (the documented threshold, 0.7)."""
    u, v = _cells(0)
    a = _blocks(u)
    assert scene_labels([a, _blocks(0.68 * u + math.sqrt(1 - 0.68**2) * v)]) == [0, 1]
    assert scene_labels([a, _blocks(0.72 * u + math.sqrt(1 - 0.72**2) * v)]) == [0, 0]


def test_too_few_cells_in_both_windows_are_not_compared() -> None:
    """Two views alike only in the 2 x 2 cells both windows hold: too few to compare, two scenes."""
    u, v = _cells(1)
    v[:2, :2] = u[:2, :2]
    windows = [(slice(0, 8), slice(0, 128)), (slice(0, 96), slice(0, 8))]
    assert scene_labels([_blocks(u), _blocks(v)], windows) == [0, 1]


def test_small_frames_are_compared_whole(frames: list[np.ndarray]) -> None:
    """48 x 48 frames (2 x 2 blocks): two views that share only their top-left quarter are two scenes."""
    a, other = ((f @ LUMA)[:48, :48] for f in (frames[0], frames[1]))
    b = other.copy()
    b[:24, :24] = a[:24, :24]
    assert scene_labels([a, b]) == [0, 1]


def test_a_dim_noisy_view_is_one_scene(frames: list[np.ndarray]) -> None:
    """A fixed camera at night: low contrast (std 0.013-0.018) under noise 3/255. The thumbnail's block
    average takes most of the noise away, so its frames are still one scene."""
    rng = np.random.default_rng(0)
    for f in (frames[1], frames[3]):
        dim = 0.3 + 0.15 * (f @ LUMA - 0.4)
        assert scene_labels([np.clip(dim + rng.normal(0, 3 / 255, dim.shape), 0, 1) for _ in range(4)]) == [0] * 4


def test_a_one_scene_group_is_fitted_without_the_robust_loss(frames: list[np.ndarray]) -> None:
    """``robust_scale`` applies to a group of scenes; frames of one scene are fitted as the one image they
    are, so the robust loss (and the loss gap to G(1.6) it would change) stays off."""
    a = frames[2]
    config = KernelEstimationConfig(robust_scale=0.01)
    _same(estimate_kernel([a, a.copy()], scale=SCALE, config=config), estimate_kernel([a], scale=SCALE, config=config))


def test_scenes_are_those_of_the_frames_used(frames: list[np.ndarray]) -> None:
    """A flat frame first (skipped): the scenes are read from the frames actually fitted, so two copies of
    one view and another view are two scenes weighing the same, as without the flat frame."""
    a, b = frames[0], frames[1]
    flat = np.full_like(a, 0.5)
    with_flat = estimate_kernel([flat, a, a.copy(), b], scale=SCALE)
    without = estimate_kernel([a, a.copy(), b], scale=SCALE)
    assert with_flat.diagnostics["images_used"] == [1, 2, 3]
    assert with_flat.diagnostics["scene_of_image"] == without.diagnostics["scene_of_image"] == [0, 0, 1]
    _same(with_flat, without)


def test_a_black_frame_beside_a_view_is_a_scene_of_its_own(frames: list[np.ndarray]) -> None:
    """A frame without contrast is never compared, whether it comes before or after a view with contrast."""
    a = frames[0] @ LUMA
    black = np.zeros_like(a)
    assert scene_labels([a, black]) == [0, 1] and scene_labels([black, a]) == [0, 1]


def test_a_part_block_inside_a_window_is_left_out() -> None:
    from adassr.adapt.kernel.scenes import _inside

    assert _inside((slice(5, 100), slice(1, 99)), (slice(0, 100), slice(0, 100)), 4, (25, 25)) == (
        slice(2, 25), slice(1, 24))


def test_a_record_written_before_scenes_were_counted_counts_its_frames() -> None:
    """An older manifest's record has no ``n_scenes``: its images were fitted as images of their own, so it
    gets no scene text and no warning."""
    from adassr.adapt.kernel import METHOD_CROSS_SCALE, KernelEstimate

    k = gaussian_kernel(2.4, 1.2, math.radians(30.0), scale=SCALE, size=26)
    old = KernelEstimate(2.4, 1.2, math.radians(30.0), SCALE, k, METHOD_CROSS_SCALE, 0.5,
                         {"mode": "group", "images_used": [0, 1, 2]})
    assert "scene" not in old.describe() and old.scene_warning() is None
    three = KernelEstimate(2.4, 1.2, math.radians(30.0), SCALE, k, METHOD_CROSS_SCALE, 0.5,
                           {"mode": "group", "images_used": [0, 1, 2], "n_scenes": 2, "scene_of_image": [0, 0, 1]})
    assert "3 frames of 2 scenes" in three.describe() and three.scene_warning() is None
