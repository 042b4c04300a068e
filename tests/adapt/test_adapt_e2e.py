"""`adapt --camera` end to end with the real Real-ESRGAN backbone on small crops (CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from adassr.cli import main
from adassr.runtime.images import read_image, write_image
from adassr.runtime.store import CameraStore, sha256_file

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "cameras"
REQUIRED_KEYS = {"camera", "images", "backbone", "scale", "kernel", "niqe_before", "niqe_after", "per_image",
                 "steps", "stop_reason", "seed", "precision", "device", "wall_time_s", "attention", "versions",
                 "weights_sha256", "schema_version", "artifacts"}


@pytest.fixture(scope="module")
def camera_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    group = root / "nokia"
    group.mkdir()
    pixels = read_image(SAMPLES / "nokia" / "iptc.jpg").pixels
    write_image(group / "crop.png", np.ascontiguousarray(pixels[200:330, 250:380]))
    return root


def _adapt(camera_dir: Path, store: Path, *extra: str) -> int:
    return main(["adapt", "--camera", "nokia", "--images", str(camera_dir), "--store", str(store),
                 "--steps", "2", "--eval-every", "1", "--patch", "12", "--eval-crop", "48", "--seed", "1",
                 "--lambda-perceptual", "0", "--feature-bank", "4", *extra])


def test_adapt_end_to_end_writes_artifacts(camera_dir: Path, tmp_path: Path, capsys) -> None:
    store = tmp_path / "store"
    assert _adapt(camera_dir, store) == 0
    out = capsys.readouterr().out
    assert "NIQE" in out and "artifacts:" in out
    cam = CameraStore.open(store, "nokia")
    assert f"blur kernel: Gaussian sigma {cam.read_manifest()['kernel']['sigma_x']:.2f}" in out
    manifest = cam.read_manifest()
    assert set(manifest) >= REQUIRED_KEYS
    assert manifest["backbone"]["name"] == "realesrgan-x4plus" and manifest["scale"] == 4
    kernel = np.asarray(manifest["kernel"]["kernel"])
    assert kernel.ndim == 2 and abs(kernel.sum() - 1) < 1e-6
    from adassr.runtime.server.models import kernel_summary  # what GET /v1/cameras shows of it

    summary = kernel_summary(manifest["kernel"])
    assert summary is not None and summary["method"] == manifest["kernel"]["method"]
    assert summary["sigma_x"] == manifest["kernel"]["sigma_x"]
    # one image: its tiles were compared instead of images
    assert manifest["kernel"]["diagnostics"]["direction_check"] == "parts"
    assert summary["direction_agreement"] == manifest["kernel"]["diagnostics"]["direction_agreement"]
    assert 0.0 <= summary["direction_agreement"] <= 1.0
    assert manifest["steps"] == 2 and manifest["seed"] == 1
    timing = manifest["timing"]  # --eval-every 1: every step starts a period; the backbone is evaluated too
    assert (timing["plain_steps"], timing["period_first_steps"], timing["evaluations"]) == (0, 2, 3)
    assert timing["setup_s"] > 0 and timing["period_first_steps_s"] > 0 and timing["evaluations_s"] > 0
    assert 0 < timing["before_training_s"] < manifest["wall_time_s"]  # reading, kernel, weight maps: from the start
    assert manifest["images"][0]["derivation"] == "folder"
    pairs = manifest["pairs"]  # each used photo's bytes are recorded: one edited later is seen
    assert pairs["images_used_sha256"] == [sha256_file(p) for p in pairs["images_used"]] != []
    threads = manifest["threads"]  # CPU: the pool it started with; changes only if other processes got busy
    assert threads["max"] >= 1 and isinstance(threads["automatic"], bool)
    assert all(c["to"] != c["from"] and 1 <= c["to"] <= threads["max"] for c in threads["changes"])
    weights = cam.verified_path("adapted.safetensors")
    # a delta on the backbone: the tail's tensors only (about 9 MB), not the 67 MB network
    assert weights.stat().st_size < 20_000_000
    assert manifest["artifacts"]["adapted.safetensors"]["format"] == "delta"
    from adassr.adapt.weights import load_safetensors_weights

    assert load_safetensors_weights(weights).weights_sha256 == manifest["weights_sha256"]
    margin = manifest["config"]["backbone_margin"]
    assert margin == 0.1  # the CPU default: adapted weights may be worse by NIQE by up to this
    if manifest["kept_backbone"]:
        assert manifest["niqe_after"] == manifest["niqe_before"]
        assert "kept the backbone" in out
    else:
        assert manifest["niqe_after"] < manifest["niqe_before"] + margin
        assert ("NIQE within the backbone margin of 0.1" in out) == (manifest["niqe_after"] > manifest["niqe_before"])
    json.dumps(manifest)  # plain JSON


def test_adapt_errors_are_clear(camera_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["adapt", "--camera", "sony", "--images", str(camera_dir), "--store", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown camera group 'sony'" in err and "nokia" in err
    assert main(["adapt", "--images", str(camera_dir)]) == 2
    assert "--camera NAME is required" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert _adapt(camera_dir, blocker) == 2
    assert "store folder" in capsys.readouterr().err
    tiny_root = tmp_path / "tiny"
    (tiny_root / "nokia").mkdir(parents=True)
    write_image(tiny_root / "nokia" / "thumb.png", read_image(camera_dir / "nokia" / "crop.png").pixels[:40, :40])
    assert _adapt(tiny_root, tmp_path / "s") == 2
    err = capsys.readouterr().err
    assert "at least" in err and "LR pixels" in err and "thumb.png (40x40)" in err
    assert "the default size: the kernel estimated from blurrier images is larger" in err  # not estimated yet
    assert not (tmp_path / "s").exists()  # no empty camera folder left, nor the store root this run made
    (tmp_path / "s" / "nokia").mkdir(parents=True)  # a folder that existed before the run stays
    assert _adapt(tiny_root, tmp_path / "s") == 2 and (tmp_path / "s" / "nokia").is_dir()


def test_adapt_export_upscale_round_trip(camera_dir: Path, tmp_path: Path, capsys,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """adapt -> export -> torch-free runtime: the runtime serves the camera's adapted weights."""
    import torch

    # The rerun below must publish the same weights, which needs the same thread count: without a fixed
    # count the thread governor shrank the pools in one run when other processes were busy and CI saw
    # other weights (the gradients' sums depend on the thread count; docs/cpu.md).
    monkeypatch.setenv("ADASSR_THREADS", "1")

    from adassr.adapt.weights import load_safetensors_weights

    store = tmp_path / "store"
    assert _adapt(camera_dir, store) == 0
    capsys.readouterr()
    assert main(["export", "--camera", "nokia", "--store", str(store)]) == 0
    manifest = CameraStore.open(store, "nokia").read_manifest()
    assert manifest["exports"]["onnx"]["weights_sha256"] == manifest["weights_sha256"]
    printed = capsys.readouterr().out.split("nokia: ", 1)[1].split(" (", 1)[0]  # the path export prints
    assert Path(printed).is_file() and Path(printed) == CameraStore.open(store, "nokia").verified_path("model.onnx")
    src = camera_dir / "nokia" / "crop.png"
    small = tmp_path / "small.png"
    write_image(small, read_image(src).pixels[:40, :48])
    out = tmp_path / "sr.png"
    capsys.readouterr()
    assert main(["upscale", "-i", str(small), "-o", str(out), "--camera", "nokia", "--store", str(store),
                 "--tile", "0", "--pre-pad", "0", "--no-progress"]) == 0
    assert "nokia" in capsys.readouterr().out
    lr = read_image(small).pixels.astype(np.float32) / 255
    model = load_safetensors_weights(CameraStore.open(store, "nokia").verified_path("adapted.safetensors")).model
    with torch.no_grad():
        ref = model(torch.from_numpy(lr.transpose(2, 0, 1)[None].copy()))[0].clamp(0, 1).permute(1, 2, 0).numpy()
    got = read_image(out).pixels.astype(np.float32) / 255
    assert got.shape == (160, 192, 3)
    assert np.abs(got - ref).max() <= 1 / 255 + 1e-4
    # The same run again publishes the same weights file, and its export stays (both were replaced: the
    # weights file's bytes changed from run to run, and re-adapting always dropped the exports).
    capsys.readouterr()
    assert _adapt(camera_dir, store, "--replace") == 0
    again = CameraStore.open(store, "nokia").read_manifest()
    assert again["artifacts"]["adapted.safetensors"] == manifest["artifacts"]["adapted.safetensors"]
    assert again["exports"] == manifest["exports"] and again["artifacts"]["model.onnx"] == manifest["artifacts"][
        "model.onnx"]
    assert "are dropped" not in capsys.readouterr().err
    # Other weights: the exports are dropped, and adapt says so with the command that makes new ones (it
    # said nothing, and the camera was off-line for new servers until an export nobody was told to run).
    assert _adapt(camera_dir, store, "--replace", "--seed", "2") == 0
    assert "exports" not in CameraStore.open(store, "nokia").read_manifest()
    err = capsys.readouterr().err
    assert f"exports were made from its previous weights and are dropped; until `adassr export --camera nokia " \
           f"--store {store}` runs" in " ".join(err.split())


