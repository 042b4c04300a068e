from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from adassr.runtime.errors import ConfigError, ShapeError
from adassr.runtime.tiling import TilingOptions, plan_tiles, upscale_tiled

from ._models import RF_RADIUS, SCALE, build_tiny_sr

ROOT = Path(__file__).resolve().parents[2]
HR = ROOT / "tests" / "data" / "hr"
ARTIFACTS = ROOT / "tests" / "_artifacts"
FUJI = Path(__file__).resolve().parents[2] / "samples" / "large" / "fujifilm.mpo"  # 10 MP, 2 frames

SIZES = [(1, 1), (2, 3), (5, 7), (31, 64), (64, 64), (65, 200), (97, 181), (300, 301), (44, 45), (133, 133)]
OPTIONS = [
    TilingOptions(tile=0),
    TilingOptions(tile=32, overlap=8, pre_pad=0),
    TilingOptions(tile=64, overlap=16),
    TilingOptions(tile=64, overlap=24, pre_pad=3),
    TilingOptions(tile=48, overlap=0),
    TilingOptions(tile=64, overlap=16, pad_to_tile=False),
    TilingOptions(overlap=16, max_tile_pixels=48 * 48),
    TilingOptions(overlap=8, pre_pad=0, max_tile_pixels=40 * 30),
    TilingOptions(tile=80, overlap=27, pre_pad=0),  # an odd overlap: the seam centre is a half pixel
]


def _photo(name: str, y: int, x: int, h: int, w: int) -> np.ndarray:
    img = np.asarray(Image.open(HR / name).convert("RGB"), dtype=np.float32) / 255.0
    crop = img[y : y + h, x : x + w]
    assert crop.shape == (h, w, 3)
    return np.ascontiguousarray(crop)


@pytest.fixture(scope="module")
def tiny_infer():
    session = ort.InferenceSession(build_tiny_sr(seed=3), providers=["CPUExecutionProvider"])

    def infer(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {"lr": batch})[0]

    return infer


def _nearest(scale: int, calls: list[tuple[int, ...]] | None = None):
    def infer(batch: np.ndarray) -> np.ndarray:
        if calls is not None:
            calls.append(batch.shape)
        return batch.repeat(scale, axis=2).repeat(scale, axis=3)

    return infer


# -- the plan ------------------------------------------------------------------------------------
def _opts_id(o: TilingOptions) -> str:
    return f"t{o.tile}o{o.overlap}p{o.pre_pad}{'' if o.pad_to_tile else 'np'}m{o.max_tile_pixels}"


@pytest.mark.parametrize("opts", OPTIONS, ids=_opts_id)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_plan_covers_every_pixel_with_fixed_tiles(size: tuple[int, int], opts: TilingOptions) -> None:
    h, w = size
    plan = plan_tiles(h, w, opts)
    ch, cw = plan.canvas_shape
    th, tw = plan.tile_shape
    assert ch >= h + 2 * opts.pre_pad and cw >= w + 2 * opts.pre_pad
    if opts.max_tile_pixels is not None:
        assert th * tw <= opts.max_tile_pixels
    elif opts.tile and opts.pad_to_tile:
        assert (th, tw) == (opts.tile, opts.tile)  # one static shape for every image
    cover = np.zeros((ch, cw), dtype=np.int32)
    for _, _, y, x in plan.tiles():
        assert y >= 0 and y + th <= ch and x >= 0 and x + tw <= cw  # never cut short
        cover[y : y + th, x : x + tw] += 1
    assert cover.min() >= 1
    for axis in (plan.rows, plan.cols):
        starts = axis.starts
        assert list(starts) == sorted(set(starts))
        shared = [starts[k] + axis.tile - starts[k + 1] for k in range(len(starts) - 1)]
        assert all(s >= opts.overlap for s in shared)
        if len(starts) > 1:  # the fewest tiles that keep the overlap
            stride = axis.tile - opts.overlap
            assert (len(starts) - 2) * stride + axis.tile < axis.canvas
        # HR blending weights are a partition of unity, zero in each tile's pure-context margin
        for s in (1, 4):
            total = np.zeros(axis.canvas * s)
            for k, start in enumerate(starts):
                wk = axis.weights(k, s)
                assert wk.min() >= 0 and wk.max() <= 1
                total[start * s : (start + axis.tile) * s] += wk
                margin = int(s * 3 * opts.overlap / 8)
                if k > 0 and margin:
                    assert np.all(wk[:margin] == 0)
                if k < len(starts) - 1 and margin:
                    assert np.all(wk[-margin:] == 0)
            np.testing.assert_allclose(total, 1.0, atol=1e-12)


