"""export/crops.py: the textured windows and real-photo crops the exports are validated on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adassr.export.crops import checkout_file, photo_crops, read_rgb, textured_windows, usable_photo, validation_inputs
from adassr.runtime.images import write_image


def _patch_image(h: int, w: int, top: int, left: int, side: int, *, seed: int = 0) -> np.ndarray:
    """A flat grey image with one random-texture ``side`` square at (``top``, ``left``)."""
    image = np.full((h, w, 3), 0.5, np.float32)
    image[top : top + side, left : left + side] = np.random.default_rng(seed).random((side, side, 3), np.float32)
    return image


def test_the_best_window_lies_on_the_half_window_grid() -> None:
    """Texture at (4, 12) with 8 px windows: on the 4 px grid, not on the 8 px tiles."""
    image = _patch_image(24, 24, 4, 12, 8)
    assert textured_windows(image, 8, 1) == [(4, 12)]


def test_the_last_window_flush_with_the_bottom_right_edge_is_a_candidate() -> None:
    """21 px with 8 px windows: the grid 0, 4, 8, 12 misses the edge window 13."""
    image = _patch_image(21, 21, 13, 13, 8)
    assert textured_windows(image, 8, 1) == [(13, 13)]


@pytest.mark.parametrize("axis", [0, 1])
def test_texture_along_either_axis_counts(axis: int) -> None:
    """Stripes that change only down the rows (axis 0) or only along them (axis 1) are texture."""
    image = np.full((24, 24, 3), 0.5, np.float32)
    stripes = np.indices((8, 8))[axis] % 2
    image[8:16, 12:20] = stripes[:, :, None]
    (y, x), = textured_windows(image, 8, 1)
    assert (y, x) == (8, 12)


def test_windows_come_most_textured_first() -> None:
    image = _patch_image(16, 40, 4, 4, 8)
    image[4:12, 28:36] = 0.5 + 0.1 * (np.indices((8, 8)).sum(0) % 2)[:, :, None]  # weaker texture
    assert textured_windows(image, 8, 2) == [(4, 4), (4, 28)]


def test_texture_above_and_left_of_the_best_window_does_not_lower_its_score() -> None:
    """The window sums come from the integral image: weak texture at the top left, strong at the bottom right."""
    checker = (np.indices((24, 24)).sum(0) % 2)[:, :, None].astype(np.float32)
    image = np.full((24, 24, 3), 0.5, np.float32)
    image[:16, :16] = 0.4 + 0.2 * checker[:16, :16]
    image[16:, 16:] = checker[16:, 16:]
    assert textured_windows(image, 8, 1) == [(16, 16)]


@pytest.mark.parametrize("channel", [0, 1, 2])
def test_texture_in_any_colour_channel_counts(channel: int) -> None:
    image = np.full((24, 24, 3), 0.5, np.float32)
    image[4:12, 12:20, channel] = np.random.default_rng(2).random((8, 8), np.float32)
    assert textured_windows(image, 8, 1) == [(4, 12)]


def test_validation_crops_of_a_portrait_photo_cut_at_the_chosen_windows(tmp_path: Path) -> None:
    """A portrait photo 30 wide: 30 px windows (the narrower side), the crops are the image there."""
    pixels = (np.random.default_rng(3).random((70, 30, 3)) * 255).astype(np.uint8)
    photo = write_image(tmp_path / "portrait.png", pixels)
    batch, non_square = validation_inputs(photo)
    assert batch.batch.shape == (2, 3, 30, 30) and batch.batch.dtype == np.float32
    image = read_rgb(photo)
    corners = textured_windows(image, 30, 2)
    for crop, (y, x) in zip(batch.batch, corners, strict=True):
        np.testing.assert_array_equal(crop, image[y : y + 30, x : x + 30].transpose(2, 0, 1))
    assert non_square.batch.shape == (1, 3, 20, 28)
    np.testing.assert_array_equal(non_square.batch[0], batch.batch[0, :, :20, :28])
    y0, x0 = corners[0]
    assert non_square.description.endswith(f"20x28 crop at (y={y0}, x={x0})")


def test_a_photo_of_one_window_repeats_it_as_the_batch_of_two(tmp_path: Path) -> None:
    pixels = (np.random.default_rng(4).random((29, 29, 3)) * 255).astype(np.uint8)
    batch, non_square = validation_inputs(write_image(tmp_path / "one.png", pixels))
    assert batch.batch.shape == (2, 3, 29, 29)
    np.testing.assert_array_equal(batch.batch[0], batch.batch[1])
    assert non_square.batch.shape == (1, 3, 20, 28)


def test_usable_photos_need_a_shorter_side_above_the_non_square_crop(tmp_path: Path) -> None:
    def photo(name: str, h: int, w: int) -> Path:
        return write_image(tmp_path / name, np.full((h, w, 3), 90, np.uint8))

    assert usable_photo(photo("square.png", 29, 29))
    assert not usable_photo(photo("edge.png", 28, 28))  # validation_inputs refuses it
    assert not usable_photo(photo("narrow.png", 100, 28))
    assert not usable_photo(photo("low.png", 28, 100))
    assert not usable_photo(tmp_path / "missing.png")
    assert not usable_photo(tmp_path)


def test_a_grey_photo_reads_as_rgb(tmp_path: Path) -> None:
    grey = (np.random.default_rng(0).random((20, 30)) * 255).astype(np.uint8)
    rgb = read_rgb(write_image(tmp_path / "grey.png", grey))
    assert rgb.shape == (20, 30, 3) and rgb.dtype == np.float32 and rgb.flags.c_contiguous
    np.testing.assert_allclose(rgb[:, :, 0], grey / 255.0, atol=1e-6)
    assert (rgb[:, :, 0] == rgb[:, :, 1]).all() and (rgb[:, :, 1] == rgb[:, :, 2]).all()


def test_a_working_folder_is_a_checkout_only_by_its_pyproject(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder whose pyproject names another project is not searched for adassr's bundled files."""
    relative = Path("only_in_the_working_folder.txt")
    (tmp_path / relative).write_text("x")
    monkeypatch.chdir(tmp_path)
    assert checkout_file(relative) is None  # no pyproject
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "other"\n', encoding="utf-8")
    assert checkout_file(relative) is None
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "adassr"\n', encoding="utf-8")
    assert checkout_file(relative) == tmp_path / relative



