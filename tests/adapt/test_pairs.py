from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from adassr.adapt.augment import (
    NOISE_GAUSSIAN,
    NOISE_NONE,
    NOISE_POISSON,
    PHOTOMETRIC_OPS,
    NoiseParams,
    add_noise,
    apply_photometric,
    dihedral,
    noise_kind,
    photometric_op,
)
from adassr.adapt.degradation import gaussian_kernel
from adassr.adapt.pairs import (
    PairConfig,
    make_pair_sampler,
    min_image_size,
    select_usable_images,
    validate_images,
)
from adassr.runtime.errors import ConfigError, ImageError, ShapeError

DATA = Path(__file__).resolve().parents[1] / "data" / "hr"


def _load(name: str) -> np.ndarray:
    return np.asarray(Image.open(DATA / name).convert("RGB"), dtype=np.float32) / 255.0


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return _load("chelsea.png")  # 451 x 300


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [_load("chelsea.png"), _load("coffee.png")]


PLAIN = PairConfig(scale=4, lr_patch=12).without_augmentation()
KERNEL = gaussian_kernel(2.2, 1.1, 0.6, scale=4)  # 14x14, anisotropic


def _crop_of(image: np.ndarray, sampler, params) -> np.ndarray:
    """The un-augmented crop a plain sample was cut from."""
    geo = sampler.geometry
    half = (geo.crop - 1) / 2.0
    x0 = int(round(params.centre_xy[0] - half))
    y0 = int(round(params.centre_xy[1] - half))
    return image[y0 : y0 + geo.crop, x0 : x0 + geo.crop]


# --------------------------------------------------------------------------- geometry


def test_batch_shapes_dtypes_and_ranges(photos: list[np.ndarray]) -> None:
    config = PairConfig(scale=4, lr_patch=12, p_affine=1.0, p_photometric=1.0, p_usm=0.5)
    batch = make_pair_sampler(photos, KERNEL, config, seed=3).sample(6)
    assert batch.lr.shape == (6, 3, 12, 12) and batch.hr.shape == (6, 3, 48, 48)
    assert batch.weight.shape == (6, 1, 48, 48)
    for array in (batch.lr, batch.hr, batch.weight):
        assert array.dtype == np.float32 and array.flags.c_contiguous
    assert np.all(batch.weight == 1.0)
    assert batch.lr.min() >= 0.0 and batch.lr.max() <= 1.0
    assert batch.hr.min() >= 0.0 and batch.hr.max() <= 1.0
    assert len(batch.params) == 6


def test_plain_pair_is_convolution_then_centre_sampling(photo: np.ndarray) -> None:
    # Independent float64 reference of y_rd[i,j] = sum k[u,v] y[s i + (s-1)/2 - (u - cu), ...],
    # with an asymmetric kernel so a correlation (unflipped kernel) would fail.
    rng = np.random.default_rng(0)
    kernel = rng.random((6, 6)) ** 3
    kernel /= kernel.sum()
    sampler = make_pair_sampler([photo], kernel, PLAIN, seed=1)
    m = sampler.geometry.margin
    batch = sampler.sample(3)
    for n, params in enumerate(batch.params):
        crop = _crop_of(photo, sampler, params).astype(np.float64)
        np.testing.assert_array_equal(batch.hr[n].transpose(1, 2, 0), crop[m : m + 48, m : m + 48])
        np.testing.assert_allclose(batch.lr[n].transpose(1, 2, 0), _direct_lr(crop, kernel, m), atol=2e-5)


def _direct_lr(crop: np.ndarray, kernel: np.ndarray, margin: int, s: int = 4, p: int = 12) -> np.ndarray:
    """y_rd[i,j] = sum k[u,v] y[s i + (s-1)/2 - (u - cu), ...] of a crop (float64), the direct sum."""
    ref = np.zeros((p, p, 3))
    kh, kw = kernel.shape
    for u in range(kh):
        for v in range(kw):
            dy = (s + kh) // 2 - 1 - u  # (s-1)/2 - (u - (kh-1)/2), an integer for even s, kh
            dx = (s + kw) // 2 - 1 - v
            ref += kernel[u, v] * crop[margin + dy : margin + dy + s * p : s, margin + dx : margin + dx + s * p : s]
    return ref