def test_small_image_is_padded_to_one_tile_or_run_at_its_size() -> None:
    plan = plan_tiles(5, 7, TilingOptions(tile=64, overlap=16, pre_pad=10))
    assert plan.n_tiles == 1 and plan.tile_shape == (64, 64) and plan.canvas_shape == (64, 64)
    own = plan_tiles(5, 7, TilingOptions(tile=64, overlap=16, pre_pad=10, pad_to_tile=False))
    assert own.n_tiles == 1 and own.tile_shape == (25, 27)
    untiled = plan_tiles(300, 301, TilingOptions(tile=0, pre_pad=10), multiple_of=8)
    assert untiled.n_tiles == 1 and untiled.tile_shape == (320, 328)


@pytest.mark.parametrize(("height", "width", "options"), [
    (5, 7, TilingOptions(tile=32, overlap=8, pre_pad=2)),  # one tile, the canvas far beyond the image
    (40, 50, TilingOptions(tile=16, overlap=4, pre_pad=10)),  # many tiles, a pre-pad near a tile's size
    (3, 30, TilingOptions(tile=0, pre_pad=10)),  # pre-pad longer than the image: reflected again and again
    (1, 9, TilingOptions(tile=8, overlap=2, pre_pad=3)),  # one row: every padded row is that row
])
def test_every_tile_is_cut_from_the_reflect_padded_canvas(height: int, width: int, options: TilingOptions) -> None:
    """Each tile the model sees equals that window of ``np.pad(mode="reflect")`` (pre-pad all round, the
    rest bottom and right): tiled and untiled runs share the cutting code, so only this comparison sees a
    wrong padding (a helper's mutant shifted the reflection by one and changed borders by 106/255)."""
    from adassr.runtime.tiling import _cut_batch

    img = np.arange(height * width * 3, dtype=np.float32).reshape(height, width, 3)
    plan = plan_tiles(height, width, options)
    p = plan.pre_pad
    extra_h, extra_w = plan.rows.canvas - height - 2 * p, plan.cols.canvas - width - 2 * p
    canvas = np.pad(img, ((0, 0), (p, p + extra_w), (0, 0)), mode="reflect")
    # one row has nothing to reflect: the cutter repeats it
    canvas = np.pad(canvas, ((p, p + extra_h), (0, 0), (0, 0)), mode="reflect" if height > 1 else "edge")
    tiles = list(plan.tiles())
    batch = _cut_batch(img, plan, tiles, lambda tile: tile)
    th, tw = plan.tile_shape
    for k, (_, _, y, x) in enumerate(tiles):
        np.testing.assert_array_equal(batch[k].transpose(1, 2, 0), canvas[y:y + th, x:x + tw])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(tile=64, overlap=32), "less than half the tile"),
        (dict(tile=-1), "tile must be"),
        (dict(overlap=-2), "overlap"),
        (dict(batch_size=0), "batch size"),
        (dict(pre_pad=-1), "pre_pad"),
        (dict(overlap=-1), "overlap"),
        (dict(pre_pad=129), "pre_pad must be from 0 to 128"),
        (dict(overlap=8, max_tile_pixels=288), "too large for --tile auto"),  # 17 x 17 = 289 is the least
    ],
)
def test_invalid_options_name_the_fix(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TilingOptions(**kwargs)


def test_tile_must_respect_model_multiple() -> None:
    with pytest.raises(ConfigError, match="--tile 72"):
        plan_tiles(100, 100, TilingOptions(tile=70, overlap=8), multiple_of=8)
    plan = plan_tiles(100, 100, TilingOptions(tile=72, overlap=8), multiple_of=8)
    assert plan.canvas_shape[0] % 8 == 0


# -- stitching -----------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(1, 1), (5, 7), (97, 181), (130, 64)])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_pixelwise_model_is_stitched_exactly(size: tuple[int, int], batch_size: int) -> None:
    rng = np.random.default_rng(1)
    img = rng.random((*size, 3), dtype=np.float32)
    calls: list[tuple[int, ...]] = []
    opts = TilingOptions(tile=32, overlap=8, batch_size=batch_size)
    out = upscale_tiled(img, _nearest(2, calls), scale=2, options=opts)
    np.testing.assert_allclose(out, img.repeat(2, 0).repeat(2, 1), atol=1e-6)
    assert {c[1:] for c in calls} == {(3, 32, 32)}  # one fixed tile shape
    assert max(c[0] for c in calls) <= batch_size
    assert sum(c[0] for c in calls) == plan_tiles(*size, opts).n_tiles


def test_integer_levels_are_refused_not_fed_to_the_model_as_floats() -> None:
    with pytest.raises(ConfigError, match="float in \\[0, 1\\].*divide 8-bit levels by 255"):
        upscale_tiled(np.zeros((8, 8, 3), np.uint8), _nearest(2), scale=2, options=TilingOptions(tile=0))


def test_wrong_model_scale_is_a_shape_error() -> None:
    img = np.zeros((40, 40, 3), np.float32)
    with pytest.raises(ShapeError, match="x4 model"):
        upscale_tiled(img, _nearest(2), scale=4, options=TilingOptions(tile=32, overlap=8))


def test_progress_reports_every_tile() -> None:
    seen: list[tuple[int, int]] = []
    img = np.zeros((100, 100, 3), np.float32)
    opts = TilingOptions(tile=32, overlap=8, batch_size=4)
    upscale_tiled(img, _nearest(1), scale=1, options=opts, progress=lambda d, t: seen.append((d, t)))
    total = plan_tiles(100, 100, opts).n_tiles
    # 0 first (a progress bar's clock then includes the first batch), then after every batch.
    assert seen[0] == (0, total) and seen[-1] == (total, total) and len(seen) == 1 + -(-total // 4)


# -- equivalence with a real (tiny) convolutional model -------------------------------------------
CROPS = [("astronaut.png", 100, 100, 200, 160), ("chelsea.png", 0, 0, 150, 230), ("coffee.png", 300, 50, 97, 181)]


@pytest.mark.parametrize("crop", CROPS, ids=lambda c: c[0])
def test_tiled_equals_untiled_within_one_level(crop: tuple, tiny_infer) -> None:
    img = _photo(*crop)
    untiled = upscale_tiled(img, tiny_infer, scale=SCALE, options=TilingOptions(tile=0))
    # pure context of 3/8 * overlap = 12 px >= the model's receptive field radius (10 px)
    assert RF_RADIUS <= 3 * 32 / 8
    for opts in (TilingOptions(tile=80, overlap=32, batch_size=4), TilingOptions(tile=128, overlap=32, batch_size=2),
                 TilingOptions(overlap=32, max_tile_pixels=100 * 90)):
        tiled = upscale_tiled(img, tiny_infer, scale=SCALE, options=opts)
        assert plan_tiles(*img.shape[:2], opts).n_tiles > 1
        assert np.abs(tiled - untiled).max() <= 1 / 255


def test_padded_tiles_equal_untiled_when_pre_pad_covers_the_receptive_field(tiny_infer) -> None:
    """An image smaller than the tile, padded to it (static engines): the extra padding is reflected, so
    the borders match untiled only with pre_pad >= the receptive-field radius (the documented rule)."""
    img = _photo("chelsea.png", 0, 0, 40, 50)
    for pre_pad, exact in ((RF_RADIUS, True), (0, False)):
        untiled = upscale_tiled(img, tiny_infer, scale=SCALE, options=TilingOptions(tile=0, pre_pad=pre_pad))
        padded = upscale_tiled(img, tiny_infer, scale=SCALE, options=TilingOptions(tile=96, overlap=32,
                                                                                   pre_pad=pre_pad))
        assert bool(np.abs(padded - untiled).max() <= 1 / 255) == exact, pre_pad


def test_tiles_wholly_in_a_large_pre_pad_are_not_run(tiny_infer) -> None:
    """With pre_pad 128 and 80 px tiles, the first and last tiles along each axis weigh only padding:
    they are passed over (fewer model calls) and the output is still the untiled one."""
    img = _photo("chelsea.png", 20, 30, 40, 50)
    opts = TilingOptions(tile=80, overlap=32, pre_pad=128, batch_size=3)
    calls: list[int] = []

    def counting(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape[0])
        return tiny_infer(batch)

    seen: list[tuple[int, int]] = []
    tiled = upscale_tiled(img, counting, scale=SCALE, options=opts, progress=lambda d, t: seen.append((d, t)))
    untiled = upscale_tiled(img, tiny_infer, scale=SCALE, options=TilingOptions(tile=0, pre_pad=128))
    assert np.abs(tiled - untiled).max() <= 1 / 255
    n_plan = plan_tiles(*img.shape[:2], opts).n_tiles
    assert 0 < sum(calls) < n_plan / 2, (sum(calls), n_plan)
    assert seen[-1] == (sum(calls), sum(calls))  # progress counts the tiles that run
    # a pixelwise model shows any misplaced or dropped block exactly
    for pre_pad, tile in ((128, 32), (100, 48), (17, 16)):
        small = TilingOptions(tile=tile, overlap=4, pre_pad=pre_pad, batch_size=2)
        for size in ((1, 1), (5, 7), (37, 90)):
            pix = np.random.default_rng(sum(size)).random((*size, 3), dtype=np.float32)
            out = upscale_tiled(pix, _nearest(2), scale=2, options=small)
            np.testing.assert_allclose(out, pix.repeat(2, 0).repeat(2, 1), atol=1e-6)


def test_without_overlap_the_seams_show(tiny_infer) -> None:
    """Control: the equivalence test above can fail (the model's receptive field crosses tiles)."""
    img = _photo(*CROPS[0])
    untiled = upscale_tiled(img, tiny_infer, scale=SCALE, options=TilingOptions(tile=0))
    tiled = upscale_tiled(img, tiny_infer, scale=SCALE, options=TilingOptions(tile=64, overlap=0))
    assert np.abs(tiled - untiled).max() > 4 / 255


def test_no_seam_on_the_10mp_fujifilm_photo(tiny_infer) -> None:
    if not FUJI.is_file():
        pytest.skip(f"{FUJI} is not on this machine (shared data set)")
    from adassr.runtime.images import read_image

    image = read_image(FUJI)
    assert image.width * image.height > 9_000_000
    cy, cx = image.height // 2, image.width // 2
    lr = image.pixels[cy - 256 : cy + 256, cx - 256 : cx + 256].astype(np.float32) / 255.0
    opts = TilingOptions(tile=128, overlap=32, batch_size=4)
    plan = plan_tiles(512, 512, opts)
    assert plan.n_tiles >= 16
    tiled = upscale_tiled(lr, tiny_infer, scale=SCALE, options=opts)
    untiled = upscale_tiled(lr, tiny_infer, scale=SCALE, options=TilingOptions(tile=0))
    diff = np.abs(tiled - untiled)
    assert diff.max() <= 1 / 255
    # a seam would show as a jump across the cross-fade centre: compare the step there to untiled
    seam = int(round((plan.cols.seams[1] - opts.pre_pad) * SCALE))
    step_tiled = np.abs(tiled[:, seam] - tiled[:, seam - 1]).mean()
    step_untiled = np.abs(untiled[:, seam] - untiled[:, seam - 1]).mean()
    assert abs(step_tiled - step_untiled) < 1e-3
    # a 256 x 256 HR crop centred on a tile corner, for a human to look at
    row = int(round((plan.rows.seams[1] - opts.pre_pad) * SCALE))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    crop = np.clip(tiled[row - 128 : row + 128, seam - 128 : seam + 128], 0, 1)
    Image.fromarray((crop * 255 + 0.5).astype(np.uint8)).save(ARTIFACTS / "fujifilm_tile_corner_x4.png")
    amplified = np.clip(diff[row - 128 : row + 128, seam - 128 : seam + 128] * 255 * 50, 0, 255)
    Image.fromarray(amplified.astype(np.uint8)).save(ARTIFACTS / "fujifilm_tile_corner_diff_x50.png")


def test_bad_scale_multiple_of_and_options_are_typed_errors() -> None:
    """They raised ValueError, TypeError, IndexError or AttributeError, or took True for a scale of 1."""
    from adassr.runtime.errors import ConfigError
    from adassr.runtime.images.convert import to_float32
    from adassr.runtime.pipeline import RuntimeOptions, upscale_pixels

    image = np.zeros((10, 12, 3), np.float32)
    double = lambda b: b.repeat(2, axis=2).repeat(2, axis=3)  # noqa: E731
    for scale in (-1, 0, 2.0, True):
        with pytest.raises(ConfigError, match="scale must be a whole number >= 1"):
            upscale_tiled(image, double, scale=scale, options=TilingOptions(tile=0))  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="scale must be a whole number >= 1"):
            upscale_pixels(np.zeros((10, 12, 3), np.uint8), double, scale=scale,  # type: ignore[arg-type]
                           tiling=TilingOptions(tile=0))
    with pytest.raises(ConfigError, match="multiple_of must be a whole number >= 1"):
        upscale_tiled(image, double, scale=2, options=TilingOptions(tile=0), multiple_of=2.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="must be a TilingOptions"):
        upscale_pixels(np.zeros((10, 12, 3), np.uint8), double, scale=2, tiling=None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="store must be a folder path"):
        RuntimeOptions(store=None)  # type: ignore[arg-type]
    # an overlap too large for the unused fixed tile is no error when the tile shape is automatic
    assert TilingOptions(overlap=300, max_tile_pixels=10**6).overlap == 300
    big_endian = np.full((2, 2), 65535, dtype=">u2")
    assert to_float32(big_endian).max() == 1.0  # read from a big-endian file: it is uint16 too


def test_auto_tiles_keep_the_model_multiple_and_the_overlap_bound() -> None:
    """Automatic tiles were sized on the unrounded canvas: a model that needs multiples of 8 got 32 x 105
    tiles (mutation testing). The least tile area for an overlap o is (2 o + 1)^2."""
    for size in [(101, 101), (45, 301), (30, 30)]:
        for multiple in (8, 16):
            opts = TilingOptions(overlap=8, pre_pad=2, max_tile_pixels=3600)
            th, tw = plan_tiles(*size, opts, multiple_of=multiple).tile_shape
            assert th % multiple == 0 and tw % multiple == 0, (size, multiple, th, tw)
    assert TilingOptions(overlap=8, max_tile_pixels=289).max_tile_pixels == 289

    def needs_eight(batch: np.ndarray) -> np.ndarray:
        assert batch.shape[2] % 8 == 0 and batch.shape[3] % 8 == 0, batch.shape
        return batch.repeat(2, axis=2).repeat(2, axis=3)

    img = np.random.default_rng(0).random((101, 101, 3), dtype=np.float32)
    out = upscale_tiled(img, needs_eight, scale=2, multiple_of=8,
                        options=TilingOptions(overlap=8, pre_pad=2, max_tile_pixels=3600))
    np.testing.assert_allclose(out, img.repeat(2, 0).repeat(2, 1), atol=1e-6)


def test_neighbours_cross_fade_linearly_over_a_quarter_of_the_overlap() -> None:
    """A hard cut at the seam centre kept the weights a partition of unity, and the seams grew from 38 to
    46 levels of 255 at overlap 8 (mutation testing)."""
    rows = plan_tiles(200, 8, TilingOptions(tile=128, overlap=32)).rows
    assert rows.ramp == 8.0
    for scale in (1, 4):
        w = rows.weights(1, scale)
        fade = w[(w > 0) & (w < 1)]
        assert fade.size == 8 * scale  # overlap / 4 LR pixels
        np.testing.assert_allclose(np.diff(fade), 1.0 / (8 * scale))


def test_empty_images_and_bad_arrays_are_typed_errors_at_every_entry() -> None:
    """An image with no rows came back as an empty output, and run_tiles (public) passed a 1- or 4-channel
    image on to the model, which was then blamed (mutation testing)."""
    from adassr.runtime.tiling import run_tiles

    opts = TilingOptions(tile=0)
    for shape in [(0, 5, 3), (5, 0, 3)]:
        with pytest.raises(ShapeError, match="at least 1 x 1 pixels"):
            upscale_tiled(np.zeros(shape, np.float32), _nearest(2), scale=2, options=opts)
    with pytest.raises(ShapeError, match="at least 1 x 1 pixels"):
        plan_tiles(0, 5, opts)
    with pytest.raises(ConfigError, match="must be a TilingOptions"):
        plan_tiles(10, 10, None)  # type: ignore[arg-type]
    sink = lambda y, x, block: None  # noqa: E731
    for shape, expected in [((20, 20, 1), r"\(H, W, 3\)"), ((20, 20, 4), r"\(H, W, 3\)"), ((20, 20), r"\(H, W, C\)")]:
        with pytest.raises(ShapeError, match=expected):
            run_tiles(np.zeros(shape, np.float32), _nearest(2), scale=2, options=opts, sink=sink)


def test_the_model_gets_a_contiguous_float32_batch_whatever_the_converter_returns() -> None:
    seen: list[tuple[np.dtype, bool]] = []

    def infer(batch: np.ndarray) -> np.ndarray:
        seen.append((batch.dtype, batch.flags.c_contiguous))
        return batch.repeat(2, axis=2).repeat(2, axis=3)

    from adassr.runtime.tiling import run_tiles

    img = np.random.default_rng(2).random((40, 50, 3)).astype(np.float32)
    as_float64 = lambda tile: tile.astype(np.float64)  # noqa: E731
    for to_float in (None, as_float64):
        out = np.zeros((80, 100, 3), np.float32)

        def sink(y: int, x: int, block: np.ndarray, out: np.ndarray = out) -> None:
            out[y:y + block.shape[0], x:x + block.shape[1]] = block

        run_tiles(img, infer, scale=2, options=TilingOptions(tile=32, overlap=8), sink=sink, to_float=to_float)
        np.testing.assert_allclose(out, img.repeat(2, 0).repeat(2, 1), atol=1e-6)
    assert len(seen) >= 2 and all(dtype == np.float32 and contiguous for dtype, contiguous in seen)
