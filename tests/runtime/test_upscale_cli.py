from __future__ import annotations

import argparse
import io
import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adassr.runtime.errors import BackendError, CameraError, ConfigError, StoreError
from adassr.runtime.images import read_image, write_image
from adassr.runtime.output_plan import OUTPUT_MARKER, plan_outputs
from adassr.runtime.pipeline import RuntimeOptions, Upscaler
from adassr.runtime.store import FALLBACK_CAMERA
from adassr.runtime.tiling import TilingOptions, plan_tiles
from adassr.runtime.upscale_cli import add_upscale_arguments, run_upscale
from adassr.runtime.upscalers import UpscalerEntry, UpscalerRegistry, runtime_upscalers

from ._models import fallback_and_canon, publish_camera

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples" / "cameras"


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="adassr upscale")
    add_upscale_arguments(parser)
    return parser.parse_args(list(argv))


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(*argv: str, terminal: bool = False) -> tuple[int, str, str]:
    out, err = io.StringIO(), (_Terminal() if terminal else io.StringIO())
    code = run_upscale(_parse(*argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def _small_jpeg_with_exif(src: Path, dst: Path, size: int = 40) -> Path:
    """A small crop of a real camera JPEG that keeps its EXIF Make."""
    with Image.open(src) as im:
        exif = im.getexif()
        exif[0x0112] = 1  # orientation: as stored
        im.convert("RGB").crop((100, 100, 100 + size, 100 + size)).save(dst, quality=92, exif=exif.tobytes())
    return dst


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return fallback_and_canon(tmp_path / "store")


def test_folder_with_one_corrupt_image(store: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    _small_jpeg_with_exif(SAMPLES / "canon" / "flower.jpg", src / "a_canon.jpg")
    _small_jpeg_with_exif(SAMPLES / "nokia" / "iptc.jpg", src / "b_nokia.jpg")
    full = (SAMPLES / "canon" / "flower.jpg").read_bytes()
    (src / "c_broken.jpg").write_bytes(full[: len(full) // 2])  # truncated copy of a real JPEG
    write_image(src / "d_grey.png", np.full((20, 30, 1), 90, np.uint8))
    (src / "notes.txt").write_text("not an image")
    dst = tmp_path / "out"

    code, out, err = _run("-i", str(src), "-o", str(dst), "--store", str(store), "--tile", "32",
                          "--tile-overlap", "8", "--no-progress")

    assert code == 1
    assert sorted(p.name for p in dst.iterdir()) == ["a_canon.jpg", "b_nokia.jpg", "d_grey.png"]  # nothing partial
    assert "c_broken.jpg" in err and "skipped" in err
    lines = {line.split(" -> ")[0]: line for line in out.splitlines() if " -> " in line and "[model" in line}
    assert "canon/model.onnx" in lines[str(src / "a_canon.jpg")] and "exif-make" in lines[str(src / "a_canon.jpg")]
    assert "_fallback/model.onnx" in lines[str(src / "b_nokia.jpg")]
    assert "no model for 'nokia'" in lines[str(src / "b_nokia.jpg")]
    summary = out.strip().splitlines()[-1]
    assert "3 ok, 1 failed" in summary and "canon -> canon/model.onnx" in summary
    assert "nokia -> _fallback/model.onnx" in summary and "c_broken.jpg" in summary
    assert read_image(dst / "a_canon.jpg").pixels.shape == (160, 160, 3)
    assert read_image(dst / "d_grey.png").pixels.shape == (80, 120, 1)


def test_an_unexpected_error_in_one_file_does_not_end_the_batch(tmp_path: Path) -> None:
    """A library's exception that is no AdassrError (Pillow's TypeError on a damaged TIFF) ended the
    whole run with a traceback and no summary; it is reported for its file, and the rest is done."""
    from adassr.runtime.pipeline import UpscaleResult
    from adassr.runtime.upscale_cli import run_batch

    folder = _two_small_pngs(tmp_path / "in")

    def serve(image, tiles, check):  # type: ignore[no-untyped-def]
        if image.path is not None and image.path.name == "img0.png":
            raise TypeError("Missing dimensions")
        return UpscaleResult(pixels=np.repeat(np.repeat(image.pixels, 2, 0), 2, 1), alpha=None, bit_depth=8,
                             scale=2, outscale=2.0, model_name="x2")

    pairs = [(folder / f"img{k}.png", tmp_path / "out" / f"img{k}.png") for k in range(2)]
    out, err = io.StringIO(), io.StringIO()
    code = run_batch(pairs, serve, progress=False, stdout=out, stderr=err)
    assert code == 1
    assert "unexpected TypeError (Missing dimensions)" in err.getvalue() and "-vv" in err.getvalue()
    assert "1 ok, 1 failed" in out.getvalue().splitlines()[-1]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img1.png"]


def _two_small_pngs(folder: Path) -> Path:
    """``folder`` holding img0.png and img1.png, two flat 10x12 images."""
    folder.mkdir()
    for k in range(2):
        write_image(folder / f"img{k}.png", np.full((12, 10, 3), 40 * k, np.uint8))
    return folder


def test_all_good_folder_exits_zero_with_progress(store: Path, tmp_path: Path) -> None:
    src = _two_small_pngs(tmp_path / "in")
    code, out, err = _run("-i", str(src), "-o", str(tmp_path / "out"), "--store", str(store), "--camera", "canon",
                          "--ext", "webp")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img0.webp", "img1.webp"]
    assert "2 ok, 0 failed" in out and "explicit" in out
    assert "2/2" in err  # the progress display


def test_explicit_camera_without_a_model_warns_once_and_suggests_the_close_name(store: Path, tmp_path: Path) -> None:
    src = _two_small_pngs(tmp_path / "in")
    code, out, err = _run("-i", str(src), "-o", str(tmp_path / "out"), "--store", str(store), "--camera", "cannon",
                          "--no-progress")
    assert code == 0, err
    assert err.count("warning: camera 'cannon' has no model") == 1 and "Did you mean 'canon'?" in err
    assert "fallback: no model for explicitly requested camera 'cannon'" in out  # served, and each line says so
    code, out, err = _run("-i", str(src), "-o", str(tmp_path / "out2"), "--store", str(store), "--camera", "sony",
                          "--no-progress")
    assert code == 0 and "warning: camera 'sony' has no model" in err and "Did you mean" not in err
    code, out, err = _run("-i", str(src), "-o", str(tmp_path / "out3"), "--store", str(store), "--camera", "Canon",
                          "--no-progress")
    assert code == 0 and "warning" not in err and "explicit" in out


def test_sixteen_bit_png_in_sixteen_bit_png_out(store: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    px = rng.integers(0, 65536, (24, 20, 3)).astype(np.uint16)
    src = write_image(tmp_path / "deep.png", px)
    dst = tmp_path / "result.png"
    code, out, _ = _run("-i", str(src), "-o", str(dst), "--store", str(store), "--outscale", "2")
    assert code == 0
    result = read_image(dst)
    assert result.bit_depth == 16 and result.pixels.shape == (48, 40, 3)
    assert "fallback: no EXIF Make" in out


def test_a_12_bit_tiff_upscaled_to_jpeg_keeps_its_brightness(store: Path, tmp_path: Path) -> None:
    """A microscope's 16-bit TIFF of 12-bit samples written as JPEG came out nearly black (4095 of 65535 is 16
    of 255); it now comes out as the same photo in 8 bits does."""
    with Image.open(SAMPLES / "canon" / "flower.jpg") as im:
        rgb = np.asarray(im.convert("RGB"))[200:240, 300:340].copy()
    eight = write_image(tmp_path / "eight.png", rgb)
    twelve = write_image(tmp_path / "twelve.tif", np.round(rgb * (4095 / 255)).astype(np.uint16))
    for src in (eight, twelve):
        code, _, err = _run("-i", str(src), "-o", str(tmp_path / f"{src.stem}.jpg"), "--store", str(store),
                            "--camera", "canon", "--no-progress")
        assert code == 0, err
    want = read_image(tmp_path / "eight.jpg").pixels.astype(int)
    got = read_image(tmp_path / "twelve.jpg").pixels.astype(int)
    assert got.shape == want.shape == (160, 160, 3) and want.mean() > 60
    assert np.abs(got - want).mean() < 1.0, (got.mean(), want.mean())


def test_sample_bits_tells_a_dark_16_bit_photo_from_a_14_bit_cameras_file(store: Path, tmp_path: Path) -> None:
    """A 16-bit photo darker than a quarter of full range everywhere looks like a 14-bit camera's file: auto
    serves it at 16383 and brightens its JPEG 4x; `--sample-bits 16` serves it at 65535, as dark as it is."""
    with Image.open(SAMPLES / "canon" / "flower.jpg") as im:
        rgb = np.asarray(im.convert("RGB"))[200:240, 300:340].copy()
    dark = write_image(tmp_path / "dark.png", (rgb.astype(np.uint16) * 257) // 4)  # at most 16383
    outs = {}
    for bits in ("auto", "16", "14"):
        out = tmp_path / f"dark_{bits}.jpg"
        code, _, err = _run("-i", str(dark), "-o", str(out), "--store", str(store), "--camera", "canon",
                            "--no-progress", "--sample-bits", bits)
        assert code == 0, err
        outs[bits] = read_image(out).pixels.astype(float).mean()
    assert abs(outs["auto"] - rgb.mean()) < 0.1 * rgb.mean()  # taken for 14-bit samples: the top level is white
    assert outs["14"] == outs["auto"]
    assert abs(outs["16"] - rgb.mean() / 4) < 0.1 * rgb.mean() / 4, outs  # as dark as its values say
    code, _, err = _run("-i", str(dark), "-o", str(tmp_path / "eight.jpg"), "--store", str(store),
                        "--no-progress", "--sample-bits", "12")
    assert code == 1 and "above the top level 4095 of the sample range given (12 bits)" in err, err
    assert not (tmp_path / "eight.jpg").exists()
    eight = write_image(tmp_path / "eight.png", rgb)  # 8-bit inputs stand as they are
    code, _, err = _run("-i", str(eight), "-o", str(tmp_path / "eight_out.png"), "--store", str(store),
                        "--no-progress", "--sample-bits", "10")
    assert code == 0, err
    for bad in ("8", "17", "twelve", ""):
        with pytest.raises(SystemExit):
            _parse("-i", str(dark), "-o", str(tmp_path / "x.png"), "--sample-bits", bad)
    assert _parse("-i", "a", "-o", "b", "--sample-bits", "AUTO").sample_bits is None


def test_a_12_bit_image_with_16_bit_alpha_keeps_its_brightness_and_its_alpha(store: Path, tmp_path: Path) -> None:
    """A 12-bit camera's pixels with a 16-bit alpha (opaque at 65535), upscaled to WebP: the pixels'
    sample range (used_peak of the input's pixels, not of its alpha) stands for white, and the alpha
    converts at 16 bits."""
    px = np.full((16, 16, 3), 3000, np.uint16)
    alpha = np.zeros((16, 16), np.uint16)
    alpha[4:12, 4:12] = 65535
    src = write_image(tmp_path / "logo12.tif", px, alpha=alpha)
    code, _, err = _run("-i", str(src), "-o", str(tmp_path / "logo.webp"), "--store", str(store), "--no-progress")
    assert code == 0, err
    result = read_image(tmp_path / "logo.webp")
    assert result.alpha is not None and result.alpha[32, 32] == 255 and result.alpha[2, 2] == 0
    assert abs(int(result.pixels[32, 32].mean()) - 187) <= 6  # 3000 of 4095, not 12 of 255


@pytest.mark.parametrize("level", [3000, 900], ids=["bright", "dark"])
def test_a_12_bit_alpha_stays_opaque_in_webp(store: Path, tmp_path: Path, level: int) -> None:
    """The alpha's cubic resize overshot a 12-bit file's 4095 (4545 at a hard edge), so the writer took it for
    16-bit alpha: opaque came out at 16 of 255 (a review helper). The resized alpha keeps its range, and converts
    at it also when the pixels are darker than a quarter of it (their range 1023)."""
    px = np.full((16, 16, 3), level, np.uint16)
    alpha = np.zeros((16, 16), np.uint16)
    alpha[4:12, 4:12] = 4095  # a 12-bit file's alpha: opaque at 4095
    src = write_image(tmp_path / "logo12.tif", px, alpha=alpha)
    for suffix in (".webp", ".png"):
        code, _, err = _run("-i", str(src), "-o", str(tmp_path / f"logo{suffix}"), "--store", str(store),
                            "--no-progress")
        assert code == 0, err
    result = read_image(tmp_path / "logo.webp")
    assert result.alpha is not None and result.alpha[32, 32] == 255 and result.alpha[2, 2] == 0
    deep = read_image(tmp_path / "logo.png")
    assert deep.alpha is not None and int(deep.alpha.max()) == 4095  # no overshoot above the 12-bit range


def test_rgba_in_rgba_out(store: Path, tmp_path: Path) -> None:
    px = np.full((16, 16, 3), 120, np.uint8)
    alpha = np.zeros((16, 16), np.uint8)
    alpha[4:12, 4:12] = 255
    src = write_image(tmp_path / "logo.png", px, alpha=alpha)
    code, _, _ = _run("-i", str(src), "-o", str(tmp_path / "out"), "--store", str(store))
    assert code == 0
    result = read_image(tmp_path / "out" / "logo.png")
    assert result.alpha is not None and result.alpha.shape == (64, 64)
    assert result.alpha[32, 32] == 255 and result.alpha[2, 2] == 0
    # JPEG cannot hold alpha: written without it, and the user is told
    code, _, err = _run("-i", str(src), "-o", str(tmp_path / "flat.jpg"), "--store", str(store))
    assert code == 0 and "note:" in err and read_image(tmp_path / "flat.jpg").alpha is None
    assert f"note: {tmp_path / 'flat.jpg'}: JPEG cannot store alpha" in err  # the file named once


def test_a_profile_that_cannot_be_kept_is_named_in_a_note(store: Path, tmp_path: Path) -> None:
    """A grey PNG with an RGB profile (Adobe RGB greys shift in colour-managed viewers without it): the
    profile was dropped without a word."""
    profile = read_image(SAMPLES / "canon" / "xmp_test.jpg").icc_profile
    assert profile is not None
    Image.fromarray(np.full((12, 12), 90, np.uint8)).save(tmp_path / "g.png", icc_profile=profile)
    code, _, err = _run("-i", str(tmp_path / "g.png"), "-o", str(tmp_path / "out"), "--store", str(store),
                        "--no-progress")
    assert code == 0 and read_image(tmp_path / "out" / "g.png").icc_profile is None
    assert f"note: {tmp_path / 'g.png'}: its RGB colour profile does not describe its grey pixels" in err


def test_camera_folders_one_level_down_are_upscaled_and_routed_by_folder(store: Path, tmp_path: Path) -> None:
    """The layout `adapt --images` reads (one folder per camera) upscales as a tree: outputs mirror it,
    a folder named after a camera in the store routes its images there, others go by EXIF Make."""
    src = tmp_path / "in"
    (src / "canon").mkdir(parents=True)
    (src / "misc").mkdir()
    (src / ".hidden").mkdir()
    _small_jpeg_with_exif(SAMPLES / "nokia" / "iptc.jpg", src / "canon" / "x.jpg")  # EXIF Nokia, folder canon
    _small_jpeg_with_exif(SAMPLES / "nokia" / "iptc.jpg", src / "misc" / "x.jpg")
    _small_jpeg_with_exif(SAMPLES / "canon" / "flower.jpg", src / "top.jpg")
    _small_jpeg_with_exif(SAMPLES / "canon" / "flower.jpg", src / ".hidden" / "skip.jpg")
    dst = src / "out"  # an output folder inside the input is never read
    assert _run("-i", str(src), "-o", str(dst), "--store", str(store), "--tile", "0",
                "--no-progress")[0] == 0  # an earlier run made it (and marked it as an output folder)
    for done in [p for p in dst.rglob("*") if p.is_file() and not p.name.startswith(".")]:
        done.unlink()
    write_image(dst / "old.png", np.full((20, 20, 3), 9, np.uint8))

    code, out, _ = _run("-i", str(src), "-o", str(dst), "--store", str(store), "--tile", "0", "--no-progress")

    assert code == 0
    lines = {line.split(" -> ")[0]: line for line in out.splitlines() if " -> " in line and "[model" in line}
    assert set(lines) == {str(src / "top.jpg"), str(src / "canon" / "x.jpg"), str(src / "misc" / "x.jpg")}
    by_folder = lines[str(src / "canon" / "x.jpg")]
    assert "canon/model.onnx" in by_folder and ", folder]" in by_folder
    assert "_fallback/model.onnx" in lines[str(src / "misc" / "x.jpg")]
    assert "exif-make" in lines[str(src / "top.jpg")]
    assert sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file()) == [
        ".adassr-upscale-output", "canon/x.jpg", "misc/x.jpg", "old.png", "top.jpg"]
    with pytest.raises(ConfigError, match="no images in .* or its subfolders"):
        plan_outputs(_empty_dir(tmp_path), tmp_path / "o2", "auto")


def _empty_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "empty"
    (folder / "sub").mkdir(parents=True)
    return folder


def test_output_naming(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.jpg", "a.png", "b.mpo", "b.JPG", "c.bmp", "d.txt", "e.jfif", "f.JPE"):
        (src / name).write_bytes(b"x")
    pairs = {s.name: t.name for s, t in plan_outputs(src, tmp_path / "out", "auto")}
    # .jfif and .jpe: JPEG files as browsers and messaging apps save them (they were left out of a folder)
    assert pairs == {"a.jpg": "a.jpg", "a.png": "a.png", "b.mpo": "b_mpo.jpg", "b.JPG": "b_jpg.jpg", "c.bmp": "c.png",
                     "e.jfif": "e.jpg", "f.JPE": "f.jpg"}
    pairs = {s.name: t.name for s, t in plan_outputs(src, tmp_path / "out", "png")}
    assert pairs["a.jpg"] == "a_jpg.png" and pairs["a.png"] == "a_png.png"
    one = src / "a.jpg"
    assert plan_outputs(one, tmp_path / "x.png", "auto") == [(one, tmp_path / "x.png")]
    assert plan_outputs(one, tmp_path / "dir", "auto") == [(one, tmp_path / "dir" / "a.jpg")]
    with pytest.raises(ConfigError, match="overwrite the input"):
        plan_outputs(one, one, "auto")
    with pytest.raises(ConfigError, match="is the input folder"):
        plan_outputs(src, src, "auto")
    with pytest.raises(ConfigError, match="not a writable format"):
        plan_outputs(src, tmp_path / "out", "gif")
    with pytest.raises(ConfigError, match="reads as an image file name"):
        plan_outputs(src, tmp_path / "result.png", "auto")  # would have become a folder named result.png
    existing = tmp_path / "notes"
    existing.write_text("a file")
    with pytest.raises(ConfigError, match="the input is a folder, so the output .*notes must be a folder, not a file"):
        plan_outputs(src, existing, "auto")


def test_output_names_differing_only_in_case_never_share_a_file(tmp_path: Path) -> None:
    """x.jpg and x.JPG, or A.png and a.bmp, would write one file on a case-insensitive file system (macOS,
    Windows), one image lost (mutation testing: the case folding of the clash check was untested)."""
    src = tmp_path / "in"
    src.mkdir()
    for name in ("x.jpg", "x.JPG", "A.png", "a.bmp"):
        (src / name).write_bytes(b"x")
    pairs = {s.name: t.name for s, t in plan_outputs(src, tmp_path / "out", "auto")}
    assert len({name.lower() for name in pairs.values()}) == 4, pairs
    assert pairs["A.png"] == "A_png.png" and pairs["a.bmp"] == "a_bmp.png"


def test_renamed_outputs_never_collide(store: Path, tmp_path: Path) -> None:
    """x.jpg and x.png both want x.png, so x.jpg becomes x_jpg.png, which x_jpg.png itself takes: the
    third name gets a number. Once, one output silently overwrote another while the run said 3 ok."""
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(3)
    images = {name: rng.integers(0, 256, (10, 12, 3)).astype(np.uint8) for name in ("x.png", "x.jpg", "x_jpg.png")}
    for name, px in images.items():
        write_image(src / name, px)
    pairs = {s.name: t.name for s, t in plan_outputs(src, tmp_path / "out", "png")}
    assert pairs == {"x.png": "x_png.png", "x.jpg": "x_jpg_2.png", "x_jpg.png": "x_jpg.png"}
    code, out, _ = _run("-i", str(src), "-o", str(tmp_path / "out"), "--store", str(store), "--ext", "png")
    assert code == 0 and "3 ok" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x_jpg.png", "x_jpg_2.png", "x_png.png"]
    grey_x_jpg = read_image(tmp_path / "out" / "x_jpg_2.png").pixels  # from x.jpg, not x_jpg.png
    assert grey_x_jpg.shape == (40, 48, 3)
    assert not np.array_equal(grey_x_jpg, read_image(tmp_path / "out" / "x_jpg.png").pixels)
    write_image(src / "x_jpg_2.png", images["x.png"])  # the numbered name is taken too: the number goes on
    targets = [t.name for _, t in plan_outputs(src, tmp_path / "out", "png")]
    assert len(set(targets)) == 4 and "x_jpg_3.png" in targets, targets


def test_skip_existing_keeps_a_link_in_an_outputs_place(tmp_path: Path) -> None:
    """A link there, even one to nothing, is never written over (it is counted as existing)."""
    from adassr.runtime.output_plan import skip_existing

    (tmp_path / "out").mkdir()
    dangling = tmp_path / "out" / "a.png"
    dangling.symlink_to(tmp_path / "nowhere.png")
    pairs = [(tmp_path / "a.png", dangling), (tmp_path / "b.png", tmp_path / "out" / "b.png")]
    assert skip_existing(pairs) == ([pairs[1]], 1)


def test_the_colour_profile_reaches_the_output(store: Path, tmp_path: Path) -> None:
    """The bundled canon photo carries Adobe RGB (1998); an output without it would look desaturated."""
    sample = SAMPLES / "canon" / "xmp_test.jpg"
    profile = read_image(sample).icc_profile
    assert profile is not None and b"Adobe RGB" in profile
    with Image.open(sample) as im:
        im.crop((0, 0, 40, 30)).save(tmp_path / "crop.jpg", quality=95, icc_profile=profile)
    for name in ("out.png", "out.jpg", "out.webp", "out.tif"):
        code, _, err = _run("-i", str(tmp_path / "crop.jpg"), "-o", str(tmp_path / name), "--store", str(store))
        assert code == 0 and "note:" not in err
        with Image.open(tmp_path / name) as im:
            assert im.info.get("icc_profile") == profile, name


def test_argument_and_store_problems_raise(store: Path, tmp_path: Path) -> None:
    img = write_image(tmp_path / "i.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(StoreError, match="does not exist"):
        _run("-i", str(img), "-o", str(tmp_path / "o.png"), "--store", str(tmp_path / "no_store"))
    with pytest.raises(ConfigError, match="valid providers"):
        _run("-i", str(img), "-o", str(tmp_path / "o.png"), "--store", str(store), "--providers", "cpu,npu")
    with pytest.raises(ConfigError, match="less than half the tile"):
        _run("-i", str(img), "-o", str(tmp_path / "o.png"), "--store", str(store),
             "--tile", "32", "--tile-overlap", "16")
    # without --tile-overlap the default (32) shrinks to fit a small tile: `--tile 64` alone failed
    assert _run("-i", str(img), "-o", str(tmp_path / "small_tiles.png"), "--store", str(store), "--tile", "16",
                "--no-progress")[0] == 0
    with pytest.raises(CameraError):
        _run("-i", str(img), "-o", str(tmp_path / "o.png"), "--store", str(store), "--camera", "no/such")
    for extra, message in ((["--pre-pad", "100000"], "--pre-pad must be from 0 to 128"),  # named by the option
                           (["--tile-batch", "0"], "--tile-batch must be >= 1"),
                           (["--tile-overlap", "-1"], "--tile-overlap must be >= 0"),
                           (["--gpu", "-1"], "--gpu must be an integer >= 0")):
        with pytest.raises(ConfigError, match=f"^{message}"):
            _run("-i", str(img), "-o", str(tmp_path / "o.png"), "--store", str(store), *extra)
    # from mutation testing: refused as one usage error before any image, not per image or silently
    for extra, message in ((["--quality", "150"], "--quality"),
                           (["--gpu", "1"], "--gpu 1 .*--providers cpu"),  # the CPU would run it, ignoring it
                           (["--cuda-graph"], "--cuda-graph")):
        with pytest.raises(ConfigError, match=message):
            _run("-i", str(img), "-o", str(tmp_path / "o.png"), "--store", str(store), *extra)
        assert not (tmp_path / "o.png").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no images"):
        _run("-i", str(empty), "-o", str(tmp_path / "o"), "--store", str(store))
    assert not (tmp_path / "o.png").exists()


def test_a_registered_upscaler_serves_the_run(store: Path, tmp_path: Path) -> None:
    """An upscaler another layer registers gets typed options (no argparse Namespace) and serves every image."""
    seen: list[RuntimeOptions] = []
    prepared: list[tuple[str | None, Path | None]] = []

    class Halve:  # a stand-in: the runtime's own onnxruntime upscaler, with a fixed outscale
        def __init__(self, options: RuntimeOptions) -> None:
            seen.append(options)
            self.inner = Upscaler(replace(options, backend="onnxruntime", outscale=2.0))

        def upscale(self, image, *, camera=None, progress=None, check_output=None):  # type: ignore[no-untyped-def]
            return self.inner.upscale(image, camera=camera, progress=progress, check_output=check_output)

        def close(self) -> None:
            self.inner.close()

    upscalers = runtime_upscalers()
    upscalers.register(UpscalerEntry("half", Halve, "test upscaler", any_size=False,
                                 prepare=lambda options, *, camera, samples: prepared.append((camera, samples))))
    parser = argparse.ArgumentParser()
    add_upscale_arguments(parser, upscalers)
    img = write_image(tmp_path / "in.png", np.full((16, 20, 3), 90, np.uint8))
    args = parser.parse_args(["-i", str(img), "-o", str(tmp_path / "o.png"), "--store", str(store),
                              "--backend", "half", "--camera", "canon", "--tile", "8", "--tile-overlap", "2"])
    err = io.StringIO()
    assert run_upscale(args, upscalers=upscalers, stdout=io.StringIO(), stderr=err) == 0, err.getvalue()
    assert len(seen) == 1 and isinstance(seen[0], RuntimeOptions) and seen[0].backend == "half"
    assert seen[0].tiling.pad_to_tile  # a fixed-shape upscaler gets full tiles
    assert prepared == [("canon", [img])]
    assert read_image(tmp_path / "o.png").pixels.shape == (32, 40, 3)
    with pytest.raises(SystemExit):  # the runtime alone does not offer it
        _parse("-i", str(img), "-o", str(tmp_path / "p.png"), "--backend", "torch")


@pytest.mark.parametrize("suffix, width", [(".webp", 4096), (".jpg", 16_376)])
def test_an_output_the_format_cannot_hold_fails_before_the_upscale(store: Path, tmp_path: Path, suffix: str,
                                                                   width: int) -> None:
    """`-o wide.webp` of a photo wider than 4095 px failed in the encoder after the whole upscale (minutes
    on a CPU), with Pillow's message; a JPEG wider than 16375 px (65500 at x4) too."""
    img = write_image(tmp_path / "wide.png", np.full((2, width, 3), 90, np.uint8))
    ok = write_image(tmp_path / "ok.png", np.full((2, 3, 3), 90, np.uint8))
    code, _, err = _run("-i", str(img), "-o", str(tmp_path / f"out{suffix}"), "--store", str(store),
                        "--camera", "canon", "--no-progress")
    assert code == 1 and not (tmp_path / f"out{suffix}").exists(), err
    fmt = "WEBP" if suffix == ".webp" else "JPEG"
    assert f"a {4 * width}x8 image is larger than {fmt} can hold" in err and "write .png or .tif" in err
    assert "Pillow" not in err
    code, _, err = _run("-i", str(ok), "-o", str(tmp_path / f"small{suffix}"), "--store", str(store),
                        "--camera", "canon", "--no-progress")
    assert code == 0 and read_image(tmp_path / f"small{suffix}").pixels.shape == (8, 12, 3), err


def test_progress_without_tqdm(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tqdm" else real(name, *a))
    src = tmp_path / "in"
    src.mkdir()
    for k in range(2):
        write_image(src / f"img{k}.png", np.full((40, 40, 3), 60, np.uint8))
    code, _, err = _run("-i", str(src), "-o", str(tmp_path / "out"), "--store", str(store))
    assert code == 0 and "[1/2] img0.png" in err and "[2/2] img1.png" in err
    # one file, on a terminal: tiles are counted instead
    one = ["-i", str(src / "img0.png"), "-o", str(tmp_path / "one.png"), "--store", str(store), "--tile", "32",
           "--tile-overlap", "8"]
    code, _, err = _run(*one, terminal=True)
    n = plan_tiles(40, 40, TilingOptions(tile=32, overlap=8)).n_tiles
    assert code == 0 and n > 1 and f"tiles {n}/{n}\n" in err
    # the count starts before the first tile runs (a bar's clock then includes the first tile)
    assert err.index(f"tiles 0/{n}") < err.index(f"tiles 1/{n}")
    # into a log file or a pipe nothing is redrawn in place (it filled logs with ^M lines)
    code, _, err = _run(*one)
    assert code == 0 and "\r" not in err and "tiles" not in err


def test_no_progress_bar_redraws_into_a_log(store: Path, tmp_path: Path) -> None:
    """With tqdm installed, a folder run into a file wrote ^M-redrawn bars; now one line per image."""
    pytest.importorskip("tqdm")
    src = tmp_path / "in"
    src.mkdir()
    for k in range(2):
        write_image(src / f"img{k}.png", np.full((40, 40, 3), 60, np.uint8))
    code, _, err = _run("-i", str(src), "-o", str(tmp_path / "out"), "--store", str(store))
    assert code == 0 and "\r" not in err and "[1/2] img0.png" in err and "[2/2] img1.png" in err


def test_tile_auto_is_the_default_and_matches_fixed_tiles(store: Path, tmp_path: Path) -> None:
    src = _small_jpeg_with_exif(SAMPLES / "nokia" / "iptc.jpg", tmp_path / "n.jpg", size=48)
    assert _parse("-i", "x", "-o", "y").tile == "auto"
    code, _, err = _run("-i", str(src), "-o", str(tmp_path / "auto.png"), "--store", str(store), "--no-progress")
    assert code == 0, err
    code, _, err = _run("-i", str(src), "-o", str(tmp_path / "whole.png"), "--store", str(store), "--tile", "0",
                        "--no-progress")
    assert code == 0, err
    # a 48 px image fits one call: auto runs it whole, exactly like --tile 0
    auto, whole = read_image(tmp_path / "auto.png").pixels, read_image(tmp_path / "whole.png").pixels
    np.testing.assert_array_equal(auto, whole)


@pytest.mark.parametrize("bad", ["big", "-3"])
def test_bad_tile_value_is_a_usage_error(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _parse("-i", "x", "-o", "y", "--tile", bad)
    assert exc.value.code == 2 and "--tile" in capsys.readouterr().err


def test_an_output_folder_that_is_a_camera_folder_of_the_input_with_photos_is_refused(
        store: Path, tmp_path: Path) -> None:
    """`-i p -o p/nikon` used to skip the photos of p/nikon and overwrite p/nikon/a.png with the upscaled
    p/a.png (a helper's bug hunt). A folder an earlier run wrote, or an empty one, is still accepted."""
    src = tmp_path / "p"
    (src / "nikon").mkdir(parents=True)
    _small_jpeg_with_exif(SAMPLES / "canon" / "flower.jpg", src / "a.jpg")
    photo = _small_jpeg_with_exif(SAMPLES / "nokia" / "iptc.jpg", src / "nikon" / "a.jpg")
    before = photo.read_bytes()
    with pytest.raises(ConfigError, match="holds images of its own"):
        plan_outputs(src, src / "nikon", "auto")
    with pytest.raises(ConfigError, match="holds images of its own"):
        _run("-i", str(src), "-o", str(src / "nikon"), "--store", str(store), "--tile", "0", "--no-progress")
    assert photo.read_bytes() == before
    (src / "empty").mkdir()
    code, _, _ = _run("-i", str(src), "-o", str(src / "empty"), "--store", str(store), "--tile", "0", "--no-progress")
    assert code == 0 and (src / "empty" / "a.jpg").is_file() and (src / "empty" / "nikon" / "a.jpg").is_file()
    # the next run knows these are its outputs (the marker), not photos: it writes there again
    code, _, _ = _run("-i", str(src), "-o", str(src / "empty"), "--store", str(store), "--tile", "0", "--no-progress")
    assert code == 0 and photo.read_bytes() == before


def test_an_output_folder_linked_to_or_from_a_camera_folder_of_the_input_with_photos_is_refused(
        store: Path, tmp_path: Path) -> None:
    """`-o out` with out -> p/nikon, or p/nikon -> out, skipped p/nikon's photos without a word and overwrote
    p/nikon/a.png with the upscaled p/a.png (exit 0; a helper's hunt): the link's target counts too."""
    src = tmp_path / "p"
    (src / "nikon").mkdir(parents=True)
    _small_jpeg_with_exif(SAMPLES / "canon" / "flower.jpg", src / "a.jpg")
    photo = _small_jpeg_with_exif(SAMPLES / "nokia" / "iptc.jpg", src / "nikon" / "a.jpg")
    before = photo.read_bytes()
    (tmp_path / "out").symlink_to(src / "nikon")
    with pytest.raises(ConfigError, match="holds images of its own"):
        _run("-i", str(src), "-o", str(tmp_path / "out"), "--store", str(store), "--tile", "0", "--no-progress")
    assert photo.read_bytes() == before
    # the other way round: the camera folder is a link to the output folder, which holds the photos
    other = tmp_path / "q"
    other.mkdir()
    _small_jpeg_with_exif(SAMPLES / "canon" / "flower.jpg", other / "a.jpg")
    (other / "nikon").symlink_to(src / "nikon")
    with pytest.raises(ConfigError, match="holds images of its own"):
        plan_outputs(other, src / "nikon", "auto")
    # an empty folder reached through a link is fine, and marked, so that the next run skips it
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "to_empty").symlink_to(empty)
    (other / "nikon").unlink()
    (other / "nikon").symlink_to(empty)
    code, _, _ = _run("-i", str(other), "-o", str(tmp_path / "to_empty"), "--store", str(store), "--tile", "0",
                      "--no-progress")
    assert code == 0 and (empty / "a.jpg").is_file() and (empty / OUTPUT_MARKER).exists()
    assert photo.read_bytes() == before


def test_an_earlier_runs_output_folder_is_not_read_by_a_later_run(store: Path, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """`-i p -o p/out`, then `-i p -o o2`: the second run upscaled p/out/a.png, the first run's x4
    output, again (x16 of the photo) although the marker says p/out holds outputs."""
    src = tmp_path / "p"
    src.mkdir()
    _small_jpeg_with_exif(SAMPLES / "canon" / "flower.jpg", src / "a.jpg")
    assert _run("-i", str(src), "-o", str(src / "out"), "--store", str(store), "--no-progress")[0] == 0
    assert (src / "out" / "a.jpg").is_file()
    with caplog.at_level(logging.WARNING):
        pairs = plan_outputs(src, tmp_path / "o2", "auto")
    assert pairs == [(src / "a.jpg", tmp_path / "o2" / "a.jpg")]
    assert any("an earlier upscale wrote it" in r.getMessage() for r in caplog.records)
    assert plan_outputs(src / "out", tmp_path / "o3", "auto")[0][0] == src / "out" / "a.jpg"  # asked for: read


def test_a_folder_run_never_writes_over_its_own_inputs(store: Path, tmp_path: Path) -> None:
    """A link in the output folder back into the input (out/nikon -> ../ph/nikon), or a layout where a
    mirrored subfolder lands on the input (-i ph2 -o . with ph2/ph2/x.png), replaced a photo with an
    upscale, exit 0 ("replaced 1 existing output file"); a file run already refused the same."""
    ph = tmp_path / "ph"
    (ph / "nikon").mkdir(parents=True)
    photo = _small_jpeg_with_exif(SAMPLES / "nokia" / "iptc.jpg", ph / "nikon" / "b.jpg")
    before = photo.read_bytes()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "nikon").symlink_to(ph / "nikon")
    with pytest.raises(ConfigError, match=r"is the input file .*b\.jpg .*would overwrite"):
        _run("-i", str(ph), "-o", str(tmp_path / "out"), "--store", str(store), "--no-progress")
    assert photo.read_bytes() == before
    nested = tmp_path / "w" / "ph2"
    (nested / "ph2").mkdir(parents=True)
    write_image(nested / "x.png", np.full((12, 10, 3), 90, np.uint8))
    write_image(nested / "ph2" / "x.png", np.full((12, 10, 3), 10, np.uint8))
    before = (nested / "x.png").read_bytes()
    with pytest.raises(ConfigError, match="would overwrite"):
        plan_outputs(nested, tmp_path / "w", "auto")
    assert (nested / "x.png").read_bytes() == before


def test_a_broken_stdout_or_an_unprintable_name_does_not_stop_a_folder_run(
        store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`adassr upscale ... | head -1` ended in a BrokenPipeError traceback after two of eight images, and
    a file name with undecodable bytes in a UnicodeEncodeError: the printing, not the images, failed."""
    src = _two_small_pngs(tmp_path / "in")
    odd = src / os.fsdecode(b"bad\xff.png")
    write_image(odd, np.full((12, 10, 3), 70, np.uint8))

    class Closed(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    strict = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # errors="strict": surrogates raise
    err = io.StringIO()
    code = run_upscale(_parse("-i", str(src), "-o", str(tmp_path / "out"), "--store", str(store), "--no-progress"),
                       stdout=Closed(), stderr=err)
    assert code == 0, err.getvalue()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(["img0.png", "img1.png", odd.name])
    assert "warning: cannot write to output (Broken pipe); the run goes on" in capsys.readouterr().err
    code = run_upscale(_parse("-i", str(src), "-o", str(tmp_path / "out2"), "--store", str(store), "--no-progress"),
                       stdout=strict, stderr=err)
    assert code == 0
    strict.seek(0)
    assert "bad\\udcff.png" in strict.read()


def test_an_output_name_that_a_mirrored_subfolder_takes_is_renamed(tmp_path: Path) -> None:
    """`r/d.jpg` with `--ext png` used to go to `ro/d.png`, the folder that mirrors `r/d.png/`: the write
    failed after the model had run."""
    src = tmp_path / "r"
    (src / "d.png").mkdir(parents=True)
    write_image(src / "d.png" / "x.png", np.zeros((8, 8, 3), np.uint8))
    write_image(src / "d.jpg", np.zeros((8, 8, 3), np.uint8))
    pairs = dict(plan_outputs(src, tmp_path / "ro", "png"))
    assert pairs[src / "d.jpg"] == tmp_path / "ro" / "d_jpg.png"
    assert pairs[src / "d.png" / "x.png"] == tmp_path / "ro" / "d.png" / "x.png"


def test_an_unreadable_input_folder_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It used to end in a PermissionError traceback (tests run as root, which permissions do not stop,
    so the denial is simulated)."""
    src = tmp_path / "u"
    (src / "locked").mkdir(parents=True)
    write_image(src / "a.png", np.zeros((8, 8, 3), np.uint8))
    real = Path.iterdir

    def iterdir(self: Path):  # type: ignore[no-untyped-def]
        if self.name == "locked" or (self == src and denied_top):
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    denied_top = False
    with pytest.raises(ConfigError, match=r"cannot read the folder .*locked \(Permission denied\)"):
        plan_outputs(src, tmp_path / "out", "auto")
    denied_top = True
    with pytest.raises(ConfigError, match=r"cannot read the input folder .*u \(Permission denied\)"):
        plan_outputs(src, tmp_path / "out", "auto")


@pytest.mark.parametrize("flag", ["-i", "-o"])
def test_an_empty_input_or_output_is_refused(flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unset shell variable (`-o "$OUT"`) used to mean the current folder: outputs scattered there,
    or a whole tree upscaled."""
    from adassr.cli import main

    argv = {"-i": str(tmp_path / "x.png"), "-o": str(tmp_path / "out")}
    argv[flag] = ""
    with pytest.raises(SystemExit) as stop:
        main(["upscale", "-i", argv["-i"], "-o", argv["-o"]])
    assert stop.value.code == 2 and "is empty" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["-i", "-o"])
def test_a_dash_for_standard_input_or_output_is_refused(flag: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """`-o -` made a folder called '-' and wrote into it; `-i -` said the input did not exist."""
    from adassr.cli import main

    argv = {"-i": str(tmp_path / "x.png"), "-o": str(tmp_path / "out")}
    argv[flag] = "-"
    with pytest.raises(SystemExit) as stop:
        main(["upscale", "-i", argv["-i"], "-o", argv["-o"]])
    assert stop.value.code == 2 and "standard input or output) is not supported" in capsys.readouterr().err
    assert not Path("-").exists()


def test_an_output_name_with_an_unknown_suffix_is_a_folder_with_a_note(store: Path, tmp_path: Path) -> None:
    """`-o result.jgp` (a typo) made a folder result.jgp/ without a word."""
    source = tmp_path / "a.png"
    write_image(source, np.zeros((8, 8, 3), np.uint8))
    code, out, err = _run("-i", str(source), "-o", str(tmp_path / "result.jgp"), "--store", str(store),
                          "--no-progress")
    assert code == 0 and (tmp_path / "result.jgp" / "a.png").is_file()
    assert f"note: {tmp_path / 'result.jgp'} has no image suffix, so it is taken as a folder" in err
    code, out, err = _run("-i", str(source), "-o", str(tmp_path / "plain"), "--store", str(store), "--no-progress")
    assert code == 0 and "note:" not in err  # a folder name without a suffix needs no note


def test_a_tile_the_model_cannot_take_is_one_error_before_any_image(store: Path, tmp_path: Path) -> None:
    """A camera whose model needs sizes divisible by 4 with --tile 66 failed every image on its own (exit 1)."""
    from adassr.runtime.store import CameraStore

    CameraStore.open(store, "canon").update_manifest(lambda m: m["exports"]["onnx"].update(multiple_of=4))
    folder = _two_small_pngs(tmp_path / "in")
    with pytest.raises(ConfigError, match="tile 66 is not a multiple of 4, which this model requires; use --tile 68"):
        _run("-i", str(folder), "-o", str(tmp_path / "out"), "--store", str(store), "--camera", "canon",
             "--tile", "66", "--tile-overlap", "8", "--no-progress")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_jpg_and_jpeg_are_one_format(tmp_path: Path) -> None:
    """`-o y.jpg --ext jpeg` was refused as a contradiction."""
    source = tmp_path / "a.png"
    write_image(source, np.zeros((8, 8, 3), np.uint8))
    for output, ext in (("y.jpg", "jpeg"), ("y.jpeg", "jpg"), ("y.tif", "tiff")):
        assert plan_outputs(source, tmp_path / output, ext) == [(source, tmp_path / output)]
    with pytest.raises(ConfigError, match="contradicts"):
        plan_outputs(source, tmp_path / "y.png", "jpg")


def test_a_link_back_to_the_input_folder_is_not_read_twice(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A subfolder link to the input itself (or two links to one folder) upscaled every image again
    into out/<link>/ and counted each failure twice."""
    src = tmp_path / "in"
    (src / "cam").mkdir(parents=True)
    write_image(src / "a.png", np.zeros((8, 8, 3), np.uint8))
    write_image(src / "cam" / "b.png", np.zeros((8, 8, 3), np.uint8))
    (src / "again").symlink_to(src)
    (src / "cam_link").symlink_to(src / "cam")
    (src / "Alias").symlink_to(src / "cam")  # sorts before the folder it links to: the folder still wins
    with caplog.at_level(logging.WARNING):
        pairs = plan_outputs(src, tmp_path / "out", "auto")
    assert [(a.relative_to(src), b.relative_to(tmp_path / "out")) for a, b in pairs] == [
        (Path("a.png"), Path("a.png")), (Path("cam/b.png"), Path("cam/b.png"))]
    assert sorted(r.getMessage().split(":")[0] for r in caplog.records) == [
        f"not reading {src / name}" for name in ("Alias", "again", "cam_link")]


def test_a_broken_link_in_a_folder_is_reported_as_a_failed_file(store: Path, tmp_path: Path) -> None:
    """It used to be left out without a word."""
    src = tmp_path / "in"
    src.mkdir()
    write_image(src / "a.png", np.zeros((8, 8, 3), np.uint8))
    (src / "broken.png").symlink_to(tmp_path / "gone" / "x.png")
    code, out, err = _run("-i", str(src), "-o", str(tmp_path / "out"), "--store", str(store), "--tile", "0",
                          "--no-progress")
    assert code == 1 and (tmp_path / "out" / "a.png").is_file() and not (tmp_path / "out" / "broken.png").exists()
    assert "broken.png: a broken link (its target" in err and "1 ok, 1 failed" in out

    os.mkfifo(src / "pipe.png")  # a FIFO named like an image was left out without a word
    (src / "broken.png").unlink()
    code, out, err = _run("-i", str(src), "-o", str(tmp_path / "out2"), "--store", str(store), "--tile", "0",
                          "--no-progress")
    assert code == 1 and "pipe.png: is not a regular file" in err and "1 ok, 1 failed" in out


def test_existing_outputs_are_replaced_and_counted_or_kept_with_skip_existing(store: Path, tmp_path: Path) -> None:
    src = _two_small_pngs(tmp_path / "in")
    write_image(src / "img2.png", np.full((12, 10, 3), 200, np.uint8))
    dst = tmp_path / "out"
    dst.mkdir()
    mine = np.full((5, 7, 3), 17, np.uint8)
    write_image(dst / "img0.png", mine)  # a file of the user's, or the output of an interrupted run
    (dst / "img1.png").mkdir()  # something that is not a file in an output's place
    args = ("-i", str(src), "-o", str(dst), "--store", str(store), "--camera", "canon", "--no-progress")

    code, out, err = _run(*args, "--skip-existing")
    assert code == 0, err
    assert "skipping 2 images whose output exists" in out
    assert np.array_equal(read_image(dst / "img0.png").pixels, mine)  # left alone
    assert read_image(dst / "img2.png").pixels.shape == (48, 40, 3)
    assert "1 ok, 0 failed" in out.splitlines()[-1] and "replaced" not in out
    assert "2 skipped: output exists (--skip-existing)" in out.splitlines()[-1]  # the summary counts them too

    dead = (dst / ".img0.png.999999999.0123456789ab.tmp", dst / ".img2.png.999999999.0123456789ab.tmp")
    for stale in dead:  # a killed run that was replacing them (pid 999999999 cannot be alive)
        stale.write_bytes(b"half a png")
    (dst / ".other.png.999999999.0123456789ab.tmp").write_bytes(b"not ours to judge")
    code, out, err = _run(*args, "--skip-existing")  # everything exists now: nothing opens, nothing changes
    assert code == 0 and "every output exists" in out.splitlines()[-1]
    assert not any(p.exists() for p in dead)  # a skipped output's stale temporary files went, as a write removes them
    assert (dst / ".other.png.999999999.0123456789ab.tmp").exists()
    (dst / ".other.png.999999999.0123456789ab.tmp").unlink()

    (dst / "img1.png").rmdir()
    code, out, err = _run(*args)  # without the flag: replaced, and the summary says how many
    assert code == 0, err
    assert read_image(dst / "img0.png").pixels.shape == (48, 40, 3)
    assert "3 ok, 0 failed" in out.splitlines()[-1] and "replaced 2 existing output files" in out.splitlines()[-1]


def test_a_folder_run_reads_each_output_folder_once_for_dead_writers_files(store: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Every output's write read the whole output folder for temporary files of killed writers: a run of
    5,000 images did 12.5 million name matches, its time growing with the square of the folder's size (a
    helper's review). The folder is read once before the run; the dead writers' files still go."""
    import os

    from adassr.runtime import tempfiles

    src = tmp_path / "in"
    src.mkdir()
    for k in range(6):
        write_image(src / f"img{k}.png", np.full((8, 6, 3), 20 * k, np.uint8))
    dst = tmp_path / "out"
    dst.mkdir()
    dead = dst / ".img3.png.999999999.0123456789ab.tmp"  # a killed run was writing img3.png
    dead.write_bytes(b"half a png")
    reads: list[str] = []
    real_scandir = os.scandir

    def counted(path: object) -> object:
        reads.append(str(path))
        return real_scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(tempfiles.os, "scandir", counted)
    code, out, err = _run("-i", str(src), "-o", str(dst), "--store", str(store), "--camera", "canon", "--no-progress")
    assert code == 0, err
    assert "6 ok, 0 failed" in out.splitlines()[-1]
    assert reads.count(str(dst)) == 1
    assert not dead.exists()
    assert sorted(p.name for p in dst.iterdir()) == [f"img{k}.png" for k in range(6)]


def test_an_animation_or_a_multi_page_file_gets_a_note_that_only_its_first_frame_is_upscaled(
        store: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    frames = [Image.fromarray(np.full((12, 10, 3), 60 * k, np.uint8)) for k in range(3)]
    frames[0].save(src / "anim.webp", save_all=True, append_images=frames[1:], duration=100, loop=0, lossless=True)
    frames[0].save(src / "pages.tif", save_all=True, append_images=frames[1:2])
    frames[0].save(src / "still.webp", lossless=True)
    shutil.copy(SAMPLES / "nintendo" / "sugarshack.mpo", src / "stereo.mpo")  # two frames, one photo: no note
    code, out, err = _run("-i", str(src), "-o", str(tmp_path / "out"), "--store", str(store), "--camera", "canon",
                          "--no-progress")
    assert code == 0, err
    assert f"note: {src / 'anim.webp'}: holds 3 frames" in err and "only the first is read" in err
    assert f"note: {src / 'pages.tif'}: holds more than one page" in err
    assert "still.webp" not in err and "stereo.mpo" not in err and "4 ok, 0 failed" in out
    assert read_image(tmp_path / "out" / "anim.webp").pixels.shape == (48, 40, 3)
    assert not (tmp_path / "out" / "anim_2.webp").exists()


def test_an_overlap_that_no_auto_tile_can_keep_is_one_error_before_any_image(store: Path, tmp_path: Path) -> None:
    """--tile auto with --tile-overlap 300 failed every large image on its own ("no tile of at most
    262144 pixels covers ..."), exit 1, instead of once before the first image."""
    src = _two_small_pngs(tmp_path / "in")
    with pytest.raises(ConfigError, match=r"--tile-overlap 300 is too large for --tile auto.*--tile-overlap <= \d+"):
        _run("-i", str(src), "-o", str(tmp_path / "out"), "--store", str(store), "--tile-overlap", "300")
    assert not (tmp_path / "out").exists()
    code, _, err = _run("-i", str(src), "-o", str(tmp_path / "out"), "--store", str(store), "--tile-overlap", "60",
                        "--no-progress")
    assert code == 0, err


def test_outputs_through_broken_links_are_named_in_one_line(store: Path, tmp_path: Path) -> None:
    """`-o` a loop of links ended in a RuntimeError traceback; a link to nothing said only "File exists"
    (a helper's review)."""
    src = tmp_path / "in"
    src.mkdir()
    write_image(src / "a.png", np.full((20, 30, 3), 90, np.uint8))
    loop = tmp_path / "loop"
    loop.symlink_to("loop")
    with pytest.raises(ConfigError, match=f"-o {loop}: {loop} is a loop of symbolic links; choose another -o"):
        _run("-i", str(src), "-o", str(loop), "--store", str(store), "--no-progress")  # the CLI: exit 2, one line
    dangling = tmp_path / "out_link"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=f"{dangling} is a symbolic link to {tmp_path / 'nowhere'}, which does "
                                          "not exist"):
        _run("-i", str(src / "a.png"), "-o", str(dangling / "a.png"), "--store", str(store), "--no-progress")


def _tiny_images(*paths: Path) -> None:
    for k, path in enumerate(paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_image(path, np.full((12, 16, 3), 40 + 20 * k, np.uint8))


def test_a_name_too_long_for_the_file_system_fails_that_image_only(store: Path, tmp_path: Path) -> None:
    """An output name over 255 bytes (a 251-character name given --ext webp) ended the batch in an OSError
    traceback: the later images never ran and no summary was printed (a helper's review)."""
    src = tmp_path / "in"
    long_name = "m" * 251
    _tiny_images(src / "a.png", src / f"{long_name}.jpg", src / "z.png")
    code, out, err = _run("-i", str(src), "-o", str(tmp_path / "out"), "--store", str(store), "--ext", "webp",
                          "--no-progress")
    assert code == 1 and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.webp", "z.webp"]
    assert "the file name is longer than the file system takes" in err
    assert "upscaled 2 ok, 1 failed" in out


def test_a_refused_run_leaves_no_output_marker_and_a_linked_output_gets_one(store: Path, tmp_path: Path) -> None:
    """A run refused before its first image (exit 2) had already marked the user's camera folder as an output
    folder, so its photos were skipped for good; an -o inside the input that is a link got no marker, so the
    next run upscaled the outputs again as photos (a helper's review)."""
    src = tmp_path / "in"
    _tiny_images(src / "a.png")
    (src / "nikon").mkdir()
    with pytest.raises(ConfigError, match="--device"):
        _run("-i", str(src), "-o", str(src / "nikon"), "--store", str(store), "--device", "cuda", "--no-progress")
    assert not (src / "nikon" / OUTPUT_MARKER).exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (src / "out").symlink_to(elsewhere)
    code, _, _ = _run("-i", str(src), "-o", str(src / "out"), "--store", str(store), "--no-progress")
    assert code == 0 and (elsewhere / OUTPUT_MARKER).exists()
    code, out, _ = _run("-i", str(src), "-o", str(tmp_path / "again"), "--store", str(store), "--no-progress")
    assert code == 0 and "upscaled 1 ok" in out and "out/a.png ->" not in out  # the outputs are not read


def test_folders_whose_names_differ_in_case_get_separate_outputs_and_names_stay_one_line(
        store: Path, tmp_path: Path) -> None:
    """Nikon/ and nikon/ were planned to o/Nikon and o/nikon, one folder on macOS and Windows; a newline in a
    file name split the image's line in two (a helper's review)."""
    src = tmp_path / "in"
    _tiny_images(src / "Nikon" / "x.png", src / "nikon" / "x.png", src / "new\nline.png")
    code, out, _ = _run("-i", str(src), "-o", str(tmp_path / "out"), "--store", str(store), "--no-progress")
    assert code == 0
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.png")) == [
        "Nikon/x.png", "new\nline.png", "nikon_2/x.png"]
    # a renamed folder never takes another input folder's name (a second body's nikon_2/ keeps its own)
    src2 = tmp_path / "in2"
    _tiny_images(src2 / "Nikon" / "x.png", src2 / "nikon_2" / "y.png", src2 / "nikon" / "z.png")
    pairs = plan_outputs(src2, tmp_path / "out3", "auto")
    assert sorted(str(t.relative_to(tmp_path / "out3")) for _, t in pairs) == [
        "Nikon/x.png", "nikon_2/y.png", "nikon_3/z.png"]
    src4 = tmp_path / "in4"  # capitals both: NIKON/ and Nikon/ are one folder on macOS too
    _tiny_images(src4 / "NIKON" / "x.png", src4 / "Nikon" / "y.png")
    folders = [t.parent.name for _, t in plan_outputs(src4, tmp_path / "out5", "auto")]
    assert len({f.casefold() for f in folders}) == 2, folders
    # a renamed folder is cut to fit the file system's 255 bytes: a name the run makes itself never fails
    src3 = tmp_path / "in3"
    _tiny_images(src3 / ("N" * 255) / "x.png", src3 / ("n" * 255) / "y.png", src3 / "top.png")
    pairs = plan_outputs(src3, tmp_path / "out4", "auto")
    assert sorted(t.parent.name for _, t in pairs)[:2] == ["N" * 255, "n" * 253 + "_2"]
    assert any(line.startswith(f"{src}/new\\nline.png -> ") for line in out.splitlines())
    (src / "bad\nname.png").write_bytes(b"not an image")
    code, out, _ = _run("-i", str(src), "-o", str(tmp_path / "out2"), "--store", str(store), "--no-progress")
    (summary,) = [line for line in out.splitlines() if line.startswith("upscaled ")]
    assert code == 1 and summary.endswith(f"failed: {src}/bad\\nname.png")  # the summary stays one line


def test_the_missing_camera_warning_is_only_for_a_missing_camera_and_names_the_store(
        store: Path, tmp_path: Path) -> None:
    """`--camera canon` with a camera folder that is a loop of links warned that its images get the fallback
    (they do not: the run stops), and the advice to adapt left out --store (a helper's review)."""
    _tiny_images(tmp_path / "a.png")
    code, _, err = _run("-i", str(tmp_path / "a.png"), "-o", str(tmp_path / "o1.png"), "--store", str(store),
                        "--camera", "sony", "--no-progress")
    assert code == 0 and f"adapt it with `adassr adapt --camera sony --images PHOTO_FOLDER --store {store}`" in err
    (store / "canon").rename(tmp_path / "canon_elsewhere")
    (store / "canon").symlink_to("canon")  # a loop
    err_stream = io.StringIO()
    with pytest.raises(StoreError, match="is a loop of symbolic links"):  # the CLI: exit 2, one line
        run_upscale(_parse("-i", str(tmp_path / "a.png"), "-o", str(tmp_path / "o2.png"), "--store", str(store),
                           "--camera", "canon", "--no-progress"), stdout=io.StringIO(), stderr=err_stream)
    assert "fallback" not in err_stream.getvalue()


def test_an_output_name_too_long_for_the_file_system_is_one_line(store: Path, tmp_path: Path) -> None:
    """`-o` with a name over 255 bytes ended in an OSError traceback while the outputs were planned."""
    _tiny_images(tmp_path / "a.png")
    with pytest.raises(ConfigError, match="-o .*m{300}\\.png: File name too long; choose another -o"):
        _run("-i", str(tmp_path / "a.png"), "-o", str(tmp_path / ("m" * 300 + ".png")), "--store", str(store))


def test_threads_bounds_the_output_encoder_too(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--threads`` is every pool's size, the encoders' strips included (they used every core)."""
    from adassr.runtime.images import strips

    pools: list[tuple[int, int | None, int]] = []
    real = strips.StripPool.__init__

    def recording(self: strips.StripPool, count: int, threads: int | None = None) -> None:
        real(self, count, threads)
        pools.append((count, threads, self.workers))

    monkeypatch.setattr(strips.StripPool, "__init__", recording)
    big = tmp_path / "big.png"
    write_image(big, np.random.default_rng(0).integers(0, 256, (600, 400, 3), dtype=np.uint8), threads=2)
    assert pools[-1][1:] == (2, 2)  # 720 KB: two strips, two threads
    pools.clear()
    code, _, err = _run("-i", str(big), "-o", str(tmp_path / "out.png"), "--store", str(store), "--threads", "1",
                        "--tile", "64", "--tile-overlap", "8", "--no-progress")
    assert code == 0, err
    assert pools and all(workers == 1 and threads == 1 for _, threads, workers in pools)
    assert any(count > 1 for count, _, _ in pools)  # the output had several strips, encoded on one thread


def test_write_image_refuses_a_bad_thread_count(tmp_path: Path) -> None:
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ConfigError, match="threads must be an integer >= 1"):
            write_image(tmp_path / "x.png", np.zeros((4, 4, 3), np.uint8), threads=bad)  # type: ignore[arg-type]
    assert not (tmp_path / "x.png").exists()


def test_a_bad_adassr_threads_is_refused_before_any_image_even_with_threads(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --threads the variable was first read by the PNG encoder, after each image's model run: exit 1
    and an error per image (a helper's review); now it is the whole run's usage error."""
    big = write_image(tmp_path / "big.png", np.zeros((200, 200, 3), np.uint8))
    monkeypatch.setenv("ADASSR_THREADS", "abc")
    with pytest.raises(ConfigError, match="ADASSR_THREADS must be an integer"):
        _run("-i", str(big), "-o", str(tmp_path / "out.png"), "--store", str(store), "--threads", "2", "--no-progress")
    assert not (tmp_path / "out.png").exists()


def test_a_manifest_scale_that_contradicts_the_model_file_stops_before_any_image(tmp_path: Path) -> None:
    """A hand-edited manifest "scale" failed each image with "model output has shape ..."; the model
    file's own record of its scale is checked when it is opened: one whole-run error for --camera."""
    store = tmp_path / "store"
    publish_camera(store, FALLBACK_CAMERA, seed=0, metadata={"scale": "4"})
    canon = publish_camera(store, "canon", seed=1, metadata={"scale": "4"})
    src = _small_jpeg_with_exif(SAMPLES / "canon" / "flower.jpg", tmp_path / "in.jpg")
    args = ("-i", str(src), "--store", str(store), "--camera", "canon", "--no-progress")
    assert _run(*args, "-o", str(tmp_path / "ok.png"))[0] == 0
    canon.update_manifest(lambda m: [m.update(scale=2)] + [r.update(scale=2) for r in m["exports"].values()])
    with pytest.raises(StoreError, match=r"says camera 'canon' upscales x2, but its model file .* records x4"):
        _run(*args, "-o", str(tmp_path / "bad.png"))  # the CLI's main() prints it as one line, exit 2
    assert not (tmp_path / "bad.png").exists()


def test_a_report_says_what_happened_to_every_input(store: Path, tmp_path: Path) -> None:
    """`--report FILE`: one JSON record per input, in input order, with its status, output, camera group
    and model; the failed one with the error the run printed; one that --skip-existing kept as skipped."""
    import json

    src = _two_small_pngs(tmp_path / "in")
    (src / "img2.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    write_image(src / "img3.png", np.full((12, 10, 3), 90, np.uint8))
    dst = tmp_path / "out"
    dst.mkdir()
    write_image(dst / "img3.png", np.full((5, 5, 3), 1, np.uint8))  # kept by --skip-existing
    report = tmp_path / "report.json"
    code, out, err = _run("-i", str(src), "-o", str(dst), "--store", str(store), "--camera", "canon",
                          "--no-progress", "--skip-existing", "--report", str(report))
    assert code == 1 and "img2.png" in err
    doc = json.loads(report.read_text())
    assert doc["finished"] is True and doc["command"] == "upscale" and doc["report_version"] == 1
    assert doc["counts"] == {"ok": 2, "failed": 1, "skipped": 1, "not_done": 0}
    assert 0 < doc["seconds"] < 600  # the run's wall time
    files = doc["files"]
    assert [Path(f["input"]).name for f in files] == ["img0.png", "img1.png", "img2.png", "img3.png"]
    assert [f["status"] for f in files] == ["ok", "ok", "failed", "skipped"]
    assert files[0]["output"] == str(dst / "img0.png") and files[0]["camera_group"] == "canon"
    assert files[0]["model"] == "canon/model.onnx" and files[0]["replaced"] is False
    assert files[0]["route"] and files[0]["route"] in out  # as the output line names it
    assert files[2]["error"] and files[2]["error"] in err and files[2]["output"] == str(dst / "img2.png")
    assert files[3]["output"] == str(dst / "img3.png") and "error" not in files[3]
    assert not list(tmp_path.glob(".report.json*"))  # written atomically: no temporary file left

    code, out, err = _run("-i", str(src / "img3.png"), "-o", str(dst / "img3.png"), "--store", str(store),
                          "--skip-existing", "--report", str(report))  # everything exists: still reported
    assert code == 0 and json.loads(report.read_text())["counts"] == {"ok": 0, "failed": 0, "skipped": 1,
                                                                       "not_done": 0}

    # an output replaced, and an image with a note (an animation: its first frame only), recorded as such
    frames = [Image.fromarray(np.full((12, 10, 3), v, np.uint8)) for v in (30, 200)]
    frames[0].save(src / "img4.png", save_all=True, append_images=frames[1:])
    (src / "img2.png").unlink()
    code, out, err = _run("-i", str(src), "-o", str(dst), "--store", str(store), "--camera", "canon",
                          "--no-progress", "--report", str(report))
    assert code == 0, err
    files = {Path(f["input"]).name: f for f in json.loads(report.read_text())["files"]}
    assert files["img0.png"]["replaced"] is True and files["img3.png"]["replaced"] is True
    assert files["img4.png"]["replaced"] is False and files["img4.png"]["notes"]
    assert all(note in err for note in files["img4.png"]["notes"]) and "only the first is read" in err
    assert files["img0.png"]["notes"] == []


def test_an_interrupted_run_still_writes_its_report(store: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C after the first image: the report says the run did not finish and which inputs are left."""
    import json

    import adassr.runtime.upscale_cli as cli

    src = _two_small_pngs(tmp_path / "in")
    write_image(src / "img2.png", np.full((12, 10, 3), 90, np.uint8))
    real = cli._upscale_one
    calls: list[Path] = []

    def interrupted_at_the_second(serve, source, target, **kw):  # type: ignore[no-untyped-def]
        calls.append(source)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(serve, source, target, **kw)

    monkeypatch.setattr(cli, "_upscale_one", interrupted_at_the_second)
    report = tmp_path / "report.json"
    with pytest.raises(KeyboardInterrupt):
        _run("-i", str(src), "-o", str(tmp_path / "out"), "--store", str(store), "--camera", "canon",
             "--no-progress", "--report", str(report))
    doc = json.loads(report.read_text())
    assert doc["finished"] is False
    assert [f["status"] for f in doc["files"]] == ["ok", "not_done", "not_done"]
    assert doc["counts"]["not_done"] == 2


def test_a_report_that_cannot_go_where_asked_is_refused_before_any_work(store: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    src = _two_small_pngs(tmp_path / "in")
    out = tmp_path / "out"
    base = ("-i", str(src), "-o", str(out), "--store", str(store), "--camera", "canon", "--no-progress")
    for report, says in ((tmp_path / "missing" / "r.json", "does not exist"), (tmp_path, "is a folder"),
                         (src / "img0.png", "is an input image"), (out / "img1.png", "is an output image"),
                         (src / ".." / "in" / "img1.png", "is an input image"),  # another spelling of it
                         (out, "a folder this run writes its images into")):  # not there yet: the run makes it
        with pytest.raises(ConfigError, match=says):
            _run(*base, "--report", str(report))
    assert not out.exists()  # refused before any image
    code, stdout, err = _run(*base, "--report", str(out / "report.json"))  # in the output folder the run makes
    assert code == 0 and json.loads((out / "report.json").read_text())["counts"]["ok"] == 2

    import adassr.runtime.upscale_report as upscale_report

    real_write = upscale_report.write_report

    def full_at_the_end(report: Path, records: object, *, seconds: float, finished: bool) -> None:
        if finished:
            raise StoreError("cannot write report.json: No space left on device")
        real_write(report, records, seconds=seconds, finished=finished)  # type: ignore[arg-type]

    monkeypatch.setattr(upscale_report, "write_report", full_at_the_end)
    code, stdout, err = _run(*base, "--report", str(tmp_path / "report.json"))
    assert code == 1 and "error: cannot write the report" in err and "No space left" in err
    assert "2 ok, 0 failed" in stdout  # the images were written all the same
    code, stdout, err = _run(*base, "--skip-existing", "--report", str(tmp_path / "report.json"))
    assert code == 1 and "error: cannot write the report" in err  # every output exists: the report still counts

    def disk_full(*args: object, **kwargs: object) -> None:
        raise StoreError("cannot write report.json: No space left on device")

    monkeypatch.setattr(upscale_report, "write_report", disk_full)  # not even the first report: no work
    shutil.rmtree(out)
    with pytest.raises(ConfigError, match="cannot be written"):
        _run(*base, "--report", str(tmp_path / "report.json"))
    assert not out.exists()


def test_a_run_that_fails_as_a_whole_leaves_a_report_that_says_so(store: Path, tmp_path: Path) -> None:
    """The previous run's report, "finished" and all ok, stayed in place when the next run stopped at its
    backend check (exit 2): a script read the old run's results (a helper's review)."""
    import json

    src = _two_small_pngs(tmp_path / "in")
    report = tmp_path / "report.json"
    base = ("-i", str(src), "-o", str(tmp_path / "out"), "--store", str(store), "--camera", "canon",
            "--no-progress", "--report", str(report))
    assert _run(*base)[0] == 0 and json.loads(report.read_text())["finished"] is True
    with pytest.raises(BackendError):  # a provider this machine lacks, required: the run fails before any image
        _run(*base, "--providers", "cuda", "--require-providers")
    doc = json.loads(report.read_text())
    assert doc["finished"] is False and [f["status"] for f in doc["files"]] == ["not_done", "not_done"]


def _heif(path: Path) -> Path:
    """A file that begins as a phone's HEIF photo does (its ftyp box)."""
    path.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 100)
    return path


def test_a_folders_heif_and_raw_photos_are_named_and_the_rest_upscaled(store: Path, tmp_path: Path) -> None:
    """A phone's .heic photos beside its JPEGs were left out of a folder run without a word."""
    src = _two_small_pngs(tmp_path / "in")
    _heif(src / "IMG_0001.HEIC")
    (src / "canon").mkdir()
    _heif(src / "canon" / "IMG_0002.heic")
    (src / "canon" / "DSC_0001.NEF").write_bytes(b"II*\x00" + b"\x00" * 60)
    _heif(src / ".IMG_0003.HEIC")  # hidden: not a photo of the run
    code, out, err = _run("-i", str(src), "-o", str(tmp_path / "out"), "--store", str(store), "--camera", "canon",
                          "--no-progress")
    assert code == 0, err
    assert "note: 3 files in formats adassr does not read were left out" in err
    assert "HEIF (HEIC) files (2: IMG_0001.HEIC, IMG_0002.heic)" in err and "raw files (1: DSC_0001.NEF)" in err
    assert ".IMG_0003" not in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img0.png", "img1.png"]
    assert "2 ok, 0 failed" in out
    phone = tmp_path / "phone"
    phone.mkdir()
    _heif(phone / "IMG_0009.HEIC")
    with pytest.raises(ConfigError, match=r"no images in .*; 1 file in formats adassr does not read was left out: "
                                          r"HEIF \(HEIC\) files \(1: IMG_0009.HEIC\): convert to JPEG or PNG"):
        plan_outputs(phone, tmp_path / "o3", "auto")


def test_a_run_none_of_whose_inputs_can_be_read_opens_no_model(tmp_path: Path) -> None:
    """With an empty store, `upscale -i IMG.HEIC` exported the fallback backbone (a minute on 2 cores) before
    it named the file it cannot read; no model is prepared or opened for inputs none of which can be read."""
    calls: list[str] = []

    def prepare(options, *, camera, samples):  # type: ignore[no-untyped-def]
        calls.append("prepare")

    def factory(options):  # type: ignore[no-untyped-def]
        calls.append("factory")
        raise AssertionError("no upscaler is built")

    upscalers = UpscalerRegistry([UpscalerEntry("onnxruntime", factory, "test", prepare=prepare)])
    src = tmp_path / "in"
    src.mkdir()
    _heif(src / "IMG_0001.jpg")  # renamed: the content decides
    (src / "empty.png").write_bytes(b"")
    parser = argparse.ArgumentParser()
    add_upscale_arguments(parser, upscalers)
    args = parser.parse_args(["-i", str(src), "-o", str(tmp_path / "out"), "--store", str(tmp_path / "none"),
                              "--no-progress"])
    out, err = io.StringIO(), io.StringIO()
    assert run_upscale(args, upscalers=upscalers, stdout=out, stderr=err) == 1
    assert calls == []
    assert "IMG_0001.jpg: a HEIF (HEIC) image" in err.getvalue() and "empty.png: file is empty" in err.getvalue()
    assert "0 ok, 2 failed" in out.getvalue() and "models: none" in out.getvalue()
    assert not (tmp_path / "none").exists()
    # one input that can be read: the run prepares and opens its model as before
    write_image(src / "ok.png", np.full((12, 10, 3), 40, np.uint8))
    with pytest.raises(AssertionError, match="no upscaler is built"):
        run_upscale(args, upscalers=upscalers, stdout=io.StringIO(), stderr=io.StringIO())
    assert calls == ["prepare", "factory"]


def test_the_heif_note_names_files_only(tmp_path: Path) -> None:
    """Folders named like HEIF photos, hidden files (macOS's ._IMG.HEIC) and a file input are no photos left out."""
    src = _two_small_pngs(tmp_path / "in")
    (src / "album.heic").mkdir()  # a folder, not a photo
    (src / "canon").mkdir()
    _heif(src / "canon" / "._IMG_0002.HEIC")
    _heif(src / "canon" / "IMG_0002.HEIC")
    notes: list[str] = []
    plan_outputs(src, tmp_path / "out", "auto", notes=notes)
    (note,) = notes
    assert note.startswith("1 file in formats adassr does not read was left out: HEIF (HEIC) files (1: IMG_0002.HEIC)")
    assert "album.heic" not in note and "._IMG" not in note
    for one in (src / "img0.png", src / "canon" / "IMG_0002.HEIC"):  # a file input: nothing left out
        notes.clear()
        plan_outputs(one, tmp_path / "out", "auto", notes=notes)
        assert notes == []


def test_a_folder_runs_warnings_about_its_folders_come_once(store: Path, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """The note about HEIF photos listed the folders a second time, and each warning about a folder not read
    (a link to another, an earlier run's output) came twice."""
    src = _two_small_pngs(tmp_path / "in")
    (src / "canon").mkdir()
    _heif(src / "canon" / "IMG_0002.HEIC")
    (src / "canon_link").symlink_to(src / "canon", target_is_directory=True)
    with caplog.at_level(logging.WARNING):
        code, _, err = _run("-i", str(src), "-o", str(tmp_path / "out"), "--store", str(store), "--camera", "canon",
                            "--no-progress")
    assert code == 0, err
    warned = [r.getMessage() for r in caplog.records if "not reading" in r.getMessage()]
    assert len(warned) == 1 and "canon_link" in warned[0]
    assert err.count("formats adassr does not read") == 1


def test_a_run_none_of_whose_inputs_can_be_read_counts_the_kept_outputs(tmp_path: Path) -> None:
    """--skip-existing's kept outputs are counted in the summary of a run that opens no model too."""
    def factory(options):  # type: ignore[no-untyped-def]
        raise AssertionError("no upscaler is built")

    upscalers = UpscalerRegistry([UpscalerEntry("onnxruntime", factory, "test")])
    src = tmp_path / "in"
    src.mkdir()
    _heif(src / "IMG_0001.jpg")
    _heif(src / "IMG_0002.jpg")
    (tmp_path / "out").mkdir()
    write_image(tmp_path / "out" / "IMG_0001.jpg", np.full((8, 8, 3), 40, np.uint8))
    parser = argparse.ArgumentParser()
    add_upscale_arguments(parser, upscalers)
    args = parser.parse_args(["-i", str(src), "-o", str(tmp_path / "out"), "--store", str(tmp_path / "none"),
                              "--no-progress", "--skip-existing"])
    out, err = io.StringIO(), io.StringIO()
    assert run_upscale(args, upscalers=upscalers, stdout=out, stderr=err) == 1
    assert "upscaled 0 ok, 1 failed" in out.getvalue() and "models: none; 1 skipped: output exists" in out.getvalue()
    assert "IMG_0002.jpg: a HEIF (HEIC) image" in err.getvalue()


def test_a_run_none_of_whose_inputs_could_be_read_refuses_a_file_replaced_meanwhile(tmp_path: Path) -> None:
    from adassr.runtime.images import LoadedImage
    from adassr.runtime.upscale_cli import _NoInputReadable

    image = LoadedImage(np.zeros((4, 4, 3), np.uint8), None, 8, None, None, tmp_path / "a.png")
    with pytest.raises(StoreError, match=r"a\.png: no model was opened for this run"):
        _NoInputReadable().upscale(image)