def test_phase_with_delta_and_box_kernels(photo: np.ndarray) -> None:
    delta = np.ones((1, 1))
    x3 = make_pair_sampler([photo], delta, dataclasses.replace(PLAIN, scale=3), seed=0).sample(2)
    np.testing.assert_allclose(x3.lr, x3.hr[:, :, 1::3, 1::3], atol=1e-6)

    x4 = make_pair_sampler([photo], delta, PLAIN, seed=0).sample(2)
    h = x4.hr
    mean = (h[:, :, 1::4, 1::4] + h[:, :, 2::4, 1::4] + h[:, :, 1::4, 2::4] + h[:, :, 2::4, 2::4]) / 4
    np.testing.assert_allclose(x4.lr, mean, atol=1e-6)

    box = make_pair_sampler([photo], np.full((4, 4), 1 / 16), PLAIN, seed=0).sample(2)
    for n in range(2):
        area = cv2.resize(box.hr[n].transpose(1, 2, 0), (12, 12), interpolation=cv2.INTER_AREA)
        np.testing.assert_allclose(box.lr[n].transpose(1, 2, 0), area, atol=1e-5)


def test_dihedral_samples_are_transformed_crops(photo: np.ndarray) -> None:
    config = dataclasses.replace(PLAIN, p_flip_rot=1.0)
    sampler = make_pair_sampler([photo], KERNEL, config, seed=5)
    batch = sampler.sample(24)
    m = sampler.geometry.margin
    assert len({p.dihedral for p in batch.params}) >= 6
    for n, params in enumerate(batch.params):
        expected = dihedral(_crop_of(photo, sampler, params), params.dihedral)[m : m + 48, m : m + 48]
        np.testing.assert_array_equal(batch.hr[n].transpose(1, 2, 0), expected)
    assert {dihedral(np.arange(4).reshape(2, 2), i).tobytes() for i in range(8)}.__len__() == 8


def test_affine_warp_matches_reference_resampling(photo: np.ndarray) -> None:
    config = dataclasses.replace(PLAIN, p_affine=1.0, affine_antialias=False)
    sampler = make_pair_sampler([photo], KERNEL, config, seed=11)
    geo = sampler.geometry
    batch = sampler.sample(4)
    half = (geo.crop - 1) / 2.0
    ty, tx = np.mgrid[0 : geo.crop, 0 : geo.crop].astype(np.float64)
    for n, params in enumerate(batch.params):
        inv = params.affine.inverse_matrix()
        sx = params.centre_xy[0] + inv[0, 0] * (tx - half) + inv[0, 1] * (ty - half)
        sy = params.centre_xy[1] + inv[1, 0] * (tx - half) + inv[1, 1] * (ty - half)
        ref = np.stack([ndimage.map_coordinates(photo[..., c], [sy, sx], order=1) for c in range(3)], -1)
        ref = ref[geo.margin : geo.margin + 48, geo.margin : geo.margin + 48]
        error = np.abs(batch.hr[n].transpose(1, 2, 0) - ref)
        assert error.mean() < 2e-3 and error.max() < 0.03, (params.affine, error.mean(), error.max())


def test_affine_scale_below_one_zooms_out(photo: np.ndarray) -> None:
    # scale 0.5, no rotation/shear: target pixel t samples the source at centre + (t - half) / 0.5.
    config = dataclasses.replace(PLAIN, p_affine=1.0, affine_scale=(0.5, 0.5), affine_rotate_deg=0.0,
                                 affine_shear_deg=0.0, affine_antialias=False)
    sampler = make_pair_sampler([photo], KERNEL, config, seed=12)
    geo = sampler.geometry
    half = (geo.crop - 1) / 2.0
    t = np.arange(geo.margin, geo.margin + 48) - half
    batch = sampler.sample(3)
    for n, params in enumerate(batch.params):
        sx = params.centre_xy[0] + 2.0 * t
        sy = params.centre_xy[1] + 2.0 * t
        yy, xx = np.meshgrid(sy, sx, indexing="ij")
        ref = np.stack([ndimage.map_coordinates(photo[..., c], [yy, xx], order=1) for c in range(3)], -1)
        assert np.abs(batch.hr[n].transpose(1, 2, 0) - ref).mean() < 2e-3


