"""NIQE: the original MATLAB values on the calibration images, invariances, numpy vs torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adassr.adapt.quality import niqe as niqe_mod
from adassr.adapt.quality.niqe import aggd_fit, imresize_weights, matlab_imresize, niqe, to_luma
from adassr.adapt.quality.niqe_torch import niqe_torch
from adassr.runtime.errors import ConfigError, ShapeError
from adassr.runtime.images import read_image, to_float32

ROOT = Path(__file__).resolve().parents[2]
CALIB = ROOT / "tests" / "data" / "calibration"
# Scores of the original MATLAB release (computequality.m) on these crops.
MATLAB_NIQE = {"dist_I04": 3.65492152353770, "dist_I06": 3.23547743716998}
PHOTOS = sorted((ROOT / "samples" / "cameras").glob("*/*")) + sorted(CALIB.glob("dist_*.png"))


def _pixels(path: Path) -> np.ndarray:
    return read_image(path).pixels


def _batch(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(to_float32(pixels)).permute(2, 0, 1).unsqueeze(0)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(MATLAB_NIQE))
def test_matches_original_matlab_release(name: str) -> None:
    score = niqe(_pixels(CALIB / f"{name}.png"))
    assert abs(score - MATLAB_NIQE[name]) <= 0.01, score


def test_pristine_model_and_window_match_the_vendored_file() -> None:
    mu, cov = niqe_mod.pristine_params()
    assert mu.shape == (36,) and cov.shape == (36, 36)
    assert np.allclose(cov, cov.T)
    # The npz also carries the 7x7 window of the original; ours is built from fspecial's formula.
    with np.load(ROOT / "adapt" / "quality" / "data" / "niqe_pris_params.npz", allow_pickle=False) as d:
        window = d["gaussian_window"]
    g = niqe_mod.gaussian_window_1d()
    np.testing.assert_allclose(np.outer(g, g), window, rtol=0, atol=1e-15)


def test_rgb2gray_is_matlab_rounded() -> None:
    rgb = np.array([[[255, 255, 255], [0, 0, 0], [10, 200, 30], [255, 0, 0]]], dtype=np.uint8)
    gray = to_luma(rgb, "gray")[0]
    expected = [255, 0, round(0.2989360212937754 * 10 + 0.5870430744511212 * 200 + 0.11402090425510325 * 30), 76]
    assert gray.tolist() == expected
    y = to_luma(rgb, "y")[0]
    assert y.tolist() == [235, 16, round(16 + (65.481 * 10 + 128.553 * 200 + 24.966 * 30) / 255), 81]


def test_imresize_weights_follow_matlab_contributions() -> None:
    weights, indices = imresize_weights(96, 0.5)
    assert weights.shape[0] == 48 and indices.min() >= 0 and indices.max() <= 95
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-14)
    # Cubic convolution reproduces linear ramps: away from the borders, output i sits at 2 i + 0.5.
    ramp = np.tile(np.arange(96, dtype=np.float64), (96, 1))
    half = matlab_imresize(ramp)
    np.testing.assert_allclose(half[:, 4:-4], np.tile(2 * np.arange(4, 44) + 0.5, (48, 1)), atol=1e-12)
    # Symmetric padding: a constant image stays constant, also at the borders.
    np.testing.assert_allclose(matlab_imresize(np.full((20, 30), 7.0)), 7.0, atol=1e-12)


def test_grid_argmin_equals_brute_force() -> None:
    gam, r_gam, _, _ = niqe_mod.aggd_tables()
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.uniform(0.0, 0.8, 2000), r_gam[::97], (r_gam[:-1:53] + r_gam[1::53]) / 2, [np.nan]])
    brute = np.argmin((r_gam[None, :] - np.nan_to_num(values, nan=np.inf)[:, None]) ** 2, axis=1)
    brute[np.isnan(values)] = 0
    np.testing.assert_array_equal(niqe_mod._grid_argmin(values), brute)


def test_aggd_fit_recovers_a_gaussian() -> None:
    rng = np.random.default_rng(1)
    alpha, bl, br, _ = aggd_fit(rng.normal(0.0, 2.0, (3, 200_000)))
    np.testing.assert_allclose(alpha, 2.0, atol=0.03)
    np.testing.assert_allclose(bl, 2.0 * np.sqrt(2.0), rtol=0.02)  # beta = sigma * sqrt(2) for alpha = 2
    np.testing.assert_allclose(br, 2.0 * np.sqrt(2.0), rtol=0.02)


def test_invariant_to_lossless_resave_and_input_types(tmp_path: Path) -> None:
    pixels = _pixels(ROOT / "samples" / "cameras" / "canon" / "flower.jpg")
    Image.fromarray(pixels).save(tmp_path / "flower.png")
    score = niqe(pixels)
    assert niqe(_pixels(tmp_path / "flower.png")) == score
    assert niqe(pixels.astype(np.uint16) * 257) == score
    assert niqe(to_float32(pixels)) == score
    gray = to_luma(pixels).astype(np.uint8)
    assert niqe(gray) == score and niqe(gray[:, :, None]) == score


def test_crop_border_and_options() -> None:
    pixels = _pixels(CALIB / "dist_I04.png")
    assert niqe(pixels, crop_border=4) == niqe(pixels[4:-4, 4:-4])
    assert niqe(pixels, crop_border=4) != niqe(pixels)
    assert niqe(pixels, convert="y") != niqe(pixels)
    with pytest.raises(ConfigError):
        niqe(pixels, convert="rgb")  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match="two 96x96 blocks"):
        niqe(pixels[:100, :150])


def test_blurring_raises_niqe() -> None:
    import cv2

    pixels = _pixels(ROOT / "tests" / "data" / "hr" / "astronaut.png")
    blurred = cv2.GaussianBlur(pixels, (0, 0), 3.0)
    assert niqe(blurred) > niqe(pixels) + 2.0


@pytest.mark.parametrize("path", PHOTOS, ids=lambda p: p.name)
def test_torch_agrees_with_numpy(path: Path) -> None:
    pixels = _pixels(path)
    expected = niqe(pixels)
    got = niqe_torch(_batch(pixels))
    assert got.shape == (1,) and got.dtype == torch.float64
    assert abs(float(got[0]) - expected) <= 0.005 * expected


def test_torch_batch_options_and_errors() -> None:
    a = _pixels(CALIB / "dist_I04.png")
    b = _pixels(CALIB / "dist_I06.png")
    batch = torch.cat([_batch(a), _batch(b)])
    scores = niqe_torch(batch, crop_border=4, convert="y")
    expected = [niqe(a, crop_border=4, convert="y"), niqe(b, crop_border=4, convert="y")]
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-9)
    gray = torch.from_numpy(to_luma(a) / 255.0)[None, None]
    np.testing.assert_allclose(niqe_torch(gray).numpy(), [niqe(a)], rtol=1e-9)
    with pytest.raises(ShapeError):
        niqe_torch(batch[:, :2])
    with pytest.raises(ShapeError):
        niqe_torch(batch[..., :90, :])
    with pytest.raises(ConfigError):
        niqe_torch(batch, convert="rgb")  # type: ignore[arg-type]
    for crop in (-1, True, 2.5):  # True cropped one pixel, 2.5 failed deep in the slicing
        with pytest.raises(ConfigError, match="crop_border must be an int >= 0"):
            niqe_torch(batch, crop_border=crop)  # type: ignore[arg-type]


@pytest.mark.gpu
def test_torch_cuda_matches_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pixels = _pixels(CALIB / "dist_I06.png")
    x = _batch(pixels).repeat(2, 1, 1, 1)
    cpu = niqe_torch(x)
    gpu = niqe_torch(x.cuda())
    assert gpu.device.type == "cuda"
    np.testing.assert_allclose(gpu.cpu().numpy(), cpu.numpy(), rtol=1e-9)


def test_niqe_torch_names_a_numpy_array_as_the_wrong_type() -> None:
    """It failed with numpy's AttributeError (a helper's hunt of the library API)."""
    with pytest.raises(ConfigError, match="niqe_torch expects a torch tensor .*got numpy.ndarray"):
        niqe_torch(np.zeros((1, 3, 96, 96), np.float32))  # type: ignore[arg-type]


def test_a_single_complete_block_is_nan_not_a_crash() -> None:
    """Weights whose outputs went mostly flat leave few blocks with finite features; the early stop takes
    NaN for "no score". One complete block has no covariance: NaN (a helper's mutant let it through to an
    SVD that did not converge and ended the adaptation)."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(5, 36))
    features[1:, 3] = np.nan  # only the first block is complete
    assert np.isnan(niqe_mod.niqe_distance(features))
    features[2, 3] = 0.5  # two complete blocks: a score
    assert np.isfinite(niqe_mod.niqe_distance(features))


