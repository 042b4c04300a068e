"""Bounded memory: tiles stream into the final dtype; outscale and output size have upper bounds."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from adassr.cli import main
from adassr.runtime.errors import ConfigError, ImageError
from adassr.runtime.pipeline import MAX_OUTSCALE, RuntimeOptions, upscale_pixels
from adassr.runtime.tiling import TilingOptions, plan_tiles, run_tiles, upscale_tiled


def _nearest(scale: int):
    def infer(batch: np.ndarray) -> np.ndarray:
        return batch.repeat(scale, axis=2).repeat(scale, axis=3)

    return infer


@pytest.mark.parametrize("size, opts", [
    ((37, 53), TilingOptions(tile=16, overlap=4, pre_pad=3)),
    ((100, 81), TilingOptions(tile=32, overlap=8, pre_pad=10, pad_to_tile=False)),
    ((64, 64), TilingOptions(tile=32, overlap=0, pre_pad=0)),
    ((5, 300), TilingOptions(tile=48, overlap=16, pre_pad=2)),
    ((30, 40), TilingOptions(tile=0)),
])
def test_every_output_pixel_is_delivered_exactly_once(size: tuple[int, int], opts: TilingOptions) -> None:
    h, w = size
    img = np.random.default_rng(1).random((h, w, 3), dtype=np.float32)
    hits = np.zeros((h * 2, w * 2), np.int32)
    out = np.zeros((h * 2, w * 2, 3), np.float32)

    def sink(y: int, x: int, block: np.ndarray) -> None:
        hits[y : y + block.shape[0], x : x + block.shape[1]] += 1
        out[y : y + block.shape[0], x : x + block.shape[1]] = block

    run_tiles(img, _nearest(2), scale=2, options=opts, sink=sink)
    assert (hits == 1).all()
    np.testing.assert_allclose(out, img.repeat(2, 0).repeat(2, 1), atol=1e-5)  # weights sum to 1


def test_upscale_allocates_about_the_output_not_float_copies_of_it() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (400, 600, 3), dtype=np.uint8)
    output_bytes = 400 * 4 * 600 * 4 * 3
    tracemalloc.start()
    try:
        out, _ = upscale_pixels(pixels, _nearest(4), scale=4, tiling=TilingOptions(tile=128, overlap=32))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.dtype == np.uint8 and out.shape == (1600, 2400, 3)
    np.testing.assert_array_equal(out, pixels.repeat(4, 0).repeat(4, 1))
    # One float32 copy of the output alone would be 4x the output; the tiles cost ~ a few MB.
    assert peak < 1.3 * output_bytes + 12_000_000, f"peak {peak / 1e6:.1f} MB for a {output_bytes / 1e6:.1f} MB output"


def test_grey_16_bit_and_alpha_keep_dtype_and_channels() -> None:
    pixels = np.random.default_rng(2).integers(0, 65536, (20, 30, 1), dtype=np.uint16)
    alpha = np.full((20, 30), 40000, np.uint16)
    out, out_alpha = upscale_pixels(pixels, _nearest(4), scale=4, tiling=TilingOptions(tile=16, overlap=4),
                                    alpha=alpha, outscale=2.0)
    assert out.dtype == np.uint16 and out.shape == (40, 60, 1)
    assert out_alpha is not None and out_alpha.dtype == np.uint16 and (out_alpha == 40000).all()
    want = pixels.repeat(2, 0).repeat(2, 1)  # x4 nearest then an exact 2x2 box average
    assert np.abs(out.astype(np.int64) - want).max() <= 1


def test_output_budget_is_checked_before_allocating() -> None:
    pixels = np.zeros((6000, 6000, 3), np.uint8)  # 36 MP in, 576 MP out at x4
    called = []
    with pytest.raises(ImageError, match="above the limit"):
        upscale_pixels(pixels, lambda b: called.append(1) or b, scale=4, tiling=TilingOptions())
    assert not called
    with pytest.raises(ImageError, match="above the limit"):
        upscale_pixels(np.zeros((10, 10, 3), np.uint8), _nearest(4), scale=4, tiling=TilingOptions(),
                       max_output_pixels=1000)


def test_output_budget_advice_fits_what_is_too_large() -> None:
    """The model's x4 output is made before outscale resizes it: a smaller outscale cannot help then.
    The refusal is ImageTooLargeError (the server answered 415 unsupported_image for it)."""
    from adassr.runtime.errors import ImageTooLargeError
    from adassr.runtime.pipeline import check_output_budget

    with pytest.raises(ImageTooLargeError, match="the model's x4 output is made before outscale") as caught:
        check_output_budget(100, 100, 4, 1.0, max_output_pixels=100_000)  # 160,000 at the model's x4
    assert "or use a smaller outscale" not in str(caught.value)
    with pytest.raises(ImageTooLargeError, match="downscale the input or use a smaller outscale"):
        check_output_budget(100, 100, 4, 8.0, max_output_pixels=200_000)  # 640,000 only after --outscale 8
    assert check_output_budget(100, 100, 4, 2.0, max_output_pixels=200_000) == (200, 200)


@pytest.mark.parametrize("outscale", [1000.0, MAX_OUTSCALE * 1.01, 0.0, -1.0, float("nan"), float("inf")])
def test_outscale_has_an_upper_bound(outscale: float) -> None:
    with pytest.raises(ConfigError, match="outscale must be a number in"):
        RuntimeOptions(store=Path("models"), outscale=outscale)


def test_cli_outscale_1000_is_a_usage_error_before_any_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = Path(__file__).resolve().parents[2] / "tests" / "data" / "hr" / "astronaut.png"
    code = main(["upscale", "-i", str(src), "-o", str(tmp_path / "o.png"), "--store", str(tmp_path),
                 "--outscale", "1000"])
    assert code == 2
    assert "error: --outscale must be a number in (0, 16]" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_float_wrapper_still_matches_plan() -> None:
    img = np.random.default_rng(3).random((50, 70, 3), dtype=np.float32)
    opts = TilingOptions(tile=32, overlap=8)
    out = upscale_tiled(img, _nearest(3), scale=3, options=opts)
    assert plan_tiles(50, 70, opts).n_tiles > 1
    np.testing.assert_allclose(out, img.repeat(3, 0).repeat(3, 1), atol=1e-5)