# --------------------------------------------------------------------------- augmentation draws


def test_affine_draws_cover_paper_range(photo: np.ndarray) -> None:
    config = PairConfig(scale=4, lr_patch=12, p_affine=1.0)
    sampler = make_pair_sampler([photo], KERNEL, config, seed=2)
    draws = [sampler.draw_params().affine for _ in range(2000)]
    scales = np.array([a.scale for a in draws])
    assert scales.min() >= 0.5 and scales.max() <= 1.0
    assert scales.min() < 0.51 and scales.max() > 0.99
    assert abs(scales.mean() - 0.75) < 0.015
    assert max(abs(a.rotate_deg) for a in draws) <= 10.0
    assert max(abs(a.shear_deg) for a in draws) <= 5.0


def test_small_image_raises_lower_scale_bound_and_still_renders(photo: np.ndarray) -> None:
    config = PairConfig(scale=4, lr_patch=12, p_affine=1.0)
    side = min_image_size(config, KERNEL.shape) + 10
    sampler = make_pair_sampler([photo[:side, :side]], KERNEL, config, seed=2)
    low = sampler.affine_scale_low(0)
    assert 0.5 < low < 1.0
    batch = sampler.sample(64)  # renders every draw; a footprint outside the image would raise
    assert min(p.affine.scale for p in batch.params) >= low


def test_noise_flip_and_image_choice_frequencies(photos: list[np.ndarray]) -> None:
    assert noise_kind(0.0, 0.24, 0.16) == NOISE_GAUSSIAN
    assert noise_kind(0.2399, 0.24, 0.16) == NOISE_GAUSSIAN
    assert noise_kind(0.24, 0.24, 0.16) == NOISE_POISSON
    assert noise_kind(0.3999, 0.24, 0.16) == NOISE_POISSON
    assert noise_kind(0.40, 0.24, 0.16) == NOISE_NONE

    config = PairConfig(scale=4, lr_patch=12)
    sampler = make_pair_sampler(photos, KERNEL, config, seed=9)
    draws = [sampler.draw_params() for _ in range(2000)]
    kinds = [d.noise.kind for d in draws]
    assert abs(kinds.count(NOISE_GAUSSIAN) / 2000 - 0.24) < 0.03
    assert abs(kinds.count(NOISE_POISSON) / 2000 - 0.16) < 0.03
    sigmas = [d.noise.level for d in draws if d.noise.kind == NOISE_GAUSSIAN]
    assert min(sigmas) >= 1 / 255 and max(sigmas) <= 10 / 255
    noisy = [d.noise for d in draws if d.noise.kind != NOISE_NONE]
    grey = sum(n.gray for n in noisy) / len(noisy)
    assert abs(grey - config.p_gray_noise) < 0.06, grey  # 0.4: grey noise in 40 % of the noisy pairs
    flips = np.bincount([d.dihedral for d in draws], minlength=8)
    assert flips.min() > 180 and flips.max() < 320  # 250 expected each
    # Probability proportional to area: chelsea 451x300, coffee 600x400.
    share = sum(d.image_index == 1 for d in draws) / 2000
    assert abs(share - 240000 / (240000 + 135300)) < 0.035
    uniform = make_pair_sampler(photos, KERNEL, dataclasses.replace(config, image_choice="uniform"), seed=9)
    share = sum(uniform.draw_params().image_index == 1 for _ in range(2000)) / 2000
    assert abs(share - 0.5) < 0.035


