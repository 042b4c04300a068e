from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from adassr.runtime.backends.onnxruntime import OnnxRuntimeBackend
from adassr.runtime.errors import BackendError, ConfigError, ImageError, StoreError
from adassr.runtime.images import LoadedImage, read_image, to_float32, write_image
from adassr.runtime.pipeline import RuntimeOptions, Upscaler, output_size, upscale_image, upscale_pixels
from adassr.runtime.store import FALLBACK_CAMERA, CameraStore
from adassr.runtime.tiling import TilingOptions

from ._models import SCALE, publish_camera, write_model

ROOT = Path(__file__).resolve().parents[2]
HR = ROOT / "tests" / "data" / "hr"
CANON_JPG = ROOT / "samples" / "cameras" / "canon" / "flower.jpg"
TILING = TilingOptions(tile=64, overlap=16)


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory):
    path = write_model(tmp_path_factory.mktemp("m") / "tiny.onnx", seed=2)
    with OnnxRuntimeBackend(path, threads=1) as b:
        yield b


@pytest.fixture(scope="module")
def rgb8() -> np.ndarray:
    img = np.asarray(Image.open(HR / "chelsea.png").convert("RGB"))[100:148, 150:206]
    return np.ascontiguousarray(img)


def _model_rgb(backend, rgb8: np.ndarray) -> np.ndarray:
    """The model's float output for an RGB uint8 image, through the same tiling."""
    out, _ = upscale_pixels(rgb8, backend.infer, scale=SCALE, tiling=TILING)
    return out


def test_rgb8_in_rgb8_out(backend, rgb8: np.ndarray) -> None:
    out, alpha = upscale_pixels(rgb8, backend.infer, scale=SCALE, tiling=TILING)
    assert out.dtype == np.uint8 and out.shape == (48 * 4, 56 * 4, 3) and alpha is None
    # a real upscale: close to bicubic, not equal to it
    bicubic = cv2.resize(rgb8, (56 * 4, 48 * 4), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    err = np.abs(out.astype(np.float32) - bicubic)
    assert 1.0 < err.mean() < 20.0


def test_sixteen_bit_keeps_sixteen_bits(backend, rgb8: np.ndarray, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    px16 = (rgb8.astype(np.uint16) * 257 + rng.integers(0, 257, rgb8.shape)).astype(np.uint16)
    path = write_image(tmp_path / "in16.png", px16)
    image = read_image(path)
    assert image.bit_depth == 16
    result = upscale_image(image, backend, scale=SCALE, tiling=TILING)
    assert result.bit_depth == 16 and result.pixels.dtype == np.uint16
    assert np.any(result.pixels % 257 != 0)  # finer than 8-bit levels
    out = read_image(write_image(tmp_path / "out16.png", result.pixels))
    assert out.bit_depth == 16 and out.pixels.shape == (48 * 4, 56 * 4, 3)
    # the same picture as the 8-bit path, within 8-bit rounding
    out8 = _model_rgb(backend, rgb8).astype(np.float32) / 255
    assert np.abs(to_float32(result.pixels) - out8).max() < 6 / 255


def test_grey_goes_back_to_grey_by_luma(backend, rgb8: np.ndarray) -> None:
    grey = cv2.cvtColor(rgb8, cv2.COLOR_RGB2GRAY)[..., None]
    out, _ = upscale_pixels(grey, backend.infer, scale=SCALE, tiling=TILING)
    assert out.shape == (48 * 4, 56 * 4, 1) and out.dtype == np.uint8
    replicated = _model_rgb(backend, np.repeat(grey, 3, axis=2))
    expected = cv2.cvtColor(replicated, cv2.COLOR_RGB2GRAY).astype(np.float32)  # OpenCV's luma, not ours
    assert np.abs(out[..., 0].astype(np.float32) - expected).max() <= 1.0
    replicated = replicated.astype(np.float32)
    # the model tints a grey input a little; luma, not one channel, brings it back
    assert np.abs(replicated[..., 0] - replicated[..., 2]).max() > 1


def test_rgba_alpha_is_upscaled_bicubically_and_apart(backend, rgb8: np.ndarray) -> None:
    yy, xx = np.mgrid[0:48, 0:56]
    alpha = np.where((yy - 24) ** 2 + (xx - 28) ** 2 < 300, 255, 0).astype(np.uint8)
    out, out_alpha = upscale_pixels(rgb8, backend.infer, scale=SCALE, tiling=TILING, alpha=alpha)
    assert out_alpha is not None and out_alpha.shape == (192, 224) and out_alpha.dtype == np.uint8
    ref = cv2.resize(alpha.astype(np.float32) / 255, (224, 192), interpolation=cv2.INTER_CUBIC)
    expected = np.rint(np.clip(ref, 0, 1) * 255)
    assert np.abs(out_alpha.astype(np.float32) - expected).max() <= 1
    np.testing.assert_array_equal(out, _model_rgb(backend, rgb8))  # colour does not see alpha
    with pytest.raises(ConfigError, match="alpha must have the pixels' dtype uint8, got float32"):
        upscale_pixels(rgb8, backend.infer, scale=SCALE, tiling=TILING, alpha=alpha.astype(np.float32) / 255)


def test_outscale_shrinks_with_area_and_enlarges_with_cubic(backend, rgb8: np.ndarray) -> None:
    x4 = _model_rgb(backend, rgb8).astype(np.float32) / 255
    out2, _ = upscale_pixels(rgb8, backend.infer, scale=SCALE, tiling=TILING, outscale=2)
    assert out2.shape == (96, 112, 3)
    area = cv2.resize(x4, (112, 96), interpolation=cv2.INTER_AREA)
    assert np.abs(out2.astype(np.float32) / 255 - area).max() <= 1.5 / 255
    out8, _ = upscale_pixels(rgb8, backend.infer, scale=SCALE, tiling=TILING, outscale=8)
    assert out8.shape == (384, 448, 3)
    odd, _ = upscale_pixels(rgb8[:47, :55], backend.infer, scale=SCALE, tiling=TILING, outscale=2.5)
    assert output_size(47, 55, 2.5) == (118, 138) and odd.shape == (118, 138, 3)
    assert output_size(45, 57, 2.5) == (113, 143)  # halves go up: round() made 112.5 -> 112 but 117.5 -> 118
    assert output_size(3, 1, 0.1) == (1, 1) and output_size(5, 5, 0.1) == (1, 1)  # 0.5 -> 1, never 0
    # halves the binary product puts just below: 85 x 0.7 = 59.49999999999999, 45 x 2.3 = 103.49999999999999
    assert output_size(45, 85, 0.7) == (32, 60) and output_size(45, 45, 2.3) == (104, 104)
    with pytest.raises(ConfigError, match="outscale"):
        upscale_pixels(rgb8, backend.infer, scale=SCALE, tiling=TILING, outscale=0)


def test_non_finite_model_output_is_an_error(rgb8: np.ndarray) -> None:
    def nan_model(batch: np.ndarray) -> np.ndarray:
        out = batch.repeat(4, axis=2).repeat(4, axis=3)
        out[:, :, 100, 100] = np.nan
        return out

    with pytest.raises(BackendError, match="NaN or Inf"):
        upscale_pixels(rgb8, nan_model, scale=4, tiling=TILING)


def _overshooting_model(batch: np.ndarray) -> np.ndarray:
    """x4 nearest upscale pushed past [0, 1] on both sides (as real models overshoot at edges)."""
    out = batch.repeat(4, axis=2).repeat(4, axis=3)
    return ((out - 0.5) * 1.6 + 0.5 + 0.01 * np.sin(np.arange(out.shape[3], dtype=np.float32))).astype(np.float32)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 3])