def test_a_photo_exactly_the_crop_size_is_used_for_the_fp16_check(tmp_path: Path) -> None:
    pixels = (np.random.default_rng(5).random((24, 24, 3)) * 255).astype(np.uint8)
    crops = photo_crops([write_image(tmp_path / "exact.png", pixels)], size=24)
    assert crops is not None and crops.batch.shape == (1, 3, 24, 24)


def test_a_12_bit_photo_reads_at_its_sample_range(tmp_path: Path) -> None:
    """The export's validation crops are read as upscale serves them: 12-bit samples divided by 4095."""
    scope = np.random.default_rng(1).integers(0, 4096, (20, 30)).astype(np.uint16)
    scope[0, 0] = 4095
    rgb = read_rgb(write_image(tmp_path / "scope.png", scope))
    np.testing.assert_allclose(rgb[:, :, 0], scope / 4095.0, atol=1e-6)


def test_a_12_bit_rgb_photo_reads_at_the_range_of_all_its_channels(tmp_path: Path) -> None:
    """The sample range is every channel's: the brightest sample here is the last pixel's blue."""
    scope = np.random.default_rng(2).integers(0, 1024, (20, 30, 3)).astype(np.uint16)
    scope[-1, -1, 2] = 4095
    rgb = read_rgb(write_image(tmp_path / "scope.png", scope))
    np.testing.assert_allclose(rgb, scope / 4095.0, atol=1e-6)