def test_noise_and_usm_touch_the_input_only(photo: np.ndarray) -> None:
    delta = np.ones((1, 1))
    base = dataclasses.replace(PLAIN, scale=3)
    noisy_config = dataclasses.replace(base, p_gauss_noise=1.0, gauss_sigma_range=(0.03, 0.03))
    sampler = make_pair_sampler([photo], delta, noisy_config, seed=4)
    batch = sampler.sample(4)
    for n, params in enumerate(batch.params):
        crop = _crop_of(photo, sampler, params)
        np.testing.assert_array_equal(batch.hr[n].transpose(1, 2, 0), crop)  # margin 0 at 1x1
    residual = batch.lr - batch.hr[:, :, 1::3, 1::3]
    assert 0.02 < residual.std() < 0.032

    usm_config = dataclasses.replace(base, p_usm=1.0)
    sampler = make_pair_sampler([photo], delta, usm_config, seed=4)
    batch = sampler.sample(4)
    for n, params in enumerate(batch.params):
        np.testing.assert_array_equal(batch.hr[n].transpose(1, 2, 0), _crop_of(photo, sampler, params))
    plain = batch.hr[:, :, 1::3, 1::3]
    assert np.abs(batch.lr - plain).mean() > 1e-3
    # Sharpening raises local contrast of the input.
    lap = lambda x: np.abs(np.diff(x, axis=-1)).mean()  # noqa: E731
    assert lap(batch.lr) > lap(plain)


def test_noise_fields_have_the_documented_strength() -> None:
    flat = np.full((64, 64, 3), 0.5, dtype=np.float32)
    poisson = add_noise(flat, NoiseParams(NOISE_POISSON, 1.0, gray=False, seed=1)) - flat
    assert abs(poisson.std() - np.sqrt(0.5 * 255) / 255) < 0.005  # about 11/255 at mid-grey
    half = add_noise(flat, NoiseParams(NOISE_POISSON, 0.5, gray=False, seed=1)) - flat
    np.testing.assert_allclose(half, 0.5 * poisson, atol=1e-6)
    gray = add_noise(flat, NoiseParams(NOISE_GAUSSIAN, 0.02, gray=True, seed=2)) - flat
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
    assert abs(gray.std() - 0.02) < 0.002
    color = add_noise(flat, NoiseParams(NOISE_GAUSSIAN, 0.02, gray=False, seed=2)) - flat
    assert np.abs(color[..., 0] - color[..., 2]).mean() > 0.01
    np.testing.assert_array_equal(add_noise(flat, NoiseParams()), flat)


def test_photometric_ops_stay_in_range_and_are_shared(photo: np.ndarray) -> None:
    patch = photo[:64, :64]
    grey = np.full((8, 8, 3), 0.4, dtype=np.float32)
    for name in PHOTOMETRIC_OPS:
        np.testing.assert_allclose(photometric_op(patch, name, 0.0), patch, atol=1e-6)
        for value in (-1.0, 1.0):
            out = photometric_op(patch, name, value)
            assert out.min() >= 0.0 and out.max() <= 1.0 and out.dtype == np.float32
            assert np.abs(out - patch).mean() > 1e-3, name
        if name in ("saturation", "hue"):
            np.testing.assert_allclose(photometric_op(grey, name, 1.0), grey, atol=1e-5)
    assert photometric_op(patch, "brightness", 1.0).mean() > patch.mean()
    assert photometric_op(patch, "gamma", 1.0).mean() < patch.mean()

    # Applied before degradation: with a delta kernel at x3 input and target still match exactly,
    # and the target is the photometric op of the crop.
    config = dataclasses.replace(PLAIN, scale=3, p_photometric=1.0, photometric_magnitude=10.0)
    sampler = make_pair_sampler([photo], np.ones((1, 1)), config, seed=6)
    batch = sampler.sample(8)
    np.testing.assert_allclose(batch.lr, batch.hr[:, :, 1::3, 1::3], atol=1e-6)
    for n, params in enumerate(batch.params):
        assert 1 <= len(params.photometric) <= 2
        crop = _crop_of(photo, sampler, params)
        expected = apply_photometric(crop, params.photometric)
        np.testing.assert_allclose(batch.hr[n].transpose(1, 2, 0), expected, atol=1e-6)


# --------------------------------------------------------------------------- weights, seeds, errors


def test_weights_follow_the_target_geometry(photos: list[np.ndarray]) -> None:
    config = PairConfig(scale=4, lr_patch=12, p_flip_rot=1.0, p_affine=0.7, p_photometric=0.0,
                        p_usm=1.0, p_gauss_noise=0.5, p_poisson_noise=0.5)
    weights = [p[..., 1].copy() for p in photos]  # weight map = green channel
    batch = make_pair_sampler(photos, KERNEL, config, weights=weights, seed=8).sample(16)
    assert any(p.affine is not None for p in batch.params)
    assert any(p.dihedral not in (0,) for p in batch.params)
    np.testing.assert_array_equal(batch.weight[:, 0], batch.hr[:, 1])