def test_tiles_are_finished_as_clip_scale_and_round_of_the_blended_output(dtype: type, channels: int) -> None:
    """Pixels are finished channel by channel and interleaved straight into the output (not a transposed
    float copy and four more passes); the result is the reference's to the bit: the blended float output
    clipped to [0, 1] (grey: BT.601 luma of it, clipped), scaled, rounded, cast. Seams included."""
    from adassr.runtime.tiling import upscale_tiled

    rng = np.random.default_rng(7)
    peak = np.iinfo(dtype).max
    pixels = rng.integers(0, peak + 1, (70, 90, channels)).astype(dtype)
    tiling = TilingOptions(tile=32, overlap=8)
    out, _ = upscale_pixels(pixels, _overshooting_model, scale=4, tiling=tiling)
    rgb = np.repeat(pixels, 3, axis=2) if channels == 1 else pixels
    blended = upscale_tiled(rgb.astype(np.float32) / np.float32(peak), _overshooting_model, scale=4, options=tiling)
    work = np.clip(blended, 0.0, 1.0)
    if channels == 1:
        from adassr.runtime.pipeline import LUMA_BT601

        work = np.clip((work @ LUMA_BT601)[..., None], 0.0, 1.0)
    want = np.rint(work * np.float32(peak)).astype(dtype)
    assert out.dtype == dtype and out.shape == (280, 360, channels)
    assert np.array_equal(out, want)
    assert out.min() == 0 and out.max() == peak  # the overshoot was clipped on both sides


