"""``adassr upscale --triton`` against a stand-in Triton server (tests/runtime/_fake_triton.py) in the
default run: routing, the camera's spelling, the tiling the repository fixes, and model faults. The
same flows against a real tritonserver are in test_upscale_triton.py (opt-in)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adassr.cli import main
from adassr.export.triton_repo import TritonRepoOptions, write_repository
from adassr.runtime.images import read_image
from adassr.runtime.store import FALLBACK_CAMERA

from ._fake_triton import fake_triton
from ._models import publish_camera
from ._server import SAMPLES, small_jpeg_with_exif, upscale_cli

pytest.importorskip("tritonclient.http")
pytest.importorskip("tritonclient.grpc")  # the stand-in reads config.pbtxt with Triton's protobuf schema

TILE = 32


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    """``(store, repository, input folder)``: fallback and canon models, tile 32, two photos and a bad file."""
    store = tmp_path / "store"
    publish_camera(store, FALLBACK_CAMERA, seed=0)
    publish_camera(store, "canon", seed=1)
    repo = tmp_path / "repo"
    write_repository(repo, store, options=TritonRepoOptions(tile=TILE, max_batch_size=4, preferred_batch_sizes=(2, 4),
                                                           instance_kind="KIND_CPU"))
    src = tmp_path / "in"
    src.mkdir()
    (src / "a_canon.jpg").write_bytes(small_jpeg_with_exif(SAMPLES / "canon" / "flower.jpg", 48))
    (src / "b_nokia.jpg").write_bytes(small_jpeg_with_exif(SAMPLES / "nokia" / "iptc.jpg", 40))
    (src / "c_bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return store, repo, src


def _same_pixels(a: Path, b: Path) -> bool:
    return np.array_equal(read_image(a).pixels, read_image(b).pixels)


def test_a_folder_through_triton_equals_the_local_run(setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    store, repo, src = setup
    tiling = ("--tile", str(TILE), "--tile-overlap", "8", "--ext", "png", "--no-progress")
    local = tmp_path / "local"
    assert upscale_cli("-i", str(src), "-o", str(local), "--store", str(store), *tiling)[0] == 1
    with fake_triton(repo) as triton:
        url, calls = triton.url, triton.calls
        out = tmp_path / "out"
        code, stdout, stderr = upscale_cli("-i", str(src), "-o", str(out), "--triton", url, *tiling)
    assert code == 1, stderr
    assert "a_canon.png  [model adassr_canon on Triton, exif-make]" in stdout
    assert "b_nokia.png  [model adassr__fallback on Triton, fallback]" in stdout
    assert "c_bad.jpg" in stderr and "2 ok, 1 failed" in stdout
    # said, not silently ignored (a helper's hunt); --tile-overlap is used (it must fit the repository's tile)
    assert f"note: --tile {TILE} is not used with --triton: the server runs the models of its repository" in stderr
    assert sorted(p.name for p in out.iterdir()) == ["a_canon.png", "b_nokia.png"]
    for name in ("a_canon.png", "b_nokia.png"):
        assert _same_pixels(out / name, local / name), name
    assert {c["shape"][1:] for c in calls} == {(3, TILE, TILE)} and max(c["shape"][0] for c in calls) <= 4
    assert {c["model"] for c in calls} == {"adassr_canon", f"adassr_{FALLBACK_CAMERA}"}


def test_sample_bits_are_honoured_through_triton(setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """``--triton`` with ``--sample-bits 16``: the tiles go to the server at full range, as a local run's do (a
    dark 16-bit photo that auto takes for 14-bit samples); a range its values exceed fails the image, named."""
    from adassr.runtime.images import write_image

    store, repo, _ = setup
    rng = np.random.default_rng(4)
    dark = write_image(tmp_path / "dark.png", rng.integers(0, 16384, (40, 36, 3)).astype(np.uint16))
    tiling = ("--tile", str(TILE), "--tile-overlap", "8", "--no-progress", "--camera", "canon")
    local = tmp_path / "local.png"
    assert upscale_cli("-i", str(dark), "-o", str(local), "--store", str(store), "--sample-bits", "16",
                       *tiling)[0] == 0
    with fake_triton(repo) as triton:
        outs = {}
        for bits in ("16", "auto"):
            outs[bits] = tmp_path / f"t{bits}.png"
            code, _, stderr = upscale_cli("-i", str(dark), "-o", str(outs[bits]), "--triton", triton.url,
                                          "--sample-bits", bits, *tiling)
            assert code == 0, stderr
        code, _, stderr = upscale_cli("-i", str(dark), "-o", str(tmp_path / "t12.png"), "--triton", triton.url,
                                      "--sample-bits", "12", *tiling)
    assert _same_pixels(outs["16"], local) and not _same_pixels(outs["auto"], local)
    assert code == 1 and "above the top level 4095 of the sample range given (12 bits)" in stderr, stderr
    assert not (tmp_path / "t12.png").exists()


def test_camera_is_spelt_as_the_store_spells_it(setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """``--camera Canon`` works locally; on Triton it asked for ``adassr_Canon`` (model names are
    case-sensitive) and the whole run failed."""
    store, repo, src = setup
    one = src / "b_nokia.jpg"
    tiling = ("--tile", str(TILE), "--tile-overlap", "8", "--no-progress")
    ref = tmp_path / "ref.png"
    assert upscale_cli("-i", str(one), "-o", str(ref), "--store", str(store), "--camera", "Canon", *tiling)[0] == 0
    with fake_triton(repo) as triton:
        url = triton.url
        code, stdout, stderr = upscale_cli("-i", str(one), "-o", str(tmp_path / "t.png"), "--triton", url,
                                        "--camera", "Canon", *tiling)
    assert code == 0, stderr
    assert "[model adassr_canon on Triton, explicit]" in stdout
    assert _same_pixels(tmp_path / "t.png", ref)


def test_the_overlap_fits_the_repositorys_tile(setup: tuple[Path, Path, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The default overlap (32) shrinks to fit the 32 px tile the repository chose (15, as a local run
    with that overlap); one given explicitly that cannot fit is a one-line error before any image."""
    store, repo, src = setup
    one = src / "a_canon.jpg"
    ref = tmp_path / "ref.png"
    assert upscale_cli("-i", str(one), "-o", str(ref), "--store", str(store), "--tile", str(TILE),
                    "--tile-overlap", "15", "--no-progress")[0] == 0
    with fake_triton(repo) as triton:
        url, calls = triton.url, triton.calls
        code, _, stderr = upscale_cli("-i", str(one), "-o", str(tmp_path / "t.png"), "--triton", url, "--no-progress")
        assert code == 0, stderr
        assert _same_pixels(tmp_path / "t.png", ref)
        n = len(calls)
        capsys.readouterr()
        code = main(["upscale", "-i", str(one), "-o", str(tmp_path / "x.png"), "--triton", url,
                     "--camera", "canon", "--tile-overlap", "20"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert "--tile-overlap 20 is too large" in err and "tile is 32" in err and "<= 15" in err
        assert len(calls) == n and not (tmp_path / "x.png").exists()
        code = main(["upscale", "-i", str(one), "-o", str(tmp_path / "x.png"), "--triton", url,
                     "--camera", "canon", "--tile-overlap", "32"])  # the default's value, but asked for: was shrunk
        err = capsys.readouterr().err
        assert code == 2 and "--tile-overlap 32 is too large" in err, err
        assert len(calls) == n and not (tmp_path / "x.png").exists()
        for pre_pad in ("200", "-1"):  # was checked at each image (failing each, exit 1), as pre_pad
            code = main(["upscale", "-i", str(src), "-o", str(tmp_path / "y"), "--triton", url, "--pre-pad", pre_pad])
            err = capsys.readouterr().err
            assert code == 2 and err == f"error: --pre-pad must be from 0 to 128 LR pixels (context for the borders; " \
                                        f"more only costs time), got {pre_pad}\n", err
            assert len(calls) == n and not (tmp_path / "y").exists()


@pytest.mark.parametrize(("fault", "message"), [
    ("nan", "Triton model 'adassr_canon' produced NaN or Inf values (a damaged model?); publish the camera's fp32"),
    ("short", "model output"),
])
def test_a_faulty_model_fails_its_images_with_a_message_about_triton(
    setup: tuple[Path, Path, Path], tmp_path: Path, fault: str, message: str
) -> None:
    _, repo, src = setup
    with fake_triton(repo, fault=fault) as triton:
        url = triton.url
        out = tmp_path / "out.png"
        code, stdout, stderr = upscale_cli("-i", str(src / "a_canon.jpg"), "-o", str(out), "--triton", url,
                                        "--camera", "canon", "--no-progress")
    assert code == 1 and message in stderr, stderr
    assert "use its fp32 export (--precision fp32)" not in stderr  # the local runtime's advice means nothing here
    assert not out.exists() and "0 ok, 1 failed" in stdout


def test_a_long_lived_client_follows_a_repository_rewritten_with_another_tile(
        setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """The client cached each model's config for good: after ``--triton-repo`` wrote another tile
    (and a polling Triton reloaded it), every request failed on the input shape until a restart."""
    from adassr.runtime.server.triton_client import TritonUpscaler

    store, repo, src = setup
    image = read_image(src / "a_canon.jpg")
    ref = tmp_path / "ref48.png"
    assert upscale_cli("-i", str(src / "a_canon.jpg"), "-o", str(ref), "--store", str(store), "--camera", "canon",
                    "--tile", "48", "--tile-overlap", "23", "--no-progress")[0] == 0
    with fake_triton(repo) as triton, TritonUpscaler(triton.url) as client:
        client.upscale(image, camera="canon")
        assert {c["shape"][2:] for c in triton.calls} == {(TILE, TILE)}
        write_repository(repo, store, ["canon"], TritonRepoOptions(tile=48, max_batch_size=4,
                                                                   preferred_batch_sizes=(2, 4),
                                                                   instance_kind="KIND_CPU"))
        triton.reload()
        pixels, _, name = client.upscale(image, camera="canon")
        assert name == "adassr_canon" and triton.calls[-1]["shape"][2:] == (48, 48)
        assert np.array_equal(pixels, read_image(ref).pixels)
        assert client.model_info("adassr_canon").tile == 48


def test_a_camera_model_that_is_not_ready_fails_its_images_instead_of_the_fallback(
        setup: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 503 or a loading model made a Canon photo go to the unadapted fallback, exit 0, unnoticed; the
    local --tile rules refused a --tile the repository does not use (helpers' hunts)."""
    _, repo, src = setup
    with fake_triton(repo) as triton:
        triton.not_ready.add("adassr_canon")
        code = main(["upscale", "-i", str(src / "a_canon.jpg"), "-o", str(tmp_path / "a.png"), "--triton",
                     triton.url, "--tile", "64", "--no-progress"])
        err = capsys.readouterr().err
        assert code == 1 and not (tmp_path / "a.png").exists()
        assert "'adassr_canon' is in the repository but not ready (UNAVAILABLE: loading)" in err
        assert all(call["model"] != "adassr__fallback" for call in triton.calls)
        triton.not_ready.clear()
        assert main(["upscale", "-i", str(src / "a_canon.jpg"), "-o", str(tmp_path / "a.png"), "--triton",
                     triton.url, "--tile", "64", "--no-progress"]) == 0


def test_outscale_small_images_and_the_model_options_reach_triton(setup: tuple[Path, Path, Path],
                                                                  tmp_path: Path) -> None:
    """What mutation testing changed unnoticed: --outscale through Triton, an image smaller than the
    repository's tile (padded to it: Triton refuses other shapes), --triton-model and --triton-prefix."""
    from adassr.runtime.images import write_image

    store, repo, src = setup
    one = src / "a_canon.jpg"
    small = src.parent / "tiny.png"
    write_image(small, (np.random.default_rng(4).random((20, 24, 3)) * 255).astype(np.uint8))
    tiling = ("--tile", str(TILE), "--tile-overlap", "15", "--no-progress")
    for name, source, extra in (("half", one, ("--outscale", "2")), ("small", small, ())):
        ref = tmp_path / f"{name}_ref.png"
        assert upscale_cli("-i", str(source), "-o", str(ref), "--store", str(store), "--camera", "canon", *tiling,
                           *extra)[0] == 0
        with fake_triton(repo) as triton:
            out = tmp_path / f"{name}.png"
            code, _, stderr = upscale_cli("-i", str(source), "-o", str(out), "--triton", triton.url, "--camera",
                                          "canon", "--no-progress", *extra)
            assert code == 0, stderr
            assert {c["shape"][1:] for c in triton.calls} == {(3, TILE, TILE)}
        assert _same_pixels(out, ref), name
    h, w = read_image(one).pixels.shape[:2]
    assert read_image(tmp_path / "half.png").pixels.shape[:2] == (2 * h, 2 * w)
    with fake_triton(repo) as triton:
        code, stdout, stderr = upscale_cli("-i", str(one), "-o", str(tmp_path / "m.png"), "--triton", triton.url,
                                           "--triton-model", f"adassr_{FALLBACK_CAMERA}", "--no-progress")
        assert code == 0, stderr
        assert f"[model adassr_{FALLBACK_CAMERA} on Triton, --triton-model]" in stdout
        assert {c["model"] for c in triton.calls} == {f"adassr_{FALLBACK_CAMERA}"}
    fleet = tmp_path / "fleet"
    write_repository(fleet, store, options=TritonRepoOptions(tile=TILE, max_batch_size=4, preferred_batch_sizes=(2, 4),
                                                             prefix="fleet_",
                                                             instance_kind="KIND_CPU"))
    with fake_triton(fleet) as triton:
        for camera in (("--camera", "canon"), ()):  # chosen, and routed by the photo's EXIF Make
            code, stdout, stderr = upscale_cli("-i", str(one), "-o", str(tmp_path / f"p{len(camera)}.png"), "--triton",
                                               triton.url, "--triton-prefix", "fleet_", *camera, "--no-progress")
            assert code == 0, stderr
            assert {c["model"] for c in triton.calls} == {"fleet_canon"}


def test_transparency_and_the_pre_pad_reach_the_output_through_triton(setup: tuple[Path, Path, Path],
                                                                      tmp_path: Path) -> None:
    """A PNG's alpha and --pre-pad were dropped unnoticed on the Triton path (mutation testing): the output
    must equal the local run's, alpha included."""
    from adassr.runtime.images import write_image

    store, repo, _ = setup
    rgb = (np.random.default_rng(5).random((40, 44, 3)) * 255).astype(np.uint8)
    alpha = np.repeat(np.linspace(0, 255, 44, dtype=np.uint8)[None, :], 40, axis=0)
    source = tmp_path / "logo.png"
    write_image(source, rgb, alpha=alpha)
    for pre_pad in ("0", "12"):
        ref = tmp_path / f"ref{pre_pad}.png"
        assert upscale_cli("-i", str(source), "-o", str(ref), "--store", str(store), "--camera", "canon", "--tile",
                           str(TILE), "--tile-overlap", "15", "--pre-pad", pre_pad, "--no-progress")[0] == 0
        with fake_triton(repo) as triton:
            out = tmp_path / f"t{pre_pad}.png"
            code, _, stderr = upscale_cli("-i", str(source), "-o", str(out), "--triton", triton.url, "--camera",
                                          "canon", "--pre-pad", pre_pad, "--no-progress")
            assert code == 0, stderr
        got, want = read_image(out), read_image(ref)
        assert got.alpha is not None and want.alpha is not None and got.alpha.shape == (160, 176), pre_pad
        assert np.array_equal(got.alpha, want.alpha) and _same_pixels(out, ref), pre_pad
    assert not _same_pixels(tmp_path / "t0.png", tmp_path / "t12.png")  # the pre-pad changes the borders


def test_an_fp16_repository_gets_fp16_tensors_and_equals_the_local_fp16_run(tmp_path: Path) -> None:
    """The client's wire type was changed unnoticed (mutation testing): a real Triton refuses FP32 data for an
    fp16 model, as the stand-in does; the output must equal the local run of the same fp16 export."""
    store = tmp_path / "store"
    publish_camera(store, FALLBACK_CAMERA, seed=0, fp16=True)
    publish_camera(store, "canon", seed=1, fp16=True)
    repo = tmp_path / "repo"
    write_repository(repo, store, options=TritonRepoOptions(tile=TILE, max_batch_size=4, preferred_batch_sizes=(2, 4),
                                                           instance_kind="KIND_CPU", precision="fp16"))
    source = tmp_path / "a_canon.jpg"
    source.write_bytes(small_jpeg_with_exif(SAMPLES / "canon" / "flower.jpg", 48))
    ref = tmp_path / "ref.png"
    tiling = ("--tile", str(TILE), "--tile-overlap", "8", "--no-progress")
    code, _, stderr = upscale_cli("-i", str(source), "-o", str(ref), "--store", str(store), "--camera", "canon",
                                  "--precision", "fp16", *tiling)
    assert code == 0, stderr
    with fake_triton(repo) as triton:
        out = tmp_path / "out.png"
        code, _, stderr = upscale_cli("-i", str(source), "-o", str(out), "--triton", triton.url, "--camera", "canon",
                                      *tiling)
        assert code == 0, stderr
        assert triton.calls and {c["datatype"] for c in triton.calls} == {"FP16"}
    assert _same_pixels(out, ref)


def test_a_persistent_fault_is_not_retried_with_the_same_config(setup: tuple[Path, Path, Path]) -> None:
    """A failed batch reads the model's config again and retries only when it changed: with the same config the
    retry ran every tile a second time for the same error (mutation testing)."""
    from adassr.runtime.errors import ShapeError
    from adassr.runtime.server.triton_client import TritonUpscaler

    _, repo, src = setup
    image = read_image(src / "a_canon.jpg")
    with fake_triton(repo, fault="short") as triton, TritonUpscaler(triton.url) as client:
        with pytest.raises(ShapeError):
            client.upscale(image, camera="canon")
        assert len(triton.calls) == 1  # the first batch failed; nothing was sent again


def test_progress_and_the_output_check_reach_the_tiling_through_triton(setup: tuple[Path, Path, Path]) -> None:
    """``progress`` and ``check_output`` of :meth:`TritonUpscaler.upscale` were dropped unnoticed (mutation
    testing): progress counts the tiles from 0, and a refusing check stops the image before any tile is sent."""
    from adassr.runtime.errors import ImageError
    from adassr.runtime.server.triton_client import TritonUpscaler

    _, repo, src = setup
    image = read_image(src / "a_canon.jpg")
    seen: list[tuple[int, int]] = []
    checked: list[tuple[int, int]] = []

    def refuse(height: int, width: int) -> None:
        raise ImageError(f"cannot write {height}x{width}")

    with fake_triton(repo) as triton, TritonUpscaler(triton.url) as client:
        pixels, _, _ = client.upscale(image, camera="canon", progress=lambda done, total: seen.append((done, total)),
                                      check_output=lambda h, w: checked.append((h, w)))
        h, w = image.pixels.shape[:2]
        assert pixels.shape[:2] == checked[0] == (4 * h, 4 * w)
        total = seen[0][1]
        assert seen[0] == (0, total) and seen[-1] == (total, total) and total > 1
        sent = len(triton.calls)
        with pytest.raises(ImageError, match="cannot write"):
            client.upscale(image, camera="canon", check_output=refuse)
        assert len(triton.calls) == sent


def test_run_options_are_checked_and_the_result_reports_the_scale_served(setup: tuple[Path, Path, Path]) -> None:
    """``TritonRunOptions`` refuses what ``upscale --triton`` must refuse before the first image, and a result's
    ``outscale`` is the one asked for, else the model's scale (mutation testing changed both unnoticed)."""
    from adassr.runtime.errors import ConfigError
    from adassr.runtime.server.triton_upscale import TritonRunOptions, open_triton
    from adassr.runtime.tiling import MAX_PRE_PAD

    for kwargs, words in (({"model": " "}, "--triton-model is empty"), ({"overlap": -1}, "--tile-overlap must be 0"),
                          ({"pre_pad": -1}, "--pre-pad must be from 0"),
                          ({"pre_pad": MAX_PRE_PAD + 1}, "--pre-pad must be from 0"),
                          ({"outscale": 0.0}, "outscale")):
        with pytest.raises(ConfigError, match=words):
            TritonRunOptions(url="localhost:8000", **kwargs)  # type: ignore[arg-type]
    assert TritonRunOptions(url="http://localhost:8000", pre_pad=MAX_PRE_PAD, overlap=0).url == "localhost:8000"
    _, repo, src = setup
    image = read_image(src / "a_canon.jpg")
    h, w = image.pixels.shape[:2]
    with fake_triton(repo) as triton:
        for outscale, want in ((None, 4.0), (2.0, 2.0)):
            upscaler = open_triton(TritonRunOptions(url=triton.url, outscale=outscale), camera="canon")
            try:
                result = upscaler.upscale(image, camera="canon")
            finally:
                upscaler.close()
            assert (result.scale, result.outscale) == (4, want)
            assert result.pixels.shape[:2] == (round(want * h), round(want * w))
            assert result.model_name == "adassr_canon on Triton, explicit"