def test_same_seed_same_batches_other_seed_differs(photos: list[np.ndarray]) -> None:
    config = PairConfig(scale=4, lr_patch=12, p_affine=0.5, p_photometric=0.5, p_usm=0.5)
    a = make_pair_sampler(photos, KERNEL, config, seed=42)
    b = make_pair_sampler(photos, KERNEL, config, seed=42)
    c = make_pair_sampler(photos, KERNEL, config, seed=43)
    for _ in range(3):
        ba, bb, bc = a.sample(4), b.sample(4), c.sample(4)
        for name in ("lr", "hr", "weight"):
            np.testing.assert_array_equal(getattr(ba, name), getattr(bb, name))
        assert not np.array_equal(ba.hr, bc.hr)
    state = np.random.get_state()[1].copy()
    a.sample(2)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # global RNG untouched


@pytest.mark.parametrize("affine", [0.0, 0.5])
def test_too_small_images_name_the_minimum(photo: np.ndarray, affine: float) -> None:
    config = PairConfig(scale=4, lr_patch=12, p_affine=affine, affine_rotate_deg=20.0, affine_shear_deg=10.0)
    minimum = min_image_size(config, KERNEL.shape)
    assert minimum >= 48 + 2 * 4  # target patch plus at least one LR pixel of margin per side
    # Every draw must fit an image of exactly the minimum size (renders raise otherwise).
    make_pair_sampler([photo[:minimum, :minimum]], KERNEL, config, seed=0).sample(64)
    with pytest.raises(ConfigError) as info:
        make_pair_sampler([photo, photo[: minimum - 1, :200]], KERNEL, config, seed=0)
    message = str(info.value)
    assert f"at least {minimum} LR pixels" in message and "image 1" in message
    assert "lr_patch <=" in message


def test_bad_inputs_raise_typed_errors(photo: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="exclusive"):
        PairConfig(p_gauss_noise=0.7, p_poisson_noise=0.5)
    with pytest.raises(ConfigError, match="sum to 1"):
        make_pair_sampler([photo], KERNEL * 2, PLAIN, seed=0)
    with pytest.raises(ShapeError):
        make_pair_sampler([photo], KERNEL, PLAIN, weights=[np.ones((10, 10), np.float32)], seed=0)
    with pytest.raises(ConfigError, match="negative"):  # it would make training increase the error there
        make_pair_sampler([photo], KERNEL, PLAIN, weights=[-np.ones(photo.shape[:2], np.float32)], seed=0)
    for kwargs, words in (({"usm_sigma_range": (1.0, 1e6)}, "<= 10.0"),  # built a Gaussian of millions of taps
                          ({"poisson_scale_range": (0.1, math.inf)}, "<= 100.0"),
                          ({"scale": True}, "must be an integer"), ({"p_affine": "0.5"}, "must be a number"),
                          ({"affine_scale": 0.5}, "tuple\\[float, float\\]")):
        with pytest.raises(ConfigError, match=words):
            PairConfig(**kwargs)  # type: ignore[arg-type]
    assert PairConfig(scale=np.int64(4), lr_patch=np.int64(8)).lr_patch == 8  # type: ignore[arg-type]
    with pytest.raises(ImageError, match="float32"):
        validate_images([(photo * 255).astype(np.uint8)], PLAIN)
    with pytest.raises(ConfigError, match="no images"):
        validate_images([], PLAIN)


# --------------------------------------------------------------------------- small images in a group