def test_admm_with_an_external_step_runs(camera_dir: Path, tmp_path: Path) -> None:
    """K = 2 ADMM iterations: internal, external on clean HR photos (Eq. 8), internal again."""
    hr_dir = Path(__file__).resolve().parents[1] / "data" / "hr"
    store = tmp_path / "store"
    assert _adapt(camera_dir, store, "--admm-iters", "2", "--external-hr", str(hr_dir), "--batch", "2") == 0
    manifest = CameraStore.open(store, "nokia").read_manifest()
    assert manifest["config"]["admm_iters"] == 2
    assert manifest["config"]["external_hr"] == str(hr_dir)
    assert [a["iteration"] for a in manifest["admm"]] == [1, 2]
    assert manifest["admm"][-1]["steps"] == manifest["steps"]


def test_admm_needs_external_images(camera_dir: Path, tmp_path: Path, capsys) -> None:
    assert _adapt(camera_dir, tmp_path / "s", "--admm-iters", "2") == 2
    assert "--external-hr" in capsys.readouterr().err


def test_unreadable_image_is_skipped_and_recorded(camera_dir: Path, tmp_path: Path, caplog) -> None:
    """A damaged file in a group does not stop the camera's adaptation: it is named once and recorded."""
    import logging

    root = tmp_path / "images"
    (root / "nokia").mkdir(parents=True)
    write_image(root / "nokia" / "crop.png", read_image(camera_dir / "nokia" / "crop.png").pixels)
    (root / "nokia" / "broken.jpg").write_bytes((SAMPLES / "nokia" / "iptc.jpg").read_bytes()[:3000])
    store = tmp_path / "store"
    with caplog.at_level(logging.WARNING):
        assert _adapt(root, store) == 0
    warnings = [r.getMessage() for r in caplog.records if "broken.jpg" in r.getMessage()]
    assert len(warnings) == 1 and "skipped 1 unreadable image(s) of 2" in warnings[0]
    manifest = CameraStore.open(store, "nokia").read_manifest()
    assert [Path(p).name for p in manifest["pairs"]["images_used"]] == ["crop.png"]
    (skipped,) = manifest["pairs"]["images_skipped"]
    assert Path(skipped["path"]).name == "broken.jpg" and skipped["reason"].startswith("unreadable: ")
    assert [Path(m["path"]).name for m in manifest["images"]] == ["broken.jpg", "crop.png"]


