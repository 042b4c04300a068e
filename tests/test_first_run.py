"""First run: `adassr upscale -i photo -o out.png` with no store serves the fallback backbone."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from adassr.cli import main
from adassr.runtime.images import read_image, write_image
from adassr.runtime.store import FALLBACK_CAMERA, CameraStore

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "cameras"


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    pixels = read_image(SAMPLES / "canon" / "flower.jpg").pixels
    return write_image(tmp_path / "photo.png", np.ascontiguousarray(pixels[100:148, 200:248]))


def test_without_torch_one_line_says_the_command(photo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    store = tmp_path / "models"
    code = main(["upscale", "-i", str(photo), "-o", str(tmp_path / "out.png"), "--store", str(store)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    root = Path(__file__).resolve().parents[1]
    command = (f"pip install -e '{root}[adapt,cpu,cpu-torch]' && adassr export --backbone "
               f"realesrgan-x4plus --store {store}")
    assert command in err[0]
    assert not (tmp_path / "out.png").exists() and not store.exists()


@pytest.mark.slow
def test_with_torch_the_fallback_is_exported_once(photo: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "models"
    out = tmp_path / "out.png"
    assert main(["upscale", "-i", str(photo), "-o", str(out), "--store", str(store), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "exporting the fallback backbone realesrgan-x4plus" in captured.err
    assert "_fallback/model.onnx" in captured.out
    assert read_image(out).pixels.shape == (192, 192, 3)
    manifest = CameraStore.open(store, FALLBACK_CAMERA).read_manifest()
    assert manifest["backbone"]["name"] == "realesrgan-x4plus" and "onnx" in manifest["exports"]
    # the next run serves the exported model without exporting again
    assert main(["upscale", "-i", str(photo), "-o", str(tmp_path / "again.png"), "--store", str(store),
                 "--no-progress"]) == 0
    assert "exporting" not in capsys.readouterr().err


@pytest.mark.slow
def test_an_adapted_camera_is_exported_on_first_use(photo: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`adassr upscale --camera X` after `adapt` without `export`: X's own weights serve, not the fallback."""
    camera_dir = tmp_path / "images" / "nokia"
    camera_dir.mkdir(parents=True)
    pixels = read_image(SAMPLES / "nokia" / "iptc.jpg").pixels
    write_image(camera_dir / "crop.png", np.ascontiguousarray(pixels[200:330, 250:380]))
    store = tmp_path / "models"
    assert main(["adapt", "--camera", "nokia", "--images", str(camera_dir.parent), "--store", str(store),
                 "--steps", "2", "--eval-every", "1", "--patch", "12", "--eval-crop", "48",
                 "--lambda-perceptual", "0", "--feature-bank", "4"]) == 0
    assert "exports" not in CameraStore.open(store, "nokia").read_manifest()
    capsys.readouterr()
    out = tmp_path / "out.png"
    assert main(["upscale", "-i", str(photo), "-o", str(out), "--store", str(store), "--camera", "nokia",
                 "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "camera 'nokia' is adapted but not exported yet: exporting it" in captured.err
    assert "nokia/model.onnx" in captured.out and "fallback" not in captured.out
    assert "exporting the fallback" not in captured.err and not (store / FALLBACK_CAMERA).exists()
    assert "onnx" in CameraStore.open(store, "nokia").read_manifest()["exports"]
    assert read_image(out).pixels.shape == (192, 192, 3)
    assert main(["upscale", "-i", str(photo), "-o", str(tmp_path / "again.png"), "--store", str(store),
                 "--camera", "nokia", "--no-progress"]) == 0
    assert "exporting" not in capsys.readouterr().err


def test_without_torch_a_store_of_camera_exports_serves_their_images(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --camera and without a fallback, a torch-free install refused a folder of a camera's photos
    that the camera's export serves ("no model ... and PyTorch is not installed")."""
    from tests.runtime._models import publish_camera

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    store = tmp_path / "models"
    publish_camera(store, "cam1")
    (tmp_path / "in" / "cam1").mkdir(parents=True)
    write_image(tmp_path / "in" / "cam1" / "t.png", np.full((12, 10, 3), 90, np.uint8))
    assert main(["upscale", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--store", str(store),
                 "--no-progress"]) == 0
    assert (tmp_path / "out" / "cam1" / "t.png").is_file() and not (store / FALLBACK_CAMERA).exists()


def test_a_first_use_export_validates_on_a_readable_input_when_no_samples_are_installed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside a checkout (no bundled photos), a damaged or tiny first input stopped the run while the
    fallback's export was validated on it, with advice (`--validation-image`) upscale does not take."""
    import adassr.export.crops as crops
    import adassr.export.onnx as onnx_export
    from adassr.runtime.errors import StoreError
    from adassr.runtime.pipeline import RuntimeOptions
    from adassr.upscale import export_fallback_on_first_use

    monkeypatch.setattr(crops, "bundled_photos", lambda: [])
    validated: list[object] = []
    monkeypatch.setattr(onnx_export, "export_fallback", lambda *a, **k: validated.append(k["validation_image"]))
    good = write_image(tmp_path / "z.png", read_image(SAMPLES / "canon" / "flower.jpg").pixels[:64, :64])
    tiny = write_image(tmp_path / "b.png", np.zeros((20, 20, 3), np.uint8))
    bad = tmp_path / "a.jpg"
    bad.write_bytes((SAMPLES / "canon" / "flower.jpg").read_bytes()[:30000])  # a good header, then nothing
    options = RuntimeOptions(tmp_path / "models")
    export_fallback_on_first_use(options, camera=None, samples=[bad, tiny, good])
    assert validated == [good]
    with pytest.raises(StoreError, match=r"adassr export --backbone realesrgan-x4plus --store .* --validation-image"):
        export_fallback_on_first_use(options, camera=None, samples=[bad, tiny])


def test_the_fallback_is_not_exported_for_inputs_the_stores_cameras_serve(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder of an exported camera's photos made the first upscale export the 67 MB fallback ("no model in
    the store serves this yet"), though every photo was then upscaled by the camera's own model (a helper's
    journey with a camera of their own)."""
    import adassr.export.onnx as onnx_export
    from adassr.runtime.pipeline import RuntimeOptions
    from adassr.upscale import export_fallback_on_first_use
    from tests.runtime._models import publish_camera

    exported: list[object] = []
    monkeypatch.setattr(onnx_export, "export_fallback", lambda *a, **k: exported.append(a))
    store = tmp_path / "models"
    publish_camera(store, "cam1")
    (tmp_path / "in" / "cam1").mkdir(parents=True)
    (tmp_path / "in" / "other").mkdir()
    served = [write_image(tmp_path / "in" / "cam1" / f"{k}.png", np.full((12, 10, 3), 90, np.uint8))
              for k in range(3)]
    options = RuntimeOptions(store)
    export_fallback_on_first_use(options, camera=None, samples=served)
    assert exported == []
    stranger = write_image(tmp_path / "in" / "other" / "x.png", np.full((12, 10, 3), 90, np.uint8))
    export_fallback_on_first_use(options, camera=None, samples=[*served, stranger])  # this one needs the fallback
    assert len(exported) == 1


def test_backend_options_that_would_be_ignored_and_an_unknown_backbone_are_errors(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--providers / --require-providers with --backend torch, and --backbone nosuch with onnxruntime and a
    store that has a fallback, ran without a word."""
    from tests.runtime._models import publish_camera

    store = tmp_path / "models"
    publish_camera(store, FALLBACK_CAMERA).update_manifest(
        lambda m: m.update(backbone={"name": "realesrgan-x4plus", "weights_sha256": "0" * 64}))
    image = write_image(tmp_path / "t.png", np.full((12, 10, 3), 90, np.uint8))
    base = ["upscale", "-i", str(image), "-o", str(tmp_path / "o.png"), "--store", str(store), "--no-progress"]
    assert main([*base, "--backend", "torch", "--providers", "cuda"]) == 2
    assert "--backend torch does not use them" in capsys.readouterr().err
    assert main([*base, "--backbone", "nosuch"]) == 2
    assert "unknown backbone 'nosuch'" in capsys.readouterr().err
    # GPU options the onnxruntime CPU backend ignored (exit 0, on the CPU, without a word)
    for extra, message in ((["--device", "cuda"], "--device cuda chooses the device of --backend torch"),
                           (["--cuda-graph"], "--cuda-graph replays the tiles on a GPU"),
                           (["--gpu", "2"], "--gpu 2 chooses a GPU, but --providers cpu runs on the CPU"),
                           (["--backend", "torch", "--device", "cpu", "--gpu", "1"],
                            "--gpu 1 chooses a GPU, but --device cpu runs on the CPU")):
        assert main([*base, *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert not (tmp_path / "o.png").exists()
    assert main([*base, "--backbone", "realsr-df2k"]) == 0  # served by the store's fallback, with a warning
    assert "the store's fallback model is realesrgan-x4plus, not --backbone realsr-df2k" in capsys.readouterr().err