def test_images_too_small_for_the_patch_are_skipped_and_named(photos: list[np.ndarray]) -> None:
    config = PairConfig(scale=4, lr_patch=24)
    minimum = min_image_size(config, KERNEL.shape)
    small = photos[0][: minimum - 1, : minimum + 30]
    usable = select_usable_images([photos[0], small, photos[1]], config, kernel_shape=KERNEL.shape,
                                  names=["a.png", "tiny.png", "c.png"])
    assert usable.indices == (0, 2)
    assert usable.skipped == (("tiny.png", minimum + 30, minimum - 1),)
    assert usable.config == config and not usable.patch_reduced and usable.minimum == minimum
    message = usable.warning()
    assert message is not None and "tiny.png" in message and f"smaller than {minimum} LR pixels" in message
    assert "a.png" not in message
    # The kept images give pairs with the requested patch.
    sampler = make_pair_sampler([photos[0], photos[1]], KERNEL, usable.config, seed=0)
    assert sampler.sample(2).lr.shape == (2, 3, 24, 24)
    assert select_usable_images(photos, config, kernel_shape=KERNEL.shape).warning() is None


def test_bad_min_patch_and_non_finite_images_are_named(photo: np.ndarray) -> None:
    """min_patch=0 was reported as a bad lr_patch; a NaN pixel as "values in [nan, nan]"."""
    with pytest.raises(ConfigError, match="min_patch must be an integer >= 1"):
        select_usable_images([photo], PairConfig(scale=4, lr_patch=24), kernel_shape=KERNEL.shape, min_patch=0)
    broken = photo.copy()
    broken[5, 7, 1] = np.nan
    with pytest.raises(ImageError, match="b.png contains NaN or infinite values"):
        select_usable_images([photo, broken], PairConfig(scale=4, lr_patch=24), kernel_shape=KERNEL.shape,
                             names=["a.png", "b.png"])


def test_patch_shrinks_when_no_image_fits_it(photo: np.ndarray) -> None:
    config = PairConfig(scale=4, lr_patch=32)
    side = min_image_size(dataclasses.replace(config, lr_patch=14), KERNEL.shape)
    images = [photo[:side, :side], photo[: side - 20, : side - 20]]
    usable = select_usable_images(images, config, kernel_shape=KERNEL.shape, names=["big", "small"])
    assert usable.patch_reduced and usable.config.lr_patch == 14 and usable.requested_patch == 32
    assert usable.indices == (0,) and usable.skipped[0][0] == "small"
    message = usable.warning()
    assert message is not None and "using lr_patch 14" in message and "small" in message
    assert "compare the output with the backbone's" in message  # the small-group caution
    batch = make_pair_sampler([images[0]], KERNEL, usable.config, seed=1).sample(3)
    assert batch.lr.shape == (3, 3, 14, 14) and batch.hr.shape == (3, 3, 56, 56)


def test_group_fails_only_when_no_image_can_be_used(photo: np.ndarray) -> None:
    config = PairConfig(scale=4, lr_patch=24)
    need = min_image_size(dataclasses.replace(config, lr_patch=8), KERNEL.shape)
    with pytest.raises(ConfigError) as info:
        select_usable_images([photo[:40, :60], photo[: need - 1, :300]], config, kernel_shape=KERNEL.shape,
                             names=["x.png", "y.png"])
    message = str(info.value)
    assert f"at least {need} LR pixels" in message and "x.png (60x40)" in message
    assert f"y.png (300x{need - 1})" in message and "default size" not in message
    # Before the kernel is estimated its size is a default: the message says the minimum may grow (images
    # above it then failed with a larger figure, once the estimate of blurry photos came back 38x38).
    with pytest.raises(ConfigError, match=r"kernel \(the default size: the kernel estimated from blurrier images is "
                                          r"larger and needs larger images still\)"):
        select_usable_images([photo[:40, :60]], config, kernel_shape=KERNEL.shape, kernel_assumed=True)
    # Exactly the minimum is enough.
    usable = select_usable_images([photo[:need, :need]], config, kernel_shape=KERNEL.shape)
    assert usable.config.lr_patch == 8 and usable.indices == (0,)
    with pytest.raises(ConfigError, match="no images"):
        select_usable_images([], config)
    with pytest.raises(ShapeError):
        select_usable_images([photo[..., 0]], config)


# --------------------------------------------------------------------------- from mutation testing