def test_max_images_reads_part_of_a_large_group_and_records_it(camera_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "images"
    (root / "nokia").mkdir(parents=True)
    pixels = read_image(camera_dir / "nokia" / "crop.png").pixels
    for i in range(3):
        write_image(root / "nokia" / f"p{i}.png", np.ascontiguousarray(np.rot90(pixels, i)))
    (root / "nokia" / "p3.png").write_bytes((root / "nokia" / "p0.png").read_bytes())  # a copy: left out
    store = tmp_path / "store"
    assert _adapt(root, store, "--max-images", "1") == 0
    manifest = CameraStore.open(store, "nokia").read_manifest()
    assert [Path(p).name for p in manifest["pairs"]["images_used"]] == ["p1.png"]
    assert manifest["pairs"]["selection"] == {"images_in_group": 4, "readable": 3, "read": 1, "max_images": 1,
                                              "max_megapixels": 100.0, "limited_by": "--max-images 1"}
    assert manifest["pairs"]["images_skipped"] == [
        {"path": str(root.absolute() / "nokia" / "p3.png"),
         "reason": f"the same bytes as {root.absolute() / 'nokia' / 'p0.png'}"}]
    assert manifest["config"]["max_images"] == 1 and len(manifest["images"]) == 4


def test_group_without_a_readable_image_fails_cleanly(tmp_path: Path, capsys) -> None:
    root = tmp_path / "images"
    (root / "nokia").mkdir(parents=True)
    (root / "nokia" / "a.png").write_bytes(b"")
    (root / "nokia" / "b.jpg").write_text("not an image")
    store = tmp_path / "store"
    assert _adapt(root, store) != 0
    err = capsys.readouterr().err
    assert "none of the 2 images tried can be read" in err and "a.png" in err and "b.jpg" in err
    assert "Traceback" not in err
    assert not (store / "nokia" / "manifest.json").exists()


def test_small_image_is_skipped_with_one_warning(camera_dir: Path, tmp_path: Path, caplog) -> None:
    """A group with one image too small for the patch adapts on the others and names it once."""
    import logging

    root = tmp_path / "images"
    (root / "nokia").mkdir(parents=True)
    pixels = read_image(camera_dir / "nokia" / "crop.png").pixels
    write_image(root / "nokia" / "crop.png", pixels)
    write_image(root / "nokia" / "thumb.png", np.ascontiguousarray(pixels[:50, :64]))
    store = tmp_path / "store"
    with caplog.at_level(logging.WARNING):
        assert _adapt(root, store) == 0
    warnings = [r.getMessage() for r in caplog.records if "thumb.png" in r.getMessage()]
    assert len(warnings) == 1 and "skipped 1 image" in warnings[0] and "64x50" in warnings[0]
    manifest = CameraStore.open(store, "nokia").read_manifest()
    pairs = manifest["pairs"]
    assert pairs["lr_patch"] == 12 and [Path(p).name for p in pairs["images_used"]] == ["crop.png"]
    assert [Path(s["path"]).name for s in pairs["images_skipped"]] == ["thumb.png"]
    assert [Path(p["path"]).name for p in manifest["per_image"]] == ["crop.png"]
    from adassr.adapt.report import matplotlib_available

    if matplotlib_available():
        assert manifest["report"] == "report.png"
        assert CameraStore.open(store, "nokia").verified_path("report.png").read_bytes()[:4] == b"\x89PNG"
    else:
        assert manifest["report"] is None


def test_a_disputed_kernel_direction_is_warned_and_recorded(tmp_path: Path, caplog, capsys) -> None:
    """A group whose images were blurred along different axes (30 deg, one at 120 deg): the kernel
    is still estimated, the run warns once that its direction is uncertain, and the manifest records
    the per-image agreement."""
    import logging
    import math

    from adassr.adapt.degradation import blur_downsample, gaussian_kernel
    from adassr.runtime.images import from_float32, to_float32

    hr_dir = Path(__file__).resolve().parents[1] / "data" / "hr"
    root = tmp_path / "images"
    (root / "nokia").mkdir(parents=True)
    for i, (path, angle) in enumerate(zip(sorted(hr_dir.glob("*.png")), (30, 30, 120, 30, 30), strict=True)):
        hr = to_float32(read_image(path).pixels)
        hr = np.ascontiguousarray(hr[: hr.shape[0] // 4 * 4, : hr.shape[1] // 4 * 4])
        lr = blur_downsample(hr, gaussian_kernel(3.2, 1.2, math.radians(angle), scale=4), 4)
        write_image(root / "nokia" / f"{i}.png", from_float32(np.clip(lr, 0.0, 1.0), 8))
    store = tmp_path / "store"
    with caplog.at_level(logging.WARNING):
        assert _adapt(root, store) == 0
    warnings = [r.getMessage() for r in caplog.records if "direction" in r.getMessage()]
    assert len(warnings) == 1 and "uncertain" in warnings[0], warnings
    out = capsys.readouterr().out
    assert "blur kernel: Gaussian sigma" in out and "direction agreement" in out
    kernel = CameraStore.open(store, "nokia").read_manifest()["kernel"]
    assert kernel["diagnostics"]["direction_agreement"] < 0.7
    # one photo (112x75 LR) is too small for the patch, so neither the estimate nor the training uses it
    assert len(kernel["diagnostics"]["per_image_theta_deg"]) == len(kernel["diagnostics"]["images_used"]) == 4


def test_missing_lpips_weights_fail_before_the_images_are_read(camera_dir: Path, tmp_path: Path, capsys,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """... and before the backbone is converted and cached (64 MB written to an empty cache, then the error)."""
    import adassr.adapt.run as run

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the images were read or the backbone loaded before the LPIPS weights were checked")

    monkeypatch.setenv("ADASSR_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(run, "load_group_images", no_reading)
    monkeypatch.setattr(run, "_load_backbone", no_reading)
    assert _adapt(camera_dir, tmp_path / "store", "--lambda-perceptual", "1") == 2
    err = capsys.readouterr().err
    assert "LPIPS-vgg weights are missing" in err and "fetch-weights lpips" in err
    assert not (tmp_path / "store" / "nokia").exists()