def test_torch_quantises_and_clamps_float_outputs_like_an_8bit_save() -> None:
    """SR outputs are not on 8-bit levels and overshoot [0, 1]: scored as round(255 x) clipped to 0..255."""
    pixels = _pixels(CALIB / "dist_I06.png")[:96, :192]
    x = _batch(pixels).to(torch.float64)
    below = x - 0.3 / 255.0  # rounds back up to the same levels (0 clamps to 0)
    np.testing.assert_allclose(niqe_torch(below).numpy(), [niqe(pixels)], rtol=1e-9)
    overshoot = x * 1.4 - 0.2  # a fifth of the range below 0, more above 1
    levels = np.clip(np.floor(overshoot[0].permute(1, 2, 0).numpy() * 255.0 + 0.5), 0, 255).astype(np.uint8)
    np.testing.assert_allclose(niqe_torch(overshoot).numpy(), [niqe(levels)], rtol=1e-9)


def test_torch_refuses_one_block_and_integer_images() -> None:
    pixels = _pixels(CALIB / "dist_I06.png")
    x = _batch(pixels)
    with pytest.raises(ShapeError, match="two 96x96 blocks"):
        niqe_torch(x[..., :96, :96])  # exactly one block
    with pytest.raises(ConfigError, match="floating images"):
        niqe_torch(torch.from_numpy(pixels).permute(2, 0, 1)[None])  # uint8 would be clamped to 0 / 1


def test_torch_crop_border_crops_every_side() -> None:
    pixels = _pixels(CALIB / "dist_I04.png")[:200, :196]  # cropped by 4: 192 x 188, one block column
    got = niqe_torch(_batch(pixels), crop_border=4)
    np.testing.assert_allclose(got.numpy(), [niqe(pixels, crop_border=4)], rtol=1e-9)


def test_torch_distance_is_nan_for_one_complete_block_and_spares_the_batch() -> None:
    """As the numpy niqe_distance: one complete block has no covariance -> NaN, without failing the SVD
    of the other images of the batch."""
    from adassr.adapt.quality.niqe_torch import _distance

    rng = np.random.default_rng(0)
    features = rng.normal(size=(2, 5, 36))
    features[0, 1:, 3] = np.nan  # image 0: only its first block is complete
    got = _distance(torch.from_numpy(features)).numpy()
    assert np.isnan(got[0])
    np.testing.assert_allclose(got[1], niqe_mod.niqe_distance(features[1]), rtol=1e-9)