def test_portrait_images_are_cropped_across_their_whole_width(photo: np.ndarray) -> None:
    """Every image of the tests was landscape: an x range taken from the height went unnoticed."""
    portrait = np.ascontiguousarray(photo.transpose(1, 0, 2)[:, :150])  # 150 wide, 451 high
    sampler = make_pair_sampler([portrait], KERNEL, PLAIN, seed=4)
    batch = sampler.sample(64)
    half = (sampler.geometry.crop - 1) / 2.0
    xs = [p.centre_xy[0] for p in batch.params]
    ys = [p.centre_xy[1] for p in batch.params]
    for n, params in enumerate(batch.params):
        crop = _crop_of(portrait, sampler, params)
        m = sampler.geometry.margin
        np.testing.assert_array_equal(batch.hr[n].transpose(1, 2, 0), crop[m : m + 48, m : m + 48])
    free_x, free_y = 150 - sampler.geometry.crop, 451 - sampler.geometry.crop
    assert min(xs) - half < 0.25 * free_x and max(xs) - half > 0.75 * free_x
    assert min(ys) - half < 0.25 * free_y and max(ys) - half > 0.75 * free_y


def test_zooming_out_is_anti_aliased_by_default() -> None:
    """Every affine test switched anti-aliasing off: the default path (a Gaussian pre-blur before a
    zoom-out) was never checked; without it the targets of noise are aliased (higher variance)."""
    noise = np.random.default_rng(0).random((400, 400, 3), dtype=np.float32)
    spread = {}
    for antialias in (True, False):
        config = dataclasses.replace(PLAIN, p_affine=1.0, affine_scale=(0.5, 0.5), affine_rotate_deg=0.0,
                                     affine_shear_deg=0.0, affine_antialias=antialias)
        spread[antialias] = float(make_pair_sampler([noise], KERNEL, config, seed=2).sample(8).hr.std())
    assert spread[True] < 0.85 * spread[False], spread


@pytest.mark.parametrize("make_bad, error, words", [
    (lambda k: np.where(np.arange(k.size).reshape(k.shape) == 5, np.nan, k), ConfigError, "non-finite"),
    (lambda k: k * 1.01, ConfigError, "sum to 1"),
    (lambda k: np.pad(k, ((0, 0), (0, 1))), None, None),  # a wrong-parity width: shifted half a pixel, fine
], ids=["nan", "sums-to-1.01", "odd-width"])
def test_kernels_that_are_not_a_blur_are_refused(photo: np.ndarray, make_bad, error, words) -> None:
    bad = make_bad(KERNEL.astype(np.float64))
    if error is None:
        make_pair_sampler([photo], bad, PLAIN, seed=0).sample(1)
        return
    with pytest.raises(error, match=words):
        make_pair_sampler([photo], bad, PLAIN, seed=0)


def test_a_kernel_summing_nearly_to_one_is_renormalised(photo: np.ndarray) -> None:
    exact = make_pair_sampler([photo], KERNEL, PLAIN, seed=3).sample(2)
    near = make_pair_sampler([photo], KERNEL * 1.0005, PLAIN, seed=3).sample(2)
    np.testing.assert_allclose(near.lr, exact.lr, atol=1e-6)


def test_non_finite_weight_maps_and_images_out_of_range_are_refused(photo: np.ndarray) -> None:
    weight = np.ones(photo.shape[:2], np.float32)
    weight[3, 3] = np.nan  # NaN < 0 is False: a sign check alone lets it through, and the loss turns NaN
    with pytest.raises(ConfigError, match="non-finite or negative"):
        make_pair_sampler([photo], KERNEL, PLAIN, weights=[weight], seed=0)
    with pytest.raises(ImageError, match=r"expected \[0, 1\] \(divide 8-bit by 255\)"):
        validate_images([photo * 255.0], PLAIN)  # 8-bit levels as float


