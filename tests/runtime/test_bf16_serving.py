"""`--precision bf16`: served by the TensorRT backend from an engine built on model.onnx (no bf16 file).

An engine that `adassr export --engine tensorrt --precision bf16` built was loaded by no command: upscale
and serve offered fp32 and fp16 only (a helper's review). No TensorRT here: the engine lookup is stood in
for, and what it is asked for is checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from adassr.runtime.errors import ConfigError
from adassr.runtime.images import LoadedImage
from adassr.runtime.pipeline import RuntimeOptions, Upscaler, engine_for_route
from adassr.runtime.routing import engine_precision, model_precision
from adassr.runtime.server.config import ServerConfig
from adassr.runtime.store import FALLBACK_CAMERA
from adassr.runtime.tiling import TilingOptions

from ._models import publish_camera


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    publish_camera(root, FALLBACK_CAMERA, seed=0)
    publish_camera(root, "canon", seed=1, fp16=True)
    publish_camera(root, "nokia", seed=2)
    return root


def test_bf16_is_refused_without_the_tensorrt_backend(store: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from adassr.cli import main

    with pytest.raises(ConfigError, match="--precision bf16 is served by --backend tensorrt only"):
        RuntimeOptions(store, precision="bf16")
    with pytest.raises(ConfigError, match="--precision bf16 is served by --backend tensorrt only"):
        ServerConfig(store=store, precision="bf16")
    code = main(["upscale", "-i", str(tmp_path / "x.png"), "-o", str(tmp_path / "o.png"), "--store", str(store),
                 "--precision", "bf16"])
    assert code == 2 and "--backend tensorrt only" in capsys.readouterr().err
    assert (model_precision("bf16"), model_precision("fp16")) == ("fp32", "fp16")
    assert (engine_precision("bf16", "fp32"), engine_precision("bf16", "fp16"), engine_precision("fp32", "fp32")) \
        == ("bf16", "fp16", "fp32")


def test_a_bf16_route_asks_for_the_bf16_engine_of_model_onnx(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import adassr.runtime.engines.manage as manage

    asked: list[Any] = []

    class Result:
        path = Path("camera-bf16.engine")

    monkeypatch.setattr(manage, "TensorRTToolkit", lambda: object())
    monkeypatch.setattr(manage, "ensure_camera_engine", lambda request, toolkit: asked.append(request) or Result())
    options = RuntimeOptions(store, backend="tensorrt", precision="bf16",
                             tiling=TilingOptions(tile=64, overlap=8, pad_to_tile=True))
    upscaler = Upscaler(options)
    image = LoadedImage(np.zeros((16, 16, 3), np.uint8), None, 8, None, None, None)
    for camera, file, engine in (("nokia", "model.onnx", "bf16"), ("canon", "model.onnx", "bf16")):
        route = upscaler.route(image, camera=camera)
        assert route.precision == "fp32" and route.artifact == file  # routed as fp32: the file bf16 builds from
        assert engine_for_route(route, options) == Result.path
        assert asked[-1].precision == engine and asked[-1].camera == camera and asked[-1].any_stored_settings


def test_the_server_reports_the_precision_that_computes(store: Path) -> None:
    from adassr.runtime.backends import open_backend
    from adassr.runtime.server.models import ModelRegistry

    def opener(route: Any) -> Any:  # the ONNX file stands in for the bf16 engine
        return open_backend("onnxruntime", route.verify(), providers=("cpu",), threads=1)

    registry = ModelRegistry(store, precision="bf16", open_model=opener)
    registry.refresh()
    model = registry.models["nokia"]
    assert model.route.precision == "fp32" and model.served_precision == "bf16"
    assert model.summary()["precision"] == "bf16"


def test_a_camera_without_model_onnx_is_served_fp16_with_the_right_advice(tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from adassr.runtime.backends import open_backend
    from adassr.runtime.server.models import ModelRegistry
    from adassr.runtime.store import CameraStore

    root = tmp_path / "store"
    publish_camera(root, "canon", seed=1, fp16=True)

    def only_fp16(manifest: dict[str, Any]) -> None:
        del manifest["exports"]["onnx"]

    CameraStore.open(root, "canon").update_manifest(only_fp16)
    registry = ModelRegistry(root, precision="bf16",
                             open_model=lambda route: open_backend("onnxruntime", route.verify(), providers=("cpu",),
                                                                   threads=1))
    with caplog.at_level(logging.WARNING, logger="adassr.runtime.server.models"):
        registry.refresh()
    assert registry.models["canon"].served_precision == "fp16"
    (note,) = [r.getMessage() for r in caplog.records if "canon" in r.getMessage()]
    assert "no model.onnx (its fp32 export) to build a bf16 engine from" in note
    assert f"`adassr export --camera canon --store {root}`" in note and "--precision bf16" not in note
