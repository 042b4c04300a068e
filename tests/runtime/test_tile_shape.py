"""Automatic tile shapes: least work within a pixel budget, and the budget from free memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adassr.runtime.errors import ConfigError
from adassr.runtime.tile_shape import (
    MAX_AUTO_TILE_PIXELS,
    MIN_AUTO_TILE_PIXELS,
    TILE_COST,
    auto_max_tile_pixels,
    choose_tile_shape,
    mem_available_bytes,
    min_tile_side,
)
from adassr.runtime.tiling import TilingOptions, plan_tiles, upscale_tiled


def _work(plan) -> int:  # type: ignore[no-untyped-def]
    th, tw = plan.tile_shape
    return plan.n_tiles * th * tw


def test_vga_photo_takes_two_narrow_tiles_not_two_512_squares() -> None:
    fixed = plan_tiles(480, 640, TilingOptions(tile=512, overlap=32, pad_to_tile=False))
    auto = plan_tiles(480, 640, TilingOptions(overlap=32, max_tile_pixels=512 * 512))
    assert fixed.n_tiles == 2 and fixed.tile_shape == (500, 512)
    assert auto.n_tiles == 2 and auto.tile_shape == (500, 346)
    assert _work(auto) / _work(fixed) < 0.7


def test_whole_image_when_it_fits() -> None:
    plan = plan_tiles(480, 640, TilingOptions(overlap=32, max_tile_pixels=500 * 660))
    assert plan.n_tiles == 1 and plan.tile_shape == (500, 660)


@pytest.mark.parametrize("shape", [(3000, 4000), (1000, 90), (97, 181), (4000, 33)])
@pytest.mark.parametrize("budget", [64 * 64, 200 * 150, 512 * 512])
def test_budget_is_respected_and_work_is_least(shape: tuple[int, int], budget: int) -> None:
    h, w = shape
    opts = TilingOptions(overlap=16, pre_pad=10, max_tile_pixels=budget)
    plan = plan_tiles(h, w, opts)
    th, tw = plan.tile_shape
    assert th * tw <= budget
    # never more work than square tiles of the same budget
    side = int(budget ** 0.5)
    square = plan_tiles(h, w, TilingOptions(tile=side, overlap=16, pre_pad=10, pad_to_tile=False))
    assert _work(plan) <= _work(square)


def test_multiple_of_is_kept() -> None:
    plan = plan_tiles(301, 455, TilingOptions(overlap=16, max_tile_pixels=150 * 150), multiple_of=8)
    assert plan.tile_shape[0] % 8 == 0 and plan.tile_shape[1] % 8 == 0


def test_impossible_budget_names_the_fix() -> None:
    with pytest.raises(ConfigError, match="tile-overlap"):
        choose_tile_shape(500, 500, max_pixels=60 * 60, overlap=32)
    with pytest.raises(ConfigError, match="max_tile_pixels"):
        TilingOptions(max_tile_pixels=0)


def _least_work(canvas_h: int, canvas_w: int, budget: int, overlap: int) -> int | None:
    """Exhaustive search: the least work (pixels plus TILE_COST per tile) of any tile shape within
    ``budget`` (None when none fits)."""
    def counts(canvas: int) -> dict[int, int]:
        found = {canvas: 1}
        for tile in range(max(2 * overlap + 1, min_tile_side(budget)), canvas):
            found[tile] = -(-(canvas - overlap) // (tile - overlap))
        return found

    rows, cols = counts(canvas_h), counts(canvas_w)
    works = [rows[th] * cols[tw] * (th * tw + TILE_COST) for th in rows for tw in cols if th * tw <= budget]
    return min(works) if works else None


def test_the_tile_shape_is_the_least_work_an_exhaustive_search_finds() -> None:
    """The chooser stopped before the smallest tile that keeps the overlap (a 48 x 159 canvas at overlap
    16 was refused although 33-pixel tiles fit 1500 pixels) and looked at only three column counts."""
    assert choose_tile_shape(48, 159, max_pixels=1500, overlap=16) == (33, 45)
    rng = np.random.default_rng(7)
    for _ in range(300):
        h, w, overlap = int(rng.integers(1, 90)), int(rng.integers(1, 90)), int(rng.integers(0, 20))
        budget = int(rng.integers(1, 3000))
        best = _least_work(h, w, budget, overlap)
        if best is None:
            with pytest.raises(ConfigError):
                choose_tile_shape(h, w, max_pixels=budget, overlap=overlap)
            continue
        th, tw = choose_tile_shape(h, w, max_pixels=budget, overlap=overlap)
        n_r = 1 if th >= h else -(-(h - overlap) // (th - overlap))
        n_c = 1 if tw >= w else -(-(w - overlap) // (tw - overlap))
        assert th * tw <= budget and n_r * n_c * (th * tw + TILE_COST) == best, (h, w, overlap, budget)


def test_overlap_0_never_cuts_strips_one_pixel_high() -> None:
    """Without a cost per tile, any exact divisor of the canvas won at overlap 0: a 659 x 739 canvas
    (659 is prime) went into 659 tiles of 1 x 739, and the seams wrecked the output (max error
    206/255 against untiled)."""
    th, tw = choose_tile_shape(659, 739, max_pixels=512 * 512, overlap=0)
    assert min(th, tw) >= 128 and th * tw <= 512 * 512
    th, tw = choose_tile_shape(4052, 3044, max_pixels=512 * 512, overlap=0)  # a phone photo
    assert min(th, tw) >= 128
    # small budgets (--tile-batch 16, little free memory): the per-tile cost alone still chose 4 x 4052 strips
    for budget in (128 * 128, 256 * 256):
        th, tw = choose_tile_shape(3044, 4052, max_pixels=budget, overlap=0)
        assert min(th, tw) >= min_tile_side(budget) == int(budget ** 0.5) // 4 and th * tw <= budget


def test_auto_tiles_share_the_budget_of_one_call_with_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """--tile-batch 4 sent four tiles of the whole budget per call: four times the memory budget."""
    import adassr.runtime.tile_shape as tile_shape

    monkeypatch.setattr(tile_shape, "auto_max_tile_pixels", lambda available=None: 400_000)
    budgets = [tile_shape.tiling_options("auto", overlap=32, pre_pad=10, batch_size=b, pad_to_tile=False)
               .max_tile_pixels for b in (1, 4, 100)]
    assert budgets == [400_000, 100_000, MIN_AUTO_TILE_PIXELS]  # never below the smallest useful tile


def test_auto_stitches_a_pixelwise_model_exactly() -> None:
    rng = np.random.default_rng(0)
    img = rng.random((97, 181, 3), dtype=np.float32)
    opts = TilingOptions(overlap=8, max_tile_pixels=50 * 60)
    assert plan_tiles(97, 181, opts).n_tiles > 1
    out = upscale_tiled(img, lambda b: b.repeat(2, axis=2).repeat(2, axis=3), scale=2, options=opts)
    np.testing.assert_allclose(out, img.repeat(2, 0).repeat(2, 1), atol=1e-6)


def test_budget_from_memory(tmp_path: Path) -> None:
    assert auto_max_tile_pixels(1 << 40) == MAX_AUTO_TILE_PIXELS
    assert auto_max_tile_pixels(1 << 20) == MIN_AUTO_TILE_PIXELS
    mid = auto_max_tile_pixels(2 * 1024**3)
    assert MIN_AUTO_TILE_PIXELS < mid < MAX_AUTO_TILE_PIXELS
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24684000 kB\nMemAvailable:    1000 kB\n")
    assert mem_available_bytes(meminfo) == 1000 * 1024
    assert mem_available_bytes(tmp_path / "absent") is None


def test_literal_shapes_and_budgets_for_what_mutation_testing_changed_unnoticed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Literal values, not the module's own constants (a changed constant checked against itself went
    unnoticed): the least-work tile with its tie rule and size multiple, and the memory budget."""
    import argparse

    from adassr.runtime import tile_shape
    from adassr.runtime.tile_shape import auto_max_tile_pixels, choose_tile_shape, tile_argument, tiling_options

    assert choose_tile_shape(3044, 4052, max_pixels=512 * 512, overlap=0) == (435, 579)  # 49 tiles, not 84
    assert choose_tile_shape(1000, 1000, max_pixels=90000, overlap=16, multiple_of=8) == (216, 344)
    assert choose_tile_shape(480, 512, max_pixels=65536, overlap=4, multiple_of=8) == (480, 136)  # ties: fewer
    th, tw = choose_tile_shape(772, 1200, max_pixels=40000, overlap=0, multiple_of=4)
    assert th % 4 == 0 and tw % 4 == 0
    assert auto_max_tile_pixels(2 * 1024**3) == 65536  # 2 GiB free: tiles that fit it
    assert auto_max_tile_pixels(1 << 40) == 512 * 512  # the cap: the old fixed tile's memory
    monkeypatch.setattr(tile_shape, "mem_available_bytes", lambda: None)
    assert auto_max_tile_pixels() == 512 * 512  # memory unknown (no /proc): not the smallest tiles
    assert tile_argument(" Auto ") == "auto"
    with pytest.raises(argparse.ArgumentTypeError):
        tile_argument("-1")
    assert tiling_options(256, overlap=8, pre_pad=0, batch_size=1, pad_to_tile=True).pad_to_tile is True