def test_inputs_stay_in_range_with_a_kernel_of_negative_lobes() -> None:
    """Black and white stripes under a bicubic kernel (negative lobes) overshoot [0, 1]: clipped."""
    from adassr.adapt.degradation import bicubic_kernel, blur_downsample

    kernel = bicubic_kernel(4)
    stripes = np.zeros((200, 200, 3), np.float32)
    stripes[:, (np.arange(200) // 9) % 2 == 1] = 1.0
    raw = blur_downsample(stripes, kernel, 4)
    assert raw.min() < -0.01 and raw.max() > 1.01  # what the clip is for
    batch = make_pair_sampler([stripes], kernel, PLAIN, seed=6).sample(16)
    assert batch.lr.min() >= 0.0 and batch.lr.max() <= 1.0


@pytest.mark.parametrize("ops", [0, len(PHOTOMETRIC_OPS) + 1])
def test_photometric_op_counts_outside_the_list_are_refused(ops: int) -> None:
    with pytest.raises(ConfigError, match="photometric_max_ops must be in 1"):
        PairConfig(photometric_max_ops=ops)


def test_a_wide_short_kernel_gets_a_margin_for_its_width(photo: np.ndarray) -> None:
    """Every test kernel was square: a margin from the kernel's height alone cut the convolution of a wide
    one short; the pair must still be the convolution then the centre sampling."""
    rng = np.random.default_rng(1)
    kernel = rng.random((4, 12)) ** 3
    kernel /= kernel.sum()
    sampler = make_pair_sampler([photo], kernel, PLAIN, seed=2)
    batch = sampler.sample(2)
    for n, params in enumerate(batch.params):
        crop = _crop_of(photo, sampler, params).astype(np.float64)
        np.testing.assert_allclose(batch.lr[n].transpose(1, 2, 0), _direct_lr(crop, kernel, sampler.geometry.margin),
                                   atol=2e-5)


def test_grey_poisson_noise_is_the_same_in_every_channel(photo: np.ndarray) -> None:
    image = photo[:64, :64]
    noisy = add_noise(image, NoiseParams(kind=NOISE_POISSON, level=1.0, gray=True, seed=3))
    inner = (image > 0.05).all(axis=2) & (image < 0.95).all(axis=2)  # no clipping there
    delta = (noisy - image)[inner]
    assert np.abs(delta).max() > 0
    np.testing.assert_allclose(delta[:, 0], delta[:, 1], atol=1e-6)
    np.testing.assert_allclose(delta[:, 0], delta[:, 2], atol=1e-6)


def test_contrast_turns_about_the_patch_mean() -> None:
    """About the patch's mean luminance, as documented: its mean stays (no clipping on a mid-grey patch)."""
    from adassr.adapt.augment import luminance

    patch = (0.3 + 0.1 * np.random.default_rng(0).random((32, 32, 3))).astype(np.float32)
    out = photometric_op(patch, "contrast", 0.8)
    assert abs(float(luminance(out).mean()) - float(luminance(patch).mean())) < 1e-5
    assert out.std() > patch.std()


def test_probabilities_above_one_and_empty_batches_are_refused(photo: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="p_affine must be a probability in \\[0, 1\\], got 1.5"):
        PairConfig(p_affine=1.5)
    sampler = make_pair_sampler([photo], KERNEL, PLAIN, seed=0)
    with pytest.raises(ConfigError, match="batch_size must be >= 1, got 0"):
        sampler.sample(0)
    with pytest.raises(ConfigError, match="got 2 weight maps for 1 images"):
        make_pair_sampler([photo], KERNEL, PLAIN, weights=[np.ones(photo.shape[:2], np.float32)] * 2, seed=0)
    assert PairConfig(image_choice="uniform").without_augmentation().image_choice == "uniform"


def test_photometric_draws_take_one_to_max_distinct_ops(photo: np.ndarray) -> None:
    config = dataclasses.replace(PLAIN, p_photometric=1.0, photometric_max_ops=3)
    params = make_pair_sampler([photo], KERNEL, config, seed=9).sample(60).params
    counts = [len(p.photometric) for p in params]
    assert set(counts) == {1, 2, 3}, counts
    assert all(len({name for name, _ in p.photometric}) == len(p.photometric) for p in params)


def test_float64_images_are_sampled_as_float32(photo: np.ndarray) -> None:
    batch = make_pair_sampler([photo.astype(np.float64)], KERNEL, PLAIN, seed=1).sample(2)
    same = make_pair_sampler([photo], KERNEL, PLAIN, seed=1).sample(2)
    np.testing.assert_array_equal(batch.hr, same.hr)
    np.testing.assert_allclose(batch.lr, same.lr, atol=1e-6)


def test_a_dihedral_index_outside_0_to_7_is_refused(photo: np.ndarray) -> None:
    with pytest.raises(ValueError, match="dihedral"):
        dihedral(photo[:4, :4], 8)