@pytest.mark.parametrize("bits", [10, 12, 14])
def test_a_16_bit_file_of_fewer_bits_is_served_at_its_sample_range(bits: int) -> None:
    """A microscope's 12-bit samples in a 16-bit file were divided by 65535: the model saw them 16 times too
    dark (the fallback backbone served a 12-bit crop 18 dB from its full-range output). The model now sees them
    divided by 2^bits - 1, and the output keeps that range: the same result as the full-range file, scaled."""
    from adassr.runtime.images.convert import used_peak
    from adassr.runtime.tiling import upscale_tiled

    top = 2**bits - 1
    rng = np.random.default_rng(bits)
    pixels = rng.integers(0, top + 1, (40, 50, 3)).astype(np.uint16)
    pixels[0, 0, 0] = top
    assert used_peak(pixels) == top
    seen: list[float] = []

    def model(batch: np.ndarray) -> np.ndarray:
        seen.append(float(batch.max()))
        return _overshooting_model(batch)

    tiling = TilingOptions(tile=32, overlap=8)
    out, _ = upscale_pixels(pixels, model, scale=4, tiling=tiling)
    assert max(seen) == 1.0  # the brightest sample is the model's white, not 1/16 of it
    blended = upscale_tiled(pixels.astype(np.float32) / np.float32(top), _overshooting_model, scale=4, options=tiling)
    want = np.rint(np.clip(blended, 0.0, 1.0) * np.float32(top)).astype(np.uint16)
    assert np.array_equal(out, want) and out.max() == top  # clipped to the sample range, not to 65535
    full = (pixels.astype(np.uint32) * 65535 // top).astype(np.uint16)  # the same photo at full range
    out_full, _ = upscale_pixels(full, _overshooting_model, scale=4, tiling=tiling)
    assert np.abs(out.astype(np.float64) / top - out_full.astype(np.float64) / 65535).max() < 1.5 / top


@pytest.mark.parametrize("channels", [1, 3])
def test_the_sample_range_is_the_whole_images_in_every_channel_and_grey_keeps_it(channels: int) -> None:
    """The range is taken over the whole image (every tile's and every channel's values: the brightest sample
    here is the last row's blue, or grey's last pixel), before tiling; a grey 12-bit image is served and
    finished at 4095 too, and an opaque 16-bit alpha does not widen the pixels' range."""
    from adassr.runtime.tiling import upscale_tiled

    rng = np.random.default_rng(11)
    pixels = rng.integers(0, 1024, (70, 90, channels)).astype(np.uint16)
    pixels[-1, -1, -1] = 4095  # the only sample above 1023: a 12-bit image
    alpha = np.full((70, 90), 65535, np.uint16)
    seen: list[float] = []

    def model(batch: np.ndarray) -> np.ndarray:
        seen.append(float(batch.max()))
        return _overshooting_model(batch)

    tiling = TilingOptions(tile=32, overlap=8)
    out, out_alpha = upscale_pixels(pixels, model, scale=4, tiling=tiling, alpha=alpha)
    assert max(seen) == 1.0  # the brightest sample was the model's white
    rgb = np.repeat(pixels, 3, axis=2) if channels == 1 else pixels
    work = np.clip(upscale_tiled(rgb.astype(np.float32) / np.float32(4095), _overshooting_model, scale=4,
                                 options=tiling), 0.0, 1.0)
    if channels == 1:
        from adassr.runtime.pipeline import LUMA_BT601

        work = np.clip((work @ LUMA_BT601)[..., None], 0.0, 1.0)
    want = np.rint(work * np.float32(4095)).astype(np.uint16)
    assert np.array_equal(out, want) and out.max() == 4095
    assert out_alpha is not None and out_alpha.min() == 65535  # alpha keeps its own (full) range


def test_to_float32_divides_by_each_sample_range_peak() -> None:
    for peak in (1023, 4095, 16383, 65535):
        a = np.array([[[peak, 0, peak // 2]]], np.uint16)
        assert to_float32(a, peak=peak)[0, 0, 0] == 1.0, peak
        assert to_float32(a.astype(">u2"), peak=peak)[0, 0, 0] == 1.0, peak
    assert to_float32(np.array([[[255]]], np.uint8), peak=255)[0, 0, 0] == 1.0


def test_an_outscale_above_the_models_scale_keeps_the_sample_range() -> None:
    """Cubic enlarging (--outscale 8 from a x4 model) overshoots at edges: a 12-bit image's output held values
    above 4095, so it read as 14-bit and a second upscale or an adaptation saw it 4 times too dark."""
    from adassr.runtime.images.convert import used_peak

    pixels = np.zeros((24, 24, 3), np.uint16)
    pixels[:, 12:] = 4095  # a hard edge at the sample range's top
    out, _ = upscale_pixels(pixels, lambda b: b.repeat(4, axis=2).repeat(4, axis=3), scale=4,
                            tiling=TilingOptions(tile=0), outscale=8)
    assert out.shape == (192, 192, 3) and out.max() == 4095 and used_peak(out) == 4095
    full = pixels * 16  # at the container's top: saturated by the dtype as before
    out, _ = upscale_pixels(full, lambda b: b.repeat(4, axis=2).repeat(4, axis=3), scale=4,
                            tiling=TilingOptions(tile=0), outscale=8)
    assert out.max() == 65535


def test_the_sample_range_of_uint16_pixels_is_the_smallest_that_holds_them() -> None:
    from adassr.runtime.images.convert import used_peak

    for top, want in ((0, 1023), (1023, 1023), (1024, 4095), (4095, 4095), (4096, 16383), (16383, 16383),
                      (16384, 65535), (65535, 65535)):
        px = np.zeros((3, 4, 1), np.uint16)
        px[2, 3, 0] = top
        assert used_peak(px) == want, top
        assert used_peak(px.astype(">u2")) == want  # a big-endian file's array
    assert used_peak(np.full((2, 2, 3), 7, np.uint8)) == 255  # 8-bit: the full range, whatever the values
    assert used_peak(np.zeros((0, 0, 3), np.uint16)) == 1023
    with pytest.raises(ImageError, match="uint8 or uint16"):
        used_peak(np.zeros((2, 2, 3), np.float32))
    assert to_float32(np.array([[[4095]]], np.uint16), peak=4095)[0, 0, 0] == 1.0
    assert to_float32(np.array([[[4095]]], np.uint16))[0, 0, 0] == np.float32(4095 / 65535)
    for bad in (0, 65536, True, 2.0):
        with pytest.raises(ConfigError, match="peak must be an integer in 1-65535"):
            to_float32(np.zeros((1, 1, 1), np.uint16), peak=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="peak must be an integer in 1-255"):
        to_float32(np.zeros((1, 1, 1), np.uint8), peak=1023)


def test_a_given_peak_is_checked_and_used() -> None:
    """``upscale_pixels(peak=)``: the caller's sample range (``--sample-bits``) in place of the values' guess."""
    pixels = np.full((8, 8, 3), 16000, np.uint16)
    seen: list[float] = []

    def infer(batch: np.ndarray) -> np.ndarray:
        seen.append(float(batch.max()))
        return np.repeat(np.repeat(batch, 2, axis=2), 2, axis=3)

    tiling = TilingOptions(tile=0)
    out, _ = upscale_pixels(pixels, infer, scale=2, tiling=tiling, peak=65535)
    assert abs(seen[-1] - 16000 / 65535) < 1e-6 and int(out.max()) == 16000
    upscale_pixels(pixels, infer, scale=2, tiling=tiling)  # auto: 14-bit samples
    assert abs(seen[-1] - 16000 / 16383) < 1e-6
    with pytest.raises(ImageError, match="the pixels reach 16000, above the top level 4095"):
        upscale_pixels(pixels, infer, scale=2, tiling=tiling, peak=4095)
    for bad in (0, 65536, True, 4095.0):
        with pytest.raises(ConfigError, match="peak"):
            upscale_pixels(pixels, infer, scale=2, tiling=tiling, peak=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="8-bit pixels stand as they are"):
        upscale_pixels(np.zeros((8, 8, 3), np.uint8), infer, scale=2, tiling=tiling, peak=100)


def _nearest(batch: np.ndarray) -> np.ndarray:
    """A stand-in x2 model: each pixel repeated (its output holds exactly its input's levels)."""
    return np.repeat(np.repeat(batch, 2, axis=2), 2, axis=3)


def test_a_given_peak_takes_pixels_that_reach_it_in_any_channel_and_refuses_one_level_more() -> None:
    """A 12-bit camera's file whose brightest sample is 4095 is served at ``peak=4095``; a single sample one
    level above, in any channel (the blue one here), is an error, not clipped in silence."""
    tiling = TilingOptions(tile=0)
    pixels = np.full((8, 8, 3), 100, np.uint16)
    pixels[3, 4, 2] = 4095
    out, _ = upscale_pixels(pixels, _nearest, scale=2, tiling=tiling, peak=4095)
    assert int(out.max()) == 4095 and int(out[6, 8, 2]) == 4095
    pixels[5, 1, 2] = 4096
    with pytest.raises(ImageError, match="the pixels reach 4096, above the top level 4095"):
        upscale_pixels(pixels, _nearest, scale=2, tiling=tiling, peak=4095)


def test_a_given_peak_bounds_the_overshoot_of_an_outscale_not_the_values_range() -> None:
    """Cubic enlarging overshoots a hard edge: clipped at the top level of the sample range given (4095), not at
    the one the values would suggest (1023 for an image that stops at 1000), and at that level for an edge at it
    (15 bits too, where the values alone would leave it unclipped)."""
    tiling = TilingOptions(tile=0)
    edge = np.zeros((16, 16, 3), np.uint16)
    edge[:, 8:] = 1000
    out, _ = upscale_pixels(edge, _nearest, scale=2, tiling=tiling, outscale=3, peak=4095)
    assert 1023 < int(out.max()) <= 4095
    auto, _ = upscale_pixels(edge, _nearest, scale=2, tiling=tiling, outscale=3)
    assert int(auto.max()) == 1023  # without a peak the values' range (10 bits) bounds it
    edge[:, 8:] = 4095
    out, _ = upscale_pixels(edge, _nearest, scale=2, tiling=tiling, outscale=3, peak=4095)
    assert int(out.max()) == 4095
    edge[:, 8:] = 32767  # 15-bit samples, whose values would pass for 16-bit ones
    out, _ = upscale_pixels(edge, _nearest, scale=2, tiling=tiling, outscale=3, peak=32767)
    assert int(out.max()) == 32767


def test_sample_bits_are_auto_or_9_to_16_ascii_digits() -> None:
    from adassr.runtime.images.convert import parse_sample_bits

    assert [parse_sample_bits(t) for t in ("9", "12", " 16 ", "AUTO", " auto")] == [9, 12, 16, None, None]
    for bad in ("8", "17", "", "12.0", "+12", "\u00b2", "\u0661\u0662"):  # superscript two, Arabic-Indic 12
        with pytest.raises(ConfigError, match="sample bits must be auto or a number of bits from 9 to 16"):
            parse_sample_bits(bad)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("band", ["middle", "border"])  # a tile's own pixels; its border, which the seams blend
def test_any_non_finite_value_is_an_error(rgb8: np.ndarray, bad: float, band: str) -> None:
    def broken(batch: np.ndarray) -> np.ndarray:
        out = batch.repeat(4, axis=2).repeat(4, axis=3)
        h, w = out.shape[2:]
        if band == "middle":
            out[:, 1, h // 2 - 2 : h // 2 + 2, w // 2 - 2 : w // 2 + 2] = bad
        else:
            out[:, 1, :, : w // 3] = bad
        return out

    for pixels in (rgb8, rgb8[..., :1]):
        with pytest.raises(BackendError, match="NaN or Inf"):
            upscale_pixels(pixels, broken, scale=4, tiling=TilingOptions(tile=32, overlap=8))


def test_non_finite_output_names_the_model(tmp_path: Path) -> None:
    from adassr.runtime.pipeline import NonFiniteOutputError

    publish_camera(tmp_path, FALLBACK_CAMERA, seed=0)
    with Upscaler(RuntimeOptions(store=tmp_path)) as up:
        route = up.route(LoadedImage(np.zeros((8, 8, 3), np.uint8), None, 8, None, None, None))

        class NanBackend:
            def infer(self, batch: np.ndarray) -> np.ndarray:
                return np.full((*batch.shape[:2], batch.shape[2] * 4, batch.shape[3] * 4), np.nan, np.float32)

        image = LoadedImage(np.zeros((8, 8, 3), np.uint8), None, 8, None, None, None)
        with pytest.raises(NonFiniteOutputError, match=r"^_fallback/model.onnx \(fp32, sha256 .*NaN or Inf"):
            upscale_image(image, NanBackend(), scale=4, tiling=TILING, route=route)  # type: ignore[arg-type]


def test_the_output_check_sees_the_final_size_before_any_model_call(rgb8: np.ndarray) -> None:
    calls: list[tuple[int, ...]] = []
    seen: list[tuple[int, int]] = []

    def model(batch: np.ndarray) -> np.ndarray:
        calls.append(batch.shape)
        return batch.repeat(4, axis=2).repeat(4, axis=3)

    def refuse(height: int, width: int) -> None:
        seen.append((height, width))
        raise ImageError("the format cannot hold it")

    with pytest.raises(ImageError, match="cannot hold"):
        upscale_pixels(rgb8, model, scale=4, tiling=TILING, outscale=2.5, check_output=refuse)
    assert seen == [output_size(*rgb8.shape[:2], 2.5)] and calls == []
    out, _ = upscale_pixels(rgb8, model, scale=4, tiling=TILING, check_output=lambda h, w: seen.append((h, w)))
    assert seen[-1] == out.shape[:2] == (4 * rgb8.shape[0], 4 * rgb8.shape[1]) and calls


def test_upscaler_routes_caches_and_reports_the_model(tmp_path: Path) -> None:
    publish_camera(tmp_path, FALLBACK_CAMERA, seed=0)
    publish_camera(tmp_path, "canon", seed=1)
    full = read_image(CANON_JPG)
    small = LoadedImage(full.pixels[:40, :50].copy(), None, 8, full.exif_make, full.exif_model, None)
    nameless = LoadedImage(small.pixels, None, 8, None, None, None)
    opts = RuntimeOptions(store=tmp_path, tiling=TilingOptions(tile=32, overlap=8), outscale=2, cache_size=1)
    with Upscaler(opts) as up:
        a = up.upscale(small)
        assert a.route is not None and a.route.model_camera == "canon" and a.route.reason == "exif-make"
        assert a.pixels.shape == (80, 100, 3) and a.outscale == 2 and a.scale == 4
        assert "canon/model.onnx" in a.model_label
        b = up.upscale(nameless)
        assert b.route is not None and b.route.is_fallback
        assert len(up.cache) == 1  # cache_size 1: canon's session was evicted and closed
        c = up.upscale(nameless, camera="canon")
        assert c.route is not None and c.route.reason == "explicit"
        assert not np.array_equal(a.pixels, b.pixels)  # two different models
        np.testing.assert_array_equal(a.pixels, c.pixels)


def test_one_upscaler_shared_by_threads_using_more_cameras_than_its_cache(tmp_path: Path) -> None:
    """Four threads alternating two cameras through a cache of one: every image is upscaled, as alone
    (an eviction used to close a model between the tiles of another thread's image)."""
    import threading

    publish_camera(tmp_path, FALLBACK_CAMERA, seed=0)
    publish_camera(tmp_path, "canon", seed=1)
    image = LoadedImage(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8), None, 8,
                        None, None, None)
    opts = RuntimeOptions(store=tmp_path, threads=1, cache_size=1, tiling=TilingOptions(tile=16, overlap=4))
    with Upscaler(opts) as up:
        expected = {cam: up.upscale(image, camera=cam).pixels for cam in ("canon", FALLBACK_CAMERA)}
        errors: list[BaseException] = []
        wrong: list[str] = []

        def work(k: int) -> None:
            for i in range(5):
                cam = ("canon", FALLBACK_CAMERA)[(k + i) % 2]
                try:
                    if not np.array_equal(up.upscale(image, camera=cam).pixels, expected[cam]):
                        wrong.append(cam)
                except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                    errors.append(exc)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == [] and wrong == []


def test_upscaler_verifies_the_checksum_before_opening(tmp_path: Path) -> None:
    publish_camera(tmp_path, FALLBACK_CAMERA, seed=0)
    model = CameraStore.open(tmp_path, FALLBACK_CAMERA).artifact_path("model.onnx")
    model.write_bytes(model.read_bytes()[:-10] + b"0123456789")
    image = LoadedImage(np.zeros((8, 8, 3), np.uint8), None, 8, None, None, None)
    with Upscaler(RuntimeOptions(store=tmp_path)) as up, pytest.raises(StoreError, match="fails its checksum"):
        up.upscale(image)


def test_runtime_options_validate() -> None:
    with pytest.raises(ConfigError, match="valid providers"):
        RuntimeOptions(store=Path("x"), providers=("metal",))
    with pytest.raises(ConfigError, match="precision"):
        RuntimeOptions(store=Path("x"), precision="int8")
    assert RuntimeOptions(store=Path("x"), providers=("cuda", "cpu")).providers == (
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    )
    # what a library caller may pass: each refused at construction with the option named
    for kwargs, words in (({"threads": 1.5}, "threads must be None"), ({"threads": "2"}, "threads must be"),
                          ({"cache_size": 1.5}, "cache_size must be an integer"), ({"gpu": -1}, "gpu must be"),
                          ({"tiling": None}, "tiling must be a TilingOptions"), ({"device": "tpu"}, "device must be")):
        with pytest.raises(ConfigError, match=words):
            RuntimeOptions(store=Path("x"), **kwargs)  # type: ignore[arg-type]
    assert RuntimeOptions(store=Path("x"), outscale=np.float32(2)).outscale == 2.0  # numpy numbers are numbers
    assert RuntimeOptions(store=Path("x"), outscale=np.int64(3), threads=np.int64(2)).outscale == 3.0  # type: ignore[arg-type]
    for kwargs in ({"pre_pad": 2.5}, {"batch_size": 2.5}, {"tile": 33.5}, {"tile": "64"}):
        with pytest.raises(ConfigError, match="must be an integer"):
            TilingOptions(**kwargs)  # type: ignore[arg-type]
    numpy_tiling = TilingOptions(tile=np.int64(32), overlap=np.int32(8))  # type: ignore[arg-type]
    assert type(numpy_tiling.tile) is int and type(numpy_tiling.overlap) is int  # the engines' shapes want ints


def test_the_upscaler_names_what_it_takes(tmp_path: Path) -> None:
    from adassr.runtime.errors import CameraError

    publish_camera(tmp_path, FALLBACK_CAMERA, seed=0)
    with Upscaler(RuntimeOptions(store=tmp_path)) as up:
        for wrong in (np.zeros((8, 8, 3), np.uint8), "photo.png"):
            with pytest.raises(ConfigError, match="takes a LoadedImage.*read_image"):
                up.upscale(wrong)  # type: ignore[arg-type]
        image = LoadedImage(np.zeros((8, 8, 3), np.uint8), None, 8, None, None, None)
        with pytest.raises(CameraError, match="must be a string, got int"):
            up.upscale(image, camera=5)  # type: ignore[arg-type]
    numpy_tiling = TilingOptions(tile=np.int64(16), overlap=np.int64(4))  # type: ignore[arg-type]
    with Upscaler(RuntimeOptions(store=tmp_path, tiling=numpy_tiling)) as up:  # end to end, as plain integers
        assert up.upscale(LoadedImage(np.zeros((20, 20, 3), np.uint8), None, 8, None, None, None)).pixels.shape == (
            80, 80, 3)
    with pytest.raises(ImageError, match="must be a numpy array, got list"):
        LoadedImage([[0]], None, 8, None, None, None)  # type: ignore[arg-type]
    with pytest.raises(ImageError, match="use uint8 .* or uint16"):
        LoadedImage(np.zeros((2, 2, 3), ">u2"), None, 16, None, None, None)


def test_arrays_of_other_types_get_typed_errors_naming_what_was_given() -> None:
    """A list, a torch tensor or an int16 image went to numpy or OpenCV (AttributeError, cv2.error, or an int16
    resize without a word): a helper's hunt of the library API."""
    from adassr.runtime.pipeline import resize

    with pytest.raises(ConfigError, match="resize takes .* got int16 array of shape"):
        resize(np.zeros((4, 4), np.int16), (8, 8))
    with pytest.raises(ConfigError, match="got builtins.list"):
        resize([[0, 1]], (8, 8))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="got uint8 array of shape \\(0, 4\\)"):
        resize(np.zeros((0, 4), np.uint8), (8, 8))
    for size in ((0, 0), (-5, 10), [8, 8], (8.0, 8)):
        with pytest.raises(ConfigError, match="size must be \\(height, width\\) of positive integers"):
            resize(np.zeros((4, 4), np.uint8), size)  # type: ignore[arg-type]
    assert resize(np.zeros((4, 4, 1), np.uint16), (np.int64(8), 8)).shape == (8, 8, 1)
    with pytest.raises(ConfigError, match="pixels must be a numpy array .*got builtins.list"):
        upscale_pixels([[[0, 0, 0]]], _overshooting_model, scale=4, tiling=TilingOptions(tile=0))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="alpha must be a numpy array .*got builtins.list"):
        upscale_pixels(np.zeros((2, 2, 3), np.uint8), _overshooting_model, scale=4, tiling=TilingOptions(tile=0),
                       alpha=[[0, 0], [0, 0]])  # type: ignore[arg-type]


@pytest.mark.parametrize("when", ["first image", "check_ready"])
def test_a_model_file_replaced_by_two_exports_while_it_opens_is_routed_again(tmp_path: Path, when: str,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Two commits between an image's routing and its model's opening removed the file the route named
    (the previous version's file is kept for one commit): `upscale` failed "does not exist; export it",
    or skipped images, while the camera was re-exported in quick succession (a helper's hunt)."""
    from adassr.runtime.routing import RouteDecision

    store = tmp_path / "store"
    publish_camera(store, FALLBACK_CAMERA, seed=0)
    publish_camera(store, "canon", seed=1)
    real_verify = RouteDecision.verify
    replaced: list[str] = []

    def two_exports_first(route: RouteDecision) -> Path:
        if not replaced:
            replaced.append(route.sha256)
            publish_camera(store, "canon", seed=2)
            publish_camera(store, "canon", seed=3)  # the file the route names is gone now
        return real_verify(route)

    monkeypatch.setattr(RouteDecision, "verify", two_exports_first)
    upscaler = Upscaler(RuntimeOptions(store=store, tiling=TILING))
    image = LoadedImage(np.full((20, 24, 3), 128, np.uint8), None, 8, None, None, None)
    with upscaler:
        if when == "check_ready":
            route = upscaler.check_ready(camera="canon")
        else:
            route = upscaler.upscale(image, camera="canon").route
    newest = CameraStore.open(store, "canon").read_manifest()["artifacts"]["model.onnx"]["sha256"]
    assert replaced and replaced[0] != newest and route.sha256 == newest

    monkeypatch.undo()
    missing = CameraStore.open(store, "canon")
    missing.artifact_path("model.onnx", missing.read_manifest()).unlink()  # truly missing: said at once
    with Upscaler(RuntimeOptions(store=store, tiling=TILING)) as upscaler, \
            pytest.raises(StoreError, match="listed in the manifest but missing"):
        upscaler.upscale(image, camera="canon")


# -- from mutation testing: behaviour no test checked ---------------------------------------------


def test_a_re_exported_camera_is_served_by_its_new_model(tmp_path: Path) -> None:
    """The model cache is keyed by the model file's sha256: with the camera's name alone, the old open model
    went on serving after a re-export."""
    publish_camera(tmp_path, FALLBACK_CAMERA, seed=0)
    publish_camera(tmp_path, "canon", seed=1)
    image = LoadedImage(np.random.default_rng(3).integers(0, 255, (24, 24, 3), dtype=np.uint8), None, 8,
                        None, None, None)
    with Upscaler(RuntimeOptions(store=tmp_path, threads=1)) as up:
        before = up.upscale(image, camera="canon")
        publish_camera(tmp_path, "canon", seed=7)  # adapted and exported again
        after = up.upscale(image, camera="canon")
    assert before.route is not None and after.route is not None
    assert after.route.sha256 != before.route.sha256 and after.route.sha256[:12] in after.model_label
    assert not np.array_equal(before.pixels, after.pixels)


def test_gpu_settings_follow_the_precision_of_the_model_served(tmp_path: Path) -> None:
    """fp16 provider settings for an fp16 model, whatever precision was asked for: an fp16 request served by
    a camera's fp32 model must not be run as fp16, nor the reverse."""
    from adassr.runtime.pipeline import gpu_settings
    from adassr.runtime.routing import resolve_model

    publish_camera(tmp_path, FALLBACK_CAMERA, seed=0)  # fp32 only
    publish_camera(tmp_path, "canon", seed=1, fp16=True)
    fp16_opts = RuntimeOptions(store=tmp_path, precision="fp16")
    fp32_served = resolve_model(tmp_path, camera=FALLBACK_CAMERA, precision="fp16")
    assert fp32_served.precision == "fp32" and not gpu_settings(fp32_served, fp16_opts).fp16
    fp16_served = resolve_model(tmp_path, camera="canon", precision="fp16")
    assert fp16_served.precision == "fp16" and gpu_settings(fp16_served, fp16_opts).fp16
    assert not gpu_settings(resolve_model(tmp_path, camera="canon"), RuntimeOptions(store=tmp_path)).fp16


def test_a_model_refused_by_its_metadata_is_closed(tmp_path: Path) -> None:
    """A model whose file contradicts the manifest's scale is refused: closed, not left open (a session, or
    GPU memory, leaked per retry in the server)."""
    import json

    from adassr.runtime.backends import open_backend
    from adassr.runtime.pipeline import checked_against_route
    from adassr.runtime.routing import resolve_model

    publish_camera(tmp_path, "canon", seed=1, metadata={"scale": "4"})
    manifest_path = tmp_path / "canon" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["scale"] = 2
    manifest["exports"]["onnx"]["scale"] = 2  # hand-edited
    manifest_path.write_text(json.dumps(manifest))
    route = resolve_model(tmp_path, camera="canon")
    backend = open_backend("onnxruntime", route.onnx_path)
    with pytest.raises(StoreError, match="records x4"):
        checked_against_route(backend, route)
    assert not backend.is_open


def test_resize_enlarging_floats_stays_within_0_and_1() -> None:
    """Bicubic overshoots at edges: float output is clipped to [0, 1], as documented."""
    from adassr.runtime.pipeline import resize

    edge = np.zeros((8, 8, 3), np.float32)
    edge[:, 4:] = 1.0
    assert cv2.resize(edge, (24, 24), interpolation=cv2.INTER_CUBIC).max() > 1.0  # what is clipped
    out = resize(edge, (24, 24))
    assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("kwargs, words", [
    ({"cache_size": 0}, "cache_size must be an integer >= 1, got 0"),
    ({"outscale": True}, "outscale"),
    ({"threads": 0}, "threads must be None"),
])
def test_runtime_options_refuse_zero_caches_and_bool_scales(kwargs: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        RuntimeOptions(store=Path("x"), **kwargs)
