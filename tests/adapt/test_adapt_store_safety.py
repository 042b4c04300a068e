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
