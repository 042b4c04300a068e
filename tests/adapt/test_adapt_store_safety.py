"""The adapt stage checks the store before it trains and never half-replaces a camera's model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from adassr.cli import main
from adassr.runtime.images import read_image, write_image
from adassr.runtime.store import CameraStore

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "cameras"


@pytest.fixture(scope="module")
def camera_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    (root / "nokia").mkdir()
    pixels = read_image(SAMPLES / "nokia" / "iptc.jpg").pixels
    write_image(root / "nokia" / "crop.png", np.ascontiguousarray(pixels[200:330, 250:380]))
    return root


BAD_MANIFESTS = ['{"schema_version": 99}', "{not json", '{"schema_version": 1, "artifacts": "oops"}']


@pytest.mark.parametrize("manifest", BAD_MANIFESTS)
def test_invalid_manifest_fails_before_training_and_keeps_the_model(
    camera_dir: Path, tmp_path: Path, manifest: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import adassr.adapt.weights as weights

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the backbone was loaded: training started despite a damaged store")

    monkeypatch.setattr(weights, "load_backbone", no_training)
    store = CameraStore.open(tmp_path, "nokia", create=True)
    store.publish("adapted.safetensors", lambda p: p.write_bytes(b"previous weights"), stage="adapt")
    weights_file = store.artifact_path("adapted.safetensors")
    store.manifest_path.write_text(manifest)
    code = main(["adapt", "--camera", "nokia", "--images", str(camera_dir), "--store", str(tmp_path),
                 "--steps", "2", "--lambda-perceptual", "0"])
    assert code == 2
    assert "manifest.json" in capsys.readouterr().err
    assert weights_file.read_bytes() == b"previous weights"
    assert store.manifest_path.read_text() == manifest


def test_images_pointing_at_the_store_are_refused_and_store_folders_are_no_groups(
    camera_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--images` and `--store` mixed up: the camera was adapted on its own report.png and published."""
    from adassr.adapt.groups import scan_groups

    store = CameraStore.open(tmp_path / "models", "nokia", create=True)
    write_image(tmp_path / "r.png", np.full((200, 200, 3), 90, np.uint8))
    store.publish("report.png", lambda p: p.write_bytes((tmp_path / "r.png").read_bytes()), stage="adapt")
    for images in (tmp_path / "models", tmp_path / "models" / "nokia"):
        code = main(["adapt", "--camera", "nokia", "--images", str(images), "--store", str(tmp_path / "models"),
                     "--steps", "2"])
        assert code == 2
        assert "the model store --store" in capsys.readouterr().err
    scan = scan_groups(tmp_path / "models")  # `adapt --list --images <store>`: no group, and why
    assert scan.groups == {} and "camera folder of a model store" in scan.skipped[0].reason
    photos = tmp_path / "photos" / "nikon"  # a dataset tool's manifest.json beside photos: still a group
    photos.mkdir(parents=True)
    write_image(photos / "a.png", np.full((40, 40, 3), 90, np.uint8))
    (photos / "manifest.json").write_text('{"files": ["a.png"]}')
    assert set(scan_groups(tmp_path / "photos").groups) == {"nikon"}


def test_weights_are_written_once_not_through_a_nested_atomic_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import adassr.adapt.weights.checkpoints as checkpoints
    from adassr.adapt.run import _publish_weights
    from adassr.adapt.weights import load_backbone

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("atomic_write_bytes inside a store transaction: the weights are written twice")

    monkeypatch.setattr(checkpoints, "atomic_write_bytes", forbidden)
    backbone = load_backbone()
    base = backbone.model.state_dict()
    first = next(iter(base))
    state = {**base, first: base[first] + 1.0}  # one adapted tensor: the file is a one-tensor delta
    store = CameraStore.open(tmp_path, "nokia", create=True)
    with store.transaction() as tx:
        record = _publish_weights(tx, state, backbone, base)
        tx.commit()
    assert json.loads(store.manifest_path.read_text())["artifacts"]["adapted.safetensors"]["sha256"] == record["sha256"]


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to "
                 "allocate 40000000000000 bytes. Error code 12 (Cannot allocate memory)"),
    MemoryError("Unable to allocate 72.8 TiB for an array"),
])
def test_running_out_of_memory_is_a_clear_error_and_keeps_the_model(
    camera_dir: Path, tmp_path: Path, error: BaseException, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import adassr.adapt.run as run

    store = CameraStore.open(tmp_path, "nokia", create=True)
    store.publish("adapted.safetensors", lambda p: p.write_bytes(b"previous weights"), stage="adapt")
    before = {p.name: p.read_bytes() for p in store.directory.iterdir() if p.is_file()}

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(run, "_run_admm", out_of_memory)
    code = main(["adapt", "--camera", "nokia", "--images", str(camera_dir), "--store", str(tmp_path),
                 "--steps", "2", "--lambda-perceptual", "0", "--patch", "12"])
    err = capsys.readouterr().err
    assert code == 2 and "out of memory while adapting" in err and "--max-megapixels" in err
    assert "Traceback" not in err
    assert {p.name: p.read_bytes() for p in store.directory.iterdir() if p.is_file()} == before


def test_other_runtime_errors_are_not_reported_as_out_of_memory(
    camera_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import adassr.adapt.run as run

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug, not a lack of memory")

    monkeypatch.setattr(run, "_run_admm", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["adapt", "--camera", "nokia", "--images", str(camera_dir), "--store", str(tmp_path),
              "--steps", "2", "--lambda-perceptual", "0", "--patch", "12"])


def test_re_adapting_keeps_only_the_exports_of_the_weights_it_publishes() -> None:
    from adassr.adapt.run import _replace_adapt_fields

    def manifest() -> dict:
        return {"weights_sha256": "old", "exports": {"onnx": {"file": "model.onnx", "weights_sha256": "old"}},
                "engines": {"e": {}}, "artifacts": {"model.onnx": {"stage": "export"},
                                                     "adapted.safetensors": {"stage": "adapt"}}}

    other = manifest()
    _replace_adapt_fields(other, {"weights_sha256": "new", "report": None})
    assert "exports" not in other and "engines" not in other and list(other["artifacts"]) == ["adapted.safetensors"]
    same = manifest()
    _replace_adapt_fields(same, {"weights_sha256": "old", "report": None})
    assert same["exports"] == manifest()["exports"] and "model.onnx" in same["artifacts"] and same["engines"]
